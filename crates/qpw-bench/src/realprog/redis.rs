//! `redis-server` under `redis-benchmark`, over 127.0.0.1 only: one
//! server per run on a free loopback port, no persistence; SET, GET,
//! LPUSH and MSET with 100 B and 4 KiB values, each without pipelining and
//! 16 deep; then `FLUSHALL SYNC`, and after a second the server's `VmRSS`
//! (its peak, `VmHWM`, read at the same time). The server is killed at
//! the end, whatever happened.
//!
//! Debian's `redis-server` is linked with jemalloc: with nothing
//! preloaded (the `glibc` column) it runs on that jemalloc, not glibc's
//! malloc. Preloading another allocator takes its `malloc`/`free`; redis
//! still asks the linked jemalloc for statistics (`mallctl`).

use super::allocators::Ready;
use super::programs::{scaled, status_kib, Ctx, Sample, Unit};
use super::spawn;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SERVER: &str = "/usr/bin/redis-server";
const BENCHMARK: &str = "/usr/bin/redis-benchmark";

/// How long the server may take to answer its first `PING`.
const START_LIMIT: Duration = Duration::from_secs(20);

/// How long after `FLUSHALL` the RSS is read.
const SETTLE: Duration = Duration::from_secs(1);

/// The tests `redis-benchmark` runs.
const TESTS: &str = "set,get,lpush,mset";

/// Keys the tests spread over (`-r`).
const KEYSPACE: u64 = 10_000;

/// The runs: (value bytes, pipeline depth, requests per test at scale 1).
const RUNS: [(u64, u64, u64); 4] = [
    (100, 1, 50_000),
    (100, 16, 200_000),
    (4096, 1, 10_000),
    (4096, 16, 40_000),
];

/// Requests per test: `n` at scale 1, at least 1,000 per pipeline slot
/// (fewer can end within redis-benchmark's millisecond clock: `inf` per
/// second).
fn requests(n: u64, pipeline: u64, scale: f64) -> u64 {
    scaled(n, scale, 1_000 * pipeline)
}

/// What it does at `scale`.
pub fn describe(scale: f64) -> String {
    let runs: Vec<String> = RUNS
        .iter()
        .map(|&(d, p, n)| {
            format!(
                "{} B values pipelined {p} deep, {} requests per test",
                d,
                crate::util::thousands(requests(n, p, scale))
            )
        })
        .collect();
    format!(
        "{SERVER} on a free 127.0.0.1 port (no persistence) under {BENCHMARK} -t {TESTS} -r {KEYSPACE} -c 50: {}; \
         rows are requests per second; `redis total` is the seconds of all the benchmark runs, the server's peak \
         RSS, and its RSS {} s after FLUSHALL SYNC. With nothing preloaded (`glibc`) Debian's redis-server runs \
         on the jemalloc it is linked with",
        runs.join("; "),
        SETTLE.as_secs()
    )
}

/// Why it cannot run, if so.
pub fn missing() -> Option<String> {
    [(SERVER, "redis-server"), (BENCHMARK, "redis-tools")]
        .iter()
        .find(|(p, _)| !Path::new(p).is_file())
        .map(|(p, pkg)| format!("{p} not found (install the Debian package {pkg})"))
}

/// A free loopback port (there is a short race until the server binds it).
fn free_port() -> Result<u16, String> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port on 127.0.0.1: {e}"))
}

/// The server; killed (its whole process group) and reaped when dropped.
struct Server {
    child: Child,
    stopped: bool,
    out: Option<std::thread::JoinHandle<String>>,
    err: Option<std::thread::JoinHandle<String>>,
}

impl Server {
    /// Kills it and returns what it printed (stdout, then stderr); once.
    fn stop(&mut self) -> String {
        if std::mem::replace(&mut self.stopped, true) {
            // Reaped: its id may belong to another process now.
            return String::new();
        }
        spawn::kill_group(self.child.id());
        let _ = self.child.wait();
        let out = self
            .out
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        let err = self
            .err
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        out + &err
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One command to the server, inline protocol; its one-line answer.
fn command(port: u16, cmd: &str, limit: Duration) -> Result<String, String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut s = TcpStream::connect_timeout(&addr, limit).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(limit))
        .and_then(|_| s.set_write_timeout(Some(limit)))
        .and_then(|_| s.write_all(format!("{cmd}\r\n").as_bytes()))
        .map_err(|e| format!("{cmd}: {e}"))?;
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).map_err(|e| format!("{cmd}: {e}"))?;
    Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string())
}

