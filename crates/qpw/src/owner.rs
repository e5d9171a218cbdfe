//! Owners: the token that proves "this thread owns slot c", the thread's list
//! of them that the signal handler walks, and the handler itself.

use crate::config::{Config, SlotMode};
use crate::domain::Domain;
use crate::error::Error;
use crate::slot::SlotState;
use crate::stats::RanAt;
#[cfg(not(qpw_loom))]
use std::cell::Cell;
use std::cell::RefCell;
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::AtomicPtr;
#[cfg(not(qpw_loom))]
use std::sync::atomic::Ordering;

/// One entry of this thread's list of owned slots. Heap-allocated at bind
/// time so the handler can read it without allocating.
#[cfg_attr(qpw_loom, allow(dead_code))] // the thread list is not modelled
pub(crate) struct OwnerRec {
    next: AtomicPtr<OwnerRec>,
    slot: *const (),
    on_signal: unsafe fn(*const ()),
    domain_id: usize,
    cpu: usize,
}

/// # Safety
/// `slot` must point to a live `SlotState<C>`.
unsafe fn on_signal_for<C: Config>(slot: *const ()) {
    // SAFETY: the caller guarantees `slot` is a live SlotState<C> (the record
    // is unlinked before its owner, which keeps the domain alive, is dropped).
    let slot = unsafe { &*(slot as *const SlotState<C>) };
    slot.on_signal();
}

#[cfg(not(qpw_loom))]
thread_local! {
    // Const-initialised and without a destructor: reading it never allocates
    // or registers anything, so the signal handler may.
    static OWNED: Cell<*const OwnerRec> = const { Cell::new(std::ptr::null()) };
}

#[cfg(not(qpw_loom))]
fn owned_head() -> *const OwnerRec {
    OWNED.with(|h| h.get())
}

/// Links `rec` at the head of this thread's list. A signal arriving at any
/// point sees either the old list or the new one.
fn link(rec: &OwnerRec) {
    #[cfg(not(qpw_loom))]
    OWNED.with(|h| {
        rec.next.store(h.get() as *mut OwnerRec, Ordering::Relaxed);
        std::sync::atomic::compiler_fence(Ordering::SeqCst);
        h.set(rec);
        std::sync::atomic::compiler_fence(Ordering::SeqCst);
    });
    #[cfg(qpw_loom)]
    let _ = rec;
}

fn unlink(rec: &OwnerRec) {
    #[cfg(not(qpw_loom))]
    OWNED.with(|h| {
        let target = rec as *const OwnerRec;
        let next = rec.next.load(Ordering::Relaxed);
        if std::ptr::eq(h.get(), target) {
            h.set(next);
        } else {
            let mut p = h.get();
            while !p.is_null() {
                // SAFETY: records on this thread's list are live until unlinked,
                // and only this thread links or unlinks them.
                let r = unsafe { &*p };
                if std::ptr::eq(r.next.load(Ordering::Relaxed), target) {
                    r.next.store(next, Ordering::Relaxed);
                    break;
                }
                p = r.next.load(Ordering::Relaxed);
            }
        }
        std::sync::atomic::compiler_fence(Ordering::SeqCst);
    });
    #[cfg(qpw_loom)]
    let _ = rec;
}

/// Whether this thread owns a slot of domain `id`; returns the slot.
pub(crate) fn owned_in(domain_id: usize) -> Option<usize> {
    #[cfg(not(qpw_loom))]
    {
        let mut p = owned_head();
        while !p.is_null() {
            // SAFETY: as in `unlink`.
            let r = unsafe { &*p };
            if r.domain_id == domain_id {
                return Some(r.cpu);
            }
            p = r.next.load(Ordering::Relaxed);
        }
        None
    }
    #[cfg(qpw_loom)]
    {
        let _ = domain_id;
        None
    }
}

/// Whether the calling thread is the owner of `slot` (walks its short list;
/// async-signal-safe).
pub(crate) fn current_thread_owns<C: Config>(slot: &SlotState<C>) -> bool {
    #[cfg(not(qpw_loom))]
    {
        let target = slot as *const SlotState<C> as *const ();
        let mut p = owned_head();
        while !p.is_null() {
            // SAFETY: records on this thread's list are live while linked.
            let r = unsafe { &*p };
            if std::ptr::eq(r.slot, target) {
                return true;
            }
            p = r.next.load(Ordering::Relaxed);
        }
        false
    }
    #[cfg(qpw_loom)]
    {
        let _ = slot;
        false
    }
}

