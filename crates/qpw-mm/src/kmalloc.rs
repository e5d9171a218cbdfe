//! `kmalloc`: size classes over slab caches, large requests mapped directly,
//! with an explicit-owner API and an implicit per-thread one.

use crate::cache::default_sheaf_capacity;
use crate::error::{DestroyError, FreeError, SlabError};
use crate::large::{self, LargeStats};
use crate::local;
use crate::sheaf::Pcs;
use crate::slab::{Geometry, SlabCore};
use crate::stats::{KmallocStats, SharedPathStats, ShrinkReport};
use crate::sys;
use qpw::{Config, Domain, FlushError, Mode, Owner, PerCpu, Standard, WorkSet};
use std::alloc::Layout;
use std::fmt;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The size classes, as the kernel's `kmalloc-8` .. `kmalloc-8k` caches.
pub const KMALLOC_SIZES: [usize; NCLASSES] = [
    8, 16, 32, 64, 96, 128, 192, 256, 512, 1024, 2048, 4096, 8192,
];
/// Requests above this size are mapped directly (`KMALLOC_MAX_CACHE_SIZE`).
pub const KMALLOC_MAX_CACHE_SIZE: usize = 8192;
/// Number of size classes.
pub const NCLASSES: usize = 13;
/// Default address space reserved per size class: the most its slabs can hold.
pub const DEFAULT_CLASS_BYTES: usize = 8 << 30;
/// With the default, the least reserved per class when the OS refuses more.
pub const MIN_FALLBACK_CLASS_BYTES: usize = 16 << 20;
/// Alignment of the class reservation (at least every class's slab size).
const CLASSES_ALIGN: usize = 2 << 20;

/// Size class of requests up to 192 bytes, by `(size + 7) / 8` (the
/// kernel's `kmalloc_size_index`).
const SIZE_INDEX: [u8; 25] = [
    0, 0, 1, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 6,
];

/// The size class (index into [`KMALLOC_SIZES`]) for a request of `size`
/// bytes, or `None` above [`KMALLOC_MAX_CACHE_SIZE`] (the large path). A
/// zero size gets the smallest class: every `kmalloc(0)` is a distinct,
/// freeable object.
pub fn size_class(size: usize) -> Option<usize> {
    (size <= KMALLOC_MAX_CACHE_SIZE).then(|| class_index(size))
}

/// [`size_class`] for sizes already known to be at most
/// `KMALLOC_MAX_CACHE_SIZE` (the fast path).
#[inline(always)]
fn class_index(size: usize) -> usize {
    debug_assert!(size <= KMALLOC_MAX_CACHE_SIZE);
    if size <= 192 {
        SIZE_INDEX[(size + 7) >> 3] as usize
    } else {
        (usize::BITS - (size - 1).leading_zeros()) as usize - 1
    }
}

/// The alignment objects of class `c` have (the largest power of two
/// dividing the class size: 32 for 96, 64 for 192).
#[inline]
const fn class_align(c: usize) -> usize {
    let s = KMALLOC_SIZES[c];
    s & s.wrapping_neg()
}

/// The class serving `size` bytes aligned to `align`, or `None` for the
/// large path.
#[inline(always)]
fn class_for(size: usize, align: usize) -> Option<usize> {
    if size > KMALLOC_MAX_CACHE_SIZE {
        return None;
    }
    let mut c = class_index(size);
    if align > 8 {
        while class_align(c) < align {
            c += 1;
            if c == NCLASSES {
                return None;
            }
        }
    }
    Some(c)
}

/// The slab caches of every class and the large counters, in their own
/// mapping (never from the global allocator).
pub(crate) struct Classes {
    base: usize,
    len: usize,
    span_shift: u32,
    cores: [SlabCore; NCLASSES],
    pub(crate) large: LargeStats,
}

impl Classes {
    /// Reserves `class_bytes` (rounded up to a power of two) per class and
    /// builds the caches, all without the global allocator. If the OS
    /// refuses that much address space (a low `ulimit -v`, or valgrind), the
    /// span is halved down to `min_class_bytes` before giving up.
    pub(crate) fn create(
        class_bytes: usize,
        min_class_bytes: usize,
    ) -> Result<NonNull<Classes>, SlabError> {
        let bad = SlabError::BadMaxBytes {
            max_bytes: class_bytes,
            min: CLASSES_ALIGN,
        };
        let mut span = class_bytes
            .max(CLASSES_ALIGN)
            .checked_next_power_of_two()
            .ok_or(bad.clone())?;
        span.checked_mul(NCLASSES).ok_or(bad)?;
        let floor = min_class_bytes.max(CLASSES_ALIGN).min(span);
        loop {
            match Self::create_with_span(span) {
                Err(SlabError::Map { .. }) if span / 2 >= floor => span /= 2,
                r => return r,
            }
        }
    }

