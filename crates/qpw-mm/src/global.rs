//! `QpwAlloc`: a [`GlobalAlloc`] over a [`Kmalloc`] instance, so a whole
//! Rust program can run on per-CPU sheaves.
//!
//! # Never recursing into the global allocator
//!
//! The allocator is built on first use, in two phases. First the size
//! classes (slab arenas, metadata, sheaves) are mapped directly with `mmap`:
//! no allocation at all. From then on the *shared path* (the depots, under
//! their locks) can serve any request. Then the qpw domain, its per-CPU
//! cells and the drain work are built; they allocate with `Box`/`Vec`, which
//! come back here and are served by the shared path. Only then is the
//! instance published and the per-CPU fast path used.
//!
//! Threads bind a free slot on first use (see [`Kmalloc`]'s implicit API);
//! binding allocates (qpw boxes the owner record), and those allocations take
//! the shared path too. Thread-local state is a fixed `const` table without
//! a destructor, and thread exit is learnt from a pthread key, so neither
//! registers a Rust TLS destructor nor allocates.
//!
//! Errors inside the allocator cannot unwind: a misuse it detects (an
//! interior or foreign pointer, a double free it can see) prints a message
//! naming the call and the reason and aborts; the `*_checked` calls return
//! it instead, for a C library to name its own call.

use crate::classes::Classes;
use crate::decay::DEFAULT_DECAY;
use crate::error::FreeError;
use crate::kmalloc::{Kmalloc, DEFAULT_CLASS_BYTES, MIN_FALLBACK_CLASS_BYTES};
use crate::size_class::SizeClasses;
use crate::stats::{KmallocStats, ShrinkReport};
use crate::sys;
use qpw::{Config, FlushError, Mode, Standard};
use std::alloc::{GlobalAlloc, Layout};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

/// Default slot count of the global allocator's domain: enough for programs
/// with many more threads than CPUs. Slots cost a few hundred bytes each
/// until used; sheaves are made on first use.
pub const DEFAULT_GLOBAL_NR_CPUS: usize = 1024;

/// The mode of the global allocator's domain, chosen at compile time
/// (`Mode` itself is not `const`-constructible).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum GlobalMode {
    /// From the `QPW` environment variable (unset or empty: `queue`). A
    /// bad value is reported on stderr and `queue` is used.
    FromEnv,
    /// `queue` (`QPW=0`).
    Queue,
    /// `remote` (`QPW=1`).
    Remote,
    /// `defer`: threads must reach quiescent points (slow paths do) or exit
    /// for drains to finish.
    Defer,
    /// `auto`: isolated CPUs from sysfs.
    Auto,
}

impl GlobalMode {
    fn mode(self) -> Option<Mode> {
        match self {
            GlobalMode::FromEnv => None,
            GlobalMode::Queue => Some(Mode::Queue),
            GlobalMode::Remote => Some(Mode::Remote),
            GlobalMode::Defer => Some(Mode::Defer),
            GlobalMode::Auto => Some(Mode::Auto(None)),
        }
    }
}

/// `decay_ns` before any `set_decay`: the default delay.
const DECAY_UNSET: u64 = u64::MAX;

const UNINIT: u8 = 0;
const INIT: u8 = 1;
const READY: u8 = 2;
/// The domain could not be built: everything takes the shared path.
const SHARED_ONLY: u8 = 3;
/// Not even the classes could be mapped: every allocation fails.
const DEAD: u8 = 4;

