//! The owner's local section (the `preempt_disable` analogue) and the
//! slot's claim word, on one cache-line pair: the owner's hot path touches
//! nothing else.
//!
//! `seq` is odd while the owner is inside a section (or offline) and bumped
//! at every entry and exit; only the owner's thread writes it. `claim` is a
//! PI futex word ([`CellLock`], the protocol `remote` mode's cell locks
//! use): 0, or the id of the thread that holds the slot. A `queue` drainer
//! claims it, fences the owner's CPU (see `fence.rs`), waits for the
//! owner's section to close, and runs the work. The owner opens a section
//! with a plain store and a plain load:
//!
//! ```text
//! owner                                drainer
//! seq = odd      (store)               claim = my tid   (CAS)
//! compiler fence                       membarrier(owner's CPU)
//! claim == 0 ?   (load)                wait for seq even (load)
//!   yes: the section is ours             run the work
//!   no:  seq = even, wait for claim      claim = 0 (hand-off to a
//!        (FUTEX_LOCK_PI), run the          waiting owner: FUTEX_UNLOCK_PI)
//!        section holding it
//! seq = even     (release store)
//! ```
//!
//! In `remote` and `defer` modes nobody claims the word: the owner's load
//! always finds 0.

use crate::cell_lock::CellLock;
use crate::stats::Counters;
use crate::sync::{AtomicU32, Ordering};

/// The owner's section counter and the slot's claim word.
pub(crate) struct Section {
    pub(crate) seq: AtomicU32,
    pub(crate) claim: CellLock,
}

/// An open section: the even counter value it was opened at, and whether
/// the owner holds the claim word for it (it found the slot claimed and
/// waited its turn).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entered {
    v: u32,
    claimed: bool,
}

impl Section {
    pub(crate) fn new() -> Self {
        Self {
            seq: AtomicU32::new(0),
            claim: CellLock::new(),
        }
    }

    /// Whether the owner is inside a section (or offline).
    #[inline(always)]
    pub(crate) fn open(&self, order: Ordering) -> bool {
        self.seq.load(order) & 1 != 0
    }

    /// Owner's thread only: opens a section, waiting (in the kernel, lending
    /// its priority) while a drainer holds the slot.
    ///
    /// # Panics
    /// If the owner is already in a section: a work this thread runs for
    /// its own slot (at a section's end, a quiescent point) that reached its
    /// owner again (through `with_local`) would alias the data. Checked
    /// before anything changes.
    #[inline(always)]
    pub(crate) fn enter(&self, counters: &Counters) -> Entered {
        match self.try_enter() {
            Ok(e) => e,
            Err(v) => self.enter_claimed(v, counters),
        }
    }

    /// [`enter`](Self::enter) that never waits: `Err(v)` when the slot is
    /// claimed (the section was closed again, the counter is even at `v`).
    #[inline(always)]
    pub(crate) fn try_enter(&self) -> Result<Entered, u32> {
        let v = self.seq.load(Ordering::Relaxed);
        assert!(
            v & 1 == 0,
            "qpw: local section entered from inside this slot's work"
        );
        self.seq.store(v.wrapping_add(1), Ordering::Relaxed);
        crate::fence::owner_side();
        // Acquire: a drainer's work on the data, released with the word,
        // is seen by this section.
        if self.claim.raw_load(Ordering::Acquire) == 0 {
            return Ok(Entered { v, claimed: false });
        }
        // Claimed: step back (the drainer waits for an even counter).
        let back = v.wrapping_add(2);
        self.seq.store(back, Ordering::Release);
        Err(back)
    }

    /// The slot was claimed when the owner looked (the counter is even
    /// again, at `v`): waits for the claim, then opens the section holding it.
    #[cold]
    #[inline(never)]
    fn enter_claimed(&self, v: u32, counters: &Counters) -> Entered {
        self.claim
            .lock_owner(crate::sys::current_tid() as u32, counters);
        // Holding the word: no drainer can claim, no fence is needed.
        self.seq.store(v.wrapping_add(1), Ordering::Relaxed);
        Entered { v, claimed: true }
    }

    /// Owner's thread only: closes the section `e` (a release store: a
    /// drainer that sees the counter even sees the section's writes), and
    /// lets go of the claim word if the section held it.
    #[inline(always)]
    pub(crate) fn leave(&self, e: Entered) {
        self.seq.store(e.v.wrapping_add(2), Ordering::Release);
        if e.claimed {
            self.claim.unlock_owner();
        }
    }

    /// Owner's thread only, going offline: keeps the counter odd (drainers
    /// see an owner that is not between sections) but lets go of the claim
    /// word, so the slot's `BUSY` protocol takes over.
    pub(crate) fn park(&self, e: Entered) {
        if e.claimed {
            self.claim.unlock_owner();
        }
    }

    /// Owner's thread only, back online: closes the section left open by
    /// [`park`](Self::park).
    pub(crate) fn unpark(&self) {
        let v = self.seq.load(Ordering::Relaxed);
        debug_assert!(v & 1 != 0);
        self.seq.store(v.wrapping_add(1), Ordering::Release);
    }
}
