//! The files of `src/` form layers: the import graph (`crate::x` paths in
//! code, not in comments) has no cycle. Modelled on `crates/qpw/tests/layers.rs`.
//!
//! The whole crate's graph has no cycle, and the slab allocator's files
//! (below) keep their own order: the geometry at the bottom, slabs never
//! naming the depot.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The slab allocator's files: geometry, slabs, sheaves, depot, caches,
/// size classes and their routing, the large path, and what they stand on.
const SLAB_FILES: &[&str] = &[
    "geometry",
    "slab",
    "depot",
    "cache",
    "sheaf",
    "size_class",
    "stack",
    "lock",
    "large",
    "classes",
];

/// Module name → the modules its code names.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    for e in std::fs::read_dir(&src).unwrap() {
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
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            let code = code.split("//").next().unwrap();
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

fn find_cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
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

/// The modules `from` reaches through imports.
fn reach(g: &BTreeMap<String, BTreeSet<String>>, from: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![from.to_owned()];
    while let Some(n) = todo.pop() {
        for d in g.get(&n).into_iter().flatten() {
            if seen.insert(d.clone()) {
                todo.push(d.clone());
            }
        }
    }
    seen
}

#[test]
fn no_slab_file_is_on_an_import_cycle() {
    let g = graph();
    for f in SLAB_FILES {
        assert!(g.contains_key(*f), "no src/{f}.rs: {g:#?}");
        if reach(&g, f).contains(*f) {
            // Name one cycle through it, for the message.
            let mut sub = g.clone();
            sub.retain(|k, _| reach(&g, k).contains(*f) && reach(&g, f).contains(k) || k == f);
            for deps in sub.values_mut() {
                deps.retain(|d| reach(&g, d).contains(*f) || d == f);
            }
            panic!(
                "src/{f}.rs is on an import cycle: {}\ngraph: {g:#?}",
                find_cycle(&sub).unwrap_or_default().join(" -> ")
            );
        }
    }
}

#[test]
fn the_slab_files_form_layers() {
    let g = graph();
    let mut sub = g.clone();
    sub.retain(|k, _| SLAB_FILES.contains(&k.as_str()));
    for deps in sub.values_mut() {
        deps.retain(|d| SLAB_FILES.contains(&d.as_str()));
    }
    if let Some(c) = find_cycle(&sub) {
        panic!("import cycle among the slab files: {}", c.join(" -> "));
    }
    // The bottom layer names none of the others; slabs never name the depot.
    assert!(sub["geometry"].is_empty(), "{:?}", sub["geometry"]);
    assert!(!sub["slab"].contains("depot"), "{:?}", sub["slab"]);
}

#[test]
fn the_import_graph_of_src_has_no_cycle() {
    let g = graph();
    if let Some(c) = find_cycle(&g) {
        panic!(
            "import cycle in crates/qpw-mm/src: {}\ngraph: {g:#?}",
            c.join(" -> ")
        );
    }
}

#[test]
fn the_checker_finds_a_cycle() {
    let mut g = BTreeMap::new();
    g.insert("a".to_owned(), BTreeSet::from(["b".to_owned()]));
    g.insert("b".to_owned(), BTreeSet::from(["a".to_owned()]));
    assert!(find_cycle(&g).is_some());
    assert!(reach(&g, "a").contains("a"));
}
