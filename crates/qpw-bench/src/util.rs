//! What every benchmark shares: option parsers that reject bad input with a
//! message naming it, the modes under test, CPU pinning, and summaries of
//! repeated measurements.

use qpw::Mode;
use serde::Serialize;

/// The most slots a benchmark point may ask for: each is one owner thread.
pub const MAX_BENCH_CPUS: usize = 4096;

/// A qpw mode under test, as the command line names it.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BenchMode {
    /// `QPW=0`: the caller runs the work after fencing the owner's CPU
    /// (`membarrier`, one IPI) and seeing its section close.
    Queue,
    /// `QPW=1`: the caller runs the work under the slot's lock.
    Remote,
    /// The owner runs the work at its next section end or quiescent point.
    Defer,
    /// `remote` on the CPUs listed as isolated, `queue` elsewhere.
    Auto,
}

impl BenchMode {
    /// Every mode, in report order.
    pub const ALL: [BenchMode; 4] = [
        BenchMode::Queue,
        BenchMode::Remote,
        BenchMode::Defer,
        BenchMode::Auto,
    ];

    /// The mode's name.
    pub fn name(self) -> &'static str {
        match self {
            BenchMode::Queue => "queue",
            BenchMode::Remote => "remote",
            BenchMode::Defer => "defer",
            BenchMode::Auto => "auto",
        }
    }

    /// The domain mode; `isolated` is the CPU list `auto` treats as isolated.
    pub fn to_mode(self, isolated: Vec<usize>) -> Mode {
        match self {
            BenchMode::Queue => Mode::Queue,
            BenchMode::Remote => Mode::Remote,
            BenchMode::Defer => Mode::Defer,
            BenchMode::Auto => Mode::Auto(Some(isolated)),
        }
    }
}

/// The modes to run: those given, or all of them.
pub fn modes_or_all(given: &[BenchMode]) -> Vec<BenchMode> {
    if given.is_empty() {
        BenchMode::ALL.to_vec()
    } else {
        let mut v = Vec::new();
        for m in given {
            if !v.contains(m) {
                v.push(*m);
            }
        }
        v
    }
}

/// The longest `--hold-ns` accepted (10 ms).
pub const MAX_HOLD_NS: u64 = 10_000_000;

/// Parses `--hold-ns`: 1 to [`MAX_HOLD_NS`].
pub fn parse_hold_ns(s: &str) -> Result<u64, String> {
    match s.trim().parse::<u64>() {
        Ok(v) if (1..=MAX_HOLD_NS).contains(&v) => Ok(v),
        Ok(v) => Err(format!(
            "{v} ns is out of range: a hold is 1 to {MAX_HOLD_NS} ns"
        )),
        Err(_) => Err(format!("`{s}` is not a number of nanoseconds")),
    }
}

/// Parses `--owner-fifo`: a `SCHED_FIFO` priority, 1 to 99.
pub fn parse_fifo_prio(s: &str) -> Result<i32, String> {
    match s.trim().parse::<i32>() {
        Ok(v) if (1..=99).contains(&v) => Ok(v),
        _ => Err(format!("`{s}` is not a SCHED_FIFO priority: use 1 to 99")),
    }
}

/// A count of 1 to 100 (`what`: the noun the messages use, e.g.
/// "repetitions", "rounds").
pub fn parse_count_to_100(s: &str, what: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if (1..=100).contains(&n) => Ok(n),
        Ok(n) => Err(format!("{n} {what} is out of range: use 1 to 100")),
        Err(_) => Err(format!("`{s}` is not a number of {what}")),
    }
}

/// Parses a positive, finite number of seconds (`--seconds 0.2`).
pub fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 86_400.0 => Ok(v),
        Ok(_) => Err(format!(
            "`{s}` is not a positive number of seconds (at most 86400)"
        )),
        Err(_) => Err(format!("`{s}` is not a number of seconds")),
    }
}

/// Whether a parse failed only because the number is too large for its type.
fn too_large(e: &std::num::ParseIntError) -> bool {
    *e.kind() == std::num::IntErrorKind::PosOverflow
}

/// Parses a positive integer (`--rate 1000`, `--iterations 10000`).
pub fn parse_positive(s: &str) -> Result<u64, String> {
    match s.trim().parse::<u64>() {
        Ok(0) => Err("must be at least 1".to_string()),
        Ok(v) => Ok(v),
        Err(e) if too_large(&e) => Err(format!("`{s}` is too large (at most {})", u64::MAX)),
        Err(_) => Err(format!("`{s}` is not a positive integer")),
    }
}

/// Parses a drain rate per second, 1 to 1,000,000.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let v = match s.trim().parse::<u64>() {
        Err(e) if too_large(&e) => u64::MAX,
        _ => parse_positive(s)?,
    };
    if v > 1_000_000 {
        return Err(format!(
            "`{}` drains per second is above the maximum of 1000000",
            s.trim()
        ));
    }
    Ok(v)
}

