//! Every C entry point with its edges (`tests/c/entry_points.c`), preloaded
//! and linked statically; the options from the environment; statistics at
//! exit; an error inside the allocator aborts with a message.

mod common;

use common::{compile_c, preloaded, run, staticlib};
use std::process::Command;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(300);

#[test]
fn every_entry_point_preloaded() {
    let exe = compile_c("entry_points", "entry_points", &[]);
    let mut cmd = preloaded(&exe);
    // No decay: what malloc_trim finds to return is then certain.
    cmd.arg("trim").env("QPW_MALLOC_DECAY_MS", "off");
    let r = run(cmd, None, LIMIT);
    r.assert_ok("entry_points under LD_PRELOAD");
    let out = r.stdout();
    assert!(out.contains("entry points: ok"), "{out}");
    assert!(
        out.contains("malloc from ") && out.contains("libqpw_malloc.so"),
        "malloc did not come from the preloaded library: {out}"
    );
    // malloc_stats() is ours and printed the allocator's counters.
    let err = r.stderr();
    assert!(
        err.contains("qpw-malloc: statistics of pid") && err.contains("(malloc_stats)"),
        "{err}"
    );
    assert!(err.contains("slabs: active"), "{err}");
}

#[test]
fn every_entry_point_linked_statically() {
    let lib = staticlib();
    // -rdynamic: the program's malloc family in its dynamic symbol table,
    // so dlsym finds them (libc's own calls are bound to them either way).
    let exe = compile_c(
        "entry_points",
        "entry_points_static",
        &[lib.as_path(), std::path::Path::new("-rdynamic")],
    );
    let mut cmd = Command::new(&exe);
    cmd.arg("trim")
        .env("QPW_MALLOC_DECAY_MS", "off")
        .env_remove("LD_PRELOAD")
        .env("QPW_MALLOC_STATS", "1");
    let r = run(cmd, None, LIMIT);
    r.assert_ok("entry_points linked with libqpw_malloc.a");
    let out = r.stdout();
    assert!(out.contains("entry points: ok"), "{out}");
    assert!(
        out.contains("malloc from ") && out.contains("entry_points_static"),
        "malloc did not come from the program itself: {out}"
    );
    // The library's constructor and destructor were linked in too.
    assert!(
        r.stderr().contains("(QPW_MALLOC_STATS=1, at exit)"),
        "no statistics at exit from the static library:\n{}",
        r.stderr()
    );
}

#[test]
fn statistics_at_exit_once() {
    let exe = compile_c("entry_points", "entry_points", &[]);
    let mut cmd = preloaded(&exe);
    cmd.env("QPW_MALLOC_STATS", "1");
    let r = run(cmd, None, LIMIT);
    r.assert_ok("entry_points with QPW_MALLOC_STATS=1");
    let err = r.stderr();
    assert_eq!(
        err.matches("(QPW_MALLOC_STATS=1, at exit)").count(),
        1,
        "{err}"
    );
    // Printed after everything the program freed: the last thing on stderr.
    let at_exit = err.rfind("at exit").unwrap();
    assert!(err[at_exit..].contains("large: allocs"), "{err}");
    // Off by default, and with 0.
    for v in [None, Some("0")] {
        let mut cmd = preloaded(&exe);
        if let Some(v) = v {
            cmd.env("QPW_MALLOC_STATS", v);
        }
        let r = run(cmd, None, LIMIT);
        r.assert_ok("entry_points without statistics");
        assert!(!r.stderr().contains("at exit"), "{v:?}: {}", r.stderr());
    }
}

/// A program that closed every descriptor and reopened others where the
/// library kept its copy of stderr gets no statistics in its files.
#[test]
fn statistics_at_exit_never_go_into_a_reused_descriptor() {
    let exe = compile_c("entry_points", "entry_points", &[]);
    let file = common::tmp_dir().join("closefds.txt");
    let mut cmd = preloaded(&exe);
    cmd.arg("closefds").arg(&file).env("QPW_MALLOC_STATS", "1");
    let r = run(cmd, None, LIMIT);
    r.assert_ok("entry_points closefds");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "data\n");
    assert!(
        r.stderr().contains("(QPW_MALLOC_STATS=1, at exit)"),
        "{}",
        r.stderr()
    );
}

#[test]
fn bad_option_values_are_reported_and_defaults_used() {
    let exe = compile_c("entry_points", "entry_points", &[]);
    for bad in ["yes", "2", "", "1\n1"] {
        let mut cmd = preloaded(&exe);
        cmd.env("QPW_MALLOC_STATS", bad);
        let r = run(cmd, None, LIMIT);
        r.assert_ok("entry_points with a bad QPW_MALLOC_STATS");
        let err = r.stderr();
        let shown = bad.replace('\n', "?");
        let want = format!(
            "qpw-malloc: invalid value \"{shown}\" for environment variable QPW_MALLOC_STATS \
             (accepted: 0, 1); using the default, 0 (no statistics)\n"
        );
        assert_eq!(
            err.matches(&want).count(),
            1,
            "want {want:?} once in:\n{err}"
        );
        // The default (no statistics at exit) was used.
        assert!(!err.contains("at exit"), "{err}");
    }
    // The mode: qpw's own variable, reported by qpw, `queue` used.
    let mut cmd = preloaded(&exe);
    cmd.env("QPW", "sideways");
    let r = run(cmd, None, LIMIT);
    r.assert_ok("entry_points with a bad QPW");
    let err = r.stderr();
    let line = err
        .lines()
        .find(|l| l.contains("sideways"))
        .unwrap_or_else(|| panic!("no message naming the bad QPW value:\n{err}"));
    assert!(
        line.contains("QPW") && line.contains("remote") && line.contains("using mode queue"),
        "{line}"
    );
    assert!(err.contains("mode: queue"), "{err}");
}

