//! Item 6 of issue 8: the default slot count covers every CPU the process
//! may run on, whatever the main thread's affinity. (A file of its own: it
//! pins this process's main thread for a moment.)

use qpw::Domain;
use std::mem::MaybeUninit;

fn affinity(tid: libc::pid_t) -> libc::cpu_set_t {
    let mut set = MaybeUninit::<libc::cpu_set_t>::zeroed();
    // SAFETY: `set` is writable and of the size passed.
    let rc = unsafe {
        libc::sched_getaffinity(
            tid,
            std::mem::size_of::<libc::cpu_set_t>(),
            set.as_mut_ptr(),
        )
    };
    assert_eq!(rc, 0);
    // SAFETY: filled in by the kernel.
    unsafe { set.assume_init() }
}

fn cpus(set: &libc::cpu_set_t) -> Vec<usize> {
    // SAFETY: `set` is initialised; `c` is below CPU_SETSIZE.
    (0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, set) })
        .collect()
}

#[test]
fn main_thread_pinned_to_cpu0_still_gives_every_cpu_a_slot() {
    // SAFETY: getpid has no preconditions; the main thread's tid is the pid.
    let main = unsafe { libc::getpid() };
    let mine = cpus(&affinity(0));
    if mine.len() < 2 {
        eprintln!("skipped: this thread may run on one CPU only ({mine:?})");
        return;
    }
    let saved = affinity(main);
    let mut one = MaybeUninit::<libc::cpu_set_t>::zeroed();
    // SAFETY: zeroed is an empty set; CPU 0 is below CPU_SETSIZE.
    let mut one = unsafe { one.assume_init_mut() }.to_owned();
    // SAFETY: as above.
    unsafe { libc::CPU_SET(mine[0], &mut one) };
    // SAFETY: a valid set of the size passed, for our own main thread.
    let rc = unsafe { libc::sched_setaffinity(main, std::mem::size_of::<libc::cpu_set_t>(), &one) };
    assert_eq!(rc, 0);
    let n = Domain::new().map(|d: Domain| d.nr_cpus());
    // SAFETY: as above, restoring the saved mask.
    unsafe { libc::sched_setaffinity(main, std::mem::size_of::<libc::cpu_set_t>(), &saved) };
    let n = n.unwrap();
    let highest = *mine.last().unwrap();
    assert!(
        n > highest,
        "Domain::new() has {n} slots with the main thread pinned to CPU {}, but this \
         process may run on CPUs {mine:?}",
        mine[0]
    );
}
