//! Model-based tests of the core: random sequences of operations (bind,
//! unbind, local op, implicit owner, remote op, queue, flush, drain-all,
//! quiescent point, offline/online, thread exit) run against the real
//! library and against a small reference model, in every mode and
//! configuration. On a mismatch proptest shrinks the sequence to a minimal
//! failing one.
//!
//! The model keeps, per slot: who owns it (explicitly or implicitly),
//! whether the owner is offline, the sum of everything added to the slot's
//! counter, how many `queue` calls returned `true`, and whether the slot's
//! work is surely, maybe, or surely not pending. The real side runs each
//! owner in its own thread, driven by a channel (an `Owner` cannot leave its
//! thread), with every operation acknowledged before the next, so the only
//! concurrency left is the library's own (signal handlers, section ends).
//!
//! Checked after every operation: ownership and offline state as the model
//! says; each queueing runs exactly once (`runs` is `trues` or one less while
//! pending); nobody ever touches a slot's data while another context does;
//! a slot's value plus what its work drained always equals what was added;
//! the return values of `bind`, `with_local`, `remote`, `queue`, `flush` and
//! `quiescent` match the model's prediction.

use proptest::prelude::*;
use qpw::{
    Config, Domain, Error, FlushError, Mode, NoQpw, Owner, PerCpu, Rt, SlotMode, Standard, WorkSet,
};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

const SLOTS: usize = 3;
const THREADS: usize = 3;
/// Far above any real wait: reaching it means a hang.
const HANG: Duration = Duration::from_secs(20);
/// For a flush the model says cannot succeed (a `defer` owner that is
/// blocked on its channel never reaches a quiescent point).
const SHORT: Duration = Duration::from_millis(5);

#[derive(Debug, Clone)]
enum Op {
    Bind { t: usize, cpu: usize },
    Unbind { t: usize },
    Local { t: usize, k: u64 },
    Read { t: usize },
    Implicit { t: usize, k: u64 },
    Remote { cpu: usize, k: u64 },
    Queue { cpu: usize },
    Flush { cpu: usize },
    DrainAll,
    Quiescent { t: usize },
    Offline { t: usize },
    Online { t: usize },
    Exit { t: usize },
}

fn op() -> impl Strategy<Value = Op> {
    let t = 0..THREADS;
    let cpu = 0..SLOTS;
    let k = 1u64..100;
    prop_oneof![
        4 => (t.clone(), cpu.clone()).prop_map(|(t, cpu)| Op::Bind { t, cpu }),
        1 => t.clone().prop_map(|t| Op::Unbind { t }),
        4 => (t.clone(), k.clone()).prop_map(|(t, k)| Op::Local { t, k }),
        1 => t.clone().prop_map(|t| Op::Read { t }),
        1 => (t.clone(), k.clone()).prop_map(|(t, k)| Op::Implicit { t, k }),
        2 => (cpu.clone(), k).prop_map(|(cpu, k)| Op::Remote { cpu, k }),
        3 => cpu.clone().prop_map(|cpu| Op::Queue { cpu }),
        2 => cpu.prop_map(|cpu| Op::Flush { cpu }),
        1 => Just(Op::DrainAll),
        2 => t.clone().prop_map(|t| Op::Quiescent { t }),
        2 => t.clone().prop_map(|t| Op::Offline { t }),
        2 => t.clone().prop_map(|t| Op::Online { t }),
        1 => t.prop_map(|t| Op::Exit { t }),
    ]
}

// ---------------------------------------------------------------- real side

/// What every thread of one case shares.
struct Shared<C: Config> {
    domain: Domain<C>,
    counts: PerCpu<u64, C>,
    /// Per slot: what its work moved out of the counter.
    drained: Vec<AtomicU64>,
    /// Per slot: how many times its work ran.
    runs: Vec<AtomicU64>,
    /// Per slot: contexts touching its data right now.
    inside: Vec<AtomicU32>,
    /// Times two contexts touched one slot's data at once.
    violations: AtomicU64,
}

