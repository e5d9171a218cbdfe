//! Owners: the token that proves "this thread owns slot c", and binding.

use crate::config::{Config, SlotMode};
use crate::domain::Domain;
use crate::error::Error;
use crate::owned::{link, unlink, OwnerRec};
use crate::slot::{AcquireError, SlotState, FREE};
use crate::stats::RanAt;
use crate::sync::Ordering;
use std::fmt;
use std::marker::PhantomData;

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
    /// The cell's lock is the local lock (`remote` slot, or RT policy).
    pub(crate) use_spin: bool,
    affinity: Option<crate::sys::Affinity>,
    _not_send: PhantomData<*mut ()>,
}

impl<C: Config> fmt::Debug for Owner<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Owner")
            .field("slot", &self.cpu)
            .field("pinned", &self.affinity.is_some())
            .finish()
    }
}

impl<C: Config> Owner<C> {
    fn bind(domain: Domain<C>, cpu: usize, pin: bool) -> Result<Self, Error> {
        let slot = domain.slot(cpu)?;
        if let Some(owned) = crate::owned::owned_in(domain.id()) {
            return Err(Error::AlreadyBound { cpu: owned });
        }
        if pin && !domain.inner.allowed.contains(&cpu) {
            return Err(Error::CpuNotAllowed {
                cpu,
                allowed: domain.allowed_cpus(),
            });
        }
        let gen = slot.acquire_owner().map_err(|e| match e {
            AcquireError::Owned => Error::SlotOwned { cpu },
            AcquireError::Retired => Error::SlotRetired { cpu },
        })?;
        let affinity = if pin {
            match crate::sys::pin_current(cpu) {
                Ok(a) => Some(a),
                Err(e) => {
                    slot.abort_acquire();
                    return Err(e);
                }
            }
        } else {
            None
        };
        let remote = C::QPW && slot.mode == SlotMode::Remote;
        let owner = Owner {
            rec: Box::new(OwnerRec::new(slot, gen)),
            slot: std::ptr::NonNull::from(slot),
            cpu,
            use_spin: C::RT || remote,
            affinity,
            domain,
            _not_send: PhantomData,
        };
        // The record is linked before the slot is published online: "is the
        // caller this slot's owner" is true from the first instant.
        // SAFETY: the record is boxed (stable address) and unlinked in `drop`.
        unsafe { link(&owner.rec) };
        let pinned = owner.affinity.is_some();
        owner.slot_state().publish_owner(gen, pinned);
        // Work queued while the slot was changing hands.
        owner.slot_state().run_pending_as_owner(RanAt::Quiescent);
        Ok(owner)
    }

    #[inline(always)]
    pub(crate) fn slot_state(&self) -> &SlotState<C> {
        // SAFETY: points into `self.domain`'s slots, which live as long as
        // the domain, which this owner keeps alive.
        unsafe { self.slot.as_ref() }
    }

    /// The binding's generation.
    pub(crate) fn gen(&self) -> u64 {
        self.rec.gen
    }

    /// The slot this thread owns (`smp_processor_id()`).
    pub fn slot(&self) -> usize {
        self.cpu
    }

    /// The slot this thread owns: the kernel's name for [`slot`](Self::slot).
    #[deprecated(note = "a slot is not always a CPU: use `Owner::slot`")]
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
    ///
    /// Only `defer` slots need it, and only where the owner may go long
    /// without a local section: `defer` work also runs when any local
    /// section of the slot ends, when the owner goes offline and when it
    /// unbinds. In the other modes the caller runs the work; this runs only
    /// work left to the owner (queued from inside its own section, or left
    /// after a timeout).
    #[inline]
    pub fn quiescent(&mut self) -> bool {
        let slot = self.slot_state();
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
        self.go_offline();
        Offline { owner: self }
    }

    pub(crate) fn go_offline(&mut self) {
        self.slot_state().go_offline(self.gen());
    }

    pub(crate) fn go_online(&mut self) {
        self.slot_state().go_online(self.gen());
    }

