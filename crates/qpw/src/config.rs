//! Compile-time configurations (the `CONFIG_QPW` and `PREEMPT_RT` axes) and
//! the run-time mode (the `qpw=` boot option).

pub use crate::cpu_list::{format_cpu_list, parse_cpu_list};
use crate::error::Error;
use std::fmt;

/// A compile-time configuration of a [`Domain`](crate::Domain).
///
/// The kernel makes these choices with `CONFIG_QPW` and `PREEMPT_RT`; here they
/// are type parameters, monomorphised, so the constant branches vanish from the
/// owner's hot path and one program can hold every configuration side by side
/// (the benchmarks do).
pub trait Config: Send + Sync + 'static {
    /// Whether the modes beyond `queue` exist (`CONFIG_QPW=y`). When `false`,
    /// only [`Mode::Queue`] is accepted and the hot path has no mode branch.
    const QPW: bool;
    /// Whether the owner's local lock is always the slot's lock, as
    /// `local_lock` is a per-CPU spinlock on `PREEMPT_RT`.
    const RT: bool;
    /// A short name for reports (`"qpw"`, `"no-qpw"`, `"rt qpw"`, `"rt no-qpw"`).
    const NAME: &'static str;
}

/// The default configuration: modes on when the cargo feature `qpw` is on
/// (the default), the local lock a plain flag.
#[derive(Debug, Clone, Copy, Default)]
pub struct Standard;
impl Config for Standard {
    const QPW: bool = cfg!(feature = "qpw");
    const RT: bool = false;
    const NAME: &'static str = if cfg!(feature = "qpw") {
        "qpw"
    } else {
        "no-qpw"
    };
}

/// `CONFIG_QPW=n`: only mode `queue`; whatever the cargo feature says.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoQpw;
impl Config for NoQpw {
    const QPW: bool = false;
    const RT: bool = false;
    const NAME: &'static str = "no-qpw";
}

/// The `PREEMPT_RT` lock policy with the modes of the cargo feature `qpw`:
/// the owner's local lock is always the slot's lock.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rt;
impl Config for Rt {
    const QPW: bool = cfg!(feature = "qpw");
    const RT: bool = true;
    const NAME: &'static str = if cfg!(feature = "qpw") {
        "rt qpw"
    } else {
        "rt no-qpw"
    };
}

/// The `PREEMPT_RT` lock policy without the modes (`CONFIG_QPW=n` on RT).
#[derive(Debug, Clone, Copy, Default)]
pub struct RtNoQpw;
impl Config for RtNoQpw {
    const QPW: bool = false;
    const RT: bool = true;
    const NAME: &'static str = "rt no-qpw";
}

