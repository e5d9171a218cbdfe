//! Per-CPU LRU add batches and `lru_add_drain_all`: the kernel's
//! `cpu_fbatches` (mm/swap.c) on qpw.
//!
//! # The kernel's version
//!
//! Adding a page to an LRU list needs the list's lock (`lruvec->lru_lock`).
//! Taking it for every page would make it the hottest lock in the kernel, so
//! each CPU first collects pages in a small per-CPU *folio batch*
//! (`cpu_fbatches.lru_add`, `PAGEVEC_SIZE` = 15 entries, now 31) under its
//! local lock; only when the batch is full does `folio_batch_move_lru` take the
//! lock once and move the whole batch. The price: a page can sit in some CPU's
//! batch, invisible to the LRU. Page migration, CMA allocation, memory
//! hot-unplug and `blockdev --flushbufs` cannot accept that, so they call
//! `lru_add_drain_all`, which queues a work item on every CPU with a non-empty
//! batch and waits for all of them: the interruption QPW exists to avoid.
//!
//! # This version
//!
//! [`Lru`] keeps one batch per slot of a qpw [`Domain`] in a [`PerCpu`];
//! [`Lru::add`] is the owner's hot path (one local section, a push), and a
//! full batch *spills* into the shared list, which is a `Vec` behind one
//! mutex. [`Lru::lru_add_drain_all`] runs one drain work per slot through
//! qpw's drain-all ([`Domain::work_all`] + [`WorkSet::run`]), so it works in
//! every mode: in `remote` mode the drainer empties each batch under the
//! slot's lock and no owner is interrupted; in `queue` mode each owner is
//! signalled and empties its own batch; in `defer` mode each owner empties it
//! at its next quiescent point (or the drainer does, while the owner is
//! offline). When it returns, the shared list holds every item whose
//! [`add`](Lru::add) returned before the call.
//!
//! # Why the drain never takes the shared lock: signal safety
//!
//! In `queue` mode the drain work runs *inside a signal handler on the
//! owner's thread*, at whatever point that thread was interrupted, except
//! inside a local section. If the drain work took the shared-list mutex, and
//! the owner had been interrupted while holding that mutex outside its
//! section (to spill), the handler would wait forever for its own thread: a
//! self-deadlock. It could not push to the shared `Vec` either, because that
//! may allocate, and the interrupted code may be inside `malloc`.
//!
//! So spilling is split in two, and the handler only ever does the first half:
//!
//! 1. **Hand-off** (lock-free, allocation-free, safe in a handler): the full
//!    batch, a preallocated chunk of fixed capacity, is swapped for an
//!    empty spare chunk of the same slot, and pushed on a lock-free stack
//!    (a Treiber stack whose consumers take the whole stack at once, so there
//!    is no ABA). Moving a `Box` moves a pointer: nothing is allocated or
//!    freed. Both the owner's spill and the drain work do exactly this.
//! 2. **Fold** (takes the mutex, may allocate; normal context only): whoever
//!    holds the shared-list mutex takes the whole hand-off stack and moves the
//!    items into the list, then gives the emptied chunks back to their slots
//!    through a per-slot atomic "returned" cell. The owner folds right after a
//!    spill, *outside* its local section; the drainer folds after the
//!    drain-all.
//!
//! A handler that interrupts an owner in the middle of a fold (mutex held,
//! perhaps inside `malloc`) runs a drain work that touches only the owner's
//! batch, the hand-off stack and the returned cells: atomics and pointer
//! moves. The owner never holds a lock the handler needs.
//!
//! For the drain to have a spare to swap in without allocating, every slot
//! keeps this invariant whenever no local section is open on it: *a
//! non-empty batch has a spare chunk*. [`Lru::add`] restores a missing spare
//! before it pushes (from the returned cell, or from a chunk it allocated
//! outside the section), and a drain leaves an empty batch behind. In
//! steady state the two chunks of a slot circulate (batch → hand-off →
//! returned → spare → batch) and nothing is allocated at all.
//!
//! ```
//! use qpw::{Config, Domain, Mode, Standard};
//! use qpw_mm::lru::Lru;
//!
//! // `remote` where it is compiled in (the `qpw` feature), else `queue`.
//! let mode = if Standard::QPW { Mode::Remote } else { Mode::Queue };
//! let domain: Domain = Domain::builder().mode(mode).nr_cpus(2).build()?;
//! let lru = Lru::new(&domain);
//! let mut me = domain.bind_unpinned(0)?;
//! for page in 0..20u32 {
//!     lru.add(&mut me, page); // a batch of 15 spills once
//! }
//! assert_eq!(lru.shared_len(), 15);
//! lru.lru_add_drain_all().unwrap(); // the other 5 leave the batch
//! let mut all = lru.take_shared();
//! all.sort();
//! assert_eq!(all, (0..20).collect::<Vec<_>>());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crossbeam_utils::CachePadded;
use qpw::{Config, Domain, FlushError, Owner, PerCpu, Standard, WorkSet};
use std::fmt;
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

