//! The slab cache: conservation under concurrency in every mode and
//! configuration, leaks reported, bad parameters refused, misuse detected.

use qpw::{Config, Domain, Mode, NoQpw, Rt, RtNoQpw, Standard};
use qpw_mm::{DestroyError, KmemCache, SlabError};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::time::Duration;

/// `remote` where the modes exist; `queue` when qpw is compiled out (only
/// `queue` exists then, and what these tests check holds in every mode).
fn remote() -> Mode {
    if cfg!(feature = "qpw") {
        Mode::Remote
    } else {
        Mode::Queue
    }
}

const THREADS: usize = 8;
const ITERS: usize = 2500;
/// Drains each worker waits to overlap with before it stops allocating.
const MIN_DRAINS: usize = 8;
const SIZE: usize = 48;
const WORDS: usize = SIZE / 8;

/// Writes `tag` into every word of the object.
fn fill(p: usize, tag: u64) {
    for w in 0..WORDS {
        // SAFETY: the object has SIZE bytes, 8-aligned, and is ours.
        unsafe { (p as *mut u64).add(w).write(tag) };
    }
}

/// Checks the object still holds `tag` everywhere: an overlapping live
/// object, or one handed out twice, would have overwritten it.
fn check(p: usize, tag: u64) {
    for w in 0..WORDS {
        // SAFETY: as in fill.
        let v = unsafe { (p as *const u64).add(w).read() };
        assert_eq!(
            v, tag,
            "object {p:#x} word {w} was overwritten: two live objects overlap"
        );
    }
}

