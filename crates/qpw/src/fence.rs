//! The asymmetric fence of `queue` mode: the owner's side costs a compiler
//! fence, the drainer's side makes the owner's CPU execute a full barrier
//! with `membarrier(2)` (an IPI from the kernel; no signal, no handler).
//!
//! # Why it orders what it must
//!
//! The owner opens a section with a plain store (`seq` odd), a compiler
//! fence, and a load of the slot's claim word; a drainer claims the word,
//! calls `membarrier`, then loads `seq`. Store then load on each side: the
//! store-buffer pattern, which needs a full barrier on *both* sides. The
//! drainer's side gets it from the system call (`membarrier` begins and ends
//! with `smp_mb()`); the owner's side gets it from the IPI: the kernel runs
//! `smp_mb()` on the owner's CPU at some point `P` of the owner's
//! instruction stream while the call is in progress. Either the owner's
//! `seq` store is before `P`, and then visible to the drainer's load after
//! the call returns (the drainer waits for that section to close), or it is
//! after `P`, and then so is the owner's load of the claim word, which sees
//! the claim the drainer stored before the call (the owner steps back). A
//! thread that is not running when the kernel looks is covered by the
//! scheduler: a context switch executes a full barrier between the user
//! accesses before it and after it (the guarantee `membarrier` is built on).
//!
//! # Which CPUs are fenced
//!
//! - **An owner pinned to exactly one CPU** (bound with `Domain::bind`) can
//!   only run there: the drainer fences that CPU alone,
//!   `MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ` with `MEMBARRIER_CMD_FLAG_CPU`
//!   (the only command that accepts the flag; its IPI function `ipi_rseq`
//!   issues `smp_mb()` since Linux 5.10's stable fix "membarrier: Add an
//!   actual barrier before rseq_preempt()"). If the owner is not running
//!   on it, it is not running at all, and its next run starts after a
//!   context switch (a full barrier). No other CPU is interrupted. This
//!   rests on the thread keeping the affinity `bind` gave it (documented on
//!   `Domain::bind`): a thread that re-pins itself while bound is not covered.
//! - **An unpinned owner** may migrate at any instant: the CPU a drainer
//!   read as the owner's may already be another's, and a migration that
//!   overlaps the call leaves no barrier the drainer can point to on the
//!   CPU it fenced. Rather than argue about the scheduler's internal
//!   barriers, the drainer fences every CPU running a thread of the
//!   process (`MEMBARRIER_CMD_PRIVATE_EXPEDITED`), which covers the owner
//!   wherever it runs. So pin `queue` owners that share a process with
//!   isolated (`remote`) slots: an unpinned owner's drain interrupts them too.
//!
//! Registration (`MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED{,_RSEQ}`) is
//! done once per process when the first domain with `queue` slots is
//! built. Where the kernel refuses it (`ENOSYS`, `EINVAL`, or `EPERM` under
//! a seccomp filter), `queue` slots run `remote`
//! (`ModeReason::FenceUnavailable`); a configuration without `remote` mode
//! fails to build (`Error::FenceUnavailable`). Without the targeted
//! flavour (a kernel without `CONFIG_RSEQ`) every fence is process-wide.

#[cfg(not(qpw_loom))]
use std::sync::OnceLock;

/// Which fence a drain issued, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FenceKind {
    /// One CPU: the pinned owner's.
    Targeted,
    /// Every CPU running a thread of the process.
    ProcessWide,
}

/// What the process may use: `Ok(targeted_too)`, or the registration's errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Support {
    pub(crate) targeted: bool,
}

/// Registers the process for private expedited `membarrier` (once per
/// process outside the models); the errno if the kernel refuses.
pub(crate) fn register() -> Result<Support, i32> {
    #[cfg(not(qpw_loom))]
    {
        static DONE: OnceLock<Result<Support, i32>> = OnceLock::new();
        *DONE.get_or_init(register_now)
    }
    #[cfg(qpw_loom)]
    register_now()
}

fn register_now() -> Result<Support, i32> {
    crate::sys::fence_register()?;
    Ok(Support {
        targeted: crate::sys::fence_register_targeted().is_ok(),
    })
}

/// The drainer's side: makes the owner's CPU (`Some(cpu)`: the owner is
/// pinned to it) or every CPU of the process execute a full barrier.
pub(crate) fn issue(pinned_cpu: Option<usize>) -> Result<FenceKind, i32> {
    let targeted = register()?.targeted;
    match pinned_cpu {
        Some(cpu) if targeted => crate::sys::fence_cpu(cpu).map(|()| FenceKind::Targeted),
        _ => crate::sys::fence_process().map(|()| FenceKind::ProcessWide),
    }
}

/// The owner's side, between its section-opening store and its load of the
/// claim word: only the compiler must keep them in order (the drainer's
/// `membarrier` supplies the CPU barrier). The models make it the `SeqCst`
/// fence that `membarrier` stands for, paired with the drainer's.
#[inline(always)]
pub(crate) fn owner_side() {
    #[cfg(not(qpw_loom))]
    std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
    #[cfg(qpw_loom)]
    loom::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
}
