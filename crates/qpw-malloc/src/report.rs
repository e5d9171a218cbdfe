//! Statistics on stderr (`malloc_stats`, and at exit with
//! `QPW_MALLOC_STATS=1`), formatted into a buffer on the stack and written
//! with one `write(2)`.
//!
//! Allocation here: none of ours. `QpwAlloc::stats` itself builds a
//! `KmallocStats` (a `Vec` of per-class counters and a few strings), which
//! this library's global allocator, the same `QpwAlloc`, serves. That is safe
//! at exit: the allocator is never torn down (no destructor, no unmapping),
//! the library's destructor runs on the exiting thread, whose binding is
//! released only by a pthread key destructor, which `exit` does not run,
//! and any allocation after a binding's release takes the shared path.

use crate::backend::ALLOC;
use crate::sys;
use std::fmt;

/// A fixed buffer that formats without allocating; what does not fit is
/// dropped and marked.
pub(crate) struct StackBuf<const N: usize> {
    buf: [u8; N],
    len: usize,
    truncated: bool,
}

impl<const N: usize> StackBuf<N> {
    pub(crate) const fn new() -> Self {
        Self {
            buf: [0; N],
            len: 0,
            truncated: false,
        }
    }

    /// Appends what fits of `b`.
    pub(crate) fn push(&mut self, b: &[u8]) {
        let n = b.len().min(N - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&b[..n]);
        self.len += n;
        self.truncated |= n < b.len();
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    pub(crate) fn truncated(&self) -> bool {
        self.truncated
    }
}

impl<const N: usize> fmt::Write for StackBuf<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.push(s.as_bytes());
        Ok(())
    }
}

/// Writes the allocator's statistics to `fd` (stderr, or its duplicate),
/// headed by `why`.
pub(crate) fn print_stats(fd: i32, why: &str) {
    use fmt::Write;
    let mut b = StackBuf::<8192>::new();
    let _ = writeln!(b, "qpw-malloc: statistics of pid {} ({why})", sys::pid());
    match ALLOC.stats() {
        Some(s) => {
            let _ = write!(b, "{s}");
        }
        None => b.push(
            b"no statistics: the allocator has not started, or runs on its shared path only\n",
        ),
    }
    sys::write_fd(fd, b.as_bytes());
    if b.truncated() {
        sys::write_fd(fd, b"\n(truncated)\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt::Write;

    #[test]
    fn stack_buf_keeps_what_fits_and_says_so() {
        let mut b = StackBuf::<8>::new();
        write!(b, "{}", 1234).unwrap();
        assert_eq!(b.as_bytes(), b"1234");
        assert!(!b.truncated());
        b.push(b"56789");
        assert_eq!(b.as_bytes(), b"12345678");
        assert!(b.truncated());
    }
}
