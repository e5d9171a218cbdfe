//! `qpw-bench kmalloc`: the seed's `kmalloc_bench` module, in userspace.
//!
//! The kernel module allocates `iterations` objects of `size` bytes with
//! `kmalloc(size, GFP_ATOMIC)` into a preallocated pointer array, times only
//! that loop with `get_cycles()`, and frees everything. Here the same loop
//! runs against every configuration of the seed's table, side by side in one
//! process, each a [`Kmalloc`] instance on its own qpw domain with the bench
//! thread bound (pinned to the last CPU when possible), plus the bulk
//! interface and three other allocators called through their `GlobalAlloc`
//! implementations. The free loop is timed too. Cycles are TSC ticks.
//!
//! Repetitions are interleaved (every row's repetition 1, then every row's
//! repetition 2, ...), so a noisy moment hits all rows alike. The first
//! repetition of each row is *cold* (fresh slabs, first page faults) and is
//! reported apart; the median and minimum are over the warm ones.

use crate::tsc;
use crossbeam_utils::CachePadded;
use qpw::{Config, Domain, Mode, NoQpw, Owner, Rt, RtNoQpw, Standard};
use qpw_mm::Kmalloc;
use serde::Serialize;
use std::alloc::{GlobalAlloc, Layout};
use std::hint::black_box;
use std::sync::atomic::{AtomicU32, Ordering};

/// The kernel's figures from the seed thread: kmalloc(64) cycles with
/// `qpw=0` and `qpw=1`.
pub const KERNEL_QPW0: f64 = 170.0;
/// See [`KERNEL_QPW0`].
pub const KERNEL_QPW1: f64 = 190.0;

/// Objects per bulk call in the bulk rows.
pub const BULK: usize = 16;

fn parse_size(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if (1..=1 << 20).contains(&n) => Ok(n),
        Ok(n) => Err(format!(
            "--size {n} is out of range: use 1 to 1048576 bytes"
        )),
        Err(_) => Err(format!("--size `{s}` is not a number of bytes")),
    }
}

fn parse_iterations(s: &str) -> Result<usize, String> {
    match s.trim().replace('_', "").parse::<usize>() {
        Ok(n) if (BULK..=50_000_000).contains(&n) => Ok(n),
        Ok(n) => Err(format!(
            "--iterations {n} is out of range: use {BULK} to 50000000"
        )),
        Err(_) => Err(format!("--iterations `{s}` is not a number")),
    }
}

fn parse_reps(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if (2..=100).contains(&n) => Ok(n),
        Ok(n) => Err(format!(
            "--reps {n} is out of range: use 2 to 100 (the first repetition is the cold one)"
        )),
        Err(_) => Err(format!("--reps `{s}` is not a number")),
    }
}

/// Options of `qpw-bench kmalloc`.
#[derive(clap::Args, Debug, Clone)]
pub struct KmallocArgs {
    /// Bytes per allocation (the module's `size`).
    #[arg(long, default_value_t = 64, value_parser = parse_size)]
    pub size: usize,
    /// Allocations per repetition (the module's `iterations`).
    #[arg(long, default_value_t = 1_000_000, value_parser = parse_iterations)]
    pub iterations: usize,
    /// Repetitions per configuration; the first (cold) one is reported apart.
    #[arg(long, default_value_t = 5, value_parser = parse_reps)]
    pub reps: usize,
    /// Print the report as JSON instead of a Markdown table.
    #[arg(long)]
    pub json: bool,
}

impl Default for KmallocArgs {
    fn default() -> Self {
        Self {
            size: 64,
            iterations: 1_000_000,
            reps: 5,
            json: false,
        }
    }
}

