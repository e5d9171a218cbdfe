//! The allocators a program runs under, as `LD_PRELOAD` gives them:
//! glibc (nothing preloaded), Debian's mimalloc and jemalloc, and
//! `libqpw_malloc.so` with `QPW=0` and `QPW=1`. Finding (or building) each
//! library; one that cannot be found is a skipped column with its reason.

use super::spawn;
use crate::alloc::dispatch::AllocName;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The columns, in table order.
pub const ORDER: [AllocName; 5] = [
    AllocName::Glibc,
    AllocName::Mimalloc,
    AllocName::Jemalloc,
    AllocName::QpwQueue,
    AllocName::QpwRemote,
];

/// The sonames `ldconfig` knows Debian's packages by, and the package.
const PEERS: [(AllocName, &str, &str); 2] = [
    (AllocName::Mimalloc, "libmimalloc.so.2", "libmimalloc2.0"),
    (AllocName::Jemalloc, "libjemalloc.so.2", "libjemalloc2"),
];

/// Where the loader looks when `ldconfig` cannot be asked.
const LIB_DIRS: [&str; 4] = [
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib64",
    "/usr/local/lib",
];

/// How long `cargo build --release -p qpw-malloc` may take.
const BUILD_LIMIT: Duration = Duration::from_secs(1800);

/// One allocator ready to run under: the environment a program gets.
#[derive(Debug, Clone)]
pub struct Ready {
    /// The allocator.
    pub name: AllocName,
    /// The library to preload (`None`: glibc's malloc).
    pub preload: Option<PathBuf>,
}

impl Ready {
    /// Sets `cmd`'s environment for this allocator: `LD_PRELOAD` (or none)
    /// and, for qpw, `QPW`; the caller's own values of both are removed.
    pub fn apply(&self, cmd: &mut Command) {
        cmd.env_remove("LD_PRELOAD").env_remove("QPW");
        if let Some(p) = &self.preload {
            cmd.env("LD_PRELOAD", p);
        }
        match self.name {
            AllocName::QpwQueue => {
                cmd.env("QPW", "0");
            }
            AllocName::QpwRemote => {
                cmd.env("QPW", "1");
            }
            _ => {}
        }
    }
}

/// The allocators resolved: those ready, those skipped with the reason,
/// and how the qpw library was found.
#[derive(Debug, Default)]
pub struct Resolved {
    /// In table order.
    pub ready: Vec<Ready>,
    /// (allocator, why it is not run).
    pub skipped: Vec<(AllocName, String)>,
    /// Where each library came from, one line each.
    pub sources: Vec<String>,
}

/// How to get `libqpw_malloc.so`.
#[derive(Debug, Clone, PartialEq)]
pub enum QpwLib {
    /// This file (`--qpw-lib`).
    Given(PathBuf),
    /// `cargo build --release -p qpw-malloc`, then the built file.
    Build,
    /// The file a release build left, without building.
    Locate,
}

/// Resolves `wanted` (in table order). An error only for a `--qpw-lib`
/// that is not a file: everything else missing is a skip.
pub fn resolve(wanted: &[AllocName], qpw: &QpwLib) -> Result<Resolved, String> {
    if let QpwLib::Given(p) = qpw {
        if !p.is_file() {
            return Err(format!("--qpw-lib {}: no such file", p.display()));
        }
    }
    let mut r = Resolved::default();
    let wants_qpw = wanted.iter().any(|a| !a.is_peer());
    let qpw_lib = if wants_qpw {
        match qpw_library(qpw) {
            Ok((p, how)) => {
                r.sources.push(format!("qpw: {} ({how})", p.display()));
                Ok(p)
            }
            Err(e) => Err(e),
        }
    } else {
        Err(String::new())
    };
    for a in ORDER.into_iter().filter(|a| wanted.contains(a)) {
        let preload = match a {
            AllocName::Glibc => Ok(None),
            AllocName::QpwQueue | AllocName::QpwRemote => qpw_lib.clone().map(Some),
            _ => {
                let (_, soname, package) = PEERS
                    .iter()
                    .find(|(p, _, _)| *p == a)
                    .expect("a peer with a package");
                match find_system_lib(soname) {
                    Some(p) => {
                        r.sources.push(format!(
                            "{}: {} (package {package})",
                            a.name(),
                            p.display()
                        ));
                        Ok(Some(p))
                    }
                    None => Err(format!(
                        "{soname} not found (install the Debian package {package})"
                    )),
                }
            }
        };
        match preload {
            Ok(preload) => r.ready.push(Ready { name: a, preload }),
            Err(e) => r.skipped.push((a, e)),
        }
    }
    Ok(r)
}