#[test]
fn mode_from_the_environment() {
    let exe = compile_c("entry_points", "entry_points", &[]);
    for (v, name) in [
        ("1", "remote"),
        ("remote", "remote"),
        ("0", "queue"),
        ("defer", "defer"),
    ] {
        let mut cmd = preloaded(&exe);
        cmd.env("QPW", v);
        let r = run(cmd, None, LIMIT);
        r.assert_ok("entry_points with QPW set");
        assert!(
            r.stderr().contains(&format!("mode: {name}")),
            "QPW={v}:\n{}",
            r.stderr()
        );
    }
}

/// An error the allocator detects aborts the process with its message: it
/// never unwinds into C. (`tests/bad_frees.rs` has the misuses that every
/// build catches; this one is a large block freed twice, and a small one
/// freed twice from the same thread.)
#[test]
fn double_free_aborts_with_a_message() {
    let exe = compile_c("entry_points", "entry_points", &[]);
    for what in ["doublefree", "doublefree-large"] {
        let mut cmd = preloaded(&exe);
        cmd.arg(what);
        let r = run(cmd, None, LIMIT);
        assert!(!r.timed_out);
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            r.out.status.signal(),
            Some(libc::SIGABRT),
            "{what}: {:?}\n{}",
            r.out.status,
            r.stderr()
        );
        assert!(
            r.stderr()
                .contains("qpw-malloc: free(): double free detected: 0x")
                || r.stderr()
                    .contains("qpw-malloc: free(): invalid pointer (not a live allocation"),
            "{what}: {}",
            r.stderr()
        );
    }
}

/// `QPW_MALLOC_DECAY_MS` reaches the allocator: with a short delay, freed
/// memory goes back to the OS with no call by the program; with `off` it
/// stays (until `malloc_trim`); bad values are reported.
#[test]
fn decay_delay_from_the_environment() {
    let exe = compile_c("decay", "decay", &[]);
    let mut cmd = preloaded(&exe);
    cmd.args(["back", "20000"])
        .env("QPW_MALLOC_DECAY_MS", "100");
    let r = run(cmd, None, LIMIT);
    r.assert_ok("decay with QPW_MALLOC_DECAY_MS=100");
    assert!(r.stdout().contains("back:"), "{}", r.stdout());

    // Kept for 3 s, three times the default delay (which, unset, returns
    // this memory within about 1.5 s): the value reached the allocator. A
    // busy machine only delays the decay, so it cannot fail these.
    for v in ["off", "60000"] {
        let mut cmd = preloaded(&exe);
        cmd.args(["kept", "3000"]).env("QPW_MALLOC_DECAY_MS", v);
        let r = run(cmd, None, LIMIT);
        r.assert_ok(&format!("decay with QPW_MALLOC_DECAY_MS={v}"));
    }

    // A program that calls no allocator function at all while it waits
    // gets its memory back only from the decay thread it asks for.
    let mut cmd = preloaded(&exe);
    cmd.args(["idle", "20000"])
        .env("QPW_MALLOC_DECAY_MS", "100")
        .env("QPW_MALLOC_DECAY_THREAD", "1");
    let r = run(cmd, None, LIMIT);
    r.assert_ok("idle decay with QPW_MALLOC_DECAY_THREAD=1");
    assert!(r.stdout().contains("back:"), "{}", r.stdout());

    let mut cmd = preloaded(&exe);
    cmd.args(["kept", "10"])
        .env("QPW_MALLOC_DECAY_THREAD", "yes");
    let r = run(cmd, None, LIMIT);
    r.assert_ok("QPW_MALLOC_DECAY_THREAD=yes");
    assert_eq!(
        r.stderr(),
        "qpw-malloc: invalid value \"yes\" for environment variable QPW_MALLOC_DECAY_THREAD \
         (accepted: 0, 1); using the default, 1 (the decay runs on a thread of its own)\n"
    );

    for bad in ["0", "soon", "-1", "1.5", "86400001"] {
        let mut cmd = preloaded(&exe);
        cmd.args(["kept", "10"]).env("QPW_MALLOC_DECAY_MS", bad);
        let r = run(cmd, None, LIMIT);
        assert!(!r.timed_out, "{bad}");
        let want = format!(
            "qpw-malloc: invalid value \"{bad}\" for environment variable QPW_MALLOC_DECAY_MS \
             (accepted: off, or a whole number of milliseconds from 1 to 86400000); using the \
             default, qpw-mm's decay delay (1000 ms)\n"
        );
        assert_eq!(r.stderr().matches(&want).count(), 1, "{}", r.stderr());
    }
}
