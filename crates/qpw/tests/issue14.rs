//! Issue 14: no code of ours or the user's in a signal handler. Each test is
//! a program a user would write; each must finish (bounded waits, no hang)
//! and keep its data. Before the change `queue` mode ran work functions in
//! the owner's signal handler: the first program hung in glibc's `free`
//! (the handler freed a closure while the interrupted owner held the arena
//! lock), the second hung on the `Mutex` the interrupted owner held, and
//! the third saw `EINTR` from `poll`.

use qpw::{Config, Domain, Mode, PerCpu, Standard};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::Duration;

/// Far beyond what any of these programs needs; a hang fails the test.
const BOUND: Duration = Duration::from_secs(120);

fn modes() -> Vec<Mode> {
    if Standard::QPW {
        vec![Mode::Queue, Mode::Remote, Mode::Defer]
    } else {
        vec![Mode::Queue]
    }
}

/// Runs `f` on a thread and waits for it at most [`BOUND`].
fn bounded<R: Send + 'static>(what: &str, f: impl FnOnce() -> R + Send + 'static) -> R {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(BOUND)
        .unwrap_or_else(|_| panic!("{what}: did not finish within {BOUND:?} (hung)"))
}

/// Item 1: fire-and-forget works (`queue(); drop(work)`) whose closures
/// capture buffers the owner allocated, while the owner allocates and
/// frees in a loop: 10,000 works, all run, no hang.
#[test]
fn fire_and_forget_works_with_an_allocating_owner() {
    const WORKS: u64 = 10_000;
    for mode in modes() {
        let done = bounded("fire and forget", move || {
            let domain: Domain = Domain::builder()
                .mode(mode.clone())
                .nr_cpus(2)
                .build()
                .unwrap();
            let ran = Arc::new(AtomicU64::new(0));
            let stop = Arc::new(AtomicBool::new(false));
            let (buf_tx, buf_rx) = mpsc::sync_channel::<Vec<u8>>(64);
            let owner = thread::spawn({
                let (domain, stop) = (domain.clone(), stop.clone());
                move || {
                    let mut me = domain.bind_unpinned(1).unwrap();
                    let mut keep: Vec<Vec<u8>> = Vec::new();
                    let mut i = 0usize;
                    while !stop.load(Ordering::Relaxed) {
                        // Allocate and free all the time.
                        keep.push(vec![i as u8; 64 + i % 512]);
                        if keep.len() > 32 {
                            keep.drain(..16);
                        }
                        if i % 8 == 0 {
                            let _ = buf_tx.try_send(vec![1u8; 256 + i % 1024]);
                        }
                        me.quiescent();
                        i += 1;
                    }
                }
            });
            for _ in 0..WORKS {
                let buf = buf_rx.recv().unwrap();
                let ran = ran.clone();
                let w = domain
                    .work(1, move |_| {
                        ran.fetch_add(buf.len().min(1) as u64, Ordering::Relaxed);
                    })
                    .unwrap();
                w.queue();
                drop(w); // fire and forget: the slot's stack keeps it alive
            }
            // Whatever is still queued runs at the owner's next quiescent
            // point (defer) or has run already (queue, remote).
            let last = domain.work(1, |_| {}).unwrap();
            last.queue();
            last.flush().unwrap();
            stop.store(true, Ordering::Relaxed);
            owner.join().unwrap();
            ran.load(Ordering::Relaxed)
        });
        assert_eq!(done, WORKS, "every fire-and-forget work ran once");
    }
}

/// Item 2: the obvious hand-written flush: per-CPU batches that owners
/// spill into a global `Mutex<Vec<u64>>` when full, drained into the same
/// mutex by `work_all` from another thread. Correct in every mode.
#[test]
fn hand_written_mutex_flush_is_correct_in_every_mode() {
    const OWNERS: usize = 4;
    const PER_OWNER: u64 = 50_000;
    for mode in modes() {
        let (global, expected) = bounded("mutex flush", move || {
            let domain: Domain = Domain::builder()
                .mode(mode.clone())
                .nr_cpus(OWNERS)
                .build()
                .unwrap();
            let batches = Arc::new(PerCpu::new(&domain, |_| Vec::<u64>::new()));
            let global = Arc::new(Mutex::new(Vec::<u64>::new()));
            let drain = domain.work_all({
                let (batches, global) = (batches.clone(), global.clone());
                move |ctx| {
                    let Ok(mut b) = batches.lock_ctx(ctx) else {
                        return;
                    };
                    global.lock().unwrap().append(&mut b);
                }
            });
            let stop = Arc::new(AtomicBool::new(false));
            let owners: Vec<_> = (0..OWNERS)
                .map(|cpu| {
                    let (domain, batches, global) =
                        (domain.clone(), batches.clone(), global.clone());
                    thread::spawn(move || {
                        let mut me = domain.bind_unpinned(cpu).unwrap();
                        for i in 0..PER_OWNER {
                            let full = {
                                let mut b = batches.lock(&mut me);
                                b.push(cpu as u64 * PER_OWNER + i);
                                (b.len() >= 4).then(|| std::mem::take(&mut *b))
                            };
                            // Spill under the global lock, after the section.
                            if let Some(mut full) = full {
                                let mut g = global.lock().unwrap();
                                g.append(&mut full);
                                // Some work under the lock (a real program
                                // would index or log here).
                                for _ in 0..500 {
                                    std::hint::spin_loop();
                                }
                            }
                            me.quiescent();
                        }
                    })
                })
                .collect();
            let drainer = thread::spawn({
                let stop = stop.clone();
                move || {
                    while !stop.load(Ordering::Relaxed) {
                        drain.run().expect("drain-all");
                    }
                    drain
                }
            });
            for o in owners {
                o.join().unwrap();
            }
            stop.store(true, Ordering::Relaxed);
            let drain = drainer.join().unwrap();
            drain.run().expect("final drain-all");
            let mut all = global.lock().unwrap().clone();
            all.sort_unstable();
            (all, (0..OWNERS as u64 * PER_OWNER).collect::<Vec<_>>())
        });
        assert_eq!(global.len(), expected.len(), "items lost or doubled");
        assert_eq!(global, expected);
    }
}

