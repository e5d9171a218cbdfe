//! What the allocator did: per cache, and per `kmalloc` instance.

use std::fmt;

/// The state and slow-path counters of one cache ([`KmemCache::stats`](crate::KmemCache::stats),
/// one per size class in [`KmallocStats`]). The fast paths count nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Object size in bytes.
    pub object_size: usize,
    /// Bytes per slab.
    pub slab_bytes: usize,
    /// Objects per slab.
    pub objects_per_slab: usize,
    /// Object pointers per sheaf.
    pub sheaf_capacity: usize,
    /// Slabs ever carved from the arena.
    pub slabs_carved: usize,
    /// Slabs in use (carved, not released).
    pub slabs_active: usize,
    /// Slabs whose pages were given back to the OS (reusable).
    pub slabs_released: usize,
    /// Active slabs with every object free (pages still resident; the
    /// decay or `shrink` releases them).
    pub slabs_empty: usize,
    /// `slabs_active * slab_bytes`: the most the cache's slabs can hold resident.
    pub active_slab_bytes: usize,
    /// Objects of active slabs that are not free in their slab: allocated,
    /// or cached in a sheaf.
    pub objects_out_of_slabs: usize,
    /// Sheaves with objects in the depot.
    pub depot_full_sheaves: usize,
    /// Empty sheaves in the depot.
    pub depot_empty_sheaves: usize,
    /// Objects in the shared path's sheaf.
    pub shared_sheaf_objects: usize,
    /// Sheaves ever made.
    pub sheaves: usize,
    /// Allocations that found the slot's main sheaf empty.
    pub alloc_slow: u64,
    /// Frees that found the slot's main sheaf full (or absent).
    pub free_slow: u64,
    /// Sheaves with objects taken from the depot.
    pub depot_hits: u64,
    /// Full sheaves put into the depot.
    pub depot_puts: u64,
    /// Sheaf refills from slabs.
    pub refills: u64,
    /// Objects returned from sheaves to their slabs.
    pub objects_to_slabs: u64,
    /// Sheaves handed to the depot by drains (`flush_all`, thread exit).
    pub sheaves_handed_off: u64,
    /// Allocations through the shared path (no slot).
    pub shared_allocs: u64,
    /// Frees through the shared path.
    pub shared_frees: u64,
    /// Slabs released to the OS, in total.
    pub slabs_released_total: u64,
    /// Bytes released to the OS, in total.
    pub bytes_released_total: u64,
    /// `madvise` calls that released slabs (adjacent slabs share one).
    pub release_calls: u64,
    /// `madvise` calls that failed (their slabs stay resident, not counted
    /// as released).
    pub release_errors: u64,
    /// Full depot sheaves whose objects the decay returned to their slabs.
    pub sheaves_decayed: u64,
}

impl CacheStats {
    /// Adds another cache's counters (for totals).
    pub fn add(&mut self, o: &CacheStats) {
        self.slabs_carved += o.slabs_carved;
        self.slabs_active += o.slabs_active;
        self.slabs_released += o.slabs_released;
        self.slabs_empty += o.slabs_empty;
        self.active_slab_bytes += o.active_slab_bytes;
        self.objects_out_of_slabs += o.objects_out_of_slabs;
        self.depot_full_sheaves += o.depot_full_sheaves;
        self.depot_empty_sheaves += o.depot_empty_sheaves;
        self.shared_sheaf_objects += o.shared_sheaf_objects;
        self.sheaves += o.sheaves;
        self.alloc_slow += o.alloc_slow;
        self.free_slow += o.free_slow;
        self.depot_hits += o.depot_hits;
        self.depot_puts += o.depot_puts;
        self.refills += o.refills;
        self.objects_to_slabs += o.objects_to_slabs;
        self.sheaves_handed_off += o.sheaves_handed_off;
        self.shared_allocs += o.shared_allocs;
        self.shared_frees += o.shared_frees;
        self.slabs_released_total += o.slabs_released_total;
        self.bytes_released_total += o.bytes_released_total;
        self.release_calls += o.release_calls;
        self.release_errors += o.release_errors;
        self.sheaves_decayed += o.sheaves_decayed;
    }
}

/// What a [`shrink`](crate::KmemCache::shrink) gave back to the OS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShrinkReport {
    /// Wholly free slabs whose pages were released.
    pub slabs_released: usize,
    /// Their bytes.
    pub bytes_released: usize,
}

impl ShrinkReport {
    pub(crate) fn add(&mut self, (slabs, bytes): (usize, usize)) {
        self.slabs_released += slabs;
        self.bytes_released += bytes;
    }
}

/// Why an operation took the shared path instead of a slot's sheaves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SharedPathStats {
    /// The thread found every slot taken.
    pub no_slot: u64,
    /// The call came while this thread was binding or unbinding (the
    /// allocations `qpw` itself makes then), or before the instance was
    /// ready (the global allocator's start-up).
    pub reentrant: u64,
    /// The thread was exiting (after its binding was released).
    pub exiting: u64,
    /// This thread's binding table was full (too many instances in use).
    pub table_full: u64,
    /// Always 0 now: it counted threads that blocked qpw's signal, and qpw
    /// sends no signal since `queue` mode became a `membarrier` fence. Kept
    /// so code that reads it still compiles.
    pub signal_blocked: u64,
    /// Binding failed for another reason (a system call failed, ...).
    pub bind_failed: u64,
}

impl SharedPathStats {
    /// All shared-path operations.
    pub fn total(&self) -> u64 {
        self.no_slot
            + self.reentrant
            + self.exiting
            + self.table_full
            + self.signal_blocked
            + self.bind_failed
    }
}

