//! The figures of `realprog`: medians over the rounds, each relative to
//! mimalloc's (time) and to the best peer's (peak RSS), the geometric
//! means, and the Markdown tables.

use super::programs::{Program, Sample, Unit};
use crate::alloc::dispatch::AllocName;
use crate::alloc::summary::{geomean, median_u64};
use crate::util::{self, Summary};
use serde::Serialize;

/// Something not run, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Skip {
    /// The allocator or program.
    pub name: String,
    /// Why.
    pub reason: String,
}

/// One allocator's figures on one row (medians over its rounds).
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    /// The allocator.
    pub allocator: &'static str,
    /// Rounds that gave a figure.
    pub runs: usize,
    /// Rounds that failed (crashed, timed out, wrong output).
    pub failures: usize,
    /// The last failure's reason.
    pub error: Option<String>,
    /// The figure over the rounds, in the row's unit.
    pub value: Option<Summary>,
    /// Median time relative to the reference's (for ops/s rows, the
    /// reference's ops/s over this one's): lower is better.
    pub rel_time: Option<f64>,
    /// Median peak RSS of the measured process (`VmHWM`), KiB.
    pub peak_rss_kib: Option<u64>,
    /// `peak_rss_kib` over the lowest of the peers' (glibc, mimalloc, jemalloc).
    pub rel_rss: Option<f64>,
    /// Median RSS once the work was freed, KiB.
    pub rss_after_kib: Option<u64>,
}

/// One measured figure under every allocator.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// The program.
    pub program: &'static str,
    /// The row's name (the program's, or a redis test's).
    pub row: String,
    /// The unit of `value`.
    pub unit: Unit,
    /// Whether the row enters the geometric means (one row per program).
    pub in_mean: bool,
    /// One per allocator, in the run's order.
    pub cells: Vec<Cell>,
}

/// One allocator over every program.
#[derive(Debug, Clone, Serialize)]
pub struct Mean {
    /// The allocator.
    pub allocator: &'static str,
    /// Geometric mean of `rel_time` over the C workloads.
    pub geomean_c: Option<f64>,
    /// Geometric mean of `rel_time` over the other programs (python3,
    /// sqlite3, redis in total).
    pub geomean_programs: Option<f64>,
    /// The largest `rel_rss`.
    pub worst_rel_rss: Option<f64>,
}

/// A program and what it does.
#[derive(Debug, Clone, Serialize)]
pub struct Described {
    /// The program.
    pub program: &'static str,
    /// What it does.
    pub description: String,
}

/// The whole run (`qpw-bench realprog --json`).
#[derive(Debug, Clone, Serialize)]
pub struct RealprogReport {
    /// How it was measured.
    pub method: String,
    /// Interleaved rounds.
    pub rounds: usize,
    /// Multiplier of the programs' work.
    pub scale: f64,
    /// Per-process time limit.
    pub timeout_s: f64,
    /// The allocator times are relative to.
    pub reference: Option<&'static str>,
    /// The allocators run, in order.
    pub allocators: Vec<&'static str>,
    /// Where each preloaded library came from.
    pub libraries: Vec<String>,
    /// Allocators not run.
    pub skipped_allocators: Vec<Skip>,
    /// Programs not run.
    pub skipped_programs: Vec<Skip>,
    /// `/proc/loadavg` (1, 5, 15 min) before the first run.
    pub load_start: String,
    /// And after the last.
    pub load_end: String,
    /// The programs run.
    pub programs: Vec<Described>,
    /// The figures.
    pub rows: Vec<Row>,
    /// One per allocator.
    pub means: Vec<Mean>,
}

/// What `summarise` needs besides the samples.
pub struct Inputs<'a> {
    /// How it was measured.
    pub method: String,
    /// Rounds.
    pub rounds: usize,
    /// Work multiplier.
    pub scale: f64,
    /// Per-process limit.
    pub timeout_s: f64,
    /// The allocators run, in order.
    pub allocators: &'a [AllocName],
    /// Where each library came from.
    pub sources: Vec<String>,
    /// Allocators not run.
    pub skipped_allocators: Vec<Skip>,
    /// Programs not run.
    pub skipped_programs: Vec<Skip>,
    /// Load average before.
    pub load_start: String,
    /// Load average after.
    pub load_end: String,
}

/// The rows of one program: the labels its samples carry, in order of
/// first appearance (a program with no sample: one row of its name).
fn labels(program: Program, per_alloc: &[Vec<Sample>]) -> Vec<(String, Unit)> {
    let mut v: Vec<(String, Unit)> = Vec::new();
    for s in per_alloc.iter().flatten() {
        if !v.iter().any(|(l, _)| *l == s.row) {
            v.push((s.row.clone(), s.unit));
        }
    }
    if v.is_empty() {
        v.push((program.name().to_string(), Unit::Seconds));
    }
    v
}

