//! kmalloc: size classes, large objects, alignment, zero size, realloc,
//! implicit per-thread bindings (slot reuse, threads beyond the last slot).

use qpw::{Domain, Mode, NoQpw, Standard};
use qpw_mm::{DestroyError, Kmalloc, KMALLOC_MAX_CACHE_SIZE, KMALLOC_SIZES};
use std::alloc::Layout;
use std::sync::{Arc, Barrier};

/// `remote` where the modes exist; `queue` when qpw is compiled out (only
/// `queue` exists then, and what these tests check holds in every mode).
fn remote() -> Mode {
    if cfg!(feature = "qpw") {
        Mode::Remote
    } else {
        Mode::Queue
    }
}

fn pattern(p: *mut u8, n: usize, seed: u8) {
    for i in 0..n {
        // SAFETY: the caller passes an object of at least n bytes.
        unsafe { p.add(i).write(seed.wrapping_add(i as u8)) };
    }
}

fn check(p: *const u8, n: usize, seed: u8) {
    for i in 0..n {
        // SAFETY: as in pattern.
        let v = unsafe { p.add(i).read() };
        assert_eq!(v, seed.wrapping_add(i as u8), "byte {i} of {p:p}");
    }
}

fn km(mode: Mode, nr: usize) -> Kmalloc {
    Kmalloc::builder()
        .mode(mode)
        .nr_cpus(nr)
        .class_bytes(64 << 20)
        .build()
        .unwrap()
}

#[test]
fn every_size_gets_a_big_enough_object() {
    let km = km(remote(), 1);
    let mut me = km.domain().bind_unpinned(0).unwrap();
    let mut live = Vec::new();
    for size in
        (0..=KMALLOC_MAX_CACHE_SIZE)
            .step_by(7)
            .chain([8192, 8193, 12_000, 100_000, 1 << 20])
    {
        let p = km.kmalloc(&mut me, size).unwrap().as_ptr();
        assert_eq!(p as usize % 8, 0);
        // SAFETY: allocated just above.
        let usable = unsafe { km.ksize(p) };
        assert!(usable >= size, "size {size}: ksize {usable}");
        if size <= KMALLOC_MAX_CACHE_SIZE {
            assert!(KMALLOC_SIZES.contains(&usable));
        }
        pattern(p, size, size as u8);
        live.push((p, size));
    }
    for (p, size) in live {
        check(p, size, size as u8);
        // SAFETY: allocated from km, freed once.
        unsafe { km.kfree(&mut me, p) };
    }
    let s = km.stats();
    assert_eq!(s.large_allocs, 4);
    assert_eq!(s.large_frees, 4);
    assert_eq!(s.large_live_bytes, 0);
    drop(me);
    km.destroy().unwrap();
}

#[test]
fn zero_size_objects_are_distinct_and_freeable() {
    let km = km(Mode::Queue, 1);
    let mut me = km.domain().bind_unpinned(0).unwrap();
    let ptrs: Vec<_> = (0..100)
        .map(|_| km.kmalloc(&mut me, 0).unwrap().as_ptr() as usize)
        .collect();
    let mut sorted = ptrs.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), 100, "zero-size allocations are distinct");
    for p in ptrs {
        // SAFETY: allocated from km, freed once.
        unsafe { km.kfree(&mut me, p as *mut u8) };
    }
    // kfree(NULL) is a no-op, as in the kernel.
    // SAFETY: null is always accepted.
    unsafe { km.kfree(&mut me, std::ptr::null_mut()) };
    drop(me);
    km.destroy().unwrap();
}

#[test]
fn large_alignments_are_honoured() {
    let km = km(remote(), 1);
    let mut me = km.domain().bind_unpinned(0).unwrap();
    let mut live = Vec::new();
    for shift in 0..=15 {
        let align = 1usize << shift;
        for size in [
            1usize,
            align / 2 + 1,
            align,
            3 * align / 2 + 1,
            5000,
            20_000,
        ] {
            let l = Layout::from_size_align(size, align).unwrap();
            let p = km.alloc(&mut me, l).unwrap().as_ptr();
            assert_eq!(p as usize % align, 0, "size {size} align {align}: {p:p}");
            pattern(p, size, shift as u8);
            live.push((p, size, shift as u8));
        }
    }
    for (p, size, seed) in live {
        check(p, size, seed);
        // SAFETY: allocated from km, freed once.
        unsafe { km.kfree(&mut me, p) };
    }
    drop(me);
    km.destroy().unwrap();
}

