//! Model-based tests of the consumers: random sequences of operations run
//! against the real slab cache, kmalloc, LRU batches and charge stock, and
//! against a small reference model of each, in every mode and
//! configuration. On a mismatch proptest shrinks the sequence to a minimal
//! failing one.
//!
//! # The harness
//!
//! Each owner runs in its own thread (an `Owner` cannot leave its thread),
//! driven by a channel, with every operation acknowledged before the next,
//! so the only concurrency left is the library's own (signal handlers,
//! section ends, drains run by the caller). An owner thread waits for its
//! next command either *online* (blocked on its channel: in `queue` mode its
//! signal handler runs drains, in `defer` mode nothing does) or *parked*,
//! offline (`Owner::idle`), where any drainer runs its slot's work itself.
//! A parked owner acknowledges from inside `idle`, so when the test thread
//! sees the reply the owner is offline already.
//!
//! That makes every drain's outcome predictable: it succeeds unless some
//! `defer` slot has an owner waiting online (an explicit owner not parked,
//! or a thread's implicit kmalloc binding), and then it times out (the
//! domain's bound is short in `defer` mode: the outcome is certain, not a
//! race) naming one of those slots, and the work stays pending on them. The
//! model tracks that pending work exactly: it runs at the owner's next local
//! section end, `quiescent()`, going offline, or unbinding, and the models
//! of the stock and the LRU apply its effect at that point.
//!
//! # The models
//!
//! - **slab** (`KmemCache`): the live objects with their patterns. Objects
//!   never overlap and keep their patterns; frees are local, remote (by
//!   another slot than the one that allocated), bulk and shared-path; after a
//!   successful `shrink` exactly the live objects are out of their slabs; at
//!   the end everything is freed and `destroy()` succeeds.
//! - **kmalloc**: the live allocations with their sizes, alignments and
//!   contents, through the explicit API and the implicit per-thread one
//!   (whose binding is predicted: which slot, and when a thread stays on the
//!   shared path). `ksize` is the predicted class; `krealloc` keeps an object
//!   in its class in place and keeps contents; large objects are counted.
//! - **lru**: every slot's batch, the hand-off stack and the shared list,
//!   exactly: the shared list always equals the model's, spills and drained
//!   batches are counted; after the final drain the shared list holds every
//!   item added (and not taken) exactly once.
//! - **stock**: every slot's stock, the shared counter and the outstanding
//!   charges, exactly: `usage` always equals the model's and never exceeds
//!   the limit; after a successful drain it equals the outstanding charges;
//!   a charge that fits after a drain succeeds.

use proptest::prelude::*;
use qpw::{Config, Domain, Error, FlushError, Mode, NoQpw, Owner, Rt, SlotMode, Standard};
use qpw_mm::lru::Lru;
use qpw_mm::stock::Stock;
use qpw_mm::{size_class, Kmalloc, KmemCache, KMALLOC_MAX_CACHE_SIZE, KMALLOC_SIZES, NCLASSES};
use std::alloc::Layout;
use std::any::Any;
use std::collections::BTreeMap;
use std::ptr::NonNull;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

const SLOTS: usize = 3;
const THREADS: usize = 3;
/// Far above any real wait: reaching it means a hang.
const HANG: Duration = Duration::from_secs(20);
/// The flush bound of `defer` domains. A drain there either needs nobody
/// (every owner offline or absent: the caller runs the work) or waits for an
/// owner blocked on its channel, which never comes: the bound decides
/// nothing, it only ends the wait.
const SHORT: Duration = Duration::from_millis(2);

// ------------------------------------------------------------ owner threads

type Reply = Box<dyn Any + Send>;
type Job<C> = Box<dyn FnOnce(Option<&mut Owner<C>>) -> Reply + Send>;

enum Cmd<C: Config> {
    Bind(usize),
    Unbind,
    Park,
    Unpark,
    Quiescent,
    Job(Job<C>),
    Exit,
}

struct Worker<C: Config> {
    tx: Sender<Cmd<C>>,
    rx: Receiver<Reply>,
    join: Option<JoinHandle<()>>,
}

fn send_reply(tx: &Sender<Reply>, reply: &mut Option<Reply>) {
    if let Some(r) = reply.take() {
        let _ = tx.send(r);
    }
}

impl<C: Config> Worker<C> {
    fn spawn(domain: Domain<C>) -> Self {
        let (tx, crx) = channel::<Cmd<C>>();
        let (rtx, rx) = channel::<Reply>();
        let join = thread::spawn(move || {
            let mut owner: Option<Owner<C>> = None;
            let mut parked = false;
            let mut reply: Option<Reply> = None;
            loop {
                // Acknowledge the last command, then wait for the next:
                // offline when parked (acknowledged once offline).
                let cmd = match owner.as_mut() {
                    Some(o) if parked => o.idle(|| {
                        send_reply(&rtx, &mut reply);
                        crx.recv()
                    }),
                    _ => {
                        send_reply(&rtx, &mut reply);
                        crx.recv()
                    }
                };
                let Ok(cmd) = cmd else { break };
                reply = Some(match cmd {
                    Cmd::Bind(cpu) => Box::new(domain.bind_unpinned(cpu).map(|o| owner = Some(o))),
                    Cmd::Unbind => {
                        owner = None;
                        parked = false;
                        Box::new(())
                    }
                    Cmd::Park => {
                        assert!(owner.is_some(), "model: only a bound thread parks");
                        parked = true;
                        Box::new(())
                    }
                    Cmd::Unpark => {
                        parked = false;
                        Box::new(())
                    }
                    Cmd::Quiescent => Box::new(owner.as_mut().expect("model: bound").quiescent()),
                    Cmd::Job(f) => f(owner.as_mut()),
                    Cmd::Exit => break,
                });
            }
            // The explicit owner drops here (running its pending work), the
            // implicit kmalloc binding at thread exit.
            drop(owner);
        });
        Worker {
            tx,
            rx,
            join: Some(join),
        }
    }

    fn call(&mut self, cmd: Cmd<C>) -> Reply {
        if self.tx.send(cmd).is_ok() {
            match self.rx.recv_timeout(HANG) {
                Ok(r) => return r,
                Err(RecvTimeoutError::Timeout) => panic!("an owner thread hung"),
                Err(RecvTimeoutError::Disconnected) => {}
            }
        }
        // The thread ended: a check inside the library panicked there.
        match self.join.take().map(JoinHandle::join) {
            Some(Err(p)) => std::panic::resume_unwind(p),
            _ => panic!("an owner thread exited unasked"),
        }
    }

    fn exit(mut self) {
        let _ = self.tx.send(Cmd::Exit);
        if let Some(Err(p)) = self.join.take().map(JoinHandle::join) {
            std::panic::resume_unwind(p);
        }
    }
}

// ---------------------------------------------------------------- harness

/// What every model does with owners.
#[derive(Debug, Clone)]
enum Life {
    Bind { t: usize, cpu: usize },
    Unbind { t: usize },
    Park { t: usize },
    Unpark { t: usize },
    Quiescent { t: usize },
    Exit { t: usize },
}

fn life() -> impl Strategy<Value = Life> {
    let t = 0..THREADS;
    prop_oneof![
        4 => (t.clone(), 0..SLOTS).prop_map(|(t, cpu)| Life::Bind { t, cpu }),
        1 => t.clone().prop_map(|t| Life::Unbind { t }),
        2 => t.clone().prop_map(|t| Life::Park { t }),
        2 => t.clone().prop_map(|t| Life::Unpark { t }),
        2 => t.clone().prop_map(|t| Life::Quiescent { t }),
        1 => t.prop_map(|t| Life::Exit { t }),
    ]
}

#[derive(Debug, Clone, Default)]
struct ThreadM {
    /// The slot of its explicit owner.
    explicit: Option<usize>,
    /// Waiting offline between commands.
    parked: bool,
    /// The slot of its implicit kmalloc binding.
    implicit: Option<usize>,
    /// kmalloc: the binding generation at its last failed binding.
    failed_gen: Option<u64>,
}

