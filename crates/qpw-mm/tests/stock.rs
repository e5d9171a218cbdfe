//! The charge stock under concurrency, in every mode and configuration: the
//! counter never exceeds the limit, and after `drain_all_stock` it equals the
//! outstanding charges exactly.

use qpw::{Config, Domain, Mode, NoQpw, Rt, SlotMode, Standard};
use qpw_mm::stock::{Stock, DEFAULT_BATCH};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

const OWNERS: usize = 8;
const OPS: usize = 20_000;
const LIMIT: u64 = 2000;

fn domain<C: Config>(mode: Mode, nr_cpus: usize) -> Domain<C> {
    qpw::Builder::<C>::new()
        .mode(mode)
        .nr_cpus(nr_cpus)
        .flush_timeout(Duration::from_secs(60))
        .build()
        .expect("domain")
}

/// Sets its flag when dropped, also by a panic: owners paced by the drainer
/// stop waiting for a drainer that failed, so a failure cannot hang the test.
struct SetOnDrop(Arc<AtomicBool>);
impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// xorshift64*: a small deterministic generator per thread.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// 8 owners charge and uncharge random amounts against a limit that makes
/// some charges fail, while a drainer drains in a loop and samples the
/// counter. The counter never exceeds the limit; at the end, after one
/// drain, it is exactly what the owners still hold, and a charge of exactly
/// the rest succeeds.
fn concurrent_charges<C: Config>(mode: Mode) {
    const OPS_PER_DRAIN: usize = 20;
    let domain = domain::<C>(mode, OWNERS + 1);
    let stock = Arc::new(Stock::<C>::new(&domain, LIMIT));
    let done = Arc::new(AtomicBool::new(false));
    let drains = Arc::new(AtomicUsize::new(0));
    let gone = Arc::new(AtomicBool::new(false));
    let owners: Vec<_> = (0..OWNERS)
        .map(|o| {
            let (domain, stock, drains, gone) =
                (domain.clone(), stock.clone(), drains.clone(), gone.clone());
            thread::spawn(move || {
                let mut me = domain.bind_unpinned(o).expect("bind");
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (o as u64 + 1));
                let mut held: Vec<u64> = Vec::new();
                let (mut ok, mut failed) = (0u64, 0u64);
                for i in 0..OPS {
                    if held.is_empty() || rng.below(100) < 55 {
                        let n = 1 + rng.below(60);
                        match stock.charge(&mut me, n) {
                            Ok(()) => {
                                held.push(n);
                                ok += 1;
                            }
                            Err(e) => {
                                assert_eq!(e.requested, n);
                                assert_eq!(e.limit, LIMIT);
                                failed += 1;
                            }
                        }
                    } else {
                        let k = rng.below(held.len() as u64) as usize;
                        let n = held.swap_remove(k);
                        stock
                            .uncharge(&mut me, n)
                            .expect("uncharging what was charged");
                    }
                    assert!(stock.usage() <= LIMIT);
                    if i % 8 == 0 {
                        me.quiescent();
                    }
                    // Paced by the drainer, waiting online or offline.
                    while drains.load(Ordering::Acquire) < i / OPS_PER_DRAIN
                        && !gone.load(Ordering::Acquire)
                    {
                        if (i / OPS_PER_DRAIN + o) % 3 == 0 {
                            me.idle(thread::yield_now);
                        } else {
                            me.quiescent();
                            thread::yield_now();
                        }
                    }
                }
                (held.iter().sum::<u64>(), ok, failed)
            })
        })
        .collect();
    let drainer = {
        let (stock, done, drains) = (stock.clone(), done.clone(), drains.clone());
        let gone = SetOnDrop(gone.clone());
        thread::spawn(move || {
            let _gone = gone;
            while !done.load(Ordering::Acquire) {
                stock.drain_all_stock().expect("drain");
                drains.fetch_add(1, Ordering::AcqRel);
                let u = stock.usage();
                assert!(
                    u <= LIMIT,
                    "usage {u} above the limit {LIMIT} after a drain"
                );
            }
        })
    };
    let mut outstanding = 0;
    let mut failed = 0;
    for t in owners {
        let (held, _ok, f) = t.join().expect("owner");
        outstanding += held;
        failed += f;
    }
    done.store(true, Ordering::Release);
    drainer.join().expect("drainer");
    assert!(drains.load(Ordering::Relaxed) >= OPS / OPS_PER_DRAIN - 1);
    assert_eq!(stock.failures(), failed);
    stock.drain_all_stock().expect("final drain");
    assert_eq!(
        stock.usage(),
        outstanding,
        "usage is not exact after drain_all_stock"
    );
    assert_eq!(stock.underflows(), 0);
    // A charge that fits the limit succeeds; one unit more does not.
    let mut me = domain.bind_unpinned(OWNERS).expect("bind");
    let rest = LIMIT - outstanding;
    if rest > 0 {
        stock
            .charge(&mut me, rest)
            .expect("a charge that fits the limit");
    }
    assert_eq!(stock.usage(), LIMIT);
    let e = stock.charge(&mut me, 1).unwrap_err();
    assert_eq!((e.requested, e.usage, e.limit), (1, LIMIT, LIMIT));
    if domain.mode() == &Mode::Remote || domain.mode() == &Mode::Defer {
        assert_eq!(
            domain.total_stats().fences(),
            0,
            "remote and defer never signal"
        );
    }
}

