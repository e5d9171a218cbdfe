//! Errors: each names what was wrong, and the call that returns one changed nothing.

use std::fmt;

/// What went wrong building a domain, binding a slot or reaching a slot remotely.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The `QPW` variable (or a mode string) is not one of the accepted values.
    BadMode {
        /// The value given.
        value: String,
        /// What is wrong with it, with the accepted values.
        reason: String,
    },
    /// A mode other than `queue` was asked of a configuration without QPW.
    ModeNotCompiled {
        /// The mode asked for.
        mode: String,
        /// The configuration's name.
        config: &'static str,
    },
    /// `nr_cpus` of zero, or above the supported maximum.
    BadCpuCount {
        /// The count given.
        nr_cpus: usize,
        /// The largest count accepted.
        max: usize,
    },
    /// A CPU (in an `auto:` list, or to bind) is not below `nr_cpus`.
    CpuOutOfRange {
        /// The CPU given.
        cpu: usize,
        /// The domain's slot count.
        nr_cpus: usize,
    },
    /// Pinning was asked for a CPU this process may not run on.
    CpuNotAllowed {
        /// The CPU given.
        cpu: usize,
        /// The process's affinity, as a CPU list.
        allowed: String,
    },
    /// The slot already has an owner.
    SlotOwned {
        /// The slot.
        cpu: usize,
    },
    /// Every slot has an owner (or is retired). Give the domain more slots
    /// with [`Builder::nr_cpus`](crate::Builder::nr_cpus), or bind fewer
    /// threads at a time.
    NoFreeSlot {
        /// The domain's slot count.
        nr_cpus: usize,
    },
    /// This thread already owns a slot of this domain.
    AlreadyBound {
        /// The slot it owns.
        cpu: usize,
    },
    /// The owner of the slot is online, so the slot may not be touched
    /// remotely in its mode.
    OwnerOnline {
        /// The slot.
        cpu: usize,
    },
    /// `queue` mode needs `membarrier(2)` (private expedited), the kernel
    /// refused it (`ENOSYS`: too old or built without it; `EPERM`: a seccomp
    /// filter), and the configuration has no `remote` mode to run the slots
    /// in instead (`NoQpw`, `RtNoQpw`, or the `qpw` feature off). With
    /// `remote` mode the domain builds, its `queue` slots running `remote`
    /// ([`ModeReason::FenceUnavailable`](crate::ModeReason::FenceUnavailable)).
    FenceUnavailable {
        /// The errno `membarrier` returned.
        errno: i32,
    },
    /// A system call failed.
    Os {
        /// What was being done.
        what: &'static str,
        /// `errno`.
        errno: i32,
    },
    /// `with_local` was called again for the same domain from inside its closure.
    Reentrant,
    /// `with_local` was called while the thread is exiting, after qpw's
    /// per-thread table of implicit owners was destroyed (from another
    /// thread-local's destructor): there is nowhere left to keep an owner.
    ThreadExiting,
    /// [`PerCpu::remote`](crate::PerCpu::remote) or `try_remote` on a
    /// `remote` slot the calling thread owns: its own sections would wait on
    /// the guard's cell lock, that is on itself. The owner uses `PerCpu::lock`.
    OwnSlot {
        /// The slot.
        cpu: usize,
    },
    /// `remote` mode: a cell's lock stayed held past the domain's flush
    /// timeout (its holder was preempted, or it is the caller itself).
    LockTimeout {
        /// The slot.
        cpu: usize,
        /// The bound, in milliseconds.
        waited_ms: u64,
    },
    /// The slot is retired: in a `fork()` child, its owner's thread vanished
    /// leaving it in a state that may be half-changed, so it is never used again.
    SlotRetired {
        /// The slot.
        cpu: usize,
    },
    /// A call that never waits found the slot's cell (or the slot) held by
    /// another context.
    WouldBlock {
        /// The slot.
        cpu: usize,
    },
    /// A flush or drain-all did not complete (made by `?` on a
    /// [`FlushError`], through `From`): the same message, and the same
    /// [`source`](std::error::Error::source).
    Flush(FlushError),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::BadMode { value, reason } => {
                write!(f, "invalid value {value:?} for environment variable QPW (or mode): {reason}")
            }
            Error::ModeNotCompiled { mode, config } => write!(
                f,
                "mode `{mode}` is not available in configuration `{config}`: qpw was compiled without \
                 the `qpw` feature (or with a no-qpw configuration), so only `queue` (QPW=0) exists"
            ),
            Error::BadCpuCount { nr_cpus, max } => {
                write!(f, "nr_cpus must be between 1 and {max}, got {nr_cpus}")
            }
            Error::CpuOutOfRange { cpu, nr_cpus } => {
                write!(f, "CPU {cpu} is out of range: this domain has slots 0..{nr_cpus}")
            }
            Error::CpuNotAllowed { cpu, allowed } => write!(
                f,
                "cannot pin to CPU {cpu}: it is not in this process's affinity mask (allowed: {allowed})"
            ),
            Error::SlotOwned { cpu } => write!(f, "slot {cpu} is already owned by another thread"),
            Error::NoFreeSlot { nr_cpus } => write!(
                f,
                "all {nr_cpus} slots are owned: build the domain with more slots \
                 (`Builder::nr_cpus(n)`, n at least the number of threads that bind; \
                 slots beyond the CPUs are owned by unpinned threads), or bind fewer \
                 threads at a time (an `Owner` dropped frees its slot)"
            ),
            Error::AlreadyBound { cpu } => {
                write!(f, "this thread already owns slot {cpu} of this domain")
            }
            Error::OwnerOnline { cpu } => write!(
                f,
                "slot {cpu} has an online owner and its mode does not allow remote access; \
                 queue work on it instead"
            ),
            Error::FenceUnavailable { errno } => write!(
                f,
                "queue mode needs membarrier(2) and the kernel refused it ({}); this \
                 configuration has no remote mode to fall back on (compiled without the `qpw` \
                 feature or with a no-qpw configuration)",
                std::io::Error::from_raw_os_error(*errno)
            ),
            Error::Os { what, errno } => {
                write!(f, "{what} failed: {}", std::io::Error::from_raw_os_error(*errno))
            }
            Error::Reentrant => f.write_str(
                "with_local was re-entered for the same domain from inside its own closure",
            ),
            Error::OwnSlot { cpu } => write!(
                f,
                "this thread owns slot {cpu}: lock it with PerCpu::lock and its Owner, not \
                 remotely (its own local sections would wait on the remote guard, on itself)"
            ),
            Error::ThreadExiting => f.write_str(
                "with_local was called while the thread exits (from a thread-local destructor), \
                 after its table of implicit owners was destroyed; use Domain::bind_any instead",
            ),
            Error::LockTimeout { cpu, waited_ms } => write!(
                f,
                "the lock of slot {cpu}'s cell stayed held for {waited_ms} ms (the flush timeout)"
            ),
            Error::SlotRetired { cpu } => write!(
                f,
                "slot {cpu} is retired: its owner vanished in a fork() leaving it possibly \
                 half-changed, so it is never used again"
            ),
            Error::WouldBlock { cpu } => write!(
                f,
                "slot {cpu} is held by another thread right now; try_remote does not wait \
                 (use remote to wait, or try again later)"
            ),
            Error::Flush(e) => fmt::Display::fmt(e, f),
        }
    }
}