/// One configuration's figures (cycles per operation).
#[derive(Debug, Clone, Serialize)]
pub struct KmallocRow {
    /// The configuration, as the seed's table names it (`qpw=0`, ...).
    pub config: String,
    /// Median over the warm repetitions of cycles per allocation.
    pub alloc_cycles: f64,
    /// Minimum over the warm repetitions of cycles per allocation.
    pub alloc_min_cycles: f64,
    /// Median over the warm repetitions of cycles per free.
    pub free_cycles: f64,
    /// Minimum over the warm repetitions of cycles per free.
    pub free_min_cycles: f64,
    /// Cycles per allocation in the first (cold) repetition.
    pub cold_alloc_cycles: f64,
    /// Cycles per free in the first (cold) repetition.
    pub cold_free_cycles: f64,
    /// `qpw` for this crate's rows, `peer` for other allocators.
    pub kind: &'static str,
}

/// How the benchmark's goals stand in this run (reported, never asserted).
#[derive(Debug, Clone, Serialize)]
pub struct KmallocGoals {
    /// `qpw=0` alloc cycles at or below mimalloc's.
    pub qpw0_at_or_below_mimalloc: bool,
    /// `qpw=1` minus `qpw=0` alloc cycles.
    pub qpw1_minus_qpw0_cycles: f64,
    /// That difference is at most one bare lock+unlock pair.
    pub qpw1_within_one_lock_pair: bool,
    /// `qpw=1 bulk16` / `qpw=0 bulk16` alloc cycles.
    pub bulk_ratio: f64,
    /// `bulk_ratio` at most 1.10.
    pub bulk_within_10_percent: bool,
    /// `no-qpw` against `qpw=0` alloc cycles, in percent (positive: no-qpw slower).
    pub no_qpw_vs_qpw0_percent: f64,
    /// Within 3 %.
    pub no_qpw_within_3_percent: bool,
    /// `qpw=1` / `qpw=0` alloc cycles here.
    pub ratio_qpw1_qpw0: f64,
    /// The kernel's 190 / 170.
    pub kernel_ratio_qpw1_qpw0: f64,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct KmallocReport {
    /// Bytes per allocation.
    pub size: usize,
    /// Allocations per repetition.
    pub iterations: usize,
    /// Repetitions per row (the first is cold).
    pub reps: usize,
    /// Cycles of one uncontended lock+unlock pair (compare-exchange Acquire,
    /// store Release, on a cache-padded `AtomicU32`), measured in this run.
    pub lock_pair_cycles: f64,
    /// The CPU the bench thread was pinned to, if pinning worked.
    pub cpu: Option<usize>,
    /// TSC ticks per second.
    pub tsc_hz: f64,
    /// One row per configuration, in the seed table's order, then peers.
    pub rows: Vec<KmallocRow>,
    /// The goals.
    pub goals: KmallocGoals,
}

/// One benchmarked allocator.
trait Row {
    fn name(&self) -> &'static str;
    fn kind(&self) -> &'static str {
        "qpw"
    }
    /// Fills `ptrs`; returns the TSC ticks of the loop alone.
    fn alloc(&mut self, ptrs: &mut [*mut u8], size: usize) -> u64;
    /// Frees `ptrs`; returns the TSC ticks of the loop alone.
    fn free(&mut self, ptrs: &[*mut u8], size: usize) -> u64;
}

/// A `Kmalloc` instance with the bench thread's owner of its domain.
struct QpwRow<C: Config> {
    name: &'static str,
    // Field order: the owner goes before the instance.
    owner: Owner<C>,
    km: Kmalloc<C>,
    bulk: bool,
}

impl<C: Config> QpwRow<C> {
    fn new(name: &'static str, mode: Mode, cpu: Option<usize>, bulk: bool) -> Result<Self, String> {
        let domain = qpw::Builder::<C>::new()
            .mode(mode)
            .build()
            .map_err(|e| format!("{name}: {e}"))?;
        let km = Kmalloc::new(&domain).map_err(|e| format!("{name}: {e}"))?;
        let owner = match cpu {
            Some(c) => domain.bind(c).or_else(|_| domain.bind_any()),
            None => domain.bind_any(),
        }
        .map_err(|e| format!("{name}: binding the bench thread: {e}"))?;
        Ok(Self {
            name,
            owner,
            km,
            bulk,
        })
    }
}

