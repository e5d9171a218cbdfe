//! The benchmark program from the outside: a tiny `report --quick` checked
//! against the documented `results.json` schema, well-formed SVG plots,
//! `isolation --json` counting what each mode did, and bad options refused
//! with nothing written. Behaviour only: no timing is asserted.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bench(args: &[&str]) -> Output {
    bench_env(args, &[])
}

/// `bench` with these environment variables set (and `CARGO_TARGET_DIR`
/// removed unless set here: the default `--out` depends on it).
fn bench_env(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_qpw-bench"));
    c.args(args)
        .env_remove("QPW")
        .env_remove("CARGO_TARGET_DIR");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("qpw-bench runs")
}

/// Every `<text>` of an SVG whose content is `label`, by its y.
fn text_ys(doc: &roxmltree::Document, label: &str) -> Vec<f64> {
    doc.descendants()
        .filter(|n| n.has_tag_name("text") && n.text().map(str::trim) == Some(label))
        .filter_map(|n| n.attribute("y")?.parse().ok())
        .collect()
}

/// Whether height `y` lies inside a plotted area: between the top and the
/// bottom of some line that is not flat (`polyline`: the data series and
/// the axes; flat ones are legend marks and ticks).
fn inside_a_plot(doc: &roxmltree::Document, y: f64) -> bool {
    doc.descendants()
        .filter(|n| n.has_tag_name("polyline"))
        .any(|n| {
            let ys: Vec<f64> = n
                .attribute("points")
                .unwrap_or("")
                .split_whitespace()
                .filter_map(|xy| xy.split(',').nth(1)?.parse().ok())
                .collect();
            let lo = ys.iter().copied().fold(f64::MAX, f64::min);
            let hi = ys.iter().copied().fold(f64::MIN, f64::max);
            lo < y && y < hi
        })
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A fresh directory for one test; removed first if a previous run left it.
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("qpw-bench-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Entries of a directory, by name.
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The schema of `results.json`, as documented (results-schema.md): every
/// key path (`[]` for array elements) with its JSON type. `number` accepts
/// integers too; `a|b` accepts either.
const SCHEMA: &str = "
schema string
command string
preset string
machine object
machine.cpu_model string
machine.cores integer
machine.allowed_cpus string
machine.kernel string
machine.tsc_hz number
machine.date_utc string
machine.load_average number|null
method object
method.cycles string
method.kmalloc string
method.isolation string
method.isolation_stress string
method.drain string
method.locks string
method.alloc string
method.noisy string
kernel_reference object
kernel_reference.kmalloc_cycles array
kernel_reference.kmalloc_cycles[] object
kernel_reference.kmalloc_cycles[].config string
kernel_reference.kmalloc_cycles[].kernel string
kernel_reference.kmalloc_cycles[].cycles integer
kernel_reference.drain_all_stock_cycles array
kernel_reference.drain_all_stock_cycles[] object
kernel_reference.drain_all_stock_cycles[].cpus integer
kernel_reference.drain_all_stock_cycles[].before_qpw integer
kernel_reference.drain_all_stock_cycles[].after_qpw integer
kmalloc object
kmalloc.size integer
kmalloc.iterations integer
kmalloc.reps integer
kmalloc.lock_pair_cycles number
kmalloc.cpu integer|null
kmalloc.tsc_hz number
kmalloc.rows array
kmalloc.rows[] object
kmalloc.rows[].config string
kmalloc.rows[].alloc_cycles number
kmalloc.rows[].alloc_min_cycles number
kmalloc.rows[].free_cycles number
kmalloc.rows[].free_min_cycles number
kmalloc.rows[].cold_alloc_cycles number
kmalloc.rows[].cold_free_cycles number
kmalloc.rows[].kind string
kmalloc.goals object
kmalloc.goals.qpw0_at_or_below_mimalloc bool
kmalloc.goals.qpw1_minus_qpw0_cycles number
kmalloc.goals.qpw1_within_one_lock_pair bool
kmalloc.goals.bulk_ratio number
kmalloc.goals.bulk_within_10_percent bool
kmalloc.goals.no_qpw_vs_qpw0_percent number
kmalloc.goals.no_qpw_within_3_percent bool
kmalloc.goals.ratio_qpw1_qpw0 number
kmalloc.goals.kernel_ratio_qpw1_qpw0 number
isolation object
isolation.seconds number
isolation.rate integer
isolation.threshold_ns integer
isolation.runs array
isolation.runs[] object
isolation.runs[].mode string
isolation.runs[].owner_cpu integer
isolation.runs[].drainer_cpu integer|null
isolation.runs[].seconds number
isolation.runs[].rate integer
isolation.runs[].drains integer
isolation.runs[].drains_failed integer
isolation.runs[].fences integer
isolation.runs[].owner_cpu_ipis integer|null
isolation.runs[].baseline_owner_cpu_ipis integer|null
isolation.runs[].works_run_by_owner integer
isolation.runs[].owner_works_fenced integer
isolation.runs[].owner_works_at_section_end integer
isolation.runs[].owner_works_at_quiescent integer
isolation.runs[].works_run_remotely integer
isolation.runs[].works_other_slots integer
isolation.runs[].threshold_ns integer
isolation.runs[].owner_gaps_over_threshold integer
isolation.runs[].baseline_gaps_over_threshold integer
isolation.runs[].owner_lost_time_pct number
isolation.runs[].baseline_lost_time_pct number
isolation.runs[].owner_ops_per_sec number
isolation.runs[].baseline_ops_per_sec number
isolation.runs[].drain_latency_ns object
isolation.runs[].drain_latency_ns.p50 number
isolation.runs[].drain_latency_ns.p99 number
isolation.runs[].drain_latency_ns.max number
isolation.runs[].owner_gap_ns object
isolation.runs[].owner_gap_ns.p50 number
isolation.runs[].owner_gap_ns.p99 number
isolation.runs[].owner_gap_ns.p9999 number
isolation.runs[].owner_gap_ns.max number
isolation.runs[].baseline_gap_ns object
isolation.runs[].baseline_gap_ns.p50 number
isolation.runs[].baseline_gap_ns.p99 number
isolation.runs[].baseline_gap_ns.p9999 number
isolation.runs[].baseline_gap_ns.max number
isolation.runs[].increments integer
isolation.runs[].counter_total integer
isolation.runs[].noisy bool
isolation.runs[].owner_gap_ccdf array
isolation.runs[].owner_gap_ccdf[] array
isolation.runs[].owner_gap_ccdf[][] number
isolation.runs[].baseline_gap_ccdf array
isolation.runs[].baseline_gap_ccdf[] array
isolation.runs[].baseline_gap_ccdf[][] number
isolation_stress object
isolation_stress.seconds number
isolation_stress.rate integer
isolation_stress.hold_ns integer
isolation_stress.fifo string
isolation_stress.runs array
isolation_stress.runs[] object
isolation_stress.runs[].mode string
isolation_stress.runs[].owner_policy string
isolation_stress.runs[].rt_throttling string
isolation_stress.runs[].owner_cpu integer
isolation_stress.runs[].drainer_cpu integer|null
isolation_stress.runs[].seconds number
isolation_stress.runs[].rate integer
isolation_stress.runs[].hold_ns integer
isolation_stress.runs[].drains integer
isolation_stress.runs[].drains_failed integer
isolation_stress.runs[].fences integer
isolation_stress.runs[].works_run_remotely integer
isolation_stress.runs[].remote_holds integer
isolation_stress.runs[].lock_contended integer
isolation_stress.runs[].owner_waits_pi integer
isolation_stress.runs[].stalls_over_100us integer
isolation_stress.runs[].stalls_over_1ms integer
isolation_stress.runs[].stalls_over_100us_in_hold integer
isolation_stress.runs[].stalls_over_1ms_in_hold integer
isolation_stress.runs[].longest_stall_in_hold_ns number
isolation_stress.runs[].stalls_over_100us_waiting integer
isolation_stress.runs[].stalls_over_1ms_waiting integer
isolation_stress.runs[].longest_stall_waiting_ns number
isolation_stress.runs[].longest_stall_ns number
isolation_stress.runs[].baseline_stalls_over_100us integer
isolation_stress.runs[].baseline_stalls_over_1ms integer
isolation_stress.runs[].baseline_longest_stall_ns number
isolation_stress.runs[].drain_latency_ns object
isolation_stress.runs[].drain_latency_ns.p50 number
isolation_stress.runs[].drain_latency_ns.p99 number
isolation_stress.runs[].drain_latency_ns.max number
isolation_stress.runs[].owner_ops_per_sec number
isolation_stress.runs[].baseline_ops_per_sec number
isolation_stress.runs[].increments integer
isolation_stress.runs[].counter_total integer
drain object
drain.cpus array
drain.cpus[] integer
drain.max_drains integer
drain.budget_s number
drain.hard_limit_s number
drain.warmup_drains integer
drain.points array
drain.points[] object
drain.points[].mode string
drain.points[].cpus integer
drain.points[].owners string
drain.points[].pinned_owners integer
drain.points[].drains integer
drain.points[].drains_failed integer
drain.points[].cut_short bool
drain.points[].lock_contended integer
drain.points[].latency_cycles object
drain.points[].latency_cycles.p50 number
drain.points[].latency_cycles.p99 number
drain.points[].latency_cycles.max number
drain.points[].latency_ns object
drain.points[].latency_ns.p50 number
drain.points[].latency_ns.p99 number
drain.points[].latency_ns.max number
drain.points[].batches object
drain.points[].batches.reps integer
drain.points[].batches.min number
drain.points[].batches.median number
drain.points[].batches.max number
drain.points[].batches.spread_pct number
drain.points[].batches.noisy bool
drain.points[].fences integer
drain.points[].works_by_owners integer
drain.points[].works_by_caller integer
drain.points[].increments integer
drain.points[].counter_total integer
drain.points[].kernel_before_qpw integer|null
drain.points[].kernel_after_qpw integer|null
locks object
locks.iterations integer
locks.reps integer
locks.rows array
locks.rows[] object
locks.rows[].name string
locks.rows[].config string
locks.rows[].mode string
locks.rows[].lock string
locks.rows[].empty object
locks.rows[].empty.reps integer
locks.rows[].empty.min number
locks.rows[].empty.median number
locks.rows[].empty.max number
locks.rows[].empty.spread_pct number
locks.rows[].empty.noisy bool
locks.rows[].trivial object
locks.rows[].trivial.reps integer
locks.rows[].trivial.min number
locks.rows[].trivial.median number
locks.rows[].trivial.max number
locks.rows[].trivial.spread_pct number
locks.rows[].trivial.noisy bool
alloc object
alloc.method string
alloc.reps integer
alloc.seconds number
alloc.scale number
alloc.timeout_s number
alloc.reference string
alloc.allocators array
alloc.allocators[] string
alloc.cpus array
alloc.cpus[] integer
alloc.baseline object
alloc.baseline.seconds number
alloc.baseline.runs integer
alloc.baseline.second_cpu_irqs_per_s object|null
alloc.baseline.second_cpu_irqs_per_s.res number
alloc.baseline.second_cpu_irqs_per_s.cal number
alloc.baseline.second_cpu_irqs_per_s.tlb number
alloc.workloads array
alloc.workloads[] object
alloc.workloads[].workload string
alloc.workloads[].kind string
alloc.workloads[].placement string
alloc.workloads[].description string
alloc.workloads[].rows array
alloc.workloads[].rows[] object
alloc.workloads[].rows[].allocator string
alloc.workloads[].rows[].runs integer
alloc.workloads[].rows[].failures integer
alloc.workloads[].rows[].error string|null
alloc.workloads[].rows[].cost object|null
alloc.workloads[].rows[].cost.reps integer
alloc.workloads[].rows[].cost.min number
alloc.workloads[].rows[].cost.median number
alloc.workloads[].rows[].cost.max number
alloc.workloads[].rows[].cost.spread_pct number
alloc.workloads[].rows[].cost.noisy bool
alloc.workloads[].rows[].rel_cost number|null
alloc.workloads[].rows[].ops_per_s number|null
alloc.workloads[].rows[].elapsed_s number|null
alloc.workloads[].rows[].cpu_s number|null
alloc.workloads[].rows[].cpu_cost number|null
alloc.workloads[].rows[].rel_cpu number|null
alloc.workloads[].rows[].max_rss_kib integer|null
alloc.workloads[].rows[].rel_rss number|null
alloc.workloads[].rows[].minflt integer|null
alloc.workloads[].rows[].first_cpu_irqs object|null
alloc.workloads[].rows[].first_cpu_irqs.res integer
alloc.workloads[].rows[].first_cpu_irqs.cal integer
alloc.workloads[].rows[].first_cpu_irqs.tlb integer
alloc.workloads[].rows[].second_cpu_irqs object|null
alloc.workloads[].rows[].second_cpu_irqs.res integer
alloc.workloads[].rows[].second_cpu_irqs.cal integer
alloc.workloads[].rows[].second_cpu_irqs.tlb integer
alloc.summary array
alloc.summary[] object
alloc.summary[].allocator string
alloc.summary[].geomean_rel_cost number|null
alloc.summary[].workloads integer
alloc.summary[].geomean_rel_cpu number|null
alloc.summary[].worst_rel_rss number|null
alloc.fork object|null
alloc.fork.method string
alloc.fork.forks integer
alloc.fork.child_limit_s number
alloc.fork.max_hung integer
alloc.fork.rows array
alloc.fork.rows[] object
alloc.fork.rows[].allocator string
alloc.fork.rows[].error string|null
alloc.fork.rows[].storm object|null
alloc.fork.rows[].storm.allocator string
alloc.fork.rows[].storm.forks_asked integer
alloc.fork.rows[].storm.forks integer
alloc.fork.rows[].storm.ok integer
alloc.fork.rows[].storm.hung integer
alloc.fork.rows[].storm.crashed integer
alloc.fork.rows[].storm.fork_failed integer
alloc.fork.rows[].storm.stopped_early bool
alloc.fork.rows[].storm.problems string|null
alloc.fork.rows[].storm.fork object
alloc.fork.rows[].storm.fork.p50_ns number
alloc.fork.rows[].storm.fork.p99_ns number
alloc.fork.rows[].storm.fork.max_ns number
alloc.fork.rows[].storm.child_start object
alloc.fork.rows[].storm.child_start.p50_ns number
alloc.fork.rows[].storm.child_start.p99_ns number
alloc.fork.rows[].storm.child_start.max_ns number
alloc.fork.rows[].storm.child_run object
alloc.fork.rows[].storm.child_run.p50_ns number
alloc.fork.rows[].storm.child_run.p99_ns number
alloc.fork.rows[].storm.child_run.max_ns number
alloc.fork.rows[].storm.churn_objects integer
alloc.fork.rows[].storm.elapsed_s number
files array
files[] string
";

fn type_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Every (path, type) in a JSON value.
fn walk(v: &Value, path: &str, out: &mut Vec<(String, &'static str)>) {
    if !path.is_empty() {
        out.push((path.to_string(), type_of(v)));
    }
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                walk(x, &p, out);
            }
        }
        Value::Array(a) => {
            for x in a {
                walk(x, &format!("{path}[]"), out);
            }
        }
        _ => {}
    }
}

