//! `qpw-bench isolation --stress`: does a drain stall the owner when the
//! machine is hostile to the drainer?
//!
//! The owner is pinned to the last CPU and spins through local sections,
//! recording every loop gap with the TSC. On the first other CPU run a
//! drainer that busy-waits between drain-alls at `--rate` per second, and a
//! CPU hog (an ordinary busy thread) pinned there too, so the scheduler
//! preempts the drainer now and then, wherever it is. The drain work holds
//! the owner's cell for `--hold-ns` (busy-waiting inside the cell's lock) and,
//! when it runs on another thread than the owner, writes the TSC at the start
//! and end of each hold into a preallocated array. Owner gaps over 100 µs and
//! over 1 ms are then matched against those intervals: a gap that overlaps a
//! hold was spent waiting on a remote holder (or at least while one held the
//! cell). `--owner-fifo PRIO` runs the owner `SCHED_FIFO`, as RT users run
//! isolated loops; real-time throttling is turned off for the run when the
//! process may (and restored after), and reported otherwise.
//!
//! Each mode runs a baseline first (same owner, hog and loop, no drains).

use crate::isolation::{mode_domain, Drainer, IsolationArgs, Pace, Phases};
use crate::setting::Changed;
use crate::tsc;
use crate::util::{self, BenchMode, Percentiles};
use qpw::{PerCpu, SlotStats};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// The drain work's default hold, in nanoseconds.
pub const DEFAULT_HOLD_NS: u64 = 20_000;
/// A stall: a loop gap over this many nanoseconds.
pub const STALL_NS: u64 = 100_000;
/// A long stall: over this many nanoseconds.
pub const LONG_STALL_NS: u64 = 1_000_000;
/// A stall that overlaps a hold and ends at most this long after the hold's
/// end was waiting on it: the owner went on when the holder let go. (A stall
/// from elsewhere, e.g. the hypervisor taking the owner's CPU, overlaps
/// holds by chance when it is long, but rarely ends right after one.)
pub const WAKE_WINDOW_NS: u64 = 200_000;

const RT_RUNTIME: &str = "/proc/sys/kernel/sched_rt_runtime_us";

/// Names a file that stands in for [`RT_RUNTIME`], for tests: they check
/// what a run does to the setting without changing the machine's.
pub const RT_RUNTIME_ENV: &str = "QPW_BENCH_RT_RUNTIME_FILE";

/// The real-time throttling setting's file ([`RT_RUNTIME`] unless
/// [`RT_RUNTIME_ENV`] names another).
fn rt_runtime() -> std::path::PathBuf {
    std::env::var_os(RT_RUNTIME_ENV).map_or_else(|| RT_RUNTIME.into(), Into::into)
}

/// One mode's result under stress; the `--json` line.
#[derive(Debug, Clone, Serialize)]
pub struct StressResult {
    /// The mode.
    pub mode: &'static str,
    /// The owner's scheduling policy: `SCHED_OTHER` or `SCHED_FIFO <prio>`.
    pub owner_policy: String,
    /// Real-time throttling during the run (`off`, `off for the run`, or `on (...)`).
    pub rt_throttling: String,
    /// The slot (and CPU) the owner was bound to.
    pub owner_cpu: usize,
    /// The CPU of the drainer and the hog (`None`: a 1-CPU machine, unpinned).
    pub drainer_cpu: Option<usize>,
    /// Seconds of each phase.
    pub seconds: f64,
    /// Drains asked per second.
    pub rate: u64,
    /// How long the drain work holds the owner's cell, ns.
    pub hold_ns: u64,
    /// Drain-all calls completed.
    pub drains: u64,
    /// Drain-all calls that returned an error.
    pub drains_failed: u64,
    /// Signals sent during the drained phase.
    pub fences: u64,
    /// Works on the owner's slot run by another thread (each one a remote hold).
    pub works_run_remotely: u64,
    /// Remote holds recorded (timestamps kept for matching).
    pub remote_holds: u64,
    /// Cell-lock acquisitions on the owner's slot that found the lock taken.
    pub lock_contended: u64,
    /// Times the owner waited for its cell in the kernel (`FUTEX_LOCK_PI`).
    pub owner_waits_pi: u64,
    /// Owner gaps over 100 µs while drained.
    pub stalls_over_100us: u64,
    /// Owner gaps over 1 ms while drained.
    pub stalls_over_1ms: u64,
    /// Of the gaps over 100 µs, those that overlap a remote hold.
    pub stalls_over_100us_in_hold: u64,
    /// Of the gaps over 1 ms, those that overlap a remote hold.
    pub stalls_over_1ms_in_hold: u64,
    /// The longest gap that overlaps a remote hold, ns (0: none over 100 µs).
    pub longest_stall_in_hold_ns: f64,
    /// Of the gaps over 100 µs in a hold, those that ended within 200 µs
    /// after the hold's end: the owner was waiting on that holder.
    pub stalls_over_100us_waiting: u64,
    /// The same over 1 ms.
    pub stalls_over_1ms_waiting: u64,
    /// The longest of those, ns.
    pub longest_stall_waiting_ns: f64,
    /// The longest gap while drained, ns.
    pub longest_stall_ns: f64,
    /// Owner gaps over 100 µs in the baseline.
    pub baseline_stalls_over_100us: u64,
    /// Owner gaps over 1 ms in the baseline.
    pub baseline_stalls_over_1ms: u64,
    /// The longest gap in the baseline, ns.
    pub baseline_longest_stall_ns: f64,
    /// Latency of one drain-all, ns.
    pub drain_latency_ns: Percentiles,
    /// Owner loop iterations per second while drained.
    pub owner_ops_per_sec: f64,
    /// The same in the baseline.
    pub baseline_ops_per_sec: f64,
    /// Increments made by the owner (both phases).
    pub increments: u64,
    /// The counter's total after the last drain: equal to `increments`, or the run failed.
    pub counter_total: u64,
}