#[test]
fn realloc_keeps_contents_through_every_path() {
    let km = km(Mode::Queue, 1);
    let mut me = km.domain().bind_unpinned(0).unwrap();
    // null -> small -> bigger classes -> large -> larger (mremap) -> small.
    // SAFETY: null allocates.
    let mut p = unsafe { km.krealloc(&mut me, std::ptr::null_mut(), 5) }
        .unwrap()
        .as_ptr();
    pattern(p, 5, 7);
    let mut have = 5;
    for new in [
        6usize,
        8,
        9,
        100,
        700,
        4096,
        8192,
        8193,
        50_000,
        3 << 20,
        10_000,
        9000,
        300,
        1,
    ] {
        // SAFETY: `p` is live from km; on success it is replaced.
        let np = unsafe { km.krealloc(&mut me, p, new) }.unwrap().as_ptr();
        check(np, have.min(new), 7);
        pattern(np, new, 7);
        // SAFETY: live.
        assert!(unsafe { km.ksize(np) } >= new);
        p = np;
        have = new;
    }
    // Same class: the object stays put.
    // SAFETY: live.
    let q = unsafe { km.krealloc(&mut me, p, 2) }.unwrap().as_ptr();
    assert_eq!(q, p);
    // Aligned reallocation keeps the alignment.
    let a = km
        .alloc(&mut me, Layout::from_size_align(100, 256).unwrap())
        .unwrap()
        .as_ptr();
    pattern(a, 100, 3);
    // SAFETY: live, allocated with alignment 256.
    let b = unsafe { km.realloc(&mut me, a, 256, 3000) }
        .unwrap()
        .as_ptr();
    assert_eq!(b as usize % 256, 0);
    check(b, 100, 3);
    // SAFETY: both live, freed once.
    unsafe {
        km.kfree(&mut me, q);
        km.kfree(&mut me, b);
    }
    drop(me);
    km.destroy().unwrap();
}

#[test]
fn bulk_calls_allocate_and_free_under_one_section() {
    let km = km(remote(), 1);
    let mut me = km.domain().bind_unpinned(0).unwrap();
    let mut all = Vec::new();
    for size in [8usize, 64, 1000, 8192, 20_000] {
        let mut out = [std::ptr::null_mut(); 16];
        for _ in 0..10 {
            assert_eq!(km.kmalloc_bulk(&mut me, size, &mut out), 16);
            for &p in &out {
                pattern(p, size, size as u8);
            }
            all.extend(out.iter().map(|&p| (p, size)));
        }
    }
    let mut sorted: Vec<_> = all.iter().map(|&(p, _)| p as usize).collect();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), all.len(), "bulk objects are distinct");
    for &(p, size) in &all {
        check(p, size, size as u8);
    }
    let ptrs: Vec<_> = all.iter().map(|&(p, _)| p).collect();
    // SAFETY: each allocated from km, freed once.
    unsafe { km.kfree_bulk(&mut me, &ptrs) };
    drop(me);
    km.destroy().unwrap();
}

#[test]
fn implicit_bindings_are_released_at_thread_exit_and_slots_reused() {
    // Two slots, twenty threads one after another: every thread gets a slot
    // because the previous one's was drained and freed when it exited.
    let km = Arc::new(km(Mode::Queue, 2));
    let keep = Arc::new(std::sync::Mutex::new(Vec::new()));
    for t in 0..20u8 {
        let (km, keep) = (km.clone(), keep.clone());
        std::thread::spawn(move || {
            let mut mine = Vec::new();
            for i in 0..200usize {
                let size = 1 + (i * 37) % 3000;
                let p = km.kmalloc_local(size).unwrap().as_ptr();
                pattern(p, size, t);
                mine.push((p as usize, size));
            }
            // Free half here, hand the other half to the main thread.
            for (p, size) in mine.drain(..100) {
                check(p as *const u8, size, t);
                // SAFETY: allocated from km, freed once.
                unsafe { km.kfree_local(p as *mut u8) };
            }
            keep.lock()
                .unwrap()
                .extend(mine.into_iter().map(|(p, s)| (p, s, t)));
        })
        .join()
        .unwrap();
    }
    let s = km.stats();
    assert_eq!(s.threads_bound, 20, "{s}");
    assert_eq!(s.threads_unbound, 20, "{s}");
    assert_eq!(s.shared_path.no_slot, 0, "a slot was always free: {s}");
    let work = s.work;
    assert!(work.works_at_quiescent + work.works_remote <= work.works_run());
    // The main thread frees what the exited threads left (their objects,
    // freed from another thread's slot).
    for (p, size, t) in keep.lock().unwrap().drain(..) {
        check(p as *const u8, size, t);
        // SAFETY: allocated from km, freed once.
        unsafe { km.kfree_local(p as *mut u8) };
    }
    let km = Arc::try_unwrap(km).unwrap();
    km.destroy().unwrap();
}

