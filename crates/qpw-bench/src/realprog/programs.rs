//! The programs `realprog` runs, what each measures, and the one line the
//! programs of ours print (`ops= ns= hwm_kib= rss_after_kib=`).

use super::allocators::Ready;
use super::{cwork, python, redis, sqlite};
use serde::Serialize;
use std::path::Path;
use std::time::Duration;

/// A program, as `--program` names it.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Program {
    /// C: random sizes in one thread (issue 15's reference loop).
    Random1,
    /// C: random sizes in two threads.
    Random2,
    /// C: Larson-style thread replacement with cross-thread frees.
    Larson,
    /// C: producer/consumer.
    Prodcons,
    /// C: many live threads.
    Threads,
    /// Debian's python3: a JSON round trip.
    Python,
    /// sqlite3: a scripted in-memory workload.
    Sqlite,
    /// redis-server under redis-benchmark, over 127.0.0.1.
    Redis,
}

/// How a row's figure reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// Nanoseconds per operation (lower is better).
    NsPerOp,
    /// Seconds of fixed work (lower is better).
    Seconds,
    /// Operations per second (higher is better).
    OpsPerS,
}

/// One measurement of one row under one allocator.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The row (the program's name, or a redis test).
    pub row: String,
    /// The figure, in the row's unit.
    pub value: f64,
    /// The unit.
    pub unit: Unit,
    /// Peak RSS of the measured process (`VmHWM`), KiB.
    pub hwm_kib: Option<u64>,
    /// Its RSS once the work was freed, KiB.
    pub rss_after_kib: Option<u64>,
}

/// What a run needs besides the program: the scratch directory (with the
/// compiled C programs), the work multiplier and the time limit.
pub struct Ctx<'a> {
    /// Scratch directory.
    pub dir: &'a Path,
    /// Work multiplier.
    pub scale: f64,
    /// Time limit of each process.
    pub limit: Duration,
}

impl Program {
    /// Every program, in table order.
    pub const ALL: [Program; 8] = [
        Program::Random1,
        Program::Random2,
        Program::Larson,
        Program::Prodcons,
        Program::Threads,
        Program::Python,
        Program::Sqlite,
        Program::Redis,
    ];

    /// The name on the command line and in the tables.
    pub fn name(self) -> &'static str {
        match self {
            Program::Random1 => "random1",
            Program::Random2 => "random2",
            Program::Larson => "larson",
            Program::Prodcons => "prodcons",
            Program::Threads => "threads",
            Program::Python => "python",
            Program::Sqlite => "sqlite",
            Program::Redis => "redis",
        }
    }

    /// Whether it is one of our C programs (compiled at run time).
    pub fn is_c(self) -> bool {
        cwork::source(self).is_some()
    }

    /// What it does at `scale`.
    pub fn describe(self, scale: f64) -> String {
        match self {
            Program::Python => python::describe(scale),
            Program::Sqlite => sqlite::describe(scale),
            Program::Redis => redis::describe(scale),
            c => cwork::describe(c, scale),
        }
    }

    /// Why it cannot run here (a program not installed), if so. The C
    /// programs' compiler is checked when they are compiled.
    pub fn missing(self) -> Option<String> {
        match self {
            Program::Python => python::missing(),
            Program::Sqlite => sqlite::missing(),
            Program::Redis => redis::missing(),
            _ => None,
        }
    }

    /// Runs it once under `a`.
    pub fn run(self, a: &Ready, ctx: &Ctx) -> Result<Vec<Sample>, String> {
        match self {
            Program::Python => python::run(a, ctx),
            Program::Sqlite => sqlite::run(a, ctx),
            Program::Redis => redis::run(a, ctx),
            c => cwork::run(c, a, ctx),
        }
    }
}

/// A count of work at `scale`: `base` times it, at least `min`.
pub fn scaled(base: u64, scale: f64, min: u64) -> u64 {
    ((base as f64 * scale).round() as u64).max(min)
}

/// The figures of the `ops= ns= hwm_kib= rss_after_kib=` line a program of
/// ours prints last.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OpsLine {
    /// Operations done.
    pub ops: u64,
    /// Nanoseconds of the measured part.
    pub ns: u64,
    /// Peak RSS, KiB (`None`: the program could not read it).
    pub hwm_kib: Option<u64>,
    /// RSS after freeing, KiB.
    pub rss_after_kib: Option<u64>,
}

/// Parses the last `ops=` line of `stdout`.
pub fn parse_ops_line(stdout: &str) -> Result<OpsLine, String> {
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with("ops="))
        .ok_or_else(|| format!("no `ops=` line in its output: {:?}", stdout.trim()))?;
    let field = |k: &str| -> Result<i64, String> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
            .ok_or_else(|| format!("`{k}` missing from {line:?}"))?
            .parse::<i64>()
            .map_err(|_| format!("`{k}` is not a number in {line:?}"))
    };
    let kib = |v: i64| (v >= 0).then_some(v as u64);
    let (ops, ns) = (field("ops")?, field("ns")?);
    if ops <= 0 || ns <= 0 {
        return Err(format!("no work measured: {line:?}"));
    }
    Ok(OpsLine {
        ops: ops as u64,
        ns: ns as u64,
        hwm_kib: kib(field("hwm_kib")?),
        rss_after_kib: kib(field("rss_after_kib")?),
    })
}

/// A `Key:  1234 kB` line of `/proc/<pid>/status`, in KiB.
pub fn status_kib(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ops_line_is_parsed_and_checked() {
        let l = parse_ops_line("noise\nops=10 ns=2000 hwm_kib=1500 rss_after_kib=-1\n").unwrap();
        assert_eq!(
            l,
            OpsLine {
                ops: 10,
                ns: 2000,
                hwm_kib: Some(1500),
                rss_after_kib: None
            }
        );
        assert!(parse_ops_line("nothing").unwrap_err().contains("no `ops=`"));
        assert!(parse_ops_line("ops=0 ns=1 hwm_kib=1 rss_after_kib=1")
            .unwrap_err()
            .contains("no work"));
        assert!(parse_ops_line("ops=1 ns=x hwm_kib=1 rss_after_kib=1")
            .unwrap_err()
            .contains("`ns`"));
        assert!(parse_ops_line("ops=1 ns=1 rss_after_kib=1")
            .unwrap_err()
            .contains("`hwm_kib` missing"));
    }

    #[test]
    fn status_lines_and_scaling() {
        let s = "Name:\tx\nVmHWM:\t    2048 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(status_kib(s, "VmHWM"), Some(2048));
        assert_eq!(status_kib(s, "VmRSS"), Some(1024));
        assert_eq!(status_kib(s, "VmSwap"), None);
        assert_eq!(scaled(1000, 0.5, 1), 500);
        assert_eq!(scaled(1000, 0.0001, 3), 3);
    }
}
