//! loom models of the cell lock (run by `.ci/loom.sh`).
//!
//! The kernel's PI futex is modelled in `sys/model.rs` as a parking loop
//! with the kernel's hand-off: a waiter queued by `FUTEX_LOCK_PI` gets the
//! lock from the holder's `FUTEX_UNLOCK_PI`, and nobody else can take it in
//! between. `UnsafeCell` accesses in the critical sections are tracked, so
//! two holders at once fail the model.

use crate::cell_lock::CellLock;
use crate::slot::far_deadline;
use crate::stats::Counters;
use crate::sync::{Arc, UnsafeCell};
use loom::sync::atomic::{AtomicU32, Ordering};
use loom::thread;

struct Shared {
    lock: CellLock,
    data: UnsafeCell<u32>,
    counters: Counters,
    /// Order of entry into the critical section.
    seq: AtomicU32,
}

impl Shared {
    fn new() -> Self {
        Self {
            lock: CellLock::new(),
            data: UnsafeCell::new(0),
            counters: Counters::default(),
            seq: AtomicU32::new(0),
        }
    }

    /// The critical section: a tracked write, and this entry's number.
    fn critical(&self) -> u32 {
        let p = self.data.get_mut_ptr();
        // SAFETY: the caller holds the lock; loom checks that no other
        // access to the cell overlaps this one.
        unsafe { *p.deref() += 1 };
        drop(p);
        self.seq.fetch_add(1, Ordering::SeqCst)
    }

    fn total(&self) -> u32 {
        let p = self.data.get_mut_ptr();
        // SAFETY: every other thread has been joined.
        unsafe { *p.deref() }
    }
}

/// A remote thread holds the cell, lets go, and takes it again at once,
/// while the owner takes it. Exclusion holds throughout, and when the remote
/// unlock found the owner queued in the kernel (and handed the lock over),
/// the owner gets in before the remote thread's second taking.
#[test]
fn loom_cell_lock_owner_before_later_remote() {
    // Set (outside loom's view) when an execution took the hand-off path,
    // so the model is known to reach it.
    static HANDED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    loom::model(|| {
        let s = Arc::new(Shared::new());
        let remote = {
            let s = s.clone();
            thread::spawn(move || {
                s.lock
                    .lock_remote(&s.counters, None, far_deadline())
                    .unwrap();
                let first = s.critical();
                let handed = s.lock.unlock_remote_handed();
                s.lock
                    .lock_remote(&s.counters, None, far_deadline())
                    .unwrap();
                let second = s.critical();
                s.lock.unlock_remote();
                (first, handed, second)
            })
        };
        s.lock
            .lock_owner(crate::sys::current_tid() as u32, &s.counters);
        let mine = s.critical();
        s.lock.unlock_owner();
        let (first, handed, second) = remote.join().unwrap();
        if handed {
            HANDED.store(true, std::sync::atomic::Ordering::Relaxed);
            assert!(
                first < mine && mine < second,
                "a remote taker got in before the waiting owner: {first} {mine} {second}"
            );
            assert!(s.counters.snapshot().owner_waits_pi >= 1);
        }
        assert_eq!(s.total(), 3);
        assert_eq!(s.lock.word(), 0, "the lock is free at the end");
    });
    assert!(
        HANDED.load(std::sync::atomic::Ordering::Relaxed),
        "no execution handed the lock to a waiting owner"
    );
}

/// Two remote threads and the owner: exclusion, and every unlock frees or
/// hands over the lock (the model ends, with the word back at 0).
#[test]
fn loom_cell_lock_two_remotes_and_owner() {
    loom::model(|| {
        let s = Arc::new(Shared::new());
        let remote = {
            let s = s.clone();
            thread::spawn(move || {
                s.lock
                    .lock_remote(&s.counters, None, far_deadline())
                    .unwrap();
                s.critical();
                s.lock.unlock_remote();
            })
        };
        let other = {
            let s = s.clone();
            thread::spawn(move || {
                if s.lock.try_lock_remote() {
                    s.critical();
                    s.lock.unlock_remote();
                }
            })
        };
        let tid = crate::sys::current_tid();
        s.lock.lock_owner(tid as u32, &s.counters);
        s.critical();
        s.lock.unlock_owner();
        remote.join().unwrap();
        other.join().unwrap();
        assert!(s.total() >= 2);
        assert_eq!(s.lock.word(), 0);
    });
}
