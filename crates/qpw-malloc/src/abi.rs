//! The exported C entry points: the malloc family with glibc's semantics
//! where C leaves a choice, `errno` set to `ENOMEM` on every allocation
//! failure (`EINVAL` for a bad alignment), and the library's constructor and
//! destructor.
//!
//! Every entry point is an `extern "C"` function: a panic cannot unwind out
//! of one (since Rust 1.81 it aborts the process), and the allocator itself
//! never panics on these paths: its internal errors (a detected double free
//! or foreign pointer) print a message and abort.
//!
//! Nothing here takes a lock of its own, so `fork` needs nothing from this
//! crate: the allocator's own locks are qpw-mm's to handle.

use crate::backend::{self, align_for, MALLOC_ALIGNMENT};
use crate::sys::{self, EINVAL, ENOMEM};
use crate::{options, report};
use libc::{c_int, c_void, size_t};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

/// Null and `errno = ENOMEM` when `p` is null.
#[inline(always)]
fn or_enomem(p: *mut u8) -> *mut c_void {
    if p.is_null() {
        sys::set_errno(ENOMEM);
    }
    p.cast()
}

/// `malloc(size)`: at least `size` bytes aligned to 16 (8 for at most 8
/// bytes); `malloc(0)` returns a distinct pointer. Null and `ENOMEM` when
/// out of memory.
#[no_mangle]
pub extern "C" fn malloc(size: size_t) -> *mut c_void {
    or_enomem(backend::alloc(size, align_for(size)))
}

/// `free(p)`: null is ignored.
///
/// # Safety
/// `p` is null or a live pointer from this allocator, not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn free(p: *mut c_void) {
    if !p.is_null() {
        // SAFETY: forwarded to the caller.
        unsafe { backend::free(p.cast(), "free") }
    }
}

/// `cfree(p)`: glibc's old synonym of [`free`], still called by a few programs.
///
/// # Safety
/// As [`free`].
#[no_mangle]
pub unsafe extern "C" fn cfree(p: *mut c_void) {
    // SAFETY: forwarded.
    unsafe { free(p) }
}

/// `calloc(n, size)`: `n * size` zeroed bytes. Null and `ENOMEM` when the
/// product overflows or memory runs out.
#[no_mangle]
pub extern "C" fn calloc(n: size_t, size: size_t) -> *mut c_void {
    match n.checked_mul(size) {
        Some(total) => or_enomem(backend::alloc_zeroed(total, align_for(total))),
        None => or_enomem(std::ptr::null_mut()),
    }
}

/// `realloc(p, size)`, as glibc: `realloc(NULL, n)` is `malloc(n)`;
/// `realloc(p, 0)` frees `p` and returns null; otherwise the contents up to
/// the smaller size are kept (in place when the size class does not change).
/// On failure: null, `ENOMEM`, and `p` untouched and still allocated.
///
/// # Safety
/// `p` is null or a live pointer from this allocator; after a non-null
/// result (or a zero size) it must not be used again.
#[no_mangle]
pub unsafe extern "C" fn realloc(p: *mut c_void, size: size_t) -> *mut c_void {
    if p.is_null() {
        return malloc(size);
    }
    if size == 0 {
        // SAFETY: forwarded to the caller.
        unsafe { backend::free(p.cast(), "realloc") };
        return std::ptr::null_mut();
    }
    // SAFETY: forwarded to the caller.
    or_enomem(unsafe { backend::realloc(p.cast(), size) })
}

/// `reallocarray(p, n, size)`: [`realloc`] to `n * size` bytes, or null and
/// `ENOMEM` (with `p` untouched) when the product overflows.
///
/// # Safety
/// As [`realloc`].
#[no_mangle]
pub unsafe extern "C" fn reallocarray(p: *mut c_void, n: size_t, size: size_t) -> *mut c_void {
    match n.checked_mul(size) {
        // SAFETY: forwarded.
        Some(total) => unsafe { realloc(p, total) },
        None => or_enomem(std::ptr::null_mut()),
    }
}

/// `posix_memalign(out, align, size)`: 0 and `*out` set, `EINVAL` when
/// `align` is not a power of two multiple of `sizeof(void *)`, `ENOMEM`
/// when out of memory; `*out` is written only on success and `errno` is
/// never changed (the error is the return value).
///
/// # Safety
/// `out` is valid for a pointer write.
#[no_mangle]
pub unsafe extern "C" fn posix_memalign(
    out: *mut *mut c_void,
    align: size_t,
    size: size_t,
) -> c_int {
    if !align.is_power_of_two() || align % std::mem::size_of::<*mut c_void>() != 0 {
        return EINVAL;
    }
    let saved = sys::errno();
    let p = backend::alloc(size, align.max(align_for(size)));
    sys::set_errno(saved);
    if p.is_null() {
        return ENOMEM;
    }
    // SAFETY: `out` is valid for writes (the caller).
    unsafe { out.write(p.cast()) };
    0
}

