//! Interrupt counts per CPU from `/proc/interrupts`: the three kinds an
//! allocator can cause on another CPU of its process.
//!
//! - `RES`, rescheduling IPIs: a wake-up of a thread that last ran there
//!   (futex waits in a lock, a signal to an owner);
//! - `CAL`, function-call IPIs: `membarrier`, and most TLB flushes on
//!   recent kernels;
//! - `TLB`, TLB shootdowns: `munmap`, `madvise(MADV_DONTNEED)` and
//!   `mprotect` of memory the other CPU may have cached.

use serde::{Deserialize, Serialize};

/// Counts of the three kinds on one CPU.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Irqs {
    /// Rescheduling interrupts.
    pub res: u64,
    /// Function-call interrupts.
    pub cal: u64,
    /// TLB shootdowns.
    pub tlb: u64,
}

impl Irqs {
    /// `self - earlier`, kind by kind (0 where a counter went back).
    pub fn since(self, earlier: Irqs) -> Irqs {
        Irqs {
            res: self.res.saturating_sub(earlier.res),
            cal: self.cal.saturating_sub(earlier.cal),
            tlb: self.tlb.saturating_sub(earlier.tlb),
        }
    }
}

/// The counts of `cpu` in the text of `/proc/interrupts`; `None` if the
/// CPU has no column or a row is missing.
pub fn parse(text: &str, cpu: usize) -> Option<Irqs> {
    let mut lines = text.lines();
    let header = lines.next()?;
    let want = format!("CPU{cpu}");
    let col = header.split_whitespace().position(|c| c == want)?;
    let mut found = [None; 3];
    for line in lines {
        let mut words = line.split_whitespace();
        let slot = match words.next() {
            Some("RES:") => 0,
            Some("CAL:") => 1,
            Some("TLB:") => 2,
            _ => continue,
        };
        found[slot] = words.nth(col).and_then(|w| w.parse::<u64>().ok());
    }
    Some(Irqs {
        res: found[0]?,
        cal: found[1]?,
        tlb: found[2]?,
    })
}

/// The counts of `cpu` now; `None` where `/proc/interrupts` cannot tell.
pub fn read(cpu: usize) -> Option<Irqs> {
    parse(&std::fs::read_to_string("/proc/interrupts").ok()?, cpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "           CPU0       CPU1       \n\
          0:         44          0   IO-APIC   2-edge      timer\n\
        NMI:          0          0   Non-maskable interrupts\n\
        RES:      10107       8598   Rescheduling interrupts\n\
        CAL:      36071      30467   Function call interrupts\n\
        TLB:      10273      10368   TLB shootdowns\n";

    #[test]
    fn reads_each_cpu_column() {
        assert_eq!(
            parse(SAMPLE, 0),
            Some(Irqs {
                res: 10107,
                cal: 36071,
                tlb: 10273
            })
        );
        assert_eq!(
            parse(SAMPLE, 1),
            Some(Irqs {
                res: 8598,
                cal: 30467,
                tlb: 10368
            })
        );
        assert_eq!(parse(SAMPLE, 2), None, "no such column");
        assert_eq!(
            parse("           CPU0\nRES: 1\nCAL: 2\n", 0),
            None,
            "no TLB row"
        );
    }

    #[test]
    fn differences_never_wrap() {
        let a = Irqs {
            res: 5,
            cal: 1,
            tlb: 9,
        };
        let b = Irqs {
            res: 7,
            cal: 0,
            tlb: 9,
        };
        assert_eq!(
            b.since(a),
            Irqs {
                res: 2,
                cal: 0,
                tlb: 0
            }
        );
    }
}
