//! Per-CPU storage: one cache-padded cell per slot, each with its QPW lock.

use crate::cell_lock::CellLock;
use crate::config::{Config, SlotMode, Standard};
use crate::domain::Domain;
use crate::error::Error;
use crate::owner::Owner;
use crate::section::Entered;
use crate::slot::{far_deadline, CtxKind, RemoteHold, SlotState};
use crate::sync::{Arc, MutPtr, UnsafeCell};
use crate::work::WorkCtx;
use crossbeam_utils::CachePadded;
use std::fmt;
use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::ops::{Deref, DerefMut};
use std::time::Instant;

struct Cell<T> {
    lock: CellLock,
    data: UnsafeCell<T>,
}

/// A value per slot of a [`Domain`], each in its own cache line pair.
///
/// Three ways in, as the kernel's tiers of per-CPU access:
///
/// | access | who | lock taken |
/// |---|---|---|
/// | [`lock`](Self::lock) with the [`Owner`] | the slot's owner | `queue`/`defer`: a flag, no atomic RMW; `remote` or RT: the cell's spinlock |
/// | [`lock_ctx`](Self::lock_ctx) with a [`WorkCtx`] | a work function, wherever it runs | whatever its context needs |
/// | [`remote`](Self::remote) with a slot number | any thread | `remote` mode: the cell's spinlock; otherwise only while the owner is absent or offline |
///
/// [`try_lock`](Self::try_lock) and [`try_remote`](Self::try_remote) are the
/// same without ever waiting. The cell lock gives an owner that waits on a
/// remote holder priority inheritance (see `ARCHITECTURE.md`).
///
/// ```
/// use qpw::{Config, Domain, Mode, PerCpu, Standard};
/// // `remote` where it is compiled in (the `qpw` feature), else `queue`.
/// let mode = if Standard::QPW { Mode::Remote } else { Mode::Queue };
/// let domain: Domain = Domain::builder().mode(mode).nr_cpus(2).build()?;
/// let counts = PerCpu::new(&domain, |_| 0u64);
/// let mut me = domain.bind_unpinned(0)?;
/// *counts.lock(&mut me) += 1;            // owner: local section
/// if Standard::QPW {
///     // remote mode: any other thread may lock
///     let c = &counts;
///     let v = std::thread::scope(|s| s.spawn(|| c.remote(0).map(|g| *g)).join().unwrap())?;
///     assert_eq!(v, 1);
/// }
/// drop(me);
/// assert_eq!(*counts.remote(0)?, 1);     // any mode: the slot is free
/// # Ok::<(), qpw::Error>(())
/// ```
///
/// Wrong, and refused by the compiler: two local sections at once would give
/// two `&mut` to one slot's data.
///
/// ```compile_fail
/// # use qpw::{Domain, PerCpu};
/// # let domain: Domain = Domain::new().unwrap();
/// # let counts = PerCpu::new(&domain, |_| 0u64);
/// let mut me = domain.bind_any().unwrap();
/// let a = counts.lock(&mut me);
/// let b = counts.lock(&mut me); // second mutable borrow of `me`
/// # drop((a, b));
/// ```
pub struct PerCpu<T, C: Config = Standard> {
    cells: Box<[CachePadded<Cell<T>>]>,
    domain: Domain<C>,
}

// SAFETY: the slot protocol gives one context at a time exclusive access to a
// cell's data, and that context may be on any thread, so `T: Send` is needed
// and enough for both: no `&T` is ever shared between threads at once.
unsafe impl<T: Send, C: Config> Send for PerCpu<T, C> {}
// SAFETY: as above; `&PerCpu` only hands out access under the protocol.
unsafe impl<T: Send, C: Config> Sync for PerCpu<T, C> {}

impl<T: fmt::Debug, C: Config> fmt::Debug for PerCpu<T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PerCpu")
            .field("nr_cpus", &self.cells.len())
            .finish_non_exhaustive()
    }
}