/// A small deterministic generator, one per thread.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// 8 owners allocate, free locally, hand objects to the next owner (which
/// frees them: remote frees), with bulk calls mixed in, while another thread
/// keeps calling `flush_all` and `shrink`. Every object is checked before
/// its free; at the end every allocation was freed once and `destroy` finds
/// no leak.
fn conservation<C: Config>(mode: Mode) {
    let domain = qpw::Builder::<C>::new()
        .mode(mode.clone())
        .nr_cpus(THREADS + 1)
        .flush_timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    // Small sheaves and depot: the slow paths, the depot and the slabs all
    // see traffic, not just the per-CPU arrays.
    let cache = Arc::new(
        KmemCache::builder(&domain, SIZE)
            .sheaf_capacity(8)
            .depot_max_full(4)
            .build()
            .unwrap(),
    );
    let allocated = Arc::new(AtomicUsize::new(0));
    let freed = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let drains = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(Barrier::new(THREADS + 1));

    let (txs, rxs): (Vec<_>, Vec<_>) = (0..THREADS)
        .map(|_| mpsc::channel::<Vec<(usize, u64)>>())
        .unzip();
    let drainer = {
        let (cache, stop, drains, start) =
            (cache.clone(), stop.clone(), drains.clone(), start.clone());
        std::thread::spawn(move || {
            start.wait();
            while !stop.load(Ordering::Relaxed) {
                cache.flush_all().unwrap();
                cache.shrink().unwrap();
                drains.fetch_add(1, Ordering::Relaxed);
                std::thread::yield_now();
            }
        })
    };
    let workers: Vec<_> = rxs
        .into_iter()
        .enumerate()
        .map(|(i, rx)| {
            let tx = txs[(i + 1) % THREADS].clone();
            let (domain, cache, allocated, freed, start, drains) = (
                domain.clone(),
                cache.clone(),
                allocated.clone(),
                freed.clone(),
                start.clone(),
                drains.clone(),
            );
            std::thread::spawn(move || {
                let mut me = domain.bind_unpinned(i).unwrap();
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ((i as u64 + 1) * 0x1234_5678));
                let mut live: Vec<(usize, u64)> = Vec::new();
                let mut seq = 0u64;
                let mut tag = || {
                    seq += 1;
                    ((i as u64) << 48) | seq
                };
                start.wait();
                let mut it = 0;
                let t0 = std::time::Instant::now();
                // At least ITERS rounds, and until drains have run meanwhile
                // (bounded, so a stuck drain fails the assertion below
                // rather than hanging).
                while it < ITERS
                    || (drains.load(Ordering::Relaxed) < MIN_DRAINS
                        && t0.elapsed() < Duration::from_secs(20))
                {
                    it += 1;
                    if it % 64 == 0 {
                        // Let the drainer in on a crowded machine.
                        std::thread::yield_now();
                    }
                    if it % 9 == 0 {
                        let mut out = [std::ptr::null_mut(); 5];
                        assert_eq!(cache.alloc_bulk(&mut me, &mut out), 5);
                        for p in out {
                            let t = tag();
                            fill(p as usize, t);
                            live.push((p as usize, t));
                        }
                        allocated.fetch_add(5, Ordering::Relaxed);
                    } else {
                        let p = cache.alloc(&mut me).unwrap().as_ptr() as usize;
                        let t = tag();
                        fill(p, t);
                        live.push((p, t));
                        allocated.fetch_add(1, Ordering::Relaxed);
                    }
                    // Local frees, in random order.
                    while live.len() > 24 {
                        let k = (rng.next() % live.len() as u64) as usize;
                        let (p, t) = live.swap_remove(k);
                        check(p, t);
                        // SAFETY: allocated from this cache, freed once.
                        unsafe { cache.free(&mut me, NonNull::new(p as *mut u8).unwrap()) };
                        freed.fetch_add(1, Ordering::Relaxed);
                    }
                    // Hand some to the next owner.
                    if it % 4 == 0 && live.len() >= 4 {
                        let batch: Vec<_> = live.drain(..4).collect();
                        tx.send(batch).unwrap();
                    }
                    // Free what others handed us: remote frees.
                    while let Ok(batch) = rx.try_recv() {
                        free_batch(&cache, &mut me, batch, &freed);
                    }
                    me.quiescent();
                }
                for (p, t) in live.drain(..) {
                    check(p, t);
                    // SAFETY: allocated from this cache, freed once.
                    unsafe { cache.free(&mut me, NonNull::new(p as *mut u8).unwrap()) };
                    freed.fetch_add(1, Ordering::Relaxed);
                }
                drop(tx);
                // Until the previous owner is done; offline while waiting so
                // drains (defer mode) need not wait for us.
                while let Ok(batch) = me.idle(|| rx.recv()) {
                    free_batch(&cache, &mut me, batch, &freed);
                }
            })
        })
        .collect();
    drop(txs);
    for w in workers {
        w.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    drainer.join().unwrap();

    let a = allocated.load(Ordering::Relaxed);
    assert_eq!(
        a,
        freed.load(Ordering::Relaxed),
        "every allocation freed once"
    );
    assert!(a >= THREADS * ITERS);
    eprintln!(
        "{mode}: drains {} allocs {a} work {:?}",
        drains.load(Ordering::Relaxed),
        domain.total_stats()
    );
    assert!(
        drains.load(Ordering::Relaxed) >= MIN_DRAINS,
        "the drainer ran while owners worked"
    );
    let stats = cache.stats();
    assert!(stats.alloc_slow > 0 && stats.free_slow > 0, "{stats:?}");
    let work = domain.total_stats();
    assert!(work.works_run() > 0, "drains ran work: {work:?}");
    assert_eq!(work.works_panicked, 0);
    match mode {
        Mode::Remote | Mode::Defer => assert_eq!(work.fences(), 0, "{mode}: {work:?}"),
        _ => {}
    }
    let cache = Arc::try_unwrap(cache).expect("every thread is gone");
    cache.destroy().expect("no leak");
}

fn free_batch<C: Config>(
    cache: &KmemCache<C>,
    me: &mut qpw::Owner<C>,
    batch: Vec<(usize, u64)>,
    freed: &AtomicUsize,
) {
    for &(p, t) in &batch {
        check(p, t);
    }
    if batch.len() == 4 && batch[0].1 % 2 == 0 {
        let ptrs: Vec<_> = batch
            .iter()
            .map(|&(p, _)| NonNull::new(p as *mut u8).unwrap())
            .collect();
        // SAFETY: each allocated from this cache, freed once.
        unsafe { cache.free_bulk(me, &ptrs) };
    } else {
        for &(p, _) in &batch {
            // SAFETY: allocated from this cache, freed once.
            unsafe { cache.free(me, NonNull::new(p as *mut u8).unwrap()) };
        }
    }
    freed.fetch_add(batch.len(), Ordering::Relaxed);
}

