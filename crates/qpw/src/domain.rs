//! The domain: the object that owns the slots, their work and their counters.

use crate::config::{format_cpu_list, Config, Mode, SlotMode, Standard};
use crate::error::Error;
use crate::owner::Owner;
use crate::slot::SlotState;
use crate::stats::SlotStats;
use crate::sync::Arc;
use crate::work::{Work, WorkCtx, WorkSet};
use crossbeam_utils::CachePadded;
use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

/// The most slots a domain may have.
pub const MAX_CPUS: usize = 1 << 16;

/// The default bound on [`Work::flush`].
pub const DEFAULT_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) struct DomainInner<C: Config> {
    pub(crate) id: usize,
    pub(crate) mode: Mode,
    pub(crate) slots: Box<[CachePadded<SlotState<C>>]>,
    pub(crate) allowed: Vec<usize>,
    pub(crate) signal: i32,
    pub(crate) flush_timeout: Duration,
}

/// A set of per-CPU slots with one mode, and everything queued on them.
///
/// Cheap to clone (it is reference counted); every [`PerCpu`](crate::PerCpu),
/// [`Owner`] and [`Work`] keeps its domain alive. Several domains with
/// different modes and configurations may live in one process.
pub struct Domain<C: Config = Standard> {
    pub(crate) inner: Arc<DomainInner<C>>,
}

impl<C: Config> Clone for Domain<C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<C: Config> fmt::Debug for Domain<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Domain")
            .field("config", &C::NAME)
            .field("mode", &self.inner.mode.to_string())
            .field("nr_cpus", &self.nr_cpus())
            .finish()
    }
}

/// Builds a [`Domain`]; what the builder sets wins over the `QPW` variable.
#[derive(Debug, Clone)]
pub struct Builder<C: Config = Standard> {
    nr_cpus: Option<usize>,
    mode: Option<Mode>,
    signal: Option<i32>,
    flush_timeout: Duration,
    _c: PhantomData<C>,
}

impl<C: Config> Default for Builder<C> {
    fn default() -> Self {
        Self {
            nr_cpus: None,
            mode: None,
            signal: None,
            flush_timeout: DEFAULT_FLUSH_TIMEOUT,
            _c: PhantomData,
        }
    }
}

fn next_domain_id() -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl<C: Config> Builder<C> {
    /// The number of slots. Default: enough for every CPU this process may
    /// run on (highest allowed CPU + 1). Larger values model bigger machines:
    /// slots without a CPU are owned by unpinned threads.
    pub fn nr_cpus(mut self, n: usize) -> Self {
        self.nr_cpus = Some(n);
        self
    }

    /// The mode, overriding the `QPW` variable.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = Some(mode);
        self
    }

    /// The real-time signal `queue` mode sends (default `SIGRTMIN + 7`).
    pub fn signal(mut self, signal: i32) -> Self {
        self.signal = Some(signal);
        self
    }

    /// The bound on [`Work::flush`] (default 10 s).
    pub fn flush_timeout(mut self, timeout: Duration) -> Self {
        self.flush_timeout = timeout;
        self
    }

    /// Checks everything and builds the domain; on error nothing was changed
    /// (no handler installed).
    pub fn build(self) -> Result<Domain<C>, Error> {
        let allowed = crate::sys::allowed_cpus()?;
        let default_n = allowed.iter().max().map_or(1, |m| m + 1);
        let nr = self.nr_cpus.unwrap_or(default_n);
        if nr == 0 || nr > MAX_CPUS {
            return Err(Error::BadCpuCount {
                nr_cpus: nr,
                max: MAX_CPUS,
            });
        }
        let mode = match self.mode {
            Some(m) => m,
            None => Mode::from_env()?.unwrap_or(Mode::Queue),
        };
        if !C::QPW && mode != Mode::Queue {
            return Err(Error::ModeNotCompiled {
                mode: mode.to_string(),
                config: C::NAME,
            });
        }
        let slot_modes: Vec<SlotMode> = match &mode {
            Mode::Queue => vec![SlotMode::Queue; nr],
            Mode::Remote => vec![SlotMode::Remote; nr],
            Mode::Defer => vec![SlotMode::Defer; nr],
            Mode::Auto(list) => {
                let isolated = match list {
                    Some(l) => {
                        if let Some(&cpu) = l.iter().find(|&&c| c >= nr) {
                            return Err(Error::CpuOutOfRange { cpu, nr_cpus: nr });
                        }
                        l.clone()
                    }
                    // CPUs the kernel isolates beyond our slots do not concern us.
                    None => crate::sys::isolated_cpus()?
                        .into_iter()
                        .filter(|&c| c < nr)
                        .collect(),
                };
                (0..nr)
                    .map(|c| {
                        if isolated.binary_search(&c).is_ok() {
                            SlotMode::Remote
                        } else {
                            SlotMode::Queue
                        }
                    })
                    .collect()
            }
        };
        let signal = self.signal.unwrap_or_else(crate::sys::default_signal);
        let (lo, hi) = crate::sys::rt_signal_range();
        if signal < lo || signal > hi {
            return Err(Error::BadSignal {
                signal,
                range: (lo, hi),
            });
        }
        if slot_modes.contains(&SlotMode::Queue) {
            crate::owner::ensure_handler(signal)?;
        }
        let id = next_domain_id();
        let owner_preempted = Arc::new(crate::sync::AtomicBool::new(false));
        let slots = slot_modes
            .iter()
            .enumerate()
            .map(|(cpu, &m)| {
                CachePadded::new(SlotState::new(cpu, m, id, signal, owner_preempted.clone()))
            })
            .collect();
        Ok(Domain {
            inner: Arc::new(DomainInner {
                id,
                mode,
                slots,
                allowed,
                signal,
                flush_timeout: self.flush_timeout,
            }),
        })
    }
}

