//! Implicit per-thread bindings, with thread-local storage that never
//! allocates.
//!
//! qpw's own `Domain::with_local` keeps its owners in a `Vec` inside a
//! thread-local with a destructor: the first use allocates, and registering
//! the destructor may too. Inside a global allocator either would recurse.
//! So this module keeps a fixed table in a `const`-initialised thread-local
//! without a destructor (plain TLS: no registration, no allocation), and
//! learns about thread exit from a pthread key whose destructor walks the
//! table (`pthread_key_create` and, for the first keys, `pthread_setspecific`
//! do not allocate; glibc runs key destructors after Rust's own TLS
//! destructors, so the bindings outlive every Rust destructor of the thread).
//!
//! Each entry maps an instance id (unique, never reused) to that instance's
//! binding on this thread (a type-erased pointer and its release function).
//! An instance looks first at entry `id % ENTRIES`: one TLS load and one
//! compare on the fast path. Several instances, of different `Config` types,
//! coexist: each has its own entry.
//!
//! One instance per process, the *primary* (the global allocator's, which
//! claims it when it is built), also keeps this thread's binding in one
//! pointer of initial-exec TLS ([`fast`]): reached with a `%fs`-relative
//! load through a GOT entry the dynamic loader fills once, never through
//! `__tls_get_addr`, which a `cdylib`'s general-dynamic thread-locals call
//! on every access. It mirrors the table entry: set when the binding is
//! inserted, cleared before it is released.
//!
//! Re-entrancy: binding a slot allocates (qpw boxes the owner record), and
//! when this allocator *is* the global allocator, that allocation comes back
//! here. While an instance is binding or unbinding on this thread its id is
//! on the thread's *busy* list, and such calls take the shared path instead
//! of binding again. After the exit hook ran, every call takes the shared
//! path.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Bindings a thread can hold at once (instances used from one thread).
pub(crate) const ENTRIES: usize = 16;
const BUSY: usize = 4;
const FAILED: usize = 4;

const LIVE: u8 = 0;
const EXITING: u8 = 1;

/// Releases a binding (drains the slot, drops the owner).
pub(crate) type Release = unsafe fn(*mut ());

struct Table {
    ids: [Cell<usize>; ENTRIES],
    ptrs: [Cell<*mut ()>; ENTRIES],
    releases: [Cell<Option<Release>>; ENTRIES],
    busy: [Cell<usize>; BUSY],
    /// Instances this thread failed to bind, with the instance's binding
    /// generation at the time (retry once a slot was freed).
    failed: [Cell<(usize, u64)>; FAILED],
    state: Cell<u8>,
    armed: Cell<bool>,
}

impl Table {
    const fn new() -> Self {
        Self {
            ids: [const { Cell::new(0) }; ENTRIES],
            ptrs: [const { Cell::new(std::ptr::null_mut()) }; ENTRIES],
            releases: [const { Cell::new(None) }; ENTRIES],
            busy: [const { Cell::new(0) }; BUSY],
            failed: [const { Cell::new((0, 0)) }; FAILED],
            state: Cell::new(LIVE),
            armed: Cell::new(false),
        }
    }
}

thread_local! {
    // `const` and without drop glue: plain `#[thread_local]` storage, no
    // lazy initialisation, no destructor registration, never allocates.
    static TABLE: Table = const { Table::new() };
}

const _: () = assert!(!std::mem::needs_drop::<Table>());
const _: () = assert!(ENTRIES.is_power_of_two());

/// The primary instance's id (0: none yet).
static PRIMARY: AtomicUsize = AtomicUsize::new(0);

/// Makes instance `id` the primary (the first caller wins): its bindings
/// are also kept in [`fast`]. Returns whether it is.
pub(crate) fn claim_primary(id: usize) -> bool {
    PRIMARY
        .compare_exchange(0, id, Ordering::Relaxed, Ordering::Relaxed)
        .is_ok()
        || PRIMARY.load(Ordering::Relaxed) == id
}

fn is_primary(id: usize) -> bool {
    PRIMARY.load(Ordering::Relaxed) == id
}

/// The primary instance's binding on this thread (null if none): the
/// fast path of the global allocator.
#[inline(always)]
pub(crate) fn primary_binding() -> *mut () {
    fast::get()
}

