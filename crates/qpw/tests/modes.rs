//! The rules of the mechanism, per mode (issue 2's list).
// Without the `qpw` feature the mode tests are compiled out; their helpers stay.
#![cfg_attr(not(feature = "qpw"), allow(unused_imports, dead_code))]

use qpw::{
    Config, Domain, Error, FlushError, Mode, NoQpw, PerCpu, Rt, RtNoQpw, SlotMode, Standard,
};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

const OWNERS: usize = 8;
const DRAINS: usize = 40;

/// 8 owner threads increment their slot while a drainer moves slot counts
/// into a global total; after the final drain the total equals all increments.
fn conservation<C: Config>(mode: Mode) -> Domain<C> {
    let domain: Domain<C> = qpw::Builder::new()
        .mode(mode)
        .nr_cpus(OWNERS)
        .flush_timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let counts = Arc::new(PerCpu::new(&domain, |_| 0u64));
    let total = Arc::new(AtomicU64::new(0));
    let drain = domain.work_all({
        let (counts, total) = (counts.clone(), total.clone());
        move |ctx| {
            let Ok(mut c) = counts.lock_ctx(ctx) else {
                return;
            };
            total.fetch_add(std::mem::take(&mut *c), Ordering::Relaxed);
        }
    });
    let stop = Arc::new(AtomicBool::new(false));
    let bound = Arc::new(Barrier::new(OWNERS + 1));
    let done = Arc::new(Barrier::new(OWNERS + 1));
    let owners: Vec<_> = (0..OWNERS)
        .map(|cpu| {
            let (domain, counts, stop, bound, done) = (
                domain.clone(),
                counts.clone(),
                stop.clone(),
                bound.clone(),
                done.clone(),
            );
            std::thread::spawn(move || {
                let mut me = domain.bind_unpinned(cpu).unwrap();
                bound.wait();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    *counts.lock(&mut me) += 1;
                    n += 1;
                    me.quiescent();
                    if n % 64 == 0 {
                        std::thread::yield_now();
                    }
                }
                // Stay online until the drainer has looked at the stats, so
                // the drains above reached online owners.
                me.idle(|| done.wait());
                n
            })
        })
        .collect();
    bound.wait();
    for _ in 0..DRAINS {
        drain.run().unwrap();
    }
    let online_stats: Vec<_> = (0..OWNERS).map(|c| domain.stats(c).unwrap()).collect();
    stop.store(true, Ordering::Relaxed);
    done.wait();
    let made: u64 = owners.into_iter().map(|t| t.join().unwrap()).sum();
    // Every owner has exited: the final drain runs in the caller.
    drain.run().unwrap();
    assert_eq!(
        total.load(Ordering::Relaxed),
        made,
        "increments lost or doubled"
    );
    for (cpu, s) in online_stats.iter().enumerate() {
        let slot_mode = domain.slot_mode(cpu).unwrap();
        match slot_mode {
            SlotMode::Queue => {
                assert!(
                    s.fences() >= 1,
                    "queue slot {cpu} was drained without a fence: {s:?}"
                );
                assert!(
                    s.works_fenced >= 1,
                    "queue slot {cpu}: no fenced drain ran: {s:?}"
                );
            }
            SlotMode::Remote | SlotMode::Defer => {
                assert_eq!(s.fences(), 0, "{slot_mode:?} slot {cpu} was fenced: {s:?}")
            }
            other => panic!("slot {cpu}: a mode this test does not know: {other}"),
        }
        assert_eq!(
            s.works_run(),
            DRAINS as u64,
            "slot {cpu}: every drain runs once: {s:?}"
        );
        if slot_mode == SlotMode::Remote {
            // Never interrupted: the caller ran it, or (owner preempted
            // inside a section) the owner did as its section ended.
            assert_eq!(
                s.works_fenced, 0,
                "remote slot {cpu} ran work in a fenced drain: {s:?}"
            );
            assert_eq!(
                s.works_remote + s.works_at_section_end + s.works_at_quiescent,
                DRAINS as u64
            );
        }
    }
    domain
}