/// Starts the server and waits (at most [`START_LIMIT`]) for its `PONG`.
fn start(a: &Ready, port: u16, dir: &Path) -> Result<Server, String> {
    let mut cmd = Command::new(SERVER);
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .args(["--protected-mode", "yes", "--logfile", "", "--dir"])
        .arg(dir);
    a.apply(&mut cmd);
    let mut child = spawn::start_group(&mut cmd, Stdio::null())?;
    let out = spawn::reader(child.stdout.take().expect("piped stdout"));
    let err = spawn::reader(child.stderr.take().expect("piped stderr"));
    let mut server = Server {
        child,
        stopped: false,
        out: Some(out),
        err: Some(err),
    };
    let t = Instant::now();
    loop {
        if let Ok(Some(status)) = server.child.try_wait() {
            let said = server.stop();
            spawn::check_preloaded(&said)?;
            return Err(format!(
                "redis-server ended at its start ({status}): {}",
                said.lines().last().unwrap_or("").trim()
            ));
        }
        if command(port, "PING", Duration::from_millis(200)).is_ok_and(|r| r == "+PONG") {
            return Ok(server);
        }
        if t.elapsed() > START_LIMIT {
            let said = server.stop();
            return Err(format!(
                "redis-server did not answer PING on 127.0.0.1:{port} within {} s: {}",
                START_LIMIT.as_secs(),
                said.lines().last().unwrap_or("").trim()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `redis-benchmark --csv` lines: (test, requests per second).
fn parse_csv(out: &str) -> Result<Vec<(String, f64)>, String> {
    let rows: Vec<(String, f64)> = out
        .lines()
        .filter_map(|l| {
            let mut f = l.split(',').map(|x| x.trim().trim_matches('"'));
            let test = f.next()?;
            // `inf` parses: refused below with its own message.
            let rps = f.next()?.parse::<f64>().ok()?;
            Some((test.to_string(), rps))
        })
        .collect();
    if rows.is_empty() {
        return Err(format!(
            "no figures in redis-benchmark's output: {:?}",
            out.trim()
        ));
    }
    if let Some((t, r)) = rows.iter().find(|(_, r)| !(r.is_finite() && *r > 0.0)) {
        return Err(format!(
            "redis-benchmark gave {t} {r} requests per second: too few requests to time (raise --scale)"
        ));
    }
    Ok(rows)
}

/// Runs the server and the benchmark once under `a`.
pub fn run(a: &Ready, ctx: &Ctx) -> Result<Vec<Sample>, String> {
    let port = free_port()?;
    let dir = ctx.dir.join(format!("redis-{port}"));
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let mut server = start(a, port, &dir)?;
    let mut samples = Vec::new();
    let mut total = Duration::ZERO;
    for (d, p, n) in RUNS {
        let n = requests(n, p, ctx.scale);
        let mut cmd = Command::new(BENCHMARK);
        cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", TESTS])
            .args([
                "-n",
                &n.to_string(),
                "-d",
                &d.to_string(),
                "-P",
                &p.to_string(),
            ])
            .args(["-r", &KEYSPACE.to_string(), "-c", "50", "--csv"]);
        // The client runs on glibc: only the server's allocator is compared.
        cmd.env_remove("LD_PRELOAD").env_remove("QPW");
        let f = spawn::run(&mut cmd, b"", ctx.limit)
            .map_err(|e| format!("redis-benchmark -d {d} -P {p}: {e}"))?;
        total += f.wall;
        for (test, rps) in parse_csv(&f.stdout)? {
            let size = if d >= 1024 {
                format!("{} KiB", d / 1024)
            } else {
                format!("{d} B")
            };
            let pipe = if p > 1 {
                format!(" P{p}")
            } else {
                String::new()
            };
            let test = test.split_whitespace().next().unwrap_or("?").to_string();
            samples.push(Sample {
                row: format!("redis {test} {size}{pipe}"),
                value: rps,
                unit: Unit::OpsPerS,
                hwm_kib: None,
                rss_after_kib: None,
            });
        }
    }
    let ok = command(port, "FLUSHALL SYNC", Duration::from_secs(30))?;
    if ok != "+OK" {
        return Err(format!("FLUSHALL SYNC answered {ok:?}"));
    }
    std::thread::sleep(SETTLE);
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id()))
        .map_err(|e| format!("reading the server's /proc status: {e}"))?;
    let said = server.stop();
    spawn::check_preloaded(&said)?;
    let _ = std::fs::remove_dir_all(&dir);
    samples.push(Sample {
        row: "redis total".to_string(),
        value: total.as_secs_f64(),
        unit: Unit::Seconds,
        hwm_kib: status_kib(&status, "VmHWM"),
        rss_after_kib: status_kib(&status, "VmRSS"),
    });
    Ok(samples)
}

#[cfg(test)]
mod tests {
    #[test]
    fn benchmark_csv_is_parsed_and_empty_output_refused() {
        let out = "\"test\",\"rps\",\"avg_latency_ms\"\n\"SET\",\"86206.90\",\"0.3\"\n\"MSET (10 keys)\",\"50000.00\",\"1\"\n";
        let r = super::parse_csv(out).unwrap();
        assert_eq!(
            r,
            [
                ("SET".to_string(), 86206.90),
                ("MSET (10 keys)".to_string(), 50000.0)
            ]
        );
        assert!(super::parse_csv("\"test\",\"rps\"\n").is_err());
        assert!(super::parse_csv("\"SET\",\"0\"\n").is_err());
        assert!(super::parse_csv("\"SET\",\"inf\"\n")
            .unwrap_err()
            .contains("too few requests"));
    }
}
