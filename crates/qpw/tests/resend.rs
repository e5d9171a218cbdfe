//! A signal the kernel still holds for the owner is never sent again.
//!
//! A flusher that waited 100 ms with the signal still marked in flight used
//! to call it lost and send another: with a real-time signal the kernel
//! queues both, so the owner ran its handler twice for one drain (and the
//! bench's "signals <= drains" and the storms' accounting failed under
//! load). Now a signal is sent again only when the owner's thread shows it
//! neither pending nor blocked (`/proc/self/task/<tid>/status`).
//!
//! Two ways to keep a signal pending past the resend delay: the owner blocks
//! it for a while (deterministic), or a `SCHED_FIFO` thread keeps the
//! owner's CPU (where permitted; skipped with a message otherwise).

#![cfg(target_os = "linux")]

mod common;

use common::{counted_work, set_blocked};
use qpw::{Domain, Mode, Standard};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

/// Far above what anything here takes: reaching it means a hang.
const HANG: Duration = Duration::from_secs(20);
/// How long the owner cannot take its signal: well past the 100 ms after
/// which a signal still in flight used to be called lost.
const HELD: Duration = Duration::from_millis(400);

fn queue_domain(signal_offset: i32) -> Domain<Standard> {
    Domain::<Standard>::builder()
        .mode(Mode::Queue)
        .nr_cpus(1)
        .flush_timeout(HANG)
        .signal(libc::SIGRTMIN() + signal_offset)
        .build()
        .expect("domain")
}

/// Pins the calling thread to `cpu`; `false` if not permitted.
fn pin(cpu: usize) -> bool {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// The CPUs this process may run on.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is valid; the kernel fills it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// The owner blocks the signal for `HELD`, then unblocks it: the signal
/// sent for the drain waits pending meanwhile, and is the only one.
///
/// Before the fix: `2 signals for one drain (the first was still pending):
/// SlotStats { signals_sent: 2, .. works_in_handler: 1, ..}`.
#[test]
fn a_signal_blocked_by_the_owner_is_not_sent_again() {
    let domain = queue_domain(9);
    let (w, ran) = counted_work(&domain, 0);
    let (tx, rx) = mpsc::channel::<()>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let d = domain.clone();
    let owner = thread::spawn(move || {
        let _me = d.bind_unpinned(0).unwrap();
        set_blocked(d.signal(), true);
        tx.send(()).unwrap();
        go_rx.recv().unwrap();
        thread::sleep(HELD);
        set_blocked(d.signal(), false);
        // Stay bound until the drain is over.
        go_rx.recv().unwrap();
    });
    rx.recv_timeout(HANG).unwrap();
    let before = domain.stats(0).unwrap();
    go_tx.send(()).unwrap();
    assert!(w.queue());
    assert_eq!(w.flush(), Ok(()));
    let after = domain.stats(0).unwrap();
    go_tx.send(()).unwrap();
    owner.join().unwrap();
    assert_eq!(ran.load(Ordering::SeqCst), 1);
    assert_eq!(
        after.signals_sent - before.signals_sent,
        1,
        "{} signals for one drain (the first was still pending): {after:?}",
        after.signals_sent - before.signals_sent
    );
    assert_eq!(after.signals_resent_lost, 0, "{after:?}");
}

/// Sets the calling thread `SCHED_FIFO` at `prio`; `false` if not permitted.
fn set_fifo(prio: i32) -> bool {
    let p = libc::sched_param {
        sched_priority: prio,
    };
    // SAFETY: `p` is a valid sched_param; 0 is the calling thread.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &p) == 0 }
}

/// A `SCHED_FIFO` thread spins on the owner's CPU for `HELD`: the owner is
/// not scheduled, its signal stays pending, and it is the only one sent.
/// Skipped (with a message) without two CPUs or without `SCHED_FIFO`.
///
/// Before the fix: `2 signals for one drain (the owner was not scheduled)`.
#[test]
fn a_signal_pending_for_a_descheduled_owner_is_not_sent_again() {
    let cpus = allowed_cpus();
    if cpus.len() < 2 {
        eprintln!("skipped: needs two CPUs, this process may run on {cpus:?}");
        return;
    }
    let (flusher_cpu, owner_cpu) = (cpus[0], cpus[1]);
    let domain = queue_domain(10);
    let w = domain.work(0, |_| {}).unwrap();
    let (tx, rx) = mpsc::channel::<()>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let d = domain.clone();
    let owner = thread::spawn(move || {
        assert!(pin(owner_cpu));
        let _me = d.bind_unpinned(0).unwrap();
        tx.send(()).unwrap();
        go_rx.recv().unwrap();
    });
    rx.recv_timeout(HANG).unwrap();
    // The hog: SCHED_FIFO on the owner's CPU, spinning for `HELD` once it
    // runs there (the owner, `SCHED_OTHER`, cannot run meanwhile).
    let hogging = Arc::new(AtomicBool::new(false));
    let (ok_tx, ok_rx) = mpsc::channel::<bool>();
    let hog = {
        let hogging = hogging.clone();
        thread::spawn(move || {
            if !pin(owner_cpu) || !set_fifo(10) {
                ok_tx.send(false).unwrap();
                return;
            }
            ok_tx.send(true).unwrap();
            hogging.store(true, Ordering::SeqCst);
            let end = Instant::now() + HELD;
            while Instant::now() < end {
                std::hint::spin_loop();
            }
            hogging.store(false, Ordering::SeqCst);
        })
    };
    if !ok_rx.recv_timeout(HANG).unwrap() {
        eprintln!("skipped: this process may not use SCHED_FIFO");
        hog.join().unwrap();
        go_tx.send(()).unwrap();
        owner.join().unwrap();
        return;
    }
    assert!(pin(flusher_cpu));
    while !hogging.load(Ordering::SeqCst) {
        thread::yield_now();
    }
    let before = domain.stats(0).unwrap();
    assert!(w.queue());
    assert_eq!(w.flush(), Ok(()));
    let after = domain.stats(0).unwrap();
    hog.join().unwrap();
    go_tx.send(()).unwrap();
    owner.join().unwrap();
    assert_eq!(
        after.signals_sent - before.signals_sent,
        1,
        "{} signals for one drain (the owner was not scheduled): {after:?}",
        after.signals_sent - before.signals_sent
    );
    assert_eq!(after.signals_resent_lost, 0, "{after:?}");
}