impl<C: Config> Row for QpwRow<C> {
    fn name(&self) -> &'static str {
        self.name
    }

    #[inline(never)]
    fn alloc(&mut self, ptrs: &mut [*mut u8], size: usize) -> u64 {
        let (km, owner) = (&self.km, &mut self.owner);
        let t0 = tsc::now();
        if self.bulk {
            for chunk in ptrs.chunks_mut(BULK) {
                km.kmalloc_bulk(owner, size, chunk);
            }
        } else {
            for p in ptrs.iter_mut() {
                *p = km
                    .kmalloc(owner, size)
                    .map_or(std::ptr::null_mut(), |p| p.as_ptr());
            }
        }
        tsc::now() - t0
    }

    #[inline(never)]
    fn free(&mut self, ptrs: &[*mut u8], _size: usize) -> u64 {
        let (km, owner) = (&self.km, &mut self.owner);
        let t0 = tsc::now();
        if self.bulk {
            for chunk in ptrs.chunks(BULK) {
                // SAFETY: every pointer came from this instance's alloc loop
                // (checked non-null) and is freed once.
                unsafe { km.kfree_bulk(owner, chunk) };
            }
        } else {
            for &p in ptrs {
                // SAFETY: as above.
                unsafe { km.kfree(owner, p) };
            }
        }
        tsc::now() - t0
    }
}

/// glibc's malloc.
struct Glibc;

impl Row for Glibc {
    fn name(&self) -> &'static str {
        "glibc"
    }
    fn kind(&self) -> &'static str {
        "peer"
    }
    #[inline(never)]
    fn alloc(&mut self, ptrs: &mut [*mut u8], size: usize) -> u64 {
        let t0 = tsc::now();
        for p in ptrs.iter_mut() {
            // SAFETY: malloc has no preconditions.
            *p = unsafe { libc::malloc(size) }.cast();
        }
        tsc::now() - t0
    }
    #[inline(never)]
    fn free(&mut self, ptrs: &[*mut u8], _size: usize) -> u64 {
        let t0 = tsc::now();
        for &p in ptrs {
            // SAFETY: from malloc, freed once.
            unsafe { libc::free(p.cast()) };
        }
        tsc::now() - t0
    }
}

/// An allocator called through its `GlobalAlloc` implementation (not
/// installed as the global allocator).
struct Peer<A: GlobalAlloc> {
    name: &'static str,
    a: A,
}

impl<A: GlobalAlloc> Row for Peer<A> {
    fn name(&self) -> &'static str {
        self.name
    }
    fn kind(&self) -> &'static str {
        "peer"
    }
    #[inline(never)]
    fn alloc(&mut self, ptrs: &mut [*mut u8], size: usize) -> u64 {
        let Ok(l) = Layout::from_size_align(size, 8) else {
            return 0;
        };
        let t0 = tsc::now();
        for p in ptrs.iter_mut() {
            // SAFETY: a valid, non-zero-size layout.
            *p = unsafe { self.a.alloc(l) };
        }
        tsc::now() - t0
    }
    #[inline(never)]
    fn free(&mut self, ptrs: &[*mut u8], size: usize) -> u64 {
        let Ok(l) = Layout::from_size_align(size, 8) else {
            return 0;
        };
        let t0 = tsc::now();
        for &p in ptrs {
            // SAFETY: allocated by this allocator with this layout, freed once.
            unsafe { self.a.dealloc(p, l) };
        }
        tsc::now() - t0
    }
}

