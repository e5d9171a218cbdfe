//! Per-CPU pre-charged stock over a shared counter with a limit, and
//! `drain_all_stock`: the kernel's `memcg_stock` (mm/memcontrol.c) on qpw.
//!
//! # The kernel's version
//!
//! Every page a cgroup uses is charged to its memory cgroup's `page_counter`,
//! an atomic counter checked against the cgroup's limit. Charging it for each
//! page would bounce its cache line between all CPUs, so each CPU keeps a
//! *stock*: pages charged to the counter in advance (`MEMCG_CHARGE_BATCH`, 64
//! at a time) but not used yet. `consume_stock` takes from it under the
//! CPU's local lock; when it runs dry, `try_charge` charges a whole batch and
//! `refill_stock` keeps what the request did not need; an uncharge puts pages
//! back in the stock, and a stock grown past the batch is returned
//! (`drain_stock`).
//!
//! The price: the counter overstates real use by up to 64 pages per CPU. When
//! a charge fails against the limit, or a cgroup goes offline, the counter
//! must be exact, so `drain_all_stock` queues a work item on every CPU with
//! stock and waits: the interruption QPW removes (on 128 CPUs the series'
//! numbers took it from 156,275 to 58,054 cycles).
//!
//! # This version
//!
//! [`Stock`] keeps each slot's stock in a qpw [`PerCpu`]; [`Stock::charge`]
//! and [`Stock::uncharge`] are the owner's hot path (one local section, usually
//! no atomic at all). [`Stock::drain_all_stock`] returns every slot's unused
//! stock through qpw's drain-all ([`Domain::work_all`] + [`WorkSet::run`]), in
//! every mode. After it, with no charge running meanwhile, [`Stock::usage`] is
//! exactly the sum of outstanding charges, and a charge that fits the limit
//! succeeds. [`Stock::charge_or_drain`] does what the kernel's `try_charge`
//! does on failure: drain all stock, then try once more.
//!
//! # The drain work
//!
//! The drain work runs wherever qpw runs a work (never in a signal handler:
//! qpw has none). It reads and zeroes the slot's stock (exclusive access through
//! the slot, as any work has) and subtracts it from the shared counter with an
//! atomic compare-exchange loop: no lock, no allocation. The owner's own paths
//! touch the shared counter only with the same atomics, so there is no lock
//! anywhere for a handler to deadlock on.
//!
//! # Invariants
//!
//! - `usage` never exceeds `limit`: every increase is a compare-exchange that
//!   checks the limit.
//! - `usage` = outstanding charges + the sum of all stocks, as long as callers
//!   uncharge only what they charged. An uncharge that would take `usage`
//!   below zero is refused when it reaches the shared counter
//!   ([`UnchargeError`]); an excess that stays in a stock is caught when the
//!   stock is returned (the counter saturates at zero, and
//!   [`Stock::underflows`] counts it).
//!
//! ```
//! use qpw::{Config, Domain, Mode, Standard};
//! use qpw_mm::stock::Stock;
//!
//! // `remote` where it is compiled in (the `qpw` feature), else `queue`.
//! let mode = if Standard::QPW { Mode::Remote } else { Mode::Queue };
//! let domain: Domain = Domain::builder().mode(mode).nr_cpus(2).build()?;
//! let stock = Stock::new(&domain, 1000); // limit 1000, batch 64
//! let mut me = domain.bind_unpinned(0)?;
//! stock.charge(&mut me, 10)?;            // charges a batch of 64, keeps 54
//! assert_eq!(stock.usage(), 64);
//! stock.drain_all_stock().unwrap();      // the 54 go back
//! assert_eq!(stock.usage(), 10);
//! assert!(stock.charge(&mut me, 991).is_err());
//! stock.charge(&mut me, 990)?;           // fits the limit exactly
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use qpw::{Config, Domain, FlushError, Owner, PerCpu, Standard, WorkSet};
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

// The shared counter is part of the drain protocol: loom's under
// `--cfg qpw_loom`, so the models see every access.
#[cfg(qpw_loom)]
use ::loom::sync::atomic::AtomicU64;
#[cfg(not(qpw_loom))]
use std::sync::atomic::AtomicU64;

/// The kernel's `MEMCG_CHARGE_BATCH`: units charged ahead per slot by default.
pub const DEFAULT_BATCH: u64 = 64;

