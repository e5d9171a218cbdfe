//! `shrink` returns memory: after freeing everything and shrinking, the
//! resident set (from /proc/self/statm) falls by most of what the objects
//! used. One test per binary, so no other test's memory moves the figure.

mod rss;
use qpw::{Domain, Mode};
use qpw_mm::{Kmalloc, KmemCache};
use rss::rss_bytes;
use std::ptr::NonNull;

/// `remote` where the modes exist; `queue` when qpw is compiled out (only
/// `queue` exists then, and what these tests check holds in every mode).
fn remote() -> Mode {
    if cfg!(feature = "qpw") {
        Mode::Remote
    } else {
        Mode::Queue
    }
}

const MIB: usize = 1 << 20;

#[test]
fn shrink_gives_freed_slabs_back_to_the_os() {
    // 1. A KmemCache, objects freed from two slots (local and remote).
    let domain: Domain = Domain::builder()
        .mode(Mode::Queue)
        .nr_cpus(2)
        .build()
        .unwrap();
    let cache = KmemCache::new(&domain, 256).unwrap();
    const N: usize = 64 * MIB / 256;
    let mut ptrs: Vec<usize> = Vec::with_capacity(N);
    let mut me = domain.bind_unpinned(0).unwrap();
    let before = rss_bytes();
    for i in 0..N {
        let p = cache.alloc(&mut me).unwrap().as_ptr();
        // SAFETY: a 256-byte object of ours: touch every page.
        unsafe { p.write_bytes(i as u8, 256) };
        ptrs.push(p as usize);
    }
    let peak = rss_bytes();
    let used = N * 256;
    assert!(
        peak >= before + used * 9 / 10,
        "allocating grew RSS: {before} -> {peak}"
    );
    let (half_a, half_b) = ptrs.split_at(N / 2);
    for &p in half_a {
        // SAFETY: allocated above, freed once.
        unsafe { cache.free(&mut me, NonNull::new(p as *mut u8).unwrap()) };
    }
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut other = domain.bind_unpinned(1).unwrap();
            for &p in half_b {
                // SAFETY: allocated above, freed once (from another slot).
                unsafe { cache.free(&mut other, NonNull::new(p as *mut u8).unwrap()) };
            }
            // This thread keeps its owner (and sheaves) while the main
            // thread shrinks: the drain has to reach it.
            other.idle(|| std::thread::sleep(std::time::Duration::from_millis(1)));
        });
    });
    let freed_no_shrink = rss_bytes();
    let report = cache.shrink().unwrap();
    let after = rss_bytes();
    eprintln!(
        "kmem_cache: before {} MiB, peak {} MiB, freed {} MiB, shrunk {} MiB ({} slabs, {} MiB released)",
        before / MIB,
        peak / MIB,
        freed_no_shrink / MIB,
        after / MIB,
        report.slabs_released,
        report.bytes_released / MIB
    );
    assert!(report.bytes_released >= used * 9 / 10, "{report:?}");
    assert!(
        peak.saturating_sub(after) >= used * 8 / 10,
        "RSS fell by {} of {} bytes the objects used",
        peak.saturating_sub(after),
        used
    );
    let s = cache.stats();
    assert_eq!(s.objects_out_of_slabs, 0, "{s:?}");
    // Released slabs are reused, and read as fresh memory.
    let p = cache.alloc(&mut me).unwrap();
    // SAFETY: allocated above, freed once.
    unsafe { cache.free(&mut me, p) };
    drop(me);
    cache.destroy().unwrap();

    // 2. The same through kmalloc's implicit API, mixed sizes.
    let km: Kmalloc = Kmalloc::builder()
        .mode(remote())
        .nr_cpus(2)
        .build()
        .unwrap();
    let before = rss_bytes();
    let mut used = 0;
    let mut ptrs = Vec::new();
    while used < 48 * MIB {
        let size = [64usize, 200, 1000, 3000][ptrs.len() % 4];
        let p = km.kmalloc_local(size).unwrap().as_ptr();
        // SAFETY: at least `size` bytes of ours.
        unsafe { p.write_bytes(1, size) };
        ptrs.push(p as usize);
        used += size;
    }
    let peak = rss_bytes();
    for p in ptrs {
        // SAFETY: allocated above, freed once.
        unsafe { km.kfree_local(p as *mut u8) };
    }
    let report = km.shrink().unwrap();
    let after = rss_bytes();
    eprintln!(
        "kmalloc: before {} MiB, peak {} MiB, shrunk {} MiB ({} MiB released)",
        before / MIB,
        peak / MIB,
        after / MIB,
        report.bytes_released / MIB
    );
    assert!(
        peak.saturating_sub(after) >= used * 7 / 10,
        "RSS fell by {} of {used}",
        peak.saturating_sub(after)
    );
    km.destroy().unwrap();
}
