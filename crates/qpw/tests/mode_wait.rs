//! Leaving the `remote` effective mode waits for remote contexts at most
//! the domain's flush timeout.
//!
//! A `queue` slot bound by a thread that blocks the qpw signal runs `remote`
//! for that binding. When it goes back to `queue` (the owner unbinds, or a
//! new binding asks for `queue`), every remote context still on the slot
//! must have left, or one would keep touching a cell its new owner takes
//! without a lock. A `RemoteGuard` may be held for any time: the wait used
//! to have no bound, so the owner's unbind (an `Owner` drop) hung as long
//! as the guard lived. Now, past the flush timeout, the slot stays `remote`
//! (reason `RemoteContextOutstayed`, counted in `mode_waits_expired`), and
//! a binder binds it `remote`; once the guard is gone, the next bind gets
//! `queue` again.

#![cfg(all(target_os = "linux", feature = "qpw"))]

mod common;

use common::set_blocked;
use qpw::{Domain, Mode, ModeReason, PerCpu, SlotMode, Standard};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

/// Far above the flush timeout: reaching it means the wait is unbounded.
const WATCHDOG: Duration = Duration::from_secs(10);
const FLUSH: Duration = Duration::from_millis(300);

/// Binds slot 0 on a new thread (with the signal blocked or not), reports
/// the slot's mode, then unbinds when told; reports each step on `tx`.
fn binder(
    domain: &Domain<Standard>,
    blocked: bool,
    cells: Option<Arc<PerCpu<u64>>>,
) -> (
    mpsc::Receiver<&'static str>,
    mpsc::Sender<()>,
    thread::JoinHandle<()>,
) {
    let (tx, rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let d = domain.clone();
    let t = thread::spawn(move || {
        set_blocked(d.signal(), blocked);
        let mut me = d.bind_unpinned(0).expect("bind");
        if let Some(c) = &cells {
            *c.lock(&mut me) += 1;
        }
        tx.send("bound").unwrap();
        go_rx.recv().unwrap();
        drop(me);
        tx.send("unbound").unwrap();
    });
    (rx, go_tx, t)
}

/// Before the fix: `the unbind waited more than 10s for a RemoteGuard
/// (flush timeout 300ms): the wait has no bound`.
#[test]
fn leaving_remote_waits_for_a_remote_guard_at_most_the_flush_timeout() {
    let domain = Domain::<Standard>::builder()
        .mode(Mode::Queue)
        .nr_cpus(1)
        .flush_timeout(FLUSH)
        .signal(libc::SIGRTMIN() + 11)
        .build()
        .expect("domain");
    let cells: Arc<PerCpu<u64>> = Arc::new(PerCpu::new(&domain, |_| 0));

    // A blocked owner: `remote` for its binding.
    let (rx, go, t) = binder(&domain, true, Some(cells.clone()));
    assert_eq!(rx.recv_timeout(WATCHDOG), Ok("bound"));
    let info = domain.slot_info(0).unwrap();
    assert_eq!(
        (info.effective, info.reason),
        (SlotMode::Remote, ModeReason::SignalBlockedAtBind)
    );
    // A remote context that stays: this thread's guard on the cell.
    let mut guard = cells.remote(0).expect("remote guard");
    *guard += 10;
    go.send(()).unwrap();
    if rx.recv_timeout(WATCHDOG) != Ok("unbound") {
        drop(guard);
        t.join().unwrap();
        panic!(
            "the unbind waited more than {WATCHDOG:?} for a RemoteGuard \
             (flush timeout {FLUSH:?}): the wait has no bound"
        );
    }
    t.join().unwrap();
    let info = domain.slot_info(0).unwrap();
    assert_eq!(
        (info.configured, info.effective, info.reason),
        (
            SlotMode::Queue,
            SlotMode::Remote,
            ModeReason::RemoteContextOutstayed
        ),
        "the slot stays remote while the guard lives"
    );
    assert_eq!(domain.stats(0).unwrap().mode_waits_expired, 1);

    // An unblocked binder while the guard still lives: it binds, `remote`
    // (its sections would take the cell's lock), within the bound.
    let (rx, go, t) = binder(&domain, false, None);
    assert_eq!(
        rx.recv_timeout(WATCHDOG),
        Ok("bound"),
        "bind waited unbounded"
    );
    let info = domain.slot_info(0).unwrap();
    assert_eq!(
        (info.effective, info.reason),
        (SlotMode::Remote, ModeReason::RemoteContextOutstayed)
    );
    go.send(()).unwrap();
    if rx.recv_timeout(WATCHDOG) != Ok("unbound") {
        drop(guard);
        t.join().unwrap();
        panic!("the second unbind waited more than {WATCHDOG:?} for a RemoteGuard");
    }
    t.join().unwrap();
    // Bind and unbind each gave up once.
    assert_eq!(domain.stats(0).unwrap().mode_waits_expired, 3);

    // The guard goes: the next binding is `queue` again and its section
    // (no lock in `queue`) sees what the guard wrote.
    drop(guard);
    let (rx, go, t) = binder(&domain, false, Some(cells.clone()));
    assert_eq!(rx.recv_timeout(WATCHDOG), Ok("bound"));
    let info = domain.slot_info(0).unwrap();
    assert_eq!(
        (info.effective, info.reason),
        (SlotMode::Queue, ModeReason::Configured)
    );
    go.send(()).unwrap();
    assert_eq!(rx.recv_timeout(WATCHDOG), Ok("unbound"));
    t.join().unwrap();
    assert_eq!(*cells.remote(0).unwrap(), 12);
    assert_eq!(domain.stats(0).unwrap().mode_waits_expired, 3);
}
