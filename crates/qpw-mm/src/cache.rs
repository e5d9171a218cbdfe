//! `KmemCache`: an object cache for one object size, with per-CPU sheaves
//! under qpw's local lock and a drain-all through qpw's work.

use crate::depot::SlabCore;
use crate::error::{DestroyError, SlabError};
use crate::fork::{ForkLocks, LockHook};
pub use crate::geometry::{default_depot_max_full, default_sheaf_capacity};
use crate::geometry::{slab_bytes_for, Geometry, MAX_OBJECT_SIZE};
use crate::sheaf::{Pcs, MAX_SHEAF_CAPACITY};
use crate::stats::{CacheStats, ShrinkReport};
use crate::sys;
use qpw::{Config, Domain, FlushError, ForkHookHandle, Owner, PerCpu, Standard, WorkSet};
use std::fmt;
use std::ptr::NonNull;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The largest object alignment a cache supports.
pub const MAX_ALIGN: usize = 4096;

/// Default address space reserved per cache: the most its slabs can hold.
pub const DEFAULT_MAX_BYTES: usize = 4 << 30;
/// With the default, the least reserved when the OS refuses more.
pub const MIN_FALLBACK_MAX_BYTES: usize = 64 << 20;

/// Everything the slots, the drain work and the handle share.
struct CacheShared<C: Config> {
    pcs: PerCpu<Pcs, C>,
    /// Per slot: its sheaves may hold objects (`has_pcs_used`, the drain's
    /// check, read remotely). Set by the owner, in its section, whenever
    /// objects may have entered the slot (a free into an empty main sheaf,
    /// any slow path); cleared by the drain work, which empties the slot.
    /// So a slot with objects always reads `true`.
    used: Box<[crossbeam_utils::CachePadded<std::sync::atomic::AtomicBool>]>,
    core: SlabCore,
    arena: usize,
    arena_len: usize,
}

impl<C: Config> CacheShared<C> {
    /// Empties every slot's sheaves into the slabs (exclusive access), and
    /// counts the objects still allocated.
    fn settle(&mut self) -> usize {
        for pcs in self.pcs.iter_mut() {
            self.core.reclaim_pcs(pcs);
        }
        self.core.settle_and_count_allocated()
    }
}

impl<C: Config> ForkLocks for CacheShared<C> {
    fn lock_for_fork(&self) {
        self.core.lock_for_fork();
    }

    unsafe fn unlock_after_fork(&self) {
        // SAFETY: forwarded to the caller.
        unsafe { self.core.unlock_after_fork() }
    }
}

impl<C: Config> Drop for CacheShared<C> {
    fn drop(&mut self) {
        if self.settle() == 0 {
            // SAFETY: no object is allocated and no slot holds a sheaf; with
            // `&mut self` nobody else can reach the memory.
            unsafe {
                self.core.unmap_meta();
                // A failure leaves unused address space mapped: nothing to undo.
                let _ = sys::unmap(self.arena, self.arena_len);
            }
        }
        // Otherwise objects are still allocated: keep their memory mapped.
    }
}

/// An object cache for objects of one size: the kernel's `kmem_cache`, with
/// SLUB's per-CPU sheaves.
///
/// Each slot of the [`Domain`] holds a main and a spare [sheaf](crate#sheaves)
/// of free objects, under the slot's QPW lock. [`alloc`](Self::alloc) pops
/// from main and [`free`](Self::free) pushes onto main; only an empty (or
/// full) main goes to the shared depot. An object freed on another slot
/// than the one that allocated it simply goes into the freeing slot's sheaf.
///
/// [`flush_all`](Self::flush_all) drains every slot's sheaves into the depot
/// through qpw's drain-all, so it works in every mode: in `queue` the caller
/// runs it once each owner's CPU is fenced and its section closed, in
/// `remote` the caller runs it under each slot's lock, in `defer` the owners
/// run it at their next section end or quiescent point.
///
/// ```
/// use qpw::{Config, Domain, Mode, Standard};
/// use qpw_mm::KmemCache;
///
/// // `remote` where it is compiled in (the `qpw` feature), else `queue`.
/// let mode = if Standard::QPW { Mode::Remote } else { Mode::Queue };
/// let domain: Domain = Domain::builder().mode(mode).nr_cpus(2).build()?;
/// let cache = KmemCache::new(&domain, 64)?;
/// let mut me = domain.bind_unpinned(0)?;
/// let p = cache.alloc(&mut me).expect("out of memory");
/// // SAFETY: `p` came from this cache and is freed once.
/// unsafe { cache.free(&mut me, p) };
/// drop(me);
/// cache.shrink()?;
/// cache.destroy()?; // every object was freed
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct KmemCache<C: Config = Standard> {
    shared: Arc<CacheShared<C>>,
    drain: WorkSet<C>,
    /// Keeps the fork hook (the depot lock held across `fork`) registered.
    fork: ForkHookHandle,
}

