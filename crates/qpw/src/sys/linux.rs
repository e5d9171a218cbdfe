//! Linux: `sched_{get,set}affinity`, `tgkill`, `sigaction`, sysfs.

use crate::error::Error;
use std::mem::MaybeUninit;

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// A saved thread affinity mask, restored when an owner unbinds.
pub(crate) struct Affinity(libc::cpu_set_t);

fn cpus_of(set: &libc::cpu_set_t) -> Vec<usize> {
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `set` is a valid, initialised cpu_set_t and `c` is below CPU_SETSIZE.
        .filter(|&c| unsafe { libc::CPU_ISSET(c, set) })
        .collect()
}

fn get_affinity(pid: libc::pid_t) -> Result<libc::cpu_set_t, Error> {
    let mut set = MaybeUninit::<libc::cpu_set_t>::zeroed();
    // SAFETY: `set` points to writable memory of the size passed.
    let rc = unsafe {
        libc::sched_getaffinity(
            pid,
            std::mem::size_of::<libc::cpu_set_t>(),
            set.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(Error::Os {
            what: "sched_getaffinity",
            errno: errno(),
        });
    }
    // SAFETY: zeroed is a valid cpu_set_t, and the kernel filled it in.
    Ok(unsafe { set.assume_init() })
}

fn set_affinity(set: &libc::cpu_set_t) -> Result<(), Error> {
    // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 is this thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) };
    if rc != 0 {
        return Err(Error::Os {
            what: "sched_setaffinity",
            errno: errno(),
        });
    }
    Ok(())
}

/// The CPUs this process may run on (the main thread's affinity mask).
pub(crate) fn allowed_cpus() -> Result<Vec<usize>, Error> {
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    Ok(cpus_of(&get_affinity(pid)?))
}

/// Pins the calling thread to `cpu`, returning its previous mask.
pub(crate) fn pin_current(cpu: usize) -> Result<Affinity, Error> {
    let old = get_affinity(0)?;
    let mut set = MaybeUninit::<libc::cpu_set_t>::zeroed();
    // SAFETY: zeroed memory is an empty cpu_set_t.
    let mut set = unsafe { set.assume_init_mut() }.to_owned();
    // SAFETY: the caller checked `cpu` against the allowed CPUs, all below CPU_SETSIZE.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    set_affinity(&set)?;
    Ok(Affinity(old))
}

/// Restores a mask saved by [`pin_current`]. Best effort: the thread may have
/// changed its own affinity since, which is its business.
pub(crate) fn restore_affinity(saved: &Affinity) {
    let _ = set_affinity(&saved.0);
}

/// The calling thread's kernel thread id.
pub(crate) fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions and cannot fail.
    unsafe { libc::gettid() }
}

/// Sends `sig` to thread `tid` of this process. Async-signal-safe.
pub(crate) fn signal_thread(tid: i32, sig: i32) -> Result<(), i32> {
    // SAFETY: tgkill takes plain integers; a stale tid yields ESRCH, never UB.
    let rc = unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, sig) };
    if rc == 0 {
        Ok(())
    } else {
        Err(errno())
    }
}

/// The ESRCH errno value: the thread no longer exists.
pub(crate) const ESRCH: i32 = libc::ESRCH;

/// The real-time signal range usable by applications.
pub(crate) fn rt_signal_range() -> (i32, i32) {
    (libc::SIGRTMIN(), libc::SIGRTMAX())
}

/// The default qpw signal: a real-time signal a few above `SIGRTMIN`, away from
/// the ones libraries commonly take first.
pub(crate) fn default_signal() -> i32 {
    libc::SIGRTMIN() + 7
}

/// Installs `handler` for `sig` with `SA_SIGINFO | SA_RESTART`, unless the
/// application already handles `sig` (then [`Error::SignalInUse`], nothing changed).
/// Returns `Ok(false)` when our handler is already there.
pub(crate) fn install_handler(
    sig: i32,
    handler: extern "C" fn(i32, *mut libc::siginfo_t, *mut libc::c_void),
) -> Result<bool, Error> {
    let mut old = MaybeUninit::<libc::sigaction>::zeroed();
    // SAFETY: a null new action only queries; `old` is writable.
    if unsafe { libc::sigaction(sig, std::ptr::null(), old.as_mut_ptr()) } != 0 {
        return Err(Error::Os {
            what: "sigaction (query)",
            errno: errno(),
        });
    }
    // SAFETY: initialised by the successful query above.
    let old = unsafe { old.assume_init() };
    if old.sa_sigaction == handler as usize {
        return Ok(false);
    }
    if old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN {
        return Err(Error::SignalInUse { signal: sig });
    }
    let mut new = MaybeUninit::<libc::sigaction>::zeroed();
    // SAFETY: zeroed memory is a valid sigaction to fill in.
    let new = unsafe { new.assume_init_mut() };
    new.sa_sigaction = handler as usize;
    new.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
    // SAFETY: `sa_mask` is a valid sigset_t to clear.
    unsafe { libc::sigemptyset(&mut new.sa_mask) };
    // SAFETY: `new` is a fully initialised sigaction whose handler is an
    // extern "C" fn of the SA_SIGINFO signature.
    if unsafe { libc::sigaction(sig, new, std::ptr::null_mut()) } != 0 {
        return Err(Error::Os {
            what: "sigaction (install)",
            errno: errno(),
        });
    }
    Ok(true)
}

