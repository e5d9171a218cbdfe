//! The LRU batches under concurrency, in every mode and configuration:
//! every item added is found in the shared list after a drain, exactly once.

use qpw::{Config, Domain, Mode, NoQpw, Rt, SlotMode, Standard};
use qpw_mm::lru::{Lru, DEFAULT_BATCH, MAX_BATCH};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

const OWNERS: usize = 8;
const PER_OWNER: usize = 20_000;

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

/// Items whose ids are all in `0..n`: true where found, and the duplicates.
fn presence(items: &[usize], n: usize) -> (Vec<bool>, Vec<usize>) {
    let mut seen = vec![false; n];
    let mut dups = Vec::new();
    for &i in items {
        assert!(i < n, "item {i} was never added");
        if std::mem::replace(&mut seen[i], true) {
            dups.push(i);
        }
    }
    (seen, dups)
}

/// 8 owners add while a drainer drains in a loop; the owners are paced so that
/// at most `ADDS_PER_DRAIN` of their adds go by per drain, so drains and adds
/// overlap for the whole run. After each drain, every item whose add had
/// returned before the drain began must be in the shared list; at the end the
/// list must be exactly the items added, each once.
fn concurrent_adds_and_drains<C: Config>(mode: Mode) {
    const ADDS_PER_DRAIN: usize = 50;
    let domain = domain::<C>(mode, OWNERS);
    let lru = Arc::new(Lru::<usize, C>::new(&domain));
    let progress: Arc<Vec<AtomicUsize>> =
        Arc::new((0..OWNERS).map(|_| AtomicUsize::new(0)).collect());
    let drains = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let gone = Arc::new(AtomicBool::new(false));
    let owners: Vec<_> = (0..OWNERS)
        .map(|o| {
            let (domain, lru, progress, drains, gone) = (
                domain.clone(),
                lru.clone(),
                progress.clone(),
                drains.clone(),
                gone.clone(),
            );
            thread::spawn(move || {
                let mut me = domain.bind_unpinned(o).expect("bind");
                for j in 0..PER_OWNER {
                    lru.add(&mut me, o * PER_OWNER + j);
                    progress[o].store(j + 1, Ordering::Release);
                    if j % 16 == 0 {
                        me.quiescent();
                    }
                    // Wait for the drainer, sometimes online, sometimes offline.
                    while drains.load(Ordering::Acquire) < j / ADDS_PER_DRAIN
                        && !gone.load(Ordering::Acquire)
                    {
                        if (j / ADDS_PER_DRAIN + o) % 3 == 0 {
                            me.idle(thread::yield_now);
                        } else {
                            me.quiescent();
                            thread::yield_now();
                        }
                    }
                }
            })
        })
        .collect();
    let drainer = {
        let (lru, progress, drains, done) =
            (lru.clone(), progress.clone(), drains.clone(), done.clone());
        let gone = SetOnDrop(gone.clone());
        thread::spawn(move || {
            let _gone = gone;
            while !done.load(Ordering::Acquire) {
                let before: Vec<usize> =
                    progress.iter().map(|p| p.load(Ordering::Acquire)).collect();
                lru.lru_add_drain_all().expect("drain");
                let d = drains.fetch_add(1, Ordering::AcqRel) + 1;
                lru.with_shared(|list| {
                    let (seen, dups) = presence(list, OWNERS * PER_OWNER);
                    assert!(dups.is_empty(), "items found twice: {dups:?}");
                    for (o, &n) in before.iter().enumerate() {
                        for j in 0..n {
                            assert!(
                                seen[o * PER_OWNER + j],
                                "item {j} of owner {o} was added before drain {d} but is not in the list"
                            );
                        }
                    }
                });
            }
        })
    };
    for t in owners {
        t.join().expect("owner");
    }
    done.store(true, Ordering::Release);
    drainer.join().expect("drainer");
    assert!(drains.load(Ordering::Relaxed) >= PER_OWNER / ADDS_PER_DRAIN - 1);
    lru.lru_add_drain_all().expect("final drain");
    let mut all = lru.take_shared();
    all.sort_unstable();
    assert_eq!(all.len(), OWNERS * PER_OWNER, "items lost or duplicated");
    assert!(
        all.iter().enumerate().all(|(i, &x)| i == x),
        "the list is not the items added"
    );
    let stats = lru.stats();
    assert!(stats.spills >= 1);
    let sent = domain.total_stats().fences();
    if domain.mode() == &Mode::Remote || domain.mode() == &Mode::Defer {
        assert_eq!(sent, 0, "remote and defer never signal");
    }
}

/// Owners add fewer items than a batch and stay bound (online and blocked in
/// `queue`/`remote`, offline in `defer`); a drain from outside must still
/// collect every item. In `queue` mode the drains ran in the owners' signal
/// handlers.
fn drain_while_owners_hold_batches<C: Config>(mode: Mode) {
    let domain = domain::<C>(mode, OWNERS);
    let lru = Arc::new(Lru::<usize, C>::new(&domain));
    let added = Arc::new(Barrier::new(OWNERS + 1));
    let drained = Arc::new(Barrier::new(OWNERS + 1));
    let owners: Vec<_> = (0..OWNERS)
        .map(|o| {
            let (domain, lru, added, drained) =
                (domain.clone(), lru.clone(), added.clone(), drained.clone());
            thread::spawn(move || {
                let mut me = domain.bind_unpinned(o).expect("bind");
                for j in 0..=o {
                    lru.add(&mut me, o * 100 + j);
                }
                if domain.slot_mode(o).unwrap() == SlotMode::Defer {
                    me.idle(|| {
                        added.wait();
                        drained.wait();
                    });
                } else {
                    added.wait();
                    drained.wait();
                }
            })
        })
        .collect();
    added.wait();
    assert_eq!(lru.shared_len(), 0, "no batch was full");
    let before = domain.total_stats();
    lru.lru_add_drain_all().expect("drain");
    let after = domain.total_stats();
    let mut all = lru.take_shared();
    all.sort_unstable();
    let expected: Vec<usize> = (0..OWNERS)
        .flat_map(|o| (0..=o).map(move |j| o * 100 + j))
        .collect();
    assert_eq!(all, expected);
    assert_eq!(lru.stats().drained_batches, OWNERS as u64);
    let queue_slots = (0..OWNERS)
        .filter(|&c| domain.slot_mode(c).unwrap() == SlotMode::Queue)
        .count() as u64;
    assert_eq!(
        after.works_fenced - before.works_fenced,
        queue_slots,
        "each online queue-mode owner ran its drain in its signal handler"
    );
    assert_eq!(after.fences() - before.fences(), queue_slots);
    drained.wait();
    for t in owners {
        t.join().expect("owner");
    }
}