impl<C: Config> Shared<C> {
    fn enter(&self, cpu: usize) {
        if self.inside[cpu].fetch_add(1, Ordering::SeqCst) != 0 {
            self.violations.fetch_add(1, Ordering::SeqCst);
        }
    }
    fn leave(&self, cpu: usize) {
        self.inside[cpu].fetch_sub(1, Ordering::SeqCst);
    }
    /// A local section: returns (value before, drained) read inside it,
    /// where no work of this slot can run.
    fn section(&self, me: &mut Owner<C>, k: u64) -> (u64, u64) {
        let cpu = me.slot();
        let mut g = self.counts.lock(me);
        self.enter(cpu);
        let v = *g;
        let d = self.drained[cpu].load(Ordering::SeqCst);
        *g += k;
        self.leave(cpu);
        drop(g);
        (v, d)
    }
}

enum Cmd {
    Bind(usize),
    Unbind,
    Local(u64),
    Implicit(u64),
    Quiescent,
    Offline,
    Online,
    Exit,
}

#[derive(Debug)]
enum Reply {
    Bound(Result<(), Error>),
    Section(u64, u64),
    Implicit(Result<(usize, u64, u64), Error>),
    Quiesced(bool),
    Done,
}

struct Worker {
    tx: Sender<Cmd>,
    rx: Receiver<Reply>,
    join: JoinHandle<()>,
}

fn spawn_worker<C: Config>(shared: Arc<Shared<C>>) -> Worker {
    let (tx, crx) = channel::<Cmd>();
    let (rtx, rx) = channel::<Reply>();
    let join = thread::spawn(move || {
        let mut owner: Option<Owner<C>> = None;
        while let Ok(cmd) = crx.recv() {
            let reply = match cmd {
                Cmd::Bind(cpu) => {
                    Reply::Bound(shared.domain.bind_unpinned(cpu).map(|o| owner = Some(o)))
                }
                Cmd::Unbind => {
                    owner = None;
                    Reply::Done
                }
                Cmd::Local(k) => {
                    let (v, d) = shared.section(owner.as_mut().expect("model: bound"), k);
                    Reply::Section(v, d)
                }
                Cmd::Implicit(k) => Reply::Implicit(shared.domain.with_local(|me| {
                    let (v, d) = shared.section(me, k);
                    (me.slot(), v, d)
                })),
                Cmd::Quiescent => {
                    Reply::Quiesced(owner.as_mut().expect("model: bound").quiescent())
                }
                Cmd::Offline => {
                    let me = owner.as_mut().expect("model: bound");
                    let mut exit = false;
                    me.idle(|| {
                        rtx.send(Reply::Done).unwrap();
                        // The model sends only Online or Exit while offline.
                        match crx.recv() {
                            Ok(Cmd::Online) => {}
                            Ok(Cmd::Exit) | Err(_) => exit = true,
                            Ok(_) => panic!("model: only Online or Exit while offline"),
                        }
                    });
                    if exit {
                        break;
                    }
                    Reply::Done
                }
                Cmd::Online => panic!("model: Online only while offline"),
                Cmd::Exit => break,
            };
            rtx.send(reply).unwrap();
        }
        // The explicit owner drops here; the implicit one at thread exit.
        drop(owner);
    });
    Worker { tx, rx, join }
}

impl Worker {
    fn call(&self, cmd: Cmd) -> Reply {
        self.tx.send(cmd).expect("worker alive");
        self.rx.recv_timeout(HANG).expect("worker replied in time")
    }
    fn exit(self) {
        let _ = self.tx.send(Cmd::Exit);
        self.join.join().expect("worker thread");
    }
}

// ------------------------------------------------------------------- model

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    No,
    Maybe,
    Yes,
}

#[derive(Debug, Clone)]
struct SlotM {
    mode: SlotMode,
    owner: Option<usize>,
    offline: bool,
    added: u64,
    trues: u64,
    pending: Pending,
}

#[derive(Debug, Clone, Default)]
struct ThreadM {
    explicit: Option<usize>,
    implicit: Option<usize>,
    offline: bool,
}

struct Case<C: Config> {
    shared: Arc<Shared<C>>,
    set: WorkSet<C>,
    workers: Vec<Option<Worker>>,
    slots: Vec<SlotM>,
    threads: Vec<ThreadM>,
}

