//! `qpw-bench`: the numbers to choose a qpw mode by.
//!
//! A bare `cargo run --release` runs `report`: short versions of every
//! benchmark, as Markdown tables on stdout, with `report.md`, `results.json`
//! and SVG plots written to `target/qpw-report/` (`$CARGO_TARGET_DIR/qpw-report/`
//! when that is set). It changes no system setting unless asked (`--fifo`).
//!
//! | subcommand | what it measures |
//! |---|---|
//! | `kmalloc` | the seed's kmalloc loop: cycles per allocation, every configuration, and other allocators |
//! | `isolation` | after oslat: gaps in an owner's loop while another CPU drains it, against a baseline |
//! | `drain` | the latency of one drain-all against the number of CPUs |
//! | `locks` | cycles per lock+unlock pair of the owner's local lock, against std and parking_lot |
//! | `alloc` | allocator workloads under `QpwAlloc` (`queue`, `remote`), mimalloc, jemalloc and glibc, one process each |
//! | `realprog` | unmodified C programs, python3, sqlite3 and redis under `LD_PRELOAD`: glibc, mimalloc, jemalloc, qpw (`QPW=0`, `QPW=1`) |
//! | `report` | short versions of all six, tables, JSON and plots |
//! | `soak` | every consumer in every mode under churn, with conservation checks |
//!
//! Cycles everywhere are TSC ticks (see [`tsc`]).

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

mod alloc;
mod drain;
mod isolation;
mod isolation_stress;
mod kmalloc;
mod locks;
mod machine;
mod plots;
mod progress;
mod realprog;
mod report;
mod setting;
mod soak;
mod tsc;
mod util;

use clap::{Parser, Subcommand};

/// Glibc's malloc unless this process is an `alloc-worker`, whose parent
/// names its allocator in the environment (see [`alloc::dispatch`]).
#[global_allocator]
static GLOBAL: alloc::dispatch::Dispatch = alloc::dispatch::Dispatch;

/// Benchmarks for qpw: per-CPU data whose remote maintenance never interrupts its owners.
///
/// Without a subcommand, runs `report`.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The seed's kmalloc loop: cycles per allocation and free, every configuration and peers.
    Kmalloc(kmalloc::KmallocArgs),
    /// After oslat: owner loop gaps while another CPU drains it, against a baseline with no drains.
    Isolation(isolation::IsolationArgs),
    /// Drain-all latency against the number of CPUs, every mode.
    Drain(drain::DrainArgs),
    /// Cycles per lock+unlock pair of the owner's local lock, every configuration and mode.
    Locks(locks::LocksArgs),
    /// Allocator workloads under QpwAlloc (queue, remote), mimalloc, jemalloc and glibc, one process each.
    Alloc(alloc::AllocArgs),
    /// Unmodified programs under LD_PRELOAD: glibc, mimalloc, jemalloc, qpw (QPW=0, QPW=1).
    Realprog(realprog::RealprogArgs),
    /// One allocator workload in this process (started by `alloc`).
    #[command(hide = true)]
    AllocWorker(alloc::worker::WorkerArgs),
    /// Short versions of every benchmark: Markdown tables, report.md, results.json, SVG plots.
    Report(report::ReportArgs),
    /// Every consumer in every configuration and mode under churn, with conservation checks.
    Soak(soak::SoakArgs),
}

fn main() {
    // First, before any thread exists: every thread created after this
    // inherits SIGINT, SIGTERM and SIGHUP blocked (see `setting`).
    if let Err(e) = setting::watch_signals() {
        eprintln!("qpw-bench: error: {e}");
        std::process::exit(2);
    }
    let cli = Cli::parse();
    let worker = matches!(cli.command, Some(Command::AllocWorker(_)));
    if !worker && std::env::var_os(alloc::dispatch::ENV).is_some() {
        eprintln!(
            "qpw-bench: error: {} is set: it is only for the alloc-worker processes that `qpw-bench alloc` starts; unset it",
            alloc::dispatch::ENV
        );
        std::process::exit(2);
    }
    let result = match cli.command {
        Some(Command::Kmalloc(a)) => kmalloc::main(&a),
        Some(Command::Isolation(a)) if a.stress => isolation_stress::main(&a),
        Some(Command::Isolation(a)) => isolation::main(&a),
        Some(Command::Drain(a)) => drain::main(&a),
        Some(Command::Locks(a)) => locks::main(&a),
        Some(Command::Alloc(a)) => alloc::main(&a),
        Some(Command::AllocWorker(a)) => alloc::worker::main(&a),
        Some(Command::Realprog(a)) => realprog::main(&a),
        Some(Command::Report(a)) => report::main(&a),
        Some(Command::Soak(a)) => soak::main(&a),
        None => report::main(&report::ReportArgs::default()),
    };
    if let Err(e) = result {
        eprintln!("qpw-bench: error: {e}");
        std::process::exit(2);
    }
}
