//! Sizes at the edges of every allocator API: zero, the largest class and
//! just above it, and sizes no machine can map (`usize::MAX`, a little
//! below it, `isize::MAX`, 2^62). Each gives an object, a clear error or
//! null; never a panic, a crash or an arithmetic overflow (the test profile
//! checks overflow). A failed reallocation leaves the object as it was.

use qpw::{Domain, Mode};
use qpw_mm::lru::{Lru, MAX_BATCH};
use qpw_mm::stock::Stock;
use qpw_mm::{
    default_depot_max_full, default_sheaf_capacity, GlobalMode, Kmalloc, KmemCache, QpwAlloc,
    SlabError, KMALLOC_MAX_CACHE_SIZE, MAX_ALIGN, MAX_OBJECT_SIZE, MAX_SHEAF_CAPACITY,
};
use std::alloc::{GlobalAlloc, Layout};
use std::ptr::{null_mut, NonNull};

/// Sizes that can never be mapped: beyond any user address space, or not
/// even a valid `Layout`.
const HUGE: [usize; 10] = [
    usize::MAX,
    usize::MAX - 1,
    usize::MAX - 7,
    usize::MAX - 4095,
    usize::MAX - 8192,
    isize::MAX as usize + 1,
    isize::MAX as usize,
    isize::MAX as usize - 7,
    isize::MAX as usize - 4095,
    1 << 62,
];

/// Valid layouts (size rounded up to the alignment fits `isize`) that can
/// never be mapped.
fn huge_layouts() -> Vec<Layout> {
    [
        (isize::MAX as usize - 7, 8),
        (isize::MAX as usize - 4095, 4096),
        (1 << 62, 8),
        (1 << 62, 1 << 62),
        (1, 1 << 62),
        (0, 1 << 62),
    ]
    .into_iter()
    .map(|(s, a)| Layout::from_size_align(s, a).unwrap())
    .collect()
}

fn domain(nr: usize) -> Domain {
    Domain::builder()
        .mode(Mode::Queue)
        .nr_cpus(nr)
        .build()
        .unwrap()
}

fn km() -> Kmalloc {
    Kmalloc::builder()
        .domain(&domain(2))
        .class_bytes(4 << 20)
        .build()
        .unwrap()
}

fn fill(p: *mut u8, n: usize, byte: u8) {
    // SAFETY: the caller passes a live allocation of at least `n` bytes.
    unsafe { std::ptr::write_bytes(p, byte, n) };
}

fn holds(p: *mut u8, n: usize, byte: u8) -> bool {
    // SAFETY: as in fill.
    unsafe { std::slice::from_raw_parts(p, n) }
        .iter()
        .all(|&b| b == byte)
}

#[test]
fn kmalloc_of_an_unmappable_size_is_none() {
    let km = km();
    let mut me = km.domain().bind_unpinned(0).unwrap();
    for s in HUGE {
        assert!(km.kmalloc(&mut me, s).is_none(), "kmalloc({s})");
        assert!(km.kmalloc_local(s).is_none(), "kmalloc_local({s})");
        let mut out = [null_mut(); 3];
        assert_eq!(
            km.kmalloc_bulk(&mut me, s, &mut out),
            0,
            "kmalloc_bulk({s})"
        );
        assert!(out.iter().all(|p| p.is_null()));
        // SAFETY: a null pointer allocates.
        assert!(unsafe { km.krealloc(&mut me, null_mut(), s) }.is_none());
        // SAFETY: as above.
        assert!(unsafe { km.krealloc_local(null_mut(), s) }.is_none());
    }
    for l in huge_layouts() {
        assert!(km.alloc(&mut me, l).is_none(), "alloc({l:?})");
        assert!(km.alloc_local(l).is_none(), "alloc_local({l:?})");
    }
    let st = km.stats();
    assert_eq!(
        (st.large_allocs, st.large_frees, st.large_live_bytes),
        (0, 0, 0)
    );
    drop(me);
    km.destroy().unwrap();
}

