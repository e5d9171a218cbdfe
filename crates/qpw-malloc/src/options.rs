//! Options from the environment, read once (at load, from the library's
//! constructor, or at the first call that needs them), with libc's `getenv`:
//! nothing here allocates. A malloc cannot return an error for a bad option,
//! so a bad value gets one line on stderr naming the variable, the value and
//! the accepted values, and the default is used.
//!
//! | variable | accepted | default |
//! |---|---|---|
//! | `QPW` | qpw's modes: `0`/`queue`, `1`/`remote`, `defer`, `auto`, `auto:<cpu-list>` (read by qpw itself when the allocator starts) | `queue` |
//! | `QPW_MALLOC_STATS` | `0`, `1` | `0` |
//! | `QPW_MALLOC_DECAY_MS` | `off`, or whole milliseconds from 1 to 86,400,000 | qpw-mm's default (1 s) |
//! | `QPW_MALLOC_DECAY_THREAD` | `0`, `1` | `1` |
//!
//! What each does:
//!
//! - `QPW` picks how a thread's cached objects are reclaimed from another
//!   thread (qpw's mode; see the `qpw` crate).
//! - `QPW_MALLOC_STATS=1` prints the allocator's statistics on stderr when
//!   the process exits.
//! - `QPW_MALLOC_DECAY_MS` is how long free memory stays cached before it
//!   goes back to the OS by itself; `off` keeps it until `malloc_trim`.
//!   The decay runs on a thread of the allocator's (below).
//! - `QPW_MALLOC_DECAY_THREAD` (default `1`) runs the decay on a background
//!   thread, so memory goes back while the program sleeps too. The thread
//!   blocks every signal before it is created (it never takes one of the
//!   program's); once the program's threads have all ended (`main` called
//!   `pthread_exit`) it calls `exit(0)`, as glibc's last thread does, so it
//!   keeps no process alive; a forked child gets its own at its first slow
//!   path. It is not started if `/proc/self/status` cannot be read (one
//!   line on stderr). `0`: no thread; the decay runs from the program's own
//!   allocator calls (their slow paths check the time), and a program that
//!   stops calling `malloc`/`free` keeps its cached memory until its next
//!   call.
use crate::backend::ALLOC;
use crate::sys;
use std::ffi::CStr;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;

/// Print statistics to stderr when the process exits.
pub(crate) const STATS_VAR: &CStr = c"QPW_MALLOC_STATS";
/// The decay delay: how long free memory stays cached before it goes back
/// to the OS by itself (`QpwAlloc::set_decay`).
pub(crate) const DECAY_VAR: &CStr = c"QPW_MALLOC_DECAY_MS";
/// Run the decay on a thread of its own (`QpwAlloc::set_decay_thread`).
pub(crate) const DECAY_THREAD_VAR: &CStr = c"QPW_MALLOC_DECAY_THREAD";
/// The longest decay delay accepted: a day.
const MAX_DECAY_MS: u64 = 86_400_000;

const UNREAD: u8 = 0;
const READING: u8 = 1;
const DONE: u8 = 2;

static STATE: AtomicU8 = AtomicU8::new(UNREAD);
static STATS: AtomicBool = AtomicBool::new(false);

/// The options, as read from the environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Options {
    /// `QPW_MALLOC_STATS=1`.
    pub(crate) stats_at_exit: bool,
}

/// Why a value was refused: what to print after the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refused {
    accepted: &'static str,
    default: &'static str,
}

/// Parses `QPW_MALLOC_STATS`.
pub(crate) fn parse_stats(v: &[u8]) -> Result<bool, Refused> {
    match v.trim_ascii() {
        b"0" => Ok(false),
        b"1" => Ok(true),
        _ => Err(Refused {
            accepted: "0, 1",
            default: "0 (no statistics)",
        }),
    }
}

/// Parses `QPW_MALLOC_DECAY_THREAD`.
pub(crate) fn parse_decay_thread(v: &[u8]) -> Result<bool, Refused> {
    match v.trim_ascii() {
        b"0" => Ok(false),
        b"1" => Ok(true),
        _ => Err(Refused {
            accepted: "0, 1",
            default: "1 (the decay runs on a thread of its own)",
        }),
    }
}

