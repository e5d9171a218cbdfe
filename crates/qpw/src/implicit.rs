//! Implicit owners: [`Domain::with_local`]'s per-thread table.
//!
//! An implicit owner is bound on first use and parked *offline* between
//! calls: an idle thread that once touched the domain is, to every drain,
//! an offline owner whose work the drainer runs itself, never an online
//! owner to wait for. Each call brings it online for the closure and takes
//! it offline again (two atomic read-modify-writes, plus running what was
//! queued meanwhile).

use crate::config::Config;
use crate::domain::Domain;
use crate::error::Error;
use crate::owner::Owner;
use std::any::Any;
use std::cell::RefCell;

type Implicit = Vec<(usize, Option<Box<dyn Any>>)>;

#[cfg(not(qpw_loom))]
thread_local! {
    static IMPLICIT: RefCell<Implicit> = const { RefCell::new(Vec::new()) };
}

#[cfg(qpw_loom)]
loom::thread_local! {
    static IMPLICIT: RefCell<Implicit> = RefCell::new(Vec::new());
}

/// Parks an implicit owner offline and returns it to this thread's table
/// when dropped (however the closure ends).
struct PutBack<C: Config> {
    id: usize,
    owner: Option<Box<dyn Any>>,
    _c: std::marker::PhantomData<C>,
}

impl<C: Config> PutBack<C> {
    fn owner(&mut self) -> &mut Owner<C> {
        self.owner
            .as_mut()
            .and_then(|o| o.downcast_mut::<Owner<C>>())
            .expect("implicit owners are stored by domain id")
    }
}

impl<C: Config> Drop for PutBack<C> {
    fn drop(&mut self) {
        self.owner().go_offline();
        let (id, owner) = (self.id, self.owner.take());
        IMPLICIT.with(|m| {
            let mut m = m.borrow_mut();
            match m.iter_mut().find(|(d, _)| *d == id) {
                Some((_, slot)) => *slot = owner,
                None => m.push((id, owner)),
            }
        });
    }
}

impl<C: Config> Domain<C> {
    /// Runs `f` with this thread's implicit owner of this domain, binding a
    /// free slot (unpinned) on first use. The binding lasts until the thread
    /// exits, when the slot is drained and freed. Between calls the owner
    /// is offline, so an idle thread never holds up a drain. Called from a
    /// thread-local destructor after the thread's table of implicit owners
    /// is gone, it returns [`Error::ThreadExiting`].
    ///
    /// # Errors
    ///
    /// [`Error::Reentrant`] when called for this domain from inside its own
    /// closure; [`Error::ThreadExiting`] as above; on first use, the errors of
    /// [`bind_any`](Self::bind_any) ([`Error::NoFreeSlot`] when every slot is
    /// owned: give the domain more with [`Builder::nr_cpus`](crate::Builder::nr_cpus)).
    ///
    /// # Examples
    ///
    /// ```
    /// use qpw::{Domain, PerCpu};
    /// use std::sync::Arc;
    ///
    /// let domain = Domain::builder().nr_cpus(4).build()?;
    /// let counts = Arc::new(PerCpu::new(&domain, |_| 0u64));
    /// let threads: Vec<_> = (0..4)
    ///     .map(|_| {
    ///         let (domain, counts) = (domain.clone(), counts.clone());
    ///         // No `bind`: each thread gets a slot on its first call.
    ///         std::thread::spawn(move || domain.with_local(|me| *counts.lock(me) += 1))
    ///     })
    ///     .collect();
    /// for t in threads {
    ///     t.join().unwrap()?;
    /// }
    /// let total: u64 = (0..4).map(|s| *counts.remote(s).unwrap()).sum(); // the threads have exited
    /// assert_eq!(total, 4);
    /// # Ok::<(), qpw::Error>(())
    /// ```
    pub fn with_local<R>(&self, f: impl FnOnce(&mut Owner<C>) -> R) -> Result<R, Error> {
        let id = self.id();
        // `try_with`: from another thread-local's destructor the table may
        // be gone already; `with` would panic there, inside a destructor,
        // and abort the process.
        let taken = IMPLICIT
            .try_with(|m| {
                let mut m = m.borrow_mut();
                match m.iter_mut().find(|(d, _)| *d == id) {
                    Some((_, slot)) => slot.take().map(Some).ok_or(Error::Reentrant),
                    None => Ok(None),
                }
            })
            .map_err(|_| Error::ThreadExiting)??;
        let (owner, parked): (Box<dyn Any>, bool) = match taken {
            Some(o) => (o, true),
            None => {
                let o: Box<dyn Any> = Box::new(self.bind_any()?);
                // An empty entry while `f` runs: a nested call is `Reentrant`.
                IMPLICIT.with(|m| m.borrow_mut().push((id, None)));
                (o, false)
            }
        };
        // Put the owner back however `f` ends: if it unwound with the owner
        // dropped, the slot would be unbound under the caller.
        let mut back = PutBack::<C> {
            id,
            owner: Some(owner),
            _c: std::marker::PhantomData,
        };
        if parked {
            back.owner().go_online();
        }
        let r = f(back.owner());
        drop(back);
        Ok(r)
    }
}
