//! `qpw-bench report`: short versions of every benchmark, as one report.
//!
//! Markdown tables on stdout; in the output directory (default
//! `target/qpw-report/`, or `$CARGO_TARGET_DIR/qpw-report/`): `report.md` (the tables, the machine and how each
//! figure was measured), `results.json` (everything, machine-readable) and
//! the SVG plots. Options are checked and the output directory prepared
//! before anything runs; the files are written into a temporary directory
//! beside it and renamed into place at the end, so a failed run leaves
//! nothing partial behind.

use crate::alloc::{self, AllocArgs, AllocReport};
use crate::drain::{self, DrainArgs, DrainPoint};
use crate::isolation::{IsolationArgs, IsolationRun};
use crate::isolation_stress::{self, StressResult};
use crate::kmalloc::{self, KmallocArgs, KmallocReport};
use crate::locks::{self, LockRow, LocksArgs};
use crate::machine::Machine;
use crate::plots;
use crate::progress::Progress;
use crate::util::{self, BenchMode};
use serde::Serialize;
use std::path::{Path, PathBuf};

fn parse_kmalloc_count(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if (kmalloc::BULK..=50_000_000).contains(&n) => Ok(n),
        Ok(n) => Err(format!(
            "{n} allocations is out of range: use {} to 50000000",
            kmalloc::BULK
        )),
        Err(_) => Err(format!("`{s}` is not a number of allocations")),
    }
}

/// The version of `results.json`'s layout.
pub const SCHEMA: &str = "qpw-bench-results/2";

/// The default output directory, relative to the working directory, when
/// `CARGO_TARGET_DIR` is not set (with it: `$CARGO_TARGET_DIR/qpw-report`).
pub const DEFAULT_OUT: &str = "target/qpw-report";

/// Where the report goes without `--out`: beside cargo's build output.
pub fn default_out() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(t) if !t.is_empty() => PathBuf::from(t).join("qpw-report"),
        _ => PathBuf::from(DEFAULT_OUT),
    }
}

/// How long each preset runs, for `--help` (the README says the same).
pub const DURATIONS: &str =
    "How long it runs, on the project's 2-CPU virtual machine with nothing else \
running: the default preset about 1.5 minutes (96 s measured on 2026-12-08, its short real-program \
section included, the binaries already built); --quick 20 s (measured on a busy machine: an upper \
bound); --full: several times the default, not measured yet. Progress lines with an estimate of the time \
left go to stderr.";

/// Options of `qpw-bench report`. The presets set every size; the options
/// below them override one each.
/// How long each preset runs: [`DURATIONS`].
#[derive(clap::Args, Debug, Clone, Default)]
#[command(after_help = DURATIONS)]
pub struct ReportArgs {
    /// Shorter runs, fewer drain points (20 s on a 2-CPU VM).
    #[arg(long, conflicts_with = "full")]
    pub quick: bool,
    /// Longer runs, every drain point of `qpw-bench drain`, 1,000 forks per allocator.
    #[arg(long)]
    pub full: bool,
    /// Directory for report.md, results.json and the plots [default:
    /// $CARGO_TARGET_DIR/qpw-report, or target/qpw-report without it].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Isolation: seconds of each phase (baseline, drained) per mode.
    #[arg(long, value_parser = util::parse_seconds, allow_negative_numbers = true)]
    pub seconds: Option<f64>,
    /// Isolation: drains per second.
    #[arg(long, value_parser = util::parse_rate, allow_negative_numbers = true)]
    pub rate: Option<u64>,
    /// Drain scaling: slot counts, comma-separated.
    #[arg(long, value_delimiter = ',', value_parser = util::parse_cpu_count, allow_negative_numbers = true)]
    pub cpus: Option<Vec<usize>>,
    /// Drain scaling: most drains measured per point.
    #[arg(long, value_parser = util::parse_positive, allow_negative_numbers = true)]
    pub drains: Option<u64>,
    /// Drain scaling: time budget per point, in seconds.
    #[arg(long, value_parser = util::parse_seconds, allow_negative_numbers = true)]
    pub budget: Option<f64>,
    /// Locks: lock+unlock pairs per repetition.
    #[arg(long, value_parser = util::parse_positive, allow_negative_numbers = true)]
    pub lock_iterations: Option<u64>,
    /// Locks: repetitions per figure.
    #[arg(long, value_parser = util::parse_positive, allow_negative_numbers = true)]
    pub reps: Option<u64>,
    /// Isolation under stress: also run the owner SCHED_FIFO 50. Changes a
    /// system setting: real-time throttling (sched_rt_runtime_us) is turned
    /// off for those runs and restored after, on an error, and on Ctrl-C
    /// (SIGINT), SIGTERM and SIGHUP. Needs root, CAP_SYS_NICE or RLIMIT_RTPRIO.
    #[arg(long)]
    pub fifo: bool,
    /// kmalloc: allocations per repetition (16 to 50,000,000).
    #[arg(long, value_parser = parse_kmalloc_count, allow_negative_numbers = true)]
    pub kmalloc_count: Option<usize>,
    /// Allocator workloads: seconds of each throughput run.
    #[arg(long, value_parser = util::parse_seconds, allow_negative_numbers = true)]
    pub alloc_seconds: Option<f64>,
    /// Allocator workloads: multiplier of the programs' work.
    #[arg(long, value_parser = alloc::parse_scale, allow_negative_numbers = true)]
    pub alloc_scale: Option<f64>,
    /// Allocator workloads: repetitions (1 to 100).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100))]
    pub alloc_reps: Option<u64>,
    /// Allocator fork storm: forks per allocator (0 to 100,000; 0: none).
    #[arg(long, value_parser = alloc::fork::parse_forks)]
    pub alloc_forks: Option<usize>,
}

