//! loom models of the slot protocol (run by `.ci/loom.sh`).
//!
//! The signal handler runs on the owner's thread, between two of its
//! instructions, so it is modelled as a call the owner's loom thread makes at
//! a chosen point (each model loops over every point), not as a thread of its
//! own: loom then explores every interleaving of the owner (with its handler)
//! against the remote threads. `UnsafeCell` accesses are tracked, so two
//! contexts touching one slot's data at once fail the model (rule 1).

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
        crate::sys::reset_signals();
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
                *data.lock_ctx(ctx) += 1;
                runs.fetch_add(1, Ordering::SeqCst);
            })
            .unwrap()
    }

    /// The owner's thread takes a signal here (the handler walks its list).
    fn signal(&self) {
        crate::handler::handle_signal();
    }

    /// Another thread queues slot 1's work and flushes it, while this
    /// thread (the slot's owner) yields `quiet` times without taking a
    /// signal, then takes signals at signal points until the flush is done.
    fn flush_from_another_thread(&self, quiet: usize) {
        let work = self.work();
        let done = Arc::new(loom::sync::atomic::AtomicBool::new(false));
        let remote = thread::spawn({
            let done = done.clone();
            move || {
                work.queue();
                work.flush().unwrap();
                done.store(true, Ordering::SeqCst);
            }
        });
        for _ in 0..quiet {
            thread::yield_now();
        }
        while !done.load(Ordering::SeqCst) {
            crate::handler::signal_point();
            thread::yield_now();
        }
        remote.join().unwrap();
    }
}

/// Queue mode: the owner does a local section while a remote thread queues
/// and flushes; the handler lands at point `at` of the owner's code. The work
/// runs once, never inside the section, and the flush returns.
fn queue_signal_at(at: usize) {
    loom::model(move || {
        let f = Fixture::<Standard>::new(Mode::Queue);
        let mut me = f.domain.bind_unpinned(1).unwrap();
        let work = Arc::new(f.work());
        let remote = thread::spawn({
            let work = work.clone();
            move || {
                work.queue();
            }
        });
        if at == 0 {
            f.signal();
        }
        {
            let mut g = f.data.lock(&mut me);
            if at == 1 {
                f.signal(); // inside the section: must leave the work alone
            }
            *g += 10;
        }
        if at == 2 {
            f.signal();
        }
        remote.join().unwrap();
        // The signal the remote thread sent is delivered by now at the latest.
        f.signal();
        work.flush().unwrap();
        assert_eq!(f.runs.load(Ordering::SeqCst), 1);
        assert_eq!(*f.data.lock(&mut me), 11);
    });
}

#[test]
fn loom_queue_signal_before_section() {
    queue_signal_at(0);
}

#[test]
fn loom_queue_signal_inside_section() {
    queue_signal_at(1);
}

