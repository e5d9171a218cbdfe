//! `qpw-bench realprog`: unmodified programs under `LD_PRELOAD`, one
//! process per (program, allocator, round).
//!
//! The allocators ([`allocators`]): glibc (nothing preloaded), Debian's
//! mimalloc and jemalloc, and `libqpw_malloc.so` with `QPW=0`
//! (`qpw-queue`) and `QPW=1` (`qpw-remote`), built by
//! `cargo build --release -p qpw-malloc` unless given or `--no-build`. A
//! library that cannot be found is a skipped column, printed with why.
//!
//! The programs ([`programs`]): our C workloads of the classic kinds
//! ([`cwork`], compiled with `cc` at run time), Debian's `python3`
//! ([`python`]), `sqlite3` ([`sqlite`]) and `redis-server` under
//! `redis-benchmark` over 127.0.0.1 ([`redis`]). One not installed is a
//! printed skip.
//!
//! Rounds are interleaved (each round runs every program under every
//! allocator, the allocators' order rotated by one each round); each
//! figure is the median over the rounds ([`table`]), shown relative to
//! mimalloc's, with the peak RSS of the measured process and its RSS once
//! the work is freed, and the load average at the start and the end.

pub mod allocators;
pub mod cwork;
pub mod programs;
pub mod python;
pub mod redis;
pub mod spawn;
pub mod sqlite;
pub mod table;

use crate::alloc::dedup_or;
use crate::alloc::dispatch::AllocName;
use crate::util;
use allocators::QpwLib;
use programs::{Ctx, Program, Sample};
use std::path::PathBuf;
use std::time::Duration;
use table::{RealprogReport, Skip};

fn parse_rounds(s: &str) -> Result<usize, String> {
    crate::util::parse_count_to_100(s, "rounds")
}

/// Options of `qpw-bench realprog`.
#[derive(clap::Args, Debug, Clone)]
pub struct RealprogArgs {
    /// Programs to run, comma-separated [default: all].
    #[arg(long, value_enum, value_delimiter = ',')]
    pub program: Vec<Program>,
    /// Allocators to compare, comma-separated [default: all].
    #[arg(long, value_enum, value_delimiter = ',')]
    pub allocator: Vec<AllocName>,
    /// Interleaved rounds; each figure is the median over them.
    #[arg(long, default_value_t = 3, value_parser = parse_rounds)]
    pub rounds: usize,
    /// Multiplier of every program's work (1: the sizes the descriptions give).
    #[arg(long, default_value_t = 1.0, value_parser = crate::alloc::parse_scale, allow_negative_numbers = true)]
    pub scale: f64,
    /// A program still running after this many seconds is killed and its run counted as failed.
    #[arg(long, default_value_t = 300.0, value_parser = util::parse_seconds, allow_negative_numbers = true)]
    pub timeout: f64,
    /// The qpw library to preload [default: build it with `cargo build --release -p qpw-malloc`].
    #[arg(long)]
    pub qpw_lib: Option<PathBuf>,
    /// Do not build the qpw library: use `target/release/libqpw_malloc.so` as it is.
    #[arg(long, conflicts_with = "qpw_lib")]
    pub no_build: bool,
    /// Print the results as JSON instead of Markdown tables.
    #[arg(long)]
    pub json: bool,
}

impl Default for RealprogArgs {
    fn default() -> Self {
        RealprogArgs {
            program: Vec::new(),
            allocator: Vec::new(),
            rounds: 3,
            scale: 1.0,
            timeout: 300.0,
            qpw_lib: None,
            no_build: false,
            json: false,
        }
    }
}

impl RealprogArgs {
    fn programs(&self) -> Vec<Program> {
        dedup_or(&self.program, &Program::ALL)
    }

    fn allocators(&self) -> Vec<AllocName> {
        dedup_or(&self.allocator, &allocators::ORDER)
    }

    fn qpw_lib(&self) -> QpwLib {
        match (&self.qpw_lib, self.no_build) {
            (Some(p), _) => QpwLib::Given(p.clone()),
            (None, true) => QpwLib::Locate,
            (None, false) => QpwLib::Build,
        }
    }
}

/// The load average (1, 5 and 15 minutes), as `/proc/loadavg` gives it.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".to_string())
}