/// The primary instance's binding pointer in initial-exec TLS.
///
/// On x86-64 Linux the slot is one 8-byte `.tbss` symbol defined here in
/// assembly (stable Rust cannot pick a thread-local's TLS model), read and
/// written as `mov off, [rip + sym@GOTTPOFF]; mov reg, fs:[off]`: the
/// initial-exec sequence C compilers emit for
/// `__attribute__((tls_model("initial-exec")))`. Why this is correct:
/// - loaded at start-up (`LD_PRELOAD`, `DT_NEEDED`, or linked into the
///   executable, where the linker relaxes it to local-exec), the slot is
///   in every thread's static TLS block, which the loader and
///   `pthread_create` allocate and zero before the thread runs any code;
/// - `dlopen`ed later, glibc places it in the static TLS surplus it keeps
///   for such libraries (the library is marked `DF_STATIC_TLS`) and zeroes
///   it in every thread that already exists; if no surplus were left,
///   `dlopen` fails with "cannot allocate memory in static TLS block", it
///   never runs with a wrong slot (8 bytes: the surplus is hundreds);
/// - the offset is the same for every thread and fixed once the library is
///   loaded; a forked child keeps the forking thread's value, as it keeps
///   its binding.
///
/// Elsewhere the slot is a plain `const` thread-local.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod fast {
    std::arch::global_asm!(
        ".pushsection .tbss,\"awT\",@nobits",
        ".p2align 3",
        ".globl qpw_mm_primary_binding",
        ".hidden qpw_mm_primary_binding",
        ".type qpw_mm_primary_binding,@object",
        ".size qpw_mm_primary_binding,8",
        "qpw_mm_primary_binding:",
        ".zero 8",
        ".popsection",
    );

    #[inline(always)]
    pub(super) fn get() -> *mut () {
        let v: *mut ();
        // SAFETY: reads this thread's 8-byte slot (see the module doc: it
        // exists, zeroed, in every thread before its first instruction).
        unsafe {
            std::arch::asm!(
                "mov {v}, qword ptr [rip + qpw_mm_primary_binding@GOTTPOFF]",
                "mov {v}, qword ptr fs:[{v}]",
                v = out(reg) v,
                options(nostack, readonly, preserves_flags),
            );
        }
        v
    }

    #[inline]
    pub(super) fn set(p: *mut ()) {
        // SAFETY: writes this thread's slot, as `get` reads it.
        unsafe {
            std::arch::asm!(
                "mov {t}, qword ptr [rip + qpw_mm_primary_binding@GOTTPOFF]",
                "mov qword ptr fs:[{t}], {p}",
                t = out(reg) _,
                p = in(reg) p,
                options(nostack, preserves_flags),
            );
        }
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
mod fast {
    use std::cell::Cell;

    thread_local! {
        static SLOT: Cell<*mut ()> = const { Cell::new(std::ptr::null_mut()) };
    }

    #[inline(always)]
    pub(super) fn get() -> *mut () {
        SLOT.with(Cell::get)
    }

    pub(super) fn set(p: *mut ()) {
        SLOT.with(|s| s.set(p))
    }
}

/// Keeps the primary's binding in [`fast`] if `id` is the primary (a
/// binding found in the table but not there, made before the claim).
pub(crate) fn note_found(id: usize, ptr: *mut ()) {
    if is_primary(id) && !exiting() {
        fast::set(ptr);
    }
}

/// The preferred entry of instance `id`.
#[inline(always)]
pub(crate) const fn hint_of(id: usize) -> usize {
    id & (ENTRIES - 1)
}

/// The fast path: this thread's binding of instance `id`, if it sits at its
/// preferred entry `hint` (from [`hint_of`]); null otherwise.
#[inline(always)]
pub(crate) fn lookup(id: usize, hint: usize) -> *mut () {
    TABLE.with(|t| {
        let i = hint & (ENTRIES - 1);
        if t.ids[i].get() == id {
            t.ptrs[i].get()
        } else {
            std::ptr::null_mut()
        }
    })
}

/// This thread's binding of instance `id`, wherever it sits.
pub(crate) fn find(id: usize) -> *mut () {
    TABLE.with(|t| {
        for i in 0..ENTRIES {
            if t.ids[i].get() == id {
                return t.ptrs[i].get();
            }
        }
        std::ptr::null_mut()
    })
}

/// Whether the thread is past its exit hook.
pub(crate) fn exiting() -> bool {
    TABLE.with(|t| t.state.get() != LIVE)
}

/// Whether the table has a free entry.
pub(crate) fn has_room() -> bool {
    TABLE.with(|t| t.ids.iter().any(|c| c.get() == 0))
}

/// Records a binding, at its preferred entry if free. `false` if the table is full.
pub(crate) fn insert(id: usize, ptr: *mut (), release: Release) -> bool {
    TABLE.with(|t| {
        let pref = hint_of(id);
        let i = if t.ids[pref].get() == 0 {
            pref
        } else {
            match t.ids.iter().position(|c| c.get() == 0) {
                Some(i) => i,
                None => return false,
            }
        };
        t.ptrs[i].set(ptr);
        t.releases[i].set(Some(release));
        t.ids[i].set(id);
        if is_primary(id) {
            fast::set(ptr);
        }
        true
    })
}

/// Removes instance `id`'s binding from the table and returns it.
pub(crate) fn remove(id: usize) -> Option<(*mut (), Release)> {
    TABLE.with(|t| {
        for i in 0..ENTRIES {
            if t.ids[i].get() == id {
                if is_primary(id) {
                    fast::set(std::ptr::null_mut());
                }
                t.ids[i].set(0);
                let p = t.ptrs[i].replace(std::ptr::null_mut());
                return t.releases[i].take().map(|r| (p, r));
            }
        }
        None
    })
}

/// Marks instance `id` busy (binding or unbinding) on this thread; `false`
/// if it already is, or the busy list is full.
pub(crate) fn busy_enter(id: usize) -> bool {
    TABLE.with(|t| {
        if t.busy.iter().any(|c| c.get() == id) {
            return false;
        }
        match t.busy.iter().find(|c| c.get() == 0) {
            Some(c) => {
                c.set(id);
                true
            }
            None => false,
        }
    })
}

/// Ends [`busy_enter`].
pub(crate) fn busy_leave(id: usize) {
    TABLE.with(|t| {
        if let Some(c) = t.busy.iter().find(|c| c.get() == id) {
            c.set(0);
        }
    })
}

/// Whether instance `id` is binding or unbinding on this thread.
pub(crate) fn is_busy(id: usize) -> bool {
    TABLE.with(|t| t.busy.iter().any(|c| c.get() == id))
}

/// The binding generation at which this thread last failed to bind `id`.
pub(crate) fn failed_at(id: usize) -> Option<u64> {
    TABLE.with(|t| t.failed.iter().find(|c| c.get().0 == id).map(|c| c.get().1))
}

/// Records a failed binding (forgets the oldest record when full).
pub(crate) fn set_failed(id: usize, generation: u64) {
    TABLE.with(|t| {
        let slot = t
            .failed
            .iter()
            .find(|c| c.get().0 == id)
            .or_else(|| t.failed.iter().find(|c| c.get().0 == 0))
            .unwrap_or(&t.failed[0]);
        slot.set((id, generation));
    })
}

/// Forgets a failed binding.
pub(crate) fn clear_failed(id: usize) {
    TABLE.with(|t| {
        if let Some(c) = t.failed.iter().find(|c| c.get().0 == id) {
            c.set((0, 0));
        }
    })
}

/// Makes sure this thread's exit runs [`on_thread_exit`]. `false` if the
/// pthread key could not be had (the binding must not be made then).
pub(crate) fn arm_exit_hook() -> bool {
    TABLE.with(|t| {
        if t.armed.get() {
            return true;
        }
        let Some(key) = crate::sys::exit_key(on_thread_exit) else {
            return false;
        };
        if !crate::sys::arm_exit_key(key) {
            return false;
        }
        t.armed.set(true);
        true
    })
}

/// The pthread key destructor: releases every binding of the exiting
/// thread (each drains its slot into the depot and frees the slot for
/// reuse). From here on the thread uses the shared path.
unsafe extern "C" fn on_thread_exit(_: *mut libc::c_void) {
    TABLE.with(|t| {
        t.state.set(EXITING);
        fast::set(std::ptr::null_mut());
        for i in 0..ENTRIES {
            if t.ids[i].get() == 0 {
                continue;
            }
            t.ids[i].set(0);
            let p = t.ptrs[i].replace(std::ptr::null_mut());
            if let Some(release) = t.releases[i].take() {
                // SAFETY: `p` is the binding that `release` was registered
                // for, removed from the table, so released exactly once.
                unsafe { release(p) };
            }
        }
    })
}
