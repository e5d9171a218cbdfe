//! Per-CPU work: the `struct qpw_struct` / `queue_percpu_work_on` /
//! `flush_percpu_work` analogues.

use crate::config::{Config, SlotMode};
use crate::domain::DomainInner;
use crate::error::FlushError;
use crate::slot::SlotState;
use crate::stats::RanAt;
use crate::sync::{spin_hint, yield_now, Arc, AtomicPtr, AtomicU64, Ordering};
use std::fmt;
use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;
use std::time::{Duration, Instant};

/// The work function's signature.
pub(crate) type WorkFn<C> = dyn Fn(&mut WorkCtx<'_, C>) + Send + Sync + 'static;

/// In which context a work function runs, which decides what its locks do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CtxKind {
    /// On the owner's thread (signal handler, section end, quiescent point):
    /// the owner's exclusion is already in force.
    Owner,
    /// On another thread, `remote` mode: each cell is locked with its spinlock.
    RemoteLocked,
    /// On another thread holding the slot's `BUSY` (owner absent or offline).
    Busy,
}

/// What a work function gets: which slot it runs for and the right to lock
/// that slot's cells (see [`PerCpu::lock_ctx`](crate::PerCpu::lock_ctx)).
///
/// [`cpu`](Self::cpu) is `qpw_get_cpu(work)`: the slot the work was queued
/// for, whichever thread runs it.
pub struct WorkCtx<'a, C: Config = crate::Standard> {
    pub(crate) slot: &'a SlotState<C>,
    pub(crate) kind: CtxKind,
    // Not Send: the context belongs to the running call.
    _not_send: PhantomData<*mut ()>,
}

impl<'a, C: Config> WorkCtx<'a, C> {
    pub(crate) fn new(slot: &'a SlotState<C>, kind: CtxKind) -> Self {
        Self {
            slot,
            kind,
            _not_send: PhantomData,
        }
    }

    /// The slot this work was queued for (`qpw_get_cpu`).
    pub fn cpu(&self) -> usize {
        self.slot.cpu
    }

    /// Whether the work runs on a thread other than the slot's owner
    /// (`qpw_is_cpu_remote`).
    pub fn is_remote(&self) -> bool {
        self.kind != CtxKind::Owner
    }

    /// The mode of the slot.
    pub fn mode(&self) -> SlotMode {
        self.slot.mode
    }
}

impl<C: Config> fmt::Debug for WorkCtx<'_, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkCtx")
            .field("cpu", &self.cpu())
            .field("kind", &self.kind)
            .finish()
    }
}

const PENDING: u64 = 1;

pub(crate) struct WorkInner<C: Config> {
    /// Bit 0: pending. Bits 1..: how many times it was queued.
    pub(crate) state: AtomicU64,
    /// The sequence number of the latest run that finished.
    pub(crate) done: AtomicU64,
    /// The sequence number of the latest run that panicked.
    pub(crate) panicked: AtomicU64,
    pub(crate) next: AtomicPtr<WorkInner<C>>,
    pub(crate) func: Box<WorkFn<C>>,
}

impl<C: Config> WorkInner<C> {
    /// Clears the pending bit and runs the function once.
    pub(crate) fn run(&self, slot: &SlotState<C>, kind: CtxKind, at: RanAt) {
        let seq = self.state.fetch_and(!PENDING, Ordering::SeqCst) >> 1;
        let mut ctx = WorkCtx::new(slot, kind);
        // A panic must not unwind through the signal handler or leave the
        // slot half-run; the flusher gets `FlushError::Panicked`.
        let ok = catch_unwind(AssertUnwindSafe(|| (self.func)(&mut ctx))).is_ok();
        if !ok {
            slot.counters.panicked();
            self.panicked.fetch_max(seq, Ordering::SeqCst);
        }
        slot.counters.ran(at);
        self.done.fetch_max(seq, Ordering::SeqCst);
    }

