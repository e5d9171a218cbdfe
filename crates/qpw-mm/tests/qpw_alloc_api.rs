//! `QpwAlloc`'s own API beside `GlobalAlloc`, on an instance that is not the
//! program's global allocator: `usable_size` (the C ABI's
//! `malloc_usable_size`).

use qpw_mm::QpwAlloc;
use std::alloc::{GlobalAlloc, Layout};

static A: QpwAlloc = QpwAlloc::new().with_nr_cpus(8);

#[test]
fn usable_size_covers_the_request_and_is_writable() {
    // SAFETY: null is allowed.
    assert_eq!(unsafe { A.usable_size(std::ptr::null_mut()) }, 0);
    let sizes = [
        0usize,
        1,
        8,
        9,
        100,
        257,
        1000,
        4097,
        8192,
        8193,
        16 << 10,
        100_000,
        300 << 10,
        1 << 20,
        (3 << 20) + 5,
    ];
    for &size in &sizes {
        for align in [8usize, 64, 4096] {
            let layout = Layout::from_size_align(size, align).unwrap();
            // SAFETY: a valid layout (GlobalAlloc allows size 0 here: the
            // allocator serves it with a distinct object).
            let p = unsafe { A.alloc(layout) };
            assert!(!p.is_null(), "alloc({size}, {align})");
            assert_eq!(p as usize % align, 0);
            // SAFETY: `p` is live, from A.
            let n = unsafe { A.usable_size(p) };
            assert!(n >= size.max(1), "usable {n} < requested {size}");
            // Every usable byte is writable.
            // SAFETY: `n` usable bytes at `p`.
            unsafe { p.write_bytes(0xa5, n) };
            // SAFETY: allocated above with `layout`.
            unsafe { A.dealloc(p, layout) };
        }
    }
}

#[test]
fn usable_size_follows_realloc() {
    let layout = Layout::from_size_align(100, 8).unwrap();
    // SAFETY: a valid layout.
    let p = unsafe { A.alloc(layout) };
    assert!(!p.is_null());
    // SAFETY: `p` is live, from A, allocated with `layout`.
    let q = unsafe { A.realloc(p, layout, 50_000) };
    assert!(!q.is_null());
    // SAFETY: `q` is live.
    assert!(unsafe { A.usable_size(q) } >= 50_000);
    // SAFETY: `q` was allocated with size 50_000, align 8.
    unsafe { A.dealloc(q, Layout::from_size_align(50_000, 8).unwrap()) };
}

/// Objects up to 1 MiB make no system call in the steady state: sizes up
/// to 256 KiB come from slabs (no new slab carved, so no `mprotect`), larger
/// ones from the mapping cache (no `mmap`/`munmap`). Before, every object
/// over 8 KiB was its own `mmap` and every free a `munmap`.
#[test]
fn mid_and_large_objects_make_no_system_call_in_the_steady_state() {
    static B: QpwAlloc = QpwAlloc::new().with_nr_cpus(4);
    // The decay's own unmaps are not on the alloc/free path; keep them out
    // of the count.
    B.set_decay(None);
    let sizes = [
        9000usize,
        16 << 10,
        50_000,
        64 << 10,
        200_000,
        256 << 10,
        300_000,
        512 << 10,
        1 << 20,
    ];
    let round = || {
        let mut ps = Vec::new();
        for &s in &sizes {
            let l = Layout::from_size_align(s, 8).unwrap();
            // SAFETY: a valid layout.
            let p = unsafe { B.alloc(l) };
            assert!(!p.is_null());
            // SAFETY: `s` writable bytes.
            unsafe { p.write_bytes(1, s) };
            ps.push((p, l));
        }
        for (p, l) in ps {
            // SAFETY: allocated above with `l`.
            unsafe { B.dealloc(p, l) };
        }
    };
    round();
    round();
    let s0 = B.stats().unwrap();
    for _ in 0..1000 {
        round();
    }
    let s1 = B.stats().unwrap();
    assert_eq!(
        (s1.large_maps, s1.large_unmaps, s1.total().slabs_carved),
        (s0.large_maps, s0.large_unmaps, s0.total().slabs_carved),
        "system calls in the steady state:\nbefore {s0}\nafter {s1}"
    );
    assert!(s1.large_cache_hits >= s0.large_cache_hits + 3000);
    assert_eq!(s1.unmap_errors, 0);
}

/// `set_decay` before the first allocation and after: `None` disables the
/// decay, a delay re-enables it.
#[test]
fn set_decay_before_and_after_first_use() {
    static D: QpwAlloc = QpwAlloc::new().with_nr_cpus(4);
    assert_eq!(D.decay_delay(), Some(std::time::Duration::from_secs(1)));
    D.set_decay(None);
    assert_eq!(D.decay_delay(), None);
    let l = Layout::from_size_align(100, 8).unwrap();
    // SAFETY: a valid layout.
    let p = unsafe { D.alloc(l) };
    // SAFETY: allocated above.
    unsafe { D.dealloc(p, l) };
    assert_eq!(D.decay_delay(), None, "the build forgot set_decay(None)");
    let k = D.kmalloc().unwrap();
    assert_eq!(k.decay().bytes_released, 0, "a disabled decay ran");
    D.set_decay(Some(std::time::Duration::from_millis(40)));
    assert_eq!(D.decay_delay(), Some(std::time::Duration::from_millis(40)));
}
