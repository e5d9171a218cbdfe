//! The OS as loom models see it: two CPUs, signals recorded but delivered by
//! the model itself (it calls the handler at the points it explores).

use crate::error::Error;

pub(crate) struct Affinity;
pub(crate) fn allowed_cpus() -> Result<Vec<usize>, Error> {
    Ok(vec![0, 1])
}
pub(crate) fn pin_current(_cpu: usize) -> Result<Affinity, Error> {
    Ok(Affinity)
}
pub(crate) fn restore_affinity(_saved: &Affinity) {}
pub(crate) fn gettid() -> i32 {
    1
}
pub(crate) fn signal_thread(_tid: i32, _sig: i32) -> Result<(), i32> {
    Ok(())
}
pub(crate) const ESRCH: i32 = 3;
pub(crate) fn rt_signal_range() -> (i32, i32) {
    (34, 64)
}
pub(crate) fn default_signal() -> i32 {
    41
}
pub(crate) fn install_handler(
    _sig: i32,
    _handler: extern "C" fn(i32, *mut core::ffi::c_void, *mut core::ffi::c_void),
) -> Result<bool, Error> {
    Ok(false)
}
pub(crate) fn thread_blocks(_sig: i32) -> bool {
    false
}
#[allow(dead_code)] // the handler is not modelled
pub(crate) struct ErrnoGuard;
#[allow(dead_code)] // the handler is not modelled
impl ErrnoGuard {
    pub(crate) fn save() -> Self {
        ErrnoGuard
    }
}
pub(crate) fn isolated_cpus() -> Result<Vec<usize>, Error> {
    Ok(Vec::new())
}

pub(crate) const EINTR: i32 = 4;
pub(crate) const EAGAIN: i32 = 11;

static NEXT_TID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(100);

loom::thread_local! {
    static TID: u32 = NEXT_TID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// A distinct id per model thread (ids need only differ, and not be 0).
pub(crate) fn current_tid() -> u32 {
    TID.with(|t| *t)
}

/// The kernel's `FUTEX_LOCK_PI` as a parking loop. Its atomic step (take a
/// free word, or set `FUTEX_WAITERS` and queue) is one compare-and-swap;
/// parked, the thread yields until the holder's `FUTEX_UNLOCK_PI` leaves the
/// word "handed over" (`FUTEX_WAITERS` with no id), which only a queued
/// waiter takes. qpw has at most one such waiter per word (the owner).
pub(crate) fn futex_lock_pi(word: &crate::sync::AtomicU32) -> Result<(), i32> {
    use crate::cell_lock::{FUTEX_TID_MASK, FUTEX_WAITERS};
    use crate::sync::Ordering::SeqCst;
    let tid = current_tid();
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
    use crate::cell_lock::FUTEX_WAITERS;
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
