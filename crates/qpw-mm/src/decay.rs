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
use crate::stats::ShrinkReport;
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

impl<C: qpw::Config> crate::Kmalloc<C> {
    /// After a slot's slow path, outside its section: marks the slot active
    /// for the decay, starts the decay thread if it is due, and runs the
    /// slot's queued work (defer mode's quiescent point).
    #[inline]
    pub(crate) fn after_slow_path(&self, owner: &mut qpw::Owner<C>) {
        let d = &self.shared.decay;
        d.touch(owner.slot());
        if d.wants_thread() {
            self.start_decay_thread();
        }
        owner.quiescent();
    }

    /// Marks the instance as living for the rest of the process (the global
    /// allocator leaks its own), so slow paths may start a decay thread that
    /// holds it.
    ///
    /// # Safety
    /// The instance is never dropped or moved.
    pub(crate) unsafe fn make_forever(&self) {
        self.shared.forever.store(true, Ordering::Relaxed);
        if self.shared.decay.delay().is_some() {
            self.shared.decay.set_auto_thread();
        }
    }

    /// The decay delay now (`None`: decay disabled).
    pub fn decay_delay(&self) -> Option<Duration> {
        self.shared.decay.delay()
    }

    /// Sets the decay delay: free slabs, cached large mappings and idle
    /// slots' sheaves go back after about this long unused. `None` disables
    /// the decay. Callable at any time; a running decay thread picks it up
    /// at once. Instances without a decay thread apply it in [`decay`](Self::decay).
    pub fn set_decay(&self, delay: Option<Duration>) {
        let d = &self.shared.decay;
        d.set_delay(delay);
        if delay.is_some() && self.shared.decay_thread_allowed() {
            d.set_auto_thread();
        }
    }

    /// One decay pass (see [`decay`](crate::decay) for what it does); the
    /// decay thread runs one every quarter of the delay. Returns what went
    /// back to the OS. Nothing happens while the decay is disabled.
    pub fn decay(&self) -> ShrinkReport {
        let mut rep = ShrinkReport::default();
        if self.shared.decay.delay().is_none() {
            return rep;
        }
        let sh = &*self.shared;
        let (st, n) = sh.decay.begin_pass();
        if n > 0 {
            // Queue every chosen slot's drain first (in queue mode the
            // owners then run them in parallel), then wait for each.
            for cpu in 0..st.chosen.len() {
                if st.chosen[cpu] {
                    if let Some(w) = self.drain.get(cpu) {
                        w.queue();
                    }
                }
            }
            for cpu in 0..st.chosen.len() {
                if st.chosen[cpu] {
                    if let Some(w) = self.drain.get(cpu) {
                        sh.decay.slot_drains.fetch_add(1, Ordering::Relaxed);
                        if w.flush().is_err() {
                            sh.decay.drain_timeouts.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }
        let pass = st.pass;
        drop(st);
        for core in sh.classes().cores() {
            rep.add(core.decay(PASSES_PER_DELAY / 2));
        }
        let large = sh.classes().large.decay(pass, u64::from(PASSES_PER_DELAY));
        rep.add((0, large));
        rep
    }

    /// Starts the decay thread (once; the slow path saw it due).
    #[cold]
    #[inline(never)]
    fn start_decay_thread(&self) {
        let d = &self.shared.decay;
        if !d.claim_start() {
            return;
        }
        let me = self as *const Self as *mut libc::c_void;
        let ok = sys::spawn_detached(decay_main::<C>, me).is_ok();
        if !ok {
            sys::write_stderr(
                "qpw-mm: cannot start the decay thread; memory goes back on shrink() only\n",
            );
        }
        d.started(ok);
    }
}

impl<C: qpw::Config> crate::kmalloc::KShared<C> {
    /// Whether this instance lives for good, so a thread may keep a
    /// reference to it (the global allocator's).
    fn decay_thread_allowed(&self) -> bool {
        self.forever.load(Ordering::Relaxed)
    }
}

/// The decay thread: a pass every quarter of the delay, forever.
extern "C" fn decay_main<C: qpw::Config>(arg: *mut libc::c_void) -> *mut libc::c_void {
    // SAFETY: the thread is only started for an instance that lives for the
    // rest of the process (`forever`, set by the global allocator on its
    // leaked instance).
    let km = unsafe { &*(arg as *const crate::Kmalloc<C>) };
    loop {
        if km.shared.decay.sleep() {
            km.decay();
        }
    }
}