/// A scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Scratch, String> {
        let d = std::env::temp_dir().join(format!("qpw-bench-realprog-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).map_err(|e| format!("creating {}: {e}", d.display()))?;
        Ok(Scratch(d))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How the figures are measured, for the report.
pub fn method(a: &RealprogArgs) -> String {
    format!(
        "each (program, allocator) run is its own process, the allocator preloaded with LD_PRELOAD (glibc: none; \
         qpw: QPW=0 or QPW=1 beside it); {} interleaved round(s) (every program under every allocator, the \
         allocators' order rotated each round), median reported; work scale {}; our C programs and the Python \
         script time their own work and read their own VmHWM, then free everything and read VmRSS; sqlite3 is \
         timed from start to exit; a run over {} s is killed and counted failed",
        a.rounds, a.scale, a.timeout
    )
}

/// Runs every program under every allocator; `step` is told before each
/// run starts.
pub fn run(a: &RealprogArgs, step: &mut dyn FnMut(&str)) -> Result<RealprogReport, String> {
    let resolved = allocators::resolve(&a.allocators(), &a.qpw_lib())?;
    let scratch = Scratch::new()?;
    let limit = Duration::from_secs_f64(a.timeout);
    let mut skipped_programs: Vec<Skip> = Vec::new();
    let mut programs: Vec<Program> = Vec::new();
    let c_ready = if a.programs().iter().any(|p| p.is_c()) {
        step("realprog: compiling the C programs");
        cwork::compile(&scratch.0, limit)
    } else {
        Ok(())
    };
    for p in a.programs() {
        let why = match (&c_ready, p.is_c()) {
            (Err(e), true) => Some(e.clone()),
            _ => p.missing(),
        };
        match why {
            Some(reason) => skipped_programs.push(Skip {
                name: p.name().to_string(),
                reason,
            }),
            None => programs.push(p),
        }
    }
    let ctx = Ctx {
        dir: &scratch.0,
        scale: a.scale,
        limit,
    };
    let ready = &resolved.ready;
    let n = ready.len();
    // After the build and the compiles: the load the runs start under.
    let load_start = loadavg();
    // [program][allocator]: the samples of every round, and the failures.
    let mut samples: Vec<Vec<Vec<Sample>>> = vec![vec![Vec::new(); n]; programs.len()];
    let mut failures: Vec<Vec<(usize, Option<String>)>> = vec![vec![(0, None); n]; programs.len()];
    for round in 0..a.rounds {
        for (pi, p) in programs.iter().enumerate() {
            for k in 0..n {
                let ai = (k + round) % n;
                let al = &ready[ai];
                step(&format!("realprog: {} under {}", p.name(), al.name.name()));
                match p.run(al, &ctx) {
                    Ok(s) => samples[pi][ai].extend(s),
                    Err(e) => {
                        eprintln!(
                            "qpw-bench: realprog: {} under {}: {e}",
                            p.name(),
                            al.name.name()
                        );
                        failures[pi][ai].0 += 1;
                        failures[pi][ai].1 = Some(e);
                    }
                }
            }
        }
    }
    let names: Vec<AllocName> = ready.iter().map(|r| r.name).collect();
    Ok(table::summarise(
        table::Inputs {
            method: method(a),
            rounds: a.rounds,
            scale: a.scale,
            timeout_s: a.timeout,
            allocators: &names,
            sources: resolved.sources,
            skipped_allocators: resolved
                .skipped
                .into_iter()
                .map(|(al, reason)| Skip {
                    name: al.name().to_string(),
                    reason,
                })
                .collect(),
            skipped_programs,
            load_start,
            load_end: loadavg(),
        },
        &programs,
        &samples,
        &failures,
    ))
}

/// The report's run for its preset (`quick`, `default`, `full`): every
/// program and allocator, (rounds, scale) = (1, 0.02), (1, 0.1) or (3, 1),
/// the qpw library built as `realprog` builds it.
pub fn report_args(preset: &str) -> RealprogArgs {
    let (rounds, scale) = match preset {
        "quick" => (1, 0.02),
        "full" => (3, 1.0),
        _ => (1, 0.1),
    };
    RealprogArgs {
        rounds,
        scale,
        timeout: 120.0,
        ..RealprogArgs::default()
    }
}

/// The report's section: runs [`report_args`] and returns its heading,
/// what it ran, and its tables.
pub fn report_section(preset: &str) -> Result<String, String> {
    let a = report_args(preset);
    eprintln!(
        "qpw-bench: report: real programs under LD_PRELOAD ({} round(s), scale {}; `qpw-bench realprog` runs the full sizes)",
        a.rounds, a.scale
    );
    let r = run(&a, &mut |_| {})?;
    Ok(format!(
        "## Real programs under LD_PRELOAD: qpw against glibc, mimalloc and jemalloc

         The report's preset `{preset}` runs {} round(s) at scale {} (`qpw-bench realprog --rounds {} --scale {}`);          `qpw-bench realprog` alone runs 3 rounds at scale 1.

{}",
        a.rounds,
        a.scale,
        a.rounds,
        a.scale,
        table::markdown(&r)
    ))
}

/// Runs `qpw-bench realprog`.
pub fn main(a: &RealprogArgs) -> Result<(), String> {
    use std::io::IsTerminal;
    let tty = std::io::stderr().is_terminal();
    let total = a.rounds * a.programs().len() * a.allocators().len() + 1;
    let mut done = 0usize;
    let mut step = |msg: &str| {
        done += 1;
        if tty {
            eprint!("\r\x1b[2K[{done}/{total}] {msg}");
        }
    };
    let r = run(a, &mut step)?;
    if tty {
        eprintln!();
    }
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&r).map_err(|e| format!("realprog results: {e}"))?
        );
    } else {
        print!(
            "## Real programs under LD_PRELOAD\n\n{}",
            table::markdown(&r)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_and_lists_are_checked() {
        assert!(parse_rounds("0").unwrap_err().contains("1 to 100"));
        assert!(parse_rounds("x").unwrap_err().contains("`x`"));
        assert_eq!(parse_rounds("3"), Ok(3));
        assert_eq!(dedup_or(&[2, 1, 2], &[1, 2, 3]), [2, 1]);
        assert_eq!(dedup_or(&[], &[1, 2, 3]), [1, 2, 3]);
        let a = RealprogArgs {
            no_build: true,
            ..RealprogArgs::default()
        };
        assert_eq!(a.qpw_lib(), QpwLib::Locate);
        assert_eq!(RealprogArgs::default().qpw_lib(), QpwLib::Build);
        assert_eq!(report_args("quick").scale, 0.02);
        assert_eq!(report_args("full").rounds, 3);
        assert_eq!(report_args("default").qpw_lib(), QpwLib::Build);
    }
}
