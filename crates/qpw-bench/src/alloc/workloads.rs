//! The allocator workloads, written here after the kinds that allocator
//! papers and public suites use (none of their code).
//!
//! Two kinds: *throughput* workloads run for a fixed time and count
//! operations (so a slow allocator cannot stretch the run); *program*
//! workloads do a fixed amount of work and are timed. Each runs in its own
//! process (see `worker.rs`), so nothing one leaves behind reaches another.
//! Threads run on the CPUs the worker gave the process (see [`Placement`]).
//! Every random choice comes from a seeded `fastrand::Rng`: the same work
//! under every allocator.

use rayon::prelude::*;
use serde_json::{json, Value};
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A workload, as the command line names it.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Larson's server simulation: objects freed by other threads.
    Larson,
    /// A producer's objects freed by a consumer, through a channel.
    ProdCons,
    /// Random sizes 8 B to 16 KB, allocated by one thread, freed by another.
    Xsizes,
    /// A random malloc/free loop in each thread, nothing shared.
    RandomLoop,
    /// cache-scratch: false sharing between objects of two threads.
    Scratch,
    /// mstress-like: trees of random-size nodes built and torn down across threads.
    Tree,
    /// Mid-size buffers: 16 KiB and 64 KiB `Vec<u8>`s, two threads.
    Midsize,
    /// Thread churn: many short threads that allocate a little.
    Churn,
    /// A parallel serde JSON program on rayon.
    Json,
    /// A single-threaded program of small objects (Strings, BTreeMap nodes).
    Small,
    /// The baseline: nothing allocates; only the worker's idle CPU is watched.
    #[value(skip)]
    Idle,
}

/// Fixed time or fixed work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Runs for `seconds`, counts operations; cost is time per operation.
    Throughput,
    /// Fixed work; cost is its time.
    Program,
}

/// Where a workload's threads run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    /// Every workload thread on the first CPU; a thread that never allocates
    /// spins on the second, whose interrupts are counted.
    Cpu0,
    /// Workload threads on the first two CPUs: their nature needs two
    /// (false sharing, true concurrency between the threads); interrupts are
    /// counted on both.
    Spread,
}

/// Sizes of a run.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    /// Seconds of a throughput workload (and of `idle`).
    pub seconds: f64,
    /// Multiplier of a program workload's work.
    pub scale: f64,
    /// Seed of every random choice.
    pub seed: u64,
}

/// What a workload did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Outcome {
    /// Operations (allocations, for most), or units of work of a program.
    pub ops: u64,
    /// A figure derived from the work (lengths, counts) so it cannot be
    /// optimised away and runs can be compared.
    pub check: u64,
    /// Time of the measured part.
    pub elapsed: Duration,
}

impl Workload {
    /// Every workload of the benchmark, in report order (not `idle`).
    pub const ALL: [Workload; 10] = [
        Workload::Larson,
        Workload::ProdCons,
        Workload::Xsizes,
        Workload::RandomLoop,
        Workload::Scratch,
        Workload::Tree,
        Workload::Midsize,
        Workload::Churn,
        Workload::Json,
        Workload::Small,
    ];

