//! fork safety: the fork hook (qpw's [`ForkHook`]) of a `kmalloc` instance
//! or a `KmemCache`.
//!
//! Before `fork()` the forking thread takes every lock of the instance
//! (each class's depot lock, the large-mapping cache's; a cache's depot
//! lock), in the parent and the child it releases them. So the child never finds a lock held by a
//! thread it does not have (the hang this fixes: a child waiting forever in
//! a depot lock taken by another thread of the parent). The locks are
//! [`Lock`](crate::lock::Lock)s, which can be held from one call to another
//! and released in the child; the forking thread may still allocate in
//! between (see there).
//!
//! In the child: a decay pass or the decay thread of another
//! thread does not exist (an asked-for thread is started again at the next
//! slow path), and the decay pass state it may have held is reset.
//! Slots of the parent's other threads are qpw's business (its own fork
//! handling retires them, draining their sheaves through the usual drain
//! work). The forking thread keeps its binding and its fast path.
//!
//! What `prepare` costs: it waits for every depot's current critical
//! section (list work, no system call) to end; nobody drains or waits for a
//! thread. The decay pass state is not locked in `prepare` (a pass may wait
//! a flush timeout for a drain); the child resets it instead.

use crate::lock::set_fork_holder;
use qpw::ForkHook;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

/// What an instance does around `fork`.
pub(crate) trait ForkLocks: Send + Sync + 'static {
    /// Takes every lock (in a fixed order).
    fn lock_for_fork(&self);
    /// Releases them.
    ///
    /// # Safety
    /// After [`lock_for_fork`](Self::lock_for_fork), by the forking thread.
    unsafe fn unlock_after_fork(&self);
    /// In the child, after the locks are released.
    ///
    /// # Safety
    /// Only in a fork child, before any other thread exists.
    unsafe fn child(&self) {}
}

/// The fork hook of one instance (held weakly: the instance may go away
/// while the hook is registered; dropping its handle unregisters it).
pub(crate) struct LockHook<T: ForkLocks> {
    target: Weak<T>,
    /// `prepare` took the locks (the instance was alive).
    held: AtomicBool,
}

impl<T: ForkLocks> LockHook<T> {
    /// Registers a hook for `target` until the handle drops.
    pub(crate) fn register(target: &Arc<T>) -> qpw::ForkHookHandle {
        qpw::register_fork_hook(Arc::new(Self {
            target: Arc::downgrade(target),
            held: AtomicBool::new(false),
        }))
    }

    fn release(&self) -> Option<Arc<T>> {
        if !self.held.swap(false, Ordering::Relaxed) {
            return None;
        }
        let t = self.target.upgrade();
        set_fork_holder(false);
        if let Some(t) = &t {
            // SAFETY: `prepare` took these locks in this thread (the
            // forking one; in the child, the only one).
            unsafe { t.unlock_after_fork() };
        }
        t
    }
}

impl<T: ForkLocks> ForkHook for LockHook<T> {
    fn prepare(&self) {
        if let Some(t) = self.target.upgrade() {
            t.lock_for_fork();
            set_fork_holder(true);
            self.held.store(true, Ordering::Relaxed);
        }
    }

    fn parent(&self) {
        self.release();
    }

    fn child(&self) {
        if let Some(t) = self.release() {
            // SAFETY: in the child of a fork, before any other thread exists.
            unsafe { t.child() };
        }
    }
}