    fn create_with_span(span: usize) -> Result<NonNull<Classes>, SlabError> {
        let len = span * NCLASSES;
        let base = sys::reserve(len, CLASSES_ALIGN).map_err(|errno| SlabError::Map {
            what: "kmalloc arena",
            errno,
        })?;
        let mut made: [Option<SlabCore>; NCLASSES] = [const { None }; NCLASSES];
        for (c, slot) in made.iter_mut().enumerate() {
            let size = KMALLOC_SIZES[c];
            let cap = default_sheaf_capacity(size);
            let g = Geometry {
                size,
                cap,
                max_full: crate::cache::default_depot_max_full(size, cap),
            };
            match SlabCore::new(g, base + c * span, span) {
                Ok(core) => *slot = Some(core),
                Err(errno) => {
                    for core in made.iter().flatten() {
                        // SAFETY: nothing of these cores was used.
                        unsafe { core.unmap_meta() };
                    }
                    // SAFETY: reserved above, used by nothing.
                    unsafe { sys::unmap(base, len) };
                    return Err(SlabError::Map {
                        what: "kmalloc metadata",
                        errno,
                    });
                }
            }
        }
        let cores = made.map(|c| c.expect("every class was made above"));
        let me = Classes {
            base,
            len,
            span_shift: span.trailing_zeros(),
            cores,
            large: LargeStats::default(),
        };
        let bytes = sys::round_up(std::mem::size_of::<Classes>(), sys::page_size());
        let at = match sys::map(bytes) {
            Ok(at) => at as *mut Classes,
            Err(errno) => {
                for core in &me.cores {
                    // SAFETY: nothing of these cores was used.
                    unsafe { core.unmap_meta() };
                }
                // SAFETY: reserved above, used by nothing.
                unsafe { sys::unmap(base, len) };
                return Err(SlabError::Map {
                    what: "kmalloc classes",
                    errno,
                });
            }
        };
        // SAFETY: `at` is a fresh, writable, page-aligned mapping big enough.
        unsafe { at.write(me) };
        // SAFETY: just written, non-null.
        Ok(unsafe { NonNull::new_unchecked(at) })
    }

    /// Unmaps everything: arena, metadata, and the Classes itself.
    ///
    /// # Safety
    /// `p` came from [`create`](Self::create); nothing of it is used afterwards.
    pub(crate) unsafe fn destroy(p: NonNull<Classes>) {
        // SAFETY: forwarded to the caller.
        let me = unsafe { p.as_ref() };
        for core in &me.cores {
            // SAFETY: forwarded to the caller.
            unsafe { core.unmap_meta() };
        }
        // SAFETY: forwarded to the caller.
        unsafe {
            sys::unmap(me.base, me.len);
            std::ptr::drop_in_place(p.as_ptr());
            sys::unmap(
                p.as_ptr() as usize,
                sys::round_up(std::mem::size_of::<Classes>(), sys::page_size()),
            );
        }
    }

    /// The class of an object address, or `None` (a large object).
    #[inline(always)]
    fn class_of(&self, p: *mut u8) -> Option<usize> {
        let off = (p as usize).wrapping_sub(self.base);
        (off < self.len).then_some(off >> self.span_shift)
    }

    /// Usable size of an allocated object.
    ///
    /// # Safety
    /// `p` is allocated from this instance (checked in debug builds for large objects).
    unsafe fn usable_size(&self, p: *mut u8) -> Result<usize, FreeError> {
        match self.class_of(p) {
            Some(c) => Ok(KMALLOC_SIZES[c]),
            // SAFETY: forwarded to the caller.
            None => unsafe { large::usable_size(p) },
        }
    }

    /// The shared path's allocation (no slot).
    pub(crate) fn alloc_shared(&self, size: usize, align: usize) -> *mut u8 {
        match class_for(size, align) {
            Some(c) => {
                let p = self.cores[c].alloc_shared();
                if !p.is_null() {
                    self.cores[c].mark_allocated(p);
                }
                p
            }
            None => large::alloc(size, align, &self.large),
        }
    }

    /// The shared path's free.
    ///
    /// # Safety
    /// `p` is allocated from this instance and given up.
    pub(crate) unsafe fn free_shared(&self, p: *mut u8) -> Result<(), FreeError> {
        match self.class_of(p) {
            Some(c) => {
                self.cores[c].check_free(p)?;
                // SAFETY: forwarded to the caller.
                unsafe { self.cores[c].free_shared(p) };
                Ok(())
            }
            // SAFETY: forwarded to the caller.
            None => unsafe { large::free(p, &self.large) },
        }
    }

    /// The in-place part of a reallocation: `Kept(p)` when `p` can serve
    /// `new_size` as it is (same class) or after an `mremap` (large), else
    /// `Move(bytes)`: allocate anew and copy that many bytes.
    ///
    /// # Safety
    /// `p` is allocated from this instance with alignment `align`.
    pub(crate) unsafe fn resize(
        &self,
        p: *mut u8,
        align: usize,
        new_size: usize,
    ) -> Result<Resize, FreeError> {
        // SAFETY: forwarded to the caller.
        let old = unsafe { self.usable_size(p) }?;
        let new_class = class_for(new_size, align);
        match self.class_of(p) {
            Some(c) if new_class == Some(c) => return Ok(Resize::Kept(p)),
            None if new_class.is_none() && align <= sys::page_size() => {
                // SAFETY: `p` is a live, page-aligned large object.
                let np = unsafe { large::realloc(p, new_size, &self.large) };
                if !np.is_null() {
                    return Ok(Resize::Kept(np));
                }
            }
            _ => {}
        }
        Ok(Resize::Move(old.min(new_size)))
    }
}

/// What [`Classes::resize`] decided.
pub(crate) enum Resize {
    /// The object (possibly at a new address after `mremap`) serves the new size.
    Kept(*mut u8),
    /// Allocate anew and copy this many bytes.
    Move(usize),
}

/// One slot's sheaves for every size class.
#[repr(C)]
pub(crate) struct KPcs([Pcs; NCLASSES]);

