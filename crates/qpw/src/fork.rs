//! `fork()`: qpw's own `pthread_atfork` handling, and hooks for consumers'
//! locks.
//!
//! In the child of a multi-threaded parent only the forking thread exists.
//! Every lock another thread held at the instant of the fork is copied held,
//! and nobody is left to release it. qpw registers one set of
//! `pthread_atfork` handlers (the first time a [`Domain`](crate::Domain) is
//! built or a hook is registered) and runs, around `fork()`:
//!
//! | when | order |
//! |---|---|
//! | before `fork()`, in the forking thread | qpw closes the fork gates of the slots this thread owns and takes its registry lock; then consumer hooks' [`prepare`](ForkHook::prepare), in registration order |
//! | after, in the parent | qpw releases its registry lock; then consumer hooks' [`parent`](ForkHook::parent), in reverse order |
//! | after, in the child | qpw makes every live domain usable (see the crate docs, *fork*); then consumer hooks' [`child`](ForkHook::child), in reverse order |
//!
//! A consumer's `prepare` may still use qpw's per-slot operations (drain
//! its caches, say), and its `child` may use all of qpw again (bind, drain,
//! build a domain), because qpw's own child handling has already run.
//!
//! Lock order: the fork gates, qpw's registry lock, then the hooks' locks
//! (the rules for hook authors are on [`ForkHook`]).

use crate::sync::process::{AtomicBool, Ordering};
use std::cell::UnsafeCell;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

/// A consumer's own fork handling: its locks, taken before `fork()` so that
/// the child gets them in a known state.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// struct Depot(Mutex<Vec<u64>>);
/// // A real hook would hold the depot's lock from `prepare` to
/// // `parent`/`child` (a raw lock, since a guard cannot be kept); this one
/// // only shows the shape.
/// impl qpw::ForkHook for Depot {
///     fn prepare(&self) {}
///     fn parent(&self) {}
///     fn child(&self) {}
/// }
/// let handle = qpw::register_fork_hook(Arc::new(Depot(Mutex::new(Vec::new()))));
/// drop(handle); // unregistered
/// ```
///
/// # Lock order
///
/// qpw's registry lock comes *before* every hook's locks: the forking
/// thread takes it, then runs the hooks' `prepare`. A thread that holds
/// the registry lock (building a [`Domain`](crate::Domain), registering a
/// hook, dropping a [`ForkHookHandle`]) may allocate and free memory, and
/// drops a hook's last `Arc` there; so it may need the locks a hook holds
/// across `fork()` (a hook that holds the global allocator's locks, as
/// qpw-mm's does). The other order deadlocked: the forking thread held the
/// hook's lock and waited for the registry, while the registry's holder
/// waited for the hook's lock. Hence:
///
/// - never build a `Domain`, register a hook or drop a `ForkHookHandle`
///   while holding a lock that your hook's `prepare` takes (that thread
///   would wait for the registry while the forking thread, holding the
///   registry, waits for your lock);
/// - in `prepare`, do none of those three either (this very thread holds
///   the registry lock), nor in `parent` before your locks are released;
///   in `child` you may (only this thread exists);
/// - a hook must not fork, and must not panic (a panic cannot unwind out
///   of a `pthread_atfork` handler: the process aborts).
pub trait ForkHook: Send + Sync + 'static {
    /// Parent, forking thread, before `fork()`, with qpw's registry lock
    /// held: take your locks.
    fn prepare(&self);
    /// Parent, after `fork()`: release them.
    fn parent(&self);
    /// Child (only the forking thread exists): release or reinitialise them.
    fn child(&self);
}

/// Keeps a [`ForkHook`] registered; dropping it unregisters the hook (a
/// `fork()` already under way still runs it to the end).
#[must_use = "dropping the handle unregisters the hook at once; use `leak` to keep it"]
#[derive(Debug)]
pub struct ForkHookHandle {
    id: u64,
}

impl ForkHookHandle {
    /// Keeps the hook registered for the rest of the process's life.
    pub fn leak(self) {
        std::mem::forget(self);
    }
}

impl Drop for ForkHookHandle {
    fn drop(&mut self) {
        let id = self.id;
        with_registry(|r| r.hooks.retain(|(i, _)| *i != id));
    }
}

/// Registers `hook` until the handle is dropped (`ForkHookHandle::leak` keeps it forever).
pub fn register_fork_hook(hook: Arc<dyn ForkHook>) -> ForkHookHandle {
    ensure_handlers();
    with_registry(|r| {
        r.next_hook += 1;
        let id = r.next_hook;
        r.hooks.push((id, hook));
        ForkHookHandle { id }
    })
}

/// What a domain does in the fork child (implemented by the domain layer,
/// which knows its slots; this layer only keeps the list).
#[allow(dead_code)]
pub(crate) trait ForkChild: Send + Sync {
    /// Child, forking thread, before any consumer hook: make the domain usable.
    fn fork_child(&self);
}

/// Remembers a live domain for the child handler. Dead entries are pruned
/// here, so the list stays as long as the live domains.
#[allow(dead_code)] // the domain layer registers its domains from the next commit on
pub(crate) fn register_domain(d: Weak<dyn ForkChild>) {
    ensure_handlers();
    with_registry(|r| {
        r.domains.retain(|w| w.strong_count() > 0);
        r.domains.push(d);
    });
}

struct Registry {
    hooks: Vec<(u64, Arc<dyn ForkHook>)>,
    next_hook: u64,
    domains: Vec<Weak<dyn ForkChild>>,
    /// The hooks a fork under way runs (taken in `prepare`).
    forking: Vec<Arc<dyn ForkHook>>,
}

