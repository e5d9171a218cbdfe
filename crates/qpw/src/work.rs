//! Per-CPU work: the `struct qpw_struct` / `queue_percpu_work_on` /
//! `flush_percpu_work` analogues, and drain-all ([`WorkSet`]).
//!
//! # A work's state
//!
//! `state` holds `PENDING` (queued, not started), `RUNNING` (a run is in
//! flight) and a sequence number (how many times it was queued), as the
//! kernel's workqueues keep them:
//!
//! - queueing sets `PENDING`; if a run is in flight it does nothing more:
//!   that run, when it ends, sees `PENDING` and runs the work again, in the
//!   same context. So a work never runs concurrently with itself.
//! - otherwise the queuer hands it to whoever may run it (pushed on the
//!   slot's stack, or run at once in `remote` mode);
//! - a run clears `PENDING` and sets `RUNNING` as one step.
//!
//! The slot's stack holds a counted reference (an `Arc`) to each work on
//! it, and a run in flight holds one too: a `Work`'s memory and its closure
//! are freed when the last of its handles, stack entries and runs is gone,
//! never under a run. Dropping a `Work` never waits.

use crate::config::{Config, SlotMode};
use crate::domain::{Domain, DomainInner};
use crate::error::{Error, FlushError};
use crate::slot::{CtxKind, Helped, Node, RunCtx, SlotState};
use crate::stats::RanAt;
use crate::sync::{spin_hint, yield_now, Arc, AtomicPtr, AtomicU64, Ordering};
use std::fmt;
use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;
use std::time::{Duration, Instant};

/// The work function's signature.
pub(crate) type WorkFn<C> = dyn Fn(&mut WorkCtx<'_, C>) + Send + Sync + 'static;

/// What a work function gets: which slot it runs for and the right to lock
/// that slot's cells (see [`PerCpu::lock_ctx`](crate::PerCpu::lock_ctx)).
///
/// [`slot`](Self::slot) is `qpw_get_cpu(work)`: the slot the work was queued
/// for, whichever thread runs it.
pub struct WorkCtx<'a, C: Config = crate::Standard> {
    pub(crate) slot: &'a SlotState<C>,
    pub(crate) kind: CtxKind,
    /// Bounds this run's remote lock waits (`None` in the owner's contexts).
    pub(crate) deadline: Option<Instant>,
    /// A lock wait of this run reached the deadline (set by `lock_ctx`).
    pub(crate) timed_out: bool,
    // Not Send: the context belongs to the running call.
    _not_send: PhantomData<*mut ()>,
}

impl<'a, C: Config> WorkCtx<'a, C> {
    fn new(slot: &'a SlotState<C>, run: RunCtx) -> Self {
        Self {
            slot,
            kind: run.kind,
            deadline: run.deadline,
            timed_out: false,
            _not_send: PhantomData,
        }
    }

    /// The slot this work was queued for (`qpw_get_cpu`).
    pub fn slot(&self) -> usize {
        self.slot.cpu
    }

    /// The slot this work was queued for: the kernel's name for
    /// [`slot`](Self::slot) (`qpw_get_cpu`).
    pub fn cpu(&self) -> usize {
        self.slot.cpu
    }

    /// Whether the work runs on a thread other than the slot's owner
    /// (`qpw_is_cpu_remote`).
    pub fn is_remote(&self) -> bool {
        self.kind != CtxKind::Owner
    }

    /// The mode the slot runs in (its current binding's, see
    /// [`Domain::slot_info`](crate::Domain::slot_info)).
    pub fn mode(&self) -> SlotMode {
        self.slot.mode
    }
}

impl<C: Config> fmt::Debug for WorkCtx<'_, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkCtx")
            .field("slot", &self.slot())
            .field("kind", &self.kind)
            .finish()
    }
}

const PENDING: u64 = 1;
const RUNNING: u64 = 2;
const SEQ_SHIFT: u32 = 2;
const SEQ_ONE: u64 = 1 << SEQ_SHIFT;

/// How one call of the function ended.
enum Outcome {
    Ran,
    Panicked,
    /// A remote lock wait passed the deadline (the function saw the error).
    LockTimeout,
}

