//! Memory that goes back by itself: the time-based decay of one `kmalloc`
//! instance, and the optional thread that runs it.
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
//!    `queue` mode the owner runs it (one signal, once per idle period, and
//!    only if it may hold sheaves); in `defer` mode the owner runs it at its
//!    next quiescent point (the pass waits at most the flush timeout,
//!    counted in [`KmallocStats::decay_drain_timeouts`](crate::KmallocStats)).
//! 2. **Depots.** A depot whose full sheaves nobody took or gave for half
//!    the delay returns their objects to their slabs.
//! 3. **Slabs.** Slabs that have been wholly free for the delay are given
//!    back (`madvise(MADV_DONTNEED)`, adjacent slabs in one call, outside the
//!    depot lock): RSS falls, the address space stays for reuse.
//! 4. **Large mappings** cached for the delay are unmapped in one batch.
//!
//! # Who runs it
//!
//! [`QpwAlloc`](crate::QpwAlloc) starts a thread for it lazily, at the first
//! slow path after it is ready (and again in a forked child, where the
//! thread does not exist). It is a bare pthread (no Rust runtime), it
//! allocates nothing and binds no slot, and it sleeps on a futex between
//! passes. A program's threads pay nothing on their fast paths; a slot that
//! goes idle holding sheaves is drained once, as a `flush_all` would.
//! Instances of [`Kmalloc`](crate::Kmalloc) made by hand have no thread:
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
    /// Whether slow paths start the thread (the global allocator's instance).
    auto_thread: AtomicBool,
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
            auto_thread: AtomicBool::new(false),
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
        self.auto_thread.load(Ordering::Relaxed)
            && self.thread.load(Ordering::Relaxed) == NO_THREAD
            && self.delay_ns.load(Ordering::Relaxed) != 0
    }

    pub(crate) fn delay(&self) -> Option<Duration> {
        match self.delay_ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(Duration::from_nanos(ns)),
        }
    }

    pub(crate) fn set_delay(&self, delay: Option<Duration>) {
        self.delay_ns.store(delay_to_ns(delay), Ordering::Relaxed);
        self.wake.fetch_add(1, Ordering::Release);
        sys::futex_wake(&self.wake, i32::MAX);
    }

    pub(crate) fn set_auto_thread(&self) {
        self.auto_thread.store(true, Ordering::Relaxed);
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
            // Do not retry on every slow path: the next `set_decay` re-arms.
            self.auto_thread.store(false, Ordering::Relaxed);
        }
    }

    /// Sleeps until the next pass is due (or the delay changes). Returns
    /// whether a pass is due (false: decay disabled, slept until changed).
    pub(crate) fn sleep(&self) -> bool {
        let seen = self.wake.load(Ordering::Acquire);
        match self.delay() {
            None => {
                sys::futex_wait(&self.wake, seen, None);
                false
            }
            Some(d) => {
                let period = d / PASSES_PER_DELAY;
                let start = sys::now_ns();
                sys::futex_wait(&self.wake, seen, Some(period));
                // Woken early by a changed delay: a pass only once due.
                sys::now_ns() - start >= period.as_nanos() as u64 && self.delay().is_some()
            }
        }
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
    /// One pass.
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
    let arg = target as *const T as *mut libc::c_void;
    let ok = sys::spawn_detached(decay_main::<T>, arg).is_ok();
    if !ok {
        sys::write_stderr(
            "qpw-mm: cannot start the decay thread; memory goes back on shrink() only\n",
        );
    }
    d.started(ok);
}

/// The decay thread: a pass every quarter of the delay, forever.
extern "C" fn decay_main<T: Decaying>(arg: *mut libc::c_void) -> *mut libc::c_void {
    // SAFETY: `start_thread`'s caller promised the target lives, unmoved,
    // for the rest of the process.
    let target = unsafe { &*(arg as *const T) };
    loop {
        if target.decay_state().sleep() {
            target.decay_pass();
        }
    }
}
