//! fork safety: a `kmalloc` instance's fork hook (qpw's [`ForkHook`]).
//!
//! Before `fork()` the forking thread takes every lock of the instance
//! (each class's depot lock, the large-mapping cache's), in the parent and
//! the child it releases them. So the child never finds a lock held by a
//! thread it does not have (the hang this fixes: a child waiting forever in
//! a depot lock taken by another thread of the parent). The locks are
//! [`Lock`](crate::lock::Lock)s, which can be held from one call to another
//! and released in the child; the forking thread may still allocate in
//! between (see there).
//!
//! In the child: the decay thread does not exist (it is started again at
//! the next slow path), and the decay pass state it may have held is reset.
//! Slots of the parent's other threads are qpw's business (its own fork
//! handling retires them, draining their sheaves through the usual drain
//! work). The forking thread keeps its binding and its fast path.
//!
//! What `prepare` costs: it waits for every depot's current critical
//! section (list work, no system call) to end; nobody drains or waits for a
//! thread. The decay pass state is not locked in `prepare` (a pass may wait
//! a flush timeout for a drain); the child resets it instead.

use crate::kmalloc::KShared;
use crate::lock::set_fork_holder;
use qpw::{Config, ForkHook};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Weak;

/// The fork hook of one instance.
pub(crate) struct KForkHook<C: Config> {
    pub(crate) shared: Weak<KShared<C>>,
    /// `prepare` took the locks (the instance was alive).
    held: AtomicBool,
}

impl<C: Config> KForkHook<C> {
    pub(crate) fn new(shared: Weak<KShared<C>>) -> Self {
        Self {
            shared,
            held: AtomicBool::new(false),
        }
    }

    fn release(&self) -> Option<std::sync::Arc<KShared<C>>> {
        if !self.held.swap(false, Ordering::Relaxed) {
            return None;
        }
        let sh = self.shared.upgrade();
        set_fork_holder(false);
        if let Some(sh) = &sh {
            // SAFETY: `prepare` took these locks in this thread (the
            // forking one; in the child, the only one).
            unsafe { sh.classes().unlock_after_fork() };
        }
        sh
    }
}

impl<C: Config> ForkHook for KForkHook<C> {
    fn prepare(&self) {
        if let Some(sh) = self.shared.upgrade() {
            sh.classes().lock_for_fork();
            set_fork_holder(true);
            self.held.store(true, Ordering::Relaxed);
        }
    }

    fn parent(&self) {
        self.release();
    }

    fn child(&self) {
        if let Some(sh) = self.release() {
            // SAFETY: in the child of a fork, before any other thread exists.
            unsafe { sh.decay.after_fork_child() };
        }
    }
}
