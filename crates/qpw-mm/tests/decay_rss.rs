//! Memory goes back by itself: a burst of small objects from two threads,
//! all freed, and without any call by the program to the allocator's API
//! (no `shrink`, no `flush_all`), while it goes on working (a batch of
//! small allocations between looks: the decay runs from the program's own
//! slow paths: the decay thread is switched off here), the resident set falls to within
//! 10% of what an explicit `shrink()` reaches. The deadline only bounds
//! the wait (it polls); the assertion is on the amount of memory, not on
//! speed. One test per binary: the program's global allocator is
//! `QpwAlloc`, default decay delay (1 s). `decay_rss_thread.rs` is the
//! program that stops allocating altogether, with the decay thread (the
//! default).

mod rss;
use qpw_mm::QpwAlloc;
use rss::{assert_back_as_shrink, burst_then_wait};
use std::time::Duration;

#[global_allocator]
static ALLOC: QpwAlloc = QpwAlloc::new();

/// How long the test waits for the decay at most (the default delay is
/// 1 s; the goal is 2 s; this only bounds a hang).
const DEADLINE: Duration = Duration::from_secs(30);

#[test]
fn freed_memory_goes_back_while_the_program_works() {
    ALLOC.set_decay_thread(false);
    let w = burst_then_wait(DEADLINE, || {
        // More objects than a thread's sheaves hold: slow paths.
        let batch: Vec<Box<[u8; 48]>> = (0..4096).map(|i| Box::new([i as u8; 48])).collect();
        drop(std::hint::black_box(batch));
    });
    assert_back_as_shrink(&ALLOC, &w);
}