#[test]
fn threads_beyond_the_last_slot_use_the_shared_path() {
    const THREADS: usize = 12;
    let km = Arc::new(km(remote(), 3));
    let barrier = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (km, barrier) = (km.clone(), barrier.clone());
            std::thread::spawn(move || {
                // Everyone allocates once and holds on, so all want a slot at once.
                let first = km.kmalloc_local(64).unwrap().as_ptr();
                barrier.wait();
                let mut mine = Vec::new();
                for i in 0..500usize {
                    let size = 8 + (i * 13) % 500;
                    let p = km.kmalloc_local(size).unwrap().as_ptr();
                    pattern(p, size, t as u8);
                    mine.push((p, size));
                    if mine.len() > 20 {
                        let (p, size) = mine.swap_remove(i % 20);
                        check(p, size, t as u8);
                        // SAFETY: allocated from km, freed once.
                        unsafe { km.kfree_local(p) };
                    }
                }
                for (p, size) in mine {
                    check(p, size, t as u8);
                    // SAFETY: as above.
                    unsafe { km.kfree_local(p) };
                }
                // SAFETY: as above.
                unsafe { km.kfree_local(first) };
                barrier.wait();
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let s = km.stats();
    assert_eq!(s.threads_bound, 3, "only three slots: {s}");
    assert!(s.shared_path.no_slot >= (THREADS as u64 - 3) * 1000, "{s}");
    let total = s.total();
    assert!(
        total.shared_allocs > 0 && total.shared_frees > 0,
        "{total:?}"
    );
    let km = Arc::try_unwrap(km).unwrap();
    km.destroy().unwrap();
}

#[test]
fn explicit_and_implicit_calls_mix_and_cross_threads() {
    let domain: Domain<NoQpw> = qpw::Builder::new().nr_cpus(4).build().unwrap();
    let km = Arc::new(Kmalloc::new(&domain).unwrap());
    let mut me = domain.bind_unpinned(0).unwrap();
    let ptrs: Vec<usize> = (0..1000)
        .map(|i| km.kmalloc(&mut me, i % 700).unwrap().as_ptr() as usize)
        .collect();
    let km2 = km.clone();
    let back: Vec<usize> = std::thread::spawn(move || {
        for &p in &ptrs {
            // SAFETY: allocated from km, freed once, from another thread.
            unsafe { km2.kfree_local(p as *mut u8) };
        }
        let v = (0..1000)
            .map(|_| km2.kmalloc_local(128).unwrap().as_ptr() as usize)
            .collect();
        km2.unbind_local();
        v
    })
    .join()
    .unwrap();
    for p in back {
        // SAFETY: allocated from km, freed once.
        unsafe { km.kfree(&mut me, p as *mut u8) };
    }
    drop(me);
    let km = Arc::try_unwrap(km).unwrap();
    km.destroy().unwrap();
}

#[test]
fn destroy_reports_leaks_including_large_objects() {
    let km = km(Mode::Queue, 1);
    let small = km.kmalloc_local(100).unwrap();
    let large = km.kmalloc_local(100_000).unwrap();
    // SAFETY: both live and big enough.
    unsafe {
        small.as_ptr().write(1);
        large.as_ptr().write(2);
    }
    match km.destroy() {
        Err(DestroyError::Leaked { objects, bytes }) => {
            assert_eq!(objects, 2);
            assert!(bytes >= 128 + 100_000, "{bytes}");
        }
        other => panic!("expected a leak report, got {other:?}"),
    }
    // SAFETY: leaked memory stays mapped.
    unsafe {
        assert_eq!(small.as_ptr().read(), 1);
        assert_eq!(large.as_ptr().read(), 2);
    }
}

#[test]
fn destroy_refuses_while_other_threads_are_bound() {
    let km = Arc::new(km(remote(), 2));
    let (tx, rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let h = {
        let km = km.clone();
        std::thread::spawn(move || {
            let p = km.kmalloc_local(10).unwrap().as_ptr() as usize;
            // SAFETY: allocated from km, freed once.
            unsafe { km.kfree_local(p as *mut u8) };
            drop(km);
            tx.send(()).unwrap();
            done_rx.recv().unwrap(); // stay alive, still bound
        })
    };
    rx.recv().unwrap();
    let km = Arc::try_unwrap(km).unwrap();
    match km.destroy() {
        Err(DestroyError::InUse { references }) => assert_eq!(references, 1),
        other => panic!("expected InUse, got {other:?}"),
    }
    done_tx.send(()).unwrap();
    h.join().unwrap();
}

#[test]
fn several_instances_of_different_configs_coexist_on_one_thread() {
    let a: Kmalloc<Standard> = km(Mode::Queue, 2);
    let b: Kmalloc<NoQpw> = Kmalloc::builder()
        .nr_cpus(2)
        .class_bytes(64 << 20)
        .build()
        .unwrap();
    let c: Kmalloc<qpw::Rt> = Kmalloc::builder()
        .mode(remote())
        .nr_cpus(2)
        .class_bytes(64 << 20)
        .build()
        .unwrap();
    let mut live = Vec::new();
    for i in 0..3000usize {
        let size = i % 300;
        live.push((0, a.kmalloc_local(size).unwrap().as_ptr()));
        live.push((1, b.kmalloc_local(size).unwrap().as_ptr()));
        live.push((2, c.kmalloc_local(size).unwrap().as_ptr()));
    }
    for (which, p) in live {
        // SAFETY: each freed once by the instance that allocated it.
        unsafe {
            match which {
                0 => a.kfree_local(p),
                1 => b.kfree_local(p),
                _ => c.kfree_local(p),
            }
        }
    }
    for s in [a.stats(), b.stats()] {
        assert_eq!(s.threads_bound, 1);
        assert_eq!(s.shared_path.total(), 0, "{s}");
    }
    assert_eq!(c.stats().threads_bound, 1);
    a.destroy().unwrap();
    b.destroy().unwrap();
    c.destroy().unwrap();
}

#[cfg(debug_assertions)]
mod debug_checks {
    use super::*;

    #[test]
    #[should_panic(expected = "double free")]
    fn kfree_twice_is_detected() {
        let km = km(remote(), 1);
        let p = km.kmalloc_local(64).unwrap().as_ptr();
        // SAFETY: deliberately wrong; detected before any change.
        unsafe {
            km.kfree_local(p);
            km.kfree_local(p);
        }
    }

    #[test]
    #[should_panic(expected = "not a live large allocation")]
    fn large_kfree_twice_is_detected() {
        let km = km(remote(), 1);
        let p = km.kmalloc_local(100_000).unwrap().as_ptr();
        // SAFETY: deliberately wrong; detected before any change.
        unsafe {
            km.kfree_local(p);
            km.kfree_local(p);
        }
    }

    #[test]
    #[should_panic(expected = "foreign pointer")]
    fn kfree_of_a_foreign_pointer_is_detected() {
        let km = km(remote(), 1);
        let b = Box::new(5u64);
        // SAFETY: deliberately wrong; detected before any change.
        unsafe { km.kfree_local(Box::into_raw(b).cast()) };
    }
}

/// The decay, run by hand on an instance without a thread: freed objects'
/// slabs and cached large mappings go back after the delay's passes, and
/// not before.
#[test]
fn decay_passes_release_what_stayed_free_for_the_delay() {
    let km: Kmalloc = Kmalloc::builder()
        .mode(qpw::Mode::Queue)
        .nr_cpus(2)
        .size_classes(qpw_mm::SizeClasses::Fine)
        .class_bytes(64 << 20)
        .build()
        .unwrap();
    km.set_decay(Some(std::time::Duration::from_millis(100)));
    let ps: Vec<_> = (0..20_000)
        .map(|_| km.kmalloc_local(1000).unwrap().as_ptr())
        .collect();
    let big = km.kmalloc_local(600 << 10).unwrap().as_ptr();
    for p in ps {
        // SAFETY: allocated above, freed once.
        unsafe { km.kfree_local(p) };
    }
    // SAFETY: as above.
    unsafe { km.kfree_local(big) };
    km.unbind_local();
    let s = km.stats();
    assert!(s.large_cached_bytes >= 600 << 10, "{s}");
    // One pass: nothing has been free for the delay yet.
    assert_eq!(km.decay().bytes_released, 0);
    let mut released = 0;
    for _ in 0..2 * qpw_mm::decay::PASSES_PER_DELAY {
        released += km.decay().bytes_released;
    }
    let s = km.stats();
    assert!(released >= 15 << 20, "released {released}\n{s}");
    assert_eq!(s.large_cached_bytes, 0, "{s}");
    assert_eq!(s.total().slabs_empty, 0, "{s}");
    km.destroy().unwrap();
}

/// The decay drains a slot that went idle holding sheaves, through qpw's
/// drain: in `remote` mode the pass runs the work itself, under the slot's
/// lock, and never signals the owner.
#[test]
fn decay_drains_an_idle_slot_without_interrupting_it_in_remote_mode() {
    if !cfg!(feature = "qpw") {
        return; // only `queue` exists without qpw
    }
    let km: std::sync::Arc<Kmalloc> = std::sync::Arc::new(
        Kmalloc::builder()
            .mode(qpw::Mode::Remote)
            .nr_cpus(2)
            .size_classes(qpw_mm::SizeClasses::Fine)
            .class_bytes(64 << 20)
            .build()
            .unwrap(),
    );
    km.set_decay(Some(std::time::Duration::from_millis(100)));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let k = km.clone();
    let owner = std::thread::spawn(move || {
        let ps: Vec<_> = (0..1000).map(|_| k.kmalloc_local(64).unwrap()).collect();
        for p in ps {
            // SAFETY: allocated above, freed once.
            unsafe { k.kfree_local(p.as_ptr()) };
        }
        ready_tx.send(()).unwrap();
        // Idle, still bound, its sheaves full of objects.
        done_rx.recv().unwrap();
        k.unbind_local();
    });
    ready_rx.recv().unwrap();
    let before = km.stats();
    for _ in 0..qpw_mm::decay::PASSES_PER_DELAY + 2 {
        km.decay();
    }
    let after = km.stats();
    done_tx.send(()).unwrap();
    owner.join().unwrap();
    assert!(
        after.decay_slot_drains >= 1,
        "no idle slot drained\n{after}"
    );
    assert_eq!(
        after.work.fences(),
        before.work.fences(),
        "the owner was signalled"
    );
    assert!(
        after.work.works_remote > before.work.works_remote,
        "the pass did not run the drain itself\n{after}"
    );
    assert!(after.total().sheaves_handed_off > before.total().sheaves_handed_off);
    std::sync::Arc::try_unwrap(km).unwrap().destroy().unwrap();
}

/// An exited thread leaves its cached objects in its slot, warm for the
/// next thread that binds it; if none does, the decay drains the slot
/// (free, so the pass runs the drain itself) and the objects go back to
/// their slabs, in every mode.
#[test]
fn an_exited_threads_cached_objects_decay_from_its_free_slot() {
    let modes = if cfg!(feature = "qpw") {
        vec![Mode::Queue, Mode::Remote, Mode::Defer]
    } else {
        vec![Mode::Queue]
    };
    for mode in modes {
        let km: Kmalloc = Kmalloc::builder()
            .mode(mode.clone())
            .nr_cpus(4)
            .build()
            .unwrap();
        km.set_decay(Some(std::time::Duration::from_millis(10)));
        // Joined (pthread_join), so the thread's exit hook has run: a
        // scope's end alone does not wait for thread-local destructors.
        std::thread::scope(|s| {
            s.spawn(|| {
                let ps: Vec<_> = (0..1000).map(|_| km.kmalloc_local(64).unwrap()).collect();
                for p in ps {
                    // SAFETY: from `km`, freed once.
                    unsafe { km.kfree_local(p.as_ptr()) };
                }
            })
            .join()
            .unwrap();
        });
        let out = |km: &Kmalloc| -> usize {
            km.stats()
                .classes
                .iter()
                .map(|c| c.objects_out_of_slabs)
                .sum()
        };
        assert!(out(&km) > 0, "{mode}: nothing cached after the thread");
        for _ in 0..4 * qpw_mm::decay::PASSES_PER_DELAY {
            km.decay();
        }
        assert_eq!(
            out(&km),
            0,
            "{mode}: an exited thread's cached objects never went back\n{}",
            km.stats()
        );
        km.destroy().unwrap();
    }
}

/// Mappings up to 4 MiB are cached when freed (no `munmap` on the free
/// path); a longer one is unmapped at once, counted under its reason, and
/// never sits resident in the cache beside its successor.
#[test]
fn mappings_over_four_mib_are_unmapped_when_freed() {
    let km: Kmalloc = Kmalloc::builder()
        .mode(remote())
        .nr_cpus(2)
        .size_classes(qpw_mm::SizeClasses::Fine)
        .build()
        .unwrap();
    for (size, cached) in [(3 << 20, true), (8 << 20, false)] {
        let before = km.stats();
        let p = km.kmalloc_local(size).unwrap().as_ptr();
        pattern(p, 4096, 7);
        // SAFETY: allocated above, freed once.
        unsafe { km.kfree_local(p) };
        let s = km.stats();
        assert_eq!(
            s.large_cached_bytes > before.large_cached_bytes,
            cached,
            "{size} bytes: cached {cached}?\n{s}"
        );
        assert_eq!(
            s.large_too_long - before.large_too_long,
            u64::from(!cached),
            "{size} bytes\n{s}"
        );
    }
    km.unbind_local();
    km.destroy().unwrap();
}
