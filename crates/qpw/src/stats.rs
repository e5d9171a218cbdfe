//! Per-slot counters: what the library sent and ran, so the rules are checked, not assumed.

use crate::config::{ModeReason, SlotMode};
use crate::sync::{AtomicU64, Ordering};

/// Counters of one slot, readable at any time with [`Domain::stats`](crate::Domain::stats).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct SlotStats {
    /// `queue` drains that fenced the owner's pinned CPU alone
    /// (`membarrier`, one IPI to that CPU).
    pub fences_targeted: u64,
    /// `queue` drains that fenced every CPU running a thread of the process
    /// (the owner is not pinned: one IPI to each such CPU).
    pub fences_process_wide: u64,
    /// Fences the kernel refused at drain time (a seccomp filter on the
    /// draining thread): the work was left to the owner's section end.
    pub fences_refused: u64,
    /// Works run by a `queue` drainer on its own thread, after fencing the
    /// owner's CPU and seeing its section closed.
    pub works_fenced: u64,
    /// Works the owner ran when a local section ended (queued from inside
    /// its own section, or left by a drain that timed out).
    pub works_at_section_end: u64,
    /// Works the owner ran at a quiescent point, when coming online, binding or unbinding.
    pub works_at_quiescent: u64,
    /// Works run by another thread under the cells' locks (`remote` mode).
    pub works_remote: u64,
    /// Works run by another thread while the owner was offline or absent
    /// (the thread held the slot's `BUSY`).
    pub works_for_absent_owner: u64,
    /// Slot-lock acquisitions that found the lock taken.
    pub lock_contended: u64,
    /// Remote lock waits that passed their drain-all's deadline.
    pub lock_timeouts: u64,
    /// Work functions that panicked.
    pub works_panicked: u64,
    /// Drain-alls that skipped this slot because it is retired (its owner
    /// vanished in a `fork()`).
    pub drains_skipped_retired: u64,
    /// Times the owner found its cell held by a remote thread past its
    /// short spin and waited in the kernel (`FUTEX_LOCK_PI`, lending the
    /// holder its priority).
    pub owner_waits_pi: u64,
    /// Of those, waits the kernel refused (no PI futex support, or the
    /// holder's thread was gone): the owner spun and yielded instead.
    pub owner_pi_unavailable: u64,
    /// `fork()`s whose forking thread, the slot's owner, waited past its
    /// bound for remote contexts to leave the slot (a child may then find
    /// one of its cells held by a thread it does not have).
    pub fork_waits_expired: u64,
}

impl SlotStats {
    /// Fences issued, targeted and process-wide: the interruptions of
    /// owners' CPUs that `queue` drains caused.
    pub fn fences(&self) -> u64 {
        self.fences_targeted + self.fences_process_wide
    }

    /// Works run by the owner, in any of its contexts.
    pub fn works_by_owner(&self) -> u64 {
        self.works_at_section_end + self.works_at_quiescent
    }

    /// All works run, by anyone.
    pub fn works_run(&self) -> u64 {
        self.works_by_owner() + self.works_fenced + self.works_remote + self.works_for_absent_owner
    }

    /// The counts from `earlier` to `self` (two snapshots of the same slot
    /// or domain, `earlier` taken first); saturating, never negative.
    pub fn since(&self, earlier: &SlotStats) -> SlotStats {
        let d = |a: u64, b: u64| a.saturating_sub(b);
        SlotStats {
            fences_targeted: d(self.fences_targeted, earlier.fences_targeted),
            fences_process_wide: d(self.fences_process_wide, earlier.fences_process_wide),
            fences_refused: d(self.fences_refused, earlier.fences_refused),
            works_fenced: d(self.works_fenced, earlier.works_fenced),
            works_at_section_end: d(self.works_at_section_end, earlier.works_at_section_end),
            works_at_quiescent: d(self.works_at_quiescent, earlier.works_at_quiescent),
            works_remote: d(self.works_remote, earlier.works_remote),
            works_for_absent_owner: d(self.works_for_absent_owner, earlier.works_for_absent_owner),
            lock_contended: d(self.lock_contended, earlier.lock_contended),
            lock_timeouts: d(self.lock_timeouts, earlier.lock_timeouts),
            works_panicked: d(self.works_panicked, earlier.works_panicked),
            drains_skipped_retired: d(self.drains_skipped_retired, earlier.drains_skipped_retired),
            owner_waits_pi: d(self.owner_waits_pi, earlier.owner_waits_pi),
            owner_pi_unavailable: d(self.owner_pi_unavailable, earlier.owner_pi_unavailable),
            fork_waits_expired: d(self.fork_waits_expired, earlier.fork_waits_expired),
        }
    }

