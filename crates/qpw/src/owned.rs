//! The thread's list of the slots it owns.
//!
//! Each binding links an [`OwnerRec`] (heap-allocated at bind time) into a
//! thread-local list, read without allocating or locking (the fork handlers
//! walk it too). A record names its slot and its binding's generation, so
//! "is the caller this slot's owner" cannot mistake one binding for
//! another. Under `--cfg qpw_loom` the list is kept per loom thread, so the
//! models explore the paths where the owner is the caller.

use crate::config::Config;
use crate::fork::GateOp;
use crate::slot::{generation, SlotState};
use std::cell::Cell;
use std::sync::atomic::{AtomicPtr, Ordering};

/// One entry of this thread's list of owned slots.
pub(crate) struct OwnerRec {
    next: AtomicPtr<OwnerRec>,
    slot: *const (),
    fork_child: unsafe fn(*const (), u64),
    fork_gate: unsafe fn(*const (), GateOp) -> bool,
    domain_id: usize,
    cpu: usize,
    /// The binding's generation.
    pub(crate) gen: u64,
}

impl OwnerRec {
    pub(crate) fn new<C: Config>(slot: &SlotState<C>, gen: u64) -> Self {
        Self {
            next: AtomicPtr::new(std::ptr::null_mut()),
            slot: slot as *const SlotState<C> as *const (),
            fork_child: fork_child_for::<C>,
            fork_gate: fork_gate_for::<C>,
            domain_id: slot.domain_id,
            cpu: slot.cpu,
            gen,
        }
    }
}

/// # Safety
/// `slot` must point to a live `SlotState<C>`.
unsafe fn fork_child_for<C: Config>(slot: *const (), gen: u64) {
    // SAFETY: the caller guarantees `slot` is a live SlotState<C> (the record
    // is unlinked before its owner, which keeps the domain alive, is dropped).
    let slot = unsafe { &*(slot as *const SlotState<C>) };
    if generation(slot.ctl.load(Ordering::Relaxed)) == gen {
        slot.fork_child(true);
    }
}

/// # Safety
/// As [`fork_child_for`].
unsafe fn fork_gate_for<C: Config>(slot: *const (), op: GateOp) -> bool {
    // SAFETY: as in `fork_child_for`.
    let slot = unsafe { &*(slot as *const SlotState<C>) };
    match op {
        GateOp::Close(deadline) => slot.fork_close(deadline),
        GateOp::OpenAndHelp(deadline) => {
            slot.fork_open(Some(deadline));
            true
        }
        GateOp::Open => {
            slot.fork_open(None);
            true
        }
    }
}

/// Applies `op` to every slot this thread owns; returns how many waits
/// passed their deadline (`Close`).
pub(crate) fn fork_gates(op: GateOp) -> usize {
    let mut expired = 0;
    find(|r| {
        // SAFETY: a linked record's slot is live.
        if !unsafe { (r.fork_gate)(r.slot, op) } {
            expired += 1;
        }
        None::<()>
    });
    expired
}

#[cfg(not(qpw_loom))]
thread_local! {
    // Const-initialised and without a destructor: reading it never allocates
    // or registers anything, so the fork handlers may.
    static OWNED: Cell<*const OwnerRec> = const { Cell::new(std::ptr::null()) };
}

// Per loom thread, so the owner-is-the-caller paths are explored.
#[cfg(qpw_loom)]
loom::thread_local! {
    static OWNED: Cell<*const OwnerRec> = Cell::new(std::ptr::null());
}

fn owned_head() -> *const OwnerRec {
    OWNED.with(|h| h.get())
}

/// Calls `f` on each record of this thread's list until it returns `Some`.
fn find<R>(mut f: impl FnMut(&OwnerRec) -> Option<R>) -> Option<R> {
    let mut p = owned_head();
    while !p.is_null() {
        // SAFETY: records on this thread's list are live while linked, and
        // only this thread links or unlinks them.
        let r = unsafe { &*p };
        if let Some(v) = f(r) {
            return Some(v);
        }
        p = r.next.load(Ordering::Relaxed);
    }
    None
}

/// Links `rec` at the head of this thread's list.
///
/// # Safety
/// `rec` must stay at its address, live, until [`unlink`]ed by this thread.
pub(crate) unsafe fn link(rec: &OwnerRec) {
    crate::fork::set_own_gates(fork_gates);
    OWNED.with(|h| {
        rec.next.store(h.get() as *mut OwnerRec, Ordering::Relaxed);
        h.set(rec);
    });
}

/// Removes `rec` from this thread's list.
pub(crate) fn unlink(rec: &OwnerRec) {
    OWNED.with(|h| {
        let target = rec as *const OwnerRec;
        let next = rec.next.load(Ordering::Relaxed);
        if std::ptr::eq(h.get(), target) {
            h.set(next);
        } else {
            find(|r| {
                if std::ptr::eq(r.next.load(Ordering::Relaxed), target) {
                    r.next.store(next, Ordering::Relaxed);
                    Some(())
                } else {
                    None
                }
            });
        }
    });
}

/// The slot this thread owns in domain `domain_id`, if any.
pub(crate) fn owned_in(domain_id: usize) -> Option<usize> {
    find(|r| (r.domain_id == domain_id).then_some(r.cpu))
}

/// Whether the calling thread holds the current binding of `slot` (a short
/// list walk).
pub(crate) fn current_thread_owns<C: Config>(slot: &SlotState<C>) -> bool {
    let target = slot as *const SlotState<C> as *const ();
    find(|r| std::ptr::eq(r.slot, target).then_some(r.gen))
        .is_some_and(|gen| generation(slot.ctl.load(Ordering::SeqCst)) == gen)
}

/// Fork child, forking thread: its bindings keep their slots. Returns
/// whether `slot` is one of them.
pub(crate) fn fork_child_mine<C: Config>(slot: &SlotState<C>) -> bool {
    let target = slot as *const SlotState<C> as *const ();
    find(|r| {
        if std::ptr::eq(r.slot, target) {
            // SAFETY: a linked record's slot is live.
            unsafe { (r.fork_child)(r.slot, r.gen) };
            return Some(generation(slot.ctl.load(Ordering::Relaxed)) == r.gen);
        }
        None
    })
    .unwrap_or(false)
}