#[repr(C)]
pub(crate) struct WorkInner<C: Config> {
    /// First, so a `*const Node` on a slot's stack is a `*const WorkInner`.
    node: Node<C>,
    /// `PENDING`, `RUNNING`, and the queue sequence number above them.
    state: AtomicU64,
    /// The sequence number of the latest run that finished.
    done: AtomicU64,
    /// The sequence number of the latest run that panicked.
    panicked: AtomicU64,
    /// The sequence number of the latest run abandoned at a lock timeout.
    timed_out: AtomicU64,
    func: Box<WorkFn<C>>,
}

/// # Safety
/// `node` is the node of a `WorkInner<C>` and carries a reference to it
/// made by `Arc::into_raw`, which this call takes over.
unsafe fn run_node<C: Config>(node: *const Node<C>, slot: &SlotState<C>, run: RunCtx) {
    // SAFETY: forwarded to the caller; `node` is the first field of a
    // `#[repr(C)]` WorkInner, so the pointers are the same.
    let w = unsafe { Arc::from_raw(node as *const WorkInner<C>) };
    WorkInner::run_claimed(&w, slot, run);
}

/// # Safety
/// As [`run_node`].
unsafe fn release_node<C: Config>(node: *const Node<C>) {
    // SAFETY: forwarded to the caller.
    drop(unsafe { Arc::from_raw(node as *const WorkInner<C>) });
}

impl<C: Config> WorkInner<C> {
    fn new(func: Box<WorkFn<C>>) -> Self {
        Self {
            node: Node {
                next: AtomicPtr::new(ptr::null_mut()),
                run: run_node::<C>,
                release: release_node::<C>,
            },
            state: AtomicU64::new(0),
            done: AtomicU64::new(0),
            panicked: AtomicU64::new(0),
            timed_out: AtomicU64::new(0),
            func,
        }
    }

    /// Hands one reference to the slot's stack.
    fn push(this: &Arc<Self>, slot: &SlotState<C>) {
        slot.push(Arc::into_raw(this.clone()) as *const Node<C>);
    }

    /// Runs a work whose `PENDING` the caller owns (it popped it, or set it
    /// and saw no run in flight): starts a run, and runs again for every
    /// queueing that came while it ran.
    fn run_claimed(this: &Arc<Self>, slot: &SlotState<C>, run: RunCtx) {
        let mut s = this.state.load(Ordering::SeqCst);
        let mut seq = loop {
            debug_assert!(s & PENDING != 0 && s & RUNNING == 0);
            match this.state.compare_exchange_weak(
                s,
                (s & !PENDING) | RUNNING,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => break s >> SEQ_SHIFT,
                Err(now) => s = now,
            }
        };
        loop {
            match this.call(slot, run) {
                Outcome::Ran => {
                    this.done.fetch_max(seq, Ordering::SeqCst);
                }
                Outcome::Panicked => {
                    slot.counters.panicked();
                    this.panicked.fetch_max(seq, Ordering::SeqCst);
                    this.done.fetch_max(seq, Ordering::SeqCst);
                }
                Outcome::LockTimeout => {
                    // Over, not retried here: the flush reports it, and a
                    // new queueing runs it again.
                    this.timed_out.fetch_max(seq, Ordering::SeqCst);
                    this.done.fetch_max(seq, Ordering::SeqCst);
                }
            }
            slot.counters.ran(run.at);
            // End the run, or take the queueing that came while it ran.
            let mut s = this.state.load(Ordering::SeqCst);
            loop {
                let next = if s & PENDING != 0 {
                    (s & !PENDING) | RUNNING
                } else {
                    s & !RUNNING
                };
                match this
                    .state
                    .compare_exchange_weak(s, next, Ordering::SeqCst, Ordering::SeqCst)
                {
                    Ok(_) => break,
                    Err(now) => s = now,
                }
            }
            if s & PENDING == 0 {
                return;
            }
            seq = s >> SEQ_SHIFT;
        }
    }

    /// Calls the function once. A panic must not unwind into the drain
    /// that runs it (other slots' works, the claim it holds) or leave the
    /// slot half-run.
    fn call(&self, slot: &SlotState<C>, run: RunCtx) -> Outcome {
        let mut ctx = WorkCtx::new(slot, run);
        match catch_unwind(AssertUnwindSafe(|| (self.func)(&mut ctx))) {
            Ok(()) if ctx.timed_out => Outcome::LockTimeout,
            Ok(()) => Outcome::Ran,
            Err(_) => Outcome::Panicked,
        }
    }