/// An owner that drains does it offline, so its own slot is drained in every
/// mode (a `defer` owner could not reach a quiescent point while it waits).
fn owner_drains_offline<C: Config>(mode: Mode) {
    let domain = domain::<C>(mode, OWNERS);
    let lru = Lru::<u32, C>::with_batch(&domain, 4).unwrap();
    let mut me = domain.bind_unpinned(0).expect("bind");
    for i in 0..10 {
        lru.add(&mut me, i);
    }
    assert_eq!(lru.shared_len(), 8);
    me.idle(|| lru.lru_add_drain_all()).expect("drain");
    let mut all = lru.take_shared();
    all.sort_unstable();
    assert_eq!(all, (0..10).collect::<Vec<_>>());
    // The slot keeps working after the drain.
    for i in 10..30 {
        lru.add(&mut me, i);
    }
    lru.drain_local(&mut me);
    assert_eq!(lru.shared_len(), 20);
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
    concurrent_adds_and_drains,
    drain_while_owners_hold_batches,
    owner_drains_offline
);

#[test]
fn batch_size_is_checked() {
    let domain = domain::<Standard>(Mode::Queue, 1);
    for bad in [0, MAX_BATCH + 1] {
        let e = Lru::<u8>::with_batch(&domain, bad).unwrap_err();
        assert_eq!(e.size, bad);
        let msg = e.to_string();
        assert!(
            msg.contains("batch size") && msg.contains(&bad.to_string()),
            "{msg}"
        );
    }
    assert_eq!(Lru::<u8>::new(&domain).batch_size(), DEFAULT_BATCH);
    assert_eq!(DEFAULT_BATCH, 15, "the kernel's PAGEVEC_SIZE");
}

#[test]
fn spills_at_the_batch_size() {
    let domain = domain::<Standard>(Mode::Queue, 1);
    let lru = Lru::<u32>::new(&domain);
    let mut me = domain.bind_unpinned(0).unwrap();
    for i in 0..31 {
        lru.add(&mut me, i);
        assert_eq!(
            lru.shared_len(),
            (i as usize + 1) / 15 * 15,
            "after {} adds",
            i + 1
        );
    }
    assert_eq!(lru.stats().spills, 2);
    lru.lru_add_drain_all().unwrap();
    assert_eq!(lru.shared_len(), 31);
    assert_eq!(lru.stats().drained_batches, 1);
    // Draining empty batches moves nothing.
    lru.lru_add_drain_all().unwrap();
    assert_eq!(lru.stats().drained_batches, 1);
    // Batch order is kept within a slot.
    assert_eq!(lru.take_shared(), (0..31).collect::<Vec<_>>());
    // Two chunks were allocated on the first add (batch and spare); the
    // spills and the drain recycled them.
    assert_eq!(lru.stats().chunks_allocated, 2);
}

#[test]
fn dropping_the_lru_drops_every_item() {
    let domain = domain::<Standard>(Mode::Queue, 2);
    let token = Arc::new(());
    {
        let lru = Lru::<Arc<()>>::with_batch(&domain, 3).unwrap();
        let mut me = domain.bind_unpinned(1).unwrap();
        for _ in 0..10 {
            lru.add(&mut me, token.clone());
        }
        // Nine in the shared list (three spills), one left in the batch.
        assert_eq!(lru.shared_len(), 9);
        assert_eq!(Arc::strong_count(&token), 11);
    }
    assert_eq!(
        Arc::strong_count(&token),
        1,
        "items leaked or dropped twice"
    );
}

#[test]
fn queue_mode_drain_from_an_unbound_thread_of_exited_owners() {
    // Owners that exit leave their batches in their slots; a drain runs them
    // in the caller (the slot has no owner), and the slot is reused cleanly.
    let domain = domain::<Standard>(Mode::Queue, 4);
    let lru = Arc::new(Lru::<usize>::with_batch(&domain, 8).unwrap());
    for round in 0..3 {
        let ts: Vec<_> = (0..4)
            .map(|o| {
                let (domain, lru) = (domain.clone(), lru.clone());
                thread::spawn(move || {
                    let mut me = domain.bind_unpinned(o).unwrap();
                    for j in 0..5 {
                        lru.add(&mut me, round * 1000 + o * 10 + j);
                    }
                })
            })
            .collect();
        for t in ts {
            t.join().unwrap();
        }
        lru.lru_add_drain_all().unwrap();
        assert_eq!(lru.shared_len(), (round + 1) * 20);
    }
    let all = lru.take_shared();
    let (_, dups) = presence(&all, 3000);
    assert!(dups.is_empty());
}
