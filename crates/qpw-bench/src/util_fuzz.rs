//! Fuzzing of every option parser: any string gives `Ok` with a value in
//! range, or an error naming the input, the option or the bound; never a
//! panic. The parsers are checked directly against a reference reading, and
//! through clap (`--option=VALUE` on every subcommand), which is how the
//! `--cpus` and `--mode` lists are split and parsed.

use super::*;
use crate::{Cli, Command};
use clap::Parser;
use proptest::prelude::*;

/// Any string, number-like strings, and the classic troublemakers.
fn input() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[ \t]{0,2}[+-]?[0-9]{0,25}([.][0-9]{0,4})?([eE][+-]?[0-9]{1,4})?[ \t]{0,2}",
        prop::sample::select(vec![
            "",
            " ",
            "nan",
            "NaN",
            "-nan",
            "inf",
            "-inf",
            "+inf",
            "infinity",
            "1e400",
            "-1e400",
            "1e-400",
            "0",
            "-0",
            "0.0",
            "-1",
            "0x10",
            "1_000",
            "١",
            "１",
            "4096",
            "4097",
            "86400",
            "86400.0000001",
            "1000000",
            "1000001",
            "18446744073709551615",
            "18446744073709551616",
            "99999999999999999999",
            "queue",
            "QUEUE",
            "auto,remote",
        ])
        .prop_map(String::from),
    ]
}

fn mode_name() -> impl Strategy<Value = String> {
    prop::sample::select(BenchMode::ALL.map(BenchMode::name).to_vec()).prop_map(String::from)
}

/// A mode's name slightly wrong: case, spaces, a letter short or long.
fn near_miss() -> impl Strategy<Value = String> {
    (mode_name(), 0..6).prop_map(|(n, k)| match k {
        0 => n.to_uppercase(),
        1 => n[..1].to_uppercase() + &n[1..],
        2 => format!(" {n}"),
        3 => format!("{n} "),
        4 => n[..n.len() - 1].to_string(),
        _ => format!("{n}s"),
    })
}

/// An error message must say what was wrong: the input itself, or the bound.
fn names(e: &str, s: &str, reasons: &[&str]) -> bool {
    !e.is_empty() && (e.contains(s) || reasons.iter().any(|r| e.contains(r)))
}

fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("qpw-bench").chain(args.iter().copied()))
}

/// Every option with a value, by subcommand (`report --out` takes any path).
const OPTIONS: &[(&str, &str)] = &[
    ("drain", "--mode"),
    ("drain", "--cpus"),
    ("drain", "--owners"),
    ("drain", "--drains"),
    ("drain", "--budget"),
    ("isolation", "--mode"),
    ("isolation", "--seconds"),
    ("isolation", "--rate"),
    ("isolation", "--threshold-ns"),
    ("kmalloc", "--size"),
    ("kmalloc", "--iterations"),
    ("kmalloc", "--reps"),
    ("locks", "--iterations"),
    ("locks", "--reps"),
    ("report", "--seconds"),
    ("report", "--rate"),
    ("report", "--cpus"),
    ("report", "--drains"),
    ("report", "--budget"),
    ("report", "--lock-iterations"),
    ("report", "--reps"),
    ("report", "--kmalloc-count"),
    ("soak", "--seconds"),
    ("soak", "--round-seconds"),
    ("soak", "--threads"),
    ("soak", "--nr-cpus"),
    ("soak", "--seed"),
];

