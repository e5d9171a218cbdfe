//! The cell lock: the per-CPU spinlock of `qpw=1`, and the local lock of
//! `PREEMPT_RT`, with priority inheritance for the owner.
//!
//! A kernel spinlock holder cannot be preempted; a userspace one can. An
//! owner that found its cell held by a remote thread used to spin and yield
//! until that thread was scheduled again: a scheduler tick (4 ms at HZ=250)
//! whenever the holder's CPU had something else to run, and no fairness (a
//! stream of remote takers could keep a spinning owner out indefinitely).
//!
//! The word is a Linux PI futex word: 0 when free, else the holder's kernel
//! thread id, with `FUTEX_WAITERS` set by the kernel while a thread waits
//! in `FUTEX_LOCK_PI`. The roles are asymmetric, so that the owner's
//! uncontended path stays one compare-and-swap plus one release store:
//!
//! - **Only the owner ever blocks in the kernel.** After a short spin it
//!   calls `FUTEX_LOCK_PI`: the kernel sets `FUTEX_WAITERS`, sleeps it, and
//!   lends its priority to the holder named in the word (a `SCHED_FIFO`
//!   owner boosts a preempted holder over whatever preempted it, as
//!   PREEMPT_RT's rt_mutex does).
//! - **Remote takers never block in the kernel.** They take a word that is
//!   exactly 0, spin, yield, and give up at a deadline if they were given
//!   one. A word with `FUTEX_WAITERS` set is never 0, so once the owner waits
//!   in the kernel no new remote taker can get ahead of it.
//! - **A remote holder unlocks** with `CAS(word, 0)`; if that fails because
//!   the kernel set `FUTEX_WAITERS`, with `FUTEX_UNLOCK_PI`, which hands the
//!   lock straight to the waiting owner (the word becomes its id).
//! - **The owner unlocks with a plain release store of 0**: nobody can be
//!   waiting in the kernel while the owner holds the lock, since only the
//!   owner waits there. (After a hand-off the kernel leaves `FUTEX_WAITERS`
//!   set in the word; its wait state is gone once the owner has returned from
//!   `FUTEX_LOCK_PI`, so the store is still right.)
//!
//! Where the kernel refuses the PI futex (no support, `ENOSYS`; the holder's
//! thread has gone, `ESRCH`), the owner falls back to spinning and yielding,
//! and the slot's stats count it (`owner_pi_unavailable`).

use crate::stats::Counters;
use crate::sync::{spin_hint, yield_now, AtomicBool, AtomicU32, Ordering};
#[cfg(not(qpw_loom))]
use std::time::Duration;
use std::time::Instant;

use crate::sys::FUTEX_TID_MASK;

/// How long the owner spins on a held cell before it waits in the kernel: a
/// running holder is usually done within a few microseconds.
#[cfg(not(qpw_loom))]
const OWNER_SPIN: Duration = Duration::from_micros(10);
/// Spins of a remote taker before it starts yielding (and flags a long wait).
#[cfg(not(qpw_loom))]
const REMOTE_SPINS: u32 = 128;
#[cfg(qpw_loom)]
const REMOTE_SPINS: u32 = 1;

/// A remote taker reached its deadline without getting the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Expired;

/// A cell's lock word; see the module documentation.
pub(crate) struct CellLock(AtomicU32);

impl CellLock {
    pub(crate) fn new() -> Self {
        Self(AtomicU32::new(0))
    }

    /// The owner takes the lock (`tid`: its kernel thread id). Waits as long
    /// as a remote holder holds it, in the kernel with priority inheritance
    /// after a short spin.
    #[inline(always)]
    pub(crate) fn lock_owner(&self, tid: u32, counters: &Counters) {
        if self
            .0
            .compare_exchange(0, tid, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            self.lock_owner_slow(tid, counters);
        }
    }

