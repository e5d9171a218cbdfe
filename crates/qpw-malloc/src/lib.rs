//! `qpw-malloc`: qpw-mm's [`QpwAlloc`](qpw_mm::QpwAlloc) behind the C
//! `malloc` ABI, so unmodified C and C++ programs run on qpw per-CPU
//! sheaves.
//!
//! ```sh
//! cargo build --release -p qpw-malloc
//! LD_PRELOAD=target/release/libqpw_malloc.so python3 -c 'print(len([str(i) for i in range(10**6)]))'
//! cc prog.c target/release/libqpw_malloc.a -lpthread -ldl -lm -o prog   # or link it in
//! ```
//!
//! # Entry points
//!
//! `malloc`, `free`, `calloc`, `realloc`, `reallocarray`, `posix_memalign`,
//! `aligned_alloc`, `memalign`, `valloc`, `pvalloc`, `malloc_usable_size`,
//! `malloc_trim`, `mallopt`, `malloc_stats`, `cfree`, and glibc's internal
//! `__libc_*` names for the same. glibc's semantics where C leaves a choice:
//! `realloc(p, 0)` frees `p` and returns null; `malloc(0)` returns a distinct
//! pointer; `errno` is `ENOMEM` on every failure (`EINVAL` for a bad
//! alignment), except `posix_memalign`, which returns the error and keeps
//! `errno`. See [`abi`] for each one.
//!
//! # No header
//!
//! Objects carry no header of ours: `free` and `realloc` learn an object's
//! size from the allocator (its class comes from the address; a large
//! object's mapping from the page before it), so a 16-byte `malloc` costs
//! 16 bytes.
//!
//! # Options (environment)
//!
//! See [`options`]: `QPW` (the mode, read by qpw), `QPW_MALLOC_STATS=1`
//! (statistics on stderr at exit), `QPW_MALLOC_DECAY_MS` (how long free
//! memory stays cached before it goes back to the OS by itself, or `off`),
//! `QPW_MALLOC_DECAY_THREAD` (`1`, the default: that decay runs on a
//! background thread; `0`: from the program's own calls). A bad value is
//! reported on one line of stderr and the default used. The library starts
//! one thread, the decay thread: every signal blocked before it is created,
//! and it calls `exit(0)` once it is the process's last thread (as glibc's
//! last thread does), so a `main` that calls `pthread_exit` still ends the
//! process.
//!
//! # Start-up, threads, fork
//!
//! The allocator starts on the first call (often inside the dynamic loader
//! or libc's start-up, before `main`), with no lock and no call to the
//! exported `malloc` symbol: Rust code in this library uses the same
//! allocator as its global allocator. Threads, from `pthread_create` or
//! anything else, bind a slot on their first allocation and give it back
//! when they exit (a pthread key destructor). This crate holds no lock of
//! its own, so `fork` depends only on qpw-mm.

#![deny(unsafe_op_in_unsafe_fn)]

pub mod abi;
mod backend;
pub mod options;
mod report;
mod sys;