    /// Sets `PENDING` and bumps the sequence; `None` if it was already
    /// pending, else whether a run was in flight.
    fn mark_pending(&self) -> Option<bool> {
        let mut s = self.state.load(Ordering::Relaxed);
        loop {
            if s & PENDING != 0 {
                return None;
            }
            let new = (s + SEQ_ONE) | PENDING;
            match self
                .state
                .compare_exchange_weak(s, new, Ordering::SeqCst, Ordering::Relaxed)
            {
                Ok(_) => return Some(s & RUNNING != 0),
                Err(now) => s = now,
            }
        }
    }
}

/// A work item bound to one slot and one function, prepared once (`INIT_QPW`).
///
/// Queueing it never allocates. [`queue`](Self::queue) is
/// `queue_percpu_work_on`, [`flush`](Self::flush) is `flush_percpu_work`.
///
/// # Where the function runs
///
/// Always as ordinary code on an ordinary thread, never in a signal handler
/// (qpw installs none): it may allocate, free, lock a `Mutex`, drop the
/// last `Arc` of anything, block briefly. Which thread depends on the
/// slot's [`SlotMode`] and on its owner:
///
/// | slot | thread | the slot's data |
/// |---|---|---|
/// | `Queue`, owner online | the caller of `queue`/`flush` (or drain-all), after it claimed the slot, fenced the owner's CPU (`membarrier`) and saw the owner's section close; the owner waits if it opens a section meanwhile | the caller's alone |
/// | `Remote`, owner online | the caller, at once | each cell under its lock ([`PerCpu::lock_ctx`](crate::PerCpu::lock_ctx) takes it) |
/// | `Defer`, owner online | the owner, at the first of: the end of its next local section of the slot, [`Owner::quiescent`](crate::Owner::quiescent), going offline, unbinding | the owner's |
/// | any mode, work queued from inside the owner's own section, or left after a timeout | the owner, when its local section ends | the owner's |
/// | any mode, no owner or owner offline | the caller | the caller's (the slot is taken) |
///
/// [`WorkCtx::is_remote`] tells the two apart. What the function must not
/// do: open a local section of the slot it runs for from its owner's
/// thread (`with_local` on that slot inside its own work panics: two `&mut`
/// to one value), or wait for something only that slot's owner can do (the
/// owner may be waiting for the function to finish).
///
/// A work never runs concurrently with itself: queued while it runs, it runs
/// again once the current run ends. Dropping a `Work` never waits: a work
/// still queued keeps its memory (and closure) alive until it has run.
///
/// # Examples
///
/// A work that reads one owner's counter exactly while the owner counts:
///
/// ```
/// use qpw::{Domain, PerCpu};
/// use std::sync::{atomic::{AtomicU64, Ordering::Relaxed}, mpsc, Arc};
///
/// let domain = Domain::builder().nr_cpus(2).build()?;
/// let counts = Arc::new(PerCpu::new(&domain, |_| 0u64));
/// let seen = Arc::new(AtomicU64::new(0));
/// let (c, s) = (counts.clone(), seen.clone());
/// let read1 = domain.work(1, move |ctx| {
///     let Ok(v) = c.lock_ctx(ctx) else { return };
///     s.store(*v, Relaxed);
/// })?;
/// let (stop, stopped) = mpsc::channel::<()>();
/// let owner = std::thread::spawn({
///     let (domain, counts) = (domain.clone(), counts.clone());
///     move || {
///         let mut me = domain.bind_unpinned(1).unwrap();
///         while stopped.try_recv().is_err() {
///             *counts.lock(&mut me) += 1;
///             me.quiescent(); // where `defer` runs the work
///         }
///     }
/// });
/// read1.queue();
/// read1.flush()?; // the read ran, in whichever mode
/// stop.send(()).unwrap();
/// owner.join().unwrap();
/// assert!(seen.load(Relaxed) <= *counts.remote(1)?);
/// # Ok::<(), qpw::Error>(())
/// ```
pub struct Work<C: Config = crate::Standard> {
    inner: Arc<WorkInner<C>>,
    domain: Arc<DomainInner<C>>,
    cpu: usize,
}

impl<C: Config> fmt::Debug for Work<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Work").field("slot", &self.cpu).finish()
    }
}

