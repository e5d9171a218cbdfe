//! Runs the `global_alloc` example (a whole program on `QpwAlloc`) in each
//! mode and checks what it prints: its own checksum, threads bound and
//! released, threads beyond the last slot served by the shared path, large
//! allocations all freed, a drain and a shrink that worked.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The example's binary, built (or found up to date) once per test run
/// with the same profile and target directory as this test.
fn example() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("test binary path");
        let profile_dir = exe
            .parent()
            .and_then(|d| d.parent())
            .expect("target/<profile>/deps/..");
        let target_dir = profile_dir.parent().expect("target dir");
        let profile = profile_dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("debug");
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args([
            "build",
            "-q",
            "-p",
            "qpw-mm",
            "--example",
            "global_alloc",
            "--target-dir",
        ])
        .arg(target_dir);
        if profile == "release" {
            cmd.arg("--release");
        }
        if !cfg!(feature = "qpw") {
            // The example must be built as this test is: with qpw compiled out.
            cmd.arg("--no-default-features");
        }
        let st = cmd
            .status()
            .expect("running cargo build --example global_alloc");
        assert!(st.success(), "building the example failed");
        let bin = profile_dir.join("examples").join("global_alloc");
        assert!(bin.exists(), "no example binary at {}", bin.display());
        bin
    })
    .clone()
}

fn field(out: &str, key: &str) -> u64 {
    let summary = out
        .lines()
        .find(|l| l.starts_with("summary:"))
        .expect("a summary line");
    let kv = summary
        .split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{key} in {summary}"));
    kv.parse()
        .unwrap_or_else(|_| panic!("{key} is a number in {summary}"))
}

fn run(qpw: &str) -> String {
    let out = Command::new(example())
        .args(["3", "40"])
        .env("QPW", qpw)
        .output()
        .expect("running the example");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "QPW={qpw}: exit {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    assert!(stderr.is_empty(), "QPW={qpw}: unexpected stderr: {stderr}");
    stdout
}

fn check(qpw: &str, mode: &str) {
    let out = run(qpw);
    assert!(out.contains("checksum: ok"), "QPW={qpw}:\n{out}");
    assert!(out.contains(&format!("mode: {mode}")), "QPW={qpw}:\n{out}");
    assert!(out.contains("flush_all: ok"), "QPW={qpw}:\n{out}");
    assert!(out.contains("shrink: released"), "QPW={qpw}:\n{out}");
    assert!(out.contains("threads spawned: 240"), "QPW={qpw}:\n{out}");
    assert!(
        out.contains("boxes freed by the collector: 4800"),
        "QPW={qpw}:\n{out}"
    );
    let bound = field(&out, "bound");
    let unbound = field(&out, "unbound");
    // Far more threads than the 32 slots were bound over the run: slots of
    // exited threads were reused. All but the main thread released theirs.
    assert!(bound > 32, "QPW={qpw}: bound {bound}\n{out}");
    assert_eq!(
        unbound + 1,
        bound,
        "QPW={qpw}: every exited thread released its slot\n{out}"
    );
    // 40 threads at once with 32 slots: some went through the shared path.
    assert!(field(&out, "shared_no_slot") > 0, "QPW={qpw}:\n{out}");
    // Binding allocates (qpw boxes its owner record): served re-entrantly.
    assert!(field(&out, "shared_reentrant") > 0, "QPW={qpw}:\n{out}");
    assert_eq!(
        field(&out, "large_allocs") - field(&out, "large_frees"),
        field(&out, "large_live_start"),
        "QPW={qpw}: large objects leak\n{out}"
    );
    assert!(field(&out, "large_allocs") > 0);
}

#[test]
fn global_allocator_runs_a_threaded_program_in_every_mode() {
    check("0", "queue");
    if cfg!(feature = "qpw") {
        check("1", "remote");
        check("defer", "defer");
        check("auto:0", "auto:0");
    }
}

#[test]
fn a_bad_qpw_value_is_reported_and_queue_is_used() {
    let out = Command::new(example())
        .args(["1", "8"])
        .env("QPW", "bogus")
        .output()
        .expect("running the example");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("QPW") && stderr.contains("using mode queue"),
        "{stderr}"
    );
    assert!(
        stdout.contains("mode: queue") && stdout.contains("checksum: ok"),
        "{stdout}"
    );
}