proptest! {
    #[test]
    fn parse_seconds_any_string(s in input()) {
        let want = s.trim().parse::<f64>().ok().filter(|v| v.is_finite() && *v > 0.0 && *v <= 86_400.0);
        match parse_seconds(&s) {
            Ok(v) => prop_assert_eq!(Some(v), want),
            Err(e) => {
                prop_assert!(want.is_none(), "{:?} refused: {}", s, e);
                prop_assert!(names(&e, &s, &[]), "{:?}: {:?}", s, e);
            }
        }
    }

    #[test]
    fn parse_positive_any_string(s in input()) {
        let want = s.trim().parse::<u64>().ok().filter(|&v| v >= 1);
        match parse_positive(&s) {
            Ok(v) => prop_assert_eq!(Some(v), want),
            Err(e) => {
                prop_assert!(want.is_none(), "{:?} refused: {}", s, e);
                prop_assert!(names(&e, &s, &["at least 1"]), "{:?}: {:?}", s, e);
            }
        }
    }

    #[test]
    fn parse_rate_any_string(s in input()) {
        let want = s.trim().parse::<u64>().ok().filter(|&v| (1..=1_000_000).contains(&v));
        match parse_rate(&s) {
            Ok(v) => prop_assert_eq!(Some(v), want),
            Err(e) => {
                prop_assert!(want.is_none(), "{:?} refused: {}", s, e);
                prop_assert!(names(&e, &s, &["at least 1", "maximum"]), "{:?}: {:?}", s, e);
            }
        }
    }

    #[test]
    fn parse_cpu_count_any_string(s in input()) {
        let want = s.trim().parse::<usize>().ok().filter(|&v| (1..=MAX_BENCH_CPUS).contains(&v));
        match parse_cpu_count(&s) {
            Ok(v) => prop_assert_eq!(Some(v), want),
            Err(e) => {
                prop_assert!(want.is_none(), "{:?} refused: {}", s, e);
                prop_assert!(names(&e, &s, &["at least 1", "maximum"]), "{:?}: {:?}", s, e);
            }
        }
    }

    /// `--cpus` lists: split on commas, each piece a CPU count.
    #[test]
    fn cpus_lists(pieces in prop::collection::vec(input(), 1..5)) {
        let v = pieces.join(",");
        let want: Option<Vec<usize>> = v.split(',').map(|p| parse_cpu_count(p).ok()).collect();
        let arg = format!("--cpus={v}");
        match parse(&["drain", &arg]) {
            Ok(Cli { command: Some(Command::Drain(a)) }) => prop_assert_eq!(Some(a.cpus), want.clone()),
            Ok(cli) => prop_assert!(false, "{:?} parsed as {:?}", arg, cli),
            Err(e) => {
                prop_assert!(want.is_none(), "{:?} refused: {}", v, e);
                prop_assert!(e.to_string().contains("--cpus"), "{:?}: {}", v, e);
            }
        }
        match parse(&["report", &arg]) {
            Ok(Cli { command: Some(Command::Report(a)) }) => prop_assert_eq!(a.cpus, want),
            Ok(cli) => prop_assert!(false, "{:?} parsed as {:?}", arg, cli),
            Err(e) => {
                prop_assert!(want.is_none(), "{:?} refused: {}", v, e);
                prop_assert!(e.to_string().contains("--cpus"), "{:?}: {}", v, e);
            }
        }
    }

    /// `--mode` lists: split on commas, each piece a mode's exact name.
    #[test]
    fn mode_lists(pieces in prop::collection::vec(prop_oneof![input(), mode_name(), near_miss()], 1..4)) {
        let v = pieces.join(",");
        let want: Option<Vec<BenchMode>> = v
            .split(',')
            .map(|p| BenchMode::ALL.into_iter().find(|m| m.name() == p))
            .collect();
        let arg = format!("--mode={v}");
        for sub in ["drain", "isolation"] {
            match (parse(&[sub, &arg]), &want) {
                (Ok(Cli { command: Some(Command::Drain(a)) }), Some(w)) => prop_assert_eq!(&a.mode, w),
                (Ok(Cli { command: Some(Command::Isolation(a)) }), Some(w)) => prop_assert_eq!(&a.mode, w),
                (Ok(cli), _) => prop_assert!(false, "{} {:?} parsed as {:?}", sub, arg, cli),
                (Err(e), _) => {
                    prop_assert!(want.is_none(), "{} {:?} refused: {}", sub, v, e);
                    prop_assert!(e.to_string().contains("--mode"), "{:?}: {}", v, e);
                }
            }
        }
    }

    /// Every option of every subcommand: `Ok`, or an error naming the option.
    #[test]
    fn every_option_any_value(k in 0..OPTIONS.len(), s in input()) {
        let (sub, opt) = OPTIONS[k];
        let arg = format!("{opt}={s}");
        if let Err(e) = parse(&[sub, &arg]) {
            prop_assert!(e.to_string().contains(opt), "{} {:?}: {}", sub, arg, e);
            prop_assert!(
                !matches!(e.kind(), clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion),
                "{} {:?}: {:?}", sub, arg, e.kind()
            );
        }
    }
}

#[test]
fn too_large_numbers_are_called_too_large() {
    for s in ["99999999999999999999", "18446744073709551616"] {
        let e = parse_cpu_count(s).unwrap_err();
        assert!(e.contains("maximum"), "{e}");
        let e = parse_rate(s).unwrap_err();
        assert!(e.contains("maximum"), "{e}");
        let e = parse_positive(s).unwrap_err();
        assert!(e.contains("too large"), "{e}");
    }
}
