//! loom models of the slot protocol (run by `.ci/loom.sh`).
//!
//! `queue` mode's asymmetric fence is modelled as a `SeqCst` fence on both
//! sides (`sync`/`fence::owner_side` on the owner's, `sys::fence_*` on the
//! drainer's): the barrier `membarrier` makes the owner's CPU execute sits
//! between the owner's section-opening store and its load of the claim
//! word. `UnsafeCell` accesses are tracked, so two contexts touching one
//! slot's data at once fail the model (rule 1). The `queue` models assert
//! before any flush of their own, so a lost hand-off is not hidden by one.

use crate::sync::{Arc, Ordering};
use crate::{Config, Domain, Mode, PerCpu, Rt, Standard};
use loom::sync::atomic::AtomicUsize;
use loom::thread;
use std::time::Duration;

const FOREVER: Duration = Duration::from_secs(3600);

fn domain<C: Config>(mode: Mode) -> Domain<C> {
    crate::Builder::<C>::new()
        .mode(mode)
        .nr_cpus(2)
        .flush_timeout(FOREVER)
        .build()
        .unwrap()
}

/// A domain, a counter per slot, and a work on slot 1 that increments the
/// counter through its context and counts its runs.
struct Fixture<C: Config> {
    domain: Domain<C>,
    data: Arc<PerCpu<u64, C>>,
    runs: Arc<AtomicUsize>,
}