/// A global allocator on qpw per-CPU slab caches.
///
/// # What it does to your process
///
/// Nothing until the first allocation. Then, once:
///
/// - **Environment**: with [`GlobalMode::FromEnv`] (the default) it reads
///   `QPW` (`0`/`queue`, `1`/`remote`, `defer`, `auto`, `auto:<cpu-list>`;
///   unset or empty: `queue`). A bad value is not an error a `malloc` can
///   return: it prints one line on stderr, `qpw-mm: QpwAlloc: invalid value
///   ... for environment variable QPW ...; using mode queue`, and the program
///   runs in `queue` mode. Pick the mode in the code
///   ([`with_mode`](Self::with_mode)) to read no variable at all.
/// - **Memory**: it reserves address space for its size classes (slab
///   arenas and their metadata, committed in 4 MiB chunks as used) and maps
///   large objects (over 256 KiB) directly. `shrink` gives free memory back;
///   so does the decay, below.
/// - **Threads**: each thread that allocates binds one of the domain's
///   slots ([`DEFAULT_GLOBAL_NR_CPUS`], or [`with_nr_cpus`](Self::with_nr_cpus))
///   until it exits (a pthread key, not a Rust TLS destructor); threads
///   beyond the slots take a shared, locked path. Binding pins nothing.
///   It starts one thread of its own, the decay thread (off with
///   [`set_decay_thread`](Self::set_decay_thread)`(false)`): every signal
///   blocked before it is created, none in a forked child until the
///   child's first slow path, and it calls `exit(0)` once it is the last
///   thread of the process (`main` called `pthread_exit` and the other
///   threads ended), as glibc's last thread does. Without `/proc` it is not
///   started.
/// - **Decay**: free memory (empty slabs, idle threads' cached objects,
///   cached mappings) goes back to the OS after [`decay_delay`](Self::decay_delay)
///   (default 1 s; [`set_decay`](Self::set_decay)`(None)` turns it off).
///   How the passes are scheduled is in [`decay`](crate::decay).
///   By default a thread of its own runs them (see Threads).
/// - **Signals**: whatever the mode's drains use (see the `qpw` crate's
///   documentation of modes).
/// - **fork**: it registers a `qpw::ForkHook` that holds its locks across
///   `fork()`, so a child can allocate at once.
///
/// ```no_run
/// use qpw_mm::QpwAlloc;
///
/// #[global_allocator]
/// static ALLOC: QpwAlloc = QpwAlloc::new();
///
/// fn main() {
///     let v: Vec<String> = (0..100).map(|i| i.to_string()).collect();
///     drop(v);
///     ALLOC.shrink().unwrap();
///     println!("{}", ALLOC.stats().unwrap());
/// }
/// ```
pub struct QpwAlloc<C: Config = Standard> {
    state: AtomicU8,
    classes: AtomicPtr<Classes>,
    km: AtomicPtr<Kmalloc<C>>,
    early_shared: AtomicU64,
    /// The decay delay set before the instance existed, in ns
    /// ([`DECAY_UNSET`], or 0 for none).
    decay_ns: AtomicU64,
    /// Whether a decay thread is asked for (see [`Self::set_decay_thread`]).
    decay_thread: AtomicBool,
    nr_cpus: usize,
    mode: GlobalMode,
    _c: PhantomData<fn() -> C>,
}

impl<C: Config> Default for QpwAlloc<C> {
    fn default() -> Self {
        Self::new()
    }
}

impl<C: Config> std::fmt::Debug for QpwAlloc<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QpwAlloc")
            .field("config", &C::NAME)
            .field("state", &self.state.load(Ordering::Relaxed))
            .field("nr_cpus", &self.nr_cpus)
            .field("mode", &self.mode)
            .finish()
    }
}

impl<C: Config> QpwAlloc<C> {
    /// An allocator with [`DEFAULT_GLOBAL_NR_CPUS`] slots, mode from `QPW`.
    /// Nothing is mapped until the first allocation.
    pub const fn new() -> Self {
        Self {
            state: AtomicU8::new(UNINIT),
            classes: AtomicPtr::new(std::ptr::null_mut()),
            km: AtomicPtr::new(std::ptr::null_mut()),
            early_shared: AtomicU64::new(0),
            decay_ns: AtomicU64::new(DECAY_UNSET),
            decay_thread: AtomicBool::new(true),
            nr_cpus: DEFAULT_GLOBAL_NR_CPUS,
            mode: GlobalMode::FromEnv,
            _c: PhantomData,
        }
    }

