//! `qpw-bench isolation`: does a drain interrupt the owner? After oslat.
//!
//! One owner thread, bound to the last CPU, spins through local operations
//! on a per-CPU counter and records the TSC gap between loop iterations in an
//! HDR histogram. A drainer thread on another CPU runs drain-all (every
//! slot's count moved into a shared total) at `--rate` per second for
//! `--seconds`. Each mode runs a baseline first (same owner, same loop, no
//! drains), then the drained run, in the same process: a spinning thread on a
//! virtual machine sees millisecond stalls even undisturbed, so what counts is
//! the difference from the baseline, in gaps over a threshold rather than in
//! one maximum.
//!
//! In `defer` mode the owner calls its quiescent point once per iteration; in
//! `auto` mode the owner's CPU is listed as isolated, so it runs `remote`.

use crate::alloc::irq::{self, Irqs};
use crate::tsc;
use crate::util::{self, BenchMode, Percentiles};
use hdrhistogram::Histogram;
use qpw::{Domain, Owner, PerCpu, SlotStats, Standard};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// Options of `qpw-bench isolation`.
#[derive(clap::Args, Debug, Clone)]
pub struct IsolationArgs {
    /// Modes to run, comma-separated (default: all, one after another).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub mode: Vec<BenchMode>,
    /// Seconds of each phase (baseline, then drained), per mode.
    #[arg(long, default_value = "2", value_parser = util::parse_seconds, allow_negative_numbers = true)]
    pub seconds: f64,
    /// Drain-all calls per second during the drained phase.
    #[arg(long, default_value = "1000", value_parser = util::parse_rate, allow_negative_numbers = true)]
    pub rate: u64,
    /// A loop gap above this many nanoseconds counts as an interruption.
    #[arg(long, default_value = "5000", value_parser = util::parse_positive, allow_negative_numbers = true)]
    pub threshold_ns: u64,
    /// One JSON object per mode, one per line, on stdout.
    #[arg(long)]
    pub json: bool,
    /// The stress preset: a CPU hog on the drainer's CPU, a drainer that
    /// busy-waits between drains, a drain work that holds the owner's cell
    /// for `--hold-ns`; counts owner stalls over 100 µs and 1 ms, and those
    /// inside a remote hold (`--threshold-ns` does not apply).
    #[arg(long)]
    pub stress: bool,
    /// Stress: nanoseconds the drain work holds the owner's cell [default: 20000].
    #[arg(long, requires = "stress", value_parser = crate::util::parse_hold_ns, allow_negative_numbers = true)]
    pub hold_ns: Option<u64>,
    /// Stress: run the owner SCHED_FIFO at this priority (1 to 99); real-time
    /// throttling is turned off for the run where the process may.
    #[arg(long, value_name = "PRIO", requires = "stress", value_parser = crate::util::parse_fifo_prio, allow_negative_numbers = true)]
    pub owner_fifo: Option<i32>,
}

/// Gap percentiles of one phase of the owner's loop, in nanoseconds.
#[derive(Debug, Clone, Serialize)]
pub struct GapPercentiles {
    /// Median gap: the cost of one normal iteration.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.99th percentile.
    pub p9999: f64,
    /// Longest gap.
    pub max: f64,
}