/// The registry and its lock: a plain flag rather than a `Mutex`, because it
/// is held from `prepare` to `parent`/`child` (across a call boundary no
/// guard can cross) and is reset in the child.
struct Locked {
    held: AtomicBool,
    reg: UnsafeCell<Registry>,
}

// SAFETY: `reg` is only reached through `with_registry` or by the fork
// handlers while `held` is set by this thread, so one thread at a time
// touches it; the hooks and domains it holds are Send + Sync.
unsafe impl Sync for Locked {}

static REGISTRY: Locked = Locked {
    held: AtomicBool::new(false),
    reg: UnsafeCell::new(Registry {
        hooks: Vec::new(),
        next_hook: 0,
        domains: Vec::new(),
        forking: Vec::new(),
    }),
};

fn lock() {
    let mut spins = 0u32;
    while REGISTRY
        .held
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        spins += 1;
        if spins < 64 {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}

fn unlock() {
    REGISTRY.held.store(false, Ordering::Release);
}

fn with_registry<R>(f: impl FnOnce(&mut Registry) -> R) -> R {
    struct Unlock;
    impl Drop for Unlock {
        fn drop(&mut self) {
            unlock();
        }
    }
    lock();
    let _u = Unlock;
    // SAFETY: the registry lock is held until `_u` drops, and `f` cannot
    // reach the registry again (it is private to this module).
    f(unsafe { &mut *REGISTRY.reg.get() })
}

/// Registers the `pthread_atfork` handlers once per process. A thread that
/// loses the race returns at once rather than waiting (a wait could be
/// copied into a fork child with nobody to end it).
fn ensure_handlers() {
    static REGISTERED: AtomicBool = AtomicBool::new(false);
    if REGISTERED.swap(true, Ordering::AcqRel) {
        return;
    }
    // Failure (ENOMEM) leaves fork unhandled, as before this module existed;
    // nothing else depends on it, so it is not an error of the caller's.
    let _ = crate::sys::at_fork(prepare, parent, child);
}

/// What the fork handlers do to the fork gate of each slot the forking
/// thread owns (see `SlotState::fork_close`).
#[derive(Debug, Clone, Copy)]
pub(crate) enum GateOp {
    /// Before `fork()`: close, and wait for remote contexts until then.
    Close(Instant),
    /// Parent: open, and run what was left on the stack (lock waits until then).
    OpenAndHelp(Instant),
    /// Child: open.
    Open,
}

/// Applies a [`GateOp`] to the calling thread's own slots, returning how
/// many waits expired: installed by the layer that keeps each thread's
/// owned-slot list (`owned`, above this one) when a thread first binds.
static OWN_GATES: OnceLock<fn(GateOp) -> usize> = OnceLock::new();

/// Installs [`OWN_GATES`] (once; later calls change nothing).
pub(crate) fn set_own_gates(f: fn(GateOp) -> usize) {
    if OWN_GATES.get().is_none() {
        let _ = OWN_GATES.set(f);
    }
}

fn own_gates(op: GateOp) {
    if let Some(f) = OWN_GATES.get() {
        f(op);
    }
}

/// How long the forking thread waits, per slot it owns, for remote
/// contexts to leave the slot before `fork()` (past it, the wait is counted
/// in the slot's `fork_waits_expired` and the fork goes on).
const FORK_GATE_WAIT: Duration = Duration::from_secs(2);

unsafe extern "C" fn prepare() {
    // First, before the consumer hooks take their locks (a remote context
    // on our slot may be waiting for one of them): close the fork gates of
    // our own slots and wait for the remote contexts on them to leave.
    own_gates(GateOp::Close(Instant::now() + FORK_GATE_WAIT));
    // Then qpw's registry lock, before any hook's lock: the registry's
    // holder may need a hook's lock (it allocates and frees, and a hook may
    // hold the allocator's locks across the fork, as qpw-mm's does), so a
    // hook's lock taken first deadlocked against a thread inside the
    // registry. Nothing under the registry lock waits for anything but the
    // allocator; hooks must not take it themselves (see `ForkHook`).
    lock();
    // SAFETY: the lock is held by this thread until `parent` or `child`.
    let reg = unsafe { &mut *REGISTRY.reg.get() };
    reg.forking = reg.hooks.iter().map(|(_, h)| h.clone()).collect();
    for h in &reg.forking {
        h.prepare();
    }
}

unsafe extern "C" fn parent() {
    // SAFETY: `prepare` took the lock in this thread and still holds it.
    let hooks = std::mem::take(unsafe { &mut (*REGISTRY.reg.get()).forking });
    unlock();
    for h in hooks.iter().rev() {
        h.parent();
    }
    own_gates(GateOp::OpenAndHelp(Instant::now() + FORK_GATE_WAIT));
}

unsafe extern "C" fn child() {
    crate::sys::forget_tid();
    // SAFETY: `prepare` took the lock in the forking thread, which is this
    // thread and the only one the child has; the registry is consistent.
    let reg = unsafe { &mut *REGISTRY.reg.get() };
    let hooks = std::mem::take(&mut reg.forking);
    let domains: Vec<Arc<dyn ForkChild>> = reg.domains.iter().filter_map(|w| w.upgrade()).collect();
    unlock();
    for d in &domains {
        d.fork_child();
    }
    drop(domains);
    for h in hooks.iter().rev() {
        h.child();
    }
    own_gates(GateOp::Open);
}
