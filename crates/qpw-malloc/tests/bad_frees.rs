//! Bad frees caught on the free path, in every build, as glibc catches
//! them (issue 15): `tests/c/badfree.c` makes one mistake per run, and the
//! process must abort with a message naming the C call and the reason.
//! Before, release builds caught none: a double free of a 32-byte block
//! made the next two `malloc(32)` return the same pointer, `free(p + 8)`
//! made a later `malloc(64)` return `p + 8`.

mod common;

use common::{compile_c, preloaded, run};
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

/// Runs `badfree <mode>` in both modes; it must abort with `message`.
fn aborts(mode: &str, message: &str) {
    let exe = compile_c("badfree", "badfree", &[]);
    for qpw in ["0", "1"] {
        let mut cmd = preloaded(&exe);
        cmd.arg(mode).env("QPW", qpw);
        let r = run(cmd, None, LIMIT);
        assert!(!r.timed_out, "{mode}, QPW={qpw}: timed out");
        assert_eq!(
            r.out.status.signal(),
            Some(libc::SIGABRT),
            "{mode}, QPW={qpw}: {:?}\nstdout: {}\nstderr: {}",
            r.out.status,
            r.stdout(),
            r.stderr()
        );
        assert!(
            r.stderr().contains(message),
            "{mode}, QPW={qpw}: wanted {message:?} in:\n{}",
            r.stderr()
        );
    }
}

#[test]
fn double_free_of_a_small_object() {
    aborts("double", "qpw-malloc: free(): double free detected: 0x");
}

#[test]
fn free_of_an_interior_pointer() {
    aborts(
        "interior",
        "qpw-malloc: free(): invalid pointer (inside an object, not at its start): 0x",
    );
}

#[test]
fn realloc_of_an_interior_pointer() {
    aborts(
        "realloc-interior",
        "qpw-malloc: realloc(): invalid pointer (inside an object, not at its start): 0x",
    );
}

#[test]
fn realloc_of_a_freed_pointer() {
    aborts(
        "realloc-freed",
        "qpw-malloc: realloc(): double free detected: 0x",
    );
}