/// A system library by soname: from `ldconfig -p`, else the usual
/// directories.
fn find_system_lib(soname: &str) -> Option<PathBuf> {
    // `ldconfig -p` lines: "\tlibx.so.2 (libc6,x86-64) => /lib/.../libx.so.2".
    let arch_ok = |desc: &str| !cfg!(target_arch = "x86_64") || desc.contains("x86-64");
    let from_cache = Command::new("ldconfig")
        .arg("-p")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout).lines().find_map(|l| {
                let (desc, path) = l.trim().split_once(" => ")?;
                (desc.split_whitespace().next() == Some(soname) && arch_ok(desc))
                    .then(|| PathBuf::from(path.trim()))
            })
        });
    from_cache.filter(|p| p.is_file()).or_else(|| {
        LIB_DIRS
            .iter()
            .map(|d| Path::new(d).join(soname))
            .find(|p| p.is_file())
    })
}

/// The cargo target directory this program runs from
/// (`<target>/<profile>/qpw-bench`; cargo marks it with `CACHEDIR.TAG`),
/// `None` for a copy installed elsewhere.
fn target_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let t = exe.parent()?.parent()?;
    t.join("CACHEDIR.TAG").is_file().then(|| t.to_path_buf())
}

/// The workspace this program was built from, if it is still there.
fn workspace() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?.parent()?;
    root.join("crates/qpw-malloc/Cargo.toml")
        .is_file()
        .then(|| root.to_path_buf())
}

/// `libqpw_malloc.so` and how it was found.
fn qpw_library(how: &QpwLib) -> Result<(PathBuf, String), String> {
    let built = || {
        target_dir()
            .map(|t| t.join("release/libqpw_malloc.so"))
            .ok_or_else(|| {
                "this program does not run from a cargo target directory: give --qpw-lib"
                    .to_string()
            })
    };
    match how {
        QpwLib::Given(p) => Ok((p.clone(), "given with --qpw-lib".to_string())),
        QpwLib::Locate => {
            let p = built()?;
            if p.is_file() {
                Ok((p, "found, not rebuilt (--no-build)".to_string()))
            } else {
                Err(format!(
                    "{} not found (--no-build): run `cargo build --release -p qpw-malloc`",
                    p.display()
                ))
            }
        }
        QpwLib::Build => {
            let p = built()?;
            let ws = workspace().ok_or_else(|| {
                "the qpw workspace this program was built from is gone: give --qpw-lib".to_string()
            })?;
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let target = target_dir().expect("checked by built()");
            let t = Instant::now();
            eprintln!("qpw-bench: realprog: cargo build --release -p qpw-malloc ...");
            spawn::run(
                Command::new(cargo)
                    .args(["build", "--release", "-p", "qpw-malloc", "--target-dir"])
                    .arg(&target)
                    .current_dir(&ws),
                b"",
                BUILD_LIMIT,
            )
            .map_err(|e| format!("`cargo build --release -p qpw-malloc` failed: {e}"))?;
            if !p.is_file() {
                return Err(format!("the build made no {}", p.display()));
            }
            Ok((
                p,
                format!(
                    "built by `cargo build --release -p qpw-malloc` in {:.1} s",
                    t.elapsed().as_secs_f64()
                ),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_names_the_library_and_the_mode() {
        let r = Ready {
            name: AllocName::QpwRemote,
            preload: Some(PathBuf::from("/x/libqpw_malloc.so")),
        };
        let mut c = Command::new("true");
        c.env("QPW", "7");
        r.apply(&mut c);
        let envs: Vec<_> = c.get_envs().collect();
        assert!(envs.contains(&("LD_PRELOAD".as_ref(), Some("/x/libqpw_malloc.so".as_ref()))));
        assert!(envs.contains(&("QPW".as_ref(), Some("1".as_ref()))));
        let mut c = Command::new("true");
        Ready {
            name: AllocName::Glibc,
            preload: None,
        }
        .apply(&mut c);
        assert!(
            c.get_envs().all(|(_, v)| v.is_none()),
            "glibc removes both and sets nothing"
        );
    }

    #[test]
    fn a_missing_qpw_lib_is_an_error_and_missing_peers_are_skips() {
        let e = resolve(&ORDER, &QpwLib::Given("/nonexistent/lib.so".into())).unwrap_err();
        assert!(e.contains("--qpw-lib") && e.contains("no such file"), "{e}");
        let r = resolve(&[AllocName::Glibc], &QpwLib::Locate).unwrap();
        assert_eq!(r.ready.len(), 1);
        assert!(r.skipped.is_empty());
        assert_eq!(find_system_lib("libnot-a-real-allocator.so.9"), None);
    }
}