impl<C: Config> fmt::Debug for KmemCache<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KmemCache")
            .field("object_size", &self.object_size())
            .field("config", &C::NAME)
            .field("mode", &self.domain().mode().to_string())
            .finish()
    }
}

/// Builds a [`KmemCache`] (sizes, capacities, limits).
#[derive(Debug, Clone)]
pub struct KmemCacheBuilder<C: Config = Standard> {
    domain: Domain<C>,
    size: usize,
    align: usize,
    capacity: Option<usize>,
    max_full: Option<usize>,
    max_bytes: Option<usize>,
}

impl<C: Config> KmemCacheBuilder<C> {
    /// Object alignment (a power of two up to [`MAX_ALIGN`]; default 8).
    /// The object size is rounded up to a multiple of it.
    pub fn align(mut self, align: usize) -> Self {
        self.align = align;
        self
    }

    /// Object pointers per sheaf (1 to [`MAX_SHEAF_CAPACITY`]; default
    /// [`default_sheaf_capacity`]).
    pub fn sheaf_capacity(mut self, capacity: usize) -> Self {
        self.capacity = Some(capacity);
        self
    }

    /// How many sheaves with objects the depot keeps before returning a
    /// sheaf's objects to their slabs (default [`default_depot_max_full`]).
    pub fn depot_max_full(mut self, n: usize) -> Self {
        self.max_full = Some(n);
        self
    }

    /// The most memory the cache's slabs may take (address space reserved
    /// up front, not memory). Default [`DEFAULT_MAX_BYTES`], or less (down
    /// to [`MIN_FALLBACK_MAX_BYTES`]) if the OS refuses that much; a value
    /// set here is reserved exactly or the build fails.
    pub fn max_bytes(mut self, bytes: usize) -> Self {
        self.max_bytes = Some(bytes);
        self
    }

    /// Checks the parameters and makes the cache.
    ///
    /// # Errors
    ///
    /// A [`SlabError`]: a bad size, alignment, sheaf capacity or memory limit
    /// (naming the value and the accepted range), or a mapping the OS refused.
    pub fn build(self) -> Result<KmemCache<C>, SlabError> {
        let g = geometry(self.size, self.align, self.capacity, self.max_full)?;
        let slab = slab_bytes_for(g.size);
        let (want, floor) = match self.max_bytes {
            Some(b) => (b, b),
            None => (DEFAULT_MAX_BYTES, MIN_FALLBACK_MAX_BYTES),
        };
        if want < slab {
            return Err(SlabError::BadMaxBytes {
                max_bytes: want,
                min: slab,
            });
        }
        let floor = floor.max(slab);
        let mut arena_len = want / slab * slab;
        let (arena, core) = loop {
            let attempt = sys::reserve(arena_len, slab)
                .map_err(|errno| SlabError::Map {
                    what: "slab arena",
                    errno,
                })
                .and_then(|arena| match SlabCore::new(g, arena, arena_len) {
                    Ok(core) => Ok((arena, core)),
                    Err(errno) => {
                        // SAFETY: reserved just above and used by nothing yet.
                        // A failure only leaves unused address space mapped.
                        let _ = unsafe { sys::unmap(arena, arena_len) };
                        Err(SlabError::Map {
                            what: "slab metadata",
                            errno,
                        })
                    }
                });
            match attempt {
                Ok(r) => break r,
                Err(_) if arena_len / 2 >= floor => arena_len = arena_len / 2 / slab * slab,
                Err(e) => return Err(e),
            }
        };
        let shared = Arc::new(CacheShared {
            pcs: PerCpu::new(&self.domain, |_| Pcs::new()),
            used: (0..self.domain.nr_cpus())
                .map(|_| Default::default())
                .collect(),
            core,
            arena,
            arena_len,
        });
        let drain = drain_work(&self.domain, shared.clone());
        let fork = LockHook::register(&shared);
        Ok(KmemCache {
            shared,
            drain,
            fork,
        })
    }
}

