//! What the slots, the drain work, the bindings and the handles of one
//! `kmalloc` instance share ([`KShared`]): every slot's sheaves, the class
//! arena's bounds, the binding counters, the shared path's reasons, the
//! decay state; and its fork locks.

use crate::classes::Classes;
use crate::decay::{Decay, DEFAULT_DECAY};
use crate::fork::ForkLocks;
use crate::sheaf::{Pcs, NO_CHECK};
use crate::size_class::{SizeClasses, MAX_CLASSES};
use qpw::{Config, Domain, PerCpu};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

// `KShared::new` zeroes the slots' `Pcs` instead of writing `Pcs::new()`.
const _: () = assert!(NO_CHECK == 0);

/// A new instance's id (the key of its bindings in thread-local storage).
pub(crate) fn next_id() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A per-instance key for free stamps: the clock, this process and an
/// address, mixed (splitmix64's finaliser); never 0. Not a secret against
/// an attacker, only unlikely to be program data.
fn free_key() -> u64 {
    let local = 0u8;
    let mut z = crate::sys::now_ns()
        ^ (u64::from(std::process::id()) << 32)
        ^ (&local as *const u8 as u64).rotate_left(17);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) | 1
}

/// One slot's sheaves for every size class.
#[repr(C)]
pub(crate) struct KPcs(pub(crate) [Pcs; MAX_CLASSES]);

/// What the slots, drain work and handles of one instance share.
pub(crate) struct KShared<C: Config> {
    pub(crate) pcs: PerCpu<KPcs, C>,
    // Copies of the class arena's bounds and table, for `kfree` and the
    // fast paths without a pointer chase.
    pub(crate) base: usize,
    pub(crate) len: usize,
    pub(crate) span_shift: u32,
    /// The stamp a free writes into an object's first word, xored with
    /// its address (see [`KShared::stamp`]); random per instance.
    pub(crate) free_key: u64,
    pub(crate) table: SizeClasses,
    pub(crate) classes: NonNull<Classes>,
    pub(crate) owns_classes: bool,
    pub(crate) id: usize,
    /// This is the process's primary instance: this thread's binding is
    /// read from initial-exec TLS (`local::primary_binding`).
    pub(crate) primary: AtomicBool,
    pub(crate) bind_gen: AtomicU64,
    pub(crate) threads_bound: AtomicU64,
    pub(crate) threads_unbound: AtomicU64,
    pub(crate) shared_path: [AtomicU64; 6],
    pub(crate) decay: Decay,
}

// SAFETY: `classes` points to a `Classes`, which is Send and Sync (its caches
// synchronise internally), valid as long as the KShared (it is unmapped only
// in KShared's drop, or never). The rest is Send + Sync on its own.
unsafe impl<C: Config> Send for KShared<C> {}
// SAFETY: as above.
unsafe impl<C: Config> Sync for KShared<C> {}

/// In a remembered failed binding's generation: it failed because the
/// thread blocks the qpw signal (see `binding_slow`).
pub(crate) const FAILED_SIGNAL_BLOCKED: u64 = 1 << 63;

#[derive(Clone, Copy)]
pub(crate) enum SharedReason {
    NoSlot = 0,
    Reentrant = 1,
    Exiting = 2,
    TableFull = 3,
    /// The thread blocks the qpw signal and the configuration has no
    /// `remote` mode to bind it in (`NoQpw`, `RtNoQpw`).
    SignalBlocked = 4,
    /// Binding failed for another reason (named by `qpw::Error`).
    BindFailed = 5,
}

impl<C: Config> KShared<C> {
    /// The shared state of a new instance on `domain` over `classes`.
    pub(crate) fn new(domain: &Domain<C>, classes: NonNull<Classes>, owns_classes: bool) -> Self {
        // SAFETY: `classes` is valid (just made, or leaked for good).
        let cl = unsafe { classes.as_ref() };
        KShared {
            // SAFETY: an all-zero `KPcs` is `Pcs::new()` in every class (null
            // sheaves, zero counts, `home` is `NO_CHECK`, 0: asserted below). Zeroed, not written: 1,024 slots of 56
            // classes would make about 2 MiB resident before any is used.
            pcs: unsafe { PerCpu::new_zeroed(domain) },
            base: cl.base,
            len: cl.len,
            span_shift: cl.span_shift,
            free_key: free_key(),
            table: cl.table,
            classes,
            owns_classes,
            id: next_id(),
            primary: AtomicBool::new(false),
            bind_gen: AtomicU64::new(0),
            threads_bound: AtomicU64::new(0),
            threads_unbound: AtomicU64::new(0),
            shared_path: Default::default(),
            decay: Decay::new(domain.nr_cpus(), Some(DEFAULT_DECAY)),
        }
    }

    /// The stamp of a freed object at `p`: its first word holds this from
    /// its free until the program writes it again. Seeing it on a free is
    /// the cheap hint of a double free, confirmed by a scan of the slot's
    /// sheaves (program data equal to it by chance costs that scan only).
    #[inline(always)]
    pub(crate) fn stamp(&self, p: *mut u8) -> u64 {
        self.free_key ^ p as u64
    }

    #[inline(always)]
    pub(crate) fn classes(&self) -> &Classes {
        // SAFETY: valid as long as self (see the Send impl).
        unsafe { self.classes.as_ref() }
    }

    #[inline(always)]
    pub(crate) fn class_of(&self, p: *mut u8) -> Option<usize> {
        let off = (p as usize).wrapping_sub(self.base);
        (off < self.len).then_some(off >> self.span_shift)
    }

    pub(crate) fn count(&self, r: SharedReason) {
        self.shared_path[r as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Every slot's sheaves back into the slabs (exclusive access); returns
    /// (objects still allocated, their bytes).
    pub(crate) fn settle(&mut self) -> (usize, usize) {
        // SAFETY: as in `classes`; a separate borrow from `pcs`.
        let cl = unsafe { self.classes.as_ref() };
        for pcs in self.pcs.iter_mut() {
            for (core, p) in cl.cores().iter().zip(pcs.0.iter_mut()) {
                core.reclaim_pcs(p);
            }
        }
        let mut objects = 0;
        let mut bytes = 0;
        for core in cl.cores() {
            let n = core.settle_and_count_allocated();
            objects += n;
            bytes += n * core.size();
        }
        (objects, bytes)
    }
}

impl<C: Config> Drop for KShared<C> {
    fn drop(&mut self) {
        let (objects, _) = self.settle();
        if self.owns_classes && objects == 0 {
            // SAFETY: nothing is allocated and no slot holds a sheaf; with
            // `&mut self` nobody else reaches the classes.
            unsafe { Classes::destroy(self.classes) };
        }
    }
}

impl<C: Config> ForkLocks for KShared<C> {
    fn lock_for_fork(&self) {
        self.classes().lock_for_fork();
    }

    unsafe fn unlock_after_fork(&self) {
        // SAFETY: forwarded to the caller.
        unsafe { self.classes().unlock_after_fork() }
    }

    unsafe fn child(&self) {
        // SAFETY: forwarded to the caller.
        unsafe { self.decay.after_fork_child() }
    }
}