impl<T, C: Config> PerCpu<T, C> {
    /// One value per slot of `domain`, made by `init(cpu)`.
    pub fn new(domain: &Domain<C>, mut init: impl FnMut(usize) -> T) -> Self {
        let cells = (0..domain.nr_cpus())
            .map(|c| {
                CachePadded::new(Cell {
                    lock: CellLock::new(),
                    data: UnsafeCell::new(init(c)),
                })
            })
            .collect();
        Self {
            cells,
            domain: domain.clone(),
        }
    }

    /// One all-zero value per slot, in memory that is not written here: a
    /// domain of many slots (a thread-per-slot allocator has 1,024) costs
    /// resident memory only for the slots that are used, when the
    /// allocator gives fresh zero pages (a large `calloc` does).
    ///
    /// # Safety
    /// The all-zero byte pattern must be a valid `T` (integers, raw
    /// pointers, `Option<NonNull<_>>`, arrays and structs of them; not
    /// references, `NonNull` or enums without a zero variant).
    pub unsafe fn new_zeroed(domain: &Domain<C>) -> Self {
        #[cfg(not(qpw_loom))]
        {
            let n = domain.nr_cpus();
            let layout = std::alloc::Layout::array::<CachePadded<Cell<T>>>(n)
                .expect("qpw: PerCpu: the cells' size overflows");
            let p = if layout.size() == 0 {
                std::ptr::NonNull::<CachePadded<Cell<T>>>::dangling().as_ptr()
            } else {
                // SAFETY: a non-zero size.
                let p = unsafe { std::alloc::alloc_zeroed(layout) };
                if p.is_null() {
                    std::alloc::handle_alloc_error(layout);
                }
                p.cast::<CachePadded<Cell<T>>>()
            };
            // SAFETY: `p` holds `n` zeroed cells, allocated by the global
            // allocator with the layout `Box<[_]>` frees with. A `Cell` is a
            // `CellLock` (an `AtomicU32`, zero is unlocked, as
            // `CellLock::new`) and an `UnsafeCell<T>` (the layout of `T`,
            // valid all-zero by the caller's promise); `CachePadded` only
            // aligns it. So every element is a valid, initialised cell.
            let cells = unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(p, n)) };
            Self {
                cells,
                domain: domain.clone(),
            }
        }
        #[cfg(qpw_loom)]
        // SAFETY: forwarded to the caller (loom's cells are not zeroable,
        // so each value is made zeroed and moved in).
        Self::new(domain, |_| unsafe { std::mem::zeroed() })
    }

    /// The domain the values belong to.
    pub fn domain(&self) -> &Domain<C> {
        &self.domain
    }

    #[inline(always)]
    fn check_domain(&self, domain_id: usize) {
        // Another domain's owner would bring another domain's exclusion: unsound.
        assert!(
            domain_id == self.domain.id(),
            "qpw: a PerCpu was accessed with an owner or work context of another domain"
        );
    }

    /// Enters the owner's local section on this slot's value
    /// (`local_lock` + `this_cpu_ptr`).
    ///
    /// In `queue` and `defer` modes this is a flag with compiler ordering
    /// only (a plain store, and a plain load of the slot's claim word: while
    /// a `queue` drainer holds the slot, the section waits for it, in the
    /// kernel with priority inheritance); with `remote` slots or the RT
    /// policy it is the cell's spinlock too. Work queued for this slot
    /// during the section and left to the owner runs when the guard drops
    /// (in `defer` mode, every work queued for the slot runs then).
    ///
    /// # One local section per domain
    ///
    /// The guard borrows the [`Owner`] mutably, so a thread holds one local
    /// section of a domain at a time, across all the domain's `PerCpu`s:
    /// holding a guard of `a` while locking `b` with the same owner is
    /// rejected at compile time (E0499, "cannot borrow `me` as mutable more
    /// than once"). The way around: put the values used together in one
    /// `PerCpu` (a struct), or take them one after the other:
    ///
    /// ```
    /// use qpw::{Domain, PerCpu};
    ///
    /// let domain = Domain::builder().nr_cpus(1).build()?;
    /// let hits = PerCpu::new(&domain, |_| 0u64);
    /// let both = PerCpu::new(&domain, |_| (0u64, 0u64)); // used together: one cell
    /// let mut me = domain.bind_any()?;
    /// // let h = hits.lock(&mut me); let b = both.lock(&mut me); // E0499
    /// *hits.lock(&mut me) += 1; // the first guard drops here
    /// let mut b = both.lock(&mut me); // then the second section
    /// b.0 += 1;
    /// b.1 += 2;
    /// drop(b);
    /// assert_eq!(*hits.lock(&mut me), 1);
    /// # Ok::<(), qpw::Error>(())
    /// ```
    #[inline(always)]
    pub fn lock<'a>(&'a self, owner: &'a mut Owner<C>) -> LocalGuard<'a, T, C> {
        let (cell, spin) = self.owner_cell(owner);
        let slot = owner.slot_state();
        // The section flag, in every mode: a `queue` drainer waits for it
        // to close, a `remote` caller hands work to an owner that is in a
        // section (and may be preempted there) instead of waiting, and an
        // owner's own drain-all runs its work only outside one. `enter`
        // refuses a section inside this slot's own work (see there).
        let entered = slot.enter();
        if spin {
            cell.lock
                .lock_owner(crate::sys::current_tid() as u32, &slot.counters);
        }
        LocalGuard::new(cell, slot, spin, entered)
    }

    /// The owner's cell, and whether its section takes the cell's lock
    /// (`remote` slots, the RT policy), for [`lock`](Self::lock) and
    /// [`try_lock`](Self::try_lock).
    ///
    /// # Panics
    /// If `owner` belongs to another domain.
    #[inline(always)]
    fn owner_cell(&self, owner: &Owner<C>) -> (&CachePadded<Cell<T>>, bool) {
        // Another domain's owner would bring another domain's exclusion: unsound.
        assert!(
            Arc::ptr_eq(&self.domain.inner, &owner.domain.inner),
            "qpw: a PerCpu was locked with an owner of another domain"
        );
        // SAFETY: `owner.cpu` is below nr_cpus, which is `cells.len()` for
        // every PerCpu of this (checked) domain.
        let cell = unsafe { self.cells.get_unchecked(owner.cpu) };
        let spin = if C::QPW { owner.use_spin } else { C::RT };
        (cell, spin)
    }

    /// Enters the owner's local section like [`lock`](Self::lock), but never
    /// waits: `None` when another thread holds the slot right now (a
    /// `queue` drainer holds its claim word, or, where the cell lock is
    /// taken, `remote` slots and the RT configurations, a remote thread
    /// holds the cell). Work queued meanwhile is then left to the flusher,
    /// which runs it itself once the owner is outside its section.
    ///
    /// # Examples
    ///
    /// ```
    /// use qpw::{Domain, PerCpu};
    ///
    /// let domain = Domain::builder().nr_cpus(1).build()?;
    /// let counts = PerCpu::new(&domain, |_| 0u64);
    /// let mut me = domain.bind_any()?;
    /// match counts.try_lock(&mut me) {
    ///     Some(mut c) => *c += 1, // the fast path
    ///     None => { /* a drainer holds the slot: take another path */ }
    /// }
    /// # Ok::<(), qpw::Error>(())
    /// ```
    #[inline]
    pub fn try_lock<'a>(&'a self, owner: &'a mut Owner<C>) -> Option<LocalGuard<'a, T, C>> {
        let (cell, spin) = self.owner_cell(owner);
        let slot = owner.slot_state();
        // In a section before the lock, as in `lock`.
        let entered = slot.section.try_enter().ok()?;
        if spin && !cell.lock.try_lock_owner(crate::sys::current_tid() as u32) {
            slot.leave(entered);
            return None;
        }
        Some(LocalGuard::new(cell, slot, spin, entered))
    }

    /// Runs `f` in the owner's local section.
    #[inline(always)]
    pub fn with<R>(&self, owner: &mut Owner<C>, f: impl FnOnce(&mut T) -> R) -> R {
        f(&mut self.lock(owner))
    }

    /// Locks the value of the slot a work function runs for
    /// (`qpw_lock(lock, qpw_get_cpu(work))`).
    ///
    /// What it takes depends on where the work runs (see
    /// [`Work`](crate::Work)): on the owner's thread, nothing (or the cell's
    /// lock where the owner takes it: `remote` slots, the RT policy); on a
    /// `queue` drainer's thread, nothing (it holds the whole slot); for an
    /// absent or offline owner, nothing (the caller holds the slot); on
    /// another thread in `remote` mode, the cell's lock.
    ///
    /// Run remotely in `remote` mode, this waits for the cell's lock at most
    /// until the drain-all's deadline; past it, it returns
    /// [`Error::LockTimeout`] (nothing unwinds): the function should return
    /// (`let Ok(mut v) = cells.lock_ctx(ctx) else { return };`). The run is
    /// then over: it is not retried within the drain, its flush returns
    /// [`FlushError::LockTimeout`](crate::FlushError::LockTimeout) (even if
    /// the function went on without the cell), and queueing it again runs
    /// it again. A function that locks several cells decides itself what a
    /// timeout at its second lock means for its first step. In every other
    /// context it never fails.
    ///
    /// # Errors
    ///
    /// [`Error::LockTimeout`] when a remote wait for the cell's lock reached the
    /// drain's deadline, as above.
    #[inline]
    pub fn lock_ctx<'a>(&'a self, ctx: &'a mut WorkCtx<'_, C>) -> Result<CtxGuard<'a, T>, Error> {
        self.check_domain(ctx.slot.domain_id);
        let cell = &self.cells[ctx.slot.cpu];
        let lock = match ctx.kind {
            CtxKind::RemoteLocked => {
                let deadline = ctx.deadline.unwrap_or_else(far_deadline);
                let start = Instant::now();
                if cell
                    .lock
                    .lock_remote(
                        &ctx.slot.counters,
                        Some(&*ctx.slot.owner_preempted),
                        deadline,
                    )
                    .is_err()
                {
                    // The run reports it whatever the function does next.
                    ctx.timed_out = true;
                    return Err(Error::LockTimeout {
                        cpu: ctx.slot.cpu,
                        waited_ms: start.elapsed().as_millis() as u64,
                    });
                }
                Held::Remote
            }
            // Remote callers lock the cells of a `remote` slot: so must its owner.
            CtxKind::Owner if C::RT || (C::QPW && ctx.slot.mode == SlotMode::Remote) => {
                cell.lock
                    .lock_owner(crate::sys::current_tid() as u32, &ctx.slot.counters);
                Held::Owner
            }
            CtxKind::Owner | CtxKind::Busy | CtxKind::Claimed => Held::None,
        };
        Ok(CtxGuard {
            ptr: ManuallyDrop::new(cell.data.get_mut_ptr()),
            lock: &cell.lock,
            held: lock,
            _ctx: PhantomData,
        })
    }

    /// Locks slot `cpu`'s value from any thread: always in `remote` mode
    /// (waiting at most the domain's flush timeout for the cell's lock:
    /// [`Error::LockTimeout`] past it); in the other modes only while the
    /// slot has no owner or its owner is offline ([`Error::OwnerOnline`]
    /// otherwise: queue work instead). A retired slot gives [`Error::SlotRetired`];
    /// a `remote` slot the calling thread owns gives [`Error::OwnSlot`] (its
    /// own sections would wait on the guard).
    ///
    /// # Errors
    ///
    /// [`Error::CpuOutOfRange`], [`Error::OwnerOnline`], [`Error::LockTimeout`],
    /// [`Error::SlotRetired`], [`Error::OwnSlot`], as above.
    ///
    /// # Examples
    ///
    /// ```
    /// use qpw::{Domain, Mode, PerCpu};
    ///
    /// let domain = Domain::builder().mode(Mode::Queue).nr_cpus(2).build()?;
    /// let counts = PerCpu::new(&domain, |_| 0u64);
    /// *counts.remote(1)? += 5; // slot 1 has no owner: any thread may take it
    /// let mut me = domain.bind_unpinned(0)?;
    /// *counts.lock(&mut me) += 1;
    /// // A `queue` slot with an online owner: `Error::OwnerOnline`, queue work instead.
    /// assert!(counts.remote(0).is_err());
    /// let _idle = me.offline(); // while offline, remote threads may take the slot
    /// assert_eq!(*counts.remote(0)? + *counts.remote(1)?, 6);
    /// # Ok::<(), qpw::Error>(())
    /// ```
    pub fn remote(&self, cpu: usize) -> Result<RemoteGuard<'_, T, C>, Error> {
        let slot = self.domain.slot(cpu)?;
        let cell = &self.cells[cpu];
        if slot.is_retired() {
            return Err(Error::SlotRetired { cpu });
        }
        if C::QPW && slot.mode == SlotMode::Remote && crate::owned::current_thread_owns(slot) {
            // Its own sections would wait on this guard's cell lock: on itself.
            return Err(Error::OwnSlot { cpu });
        }
        if C::QPW && slot.mode == SlotMode::Remote {
            let timeout = self.domain.inner.flush_timeout;
            let deadline = Instant::now() + timeout;
            // The slot's owner may be forking (its fork gate is closed):
            // wait for it like for a held lock.
            let timed_out = || Error::LockTimeout {
                cpu,
                waited_ms: timeout.as_millis() as u64,
            };
            let Some(hold) = slot.enter_remote_until(deadline) else {
                slot.counters.lock_timeout();
                return Err(timed_out());
            };
            if cell
                .lock
                .lock_remote(&slot.counters, Some(&*slot.owner_preempted), deadline)
                .is_err()
            {
                return Err(timed_out());
            }
            return Ok(RemoteGuard::new(cell, slot, Some(hold)));
        }
        if slot.try_take() {
            return Ok(RemoteGuard::new(cell, slot, None));
        }
        Err(Error::OwnerOnline { cpu })
    }

    /// Locks slot `cpu`'s value from any thread like [`remote`](Self::remote),
    /// but never waits: [`Error::WouldBlock`] when another context holds the
    /// cell (`remote` mode) or the slot (a remote thread has taken an absent
    /// or offline owner's slot), [`Error::OwnerOnline`] as `remote` gives it.
    ///
    /// # Errors
    ///
    /// [`Error::CpuOutOfRange`], [`Error::WouldBlock`], [`Error::OwnerOnline`],
    /// [`Error::SlotRetired`], [`Error::OwnSlot`], as [`remote`](Self::remote).
    pub fn try_remote(&self, cpu: usize) -> Result<RemoteGuard<'_, T, C>, Error> {
        let slot = self.domain.slot(cpu)?;
        let cell = &self.cells[cpu];
        if slot.is_retired() {
            return Err(Error::SlotRetired { cpu });
        }
        if C::QPW && slot.mode == SlotMode::Remote && crate::owned::current_thread_owns(slot) {
            // Its own sections would wait on this guard's cell lock: on itself.
            return Err(Error::OwnSlot { cpu });
        }
        if C::QPW && slot.mode == SlotMode::Remote {
            // A closed fork gate (the owner is forking) is waited for by `remote`.
            let Some(hold) = slot.enter_remote() else {
                return Err(Error::WouldBlock { cpu });
            };
            if !cell.lock.try_lock_remote() {
                return Err(Error::WouldBlock { cpu });
            }
            return Ok(RemoteGuard::new(cell, slot, Some(hold)));
        }
        // A few looks: the state may change between one and the next (that
        // is not waiting), but a slot that stays taken gives WouldBlock.
        for _ in 0..4 {
            let s = slot.state();
            if s == crate::slot::ONLINE {
                return Err(Error::OwnerOnline { cpu });
            }
            if s & crate::slot::BUSY != 0 {
                return Err(Error::WouldBlock { cpu });
            }
            if slot.try_take() {
                return Ok(RemoteGuard::new(cell, slot, None));
            }
        }
        Err(Error::WouldBlock { cpu })
    }

    /// Every slot's value, given exclusive access to the whole `PerCpu`.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.cells.iter_mut().map(|c| c.data.get_mut())
    }

    /// The number of slots.
    pub fn len(&self) -> usize {
        self.cells.len()
    }

    /// Always `false`: a domain has at least one slot.
    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }
}

