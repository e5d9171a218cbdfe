//! `qpw-bench alloc`: allocator workloads under `QpwAlloc` and its peers.
//!
//! Every (workload, allocator) repetition is a separate process: this
//! executable re-run as `qpw-bench alloc-worker` with the allocator named in
//! its environment ([`dispatch`]). Repetitions are interleaved (each
//! repetition runs every workload under every allocator, the allocators'
//! order rotated by one each time) and the median reported. Per
//! (workload, allocator): the cost (time per operation of a throughput
//! workload, time of a program), peak RSS (`VmHWM`), minor
//! faults, and `RES`/`CAL`/`TLB` interrupts on the first two CPUs. The
//! summary: each allocator's geometric mean over the workloads of its cost
//! relative to mimalloc's, and each workload's peak RSS relative to the
//! best peer's.
//!
//! Then, per allocator, the fork storm ([`fork`]): hung and crashed
//! children over `--forks` forks while two threads allocate.

pub mod dispatch;
pub mod fork;
pub mod irq;
pub mod spawn;
pub mod summary;
pub mod table;
pub mod worker;
pub mod workloads;

pub use table::markdown;

use crate::util::{self, Summary};
use dispatch::AllocName;
use irq::Irqs;
use serde::Serialize;
use spawn::{run_storm, run_worker, Run};
use summary::{relate, row};
use workloads::{Kind, Placement, Workload};

/// Parses `--scale`: a multiplier of the programs' work, 0.001 to 100.
pub fn parse_scale(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && (0.001..=100.0).contains(&v) => Ok(v),
        Ok(_) => Err(format!("`{s}` is out of range: use 0.001 to 100")),
        Err(_) => Err(format!("`{s}` is not a number")),
    }
}

fn parse_reps(s: &str) -> Result<usize, String> {
    crate::util::parse_count_to_100(s, "repetitions")
}

/// Options of `qpw-bench alloc`.
#[derive(clap::Args, Debug, Clone)]
pub struct AllocArgs {
    /// Workloads to run, comma-separated [default: all].
    #[arg(long, value_enum, value_delimiter = ',')]
    pub workload: Vec<Workload>,
    /// Allocators to compare, comma-separated [default: all].
    #[arg(long, value_enum, value_delimiter = ',')]
    pub allocator: Vec<AllocName>,
    /// Repetitions of each (workload, allocator), interleaved; the median is reported.
    #[arg(long, default_value_t = 3, value_parser = parse_reps)]
    pub reps: usize,
    /// Seconds of each throughput workload's run (and of the idle baseline).
    #[arg(long, default_value_t = 0.2, value_parser = util::parse_seconds, allow_negative_numbers = true)]
    pub seconds: f64,
    /// Multiplier of the program workloads' work (tree, churn, json, small).
    #[arg(long, default_value_t = 1.0, value_parser = parse_scale, allow_negative_numbers = true)]
    pub scale: f64,
    /// A worker still running after this many seconds is killed and its run counted as failed.
    #[arg(long, default_value_t = 120.0, value_parser = util::parse_seconds, allow_negative_numbers = true)]
    pub timeout: f64,
    /// Fork storm: forks per allocator, 0 for none [default: 1000 when every
    /// workload runs or with --fork-only, else 0].
    #[arg(long, value_parser = fork::parse_forks)]
    pub forks: Option<usize>,
    /// Run only the fork storm (no workloads).
    #[arg(long)]
    pub fork_only: bool,
    /// Fork storm: seconds a child may run before it is killed and counted hung.
    #[arg(long, default_value_t = fork::DEFAULT_CHILD_LIMIT_S, value_parser = util::parse_seconds, allow_negative_numbers = true)]
    pub fork_child_limit: f64,
    /// Fork storm: print gdb's backtrace of every hung child to stderr.
    #[arg(long)]
    pub fork_backtrace: bool,
    /// Print the results as JSON instead of Markdown tables.
    #[arg(long)]
    pub json: bool,
}

impl Default for AllocArgs {
    fn default() -> Self {
        AllocArgs {
            workload: Vec::new(),
            allocator: Vec::new(),
            reps: 3,
            seconds: 0.2,
            scale: 1.0,
            timeout: 120.0,
            forks: None,
            fork_only: false,
            fork_child_limit: fork::DEFAULT_CHILD_LIMIT_S,
            fork_backtrace: false,
            json: false,
        }
    }
}

