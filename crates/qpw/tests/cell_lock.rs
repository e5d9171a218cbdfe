//! The cell lock (issue 9, parts 2 and 3): exclusion under stress in every
//! mode, the owner's kernel (priority-inheritance) path when a remote holder
//! is descheduled, no lost wake-up, and `try_lock`/`try_remote` never wait.
#![cfg(feature = "qpw")]

use qpw::{Config, Domain, Error, Mode, PerCpu, Rt, Standard};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// Data whose two halves must always be equal outside a holder.
#[derive(Default)]
struct Pair {
    a: u64,
    b: u64,
}

impl Pair {
    /// Bumps both halves with a yield between: an overlapping holder sees
    /// them differ.
    fn bump(&mut self) {
        assert_eq!(self.a, self.b, "two holders at once");
        self.a += 1;
        std::thread::yield_now();
        self.b += 1;
    }
}

fn domain<C: Config>(mode: Mode) -> Domain<C> {
    qpw::Builder::new()
        .mode(mode)
        .nr_cpus(2)
        .flush_timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Runs `f` on a thread, failing (not hanging) if it has not finished in 60 s.
fn bounded<R: Send + 'static>(what: &str, f: impl FnOnce() -> R + Send + 'static) -> R {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("{what}: did not finish in 60 s (a lost wake-up?)"))
}

