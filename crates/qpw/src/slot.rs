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
//! | `ONLINE` | an owner is running | the owner's contexts (its code, its signal handler); in `remote` mode anyone holding a cell's lock |
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

use crate::config::{Config, ModeReason, SlotMode};
use crate::stats::{Counters, RanAt};
use crate::sync::{
    fence, signal_fence, spin_hint, yield_now, Arc, AtomicBool, AtomicPtr, AtomicU32, AtomicU64,
    Ordering,
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
/// `sig_word`: a send is claimed and no handler has started since.
pub(crate) const SIG_CLAIMED: u32 = 1;
/// `sig_word`: the claimed send's `tgkill` succeeded.
const SIG_SENT: u32 = 2;
/// `sig_word`: one claim in the count above the two flags.
const SIG_CLAIM_ONE: u32 = 4;
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
    /// On the owner's thread (signal handler, section end, quiescent point):
    /// the owner's exclusion is already in force.
    Owner,
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
    /// The owner's section sequence counter (the `preempt_count` analogue):
    /// odd while the owner is in a local section (or offline), and bumped at
    /// every entry and exit, so a remote caller can tell an owner that is
    /// running (the counter moves) from one preempted inside a section (it
    /// does not). Written only by the owner's thread: its code, and its
    /// signal handler while the counter is even, which leaves it even again.
    pub(crate) section_seq: CachePadded<AtomicU32>,
    /// State and binding generation (see the module docs).
    pub(crate) ctl: AtomicU64,
    pub(crate) head: AtomicPtr<Node<C>>,
    /// The owner's kernel thread id while bound (updated in a fork child).
    pub(crate) tid: AtomicU32,
    /// The signal in flight (see [`SIG_CLAIMED`]): bit 0, a sender claimed
    /// the send (or its signal is on its way) and no handler has started
    /// since; bit 1, that send's `tgkill` succeeded; above, a count of
    /// claims, so a flusher's compare-and-swap fails if the signal it
    /// looked at was handled and another one sent meanwhile.
    pub(crate) sig_word: AtomicU32,
    /// The last send failed (`EAGAIN`): a flusher sends again.
    pub(crate) sig_failed: AtomicBool,
    /// Remote contexts that hold, or are about to take, a lock of this
    /// slot's cells: a fork child retires a slot whose count is not zero
    /// (a vanished thread may hold a lock with the data half-changed).
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
    /// The slot's mode as the domain was built (`auto` resolved).
    pub(crate) mode: SlotMode,
    /// Why `mode` is what it is (configured, or an isolated CPU under `auto`).
    pub(crate) mode_reason: ModeReason,
    /// The mode the slot runs in, and why (`mode_word`): `mode` except
    /// while a `queue` slot's owner bound it with the signal blocked (then
    /// `remote`). Written only by a thread holding `BUSY` (binding, or the
    /// owner releasing), before the binding is published `ONLINE` or after
    /// it left it; see [`set_effective`](Self::set_effective).
    pub(crate) effective: AtomicU32,
    /// Signals sent since the owner's handler last ran for this slot.
    pub(crate) unhandled_sends: AtomicU32,
    pub(crate) cpu: usize,
    pub(crate) domain_id: usize,
    pub(crate) signal: i32,
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

/// `effective`'s encoding.
fn mode_word(mode: SlotMode, why: ModeReason) -> u32 {
    mode.code() | why.code() << 8
}

impl<C: Config> SlotState<C> {
    /// The mode the slot runs in now (see `effective`).
    #[inline]
    pub(crate) fn eff_mode(&self) -> SlotMode {
        SlotMode::from_code(self.effective.load(Ordering::SeqCst) & 0xff)
    }

    /// The mode the slot runs in now, read by a remote context that has
    /// just counted itself in `remote_holders` (see
    /// [`set_effective`](Self::set_effective)). A read-modify-write, so it
    /// reads the latest mode: with the binder's read-modify-write of the
    /// count this makes the "count, then look" / "change, then look" pair
    /// hold in the models too (loom treats a `SeqCst` load as acquire only).
    pub(crate) fn eff_mode_counted(&self) -> SlotMode {
        SlotMode::from_code(self.effective.fetch_add(0, Ordering::SeqCst) & 0xff)
    }

    /// The mode the slot runs in now, and why.
    pub(crate) fn eff_info(&self) -> (SlotMode, ModeReason) {
        let w = self.effective.load(Ordering::SeqCst);
        (SlotMode::from_code(w & 0xff), ModeReason::from_code(w >> 8))
    }

    /// Sets the effective mode; the mode actually set is returned. The
    /// caller holds `BUSY` (it is binding the slot, or its owner is leaving
    /// it), so no owner runs and no thread runs work as the absent owner.
    /// Leaving `remote`, it waits until the remote contexts still counted
    /// on the slot (running work under the cells' locks, or a
    /// `RemoteGuard`) are done: each counts itself, then reads the mode
    /// again (`SeqCst` both sides: either it sees the new mode and backs
    /// off, or this sees its count and waits), so none is left under a cell
    /// lock when an owner that takes no lock comes online.
    ///
    /// The wait ends at `deadline` (the domain's flush timeout from the
    /// bind or unbind): a `RemoteGuard` may be held for any time. Past it
    /// the slot stays `remote` (`ModeReason::RemoteContextOutstayed`,
    /// counted in `mode_waits_expired`): remote contexts that backed off
    /// meanwhile look again and find `remote`; a binder binds `remote`.
    pub(crate) fn set_effective(
        &self,
        mode: SlotMode,
        why: ModeReason,
        deadline: Instant,
    ) -> (SlotMode, ModeReason) {
        let old = self.effective.swap(mode_word(mode, why), Ordering::SeqCst);
        if SlotMode::from_code(old & 0xff) == SlotMode::Remote && mode != SlotMode::Remote {
            while self.remote_holders.fetch_add(0, Ordering::SeqCst) != 0 {
                if Instant::now() >= deadline {
                    let stay = (SlotMode::Remote, ModeReason::RemoteContextOutstayed);
                    self.effective
                        .swap(mode_word(stay.0, stay.1), Ordering::SeqCst);
                    self.counters.mode_wait_expired();
                    return stay;
                }
                spin_hint();
                yield_now();
            }
        }
        (mode, why)
    }

    pub(crate) fn new(
        cpu: usize,
        mode: SlotMode,
        mode_reason: ModeReason,
        domain_id: usize,
        signal: i32,
        owner_preempted: Arc<AtomicBool>,
    ) -> Self {
        Self {
            section_seq: CachePadded::new(AtomicU32::new(0)),
            ctl: AtomicU64::new(FREE),
            head: AtomicPtr::new(ptr::null_mut()),
            tid: AtomicU32::new(0),
            sig_word: AtomicU32::new(0),
            sig_failed: AtomicBool::new(false),
            remote_holders: AtomicU32::new(0),
            fork_gate: AtomicBool::new(false),
            owner_preempted,
            mode,
            mode_reason,
            effective: AtomicU32::new(mode_word(mode, mode_reason)),
            unhandled_sends: AtomicU32::new(0),
            cpu,
            domain_id,
            signal,
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
        self.section_seq.load(order) & 1 != 0
    }

    /// Owner's thread only: enters a section (even → odd); returns the even
    /// value to give [`leave`](Self::leave). A plain load and store: only
    /// this thread writes the counter.
    ///
    /// # Panics
    /// If the owner is already in a section: a work function running in
    /// this thread's signal handler that reached its owner (through
    /// `with_local`) would alias the data. Checked before anything changes.
    #[inline(always)]
    pub(crate) fn enter(&self) -> u32 {
        let v = self.section_seq.load(Ordering::Relaxed);
        assert!(
            v & 1 == 0,
            "qpw: local section entered from inside this slot's work"
        );
        self.section_seq.store(v.wrapping_add(1), Ordering::Relaxed);
        signal_fence(Ordering::SeqCst);
        v
    }

    /// Owner's thread only: leaves the section entered when the counter was `v`.
    #[inline(always)]
    pub(crate) fn leave(&self, v: u32) {
        signal_fence(Ordering::SeqCst);
        self.section_seq.store(v.wrapping_add(2), Ordering::Relaxed);
        signal_fence(Ordering::SeqCst);
    }

    /// Runs pending work in one of the owner's own contexts (signal handler,
    /// section end, quiescent point), marking the owner in a section meanwhile
    /// so a signal arriving now leaves the work to this loop.
    pub(crate) fn run_pending_as_owner(&self, at: RanAt) {
        loop {
            let v = self.enter();
            self.run_pending(RunCtx::owner(at));
            self.leave(v);
            if self.head.load(Ordering::SeqCst).is_null() {
                return;
            }
        }
    }

    /// Tries to take a slot whose owner is absent or offline (sets `BUSY`).
    /// Fails on a slot running `remote` (its data is the cells' locks'),
    /// checked once `BUSY` is held, when the mode cannot change.
    pub(crate) fn try_take(&self) -> bool {
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
        if self.eff_mode_counted() == SlotMode::Remote {
            // Bound `remote` since the caller looked: let go, and run what
            // was queued meanwhile the `remote` way.
            self.release();
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
    /// (or, in `remote` mode, outside a local section). `caller_owns`: the
    /// caller is this slot's owner (then, outside a section, it runs the
    /// work itself: a quiescent point). `deadline` bounds remote lock waits.
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
            if self.eff_mode() == SlotMode::Remote {
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
                if self.eff_mode_counted() != SlotMode::Remote {
                    // A binder or a leaving owner changed it (see `set_effective`).
                    continue;
                }
                self.run_pending(RunCtx {
                    kind: CtxKind::RemoteLocked,
                    at: RanAt::RemoteLocked,
                    deadline: Some(deadline.unwrap_or_else(far_deadline)),
                });
                continue;
            }
            if st == ONLINE {
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
        let first = self.section_seq.load(Ordering::SeqCst);
        let mut spins = 0;
        while self.state() == ONLINE && first & 1 != 0 {
            spin_hint();
            if self.section_seq.load(Ordering::SeqCst) != first {
                return true;
            }
            spins += 1;
            if spins > SPINS {
                return false;
            }
        }
        true
    }

    /// After a push: gets the work to whoever may run it.
    pub(crate) fn kick(&self, caller_owns: bool, deadline: Option<Instant>) -> Helped {
        let h = self.help(caller_owns, deadline);
        if h == Helped::Online && self.eff_mode() == SlotMode::Queue && !caller_owns {
            self.signal_owner();
        }
        h
    }

    /// Sends the qpw signal to the online owner, unless one is already on its
    /// way (the handler clears the claim before it looks at `head`).
    pub(crate) fn signal_owner(&self) {
        // Claim the send: `SIG_CLAIMED` clear → set, with a new claim count.
        let mut w = self.sig_word.load(Ordering::SeqCst);
        let claim = loop {
            if w & SIG_CLAIMED != 0 {
                return;
            }
            let next = (w & !(SIG_CLAIMED | SIG_SENT)).wrapping_add(SIG_CLAIM_ONE) | SIG_CLAIMED;
            match self
                .sig_word
                .compare_exchange(w, next, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => break next,
                Err(now) => w = now,
            }
        };
        let s = self.ctl.load(Ordering::SeqCst);
        if state(s) != ONLINE {
            self.clear_signal_claim();
            return;
        }
        let tid = self.tid.load(Ordering::SeqCst);
        match crate::sys::signal_thread(tid as i32, self.signal) {
            Ok(()) => {
                // Sent: a flusher may now ask the kernel about it (see
                // `resend`). Fails harmlessly if a handler already ran.
                let _ = self.sig_word.compare_exchange(
                    claim,
                    claim | SIG_SENT,
                    Ordering::SeqCst,
                    Ordering::Relaxed,
                );
                self.unhandled_sends.fetch_add(1, Ordering::Relaxed);
                self.counters.signal_sent()
            }
            Err(e) => {
                // Not sent (EAGAIN: the signal queue is full; ESRCH: the
                // thread is gone): nothing is in flight, and a flusher sends
                // again (see `resend`).
                self.clear_signal_claim();
                self.sig_failed.store(true, Ordering::SeqCst);
                self.counters.signal_failed();
                if e == crate::sys::ESRCH {
                    self.owner_thread_gone(s, tid);
                }
            }
        }
    }

    /// Whether a signal is claimed or on its way with no handler started since.
    pub(crate) fn signal_in_flight(&self) -> bool {
        self.sig_word.load(Ordering::SeqCst) & SIG_CLAIMED != 0
    }

    /// Clears the in-flight claim (a handler started, the send failed, or
    /// no signal can arrive any more); the claim count stays.
    pub(crate) fn clear_signal_claim(&self) {
        self.sig_word
            .fetch_and(!(SIG_CLAIMED | SIG_SENT), Ordering::SeqCst);
    }

    /// The thread of binding `s` (thread id `tid`, read after `s`) no longer
    /// exists: its owner was leaked (`mem::forget`) and its thread exited.
    /// If the slot still holds that very binding (same generation), nobody
    /// can touch its data any more: free it, or retire it if the thread
    /// left inside a section (its data may be half-changed). A newer
    /// binding (another generation) is never touched.
    fn owner_thread_gone(&self, s: u64, tid: u32) {
        if self.tid.load(Ordering::SeqCst) != tid {
            return;
        }
        let next = if self.section_open(Ordering::SeqCst) {
            ctl_of(generation(s), RETIRED)
        } else {
            ctl_of(generation(s), FREE)
        };
        if self
            .ctl
            .compare_exchange(s, next, Ordering::SeqCst, Ordering::Relaxed)
            .is_ok()
            && state(next) == FREE
        {
            self.help(false, None);
        }
    }

    /// For a flusher that has waited a while on an online owner in `queue`
    /// mode with work pending: if the last send failed (`EAGAIN`), send
    /// again. With `lost_too` (the flusher has waited long: an owner that
    /// only waits for a core takes its signal well before), a signal sent
    /// with no handler started since is sent again only if the kernel shows
    /// it neither pending nor blocked for the owner's thread
    /// (`sys::signal_view`): then it was lost (the thread was exiting as it
    /// arrived, or something else took it), counted in `signals_resent_lost`.
    /// A signal still pending (the owner was not scheduled, or blocks it for
    /// a while) is left alone: with a real-time signal a second send would
    /// queue a second delivery. An owner inside a section gets nothing: its
    /// section's end runs the work.
    ///
    /// The one duplicate left: the kernel has dequeued the signal and the
    /// thread is preempted before its handler's first store, exactly when
    /// the flusher looks (the owner then runs one empty handler).
    pub(crate) fn resend(&self, lost_too: bool) {
        if self.eff_mode() != SlotMode::Queue
            || self.state() != ONLINE
            || !self.has_pending()
            || self.section_open(Ordering::SeqCst)
        {
            return;
        }
        if self.sig_failed.swap(false, Ordering::SeqCst) {
            self.signal_owner();
            return;
        }
        if !lost_too {
            return;
        }
        // Only a signal whose `tgkill` returned (so it is pending or was
        // taken by now), with no handler started since.
        let w = self.sig_word.load(Ordering::SeqCst);
        if w & (SIG_CLAIMED | SIG_SENT) != SIG_CLAIMED | SIG_SENT {
            return;
        }
        let tid = self.tid.load(Ordering::SeqCst);
        // `None`: the status cannot be read (the thread is gone: the send
        // finds `ESRCH` and frees the slot) or the platform has no view.
        if let Some(v) = crate::sys::signal_view(tid, self.signal) {
            if v.pending || v.blocked {
                return;
            }
        }
        // The same claim still stands (no handler started, no other send):
        // it was lost. Clear it and send again.
        if self
            .sig_word
            .compare_exchange(
                w,
                w & !(SIG_CLAIMED | SIG_SENT),
                Ordering::SeqCst,
                Ordering::Relaxed,
            )
            .is_ok()
        {
            self.counters.signal_resent_lost();
            self.signal_owner();
        }
    }

    /// For a flusher whose deadline passed: what kept the online `queue`
    /// owner's handler from running, read from its thread's signal masks.
    /// `None` when nothing points at the signal (the owner is inside a
    /// section, offline, or simply slow). Read at the deadline, not before:
    /// a thread may block signals for a while (around a `fork`, in a
    /// library's critical region) and then take the signal and run the work;
    /// an early error would turn that delay into a failure.
    pub(crate) fn signal_trouble(&self) -> Option<(u32, crate::error::SignalTrouble)> {
        use crate::error::SignalTrouble;
        if self.eff_mode() != SlotMode::Queue || self.state() != ONLINE || !self.has_pending() {
            return None;
        }
        let tid = self.tid.load(Ordering::SeqCst);
        let view = crate::sys::signal_view(tid, self.signal)?;
        if view.blocked {
            return Some((
                tid,
                SignalTrouble::BlockedByOwner {
                    pending: view.pending,
                },
            ));
        }
        let sent = self.unhandled_sends.load(Ordering::Relaxed);
        // Outside a section, not blocked, not pending, and sent with no
        // handler run since (the in-flight mark is still set): taken by
        // someone else.
        if !self.section_open(Ordering::SeqCst)
            && !view.pending
            && sent > 0
            && self.signal_in_flight()
        {
            return Some((tid, SignalTrouble::NeverHandled { sent }));
        }
        None
    }

    /// The signal handler's work for this slot, for the binding of
    /// generation `gen` (the handler's record). Owner's thread, any point of
    /// its code.
    pub(crate) fn on_signal(&self, gen: u64) {
        // Whatever binding the signal was sent for, it has landed: clearing
        // the mark can at worst cause one more signal later.
        self.clear_signal_claim();
        self.unhandled_sends.store(0, Ordering::Relaxed);
        let s = self.ctl.load(Ordering::SeqCst);
        if generation(s) != gen {
            // The record is of a binding that is ending or not yet published.
            return;
        }
        if self.eff_mode() != SlotMode::Queue
            || state(s) != ONLINE
            || self.section_open(Ordering::Relaxed)
        {
            // In a local section (or offline): the section's end runs the work.
            return;
        }
        if !self.head.load(Ordering::SeqCst).is_null() {
            self.run_pending_as_owner(RanAt::Handler);
        }
    }

    /// Takes an unowned slot for binding: `FREE` → `FREE|BUSY`, waiting out a
    /// remote thread's `BUSY`. Returns the new binding's generation; the
    /// caller links its record, then [`publish_owner`](Self::publish_owner)s
    /// (or [`abort_acquire`](Self::abort_acquire)s).
    /// `eff`: the binding's effective mode and why, set while `BUSY` is held
    /// (waiting at most until `deadline` for remote contexts when that
    /// leaves `remote`; past it the binding runs `remote`): returned with
    /// the generation.
    pub(crate) fn acquire_owner(
        &self,
        tid: u32,
        eff: (SlotMode, ModeReason),
        deadline: Instant,
    ) -> Result<(u64, (SlotMode, ModeReason)), AcquireError> {
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
        let eff = self.set_effective(eff.0, eff.1, deadline);
        self.tid.store(tid, Ordering::SeqCst);
        self.section_seq.store(0, Ordering::Relaxed);
        self.clear_signal_claim();
        self.unhandled_sends.store(0, Ordering::Relaxed);
        Ok((gen, eff))
    }

    /// Publishes the binding of generation `gen`: the slot is `ONLINE`.
    pub(crate) fn publish_owner(&self, gen: u64) {
        self.ctl.store(ctl_of(gen, ONLINE), Ordering::SeqCst);
    }

    /// Gives up a slot taken by `acquire_owner` without binding it
    /// (`deadline`: see [`set_effective`](Self::set_effective)).
    pub(crate) fn abort_acquire(&self, deadline: Instant) {
        self.set_effective(self.mode, self.mode_reason, deadline);
        self.ctl.fetch_and(!BUSY, Ordering::SeqCst);
        self.help(false, None);
    }

    /// The owner leaves: runs its pending work and frees the slot. The
    /// caller then unlinks its record and calls [`help`](Self::help) for
    /// what was queued meanwhile. `deadline` bounds the wait for remote
    /// contexts when the slot leaves `remote` (see
    /// [`set_effective`](Self::set_effective)).
    pub(crate) fn release_owner(&self, gen: u64, deadline: Instant) {
        let st = self.state();
        if st & RETIRED != 0 {
            return;
        }
        if st & OFFLINE != 0 {
            // A parked implicit owner leaving with its thread.
            self.go_online(gen);
        }
        self.run_pending_as_owner(RanAt::Quiescent);
        if self.eff_mode() == self.mode {
            let _ = self.ctl.compare_exchange(
                ctl_of(gen, ONLINE),
                ctl_of(gen, FREE),
                Ordering::SeqCst,
                Ordering::Relaxed,
            );
            return;
        }
        // Back to the slot's own mode, under `BUSY` (see `set_effective`);
        // the caller helps with what was queued meanwhile.
        if self
            .ctl
            .compare_exchange(
                ctl_of(gen, ONLINE),
                ctl_of(gen, FREE | BUSY),
                Ordering::SeqCst,
                Ordering::Relaxed,
            )
            .is_ok()
        {
            self.set_effective(self.mode, self.mode_reason, deadline);
            self.ctl.fetch_and(!BUSY, Ordering::SeqCst);
        }
    }

    /// The owner goes idle: remote threads may work on the slot directly.
    pub(crate) fn go_offline(&self, gen: u64) {
        self.run_pending_as_owner(RanAt::Quiescent);
        // Keep the signal handler away while offline: an odd counter.
        self.enter();
        let _ = self.ctl.compare_exchange(
            ctl_of(gen, ONLINE),
            ctl_of(gen, OFFLINE),
            Ordering::SeqCst,
            Ordering::Relaxed,
        );
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
        // Back to even: the signal handler may run work again.
        self.leave(self.section_seq.load(Ordering::Relaxed).wrapping_sub(1));
        if !self.head.load(Ordering::SeqCst).is_null() {
            self.run_pending_as_owner(RanAt::Quiescent);
        }
    }

    /// Fork child, forking thread (the only thread): makes the slot usable.
    /// `mine`: the slot's binding is the forking thread's (it keeps it,
    /// with its new thread id `tid`). Any other binding's thread is gone:
    /// its slot is handed over (freed) only when its data is known to be
    /// consistent (owner between sections, no `BUSY`, no remote context on
    /// it), and retired otherwise, never to be touched again.
    pub(crate) fn fork_child(&self, mine: bool, tid: u32) {
        let s = self.ctl.load(Ordering::Relaxed);
        let st = state(s);
        // No signal sent in the parent reaches the child.
        self.sig_word.store(0, Ordering::Relaxed);
        // Closed by another thread forking at the same time (the forking
        // thread's own gates are opened after the consumer hooks).
        if !mine {
            self.fork_gate.store(false, Ordering::Relaxed);
        }
        if mine {
            self.tid.store(tid, Ordering::Relaxed);
            return;
        }
        if st & RETIRED != 0 || (st == FREE && self.remote_holders.load(Ordering::Relaxed) == 0) {
            return;
        }
        let consistent = st & BUSY == 0
            && self.remote_holders.load(Ordering::Relaxed) == 0
            && match st {
                ONLINE => !self.section_open(Ordering::Relaxed),
                OFFLINE => true,
                _ => false,
            };
        let next = if consistent {
            self.section_seq.store(0, Ordering::Relaxed);
            // Nobody else runs here: the slot's own mode again at once.
            self.effective
                .store(mode_word(self.mode, self.mode_reason), Ordering::Relaxed);
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