/// The owner threads of one case and the model of who owns what.
struct Harness<C: Config> {
    domain: Domain<C>,
    modes: Vec<SlotMode>,
    workers: Vec<Option<Worker<C>>>,
    th: Vec<ThreadM>,
    owner_of: Vec<Option<usize>>,
    /// Per slot: a drain's work is queued and has not run (defer only).
    pending: Vec<bool>,
    /// Per slot: `drains_skipped_clean` when last looked at (a consumer's
    /// drain-all skips slots its check calls clean: not stuck, no work queued).
    skipped_seen: Vec<u64>,
}

impl<C: Config> Harness<C> {
    /// A domain in `mode` with threads 0 and 1 bound to slots 0 and 1 (so
    /// that short sequences reach owners; they may unbind, exit, rebind).
    fn new(mode: Mode) -> Self {
        let bound = if mode == Mode::Defer { SHORT } else { HANG };
        let domain = qpw::Builder::<C>::new()
            .mode(mode)
            .nr_cpus(SLOTS)
            .flush_timeout(bound)
            .build()
            .unwrap();
        let mut h = Harness {
            modes: (0..SLOTS).map(|c| domain.slot_mode(c).unwrap()).collect(),
            domain,
            workers: (0..THREADS).map(|_| None).collect(),
            th: vec![ThreadM::default(); THREADS],
            owner_of: vec![None; SLOTS],
            pending: vec![false; SLOTS],
            skipped_seen: vec![0; SLOTS],
        };
        for t in 0..2 {
            h.life(&Life::Bind { t, cpu: t });
        }
        h
    }

    fn worker(&mut self, t: usize) -> &mut Worker<C> {
        if self.workers[t].is_none() {
            self.workers[t] = Some(Worker::spawn(self.domain.clone()));
            self.th[t] = ThreadM::default();
        }
        self.workers[t].as_mut().unwrap()
    }

    /// Runs `f` on thread `t` (spawned if needed) with its explicit owner.
    fn job<R: Send + 'static>(
        &mut self,
        t: usize,
        f: impl FnOnce(Option<&mut Owner<C>>) -> R + Send + 'static,
    ) -> R {
        let r = self
            .worker(t)
            .call(Cmd::Job(Box::new(move |o| Box::new(f(o)) as Reply)));
        *r.downcast::<R>().expect("reply type")
    }

    /// The `t`-th (modulo) thread with an explicit owner, parked as asked,
    /// so that sequences rarely waste an operation.
    fn pick(&self, t: usize, parked: Option<bool>) -> Option<usize> {
        let fit: Vec<usize> = (0..THREADS)
            .filter(|&i| {
                self.th[i].explicit.is_some() && parked.is_none_or(|p| self.th[i].parked == p)
            })
            .collect();
        (!fit.is_empty()).then(|| fit[t % fit.len()])
    }

    /// An owner ran a local section on `cpu`: pending work ran at its end.
    /// Returns whether some did.
    fn section(&mut self, cpu: usize) -> bool {
        std::mem::take(&mut self.pending[cpu])
    }

    /// The slots a drain-all cannot finish now: `defer` slots whose owner
    /// waits online, except `except` (a drainer's own slot, offline).
    fn stuck(&self, except: Option<usize>) -> Vec<usize> {
        (0..SLOTS)
            .filter(|&c| Some(c) != except && self.modes[c] == SlotMode::Defer)
            .filter(|&c| match self.owner_of[c] {
                None => false,
                Some(t) => self.th[t].implicit == Some(c) || !self.th[t].parked,
            })
            .collect()
    }

    /// Checks a drain-all's result against the model; returns the slots it
    /// drained. The others keep their work pending.
    fn drained(
        &mut self,
        r: Result<(), FlushError>,
        except: Option<usize>,
        what: &str,
    ) -> Vec<usize> {
        let skipped = self.skipped_since();
        let stuck: Vec<usize> = self
            .stuck(except)
            .into_iter()
            .filter(|&c| !skipped[c])
            .collect();
        match r {
            Ok(()) => assert!(
                stuck.is_empty(),
                "{what} succeeded though slots {stuck:?} have online defer owners"
            ),
            Err(FlushError::Timeout { cpu, .. }) => assert!(
                stuck.contains(&cpu),
                "{what} timed out on slot {cpu}; the model expects only {stuck:?} to"
            ),
            Err(e) => panic!("{what}: {e}"),
        }
        self.drain_model_with(except, &skipped)
    }

    /// Which slots the drain-all since the last look skipped as clean.
    fn skipped_since(&mut self) -> Vec<bool> {
        (0..SLOTS)
            .map(|c| {
                let now = self.domain.slot_info(c).unwrap().drains_skipped_clean;
                let skipped = now > self.skipped_seen[c];
                self.skipped_seen[c] = now;
                skipped
            })
            .collect()
    }

    /// A drain-all (by a thread whose own slot, if any, is `except`): the
    /// stuck slots keep the work pending; returns the slots drained.
    fn drain_model(&mut self, except: Option<usize>) -> Vec<usize> {
        let skipped = self.skipped_since();
        self.drain_model_with(except, &skipped)
    }

    /// [`drain_model`](Self::drain_model) given the slots skipped as clean
    /// (nothing queued there; their model state must be empty already).
    fn drain_model_with(&mut self, except: Option<usize>, skipped: &[bool]) -> Vec<usize> {
        let stuck: Vec<usize> = self
            .stuck(except)
            .into_iter()
            .filter(|&c| !skipped[c])
            .collect();
        for &c in &stuck {
            self.pending[c] = true;
        }
        (0..SLOTS).filter(|c| !stuck.contains(c)).collect()
    }

    fn free_slot(&mut self, cpu: usize) -> bool {
        self.owner_of[cpu] = None;
        // The owner runs its pending work as it leaves.
        self.section(cpu)
    }

    /// Applies an owner operation; returns the slots whose pending work ran
    /// and, for an exit, what the thread had.
    fn life(&mut self, op: &Life) -> (Vec<usize>, Option<ThreadM>) {
        let mut ran = Vec::new();
        match *op {
            Life::Bind { t, cpu } => {
                self.worker(t);
                let expected = match (
                    self.th[t].explicit.or(self.th[t].implicit),
                    self.owner_of[cpu],
                ) {
                    (Some(c), _) => Err(Error::AlreadyBound { cpu: c }),
                    (None, Some(_)) => Err(Error::SlotOwned { cpu }),
                    (None, None) => Ok(()),
                };
                let r = self.worker(t).call(Cmd::Bind(cpu));
                let r = *r.downcast::<Result<(), Error>>().unwrap();
                assert_eq!(r, expected, "bind thread {t} to slot {cpu}");
                if r.is_ok() {
                    self.th[t].explicit = Some(cpu);
                    self.owner_of[cpu] = Some(t);
                }
            }
            Life::Unbind { t } => {
                let Some(t) = self.pick(t, None) else {
                    return (ran, None);
                };
                self.worker(t).call(Cmd::Unbind);
                let cpu = self.th[t].explicit.take().unwrap();
                self.th[t].parked = false;
                if self.free_slot(cpu) {
                    ran.push(cpu);
                }
            }
            Life::Park { t } => {
                let Some(t) = self.pick(t, Some(false)) else {
                    return (ran, None);
                };
                self.worker(t).call(Cmd::Park);
                self.th[t].parked = true;
                let cpu = self.th[t].explicit.unwrap();
                // Going offline runs what is pending.
                if self.section(cpu) {
                    ran.push(cpu);
                }
            }
            Life::Unpark { t } => {
                let Some(t) = self.pick(t, Some(true)) else {
                    return (ran, None);
                };
                self.worker(t).call(Cmd::Unpark);
                self.th[t].parked = false;
            }
            Life::Quiescent { t } => {
                let Some(t) = self.pick(t, None) else {
                    return (ran, None);
                };
                let r = *self
                    .worker(t)
                    .call(Cmd::Quiescent)
                    .downcast::<bool>()
                    .unwrap();
                let cpu = self.th[t].explicit.unwrap();
                let expected = self.section(cpu);
                assert_eq!(
                    r, expected,
                    "slot {cpu}: quiescent() ran work: {r}, model: {expected}"
                );
                if r {
                    ran.push(cpu);
                }
            }
            Life::Exit { t } => {
                let Some(w) = self.workers[t].take() else {
                    return (ran, None);
                };
                w.exit();
                let th = std::mem::take(&mut self.th[t]);
                for cpu in [th.explicit, th.implicit].into_iter().flatten() {
                    if self.free_slot(cpu) {
                        ran.push(cpu);
                    }
                }
                return (ran, Some(th));
            }
        }
        (ran, None)
    }

    fn exit_all(&mut self) -> Vec<(Vec<usize>, Option<ThreadM>)> {
        (0..THREADS).map(|t| self.life(&Life::Exit { t })).collect()
    }

    fn check(&self) {
        let d = &self.domain;
        for c in 0..SLOTS {
            let owner = self.owner_of[c];
            assert_eq!(d.is_owned(c).unwrap(), owner.is_some(), "slot {c}: owned");
            let parked = owner.is_some_and(|t| self.th[t].explicit == Some(c) && self.th[t].parked);
            assert_eq!(d.is_offline(c).unwrap(), parked, "slot {c}: offline");
            if self.modes[c] != SlotMode::Queue {
                assert_eq!(
                    d.stats(c).unwrap().fences(),
                    0,
                    "slot {c} ({:?}) was signalled",
                    self.modes[c]
                );
            }
        }
        assert_eq!(d.total_stats().works_panicked, 0, "a drain work panicked");
    }
}