/// Validates a cache's parameters and fills in the defaults.
pub(crate) fn geometry(
    size: usize,
    align: usize,
    capacity: Option<usize>,
    max_full: Option<usize>,
) -> Result<Geometry, SlabError> {
    if size == 0 || size > MAX_OBJECT_SIZE {
        return Err(SlabError::BadObjectSize {
            size,
            max: MAX_OBJECT_SIZE,
        });
    }
    if !align.is_power_of_two() || align > MAX_ALIGN {
        return Err(SlabError::BadAlign {
            align,
            max: MAX_ALIGN,
        });
    }
    let size = sys::round_up(size.max(8), align.max(8));
    if size > MAX_OBJECT_SIZE {
        return Err(SlabError::BadObjectSize {
            size,
            max: MAX_OBJECT_SIZE,
        });
    }
    let cap = capacity.unwrap_or(default_sheaf_capacity(size));
    if cap == 0 || cap > MAX_SHEAF_CAPACITY {
        return Err(SlabError::BadSheafCapacity {
            capacity: cap,
            max: MAX_SHEAF_CAPACITY,
        });
    }
    let max_full = max_full.unwrap_or(default_depot_max_full(size, cap));
    Ok(Geometry {
        size,
        cap,
        max_full,
    })
}

fn drain_work<C: Config>(domain: &Domain<C>, shared: Arc<CacheShared<C>>) -> WorkSet<C> {
    let check = shared.clone();
    domain.work_all_checked(
        move |ctx| {
            // The slot's sheaves to the hand-off stack: no lock but the slot's,
            // no allocation (the caller files the hand-off stack afterwards).
            let cpu = ctx.slot();
            let Ok(mut pcs) = shared.pcs.lock_ctx(ctx) else {
                return;
            };
            shared.core.drain_pcs(&mut pcs);
            shared.used[cpu].store(false, Ordering::SeqCst);
        },
        // Slots whose sheaves hold nothing are neither fenced nor locked.
        move |cpu| check.used[cpu].load(Ordering::SeqCst),
    )
}

impl<C: Config> CacheShared<C> {
    /// Owner, in its section: objects may have entered slot `cpu`.
    #[inline]
    fn mark_used(&self, cpu: usize) {
        self.used[cpu].store(true, Ordering::SeqCst);
    }
}

impl<C: Config> KmemCache<C> {
    /// A cache of `size`-byte objects (8-byte aligned) on `domain`'s slots,
    /// with the default parameters.
    ///
    /// # Errors
    ///
    /// As [`KmemCacheBuilder::build`]: a bad `size`, or a mapping the OS refused.
    pub fn new(domain: &Domain<C>, size: usize) -> Result<Self, SlabError> {
        Self::builder(domain, size).build()
    }

    /// A builder for a cache of `size`-byte objects.
    pub fn builder(domain: &Domain<C>, size: usize) -> KmemCacheBuilder<C> {
        KmemCacheBuilder {
            domain: domain.clone(),
            size,
            align: 8,
            capacity: None,
            max_full: None,
            max_bytes: None,
        }
    }

    /// The domain whose slots hold the sheaves.
    pub fn domain(&self) -> &Domain<C> {
        self.shared.pcs.domain()
    }

    /// The object size (the requested size rounded up to the alignment).
    pub fn object_size(&self) -> usize {
        self.shared.core.size()
    }

    /// Object pointers per sheaf.
    pub fn sheaf_capacity(&self) -> usize {
        self.shared.core.capacity()
    }

    /// Bytes per slab.
    pub fn slab_bytes(&self) -> usize {
        self.shared.core.slab_bytes()
    }