    /// Runs `f` offline (see [`offline`](Self::offline)).
    pub fn idle<R>(&mut self, f: impl FnOnce() -> R) -> R {
        let _off = self.offline();
        f()
    }
}

impl<C: Config> Drop for Owner<C> {
    fn drop(&mut self) {
        let slot = self.slot_state();
        slot.release_owner(self.gen());
        unlink(&self.rec);
        // What was queued while we left.
        slot.help(false, None);
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
            .field("slot", &self.owner.cpu)
            .finish()
    }
}

impl<C: Config> Drop for Offline<'_, C> {
    fn drop(&mut self) {
        self.owner.go_online();
    }
}

impl<C: Config> Domain<C> {
    /// Binds the calling thread to slot `cpu` and pins it to CPU `cpu`.
    /// Errors: the CPU is not one this process may run on, the slot is
    /// owned or retired, or this thread owns another slot of this domain.
    /// On error nothing changed. A `queue` slot's drains fence this one CPU
    /// only (an unpinned owner's fence every CPU of the process), so the
    /// thread must not change its own CPU affinity while bound: a drain
    /// would fence a CPU it no longer runs on.
    ///
    /// # Errors
    ///
    /// [`Error::CpuOutOfRange`] (not a slot), [`Error::CpuNotAllowed`] (not a
    /// CPU this process may run on), [`Error::SlotOwned`], [`Error::SlotRetired`],
    /// [`Error::AlreadyBound`] (this thread owns another slot of this domain),
    /// [`Error::Os`] when pinning fails.
    ///
    /// # Examples
    ///
    /// ```
    /// use qpw::{Domain, Error, PerCpu};
    ///
    /// let domain = Domain::builder().build()?; // one slot per CPU
    /// let counts = PerCpu::new(&domain, |_| 0u64);
    /// let cpu = domain.nr_cpus() - 1;
    /// match domain.bind(cpu) {
    ///     Ok(mut me) => {
    ///         assert!(me.is_pinned());
    ///         *counts.lock(&mut me) += 1;
    ///     }
    ///     // This process may not run on that CPU (`taskset`, a cgroup):
    ///     // bind another, or `bind_unpinned`.
    ///     Err(Error::CpuNotAllowed { .. }) => {}
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok::<(), qpw::Error>(())
    /// ```
    pub fn bind(&self, cpu: usize) -> Result<Owner<C>, Error> {
        Owner::bind(self.clone(), cpu, true)
    }

    /// Binds the calling thread to slot `cpu` without pinning it (slots
    /// beyond the machine's CPUs, or threads the scheduler should place).
    ///
    /// # Errors
    ///
    /// [`Error::CpuOutOfRange`], [`Error::SlotOwned`], [`Error::SlotRetired`],
    /// [`Error::AlreadyBound`], as [`bind`](Self::bind).
    pub fn bind_unpinned(&self, cpu: usize) -> Result<Owner<C>, Error> {
        Owner::bind(self.clone(), cpu, false)
    }

    /// Binds the calling thread, unpinned, to the first free slot.
    ///
    /// # Errors
    ///
    /// [`Error::NoFreeSlot`] when every slot is owned or retired (build the
    /// domain with [`Builder::nr_cpus`](crate::Builder::nr_cpus) at least the number of
    /// threads that bind, or let threads that are done unbind);
    /// [`Error::AlreadyBound`] when this thread owns a slot of this domain.
    pub fn bind_any(&self) -> Result<Owner<C>, Error> {
        if let Some(cpu) = crate::owned::owned_in(self.id()) {
            return Err(Error::AlreadyBound { cpu });
        }
        for cpu in 0..self.nr_cpus() {
            // A load, not a bind attempt, for slots that are plainly taken.
            if crate::slot::state(self.inner.slots[cpu].ctl.load(Ordering::Relaxed)) != FREE {
                continue;
            }
            match Owner::bind(self.clone(), cpu, false) {
                Err(Error::SlotOwned { .. } | Error::SlotRetired { .. }) => continue,
                r => return r,
            }
        }
        Err(Error::NoFreeSlot {
            nr_cpus: self.nr_cpus(),
        })
    }
}
