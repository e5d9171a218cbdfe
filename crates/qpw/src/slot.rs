//! The per-slot protocol, the bottom layer: who may touch a slot's data, and
//! how pending items reach whoever may.
//!
//! It knows nothing of owners' thread lists or of work internals: pending
//! items are [`Node`]s with a function that runs one (the work layer
//! provides it), and callers say whether they are the slot's owner.
//!
//! # State
//!
//! `ctl` holds the state (low byte) and the binding's generation (the rest),
//! bumped at every bind: a slot is freed on an owner's behalf only by a
//! compare-and-swap on the exact `(generation, ONLINE)` it saw, so a newer
//! binding is never mistaken for an older one (no thread-id ABA).
//!
//! | state | meaning | who may touch the slot's data |
//! |---|---|---|
//! | `FREE` | no owner | nobody until a remote thread sets `BUSY` |
//! | `ONLINE` | an owner is running | the owner inside its sections; in `queue` mode a drainer holding the slot's claim word once the owner's section closed; in `remote` mode anyone holding a cell's lock |
//! | `OFFLINE` | the owner is idle | nobody until a remote thread sets `BUSY` |
//! | `FREE\|BUSY`, `OFFLINE\|BUSY` | a remote thread works on the slot (or a thread is binding it) | that thread alone |
//! | `RETIRED` | its owner vanished in a `fork()` in a state that may be half-changed | nobody, ever |
//!
//! Pending work is an intrusive Treiber stack (`head`) of [`Node`]s; each
//! node on it carries a reference the stack owns, given up when it runs.
//! Pushing never allocates, and consumers take the whole stack at once (no ABA).
//!
//! # No lost work
//!
//! Every path that may leave work behind follows "publish, then look" with
//! `SeqCst` on both sides: a pusher pushes, then reads `ctl`; a thread that
//! leaves `ONLINE` or drops `BUSY` writes `ctl`, then reads `head`. One of the
//! two sees the other, so the work is run by the owner, or by whichever thread
//! [`SlotState::help`]s it.
//!
//! # `queue` mode: the claim
//!
//! A drainer of an online `queue` owner claims the slot's claim word, fences
//! the owner's CPU and waits for its section to close
//! ([`SlotState::drain_fenced`]; the owner's side is in `section.rs`, the
//! fence's argument in `fence.rs`). It then reads `ctl` again: the owner
//! changes `ctl` (offline, unbinding) only inside a section, so a drainer
//! that saw the section closed and `ctl` unchanged has the slot to itself
//! until it lets go of the word.

use crate::config::{Config, ModeReason, SlotMode};
use crate::section::{Entered, Section};
use crate::stats::{Counters, RanAt};
use crate::sync::{
    fence, spin_hint, yield_now, Arc, AtomicBool, AtomicPtr, AtomicU32, AtomicU64, Ordering,
};
use crossbeam_utils::CachePadded;
use std::marker::PhantomData;
use std::ptr;
use std::time::Instant;

pub(crate) const FREE: u64 = 0;
pub(crate) const ONLINE: u64 = 1;
pub(crate) const OFFLINE: u64 = 2;
pub(crate) const BUSY: u64 = 4;
pub(crate) const RETIRED: u64 = 8;
const STATE: u64 = 0xff;
const GEN_SHIFT: u32 = 8;

/// The state bits of a `ctl` value.
#[inline(always)]
pub(crate) fn state(ctl: u64) -> u64 {
    ctl & STATE
}

/// The binding generation of a `ctl` value.
#[inline(always)]
pub(crate) fn generation(ctl: u64) -> u64 {
    ctl >> GEN_SHIFT
}

fn ctl_of(gen: u64, st: u64) -> u64 {
    (gen << GEN_SHIFT) | st
}

/// In which context a pending item runs, which decides what its locks do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CtxKind {
    /// On the owner's thread (section end, quiescent point): the owner's
    /// exclusion is already in force.
    Owner,
    /// On a `queue` drainer's thread, holding the slot's claim word with the
    /// owner's section closed: nobody else touches the slot's data.
    Claimed,
    /// On another thread, `remote` mode: each cell is locked with its lock.
    RemoteLocked,
    /// On another thread holding the slot's `BUSY` (owner absent or offline).
    Busy,
}