/// How remote work reaches a slot, fixed when a [`Domain`](crate::Domain) is built.
///
/// | mode | owner hot path | remote drain | owner interrupted |
/// |---|---|---|---|
/// | `Queue` (`QPW=0`) | flag (plain stores and a plain load) | the caller claims the slot, fences the owner's CPU (`membarrier`), waits for its section to close, runs it | once per drain (an IPI; no signal, no handler) |
/// | `Remote` (`QPW=1`) | slot lock | the caller takes the slot lock and runs it | never |
/// | `Defer` | flag | queued; run by the owner at the end of its next local section of the slot, at [`Owner::quiescent`](crate::Owner::quiescent), going offline or unbinding; by the caller while the owner is offline or absent | never |
/// | `Auto` | per slot | `Remote` on isolated CPUs, `Queue` elsewhere | never on isolated CPUs |
///
/// # Choosing a mode
///
/// - `Queue`: drains are rare and the owners may take one IPI per drain;
///   the cheapest owner path of the modes (3.5-3.6 TSC ticks per
///   lock+unlock on a 2-CPU VM), the slowest drain (p50 11.6-13.8 µs).
///   Pin its owners ([`Domain::bind`](crate::Domain::bind)): an unpinned
///   owner's drain fences every CPU of the process.
/// - `Remote`: the owners must never be interrupted (isolated or real-time
///   CPUs), or drains are frequent: one uncontended atomic on the owner's
///   path (5.7 ticks), the fastest drain (p50 0.8 µs).
/// - `Defer`: the owners reach quiescent points or section ends often (a
///   loop): the owner's path as `Queue` (3.6-3.7 ticks), no interruption,
///   drains wait for the owner (p50 1.2 µs for a busy owner).
/// - `Auto`: isolated CPUs beside housekeeping ones; `Remote` where an
///   interruption hurts, `Queue` elsewhere (drain p50 1.8 µs).
///
/// Without the `qpw` feature ([`NoQpw`]) only `Queue` exists and the owner's
/// path is cheaper still (2.8-2.9 ticks). The crate documentation has the
/// full table.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Mode {
    /// `queue_work_on` + `flush_work`, by an asymmetric fence: the caller
    /// interrupts the owner's CPU once (`membarrier`), waits for its local
    /// section to close, and runs the work itself.
    Queue,
    /// QPW proper: the caller runs the work under the slot's lock.
    Remote,
    /// The owner runs the work on its own thread at the first of: the end
    /// of its next local section of the slot (the drop of any
    /// [`LocalGuard`](crate::LocalGuard) of the slot),
    /// [`Owner::quiescent`](crate::Owner::quiescent), going
    /// [offline](crate::Owner::offline), unbinding. While the owner is
    /// offline or absent the caller runs it. So an owner calls `quiescent()`
    /// only where it may go long without a local section (waiting,
    /// computing); one that locks its slot often needs none.
    Defer,
    /// `Remote` on the listed (isolated) CPUs, `Queue` on the others. `None`
    /// reads `/sys/devices/system/cpu/isolated` and `.../nohz_full` when the
    /// domain is built.
    Auto(Option<Vec<usize>>),
}

/// The mode one slot runs in (an [`Mode::Auto`] domain mixes `Queue` and `Remote`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SlotMode {
    /// Work is run by the caller once the owner's CPU is fenced and its
    /// section closed.
    Queue,
    /// Work is run by the caller under the slot lock.
    Remote,
    /// Work is run by the owner at its next section end or quiescent point,
    /// or by the caller while the owner is offline.
    Defer,
}

impl SlotMode {
    /// The name used in reports and in the `QPW` variable.
    pub fn name(self) -> &'static str {
        match self {
            SlotMode::Queue => "queue",
            SlotMode::Remote => "remote",
            SlotMode::Defer => "defer",
        }
    }
}

/// Why a slot runs in the mode it does (see [`SlotInfo`](crate::SlotInfo)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ModeReason {
    /// The domain's mode says so (`queue`, `remote`, `defer`, or an `auto`
    /// slot on a CPU that is not isolated).
    Configured,
    /// An `auto` domain runs this slot `remote`: its CPU is isolated.
    IsolatedCpu,
    /// The domain asked for `queue`, but the kernel refused `membarrier(2)`
    /// (`ENOSYS`, `EINVAL`, or `EPERM` under a seccomp filter), which
    /// `queue` needs to fence the owner's CPU: the slot runs `remote`.
    FenceUnavailable,
}

impl ModeReason {
    /// A short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            ModeReason::Configured => "configured",
            ModeReason::IsolatedCpu => "isolated CPU (auto)",
            ModeReason::FenceUnavailable => "membarrier refused (queue needs it)",
        }
    }
}

/// The name of the environment variable that picks the default mode.
pub const ENV_VAR: &str = "QPW";

/// The values [`ENV_VAR`] accepts, for error messages and docs.
pub const ACCEPTED: &str = "0, queue, 1, remote, defer, auto, auto:<cpu-list> (e.g. auto:2-7,9)";

