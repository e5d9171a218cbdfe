//! The machine a report was measured on.

use crate::{tsc, util};
use serde::Serialize;

/// What a reader needs to compare reports across machines.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// `model name` from `/proc/cpuinfo`.
    pub cpu_model: String,
    /// CPUs this process may run on.
    pub cores: usize,
    /// Those CPUs, as a kernel-style list.
    pub allowed_cpus: String,
    /// The kernel release (`uname -r`).
    pub kernel: String,
    /// TSC ticks per second, measured against the monotonic clock.
    pub tsc_hz: f64,
    /// When the report was made, UTC, ISO 8601.
    pub date_utc: String,
    /// The 1-minute load average when the report started, before its own
    /// threads ran (`None`: `/proc/loadavg` unreadable).
    pub load_average: Option<f64>,
}

/// A load average at or above this share of the CPUs (other programs
/// running on half the machine) makes the report's figures unreliable.
pub const BUSY_LOAD_PER_CPU: f64 = 0.5;

impl Machine {
    /// Reads the machine's description.
    pub fn detect() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == "model name").then(|| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".to_string());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".to_string());
        let allowed = util::allowed_cpus();
        Machine {
            cpu_model,
            cores: allowed.len(),
            allowed_cpus: qpw::format_cpu_list(&allowed),
            kernel,
            tsc_hz: tsc::hz(),
            date_utc: utc_now(),
            load_average: load_average(),
        }
    }

    /// A warning to print above the figures and goals when the machine was
    /// busy as the report started.
    pub fn busy_warning(&self) -> Option<String> {
        let load = self.load_average?;
        (load >= BUSY_LOAD_PER_CPU * self.cores as f64).then(|| {
            format!(
                "**Warning: the load average was {load:.2} on {} CPUs when this report started: other programs \
                 were competing for the CPUs, so the figures below are not reliable and neither is whether a goal \
                 is met. Run it again on an idle machine.**",
                self.cores
            )
        })
    }

    /// One line for a report.
    pub fn line(&self) -> String {
        format!(
            "{}, {} CPUs ({}), Linux {}, TSC {:.3} GHz, {}",
            self.cpu_model,
            self.cores,
            self.allowed_cpus,
            self.kernel,
            self.tsc_hz / 1e9,
            self.date_utc
        )
    }
}

/// The 1-minute load average, from `/proc/loadavg`.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The current time, UTC, as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format_utc(secs)
}

/// Formats seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ` (proleptic
/// Gregorian calendar, days-from-civil inverted).
pub fn format_utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(cores: usize, load: Option<f64>) -> Machine {
        Machine {
            cpu_model: "test".into(),
            cores,
            allowed_cpus: "0-1".into(),
            kernel: "6".into(),
            tsc_hz: 1e9,
            date_utc: utc_now(),
            load_average: load,
        }
    }

    #[test]
    fn a_busy_machine_is_warned_about() {
        assert!(machine(2, Some(0.2)).busy_warning().is_none());
        assert!(machine(2, None).busy_warning().is_none());
        let w = machine(2, Some(3.5)).busy_warning().unwrap();
        assert!(
            w.contains("3.50 on 2 CPUs") && w.contains("not reliable"),
            "{w}"
        );
        assert!(load_average().is_some_and(|l| l >= 0.0));
    }

    #[test]
    fn dates_format_as_iso_8601() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_utc(1_767_225_599), "2025-12-31T23:59:59Z");
    }
}