    /// The name on the command line and in the report.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Larson => "larson",
            Workload::ProdCons => "prod-cons",
            Workload::Xsizes => "xsizes",
            Workload::RandomLoop => "random-loop",
            Workload::Scratch => "scratch",
            Workload::Tree => "tree",
            Workload::Midsize => "midsize",
            Workload::Churn => "churn",
            Workload::Json => "json",
            Workload::Small => "small",
            Workload::Idle => "idle",
        }
    }

    /// Parses a name, `idle` included (the worker's job).
    pub fn parse(s: &str) -> Result<Workload, String> {
        Workload::ALL
            .into_iter()
            .chain([Workload::Idle])
            .find(|w| w.name() == s)
            .ok_or_else(|| {
                format!(
                    "`{s}` is not a workload: use one of {}, or idle",
                    Workload::ALL.map(Workload::name).join(", ")
                )
            })
    }

    /// Fixed time or fixed work.
    pub fn kind(self) -> Kind {
        match self {
            Workload::Tree | Workload::Churn | Workload::Json | Workload::Small => Kind::Program,
            _ => Kind::Throughput,
        }
    }

    /// Where its threads run.
    pub fn placement(self) -> Placement {
        match self {
            Workload::Midsize | Workload::Churn | Workload::Small | Workload::Idle => {
                Placement::Cpu0
            }
            _ => Placement::Spread,
        }
    }

    /// What it does, for the report.
    pub fn describe(self) -> &'static str {
        match self {
            Workload::Larson => {
                "Larson's server simulation: 2 threads, each replaces random slots of a 1,000-object array \
                 (8 to 1,000 B); every 10,000 replacements both threads exit and 2 new ones take the arrays, \
                 swapped, so every free is of an object another thread allocated"
            }
            Workload::ProdCons => {
                "producer/consumer: one thread allocates batches of 64 objects (16 to 512 B) and sends them \
                 through a bounded channel (16 batches); the other frees them"
            }
            Workload::Xsizes => {
                "random sizes across threads: 2 threads each allocate batches of 50 objects of 8 B to 16 KB \
                 (uniform), hand each batch to the other thread, and free the batches they receive"
            }
            Workload::RandomLoop => {
                "per-thread random malloc/free: 2 threads, each replaces random slots of its own \
                 2,000-object array (8 B to 4 KiB, small sizes likelier); nothing shared"
            }
            Workload::Scratch => {
                "cache-scratch: the main thread allocates two 8-byte objects back to back and gives one to \
                 each of 2 threads, which free it, then repeatedly allocate an 8-byte object, write it 100 \
                 times and free it (an allocator that reuses the freed neighbours shares a cache line)"
            }
            Workload::Tree => {
                "mstress-like: 2 threads each build binary trees of 2,047 nodes with random payloads \
                 (8 to 1,024 B) and put each into a random one of 8 shared slots, freeing the tree found \
                 there (often the other thread's)"
            }
            Workload::Midsize => {
                "mid-size buffers: 2 threads, each replaces random slots of an 8-buffer window with a new \
                 16 KiB or 64 KiB Vec<u8>, writing one byte per 4 KiB page"
            }
            Workload::Churn => {
                "thread churn: short threads, 2 at a time, each allocates 16 Strings and a 1 KiB buffer \
                 and exits"
            }
            Workload::Json => {
                "parallel serde JSON on a 2-thread rayon pool: serialise 25,000 random records (scale 1; \
                 about 12 MB) one per line, join them into one document, then parse every line to \
                 serde_json::Value, add a field, re-serialise, and join the results"
            }
            Workload::Small => {
                "single-threaded small objects: build a BTreeMap<String, Vec<u32>> of 40,000 entries, sum \
                 it, drop it; repeated"
            }
            Workload::Idle => "baseline: the main thread sleeps on the first CPU",
        }
    }

    /// Runs it.
    pub fn run(self, p: &Params) -> Outcome {
        match self {
            Workload::Larson => larson(p),
            Workload::ProdCons => prod_cons(p),
            Workload::Xsizes => xsizes(p),
            Workload::RandomLoop => random_loop(p),
            Workload::Scratch => scratch(p),
            Workload::Tree => tree(p),
            Workload::Midsize => midsize(p),
            Workload::Churn => churn(p),
            Workload::Json => json_program(p),
            Workload::Small => small(p),
            Workload::Idle => {
                let t = Instant::now();
                std::thread::sleep(Duration::from_secs_f64(p.seconds));
                Outcome {
                    ops: 1,
                    check: 0,
                    elapsed: t.elapsed(),
                }
            }
        }
    }
}

/// Throughput loops look at the stop flag once per this many operations.
const STOP_EVERY: u64 = 16;

fn rng(p: &Params, stream: u64) -> fastrand::Rng {
    fastrand::Rng::with_seed(p.seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// A heap object of `n` bytes (a `Vec<u8>` of that capacity, one byte written).
fn object(n: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(n);
    v.push(n as u8);
    v
}

/// Runs `threads` copies of `body(thread, stop)` for `seconds`, then stops
/// them; returns their summed results and the time until the last stopped.
fn for_seconds<F>(p: &Params, threads: u64, body: F) -> (u64, Duration)
where
    F: Fn(u64, &AtomicBool) -> u64 + Sync,
{
    let stop = AtomicBool::new(false);
    let total = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let (stop, total, body) = (&stop, &total, &body);
            s.spawn(move || {
                total.fetch_add(body(t, stop), Ordering::Relaxed);
            });
        }
        std::thread::sleep(Duration::from_secs_f64(p.seconds));
        stop.store(true, Ordering::Relaxed);
    });
    (total.into_inner(), start.elapsed())
}

