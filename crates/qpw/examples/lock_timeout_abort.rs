//! A remote lock wait that reaches its deadline, in a program built with
//! `panic = "abort"` (`cargo run --profile abort -p qpw --example
//! lock_timeout_abort`, run by `.ci/run`): the work sees an `Err` and
//! returns, the drain-all returns `FlushError::LockTimeout`, a `Mutex` the
//! work held is not poisoned, and the process exits 0. When qpw delivered
//! the timeout by unwinding, this process aborted (exit 134, no message).

use qpw::{Config, Domain, FlushError, Mode, PerCpu, Standard};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

fn main() {
    if !Standard::QPW {
        println!("lock_timeout_abort: no remote mode in this build; nothing to check");
        return;
    }
    let domain: Domain = Domain::builder()
        .mode(Mode::Remote)
        .nr_cpus(2)
        .flush_timeout(Duration::from_millis(100))
        .build()
        .expect("domain");
    let data = Arc::new(PerCpu::new(&domain, |_| 0u64));
    let log = Arc::new(Mutex::new(Vec::<usize>::new()));
    let drain = domain.work_all({
        let (data, log) = (data.clone(), log.clone());
        move |ctx| {
            let mut log = log.lock().unwrap();
            log.push(ctx.slot());
            let Ok(mut v) = data.lock_ctx(ctx) else {
                return;
            };
            *v += 1;
        }
    });
    // Another thread holds slot 1's cell until the drain-all has returned.
    let (held_tx, held_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let holder = std::thread::spawn({
        let data = data.clone();
        move || {
            let g = data.remote(1).expect("remote lock");
            held_tx.send(()).unwrap();
            release_rx.recv().unwrap();
            drop(g);
        }
    });
    held_rx.recv().unwrap();
    let r = drain.run();
    assert!(
        matches!(r, Err(FlushError::LockTimeout { cpu: 1, .. })),
        "{r:?}"
    );
    release_tx.send(()).unwrap();
    holder.join().unwrap();
    assert!(!log.is_poisoned());
    drain.run().expect("the drain-all after the holder let go");
    assert_eq!(*data.remote(0).unwrap(), 2);
    assert_eq!(*data.remote(1).unwrap(), 1);
    println!("lock_timeout_abort: {r:?} under panic = \"abort\", then Ok");
}