/// An owner bumps its slot's pair in local sections while two other threads
/// drain it (work under whatever lock the mode uses) and, where the mode
/// lets them, lock it directly: the halves never differ, and every bump is
/// counted once.
fn exclusion<C: Config>(mode: Mode) {
    const ROUNDS: u64 = 3000;
    let d = domain::<C>(mode);
    let data = Arc::new(PerCpu::new(&d, |_| Pair::default()));
    let direct = Arc::new(AtomicU64::new(0));
    let drain = Arc::new(d.work_all({
        let data = data.clone();
        move |ctx| {
            if let Ok(mut g) = data.lock_ctx(ctx) {
                g.bump()
            }
        }
    }));
    let bound = Arc::new(Barrier::new(3));
    let stop = Arc::new(AtomicBool::new(false));
    let owner = std::thread::spawn({
        let (d, data, bound, stop) = (d.clone(), data.clone(), bound.clone(), stop.clone());
        move || {
            let mut me = d.bind_unpinned(1).unwrap();
            bound.wait();
            for i in 0..ROUNDS {
                let done = i % 2 == 1
                    && match data.try_lock(&mut me) {
                        Some(mut g) => {
                            g.bump();
                            true
                        }
                        None => false,
                    };
                if !done {
                    data.lock(&mut me).bump();
                }
            }
            stop.store(true, Ordering::SeqCst);
        }
    });
    let others: Vec<_> = (0..2)
        .map(|k| {
            let (data, drain, bound, stop, direct) = (
                data.clone(),
                drain.clone(),
                bound.clone(),
                stop.clone(),
                direct.clone(),
            );
            std::thread::spawn(move || {
                if k == 0 {
                    bound.wait();
                }
                while !stop.load(Ordering::SeqCst) {
                    if k == 0 {
                        drain.run().unwrap();
                    } else {
                        let g = if direct.load(Ordering::Relaxed) % 2 == 0 {
                            data.remote(1)
                        } else {
                            data.try_remote(1)
                        };
                        match g {
                            Ok(mut g) => {
                                g.bump();
                                direct.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(Error::OwnerOnline { .. }) | Err(Error::WouldBlock { .. }) => {
                                direct.fetch_add(1, Ordering::Relaxed);
                                std::thread::yield_now();
                            }
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
            })
        })
        .collect();
    // The third party of the barrier: the direct locker starts at once.
    bound.wait();
    owner.join().unwrap();
    for t in others {
        t.join().unwrap();
    }
    drain.run().unwrap();
    let p = data.remote(1).unwrap();
    assert_eq!(p.a, p.b);
    assert!(p.a >= ROUNDS, "{} bumps, owner made {ROUNDS}", p.a);
}

#[test]
fn exclusion_under_stress_in_every_mode() {
    bounded("exclusion", || {
        for mode in [
            Mode::Queue,
            Mode::Remote,
            Mode::Defer,
            Mode::Auto(Some(vec![1])),
        ] {
            exclusion::<Standard>(mode.clone());
            exclusion::<Rt>(mode);
        }
    });
}

/// Sets the calling thread `SCHED_FIFO` at `prio`; `false` if not permitted.
fn try_fifo(prio: i32) -> bool {
    let p = libc::sched_param {
        sched_priority: prio,
    };
    // SAFETY: a valid sched_param; pid 0 is the calling thread.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &p) == 0 }
}

/// The calling thread's current (possibly boosted) priority, field 18 of
/// `/proc/thread-self/stat`: `-1 - rt_priority` for a real-time priority,
/// `20 + nice` otherwise.
fn my_prio() -> i64 {
    let s = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    // Fields after the command name, which ends at the last ')'.
    let rest = &s[s.rfind(')').unwrap() + 2..];
    rest.split(' ').nth(15).unwrap().parse().unwrap()
}

/// A remote thread holds the owner's cell and is descheduled (it sleeps)
/// while a `SCHED_FIFO` owner asks for the cell: the owner waits in the
/// kernel (counted in `owner_waits_pi`), which boosts the holder to the
/// owner's priority, and gets the cell when the holder lets go.
#[test]
fn a_fifo_owner_waits_in_the_kernel_and_boosts_a_descheduled_holder() {
    if std::thread::spawn(|| try_fifo(10)).join().unwrap() {
        bounded("pi", || pi_path(Some(10)));
    } else {
        eprintln!(
            "skipped the SCHED_FIFO part: this process may not use SCHED_FIFO \
             (run as root or with CAP_SYS_NICE); checking the kernel path with a SCHED_OTHER owner"
        );
        bounded("pi", || pi_path(None));
    }
}

fn pi_path(fifo: Option<i32>) {
    let d = domain::<Standard>(Mode::Remote);
    let data = Arc::new(PerCpu::new(&d, |_| 0u64));
    let (held_tx, held_rx) = mpsc::channel();
    let asked = Arc::new(AtomicBool::new(false));
    let holder = std::thread::spawn({
        let (d, data, asked) = (d.clone(), data.clone(), asked.clone());
        move || {
            let mut g = data.remote(1).unwrap();
            *g = 7;
            held_tx.send(()).unwrap();
            // Descheduled while holding, until the owner waits in the kernel
            // (bounded: 10 s), then the priority it runs at.
            let start = Instant::now();
            while d.stats(1).unwrap().owner_waits_pi == 0 && start.elapsed().as_secs() < 10 {
                std::thread::sleep(Duration::from_millis(1));
            }
            asked.store(true, Ordering::SeqCst);
            // The boost follows the owner into the kernel: look until it shows.
            let mut prio = my_prio();
            while fifo.is_some() && prio >= 0 && start.elapsed().as_secs() < 10 {
                std::thread::sleep(Duration::from_millis(1));
                prio = my_prio();
            }
            std::thread::sleep(Duration::from_millis(20));
            drop(g);
            prio
        }
    });
    held_rx.recv().unwrap();
    let owner = std::thread::spawn({
        let (d, data) = (d.clone(), data.clone());
        move || {
            let mut me = d.bind_unpinned(1).unwrap();
            if let Some(p) = fifo {
                assert!(try_fifo(p));
            }
            let v = *data.lock(&mut me);
            v
        }
    });
    let holder_prio = holder.join().unwrap();
    let seen = owner.join().unwrap();
    assert!(asked.load(Ordering::SeqCst));
    assert_eq!(seen, 7, "the owner saw the holder's write");
    let st = d.stats(1).unwrap();
    assert_eq!(st.owner_waits_pi, 1, "{st:?}");
    assert_eq!(st.owner_pi_unavailable, 0, "{st:?}");
    if let Some(p) = fifo {
        assert_eq!(
            holder_prio,
            -1 - i64::from(p),
            "the holder ran at priority {holder_prio} while the SCHED_FIFO {p} owner waited: not boosted"
        );
    }
}

/// A remote thread takes and lets go of the cell in a tight loop while the
/// owner does the same: every wait ends (no lost wake-up), and every
/// increment is there.
#[test]
fn no_lost_wake_up_between_owner_and_remote_holders() {
    const N: u64 = 20_000;
    bounded("wake-up", || {
        let d = domain::<Rt>(Mode::Remote);
        let data = Arc::new(PerCpu::new(&d, |_| 0u64));
        let go = Arc::new(Barrier::new(3));
        let remotes: Vec<_> = (0..2)
            .map(|_| {
                let (data, go) = (data.clone(), go.clone());
                std::thread::spawn(move || {
                    go.wait();
                    for i in 0..N {
                        let mut g = data.remote(1).unwrap();
                        *g += 1;
                        if i % 64 == 0 {
                            // Now and then a holder is descheduled holding.
                            std::thread::sleep(Duration::from_micros(50));
                        }
                    }
                })
            })
            .collect();
        let mut me = d.bind_unpinned(1).unwrap();
        go.wait();
        for _ in 0..N {
            *data.lock(&mut me) += 1;
        }
        for r in remotes {
            r.join().unwrap();
        }
        assert_eq!(*data.lock(&mut me), 3 * N);
    });
}

/// `try_lock` and `try_remote` return at once when another thread holds the
/// cell (or the slot), and succeed once it is free.
#[test]
fn try_lock_and_try_remote_never_wait() {
    bounded("try", || {
        for rt in [false, true] {
            if rt {
                try_calls::<Rt>();
            } else {
                try_calls::<Standard>();
            }
        }
        // Queue mode: an online owner's slot is refused as before; a slot
        // taken by another remote thread gives WouldBlock, not a wait.
        let d = domain::<Standard>(Mode::Queue);
        let data = Arc::new(PerCpu::new(&d, |_| 0u64));
        let g = data.remote(0).unwrap();
        let (tx, rx) = mpsc::channel();
        let t = std::thread::spawn({
            let data = data.clone();
            move || {
                let r = data.try_remote(0).map(|_| ());
                tx.send(r).unwrap();
            }
        });
        assert_eq!(rx.recv().unwrap(), Err(Error::WouldBlock { cpu: 0 }));
        t.join().unwrap();
        drop(g);
        assert!(data.try_remote(0).is_ok());
        let owner = std::thread::spawn({
            let (d, data) = (d.clone(), data.clone());
            move || {
                let _me = d.bind_unpinned(1).unwrap();
                data.try_remote(1).map(|_| ())
            }
        });
        assert_eq!(owner.join().unwrap(), Err(Error::OwnerOnline { cpu: 1 }));
    });
}

fn try_calls<C: Config>() {
    let d = domain::<C>(Mode::Remote);
    let data = Arc::new(PerCpu::new(&d, |_| 0u64));
    // A remote thread holds the cell until told to let go.
    let (held_tx, held_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let holder = std::thread::spawn({
        let data = data.clone();
        move || {
            let mut g = data.remote(1).unwrap();
            *g += 1;
            held_tx.send(()).unwrap();
            release_rx.recv().unwrap();
        }
    });
    held_rx.recv().unwrap();
    let mut me = d.bind_unpinned(1).unwrap();
    assert!(data.try_lock(&mut me).is_none(), "try_lock got a held cell");
    let r = std::thread::scope(|s| s.spawn(|| data.try_remote(1).map(|_| ())).join().unwrap());
    assert_eq!(r, Err(Error::WouldBlock { cpu: 1 }));
    // The owner itself is refused at once: its sections would wait on it.
    assert!(matches!(data.try_remote(1), Err(Error::OwnSlot { cpu: 1 })));
    release_tx.send(()).unwrap();
    holder.join().unwrap();
    // Free now: both succeed, and see the holder's write.
    assert_eq!(*data.try_lock(&mut me).expect("a free cell"), 1);
    // The owner holds it: another thread's try_remote is refused at once.
    let g = data.lock(&mut me);
    let r = std::thread::scope(|s| s.spawn(|| data.try_remote(1).map(|_| ())).join().unwrap());
    assert_eq!(r, Err(Error::WouldBlock { cpu: 1 }));
    drop(g);
    let v = std::thread::scope(|s| s.spawn(|| *data.try_remote(1).unwrap()).join().unwrap());
    assert_eq!(v, 1);
    assert_eq!(d.stats(1).unwrap().owner_waits_pi, 0, "nothing ever waited");
}