/// Medians, relative figures and means. `samples[p][a]` and
/// `failures[p][a]` are indexed like `programs` and `inp.allocators`.
pub fn summarise(
    inp: Inputs,
    programs: &[Program],
    samples: &[Vec<Vec<Sample>>],
    failures: &[Vec<(usize, Option<String>)>],
) -> RealprogReport {
    let reference = inp
        .allocators
        .iter()
        .find(|a| **a == AllocName::Mimalloc)
        .or(inp.allocators.first())
        .copied();
    let mut rows = Vec::new();
    for (pi, p) in programs.iter().enumerate() {
        let all = labels(*p, &samples[pi]);
        let multi = all.len() > 1;
        for (label, unit) in all {
            let cells = inp
                .allocators
                .iter()
                .enumerate()
                .map(|(ai, al)| {
                    let mine: Vec<&Sample> =
                        samples[pi][ai].iter().filter(|s| s.row == label).collect();
                    let vals: Vec<f64> = mine.iter().map(|s| s.value).collect();
                    Cell {
                        allocator: al.name(),
                        runs: mine.len(),
                        failures: failures[pi][ai].0,
                        error: failures[pi][ai].1.clone(),
                        value: (!vals.is_empty()).then(|| Summary::of(&vals)),
                        rel_time: None,
                        peak_rss_kib: median_u64(mine.iter().filter_map(|s| s.hwm_kib).collect()),
                        rel_rss: None,
                        rss_after_kib: median_u64(
                            mine.iter().filter_map(|s| s.rss_after_kib).collect(),
                        ),
                    }
                })
                .collect();
            rows.push(Row {
                program: p.name(),
                in_mean: !multi || label.ends_with("total"),
                row: label,
                unit,
                cells,
            });
        }
    }
    relate(&mut rows, reference, inp.allocators);
    let means = inp
        .allocators
        .iter()
        .map(|al| {
            let rel = |c: bool| {
                let v: Vec<f64> = rows
                    .iter()
                    .filter(|r| r.in_mean && is_c(r.program) == c)
                    .filter_map(|r| cell(r, al.name())?.rel_time)
                    .collect();
                geomean(&v)
            };
            Mean {
                allocator: al.name(),
                geomean_c: rel(true),
                geomean_programs: rel(false),
                worst_rel_rss: rows
                    .iter()
                    .filter_map(|r| cell(r, al.name())?.rel_rss)
                    .max_by(f64::total_cmp),
            }
        })
        .collect();
    RealprogReport {
        method: inp.method,
        rounds: inp.rounds,
        scale: inp.scale,
        timeout_s: inp.timeout_s,
        reference: reference.map(AllocName::name),
        allocators: inp.allocators.iter().map(|a| a.name()).collect(),
        libraries: inp.sources,
        skipped_allocators: inp.skipped_allocators,
        skipped_programs: inp.skipped_programs,
        load_start: inp.load_start,
        load_end: inp.load_end,
        programs: programs
            .iter()
            .map(|p| Described {
                program: p.name(),
                description: p.describe(inp.scale),
            })
            .collect(),
        rows,
        means,
    }
}

fn is_c(program: &str) -> bool {
    Program::ALL.iter().any(|p| p.name() == program && p.is_c())
}

fn cell<'a>(r: &'a Row, allocator: &str) -> Option<&'a Cell> {
    r.cells.iter().find(|c| c.allocator == allocator)
}

/// Fills `rel_time` and `rel_rss`.
fn relate(rows: &mut [Row], reference: Option<AllocName>, allocators: &[AllocName]) {
    for r in rows.iter_mut() {
        let base = reference
            .and_then(|a| cell(r, a.name()))
            .and_then(|c| c.value.as_ref())
            .map(|v| v.median);
        let best_peer = r
            .cells
            .iter()
            .filter(|c| {
                allocators
                    .iter()
                    .any(|a| a.name() == c.allocator && a.is_peer())
            })
            .filter_map(|c| c.peak_rss_kib)
            .min();
        let unit = r.unit;
        for c in r.cells.iter_mut() {
            c.rel_time = match (c.value.as_ref().map(|v| v.median), base) {
                (Some(x), Some(b)) if x > 0.0 && b > 0.0 => Some(match unit {
                    Unit::OpsPerS => b / x,
                    Unit::NsPerOp | Unit::Seconds => x / b,
                }),
                _ => None,
            };
            c.rel_rss = match (c.peak_rss_kib, best_peer) {
                (Some(x), Some(b)) if b > 0 => Some(x as f64 / b as f64),
                _ => None,
            };
        }
    }
}

