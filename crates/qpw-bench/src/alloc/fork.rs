//! The fork storm: issue 10's goal "0 hung or crashed children in 1,000
//! forks", measured per allocator.
//!
//! In a worker process of its own (like every workload): 2 threads allocate
//! and free, small objects (16 B to 1 KiB) and mid-size ones (4 KiB to
//! 256 KiB), each batch handed to the other thread to free, while the main
//! thread forks `N` times. Each child allocates 2 MiB of small objects and
//! 2 MiB of mid-size ones, checks their contents, frees them and `_exit`s.
//! The parent waits for each child at most the child limit; a child still
//! running then is *hung* (what it waits in is recorded, and with
//! `--fork-backtrace` gdb's backtrace of its threads goes to stderr), then
//! killed. A child killed by a signal or exiting non-zero is *crashed*; a
//! `fork` that fails is counted apart. After [`MAX_HUNG`] hung children the
//! storm stops (so a broken allocator cannot hold the report for
//! `N` × the limit), and says so.
//!
//! Timing (indicative, not a goal): the parent's `fork()` call (prepare
//! handlers, the kernel's copy, parent handlers); the child's start (the
//! parent's clock before `fork()` to the child's first instruction after it:
//! adds the child handlers); the child's run (its allocations, which pay
//! for whatever state the handlers left, e.g. caches rebuilt). The child
//! writes its two clock readings into a shared anonymous mapping made before
//! the storm: nothing is allocated to report them.

use super::dispatch::AllocName;
use crate::util;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Forks of a storm unless told otherwise (issue 10's goal).
pub const DEFAULT_FORKS: usize = 1000;
/// How long a child may run before it counts as hung, unless told otherwise.
pub const DEFAULT_CHILD_LIMIT_S: f64 = 5.0;
/// The storm stops after this many hung children.
pub const MAX_HUNG: usize = 10;
/// Problems (hung or crashed children) described in the result; the rest
/// are only counted.
const MAX_PROBLEMS: usize = 5;
/// Bytes of small objects, then of mid-size ones, each child allocates.
const CHILD_BYTES: usize = 2 << 20;
/// A child's exit status when its objects did not hold what it wrote.
const EXIT_BAD_DATA: i32 = 3;

/// Parses `--forks`: 0 (no storm) to 100,000.
pub fn parse_forks(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n <= 100_000 => Ok(n),
        Ok(n) => Err(format!("{n} forks is out of range: use 0 to 100000")),
        Err(_) => Err(format!("`{s}` is not a number of forks")),
    }
}

/// Latency figures, nanoseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Lat {
    /// Median.
    pub p50_ns: f64,
    /// 99th percentile (nearest rank).
    pub p99_ns: f64,
    /// Largest.
    pub max_ns: f64,
}

impl Lat {
    fn of(samples: &[f64]) -> Lat {
        let p = util::percentiles(samples);
        Lat {
            p50_ns: p.p50,
            p99_ns: p.p99,
            max_ns: p.max,
        }
    }
}

/// What a fork-storm worker prints (one JSON line), and the report's row.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StormResult {
    /// The allocator's name.
    pub allocator: String,
    /// Forks asked for.
    pub forks_asked: usize,
    /// `fork()` calls made (fewer than asked only if the storm stopped).
    pub forks: usize,
    /// Children that exited 0 within the limit.
    pub ok: usize,
    /// Children still running at the limit (then killed).
    pub hung: usize,
    /// Children killed by a signal, or exiting non-zero (3: their objects
    /// did not hold what they wrote).
    pub crashed: usize,
    /// `fork()` calls that failed.
    pub fork_failed: usize,
    /// Whether the storm stopped at [`MAX_HUNG`] hung children.
    pub stopped_early: bool,
    /// The first few hung or crashed children, described (`null`: none).
    pub problems: Option<String>,
    /// The parent's `fork()` call.
    pub fork: Lat,
    /// From the parent's clock before `fork()` to the child's first
    /// instruction after it (children that exited 0).
    pub child_start: Lat,
    /// The child's allocations, check and frees, to just before `_exit`
    /// (children that exited 0).
    pub child_run: Lat,
    /// Objects the 2 threads allocated during the storm (they were busy).
    pub churn_objects: u64,
    /// Seconds of the whole storm.
    pub elapsed_s: f64,
}

