//! Memory that goes back by itself: the time-based decay of one `kmalloc`
//! instance, and what drives it.
//!
//! # What a pass does
//!
//! A *pass* ([`Kmalloc::decay`](crate::Kmalloc::decay)) runs every quarter
//! of the decay delay, so "unused for the delay" is "unused for
//! [`PASSES_PER_DELAY`] passes":
//!
//! 1. **Idle slots' sheaves.** A slot's slow paths mark it active (the fast
//!    paths do nothing: no cost there). A slot that has been through a slow
//!    path since its last drain (so it may hold sheaves) and has not been
//!    active for the delay is drained through qpw's own drain (its work in
//!    the instance's [`WorkSet`](qpw::WorkSet)): in `remote` mode the pass
//!    runs it under the slot's lock and never interrupts the owner; in
//!    `queue` mode the owner runs it (once per idle period, and only if it
//!    may hold sheaves); in `defer` mode the owner runs it at its next
//!    quiescent point. A slot nobody binds any more is drained by the pass
//!    itself. A pass called by hand or run by the decay thread waits for
//!    the drains (at most the flush timeout each, counted in
//!    [`KmallocStats::decay_drain_timeouts`](crate::KmallocStats)); a pass
//!    run from a program's allocation queues them and returns.
//! 2. **Depots.** A depot whose full sheaves nobody took or gave for half
//!    the delay returns their objects to their slabs.
//! 3. **Slabs.** Slabs that have been wholly free for the delay are given
//!    back (`madvise(MADV_DONTNEED)`, adjacent slabs in one call, outside the
//!    depot lock): RSS falls, the address space stays for reuse.
//! 4. **Large mappings** cached for the delay are unmapped in one batch.
//!
//! # Who runs it
//!
//! [`QpwAlloc`](crate::QpwAlloc), by default, runs passes on a thread of
//! its own (the *decay thread*), so memory goes back while the program
//! sleeps too (a server after a burst calls no allocator function again).
//! The thread is made to be invisible to the program:
//!
//! - it is a bare pthread (no Rust runtime), started at the first slow
//!   path, with a small stack; it allocates nothing, binds no slot and
//!   sleeps on a futex between passes;
//! - it blocks every signal before it is created (the mask is set around
//!   `pthread_create`), so it never takes a signal the program sends to
//!   itself or blocks in its own threads;
//! - it does not keep the process alive: at every wake-up (every pass, and
//!   at least every 250 ms) it reads `/proc/self/status`
//!   (raw system calls into a stack buffer) and, when it is the only live
//!   thread left (`Threads:`, less a thread group leader that has ended:
//!   `State: Z` after `main` called `pthread_exit`), it calls `exit(0)`,
//!   as glibc's last thread does at its end (`start_thread`, and
//!   `__libc_start_call_main` after `main`'s `pthread_exit`, call
//!   `exit(0)` when glibc's thread count reaches zero). So `atexit`
//!   handlers run and stdio is flushed, on this thread, with its signals
//!   blocked; the exit status is 0, as with glibc;
//! - it does not exist in a forked child (only the forking thread does);
//!   the child starts its own at its first slow path, and the pass state
//!   the parent's thread may have held is reset in the child.
//!
//! If `/proc/self/status` cannot be read when the thread would start (no
//! `/proc` in a container or chroot), it is not started (it could not tell
//! when to end the process): one line on stderr, and the passes run from
//! the program's slow paths, as below. A read that fails later (no free file
//! descriptor) skips that look; the next wake-up looks again.
//!
//! Without the thread ([`QpwAlloc::set_decay_thread`](crate::QpwAlloc::set_decay_thread)`(false)`,
//! `QPW_MALLOC_DECAY_THREAD=0` in qpw-malloc) passes run from the
//! program's own calls (as jemalloc's decay ticks and mimalloc's purge
//! checks do): every slow path (a sheaf refilled or flushed, a large block
//! mapped or freed, a call on the shared path) reads the coarse monotonic
//! clock (the vDSO, no system call) and, once a quarter of the delay has
//! passed since the last pass, runs one, in the calling thread (one thread
//! at a time; the others go on). The fast paths pay nothing. A program that
//! goes on allocating returns what it stopped using; a program that stops
//! calling the allocator altogether keeps its free memory cached until its
//! next call (or `shrink`, `malloc_trim`).
//!
//! Instances of [`Kmalloc`](crate::Kmalloc) made by hand have neither:
//! their owner calls `decay()` when it likes.

