//! Platform code, in one place: `errno`, the environment, stderr and the page
//! size. Nothing outside this module calls `libc`, and nothing here
//! allocates, so every function may run inside `malloc`.

use std::ffi::CStr;
use std::sync::atomic::{AtomicUsize, Ordering};

/// This thread's `errno`.
#[inline]
pub(crate) fn errno() -> i32 {
    // SAFETY: __errno_location returns this thread's errno slot, always valid.
    unsafe { *libc::__errno_location() }
}

/// Sets this thread's `errno`.
#[inline]
pub(crate) fn set_errno(e: i32) {
    // SAFETY: as in `errno`.
    unsafe { *libc::__errno_location() = e }
}

/// `ENOMEM`, `EINVAL`: the only error numbers the malloc family reports.
pub(crate) const ENOMEM: i32 = libc::ENOMEM;
pub(crate) const EINVAL: i32 = libc::EINVAL;

/// The system page size (cached; `sysconf` does not allocate).
#[inline]
pub(crate) fn page_size() -> usize {
    static PAGE: AtomicUsize = AtomicUsize::new(0);
    let p = PAGE.load(Ordering::Relaxed);
    if p != 0 {
        return p;
    }
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let p = if p > 0 { p as usize } else { 4096 };
    PAGE.store(p, Ordering::Relaxed);
    p
}

/// The value of environment variable `name`, without allocating (libc's
/// `getenv`, not `std::env`, whose `OsString` would come back to us).
/// `None` when unset. The bytes stay valid as long as nobody calls `setenv`
/// for `name`; callers copy what they need at once.
pub(crate) fn getenv(name: &CStr) -> Option<&'static [u8]> {
    // SAFETY: `name` is NUL-terminated; getenv only reads the environment.
    let v = unsafe { libc::getenv(name.as_ptr()) };
    if v.is_null() {
        return None;
    }
    // SAFETY: getenv returned a NUL-terminated string in the environment.
    Some(unsafe { CStr::from_ptr(v) }.to_bytes())
}

/// Writes `msg` to stderr without allocating (best effort; a closed stderr
/// only fails). Keeps `errno`.
pub(crate) fn write_stderr(msg: &[u8]) {
    write_fd(2, msg)
}

/// A private duplicate of stderr (close-on-exec, numbered 64 or above), for
/// output at exit: programs such as GNU coreutils close fd 2 in an `atexit`
/// handler, before the library's destructor runs. `None` if stderr is closed.
pub(crate) fn dup_stderr() -> Option<i32> {
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) has no memory preconditions.
    let fd = unsafe { libc::fcntl(2, libc::F_DUPFD_CLOEXEC, 64) };
    (fd >= 0).then_some(fd)
}

/// The identity (device, inode) of the file open on `fd`, to tell later
/// whether the descriptor still names the same file.
pub(crate) fn file_id(fd: i32) -> Option<(u64, u64)> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::zeroed();
    // SAFETY: `st` is writable memory for one `stat`.
    if unsafe { libc::fstat(fd, st.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: fstat succeeded and filled it.
    let st = unsafe { st.assume_init() };
    Some((st.st_dev, st.st_ino))
}

/// Writes `msg` to `fd` without allocating, retrying short writes and
/// `EINTR`; other errors end it silently. Keeps `errno`.
pub(crate) fn write_fd(fd: i32, msg: &[u8]) {
    let saved = errno();
    let mut b = msg;
    while !b.is_empty() {
        // SAFETY: `b` is a valid byte slice; fd 2 may be closed, which only fails.
        let n = unsafe { libc::write(fd, b.as_ptr().cast(), b.len()) };
        if n < 0 && errno() == libc::EINTR {
            continue;
        }
        if n <= 0 {
            break;
        }
        b = &b[n as usize..];
    }
    set_errno(saved);
}

/// This process's id (for the statistics' header: forked children print their own).
pub(crate) fn pid() -> i32 {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() }
}
