//! `qpw-bench drain`: the latency of one drain-all against the number of CPUs.
//!
//! For each point, `n` owner threads each own one slot and spin through local
//! operations on a per-CPU counter (in `defer` mode calling their quiescent
//! point every iteration). Slots that are CPUs of this process are pinned to
//! them; slots above the machine's cores are owned by unpinned threads, so on
//! a small machine most owners wait for their turn on a core, as kworkers
//! would. A caller thread, pinned to the last CPU, runs drain-all (every
//! slot's count moved into a shared total) again and again and times each one
//! with the TSC.
//!
//! Two owner behaviours, because on a small machine they differ in what
//! they show:
//!
//! - `spin`: the owner does nothing but local operations, so when the
//!   scheduler preempts it, it is most likely inside its local section. In
//!   `remote` mode it then holds its slot's lock while preempted (a kernel
//!   spinlock disables preemption; a userspace one cannot), and the caller
//!   waits until it runs again.
//! - `yield`: the owner yields the CPU after each local operation, so it is
//!   descheduled outside its section, as an owner with a core of its own
//!   would be: the drain's own cost shows.
//!
//! `auto` treats every slot but slot 0 as isolated (slot 0 the housekeeping
//! CPU, the usual `nohz_full` layout): slot 0 runs `queue`, the others `remote`.
//!
//! The kernel's comparison is memcg `drain_all_stock` from the QPW thread,
//! in cycles: 1, 8, 128 CPUs: 44,331 / 43,993 / 156,275 before QPW, and
//! 38,978 / 39,027 / 58,054 after.

use crate::tsc;
use crate::util::{self, BenchMode, Percentiles, Summary};
use qpw::{Domain, PerCpu, SlotStats, Standard};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The default `--cpus` points.
pub const DEFAULT_CPUS: &str = "1,2,4,8,16,32,64,128,256";

/// Drains run before measuring, at every point.
pub const WARMUP_DRAINS: u64 = 2;

/// Drains measured at every point at least, whatever the time budget.
pub const MIN_DRAINS: u64 = 3;

/// How long a point may run before it is cut short: max(3 × budget, budget + 2 s).
/// The owners are then stopped (their slots go back to the caller) and the
/// drain in progress is discarded.
pub fn hard_limit(budget_s: f64) -> Duration {
    Duration::from_secs_f64((3.0 * budget_s).max(budget_s + 2.0))
}

/// What each owner thread does between drains.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OwnerLoop {
    /// Local operations back to back: preempted, most likely inside a section.
    Spin,
    /// A local operation, then `sched_yield`: descheduled outside its section.
    Yield,
}

impl OwnerLoop {
    /// The name in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            OwnerLoop::Spin => "spin",
            OwnerLoop::Yield => "yield",
        }
    }
}

/// Options of `qpw-bench drain`.
#[derive(clap::Args, Debug, Clone)]
pub struct DrainArgs {
    /// Modes to run, comma-separated (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub mode: Vec<BenchMode>,
    /// Slot counts to measure, comma-separated; slots above the machine's
    /// cores are owned by unpinned threads.
    #[arg(long, value_delimiter = ',', default_value = DEFAULT_CPUS, value_parser = util::parse_cpu_count, allow_negative_numbers = true)]
    pub cpus: Vec<usize>,
    /// Owner behaviours to measure, comma-separated (default: both).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub owners: Vec<OwnerLoop>,
    /// Most drains measured per point (after the warm-up drains).
    #[arg(long, default_value = "200", value_parser = util::parse_positive, allow_negative_numbers = true)]
    pub drains: u64,
    /// Time budget per point in seconds (at least 3 drains are measured). A
    /// point still running after max(3 × budget, budget + 2 s) is cut short.
    #[arg(long, default_value = "1", value_parser = util::parse_seconds, allow_negative_numbers = true)]
    pub budget: f64,
    /// One JSON object per (mode, cpus), one per line, on stdout.
    #[arg(long)]
    pub json: bool,
}

/// The kernel's memcg `drain_all_stock` cycles (before QPW, after QPW) at
/// the CPU counts the thread reports.
pub fn kernel_drain_all_stock(cpus: usize) -> Option<(u64, u64)> {
    match cpus {
        1 => Some((44_331, 38_978)),
        8 => Some((43_993, 39_027)),
        128 => Some((156_275, 58_054)),
        _ => None,
    }
}