/// What the slots, drain work and handles of one instance share.
pub(crate) struct KShared<C: Config> {
    pcs: PerCpu<KPcs, C>,
    // Copies of the class arena's bounds, for `kfree` without a pointer chase.
    base: usize,
    len: usize,
    span_shift: u32,
    classes: NonNull<Classes>,
    owns_classes: bool,
    id: usize,
    next_slot: AtomicUsize,
    bind_gen: AtomicU64,
    threads_bound: AtomicU64,
    threads_unbound: AtomicU64,
    shared_path: [AtomicU64; 6],
}

// SAFETY: `classes` points to a `Classes`, which is Send and Sync (its caches
// synchronise internally), valid as long as the KShared (it is unmapped only
// in KShared's drop, or never). The rest is Send + Sync on its own.
unsafe impl<C: Config> Send for KShared<C> {}
// SAFETY: as above.
unsafe impl<C: Config> Sync for KShared<C> {}

/// In a remembered failed binding's generation: it failed because the
/// thread blocks the qpw signal (see `binding_slow`).
const FAILED_SIGNAL_BLOCKED: u64 = 1 << 63;

#[derive(Clone, Copy)]
enum SharedReason {
    NoSlot = 0,
    Reentrant = 1,
    Exiting = 2,
    TableFull = 3,
    /// The thread blocks the qpw signal and the configuration has no
    /// `remote` mode to bind it in (`NoQpw`, `RtNoQpw`).
    SignalBlocked = 4,
    /// Binding failed for another reason (named by `qpw::Error`).
    BindFailed = 5,
}

impl<C: Config> KShared<C> {
    #[inline(always)]
    fn classes(&self) -> &Classes {
        // SAFETY: valid as long as self (see the Send impl).
        unsafe { self.classes.as_ref() }
    }

    #[inline(always)]
    fn class_of(&self, p: *mut u8) -> Option<usize> {
        let off = (p as usize).wrapping_sub(self.base);
        (off < self.len).then_some(off >> self.span_shift)
    }

    fn count(&self, r: SharedReason) {
        self.shared_path[r as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Every slot's sheaves back into the slabs (exclusive access); returns
    /// (objects still allocated, their bytes).
    fn settle(&mut self) -> (usize, usize) {
        // SAFETY: as in `classes`; a separate borrow from `pcs`.
        let cl = unsafe { self.classes.as_ref() };
        for pcs in self.pcs.iter_mut() {
            for (core, p) in cl.cores.iter().zip(pcs.0.iter_mut()) {
                core.reclaim_pcs(p);
            }
        }
        let mut objects = 0;
        let mut bytes = 0;
        for core in &cl.cores {
            let n = core.settle_and_count_allocated();
            objects += n;
            bytes += n * core.size();
        }
        (objects, bytes)
    }
}

impl<C: Config> Drop for KShared<C> {
    fn drop(&mut self) {
        let (objects, _) = self.settle();
        if self.owns_classes && objects == 0 {
            // SAFETY: nothing is allocated and no slot holds a sheaf; with
            // `&mut self` nobody else reaches the classes.
            unsafe { Classes::destroy(self.classes) };
        }
    }
}

/// A thread's implicit binding to one instance.
struct Binding<C: Config> {
    owner: Owner<C>,
    shared: Arc<KShared<C>>,
}

/// Releases a binding: drains its slot's sheaves to the depots and drops
/// the owner (qpw runs its pending work and frees the slot for reuse).
///
/// # Safety
/// `p` is a `Binding<C>` made by `bind_local`, removed from the table.
unsafe fn release_binding<C: Config>(p: *mut ()) {
    // SAFETY: forwarded to the caller: a boxed Binding<C>, released once.
    let mut b = unsafe { Box::from_raw(p.cast::<Binding<C>>()) };
    let id = b.shared.id;
    let entered = local::busy_enter(id);
    {
        let Binding { owner, shared } = &mut *b;
        let cl = shared.classes();
        let mut pcs = shared.pcs.lock(owner);
        for (core, p) in cl.cores.iter().zip(pcs.0.iter_mut()) {
            core.drain_pcs(p);
        }
    }
    b.shared.threads_unbound.fetch_add(1, Ordering::Relaxed);
    b.shared.bind_gen.fetch_add(1, Ordering::Release);
    drop(b);
    if entered {
        local::busy_leave(id);
    }
}

fn next_id() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A `kmalloc` instance: size classes from 8 bytes to 8 KiB over per-CPU
/// slab caches on one [`Domain`], larger requests mapped directly.
///
/// Two ways to call it:
///
/// - **explicit**: [`kmalloc`](Self::kmalloc), [`kfree`](Self::kfree), ...
///   take the thread's `&mut Owner` of the domain, as kernel code runs on
///   its CPU;
/// - **implicit**: [`kmalloc_local`](Self::kmalloc_local), ... find the
///   thread's own binding in thread-local storage, binding a free slot
///   (unpinned) on first use. The binding is released when the thread exits
///   (its slot drained and freed for reuse) or by [`unbind_local`](Self::unbind_local).
///   A thread that finds no free slot still allocates and frees correctly
///   through the *shared path* (the depot under its lock), counted in
///   [`KmallocStats::shared_path`]; it tries again once another thread's implicit
///   binding of this allocator is released.
///
/// Objects may be freed by any thread, through either API, whichever slot
/// allocated them. In `defer` mode implicitly bound threads run drains at
/// their slow paths, [`quiescent_local`](Self::quiescent_local), or exit;
/// a thread that stays idle delays [`flush_all`](Self::flush_all) until its
/// timeout.
///
/// ```
/// use qpw::Mode;
/// use qpw_mm::Kmalloc;
///
/// let km: Kmalloc = Kmalloc::builder().mode(Mode::Remote).nr_cpus(4).build()?;
/// let p = km.kmalloc_local(100).expect("out of memory");
/// // SAFETY: `p` came from `km` and is freed once.
/// let p = unsafe { km.krealloc_local(p.as_ptr(), 5000) }.expect("out of memory");
/// unsafe { km.kfree_local(p.as_ptr()) };
/// km.unbind_local();
/// km.destroy()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Kmalloc<C: Config = Standard> {
    shared: Arc<KShared<C>>,
    drain: WorkSet<C>,
}

impl<C: Config> fmt::Debug for Kmalloc<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kmalloc")
            .field("config", &C::NAME)
            .field("mode", &self.domain().mode().to_string())
            .field("nr_cpus", &self.domain().nr_cpus())
            .finish()
    }
}