// The atomics and the lock of the hand-off protocol: loom's under
// `--cfg qpw_loom`, so the models see every access.
#[cfg(qpw_loom)]
use ::loom::sync::{atomic::AtomicPtr, Mutex, MutexGuard};
#[cfg(not(qpw_loom))]
use std::sync::{atomic::AtomicPtr, Mutex, MutexGuard};

/// The kernel's `PAGEVEC_SIZE`: entries in one per-CPU batch by default.
pub const DEFAULT_BATCH: usize = 15;

/// The largest batch size [`Lru::with_batch`] accepts (each slot preallocates
/// two chunks of this many items).
pub const MAX_BATCH: usize = 1 << 16;

/// A batch size outside `1..=MAX_BATCH`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BadBatchSize {
    /// The size given.
    pub size: usize,
}

impl fmt::Display for BadBatchSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "LRU batch size must be between 1 and {MAX_BATCH}, got {}",
            self.size
        )
    }
}

impl std::error::Error for BadBatchSize {}

/// A fixed-capacity batch of items: the folio batch.
///
/// Its `Vec` is allocated once with the batch's capacity and never grows, so
/// pushing up to the capacity and moving the box around never allocate.
struct Chunk<T> {
    items: Vec<T>,
    /// The link while on the hand-off stack. Written by the pusher before the
    /// push publishes the chunk, read by the consumer after taking the stack:
    /// the stack head's release/acquire orders both, so `Relaxed` suffices.
    next: std::sync::atomic::AtomicPtr<Chunk<T>>,
    /// The slot the chunk serves; an emptied chunk goes back to it.
    cpu: usize,
}

impl<T> Chunk<T> {
    fn new(cap: usize, cpu: usize) -> Box<Self> {
        Box::new(Chunk {
            items: Vec::with_capacity(cap),
            next: std::sync::atomic::AtomicPtr::new(ptr::null_mut()),
            cpu,
        })
    }
}

/// One slot's per-CPU state. Outside a local section: `batch` non-empty ⇒
/// `spare` is `Some` (the invariant the drain relies on).
struct Local<T> {
    batch: Option<Box<Chunk<T>>>,
    spare: Option<Box<Chunk<T>>>,
}

impl<T> Local<T> {
    fn batch_len(&self) -> usize {
        self.batch.as_ref().map_or(0, |b| b.items.len())
    }
}

/// Counters, for tests and reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LruStats {
    /// Batches that filled up in [`Lru::add`] and were spilled by their owner.
    pub spills: u64,
    /// Non-empty batches emptied by a drain work (any context).
    pub drained_batches: u64,
    /// Chunks allocated after construction (to restore a missing spare).
    pub chunks_allocated: u64,
}

struct Inner<T, C: Config> {
    cap: usize,
    local: PerCpu<Local<T>, C>,
    /// The hand-off stack of full chunks (see the module docs).
    handoff: AtomicPtr<Chunk<T>>,
    /// Per slot: an emptied chunk given back by a fold, or null.
    returned: Box<[CachePadded<AtomicPtr<Chunk<T>>>]>,
    shared: Mutex<Vec<T>>,
    /// Per slot: the batch may hold items (the drain-all's check, read
    /// remotely). Set by the owner when its batch goes from empty to one
    /// item, cleared by whoever drains the batch; both with the slot's data
    /// in hand, so never stale "no" for items added before a drain-all.
    dirty: Box<[CachePadded<std::sync::atomic::AtomicBool>]>,
    spills: AtomicU64,
    drained: AtomicU64,
    allocated: AtomicU64,
}

