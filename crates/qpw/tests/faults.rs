//! Faults and churn: work that panics, owners that exit at any point
//! (also with their work queued), thousands of short threads, more threads
//! than slots, fence storms, and owners that block every signal. Each
//! checks conservation and that no flush hangs and no lock is left held.

mod common;

use qpw::{Config, Domain, Error, FlushError, Mode, NoQpw, Owner, PerCpu, Rt, SlotMode, Standard};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

/// How long a test waits for something that must happen; far above what
/// it takes, so reaching it means a hang.
const HANG: Duration = Duration::from_secs(20);

fn domain<C: Config>(mode: Mode, nr_cpus: usize) -> Domain<C> {
    qpw::Builder::<C>::new()
        .mode(mode)
        .nr_cpus(nr_cpus)
        .flush_timeout(HANG)
        .build()
        .expect("domain")
}

/// xorshift64*: a small deterministic generator.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// Per-slot counters and a drain that moves them into a total.
struct Counted<C: Config> {
    counts: Arc<PerCpu<u64, C>>,
    drained: Arc<AtomicU64>,
    runs: Arc<Vec<AtomicU64>>,
}

impl<C: Config> Counted<C> {
    fn new(domain: &Domain<C>) -> Self {
        Counted {
            counts: Arc::new(PerCpu::new(domain, |_| 0u64)),
            drained: Arc::new(AtomicU64::new(0)),
            runs: Arc::new((0..domain.nr_cpus()).map(|_| AtomicU64::new(0)).collect()),
        }
    }

