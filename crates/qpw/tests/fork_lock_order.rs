//! The lock order of `fork()`'s prepare step: qpw's registry lock first,
//! then the consumer hooks' locks.
//!
//! A hook's lock can be one the registry's holder needs: a hook that holds
//! the global allocator's locks across `fork()` (as qpw-mm's does for its
//! depots) while another thread, inside qpw's registry lock, allocates or
//! frees (a `Vec` push when a domain is built, the last `Arc` of a hook
//! dropped with its handle). With the hooks' locks taken first and the
//! registry lock after, the forking thread held the allocator's lock and
//! waited for the registry lock while the other thread held the registry
//! lock and waited for the allocator's lock: `fork()` deadlocked.
//!
//! Here the "allocator lock" is a spin flag that this binary's global
//! allocator takes around every call made by the thread that drops hook
//! handles; a hook takes it in `prepare` (and holds it a millisecond, to
//! widen the window) and releases it in `parent`/`child`. The main thread
//! watches the forking thread's progress and fails the test if it stops.

#![cfg(target_os = "linux")]

use qpw::{register_fork_hook, ForkHook};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// The "allocator lock".
static ALLOC_LOCK: AtomicBool = AtomicBool::new(false);

fn lock_alloc() {
    while ALLOC_LOCK
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        std::hint::spin_loop();
        thread::yield_now();
    }
}

fn unlock_alloc() {
    ALLOC_LOCK.store(false, Ordering::Release);
}

thread_local! {
    /// This thread's allocations take `ALLOC_LOCK`.
    static TAKES_LOCK: Cell<bool> = const { Cell::new(false) };
}

fn takes_lock() -> bool {
    TAKES_LOCK.try_with(|t| t.get()).unwrap_or(false)
}

struct LockingAlloc;

// SAFETY: forwards to `System`; the lock only serialises the calls.
unsafe impl GlobalAlloc for LockingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !takes_lock() {
            // SAFETY: the caller's contract, forwarded.
            return unsafe { System.alloc(layout) };
        }
        lock_alloc();
        // SAFETY: the caller's contract, forwarded.
        let p = unsafe { System.alloc(layout) };
        unlock_alloc();
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if !takes_lock() {
            // SAFETY: the caller's contract, forwarded.
            return unsafe { System.dealloc(ptr, layout) };
        }
        lock_alloc();
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.dealloc(ptr, layout) };
        unlock_alloc();
    }
}

#[global_allocator]
static GLOBAL: LockingAlloc = LockingAlloc;

/// Holds the "allocator lock" across `fork()`, as qpw-mm's hook holds its
/// depot locks.
struct AllocatorHook;

impl ForkHook for AllocatorHook {
    fn prepare(&self) {
        lock_alloc();
        // Widen the window between this lock and qpw's (a sleep allocates nothing).
        thread::sleep(Duration::from_millis(1));
    }
    fn parent(&self) {
        unlock_alloc();
    }
    fn child(&self) {
        unlock_alloc();
    }
}

/// A hook whose last reference is dropped inside qpw's registry lock when
/// its handle goes; it lingers there a little before its memory is freed.
struct Lingering;

impl ForkHook for Lingering {
    fn prepare(&self) {}
    fn parent(&self) {}
    fn child(&self) {}
}

impl Drop for Lingering {
    fn drop(&mut self) {
        thread::sleep(Duration::from_micros(500));
    }
}

const FORKS: u64 = 200;
/// No fork for this long: the forking thread is stuck.
const STUCK: Duration = Duration::from_secs(10);

/// Before the fix: `fork deadlocked: the forking thread made no progress
/// for 10s after 1 of 200 forks (its hook holds the allocator lock, the
/// handle-dropping thread holds qpw's registry lock)`.
#[test]
fn fork_prepare_takes_the_registry_lock_before_the_hooks_locks() {
    register_fork_hook(Arc::new(AllocatorHook)).leak();
    let stop = Arc::new(AtomicBool::new(false));
    let forked = Arc::new(AtomicU64::new(0));
    let dropper = {
        let stop = stop.clone();
        thread::spawn(move || {
            TAKES_LOCK.with(|t| t.set(true));
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let hook: Arc<dyn ForkHook> = Arc::new(Lingering);
                // Out of the registry a while (its lock is a spin lock: a
                // thread re-taking it at once could starve the forking one),
                // with nothing left to allocate or free but inside it: the
                // hook, registered after the forking thread listed the
                // hooks, has its last reference dropped in the registry.
                thread::sleep(Duration::from_micros(200));
                drop(register_fork_hook(hook));
                n += 1;
            }
            TAKES_LOCK.with(|t| t.set(false));
            n
        })
    };
    let forker = {
        let forked = forked.clone();
        thread::spawn(move || {
            for _ in 0..FORKS {
                // SAFETY: the child calls only `_exit`.
                let pid = unsafe { libc::fork() };
                assert!(pid >= 0, "fork failed");
                if pid == 0 {
                    // SAFETY: ends the child at once, async-signal-safe.
                    unsafe { libc::_exit(0) };
                }
                let mut status = 0;
                // SAFETY: waits for our own child.
                let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
                assert_eq!(rc, pid);
                assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
                forked.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let mut last = (0, Instant::now());
    while !forker.is_finished() {
        thread::sleep(Duration::from_millis(20));
        let now = forked.load(Ordering::SeqCst);
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > STUCK {
            panic!(
                "fork deadlocked: the forking thread made no progress for {STUCK:?} after \
                 {now} of {FORKS} forks (its hook holds the allocator lock, the \
                 handle-dropping thread holds qpw's registry lock)"
            );
        }
    }
    forker.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    let dropped = dropper.join().unwrap();
    assert_eq!(forked.load(Ordering::SeqCst), FORKS);
    assert!(dropped > 0, "the dropping thread never ran");
}
