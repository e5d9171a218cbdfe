//! Thread binding and exit: the implicit per-thread API of a `Kmalloc`
//! finds the calling thread's slot here, binding the lowest free slot
//! (unpinned) on first use; the binding is released when the thread exits
//! (its slot freed for reuse, its sheaves left warm in it) or on
//! `Kmalloc::unbind_local`. Calls that cannot use a slot get the reason for
//! the shared path.

use crate::local;
use crate::shared::{KShared, SharedReason, FAILED_SIGNAL_BLOCKED};
use qpw::{Config, Owner};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// A thread's implicit binding to one instance.
pub(crate) struct Binding<C: Config> {
    pub(crate) owner: Owner<C>,
    pub(crate) shared: Arc<KShared<C>>,
}

/// Releases a binding: drops the owner (qpw runs its pending work and frees
/// the slot for reuse). The slot's sheaves stay in it, warm for the next
/// thread that binds (the lowest free slot is bound first, so that is soon
/// in a program that churns threads); a slot nobody binds again is drained
/// by the decay once idle for its delay, or by `flush_all`/`shrink`, as a
/// CPU's sheaves are.
///
/// # Safety
/// `p` is a `Binding<C>` made by `bind_local`, removed from the table.
unsafe fn release_binding<C: Config>(p: *mut ()) {
    // SAFETY: forwarded to the caller: a boxed Binding<C>, released once.
    let b = unsafe { Box::from_raw(p.cast::<Binding<C>>()) };
    let id = b.shared.id;
    let entered = local::busy_enter(id);
    b.shared.threads_unbound.fetch_add(1, Ordering::Relaxed);
    b.shared.bind_gen.fetch_add(1, Ordering::Release);
    drop(b);
    if entered {
        local::busy_leave(id);
    }
}

impl<C: Config> KShared<C> {
    /// Binds this thread to the lowest free slot (unpinned): the slots of
    /// exited threads, with their sheaves still warm, are reused before
    /// untouched ones, and a program's per-slot memory stays as small as
    /// its peak thread count.
    fn bind_free_slot(&self) -> Result<Owner<C>, qpw::Error> {
        let d = self.pcs.domain();
        let n = d.nr_cpus();
        for cpu in 0..n {
            if d.is_owned(cpu).unwrap_or(true) {
                continue;
            }
            match d.bind_unpinned(cpu) {
                Err(qpw::Error::SlotOwned { .. }) => continue,
                r => return r,
            }
        }
        Err(qpw::Error::NoFreeSlot { nr_cpus: n })
    }

    /// This thread's binding, made on first use; or why the shared path
    /// must serve it.
    #[cold]
    #[inline(never)]
    fn binding_slow(self: &Arc<Self>) -> Result<*mut Binding<C>, SharedReason> {
        let sh = &**self;
        if local::exiting() {
            return Err(SharedReason::Exiting);
        }
        let found = local::find(sh.id);
        if !found.is_null() {
            local::note_found(sh.id, found);
            return Ok(found.cast());
        }
        if local::is_busy(sh.id) {
            return Err(SharedReason::Reentrant);
        }
        let generation = sh.bind_gen.load(Ordering::Acquire);
        // A failure is remembered with its generation, and its reason in the
        // top bit (a generation never gets there): the shared path is
        // counted under the reason that sent it there.
        match local::failed_at(sh.id) {
            Some(g) if g == generation => return Err(SharedReason::NoSlot),
            Some(g) if g == generation | FAILED_SIGNAL_BLOCKED => {
                return Err(SharedReason::SignalBlocked)
            }
            _ => {}
        }
        if !local::has_room() {
            return Err(SharedReason::TableFull);
        }
        if !local::busy_enter(sh.id) {
            return Err(SharedReason::Reentrant);
        }
        // From here until busy_leave, allocations of this thread on this
        // instance (qpw's own boxes) take the shared path.
        let r = match self.bind_free_slot() {
            Ok(owner) => {
                let b = Box::into_raw(Box::new(Binding {
                    owner,
                    shared: Arc::clone(self),
                }));
                if local::arm_exit_hook() && local::insert(sh.id, b.cast(), release_binding::<C>) {
                    sh.threads_bound.fetch_add(1, Ordering::Relaxed);
                    local::clear_failed(sh.id);
                    Ok(b)
                } else {
                    // SAFETY: `b` was boxed above and never shared.
                    drop(unsafe { Box::from_raw(b) });
                    Err(SharedReason::TableFull)
                }
            }
            Err(e) => {
                let reason = match e {
                    qpw::Error::NoFreeSlot { .. } => SharedReason::NoSlot,
                    _ => SharedReason::BindFailed,
                };
                let mark = match reason {
                    SharedReason::SignalBlocked => FAILED_SIGNAL_BLOCKED,
                    _ => 0,
                };
                local::set_failed(sh.id, generation | mark);
                Err(reason)
            }
        };
        local::busy_leave(sh.id);
        r
    }

    /// This thread's owner for the fast path, or the shared path's reason.
    #[inline(always)]
    pub(crate) fn binding(self: &Arc<Self>) -> Result<*mut Binding<C>, SharedReason> {
        let sh = &**self;
        let b = if sh.primary.load(Ordering::Relaxed) {
            local::primary_binding()
        } else {
            local::lookup(sh.id, local::hint_of(sh.id))
        };
        if !b.is_null() {
            return Ok(b.cast());
        }
        self.binding_slow()
    }

    /// Runs the drain work queued for this thread's implicit slot. Returns
    /// whether any ran.
    pub(crate) fn quiescent_local(&self) -> bool {
        let b = local::find(self.id);
        if b.is_null() || local::is_busy(self.id) {
            return false;
        }
        // SAFETY: this thread's binding, no other reference live (we are
        // not inside the allocator).
        unsafe { (*b.cast::<Binding<C>>()).owner.quiescent() }
    }

    /// Releases this thread's implicit binding now (as its exit would).
    /// Returns whether there was one.
    pub(crate) fn unbind_local(&self) -> bool {
        let id = self.id;
        if local::is_busy(id) {
            return false;
        }
        match local::remove(id) {
            Some((p, release)) => {
                // SAFETY: removed from the table, so released exactly once.
                unsafe { release(p) };
                true
            }
            None => false,
        }
    }
}