    /// The same with `n` slots (at most one implicitly bound thread per
    /// slot; threads beyond take the shared path).
    pub const fn with_nr_cpus(mut self, n: usize) -> Self {
        self.nr_cpus = n;
        self
    }

    /// The same with a fixed mode.
    pub const fn with_mode(mut self, mode: GlobalMode) -> Self {
        self.mode = mode;
        self
    }

    /// The instance behind the allocator, once it is built (after the first
    /// allocation), for its statistics and drains.
    pub fn kmalloc(&self) -> Option<&Kmalloc<C>> {
        let km = self.km.load(Ordering::Acquire);
        // SAFETY: once published, the instance is never freed.
        (!km.is_null()).then(|| unsafe { &*km })
    }

    /// The instance's statistics (`None` before the first allocation or if
    /// its domain could not be built).
    pub fn stats(&self) -> Option<KmallocStats> {
        self.kmalloc().map(|k| {
            let mut s = k.stats();
            s.shared_path.reentrant += self.early_shared.load(Ordering::Relaxed);
            s
        })
    }

    /// Drains every thread's sheaves ([`Kmalloc::flush_all`]).
    ///
    /// # Errors
    ///
    /// A [`FlushError`] naming a thread's slot that was not drained in time (the
    /// others are drained all the same). `Ok` before the first allocation.
    pub fn flush_all(&self) -> Result<(), FlushError> {
        self.kmalloc().map_or(Ok(()), |k| k.flush_all())
    }

    /// Drains and returns free memory to the OS ([`Kmalloc::shrink`]).
    ///
    /// # Errors
    ///
    /// The drain's [`FlushError`], as [`flush_all`](Self::flush_all); the rest is
    /// shrunk all the same.
    pub fn shrink(&self) -> Result<ShrinkReport, FlushError> {
        self.kmalloc()
            .map_or(Ok(ShrinkReport::default()), |k| k.shrink())
    }

    /// The usable bytes of a live allocation of this allocator (as
    /// `malloc_usable_size`): at least the size it was allocated with, and
    /// all of it may be written. 0 for null.
    ///
    /// # Safety
    /// `ptr` is null or a live allocation of this allocator (not freed).
    /// A pointer the allocator recognises as not its own aborts the process
    /// with a message ([`usable_size_checked`](Self::usable_size_checked)
    /// returns it instead).
    pub unsafe fn usable_size(&self, ptr: *mut u8) -> usize {
        // SAFETY: forwarded to the caller.
        match unsafe { self.usable_size_checked(ptr) } {
            Ok(n) => n,
            Err(e) => e.abort("qpw-mm", "QpwAlloc::usable_size"),
        }
    }

    /// [`usable_size`](Self::usable_size), returning what it finds wrong
    /// with `ptr` rather than aborting.
    ///
    /// # Errors
    /// The [`FreeError`] found in `ptr` (not from this allocator, not at
    /// an object's start, ...).
    ///
    /// # Safety
    /// As [`usable_size`](Self::usable_size).
    pub unsafe fn usable_size_checked(&self, ptr: *mut u8) -> Result<usize, FreeError> {
        if ptr.is_null() {
            return Ok(0);
        }
        let cl = self.classes.load(Ordering::Acquire);
        if cl.is_null() {
            return Err(FreeError::Foreign { ptr: ptr as usize });
        }
        // SAFETY: published classes are never unmapped; `ptr` is a live
        // allocation of this allocator (forwarded to the caller).
        unsafe { (*cl).usable_size(ptr) }
    }