/// One (mode, cpus) point; the `--json` line.
#[derive(Debug, Clone, Serialize)]
pub struct DrainPoint {
    /// The mode.
    pub mode: &'static str,
    /// Slots, each with a busy owner thread.
    pub cpus: usize,
    /// What the owners do: `spin` or `yield`.
    pub owners: &'static str,
    /// Owners pinned to a CPU of their own (the others are unpinned).
    pub pinned_owners: usize,
    /// Drain-all calls measured (warm-up excluded).
    pub drains: u64,
    /// Drain-all calls that returned an error (a flush timed out).
    pub drains_failed: u64,
    /// Whether the point hit its time limit: the owners were stopped and the
    /// drain in progress discarded (the figures cover the drains before).
    pub cut_short: bool,
    /// Slot-lock acquisitions that found the lock taken, during the measured drains.
    pub lock_contended: u64,
    /// Latency of one drain-all in cycles (TSC ticks).
    pub latency_cycles: Percentiles,
    /// Latency of one drain-all in nanoseconds.
    pub latency_ns: Percentiles,
    /// The measured drains in five consecutive batches: the spread of their medians.
    pub batches: Summary,
    /// Signals sent during the measured drains.
    pub fences: u64,
    /// Works run by the owners (handler, section end, quiescent point).
    pub works_by_owners: u64,
    /// Works run by the caller itself (remote mode, or an unowned slot).
    pub works_by_caller: u64,
    /// Increments the owners made.
    pub increments: u64,
    /// The counter's total after the final drain: equal to `increments`, or the run failed.
    pub counter_total: u64,
    /// The kernel's `drain_all_stock` cycles before QPW at this CPU count.
    pub kernel_before_qpw: Option<u64>,
    /// The kernel's `drain_all_stock` cycles after QPW at this CPU count.
    pub kernel_after_qpw: Option<u64>,
}

/// Runs `qpw-bench drain`.
pub fn main(a: &DrainArgs) -> Result<(), String> {
    if !a.json {
        println!(
            "{:<6} {:<6} {:>5} {:>7} {:>12} {:>12} {:>12} {:>8} {:>9} {:>9}  (cycles = TSC ticks; {} warm-up drains excluded)",
            "mode", "owners", "cpus", "drains", "p50", "p99", "max", "fences", "by owner", "by caller", WARMUP_DRAINS
        );
    }
    run_with(a, &mut |_| {}, &mut |p| {
        if a.json {
            match serde_json::to_string(p) {
                Ok(s) => println!("{s}"),
                Err(e) => eprintln!("qpw-bench: {e}"),
            }
        } else {
            println!(
                "{:<6} {:<6} {:>5} {:>7} {:>12} {:>12} {:>12} {:>8} {:>9} {:>9}{}",
                p.mode,
                p.owners,
                p.cpus,
                p.drains,
                util::thousands(p.latency_cycles.p50 as u64),
                util::thousands(p.latency_cycles.p99 as u64),
                util::thousands(p.latency_cycles.max as u64),
                p.fences,
                p.works_by_owners,
                p.works_by_caller,
                if p.batches.noisy { "  [noisy]" } else { "" },
            );
            if p.cut_short {
                println!(
                    "              (cut short after {:.1} s: the figures cover the drains before; lock contended {} times)",
                    hard_limit(a.budget).as_secs_f64(),
                    p.lock_contended
                );
            }
        }
    })
    .map(|_| ())
}

/// Runs every (mode, cpus) point; `step` is told when each starts.
pub fn run(a: &DrainArgs, step: &mut dyn FnMut(&str)) -> Result<Vec<DrainPoint>, String> {
    run_with(a, step, &mut |_| {})
}

fn run_with(
    a: &DrainArgs,
    step: &mut dyn FnMut(&str),
    each: &mut dyn FnMut(&DrainPoint),
) -> Result<Vec<DrainPoint>, String> {
    let mut out = Vec::new();
    for owners in owner_loops(&a.owners) {
        for mode in util::modes_or_all(&a.mode) {
            for &n in &a.cpus {
                step(&format!(
                    "drain: {} × {n}, owners {}",
                    mode.name(),
                    owners.name()
                ));
                let p = point(mode, n, owners, a)?;
                each(&p);
                out.push(p);
            }
        }
    }
    Ok(out)
}

