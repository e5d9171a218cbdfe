//! The QPW patch series' consumers, in userspace: per-CPU caches whose
//! remote drains go through [`qpw`], so they work in every mode.
//!
//! # The idea
//!
//! The kernel keeps three per-CPU caches that QPW was made for. Each makes a
//! hot path cheap by working on a CPU-local batch under the CPU's local lock,
//! and each has a *drain-all* that some other CPU must run now and then:
//!
//! | kernel cache | per-CPU state | drain | here |
//! |---|---|---|---|
//! | SLUB sheaves (`mm/slub.c`) | a main and a spare *sheaf*: arrays of free objects | `flush_all` on shrink, destroy, memory offline | [`KmemCache`], [`Kmalloc`], [`QpwAlloc`] |
//! | LRU folio batches (`mm/swap.c`) | ~15 pages waiting to enter the LRU | `lru_add_drain_all` | [`lru`] |
//! | memcg charge stock (`mm/memcontrol.c`) | up to 64 pre-charged pages | `drain_all_stock` | [`stock`] |
//!
//! Mainline drains by queueing a work item on every CPU and waiting for it,
//! which interrupts every CPU, isolated ones included. QPW instead lets the
//! drainer run the work itself under the target CPU's (now real) spinlock.
//! Here every drain is one [`qpw::Domain::work_all`] + [`qpw::WorkSet::run`],
//! so the choice is the domain's mode:
//!
//! | mode | owner's hot path | who runs the drain | owner interrupted |
//! |---|---|---|---|
//! | `queue` (`qpw=0`) | a flag | the drainer, once it has claimed the slot, fenced the owner's CPU (`membarrier`) and seen its section close | once per drain (an IPI; no signal) |
//! | `remote` (`qpw=1`) | one uncontended lock | the drainer, under the slot's lock | never |
//! | `defer` | a flag | the owner at its next quiescent point (slow paths are one), or the drainer while it is offline | never |
//! | `auto` | per slot | `remote` on isolated CPUs, `queue` elsewhere | not on isolated CPUs |
//!
//! # Sheaves
//!
//! A [`KmemCache`] serves objects of one size. Each slot of its domain holds
//! two *sheaves* (SLUB's `slub_percpu_sheaves`): `alloc` pops a pointer from
//! the main sheaf and `free` pushes one onto it, inside the owner's local
//! section: no atomic instruction in `queue`, `defer` and no-qpw
//! configurations, one uncontended lock in `remote` and RT. An empty main is
//! swapped with the spare, or exchanged for a full sheaf from the shared
//! *depot* (SLUB's "barn"); a full main goes to the depot. Behind the depot
//! are *slabs* carved from memory the cache maps itself, with lists of
//! partial slabs. An object freed on another CPU simply enters the freeing
//! CPU's sheaf.
//!
//! # Drains, and why they never take the depot's lock
//!
//! [`KmemCache::flush_all`] drains every slot's sheaves into the depot. The
//! drain work runs with the slot in hand on the drainer's thread, or in
//! `defer` mode on the owner's at one of its quiescent points; it may be
//! called where the depot lock is already held (a pass of the decay inside
//! a slow path, `shrink`), so it never takes that lock: it pushes the slot's sheaves onto a lock-free hand-off stack (a
//! compare-and-swap loop; the depot takes the whole stack at once, so there
//! is no ABA) and clears the slot. The drainer, after qpw's drain-all has
//! returned, takes the depot lock and files what was handed off. The work
//! allocates nothing and waits for nothing.
//!
//! [`KmemCache::shrink`] drains, returns every free object to its slab and
//! gives wholly free slabs back to the OS (`madvise(MADV_DONTNEED)`).
//! [`KmemCache::destroy`] drains and then proves every object was freed, or
//! reports the leak ([`DestroyError::Leaked`]).
//!
//! # kmalloc and the global allocator
//!
//! [`Kmalloc`] puts size classes over slab caches in one address-space
//! reservation (so `kfree` finds the class from the address): by default
//! the kernel's, 8 bytes to 8 KiB ([`KMALLOC_SIZES`]); with
//! [`SizeClasses::Fine`] 56 classes up to 256 KiB at most 25% apart
//! ([`FINE_SIZES`], what [`QpwAlloc`] uses). Larger requests are mapped,
//! through a cache of freed mappings. Free slabs, cached mappings and idle
//! threads' cached objects go back to the OS after a delay ([`decay`]), and
//! a fork hook keeps every lock consistent across `fork`. It takes an
//! explicit `&mut Owner`, or binds the calling thread to a free slot on first
//! use (the `*_local` calls); a thread that finds no slot free uses the
//! shared path, and exited threads' slots are reused (lowest first, their
//! cached objects still in them; the decay drains a slot nobody takes).
//! [`QpwAlloc`] makes it a [`GlobalAlloc`](std::alloc::GlobalAlloc):
//!
//! ```no_run
//! #[global_allocator]
//! static ALLOC: qpw_mm::QpwAlloc = qpw_mm::QpwAlloc::new();
//! # fn main() {}
//! ```
//!
//! # Checks
//!
//! Debug builds record every object handed out and panic (the global
//! allocator: abort) on a double free, a pointer not from the cache, or one
//! inside an object. Release builds trust the `unsafe` contracts of `free`.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

mod binding;
mod cache;
mod classes;
pub mod decay;
mod depot;
mod error;
mod fork;
mod geometry;
mod global;
mod kmalloc;
mod large;
mod local;
mod lock;
mod reclaim;
mod shared;
mod sheaf;
mod size_class;
mod slab;
mod stack;
mod stats;
mod sys;

pub mod lru;
pub mod stock;

/// The README's example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub use cache::{
    default_depot_max_full, default_sheaf_capacity, KmemCache, KmemCacheBuilder, DEFAULT_MAX_BYTES,
    MAX_ALIGN, MIN_FALLBACK_MAX_BYTES,
};
pub use error::{DestroyError, FreeError, SlabError};
pub use geometry::MAX_OBJECT_SIZE;
pub use global::{GlobalMode, QpwAlloc, DEFAULT_GLOBAL_NR_CPUS};
pub use kmalloc::{Kmalloc, KmallocBuilder, DEFAULT_CLASS_BYTES, MIN_FALLBACK_CLASS_BYTES};
pub use lru::Lru;
pub use sheaf::MAX_SHEAF_CAPACITY;
pub use size_class::{
    size_class, SizeClasses, FINE_MAX_SIZE, FINE_NCLASSES, FINE_SIZES, KMALLOC_MAX_CACHE_SIZE,
    KMALLOC_SIZES, NCLASSES,
};
pub use stats::{CacheStats, KmallocStats, SharedPathStats, ShrinkReport};
pub use stock::Stock;
