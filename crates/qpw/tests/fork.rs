//! fork() from a busy multi-threaded process, in every mode.
//!
//! Two threads own slots and run local sections, queue work and drain in a
//! loop; a third drains every slot in a loop; the main thread owns a slot
//! too and forks 200 times. Each child, where only the forking thread
//! exists: keeps using the main thread's slot (its thread id changed), has
//! a new thread bind a free slot, run a local section, a drain-all and a
//! work on the main thread's slot (in `queue` mode that fences the main
//! thread, under its new id), while the main thread runs a drain-all too. The
//! child exits 0 only if all of that succeeded; the parent waits for it with
//! a time limit and kills it past that (a hang).

use qpw::{Domain, Mode, PerCpu};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// 200, or `QPW_FORKS` (a quick look at a broken build).
fn forks() -> usize {
    std::env::var("QPW_FORKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}
const CHILD_LIMIT: Duration = Duration::from_secs(10);

/// One mode at a time: each test's threads must be the ones the children lose.
static SERIAL: Mutex<()> = Mutex::new(());

// Child exit codes, by what failed.
const OK: i32 = 0;
const BIND: i32 = 10;
const THREAD_DRAIN: i32 = 11;
const THREAD_WORK: i32 = 12;
const MAIN_DRAIN: i32 = 13;
const THREAD_PANIC: i32 = 14;
const NOT_RUN: i32 = 15;
const COUNT: i32 = 16;

fn child(domain: &Domain, data: &Arc<PerCpu<u64>>, me: &mut qpw::Owner) -> i32 {
    // The forking thread keeps its slot: a local section works.
    *data.lock(me) += 1;
    let ran = Arc::new(AtomicBool::new(false));
    let helper = std::thread::spawn({
        let (domain, data, ran) = (domain.clone(), data.clone(), ran.clone());
        move || -> i32 {
            let mut mine = match domain.bind_any() {
                Ok(o) => o,
                Err(_) => return BIND,
            };
            *data.lock(&mut mine) += 1;
            let drain = domain.work_all({
                let data = data.clone();
                move |ctx| {
                    let _ = data.lock_ctx(ctx);
                }
            });
            if drain.run().is_err() {
                return THREAD_DRAIN;
            }
            // A work on the forking thread's slot.
            let work = domain
                .work(0, {
                    let (data, ran) = (data.clone(), ran.clone());
                    move |ctx| {
                        if let Ok(mut g) = data.lock_ctx(ctx) {
                            *g += 1;
                        }
                        ran.store(true, Ordering::SeqCst);
                    }
                })
                .unwrap();
            work.queue();
            if work.flush().is_err() {
                return THREAD_WORK;
            }
            drop(mine);
            OK
        }
    });
    let drain = domain.work_all(|_| {});
    if drain.run().is_err() {
        return MAIN_DRAIN;
    }
    // Quiescent points until the helper is done (defer mode runs its work here).
    let start = Instant::now();
    while !helper.is_finished() && start.elapsed() < CHILD_LIMIT {
        me.quiescent();
        std::thread::yield_now();
    }
    let code = match helper.join() {
        Ok(c) => c,
        Err(_) => return THREAD_PANIC,
    };
    if code != OK {
        return code;
    }
    if !ran.load(Ordering::SeqCst) {
        return NOT_RUN;
    }
    let v = *data.lock(me);
    if v < 2 {
        return COUNT;
    }
    OK
}

#[derive(Debug, Default)]
struct Outcome {
    ok: usize,
    hung: usize,
    crashed: usize,
    failed: Vec<i32>,
}

impl Outcome {
    /// Forks; the child runs `child` and `_exit`s with its code (running
    /// nothing of the parent's). The parent waits for it at most
    /// `CHILD_LIMIT` (then kills it: a hang) and counts how it ended.
    fn fork_child(&mut self, child: impl FnOnce() -> i32) {
        // SAFETY: the caller's `child` does only what a fork child of a
        // multi-threaded process may (qpw, the allocator, threads), and the
        // child leaves with `_exit`.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let code = child();
            // SAFETY: ends the child at once, running nothing of the parent's.
            unsafe { libc::_exit(code) };
        }
        let start = Instant::now();
        let mut status = 0;
        loop {
            // SAFETY: polling our own child.
            let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            if rc == pid {
                if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
                    self.ok += 1;
                } else if libc::WIFEXITED(status) {
                    self.failed.push(libc::WEXITSTATUS(status));
                } else {
                    self.crashed += 1;
                }
                return;
            }
            assert_eq!(rc, 0, "waitpid failed");
            if start.elapsed() > CHILD_LIMIT {
                // SAFETY: killing and reaping our own child.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                    libc::waitpid(pid, &mut status, 0);
                }
                self.hung += 1;
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

fn fork_storm(mode: Mode) -> Option<Outcome> {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let domain: Domain = match Domain::builder()
        .mode(mode)
        .nr_cpus(5)
        .flush_timeout(Duration::from_secs(2))
        .build()
    {
        Ok(d) => d,
        // Built without the `qpw` feature: only `queue` exists.
        Err(qpw::Error::ModeNotCompiled { .. }) => return None,
        Err(e) => panic!("{e}"),
    };
    let data = Arc::new(PerCpu::new(&domain, |_| 0u64));
    let stop = Arc::new(AtomicBool::new(false));
    let loops = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for slot in [1usize, 2] {
        let (domain, data, stop, loops) =
            (domain.clone(), data.clone(), stop.clone(), loops.clone());
        threads.push(std::thread::spawn(move || {
            let mut me = domain.bind_unpinned(slot).unwrap();
            let other = domain
                .work(3 - slot, {
                    let data = data.clone();
                    move |ctx| {
                        if let Ok(mut g) = data.lock_ctx(ctx) {
                            *g += 1;
                        }
                    }
                })
                .unwrap();
            let drain = domain.work_all({
                let data = data.clone();
                move |ctx| {
                    let _ = data.lock_ctx(ctx);
                }
            });
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                *data.lock(&mut me) += 1;
                other.queue();
                me.quiescent();
                if i % 16 == 0 {
                    let _ = me.idle(|| drain.run());
                }
                i += 1;
                loops.fetch_add(1, Ordering::Relaxed);
                // Busy, not flat out: three drainers queueing on the main
                // thread's slot back to back would keep its signal handler
                // running work without end (in any version of qpw).
                std::thread::sleep(Duration::from_micros(50));
            }
        }));
    }
    {
        let (domain, data, stop) = (domain.clone(), data.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let drain = domain.work_all({
                let data = data.clone();
                move |ctx| {
                    let _ = data.lock_ctx(ctx);
                }
            });
            while !stop.load(Ordering::Relaxed) {
                let _ = drain.run();
                std::thread::sleep(Duration::from_micros(200));
            }
        }));
    }
    let mut me = domain.bind_unpinned(0).unwrap();
    let mut out = Outcome::default();
    for _ in 0..forks() {
        *data.lock(&mut me) += 1;
        me.quiescent();
        // The child only uses qpw (whose fork handling is under test), the
        // allocator and thread creation.
        out.fork_child(|| child(&domain, &data, &mut me));
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    assert!(
        loops.load(Ordering::Relaxed) > 0,
        "the owner threads never ran"
    );
    Some(out)
}

fn check(mode: &str) {
    let Some(out) = fork_storm(Mode::parse(mode).unwrap()) else {
        eprintln!("fork storm, mode {mode}: not compiled in");
        return;
    };
    eprintln!("fork storm, mode {mode}: {out:?}");
    assert_eq!(
        (out.ok, out.hung, out.crashed),
        (forks(), 0, 0),
        "mode {mode}: children failed with exit codes {:?}",
        out.failed
    );
}

#[test]
fn fork_storm_queue() {
    check("queue");
}

#[test]
fn fork_storm_remote() {
    check("remote");
}

#[test]
fn fork_storm_defer() {
    check("defer");
}

#[test]
fn fork_storm_auto() {
    check("auto:0,2");
}

/// Item 2 of issue 8: after `fork()` the forking thread keeps its slot with
/// its new thread id. A thread of the child queues work on that slot
/// (`queue` mode: a signal to the owner): it must reach the owner, whose
/// handler runs it, and the slot must stay bound (it was freed under the
/// live owner when the signal to the parent's thread id failed with ESRCH).
#[test]
fn fork_child_keeps_the_forking_threads_slot() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let domain: Domain = Domain::builder()
        .mode(Mode::Queue)
        .nr_cpus(2)
        .flush_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let data = Arc::new(PerCpu::new(&domain, |_| 0u64));
    let mut me = domain.bind_unpinned(0).unwrap();
    *data.lock(&mut me) += 1;
    // SAFETY: the child uses qpw, the allocator and a thread, and `_exit`s.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let code = (|| {
            let done = Arc::new(AtomicBool::new(false));
            let queuer = std::thread::spawn({
                let (domain, data, done) = (domain.clone(), data.clone(), done.clone());
                move || {
                    let work = domain
                        .work(0, {
                            let data = data.clone();
                            move |ctx| {
                                if let Ok(mut g) = data.lock_ctx(ctx) {
                                    *g += 1;
                                }
                            }
                        })
                        .unwrap();
                    work.queue();
                    let r = work.flush();
                    done.store(true, Ordering::SeqCst);
                    r
                }
            });
            // Online, outside any section, not quiescent: only the signal
            // brings the work here.
            let start = Instant::now();
            while !done.load(Ordering::SeqCst) && start.elapsed() < CHILD_LIMIT {
                std::thread::sleep(Duration::from_millis(1));
            }
            if queuer.join().map(|r| r.is_err()).unwrap_or(true) {
                return 20;
            }
            if !domain.is_owned(0).unwrap() {
                return 21; // the live owner's slot was freed
            }
            let s = domain.stats(0).unwrap();
            if s.works_fenced != 1 {
                return 22;
            }
            if *data.lock(&mut me) != 2 {
                return 23;
            }
            0
        })();
        // SAFETY: ends the child at once.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status), "child crashed: {status:#x}");
    assert_eq!(
        libc::WEXITSTATUS(status),
        0,
        "child failed (20: flush failed, 21: slot freed under its owner, 22: not run by the \
         owner's handler, 23: data wrong)"
    );
}