/// One mode's result; the `--json` line.
#[derive(Debug, Clone, Serialize)]
pub struct IsolationResult {
    /// The mode.
    pub mode: &'static str,
    /// The slot (and CPU) the owner was bound to.
    pub owner_cpu: usize,
    /// The CPU the drainer was pinned to (`None`: unpinned, a 1-CPU machine).
    pub drainer_cpu: Option<usize>,
    /// Seconds of each phase.
    pub seconds: f64,
    /// Drains asked per second.
    pub rate: u64,
    /// Drain-all calls completed.
    pub drains: u64,
    /// Drain-all calls that returned an error (a flush that timed out).
    pub drains_failed: u64,
    /// Fences (`membarrier`) the drains issued, all slots, drained run
    /// (`auto`: those of the second, `queue`, owner on the drainer's CPU).
    pub fences: u64,
    /// Function-call IPIs (`CAL` row of `/proc/interrupts`) the owner's CPU
    /// took during the drained run, from any source: a `queue` drain's
    /// fence is one; `remote`, `defer` and `auto` drains send none (what
    /// remains is the machine's own: TLB shootdowns, other processes).
    /// `null` where the kernel does not tell.
    pub owner_cpu_ipis: Option<u64>,
    /// The same during the baseline (no drains).
    pub baseline_owner_cpu_ipis: Option<u64>,
    /// Works on the owner's slot run by the owner (section end, quiescent point).
    pub works_run_by_owner: u64,
    /// Of those, run by a fenced drain on the drainer's thread.
    pub owner_works_fenced: u64,
    /// Of those, run when a local section ended (queued from inside it, or left by a drain that timed out).
    pub owner_works_at_section_end: u64,
    /// Of those, run at a quiescent point.
    pub owner_works_at_quiescent: u64,
    /// Works on the owner's slot run by the drainer.
    pub works_run_remotely: u64,
    /// Works on the other (unowned) slots, run by the drainer itself.
    pub works_other_slots: u64,
    /// The gap threshold.
    pub threshold_ns: u64,
    /// Owner loop gaps over the threshold while drained.
    pub owner_gaps_over_threshold: u64,
    /// Owner loop gaps over the threshold in the baseline.
    pub baseline_gaps_over_threshold: u64,
    /// Share of the drained run's wall time lost in gaps over the threshold
    /// (each gap minus one normal iteration), in percent.
    pub owner_lost_time_pct: f64,
    /// The same for the baseline.
    pub baseline_lost_time_pct: f64,
    /// Owner loop iterations per second while drained.
    pub owner_ops_per_sec: f64,
    /// Owner loop iterations per second in the baseline.
    pub baseline_ops_per_sec: f64,
    /// Latency of one drain-all, in nanoseconds.
    pub drain_latency_ns: Percentiles,
    /// The owner's loop gaps while drained.
    pub owner_gap_ns: GapPercentiles,
    /// The owner's loop gaps in the baseline.
    pub baseline_gap_ns: GapPercentiles,
    /// Increments made by the owner (both phases).
    pub increments: u64,
    /// The counter's total after the last drain: equal to `increments`, or the run failed.
    pub counter_total: u64,
    /// Whether the baseline itself lost 1% or more of its time: the machine was busy.
    pub noisy: bool,
}

/// The distribution of gaps for plots: (gap in ns, share of gaps longer).
pub type Ccdf = Vec<(f64, f64)>;

/// One mode's result with the gap distributions for the plot.
#[derive(Debug, Clone, Serialize)]
pub struct IsolationRun {
    /// The summary (the `--json` line).
    #[serde(flatten)]
    pub result: IsolationResult,
    /// Share of the drained run's gaps longer than x ns.
    pub owner_gap_ccdf: Ccdf,
    /// Share of the baseline's gaps longer than x ns.
    pub baseline_gap_ccdf: Ccdf,
}

/// Runs `qpw-bench isolation`.
/// (`--stress` runs the stress preset's `main` instead; `main.rs` chooses.)
pub fn main(a: &IsolationArgs) -> Result<(), String> {
    let mut failure = None;
    for mode in util::modes_or_all(&a.mode) {
        let run = run_mode(mode, a)?;
        let r = &run.result;
        if a.json {
            println!("{}", serde_json::to_string(r).map_err(|e| e.to_string())?);
        } else {
            print_human(r);
        }
        if r.counter_total == r.increments {
            eprintln!(
                "{}: counter check: total {} == {} increments made, nothing lost",
                r.mode, r.counter_total, r.increments
            );
        } else {
            eprintln!(
                "{}: counter check FAILED: total {} != {} increments made",
                r.mode, r.counter_total, r.increments
            );
            failure.get_or_insert(format!(
                "{} mode lost increments: total {} != {} made",
                r.mode, r.counter_total, r.increments
            ));
        }
    }
    failure.map_or(Ok(()), Err)
}