/// 48 cases, or `PROPTEST_CASES` for a longer hunt.
fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

#[cfg(feature = "qpw")]
fn auto() -> Mode {
    // Slot 1 isolated: `remote`; slots 0 and 2: `queue`.
    Mode::Auto(Some(vec![1]))
}

// ------------------------------------------------------------------- slab

const OBJ: usize = 24;
const WORDS: usize = OBJ / 8;

#[derive(Debug, Clone)]
enum SlabOp {
    Life(Life),
    Alloc { t: usize },
    Free { t: usize, i: usize },
    FreeRemote { t: usize, i: usize },
    AllocBulk { t: usize, n: usize },
    FreeBulk { t: usize, i: usize, n: usize },
    AllocShared,
    FreeShared { i: usize },
    FlushAll,
    Shrink,
}

fn slab_op() -> impl Strategy<Value = SlabOp> {
    let t = 0..THREADS;
    let i = any::<usize>();
    prop_oneof![
        6 => life().prop_map(SlabOp::Life),
        6 => t.clone().prop_map(|t| SlabOp::Alloc { t }),
        3 => (t.clone(), i).prop_map(|(t, i)| SlabOp::Free { t, i }),
        3 => (t.clone(), i).prop_map(|(t, i)| SlabOp::FreeRemote { t, i }),
        2 => (t.clone(), 1usize..10).prop_map(|(t, n)| SlabOp::AllocBulk { t, n }),
        2 => (t, i, 1usize..10).prop_map(|(t, i, n)| SlabOp::FreeBulk { t, i, n }),
        1 => Just(SlabOp::AllocShared),
        1 => i.prop_map(|i| SlabOp::FreeShared { i }),
        2 => Just(SlabOp::FlushAll),
        1 => Just(SlabOp::Shrink),
    ]
}

struct SlabObj {
    tag: u64,
    /// The slot that allocated it (`None`: the shared path).
    slot: Option<usize>,
}

struct SlabCase<C: Config> {
    h: Harness<C>,
    cache: Arc<KmemCache<C>>,
    live: BTreeMap<usize, SlabObj>,
    next_tag: u64,
}

fn fill_words(p: usize, tag: u64) {
    for w in 0..WORDS {
        // SAFETY: a live object of OBJ bytes, 8-aligned, owned by the test.
        unsafe { (p as *mut u64).add(w).write(tag) };
    }
}

fn check_words(p: usize, tag: u64) {
    for w in 0..WORDS {
        // SAFETY: as in fill_words.
        let v = unsafe { (p as *const u64).add(w).read() };
        assert_eq!(
            v, tag,
            "object {p:#x} word {w} overwritten: live objects overlap or one was handed out twice"
        );
    }
}

impl<C: Config> SlabCase<C> {
    fn new(mode: Mode) -> Self {
        let h = Harness::<C>::new(mode);
        // Small sheaves and depot: slow paths, the depot and the slabs all
        // see traffic within a short sequence.
        let cache = KmemCache::builder(&h.domain, OBJ)
            .sheaf_capacity(4)
            .depot_max_full(2)
            .max_bytes(8 << 20)
            .build()
            .unwrap();
        SlabCase {
            h,
            cache: Arc::new(cache),
            live: BTreeMap::new(),
            next_tag: 1,
        }
    }

    fn insert(&mut self, p: usize, slot: Option<usize>) {
        assert_eq!(p % 8, 0, "object {p:#x} misaligned");
        if let Some((&q, _)) = self.live.range(..=p).next_back() {
            assert!(q + OBJ <= p, "object {p:#x} overlaps live {q:#x}");
        }
        if let Some((&q, _)) = self.live.range(p..).next() {
            assert!(p + OBJ <= q, "object {p:#x} overlaps live {q:#x}");
        }
        let tag = self.next_tag.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.next_tag += 1;
        fill_words(p, tag);
        self.live.insert(p, SlabObj { tag, slot });
    }

    /// Removes the `i`-th (modulo) live object for which `want` holds (any
    /// if none does), checking its pattern.
    fn take(&mut self, i: usize, want: impl Fn(&SlabObj) -> bool) -> Option<usize> {
        if self.live.is_empty() {
            return None;
        }
        let fit: Vec<usize> = self
            .live
            .iter()
            .filter(|(_, o)| want(o))
            .map(|(&p, _)| p)
            .collect();
        let p = if fit.is_empty() {
            *self.live.keys().nth(i % self.live.len()).unwrap()
        } else {
            fit[i % fit.len()]
        };
        let o = self.live.remove(&p).unwrap();
        check_words(p, o.tag);
        Some(p)
    }

    fn free(&mut self, t: usize, p: usize) {
        let cpu = self.h.th[t].explicit.unwrap();
        let cache = self.cache.clone();
        self.h.job(t, move |o| {
            let p = NonNull::new(p as *mut u8).unwrap();
            // SAFETY: a live object of this cache, freed once (the model
            // removed it).
            unsafe { cache.free(o.expect("bound"), p) }
        });
        self.h.section(cpu);
    }

