//! Time in TSC ticks ("cycles" in every table: this machine's TSC is constant
//! and invariant, and hardware cycle counters are not available here).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Reads the time-stamp counter.
#[inline(always)]
pub fn now() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: RDTSC has no preconditions on x86_64 user mode.
        unsafe { core::arch::x86_64::_rdtsc() }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        static START: OnceLock<Instant> = OnceLock::new();
        START.get_or_init(Instant::now).elapsed().as_nanos() as u64
    }
}

/// TSC ticks per second, measured once against the monotonic clock (50 ms).
pub fn hz() -> f64 {
    static HZ: OnceLock<f64> = OnceLock::new();
    *HZ.get_or_init(|| {
        let t0 = Instant::now();
        let c0 = now();
        while t0.elapsed() < Duration::from_millis(50) {
            std::hint::spin_loop();
        }
        let c1 = now();
        (c1 - c0) as f64 / t0.elapsed().as_secs_f64()
    })
}

/// Converts ticks to nanoseconds.
pub fn to_ns(ticks: u64) -> f64 {
    ticks as f64 * 1e9 / hz()
}

/// Converts nanoseconds to ticks.
pub fn from_ns(ns: f64) -> u64 {
    (ns * hz() / 1e9) as u64
}
