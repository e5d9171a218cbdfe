//! Slab carving: the memory of a cache ([`SlabArena`]), cut into slabs of
//! objects, and the slab lists ([`Slabs`]: partial slabs bucketed by
//! fullness, wholly free slabs, released slabs, and the *home* slabs of
//! line-private classes' slots). The sheaves in front of the slabs, and the
//! lock over both, are the depot's (`depot.rs`, the layer above: this
//! file never links to it).
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
//! # Slab lists
//!
//! Every carved slab is on exactly one list, or on none while wholly
//! allocated or being released: [`NBUCKETS`] *partial* lists by how full
//! the slab is, the *empty* list (every object free, pages still resident)
//! and the *released* list (pages given back to the OS, reusable). The lists
//! are doubly linked through the metadata, so a slab moves between them in
//! O(1) as objects come and go. Refill takes from the fullest partial slab
//! first, then from empty ones, then reuses a released slab, then carves a
//! new one: allocations concentrate on few slabs and the others get a
//! chance to empty out and be released.
//!
//! Releasing (`madvise(MADV_DONTNEED)`) happens outside the lock, in
//! batches of adjacent slabs (one call per run): a slab being released is on
//! no list, so nothing reaches it meanwhile. A failed release is counted
//! and the slab goes back to the empty list, not counted as released.

use crate::error::FreeError;
use crate::geometry::{slab_bytes_for, SHEAF_AREA};
use crate::sys::{self, round_up};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Whether `off` (below 2^32) is a multiple of the size whose
/// `u64::MAX / size + 1` is `c` (see `SlabArena::divides_c`).
#[inline(always)]
fn divides(off: usize, c: u64) -> bool {
    (off as u64).wrapping_mul(c) < c
}

/// The largest slab (for [`MAX_OBJECT_SIZE`](crate::geometry::MAX_OBJECT_SIZE) objects).
#[cfg(test)]
const MAX_SLAB_BYTES: usize = slab_bytes_for(crate::geometry::MAX_OBJECT_SIZE);
/// Arena and metadata are made usable in chunks of at least this many bytes.
const COMMIT_CHUNK: usize = 4 << 20;
/// Partial lists, by fullness: list 0 holds the fullest slabs.
pub(crate) const NBUCKETS: usize = 4;
/// The list of wholly free slabs.
const EMPTY: u8 = NBUCKETS as u8;
/// The list of released slabs.
const RELEASED_LIST: u8 = NBUCKETS as u8 + 1;
const NLISTS: usize = NBUCKETS + 2;
/// On no list: wholly allocated, or being released.
const NO_LIST: u8 = u8::MAX;
/// Slabs released per batch (one lock hold collects them).
pub(crate) const RELEASE_BATCH: usize = 256;

// A slab's state; zeroed metadata (never carved) reads as neither.
const ACTIVE: u8 = 1;
const RELEASED: u8 = 2;
const RELEASING: u8 = 3;
/// A line-private class's slot's home: active, on no list whatever its
/// free count, refilled from by that slot only.
const HOME: u8 = 4;

/// One slab's bookkeeping (touched only under the depot lock).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct SlabMeta {
    /// Objects free in the slab (bits set in its bitmap).
    free: u32,
    /// Next and previous slab (+1; 0 ends) on its list.
    next: u32,
    prev: u32,
    /// No bitmap word below this one has a bit set.
    hint: u32,
    /// Decay pass that first saw it on the empty list (0: none yet).
    stamp: u32,
    state: u8,
    /// Which list it is on ([`NO_LIST`] for none).
    list: u8,
    _pad: [u8; 2],
}

/// The slab side of the depot: list heads and what is carved and committed.
pub(crate) struct Slabs {
    heads: [u32; NLISTS],
    lens: [usize; NLISTS],
    /// Slabs carved from the arena so far.
    pub(crate) carved: u32,
    /// Slabs being released (on no list, outside the lock).
    releasing: usize,
    arena_committed: usize,
    meta_committed: usize,
    bitmap_committed: usize,
    live_committed: usize,
    /// The decay pass count (stamps of empty slabs).
    pass: u32,
}

