//! The report's SVG plots (plotters): drain latency against CPUs per mode,
//! the owner's loop-gap distribution per mode against its baseline, and the
//! allocator workloads' cost relative to mimalloc.

use crate::alloc::AllocReport;
use crate::drain::{self, DrainPoint};
use crate::isolation::IsolationRun;
use plotters::prelude::*;

fn mode_color(mode: &str) -> RGBColor {
    match mode {
        "queue" => RGBColor(214, 39, 40),
        "remote" => RGBColor(31, 119, 180),
        "defer" => RGBColor(44, 160, 44),
        _ => RGBColor(148, 103, 189),
    }
}

/// A log-scale range covering `values` (positive ones), padded a little.
fn log_range(values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (mut lo, mut hi) = (f64::INFINITY, 0f64);
    for v in values.filter(|v| v.is_finite() && *v > 0.0) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() || hi <= 0.0 {
        return 1.0..10.0;
    }
    if hi <= lo {
        hi = lo * 10.0;
    }
    (lo / 1.5)..(hi * 1.5)
}

/// A short label for a log axis: `1e6`, `3e-5`, or the plain number below 10,000.
fn sci(v: f64) -> String {
    if (1.0..10_000.0).contains(&v) {
        format!("{v:.0}")
    } else {
        let l = v.log10();
        if (l - l.round()).abs() < 0.02 {
            format!("1e{:.0}", l.round())
        } else {
            let e = l.floor();
            format!("{:.0}e{e:.0}", v / 10f64.powf(e))
        }
    }
}

fn err<E: std::fmt::Display>(e: E) -> String {
    format!("drawing a plot: {e}")
}