/// Every size of one report run.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// `quick`, `default` or `full`.
    pub preset: &'static str,
    /// Isolation options.
    #[serde(skip)]
    pub isolation: IsolationArgs,
    /// Isolation under stress: options (run with a `SCHED_OTHER` owner, then
    /// with a `SCHED_FIFO` one where the process may).
    #[serde(skip)]
    pub stress: IsolationArgs,
    /// Drain options.
    #[serde(skip)]
    pub drain: DrainArgs,
    /// Locks options.
    #[serde(skip)]
    pub locks: LocksArgs,
    /// Whether to make the stress runs with a `SCHED_FIFO` owner (`--fifo`).
    #[serde(skip)]
    pub fifo: bool,
    /// kmalloc options.
    #[serde(skip)]
    pub kmalloc: KmallocArgs,
    /// Allocator workload options.
    #[serde(skip)]
    pub alloc: AllocArgs,
}

impl Plan {
    /// The preset, with the overrides applied.
    pub fn from_args(a: &ReportArgs) -> Plan {
        type Sizes = (
            &'static str,
            f64,
            &'static [usize],
            u64,
            f64,
            u64,
            u64,
            usize,
            usize,
        );
        let stress_seconds = if a.quick {
            0.2
        } else if a.full {
            2.0
        } else {
            0.5
        };
        // Allocator workloads: (seconds, scale, reps, fork-storm forks per allocator).
        let (a_seconds, a_scale, a_reps, a_forks) = if a.quick {
            (0.05, 0.1, 1, 50)
        } else if a.full {
            (1.0, 4.0, 5, 1000)
        } else {
            // 1,000 forks per allocator take about 2.5 minutes here: over
            // the default preset's budget (3 minutes in all); `--full` runs them.
            (0.2, 1.0, 3, 300)
        };
        let (preset, seconds, cpus, drains, budget, iters, reps, k_iters, k_reps): Sizes =
            if a.quick {
                ("quick", 0.5, &[1, 8, 32], 40, 0.25, 200_000, 5, 200_000, 3)
            } else if a.full {
                (
                    "full",
                    2.0,
                    &[1, 2, 4, 8, 16, 32, 64, 128, 256],
                    200,
                    1.0,
                    2_000_000,
                    11,
                    1_000_000,
                    11,
                )
            } else {
                (
                    "default",
                    1.0,
                    &[1, 8, 32, 128],
                    100,
                    0.4,
                    1_000_000,
                    7,
                    1_000_000,
                    5,
                )
            };
        Plan {
            preset,
            isolation: IsolationArgs {
                mode: Vec::new(),
                seconds: a.seconds.unwrap_or(seconds),
                rate: a.rate.unwrap_or(1000),
                threshold_ns: 5000,
                json: false,
                stress: false,
                hold_ns: None,
                owner_fifo: None,
            },
            stress: IsolationArgs {
                mode: Vec::new(),
                seconds: stress_seconds,
                rate: a.rate.unwrap_or(1000),
                threshold_ns: isolation_stress::STALL_NS,
                json: false,
                stress: true,
                hold_ns: Some(isolation_stress::DEFAULT_HOLD_NS),
                owner_fifo: None,
            },
            drain: DrainArgs {
                mode: Vec::new(),
                owners: Vec::new(),
                cpus: a.cpus.clone().unwrap_or_else(|| cpus.to_vec()),
                drains: a.drains.unwrap_or(drains),
                budget: a.budget.unwrap_or(budget),
                json: false,
            },
            locks: LocksArgs {
                iterations: a.lock_iterations.unwrap_or(iters),
                reps: a.reps.unwrap_or(reps),
                json: false,
            },
            fifo: a.fifo,
            kmalloc: KmallocArgs {
                iterations: a.kmalloc_count.unwrap_or(k_iters),
                reps: k_reps,
                ..KmallocArgs::default()
            },
            alloc: AllocArgs {
                seconds: a.alloc_seconds.unwrap_or(a_seconds),
                scale: a.alloc_scale.unwrap_or(a_scale),
                reps: a.alloc_reps.map_or(a_reps, |r| r as usize),
                forks: Some(a.alloc_forks.unwrap_or(a_forks)),
                ..AllocArgs::default()
            },
        }
    }