impl Slabs {
    pub(crate) const fn new() -> Self {
        Self {
            heads: [0; NLISTS],
            lens: [0; NLISTS],
            carved: 0,
            releasing: 0,
            arena_committed: 0,
            meta_committed: 0,
            bitmap_committed: 0,
            live_committed: 0,
            pass: 0,
        }
    }
}

/// Slow-path counters (relaxed; statistics only).
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) alloc_slow: AtomicU64,
    pub(crate) free_slow: AtomicU64,
    pub(crate) depot_hits: AtomicU64,
    pub(crate) depot_puts: AtomicU64,
    pub(crate) refills: AtomicU64,
    pub(crate) to_slabs: AtomicU64,
    pub(crate) shared_allocs: AtomicU64,
    pub(crate) shared_frees: AtomicU64,
    pub(crate) handed_off: AtomicU64,
    pub(crate) slabs_released: AtomicU64,
    pub(crate) bytes_released: AtomicU64,
    pub(crate) release_calls: AtomicU64,
    pub(crate) release_errors: AtomicU64,
    pub(crate) decayed_sheaves: AtomicU64,
}

pub(crate) fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// One cache's memory: the arena of slabs, their metadata and bitmaps, and
/// the sheaf area. Its list state ([`Slabs`]) lives under the depot's lock;
/// every method that changes slabs takes it as `&mut Slabs`.
pub(crate) struct SlabArena {
    pub(crate) size: usize,
    pub(crate) slab_bytes: usize,
    slab_shift: u32,
    pub(crate) objs_per_slab: u32,
    /// Free counts at which a slab moves to the next partial list.
    thresholds: [u32; NBUCKETS - 1],
    words: usize,
    /// `Some(shift)` when `size` is a power of two.
    pow2: Option<u32>,
    /// ceil(2^64 / size), for division by multiplication.
    recip: u64,
    /// `u64::MAX / size + 1` for every size: `off` (below 2^32) is a
    /// multiple of `size` exactly when `off * divides_c < divides_c`
    /// (wrapping; Lemire, Kaser and Kurz, "Faster remainder by direct
    /// computation", 2019).
    divides_c: u64,
    /// The bytes of a slab's objects (`objs_per_slab * size`; the rest of
    /// the slab is slack no object starts in).
    used_bytes: usize,
    arena: usize,
    arena_len: usize,
    max_slabs: usize,
    pub(crate) meta: usize,
    meta_len: usize,
    bitmap_off: usize,
    live_off: usize,
    pub(crate) sheaf_off: usize,
    /// `carved`, readable without the lock (debug checks of frees).
    carved_pub: AtomicU32,
    pub(crate) counters: Counters,
}

// SAFETY: every mutable part of a SlabArena is reached only with its
// `Slabs` borrowed mutably (slab metadata and bitmaps: the depot lock
// holds both) or atomic (counters, debug bitmaps); the raw addresses are
// its own mappings, valid as long as it lives. Send: nothing in it is tied
// to a thread.
unsafe impl Send for SlabArena {}
// SAFETY: as above: shared access goes through the lock or atomics.
unsafe impl Sync for SlabArena {}