/// Builds a [`Kmalloc`] and, unless given one, its domain.
#[derive(Debug, Clone)]
pub struct KmallocBuilder<C: Config = Standard> {
    domain: Option<Domain<C>>,
    nr_cpus: Option<usize>,
    mode: Option<Mode>,
    flush_timeout: Option<Duration>,
    class_bytes: Option<usize>,
}

impl<C: Config> Default for KmallocBuilder<C> {
    fn default() -> Self {
        Self {
            domain: None,
            nr_cpus: None,
            mode: None,
            flush_timeout: None,
            class_bytes: None,
        }
    }
}

impl<C: Config> KmallocBuilder<C> {
    /// Uses an existing domain (then `nr_cpus`, `mode` and `flush_timeout`
    /// are the domain's).
    pub fn domain(mut self, domain: &Domain<C>) -> Self {
        self.domain = Some(domain.clone());
        self
    }

    /// Slots of the new domain (default: qpw's, one per CPU the process may
    /// use). Programs with more threads than CPUs that use the implicit API
    /// want more: a slot per live thread.
    pub fn nr_cpus(mut self, n: usize) -> Self {
        self.nr_cpus = Some(n);
        self
    }

    /// The new domain's mode (default: the `QPW` variable, else `queue`).
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = Some(mode);
        self
    }

    /// The new domain's flush timeout.
    pub fn flush_timeout(mut self, t: Duration) -> Self {
        self.flush_timeout = Some(t);
        self
    }

    /// Address space reserved per size class (rounded up to a power of two,
    /// at least 2 MiB). Default [`DEFAULT_CLASS_BYTES`], or less (down to
    /// [`MIN_FALLBACK_CLASS_BYTES`]) if the OS refuses that much; a value set
    /// here is reserved exactly or the build fails.
    pub fn class_bytes(mut self, bytes: usize) -> Self {
        self.class_bytes = Some(bytes);
        self
    }

    /// Builds the domain (unless given) and the instance.
    pub fn build(self) -> Result<Kmalloc<C>, SlabError> {
        let domain = match self.domain {
            Some(d) => d,
            None => {
                let mut b = Domain::<C>::builder();
                if let Some(n) = self.nr_cpus {
                    b = b.nr_cpus(n);
                }
                if let Some(m) = self.mode {
                    b = b.mode(m);
                }
                if let Some(t) = self.flush_timeout {
                    b = b.flush_timeout(t);
                }
                b.build()?
            }
        };
        let classes = match self.class_bytes {
            Some(b) => Classes::create(b, b)?,
            None => Classes::create(DEFAULT_CLASS_BYTES, MIN_FALLBACK_CLASS_BYTES)?,
        };
        Ok(Kmalloc::from_parts(domain, classes, true))
    }
}

impl<C: Config> Kmalloc<C> {
    /// A builder.
    pub fn builder() -> KmallocBuilder<C> {
        KmallocBuilder::default()
    }

    /// An instance on an existing domain.
    pub fn new(domain: &Domain<C>) -> Result<Self, SlabError> {
        Self::builder().domain(domain).build()
    }

    pub(crate) fn from_parts(
        domain: Domain<C>,
        classes: NonNull<Classes>,
        owns_classes: bool,
    ) -> Self {
        // SAFETY: `classes` is valid (just made, or leaked for good).
        let cl = unsafe { classes.as_ref() };
        let id = next_id();
        let shared = Arc::new(KShared {
            pcs: PerCpu::new(&domain, |_| KPcs([const { Pcs::new() }; NCLASSES])),
            base: cl.base,
            len: cl.len,
            span_shift: cl.span_shift,
            classes,
            owns_classes,
            id,
            next_slot: AtomicUsize::new(0),
            bind_gen: AtomicU64::new(0),
            threads_bound: AtomicU64::new(0),
            threads_unbound: AtomicU64::new(0),
            shared_path: Default::default(),
        });
        let sh = shared.clone();
        let drain = domain.work_all(move |ctx| {
            // Every class's sheaves to its hand-off stack: no lock but the
            // slot's, no allocation (this may run in a signal handler).
            let cl = sh.classes();
            let mut pcs = sh.pcs.lock_ctx(ctx);
            for (core, p) in cl.cores.iter().zip(pcs.0.iter_mut()) {
                core.drain_pcs(p);
            }
        });
        Kmalloc { shared, drain }
    }

    /// The domain whose slots hold the sheaves.
    pub fn domain(&self) -> &Domain<C> {
        self.shared.pcs.domain()
    }

    #[inline(always)]
    fn debug_mark(&self, c: usize, p: *mut u8) {
        #[cfg(debug_assertions)]
        if !p.is_null() {
            self.shared.classes().cores[c].mark_allocated(p);
        }
        #[cfg(not(debug_assertions))]
        let _ = (c, p);
    }