#[test]
fn conservation_queue() {
    conservation::<Standard>(Mode::Queue);
}

#[cfg(feature = "qpw")]
#[test]
fn conservation_remote() {
    conservation::<Standard>(Mode::Remote);
}

#[cfg(feature = "qpw")]
#[test]
fn conservation_defer() {
    conservation::<Standard>(Mode::Defer);
}

#[cfg(feature = "qpw")]
#[test]
fn conservation_auto() {
    conservation::<Standard>(Mode::Auto(Some(vec![0, 2, 4, 6])));
}

#[test]
fn conservation_no_qpw() {
    conservation::<NoQpw>(Mode::Queue);
}

#[test]
fn conservation_rt_queue() {
    conservation::<Rt>(Mode::Queue);
}

#[cfg(feature = "qpw")]
#[test]
fn conservation_rt_remote() {
    conservation::<Rt>(Mode::Remote);
}

#[test]
fn conservation_rt_no_qpw() {
    conservation::<RtNoQpw>(Mode::Queue);
}

#[test]
fn a_leak_is_reported_not_hidden() {
    let domain: Domain = Domain::builder().mode(remote()).nr_cpus(2).build().unwrap();
    let cache = KmemCache::new(&domain, 100).unwrap();
    let mut me = domain.bind_unpinned(0).unwrap();
    let keep = cache.alloc(&mut me).unwrap();
    for _ in 0..1000 {
        let p = cache.alloc(&mut me).unwrap();
        // SAFETY: just allocated, freed once.
        unsafe { cache.free(&mut me, p) };
    }
    // SAFETY: the object is 104 bytes, writable.
    unsafe { keep.as_ptr().write_bytes(0xAB, 104) };
    drop(me);
    match cache.destroy() {
        Err(DestroyError::Leaked { objects, bytes }) => {
            assert_eq!(objects, 1);
            assert_eq!(bytes, 104);
        }
        other => panic!("expected a leak report, got {other:?}"),
    }
    // The leaked object stays mapped and intact.
    // SAFETY: its memory was kept, as the error says.
    assert_eq!(unsafe { keep.as_ptr().add(103).read() }, 0xAB);
}

#[test]
fn objects_are_distinct_aligned_and_reused_across_slots() {
    let domain: Domain = Domain::builder()
        .mode(Mode::Queue)
        .nr_cpus(2)
        .build()
        .unwrap();
    let cache = KmemCache::builder(&domain, 100).align(64).build().unwrap();
    assert_eq!(cache.object_size(), 128);
    let mut me = domain.bind_unpinned(0).unwrap();
    let mut ptrs: Vec<usize> = (0..5000)
        .map(|_| cache.alloc(&mut me).unwrap().as_ptr() as usize)
        .collect();
    assert!(ptrs.iter().all(|p| p % 64 == 0));
    let mut sorted = ptrs.clone();
    sorted.sort_unstable();
    assert!(
        sorted.windows(2).all(|w| w[1] - w[0] >= 128),
        "objects overlap"
    );
    // Free them from another slot: they enter that slot's sheaves.
    let other = std::thread::scope(|s| {
        s.spawn(|| {
            let mut me1 = domain.bind_unpinned(1).unwrap();
            for &p in &ptrs {
                // SAFETY: allocated from this cache, freed once.
                unsafe { cache.free(&mut me1, NonNull::new(p as *mut u8).unwrap()) };
            }
            // The same slot gets them back.
            (0..ptrs.len())
                .map(|_| cache.alloc(&mut me1).unwrap().as_ptr() as usize)
                .collect::<Vec<_>>()
        })
        .join()
        .unwrap()
    });
    let mut again = other.clone();
    again.sort_unstable();
    assert_eq!(
        again, sorted,
        "freed objects are reused, none lost or invented"
    );
    ptrs.clear();
    for p in other {
        // SAFETY: allocated from this cache, freed once.
        unsafe { cache.free(&mut me, NonNull::new(p as *mut u8).unwrap()) };
    }
    drop(me);
    cache.destroy().unwrap();
}

