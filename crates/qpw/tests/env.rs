//! The `QPW` variable. Its own test binary: it sets the process environment.
#![cfg(feature = "qpw")]

use qpw::{Domain, Error, Mode, Standard};

#[test]
fn qpw_variable_picks_the_mode_and_bad_values_name_it() {
    std::env::set_var("QPW", "bogus");
    let e = Domain::<Standard>::new().unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::BadMode { .. }));
    assert!(
        msg.contains("QPW")
            && msg.contains("queue")
            && msg.contains("remote")
            && msg.contains("defer")
            && msg.contains("auto"),
        "{msg}"
    );

    std::env::set_var("QPW", "1");
    assert_eq!(Domain::<Standard>::new().unwrap().mode(), &Mode::Remote);
    std::env::set_var("QPW", "auto:0");
    let d = Domain::<Standard>::builder().nr_cpus(2).build().unwrap();
    assert_eq!(d.mode(), &Mode::Auto(Some(vec![0])));
    assert_eq!(d.slot_mode(0).unwrap(), qpw::SlotMode::Remote);
    assert_eq!(d.slot_mode(1).unwrap(), qpw::SlotMode::Queue);
    // The builder wins over the variable.
    std::env::set_var("QPW", "bogus");
    assert_eq!(
        Domain::<Standard>::builder()
            .mode(Mode::Defer)
            .build()
            .unwrap()
            .mode(),
        &Mode::Defer
    );
    std::env::set_var("QPW", "0");
    assert_eq!(Domain::<Standard>::new().unwrap().mode(), &Mode::Queue);
    std::env::remove_var("QPW");
    assert_eq!(Domain::<Standard>::new().unwrap().mode(), &Mode::Queue);
}