    fn apply(&mut self, op: &SlabOp) {
        match *op {
            SlabOp::Life(ref l) => {
                self.h.life(l);
            }
            SlabOp::Alloc { t } => {
                let Some(t) = self.h.pick(t, None) else {
                    return;
                };
                let cpu = self.h.th[t].explicit.unwrap();
                let cache = self.cache.clone();
                let p = self.h.job(t, move |o| {
                    cache.alloc(o.expect("bound")).map(|p| p.as_ptr() as usize)
                });
                self.h.section(cpu);
                self.insert(p.expect("alloc: out of memory"), Some(cpu));
            }
            SlabOp::Free { t, i } => {
                let Some(t) = self.h.pick(t, None) else {
                    return;
                };
                let Some(p) = self.take(i, |_| true) else {
                    return;
                };
                self.free(t, p);
            }
            SlabOp::FreeRemote { t, i } => {
                let Some(t) = self.h.pick(t, None) else {
                    return;
                };
                let cpu = self.h.th[t].explicit;
                let Some(p) = self.take(i, |o| o.slot.is_some() && o.slot != cpu) else {
                    return;
                };
                self.free(t, p);
            }
            SlabOp::AllocBulk { t, n } => {
                let Some(t) = self.h.pick(t, None) else {
                    return;
                };
                let cpu = self.h.th[t].explicit.unwrap();
                let cache = self.cache.clone();
                let (k, ps) = self.h.job(t, move |o| {
                    let mut out = vec![std::ptr::null_mut(); n];
                    let k = cache.alloc_bulk(o.expect("bound"), &mut out);
                    (k, out.into_iter().map(|p| p as usize).collect::<Vec<_>>())
                });
                self.h.section(cpu);
                assert_eq!(k, n, "alloc_bulk: out of memory");
                for p in ps {
                    self.insert(p, Some(cpu));
                }
            }
            SlabOp::FreeBulk { t, i, n } => {
                let Some(t) = self.h.pick(t, None) else {
                    return;
                };
                let cpu = self.h.th[t].explicit.unwrap();
                let ps: Vec<usize> = (0..n)
                    .filter_map(|k| self.take(i.wrapping_add(k), |_| true))
                    .collect();
                let cache = self.cache.clone();
                self.h.job(t, move |o| {
                    let ps: Vec<NonNull<u8>> = ps
                        .iter()
                        .map(|&p| NonNull::new(p as *mut u8).unwrap())
                        .collect();
                    // SAFETY: live objects of this cache, distinct, freed once.
                    unsafe { cache.free_bulk(o.expect("bound"), &ps) }
                });
                self.h.section(cpu);
            }
            SlabOp::AllocShared => {
                let p = self
                    .cache
                    .alloc_shared()
                    .expect("alloc_shared: out of memory");
                self.insert(p.as_ptr() as usize, None);
            }
            SlabOp::FreeShared { i } => {
                let Some(p) = self.take(i, |_| true) else {
                    return;
                };
                // SAFETY: a live object of this cache, freed once.
                unsafe { self.cache.free_shared(NonNull::new(p as *mut u8).unwrap()) };
            }
            SlabOp::FlushAll => {
                let r = self.cache.flush_all();
                self.h.drained(r, None, "flush_all");
            }
            SlabOp::Shrink => {
                let r = self.cache.shrink().map(|_| ());
                let ok = r.is_ok();
                self.h.drained(r, None, "shrink");
                if ok {
                    assert_eq!(
                        self.cache.stats().objects_out_of_slabs,
                        self.live.len(),
                        "after a full shrink exactly the live objects are out of their slabs"
                    );
                }
            }
        }
    }

    fn check(&self) {
        self.h.check();
        for (&p, o) in &self.live {
            check_words(p, o.tag);
        }
        let out = self.cache.stats().objects_out_of_slabs;
        assert!(
            out >= self.live.len(),
            "{out} objects out of slabs, {} live",
            self.live.len()
        );
    }

    fn finish(mut self) {
        self.h.exit_all();
        self.check();
        assert_eq!(
            self.cache.flush_all(),
            Ok(()),
            "flush_all with no owner left"
        );
        let mut me = self.h.domain.bind_unpinned(0).unwrap();
        for (p, o) in std::mem::take(&mut self.live) {
            check_words(p, o.tag);
            // SAFETY: live, freed once.
            unsafe {
                self.cache
                    .free(&mut me, NonNull::new(p as *mut u8).unwrap())
            };
        }
        drop(me);
        assert!(self.cache.shrink().is_ok());
        assert_eq!(self.cache.stats().objects_out_of_slabs, 0);
        let cache = Arc::try_unwrap(self.cache).expect("no job holds the cache");
        assert_eq!(
            cache.destroy(),
            Ok(()),
            "destroy after every object was freed"
        );
    }
}

fn run_slab<C: Config>(mode: Mode, ops: &[SlabOp]) {
    let mut case = SlabCase::<C>::new(mode);
    for op in ops {
        case.apply(op);
        case.check();
    }
    case.finish();
}

// ----------------------------------------------------------------- kmalloc

/// Request sizes: zero, class edges, the largest class, just above it, and
/// mapped sizes.
const SIZES: [usize; 15] = [
    0, 1, 8, 24, 96, 100, 192, 193, 1000, 4096, 8191, 8192, 8193, 20_000, 300_000,
];
const ALIGNS: [usize; 6] = [8, 16, 64, 4096, 8192, 16384];

#[derive(Debug, Clone)]
enum KmOp {
    Life(Life),
    Kmalloc { t: usize, s: usize },
    Alloc { t: usize, s: usize, a: usize },
    Kfree { t: usize, i: usize },
    Krealloc { t: usize, i: usize, s: usize },
    KmallocBulk { t: usize, s: usize, n: usize },
    KfreeBulk { t: usize, i: usize, n: usize },
    LocalAlloc { t: usize, s: usize },
    LocalFree { t: usize, i: usize },
    LocalRealloc { t: usize, i: usize, s: usize },
    UnbindLocal { t: usize },
    QuiescentLocal { t: usize },
    FlushAll,
    Shrink,
}

fn km_op() -> impl Strategy<Value = KmOp> {
    let t = 0..THREADS;
    let s = 0..SIZES.len();
    let i = any::<usize>();
    prop_oneof![
        6 => life().prop_map(KmOp::Life),
        4 => (t.clone(), s.clone()).prop_map(|(t, s)| KmOp::Kmalloc { t, s }),
        2 => (t.clone(), s.clone(), 0..ALIGNS.len()).prop_map(|(t, s, a)| KmOp::Alloc { t, s, a }),
        3 => (t.clone(), i).prop_map(|(t, i)| KmOp::Kfree { t, i }),
        2 => (t.clone(), i, s.clone()).prop_map(|(t, i, s)| KmOp::Krealloc { t, i, s }),
        1 => (t.clone(), s.clone(), 1usize..6).prop_map(|(t, s, n)| KmOp::KmallocBulk { t, s, n }),
        1 => (t.clone(), i, 1usize..6).prop_map(|(t, i, n)| KmOp::KfreeBulk { t, i, n }),
        3 => (t.clone(), s.clone()).prop_map(|(t, s)| KmOp::LocalAlloc { t, s }),
        2 => (t.clone(), i).prop_map(|(t, i)| KmOp::LocalFree { t, i }),
        1 => (t.clone(), i, s).prop_map(|(t, i, s)| KmOp::LocalRealloc { t, i, s }),
        1 => t.clone().prop_map(|t| KmOp::UnbindLocal { t }),
        1 => t.prop_map(|t| KmOp::QuiescentLocal { t }),
        2 => Just(KmOp::FlushAll),
        1 => Just(KmOp::Shrink),
    ]
}

/// The class serving `size` bytes at `align` (the documented rule: the
/// smallest class whose size is big enough and whose largest power-of-two
/// divisor covers the alignment), or `None`: mapped directly.
fn class_for(size: usize, align: usize) -> Option<usize> {
    if size > KMALLOC_MAX_CACHE_SIZE {
        return None;
    }
    (size_class(size).expect("a slab-sized request")..NCLASSES).find(|&c| {
        let s = KMALLOC_SIZES[c];
        s & s.wrapping_neg() >= align
    })
}

#[derive(Debug, Clone, Copy)]
struct KObj {
    size: usize,
    align: usize,
    byte: u8,
    class: Option<usize>,
}

struct KmCase<C: Config> {
    h: Harness<C>,
    km: Arc<Kmalloc<C>>,
    live: BTreeMap<usize, KObj>,
    next: u64,
    /// Implicit bindings released so far (the instance's binding generation).
    gen: u64,
}

fn bytes_of(p: usize, n: usize) -> &'static [u8] {
    // SAFETY: the caller passes a live allocation of at least `n` bytes,
    // not written while the slice is used.
    unsafe { std::slice::from_raw_parts(p as *const u8, n) }
}

fn check_bytes(p: usize, n: usize, byte: u8, what: &str) {
    if let Some(k) = bytes_of(p, n).iter().position(|&b| b != byte) {
        panic!(
            "{what}: byte {k} of {p:#x} ({n} bytes) is {:#x}, not {byte:#x}: overwritten",
            bytes_of(p, n)[k]
        );
    }
}

impl<C: Config> KmCase<C> {
    fn new(mode: Mode) -> Self {
        let h = Harness::<C>::new(mode);
        let km = Kmalloc::builder()
            .domain(&h.domain)
            .class_bytes(4 << 20)
            .build()
            .unwrap();
        KmCase {
            h,
            km: Arc::new(km),
            live: BTreeMap::new(),
            next: 0,
            gen: 0,
        }
    }

