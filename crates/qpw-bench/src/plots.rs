//! The report's SVG plots (plotters): drain latency against CPUs per mode,
//! the owner's loop-gap distribution per mode against its baseline, and the
//! allocator workloads' cost relative to mimalloc.

use crate::alloc::{AllocReport, AllocRow};
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

/// How one legend entry is drawn.
#[derive(Debug, Clone, Copy)]
enum Mark {
    /// A line of this width.
    Line(RGBColor, u32),
    /// An x.
    Cross(RGBColor),
    /// A filled triangle.
    Triangle(RGBColor),
    /// A filled box (a bar).
    Bar(RGBColor),
}

/// Height of a legend strip holding `n` entries in `cols` columns.
fn legend_height(n: usize, cols: usize) -> u32 {
    (n.div_ceil(cols.max(1)) as u32) * 18 + 12
}

/// Draws `entries` in `cols` columns into `area`, a strip of its own below
/// the plot, so the legend never covers data.
fn legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    entries: &[(String, Mark)],
    cols: usize,
) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let (w, _) = area.dim_in_pixel();
    let cols = cols.max(1);
    let col_w = (w as i32 - 20) / cols as i32;
    for (i, (label, mark)) in entries.iter().enumerate() {
        let x = 10 + (i % cols) as i32 * col_w;
        let y = 12 + (i / cols) as i32 * 18;
        match *mark {
            Mark::Line(c, width) => area.draw(&PathElement::new(
                vec![(x, y), (x + 22, y)],
                c.stroke_width(width),
            )),
            Mark::Cross(c) => area.draw(&Cross::new((x + 11, y), 4, c.stroke_width(2))),
            Mark::Triangle(c) => area.draw(&TriangleMarker::new((x + 11, y), 4, c.filled())),
            Mark::Bar(c) => area.draw(&Rectangle::new(
                [(x + 4, y - 5), (x + 18, y + 5)],
                c.filled(),
            )),
        }
        .map_err(err)?;
        area.draw(&Text::new(
            label.clone(),
            (x + 28, y - 7),
            ("sans-serif", 13).into_font().color(&BLACK),
        ))
        .map_err(err)?;
    }
    Ok(())
}

/// The kernel's `drain_all_stock` figures (CPUs, before, after) at the CPU
/// counts inside the measured range `lo..=hi`: a marker outside the data
/// would stretch the axes past it.
fn kernel_in(lo: usize, hi: usize) -> Vec<(f64, f64, f64)> {
    [1usize, 8, 128]
        .iter()
        .filter(|&&c| (lo..=hi).contains(&c))
        .filter_map(|&c| {
            drain::kernel_drain_all_stock(c).map(|(b, a)| (c as f64, b as f64, a as f64))
        })
        .collect()
}

