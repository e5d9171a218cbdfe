//! The per-slot protocol: who may touch a slot's data, and how queued work
//! reaches whoever may.
//!
//! # State
//!
//! `ctl` says who holds the slot:
//!
//! | `ctl` | meaning | who may touch the slot's data |
//! |---|---|---|
//! | `FREE` | no owner | nobody until a remote thread sets `BUSY` |
//! | `ONLINE` | an owner is running | the owner's contexts (its code, its signal handler); in `remote` mode anyone holding a cell's lock |
//! | `OFFLINE` | the owner is idle | nobody until a remote thread sets `BUSY` |
//! | `FREE\|BUSY`, `OFFLINE\|BUSY` | a remote thread works on the slot | that thread alone |
//!
//! Pending work is an intrusive Treiber stack (`head`); pushing never
//! allocates, and consumers take the whole stack at once (no ABA).
//!
//! # No lost work
//!
//! Every path that may leave work behind follows "publish, then look" with
//! `SeqCst` on both sides: a pusher pushes, then reads `ctl`; a thread that
//! leaves `ONLINE` or drops `BUSY` writes `ctl`, then reads `head`. One of the
//! two sees the other, so the work is run by the owner, or by whichever thread
//! [`SlotState::help`]s it.

use crate::config::{Config, SlotMode};
use crate::stats::{Counters, RanAt};
use crate::sync::{
    signal_fence, spin_hint, yield_now, Arc, AtomicBool, AtomicPtr, AtomicU32, Ordering,
};
use crate::work::{CtxKind, WorkInner};
use crossbeam_utils::CachePadded;
use std::marker::PhantomData;
use std::ptr;

pub(crate) const FREE: u32 = 0;
pub(crate) const ONLINE: u32 = 1;
pub(crate) const OFFLINE: u32 = 2;
pub(crate) const BUSY: u32 = 4;

/// One slot's shared state, on three cache-line pairs by who writes them:
/// the owner's section counter (written on every local section), the
/// control fields (written when ownership changes or work is pushed; read
/// by remote callers and, at every section's end, by the owner), and the
/// counters (written by whoever runs a work). A remote caller in `remote`
/// mode then misses on the owner's line at most once per drain, and the
/// owner never misses on a line a caller wrote unless work was pushed.
pub(crate) struct SlotState<C: Config> {
    /// The owner's section counter (the `preempt_count` analogue): odd while
    /// the owner is in a local section (or offline), and bumped at every
    /// entry and exit, so a remote caller can tell an owner that is running
    /// (the counter moves) from one preempted inside a section (it does not).
    /// Written only by the owner's thread: its code, and its signal handler
    /// while the counter is even, which leaves it even again.
    pub(crate) in_section: CachePadded<AtomicU32>,
    pub(crate) ctl: AtomicU32,
    pub(crate) head: AtomicPtr<WorkInner<C>>,
    /// The owner's kernel thread id while `ONLINE`/`OFFLINE`.
    pub(crate) tid: AtomicU32,
    /// A signal was sent and its handler has not started yet.
    pub(crate) sig_inflight: AtomicBool,
    /// Shared by every slot of the domain: a remote caller once spun long on
    /// a cell lock, so owners here get preempted inside their sections (the
    /// machine is overcommitted), and `remote` callers check an owner's
    /// section counter before waiting on it. Sticky for the domain's life;
    /// owners that have a core of their own never set it.
    pub(crate) owner_preempted: Arc<AtomicBool>,
    pub(crate) mode: SlotMode,
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
}

impl<C: Config> SlotState<C> {
    pub(crate) fn new(
        cpu: usize,
        mode: SlotMode,
        domain_id: usize,
        signal: i32,
        owner_preempted: Arc<AtomicBool>,
    ) -> Self {
        Self {
            in_section: CachePadded::new(AtomicU32::new(0)),
            ctl: AtomicU32::new(FREE),
            head: AtomicPtr::new(ptr::null_mut()),
            tid: AtomicU32::new(0),
            sig_inflight: AtomicBool::new(false),
            owner_preempted,
            mode,
            cpu,
            domain_id,
            signal,
            counters: CachePadded::new(Counters::default()),
            _c: PhantomData,
        }
    }