    /// Allocates an object (`kmem_cache_alloc`): pops from this slot's main
    /// sheaf, or refills it from the spare, the depot or the slabs. `None`
    /// only when the cache's memory limit is reached or the OS refuses
    /// memory. The object's contents are unspecified.
    ///
    /// # Panics
    /// If `owner` belongs to another domain than the cache's.
    #[inline]
    pub fn alloc(&self, owner: &mut Owner<C>) -> Option<NonNull<u8>> {
        let sh = &*self.shared;
        let cpu = owner.slot();
        let mut pcs = sh.pcs.lock(owner);
        let (p, slow) = match pcs.pop() {
            Some(p) => (p, false),
            None => {
                sh.mark_used(cpu);
                (sh.core.alloc_slow(&mut pcs), true)
            }
        };
        drop(pcs);
        if slow {
            // A slow path is a natural quiescent point (defer mode's drains).
            owner.quiescent();
        }
        let p = NonNull::new(p)?;
        sh.core.mark_allocated(p.as_ptr());
        Some(p)
    }

    /// Frees an object (`kmem_cache_free`) into this slot's main sheaf,
    /// whichever slot allocated it.
    ///
    /// # Safety
    /// `ptr` must come from [`alloc`](Self::alloc), [`alloc_bulk`](Self::alloc_bulk)
    /// or [`alloc_shared`](Self::alloc_shared) of this cache and not have been
    /// freed since; it must not be used afterwards.
    ///
    /// # Panics
    /// Debug builds check the pointer and panic on a double free, a pointer
    /// not from this cache, or one inside an object rather than at its start
    /// (the message names which). Release builds do not check. Also panics
    /// if `owner` belongs to another domain.
    #[inline]
    pub unsafe fn free(&self, owner: &mut Owner<C>, ptr: NonNull<u8>) {
        let sh = &*self.shared;
        if let Err(e) = sh.core.check_free(ptr.as_ptr()) {
            panic!("qpw-mm: {e}");
        }
        let cpu = owner.slot();
        let mut pcs = sh.pcs.lock(owner);
        let slow = !pcs.push(ptr.as_ptr());
        if slow {
            sh.mark_used(cpu);
            sh.core.free_slow(&mut pcs, ptr.as_ptr());
        } else if pcs.main_count == 1 {
            // The main sheaf was empty: the one store per refill.
            sh.mark_used(cpu);
        }
        drop(pcs);
        if slow {
            owner.quiescent();
        }
    }

    /// Allocates `out.len()` objects into `out` under one local section
    /// (`kmem_cache_alloc_bulk`). Returns how many were allocated: all of
    /// them unless memory ran out; entries past the count are untouched.
    #[inline]
    pub fn alloc_bulk(&self, owner: &mut Owner<C>, out: &mut [*mut u8]) -> usize {
        let sh = &*self.shared;
        let cpu = owner.slot();
        let mut pcs = sh.pcs.lock(owner);
        let (n, slow) = sh.core.bulk_alloc(&mut pcs, out);
        if slow {
            sh.mark_used(cpu);
        }
        drop(pcs);
        if slow {
            owner.quiescent();
        }
        for &p in &out[..n] {
            sh.core.mark_allocated(p);
        }
        n
    }

    /// Frees every object of `ptrs` under one local section (`kmem_cache_free_bulk`).
    ///
    /// # Safety
    /// As [`free`](Self::free), for each pointer (no duplicates).
    ///
    /// # Panics
    /// As [`free`](Self::free); debug builds check every pointer before
    /// freeing any.
    #[inline]
    pub unsafe fn free_bulk(&self, owner: &mut Owner<C>, ptrs: &[NonNull<u8>]) {
        let sh = &*self.shared;
        for p in ptrs {
            if let Err(e) = sh.core.check_free(p.as_ptr()) {
                panic!("qpw-mm: {e}");
            }
        }
        let cpu = owner.slot();
        let mut pcs = sh.pcs.lock(owner);
        if !ptrs.is_empty() {
            sh.mark_used(cpu);
        }
        // SAFETY: NonNull<u8> is a transparent *mut u8; the caller gives the
        // objects up.
        let slow = unsafe {
            sh.core
                .bulk_free(&mut pcs, ptrs.as_ptr().cast(), ptrs.len())
        };
        drop(pcs);
        if slow {
            owner.quiescent();
        }
    }

