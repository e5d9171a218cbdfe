//! The depot of one cache (SLUB's "barn"): sheaves in front of the slabs,
//! shared by the slots, under one lock; the slots' slow paths, the shared
//! path, drains, shrink and the decay of one cache.
//!
//! Under the lock ([`SlabCore::depot`]): a stack of sheaves with objects
//! ("full"; a drained sheaf may be partly filled), a stack of empty
//! sheaves, the sheaf of the shared path (threads without a slot), and the
//! slab lists ([`Slabs`]). The number of full sheaves is capped; beyond the
//! cap a full sheaf's objects go back to their slabs.
//!
//! Beside the lock, the *hand-off stack* ([`TakeAllStack`](crate::stack::TakeAllStack)):
//! drain work pushes a slot's sheaves there without locking (the caller of a
//! drain-all takes the lock once afterwards instead of once per slot), and
//! whoever takes the lock next files them.
//!
//! Line-private classes (objects sharing cache lines, see
//! [`Pcs`](crate::sheaf::Pcs)) have their own slot paths: refills come from
//! the slot's home slab, a full main gives half its objects back to their
//! slabs, foreign frees gather in the spare and go back to their slabs a
//! sheaf at a time, and no sheaf with objects goes from one slot to another
//! (the depot keeps no full sheaves of them).
//!
//! Lock order: a slot's QPW lock, then the depot lock. Drain work takes
//! only the slot lock; drain callers take the depot lock only after the
//! drain, never inside a work function.

use crate::geometry::{line_private, Geometry, SHEAF_AREA};
use crate::lock::{Lock, LockGuard};
use crate::sheaf::{home_of, objs, sheaf_bytes, Pcs, Sheaf, NO_CHECK, NO_HOME};
use crate::slab::{bump, SlabArena, Slabs, NBUCKETS, RELEASE_BATCH};
use crate::stack::TakeAllStack;
use crate::stats::CacheStats;
use crate::sys::{self, round_up};
use std::sync::atomic::{AtomicU64, Ordering};

/// One cache: its memory ([`SlabArena`], reached through `Deref`), and the
/// depot in front of it under its lock, with the hand-off stack beside it.
pub(crate) struct SlabCore {
    arena: SlabArena,
    pub(crate) cap: u32,
    pub(crate) max_full: usize,
    /// Objects share cache lines: slots refill from home slabs only.
    pub(crate) line_private: bool,
    pub(crate) depot: Lock<Depot>,
    pub(crate) handoff: TakeAllStack<Sheaf>,
}

impl std::ops::Deref for SlabCore {
    type Target = SlabArena;

    #[inline(always)]
    fn deref(&self) -> &SlabArena {
        &self.arena
    }
}

/// Everything shared of one cache, under its lock.
pub(crate) struct Depot {
    full: *mut Sheaf,
    nr_full: usize,
    empty: *mut Sheaf,
    nr_empty: usize,
    /// The shared path's sheaf (its count in `Sheaf::count`).
    shared: *mut Sheaf,
    sheaf_bump: usize,
    sheaf_committed: usize,
    sheaves_made: usize,
    /// A slot or the shared path took or gave a full sheaf since the last
    /// decay pass.
    used: bool,
    /// Decay passes in a row that found the depot unused.
    idle_passes: u32,
    /// The slabs behind the sheaves.
    pub(crate) slabs: Slabs,
}

// SAFETY: the depot's pointers lead to sheaves and slabs in the cache's own
// mappings; it is only reached under its lock, which hands it whole from
// thread to thread.
unsafe impl Send for Depot {}

impl Depot {
    pub(crate) const fn new() -> Self {
        Self {
            full: std::ptr::null_mut(),
            nr_full: 0,
            empty: std::ptr::null_mut(),
            nr_empty: 0,
            shared: std::ptr::null_mut(),
            sheaf_bump: 0,
            sheaf_committed: 0,
            sheaves_made: 0,
            used: false,
            idle_passes: 0,
            slabs: Slabs::new(),
        }
    }
}