fn delta(a: &SlotStats, b: &SlotStats) -> SlotStats {
    a.since(b)
}

struct Measured {
    lat: Vec<u64>,
    failed: u64,
    stats: SlotStats,
}

/// The owner behaviours to run: those given, or both.
pub fn owner_loops(given: &[OwnerLoop]) -> Vec<OwnerLoop> {
    let mut v = Vec::new();
    for o in given {
        if !v.contains(o) {
            v.push(*o);
        }
    }
    if v.is_empty() {
        v = vec![OwnerLoop::Spin, OwnerLoop::Yield];
    }
    v
}

/// Measures one point.
pub fn point(
    mode: BenchMode,
    n: usize,
    owners: OwnerLoop,
    a: &DrainArgs,
) -> Result<DrainPoint, String> {
    let allowed = util::allowed_cpus();
    let caller_cpu = allowed.last().copied();
    let isolated: Vec<usize> = (1..n).collect();
    let domain: Domain<Standard> = Domain::builder()
        .mode(mode.to_mode(isolated))
        .nr_cpus(n)
        .flush_timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| format!("drain ({} × {n}): {e}", mode.name()))?;
    let counts = Arc::new(PerCpu::new(&domain, |_| 0u64));
    let total = Arc::new(AtomicU64::new(0));
    let set = domain.work_all({
        let (counts, total) = (counts.clone(), total.clone());
        move |ctx| {
            let Ok(mut c) = counts.lock_ctx(ctx) else {
                return;
            };
            total.fetch_add(std::mem::take(&mut *c), Ordering::Relaxed);
        }
    });
    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(AtomicUsize::new(0));
    let bind_error: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    let defer = mode == BenchMode::Defer;
    let yields = owners == OwnerLoop::Yield;
    let mut threads = Vec::with_capacity(n);
    let mut pinned_owners = 0;
    let mut spawn_error = None;
    for cpu in 0..n {
        let pin = allowed.contains(&cpu);
        pinned_owners += usize::from(pin);
        let (domain, counts, stop, ready, bind_error) = (
            domain.clone(),
            counts.clone(),
            stop.clone(),
            ready.clone(),
            bind_error.clone(),
        );
        let h = std::thread::Builder::new()
            .name(format!("qpw-owner-{cpu}"))
            .stack_size(256 << 10)
            .spawn(move || -> u64 {
                let bound = if pin {
                    domain.bind(cpu)
                } else {
                    domain.bind_unpinned(cpu)
                };
                let mut me = match bound {
                    Ok(me) => me,
                    Err(e) => {
                        let mut g = bind_error.lock().unwrap_or_else(|e| e.into_inner());
                        g.get_or_insert(format!("binding slot {cpu}: {e}"));
                        ready.fetch_add(1, Ordering::SeqCst);
                        return 0;
                    }
                };
                ready.fetch_add(1, Ordering::SeqCst);
                let mut incs = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    *counts.lock(&mut me) += 1;
                    incs += 1;
                    if defer {
                        me.quiescent();
                    }
                    if yields {
                        std::thread::yield_now();
                    }
                }
                incs
            });
        match h {
            Ok(h) => threads.push(h),
            Err(e) => {
                spawn_error = Some(format!("spawning owner thread {cpu} of {n}: {e}"));
                break;
            }
        }
    }
    while spawn_error.is_none() && ready.load(Ordering::SeqCst) < n {
        std::thread::yield_now();
    }
    let bind_err = bind_error.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let cut = Arc::new(AtomicBool::new(false));
    let measured = if spawn_error.is_some() || bind_err.is_some() {
        None
    } else {
        let (domain, max, budget, cut2) = (
            domain.clone(),
            a.drains,
            Duration::from_secs_f64(a.budget),
            cut.clone(),
        );
        let (tx, rx) = std::sync::mpsc::channel();
        let caller = std::thread::Builder::new()
            .name("qpw-drain-caller".into())
            .spawn(move || {
                let r = (|| {
                    if let Some(c) = caller_cpu {
                        util::pin_current(c)?;
                    }
                    for _ in 0..WARMUP_DRAINS {
                        let _ = set.run();
                    }
                    let before = domain.total_stats();
                    let (mut lat, mut failed) = (Vec::new(), 0u64);
                    let start = Instant::now();
                    while !cut2.load(Ordering::SeqCst) {
                        let t0 = tsc::now();
                        let r = set.run();
                        let t1 = tsc::now();
                        if cut2.load(Ordering::SeqCst) {
                            // The owners were stopped under this drain: not a measurement.
                            break;
                        }
                        match r {
                            Ok(()) => lat.push(t1 - t0),
                            Err(_) => failed += 1,
                        }
                        let done = lat.len() as u64 + failed;
                        if done >= max
                            || failed >= 3
                            || (done >= MIN_DRAINS && start.elapsed() >= budget)
                        {
                            break;
                        }
                    }
                    let stats = delta(&domain.total_stats(), &before);
                    Ok::<_, String>(Measured { lat, failed, stats })
                })();
                // The receiver outlives this thread: the main thread waits for it.
                let _ = tx.send(());
                (r, set)
            });
        Some(match caller {
            Ok(h) => {
                if rx.recv_timeout(hard_limit(a.budget)).is_err() {
                    // Cut the point short: stopped owners hand their slots back,
                    // so the drain in progress can finish.
                    cut.store(true, Ordering::SeqCst);
                    stop.store(true, Ordering::SeqCst);
                }
                h.join()
                    .map_err(|_| "the caller thread panicked".to_string())
                    .and_then(|(r, set)| r.map(|m| (m, set)))
            }
            Err(e) => Err(format!("spawning the caller thread: {e}")),
        })
    };
    stop.store(true, Ordering::SeqCst);
    let mut increments = 0;
    for h in threads {
        increments += h
            .join()
            .map_err(|_| "an owner thread panicked".to_string())?;
    }
    if let Some(e) = spawn_error.or(bind_err) {
        return Err(format!("drain ({} × {n}): {e}", mode.name()));
    }
    let (m, set) = measured
        .ok_or("no measurement")?
        .map_err(|e| format!("drain ({} × {n}): {e}", mode.name()))?;
    // Every owner has gone: this drain runs every slot on this thread.
    set.run()
        .map_err(|e| format!("drain ({} × {n}): the final drain failed: {e}", mode.name()))?;
    let counter_total = total.load(Ordering::SeqCst);
    if counter_total != increments {
        return Err(format!(
            "drain ({} × {n}): increments lost: total {counter_total} != {increments} made",
            mode.name()
        ));
    }
    let lat_f: Vec<f64> = m.lat.iter().map(|&t| t as f64).collect();
    let cyc = util::percentiles(&lat_f);
    let ns = Percentiles {
        p50: tsc::to_ns(cyc.p50 as u64),
        p99: tsc::to_ns(cyc.p99 as u64),
        max: tsc::to_ns(cyc.max as u64),
    };
    let batches = batch_medians(&lat_f, 5);
    let k = kernel_drain_all_stock(n);
    Ok(DrainPoint {
        mode: mode.name(),
        cpus: n,
        owners: owners.name(),
        pinned_owners,
        drains: m.lat.len() as u64,
        drains_failed: m.failed,
        cut_short: cut.load(Ordering::SeqCst),
        lock_contended: m.stats.lock_contended,
        latency_cycles: cyc,
        latency_ns: ns,
        batches,
        fences: m.stats.fences(),
        works_by_owners: m.stats.works_by_owner(),
        works_by_caller: m.stats.works_remote + m.stats.works_for_absent_owner,
        increments,
        counter_total,
        kernel_before_qpw: k.map(|k| k.0),
        kernel_after_qpw: k.map(|k| k.1),
    })
}

/// Splits samples, in order, into `k` batches and summarises their medians.
fn batch_medians(samples: &[f64], k: usize) -> Summary {
    if samples.is_empty() {
        return Summary::of(&[]);
    }
    let size = samples.len().div_ceil(k).max(1);
    let medians: Vec<f64> = samples
        .chunks(size)
        .map(|c| Summary::of(c).median)
        .collect();
    Summary::of(&medians)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_cover_every_sample() {
        let s: Vec<f64> = (1..=10).map(f64::from).collect();
        let b = batch_medians(&s, 5);
        assert_eq!(b.reps, 5);
        assert_eq!(b.min, 1.5);
        assert_eq!(batch_medians(&[3.0], 5).reps, 1);
    }

    #[test]
    fn kernel_figures_at_the_published_points() {
        assert_eq!(kernel_drain_all_stock(128), Some((156_275, 58_054)));
        assert_eq!(kernel_drain_all_stock(2), None);
    }
}