/// Drain-all latency (cycles) against CPUs, one panel per owner behaviour
/// (`spin`, `yield`), one line per mode (p50 thick, p99 thin), with the
/// kernel's `drain_all_stock` figures as markers where the measured CPU
/// counts reach them (before and after side by side). The legend sits
/// below each panel. Returns the SVG text.
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
    let measured = || points.iter().filter(|p| p.drains > 0);
    let kernel = match (
        measured().map(|p| p.cpus).min(),
        measured().map(|p| p.cpus).max(),
    ) {
        (Some(lo), Some(hi)) => kernel_in(lo, hi),
        _ => Vec::new(),
    };
    let modes_of = |owners: &str| {
        let mut modes: Vec<&str> = Vec::new();
        for p in points.iter().filter(|p| p.owners == owners) {
            if !modes.contains(&p.mode) {
                modes.push(p.mode);
            }
        }
        modes
    };
    let most_modes = loops.iter().map(|o| modes_of(o).len()).max().unwrap_or(0);
    let legend_h = legend_height(2 * most_modes + 2, 2);
    let mut svg = String::new();
    {
        let width = 700 * loops.len() as u32;
        let root = SVGBackend::with_string(&mut svg, (width, 600 + legend_h)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let (title, body) = root.split_vertically(40);
        title
            .titled(
                "drain-all latency vs CPUs (p50 thick, p99 thin; cycles = TSC ticks; log scales)",
                ("sans-serif", 18),
            )
            .map_err(err)?;
        let panels = body.split_evenly((1, loops.len()));
        let xs = log_range(measured().map(|p| p.cpus as f64));
        let ys = log_range(
            measured()
                .flat_map(|p| [p.latency_cycles.p50, p.latency_cycles.p99])
                .chain(kernel.iter().flat_map(|k| [k.1, k.2])),
        );
        for (owners, panel) in loops.iter().zip(panels.iter()) {
            let h = panel.dim_in_pixel().1;
            let (area, strip) = panel.split_vertically(h.saturating_sub(legend_h));
            let mut chart = ChartBuilder::on(&area)
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
            let mut entries: Vec<(String, Mark)> = Vec::new();
            for m in modes_of(owners) {
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
                    .map_err(err)?;
                chart
                    .draw_series(p50.iter().map(|&xy| Circle::new(xy, 3, c.filled())))
                    .map_err(err)?;
                chart
                    .draw_series(LineSeries::new(p99, c.stroke_width(1)))
                    .map_err(err)?;
                entries.push((format!("{m} p50"), Mark::Line(c, 2)));
                entries.push((format!("{m} p99"), Mark::Line(c, 1)));
            }
            if !kernel.is_empty() {
                let grey = RGBColor(90, 90, 90);
                // Before to the left of the CPU count, after to the right:
                // at 1 and 8 CPUs the two figures are 12% apart.
                chart
                    .draw_series(kernel.iter().map(|k| {
                        EmptyElement::at((k.0, k.1)) + Cross::new((-5, 0), 4, grey.stroke_width(2))
                    }))
                    .map_err(err)?;
                chart
                    .draw_series(kernel.iter().map(|k| {
                        EmptyElement::at((k.0, k.2))
                            + TriangleMarker::new((5, 0), 4, BLACK.filled())
                    }))
                    .map_err(err)?;
                entries.push((
                    "kernel drain_all_stock, before QPW".into(),
                    Mark::Cross(grey),
                ));
                entries.push((
                    "kernel drain_all_stock, after QPW".into(),
                    Mark::Triangle(BLACK),
                ));
            }
            legend(&strip, &entries, 2)?;
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
            SVGBackend::with_string(&mut svg, (1000, 410 * rows as u32 + 40)).into_drawing_area();
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
        let legend_h = legend_height(3, 3);
        for (run, panel) in runs.iter().zip(panels.iter()) {
            let h = panel.dim_in_pixel().1;
            let (area, strip) = panel.split_vertically(h.saturating_sub(legend_h));
            let r = &run.result;
            let c = mode_color(r.mode);
            let mut chart = ChartBuilder::on(&area)
                .caption(
                    format!(
                        "{}: {} drains, {} fences, gaps > {} ns: {} (baseline {})",
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
                .map_err(err)?;
            chart
                .draw_series(LineSeries::new(
                    run.owner_gap_ccdf.clone(),
                    c.stroke_width(2),
                ))
                .map_err(err)?;
            let mut entries = vec![
                ("baseline (no drains)".to_string(), Mark::Line(grey, 2)),
                (format!("{} drains/s", r.rate), Mark::Line(c, 2)),
            ];
            let t = r.threshold_ns as f64;
            if xs.contains(&t) {
                chart
                    .draw_series(LineSeries::new(
                        vec![(t, ys.start), (t, ys.end)],
                        BLACK.stroke_width(1),
                    ))
                    .map_err(err)?;
                entries.push(("threshold".to_string(), Mark::Line(BLACK, 1)));
            }
            legend(&strip, &entries, 3)?;
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

/// One bar: its height and, when known, its spread (low, high).
type Bar = (f64, Option<(f64, f64)>);

/// One group of bars: its label, then (allocator, bar) per allocator.
type Group<'a> = (String, Vec<(&'a str, Option<Bar>)>);

/// Grouped bars on a log scale, one colour per allocator, whiskers where a
/// bar has a spread, a line at `reference` if given, the legend below.
fn grouped_bars(
    title: &str,
    y_desc: &str,
    allocators: &[&str],
    groups: &[Group],
    reference: Option<f64>,
) -> Result<String, String> {
    let ys = log_range(
        groups
            .iter()
            .flat_map(|g| {
                g.1.iter()
                    .filter_map(|b| b.1)
                    .flat_map(|(v, spread)| [Some(v), spread.map(|s| s.0), spread.map(|s| s.1)])
            })
            .flatten()
            .chain(reference),
    );
    let n = groups.len().max(1);
    let per = allocators.len().max(1);
    let legend_h = legend_height(per, per.min(5));
    let mut svg = String::new();
    {
        let width = (90 * n as u32 + 160).max(700);
        let root = SVGBackend::with_string(&mut svg, (width, 520 + legend_h)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let (area, strip) = root.split_vertically(520);
        let mut chart = ChartBuilder::on(&area)
            .caption(title, ("sans-serif", 17))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..n as f64, ys.clone().log_scale())
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .disable_x_axis()
            .y_desc(y_desc)
            .y_label_formatter(&|v| sci_or_fraction(*v))
            .draw()
            .map_err(err)?;
        let width = 0.8 / per as f64;
        let mut entries = Vec::new();
        for (ai, name) in allocators.iter().enumerate() {
            let c = alloc_color(name);
            let bar = |gi: usize, g: &Group| -> Option<(f64, Bar)> {
                let b = g.1.iter().find(|b| b.0 == *name)?.1?;
                Some((gi as f64 + 0.1 + ai as f64 * width, b))
            };
            let bars: Vec<Rectangle<(f64, f64)>> = groups
                .iter()
                .enumerate()
                .filter_map(|(gi, g)| bar(gi, g))
                .map(|(x0, (v, _))| {
                    Rectangle::new([(x0, ys.start), (x0 + width * 0.9, v)], c.filled())
                })
                .collect();
            chart.draw_series(bars).map_err(err)?;
            let whiskers: Vec<PathElement<(f64, f64)>> = groups
                .iter()
                .enumerate()
                .filter_map(|(gi, g)| bar(gi, g))
                .filter_map(|(x0, (_, spread))| {
                    let (lo, hi) = spread?;
                    let x = x0 + width * 0.45;
                    Some(PathElement::new(
                        vec![(x, lo), (x, hi)],
                        BLACK.stroke_width(1),
                    ))
                })
                .collect();
            chart.draw_series(whiskers).map_err(err)?;
            entries.push((name.to_string(), Mark::Bar(c)));
        }
        if let Some(r) = reference {
            chart
                .draw_series(LineSeries::new(
                    vec![(0.0, r), (n as f64, r)],
                    BLACK.stroke_width(1),
                ))
                .map_err(err)?;
        }
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
        legend(&strip, &entries, per.min(5))?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// A label for a log axis that may go below 1: two decimals there.
fn sci_or_fraction(v: f64) -> String {
    if v < 1.0 {
        format!("{v:.2}")
    } else {
        sci(v)
    }
}

/// The allocator workloads: one group of bars per workload (and the
/// geometric mean), one bar per allocator, its median cost relative to the
/// reference's (log scale; 1 is the reference), with a whisker from its
/// fastest to its slowest repetition on the same scale. Returns the SVG text.
pub fn alloc_relative_cost(r: &AllocReport) -> Result<String, String> {
    let mut groups = per_workload(r, |x| {
        x.rel_cost.map(|rel| {
            // rel = median / reference's median: the same factor puts min
            // and max on the bar's scale.
            let spread = x
                .cost
                .as_ref()
                .filter(|c| c.median > 0.0)
                .map(|c| (rel * c.min / c.median, rel * c.max / c.median));
            (rel, spread)
        })
    });
    groups.push((
        "geomean".to_string(),
        r.summary
            .iter()
            .map(|x| (x.allocator, x.geomean_rel_cost.map(|g| (g, None))))
            .collect(),
    ));
    grouped_bars(
        &format!(
            "allocator workloads: median cost relative to {} (lower is better, log scale; whiskers: fastest to slowest run)",
            r.reference
        ),
        "cost / reference's",
        &r.allocators,
        &groups,
        Some(1.0),
    )
}

/// One group per workload, one bar per allocator's row, by `bar`.
fn per_workload<'a>(r: &'a AllocReport, bar: impl Fn(&AllocRow) -> Option<Bar>) -> Vec<Group<'a>> {
    r.workloads
        .iter()
        .map(|w| {
            (
                w.workload.to_string(),
                w.rows.iter().map(|x| (x.allocator, bar(x))).collect(),
            )
        })
        .collect()
}

/// The allocator workloads' memory: one group of bars per workload, one
/// bar per allocator, the worker process's median peak RSS (`VmHWM`) in
/// MiB, log scale. Returns the SVG text.
pub fn alloc_rss(r: &AllocReport) -> Result<String, String> {
    let groups = per_workload(r, |x| x.max_rss_kib.map(|k| (k as f64 / 1024.0, None)));
    grouped_bars(
        "allocator workloads: peak RSS of the worker process (median, MiB, lower is better, log scale)",
        "peak RSS, MiB",
        &r.allocators,
        &groups,
        None,
    )
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
    fn kernel_markers_stay_within_the_measured_cpus() {
        let cpus = |v: Vec<(f64, f64, f64)>| v.iter().map(|k| k.0).collect::<Vec<_>>();
        assert_eq!(cpus(kernel_in(1, 2)), [1.0]);
        assert_eq!(cpus(kernel_in(1, 32)), [1.0, 8.0]);
        assert_eq!(cpus(kernel_in(2, 256)), [8.0, 128.0]);
        assert!(kernel_in(2, 4).is_empty());
    }

    #[test]
    fn an_empty_drain_plot_still_draws() {
        let svg = drain_latency(&[]).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    }
}
