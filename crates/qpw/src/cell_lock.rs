//! A cell's lock word: the per-CPU spinlock of `qpw=1` and of `PREEMPT_RT`.
//!
//! Two kinds of holder, with separate entry points:
//!
//! - the slot's **owner**, inside its local section: [`lock_owner`](CellLock::lock_owner)
//!   is infallible (a section cannot fail), and the owner only ever waits on
//!   a remote holder, whose critical section is one work function;
//! - a **remote** caller running work for the slot: [`lock_remote`](CellLock::lock_remote)
//!   takes the drain-all's deadline and gives up past it with [`LockTimeout`],
//!   so no remote wait is unbounded (an owner preempted inside its section,
//!   or a caller waiting on itself, cannot hold a drain forever).
//!
//! The word holds the holder's thread id (0 = free), which a
//! priority-inheritance implementation needs and which tells, in a fork
//! child, who held it. All of the lock's logic stays in this file so that
//! another implementation can replace it without touching its callers.

use crate::stats::Counters;
use crate::sync::{spin_hint, yield_now, AtomicBool, AtomicU32, Ordering};
use std::time::Instant;

/// A remote lock wait passed its deadline (the holder kept the lock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LockTimeout;

/// The lock word of one cell.
pub(crate) struct CellLock(AtomicU32);

/// Spins before a waiter starts yielding (and, for a remote waiter, reports
/// a long wait: the holder was most likely preempted).
const SPINS: u32 = 128;

impl CellLock {
    pub(crate) fn new() -> Self {
        Self(AtomicU32::new(0))
    }

    #[inline(always)]
    fn try_acquire(&self, tid: u32) -> bool {
        self.0
            .compare_exchange_weak(0, tid.max(1), Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    /// The owner's section: takes the lock, waiting as long as a remote
    /// holder keeps it (that holder runs one work function).
    #[inline(always)]
    pub(crate) fn lock_owner(&self, tid: u32, counters: &Counters) {
        if !self.try_acquire(tid) {
            self.lock_owner_slow(tid, counters);
        }
    }

    #[cold]
    fn lock_owner_slow(&self, tid: u32, counters: &Counters) {
        counters.contended();
        let mut spins = 0u32;
        loop {
            while self.0.load(Ordering::Relaxed) != 0 {
                spins = spins.saturating_add(1);
                if spins < SPINS {
                    spin_hint();
                } else {
                    yield_now();
                }
            }
            if self.try_acquire(tid) {
                return;
            }
        }
    }

    /// The owner, without waiting.
    #[inline]
    #[allow(dead_code)] // part of the lock's interface; the owner's path blocks today
    pub(crate) fn try_lock_owner(&self, tid: u32) -> bool {
        self.try_acquire(tid)
    }

    /// Releases a lock taken by the owner.
    #[inline(always)]
    pub(crate) fn unlock_owner(&self) {
        self.0.store(0, Ordering::Release);
    }

    /// A remote caller: takes the lock, or gives up once `deadline` has
    /// passed. Sets `long_wait` (if given) when the wait outlasts the
    /// spinning phase.
    pub(crate) fn lock_remote(
        &self,
        counters: &Counters,
        long_wait: Option<&AtomicBool>,
        deadline: Instant,
    ) -> Result<(), LockTimeout> {
        let tid = crate::sys::current_tid() as u32;
        if self.try_acquire(tid) {
            return Ok(());
        }
        counters.contended();
        let mut spins = 0u32;
        loop {
            while self.0.load(Ordering::Relaxed) != 0 {
                spins = spins.saturating_add(1);
                if spins < SPINS {
                    spin_hint();
                    continue;
                }
                if spins == SPINS {
                    if let Some(flag) = long_wait {
                        flag.store(true, Ordering::Relaxed);
                    }
                }
                yield_now();
                if spins % 16 == 0 && Instant::now() >= deadline {
                    counters.lock_timeout();
                    return Err(LockTimeout);
                }
            }
            if self.try_acquire(tid) {
                return Ok(());
            }
        }
    }

    /// A remote caller, without waiting.
    #[inline]
    #[allow(dead_code)] // part of the lock's interface
    pub(crate) fn try_lock_remote(&self) -> bool {
        self.try_acquire(crate::sys::current_tid() as u32)
    }

    /// Releases a lock taken by a remote caller.
    #[inline]
    pub(crate) fn unlock_remote(&self) {
        self.0.store(0, Ordering::Release);
    }
}
