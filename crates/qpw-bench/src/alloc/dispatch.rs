//! The process's global allocator: one of five, chosen once.
//!
//! `qpw-bench alloc` runs every workload in a child process: this same
//! executable, re-run as `qpw-bench alloc-worker`, with [`ENV`] naming the
//! allocator. A second binary target would not do: a bare
//! `cargo run --release` builds only the default binary, so the report could
//! not find it. One worker binary per allocator would need five builds of
//! everything for nothing.
//!
//! The choice is made at the process's first allocation (before `main`),
//! from the environment read with `libc::getenv`, which allocates nothing,
//! and never changes: every pointer is freed by the allocator that made it.
//! Without [`ENV`] the allocator is glibc's (`std::alloc::System`), which
//! `qpw-bench` used before. Each call costs one load of a static and a
//! predictable branch, the same for all five.

use qpw_mm::{GlobalMode, QpwAlloc};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU8, Ordering};

/// The environment variable naming the allocator of a worker process.
pub const ENV: &str = "QPW_BENCH_ALLOCATOR";
/// [`ENV`], NUL-terminated for `getenv`.
const ENV_C: &std::ffi::CStr = c"QPW_BENCH_ALLOCATOR";

/// An allocator under test, as the command line names it.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum AllocName {
    /// `QpwAlloc` with its domain in mode `queue`.
    #[value(name = "qpw-queue")]
    #[serde(rename = "qpw-queue")]
    QpwQueue,
    /// `QpwAlloc` with its domain in mode `remote`.
    #[value(name = "qpw-remote")]
    #[serde(rename = "qpw-remote")]
    QpwRemote,
    /// mimalloc (the `mimalloc` crate).
    #[value(name = "mimalloc")]
    #[serde(rename = "mimalloc")]
    Mimalloc,
    /// jemalloc (`tikv-jemallocator`).
    #[value(name = "jemalloc")]
    #[serde(rename = "jemalloc")]
    Jemalloc,
    /// glibc's malloc (`std::alloc::System`).
    #[value(name = "glibc")]
    #[serde(rename = "glibc")]
    Glibc,
}

impl AllocName {
    /// Every allocator, in report order.
    pub const ALL: [AllocName; 5] = [
        AllocName::QpwQueue,
        AllocName::QpwRemote,
        AllocName::Mimalloc,
        AllocName::Jemalloc,
        AllocName::Glibc,
    ];

    /// The name on the command line, in [`ENV`] and in the report.
    pub fn name(self) -> &'static str {
        match self {
            AllocName::QpwQueue => "qpw-queue",
            AllocName::QpwRemote => "qpw-remote",
            AllocName::Mimalloc => "mimalloc",
            AllocName::Jemalloc => "jemalloc",
            AllocName::Glibc => "glibc",
        }
    }

    /// Whether this is one of the peers (not ours).
    pub fn is_peer(self) -> bool {
        !matches!(self, AllocName::QpwQueue | AllocName::QpwRemote)
    }

    fn code(self) -> u8 {
        match self {
            AllocName::QpwQueue => QUEUE,
            AllocName::QpwRemote => REMOTE,
            AllocName::Mimalloc => MIMALLOC,
            AllocName::Jemalloc => JEMALLOC,
            AllocName::Glibc => GLIBC,
        }
    }

    fn from_bytes(b: &[u8]) -> Option<AllocName> {
        AllocName::ALL
            .into_iter()
            .find(|a| a.name().as_bytes() == b)
    }
}

const UNDECIDED: u8 = 0;
const QUEUE: u8 = 1;
const REMOTE: u8 = 2;
const MIMALLOC: u8 = 3;
const JEMALLOC: u8 = 4;
const GLIBC: u8 = 5;
/// [`ENV`] was set to a name no allocator has: glibc serves, and the worker
/// refuses to run (see [`active`]).
const BAD: u8 = 6;