    /// Sets the pending bit; `false` if it was already set.
    fn mark_pending(&self) -> bool {
        let mut s = self.state.load(Ordering::Relaxed);
        loop {
            if s & PENDING != 0 {
                return false;
            }
            let new = (((s >> 1) + 1) << 1) | PENDING;
            match self
                .state
                .compare_exchange_weak(s, new, Ordering::SeqCst, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(now) => s = now,
            }
        }
    }
}

/// A work item bound to one slot and one function, prepared once (`INIT_QPW`).
///
/// Queueing it never allocates. [`queue`](Self::queue) is
/// `queue_percpu_work_on`, [`flush`](Self::flush) is `flush_percpu_work`; what
/// they do depends on the slot's [`SlotMode`]:
///
/// - `Queue`: pushed on the slot's pending list, the owner is sent a signal,
///   and its handler runs the work (or the end of its local section does);
/// - `Remote`: run at once by the caller, which locks the cells it touches;
/// - `Defer`: pushed; the owner runs it at its next quiescent point;
///
/// and in every mode, when the slot has no owner or the owner is offline,
/// the caller runs it itself.
///
/// Dropping a `Work` waits (up to the domain's flush timeout) until it is no
/// longer queued; if the owner never gets to it, its memory is leaked rather
/// than freed under the owner's feet.
pub struct Work<C: Config = crate::Standard> {
    pub(crate) inner: Option<Arc<WorkInner<C>>>,
    pub(crate) domain: Arc<DomainInner<C>>,
    pub(crate) cpu: usize,
}

impl<C: Config> fmt::Debug for Work<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Work").field("cpu", &self.cpu).finish()
    }
}

impl<C: Config> Work<C> {
    pub(crate) fn new(domain: Arc<DomainInner<C>>, cpu: usize, func: Box<WorkFn<C>>) -> Self {
        let inner = Arc::new(WorkInner {
            state: AtomicU64::new(0),
            done: AtomicU64::new(0),
            panicked: AtomicU64::new(0),
            next: AtomicPtr::new(ptr::null_mut()),
            func,
        });
        Self {
            inner: Some(inner),
            domain,
            cpu,
        }
    }

    fn inner(&self) -> &WorkInner<C> {
        self.inner
            .as_deref()
            .expect("a Work's inner is only taken by its drop")
    }

    fn slot(&self) -> &SlotState<C> {
        &self.domain.slots[self.cpu]
    }

    /// The slot this work is bound to.
    pub fn cpu(&self) -> usize {
        self.cpu
    }

    /// Queues the work on its slot (`queue_percpu_work_on`). Returns `false`
    /// if it was already pending, in which case the pending run covers this
    /// request too (as in the kernel).
    pub fn queue(&self) -> bool {
        let w = self.inner();
        if !w.mark_pending() {
            return false;
        }
        let slot = self.slot();
        if slot.mode == SlotMode::Remote {
            if slot.run_now_remote() {
                w.run(slot, CtxKind::RemoteLocked, RanAt::Remote);
            } else {
                // The owner is stuck in a section (preempted, most likely):
                // it runs the work when it leaves, and so does a flusher
                // once it sees it out. No signal either way.
                slot.push(w);
                slot.help();
            }
        } else {
            slot.push(w);
            slot.kick();
        }
        true
    }

    /// Whether the latest queueing has not finished running yet.
    pub fn is_pending(&self) -> bool {
        let w = self.inner();
        w.done.load(Ordering::SeqCst) < w.state.load(Ordering::SeqCst) >> 1
    }

    /// Waits until the latest queueing has run (`flush_percpu_work`), at most
    /// the domain's flush timeout.
    pub fn flush(&self) -> Result<(), FlushError> {
        self.flush_timeout(self.domain.flush_timeout)
    }