impl AllocArgs {
    fn workloads(&self) -> Vec<Workload> {
        if self.fork_only {
            return Vec::new();
        }
        dedup_or(&self.workload, &Workload::ALL)
    }

    /// Forks of each allocator's fork storm (0: no storm).
    pub fn forks(&self) -> usize {
        self.forks
            .unwrap_or(if self.workload.is_empty() || self.fork_only {
                fork::DEFAULT_FORKS
            } else {
                0
            })
    }

    fn allocators(&self) -> Vec<AllocName> {
        dedup_or(&self.allocator, &AllocName::ALL)
    }

    /// Worker processes one run starts.
    pub fn processes(&self) -> u64 {
        let w = self.workloads().len();
        let storms = if self.forks() > 0 {
            self.allocators().len()
        } else {
            0
        };
        let baselines = if w > 0 { self.reps } else { 0 };
        (self.reps * w * self.allocators().len() + baselines + storms) as u64
    }
}

/// The values given, each once, in their order; all of them if none was given.
pub(crate) fn dedup_or<T: Copy + PartialEq>(given: &[T], all: &[T]) -> Vec<T> {
    let mut v: Vec<T> = Vec::new();
    for x in if given.is_empty() { all } else { given } {
        if !v.contains(x) {
            v.push(*x);
        }
    }
    v
}

/// Interrupts per second on the idle CPU, with nothing allocating.
#[derive(Debug, Clone, Serialize)]
pub struct Baseline {
    /// Seconds of each baseline run.
    pub seconds: f64,
    /// Baseline runs that worked.
    pub runs: usize,
    /// Median per second of each kind on the second CPU (`null`: unknown).
    pub second_cpu_irqs_per_s: Option<IrqRates>,
}

/// Interrupts per second.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct IrqRates {
    /// Rescheduling.
    pub res: f64,
    /// Function call.
    pub cal: f64,
    /// TLB shootdown.
    pub tlb: f64,
}

/// One allocator's figures on one workload (medians over its runs).
#[derive(Debug, Clone, Serialize)]
pub struct AllocRow {
    /// The allocator.
    pub allocator: &'static str,
    /// Runs that finished.
    pub runs: usize,
    /// Runs that failed (crashed, timed out, bad output).
    pub failures: usize,
    /// The last failure's reason.
    pub error: Option<String>,
    /// Cost per run: ns per operation (throughput) or seconds (program).
    pub cost: Option<Summary>,
    /// Median cost over mimalloc's (or the reference's).
    pub rel_cost: Option<f64>,
    /// Median operations per second.
    pub ops_per_s: Option<f64>,
    /// Median seconds of the measured part.
    pub elapsed_s: Option<f64>,
    /// Median CPU seconds (user + system) of the workload's threads.
    pub cpu_s: Option<f64>,
    /// Median CPU cost: CPU ns per operation (throughput) or CPU seconds
    /// (program); steadier than `cost` on a loaded machine.
    pub cpu_cost: Option<f64>,
    /// `cpu_cost` over the reference's.
    pub rel_cpu: Option<f64>,
    /// Median peak RSS of the worker process (`VmHWM`), KiB.
    pub max_rss_kib: Option<u64>,
    /// `max_rss_kib` over the lowest of the peers' (mimalloc, jemalloc, glibc).
    pub rel_rss: Option<f64>,
    /// Median minor page faults during the run.
    pub minflt: Option<u64>,
    /// Median interrupts on the first CPU (each kind apart).
    pub first_cpu_irqs: Option<Irqs>,
    /// Median interrupts on the second CPU.
    pub second_cpu_irqs: Option<Irqs>,
}

/// One workload under every allocator.
#[derive(Debug, Clone, Serialize)]
pub struct WorkloadResult {
    /// The workload.
    pub workload: &'static str,
    /// `throughput` or `program`.
    pub kind: Kind,
    /// `cpu0` or `spread`.
    pub placement: Placement,
    /// What it does.
    pub description: &'static str,
    /// One row per allocator, in the run's order.
    pub rows: Vec<AllocRow>,
}

