//! The domain: the object that owns the slots and their counters, and
//! builds them. Binding (`owner.rs`), work (`work.rs`) and implicit owners
//! (`implicit.rs`) add their `Domain` methods in their own files, above this
//! one.

use crate::config::{format_cpu_list, Config, Mode, ModeReason, SlotMode, Standard};
use crate::error::Error;
use crate::slot::{SlotState, BUSY, FREE, OFFLINE, RETIRED};
use crate::stats::{SlotInfo, SlotStats};
use crate::sync::Arc;
use crossbeam_utils::CachePadded;
use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

/// The most slots a domain may have.
pub const MAX_CPUS: usize = 1 << 16;

/// The default bound on [`Work::flush`](crate::Work::flush).
pub const DEFAULT_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) struct DomainInner<C: Config> {
    pub(crate) id: usize,
    pub(crate) mode: Mode,
    pub(crate) slots: Box<[CachePadded<SlotState<C>>]>,
    pub(crate) allowed: Vec<usize>,
    pub(crate) flush_timeout: Duration,
}

impl<C: Config> crate::fork::ForkChild for DomainInner<C> {
    fn fork_child(&self) {
        for slot in self.slots.iter() {
            if !crate::owned::fork_child_mine(slot) {
                slot.fork_child(false);
            }
        }
    }
}

/// A set of per-CPU slots with one mode, and everything queued on them.
///
/// Cheap to clone (it is reference counted); every [`PerCpu`](crate::PerCpu),
/// [`Owner`](crate::Owner) and [`Work`](crate::Work) keeps its domain alive. Several domains with
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
    flush_timeout: Duration,
    _c: PhantomData<C>,
}