fn value_cell(unit: Unit, c: &Cell) -> String {
    let Some(v) = &c.value else {
        return if c.failures > 0 {
            format!("failed ({})", c.failures)
        } else {
            "-".to_string()
        };
    };
    let abs = match unit {
        Unit::NsPerOp => format!("{} ns", util::fmt_fig(v.median)),
        Unit::Seconds => format!("{} s", util::fmt_fig(v.median)),
        Unit::OpsPerS => format!("{} k/s", util::fmt_fig(v.median / 1e3)),
    };
    format!(
        "{abs}{} ({})",
        if v.noisy { " *" } else { "" },
        c.rel_time.map_or("-".to_string(), |x| format!("{x:.2}×"))
    )
}

fn mib(kib: u64) -> String {
    util::fmt_fig(kib as f64 / 1024.0)
}

/// The tables, with their captions.
pub fn markdown(r: &RealprogReport) -> String {
    let mut s = format!(
        "How: {}.\n\nLoad average (1, 5, 15 min): {} at the start, {} at the end.\n\n",
        r.method, r.load_start, r.load_end
    );
    for l in &r.libraries {
        s.push_str(&format!("- {l}\n"));
    }
    for k in &r.skipped_allocators {
        s.push_str(&format!(
            "- **skipped allocator** {}: {}\n",
            k.name, k.reason
        ));
    }
    for k in &r.skipped_programs {
        s.push_str(&format!("- **skipped program** {}: {}\n", k.name, k.reason));
    }
    s.push('\n');
    if r.rows.is_empty() || r.allocators.is_empty() {
        s.push_str("Nothing ran.\n\n");
        return s;
    }
    let header = |first: &str| {
        let mut h = format!("| {first} |");
        let mut sep = String::from("|---|");
        for a in &r.allocators {
            let mode = match *a {
                "qpw-queue" => " (QPW=0)",
                "qpw-remote" => " (QPW=1)",
                _ => "",
            };
            h.push_str(&format!(" {a}{mode} |"));
            sep.push_str("---:|");
        }
        format!("{h}\n{sep}\n")
    };
    s.push_str(&format!(
        "### Time: ns per operation, seconds, or requests per second (k/s), and time relative to {} (lower is better; * spread over 20%)\n\n",
        r.reference.unwrap_or("-")
    ));
    s.push_str(&header("program"));
    for row in &r.rows {
        s.push_str(&format!("| {} |", row.row));
        for c in &row.cells {
            s.push_str(&format!(" {} |", value_cell(row.unit, c)));
        }
        s.push('\n');
    }
    for (label, f) in [
        (
            "C workloads",
            (|m: &Mean| m.geomean_c) as fn(&Mean) -> Option<f64>,
        ),
        ("python3, sqlite3, redis total", |m: &Mean| {
            m.geomean_programs
        }),
    ] {
        s.push_str(&format!("| **geometric mean, {label}** |"));
        for m in &r.means {
            s.push_str(&format!(
                " **{}** |",
                f(m).map_or("-".to_string(), |g| format!("{g:.2}×"))
            ));
        }
        s.push('\n');
    }
    s.push_str(
        "\n### Memory: peak RSS / RSS after the work is freed, MiB, and the peak relative to the best peer's (glibc, mimalloc, jemalloc)\n\n",
    );
    s.push_str(&header("program"));
    for row in r.rows.iter().filter(|x| x.in_mean) {
        s.push_str(&format!("| {} |", row.row));
        for c in &row.cells {
            s.push_str(&match (c.peak_rss_kib, c.rss_after_kib) {
                (Some(p), after) => format!(
                    " {} / {}{} |",
                    mib(p),
                    after.map_or("-".to_string(), mib),
                    c.rel_rss.map_or(String::new(), |x| format!(" ({x:.2}×)"))
                ),
                (None, _) => " - |".to_string(),
            });
        }
        s.push('\n');
    }
    s.push_str("| **worst peak, relative to the best peer** |");
    for m in &r.means {
        s.push_str(&format!(
            " **{}** |",
            m.worst_rel_rss
                .map_or("-".to_string(), |g| format!("{g:.2}×"))
        ));
    }
    s.push_str("\n\n");
    let failed: Vec<String> = r
        .rows
        .iter()
        .filter(|x| x.in_mean)
        .flat_map(|x| {
            x.cells.iter().filter(|c| c.failures > 0).map(move |c| {
                format!(
                    "- {} under {}: {} failed run(s), last: {}\n",
                    x.program,
                    c.allocator,
                    c.failures,
                    c.error.as_deref().unwrap_or("-")
                )
            })
        })
        .collect();
    if !failed.is_empty() {
        s.push_str("Failed runs:\n\n");
        s.extend(failed);
        s.push('\n');
    }
    s.push_str("Programs:\n\n");
    for p in &r.programs {
        s.push_str(&format!("- `{}`: {}.\n", p.program, p.description));
    }
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(row: &str, value: f64, unit: Unit, hwm: u64) -> Sample {
        Sample {
            row: row.to_string(),
            value,
            unit,
            hwm_kib: Some(hwm),
            rss_after_kib: Some(hwm / 2),
        }
    }

    fn inputs(allocators: &[AllocName]) -> Inputs<'_> {
        Inputs {
            method: "m".into(),
            rounds: 3,
            scale: 1.0,
            timeout_s: 1.0,
            allocators,
            sources: Vec::new(),
            skipped_allocators: Vec::new(),
            skipped_programs: Vec::new(),
            load_start: "0.00 0.00 0.00".into(),
            load_end: "0.00 0.00 0.00".into(),
        }
    }

    #[test]
    fn times_are_relative_to_mimalloc_ops_inverted_rss_to_the_best_peer() {
        let al = [AllocName::Glibc, AllocName::Mimalloc, AllocName::QpwQueue];
        let ns = |v, h| sample("random1", v, Unit::NsPerOp, h);
        let samples = vec![
            vec![
                vec![ns(20.0, 100), ns(30.0, 100), ns(25.0, 100)],
                vec![ns(10.0, 200)],
                vec![ns(5.0, 50)],
            ],
            vec![
                vec![
                    sample("redis SET 100 B", 100.0, Unit::OpsPerS, 0),
                    sample("redis total", 2.0, Unit::Seconds, 1000),
                ],
                vec![
                    sample("redis SET 100 B", 200.0, Unit::OpsPerS, 0),
                    sample("redis total", 1.0, Unit::Seconds, 800),
                ],
                vec![],
            ],
        ];
        let mut failures = vec![vec![(0, None); 3]; 2];
        failures[1][2] = (3, Some("crashed".to_string()));
        let r = summarise(
            inputs(&al),
            &[Program::Random1, Program::Redis],
            &samples,
            &failures,
        );
        assert_eq!(r.reference, Some("mimalloc"));
        let c = &r.rows[0].cells;
        assert_eq!(c[0].value.as_ref().unwrap().median, 25.0);
        assert_eq!(c[0].rel_time, Some(2.5));
        assert_eq!(c[2].rel_time, Some(0.5));
        // Best peer: glibc's 100.
        assert_eq!(c[1].rel_rss, Some(2.0));
        assert_eq!(c[2].rel_rss, Some(0.5));
        assert_eq!(c[2].rss_after_kib, Some(25));
        // Ops per second: glibc's half the rate is twice the time.
        assert_eq!(r.rows[1].row, "redis SET 100 B");
        assert!(!r.rows[1].in_mean);
        assert_eq!(r.rows[1].cells[0].rel_time, Some(2.0));
        assert!(r.rows[2].in_mean);
        assert_eq!(r.rows[2].cells[2].failures, 3);
        assert_eq!(r.rows[2].cells[2].value, None);
        assert_eq!(r.means[0].geomean_c, Some(2.5));
        assert_eq!(r.means[0].geomean_programs, Some(2.0));
        assert_eq!(r.means[2].geomean_programs, None);
        let md = markdown(&r);
        assert!(
            md.contains("| random1 | 25.0 ns * (2.50×) | 10.0 ns (1.00×) | 5.00 ns (0.50×) |"),
            "{md}"
        );
        assert!(md.contains("qpw-queue (QPW=0)"), "{md}");
        assert!(md.contains("failed (3)"), "{md}");
        assert!(
            md.contains("- redis under qpw-queue: 3 failed run(s), last: crashed"),
            "{md}"
        );
    }

    #[test]
    fn a_program_that_never_ran_has_one_failed_row_and_skips_are_printed() {
        let al = [AllocName::Glibc];
        let mut inp = inputs(&al);
        inp.skipped_allocators.push(Skip {
            name: "jemalloc".into(),
            reason: "libjemalloc.so.2 not found".into(),
        });
        inp.skipped_programs.push(Skip {
            name: "redis".into(),
            reason: "/usr/bin/redis-server not found".into(),
        });
        let r = summarise(
            inp,
            &[Program::Sqlite],
            &[vec![vec![]]],
            &[vec![(2, Some("killed".into()))]],
        );
        assert_eq!(r.rows.len(), 1);
        assert_eq!(r.rows[0].row, "sqlite");
        assert_eq!(r.rows[0].cells[0].failures, 2);
        assert_eq!(r.reference, Some("glibc"));
        // Nothing missing goes unsaid.
        let md = markdown(&r);
        assert!(
            md.contains("- **skipped allocator** jemalloc: libjemalloc.so.2 not found"),
            "{md}"
        );
        assert!(
            md.contains("- **skipped program** redis: /usr/bin/redis-server not found"),
            "{md}"
        );
        assert!(md.contains("| sqlite | failed (2) |"), "{md}");
    }
}