    fn drain_fn(&self) -> impl Fn(&mut qpw::WorkCtx<'_, C>) + Send + Sync + Clone + 'static {
        let (counts, drained, runs) =
            (self.counts.clone(), self.drained.clone(), self.runs.clone());
        move |ctx| {
            let cpu = ctx.cpu();
            let Ok(mut c) = counts.lock_ctx(ctx) else {
                return;
            };
            let n = std::mem::take(&mut *c);
            drained.fetch_add(n, Ordering::Relaxed);
            runs[cpu].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What an owner thread driven by a channel is told to do.
enum Cmd {
    /// One local section adding this much.
    Add(u64),
    Exit,
}

/// An owner thread of slot `cpu`: serves commands, acknowledging each. In a
/// `defer` slot it passes a quiescent point whenever it has nothing to do;
/// in the other modes it blocks in `recv`, so queued work reaches it only
/// through a fenced drain (`queue`) or the caller (`remote`).
fn owner_thread<C: Config>(
    domain: &Domain<C>,
    counts: &Arc<PerCpu<u64, C>>,
    cpu: usize,
) -> (
    mpsc::Sender<Cmd>,
    mpsc::Receiver<()>,
    thread::JoinHandle<()>,
) {
    let (tx, rx) = mpsc::channel::<Cmd>();
    let (ack_tx, ack_rx) = mpsc::channel::<()>();
    let (domain, counts) = (domain.clone(), counts.clone());
    let t = thread::spawn(move || {
        let mut me = domain.bind_unpinned(cpu).expect("bind");
        let defer = domain.slot_mode(cpu).unwrap() == SlotMode::Defer;
        ack_tx.send(()).unwrap();
        loop {
            let cmd = if defer {
                match rx.recv_timeout(Duration::from_millis(1)) {
                    Ok(c) => c,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        me.quiescent();
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => Cmd::Exit,
                }
            } else {
                rx.recv().unwrap_or(Cmd::Exit)
            };
            match cmd {
                Cmd::Add(n) => {
                    *counts.lock(&mut me) += n;
                    ack_tx.send(()).unwrap();
                }
                Cmd::Exit => break,
            }
        }
    });
    ack_rx.recv_timeout(HANG).expect("owner bound");
    (tx, ack_rx, t)
}

/// A work function that panics: the flush reports it, the slot stays
/// usable, no lock is left held (the panicking work held the cell's lock in
/// `remote` mode and under RT), and no flush hangs. In `queue` mode the panic
/// happens, and is caught, inside a fenced drain on the caller.s thread.
fn panicking_work<C: Config>(mode: Mode) {
    let domain = domain::<C>(mode, 2);
    let c = Counted::new(&domain);
    let panic_next = Arc::new(AtomicBool::new(false));
    let w = domain
        .work(0, {
            let (counts, drained, runs) = (c.counts.clone(), c.drained.clone(), c.runs.clone());
            let panic_next = panic_next.clone();
            move |ctx| {
                let cpu = ctx.cpu();
                let Ok(mut cell) = counts.lock_ctx(ctx) else {
                    return;
                };
                drained.fetch_add(std::mem::take(&mut *cell), Ordering::Relaxed);
                runs[cpu].fetch_add(1, Ordering::Relaxed);
                if panic_next.swap(false, Ordering::SeqCst) {
                    // With the cell (and in remote mode or RT, its lock) held.
                    panic!("a work function panicked on purpose");
                }
                drop(cell);
            }
        })
        .unwrap();
    let (tx, ack, owner) = owner_thread(&domain, &c.counts, 0);
    let queue_slot = domain.slot_mode(0).unwrap() == SlotMode::Queue;

    tx.send(Cmd::Add(5)).unwrap();
    ack.recv_timeout(HANG).unwrap();
    let before = domain.stats(0).unwrap();
    panic_next.store(true, Ordering::SeqCst);
    assert!(w.queue());
    assert_eq!(w.flush(), Err(FlushError::Panicked { cpu: 0 }));
    assert!(!w.is_pending());
    let mid = domain.stats(0).unwrap();
    assert_eq!(mid.works_panicked - before.works_panicked, 1);
    assert_eq!(
        c.drained.load(Ordering::SeqCst),
        5,
        "the work ran up to its panic"
    );

    // The owner's local section still works: no lock left held, no section
    // flag left set.
    tx.send(Cmd::Add(7)).unwrap();
    ack.recv_timeout(HANG)
        .expect("the owner's section hung after the panic");
    // The next run succeeds, in the same context as before.
    assert!(w.queue());
    assert_eq!(w.flush(), Ok(()));
    assert_eq!(c.drained.load(Ordering::SeqCst), 12);
    let after = domain.stats(0).unwrap();
    if queue_slot {
        assert_eq!(
            after.works_fenced - before.works_fenced,
            2,
            "both runs, the panicking one included, were fenced drains"
        );
    }
    if domain.slot_mode(0).unwrap() == SlotMode::Remote {
        // The cell's lock is free for other threads too.
        let (dtx, drx) = mpsc::channel();
        let counts = c.counts.clone();
        thread::spawn(move || {
            *counts.remote(0).unwrap() += 1;
            dtx.send(()).unwrap();
        });
        drx.recv_timeout(HANG)
            .expect("the cell's lock was left held");
        c.drained.fetch_add(1, Ordering::SeqCst);
    }
    tx.send(Cmd::Exit).unwrap();
    owner.join().unwrap();

    // Panicking with no owner: the caller runs the work under the slot's
    // BUSY bit, which must be released.
    panic_next.store(true, Ordering::SeqCst);
    assert!(w.queue());
    assert_eq!(w.flush(), Err(FlushError::Panicked { cpu: 0 }));
    assert!(!domain.is_owned(0).unwrap());
    let me = domain
        .bind_unpinned(0)
        .expect("the slot is reusable after a panic");
    drop(me);

    // A drain-all with one panicking slot still drains the others.
    let set = domain.work_all({
        let drain = c.drain_fn();
        let panic_next = panic_next.clone();
        move |ctx| {
            drain(ctx);
            if ctx.cpu() == 1 && panic_next.swap(false, Ordering::SeqCst) {
                panic!("slot 1's drain panicked on purpose");
            }
        }
    });
    panic_next.store(true, Ordering::SeqCst);
    assert_eq!(set.run(), Err(FlushError::Panicked { cpu: 1 }));
    assert_eq!(set.run(), Ok(()));
    assert_eq!(c.runs[1].load(Ordering::SeqCst), 2);
}

/// An owner exits with its work queued (surely queued in `defer`, where only
/// the owner runs it): the work runs once, the flush returns, the slot is free.
fn exit_with_work_queued<C: Config>(mode: Mode) {
    let domain = domain::<C>(mode, 2);
    let c = Counted::new(&domain);
    let w = domain.work(0, c.drain_fn()).unwrap();
    for round in 0..20u64 {
        let (tx, ack, owner) = owner_thread(&domain, &c.counts, 0);
        tx.send(Cmd::Add(round)).unwrap();
        ack.recv_timeout(HANG).unwrap();
        assert!(w.queue());
        tx.send(Cmd::Exit).unwrap();
        owner.join().unwrap();
        assert_eq!(w.flush(), Ok(()));
        assert!(
            !domain.is_owned(0).unwrap(),
            "the exited owner's slot is free"
        );
    }
    assert_eq!(
        c.runs[0].load(Ordering::SeqCst),
        20,
        "each queued work ran exactly once"
    );
    assert_eq!(c.drained.load(Ordering::SeqCst), (0..20).sum::<u64>());
}

/// Owners that exit at random points while a drainer queues and flushes
/// their slots' work: nothing is lost, nothing runs twice, no flush hangs.
fn owners_exit_at_random_points<C: Config>(mode: Mode) {
    const SLOTS: usize = 3;
    let domain = domain::<C>(mode, SLOTS);
    let c = Counted::new(&domain);
    let set = Arc::new(domain.work_all(c.drain_fn()));
    let stop = Arc::new(AtomicBool::new(false));
    let queued_true: Arc<Vec<AtomicU64>> =
        Arc::new((0..SLOTS).map(|_| AtomicU64::new(0)).collect());
    let drainer = {
        let (set, stop, queued_true) = (set.clone(), stop.clone(), queued_true.clone());
        thread::spawn(move || {
            let mut rng = Rng(0x1234_5678);
            while !stop.load(Ordering::Acquire) {
                let cpu = rng.below(SLOTS as u64) as usize;
                let w = set.get(cpu).unwrap();
                if w.queue() {
                    queued_true[cpu].fetch_add(1, Ordering::Relaxed);
                }
                if rng.below(2) == 0 {
                    w.flush().expect("flush");
                }
            }
        })
    };
    let mut added = 0u64;
    let mut rng = Rng(0xdead_beef);
    for _ in 0..60 {
        let threads: Vec<_> = (0..SLOTS)
            .map(|cpu| {
                let ops = rng.below(200);
                let quiesce = rng.below(2) == 0;
                let (domain, counts) = (domain.clone(), c.counts.clone());
                added += ops;
                thread::spawn(move || {
                    let mut me: Owner<C> = domain.bind_unpinned(cpu).expect("bind");
                    for i in 0..ops {
                        *counts.lock(&mut me) += 1;
                        if quiesce && i % 7 == 0 {
                            me.quiescent();
                        }
                    }
                    // Exit here, with or without work queued.
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }
    stop.store(true, Ordering::Release);
    drainer.join().unwrap();
    set.run().expect("final drain");
    assert_eq!(
        c.drained.load(Ordering::SeqCst),
        added,
        "increments lost or counted twice"
    );
    for cpu in 0..SLOTS {
        // The final run added one run per slot.
        assert_eq!(
            c.runs[cpu].load(Ordering::SeqCst),
            queued_true[cpu].load(Ordering::SeqCst) + 1,
            "slot {cpu}: each successful queue ran exactly once"
        );
        assert!(!domain.is_owned(cpu).unwrap());
    }
}

/// 2000 short threads bind (explicitly or implicitly), work, and exit, more
/// at a time than there are slots, while a drainer drains: every increment
/// of a thread that got a slot is drained once; a thread that found no free
/// slot got `NoFreeSlot` and changed nothing.
fn thousands_of_threads<C: Config>(mode: Mode) {
    const SLOTS: usize = 4;
    const THREADS: usize = 2000;
    const WAVE: usize = 8;
    let domain = domain::<C>(mode, SLOTS);
    let c = Counted::new(&domain);
    let set = Arc::new(domain.work_all(c.drain_fn()));
    let stop = Arc::new(AtomicBool::new(false));
    let drainer = {
        let (set, stop) = (set.clone(), stop.clone());
        thread::spawn(move || {
            let mut drains = 0u64;
            while !stop.load(Ordering::Acquire) {
                set.run().expect("drain");
                drains += 1;
            }
            drains
        })
    };
    let added = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    for wave in 0..THREADS / WAVE {
        let ts: Vec<_> = (0..WAVE)
            .map(|i| {
                let (domain, counts, added, refused) = (
                    domain.clone(),
                    c.counts.clone(),
                    added.clone(),
                    refused.clone(),
                );
                thread::spawn(move || {
                    let n = (wave * WAVE + i) as u64 % 13 + 1;
                    if i % 2 == 0 {
                        match domain.bind_any() {
                            Ok(mut me) => {
                                for _ in 0..n {
                                    *counts.lock(&mut me) += 1;
                                }
                                added.fetch_add(n, Ordering::Relaxed);
                            }
                            Err(e) => {
                                assert_eq!(e, Error::NoFreeSlot { nr_cpus: SLOTS });
                                refused.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    } else {
                        // The implicit owner, freed when the thread exits.
                        match domain.with_local(|me| {
                            for _ in 0..n {
                                *counts.lock(me) += 1;
                            }
                        }) {
                            Ok(()) => {
                                added.fetch_add(n, Ordering::Relaxed);
                            }
                            Err(e) => {
                                assert_eq!(e, Error::NoFreeSlot { nr_cpus: SLOTS });
                                refused.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                })
            })
            .collect();
        for t in ts {
            t.join().unwrap();
        }
    }
    stop.store(true, Ordering::Release);
    assert!(drainer.join().unwrap() >= 1);
    set.run().expect("final drain");
    assert_eq!(
        c.drained.load(Ordering::SeqCst),
        added.load(Ordering::SeqCst)
    );
    assert!(refused.load(Ordering::SeqCst) < THREADS);
    for cpu in 0..SLOTS {
        assert!(
            !domain.is_owned(cpu).unwrap(),
            "slot {cpu} was not handed back"
        );
    }
    if matches!(domain.mode(), Mode::Remote | Mode::Defer) {
        assert_eq!(domain.total_stats().fences(), 0);
    }
}

macro_rules! modes {
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
                $name::<Standard>(Mode::Auto(Some(vec![1])))
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
        }
    )*};
}

modes!(
    panicking_work,
    exit_with_work_queued,
    owners_exit_at_random_points,
    thousands_of_threads
);

/// More threads than slots: `bind_any` and `with_local` give `NoFreeSlot`,
/// an explicit bind gives `SlotOwned`, never a crash; drains still complete;
/// the slots are free again once their owners exit.
#[test]
fn slot_exhaustion() {
    const SLOTS: usize = 2;
    const THREADS: usize = 6;
    let domain = domain::<Standard>(Mode::Queue, SLOTS);
    let c = Counted::new(&domain);
    let set = domain.work_all(c.drain_fn());
    let bound = Arc::new(Barrier::new(THREADS + 1));
    let release = Arc::new(Barrier::new(THREADS + 1));
    let ts: Vec<_> = (0..THREADS)
        .map(|_| {
            let (domain, counts, bound, release) = (
                domain.clone(),
                c.counts.clone(),
                bound.clone(),
                release.clone(),
            );
            thread::spawn(move || {
                let r = domain.bind_any();
                let mut got = None;
                let outcome = match r {
                    Ok(mut me) => {
                        *counts.lock(&mut me) += 1;
                        got = Some(me);
                        Ok(())
                    }
                    Err(e) => Err(e),
                };
                bound.wait();
                release.wait();
                if got.is_none() {
                    // Still none free while the holders live.
                    let e = domain.with_local(|_| ()).unwrap_err();
                    assert_eq!(e, Error::NoFreeSlot { nr_cpus: SLOTS });
                }
                bound.wait();
                drop(got);
                outcome
            })
        })
        .collect();
    bound.wait();
    // Every slot is owned, by threads blocked in a barrier: the drain fences
    // them and runs their work itself.
    set.run().expect("drain with every slot owned");
    assert_eq!(c.drained.load(Ordering::SeqCst), SLOTS as u64);
    let e = domain.bind_unpinned(0).unwrap_err();
    assert_eq!(e, Error::SlotOwned { cpu: 0 });
    assert!(e.to_string().contains("slot 0"), "{e}");
    let e = domain.bind_any().unwrap_err();
    assert_eq!(e, Error::NoFreeSlot { nr_cpus: SLOTS });
    assert!(e.to_string().contains("all 2 slots"), "{e}");
    assert_eq!(
        domain.bind_unpinned(SLOTS).unwrap_err(),
        Error::CpuOutOfRange {
            cpu: SLOTS,
            nr_cpus: SLOTS
        }
    );
    release.wait();
    bound.wait();
    let outcomes: Vec<_> = ts.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(outcomes.iter().filter(|o| o.is_ok()).count(), SLOTS);
    for o in outcomes.iter().filter_map(|o| o.as_ref().err()) {
        assert_eq!(o, &Error::NoFreeSlot { nr_cpus: SLOTS });
    }
    // Free again.
    let me = domain
        .bind_any()
        .expect("a slot is free after the holders exit");
    assert_eq!(me.slot(), 0);
}

/// The fence protocol's lost-update stress test: many drains per
/// millisecond in `queue` mode while the owners go in and out of local
/// sections (pinned to their CPUs, or unpinned and free to migrate): every
/// count an owner added is drained exactly once (an overlap of a drain and
/// a section would lose or double updates), the work runs once per
/// queueing, and the library issued at most one fence per queueing.
fn fence_storm<C: Config>(pinned: bool) {
    const OWNERS: usize = 2;
    const DRAINS: u64 = 20_000;
    const STORM: Duration = Duration::from_secs(3);
    let domain = domain::<C>(Mode::Queue, OWNERS);
    let c = Counted::new(&domain);
    let set = domain.work_all(c.drain_fn());
    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(Barrier::new(OWNERS + 1));
    let owners: Vec<_> = (0..OWNERS)
        .map(|cpu| {
            let (domain, counts, stop, ready) = (
                domain.clone(),
                c.counts.clone(),
                stop.clone(),
                ready.clone(),
            );
            thread::spawn(move || {
                let mut me = if pinned {
                    domain.bind(cpu).expect("bind pinned")
                } else {
                    domain.bind_unpinned(cpu).expect("bind")
                };
                ready.wait();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let mut g = counts.lock(&mut me);
                    *g += 1;
                    // Longer sections now and then, so fences land inside.
                    if n % 64 == 0 {
                        for _ in 0..200 {
                            std::hint::spin_loop();
                        }
                    }
                    drop(g);
                    n += 1;
                    // Let the drainer (and the other owner) have a core.
                    if n % 32 == 0 {
                        thread::yield_now();
                    }
                }
                n
            })
        })
        .collect();
    ready.wait();
    let before = domain.total_stats();
    // Up to DRAINS drains, for at most STORM: the owners compete with the
    // drainer for the machine's cores, and each drain waits for both.
    let start = Instant::now();
    let mut drains = 0u64;
    while drains < DRAINS && start.elapsed() < STORM {
        set.run().expect("drain");
        drains += 1;
    }
    let storm = domain.total_stats();
    stop.store(true, Ordering::Relaxed);
    let added: u64 = owners.into_iter().map(|t| t.join().unwrap()).sum();
    set.run().expect("final drain");
    assert_eq!(
        c.drained.load(Ordering::SeqCst),
        added,
        "conservation under the storm"
    );
    for cpu in 0..OWNERS {
        assert_eq!(
            c.runs[cpu].load(Ordering::SeqCst),
            drains + 1,
            "slot {cpu}: one run per drain"
        );
    }
    let sent = storm.fences() - before.fences();
    assert!(
        sent <= drains * OWNERS as u64,
        "{sent} fences for {drains} drains of {OWNERS} slots"
    );
    let targeted = storm.fences_targeted - before.fences_targeted;
    if pinned {
        assert_eq!(targeted, sent, "pinned owners get targeted fences");
    } else {
        assert_eq!(targeted, 0, "unpinned owners get process-wide fences");
    }
    let ran = storm.works_run() - before.works_run();
    assert_eq!(ran, drains * OWNERS as u64);
    eprintln!(
        "{} (pinned: {pinned}): {drains} drains in {:?}; {sent} fences; {} works fenced, {} at section end",
        C::NAME,
        start.elapsed(),
        storm.works_fenced - before.works_fenced,
        storm.works_at_section_end - before.works_at_section_end
    );
    assert_eq!(
        storm.works_remote - before.works_remote,
        0,
        "owners were online throughout"
    );
    assert_eq!(storm.works_panicked, 0);
}

#[test]
fn fence_storm_standard_migrating() {
    fence_storm::<Standard>(false);
}

#[test]
fn fence_storm_standard_pinned() {
    fence_storm::<Standard>(true);
}

#[test]
fn fence_storm_no_qpw_migrating() {
    fence_storm::<NoQpw>(false);
}

#[test]
fn fence_storm_rt_pinned() {
    fence_storm::<Rt>(true);
}

/// An owner whose token was leaked (`mem::forget`) by a thread that then
/// exited outside a section: in `queue` mode drains still run its work (the
/// fence finds its section closed); the slot stays owned.
#[test]
fn owner_leaked_by_an_exited_thread() {
    let domain = domain::<Standard>(Mode::Queue, 2);
    let c = Counted::new(&domain);
    let w = domain.work(1, c.drain_fn()).unwrap();
    let (d, counts) = (domain.clone(), c.counts.clone());
    thread::spawn(move || {
        let mut me = d.bind_unpinned(1).unwrap();
        *counts.lock(&mut me) += 4;
        std::mem::forget(me);
    })
    .join()
    .unwrap();
    assert!(domain.is_owned(1).unwrap(), "nobody dropped the token");
    assert!(w.queue());
    assert_eq!(w.flush(), Ok(()));
    assert_eq!(c.drained.load(Ordering::SeqCst), 4);
    assert!(w.queue());
    assert_eq!(w.flush(), Ok(()));
    assert_eq!(c.runs[1].load(Ordering::SeqCst), 2);
}

/// Signal masks are the application's own: an owner that blocks every
/// signal binds a `queue` slot in `queue` mode, and drains of it run (qpw
/// sends no signal), in every configuration.
#[test]
fn owner_blocking_every_signal_is_drained() {
    fn check<C: Config>() {
        let domain = domain::<C>(Mode::Queue, 2);
        let c = Counted::new(&domain);
        let w = domain.work(0, c.drain_fn()).unwrap();
        let (tx, rx) = mpsc::channel::<()>();
        let (ack_tx, ack_rx) = mpsc::channel::<()>();
        let (d, counts) = (domain.clone(), c.counts.clone());
        let t = thread::spawn(move || {
            common::block_every_signal();
            let mut me = d.bind_unpinned(0).unwrap();
            *counts.lock(&mut me) += 3;
            ack_tx.send(()).unwrap();
            rx.recv().unwrap();
        });
        ack_rx.recv_timeout(HANG).unwrap();
        assert_eq!(domain.slot_info(0).unwrap().effective, SlotMode::Queue);
        assert!(w.queue());
        assert_eq!(w.flush_timeout(HANG), Ok(()));
        assert_eq!(c.drained.load(Ordering::SeqCst), 3);
        assert_eq!(domain.stats(0).unwrap().fences(), 1);
        tx.send(()).unwrap();
        t.join().unwrap();
    }
    check::<Standard>();
    check::<NoQpw>();
    check::<Rt>();
}