impl SlabCore {
    /// A cache over `[arena, arena + arena_len)`, a reservation the caller
    /// made (aligned to the slab size) and keeps alive as long as the core.
    pub(crate) fn new(g: Geometry, arena: usize, arena_len: usize) -> Result<Self, sys::Errno> {
        let private = line_private(g.size);
        Ok(Self {
            arena: SlabArena::new(g.size, arena, arena_len)?,
            cap: g.cap as u32,
            max_full: if private { 0 } else { g.max_full },
            line_private: private,
            depot: Lock::new(Depot::new()),
            handoff: TakeAllStack::new(),
        })
    }

    /// The sheaf capacity.
    pub(crate) fn capacity(&self) -> usize {
        self.cap as usize
    }

    /// The fork hook's `prepare`: holds the depot lock across `fork`.
    pub(crate) fn lock_for_fork(&self) {
        self.depot.lock_raw();
    }

    /// The fork hook's `parent`/`child`.
    ///
    /// # Safety
    /// After [`lock_for_fork`](Self::lock_for_fork), by the forking thread.
    pub(crate) unsafe fn unlock_after_fork(&self) {
        // SAFETY: forwarded to the caller.
        unsafe { self.depot.unlock_raw() };
    }

    // ---- sheaves ---------------------------------------------------------

    /// A sheaf to use: an empty one from the depot, or a new one. Null when
    /// the sheaf area is exhausted.
    fn new_sheaf(&self, d: &mut Depot) -> *mut Sheaf {
        if !d.empty.is_null() {
            let s = d.empty;
            // SAFETY: sheaves on the empty list are live and ours under the lock.
            d.empty = unsafe { (*s).next.load(Ordering::Relaxed) };
            d.nr_empty -= 1;
            return s;
        }
        let bytes = round_up(sheaf_bytes(self.cap as usize), 64);
        let at = d.sheaf_bump;
        if at + bytes > SHEAF_AREA {
            return std::ptr::null_mut();
        }
        if at + bytes > d.sheaf_committed {
            let new = round_up(at + bytes, 64 << 10).min(SHEAF_AREA);
            let from = self.meta + self.sheaf_off + d.sheaf_committed;
            if crate::sys::commit(from, new - d.sheaf_committed).is_err() {
                return std::ptr::null_mut();
            }
            d.sheaf_committed = new;
        }
        d.sheaf_bump += bytes;
        d.sheaves_made += 1;
        let s = (self.meta + self.sheaf_off + at) as *mut Sheaf;
        // SAFETY: fresh committed memory of `bytes`, 64-aligned, used by nobody.
        unsafe {
            s.write(Sheaf::new(self.cap));
        }
        s
    }

    fn push_empty(d: &mut Depot, s: *mut Sheaf) {
        // SAFETY: the caller hands over a live sheaf it holds exclusively.
        unsafe {
            (*s).count = 0;
            (*s).next.store(d.empty, Ordering::Relaxed);
        }
        d.empty = s;
        d.nr_empty += 1;
    }

    fn push_full(&self, d: &mut Depot, s: *mut Sheaf) {
        // SAFETY: as in push_empty; its count was set by the caller.
        unsafe { (*s).next.store(d.full, Ordering::Relaxed) };
        d.full = s;
        d.nr_full += 1;
        d.used = true;
        bump(&self.counters.depot_puts, 1);
    }

    fn pop_full(d: &mut Depot) -> *mut Sheaf {
        let s = d.full;
        if !s.is_null() {
            // SAFETY: sheaves on the full list are live and ours under the lock.
            d.full = unsafe { (*s).next.load(Ordering::Relaxed) };
            d.nr_full -= 1;
            d.used = true;
        }
        s
    }

    /// Files a sheaf that came back from a slot (giving up the home slab a
    /// drain recorded in it).
    fn file_sheaf(&self, d: &mut Depot, s: *mut Sheaf) {
        // SAFETY: the caller hands over a live sheaf it holds exclusively.
        let (count, home) = unsafe { ((*s).count as usize, (*s).home) };
        if home != NO_CHECK {
            self.leave_home(&mut d.slabs, home);
            // SAFETY: as above.
            unsafe { (*s).home = NO_CHECK };
        }
        if count == 0 {
            Self::push_empty(d, s);
        } else if d.nr_full < self.max_full {
            self.push_full(d, s);
        } else {
            // SAFETY: the sheaf holds `count` free objects of this cache.
            unsafe { self.objs_to_slabs(&mut d.slabs, objs(s), count) };
            Self::push_empty(d, s);
        }
    }