#[test]
fn zero_the_largest_class_and_just_above_it() {
    let km = km();
    let mut me = km.domain().bind_unpinned(0).unwrap();
    let z1 = km.kmalloc(&mut me, 0).unwrap().as_ptr();
    let z2 = km.kmalloc(&mut me, 0).unwrap().as_ptr();
    let z3 = km.kmalloc_local(0).unwrap().as_ptr();
    assert!(
        z1 != z2 && z2 != z3 && z1 != z3,
        "zero-size objects are distinct"
    );
    let top = km
        .kmalloc(&mut me, KMALLOC_MAX_CACHE_SIZE)
        .unwrap()
        .as_ptr();
    let above = km
        .kmalloc(&mut me, KMALLOC_MAX_CACHE_SIZE + 1)
        .unwrap()
        .as_ptr();
    let aligned = km
        .alloc(
            &mut me,
            Layout::from_size_align(0, KMALLOC_MAX_CACHE_SIZE).unwrap(),
        )
        .unwrap()
        .as_ptr();
    assert_eq!(aligned as usize % KMALLOC_MAX_CACHE_SIZE, 0);
    // SAFETY: all live, from this instance.
    unsafe {
        assert_eq!(km.ksize(z1), 8);
        assert_eq!(km.ksize(top), KMALLOC_MAX_CACHE_SIZE);
        assert!(km.ksize(above) > KMALLOC_MAX_CACHE_SIZE);
    }
    fill(top, KMALLOC_MAX_CACHE_SIZE, 0x5a);
    fill(above, KMALLOC_MAX_CACHE_SIZE + 1, 0xa5);
    assert_eq!(km.stats().large_allocs, 1);
    // SAFETY: each freed once; null is ignored.
    unsafe {
        for p in [z1, z2, top, above, aligned, null_mut()] {
            km.kfree(&mut me, p);
        }
        km.kfree_local(z3);
        km.kfree_local(null_mut());
    }
    drop(me);
    km.destroy().unwrap();
}

#[test]
fn realloc_to_an_unmappable_size_keeps_the_object() {
    let km = km();
    let mut me = km.domain().bind_unpinned(0).unwrap();
    for (size, byte) in [
        (0, 0u8),
        (100, 0x11),
        (KMALLOC_MAX_CACHE_SIZE, 0x22),
        (20_000, 0x33),
    ] {
        let mut p = km.kmalloc(&mut me, size).unwrap().as_ptr();
        fill(p, size, byte);
        for s in HUGE {
            // SAFETY: `p` is live; on failure it stays so.
            let r = unsafe { km.krealloc(&mut me, p, s) };
            assert!(r.is_none(), "krealloc({size} -> {s})");
            // SAFETY: as above.
            let r = unsafe { km.realloc(&mut me, p, 8, s) };
            assert!(r.is_none(), "realloc({size} -> {s})");
            // SAFETY: as above.
            let r = unsafe { km.krealloc_local(p, s) };
            assert!(r.is_none(), "krealloc_local({size} -> {s})");
            assert!(
                holds(p, size, byte),
                "a failed realloc to {s} changed the {size}-byte object"
            );
            // SAFETY: still live.
            assert!(unsafe { km.ksize(p) } >= size);
        }
        // Down to zero and back: the object moves, nothing is lost.
        // SAFETY: `p` is live and replaced by the result.
        p = unsafe { km.krealloc(&mut me, p, 0) }.unwrap().as_ptr();
        // SAFETY: as above.
        p = unsafe { km.krealloc_local(p, size) }.unwrap().as_ptr();
        fill(p, size, byte);
        // SAFETY: live, freed once.
        unsafe { km.kfree(&mut me, p) };
    }
    let st = km.stats();
    assert_eq!(st.large_allocs, st.large_frees);
    drop(me);
    km.destroy().unwrap();
}

#[test]
fn kmalloc_reservations_too_big_for_the_address_space_are_errors() {
    for b in [usize::MAX, usize::MAX / 2, 1 << 62, 1 << 59] {
        let r = Kmalloc::builder().domain(&domain(1)).class_bytes(b).build();
        match r {
            Err(e @ (SlabError::BadMaxBytes { .. } | SlabError::Map { .. })) => {
                assert!(!e.to_string().is_empty())
            }
            Err(e) => panic!("class_bytes({b}): unexpected error {e}"),
            Ok(_) => panic!("class_bytes({b}) reserved 13 times that"),
        }
    }
    // Zero means the smallest span.
    Kmalloc::builder()
        .domain(&domain(1))
        .class_bytes(0)
        .build()
        .unwrap()
        .destroy()
        .unwrap();
}

