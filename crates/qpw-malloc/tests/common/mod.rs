//! What the tests share: the built library (built here, since `cargo test`
//! builds a `cdylib`-only crate's library for no one), C programs compiled
//! with `cc`, and running a program with a bounded wait.
#![allow(dead_code)] // each test file uses part of this

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The profile directory this test was built into (`target/debug`, ...).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test>-<hash>
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary inside target/<profile>/deps")
        .to_path_buf()
}

/// Builds this crate's `cdylib` and `staticlib` once per test binary, with
/// the profile the test itself was built with (`cargo test` does not build
/// them: integration tests link no `cdylib`), and returns the profile
/// directory holding them. Parallel tests wait on the `OnceLock`; cargo's
/// own lock orders concurrent test binaries.
pub fn lib_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = profile_dir();
        let target = dir.parent().expect("target dir");
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "-p", "qpw-malloc", "--target-dir"])
            .arg(target)
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if cfg!(debug_assertions) {
            cmd.args(["--profile", "test"]);
        } else {
            cmd.arg("--release");
        }
        let out = cmd.output().expect("run cargo build");
        assert!(
            out.status.success(),
            "cargo build -p qpw-malloc failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            dir.join("libqpw_malloc.so").exists(),
            "no cdylib in {dir:?}"
        );
        dir
    })
}

/// The built shared library, for `LD_PRELOAD`.
pub fn cdylib() -> PathBuf {
    lib_dir().join("libqpw_malloc.so")
}

/// The built static library.
pub fn staticlib() -> PathBuf {
    lib_dir().join("libqpw_malloc.a")
}

/// Scratch space for this test binary.
pub fn tmp_dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("qpw-malloc");
    std::fs::create_dir_all(&d).expect("create tmp dir");
    d
}

/// Compiles `tests/c/<name>.c` (with `extra` arguments, e.g. a static
/// library) into the scratch directory as `<out>`, once per output name.
pub fn compile_c(name: &str, out: &str, extra: &[&Path]) -> PathBuf {
    // Compiled once per test binary: recompiling a program another test is
    // running would fail that test's exec (ETXTBSY) or this compile.
    static DONE: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
    let exe = tmp_dir().join(out);
    if done.iter().any(|d| d == out) {
        return exe;
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/c")
        .join(format!("{name}.c"));
    // Written beside and renamed: a program still running from an earlier
    // test binary keeps its old file.
    let tmp = tmp_dir().join(format!("{out}.tmp{}", std::process::id()));
    let mut cmd = Command::new("cc");
    cmd.args(["-O1", "-g", "-Wall", "-Werror", "-fno-builtin", "-o"])
        .arg(&tmp)
        .arg(&src);
    for e in extra {
        cmd.arg(e);
    }
    // Everything a Rust static library needs from the system.
    cmd.args([
        "-lpthread",
        "-ldl",
        "-lm",
        "-lgcc_s",
        "-lutil",
        "-lrt",
        "-lc",
    ]);
    let o = cmd.output().expect("run cc");
    assert!(
        o.status.success(),
        "cc {src:?} failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    std::fs::rename(&tmp, &exe).expect("rename the compiled program");
    done.push(out.to_string());
    exe
}

/// Whether `prog` can be run here (tests of real programs skip, saying so,
/// when one is missing; `cc` is required).
pub fn have(prog: &str) -> bool {
    Command::new(prog)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// The result of [`run`]: `None` status when it had to be killed.
pub struct Run {
    pub out: Output,
    pub timed_out: bool,
}

impl Run {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }
    /// Asserts a clean exit, with everything needed to see why not.
    pub fn assert_ok(&self, what: &str) {
        assert!(
            !self.timed_out && self.out.status.success(),
            "{what}: timed out: {}, status {:?}\nstdout (tail):\n{}\nstderr (tail):\n{}",
            self.timed_out,
            self.out.status,
            tail(&self.stdout()),
            tail(&self.stderr())
        );
    }
}

fn tail(s: &str) -> &str {
    let mut i = s.len().saturating_sub(3000);
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}

/// Runs `cmd` with stdin from `stdin` (if any), killing it after `limit`:
/// every wait in these tests is bounded, and a hang is reported as one.
pub fn run(mut cmd: Command, stdin: Option<&Path>, limit: Duration) -> Run {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    match stdin {
        Some(p) => cmd.stdin(std::fs::File::open(p).expect("open stdin file")),
        None => cmd.stdin(Stdio::null()),
    };
    // Its own process group, so a timeout kills its children too (they
    // hold the pipes open otherwise).
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().expect("spawn");
    // Drain the pipes on threads so a chatty child cannot block.
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut so, &mut v).ok();
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut se, &mut v).ok();
        v
    });
    let start = Instant::now();
    let mut timed_out = false;
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if start.elapsed() > limit {
            timed_out = true;
            // SAFETY: kill has no memory preconditions; the group is the child's.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            break child.wait().expect("wait after kill");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run {
        out: Output {
            status,
            stdout: t_out.join().unwrap(),
            stderr: t_err.join().unwrap(),
        },
        timed_out,
    }
}

/// `cmd` with the library preloaded (and nothing else from the caller's
/// `LD_PRELOAD`).
pub fn preloaded(prog: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new(prog);
    c.env("LD_PRELOAD", cdylib());
    c.env_remove("QPW_MALLOC_STATS");
    c.env_remove("QPW");
    c.env_remove("QPW_MALLOC_DECAY_MS");
    c.env_remove("QPW_MALLOC_DECAY_THREAD");
    c
}

/// The real interpreter behind `python3`, or `None` if there is none (a
/// pyenv shim is a shell script, whose own forks would run under the
/// library too and print statistics).
pub fn python() -> Option<String> {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}
