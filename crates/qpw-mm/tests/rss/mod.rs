//! The resident set of this test process, for the tests that measure
//! memory going back to the OS (`shrink_rss.rs`, `decay_rss.rs`).

/// Resident bytes of this process now (`/proc/self/statm`).
pub fn rss_bytes() -> usize {
    let s = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: usize = s
        .split_whitespace()
        .nth(1)
        .expect("resident field")
        .parse()
        .expect("a number");
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    pages * page
}
