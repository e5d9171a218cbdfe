//! Platform code, chosen in one place: anonymous mappings, returning pages to
//! the OS, the thread-exit hook, futexes, the clock, a runtime-free thread,
//! and writing to stderr without allocating.
//!
//! Nothing outside this module calls `libc`. Every function here is safe to
//! call from inside the global allocator: none of them allocates.

use std::sync::atomic::{AtomicUsize, Ordering};

/// An `errno` value from a failed system call.
pub(crate) type Errno = i32;

fn errno() -> Errno {
    // SAFETY: __errno_location returns this thread's errno slot, always valid.
    unsafe { *libc::__errno_location() }
}

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

/// Rounds `x` up to a multiple of `to` (a power of two).
#[inline]
pub(crate) const fn round_up(x: usize, to: usize) -> usize {
    (x + to - 1) & !(to - 1)
}

/// Reserves `len` bytes of address space aligned to `align` (a power of two,
/// at least the page size), inaccessible and not charged to the commit limit
/// until [`commit`] makes parts of it usable.
pub(crate) fn reserve(len: usize, align: usize) -> Result<usize, Errno> {
    let page = page_size();
    let align = align.max(page);
    let total = len.checked_add(align).ok_or(libc::ENOMEM)?;
    // SAFETY: an anonymous PROT_NONE mapping at an address of the kernel's
    // choosing touches no existing memory.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            total,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(errno());
    }
    let start = p as usize;
    let base = round_up(start, align);
    let end = base + len;
    // Trim the slack on both sides; failure would only waste address space.
    if base > start {
        // SAFETY: [start, base) is part of the mapping just made, used by nobody.
        unsafe { libc::munmap(start as *mut libc::c_void, base - start) };
    }
    if start + total > end {
        // SAFETY: [end, start + total) is part of the mapping just made, unused.
        unsafe { libc::munmap(end as *mut libc::c_void, start + total - end) };
    }
    Ok(base)
}

/// Makes `[addr, addr + len)` of a reservation readable and writable. Pages
/// are still only backed by memory when first touched.
pub(crate) fn commit(addr: usize, len: usize) -> Result<(), Errno> {
    if len == 0 {
        return Ok(());
    }
    // SAFETY: the caller passes a page-aligned range inside a reservation it
    // owns; changing its protection affects nothing else.
    let rc = unsafe {
        libc::mprotect(
            addr as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
        )
    };
    if rc != 0 {
        return Err(errno());
    }
    Ok(())
}

/// Returns the pages of `[addr, addr + len)` to the OS: the range stays
/// mapped and reads as zeros afterwards, and the resident set shrinks.
/// On failure (the errno is returned) the pages may still be resident.
pub(crate) fn release(addr: usize, len: usize) -> Result<(), Errno> {
    // SAFETY: the caller passes a page-aligned range of its own mapping whose
    // contents it no longer needs; MADV_DONTNEED on private anonymous memory
    // only drops those pages.
    let rc = unsafe { libc::madvise(addr as *mut libc::c_void, len, libc::MADV_DONTNEED) };
    if rc != 0 {
        return Err(errno());
    }
    Ok(())
}

/// Unmaps `[addr, addr + len)`. On failure (the errno is returned) the
/// range may still be mapped: the caller must not count it as freed.
///
/// # Safety
/// The range must be a mapping (or part of one) this crate made, and nothing
/// may use it afterwards.
pub(crate) unsafe fn unmap(addr: usize, len: usize) -> Result<(), Errno> {
    if len != 0 {
        // SAFETY: forwarded to the caller.
        let rc = unsafe { libc::munmap(addr as *mut libc::c_void, len) };
        if rc != 0 {
            return Err(errno());
        }
    }
    Ok(())
}

/// Maps `len` fresh, zeroed, readable and writable bytes (page aligned).
pub(crate) fn map(len: usize) -> Result<usize, Errno> {
    // SAFETY: an anonymous mapping at an address of the kernel's choosing.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        Err(errno())
    } else {
        Ok(p as usize)
    }
}

/// Grows or shrinks a mapping made by [`map`], moving it if needed.
///
/// # Safety
/// `[addr, addr + old)` must be a whole mapping made by [`map`]; on success
/// the old range must not be used any more.
pub(crate) unsafe fn remap(addr: usize, old: usize, new: usize) -> Result<usize, Errno> {
    // SAFETY: forwarded to the caller; MREMAP_MAYMOVE lets the kernel pick.
    let p = unsafe { libc::mremap(addr as *mut libc::c_void, old, new, libc::MREMAP_MAYMOVE) };
    if p == libc::MAP_FAILED {
        Err(errno())
    } else {
        Ok(p as usize)
    }
}

/// Whether the page holding `addr` is mapped (`mincore` fails with ENOMEM
/// on unmapped ranges). Never faults.
pub(crate) fn is_mapped(addr: usize) -> bool {
    let page = page_size();
    let base = addr & !(page - 1);
    let mut vec = 0u8;
    // SAFETY: mincore only reads the page tables for the range and writes one
    // byte (one page) into `vec`.
    let rc = unsafe { libc::mincore(base as *mut libc::c_void, page, &mut vec) };
    rc == 0
}