    fn steps(&self) -> u64 {
        let modes = BenchMode::ALL.len() as u64;
        let loops = drain::owner_loops(&self.drain.owners).len() as u64;
        let stress_runs = if self.fifo { 2 } else { 1 };
        1 + (1 + stress_runs) * modes
            + loops * modes * self.drain.cpus.len() as u64
            + 11
            + self.alloc.processes()
    }
}

/// How each figure was measured, for the report and the JSON.
#[derive(Debug, Clone, Serialize)]
pub struct Method {
    /// What "cycles" means.
    pub cycles: String,
    /// The kmalloc figures.
    pub kmalloc: String,
    /// The isolation figures.
    pub isolation: String,
    /// The isolation-under-stress figures.
    pub isolation_stress: String,
    /// The drain-scaling figures.
    pub drain: String,
    /// The lock figures.
    pub locks: String,
    /// The allocator workloads.
    pub alloc: String,
    /// When a figure is flagged noisy.
    pub noisy: String,
}

impl Method {
    fn new(p: &Plan, m: &Machine) -> Method {
        let i = &p.isolation;
        let d = &p.drain;
        let l = &p.locks;
        Method {
            cycles: format!(
                "cycles are TSC ticks ({:.3} GHz here, constant rate; hardware cycle counters are not used)",
                m.tsc_hz / 1e9
            ),
            kmalloc: format!(
                "kmalloc({}) into a preallocated array of {} pointers, only the loop timed with the TSC, then freed; \
                 every configuration in one process, the bench thread pinned; {} interleaved repetitions, the first \
                 (cold) one reported apart, median (and min) over the others",
                p.kmalloc.size, p.kmalloc.iterations, p.kmalloc.reps
            ),
            isolation: format!(
                "per mode, in one process: a baseline of {} s with no drains, then {} s with {} drain-all calls per second \
                 from another CPU; the owner is pinned to the last CPU and records every loop gap (TSC) in an HDR histogram; \
                 lost time = sum over gaps above {} ns of (gap - median gap), over wall time; latency percentiles are over \
                 every drain of the run",
                i.seconds, i.seconds, i.rate, i.threshold_ns
            ),
            isolation_stress: format!(
                "per mode, in one process: the owner pinned to the last CPU spins through local sections and records every \
                 loop gap (TSC); on another CPU a drainer busy-waits between {} drain-all calls per second beside a CPU hog \
                 (an ordinary busy thread) pinned there too; the drain work holds the owner's cell for {} ns, recording the \
                 TSC at each remote hold's start and end; {} s baseline (hog, no drains), then {} s drained; a stall is a \
                 gap over {} µs (long: over {} ms), counted inside a hold when it overlaps one; run with a SCHED_OTHER \
                 owner, then a SCHED_FIFO {} one where the process may (real-time throttling off for that run)",
                p.stress.rate,
                p.stress.hold_ns.unwrap_or(isolation_stress::DEFAULT_HOLD_NS),
                p.stress.seconds,
                p.stress.seconds,
                isolation_stress::STALL_NS / 1000,
                isolation_stress::LONG_STALL_NS / 1_000_000,
                REPORT_FIFO_PRIO
            ),
            drain: format!(
                "per point, every slot has a busy owner thread (pinned when the slot is a CPU of this process, unpinned \
                 above) that either spins in local operations (`spin`) or yields the CPU after each one (`yield`); \
                 a caller pinned to the last CPU times each drain-all with the TSC; {} warm-up drains excluded, \
                 then up to {} drains or {} s (at least {}); p50/p99/max over those drains; `auto` lists every slot but \
                 slot 0 as isolated",
                drain::WARMUP_DRAINS,
                d.drains,
                d.budget,
                drain::MIN_DRAINS
            ),
            locks: format!(
                "median of {} repetitions of {} lock+unlock pairs, one warm-up repetition excluded, thread pinned to the \
                 last CPU, loop overhead included",
                l.reps, l.iterations
            ),
            alloc: alloc::method(&p.alloc),
            noisy: format!(
                "repeated figures are flagged `*` when (median - fastest) / fastest > {}% (drain: over five consecutive \
                 batches of drains); an isolation run is flagged when its baseline alone lost 1% or more of its time",
                util::NOISY_SPREAD_PCT
            ),
        }
    }
}

/// The kernel's published figures the report compares with.
#[derive(Debug, Clone, Serialize)]
pub struct KernelReference {
    /// kmalloc(64) cycles per configuration, from the QPW thread.
    pub kmalloc_cycles: Vec<KernelKmalloc>,
    /// memcg `drain_all_stock` cycles, from the QPW thread.
    pub drain_all_stock_cycles: Vec<KernelDrain>,
}

/// One kmalloc figure of the kernel.
#[derive(Debug, Clone, Serialize)]
pub struct KernelKmalloc {
    /// Our configuration it corresponds to.
    pub config: &'static str,
    /// The kernel's configuration.
    pub kernel: &'static str,
    /// Average cycles per kmalloc.
    pub cycles: u64,
}

/// One `drain_all_stock` figure of the kernel.
#[derive(Debug, Clone, Serialize)]
pub struct KernelDrain {
    /// CPUs.
    pub cpus: usize,
    /// Cycles before the QPW patches.
    pub before_qpw: u64,
    /// Cycles with them.
    pub after_qpw: u64,
}

