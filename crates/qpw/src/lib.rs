//! Per-CPU data whose remote maintenance never interrupts the owners that
//! must not be interrupted: the Linux kernel's QPW ("Queue PerCPU Work") for
//! userspace. Each thread owns a slot of per-CPU caches, batches or counters
//! and touches it for a few cycles (no atomic in `queue` and `defer` modes);
//! any thread drains or reads every slot, the mode says at what cost to owners.
//!
//! # A first example
//!
//! ```
//! use qpw::{Domain, PerCpu};
//! use std::sync::{atomic::{AtomicU64, Ordering::Relaxed}, Arc};
//!
//! let domain = Domain::builder().nr_cpus(2).build()?; // 2 slots, mode from QPW
//! let counts = Arc::new(PerCpu::new(&domain, |_slot| 0u64)); // a counter per slot
//! let total = Arc::new(AtomicU64::new(0));
//! let (c, t) = (counts.clone(), total.clone());
//! let drain_all = domain.work_all(move |ctx| { // one work per slot
//!     let Ok(mut v) = c.lock_ctx(ctx) else { return }; // Err: the deadline passed
//!     t.fetch_add(std::mem::take(&mut *v), Relaxed);
//! });
//! let mut me = domain.bind_any()?; // this thread owns a free slot
//! for _ in 0..1000 { *counts.lock(&mut me) += 1; } // the owner's hot path
//! drain_all.run()?; // from any thread: every slot's count moves into `total`
//! assert_eq!(total.load(Relaxed), 1000);
//! # Ok::<(), qpw::Error>(())
//! ```
//!
//! # Choosing a mode
//!
//! The mode comes from the `QPW` variable (`0`, `1`, `defer`, `auto`,
//! `auto:2-7`) or [`Builder::mode`]. Costs measured on a 2-CPU VM
//! (`qpw-bench locks` and `qpw-bench isolation`, quiet machine; TSC ticks
//! per owner lock+unlock pair, drain p50 of one busy owner at 1,000
//! drains/s):
//!
//! | mode | owner lock+unlock | drain p50 | owner interrupted | choose it when |
//! |---|---|---|---|---|
//! | `queue` (`QPW=0`) | 3.5-3.6 ticks | 11.6-13.8 µs | once per drain: one IPI to the owner's CPU | drains are rare and owners may be interrupted |
//! | `remote` (`QPW=1`) | 5.7 ticks | 0.8 µs | never | owners must never be interrupted (isolated, real-time CPUs) or drains are frequent |
//! | `defer` | 3.6-3.7 ticks | 1.2 µs | never | owners loop and reach [`Owner::quiescent`] or section ends often |
//! | `auto` | per slot | 1.8 µs | never on isolated CPUs | a mix of isolated and housekeeping CPUs |
//! | `queue` under [`NoQpw`] (or the feature off) | 2.8-2.9 ticks | `queue`'s mechanism | as `queue` | you never want anything but `queue` |
//!
//! An unpinned `queue` owner's drain fences every CPU of the process, so
//! pin `queue` owners ([`Domain::bind`]). [`Mode`] has the details.
//!
//! # Where work runs
//!
//! A work function always runs as ordinary code on an ordinary thread: it
//! may allocate, free, lock a `Mutex` and drop the last `Arc` of anything.
//! In `queue` and `remote` modes it runs on the thread that queued or
//! flushed it (in `queue` mode after fencing the owner's CPU and waiting
//! for its local section to close; the owner, if it opens a section
//! meanwhile, waits in the kernel with priority inheritance until the work
//! is done). In `defer` mode it runs on the owner's thread, at the end of
//! the owner's next local section of that slot, at [`Owner::quiescent`],
//! when the owner goes [offline](Owner::offline) and when it unbinds; so an
//! owner needs to call `quiescent()` only where it may go long without a
//! local section. For an absent or offline owner, in every mode, the caller
//! runs it. A work must not wait for something only its slot's owner can
//! do. [`Work`] has the table. Signal masks, `sigwait` threads and `EINTR`
//! are the application's own business: qpw sends no signal.
//!
//! `queue` needs `membarrier(2)` (Linux 4.14; the targeted form of 5.10).
//! Where the kernel refuses it (`ENOSYS`, or `EPERM` under a seccomp
//! filter) its slots run `remote` ([`ModeReason::FenceUnavailable`] in
//! [`Domain::slot_info`]); a configuration without `remote` mode fails to
//! build with [`Error::FenceUnavailable`].
//!
//! A work function that panics is caught (the drain goes on, the slot stays
//! usable, and the flush returns [`FlushError::Panicked`]). Treat it as a
//! bug, not as control flow.
//!
//! # Slots
//!
//! A [`Domain`] has a fixed number of slots, one per CPU this process may
//! run on unless [`Builder::nr_cpus`] says otherwise. A thread owns at most
//! one slot of a domain: [`Domain::bind`] takes slot `n` and pins the
//! thread to CPU `n`, [`Domain::bind_unpinned`] takes it without pinning,
//! [`Domain::bind_any`] takes any free slot, and [`Domain::with_local`]
//! borrows one for a call. A [`PerCpu`] holds one value per slot. With more
//! threads than CPUs, build the domain with `nr_cpus(n)` at least the
//! number of threads that bind (slots beyond the CPUs are owned by unpinned
//! threads) and bind them with `bind_any`; otherwise a bind past the last
//! slot fails with [`Error::NoFreeSlot`]. A thread holds one local section
//! of a domain at a time, across all its `PerCpu`s (see [`PerCpu::lock`]).
//!
//! # Cargo features
//!
//! - `qpw` (default): the modes. Off, it is the kernel's `CONFIG_QPW=n`:
//!   only `queue` exists, the owner's hot path carries no mode branch, and
//!   [`Standard`] behaves as [`NoQpw`]. Code that names no mode compiles
//!   either way.
//!
//! # More
//!
//! - [`Work`], [`WorkSet`]: queue, flush and drain-all; [`WorkSet::with_check`]
//!   for drains that skip clean slots.
//! - [`PerCpu`]: local ([`lock`](PerCpu::lock)), remote
//!   ([`remote`](PerCpu::remote), [`try_remote`](PerCpu::try_remote)) and
//!   in-work ([`lock_ctx`](PerCpu::lock_ctx)) access.
//! - [`SlotStats`], [`SlotInfo`]: what each slot did and why it runs its mode.
//! - [`register_fork_hook`]: consumers with locks of their own.
//! - [`qpw-mm`](https://docs.rs/qpw-mm): the kernel's consumers on qpw (a
//!   per-CPU slab allocator with a `GlobalAlloc`, LRU batches, a charge
//!   stock); `qpw-bench` in the repository measures every mode.
//!
//! # The idea
//!
//! Per-CPU caches make hot paths cheap: each CPU owns a slot and touches it
//! under a *local lock* that costs nothing. Now and then another CPU must act
//! on *every* CPU's slot: drain a batch, return a cache, read a counter
//! exactly. The kernel has two ways, and QPW is its switch between them:
//!
//! - **queue** (`qpw=0`, and mainline): queue the work on the target CPU and
//!   wait for it. The target is interrupted once (here: an asymmetric fence,
//!   `membarrier(2)`, after which the caller runs the work itself; no signal,
//!   no handler). The owner's local lock stays free of atomics.
//! - **remote** (`qpw=1`): make the local lock a real per-CPU spinlock, and run
//!   the work *on the calling CPU* under the target's lock. The target is never
//!   interrupted; its hot path pays one uncontended atomic.
//!
//! This crate adds **defer** (the owner runs queued work at its own quiescent
//! points, as the competing kernel proposal runs it on return to userspace,
//! and a caller runs it itself while the owner is offline) and **auto**
//! (`remote` on isolated CPUs, `queue` elsewhere: a per-CPU choice no kernel
//! offers).
//!
//! # Concepts
//!
//! | kernel | here |
//! |---|---|
//! | CPU | a slot of a [`Domain`]; a thread [binds](Domain::bind) to one and gets an [`Owner`] |
//! | preemption off / `local_lock` | [`PerCpu::lock`] with the `&mut Owner`: a [`LocalGuard`] |
//! | IPI + kworker | the caller claims the slot, `membarrier(2)` makes the owner's CPU execute a full barrier (an IPI; no signal), the caller waits for the owner's section to close and runs the work on its own thread |
//! | per-CPU spinlock | the cell's lock word, taken by owner and remote alike in `remote` mode; an owner that waits on a remote holder waits in the kernel with priority inheritance (`FUTEX_LOCK_PI`), as PREEMPT_RT's `local_lock` |
//! | `INIT_QPW`, `queue_percpu_work_on`, `flush_percpu_work` | [`Domain::work`], [`Work::queue`], [`Work::flush`] |
//! | `qpw_get_cpu`, `qpw_is_cpu_remote` | [`WorkCtx::cpu`], [`WorkCtx::is_remote`] |
//! | return to userspace | [`Owner::quiescent`], [`Owner::offline`] |
//! | `smp_processor_id()` | [`Owner::slot`] |
//! | `CONFIG_QPW` | cargo feature `qpw`, and the [`Config`] type parameter |
//! | `qpw=` boot option | [`Mode`], from the `QPW` variable or [`Builder::mode`] |
//! | `PREEMPT_RT` | the [`Rt`] configuration: the local lock is always the spinlock |
//!
//! # Rules kept (each tested)
//!
//! 1. At any instant at most one context touches a slot's data.
//! 2. Queued work runs exactly once, with its slot's data in hand; `flush`
//!    returns only after it ran; no work is lost when its owner exits.
//! 3. `remote` and `defer` never interrupt an owner; `queue` interrupts only
//!    the drained owner's CPU (pinned owners; an unpinned owner's drain
//!    fences every CPU of the process), once per drain; `auto` never
//!    interrupts an isolated slot. [`SlotStats`] counts fences and runs.
//! 4. No code of qpw's or of the user's runs in signal context: qpw sends no
//!    signal and installs no handler (see *Where work runs*).
//! 5. An owner that exits hands its slot back, drained.
//! 6. Bad input gets an [`Error`] naming what was wrong, and changes nothing.
//! 7. A work never runs concurrently with itself (queued while it runs, it
//!    runs again after), and nothing it uses is freed while it runs.
//! 8. Every wait is bounded, one deadline per drain-all, and nobody waits
//!    on itself (see *Waits and their bounds*).
//! 9. After `fork()` the child can use everything (see *fork*).
//!
//! # Drains that leave clean slots alone
//!
//! A drain-all fences (or locks) every slot it runs on: in `queue` mode one
//! IPI per online owner. A [`WorkSet`] may carry a per-slot check,
//! evaluated remotely before queueing ([`WorkSet::with_check`],
//! [`Domain::work_all_checked`]; the kernel's `has_pcs_used`,
//! `cpu_needs_drain`): a slot it calls clean is neither fenced nor
//! locked, and is counted in [`SlotInfo::drains_skipped_clean`]. The check
//! reads only a hint the owner publishes (an atomic it sets when the slot
//! gets something to drain, and the drain clears), never the slot's data.
//!
//! # Waits and their bounds
//!
//! Every wait ends by the domain's flush timeout, with an error naming the
//! slot and the reason ([`FlushError`]). A drain-all ([`WorkSet::run`]) has
//! *one* deadline for all its slots. A flush or drain-all from inside the
//! caller's own local section of the domain returns
//! [`FlushError::InLocalSection`] at once (it would wait on itself, as
//! `flush_work` with preemption off would hang). In `remote` mode the lock
//! waits of work run remotely are bounded by the same deadline: past it
//! [`PerCpu::lock_ctx`] returns an `Err` the work returns (nothing unwinds,
//! so this holds under `panic = "abort"` too), the run is over and the
//! flush reports [`FlushError::LockTimeout`]. Dropping a [`Work`] or [`WorkSet`] never
//! waits: work still queued keeps its memory until it has run.
//!
//! # fork
//!
//! qpw handles `fork()` itself (`pthread_atfork`, registered when the first
//! domain is built). In the child, where only the forking thread exists:
//!
//! - the forking thread's owners keep their slots and work as before:
//!   sections, quiescent points, drains (the `membarrier` registration is
//!   the child's too);
//! - a slot whose owner thread is gone is handed over (freed, for any thread
//!   to bind) when its data is known to be consistent: the owner was between
//!   sections or offline, no remote thread held it (`BUSY`) or was running
//!   remote work on it. Otherwise it is **retired**: never touched again,
//!   skipped by drain-alls (counted in [`SlotStats::drains_skipped_retired`]),
//!   and binding it or flushing a work of it fails ([`Error::SlotRetired`],
//!   [`FlushError::Retired`]);
//! - the child may build domains, bind, queue, flush and drain-all in every
//!   mode, and spawn threads that do. Work queued in the parent on slots
//!   that were handed over runs in the child like any other pending work.
//!
//! Nothing another thread held on the forking thread's *own* slots is copied
//! held: before the consumer hooks' `prepare`, the forking thread closes
//! each of its slots' *fork gate* and waits until no remote context is on
//! them (no cell lock held by another thread in `remote` mode, no `BUSY`).
//! While a gate is closed, a remote run of the slot's work leaves it on the
//! slot's stack (the forking thread runs it when it opens the gate after
//! the parent hooks), a drain-all does the same, [`PerCpu::remote`] waits
//! for the gate (within the flush timeout, then [`Error::LockTimeout`]), and
//! [`PerCpu::try_remote`] gives [`Error::WouldBlock`]. The wait is bounded
//! (2 s per slot); past it the fork goes on and the slot's
//! [`SlotStats::fork_waits_expired`] counts it (the child may then find a
//! cell held). So a remote context on the forking thread's slot must not
//! wait for anything the forking thread holds when it calls `fork()`.
//!
//! Consumers with locks of their own register a [`ForkHook`] (see
//! [`register_fork_hook`] for the order of calls). Lock order: the fork
//! gates, then qpw's registry lock, then the hooks' locks in registration
//! order. So never build a domain, register a hook or drop a
//! [`ForkHookHandle`] while holding a lock your hook's `prepare` takes, nor
//! from inside `prepare` or `parent` (the [`ForkHook`] docs say why: the
//! other order deadlocked against a thread allocating inside qpw's
//! registry while a hook held the allocator's locks). Not covered: a fork from
//! inside a work function, a local section or a [`RemoteGuard`] (the
//! forking thread's own state is then half-changed; a fork inside a remote
//! context on its own slot waits out the gate's bound).
//!
//! # Limits
//!
//! - An [`Owner`] leaked with `mem::forget` keeps its slot for the
//!   process's life. In `queue` mode drains still run its work (the fence
//!   finds its section closed), unless it leaked inside a section.
//! - An owner can be preempted inside a local section, which the kernel's
//!   spinlocks prevent. In `remote` mode, once a caller of the domain has
//!   waited long on a cell lock, callers that find an owner's section counter
//!   standing still leave the work to the owner's section end instead of
//!   waiting on it; with more busy owners than cores every mode's drain
//!   latency then follows the scheduler.
//! - [`Domain::with_local`] parks its implicit owner offline between calls
//!   (two atomic read-modify-writes a call), so idle threads never hold up a
//!   drain; a thread that wants the cheapest hot path binds explicitly.
//! - A remote holder can be preempted while it holds a cell, which the
//!   kernel's spinlocks prevent. The owner then waits for it in the kernel
//!   with priority inheritance (a `SCHED_FIFO` owner boosts the holder, and
//!   remote takers cannot get ahead of it); a `SCHED_OTHER` owner inherits
//!   nothing the scheduler uses, so it still waits for the holder's next
//!   time slice. Use [`PerCpu::try_lock`] to take another path instead.
//! - The cell lock names its holder by kernel thread id, cached per thread;
//!   a `fork` child's cache is cleared by a `pthread_atfork` handler.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