    /// Adds another slot's counters (for domain totals).
    pub fn add(&mut self, o: &SlotStats) {
        self.fences_targeted += o.fences_targeted;
        self.fences_process_wide += o.fences_process_wide;
        self.fences_refused += o.fences_refused;
        self.works_fenced += o.works_fenced;
        self.works_at_section_end += o.works_at_section_end;
        self.works_at_quiescent += o.works_at_quiescent;
        self.works_remote += o.works_remote;
        self.works_for_absent_owner += o.works_for_absent_owner;
        self.lock_contended += o.lock_contended;
        self.lock_timeouts += o.lock_timeouts;
        self.works_panicked += o.works_panicked;
        self.drains_skipped_retired += o.drains_skipped_retired;
        self.owner_waits_pi += o.owner_waits_pi;
        self.owner_pi_unavailable += o.owner_pi_unavailable;
        self.fork_waits_expired += o.fork_waits_expired;
    }
}

/// How one slot runs now and why, with what drain-alls left alone on it:
/// [`Domain::slot_info`](crate::Domain::slot_info).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct SlotInfo {
    /// The slot's mode as the domain asked for it (an `auto` domain
    /// resolved per CPU).
    pub configured: SlotMode,
    /// The mode the slot runs in (`remote` for a `queue` slot when the
    /// kernel refused the fence).
    pub effective: SlotMode,
    /// Why `effective` is what it is.
    pub reason: ModeReason,
    /// Drain-alls whose per-slot check ([`WorkSet::with_check`](crate::WorkSet::with_check))
    /// said this slot needed nothing: it was neither fenced nor locked.
    pub drains_skipped_clean: u64,
}

/// Where a work ran, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RanAt {
    /// A `queue` drainer's thread, holding the slot's claim.
    Fenced,
    SectionEnd,
    Quiescent,
    /// Another thread, under the cells' locks (`remote` mode).
    RemoteLocked,
    /// Another thread holding `BUSY` (owner offline or absent).
    ForAbsentOwner,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    fences_targeted: AtomicU64,
    fences_process_wide: AtomicU64,
    fences_refused: AtomicU64,
    fenced: AtomicU64,
    at_section_end: AtomicU64,
    at_quiescent: AtomicU64,
    remote: AtomicU64,
    for_absent: AtomicU64,
    contended: AtomicU64,
    lock_timeouts: AtomicU64,
    panicked: AtomicU64,
    skipped_retired: AtomicU64,
    owner_waits_pi: AtomicU64,
    owner_pi_unavailable: AtomicU64,
    skipped_clean: AtomicU64,
    fork_waits_expired: AtomicU64,
}

impl Counters {
    #[inline]
    fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
    /// A fence issued: of the owner's CPU alone (`targeted`), or of every
    /// CPU of the process.
    pub(crate) fn fenced(&self, targeted: bool) {
        Self::bump(if targeted {
            &self.fences_targeted
        } else {
            &self.fences_process_wide
        })
    }
    pub(crate) fn fence_refused(&self) {
        Self::bump(&self.fences_refused)
    }
    pub(crate) fn contended(&self) {
        Self::bump(&self.contended)
    }
    pub(crate) fn lock_timeout(&self) {
        Self::bump(&self.lock_timeouts)
    }
    pub(crate) fn panicked(&self) {
        Self::bump(&self.panicked)
    }
    pub(crate) fn skipped_retired(&self) {
        Self::bump(&self.skipped_retired)
    }
    pub(crate) fn owner_waited_pi(&self) {
        Self::bump(&self.owner_waits_pi)
    }
    pub(crate) fn fork_wait_expired(&self) {
        Self::bump(&self.fork_waits_expired)
    }
    pub(crate) fn owner_pi_unavailable(&self) {
        Self::bump(&self.owner_pi_unavailable)
    }
    pub(crate) fn skipped_clean(&self) {
        Self::bump(&self.skipped_clean)
    }
    pub(crate) fn skipped_clean_count(&self) -> u64 {
        self.skipped_clean.load(Ordering::Relaxed)
    }
    pub(crate) fn ran(&self, at: RanAt) {
        Self::bump(match at {
            RanAt::Fenced => &self.fenced,
            RanAt::SectionEnd => &self.at_section_end,
            RanAt::Quiescent => &self.at_quiescent,
            RanAt::RemoteLocked => &self.remote,
            RanAt::ForAbsentOwner => &self.for_absent,
        })
    }
    pub(crate) fn snapshot(&self) -> SlotStats {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        SlotStats {
            fences_targeted: l(&self.fences_targeted),
            fences_process_wide: l(&self.fences_process_wide),
            fences_refused: l(&self.fences_refused),
            works_fenced: l(&self.fenced),
            works_at_section_end: l(&self.at_section_end),
            works_at_quiescent: l(&self.at_quiescent),
            works_remote: l(&self.remote),
            works_for_absent_owner: l(&self.for_absent),
            lock_contended: l(&self.contended),
            lock_timeouts: l(&self.lock_timeouts),
            works_panicked: l(&self.panicked),
            drains_skipped_retired: l(&self.skipped_retired),
            owner_waits_pi: l(&self.owner_waits_pi),
            owner_pi_unavailable: l(&self.owner_pi_unavailable),
            fork_waits_expired: l(&self.fork_waits_expired),
        }
    }
}
