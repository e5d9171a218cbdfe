//! The summary of `qpw-bench alloc`: medians over the repetitions, costs
//! relative to the reference allocator (mimalloc), RSS relative to the best
//! peer, geometric means per allocator.

use super::dispatch::AllocName;
use super::irq::Irqs;
use super::spawn::Run;
use super::workloads::{Kind, Workload};
use super::{AllocRow, AllocSummary, WorkloadResult};
use crate::util::Summary;

/// The lower middle value (`None` for none).
pub(crate) fn median_u64(mut v: Vec<u64>) -> Option<u64> {
    v.sort_unstable();
    v.get(v.len().wrapping_sub(1) / 2).copied()
}

fn median_irqs(v: &[Option<Irqs>]) -> Option<Irqs> {
    let v: Vec<Irqs> = v.iter().copied().collect::<Option<Vec<_>>>()?;
    Some(Irqs {
        res: median_u64(v.iter().map(|x| x.res).collect())?,
        cal: median_u64(v.iter().map(|x| x.cal).collect())?,
        tlb: median_u64(v.iter().map(|x| x.tlb).collect())?,
    })
}

/// One allocator's row of one workload: medians over its runs.
pub fn row(
    w: Workload,
    a: AllocName,
    runs: &[Run],
    failures: usize,
    error: Option<String>,
) -> AllocRow {
    let med = |v: Vec<f64>| (!v.is_empty()).then(|| Summary::of(&v).median);
    let costs: Vec<f64> = runs
        .iter()
        .map(|x| match w.kind() {
            Kind::Throughput => x.r.elapsed_s * 1e9 / x.r.ops.max(1) as f64,
            Kind::Program => x.r.elapsed_s,
        })
        .collect();
    AllocRow {
        allocator: a.name(),
        runs: runs.len(),
        failures,
        error,
        cost: (!costs.is_empty()).then(|| Summary::of(&costs)),
        rel_cost: None,
        ops_per_s: med(runs
            .iter()
            .map(|x| x.r.ops as f64 / x.r.elapsed_s.max(1e-9))
            .collect()),
        elapsed_s: med(runs.iter().map(|x| x.r.elapsed_s).collect()),
        cpu_s: med(runs.iter().map(|x| x.r.cpu_s).collect()),
        cpu_cost: med(runs
            .iter()
            .map(|x| match w.kind() {
                Kind::Throughput => x.r.cpu_s * 1e9 / x.r.ops.max(1) as f64,
                Kind::Program => x.r.cpu_s,
            })
            .collect()),
        rel_cpu: None,
        max_rss_kib: median_u64(runs.iter().map(|x| x.max_rss_kib).collect()),
        rel_rss: None,
        minflt: median_u64(runs.iter().map(|x| x.r.minflt).collect()),
        first_cpu_irqs: if runs.is_empty() {
            None
        } else {
            median_irqs(&runs.iter().map(|x| x.r.first_cpu_irqs).collect::<Vec<_>>())
        },
        second_cpu_irqs: if runs.is_empty() {
            None
        } else {
            median_irqs(&runs.iter().map(|x| x.r.second_cpu_irqs).collect::<Vec<_>>())
        },
    }
}

/// The geometric mean (`None` for none).
pub(crate) fn geomean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| (v.iter().map(|x| x.ln()).sum::<f64>() / v.len() as f64).exp())
}

