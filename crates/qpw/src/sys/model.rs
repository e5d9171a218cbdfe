//! The OS as loom models see it: two CPUs, signals recorded but delivered by
//! the model itself (it calls the handler at the points it explores).

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
/// Signals as the models see them: sent ones wait in `pending` (per thread
/// id) until the owner's thread reaches a signal point; `fail` makes the
/// next sends fail with the errno given (as `tgkill` does under
/// `RLIMIT_SIGPENDING`).
#[derive(Default)]
struct Signals {
    pending: Vec<i32>,
    fail: Vec<i32>,
    /// Sends to a thread that already had the signal pending (a real-time
    /// signal would be queued twice: a duplicate delivery).
    while_pending: usize,
}

loom::lazy_static! {
    static ref SIGNALS: std::sync::Mutex<Signals> = std::sync::Mutex::new(Signals::default());
    /// What makes a delivery happen after its send, as the kernel's signal
    /// queue lock does for `tgkill` and the handler's start: the sender
    /// bumps it before queueing, the receiver after taking one (an RMW reads
    /// the latest value, so it synchronizes with every send before it).
    /// `SIGNALS` is a std mutex (loom cannot switch threads inside it), which
    /// orders nothing in loom's eyes: without this, loom let a handler's
    /// clearing of the in-flight claim be overtaken by the sender's earlier set.
    static ref DELIVERY: loom::sync::atomic::AtomicUsize = loom::sync::atomic::AtomicUsize::new(0);
}

pub(crate) fn signal_thread(tid: i32, _sig: i32) -> Result<(), i32> {
    if let Some(e) = SIGNALS.lock().unwrap().fail.pop() {
        return Err(e);
    }
    // Before the signal is queued: whoever takes it synchronizes with this.
    DELIVERY.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let mut s = SIGNALS.lock().unwrap();
    if s.pending.contains(&tid) {
        s.while_pending += 1;
    } else {
        s.pending.push(tid);
    }
    Ok(())
}

/// Whether a signal is pending for the calling thread; takes it.
pub(crate) fn take_signal() -> bool {
    let me = current_tid();
    let mut s = SIGNALS.lock().unwrap();
    let before = s.pending.len();
    s.pending.retain(|&t| t != me);
    let taken = s.pending.len() != before;
    drop(s);
    if taken {
        // The handler starts after the send (see `DELIVERY`).
        DELIVERY.fetch_add(0, std::sync::atomic::Ordering::SeqCst);
    }
    taken
}

/// Forgets every signal sent and every failure planned (a model's start).
#[allow(dead_code)] // used by the models only
pub(crate) fn reset_signals() {
    let mut s = SIGNALS.lock().unwrap();
    s.pending.clear();
    s.fail.clear();
    s.while_pending = 0;
}

/// Sends made while the target already had the signal pending.
#[allow(dead_code)] // used by some models only
pub(crate) fn sends_while_pending() -> usize {
    SIGNALS.lock().unwrap().while_pending
}

/// Makes the next `n` sends fail with `errno`.
#[allow(dead_code)] // used by some models only
pub(crate) fn fail_next_signals(n: usize, errno: i32) {
    SIGNALS
        .lock()
        .unwrap()
        .fail
        .extend(std::iter::repeat_n(errno, n));
}

pub(crate) const ESRCH: i32 = 3;
#[allow(dead_code)] // used by some models only
pub(crate) const EAGAIN: i32 = 11;
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
loom::thread_local! {
    static BLOCKS: std::cell::Cell<bool> = std::cell::Cell::new(false);
}

/// Whether this modelled thread blocks the qpw signal (set by [`set_blocks`]).
pub(crate) fn thread_blocks(_sig: i32) -> bool {
    BLOCKS.with(|b| b.get())
}

/// Makes this modelled thread block (or not) the qpw signal, for binds.
#[allow(dead_code)] // used by some models only
pub(crate) fn set_blocks(blocked: bool) {
    BLOCKS.with(|b| b.set(blocked));
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

/// How a thread sees the signal, as `/proc/self/task/<tid>/status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SignalView {
    pub(crate) blocked: bool,
    pub(crate) pending: bool,
}

/// Pending: sent and not yet taken at a signal point. Blocked: never (a
/// modelled thread that blocks the signal binds `remote`, and gets none).
pub(crate) fn signal_view(tid: u32, _sig: i32) -> Option<SignalView> {
    Some(SignalView {
        blocked: false,
        pending: SIGNALS.lock().unwrap().pending.contains(&(tid as i32)),
    })
}
