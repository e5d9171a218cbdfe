//! `qpw-bench locks`: cycles per lock+unlock pair of the owner's local lock.
//!
//! Every configuration and mode of the seed's table, with an empty critical
//! section and with a trivial one (`+= 1` on the slot's value), against
//! `std::sync::Mutex`, `parking_lot::Mutex` and a bare cache-padded atomic
//! CAS/store pair, so the cost `remote` mode puts on the hot path is visible
//! on its own. Each figure is the median of `--reps` repetitions of
//! `--iterations` pairs, timed with the TSC on a thread pinned to the last
//! CPU, one warm-up repetition excluded, loop overhead included (the
//! `empty loop` row gives it).

use crate::tsc;
use crate::util::{self, Summary};
use crossbeam_utils::CachePadded;
use qpw::{Config, Domain, Mode, NoQpw, PerCpu, Rt, RtNoQpw, Standard};
use serde::Serialize;
use std::hint::black_box;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Options of `qpw-bench locks`.
#[derive(clap::Args, Debug, Clone)]
pub struct LocksArgs {
    /// Lock+unlock pairs per repetition.
    #[arg(long, default_value = "1000000", value_parser = util::parse_positive, allow_negative_numbers = true)]
    pub iterations: u64,
    /// Repetitions per figure (the median is reported; one more warm-up runs first).
    #[arg(long, default_value = "7", value_parser = util::parse_positive, allow_negative_numbers = true)]
    pub reps: u64,
    /// One JSON object per lock, one per line, on stdout.
    #[arg(long)]
    pub json: bool,
}

/// One lock's cost.
#[derive(Debug, Clone, Serialize)]
pub struct LockRow {
    /// What is measured.
    pub name: String,
    /// The qpw configuration (`Standard`, `NoQpw`, `Rt`, `RtNoQpw`), or `-`.
    pub config: &'static str,
    /// The qpw mode, or `-`.
    pub mode: &'static str,
    /// What the lock is underneath.
    pub lock: &'static str,
    /// Cycles (TSC ticks) per pair, empty section.
    pub empty: Summary,
    /// Cycles (TSC ticks) per pair, `+= 1` inside.
    pub trivial: Summary,
}

/// Runs `qpw-bench locks`.
pub fn main(a: &LocksArgs) -> Result<(), String> {
    let rows = run(a, &mut |_| {})?;
    if a.json {
        for r in &rows {
            println!("{}", serde_json::to_string(r).map_err(|e| e.to_string())?);
        }
    } else {
        println!("{}", markdown(&rows, a));
    }
    Ok(())
}

/// The Markdown table.
pub fn markdown(rows: &[LockRow], a: &LocksArgs) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "Cycles (TSC ticks) per lock+unlock pair: median of {} repetitions of {} pairs, one warm-up repetition excluded, \
         thread pinned, loop overhead included; `*` marks a spread from the fastest repetition to the median above {}%.\n\n",
        a.reps,
        util::thousands(a.iterations),
        util::NOISY_SPREAD_PCT
    ));
    s.push_str("| lock | config | mode | underneath | empty section | `+= 1` section |\n|---|---|---|---|---:|---:|\n");
    let cell = |x: &Summary| format!("{:.2}{}", x.median, if x.noisy { " *" } else { "" });
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            r.name,
            r.config,
            r.mode,
            r.lock,
            cell(&r.empty),
            cell(&r.trivial)
        ));
    }
    let find = |c: &str, m: &str| rows.iter().find(|r| r.config == c && r.mode == m);
    if let (Some(q), Some(r)) = (find("Standard", "queue"), find("Standard", "remote")) {
        s.push_str(&format!(
            "\n`remote` − `queue` local lock (Standard, empty section): {:+.2} cycles per pair (goal: at most +6).\n",
            r.empty.median - q.empty.median
        ));
    }
    s
}

/// Runs one repetition of `iters` pairs per call to `f`; returns cycles per pair.
fn measure(iters: u64, reps: u64, mut f: impl FnMut(u64)) -> Summary {
    f(iters);
    let v: Vec<f64> = (0..reps)
        .map(|_| {
            let t0 = tsc::now();
            f(iters);
            let t1 = tsc::now();
            (t1 - t0) as f64 / iters as f64
        })
        .collect();
    Summary::of(&v)
}

fn qpw_row<C: Config>(mode: Mode, cpu: usize, a: &LocksArgs) -> Result<(Summary, Summary), String> {
    let name = format!("{} {}", C::NAME, mode);
    let domain: Domain<C> = qpw::Builder::new()
        .mode(mode)
        .build()
        .map_err(|e| format!("locks ({name}): {e}"))?;
    let (iters, reps) = (a.iterations, a.reps);
    let h = std::thread::Builder::new()
        .name("qpw-locks".into())
        .spawn(move || -> Result<(Summary, Summary), String> {
            let pc = PerCpu::new(&domain, |_| 0u64);
            let mut me = domain
                .bind(cpu)
                .map_err(|e| format!("locks: binding CPU {cpu}: {e}"))?;
            let empty = measure(iters, reps, |n| {
                for _ in 0..n {
                    let g = pc.lock(&mut me);
                    black_box(&*g);
                }
            });
            let trivial = measure(iters, reps, |n| {
                for _ in 0..n {
                    *pc.lock(&mut me) += 1;
                }
            });
            black_box(&*pc.lock(&mut me));
            Ok((empty, trivial))
        })
        .map_err(|e| format!("spawning the locks thread: {e}"))?;
    h.join()
        .map_err(|_| "the locks thread panicked".to_string())?
}

