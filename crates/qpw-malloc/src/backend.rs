//! The one allocator behind every entry point, and the C-to-`Layout` bridge:
//! C calls carry no layout on `free`/`realloc`, so the size comes from the
//! allocator's own lookup ([`QpwAlloc::usable_size`]), never from a header
//! of ours. Every function here returns null for "no memory" and leaves
//! `errno` to the entry points.

use qpw_mm::QpwAlloc;
use std::alloc::{GlobalAlloc, Layout};

/// The allocator: every C entry point and this library's own Rust code (it
/// is the global allocator here too, so Rust's `std` inside the library
/// never goes through the exported `malloc` symbol and back).
#[global_allocator]
pub(crate) static ALLOC: QpwAlloc = QpwAlloc::new();

/// glibc's `MALLOC_ALIGNMENT` on 64-bit targets (`max_align_t`).
pub(crate) const MALLOC_ALIGNMENT: usize = 16;

/// The alignment `malloc(size)` promises: `max_align_t`, except that an
/// object of at most 8 bytes can hold no type that needs more than 8 (as
/// jemalloc, mimalloc and tcmalloc do), which keeps the 8-byte class.
#[inline(always)]
pub(crate) const fn align_for(size: usize) -> usize {
    if size <= 8 {
        8
    } else {
        MALLOC_ALIGNMENT
    }
}

/// The layout for `size` bytes at `align` (a power of two), or `None` when
/// it cannot exist (the rounded size passes `isize::MAX`). A zero size is
/// served as one byte: every `malloc(0)` is a distinct, freeable pointer.
#[inline(always)]
fn layout(size: usize, align: usize) -> Option<Layout> {
    Layout::from_size_align(size.max(1), align).ok()
}

/// `size` bytes aligned to `align` (a power of two); null if out of memory.
#[inline(always)]
pub(crate) fn alloc(size: usize, align: usize) -> *mut u8 {
    match layout(size, align) {
        // SAFETY: a valid, non-zero layout.
        Some(l) => unsafe { ALLOC.alloc(l) },
        None => std::ptr::null_mut(),
    }
}

/// As [`alloc`], zeroed (recycled objects are cleared; fresh mappings,
/// already zero, are not touched again: `GlobalAlloc::alloc_zeroed` of
/// `QpwAlloc` knows which is which).
#[inline]
pub(crate) fn alloc_zeroed(size: usize, align: usize) -> *mut u8 {
    match layout(size, align) {
        // SAFETY: a valid, non-zero layout.
        Some(l) => unsafe { ALLOC.alloc_zeroed(l) },
        None => std::ptr::null_mut(),
    }
}

/// The usable size of a live allocation (0 for null).
///
/// # Safety
/// `p` is null or live, from [`ALLOC`].
#[inline]
pub(crate) unsafe fn usable_size(p: *mut u8) -> usize {
    // SAFETY: forwarded to the caller; a foreign pointer aborts there.
    unsafe { ALLOC.usable_size(p) }
}

/// The layout a live object `p` fits: its usable size (what the allocator
/// itself reports) at byte alignment. `QpwAlloc` finds an object's class or
/// mapping from its address alone; passing the usable size keeps this
/// correct even if it ever routes frees by size.
///
/// # Safety
/// `p` is live, from [`ALLOC`].
#[inline(always)]
unsafe fn layout_of(p: *mut u8) -> Layout {
    // SAFETY: forwarded to the caller.
    let n = unsafe { usable_size(p) };
    // SAFETY: a usable size of a live object fits in isize; align 1 is valid.
    unsafe { Layout::from_size_align_unchecked(n, 1) }
}

/// Frees `p` (non-null).
///
/// # Safety
/// `p` is live, from [`ALLOC`], and not used afterwards. A double free or a
/// foreign pointer that the allocator detects aborts the process with a
/// message (debug builds detect more).
#[inline]
pub(crate) unsafe fn free(p: *mut u8) {
    // SAFETY: forwarded to the caller.
    unsafe { ALLOC.dealloc(p, layout_of(p)) }
}

/// Resizes `p` (non-null) to `new_size` (non-zero) bytes aligned as
/// `malloc(new_size)` is. Null when out of memory, and then `p` is
/// untouched and still allocated.
///
/// # Safety
/// `p` is live, from [`ALLOC`]; on success it must not be used again.
#[inline]
pub(crate) unsafe fn realloc(p: *mut u8, new_size: usize) -> *mut u8 {
    let align = align_for(new_size);
    if layout(new_size, align).is_none() {
        return std::ptr::null_mut();
    }
    // SAFETY: `p` is live from ALLOC (the caller); its usable size is a
    // layout it fits. QpwAlloc's realloc gives the new object `align`, the
    // old layout's alignment; `new_size` rounded up to it fits in isize
    // (checked above).
    unsafe {
        let n = usable_size(p);
        ALLOC.realloc(p, Layout::from_size_align_unchecked(n, align), new_size)
    }
}