impl<C: Config> Fixture<C> {
    fn new(mode: Mode) -> Self {
        let domain = domain::<C>(mode);
        let data = Arc::new(PerCpu::new(&domain, |_| 0u64));
        Self {
            domain,
            data,
            runs: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn work(&self) -> crate::Work<C> {
        let (data, runs) = (self.data.clone(), self.runs.clone());
        self.domain
            .work(1, move |ctx| {
                if let Ok(mut g) = data.lock_ctx(ctx) {
                    *g += 1;
                }
                runs.fetch_add(1, Ordering::SeqCst);
            })
            .unwrap()
    }
}

/// Queue mode, the fence protocol: the owner runs `sections` local
/// sections while a remote thread queues slot 1's work (which claims the
/// slot, fences, waits for the section to close and runs the work on the
/// remote thread). Their accesses never overlap (loom tracks the cell), the
/// work has run once by the time `queue` returns, with no flush to help it.
fn queue_fence_vs_sections(sections: u64) {
    loom::model(move || {
        let f = Fixture::<Standard>::new(Mode::Queue);
        let mut me = f.domain.bind_unpinned(1).unwrap();
        let work = f.work();
        let runs = f.runs.clone();
        let remote = thread::spawn(move || {
            assert!(work.queue());
            assert_eq!(
                runs.load(Ordering::SeqCst),
                1,
                "queue returned, work not run"
            );
        });
        for _ in 0..sections {
            *f.data.lock(&mut me) += 10;
        }
        remote.join().unwrap();
        assert_eq!(f.runs.load(Ordering::SeqCst), 1);
        assert_eq!(*f.data.lock(&mut me), 10 * sections + 1);
        let st = f.domain.stats(1).unwrap();
        assert_eq!(st.works_fenced + st.works_at_section_end, 1, "{st:?}");
    });
}

#[test]
fn loom_queue_fence_vs_one_section() {
    queue_fence_vs_sections(1);
}

#[test]
fn loom_queue_fence_vs_two_sections() {
    queue_fence_vs_sections(2);
}

/// Queue mode: the owner goes offline (and back) while a remote thread
/// queues: the work runs once, by the drainer (fenced, or holding `BUSY`
/// while the owner is offline) or by the owner, never overlapping it.
#[test]
fn loom_queue_fence_vs_offline() {
    loom::model(|| {
        let f = Fixture::<Standard>::new(Mode::Queue);
        let mut me = f.domain.bind_unpinned(1).unwrap();
        let work = f.work();
        let remote = thread::spawn(move || {
            work.queue();
        });
        drop(me.offline());
        *f.data.lock(&mut me) += 10;
        remote.join().unwrap();
        assert_eq!(f.runs.load(Ordering::SeqCst), 1);
        assert_eq!(*f.data.lock(&mut me), 11);
    });
}

/// Where the kernel refuses `membarrier`, a `queue` domain's slots run
/// `remote`, under that reason.
#[test]
fn loom_queue_without_fence_runs_remote() {
    loom::model(|| {
        crate::sys::refuse_fences(true);
        let f = Fixture::<Standard>::new(Mode::Queue);
        let info = f.domain.slot_info(1).unwrap();
        assert_eq!(info.effective, crate::SlotMode::Remote);
        assert_eq!(info.reason, crate::ModeReason::FenceUnavailable);
        let e = crate::Builder::<crate::NoQpw>::new()
            .mode(Mode::Queue)
            .nr_cpus(2)
            .build()
            .unwrap_err();
        assert_eq!(
            e,
            crate::Error::FenceUnavailable {
                errno: crate::sys::EPERM
            }
        );
        let mut me = f.domain.bind_unpinned(1).unwrap();
        let work = f.work();
        let remote = thread::spawn(move || {
            work.queue();
            work.flush().unwrap();
        });
        *f.data.lock(&mut me) += 10;
        remote.join().unwrap();
        assert_eq!(*f.data.lock(&mut me), 11);
        assert_eq!(f.domain.total_stats().fences(), 0);
        crate::sys::refuse_fences(false);
    });
}

/// The owner unbinds while a remote thread queues (and does not flush: no
/// waiter helps). The work runs exactly once anyway: by the owner on its way
/// out, or by the queuer once the slot is free. Then a flush returns at once.
#[test]
fn loom_owner_exit_races_queue() {
    for mode in [Mode::Queue, Mode::Defer] {
        loom::model(move || {
            let f = Fixture::<Standard>::new(mode.clone());
            let work = Arc::new(f.work());
            let me = f.domain.bind_unpinned(1).unwrap();
            let remote = thread::spawn({
                let work = work.clone();
                move || {
                    work.queue();
                }
            });
            drop(me);
            remote.join().unwrap();
            assert_eq!(f.runs.load(Ordering::SeqCst), 1, "work lost or doubled");
            assert!(!work.is_pending());
            assert_eq!(*f.data.remote(1).unwrap(), 1);
        });
    }
}

/// Defer mode: the owner goes offline and comes back while a remote thread
/// queues and flushes. The owner's data access and the work's never overlap
/// (loom tracks the cell), and the work runs once.
#[test]
fn loom_defer_offline_online() {
    loom::model(|| {
        let f = Fixture::<Standard>::new(Mode::Defer);
        let work = Arc::new(f.work());
        let mut me = f.domain.bind_unpinned(1).unwrap();
        let remote = thread::spawn({
            let work = work.clone();
            move || {
                work.queue();
                work.flush().unwrap();
            }
        });
        drop(me.offline());
        *f.data.lock(&mut me) += 10;
        // The flusher may still wait for a quiescent point.
        while f.runs.load(Ordering::SeqCst) == 0 {
            me.quiescent();
            thread::yield_now();
        }
        remote.join().unwrap();
        assert_eq!(f.runs.load(Ordering::SeqCst), 1);
        assert_eq!(*f.data.lock(&mut me), 11);
    });
}

/// Remote mode (and the RT policy): the owner's section and the caller's run
/// both take the cell's spinlock; their accesses never overlap.
fn remote_mode_exclusion<C: Config>() {
    loom::model(|| {
        let f = Fixture::<C>::new(Mode::Remote);
        let work = Arc::new(f.work());
        let mut me = f.domain.bind_unpinned(1).unwrap();
        let remote = thread::spawn({
            let work = work.clone();
            move || {
                work.queue();
                work.flush().unwrap();
            }
        });
        *f.data.lock(&mut me) += 10;
        remote.join().unwrap();
        assert_eq!(*f.data.lock(&mut me), 11);
        assert_eq!(f.domain.total_stats().fences(), 0);
    });
}

#[test]
fn loom_remote_mode_exclusion() {
    remote_mode_exclusion::<Standard>();
}

#[test]
fn loom_rt_remote_mode_exclusion() {
    remote_mode_exclusion::<Rt>();
}

/// A thread binds a free slot while another holds it remotely (`BUSY`): the
/// binder waits, and their accesses never overlap.
#[test]
fn loom_bind_waits_for_remote_holder() {
    loom::model(|| {
        let f = Fixture::<Standard>::new(Mode::Queue);
        let remote = thread::spawn({
            let data = f.data.clone();
            move || {
                if let Ok(mut g) = data.remote(1) {
                    *g += 1;
                }
            }
        });
        let mut me = f.domain.bind_unpinned(1).unwrap();
        *f.data.lock(&mut me) += 10;
        drop(me);
        remote.join().unwrap();
        let v = *f.data.remote(1).unwrap();
        assert!(v == 11 || v == 10, "{v}");
    });
}

/// Two remote threads queue the same work on an absent owner's slot: it is
/// pending at most once, runs once per successful queueing, and both flushes
/// return.
#[test]
fn loom_two_queuers_no_owner() {
    loom::model(|| {
        let f = Fixture::<Standard>::new(Mode::Queue);
        let work = Arc::new(f.work());
        let queued = Arc::new(AtomicUsize::new(0));
        let t: Vec<_> = (0..2)
            .map(|_| {
                let (work, queued) = (work.clone(), queued.clone());
                thread::spawn(move || {
                    if work.queue() {
                        queued.fetch_add(1, Ordering::SeqCst);
                    }
                    work.flush().unwrap();
                })
            })
            .collect();
        for t in t {
            t.join().unwrap();
        }
        let q = queued.load(Ordering::SeqCst);
        assert!(q >= 1);
        assert_eq!(f.runs.load(Ordering::SeqCst), q);
        assert_eq!(*f.data.remote(1).unwrap(), q as u64);
    });
}

/// Item 1 of issue 8: a work never runs concurrently with itself. The owner
/// queues the work on its own slot inside a section (it is pushed and runs
/// at the section's end), drops its handle, while another thread queues
/// and flushes the same work and drops the last handle.
#[test]
fn loom_work_never_runs_twice_at_once() {
    loom::model(|| {
        let f = Fixture::<Standard>::new(Mode::Remote);
        let running = Arc::new(AtomicUsize::new(0));
        let work = Arc::new(
            f.domain
                .work(1, {
                    let (data, runs, running) = (f.data.clone(), f.runs.clone(), running.clone());
                    move |ctx| {
                        assert_eq!(
                            running.fetch_add(1, Ordering::SeqCst),
                            0,
                            "a work ran concurrently with itself"
                        );
                        if let Ok(mut g) = data.lock_ctx(ctx) {
                            *g += 1;
                        }
                        running.fetch_sub(1, Ordering::SeqCst);
                        runs.fetch_add(1, Ordering::SeqCst);
                    }
                })
                .unwrap(),
        );
        let mut me = f.domain.bind_unpinned(1).unwrap();
        let other = thread::spawn({
            let work = work.clone();
            move || {
                work.queue();
                work.flush().unwrap();
            }
        });
        {
            let _g = f.data.lock(&mut me);
            work.queue();
        }
        drop(work);
        other.join().unwrap();
        me.quiescent();
        let runs = f.runs.load(Ordering::SeqCst);
        assert!((1..=2).contains(&runs), "{runs}");
        assert_eq!(*f.data.lock(&mut me), runs as u64);
    });
}

/// Item 3 of issue 8: a drain-all from inside the caller's own local section
/// returns an error at once, in every mode (it would wait on itself).
#[test]
fn loom_drain_all_inside_own_section_fails_at_once() {
    for mode in [Mode::Queue, Mode::Remote, Mode::Defer] {
        loom::model(move || {
            let f = Fixture::<Standard>::new(mode.clone());
            let drain = f.domain.work_all({
                let data = f.data.clone();
                move |ctx| {
                    if let Ok(mut g) = data.lock_ctx(ctx) {
                        *g += 1;
                    }
                }
            });
            let mut me = f.domain.bind_unpinned(1).unwrap();
            let g = f.data.lock(&mut me);
            let r = drain.run();
            drop(g);
            assert_eq!(
                r,
                Err(crate::FlushError::InLocalSection { cpu: 1 }),
                "{mode}: drain-all inside the caller's section"
            );
        });
    }
}

/// Item 3 of issue 8: two `remote` owners each run a drain-all from inside
/// their own section: neither waits on the other forever.
#[test]
fn loom_two_remote_owners_drain_inside_sections() {
    loom::model(|| {
        let f = Fixture::<Standard>::new(Mode::Remote);
        let drain = Arc::new(f.domain.work_all({
            let data = f.data.clone();
            move |ctx| {
                if let Ok(mut g) = data.lock_ctx(ctx) {
                    *g += 1;
                }
            }
        }));
        let other = thread::spawn({
            let (domain, data, drain) = (f.domain.clone(), f.data.clone(), drain.clone());
            move || {
                let mut me = domain.bind_unpinned(0).unwrap();
                let g = data.lock(&mut me);
                let r = drain.run();
                drop(g);
                assert_eq!(r, Err(crate::FlushError::InLocalSection { cpu: 0 }));
            }
        });
        let mut me = f.domain.bind_unpinned(1).unwrap();
        let g = f.data.lock(&mut me);
        let r = drain.run();
        drop(g);
        assert_eq!(r, Err(crate::FlushError::InLocalSection { cpu: 1 }));
        other.join().unwrap();
    });
}

/// The fork gate (liveness fix: a fork child hung on its own cell, copied
/// held by a vanished remote thread). The owner of slot 1 (`remote` mode)
/// closes its gate as the fork `prepare` handler does, while another thread
/// locks the cell through `PerCpu::remote` (`direct`) or queues and flushes
/// the slot's work (run under the cell lock, or left on the owner's stack).
/// Once the wait returns, the cell's lock is free and nobody touches the
/// value until the gate opens again (the "fork instant", where a child
/// would find it); after that the remote thread gets through.
fn fork_gate_keeps_remote_contexts_out(direct: bool) {
    use crate::fork::GateOp;
    use crate::owned::fork_gates;
    use std::time::Instant;
    loom::model(move || {
        let f = Fixture::<Standard>::new(Mode::Remote);
        let mut me = f.domain.bind_unpinned(1).unwrap();
        let remote = if direct {
            let data = f.data.clone();
            thread::spawn(move || {
                *data.remote(1).unwrap() += 1;
            })
        } else {
            let work = f.work();
            thread::spawn(move || {
                assert!(work.queue());
                work.flush().unwrap();
            })
        };
        assert_eq!(fork_gates(GateOp::Close(Instant::now() + FOREVER)), 0);
        f.data.model_unlocked(1, |v| *v += 100);
        fork_gates(GateOp::OpenAndHelp(Instant::now() + FOREVER));
        remote.join().unwrap();
        if !direct {
            assert_eq!(f.runs.load(Ordering::SeqCst), 1);
        }
        assert_eq!(*f.data.lock(&mut me), 101);
    });
}

#[test]
fn loom_fork_gate_vs_remote_lock() {
    fork_gate_keeps_remote_contexts_out(true);
}

#[test]
fn loom_fork_gate_vs_remote_work() {
    fork_gate_keeps_remote_contexts_out(false);
}
