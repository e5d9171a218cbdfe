//! Our C workloads of the classic kinds (`crates/qpw-bench/c/`), compiled
//! with `cc` at run time (the sources are in this binary), each printing
//! one `ops= ns= hwm_kib= rss_after_kib=` line: its own timing of the work
//! (not the process start), its peak RSS, and its RSS once it freed
//! everything.

use super::allocators::Ready;
use super::programs::{parse_ops_line, scaled, Ctx, Program, Sample, Unit};
use super::spawn;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const COMMON_H: &str = include_str!("../../c/common.h");

/// The source of each C program: (file stem, text).
pub fn source(p: Program) -> Option<(&'static str, &'static str)> {
    match p {
        Program::Random1 | Program::Random2 => Some(("random", include_str!("../../c/random.c"))),
        Program::Larson => Some(("larson", include_str!("../../c/larson.c"))),
        Program::Prodcons => Some(("prodcons", include_str!("../../c/prodcons.c"))),
        Program::Threads => Some(("threads", include_str!("../../c/threads.c"))),
        _ => None,
    }
}

/// The command-line arguments of `p` at `scale`.
fn args(p: Program, scale: f64) -> Vec<u64> {
    match p {
        Program::Random1 => vec![scaled(10_000_000, scale, 1_000), 1],
        Program::Random2 => vec![scaled(5_000_000, scale, 1_000), 2],
        // Per chain, 2 chains, a new thread every 10,000 replacements.
        Program::Larson => vec![scaled(1_000_000, scale, 1_000), 2, 10_000],
        Program::Prodcons => vec![scaled(4_000_000, scale, 64), 1],
        Program::Threads => vec![scaled(1_000, scale, 2), 100],
        _ => Vec::new(),
    }
}

/// What `p` does at `scale`.
pub fn describe(p: Program, scale: f64) -> String {
    let a = args(p, scale);
    let n = |i: usize| crate::util::thousands(a[i]);
    match p {
        Program::Random1 => format!(
            "C, one thread replacing random slots of a 1,024-pointer window with malloc(16..256)/free, {} pairs; ns per pair",
            n(0)
        ),
        Program::Random2 => format!(
            "C, the same loop in two threads with a window each, {} pairs per thread; ns per pair over both",
            n(0)
        ),
        Program::Larson => format!(
            "C, Larson-style: 2 chains with a window of 1,000 blocks of 16..512 bytes, {} replacements per chain, each \
             chain's thread replaced by a new one every 10,000 (which frees the blocks its predecessor allocated); ns per replacement",
            n(0)
        ),
        Program::Prodcons => format!(
            "C, a producer thread allocating batches of 64 blocks of 16..256 bytes, a consumer thread freeing them \
             (bounded queue of 16 batches), {} blocks; ns per block",
            n(0)
        ),
        Program::Threads => format!(
            "C, {} threads (64 KiB stacks) each allocating 100 blocks of 16..256 bytes, all alive at once, then \
             freeing them and exiting; ns per block, from the first thread's start to the last join",
            n(0)
        ),
        _ => String::new(),
    }
}

/// Compiles every C program into `dir` (`cc -O2 -pthread`).
pub fn compile(dir: &Path, limit: Duration) -> Result<(), String> {
    std::fs::write(dir.join("common.h"), COMMON_H)
        .map_err(|e| format!("writing common.h in {}: {e}", dir.display()))?;
    let mut done: Vec<&str> = Vec::new();
    for (stem, text) in Program::ALL.into_iter().filter_map(source) {
        if done.contains(&stem) {
            continue;
        }
        done.push(stem);
        let src = dir.join(format!("{stem}.c"));
        std::fs::write(&src, text).map_err(|e| format!("writing {}: {e}", src.display()))?;
        spawn::run(
            Command::new("cc")
                .args(["-O2", "-pthread", "-o"])
                .arg(dir.join(stem))
                .arg(&src),
            b"",
            limit,
        )
        .map_err(|e| format!("cc {stem}.c: {e}"))?;
    }
    Ok(())
}

/// Runs C program `p` (compiled into `ctx.dir`) once under `a`.
pub fn run(p: Program, a: &Ready, ctx: &Ctx) -> Result<Vec<Sample>, String> {
    let (stem, _) = source(p).expect("a C program");
    let mut cmd = Command::new(ctx.dir.join(stem));
    cmd.args(args(p, ctx.scale).iter().map(u64::to_string));
    a.apply(&mut cmd);
    let f = spawn::run(&mut cmd, b"", ctx.limit)?;
    let l = parse_ops_line(&f.stdout)?;
    Ok(vec![Sample {
        row: p.name().to_string(),
        value: l.ns as f64 / l.ops as f64,
        unit: Unit::NsPerOp,
        hwm_kib: l.hwm_kib,
        rss_after_kib: l.rss_after_kib,
    }])
}