    /// Frees `ptr` (non-null), as `dealloc` (which needs no layout here),
    /// returning the misuse it detects rather than aborting: a pointer
    /// inside an object or not from this allocator, a large block freed
    /// twice, a double free whose first free is still in this thread's
    /// cache (see [`Kmalloc`]'s free for what is checked). Nothing is
    /// changed then.
    ///
    /// # Errors
    /// The [`FreeError`] found, as above; the memory is left as it was.
    ///
    /// # Safety
    /// `ptr` was allocated by this allocator and is given up; on an error
    /// the caller must not go on as if it were freed (abort).
    #[inline(always)]
    pub unsafe fn free_checked(&self, ptr: *mut u8) -> Result<(), FreeError> {
        let km = self.km.load(Ordering::Acquire);
        if !km.is_null() {
            // SAFETY: the instance is never freed; forwarded to the caller.
            return unsafe { (*km).free_local_raw(ptr) };
        }
        self.dealloc_cold(ptr)
    }

    /// Resizes `ptr` (non-null) to `new_size` bytes at alignment `align`,
    /// as `realloc`, returning the misuse it detects (as
    /// [`free_checked`](Self::free_checked)'s) rather than aborting: then
    /// nothing is read, moved or freed. `Ok(null)` when out of memory
    /// (`ptr` still allocated).
    ///
    /// # Errors
    /// The [`FreeError`] found in `ptr`, as [`free_checked`](Self::free_checked)'s.
    ///
    /// # Safety
    /// `ptr` is live from this allocator; `new_size` rounded up to `align`
    /// (a power of two) fits in `isize`.
    pub unsafe fn realloc_checked(
        &self,
        ptr: *mut u8,
        align: usize,
        new_size: usize,
    ) -> Result<*mut u8, FreeError> {
        match self.kmalloc() {
            // SAFETY: forwarded from the caller.
            Some(k) => unsafe { k.realloc_local_raw(ptr, align, new_size) },
            None => {
                // Start-up (or shared-only): allocate, copy, free.
                // SAFETY: forwarded to the caller.
                let old = unsafe { self.usable_size_checked(ptr) }?;
                // SAFETY: a valid layout: the caller guarantees new_size fits.
                let new = unsafe { Layout::from_size_align_unchecked(new_size, align) };
                // SAFETY: forwarded.
                let np = unsafe { self.alloc(new) };
                if !np.is_null() {
                    // SAFETY: both live, distinct, at least this many bytes.
                    unsafe { std::ptr::copy_nonoverlapping(ptr, np, old.min(new_size)) };
                    // SAFETY: forwarded.
                    unsafe { self.free_checked(ptr) }?;
                }
                Ok(np)
            }
        }
    }

    /// The decay delay asked for before the instance existed.
    fn pending_decay(&self) -> Option<Duration> {
        match self.decay_ns.load(Ordering::Acquire) {
            DECAY_UNSET => Some(DEFAULT_DECAY),
            0 => None,
            ns => Some(Duration::from_nanos(ns)),
        }
    }

    /// Sets the decay delay (default [`DEFAULT_DECAY`], 1 s): free slabs,
    /// cached large mappings and idle threads' cached objects go back to
    /// the OS after about this long unused. Passes run on the decay thread
    /// by default, or from the program's own slow paths without it
    /// ([`set_decay_thread`](Self::set_decay_thread); see
    /// [`decay`](crate::decay)). `None` disables the
    /// decay (memory then goes back on [`shrink`](Self::shrink) only).
    /// Delays below [`MIN_DECAY`](crate::decay::MIN_DECAY) act as that.
    /// Callable at any time, before or after the first allocation.
    pub fn set_decay(&self, delay: Option<Duration>) {
        let ns = match delay {
            None => 0,
            Some(d) => d
                .max(crate::decay::MIN_DECAY)
                .as_nanos()
                .min(u64::MAX as u128 - 1) as u64,
        };
        self.decay_ns.store(ns, Ordering::Release);
        if let Some(k) = self.kmalloc() {
            k.set_decay(delay);
        }
    }