impl<C: Config> Default for Builder<C> {
    fn default() -> Self {
        Self {
            nr_cpus: None,
            mode: None,
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
    /// A builder for a domain of any [`Config`]: `Builder::<Rt>::new()`.
    /// For the default config, [`Domain::builder`] needs no annotation.
    pub fn new() -> Self {
        Self::default()
    }

    /// The number of slots. Default: enough for every CPU this process may
    /// run on (highest such CPU + 1): the CPUs online, within the process's
    /// cgroup cpuset, whatever the calling or main thread's affinity. Larger values model bigger machines:
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

    /// The bound on [`Work::flush`](crate::Work::flush) (default 10 s), and of each drain-all as a whole.
    pub fn flush_timeout(mut self, timeout: Duration) -> Self {
        self.flush_timeout = timeout;
        self
    }

    /// Checks everything and builds the domain; on error nothing was changed.
    /// A domain with `queue` slots registers the process for `membarrier(2)`
    /// once; where the kernel refuses, those slots run `remote`
    /// ([`ModeReason::FenceUnavailable`]), or, in a configuration without
    /// `remote` mode, the build fails with [`Error::FenceUnavailable`].
    ///
    /// # Errors
    ///
    /// [`Error::BadCpuCount`] for a slot count of 0 or above [`MAX_CPUS`];
    /// [`Error::ModeNotCompiled`] for a mode other than `queue` without the
    /// `qpw` feature; [`Error::BadMode`] for a bad `QPW` variable;
    /// [`Error::CpuOutOfRange`] for an `auto` CPU beyond the slots;
    /// [`Error::FenceUnavailable`] as above; [`Error::Os`] when the CPUs this
    /// process may run on cannot be read.
    pub fn build(self) -> Result<Domain<C>, Error> {
        let allowed = crate::sys::possible_cpus()?;
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
        let fence = if slot_modes.contains(&SlotMode::Queue) {
            crate::fence::register()
        } else {
            Ok(crate::fence::Support { targeted: false })
        };
        if let Err(errno) = fence {
            if !C::QPW {
                return Err(Error::FenceUnavailable { errno });
            }
        }
        let id = next_domain_id();
        let owner_preempted = Arc::new(crate::sync::AtomicBool::new(false));
        let slots = slot_modes
            .iter()
            .enumerate()
            .map(|(cpu, &m)| {
                let (m, why) = if m == SlotMode::Queue && fence.is_err() {
                    (SlotMode::Remote, ModeReason::FenceUnavailable)
                } else if matches!(mode, Mode::Auto(_)) && m == SlotMode::Remote {
                    (m, ModeReason::IsolatedCpu)
                } else {
                    (m, ModeReason::Configured)
                };
                CachePadded::new(SlotState::new(cpu, m, why, id, owner_preempted.clone()))
            })
            .collect();
        let inner = Arc::new(DomainInner {
            id,
            mode,
            slots,
            allowed,
            flush_timeout: self.flush_timeout,
        });
        #[cfg(not(qpw_loom))]
        crate::fork::register_domain(
            Arc::downgrade(&inner) as std::sync::Weak<dyn crate::fork::ForkChild>
        );
        Ok(Domain { inner })
    }
}

impl Domain {
    /// A builder of a [`Standard`] domain (`let d = Domain::builder().build()?`
    /// needs no annotation); [`build`](Builder::build) reads `QPW` unless a
    /// mode is set. For another [`Config`]: [`Builder::<Rt>::new()`](Builder::new).
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// A [`Standard`] domain with the defaults: mode from `QPW` (default
    /// `queue`), one slot per CPU this process may run on. For another
    /// [`Config`]: `Builder::<Rt>::new().build()`.
    ///
    /// # Errors
    ///
    /// As [`Builder::build`]: a bad `QPW` value, or the CPUs unreadable.
    pub fn new() -> Result<Self, Error> {
        Self::builder().build()
    }
}

impl<C: Config> Domain<C> {
    /// The number of slots.
    pub fn nr_cpus(&self) -> usize {
        self.inner.slots.len()
    }

    /// The mode the domain was built with.
    pub fn mode(&self) -> &Mode {
        &self.inner.mode
    }

    /// The mode of one slot (an `auto` domain mixes them; see
    /// [`slot_info`](Self::slot_info) for why).
    ///
    /// # Errors
    ///
    /// [`Error::CpuOutOfRange`] when `cpu` is not a slot of this domain.
    pub fn slot_mode(&self, cpu: usize) -> Result<SlotMode, Error> {
        Ok(self.slot(cpu)?.mode)
    }

    /// How slot `cpu` runs and why: the mode the domain asked for it, the
    /// mode it runs in (`remote` for a `queue` slot when the kernel refused
    /// the fence), the reason, and the drain-alls that skipped it as clean.
    ///
    /// # Errors
    ///
    /// [`Error::CpuOutOfRange`] when `cpu` is not a slot of this domain.
    ///
    /// # Examples
    ///
    /// ```
    /// use qpw::{Domain, Mode, ModeReason, SlotMode};
    ///
    /// let domain = Domain::builder().mode(Mode::Queue).nr_cpus(1).build()?;
    /// let info = domain.slot_info(0)?;
    /// assert_eq!(info.configured, SlotMode::Queue);
    /// if info.effective == SlotMode::Remote {
    ///     // The kernel refused membarrier(2) (a seccomp filter): queue runs remote.
    ///     assert_eq!(info.reason, ModeReason::FenceUnavailable);
    /// }
    /// # Ok::<(), qpw::Error>(())
    /// ```
    pub fn slot_info(&self, cpu: usize) -> Result<SlotInfo, Error> {
        let slot = self.slot(cpu)?;
        let configured = match slot.mode_reason {
            ModeReason::FenceUnavailable => SlotMode::Queue,
            _ => slot.mode,
        };
        Ok(SlotInfo {
            configured,
            effective: slot.mode,
            reason: slot.mode_reason,
            drains_skipped_clean: slot.counters.skipped_clean_count(),
        })
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

    /// The counters of one slot.
    ///
    /// # Errors
    ///
    /// [`Error::CpuOutOfRange`] when `cpu` is not a slot of this domain.
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

    /// Whether slot `cpu` has an owner (online or offline), or is retired.
    ///
    /// # Errors
    ///
    /// [`Error::CpuOutOfRange`] when `cpu` is not a slot of this domain.
    pub fn is_owned(&self, cpu: usize) -> Result<bool, Error> {
        Ok(self.slot(cpu)?.state() & !BUSY != FREE)
    }

    /// Whether slot `cpu`'s owner is offline (see [`Owner::offline`](crate::Owner::offline)).
    ///
    /// # Errors
    ///
    /// [`Error::CpuOutOfRange`] when `cpu` is not a slot of this domain.
    pub fn is_offline(&self, cpu: usize) -> Result<bool, Error> {
        Ok(self.slot(cpu)?.state() & !BUSY == OFFLINE)
    }

    /// Whether slot `cpu` is retired: in a `fork()` child, its owner's
    /// thread vanished leaving the slot in a state that may be half-changed,
    /// so nothing touches it again (drain-alls skip it, binding it fails).
    ///
    /// # Errors
    ///
    /// [`Error::CpuOutOfRange`] when `cpu` is not a slot of this domain.
    pub fn is_retired(&self, cpu: usize) -> Result<bool, Error> {
        Ok(self.slot(cpu)?.state() & RETIRED != 0)
    }

    /// The retired slots (see [`is_retired`](Self::is_retired)).
    pub fn retired_slots(&self) -> Vec<usize> {
        (0..self.nr_cpus())
            .filter(|&c| self.inner.slots[c].is_retired())
            .collect()
    }

    pub(crate) fn id(&self) -> usize {
        self.inner.id
    }
}
