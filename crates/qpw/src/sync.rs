//! The one shim for atomics and interior mutability.
//!
//! Every atomic, `Arc` and `UnsafeCell` that takes part in a cross-thread
//! protocol comes from here, so that under `--cfg qpw_loom` the loom model
//! checker sees every access.

#[cfg(qpw_loom)]
pub(crate) use loom::sync::atomic::fence;
#[cfg(qpw_loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64};
#[cfg(qpw_loom)]
pub(crate) use loom::sync::Arc;

#[cfg(not(qpw_loom))]
pub(crate) use std::sync::atomic::fence;
#[cfg(not(qpw_loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64};
#[cfg(not(qpw_loom))]
pub(crate) use std::sync::Arc;

pub(crate) use std::sync::atomic::Ordering;

/// Atomics of process-global state that no model explores (the fork
/// registry): always the real ones, since a
/// `static` cannot hold a loom atomic.
pub(crate) mod process {
    pub(crate) use std::sync::atomic::{AtomicBool, Ordering};
}

/// Hint for spin loops (a `loom::thread::yield_now` under loom, so models
/// with spinning terminate).
#[inline(always)]
pub(crate) fn spin_hint() {
    #[cfg(not(qpw_loom))]
    std::hint::spin_loop();
    #[cfg(qpw_loom)]
    loom::thread::yield_now();
}

/// Gives the CPU away while waiting.
#[inline]
pub(crate) fn yield_now() {
    #[cfg(not(qpw_loom))]
    std::thread::yield_now();
    #[cfg(qpw_loom)]
    loom::thread::yield_now();
}

/// An `UnsafeCell` whose accesses loom can track.
#[derive(Debug)]
pub(crate) struct UnsafeCell<T>(
    #[cfg(not(qpw_loom))] core::cell::UnsafeCell<T>,
    #[cfg(qpw_loom)] loom::cell::UnsafeCell<T>,
);

impl<T> UnsafeCell<T> {
    pub(crate) fn new(value: T) -> Self {
        #[cfg(not(qpw_loom))]
        return Self(core::cell::UnsafeCell::new(value));
        #[cfg(qpw_loom)]
        return Self(loom::cell::UnsafeCell::new(value));
    }

    /// A tracked pointer to the contents; see [`MutPtr::deref`].
    #[inline(always)]
    pub(crate) fn get_mut_ptr(&self) -> MutPtr<T> {
        #[cfg(not(qpw_loom))]
        return MutPtr(self.0.get());
        #[cfg(qpw_loom)]
        return MutPtr(self.0.get_mut());
    }

    pub(crate) fn get_mut(&mut self) -> &mut T {
        #[cfg(not(qpw_loom))]
        return self.0.get_mut();
        #[cfg(qpw_loom)]
        // SAFETY: `&mut self` proves no other access exists.
        return self.0.get_mut().with(|p| unsafe { &mut *p });
    }
}

/// A pointer into an [`UnsafeCell`] that loom treats as a live mutable access.
#[derive(Debug)]
pub(crate) struct MutPtr<T>(
    #[cfg(not(qpw_loom))] *mut T,
    #[cfg(qpw_loom)] loom::cell::MutPtr<T>,
);

impl<T> MutPtr<T> {
    /// # Safety
    /// The caller must hold exclusive access to the cell for as long as the
    /// returned reference lives (the slot protocol gives it).
    #[inline(always)]
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn deref(&self) -> &mut T {
        #[cfg(not(qpw_loom))]
        // SAFETY: forwarded to the caller: access is exclusive while the reference lives.
        return unsafe { &mut *self.0 };
        #[cfg(qpw_loom)]
        // SAFETY: forwarded to the caller, and loom checks it.
        return unsafe { self.0.deref() };
    }
}