/// Item 3: an owner blocked in `poll()` while another thread drains its
/// slot many times: `poll` is never interrupted (`EINTR`), in every mode.
#[test]
fn owner_in_poll_sees_no_eintr() {
    for mode in modes() {
        let (eintr, polls) = bounded("poll", move || {
            let domain: Domain = Domain::builder()
                .mode(mode.clone())
                .nr_cpus(2)
                .build()
                .unwrap();
            let counts = Arc::new(PerCpu::new(&domain, |_| 0u64));
            let drain = domain.work_all({
                let counts = counts.clone();
                move |ctx| {
                    if let Ok(mut g) = counts.lock_ctx(ctx) {
                        *g = 0;
                    }
                }
            });
            let stop = Arc::new(AtomicBool::new(false));
            let owner = thread::spawn({
                let (domain, counts, stop) = (domain.clone(), counts.clone(), stop.clone());
                move || {
                    let mut me = domain.bind_unpinned(1).unwrap();
                    let mut fds = [0i32; 2];
                    // SAFETY: `fds` has room for the two descriptors.
                    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
                    let (mut eintr, mut polls) = (0u64, 0u64);
                    while !stop.load(Ordering::Relaxed) {
                        *counts.lock(&mut me) += 1;
                        me.quiescent();
                        let mut p = libc::pollfd {
                            fd: fds[0],
                            events: libc::POLLIN,
                            revents: 0,
                        };
                        // SAFETY: one valid pollfd; nothing is ever written
                        // to the pipe, so this waits the full 20 ms.
                        let rc = unsafe { libc::poll(&mut p, 1, 20) };
                        if rc < 0
                            && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
                        {
                            eintr += 1;
                        }
                        polls += 1;
                    }
                    // SAFETY: closing the two descriptors opened above.
                    unsafe {
                        libc::close(fds[0]);
                        libc::close(fds[1]);
                    }
                    (eintr, polls)
                }
            });
            for _ in 0..200 {
                // `defer` drains wait for the owner's quiescent point; a
                // bounded flush that times out is fine here.
                let _ = drain.run();
                thread::sleep(Duration::from_millis(2));
            }
            stop.store(true, Ordering::Relaxed);
            owner.join().unwrap()
        });
        assert!(polls > 0);
        assert_eq!(eintr, 0, "poll returned EINTR {eintr} times in {polls}");
    }
}

/// A `remote` domain whose slot 1 cell is held by another thread until the
/// test lets it go, with a 200 ms flush timeout.
#[cfg(feature = "qpw")]
struct Held {
    domain: Domain,
    data: Arc<PerCpu<u64>>,
    release: mpsc::Sender<()>,
    holder: thread::JoinHandle<()>,
}

#[cfg(feature = "qpw")]
impl Held {
    fn new() -> Self {
        let domain: Domain = Domain::builder()
            .mode(Mode::Remote)
            .nr_cpus(2)
            .flush_timeout(Duration::from_millis(200))
            .build()
            .unwrap();
        let data = Arc::new(PerCpu::new(&domain, |_| 0u64));
        let (held_tx, held_rx) = mpsc::channel();
        let (release, release_rx) = mpsc::channel::<()>();
        let holder = thread::spawn({
            let data = data.clone();
            move || {
                let g = data.remote(1).unwrap();
                held_tx.send(()).unwrap();
                let _ = release_rx.recv_timeout(BOUND);
                drop(g);
            }
        });
        held_rx.recv().unwrap();
        Self {
            domain,
            data,
            release,
            holder,
        }
    }

    fn release(self) {
        self.release.send(()).unwrap();
        self.holder.join().unwrap();
    }
}