    /// The slot path for class `c`.
    #[inline(always)]
    fn alloc_class(&self, owner: &mut Owner<C>, c: usize) -> *mut u8 {
        let sh = &*self.shared;
        let mut g = sh.pcs.lock(owner);
        // SAFETY: class indices are below NCLASSES.
        let pcs = unsafe { g.0.get_unchecked_mut(c) };
        let p = match pcs.pop() {
            Some(p) => {
                drop(g);
                p
            }
            None => {
                let p = sh.classes().cores[c].alloc_slow(pcs);
                drop(g);
                owner.quiescent();
                p
            }
        };
        self.debug_mark(c, p);
        p
    }

    /// Allocates `size` bytes (`kmalloc`), aligned to 8 (and to the class
    /// size's largest power-of-two divisor). Zero bytes get a distinct
    /// smallest object. `None` when out of memory.
    ///
    /// # Panics
    /// If `owner` belongs to another domain.
    #[inline]
    pub fn kmalloc(&self, owner: &mut Owner<C>, size: usize) -> Option<NonNull<u8>> {
        if size <= KMALLOC_MAX_CACHE_SIZE {
            NonNull::new(self.alloc_class(owner, class_index(size)))
        } else {
            NonNull::new(large::alloc(size, 8, &self.shared.classes().large))
        }
    }

    /// Allocates for `layout` (any power-of-two alignment; up to 8 KiB from
    /// the classes, beyond that mapped directly).
    #[inline]
    pub fn alloc(&self, owner: &mut Owner<C>, layout: Layout) -> Option<NonNull<u8>> {
        match class_for(layout.size(), layout.align()) {
            Some(c) => NonNull::new(self.alloc_class(owner, c)),
            None => NonNull::new(large::alloc(
                layout.size(),
                layout.align(),
                &self.shared.classes().large,
            )),
        }
    }

    #[inline(always)]
    unsafe fn free_inner(&self, owner: &mut Owner<C>, p: *mut u8) -> Result<(), FreeError> {
        let sh = &*self.shared;
        match sh.class_of(p) {
            Some(c) => {
                #[cfg(debug_assertions)]
                sh.classes().cores[c].check_free(p)?;
                let mut g = sh.pcs.lock(owner);
                // SAFETY: class indices are below NCLASSES.
                let pcs = unsafe { g.0.get_unchecked_mut(c) };
                if !pcs.push(p) {
                    sh.classes().cores[c].free_slow(pcs, p);
                    drop(g);
                    owner.quiescent();
                }
                Ok(())
            }
            // SAFETY: forwarded to the caller.
            None => unsafe { large::free(p, &sh.classes().large) },
        }
    }

    /// Frees an object (`kfree`) into this slot's sheaf, whichever slot or
    /// thread allocated it. A null pointer is ignored.
    ///
    /// # Safety
    /// `ptr` must be null or come from this instance (any of its APIs) and
    /// not have been freed since; it must not be used afterwards.
    ///
    /// # Panics
    /// Debug builds detect a double free or a pointer this instance did not
    /// hand out and panic naming it. Release builds check large objects'
    /// headers only.
    #[inline]
    pub unsafe fn kfree(&self, owner: &mut Owner<C>, ptr: *mut u8) {
        if ptr.is_null() {
            return;
        }
        // SAFETY: forwarded to the caller.
        if let Err(e) = unsafe { self.free_inner(owner, ptr) } {
            panic!("qpw-mm: kfree: {e}");
        }
    }

    /// Resizes an object (`krealloc`): kept in place when the new size has
    /// the same class (or a large object can be remapped), else moved. A
    /// null `ptr` allocates. `None` when out of memory, and then `ptr` is
    /// untouched and still allocated.
    ///
    /// # Safety
    /// As [`kfree`](Self::kfree); on success `ptr` must not be used again.
    pub unsafe fn krealloc(
        &self,
        owner: &mut Owner<C>,
        ptr: *mut u8,
        new_size: usize,
    ) -> Option<NonNull<u8>> {
        // SAFETY: forwarded.
        unsafe { self.realloc(owner, ptr, 8, new_size) }
    }

    /// [`krealloc`](Self::krealloc) for an object allocated with alignment `align`.
    ///
    /// # Safety
    /// As [`krealloc`](Self::krealloc); `align` is the original alignment.
    pub unsafe fn realloc(
        &self,
        owner: &mut Owner<C>,
        ptr: *mut u8,
        align: usize,
        new_size: usize,
    ) -> Option<NonNull<u8>> {
        if ptr.is_null() {
            return self.alloc(owner, Layout::from_size_align(new_size, align).ok()?);
        }
        // SAFETY: forwarded to the caller.
        match unsafe { self.shared.classes().resize(ptr, align, new_size) } {
            Ok(Resize::Kept(p)) => NonNull::new(p),
            Ok(Resize::Move(n)) => {
                let np = self.alloc(owner, Layout::from_size_align(new_size, align).ok()?)?;
                // SAFETY: both objects are live, distinct, and at least `n` bytes.
                unsafe { std::ptr::copy_nonoverlapping(ptr, np.as_ptr(), n) };
                // SAFETY: forwarded to the caller.
                if let Err(e) = unsafe { self.free_inner(owner, ptr) } {
                    panic!("qpw-mm: krealloc: {e}");
                }
                Some(np)
            }
            Err(e) => panic!("qpw-mm: krealloc: {e}"),
        }
    }

