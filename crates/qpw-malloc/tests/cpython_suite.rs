//! CPython's own tests of signals, threads and subprocesses (Debian's
//! `/usr/bin/python3` with the `libpython3.11-testsuite` package) under the
//! preloaded library, in both of qpw's usual modes: every test module that
//! passes under glibc passes here too (issue 15). They exercise what a host
//! program expects of an allocator it did not choose: blocked signals stay
//! pending, `pthread_exit` and fork from a thread, `EINTR`-free calls.
//!
//! A missing interpreter or test package is a printed skip (`.ci/run`
//! installs them), never a silent pass. Each run is bounded (regrtest's own
//! per-test `--timeout`, and a kill of the whole run after `LIMIT`).

mod common;

use common::{preloaded, run};
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const PYTHON: &str = "/usr/bin/python3";
const MODULES: [&str; 3] = ["test_signal", "test_threading", "test_subprocess"];
/// A whole run (glibc: about a minute; each module is bounded to 5 min).
const LIMIT: Duration = Duration::from_secs(900);

/// The test package's path, if the interpreter and the package are there.
fn suite() -> Option<String> {
    if !Path::new(PYTHON).exists() {
        return None;
    }
    let out = Command::new(PYTHON)
        .args([
            "-c",
            "import test.test_signal, os; print(os.path.dirname(test.__file__))",
        ])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Runs the modules (`cmd` is the interpreter, preloaded or not) and
/// returns the modules that did not pass, and the run's output.
fn failed_modules(mut cmd: Command, what: &str) -> (BTreeSet<String>, String) {
    cmd.args(["-m", "test", "-j3", "--timeout", "300"])
        .args(MODULES)
        .current_dir(common::tmp_dir());
    let r = run(cmd, None, LIMIT);
    let out = format!("{}{}", r.stdout(), r.stderr());
    assert!(!r.timed_out, "{what}: the run timed out\n{}", tail(&out));
    // regrtest prints "[i/n] <module> passed" for each module that did.
    let failed: BTreeSet<String> = MODULES
        .iter()
        .filter(|m| {
            let pass = format!("] {m} passed");
            !out.lines().any(|l| l.contains(&pass))
        })
        .map(|m| m.to_string())
        .collect();
    (failed, out)
}

fn tail(s: &str) -> &str {
    let mut i = s.len().saturating_sub(6000);
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}

#[test]
fn cpython_signal_threading_subprocess_pass_as_under_glibc() {
    let Some(dir) = suite() else {
        println!(
            "SKIPPED: {PYTHON} or its test package (Debian: libpython3.11-testsuite) \
             is not installed"
        );
        return;
    };
    let (glibc, out) = failed_modules(Command::new(PYTHON), "glibc");
    println!("glibc ({dir}): failing modules {glibc:?}");
    if !glibc.is_empty() {
        println!("glibc's run (tail):\n{}", tail(&out));
    }
    for qpw in ["0", "1"] {
        let mut cmd = preloaded(PYTHON);
        cmd.env("QPW", qpw);
        let (ours, out) = failed_modules(cmd, &format!("QPW={qpw}"));
        println!("qpw-malloc QPW={qpw}: failing modules {ours:?}");
        let worse: Vec<_> = ours.difference(&glibc).collect();
        assert!(
            worse.is_empty(),
            "QPW={qpw}: {worse:?} fail under qpw-malloc but pass under glibc\n{}",
            tail(&out)
        );
    }
}
