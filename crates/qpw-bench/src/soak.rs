//! `qpw-bench soak`: every consumer, in every configuration and mode, under
//! churn, with conservation checks.
//!
//! Rounds run one configuration at a time, round-robin, until `--seconds`
//! pass. In a round, worker threads (more than there are slots, so binding
//! sometimes finds none free) bind a slot, do a random number of random
//! operations on every consumer, go offline now and then, unbind at a random
//! point, and after a few such lives exit, to be replaced by new threads. A
//! drainer meanwhile runs every consumer's drain-all at random intervals.
//! At the end of a round everything is drained and checked:
//!
//! - the per-CPU counter's drained total equals the increments made;
//! - the LRU's shared list holds exactly the (unique) items added;
//! - the stock's usage equals the charges still outstanding, within the limit;
//! - the slab cache's `destroy` finds no leak, and no object was ever seen
//!   with another owner's pattern (objects are handed between threads and
//!   freed remotely);
//! - `remote`, `defer` and `auto`'s isolated slots were never fenced;
//! - no drain failed.
//!
//! Any violation is printed and makes the command exit non-zero.

use qpw::{Config, Domain, Error, Mode, NoQpw, Owner, PerCpu, Rt, SlotMode, Standard};
use qpw_mm::lru::Lru;
use qpw_mm::stock::Stock;
use qpw_mm::KmemCache;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Options of `qpw-bench soak`.
#[derive(clap::Args, Debug, Clone)]
pub struct SoakArgs {
    /// How long to run, in seconds (all configurations, round-robin).
    #[arg(long, default_value_t = 60.0, value_parser = crate::util::parse_seconds)]
    pub seconds: f64,
    /// Length of one round (one configuration), in seconds.
    #[arg(long, default_value_t = 2.0, value_parser = crate::util::parse_seconds)]
    pub round_seconds: f64,
    /// Worker threads alive at once (more than --nr-cpus, so slots run out).
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub threads: u64,
    /// Slots per domain (above the machine's CPUs: unpinned owners).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub nr_cpus: u64,
    /// Random seed (default: from the clock; printed so a run can be repeated).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// Totals of one configuration over all its rounds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConfigTotals {
    /// Configuration and mode.
    pub config: String,
    /// Rounds run.
    pub rounds: u64,
    /// Operations done by owners (counter, lru, stock, slab).
    pub ops: u64,
    /// Drain-alls run (all consumers).
    pub drains: u64,
    /// Signals qpw sent.
    pub fences: u64,
    /// Works run by owners.
    pub works_by_owner: u64,
    /// Works run by other threads.
    pub works_remote: u64,
    /// Owner lives (bind … unbind).
    pub binds: u64,
    /// Binds refused because every slot was owned (expected: more threads than slots).
    pub no_free_slot: u64,
    /// Worker threads started.
    pub threads: u64,
    /// Objects handed to another thread and freed there.
    pub remote_frees: u64,
    /// Violations found.
    pub violations: u64,
}

/// The whole soak.
#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    /// The seed used.
    pub seed: u64,
    /// Wall time, seconds.
    pub seconds: f64,
    /// Per configuration.
    pub configs: Vec<ConfigTotals>,
    /// Every violation, described.
    pub violations: Vec<String>,
}

/// What a worker did, summed when it exits.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    ops: u64,
    increments: u64,
    lru_items: u64,
    lru_sum: u64,
    stock_balance: u64,
    binds: u64,
    no_free_slot: u64,
    remote_frees: u64,
}

impl Tally {
    fn add(&mut self, o: &Tally) {
        self.ops += o.ops;
        self.increments += o.increments;
        self.lru_items += o.lru_items;
        self.lru_sum = self.lru_sum.wrapping_add(o.lru_sum);
        self.stock_balance += o.stock_balance;
        self.binds += o.binds;
        self.no_free_slot += o.no_free_slot;
        self.remote_frees += o.remote_frees;
    }
}

/// xorshift64*: a small, seedable generator, so a failing run can be repeated.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform enough in `0..n` for choosing operations (`n > 0`).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

const OBJ_SIZE: usize = 48;
const STOCK_LIMIT: u64 = 50_000;

/// An object in flight between threads: its address and the pattern written.
type Handoff = Mutex<Vec<(usize, u64)>>;

/// One round's shared state.
struct Round<C: Config> {
    domain: Domain<C>,
    counts: Arc<PerCpu<u64, C>>,
    counted: Arc<AtomicU64>,
    lru: Lru<u64, C>,
    stock: Stock<C>,
    slab: KmemCache<C>,
    handoff: Handoff,
    corrupt: AtomicU64,
    stop: AtomicBool,
}