/// The owner's local section on one slot's value; leaves it on drop.
#[must_use = "if unused the local section ends at once"]
pub struct LocalGuard<'a, T, C: Config> {
    // Ended first in `drop`, before the section ends and other contexts may
    // touch the data (loom tracks it as a live access until then).
    ptr: ManuallyDrop<MutPtr<T>>,
    cell: &'a Cell<T>,
    slot: &'a SlotState<C>,
    spin: bool,
    /// The section as it was opened (see `section.rs`).
    entered: Entered,
    _owner: PhantomData<&'a mut Owner<C>>,
}

impl<'a, T, C: Config> LocalGuard<'a, T, C> {
    /// The guard of a section just entered (`entered`), the cell's lock
    /// taken if `spin`.
    #[inline(always)]
    fn new(cell: &'a Cell<T>, slot: &'a SlotState<C>, spin: bool, entered: Entered) -> Self {
        LocalGuard {
            ptr: ManuallyDrop::new(cell.data.get_mut_ptr()),
            cell,
            slot,
            spin,
            entered,
            _owner: PhantomData,
        }
    }
}

impl<T, C: Config> Deref for LocalGuard<'_, T, C> {
    type Target = T;
    #[inline(always)]
    fn deref(&self) -> &T {
        // SAFETY: the section gives this guard exclusive access: the
        // `&mut Owner` borrow keeps other sections out; a `queue` drainer
        // that claims the slot waits for the section to close, and one that
        // claimed it before had finished (the section waited for it);
        // other remote threads stay out of an online owner's slot in
        // queue/defer mode, and take the spinlock (held here) in remote mode.
        unsafe { (*self.ptr).deref() }
    }
}

