//! What a user reaches for first, from the Rust API Guidelines: a domain
//! built without a type annotation, `?` from a flush into `qpw::Error`, the
//! OS error behind `Error::Os` as its `source()`, `FromStr` for `Mode`,
//! `Display` for what users print, and a typed CPU-list error.

use qpw::{Builder, CpuListError, Domain, Error, Mode, ModeReason, PerCpu, Rt, SlotMode};
use std::error::Error as _;

#[test]
fn a_domain_is_built_without_a_type_annotation() -> Result<(), Error> {
    let d = Domain::builder().mode(Mode::Queue).nr_cpus(2).build()?;
    assert_eq!(d.nr_cpus(), 2);
    // Another configuration names itself on the builder.
    let rt = Builder::<Rt>::new().mode(Mode::Queue).nr_cpus(1).build()?;
    assert_eq!(rt.nr_cpus(), 1);
    Ok(())
}

/// A drain-all from inside the caller's own local section fails at once
/// (it would wait on itself); `?` carries it out as a `qpw::Error`.
fn drain_inside_own_section() -> Result<(), Error> {
    let d = Domain::builder().mode(Mode::Queue).nr_cpus(1).build()?;
    let cells = PerCpu::new(&d, |_| 0u64);
    let drain = d.work_all(|_| {});
    let mut me = d.bind_unpinned(0)?;
    let _section = cells.lock(&mut me);
    drain.run()?;
    Ok(())
}

#[test]
fn a_flush_error_converts_with_the_question_mark() {
    let e = drain_inside_own_section().unwrap_err();
    assert!(matches!(e, Error::Flush(_)), "{e:?}");
    assert!(e.to_string().contains("own local section"), "{e}");
}

#[test]
fn an_os_error_gives_the_system_s_error_as_its_source() {
    let e = Error::Os {
        what: "sched_setaffinity",
        errno: libc::EPERM,
    };
    let source = e.source().expect("Error::Os has a source");
    assert_eq!(
        source.to_string(),
        std::io::Error::from_raw_os_error(libc::EPERM).to_string()
    );
    assert!(Error::Reentrant.source().is_none());
}

#[test]
fn modes_parse_with_from_str_and_print_with_display() {
    assert_eq!("remote".parse::<Mode>().unwrap(), Mode::Remote);
    assert_eq!("auto:1-2".parse::<Mode>().unwrap().to_string(), "auto:1-2");
    let e = "bogus".parse::<Mode>().unwrap_err();
    assert!(matches!(e, Error::BadMode { .. }) && e.to_string().contains("QPW"));
    assert_eq!(SlotMode::Defer.to_string(), "defer");
    assert_eq!(ModeReason::Configured.to_string(), "configured");
}

#[test]
fn slot_stats_print_one_line() {
    // `queue` exists in every build; the work runs for the absent owner.
    let d = Domain::builder()
        .mode(Mode::Queue)
        .nr_cpus(1)
        .build()
        .unwrap();
    let drain = d.work_all(|_| {});
    drain.run().unwrap();
    let line = d.stats(0).unwrap().to_string();
    assert!(line.starts_with("works run: 1 ("), "{line}");
    assert!(!line.contains('\n'), "{line}");
}

#[test]
fn cpu_list_errors_are_typed() {
    assert_eq!(qpw::parse_cpu_list(" "), Err(CpuListError::Empty));
    assert_eq!(
        qpw::parse_cpu_list("1,x-2"),
        Err(CpuListError::NotANumber {
            value: "x".into(),
            part: "x-2".into()
        })
    );
    assert_eq!(
        qpw::parse_cpu_list("70000"),
        Err(CpuListError::TooLarge {
            value: "70000".into()
        })
    );
    let e = qpw::parse_cpu_list("5-2").unwrap_err();
    assert_eq!(e.to_string(), "range `5-2` is reversed");
    let boxed: Box<dyn std::error::Error> = Box::new(e);
    assert!(boxed.to_string().contains("5-2"));
}