/// A count, or `-` where there is none.
pub(crate) fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

fn print_human(r: &IsolationResult) {
    println!(
        "{:<6} drains {:>6} (failed {}) fences {:>6} IPIs on owner CPU {} (baseline {}) works: owner {:>6} remote {:>6} | gaps>{}ns: {} (baseline {}) | lost {:.3}% (baseline {:.3}%) | owner {:.1} Mops/s (baseline {:.1}) | drain p50 {:.1} µs p99 {:.1} µs max {:.1} µs{}",
        r.mode,
        r.drains,
        r.drains_failed,
        r.fences,
        opt(r.owner_cpu_ipis),
        opt(r.baseline_owner_cpu_ipis),
        r.works_run_by_owner,
        r.works_run_remotely,
        r.threshold_ns,
        r.owner_gaps_over_threshold,
        r.baseline_gaps_over_threshold,
        r.owner_lost_time_pct,
        r.baseline_lost_time_pct,
        r.owner_ops_per_sec / 1e6,
        r.baseline_ops_per_sec / 1e6,
        r.drain_latency_ns.p50 / 1e3,
        r.drain_latency_ns.p99 / 1e3,
        r.drain_latency_ns.max / 1e3,
        if r.noisy { "  [noisy baseline]" } else { "" },
    );
}

/// Runs every mode asked for; `step` is told when each starts.
pub fn run(a: &IsolationArgs, step: &mut dyn FnMut(&str)) -> Result<Vec<IsolationRun>, String> {
    let mut out = Vec::new();
    for mode in util::modes_or_all(&a.mode) {
        step(&format!("isolation: {}", mode.name()));
        let run = run_mode(mode, a)?;
        let r = &run.result;
        if r.counter_total != r.increments {
            return Err(format!(
                "isolation: {} mode lost increments: total {} != {} made",
                r.mode, r.counter_total, r.increments
            ));
        }
        out.push(run);
    }
    Ok(out)
}

/// What the owner measured in one phase.
struct Phase {
    iters: u64,
    ticks: u64,
    over: u64,
    over_ticks: u64,
    hist: Histogram<u64>,
}

impl Phase {
    fn lost_pct(&self) -> f64 {
        let normal = self.hist.value_at_quantile(0.5);
        let lost = self.over_ticks.saturating_sub(self.over * normal);
        if self.ticks == 0 {
            0.0
        } else {
            lost as f64 / self.ticks as f64 * 100.0
        }
    }

    fn ops_per_sec(&self) -> f64 {
        let s = self.ticks as f64 / tsc::hz();
        if s > 0.0 {
            self.iters as f64 / s
        } else {
            0.0
        }
    }

    fn percentiles(&self) -> GapPercentiles {
        let q = |x| tsc::to_ns(self.hist.value_at_quantile(x));
        GapPercentiles {
            p50: q(0.5),
            p99: q(0.99),
            p9999: q(0.9999),
            max: tsc::to_ns(self.hist.max()),
        }
    }

    /// Share of gaps longer than x, at x = 2^(k/2) ns, up to the longest gap.
    fn ccdf(&self) -> Ccdf {
        let n = self.hist.len();
        let mut v = Vec::new();
        if n == 0 {
            return v;
        }
        let max_ns = tsc::to_ns(self.hist.max());
        let mut k = 2.0f64; // 2 ns
        while 2f64.powf(k / 2.0) <= max_ns * 1.5 {
            let x = 2f64.powf(k / 2.0);
            let below = self.hist.count_between(0, tsc::from_ns(x));
            let above = n.saturating_sub(below);
            if above > 0 {
                v.push((x, above as f64 / n as f64));
            }
            k += 1.0;
        }
        v
    }
}