/// Drain-all latency (cycles) against CPUs, one panel per owner behaviour
/// (`spin`, `yield`), one line per mode (p50 thick, p99 thin), with the
/// kernel's `drain_all_stock` figures as markers. Returns the SVG text.
pub fn drain_latency(points: &[DrainPoint]) -> Result<String, String> {
    let mut loops: Vec<&str> = Vec::new();
    for p in points {
        if !loops.contains(&p.owners) {
            loops.push(p.owners);
        }
    }
    if loops.is_empty() {
        loops.push("spin");
    }
    let mut svg = String::new();
    {
        let width = 700 * loops.len() as u32;
        let root = SVGBackend::with_string(&mut svg, (width, 600)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let (title, body) = root.split_vertically(40);
        title
            .titled(
                "drain-all latency vs CPUs (p50 thick, p99 thin; cycles = TSC ticks; log scales)",
                ("sans-serif", 18),
            )
            .map_err(err)?;
        let panels = body.split_evenly((1, loops.len()));
        let kernel: Vec<(f64, f64, f64)> = [1usize, 8, 128]
            .iter()
            .filter_map(|&c| {
                drain::kernel_drain_all_stock(c).map(|(b, a)| (c as f64, b as f64, a as f64))
            })
            .collect();
        let measured = || points.iter().filter(|p| p.drains > 0);
        let xs = log_range(
            measured()
                .map(|p| p.cpus as f64)
                .chain(kernel.iter().map(|k| k.0)),
        );
        let ys = log_range(
            measured()
                .flat_map(|p| [p.latency_cycles.p50, p.latency_cycles.p99])
                .chain(kernel.iter().flat_map(|k| [k.1, k.2])),
        );
        for (owners, area) in loops.iter().zip(panels.iter()) {
            let mut chart = ChartBuilder::on(area)
                .caption(
                    match *owners {
                        "spin" => "owners spinning in local operations",
                        _ => "owners yielding between local operations",
                    },
                    ("sans-serif", 15),
                )
                .margin(15)
                .x_label_area_size(45)
                .y_label_area_size(70)
                .build_cartesian_2d(xs.clone().log_scale(), ys.clone().log_scale())
                .map_err(err)?;
            chart
                .configure_mesh()
                .x_desc("CPUs (slots, each with a busy owner)")
                .y_desc("cycles per drain-all")
                .x_label_formatter(&|v| format!("{v:.0}"))
                .y_label_formatter(&|v| sci(*v))
                .draw()
                .map_err(err)?;
            let mut modes: Vec<&str> = Vec::new();
            for p in points.iter().filter(|p| p.owners == *owners) {
                if !modes.contains(&p.mode) {
                    modes.push(p.mode);
                }
            }
            for m in modes {
                let c = mode_color(m);
                let mut pts: Vec<&DrainPoint> = points
                    .iter()
                    .filter(|p| p.owners == *owners && p.mode == m && p.drains > 0)
                    .collect();
                pts.sort_by_key(|p| p.cpus);
                let p50: Vec<(f64, f64)> = pts
                    .iter()
                    .map(|p| (p.cpus as f64, p.latency_cycles.p50.max(1.0)))
                    .collect();
                let p99: Vec<(f64, f64)> = pts
                    .iter()
                    .map(|p| (p.cpus as f64, p.latency_cycles.p99.max(1.0)))
                    .collect();
                chart
                    .draw_series(LineSeries::new(p50.clone(), c.stroke_width(2)))
                    .map_err(err)?
                    .label(format!("{m} p50"))
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                    });
                chart
                    .draw_series(p50.iter().map(|&xy| Circle::new(xy, 3, c.filled())))
                    .map_err(err)?;
                chart
                    .draw_series(LineSeries::new(p99, c.stroke_width(1)))
                    .map_err(err)?;
            }
            let grey = RGBColor(90, 90, 90);
            chart
                .draw_series(
                    kernel
                        .iter()
                        .map(|k| Cross::new((k.0, k.1), 6, grey.stroke_width(2))),
                )
                .map_err(err)?
                .label("kernel drain_all_stock, before QPW")
                .legend(move |(x, y)| Cross::new((x + 10, y), 5, grey.stroke_width(2)));
            chart
                .draw_series(
                    kernel
                        .iter()
                        .map(|k| TriangleMarker::new((k.0, k.2), 6, BLACK.filled())),
                )
                .map_err(err)?
                .label("kernel drain_all_stock, after QPW")
                .legend(|(x, y)| TriangleMarker::new((x + 10, y), 5, BLACK.filled()));
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(err)?;
        }
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// The owner's loop-gap distribution, one panel per mode: the share of gaps
/// longer than x, drained run against its baseline. Returns the SVG text.
pub fn isolation_gaps(runs: &[IsolationRun]) -> Result<String, String> {
    let mut svg = String::new();
    {
        let n = runs.len().max(1);
        let cols = if n > 1 { 2 } else { 1 };
        let rows = n.div_ceil(cols);
        let root =
            SVGBackend::with_string(&mut svg, (1000, 380 * rows as u32 + 40)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let (title, body) = root.split_vertically(40);
        title
            .titled(
                "owner loop gaps: share of iterations with a gap longer than x (log scales)",
                ("sans-serif", 18),
            )
            .map_err(err)?;
        let panels = body.split_evenly((rows, cols));
        let xs = log_range(runs.iter().flat_map(|r| {
            r.owner_gap_ccdf
                .iter()
                .chain(r.baseline_gap_ccdf.iter())
                .map(|p| p.0)
        }));
        let ys = log_range(runs.iter().flat_map(|r| {
            r.owner_gap_ccdf
                .iter()
                .chain(r.baseline_gap_ccdf.iter())
                .map(|p| p.1)
        }));
        for (run, area) in runs.iter().zip(panels.iter()) {
            let r = &run.result;
            let c = mode_color(r.mode);
            let mut chart = ChartBuilder::on(area)
                .caption(
                    format!(
                        "{}: {} drains, {} signals, gaps > {} ns: {} (baseline {})",
                        r.mode,
                        r.drains,
                        r.fences,
                        r.threshold_ns,
                        r.owner_gaps_over_threshold,
                        r.baseline_gaps_over_threshold
                    ),
                    ("sans-serif", 14),
                )
                .margin(10)
                .x_label_area_size(35)
                .y_label_area_size(60)
                .build_cartesian_2d(xs.clone().log_scale(), ys.clone().log_scale())
                .map_err(err)?;
            chart
                .configure_mesh()
                .x_desc("gap (ns)")
                .y_desc("share longer")
                .x_label_formatter(&|v| sci(*v))
                .y_label_formatter(&|v| sci(*v))
                .draw()
                .map_err(err)?;
            let grey = RGBColor(120, 120, 120);
            chart
                .draw_series(LineSeries::new(
                    run.baseline_gap_ccdf.clone(),
                    grey.stroke_width(2),
                ))
                .map_err(err)?
                .label("baseline (no drains)")
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], grey.stroke_width(2))
                });
            chart
                .draw_series(LineSeries::new(
                    run.owner_gap_ccdf.clone(),
                    c.stroke_width(2),
                ))
                .map_err(err)?
                .label(format!("{} drains/s", r.rate))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                });
            let t = r.threshold_ns as f64;
            if xs.contains(&t) {
                chart
                    .draw_series(LineSeries::new(
                        vec![(t, ys.start), (t, ys.end)],
                        BLACK.stroke_width(1),
                    ))
                    .map_err(err)?
                    .label("threshold")
                    .legend(|(x, y)| {
                        PathElement::new(vec![(x + 10, y - 6), (x + 10, y + 6)], BLACK)
                    });
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(err)?;
        }
        root.present().map_err(err)?;
    }
    Ok(svg)
}

