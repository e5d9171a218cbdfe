//! The one allocator behind every entry point, and the C-to-`Layout` bridge:
//! C calls carry no layout on `free`/`realloc`, and the allocator needs
//! none (it finds an object's class or mapping from its address), so they
//! go to its checked calls (`QpwAlloc::free_checked`, `realloc_checked`),
//! whose detected misuses abort here with a message naming the C call.
//! Every function here returns null for "no memory" and leaves `errno` to
//! the entry points.

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

/// The name this library's abort messages start with.
const WHO: &str = "qpw-malloc";

/// The usable size of a live allocation (0 for null). A pointer the
/// allocator finds wrong aborts with a message naming `malloc_usable_size`.
///
/// # Safety
/// `p` is null or live, from [`ALLOC`].
#[inline]
pub(crate) unsafe fn usable_size(p: *mut u8) -> usize {
    // SAFETY: forwarded to the caller.
    match unsafe { ALLOC.usable_size_checked(p) } {
        Ok(n) => n,
        Err(e) => e.abort(WHO, "malloc_usable_size"),
    }
}

/// Frees `p` (non-null) for the C call `call` (`free`, `realloc`). The
/// allocator needs no size to free (an object's class comes from its
/// address, a large block's mapping from its header), so nothing is looked
/// up first. A misuse the free path detects (a pointer inside an object
/// or not from here, a double free it can see: see
/// `QpwAlloc::free_checked`) aborts with glibc's kind of message:
/// `qpw-malloc: free(): double free detected: 0x...`.
///
/// # Safety
/// `p` is live, from [`ALLOC`], and not used afterwards.
#[inline(always)]
pub(crate) unsafe fn free(p: *mut u8, call: &str) {
    // SAFETY: forwarded to the caller.
    if let Err(e) = unsafe { ALLOC.free_checked(p) } {
        e.abort(WHO, call);
    }
}

/// Resizes `p` (non-null) to `new_size` (non-zero) bytes aligned as
/// `malloc(new_size)` is. Null when out of memory, and then `p` is
/// untouched and still allocated. A misuse aborts as [`free`]'s, naming
/// `realloc`, before anything is read or moved.
///
/// # Safety
/// `p` is live, from [`ALLOC`]; on success it must not be used again.
#[inline]
pub(crate) unsafe fn realloc(p: *mut u8, new_size: usize) -> *mut u8 {
    let align = align_for(new_size);
    if layout(new_size, align).is_none() {
        return std::ptr::null_mut();
    }
    // SAFETY: `p` is live from ALLOC (the caller); `new_size` rounded up to
    // `align` fits in isize (checked above).
    match unsafe { ALLOC.realloc_checked(p, align, new_size) } {
        Ok(np) => np,
        Err(e) => e.abort(WHO, "realloc"),
    }
}