/// Cycles per uncontended lock+unlock pair: the cost `qpw=1` adds to the
/// owner's fast path (median of 5 runs of `n` pairs).
pub fn lock_pair_cycles(n: usize) -> f64 {
    let lock = CachePadded::new(AtomicU32::new(0));
    let mut runs = Vec::new();
    for _ in 0..5 {
        let l = black_box(&lock);
        let t0 = tsc::now();
        for _ in 0..n {
            while l
                .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
            {
                std::hint::spin_loop();
            }
            l.store(0, Ordering::Release);
        }
        runs.push((tsc::now() - t0) as f64 / n as f64);
    }
    median(&mut runs)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The last CPU this process may run on (from a throwaway domain's view).
fn last_cpu() -> Option<usize> {
    let d: Domain<NoQpw> = qpw::Builder::new()
        .mode(Mode::Queue)
        .nr_cpus(1)
        .build()
        .ok()?;
    qpw::parse_cpu_list(&d.allowed_cpus()).ok()?.last().copied()
}

/// Runs the benchmark and returns its figures.
pub fn run(a: &KmallocArgs) -> Result<KmallocReport, String> {
    parse_size(&a.size.to_string())?;
    parse_iterations(&a.iterations.to_string())?;
    parse_reps(&a.reps.to_string())?;
    let size = black_box(a.size);
    let n = a.iterations;
    let cpu = last_cpu();
    let hz = tsc::hz();

    let mut rows: Vec<Box<dyn Row>> = vec![
        Box::new(QpwRow::<NoQpw>::new("no-qpw", Mode::Queue, cpu, false)?),
        Box::new(QpwRow::<Standard>::new("qpw=0", Mode::Queue, cpu, false)?),
        Box::new(QpwRow::<Standard>::new("qpw=1", Mode::Remote, cpu, false)?),
        Box::new(QpwRow::<RtNoQpw>::new(
            "rt no-qpw",
            Mode::Queue,
            cpu,
            false,
        )?),
        Box::new(QpwRow::<Rt>::new("rt qpw=0", Mode::Queue, cpu, false)?),
        Box::new(QpwRow::<Rt>::new("rt qpw=1", Mode::Remote, cpu, false)?),
        Box::new(QpwRow::<Standard>::new("defer", Mode::Defer, cpu, false)?),
        Box::new(QpwRow::<Standard>::new(
            "qpw=0 bulk16",
            Mode::Queue,
            cpu,
            true,
        )?),
        Box::new(QpwRow::<Standard>::new(
            "qpw=1 bulk16",
            Mode::Remote,
            cpu,
            true,
        )?),
        Box::new(Glibc),
        Box::new(Peer {
            name: "mimalloc",
            a: mimalloc::MiMalloc,
        }),
        Box::new(Peer {
            name: "jemalloc",
            a: tikv_jemallocator::Jemalloc,
        }),
    ];
    let pinned = cpu.filter(|&c| {
        // The first qpw row's bind pinned the thread; check it held.
        // SAFETY: sched_getcpu has no preconditions.
        let now = unsafe { libc::sched_getcpu() };
        now == c as i32
    });

    // The pointer array: allocated and touched before any timing.
    let mut ptrs: Vec<*mut u8> = vec![std::ptr::null_mut(); n];
    for (i, p) in ptrs.iter_mut().enumerate() {
        *p = black_box(i as *mut u8);
    }
    let mut alloc = vec![Vec::with_capacity(a.reps); rows.len()];
    let mut free = vec![Vec::with_capacity(a.reps); rows.len()];
    let lock_pair = lock_pair_cycles(n);
    let mut result = Ok(());
    'reps: for _ in 0..a.reps {
        for (i, row) in rows.iter_mut().enumerate() {
            let ta = row.alloc(&mut ptrs, size);
            if ptrs.iter().any(|p| p.is_null()) {
                result = Err(format!(
                    "{}: an allocation failed (out of memory?)",
                    row.name()
                ));
                // Free what was allocated before leaving.
                let got: Vec<*mut u8> = ptrs.iter().copied().filter(|p| !p.is_null()).collect();
                row.free(&got, size);
                break 'reps;
            }
            let tf = row.free(&ptrs, size);
            alloc[i].push(ta as f64 / n as f64);
            free[i].push(tf as f64 / n as f64);
        }
    }
    let names: Vec<(&'static str, &'static str)> =
        rows.iter().map(|r| (r.name(), r.kind())).collect();
    // Drop the rows last-bound first, so each owner restores the affinity
    // the thread had before its bind, and the thread ends unpinned.
    while let Some(r) = rows.pop() {
        drop(r);
    }
    result?;

    let rows: Vec<KmallocRow> = names
        .iter()
        .enumerate()
        .map(|(i, &(name, kind))| {
            let (mut wa, mut wf) = (alloc[i][1..].to_vec(), free[i][1..].to_vec());
            KmallocRow {
                config: name.to_string(),
                alloc_cycles: median(&mut wa),
                alloc_min_cycles: wa.first().copied().unwrap_or(f64::NAN),
                free_cycles: median(&mut wf),
                free_min_cycles: wf.first().copied().unwrap_or(f64::NAN),
                cold_alloc_cycles: alloc[i][0],
                cold_free_cycles: free[i][0],
                kind,
            }
        })
        .collect();
    let get = |name: &str| {
        rows.iter()
            .find(|r| r.config == name)
            .map_or(f64::NAN, |r| r.alloc_cycles)
    };
    let (q0, q1, nq, mi) = (get("qpw=0"), get("qpw=1"), get("no-qpw"), get("mimalloc"));
    let (b0, b1) = (get("qpw=0 bulk16"), get("qpw=1 bulk16"));
    let no_qpw_pct = (nq - q0) / q0 * 100.0;
    let goals = KmallocGoals {
        qpw0_at_or_below_mimalloc: q0 <= mi,
        qpw1_minus_qpw0_cycles: q1 - q0,
        qpw1_within_one_lock_pair: q1 - q0 <= lock_pair,
        bulk_ratio: b1 / b0,
        bulk_within_10_percent: b1 / b0 <= 1.10,
        no_qpw_vs_qpw0_percent: no_qpw_pct,
        no_qpw_within_3_percent: no_qpw_pct.abs() <= 3.0,
        ratio_qpw1_qpw0: q1 / q0,
        kernel_ratio_qpw1_qpw0: KERNEL_QPW1 / KERNEL_QPW0,
    };
    Ok(KmallocReport {
        size: a.size,
        iterations: n,
        reps: a.reps,
        lock_pair_cycles: lock_pair,
        cpu: pinned,
        tsc_hz: hz,
        rows,
        goals,
    })
}

fn yes(b: bool) -> &'static str {
    if b {
        "met"
    } else {
        "not met"
    }
}