/// The slot the caller owns in `domain` if it is inside its local section
/// there: a flush would wait on itself.
fn caller_in_section<C: Config>(domain: &DomainInner<C>) -> Option<usize> {
    let cpu = crate::owned::owned_in(domain.id)?;
    let slot = &domain.slots[cpu];
    (slot.state() == crate::slot::ONLINE && slot.section_open(Ordering::Relaxed)).then_some(cpu)
}

impl<C: Config> Work<C> {
    pub(crate) fn new(domain: Arc<DomainInner<C>>, cpu: usize, func: Box<WorkFn<C>>) -> Self {
        Self {
            inner: Arc::new(WorkInner::new(func)),
            domain,
            cpu,
        }
    }

    fn slot_state(&self) -> &SlotState<C> {
        &self.domain.slots[self.cpu]
    }

    /// The slot this work is bound to.
    pub fn slot(&self) -> usize {
        self.cpu
    }

    /// The slot this work is bound to (the kernel's name for [`slot`](Self::slot)).
    pub fn cpu(&self) -> usize {
        self.cpu
    }

    /// Queues the work on its slot (`queue_percpu_work_on`). Returns `false`
    /// if it was already pending, in which case the pending run covers this
    /// request too (as in the kernel). In `remote` mode the caller may run
    /// it at once; its lock waits are bounded by the domain's flush timeout.
    pub fn queue(&self) -> bool {
        self.queue_until(Instant::now() + self.domain.flush_timeout)
    }

    fn queue_until(&self, deadline: Instant) -> bool {
        let w = &self.inner;
        let running = match w.mark_pending() {
            None => return false,
            Some(r) => r,
        };
        if running {
            // The run in flight runs it again when it ends.
            return true;
        }
        let slot = self.slot_state();
        let owns = crate::owned::current_thread_owns(slot);
        // `enter_remote` is `None` while the owner forks (its fork gate).
        let hold =
            (slot.mode == SlotMode::Remote && !slot.is_retired() && slot.run_now_remote(owns))
                .then(|| slot.enter_remote())
                .flatten();
        if let Some(_hold) = hold {
            WorkInner::run_claimed(
                w,
                slot,
                RunCtx {
                    kind: CtxKind::RemoteLocked,
                    at: RanAt::RemoteLocked,
                    deadline: Some(deadline),
                },
            );
        } else {
            // `remote` with the owner stuck in a section: it runs the work
            // when it leaves, and so does a flusher once it sees it out.
            // `queue` with the owner online: this thread fences it and runs
            // the work, unless it is inside a local section of its own
            // (fencing would wait on another owner while holding ours: the
            // owner runs the work at its section's end, a flush fences).
            WorkInner::push(w, slot);
            let wait = caller_in_section(&self.domain)
                .is_none()
                .then_some(deadline);
            slot.help(owns, wait);
        }
        true
    }

    /// Whether the latest queueing has not finished running yet.
    pub fn is_pending(&self) -> bool {
        let w = &self.inner;
        w.done.load(Ordering::SeqCst) < w.state.load(Ordering::SeqCst) >> SEQ_SHIFT
    }

    /// Waits until the latest queueing has run (`flush_percpu_work`), at most
    /// the domain's flush timeout.
    ///
    /// # Errors
    ///
    /// [`FlushError::Timeout`] past the timeout (the work stays queued and runs
    /// later); [`FlushError::InLocalSection`] from inside the caller's own local section; [`FlushError::Panicked`]
    /// when the function panicked; [`FlushError::LockTimeout`] when its
    /// [`lock_ctx`](crate::PerCpu::lock_ctx) timed out; [`FlushError::Retired`]
    /// for a retired slot.
    pub fn flush(&self) -> Result<(), FlushError> {
        self.flush_timeout(self.domain.flush_timeout)
    }

    /// Waits until the latest queueing has run, at most `timeout`. While it
    /// waits, if the owner goes offline or away, the caller runs the work.
    /// From inside the caller's own local section of this domain it returns
    /// [`FlushError::InLocalSection`] at once.
    ///
    /// # Errors
    ///
    /// [`FlushError::Timeout`] past the timeout (the work stays queued and runs
    /// later); [`FlushError::InLocalSection`] as above; [`FlushError::Panicked`]
    /// when the function panicked; [`FlushError::LockTimeout`] when its
    /// [`lock_ctx`](crate::PerCpu::lock_ctx) timed out; [`FlushError::Retired`]
    /// for a retired slot.
    pub fn flush_timeout(&self, timeout: Duration) -> Result<(), FlushError> {
        if let Some(cpu) = caller_in_section(&self.domain) {
            if self.is_pending() {
                return Err(FlushError::InLocalSection { cpu });
            }
        }
        self.flush_until(Instant::now() + timeout, timeout)
    }