    fn insert(&mut self, p: usize, size: usize, align: usize) {
        let class = class_for(size, align);
        assert_eq!(p % align, 0, "{p:#x} is not aligned to {align}");
        // SAFETY: just allocated from this instance.
        let usable = unsafe { self.km.ksize(p as *mut u8) };
        match class {
            Some(c) => assert_eq!(
                usable, KMALLOC_SIZES[c],
                "ksize of a {size}-byte object aligned to {align}"
            ),
            None => assert!(
                usable >= size.max(1) && usable % 4096 == 0 && usable < size.max(1) + (64 << 10),
                "ksize {usable} of a mapped {size}-byte object"
            ),
        }
        let end = p + size.max(1);
        if let Some((&q, o)) = self.live.range(..=p).next_back() {
            assert!(
                q + o.size.max(1) <= p,
                "{p:#x} overlaps live {q:#x} ({} bytes)",
                o.size
            );
        }
        if let Some((&q, _)) = self.live.range(p..).next() {
            assert!(end <= q, "{p:#x} ({size} bytes) overlaps live {q:#x}");
        }
        self.next += 1;
        let byte = (self.next % 251) as u8 + 1;
        // SAFETY: a live allocation of `size` bytes, owned by the test.
        unsafe { std::ptr::write_bytes(p as *mut u8, byte, size) };
        self.live.insert(
            p,
            KObj {
                size,
                align,
                byte,
                class,
            },
        );
    }

    /// Removes the `i`-th (modulo) live allocation, checking its contents.
    fn take(&mut self, i: usize) -> Option<(usize, KObj)> {
        let p = *self.live.keys().nth(i % self.live.len().max(1))?;
        let o = self.live.remove(&p).unwrap();
        check_bytes(p, o.size, o.byte, "before its free");
        Some((p, o))
    }

    /// Thread `t` used its implicit binding for a class object: the binding
    /// is made on first use (predicted: the lowest free slot, so an exited
    /// thread's warm slot is reused first; none if the thread owns a slot explicitly or none is free,
    /// and then not retried until an implicit binding is released), and
    /// the call runs a local section on its slot.
    fn touch(&mut self, t: usize) {
        if let Some(c) = self.h.th[t].implicit {
            self.h.section(c);
            return;
        }
        if self.h.th[t].failed_gen == Some(self.gen) {
            return; // the shared path, no new attempt
        }
        let free = (0..SLOTS).find(|&c| self.h.owner_of[c].is_none());
        match free {
            Some(c) if self.h.th[t].explicit.is_none() => {
                self.h.th[t].implicit = Some(c);
                self.h.th[t].failed_gen = None;
                self.h.owner_of[c] = Some(t);
                self.h.section(c);
            }
            _ => self.h.th[t].failed_gen = Some(self.gen),
        }
    }

    fn life(&mut self, l: &Life) {
        let (_, exited) = self.h.life(l);
        if exited.is_some_and(|th| th.implicit.is_some()) {
            self.gen += 1;
        }
    }

    /// Whether a reallocation keeps an object of class `old` where it is:
    /// same class (large objects may be remapped; not predicted).
    fn kept_in_class(old: &KObj, new_size: usize) -> bool {
        old.class.is_some() && class_for(new_size, old.align) == old.class
    }

    fn after_realloc(&mut self, p: usize, old: KObj, np: usize, new_size: usize) {
        if Self::kept_in_class(&old, new_size) {
            assert_eq!(np, p, "a realloc within the class moved the object");
        }
        check_bytes(np, old.size.min(new_size), old.byte, "after realloc");
        self.insert(np, new_size, old.align);
    }

    fn apply(&mut self, op: &KmOp) {
        match *op {
            KmOp::Life(ref l) => self.life(l),
            KmOp::Kmalloc { t, s } => {
                let Some(t) = self.h.pick(t, None) else {
                    return;
                };
                let (cpu, size, km) = (self.h.th[t].explicit.unwrap(), SIZES[s], self.km.clone());
                let p = self.h.job(t, move |o| {
                    km.kmalloc(o.expect("bound"), size)
                        .map(|p| p.as_ptr() as usize)
                });
                if size <= KMALLOC_MAX_CACHE_SIZE {
                    self.h.section(cpu);
                }
                self.insert(p.expect("kmalloc: out of memory"), size, 8);
            }
            KmOp::Alloc { t, s, a } => {
                let Some(t) = self.h.pick(t, None) else {
                    return;
                };
                let (cpu, size, align, km) = (
                    self.h.th[t].explicit.unwrap(),
                    SIZES[s],
                    ALIGNS[a],
                    self.km.clone(),
                );
                let layout = Layout::from_size_align(size, align).unwrap();
                let p = self.h.job(t, move |o| {
                    km.alloc(o.expect("bound"), layout)
                        .map(|p| p.as_ptr() as usize)
                });
                if class_for(size, align).is_some() {
                    self.h.section(cpu);
                }
                self.insert(p.expect("alloc: out of memory"), size, align);
            }
            KmOp::Kfree { t, i } => {
                let Some(t) = self.h.pick(t, None) else {
                    return;
                };
                let Some((p, o)) = self.take(i) else { return };
                let (cpu, km) = (self.h.th[t].explicit.unwrap(), self.km.clone());
                // SAFETY: live, freed once.
                self.h.job(t, move |ow| unsafe {
                    km.kfree(ow.expect("bound"), p as *mut u8)
                });
                if o.class.is_some() {
                    self.h.section(cpu);
                }
            }
            KmOp::Krealloc { t, i, s } => {
                let Some(t) = self.h.pick(t, None) else {
                    return;
                };
                let Some(&p) = self.live.keys().nth(i % self.live.len().max(1)) else {
                    return;
                };
                let old = self.live.remove(&p).unwrap();
                check_bytes(p, old.size, old.byte, "before realloc");
                let (cpu, size, km) = (self.h.th[t].explicit.unwrap(), SIZES[s], self.km.clone());
                let align = old.align;
                let np = self.h.job(t, move |o| {
                    // SAFETY: live, allocated with `align`; not used after.
                    unsafe { km.realloc(o.expect("bound"), p as *mut u8, align, size) }
                        .map(|p| p.as_ptr() as usize)
                });
                let np = np.expect("realloc: out of memory");
                if !Self::kept_in_class(&old, size)
                    && (old.class.is_some() || class_for(size, align).is_some())
                {
                    self.h.section(cpu);
                }
                self.after_realloc(p, old, np, size);
            }
            KmOp::KmallocBulk { t, s, n } => {
                let Some(t) = self.h.pick(t, None) else {
                    return;
                };
                let (cpu, size, km) = (self.h.th[t].explicit.unwrap(), SIZES[s], self.km.clone());
                let (k, ps) = self.h.job(t, move |o| {
                    let mut out = vec![std::ptr::null_mut(); n];
                    let k = km.kmalloc_bulk(o.expect("bound"), size, &mut out);
                    (k, out.into_iter().map(|p| p as usize).collect::<Vec<_>>())
                });
                if size <= KMALLOC_MAX_CACHE_SIZE {
                    self.h.section(cpu);
                }
                assert_eq!(k, n, "kmalloc_bulk: out of memory");
                for p in ps {
                    self.insert(p, size, 8);
                }
            }
            KmOp::KfreeBulk { t, i, n } => {
                let Some(t) = self.h.pick(t, None) else {
                    return;
                };
                let ps: Vec<usize> = (0..n)
                    .filter_map(|k| self.take(i.wrapping_add(k)).map(|(p, _)| p))
                    .collect();
                let (cpu, km) = (self.h.th[t].explicit.unwrap(), self.km.clone());
                self.h.job(t, move |o| {
                    let ps: Vec<*mut u8> = ps.iter().map(|&p| p as *mut u8).collect();
                    // SAFETY: live, distinct, freed once.
                    unsafe { km.kfree_bulk(o.expect("bound"), &ps) }
                });
                self.h.section(cpu); // kfree_bulk always opens a section
            }
            KmOp::LocalAlloc { t, s } => {
                let (size, km) = (SIZES[s], self.km.clone());
                let p = self.h.job(t, move |_| {
                    km.kmalloc_local(size).map(|p| p.as_ptr() as usize)
                });
                if size <= KMALLOC_MAX_CACHE_SIZE {
                    self.touch(t);
                }
                self.insert(p.expect("kmalloc_local: out of memory"), size, 8);
            }
            KmOp::LocalFree { t, i } => {
                let Some((p, o)) = self.take(i) else { return };
                let km = self.km.clone();
                // SAFETY: live, freed once.
                self.h
                    .job(t, move |_| unsafe { km.kfree_local(p as *mut u8) });
                if o.class.is_some() {
                    self.touch(t);
                }
            }
            KmOp::LocalRealloc { t, i, s } => {
                let Some(&p) = self.live.keys().nth(i % self.live.len().max(1)) else {
                    return;
                };
                let old = self.live.remove(&p).unwrap();
                check_bytes(p, old.size, old.byte, "before realloc");
                let (size, align, km) = (SIZES[s], old.align, self.km.clone());
                let np = self.h.job(t, move |_| {
                    // SAFETY: live, allocated with `align`; not used after.
                    unsafe { km.realloc_local(p as *mut u8, align, size) }
                        .map(|p| p.as_ptr() as usize)
                });
                let np = np.expect("realloc_local: out of memory");
                if !Self::kept_in_class(&old, size) {
                    // Allocate anew, then free the old one.
                    if class_for(size, align).is_some() {
                        self.touch(t);
                    }
                    if old.class.is_some() {
                        self.touch(t);
                    }
                }
                self.after_realloc(p, old, np, size);
            }
            KmOp::UnbindLocal { t } => {
                let km = self.km.clone();
                let r = self.h.job(t, move |_| km.unbind_local());
                let had = self.h.th[t].implicit.take();
                assert_eq!(r, had.is_some(), "thread {t}: unbind_local");
                if let Some(c) = had {
                    self.h.free_slot(c);
                    self.gen += 1;
                }
            }
            KmOp::QuiescentLocal { t } => {
                let km = self.km.clone();
                let r = self.h.job(t, move |_| km.quiescent_local());
                let expected = self.h.th[t].implicit.is_some_and(|c| self.h.section(c));
                assert_eq!(r, expected, "thread {t}: quiescent_local");
            }
            KmOp::FlushAll => {
                let r = self.km.flush_all();
                self.h.drained(r, None, "flush_all");
            }
            KmOp::Shrink => {
                let r = self.km.shrink().map(|_| ());
                let ok = r.is_ok();
                self.h.drained(r, None, "shrink");
                if ok {
                    let st = self.km.stats();
                    for (c, (cs, size)) in st.classes.iter().zip(KMALLOC_SIZES).enumerate() {
                        assert_eq!(
                            cs.objects_out_of_slabs,
                            self.live.values().filter(|o| o.class == Some(c)).count(),
                            "class {size}: after a full shrink exactly the live objects are out of slabs",
                        );
                    }
                }
            }
        }
    }