/// Everything a [`Kmalloc`](crate::Kmalloc) instance counts.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct KmallocStats {
    /// The configuration's name (`qpw`, `no-qpw`, `rt qpw`, ...).
    pub config: &'static str,
    /// The domain's mode.
    pub mode: String,
    /// The domain's slot count.
    pub nr_cpus: usize,
    /// One entry per size class, smallest first.
    pub classes: Vec<CacheStats>,
    /// Large (directly mapped) allocations made.
    pub large_allocs: u64,
    /// Large allocations freed.
    pub large_frees: u64,
    /// Bytes mapped for large allocations still live.
    pub large_live_bytes: u64,
    /// `mmap` calls of the large path.
    pub large_maps: u64,
    /// Successful `munmap` calls of the large path (on free with the cache
    /// full, or by the decay).
    pub large_unmaps: u64,
    /// Large allocations served by a cached mapping.
    pub large_cache_hits: u64,
    /// Bytes of freed mappings cached for reuse now.
    pub large_cached_bytes: u64,
    /// Large frees that found the cache full and unmapped at once.
    pub large_cache_full: u64,
    /// Large frees of mappings longer than the cache keeps (4 MiB),
    /// unmapped at once.
    pub large_too_long: u64,
    /// `munmap` calls that failed (their bytes stay mapped and are not
    /// counted as freed).
    pub unmap_errors: u64,
    /// Bytes that could not be unmapped.
    pub unmap_error_bytes: u64,
    /// Decay passes run.
    pub decay_passes: u64,
    /// Drains of idle slots the decay started.
    pub decay_slot_drains: u64,
    /// Decay drains that did not finish within the flush timeout.
    pub decay_drain_timeouts: u64,
    /// Threads bound implicitly (first use) so far.
    pub threads_bound: u64,
    /// Implicit bindings released (thread exit or explicit unbind): their
    /// slots were freed for reuse, cached objects and all.
    pub threads_unbound: u64,
    /// Shared-path operations, by reason.
    pub shared_path: SharedPathStats,
    /// The domain's work counters (fences issued, works run where).
    pub work: qpw::SlotStats,
}

impl KmallocStats {
    /// The size classes' counters added up.
    pub fn total(&self) -> CacheStats {
        let mut t = CacheStats::default();
        for c in &self.classes {
            t.add(c);
        }
        t
    }
}

impl fmt::Display for KmallocStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.total();
        writeln!(
            f,
            "config: {}  mode: {}  slots: {}",
            self.config, self.mode, self.nr_cpus
        )?;
        writeln!(
            f,
            "threads: bound {}  unbound {}",
            self.threads_bound, self.threads_unbound
        )?;
        writeln!(
            f,
            "shared path: {} ops (no slot {}, reentrant {}, exiting {}, table full {}, signal \
             blocked {}, bind failed {})",
            self.shared_path.total(),
            self.shared_path.no_slot,
            self.shared_path.reentrant,
            self.shared_path.exiting,
            self.shared_path.table_full,
            self.shared_path.signal_blocked,
            self.shared_path.bind_failed
        )?;
        writeln!(
            f,
            "large: allocs {}  frees {}  live bytes {}  cache hits {}  cached bytes {}  not cached: cache full {}, too long {}  maps {}  unmaps {}  unmap errors {}",
            self.large_allocs,
            self.large_frees,
            self.large_live_bytes,
            self.large_cache_hits,
            self.large_cached_bytes,
            self.large_cache_full,
            self.large_too_long,
            self.large_maps,
            self.large_unmaps,
            self.unmap_errors
        )?;
        writeln!(
            f,
            "decay: passes {}  slot drains {}  drain timeouts {}  sheaves decayed {}  release calls {}  release errors {}",
            self.decay_passes,
            self.decay_slot_drains,
            self.decay_drain_timeouts,
            t.sheaves_decayed,
            t.release_calls,
            t.release_errors
        )?;
        writeln!(
            f,
            "slabs: active {}  empty {}  released {}  active bytes {}  released bytes total {}",
            t.slabs_active,
            t.slabs_empty,
            t.slabs_released,
            t.active_slab_bytes,
            t.bytes_released_total
        )?;
        writeln!(
            f,
            "slow paths: alloc {}  free {}  depot hits {}  refills {}  handed off {}",
            t.alloc_slow, t.free_slow, t.depot_hits, t.refills, t.sheaves_handed_off
        )?;
        writeln!(
            f,
            "work: fences {}  fenced {}  at section end {}  at quiescent {}  remote {}",
            self.work.fences(),
            self.work.works_fenced,
            self.work.works_at_section_end,
            self.work.works_at_quiescent,
            self.work.works_remote + self.work.works_for_absent_owner
        )?;
        writeln!(
            f,
            "per class (classes with no slab yet are left out): class = object size in bytes; slabs = \
             slabs in use; out = objects not free in their slab (allocated, or cached in a sheaf); \
             slow a/f = allocations that found the main sheaf empty / frees that found it full; \
             shared = allocations + frees on the shared path (no slot)"
        )?;
        writeln!(
            f,
            "{:>6} {:>8} {:>8} {:>10} {:>8}",
            "class", "slabs", "out", "slow a/f", "shared"
        )?;
        for c in &self.classes {
            if c.slabs_carved == 0 {
                continue;
            }
            writeln!(
                f,
                "{:>6} {:>8} {:>8} {:>10} {:>8}",
                c.object_size,
                c.slabs_active,
                c.objects_out_of_slabs,
                format!("{}/{}", c.alloc_slow, c.free_slow),
                c.shared_allocs + c.shared_frees
            )?;
        }
        Ok(())
    }
}