impl<C: Config> Case<C> {
    fn new(mode: Mode) -> Self {
        let domain = qpw::Builder::<C>::new()
            .mode(mode)
            .nr_cpus(SLOTS)
            .flush_timeout(HANG)
            .build()
            .unwrap();
        let shared = Arc::new(Shared {
            counts: PerCpu::new(&domain, |_| 0u64),
            drained: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
            runs: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
            inside: (0..SLOTS).map(|_| AtomicU32::new(0)).collect(),
            violations: AtomicU64::new(0),
            domain: domain.clone(),
        });
        let set = domain.work_all({
            let shared = shared.clone();
            move |ctx| {
                let cpu = ctx.cpu();
                let Ok(mut g) = shared.counts.lock_ctx(ctx) else {
                    return;
                };
                shared.enter(cpu);
                shared.drained[cpu].fetch_add(std::mem::take(&mut *g), Ordering::SeqCst);
                shared.runs[cpu].fetch_add(1, Ordering::SeqCst);
                shared.leave(cpu);
            }
        });
        let slots = (0..SLOTS)
            .map(|c| SlotM {
                mode: domain.slot_mode(c).unwrap(),
                owner: None,
                offline: false,
                added: 0,
                trues: 0,
                pending: Pending::No,
            })
            .collect();
        Case {
            shared,
            set,
            workers: (0..THREADS).map(|_| None).collect(),
            slots,
            threads: vec![ThreadM::default(); THREADS],
        }
    }

    fn worker(&mut self, t: usize) -> &Worker {
        if self.workers[t].is_none() {
            self.workers[t] = Some(spawn_worker(self.shared.clone()));
            self.threads[t] = ThreadM::default();
        }
        self.workers[t].as_ref().unwrap()
    }

    /// For operations of an explicit owner: the `t`-th (modulo) of the
    /// threads that have one and are offline as asked, so that generated
    /// sequences rarely waste an operation on a thread that cannot do it.
    fn pick(&self, t: usize, offline: bool) -> Option<usize> {
        let fit: Vec<usize> = (0..THREADS)
            .filter(|&i| self.threads[i].explicit.is_some() && self.threads[i].offline == offline)
            .collect();
        (!fit.is_empty()).then(|| fit[t % fit.len()])
    }

    fn bound(&self, t: usize) -> Option<usize> {
        self.threads[t].explicit.or(self.threads[t].implicit)
    }

    /// After an owner context ran a local section: a `defer` slot's pending
    /// work may have run at the section's end; a `queue` slot's already may.
    fn after_section(&mut self, cpu: usize) {
        if self.slots[cpu].pending == Pending::Yes {
            self.slots[cpu].pending = Pending::Maybe;
        }
    }

    fn check_section(&self, cpu: usize, v: u64, d: u64, k: u64) {
        assert_eq!(
            v + d,
            self.slots[cpu].added - k,
            "slot {cpu}: value {v} + drained {d} != added"
        );
    }

    fn free_slot(&mut self, cpu: usize) {
        let s = &mut self.slots[cpu];
        s.owner = None;
        s.offline = false;
        // The owner runs its pending work as it leaves.
        s.pending = Pending::No;
    }

    fn queue(&mut self, cpu: usize) {
        let r = self.set.get(cpu).unwrap().queue();
        let s = &mut self.slots[cpu];
        match s.pending {
            Pending::No => assert!(r, "slot {cpu}: queue of an idle work returned false"),
            Pending::Yes => assert!(!r, "slot {cpu}: queue of a pending work returned true"),
            Pending::Maybe => {}
        }
        if r {
            s.trues += 1;
            s.pending = if s.mode == SlotMode::Remote || s.owner.is_none() || s.offline {
                Pending::No // run at once by the caller
            } else if s.mode == SlotMode::Queue {
                Pending::Maybe // the signal handler will run it
            } else {
                Pending::Yes // only the defer owner can run it
            };
        }
    }