// Layers, bottom to top (each file imports only files listed before it):
// sync, sys, error, config, stats; cell_lock; slot (the per-slot protocol);
// fork; owned (thread's owned list); domain; work; owner;
// implicit; percpu.
mod cell_lock;
mod config;
mod cpu_list;
mod domain;
mod error;
mod fence;
mod fork;
mod implicit;
mod owned;
mod owner;
mod percpu;
mod section;
mod slot;
mod stats;
mod sync;
mod sys;
mod traits;
mod work;

#[cfg(all(test, qpw_loom))]
mod loom_cell_lock;
#[cfg(all(test, qpw_loom))]
mod loom_tests;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub use config::{
    format_cpu_list, parse_cpu_list, Config, Mode, ModeReason, NoQpw, Rt, RtNoQpw, SlotMode,
    Standard, ACCEPTED, ENV_VAR,
};
pub use cpu_list::{CpuListError, MAX_CPU};
pub use domain::{Builder, Domain, DEFAULT_FLUSH_TIMEOUT, MAX_CPUS};
pub use error::{Error, FlushError};
pub use fork::{register_fork_hook, ForkHook, ForkHookHandle};
pub use owner::{Offline, Owner};
pub use percpu::{CtxGuard, LocalGuard, PerCpu, RemoteGuard};
pub use stats::{SlotInfo, SlotStats};
pub use work::{Work, WorkCtx, WorkSet};
