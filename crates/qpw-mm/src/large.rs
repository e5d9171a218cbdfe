//! Large allocations (above the biggest size class, or aligned beyond it):
//! one mapping each, with a header in the page before the object (the
//! kernel hands such `kmalloc`s to the page allocator), and a cache of freed
//! mappings in front of `mmap`/`munmap`.
//!
//! # The mapping cache
//!
//! A freed mapping is kept (pages and all) in a small table keyed by length
//! (page granularity) instead of being unmapped, and an allocation takes the
//! best-fitting cached mapping no more than 25% longer than it needs. So a
//! program that keeps allocating and freeing buffers of similar sizes makes
//! no system call in the steady state: no `munmap`, hence no TLB shootdown
//! of the other CPUs. Only the decay ([`Large::decay`], run by the decay
//! thread) unmaps cached mappings, in one batch, once they have been unused
//! for the decay delay; [`Large::shrink`] unmaps them all. A full table
//! (more than [`CACHE_ENTRIES`] mappings or [`CACHE_MAX_BYTES`]) makes a free
//! unmap directly, and so does a mapping longer than [`CACHE_MAX_MAPPING`]
//! (4 MiB: its `munmap` is cheap beside writing it, and cached it would stay
//! resident beside its successor until the decay).
//!
//! Every `munmap` failure is counted ([`LargeStats::unmap_errors`]) and the
//! bytes stay counted as mapped: never reported freed when they were not.

use crate::error::FreeError;
use crate::lock::Lock;
use crate::sys::{self, round_up};
use std::sync::atomic::{AtomicU64, Ordering};

const MAGIC: usize = 0x7170_776d_6d4c_7267; // "qpwmmLrg"

/// Mappings the cache keeps at most.
pub(crate) const CACHE_ENTRIES: usize = 64;
/// Bytes the cache keeps at most.
pub(crate) const CACHE_MAX_BYTES: usize = 64 << 20;
/// The longest mapping the cache keeps: a longer one is unmapped when
/// freed. Its `munmap` is paid once per at least this many bytes the
/// program wrote, and a cached one would stay resident beside its
/// successor (a growing document, a big temporary) until the decay.
pub(crate) const CACHE_MAX_MAPPING: usize = 4 << 20;

/// The header in the page before a large object.
#[repr(C)]
struct Header {
    /// `MAGIC ^ object address`: a stale or foreign header does not match.
    magic: usize,
    map_base: usize,
    map_len: usize,
}

/// Counters of large allocations.
#[derive(Default)]
pub(crate) struct LargeStats {
    pub(crate) allocs: AtomicU64,
    pub(crate) frees: AtomicU64,
    /// Bytes of live large objects' mappings.
    pub(crate) live_bytes: AtomicU64,
    /// `mmap` calls made.
    pub(crate) maps: AtomicU64,
    /// `munmap` calls made (successful), on free or by the decay.
    pub(crate) unmaps: AtomicU64,
    /// Allocations served from the cache.
    pub(crate) cache_hits: AtomicU64,
    /// Bytes of cached mappings now.
    pub(crate) cached_bytes: AtomicU64,
    /// Frees that found the cache full and unmapped at once.
    pub(crate) cache_full: AtomicU64,
    /// Frees of mappings longer than [`CACHE_MAX_MAPPING`], unmapped at once.
    pub(crate) too_long: AtomicU64,
    /// `munmap` calls that failed (the bytes stay counted as mapped).
    pub(crate) unmap_errors: AtomicU64,
    /// Bytes that could not be unmapped.
    pub(crate) unmap_error_bytes: AtomicU64,
}

impl LargeStats {
    pub(crate) fn live(&self) -> u64 {
        self.allocs
            .load(Ordering::Relaxed)
            .saturating_sub(self.frees.load(Ordering::Relaxed))
    }
}

