//! Platform code, chosen in one place: signals, pinning, CPU discovery.
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
compile_error!(
    "qpw supports Linux only (it needs tgkill, sched_setaffinity and real-time signals)"
);