/// `CLOCK_MONOTONIC` in nanoseconds: the same clock in parent and child,
/// read without allocating (async-signal-safe).
fn mono_ns() -> u64 {
    // SAFETY: plain data, filled by clock_gettime.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `ts` is live and writable.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A shared anonymous mapping of `2 × n` clock readings: children write
/// their own pair, the parent reads it after reaping them.
struct Stamps {
    ptr: *mut u64,
    n: usize,
}

impl Stamps {
    fn new(n: usize) -> Result<Stamps, String> {
        let len = (2 * n).max(1) * 8;
        // SAFETY: a fresh anonymous mapping; no existing memory is touched.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!(
                "fork storm: cannot map {len} bytes for the children's clocks: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(Stamps { ptr: p.cast(), n })
    }

    fn set(&self, i: usize, which: usize, v: u64) {
        assert!(i < self.n && which < 2);
        // SAFETY: in bounds of the mapping (checked above); each slot is
        // written by one child and read by the parent only after that child
        // was reaped (its exit orders the write before the read).
        unsafe { self.ptr.add(2 * i + which).write_volatile(v) }
    }

    fn get(&self, i: usize, which: usize) -> u64 {
        assert!(i < self.n && which < 2);
        // SAFETY: as in `set`.
        unsafe { self.ptr.add(2 * i + which).read_volatile() }
    }
}

impl Drop for Stamps {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, of this length, unmapped once.
        unsafe { libc::munmap(self.ptr.cast(), (2 * self.n).max(1) * 8) };
    }
}

/// A heap object of `n` bytes, its first and last bytes written.
fn object(n: usize, tag: u8) -> Vec<u8> {
    let mut v = Vec::with_capacity(n);
    v.resize(n, tag);
    v
}

/// One of the 2 parent threads: batches of 64 objects (1 in 16 mid-size),
/// each put in the other thread's mailbox; whatever is in its own mailbox
/// (the other's batch) it frees.
fn churn(t: usize, stop: &AtomicBool, mailboxes: &[Mutex<Vec<Vec<u8>>>; 2], objects: &AtomicU64) {
    let mut rng = fastrand::Rng::with_seed(0x5eed ^ t as u64);
    while !stop.load(Ordering::Relaxed) {
        let batch: Vec<Vec<u8>> = (0..64)
            .map(|_| {
                let n = if rng.u8(..16) == 0 {
                    rng.usize(4096..=256 << 10)
                } else {
                    rng.usize(16..=1024)
                };
                let mut v = Vec::with_capacity(n);
                v.push(n as u8);
                v
            })
            .collect();
        // My batch to the other thread; an older one of mine it has not
        // taken yet comes back and is freed here.
        let mine = std::mem::replace(
            &mut *mailboxes[1 - t].lock().unwrap_or_else(|e| e.into_inner()),
            batch,
        );
        drop(mine);
        let theirs = std::mem::take(&mut *mailboxes[t].lock().unwrap_or_else(|e| e.into_inner()));
        drop(theirs);
        objects.fetch_add(64, Ordering::Relaxed);
    }
}

/// In the child: 2 MiB of small objects and 2 MiB of mid-size ones,
/// interleaved, checked, freed; `_exit`.
fn child(i: usize, stamps: &Stamps) -> ! {
    let start = mono_ns();
    let small = [16usize, 40, 100, 256, 700, 1000];
    let mid = [4096usize, 20_000, 70_000, 200_000];
    let mut v: Vec<Vec<u8>> = Vec::with_capacity(16 << 10);
    let (mut s_bytes, mut m_bytes, mut k) = (0usize, 0usize, 0usize);
    while s_bytes < CHILD_BYTES || m_bytes < CHILD_BYTES {
        let n = if k % 64 == 63 && m_bytes < CHILD_BYTES || s_bytes >= CHILD_BYTES {
            let n = mid[(k / 64) % mid.len()];
            m_bytes += n;
            n
        } else {
            let n = small[k % small.len()];
            s_bytes += n;
            n
        };
        v.push(object(n, k as u8));
        k += 1;
    }
    let ok = v
        .iter()
        .enumerate()
        .all(|(j, b)| b.first() == Some(&(j as u8)) && b.last() == Some(&(j as u8)));
    drop(v);
    stamps.set(i, 0, start);
    stamps.set(i, 1, mono_ns());
    // SAFETY: _exit ends the child without the parent's atexit work or
    // flushing its copied stdio buffers.
    unsafe { libc::_exit(if ok { 0 } else { EXIT_BAD_DATA }) }
}