impl<T: Send + 'static, C: Config> Inner<T, C> {
    /// Pushes a full chunk on the hand-off stack. Lock-free, allocation-free:
    /// safe in a signal handler.
    fn push(&self, chunk: Box<Chunk<T>>) {
        let p = Box::into_raw(chunk);
        let mut head = self.handoff.load(Ordering::Relaxed);
        loop {
            // SAFETY: `p` came from `Box::into_raw` above and is not shared
            // until the compare-exchange below publishes it.
            unsafe { (*p).next.store(head, Ordering::Relaxed) };
            match self
                .handoff
                .compare_exchange_weak(head, p, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(now) => head = now,
            }
        }
    }

    /// Takes an emptied chunk given back to slot `cpu`, if any. One atomic swap.
    fn take_returned(&self, cpu: usize) -> Option<Box<Chunk<T>>> {
        let p = self.returned[cpu].swap(ptr::null_mut(), Ordering::Acquire);
        // SAFETY: non-null pointers in `returned` come from `Box::into_raw` in
        // `give_back`, and the swap made this thread their only holder.
        (!p.is_null()).then(|| unsafe { Box::from_raw(p) })
    }

    /// Gives an empty chunk back to its slot, or frees it if the slot already
    /// has one waiting. Normal context only (it may free).
    fn give_back(&self, chunk: Box<Chunk<T>>) {
        debug_assert!(chunk.items.is_empty());
        let cell = &self.returned[chunk.cpu];
        let p = Box::into_raw(chunk);
        if cell
            .compare_exchange(ptr::null_mut(), p, Ordering::Release, Ordering::Relaxed)
            .is_err()
        {
            // SAFETY: the exchange failed, so `p` was not published; it is
            // still the box made just above.
            drop(unsafe { Box::from_raw(p) });
        }
    }

    /// The drain work's body: hands the slot's batch off. Runs with the
    /// slot's data exclusively in hand, possibly in a signal handler: it
    /// moves two pointers and pushes on the lock-free stack, nothing else.
    fn drain_slot(&self, local: &mut Local<T>, cpu: usize) {
        self.dirty[cpu].store(false, Ordering::SeqCst);
        if local.batch_len() == 0 {
            return;
        }
        // The invariant: outside a section, a non-empty batch has a spare.
        let Some(spare) = local.spare.take() else {
            unreachable!("qpw-mm lru: a non-empty batch without a spare chunk")
        };
        let full = local.batch.replace(spare);
        if let Some(full) = full {
            self.push(full);
        }
        self.drained.fetch_add(1, Ordering::Relaxed);
    }

    fn lock_shared(&self) -> MutexGuard<'_, Vec<T>> {
        // A panic while folding leaves the list consistent (items are moved
        // one by one), so a poisoned lock is still usable.
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves every handed-off item into the shared list. Normal context only:
    /// takes the mutex and may allocate. `during` runs while the mutex is held
    /// (the loom models deliver a "signal" there).
    fn fold(&self, during: impl FnOnce()) {
        let mut empties: *mut Chunk<T> = ptr::null_mut();
        {
            let mut list = self.lock_shared();
            // Taken under the mutex: once a folder has the mutex, every chunk
            // pushed before it is either in its take or already in the list.
            let mut stack = self.handoff.swap(ptr::null_mut(), Ordering::Acquire);
            during();
            // The stack is LIFO; reverse it so batches land in push order.
            let mut fifo: *mut Chunk<T> = ptr::null_mut();
            while !stack.is_null() {
                // SAFETY: chunks on the stack came from `Box::into_raw` in
                // `push`; the swap above made this thread their only holder.
                let c = unsafe { &*stack };
                let next = c.next.load(Ordering::Relaxed);
                c.next.store(fifo, Ordering::Relaxed);
                fifo = stack;
                stack = next;
            }
            while !fifo.is_null() {
                // SAFETY: as above: this thread alone holds the chain.
                let c = unsafe { &mut *fifo };
                let next = c.next.load(Ordering::Relaxed);
                list.append(&mut c.items);
                c.next.store(empties, Ordering::Relaxed);
                empties = fifo;
                fifo = next;
            }
        }
        // Give the chunks back outside the mutex (it may free).
        while !empties.is_null() {
            // SAFETY: the chain holds boxes this thread took from the stack.
            let c = unsafe { Box::from_raw(empties) };
            empties = c.next.load(Ordering::Relaxed);
            self.give_back(c);
        }
    }
}