static CHOICE: AtomicU8 = AtomicU8::new(UNDECIDED);
static QPW_QUEUE: QpwAlloc = QpwAlloc::new().with_mode(GlobalMode::Queue);
static QPW_REMOTE: QpwAlloc = QpwAlloc::new().with_mode(GlobalMode::Remote);

#[cold]
#[inline(never)]
fn decide() -> u8 {
    // SAFETY: a NUL-terminated name; getenv only reads the environment (no
    // thread can be changing it: this runs at the process's first
    // allocation, and this program never calls setenv).
    let p = unsafe { libc::getenv(ENV_C.as_ptr()) };
    let c = if p.is_null() {
        GLIBC
    } else {
        // SAFETY: getenv returned a NUL-terminated string that lives as long
        // as the environment is unchanged.
        let v = unsafe { std::ffi::CStr::from_ptr(p) }.to_bytes();
        AllocName::from_bytes(v).map_or(BAD, AllocName::code)
    };
    match CHOICE.compare_exchange(UNDECIDED, c, Ordering::Relaxed, Ordering::Relaxed) {
        Ok(_) => c,
        Err(already) => already,
    }
}

#[inline(always)]
fn choice() -> u8 {
    let c = CHOICE.load(Ordering::Relaxed);
    if c != UNDECIDED {
        c
    } else {
        decide()
    }
}

/// The allocator serving this process: `Ok(None)` when [`ENV`] is unset,
/// `Err` with the bad value when it names no allocator.
pub fn active() -> Result<Option<AllocName>, String> {
    match choice() {
        BAD => Err(format!(
            "{ENV}={:?} names no allocator: use one of {}",
            std::env::var_os(ENV).unwrap_or_default(),
            AllocName::ALL.map(AllocName::name).join(", ")
        )),
        c => Ok(AllocName::ALL
            .into_iter()
            .find(|a| a.code() == c)
            .filter(|_| std::env::var_os(ENV).is_some())),
    }
}

/// Whether the `QpwAlloc` serving this process has built its per-CPU
/// instance (`None` when another allocator serves). `false` means every
/// allocation took its shared path: the figures would not be its own.
pub fn qpw_ready() -> Option<bool> {
    match choice() {
        QUEUE => Some(QPW_QUEUE.kmalloc().is_some()),
        REMOTE => Some(QPW_REMOTE.kmalloc().is_some()),
        _ => None,
    }
}

/// The global allocator of `qpw-bench`.
pub struct Dispatch;

/// Calls `$f` on the chosen allocator.
macro_rules! dispatch {
    ($method:ident($($arg:expr),*)) => {
        match choice() {
            QUEUE => QPW_QUEUE.$method($($arg),*),
            REMOTE => QPW_REMOTE.$method($($arg),*),
            MIMALLOC => mimalloc::MiMalloc.$method($($arg),*),
            JEMALLOC => tikv_jemallocator::Jemalloc.$method($($arg),*),
            _ => System.$method($($arg),*),
        }
    };
}

// SAFETY: every call is forwarded unchanged to one allocator, the same for
// the whole life of the process (the choice is made once, before any block
// exists, and never changes), so each block is freed or resized by the
// allocator that made it, under that allocator's own GlobalAlloc contract.
unsafe impl GlobalAlloc for Dispatch {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { dispatch!(alloc(layout)) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded; `ptr` came from the same allocator (see above).
        unsafe { dispatch!(dealloc(ptr, layout)) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { dispatch!(alloc_zeroed(layout)) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded; `ptr` came from the same allocator (see above).
        unsafe { dispatch!(realloc(ptr, layout, new_size)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for a in AllocName::ALL {
            assert_eq!(AllocName::from_bytes(a.name().as_bytes()), Some(a));
        }
        assert_eq!(AllocName::from_bytes(b"tcmalloc"), None);
        assert_eq!(
            AllocName::ALL.iter().filter(|a| a.is_peer()).count(),
            3,
            "mimalloc, jemalloc, glibc"
        );
    }
}
