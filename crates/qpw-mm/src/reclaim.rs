//! One decay pass over a `kmalloc` instance (see [`decay`](crate::decay)
//! for what a pass returns to the OS, and who runs it): idle slots' sheaves
//! through the instance's own drain work, then idle depots, free slabs and
//! cached mappings.

use crate::decay::PASSES_PER_DELAY;
use crate::shared::KShared;
use crate::stats::ShrinkReport;
use qpw::{Config, WorkSet};
use std::sync::atomic::Ordering;

/// One pass of the instance whose shared state is `sh` and drain work
/// `drain` (with the decay enabled). With `wait`, it waits for the idle
/// slots' drains (bounded by the flush timeout, a timeout counted); without
/// it (a pass run from a program's slow path), it only queues them: they
/// run at once for a slot nobody binds or in `remote` mode, and by the
/// owner otherwise. Returns what went back to the OS.
pub(crate) fn decay_pass<C: Config>(
    sh: &KShared<C>,
    drain: &WorkSet<C>,
    wait: bool,
) -> ShrinkReport {
    let mut rep = ShrinkReport::default();
    let (st, n) = sh.decay.begin_pass();
    if n > 0 {
        // Queue every chosen slot's drain first (in queue mode the
        // owners then run them in parallel), then wait for each.
        for cpu in 0..st.chosen.len() {
            if st.chosen[cpu] {
                if let Some(w) = drain.get(cpu) {
                    w.queue();
                }
            }
        }
        for cpu in 0..st.chosen.len() {
            if st.chosen[cpu] {
                if let Some(w) = drain.get(cpu) {
                    sh.decay.slot_drains.fetch_add(1, Ordering::Relaxed);
                    if wait && w.flush().is_err() {
                        sh.decay.drain_timeouts.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }
    let pass = st.pass;
    drop(st);
    for core in sh.classes().cores() {
        rep.add(core.decay(PASSES_PER_DELAY / 2));
    }
    let large = sh.classes().large.decay(pass, u64::from(PASSES_PER_DELAY));
    rep.add((0, large));
    rep
}
