//! The files of `src/` form layers: the import graph (`crate::x` paths in
//! code and doc links, not in plain comments) has no cycle; the graph is
//! qpw's (`crates/qpw/tests/layers_graph`).
//!
//! The whole crate's graph has no cycle, and the slab allocator's files
//! (below) keep their own order: the geometry at the bottom, slabs never
//! naming the depot.

#[path = "../../qpw/tests/layers_graph/mod.rs"]
mod layers_graph;

use layers_graph::find_cycle;
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

/// This crate's graph.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    layers_graph::graph(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"))
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