/// Fills the relative figures and the summary.
pub fn relate(
    workloads: &mut [WorkloadResult],
    allocators: &[AllocName],
) -> (&'static str, Vec<AllocSummary>) {
    let reference = if allocators.contains(&AllocName::Mimalloc) {
        AllocName::Mimalloc
    } else {
        allocators[0]
    };
    for w in workloads.iter_mut() {
        let cost_of = |rows: &[AllocRow], name: &str| {
            rows.iter()
                .find(|r| r.allocator == name)
                .and_then(|r| r.cost.as_ref())
                .map(|c| c.median)
        };
        let base = cost_of(&w.rows, reference.name());
        let base_cpu = w
            .rows
            .iter()
            .find(|r| r.allocator == reference.name())
            .and_then(|r| r.cpu_cost);
        let best_peer_rss = w
            .rows
            .iter()
            .filter(|r| {
                allocators
                    .iter()
                    .any(|a| a.name() == r.allocator && a.is_peer())
            })
            .filter_map(|r| r.max_rss_kib)
            .min();
        for r in w.rows.iter_mut() {
            r.rel_cost = match (r.cost.as_ref(), base) {
                (Some(c), Some(b)) if b > 0.0 => Some(c.median / b),
                _ => None,
            };
            r.rel_cpu = match (r.cpu_cost, base_cpu) {
                (Some(c), Some(b)) if b > 0.0 => Some(c / b),
                _ => None,
            };
            r.rel_rss = match (r.max_rss_kib, best_peer_rss) {
                (Some(x), Some(b)) if b > 0 => Some(x as f64 / b as f64),
                _ => None,
            };
        }
    }
    let summary = allocators
        .iter()
        .map(|a| {
            let rows: Vec<&AllocRow> = workloads
                .iter()
                .filter_map(|w| w.rows.iter().find(|r| r.allocator == a.name()))
                .collect();
            let rel: Vec<f64> = rows.iter().filter_map(|r| r.rel_cost).collect();
            let cpu: Vec<f64> = rows.iter().filter_map(|r| r.rel_cpu).collect();
            AllocSummary {
                allocator: a.name(),
                geomean_rel_cost: geomean(&rel),
                workloads: rel.len(),
                geomean_rel_cpu: geomean(&cpu),
                worst_rel_rss: rows.iter().filter_map(|r| r.rel_rss).max_by(f64::total_cmp),
            }
        })
        .collect();
    (reference.name(), summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alloc::workloads::Placement;

    #[test]
    fn medians_take_the_lower_middle_and_need_every_value() {
        assert_eq!(median_u64(vec![3, 1, 2]), Some(2));
        assert_eq!(median_u64(vec![4, 1, 3, 2]), Some(2));
        assert_eq!(median_u64(vec![]), None);
        let i = |n| {
            Some(Irqs {
                res: n,
                cal: 2 * n,
                tlb: 0,
            })
        };
        assert_eq!(median_irqs(&[i(1), i(5), i(3)]), i(3));
        assert_eq!(median_irqs(&[i(1), None]), None);
    }

    fn fake_row(allocator: &'static str, cost: f64, rss: u64) -> AllocRow {
        AllocRow {
            allocator,
            runs: 1,
            failures: 0,
            error: None,
            cost: Some(Summary::of(&[cost])),
            rel_cost: None,
            ops_per_s: None,
            elapsed_s: None,
            cpu_s: None,
            cpu_cost: Some(cost),
            rel_cpu: None,
            max_rss_kib: Some(rss),
            rel_rss: None,
            minflt: None,
            first_cpu_irqs: None,
            second_cpu_irqs: None,
        }
    }

    #[test]
    fn costs_are_relative_to_mimalloc_and_rss_to_the_best_peer() {
        let w = |rows| WorkloadResult {
            workload: "x",
            kind: Kind::Program,
            placement: Placement::Spread,
            description: "",
            rows,
        };
        let mut ws = vec![
            w(vec![
                fake_row("qpw-queue", 4.0, 120),
                fake_row("mimalloc", 2.0, 200),
                fake_row("glibc", 1.0, 100),
            ]),
            w(vec![
                fake_row("qpw-queue", 1.0, 50),
                fake_row("mimalloc", 4.0, 80),
                fake_row("glibc", 8.0, 90),
            ]),
        ];
        let allocators = [AllocName::QpwQueue, AllocName::Mimalloc, AllocName::Glibc];
        let (reference, summary) = relate(&mut ws, &allocators);
        assert_eq!(reference, "mimalloc");
        assert_eq!(ws[0].rows[0].rel_cost, Some(2.0));
        assert_eq!(ws[1].rows[0].rel_cost, Some(0.25));
        assert_eq!(ws[0].rows[2].rel_cpu, Some(0.5));
        // The best peer's RSS (glibc's 100, then mimalloc's 80), ours not counted.
        assert_eq!(ws[0].rows[0].rel_rss, Some(1.2));
        assert_eq!(ws[1].rows[0].rel_rss, Some(50.0 / 80.0));
        let q = &summary[0];
        // sqrt(2 * 0.25)
        assert!((q.geomean_rel_cost.unwrap() - 0.5f64.sqrt()).abs() < 1e-12);
        assert_eq!(q.workloads, 2);
        assert_eq!(q.worst_rel_rss, Some(1.2));
        assert_eq!(summary[1].geomean_rel_cost, Some(1.0));
        // Without mimalloc, the first allocator is the reference.
        let (reference, _) = relate(&mut ws, &[AllocName::Glibc, AllocName::QpwQueue]);
        assert_eq!(reference, "glibc");
        assert_eq!(ws[1].rows[0].rel_cost, Some(1.0 / 8.0));
    }
}
