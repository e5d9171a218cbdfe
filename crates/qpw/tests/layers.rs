//! The files of `src/` form layers: the import graph (`crate::x` paths in
//! code and doc links, not in plain comments) has no cycle. Keeps issue 8's
//! layering true.

mod layers_graph;

use layers_graph::find_cycle;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// This crate's graph.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    layers_graph::graph(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"))
}

#[test]
fn the_import_graph_of_src_has_no_cycle() {
    let g = graph();
    assert!(g.contains_key("slot") && g.contains_key("work"), "{g:?}");
    if let Some(c) = find_cycle(&g) {
        panic!(
            "import cycle in crates/qpw/src: {}\ngraph: {g:#?}",
            c.join(" -> ")
        );
    }
}

#[test]
fn the_per_slot_protocol_is_the_bottom_layer() {
    let g = graph();
    let slot = &g["slot"];
    for upper in [
        "handler", "owner", "work", "domain", "implicit", "percpu", "fork",
    ] {
        assert!(!slot.contains(upper), "slot.rs imports {upper}: {slot:?}");
    }
}

#[test]
fn the_checker_finds_a_cycle() {
    let mut g = BTreeMap::new();
    g.insert("a".to_owned(), BTreeSet::from(["b".to_owned()]));
    g.insert("b".to_owned(), BTreeSet::from(["a".to_owned()]));
    assert!(find_cycle(&g).is_some());
}
