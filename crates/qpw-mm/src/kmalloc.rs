//! `kmalloc`: a size-class table over slab caches ([`Classes`]), large
//! requests through the mapping cache, with an explicit-owner API and an
//! implicit per-thread one (bindings in [`binding`](crate::binding)).

use crate::classes::{Classes, Resize};
use crate::decay::{self, Decay, Decaying};
use crate::error::{DestroyError, FreeError, SlabError};
use crate::fork::LockHook;
use crate::reclaim;
use crate::shared::{KShared, SharedReason};
use crate::size_class::SizeClasses;
use crate::stats::{KmallocStats, SharedPathStats, ShrinkReport};
use qpw::{Config, Domain, FlushError, ForkHookHandle, Mode, Owner, Standard, WorkSet};
use std::alloc::Layout;
use std::fmt;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Default address space reserved per size class: the most its slabs can hold.
pub const DEFAULT_CLASS_BYTES: usize = 8 << 30;
/// With the default, the least reserved per class when the OS refuses more.
pub const MIN_FALLBACK_CLASS_BYTES: usize = 16 << 20;

/// A `kmalloc` instance: size classes from 8 bytes to 8 KiB over per-CPU
/// slab caches on one [`Domain`], larger requests mapped directly.
///
/// Two ways to call it:
///
/// - **explicit**: [`kmalloc`](Self::kmalloc), [`kfree`](Self::kfree), ...
///   take the thread's `&mut Owner` of the domain, as kernel code runs on
///   its CPU;
/// - **implicit**: [`kmalloc_local`](Self::kmalloc_local), ... find the
///   thread's own binding in thread-local storage, binding the lowest free
///   slot (unpinned) on first use. The binding is released when the thread
///   exits or by [`unbind_local`](Self::unbind_local): the slot is freed for
///   the next thread with its cached objects, which the decay drains if no
///   thread binds it again.
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
/// use qpw::{Config, Mode, Standard};
/// use qpw_mm::Kmalloc;
///
/// // `remote` where it is compiled in (the `qpw` feature), else `queue`.
/// let mode = if Standard::QPW { Mode::Remote } else { Mode::Queue };
/// let km: Kmalloc = Kmalloc::builder().mode(mode).nr_cpus(4).build()?;
/// let p = km.kmalloc_local(100).expect("out of memory");
/// // SAFETY: `p` came from `km` and is freed once.
/// let p = unsafe { km.krealloc_local(p.as_ptr(), 5000) }.expect("out of memory");
/// unsafe { km.kfree_local(p.as_ptr()) };
/// km.unbind_local();
/// km.destroy()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Kmalloc<C: Config = Standard> {
    pub(crate) shared: Arc<KShared<C>>,
    pub(crate) drain: WorkSet<C>,
    /// Keeps the fork hook ([`crate::fork`]) registered while the instance lives.
    fork: ForkHookHandle,
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
    size_classes: SizeClasses,
}