#[test]
fn conservation_queue() {
    conservation::<Standard>(Mode::Queue);
}

#[cfg(feature = "qpw")]
#[test]
fn conservation_remote() {
    let d = conservation::<Standard>(Mode::Remote);
    assert_eq!(d.total_stats().fences(), 0);
}

#[cfg(feature = "qpw")]
#[test]
fn conservation_defer() {
    let d = conservation::<Standard>(Mode::Defer);
    assert_eq!(d.total_stats().fences(), 0);
}

#[cfg(feature = "qpw")]
#[test]
fn conservation_auto_isolated_slots_are_never_fenced() {
    let d = conservation::<Standard>(Mode::Auto(Some(vec![1, 2, 5])));
    for cpu in 0..OWNERS {
        let expected = if [1, 2, 5].contains(&cpu) {
            SlotMode::Remote
        } else {
            SlotMode::Queue
        };
        assert_eq!(d.slot_mode(cpu).unwrap(), expected);
        if expected == SlotMode::Remote {
            assert_eq!(d.stats(cpu).unwrap().fences(), 0);
        }
    }
}

#[test]
fn conservation_no_qpw() {
    conservation::<NoQpw>(Mode::Queue);
}

#[test]
fn conservation_rt_queue() {
    conservation::<Rt>(Mode::Queue);
}

#[cfg(feature = "qpw")]
#[test]
fn conservation_rt_remote() {
    let d = conservation::<Rt>(Mode::Remote);
    assert_eq!(d.total_stats().fences(), 0);
}

#[test]
fn conservation_rt_no_qpw() {
    conservation::<RtNoQpw>(Mode::Queue);
}

/// A queue drain that finds the owner inside a local section: the drainer
/// fences, waits for the section to close, then runs the work on its own
/// thread; never inside the section.
#[test]
fn fence_during_section_waits_for_section_end() {
    let domain: Domain = Domain::builder()
        .mode(Mode::Queue)
        .nr_cpus(2)
        .build()
        .unwrap();
    let data = Arc::new(PerCpu::new(&domain, |_| 0u32));
    let in_section = Arc::new(AtomicBool::new(false));
    let ran_inside = Arc::new(AtomicUsize::new(0));
    let ran = Arc::new(AtomicUsize::new(0));
    let work = domain
        .work(1, {
            let (data, in_section, ran_inside, ran) = (
                data.clone(),
                in_section.clone(),
                ran_inside.clone(),
                ran.clone(),
            );
            move |ctx| {
                if in_section.load(Ordering::SeqCst) {
                    ran_inside.fetch_add(1, Ordering::SeqCst);
                }
                if let Ok(mut g) = data.lock_ctx(ctx) {
                    *g += 1;
                }
                ran.fetch_add(1, Ordering::SeqCst);
            }
        })
        .unwrap();
    let entered = Arc::new(Barrier::new(2));
    let owner = std::thread::spawn({
        let (domain, data, in_section, entered) = (
            domain.clone(),
            data.clone(),
            in_section.clone(),
            entered.clone(),
        );
        move || {
            let mut me = domain.bind_unpinned(1).unwrap();
            {
                let mut g = data.lock(&mut me);
                in_section.store(true, Ordering::SeqCst);
                entered.wait();
                // Wait until the drainer fenced this CPU, then stay a while.
                while domain.stats(1).unwrap().fences() == 0 {
                    std::hint::spin_loop();
                }
                for _ in 0..20 {
                    std::thread::sleep(Duration::from_millis(1));
                }
                *g += 100;
                in_section.store(false, Ordering::SeqCst);
            }
            let after = *data.lock(&mut me);
            (after, domain.stats(1).unwrap())
        }
    });
    entered.wait();
    assert!(work.queue());
    assert_eq!(
        ran.load(Ordering::SeqCst),
        1,
        "queue returned before the work ran"
    );
    work.flush().unwrap();
    let (after, stats) = owner.join().unwrap();
    assert_eq!(ran.load(Ordering::SeqCst), 1);
    assert_eq!(
        ran_inside.load(Ordering::SeqCst),
        0,
        "work ran inside the local section"
    );
    assert_eq!(after, 101);
    assert_eq!(stats.fences(), 1);
    assert_eq!(stats.works_fenced, 1, "{stats:?}");
    assert_eq!(stats.works_at_section_end, 0, "{stats:?}");
}