/// The report as Markdown: the table, the lock pair beside it, the ratio
/// against the kernel's, and how each goal stands.
pub fn markdown(r: &KmallocReport) -> String {
    let mut s = format!(
        "kmalloc({}) x {}, {} repetitions (first one cold), cycles = TSC ticks ({:.2} GHz), bench thread {}.\n\n",
        r.size,
        r.iterations,
        r.reps,
        r.tsc_hz / 1e9,
        r.cpu.map_or("unpinned".to_string(), |c| format!("pinned to CPU {c}"))
    );
    s.push_str(
        "| config | alloc (median) | alloc (min) | free (median) | free (min) | cold alloc | cold free |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
    );
    for row in &r.rows {
        s.push_str(&format!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |\n",
            row.config,
            row.alloc_cycles,
            row.alloc_min_cycles,
            row.free_cycles,
            row.free_min_cycles,
            row.cold_alloc_cycles,
            row.cold_free_cycles
        ));
    }
    let g = &r.goals;
    let q0 = r
        .rows
        .iter()
        .find(|x| x.config == "qpw=0")
        .map_or(f64::NAN, |x| x.alloc_cycles);
    let q1 = r
        .rows
        .iter()
        .find(|x| x.config == "qpw=1")
        .map_or(f64::NAN, |x| x.alloc_cycles);
    s.push_str(&format!(
        "\nBare uncontended lock+unlock pair (compare-exchange Acquire + store Release, cache-padded \
         AtomicU32): **{:.1} cycles**.\n\n",
        r.lock_pair_cycles
    ));
    s.push_str(&format!(
        "qpw=1 / qpw=0 = {q1:.1} / {q0:.1} = **{:.2}** (kernel: {KERNEL_QPW1:.0} / {KERNEL_QPW0:.0} = {:.2}). \
         The difference, {:.1} cycles, is the slot lock `qpw=1` takes ({:.1} cycles bare): the kernel \
         adds about the same absolute cost (+{:.0}) to a fast path of {KERNEL_QPW0:.0} cycles, ours adds \
         it to one of {q0:.1}, so the ratio is larger.\n\n",
        g.ratio_qpw1_qpw0,
        g.kernel_ratio_qpw1_qpw0,
        g.qpw1_minus_qpw0_cycles,
        r.lock_pair_cycles,
        KERNEL_QPW1 - KERNEL_QPW0
    ));
    s.push_str("Goals (reported, not asserted):\n\n");
    s.push_str(&format!(
        "- qpw=0 at or below mimalloc's alloc cycles: {} ({q0:.1} vs {:.1})\n",
        yes(g.qpw0_at_or_below_mimalloc),
        r.rows
            .iter()
            .find(|x| x.config == "mimalloc")
            .map_or(f64::NAN, |x| x.alloc_cycles)
    ));
    s.push_str(&format!(
        "- qpw=1 at most one lock pair above qpw=0: {} (+{:.1} vs {:.1})\n",
        yes(g.qpw1_within_one_lock_pair),
        g.qpw1_minus_qpw0_cycles,
        r.lock_pair_cycles
    ));
    s.push_str(&format!(
        "- qpw=1 bulk16 within 1.10x of qpw=0 bulk16: {} ({:.3}x)\n",
        yes(g.bulk_within_10_percent),
        g.bulk_ratio
    ));
    s.push_str(&format!(
        "- no-qpw and qpw=0 within 3%: {} ({:+.1}%)\n",
        yes(g.no_qpw_within_3_percent),
        g.no_qpw_vs_qpw0_percent
    ));
    s
}

