//! One name for the concept: every per-CPU cache of qpw-mm drains all its
//! slots with `drain_all`; the kernel's names (`lru_add_drain_all`,
//! `drain_all_stock`, `flush_all`) are the same call. And the statistics a
//! user prints explain their table.

use qpw::{Config, Domain, Mode, Standard};
use qpw_mm::{lru::Lru, stock::Stock, Kmalloc, KmemCache};
use std::alloc::Layout;

/// `remote` where qpw is compiled in, else `queue` (CI runs the tests
/// with `--no-default-features` too).
fn domain() -> Domain {
    let mode = if Standard::QPW {
        Mode::Remote
    } else {
        Mode::Queue
    };
    Domain::builder().mode(mode).nr_cpus(2).build().unwrap()
}

#[test]
fn lru_drain_all_and_its_kernel_name_empty_every_batch() {
    let d = domain();
    let lru = Lru::new(&d);
    let mut me = d.bind_unpinned(0).unwrap();
    lru.add(&mut me, 1u32);
    lru.drain_all().unwrap();
    assert_eq!(lru.shared_len(), 1);
    lru.add(&mut me, 2u32);
    lru.lru_add_drain_all().unwrap();
    assert_eq!(lru.shared_len(), 2);
}

#[test]
fn stock_drain_all_and_its_kernel_name_return_the_stock() {
    let d = domain();
    let stock = Stock::new(&d, 1000);
    let mut me = d.bind_unpinned(0).unwrap();
    stock.charge(&mut me, 1).unwrap();
    stock.drain_all().unwrap();
    assert_eq!(stock.usage(), 1);
    stock.charge(&mut me, 1).unwrap();
    stock.drain_all_stock().unwrap();
    assert_eq!(stock.usage(), 2);
}

#[test]
fn caches_drain_all_and_flush_all_hand_every_sheaf_back() {
    let d = domain();
    let cache = KmemCache::new(&d, 64).unwrap();
    let mut me = d.bind_unpinned(0).unwrap();
    let p = cache.alloc(&mut me).unwrap();
    // SAFETY: `p` came from this cache and is freed once.
    unsafe { cache.free(&mut me, p) };
    drop(me);
    cache.drain_all().unwrap();
    cache.flush_all().unwrap();

    let km = Kmalloc::new(&d).unwrap();
    km.drain_all().unwrap();
    km.flush_all().unwrap();
    let mut me = d.bind_unpinned(1).unwrap();
    let layout = Layout::from_size_align(100, 8).unwrap();
    let p = km.alloc(&mut me, layout).unwrap();
    // SAFETY: `p` came from this instance and is freed once.
    unsafe { km.kfree(&mut me, p.as_ptr()) };
    let table = km.stats().to_string();
    assert!(
        table.contains("per class") && table.contains("slow a/f = allocations"),
        "the class table has no legend:\n{table}"
    );
}