    fn flush_until(&self, deadline: Instant, bound: Duration) -> Result<(), FlushError> {
        let w = &self.inner;
        let target = w.state.load(Ordering::SeqCst) >> SEQ_SHIFT;
        let slot = self.slot_state();
        let owns = crate::owned::current_thread_owns(slot);
        // A flusher that owns a slot of the domain (outside a section: see
        // `flush_timeout`) is at a quiescent point while it waits: it runs its
        // own slot's work meanwhile, so two owners flushing each other's
        // slots (`defer`) do not wait on each other until the deadline.
        let mine = crate::owned::owned_in(self.domain.id)
            .map(|c| &*self.domain.slots[c])
            .filter(|s| !std::ptr::eq(*s, slot));
        let mut waiter = Waiter::new(deadline);
        loop {
            if let Some(m) = mine {
                if m.has_pending()
                    && m.state() == crate::slot::ONLINE
                    && !m.section_open(Ordering::Relaxed)
                {
                    m.run_pending_as_owner(RanAt::Quiescent);
                }
            }
            if w.done.load(Ordering::SeqCst) >= target {
                if target > 0 && w.panicked.load(Ordering::SeqCst) == target {
                    return Err(FlushError::Panicked { cpu: self.cpu });
                }
                if target > 0 && w.timed_out.load(Ordering::SeqCst) == target {
                    return Err(FlushError::LockTimeout {
                        cpu: self.cpu,
                        waited_ms: bound.as_millis() as u64,
                    });
                }
                return Ok(());
            }
            // The owner may have gone offline or away since it was queued.
            if slot.help(owns, Some(deadline)) == Helped::Retired {
                return Err(FlushError::Retired { cpu: self.cpu });
            }
            if waiter.wait() {
                let waited_ms = bound.as_millis() as u64;
                return Err(FlushError::Timeout {
                    cpu: self.cpu,
                    waited_ms,
                });
            }
        }
    }
}

/// Spins briefly, then yields, then sleeps, until a deadline.
struct Waiter {
    deadline: Instant,
    spins: u32,
}

impl Waiter {
    fn new(deadline: Instant) -> Self {
        Self { deadline, spins: 0 }
    }

    /// Waits a little; `true` once the deadline has passed. Spins first
    /// (a drain usually completes in microseconds), then yields, then, after
    /// about a thousand yields, sleeps 50 µs at a time: a long wait must not
    /// starve the threads it waits for on a crowded machine.
    fn wait(&mut self) -> bool {
        self.spins = self.spins.saturating_add(1);
        if self.spins < 64 {
            spin_hint();
            return false;
        }
        if self.spins < 1024 {
            yield_now();
        } else {
            #[cfg(not(qpw_loom))]
            std::thread::sleep(Duration::from_micros(50));
            #[cfg(qpw_loom)]
            yield_now();
        }
        self.spins % 16 == 0 && Instant::now() >= self.deadline
    }
}

/// One work per slot with the same function: the `lru_add_drain_all` pattern.
///
/// [`run`](Self::run) queues the work on every slot, then flushes every one,
/// all under one deadline (the domain's flush timeout, for the whole
/// drain-all). The functions run where [`Work`] says, one slot after the
/// other: on the caller's thread in `remote` mode (under each slot's cell
/// locks) and in `queue` mode (after fencing each online owner's CPU, one
/// IPI per slot, and waiting for its section to close); on each owner's
/// thread at its next quiescent point in `defer` mode. Slots without an
/// owner, or whose owner is offline, are run by the caller. Retired slots
/// (see [`Domain::is_retired`]) are skipped and counted in their
/// [`SlotStats`](crate::SlotStats).
///
/// A set may carry a per-slot check ([`with_check`](Self::with_check)): a
/// slot it says needs nothing is neither fenced nor locked.
pub struct WorkSet<C: Config = crate::Standard> {
    works: Vec<Work<C>>,
    needs: Option<Box<NeedsFn>>,
}

/// A work set's per-slot "needs this work" check.
type NeedsFn = dyn Fn(usize) -> bool + Send + Sync + 'static;