/// `aligned_alloc(align, size)` (C11), as glibc 2.38 and later: null and
/// `EINVAL` unless `align` is a power of two; any size is accepted (C17
/// dropped the multiple-of-alignment rule). Null and `ENOMEM` when out of
/// memory.
#[no_mangle]
pub extern "C" fn aligned_alloc(align: size_t, size: size_t) -> *mut c_void {
    if !align.is_power_of_two() {
        sys::set_errno(EINVAL);
        return std::ptr::null_mut();
    }
    or_enomem(backend::alloc(size, align.max(align_for(size))))
}

/// `memalign(align, size)`, as glibc: an alignment up to 16 is `malloc`'s;
/// one that is not a power of two is rounded up to the next; one above
/// `SIZE_MAX / 2 + 1` gives null and `EINVAL`. Null and `ENOMEM` when out of
/// memory.
#[no_mangle]
pub extern "C" fn memalign(align: size_t, size: size_t) -> *mut c_void {
    let align = if align <= MALLOC_ALIGNMENT {
        if align > 8 {
            MALLOC_ALIGNMENT
        } else {
            align_for(size)
        }
    } else if align > usize::MAX / 2 + 1 {
        sys::set_errno(EINVAL);
        return std::ptr::null_mut();
    } else {
        align.next_power_of_two()
    };
    or_enomem(backend::alloc(size, align))
}

/// `valloc(size)`: [`memalign`] to the page size.
#[no_mangle]
pub extern "C" fn valloc(size: size_t) -> *mut c_void {
    memalign(sys::page_size(), size)
}

/// `pvalloc(size)`: page-aligned, with the size rounded up to whole pages
/// (at least one). Null and `ENOMEM` when the rounding overflows.
#[no_mangle]
pub extern "C" fn pvalloc(size: size_t) -> *mut c_void {
    let page = sys::page_size();
    match size.checked_add(page - 1) {
        Some(s) => memalign(page, (s & !(page - 1)).max(page)),
        None => or_enomem(std::ptr::null_mut()),
    }
}

/// `malloc_usable_size(p)`: the bytes of `p` that may be used (at least
/// what was asked for); 0 for null.
///
/// # Safety
/// `p` is null or a live pointer from this allocator.
#[no_mangle]
pub unsafe extern "C" fn malloc_usable_size(p: *mut c_void) -> size_t {
    // SAFETY: forwarded to the caller.
    unsafe { backend::usable_size(p.cast()) }
}

/// `malloc_trim(pad)`: drains every thread's cached objects and returns
/// wholly free memory to the OS (`QpwAlloc::shrink`). 1 if any memory was
/// returned, else 0. `pad` is ignored (there is no heap top to keep).
#[no_mangle]
pub extern "C" fn malloc_trim(_pad: size_t) -> c_int {
    match backend::ALLOC.shrink() {
        Ok(r) => c_int::from(r.bytes_released > 0),
        Err(_) => 0,
    }
}

/// glibc's `mallopt` parameters (`<malloc.h>`).
mod m {
    pub(super) const MXFAST: i32 = 1;
    pub(super) const TRIM_THRESHOLD: i32 = -1;
    pub(super) const TOP_PAD: i32 = -2;
    pub(super) const MMAP_THRESHOLD: i32 = -3;
    pub(super) const MMAP_MAX: i32 = -4;
    pub(super) const PERTURB: i32 = -6;
    pub(super) const ARENA_TEST: i32 = -7;
    pub(super) const ARENA_MAX: i32 = -8;
}

/// `mallopt(param, value)`: 1 ("accepted") for glibc's tuning parameters,
/// which qpw-malloc has no use for (it has no fastbins, heap top, `mmap`
/// threshold or arenas: its classes and per-thread slots play those parts)
/// and `M_PERTURB` with 0 (no perturbation, as here); 0 ("error") for
/// behaviours it does not provide (`M_PERTURB` with a byte, `M_CHECK_ACTION`)
/// and unknown parameters.
#[no_mangle]
pub extern "C" fn mallopt(param: c_int, value: c_int) -> c_int {
    match param {
        m::MXFAST
        | m::TRIM_THRESHOLD
        | m::TOP_PAD
        | m::MMAP_THRESHOLD
        | m::MMAP_MAX
        | m::ARENA_TEST
        | m::ARENA_MAX => 1,
        m::PERTURB => c_int::from(value == 0),
        _ => 0,
    }
}

