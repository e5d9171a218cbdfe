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
pub mod worker;
pub mod workloads;

use crate::util::{self, Summary};
use dispatch::AllocName;
use irq::Irqs;
use serde::Serialize;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use worker::WorkerResult;
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
    match s.trim().parse::<usize>() {
        Ok(n) if (1..=100).contains(&n) => Ok(n),
        Ok(n) => Err(format!("{n} repetitions is out of range: use 1 to 100")),
        Err(_) => Err(format!("`{s}` is not a number of repetitions")),
    }
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

fn dedup_or<T: Copy + PartialEq>(given: &[T], all: &[T]) -> Vec<T> {
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

/// One worker's figures, as the parent sees them.
struct Run {
    r: WorkerResult,
    max_rss_kib: u64,
}

/// Starts one worker and waits for it (at most `timeout`).
fn run_worker(
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
fn run_storm(
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

fn median_u64(mut v: Vec<u64>) -> Option<u64> {
    v.sort_unstable();
    v.get(v.len().wrapping_sub(1) / 2).copied()
}

fn median_irqs(v: &[Option<Irqs>]) -> Option<Irqs> {
    let v: Vec<Irqs> = v.iter().copied().collect::<Option<Vec<_>>>()?;
    Some(Irqs {
        res: median_u64(v.iter().map(|x| x.res).collect())?,
        cal: median_u64(v.iter().map(|x| x.cal).collect())?,
        tlb: median_u64(v.iter().map(|x| x.tlb).collect())?,
    })
}

fn row(
    w: Workload,
    a: AllocName,
    runs: &[Run],
    failures: usize,
    error: Option<String>,
) -> AllocRow {
    let med = |v: Vec<f64>| (!v.is_empty()).then(|| Summary::of(&v).median);
    let costs: Vec<f64> = runs
        .iter()
        .map(|x| match w.kind() {
            Kind::Throughput => x.r.elapsed_s * 1e9 / x.r.ops.max(1) as f64,
            Kind::Program => x.r.elapsed_s,
        })
        .collect();
    AllocRow {
        allocator: a.name(),
        runs: runs.len(),
        failures,
        error,
        cost: (!costs.is_empty()).then(|| Summary::of(&costs)),
        rel_cost: None,
        ops_per_s: med(runs
            .iter()
            .map(|x| x.r.ops as f64 / x.r.elapsed_s.max(1e-9))
            .collect()),
        elapsed_s: med(runs.iter().map(|x| x.r.elapsed_s).collect()),
        cpu_s: med(runs.iter().map(|x| x.r.cpu_s).collect()),
        cpu_cost: med(runs
            .iter()
            .map(|x| match w.kind() {
                Kind::Throughput => x.r.cpu_s * 1e9 / x.r.ops.max(1) as f64,
                Kind::Program => x.r.cpu_s,
            })
            .collect()),
        rel_cpu: None,
        max_rss_kib: median_u64(runs.iter().map(|x| x.max_rss_kib).collect()),
        rel_rss: None,
        minflt: median_u64(runs.iter().map(|x| x.r.minflt).collect()),
        first_cpu_irqs: if runs.is_empty() {
            None
        } else {
            median_irqs(&runs.iter().map(|x| x.r.first_cpu_irqs).collect::<Vec<_>>())
        },
        second_cpu_irqs: if runs.is_empty() {
            None
        } else {
            median_irqs(&runs.iter().map(|x| x.r.second_cpu_irqs).collect::<Vec<_>>())
        },
    }
}

fn geomean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| (v.iter().map(|x| x.ln()).sum::<f64>() / v.len() as f64).exp())
}

/// Fills the relative figures and the summary.
fn relate(
    workloads: &mut [WorkloadResult],
    allocators: &[AllocName],
) -> (&'static str, Vec<AllocSummary>) {
    let reference = if allocators.contains(&AllocName::Mimalloc) {
        AllocName::Mimalloc
    } else {
        allocators[0]
    };
    for w in workloads.iter_mut() {
        let cost_of = |rows: &[AllocRow], name: &str| {
            rows.iter()
                .find(|r| r.allocator == name)
                .and_then(|r| r.cost.as_ref())
                .map(|c| c.median)
        };
        let base = cost_of(&w.rows, reference.name());
        let base_cpu = w
            .rows
            .iter()
            .find(|r| r.allocator == reference.name())
            .and_then(|r| r.cpu_cost);
        let best_peer_rss = w
            .rows
            .iter()
            .filter(|r| {
                allocators
                    .iter()
                    .any(|a| a.name() == r.allocator && a.is_peer())
            })
            .filter_map(|r| r.max_rss_kib)
            .min();
        for r in w.rows.iter_mut() {
            r.rel_cost = match (r.cost.as_ref(), base) {
                (Some(c), Some(b)) if b > 0.0 => Some(c.median / b),
                _ => None,
            };
            r.rel_cpu = match (r.cpu_cost, base_cpu) {
                (Some(c), Some(b)) if b > 0.0 => Some(c / b),
                _ => None,
            };
            r.rel_rss = match (r.max_rss_kib, best_peer_rss) {
                (Some(x), Some(b)) if b > 0 => Some(x as f64 / b as f64),
                _ => None,
            };
        }
    }
    let summary = allocators
        .iter()
        .map(|a| {
            let rows: Vec<&AllocRow> = workloads
                .iter()
                .filter_map(|w| w.rows.iter().find(|r| r.allocator == a.name()))
                .collect();
            let rel: Vec<f64> = rows.iter().filter_map(|r| r.rel_cost).collect();
            let cpu: Vec<f64> = rows.iter().filter_map(|r| r.rel_cpu).collect();
            AllocSummary {
                allocator: a.name(),
                geomean_rel_cost: geomean(&rel),
                workloads: rel.len(),
                geomean_rel_cpu: geomean(&cpu),
                worst_rel_rss: rows.iter().filter_map(|r| r.rel_rss).max_by(f64::total_cmp),
            }
        })
        .collect();
    (reference.name(), summary)
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

fn cost_cell(kind: Kind, r: &AllocRow) -> String {
    let Some(c) = &r.cost else {
        return format!("failed ({})", r.failures);
    };
    let abs = match kind {
        Kind::Throughput => format!("{} Mops/s", util::fmt_fig(r.ops_per_s.unwrap_or(0.0) / 1e6)),
        Kind::Program => format!("{} s", util::fmt_fig(c.median)),
    };
    format!(
        "{abs}{} ({})",
        if c.noisy { " *" } else { "" },
        r.rel_cost.map_or("-".to_string(), |x| format!("{x:.2}×"))
    )
}

/// The tables, with their captions.
pub fn markdown(r: &AllocReport) -> String {
    let mut s = String::new();
    if !r.workloads.is_empty() {
        s.push_str(&workload_tables(r));
    }
    if let Some(f) = &r.fork {
        s.push_str(&fork_table(f));
    }
    s
}

/// The fork-safety table, with its caption.
fn fork_table(f: &ForkReport) -> String {
    let mut s = format!(
        "### Fork safety: {} forks per allocator while 2 threads allocate\n\nHow: {}.\n\n",
        util::thousands(f.forks as u64),
        f.method
    );
    s.push_str(
        "| allocator | forks | ok | hung | crashed | fork failed | fork() p50 / p99 | child start p50 | child run p50 | objects churned |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let us = |ns: f64| format!("{} µs", util::fmt_fig(ns / 1e3));
    let mut problems = String::new();
    for row in &f.rows {
        match (&row.storm, &row.error) {
            (Some(x), _) => {
                s.push_str(&format!(
                    "| {} | {}{} | {} | {} | {} | {} | {} / {} | {} | {} | {} |\n",
                    row.allocator,
                    util::thousands(x.forks as u64),
                    if x.stopped_early { " (stopped)" } else { "" },
                    util::thousands(x.ok as u64),
                    x.hung,
                    x.crashed,
                    x.fork_failed,
                    us(x.fork.p50_ns),
                    us(x.fork.p99_ns),
                    us(x.child_start.p50_ns),
                    us(x.child_run.p50_ns),
                    util::thousands(x.churn_objects),
                ));
                if let Some(p) = &x.problems {
                    problems.push_str(&format!("- {}: {p}\n", row.allocator));
                }
            }
            (None, e) => {
                s.push_str(&format!(
                    "| {} | failed | - | - | - | - | - | - | - | - |\n",
                    row.allocator
                ));
                problems.push_str(&format!(
                    "- {}: the storm's worker failed: {}\n",
                    row.allocator,
                    e.as_deref().unwrap_or("-")
                ));
            }
        }
    }
    s.push('\n');
    if !problems.is_empty() {
        s.push_str("Hung, crashed or failed:\n\n");
        s.push_str(&problems);
        s.push('\n');
    }
    s
}

/// The workloads' tables, with their captions.
fn workload_tables(r: &AllocReport) -> String {
    let mut s = String::new();
    s.push_str(&format!("How: {}.\n\n", r.method));
    let header = |first: &str| {
        let mut h = format!("| {first} |");
        let mut sep = String::from("|---|");
        for a in &r.allocators {
            h.push_str(&format!(" {a} |"));
            sep.push_str("---:|");
        }
        format!("{h}\n{sep}\n")
    };
    s.push_str(&format!(
        "### Cost: throughput or time, and relative to {} (lower is better)\n\n",
        r.reference
    ));
    s.push_str(&header("workload (kind, placement)"));
    for w in &r.workloads {
        s.push_str(&format!(
            "| {} ({}, {}) |",
            w.workload,
            match w.kind {
                Kind::Throughput => "throughput",
                Kind::Program => "program",
            },
            match w.placement {
                Placement::Cpu0 => "cpu0",
                Placement::Spread => "spread",
            }
        ));
        for row in &w.rows {
            s.push_str(&format!(" {} |", cost_cell(w.kind, row)));
        }
        s.push('\n');
    }
    s.push_str(&format!(
        "| **geometric mean, relative to {}** |",
        r.reference
    ));
    for x in &r.summary {
        s.push_str(&format!(
            " **{}** |",
            x.geomean_rel_cost
                .map_or("-".to_string(), |g| format!("{g:.2}×"))
        ));
    }
    s.push_str(&format!(
        "\n| geometric mean of CPU time (user + system of the workload's threads), relative to {} |",
        r.reference
    ));
    for x in &r.summary {
        s.push_str(&format!(
            " {} |",
            x.geomean_rel_cpu
                .map_or("-".to_string(), |g| format!("{g:.2}×"))
        ));
    }
    s.push_str("\n\n");

    s.push_str(
        "### Peak RSS: MiB, and relative to the best peer's (mimalloc, jemalloc, glibc)\n\n",
    );
    s.push_str(&header("workload"));
    for w in &r.workloads {
        s.push_str(&format!("| {} |", w.workload));
        for row in &w.rows {
            s.push_str(&match (row.max_rss_kib, row.rel_rss) {
                (Some(k), Some(x)) => format!(" {} ({x:.2}×) |", util::fmt_fig(k as f64 / 1024.0)),
                (Some(k), None) => format!(" {} |", util::fmt_fig(k as f64 / 1024.0)),
                _ => " - |".to_string(),
            });
        }
        s.push('\n');
    }
    s.push_str("| **worst, relative to the best peer** |");
    for x in &r.summary {
        s.push_str(&format!(
            " **{}** |",
            x.worst_rel_rss
                .map_or("-".to_string(), |g| format!("{g:.2}×"))
        ));
    }
    s.push_str("\n\n");

    let second = r.cpus.get(1).map_or("-".to_string(), |c| c.to_string());
    s.push_str(&format!(
        "### Interrupts on CPU {second}: RES / CAL / TLB during the run (median), and minor faults\n\n\
         On `cpu0` workloads CPU {second} runs only a thread that never allocates; on `spread` workloads it runs \
         workload threads too. Baseline (nothing allocating) on CPU {second}, per second: {}.\n\n",
        match &r.baseline.second_cpu_irqs_per_s {
            Some(b) => format!("RES {:.0}, CAL {:.0}, TLB {:.0}", b.res, b.cal, b.tlb),
            None => "unknown".to_string(),
        }
    ));
    s.push_str(&header("workload"));
    for w in &r.workloads {
        s.push_str(&format!("| {} |", w.workload));
        for row in &w.rows {
            s.push_str(&match (row.second_cpu_irqs, row.minflt) {
                (Some(i), Some(f)) => format!(
                    " {} / {} / {} · {} flt |",
                    util::thousands(i.res),
                    util::thousands(i.cal),
                    util::thousands(i.tlb),
                    util::thousands(f)
                ),
                (None, Some(f)) => format!(" - · {} flt |", util::thousands(f)),
                _ => " - |".to_string(),
            });
        }
        s.push('\n');
    }
    s.push('\n');
    let failed: Vec<String> = r
        .workloads
        .iter()
        .flat_map(|w| {
            w.rows.iter().filter(|x| x.failures > 0).map(move |x| {
                format!(
                    "- {} under {}: {} failed run(s), last: {}\n",
                    w.workload,
                    x.allocator,
                    x.failures,
                    x.error.as_deref().unwrap_or("-")
                )
            })
        })
        .collect();
    if !failed.is_empty() {
        s.push_str("Failed runs:\n\n");
        s.extend(failed);
        s.push('\n');
    }
    s.push_str("Workloads:\n\n");
    for w in &r.workloads {
        s.push_str(&format!("- `{}`: {}.\n", w.workload, w.description));
    }
    s.push('\n');
    s
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
    fn medians_take_the_lower_middle_and_need_every_value() {
        assert_eq!(median_u64(vec![3, 1, 2]), Some(2));
        assert_eq!(median_u64(vec![4, 1, 3, 2]), Some(2));
        assert_eq!(median_u64(vec![]), None);
        let i = |n| {
            Some(Irqs {
                res: n,
                cal: 2 * n,
                tlb: 0,
            })
        };
        assert_eq!(median_irqs(&[i(1), i(5), i(3)]), i(3));
        assert_eq!(median_irqs(&[i(1), None]), None);
    }

    fn fake_row(allocator: &'static str, cost: f64, rss: u64) -> AllocRow {
        AllocRow {
            allocator,
            runs: 1,
            failures: 0,
            error: None,
            cost: Some(Summary::of(&[cost])),
            rel_cost: None,
            ops_per_s: None,
            elapsed_s: None,
            cpu_s: None,
            cpu_cost: Some(cost),
            rel_cpu: None,
            max_rss_kib: Some(rss),
            rel_rss: None,
            minflt: None,
            first_cpu_irqs: None,
            second_cpu_irqs: None,
        }
    }

    #[test]
    fn costs_are_relative_to_mimalloc_and_rss_to_the_best_peer() {
        let w = |rows| WorkloadResult {
            workload: "x",
            kind: Kind::Program,
            placement: Placement::Spread,
            description: "",
            rows,
        };
        let mut ws = vec![
            w(vec![
                fake_row("qpw-queue", 4.0, 120),
                fake_row("mimalloc", 2.0, 200),
                fake_row("glibc", 1.0, 100),
            ]),
            w(vec![
                fake_row("qpw-queue", 1.0, 50),
                fake_row("mimalloc", 4.0, 80),
                fake_row("glibc", 8.0, 90),
            ]),
        ];
        let allocators = [AllocName::QpwQueue, AllocName::Mimalloc, AllocName::Glibc];
        let (reference, summary) = relate(&mut ws, &allocators);
        assert_eq!(reference, "mimalloc");
        assert_eq!(ws[0].rows[0].rel_cost, Some(2.0));
        assert_eq!(ws[1].rows[0].rel_cost, Some(0.25));
        assert_eq!(ws[0].rows[2].rel_cpu, Some(0.5));
        // The best peer's RSS (glibc's 100, then mimalloc's 80), ours not counted.
        assert_eq!(ws[0].rows[0].rel_rss, Some(1.2));
        assert_eq!(ws[1].rows[0].rel_rss, Some(50.0 / 80.0));
        let q = &summary[0];
        // sqrt(2 * 0.25)
        assert!((q.geomean_rel_cost.unwrap() - 0.5f64.sqrt()).abs() < 1e-12);
        assert_eq!(q.workloads, 2);
        assert_eq!(q.worst_rel_rss, Some(1.2));
        assert_eq!(summary[1].geomean_rel_cost, Some(1.0));
        // Without mimalloc, the first allocator is the reference.
        let (reference, _) = relate(&mut ws, &[AllocName::Glibc, AllocName::QpwQueue]);
        assert_eq!(reference, "glibc");
        assert_eq!(ws[1].rows[0].rel_cost, Some(1.0 / 8.0));
    }

    #[test]
    fn scale_and_reps_are_checked() {
        assert!(parse_scale("0").unwrap_err().contains("0.001"));
        assert!(parse_scale("nan").is_err());
        assert!(parse_scale("x").unwrap_err().contains("`x`"));
        assert_eq!(parse_scale("2.5"), Ok(2.5));
        assert!(parse_reps("0").unwrap_err().contains("1 to 100"));
    }
}