fn new_hist() -> Result<Histogram<u64>, String> {
    // Gaps from 1 tick to 100 s of ticks at 3 significant digits.
    let high = (tsc::hz() * 100.0) as u64;
    Histogram::new_with_bounds(1, high.max(1_000_000), 3).map_err(|e| format!("histogram: {e}"))
}

/// The owner's loop: one local operation per iteration, the TSC gap to the
/// previous iteration recorded, until `stop`.
fn owner_loop(
    me: &mut qpw::Owner,
    counts: &PerCpu<u64>,
    defer: bool,
    stop: &AtomicBool,
    threshold: u64,
) -> Result<Phase, String> {
    let mut hist = new_hist()?;
    let (mut iters, mut over, mut over_ticks) = (0u64, 0u64, 0u64);
    let start = tsc::now();
    let mut prev = start;
    loop {
        *counts.lock(me) += 1;
        if defer {
            me.quiescent();
        }
        let t = tsc::now();
        let gap = t.saturating_sub(prev);
        prev = t;
        hist.saturating_record(gap.max(1));
        if gap > threshold {
            over += 1;
            over_ticks += gap;
        }
        iters += 1;
        if stop.load(Ordering::Relaxed) {
            break;
        }
    }
    Ok(Phase {
        iters,
        ticks: prev - start,
        over,
        over_ticks,
        hist,
    })
}

/// What the drainer measured in the drained phase (shared with `--stress`).
pub(crate) struct DrainerOut {
    pub(crate) lat_ns: Vec<f64>,
    pub(crate) failed: u64,
    pub(crate) before: SlotStats,
    pub(crate) after: SlotStats,
    pub(crate) before_all: SlotStats,
    pub(crate) after_all: SlotStats,
    /// Function-call IPIs (`CAL` in `/proc/interrupts`) the owner's CPU
    /// took in the drained phase, and in the baseline; `None` where the
    /// kernel does not tell.
    pub(crate) owner_cpu_ipis: Option<u64>,
    pub(crate) baseline_owner_cpu_ipis: Option<u64>,
}

/// The owner CPU's function-call IPIs (`CAL`) between two reads.
fn cal_since(after: Option<Irqs>, before: Option<Irqs>) -> Option<u64> {
    Some(after?.since(before?).cal)
}

/// How the drainer waits for its next drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pace {
    /// Sleeps, spinning only the last 200 µs (leaves its CPU to others).
    Sleep,
    /// Busy-waits (`--stress`: keeps competing with the hog for its CPU).
    BusyWait,
}

/// How the owner and the drainer keep in step through the two phases
/// (baseline, then drained) of one mode's run (shared with `--stress`).
#[derive(Clone)]
pub(crate) struct Phases {
    stop_base: Arc<AtomicBool>,
    stop_drained: Arc<AtomicBool>,
    barrier: Arc<Barrier>,
    failed_bind: Arc<AtomicBool>,
}

