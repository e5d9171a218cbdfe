//! `qpw-bench alloc-worker` (hidden): one workload under one allocator, in
//! a process of its own, started by `qpw-bench alloc`.
//!
//! The worker places its threads (see [`Placement`]), starts the idle
//! thread on the second CPU when the workload runs on the first only, reads
//! both CPUs' interrupt counts and its minor faults, runs the workload,
//! reads them again and its peak RSS, and prints one JSON line
//! ([`WorkerResult`]).

use super::dispatch::{self, AllocName};
use super::irq::{self, Irqs};
use super::workloads::{Kind, Params, Placement, Workload};
use crate::util;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};

/// Options of `qpw-bench alloc-worker`.
#[derive(clap::Args, Debug, Clone)]
pub struct WorkerArgs {
    /// The workload (or `idle`, the baseline); not with `--forks`.
    #[arg(long, value_parser = Workload::parse, required_unless_present = "forks", conflicts_with = "forks")]
    pub workload: Option<Workload>,
    /// The allocator; must match the process's `QPW_BENCH_ALLOCATOR`.
    #[arg(long, value_enum)]
    pub allocator: AllocName,
    /// Seconds of a throughput workload.
    #[arg(long, value_parser = util::parse_seconds)]
    pub seconds: f64,
    /// Multiplier of a program workload's work.
    #[arg(long, value_parser = super::parse_scale)]
    pub scale: f64,
    /// Seed of the workload's random choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Run the fork storm of this many forks instead of a workload.
    #[arg(long, value_parser = super::fork::parse_forks)]
    pub forks: Option<usize>,
    /// Fork storm: seconds a child may run before it counts as hung.
    #[arg(long, default_value_t = super::fork::DEFAULT_CHILD_LIMIT_S, value_parser = util::parse_seconds)]
    pub fork_child_limit: f64,
    /// Fork storm: print gdb's backtrace of every hung child to stderr.
    #[arg(long)]
    pub fork_backtrace: bool,
}

/// What a worker prints: one JSON line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerResult {
    /// The workload's name.
    pub workload: String,
    /// The allocator's name.
    pub allocator: String,
    /// The first CPU (the workload's) and the second (idle, or the
    /// workload's too when spread), if there is one.
    pub cpus: (usize, Option<usize>),
    /// Whether the workload's threads had the first CPU only.
    pub on_first_cpu_only: bool,
    /// Operations (or work units) done.
    pub ops: u64,
    /// The workload's check figure.
    pub check: u64,
    /// Seconds of the measured part.
    pub elapsed_s: f64,
    /// CPU seconds (user + system) of the workload's threads during the
    /// run: the process's, less the idle thread's.
    pub cpu_s: f64,
    /// Minor page faults of the process during the run.
    pub minflt: u64,
    /// Peak RSS of the process (`VmHWM`), KiB.
    pub peak_rss_kib: u64,
    /// Interrupts on the first CPU during the run.
    pub first_cpu_irqs: Option<Irqs>,
    /// Interrupts on the second CPU during the run.
    pub second_cpu_irqs: Option<Irqs>,
}

static SPIN_STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn spin(_: *mut libc::c_void) -> *mut libc::c_void {
    while !SPIN_STOP.load(Ordering::Relaxed) {
        std::hint::spin_loop();
    }
    std::ptr::null_mut()
}

/// A thread pinned to `cpu` that spins and never allocates: a raw pthread,
/// so not even Rust's thread start-up allocates on it.
struct Spinner(libc::pthread_t);

impl Spinner {
    fn start(cpu: usize) -> Result<Spinner, String> {
        if cpu >= 8 * std::mem::size_of::<libc::cpu_set_t>() {
            return Err(format!("CPU {cpu} is beyond the affinity mask's size"));
        }
        // SAFETY: cpu_set_t and pthread_attr_t are plain data; all-zero is a
        // valid empty set, and the attribute is initialised by
        // pthread_attr_init before any other use.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: `cpu` is within the set (checked above).
        unsafe { libc::CPU_SET(cpu, &mut set) };
        // SAFETY: as above.
        let mut attr: libc::pthread_attr_t = unsafe { std::mem::zeroed() };
        // SAFETY: `attr` is live and writable; it is destroyed below on every
        // path after a successful init; `spin` has the start routine's ABI
        // and touches only a static.
        let rc = unsafe {
            if libc::pthread_attr_init(&mut attr) != 0 {
                return Err("pthread_attr_init failed".to_string());
            }
            let mut rc = libc::pthread_attr_setaffinity_np(
                &mut attr,
                std::mem::size_of::<libc::cpu_set_t>(),
                &set,
            );
            let mut tid: libc::pthread_t = 0;
            if rc == 0 {
                rc = libc::pthread_create(&mut tid, &attr, spin, std::ptr::null_mut());
            }
            libc::pthread_attr_destroy(&mut attr);
            if rc == 0 {
                return Ok(Spinner(tid));
            }
            rc
        };
        Err(format!(
            "cannot start the idle thread on CPU {cpu}: {}",
            std::io::Error::from_raw_os_error(rc)
        ))
    }

    /// CPU seconds the spinner has used.
    fn cpu_s(&self) -> f64 {
        let mut clk: libc::clockid_t = 0;
        // SAFETY: a live thread of this process; `clk` is writable.
        if unsafe { libc::pthread_getcpuclockid(self.0, &mut clk) } != 0 {
            return 0.0;
        }
        // SAFETY: plain data, filled by clock_gettime.
        let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
        // SAFETY: `ts` is live and writable.
        if unsafe { libc::clock_gettime(clk, &mut ts) } != 0 {
            return 0.0;
        }
        ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
    }

