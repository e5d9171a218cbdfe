//! The consumer fork hooks: called around `fork()` in `pthread_atfork` order
//! (prepare in registration order, parent and child in reverse), and no
//! longer once their handle is dropped.

use qpw::{register_fork_hook, ForkHook};
use std::sync::{Arc, Mutex};

struct Recorder {
    name: &'static str,
    log: Arc<Mutex<Vec<String>>>,
}

impl ForkHook for Recorder {
    fn prepare(&self) {
        self.log
            .lock()
            .unwrap()
            .push(format!("prepare {}", self.name));
    }
    fn parent(&self) {
        self.log
            .lock()
            .unwrap()
            .push(format!("parent {}", self.name));
    }
    fn child(&self) {
        self.log
            .lock()
            .unwrap()
            .push(format!("child {}", self.name));
    }
}

/// Forks; the child runs `check` on the log and exits 0 if it holds.
/// Returns the child's exit status.
fn fork_and_check(log: &Arc<Mutex<Vec<String>>>, check: impl Fn(&[String]) -> bool) -> i32 {
    // SAFETY: the child only locks a mutex no other thread holds (this test's
    // threads do not touch `log` while forking), compares, and `_exit`s.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let ok = check(&log.lock().unwrap());
        // SAFETY: _exit ends the child without running the parent's atexit work.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(rc, pid);
    assert!(
        libc::WIFEXITED(status),
        "child did not exit normally: {status:#x}"
    );
    libc::WEXITSTATUS(status)
}

#[test]
fn hooks_run_in_atfork_order_and_stop_when_dropped() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let a = register_fork_hook(Arc::new(Recorder {
        name: "a",
        log: log.clone(),
    }));
    let b = register_fork_hook(Arc::new(Recorder {
        name: "b",
        log: log.clone(),
    }));
    let status = fork_and_check(&log, |l| {
        l == ["prepare a", "prepare b", "child b", "child a"]
    });
    assert_eq!(status, 0, "child saw the hooks in the wrong order");
    assert_eq!(
        *log.lock().unwrap(),
        ["prepare a", "prepare b", "parent b", "parent a"]
    );

    log.lock().unwrap().clear();
    drop(a);
    let status = fork_and_check(&log, |l| l == ["prepare b", "child b"]);
    assert_eq!(status, 0, "a dropped hook ran in the child");
    assert_eq!(*log.lock().unwrap(), ["prepare b", "parent b"]);
    b.leak();
}