    /// Runs the decay's passes on a background thread of its own (`true`,
    /// the default) or from the program's slow paths (`false`: a program
    /// that stops calling the allocator then keeps its free memory until
    /// its next call). The thread is started at the next slow path (again
    /// in a forked child), with every signal blocked before it is created;
    /// once it is the process's last thread it calls `exit(0)`, as glibc's
    /// last thread does, so it never keeps the process alive after `main`
    /// calls `pthread_exit` (see [`decay`](crate::decay)). It is not started
    /// if `/proc/self/status` cannot be read (one line on stderr; the slow
    /// paths run the passes). Switched off, it ends within a pass. Callable
    /// at any time.
    pub fn set_decay_thread(&self, on: bool) {
        self.decay_thread.store(on, Ordering::Release);
        if let Some(k) = self.kmalloc() {
            k.set_decay_thread(on);
        }
    }

    /// The decay delay in force (`None`: disabled).
    pub fn decay_delay(&self) -> Option<Duration> {
        match self.kmalloc() {
            Some(k) => k.decay_delay(),
            None => self.pending_decay(),
        }
    }

    /// A quiescent point for the calling thread (defer mode).
    pub fn quiescent(&self) -> bool {
        self.kmalloc().is_some_and(|k| k.quiescent_local())
    }

    /// Releases the calling thread's slot now (its exit would).
    pub fn unbind_current_thread(&self) -> bool {
        self.kmalloc().is_some_and(|k| k.unbind_local())
    }

    /// Builds the instance (the caller moved the state to INIT).
    #[cold]
    fn init(&self) {
        let classes = match Classes::create(
            SizeClasses::Fine,
            DEFAULT_CLASS_BYTES,
            MIN_FALLBACK_CLASS_BYTES,
        ) {
            Ok(c) => c,
            Err(_) => {
                sys::write_stderr(
                    "qpw-mm: QpwAlloc: cannot reserve address space; allocations fail\n",
                );
                self.state.store(DEAD, Ordering::Release);
                return;
            }
        };
        // From here other threads and our own re-entrant calls use the
        // shared path on these classes.
        self.classes.store(classes.as_ptr(), Ordering::Release);
        let mut b = qpw::Builder::<C>::new().nr_cpus(self.nr_cpus);
        if let Some(m) = self.mode.mode() {
            b = b.mode(m);
        }
        let domain = match b.build() {
            Ok(d) => Ok(d),
            Err(e) => {
                sys::write_stderr("qpw-mm: QpwAlloc: ");
                sys::write_stderr(&e.to_string());
                if self.mode == GlobalMode::FromEnv {
                    sys::write_stderr("; using mode queue\n");
                    qpw::Builder::<C>::new()
                        .nr_cpus(self.nr_cpus)
                        .mode(Mode::Queue)
                        .build()
                } else {
                    sys::write_stderr("\n");
                    Err(e)
                }
            }
        };
        match domain {
            Ok(d) => {
                let km = Box::into_raw(Box::new(Kmalloc::from_parts(d, classes, false)));
                // SAFETY: just made; leaked, so it lives for good.
                unsafe { (*km).make_forever() };
                self.km.store(km, Ordering::Release);
                // A `set_decay` that raced with the build: apply the latest.
                // SAFETY: as above.
                unsafe { (*km).set_decay(self.pending_decay()) };
                // SAFETY: as above.
                unsafe { (*km).set_decay_thread(self.decay_thread.load(Ordering::Acquire)) };
                self.state.store(READY, Ordering::Release);
            }
            Err(_) => {
                sys::write_stderr(
                    "qpw-mm: QpwAlloc: no domain; every allocation takes the shared path\n",
                );
                self.state.store(SHARED_ONLY, Ordering::Release);
            }
        }
    }

