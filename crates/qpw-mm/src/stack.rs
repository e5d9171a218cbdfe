//! The hand-off: a lock-free stack that many contexts push onto and one
//! consumer empties at once.
//!
//! A drain's work function only *pushes* the slot's sheaves here, a
//! compare-and-swap loop: lock-free and allocation-free, so a drain-all
//! takes the depot's mutex once (its caller, afterwards) rather than once
//! per slot. (It was written when `queue` ran works in the owner's signal
//! handler, where taking the mutex could deadlock.) Whoever holds the depot
//! lock next takes the whole stack with one `swap` and files the sheaves.
//!
//! Taking everything at once (never popping one node) rules out ABA: a node
//! that was taken can only come back through another push, which the
//! compare-and-swap sees.

#[cfg(qpw_loom)]
use loom::sync::atomic::AtomicPtr;
#[cfg(not(qpw_loom))]
use std::sync::atomic::AtomicPtr;
use std::sync::atomic::Ordering;

/// A node that can sit on a [`TakeAllStack`]: it has a link field.
pub(crate) trait Link: Sized {
    /// The node's link to the next one.
    fn link(&self) -> &AtomicPtr<Self>;
}

/// An intrusive Treiber stack with push and take-all.
pub(crate) struct TakeAllStack<T: Link> {
    head: AtomicPtr<T>,
}

impl<T: Link> TakeAllStack<T> {
    pub(crate) fn new() -> Self {
        Self {
            head: AtomicPtr::new(std::ptr::null_mut()),
        }
    }

    /// Pushes `node`. Lock-free and async-signal-safe.
    ///
    /// # Safety
    /// `node` must be valid, not on any list, and stay valid until a
    /// [`take_all`](Self::take_all) hands it back.
    pub(crate) unsafe fn push(&self, node: *mut T) {
        let mut h = self.head.load(Ordering::Relaxed);
        loop {
            // SAFETY: the caller gives us `node` exclusively until it is published.
            unsafe { (*node).link().store(h, Ordering::Relaxed) };
            // Release: the node's contents, written before the push, are
            // visible to the thread that takes it (Acquire in `take_all`).
            match self
                .head
                .compare_exchange_weak(h, node, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(now) => h = now,
            }
        }
    }

    /// Whether the stack looks empty (a hint; pushes may be racing).
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.head.load(Ordering::Relaxed).is_null()
    }

    /// Takes every node at once; returns the head of the chain (linked
    /// through [`Link::link`], null-terminated), newest first.
    pub(crate) fn take_all(&self) -> *mut T {
        if self.is_empty() {
            return std::ptr::null_mut();
        }
        self.head.swap(std::ptr::null_mut(), Ordering::Acquire)
    }
}

#[cfg(all(test, qpw_loom))]
mod loom_tests {
    use super::*;
    use loom::cell::UnsafeCell;
    use loom::sync::Arc;

    struct Node {
        next: AtomicPtr<Node>,
        payload: UnsafeCell<u32>,
    }
    impl Link for Node {
        fn link(&self) -> &AtomicPtr<Self> {
            &self.next
        }
    }

    struct Shared(TakeAllStack<Node>);
    // SAFETY: nodes move between threads through the stack; each is owned by
    // one thread at a time (its pusher before the push, the taker after).
    unsafe impl Send for Shared {}
    // SAFETY: as above; all shared access goes through the atomic head.
    unsafe impl Sync for Shared {}

    fn push_new(s: &Shared, v: u32) {
        let n = Box::into_raw(Box::new(Node {
            next: AtomicPtr::new(std::ptr::null_mut()),
            payload: UnsafeCell::new(0),
        }));
        // SAFETY: `n` is fresh and ours until pushed.
        unsafe { (*n).payload.with_mut(|p| *p = v) };
        // SAFETY: `n` is valid, on no list, and freed only by the taker.
        unsafe { s.0.push(n) };
    }

    /// Drains the chain, checking and freeing every node; returns the payload sum.
    fn drain(mut p: *mut Node) -> u32 {
        let mut sum = 0;
        while !p.is_null() {
            // SAFETY: nodes on a taken chain belong to the taker.
            let b = unsafe { Box::from_raw(p) };
            // A racy (unsynchronised) read of the payload would fail the model.
            sum += b.payload.with(|v| unsafe_read(v));
            p = b.next.load(Ordering::Relaxed);
        }
        sum
    }

    fn unsafe_read(v: *const u32) -> u32 {
        // SAFETY: the taker owns the node; loom checks the access is ordered.
        unsafe { *v }
    }

    /// Two pushers (one of them twice, as a handler interrupting a second
    /// drain would) against a taker: every payload is seen exactly once, and
    /// its write is visible to the taker.
    #[test]
    fn loom_push_take_all_conserves() {
        loom::model(|| {
            let s = Arc::new(Shared(TakeAllStack::new()));
            let a = {
                let s = s.clone();
                loom::thread::spawn(move || push_new(&s, 1))
            };
            let b = {
                let s = s.clone();
                loom::thread::spawn(move || {
                    push_new(&s, 10);
                    push_new(&s, 100);
                })
            };
            // Take while the pushers run (yielding lets them in), then after.
            let mut sum = 0;
            for _ in 0..2 {
                loom::thread::yield_now();
                sum += drain(s.0.take_all());
            }
            a.join().unwrap();
            b.join().unwrap();
            sum += drain(s.0.take_all());
            assert_eq!(sum, 111);
        });
    }
}