/// How one run goes: its context, where it is counted, and the deadline
/// of remote lock waits (the drain-all's; `None` in the owner's contexts,
/// whose locks never wait on themselves).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RunCtx {
    pub(crate) kind: CtxKind,
    pub(crate) at: RanAt,
    pub(crate) deadline: Option<Instant>,
}

impl RunCtx {
    pub(crate) fn owner(at: RanAt) -> Self {
        Self {
            kind: CtxKind::Owner,
            at,
            deadline: None,
        }
    }
}

/// An item on a slot's pending stack. Embedded first in the item it stands
/// for (`#[repr(C)]`), which provides the two functions.
pub(crate) struct Node<C: Config> {
    pub(crate) next: AtomicPtr<Node<C>>,
    /// Runs the item once and gives up the stack's reference to it.
    pub(crate) run: unsafe fn(*const Node<C>, &SlotState<C>, RunCtx),
    /// Gives up the stack's reference without running (the slot goes away).
    pub(crate) release: unsafe fn(*const Node<C>),
}

/// One slot's shared state, on three cache-line pairs by who writes them:
/// the owner's section sequence counter (written on every local section),
/// the control fields (written when ownership changes or work is pushed;
/// read by remote callers and, at every section's end, by the owner), and
/// the counters (written by whoever runs a work).
pub(crate) struct SlotState<C: Config> {
    /// The owner's section counter (the `preempt_count` analogue) and the
    /// slot's claim word (see `section.rs`): odd while the owner is in a
    /// local section (or offline), bumped at every entry and exit, so a
    /// remote caller can tell an owner that is running (the counter moves)
    /// from one preempted inside a section (it does not). Written only by
    /// the owner's thread.
    pub(crate) section: CachePadded<Section>,
    /// State and binding generation (see the module docs).
    pub(crate) ctl: AtomicU64,
    pub(crate) head: AtomicPtr<Node<C>>,
    /// The current binding pinned its thread to CPU `cpu` alone: a `queue`
    /// drain fences that CPU only (see `fence.rs`). Written by the binder
    /// before the binding is published.
    pub(crate) pinned: AtomicBool,
    /// Remote contexts that hold, or are about to take, a lock of this
    /// slot's cells or its claim word: a fork child retires a slot whose
    /// count is not zero (a vanished thread may hold a lock with the data
    /// half-changed).
    pub(crate) remote_holders: AtomicU32,
    /// Closed (`true`) by the owner's thread while it forks (see
    /// [`fork_close`](Self::fork_close)): no new remote context enters the
    /// slot, so none can be copied into the child holding its cells.
    pub(crate) fork_gate: AtomicBool,
    /// Shared by every slot of the domain: a remote caller once spun long on
    /// a cell lock, so owners here get preempted inside their sections (the
    /// machine is overcommitted), and `remote` callers check an owner's
    /// section counter before waiting on it. Sticky for the domain's life.
    pub(crate) owner_preempted: Arc<AtomicBool>,
    /// The slot's mode (`auto` resolved; `remote` where `queue` was asked
    /// for and the kernel refuses the fence).
    pub(crate) mode: SlotMode,
    /// Why `mode` is what it is.
    pub(crate) mode_reason: ModeReason,
    pub(crate) cpu: usize,
    pub(crate) domain_id: usize,
    pub(crate) counters: CachePadded<Counters>,
    _c: PhantomData<C>,
}

/// What [`SlotState::help`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Helped {
    /// Nothing is pending.
    Idle,
    /// Work is pending and the owner is online: it is the owner's to run.
    Online,
    /// Another remote thread holds the slot; it will look again when it lets go.
    Busy,
    /// The slot is retired: what is pending never runs.
    Retired,
}

/// How a [`SlotState::drain_fenced`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fenced {
    /// The pending stack was run (or found empty).
    Ran,
    /// The slot left this binding's `ONLINE` meanwhile: look again.
    Changed,
    /// The deadline passed waiting for the claim word or for the owner's
    /// section to close; the work stays queued (the owner's section end runs it).
    Timeout,
    /// The kernel refused the fence (counted); the work stays queued for
    /// the owner's section end.
    Refused,
    /// The owner is forking (its fork gate is closed): it runs the stack
    /// when it opens the gate again.
    Forking,
}