    /// The classes once mapped, starting the build if nobody has.
    #[cold]
    #[inline(never)]
    fn classes_cold(&self) -> Option<&Classes> {
        loop {
            match self.state.load(Ordering::Acquire) {
                UNINIT => {
                    if self
                        .state
                        .compare_exchange(UNINIT, INIT, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                    {
                        self.init();
                    }
                }
                DEAD => return None,
                _ => {
                    let c = self.classes.load(Ordering::Acquire);
                    if !c.is_null() {
                        // SAFETY: published classes are never unmapped.
                        return Some(unsafe { &*c });
                    }
                    std::hint::spin_loop();
                }
            }
        }
    }

    #[cold]
    #[inline(never)]
    fn alloc_cold(&self, size: usize, align: usize) -> *mut u8 {
        if let Some(k) = self.kmalloc() {
            return k.alloc_local_raw(size, align);
        }
        let Some(cl) = self.classes_cold() else {
            return std::ptr::null_mut();
        };
        if let Some(k) = self.kmalloc() {
            return k.alloc_local_raw(size, align);
        }
        self.early_shared.fetch_add(1, Ordering::Relaxed);
        cl.alloc_shared(size, align)
    }

    #[cold]
    #[inline(never)]
    fn dealloc_cold(&self, p: *mut u8) -> Result<(), FreeError> {
        match self.kmalloc() {
            // SAFETY: the caller of dealloc gives up `p`, allocated here.
            Some(k) => unsafe { k.free_local_raw(p) },
            None => match self.classes_cold() {
                Some(cl) => {
                    self.early_shared.fetch_add(1, Ordering::Relaxed);
                    // SAFETY: as above.
                    unsafe { cl.free_shared(p) }
                }
                None => Err(FreeError::Foreign { ptr: p as usize }),
            },
        }
    }
}

// SAFETY: the GlobalAlloc contract holds:
// - memory handed out is never handed out again while allocated: every
//   object is in exactly one place (slab bitmap, one sheaf, or a user), moves
//   between them only under the slot's QPW exclusion, the depot lock or the
//   hand-off stack's atomics, and debug builds check it on every alloc/free;
// - returned blocks have the layout's size and alignment: class objects are
//   at multiples of the class size inside slab-aligned slabs, and a class is
//   chosen only if its natural alignment covers the layout's; large blocks
//   are mapped at the requested alignment;
// - no unwinding: internal errors abort;
// - the allocator never calls the global allocator while holding any of its
//   own locks or a slot's section, and calls that come back during its
//   start-up or a thread's (un)binding take the shared path, which itself
//   allocates nothing.
unsafe impl<C: Config> GlobalAlloc for QpwAlloc<C> {
    #[inline(always)]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let km = self.km.load(Ordering::Acquire);
        if !km.is_null() {
            // SAFETY: once published, the instance is never freed.
            return unsafe { &*km }.alloc_local_raw(layout.size(), layout.align());
        }
        self.alloc_cold(layout.size(), layout.align())
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: forwarded: the caller gives up `ptr`, allocated here.
        if let Err(e) = unsafe { self.free_checked(ptr) } {
            e.abort("qpw-mm", "QpwAlloc::dealloc");
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if let Some(k) = self.kmalloc() {
            // Large blocks are cleared only when they come from the mapping
            // cache (fresh mappings are zero already).
            return k.alloc_zeroed_local_raw(layout.size(), layout.align());
        }
        // While the instance is built (its own per-slot arrays come here),
        // a large block is a fresh or cleared mapping too: never written
        // twice, so untouched pages stay out of the resident set.
        if let Some(cl) = self.classes_cold() {
            if self.kmalloc().is_none() && cl.class_for(layout.size(), layout.align()).is_none() {
                self.early_shared.fetch_add(1, Ordering::Relaxed);
                return cl.large.alloc(layout.size(), layout.align(), true);
            }
        }
        // SAFETY: forwarded.
        let p = unsafe { self.alloc(layout) };
        if !p.is_null() {
            // SAFETY: `p` has `layout.size()` writable bytes.
            unsafe { std::ptr::write_bytes(p, 0, layout.size()) };
        }
        p
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded from the caller: `ptr` is allocated here with
        // `layout`, and `new_size` rounded to its alignment fits.
        match unsafe { self.realloc_checked(ptr, layout.align(), new_size) } {
            Ok(p) => p,
            Err(e) => e.abort("qpw-mm", "QpwAlloc::realloc"),
        }
    }
}