impl<T, C: Config> Drop for Inner<T, C> {
    fn drop(&mut self) {
        let mut p = self.handoff.swap(ptr::null_mut(), Ordering::Acquire);
        while !p.is_null() {
            // SAFETY: `&mut self`: nobody else can reach the stack any more;
            // its chunks came from `Box::into_raw`.
            let c = unsafe { Box::from_raw(p) };
            p = c.next.load(Ordering::Relaxed);
        }
        for cell in self.returned.iter() {
            let p = cell.swap(ptr::null_mut(), Ordering::Acquire);
            if !p.is_null() {
                // SAFETY: as above; returned chunks came from `Box::into_raw`.
                drop(unsafe { Box::from_raw(p) });
            }
        }
    }
}

/// Per-CPU add batches over a shared list, drained through qpw.
///
/// `T` is the item (a page, in the kernel). See the [module docs](self) for
/// the design, and why the drain is safe in a signal handler.
///
/// Any thread may drain, an owner too: qpw runs the caller's own slot's
/// work at once (the call is a quiescent point for it). An owner that drains
/// in `defer` mode is best offline while it waits
/// (`owner.idle(|| lru.lru_add_drain_all())`), so that another owner draining
/// at the same time does not wait on it.
pub struct Lru<T: Send + 'static, C: Config = Standard> {
    inner: Arc<Inner<T, C>>,
    drain: WorkSet<C>,
}

