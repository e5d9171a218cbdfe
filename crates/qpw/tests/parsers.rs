//! Bad input to the parsers: `Mode::parse` (the `QPW` variable) and
//! `parse_cpu_list` (`auto:` lists, sysfs files). Any string gives `Ok` or a
//! clear error, never a panic; what parses round-trips; lists with ranges,
//! duplicates and out-of-range CPUs do what the kernel's `cpulist_parse` does,
//! checked against a reference model written here.

use proptest::prelude::*;
use qpw::{format_cpu_list, parse_cpu_list, Domain, Error, Mode, SlotMode, Standard};
use std::collections::BTreeSet;

const MAX_CPU: usize = 65_535;

/// One element of a CPU list as the generator builds it, with the spacing
/// the parser must accept.
#[derive(Debug, Clone)]
enum Part {
    One(usize),
    Range(usize, usize),
}

fn part() -> impl Strategy<Value = Part> {
    prop_oneof![
        (0usize..300).prop_map(Part::One),
        (0usize..300, 0usize..40).prop_map(|(a, len)| Part::Range(a, a + len)),
        // Near the top of the accepted range.
        (MAX_CPU - 20..=MAX_CPU).prop_map(Part::One),
    ]
}

fn render(parts: &[Part], pad: &[bool]) -> String {
    parts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let sp = if pad.get(i).copied().unwrap_or(false) {
                " "
            } else {
                ""
            };
            match p {
                Part::One(n) => format!("{sp}{n}{sp}"),
                Part::Range(a, b) => format!("{sp}{a}{sp}-{sp}{b}{sp}"),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The reference: the set of CPUs the parts name.
fn reference(parts: &[Part]) -> Vec<usize> {
    let mut set = BTreeSet::new();
    for p in parts {
        match *p {
            Part::One(n) => {
                set.insert(n);
            }
            Part::Range(a, b) => set.extend(a..=b),
        }
    }
    set.into_iter().collect()
}

/// 256 cases, or `PROPTEST_CASES` for a longer hunt.
fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    /// Any string: `Ok`, or an error that names the variable, never a panic.
    #[test]
    fn mode_parse_never_panics(s in any::<String>()) {
        match Mode::parse(&s) {
            Ok(m) => {
                // What parses prints back to something that parses the same.
                prop_assert_eq!(Mode::parse(&m.to_string()).unwrap(), m);
            }
            Err(e) => {
                prop_assert!(matches!(e, Error::BadMode { .. }), "{:?}", e);
                let msg = e.to_string();
                prop_assert!(msg.contains("QPW"), "{}", msg);
            }
        }
    }

    /// Strings close to the accepted ones: `auto:` followed by list-like noise.
    #[test]
    fn auto_with_noise_never_panics(s in "(?i)(auto|queue|remote|defer|0|1)?:?[0-9, \\-+a-z]{0,24}") {
        if let Err(e) = Mode::parse(&s) {
            prop_assert!(e.to_string().contains("QPW"));
        }
        let _ = parse_cpu_list(&s);
    }

    /// `parse_cpu_list` on any string: `Ok` with sorted distinct CPUs at most
    /// 65535, or an error message, never a panic.
    #[test]
    fn cpu_list_never_panics(s in any::<String>()) {
        match parse_cpu_list(&s) {
            Ok(l) => {
                prop_assert!(!l.is_empty());
                prop_assert!(l.windows(2).all(|w| w[0] < w[1]));
                prop_assert!(l.iter().all(|&c| c <= MAX_CPU));
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    /// Lists of numbers and ranges, overlapping and repeated, with spaces:
    /// the parser gives exactly the reference set, and `auto:` gives it too.
    #[test]
    fn cpu_list_matches_the_reference(
        parts in prop::collection::vec(part(), 1..12),
        pad in prop::collection::vec(any::<bool>(), 0..12),
        upper in any::<bool>(),
    ) {
        let text = render(&parts, &pad);
        let expected = reference(&parts);
        prop_assert_eq!(parse_cpu_list(&text).unwrap(), expected.clone());
        let value = format!("{}:{text}", if upper { "AUTO" } else { "auto" });
        prop_assert_eq!(Mode::parse(&value).unwrap(), Mode::Auto(Some(expected)));
    }

    /// Sorted distinct CPUs print as a list that parses back to them, with
    /// every run of consecutive CPUs as one range.
    #[test]
    fn format_round_trips(set in prop::collection::btree_set(0usize..=MAX_CPU, 1..40)) {
        let cpus: Vec<usize> = set.into_iter().collect();
        let text = format_cpu_list(&cpus);
        prop_assert_eq!(parse_cpu_list(&text).unwrap(), cpus.clone());
        let runs = 1 + cpus.windows(2).filter(|w| w[1] != w[0] + 1).count();
        prop_assert_eq!(text.split(',').count(), runs);
        prop_assert_eq!(Mode::parse(&Mode::Auto(Some(cpus.clone())).to_string()).unwrap(), Mode::Auto(Some(cpus)));
    }

    /// Reversed ranges, numbers above 65535 and empty parts are errors that
    /// name the offending part.
    #[test]
    fn bad_parts_are_named(
        good in prop::collection::vec(part(), 0..4),
        a in 1usize..1000,
        d in 1usize..1000,
        big in (MAX_CPU + 1)..usize::MAX,
        which in 0u8..3,
    ) {
        let (bad, needle) = match which {
            0 => (format!("{}-{}", a + d, a), format!("{}-{}", a + d, a)),
            1 => (big.to_string(), big.to_string()),
            _ => (String::new(), String::new()),
        };
        let mut text = render(&good, &[]);
        if !text.is_empty() {
            text.push(',');
        }
        text.push_str(&bad);
        let msg = parse_cpu_list(&text).unwrap_err().to_string();
        prop_assert!(msg.contains(&needle), "{} does not name {:?}", msg, needle);
        let e = Mode::parse(&format!("auto:{text}")).unwrap_err().to_string();
        prop_assert!(e.contains("QPW") && e.contains(&msg), "{}", e);
    }

    /// `auto:` lists against the domain's slot count: a CPU at or above
    /// `nr_cpus` is `CpuOutOfRange` naming it, and nothing is built; otherwise
    /// exactly the listed slots run in `remote` mode.
    #[test]
    fn auto_lists_against_nr_cpus(
        nr in 1usize..16,
        list in prop::collection::btree_set(0usize..24, 1..6),
    ) {
        let list: Vec<usize> = list.into_iter().collect();
        let r = Domain::<Standard>::builder().mode(Mode::Auto(Some(list.clone()))).nr_cpus(nr).build();
        if cfg!(not(feature = "qpw")) {
            prop_assert!(matches!(r, Err(Error::ModeNotCompiled { .. })), "{:?}", r);
            return Ok(());
        }
        match list.iter().find(|&&c| c >= nr) {
            Some(&out) => match r {
                Err(Error::CpuOutOfRange { cpu, nr_cpus }) => {
                    prop_assert_eq!(nr_cpus, nr);
                    prop_assert_eq!(cpu, out);
                }
                other => prop_assert!(false, "expected CpuOutOfRange, got {:?}", other),
            },
            None => {
                let d = r.unwrap();
                for c in 0..nr {
                    let want = if list.contains(&c) { SlotMode::Remote } else { SlotMode::Queue };
                    prop_assert_eq!(d.slot_mode(c).unwrap(), want);
                }
            }
        }
    }
}

#[test]
fn auto_cpu_out_of_range_is_an_error() {
    let r = Domain::<Standard>::builder()
        .mode(Mode::Auto(Some(vec![999])))
        .nr_cpus(4)
        .build();
    if cfg!(feature = "qpw") {
        let e = r.unwrap_err();
        assert_eq!(
            e,
            Error::CpuOutOfRange {
                cpu: 999,
                nr_cpus: 4
            }
        );
        assert!(
            e.to_string().contains("999") && e.to_string().contains("0..4"),
            "{e}"
        );
    } else {
        assert!(matches!(r, Err(Error::ModeNotCompiled { .. })));
    }
}

#[test]
fn fixed_cases() {
    assert_eq!(parse_cpu_list("3,1-2,2,1").unwrap(), vec![1, 2, 3]);
    assert_eq!(
        parse_cpu_list(" 0 - 2 , 2 - 4 ").unwrap(),
        vec![0, 1, 2, 3, 4]
    );
    assert_eq!(parse_cpu_list("65535").unwrap(), vec![65535]);
    assert!(parse_cpu_list("65536")
        .unwrap_err()
        .to_string()
        .contains("65536"));
    assert!(parse_cpu_list("1,,2").is_err());
    assert!(parse_cpu_list("-").is_err());
    assert!(parse_cpu_list("1-").is_err());
    assert!(parse_cpu_list("1-2-3").is_err());
    assert!(parse_cpu_list("")
        .unwrap_err()
        .to_string()
        .contains("empty"));
    assert_eq!(
        Mode::parse("AUTO: 5-6 ,1").unwrap(),
        Mode::Auto(Some(vec![1, 5, 6]))
    );
    assert!(Mode::parse("auto:").is_err());
    assert!(Mode::parse("autox").is_err());
}

/// Overlapping ranges are merged before they are expanded: an `auto:` value
/// as long as an environment variable may be (128 KiB) that repeats the
/// widest range parses to 65536 CPUs. (It used to expand every range and
/// sort the result: 1 billion entries, 8 GB and 26 s for this input.)
#[test]
fn repeated_wide_ranges_are_merged() {
    let text = vec!["0-65535"; 16_000].join(",");
    assert!(text.len() < 128 * 1024);
    let cpus = parse_cpu_list(&text).unwrap();
    assert_eq!(cpus.len(), 65_536);
    assert!(cpus.iter().enumerate().all(|(i, &c)| i == c));
    let m = Mode::parse(&format!("auto:{text}")).unwrap();
    assert_eq!(m.to_string(), "auto:0-65535");
}
