//! The shared part of a cache: slabs carved from the cache's own mapping,
//! and the depot of sheaves (SLUB's "barn") in front of them.
//!
//! # Memory
//!
//! A cache owns an *arena*: address space reserved once (`PROT_NONE`, not
//! charged), made usable in chunks as slabs are carved from it. Slab `s`
//! starts at `arena + s * slab_bytes`, so an object's slab and index follow
//! from its address alone, and "is this pointer ours" is a range check.
//! Per-slab metadata (a [`SlabMeta`] and a bitmap of the objects that are
//! free *in the slab*) lives in a second reservation, as do the sheaves.
//! Nothing here comes from the global allocator, so the caches can be the
//! global allocator.
//!
//! An object is in exactly one place: free in its slab (bit set), in a
//! sheaf (a slot's, the depot's, or one on its way), or allocated. Refilling
//! a sheaf from slabs and returning a sheaf's objects to slabs touch only
//! the bitmaps, never the objects' memory.
//!
//! # The depot
//!
//! Under one mutex: a stack of sheaves with objects ("full"; a drained sheaf
//! may be partly filled), a stack of empty sheaves, the sheaf of the shared
//! path (threads without a slot), the list of partial slabs (some objects
//! free) and of released slabs (pages returned to the OS, reusable). The
//! number of full sheaves is capped; beyond the cap a full sheaf's objects go
//! back to their slabs.
//!
//! Beside the mutex, the *hand-off stack* ([`TakeAllStack`]): drain work
//! pushes a slot's sheaves there without locking (it may run in a signal
//! handler that interrupted a thread holding the mutex), and whoever takes
//! the mutex next files them.
//!
//! Lock order: a slot's QPW lock, then the depot mutex. Drain work takes
//! only the slot lock; drain callers take the depot mutex only after the
//! drain, never inside a work function.

use crate::error::FreeError;
use crate::sheaf::{objs, sheaf_bytes, Pcs, Sheaf};
use crate::stack::TakeAllStack;
use crate::stats::CacheStats;
use crate::sys::{self, round_up};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

/// The smallest slab.
pub(crate) const MIN_SLAB_BYTES: usize = 64 << 10;
/// Objects a slab holds at least (the slab grows to fit them).
const MIN_OBJS_PER_SLAB: usize = 16;
/// The largest object a cache supports.
pub const MAX_OBJECT_SIZE: usize = 1 << 20;
/// The largest slab (for [`MAX_OBJECT_SIZE`] objects).
#[cfg(test)]
const MAX_SLAB_BYTES: usize = slab_bytes_for(MAX_OBJECT_SIZE);
/// Address space reserved for the sheaves of one cache.
const SHEAF_AREA: usize = 32 << 20;
/// Arena and metadata are made usable in chunks of this many bytes.
const COMMIT_CHUNK: usize = 1 << 20;

/// The slab size for objects of `size` bytes.
pub(crate) const fn slab_bytes_for(size: usize) -> usize {
    let want = (size * MIN_OBJS_PER_SLAB).next_power_of_two();
    if want > MIN_SLAB_BYTES {
        want
    } else {
        MIN_SLAB_BYTES
    }
}

// A slab's state; zeroed metadata (never carved) reads as neither.
const ACTIVE: u8 = 1;
const RELEASED: u8 = 2;

/// One slab's bookkeeping (touched only under the depot lock).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct SlabMeta {
    /// Objects free in the slab (bits set in its bitmap).
    free: u32,
    /// Next slab (+1; 0 ends) on the partial or released list.
    next: u32,
    /// No bitmap word below this one has a bit set.
    hint: u32,
    state: u8,
    on_partial: u8,
    _pad: [u8; 2],
}

/// The depot: everything shared, under one mutex.
struct Depot {
    full: *mut Sheaf,
    nr_full: usize,
    empty: *mut Sheaf,
    nr_empty: usize,
    /// The shared path's sheaf (its count in `Sheaf::count`).
    shared: *mut Sheaf,
    /// Head (+1) of the partial-slab list.
    partial: u32,
    /// Head (+1) of the released-slab list.
    released: u32,
    nr_released: usize,
    /// Slabs carved from the arena so far.
    carved: u32,
    arena_committed: usize,
    meta_committed: usize,
    bitmap_committed: usize,
    live_committed: usize,
    sheaf_bump: usize,
    sheaf_committed: usize,
    sheaves_made: usize,
}