    fn check(&self) {
        self.h.check();
        for (&p, o) in &self.live {
            let n = o.size.min(16);
            check_bytes(p, n, o.byte, "head");
            check_bytes(p + o.size - n, n, o.byte, "tail");
        }
        let st = self.km.stats();
        let large = self.live.values().filter(|o| o.class.is_none()).count() as u64;
        assert_eq!(
            st.large_allocs - st.large_frees,
            large,
            "live mapped allocations"
        );
        for (c, (cs, size)) in st.classes.iter().zip(KMALLOC_SIZES).enumerate() {
            let live = self.live.values().filter(|o| o.class == Some(c)).count();
            assert!(
                cs.objects_out_of_slabs >= live,
                "class {size}: fewer out of slabs than live"
            );
        }
    }

    fn finish(mut self) {
        for (_, exited) in self.h.exit_all() {
            if exited.is_some_and(|th| th.implicit.is_some()) {
                self.gen += 1;
            }
        }
        self.check();
        assert_eq!(self.km.flush_all(), Ok(()), "flush_all with no owner left");
        let mut me = self.h.domain.bind_unpinned(0).unwrap();
        for (p, o) in std::mem::take(&mut self.live) {
            check_bytes(p, o.size, o.byte, "at the end");
            // SAFETY: live, freed once.
            unsafe { self.km.kfree(&mut me, p as *mut u8) };
        }
        drop(me);
        assert!(self.km.shrink().is_ok());
        let st = self.km.stats();
        assert!(
            st.classes.iter().all(|c| c.objects_out_of_slabs == 0),
            "objects left out of slabs"
        );
        assert_eq!(st.large_allocs, st.large_frees);
        let km = Arc::try_unwrap(self.km).expect("no job holds the instance");
        assert_eq!(
            km.destroy(),
            Ok(()),
            "destroy after every allocation was freed"
        );
    }
}

fn run_kmalloc<C: Config>(mode: Mode, ops: &[KmOp]) {
    let mut case = KmCase::<C>::new(mode);
    for op in ops {
        case.apply(op);
        case.check();
    }
    case.finish();
}

// --------------------------------------------------------------------- lru

const LRU_BATCH: usize = 3;

#[derive(Debug, Clone)]
enum LruOp {
    Life(Life),
    Add { t: usize, n: usize },
    DrainLocal { t: usize },
    DrainAll,
    Take,
}

fn lru_op() -> impl Strategy<Value = LruOp> {
    let t = 0..THREADS;
    prop_oneof![
        6 => life().prop_map(LruOp::Life),
        8 => (t.clone(), 1usize..5).prop_map(|(t, n)| LruOp::Add { t, n }),
        2 => t.prop_map(|t| LruOp::DrainLocal { t }),
        3 => Just(LruOp::DrainAll),
        1 => Just(LruOp::Take),
    ]
}

struct LruCase<C: Config> {
    h: Harness<C>,
    lru: Arc<Lru<u64, C>>,
    /// Per slot: its batch.
    batch: Vec<Vec<u64>>,
    /// Per slot: it has its chunks (made on its first add).
    chunks: Vec<bool>,
    /// Items handed off, not yet folded into the shared list.
    handoff: Vec<u64>,
    shared: Vec<u64>,
    added: Vec<u64>,
    taken: Vec<u64>,
    spills: u64,
    drained: u64,
}

fn sorted(mut v: Vec<u64>) -> Vec<u64> {
    v.sort_unstable();
    v
}

impl<C: Config> LruCase<C> {
    fn new(mode: Mode) -> Self {
        let h = Harness::<C>::new(mode);
        let lru = Lru::with_batch(&h.domain, LRU_BATCH).unwrap();
        LruCase {
            h,
            lru: Arc::new(lru),
            batch: vec![Vec::new(); SLOTS],
            chunks: vec![false; SLOTS],
            handoff: Vec::new(),
            shared: Vec::new(),
            added: Vec::new(),
            taken: Vec::new(),
            spills: 0,
            drained: 0,
        }
    }

    /// The drain work of slot `cpu` ran: a non-empty batch is handed off.
    fn drain_slot(&mut self, cpu: usize) {
        if !self.batch[cpu].is_empty() {
            self.handoff.append(&mut self.batch[cpu]);
            self.drained += 1;
        }
    }

    fn fold(&mut self) {
        self.shared.append(&mut self.handoff);
    }

    /// A section on `cpu` ends: its pending drain runs.
    fn section_end(&mut self, cpu: usize) {
        if self.h.section(cpu) {
            self.drain_slot(cpu);
        }
    }

    fn add(&mut self, cpu: usize, item: u64) {
        if !self.chunks[cpu] {
            // The first add makes the chunks in sections of their own,
            // before pushing: pending work runs there, on an empty batch.
            self.chunks[cpu] = true;
            self.h.section(cpu);
        }
        self.added.push(item);
        self.batch[cpu].push(item);
        let spilled = self.batch[cpu].len() == LRU_BATCH;
        if spilled {
            self.handoff.append(&mut self.batch[cpu]);
            self.spills += 1;
        }
        self.section_end(cpu);
        if spilled {
            self.fold();
        }
    }