impl SlabArena {
    /// The memory of a cache of `size`-byte objects over
    /// `[arena, arena + arena_len)`, a reservation the caller made
    /// (aligned to the slab size) and keeps alive as long as this.
    pub(crate) fn new(size: usize, arena: usize, arena_len: usize) -> Result<Self, sys::Errno> {
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
        let mut thresholds = [0u32; NBUCKETS - 1];
        for (i, t) in thresholds.iter_mut().enumerate() {
            *t = ((i + 1) * objs_per_slab).div_ceil(NBUCKETS) as u32;
        }
        Ok(Self {
            size,
            slab_bytes,
            slab_shift: slab_bytes.trailing_zeros(),
            objs_per_slab: objs_per_slab as u32,
            thresholds,
            words,
            pow2: size.is_power_of_two().then(|| size.trailing_zeros()),
            recip: if size.is_power_of_two() {
                0
            } else {
                (u64::MAX / size as u64) + 1
            },
            divides_c: (u64::MAX / size as u64) + 1,
            used_bytes: objs_per_slab * size,
            arena,
            arena_len,
            max_slabs,
            meta,
            meta_len,
            bitmap_off,
            live_off,
            sheaf_off,
            carved_pub: AtomicU32::new(0),
            counters: Counters::default(),
        })
    }

    /// Unmaps the metadata (not the arena, which the caller reserved).
    ///
    /// # Safety
    /// No object, sheaf or slab of this core may be used afterwards.
    pub(crate) unsafe fn unmap_meta(&self) {
        // SAFETY: forwarded; the reservation was made in `new`. A failure
        // only leaves unused address space mapped.
        let _ = unsafe { sys::unmap(self.meta, self.meta_len) };
    }