impl<C: Config> fmt::Debug for WorkSet<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkSet")
            .field("slots", &self.works.len())
            .field("checked", &self.needs.is_some())
            .finish()
    }
}

impl<C: Config> WorkSet<C> {
    /// Adds a per-slot "needs this work" check (the kernel's
    /// `has_pcs_used`, `cpu_needs_drain`, memcg stock check): every drain-all
    /// calls `needs(slot)` once per slot before queueing there, and a slot
    /// for which it returns `false` is skipped: not fenced, not locked,
    /// not waited for (counted in
    /// [`SlotInfo::drains_skipped_clean`](crate::SlotInfo::drains_skipped_clean)).
    ///
    /// `needs` runs on the caller's thread, against a slot it does not own:
    /// it may only read what the owner publishes for it (an atomic hint the
    /// owner sets when the slot gets something to drain), never the slot's
    /// data itself. As in the kernel it is a snapshot: what a slot caches
    /// after the check is left for the next drain-all. A hint may say "yes"
    /// for a clean slot (a wasted drain), never "no" for a slot whose
    /// contents were there before the drain-all started.
    ///
    /// # Examples
    ///
    /// ```
    /// use qpw::{Domain, PerCpu};
    /// use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::{Relaxed, Release, Acquire}};
    /// use std::sync::Arc;
    ///
    /// // The owner sets `dirty[slot]` when the slot gets something; the drain clears it.
    /// let domain = Domain::builder().nr_cpus(2).build()?;
    /// let batch = Arc::new(PerCpu::new(&domain, |_| Vec::<u32>::new()));
    /// let dirty: Arc<[AtomicBool]> = (0..2).map(|_| AtomicBool::new(false)).collect();
    /// let drained = Arc::new(AtomicU64::new(0));
    /// let (b, d, n) = (batch.clone(), dirty.clone(), drained.clone());
    /// let drain_all = domain
    ///     .work_all(move |ctx| {
    ///         let slot = ctx.slot();
    ///         let Ok(mut v) = b.lock_ctx(ctx) else { return };
    ///         d[slot].store(false, Relaxed);
    ///         n.fetch_add(v.drain(..).count() as u64, Relaxed);
    ///     })
    ///     .with_check({
    ///         let d = dirty.clone();
    ///         move |slot| d[slot].load(Acquire)
    ///     });
    /// let mut me = domain.bind_unpinned(0)?;
    /// batch.lock(&mut me).push(7);
    /// dirty[0].store(true, Release);
    /// drop(me);
    /// drain_all.run()?; // slot 1 is clean: skipped
    /// assert_eq!(drained.load(Relaxed), 1);
    /// assert_eq!(domain.slot_info(1)?.drains_skipped_clean, 1);
    /// # Ok::<(), qpw::Error>(())
    /// ```
    pub fn with_check(mut self, needs: impl Fn(usize) -> bool + Send + Sync + 'static) -> Self {
        self.needs = Some(Box::new(needs));
        self
    }

    /// The work of one slot.
    pub fn get(&self, cpu: usize) -> Option<&Work<C>> {
        self.works.get(cpu)
    }

    /// Queues on every slot and waits for every one (drain-all), all within
    /// one deadline: the domain's flush timeout. Allocates nothing (but one
    /// flag per slot with a [check](Self::with_check)). From
    /// inside the caller's own local section of this domain it returns
    /// [`FlushError::InLocalSection`] at once, having queued nothing.
    ///
    /// # Errors
    ///
    /// The first failing slot's error, in slot order: [`FlushError::Timeout`]
    /// past the deadline (its work stays queued); [`FlushError::InLocalSection`]
    /// as above; [`FlushError::Panicked`] when a function panicked;
    /// [`FlushError::LockTimeout`] when a [`lock_ctx`](crate::PerCpu::lock_ctx)
    /// timed out. Retired slots are skipped, not errors.
    ///
    /// # Examples
    ///
    /// ```
    /// use qpw::{Domain, PerCpu};
    /// use std::sync::{atomic::{AtomicU64, Ordering::Relaxed}, Arc};
    ///
    /// let domain = Domain::builder().nr_cpus(2).build()?;
    /// let counts = Arc::new(PerCpu::new(&domain, |slot| slot as u64 + 1)); // 1 and 2
    /// let total = Arc::new(AtomicU64::new(0));
    /// let (c, t) = (counts.clone(), total.clone());
    /// let drain_all = domain.work_all(move |ctx| {
    ///     let Ok(mut v) = c.lock_ctx(ctx) else { return };
    ///     t.fetch_add(std::mem::take(&mut *v), Relaxed);
    /// });
    /// drain_all.run()?; // no owners: this thread runs each slot's work itself
    /// assert_eq!(total.load(Relaxed), 3);
    /// # Ok::<(), qpw::Error>(())
    /// ```
    pub fn run(&self) -> Result<(), FlushError> {
        match &self.needs {
            None => self.queue_then_flush(|_| true),
            Some(_) => self.run_filtered(|_| true),
        }
    }