fn type_ok(documented: &str, actual: &str) -> bool {
    documented
        .split('|')
        .any(|t| t == actual || (t == "number" && actual == "integer"))
}

/// Checks `results.json` both ways: every key it has is documented with a
/// matching type, and every documented key is there.
fn check_schema(json: &Value) {
    let schema: Vec<(&str, &str)> = SCHEMA
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split_once(' ').unwrap())
        .collect();
    let mut seen = Vec::new();
    walk(json, "", &mut seen);
    for (path, ty) in &seen {
        let doc = schema.iter().find(|(p, _)| p == path);
        let Some((_, doc_ty)) = doc else {
            panic!("results.json has an undocumented key `{path}` ({ty})")
        };
        assert!(
            type_ok(doc_ty, ty),
            "`{path}` is {ty}, documented as {doc_ty}"
        );
    }
    for (path, _) in &schema {
        assert!(
            seen.iter().any(|(p, _)| p == path),
            "documented key `{path}` is missing from results.json"
        );
    }
}

#[test]
fn a_tiny_quick_report_writes_every_file_and_matches_the_schema() {
    let dir = scratch("report");
    let out = dir.join("qpw-report");
    // Stands in for sched_rt_runtime_us: without --fifo nothing writes it.
    let rt = dir.join("rt_runtime");
    std::fs::write(&rt, "950000\n").unwrap();
    let rt_mtime = std::fs::metadata(&rt).unwrap().modified().unwrap();
    let o = bench_env(
        &[
            "report",
            "--quick",
            "--out",
            out.to_str().unwrap(),
            "--seconds",
            "0.2",
            "--rate",
            "200",
            "--cpus",
            "1,2",
            "--drains",
            "5",
            "--budget",
            "0.05",
            "--lock-iterations",
            "10000",
            "--reps",
            "3",
            "--kmalloc-count",
            "10000",
            "--alloc-seconds",
            "0.03",
            "--alloc-scale",
            "0.02",
            "--alloc-reps",
            "1",
            "--alloc-forks",
            "5",
        ],
        &[("QPW_BENCH_RT_RUNTIME_FILE", &rt)],
    );
    let stdout = text(&o.stdout);
    let stderr = text(&o.stderr);
    assert!(
        o.status.success(),
        "status {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        o.status,
        text(&o.stderr)
    );
    for heading in [
        "## kmalloc",
        "## Isolation",
        "## Drain scaling",
        "## Lock cost",
        "## Isolation under stress",
        "## Allocator workloads",
        "## Real programs under LD_PRELOAD",
    ] {
        assert!(
            stdout.contains(heading),
            "stdout lacks {heading}:\n{stdout}"
        );
    }
    // The seed's layout: our row beside the kernel's figure.
    assert!(
        stdout.contains("| CONFIG_QPW=y, qpw=1 | qpw=1 | 190 |"),
        "{stdout}"
    );
    assert!(stdout.contains("| qpw=1 / qpw=0 | 1.118 |"), "{stdout}");

    // stderr is a pipe here: a progress line per step, with an estimate.
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("qpw-bench: ["))
        .collect();
    assert!(lines.len() > 10, "{stderr}");
    assert!(
        lines[0].starts_with("qpw-bench: [1/") && lines[0].ends_with(": kmalloc"),
        "{stderr}"
    );
    assert!(lines.iter().any(|l| l.contains(" left: ")), "{stderr}");
    // No SCHED_FIFO runs without --fifo, and throttling untouched.
    assert!(stdout.contains("pass --fifo to run them"), "{stdout}");
    assert_eq!(std::fs::read_to_string(&rt).unwrap(), "950000\n");
    assert_eq!(
        std::fs::metadata(&rt).unwrap().modified().unwrap(),
        rt_mtime
    );

    // Only the report directory appears: no temporary or old directory left.
    assert_eq!(entries(&dir), ["qpw-report", "rt_runtime"]);
    assert_eq!(
        entries(&out),
        [
            "alloc_relative_cost.svg",
            "alloc_rss.svg",
            "drain_latency.svg",
            "isolation_gaps.svg",
            "report.md",
            "results.json"
        ]
    );

    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("Machine: ") && md.contains("TSC"), "{md}");
    for heading in [
        "## kmalloc",
        "## Isolation",
        "## Drain scaling",
        "## Lock cost",
        "## Allocator workloads",
        "## Real programs under LD_PRELOAD",
    ] {
        assert!(md.contains(heading), "report.md lacks {heading}");
    }

    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    check_schema(&json);
    assert_eq!(json["schema"], "qpw-bench-results/2");
    assert_eq!(json["preset"], "quick");
    let runs = json["isolation"]["runs"].as_array().unwrap();
    let modes: Vec<&str> = runs.iter().map(|r| r["mode"].as_str().unwrap()).collect();
    assert_eq!(modes, ["queue", "remote", "defer", "auto"]);
    for r in runs {
        assert_eq!(r["counter_total"], r["increments"], "{r}");
    }
    let points = json["drain"]["points"].as_array().unwrap();
    // Four modes, two slot counts, two owner behaviours.
    assert_eq!(points.len(), 4 * 2 * 2);
    for p in points {
        assert_eq!(p["counter_total"], p["increments"], "{p}");
    }
    assert_eq!(json["locks"]["rows"].as_array().unwrap().len(), 11);
    assert_eq!(json["kmalloc"]["iterations"], 10000);
    // Every workload under every allocator, each run finished.
    let workloads = json["alloc"]["workloads"].as_array().unwrap();
    assert_eq!(workloads.len(), 10);
    for w in workloads {
        let rows = w["rows"].as_array().unwrap();
        let names: Vec<&str> = rows
            .iter()
            .map(|r| r["allocator"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            ["qpw-queue", "qpw-remote", "mimalloc", "jemalloc", "glibc"]
        );
        for r in rows {
            assert_eq!(r["runs"], 1, "{w}");
            assert_eq!(r["failures"], 0, "{w}");
        }
    }
    assert_eq!(json["alloc"]["summary"][2]["geomean_rel_cost"], 1.0);

    for svg in [
        "drain_latency.svg",
        "isolation_gaps.svg",
        "alloc_relative_cost.svg",
        "alloc_rss.svg",
    ] {
        let s = std::fs::read_to_string(out.join(svg)).unwrap();
        let doc =
            roxmltree::Document::parse(&s).unwrap_or_else(|e| panic!("{svg} is not XML: {e}"));
        assert_eq!(doc.root_element().tag_name().name(), "svg", "{svg}");
        assert!(
            doc.descendants().any(|n| n.has_tag_name("polyline")
                || n.has_tag_name("path")
                || n.has_tag_name("rect")),
            "{svg} draws no line"
        );
    }
    // Legends sit below the data; p99 lines are in it.
    let s = std::fs::read_to_string(out.join("drain_latency.svg")).unwrap();
    let doc = roxmltree::Document::parse(&s).unwrap();
    for label in ["remote p50", "remote p99", "queue p99"] {
        let ys = text_ys(&doc, label);
        assert!(!ys.is_empty(), "drain_latency.svg: no legend entry {label}");
        assert!(
            !ys.iter().any(|&y| inside_a_plot(&doc, y)),
            "drain_latency.svg: {label} at {ys:?} is inside a plot"
        );
    }
    let s = std::fs::read_to_string(out.join("isolation_gaps.svg")).unwrap();
    let doc = roxmltree::Document::parse(&s).unwrap();
    let ys = text_ys(&doc, "baseline (no drains)");
    assert!(
        !ys.is_empty() && !ys.iter().any(|&y| inside_a_plot(&doc, y)),
        "isolation_gaps.svg: a legend at {ys:?} is inside a plot"
    );
    // Every bar with its spread: one whisker per measured bar.
    let s = std::fs::read_to_string(out.join("alloc_relative_cost.svg")).unwrap();
    let doc = roxmltree::Document::parse(&s).unwrap();
    let whiskers = doc
        .descendants()
        .filter(|n| n.has_tag_name("polyline") && n.attribute("stroke") == Some("#000000"))
        .count();
    assert!(
        whiskers >= 10 * 5,
        "{whiskers} black lines: whiskers missing"
    );

    // A second run replaces the report in place, still leaving nothing
    // else; without --out it goes to $CARGO_TARGET_DIR/qpw-report.
    let o = bench_env(
        &[
            "report",
            "--quick",
            "--seconds",
            "0.1",
            "--cpus",
            "1",
            "--drains",
            "3",
            "--budget",
            "0.05",
            "--lock-iterations",
            "1000",
            "--reps",
            "2",
            "--kmalloc-count",
            "1000",
            "--alloc-seconds",
            "0.02",
            "--alloc-scale",
            "0.01",
            "--alloc-reps",
            "1",
            "--alloc-forks",
            "5",
        ],
        &[
            ("QPW_BENCH_RT_RUNTIME_FILE", &rt),
            ("CARGO_TARGET_DIR", &dir),
        ],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(entries(&dir), ["qpw-report", "rt_runtime"]);
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(json["drain"]["cpus"], serde_json::json!([1]));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn isolation_stress_json_matches_stalls_to_remote_holds() {
    let o = bench(&[
        "isolation",
        "--stress",
        "--json",
        "--seconds",
        "0.2",
        "--rate",
        "200",
        "--hold-ns",
        "5000",
        "--mode",
        "queue,remote",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let lines: Vec<Value> = text(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let modes: Vec<&str> = lines.iter().map(|l| l["mode"].as_str().unwrap()).collect();
    assert_eq!(modes, ["queue", "remote"]);
    for l in &lines {
        let n = |k: &str| l[k].as_u64().unwrap_or_else(|| panic!("{k} in {l}"));
        assert_eq!(l["owner_policy"], "SCHED_OTHER", "{l}");
        assert_eq!(n("hold_ns"), 5000, "{l}");
        assert!(n("drains") > 0, "{l}");
        assert_eq!(n("counter_total"), n("increments"), "{l}");
        // Every remote work on the owner's slot recorded its hold.
        assert_eq!(n("remote_holds"), n("works_run_remotely"), "{l}");
        assert!(
            n("stalls_over_100us_in_hold") <= n("stalls_over_100us"),
            "{l}"
        );
        assert!(
            n("stalls_over_1ms_in_hold") <= n("stalls_over_100us_in_hold"),
            "{l}"
        );
        assert!(n("stalls_over_1ms") <= n("stalls_over_100us"), "{l}");
        assert!(
            n("stalls_over_100us_waiting") <= n("stalls_over_100us_in_hold"),
            "{l}"
        );
    }
    // Queue mode: the drainer runs the work holding the slot's claim (a
    // remote hold), after at most one fence per drain; remote: no fence.
    let q = |k: &str| lines[0][k].as_u64().unwrap();
    assert!(
        q("fences") >= 1 && q("fences") <= q("drains"),
        "{}",
        lines[0]
    );
    assert_eq!(lines[1]["fences"], 0, "{}", lines[1]);
}

#[test]
fn isolation_json_counts_signals_and_works_per_mode() {
    let o = bench(&["isolation", "--json", "--seconds", "0.3", "--rate", "200"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let stderr = text(&o.stderr);
    let lines: Vec<Value> = text(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let modes: Vec<&str> = lines.iter().map(|l| l["mode"].as_str().unwrap()).collect();
    assert_eq!(modes, ["queue", "remote", "defer", "auto"]);
    for l in &lines {
        let mode = l["mode"].as_str().unwrap();
        for key in [
            "drains",
            "fences",
            "works_run_by_owner",
            "works_run_remotely",
            "threshold_ns",
            "owner_gaps_over_threshold",
            "baseline_gaps_over_threshold",
            "owner_lost_time_pct",
            "baseline_lost_time_pct",
            "owner_ops_per_sec",
        ] {
            assert!(l[key].is_number(), "{mode}: {key} missing in {l}");
        }
        for key in ["p50", "p99", "max"] {
            assert!(
                l["drain_latency_ns"][key].is_number(),
                "{mode}: drain_latency_ns.{key}"
            );
        }
        let n = |k: &str| l[k].as_u64().unwrap();
        // Every drain completed, and reached the owner's slot exactly once.
        assert!(n("drains") > 0, "{mode}: no drain ran");
        assert_eq!(n("drains_failed"), 0, "{mode}");
        assert_eq!(
            n("works_run_by_owner") + n("works_run_remotely"),
            n("drains"),
            "{mode}: {l}"
        );
        assert_eq!(
            n("counter_total"),
            n("increments"),
            "{mode}: increments lost"
        );
        assert!(
            stderr.contains(&format!("{mode}: counter check: total")),
            "{stderr}"
        );
        match mode {
            "queue" => {
                // The drainer fences the owner and runs the drains itself
                // (or the owner does, at a section's end, after a timeout).
                assert_eq!(
                    n("owner_works_fenced") + n("works_run_by_owner"),
                    n("drains"),
                    "{l}"
                );
                assert!(n("fences") >= 1 && n("fences") <= n("drains"), "{l}");
            }
            "remote" | "auto" => {
                // (`auto` has a second, `queue`, owner on the drainer's CPU:
                // its drains fence that CPU, not the measured owner's.)
                // Never interrupted: the drainer runs the work, or, when it
                // finds the owner stuck in a section (preempted on this busy
                // machine), the owner does as the section ends; never fenced.
                if mode == "remote" {
                    assert_eq!(n("fences"), 0, "{mode}: {l}");
                }
                assert_eq!(n("owner_works_fenced"), 0, "{mode}: {l}");
                assert!(n("works_run_remotely") >= 1, "{mode}: {l}");
            }
            "defer" => {
                // The owner runs every drain at its own points (a quiescent
                // point, or the end of a local section), never fenced.
                assert_eq!(n("fences"), 0, "{l}");
                assert_eq!(n("owner_works_fenced"), 0, "{l}");
                assert_eq!(n("works_run_by_owner"), n("drains"), "{l}");
            }
            m => panic!("unexpected mode {m}"),
        }
    }
}

#[test]
fn bad_options_fail_with_a_clear_error_and_write_nothing() {
    let dir = scratch("bad");
    let out = dir.join("out");
    let out_s = out.to_str().unwrap();
    let file = dir.join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let under_file = file.join("out");
    let cases: Vec<(Vec<&str>, &[&str])> = vec![
        (vec!["drain", "--cpus", "0"], &["--cpus", "at least 1"]),
        (vec!["drain", "--cpus", "abc"], &["--cpus", "abc"]),
        (vec!["drain", "--cpus", "1,,2"], &["--cpus"]),
        (
            vec!["isolation", "--seconds", "-1"],
            &["--seconds", "positive"],
        ),
        (vec!["isolation", "--seconds", "abc"], &["--seconds", "abc"]),
        (vec!["isolation", "--mode", "bogus"], &["--mode", "bogus"]),
        (vec!["isolation", "--rate", "0"], &["--rate"]),
        (
            vec!["isolation", "--stress", "--hold-ns", "0"],
            &["--hold-ns", "out of range"],
        ),
        (
            vec!["isolation", "--stress", "--hold-ns", "99999999999"],
            &["--hold-ns", "out of range"],
        ),
        (
            vec!["isolation", "--stress", "--owner-fifo", "100"],
            &["--owner-fifo", "1 to 99"],
        ),
        (
            vec!["isolation", "--stress", "--owner-fifo", "-5"],
            &["--owner-fifo", "1 to 99"],
        ),
        (vec!["isolation", "--hold-ns", "20000"], &["--stress"]),
        (vec!["isolation", "--owner-fifo", "50"], &["--stress"]),
        (
            vec!["report", "--out", out_s, "--cpus", "0"],
            &["--cpus", "at least 1"],
        ),
        (
            vec!["report", "--out", out_s, "--cpus", "abc"],
            &["--cpus", "abc"],
        ),
        (
            vec!["report", "--out", out_s, "--seconds", "-1"],
            &["--seconds", "positive"],
        ),
        (
            vec!["report", "--out", out_s, "--quick", "--full"],
            &["--quick", "--full"],
        ),
        (
            vec!["report", "--out", file.to_str().unwrap()],
            &["--out", "not a directory"],
        ),
        (
            vec!["report", "--out", under_file.to_str().unwrap()],
            &["--out"],
        ),
        (
            vec!["report", "--out", "/proc/qpw-bench-report"],
            &["--out"],
        ),
    ];
    for (args, needles) in cases {
        let o = bench(&args);
        let err = text(&o.stderr);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert_ne!(o.status.code(), Some(101), "{args:?} panicked: {err}");
        for n in needles {
            assert!(
                err.contains(n),
                "{args:?}: the error does not name `{n}`:\n{err}"
            );
        }
        assert!(
            o.stdout.is_empty(),
            "{args:?} printed results: {}",
            text(&o.stdout)
        );
        // Nothing written: only the file the test made is there.
        assert_eq!(entries(&dir), ["a-file"], "{args:?} left files behind");
        assert_eq!(std::fs::read(&file).unwrap(), b"not a directory");
    }
    assert!(!Path::new("/proc/qpw-bench-report").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Hostile numbers: too large for any integer type, NaN, infinities, zero,
/// case-mangled names, an option the subcommand lacks. Each is refused at
/// parse time (exit 2, nothing on stdout) by a message naming the option and
/// what was wrong; none panics or starts a run.
#[test]
fn hostile_values_are_refused_by_name() {
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["drain", "--cpus", "99999999999999999999"],
            &["--cpus", "99999999999999999999", "maximum"],
        ),
        (
            &["drain", "--cpus", "2,18446744073709551616"],
            &["--cpus", "maximum"],
        ),
        (&["drain", "--budget", "nan"], &["--budget", "nan"]),
        (&["drain", "--seconds", "nan"], &["--seconds"]),
        (&["drain", "--mode", "QUEUE"], &["--mode", "QUEUE"]),
        (&["isolation", "--seconds", "nan"], &["--seconds", "nan"]),
        (
            &["isolation", "--seconds", "1e400"],
            &["--seconds", "1e400"],
        ),
        (&["isolation", "--seconds=-inf"], &["--seconds", "-inf"]),
        // Separated, clap reads `-inf` as short flags (negative numbers
        // are let through, words are not): still refused, naming `-i`.
        (&["isolation", "--seconds", "-inf"], &["'-i'"]),
        (&["isolation", "--rate", "0"], &["--rate", "at least 1"]),
        (
            &["isolation", "--rate", "99999999999999999999"],
            &["--rate", "maximum"],
        ),
        (
            &["locks", "--iterations", "99999999999999999999"],
            &["--iterations", "too large"],
        ),
        (&["soak", "--seconds", "nan"], &["--seconds", "nan"]),
        (&["alloc", "--reps", "0"], &["--reps", "1 to 100"]),
        (&["alloc", "--reps", "many"], &["--reps", "many"]),
        (&["alloc", "--workload", "bogus"], &["--workload", "bogus"]),
        (&["alloc", "--workload", "idle"], &["--workload", "idle"]),
        (&["alloc", "--workload", "json,,small"], &["--workload"]),
        (
            &["alloc", "--allocator", "tcmalloc"],
            &["--allocator", "tcmalloc"],
        ),
        (&["alloc", "--scale", "0"], &["--scale", "0.001"]),
        (&["alloc", "--scale", "nan"], &["--scale", "nan"]),
        (&["alloc", "--seconds", "-1"], &["--seconds", "positive"]),
        (&["alloc", "--timeout", "0"], &["--timeout"]),
        (&["alloc", "--forks", "100001"], &["--forks", "0 to 100000"]),
        (
            &["alloc", "--fork-child-limit", "0"],
            &["--fork-child-limit"],
        ),
        (&["report", "--alloc-forks", "x"], &["--alloc-forks", "`x`"]),
        (&["report", "--alloc-reps", "0"], &["--alloc-reps"]),
        (
            &["report", "--alloc-scale", "1000"],
            &["--alloc-scale", "0.001"],
        ),
        (
            &["report", "--alloc-seconds", "nan"],
            &["--alloc-seconds", "nan"],
        ),
    ];
    for (args, needles) in cases {
        let o = bench(args);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        for n in *needles {
            assert!(
                err.contains(n),
                "{args:?}: the error does not name `{n}`:\n{err}"
            );
        }
        assert!(o.stdout.is_empty(), "{args:?} printed: {}", text(&o.stdout));
    }
}

/// `alloc` runs each workload in a worker process under each allocator:
/// a tiny run of two workloads, checked for what every row must hold.
#[test]
fn alloc_json_runs_every_allocator_in_its_own_process() {
    let o = bench(&[
        "alloc",
        "--json",
        "--workload",
        "midsize,json",
        "--reps",
        "2",
        "--seconds",
        "0.05",
        "--scale",
        "0.02",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let json: Value = serde_json::from_str(&text(&o.stdout)).unwrap();
    assert_eq!(json["reference"], "mimalloc");
    assert_eq!(json["baseline"]["runs"], 2);
    let workloads = json["workloads"].as_array().unwrap();
    let names: Vec<&str> = workloads
        .iter()
        .map(|w| w["workload"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["midsize", "json"]);
    assert_eq!(workloads[0]["placement"], "cpu0");
    assert_eq!(workloads[1]["kind"], "program");
    for w in workloads {
        for r in w["rows"].as_array().unwrap() {
            assert_eq!(r["runs"], 2, "{r}");
            assert_eq!(r["failures"], 0, "{r}");
            assert!(r["max_rss_kib"].as_u64().unwrap() > 0, "{r}");
            assert!(r["ops_per_s"].as_f64().unwrap() > 0.0, "{r}");
            assert!(r["rel_rss"].as_f64().unwrap() > 0.0, "{r}");
        }
        let mi = w["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["allocator"] == "mimalloc")
            .unwrap();
        assert_eq!(mi["rel_cost"], 1.0);
    }
    let summary = json["summary"].as_array().unwrap();
    assert_eq!(summary.len(), 5);
    for s in summary {
        assert_eq!(s["workloads"], 2, "{s}");
    }
}

/// The worker refuses to run under an allocator other than the one named,
/// and no other subcommand runs with the worker's variable set.
#[test]
fn the_worker_protocol_is_checked() {
    let worker = |env: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_qpw-bench"));
        c.args([
            "alloc-worker",
            "--workload",
            "idle",
            "--allocator",
            "jemalloc",
            "--seconds",
            "0.01",
            "--scale",
            "1",
        ]);
        c.env_remove("QPW_BENCH_ALLOCATOR");
        if let Some(v) = env {
            c.env("QPW_BENCH_ALLOCATOR", v);
        }
        c.output().unwrap()
    };
    let o = worker(None);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("QPW_BENCH_ALLOCATOR=jemalloc"),
        "{}",
        text(&o.stderr)
    );
    let o = worker(Some("glibc"));
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("this process has glibc"),
        "{}",
        text(&o.stderr)
    );
    let o = worker(Some("tcmalloc"));
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("names no allocator"),
        "{}",
        text(&o.stderr)
    );
    // The worker's peak RSS is its own, not its parent's: this process
    // holds 256 MiB while it starts the worker.
    let big = vec![1u8; 256 << 20];
    let o = worker(Some("jemalloc"));
    assert_eq!(
        big.iter().step_by(4096).map(|&b| b as usize).sum::<usize>(),
        65536
    );
    drop(big);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let line: Value = serde_json::from_str(text(&o.stdout).trim()).unwrap();
    assert_eq!(line["allocator"], "jemalloc");
    assert_eq!(line["on_first_cpu_only"], true);
    let peak = line["peak_rss_kib"].as_u64().unwrap();
    assert!(peak > 0 && peak < 128 << 10, "worker peak RSS {peak} KiB");

    let o = Command::new(env!("CARGO_BIN_EXE_qpw-bench"))
        .args(["locks", "--iterations", "10"])
        .env("QPW_BENCH_ALLOCATOR", "mimalloc")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("QPW_BENCH_ALLOCATOR is set"),
        "{}",
        text(&o.stderr)
    );
    assert!(o.stdout.is_empty());
}