/// Writes `msg` to stderr without allocating (best effort).
pub(crate) fn write_stderr(msg: &str) {
    let mut b = msg.as_bytes();
    while !b.is_empty() {
        // SAFETY: `b` is a valid byte slice; fd 2 may be closed, which only fails.
        let n = unsafe { libc::write(2, b.as_ptr().cast(), b.len()) };
        if n <= 0 {
            return;
        }
        b = &b[n as usize..];
    }
}

/// A line for stderr built on the stack (`fmt::Write`, allocating
/// nothing; cut at 256 bytes), written with one `write` by
/// [`flush`](Self::flush): for messages printed inside the allocator.
pub(crate) struct StderrLine {
    buf: [u8; 256],
    len: usize,
}

impl StderrLine {
    pub(crate) const fn new() -> Self {
        Self {
            buf: [0; 256],
            len: 0,
        }
    }

    pub(crate) fn flush(&mut self) {
        let mut b = &self.buf[..self.len];
        while !b.is_empty() {
            // SAFETY: `b` is a valid byte slice; fd 2 may be closed, which only fails.
            let n = unsafe { libc::write(2, b.as_ptr().cast(), b.len()) };
            if n <= 0 {
                break;
            }
            b = &b[n as usize..];
        }
        self.len = 0;
    }
}

impl std::fmt::Write for StderrLine {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// Prints `msg` and aborts: for errors inside the global allocator, which
/// must not unwind.
#[cfg_attr(not(debug_assertions), allow(dead_code))] // debug checks only
pub(crate) fn abort_with(msg: &str) -> ! {
    write_stderr("qpw-mm: fatal: ");
    write_stderr(msg);
    write_stderr("\n");
    std::process::abort()
}

/// The process-wide pthread key whose destructor runs `dtor` when a thread
/// that set it exits. Created once; `pthread_key_create` does not allocate.
pub(crate) fn exit_key(
    dtor: unsafe extern "C" fn(*mut libc::c_void),
) -> Option<libc::pthread_key_t> {
    // Stores key + 1; 0 means "not created yet".
    static KEY: AtomicUsize = AtomicUsize::new(0);
    let k = KEY.load(Ordering::Acquire);
    if k != 0 {
        return Some((k - 1) as libc::pthread_key_t);
    }
    let mut key: libc::pthread_key_t = 0;
    // SAFETY: `key` is writable; `dtor` has the signature pthread expects.
    if unsafe { libc::pthread_key_create(&mut key, Some(dtor)) } != 0 {
        return None;
    }
    match KEY.compare_exchange(0, key as usize + 1, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => Some(key),
        Err(won) => {
            // Another thread created it first: use theirs.
            // SAFETY: `key` was created above and never handed to anyone.
            unsafe { libc::pthread_key_delete(key) };
            Some((won - 1) as libc::pthread_key_t)
        }
    }
}

/// Gives `key` a non-null value on this thread, so its destructor runs when
/// the thread exits.
pub(crate) fn arm_exit_key(key: libc::pthread_key_t) -> bool {
    // SAFETY: `key` came from pthread_key_create; the value is never dereferenced.
    unsafe { libc::pthread_setspecific(key, std::ptr::dangling::<libc::c_void>()) == 0 }
}

/// Sleeps while `*word == expected`, at most `timeout` (forever if `None`),
/// or until [`futex_wake`]. Returns early on a signal or a changed value;
/// callers re-check their condition.
pub(crate) fn futex_wait(
    word: &std::sync::atomic::AtomicU32,
    expected: u32,
    timeout: Option<std::time::Duration>,
) {
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: t.subsec_nanos() as libc::c_long,
    });
    let tsp = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `word` is a live, aligned 32-bit atomic; FUTEX_WAIT_PRIVATE
    // only reads it and sleeps; `tsp` is null or a valid timespec.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            tsp,
        )
    };
}

/// Wakes up to `n` threads sleeping in [`futex_wait`] on `word`.
pub(crate) fn futex_wake(word: &std::sync::atomic::AtomicU32, n: i32) {
    // SAFETY: as in futex_wait; FUTEX_WAKE touches no memory.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            n,
        )
    };
}

/// Nanoseconds of `clock` (does not allocate, unlike nothing in
/// `std::time`, but callable from a thread std does not know).
#[inline]
fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is writable; both clocks used here exist on Linux
    // (CLOCK_MONOTONIC_COARSE since 2.6.32).
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Nanoseconds of `CLOCK_MONOTONIC`.
pub(crate) fn now_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// Nanoseconds of `CLOCK_MONOTONIC_COARSE`: the clock of the last tick
/// (a few ms old at most), read from the vDSO without a system call. For
/// the decay's time checks on slow paths, where a few ms do not matter.
#[inline]
pub(crate) fn coarse_now_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC_COARSE)
}