// SAFETY: the depot's pointers lead to sheaves and slabs in the cache's own
// mappings; it is only reached under its mutex, which hands it whole from
// thread to thread. (`Sync` comes from the Mutex.)
unsafe impl Send for Depot {}

/// Slow-path counters (relaxed; statistics only).
#[derive(Default)]
struct Counters {
    alloc_slow: AtomicU64,
    free_slow: AtomicU64,
    depot_hits: AtomicU64,
    depot_puts: AtomicU64,
    refills: AtomicU64,
    to_slabs: AtomicU64,
    shared_allocs: AtomicU64,
    shared_frees: AtomicU64,
    handed_off: AtomicU64,
    slabs_released: AtomicU64,
    bytes_released: AtomicU64,
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Where a cache's memory is and how it is cut.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geometry {
    /// Object size (a multiple of `align`).
    pub(crate) size: usize,
    /// Sheaf capacity.
    pub(crate) cap: usize,
    /// Cap on the depot's full sheaves.
    pub(crate) max_full: usize,
}

/// The shared part of one cache.
pub(crate) struct SlabCore {
    size: usize,
    slab_bytes: usize,
    slab_shift: u32,
    objs_per_slab: u32,
    words: usize,
    cap: u32,
    max_full: usize,
    /// `Some(shift)` when `size` is a power of two.
    pow2: Option<u32>,
    /// ceil(2^64 / size), for division by multiplication.
    recip: u64,
    arena: usize,
    arena_len: usize,
    max_slabs: usize,
    meta: usize,
    meta_len: usize,
    bitmap_off: usize,
    live_off: usize,
    sheaf_off: usize,
    /// `carved`, readable without the lock (debug checks of frees).
    carved_pub: AtomicU32,
    depot: Mutex<Depot>,
    handoff: TakeAllStack<Sheaf>,
    counters: Counters,
}

// SAFETY: every mutable part of a SlabCore is behind its mutex (the depot,
// slab metadata and bitmaps, which are only touched with the mutex held) or
// atomic (counters, the hand-off stack, debug bitmaps); the raw addresses
// are its own mappings, valid as long as it lives. Send: nothing in it is
// tied to a thread.
unsafe impl Send for SlabCore {}
// SAFETY: as above: shared access goes through the mutex or atomics.
unsafe impl Sync for SlabCore {}

impl SlabCore {
    /// A cache over `[arena, arena + arena_len)`, a reservation the caller
    /// made (aligned to the slab size) and keeps alive as long as the core.
    pub(crate) fn new(g: Geometry, arena: usize, arena_len: usize) -> Result<Self, sys::Errno> {
        let size = g.size;
        let slab_bytes = slab_bytes_for(size);
        debug_assert!(arena % slab_bytes == 0);
        let objs_per_slab = slab_bytes / size;
        let words = objs_per_slab.div_ceil(64);
        let max_slabs = (arena_len / slab_bytes).min(u32::MAX as usize - 1);
        let page = sys::page_size();
        let metas_len = round_up(max_slabs * std::mem::size_of::<SlabMeta>(), page);
        let bitmap_len = round_up(max_slabs * words * 8, page);
        let live_len = if cfg!(debug_assertions) {
            bitmap_len
        } else {
            0
        };
        let bitmap_off = metas_len;
        let live_off = bitmap_off + bitmap_len;
        let sheaf_off = live_off + live_len;
        let meta_len = sheaf_off + SHEAF_AREA;
        let meta = sys::reserve(meta_len, page)?;
        Ok(Self {
            size,
            slab_bytes,
            slab_shift: slab_bytes.trailing_zeros(),
            objs_per_slab: objs_per_slab as u32,
            words,
            cap: g.cap as u32,
            max_full: g.max_full,
            pow2: size.is_power_of_two().then(|| size.trailing_zeros()),
            recip: if size.is_power_of_two() {
                0
            } else {
                (u64::MAX / size as u64) + 1
            },
            arena,
            arena_len,
            max_slabs,
            meta,
            meta_len,
            bitmap_off,
            live_off,
            sheaf_off,
            carved_pub: AtomicU32::new(0),
            depot: Mutex::new(Depot {
                full: std::ptr::null_mut(),
                nr_full: 0,
                empty: std::ptr::null_mut(),
                nr_empty: 0,
                shared: std::ptr::null_mut(),
                partial: 0,
                released: 0,
                nr_released: 0,
                carved: 0,
                arena_committed: 0,
                meta_committed: 0,
                bitmap_committed: 0,
                live_committed: 0,
                sheaf_bump: 0,
                sheaf_committed: 0,
                sheaves_made: 0,
            }),
            handoff: TakeAllStack::new(),
            counters: Counters::default(),
        })
    }

