//! Helpers shared by the integration tests (each test binary that needs
//! them says `mod common;`): signal masks of the calling thread, and a
//! work that counts its runs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A signal set holding `sig` alone.
pub fn sigset(sig: i32) -> libc::sigset_t {
    // SAFETY: plain libc calls on a local sigset_t, initialised by sigemptyset.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        set
    }
}

/// Blocks (or unblocks) `sig` in the calling thread.
pub fn set_blocked(sig: i32, block: bool) {
    let set = sigset(sig);
    let how = if block {
        libc::SIG_BLOCK
    } else {
        libc::SIG_UNBLOCK
    };
    // SAFETY: `set` is an initialised sigset_t; a null old set is allowed.
    let rc = unsafe { libc::pthread_sigmask(how, &set, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "pthread_sigmask");
}

/// A work on `slot` of `domain` that counts its runs in the returned counter.
#[allow(dead_code)] // not every test binary that has `mod common` uses it
pub fn counted_work<C: qpw::Config>(
    domain: &qpw::Domain<C>,
    slot: usize,
) -> (qpw::Work<C>, Arc<AtomicU64>) {
    let ran = Arc::new(AtomicU64::new(0));
    let w = {
        let ran = ran.clone();
        domain
            .work(slot, move |_| {
                ran.fetch_add(1, Ordering::SeqCst);
            })
            .expect("work")
    };
    (w, ran)
}
