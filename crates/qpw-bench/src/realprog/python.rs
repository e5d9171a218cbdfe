//! Debian's CPython (`/usr/bin/python3`, not whatever `python3` is first
//! on `PATH`) on a JSON round trip of many small dicts
//! (`scripts/json_roundtrip.py`, passed with `-c`): the script times its
//! work, reads its peak RSS, frees everything and reads its RSS.

use super::allocators::Ready;
use super::programs::{parse_ops_line, scaled, Ctx, Sample, Unit};
use super::spawn;
use std::path::Path;
use std::process::Command;

/// The interpreter: Debian's package `python3`.
pub const PYTHON: &str = "/usr/bin/python3";

const SCRIPT: &str = include_str!("../../scripts/json_roundtrip.py");

fn dicts(scale: f64) -> u64 {
    scaled(150_000, scale, 100)
}

/// What it does at `scale`.
pub fn describe(scale: f64) -> String {
    format!(
        "{PYTHON} -I: build {} dicts (5 keys, a nested dict and two lists each), json.dumps, json.loads, \
         check; seconds of that work as the script times it",
        crate::util::thousands(dicts(scale))
    )
}

/// Why it cannot run, if so.
pub fn missing() -> Option<String> {
    (!Path::new(PYTHON).is_file())
        .then(|| format!("{PYTHON} not found (install the Debian package python3)"))
}

/// Runs it once under `a`.
pub fn run(a: &Ready, ctx: &Ctx) -> Result<Vec<Sample>, String> {
    let mut cmd = Command::new(PYTHON);
    cmd.args(["-I", "-c", SCRIPT, &dicts(ctx.scale).to_string()]);
    a.apply(&mut cmd);
    let f = spawn::run(&mut cmd, b"", ctx.limit)?;
    let l = parse_ops_line(&f.stdout)?;
    Ok(vec![Sample {
        row: "python".to_string(),
        value: l.ns as f64 / 1e9,
        unit: Unit::Seconds,
        hwm_kib: l.hwm_kib,
        rss_after_kib: l.rss_after_kib,
    }])
}