/// What the run needs besides [`IsolationArgs`].
#[derive(Debug, Clone, Copy)]
struct Opts {
    hold_ns: u64,
    fifo: Option<i32>,
}

fn opts(a: &IsolationArgs) -> Opts {
    Opts {
        hold_ns: a.hold_ns.unwrap_or(DEFAULT_HOLD_NS),
        fifo: a.owner_fifo,
    }
}

/// Sets the calling thread's policy to `SCHED_FIFO` at `prio`; the errno on failure.
fn set_fifo(prio: i32) -> Result<(), i32> {
    let p = libc::sched_param {
        sched_priority: prio,
    };
    // SAFETY: `p` is a valid sched_param; pid 0 is the calling thread.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &p) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

/// Whether this process may run a thread `SCHED_FIFO` at `prio`: tried on a
/// short-lived thread, so nothing else changes.
pub fn check_fifo(prio: i32) -> Result<(), String> {
    let r = std::thread::spawn(move || set_fifo(prio))
        .join()
        .map_err(|_| "the SCHED_FIFO probe thread panicked".to_string())?;
    match r {
        Ok(()) => Ok(()),
        Err(e) if e == libc::EPERM => Err(format!(
            "--owner-fifo {prio}: this process may not run threads SCHED_FIFO \
             (sched_setscheduler: {}); run it as root, or with CAP_SYS_NICE or an RLIMIT_RTPRIO of at least {prio}",
            std::io::Error::from_raw_os_error(e)
        )),
        Err(e) => Err(format!(
            "--owner-fifo {prio}: sched_setscheduler failed: {}",
            std::io::Error::from_raw_os_error(e)
        )),
    }
}

/// Real-time throttling off for a run, restored on drop, and on SIGINT,
/// SIGTERM or SIGHUP by [`crate::setting`]'s signal thread.
pub struct RtThrottle {
    /// What the run had: `off`, `off for the run (was N, restored after)` or `on (...)`.
    pub state: String,
    _restore: Option<Changed>,
}

impl RtThrottle {
    /// Turns throttling off if it is on and the process may; says what it did.
    pub fn off() -> RtThrottle {
        let path = rt_runtime();
        let was = match std::fs::read_to_string(&path) {
            Ok(s) => s.trim().to_string(),
            Err(e) => {
                return RtThrottle {
                    state: format!("unknown ({}: {e})", path.display()),
                    _restore: None,
                }
            }
        };
        if was == "-1" {
            return RtThrottle {
                state: "off".into(),
                _restore: None,
            };
        }
        match Changed::set(&path, "-1") {
            Ok(c) => RtThrottle {
                state: format!(
                    "off for the run (sched_rt_runtime_us was {}, restored after)",
                    c.was
                ),
                _restore: Some(c),
            },
            Err(e) => RtThrottle {
                state: format!("on ({e}): a spinning SCHED_FIFO owner is throttled"),
                _restore: None,
            },
        }
    }
}

/// Runs `qpw-bench isolation --stress`.
pub fn main(a: &IsolationArgs) -> Result<(), String> {
    let runs = run(a, &mut |_| {})?;
    if !a.json {
        println!("{}", markdown(&runs));
    }
    let mut failure = None;
    for r in &runs {
        if a.json {
            println!("{}", serde_json::to_string(r).map_err(|e| e.to_string())?);
        }
        if r.counter_total != r.increments {
            failure.get_or_insert(format!(
                "{} mode lost increments under stress: total {} != {} made",
                r.mode, r.counter_total, r.increments
            ));
        }
    }
    failure.map_or(Ok(()), Err)
}

/// Runs every mode asked for under stress; `step` is told when each starts.
pub fn run(a: &IsolationArgs, step: &mut dyn FnMut(&str)) -> Result<Vec<StressResult>, String> {
    let o = opts(a);
    if let Some(p) = o.fifo {
        check_fifo(p)?;
    }
    let throttle = o.fifo.map(|_| RtThrottle::off());
    let state = throttle.as_ref().map_or_else(
        || "n/a (no SCHED_FIFO thread)".to_string(),
        |t| t.state.clone(),
    );
    let mut out = Vec::new();
    for mode in util::modes_or_all(&a.mode) {
        step(&format!("isolation --stress: {}", mode.name()));
        let r = run_mode(mode, a, o, &state)?;
        if r.counter_total != r.increments {
            return Err(format!(
                "isolation --stress: {} mode lost increments: total {} != {} made",
                r.mode, r.counter_total, r.increments
            ));
        }
        out.push(r);
    }
    drop(throttle);
    Ok(out)
}

/// The Markdown table of stress runs.
pub fn markdown(runs: &[StressResult]) -> String {
    let mut s = String::new();
    s.push_str(
        "| mode | owner | hold | drains (failed) | fences | remote holds | owner PI waits | owner stalls > 100 µs / > 1 ms (baseline) | in a remote hold > 100 µs / > 1 ms (waiting on it) | longest in a hold (waiting) | longest (baseline) | drain p50 / p99 / max |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in runs {
        s.push_str(&format!(
            "| {} | {} | {} µs | {} ({}) | {} | {} | {} | {} / {} ({} / {}) | {} / {} ({} / {}) | {} µs ({} µs) | {} µs ({} µs) | {} / {} / {} µs |\n",
            r.mode,
            r.owner_policy,
            util::fmt_fig(r.hold_ns as f64 / 1e3),
            r.drains,
            r.drains_failed,
            r.fences,
            r.remote_holds,
            r.owner_waits_pi,
            r.stalls_over_100us,
            r.stalls_over_1ms,
            r.baseline_stalls_over_100us,
            r.baseline_stalls_over_1ms,
            r.stalls_over_100us_in_hold,
            r.stalls_over_1ms_in_hold,
            r.stalls_over_100us_waiting,
            r.stalls_over_1ms_waiting,
            util::fmt_fig(r.longest_stall_in_hold_ns / 1e3),
            util::fmt_fig(r.longest_stall_waiting_ns / 1e3),
            util::fmt_fig(r.longest_stall_ns / 1e3),
            util::fmt_fig(r.baseline_longest_stall_ns / 1e3),
            util::fmt_fig(r.drain_latency_ns.p50 / 1e3),
            util::fmt_fig(r.drain_latency_ns.p99 / 1e3),
            util::fmt_fig(r.drain_latency_ns.max / 1e3),
        ));
    }
    if !runs.is_empty() {
        s.push_str(&format!(
            "\nReal-time throttling: {}. Counter check: {}.\n",
            throttling_line(
                runs.iter()
                    .map(|r| (r.owner_policy.as_str(), r.rt_throttling.as_str()))
            ),
            if runs.iter().all(|r| r.counter_total == r.increments) {
                "nothing lost"
            } else {
                "INCREMENTS LOST"
            }
        ));
    }
    s
}

/// Real-time throttling per owner policy, in the order the rows run (a
/// table may hold `SCHED_OTHER` rows and `SCHED_FIFO` ones, run with
/// throttling in different states): `SCHED_OTHER owner: n/a (...); SCHED_FIFO 50 owner: off for the run`.
fn throttling_line<'a>(rows: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut seen: Vec<(&str, &str)> = Vec::new();
    for pair in rows {
        if !seen.contains(&pair) {
            seen.push(pair);
        }
    }
    seen.iter()
        .map(|(policy, state)| format!("{policy} owner: {state}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The owner's stalls in one phase.
struct Phase {
    iters: u64,
    ticks: u64,
    over_stall: u64,
    over_long: u64,
    longest: u64,
    /// (start, end) TSC of each gap over [`STALL_NS`], as many as fit.
    stalls: Vec<(u64, u64)>,
}

impl Phase {
    fn ops_per_sec(&self) -> f64 {
        let s = self.ticks as f64 / tsc::hz();
        if s > 0.0 {
            self.iters as f64 / s
        } else {
            0.0
        }
    }
}

/// The owner's loop: one local section per iteration, gaps over the stall
/// threshold kept (into a preallocated vector), until `stop`.
fn owner_loop(
    me: &mut qpw::Owner,
    counts: &PerCpu<u64>,
    defer: bool,
    stop: &AtomicBool,
    cap: usize,
) -> Phase {
    let stall = tsc::from_ns(STALL_NS as f64).max(1);
    let long = tsc::from_ns(LONG_STALL_NS as f64).max(1);
    let mut stalls = Vec::with_capacity(cap);
    let (mut iters, mut over_stall, mut over_long, mut longest) = (0u64, 0u64, 0u64, 0u64);
    let start = tsc::now();
    let mut prev = start;
    loop {
        *counts.lock(me) += 1;
        if defer {
            me.quiescent();
        }
        let t = tsc::now();
        let gap = t.saturating_sub(prev);
        if gap > stall {
            over_stall += 1;
            if gap > long {
                over_long += 1;
            }
            if stalls.len() < cap {
                stalls.push((prev, t));
            }
        }
        longest = longest.max(gap);
        prev = t;
        iters += 1;
        if stop.load(Ordering::Relaxed) {
            break;
        }
    }
    Phase {
        iters,
        ticks: prev - start,
        over_stall,
        over_long,
        longest,
        stalls,
    }
}

/// The remote holds' timestamps, written by the drain work without allocating.
struct Holds {
    start: Box<[AtomicU64]>,
    end: Box<[AtomicU64]>,
    next: AtomicUsize,
}

impl Holds {
    fn new(cap: usize) -> Holds {
        let v = |_| AtomicU64::new(0);
        Holds {
            start: (0..cap).map(v).collect(),
            end: (0..cap).map(v).collect(),
            next: AtomicUsize::new(0),
        }
    }

    fn record(&self, t0: u64, t1: u64) {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        if i < self.start.len() {
            self.start[i].store(t0, Ordering::Relaxed);
            self.end[i].store(t1, Ordering::Relaxed);
        }
    }

    /// The recorded intervals, sorted by start.
    fn intervals(&self) -> Vec<(u64, u64)> {
        let n = self.next.load(Ordering::SeqCst).min(self.start.len());
        let mut v: Vec<_> = (0..n)
            .map(|i| {
                (
                    self.start[i].load(Ordering::SeqCst),
                    self.end[i].load(Ordering::SeqCst),
                )
            })
            .collect();
        v.sort_unstable();
        v
    }
}

/// Stalls over each threshold and the longest of them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Matched {
    n: u64,
    n_long: u64,
    longest: u64,
}

impl Matched {
    fn add(&mut self, gap: u64, long: u64) {
        self.n += 1;
        if gap > long {
            self.n_long += 1;
        }
        self.longest = self.longest.max(gap);
    }
}

/// Gaps (`stalls`) that overlap one of `holds` (sorted, not overlapping each
/// other: one drainer), and of those, the ones that ended within `window`
/// ticks after the end of a hold they overlap.
fn match_stalls(stalls: &[(u64, u64)], holds: &[(u64, u64)], window: u64) -> (Matched, Matched) {
    let long = tsc::from_ns(LONG_STALL_NS as f64).max(1);
    let (mut inside, mut waiting) = (Matched::default(), Matched::default());
    for &(s, e) in stalls {
        // The first hold that ends after the gap starts; it overlaps if it
        // starts before the gap ends.
        let i = holds.partition_point(|&(_, he)| he <= s);
        if holds.get(i).is_none_or(|&(hs, _)| hs >= e) {
            continue;
        }
        inside.add(e - s, long);
        // The last hold that starts before the gap ends: did the gap end
        // right after it did?
        let j = holds.partition_point(|&(hs, _)| hs < e);
        let (_, he) = holds[j - 1];
        if he > s && he <= e && e - he <= window {
            waiting.add(e - s, long);
        }
    }
    (inside, waiting)
}

fn delta(a: &SlotStats, b: &SlotStats) -> (u64, u64, u64, u64) {
    (
        a.fences() - b.fences(),
        // Run on another thread: under the cell lock, or fenced (`queue`).
        (a.works_remote + a.works_fenced) - (b.works_remote + b.works_fenced),
        a.lock_contended - b.lock_contended,
        a.owner_waits_pi - b.owner_waits_pi,
    )
}

fn run_mode(
    mode: BenchMode,
    a: &IsolationArgs,
    o: Opts,
    rt_throttling: &str,
) -> Result<StressResult, String> {
    let (domain, owner_cpu, drainer_cpu) = mode_domain(mode, "isolation --stress")?;
    let counts = Arc::new(PerCpu::new(&domain, |_| 0u64));
    let total = Arc::new(AtomicU64::new(0));
    let expected_drains = (a.rate as f64 * a.seconds) as usize + 1024;
    let holds = Arc::new(Holds::new(expected_drains));
    let hold_ticks = tsc::from_ns(o.hold_ns as f64).max(1);
    let drain = Arc::new(domain.work_all({
        let (counts, total, holds) = (counts.clone(), total.clone(), holds.clone());
        move |ctx| {
            let mine = ctx.cpu() == owner_cpu;
            let remote = ctx.is_remote();
            let Ok(mut c) = counts.lock_ctx(ctx) else {
                return;
            };
            if mine {
                let t0 = tsc::now();
                let mut t1 = t0;
                while t1.wrapping_sub(t0) < hold_ticks {
                    std::hint::spin_loop();
                    t1 = tsc::now();
                }
                if remote {
                    holds.record(t0, t1);
                }
            }
            total.fetch_add(std::mem::take(&mut *c), Ordering::Relaxed);
        }
    }));
    // Room for a stall every 100 µs of the phase.
    let stall_cap = (a.seconds * 1e9 / STALL_NS as f64) as usize + 16;
    let phases = Phases::new();
    let stop_hog = Arc::new(AtomicBool::new(false));

    let hog = std::thread::Builder::new().name("qpw-hog".into()).spawn({
        let stop_hog = stop_hog.clone();
        move || {
            if let Some(c) = drainer_cpu {
                let _ = util::pin_current(c);
            }
            let mut x = 0u64;
            while !stop_hog.load(Ordering::Relaxed) {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
    });
    let hog = hog.map_err(|e| format!("spawning the hog thread: {e}"))?;

    let owner = std::thread::Builder::new().name("qpw-owner".into()).spawn({
        let (domain, counts, phases) = (domain.clone(), counts.clone(), phases.clone());
        let defer = mode == BenchMode::Defer;
        let fifo = o.fifo;
        move || -> Result<(Phase, Phase), String> {
            let bind = || {
                domain
                    .bind(owner_cpu)
                    .map_err(|e| format!("binding the owner to CPU {owner_cpu}: {e}"))
                    .and_then(|me| match fifo {
                        Some(p) => set_fifo(p).map(|()| me).map_err(|e| {
                            format!(
                                "--owner-fifo {p}: sched_setscheduler: {}",
                                std::io::Error::from_raw_os_error(e)
                            )
                        }),
                        None => Ok(me),
                    })
            };
            phases.run_owner(bind, |me, stop| {
                owner_loop(me, &counts, defer, stop, stall_cap)
            })
        }
    });
    let owner = match owner {
        Ok(o) => o,
        Err(e) => {
            stop_hog.store(true, Ordering::SeqCst);
            let _ = hog.join();
            return Err(format!("spawning the owner thread: {e}"));
        }
    };

    let drainer =
        Drainer::new(a, (owner_cpu, drainer_cpu), &domain, &drain, &phases).spawn(Pace::BusyWait);
    let d = match drainer {
        Ok(d) => d
            .join()
            .map_err(|_| "the drainer thread panicked".to_string()),
        Err(e) => Err(format!("spawning the drainer thread: {e}")),
    };
    phases.stop();
    let o_res = owner
        .join()
        .map_err(|_| "the owner thread panicked".to_string());
    stop_hog.store(true, Ordering::SeqCst);
    let _ = hog.join();
    let d = d??;
    let (base, drained) = o_res??;
    let d = d.ok_or("the owner could not bind")?;

    // The holds of the drained phase only: the final drain runs every slot here.
    let intervals = holds.intervals();
    drain
        .run()
        .map_err(|e| format!("the final drain failed: {e}"))?;
    let increments = base.iters + drained.iters;
    let counter_total = total.load(Ordering::SeqCst);

    let window = tsc::from_ns(WAKE_WINDOW_NS as f64);
    let (inside, waiting) = match_stalls(&drained.stalls, &intervals, window);
    let (_, remote, contended, pi_waits) = delta(&d.after, &d.before);
    let (fences, _, _, _) = delta(&d.after_all, &d.before_all);
    Ok(StressResult {
        mode: mode.name(),
        owner_policy: o
            .fifo
            .map_or_else(|| "SCHED_OTHER".to_string(), |p| format!("SCHED_FIFO {p}")),
        rt_throttling: rt_throttling.to_string(),
        owner_cpu,
        drainer_cpu,
        seconds: a.seconds,
        rate: a.rate,
        hold_ns: o.hold_ns,
        drains: d.lat_ns.len() as u64,
        drains_failed: d.failed,
        fences,
        works_run_remotely: remote,
        remote_holds: intervals.len() as u64,
        lock_contended: contended,
        owner_waits_pi: pi_waits,
        stalls_over_100us: drained.over_stall,
        stalls_over_1ms: drained.over_long,
        stalls_over_100us_in_hold: inside.n,
        stalls_over_1ms_in_hold: inside.n_long,
        longest_stall_in_hold_ns: tsc::to_ns(inside.longest),
        stalls_over_100us_waiting: waiting.n,
        stalls_over_1ms_waiting: waiting.n_long,
        longest_stall_waiting_ns: tsc::to_ns(waiting.longest),
        longest_stall_ns: tsc::to_ns(drained.longest),
        baseline_stalls_over_100us: base.over_stall,
        baseline_stalls_over_1ms: base.over_long,
        baseline_longest_stall_ns: tsc::to_ns(base.longest),
        drain_latency_ns: util::percentiles(&d.lat_ns),
        owner_ops_per_sec: drained.ops_per_sec(),
        baseline_ops_per_sec: base.ops_per_sec(),
        increments,
        counter_total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::{parse_fifo_prio, parse_hold_ns};

    #[test]
    fn option_parsers_name_the_bad_value() {
        assert!(parse_hold_ns("0").unwrap_err().contains("out of range"));
        assert!(parse_hold_ns("abc").unwrap_err().contains("abc"));
        assert!(parse_hold_ns("20000000").is_err());
        assert_eq!(parse_hold_ns("20000").unwrap(), 20_000);
        assert!(parse_fifo_prio("0").unwrap_err().contains("1 to 99"));
        assert!(parse_fifo_prio("100").is_err());
        assert!(parse_fifo_prio("x").is_err());
        assert_eq!(parse_fifo_prio("50").unwrap(), 50);
    }

    /// The report's table holds `SCHED_OTHER` and `SCHED_FIFO` rows: the
    /// throttling line names each policy's state (it used to print the
    /// first row's, "n/a (SCHED_OTHER owner)", under the FIFO rows too).
    #[test]
    fn throttling_line_is_true_for_every_policy_in_the_table() {
        let other = ("SCHED_OTHER", "n/a (no SCHED_FIFO thread)");
        let fifo = ("SCHED_FIFO 50", "off for the run");
        assert_eq!(
            throttling_line([other, other, fifo, fifo]),
            "SCHED_OTHER owner: n/a (no SCHED_FIFO thread); SCHED_FIFO 50 owner: off for the run"
        );
        assert_eq!(
            throttling_line([fifo]),
            "SCHED_FIFO 50 owner: off for the run"
        );
    }

    #[test]
    fn stalls_are_matched_to_overlapping_holds_only() {
        let holds = [(100, 200), (1_000, 1_100), (5_000, 5_050)];
        // Inside the first, straddling the second's end, before the third,
        // and one covering the third.
        let stalls = [(120, 150), (1_050, 1_500), (2_000, 4_000), (4_900, 5_100)];
        let (inside, waiting) = match_stalls(&stalls, &holds, 100);
        assert_eq!(inside.n, 3);
        assert_eq!(inside.longest, 450);
        // Ended within 100 ticks of its hold's end: only the last one (the
        // first ended inside its hold, the second 400 ticks after).
        assert_eq!(waiting.n, 1);
        assert_eq!(waiting.longest, 200);
        assert_eq!(match_stalls(&stalls, &[], 100).0.n, 0);
        // A gap that ends exactly where a hold starts does not overlap it.
        assert_eq!(match_stalls(&[(50, 100)], &holds, 100).0.n, 0);
    }
}
