//! Running one program with a bounded wait: in a process group of its own
//! (killed whole at the time limit), its output collected, its wall time
//! taken from the start to the moment `wait` returns.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A program that exited 0.
#[derive(Debug)]
pub struct Finished {
    /// Its standard output.
    pub stdout: String,
    /// From the start to the end of `wait`.
    pub wall: Duration,
}

/// What the dynamic loader prints when it cannot preload a library (and
/// then runs the program without it).
const PRELOAD_FAILED: &str = "from LD_PRELOAD cannot be preloaded";

/// Starts `cmd` in a new process group with `input` on its standard input,
/// waits for it at most `limit` (then kills the group), and returns its
/// output if it exited 0 and the loader preloaded what it was asked to.
pub fn run(cmd: &mut Command, input: &[u8], limit: Duration) -> Result<Finished, String> {
    let start = Instant::now();
    let mut child = start_group(cmd, Stdio::piped())?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = input.to_vec();
    // A writer thread: a program that does not read its input (or dies)
    // must not block us.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = reader(child.stdout.take().expect("piped stdout"));
    let err = reader(child.stderr.take().expect("piped stderr"));
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let status = child.wait();
        let _ = tx.send((status, start.elapsed()));
    });
    let (status, wall, timed_out) = match rx.recv_timeout(limit) {
        Ok((s, w)) => (s, w, false),
        Err(_) => {
            kill_group(pid);
            let (s, w) = rx
                .recv()
                .map_err(|_| "the waiting thread vanished".to_string())?;
            (s, w, true)
        }
    };
    let _ = waiter.join();
    let _ = writer.join();
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    let status = status.map_err(|e| format!("waiting for it: {e}"))?;
    if timed_out {
        return Err(format!(
            "timed out after {} s and killed",
            limit.as_secs_f64()
        ));
    }
    check_preloaded(&stderr)?;
    if !status.success() {
        let last = stderr.lines().last().unwrap_or("").trim();
        return Err(format!(
            "{status}{}",
            if last.is_empty() {
                String::new()
            } else {
                format!(": {last}")
            }
        ));
    }
    Ok(Finished { stdout, wall })
}

/// Starts `cmd` in a process group of its own, its standard output and
/// error piped. Out of our group, a terminal's Ctrl-C would not reach it:
/// it is killed instead when the thread that started it ends
/// (`PR_SET_PDEATHSIG`), so call this from a thread that lives as long as
/// the program should (realprog's main thread).
pub fn start_group(cmd: &mut Command, stdin: Stdio) -> Result<Child, String> {
    let parent = std::process::id();
    let die_with_parent = move || -> std::io::Result<()> {
        // SAFETY: prctl with an integer option and a signal number.
        if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: getppid has no preconditions. The parent may have died
        // before prctl: then the child must not run on.
        if unsafe { libc::getppid() } as u32 != parent {
            // SAFETY: _exit ends the forked child at once, running nothing
            // of the parent's (no atexit handlers, no buffers flushed).
            unsafe { libc::_exit(1) };
        }
        Ok(())
    };
    // SAFETY: the hook runs in the child between fork and exec, where only
    // async-signal-safe calls are allowed: it makes only prctl, getppid and
    // _exit, and allocates nothing (an OS error is a plain code).
    unsafe {
        cmd.pre_exec(die_with_parent);
    }
    cmd.process_group(0)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {:?}: {e}", cmd.get_program()))
}

/// Kills the process group `pid` leads.
pub fn kill_group(pid: u32) {
    // SAFETY: kill has no memory effects; the group is one we created
    // (`process_group(0)`), led by our unreaped child, so its id is not
    // reused.
    unsafe {
        libc::kill(-(pid as libc::pid_t), libc::SIGKILL);
    }
}

/// An error if the loader said it could not preload a library.
pub fn check_preloaded(stderr: &str) -> Result<(), String> {
    match stderr.lines().find(|l| l.contains(PRELOAD_FAILED)) {
        Some(l) => Err(format!("the allocator was not loaded: {}", l.trim())),
        None => Ok(()),
    }
}

/// Reads a pipe to its end on a thread of its own.
pub fn reader<R: Read + Send + 'static>(mut r: R) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = r.read_to_end(&mut v);
        String::from_utf8_lossy(&v).into_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_past_its_limit_is_killed_with_its_children() {
        let t = Instant::now();
        let e = run(
            Command::new("sh").args(["-c", "sleep 30 & sleep 30"]),
            b"",
            Duration::from_millis(200),
        )
        .unwrap_err();
        assert!(e.contains("timed out"), "{e}");
        // The group was killed: the background sleep holds no pipe open.
        assert!(t.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_child_dies_with_the_thread_that_started_it() {
        use std::os::unix::process::ExitStatusExt;
        let mut child = std::thread::spawn(|| {
            start_group(Command::new("sleep").arg("30"), Stdio::null()).unwrap()
        })
        .join()
        .unwrap();
        let t = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if t.elapsed() > Duration::from_secs(10) {
                kill_group(child.id());
                let _ = child.wait();
                panic!("the child outlived the thread that started it by 10 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(status.signal(), Some(libc::SIGKILL));
    }

    #[test]
    fn input_output_and_failures_are_reported() {
        let f = run(&mut Command::new("cat"), b"abc", Duration::from_secs(30)).unwrap();
        assert_eq!(f.stdout, "abc");
        let e = run(
            Command::new("sh").args(["-c", "echo bad >&2; exit 3"]),
            b"",
            Duration::from_secs(30),
        )
        .unwrap_err();
        assert!(e.contains("3") && e.contains("bad"), "{e}");
        let e = run(
            Command::new("true").env("LD_PRELOAD", "/nonexistent/libnothing.so"),
            b"",
            Duration::from_secs(30),
        )
        .unwrap_err();
        assert!(e.contains("not loaded"), "{e}");
        assert!(run(
            &mut Command::new("/nonexistent/program"),
            b"",
            Duration::from_secs(1)
        )
        .unwrap_err()
        .contains("cannot start"));
    }
}