    /// The object size.
    #[inline]
    pub(crate) fn size(&self) -> usize {
        self.size
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

    // ---- addresses -------------------------------------------------------

    #[inline]
    pub(crate) fn div_size(&self, off: usize) -> usize {
        match self.pow2 {
            Some(s) => off >> s,
            None => ((off as u128 * self.recip as u128) >> 64) as usize,
        }
    }

    /// Whether `p` (an address inside this cache's span) is the start of an
    /// object of a slab carved so far: what every build checks of a free
    /// (one multiply, three compares, no branch until the result). Slabs
    /// follow each other from the arena's start; offsets inside one are
    /// far below 2^32, as the divisibility test needs.
    #[inline(always)]
    pub(crate) fn is_object_start(&self, p: usize) -> bool {
        let rel = p.wrapping_sub(self.arena);
        let off = rel & (self.slab_bytes - 1);
        let slab = rel >> self.slab_shift;
        divides(off, self.divides_c)
            & (off < self.used_bytes)
            & (slab < self.carved_pub.load(Ordering::Acquire) as usize)
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

    // ---- lists -----------------------------------------------------------

    /// The list a slab with `free` free objects belongs on.
    #[inline]
    fn list_for(&self, free: u32) -> u8 {
        if free == 0 {
            NO_LIST
        } else if free == self.objs_per_slab {
            EMPTY
        } else {
            self.thresholds.iter().filter(|&&t| free >= t).count() as u8
        }
    }

    /// Puts slab `s` (on no list) at the head of list `l`.
    fn link(&self, sl: &mut Slabs, s: usize, l: u8) {
        if l == NO_LIST {
            return;
        }
        let head = sl.heads[l as usize];
        if head != 0 {
            // SAFETY: listed slabs are carved; the lock is held.
            unsafe { self.meta_of(head as usize - 1) }.prev = s as u32 + 1;
        }
        // SAFETY: as above.
        let m = unsafe { self.meta_of(s) };
        m.next = head;
        m.prev = 0;
        m.list = l;
        if l == EMPTY {
            m.stamp = 0;
        }
        sl.heads[l as usize] = s as u32 + 1;
        sl.lens[l as usize] += 1;
    }

    /// Takes slab `s` off its list (if any).
    fn unlink(&self, sl: &mut Slabs, s: usize) {
        // SAFETY: `s` is carved; the lock is held.
        let m = *unsafe { self.meta_of(s) };
        if m.list == NO_LIST {
            return;
        }
        if m.prev != 0 {
            // SAFETY: neighbours on a list are carved.
            unsafe { self.meta_of(m.prev as usize - 1) }.next = m.next;
        } else {
            sl.heads[m.list as usize] = m.next;
        }
        if m.next != 0 {
            // SAFETY: as above.
            unsafe { self.meta_of(m.next as usize - 1) }.prev = m.prev;
        }
        sl.lens[m.list as usize] -= 1;
        // SAFETY: as above.
        let m = unsafe { self.meta_of(s) };
        m.list = NO_LIST;
        m.next = 0;
        m.prev = 0;
    }

    /// Moves slab `s` to the list its free count calls for.
    #[inline]
    fn relist(&self, sl: &mut Slabs, s: usize) {
        // SAFETY: `s` is carved; the lock is held.
        let m = unsafe { self.meta_of(s) };
        if m.state == HOME {
            return;
        }
        let want = self.list_for(m.free);
        if want != m.list {
            self.unlink(sl, s);
            self.link(sl, s, want);
        }
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

    /// A slab with every object free, on the empty list: a released one
    /// reused, or a new one carved. `None` when the arena is exhausted.
    fn grow(&self, sl: &mut Slabs) -> Option<usize> {
        let s = if sl.heads[RELEASED_LIST as usize] != 0 {
            let s = sl.heads[RELEASED_LIST as usize] as usize - 1;
            self.unlink(sl, s);
            s
        } else {
            let s = sl.carved as usize;
            if s >= self.max_slabs {
                return None;
            }
            let chunk = COMMIT_CHUNK.max(self.slab_bytes);
            let ok = Self::commit_to(
                self.arena,
                &mut sl.arena_committed,
                (s + 1) * self.slab_bytes,
                self.arena_len,
                chunk,
            ) && Self::commit_to(
                self.meta,
                &mut sl.meta_committed,
                (s + 1) * std::mem::size_of::<SlabMeta>(),
                self.bitmap_off,
                COMMIT_CHUNK,
            ) && Self::commit_to(
                self.meta + self.bitmap_off,
                &mut sl.bitmap_committed,
                (s + 1) * self.words * 8,
                self.live_off - self.bitmap_off,
                COMMIT_CHUNK,
            ) && (!cfg!(debug_assertions)
                || Self::commit_to(
                    self.meta + self.live_off,
                    &mut sl.live_committed,
                    (s + 1) * self.words * 8,
                    self.sheaf_off - self.live_off,
                    COMMIT_CHUNK,
                ));
            if !ok {
                return None;
            }
            sl.carved += 1;
            self.carved_pub.store(sl.carved, Ordering::Release);
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
            next: 0,
            prev: 0,
            hint: 0,
            stamp: 0,
            state: ACTIVE,
            list: NO_LIST,
            _pad: [0; 2],
        };
        self.link(sl, s, EMPTY);
        Some(s)
    }

    /// The slab to refill from: the fullest partial one, else an empty one,
    /// else a released or new one.
    fn refill_source(&self, sl: &mut Slabs) -> Option<usize> {
        for l in 0..=EMPTY as usize {
            if sl.heads[l] != 0 {
                return Some(sl.heads[l] as usize - 1);
            }
        }
        self.grow(sl)
    }

    /// Fills `objs[n..want]` from slabs (carving new ones as needed); returns
    /// the new count, below `want` only when the arena is exhausted.
    ///
    /// # Safety
    /// `objs` must have room for `want` pointers; the lock is held (`sl`).
    pub(crate) unsafe fn refill(
        &self,
        sl: &mut Slabs,
        objs: *mut *mut u8,
        mut n: usize,
        want: usize,
    ) -> usize {
        bump(&self.counters.refills, 1);
        while n < want {
            let Some(s) = self.refill_source(sl) else {
                break;
            };
            // SAFETY: forwarded; slabs on a list are carved.
            n = unsafe { self.take_from(s, objs, n, want) };
            self.relist(sl, s);
        }
        n
    }

    /// Takes free objects of slab `s` into `objs[n..want]` (lowest
    /// addresses first); returns the new count. Does not relist `s`.
    ///
    /// # Safety
    /// `s` is carved, `objs` has room for `want` pointers, the lock is held.
    unsafe fn take_from(&self, s: usize, objs: *mut *mut u8, mut n: usize, want: usize) -> usize {
        // SAFETY: forwarded to the caller.
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
        n
    }

    /// Returns one object to its slab.
    pub(crate) fn to_slab(&self, sl: &mut Slabs, p: *mut u8) {
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
        if m.free == 1 || m.free == self.objs_per_slab || self.thresholds.contains(&m.free) {
            self.relist(sl, s);
        }
    }

    /// Returns `count` objects of `objs` to their slabs.
    ///
    /// # Safety
    /// `objs[..count]` are free objects of this cache, held by the caller.
    pub(crate) unsafe fn objs_to_slabs(&self, sl: &mut Slabs, objs: *mut *mut u8, count: usize) {
        for i in 0..count {
            // SAFETY: i < count, forwarded.
            self.to_slab(sl, unsafe { *objs.add(i) });
        }
        bump(&self.counters.to_slabs, count as u64);
    }

    // ---- releasing -------------------------------------------------------

    /// The first step of a release (lock held): takes up to
    /// [`RELEASE_BATCH`] empty slabs off the empty list into `batch` (sorted)
    /// and marks them being released: those a decay pass saw empty at least
    /// `min_passes` passes ago, or every empty slab with `min_passes == 0`.
    /// Returns how many, and whether more were left.
    pub(crate) fn take_ripe(
        &self,
        sl: &mut Slabs,
        min_passes: u32,
        batch: &mut [u32; RELEASE_BATCH],
    ) -> (usize, bool) {
        let mut n = 0;
        let pass = sl.pass;
        let mut cur = sl.heads[EMPTY as usize];
        while cur != 0 {
            let s = cur as usize - 1;
            // SAFETY: listed slabs are carved; the lock is held.
            let m = unsafe { self.meta_of(s) };
            cur = m.next;
            let ripe =
                min_passes == 0 || (m.stamp != 0 && pass.wrapping_sub(m.stamp) >= min_passes);
            if !ripe {
                continue;
            }
            if n == RELEASE_BATCH {
                batch[..n].sort_unstable();
                return (n, true);
            }
            self.unlink(sl, s);
            // SAFETY: as above.
            unsafe { self.meta_of(s) }.state = RELEASING;
            sl.releasing += 1;
            batch[n] = s as u32;
            n += 1;
        }
        batch[..n].sort_unstable();
        (n, false)
    }

    /// The second step (no lock: the slabs are on no list): gives the pages
    /// of `batch` (sorted) back to the OS, one call per run of adjacent
    /// slabs; `ok[i]` tells whether slab `batch[i]`'s call succeeded.
    pub(crate) fn release_batch(&self, batch: &[u32], ok: &mut [bool; RELEASE_BATCH]) {
        let n = batch.len();
        let mut i = 0;
        while i < n {
            let mut j = i + 1;
            while j < n && batch[j] == batch[j - 1] + 1 {
                j += 1;
            }
            let addr = self.arena + ((batch[i] as usize) << self.slab_shift);
            let len = (j - i) * self.slab_bytes;
            bump(&self.counters.release_calls, 1);
            let good = sys::release(addr, len).is_ok();
            if !good {
                bump(&self.counters.release_errors, 1);
            }
            ok[i..j].fill(good);
            i = j;
        }
    }

    /// The last step (lock held): released slabs to the released list,
    /// failed ones back to the empty list. Returns (slabs, bytes) released.
    pub(crate) fn finish_release(
        &self,
        sl: &mut Slabs,
        batch: &[u32],
        ok: &[bool; RELEASE_BATCH],
    ) -> (usize, usize) {
        let mut released = 0;
        for (k, &s) in batch.iter().enumerate() {
            let s = s as usize;
            sl.releasing -= 1;
            // SAFETY: carved; the lock is held.
            unsafe { self.meta_of(s) }.state = if ok[k] { RELEASED } else { ACTIVE };
            if ok[k] {
                released += 1;
                self.link(sl, s, RELEASED_LIST);
            } else {
                self.link(sl, s, EMPTY);
            }
        }
        let bytes = released * self.slab_bytes;
        bump(&self.counters.slabs_released, released as u64);
        bump(&self.counters.bytes_released, bytes as u64);
        (released, bytes)
    }

    // ---- homes (line-private classes) --------------------------------------

    /// The slab named `home` ([`home_of`](crate::sheaf::home_of) of an
    /// address in it), if it is a home slab of this arena.
    fn home_slab(&self, sl: &Slabs, home: u32) -> Option<usize> {
        let base = (home as usize) << crate::sheaf::HOME_SHIFT;
        let off = base.wrapping_sub(self.arena);
        if off >= self.arena_len || self.slab_bytes != 1 << crate::sheaf::HOME_SHIFT {
            return None;
        }
        let s = off >> self.slab_shift;
        // SAFETY: checked below `carved`; the lock is held.
        (s < sl.carved as usize && unsafe { self.meta_of(s) }.state == HOME).then_some(s)
    }

    /// Gives up the home slab named `home` (if it still is one): back on the
    /// list its free count calls for, where any slot may refill from it.
    pub(crate) fn leave_home(&self, sl: &mut Slabs, home: u32) {
        if let Some(s) = self.home_slab(sl, home) {
            // SAFETY: a home slab is carved; the lock is held.
            unsafe { self.meta_of(s) }.state = ACTIVE;
            self.relist(sl, s);
        }
    }

    /// Fills `objs[n..want]` for a line-private class's slot whose home is
    /// `*home`: from the home slab first; when it runs dry, the slot gives
    /// it up and takes a new home (the fullest partial slab, else an empty,
    /// released or new one: off every list, so no other slot refills from
    /// it). Returns the new count, below `want` only when the arena is
    /// exhausted.
    ///
    /// # Safety
    /// `objs` must have room for `want` pointers; the lock is held (`sl`).
    pub(crate) unsafe fn refill_home(
        &self,
        sl: &mut Slabs,
        home: &mut u32,
        objs: *mut *mut u8,
        mut n: usize,
        want: usize,
    ) -> usize {
        bump(&self.counters.refills, 1);
        while n < want {
            let s = match self.home_slab(sl, *home) {
                // SAFETY: a home slab is carved; the lock is held.
                Some(s) if unsafe { self.meta_of(s) }.free > 0 => s,
                _ => {
                    self.leave_home(sl, *home);
                    *home = crate::sheaf::NO_HOME;
                    let Some(s) = self.refill_source(sl) else {
                        break;
                    };
                    self.unlink(sl, s);
                    // SAFETY: as above.
                    unsafe { self.meta_of(s) }.state = HOME;
                    *home = crate::sheaf::home_of((self.arena + (s << self.slab_shift)) as *mut u8);
                    s
                }
            };
            // SAFETY: forwarded; `s` is carved with free objects.
            n = unsafe { self.take_from(s, objs, n, want) };
        }
        n
    }

    /// A decay pass over the empty list: stamps the slabs not seen before.
    pub(crate) fn stamp_empty(&self, sl: &mut Slabs) {
        sl.pass = sl.pass.wrapping_add(1).max(1);
        let pass = sl.pass;
        let mut cur = sl.heads[EMPTY as usize];
        while cur != 0 {
            // SAFETY: listed slabs are carved; the lock is held.
            let m = unsafe { self.meta_of(cur as usize - 1) };
            if m.stamp == 0 {
                m.stamp = pass;
            }
            cur = m.next;
        }
    }

    // ---- accounting ------------------------------------------------------

    /// (active slabs, objects free in them, released slabs): a scan.
    pub(crate) fn slab_counts(&self, sl: &Slabs) -> (usize, usize, usize) {
        let mut active = 0;
        let mut free = 0;
        for s in 0..sl.carved as usize {
            // SAFETY: s < carved; the caller holds the lock.
            let m = unsafe { self.meta_of(s) };
            if m.state == ACTIVE || m.state == HOME {
                active += 1;
                free += m.free as usize;
            }
        }
        (active, free, sl.lens[RELEASED_LIST as usize])
    }

    /// Objects of active slabs not free in them.
    pub(crate) fn out_of_slabs(&self, sl: &Slabs) -> usize {
        let (active, free, _) = self.slab_counts(sl);
        active * self.objs_per_slab as usize - free
    }

    /// Partial slabs per fullness list (fullest first), then empty ones.
    pub(crate) fn list_lens(sl: &Slabs) -> [usize; NBUCKETS + 1] {
        let mut out = [0; NBUCKETS + 1];
        out.copy_from_slice(&sl.lens[..=NBUCKETS]);
        out
    }
}

#[cfg(test)]
mod tests {
    /// The divisibility test against `%`, for every size a class may have
    /// (multiples of 8 up to 64 KiB, and powers of two up to the largest)
    /// and every offset inside its slab.
    #[test]
    fn divides_agrees_with_remainder() {
        let sizes = (1..=8192)
            .map(|k| k * 8)
            .chain((3..=20).map(|k| 1usize << k));
        for size in sizes {
            let c = u64::MAX / size as u64 + 1;
            let slab = super::slab_bytes_for(size);
            let step = if slab > 1 << 16 { 7 } else { 1 };
            for off in (0..slab).step_by(step).chain([slab - 1, slab - size]) {
                assert_eq!(
                    super::divides(off, c),
                    off % size == 0,
                    "size {size}, off {off}"
                );
            }
        }
    }

    use super::*;
    use crate::geometry::{MAX_OBJECT_SIZE, MIN_OBJS_PER_SLAB, MIN_SLAB_BYTES};

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
            let core = SlabArena::new(size, arena, slab).unwrap();
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
                sys::unmap(arena, slab).unwrap();
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

    #[test]
    fn fullness_lists_order_slabs() {
        let size = 1024;
        let slab = slab_bytes_for(size);
        let arena = sys::reserve(slab * 8, slab).unwrap();
        let core = SlabArena::new(size, arena, slab * 8).unwrap();
        let per = core.objs_per_slab as usize;
        assert_eq!(per, 64);
        {
            let mut slabs = Slabs::new();
            let sl = &mut slabs;
            // Two slabs wholly allocated.
            let mut a = vec![std::ptr::null_mut(); per * 2];
            // SAFETY: room for 2 * per pointers; the lock is held.
            let n = unsafe { core.refill(sl, a.as_mut_ptr(), 0, per * 2) };
            assert_eq!(n, per * 2);
            assert_eq!(sl.carved, 2);
            // Free most of slab 0 and a few of slab 1: slab 1 is fuller.
            let (s0, s1): (Vec<_>, Vec<_>) = a.iter().partition(|&&p| (p as usize) < arena + slab);
            for &p in &s0[..per - 4] {
                core.to_slab(sl, p);
            }
            for &p in &s1[..4] {
                core.to_slab(sl, p);
            }
            let lens = SlabArena::list_lens(sl);
            assert_eq!(lens[0], 1, "slab 1 (4 free) on the fullest list: {lens:?}");
            assert_eq!(lens[NBUCKETS - 1], 1, "slab 0 (60 free): {lens:?}");
            // Refill takes from the fullest slab first: slab 1.
            let mut b = [std::ptr::null_mut(); 4];
            // SAFETY: room for 4; the lock is held.
            assert_eq!(unsafe { core.refill(sl, b.as_mut_ptr(), 0, 4) }, 4);
            for p in b {
                assert!(
                    p as usize >= arena + slab,
                    "refill took from the emptier slab"
                );
            }
        }
        // SAFETY: nothing of this core is used afterwards.
        unsafe {
            core.unmap_meta();
            sys::unmap(arena, slab * 8).unwrap();
        }
    }
}
