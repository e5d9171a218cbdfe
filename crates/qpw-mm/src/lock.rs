//! `Lock<T>`: the mutex of every shared structure in qpw-mm (depots, the
//! large-mapping cache, the decay state).
//!
//! A futex mutex (three states: unlocked, locked, locked with waiters) that
//! can be *held across a `fork`*: the fork hook's `prepare` takes every lock
//! with [`Lock::lock_raw`] and `parent`/`child` release them with
//! [`Lock::unlock_raw`]. `std::sync::Mutex` cannot do that (a guard cannot
//! outlive the call that made it, and there is no force-unlock), and
//! `parking_lot`'s mutex keeps waiters in a global table whose own locks a
//! vanished thread may hold in the child. Here the whole state is the one
//! word: in the child, unlocking stores 0 and wakes nobody that exists.
//!
//! Between `prepare` and `parent`/`child` the forking thread itself may
//! still allocate (qpw's own fork handling does, in the child before the
//! consumer hooks run): it holds every lock then, and no critical section of
//! any other thread is under way, so [`Lock::lock`] from the fork holder
//! enters without taking the lock (and its guard releases nothing).
//!
//! Locks are short (list manipulation, never a system call that blocks for
//! long), so `lock` spins briefly before sleeping. Poisoning does not exist:
//! every critical section keeps its structure consistent at each step.

use crate::sys;
use std::cell::UnsafeCell;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

const UNLOCKED: u32 = 0;
const LOCKED: u32 = 1;
const CONTENDED: u32 = 2;

/// The thread (`pthread_self`) that holds every lock for a fork, or 0.
static FORK_HOLDER: AtomicUsize = AtomicUsize::new(0);
/// How many instances' fork hooks hold their locks (all in that thread).
static FORK_DEPTH: AtomicUsize = AtomicUsize::new(0);

/// An instance's fork hook took its locks (`on`) or released them. Only the
/// forking thread calls this, between `prepare` and `parent`/`child`.
pub(crate) fn set_fork_holder(on: bool) {
    if on {
        if FORK_DEPTH.fetch_add(1, Ordering::Relaxed) == 0 {
            FORK_HOLDER.store(sys::thread_self(), Ordering::Release);
        }
    } else if FORK_DEPTH.fetch_sub(1, Ordering::Relaxed) == 1 {
        FORK_HOLDER.store(0, Ordering::Release);
    }
}

fn is_fork_holder() -> bool {
    let h = FORK_HOLDER.load(Ordering::Acquire);
    h != 0 && h == sys::thread_self()
}

/// A mutex over `T` that a fork hook can hold across `fork`.
pub(crate) struct Lock<T> {
    state: AtomicU32,
    value: UnsafeCell<T>,
}

// SAFETY: the value is only reached through a guard (or the raw
// lock/unlock pair), which the state word makes exclusive (the fork
// holder's lock-free entry is exclusive too: it holds the lock and only its
// own thread runs code between prepare and parent/child that reaches it, one
// guard at a time); T: Send suffices as with std's Mutex.
unsafe impl<T: Send> Sync for Lock<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Send for Lock<T> {}

impl<T> Lock<T> {
    pub(crate) const fn new(value: T) -> Self {
        Self {
            state: AtomicU32::new(UNLOCKED),
            value: UnsafeCell::new(value),
        }
    }

    /// Takes the lock (or, in the thread that holds every lock for a fork,
    /// enters without it).
    #[inline]
    pub(crate) fn lock(&self) -> LockGuard<'_, T> {
        if self
            .state
            .compare_exchange(UNLOCKED, LOCKED, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            return LockGuard {
                lock: self,
                release: true,
            };
        }
        if is_fork_holder() {
            return LockGuard {
                lock: self,
                release: false,
            };
        }
        self.lock_contended();
        LockGuard {
            lock: self,
            release: true,
        }
    }

    /// Takes the lock without a guard (the fork hook's `prepare`); the
    /// caller releases it with [`unlock_raw`](Self::unlock_raw).
    #[inline]
    pub(crate) fn lock_raw(&self) {
        if self
            .state
            .compare_exchange(UNLOCKED, LOCKED, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            self.lock_contended();
        }
    }

    #[cold]
    #[inline(never)]
    fn lock_contended(&self) {
        for _ in 0..100 {
            if self.state.load(Ordering::Relaxed) == UNLOCKED
                && self
                    .state
                    .compare_exchange(UNLOCKED, LOCKED, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                return;
            }
            std::hint::spin_loop();
        }
        // Announce a waiter; whoever unlocks then wakes one.
        while self.state.swap(CONTENDED, Ordering::Acquire) != UNLOCKED {
            sys::futex_wait(&self.state, CONTENDED, None);
        }
    }

    /// Releases a lock taken with [`lock_raw`](Self::lock_raw).
    ///
    /// # Safety
    /// The lock is held, by this context (the fork hook: taken in `prepare`
    /// by the thread that forks, released by it in the parent or the child),
    /// and no guard of it is live.
    #[inline]
    pub(crate) unsafe fn unlock_raw(&self) {
        if self.state.swap(UNLOCKED, Ordering::Release) == CONTENDED {
            sys::futex_wake(&self.state, 1);
        }
    }
}

/// Holds a [`Lock`] until dropped.
pub(crate) struct LockGuard<'a, T> {
    lock: &'a Lock<T>,
    /// False when the fork holder entered a lock it already holds.
    release: bool,
}

impl<T> Deref for LockGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard holds the lock: no other reference to the value.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> DerefMut for LockGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as above, and the guard is borrowed mutably.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for LockGuard<'_, T> {
    fn drop(&mut self) {
        if self.release {
            // SAFETY: the guard took the lock and is going away.
            unsafe { self.lock.unlock_raw() }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn excludes_and_wakes_waiters() {
        let l = Arc::new(Lock::new(0u64));
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let l = l.clone();
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        let mut g = l.lock();
                        let v = *g;
                        if v % 97 == 0 {
                            std::thread::yield_now();
                        }
                        *g = v + 1;
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(*l.lock(), 80_000);
    }

    #[test]
    fn raw_lock_is_released_by_unlock_raw() {
        let l = Arc::new(Lock::new(()));
        l.lock_raw();
        let l2 = l.clone();
        let h = std::thread::spawn(move || drop(l2.lock()));
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(!h.is_finished(), "the raw lock did not exclude");
        // SAFETY: taken above by this thread, no guard live.
        unsafe { l.unlock_raw() };
        h.join().unwrap();
    }
}