    /// The usable size of an allocated object (`ksize`): its class size, or
    /// the mapped bytes of a large one.
    ///
    /// # Safety
    /// `ptr` must be allocated from this instance.
    pub unsafe fn ksize(&self, ptr: *mut u8) -> usize {
        // SAFETY: forwarded.
        match unsafe { self.shared.classes().usable_size(ptr) } {
            Ok(n) => n,
            Err(e) => panic!("qpw-mm: ksize: {e}"),
        }
    }

    /// Allocates `out.len()` objects of `size` bytes under one local section
    /// (`kmem_cache_alloc_bulk` on a kmalloc cache). Returns how many were
    /// allocated (all, unless memory ran out).
    #[inline]
    pub fn kmalloc_bulk(&self, owner: &mut Owner<C>, size: usize, out: &mut [*mut u8]) -> usize {
        if size > KMALLOC_MAX_CACHE_SIZE {
            let large = &self.shared.classes().large;
            for (i, o) in out.iter_mut().enumerate() {
                *o = large::alloc(size, 8, large);
                if o.is_null() {
                    return i;
                }
            }
            return out.len();
        }
        let c = class_index(size);
        let sh = &*self.shared;
        let mut g = sh.pcs.lock(owner);
        // SAFETY: class indices are below NCLASSES.
        let pcs = unsafe { g.0.get_unchecked_mut(c) };
        let (n, slow) = crate::cache::bulk_alloc(&sh.classes().cores[c], pcs, out);
        drop(g);
        if slow {
            owner.quiescent();
        }
        for &p in &out[..n] {
            self.debug_mark(c, p);
        }
        n
    }

    /// Frees every object of `ptrs` (any classes, large ones too) under one
    /// local section. Null entries are ignored.
    ///
    /// # Safety
    /// As [`kfree`](Self::kfree) for each pointer (no duplicates).
    ///
    /// # Panics
    /// As [`kfree`](Self::kfree).
    #[inline]
    pub unsafe fn kfree_bulk(&self, owner: &mut Owner<C>, ptrs: &[*mut u8]) {
        let sh = &*self.shared;
        #[cfg(debug_assertions)]
        for &p in ptrs {
            if let Some(c) = sh.class_of(p) {
                if let Err(e) = sh.classes().cores[c].check_free(p) {
                    panic!("qpw-mm: kfree_bulk: {e}");
                }
            }
        }
        let mut large = false;
        let mut slow = false;
        {
            let mut g = sh.pcs.lock(owner);
            for &p in ptrs {
                match sh.class_of(p) {
                    Some(c) => {
                        // SAFETY: class indices are below NCLASSES.
                        let pcs = unsafe { g.0.get_unchecked_mut(c) };
                        if !pcs.push(p) {
                            sh.classes().cores[c].free_slow(pcs, p);
                            slow = true;
                        }
                    }
                    None => large |= !p.is_null(),
                }
            }
        }
        if slow {
            owner.quiescent();
        }
        if large {
            for &p in ptrs {
                if !p.is_null() && sh.class_of(p).is_none() {
                    // SAFETY: forwarded to the caller.
                    if let Err(e) = unsafe { large::free(p, &sh.classes().large) } {
                        panic!("qpw-mm: kfree_bulk: {e}");
                    }
                }
            }
        }
    }

    // ---- implicit per-thread binding -------------------------------------

    /// Binds this thread to a free slot (unpinned), starting the search at a
    /// rotating position.
    fn bind_free_slot(&self) -> Result<Owner<C>, qpw::Error> {
        let d = self.domain();
        let n = d.nr_cpus();
        let start = self.shared.next_slot.fetch_add(1, Ordering::Relaxed) % n;
        for i in 0..n {
            let cpu = (start + i) % n;
            if d.is_owned(cpu).unwrap_or(true) {
                continue;
            }
            match d.bind_unpinned(cpu) {
                Err(qpw::Error::SlotOwned { .. }) => continue,
                r => return r,
            }
        }
        Err(qpw::Error::NoFreeSlot { nr_cpus: n })
    }

    /// This thread's binding, made on first use; or why the shared path
    /// must serve it.
    #[cold]
    #[inline(never)]
    fn binding_slow(&self) -> Result<*mut Binding<C>, SharedReason> {
        let sh = &*self.shared;
        if local::exiting() {
            return Err(SharedReason::Exiting);
        }
        let found = local::find(sh.id);
        if !found.is_null() {
            return Ok(found.cast());
        }
        if local::is_busy(sh.id) {
            return Err(SharedReason::Reentrant);
        }
        let generation = sh.bind_gen.load(Ordering::Acquire);
        // A failure is remembered with its generation, and its reason in the
        // top bit (a generation never gets there): the shared path is
        // counted under the reason that sent it there.
        match local::failed_at(sh.id) {
            Some(g) if g == generation => return Err(SharedReason::NoSlot),
            Some(g) if g == generation | FAILED_SIGNAL_BLOCKED => {
                return Err(SharedReason::SignalBlocked)
            }
            _ => {}
        }
        if !local::has_room() {
            return Err(SharedReason::TableFull);
        }
        if !local::busy_enter(sh.id) {
            return Err(SharedReason::Reentrant);
        }
        // From here until busy_leave, allocations of this thread on this
        // instance (qpw's own boxes) take the shared path.
        let r = match self.bind_free_slot() {
            Ok(owner) => {
                let b = Box::into_raw(Box::new(Binding {
                    owner,
                    shared: self.shared.clone(),
                }));
                if local::arm_exit_hook() && local::insert(sh.id, b.cast(), release_binding::<C>) {
                    sh.threads_bound.fetch_add(1, Ordering::Relaxed);
                    local::clear_failed(sh.id);
                    Ok(b)
                } else {
                    // SAFETY: `b` was boxed above and never shared.
                    drop(unsafe { Box::from_raw(b) });
                    Err(SharedReason::TableFull)
                }
            }
            Err(e) => {
                let reason = match e {
                    qpw::Error::NoFreeSlot { .. } => SharedReason::NoSlot,
                    qpw::Error::SignalBlocked { .. } => SharedReason::SignalBlocked,
                    _ => SharedReason::BindFailed,
                };
                let mark = match reason {
                    SharedReason::SignalBlocked => FAILED_SIGNAL_BLOCKED,
                    _ => 0,
                };
                local::set_failed(sh.id, generation | mark);
                Err(reason)
            }
        };
        local::busy_leave(sh.id);
        r
    }