    /// The owner takes the lock if it is free; never waits.
    #[inline(always)]
    pub(crate) fn try_lock_owner(&self, tid: u32) -> bool {
        self.0
            .compare_exchange(0, tid, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    /// The owner lets go: a plain release store (no one waits in the kernel
    /// while the owner holds the lock).
    #[inline(always)]
    pub(crate) fn unlock_owner(&self) {
        self.0.store(0, Ordering::Release);
    }

    #[cold]
    fn lock_owner_slow(&self, tid: u32, counters: &Counters) {
        counters.contended();
        if self.owner_spin(tid) {
            return;
        }
        // Still held: by a remote thread (only the owner takes this lock as
        // owner), which may be preempted. Wait in the kernel, lending it our
        // priority; its unlock hands the lock to us.
        counters.owner_waited_pi();
        loop {
            match crate::sys::futex_lock_pi(&self.0) {
                Ok(()) => return,
                Err(e) if e == crate::sys::EINTR || e == crate::sys::EAGAIN => continue,
                Err(_) => break,
            }
        }
        // No PI futex here, or the holder's thread is gone: spin and yield.
        counters.owner_pi_unavailable();
        loop {
            while self.0.load(Ordering::Relaxed) != 0 {
                spin_hint();
                yield_now();
            }
            if self.try_lock_owner(tid) {
                return;
            }
        }
    }

    /// The owner's short spin: `true` if it got the lock.
    #[cfg(not(qpw_loom))]
    fn owner_spin(&self, tid: u32) -> bool {
        let start = Instant::now();
        loop {
            for _ in 0..32 {
                if self.0.load(Ordering::Relaxed) == 0 && self.try_lock_owner(tid) {
                    return true;
                }
                spin_hint();
            }
            if start.elapsed() >= OWNER_SPIN {
                return false;
            }
        }
    }

    /// The models take the kernel path after one look.
    #[cfg(qpw_loom)]
    fn owner_spin(&self, tid: u32) -> bool {
        self.try_lock_owner(tid)
    }

    /// A remote thread takes the lock (the word gets its kernel thread id):
    /// spinning, then yielding, never in the kernel. `long_wait`, if given,
    /// is set when the lock stays held past the spinning phase (its holder
    /// was most likely preempted). Gives up at `deadline` (the drain-all's)
    /// with [`Expired`], counted in the slot's `lock_timeouts`.
    #[inline(always)]
    pub(crate) fn lock_remote(
        &self,
        counters: &Counters,
        long_wait: Option<&AtomicBool>,
        deadline: Instant,
    ) -> Result<(), Expired> {
        let tid = crate::sys::current_tid() as u32;
        if self.try_take_remote(tid) {
            return Ok(());
        }
        self.lock_remote_slow(tid, counters, long_wait, deadline)
    }

    #[cold]
    fn lock_remote_slow(
        &self,
        tid: u32,
        counters: &Counters,
        long_wait: Option<&AtomicBool>,
        deadline: Instant,
    ) -> Result<(), Expired> {
        counters.contended();
        let mut spins = 0u32;
        loop {
            // Only a word of exactly 0 is free: one with FUTEX_WAITERS set is
            // the owner's, waiting in the kernel or handed to it.
            while self.0.load(Ordering::Relaxed) != 0 {
                spins = spins.saturating_add(1);
                if spins < REMOTE_SPINS {
                    spin_hint();
                    continue;
                }
                if spins == REMOTE_SPINS {
                    if let Some(flag) = long_wait {
                        flag.store(true, Ordering::Relaxed);
                    }
                }
                if spins % 16 == 0 && Instant::now() >= deadline {
                    counters.lock_timeout();
                    return Err(Expired);
                }
                yield_now();
            }
            if self.try_take_remote(tid) {
                return Ok(());
            }
        }
    }

    /// A remote thread takes the lock if it is free; never waits.
    #[inline(always)]
    pub(crate) fn try_lock_remote(&self) -> bool {
        self.try_take_remote(crate::sys::current_tid() as u32)
    }

    #[inline(always)]
    fn try_take_remote(&self, tid: u32) -> bool {
        self.0
            .compare_exchange(0, tid, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    /// A remote holder lets go, handing the lock to the owner if it waits in
    /// the kernel.
    #[inline]
    pub(crate) fn unlock_remote(&self) {
        self.unlock_remote_handed();
    }

    /// [`unlock_remote`](Self::unlock_remote); `true` if the lock was handed
    /// to a waiter in the kernel.
    pub(crate) fn unlock_remote_handed(&self) -> bool {
        loop {
            // Only the kernel changes the word while we hold it (it sets
            // FUTEX_WAITERS), so the id bits are ours. A bit the kernel set
            // means it knows the futex: let it free or hand over the lock.
            let cur = self.0.load(Ordering::Relaxed);
            if cur & !FUTEX_TID_MASK == 0 {
                if self
                    .0
                    .compare_exchange(cur, 0, Ordering::Release, Ordering::Relaxed)
                    .is_ok()
                {
                    return false;
                }
                continue;
            }
            return match crate::sys::futex_unlock_pi(&self.0) {
                Ok(()) => true,
                Err(_) => {
                    // Cannot happen while the word names us and the kernel
                    // knows the futex (a forked child's stale thread id
                    // would): free it anyway rather than keep it forever.
                    self.0.store(0, Ordering::Release);
                    false
                }
            };
        }
    }

    /// The word as it is now (0: free), for the owner's look at a slot's
    /// claim word (see `section.rs`).
    #[inline(always)]
    pub(crate) fn raw_load(&self, order: Ordering) -> u32 {
        self.0.load(order)
    }

    /// The raw word, for the models and tests.
    #[cfg(all(test, qpw_loom))]
    pub(crate) fn word(&self) -> u32 {
        self.0.load(Ordering::SeqCst)
    }
}
