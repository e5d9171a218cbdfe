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

const MIB: usize = 1 << 20;

/// What [`burst_then_wait`] saw, in bytes.
#[allow(dead_code)] // each test binary uses part of this
pub struct Waited {
    pub base: usize,
    pub peak: usize,
    /// RSS when the wait ended.
    pub now: usize,
    pub waited: std::time::Duration,
}

/// A burst of 2 x 110 MiB of 100-byte objects from two threads, all freed;
/// then polls the resident set (running `between` before each look) until
/// it is back within 10% (+2 MiB) of where it started, or `deadline` (a
/// bound on a hang only: the callers assert amounts, never speed).
#[allow(dead_code)]
pub fn burst_then_wait(deadline: std::time::Duration, mut between: impl FnMut()) -> Waited {
    const PER_THREAD: usize = 110 * MIB / 100;
    let base = rss_bytes();
    let burst: Vec<Vec<Box<[u8; 100]>>> = (0..2)
        .map(|t| {
            std::thread::spawn(move || {
                (0..PER_THREAD)
                    .map(|i| Box::new([(i + t) as u8; 100]))
                    .collect::<Vec<_>>()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    let peak = rss_bytes();
    assert!(
        peak >= base + 200 * MIB,
        "the burst did not grow RSS: {base} -> {peak}"
    );
    assert!(burst.iter().all(|v| v.len() == PER_THREAD));
    drop(burst);
    let freed_at = std::time::Instant::now();
    let goal = base + base / 10 + 2 * MIB;
    let mut now = rss_bytes();
    while now > goal && freed_at.elapsed() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
        between();
        now = rss_bytes();
    }
    Waited {
        base,
        peak,
        now,
        waited: freed_at.elapsed(),
    }
}

/// Asserts that the wait ended within 10% (+2 MiB) of what an explicit
/// `shrink()` (made now) reaches, and that a decay pass ran.
#[allow(dead_code)]
pub fn assert_back_as_shrink(alloc: &qpw_mm::QpwAlloc, w: &Waited) {
    alloc.shrink().unwrap();
    let shrunk = rss_bytes();
    let stats = alloc.stats().unwrap();
    eprintln!(
        "base {} MiB, peak {} MiB, {} MiB after {:?} without a call, {} MiB after shrink()",
        w.base / MIB,
        w.peak / MIB,
        w.now / MIB,
        w.waited,
        shrunk / MIB
    );
    assert!(
        w.now <= shrunk + shrunk / 10 + 2 * MIB,
        "RSS {} MiB {:?} after freeing everything; shrink() reaches {} MiB\n{stats}",
        w.now / MIB,
        w.waited,
        shrunk / MIB
    );
    assert!(stats.decay_passes > 0, "no decay pass ran\n{stats}");
}