impl<T, C: Config> DerefMut for LocalGuard<'_, T, C> {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`; `&mut self` makes this the only reference.
        unsafe { (*self.ptr).deref() }
    }
}

impl<T, C: Config> Drop for LocalGuard<'_, T, C> {
    #[inline(always)]
    fn drop(&mut self) {
        // SAFETY: `ptr` is dropped once, here, and not used afterwards.
        unsafe { ManuallyDrop::drop(&mut self.ptr) };
        if self.spin {
            self.cell.lock.unlock_owner();
        }
        self.slot.leave(self.entered);
        // Work that came during the section (`preempt_enable`'s resched check).
        if self.slot.has_pending() {
            section_end(self.slot);
        }
    }
}

#[cold]
#[inline(never)]
fn section_end<C: Config>(slot: &SlotState<C>) {
    slot.run_pending_as_owner(crate::stats::RanAt::SectionEnd);
}

/// Which lock a [`CtxGuard`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    None,
    Owner,
    Remote,
}

/// A work function's hold on one slot's value.
#[must_use = "if unused the lock is released at once"]
pub struct CtxGuard<'a, T> {
    ptr: ManuallyDrop<MutPtr<T>>,
    lock: &'a CellLock,
    held: Held,
    _ctx: PhantomData<&'a mut ()>,
}

