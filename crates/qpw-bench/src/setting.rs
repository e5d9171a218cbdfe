//! System settings a run changes, put back when the run ends, fails, or is
//! interrupted by SIGINT, SIGTERM or SIGHUP.
//!
//! No signal handler: [`watch_signals`] runs first in `main`, before any
//! thread exists. It blocks the three signals in the main thread, so every
//! thread created after it inherits the mask, and starts the one thread that
//! has them unblocked in effect: it waits for them with `sigwait`. When one
//! arrives, that thread writes back every setting still changed, then ends
//! the process by the same signal (default action, unblocked in that thread
//! only), so a shell sees the usual "killed by SIGINT". A signal the parent
//! set to be ignored (`nohup` ignores SIGHUP) stays ignored. Child processes
//! started with `std::process::Command` get an empty mask back.
//!
//! A [`Changed`] setting is recorded before it is written and removed after
//! it is written back, under one lock, so a signal at any moment restores it
//! exactly once.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The settings changed now: (path, the value to write back).
static CHANGED: Mutex<Vec<(PathBuf, String)>> = Mutex::new(Vec::new());

/// The signals that end the process after the settings are restored.
const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it below.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, writable sigset_t; the signal numbers are valid.
    unsafe {
        libc::sigemptyset(&mut set);
        for s in SIGNALS {
            libc::sigaddset(&mut set, s);
        }
    }
    set
}

/// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread and starts the
/// thread that waits for them. Call it first in `main`, before any other
/// thread is created (they inherit the mask).
pub fn watch_signals() -> Result<(), String> {
    let set = signal_set();
    // SAFETY: `set` is initialised; a null old mask is allowed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(format!(
            "blocking SIGINT/SIGTERM/SIGHUP: {}",
            std::io::Error::from_raw_os_error(rc)
        ));
    }
    std::thread::Builder::new()
        .name("qpw-bench-signals".into())
        .spawn(move || wait_and_restore(set))
        .map(|_| ())
        .map_err(|e| format!("starting the signal-waiting thread: {e}"))
}

/// The signal thread: waits, restores, ends the process by the signal.
fn wait_and_restore(set: libc::sigset_t) {
    let mut sig: libc::c_int = 0;
    // SAFETY: `set` is initialised and `sig` is writable. The signals are
    // blocked here (inherited from `main`), as sigwait requires. This thread
    // waits for the process's whole life: it is the process's reaction to
    // Ctrl-C, not a wait anything else depends on.
    let rc = unsafe { libc::sigwait(&set, &mut sig) };
    if rc != 0 {
        eprintln!(
            "qpw-bench: sigwait failed ({}): system settings are restored only on a normal exit",
            std::io::Error::from_raw_os_error(rc)
        );
        return;
    }
    let mut changed = CHANGED.lock().unwrap_or_else(|e| e.into_inner());
    for (path, was) in changed.drain(..) {
        match std::fs::write(&path, &was) {
            Ok(()) => eprintln!(
                "qpw-bench: interrupted (signal {sig}): {} restored to {was}",
                path.display()
            ),
            Err(e) => eprintln!(
                "qpw-bench: interrupted (signal {sig}): could not restore {} to {was}: {e}",
                path.display()
            ),
        }
    }
    // Still holding the lock: no `Changed` can be dropped or made now.
    let mut one = signal_set();
    // SAFETY: `one` is initialised; emptying and adding a valid signal.
    unsafe {
        libc::sigemptyset(&mut one);
        libc::sigaddset(&mut one, sig);
    }
    // SAFETY: `one` is initialised. Unblocking in this thread only, then
    // raising the signal at this thread: its action is the default one (it
    // was delivered, so not ignored, and qpw-bench installs no handler), which
    // ends the process.
    unsafe {
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &one, std::ptr::null_mut());
        libc::raise(sig);
    }
    std::process::exit(128 + sig);
}

/// A system setting changed by [`Changed::set`]; written back on drop (or
/// by the signal thread on SIGINT, SIGTERM or SIGHUP).
#[derive(Debug)]
pub struct Changed {
    path: PathBuf,
    /// The value before the change.
    pub was: String,
}

impl Changed {
    /// Writes `value` to `path` (a `/proc/sys` file) after recording its
    /// old value for restoring. `Err` when it cannot be read or written:
    /// nothing is changed then.
    pub fn set(path: &Path, value: &str) -> Result<Changed, String> {
        let was = std::fs::read_to_string(path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?
            .trim()
            .to_string();
        let mut changed = CHANGED.lock().unwrap_or_else(|e| e.into_inner());
        changed.push((path.to_path_buf(), was.clone()));
        if let Err(e) = std::fs::write(path, value) {
            changed.pop();
            return Err(format!(
                "{} = {was}; could not write {value}: {e}",
                path.display()
            ));
        }
        Ok(Changed {
            path: path.to_path_buf(),
            was,
        })
    }
}

impl Drop for Changed {
    fn drop(&mut self) {
        let mut changed = CHANGED.lock().unwrap_or_else(|e| e.into_inner());
        let Some(i) = changed.iter().rposition(|(p, _)| *p == self.path) else {
            return;
        };
        changed.remove(i);
        if let Err(e) = std::fs::write(&self.path, &self.was) {
            eprintln!(
                "qpw-bench: could not restore {} to {}: {e}",
                self.path.display(),
                self.was
            );
        }
    }
}