impl Mode {
    /// The mode's name as the `QPW` variable spells it.
    pub fn name(&self) -> &'static str {
        match self {
            Mode::Queue => "queue",
            Mode::Remote => "remote",
            Mode::Defer => "defer",
            Mode::Auto(_) => "auto",
        }
    }

    /// Parses a `QPW` value: `0`/`queue`, `1`/`remote`, `defer`, `auto`,
    /// `auto:<cpu-list>`. Surrounding whitespace is ignored; case matters not.
    ///
    /// ```
    /// use qpw::Mode;
    /// assert_eq!(Mode::parse("1").unwrap(), Mode::Remote);
    /// assert_eq!(Mode::parse("auto:1,3-4").unwrap(), Mode::Auto(Some(vec![1, 3, 4])));
    /// let err = Mode::parse("bogus").unwrap_err().to_string();
    /// assert!(err.contains("QPW") && err.contains("remote"));
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::BadMode`] for a value that is not one of [`ACCEPTED`], or an
    /// `auto:` list that does not parse.
    pub fn parse(s: &str) -> Result<Mode, Error> {
        let t = s.trim();
        let lower = t.to_ascii_lowercase();
        let mode = match lower.as_str() {
            "0" | "queue" => Mode::Queue,
            "1" | "remote" => Mode::Remote,
            "defer" => Mode::Defer,
            "auto" => Mode::Auto(None),
            _ => match lower.strip_prefix("auto:") {
                Some(list) => {
                    Mode::Auto(Some(parse_cpu_list(list).map_err(|e| Error::BadMode {
                        value: s.to_string(),
                        reason: e.to_string(),
                    })?))
                }
                None => {
                    return Err(Error::BadMode {
                        value: s.to_string(),
                        reason: format!("unknown mode; accepted values: {ACCEPTED}"),
                    })
                }
            },
        };
        Ok(mode)
    }

    /// Reads [`ENV_VAR`]: `Ok(None)` when it is unset or empty (`QPW=`, as
    /// a shell script clears it), an error naming the variable when its
    /// value is not one of [`ACCEPTED`].
    ///
    /// # Errors
    ///
    /// [`Error::BadMode`] for a value that is not one of [`ACCEPTED`] or not UTF-8.
    pub fn from_env() -> Result<Option<Mode>, Error> {
        match std::env::var(ENV_VAR) {
            Ok(v) if v.trim().is_empty() => Ok(None),
            Ok(v) => Mode::parse(&v).map(Some),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(v)) => Err(Error::BadMode {
                value: v.to_string_lossy().into_owned(),
                reason: format!("not valid UTF-8; accepted values: {ACCEPTED}"),
            }),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mode::Auto(Some(list)) => write!(f, "auto:{}", format_cpu_list(list)),
            m => f.write_str(m.name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_accepted_value() {
        assert_eq!(Mode::parse("0").unwrap(), Mode::Queue);
        assert_eq!(Mode::parse(" Queue ").unwrap(), Mode::Queue);
        assert_eq!(Mode::parse("1").unwrap(), Mode::Remote);
        assert_eq!(Mode::parse("remote").unwrap(), Mode::Remote);
        assert_eq!(Mode::parse("defer").unwrap(), Mode::Defer);
        assert_eq!(Mode::parse("auto").unwrap(), Mode::Auto(None));
        assert_eq!(
            Mode::parse("auto:2-4,9,3").unwrap(),
            Mode::Auto(Some(vec![2, 3, 4, 9]))
        );
    }

    #[test]
    fn rejects_bad_values_with_the_variable_name() {
        for bad in [
            "",
            "2",
            "bogus",
            "auto:",
            "auto:3-1",
            "auto:x",
            "auto:1,,2",
            "auto:99999999",
        ] {
            let e = Mode::parse(bad).unwrap_err().to_string();
            assert!(e.contains("QPW"), "{bad:?}: {e}");
        }
        assert!(Mode::parse("bogus")
            .unwrap_err()
            .to_string()
            .contains(ACCEPTED));
        assert!(Mode::parse("auto:3-1")
            .unwrap_err()
            .to_string()
            .contains("reversed"));
    }

    #[test]
    fn cpu_list_round_trips() {
        let l = parse_cpu_list("0-2,5,7-8").unwrap();
        assert_eq!(l, vec![0, 1, 2, 5, 7, 8]);
        assert_eq!(format_cpu_list(&l), "0-2,5,7-8");
        assert_eq!(Mode::Auto(Some(l)).to_string(), "auto:0-2,5,7-8");
    }
}
