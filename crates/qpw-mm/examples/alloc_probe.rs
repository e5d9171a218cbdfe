//! A small release probe of the global allocator (not a benchmark suite:
//! qpw-bench has that). Two workloads, chosen by the first argument:
//!
//! - `mid [SECONDS]`: 2 threads pinned to CPU 0 allocate and free 16 KiB and
//!   64 KiB `Vec<u8>` buffers (touching each), while a third thread pinned
//!   to CPU 1 spins without allocating (so the process's address space is
//!   live on CPU 1, as with an isolated worker); prints ops/s, minor faults
//!   (`getrusage`), the `TLB`/`CAL`/`RES` interrupts CPU 1 received
//!   meanwhile (`/proc/interrupts`, system-wide: other processes' count
//!   too) and the spinner's loop rate.
//! - `burst [MB]`: 2 threads allocate MB/2 each of 100-byte objects, all
//!   freed; prints RSS right after, then every 250 ms for 3 s with no call
//!   into the allocator, then after `shrink()`.
//!
//! The allocator is `QpwAlloc`, or glibc's with `PROBE_ALLOC=system` (read
//! once, without allocating, at the first allocation).
//!
//! ```text
//! cargo run --release -p qpw-mm --example alloc_probe -- mid 3
//! ```

use qpw_mm::QpwAlloc;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

static QPW: QpwAlloc = QpwAlloc::new();

/// QpwAlloc, or System when `PROBE_ALLOC=system`.
struct Switch(AtomicU8);

impl Switch {
    fn system(&self) -> bool {
        match self.0.load(Ordering::Relaxed) {
            1 => false,
            2 => true,
            _ => {
                // SAFETY: getenv with a NUL-terminated name; it does not allocate.
                let v = unsafe { libc::getenv(c"PROBE_ALLOC".as_ptr()) };
                // SAFETY: a non-null getenv result is a NUL-terminated string.
                let sys =
                    !v.is_null() && unsafe { std::ffi::CStr::from_ptr(v) }.to_bytes() == b"system";
                self.0.store(if sys { 2 } else { 1 }, Ordering::Relaxed);
                sys
            }
        }
    }
}

// SAFETY: forwards every call to one allocator, chosen once for the process.
unsafe impl GlobalAlloc for Switch {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarded.
        unsafe {
            if self.system() {
                System.alloc(l)
            } else {
                QPW.alloc(l)
            }
        }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: forwarded to the allocator that made `p`.
        unsafe {
            if self.system() {
                System.dealloc(p, l)
            } else {
                QPW.dealloc(p, l)
            }
        }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarded.
        unsafe {
            if self.system() {
                System.alloc_zeroed(l)
            } else {
                QPW.alloc_zeroed(l)
            }
        }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        // SAFETY: forwarded to the allocator that made `p`.
        unsafe {
            if self.system() {
                System.realloc(p, l, n)
            } else {
                QPW.realloc(p, l, n)
            }
        }
    }
}

#[global_allocator]
static ALLOC: Switch = Switch(AtomicU8::new(0));

fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn minflt() -> i64 {
    // SAFETY: `ru` is writable.
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru.ru_minflt
    }
}

/// Per-CPU counts of the `/proc/interrupts` line `name`.
fn irqs(name: &str) -> Vec<u64> {
    let s = std::fs::read_to_string("/proc/interrupts").unwrap_or_default();
    s.lines()
        .find(|l| l.trim_start().starts_with(&format!("{name}:")))
        .map(|l| {
            l.split_whitespace()
                .skip(1)
                .map_while(|w| w.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn rss_mib() -> f64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: f64 = s.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096.0 / (1 << 20) as f64
}

fn mid(secs: u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let names = ["TLB", "CAL", "RES"];
    let before: Vec<Vec<u64>> = names.iter().map(|n| irqs(n)).collect();
    let spins = Arc::new(AtomicU64::new(0));
    let spinner = {
        let (stop, spins) = (stop.clone(), spins.clone());
        std::thread::spawn(move || {
            pin(1);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..1000 {
                    n = std::hint::black_box(n + 1);
                }
            }
            spins.store(n, Ordering::Relaxed);
        })
    };
    let f0 = minflt();
    let start = Instant::now();
    let hs: Vec<_> = (0..2)
        .map(|t| {
            let (stop, ops) = (stop.clone(), ops.clone());
            std::thread::spawn(move || {
                pin(0);
                let mut n = 0u64;
                let mut keep: Vec<Vec<u8>> = Vec::with_capacity(4);
                while !stop.load(Ordering::Relaxed) {
                    for size in [16 << 10, 64 << 10] {
                        let mut v = Vec::<u8>::with_capacity(size);
                        v.push(t as u8);
                        // Touch a byte per page, as a user of the buffer would.
                        // SAFETY: within capacity; the bytes are not read.
                        unsafe {
                            for off in (0..size).step_by(4096) {
                                v.as_mut_ptr().add(off).write(n as u8);
                            }
                        }
                        keep.push(v);
                        if keep.len() == 4 {
                            keep.clear();
                        }
                        n += 1;
                    }
                }
                ops.fetch_add(n, Ordering::Relaxed);
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    for h in hs {
        h.join().unwrap();
    }
    spinner.join().unwrap();
    let el = start.elapsed().as_secs_f64();
    let f1 = minflt();
    let after: Vec<Vec<u64>> = names.iter().map(|n| irqs(n)).collect();
    let d = |i: usize| {
        let a = after[i].get(1).copied().unwrap_or(0);
        let b = before[i].get(1).copied().unwrap_or(0);
        a.saturating_sub(b)
    };
    println!(
        "mid: {:.0} K ops/s  minor faults {}  CPU1 interrupts: TLB {} CAL {} RES {}  spinner {:.0} M loops/s  ({:.1} s)",
        ops.load(Ordering::Relaxed) as f64 / el / 1000.0,
        f1 - f0,
        d(0),
        d(1),
        d(2),
        spins.load(Ordering::Relaxed) as f64 / el / 1e6,
        el
    );
}

fn burst(mb: usize) {
    let per = mb * (1 << 20) / 2 / 100;
    let base = rss_mib();
    let v: Vec<Vec<Box<[u8; 100]>>> = (0..2)
        .map(|t| {
            std::thread::spawn(move || (0..per).map(|i| Box::new([(i + t) as u8; 100])).collect())
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    let peak = rss_mib();
    drop(v);
    let t0 = Instant::now();
    let mut line = format!("burst {mb} MB: base {base:.1} MiB, peak {peak:.1} MiB, after free:");
    for _ in 0..=12 {
        let at = t0.elapsed().as_secs_f64();
        line += &format!(" {at:.2}s={:.1}", rss_mib());
        std::thread::sleep(Duration::from_millis(250));
    }
    let _ = QPW.shrink();
    line += &format!("; after shrink() {:.1} MiB", rss_mib());
    println!("{line}");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let what = args.get(1).map(String::as_str).unwrap_or("mid");
    let n: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(0);
    match what {
        "mid" => mid(if n == 0 { 3 } else { n }),
        "burst" => burst(if n == 0 { 500 } else { n as usize }),
        other => {
            eprintln!("alloc_probe: unknown workload {other:?} (mid or burst)");
            std::process::exit(2);
        }
    }
}