/// How a child ended.
enum End {
    Exited(i32),
    Hung,
}

/// Waits for `pid` at most `limit` (naps from 20 µs, doubling to 1 ms).
fn wait_bounded(pid: libc::pid_t, limit: Duration) -> Result<End, String> {
    let start = Instant::now();
    let mut nap = Duration::from_micros(20);
    loop {
        let mut status = 0;
        // SAFETY: `pid` is our unreaped child; `status` is live.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if rc == pid {
            return Ok(End::Exited(status));
        }
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("fork storm: waiting for child {pid}: {e}"));
        }
        if start.elapsed() > limit {
            return Ok(End::Hung);
        }
        std::thread::sleep(nap);
        nap = (nap * 2).min(Duration::from_millis(1));
    }
}

/// What a hung child is doing: its state and kernel wait channel, and with
/// `backtrace`, gdb's backtrace of every thread (to stderr).
fn describe_hung(pid: libc::pid_t, backtrace: bool) -> String {
    let read = |f: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/{f}"))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|e| format!("({f}: {e})"))
    };
    let state = read("stat")
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".to_string());
    let wchan = read("wchan");
    if backtrace {
        match std::process::Command::new("gdb")
            .args([
                "-p",
                &pid.to_string(),
                "-batch",
                "-ex",
                "thread apply all bt",
            ])
            .stdin(std::process::Stdio::null())
            .output()
        {
            Ok(o) => eprintln!(
                "qpw-bench: fork storm: hung child {pid}: gdb:\n{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("qpw-bench: fork storm: hung child {pid}: cannot run gdb: {e}"),
        }
    }
    format!("state {state}, waiting in {wchan}")
}

/// Options of one storm.
#[derive(Debug, Clone, Copy)]
pub struct StormArgs {
    /// Forks.
    pub forks: usize,
    /// How long a child may run.
    pub child_limit: Duration,
    /// gdb's backtrace of each hung child, to stderr.
    pub backtrace: bool,
}