#[test]
fn cache_object_sizes_zero_and_huge_are_refused_by_name() {
    let d = domain(1);
    for s in [
        0,
        usize::MAX,
        usize::MAX - 7,
        isize::MAX as usize,
        MAX_OBJECT_SIZE + 1,
    ] {
        match KmemCache::new(&d, s) {
            Err(e @ SlabError::BadObjectSize { size, max }) => {
                assert_eq!((size, max), (s, MAX_OBJECT_SIZE));
                let msg = e.to_string();
                assert!(msg.contains(&format!("object size {s}")), "{msg}");
            }
            r => panic!("KmemCache::new(size {s}): {r:?}"),
        }
    }
    // The largest object size works, at the largest alignment too.
    let c = KmemCache::builder(&d, MAX_OBJECT_SIZE - 1)
        .align(MAX_ALIGN)
        .max_bytes(64 << 20)
        .build()
        .unwrap();
    assert_eq!(c.object_size(), MAX_OBJECT_SIZE);
    let mut me = d.bind_unpinned(0).unwrap();
    let p = c.alloc(&mut me).unwrap();
    assert_eq!(p.as_ptr() as usize % MAX_ALIGN, 0);
    fill(p.as_ptr(), MAX_OBJECT_SIZE, 0x77);
    // SAFETY: live, freed once.
    unsafe { c.free(&mut me, p) };
    drop(me);
    c.destroy().unwrap();
    // The smallest.
    KmemCache::new(&d, 1).unwrap().destroy().unwrap();
}

#[test]
fn cache_parameters_at_the_edges_are_refused_by_name() {
    let d = domain(1);
    for a in [0, 3, MAX_ALIGN * 2, 1 << 63, usize::MAX] {
        match KmemCache::builder(&d, 64).align(a).build() {
            Err(SlabError::BadAlign { align, max }) => assert_eq!((align, max), (a, MAX_ALIGN)),
            r => panic!("align {a}: {r:?}"),
        }
    }
    for cap in [0, MAX_SHEAF_CAPACITY + 1, usize::MAX] {
        match KmemCache::builder(&d, 64).sheaf_capacity(cap).build() {
            Err(SlabError::BadSheafCapacity { capacity, .. }) => assert_eq!(capacity, cap),
            r => panic!("sheaf_capacity {cap}: {r:?}"),
        }
    }
    for b in [0, 1] {
        match KmemCache::builder(&d, 64).max_bytes(b).build() {
            Err(SlabError::BadMaxBytes { max_bytes, .. }) => assert_eq!(max_bytes, b),
            r => panic!("max_bytes {b}: {r:?}"),
        }
    }
    for b in [usize::MAX, usize::MAX - 4095, 1 << 62] {
        match KmemCache::builder(&d, 64).max_bytes(b).build() {
            Err(SlabError::Map { .. }) => {}
            r => panic!("max_bytes {b}: {r:?}"),
        }
    }
    // Any depot cap works.
    for n in [0, usize::MAX] {
        let c = KmemCache::builder(&d, 64)
            .sheaf_capacity(1)
            .depot_max_full(n)
            .max_bytes(1 << 20)
            .build()
            .unwrap();
        let mut me = d.bind_unpinned(0).unwrap();
        let ps: Vec<NonNull<u8>> = (0..10).map(|_| c.alloc(&mut me).unwrap()).collect();
        // SAFETY: live, distinct, freed once.
        unsafe { c.free_bulk(&mut me, &ps) };
        drop(me);
        c.shrink().unwrap();
        c.destroy().unwrap();
    }
}

#[test]
fn default_parameters_take_any_size() {
    for size in [0, 1, 8, 4096, MAX_OBJECT_SIZE, usize::MAX] {
        let cap = default_sheaf_capacity(size);
        assert!((4..=64).contains(&cap), "size {size}: capacity {cap}");
        for capacity in [0, 1, cap, usize::MAX] {
            assert!(default_depot_max_full(size, capacity) >= 8);
        }
    }
    assert_eq!(default_depot_max_full(64, 64), 256);
}