#[test]
fn shrink_keeps_every_slab_that_holds_a_live_object() {
    let domain: Domain = Domain::builder().mode(remote()).nr_cpus(1).build().unwrap();
    let cache = KmemCache::new(&domain, 512).unwrap();
    let per_slab = cache.slab_bytes() / cache.object_size();
    let mut me = domain.bind_unpinned(0).unwrap();
    let mut ptrs: Vec<usize> = (0..4 * per_slab)
        .map(|_| cache.alloc(&mut me).unwrap().as_ptr() as usize)
        .collect();
    // Keep one object in each slab (the lowest address of each), free the rest.
    ptrs.sort_unstable();
    let keep: Vec<usize> = ptrs.chunks(per_slab).map(|c| c[per_slab / 2]).collect();
    for (i, &p) in keep.iter().enumerate() {
        fill(p, 0xC0DE_0000 + i as u64);
    }
    for &p in ptrs.iter().filter(|p| !keep.contains(p)) {
        // SAFETY: allocated above, freed once.
        unsafe { cache.free(&mut me, NonNull::new(p as *mut u8).unwrap()) };
    }
    let r = cache.shrink().unwrap();
    assert_eq!(
        r.slabs_released, 0,
        "every slab still holds a live object: {r:?}"
    );
    for (i, &p) in keep.iter().enumerate() {
        check(p, 0xC0DE_0000 + i as u64);
    }
    // Everything else comes back, distinct from the kept objects.
    let again: Vec<usize> = (0..4 * per_slab - 4)
        .map(|_| cache.alloc(&mut me).unwrap().as_ptr() as usize)
        .collect();
    assert!(
        again.iter().all(|p| !keep.contains(p)),
        "a live object was handed out again"
    );
    for &p in again.iter().chain(&keep) {
        // SAFETY: allocated above, freed once.
        unsafe { cache.free(&mut me, NonNull::new(p as *mut u8).unwrap()) };
    }
    let r = cache.shrink().unwrap();
    let carved = cache.stats().slabs_carved;
    assert!(
        carved >= 4 && r.slabs_released == carved,
        "all {carved} slabs free: {r:?}"
    );
    drop(me);
    cache.destroy().unwrap();
}

#[test]
fn shared_path_serves_threads_without_a_slot() {
    let domain: Domain = Domain::builder()
        .mode(Mode::Queue)
        .nr_cpus(1)
        .build()
        .unwrap();
    let cache = KmemCache::new(&domain, 32).unwrap();
    let ptrs: Vec<_> = (0..300).map(|_| cache.alloc_shared().unwrap()).collect();
    let mut me = domain.bind_unpinned(0).unwrap();
    for p in ptrs {
        // SAFETY: allocated from this cache, freed once; any path may free.
        unsafe { cache.free(&mut me, p) };
    }
    let p = cache.alloc(&mut me).unwrap();
    // SAFETY: as above.
    unsafe { cache.free_shared(p) };
    let s = cache.stats();
    assert_eq!(s.shared_allocs, 300);
    assert_eq!(s.shared_frees, 1);
    drop(me);
    cache.destroy().unwrap();
}

#[test]
fn bad_parameters_are_refused_with_a_clear_error() {
    let domain: Domain = Domain::builder()
        .mode(Mode::Queue)
        .nr_cpus(1)
        .build()
        .unwrap();
    let e = KmemCache::new(&domain, 0).unwrap_err();
    assert!(matches!(e, SlabError::BadObjectSize { size: 0, .. }));
    assert!(e.to_string().contains("object size 0"), "{e}");
    let e = KmemCache::builder(&domain, 64)
        .align(3)
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("alignment 3"), "{e}");
    let e = KmemCache::builder(&domain, 64)
        .sheaf_capacity(0)
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("sheaf capacity 0"), "{e}");
    let e = KmemCache::builder(&domain, 64)
        .max_bytes(4096)
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("max_bytes 4096"), "{e}");
    let e = KmemCache::new(&domain, 2 << 20).unwrap_err();
    assert!(e.to_string().contains("between 1 and"), "{e}");
}