impl<C: Config> Domain<C> {
    /// A builder; [`build`](Builder::build) reads `QPW` unless a mode is set.
    pub fn builder() -> Builder<C> {
        Builder::default()
    }

    /// A domain with the defaults: mode from `QPW` (default `queue`), one slot
    /// per CPU this process may run on.
    pub fn new() -> Result<Self, Error> {
        Self::builder().build()
    }

    /// The number of slots.
    pub fn nr_cpus(&self) -> usize {
        self.inner.slots.len()
    }

    /// The mode the domain was built with.
    pub fn mode(&self) -> &Mode {
        &self.inner.mode
    }

    /// The mode of one slot (an `auto` domain mixes them).
    pub fn slot_mode(&self, cpu: usize) -> Result<SlotMode, Error> {
        Ok(self.slot(cpu)?.mode)
    }

    /// The signal `queue` mode sends.
    pub fn signal(&self) -> i32 {
        self.inner.signal
    }

    /// The CPUs this process may run on, as a kernel-style list.
    pub fn allowed_cpus(&self) -> String {
        format_cpu_list(&self.inner.allowed)
    }

    pub(crate) fn slot(&self, cpu: usize) -> Result<&SlotState<C>, Error> {
        self.inner
            .slots
            .get(cpu)
            .map(|s| &**s)
            .ok_or(Error::CpuOutOfRange {
                cpu,
                nr_cpus: self.nr_cpus(),
            })
    }

    /// Binds the calling thread to slot `cpu` and pins it to CPU `cpu`.
    /// Errors: the CPU is not in the affinity mask, the slot is owned, this
    /// thread owns another slot of this domain, or (queue mode) it blocks the
    /// qpw signal. On error nothing changed.
    pub fn bind(&self, cpu: usize) -> Result<Owner<C>, Error> {
        Owner::bind(self.clone(), cpu, true)
    }

    /// Binds the calling thread to slot `cpu` without pinning it (slots
    /// beyond the machine's CPUs, or threads the scheduler should place).
    pub fn bind_unpinned(&self, cpu: usize) -> Result<Owner<C>, Error> {
        Owner::bind(self.clone(), cpu, false)
    }

    /// Binds the calling thread, unpinned, to the first free slot.
    pub fn bind_any(&self) -> Result<Owner<C>, Error> {
        if let Some(cpu) = crate::owner::owned_in(self.id()) {
            return Err(Error::AlreadyBound { cpu });
        }
        for cpu in 0..self.nr_cpus() {
            // A load, not a bind attempt (which asks the kernel for the
            // signal mask), for slots that are plainly taken.
            if self.inner.slots[cpu]
                .ctl
                .load(crate::sync::Ordering::Relaxed)
                != crate::slot::FREE
            {
                continue;
            }
            match Owner::bind(self.clone(), cpu, false) {
                Err(Error::SlotOwned { .. }) => continue,
                r => return r,
            }
        }
        Err(Error::NoFreeSlot {
            nr_cpus: self.nr_cpus(),
        })
    }

    /// Runs `f` with this thread's implicit owner of this domain, binding a
    /// free slot (unpinned) on first use. The binding lasts until the thread
    /// exits, when the slot is drained and freed.
    pub fn with_local<R>(&self, f: impl FnOnce(&mut Owner<C>) -> R) -> Result<R, Error> {
        crate::owner::with_implicit(self, f)
    }

    /// Prepares a work for slot `cpu` (`INIT_QPW(work, fn, cpu)`).
    pub fn work(
        &self,
        cpu: usize,
        f: impl Fn(&mut WorkCtx<'_, C>) + Send + Sync + 'static,
    ) -> Result<Work<C>, Error> {
        self.slot(cpu)?;
        Ok(Work::new(self.inner.clone(), cpu, Box::new(f)))
    }

    /// Prepares one work per slot with the same function, for drain-all.
    pub fn work_all(
        &self,
        f: impl Fn(&mut WorkCtx<'_, C>) + Send + Sync + Clone + 'static,
    ) -> WorkSet<C> {
        let works = (0..self.nr_cpus())
            .map(|c| Work::new(self.inner.clone(), c, Box::new(f.clone())))
            .collect();
        WorkSet { works }
    }

    /// The counters of one slot.
    pub fn stats(&self, cpu: usize) -> Result<SlotStats, Error> {
        Ok(self.slot(cpu)?.counters.snapshot())
    }

    /// The counters of every slot, added up.
    pub fn total_stats(&self) -> SlotStats {
        let mut t = SlotStats::default();
        for s in self.inner.slots.iter() {
            t.add(&s.counters.snapshot());
        }
        t
    }

    /// Whether slot `cpu` has an owner (online or offline).
    pub fn is_owned(&self, cpu: usize) -> Result<bool, Error> {
        let s = self.slot(cpu)?.ctl.load(crate::sync::Ordering::SeqCst);
        Ok(s & !crate::slot::BUSY != crate::slot::FREE)
    }

    /// Whether slot `cpu`'s owner is offline (see [`Owner::offline`]).
    pub fn is_offline(&self, cpu: usize) -> Result<bool, Error> {
        let s = self.slot(cpu)?.ctl.load(crate::sync::Ordering::SeqCst);
        Ok(s & !crate::slot::BUSY == crate::slot::OFFLINE)
    }

    pub(crate) fn id(&self) -> usize {
        self.inner.id
    }
}