/// Runs `qpw-bench kmalloc`: the table (or `--json`) on stdout.
pub fn main(a: &KmallocArgs) -> Result<(), String> {
    let r = run(a)?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&r).map_err(|e| format!("JSON: {e}"))?
        );
    } else {
        print!("{}", markdown(&r));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_options_are_refused_with_the_option_named() {
        assert!(parse_size("0").unwrap_err().contains("--size 0"));
        assert!(parse_size("x").unwrap_err().contains("--size `x`"));
        assert!(parse_iterations("3")
            .unwrap_err()
            .contains("--iterations 3"));
        assert!(parse_reps("1").unwrap_err().contains("cold"));
        assert_eq!(parse_iterations("1_000_000").unwrap(), 1_000_000);
    }

    #[test]
    fn a_short_run_fills_every_row() {
        let r = run(&KmallocArgs {
            size: 64,
            iterations: 4096,
            reps: 2,
            json: false,
        })
        .unwrap();
        let names: Vec<_> = r.rows.iter().map(|x| x.config.as_str()).collect();
        assert_eq!(
            names,
            [
                "no-qpw",
                "qpw=0",
                "qpw=1",
                "rt no-qpw",
                "rt qpw=0",
                "rt qpw=1",
                "defer",
                "qpw=0 bulk16",
                "qpw=1 bulk16",
                "glibc",
                "mimalloc",
                "jemalloc"
            ]
        );
        for row in &r.rows {
            assert!(row.alloc_cycles > 0.0 && row.free_cycles > 0.0, "{row:?}");
        }
        assert!(r.lock_pair_cycles > 0.0);
        let md = markdown(&r);
        assert!(
            md.contains("| qpw=1 bulk16 |") && md.contains("kernel: 190 / 170"),
            "{md}"
        );
        let json = serde_json::to_value(&r).unwrap();
        for key in ["size", "iterations", "lock_pair_cycles", "rows"] {
            assert!(json.get(key).is_some(), "{key}");
        }
        for key in ["config", "alloc_cycles", "free_cycles", "cold_alloc_cycles"] {
            assert!(json["rows"][0].get(key).is_some(), "{key}");
        }
    }
}
