//! Sheaves and the per-CPU pair of them.
//!
//! A *sheaf* is a fixed-capacity array of pointers to free objects (SLUB's
//! `struct slab_sheaf`). Each CPU slot keeps two, *main* and *spare*
//! ([`Pcs`], SLUB's `struct slub_percpu_sheaves`): allocation pops from main,
//! free pushes onto main, and only when main is empty (or full) does the slot
//! look at its spare or at the shared depot. The hot path touches the slot's
//! [`Pcs`] and one line of its main sheaf, nothing shared.

#[cfg(qpw_loom)]
use loom::sync::atomic::AtomicPtr;
#[cfg(not(qpw_loom))]
use std::sync::atomic::AtomicPtr;

use crate::stack::Link;

/// A sheaf's header; its `cap` object pointers follow it in memory.
///
/// Sheaves live in the cache's own metadata mapping and are never returned
/// to the OS: they go round between the slots and the depot's lists.
#[repr(C)]
pub(crate) struct Sheaf {
    /// The link of whichever list holds the sheaf (depot lists, the
    /// hand-off stack). Meaningless while a slot holds it.
    pub(crate) next: AtomicPtr<Sheaf>,
    /// How many objects it holds, while it is *not* attached to a slot (a
    /// slot keeps the count in its [`Pcs`], next to the pointer).
    pub(crate) count: u32,
    /// How many object pointers fit.
    pub(crate) cap: u32,
    /// Set by a drain of a line-private class's slot: the slot's home slab
    /// ([`Pcs::home`]), which whoever files the sheaf gives up (the drain
    /// cannot: it takes no lock). [`NO_CHECK`] otherwise.
    pub(crate) home: u32,
    _pad: u32,
}

/// Bytes of the header, before the object pointers.
pub(crate) const SHEAF_HDR: usize = std::mem::size_of::<Sheaf>();
const _: () = assert!(SHEAF_HDR == 24);

/// [`Pcs::home`] of a class whose objects never share a cache line (sizes
/// that are multiples of 64): frees are not checked.
pub(crate) const NO_CHECK: u32 = 0;
/// [`Pcs::home`] of a line-private class's slot that has no home slab yet:
/// every free is foreign (no address is `u32::MAX << HOME_SHIFT`).
pub(crate) const NO_HOME: u32 = u32::MAX;
/// A home is named by `address >> HOME_SHIFT`: line-private classes have
/// slabs of exactly this many bytes ([`MIN_SLAB_BYTES`](crate::geometry::MIN_SLAB_BYTES)), aligned.
pub(crate) const HOME_SHIFT: u32 = 16;

/// The home name of the slab holding `p` (line-private classes).
#[inline(always)]
pub(crate) fn home_of(p: *mut u8) -> u32 {
    ((p as usize) >> HOME_SHIFT) as u32
}

/// The largest sheaf capacity a cache may ask for.
pub const MAX_SHEAF_CAPACITY: usize = 256;

impl Sheaf {
    /// An empty sheaf header of capacity `cap`.
    pub(crate) fn new(cap: u32) -> Self {
        Self {
            next: AtomicPtr::new(std::ptr::null_mut()),
            count: 0,
            cap,
            home: NO_CHECK,
            _pad: 0,
        }
    }
}

impl Link for Sheaf {
    fn link(&self) -> &AtomicPtr<Self> {
        &self.next
    }
}

/// The bytes a sheaf of capacity `cap` takes.
pub(crate) const fn sheaf_bytes(cap: usize) -> usize {
    SHEAF_HDR + cap * std::mem::size_of::<*mut u8>()
}

/// The object-pointer array of sheaf `s`.
///
/// # Safety
/// `s` must point to a live sheaf.
#[inline(always)]
pub(crate) unsafe fn objs(s: *mut Sheaf) -> *mut *mut u8 {
    // SAFETY: the array starts right after the header, inside the sheaf's memory.
    unsafe { s.cast::<u8>().add(SHEAF_HDR).cast::<*mut u8>() }
}