    /// A `defer` slot whose owner is online: only the owner runs its work.
    fn stuck(&self, cpu: usize) -> bool {
        let s = &self.slots[cpu];
        s.mode == SlotMode::Defer && s.owner.is_some() && !s.offline && s.pending != Pending::No
    }

    fn flush(&mut self, cpu: usize) {
        let w = self.set.get(cpu).unwrap();
        if self.stuck(cpu) {
            let r = w.flush_timeout(SHORT);
            match (r, self.slots[cpu].pending) {
                (Ok(()), Pending::Maybe) => self.slots[cpu].pending = Pending::No,
                (Err(FlushError::Timeout { cpu: c, .. }), _) => {
                    assert_eq!(c, cpu);
                    self.slots[cpu].pending = Pending::Yes;
                }
                (r, p) => panic!("slot {cpu}: flush gave {r:?} with the work {p:?} pending"),
            }
        } else {
            assert_eq!(w.flush(), Ok(()), "slot {cpu}: flush");
            self.slots[cpu].pending = Pending::No;
        }
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Bind { t, cpu } => {
                if self.threads[t].offline {
                    return;
                }
                let expected = match (self.bound(t), self.slots[cpu].owner) {
                    (Some(c), _) => Err(Error::AlreadyBound { cpu: c }),
                    (None, Some(_)) => Err(Error::SlotOwned { cpu }),
                    (None, None) => Ok(()),
                };
                let Reply::Bound(r) = self.worker(t).call(Cmd::Bind(cpu)) else {
                    panic!("reply")
                };
                assert_eq!(r, expected, "bind thread {t} to slot {cpu}");
                if r.is_ok() {
                    self.threads[t].explicit = Some(cpu);
                    self.slots[cpu].owner = Some(t);
                }
            }
            Op::Unbind { t } => {
                let Some(t) = self.pick(t, false) else { return };
                let Some(cpu) = self.threads[t].explicit else {
                    return;
                };
                let Reply::Done = self.worker(t).call(Cmd::Unbind) else {
                    panic!("reply")
                };
                self.threads[t].explicit = None;
                self.free_slot(cpu);
            }
            Op::Local { t, k } => self.local(t, k),
            Op::Read { t } => self.local(t, 0),
            Op::Implicit { t, k } => {
                if self.threads[t].offline {
                    return;
                }
                let expected = match (self.threads[t].explicit, self.threads[t].implicit) {
                    (Some(c), _) => Err(Error::AlreadyBound { cpu: c }),
                    (None, Some(c)) => Ok(c),
                    (None, None) => (0..SLOTS)
                        .find(|&c| self.slots[c].owner.is_none())
                        .ok_or(Error::NoFreeSlot { nr_cpus: SLOTS }),
                };
                let Reply::Implicit(r) = self.worker(t).call(Cmd::Implicit(k)) else {
                    panic!("reply")
                };
                match (r, expected) {
                    (Ok((cpu, v, d)), Ok(c)) => {
                        assert_eq!(cpu, c, "thread {t}'s implicit owner");
                        self.threads[t].implicit = Some(cpu);
                        self.slots[cpu].owner = Some(t);
                        self.slots[cpu].added += k;
                        self.check_section(cpu, v, d, k);
                        // Parked offline between calls, having run what
                        // was pending.
                        self.slots[cpu].offline = true;
                        self.slots[cpu].pending = Pending::No;
                    }
                    (Err(e), Err(x)) => assert_eq!(e, x),
                    (r, x) => panic!("with_local on thread {t}: got {r:?}, expected {x:?}"),
                }
            }
            Op::Remote { cpu, k } => {
                let s = &self.slots[cpu];
                let allowed = s.mode == SlotMode::Remote || s.owner.is_none() || s.offline;
                let shared = self.shared.clone();
                let r = shared.counts.remote(cpu);
                match r {
                    Ok(mut g) => {
                        assert!(
                            allowed,
                            "slot {cpu}: remote access to an online owner's slot"
                        );
                        shared.enter(cpu);
                        let d = shared.drained[cpu].load(Ordering::SeqCst);
                        assert_eq!(
                            *g + d,
                            self.slots[cpu].added,
                            "slot {cpu}: value + drained != added"
                        );
                        *g += k;
                        shared.leave(cpu);
                        self.slots[cpu].added += k;
                    }
                    Err(e) => {
                        assert!(!allowed, "slot {cpu}: remote access refused: {e}");
                        assert_eq!(e, Error::OwnerOnline { cpu });
                    }
                }
            }
            Op::Queue { cpu } => self.queue(cpu),
            Op::Flush { cpu } => self.flush(cpu),
            Op::DrainAll => {
                let defer_online = self
                    .slots
                    .iter()
                    .any(|s| s.mode == SlotMode::Defer && s.owner.is_some() && !s.offline);
                if defer_online {
                    // That owner will not run its work while it waits on its
                    // channel: queue all, then flush each with the bound the
                    // model says (what `run` does, with per-slot bounds).
                    for c in 0..SLOTS {
                        self.queue(c);
                    }
                    for c in 0..SLOTS {
                        self.flush(c);
                    }
                } else {
                    // Settle works whose signal is in flight, so that every
                    // queue inside `run` is predictable: each returns true.
                    for c in 0..SLOTS {
                        if self.slots[c].pending == Pending::Maybe {
                            self.flush(c);
                        }
                    }
                    assert_eq!(self.set.run(), Ok(()), "drain-all");
                    for s in self.slots.iter_mut() {
                        s.trues += 1;
                        s.pending = Pending::No;
                    }
                }
            }
            Op::Quiescent { t } => {
                let Some(t) = self.pick(t, false) else { return };
                let (Some(cpu), false) = (self.threads[t].explicit, self.threads[t].offline) else {
                    return;
                };
                let Reply::Quiesced(r) = self.worker(t).call(Cmd::Quiescent) else {
                    panic!("reply")
                };
                match self.slots[cpu].pending {
                    Pending::Yes => {
                        assert!(r, "slot {cpu}: quiescent ran nothing with work pending")
                    }
                    Pending::No => {
                        assert!(!r, "slot {cpu}: quiescent ran work that was not pending")
                    }
                    Pending::Maybe => {}
                }
                self.slots[cpu].pending = Pending::No;
            }
            Op::Offline { t } => {
                let Some(t) = self.pick(t, false) else { return };
                let (Some(cpu), false) = (self.threads[t].explicit, self.threads[t].offline) else {
                    return;
                };
                let Reply::Done = self.worker(t).call(Cmd::Offline) else {
                    panic!("reply")
                };
                self.threads[t].offline = true;
                self.slots[cpu].offline = true;
                self.slots[cpu].pending = Pending::No;
            }
            Op::Online { t } => {
                let Some(t) = self.pick(t, true) else { return };
                let (Some(cpu), true) = (self.threads[t].explicit, self.threads[t].offline) else {
                    return;
                };
                let Reply::Done = self.worker(t).call(Cmd::Online) else {
                    panic!("reply")
                };
                self.threads[t].offline = false;
                self.slots[cpu].offline = false;
            }
            Op::Exit { t } => {
                let Some(w) = self.workers[t].take() else {
                    return;
                };
                w.exit();
                let th = std::mem::take(&mut self.threads[t]);
                for cpu in [th.explicit, th.implicit].into_iter().flatten() {
                    self.free_slot(cpu);
                }
            }
        }
    }

    /// A local section by thread `t`'s explicit owner adding `k`.
    fn local(&mut self, t: usize, k: u64) {
        let Some(t) = self.pick(t, false) else { return };
        let (Some(cpu), false) = (self.threads[t].explicit, self.threads[t].offline) else {
            return;
        };
        self.slots[cpu].added += k;
        let Reply::Section(v, d) = self.worker(t).call(Cmd::Local(k)) else {
            panic!("reply")
        };
        self.check_section(cpu, v, d, k);
        self.after_section(cpu);
    }

    fn check(&self) {
        let d = &self.shared.domain;
        for c in 0..SLOTS {
            let s = &self.slots[c];
            assert_eq!(d.is_owned(c).unwrap(), s.owner.is_some(), "slot {c}: owned");
            assert_eq!(d.is_offline(c).unwrap(), s.offline, "slot {c}: offline");
            let runs = self.shared.runs[c].load(Ordering::SeqCst);
            match s.pending {
                Pending::No => {
                    assert_eq!(runs, s.trues, "slot {c}: every queueing ran exactly once")
                }
                _ => assert!(
                    runs + 1 == s.trues || runs == s.trues,
                    "slot {c}: {runs} runs for {} queueings",
                    s.trues
                ),
            }
        }
        assert_eq!(
            self.shared.violations.load(Ordering::SeqCst),
            0,
            "two contexts in one slot's data"
        );
    }

    fn finish(mut self) {
        for t in 0..THREADS {
            self.apply(&Op::Exit { t });
        }
        self.check();
        assert_eq!(self.set.run(), Ok(()));
        let d = &self.shared.domain;
        for c in 0..SLOTS {
            let s = &self.slots[c];
            assert_eq!(
                self.shared.drained[c].load(Ordering::SeqCst),
                s.added,
                "slot {c}: conservation"
            );
            assert_eq!(self.shared.runs[c].load(Ordering::SeqCst), s.trues + 1);
            if s.mode != SlotMode::Queue {
                assert_eq!(
                    d.stats(c).unwrap().fences(),
                    0,
                    "slot {c} ({:?}) was signalled",
                    s.mode
                );
            }
        }
        let total: u64 = self
            .shared
            .runs
            .iter()
            .map(|r| r.load(Ordering::SeqCst))
            .sum();
        assert_eq!(d.total_stats().works_run(), total);
        assert_eq!(d.total_stats().works_panicked, 0);
    }
}