/// The qpw signal handler: runs pending work of every slot this thread owns,
/// unless the thread is inside that slot's local section.
///
/// Async-signal-safe as long as the work functions are: it allocates nothing,
/// takes no lock its thread may hold outside a local section (a cell's
/// spinlock is only ever held by the owner inside a section), and keeps `errno`.
#[cfg(not(qpw_loom))]
extern "C" fn handler(_sig: i32, _info: *mut libc::siginfo_t, _uctx: *mut libc::c_void) {
    let _errno = crate::sys::ErrnoGuard::save();
    let mut p = owned_head();
    while !p.is_null() {
        // SAFETY: records on this thread's list are live while linked, and the
        // thread that unlinks them is the one this handler interrupted, so no
        // unlink is in progress beyond the single pointer store it does.
        let r = unsafe { &*p };
        // SAFETY: a linked record's slot is live (its owner holds the domain).
        unsafe { (r.on_signal)(r.slot) };
        p = r.next.load(Ordering::Relaxed);
    }
}

#[cfg(qpw_loom)]
extern "C" fn handler(_sig: i32, _info: *mut core::ffi::c_void, _uctx: *mut core::ffi::c_void) {}

/// Installs the handler for `signal` once per process.
pub(crate) fn ensure_handler(signal: i32) -> Result<(), Error> {
    crate::fork::with_installed_signals(|installed| {
        if installed.contains(&signal) {
            return Ok(());
        }
        crate::sys::install_handler(signal, handler)?;
        installed.push(signal);
        Ok(())
    })
}

/// Proof that the current thread owns one slot of a domain: the Rust form of
/// "this code runs on CPU c with preemption off".
///
/// Not `Send`: it cannot leave the thread that bound it. Dropping it runs the
/// slot's pending work, frees the slot for reuse and restores the thread's
/// CPU affinity if binding pinned it.
///
/// Local sections take `&mut Owner`, so one thread holds at most one
/// section of a domain at a time and no two guards alias.
pub struct Owner<C: Config = crate::Standard> {
    pub(crate) domain: Domain<C>,
    rec: Box<OwnerRec>,
    /// `&domain.slots[cpu]`, cached for the hot path (the domain outlives it).
    slot: std::ptr::NonNull<SlotState<C>>,
    pub(crate) cpu: usize,
    /// The cell's spinlock is the local lock (`remote` slot, or RT policy).
    pub(crate) use_spin: bool,
    affinity: Option<crate::sys::Affinity>,
    _not_send: PhantomData<*mut ()>,
}

impl<C: Config> fmt::Debug for Owner<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Owner")
            .field("cpu", &self.cpu)
            .field("pinned", &self.affinity.is_some())
            .finish()
    }
}

impl<C: Config> Owner<C> {
    pub(crate) fn bind(domain: Domain<C>, cpu: usize, pin: bool) -> Result<Self, Error> {
        let slot = domain.slot(cpu)?;
        if let Some(owned) = owned_in(domain.id()) {
            return Err(Error::AlreadyBound { cpu: owned });
        }
        if pin && !domain.inner.allowed.contains(&cpu) {
            return Err(Error::CpuNotAllowed {
                cpu,
                allowed: domain.allowed_cpus(),
            });
        }
        if slot.mode == SlotMode::Queue && crate::sys::thread_blocks(domain.signal()) {
            return Err(Error::SignalBlocked {
                signal: domain.signal(),
            });
        }
        let tid = crate::sys::current_tid() as u32;
        slot.acquire_owner(tid)
            .map_err(|()| Error::SlotOwned { cpu })?;
        let affinity = if pin {
            match crate::sys::pin_current(cpu) {
                Ok(a) => Some(a),
                Err(e) => {
                    slot.release_owner();
                    return Err(e);
                }
            }
        } else {
            None
        };
        let remote = C::QPW && slot.mode == SlotMode::Remote;
        let owner = Owner {
            rec: Box::new(OwnerRec {
                next: AtomicPtr::new(std::ptr::null_mut()),
                slot: slot as *const SlotState<C> as *const (),
                on_signal: on_signal_for::<C>,
                domain_id: domain.id(),
                cpu,
            }),
            slot: std::ptr::NonNull::from(slot),
            cpu,
            use_spin: C::RT || remote,
            affinity,
            domain,
            _not_send: PhantomData,
        };
        link(&owner.rec);
        // Work queued while the slot was changing hands.
        owner.slot().run_pending_as_owner(RanAt::Quiescent);
        Ok(owner)
    }

