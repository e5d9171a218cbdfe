//! fork while other threads allocate: every child allocates and exits.
//!
//! Two threads allocate and free (small, mid-size and large objects) while
//! the main thread forks 200 times; each child allocates a few MB through
//! the same allocator and exits. A child that has not exited within its time
//! limit is killed and counted as hung (before the fork hooks, 8 to 11 of
//! 200 hung in a futex wait on a depot lock held by a thread that does not
//! exist in the child). One test per binary: the program's global allocator
//! is `QpwAlloc`.

use qpw_mm::QpwAlloc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: QpwAlloc = QpwAlloc::new();

const FORKS: usize = 200;
/// A child gets this long to allocate its few MB and exit (it needs
/// milliseconds; the limit only separates hangs from slow machines).
const CHILD_LIMIT: Duration = Duration::from_secs(5);

fn churn(stop: &AtomicBool, seed: usize) {
    let mut i = seed as u64;
    let mut small: Vec<Box<[u8]>> = Vec::with_capacity(4096);
    let mut big: Vec<Vec<u8>> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        i = i
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        // Batches of small objects, bigger than a sheaf: every batch takes
        // the depot's lock many times.
        for k in 0..2000 {
            small.push(vec![k as u8; 16 + (i >> 40) as usize % 1000].into_boxed_slice());
        }
        small.clear();
        let size = match (i >> 33) % 4 {
            0 | 1 => 4096 + (i >> 40) as usize % (70 << 10),
            _ => (300 << 10) + (i >> 40) as usize % (600 << 10),
        };
        big.push(vec![i as u8; size]);
        if big.len() > 16 {
            big.swap_remove((i >> 20) as usize % big.len());
        }
    }
}

/// In the child: allocate a few MB of mixed sizes, check them, exit.
fn child() -> ! {
    let mut v: Vec<Vec<u8>> = Vec::new();
    let mut total = 0usize;
    let mut n = 0usize;
    while total < (4 << 20) {
        let size = [24usize, 100, 700, 5000, 20_000, 70_000, 400_000][n % 7];
        v.push(vec![n as u8; size]);
        total += size;
        n += 1;
    }
    let ok = v
        .iter()
        .enumerate()
        .all(|(i, b)| b.iter().all(|&x| x == i as u8));
    drop(v);
    // SAFETY: _exit ends the child without running the parent's atexit work.
    unsafe { libc::_exit(if ok { 0 } else { 3 }) }
}

#[test]
fn forking_while_threads_allocate_never_hangs_a_child() {
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..2)
        .map(|t| {
            let stop = stop.clone();
            std::thread::spawn(move || churn(&stop, t + 1))
        })
        .collect();
    let mut hung = 0usize;
    let mut crashed = Vec::new();
    for _ in 0..FORKS {
        // Some allocation in the forking thread too, so it is bound.
        let warm = vec![1u8; 3000];
        // SAFETY: fork has no preconditions; the child only allocates
        // through this process's allocator and calls _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            child();
        }
        drop(warm);
        let start = Instant::now();
        let mut status = 0;
        loop {
            // SAFETY: `pid` is our child; `status` is writable.
            let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            if r == pid {
                let clean = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
                if !clean {
                    crashed.push(status);
                }
                break;
            }
            assert_eq!(r, 0, "waitpid failed");
            if start.elapsed() > CHILD_LIMIT {
                hung += 1;
                // SAFETY: killing and reaping our own child.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                    libc::waitpid(pid, &mut status, 0);
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(
        (hung, crashed.len()),
        (0, 0),
        "of {FORKS} children, {hung} hung and these exited badly (wait status): {crashed:?}"
    );
}
