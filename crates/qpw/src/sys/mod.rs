//! Platform code, chosen in one place: the fence, futexes, pinning, CPU discovery.
//!
//! Nothing outside this module calls `libc`. Under `--cfg qpw_loom` the model
//! version stands in, so the protocol can be checked without the OS.

#[cfg(all(target_os = "linux", not(qpw_loom)))]
mod linux;
#[cfg(all(target_os = "linux", not(qpw_loom)))]
pub(crate) use linux::*;

#[cfg(qpw_loom)]
mod model;
#[cfg(qpw_loom)]
pub(crate) use model::*;

#[cfg(not(any(target_os = "linux", qpw_loom)))]
compile_error!("qpw supports Linux only (it needs membarrier, PI futexes and sched_setaffinity)");

/// The kernel's "a thread waits in `FUTEX_LOCK_PI`" bit of a PI futex word
/// (the same on every Linux architecture; the models use it too).
pub(crate) const FUTEX_WAITERS: u32 = 0x8000_0000;
/// The kernel's "the holder died" bit (robust futexes; qpw registers none).
pub(crate) const FUTEX_OWNER_DIED: u32 = 0x4000_0000;
/// The thread-id bits of a PI futex word.
pub(crate) const FUTEX_TID_MASK: u32 = !(FUTEX_WAITERS | FUTEX_OWNER_DIED);
