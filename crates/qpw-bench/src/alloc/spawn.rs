//! Starting a worker (this executable re-run as `alloc-worker` under one
//! allocator, named in its environment) and waiting for it, bounded: a
//! workload's repetition or an allocator's fork storm.

use super::dispatch::{self, AllocName};
use super::fork;
use super::worker::WorkerResult;
use super::workloads::Workload;
use super::AllocArgs;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One worker's figures, as the parent sees them.
pub struct Run {
    /// What the worker printed.
    pub r: WorkerResult,
    /// Its peak RSS, KiB.
    pub max_rss_kib: u64,
}

/// Starts one worker and waits for it (at most `timeout`).
pub fn run_worker(
    exe: &std::path::Path,
    w: Workload,
    a: AllocName,
    args: &AllocArgs,
    seed: u64,
) -> Result<Run, String> {
    let stdout = spawn_worker(
        exe,
        a,
        &[
            "--workload",
            w.name(),
            "--seconds",
            &args.seconds.to_string(),
            "--scale",
            &args.scale.to_string(),
            "--seed",
            &seed.to_string(),
        ],
        Duration::from_secs_f64(args.timeout),
    )?;
    let r: WorkerResult = serde_json::from_str(stdout.trim())
        .map_err(|e| format!("bad worker output ({e}): {}", stdout.trim()))?;
    Ok(Run {
        max_rss_kib: r.peak_rss_kib,
        r,
    })
}

/// Starts `qpw-bench alloc-worker --allocator <a> <args>` under allocator
/// `a`, waits for it (at most `limit`, then kills it), and returns its
/// stdout if it exited 0.
fn spawn_worker(
    exe: &std::path::Path,
    a: AllocName,
    args: &[&str],
    limit: Duration,
) -> Result<String, String> {
    let mut child = Command::new(exe)
        .arg("alloc-worker")
        .args(["--allocator", a.name()])
        .args(args)
        .env(dispatch::ENV, a.name())
        .env_remove("QPW")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start a worker ({}): {e}", exe.display()))?;
    let pid = child.id() as libc::pid_t;
    let reader = |mut s: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = s.read_to_end(&mut v);
            String::from_utf8_lossy(&v).into_owned()
        })
    };
    let out = reader(Box::new(child.stdout.take().expect("piped stdout")));
    let err = reader(Box::new(child.stderr.take().expect("piped stderr")));
    let start = Instant::now();
    let mut status = 0;
    let mut timed_out = false;
    loop {
        // SAFETY: `pid` is our unreaped child; `status` is live.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if rc == pid {
            break;
        }
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("waiting for a worker: {e}"));
        }
        if start.elapsed() > limit {
            timed_out = true;
            // SAFETY: the child is not reaped yet, so `pid` is still ours.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    let last = stderr.lines().last().unwrap_or("").to_string();
    if timed_out {
        return Err(format!("timed out after {} s", limit.as_secs_f64()));
    }
    if !libc::WIFEXITED(status) {
        return Err(format!(
            "killed by signal {}{}",
            libc::WTERMSIG(status),
            if last.is_empty() {
                String::new()
            } else {
                format!(": {last}")
            }
        ));
    }
    if libc::WEXITSTATUS(status) != 0 {
        return Err(format!("exit {}: {last}", libc::WEXITSTATUS(status)));
    }
    Ok(stdout)
}

/// Runs one allocator's fork storm in a worker. Its time limit: the
/// workers' one (at least 0.1 s per fork), plus the child limit and 10 s
/// (for gdb) for each hung child the storm may wait for.
pub fn run_storm(
    exe: &std::path::Path,
    a: AllocName,
    args: &AllocArgs,
) -> Result<fork::StormResult, String> {
    let forks = args.forks();
    let limit = args.timeout.max(forks as f64 * 0.1)
        + fork::MAX_HUNG as f64 * (args.fork_child_limit + 10.0);
    let forks_s = forks.to_string();
    let child_s = args.fork_child_limit.to_string();
    let mut v = vec![
        "--forks",
        &forks_s,
        "--fork-child-limit",
        &child_s,
        "--seconds",
        "1",
        "--scale",
        "1",
    ];
    if args.fork_backtrace {
        v.push("--fork-backtrace");
    }
    let stdout = spawn_worker(exe, a, &v, Duration::from_secs_f64(limit))?;
    serde_json::from_str(stdout.trim())
        .map_err(|e| format!("bad fork storm output ({e}): {}", stdout.trim()))
}