use crate::lock::Lock;
use crate::sys;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

/// Passes per decay delay.
pub const PASSES_PER_DELAY: u32 = 4;
/// The default decay delay.
pub const DEFAULT_DECAY: Duration = Duration::from_secs(1);

const NO_THREAD: u32 = 0;
const STARTING: u32 = 1;
const RUNNING: u32 = 2;

/// The decay state of one instance.
pub(crate) struct Decay {
    /// The delay in nanoseconds; 0 disables the decay.
    delay_ns: AtomicU64,
    /// Bumped (and futex-woken) when the delay changes.
    wake: AtomicU32,
    thread: AtomicU32,
    /// The instance lives for good (the global allocator's): its slow
    /// paths drive the decay (ticks, or the thread).
    forever: AtomicBool,
    /// The thread is asked for (instead of ticks).
    want_thread: AtomicBool,
    /// When the next ticked pass is due (coarse clock, ns; 0: not yet
    /// scheduled).
    next_ns: AtomicU64,
    /// A ticked pass is running (one at a time).
    ticking: AtomicBool,
    /// Per slot: set by its slow paths, cleared by passes.
    touched: Box<[AtomicU8]>,
    /// The passes' own state (idle counts), under a lock that a forked
    /// child resets rather than waits for.
    state: Lock<PassState>,
    pub(crate) passes: AtomicU64,
    pub(crate) slot_drains: AtomicU64,
    pub(crate) drain_timeouts: AtomicU64,
}

pub(crate) struct PassState {
    /// Per slot: passes since it was last touched.
    pub(crate) idle: Box<[u32]>,
    /// Per slot: touched since its last drain (it may hold sheaves).
    pub(crate) holds: Box<[bool]>,
    /// Per slot: chosen for this pass's drain.
    pub(crate) chosen: Box<[bool]>,
    /// The pass number (from 1).
    pub(crate) pass: u64,
}

impl Decay {
    pub(crate) fn new(nr_cpus: usize, delay: Option<Duration>) -> Self {
        Self {
            delay_ns: AtomicU64::new(delay_to_ns(delay)),
            wake: AtomicU32::new(0),
            thread: AtomicU32::new(NO_THREAD),
            forever: AtomicBool::new(false),
            want_thread: AtomicBool::new(false),
            next_ns: AtomicU64::new(0),
            ticking: AtomicBool::new(false),
            touched: (0..nr_cpus).map(|_| AtomicU8::new(0)).collect(),
            state: Lock::new(PassState {
                idle: vec![0; nr_cpus].into_boxed_slice(),
                holds: vec![false; nr_cpus].into_boxed_slice(),
                chosen: vec![false; nr_cpus].into_boxed_slice(),
                pass: 0,
            }),
            passes: AtomicU64::new(0),
            slot_drains: AtomicU64::new(0),
            drain_timeouts: AtomicU64::new(0),
        }
    }

    /// A slot's slow path ran (it may hold sheaves now).
    #[inline]
    pub(crate) fn touch(&self, cpu: usize) {
        if let Some(t) = self.touched.get(cpu) {
            if t.load(Ordering::Relaxed) == 0 {
                t.store(1, Ordering::Relaxed);
            }
        }
    }

    /// Whether slow paths should start the thread now.
    #[inline]
    pub(crate) fn wants_thread(&self) -> bool {
        self.want_thread.load(Ordering::Relaxed)
            && self.forever.load(Ordering::Relaxed)
            && self.thread.load(Ordering::Relaxed) == NO_THREAD
            && self.delay_ns.load(Ordering::Relaxed) != 0
    }