#[test]
fn loom_queue_signal_after_section() {
    queue_signal_at(2);
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
        assert_eq!(f.domain.total_stats().signals_sent, 0);
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
                        *data.lock_ctx(ctx) += 1;
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
                move |ctx| *data.lock_ctx(ctx) += 1
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
            move |ctx| *data.lock_ctx(ctx) += 1
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

/// Item 4 of issue 8: `tgkill` fails with `EAGAIN` (the signal queue is
/// full): the flusher sends again and the owner runs the work; the flush
/// does not cost the whole bound.
#[test]
fn loom_signal_send_fails_with_eagain() {
    loom::model(|| {
        let f = Fixture::<Standard>::new(Mode::Queue);
        let me = f.domain.bind_unpinned(1).unwrap();
        crate::sys::fail_next_signals(1, crate::sys::EAGAIN);
        f.flush_from_another_thread(0);
        assert_eq!(f.runs.load(Ordering::SeqCst), 1);
        drop(me);
    });
}

/// A flusher that waits long with the signal not yet taken by the owner
/// (loom: every resend look counts as long) sends it again only when the
/// kernel shows it neither pending nor blocked: the model's `tgkill` counts
/// sends to a thread that still has the signal pending. The owner takes no
/// signal for its first yields, so the flusher looks while it is pending.
///
/// Before the fix (a signal in flight was "lost" after 100 ms, whatever the
/// kernel held): "a signal was sent again while still pending: 1".
#[test]
fn loom_pending_signal_is_not_sent_again() {
    loom::model(|| {
        let f = Fixture::<Standard>::new(Mode::Queue);
        let me = f.domain.bind_unpinned(1).unwrap();
        f.flush_from_another_thread(12);
        assert_eq!(f.runs.load(Ordering::SeqCst), 1);
        assert_eq!(
            crate::sys::sends_while_pending(),
            0,
            "a signal was sent again while still pending: {}",
            crate::sys::sends_while_pending()
        );
        drop(me);
    });
}

/// Item 4 of issue 8: a remote thread queues (and signals) while the owner
/// binds; the signal lands at any signal point of the bind or after it. Once
/// every signal is delivered, the slot's in-flight mark is clear (a set mark
/// with no handler to come would swallow the next signal). Delivery happens
/// after the send in the model as with `tgkill` (see `sys::model`): without
/// that edge loom reported a delivered signal still marked in flight.
#[test]
fn loom_signal_lands_during_bind() {
    loom::model(|| {
        let f = Fixture::<Standard>::new(Mode::Queue);
        let work = Arc::new(f.work());
        let remote = thread::spawn({
            let work = work.clone();
            move || {
                work.queue();
            }
        });
        let mut me = f.domain.bind_unpinned(1).unwrap();
        crate::handler::signal_point();
        remote.join().unwrap();
        crate::handler::signal_point();
        me.quiescent();
        assert_eq!(f.runs.load(Ordering::SeqCst), 1);
        let pending = crate::sys::take_signal();
        let slot = &f.domain.inner.slots[1];
        assert!(
            !slot.signal_in_flight(),
            "every signal was delivered, yet one is marked in flight (undelivered: {pending}, \
             me {} slot tid {} ctl {:#x} gen {}, stats {:?})",
            crate::sys::current_tid(),
            slot.tid.load(Ordering::SeqCst),
            slot.ctl.load(Ordering::SeqCst),
            me.gen(),
            f.domain.stats(1).unwrap()
        );
    });
}

/// Item 4 of issue 8, the unbind side: the owner unbinds while a remote
/// thread queues and signals it, so the signal may land between `FREE` and
/// unlinking the record, or after (no record: nothing clears the in-flight
/// mark), or during the next bind. Once the thread binds the slot again, no
/// stale mark is left to swallow the next binding's signal: a second queue
/// gets the work run by the new binding's handler.
#[test]
fn loom_signal_lands_during_unbind() {
    loom::model(|| {
        let f = Fixture::<Standard>::new(Mode::Queue);
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
        crate::handler::signal_point();
        assert_eq!(f.runs.load(Ordering::SeqCst), 1, "work lost or doubled");
        let me = f.domain.bind_unpinned(1).unwrap();
        let slot = &f.domain.inner.slots[1];
        assert!(
            !slot.signal_in_flight(),
            "a new binding starts with a signal marked in flight (stats {:?})",
            f.domain.stats(1).unwrap()
        );
        // The new binding's signal is not swallowed by an old mark.
        let remote = thread::spawn({
            let work = work.clone();
            move || {
                work.queue();
            }
        });
        remote.join().unwrap();
        crate::handler::signal_point();
        assert_eq!(
            f.runs.load(Ordering::SeqCst),
            2,
            "the new binding's handler did not run the work (stats {:?})",
            f.domain.stats(1).unwrap()
        );
        assert!(!slot.signal_in_flight());
        drop(me);
    });
}

/// Issue 9: an owner that binds a `queue` slot with the signal blocked gets
/// it `remote` (its sections take the cell's lock, the queuer runs the work
/// under it); it unbinds and binds again unblocked (`queue`: its sections
/// take no lock) while the queuer may still be under the cell lock from the
/// first binding. The effective mode is set under `BUSY` and waits out
/// remote contexts, which re-check it once counted: the cell is never
/// touched by two contexts at once, and the work runs exactly once.
#[test]
fn loom_signal_blocked_binding_then_queue_binding() {
    loom::model(|| {
        let f = Fixture::<Standard>::new(Mode::Queue);
        let work = Arc::new(f.work());
        let remote = thread::spawn({
            let work = work.clone();
            move || {
                work.queue();
            }
        });
        crate::sys::set_blocks(true);
        {
            let mut me = f.domain.bind_unpinned(1).unwrap();
            let info = f.domain.slot_info(1).unwrap();
            assert_eq!(info.effective, crate::SlotMode::Remote);
            assert_eq!(info.reason, crate::ModeReason::SignalBlockedAtBind);
            *f.data.lock(&mut me) += 10;
        }
        crate::sys::set_blocks(false);
        {
            let mut me = f.domain.bind_unpinned(1).unwrap();
            assert_eq!(
                f.domain.slot_info(1).unwrap().effective,
                crate::SlotMode::Queue
            );
            *f.data.lock(&mut me) += 100;
            f.signal();
        }
        remote.join().unwrap();
        work.flush().unwrap();
        assert_eq!(f.runs.load(Ordering::SeqCst), 1);
        let mut me = f.domain.bind_unpinned(1).unwrap();
        assert_eq!(*f.data.lock(&mut me), 111);
    });
}
/// Leaving `remote` is bounded (liveness fix: an unbind waited for a
/// `RemoteGuard` without a deadline). With a flush timeout of zero every
/// wait for remote contexts expires at once: a blocked owner binds `remote`
/// and unbinds, then an unblocked one binds, while another thread holds a
/// `RemoteGuard` on the cell at any point. Whenever the wait gives up, the
/// slot must stay `remote` (and the new binding take the cell's lock): the
/// cell is never touched by two contexts at once, and no update is lost.
#[test]
fn loom_leaving_remote_gives_up_and_stays_remote() {
    loom::model(|| {
        crate::sys::reset_signals();
        let domain = Domain::<Standard>::builder()
            .mode(Mode::Queue)
            .nr_cpus(2)
            .flush_timeout(Duration::ZERO)
            .build()
            .unwrap();
        let data = Arc::new(PerCpu::new(&domain, |_| 0u64));
        let remote = thread::spawn({
            let data = data.clone();
            move || match data.remote(1) {
                Ok(mut g) => {
                    *g += 1;
                    1
                }
                Err(_) => 0,
            }
        });
        crate::sys::set_blocks(true);
        {
            let mut me = domain.bind_unpinned(1).unwrap();
            *data.lock(&mut me) += 10;
        }
        crate::sys::set_blocks(false);
        {
            let mut me = domain.bind_unpinned(1).unwrap();
            *data.lock(&mut me) += 100;
        }
        let got = remote.join().unwrap();
        let mut me = domain.bind_unpinned(1).unwrap();
        assert_eq!(*data.lock(&mut me), 110 + got);
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
    use crate::handler::fork_gates;
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