    /// Pushes `w` (whose pending bit the caller just set) onto the pending stack.
    pub(crate) fn push(&self, w: &WorkInner<C>) {
        let wp = w as *const WorkInner<C> as *mut WorkInner<C>;
        let mut h = self.head.load(Ordering::Relaxed);
        loop {
            w.next.store(h, Ordering::Relaxed);
            match self
                .head
                .compare_exchange_weak(h, wp, Ordering::SeqCst, Ordering::Relaxed)
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

    /// Runs every pending work in context `kind`. The caller has exclusive
    /// access to the slot's data in that context.
    pub(crate) fn run_pending(&self, kind: CtxKind, at: RanAt) {
        loop {
            let mut list = self.head.swap(ptr::null_mut(), Ordering::SeqCst);
            if list.is_null() {
                return;
            }
            // The stack is LIFO; reverse it so works run in the order queued.
            let mut fifo: *mut WorkInner<C> = ptr::null_mut();
            while !list.is_null() {
                // SAFETY: every pointer on the stack is a live WorkInner: a
                // Work's drop waits until its work is no longer pending, and
                // the pending bit is still set, so nobody else touches `next`.
                let w = unsafe { &*list };
                let next = w.next.load(Ordering::Relaxed);
                w.next.store(fifo, Ordering::Relaxed);
                fifo = list;
                list = next;
            }
            while !fifo.is_null() {
                // SAFETY: as above; `next` is read before `run` clears the
                // pending bit, after which the work may be queued again.
                let w = unsafe { &*fifo };
                fifo = w.next.load(Ordering::Relaxed);
                w.run(self, kind, at);
            }
        }
    }

    /// Whether the owner is inside a local section (or offline).
    #[inline(always)]
    pub(crate) fn owner_in_section(&self, order: Ordering) -> bool {
        self.in_section.load(order) & 1 != 0
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
        let v = self.in_section.load(Ordering::Relaxed);
        assert!(
            v & 1 == 0,
            "qpw: local section entered from inside this slot's work"
        );
        self.in_section.store(v.wrapping_add(1), Ordering::Relaxed);
        signal_fence(Ordering::SeqCst);
        v
    }

    /// Owner's thread only: leaves the section entered when the counter was `v`.
    #[inline(always)]
    pub(crate) fn leave(&self, v: u32) {
        signal_fence(Ordering::SeqCst);
        self.in_section.store(v.wrapping_add(2), Ordering::Relaxed);
        signal_fence(Ordering::SeqCst);
    }

    /// Runs pending work in one of the owner's own contexts (signal handler,
    /// section end, quiescent point), marking the owner in a section meanwhile
    /// so a signal arriving now leaves the work to this loop.
    pub(crate) fn run_pending_as_owner(&self, at: RanAt) {
        loop {
            let v = self.enter();
            self.run_pending(CtxKind::Owner, at);
            self.leave(v);
            if self.head.load(Ordering::SeqCst).is_null() {
                return;
            }
        }
    }

    /// Tries to take a slot whose owner is absent or offline (sets `BUSY`).
    pub(crate) fn try_take(&self) -> bool {
        let s = self.ctl.load(Ordering::SeqCst);
        if s == ONLINE || s & BUSY != 0 {
            return false;
        }
        self.ctl
            .compare_exchange(s, s | BUSY, Ordering::SeqCst, Ordering::Relaxed)
            .is_ok()
    }

    /// Lets go of a slot taken with [`try_take`](Self::try_take), then runs
    /// whatever was queued meanwhile.
    pub(crate) fn release(&self) {
        self.ctl.fetch_and(!BUSY, Ordering::SeqCst);
        self.help();
    }

    /// Runs pending work on behalf of an owner that is absent or offline
    /// (or, in `remote` mode, outside a local section).
    pub(crate) fn help(&self) -> Helped {
        loop {
            if self.head.load(Ordering::SeqCst).is_null() {
                return Helped::Idle;
            }
            let s = self.ctl.load(Ordering::SeqCst);
            if self.mode == SlotMode::Remote {
                // The cells' spinlocks protect the data; only an owner inside
                // a section (which runs the stack when it leaves) is waited for.
                if s == ONLINE && self.owner_in_section(Ordering::SeqCst) {
                    return Helped::Online;
                }
                self.run_pending(CtxKind::RemoteLocked, RanAt::Remote);
                continue;
            }
            if s == ONLINE {
                // The caller is the owner itself (a drain-all from an owner
                // thread), outside a local section: this is a quiescent point.
                if crate::owner::current_thread_owns(self)
                    && !self.owner_in_section(Ordering::Relaxed)
                {
                    self.run_pending_as_owner(RanAt::Quiescent);
                    continue;
                }
                return Helped::Online;
            }
            if s & BUSY != 0 {
                return Helped::Busy;
            }
            if self.try_take() {
                self.run_pending(CtxKind::Busy, RanAt::Remote);
                self.ctl.fetch_and(!BUSY, Ordering::SeqCst);
            }
        }
    }

    /// `remote` mode: whether to run work now under the cell locks (`true`)
    /// or leave it to the owner's section end (`false`).
    ///
    /// `false` when an online owner sits in one local section without
    /// moving for a while: a userspace owner can be preempted while it holds
    /// its lock (the kernel's spinlocks prevent that), and waiting on it would
    /// stall the caller for a scheduler time slice, slot after slot. An owner
    /// that is running bumps its counter every few nanoseconds: then `true`,
    /// and the caller takes the lock as it comes free. The counter is only
    /// read for slots whose owner was once caught preempted holding a lock
    /// in this domain (`owner_preempted`): reading the line the owner writes at every
    /// section costs a caller two cache misses, which owners with a core of
    /// their own should not make it pay. And `false` when the caller is the
    /// owner itself, inside a section: it would wait on itself.
    pub(crate) fn run_now_remote(&self) -> bool {
        #[cfg(not(qpw_loom))]
        const SPINS: u32 = 256;
        #[cfg(qpw_loom)]
        const SPINS: u32 = 2;
        if crate::owner::current_thread_owns(self) {
            return !self.owner_in_section(Ordering::Relaxed);
        }
        // The models explore the check whatever the hint says.
        #[cfg(not(qpw_loom))]
        if !self.owner_preempted.load(Ordering::Relaxed) {
            return true;
        }
        let first = self.in_section.load(Ordering::SeqCst);
        let mut spins = 0;
        while self.ctl.load(Ordering::SeqCst) == ONLINE && first & 1 != 0 {
            spin_hint();
            if self.in_section.load(Ordering::SeqCst) != first {
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
    pub(crate) fn kick(&self) {
        match self.help() {
            Helped::Online if self.mode == SlotMode::Queue => self.signal_owner(),
            _ => {}
        }
    }

    /// Sends the qpw signal to the online owner, unless one is already on its
    /// way (the handler clears `sig_inflight` before it looks at `head`).
    pub(crate) fn signal_owner(&self) {
        if self.sig_inflight.swap(true, Ordering::SeqCst) {
            return;
        }
        let tid = self.tid.load(Ordering::SeqCst);
        match crate::sys::signal_thread(tid as i32, self.signal) {
            Ok(()) => self.counters.signal_sent(),
            Err(e) => {
                self.sig_inflight.store(false, Ordering::SeqCst);
                if e == crate::sys::ESRCH && self.ctl.load(Ordering::SeqCst) == ONLINE {
                    // The owner's thread is gone without unbinding (its token
                    // was leaked). It can touch nothing any more: free the slot.
                    if self.tid.load(Ordering::SeqCst) == tid
                        && self
                            .ctl
                            .compare_exchange(ONLINE, FREE, Ordering::SeqCst, Ordering::Relaxed)
                            .is_ok()
                    {
                        self.help();
                    }
                }
            }
        }
    }

    /// For a flusher that has waited a while: if the signal sent to the
    /// online owner is still marked in flight, no handler has started since
    /// it was sent, so it was lost (the thread was exiting as it arrived, or
    /// it blocks the signal): send it again. A live owner in a long section
    /// has cleared the mark when its handler ran, and gets nothing more.
    pub(crate) fn resend_lost_signal(&self) {
        if self.mode == SlotMode::Queue
            && self.ctl.load(Ordering::SeqCst) == ONLINE
            && self.has_pending()
            && self.sig_inflight.swap(false, Ordering::SeqCst)
        {
            self.signal_owner();
        }
    }

    /// The signal handler's work for this slot (owner's thread, any point of its code).
    pub(crate) fn on_signal(&self) {
        self.sig_inflight.store(false, Ordering::SeqCst);
        if self.mode != SlotMode::Queue || self.owner_in_section(Ordering::Relaxed) {
            // In a local section (or offline): the section's end runs the work.
            return;
        }
        if !self.head.load(Ordering::SeqCst).is_null() {
            self.run_pending_as_owner(RanAt::Handler);
        }
    }

    /// Takes an unowned slot for binding: `FREE` → `ONLINE`, waiting out a
    /// remote thread's `BUSY`. `Err(())` if another thread owns it.
    pub(crate) fn acquire_owner(&self, tid: u32) -> Result<(), ()> {
        loop {
            match self
                .ctl
                .compare_exchange(FREE, BUSY, Ordering::SeqCst, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(s) if s == BUSY => {
                    spin_hint();
                    yield_now();
                }
                Err(_) => return Err(()),
            }
        }
        self.tid.store(tid, Ordering::SeqCst);
        self.in_section.store(0, Ordering::Relaxed);
        self.ctl.store(ONLINE, Ordering::SeqCst);
        self.sig_inflight.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// The owner leaves: runs its pending work, frees the slot, and runs
    /// whatever was queued while it left.
    pub(crate) fn release_owner(&self) {
        self.run_pending_as_owner(RanAt::Quiescent);
        self.ctl.store(FREE, Ordering::SeqCst);
        self.help();
    }

    /// The owner goes idle: remote threads may work on the slot directly.
    pub(crate) fn go_offline(&self) {
        self.run_pending_as_owner(RanAt::Quiescent);
        // Keep the signal handler away while offline: an odd counter.
        self.enter();
        self.ctl.store(OFFLINE, Ordering::SeqCst);
        self.help();
    }

    /// The owner comes back: waits out a remote thread's `BUSY`, then runs
    /// what was queued meanwhile.
    pub(crate) fn go_online(&self) {
        while self
            .ctl
            .compare_exchange(OFFLINE, ONLINE, Ordering::SeqCst, Ordering::Relaxed)
            .is_err()
        {
            spin_hint();
            yield_now();
        }
        // Back to even: the signal handler may run work again.
        self.leave(self.in_section.load(Ordering::Relaxed).wrapping_sub(1));
        if !self.head.load(Ordering::SeqCst).is_null() {
            self.run_pending_as_owner(RanAt::Quiescent);
        }
    }
}