impl KernelReference {
    fn new() -> Self {
        let k = |config, kernel, cycles| KernelKmalloc {
            config,
            kernel,
            cycles,
        };
        KernelReference {
            kmalloc_cycles: vec![
                k("unpatched", "without the patchset", 159),
                k("no-qpw", "CONFIG_QPW=n", 163),
                k("qpw=0", "CONFIG_QPW=y, qpw=0", 170),
                k("qpw=1", "CONFIG_QPW=y, qpw=1", 190),
                k("rt no-qpw", "PREEMPT_RT, no patchset", 185),
                k("rt qpw=0", "PREEMPT_RT, qpw=0", 181),
                k("rt qpw=1", "PREEMPT_RT, qpw=1", 196),
            ],
            drain_all_stock_cycles: [1usize, 8, 128]
                .iter()
                .filter_map(|&cpus| {
                    drain::kernel_drain_all_stock(cpus).map(|(before_qpw, after_qpw)| KernelDrain {
                        cpus,
                        before_qpw,
                        after_qpw,
                    })
                })
                .collect(),
        }
    }
}

/// The isolation part of `results.json`.
#[derive(Debug, Clone, Serialize)]
pub struct IsolationSection {
    /// Seconds per phase.
    pub seconds: f64,
    /// Drains per second.
    pub rate: u64,
    /// Gap threshold.
    pub threshold_ns: u64,
    /// One run per mode.
    pub runs: Vec<IsolationRun>,
}

/// The isolation-under-stress part of `results.json`.
#[derive(Debug, Clone, Serialize)]
pub struct StressSection {
    /// Seconds per phase.
    pub seconds: f64,
    /// Drains per second.
    pub rate: u64,
    /// How long the drain work holds the owner's cell, ns.
    pub hold_ns: u64,
    /// Whether the `SCHED_FIFO` runs were made, or why not.
    pub fifo: String,
    /// One run per mode with a `SCHED_OTHER` owner, then one per mode with
    /// a `SCHED_FIFO` owner where permitted.
    pub runs: Vec<StressResult>,
}

/// The `SCHED_FIFO` priority of the report's stress runs.
pub const REPORT_FIFO_PRIO: i32 = 50;

/// The drain part of `results.json`.
#[derive(Debug, Clone, Serialize)]
pub struct DrainSection {
    /// The slot counts measured.
    pub cpus: Vec<usize>,
    /// Most drains measured per point.
    pub max_drains: u64,
    /// Time budget per point, seconds.
    pub budget_s: f64,
    /// A point still running after this many seconds is cut short.
    pub hard_limit_s: f64,
    /// Warm-up drains per point, excluded.
    pub warmup_drains: u64,
    /// One point per (mode, cpus).
    pub points: Vec<DrainPoint>,
}

/// The locks part of `results.json`.
#[derive(Debug, Clone, Serialize)]
pub struct LocksSection {
    /// Pairs per repetition.
    pub iterations: u64,
    /// Repetitions per figure.
    pub reps: u64,
    /// One row per lock.
    pub rows: Vec<LockRow>,
}

/// `results.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    /// [`SCHEMA`].
    pub schema: &'static str,
    /// The command line that made it.
    pub command: String,
    /// The preset.
    pub preset: &'static str,
    /// The machine.
    pub machine: Machine,
    /// How each figure was measured.
    pub method: Method,
    /// The kernel's figures compared with.
    pub kernel_reference: KernelReference,
    /// The kmalloc benchmark's report.
    pub kmalloc: serde_json::Value,
    /// The isolation benchmark.
    pub isolation: IsolationSection,
    /// The isolation benchmark under stress.
    pub isolation_stress: StressSection,
    /// Drain scaling.
    pub drain: DrainSection,
    /// Lock costs.
    pub locks: LocksSection,
    /// Allocator workloads.
    pub alloc: AllocReport,
    /// The files written beside it.
    pub files: Vec<String>,
}

/// The files a report writes.
pub const FILES: [&str; 6] = [
    "report.md",
    "results.json",
    "drain_latency.svg",
    "isolation_gaps.svg",
    "alloc_relative_cost.svg",
    "alloc_rss.svg",
];

/// Checks `--out` and makes the temporary directory the files go into
/// first. Nothing else is created, except missing parent directories.
fn prepare_out(out: &Path) -> Result<PathBuf, String> {
    let shown = out.display();
    if out.exists() && !out.is_dir() {
        return Err(format!("--out {shown}: exists and is not a directory"));
    }
    let name = out
        .file_name()
        .ok_or_else(|| format!("--out {shown}: not a directory name"))?
        .to_string_lossy()
        .into_owned();
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent)
        .map_err(|e| format!("--out {shown}: cannot create {}: {e}", parent.display()))?;
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)
            .map_err(|e| format!("--out {shown}: cannot clear {}: {e}", tmp.display()))?;
    }
    std::fs::create_dir(&tmp)
        .map_err(|e| format!("--out {shown}: cannot write in {}: {e}", parent.display()))?;
    Ok(tmp)
}