/// A charge that does not fit the limit. Nothing was charged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChargeError {
    /// The amount asked for.
    pub requested: u64,
    /// The shared counter when the charge failed (it includes other slots'
    /// stock until [`Stock::drain_all_stock`] returns it).
    pub usage: u64,
    /// The limit.
    pub limit: u64,
}

impl fmt::Display for ChargeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "charge of {} exceeds the limit: usage {} (including per-CPU stock) of limit {}",
            self.requested, self.usage, self.limit
        )
    }
}

impl std::error::Error for ChargeError {}

/// An uncharge of more than is charged. Nothing was changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct UnchargeError {
    /// The amount that was to go back to the shared counter (the uncharge
    /// plus the slot's stock).
    pub returned: u64,
    /// The shared counter at the time.
    pub usage: u64,
}

impl fmt::Display for UnchargeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "uncharge underflow: {} would go back to a counter at {}; more was uncharged than charged",
            self.returned, self.usage
        )
    }
}

impl std::error::Error for UnchargeError {}

struct Inner<C: Config> {
    /// The `page_counter`: outstanding charges plus every slot's stock.
    usage: AtomicU64,
    limit: u64,
    batch: u64,
    /// Each slot's pre-charged, unused amount.
    local: PerCpu<u64, C>,
    failures: std::sync::atomic::AtomicU64,
    underflows: std::sync::atomic::AtomicU64,
    /// Per slot: the stock may be non-zero (the drain-all's check, read
    /// remotely; the memcg stock check). Set by the owner when its stock
    /// goes from zero to non-zero, cleared by whoever takes the stock; both
    /// with the slot's data in hand.
    stocked: Box<[crossbeam_utils::CachePadded<std::sync::atomic::AtomicBool>]>,
}

impl<C: Config> Inner<C> {
    /// Sets slot `cpu`'s stock (the owner, in its section) to `v`, marking
    /// the slot as stocked on the zero to non-zero transition only.
    #[inline]
    fn set_stock(&self, cpu: usize, stock: &mut u64, v: u64) {
        if *stock == 0 && v != 0 {
            self.stocked[cpu].store(true, Ordering::SeqCst);
        }
        *stock = v;
    }

    /// Takes slot `cpu`'s whole stock (a drain, with the slot's data in hand).
    fn take_stock(&self, cpu: usize, stock: &mut u64) -> u64 {
        self.stocked[cpu].store(false, Ordering::SeqCst);
        std::mem::take(stock)
    }
}

impl<C: Config> Inner<C> {
    /// Adds `n` to the counter if the result stays within the limit.
    fn try_charge_shared(&self, n: u64) -> bool {
        self.usage
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                u.checked_add(n).filter(|&v| v <= self.limit)
            })
            .is_ok()
    }

    /// Subtracts `n` from the counter if it holds at least `n`.
    fn try_uncharge_shared(&self, n: u64) -> Result<(), u64> {
        self.usage
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| u.checked_sub(n))
            .map(|_| ())
    }

    /// Returns a stock to the counter. Lock-free and allocation-free.
    /// Saturates at zero (counted) rather than wrap.
    fn return_stock(&self, n: u64) {
        if n == 0 {
            return;
        }
        let prev = self
            .usage
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                Some(u.saturating_sub(n))
            })
            .unwrap_or_else(|u| u);
        if prev < n {
            self.underflows.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A shared counter with a limit, charged through per-CPU stock.
///
/// Units are whatever the caller counts (pages, bytes, requests). See the
/// [module docs](self) for the design.
///
/// Any thread may drain, an owner too: qpw runs the caller's own slot's
/// work at once. An owner that drains in `defer` mode is best offline while
/// it waits (`owner.idle(|| stock.drain_all_stock())`, as
/// [`charge_or_drain`](Self::charge_or_drain) does), so that two owners
/// draining at the same time do not wait on each other.
pub struct Stock<C: Config = Standard> {
    inner: Arc<Inner<C>>,
    drain: WorkSet<C>,
}

impl<C: Config> fmt::Debug for Stock<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stock")
            .field("usage", &self.usage())
            .field("limit", &self.inner.limit)
            .field("batch", &self.inner.batch)
            .finish_non_exhaustive()
    }
}