/// A queue drain of an online owner outside any section runs the work on
/// the drainer's own thread (no signal, no handler), after one fence.
#[test]
fn fenced_work_runs_on_the_callers_thread() {
    let domain: Domain = Domain::builder()
        .mode(Mode::Queue)
        .nr_cpus(2)
        .build()
        .unwrap();
    let ran_on = Arc::new(AtomicU64::new(0));
    let work = domain
        .work(0, {
            let ran_on = ran_on.clone();
            move |ctx| {
                assert!(ctx.is_remote());
                ran_on.store(libc_gettid(), Ordering::SeqCst);
            }
        })
        .unwrap();
    let ready = Arc::new(Barrier::new(2));
    let stop = Arc::new(AtomicBool::new(false));
    let owner = std::thread::spawn({
        let (domain, ready, stop) = (domain.clone(), ready.clone(), stop.clone());
        move || {
            let _me = domain.bind_unpinned(0).unwrap();
            ready.wait();
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
            libc_gettid()
        }
    });
    ready.wait();
    work.queue();
    work.flush().unwrap();
    stop.store(true, Ordering::SeqCst);
    let owner_tid = owner.join().unwrap();
    assert_ne!(owner_tid, libc_gettid());
    assert_eq!(
        ran_on.load(Ordering::SeqCst),
        libc_gettid(),
        "work ran on another thread than the drainer"
    );
    let s = domain.stats(0).unwrap();
    assert_eq!((s.fences(), s.works_fenced), (1, 1), "{s:?}");
}

fn libc_gettid() -> u64 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() as u64 }
}

/// An owner thread exits with work queued for it: the work runs once, flush returns.
#[cfg(feature = "qpw")]
#[test]
fn owner_exit_runs_queued_work_once() {
    for mode in [Mode::Defer, Mode::Queue] {
        let domain: Domain = Domain::builder()
            .mode(mode.clone())
            .nr_cpus(2)
            .build()
            .unwrap();
        let runs = Arc::new(AtomicUsize::new(0));
        let work = domain
            .work(1, {
                let runs = runs.clone();
                move |_| {
                    runs.fetch_add(1, Ordering::SeqCst);
                }
            })
            .unwrap();
        let (queued_tx, queued_rx) = std::sync::mpsc::channel::<()>();
        let (bound_tx, bound_rx) = std::sync::mpsc::channel::<()>();
        let owner = std::thread::spawn({
            let domain = domain.clone();
            move || {
                let me = domain.bind_unpinned(1).unwrap();
                // Wait on a channel (a queue drainer may run it meanwhile;
                // either way it runs once).
                bound_tx.send(()).unwrap();
                queued_rx.recv().unwrap();
                drop(me);
            }
        });
        bound_rx.recv().unwrap();
        work.queue();
        queued_tx.send(()).unwrap();
        owner.join().unwrap();
        work.flush().unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 1, "{mode}");
        assert!(!domain.is_owned(1).unwrap(), "the slot is free again");
        // And the slot is reusable.
        let again = domain.bind_unpinned(1).unwrap();
        assert_eq!(again.slot(), 1);
    }
}

