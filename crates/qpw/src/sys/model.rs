//! The OS as loom models see it: two CPUs, `membarrier` as a `SeqCst` fence
//! (the owner's side of the asymmetric fence is one too, see
//! `sync::owner_fence`), PI futexes as parking loops.

use crate::error::Error;

pub(crate) struct Affinity;
pub(crate) fn possible_cpus() -> Result<Vec<usize>, Error> {
    Ok(vec![0, 1])
}
pub(crate) fn pin_current(_cpu: usize) -> Result<Affinity, Error> {
    Ok(Affinity)
}
pub(crate) fn restore_affinity(_saved: &Affinity) {}
loom::thread_local! {
    static TID: std::cell::Cell<i32> = std::cell::Cell::new(0);
}

/// Each loom thread gets its own id (from 100 up), so "is the caller this
/// slot's owner" is answered per modelled thread.
pub(crate) fn current_tid() -> i32 {
    use std::sync::atomic::{AtomicI32, Ordering};
    static NEXT: AtomicI32 = AtomicI32::new(100);
    TID.with(|t| {
        if t.get() == 0 {
            t.set(NEXT.fetch_add(1, Ordering::Relaxed));
        }
        t.get()
    })
}

#[allow(dead_code)] // fork is not modelled
pub(crate) fn forget_tid() {}

#[allow(dead_code)] // fork is not modelled
pub(crate) fn at_fork(
    _prepare: unsafe extern "C" fn(),
    _parent: unsafe extern "C" fn(),
    _child: unsafe extern "C" fn(),
) -> Result<(), Error> {
    Ok(())
}
/// `membarrier(2)` as the models see it: the barrier the owner's CPU
/// executes is modelled by the `SeqCst` fence of `sync::owner_fence` on the
/// owner's side, this one on the drainer's. Registration always succeeds
/// unless a model says otherwise ([`refuse_fences`]).
pub(crate) fn fence_register() -> Result<(), i32> {
    if REFUSE.with(|r| r.get()) {
        return Err(EPERM);
    }
    Ok(())
}

pub(crate) fn fence_register_targeted() -> Result<(), i32> {
    fence_register()
}

pub(crate) fn fence_process() -> Result<(), i32> {
    loom::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    Ok(())
}

pub(crate) fn fence_cpu(_cpu: usize) -> Result<(), i32> {
    fence_process()
}

loom::thread_local! {
    static REFUSE: std::cell::Cell<bool> = std::cell::Cell::new(false);
}

/// Makes this modelled thread's `membarrier` registrations fail (`EPERM`).
#[allow(dead_code)] // used by some models only
pub(crate) fn refuse_fences(refuse: bool) {
    REFUSE.with(|r| r.set(refuse));
}

pub(crate) const EPERM: i32 = 1;
#[allow(dead_code)] // used by some models only
pub(crate) const EAGAIN: i32 = 11;
pub(crate) fn isolated_cpus() -> Result<Vec<usize>, Error> {
    Ok(Vec::new())
}

pub(crate) const EINTR: i32 = 4;

/// The kernel's `FUTEX_LOCK_PI` as a parking loop. Its atomic step (take a
/// free word, or set `FUTEX_WAITERS` and queue) is one compare-and-swap;
/// parked, the thread yields until the holder's `FUTEX_UNLOCK_PI` leaves the
/// word "handed over" (`FUTEX_WAITERS` with no id), which only a queued
/// waiter takes. qpw has at most one such waiter per word (the owner).
pub(crate) fn futex_lock_pi(word: &crate::sync::AtomicU32) -> Result<(), i32> {
    use super::{FUTEX_TID_MASK, FUTEX_WAITERS};
    use crate::sync::Ordering::SeqCst;
    let tid = current_tid() as u32;
    loop {
        let cur = word.load(SeqCst);
        if cur & FUTEX_TID_MASK == 0 {
            if word.compare_exchange(cur, tid, SeqCst, SeqCst).is_ok() {
                return Ok(());
            }
        } else if cur & FUTEX_WAITERS != 0
            || word
                .compare_exchange(cur, cur | FUTEX_WAITERS, SeqCst, SeqCst)
                .is_ok()
        {
            break;
        }
    }
    loop {
        loom::thread::yield_now();
        if word
            .compare_exchange(FUTEX_WAITERS, FUTEX_WAITERS | tid, SeqCst, SeqCst)
            .is_ok()
        {
            return Ok(());
        }
    }
}

/// The kernel's `FUTEX_UNLOCK_PI`: hands the word to the queued waiter (see
/// [`futex_lock_pi`]), or frees it when none is queued.
pub(crate) fn futex_unlock_pi(word: &crate::sync::AtomicU32) -> Result<(), i32> {
    use super::FUTEX_WAITERS;
    use crate::sync::Ordering::SeqCst;
    let cur = word.load(SeqCst);
    let next = if cur & FUTEX_WAITERS != 0 {
        FUTEX_WAITERS
    } else {
        0
    };
    word.store(next, SeqCst);
    Ok(())
}