/// Item 7: a drain-all whose remote lock wait reaches its deadline returns
/// `LockTimeout` while the cell is still held (it does not loop re-running
/// the work until the holder lets go), with one timeout counted.
#[cfg(feature = "qpw")]
#[test]
fn lock_timeout_ends_the_drain_while_the_cell_is_held() {
    let h = Held::new();
    let drain = h.domain.work_all({
        let data = h.data.clone();
        move |ctx| {
            if let Ok(mut g) = data.lock_ctx(ctx) {
                *g += 1;
            }
        }
    });
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || tx.send(drain.run()).unwrap());
    let r = rx
        .recv_timeout(BOUND)
        .expect("the drain-all did not return while the cell was held");
    assert_eq!(
        r,
        Err(qpw::FlushError::LockTimeout {
            cpu: 1,
            waited_ms: 200
        })
    );
    assert_eq!(h.domain.stats(1).unwrap().lock_timeouts, 1);
    h.release();
}

/// Item 6: the timeout is an `Err` the work sees, never an unwind: a
/// `Mutex` the work holds is not poisoned, a work that catches unwinds
/// cannot swallow it (the flush still reports it), a two-step work cut at
/// its second lock does not run its first step twice, and the next drain
/// after the holder let go succeeds.
#[cfg(feature = "qpw")]
#[test]
fn lock_timeout_is_an_error_the_work_returns() {
    let h = Held::new();
    let first_steps = Arc::new(Mutex::new(0u64));
    let work = h
        .domain
        .work(1, {
            let (data, first_steps) = (h.data.clone(), first_steps.clone());
            move |ctx| {
                let mut steps = first_steps.lock().unwrap();
                *steps += 1; // step one, under a Mutex
                             // Step two; a catch_unwind around it changes nothing.
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    data.lock_ctx(ctx).map(|mut g| *g += 1).is_ok()
                }));
                assert!(matches!(r, Ok(false) | Ok(true)));
            }
        })
        .unwrap();
    assert!(work.queue());
    assert!(matches!(
        work.flush(),
        Err(qpw::FlushError::LockTimeout { cpu: 1, .. })
    ));
    assert!(
        !first_steps.is_poisoned(),
        "the timeout unwound through the work"
    );
    assert_eq!(*first_steps.lock().unwrap(), 1, "step one ran twice");
    assert!(!work.is_pending(), "the timed-out run is over");
    let data = h.data.clone();
    h.release();
    assert!(work.queue());
    assert_eq!(work.flush(), Ok(()));
    assert_eq!(*first_steps.lock().unwrap(), 2);
    assert_eq!(*data.remote(1).unwrap(), 1);
}

/// The child side of [`with_local_in_a_tls_destructor_is_an_error`]: a
/// thread whose own thread-local's destructor calls `with_local` after
/// qpw's per-thread table is gone (thread-locals are destroyed in reverse
/// order of first use, so the table, used second, goes first).
fn tls_destructor_child() {
    struct CallsWithLocal(Domain);
    impl Drop for CallsWithLocal {
        fn drop(&mut self) {
            let r = self.0.with_local(|me| me.slot());
            println!("with_local in a TLS destructor: {r:?}");
        }
    }
    thread_local! {
        static LATE: std::cell::RefCell<Option<CallsWithLocal>> =
            const { std::cell::RefCell::new(None) };
    }
    let domain: Domain = Domain::builder().nr_cpus(2).build().unwrap();
    thread::spawn(move || {
        LATE.with(|l| *l.borrow_mut() = Some(CallsWithLocal(domain.clone())));
        domain.with_local(|_| ()).unwrap();
    })
    .join()
    .unwrap();
}

/// Item 10: `with_local` called from a thread-local destructor returns an
/// error; it does not panic inside the destructor (which aborts the
/// process: "thread local panicked on drop"). Run in a child process, since
/// the failure is an abort.
#[test]
fn with_local_in_a_tls_destructor_is_an_error() {
    const NAME: &str = "with_local_in_a_tls_destructor_is_an_error";
    if std::env::var_os("QPW_ISSUE14_CHILD").is_some() {
        tls_destructor_child();
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", NAME, "--nocapture", "--test-threads=1"])
        .env("QPW_ISSUE14_CHILD", "1")
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "child: {:?}\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("with_local in a TLS destructor: Err(ThreadExiting)"),
        "{stdout}\n{stderr}"
    );
}

/// Item 8: an owner that takes a `RemoteGuard` on its own slot and then
/// opens a local section would wait on itself (the kernel answers its
/// `FUTEX_LOCK_PI` with `EDEADLK`, which was read as "no PI support", and it
/// spun for ever). Now the `RemoteGuard` is refused at once, naming the
/// slot, and the section goes on.
#[cfg(feature = "qpw")]
#[test]
fn owner_cannot_hold_its_own_slot_remotely() {
    let got = bounded("own RemoteGuard", || {
        let domain: Domain = Domain::builder()
            .mode(Mode::Remote)
            .nr_cpus(2)
            .build()
            .unwrap();
        let data = PerCpu::new(&domain, |_| 0u64);
        let mut me = domain.bind_unpinned(0).unwrap();
        let g = data.remote(0);
        let t = data.try_remote(0).map(|_| ()).err();
        *data.lock(&mut me) += 1;
        (g.map(|_| ()).err(), t)
    });
    assert_eq!(
        got,
        (
            Some(qpw::Error::OwnSlot { cpu: 0 }),
            Some(qpw::Error::OwnSlot { cpu: 0 })
        )
    );
}
