//! Issue 9, parts 4 and 5: threads that block or consume the qpw signal,
//! and drain-alls that leave clean slots alone.
//!
//! - a thread that binds a `queue` slot with the signal blocked gets it in
//!   `remote` behaviour (and its drains conserve what it produced);
//! - a flush waiting on an owner that blocks the signal after binding, or
//!   that consumes it with `sigtimedwait`, names the slot and the reason;
//! - a drain-all with a per-slot check neither signals nor interrupts owners
//!   blocked in `nanosleep`/`poll` on clean slots (and without the check it
//!   does: the control proves the test can fail).

mod common;

use common::{counted_work, set_blocked, sigset};
use qpw::{Domain, Error, FlushError, Mode, NoQpw, SignalTrouble, Standard};
#[cfg(feature = "qpw")]
use qpw::{ModeReason, PerCpu, SlotMode};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

/// Far above what anything here takes: reaching it means a hang.
const HANG: Duration = Duration::from_secs(20);

fn queue_domain<C: qpw::Config>(nr: usize, flush: Duration) -> Domain<C> {
    qpw::Builder::<C>::new()
        .mode(Mode::Queue)
        .nr_cpus(nr)
        .flush_timeout(flush)
        // Set in code: `qpw_signal_variable` sets QPW_SIGNAL meanwhile.
        .signal(libc::SIGRTMIN() + 7)
        .build()
        .expect("domain")
}

/// A thread that blocks the signal binds a `queue` slot; the slot reports
/// `remote` because of the blocked signal, the owner's sections take the
/// cell's lock, drain-alls run under it (no signal sent), and everything the
/// owner produced is drained exactly once. After the owner leaves, the slot
/// is `queue` again.
///
/// Before the change: "blocked owner binds: SignalBlocked { signal: 41 }"
/// (the bind was refused).
#[cfg(feature = "qpw")]
#[test]
fn blocked_thread_binds_queue_slot_as_remote_and_drains() {
    let domain = queue_domain::<Standard>(2, HANG);
    let cells: Arc<PerCpu<u64>> = Arc::new(PerCpu::new(&domain, |_| 0));
    let drained = Arc::new(AtomicU64::new(0));
    let work = {
        let (cells, drained) = (cells.clone(), drained.clone());
        domain.work_all(move |ctx| {
            let mut g = cells.lock_ctx(ctx);
            drained.fetch_add(std::mem::take(&mut *g), Ordering::SeqCst);
        })
    };
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let owner = {
        let (d, cells, stop) = (domain.clone(), cells.clone(), stop.clone());
        thread::Builder::new()
            .name("owner".into())
            .spawn(move || {
                set_blocked(d.signal(), true);
                let mut me = d.bind_unpinned(0).expect("blocked owner binds");
                tx.send(()).unwrap();
                let mut produced = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    *cells.lock(&mut me) += 1;
                    produced += 1;
                    if produced % 64 == 0 {
                        me.quiescent();
                    }
                }
                produced
            })
            .unwrap()
    };
    rx.recv_timeout(HANG).expect("owner bound");
    let info = domain.slot_info(0).unwrap();
    assert_eq!(info.configured, SlotMode::Queue);
    assert_eq!(info.effective, SlotMode::Remote);
    assert_eq!(info.reason, ModeReason::SignalBlockedAtBind);
    assert_eq!(domain.slot_info(1).unwrap().effective, SlotMode::Queue);
    for _ in 0..200 {
        work.run().expect("drain-all");
    }
    stop.store(true, Ordering::Relaxed);
    let produced = owner.join().unwrap();
    work.run().expect("final drain-all");
    assert_eq!(drained.load(Ordering::SeqCst), produced, "conservation");
    let st = domain.stats(0).unwrap();
    assert_eq!(st.signals_sent, 0, "no signal for a blocked owner");
    assert!(
        st.works_remote > 0,
        "drains ran under the cell lock: {st:?}"
    );
    let info = domain.slot_info(0).unwrap();
    assert_eq!(
        (info.effective, info.reason),
        (SlotMode::Queue, ModeReason::Configured),
        "back to queue once the owner left"
    );
    // A new owner with the signal unblocked gets a queue slot and signals.
    let d = domain.clone();
    thread::spawn(move || {
        let _me = d.bind_unpinned(0).unwrap();
        assert_eq!(d.slot_info(0).unwrap().effective, SlotMode::Queue);
    })
    .join()
    .unwrap();
}

/// A configuration without QPW has no remote mode: the refusal stays, and
/// says why and what to do.
#[test]
fn no_qpw_still_refuses_blocked_thread() {
    let domain = queue_domain::<NoQpw>(1, HANG);
    let sig = domain.signal();
    thread::spawn(move || {
        set_blocked(sig, true);
        let e = domain.bind_unpinned(0).unwrap_err();
        assert_eq!(e, Error::SignalBlocked { signal: sig });
        let msg = e.to_string();
        assert!(
            msg.contains("no remote mode") && msg.contains("QPW_SIGNAL"),
            "{msg}"
        );
        assert!(!domain.is_owned(0).unwrap());
    })
    .join()
    .unwrap();
}