/// Runs the storm in this process (the worker's job), under the process's
/// allocator `a`.
pub fn storm(a: AllocName, s: &StormArgs) -> Result<StormResult, String> {
    let stamps = Stamps::new(s.forks)?;
    let stop = AtomicBool::new(false);
    let objects = AtomicU64::new(0);
    let mailboxes = [Mutex::new(Vec::new()), Mutex::new(Vec::new())];
    let mut r = StormResult {
        allocator: a.name().to_string(),
        forks_asked: s.forks,
        forks: 0,
        ok: 0,
        hung: 0,
        crashed: 0,
        fork_failed: 0,
        stopped_early: false,
        problems: None,
        fork: Lat::default(),
        child_start: Lat::default(),
        child_run: Lat::default(),
        churn_objects: 0,
        elapsed_s: 0.0,
    };
    let mut problems: Vec<String> = Vec::new();
    let mut fork_ns = Vec::with_capacity(s.forks);
    let mut start_ns = Vec::with_capacity(s.forks);
    let mut run_ns = Vec::with_capacity(s.forks);
    let t0 = Instant::now();
    let res = std::thread::scope(|sc| {
        for t in 0..2 {
            let (stop, mailboxes, objects) = (&stop, &mailboxes, &objects);
            sc.spawn(move || churn(t, stop, mailboxes, objects));
        }
        // Let both threads get going (and bind their slots) first.
        while objects.load(Ordering::Relaxed) < 1024 {
            std::thread::yield_now();
        }
        let out = (|| {
            for i in 0..s.forks {
                // The forking thread allocates too, so it has state of its own.
                let warm = object(100 + i % 3000, 1);
                let before = mono_ns();
                let t = Instant::now();
                // SAFETY: fork has no memory preconditions; the child only
                // allocates through this process's allocator, writes its
                // stamps and calls _exit.
                let pid = unsafe { libc::fork() };
                if pid == 0 {
                    child(i, &stamps);
                }
                let took = t.elapsed();
                drop(warm);
                r.forks += 1;
                if pid < 0 {
                    r.fork_failed += 1;
                    if problems.len() < MAX_PROBLEMS {
                        problems.push(format!(
                            "fork {i}: failed: {}",
                            std::io::Error::last_os_error()
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
                fork_ns.push(took.as_nanos() as f64);
                match wait_bounded(pid, s.child_limit)? {
                    End::Exited(st) if libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0 => {
                        r.ok += 1;
                        let (b, e) = (stamps.get(i, 0), stamps.get(i, 1));
                        start_ns.push(b.saturating_sub(before) as f64);
                        run_ns.push(e.saturating_sub(b) as f64);
                    }
                    End::Exited(st) => {
                        r.crashed += 1;
                        if problems.len() < MAX_PROBLEMS {
                            problems.push(if libc::WIFSIGNALED(st) {
                                format!("fork {i}: child killed by signal {}", libc::WTERMSIG(st))
                            } else {
                                format!("fork {i}: child exited {}", libc::WEXITSTATUS(st))
                            });
                        }
                    }
                    End::Hung => {
                        r.hung += 1;
                        let what = describe_hung(pid, s.backtrace);
                        if problems.len() < MAX_PROBLEMS {
                            problems.push(format!(
                                "fork {i}: child hung over {} s ({what})",
                                s.child_limit.as_secs_f64()
                            ));
                        }
                        // SAFETY: our unreaped child: kill it and reap it.
                        unsafe {
                            libc::kill(pid, libc::SIGKILL);
                            libc::waitpid(pid, std::ptr::null_mut(), 0);
                        }
                        if r.hung >= MAX_HUNG {
                            r.stopped_early = true;
                            break;
                        }
                    }
                }
            }
            Ok::<(), String>(())
        })();
        stop.store(true, Ordering::Relaxed);
        out
    });
    res?;
    r.elapsed_s = t0.elapsed().as_secs_f64();
    r.churn_objects = objects.load(Ordering::Relaxed);
    r.fork = Lat::of(&fork_ns);
    r.child_start = Lat::of(&start_ns);
    r.child_run = Lat::of(&run_ns);
    r.problems = (!problems.is_empty()).then(|| problems.join("; "));
    Ok(r)
}

/// How the storm is measured, for the report.
pub fn method(forks: usize, child_limit_s: f64) -> String {
    format!(
        "per allocator, one worker process (as the workloads' ones, on the first two CPUs): 2 threads allocate \
         batches of 64 objects (16 B to 1 KiB, 1 in 16 of 4 KiB to 256 KiB) and hand each batch to the other \
         thread to free, while the main thread allocates and forks {forks} times, one child at a time; each child \
         allocates 2 MiB of small objects (16 B to 1,000 B) and 2 MiB of mid-size ones (4 KiB to 200 KB), checks \
         and frees them, and `_exit(0)`s; the parent waits for each child at most {child_limit_s} s, then kills it \
         and counts it hung (the storm stops at {MAX_HUNG} hung); crashed = killed by a signal or a nonzero exit; \
         fork() is the parent's call, child start is from the parent's clock before fork() to the child's first \
         instruction after it (its fork handlers included), child run is its allocations, check and frees \
         (CLOCK_MONOTONIC, written by the child into shared memory)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forks_are_checked() {
        assert_eq!(parse_forks("0"), Ok(0));
        assert_eq!(parse_forks("1000"), Ok(1000));
        assert!(parse_forks("100001").unwrap_err().contains("0 to 100000"));
        assert!(parse_forks("-1").unwrap_err().contains("`-1`"));
    }

    #[test]
    fn a_child_that_exits_is_reaped_and_one_that_sleeps_is_hung() {
        // SAFETY: the child only calls _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: ends the child at once.
            unsafe { libc::_exit(7) }
        }
        match wait_bounded(pid, Duration::from_secs(10)).unwrap() {
            End::Exited(st) => assert_eq!(libc::WEXITSTATUS(st), 7),
            End::Hung => panic!("a child that exits at once counted hung"),
        }
        // SAFETY: the child only sleeps (no allocation) until killed.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            loop {
                // SAFETY: pause has no preconditions.
                unsafe { libc::pause() };
            }
        }
        assert!(matches!(
            wait_bounded(pid, Duration::from_millis(50)).unwrap(),
            End::Hung
        ));
        assert!(describe_hung(pid, false).starts_with("state "));
        // SAFETY: our unreaped child.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
    }
}