    /// This thread's owner for the fast path, or the shared path's reason.
    #[inline(always)]
    fn binding(&self) -> Result<*mut Binding<C>, SharedReason> {
        let sh = &*self.shared;
        let b = local::lookup(sh.id, local::hint_of(sh.id));
        if !b.is_null() {
            return Ok(b.cast());
        }
        self.binding_slow()
    }

    /// Allocation with the implicit binding, for the global allocator.
    #[inline(always)]
    pub(crate) fn alloc_local_raw(&self, size: usize, align: usize) -> *mut u8 {
        match class_for(size, align) {
            Some(c) => match self.binding() {
                // SAFETY: the binding belongs to this thread and no other
                // reference to it is live: the allocator never re-enters
                // itself while holding it (it allocates nothing from the
                // global allocator in a local section).
                Ok(b) => self.alloc_class(unsafe { &mut (*b).owner }, c),
                Err(r) => {
                    self.shared.count(r);
                    self.shared.classes().alloc_shared(size, align)
                }
            },
            None => large::alloc(size, align, &self.shared.classes().large),
        }
    }

    /// Free with the implicit binding, for the global allocator.
    ///
    /// # Safety
    /// As [`kfree`](Self::kfree), non-null.
    #[inline(always)]
    pub(crate) unsafe fn free_local_raw(&self, p: *mut u8) -> Result<(), FreeError> {
        if self.shared.class_of(p).is_none() {
            // SAFETY: forwarded to the caller.
            return unsafe { large::free(p, &self.shared.classes().large) };
        }
        match self.binding() {
            // SAFETY: as in alloc_local_raw; `p` forwarded to the caller.
            Ok(b) => unsafe { self.free_inner(&mut (*b).owner, p) },
            Err(r) => {
                self.shared.count(r);
                // SAFETY: forwarded to the caller.
                unsafe { self.shared.classes().free_shared(p) }
            }
        }
    }

    /// Reallocation with the implicit binding, for the global allocator.
    /// Null when out of memory (the old object then stays allocated).
    ///
    /// # Safety
    /// As [`realloc`](Self::realloc), non-null.
    pub(crate) unsafe fn realloc_local_raw(
        &self,
        p: *mut u8,
        align: usize,
        new_size: usize,
    ) -> Result<*mut u8, FreeError> {
        // SAFETY: forwarded to the caller.
        match unsafe { self.shared.classes().resize(p, align, new_size) }? {
            Resize::Kept(np) => Ok(np),
            Resize::Move(n) => {
                let np = self.alloc_local_raw(new_size, align);
                if np.is_null() {
                    return Ok(np);
                }
                // SAFETY: both objects are live, distinct, and at least `n` bytes.
                unsafe { std::ptr::copy_nonoverlapping(p, np, n) };
                // SAFETY: forwarded to the caller.
                unsafe { self.free_local_raw(p) }?;
                Ok(np)
            }
        }
    }

    /// [`kmalloc`](Self::kmalloc) with this thread's implicit binding (made
    /// on first use), or the shared path when no slot is free.
    #[inline]
    pub fn kmalloc_local(&self, size: usize) -> Option<NonNull<u8>> {
        NonNull::new(self.alloc_local_raw(size, 8))
    }

    /// [`alloc`](Self::alloc) with this thread's implicit binding.
    #[inline]
    pub fn alloc_local(&self, layout: Layout) -> Option<NonNull<u8>> {
        NonNull::new(self.alloc_local_raw(layout.size(), layout.align()))
    }

    /// [`kfree`](Self::kfree) with this thread's implicit binding.
    ///
    /// # Safety
    /// As [`kfree`](Self::kfree).
    ///
    /// # Panics
    /// As [`kfree`](Self::kfree).
    #[inline]
    pub unsafe fn kfree_local(&self, ptr: *mut u8) {
        if ptr.is_null() {
            return;
        }
        // SAFETY: forwarded to the caller.
        if let Err(e) = unsafe { self.free_local_raw(ptr) } {
            panic!("qpw-mm: kfree: {e}");
        }
    }

    /// [`krealloc`](Self::krealloc) with this thread's implicit binding.
    ///
    /// # Safety
    /// As [`krealloc`](Self::krealloc).
    pub unsafe fn krealloc_local(&self, ptr: *mut u8, new_size: usize) -> Option<NonNull<u8>> {
        // SAFETY: forwarded.
        unsafe { self.realloc_local(ptr, 8, new_size) }
    }