    /// The time check of a slow path: whether this caller should run a
    /// pass now (then it calls [`tick_done`](Self::tick_done) after). One
    /// coarse-clock read when the decay is ticked; nothing otherwise.
    #[inline]
    pub(crate) fn tick_due(&self) -> bool {
        if !self.forever.load(Ordering::Relaxed) || self.want_thread.load(Ordering::Relaxed) {
            return false;
        }
        let delay = self.delay_ns.load(Ordering::Relaxed);
        if delay == 0 {
            return false;
        }
        let now = sys::coarse_now_ns();
        let next = self.next_ns.load(Ordering::Relaxed);
        if now < next {
            return false;
        }
        let period = delay / u64::from(PASSES_PER_DELAY);
        if next == 0 {
            // The first slow path starts the clock.
            let _ = self.next_ns.compare_exchange(
                0,
                now.saturating_add(period),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            return false;
        }
        if self.ticking.swap(true, Ordering::Acquire) {
            return false;
        }
        self.next_ns
            .store(now.saturating_add(period), Ordering::Relaxed);
        true
    }

    /// Ends the pass [`tick_due`](Self::tick_due) granted.
    pub(crate) fn tick_done(&self) {
        self.ticking.store(false, Ordering::Release);
    }

    pub(crate) fn delay(&self) -> Option<Duration> {
        match self.delay_ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(Duration::from_nanos(ns)),
        }
    }

    pub(crate) fn set_delay(&self, delay: Option<Duration>) {
        self.delay_ns.store(delay_to_ns(delay), Ordering::Relaxed);
        // Ticks restart their clock with the new period.
        self.next_ns.store(0, Ordering::Relaxed);
        self.wake.fetch_add(1, Ordering::Release);
        sys::futex_wake(&self.wake, i32::MAX);
    }

    /// The instance lives for good: its slow paths drive the decay.
    pub(crate) fn set_forever(&self) {
        self.forever.store(true, Ordering::Relaxed);
    }

    /// Asks for the decay thread (`true`) or for ticks (`false`, the
    /// default). A running thread sees it at once and ends.
    pub(crate) fn set_want_thread(&self, on: bool) {
        self.want_thread.store(on, Ordering::Relaxed);
        self.next_ns.store(0, Ordering::Relaxed);
        self.wake.fetch_add(1, Ordering::Release);
        sys::futex_wake(&self.wake, i32::MAX);
    }

    /// Whether the thread is asked for.
    pub(crate) fn thread_wanted(&self) -> bool {
        self.want_thread.load(Ordering::Relaxed)
    }