impl<C: Config> Drop for Case<C> {
    fn drop(&mut self) {
        for w in self.workers.iter_mut().filter_map(Option::take) {
            // Best effort after a failed assertion: let the threads go.
            let _ = w.tx.send(Cmd::Exit);
        }
    }
}

fn run<C: Config>(mode: Mode, ops: &[Op]) {
    let mut case = Case::<C>::new(mode);
    for op in ops {
        case.apply(op);
        case.check();
    }
    case.finish();
}

/// 64 cases, or `PROPTEST_CASES` for a longer hunt.
fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn standard_queue(ops in prop::collection::vec(op(), 1..60)) {
        run::<Standard>(Mode::Queue, &ops);
    }

    #[test]
    fn no_qpw_queue(ops in prop::collection::vec(op(), 1..60)) {
        run::<NoQpw>(Mode::Queue, &ops);
    }

    #[test]
    fn rt_queue(ops in prop::collection::vec(op(), 1..60)) {
        run::<Rt>(Mode::Queue, &ops);
    }
}

#[cfg(feature = "qpw")]
proptest! {
    #![proptest_config(config())]

    #[test]
    fn standard_remote(ops in prop::collection::vec(op(), 1..60)) {
        run::<Standard>(Mode::Remote, &ops);
    }

    #[test]
    fn standard_defer(ops in prop::collection::vec(op(), 1..60)) {
        run::<Standard>(Mode::Defer, &ops);
    }

    #[test]
    fn standard_auto(ops in prop::collection::vec(op(), 1..60)) {
        run::<Standard>(Mode::Auto(Some(vec![1])), &ops);
    }

    #[test]
    fn rt_remote(ops in prop::collection::vec(op(), 1..60)) {
        run::<Rt>(Mode::Remote, &ops);
    }

    #[test]
    fn rt_defer(ops in prop::collection::vec(op(), 1..60)) {
        run::<Rt>(Mode::Defer, &ops);
    }
}

/// The model itself must be able to fail: a sequence whose expectations are
/// deliberately wrong is caught.
#[test]
#[should_panic(expected = "bind thread 1 to slot 0")]
fn the_model_catches_a_wrong_expectation() {
    let mut case = Case::<Standard>::new(Mode::Queue);
    case.apply(&Op::Bind { t: 0, cpu: 0 });
    // Corrupt the model: forget the owner, so it expects the bind to succeed.
    case.slots[0].owner = None;
    case.apply(&Op::Bind { t: 1, cpu: 0 });
}