impl<C: Config> Stock<C> {
    /// A counter with `limit` over `domain`, stocking [`DEFAULT_BATCH`] per slot.
    pub fn new(domain: &Domain<C>, limit: u64) -> Self {
        Self::with_batch(domain, limit, DEFAULT_BATCH)
    }

    /// A counter with `limit`, stocking `batch` per slot. A batch of zero
    /// keeps no stock: every charge goes to the shared counter.
    pub fn with_batch(domain: &Domain<C>, limit: u64, batch: u64) -> Self {
        let inner = Arc::new(Inner {
            usage: AtomicU64::new(0),
            limit,
            batch,
            local: PerCpu::new(domain, |_| 0u64),
            failures: std::sync::atomic::AtomicU64::new(0),
            underflows: std::sync::atomic::AtomicU64::new(0),
            stocked: (0..domain.nr_cpus()).map(|_| Default::default()).collect(),
        });
        let drain = domain.work_all_checked(
            {
                let inner = inner.clone();
                move |ctx| {
                    let cpu = ctx.slot();
                    let Ok(mut local) = inner.local.lock_ctx(ctx) else {
                        return;
                    };
                    let n = inner.take_stock(cpu, &mut local);
                    inner.return_stock(n);
                }
            },
            {
                // Slots with no stock are neither fenced nor locked.
                let inner = inner.clone();
                move |cpu| inner.stocked[cpu].load(Ordering::SeqCst)
            },
        );
        Stock { inner, drain }
    }

    /// Charges `n` (`try_charge`): from the owner's stock if it has enough,
    /// else by charging the shared counter `max(missing, batch)` and keeping
    /// the rest as stock, else by charging exactly what is missing. On error
    /// nothing changed.
    ///
    /// # Errors
    ///
    /// [`ChargeError`] when `n` does not fit under the limit; nothing was charged.
    pub fn charge(&self, owner: &mut Owner<C>, n: u64) -> Result<(), ChargeError> {
        if n == 0 {
            return Ok(());
        }
        let inner = &*self.inner;
        let cpu = owner.slot();
        let mut stock = inner.local.lock(owner);
        if *stock >= n {
            *stock -= n;
            return Ok(());
        }
        let missing = n - *stock;
        let ahead = missing.max(inner.batch);
        if inner.try_charge_shared(ahead) {
            inner.set_stock(cpu, &mut stock, ahead - missing);
            return Ok(());
        }
        if ahead != missing && inner.try_charge_shared(missing) {
            *stock = 0;
            return Ok(());
        }
        drop(stock);
        inner.failures.fetch_add(1, Ordering::Relaxed);
        Err(ChargeError {
            requested: n,
            usage: self.usage(),
            limit: inner.limit,
        })
    }

    /// [`charge`](Self::charge), and if it fails against the limit, drains
    /// every slot's stock (with this owner offline meanwhile, so its own
    /// slot is drained in every mode) and tries once more: what the kernel's
    /// `try_charge_memcg` does before it gives up. A drain that times out is
    /// not an error here: the second charge decides.
    ///
    /// # Errors
    ///
    /// [`ChargeError`] when `n` does not fit even after the drain; nothing was
    /// charged.
    pub fn charge_or_drain(&self, owner: &mut Owner<C>, n: u64) -> Result<(), ChargeError> {
        match self.charge(owner, n) {
            Ok(()) => Ok(()),
            Err(_) => {
                let _ = owner.idle(|| self.drain.run());
                self.charge(owner, n)
            }
        }
    }

    /// Uncharges `n`: it goes to the owner's stock, and a stock grown past
    /// the batch goes back to the shared counter whole (`refill_stock` +
    /// `drain_stock`). On error (more uncharged than charged, detected when
    /// it reaches the counter) nothing changed.
    ///
    /// # Errors
    ///
    /// [`UnchargeError`] when more would be uncharged than was charged; nothing
    /// changed.
    pub fn uncharge(&self, owner: &mut Owner<C>, n: u64) -> Result<(), UnchargeError> {
        if n == 0 {
            return Ok(());
        }
        let inner = &*self.inner;
        let cpu = owner.slot();
        let mut stock = inner.local.lock(owner);
        let total = stock.checked_add(n);
        match total {
            Some(t) if t <= inner.batch => {
                inner.set_stock(cpu, &mut stock, t);
                Ok(())
            }
            _ => {
                // On overflow of the stock, `n` alone goes back first.
                let back = total.unwrap_or(n);
                match inner.try_uncharge_shared(back) {
                    Ok(()) => {
                        if total.is_some() {
                            *stock = 0;
                        }
                        Ok(())
                    }
                    Err(usage) => Err(UnchargeError {
                        returned: back,
                        usage,
                    }),
                }
            }
        }
    }