#[derive(Clone, Copy)]
struct Entry {
    base: usize,
    len: usize,
    /// Decay pass that first saw it cached (0: none yet).
    since: u64,
}

struct Cache {
    entries: [Entry; CACHE_ENTRIES],
    n: usize,
    bytes: usize,
}

/// Large allocations of one instance: the mapping cache and the counters.
pub(crate) struct Large {
    cache: Lock<Cache>,
    pub(crate) stats: LargeStats,
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl Large {
    pub(crate) const fn new() -> Self {
        Self {
            cache: Lock::new(Cache {
                entries: [Entry {
                    base: 0,
                    len: 0,
                    since: 0,
                }; CACHE_ENTRIES],
                n: 0,
                bytes: 0,
            }),
            stats: LargeStats {
                allocs: AtomicU64::new(0),
                frees: AtomicU64::new(0),
                live_bytes: AtomicU64::new(0),
                maps: AtomicU64::new(0),
                unmaps: AtomicU64::new(0),
                cache_hits: AtomicU64::new(0),
                cached_bytes: AtomicU64::new(0),
                cache_full: AtomicU64::new(0),
                too_long: AtomicU64::new(0),
                unmap_errors: AtomicU64::new(0),
                unmap_error_bytes: AtomicU64::new(0),
            },
        }
    }

    /// Unmaps a range, counting a failure (and its bytes, still mapped).
    ///
    /// # Safety
    /// As [`sys::unmap`].
    unsafe fn unmap(&self, base: usize, len: usize) {
        // SAFETY: forwarded to the caller.
        match unsafe { sys::unmap(base, len) } {
            Ok(()) => bump(&self.stats.unmaps, 1),
            Err(_) => {
                bump(&self.stats.unmap_errors, 1);
                bump(&self.stats.unmap_error_bytes, len as u64);
            }
        }
    }

    /// A cached mapping of between `len` and `len * 1.25` bytes whose object
    /// address (one page in) is aligned to `align`.
    fn take_cached(&self, len: usize, align: usize) -> Option<(usize, usize)> {
        let page = sys::page_size();
        let mut c = self.cache.lock();
        let mut best: Option<usize> = None;
        for i in 0..c.n {
            let e = c.entries[i];
            if e.len >= len
                && e.len - len <= len / 4
                && (e.base + page) % align == 0
                && best.is_none_or(|b| c.entries[b].len > e.len)
            {
                best = Some(i);
            }
        }
        let i = best?;
        let e = c.entries[i];
        c.n -= 1;
        let last = c.n;
        c.entries[i] = c.entries[last];
        c.bytes -= e.len;
        drop(c);
        self.stats
            .cached_bytes
            .fetch_sub(e.len as u64, Ordering::Relaxed);
        bump(&self.stats.cache_hits, 1);
        Some((e.base, e.len))
    }

    /// `size` bytes aligned to `align`, zeroed if `zero` (fresh mappings are
    /// zero already; cached ones are cleared). Null on failure.
    pub(crate) fn alloc(&self, size: usize, align: usize, zero: bool) -> *mut u8 {
        let page = sys::page_size();
        let align = align.max(page);
        let Some(body) = size.max(1).checked_add(page - 1).map(|s| s & !(page - 1)) else {
            return std::ptr::null_mut();
        };
        let Some(need) = body.checked_add(page) else {
            return std::ptr::null_mut();
        };
        let (map_base, map_len, fresh) = match self.take_cached(need, align) {
            Some((b, l)) => (b, l, false),
            None => match self.map_fresh(need, align) {
                Some((b, l)) => (b, l, true),
                None => return std::ptr::null_mut(),
            },
        };
        let p = map_base + page;
        // SAFETY: the header page is mapped, writable and ours.
        unsafe {
            (map_base as *mut Header).write(Header {
                magic: MAGIC ^ p,
                map_base,
                map_len,
            })
        };
        if zero && !fresh {
            // SAFETY: the object's `size` bytes are mapped and ours.
            unsafe { std::ptr::write_bytes(p as *mut u8, 0, size) };
        }
        bump(&self.stats.allocs, 1);
        bump(&self.stats.live_bytes, map_len as u64);
        p as *mut u8
    }

    /// A new mapping of `len` bytes whose second page is aligned to `align`.
    fn map_fresh(&self, len: usize, align: usize) -> Option<(usize, usize)> {
        let page = sys::page_size();
        let total = len.checked_add(align - page)?;
        let base = sys::map(total).ok()?;
        bump(&self.stats.maps, 1);
        let map_base = round_up(base + page, align) - page;
        // SAFETY: both trimmed ranges are parts of the mapping just made,
        // unused (empty when `align` is the page size).
        unsafe {
            self.unmap(base, map_base - base);
            self.unmap(map_base + len, base + total - (map_base + len));
        }
        Some((map_base, len))
    }

    /// Frees a large object: its mapping goes to the cache, or is unmapped
    /// when the cache is full or the mapping longer than it keeps.
    ///
    /// # Safety
    /// `p` must be a live large object of this instance, not used
    /// afterwards. Debug builds detect a pointer whose header page is
    /// unmapped or does not match (a double free, or a foreign pointer) and
    /// return the error.
    pub(crate) unsafe fn free(&self, p: *mut u8) -> Result<(), FreeError> {
        // SAFETY: forwarded to the caller.
        let h = unsafe { header(p as usize) }?;
        // SAFETY: `h` is the valid header of a live large object; clearing
        // its magic makes a second free of it fail the check.
        let (base, len) = unsafe {
            (*h).magic = 0;
            ((*h).map_base, (*h).map_len)
        };
        bump(&self.stats.frees, 1);
        self.stats
            .live_bytes
            .fetch_sub(len as u64, Ordering::Relaxed);
        if len > CACHE_MAX_MAPPING {
            bump(&self.stats.too_long, 1);
            // SAFETY: the object is given up; its whole mapping goes.
            unsafe { self.unmap(base, len) };
            return Ok(());
        }
        let mut c = self.cache.lock();
        if c.n < CACHE_ENTRIES && c.bytes + len <= CACHE_MAX_BYTES {
            let n = c.n;
            c.entries[n] = Entry {
                base,
                len,
                since: 0,
            };
            c.n += 1;
            c.bytes += len;
            drop(c);
            bump(&self.stats.cached_bytes, len as u64);
            return Ok(());
        }
        drop(c);
        bump(&self.stats.cache_full, 1);
        // SAFETY: the object is given up; its whole mapping goes.
        unsafe { self.unmap(base, len) };
        Ok(())
    }

    /// A decay pass (number `pass`, from 1): stamps the cached mappings not
    /// seen before, and unmaps those stamped at least `min_passes` passes
    /// ago (all of them with `min_passes == 0`), in one batch outside the
    /// lock. Returns the bytes unmapped.
    pub(crate) fn decay(&self, pass: u64, min_passes: u64) -> usize {
        let mut batch = [Entry {
            base: 0,
            len: 0,
            since: 0,
        }; CACHE_ENTRIES];
        let mut n = 0;
        {
            let mut c = self.cache.lock();
            let mut i = 0;
            while i < c.n {
                let e = c.entries[i];
                if e.since == 0 && min_passes > 0 {
                    c.entries[i].since = pass;
                    i += 1;
                } else if min_passes == 0 || pass.saturating_sub(e.since) >= min_passes {
                    batch[n] = e;
                    n += 1;
                    c.n -= 1;
                    let last = c.n;
                    c.entries[i] = c.entries[last];
                    c.bytes -= e.len;
                } else {
                    i += 1;
                }
            }
        }
        let mut bytes = 0;
        for e in &batch[..n] {
            self.stats
                .cached_bytes
                .fetch_sub(e.len as u64, Ordering::Relaxed);
            // SAFETY: a cached mapping is ours alone, used by nothing.
            unsafe { self.unmap(e.base, e.len) };
            bytes += e.len;
        }
        bytes
    }

    /// Unmaps every cached mapping.
    pub(crate) fn shrink(&self) -> usize {
        self.decay(u64::MAX, 0)
    }

    /// The fork hook's `prepare`: holds the cache's lock across `fork`.
    pub(crate) fn lock_for_fork(&self) {
        self.cache.lock_raw();
    }

    /// The fork hook's `parent`/`child`.
    ///
    /// # Safety
    /// After [`lock_for_fork`](Self::lock_for_fork), by the forking thread.
    pub(crate) unsafe fn unlock_after_fork(&self) {
        // SAFETY: forwarded to the caller.
        unsafe { self.cache.unlock_raw() };
    }
}

/// The header of a large object, checked.
///
/// # Safety
/// Unless debug checks are on, `p` must be a live large object of this
/// module (its header page is then mapped).
unsafe fn header(p: usize) -> Result<*mut Header, FreeError> {
    let page = sys::page_size();
    if p % page != 0 || p < page {
        return Err(FreeError::Foreign { ptr: p });
    }
    if cfg!(debug_assertions) && !sys::is_mapped(p - page) {
        return Err(FreeError::NotLive { ptr: p });
    }
    let h = (p - page) as *mut Header;
    // SAFETY: the header page is mapped (checked in debug builds, promised
    // by the caller otherwise).
    if unsafe { (*h).magic } != MAGIC ^ p {
        return Err(FreeError::NotLive { ptr: p });
    }
    Ok(h)
}

/// Usable bytes of a large object.
///
/// # Safety
/// As [`Large::free`], without giving the object up.
pub(crate) unsafe fn usable_size(p: *mut u8) -> Result<usize, FreeError> {
    // SAFETY: forwarded to the caller.
    let h = unsafe { header(p as usize) }?;
    // SAFETY: a valid header.
    Ok(unsafe { (*h).map_len } - sys::page_size())
}

impl Large {
    /// Resizes a page-aligned large object: kept if it still fits its
    /// mapping with at most 25% to spare, else moved with its mapping
    /// (`mremap`): no copy. Null if the OS refuses (the object is then
    /// unchanged).
    ///
    /// # Safety
    /// `p` must be a live large object with alignment at most the page size.
    pub(crate) unsafe fn realloc(&self, p: *mut u8, new_size: usize) -> *mut u8 {
        let page = sys::page_size();
        // SAFETY: forwarded to the caller.
        let Ok(h) = (unsafe { header(p as usize) }) else {
            return std::ptr::null_mut();
        };
        // SAFETY: a valid header.
        let (base, len) = unsafe { ((*h).map_base, (*h).map_len) };
        debug_assert_eq!(
            base + page,
            p as usize,
            "large realloc needs page alignment"
        );
        let Some(new_len) = new_size
            .max(1)
            .checked_add(2 * page - 1)
            .map(|s| s & !(page - 1))
        else {
            return std::ptr::null_mut();
        };
        if new_len <= len && len - new_len <= new_len / 4 {
            return p;
        }
        // SAFETY: [base, base + len) is the whole mapping of a live object.
        let Ok(nb) = (unsafe { sys::remap(base, len, new_len) }) else {
            return std::ptr::null_mut();
        };
        let np = nb + page;
        // SAFETY: the header moved with the mapping and is ours.
        unsafe {
            (nb as *mut Header).write(Header {
                magic: MAGIC ^ np,
                map_base: nb,
                map_len: new_len,
            })
        };
        if new_len >= len {
            bump(&self.stats.live_bytes, (new_len - len) as u64);
        } else {
            self.stats
                .live_bytes
                .fetch_sub((len - new_len) as u64, Ordering::Relaxed);
        }
        np as *mut u8
    }
}