/// Moves the finished temporary directory to `out`, replacing an old report.
fn commit_out(tmp: &Path, out: &Path) -> Result<(), String> {
    let shown = out.display();
    if out.exists() {
        let old = tmp.with_file_name(format!(
            ".{}.old-{}",
            out.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            std::process::id()
        ));
        std::fs::rename(out, &old)
            .map_err(|e| format!("--out {shown}: cannot move the old report away: {e}"))?;
        if let Err(e) = std::fs::rename(tmp, out) {
            let _ = std::fs::rename(&old, out);
            return Err(format!(
                "--out {shown}: cannot move the report into place: {e}"
            ));
        }
        let _ = std::fs::remove_dir_all(&old);
        Ok(())
    } else {
        std::fs::rename(tmp, out)
            .map_err(|e| format!("--out {shown}: cannot move the report into place: {e}"))
    }
}

/// Runs `qpw-bench report`.
pub fn main(a: &ReportArgs) -> Result<(), String> {
    let plan = Plan::from_args(a);
    if plan.fifo {
        // Asked for: refuse now, before anything runs, if it cannot be done.
        isolation_stress::check_fifo(REPORT_FIFO_PRIO).map_err(|e| format!("--fifo: {e}"))?;
    }
    let out = a.out.clone().unwrap_or_else(default_out);
    let tmp = prepare_out(&out)?;
    let r = run_into(&plan, &tmp);
    match r {
        Ok(tables) => {
            commit_out(&tmp, &out).inspect_err(|_| {
                let _ = std::fs::remove_dir_all(&tmp);
            })?;
            print!("{tables}");
            eprintln!(
                "qpw-bench: report written to {}/ ({})",
                out.display(),
                FILES.join(", ")
            );
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

/// Runs everything, writes the files into `dir`, returns the stdout tables.
fn run_into(plan: &Plan, dir: &Path) -> Result<String, String> {
    let machine = Machine::detect();
    let mut pb = Progress::new(plan.steps());
    let mut step = |msg: &str| pb.step(msg);
    let result = (|| {
        step("kmalloc");
        let k = kmalloc::run(&plan.kmalloc)?;
        let iso = crate::isolation::run(&plan.isolation, &mut step)?;
        let mut stress = isolation_stress::run(&plan.stress, &mut step)?;
        let fifo = if plan.fifo {
            let a = IsolationArgs {
                owner_fifo: Some(REPORT_FIFO_PRIO),
                ..plan.stress.clone()
            };
            stress.extend(isolation_stress::run(&a, &mut step)?);
            format!("SCHED_FIFO {REPORT_FIFO_PRIO}")
        } else {
            "not run (they turn real-time throttling off system-wide for their length: pass --fifo to run them)"
                .to_string()
        };
        let drains = drain::run(&plan.drain, &mut step)?;
        let lock_rows = locks::run(&plan.locks, &mut step)?;
        let al = alloc::run(&plan.alloc, &mut step)?;
        Ok::<_, String>((k, iso, (fifo, stress), drains, lock_rows, al))
    })();
    pb.finish();
    let (k, iso, (fifo, stress), drains, lock_rows, al) = result?;

    let method = Method::new(plan, &machine);
    let mut tables = tables(plan, &method, &k, &iso, &drains, &lock_rows, &al);
    tables.push_str(&stress_table(&stress, &fifo, &method));
    tables.push_str(&crate::realprog::report_section(plan.preset)?);
    if let Some(w) = machine.busy_warning() {
        // Above every figure and goal, on stdout and in report.md.
        tables = format!("{w}\n\n{tables}");
        eprintln!("qpw-bench: {}", w.trim_matches('*'));
    }
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let md = format!(
        "# qpw-bench report\n\nMachine: {}\n\nCommand: `{}` (preset `{}`)\n\n{}.\n\n{}\n## kmalloc: every row, and its goals\n\n{}",
        machine.line(),
        command,
        plan.preset,
        method.cycles,
        tables,
        kmalloc::markdown(&k)
    );
    let drain_svg = plots::drain_latency(&drains)?;
    let gaps_svg = plots::isolation_gaps(&iso)?;
    let alloc_svg = plots::alloc_relative_cost(&al)?;
    let rss_svg = plots::alloc_rss(&al)?;
    let results = Results {
        schema: SCHEMA,
        command,
        preset: plan.preset,
        machine,
        method,
        kernel_reference: KernelReference::new(),
        kmalloc: serde_json::to_value(&k).map_err(|e| format!("kmalloc results: {e}"))?,
        isolation: IsolationSection {
            seconds: plan.isolation.seconds,
            rate: plan.isolation.rate,
            threshold_ns: plan.isolation.threshold_ns,
            runs: iso,
        },
        isolation_stress: StressSection {
            seconds: plan.stress.seconds,
            rate: plan.stress.rate,
            hold_ns: plan
                .stress
                .hold_ns
                .unwrap_or(isolation_stress::DEFAULT_HOLD_NS),
            fifo,
            runs: stress,
        },
        drain: DrainSection {
            cpus: plan.drain.cpus.clone(),
            max_drains: plan.drain.drains,
            budget_s: plan.drain.budget,
            hard_limit_s: drain::hard_limit(plan.drain.budget).as_secs_f64(),
            warmup_drains: drain::WARMUP_DRAINS,
            points: drains,
        },
        locks: LocksSection {
            iterations: plan.locks.iterations,
            reps: plan.locks.reps,
            rows: lock_rows,
        },
        alloc: al,
        files: FILES.iter().map(|s| s.to_string()).collect(),
    };
    let json = serde_json::to_string_pretty(&results).map_err(|e| format!("results.json: {e}"))?;
    let write = |name: &str, text: &str| {
        std::fs::write(dir.join(name), text)
            .map_err(|e| format!("writing {name} in {}: {e}", dir.display()))
    };
    write("report.md", &md)?;
    write("results.json", &json)?;
    write("drain_latency.svg", &drain_svg)?;
    write("isolation_gaps.svg", &gaps_svg)?;
    write("alloc_relative_cost.svg", &alloc_svg)?;
    write("alloc_rss.svg", &rss_svg)?;
    Ok(tables)
}

/// The seed's configurations: (kernel's name, our row, kernel's cycles).
const SEED_KMALLOC: [(&str, Option<&str>, u64); 7] = [
    ("without the patchset", None, 159),
    ("CONFIG_QPW=n", Some("no-qpw"), 163),
    ("CONFIG_QPW=y, qpw=0", Some("qpw=0"), 170),
    ("CONFIG_QPW=y, qpw=1", Some("qpw=1"), 190),
    ("PREEMPT_RT, no patchset", Some("rt no-qpw"), 185),
    ("PREEMPT_RT, qpw=0", Some("rt qpw=0"), 181),
    ("PREEMPT_RT, qpw=1", Some("rt qpw=1"), 196),
];

/// The kmalloc table laid out as the seed's: each configuration with the
/// kernel's figure beside ours, then our rows the kernel has no figure for,
/// then the ratios.
fn kmalloc_table(r: &KmallocReport, method: &Method) -> String {
    let row = |name: &str| r.rows.iter().find(|x| x.config == name);
    let noisy = |x: &kmalloc::KmallocRow| {
        x.alloc_min_cycles > 0.0
            && (x.alloc_cycles - x.alloc_min_cycles) / x.alloc_min_cycles * 100.0
                > util::NOISY_SPREAD_PCT
    };
    let ours = |x: Option<&kmalloc::KmallocRow>| match x {
        Some(x) => format!(
            "{:.1}{} | {:.1} | {:.1}",
            x.alloc_cycles,
            if noisy(x) { " *" } else { "" },
            x.alloc_min_cycles,
            x.free_cycles
        ),
        None => "- | - | -".to_string(),
    };
    let mut s = format!(
        "How: {}. Cycles are TSC ticks; `*` marks a spread from the fastest repetition to the median above {}%. \
         The kernel's figures are `kmalloc_bench`'s from the QPW thread (average cycles per kmalloc(64)).\n\n",
        method.kmalloc,
        util::NOISY_SPREAD_PCT
    );
    s.push_str(
        "| configuration (seed) | our row | kernel cycles | our alloc cycles (median) | (min) | our free cycles |\n\
         |---|---|---:|---:|---:|---:|\n",
    );
    for (kernel, name, cycles) in SEED_KMALLOC {
        s.push_str(&format!(
            "| {kernel} | {} | {cycles} | {} |\n",
            name.unwrap_or("(no counterpart)"),
            ours(name.and_then(row))
        ));
    }
    for x in r
        .rows
        .iter()
        .filter(|x| !SEED_KMALLOC.iter().any(|k| k.1 == Some(x.config.as_str())))
    {
        s.push_str(&format!("| - | {} | - | {} |\n", x.config, ours(Some(x))));
    }
    let ratio = |a: &str, b: &str| match (row(a), row(b)) {
        (Some(a), Some(b)) if b.alloc_cycles > 0.0 => {
            format!("{:.3}", a.alloc_cycles / b.alloc_cycles)
        }
        _ => "-".to_string(),
    };
    s.push_str(&format!(
        "\n| ratio | kernel | ours |\n|---|---:|---:|\n\
         | qpw=1 / qpw=0 | {:.3} | {} |\n\
         | qpw=0 / no-qpw | {:.3} | {} |\n\
         | RT qpw=1 / RT qpw=0 | {:.3} | {} |\n\
         | RT qpw=0 / RT no-qpw | {:.3} | {} |\n",
        190.0 / 170.0,
        ratio("qpw=1", "qpw=0"),
        170.0 / 163.0,
        ratio("qpw=0", "no-qpw"),
        196.0 / 181.0,
        ratio("rt qpw=1", "rt qpw=0"),
        181.0 / 185.0,
        ratio("rt qpw=0", "rt no-qpw"),
    ));
    s
}

/// All five sections with their captions.
fn tables(
    plan: &Plan,
    method: &Method,
    k: &KmallocReport,
    iso: &[IsolationRun],
    drains: &[DrainPoint],
    lock_rows: &[LockRow],
    al: &AllocReport,
) -> String {
    let mut s = String::new();
    s.push_str("## kmalloc: cycles per allocation, against the kernel's figures\n\n");
    s.push_str(&kmalloc_table(k, method));
    s.push('\n');
    s.push_str(&isolation_table(iso, method));
    s.push_str(&drain_table(drains, method, plan));
    s.push_str("## Lock cost: the owner's local lock\n\n");
    s.push_str(&locks::markdown(lock_rows, &plan.locks));
    s.push('\n');
    s.push_str("## Allocator workloads: QpwAlloc against mimalloc, jemalloc and glibc\n\n");
    s.push_str(&alloc::markdown(al));
    s
}

fn isolation_table(runs: &[IsolationRun], method: &Method) -> String {
    let mut s = String::from("## Isolation: does a drain interrupt the owner?\n\n");
    s.push_str(&format!(
        "How: {}. `*` marks a noisy baseline.\n\n",
        method.isolation
    ));
    let thr = runs.first().map_or(5000, |r| r.result.threshold_ns);
    s.push_str(&format!(
        "| mode | drains (failed) | fences | IPIs on the owner's CPU (baseline) | works run by owner / by drainer | owner gaps > {thr} ns (baseline) | owner time lost (baseline) | owner Mops/s (baseline) | drain latency p50 / p99 / max |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    ));
    for run in runs {
        let r = &run.result;
        s.push_str(&format!(
            "| {}{} | {} ({}) | {} | {} ({}) | {} / {} | {} ({}) | {:.3}% ({:.3}%) | {:.1} ({:.1}) | {} / {} / {} µs |\n",
            r.mode,
            if r.noisy { " *" } else { "" },
            r.drains,
            r.drains_failed,
            r.fences,
            crate::isolation::opt(r.owner_cpu_ipis),
            crate::isolation::opt(r.baseline_owner_cpu_ipis),
            r.works_run_by_owner,
            r.works_run_remotely,
            r.owner_gaps_over_threshold,
            r.baseline_gaps_over_threshold,
            r.owner_lost_time_pct,
            r.baseline_lost_time_pct,
            r.owner_ops_per_sec / 1e6,
            r.baseline_ops_per_sec / 1e6,
            util::fmt_fig(r.drain_latency_ns.p50 / 1e3),
            util::fmt_fig(r.drain_latency_ns.p99 / 1e3),
            util::fmt_fig(r.drain_latency_ns.max / 1e3),
        ));
    }
    let ok = runs
        .iter()
        .all(|r| r.result.counter_total == r.result.increments);
    let incs: u64 = runs.iter().map(|r| r.result.increments).sum();
    s.push_str(&format!(
        "\nCounter check: {} ({} increments in all; every mode's total equals its increments).\n\n",
        if ok {
            "nothing lost"
        } else {
            "INCREMENTS LOST"
        },
        util::thousands(incs)
    ));
    s
}

fn stress_table(runs: &[StressResult], fifo: &str, method: &Method) -> String {
    let mut s = String::from(
        "## Isolation under stress: does a preempted remote holder stall the owner?\n\n",
    );
    s.push_str(&format!(
        "How: {}. SCHED_FIFO runs: {fifo}.\n\n",
        method.isolation_stress
    ));
    s.push_str(&isolation_stress::markdown(runs));
    s.push('\n');
    s
}

fn drain_table(points: &[DrainPoint], method: &Method, plan: &Plan) -> String {
    let mut s = String::from("## Drain scaling: one drain-all against the number of CPUs\n\n");
    s.push_str(&format!(
        "How: {}. Cycles are TSC ticks; `*` marks a spread above {}% between batches. The kernel's column is memcg \
         `drain_all_stock` from the QPW thread (before → after QPW).\n\n",
        method.drain,
        util::NOISY_SPREAD_PCT
    ));
    let mut loops: Vec<&str> = Vec::new();
    for p in points {
        if !loops.contains(&p.owners) {
            loops.push(p.owners);
        }
    }
    for owners in loops {
        let pts: Vec<&DrainPoint> = points.iter().filter(|p| p.owners == owners).collect();
        s.push_str(match owners {
            "spin" => "### Owners spinning in local operations (`spin`)\n\n",
            _ => "### Owners yielding the CPU between local operations (`yield`)\n\n",
        });
        s.push_str(
            "| mode | CPUs | drains | p50 cycles | p99 cycles | max cycles | fences | works by owners | works by caller | kernel before → after QPW |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for p in &pts {
            s.push_str(&drain_row(p));
        }
        s.push('\n');
        let at = |m: &str, n: usize| {
            pts.iter()
                .find(|p| p.mode == m && p.cpus == n && p.drains > 0)
        };
        if let (Some(q), Some(r)) = (at("queue", 1), at("remote", 1)) {
            if r.latency_cycles.p50 > 0.0 {
                s.push_str(&format!(
                    "- One busy remote CPU: `remote` p50 is {:.0}x faster than `queue` (goal: at least 50x).\n",
                    q.latency_cycles.p50 / r.latency_cycles.p50
                ));
            }
        }
        let remote: Vec<&&DrainPoint> = pts
            .iter()
            .filter(|p| p.mode == "remote" && p.drains > 0)
            .collect();
        if let (Some(lo), Some(hi)) = (
            remote.iter().min_by_key(|p| p.cpus),
            remote.iter().max_by_key(|p| p.cpus),
        ) {
            if hi.cpus > lo.cpus && lo.latency_cycles.p50 > 0.0 {
                s.push_str(&format!(
                    "- `remote` from {} to {} CPUs ({}x the CPUs): p50 grew {:.1}x (goal: no worse than linear).\n",
                    lo.cpus,
                    hi.cpus,
                    hi.cpus / lo.cpus,
                    hi.latency_cycles.p50 / lo.latency_cycles.p50
                ));
            }
        }
        if let (Some(q), Some(r)) = (
            pts.iter()
                .filter(|p| p.mode == "queue" && p.drains > 0)
                .max_by_key(|p| p.cpus),
            pts.iter()
                .filter(|p| p.mode == "remote" && p.drains > 0)
                .max_by_key(|p| p.cpus),
        ) {
            if q.cpus == r.cpus && q.cpus > 1 && r.latency_cycles.p50 > 0.0 {
                s.push_str(&format!(
                    "- At {} CPUs: `remote` p50 is {:.1}x faster than `queue`.\n",
                    q.cpus,
                    q.latency_cycles.p50 / r.latency_cycles.p50
                ));
            }
        }
        s.push('\n');
    }
    if points.iter().any(|p| p.cut_short) {
        s.push_str(&format!(
            "- \"cut short\": the point was still running after {:.1} s; its owners were stopped (handing their \
             slots back) and the drain in progress discarded.\n",
            drain::hard_limit(plan.drain.budget).as_secs_f64()
        ));
    }
    s.push_str(
        "- `queue` and `defer` wait for every owner to run: with more owners than cores, each waits for its turn \
         on a core (as kworkers would), so their latency follows the scheduler, not the drain.\n\
         - `remote` never waits for an owner to take a turn, but an owner can be preempted while it holds its \
         slot's lock (the kernel's spinlock disables preemption, a userspace one cannot). Owners that `spin` in \
         local operations are almost always preempted inside their section; once a caller has waited on one, \
         callers hand work to owners they find standing still in a section (they run it as the section ends, \
         without a fence), so a drain-all waits for the slowest owner's next turn on a core, not for each \
         in turn. Owners that `yield` are descheduled outside their section, as an owner with a core of its \
         own would be, and `remote` then shows the drain's own cost.\n\n",
    );
    s
}

fn drain_row(p: &DrainPoint) -> String {
    let kernel = match (p.kernel_before_qpw, p.kernel_after_qpw) {
        (Some(b), Some(a)) => format!("{} → {}", util::thousands(b), util::thousands(a)),
        _ => String::new(),
    };
    let (p50, p99, max) = if p.drains == 0 {
        ("cut short".to_string(), "-".to_string(), "-".to_string())
    } else {
        (
            format!(
                "{}{}{}",
                util::thousands(p.latency_cycles.p50 as u64),
                if p.batches.noisy { " *" } else { "" },
                if p.cut_short { " (cut short)" } else { "" }
            ),
            util::thousands(p.latency_cycles.p99 as u64),
            util::thousands(p.latency_cycles.max as u64),
        )
    };
    format!(
        "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
        p.mode,
        p.cpus,
        p.drains,
        p50,
        p99,
        max,
        p.fences,
        p.works_by_owners,
        p.works_by_caller,
        kernel
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_and_overrides() {
        let quick = Plan::from_args(&ReportArgs {
            quick: true,
            seconds: Some(0.2),
            ..Default::default()
        });
        assert_eq!(quick.preset, "quick");
        assert_eq!(quick.isolation.seconds, 0.2);
        let full = Plan::from_args(&ReportArgs {
            full: true,
            ..Default::default()
        });
        assert_eq!(full.drain.cpus.len(), 9);
        assert_eq!(Plan::from_args(&ReportArgs::default()).preset, "default");
        // Issue 10's fork goal is over 1,000 forks.
        assert_eq!(full.alloc.forks(), 1000);
        assert_eq!(quick.alloc.forks(), 50);
        assert_eq!(Plan::from_args(&ReportArgs::default()).alloc.forks(), 300);
        let none = Plan::from_args(&ReportArgs {
            alloc_forks: Some(0),
            ..Default::default()
        });
        assert_eq!(none.alloc.forks(), 0);
    }

    #[test]
    fn an_out_path_under_a_file_is_refused_and_nothing_is_made() {
        let base = std::env::temp_dir().join(format!("qpw-bench-unit-{}", std::process::id()));
        std::fs::write(&base, b"x").unwrap();
        let e = prepare_out(&base.join("out")).unwrap_err();
        assert!(e.contains("--out"), "{e}");
        assert!(prepare_out(&base).unwrap_err().contains("not a directory"));
        std::fs::remove_file(&base).unwrap();
    }
}
