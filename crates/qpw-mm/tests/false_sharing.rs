//! Objects smaller than a cache line that two threads are handed never
//! share a line, even right after each freed an object the other side's
//! neighbour came from
//! (cache-scratch: a thread allocates two neighbours and gives one to each
//! of two threads, which free it and then allocate and write their own).
//! The freed object enters the freeing slot's sheaf; before line-private
//! classes, the next allocation handed it straight back, and both threads
//! wrote one line.

use qpw::{Domain, Mode};
use qpw_mm::{Kmalloc, KmemCache, SizeClasses};
use std::collections::BTreeSet;
use std::sync::{Arc, Barrier};

const LINE: usize = 64;

fn lines(ptrs: &[usize], size: usize) -> BTreeSet<usize> {
    ptrs.iter()
        .flat_map(|&p| (p / LINE)..=((p + size - 1) / LINE))
        .collect()
}

/// `remote` where the modes exist; `queue` when qpw is compiled out (what
/// these tests check holds in every mode).
fn mode() -> Mode {
    if cfg!(feature = "qpw") {
        Mode::Remote
    } else {
        Mode::Queue
    }
}

/// Slot 0 (this thread) allocates two neighbours; threads on slots 1 and 2
/// each free one, then allocate: `held` objects kept, and `cycles`
/// allocate-write-free rounds. Returns every address each thread got.
fn scratch_kmalloc(table: SizeClasses, size: usize, held: usize, cycles: usize) -> [Vec<usize>; 2] {
    let km: Arc<Kmalloc> = Arc::new(
        Kmalloc::builder()
            .nr_cpus(3)
            .mode(mode())
            .size_classes(table)
            .build()
            .unwrap(),
    );
    let mut me = km.domain().bind_unpinned(0).unwrap();
    let first = [
        km.kmalloc(&mut me, size).unwrap().as_ptr() as usize,
        km.kmalloc(&mut me, size).unwrap().as_ptr() as usize,
    ];
    let barrier = Arc::new(Barrier::new(2));
    let got: Vec<Vec<usize>> = (0..2)
        .map(|t| {
            let (km, barrier) = (km.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut owner = km.domain().bind_unpinned(t + 1).unwrap();
                // SAFETY: allocated above by slot 0, freed once, here.
                unsafe { km.kfree(&mut owner, first[t] as *mut u8) };
                let mut mine = Vec::new();
                let mut keep = Vec::new();
                for _ in 0..held {
                    let p = km.kmalloc(&mut owner, size).unwrap().as_ptr();
                    // SAFETY: `size` writable bytes.
                    unsafe { p.write_bytes(t as u8, size) };
                    mine.push(p as usize);
                    keep.push(p);
                }
                for _ in 0..cycles {
                    let p = km.kmalloc(&mut owner, size).unwrap().as_ptr();
                    // SAFETY: as above; freed once right after.
                    unsafe {
                        p.write_bytes(t as u8, size);
                        km.kfree(&mut owner, p);
                    }
                    mine.push(p as usize);
                }
                // Both threads hold their objects until both are done.
                barrier.wait();
                for p in keep {
                    // SAFETY: allocated above, freed once.
                    unsafe { km.kfree(&mut owner, p) };
                }
                mine
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    drop(me);
    [got[0].clone(), got[1].clone()]
}

fn assert_disjoint(what: &str, size: usize, got: &[Vec<usize>; 2]) {
    let (a, b) = (lines(&got[0], size), lines(&got[1], size));
    let shared: Vec<_> = a.intersection(&b).map(|l| l * LINE).collect();
    assert!(
        shared.is_empty(),
        "{what}, {size}-byte objects: the two threads were handed objects on the same \
         cache line(s) {shared:x?}\nthread 1 got {:x?}\nthread 2 got {:x?}",
        got[0],
        got[1]
    );
}

#[test]
fn kmalloc_threads_share_no_line_after_cross_frees() {
    for (table, sizes) in [
        (SizeClasses::Fine, &[8usize, 16, 24, 32, 40, 48, 56][..]),
        (SizeClasses::Kernel, &[8, 16, 32][..]),
    ] {
        for &size in sizes {
            let got = scratch_kmalloc(table, size, 0, 50);
            assert_disjoint(&format!("{table:?} scratch"), size, &got);
            let got = scratch_kmalloc(table, size, 100, 50);
            assert_disjoint(&format!("{table:?} scratch with 100 held"), size, &got);
        }
    }
}

#[test]
fn kmem_cache_threads_share_no_line_after_cross_frees() {
    for size in [8usize, 24, 48, 56] {
        let domain: Domain = Domain::builder().mode(mode()).nr_cpus(3).build().unwrap();
        let cache = Arc::new(KmemCache::new(&domain, size).unwrap());
        let size = cache.object_size();
        let mut me = domain.bind_unpinned(0).unwrap();
        let first = [
            cache.alloc(&mut me).unwrap().as_ptr() as usize,
            cache.alloc(&mut me).unwrap().as_ptr() as usize,
        ];
        let barrier = Arc::new(Barrier::new(2));
        let got: Vec<Vec<usize>> = (0..2)
            .map(|t| {
                let (cache, barrier, domain) = (cache.clone(), barrier.clone(), domain.clone());
                std::thread::spawn(move || {
                    let mut owner = domain.bind_unpinned(t + 1).unwrap();
                    let f = std::ptr::NonNull::new(first[t] as *mut u8).unwrap();
                    // SAFETY: allocated above by slot 0, freed once, here.
                    unsafe { cache.free(&mut owner, f) };
                    let mut mine = Vec::new();
                    let mut keep = Vec::new();
                    for _ in 0..20 {
                        let p = cache.alloc(&mut owner).unwrap();
                        mine.push(p.as_ptr() as usize);
                        keep.push(p);
                    }
                    barrier.wait();
                    // SAFETY: allocated above, freed once.
                    unsafe { cache.free_bulk(&mut owner, &keep) };
                    mine
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect();
        drop(me);
        assert_disjoint("KmemCache", size, &[got[0].clone(), got[1].clone()]);
    }
}