/// One slot's sheaves for one cache: SLUB's `slub_percpu_sheaves`.
///
/// Counts live here, beside the pointers, so the fast path reads one line
/// of this struct and one line of the main sheaf. `main_limit` is the main
/// sheaf's capacity, or 0 while no sheaf is attached, so that free's single
/// comparison `main_count < main_limit` also covers "no sheaf yet".
///
/// Invariants (kept under the slot's QPW lock): `main_count <= main_limit`;
/// `main_limit > 0` iff `main` is non-null; `spare_count == 0` when `spare`
/// is null; a non-null `spare` has the cache's capacity; `home` is
/// [`NO_CHECK`] while `main` is null.
///
/// *Line-private* classes (objects smaller than a cache line, which share
/// it with neighbours; see [`line_private`](crate::geometry::line_private)) keep two slots from ever handing out
/// objects of one line at the same time: each slot takes objects only from
/// its own *home* slab, which no other slot refills from, and `home` names
/// it (`address >> HOME_SHIFT`). Main holds only objects of the slot's home
/// (present or past); a free of any other object (another thread's, say)
/// is *foreign* and goes to the spare, which for these classes holds
/// objects on their way back to their slabs and is never allocated from.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct Pcs {
    pub(crate) main: *mut Sheaf,
    pub(crate) main_count: u32,
    pub(crate) main_limit: u32,
    pub(crate) spare: *mut Sheaf,
    pub(crate) spare_count: u32,
    /// [`NO_CHECK`]; or, for a line-private class, the home slab's name
    /// ([`home_of`]) or [`NO_HOME`].
    pub(crate) home: u32,
}

const _: () = assert!(std::mem::size_of::<Pcs>() == 32);

// SAFETY: a Pcs only points to sheaves it holds exclusively (detached from
// every list), and it is only reached under its slot's QPW exclusion, so
// moving it to (or touching it from) another thread hands over the sheaves
// with it. Sync is not implemented: qpw's PerCpu gives one context at a time.
unsafe impl Send for Pcs {}

impl Default for Pcs {
    fn default() -> Self {
        Self::new()
    }
}

impl Pcs {
    /// A slot with no sheaves yet: they are attached on first use.
    pub(crate) const fn new() -> Self {
        Self {
            main: std::ptr::null_mut(),
            main_count: 0,
            main_limit: 0,
            spare: std::ptr::null_mut(),
            spare_count: 0,
            home: NO_CHECK,
        }
    }

    /// Whether `obj` sits in this slot's main or spare sheaf (a double
    /// free's confirmation: a scan of at most two sheaves).
    #[cold]
    #[inline(never)]
    pub(crate) fn holds(&self, obj: *mut u8) -> bool {
        let scan = |s: *mut Sheaf, n: u32| {
            // SAFETY: a non-null main or spare is attached and holds `n`
            // objects (its count) at the start of its array.
            !s.is_null()
                && unsafe { std::slice::from_raw_parts(objs(s), n as usize) }.contains(&obj)
        };
        scan(self.main, self.main_count) || scan(self.spare, self.spare_count)
    }

    /// Pops an object from main, if it has one.
    #[inline(always)]
    pub(crate) fn pop(&mut self) -> Option<*mut u8> {
        if self.main_count == 0 {
            return None;
        }
        self.main_count -= 1;
        // SAFETY: main_count > 0 implies main is attached, and the index is
        // below its count, hence below its capacity.
        Some(unsafe { *objs(self.main).add(self.main_count as usize) })
    }

    /// Pushes `obj` onto main, if it has room and may go there. Returns
    /// `false` when main is full or not attached, or `obj` is foreign (a
    /// line-private class's object from outside the slot's home slab).
    #[inline(always)]
    pub(crate) fn push(&mut self, obj: *mut u8) -> bool {
        // Non-short-circuit `&`/`|`: one branch, taken on the rare slow
        // case, rather than one on whether the class is line-private,
        // which workloads of mixed sizes mispredict.
        let foreign = (self.home != NO_CHECK) & (home_of(obj) != self.home);
        if (self.main_count >= self.main_limit) | foreign {
            return false;
        }
        // SAFETY: main_limit > main_count >= 0 implies main is attached with
        // capacity main_limit, so the index is in bounds.
        unsafe { *objs(self.main).add(self.main_count as usize) = obj };
        self.main_count += 1;
        true
    }

    /// Swaps main and spare (both must be attached).
    #[inline]
    pub(crate) fn swap(&mut self) {
        debug_assert!(!self.main.is_null() && !self.spare.is_null());
        std::mem::swap(&mut self.main, &mut self.spare);
        std::mem::swap(&mut self.main_count, &mut self.spare_count);
    }
}
