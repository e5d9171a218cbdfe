//! Helpers shared by the integration tests (each test binary that needs
//! them says `mod common;`): signal masks of the calling thread, and a
//! work that counts its runs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Blocks every signal in the calling thread (as programs that leave
/// signals to one `sigwait` thread do).
#[allow(dead_code)] // not every test binary that has `mod common` uses it
pub fn block_every_signal() {
    // SAFETY: plain libc calls on a local sigset_t, filled by sigfillset; a
    // null old set is allowed.
    let rc = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, std::ptr::null_mut())
    };
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