impl<T> Deref for CtxGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the work's context is exclusive for the slot (owner context,
        // BUSY holder) or this guard holds the cell's spinlock (remote mode);
        // the `&mut WorkCtx` borrow keeps a second guard out.
        unsafe { (*self.ptr).deref() }
    }
}

impl<T> DerefMut for CtxGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`.
        unsafe { (*self.ptr).deref() }
    }
}

impl<T> Drop for CtxGuard<'_, T> {
    fn drop(&mut self) {
        // SAFETY: `ptr` is dropped once, here, and not used afterwards.
        unsafe { ManuallyDrop::drop(&mut self.ptr) };
        match self.held {
            Held::None => {}
            Held::Owner => self.lock.unlock_owner(),
            Held::Remote => self.lock.unlock_remote(),
        }
    }
}

/// Another thread's hold on one slot's value.
#[must_use = "if unused the lock is released at once"]
pub struct RemoteGuard<'a, T, C: Config> {
    ptr: ManuallyDrop<MutPtr<T>>,
    cell: &'a Cell<T>,
    slot: &'a SlotState<C>,
    /// `remote` mode: the cell's lock is held, and the slot counts us.
    hold: Option<RemoteHold<'a>>,
}

impl<'a, T, C: Config> RemoteGuard<'a, T, C> {
    /// The guard of slot `slot`'s cell, taken under `hold` (`remote` mode:
    /// the cell's lock) or by taking the absent owner's slot (`None`).
    #[inline]
    fn new(cell: &'a Cell<T>, slot: &'a SlotState<C>, hold: Option<RemoteHold<'a>>) -> Self {
        RemoteGuard {
            ptr: ManuallyDrop::new(cell.data.get_mut_ptr()),
            cell,
            slot,
            hold,
        }
    }
}

impl<T, C: Config> Deref for RemoteGuard<'_, T, C> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard holds the cell's spinlock (remote mode, where the
        // owner takes it too) or the slot's BUSY bit (owner absent or offline,
        // and nobody else may take BUSY or come online meanwhile).
        unsafe { (*self.ptr).deref() }
    }
}

impl<T, C: Config> DerefMut for RemoteGuard<'_, T, C> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`.
        unsafe { (*self.ptr).deref() }
    }
}