#[test]
fn lru_and_stock_limits_at_the_edges() {
    let d = domain(1);
    for b in [0, MAX_BATCH + 1, usize::MAX] {
        let e = Lru::<u8>::with_batch(&d, b).unwrap_err();
        assert_eq!(e.size, b);
        assert!(e.to_string().contains(&b.to_string()), "{e}");
    }
    let mut me = d.bind_unpinned(0).unwrap();
    let s = Stock::new(&d, 100);
    let e = s.charge(&mut me, u64::MAX).unwrap_err();
    assert_eq!((e.requested, e.limit), (u64::MAX, 100));
    assert!(s.uncharge(&mut me, u64::MAX).is_err());
    assert_eq!(s.usage(), 0);
    // A limit and a batch of u64::MAX: the counter saturates at the limit,
    // nothing wraps.
    let s = Stock::with_batch(&d, u64::MAX, u64::MAX);
    s.charge(&mut me, u64::MAX).unwrap();
    assert_eq!(s.usage(), u64::MAX);
    assert!(s.charge(&mut me, 1).is_err());
    s.uncharge(&mut me, u64::MAX).unwrap();
    drop(me);
    s.drain_all_stock().unwrap();
    assert_eq!((s.usage(), s.underflows()), (0, 0));
    // Nothing to stock, nothing allowed.
    let mut me = d.bind_unpinned(0).unwrap();
    let s = Stock::with_batch(&d, 0, 0);
    assert!(s.charge(&mut me, 1).is_err());
    s.charge(&mut me, 0).unwrap();
    assert_eq!(s.usage(), 0);
}

static ALLOC: QpwAlloc = QpwAlloc::new().with_nr_cpus(4).with_mode(GlobalMode::Queue);

#[test]
fn global_alloc_of_a_huge_valid_layout_is_null() {
    for l in huge_layouts() {
        // Zero-size layouts are outside GlobalAlloc's contract: skipped.
        if l.size() > 0 {
            // SAFETY: a valid layout of non-zero size.
            let p = unsafe { ALLOC.alloc(l) };
            assert!(p.is_null(), "alloc({l:?})");
            // SAFETY: as above.
            let p = unsafe { ALLOC.alloc_zeroed(l) };
            assert!(p.is_null(), "alloc_zeroed({l:?})");
        }
    }
    for (size, align, byte) in [
        (1, 1, 1u8),
        (64, 8, 2),
        (KMALLOC_MAX_CACHE_SIZE, KMALLOC_MAX_CACHE_SIZE, 3),
        (KMALLOC_MAX_CACHE_SIZE + 1, 8, 4),
        (1, 16384, 5),
    ] {
        let l = Layout::from_size_align(size, align).unwrap();
        // SAFETY: a valid, non-zero layout.
        let p = unsafe { ALLOC.alloc(l) };
        assert!(!p.is_null() && p as usize % align == 0, "alloc({l:?})");
        fill(p, size, byte);
        // The largest new size the contract allows: rounded up to the
        // alignment it still fits `isize`.
        let new_size = (isize::MAX as usize - (align - 1)) & !(align - 1);
        // SAFETY: `p` is live with layout `l`; new_size is valid for it.
        let q = unsafe { ALLOC.realloc(p, l, new_size) };
        assert!(q.is_null(), "realloc({l:?} -> {new_size})");
        assert!(holds(p, size, byte), "a failed realloc changed the object");
        // SAFETY: live, allocated with `l`, freed once.
        unsafe { ALLOC.dealloc(p, l) };
    }
    let st = ALLOC.stats().expect("built by the first allocation");
    assert_eq!(st.large_allocs, st.large_frees);
}

/// `size_class` is total: sizes above the largest class are the large path.
#[test]
fn size_class_above_the_largest_class_is_none() {
    use qpw_mm::{size_class, KMALLOC_MAX_CACHE_SIZE, KMALLOC_SIZES};
    assert_eq!(size_class(0), Some(0));
    let top = size_class(KMALLOC_MAX_CACHE_SIZE).unwrap();
    assert_eq!(KMALLOC_SIZES[top], KMALLOC_MAX_CACHE_SIZE);
    for s in [KMALLOC_MAX_CACHE_SIZE + 1, usize::MAX / 2, usize::MAX] {
        assert_eq!(size_class(s), None, "{s}");
    }
}