impl<T: Send + 'static, C: Config> fmt::Debug for Lru<T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lru")
            .field("batch", &self.inner.cap)
            .field("nr_cpus", &self.inner.local.len())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl<T: Send + 'static, C: Config> Lru<T, C> {
    /// An LRU over `domain` with batches of [`DEFAULT_BATCH`] items.
    pub fn new(domain: &Domain<C>) -> Self {
        Self::build(domain, DEFAULT_BATCH)
    }

    /// An LRU with batches of `batch` items (`1..=MAX_BATCH`).
    ///
    /// # Errors
    ///
    /// [`BadBatchSize`] when `batch` is 0 or above [`MAX_BATCH`].
    pub fn with_batch(domain: &Domain<C>, batch: usize) -> Result<Self, BadBatchSize> {
        if batch == 0 || batch > MAX_BATCH {
            return Err(BadBatchSize { size: batch });
        }
        Ok(Self::build(domain, batch))
    }

    fn build(domain: &Domain<C>, cap: usize) -> Self {
        // Chunks are allocated lazily, on a slot's first add: a domain may
        // have far more slots than threads.
        let local = PerCpu::new(domain, |_| Local {
            batch: None,
            spare: None,
        });
        let returned = (0..domain.nr_cpus())
            .map(|_| CachePadded::new(AtomicPtr::new(ptr::null_mut())))
            .collect();
        let inner = Arc::new(Inner {
            cap,
            local,
            handoff: AtomicPtr::new(ptr::null_mut()),
            returned,
            shared: Mutex::new(Vec::new()),
            dirty: (0..domain.nr_cpus())
                .map(|_| CachePadded::new(std::sync::atomic::AtomicBool::new(false)))
                .collect(),
            spills: AtomicU64::new(0),
            drained: AtomicU64::new(0),
            allocated: AtomicU64::new(0),
        });
        let drain = domain.work_all_checked(
            {
                let inner = inner.clone();
                move |ctx| {
                    let inner = &*inner;
                    let cpu = ctx.slot();
                    let Ok(mut local) = inner.local.lock_ctx(ctx) else {
                        return;
                    };
                    inner.drain_slot(&mut local, cpu);
                }
            },
            {
                // `cpu_needs_drain`: slots whose batch stayed empty are
                // neither signalled nor locked.
                let inner = inner.clone();
                move |cpu| inner.dirty[cpu].load(Ordering::SeqCst)
            },
        );
        Lru { inner, drain }
    }

    /// Items per batch.
    pub fn batch_size(&self) -> usize {
        self.inner.cap
    }

    /// The domain the batches belong to.
    pub fn domain(&self) -> &Domain<C> {
        self.inner.local.domain()
    }

    /// Adds `item` to the owner's batch (`folio_add_lru`). When the batch is
    /// full it spills: handed off in the local section, then folded into the
    /// shared list under the mutex after the section ends.
    ///
    /// Allocates only when a slot has no spare chunk (its first add, or when
    /// its spare is still in flight), and then outside the local section.
    pub fn add(&self, owner: &mut Owner<C>, item: T) {
        self.add_then(owner, item, |_| {});
    }

    /// [`add`](Self::add), calling `during_fold(owner)` while a spill's fold
    /// holds the shared-list mutex (for the loom models).
    fn add_then(&self, owner: &mut Owner<C>, item: T, during_fold: impl FnOnce(&mut Owner<C>)) {
        let inner = &*self.inner;
        let cpu = owner.slot();
        let mut fresh: Option<Box<Chunk<T>>> = None;
        let spilled = loop {
            let mut local = inner.local.lock(owner);
            // Restore a missing batch or spare from the returned cell or the
            // chunk allocated on the previous round, before pushing.
            for which in [0, 1] {
                let place = if which == 0 {
                    &mut local.batch
                } else {
                    &mut local.spare
                };
                if place.is_none() {
                    *place = inner.take_returned(cpu).or_else(|| fresh.take());
                }
            }
            if local.batch.is_none() || local.spare.is_none() {
                // Allocate outside the section, then try again.
                drop(local);
                fresh = Some(Chunk::new(inner.cap, cpu));
                inner.allocated.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let Some(batch) = local.batch.as_mut() else {
                unreachable!("checked above")
            };
            batch.items.push(item);
            if batch.items.len() == 1 {
                // Empty -> one item: the one store per batch.
                inner.dirty[cpu].store(true, Ordering::SeqCst);
            }
            if batch.items.len() < inner.cap {
                break false;
            }
            // Full: swap in the spare and hand the batch off. The batch is
            // now empty, so the invariant holds without a spare.
            let spare = local.spare.take();
            let full = std::mem::replace(&mut local.batch, spare);
            if let Some(full) = full {
                inner.push(full);
            }
            inner.spills.fetch_add(1, Ordering::Relaxed);
            break true;
        };
        if let Some(unused) = fresh {
            inner.give_back(unused);
        }
        if spilled {
            inner.fold(|| during_fold(owner));
        }
    }

    /// Hands the owner's own batch to the shared list (`lru_add_drain`, for
    /// this CPU only): no work, no waiting.
    pub fn drain_local(&self, owner: &mut Owner<C>) {
        {
            let cpu = owner.slot();
            let mut local = self.inner.local.lock(owner);
            self.inner.drain_slot(&mut local, cpu);
        }
        self.inner.fold(|| {});
    }

    /// The kernel's name (`mm/swap.c`) for [`drain_all`](Self::drain_all),
    /// kept for readers of the kernel: the same call.
    ///
    /// # Errors
    ///
    /// As [`drain_all`](Self::drain_all).
    pub fn lru_add_drain_all(&self) -> Result<(), FlushError> {
        self.drain_all()
    }

    /// Empties every slot's batch into the shared list (`lru_add_drain_all`),
    /// through qpw's drain-all, so it works in every mode.
    ///
    /// On `Ok`, every item whose [`add`](Self::add) returned before this call
    /// is in the shared list. On a timeout (a `defer` owner that reached no
    /// quiescent point, a `queue` owner that blocks the signal) the other
    /// slots are still drained and folded, and the error names the slot.
    ///
    /// # Errors
    ///
    /// A [`FlushError`] naming a slot whose owner did not run the drain in
    /// time (see [`qpw::WorkSet::run`]); the other slots are drained all the same.
    #[doc(alias = "lru_add_drain_all")]
    pub fn drain_all(&self) -> Result<(), FlushError> {
        let r = self.drain.run();
        self.inner.fold(|| {});
        r
    }

    /// Runs `f` on the shared list, under its mutex. Items are appended in
    /// batches; `f` may remove items (as reclaim isolates pages).
    pub fn with_shared<R>(&self, f: impl FnOnce(&mut Vec<T>) -> R) -> R {
        f(&mut self.inner.lock_shared())
    }

    /// Takes every item out of the shared list.
    pub fn take_shared(&self) -> Vec<T> {
        std::mem::take(&mut *self.inner.lock_shared())
    }

    /// The number of items in the shared list (batches not counted).
    pub fn shared_len(&self) -> usize {
        self.inner.lock_shared().len()
    }

    /// The counters.
    pub fn stats(&self) -> LruStats {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        LruStats {
            spills: l(&self.inner.spills),
            drained_batches: l(&self.inner.drained),
            chunks_allocated: l(&self.inner.allocated),
        }
    }
}