/// Starts a detached thread running `f(arg)` with a small stack, without
/// the Rust runtime (so it can be started from inside the global allocator:
/// nothing of std's thread registry is touched), with every signal blocked
/// from its first instruction: a signal the program sends to its process
/// never lands on it (the mask is set on the caller around
/// `pthread_create`, which the new thread inherits, then restored).
/// Returns the errno on failure.
pub(crate) fn spawn_detached(
    f: extern "C" fn(*mut libc::c_void) -> *mut libc::c_void,
    arg: *mut libc::c_void,
) -> Result<(), Errno> {
    // SAFETY: attr and the signal sets are initialised before use, attr is
    // destroyed after; `f` has the signature pthread expects; `arg` is
    // forwarded untouched; the caller's mask is restored before return.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        let rc = libc::pthread_attr_init(&mut attr);
        if rc != 0 {
            return Err(rc);
        }
        libc::pthread_attr_setdetachstate(&mut attr, libc::PTHREAD_CREATE_DETACHED);
        libc::pthread_attr_setstacksize(&mut attr, 256 << 10);
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        let rc = libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        if rc != 0 {
            libc::pthread_attr_destroy(&mut attr);
            return Err(rc);
        }
        let mut t: libc::pthread_t = 0;
        let rc = libc::pthread_create(&mut t, &attr, f, arg);
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        libc::pthread_attr_destroy(&mut attr);
        if rc != 0 {
            return Err(rc);
        }
    }
    Ok(())
}

/// Whether the calling thread is the only live thread of its process, from
/// `/proc/self/status` (read with raw system calls into a stack buffer:
/// nothing allocated): `Threads:` counts the live threads plus a thread
/// group leader that has ended while others live (`main` called
/// `pthread_exit`: `State:` is then `Z`, zombie, until the process ends).
/// `None` if the file cannot be read or parsed (no `/proc`, no free file
/// descriptor).
pub(crate) fn alone_in_process() -> Option<bool> {
    let mut buf = [0u8; 4096];
    let len = read_small_file(c"/proc/self/status", &mut buf)?;
    let (threads, leader_gone) = parse_status(&buf[..len])?;
    Some(threads.saturating_sub(u64::from(leader_gone)) <= 1)
}

/// `Threads:` and whether `State:` says the leader has ended (`Z`/`X`).
fn parse_status(text: &[u8]) -> Option<(u64, bool)> {
    let field = |name: &[u8]| -> Option<&[u8]> {
        let at = text
            .windows(name.len())
            .position(|w| w == name)
            .filter(|&i| i == 0 || text[i - 1] == b'\n')?;
        let rest = &text[at + name.len()..];
        let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        Some(rest[..end].trim_ascii())
    };
    let threads = std::str::from_utf8(field(b"Threads:")?)
        .ok()?
        .parse()
        .ok()?;
    let state = *field(b"State:")?.first()?;
    Some((threads, matches!(state, b'Z' | b'X')))
}

/// Reads the file at `path` into `buf` (open, read until end or full,
/// close: raw system calls). Returns the length, `None` on any failure.
fn read_small_file(path: &std::ffi::CStr, buf: &mut [u8]) -> Option<usize> {
    // SAFETY: `path` is NUL-terminated; openat with AT_FDCWD only reads it.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat,
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return None;
    }
    let mut len = 0;
    let ok = loop {
        if len == buf.len() {
            break false;
        }
        // SAFETY: writes at most `buf.len() - len` bytes into `buf` past
        // `len`, inside the slice; `fd` is ours, open.
        let n =
            unsafe { libc::syscall(libc::SYS_read, fd, buf[len..].as_mut_ptr(), buf.len() - len) };
        if n == 0 {
            break true;
        }
        if n < 0 {
            if errno() == libc::EINTR {
                continue;
            }
            break false;
        }
        len += n as usize;
    };
    // SAFETY: `fd` is ours, closed once.
    unsafe { libc::syscall(libc::SYS_close, fd) };
    ok.then_some(len)
}

/// This thread's `pthread_self()` (never 0; the same in a fork child for
/// the forking thread).
pub(crate) fn thread_self() -> usize {
    // SAFETY: pthread_self has no preconditions.
    unsafe { libc::pthread_self() as usize }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields() {
        let alive = b"Name:\tx\nState:\tS (sleeping)\nTgid:\t1\nThreads:\t2\nSigQ:\t0/1\n";
        assert_eq!(parse_status(alive), Some((2, false)));
        let gone = b"Name:\tx\nState:\tZ (zombie)\nThreads:\t2\n";
        assert_eq!(parse_status(gone), Some((2, true)));
        assert_eq!(parse_status(b"State:\tR\n"), None);
        assert_eq!(parse_status(b"XThreads:\t1\nState:\tR\n"), None);
        // This test's process has the test harness's threads too.
        let _ = alone_in_process().expect("/proc/self/status readable");
    }
}