    #[inline(always)]
    pub(crate) fn slot(&self) -> &SlotState<C> {
        // SAFETY: points into `self.domain`'s slots, which live as long as
        // the domain, which this owner keeps alive.
        unsafe { self.slot.as_ref() }
    }

    /// The slot this thread owns (`smp_processor_id()`).
    pub fn cpu(&self) -> usize {
        self.cpu
    }

    /// The domain of the slot.
    pub fn domain(&self) -> &Domain<C> {
        &self.domain
    }

    /// Whether this thread was pinned to the slot's CPU.
    pub fn is_pinned(&self) -> bool {
        self.affinity.is_some()
    }

    /// A quiescent point: runs the work queued for this slot (the end of an
    /// owner's loop iteration, as the return to userspace is for the kernel).
    /// Costs one load when nothing is queued. Returns whether any work ran.
    #[inline]
    pub fn quiescent(&mut self) -> bool {
        let slot = self.slot();
        if !slot.has_pending() {
            return false;
        }
        slot.run_pending_as_owner(RanAt::Quiescent);
        true
    }

    /// Goes offline until the guard drops: while this thread is idle or
    /// blocked, remote threads run its work themselves and may lock its slot.
    #[must_use = "the owner is back online as soon as the guard is dropped"]
    pub fn offline(&mut self) -> Offline<'_, C> {
        self.slot().go_offline();
        Offline { owner: self }
    }

    /// Runs `f` offline (see [`offline`](Self::offline)).
    pub fn idle<R>(&mut self, f: impl FnOnce() -> R) -> R {
        let _off = self.offline();
        f()
    }
}

impl<C: Config> Drop for Owner<C> {
    fn drop(&mut self) {
        unlink(&self.rec);
        self.slot().release_owner();
        if let Some(a) = &self.affinity {
            crate::sys::restore_affinity(a);
        }
    }
}

/// An owner that is offline; back online when dropped.
pub struct Offline<'a, C: Config = crate::Standard> {
    owner: &'a mut Owner<C>,
}

impl<C: Config> fmt::Debug for Offline<'_, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Offline")
            .field("cpu", &self.owner.cpu)
            .finish()
    }
}

impl<C: Config> Drop for Offline<'_, C> {
    fn drop(&mut self) {
        self.owner.slot().go_online();
    }
}

type Implicit = Vec<(usize, Option<Box<dyn std::any::Any>>)>;

thread_local! {
    static IMPLICIT: RefCell<Implicit> = const { RefCell::new(Vec::new()) };
}

/// Returns an implicit owner to this thread's table when dropped.
struct PutBack {
    id: usize,
    owner: Option<Box<dyn std::any::Any>>,
}

impl Drop for PutBack {
    fn drop(&mut self) {
        let (id, owner) = (self.id, self.owner.take());
        IMPLICIT.with(|m| {
            let mut m = m.borrow_mut();
            match m.iter_mut().find(|(d, _)| *d == id) {
                Some((_, slot)) => *slot = owner,
                None => m.push((id, owner)),
            }
        });
    }
}

pub(crate) fn with_implicit<C: Config, R>(
    domain: &Domain<C>,
    f: impl FnOnce(&mut Owner<C>) -> R,
) -> Result<R, Error> {
    let id = domain.id();
    let taken = IMPLICIT.with(|m| {
        let mut m = m.borrow_mut();
        match m.iter_mut().find(|(d, _)| *d == id) {
            Some((_, slot)) => slot.take().map(Some).ok_or(Error::Reentrant),
            None => Ok(None),
        }
    })?;
    let owner: Box<dyn std::any::Any> = match taken {
        Some(o) => o,
        None => Box::new(domain.bind_any()?),
    };
    // Put the owner back however `f` ends: if it unwound with the owner
    // dropped, the slot would be unbound under the caller, and inside this
    // slot's own work (a signal handler) the unbinding would panic again
    // and abort the process.
    let mut back = PutBack {
        id,
        owner: Some(owner),
    };
    let r = f(back
        .owner
        .as_mut()
        .and_then(|o| o.downcast_mut::<Owner<C>>())
        .expect("implicit owners are stored by domain id"));
    drop(back);
    Ok(r)
}