/// Why [`SlotState::acquire_owner`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AcquireError {
    Owned,
    Retired,
}

/// Counts a remote context on the slot while it lives (see `remote_holders`).
pub(crate) struct RemoteHold<'a>(&'a AtomicU32);

impl Drop for RemoteHold<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl<C: Config> SlotState<C> {
    pub(crate) fn new(
        cpu: usize,
        mode: SlotMode,
        mode_reason: ModeReason,
        domain_id: usize,
        owner_preempted: Arc<AtomicBool>,
    ) -> Self {
        Self {
            section: CachePadded::new(Section::new()),
            ctl: AtomicU64::new(FREE),
            head: AtomicPtr::new(ptr::null_mut()),
            pinned: AtomicBool::new(false),
            remote_holders: AtomicU32::new(0),
            fork_gate: AtomicBool::new(false),
            owner_preempted,
            mode,
            mode_reason,
            cpu,
            domain_id,
            counters: CachePadded::new(Counters::default()),
            _c: PhantomData,
        }
    }

    /// Pushes `node`, whose reference the caller hands to the stack.
    pub(crate) fn push(&self, node: *const Node<C>) {
        let np = node as *mut Node<C>;
        let mut h = self.head.load(Ordering::Relaxed);
        loop {
            // SAFETY: the caller handed us a reference: the node is live.
            unsafe { &*node }.next.store(h, Ordering::Relaxed);
            match self
                .head
                .compare_exchange_weak(h, np, Ordering::SeqCst, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(now) => h = now,
            }
        }
    }

    #[inline]
    pub(crate) fn has_pending(&self) -> bool {
        !self.head.load(Ordering::Relaxed).is_null()
    }

    /// The current state bits.
    #[inline]
    pub(crate) fn state(&self) -> u64 {
        state(self.ctl.load(Ordering::SeqCst))
    }

    pub(crate) fn is_retired(&self) -> bool {
        self.state() & RETIRED != 0
    }

