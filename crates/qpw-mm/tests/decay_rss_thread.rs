//! Memory goes back by itself from a program that stops allocating: the
//! burst of `decay_rss.rs`, all freed, then the program only sleeps and
//! reads its resident set; with the default options (the decay thread on),
//! the resident set falls to within 10% of what an explicit `shrink()`
//! reaches. (Without the thread, `set_decay_thread(false)`, such a program
//! keeps its free memory cached until its next slow path.) The deadline
//! only bounds the wait; the assertion is on the amount of memory.

mod rss;
use qpw_mm::QpwAlloc;
use rss::{assert_back_as_shrink, burst_then_wait};
use std::time::Duration;

#[global_allocator]
static ALLOC: QpwAlloc = QpwAlloc::new();

const DEADLINE: Duration = Duration::from_secs(30);

#[test]
fn freed_memory_goes_back_from_an_idle_program_by_default() {
    let w = burst_then_wait(DEADLINE, || {});
    assert_back_as_shrink(&ALLOC, &w);
}