/// An owner that blocks the signal after binding: the flush ends at its
/// bound with an error naming the slot and "blocked by the owner"; once it
/// unblocks, the pending signal runs the work.
///
/// Before the change: `Timeout { cpu: 0, waited_ms: 300 }: work for slot 0
/// did not run within 300 ms: its owner did not reach a quiescent point or
/// take the signal` (no reason).
#[test]
fn flush_names_an_owner_that_blocked_the_signal_after_binding() {
    let domain = queue_domain::<Standard>(1, HANG);
    let (w, ran) = counted_work(&domain, 0);
    let (tx, rx) = mpsc::channel::<()>();
    let (ack_tx, ack_rx) = mpsc::channel::<()>();
    let d = domain.clone();
    let t = thread::spawn(move || {
        let _me = d.bind_unpinned(0).unwrap();
        set_blocked(d.signal(), true);
        ack_tx.send(()).unwrap();
        rx.recv().unwrap();
        set_blocked(d.signal(), false);
        ack_tx.send(()).unwrap();
        rx.recv().unwrap();
    });
    ack_rx.recv_timeout(HANG).unwrap();
    assert!(w.queue());
    let e = w.flush_timeout(Duration::from_millis(300)).unwrap_err();
    assert!(
        matches!(
            e,
            FlushError::SignalNotHandled {
                cpu: 0,
                waited_ms: 300,
                reason: SignalTrouble::BlockedByOwner { pending: true },
                ..
            }
        ),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("slot 0") && msg.contains("blocked by the owner"),
        "{msg}"
    );
    assert_eq!(ran.load(Ordering::SeqCst), 0);
    tx.send(()).unwrap();
    ack_rx.recv_timeout(HANG).unwrap();
    assert_eq!(w.flush(), Ok(()));
    assert_eq!(ran.load(Ordering::SeqCst), 1);
    tx.send(()).unwrap();
    t.join().unwrap();
}

/// An owner thread that waits on the qpw signal with `sigtimedwait` eats
/// it: the flush error says it was sent and never handled, and suggests
/// sigwait/signalfd.
///
/// Before the change: the same bare `Timeout { cpu: 0, waited_ms: 300 }`.
#[test]
fn flush_names_an_owner_that_consumes_the_signal() {
    let domain = queue_domain::<Standard>(1, HANG);
    let sig = domain.signal();
    let w = domain.work(0, |_| {}).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let consumed = Arc::new(AtomicU64::new(0));
    let (tx, rx) = mpsc::channel();
    let d = domain.clone();
    let (stop2, consumed2) = (stop.clone(), consumed.clone());
    let t = thread::spawn(move || {
        let _me = d.bind_unpinned(0).unwrap();
        // The classic pattern: block it, then wait for it.
        set_blocked(sig, true);
        // SAFETY: gettid has no preconditions.
        tx.send(unsafe { libc::gettid() }).unwrap();
        let set = sigset(sig);
        let ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 200_000_000,
        };
        while !stop2.load(Ordering::SeqCst) {
            // SAFETY: `set` and `ts` are initialised; a null info is allowed.
            if unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &ts) } == sig {
                consumed2.fetch_add(1, Ordering::SeqCst);
            }
        }
        set_blocked(sig, false);
    });
    let tid = rx.recv_timeout(HANG).unwrap();
    assert!(w.queue());
    // The deadline may (rarely) fall between two sigtimedwait calls, where
    // the thread blocks the signal: look again, the work is still queued.
    let mut last = None;
    for _ in 0..10 {
        let e = w.flush_timeout(Duration::from_millis(300)).unwrap_err();
        let never = matches!(
            e,
            FlushError::SignalNotHandled {
                reason: SignalTrouble::NeverHandled { .. },
                ..
            }
        );
        last = Some(e);
        if never {
            break;
        }
    }
    let e = last.unwrap();
    match &e {
        FlushError::SignalNotHandled {
            cpu: 0,
            tid: t,
            signal,
            reason: SignalTrouble::NeverHandled { sent },
            ..
        } => {
            assert_eq!(*t as i32, tid);
            assert_eq!(*signal, sig);
            assert!(*sent >= 1);
        }
        other => panic!("expected NeverHandled, got {other:?}"),
    }
    let msg = e.to_string();
    assert!(
        msg.contains("slot 0") && msg.contains("never handled") && msg.contains("sigwait"),
        "{msg}"
    );
    assert!(consumed.load(Ordering::SeqCst) >= 1, "the waiter took it");
    stop.store(true, Ordering::SeqCst);
    t.join().unwrap();
    // Unbound: the work runs for the absent owner.
    assert_eq!(w.flush(), Ok(()));
}

