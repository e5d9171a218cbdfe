//! `qpw-bench alloc --fork-only`: the fork storm under `QpwAlloc`, at a
//! small scale (issue 10's goal: 0 hung or crashed children). The storm runs
//! in a worker process under each allocator named; every child must exit 0
//! within its limit. Behaviour only: no timing is asserted.

use serde_json::Value;
use std::process::Command;

#[test]
fn qpw_fork_storm_has_no_hung_or_crashed_child() {
    const FORKS: u64 = 50;
    let o = Command::new(env!("CARGO_BIN_EXE_qpw-bench"))
        .args([
            "alloc",
            "--fork-only",
            "--allocator",
            "qpw-queue,qpw-remote",
            "--forks",
            &FORKS.to_string(),
            "--json",
        ])
        .env_remove("QPW")
        .env_remove("QPW_BENCH_ALLOCATOR")
        .output()
        .expect("qpw-bench runs");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "status {:?}: {stderr}", o.status);
    let json: Value = serde_json::from_str(&String::from_utf8_lossy(&o.stdout)).unwrap();
    // Only the storm ran: no workload, no baseline.
    assert_eq!(json["workloads"].as_array().unwrap().len(), 0);
    assert_eq!(json["baseline"]["runs"], 0);
    let fork = &json["fork"];
    assert_eq!(fork["forks"], FORKS);
    let rows = fork["rows"].as_array().unwrap();
    let names: Vec<&str> = rows
        .iter()
        .map(|r| r["allocator"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["qpw-queue", "qpw-remote"]);
    for r in rows {
        assert!(r["error"].is_null(), "the storm's worker failed: {r}");
        let s = &r["storm"];
        assert_eq!(s["allocator"], r["allocator"]);
        assert_eq!(
            (
                &s["forks"],
                &s["ok"],
                &s["hung"],
                &s["crashed"],
                &s["fork_failed"]
            ),
            (
                &Value::from(FORKS),
                &Value::from(FORKS),
                &Value::from(0),
                &Value::from(0),
                &Value::from(0)
            ),
            "{}: {}",
            r["allocator"],
            s["problems"]
        );
        assert_eq!(s["stopped_early"], false);
        assert!(s["problems"].is_null(), "{s}");
        // The two threads were allocating through the storm.
        assert!(s["churn_objects"].as_u64().unwrap() > 0, "{s}");
        // Every child reported its clock readings.
        assert!(s["child_run"]["p50_ns"].as_f64().unwrap() > 0.0, "{s}");
    }
}
