//! The Markdown tables of `qpw-bench alloc` (and of the report's section):
//! cost, peak RSS, interrupts, failed runs, and the fork storms.

use super::workloads::{Kind, Placement};
use super::{AllocReport, AllocRow, ForkReport};
use crate::util;

fn cost_cell(kind: Kind, r: &AllocRow) -> String {
    let Some(c) = &r.cost else {
        return format!("failed ({})", r.failures);
    };
    let abs = match kind {
        Kind::Throughput => format!("{} Mops/s", util::fmt_fig(r.ops_per_s.unwrap_or(0.0) / 1e6)),
        Kind::Program => format!("{} s", util::fmt_fig(c.median)),
    };
    format!(
        "{abs}{} ({})",
        if c.noisy { " *" } else { "" },
        r.rel_cost.map_or("-".to_string(), |x| format!("{x:.2}×"))
    )
}

/// The tables, with their captions.
pub fn markdown(r: &AllocReport) -> String {
    let mut s = String::new();
    if !r.workloads.is_empty() {
        s.push_str(&workload_tables(r));
    }
    if let Some(f) = &r.fork {
        s.push_str(&fork_table(f));
    }
    s
}

/// The fork-safety table, with its caption.
fn fork_table(f: &ForkReport) -> String {
    let mut s = format!(
        "### Fork safety: {} forks per allocator while 2 threads allocate\n\nHow: {}.\n\n",
        util::thousands(f.forks as u64),
        f.method
    );
    s.push_str(
        "| allocator | forks | ok | hung | crashed | fork failed | fork() p50 / p99 | child start p50 | child run p50 | objects churned |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let us = |ns: f64| format!("{} µs", util::fmt_fig(ns / 1e3));
    let mut problems = String::new();
    for row in &f.rows {
        match (&row.storm, &row.error) {
            (Some(x), _) => {
                s.push_str(&format!(
                    "| {} | {}{} | {} | {} | {} | {} | {} / {} | {} | {} | {} |\n",
                    row.allocator,
                    util::thousands(x.forks as u64),
                    if x.stopped_early { " (stopped)" } else { "" },
                    util::thousands(x.ok as u64),
                    x.hung,
                    x.crashed,
                    x.fork_failed,
                    us(x.fork.p50_ns),
                    us(x.fork.p99_ns),
                    us(x.child_start.p50_ns),
                    us(x.child_run.p50_ns),
                    util::thousands(x.churn_objects),
                ));
                if let Some(p) = &x.problems {
                    problems.push_str(&format!("- {}: {p}\n", row.allocator));
                }
            }
            (None, e) => {
                s.push_str(&format!(
                    "| {} | failed | - | - | - | - | - | - | - | - |\n",
                    row.allocator
                ));
                problems.push_str(&format!(
                    "- {}: the storm's worker failed: {}\n",
                    row.allocator,
                    e.as_deref().unwrap_or("-")
                ));
            }
        }
    }
    s.push('\n');
    if !problems.is_empty() {
        s.push_str("Hung, crashed or failed:\n\n");
        s.push_str(&problems);
        s.push('\n');
    }
    s
}

/// The workloads' tables, with their captions.
fn workload_tables(r: &AllocReport) -> String {
    let mut s = String::new();
    s.push_str(&format!("How: {}.\n\n", r.method));
    let header = |first: &str| {
        let mut h = format!("| {first} |");
        let mut sep = String::from("|---|");
        for a in &r.allocators {
            h.push_str(&format!(" {a} |"));
            sep.push_str("---:|");
        }
        format!("{h}\n{sep}\n")
    };
    s.push_str(&format!(
        "### Cost: throughput or time, and relative to {} (lower is better)\n\n",
        r.reference
    ));
    s.push_str(&header("workload (kind, placement)"));
    for w in &r.workloads {
        s.push_str(&format!(
            "| {} ({}, {}) |",
            w.workload,
            match w.kind {
                Kind::Throughput => "throughput",
                Kind::Program => "program",
            },
            match w.placement {
                Placement::Cpu0 => "cpu0",
                Placement::Spread => "spread",
            }
        ));
        for row in &w.rows {
            s.push_str(&format!(" {} |", cost_cell(w.kind, row)));
        }
        s.push('\n');
    }
    s.push_str(&format!(
        "| **geometric mean, relative to {}** |",
        r.reference
    ));
    for x in &r.summary {
        s.push_str(&format!(
            " **{}** |",
            x.geomean_rel_cost
                .map_or("-".to_string(), |g| format!("{g:.2}×"))
        ));
    }
    s.push_str(&format!(
        "\n| geometric mean of CPU time (user + system of the workload's threads), relative to {} |",
        r.reference
    ));
    for x in &r.summary {
        s.push_str(&format!(
            " {} |",
            x.geomean_rel_cpu
                .map_or("-".to_string(), |g| format!("{g:.2}×"))
        ));
    }
    s.push_str("\n\n");

    s.push_str(
        "### Peak RSS: MiB, and relative to the best peer's (mimalloc, jemalloc, glibc)\n\n",
    );
    s.push_str(&header("workload"));
    for w in &r.workloads {
        s.push_str(&format!("| {} |", w.workload));
        for row in &w.rows {
            s.push_str(&match (row.max_rss_kib, row.rel_rss) {
                (Some(k), Some(x)) => format!(" {} ({x:.2}×) |", util::fmt_fig(k as f64 / 1024.0)),
                (Some(k), None) => format!(" {} |", util::fmt_fig(k as f64 / 1024.0)),
                _ => " - |".to_string(),
            });
        }
        s.push('\n');
    }
    s.push_str("| **worst, relative to the best peer** |");
    for x in &r.summary {
        s.push_str(&format!(
            " **{}** |",
            x.worst_rel_rss
                .map_or("-".to_string(), |g| format!("{g:.2}×"))
        ));
    }
    s.push_str("\n\n");

    let second = r.cpus.get(1).map_or("-".to_string(), |c| c.to_string());
    s.push_str(&format!(
        "### Interrupts on CPU {second}: RES / CAL / TLB during the run (median), and minor faults\n\n\
         On `cpu0` workloads CPU {second} runs only a thread that never allocates; on `spread` workloads it runs \
         workload threads too. Baseline (nothing allocating) on CPU {second}, per second: {}.\n\n",
        match &r.baseline.second_cpu_irqs_per_s {
            Some(b) => format!("RES {:.0}, CAL {:.0}, TLB {:.0}", b.res, b.cal, b.tlb),
            None => "unknown".to_string(),
        }
    ));
    s.push_str(&header("workload"));
    for w in &r.workloads {
        s.push_str(&format!("| {} |", w.workload));
        for row in &w.rows {
            s.push_str(&match (row.second_cpu_irqs, row.minflt) {
                (Some(i), Some(f)) => format!(
                    " {} / {} / {} · {} flt |",
                    util::thousands(i.res),
                    util::thousands(i.cal),
                    util::thousands(i.tlb),
                    util::thousands(f)
                ),
                (None, Some(f)) => format!(" - · {} flt |", util::thousands(f)),
                _ => " - |".to_string(),
            });
        }
        s.push('\n');
    }
    s.push('\n');
    let failed: Vec<String> = r
        .workloads
        .iter()
        .flat_map(|w| {
            w.rows.iter().filter(|x| x.failures > 0).map(move |x| {
                format!(
                    "- {} under {}: {} failed run(s), last: {}\n",
                    w.workload,
                    x.allocator,
                    x.failures,
                    x.error.as_deref().unwrap_or("-")
                )
            })
        })
        .collect();
    if !failed.is_empty() {
        s.push_str("Failed runs:\n\n");
        s.extend(failed);
        s.push('\n');
    }
    s.push_str("Workloads:\n\n");
    for w in &r.workloads {
        s.push_str(&format!("- `{}`: {}.\n", w.workload, w.description));
    }
    s.push('\n');
    s
}