fn pinned<T: Send + 'static>(
    cpu: usize,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let h = std::thread::Builder::new()
        .name("qpw-locks".into())
        .spawn(move || util::pin_current(cpu).map(|()| f()))
        .map_err(|e| format!("spawning the locks thread: {e}"))?;
    h.join()
        .map_err(|_| "the locks thread panicked".to_string())?
}

/// Measures every row; `step` is told when each starts.
pub fn run(a: &LocksArgs, step: &mut dyn FnMut(&str)) -> Result<Vec<LockRow>, String> {
    let cpu = *util::allowed_cpus()
        .last()
        .ok_or("this process may run on no CPU")?;
    let mut rows = Vec::new();
    let qpw_rows: [(&'static str, &'static str, &'static str); 7] = [
        ("Standard", "queue", "flag (no atomic RMW)"),
        ("Standard", "remote", "PI cell lock (CAS tid, store 0)"),
        ("Standard", "defer", "flag (no atomic RMW)"),
        ("NoQpw", "queue", "flag, no mode branch"),
        ("Rt", "queue", "PI cell lock (CAS tid, store 0)"),
        ("Rt", "remote", "PI cell lock (CAS tid, store 0)"),
        ("RtNoQpw", "queue", "PI cell lock, no mode branch"),
    ];
    for (config, mode, lock) in qpw_rows {
        step(&format!("locks: {config} {mode}"));
        let m = Mode::parse(mode).map_err(|e| e.to_string())?;
        let (empty, trivial) = match config {
            "Standard" => qpw_row::<Standard>(m, cpu, a)?,
            "NoQpw" => qpw_row::<NoQpw>(m, cpu, a)?,
            "Rt" => qpw_row::<Rt>(m, cpu, a)?,
            _ => qpw_row::<RtNoQpw>(m, cpu, a)?,
        };
        rows.push(LockRow {
            name: "qpw local lock".into(),
            config,
            mode,
            lock,
            empty,
            trivial,
        });
    }
    let (iters, reps) = (a.iterations, a.reps);

    step("locks: std::sync::Mutex");
    let (empty, trivial) = pinned(cpu, move || {
        let m = CachePadded::new(std::sync::Mutex::new(0u64));
        let lock = || m.lock().unwrap_or_else(|e| e.into_inner());
        let e = measure(iters, reps, |n| {
            for _ in 0..n {
                black_box(&*lock());
            }
        });
        let t = measure(iters, reps, |n| {
            for _ in 0..n {
                *lock() += 1;
            }
        });
        (e, t)
    })?;
    rows.push(LockRow {
        name: "std::sync::Mutex".into(),
        config: "-",
        mode: "-",
        lock: "futex mutex",
        empty,
        trivial,
    });

    step("locks: parking_lot::Mutex");
    let (empty, trivial) = pinned(cpu, move || {
        let m = CachePadded::new(parking_lot::Mutex::new(0u64));
        let e = measure(iters, reps, |n| {
            for _ in 0..n {
                black_box(&*m.lock());
            }
        });
        let t = measure(iters, reps, |n| {
            for _ in 0..n {
                *m.lock() += 1;
            }
        });
        (e, t)
    })?;
    rows.push(LockRow {
        name: "parking_lot::Mutex".into(),
        config: "-",
        mode: "-",
        lock: "word lock + parking",
        empty,
        trivial,
    });

    step("locks: atomic CAS/store");
    let (empty, trivial) = pinned(cpu, move || {
        let l = CachePadded::new((AtomicU32::new(0), AtomicU64::new(0)));
        let lock = || {
            while l
                .0
                .compare_exchange_weak(0, 1, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
            {
                std::hint::spin_loop();
            }
        };
        let unlock = || l.0.store(0, Ordering::Release);
        let e = measure(iters, reps, |n| {
            for _ in 0..n {
                lock();
                black_box(&l.1);
                unlock();
            }
        });
        let t = measure(iters, reps, |n| {
            for _ in 0..n {
                lock();
                l.1.store(l.1.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
                unlock();
            }
        });
        (e, t)
    })?;
    rows.push(LockRow {
        name: "bare atomic CAS + store".into(),
        config: "-",
        mode: "-",
        lock: "padded AtomicU32",
        empty,
        trivial,
    });

    step("locks: empty loop");
    let (empty, trivial) = pinned(cpu, move || {
        let v = CachePadded::new(AtomicU64::new(0));
        let e = measure(iters, reps, |n| {
            for i in 0..n {
                black_box(i);
            }
        });
        let t = measure(iters, reps, |n| {
            for _ in 0..n {
                v.store(black_box(v.load(Ordering::Relaxed)) + 1, Ordering::Relaxed);
            }
        });
        (e, t)
    })?;
    rows.push(LockRow {
        name: "empty loop (overhead)".into(),
        config: "-",
        mode: "-",
        lock: "none",
        empty,
        trivial,
    });
    Ok(rows)
}