fn alloc_color(name: &str) -> RGBColor {
    match name {
        "qpw-queue" => RGBColor(214, 39, 40),
        "qpw-remote" => RGBColor(31, 119, 180),
        "mimalloc" => RGBColor(44, 160, 44),
        "jemalloc" => RGBColor(148, 103, 189),
        _ => RGBColor(255, 127, 14),
    }
}

/// The allocator workloads: one group of bars per workload (and the
/// geometric mean), one bar per allocator, its median cost relative to the
/// reference's (log scale; 1 is the reference). Returns the SVG text.
pub fn alloc_relative_cost(r: &AllocReport) -> Result<String, String> {
    // (label, [(allocator, relative cost)]) per group of bars.
    type Group<'a> = (String, Vec<(&'a str, Option<f64>)>);
    let mut groups: Vec<Group> = r
        .workloads
        .iter()
        .map(|w| {
            (
                w.workload.to_string(),
                w.rows.iter().map(|x| (x.allocator, x.rel_cost)).collect(),
            )
        })
        .collect();
    groups.push((
        "geomean".to_string(),
        r.summary
            .iter()
            .map(|x| (x.allocator, x.geomean_rel_cost))
            .collect(),
    ));
    let ys = log_range(
        groups
            .iter()
            .flat_map(|g| g.1.iter().filter_map(|b| b.1))
            .chain([1.0]),
    );
    let n = groups.len();
    let per = r.allocators.len().max(1);
    let mut svg = String::new();
    {
        let root =
            SVGBackend::with_string(&mut svg, (90 * n as u32 + 160, 520)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!(
                    "allocator workloads: median cost relative to {} (lower is better, log scale)",
                    r.reference
                ),
                ("sans-serif", 17),
            )
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..n as f64, ys.clone().log_scale())
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .disable_x_axis()
            .y_desc("cost / reference's")
            .y_label_formatter(&|v| format!("{v:.2}"))
            .draw()
            .map_err(err)?;
        let width = 0.8 / per as f64;
        for (ai, name) in r.allocators.iter().enumerate() {
            let c = alloc_color(name);
            let bars: Vec<Rectangle<(f64, f64)>> = groups
                .iter()
                .enumerate()
                .filter_map(|(gi, g)| {
                    let v = g.1.iter().find(|b| b.0 == *name)?.1?;
                    let x0 = gi as f64 + 0.1 + ai as f64 * width;
                    Some(Rectangle::new(
                        [(x0, ys.start), (x0 + width * 0.9, v)],
                        c.filled(),
                    ))
                })
                .collect();
            chart
                .draw_series(bars)
                .map_err(err)?
                .label(*name)
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
        }
        chart
            .draw_series(LineSeries::new(
                vec![(0.0, 1.0), (n as f64, 1.0)],
                BLACK.stroke_width(1),
            ))
            .map_err(err)?;
        chart
            .draw_series(groups.iter().enumerate().map(|(gi, g)| {
                EmptyElement::at((gi as f64 + 0.5, ys.start))
                    + Text::new(
                        g.0.clone(),
                        (-24, 8),
                        ("sans-serif", 13).into_font().color(&BLACK),
                    )
            }))
            .map_err(err)?;
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_labels_are_short() {
        assert_eq!(sci(1e-5 * 0.9999999), "1e-5");
        assert_eq!(sci(250.0), "250");
        assert_eq!(sci(3e6), "3e6");
    }

    #[test]
    fn log_ranges_are_never_empty() {
        assert_eq!(log_range(std::iter::empty()), 1.0..10.0);
        let r = log_range([0.0, 5.0].into_iter());
        assert!(r.start > 0.0 && r.end > r.start);
    }

    #[test]
    fn an_empty_drain_plot_still_draws() {
        let svg = drain_latency(&[]).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    }
}
