//! The allocator's own footprint: a process under `LD_PRELOAD` holds at
//! most 1.5 MiB of anonymous memory more than under glibc, idle or after
//! thousands of short threads (peak RSS is one of issue 10's goals; the
//! per-slot state of 1,024 slots must not be resident until a slot is used,
//! and exited threads' slots are reused before fresh ones).

mod common;

use common::{compile_c, preloaded, run};
use std::process::Command;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(120);
const MAX_EXTRA_KB: i64 = 1536;

/// `(RssAnon, VmHWM)` in KiB, as the program printed them. Only the
/// anonymous memory is compared: the peak also counts the library's own
/// code pages, which differ between debug and release builds.
fn figures(r: &common::Run, what: &str) -> (i64, i64) {
    r.assert_ok(what);
    let out = r.stdout();
    let f: Vec<i64> = out
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(f.len(), 2, "{what}: unexpected output {out:?}");
    (f[0], f[1])
}

fn compare(args: &[&str]) {
    let exe = compile_c("footprint", "footprint", &[]);
    let mut plain = Command::new(&exe);
    plain.args(args).env_remove("LD_PRELOAD");
    let (plain_anon, plain_hwm) = figures(&run(plain, None, LIMIT), "footprint under glibc");
    let mut pre = preloaded(exe.to_str().unwrap());
    pre.args(args);
    let (anon, hwm) = figures(&run(pre, None, LIMIT), "footprint under LD_PRELOAD");
    assert!(
        anon - plain_anon <= MAX_EXTRA_KB,
        "{args:?}: RssAnon {anon} KiB (glibc {plain_anon}), VmHWM {hwm} KiB (glibc {plain_hwm}): \
         more than {MAX_EXTRA_KB} KiB of the allocator's own memory"
    );
}

#[test]
fn idle_process_holds_little_beyond_glibc() {
    compare(&["idle"]);
}

#[test]
fn thread_churn_reuses_warm_slots() {
    compare(&["churn", "4000"]);
}
