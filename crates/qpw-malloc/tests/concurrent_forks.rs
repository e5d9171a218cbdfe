//! Several threads calling `fork` at the same time, under `LD_PRELOAD`,
//! while two other threads allocate (`tests/c/forkers.c`). Every child must
//! exit 0 and the program must finish.
//!
//! A liveness defect, found by the fork storm of `qpw-bench alloc`'s
//! follow-up: qpw's `prepare` fork handler (`crates/qpw/src/fork.rs`)
//! collects the consumer hooks into a `Vec` (an allocation) while it holds
//! qpw's fork registry lock, and after running the hooks (qpw-mm's takes
//! every depot lock) it takes that registry lock again. Two threads forking
//! at once deadlock: one holds the registry lock and waits, inside
//! `malloc`, for a depot lock; the other holds the depot locks and waits
//! for the registry lock; every other thread then waits on a depot lock.
//! Before the fix, 4 threads × 100 forks hung within a few runs (the time
//! limit below, `timed out: true`), where glibc finishes 4 × 500 in 2.3 s.
//! Fixed in qpw: `prepare` takes the registry lock before any hook's
//! `prepare`, so every forker takes the locks in one order (registry, then
//! the hooks'), and allocating under the registry lock meets no depot lock
//! held by another forker.

mod common;

use common::{compile_c, preloaded, run};
use std::time::Duration;

#[test]
fn threads_forking_at_once_never_deadlock() {
    let exe = compile_c("forkers", "forkers", &[]);
    for mode in ["0", "1"] {
        for attempt in 0..3 {
            let mut cmd = preloaded(&exe);
            cmd.args(["4", "100"]).env("QPW", mode);
            let r = run(cmd, None, Duration::from_secs(60));
            r.assert_ok(&format!("forkers 4 x 100, QPW={mode}, attempt {attempt}"));
            assert!(
                r.stdout()
                    .contains("forkers: 4 x 100 forks, 0 hung, 0 crashed"),
                "{}",
                r.stdout()
            );
        }
    }
}