    /// Waits until the latest queueing has run, at most `timeout`. While it
    /// waits, if the owner goes offline or away, the caller runs the work.
    pub fn flush_timeout(&self, timeout: Duration) -> Result<(), FlushError> {
        let w = self.inner();
        let target = w.state.load(Ordering::SeqCst) >> 1;
        let slot = self.slot();
        let mut waiter = Waiter::new(timeout);
        // When to look for a lost signal: after 10 ms, then 10 times later each time.
        let mut resend_after = Duration::from_millis(10);
        loop {
            if w.done.load(Ordering::SeqCst) >= target {
                if target > 0 && w.panicked.load(Ordering::SeqCst) == target {
                    return Err(FlushError::Panicked { cpu: self.cpu });
                }
                return Ok(());
            }
            // The owner may have gone offline or away since it was queued.
            slot.help();
            if waiter.elapsed() >= resend_after {
                slot.resend_lost_signal();
                resend_after = resend_after.saturating_mul(10);
            }
            if waiter.wait() {
                return Err(FlushError::Timeout {
                    cpu: self.cpu,
                    waited_ms: timeout.as_millis() as u64,
                });
            }
        }
    }
}

impl<C: Config> Drop for Work<C> {
    fn drop(&mut self) {
        if self.is_pending() && self.flush().is_err() && self.is_pending() {
            // Still on a slot's pending list: its memory must outlive the list.
            std::mem::forget(self.inner.take());
        }
    }
}

/// Spins briefly, then yields, until a deadline.
pub(crate) struct Waiter {
    start: Instant,
    timeout: Duration,
    spins: u32,
}

impl Waiter {
    pub(crate) fn new(timeout: Duration) -> Self {
        Self {
            start: Instant::now(),
            timeout,
            spins: 0,
        }
    }

    /// Time since the wait began.
    pub(crate) fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Waits a little; `true` once the deadline has passed. Spins first
    /// (a drain usually completes in microseconds), then yields, then, after
    /// about a thousand yields, sleeps 50 µs at a time: a long wait must not
    /// starve the threads it waits for on a crowded machine.
    pub(crate) fn wait(&mut self) -> bool {
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
        self.spins % 16 == 0 && self.start.elapsed() >= self.timeout
    }
}

/// One work per slot with the same function: the `lru_add_drain_all` pattern.
///
/// [`run`](Self::run) queues the work on every slot, then flushes every one:
/// in `remote` mode each runs at once under its slot's locks; in `queue` mode
/// every owner is signalled before the first wait, so their handlers run in
/// parallel; in `defer` mode each owner runs it at its next quiescent point.
/// Slots without an owner, or whose owner is offline, are run by the caller.
pub struct WorkSet<C: Config = crate::Standard> {
    pub(crate) works: Vec<Work<C>>,
}

impl<C: Config> fmt::Debug for WorkSet<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkSet")
            .field("slots", &self.works.len())
            .finish()
    }
}

impl<C: Config> WorkSet<C> {
    /// The work of one slot.
    pub fn get(&self, cpu: usize) -> Option<&Work<C>> {
        self.works.get(cpu)
    }

    /// Queues on every slot and waits for every one (drain-all), with the
    /// domain's flush timeout for each. Allocates nothing.
    pub fn run(&self) -> Result<(), FlushError> {
        Self::queue_then_flush(self.works.iter())
    }

    /// As [`run`](Self::run), but only on the slots `filter` selects (the
    /// kernel's drainers skip CPUs with nothing cached).
    pub fn run_filtered(&self, mut filter: impl FnMut(usize) -> bool) -> Result<(), FlushError> {
        let chosen: Vec<&Work<C>> = self.works.iter().filter(|w| filter(w.cpu)).collect();
        Self::queue_then_flush(chosen.into_iter())
    }

    fn queue_then_flush<'a>(
        works: impl Iterator<Item = &'a Work<C>> + Clone,
    ) -> Result<(), FlushError> {
        for w in works.clone() {
            w.queue();
        }
        let mut first_err = None;
        for w in works {
            if let Err(e) = w.flush() {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}
