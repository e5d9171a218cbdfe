//! `QPW=` (empty, as a script clears a variable) means unset, not a bad
//! value. Its own test binary: it sets the process environment.

use qpw::{Domain, Mode};

#[test]
fn an_empty_qpw_variable_means_unset() {
    for empty in ["", "  "] {
        std::env::set_var("QPW", empty);
        assert_eq!(Mode::from_env().unwrap(), None, "QPW={empty:?}");
        assert_eq!(Domain::new().unwrap().mode(), &Mode::Queue);
    }
    std::env::set_var("QPW", "bogus");
    assert!(Mode::from_env().is_err());
    std::env::remove_var("QPW");
}