    fn apply(&mut self, op: &LruOp) {
        match *op {
            LruOp::Life(ref l) => {
                for cpu in self.h.life(l).0 {
                    self.drain_slot(cpu);
                }
            }
            LruOp::Add { t, n } => {
                let Some(t) = self.h.pick(t, None) else {
                    return;
                };
                let cpu = self.h.th[t].explicit.unwrap();
                let first = self.added.len() as u64;
                let items: Vec<u64> = (first..first + n as u64).collect();
                let lru = self.lru.clone();
                let it = items.clone();
                self.h.job(t, move |o| {
                    let o = o.expect("bound");
                    for i in it {
                        lru.add(o, i);
                    }
                });
                for i in items {
                    self.add(cpu, i);
                }
            }
            LruOp::DrainLocal { t } => {
                let Some(t) = self.h.pick(t, None) else {
                    return;
                };
                let cpu = self.h.th[t].explicit.unwrap();
                let lru = self.lru.clone();
                self.h.job(t, move |o| lru.drain_local(o.expect("bound")));
                self.drain_slot(cpu);
                self.section_end(cpu);
                self.fold();
            }
            LruOp::DrainAll => {
                let r = self.lru.lru_add_drain_all();
                for cpu in self.h.drained(r, None, "lru_add_drain_all") {
                    self.drain_slot(cpu);
                }
                self.fold();
                if self.h.stuck(None).is_empty() {
                    assert!(self.batch.iter().all(Vec::is_empty));
                }
            }
            LruOp::Take => {
                let got = sorted(self.lru.take_shared());
                assert_eq!(got, sorted(std::mem::take(&mut self.shared)), "take_shared");
                self.taken.extend(got);
            }
        }
    }

    fn check(&self) {
        self.h.check();
        let list = sorted(self.lru.with_shared(|v| v.clone()));
        assert_eq!(list, sorted(self.shared.clone()), "the shared list");
        let st = self.lru.stats();
        assert_eq!(st.spills, self.spills, "spills");
        assert_eq!(st.drained_batches, self.drained, "batches drained");
    }

    fn finish(mut self) {
        for (ran, _) in self.h.exit_all() {
            for cpu in ran {
                self.drain_slot(cpu);
            }
        }
        self.check();
        assert_eq!(
            self.lru.lru_add_drain_all(),
            Ok(()),
            "drain with no owner left"
        );
        for cpu in 0..SLOTS {
            self.drain_slot(cpu);
        }
        self.fold();
        self.check();
        let mut all = self.lru.take_shared();
        all.extend(self.taken);
        assert_eq!(
            sorted(all),
            sorted(self.added),
            "every item added is in the list once"
        );
    }
}

fn run_lru<C: Config>(mode: Mode, ops: &[LruOp]) {
    let mut case = LruCase::<C>::new(mode);
    for op in ops {
        case.apply(op);
        case.check();
    }
    case.finish();
}

// ------------------------------------------------------------------- stock

const LIMIT: u64 = 100;
const STOCK_BATCH: u64 = 8;

#[derive(Debug, Clone)]
enum StockOp {
    Life(Life),
    Charge { t: usize, n: u64 },
    Uncharge { t: usize, k: u64 },
    DrainLocal { t: usize },
    ChargeOrDrain { t: usize, n: u64 },
    DrainAll,
}

fn stock_op() -> impl Strategy<Value = StockOp> {
    let t = 0..THREADS;
    let n = 0u64..40;
    prop_oneof![
        6 => life().prop_map(StockOp::Life),
        6 => (t.clone(), n.clone()).prop_map(|(t, n)| StockOp::Charge { t, n }),
        4 => (t.clone(), any::<u64>()).prop_map(|(t, k)| StockOp::Uncharge { t, k }),
        1 => t.clone().prop_map(|t| StockOp::DrainLocal { t }),
        2 => (t, n).prop_map(|(t, n)| StockOp::ChargeOrDrain { t, n }),
        2 => Just(StockOp::DrainAll),
    ]
}

struct StockCase<C: Config> {
    h: Harness<C>,
    stock: Arc<Stock<C>>,
    stocks: Vec<u64>,
    usage: u64,
    outstanding: u64,
    failures: u64,
}

impl<C: Config> StockCase<C> {
    fn new(mode: Mode) -> Self {
        let h = Harness::<C>::new(mode);
        let stock = Stock::with_batch(&h.domain, LIMIT, STOCK_BATCH);
        StockCase {
            h,
            stock: Arc::new(stock),
            stocks: vec![0; SLOTS],
            usage: 0,
            outstanding: 0,
            failures: 0,
        }
    }

    /// The drain work of slot `cpu` ran: its stock goes back.
    fn drain_slot(&mut self, cpu: usize) {
        self.usage -= std::mem::take(&mut self.stocks[cpu]);
    }

    fn section_end(&mut self, cpu: usize) {
        if self.h.section(cpu) {
            self.drain_slot(cpu);
        }
    }

    /// `try_charge`: from the stock, else a batch ahead, else exactly what
    /// is missing, against the limit.
    fn charge(&mut self, cpu: usize, n: u64) -> bool {
        if n == 0 {
            return true; // no section at all
        }
        let s = self.stocks[cpu];
        let ok = if s >= n {
            self.stocks[cpu] = s - n;
            true
        } else {
            let missing = n - s;
            let ahead = missing.max(STOCK_BATCH);
            if self.usage + ahead <= LIMIT {
                self.usage += ahead;
                self.stocks[cpu] = ahead - missing;
                true
            } else if ahead != missing && self.usage + missing <= LIMIT {
                self.usage += missing;
                self.stocks[cpu] = 0;
                true
            } else {
                self.failures += 1;
                false
            }
        };
        if ok {
            self.outstanding += n;
        }
        self.section_end(cpu);
        ok
    }

    fn apply(&mut self, op: &StockOp) {
        match *op {
            StockOp::Life(ref l) => {
                for cpu in self.h.life(l).0 {
                    self.drain_slot(cpu);
                }
            }
            StockOp::Charge { t, n } => {
                let Some(t) = self.h.pick(t, None) else {
                    return;
                };
                let cpu = self.h.th[t].explicit.unwrap();
                let stock = self.stock.clone();
                let r = self.h.job(t, move |o| stock.charge(o.expect("bound"), n));
                let expected = self.charge(cpu, n);
                assert_eq!(r.is_ok(), expected, "charge {n} on slot {cpu}: {r:?}");
                if let Err(e) = r {
                    assert_eq!((e.requested, e.limit), (n, LIMIT));
                }
            }
            StockOp::Uncharge { t, k } => {
                let Some(t) = self.h.pick(t, None) else {
                    return;
                };
                let cpu = self.h.th[t].explicit.unwrap();
                let n = k % (self.outstanding + 1);
                let stock = self.stock.clone();
                let r = self.h.job(t, move |o| stock.uncharge(o.expect("bound"), n));
                assert_eq!(
                    r,
                    Ok(()),
                    "uncharge {n} of {} outstanding",
                    self.outstanding
                );
                if n > 0 {
                    let total = self.stocks[cpu] + n;
                    if total <= STOCK_BATCH {
                        self.stocks[cpu] = total;
                    } else {
                        self.usage -= total;
                        self.stocks[cpu] = 0;
                    }
                    self.outstanding -= n;
                    self.section_end(cpu);
                }
            }
            StockOp::DrainLocal { t } => {
                let Some(t) = self.h.pick(t, None) else {
                    return;
                };
                let cpu = self.h.th[t].explicit.unwrap();
                let stock = self.stock.clone();
                self.h.job(t, move |o| stock.drain_local(o.expect("bound")));
                self.drain_slot(cpu);
                self.section_end(cpu);
            }
            StockOp::ChargeOrDrain { t, n } => {
                let Some(t) = self.h.pick(t, None) else {
                    return;
                };
                let cpu = self.h.th[t].explicit.unwrap();
                let stock = self.stock.clone();
                let r = self
                    .h
                    .job(t, move |o| stock.charge_or_drain(o.expect("bound"), n));
                let mut expected = self.charge(cpu, n);
                if !expected {
                    // Offline (pending work ran at the first charge's
                    // section end), the owner drains every slot but those
                    // of other online defer owners, then charges again.
                    let stuck = self.h.stuck(Some(cpu));
                    let fits = self.outstanding + n <= LIMIT;
                    for c in self.h.drain_model(Some(cpu)) {
                        self.drain_slot(c);
                    }
                    expected = self.charge(cpu, n);
                    if stuck.is_empty() && fits {
                        assert!(
                            expected,
                            "model: a charge of {n} that fits after a drain fails"
                        );
                        assert!(
                            r.is_ok(),
                            "a charge of {n} that fits after a drain failed: {r:?}"
                        );
                    }
                }
                assert_eq!(
                    r.is_ok(),
                    expected,
                    "charge_or_drain {n} on slot {cpu}: {r:?}"
                );
            }
            StockOp::DrainAll => {
                let r = self.stock.drain_all_stock();
                let ok = r.is_ok();
                for cpu in self.h.drained(r, None, "drain_all_stock") {
                    self.drain_slot(cpu);
                }
                if ok {
                    assert_eq!(
                        self.stock.usage(),
                        self.outstanding,
                        "usage after a full drain"
                    );
                }
            }
        }
    }

