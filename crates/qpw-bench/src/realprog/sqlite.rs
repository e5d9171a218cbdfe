//! The `sqlite3` shell on a scripted workload (`scripts/sqlite_workload.sql`
//! on its standard input): rows inserted into an attached in-memory
//! database, two indexes, range, group, join and `LIKE` queries, updates,
//! deletes. The time is the process's (start to exit); the shell reports
//! its own peak RSS, and its RSS after `DETACH` freed the database, through
//! `.system grep ... /proc/$PPID/status`.

use super::allocators::Ready;
use super::programs::{scaled, status_kib, Ctx, Sample, Unit};
use super::spawn;
use std::path::Path;
use std::process::Command;

/// The shell: Debian's package `sqlite3`.
pub const SQLITE3: &str = "/usr/bin/sqlite3";

const SCRIPT: &str = include_str!("../../scripts/sqlite_workload.sql");

fn rows(scale: f64) -> u64 {
    scaled(200_000, scale, 100)
}

/// What it does at `scale`.
pub fn describe(scale: f64) -> String {
    format!(
        "{SQLITE3} -batch, script on stdin: {} rows into an attached in-memory database, 2 indexes, range, \
         group-by, self-join and LIKE queries, an update of a third and a delete of a fifth of the rows, then \
         DETACH; seconds from the process's start to its exit",
        crate::util::thousands(rows(scale))
    )
}

/// Why it cannot run, if so.
pub fn missing() -> Option<String> {
    (!Path::new(SQLITE3).is_file())
        .then(|| format!("{SQLITE3} not found (install the Debian package sqlite3)"))
}

/// Runs it once under `a`.
pub fn run(a: &Ready, ctx: &Ctx) -> Result<Vec<Sample>, String> {
    let n = rows(ctx.scale);
    let script = SCRIPT.replace("@ROWS@", &n.to_string());
    let mut cmd = Command::new(SQLITE3);
    cmd.arg("-batch");
    a.apply(&mut cmd);
    let f = spawn::run(&mut cmd, script.as_bytes(), ctx.limit)?;
    check(&f.stdout, n)?;
    let (before, after) = f
        .stdout
        .split_once("\nafter\n")
        .ok_or_else(|| format!("no `after` line in its output: {:?}", f.stdout))?;
    Ok(vec![Sample {
        row: "sqlite".to_string(),
        value: f.wall.as_secs_f64(),
        unit: Unit::Seconds,
        hwm_kib: status_kib(before, "VmHWM"),
        rss_after_kib: status_kib(after, "VmRSS"),
    }])
}

/// Checks the queries' answers that do not depend on the data's layout.
fn check(out: &str, n: u64) -> Result<(), String> {
    let want = format!("rows={}", n - n / 5);
    if !out.lines().any(|l| l == want) {
        return Err(format!("wrong answer: no `{want}` in {:?}", out.trim()));
    }
    for key in ["range=", "groups=", "join=", "like=", "VmHWM:", "VmRSS:"] {
        if !out.lines().any(|l| l.starts_with(key)) {
            return Err(format!("no `{key}` line in {:?}", out.trim()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_wrong_row_count_or_a_missing_line_is_an_error() {
        let good = "range=1\ngroups=1\njoin=1\nlike=1\nrows=80\nVmHWM:\t 10 kB\nVmRSS:\t 9 kB\n";
        assert!(super::check(good, 100).is_ok());
        assert!(super::check(good, 200).unwrap_err().contains("rows=160"));
        assert!(super::check(&good.replace("join=1\n", ""), 100)
            .unwrap_err()
            .contains("join="));
    }
}