/// `malloc_stats()`: the allocator's statistics on stderr (as glibc's).
#[no_mangle]
pub extern "C" fn malloc_stats() {
    report::print_stats(2, "malloc_stats");
}

// glibc's internal names, which a few programs and libraries call directly
// (and which must not reach glibc's own allocator with our pointers).

/// `__libc_malloc`: [`malloc`].
#[no_mangle]
pub extern "C" fn __libc_malloc(size: size_t) -> *mut c_void {
    malloc(size)
}

/// `__libc_free`: [`free`].
///
/// # Safety
/// As [`free`].
#[no_mangle]
pub unsafe extern "C" fn __libc_free(p: *mut c_void) {
    // SAFETY: forwarded.
    unsafe { free(p) }
}

/// `__libc_calloc`: [`calloc`].
#[no_mangle]
pub extern "C" fn __libc_calloc(n: size_t, size: size_t) -> *mut c_void {
    calloc(n, size)
}

/// `__libc_realloc`: [`realloc`].
///
/// # Safety
/// As [`realloc`].
#[no_mangle]
pub unsafe extern "C" fn __libc_realloc(p: *mut c_void, size: size_t) -> *mut c_void {
    // SAFETY: forwarded.
    unsafe { realloc(p, size) }
}

/// `__libc_memalign`: [`memalign`].
#[no_mangle]
pub extern "C" fn __libc_memalign(align: size_t, size: size_t) -> *mut c_void {
    memalign(align, size)
}

/// `__libc_valloc`: [`valloc`].
#[no_mangle]
pub extern "C" fn __libc_valloc(size: size_t) -> *mut c_void {
    valloc(size)
}

/// `__libc_pvalloc`: [`pvalloc`].
#[no_mangle]
pub extern "C" fn __libc_pvalloc(size: size_t) -> *mut c_void {
    pvalloc(size)
}

// ---- load and exit ---------------------------------------------------------

/// Where the statistics at exit go: a duplicate of the stderr the process
/// had at load (-1: none), and the identity of its file then.
static EXIT_FD: AtomicI32 = AtomicI32::new(-1);
static EXIT_FILE: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

/// Runs when the library is loaded (or, linked statically, before `main`):
/// reads the options. Allocations made earlier (by the dynamic loader or
/// other libraries' constructors) were served already; they need no option.
extern "C" fn on_load() {
    if options::load().stats_at_exit {
        if let Some(fd) = sys::dup_stderr() {
            let (dev, ino) = sys::file_id(fd).unwrap_or((0, 0));
            EXIT_FILE[0].store(dev, Ordering::Relaxed);
            EXIT_FILE[1].store(ino, Ordering::Relaxed);
            EXIT_FD.store(fd, Ordering::Relaxed);
        }
    }
}

/// The descriptor for the statistics at exit: the duplicate taken at load
/// if it still names the same file (a program may have closed every
/// descriptor and opened others since), else fd 2.
fn exit_fd() -> i32 {
    let fd = EXIT_FD.load(Ordering::Relaxed);
    let then = (
        EXIT_FILE[0].load(Ordering::Relaxed),
        EXIT_FILE[1].load(Ordering::Relaxed),
    );
    if fd >= 0 && sys::file_id(fd) == Some(then) {
        fd
    } else {
        2
    }
}

/// Runs at exit, after the program's `atexit` handlers (the loader runs
/// `.fini_array` last): the statistics, if asked for, on the stderr the
/// process had at load (programs such as `sort` close fd 2 at exit).
extern "C" fn on_exit() {
    if options::load().stats_at_exit {
        report::print_stats(exit_fd(), "QPW_MALLOC_STATS=1, at exit");
    }
}

// Kept in this module, beside `malloc`, so that a program linking the static
// library pulls them in with it.
#[used]
#[link_section = ".init_array"]
static ON_LOAD: extern "C" fn() = on_load;

#[used]
#[link_section = ".fini_array"]
static ON_EXIT: extern "C" fn() = on_exit;

#[cfg(test)]
mod tests {
    //! This test binary defines `malloc` and friends itself, so libc's own
    //! allocations in it (`strdup` here, the test harness's threads) are
    //! served by them: the same interposition as the static library.
    use super::*;

    #[test]
    fn libc_allocations_come_here() {
        // SAFETY: a NUL-terminated string; strdup's result is freed once.
        unsafe {
            let s = libc::strdup(c"qpw".as_ptr());
            assert!(!s.is_null());
            // A pointer of glibc's heap would abort here ("not from this
            // allocator"): our size lookup and free accept it.
            assert!(malloc_usable_size(s.cast()) >= 4);
            free(s.cast());
        }
    }
}
