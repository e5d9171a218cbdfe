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

/// A CPU list file (`0-3,6`); `None` if missing, empty or malformed.
fn read_cpu_list(file: &str) -> Option<Vec<usize>> {
    let text = std::fs::read_to_string(file).ok()?;
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    crate::config::parse_cpu_list(text).ok()
}

/// The process's cgroup v2 `cpuset.cpus.effective`, if it has one.
fn cgroup_cpuset() -> Option<Vec<usize>> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    let path = path.trim_end_matches('/');
    read_cpu_list(&format!("/sys/fs/cgroup{path}/cpuset.cpus.effective"))
}

/// The CPUs any thread of this process may be placed on: the CPUs online
/// within the process's cgroup cpuset. Not a thread's affinity mask: the
/// main thread, or the caller, may be pinned to one CPU while the process's
/// other threads run everywhere. Falls back to the calling thread's mask
/// when neither file can be read.
pub(crate) fn possible_cpus() -> Result<Vec<usize>, Error> {
    let online = read_cpu_list("/sys/devices/system/cpu/online");
    let cpus = match (online, cgroup_cpuset()) {
        (Some(o), Some(c)) => o.into_iter().filter(|x| c.contains(x)).collect(),
        (Some(o), None) => o,
        (None, Some(c)) => c,
        (None, None) => Vec::new(),
    };
    let cpus: Vec<usize> = cpus
        .into_iter()
        .filter(|&c| c < libc::CPU_SETSIZE as usize)
        .collect();
    if cpus.is_empty() {
        return Ok(cpus_of(&get_affinity(0)?));
    }
    Ok(cpus)
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

/// The calling thread's kernel thread id, asked of the kernel.
pub(crate) fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions and cannot fail.
    unsafe { libc::gettid() }
}

thread_local! {
    // Const-initialised, no destructor: reading it never allocates, so the
    // signal handler and fork handlers may. 0 = not known yet.
    static TID: std::cell::Cell<i32> = const { std::cell::Cell::new(0) };
}

/// The calling thread's kernel thread id, cached per thread (one TLS load
/// after the first call). Async-signal-safe. The cache is dropped in a fork
/// child ([`forget_tid`]), where the forking thread has a new id.
#[inline]
pub(crate) fn current_tid() -> i32 {
    TID.with(|t| {
        let v = t.get();
        if v != 0 {
            return v;
        }
        let v = gettid();
        t.set(v);
        v
    })
}

/// Fork child only: the forking thread's id changed; ask the kernel again.
pub(crate) fn forget_tid() {
    TID.with(|t| t.set(0));
}

/// Registers the process's fork handlers (`pthread_atfork`). Call once.
pub(crate) fn at_fork(
    prepare: unsafe extern "C" fn(),
    parent: unsafe extern "C" fn(),
    child: unsafe extern "C" fn(),
) -> Result<(), Error> {
    // SAFETY: the three are valid extern "C" functions that live for the
    // whole program (they are statics of this crate).
    let rc = unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
    if rc != 0 {
        return Err(Error::Os {
            what: "pthread_atfork",
            errno: rc,
        });
    }
    Ok(())
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
        let cpus = crate::config::parse_cpu_list(text).map_err(|e| Error::BadMode {
            value: format!("auto (from {file}: {text:?})"),
            reason: e.to_string(),
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

/// `FUTEX_LOCK_PI` on `word` (process-private, no timeout): returns with the
/// lock held (the word holds this thread's id, `FUTEX_WAITERS` perhaps set),
/// or the errno.
pub(crate) fn futex_lock_pi(word: &crate::sync::AtomicU32) -> Result<(), i32> {
    futex_pi(word, libc::FUTEX_LOCK_PI)
}

/// `FUTEX_UNLOCK_PI` on `word`, which holds this thread's id: the kernel
/// hands the lock to its top waiter, or frees it.
pub(crate) fn futex_unlock_pi(word: &crate::sync::AtomicU32) -> Result<(), i32> {
    futex_pi(word, libc::FUTEX_UNLOCK_PI)
}

/// One PI futex operation (`op`: `FUTEX_LOCK_PI` or `FUTEX_UNLOCK_PI`) on
/// `word`, process-private, without timeout.
fn futex_pi(word: &crate::sync::AtomicU32, op: i32) -> Result<(), i32> {
    // SAFETY: `word` is a live, aligned u32 for the call's duration; a null
    // timeout waits without bound; the other arguments are unused by both ops.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            op | libc::FUTEX_PRIVATE_FLAG,
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

/// Signal `sig` as one thread sees it, read from `/proc/self/task/<tid>/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SignalView {
    /// In the thread's blocked mask (`SigBlk`).
    pub(crate) blocked: bool,
    /// Pending for the thread (`SigPnd`) or the process (`ShdPnd`).
    pub(crate) pending: bool,
}

/// How thread `tid` of this process sees `sig`; `None` if its status cannot
/// be read (the thread is gone) or parsed.
pub(crate) fn signal_view(tid: u32, sig: i32) -> Option<SignalView> {
    let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).ok()?;
    let has = |key: &str| -> Option<bool> {
        let line = text.lines().find_map(|l| l.strip_prefix(key))?;
        let mask = u64::from_str_radix(line.trim(), 16).ok()?;
        Some((1..=64).contains(&sig) && mask & (1u64 << (sig - 1)) != 0)
    };
    Some(SignalView {
        blocked: has("SigBlk:")?,
        pending: has("SigPnd:")? || has("ShdPnd:")?,
    })
}