/// Parses `QPW_MALLOC_DECAY_MS`: `off` (no decay: memory goes back only on
/// `malloc_trim`) or a delay in milliseconds. 0 is refused: qpw-mm runs a
/// pass every quarter of the delay, so "no delay" would be a busy thread.
pub(crate) fn parse_decay(v: &[u8]) -> Result<Option<Duration>, Refused> {
    let refused = Refused {
        accepted: "off, or a whole number of milliseconds from 1 to 86400000",
        default: "qpw-mm's decay delay (1000 ms)",
    };
    let t = v.trim_ascii();
    if t.eq_ignore_ascii_case(b"off") {
        return Ok(None);
    }
    let ms: u64 = std::str::from_utf8(t)
        .ok()
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse().ok())
        .ok_or(refused)?;
    if !(1..=MAX_DECAY_MS).contains(&ms) {
        return Err(refused);
    }
    Ok(Some(Duration::from_millis(ms)))
}

/// Reads every option now (once per process; later calls return at once).
/// Safe to call from inside `malloc`: it allocates nothing, and a call that
/// re-enters while another is reading returns the defaults so far.
pub(crate) fn load() -> Options {
    if STATE
        .compare_exchange(UNREAD, READING, Ordering::AcqRel, Ordering::Acquire)
        .is_ok()
    {
        let saved = sys::errno();
        if let Some(v) = sys::getenv(STATS_VAR) {
            match parse_stats(v) {
                Ok(b) => STATS.store(b, Ordering::Relaxed),
                Err(r) => report_bad(STATS_VAR, v, r),
            }
        }
        if let Some(v) = sys::getenv(DECAY_VAR) {
            match parse_decay(v) {
                // Kept by the allocator if it has not started yet.
                Ok(d) => ALLOC.set_decay(d),
                Err(r) => report_bad(DECAY_VAR, v, r),
            }
        }
        if let Some(v) = sys::getenv(DECAY_THREAD_VAR) {
            match parse_decay_thread(v) {
                Ok(on) => ALLOC.set_decay_thread(on),
                Err(r) => report_bad(DECAY_THREAD_VAR, v, r),
            }
        }
        sys::set_errno(saved);
        STATE.store(DONE, Ordering::Release);
    }
    Options {
        stats_at_exit: STATS.load(Ordering::Relaxed),
    }
}

/// One line on stderr: variable, value (control bytes shown as `?`, cut at
/// 64 bytes), accepted values, default used.
fn report_bad(var: &CStr, value: &[u8], r: Refused) {
    let mut line = crate::report::StackBuf::<512>::new();
    line.push(b"qpw-malloc: invalid value \"");
    let shown = &value[..value.len().min(64)];
    for &b in shown {
        line.push(&[if b.is_ascii_control() { b'?' } else { b }]);
    }
    if value.len() > shown.len() {
        line.push(b"...");
    }
    line.push(b"\" for environment variable ");
    line.push(var.to_bytes());
    line.push(b" (accepted: ");
    line.push(r.accepted.as_bytes());
    line.push(b"); using the default, ");
    line.push(r.default.as_bytes());
    line.push(b"\n");
    sys::write_stderr(line.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_values() {
        assert_eq!(parse_stats(b"1"), Ok(true));
        assert_eq!(parse_stats(b" 0 "), Ok(false));
        for bad in [&b""[..], b"yes", b"2", b"01", b"1 1", b"\xff"] {
            assert!(parse_stats(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn decay_thread_values() {
        assert_eq!(parse_decay_thread(b"1"), Ok(true));
        assert_eq!(parse_decay_thread(b"0\n"), Ok(false));
        for bad in [&b""[..], b"on", b"2", b"true"] {
            assert!(parse_decay_thread(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn decay_values() {
        assert_eq!(parse_decay(b"off"), Ok(None));
        assert_eq!(parse_decay(b" OFF\n"), Ok(None));
        assert_eq!(parse_decay(b"1"), Ok(Some(Duration::from_millis(1))));
        assert_eq!(
            parse_decay(b"86400000"),
            Ok(Some(Duration::from_millis(86_400_000)))
        );
        for bad in [
            &b""[..],
            b"0",
            b"-5",
            b"+5",
            b"1.5",
            b"10ms",
            b"86400001",
            b"99999999999999999999999",
            b"never",
        ] {
            assert!(parse_decay(bad).is_err(), "{bad:?}");
        }
    }
}
