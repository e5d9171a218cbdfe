//! Real programs of this machine under `LD_PRELOAD`: each one's output must
//! equal its output without the library, and the library's statistics at
//! exit prove it served the allocations. A program that is not installed is
//! skipped with a message (`cc` and `sort` are required).

mod common;

use common::{have, preloaded, python, run, tmp_dir, Run};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(600);

/// Runs `prog args` with and without the library (statistics on) and
/// returns both runs, after checking the preloaded one served allocations.
fn both(prog: &str, args: &[&str], stdin: Option<&Path>) -> (Run, Run) {
    let mut plain = Command::new(prog);
    plain.args(args).env_remove("LD_PRELOAD");
    let plain = run(plain, stdin, LIMIT);
    plain.assert_ok(&format!("{prog} without the library"));
    let mut pre = preloaded(prog);
    pre.args(args).env("QPW_MALLOC_STATS", "1");
    let pre = run(pre, stdin, LIMIT);
    pre.assert_ok(&format!("{prog} under LD_PRELOAD"));
    let err = pre.stderr();
    assert!(
        err.contains("qpw-malloc: statistics of pid") && err.contains("slabs: active"),
        "{prog}: no statistics from the library, so it did not run on it:\n{err}"
    );
    (plain, pre)
}

#[test]
fn python_allocating_a_lot() {
    let Some(py) = python() else {
        eprintln!("skipped: no python3 here");
        return;
    };
    let script = r#"
import hashlib, threading
d = {i: str(i) * 3 for i in range(300000)}
l = [bytes(range(i % 256)) for i in range(100000)]
b = bytearray()
for i in range(50000):
    b += b"x" * (i % 13)
res = [0] * 4
def work(k):
    res[k] = sum(len(str(j) * 5) for j in range(100000))
ts = [threading.Thread(target=work, args=(k,)) for k in range(4)]
for t in ts: t.start()
for t in ts: t.join()
h = hashlib.sha256()
for k in sorted(d)[::997]:
    h.update(d[k].encode())
del d, l
print(len(b), sum(res), h.hexdigest())
"#;
    let (plain, pre) = both(&py, &["-c", script], None);
    assert_eq!(plain.stdout(), pre.stdout());
    assert!(!pre.stdout().trim().is_empty());
    eprintln!("python3: {}", pre.stdout().trim());
}

#[test]
fn sort_of_a_large_file() {
    assert!(have("sort"), "sort is required");
    // 300,000 lines (about 12 MB) from a fixed generator.
    let input = tmp_dir().join("sort-input.txt");
    let mut s = 0x2545_f491_4f6c_dd1du64;
    let mut text = String::with_capacity(13 << 20);
    for i in 0..300_000u64 {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        let w = (s % 40) as usize + 1;
        let word: String = (0..w)
            .map(|k| (b'a' + ((s >> (k % 60)) % 26) as u8) as char)
            .collect();
        text.push_str(&format!("{word} {} {i}\n", s % 1000));
    }
    std::fs::write(&input, text).unwrap();
    let path = input.to_str().unwrap();
    // Several threads (GNU sort's --parallel), a small buffer (merges).
    let args = ["--parallel=4", "-S", "4M", "-k2,2n", "-k1,1", path];
    let (plain, pre) = both("sort", &args, None);
    assert_eq!(
        plain.out.stdout.len(),
        std::fs::metadata(&input).unwrap().len() as usize
    );
    assert!(
        plain.out.stdout == pre.out.stdout,
        "sort output differs under LD_PRELOAD"
    );
}

#[test]
fn perl_hashes_and_strings() {
    if !have("perl") {
        eprintln!("skipped: no perl here");
        return;
    }
    let script = r#"my %h; $h{$_ x 3} = [($_) x 5] for 1..200000;
my $s = join(",", map { scalar @{$h{$_}} } (sort keys %h)[0..999]);
my @big = map { "y" x ($_ % 3000) } 1..20000;
my $t = 0; $t += length for @big;
print length($s), " ", scalar(keys %h), " $t\n";"#;
    let (plain, pre) = both("perl", &["-e", script], None);
    assert_eq!(plain.stdout(), pre.stdout());
}

#[test]
fn git_and_the_c_compiler() {
    if have("git") {
        let (plain, pre) = both("git", &["--version"], None);
        assert_eq!(plain.stdout(), pre.stdout());
    } else {
        eprintln!("skipped git: not installed");
    }
    // cc under the library: the driver, cc1, as and ld all inherit
    // LD_PRELOAD (cc1 is a heavy allocator user). The program it builds must
    // match the one built without the library.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/threads.c");
    let dir = tmp_dir();
    let a = dir.join("cc-plain.o");
    let b = dir.join("cc-preloaded.o");
    let (plain, pre) = {
        let mut p = Command::new("cc");
        p.args(["-O2", "-c", "-o"])
            .arg(&a)
            .arg(&src)
            .env_remove("LD_PRELOAD");
        let p = run(p, None, LIMIT);
        let mut q = preloaded("cc");
        q.args(["-O2", "-c", "-o"])
            .arg(&b)
            .arg(&src)
            .env("QPW_MALLOC_STATS", "1");
        (p, run(q, None, LIMIT))
    };
    plain.assert_ok("cc without the library");
    pre.assert_ok("cc under LD_PRELOAD");
    assert!(
        pre.stderr().contains("qpw-malloc: statistics of pid"),
        "{}",
        pre.stderr()
    );
    assert_eq!(
        std::fs::read(&a).unwrap(),
        std::fs::read(&b).unwrap(),
        "cc built a different object under LD_PRELOAD"
    );
}

#[test]
fn a_cxx_program() {
    if !have("c++") {
        eprintln!("skipped: no C++ compiler here");
        return;
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/cxx.cpp");
    let exe = tmp_dir().join("cxx");
    let mut cmd = Command::new("c++");
    cmd.args(["-O1", "-std=c++17", "-pthread", "-o"])
        .arg(&exe)
        .arg(&src)
        .env_remove("LD_PRELOAD");
    run(cmd, None, LIMIT).assert_ok("c++ tests/c/cxx.cpp");
    let (plain, pre) = both(exe.to_str().unwrap(), &[], None);
    assert!(pre.stdout().starts_with("cxx: ok"), "{}", pre.stdout());
    assert_eq!(plain.stdout(), pre.stdout());
}