/// One allocator over every workload.
#[derive(Debug, Clone, Serialize)]
pub struct AllocSummary {
    /// The allocator.
    pub allocator: &'static str,
    /// Geometric mean over the workloads of `rel_cost`.
    pub geomean_rel_cost: Option<f64>,
    /// Workloads in that mean (both it and the reference finished).
    pub workloads: usize,
    /// Geometric mean over the workloads of `rel_cpu`.
    pub geomean_rel_cpu: Option<f64>,
    /// The largest `rel_rss` over the workloads.
    pub worst_rel_rss: Option<f64>,
}

/// The whole run (`results.json`'s `alloc`).
#[derive(Debug, Clone, Serialize)]
pub struct AllocReport {
    /// How it was measured.
    pub method: String,
    /// Repetitions per (workload, allocator).
    pub reps: usize,
    /// Seconds of a throughput run.
    pub seconds: f64,
    /// Multiplier of the programs' work.
    pub scale: f64,
    /// Per-worker time limit.
    pub timeout_s: f64,
    /// The allocator costs are relative to.
    pub reference: &'static str,
    /// The allocators, in order.
    pub allocators: Vec<&'static str>,
    /// The first and second CPUs used.
    pub cpus: Vec<usize>,
    /// Interrupts on the idle CPU with nothing allocating.
    pub baseline: Baseline,
    /// One per workload.
    pub workloads: Vec<WorkloadResult>,
    /// One per allocator.
    pub summary: Vec<AllocSummary>,
    /// The fork storms (`null`: not run, `--forks 0`).
    pub fork: Option<ForkReport>,
}

/// The fork storms, one per allocator.
#[derive(Debug, Clone, Serialize)]
pub struct ForkReport {
    /// How it was measured.
    pub method: String,
    /// Forks asked of each storm.
    pub forks: usize,
    /// Seconds a child may run before it counts as hung.
    pub child_limit_s: f64,
    /// A storm stops after this many hung children.
    pub max_hung: usize,
    /// One per allocator, in the run's order.
    pub rows: Vec<ForkRow>,
}

/// One allocator's fork storm.
#[derive(Debug, Clone, Serialize)]
pub struct ForkRow {
    /// The allocator.
    pub allocator: &'static str,
    /// Why the worker failed (`null`: it reported).
    pub error: Option<String>,
    /// What it reported.
    pub storm: Option<fork::StormResult>,
}

/// How the figures are measured, for the report.
pub fn method(a: &AllocArgs) -> String {
    format!(
        "each (workload, allocator) repetition is its own process (qpw-bench re-run as alloc-worker, its global \
         allocator chosen at its first allocation from QPW_BENCH_ALLOCATOR); {} interleaved repetitions (every \
         workload under every allocator, the allocators' order rotated each time), median reported; throughput \
         workloads run {} s and cost ns per operation, programs do fixed work (scale {}) and cost their time; \
         `cpu0` workloads run on the first CPU while a raw pthread that never allocates spins on the second, \
         `spread` workloads run on both; CPU time is the worker's user + system time over the run less the idle thread's; peak RSS is the worker's \
         VmHWM at its end; interrupts are the \
         RES/CAL/TLB rows of /proc/interrupts for each CPU, read by the worker before and after the workload; \
         the baseline is the same idle thread with the main thread asleep for {} s",
        a.reps, a.seconds, a.scale, a.seconds
    )
}

