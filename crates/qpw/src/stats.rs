//! Per-slot counters: what the library sent and ran, so the rules are checked, not assumed.

use crate::config::{ModeReason, SlotMode};
use crate::sync::{AtomicU64, Ordering};

/// Counters of one slot, readable at any time with [`Domain::stats`](crate::Domain::stats).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct SlotStats {
    /// Signals sent to the slot's owner (queue mode only).
    pub signals_sent: u64,
    /// Signals the kernel refused (`tgkill` failed, e.g. `EAGAIN` when the
    /// signal queue is full); a flusher sends them again.
    pub signals_failed: u64,
    /// Signals sent again because they were lost: a flusher waited 100 ms
    /// with the signal sent and no handler started since, and the owner's
    /// thread showed it neither pending nor blocked (taken by `sigwait` or
    /// a `signalfd`, or the thread was exiting). A signal still pending or
    /// blocked is never sent again. Each is also in `signals_sent`.
    pub signals_resent_lost: u64,
    /// Works the owner ran in its signal handler.
    pub works_in_handler: u64,
    /// Works the owner ran when a local section ended (the signal came during it).
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
    /// Times the slot should have left `remote` (an unbind, or a bind in the
    /// slot's own mode) and a remote context (a `RemoteGuard`, or a work
    /// run under a cell lock) stayed on it past the domain's flush timeout:
    /// the slot stayed `remote` (reason
    /// [`ModeReason::RemoteContextOutstayed`](crate::ModeReason::RemoteContextOutstayed)).
    pub mode_waits_expired: u64,
}

impl SlotStats {
    /// Works run by the owner, in any of its contexts.
    pub fn works_by_owner(&self) -> u64 {
        self.works_in_handler + self.works_at_section_end + self.works_at_quiescent
    }

    /// All works run, by anyone.
    pub fn works_run(&self) -> u64 {
        self.works_by_owner() + self.works_remote + self.works_for_absent_owner
    }

    /// The counts from `earlier` to `self` (two snapshots of the same slot
    /// or domain, `earlier` taken first); saturating, never negative.
    pub fn since(&self, earlier: &SlotStats) -> SlotStats {
        let d = |a: u64, b: u64| a.saturating_sub(b);
        SlotStats {
            signals_sent: d(self.signals_sent, earlier.signals_sent),
            signals_failed: d(self.signals_failed, earlier.signals_failed),
            signals_resent_lost: d(self.signals_resent_lost, earlier.signals_resent_lost),
            works_in_handler: d(self.works_in_handler, earlier.works_in_handler),
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
            mode_waits_expired: d(self.mode_waits_expired, earlier.mode_waits_expired),
        }
    }

    /// Adds another slot's counters (for domain totals).
    pub fn add(&mut self, o: &SlotStats) {
        self.signals_sent += o.signals_sent;
        self.signals_failed += o.signals_failed;
        self.signals_resent_lost += o.signals_resent_lost;
        self.works_in_handler += o.works_in_handler;
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
        self.mode_waits_expired += o.mode_waits_expired;
    }
}

/// How one slot runs now and why, with what drain-alls left alone on it:
/// [`Domain::slot_info`](crate::Domain::slot_info).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct SlotInfo {
    /// The slot's mode as the domain was built (an `auto` domain resolved per CPU).
    pub configured: SlotMode,
    /// The mode the slot runs in for its current binding (the configured
    /// one while it has no owner).
    pub effective: SlotMode,
    /// Why `effective` is what it is.
    pub reason: ModeReason,
    /// Drain-alls whose per-slot check ([`WorkSet::with_check`](crate::WorkSet::with_check))
    /// said this slot needed nothing: it was neither signalled nor locked.
    pub drains_skipped_clean: u64,
}

/// Where a work ran, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RanAt {
    Handler,
    SectionEnd,
    Quiescent,
    /// Another thread, under the cells' locks (`remote` mode).
    RemoteLocked,
    /// Another thread holding `BUSY` (owner offline or absent).
    ForAbsentOwner,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    signals_sent: AtomicU64,
    signals_failed: AtomicU64,
    resent_lost: AtomicU64,
    in_handler: AtomicU64,
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
    mode_waits_expired: AtomicU64,
}

impl Counters {
    #[inline]
    fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn signal_sent(&self) {
        Self::bump(&self.signals_sent)
    }
    pub(crate) fn signal_failed(&self) {
        Self::bump(&self.signals_failed)
    }
    pub(crate) fn signal_resent_lost(&self) {
        Self::bump(&self.resent_lost)
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
    pub(crate) fn mode_wait_expired(&self) {
        Self::bump(&self.mode_waits_expired)
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
            RanAt::Handler => &self.in_handler,
            RanAt::SectionEnd => &self.at_section_end,
            RanAt::Quiescent => &self.at_quiescent,
            RanAt::RemoteLocked => &self.remote,
            RanAt::ForAbsentOwner => &self.for_absent,
        })
    }
    pub(crate) fn snapshot(&self) -> SlotStats {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        SlotStats {
            signals_sent: l(&self.signals_sent),
            signals_failed: l(&self.signals_failed),
            signals_resent_lost: l(&self.resent_lost),
            works_in_handler: l(&self.in_handler),
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
            mode_waits_expired: l(&self.mode_waits_expired),
        }
    }
}