impl<T, C: Config> Drop for RemoteGuard<'_, T, C> {
    fn drop(&mut self) {
        // SAFETY: `ptr` is dropped once, here, and not used afterwards.
        unsafe { ManuallyDrop::drop(&mut self.ptr) };
        if self.hold.is_some() {
            self.cell.lock.unlock_remote();
            self.hold = None;
        } else {
            self.slot.release();
        }
    }
}

impl<T: fmt::Debug, C: Config> fmt::Debug for LocalGuard<'_, T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("LocalGuard").field(&**self).finish()
    }
}

impl<T: fmt::Debug> fmt::Debug for CtxGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CtxGuard").field(&**self).finish()
    }
}

impl<T: fmt::Debug, C: Config> fmt::Debug for RemoteGuard<'_, T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RemoteGuard").field(&**self).finish()
    }
}

#[cfg(all(test, qpw_loom))]
impl<T, C: Config> PerCpu<T, C> {
    /// The models: runs `f` on slot `cpu`'s value taking no lock, as a fork
    /// child's only thread finds it; fails if the cell's lock is held (loom
    /// fails it too if another context touches the value meanwhile).
    pub(crate) fn model_unlocked<R>(&self, cpu: usize, f: impl FnOnce(&mut T) -> R) -> R {
        let cell = &self.cells[cpu];
        assert_eq!(cell.lock.word(), 0, "cell {cpu} held at the fork");
        let p = cell.data.get_mut_ptr();
        // SAFETY: what the model checks: no other context may reach the
        // value while the fork gate is closed and the wait has returned.
        f(unsafe { p.deref() })
    }
}
