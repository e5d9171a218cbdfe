//! A whole multi-threaded program on qpw-mm's global allocator.
//!
//! Waves of threads (more at once than the allocator has slots) spawn
//! children, build strings and collections, hand boxes to a collector thread
//! that frees them (cross-thread frees), and exit (their slots are drained
//! and reused). At the end the program drains and shrinks the allocator and
//! prints its statistics. The mode comes from the `QPW` variable.
//!
//! Run: `cargo run --release -p qpw-mm --example global_alloc [waves] [threads]`

use qpw_mm::QpwAlloc;
use std::collections::{BTreeMap, HashMap};
use std::sync::{mpsc, Arc, Barrier};

/// Fewer slots than threads per wave, so some threads take the shared path.
const SLOTS: usize = 32;

#[global_allocator]
static ALLOC: QpwAlloc = QpwAlloc::new().with_nr_cpus(SLOTS);

/// What one thread builds; returns a checksum that depends on every byte.
fn work(seed: u64, to_collector: &mpsc::Sender<Box<[u64]>>) -> u64 {
    let mut sum = 0u64;
    // Strings, growing and shrinking.
    let words: Vec<String> = (0..200)
        .map(|i| format!("w{seed}-{i}-{}", "x".repeat(i % 17)))
        .collect();
    let joined = words.join(",");
    sum = sum.wrapping_add(joined.len() as u64);
    let mut s = String::new();
    for w in &words {
        s.push_str(w);
        if s.len() > 1000 {
            s.truncate(10);
            s.shrink_to_fit();
        }
    }
    sum = sum.wrapping_add(s.len() as u64);
    // Maps.
    let mut hm: HashMap<u64, Vec<u8>> = HashMap::new();
    for i in 0..300u64 {
        hm.insert(i * seed.max(1), vec![(i % 251) as u8; (i % 64) as usize]);
    }
    sum = sum.wrapping_add(
        hm.values()
            .map(|v| v.iter().map(|&b| b as u64).sum::<u64>())
            .sum(),
    );
    let bt: BTreeMap<String, usize> = words.iter().map(|w| (w.clone(), w.len())).collect();
    sum = sum.wrapping_add(bt.values().sum::<usize>() as u64);
    // A large buffer (mapped directly), grown by reallocation.
    let mut big: Vec<u64> = Vec::new();
    for i in 0..40_000u64 {
        big.push(i ^ seed);
    }
    sum = sum.wrapping_add(big.iter().fold(0u64, |a, &x| a.wrapping_add(x)));
    // Over-aligned allocations.
    #[repr(align(4096))]
    struct Page([u8; 4096]);
    let pages: Vec<Box<Page>> = (0..4).map(|i| Box::new(Page([i as u8; 4096]))).collect();
    for p in &pages {
        assert_eq!(
            p.as_ref() as *const Page as usize % 4096,
            0,
            "4 KiB alignment"
        );
        sum = sum.wrapping_add(p.0[4095] as u64);
    }
    // Boxes freed by another thread.
    for i in 0..20u64 {
        let b: Box<[u64]> = (0..(i as usize * 3 + 1)).map(|k| k as u64 + seed).collect();
        sum = sum.wrapping_add(b.iter().sum::<u64>());
        to_collector.send(b).expect("collector alive");
    }
    sum
}

fn main() {
    let mut args = std::env::args().skip(1);
    let waves: usize = args
        .next()
        .map_or(4, |a| a.parse().expect("waves: a number"));
    let per_wave: usize = args
        .next()
        .map_or(48, |a| a.parse().expect("threads: a number"));

    // Large objects the allocator itself holds from start-up (its domain's
    // per-CPU cells, for example): the end must show no more than these.
    let at_start = ALLOC.stats().expect("the allocator is built");
    let large_live_start = at_start.large_allocs - at_start.large_frees;
    drop(at_start);

    let (tx, rx) = mpsc::channel::<Box<[u64]>>();
    let collector = std::thread::spawn(move || {
        let mut n = 0u64;
        let mut sum = 0u64;
        for b in rx {
            n += 1;
            sum = sum.wrapping_add(b.iter().sum::<u64>());
        }
        (n, sum)
    });

    let mut expected = 0u64;
    let mut got = 0u64;
    let mut spawned = 0usize;
    for wave in 0..waves {
        let barrier = Arc::new(Barrier::new(per_wave));
        let handles: Vec<_> = (0..per_wave)
            .map(|t| {
                let seed = (wave * per_wave + t) as u64 + 1;
                let (tx, barrier) = (tx.clone(), barrier.clone());
                std::thread::spawn(move || {
                    // All threads of the wave alive at once: more than SLOTS.
                    let first = work(seed, &tx);
                    barrier.wait();
                    let child_tx = tx.clone();
                    let child = std::thread::spawn(move || work(seed * 7919, &child_tx));
                    first.wrapping_add(child.join().expect("child"))
                })
            })
            .collect();
        spawned += 2 * per_wave;
        for (t, h) in handles.into_iter().enumerate() {
            got = got.wrapping_add(h.join().expect("worker"));
            let seed = (wave * per_wave + t) as u64 + 1;
            // The same work on this thread gives the expected checksum.
            let (dtx, drx) = mpsc::channel();
            expected = expected
                .wrapping_add(work(seed, &dtx))
                .wrapping_add(work(seed * 7919, &dtx));
            drop(dtx);
            drx.into_iter().for_each(drop);
        }
    }
    drop(tx);
    let (boxes, _) = collector.join().expect("collector");

    let flushed = ALLOC.flush_all();
    let shrunk = ALLOC.shrink();
    let stats = ALLOC.stats().expect("the allocator is built");
    println!("{stats}");
    println!("threads spawned: {spawned}");
    println!("boxes freed by the collector: {boxes}");
    println!(
        "flush_all: {}",
        if flushed.is_ok() { "ok" } else { "failed" }
    );
    match shrunk {
        Ok(r) => println!(
            "shrink: released {} slabs, {} bytes",
            r.slabs_released, r.bytes_released
        ),
        Err(e) => println!("shrink: failed: {e}"),
    }
    let t = stats.total();
    println!(
        "summary: bound={} unbound={} shared_no_slot={} shared_reentrant={} large_allocs={} large_frees={} large_live_start={} slabs_active={} alloc_slow={}",
        stats.threads_bound,
        stats.threads_unbound,
        stats.shared_path.no_slot,
        stats.shared_path.reentrant,
        stats.large_allocs,
        stats.large_frees,
        large_live_start,
        t.slabs_active,
        t.alloc_slow
    );
    if got == expected && boxes == (spawned as u64) * 20 {
        println!("checksum: ok");
    } else {
        println!("checksum: MISMATCH (got {got:#x}, expected {expected:#x}, boxes {boxes})");
        std::process::exit(1);
    }
}