/// An `errno` as an error, the [`source`](std::error::Error::source) of
/// [`Error::Os`]: its `Display` is the system's message (`strerror`).
#[derive(Debug)]
#[repr(transparent)]
struct Errno(i32);

impl Errno {
    fn from_ref(errno: &i32) -> &Errno {
        // SAFETY: `Errno` is `repr(transparent)` over `i32`, so the two have
        // the same layout and validity; the reference keeps the lifetime and
        // the (shared) mutability of the one given.
        unsafe { &*(errno as *const i32 as *const Errno) }
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&std::io::Error::from_raw_os_error(self.0), f)
    }
}

impl std::error::Error for Errno {}

impl std::error::Error for Error {
    /// [`Error::Os`]: the system's error for its `errno`; [`Error::Flush`]:
    /// the flush error's own source.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Os { errno, .. } => Some(Errno::from_ref(errno)),
            Error::Flush(e) => e.source(),
            _ => None,
        }
    }
}

impl From<FlushError> for Error {
    /// Lets `?` turn a [`Work::flush`](crate::Work::flush) or
    /// [`WorkSet::run`](crate::WorkSet::run) failure into an [`Error`].
    fn from(e: FlushError) -> Error {
        Error::Flush(e)
    }
}

/// Why a [`Work::flush`](crate::Work::flush) returned without the work having run.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FlushError {
    /// The bound passed before the work ran: the owner of `cpu` did not reach
    /// a quiescent point (defer mode), stayed in its local section or the
    /// kernel refused the fence (queue mode), or stayed in its section
    /// (remote mode). A drain-all has one deadline
    /// for all its slots. The work stays queued and runs when the owner gets
    /// to it.
    Timeout {
        /// The slot whose owner did not run the work.
        cpu: usize,
        /// The bound, in milliseconds.
        waited_ms: u64,
    },
    /// The work function panicked when it ran; the slot remains usable.
    Panicked {
        /// The slot.
        cpu: usize,
    },
    /// The caller is inside its own local section on slot `cpu` of this
    /// domain: a flush or drain-all from there would wait on itself (as
    /// `flush_work` with preemption off would hang), so it returns at once.
    /// Nothing was queued by a drain-all; a flush leaves its work queued.
    InLocalSection {
        /// The caller's own slot.
        cpu: usize,
    },
    /// A `remote`-mode run of the work waited for a cell's lock until the
    /// deadline passed (its holder kept it): `PerCpu::lock_ctx` returned
    /// `Error::LockTimeout` to the function, which returned. The run is over
    /// (not retried within the drain, nothing unwound); queue the work again
    /// to run it again.
    LockTimeout {
        /// The slot whose cell stayed locked.
        cpu: usize,
        /// The bound, in milliseconds.
        waited_ms: u64,
    },
    /// The slot is retired (see [`Error::SlotRetired`]): the work can never run.
    Retired {
        /// The slot.
        cpu: usize,
    },
}

impl fmt::Display for FlushError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlushError::Timeout { cpu, waited_ms } => write!(
                f,
                "work for slot {cpu} did not run within {waited_ms} ms: its owner did not reach a \
                 quiescent point or leave its local section"
            ),
            FlushError::Panicked { cpu } => write!(f, "work for slot {cpu} panicked"),
            FlushError::InLocalSection { cpu } => write!(
                f,
                "flush or drain-all called from inside this thread's own local section on slot \
                 {cpu}: it would wait on itself; leave the section first"
            ),
            FlushError::LockTimeout { cpu, waited_ms } => write!(
                f,
                "work for slot {cpu} waited {waited_ms} ms for a cell lock its holder kept; the \
                 run ended there (queue it again to retry)"
            ),
            FlushError::Retired { cpu } => write!(
                f,
                "slot {cpu} is retired (its owner vanished in a fork()): its work never runs"
            ),
        }
    }
}

impl std::error::Error for FlushError {}
