//! The import graph of a crate's `src/` files, for the layers tests of
//! every crate (`crates/qpw/tests/layers.rs`, and qpw-mm's through
//! `#[path]`): files form layers when the graph has no cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The files of `src` (one level of subdirectories: `sys/x.rs` counts
/// as module `sys`) → the modules each names as `crate::x`: in code and in
/// doc comments (an intra-doc link is a dependency too), not in plain `//`
/// comments.
pub fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(src).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            for f in std::fs::read_dir(&p).unwrap() {
                files.push((
                    p.file_name().unwrap().to_str().unwrap().to_owned(),
                    f.unwrap().path(),
                ));
            }
        } else if p.extension().is_some_and(|x| x == "rs") {
            let stem = p.file_stem().unwrap().to_str().unwrap().to_owned();
            if stem != "lib" {
                files.push((stem, p));
            }
        }
    }
    let modules: BTreeSet<String> = files.iter().map(|(m, _)| m.clone()).collect();
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, path) in &files {
        let text = std::fs::read_to_string(path).unwrap();
        let deps = g.entry(m.clone()).or_default();
        for line in text.lines() {
            let line = line.trim_start();
            let code = if line.starts_with("///") || line.starts_with("//!") {
                line
            } else if line.starts_with("//") {
                continue;
            } else {
                line.split("//").next().unwrap()
            };
            let mut rest = code;
            while let Some(i) = rest.find("crate::") {
                rest = &rest[i + "crate::".len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if modules.contains(&name) && name != *m {
                    deps.insert(name);
                }
                // `use crate::{a, b::c}`
                if rest.starts_with('{') {
                    let inner = &rest[1..rest.find('}').unwrap_or(rest.len())];
                    for part in inner.split(',') {
                        let n = part.trim().split("::").next().unwrap().trim();
                        if modules.contains(n) && n != m {
                            deps.insert(n.to_owned());
                        }
                    }
                }
            }
        }
    }
    g
}

/// One import cycle of `g` (its first module repeated at the end), if any.
pub fn find_cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(n) {
            Some(2) => return None,
            Some(1) => {
                let i = stack.iter().position(|s| s == n).unwrap();
                let mut c = stack[i..].to_vec();
                c.push(n.to_owned());
                return Some(c);
            }
            _ => {}
        }
        state.insert(n.to_owned(), 1);
        stack.push(n.to_owned());
        for d in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(d, g, state, stack) {
                return Some(c);
            }
        }
        stack.pop();
        state.insert(n.to_owned(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in g.keys() {
        if let Some(c) = visit(n, g, &mut state, &mut Vec::new()) {
            return Some(c);
        }
    }
    None
}