/// Owners keep stock and stay bound (online and blocked in `queue`/`remote`,
/// offline in `defer`); a drain from another thread makes the counter exact,
/// after which a charge of exactly the rest succeeds.
fn drain_while_owners_hold_stock<C: Config>(mode: Mode) {
    let domain = domain::<C>(mode, OWNERS + 1);
    let stock = Arc::new(Stock::<C>::new(&domain, LIMIT));
    let charged = Arc::new(Barrier::new(OWNERS + 1));
    let release = Arc::new(Barrier::new(OWNERS + 1));
    let owners: Vec<_> = (0..OWNERS)
        .map(|o| {
            let (domain, stock, charged, release) = (
                domain.clone(),
                stock.clone(),
                charged.clone(),
                release.clone(),
            );
            thread::spawn(move || {
                let mut me = domain.bind_unpinned(o).expect("bind");
                stock.charge(&mut me, o as u64 + 1).expect("charge");
                if domain.slot_mode(o).unwrap() == SlotMode::Defer {
                    me.idle(|| {
                        charged.wait();
                        release.wait();
                    });
                } else {
                    charged.wait();
                    release.wait();
                }
            })
        })
        .collect();
    charged.wait();
    let outstanding: u64 = (1..=OWNERS as u64).sum();
    assert_eq!(
        stock.usage(),
        OWNERS as u64 * DEFAULT_BATCH,
        "each owner stocked a whole batch"
    );
    let before = domain.total_stats();
    stock.drain_all_stock().expect("drain");
    let after = domain.total_stats();
    assert_eq!(stock.usage(), outstanding);
    let queue_slots = (0..OWNERS)
        .filter(|&c| domain.slot_mode(c).unwrap() == SlotMode::Queue)
        .count() as u64;
    assert_eq!(
        after.works_fenced - before.works_fenced,
        queue_slots,
        "each online queue-mode owner returned its stock in its signal handler"
    );

    // The main thread becomes the ninth owner: with the others' stock back,
    // a charge of exactly the rest fits.
    let mut me = domain.bind_unpinned(OWNERS).expect("bind");
    stock
        .charge(&mut me, LIMIT - outstanding)
        .expect("fits the limit");
    assert_eq!(stock.usage(), LIMIT);
    stock
        .uncharge(&mut me, LIMIT - outstanding)
        .expect("uncharge");
    // The uncharge went back to the counter whole (stock above the batch).
    assert_eq!(stock.usage(), outstanding);

    drop(me);

    release.wait();
    for t in owners {
        t.join().expect("owner");
    }
    stock.drain_all_stock().expect("drain");
    assert_eq!(
        stock.usage(),
        outstanding,
        "exited owners' charges are still outstanding"
    );
}

/// With stock held by other online owners, a plain charge fails and
/// `charge_or_drain` from an owner succeeds.
fn charge_or_drain_takes_back_other_stock<C: Config>(mode: Mode) {
    let domain = domain::<C>(mode, OWNERS);
    let stock = Arc::new(Stock::<C>::with_batch(&domain, 100, 50));
    let charged = Arc::new(Barrier::new(2));
    let release = Arc::new(Barrier::new(2));
    let other = {
        let (domain, stock, charged, release) = (
            domain.clone(),
            stock.clone(),
            charged.clone(),
            release.clone(),
        );
        thread::spawn(move || {
            let mut me = domain.bind_unpinned(1).expect("bind");
            stock.charge(&mut me, 10).expect("charge"); // stocks 40
            let wait = || {
                charged.wait();
                release.wait();
            };
            if domain.slot_mode(1).unwrap() == SlotMode::Defer {
                me.idle(wait);
            } else {
                wait();
            }
        })
    };
    charged.wait();
    let mut me = domain.bind_unpinned(0).expect("bind");
    assert_eq!(stock.usage(), 50);
    assert!(
        stock.charge(&mut me, 90).is_err(),
        "the other slot's 40 are stocked"
    );
    stock
        .charge_or_drain(&mut me, 90)
        .expect("fits once the stock is back");
    assert_eq!(stock.usage(), 100);
    release.wait();
    other.join().expect("other");
}

