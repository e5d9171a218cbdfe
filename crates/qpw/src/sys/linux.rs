//! Linux: `sched_{get,set}affinity`, `membarrier`, PI futexes, sysfs.

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
    // fork handlers may. 0 = not known yet.
    static TID: std::cell::Cell<i32> = const { std::cell::Cell::new(0) };
}

/// The calling thread's kernel thread id, cached per thread (one TLS load
/// after the first call). The cache is dropped in a fork
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

// `membarrier(2)` commands and flags (linux/membarrier.h; not all are in
// the libc crate).
const MEMBARRIER_CMD_PRIVATE_EXPEDITED: i32 = 1 << 3;
const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED: i32 = 1 << 4;
const MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ: i32 = 1 << 7;
const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ: i32 = 1 << 8;
const MEMBARRIER_CMD_FLAG_CPU: i32 = 1;

fn membarrier(cmd: i32, flags: i32, cpu: i32) -> Result<(), i32> {
    // SAFETY: membarrier takes plain integers and touches no memory of ours.
    let rc = unsafe { libc::syscall(libc::SYS_membarrier, cmd, flags, cpu) };
    if rc == 0 {
        Ok(())
    } else {
        Err(errno())
    }
}

/// Registers this process for private expedited `membarrier` (needed once
/// per process before [`fence_process`]); the errno if the kernel refuses
/// (`ENOSYS`: no membarrier; `EINVAL`: not this command; `EPERM`: a seccomp
/// filter).
pub(crate) fn fence_register() -> Result<(), i32> {
    membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0)
}

/// Registers this process for the `RSEQ` flavour, the only one that
/// accepts `MEMBARRIER_CMD_FLAG_CPU` (one CPU); needed before [`fence_cpu`].
pub(crate) fn fence_register_targeted() -> Result<(), i32> {
    membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ, 0, 0)
}

/// Makes every CPU that runs a thread of this process execute a full
/// memory barrier (`MEMBARRIER_CMD_PRIVATE_EXPEDITED`: an IPI to each).
pub(crate) fn fence_process() -> Result<(), i32> {
    membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0)
}

/// Makes CPU `cpu` execute a full memory barrier if it runs a thread of
/// this process (`MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ` with
/// `MEMBARRIER_CMD_FLAG_CPU`: one IPI; its handler `ipi_rseq` issues
/// `smp_mb()` before it notes the rseq event).
pub(crate) fn fence_cpu(cpu: usize) -> Result<(), i32> {
    let cpu = i32::try_from(cpu).map_err(|_| libc::EINVAL)?;
    membarrier(
        MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ,
        MEMBARRIER_CMD_FLAG_CPU,
        cpu,
    )
}