#[cfg(all(test, qpw_loom))]
mod loom_models {
    //! Models of the spill/drain hand-off. qpw's loom build never delivers
    //! signals; a signal arriving at a point of the owner's code is modelled
    //! by the owner calling `quiescent()` there, which runs pending work in
    //! the owner's context exactly as the handler does.
    use super::*;
    use ::loom::thread;
    use qpw::Mode;

    fn model(mode: Mode) {
        // LOOM_MAX_PREEMPTIONS bounds the search (the CI script sets it).
        ::loom::model(move || {
            let domain: Domain = Domain::builder()
                .mode(mode.clone())
                .nr_cpus(1)
                .build()
                .unwrap();
            let lru = Arc::new(Lru::<u32>::with_batch(&domain, 2).unwrap());
            let owner = thread::spawn({
                let (domain, lru) = (domain.clone(), lru.clone());
                move || {
                    let mut me = domain.bind_unpinned(0).unwrap();
                    lru.add(&mut me, 1);
                    // The batch fills: spill, and a "signal" arrives while
                    // the fold holds the shared-list mutex.
                    lru.add_then(&mut me, 2, |o| {
                        o.quiescent();
                    });
                    lru.add(&mut me, 3);
                    me.quiescent();
                }
            });
            lru.lru_add_drain_all().unwrap();
            owner.join().unwrap();
            lru.lru_add_drain_all().unwrap();
            let mut all = lru.take_shared();
            all.sort_unstable();
            assert_eq!(all, vec![1, 2, 3]);
        });
    }

    /// Two owners spill onto the hand-off stack at once while a drainer
    /// drains and folds: chunks pushed concurrently, folded by three threads,
    /// and given back to their slots.
    #[test]
    fn loom_lru_two_owners_remote() {
        ::loom::model(|| {
            let domain: Domain = Domain::builder()
                .mode(Mode::Remote)
                .nr_cpus(2)
                .build()
                .unwrap();
            let lru = Arc::new(Lru::<u32>::with_batch(&domain, 1).unwrap());
            let owners: Vec<_> = (0..2u32)
                .map(|o| {
                    let (domain, lru) = (domain.clone(), lru.clone());
                    thread::spawn(move || {
                        let mut me = domain.bind_unpinned(o as usize).unwrap();
                        lru.add(&mut me, o);
                    })
                })
                .collect();
            lru.lru_add_drain_all().unwrap();
            for t in owners {
                t.join().unwrap();
            }
            let mut all = lru.take_shared();
            all.sort_unstable();
            assert_eq!(all, vec![0, 1]);
        });
    }

    #[test]
    fn loom_lru_spill_vs_drain_remote() {
        model(Mode::Remote);
    }

    #[test]
    fn loom_lru_spill_vs_drain_queue() {
        model(Mode::Queue);
    }

    #[test]
    fn loom_lru_spill_vs_drain_defer() {
        model(Mode::Defer);
    }
}