fn larson(p: &Params) -> Outcome {
    const SLOTS: usize = 1000;
    const PER_ROUND: u64 = 10_000;
    let mut r0 = rng(p, 100);
    let mut arrays: Vec<Vec<Vec<u8>>> = (0..2)
        .map(|_| (0..SLOTS).map(|_| object(r0.usize(8..=1000))).collect())
        .collect();
    let start = Instant::now();
    let deadline = Duration::from_secs_f64(p.seconds);
    let (mut ops, mut round, mut check) = (0u64, 0u64, 0u64);
    while start.elapsed() < deadline {
        arrays.rotate_left(1);
        let handles: Vec<_> = arrays
            .drain(..)
            .enumerate()
            .map(|(t, mut arr)| {
                let mut r = rng(p, round * 2 + t as u64);
                std::thread::spawn(move || {
                    let mut sum = 0u64;
                    for _ in 0..PER_ROUND {
                        let i = r.usize(0..SLOTS);
                        arr[i] = object(r.usize(8..=1000));
                        sum += arr[i].capacity() as u64;
                    }
                    (arr, sum)
                })
            })
            .collect();
        for h in handles {
            let (arr, sum) = h.join().expect("a larson thread panicked");
            arrays.push(arr);
            check = check.wrapping_add(sum);
            ops += PER_ROUND;
        }
        round += 1;
    }
    drop(arrays);
    Outcome {
        ops,
        check,
        elapsed: start.elapsed(),
    }
}

fn prod_cons(p: &Params) -> Outcome {
    const BATCH: usize = 64;
    let (tx, rx) = sync_channel::<Vec<Vec<u8>>>(16);
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let (ops, check) = std::thread::scope(|s| {
        let stop = &stop;
        s.spawn(move || {
            let mut r = rng(p, 1);
            while !stop.load(Ordering::Relaxed) {
                let batch: Vec<Vec<u8>> = (0..BATCH).map(|_| object(r.usize(16..=512))).collect();
                if tx.send(batch).is_err() {
                    break;
                }
            }
        });
        let consumer = s.spawn(move || {
            let (mut ops, mut check) = (0u64, 0u64);
            for batch in rx {
                ops += batch.len() as u64;
                check = check.wrapping_add(batch.iter().map(|o| o.capacity() as u64).sum());
            }
            (ops, check)
        });
        std::thread::sleep(Duration::from_secs_f64(p.seconds));
        stop.store(true, Ordering::Relaxed);
        consumer.join().expect("the consumer panicked")
    });
    Outcome {
        ops,
        check,
        elapsed: start.elapsed(),
    }
}

fn xsizes(p: &Params) -> Outcome {
    const BATCH: u64 = 50;
    const MAX_QUEUED: usize = 16;
    type Batch = Vec<Vec<u8>>;
    let inbox: [Mutex<Vec<Batch>>; 2] = [Mutex::new(Vec::new()), Mutex::new(Vec::new())];
    let (ops, elapsed) = for_seconds(p, 2, |t, stop| {
        let mut r = rng(p, t);
        let mut ops = 0;
        while !stop.load(Ordering::Relaxed) {
            let batch: Batch = (0..BATCH).map(|_| object(r.usize(8..=16_384))).collect();
            ops += BATCH;
            let kept = {
                let mut q = inbox[1 - t as usize].lock().expect("inbox lock");
                if q.len() < MAX_QUEUED {
                    q.push(batch);
                    None
                } else {
                    Some(batch)
                }
            };
            drop(kept);
            let received = std::mem::take(&mut *inbox[t as usize].lock().expect("inbox lock"));
            drop(received);
        }
        ops
    });
    let left: usize = inbox
        .into_iter()
        .map(|m| m.into_inner().map(|q| q.len()).unwrap_or(0))
        .sum();
    Outcome {
        ops,
        check: left as u64,
        elapsed,
    }
}

/// 8 B to 4 KiB, small sizes likelier: uniform below a random power of two.
fn small_biased(r: &mut fastrand::Rng) -> usize {
    let top = 1usize << r.u32(4..=12);
    r.usize(8..=top)
}

fn random_loop(p: &Params) -> Outcome {
    const SLOTS: usize = 2000;
    let (ops, elapsed) = for_seconds(p, 2, |t, stop| {
        let mut r = rng(p, 10 + t);
        let mut arr: Vec<Vec<u8>> = (0..SLOTS).map(|_| object(small_biased(&mut r))).collect();
        let mut ops = 0;
        while !stop.load(Ordering::Relaxed) {
            for _ in 0..STOP_EVERY {
                let i = r.usize(0..SLOTS);
                arr[i] = object(small_biased(&mut r));
            }
            ops += STOP_EVERY;
        }
        black_box(&arr);
        ops
    });
    Outcome {
        ops,
        check: 0,
        elapsed,
    }
}