macro_rules! every_mode {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::*;
            #[test]
            fn standard_queue() {
                $name::<Standard>(Mode::Queue)
            }
            #[cfg(feature = "qpw")]
            #[test]
            fn standard_remote() {
                $name::<Standard>(Mode::Remote)
            }
            #[cfg(feature = "qpw")]
            #[test]
            fn standard_defer() {
                $name::<Standard>(Mode::Defer)
            }
            #[cfg(feature = "qpw")]
            #[test]
            fn standard_auto() {
                $name::<Standard>(Mode::Auto(Some(vec![1, 3, 5, 7])))
            }
            #[test]
            fn no_qpw_queue() {
                $name::<NoQpw>(Mode::Queue)
            }
            #[test]
            fn rt_queue() {
                $name::<Rt>(Mode::Queue)
            }
            #[cfg(feature = "qpw")]
            #[test]
            fn rt_remote() {
                $name::<Rt>(Mode::Remote)
            }
            #[cfg(feature = "qpw")]
            #[test]
            fn rt_defer() {
                $name::<Rt>(Mode::Defer)
            }
            #[cfg(feature = "qpw")]
            #[test]
            fn rt_auto() {
                $name::<Rt>(Mode::Auto(Some(vec![0, 1])))
            }
        }
    )*};
}

every_mode!(
    concurrent_charges,
    drain_while_owners_hold_stock,
    charge_or_drain_takes_back_other_stock
);

#[test]
fn charge_uses_the_stock_then_the_counter() {
    let domain = domain::<Standard>(Mode::Queue, 1);
    let stock = Stock::new(&domain, 1000);
    assert_eq!((stock.limit(), stock.batch()), (1000, DEFAULT_BATCH));
    let mut me = domain.bind_unpinned(0).unwrap();
    stock.charge(&mut me, 10).unwrap();
    assert_eq!(stock.usage(), 64, "a whole batch is charged ahead");
    stock.charge(&mut me, 54).unwrap();
    assert_eq!(stock.usage(), 64, "served from the stock");
    stock.charge(&mut me, 100).unwrap();
    assert_eq!(stock.usage(), 164, "more than a batch is charged as asked");
    stock.charge(&mut me, 0).unwrap();
    assert_eq!(stock.usage(), 164);
    // Uncharges stay in the stock up to the batch, then go back whole.
    stock.uncharge(&mut me, 64).unwrap();
    assert_eq!(stock.usage(), 164);
    stock.uncharge(&mut me, 1).unwrap();
    assert_eq!(stock.usage(), 99);
    stock.drain_local(&mut me);
    assert_eq!(stock.usage(), 99);
    stock.uncharge(&mut me, 99).unwrap();
    stock.drain_local(&mut me);
    assert_eq!(stock.usage(), 0);
}

#[test]
fn near_the_limit_the_exact_amount_is_charged() {
    let domain = domain::<Standard>(Mode::Queue, 1);
    let stock = Stock::new(&domain, 100);
    let mut me = domain.bind_unpinned(0).unwrap();
    stock.charge(&mut me, 60).unwrap(); // 64 charged, 4 stocked
    stock.charge(&mut me, 40).unwrap(); // 4 from stock, 36 exactly (64 would not fit)
    assert_eq!(stock.usage(), 100);
    let e = stock.charge(&mut me, 1).unwrap_err();
    assert_eq!((e.requested, e.usage, e.limit), (1, 100, 100));
    assert!(e.to_string().contains("exceeds the limit"), "{e}");
    assert_eq!(stock.failures(), 1);
    let e = stock.charge(&mut me, u64::MAX).unwrap_err();
    assert_eq!(e.requested, u64::MAX);
    assert_eq!(stock.usage(), 100, "a failed charge changes nothing");
}

#[test]
fn uncharging_more_than_charged_is_refused() {
    let domain = domain::<Standard>(Mode::Queue, 1);
    let stock = Stock::new(&domain, 1000);
    let mut me = domain.bind_unpinned(0).unwrap();
    stock.charge(&mut me, 10).unwrap(); // 64 charged, 54 stocked
    let e = stock.uncharge(&mut me, 1000).unwrap_err();
    assert_eq!((e.returned, e.usage), (1054, 64));
    assert!(e.to_string().contains("underflow"), "{e}");
    assert_eq!(stock.usage(), 64, "a refused uncharge changes nothing");
    let e = stock.uncharge(&mut me, u64::MAX).unwrap_err();
    assert_eq!(e.returned, u64::MAX);
    stock.uncharge(&mut me, 10).unwrap();
    stock.drain_local(&mut me);
    assert_eq!(stock.usage(), 0);
    assert_eq!(stock.underflows(), 0);
    // A small excess stays in the stock and is caught when it is returned.
    stock.uncharge(&mut me, 5).unwrap();
    stock.drain_all_stock().unwrap();
    assert_eq!(stock.usage(), 0, "the counter saturates");
    assert_eq!(stock.underflows(), 1);
}

#[test]
fn batch_zero_keeps_no_stock() {
    let domain = domain::<Standard>(Mode::Queue, 1);
    let stock = Stock::with_batch(&domain, 50, 0);
    let mut me = domain.bind_unpinned(0).unwrap();
    for n in [1, 7, 30] {
        stock.charge(&mut me, n).unwrap();
    }
    assert_eq!(stock.usage(), 38);
    stock.uncharge(&mut me, 7).unwrap();
    assert_eq!(stock.usage(), 31);
}
