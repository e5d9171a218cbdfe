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