    /// As [`run`](Self::run), but only on the slots `filter` selects (the
    /// kernel's drainers skip CPUs with nothing cached). `filter` is called
    /// once per slot, before the set's [check](Self::with_check), if any.
    ///
    /// # Errors
    ///
    /// As [`run`](Self::run).
    pub fn run_filtered(&self, mut filter: impl FnMut(usize) -> bool) -> Result<(), FlushError> {
        let chosen: Vec<bool> = self
            .works
            .iter()
            .map(|w| {
                if !filter(w.cpu) {
                    return false;
                }
                let needed = self.needs.as_ref().is_none_or(|needs| needs(w.cpu));
                if !needed {
                    w.slot_state().counters.skipped_clean();
                }
                needed
            })
            .collect();
        self.queue_then_flush(|c| chosen[c])
    }

    fn queue_then_flush(&self, chosen: impl Fn(usize) -> bool) -> Result<(), FlushError> {
        let Some(first) = self.works.first() else {
            return Ok(());
        };
        let domain = &first.domain;
        if let Some(cpu) = caller_in_section(domain) {
            return Err(FlushError::InLocalSection { cpu });
        }
        let bound = domain.flush_timeout;
        let deadline = Instant::now() + bound;
        let live = |w: &&Work<C>| chosen(w.cpu) && !w.slot_state().is_retired();
        for w in self.works.iter() {
            if chosen(w.cpu) && w.slot_state().is_retired() {
                w.slot_state().counters.skipped_retired();
            }
        }
        for w in self.works.iter().filter(live) {
            w.queue_until(deadline);
        }
        let mut first_err = None;
        for w in self.works.iter().filter(live) {
            match w.flush_until(deadline, bound) {
                // Retired while we waited (a fork child cannot see that
                // happen, but keep the rule): skipped, not an error.
                Err(FlushError::Retired { .. }) | Ok(()) => {}
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl<C: Config> Domain<C> {
    /// Prepares a work for slot `cpu` (`INIT_QPW(work, fn, cpu)`).
    ///
    /// `f` runs as ordinary code, never in a signal handler: on the caller's
    /// thread (`queue` and `remote` modes, or an absent or offline owner)
    /// or on the owner's (`defer`, or work left to the owner's section
    /// end); see [`Work`] for the table and what `f` may do.
    ///
    /// # Errors
    ///
    /// [`Error::CpuOutOfRange`] when `cpu` is not a slot of this domain.
    pub fn work(
        &self,
        cpu: usize,
        f: impl Fn(&mut WorkCtx<'_, C>) + Send + Sync + 'static,
    ) -> Result<Work<C>, Error> {
        self.slot(cpu)?;
        Ok(Work::new(self.inner.clone(), cpu, Box::new(f)))
    }

    /// Prepares one work per slot with the same function, for drain-all.
    /// Each slot's run happens where [`Work`] says (see [`WorkSet`]).
    pub fn work_all(
        &self,
        f: impl Fn(&mut WorkCtx<'_, C>) + Send + Sync + Clone + 'static,
    ) -> WorkSet<C> {
        let works = (0..self.nr_cpus())
            .map(|c| Work::new(self.inner.clone(), c, Box::new(f.clone())))
            .collect();
        WorkSet { works, needs: None }
    }

    /// [`work_all`](Self::work_all) with a per-slot "needs this work" check
    /// (see [`WorkSet::with_check`]).
    pub fn work_all_checked(
        &self,
        f: impl Fn(&mut WorkCtx<'_, C>) + Send + Sync + Clone + 'static,
        needs: impl Fn(usize) -> bool + Send + Sync + 'static,
    ) -> WorkSet<C> {
        self.work_all(f).with_check(needs)
    }
}