/// Parses one point of `--cpus`: a slot count from 1 to [`MAX_BENCH_CPUS`].
pub fn parse_cpu_count(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("a drain needs at least 1 CPU".to_string()),
        Ok(v) if v > MAX_BENCH_CPUS => Err(format!(
            "{v} CPUs is above the maximum of {MAX_BENCH_CPUS} (one owner thread each)"
        )),
        Ok(v) => Ok(v),
        Err(e) if too_large(&e) => Err(format!(
            "`{}` CPUs is above the maximum of {MAX_BENCH_CPUS} (one owner thread each)",
            s.trim()
        )),
        Err(_) => Err(format!("`{s}` is not a number of CPUs")),
    }
}

/// The CPUs this process may run on, ascending.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; all-zero is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a live, writable cpu_set_t of the size passed.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return vec![0];
    }
    let max = 8 * std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: CPU_ISSET reads the set in bounds (`c` < its bit size).
    (0..max)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect()
}

/// Pins the calling thread to one CPU.
pub fn pin_current(cpu: usize) -> Result<(), String> {
    // SAFETY: as in `allowed_cpus`.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if cpu >= 8 * std::mem::size_of::<libc::cpu_set_t>() {
        return Err(format!("CPU {cpu} is beyond the affinity mask's size"));
    }
    // SAFETY: `cpu` is within the set's bit size (checked above).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a live cpu_set_t of the size passed; 0 is this thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(format!(
            "cannot pin a thread to CPU {cpu}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Percentiles of a set of samples.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest sample.
    pub max: f64,
}

/// The nearest-rank `q` quantile (0..=1) of sorted samples; 0 when empty.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// p50, p99 and max of samples (sorted here).
pub fn percentiles(samples: &[f64]) -> Percentiles {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    Percentiles {
        p50: quantile(&s, 0.5),
        p99: quantile(&s, 0.99),
        max: s.last().copied().unwrap_or(0.0),
    }
}

/// The spread above which a result is flagged noisy: (median − min) / min.
pub const NOISY_SPREAD_PCT: f64 = 20.0;

/// A figure measured several times: the median is reported, the spread from
/// the fastest repetition to the median tells how far to trust it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Summary {
    /// Repetitions measured (warm-up excluded).
    pub reps: usize,
    /// Fastest repetition.
    pub min: f64,
    /// Median repetition: the figure reported.
    pub median: f64,
    /// Slowest repetition.
    pub max: f64,
    /// (median − min) / min, in percent.
    pub spread_pct: f64,
    /// Whether the spread is above [`NOISY_SPREAD_PCT`].
    pub noisy: bool,
}

impl Summary {
    /// Summarises repetitions (at least one).
    pub fn of(reps: &[f64]) -> Summary {
        let mut s = reps.to_vec();
        s.sort_by(f64::total_cmp);
        let min = s.first().copied().unwrap_or(0.0);
        let max = s.last().copied().unwrap_or(0.0);
        let median = if s.is_empty() {
            0.0
        } else if s.len() % 2 == 1 {
            s[s.len() / 2]
        } else {
            (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0
        };
        let spread_pct = if min > 0.0 {
            (median - min) / min * 100.0
        } else {
            0.0
        };
        Summary {
            reps: s.len(),
            min,
            median,
            max,
            spread_pct,
            noisy: spread_pct > NOISY_SPREAD_PCT,
        }
    }
}

/// Formats an integer with thousands separators (`156275` → `156,275`).
pub fn thousands(v: u64) -> String {
    let s = v.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// Formats a float figure with a precision suited to its size.
pub fn fmt_fig(v: f64) -> String {
    if !v.is_finite() {
        "-".to_string()
    } else if v >= 1000.0 {
        thousands(v.round() as u64)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
#[path = "util_fuzz.rs"]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsers_reject_bad_values_with_a_reason() {
        assert!(parse_seconds("-1").unwrap_err().contains("positive"));
        assert!(parse_seconds("abc").unwrap_err().contains("abc"));
        assert!(parse_seconds("inf").is_err());
        assert_eq!(parse_seconds("0.2").unwrap(), 0.2);
        assert!(parse_cpu_count("0").unwrap_err().contains("at least 1"));
        assert!(parse_cpu_count("abc").unwrap_err().contains("abc"));
        assert!(parse_cpu_count("100000").unwrap_err().contains("maximum"));
        assert_eq!(parse_cpu_count("256").unwrap(), 256);
        assert!(parse_rate("0").is_err());
        assert_eq!(parse_rate("1000").unwrap(), 1000);
    }

    #[test]
    fn summary_and_quantiles() {
        let s = Summary::of(&[10.0, 13.0, 12.0]);
        assert_eq!((s.min, s.median, s.max), (10.0, 12.0, 13.0));
        assert!(!s.noisy);
        assert!(Summary::of(&[10.0, 15.0, 16.0]).noisy);
        let p = percentiles(&(1..=100).map(f64::from).collect::<Vec<_>>());
        assert_eq!((p.p50, p.p99, p.max), (50.0, 99.0, 100.0));
        assert_eq!(thousands(156275), "156,275");
        assert_eq!(thousands(999), "999");
    }

    #[test]
    fn modes_deduplicate_and_default_to_all() {
        assert_eq!(modes_or_all(&[]), BenchMode::ALL.to_vec());
        assert_eq!(
            modes_or_all(&[BenchMode::Defer, BenchMode::Defer]),
            vec![BenchMode::Defer]
        );
    }
}