#[test]
fn the_memory_limit_is_an_allocation_failure_not_a_crash() {
    let domain: Domain = Domain::builder().mode(remote()).nr_cpus(1).build().unwrap();
    let cache = KmemCache::builder(&domain, 4096)
        .max_bytes(256 << 10)
        .build()
        .unwrap();
    let mut me = domain.bind_unpinned(0).unwrap();
    let mut got = Vec::new();
    while let Some(p) = cache.alloc(&mut me) {
        got.push(p);
        assert!(got.len() <= 64, "more objects than the limit holds");
    }
    assert_eq!(got.len(), 64, "256 KiB of 4 KiB objects");
    for p in got {
        // SAFETY: allocated from this cache, freed once.
        unsafe { cache.free(&mut me, p) };
    }
    drop(me);
    cache.destroy().unwrap();
}

#[cfg(debug_assertions)]
mod debug_checks {
    use super::*;

    fn cache() -> (Domain, KmemCache) {
        let domain: Domain = Domain::builder().mode(remote()).nr_cpus(1).build().unwrap();
        let cache = KmemCache::new(&domain, 64).unwrap();
        (domain, cache)
    }

    #[test]
    #[should_panic(expected = "double free")]
    fn double_free_is_detected() {
        let (domain, cache) = cache();
        let mut me = domain.bind_unpinned(0).unwrap();
        let p = cache.alloc(&mut me).unwrap();
        // SAFETY: deliberately wrong, to check the detection; the second free
        // panics before touching anything.
        unsafe {
            cache.free(&mut me, p);
            cache.free(&mut me, p);
        }
    }

    #[test]
    #[should_panic(expected = "double free")]
    fn double_free_on_another_slot_is_detected() {
        let domain: Domain = Domain::builder().mode(remote()).nr_cpus(2).build().unwrap();
        let cache = KmemCache::new(&domain, 64).unwrap();
        let mut me = domain.bind_unpinned(0).unwrap();
        let p = cache.alloc(&mut me).unwrap().as_ptr() as usize;
        // SAFETY: the first free is legitimate.
        unsafe { cache.free(&mut me, NonNull::new(p as *mut u8).unwrap()) };
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut other = domain.bind_unpinned(1).unwrap();
                // SAFETY: deliberately wrong; detected before any change.
                unsafe { cache.free(&mut other, NonNull::new(p as *mut u8).unwrap()) };
            })
            .join()
            .map_err(|e| std::panic::resume_unwind(e))
            .unwrap();
        });
    }

    #[test]
    #[should_panic(expected = "foreign pointer")]
    fn foreign_pointer_is_detected() {
        let (domain, cache) = cache();
        let mut me = domain.bind_unpinned(0).unwrap();
        let mut local = [0u64; 8];
        // SAFETY: deliberately wrong; detected before any change.
        unsafe { cache.free(&mut me, NonNull::new(local.as_mut_ptr().cast()).unwrap()) };
    }

    #[test]
    #[should_panic(expected = "foreign pointer")]
    fn another_caches_object_is_foreign() {
        let (domain, cache) = cache();
        let other = KmemCache::new(&domain, 64).unwrap();
        let mut me = domain.bind_unpinned(0).unwrap();
        let p = other.alloc(&mut me).unwrap();
        // SAFETY: deliberately wrong; detected before any change.
        unsafe { cache.free(&mut me, p) };
    }

    #[test]
    #[should_panic(expected = "not the start of an object")]
    fn interior_pointer_is_detected() {
        let (domain, cache) = cache();
        let mut me = domain.bind_unpinned(0).unwrap();
        let p = cache.alloc(&mut me).unwrap();
        // SAFETY: deliberately wrong; detected before any change.
        unsafe { cache.free(&mut me, NonNull::new(p.as_ptr().add(8)).unwrap()) };
    }

    #[test]
    #[should_panic(expected = "double free")]
    fn double_free_in_a_bulk_is_detected() {
        let (domain, cache) = cache();
        let mut me = domain.bind_unpinned(0).unwrap();
        let p = cache.alloc(&mut me).unwrap();
        // SAFETY: deliberately wrong; detected before any change.
        unsafe { cache.free_bulk(&mut me, &[p, p]) };
    }
}