    /// Unmaps the metadata (not the arena, which the caller reserved).
    ///
    /// # Safety
    /// No object, sheaf or slab of this core may be used afterwards.
    pub(crate) unsafe fn unmap_meta(&self) {
        // SAFETY: forwarded; the reservation was made in `new`.
        unsafe { sys::unmap(self.meta, self.meta_len) };
    }

    /// The object size.
    #[inline]
    pub(crate) fn size(&self) -> usize {
        self.size
    }

    /// The sheaf capacity.
    pub(crate) fn capacity(&self) -> usize {
        self.cap as usize
    }

    /// The slab size.
    pub(crate) fn slab_bytes(&self) -> usize {
        self.slab_bytes
    }

    /// Whether `p` is inside this cache's arena.
    #[cfg(debug_assertions)]
    #[inline(always)]
    fn contains(&self, p: usize) -> bool {
        p.wrapping_sub(self.arena) < self.arena_len
    }

    fn lock(&self) -> MutexGuard<'_, Depot> {
        // A panic while holding the lock (a bug, or a debug check) leaves the
        // depot consistent: every step keeps the lists valid.
        self.depot.lock().unwrap_or_else(|e| e.into_inner())
    }

    // ---- addresses -------------------------------------------------------

    #[inline]
    fn div_size(&self, off: usize) -> usize {
        match self.pow2 {
            Some(s) => off >> s,
            None => ((off as u128 * self.recip as u128) >> 64) as usize,
        }
    }

    /// Slab and object index of an object's address (inside the arena).
    #[inline]
    fn locate(&self, p: usize) -> (usize, usize) {
        let off = p - self.arena;
        let s = off >> self.slab_shift;
        (s, self.div_size(off & (self.slab_bytes - 1)))
    }

    /// # Safety
    /// `s < carved`, the depot lock held (or exclusive access).
    #[allow(clippy::mut_from_ref)]
    unsafe fn meta_of(&self, s: usize) -> &mut SlabMeta {
        // SAFETY: slab metas below `carved` are committed; the caller holds
        // the lock, so this is the only reference.
        unsafe { &mut *(self.meta as *mut SlabMeta).add(s) }
    }

    /// # Safety
    /// As [`meta_of`](Self::meta_of).
    unsafe fn bitmap_of(&self, s: usize) -> *mut u64 {
        // SAFETY: the slab's bitmap words are committed once it is carved.
        unsafe { ((self.meta + self.bitmap_off) as *mut u64).add(s * self.words) }
    }

    #[cfg(debug_assertions)]
    fn live_word(&self, s: usize, wi: usize) -> &AtomicU64 {
        // SAFETY: called only for carved slabs, whose live words are committed
        // (zeroed) before any of their objects is handed out; AtomicU64 has
        // the layout of u64 and every access is atomic.
        unsafe { &*((self.meta + self.live_off) as *const AtomicU64).add(s * self.words + wi) }
    }

    // ---- debug checks ----------------------------------------------------

    /// Debug builds: records that `p` was handed to a user.
    #[inline]
    pub(crate) fn mark_allocated(&self, p: *mut u8) {
        #[cfg(debug_assertions)]
        {
            let (s, idx) = self.locate(p as usize);
            let bit = 1u64 << (idx % 64);
            let old = self.live_word(s, idx / 64).fetch_or(bit, Ordering::Relaxed);
            if old & bit != 0 {
                sys::abort_with("slab: an allocated object was handed out again (allocator bug)");
            }
        }
        #[cfg(not(debug_assertions))]
        let _ = p;
    }

    /// Debug builds: checks that `p` is an allocated object of this cache and
    /// records that it is free. Release builds check nothing.
    #[inline]
    pub(crate) fn check_free(&self, p: *mut u8) -> Result<(), FreeError> {
        #[cfg(debug_assertions)]
        {
            let ptr = p as usize;
            if !self.contains(ptr) {
                return Err(FreeError::Foreign { ptr });
            }
            let (s, idx) = self.locate(ptr);
            if s >= self.carved_pub.load(Ordering::Acquire) as usize {
                return Err(FreeError::Foreign { ptr });
            }
            let off = (ptr - self.arena) & (self.slab_bytes - 1);
            if idx * self.size != off || idx >= self.objs_per_slab as usize {
                return Err(FreeError::NotObjectStart {
                    ptr,
                    object_size: self.size,
                });
            }
            let bit = 1u64 << (idx % 64);
            let old = self
                .live_word(s, idx / 64)
                .fetch_and(!bit, Ordering::Relaxed);
            if old & bit == 0 {
                return Err(FreeError::DoubleFree {
                    ptr,
                    object_size: self.size,
                });
            }
        }
        #[cfg(not(debug_assertions))]
        let _ = p;
        Ok(())
    }

    // ---- memory ----------------------------------------------------------

    fn commit_to(
        base: usize,
        committed: &mut usize,
        need: usize,
        limit: usize,
        chunk: usize,
    ) -> bool {
        if need <= *committed {
            return true;
        }
        let new = round_up(need, chunk).min(limit);
        if new < need || sys::commit(base + *committed, new - *committed).is_err() {
            return false;
        }
        *committed = new;
        true
    }

    /// A slab with free objects, pushed on the partial list: a released one
    /// reused, or a new one carved. `None` when the arena is exhausted.
    fn grow(&self, d: &mut Depot) -> Option<usize> {
        let s = if d.released != 0 {
            let s = d.released as usize - 1;
            // SAFETY: released slabs are carved; the lock is held.
            d.released = unsafe { self.meta_of(s) }.next;
            d.nr_released -= 1;
            s
        } else {
            let s = d.carved as usize;
            if s >= self.max_slabs {
                return None;
            }
            let chunk = COMMIT_CHUNK.max(self.slab_bytes);
            let ok = Self::commit_to(
                self.arena,
                &mut d.arena_committed,
                (s + 1) * self.slab_bytes,
                self.arena_len,
                chunk,
            ) && Self::commit_to(
                self.meta,
                &mut d.meta_committed,
                (s + 1) * std::mem::size_of::<SlabMeta>(),
                self.bitmap_off,
                COMMIT_CHUNK,
            ) && Self::commit_to(
                self.meta + self.bitmap_off,
                &mut d.bitmap_committed,
                (s + 1) * self.words * 8,
                self.live_off - self.bitmap_off,
                COMMIT_CHUNK,
            ) && (!cfg!(debug_assertions)
                || Self::commit_to(
                    self.meta + self.live_off,
                    &mut d.live_committed,
                    (s + 1) * self.words * 8,
                    self.sheaf_off - self.live_off,
                    COMMIT_CHUNK,
                ));
            if !ok {
                return None;
            }
            d.carved += 1;
            self.carved_pub.store(d.carved, Ordering::Release);
            s
        };
        // SAFETY: `s` is carved (just now or before); the lock is held.
        let bm = unsafe { self.bitmap_of(s) };
        let n = self.objs_per_slab as usize;
        for wi in 0..self.words {
            let bits = if (wi + 1) * 64 <= n {
                u64::MAX
            } else {
                (1u64 << (n % 64)) - 1
            };
            // SAFETY: wi < words, inside the slab's committed bitmap.
            unsafe { *bm.add(wi) = bits };
        }
        // SAFETY: as above.
        let m = unsafe { self.meta_of(s) };
        *m = SlabMeta {
            free: n as u32,
            next: d.partial,
            hint: 0,
            state: ACTIVE,
            on_partial: 1,
            _pad: [0; 2],
        };
        d.partial = s as u32 + 1;
        Some(s)
    }

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
        if at + bytes > SHEAF_AREA
            || !Self::commit_to(
                self.meta + self.sheaf_off,
                &mut d.sheaf_committed,
                at + bytes,
                SHEAF_AREA,
                64 << 10,
            )
        {
            return std::ptr::null_mut();
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
        bump(&self.counters.depot_puts, 1);
    }

    fn pop_full(d: &mut Depot) -> *mut Sheaf {
        let s = d.full;
        if !s.is_null() {
            // SAFETY: sheaves on the full list are live and ours under the lock.
            d.full = unsafe { (*s).next.load(Ordering::Relaxed) };
            d.nr_full -= 1;
        }
        s
    }

    /// Fills `objs[n..want]` from slabs (carving new ones as needed); returns
    /// the new count, below `want` only when the arena is exhausted.
    ///
    /// # Safety
    /// `objs` must have room for `want` pointers; the lock is held (`d`).
    unsafe fn refill(&self, d: &mut Depot, objs: *mut *mut u8, mut n: usize, want: usize) -> usize {
        bump(&self.counters.refills, 1);
        while n < want {
            let s = match d.partial {
                0 => match self.grow(d) {
                    Some(s) => s,
                    None => break,
                },
                h => h as usize - 1,
            };
            // SAFETY: slabs on the partial list are carved; the lock is held.
            let m = unsafe { self.meta_of(s) };
            // SAFETY: as above.
            let bm = unsafe { self.bitmap_of(s) };
            let base = self.arena + (s << self.slab_shift);
            let mut wi = m.hint as usize;
            while n < want && m.free > 0 {
                // SAFETY: a slab with free objects has a set bit at or above
                // `hint`, so `wi` stays below `words`.
                let mut w = unsafe { *bm.add(wi) };
                if w == 0 {
                    wi += 1;
                    continue;
                }
                while w != 0 && n < want {
                    let b = w.trailing_zeros() as usize;
                    w &= w - 1;
                    // SAFETY: n < want, within the caller's array.
                    unsafe { *objs.add(n) = (base + (wi * 64 + b) * self.size) as *mut u8 };
                    n += 1;
                    m.free -= 1;
                }
                // SAFETY: as above.
                unsafe { *bm.add(wi) = w };
            }
            m.hint = wi as u32;
            if m.free == 0 {
                d.partial = m.next;
                m.next = 0;
                m.on_partial = 0;
            }
        }
        n
    }

    /// Returns one object to its slab.
    fn to_slab(&self, d: &mut Depot, p: *mut u8) {
        let (s, idx) = self.locate(p as usize);
        // SAFETY: `p` is an object of this cache (it was in a sheaf), so its
        // slab is carved; the lock is held.
        let m = unsafe { self.meta_of(s) };
        // SAFETY: as above.
        let bm = unsafe { self.bitmap_of(s) };
        let wi = idx / 64;
        // SAFETY: idx < objs_per_slab, so wi < words.
        unsafe { *bm.add(wi) |= 1u64 << (idx % 64) };
        m.free += 1;
        if (wi as u32) < m.hint {
            m.hint = wi as u32;
        }
        if m.on_partial == 0 {
            m.on_partial = 1;
            m.next = d.partial;
            d.partial = s as u32 + 1;
        }
    }

    /// Returns `count` objects of `objs` to their slabs.
    ///
    /// # Safety
    /// `objs[..count]` are free objects of this cache, held by the caller.
    unsafe fn objs_to_slabs(&self, d: &mut Depot, objs: *mut *mut u8, count: usize) {
        for i in 0..count {
            // SAFETY: i < count, forwarded.
            self.to_slab(d, unsafe { *objs.add(i) });
        }
        bump(&self.counters.to_slabs, count as u64);
    }

    /// Files a sheaf that came back from a slot.
    fn file_sheaf(&self, d: &mut Depot, s: *mut Sheaf) {
        // SAFETY: the caller hands over a live sheaf it holds exclusively.
        let count = unsafe { (*s).count } as usize;
        if count == 0 {
            Self::push_empty(d, s);
        } else if d.nr_full < self.max_full {
            self.push_full(d, s);
        } else {
            // SAFETY: the sheaf holds `count` free objects of this cache.
            unsafe { self.objs_to_slabs(d, objs(s), count) };
            Self::push_empty(d, s);
        }
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
        if pcs.spare_count > 0 && !pcs.main.is_null() {
            pcs.swap();
            return pcs.pop().unwrap_or(std::ptr::null_mut());
        }
        let mut d = self.lock();
        if !self.handoff.is_empty() {
            self.absorb(&mut d);
        }
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
                unsafe { self.refill(&mut d, objs(pcs.main), 0, self.cap as usize) } as u32;
        }
        drop(d);
        pcs.pop().unwrap_or(std::ptr::null_mut())
    }

    /// One object straight from a slab (no sheaf available).
    fn alloc_one(&self, d: &mut Depot) -> *mut u8 {
        let mut p = std::ptr::null_mut();
        // SAFETY: room for one pointer; the lock is held.
        unsafe { self.refill(d, &mut p, 0, 1) };
        p
    }

    /// Free when the slot's main sheaf is full or absent (SLUB's
    /// `__pcs_replace_full_main`). Runs inside the slot's local section.
    #[cold]
    #[inline(never)]
    pub(crate) fn free_slow(&self, pcs: &mut Pcs, p: *mut u8) {
        bump(&self.counters.free_slow, 1);
        if !pcs.main.is_null() && !pcs.spare.is_null() && pcs.spare_count < self.cap {
            pcs.swap();
            let pushed = pcs.push(p);
            debug_assert!(pushed);
            return;
        }
        let mut d = self.lock();
        if pcs.main.is_null() {
            let s = self.new_sheaf(&mut d);
            if s.is_null() {
                return self.to_slab(&mut d, p);
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
                    unsafe { self.objs_to_slabs(&mut d, objs(pcs.main), pcs.main_count as usize) };
                }
                pcs.main_count = 0;
            }
        }
        drop(d);
        let pushed = pcs.push(p);
        debug_assert!(pushed);
    }

    /// The drain work: hands the slot's sheaves with objects to the depot.
    /// Lock-free and allocation-free: it may run in a signal handler that
    /// interrupted a thread holding the depot mutex.
    pub(crate) fn drain_pcs(&self, pcs: &mut Pcs) {
        if pcs.main_count > 0 {
            let m = pcs.main;
            // SAFETY: main is live and held by this slot; after the push the
            // depot owns it and the slot forgets it.
            unsafe {
                (*m).count = pcs.main_count;
                self.handoff.push(m);
            }
            pcs.main = std::ptr::null_mut();
            pcs.main_count = 0;
            pcs.main_limit = 0;
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
        let mut d = self.lock();
        for (s, count) in [(pcs.main, pcs.main_count), (pcs.spare, pcs.spare_count)] {
            if !s.is_null() {
                // SAFETY: the sheaf is live and held by this slot.
                unsafe { self.objs_to_slabs(&mut d, objs(s), count as usize) };
                Self::push_empty(&mut d, s);
            }
        }
        *pcs = Pcs::new();
    }

    /// Files what drains handed off (after a drain-all).
    pub(crate) fn collect(&self) {
        let mut d = self.lock();
        self.absorb(&mut d);
    }

    // ---- shared path -----------------------------------------------------

    /// Allocation for a thread without a slot: the depot's shared sheaf,
    /// under the depot lock. Null when memory is exhausted.
    pub(crate) fn alloc_shared(&self) -> *mut u8 {
        bump(&self.counters.shared_allocs, 1);
        let mut d = self.lock();
        if !self.handoff.is_empty() {
            self.absorb(&mut d);
        }
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
                    (*s).count = self.refill(&mut d, objs(s), 0, self.cap as usize) as u32;
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
        let mut d = self.lock();
        let mut s = d.shared;
        if s.is_null() {
            s = self.new_sheaf(&mut d);
            if s.is_null() {
                return self.to_slab(&mut d, p);
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
                    self.objs_to_slabs(&mut d, objs(s), self.cap as usize);
                    (*s).count = 0;
                }
            }
            *objs(s).add((*s).count as usize) = p;
            (*s).count += 1;
        }
    }

    // ---- shrink, accounting ----------------------------------------------

    /// Returns every sheaf's objects in the depot to their slabs (after a
    /// drain-all, that is every free object), then gives wholly free slabs'
    /// pages back to the OS. Returns (slabs released, bytes released).
    pub(crate) fn shrink(&self) -> (usize, usize) {
        let mut d = self.lock();
        self.absorb(&mut d);
        self.flush_depot(&mut d);
        let mut released = 0usize;
        let mut partial = 0u32;
        for s in (0..d.carved as usize).rev() {
            // SAFETY: s < carved; the lock is held.
            let m = unsafe { self.meta_of(s) };
            if m.state != ACTIVE {
                continue;
            }
            if m.free == self.objs_per_slab {
                sys::release(self.arena + (s << self.slab_shift), self.slab_bytes);
                m.state = RELEASED;
                m.on_partial = 0;
                m.next = d.released;
                d.released = s as u32 + 1;
                d.nr_released += 1;
                released += 1;
            } else if m.free > 0 {
                m.on_partial = 1;
                m.next = partial;
                partial = s as u32 + 1;
            } else {
                m.on_partial = 0;
                m.next = 0;
            }
        }
        d.partial = partial;
        let bytes = released * self.slab_bytes;
        bump(&self.counters.slabs_released, released as u64);
        bump(&self.counters.bytes_released, bytes as u64);
        (released, bytes)
    }

    /// Every object in depot sheaves back to its slab.
    fn flush_depot(&self, d: &mut Depot) {
        loop {
            let s = Self::pop_full(d);
            if s.is_null() {
                break;
            }
            // SAFETY: a full-list sheaf holds `count` free objects of this cache.
            unsafe { self.objs_to_slabs(d, objs(s), (*s).count as usize) };
            Self::push_empty(d, s);
        }
        let s = d.shared;
        if !s.is_null() {
            // SAFETY: the shared sheaf holds `count` free objects.
            unsafe {
                self.objs_to_slabs(d, objs(s), (*s).count as usize);
                (*s).count = 0;
            }
        }
    }

    /// Objects not free in their slabs after every sheaf the depot can see
    /// was emptied into them: with no slot holding sheaves, the objects still
    /// allocated (the leak count of `destroy`).
    pub(crate) fn settle_and_count_allocated(&self) -> usize {
        let mut d = self.lock();
        self.absorb(&mut d);
        self.flush_depot(&mut d);
        let mut out = 0;
        for s in 0..d.carved as usize {
            // SAFETY: s < carved; the lock is held.
            let m = unsafe { self.meta_of(s) };
            if m.state == ACTIVE {
                out += (self.objs_per_slab - m.free) as usize;
            }
        }
        out
    }

    /// The cache's counters and depot state.
    pub(crate) fn stats(&self) -> CacheStats {
        let d = self.lock();
        let mut active = 0;
        let mut free_in_slabs = 0usize;
        for s in 0..d.carved as usize {
            // SAFETY: s < carved; the lock is held.
            let m = unsafe { self.meta_of(s) };
            if m.state == ACTIVE {
                active += 1;
                free_in_slabs += m.free as usize;
            }
        }
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
            slabs_carved: d.carved as usize,
            slabs_active: active,
            slabs_released: d.nr_released,
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn division_by_multiplication_is_exact() {
        for size in [
            8usize,
            24,
            40,
            48,
            96,
            136,
            192,
            1000,
            3072,
            5000,
            24_576,
            1 << 20,
        ] {
            let slab = slab_bytes_for(size);
            let arena = sys::reserve(slab, slab).unwrap();
            let core = SlabCore::new(
                Geometry {
                    size,
                    cap: 8,
                    max_full: 4,
                },
                arena,
                slab,
            )
            .unwrap();
            for idx in 0..slab / size {
                for delta in [0usize, 1, size - 1] {
                    let off = idx * size + delta;
                    if off < slab {
                        assert_eq!(core.div_size(off), off / size, "size {size} off {off}");
                    }
                }
            }
            // SAFETY: nothing of this core was used.
            unsafe {
                core.unmap_meta();
                sys::unmap(arena, slab);
            }
        }
    }

    #[test]
    fn slab_sizes_hold_enough_objects() {
        assert_eq!(slab_bytes_for(8), MIN_SLAB_BYTES);
        assert_eq!(slab_bytes_for(4096), MIN_SLAB_BYTES);
        assert_eq!(slab_bytes_for(8192), 128 << 10);
        const { assert!(MAX_SLAB_BYTES / MAX_OBJECT_SIZE >= MIN_OBJS_PER_SLAB) };
    }
}