    /// [`realloc`](Self::realloc) with this thread's implicit binding.
    ///
    /// # Safety
    /// As [`realloc`](Self::realloc).
    pub unsafe fn realloc_local(
        &self,
        ptr: *mut u8,
        align: usize,
        new_size: usize,
    ) -> Option<NonNull<u8>> {
        if !align.is_power_of_two() {
            return None;
        }
        if ptr.is_null() {
            return NonNull::new(self.alloc_local_raw(new_size, align));
        }
        // SAFETY: forwarded to the caller.
        match unsafe { self.realloc_local_raw(ptr, align, new_size) } {
            Ok(p) => NonNull::new(p),
            Err(e) => panic!("qpw-mm: krealloc: {e}"),
        }
    }

    /// Runs the drain work queued for this thread's implicit slot (defer
    /// mode's quiescent point). Returns whether any ran.
    pub fn quiescent_local(&self) -> bool {
        let b = local::find(self.shared.id);
        if b.is_null() || local::is_busy(self.shared.id) {
            return false;
        }
        // SAFETY: this thread's binding, no other reference live (we are
        // not inside the allocator).
        unsafe { (*b.cast::<Binding<C>>()).owner.quiescent() }
    }

    /// Releases this thread's implicit binding now (as its exit would):
    /// drains its slot and frees it. Returns whether there was one.
    pub fn unbind_local(&self) -> bool {
        let id = self.shared.id;
        if local::is_busy(id) {
            return false;
        }
        match local::remove(id) {
            Some((p, release)) => {
                // SAFETY: removed from the table, so released exactly once.
                unsafe { release(p) };
                true
            }
            None => false,
        }
    }

    // ---- drains, statistics, teardown --------------------------------------

    /// Drains every slot's sheaves, all classes, into the depots (drain-all
    /// through qpw; works in every mode).
    pub fn flush_all(&self) -> Result<(), FlushError> {
        let r = self.drain.run();
        for core in &self.shared.classes().cores {
            core.collect();
        }
        r
    }

    /// Drains every slot, returns free objects to their slabs and releases
    /// wholly free slabs to the OS. As [`KmemCache::shrink`](crate::KmemCache::shrink).
    pub fn shrink(&self) -> Result<ShrinkReport, FlushError> {
        let r = self.flush_all();
        let mut rep = ShrinkReport::default();
        for core in &self.shared.classes().cores {
            rep.add(core.shrink());
        }
        r.map(|()| rep)
    }

    /// Everything the instance counted.
    pub fn stats(&self) -> KmallocStats {
        let sh = &*self.shared;
        let cl = sh.classes();
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        KmallocStats {
            config: C::NAME,
            mode: self.domain().mode().to_string(),
            nr_cpus: self.domain().nr_cpus(),
            classes: cl.cores.iter().map(|c| c.stats()).collect(),
            large_allocs: r(&cl.large.allocs),
            large_frees: r(&cl.large.frees),
            large_live_bytes: r(&cl.large.live_bytes),
            threads_bound: r(&sh.threads_bound),
            threads_unbound: r(&sh.threads_unbound),
            shared_path: SharedPathStats {
                no_slot: r(&sh.shared_path[SharedReason::NoSlot as usize]),
                reentrant: r(&sh.shared_path[SharedReason::Reentrant as usize]),
                exiting: r(&sh.shared_path[SharedReason::Exiting as usize]),
                table_full: r(&sh.shared_path[SharedReason::TableFull as usize]),
                signal_blocked: r(&sh.shared_path[SharedReason::SignalBlocked as usize]),
                bind_failed: r(&sh.shared_path[SharedReason::BindFailed as usize]),
            },
            work: self.domain().total_stats(),
        }
    }

    /// Destroys the instance: unbinds this thread, drains every slot, checks
    /// that every object (large ones too) was freed and unmaps the memory.
    /// A leak is reported ([`DestroyError::Leaked`]) and its memory kept.
    pub fn destroy(self) -> Result<(), DestroyError> {
        self.unbind_local();
        self.flush_all().map_err(DestroyError::Flush)?;
        let large_live = self.shared.classes().large.live();
        let large_bytes = self
            .shared
            .classes()
            .large
            .live_bytes
            .load(Ordering::Relaxed);
        let Kmalloc { shared, drain } = self;
        drop(drain);
        let mut shared = Arc::try_unwrap(shared).map_err(|a| DestroyError::InUse {
            references: Arc::strong_count(&a) - 1,
        })?;
        let (objects, bytes) = shared.settle();
        drop(shared);
        if objects == 0 && large_live == 0 {
            Ok(())
        } else {
            Err(DestroyError::Leaked {
                objects: objects + large_live as usize,
                bytes: bytes + large_bytes as usize,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_classes_fit_and_are_tight() {
        for size in 0..=KMALLOC_MAX_CACHE_SIZE {
            let c = class_index(size);
            assert!(
                KMALLOC_SIZES[c] >= size,
                "size {size} -> class {}",
                KMALLOC_SIZES[c]
            );
            if c > 0 {
                assert!(
                    KMALLOC_SIZES[c - 1] < size.max(1),
                    "size {size} could use a smaller class"
                );
            }
        }
    }

    #[test]
    fn aligned_classes_are_aligned() {
        for align in [
            1usize, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192,
        ] {
            for size in [1usize, 7, 8, 9, 33, 65, 96, 100, 192, 200, 4000, 4097, 8192] {
                match class_for(size, align) {
                    Some(c) => {
                        assert!(KMALLOC_SIZES[c] >= size);
                        assert!(class_align(c) >= align.min(8).max(align));
                    }
                    None => assert!(size > KMALLOC_MAX_CACHE_SIZE || align > 8192),
                }
            }
        }
        assert_eq!(class_for(8193, 8), None);
        assert_eq!(class_for(10, 8192), Some(NCLASSES - 1));
        assert_eq!(class_for(10, 16384), None);
    }
}
