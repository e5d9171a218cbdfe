//! `qpw-bench realprog` from the outside: bad arguments refused with a
//! message naming them, and a tiny run (one round, a small scale, glibc
//! and qpw in both modes) in which every program that is installed runs
//! under every allocator, and every one that is not is a printed skip.
//! Behaviour only: no timing is asserted.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qpw-bench"))
        .args(args)
        .env_remove("QPW")
        .env_remove("LD_PRELOAD")
        .output()
        .expect("qpw-bench runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `libqpw_malloc.so`, built here with this test's profile (`cargo test`
/// builds no `cdylib` for another crate's tests).
fn qpw_lib() -> PathBuf {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_qpw-bench"));
    let profile_dir = exe.parent().expect("target/<profile>").to_path_buf();
    let target = profile_dir.parent().expect("target dir");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "-p", "qpw-malloc", "--target-dir"])
        .arg(target)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if cfg!(debug_assertions) {
        cmd.args(["--profile", "test"]);
    } else {
        cmd.arg("--release");
    }
    let out = cmd.output().expect("run cargo build");
    assert!(
        out.status.success(),
        "cargo build -p qpw-malloc failed:\n{}",
        text(&out.stderr)
    );
    let lib = profile_dir.join("libqpw_malloc.so");
    assert!(lib.is_file(), "no {}", lib.display());
    lib
}

#[test]
fn bad_arguments_are_refused_by_name_and_nothing_runs() {
    let lib = std::env::temp_dir().join("qpw-bench-realprog-test-no-such-lib.so");
    let _ = std::fs::remove_file(&lib);
    let lib = lib.to_str().unwrap();
    for (args, says) in [
        (&["--rounds", "0"][..], "1 to 100"),
        (&["--rounds", "many"], "`many`"),
        (&["--scale", "0"], "0.001"),
        (&["--timeout", "-1"], "seconds"),
        (&["--program", "emacs"], "emacs"),
        (&["--allocator", "tcmalloc"], "tcmalloc"),
        (&["--qpw-lib", lib], "no such file"),
        (&["--qpw-lib", lib, "--no-build"], "--no-build"),
    ] {
        let mut v = vec!["realprog"];
        v.extend_from_slice(args);
        let o = bench(&v);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: stderr lacks {says:?}: {err}");
        assert!(o.stdout.is_empty(), "{args:?} printed {}", text(&o.stdout));
    }
}

fn cell<'a>(row: &'a Value, allocator: &str) -> &'a Value {
    row["cells"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["allocator"] == allocator)
        .unwrap_or_else(|| panic!("no {allocator} cell in {row}"))
}

#[test]
fn a_tiny_run_measures_every_installed_program_under_glibc_and_qpw() {
    let lib = qpw_lib();
    let o = bench(&[
        "realprog",
        "--rounds",
        "1",
        "--scale",
        "0.002",
        "--timeout",
        "120",
        "--allocator",
        "glibc,qpw-queue,qpw-remote",
        "--qpw-lib",
        lib.to_str().unwrap(),
        "--json",
    ]);
    let stderr = text(&o.stderr);
    assert!(o.status.success(), "status {:?}\n{stderr}", o.status);
    let json: Value = serde_json::from_slice(&o.stdout).expect("JSON on stdout");
    assert_eq!(
        json["allocators"],
        serde_json::json!(["glibc", "qpw-queue", "qpw-remote"])
    );
    assert_eq!(json["reference"], "glibc");
    let libs = json["libraries"].as_array().unwrap();
    assert!(
        libs.iter()
            .any(|l| l.as_str().unwrap().contains("given with --qpw-lib")),
        "{libs:?}"
    );
    assert!(json["load_start"].as_str().unwrap().split(' ').count() == 3);
    let skipped: Vec<&str> = json["skipped_programs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let name = s["name"].as_str().unwrap();
            let reason = s["reason"].as_str().unwrap();
            assert!(reason.contains("not found"), "{s}");
            // A missing program is a printed skip, never a silent pass.
            eprintln!("skipped: {name}: {reason}");
            name
        })
        .collect();
    for c in ["random1", "random2", "larson", "prodcons", "threads"] {
        assert!(!skipped.contains(&c), "our C program {c} was skipped");
    }
    let rows = json["rows"].as_array().unwrap();
    let installed = |p: &str| match p {
        "python" => Path::new("/usr/bin/python3").is_file(),
        "sqlite" => Path::new("/usr/bin/sqlite3").is_file(),
        "redis" => {
            Path::new("/usr/bin/redis-server").is_file()
                && Path::new("/usr/bin/redis-benchmark").is_file()
        }
        _ => true,
    };
    for p in [
        "random1", "random2", "larson", "prodcons", "threads", "python", "sqlite", "redis",
    ] {
        assert_eq!(skipped.contains(&p), !installed(p), "{p}");
        let mine: Vec<&Value> = rows.iter().filter(|r| r["program"] == p).collect();
        if !installed(p) {
            assert!(mine.is_empty(), "{p} is skipped but has rows");
            continue;
        }
        let main_row = mine
            .iter()
            .find(|r| r["in_mean"] == true)
            .unwrap_or_else(|| panic!("no row of {p} in the means"));
        for a in ["glibc", "qpw-queue", "qpw-remote"] {
            let c = cell(main_row, a);
            assert_eq!(c["failures"], 0, "{p} under {a}: {c}\n{stderr}");
            assert_eq!(c["runs"], 1, "{p} under {a}: {c}");
            assert!(c["value"]["median"].as_f64().unwrap() > 0.0, "{c}");
            assert!(c["peak_rss_kib"].as_u64().unwrap() > 0, "{c}");
            assert!(c["rss_after_kib"].as_u64().unwrap() > 0, "{c}");
        }
        if p == "redis" {
            // The four tests at two sizes, plain and pipelined, and the total.
            assert_eq!(mine.len(), 17, "{mine:?}");
        }
    }
    let means = json["means"].as_array().unwrap();
    assert_eq!(means[0]["geomean_c"], 1.0, "glibc is the reference here");
}