fn fill(addr: usize, pattern: u64) {
    // SAFETY: `addr` is a live object of OBJ_SIZE bytes this thread holds.
    unsafe { std::ptr::write_bytes(addr as *mut u8, pattern as u8, OBJ_SIZE) };
    // SAFETY: as above; objects are at least 8-byte aligned.
    unsafe { (addr as *mut u64).write(pattern) };
}

fn intact(addr: usize, pattern: u64) -> bool {
    // SAFETY: `addr` is a live object of OBJ_SIZE bytes this thread holds.
    let bytes = unsafe { std::slice::from_raw_parts(addr as *const u8, OBJ_SIZE) };
    // SAFETY: as above.
    let head = unsafe { (addr as *const u64).read() };
    head == pattern && bytes[8..].iter().all(|&b| b == pattern as u8)
}

impl<C: Config> Round<C> {
    fn free(&self, me: &mut Owner<C>, addr: usize, pattern: u64) {
        if !intact(addr, pattern) {
            self.corrupt.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: `addr` came from `self.slab.alloc` and is freed once: it was
        // removed from the one list that held it.
        unsafe {
            self.slab.free(
                me,
                std::ptr::NonNull::new(addr as *mut u8).expect("non-null"),
            )
        };
    }

    /// One owner life: bind, random operations, unbind.
    fn life(&self, rng: &mut Rng, worker: u64, seq: &mut u64, t: &mut Tally) {
        let mut me = match self.domain.bind_any() {
            Ok(me) => me,
            Err(Error::NoFreeSlot { .. }) => {
                t.no_free_slot += 1;
                std::thread::sleep(Duration::from_micros(200));
                return;
            }
            Err(e) => panic!("bind_any: {e}"),
        };
        t.binds += 1;
        let mut mine: Vec<(usize, u64)> = Vec::new();
        let ops = rng.below(20_000) + 1;
        for i in 0..ops {
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            if i % 256 == 255 {
                // Let the other threads (and the drainer) run: drains then
                // find this owner online, off its CPU or inside a section.
                std::thread::yield_now();
            }
            t.ops += 1;
            match rng.below(16) {
                0..=5 => {
                    *self.counts.lock(&mut me) += 1;
                    t.increments += 1;
                }
                6 | 7 => {
                    *seq += 1;
                    let item = (worker << 32) | *seq;
                    self.lru.add(&mut me, item);
                    t.lru_items += 1;
                    t.lru_sum = t.lru_sum.wrapping_add(item);
                }
                8 => {
                    let n = rng.below(100) + 1;
                    if self.stock.charge(&mut me, n).is_ok() {
                        t.stock_balance += n;
                    }
                }
                9 => {
                    let n = rng.below(100).min(t.stock_balance);
                    self.stock
                        .uncharge(&mut me, n)
                        .expect("uncharging what was charged");
                    t.stock_balance -= n;
                }
                10 | 11 => {
                    if let Some(p) = self.slab.alloc(&mut me) {
                        *seq += 1;
                        let pattern = (worker << 32) | *seq;
                        fill(p.as_ptr() as usize, pattern);
                        mine.push((p.as_ptr() as usize, pattern));
                    }
                }
                12 => {
                    if let Some((a, p)) = mine.pop() {
                        self.free(&mut me, a, p);
                    }
                }
                13 => {
                    // Hand an object to whichever thread frees next.
                    if let Some(o) = mine.pop() {
                        self.handoff.lock().expect("handoff").push(o);
                    }
                }
                14 => {
                    let o = self.handoff.lock().expect("handoff").pop();
                    if let Some((a, p)) = o {
                        self.free(&mut me, a, p);
                        t.remote_frees += 1;
                    }
                }
                _ => {
                    // Now and then idle a moment: remote threads may run our
                    // work meanwhile. Rare, so drains mostly find owners online.
                    if rng.below(64) == 0 {
                        me.idle(|| std::thread::sleep(Duration::from_micros(rng.below(100))));
                    }
                }
            }
            me.quiescent();
        }
        for (a, p) in mine.drain(..) {
            self.free(&mut me, a, p);
        }
        // Unbind here: runs the slot's pending work, frees the slot.
    }
}

fn round<C: Config>(
    mode: Mode,
    args: &SoakArgs,
    rng: &mut Rng,
    totals: &mut ConfigTotals,
    violations: &mut Vec<String>,
) -> Result<(), String> {
    let domain: Domain<C> = qpw::Builder::new()
        .mode(mode.clone())
        .nr_cpus(args.nr_cpus as usize)
        .flush_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?;
    let counts = Arc::new(PerCpu::new(&domain, |_| 0u64));
    let counted = Arc::new(AtomicU64::new(0));
    let drain_counts = domain.work_all({
        let (counts, counted) = (counts.clone(), counted.clone());
        move |ctx| {
            let Ok(mut c) = counts.lock_ctx(ctx) else {
                return;
            };
            counted.fetch_add(std::mem::take(&mut *c), Ordering::Relaxed);
        }
    });
    let r = Arc::new(Round {
        lru: Lru::new(&domain),
        stock: Stock::new(&domain, STOCK_LIMIT),
        slab: KmemCache::new(&domain, OBJ_SIZE).map_err(|e| e.to_string())?,
        domain,
        counts,
        counted,
        handoff: Mutex::new(Vec::new()),
        corrupt: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    let deadline = Instant::now() + Duration::from_secs_f64(args.round_seconds);
    let drains = Arc::new(AtomicU64::new(0));
    let drain_errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let drainer = std::thread::spawn({
        let (r, drains, drain_errors) = (r.clone(), drains.clone(), drain_errors.clone());
        let mut rng = Rng::new(rng.next());
        move || {
            while !r.stop.load(Ordering::Relaxed) {
                let res = match rng.below(5) {
                    0 => drain_counts
                        .run()
                        .map_err(|e| format!("counter drain: {e}")),
                    1 => r
                        .lru
                        .lru_add_drain_all()
                        .map_err(|e| format!("lru drain: {e}")),
                    2 => r
                        .stock
                        .drain_all_stock()
                        .map_err(|e| format!("stock drain: {e}")),
                    3 => r
                        .slab
                        .flush_all()
                        .map_err(|e| format!("slab flush_all: {e}")),
                    _ => r
                        .slab
                        .shrink()
                        .map(|_| ())
                        .map_err(|e| format!("slab shrink: {e}")),
                };
                drains.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = res {
                    drain_errors.lock().expect("errors").push(e);
                }
                std::thread::sleep(Duration::from_micros(rng.below(500)));
            }
            drain_counts
        }
    });
    let mut tally = Tally::default();
    let mut workers: Vec<std::thread::JoinHandle<Tally>> = Vec::new();
    let mut next_worker = 0u64;
    while Instant::now() < deadline {
        // Keep `threads` workers alive; each exits after a few lives.
        while workers.len() < args.threads as usize {
            next_worker += 1;
            let (r, id) = (r.clone(), next_worker);
            let mut wrng = Rng::new(rng.next());
            workers.push(std::thread::spawn(move || {
                let mut t = Tally::default();
                let mut seq = 0u64;
                for _ in 0..wrng.below(4) + 1 {
                    if r.stop.load(Ordering::Relaxed) {
                        break;
                    }
                    r.life(&mut wrng, id, &mut seq, &mut t);
                }
                t
            }));
        }
        let mut i = 0;
        while i < workers.len() {
            if workers[i].is_finished() {
                let t = workers
                    .swap_remove(i)
                    .join()
                    .map_err(|_| "a worker panicked")?;
                tally.add(&t);
            } else {
                i += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    r.stop.store(true, Ordering::Relaxed);
    for w in workers {
        tally.add(&w.join().map_err(|_| "a worker panicked")?);
    }
    let drain_counts = drainer.join().map_err(|_| "the drainer panicked")?;
    totals.threads += next_worker;

    // Every owner is gone: the final drains run in this thread.
    let mut v = Vec::new();
    let name = totals.config.clone();
    v.extend(
        drain_errors
            .lock()
            .expect("errors")
            .iter()
            .map(|e| format!("{name}: {e}")),
    );
    drain_counts
        .run()
        .map_err(|e| format!("{name}: final counter drain: {e}"))?;
    r.lru
        .lru_add_drain_all()
        .map_err(|e| format!("{name}: final lru drain: {e}"))?;
    r.stock
        .drain_all_stock()
        .map_err(|e| format!("{name}: final stock drain: {e}"))?;
    let counted = r.counted.load(Ordering::Relaxed);
    if counted != tally.increments {
        v.push(format!(
            "{name}: counter drained {counted}, increments made {}",
            tally.increments
        ));
    }
    let mut items = r.lru.take_shared();
    let (n, sum) = (
        items.len() as u64,
        items.iter().fold(0u64, |a, &x| a.wrapping_add(x)),
    );
    items.sort_unstable();
    items.dedup();
    if n != tally.lru_items || sum != tally.lru_sum || items.len() as u64 != n {
        v.push(format!(
            "{name}: lru holds {n} items ({} distinct), {} were added",
            items.len(),
            tally.lru_items
        ));
    }
    let usage = r.stock.usage();
    if usage != tally.stock_balance || usage > STOCK_LIMIT {
        v.push(format!(
            "{name}: stock usage {usage} after drain, outstanding charges {}, limit {STOCK_LIMIT}",
            tally.stock_balance
        ));
    }
    // Objects still in the hand-off list are freed by this thread.
    {
        let mut me = r
            .domain
            .bind_any()
            .map_err(|e| format!("{name}: final bind: {e}"))?;
        let left: Vec<_> = std::mem::take(&mut *r.handoff.lock().expect("handoff"));
        for (a, p) in left {
            r.free(&mut me, a, p);
        }
    }
    let corrupt = r.corrupt.load(Ordering::Relaxed);
    if corrupt != 0 {
        v.push(format!(
            "{name}: {corrupt} objects lost their pattern (overlap or reuse while live)"
        ));
    }
    let stats: Vec<_> = (0..r.domain.nr_cpus())
        .map(|c| r.domain.stats(c).expect("slot"))
        .collect();
    for (cpu, s) in stats.iter().enumerate() {
        let m = r.domain.slot_mode(cpu).expect("slot");
        if m != SlotMode::Queue && s.fences() != 0 {
            v.push(format!(
                "{name}: {m:?} slot {cpu} was fenced {} times",
                s.fences()
            ));
        }
    }
    let total = r.domain.total_stats();
    let r = Arc::try_unwrap(r).map_err(|_| "round state still shared")?;
    if let Err(e) = r.slab.destroy() {
        v.push(format!("{name}: slab destroy: {e}"));
    }
    totals.rounds += 1;
    totals.ops += tally.ops;
    totals.drains += drains.load(Ordering::Relaxed);
    totals.fences += total.fences();
    totals.works_by_owner += total.works_by_owner();
    totals.works_remote += total.works_remote + total.works_for_absent_owner;
    totals.binds += tally.binds;
    totals.no_free_slot += tally.no_free_slot;
    totals.remote_frees += tally.remote_frees;
    totals.violations += v.len() as u64;
    violations.extend(v);
    Ok(())
}

/// Runs the soak and returns its report.
pub fn run(args: &SoakArgs) -> Result<SoakReport, String> {
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let mut rng = Rng::new(seed);
    type RoundFn =
        fn(Mode, &SoakArgs, &mut Rng, &mut ConfigTotals, &mut Vec<String>) -> Result<(), String>;
    let isolated: Vec<usize> = (0..args.nr_cpus as usize).filter(|c| c % 2 == 1).collect();
    let configs: Vec<(&str, Mode, RoundFn)> = vec![
        ("no-qpw queue", Mode::Queue, round::<NoQpw>),
        ("qpw queue", Mode::Queue, round::<Standard>),
        ("qpw remote", Mode::Remote, round::<Standard>),
        ("qpw defer", Mode::Defer, round::<Standard>),
        ("qpw auto", Mode::Auto(Some(isolated)), round::<Standard>),
        ("rt queue", Mode::Queue, round::<Rt>),
        ("rt remote", Mode::Remote, round::<Rt>),
    ];
    let mut totals: Vec<ConfigTotals> = configs
        .iter()
        .map(|(n, _, _)| ConfigTotals {
            config: n.to_string(),
            ..Default::default()
        })
        .collect();
    let mut violations = Vec::new();
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(args.seconds);
    let mut i = 0;
    while Instant::now() < end || i < configs.len() {
        let (_, mode, f) = &configs[i % configs.len()];
        f(
            mode.clone(),
            args,
            &mut rng,
            &mut totals[i % configs.len()],
            &mut violations,
        )?;
        i += 1;
    }
    Ok(SoakReport {
        seed,
        seconds: start.elapsed().as_secs_f64(),
        configs: totals,
        violations,
    })
}

/// Prints the soak's table (or JSON); an error if any violation was found.
pub fn main(args: &SoakArgs) -> Result<(), String> {
    let rep = run(args)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&rep).map_err(|e| e.to_string())?
        );
    } else {
        println!(
            "soak: {:.0} s, seed {}, {} workers on {} slots per domain",
            rep.seconds, rep.seed, args.threads, args.nr_cpus
        );
        println!();
        println!("| config | rounds | ops | drains | fences | works by owner | works remote | binds | no free slot | threads | remote frees | violations |");
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for c in &rep.configs {
            println!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                c.config,
                c.rounds,
                c.ops,
                c.drains,
                c.fences,
                c.works_by_owner,
                c.works_remote,
                c.binds,
                c.no_free_slot,
                c.threads,
                c.remote_frees,
                c.violations
            );
        }
        for v in &rep.violations {
            println!("VIOLATION: {v}");
        }
    }
    if rep.violations.is_empty() {
        Ok(())
    } else {
        Err(format!("{} violations", rep.violations.len()))
    }
}
