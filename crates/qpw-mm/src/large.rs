//! Large allocations (above the biggest size class, or aligned beyond it):
//! mapped directly, one mapping each, with a header in the page before the
//! object (the kernel hands such `kmalloc`s to the page allocator).

use crate::error::FreeError;
use crate::sys::{self, round_up};
use std::sync::atomic::{AtomicU64, Ordering};

const MAGIC: usize = 0x7170_776d_6d4c_7267; // "qpwmmLrg"

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
    pub(crate) live_bytes: AtomicU64,
}

impl LargeStats {
    pub(crate) fn live(&self) -> u64 {
        self.allocs
            .load(Ordering::Relaxed)
            .saturating_sub(self.frees.load(Ordering::Relaxed))
    }
}

/// Maps `size` bytes aligned to `align`; the memory is zeroed. Null on failure.
pub(crate) fn alloc(size: usize, align: usize, stats: &LargeStats) -> *mut u8 {
    let page = sys::page_size();
    let align = align.max(page);
    let Some(body) = size.max(1).checked_add(page - 1).map(|s| s & !(page - 1)) else {
        return std::ptr::null_mut();
    };
    let Some(len) = body
        .checked_add(page)
        .and_then(|l| l.checked_add(align - page))
    else {
        return std::ptr::null_mut();
    };
    let Ok(base) = sys::map(len) else {
        return std::ptr::null_mut();
    };
    let p = round_up(base + page, align);
    let map_base = p - page;
    let map_len = body + page;
    // SAFETY: both trimmed ranges are parts of the mapping just made, unused.
    unsafe {
        sys::unmap(base, map_base - base);
        sys::unmap(map_base + map_len, base + len - (map_base + map_len));
    }
    // SAFETY: the header page is mapped, writable and ours.
    unsafe {
        (map_base as *mut Header).write(Header {
            magic: MAGIC ^ p,
            map_base,
            map_len,
        })
    };
    stats.allocs.fetch_add(1, Ordering::Relaxed);
    stats
        .live_bytes
        .fetch_add(map_len as u64, Ordering::Relaxed);
    p as *mut u8
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

/// Unmaps a large object.
///
/// # Safety
/// `p` must be a live large object of this module, not used afterwards.
/// Debug builds detect a pointer whose header page is unmapped or does not
/// match (a double free, or a foreign pointer) and return the error.
pub(crate) unsafe fn free(p: *mut u8, stats: &LargeStats) -> Result<(), FreeError> {
    // SAFETY: forwarded to the caller.
    let h = unsafe { header(p as usize) }?;
    // SAFETY: `h` is the valid header of a live large object.
    let (base, len) = unsafe { ((*h).map_base, (*h).map_len) };
    // SAFETY: the object is given up; its whole mapping goes.
    unsafe { sys::unmap(base, len) };
    stats.frees.fetch_add(1, Ordering::Relaxed);
    stats.live_bytes.fetch_sub(len as u64, Ordering::Relaxed);
    Ok(())
}

/// Usable bytes of a large object.
///
/// # Safety
/// As [`free`], without giving the object up.
pub(crate) unsafe fn usable_size(p: *mut u8) -> Result<usize, FreeError> {
    // SAFETY: forwarded to the caller.
    let h = unsafe { header(p as usize) }?;
    // SAFETY: a valid header.
    Ok(unsafe { (*h).map_len } - sys::page_size())
}

/// Resizes a page-aligned large object in place or by moving its mapping
/// (`mremap`): no copy. Null if the OS refuses (the object is then unchanged).
///
/// # Safety
/// `p` must be a live large object with alignment at most the page size.
pub(crate) unsafe fn realloc(p: *mut u8, new_size: usize, stats: &LargeStats) -> *mut u8 {
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
        stats
            .live_bytes
            .fetch_add((new_len - len) as u64, Ordering::Relaxed);
    } else {
        stats
            .live_bytes
            .fetch_sub((len - new_len) as u64, Ordering::Relaxed);
    }
    np as *mut u8
}
