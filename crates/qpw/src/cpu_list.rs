//! Kernel-style CPU lists (`0-3,8,10-11`): parsing, with a typed error
//! naming the wrong part, and formatting.

use std::fmt;

/// The largest CPU number [`parse_cpu_list`] accepts.
pub const MAX_CPU: usize = 65_535;

/// Why [`parse_cpu_list`] refused a list; its `Display` names the part.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CpuListError {
    /// The list is empty (or only whitespace).
    Empty,
    /// A part holds something that is not a CPU number.
    NotANumber {
        /// The text that is not a number.
        value: String,
        /// The comma-separated part it is in.
        part: String,
    },
    /// A CPU number above [`MAX_CPU`].
    TooLarge {
        /// The number, as written.
        value: String,
    },
    /// A range whose start is above its end (`3-1`).
    Reversed {
        /// The range, as written.
        part: String,
    },
}

impl fmt::Display for CpuListError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CpuListError::Empty => f.write_str("empty CPU list"),
            CpuListError::NotANumber { value, part } => {
                write!(f, "`{value}` in `{part}` is not a CPU number")
            }
            CpuListError::TooLarge { value } => {
                write!(f, "CPU number `{value}` is above {MAX_CPU}")
            }
            CpuListError::Reversed { part } => write!(f, "range `{part}` is reversed"),
        }
    }
}

impl std::error::Error for CpuListError {}

/// Parses a kernel-style CPU list (`"0-3,8,10-11"`) into sorted, distinct CPUs.
/// Overlaps are merged, as the kernel's `cpulist_parse` does.
///
/// ```
/// use qpw::{parse_cpu_list, CpuListError};
/// assert_eq!(parse_cpu_list("0-2,5").unwrap(), [0, 1, 2, 5]);
/// let e = parse_cpu_list("3-1").unwrap_err();
/// assert_eq!(e, CpuListError::Reversed { part: "3-1".into() });
/// assert_eq!(e.to_string(), "range `3-1` is reversed");
/// ```
///
/// # Errors
///
/// A [`CpuListError`] naming the part that is wrong: an empty list, a part
/// that is not a number, a number above [`MAX_CPU`], a reversed range.
pub fn parse_cpu_list(s: &str) -> Result<Vec<usize>, CpuListError> {
    const MAX: usize = MAX_CPU;
    // Ranges first, expanded once merged: memory and time follow the input's
    // length and the distinct CPUs, not the sum of (overlapping) range lengths.
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    let s = s.trim();
    if s.is_empty() {
        return Err(CpuListError::Empty);
    }
    for part in s.split(',') {
        let part = part.trim();
        let num = |x: &str| -> Result<usize, CpuListError> {
            let x = x.trim();
            match x.parse::<usize>() {
                Ok(n) if n <= MAX => Ok(n),
                Ok(_) => Err(CpuListError::TooLarge { value: x.into() }),
                Err(_) => Err(CpuListError::NotANumber {
                    value: x.into(),
                    part: part.into(),
                }),
            }
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a > b {
                    return Err(CpuListError::Reversed { part: part.into() });
                }
                ranges.push((a, b));
            }
            None => {
                let n = num(part)?;
                ranges.push((n, n));
            }
        }
    }
    ranges.sort_unstable();
    let mut cpus = Vec::new();
    let mut next = 0; // the lowest CPU not emitted yet
    for (a, b) in ranges {
        let start = a.max(next);
        if start <= b {
            cpus.extend(start..=b);
            next = b + 1;
        }
    }
    Ok(cpus)
}

/// Formats CPUs as a kernel-style list with ranges (`[0,1,2,5]` → `"0-2,5"`).
pub fn format_cpu_list(cpus: &[usize]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < cpus.len() {
        let start = cpus[i];
        let mut end = start;
        while i + 1 < cpus.len() && cpus[i + 1] == end + 1 {
            i += 1;
            end = cpus[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}-{end}"));
        }
        i += 1;
    }
    out
}