    fn stop(self) {
        SPIN_STOP.store(true, Ordering::Relaxed);
        // SAFETY: a thread this process created and has not joined; it
        // returns as soon as it sees the flag.
        unsafe { libc::pthread_join(self.0, std::ptr::null_mut()) };
    }
}

/// Restricts the calling thread (and the threads it starts) to `cpus`.
pub(super) fn set_affinity(cpus: &[usize]) -> Result<(), String> {
    // SAFETY: plain data, all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        if c >= 8 * std::mem::size_of::<libc::cpu_set_t>() {
            return Err(format!("CPU {c} is beyond the affinity mask's size"));
        }
        // SAFETY: in bounds (checked above).
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: `set` is a live cpu_set_t of the size passed; 0 is this thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(format!(
            "cannot restrict the workload to CPUs {cpus:?}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// The process's peak RSS in KiB (`VmHWM` of `/proc/self/status`: the high
/// water mark of this process's own address space, which `exec` resets;
/// `ru_maxrss` would not do: it keeps the parent's peak across a
/// `vfork`+`exec`).
fn peak_rss_kib() -> Result<u64, String> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("reading /proc/self/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| "no VmHWM in /proc/self/status".to_string())
}

/// The process's (minor faults, CPU seconds) so far.
fn usage() -> (u64, f64) {
    // SAFETY: rusage is plain data; getrusage fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is live and writable.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return (0, 0.0);
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    (ru.ru_minflt as u64, secs(ru.ru_utime) + secs(ru.ru_stime))
}

/// Runs `qpw-bench alloc-worker`.
pub fn main(a: &WorkerArgs) -> Result<(), String> {
    match dispatch::active()? {
        Some(x) if x == a.allocator => {}
        other => {
            return Err(format!(
                "alloc-worker runs under the allocator its parent chose: {}={} is needed, this process has {}",
                dispatch::ENV,
                a.allocator.name(),
                other.map_or("none (glibc by default)", AllocName::name)
            ))
        }
    }
    let cpus = util::allowed_cpus();
    let first = cpus[0];
    let second = cpus.get(1).copied();
    let workload = match (a.workload, a.forks) {
        (_, Some(forks)) => return fork_storm(a, forks, &cpus[..cpus.len().min(2)]),
        (Some(w), None) => w,
        (None, None) => return Err("alloc-worker needs --workload or --forks".to_string()),
    };
    let placement = workload.placement();
    let mut spinner = None;
    match (placement, second) {
        (Placement::Cpu0, s) => {
            set_affinity(&[first])?;
            if let Some(s) = s {
                spinner = Some(Spinner::start(s)?);
            }
        }
        (Placement::Spread, Some(s)) => set_affinity(&[first, s])?,
        (Placement::Spread, None) => set_affinity(&[first])?,
    }
    let params = Params {
        seconds: a.seconds,
        scale: a.scale,
        seed: a.seed,
    };
    let irq0 = (irq::read(first), second.and_then(irq::read));
    let spin0 = spinner.as_ref().map_or(0.0, Spinner::cpu_s);
    let (flt0, cpu0) = usage();
    let out = workload.run(&params);
    let (flt1, cpu1) = usage();
    let spin1 = spinner.as_ref().map_or(0.0, Spinner::cpu_s);
    let irq1 = (irq::read(first), second.and_then(irq::read));
    if let Some(s) = spinner {
        s.stop();
    }
    if dispatch::qpw_ready() == Some(false) {
        return Err(format!(
            "{}: QpwAlloc never built its per-CPU instance: the figures would be its shared path's",
            a.allocator.name()
        ));
    }
    if workload.kind() == Kind::Throughput && out.ops == 0 {
        return Err(format!(
            "{}: no operation finished in {} s",
            workload.name(),
            a.seconds
        ));
    }
    let peak_rss_kib = peak_rss_kib()?;
    let diff = |x: Option<Irqs>, y: Option<Irqs>| Some(y?.since(x?));
    let r = WorkerResult {
        workload: workload.name().to_string(),
        allocator: a.allocator.name().to_string(),
        cpus: (first, second),
        on_first_cpu_only: placement == Placement::Cpu0 || second.is_none(),
        ops: out.ops,
        check: out.check,
        elapsed_s: out.elapsed.as_secs_f64(),
        cpu_s: ((cpu1 - cpu0) - (spin1 - spin0)).max(0.0),
        minflt: flt1.saturating_sub(flt0),
        peak_rss_kib,
        first_cpu_irqs: diff(irq0.0, irq1.0),
        second_cpu_irqs: diff(irq0.1, irq1.1),
    };
    let line = serde_json::to_string(&r).map_err(|e| format!("worker result: {e}"))?;
    println!("{line}");
    Ok(())
}

/// The fork storm on the first two CPUs (see [`super::fork`]); prints its
/// result as one JSON line.
fn fork_storm(a: &WorkerArgs, forks: usize, cpus: &[usize]) -> Result<(), String> {
    set_affinity(cpus)?;
    let r = super::fork::storm(
        a.allocator,
        &super::fork::StormArgs {
            forks,
            child_limit: std::time::Duration::from_secs_f64(a.fork_child_limit),
            backtrace: a.fork_backtrace,
        },
    )?;
    if dispatch::qpw_ready() == Some(false) {
        return Err(format!(
            "{}: QpwAlloc never built its per-CPU instance: the storm ran on its shared path",
            a.allocator.name()
        ));
    }
    let line = serde_json::to_string(&r).map_err(|e| format!("fork storm result: {e}"))?;
    println!("{line}");
    Ok(())
}