    /// Claims the right to start the thread (one caller wins).
    pub(crate) fn claim_start(&self) -> bool {
        self.thread
            .compare_exchange(NO_THREAD, STARTING, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    pub(crate) fn started(&self, ok: bool) {
        self.thread
            .store(if ok { RUNNING } else { NO_THREAD }, Ordering::Release);
        if !ok {
            // Do not retry on every slow path: ticks take over.
            self.want_thread.store(false, Ordering::Relaxed);
        }
    }

    /// The thread ends (it is no longer asked for).
    fn thread_ended(&self) {
        self.thread.store(NO_THREAD, Ordering::Release);
    }

    /// Sleeps until the pass due at `last_ns + period` (`now_ns` clock),
    /// at most [`ALONE_CHECK`] (so the thread looks whether it is alone
    /// that often), or until the delay changes. Returns whether the pass
    /// is due (false: not yet, or the decay is disabled).
    pub(crate) fn sleep(&self, last_ns: u64) -> bool {
        let seen = self.wake.load(Ordering::Acquire);
        let Some(d) = self.delay() else {
            sys::futex_wait(&self.wake, seen, Some(ALONE_CHECK));
            return false;
        };
        let due = last_ns.saturating_add((d / PASSES_PER_DELAY).as_nanos() as u64);
        let now = sys::now_ns();
        if now < due {
            let left = Duration::from_nanos(due - now).min(ALONE_CHECK);
            sys::futex_wait(&self.wake, seen, Some(left));
        }
        sys::now_ns() >= due && self.delay().is_some()
    }

    /// Takes the pass state: the slots to drain this pass are marked in
    /// `chosen`, bound or free (an exited thread leaves its sheaves in its
    /// slot for the next one). Returns the guard and how many were chosen.
    pub(crate) fn begin_pass(&self) -> (crate::lock::LockGuard<'_, PassState>, usize) {
        let mut st = self.state.lock();
        st.pass += 1;
        self.passes.fetch_add(1, Ordering::Relaxed);
        let mut n = 0;
        let st_ref = &mut *st;
        for cpu in 0..self.touched.len() {
            st_ref.chosen[cpu] = false;
            if self.touched[cpu].swap(0, Ordering::Relaxed) != 0 {
                st_ref.idle[cpu] = 0;
                st_ref.holds[cpu] = true;
                continue;
            }
            st_ref.idle[cpu] = st_ref.idle[cpu].saturating_add(1);
            if st_ref.holds[cpu] && st_ref.idle[cpu] >= PASSES_PER_DELAY {
                st_ref.holds[cpu] = false;
                st_ref.chosen[cpu] = true;
                n += 1;
            }
        }
        (st, n)
    }

    /// The forked child: no pass is running (the thread that ran it does
    /// not exist), and no thread either.
    ///
    /// # Safety
    /// Only in the child of a fork, before any other thread exists.
    pub(crate) unsafe fn after_fork_child(&self) {
        // SAFETY: in the child only this thread exists; if the vanished
        // decay thread held the lock, its state is heuristics only (idle
        // counts), valid whatever it was doing.
        unsafe { self.state.unlock_raw() };
        if self.thread.load(Ordering::Relaxed) != NO_THREAD {
            self.thread.store(NO_THREAD, Ordering::Relaxed);
        }
        // A ticked pass in another thread at the fork did not end here.
        self.ticking.store(false, Ordering::Relaxed);
    }
}

/// The shortest delay: shorter ones (zero included) act as this, so a
/// pass never runs more often than every millisecond.
pub const MIN_DECAY: Duration = Duration::from_millis(4);

fn delay_to_ns(delay: Option<Duration>) -> u64 {
    match delay {
        None => 0,
        Some(d) => d.max(MIN_DECAY).as_nanos().min(u64::MAX as u128) as u64,
    }
}

/// An instance the decay thread can run passes of.
pub(crate) trait Decaying: Sync + 'static {
    /// Its decay state.
    fn decay_state(&self) -> &Decay;
    /// One pass, waiting for the slots' drains.
    fn decay_pass(&self);
}

/// Starts the decay thread of `target` (once: the caller that claims the
/// start; false if it could not start, said on stderr).
///
/// # Safety
/// `target` lives, unmoved, for the rest of the process.
pub(crate) unsafe fn start_thread<T: Decaying>(target: &T) {
    let d = target.decay_state();
    if !d.claim_start() {
        return;
    }
    if sys::alone_in_process().is_none() {
        // It could not tell when the program's last thread has ended, and
        // would keep the process alive after `main`'s `pthread_exit`.
        sys::write_stderr(
            "qpw-mm: /proc/self/status is unreadable: no decay thread; the decay runs from slow paths\n",
        );
        d.started(false);
        return;
    }
    let arg = target as *const T as *mut libc::c_void;
    let ok = sys::spawn_detached(decay_main::<T>, arg).is_ok();
    if !ok {
        sys::write_stderr(
            "qpw-mm: cannot start the decay thread; the decay runs from slow paths\n",
        );
    }
    d.started(ok);
}

/// How often at most the decay thread looks whether it is the process's
/// last thread (and sleeps at most this long between looks).
pub(crate) const ALONE_CHECK: Duration = Duration::from_millis(250);

/// The decay thread: a pass every quarter of the delay, until it is no
/// longer asked for. Every wake-up (at least every [`ALONE_CHECK`]) it
/// looks whether it is the last thread of the process (the program's
/// threads have all ended: `main` called `pthread_exit` and every other
/// thread has ended); then it ends the process as glibc's last thread
/// does (`start_thread` calls `exit(0)` when the thread count reaches
/// zero): `exit(0)`, so `atexit` handlers run and stdio is flushed.
extern "C" fn decay_main<T: Decaying>(arg: *mut libc::c_void) -> *mut libc::c_void {
    // SAFETY: `start_thread`'s caller promised the target lives, unmoved,
    // for the rest of the process.
    let target = unsafe { &*(arg as *const T) };
    let mut last = sys::now_ns();
    loop {
        let d = target.decay_state();
        if !d.thread_wanted() {
            d.thread_ended();
            return std::ptr::null_mut();
        }
        if sys::alone_in_process() == Some(true) {
            // SAFETY: the program has no thread left to disturb: this is
            // what glibc's last thread does at its end.
            unsafe { libc::exit(0) };
        }
        if d.sleep(last) && d.thread_wanted() {
            target.decay_pass();
            last = sys::now_ns();
        }
    }
}