fn scratch(p: &Params) -> Outcome {
    const WRITES: u64 = 100;
    // Allocated back to back by this thread: neighbours on one cache line
    // in most allocators.
    let first: Vec<Mutex<Option<Box<u64>>>> =
        (0..2).map(|_| Mutex::new(Some(Box::new(0)))).collect();
    let (ops, elapsed) = for_seconds(p, 2, |t, stop| {
        drop(first[t as usize].lock().expect("scratch lock").take());
        let mut ops = 0;
        while !stop.load(Ordering::Relaxed) {
            for _ in 0..STOP_EVERY {
                let mut b = Box::new(t);
                for k in 0..WRITES {
                    *b = b.wrapping_add(k);
                    black_box(&mut *b);
                }
                drop(b);
            }
            ops += STOP_EVERY;
        }
        ops
    });
    Outcome {
        ops,
        check: 0,
        elapsed,
    }
}

struct Node {
    payload: Vec<u8>,
    left: Option<Box<Node>>,
    right: Option<Box<Node>>,
}

fn build(depth: u32, r: &mut fastrand::Rng) -> Box<Node> {
    let payload = object(r.usize(8..=1024));
    let (left, right) = if depth > 1 {
        (Some(build(depth - 1, r)), Some(build(depth - 1, r)))
    } else {
        (None, None)
    };
    Box::new(Node {
        payload,
        left,
        right,
    })
}

fn count(n: &Node) -> u64 {
    1 + n.left.as_deref().map_or(0, count) + n.right.as_deref().map_or(0, count)
}

fn tree(p: &Params) -> Outcome {
    const DEPTH: u32 = 11;
    const SLOTS: usize = 8;
    let rounds = ((120.0 * p.scale).round() as u64).max(1);
    let slots: Mutex<Vec<Option<Box<Node>>>> = Mutex::new((0..SLOTS).map(|_| None).collect());
    let start = Instant::now();
    let nodes: u64 = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2u64)
            .map(|t| {
                let slots = &slots;
                s.spawn(move || {
                    let mut r = rng(p, 20 + t);
                    let mut nodes = 0;
                    for _ in 0..rounds {
                        let tree = build(DEPTH, &mut r);
                        nodes += count(&tree);
                        black_box(&tree.payload);
                        let i = r.usize(0..SLOTS);
                        let old = slots
                            .lock()
                            .expect("tree slots")
                            .get_mut(i)
                            .map(|s| s.replace(tree));
                        drop(old);
                    }
                    nodes
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("a tree thread panicked"))
            .sum()
    });
    drop(slots);
    Outcome {
        ops: nodes,
        check: nodes,
        elapsed: start.elapsed(),
    }
}

fn midsize(p: &Params) -> Outcome {
    const WINDOW: usize = 8;
    const PAGE: usize = 4096;
    let (ops, elapsed) = for_seconds(p, 2, |t, stop| {
        let mut r = rng(p, 30 + t);
        let mut window: Vec<Vec<u8>> = (0..WINDOW).map(|_| Vec::new()).collect();
        let mut ops = 0;
        while !stop.load(Ordering::Relaxed) {
            for _ in 0..STOP_EVERY {
                let n = if r.bool() { 16 << 10 } else { 64 << 10 };
                let mut v: Vec<u8> = Vec::with_capacity(n);
                for page in v.spare_capacity_mut().iter_mut().step_by(PAGE) {
                    page.write(1);
                }
                window[r.usize(0..WINDOW)] = v;
            }
            ops += STOP_EVERY;
        }
        black_box(&window);
        ops
    });
    Outcome {
        ops,
        check: 0,
        elapsed,
    }
}

fn churn(p: &Params) -> Outcome {
    let pairs = ((2000.0 * p.scale).round() as u64).max(1);
    let work = |i: u64| {
        move || {
            let items: Vec<String> = (0..16).map(|k| format!("thread {i} item {k}")).collect();
            let buf = vec![1u8; 1024];
            items.iter().map(String::len).sum::<usize>() as u64 + buf.len() as u64
        }
    };
    let start = Instant::now();
    let mut check = 0u64;
    for i in 0..pairs {
        let a = std::thread::spawn(work(2 * i));
        let b = std::thread::spawn(work(2 * i + 1));
        check += a.join().expect("a churn thread panicked");
        check += b.join().expect("a churn thread panicked");
    }
    Outcome {
        ops: 2 * pairs,
        check,
        elapsed: start.elapsed(),
    }
}

