//! Where a long run is: a bar with an ETA when stderr is a terminal, one
//! line per step with the elapsed time and an ETA when it is not (CI, `tee`,
//! `nohup`, a file).
//!
//! The ETA assumes the steps left take as long, on average, as the steps
//! done: rough at first, better as the run goes on.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// Progress through `total` steps.
pub struct Progress {
    bar: Option<ProgressBar>,
    total: u64,
    done: u64,
    started: Option<Instant>,
}

impl Progress {
    /// A bar on a terminal, lines otherwise.
    pub fn new(total: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let pb = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            if let Ok(style) = ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30}] {pos}/{len} (about {eta} left) {msg}",
            ) {
                pb.set_style(style.progress_chars("=> "));
            }
            pb.enable_steady_tick(Duration::from_millis(250));
            pb
        });
        Progress {
            bar,
            total,
            done: 0,
            started: None,
        }
    }

    /// The previous step is done (if any) and `what` starts.
    pub fn step(&mut self, what: &str) {
        match self.started {
            None => self.started = Some(Instant::now()),
            Some(_) => self.done += 1,
        }
        let elapsed = self.started.map_or(Duration::ZERO, |t| t.elapsed());
        match &self.bar {
            Some(pb) => {
                pb.set_position(self.done);
                pb.set_message(what.to_string());
            }
            None => eprintln!("{}", line(self.done, self.total, elapsed, what)),
        }
    }

    /// Clears the bar; lines need nothing.
    pub fn finish(self) {
        if let Some(pb) = self.bar {
            pb.finish_and_clear();
        }
    }
}

/// `m:ss`, or `h:mm:ss` from an hour.
pub fn clock(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

/// One progress line: `qpw-bench: [3/40] 0:12 elapsed, about 2:40 left: what`
/// (no estimate before the first step is done).
pub fn line(done: u64, total: u64, elapsed: Duration, what: &str) -> String {
    let eta = if done == 0 || total < done {
        String::new()
    } else {
        let left = elapsed.as_secs_f64() / done as f64 * (total - done) as f64;
        format!(", about {} left", clock(Duration::from_secs_f64(left)))
    };
    format!(
        "qpw-bench: [{}/{total}] {} elapsed{eta}: {what}",
        done + 1,
        clock(elapsed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_carry_the_step_the_time_and_an_estimate() {
        assert_eq!(
            line(0, 10, Duration::ZERO, "kmalloc"),
            "qpw-bench: [1/10] 0:00 elapsed: kmalloc"
        );
        // 4 steps in 40 s: 6 left at 10 s each.
        assert_eq!(
            line(4, 10, Duration::from_secs(40), "drain"),
            "qpw-bench: [5/10] 0:40 elapsed, about 1:00 left: drain"
        );
        assert_eq!(clock(Duration::from_secs(3725)), "1:02:05");
    }
}