impl<C: Config> Default for KmallocBuilder<C> {
    fn default() -> Self {
        Self {
            domain: None,
            nr_cpus: None,
            mode: None,
            flush_timeout: None,
            class_bytes: None,
            size_classes: SizeClasses::Kernel,
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

    /// The size-class table (default [`SizeClasses::Kernel`], the kernel's).
    pub fn size_classes(mut self, table: SizeClasses) -> Self {
        self.size_classes = table;
        self
    }

    /// Builds the domain (unless given) and the instance.
    ///
    /// # Errors
    ///
    /// A [`SlabError`]: the domain could not be built ([`SlabError::Qpw`], e.g.
    /// a bad `QPW` value), or a mapping the OS refused.
    pub fn build(self) -> Result<Kmalloc<C>, SlabError> {
        let domain = match self.domain {
            Some(d) => d,
            None => {
                let mut b = qpw::Builder::<C>::new();
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
        let t = self.size_classes;
        let classes = match self.class_bytes {
            Some(b) => Classes::create(t, b, b)?,
            None => Classes::create(t, DEFAULT_CLASS_BYTES, MIN_FALLBACK_CLASS_BYTES)?,
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
    ///
    /// # Errors
    ///
    /// A [`SlabError`] when the OS refuses the mappings.
    pub fn new(domain: &Domain<C>) -> Result<Self, SlabError> {
        Self::builder().domain(domain).build()
    }

    pub(crate) fn from_parts(
        domain: Domain<C>,
        classes: NonNull<Classes>,
        owns_classes: bool,
    ) -> Self {
        let shared = Arc::new(KShared::new(&domain, classes, owns_classes));
        let sh = shared.clone();
        let drain = domain.work_all(move |ctx| {
            // Every class's sheaves to its hand-off stack: no lock but the
            // slot's, no allocation (keeps the drain short; see `stack.rs`).
            let cl = sh.classes();
            let Ok(mut pcs) = sh.pcs.lock_ctx(ctx) else {
                return;
            };
            for (core, p) in cl.cores().iter().zip(pcs.0.iter_mut()) {
                core.drain_pcs(p);
            }
        });
        let fork = LockHook::register(&shared);
        Kmalloc {
            shared,
            drain,
            fork,
        }
    }

    /// The domain whose slots hold the sheaves.
    pub fn domain(&self) -> &Domain<C> {
        self.shared.pcs.domain()
    }

    #[inline(always)]
    fn debug_mark(&self, c: usize, p: *mut u8) {
        #[cfg(debug_assertions)]
        if !p.is_null() {
            self.shared.classes().core(c).mark_allocated(p);
        }
        #[cfg(not(debug_assertions))]
        let _ = (c, p);
    }

    /// The slot path for class `c`.
    #[inline(always)]
    fn alloc_class(&self, owner: &mut Owner<C>, c: usize) -> *mut u8 {
        let sh = &*self.shared;
        let mut g = sh.pcs.lock(owner);
        // SAFETY: class indices are below the table's length, at most MAX_CLASSES.
        let pcs = unsafe { g.0.get_unchecked_mut(c) };
        let p = match pcs.pop() {
            Some(p) => {
                drop(g);
                p
            }
            None => {
                let p = sh.classes().core(c).alloc_slow(pcs);
                drop(g);
                self.after_slow_path(owner);
                p
            }
        };
        if !p.is_null() {
            // SAFETY: `p` is an object of class `c` just taken from a sheaf
            // or a slab: at least 8 bytes, 8-aligned, ours until returned.
            // Clearing its first word wipes the free stamp an earlier free
            // left there, so freeing it again (without the program having
            // written that word) does not scan the sheaves as a suspected
            // double free: with the stamp left, every such free scanned both
            // sheaves (kmalloc(64) free: 36 -> 174 cycles).
            unsafe { p.cast::<u64>().write(0) };
        }
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
        match self.shared.table.class_for(size, 8) {
            Some(c) => NonNull::new(self.alloc_class(owner, c)),
            None => NonNull::new(self.shared.classes().large.alloc(size, 8, false)),
        }
    }

    /// Allocates for `layout` (any power-of-two alignment; up to 8 KiB from
    /// the classes, beyond that mapped directly).
    #[inline]
    pub fn alloc(&self, owner: &mut Owner<C>, layout: Layout) -> Option<NonNull<u8>> {
        match self.shared.table.class_for(layout.size(), layout.align()) {
            Some(c) => NonNull::new(self.alloc_class(owner, c)),
            None => NonNull::new(self.shared.classes().large.alloc(
                layout.size(),
                layout.align(),
                false,
            )),
        }
    }

    /// Frees a class object or a large one. Every build checks, on a class
    /// object, that `p` is an object's start in a carved slab (else
    /// [`FreeError::NotObjectStart`], nothing changed), and catches a
    /// double free whose first free is still in this slot's sheaves: a
    /// free stamps the object's first word ([`KShared::stamp`]); a free
    /// that finds the stamp scans the slot's two sheaves for `p`. Debug
    /// builds check every free exactly (the slabs' live bits).
    #[inline(always)]
    unsafe fn free_inner(&self, owner: &mut Owner<C>, p: *mut u8) -> Result<(), FreeError> {
        let sh = &*self.shared;
        match sh.class_of(p) {
            Some(c) => {
                let core = sh.classes().core(c);
                if !core.is_object_start(p as usize) {
                    return Err(not_object_start(p, core.size));
                }
                let stamp = sh.stamp(p);
                // SAFETY: `p` is an object's start in a carved (committed)
                // slab, at least 8 bytes, 8-aligned: live (the caller's,
                // given up now) or free (ours); either way readable.
                let stamped = unsafe { p.cast::<u64>().read() } == stamp;
                let mut g = sh.pcs.lock(owner);
                // SAFETY: class indices are below the table's length, at most MAX_CLASSES.
                let pcs = unsafe { g.0.get_unchecked_mut(c) };
                if stamped && pcs.holds(p) {
                    drop(g);
                    return Err(FreeError::DoubleFree {
                        ptr: p as usize,
                        object_size: core.size,
                    });
                }
                #[cfg(debug_assertions)]
                if let Err(e) = core.check_free(p) {
                    drop(g);
                    return Err(e);
                }
                // SAFETY: as above; the object is free now, ours to write.
                unsafe { p.cast::<u64>().write(stamp) };
                if !pcs.push(p) {
                    core.free_slow(pcs, p);
                    drop(g);
                    self.after_slow_path(owner);
                }
                Ok(())
            }
            // SAFETY: forwarded to the caller.
            None => unsafe { sh.classes().large.free(p) },
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
        let Some(c) = self.shared.table.class_for(size, 8) else {
            let large = &self.shared.classes().large;
            for (i, o) in out.iter_mut().enumerate() {
                *o = large.alloc(size, 8, false);
                if o.is_null() {
                    return i;
                }
            }
            return out.len();
        };
        let sh = &*self.shared;
        let mut g = sh.pcs.lock(owner);
        // SAFETY: class indices are below the table's length, at most MAX_CLASSES.
        let pcs = unsafe { g.0.get_unchecked_mut(c) };
        let (n, slow) = sh.classes().core(c).bulk_alloc(pcs, out);
        drop(g);
        if slow {
            self.after_slow_path(owner);
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
                if let Err(e) = sh.classes().core(c).check_free(p) {
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
                        // SAFETY: class indices are below the table's length, at most MAX_CLASSES.
                        let pcs = unsafe { g.0.get_unchecked_mut(c) };
                        if !pcs.push(p) {
                            sh.classes().core(c).free_slow(pcs, p);
                            slow = true;
                        }
                    }
                    None => large |= !p.is_null(),
                }
            }
        }
        if slow {
            self.after_slow_path(owner);
        }
        if large {
            for &p in ptrs {
                if !p.is_null() && sh.class_of(p).is_none() {
                    // SAFETY: forwarded to the caller.
                    if let Err(e) = unsafe { sh.classes().large.free(p) } {
                        panic!("qpw-mm: kfree_bulk: {e}");
                    }
                }
            }
        }
    }

    /// Allocation with the implicit binding, for the global allocator.
    #[inline(always)]
    pub(crate) fn alloc_local_raw(&self, size: usize, align: usize) -> *mut u8 {
        match self.shared.table.class_for(size, align) {
            Some(c) => match self.shared.binding() {
                // SAFETY: the binding belongs to this thread and no other
                // reference to it is live: the allocator never re-enters
                // itself while holding it (it allocates nothing from the
                // global allocator in a local section).
                Ok(b) => self.alloc_class(unsafe { &mut (*b).owner }, c),
                Err(r) => {
                    self.shared.count(r);
                    let p = self.shared.classes().alloc_shared(size, align);
                    self.decay_tick();
                    p
                }
            },
            None => self.alloc_large_local(size, align),
        }
    }

    /// A large block for the global allocator, then the decay's time check.
    #[inline(never)]
    fn alloc_large_local(&self, size: usize, align: usize) -> *mut u8 {
        let p = self.shared.classes().large.alloc(size, align, false);
        self.decay_tick();
        p
    }

    /// Free with the implicit binding, for the global allocator.
    ///
    /// # Safety
    /// As [`kfree`](Self::kfree), non-null.
    #[inline(always)]
    pub(crate) unsafe fn free_local_raw(&self, p: *mut u8) -> Result<(), FreeError> {
        if self.shared.class_of(p).is_none() {
            // SAFETY: forwarded to the caller.
            return unsafe { self.free_large_local(p) };
        }
        match self.shared.binding() {
            // SAFETY: as in alloc_local_raw; `p` forwarded to the caller.
            Ok(b) => unsafe { self.free_inner(&mut (*b).owner, p) },
            Err(r) => {
                self.shared.count(r);
                // SAFETY: forwarded to the caller.
                let res = unsafe { self.shared.classes().free_shared(p) };
                self.decay_tick();
                res
            }
        }
    }

    /// Frees a large block (or reports a foreign pointer), then the decay's
    /// time check.
    ///
    /// # Safety
    /// As [`free_local_raw`](Self::free_local_raw).
    #[inline(never)]
    unsafe fn free_large_local(&self, p: *mut u8) -> Result<(), FreeError> {
        // SAFETY: forwarded to the caller.
        let r = unsafe { self.shared.classes().large.free(p) };
        self.decay_tick();
        r
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
        unsafe { self.check_realloc_local(p) }?;
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

    /// A reallocation's checks of a class object, before anything is read
    /// or moved: as a free's ([`free_inner`](Self::free_inner)), an
    /// object's start, and not freed already into this thread's sheaves.
    ///
    /// # Safety
    /// As [`free_local_raw`](Self::free_local_raw), except that `p` stays
    /// allocated.
    unsafe fn check_realloc_local(&self, p: *mut u8) -> Result<(), FreeError> {
        let sh = &*self.shared;
        let Some(c) = sh.class_of(p) else {
            return Ok(());
        };
        let core = sh.classes().core(c);
        if !core.is_object_start(p as usize) {
            return Err(not_object_start(p, core.size));
        }
        // SAFETY: an object's start in a carved slab: readable (see free_inner).
        if unsafe { p.cast::<u64>().read() } != sh.stamp(p) {
            return Ok(());
        }
        let freed = match self.shared.binding() {
            Ok(b) => {
                // SAFETY: as in alloc_local_raw.
                let owner = unsafe { &mut (*b).owner };
                let mut g = sh.pcs.lock(owner);
                // SAFETY: class indices are below the table's length.
                unsafe { g.0.get_unchecked_mut(c) }.holds(p)
            }
            Err(_) => false,
        };
        if freed {
            return Err(FreeError::DoubleFree {
                ptr: p as usize,
                object_size: core.size,
            });
        }
        Ok(())
    }

    /// As [`alloc_local_raw`](Self::alloc_local_raw), zeroed.
    pub(crate) fn alloc_zeroed_local_raw(&self, size: usize, align: usize) -> *mut u8 {
        if self.shared.table.class_for(size, align).is_none() {
            return self.shared.classes().large.alloc(size, align, true);
        }
        let p = self.alloc_local_raw(size, align);
        if !p.is_null() {
            // SAFETY: `p` has at least `size` writable bytes.
            unsafe { std::ptr::write_bytes(p, 0, size) };
        }
        p
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

    // ---- drains, statistics, teardown --------------------------------------

    /// The kernel's name (SLUB's) for [`drain_all`](Self::drain_all),
    /// kept for readers of the kernel: the same call.
    ///
    /// # Errors
    ///
    /// As [`drain_all`](Self::drain_all).
    pub fn flush_all(&self) -> Result<(), FlushError> {
        self.drain_all()
    }

    /// Drains every slot's sheaves, all classes, into the depots (drain-all
    /// through qpw; works in every mode).
    ///
    /// # Errors
    ///
    /// A [`FlushError`] naming a slot whose owner did not run the drain in
    /// time (see [`qpw::WorkSet::run`]); the other slots are drained all the same.
    #[doc(alias = "flush_all")]
    pub fn drain_all(&self) -> Result<(), FlushError> {
        let r = self.drain.run();
        for core in self.shared.classes().cores() {
            core.collect();
        }
        r
    }

    /// Drains every slot, returns free objects to their slabs and releases
    /// wholly free slabs to the OS. As [`KmemCache::shrink`](crate::KmemCache::shrink).
    ///
    /// # Errors
    ///
    /// The drain's [`FlushError`], as [`drain_all`](Self::drain_all); the rest
    /// is shrunk all the same.
    pub fn shrink(&self) -> Result<ShrinkReport, FlushError> {
        let r = self.drain_all();
        let mut rep = ShrinkReport::default();
        for core in self.shared.classes().cores() {
            rep.add(core.shrink());
        }
        let large = self.shared.classes().large.shrink();
        rep.add((0, large));
        r.map(|()| rep)
    }

    /// Everything the instance counted.
    pub fn stats(&self) -> KmallocStats {
        let sh = &*self.shared;
        let cl = sh.classes();
        let ls = &cl.large.stats;
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        KmallocStats {
            config: C::NAME,
            mode: self.domain().mode().to_string(),
            nr_cpus: self.domain().nr_cpus(),
            classes: cl.cores().iter().map(|c| c.stats()).collect(),
            large_allocs: r(&ls.allocs),
            large_frees: r(&ls.frees),
            large_live_bytes: r(&ls.live_bytes),
            large_maps: r(&ls.maps),
            large_unmaps: r(&ls.unmaps),
            large_cache_hits: r(&ls.cache_hits),
            large_cached_bytes: r(&ls.cached_bytes),
            large_cache_full: r(&ls.cache_full),
            large_too_long: r(&ls.too_long),
            unmap_errors: r(&ls.unmap_errors),
            unmap_error_bytes: r(&ls.unmap_error_bytes),
            decay_passes: r(&sh.decay.passes),
            decay_slot_drains: r(&sh.decay.slot_drains),
            decay_drain_timeouts: r(&sh.decay.drain_timeouts),
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
    ///
    /// # Errors
    ///
    /// [`DestroyError::Leaked`] when objects are still out (their memory is
    /// kept), or the drain's error.
    pub fn destroy(self) -> Result<(), DestroyError> {
        self.unbind_local();
        self.drain_all().map_err(DestroyError::Flush)?;
        let large_live = self.shared.classes().large.stats.live();
        let large_bytes = self
            .shared
            .classes()
            .large
            .stats
            .live_bytes
            .load(Ordering::Relaxed);
        let Kmalloc {
            shared,
            drain,
            fork,
        } = self;
        drop(fork);
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

impl<C: Config> Kmalloc<C> {
    // ---- the implicit binding ---------------------------------------------

    /// Runs the drain work queued for this thread's implicit slot (defer
    /// mode's quiescent point). Returns whether any ran.
    pub fn quiescent_local(&self) -> bool {
        self.shared.quiescent_local()
    }

    /// Releases this thread's implicit binding now (as its exit would): frees
    /// its slot for the next thread, its cached objects with it (the decay,
    /// [`flush_all`](Self::flush_all) or [`shrink`](Self::shrink) drain a
    /// slot nobody binds again). Returns whether there was one.
    pub fn unbind_local(&self) -> bool {
        self.shared.unbind_local()
    }

    // ---- decay ------------------------------------------------------------

    /// After a slot's slow path, outside its section: marks the slot active
    /// for the decay, runs the slot's queued work (defer mode's quiescent
    /// point), then the decay's time check ([`decay_tick`](Self::decay_tick)).
    #[inline]
    pub(crate) fn after_slow_path(&self, owner: &mut Owner<C>) {
        self.shared.decay.touch(owner.slot());
        owner.quiescent();
        self.decay_tick();
    }

    /// The decay's time check on a slow path (see [`decay`](crate::decay)):
    /// runs a pass in this thread when one is due, or starts the decay
    /// thread when it is asked for. A pass allocates nothing, takes no
    /// slot's section and waits for no owner (the drains it queues run
    /// without it), so it may run inside any slow path outside a section.
    #[inline]
    pub(crate) fn decay_tick(&self) {
        let d = &self.shared.decay;
        if d.tick_due() {
            self.ticked_pass();
        } else if d.wants_thread() {
            self.start_decay_thread();
        }
    }

    #[cold]
    #[inline(never)]
    fn ticked_pass(&self) {
        reclaim::decay_pass(&self.shared, &self.drain, false);
        self.shared.decay.tick_done();
    }

    /// Marks the instance as living for the rest of the process (the global
    /// allocator leaks its own), so its slow paths drive the decay (and may
    /// start a decay thread that holds it, when asked for).
    ///
    /// # Safety
    /// The instance is never dropped or moved.
    pub(crate) unsafe fn make_forever(&self) {
        self.shared.decay.set_forever();
        // The first instance made forever (the global allocator's) keeps
        // its threads' bindings in initial-exec TLS.
        if crate::local::claim_primary(self.shared.id) {
            self.shared.primary.store(true, Ordering::Relaxed);
        }
    }

    /// Whether a decay thread (rather than the program's own slow paths)
    /// runs the passes of this instance (see [`decay`](crate::decay)).
    /// Only an instance that lives for good (the global allocator's) has
    /// either; on others this only records the wish.
    pub(crate) fn set_decay_thread(&self, on: bool) {
        self.shared.decay.set_want_thread(on);
    }

    /// The decay delay now (`None`: decay disabled).
    pub fn decay_delay(&self) -> Option<Duration> {
        self.shared.decay.delay()
    }

    /// Sets the decay delay: free slabs, cached large mappings and idle
    /// slots' sheaves go back after about this long unused. `None` disables
    /// the decay. Callable at any time; the next pass uses it. Instances
    /// made by hand apply it in [`decay`](Self::decay).
    pub fn set_decay(&self, delay: Option<Duration>) {
        self.shared.decay.set_delay(delay);
    }

    /// One decay pass (see [`decay`](crate::decay) for what it does),
    /// waiting for the idle slots' drains. Returns what went back to the
    /// OS. Nothing happens while the decay is disabled.
    pub fn decay(&self) -> ShrinkReport {
        if self.shared.decay.delay().is_none() {
            return ShrinkReport::default();
        }
        reclaim::decay_pass(&self.shared, &self.drain, true)
    }

    /// Starts the decay thread (once; the slow path saw it due).
    #[cold]
    #[inline(never)]
    fn start_decay_thread(&self) {
        // SAFETY: slow paths start it only when `wants_thread`, true only
        // for an instance made forever (`make_forever`: never dropped or
        // moved).
        unsafe { decay::start_thread(self) };
    }
}

/// The error of a free or reallocation of `p`, inside a class whose
/// objects are `size` bytes, but not at an object's start.
#[cold]
fn not_object_start(p: *mut u8, size: usize) -> FreeError {
    FreeError::NotObjectStart {
        ptr: p as usize,
        object_size: size,
    }
}

impl<C: Config> Decaying for Kmalloc<C> {
    fn decay_state(&self) -> &Decay {
        &self.shared.decay
    }

    fn decay_pass(&self) {
        self.decay();
    }
}