const CITIES: [&str; 8] = [
    "Lisbon", "Porto", "Braga", "Faro", "Coimbra", "Aveiro", "Evora", "Viseu",
];

fn record(i: u64, r: &mut fastrand::Rng) -> Value {
    let tags: Vec<Value> = (0..r.usize(2..=6))
        .map(|k| Value::String(format!("tag-{}", (i * 7 + k as u64) % 97)))
        .collect();
    let history: Vec<Value> = (0..r.usize(3..=10))
        .map(|k| json!({"t": 1_700_000_000 + i * 60 + k as u64, "v": r.f64() * 1000.0, "ok": r.bool()}))
        .collect();
    json!({
        "id": i,
        "name": format!("user-{i:08}"),
        "email": format!("user{i}@example.invalid"),
        "active": r.bool(),
        "score": r.f64() * 100.0,
        "tags": tags,
        "address": {
            "street": format!("{} Rua {}", r.u32(1..500), i % 1000),
            "city": CITIES[r.usize(0..CITIES.len())],
            "zip": format!("{:04}-{:03}", r.u32(1000..10_000), r.u32(0..1000)),
        },
        "history": history,
    })
}

fn json_program(p: &Params) -> Outcome {
    let records = ((25_000.0 * p.scale).round() as u64).max(1);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .expect("a 2-thread rayon pool");
    let start = Instant::now();
    let (n, bytes) = pool.install(|| {
        // Generate: one record per line, serialised in parallel, joined into
        // one document (the lines are freed by the thread that joins them).
        let lines: Vec<String> = (0..records)
            .into_par_iter()
            .map(|i| {
                let mut r = rng(p, 1000 + i);
                serde_json::to_string(&record(i, &mut r)).expect("serialising a record")
            })
            .collect();
        let doc = lines.join("\n");
        drop(lines);
        // Parse every record, add a field, re-serialise: in parallel.
        let out: Vec<String> = doc
            .par_lines()
            .map(|line| {
                let mut v: Value = serde_json::from_str(line).expect("parsing a record");
                if let Some(o) = v.as_object_mut() {
                    o.insert("seen".to_string(), Value::Bool(true));
                }
                serde_json::to_string(&v).expect("re-serialising a record")
            })
            .collect();
        drop(doc);
        let n = out.len() as u64;
        let joined = out.join("\n");
        drop(out);
        (n, joined.len() as u64)
    });
    Outcome {
        ops: n,
        check: bytes,
        elapsed: start.elapsed(),
    }
}

fn small(p: &Params) -> Outcome {
    use std::collections::BTreeMap;
    const ENTRIES: usize = 40_000;
    let rounds = ((3.0 * p.scale).round() as u64).max(1);
    let mut r = rng(p, 40);
    let start = Instant::now();
    let mut check = 0u64;
    for _ in 0..rounds {
        let mut m: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for _ in 0..ENTRIES {
            let key = format!("key-{:012x}", r.u64(..) >> 16);
            let val: Vec<u32> = (0..r.u32(1..=4)).collect();
            m.insert(key, val);
        }
        check += m
            .iter()
            .map(|(k, v)| k.len() as u64 + v.len() as u64)
            .sum::<u64>();
        drop(m);
    }
    Outcome {
        ops: rounds * ENTRIES as u64,
        check,
        elapsed: start.elapsed(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_idle_is_only_the_worker_s() {
        for w in Workload::ALL {
            assert_eq!(Workload::parse(w.name()), Ok(w));
            assert_eq!(
                <Workload as clap::ValueEnum>::from_str(w.name(), false),
                Ok(w)
            );
        }
        assert_eq!(Workload::parse("idle"), Ok(Workload::Idle));
        assert!(<Workload as clap::ValueEnum>::from_str("idle", false).is_err());
        assert!(Workload::parse("bogus").unwrap_err().contains("bogus"));
    }

    #[test]
    fn every_workload_does_its_work_at_a_tiny_size() {
        let p = Params {
            seconds: 0.02,
            scale: 0.01,
            seed: 7,
        };
        for w in Workload::ALL {
            let o = w.run(&p);
            assert!(o.ops > 0, "{}: no operation", w.name());
        }
        // The JSON program re-serialises every record it generated, with
        // the added field.
        let o = Workload::Json.run(&p);
        assert_eq!(o.ops, 250);
        assert!(o.check > 250 * 100, "{} bytes", o.check);
    }
}
