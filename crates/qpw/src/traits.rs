//! The standard traits users print and parse with: `FromStr` for [`Mode`],
//! `Display` for [`SlotMode`], [`ModeReason`] and [`SlotStats`].

use crate::config::{Mode, ModeReason, SlotMode};
use crate::error::Error;
use crate::stats::SlotStats;
use std::fmt;
use std::str::FromStr;

impl FromStr for Mode {
    type Err = Error;

    /// As [`Mode::parse`]: `"1".parse::<Mode>()`, or a command-line
    /// parser's `value_parser!(Mode)`.
    fn from_str(s: &str) -> Result<Mode, Error> {
        Mode::parse(s)
    }
}

impl fmt::Display for SlotMode {
    /// The mode's name (`queue`, `remote`, `defer`), as [`SlotMode::name`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for ModeReason {
    /// A short phrase, as [`ModeReason::name`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for SlotStats {
    /// One line of the counters a reader looks at first: who ran the works,
    /// the fences `queue` drains issued, lock contention and timeouts, panics. `{:?}` shows every counter.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "works run: {} (by the owner {}, remotely {}, after a fence {}, \
             for an absent owner {}); fences {}; \
             lock contended {}, lock timeouts {}, works panicked {}",
            self.works_run(),
            self.works_by_owner(),
            self.works_remote,
            self.works_fenced,
            self.works_for_absent_owner,
            self.fences(),
            self.lock_contended,
            self.lock_timeouts,
            self.works_panicked
        )
    }
}
