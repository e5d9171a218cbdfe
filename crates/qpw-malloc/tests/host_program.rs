//! The allocator is invisible to the host program (issue 15): no thread of
//! ours keeps the process alive after `main` calls `pthread_exit`, takes a
//! signal the program blocks, or stands in the way of a child forked from a
//! non-main thread. `tests/c/host.c`, in both of qpw's usual modes, with
//! the default options (decay on, on its own thread). An idle program still
//! gets its freed memory back.

mod common;

use common::{compile_c, preloaded, run};
use std::time::Duration;

/// A hang ends here; the programs themselves take well under a second.
const LIMIT: Duration = Duration::from_secs(20);

fn host_with(mode: &str, qpw: &str, env: &[(&str, &str)]) -> common::Run {
    let exe = compile_c("host", "host", &[]);
    let mut cmd = preloaded(&exe);
    cmd.arg(mode).env("QPW", qpw);
    for (k, v) in env {
        cmd.env(k, v);
    }
    run(cmd, None, LIMIT)
}

/// With the decay thread (the default) and without it: the decay thread
/// ends the process, as glibc's last thread does, once the program's
/// threads have all ended.
#[test]
fn pthread_exit_from_main_ends_the_process() {
    for env in [&[][..], &[("QPW_MALLOC_DECAY_THREAD", "0")][..]] {
        for qpw in ["0", "1"] {
            let r = host_with("pthread_exit", qpw, env);
            r.assert_ok(&format!("host pthread_exit, QPW={qpw}, {env:?}"));
            assert!(r.stdout().contains("main: pthread_exit"), "{}", r.stdout());
        }
    }
}

/// A program that frees a burst and then only sleeps (calls no allocator
/// function: a server after a burst) gets its memory back, with the
/// default options: `decay idle` exits 0 once its RSS is back near where
/// it started, 1 if not within 20 s (the default delay is 1 s). The wall
/// deadline only bounds the wait; the check is on the amount of memory.
#[test]
fn idle_program_gets_its_memory_back() {
    let exe = compile_c("decay", "decay", &[]);
    for qpw in ["0", "1"] {
        let mut cmd = preloaded(&exe);
        cmd.args(["idle", "20000"]).env("QPW", qpw);
        let r = run(cmd, None, Duration::from_secs(40));
        r.assert_ok(&format!("decay idle, QPW={qpw}"));
        assert!(r.stdout().contains("back:"), "QPW={qpw}: {}", r.stdout());
    }
}

/// 20 self-sent signals that every thread of the program blocks stay
/// pending: none is taken by a thread of ours.
fn assert_signals_stay_pending(env: &[(&str, &str)]) {
    for qpw in ["0", "1"] {
        let r = host_with("signals", qpw, env);
        r.assert_ok(&format!("host signals, QPW={qpw}, {env:?}"));
        assert!(
            r.stdout().contains("taken 0 of 20, pending 1"),
            "QPW={qpw}, {env:?}: {}",
            r.stdout()
        );
    }
}

#[test]
fn blocked_signals_stay_pending() {
    assert_signals_stay_pending(&[]);
}

/// The decay thread (on by default) with a pass every 2.5 ms here: it
/// blocks every signal from its creation, so it takes none of the
/// program's even when it runs all the time.
#[test]
fn blocked_signals_stay_pending_with_the_decay_thread() {
    assert_signals_stay_pending(&[
        ("QPW_MALLOC_DECAY_THREAD", "1"),
        ("QPW_MALLOC_DECAY_MS", "10"),
    ]);
}

#[test]
fn child_forked_from_a_thread_joins_its_threads_and_exits() {
    for qpw in ["0", "1"] {
        let r = host_with("fork_thread", qpw, &[]);
        r.assert_ok(&format!("host fork_thread, QPW={qpw}"));
        let out = r.stdout();
        assert!(out.contains("child: joined 4 threads"), "QPW={qpw}: {out}");
        assert!(out.contains("child: exited (status 0)"), "QPW={qpw}: {out}");
    }
}

/// The library `dlopen`ed by a running program (not preloaded): its
/// initial-exec TLS slot (the fast path's binding pointer) works in a
/// thread that existed before the `dlopen`, in the main thread and in a
/// thread started after, with objects freed across them.
#[test]
fn dlopened_library_serves_threads_from_before_and_after() {
    let exe = compile_c("host", "host", &[]);
    for qpw in ["0", "1"] {
        let mut cmd = std::process::Command::new(&exe);
        cmd.arg("dlopen").arg(common::cdylib()).env("QPW", qpw);
        cmd.env_remove("LD_PRELOAD");
        let r = run(cmd, None, LIMIT);
        r.assert_ok(&format!("host dlopen, QPW={qpw}"));
        assert!(
            r.stdout().contains("dlopen: ok"),
            "QPW={qpw}: {}",
            r.stdout()
        );
    }
}