    /// Takes the depot lock and files the hand-off stack (drained sheaves)
    /// first: what every slow path that takes sheaves or objects does.
    fn lock_absorbed(&self) -> LockGuard<'_, Depot> {
        let mut d = self.depot.lock();
        if !self.handoff.is_empty() {
            self.absorb(&mut d);
        }
        d
    }

    /// Files every sheaf on the hand-off stack.
    fn absorb(&self, d: &mut Depot) {
        let mut p = self.handoff.take_all();
        while !p.is_null() {
            // SAFETY: sheaves taken from the stack are ours; read the link
            // before filing overwrites it.
            let next = unsafe { (*p).next.load(Ordering::Relaxed) };
            self.file_sheaf(d, p);
            p = next;
        }
    }

    // ---- slot paths ------------------------------------------------------

    /// Allocation when the slot's main sheaf is empty (SLUB's
    /// `__pcs_replace_empty_main`). Runs inside the slot's local section.
    /// Null when memory is exhausted.
    #[cold]
    #[inline(never)]
    pub(crate) fn alloc_slow(&self, pcs: &mut Pcs) -> *mut u8 {
        bump(&self.counters.alloc_slow, 1);
        if self.line_private {
            return self.alloc_slow_private(pcs);
        }
        if pcs.spare_count > 0 && !pcs.main.is_null() {
            pcs.swap();
            return pcs.pop().unwrap_or(std::ptr::null_mut());
        }
        let mut d = self.lock_absorbed();
        if pcs.main.is_null() {
            let s = self.new_sheaf(&mut d);
            if s.is_null() {
                return self.alloc_one(&mut d);
            }
            pcs.main = s;
            pcs.main_count = 0;
            pcs.main_limit = self.cap;
        }
        if pcs.spare.is_null() {
            pcs.spare = self.new_sheaf(&mut d);
            pcs.spare_count = 0;
        }
        let full = Self::pop_full(&mut d);
        if !full.is_null() {
            bump(&self.counters.depot_hits, 1);
            Self::push_empty(&mut d, pcs.main);
            pcs.main = full;
            // SAFETY: a sheaf from the full list is live, its count valid.
            pcs.main_count = unsafe { (*full).count };
        } else {
            // SAFETY: main has room for `cap` pointers; the lock is held.
            pcs.main_count =
                unsafe { self.refill(&mut d.slabs, objs(pcs.main), 0, self.cap as usize) } as u32;
        }
        drop(d);
        pcs.pop().unwrap_or(std::ptr::null_mut())
    }

    /// [`alloc_slow`](Self::alloc_slow) of a line-private class: main is
    /// refilled from the slot's home slab (never from the spare, which
    /// holds foreign objects, nor from the depot's sheaves).
    fn alloc_slow_private(&self, pcs: &mut Pcs) -> *mut u8 {
        let mut d = self.lock_absorbed();
        if pcs.main.is_null() {
            let s = self.new_sheaf(&mut d);
            if s.is_null() {
                return self.alloc_one(&mut d);
            }
            pcs.main = s;
            pcs.main_count = 0;
            pcs.main_limit = self.cap;
            pcs.home = NO_HOME;
        }
        let n = pcs.main_count as usize;
        // SAFETY: main has room for `cap` pointers; the lock is held.
        pcs.main_count = unsafe {
            self.refill_home(
                &mut d.slabs,
                &mut pcs.home,
                objs(pcs.main),
                n,
                self.cap as usize,
            )
        } as u32;
        drop(d);
        pcs.pop().unwrap_or(std::ptr::null_mut())
    }

    /// One object straight from a slab (no sheaf available).
    fn alloc_one(&self, d: &mut Depot) -> *mut u8 {
        let mut p = std::ptr::null_mut();
        // SAFETY: room for one pointer; the lock is held.
        unsafe { self.refill(&mut d.slabs, &mut p, 0, 1) };
        p
    }

    /// Free when the slot's main sheaf is full or absent (SLUB's
    /// `__pcs_replace_full_main`). Runs inside the slot's local section.
    #[cold]
    #[inline(never)]
    pub(crate) fn free_slow(&self, pcs: &mut Pcs, p: *mut u8) {
        bump(&self.counters.free_slow, 1);
        if self.line_private {
            return self.free_slow_private(pcs, p);
        }
        if !pcs.main.is_null() && !pcs.spare.is_null() && pcs.spare_count < self.cap {
            pcs.swap();
            let pushed = pcs.push(p);
            debug_assert!(pushed);
            return;
        }
        let mut d = self.depot.lock();
        if pcs.main.is_null() {
            let s = self.new_sheaf(&mut d);
            if s.is_null() {
                return self.to_slab(&mut d.slabs, p);
            }
            pcs.main = s;
            pcs.main_count = 0;
            pcs.main_limit = self.cap;
            if pcs.spare.is_null() {
                pcs.spare = self.new_sheaf(&mut d);
                pcs.spare_count = 0;
            }
        } else {
            // Main is full (and the spare too, or absent).
            if pcs.spare.is_null() {
                let s = self.new_sheaf(&mut d);
                if !s.is_null() {
                    pcs.spare = pcs.main;
                    pcs.spare_count = pcs.main_count;
                    pcs.main = s;
                    pcs.main_count = 0;
                }
            }
            if pcs.main_count == pcs.main_limit {
                let e = if d.nr_full < self.max_full {
                    self.new_sheaf(&mut d)
                } else {
                    std::ptr::null_mut()
                };
                if !e.is_null() {
                    // SAFETY: main is live and ours; record its count for the depot.
                    unsafe { (*pcs.main).count = pcs.main_count };
                    self.push_full(&mut d, pcs.main);
                    pcs.main = e;
                } else {
                    // SAFETY: main holds main_count free objects of this cache.
                    unsafe {
                        self.objs_to_slabs(&mut d.slabs, objs(pcs.main), pcs.main_count as usize)
                    };
                }
                pcs.main_count = 0;
            }
        }
        drop(d);
        let pushed = pcs.push(p);
        debug_assert!(pushed);
    }

    /// [`free_slow`](Self::free_slow) of a line-private class: an object of
    /// the slot's home with main full sends main's older half back to the
    /// slabs; any other object is foreign and waits in the spare, whose
    /// objects go back to their slabs a sheaf at a time.
    fn free_slow_private(&self, pcs: &mut Pcs, p: *mut u8) {
        if pcs.main.is_null() {
            let mut d = self.depot.lock();
            let s = self.new_sheaf(&mut d);
            if s.is_null() {
                return self.to_slab(&mut d.slabs, p);
            }
            pcs.main = s;
            pcs.main_count = 0;
            pcs.main_limit = self.cap;
            pcs.home = NO_HOME;
        }
        if home_of(p) == pcs.home {
            // Main is full (else the fast path had taken it).
            let half = (pcs.main_count as usize).div_ceil(2);
            // SAFETY: main is attached (checked above).
            let m = unsafe { objs(pcs.main) };
            {
                let mut d = self.depot.lock();
                // SAFETY: main's first `half` entries are free objects of
                // this cache; the lock is held.
                unsafe { self.objs_to_slabs(&mut d.slabs, m, half) };
            }
            let keep = pcs.main_count as usize - half;
            // SAFETY: both ranges lie inside main's `main_count` entries.
            unsafe { std::ptr::copy(m.add(half), m, keep) };
            pcs.main_count = keep as u32;
            let pushed = pcs.push(p);
            debug_assert!(pushed);
            return;
        }
        if pcs.spare.is_null() || pcs.spare_count == self.cap {
            let mut d = self.depot.lock();
            if pcs.spare.is_null() {
                let s = self.new_sheaf(&mut d);
                if s.is_null() {
                    return self.to_slab(&mut d.slabs, p);
                }
                pcs.spare = s;
                pcs.spare_count = 0;
            } else {
                // SAFETY: the spare holds `spare_count` free objects.
                unsafe {
                    self.objs_to_slabs(&mut d.slabs, objs(pcs.spare), pcs.spare_count as usize)
                };
                pcs.spare_count = 0;
            }
        }
        // SAFETY: spare_count < cap, the spare's capacity.
        unsafe { *objs(pcs.spare).add(pcs.spare_count as usize) = p };
        pcs.spare_count += 1;
    }

    // ---- bulk --------------------------------------------------------------

    /// Bulk allocation inside a local section; returns (count, took a slow path).
    #[inline]
    pub(crate) fn bulk_alloc(&self, pcs: &mut Pcs, out: &mut [*mut u8]) -> (usize, bool) {
        let want = out.len();
        let mut n = 0;
        let mut slow = false;
        while n < want {
            let k = (pcs.main_count as usize).min(want - n);
            if k > 0 {
                let top = pcs.main_count as usize;
                // SAFETY: main holds `top` objects (top > 0 implies main is
                // attached); the k topmost go to out[n..n + k], in bounds.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        objs(pcs.main).add(top - k),
                        out.as_mut_ptr().add(n),
                        k,
                    )
                };
                pcs.main_count -= k as u32;
                n += k;
                continue;
            }
            slow = true;
            let p = self.alloc_slow(pcs);
            if p.is_null() {
                break;
            }
            out[n] = p;
            n += 1;
        }
        (n, slow)
    }

    /// Bulk free inside a local section; returns whether a slow path was taken.
    ///
    /// # Safety
    /// `ptrs[..len]` are allocated objects of this cache, given up.
    #[inline]
    pub(crate) unsafe fn bulk_free(&self, pcs: &mut Pcs, ptrs: *const *mut u8, len: usize) -> bool {
        let mut i = 0;
        let mut slow = false;
        if pcs.home != NO_CHECK {
            // Line-private: each object to main or, if foreign, the spare.
            while i < len {
                // SAFETY: i < len.
                let p = unsafe { *ptrs.add(i) };
                if !pcs.push(p) {
                    slow = true;
                    self.free_slow(pcs, p);
                }
                i += 1;
            }
            return slow;
        }
        while i < len {
            let room = (pcs.main_limit - pcs.main_count) as usize;
            let k = room.min(len - i);
            if k > 0 {
                // SAFETY: room > 0 implies main is attached with room for k more;
                // ptrs[i..i + k] is inside the caller's slice.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        ptrs.add(i),
                        objs(pcs.main).add(pcs.main_count as usize),
                        k,
                    )
                };
                pcs.main_count += k as u32;
                i += k;
                continue;
            }
            slow = true;
            // SAFETY: i < len.
            self.free_slow(pcs, unsafe { *ptrs.add(i) });
            i += 1;
        }
        slow
    }

    /// The drain work: hands the slot's sheaves with objects to the depot.
    /// Lock-free and allocation-free (the drain-all's caller files the
    /// hand-off stack under the depot lock once, afterwards).
    /// A line-private class's slot also gives up its home slab: main goes
    /// even when empty, naming the home for whoever files it.
    pub(crate) fn drain_pcs(&self, pcs: &mut Pcs) {
        let home = if pcs.home == NO_HOME {
            NO_CHECK
        } else {
            pcs.home
        };
        if pcs.main_count > 0 || home != NO_CHECK {
            let m = pcs.main;
            // SAFETY: main is live and held by this slot (a home implies
            // main is attached); after the push the depot owns it and the
            // slot forgets it.
            unsafe {
                (*m).count = pcs.main_count;
                (*m).home = home;
                self.handoff.push(m);
            }
            pcs.main = std::ptr::null_mut();
            pcs.main_count = 0;
            pcs.main_limit = 0;
            pcs.home = NO_CHECK;
            bump(&self.counters.handed_off, 1);
        }
        if pcs.spare_count > 0 {
            let s = pcs.spare;
            // SAFETY: as above, for the spare.
            unsafe {
                (*s).count = pcs.spare_count;
                self.handoff.push(s);
            }
            pcs.spare = std::ptr::null_mut();
            pcs.spare_count = 0;
            bump(&self.counters.handed_off, 1);
        }
    }

    /// Takes back every sheaf of a slot the caller holds exclusively (the
    /// cache is being torn down): objects to slabs, sheaves to the empty list.
    pub(crate) fn reclaim_pcs(&self, pcs: &mut Pcs) {
        let mut d = self.depot.lock();
        if pcs.home != NO_CHECK {
            self.leave_home(&mut d.slabs, pcs.home);
        }
        for (s, count) in [(pcs.main, pcs.main_count), (pcs.spare, pcs.spare_count)] {
            if !s.is_null() {
                // SAFETY: the sheaf is live and held by this slot.
                unsafe { self.objs_to_slabs(&mut d.slabs, objs(s), count as usize) };
                Self::push_empty(&mut d, s);
            }
        }
        *pcs = Pcs::new();
    }

    /// Files what drains handed off (after a drain-all).
    pub(crate) fn collect(&self) {
        let mut d = self.depot.lock();
        self.absorb(&mut d);
    }

    // ---- shared path -----------------------------------------------------

    /// Allocation for a thread without a slot: the depot's shared sheaf,
    /// under the depot lock. Null when memory is exhausted.
    pub(crate) fn alloc_shared(&self) -> *mut u8 {
        bump(&self.counters.shared_allocs, 1);
        let mut d = self.lock_absorbed();
        let mut s = d.shared;
        if s.is_null() {
            s = self.new_sheaf(&mut d);
            if s.is_null() {
                return self.alloc_one(&mut d);
            }
            d.shared = s;
        }
        // SAFETY: the shared sheaf is live and ours under the lock.
        unsafe {
            if (*s).count == 0 {
                let full = Self::pop_full(&mut d);
                if !full.is_null() {
                    bump(&self.counters.depot_hits, 1);
                    Self::push_empty(&mut d, s);
                    d.shared = full;
                    s = full;
                } else {
                    (*s).count = self.refill(&mut d.slabs, objs(s), 0, self.cap as usize) as u32;
                    if (*s).count == 0 {
                        return std::ptr::null_mut();
                    }
                }
            }
            (*s).count -= 1;
            *objs(s).add((*s).count as usize)
        }
    }

    /// Free for a thread without a slot.
    ///
    /// # Safety
    /// `p` is an allocated object of this cache that the caller gives up.
    pub(crate) unsafe fn free_shared(&self, p: *mut u8) {
        bump(&self.counters.shared_frees, 1);
        let mut d = self.depot.lock();
        let mut s = d.shared;
        if s.is_null() {
            s = self.new_sheaf(&mut d);
            if s.is_null() {
                return self.to_slab(&mut d.slabs, p);
            }
            d.shared = s;
        }
        // SAFETY: the shared sheaf is live and ours under the lock.
        unsafe {
            if (*s).count == self.cap {
                let e = if d.nr_full < self.max_full {
                    self.new_sheaf(&mut d)
                } else {
                    std::ptr::null_mut()
                };
                if !e.is_null() {
                    self.push_full(&mut d, s);
                    d.shared = e;
                    s = e;
                } else {
                    self.objs_to_slabs(&mut d.slabs, objs(s), self.cap as usize);
                    (*s).count = 0;
                }
            }
            *objs(s).add((*s).count as usize) = p;
            (*s).count += 1;
        }
    }

    // ---- shrink, decay, accounting ---------------------------------------

    /// Every object in depot sheaves back to its slab.
    fn flush_depot(&self, d: &mut Depot) {
        loop {
            let s = Self::pop_full(d);
            if s.is_null() {
                break;
            }
            // SAFETY: a full-list sheaf holds `count` free objects of this cache.
            unsafe { self.objs_to_slabs(&mut d.slabs, objs(s), (*s).count as usize) };
            Self::push_empty(d, s);
        }
        let s = d.shared;
        if !s.is_null() {
            // SAFETY: the shared sheaf holds `count` free objects.
            unsafe {
                self.objs_to_slabs(&mut d.slabs, objs(s), (*s).count as usize);
                (*s).count = 0;
            }
        }
    }

    /// Gives the pages of empty slabs back to the OS: those a decay pass saw
    /// empty at least `min_passes` passes ago, or every empty slab with
    /// `min_passes == 0`. Takes the lock per batch and releases outside it.
    /// Returns (slabs released, bytes released).
    pub(crate) fn release_empty(&self, min_passes: u32) -> (usize, usize) {
        let mut total = (0, 0);
        loop {
            let mut batch = [0u32; RELEASE_BATCH];
            let (n, more) =
                self.arena
                    .take_ripe(&mut self.depot.lock().slabs, min_passes, &mut batch);
            if n == 0 {
                return total;
            }
            let mut ok = [true; RELEASE_BATCH];
            self.arena.release_batch(&batch[..n], &mut ok);
            let (slabs, bytes) =
                self.arena
                    .finish_release(&mut self.depot.lock().slabs, &batch[..n], &ok);
            total.0 += slabs;
            total.1 += bytes;
            if !more {
                return total;
            }
        }
    }

    /// Returns every sheaf's objects in the depot to their slabs (after a
    /// drain-all, that is every free object), then gives wholly free slabs'
    /// pages back to the OS. Returns (slabs released, bytes released).
    pub(crate) fn shrink(&self) -> (usize, usize) {
        {
            let mut d = self.depot.lock();
            self.absorb(&mut d);
            self.flush_depot(&mut d);
        }
        self.release_empty(0)
    }

    /// One decay pass of this cache: files the hand-offs; once the depot
    /// has gone unused for `min_passes` passes, returns its sheaves' objects
    /// to their slabs; releases the slabs that have been empty for
    /// `min_passes` passes. Returns (slabs released, bytes released).
    pub(crate) fn decay(&self, min_passes: u32) -> (usize, usize) {
        {
            let mut d = self.depot.lock();
            self.absorb(&mut d);
            if d.used {
                d.used = false;
                d.idle_passes = 0;
            } else {
                d.idle_passes = d.idle_passes.saturating_add(1);
            }
            if d.idle_passes >= min_passes && d.nr_full > 0 {
                bump(&self.counters.decayed_sheaves, d.nr_full as u64);
                self.flush_depot(&mut d);
                d.used = false;
            }
            self.stamp_empty(&mut d.slabs);
        }
        self.release_empty(min_passes)
    }

    /// Objects not free in their slabs after every sheaf the depot can see
    /// was emptied into them: with no slot holding sheaves, the objects still
    /// allocated (the leak count of `destroy`).
    pub(crate) fn settle_and_count_allocated(&self) -> usize {
        let mut d = self.depot.lock();
        self.absorb(&mut d);
        self.flush_depot(&mut d);
        self.out_of_slabs(&d.slabs)
    }

    /// The cache's counters and depot state.
    pub(crate) fn stats(&self) -> CacheStats {
        let d = self.depot.lock();
        let (active, free_in_slabs, released) = self.slab_counts(&d.slabs);
        let lens = SlabArena::list_lens(&d.slabs);
        let shared = if d.shared.is_null() {
            0
        } else {
            // SAFETY: the shared sheaf is live under the lock.
            unsafe { (*d.shared).count as usize }
        };
        let c = &self.counters;
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CacheStats {
            object_size: self.size,
            slab_bytes: self.slab_bytes,
            objects_per_slab: self.objs_per_slab as usize,
            sheaf_capacity: self.cap as usize,
            slabs_carved: d.slabs.carved as usize,
            slabs_active: active,
            slabs_released: released,
            slabs_empty: lens[NBUCKETS],
            active_slab_bytes: active * self.slab_bytes,
            objects_out_of_slabs: active * self.objs_per_slab as usize - free_in_slabs,
            depot_full_sheaves: d.nr_full,
            depot_empty_sheaves: d.nr_empty,
            shared_sheaf_objects: shared,
            sheaves: d.sheaves_made,
            alloc_slow: r(&c.alloc_slow),
            free_slow: r(&c.free_slow),
            depot_hits: r(&c.depot_hits),
            depot_puts: r(&c.depot_puts),
            refills: r(&c.refills),
            objects_to_slabs: r(&c.to_slabs),
            sheaves_handed_off: r(&c.handed_off),
            shared_allocs: r(&c.shared_allocs),
            shared_frees: r(&c.shared_frees),
            slabs_released_total: r(&c.slabs_released),
            bytes_released_total: r(&c.bytes_released),
            release_calls: r(&c.release_calls),
            release_errors: r(&c.release_errors),
            sheaves_decayed: r(&c.decayed_sheaves),
        }
    }
}