/// Whether the calling thread blocks `sig`.
pub(crate) fn thread_blocks(sig: i32) -> bool {
    let mut set = MaybeUninit::<libc::sigset_t>::zeroed();
    // SAFETY: a null new set only queries the mask into `set`.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), set.as_mut_ptr()) };
    // SAFETY: filled in by pthread_sigmask when rc == 0; zeroed otherwise.
    rc == 0 && unsafe { libc::sigismember(set.as_ptr(), sig) } == 1
}

/// Keeps `errno` across a signal handler.
pub(crate) struct ErrnoGuard(i32);

impl ErrnoGuard {
    #[inline]
    pub(crate) fn save() -> Self {
        // SAFETY: __errno_location returns this thread's errno slot.
        Self(unsafe { *libc::__errno_location() })
    }
}

impl Drop for ErrnoGuard {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: as above; writing back the saved value.
        unsafe { *libc::__errno_location() = self.0 };
    }
}

/// The isolated CPUs the kernel reports (`isolated` and `nohz_full` in
/// `/sys/devices/system/cpu`), merged. Missing or empty files give none.
pub(crate) fn isolated_cpus() -> Result<Vec<usize>, Error> {
    let mut all = Vec::new();
    for file in [
        "/sys/devices/system/cpu/isolated",
        "/sys/devices/system/cpu/nohz_full",
    ] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        let text = text.trim();
        if text.is_empty() || text == "(null)" {
            continue;
        }
        let cpus = crate::config::parse_cpu_list(text).map_err(|reason| Error::BadMode {
            value: format!("auto (from {file}: {text:?})"),
            reason,
        })?;
        all.extend(cpus);
    }
    all.sort_unstable();
    all.dedup();
    Ok(all)
}

/// The `EINTR` errno value: a system call was interrupted by a signal.
pub(crate) const EINTR: i32 = libc::EINTR;
/// The `EAGAIN` errno value: try again.
pub(crate) const EAGAIN: i32 = libc::EAGAIN;

thread_local! {
    // Const-initialised, `Copy` contents, no destructor: reading it never
    // allocates or registers anything, so a signal handler may.
    static TID: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// The calling thread's kernel thread id, cached per thread.
///
/// The cache would be wrong in a child made by `fork` (the child's thread
/// has a new id): a `pthread_atfork` child handler, registered on first
/// use, clears it there.
#[inline]
pub(crate) fn current_tid() -> u32 {
    let t = TID.with(|t| t.get());
    if t != 0 {
        return t;
    }
    current_tid_slow()
}

#[cold]
fn current_tid_slow() -> u32 {
    static AT_FORK: std::sync::Once = std::sync::Once::new();
    AT_FORK.call_once(|| {
        extern "C" fn clear_in_child() {
            // The child's only thread is the one that forked: clear its cache.
            TID.with(|t| t.set(0));
        }
        // SAFETY: registers a plain extern "C" function with no arguments;
        // the handler only writes a const-initialised thread-local.
        unsafe { libc::pthread_atfork(None, None, Some(clear_in_child)) };
    });
    let t = gettid() as u32;
    TID.with(|c| c.set(t));
    t
}

/// `FUTEX_LOCK_PI` on `word` (process-private, no timeout): returns with the
/// lock held (the word holds this thread's id, `FUTEX_WAITERS` perhaps set),
/// or the errno.
pub(crate) fn futex_lock_pi(word: &crate::sync::AtomicU32) -> Result<(), i32> {
    // SAFETY: `word` is a live, aligned u32 for the call's duration; a null
    // timeout waits without bound; the other arguments are unused.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_LOCK_PI | libc::FUTEX_PRIVATE_FLAG,
            0,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(errno())
    }
}

/// `FUTEX_UNLOCK_PI` on `word`, which holds this thread's id: the kernel
/// hands the lock to its top waiter, or frees it.
pub(crate) fn futex_unlock_pi(word: &crate::sync::AtomicU32) -> Result<(), i32> {
    // SAFETY: as in `futex_lock_pi`; FUTEX_UNLOCK_PI takes no other argument.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_UNLOCK_PI | libc::FUTEX_PRIVATE_FLAG,
            0,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(errno())
    }
}