/// `QPW_SIGNAL` picks the signal when the code does not; a bad value is a
/// clear error naming the variable; `Builder::signal` wins. (One test, so
/// no other test of this file sees the variable set.)
#[test]
fn qpw_signal_variable() {
    let (lo, hi) = (libc::SIGRTMIN(), libc::SIGRTMAX());
    std::env::set_var("QPW_SIGNAL", "SIGRTMIN+3");
    let d = Domain::<Standard>::builder().nr_cpus(1).build().unwrap();
    assert_eq!(d.signal(), lo + 3);
    let d = Domain::<Standard>::builder()
        .nr_cpus(1)
        .signal(hi - 1)
        .build()
        .unwrap();
    assert_eq!(d.signal(), hi - 1, "the builder wins");
    for bad in ["SIGUSR1", "0", "9999", "rtmin+99"] {
        std::env::set_var("QPW_SIGNAL", bad);
        let e = Domain::<Standard>::builder()
            .nr_cpus(1)
            .build()
            .unwrap_err();
        assert!(matches!(e, Error::BadSignalVar { .. }), "{bad}: {e:?}");
        assert!(e.to_string().contains("QPW_SIGNAL"), "{e}");
    }
    std::env::remove_var("QPW_SIGNAL");
}

/// Counts `EINTR`s of an owner blocked in `nanosleep` (`poll == false`) or
/// `poll` on a clean `queue` slot until `stop`.
fn sleeper(
    d: Domain<Standard>,
    slot: usize,
    poll: bool,
    stop: Arc<AtomicBool>,
    eintr: Arc<AtomicU64>,
    ready: mpsc::Sender<()>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let _me = d.bind_unpinned(slot).unwrap();
        ready.send(()).unwrap();
        while !stop.load(Ordering::SeqCst) {
            let rc = if poll {
                // SAFETY: no descriptors; a plain timed wait.
                unsafe { libc::poll(std::ptr::null_mut(), 0, 1000) }
            } else {
                let ts = libc::timespec {
                    tv_sec: 1,
                    tv_nsec: 0,
                };
                // SAFETY: `ts` is initialised; a null remainder is allowed.
                unsafe { libc::nanosleep(&ts, std::ptr::null_mut()) }
            };
            if rc == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                eintr.fetch_add(1, Ordering::SeqCst);
            }
        }
    })
}

/// Owners blocked in `nanosleep` and `poll` on clean slots: 100 drain-alls
/// with a per-slot check send no signal and cause no `EINTR`; the same
/// drain-alls without the check (the control) interrupt them.
///
/// Before the change (no check existed, so every drain-all was the
/// control): "assertion `left == right` failed: EINTRs and signals from 100
/// drain-alls of clean slots; left: (199, 200), right: (0, 0)".
#[test]
fn checked_drains_leave_clean_sleeping_owners_alone() {
    let domain = queue_domain::<Standard>(2, HANG);
    let dirty: Arc<[AtomicBool; 2]> = Arc::new([AtomicBool::new(false), AtomicBool::new(false)]);
    let runs = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let f = {
        let runs = runs.clone();
        move |ctx: &mut qpw::WorkCtx<'_>| {
            runs[ctx.slot()].fetch_add(1, Ordering::SeqCst);
        }
    };
    let checked = {
        let dirty = dirty.clone();
        domain.work_all_checked(f.clone(), move |c| dirty[c].load(Ordering::SeqCst))
    };
    let unchecked = domain.work_all(f);
    let stop = Arc::new(AtomicBool::new(false));
    let eintr = Arc::new(AtomicU64::new(0));
    let (tx, rx) = mpsc::channel();
    let sleepers = [
        sleeper(
            domain.clone(),
            0,
            false,
            stop.clone(),
            eintr.clone(),
            tx.clone(),
        ),
        sleeper(domain.clone(), 1, true, stop.clone(), eintr.clone(), tx),
    ];
    rx.recv_timeout(HANG).unwrap();
    rx.recv_timeout(HANG).unwrap();

    for _ in 0..100 {
        checked.run().expect("checked drain-all");
    }
    let signals = domain.total_stats().signals_sent;
    assert_eq!(
        eintr.load(Ordering::SeqCst),
        0,
        "no EINTR from checked drains"
    );
    assert_eq!(signals, 0, "no signal for clean slots");
    assert_eq!(
        runs[0].load(Ordering::SeqCst) + runs[1].load(Ordering::SeqCst),
        0
    );
    for c in 0..2 {
        assert_eq!(domain.slot_info(c).unwrap().drains_skipped_clean, 100);
    }

    // A slot whose hint says "dirty" is drained (the check is not "skip all").
    dirty[1].store(true, Ordering::SeqCst);
    checked.run().expect("checked drain-all, slot 1 dirty");
    assert_eq!(runs[1].load(Ordering::SeqCst), 1);
    assert_eq!(runs[0].load(Ordering::SeqCst), 0);
    dirty[1].store(false, Ordering::SeqCst);

    // Control: the same drains without the check interrupt the sleepers.
    let before = eintr.load(Ordering::SeqCst);
    for _ in 0..100 {
        unchecked.run().expect("drain-all");
    }
    stop.store(true, Ordering::SeqCst);
    for s in sleepers {
        s.join().unwrap();
    }
    assert!(
        eintr.load(Ordering::SeqCst) > before,
        "the control must see EINTRs, or this test could not fail"
    );
    assert!(domain.total_stats().signals_sent > 0);
}