impl Phases {
    pub(crate) fn new() -> Self {
        Self {
            stop_base: Arc::new(AtomicBool::new(false)),
            stop_drained: Arc::new(AtomicBool::new(false)),
            barrier: Arc::new(Barrier::new(2)),
            failed_bind: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The owner's side: `bind` (an error is passed on, after telling the
    /// drainer), then `phase` for the baseline and for the drained phase,
    /// each until the flag it is given is set.
    pub(crate) fn run_owner<P>(
        &self,
        bind: impl FnOnce() -> Result<Owner<Standard>, String>,
        mut phase: impl FnMut(&mut Owner<Standard>, &AtomicBool) -> P,
    ) -> Result<(P, P), String> {
        let mut me = match bind() {
            Ok(me) => me,
            Err(e) => {
                self.failed_bind.store(true, Ordering::SeqCst);
                self.barrier.wait();
                return Err(e);
            }
        };
        self.barrier.wait();
        let base = phase(&mut me, &self.stop_base);
        self.barrier.wait();
        let drained = phase(&mut me, &self.stop_drained);
        // Dropping `me` runs anything still pending and frees the slot.
        Ok((base, drained))
    }

    /// Ends both phases (a thread failed or everything is over).
    pub(crate) fn stop(&self) {
        self.stop_base.store(true, Ordering::SeqCst);
        self.stop_drained.store(true, Ordering::SeqCst);
    }
}

/// The drainer's side of one mode's run (shared with `--stress`): waits at
/// the barrier for the owner, stays idle for the baseline phase, then runs
/// `drain` at `rate` per second for the drained phase, timing each.
pub(crate) struct Drainer {
    domain: Domain<Standard>,
    drain: Arc<qpw::WorkSet<Standard>>,
    owner_cpu: usize,
    drainer_cpu: Option<usize>,
    phases: Phases,
    rate: u64,
    phase_len: Duration,
    pace: Pace,
}

/// `None` when the owner could not bind.
pub(crate) type DrainerResult = Result<Option<DrainerOut>, String>;

impl Drainer {
    /// A drainer of `drain` on `domain` at `a.rate` per second for phases
    /// of `a.seconds`; `cpus`: the owner's CPU (whose slot's counters it
    /// reads) and its own (pinned there if any).
    pub(crate) fn new(
        a: &IsolationArgs,
        cpus: (usize, Option<usize>),
        domain: &Domain<Standard>,
        drain: &Arc<qpw::WorkSet<Standard>>,
        phases: &Phases,
    ) -> Self {
        Self {
            domain: domain.clone(),
            drain: drain.clone(),
            owner_cpu: cpus.0,
            drainer_cpu: cpus.1,
            phases: phases.clone(),
            rate: a.rate,
            phase_len: Duration::from_secs_f64(a.seconds),
            pace: Pace::Sleep,
        }
    }

    /// Starts the drainer thread, waiting between drains as `pace` says.
    pub(crate) fn spawn(
        mut self,
        pace: Pace,
    ) -> std::io::Result<std::thread::JoinHandle<DrainerResult>> {
        self.pace = pace;
        std::thread::Builder::new()
            .name("qpw-drainer".into())
            .spawn(move || self.run())
    }

    fn run(self) -> DrainerResult {
        if let Some(c) = self.drainer_cpu {
            util::pin_current(c)?;
        }
        let ph = &self.phases;
        ph.barrier.wait();
        if ph.failed_bind.load(Ordering::SeqCst) {
            return Ok(None);
        }
        // Baseline: nothing disturbs the owner.
        let base_irqs = irq::read(self.owner_cpu);
        std::thread::sleep(self.phase_len);
        let baseline_owner_cpu_ipis = cal_since(irq::read(self.owner_cpu), base_irqs);
        ph.stop_base.store(true, Ordering::SeqCst);
        ph.barrier.wait();
        let irqs_before = irq::read(self.owner_cpu);
        let before = self
            .domain
            .stats(self.owner_cpu)
            .map_err(|e| e.to_string())?;
        let before_all = self.domain.total_stats();
        let period = Duration::from_secs_f64(1.0 / self.rate as f64);
        let start = Instant::now();
        let end = start + self.phase_len;
        let mut next = start + period;
        let mut lat_ns =
            Vec::with_capacity((self.rate as f64 * self.phase_len.as_secs_f64()) as usize + 16);
        let mut failed = 0;
        while next < end {
            match self.pace {
                Pace::Sleep => sleep_until(next),
                Pace::BusyWait => busy_wait_until(next),
            }
            let t0 = tsc::now();
            let r = self.drain.run();
            let t1 = tsc::now();
            match r {
                Ok(()) => lat_ns.push(tsc::to_ns(t1 - t0)),
                Err(_) => failed += 1,
            }
            next += period;
            let now = Instant::now();
            if next < now {
                // Fell behind (a slow drain): keep the rate, do not burst.
                next = now + period;
            }
        }
        let owner_cpu_ipis = cal_since(irq::read(self.owner_cpu), irqs_before);
        ph.stop_drained.store(true, Ordering::SeqCst);
        let after = self
            .domain
            .stats(self.owner_cpu)
            .map_err(|e| e.to_string())?;
        let after_all = self.domain.total_stats();
        Ok(Some(DrainerOut {
            lat_ns,
            failed,
            before,
            after,
            before_all,
            after_all,
            owner_cpu_ipis,
            baseline_owner_cpu_ipis,
        }))
    }
}

fn busy_wait_until(deadline: Instant) {
    while Instant::now() < deadline {
        std::hint::spin_loop();
    }
}

fn sleep_until(deadline: Instant) {
    loop {
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        let left = deadline - now;
        if left > Duration::from_micros(200) {
            std::thread::sleep(left - Duration::from_micros(100));
        } else {
            std::hint::spin_loop();
        }
    }
}

/// The domain of one mode's run, with the owner's CPU (the last one this
/// process may use: an isolated CPU under `auto`) and the drainer's (another
/// one, if any). `what` names the benchmark in the error.
pub fn mode_domain(
    mode: BenchMode,
    what: &str,
) -> Result<(Domain<Standard>, usize, Option<usize>), String> {
    let allowed = util::allowed_cpus();
    let owner_cpu = *allowed.last().ok_or("this process may run on no CPU")?;
    let drainer_cpu = allowed.iter().copied().find(|&c| c != owner_cpu);
    let domain = Domain::builder()
        .mode(mode.to_mode(vec![owner_cpu]))
        .flush_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| format!("{what} ({}): {e}", mode.name()))?;
    Ok((domain, owner_cpu, drainer_cpu))
}

/// The `auto` run's second owner: bound (pinned) to `cpu`, a `queue` slot,
/// running short local sections on a value of its own until `stop`.
fn spawn_companion(
    domain: &Domain<Standard>,
    cpu: usize,
    stop: &Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<Result<(), String>>, String> {
    let (domain, stop) = (domain.clone(), stop.clone());
    std::thread::Builder::new()
        .name("qpw-companion".into())
        .spawn(move || {
            let mine = PerCpu::new(&domain, |_| 0u64);
            let mut me = domain
                .bind(cpu)
                .map_err(|e| format!("binding the companion owner to CPU {cpu}: {e}"))?;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                *mine.lock(&mut me) += 1;
                n += 1;
                if n % 64 == 0 {
                    std::thread::yield_now();
                }
            }
            Ok(())
        })
        .map_err(|e| format!("spawning the companion owner: {e}"))
}

/// Runs one mode: baseline, then drained, then the conservation check.
pub fn run_mode(mode: BenchMode, a: &IsolationArgs) -> Result<IsolationRun, String> {
    let (domain, owner_cpu, drainer_cpu) = mode_domain(mode, "isolation")?;
    let counts = Arc::new(PerCpu::new(&domain, |_| 0u64));
    let total = Arc::new(AtomicU64::new(0));
    let drain = Arc::new(domain.work_all({
        let (counts, total) = (counts.clone(), total.clone());
        move |ctx| {
            let Ok(mut c) = counts.lock_ctx(ctx) else {
                return;
            };
            total.fetch_add(std::mem::take(&mut *c), Ordering::Relaxed);
        }
    }));
    let threshold = tsc::from_ns(a.threshold_ns as f64).max(1);
    let phases = Phases::new();

    let owner = std::thread::Builder::new().name("qpw-owner".into()).spawn({
        let (domain, counts, phases) = (domain.clone(), counts.clone(), phases.clone());
        let defer = mode == BenchMode::Defer;
        move || -> Result<(Phase, Phase), String> {
            let bind = || {
                domain
                    .bind(owner_cpu)
                    .map_err(|e| format!("binding the owner to CPU {owner_cpu}: {e}"))
            };
            let (base, drained) = phases.run_owner(bind, |me, stop| {
                owner_loop(me, &counts, defer, stop, threshold)
            })?;
            Ok((base?, drained?))
        }
    });
    let owner = owner.map_err(|e| format!("spawning the owner thread: {e}"))?;
    // `auto`: a second owner, `queue` (its CPU is not isolated), pinned on
    // the drainer's CPU, so each drain-all fences that CPU (targeted) while
    // the measured owner's isolated CPU should see none of it.
    let companion_stop = Arc::new(AtomicBool::new(false));
    let companion = match (mode, drainer_cpu) {
        (BenchMode::Auto, Some(cpu)) => Some(spawn_companion(&domain, cpu, &companion_stop)?),
        _ => None,
    };

    let drainer =
        Drainer::new(a, (owner_cpu, drainer_cpu), &domain, &drain, &phases).spawn(Pace::Sleep);
    let drainer = match drainer {
        Ok(d) => d,
        Err(e) => {
            phases.stop();
            return Err(format!("spawning the drainer thread: {e}"));
        }
    };
    let d = drainer
        .join()
        .map_err(|_| "the drainer thread panicked".to_string());
    // Whatever happened to the drainer, let the owner finish.
    phases.stop();
    companion_stop.store(true, Ordering::SeqCst);
    if let Some(c) = companion {
        c.join()
            .map_err(|_| "the companion owner panicked".to_string())??;
    }
    let o = owner
        .join()
        .map_err(|_| "the owner thread panicked".to_string())?;
    let d = d??;
    let (base, drained) = o?;
    let d = d.ok_or("the owner could not bind")?;

    // The owner has gone: its slot is free, so this drain runs every slot here.
    drain
        .run()
        .map_err(|e| format!("the final drain failed: {e}"))?;
    let increments = base.iters + drained.iters;
    let counter_total = total.load(Ordering::SeqCst);

    let mine = d.after.since(&d.before);
    let all = d.after_all.since(&d.before_all);
    let baseline_lost = base.lost_pct();
    let result = IsolationResult {
        mode: mode.name(),
        owner_cpu,
        drainer_cpu,
        seconds: a.seconds,
        rate: a.rate,
        drains: d.lat_ns.len() as u64,
        drains_failed: d.failed,
        fences: all.fences(),
        owner_cpu_ipis: d.owner_cpu_ipis,
        baseline_owner_cpu_ipis: d.baseline_owner_cpu_ipis,
        works_run_by_owner: mine.works_by_owner(),
        owner_works_fenced: mine.works_fenced,
        owner_works_at_section_end: mine.works_at_section_end,
        owner_works_at_quiescent: mine.works_at_quiescent,
        works_run_remotely: mine.works_remote + mine.works_for_absent_owner + mine.works_fenced,
        works_other_slots: all.works_run() - mine.works_run(),
        threshold_ns: a.threshold_ns,
        owner_gaps_over_threshold: drained.over,
        baseline_gaps_over_threshold: base.over,
        owner_lost_time_pct: drained.lost_pct(),
        baseline_lost_time_pct: baseline_lost,
        owner_ops_per_sec: drained.ops_per_sec(),
        baseline_ops_per_sec: base.ops_per_sec(),
        drain_latency_ns: util::percentiles(&d.lat_ns),
        owner_gap_ns: drained.percentiles(),
        baseline_gap_ns: base.percentiles(),
        increments,
        counter_total,
        noisy: baseline_lost >= 1.0,
    };
    Ok(IsolationRun {
        result,
        owner_gap_ccdf: drained.ccdf(),
        baseline_gap_ccdf: base.ccdf(),
    })
}