/// `remote` mode: other threads hold the forking thread's own cell (through
/// `PerCpu::remote`, and by running its work under the cell lock) in a loop
/// while the main thread forks. A lock copied held into the child has no
/// thread left to release it: the child's first local section on its own
/// slot would wait forever. Each child must take a local section and exit 0.
#[test]
fn fork_while_remote_threads_hold_the_forking_threads_cell() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let domain: Domain = match Domain::builder()
        .mode(Mode::Remote)
        .nr_cpus(2)
        .flush_timeout(Duration::from_secs(2))
        .build()
    {
        Ok(d) => d,
        Err(qpw::Error::ModeNotCompiled { .. }) => {
            // No remote contexts exist without the `qpw` feature.
            eprintln!("fork gate test: remote mode not compiled in");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let data = Arc::new(PerCpu::new(&domain, |_| 0u64));
    let stop = Arc::new(AtomicBool::new(false));
    let held = Arc::new(AtomicU64::new(0));
    let mut me = domain.bind_unpinned(0).unwrap();
    let mut threads = Vec::new();
    // One thread locks cell 0 directly, another runs cell 0's work remotely.
    for direct in [true, false] {
        let (domain, data, stop, held) = (domain.clone(), data.clone(), stop.clone(), held.clone());
        threads.push(std::thread::spawn(move || {
            let work = domain
                .work(0, {
                    let data = data.clone();
                    move |ctx| {
                        let Ok(mut g) = data.lock_ctx(ctx) else {
                            return;
                        };
                        // Hold the lock a while: a wide window for fork.
                        for _ in 0..20_000 {
                            *g = std::hint::black_box(*g + 1);
                        }
                    }
                })
                .unwrap();
            while !stop.load(Ordering::Relaxed) {
                if direct {
                    if let Ok(mut g) = data.remote(0) {
                        for _ in 0..20_000 {
                            *g = std::hint::black_box(*g + 1);
                        }
                        held.fetch_add(1, Ordering::Relaxed);
                    }
                } else {
                    work.queue();
                    let _ = work.flush();
                    held.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let mut out = Outcome::default();
    for _ in 0..forks() {
        *data.lock(&mut me) += 1;
        // The child only takes a local section.
        out.fork_child(|| {
            *data.lock(&mut me) += 1;
            if domain.is_retired(0).unwrap_or(true) {
                COUNT
            } else {
                OK
            }
        });
        if out.hung > 0 {
            break; // one hang is the failure; do not wait out the others
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    eprintln!("fork while remote threads hold the forking thread's cell: {out:?}");
    assert!(
        held.load(Ordering::Relaxed) > 0,
        "the remote threads never ran"
    );
    assert_eq!(out.hung, 0, "a child hung on its own cell: {out:?}");
    assert_eq!(out.crashed, 0, "{out:?}");
    assert!(out.failed.is_empty(), "{out:?}");
    // The gate was waited out, not given up on at its bound.
    assert_eq!(domain.stats(0).unwrap().fork_waits_expired, 0);
}