    /// Counts a remote context until the returned guard drops, unless the
    /// slot's fork gate is closed (`None`: its owner is forking).
    ///
    /// Count, `SeqCst` fence, then look at the gate; the forking owner
    /// closes the gate, fence, then reads the count. One of the two sees
    /// the other: either this context backs out, or the owner waits for it.
    /// (Fences rather than `SeqCst` accesses alone: loom checks fences.)
    pub(crate) fn enter_remote(&self) -> Option<RemoteHold<'_>> {
        self.remote_holders.fetch_add(1, Ordering::SeqCst);
        let hold = RemoteHold(&self.remote_holders);
        fence(Ordering::SeqCst);
        if self.fork_gate.load(Ordering::SeqCst) {
            return None; // `hold` drops: the count goes back
        }
        Some(hold)
    }

    /// [`enter_remote`](Self::enter_remote), waiting (yielding) while the
    /// gate is closed, at most until `deadline` (`None` past it).
    pub(crate) fn enter_remote_until(&self, deadline: Instant) -> Option<RemoteHold<'_>> {
        loop {
            if let Some(h) = self.enter_remote() {
                return Some(h);
            }
            if Instant::now() >= deadline {
                return None;
            }
            spin_hint();
            yield_now();
        }
    }

    /// Parent, the owner's thread, before `fork()`: closes the fork gate,
    /// then waits until no remote context is on the slot (no cell lock of
    /// it held by another thread) and no remote thread holds its `BUSY`,
    /// so the child's copy of the slot has nothing held by a vanished
    /// thread. `false` if `deadline` passed first (counted in
    /// `fork_waits_expired`; the child may then find a cell held).
    pub(crate) fn fork_close(&self, deadline: Instant) -> bool {
        self.fork_gate.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        loop {
            if self.remote_holders.load(Ordering::SeqCst) == 0
                && self.ctl.load(Ordering::SeqCst) & BUSY == 0
            {
                return true;
            }
            if Instant::now() >= deadline {
                self.counters.fork_wait_expired();
                return false;
            }
            spin_hint();
            yield_now();
        }
    }

    /// After `fork()`, parent and child, the owner's thread: opens the gate
    /// again. `help`: run what remote callers left on the stack meanwhile
    /// (the parent; `deadline` bounds its lock waits).
    pub(crate) fn fork_open(&self, help: Option<Instant>) {
        self.fork_gate.store(false, Ordering::SeqCst);
        if let Some(deadline) = help {
            self.help(true, Some(deadline));
        }
    }

    /// Runs every pending item in context `run`. The caller has exclusive
    /// access to the slot's data in that context.
    pub(crate) fn run_pending(&self, run: RunCtx) {
        loop {
            let mut list = self.head.swap(ptr::null_mut(), Ordering::SeqCst);
            if list.is_null() {
                return;
            }
            // The stack is LIFO; reverse it so items run in the order queued.
            let mut fifo: *mut Node<C> = ptr::null_mut();
            while !list.is_null() {
                // SAFETY: every node on the stack is live: the stack owns a
                // reference to it, and we took the whole stack.
                let n = unsafe { &*list };
                let next = n.next.load(Ordering::Relaxed);
                n.next.store(fifo, Ordering::Relaxed);
                fifo = list;
                list = next;
            }
            while !fifo.is_null() {
                // SAFETY: as above; `next` is read before `run` gives up the
                // reference, after which the node may be queued again or freed.
                let n = unsafe { &*fifo };
                let run_fn = n.run;
                let this = fifo;
                fifo = n.next.load(Ordering::Relaxed);
                // SAFETY: `this` carries the stack's reference, handed to `run`.
                unsafe { run_fn(this, self, run) };
            }
        }
    }

    /// Whether the owner is inside a local section (or offline).
    #[inline(always)]
    pub(crate) fn section_open(&self, order: Ordering) -> bool {
        self.section.open(order)
    }

    /// Owner's thread only: opens a section (see `section.rs`), waiting
    /// while a `queue` drainer holds the slot.
    #[inline(always)]
    pub(crate) fn enter(&self) -> Entered {
        self.section.enter(&self.counters)
    }

    /// Owner's thread only: closes the section `e`.
    #[inline(always)]
    pub(crate) fn leave(&self, e: Entered) {
        self.section.leave(e)
    }

    /// Runs pending work on the owner's thread (section end, quiescent
    /// point), inside a section of its own.
    pub(crate) fn run_pending_as_owner(&self, at: RanAt) {
        loop {
            let e = self.enter();
            self.run_pending(RunCtx::owner(at));
            self.leave(e);
            if self.head.load(Ordering::SeqCst).is_null() {
                return;
            }
        }
    }

    /// Tries to take a slot whose owner is absent or offline (sets `BUSY`).
    /// Fails on a slot running `remote` (its data is the cells' locks').
    pub(crate) fn try_take(&self) -> bool {
        if self.mode == SlotMode::Remote {
            return false;
        }
        let s = self.ctl.load(Ordering::SeqCst);
        let st = state(s);
        if st == ONLINE || st & (BUSY | RETIRED) != 0 {
            return false;
        }
        if self
            .ctl
            .compare_exchange(s, s | BUSY, Ordering::SeqCst, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        // Set `BUSY`, then look at the fork gate (the forking owner closes
        // it, then reads `ctl`): a closed gate means back out.
        fence(Ordering::SeqCst);
        if self.fork_gate.load(Ordering::SeqCst) {
            self.ctl.fetch_and(!BUSY, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// Lets go of a slot taken with [`try_take`](Self::try_take), then runs
    /// whatever was queued meanwhile.
    pub(crate) fn release(&self) {
        self.ctl.fetch_and(!BUSY, Ordering::SeqCst);
        self.help(false, None);
    }

    /// Runs pending work on behalf of an owner that is absent or offline
    /// (or, in `remote` mode, outside a local section; in `queue` mode, with
    /// a `deadline`, after fencing it: [`drain_fenced`](Self::drain_fenced)).
    /// `caller_owns`: the caller is this slot's owner (then, outside a
    /// section, it runs the work itself: a quiescent point). `deadline`
    /// bounds remote lock waits and fenced drains; without one an online
    /// `queue` owner is left to run the work at its section's end.
    pub(crate) fn help(&self, caller_owns: bool, deadline: Option<Instant>) -> Helped {
        loop {
            if self.head.load(Ordering::SeqCst).is_null() {
                return Helped::Idle;
            }
            let st = self.state();
            if st & RETIRED != 0 {
                return Helped::Retired;
            }
            if st == ONLINE && caller_owns {
                if self.section_open(Ordering::Relaxed) {
                    return Helped::Online;
                }
                self.run_pending_as_owner(RanAt::Quiescent);
                continue;
            }
            if self.mode == SlotMode::Remote {
                // The cells' locks protect the data; only an owner inside
                // a section (which runs the stack when it leaves) is waited for.
                if st == ONLINE && self.section_open(Ordering::SeqCst) {
                    return Helped::Online;
                }
                let Some(_hold) = self.enter_remote() else {
                    // The owner is forking: it runs the stack when it
                    // opens the gate again.
                    return Helped::Online;
                };
                self.run_pending(RunCtx {
                    kind: CtxKind::RemoteLocked,
                    at: RanAt::RemoteLocked,
                    deadline: Some(deadline.unwrap_or_else(far_deadline)),
                });
                continue;
            }
            if st == ONLINE {
                if self.mode == SlotMode::Queue {
                    if let Some(d) = deadline {
                        match self.drain_fenced(d) {
                            Fenced::Ran | Fenced::Changed => continue,
                            Fenced::Timeout | Fenced::Refused | Fenced::Forking => {}
                        }
                    }
                }
                return Helped::Online;
            }
            if st & BUSY != 0 {
                return Helped::Busy;
            }
            if self.try_take() {
                self.run_pending(RunCtx {
                    kind: CtxKind::Busy,
                    at: RanAt::ForAbsentOwner,
                    deadline,
                });
                self.ctl.fetch_and(!BUSY, Ordering::SeqCst);
            } else if self.fork_gate.load(Ordering::SeqCst) {
                // The owner is forking: it runs the stack when it opens
                // the gate again.
                return Helped::Online;
            }
        }
    }

    /// `remote` mode: whether to run work now under the cell locks (`true`)
    /// or leave it to the owner's section end (`false`).
    ///
    /// `false` when an online owner sits in one local section without
    /// moving for a while: a userspace owner can be preempted while it holds
    /// its lock, and waiting on it would stall the caller for a scheduler
    /// time slice, slot after slot. An owner that is running bumps its
    /// counter every few nanoseconds: then `true`. The counter is only read
    /// for slots whose owner was once caught preempted holding a lock in
    /// this domain (`owner_preempted`). And `false` when the caller is the
    /// owner itself, inside a section: it would wait on itself.
    pub(crate) fn run_now_remote(&self, caller_owns: bool) -> bool {
        #[cfg(not(qpw_loom))]
        const SPINS: u32 = 256;
        #[cfg(qpw_loom)]
        const SPINS: u32 = 2;
        if caller_owns {
            return !self.section_open(Ordering::Relaxed);
        }
        // The models explore the check whatever the hint says.
        #[cfg(not(qpw_loom))]
        if !self.owner_preempted.load(Ordering::Relaxed) {
            return true;
        }
        let first = self.section.seq.load(Ordering::SeqCst);
        let mut spins = 0;
        while self.state() == ONLINE && first & 1 != 0 {
            spin_hint();
            if self.section.seq.load(Ordering::SeqCst) != first {
                return true;
            }
            spins += 1;
            if spins > SPINS {
                return false;
            }
        }
        true
    }

    /// `queue` mode, owner online, caller another thread: claims the slot,
    /// fences the owner's CPU, waits (until `deadline`) for the owner's
    /// section to close, runs the pending stack on this thread, and lets go
    /// of the claim (handing it to an owner that waits for it). See the
    /// module docs and `fence.rs` for why the owner is out of its data.
    pub(crate) fn drain_fenced(&self, deadline: Instant) -> Fenced {
        let Some(_hold) = self.enter_remote() else {
            return Fenced::Forking;
        };
        let s = self.ctl.load(Ordering::SeqCst);
        if state(s) != ONLINE {
            return Fenced::Changed;
        }
        if self
            .section
            .claim
            .lock_remote(&self.counters, None, deadline)
            .is_err()
        {
            return Fenced::Timeout;
        }
        let out = self.drain_claimed(s, deadline);
        self.section.claim.unlock_remote();
        out
    }

    /// [`drain_fenced`](Self::drain_fenced) with the claim held; `s`: the
    /// binding's `ctl` when the drain began.
    fn drain_claimed(&self, s: u64, deadline: Instant) -> Fenced {
        if self.ctl.load(Ordering::SeqCst) != s {
            return Fenced::Changed;
        }
        if self.head.load(Ordering::SeqCst).is_null() {
            return Fenced::Ran;
        }
        let pinned = self.pinned.load(Ordering::SeqCst).then_some(self.cpu);
        match crate::fence::issue(pinned) {
            Ok(kind) => self
                .counters
                .fenced(kind == crate::fence::FenceKind::Targeted),
            Err(_) => {
                self.counters.fence_refused();
                return Fenced::Refused;
            }
        }
        let mut spins = 0u32;
        loop {
            // The counter first (acquire: the closed section's writes), then
            // `ctl`: an owner that went offline or away did so in a section.
            let even = !self.section.open(Ordering::Acquire);
            if self.ctl.load(Ordering::SeqCst) != s {
                return Fenced::Changed;
            }
            if even {
                break;
            }
            spins = spins.saturating_add(1);
            if spins < 64 {
                spin_hint();
                continue;
            }
            if spins % 16 == 0 && Instant::now() >= deadline {
                return Fenced::Timeout;
            }
            yield_now();
        }
        self.run_pending(RunCtx {
            kind: CtxKind::Claimed,
            at: RanAt::Fenced,
            deadline: Some(deadline),
        });
        Fenced::Ran
    }

    /// Takes an unowned slot for binding: `FREE` → `FREE|BUSY`, waiting out a
    /// remote thread's `BUSY`. Returns the new binding's generation; the
    /// caller links its record, then [`publish_owner`](Self::publish_owner)s
    /// (or [`abort_acquire`](Self::abort_acquire)s).
    pub(crate) fn acquire_owner(&self) -> Result<u64, AcquireError> {
        let gen = loop {
            let s = self.ctl.load(Ordering::SeqCst);
            let st = state(s);
            if st & RETIRED != 0 {
                return Err(AcquireError::Retired);
            }
            if st == FREE {
                if self
                    .ctl
                    .compare_exchange(s, s | BUSY, Ordering::SeqCst, Ordering::Relaxed)
                    .is_ok()
                {
                    break generation(s).wrapping_add(1);
                }
                continue;
            }
            if st == FREE | BUSY {
                spin_hint();
                yield_now();
                continue;
            }
            return Err(AcquireError::Owned);
        };
        self.section.seq.store(0, Ordering::Relaxed);
        Ok(gen)
    }

    /// Publishes the binding of generation `gen`: the slot is `ONLINE`.
    /// `pinned`: its thread runs on CPU `cpu` alone (see `fence.rs`).
    pub(crate) fn publish_owner(&self, gen: u64, pinned: bool) {
        self.pinned.store(pinned, Ordering::SeqCst);
        self.ctl.store(ctl_of(gen, ONLINE), Ordering::SeqCst);
    }

    /// Gives up a slot taken by `acquire_owner` without binding it.
    pub(crate) fn abort_acquire(&self) {
        self.ctl.fetch_and(!BUSY, Ordering::SeqCst);
        self.help(false, None);
    }

    /// The owner leaves: runs its pending work and frees the slot. The
    /// caller then unlinks its record and calls [`help`](Self::help) for
    /// what was queued meanwhile.
    ///
    /// The slot changes hands inside a section: a `queue` drainer holding
    /// the claim finishes first (the section waits for it), and one that
    /// claims later finds the slot no longer this binding's. `BUSY` keeps
    /// the next binder out until the section is closed.
    pub(crate) fn release_owner(&self, gen: u64) {
        let st = self.state();
        if st & RETIRED != 0 {
            return;
        }
        if st & OFFLINE != 0 {
            // A parked implicit owner leaving with its thread.
            self.go_online(gen);
        }
        self.run_pending_as_owner(RanAt::Quiescent);
        let e = self.enter();
        let left = self
            .ctl
            .compare_exchange(
                ctl_of(gen, ONLINE),
                ctl_of(gen, FREE | BUSY),
                Ordering::SeqCst,
                Ordering::Relaxed,
            )
            .is_ok();
        self.pinned.store(false, Ordering::SeqCst);
        self.leave(e);
        if left {
            self.ctl.fetch_and(!BUSY, Ordering::SeqCst);
        }
    }

    /// The owner goes idle: remote threads may work on the slot directly.
    /// As [`release_owner`](Self::release_owner), the state changes inside
    /// a section, which stays open while offline (the counter odd).
    pub(crate) fn go_offline(&self, gen: u64) {
        self.run_pending_as_owner(RanAt::Quiescent);
        let e = self.enter();
        let _ = self.ctl.compare_exchange(
            ctl_of(gen, ONLINE),
            ctl_of(gen, OFFLINE),
            Ordering::SeqCst,
            Ordering::Relaxed,
        );
        self.section.park(e);
        self.help(false, None);
    }

    /// The owner comes back: waits out a remote thread's `BUSY`, then runs
    /// what was queued meanwhile.
    pub(crate) fn go_online(&self, gen: u64) {
        loop {
            match self.ctl.compare_exchange(
                ctl_of(gen, OFFLINE),
                ctl_of(gen, ONLINE),
                Ordering::SeqCst,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                // Retired in a fork child (a vanished thread held it): the
                // slot stays out of use.
                Err(s) if state(s) & RETIRED != 0 => return,
                Err(_) => {
                    spin_hint();
                    yield_now();
                }
            }
        }
        // Close the section left open while offline.
        self.section.unpark();
        if !self.head.load(Ordering::SeqCst).is_null() {
            self.run_pending_as_owner(RanAt::Quiescent);
        }
    }

    /// Fork child, forking thread (the only thread): makes the slot usable.
    /// `mine`: the slot's binding is the forking thread's (it keeps it).
    /// Any other binding's thread is gone:
    /// its slot is handed over (freed) only when its data is known to be
    /// consistent (owner between sections, no `BUSY`, no remote context on
    /// it, claim word free), and retired otherwise, never to be touched again.
    pub(crate) fn fork_child(&self, mine: bool) {
        let s = self.ctl.load(Ordering::Relaxed);
        let st = state(s);
        // Closed by another thread forking at the same time (the forking
        // thread's own gates are opened after the consumer hooks).
        if !mine {
            self.fork_gate.store(false, Ordering::Relaxed);
        }
        if mine {
            return;
        }
        if st & RETIRED != 0 || (st == FREE && self.remote_holders.load(Ordering::Relaxed) == 0) {
            return;
        }
        // The claim word too: a drainer may have handed it to the owner
        // (`FUTEX_UNLOCK_PI`) and left before the owner returned from the
        // kernel; the word then names a thread the child does not have, and
        // the next binder's sections would wait on it for ever.
        let consistent = st & BUSY == 0
            && self.remote_holders.load(Ordering::Relaxed) == 0
            && self.section.claim.raw_load(Ordering::Relaxed) == 0
            && match st {
                ONLINE => !self.section_open(Ordering::Relaxed),
                OFFLINE => true,
                _ => false,
            };
        let next = if consistent {
            self.section.seq.store(0, Ordering::Relaxed);
            self.pinned.store(false, Ordering::Relaxed);
            ctl_of(generation(s), FREE)
        } else {
            ctl_of(generation(s), RETIRED)
        };
        self.remote_holders.store(0, Ordering::Relaxed);
        self.ctl.store(next, Ordering::SeqCst);
    }
}

/// A deadline no wait reaches (loops that must end use the caller's).
pub(crate) fn far_deadline() -> Instant {
    Instant::now() + std::time::Duration::from_secs(86_400 * 365)
}

impl<C: Config> Drop for SlotState<C> {
    fn drop(&mut self) {
        // Nobody can run these any more: give up the stack's references.
        let mut list = self.head.swap(ptr::null_mut(), Ordering::SeqCst);
        while !list.is_null() {
            // SAFETY: each node on the stack is live while the stack holds it.
            let n = unsafe { &*list };
            let next = n.next.load(Ordering::Relaxed);
            let release = n.release;
            // SAFETY: hands the stack's reference to its release function.
            unsafe { release(list) };
            list = next;
        }
    }
}
