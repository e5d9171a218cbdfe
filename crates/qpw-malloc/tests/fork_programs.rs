//! A real forking program of this machine under `LD_PRELOAD`: CPython, whose
//! `os.fork` runs its own fork handlers (the GIL, the import lock) around
//! the library's, with 2 threads allocating (bytes objects of 600 B to
//! 60 KB, which CPython takes from `malloc`, not from its own small-object
//! arenas) while the main thread forks. Each child allocates a few MB of
//! strings, lists and bytes, checks them, frees them and `os._exit(0)`s;
//! the parent waits for each at most 5 s, then kills it and counts it hung.
//! Skipped, saying so, when `python3` is not installed.
//!
//! `fork_storm_of_python_1000_times` is issue 10's figure (1,000 forks),
//! `#[ignore]`d for its length: `cargo test -p qpw-malloc --release --test
//! fork_programs -- --ignored`.

mod common;

use common::{preloaded, python, run};
use std::time::Duration;

/// The script: `argv[1]` forks, `argv[2]` seconds a child may run. With
/// `QPW_FORK_GDB` set, gdb's backtrace of a hung child goes to stderr before
/// it is killed (gdb itself without the library).
const SCRIPT: &str = r#"
import os, signal, sys, threading, time
n, limit = int(sys.argv[1]), float(sys.argv[2])
stop = False
churned = [0, 0]
def churn(k):
    keep, i = [], 0
    while not stop:
        keep.append(bytes(600 + (i * 7919 + k * 13) % 60000))
        keep.append([str(j) for j in range(16)])
        if len(keep) > 256:
            del keep[:128]
        i += 1
    churned[k] = i
ts = [threading.Thread(target=churn, args=(k,)) for k in range(2)]
for t in ts:
    t.start()
ok = hung = crashed = failed = 0
problems = []
for i in range(n):
    try:
        pid = os.fork()
    except OSError as e:
        failed += 1
        problems.append(f"fork {i}: {e}")
        continue
    if pid == 0:
        code = 4
        try:
            big = [bytes(1000 + j % 30000) for j in range(300)]
            strs = [str(j) * 10 for j in range(20000)]
            d = {j: [j] * 5 for j in range(20000)}
            good = all(len(b) == 1000 + j % 30000 for j, b in enumerate(big))
            good = good and len(d[19999]) == 5 and strs[123] == "123" * 10
            del big, strs, d
            code = 0 if good else 3
        finally:
            os._exit(code)
    deadline = time.monotonic() + limit
    while True:
        r, st = os.waitpid(pid, os.WNOHANG)
        if r == pid:
            if os.WIFEXITED(st) and os.WEXITSTATUS(st) == 0:
                ok += 1
            else:
                crashed += 1
                problems.append(f"fork {i}: wait status {st}")
            break
        if time.monotonic() > deadline:
            hung += 1
            with open(f"/proc/{pid}/wchan") as f:
                problems.append(f"fork {i}: hung in {f.read().strip()}")
            if os.environ.get("QPW_FORK_GDB"):
                os.system(f"LD_PRELOAD= gdb -p {pid} -batch -ex 'thread apply all bt' 1>&2")
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            break
        time.sleep(0.0005)
stop = True
for t in ts:
    t.join()
print(f"python fork: {n} forks, {ok} ok, {hung} hung, {crashed} crashed, {failed} fork failed")
print(f"threads allocated {sum(churned)} times; problems: {problems[:5]}")
"#;

/// Runs the script with `n` forks under the library and asserts every child
/// exited 0 and the library served the parent.
fn storm(n: usize) {
    let Some(py) = python() else {
        eprintln!("skipped: no python3 here");
        return;
    };
    let mut cmd = preloaded(&py);
    cmd.args(["-c", SCRIPT, &n.to_string(), "5"])
        .env("QPW_MALLOC_STATS", "1");
    let r = run(cmd, None, Duration::from_secs(60 + n as u64 * 6));
    r.assert_ok("python fork storm");
    let out = r.stdout();
    eprintln!("{}", out.trim());
    assert!(
        out.contains(&format!(
            "python fork: {n} forks, {n} ok, 0 hung, 0 crashed, 0 fork failed"
        )),
        "{out}\n{}",
        r.stderr()
    );
    let err = r.stderr();
    assert!(
        err.contains("qpw-malloc: statistics of pid") && err.contains("slabs: active"),
        "no statistics from the library, so python did not run on it:\n{err}"
    );
}

#[test]
fn python_forking_while_threads_allocate() {
    storm(50);
}

#[test]
#[ignore = "1,000 forks: run with --ignored (issue 10's figure)"]
fn fork_storm_of_python_1000_times() {
    storm(1000);
}