    /// Returns the owner's own stock to the counter (`drain_local_stock`).
    pub fn drain_local(&self, owner: &mut Owner<C>) {
        let cpu = owner.slot();
        let n = self
            .inner
            .take_stock(cpu, &mut self.inner.local.lock(owner));
        self.inner.return_stock(n);
    }

    /// The kernel's name (`mm/memcontrol.c`) for [`drain_all`](Self::drain_all),
    /// kept for readers of the kernel: the same call.
    ///
    /// # Errors
    ///
    /// As [`drain_all`](Self::drain_all).
    pub fn drain_all_stock(&self) -> Result<(), FlushError> {
        self.drain_all()
    }

    /// Returns every slot's unused stock to the shared counter
    /// (`drain_all_stock`), through qpw's drain-all, so it works in every
    /// mode. On `Ok`, with no charge or uncharge running meanwhile,
    /// [`usage`](Self::usage) equals the outstanding charges exactly.
    ///
    /// # Errors
    ///
    /// A [`FlushError`] naming a slot whose owner did not run the drain in
    /// time (see [`qpw::WorkSet::run`]); the other slots are drained all the same.
    #[doc(alias = "drain_all_stock")]
    pub fn drain_all(&self) -> Result<(), FlushError> {
        self.drain.run()
    }

    /// The shared counter: outstanding charges plus every slot's stock.
    pub fn usage(&self) -> u64 {
        self.inner.usage.load(Ordering::Acquire)
    }

    /// The limit.
    pub fn limit(&self) -> u64 {
        self.inner.limit
    }

    /// The per-slot batch.
    pub fn batch(&self) -> u64 {
        self.inner.batch
    }

    /// Charges refused against the limit so far (the kernel's `failcnt`).
    pub fn failures(&self) -> u64 {
        self.inner.failures.load(Ordering::Relaxed)
    }

    /// Stocks returned that exceeded the counter (an uncharge of more than
    /// was charged that stayed in a stock); zero in a correct program.
    pub fn underflows(&self) -> u64 {
        self.inner.underflows.load(Ordering::Relaxed)
    }

    /// The domain the stock belongs to.
    pub fn domain(&self) -> &Domain<C> {
        self.inner.local.domain()
    }
}

#[cfg(all(test, qpw_loom))]
mod loom_models {
    //! A model of the stock drain racing an owner's charges. Signals are
    //! modelled as in the lru models: the owner's `quiescent()` calls run
    //! pending work in its own context, as the handler would.
    use super::*;
    use ::loom::thread;
    use qpw::Mode;

    fn model(mode: Mode) {
        ::loom::model(move || {
            let domain: Domain = Domain::builder()
                .mode(mode.clone())
                .nr_cpus(1)
                .build()
                .unwrap();
            let stock = Arc::new(Stock::with_batch(&domain, 4, 2));
            let owner = thread::spawn({
                let (domain, stock) = (domain.clone(), stock.clone());
                move || {
                    let mut me = domain.bind_unpinned(0).unwrap();
                    stock.charge(&mut me, 1).unwrap(); // charges 2, stocks 1
                    me.quiescent();
                    stock.uncharge(&mut me, 1).unwrap();
                    stock.charge(&mut me, 2).unwrap();
                    assert!(stock.usage() <= 4);
                    me.quiescent();
                }
            });
            stock.drain_all_stock().unwrap();
            assert!(stock.usage() <= 4);
            owner.join().unwrap();
            stock.drain_all_stock().unwrap();
            assert_eq!(stock.usage(), 2);
            assert_eq!(stock.underflows(), 0);
        });
    }

    #[test]
    fn loom_stock_drain_remote() {
        model(Mode::Remote);
    }

    #[test]
    fn loom_stock_drain_queue() {
        model(Mode::Queue);
    }

    #[test]
    fn loom_stock_drain_defer() {
        model(Mode::Defer);
    }
}