    fn check(&self) {
        self.h.check();
        let usage = self.stock.usage();
        assert_eq!(
            usage, self.usage,
            "usage (outstanding {}, stocks {:?})",
            self.outstanding, self.stocks
        );
        assert!(usage <= LIMIT, "usage {usage} above the limit");
        assert_eq!(self.stock.failures(), self.failures, "failed charges");
        assert_eq!(self.stock.underflows(), 0);
    }

    fn finish(mut self) {
        for (ran, _) in self.h.exit_all() {
            for cpu in ran {
                self.drain_slot(cpu);
            }
        }
        self.check();
        assert_eq!(
            self.stock.drain_all_stock(),
            Ok(()),
            "drain with no owner left"
        );
        assert_eq!(
            self.stock.usage(),
            self.outstanding,
            "usage after the final drain"
        );
        let mut me = self.h.domain.bind_unpinned(0).unwrap();
        self.stock.uncharge(&mut me, self.outstanding).unwrap();
        self.stock.drain_local(&mut me);
        drop(me);
        assert_eq!(self.stock.usage(), 0, "everything uncharged");
        assert_eq!(self.stock.underflows(), 0);
    }
}

fn run_stock<C: Config>(mode: Mode, ops: &[StockOp]) {
    let mut case = StockCase::<C>::new(mode);
    for op in ops {
        case.apply(op);
        case.check();
    }
    case.finish();
}

// ------------------------------------------------------------------- tests

/// Operations per sequence.
const LEN: std::ops::Range<usize> = 1..64;

proptest! {
    #![proptest_config(config())]

    #[test]
    fn slab_standard_queue(ops in prop::collection::vec(slab_op(), LEN)) {
        run_slab::<Standard>(Mode::Queue, &ops);
    }
    #[test]
    fn slab_no_qpw(ops in prop::collection::vec(slab_op(), LEN)) {
        run_slab::<NoQpw>(Mode::Queue, &ops);
    }
    #[test]
    fn slab_rt_queue(ops in prop::collection::vec(slab_op(), LEN)) {
        run_slab::<Rt>(Mode::Queue, &ops);
    }

    #[test]
    fn kmalloc_standard_queue(ops in prop::collection::vec(km_op(), LEN)) {
        run_kmalloc::<Standard>(Mode::Queue, &ops);
    }
    #[test]
    fn kmalloc_no_qpw(ops in prop::collection::vec(km_op(), LEN)) {
        run_kmalloc::<NoQpw>(Mode::Queue, &ops);
    }
    #[test]
    fn kmalloc_rt_queue(ops in prop::collection::vec(km_op(), LEN)) {
        run_kmalloc::<Rt>(Mode::Queue, &ops);
    }

    #[test]
    fn lru_standard_queue(ops in prop::collection::vec(lru_op(), LEN)) {
        run_lru::<Standard>(Mode::Queue, &ops);
    }
    #[test]
    fn lru_no_qpw(ops in prop::collection::vec(lru_op(), LEN)) {
        run_lru::<NoQpw>(Mode::Queue, &ops);
    }
    #[test]
    fn lru_rt_queue(ops in prop::collection::vec(lru_op(), LEN)) {
        run_lru::<Rt>(Mode::Queue, &ops);
    }

    #[test]
    fn stock_standard_queue(ops in prop::collection::vec(stock_op(), LEN)) {
        run_stock::<Standard>(Mode::Queue, &ops);
    }
    #[test]
    fn stock_no_qpw(ops in prop::collection::vec(stock_op(), LEN)) {
        run_stock::<NoQpw>(Mode::Queue, &ops);
    }
    #[test]
    fn stock_rt_queue(ops in prop::collection::vec(stock_op(), LEN)) {
        run_stock::<Rt>(Mode::Queue, &ops);
    }
}

#[cfg(feature = "qpw")]
proptest! {
    #![proptest_config(config())]

    #[test]
    fn slab_standard_remote(ops in prop::collection::vec(slab_op(), LEN)) {
        run_slab::<Standard>(Mode::Remote, &ops);
    }
    #[test]
    fn slab_standard_defer(ops in prop::collection::vec(slab_op(), LEN)) {
        run_slab::<Standard>(Mode::Defer, &ops);
    }
    #[test]
    fn slab_standard_auto(ops in prop::collection::vec(slab_op(), LEN)) {
        run_slab::<Standard>(auto(), &ops);
    }
    #[test]
    fn slab_rt_defer(ops in prop::collection::vec(slab_op(), LEN)) {
        run_slab::<Rt>(Mode::Defer, &ops);
    }

    #[test]
    fn kmalloc_standard_remote(ops in prop::collection::vec(km_op(), LEN)) {
        run_kmalloc::<Standard>(Mode::Remote, &ops);
    }
    #[test]
    fn kmalloc_standard_defer(ops in prop::collection::vec(km_op(), LEN)) {
        run_kmalloc::<Standard>(Mode::Defer, &ops);
    }
    #[test]
    fn kmalloc_standard_auto(ops in prop::collection::vec(km_op(), LEN)) {
        run_kmalloc::<Standard>(auto(), &ops);
    }
    #[test]
    fn kmalloc_rt_defer(ops in prop::collection::vec(km_op(), LEN)) {
        run_kmalloc::<Rt>(Mode::Defer, &ops);
    }

    #[test]
    fn lru_standard_remote(ops in prop::collection::vec(lru_op(), LEN)) {
        run_lru::<Standard>(Mode::Remote, &ops);
    }
    #[test]
    fn lru_standard_defer(ops in prop::collection::vec(lru_op(), LEN)) {
        run_lru::<Standard>(Mode::Defer, &ops);
    }
    #[test]
    fn lru_standard_auto(ops in prop::collection::vec(lru_op(), LEN)) {
        run_lru::<Standard>(auto(), &ops);
    }
    #[test]
    fn lru_rt_defer(ops in prop::collection::vec(lru_op(), LEN)) {
        run_lru::<Rt>(Mode::Defer, &ops);
    }

    #[test]
    fn stock_standard_remote(ops in prop::collection::vec(stock_op(), LEN)) {
        run_stock::<Standard>(Mode::Remote, &ops);
    }
    #[test]
    fn stock_standard_defer(ops in prop::collection::vec(stock_op(), LEN)) {
        run_stock::<Standard>(Mode::Defer, &ops);
    }
    #[test]
    fn stock_standard_auto(ops in prop::collection::vec(stock_op(), LEN)) {
        run_stock::<Standard>(auto(), &ops);
    }
    #[test]
    fn stock_rt_defer(ops in prop::collection::vec(stock_op(), LEN)) {
        run_stock::<Rt>(Mode::Defer, &ops);
    }
}