/// Runs every workload under every allocator; `step` is told before each
/// worker starts.
pub fn run(a: &AllocArgs, step: &mut dyn FnMut(&str)) -> Result<AllocReport, String> {
    let exe = std::env::current_exe()
        .map_err(|e| format!("alloc: cannot find this program to start workers: {e}"))?;
    let workloads = a.workloads();
    let allocators = a.allocators();
    let n = allocators.len();
    let mut runs: Vec<Vec<Vec<Run>>> = workloads
        .iter()
        .map(|_| (0..n).map(|_| Vec::new()).collect())
        .collect();
    let mut failures = vec![vec![(0usize, None::<String>); n]; workloads.len()];
    let mut baseline: Vec<Run> = Vec::new();
    for rep in 0..a.reps {
        if workloads.is_empty() {
            break;
        }
        step("alloc: idle baseline");
        if let Ok(r) = run_worker(&exe, Workload::Idle, AllocName::Glibc, a, rep as u64) {
            baseline.push(r);
        }
        for (wi, w) in workloads.iter().enumerate() {
            for k in 0..n {
                let ai = (k + rep) % n;
                let al = allocators[ai];
                step(&format!("alloc: {} under {}", w.name(), al.name()));
                match run_worker(&exe, *w, al, a, 1 + rep as u64) {
                    Ok(r) => runs[wi][ai].push(r),
                    Err(e) => {
                        eprintln!("qpw-bench: alloc: {} under {}: {e}", w.name(), al.name());
                        failures[wi][ai].0 += 1;
                        failures[wi][ai].1 = Some(e);
                    }
                }
            }
        }
    }
    let mut results: Vec<WorkloadResult> = workloads
        .iter()
        .enumerate()
        .map(|(wi, w)| WorkloadResult {
            workload: w.name(),
            kind: w.kind(),
            placement: w.placement(),
            description: w.describe(),
            rows: allocators
                .iter()
                .enumerate()
                .map(|(ai, al)| {
                    let (f, e) = failures[wi][ai].clone();
                    row(*w, *al, &runs[wi][ai], f, e)
                })
                .collect(),
        })
        .collect();
    let (reference, summary) = relate(&mut results, &allocators);
    let fork = (a.forks() > 0).then(|| ForkReport {
        method: fork::method(a.forks(), a.fork_child_limit),
        forks: a.forks(),
        child_limit_s: a.fork_child_limit,
        max_hung: fork::MAX_HUNG,
        rows: allocators
            .iter()
            .map(|al| {
                step(&format!("alloc: fork storm under {}", al.name()));
                match run_storm(&exe, *al, a) {
                    Ok(s) => ForkRow {
                        allocator: al.name(),
                        error: None,
                        storm: Some(s),
                    },
                    Err(e) => {
                        eprintln!("qpw-bench: alloc: fork storm under {}: {e}", al.name());
                        ForkRow {
                            allocator: al.name(),
                            error: Some(e),
                            storm: None,
                        }
                    }
                }
            })
            .collect(),
    });
    let rate = |f: fn(&Irqs) -> u64| {
        let v: Vec<f64> = baseline
            .iter()
            .filter_map(|b| Some(f(&b.r.second_cpu_irqs?) as f64 / b.r.elapsed_s.max(1e-9)))
            .collect();
        (!v.is_empty()).then(|| Summary::of(&v).median)
    };
    let cpus = baseline
        .first()
        .or_else(|| runs.iter().flatten().flatten().next())
        .map(|b| {
            let (x, y) = b.r.cpus;
            std::iter::once(x).chain(y).collect()
        })
        .unwrap_or_default();
    Ok(AllocReport {
        method: method(a),
        reps: a.reps,
        seconds: a.seconds,
        scale: a.scale,
        timeout_s: a.timeout,
        reference,
        allocators: allocators.iter().map(|x| x.name()).collect(),
        cpus,
        baseline: Baseline {
            seconds: a.seconds,
            runs: baseline.len(),
            second_cpu_irqs_per_s: match (rate(|x| x.res), rate(|x| x.cal), rate(|x| x.tlb)) {
                (Some(res), Some(cal), Some(tlb)) => Some(IrqRates { res, cal, tlb }),
                _ => None,
            },
        },
        workloads: results,
        summary,
        fork,
    })
}

/// Runs `qpw-bench alloc`.
pub fn main(a: &AllocArgs) -> Result<(), String> {
    use std::io::IsTerminal;
    let total = a.processes();
    let tty = std::io::stderr().is_terminal();
    let mut done = 0u64;
    let mut step = |msg: &str| {
        done += 1;
        if tty {
            eprint!("\r\x1b[2K[{done}/{total}] {msg}");
        }
    };
    let r = run(a, &mut step)?;
    if tty {
        eprintln!();
    }
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&r).map_err(|e| format!("alloc results: {e}"))?
        );
    } else {
        print!("## Allocator workloads\n\n{}", markdown(&r));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_and_reps_are_checked() {
        assert!(parse_scale("0").unwrap_err().contains("0.001"));
        assert!(parse_scale("nan").is_err());
        assert!(parse_scale("x").unwrap_err().contains("`x`"));
        assert_eq!(parse_scale("2.5"), Ok(2.5));
        assert!(parse_reps("0").unwrap_err().contains("1 to 100"));
    }
}