/// Defer: an owner that never reaches a quiescent point makes the bounded
/// flush fail, naming the slot; once it goes offline the caller runs the work.
#[cfg(feature = "qpw")]
#[test]
fn defer_bounded_flush_and_offline_owner() {
    let domain: Domain = Domain::builder()
        .mode(Mode::Defer)
        .nr_cpus(2)
        .build()
        .unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let remote_runs = Arc::new(AtomicUsize::new(0));
    let work = domain
        .work(1, {
            let (runs, remote_runs) = (runs.clone(), remote_runs.clone());
            move |ctx| {
                runs.fetch_add(1, Ordering::SeqCst);
                if ctx.is_remote() {
                    remote_runs.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
        .unwrap();
    let (go_offline_tx, go_offline_rx) = std::sync::mpsc::channel::<()>();
    let (bound_tx, bound_rx) = std::sync::mpsc::channel::<()>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let owner = std::thread::spawn({
        let domain = domain.clone();
        move || {
            let mut me = domain.bind_unpinned(1).unwrap();
            bound_tx.send(()).unwrap();
            go_offline_rx.recv().unwrap(); // busy elsewhere: no quiescent point
            me.idle(|| done_rx.recv().unwrap());
        }
    });
    bound_rx.recv().unwrap();
    work.queue();
    let err = work.flush_timeout(Duration::from_millis(50)).unwrap_err();
    assert_eq!(
        err,
        FlushError::Timeout {
            cpu: 1,
            waited_ms: 50
        }
    );
    assert!(err.to_string().contains("slot 1"));
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    go_offline_tx.send(()).unwrap();
    // Going offline is a quiescent point: the owner runs what is queued first.
    work.flush().unwrap();
    assert_eq!(
        (
            runs.load(Ordering::SeqCst),
            remote_runs.load(Ordering::SeqCst)
        ),
        (1, 0)
    );
    // While it is offline, work queued runs in the caller, at once.
    while !domain.is_offline(1).unwrap() {
        std::thread::yield_now();
    }
    assert!(work.queue());
    assert_eq!(
        (
            runs.load(Ordering::SeqCst),
            remote_runs.load(Ordering::SeqCst)
        ),
        (2, 1)
    );
    work.flush().unwrap();
    done_tx.send(()).unwrap();
    owner.join().unwrap();
    let s = domain.stats(1).unwrap();
    assert_eq!(
        (s.fences(), s.works_for_absent_owner, s.works_at_quiescent),
        (0, 1, 1),
        "{s:?}"
    );
}

/// Remote access to an online owner's slot is refused outside remote mode,
/// and allowed while the owner is offline.
#[cfg(feature = "qpw")]
#[test]
fn remote_access_follows_the_owner_state() {
    for mode in [Mode::Queue, Mode::Defer] {
        let domain: Domain = Domain::builder().mode(mode).nr_cpus(2).build().unwrap();
        let data = PerCpu::new(&domain, |c| c as u32);
        let mut me = domain.bind_unpinned(0).unwrap();
        assert_eq!(data.remote(0).unwrap_err(), Error::OwnerOnline { cpu: 0 });
        *data.remote(1).unwrap() += 10; // no owner
        {
            let _off = me.offline();
            *data.remote(0).unwrap() += 5;
        }
        assert_eq!(*data.lock(&mut me), 5);
        assert_eq!(*data.remote(1).unwrap(), 11);
    }
}

/// Bad input: clear errors, nothing changed.
#[test]
fn bad_input_gets_clear_errors() {
    let domain: Domain = Domain::builder()
        .mode(Mode::Queue)
        .nr_cpus(8)
        .build()
        .unwrap();
    // A CPU outside the affinity mask (this process may run on 0..nproc).
    let cpus = std::thread::available_parallelism().unwrap().get();
    if cpus < 8 {
        let e = domain.bind(7).unwrap_err();
        assert!(matches!(e, Error::CpuNotAllowed { cpu: 7, .. }), "{e}");
        assert!(e.to_string().contains("affinity"), "{e}");
        assert!(
            !domain.is_owned(7).unwrap(),
            "a failed bind must leave the slot free"
        );
    }
    assert_eq!(
        domain.bind(8).unwrap_err(),
        Error::CpuOutOfRange { cpu: 8, nr_cpus: 8 }
    );
    // A slot already owned.
    let _me = domain.bind_unpinned(3).unwrap();
    let e = std::thread::spawn({
        let d = domain.clone();
        move || d.bind_unpinned(3).unwrap_err()
    })
    .join()
    .unwrap();
    assert_eq!(e, Error::SlotOwned { cpu: 3 });
    assert_eq!(
        domain.bind_unpinned(4).unwrap_err(),
        Error::AlreadyBound { cpu: 3 }
    );
    // Counts and modes.
    assert!(matches!(
        Domain::<Standard>::builder().nr_cpus(0).build(),
        Err(Error::BadCpuCount { .. })
    ));
    let e = Domain::<Standard>::builder()
        .mode(Mode::Auto(Some(vec![9])))
        .nr_cpus(4)
        .build()
        .unwrap_err();
    if cfg!(feature = "qpw") {
        assert_eq!(e, Error::CpuOutOfRange { cpu: 9, nr_cpus: 4 });
    } else {
        assert!(matches!(e, Error::ModeNotCompiled { .. }), "{e}");
    }
    let e = qpw::Builder::<NoQpw>::new()
        .mode(Mode::Remote)
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("only `queue`"), "{e}");
}

/// Implicit binding: a free slot on first use, freed and drained at thread exit.
#[test]
fn implicit_owner_binds_on_first_use_and_frees_at_exit() {
    let domain: Domain = Domain::builder()
        .mode(Mode::Queue)
        .nr_cpus(1)
        .build()
        .unwrap();
    let data = Arc::new(PerCpu::new(&domain, |_| 0u32));
    for _ in 0..3 {
        std::thread::spawn({
            let (domain, data) = (domain.clone(), data.clone());
            move || {
                let cpu = domain.with_local(|me| {
                    *data.lock(me) += 1;
                    me.slot()
                });
                assert_eq!(cpu.unwrap(), 0);
                // Re-entry for the same domain is refused, not a second binding.
                let inner = domain.with_local(|_| domain.with_local(|_| ()));
                assert_eq!(inner.unwrap().unwrap_err(), Error::Reentrant);
            }
        })
        .join()
        .unwrap();
        assert!(
            !domain.is_owned(0).unwrap(),
            "the exiting thread freed its slot"
        );
    }
    assert_eq!(*data.remote(0).unwrap(), 3);
}

/// Several domains with different modes in one process, one thread owning a
/// slot in each.
#[cfg(feature = "qpw")]
#[test]
fn domains_of_different_modes_coexist() {
    let q: Domain = Domain::builder()
        .mode(Mode::Queue)
        .nr_cpus(2)
        .build()
        .unwrap();
    let r: Domain<Rt> = qpw::Builder::new()
        .mode(Mode::Remote)
        .nr_cpus(2)
        .build()
        .unwrap();
    let qd = Arc::new(PerCpu::new(&q, |_| 0u64));
    let rd = Arc::new(PerCpu::new(&r, |_| 0u64));
    let qw = q.work_all({
        let qd = qd.clone();
        move |ctx| {
            if let Ok(mut g) = qd.lock_ctx(ctx) {
                *g += 1;
            }
        }
    });
    let rw = r.work_all({
        let rd = rd.clone();
        move |ctx| {
            if let Ok(mut g) = rd.lock_ctx(ctx) {
                *g += 1;
            }
        }
    });
    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(Barrier::new(2));
    let t = std::thread::spawn({
        let (q, r, qd, rd, stop, ready) = (
            q.clone(),
            r.clone(),
            qd.clone(),
            rd.clone(),
            stop.clone(),
            ready.clone(),
        );
        move || {
            let mut a = q.bind_unpinned(1).unwrap();
            let mut b = r.bind_unpinned(1).unwrap();
            ready.wait();
            while !stop.load(Ordering::Relaxed) {
                *qd.lock(&mut a) += 0;
                *rd.lock(&mut b) += 0;
            }
        }
    });
    ready.wait();
    for _ in 0..10 {
        qw.run().unwrap();
        rw.run().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    t.join().unwrap();
    assert_eq!(*qd.remote(1).unwrap(), 10);
    assert_eq!(*rd.remote(1).unwrap(), 10);
    assert!(q.stats(1).unwrap().fences() >= 1);
    assert_eq!(r.total_stats().fences(), 0);
}

/// Without the `qpw` feature only `queue` exists, and asking for another
/// mode is an error that says so.
#[cfg(not(feature = "qpw"))]
#[test]
fn modes_are_compiled_out_without_the_feature() {
    for mode in [Mode::Remote, Mode::Defer, Mode::Auto(Some(vec![0]))] {
        let e = Domain::<Standard>::builder()
            .mode(mode)
            .build()
            .unwrap_err();
        assert!(matches!(e, Error::ModeNotCompiled { .. }), "{e}");
        let e = qpw::Builder::<Rt>::new()
            .mode(Mode::Remote)
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("`qpw` feature"), "{e}");
    }
}

/// An owner thread that drains all slots, its own included, does not wait on
/// itself: outside a section its own slot's work runs at once, in its thread.
#[cfg(feature = "qpw")]
#[test]
fn owner_drains_its_own_slot() {
    for mode in [Mode::Queue, Mode::Defer] {
        let domain: Domain = Domain::builder()
            .mode(mode.clone())
            .nr_cpus(2)
            .flush_timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let data = Arc::new(PerCpu::new(&domain, |_| 1u64));
        let total = Arc::new(AtomicU64::new(0));
        let drain = domain.work_all({
            let (data, total) = (data.clone(), total.clone());
            move |ctx| {
                let Ok(mut c) = data.lock_ctx(ctx) else {
                    return;
                };
                total.fetch_add(std::mem::take(&mut *c), Ordering::SeqCst);
            }
        });
        let mut me = domain.bind_unpinned(0).unwrap();
        *data.lock(&mut me) += 1;
        drain.run().unwrap();
        assert_eq!(total.load(Ordering::SeqCst), 3, "{mode}");
        let s = domain.stats(0).unwrap();
        assert_eq!(s.fences(), 0, "{mode}: the owner signalled itself: {s:?}");
        assert_eq!(s.works_at_quiescent, 1, "{mode}: {s:?}");
        drop(me);
    }
}

/// An owner of one domain cannot enter a section on another domain's data:
/// that domain's exclusion would not be in force.
#[test]
#[should_panic(expected = "owner of another domain")]
fn owner_of_another_domain_is_refused() {
    let a: Domain = Domain::builder()
        .mode(Mode::Queue)
        .nr_cpus(2)
        .build()
        .unwrap();
    let b: Domain = Domain::builder()
        .mode(Mode::Queue)
        .nr_cpus(2)
        .build()
        .unwrap();
    let data_b = PerCpu::new(&b, |_| 0u8);
    let mut owner_a = a.bind_unpinned(0).unwrap();
    let _g = data_b.lock(&mut owner_a);
}

/// Remote mode, owner stuck inside a section (as a preempted owner is). The
/// first caller waits for the lock, as `remote` mode does, and learns from
/// the long wait that this owner gets stuck; from then on a caller that finds
/// it standing still in a section hands the work over instead of waiting:
/// the owner runs it as the section ends, without a signal.
#[cfg(feature = "qpw")]
#[test]
fn remote_mode_hands_work_to_an_owner_stuck_in_a_section() {
    let domain: Domain = Domain::builder()
        .mode(Mode::Remote)
        .nr_cpus(2)
        .build()
        .unwrap();
    let data = Arc::new(PerCpu::new(&domain, |_| 0u64));
    let work = domain
        .work(1, {
            let data = data.clone();
            move |ctx| {
                if let Ok(mut g) = data.lock_ctx(ctx) {
                    *g += 1;
                }
            }
        })
        .unwrap();
    let (in_tx, in_rx) = std::sync::mpsc::channel::<()>();
    let (out_tx, out_rx) = std::sync::mpsc::channel::<()>();
    let owner = std::thread::spawn({
        let (domain, data) = (domain.clone(), data.clone());
        move || {
            let mut me = domain.bind_unpinned(1).unwrap();
            {
                // First stall: hold the lock until the caller has waited long.
                let mut g = data.lock(&mut me);
                *g += 10;
                in_tx.send(()).unwrap();
                while domain.stats(1).unwrap().lock_contended == 0 {
                    std::thread::yield_now();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            // Outside any section until the first drain has run (a spinlock
            // is not fair: re-entering at once could starve the caller).
            while domain.stats(1).unwrap().works_remote == 0 {
                std::thread::yield_now();
            }
            {
                // Second stall: the caller must not wait for this one.
                let mut g = data.lock(&mut me);
                *g += 100;
                in_tx.send(()).unwrap();
                out_rx.recv().unwrap();
            }
            // Read once the flush returned: the flusher may have taken the
            // work off the stack as the section ended and run it just after.
            out_rx.recv().unwrap();
            let v = *data.lock(&mut me);
            (v, domain.stats(1).unwrap())
        }
    });
    in_rx.recv().unwrap();
    assert!(work.queue(), "the first drain waits for the lock and runs");
    assert!(!work.is_pending());
    in_rx.recv().unwrap();
    assert!(work.queue(), "queue returns without waiting for the owner");
    assert!(work.is_pending());
    out_tx.send(()).unwrap();
    work.flush().unwrap();
    out_tx.send(()).unwrap();
    let (v, s) = owner.join().unwrap();
    assert_eq!(v, 112);
    // The second: by the owner as its section ended, or by the flusher once
    // it saw it out.
    assert_eq!((s.fences(), s.works_fenced), (0, 0), "{s:?}");
    assert_eq!(s.works_at_section_end + s.works_remote, 2, "{s:?}");
}

/// A work running on the owner's thread (a `defer` quiescent point inside
/// `with_local`) that reaches its own owner (through `with_local`) and
/// tries a local section would alias the data the owner already holds: it
/// is refused (`with_local` is re-entered: an error, here unwrapped into a
/// panic the flush reports) before anything changes, and the owner's
/// sections work afterwards. (`defer` needs the `qpw` feature; in `queue`
/// mode works no longer run on the owner's thread while it is online.)
#[cfg(feature = "qpw")]
#[test]
fn section_inside_own_work_is_refused_and_changes_nothing() {
    let domain: Domain = Domain::builder()
        .mode(Mode::Defer)
        .nr_cpus(1)
        .build()
        .unwrap();
    let data = Arc::new(PerCpu::new(&domain, |_| 0u64));
    let work = domain
        .work(0, {
            let (domain, data) = (domain.clone(), data.clone());
            move |_ctx| {
                domain.with_local(|me| *data.lock(me) += 1).unwrap();
            }
        })
        .unwrap();
    let (bound_tx, bound_rx) = std::sync::mpsc::channel::<()>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let go = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let owner = std::thread::spawn({
        let (domain, data, go) = (domain.clone(), data.clone(), go.clone());
        move || {
            // Online only inside `with_local`: reach quiescent points
            // there, so the work runs here.
            domain
                .with_local(|me| {
                    *data.lock(me) += 10;
                    bound_tx.send(()).unwrap();
                    while !go.load(Ordering::SeqCst) {
                        me.quiescent();
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                })
                .unwrap();
            done_rx.recv().unwrap();
            domain.with_local(|me| *data.lock(me) += 100).unwrap();
            domain.stats(0).unwrap()
        }
    });
    bound_rx.recv().unwrap();
    work.queue();
    assert_eq!(work.flush(), Err(FlushError::Panicked { cpu: 0 }));
    go.store(true, Ordering::SeqCst);
    done_tx.send(()).unwrap();
    let s = owner.join().unwrap();
    assert_eq!((s.works_at_quiescent, s.works_panicked), (1, 1), "{s:?}");
    assert_eq!(
        *data.remote(0).unwrap(),
        110,
        "the refused section changed the data"
    );
}