    /// Allocates without a slot: the shared path, under the depot lock.
    /// For threads that do not own a slot of the domain; slower, counted in
    /// [`CacheStats::shared_allocs`].
    pub fn alloc_shared(&self) -> Option<NonNull<u8>> {
        let p = NonNull::new(self.shared.core.alloc_shared())?;
        self.shared.core.mark_allocated(p.as_ptr());
        Some(p)
    }

    /// Frees without a slot (the shared path).
    ///
    /// # Safety
    /// As [`free`](Self::free).
    ///
    /// # Panics
    /// As [`free`](Self::free), in debug builds.
    pub unsafe fn free_shared(&self, ptr: NonNull<u8>) {
        if let Err(e) = self.shared.core.check_free(ptr.as_ptr()) {
            panic!("qpw-mm: {e}");
        }
        // SAFETY: forwarded to the caller.
        unsafe { self.shared.core.free_shared(ptr.as_ptr()) };
    }

    /// The kernel's name (SLUB's) for [`drain_all`](Self::drain_all),
    /// kept for readers of the kernel: the same call.
    ///
    /// # Errors
    ///
    /// As [`drain_all`](Self::drain_all).
    pub fn flush_all(&self) -> Result<(), FlushError> {
        self.drain_all()
    }

    /// Drains every slot's sheaves into the depot (SLUB's `flush_all`),
    /// through qpw's drain-all: it works in every mode and returns once
    /// every slot was drained.
    ///
    /// Errors: a slot whose owner did not run the work in time (`defer`
    /// mode: an online owner that never reached a quiescent point).
    ///
    /// # Errors
    ///
    /// A [`FlushError`] naming a slot whose owner did not run the drain in
    /// time (see [`qpw::WorkSet::run`]); the other slots are drained all the same.
    #[doc(alias = "flush_all")]
    pub fn drain_all(&self) -> Result<(), FlushError> {
        let r = self.drain.run();
        self.shared.core.collect();
        r
    }

    /// Drains every slot ([`flush_all`](Self::flush_all)), returns every
    /// free object to its slab, and gives the pages of wholly free slabs
    /// back to the OS (`madvise(MADV_DONTNEED)`): the resident set shrinks.
    ///
    /// If the drain failed on some slot, the rest is still shrunk and the
    /// drain's error is returned.
    ///
    /// # Errors
    ///
    /// The drain's [`FlushError`], as [`drain_all`](Self::drain_all); the rest
    /// is shrunk all the same.
    pub fn shrink(&self) -> Result<ShrinkReport, FlushError> {
        let r = self.drain_all();
        let mut rep = ShrinkReport::default();
        rep.add(self.shared.core.shrink());
        r.map(|()| rep)
    }

    /// Destroys the cache (`kmem_cache_destroy`): drains every slot, checks
    /// that every object was freed and unmaps its memory.
    ///
    /// A leak is reported, not hidden: [`DestroyError::Leaked`] with the
    /// count, and the memory stays mapped so the leaked pointers stay valid.
    ///
    /// # Errors
    ///
    /// [`DestroyError::Leaked`] when objects are still out (the memory stays
    /// mapped), or the drain's error.
    pub fn destroy(self) -> Result<(), DestroyError> {
        self.drain_all().map_err(DestroyError::Flush)?;
        let KmemCache {
            shared,
            drain,
            fork,
        } = self;
        drop(fork);
        drop(drain);
        let mut shared = Arc::try_unwrap(shared).map_err(|a| DestroyError::InUse {
            references: Arc::strong_count(&a) - 1,
        })?;
        let objects = shared.settle();
        let size = shared.core.size();
        drop(shared); // unmaps when nothing is allocated
        if objects == 0 {
            Ok(())
        } else {
            Err(DestroyError::Leaked {
                objects,
                bytes: objects * size,
            })
        }
    }

    /// The cache's counters and depot state.
    pub fn stats(&self) -> CacheStats {
        self.shared.core.stats()
    }
}
