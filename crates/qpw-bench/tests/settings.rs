//! What the benchmark program does to the machine's settings: real-time
//! throttling (`sched_rt_runtime_us`) is changed only when asked for, and
//! written back when the run is interrupted by SIGINT or SIGTERM. A scratch
//! file stands in for the `/proc/sys` one (`QPW_BENCH_RT_RUNTIME_FILE`), so
//! the tests never change the machine's. Behaviour only: no timing asserted.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ENV: &str = "QPW_BENCH_RT_RUNTIME_FILE";

/// A scratch stand-in for `sched_rt_runtime_us`, holding the kernel's default.
fn stand_in(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("qpw-bench-settings-{}-{name}", std::process::id()));
    std::fs::write(&p, "950000\n").unwrap();
    p
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap().trim().to_string()
}

/// Whether this process may run a thread SCHED_FIFO 50 (root, CAP_SYS_NICE
/// or RLIMIT_RTPRIO): without it the FIFO runs are refused before anything
/// changes, which [`fifo_refused_changes_nothing`] checks instead.
fn may_fifo() -> bool {
    std::thread::spawn(|| {
        let p = libc::sched_param { sched_priority: 50 };
        // SAFETY: `p` is a valid sched_param; pid 0 is this short-lived thread.
        unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &p) == 0 }
    })
    .join()
    .unwrap()
}

/// `isolation --stress --owner-fifo 50`, long enough to be interrupted.
fn start_fifo_run(file: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_qpw-bench"))
        .args([
            "isolation",
            "--stress",
            "--owner-fifo",
            "50",
            "--mode",
            "remote",
            "--seconds",
            "30",
        ])
        .env_remove("QPW")
        .env(ENV, file)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("qpw-bench starts")
}

/// Waits at most `limit` for `cond`, polling.
fn wait_for(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(
            t.elapsed() < limit,
            "gave up after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn interrupted_run_restores(sig: libc::c_int, name: &str) {
    if !may_fifo() {
        eprintln!("SKIPPED: this process may not run SCHED_FIFO threads");
        return;
    }
    let file = stand_in(name);
    let mut child = start_fifo_run(&file);
    wait_for(
        Duration::from_secs(60),
        "throttling to be turned off",
        || read(&file) == "-1",
    );
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, sig) }, 0);
    let mut status = None;
    wait_for(Duration::from_secs(30), "the run to end", || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    let status = status.unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert_eq!(read(&file), "950000", "not restored; stderr:\n{stderr}");
    assert_eq!(status.signal(), Some(sig), "{status:?}; stderr:\n{stderr}");
    assert!(stderr.contains("restored to 950000"), "{stderr}");
    std::fs::remove_file(&file).unwrap();
}

#[test]
fn sigint_restores_real_time_throttling() {
    interrupted_run_restores(libc::SIGINT, "int");
}

#[test]
fn sigterm_restores_real_time_throttling() {
    interrupted_run_restores(libc::SIGTERM, "term");
}

#[test]
fn fifo_refused_changes_nothing() {
    if may_fifo() {
        eprintln!(
            "SKIPPED: this process may run SCHED_FIFO threads (the restore tests run instead)"
        );
        return;
    }
    let file = stand_in("refused");
    let o = Command::new(env!("CARGO_BIN_EXE_qpw-bench"))
        .args([
            "isolation",
            "--stress",
            "--owner-fifo",
            "50",
            "--seconds",
            "0.1",
        ])
        .env(ENV, &file)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--owner-fifo 50") && err.contains("SCHED_FIFO"),
        "{err}"
    );
    assert_eq!(read(&file), "950000");
    std::fs::remove_file(&file).unwrap();
}
