//! The size classes of one `kmalloc` instance: a slab cache ([`SlabCore`])
//! per class in one address-space reservation, so a pointer's class is
//! `(ptr - base) >> span_shift`, and the large-object path beside them.
//! Routing a request or a pointer to its class, or to the large path.

use crate::depot::SlabCore;
use crate::error::{FreeError, SlabError};
use crate::geometry::Geometry;
use crate::large::Large;
use crate::size_class::SizeClasses;
use crate::sys;
use std::ptr::NonNull;

/// Alignment of the class reservation, and the least span per class: at
/// least 2 MiB and every class's slab size.
fn classes_align(table: SizeClasses) -> usize {
    crate::geometry::slab_bytes_for(table.max_size()).max(2 << 20)
}

/// The slab caches of every class and the large path, in their own mapping
/// (never from the global allocator).
pub(crate) struct Classes {
    pub(crate) base: usize,
    pub(crate) len: usize,
    pub(crate) span_shift: u32,
    pub(crate) table: SizeClasses,
    /// The cores, one per class, in this mapping right after the struct.
    cores: NonNull<SlabCore>,
    ncores: usize,
    pub(crate) large: Large,
}

// SAFETY: the cores are Send + Sync (they synchronise internally) and live
// in this Classes' own mapping as long as it does; the rest is plain data
// or synchronised (Large).
unsafe impl Send for Classes {}
// SAFETY: as above.
unsafe impl Sync for Classes {}

/// What [`Classes::resize`] decided.
pub(crate) enum Resize {
    /// The object (possibly at a new address after `mremap`) serves the new size.
    Kept(*mut u8),
    /// Allocate anew and copy this many bytes.
    Move(usize),
}

fn mapping_bytes(n: usize) -> usize {
    sys::round_up(
        std::mem::size_of::<Classes>().next_multiple_of(64) + n * std::mem::size_of::<SlabCore>(),
        sys::page_size(),
    )
}

impl Classes {
    /// Reserves `class_bytes` (rounded up to a power of two) per class and
    /// builds the caches, all without the global allocator. If the OS
    /// refuses that much address space (a low `ulimit -v`, or valgrind), the
    /// span is halved down to `min_class_bytes` before giving up.
    pub(crate) fn create(
        table: SizeClasses,
        class_bytes: usize,
        min_class_bytes: usize,
    ) -> Result<NonNull<Classes>, SlabError> {
        let n = table.sizes().len();
        let align = classes_align(table);
        let bad = SlabError::BadMaxBytes {
            max_bytes: class_bytes,
            min: align,
        };
        let mut span = class_bytes
            .max(align)
            .checked_next_power_of_two()
            .ok_or(bad.clone())?;
        span.checked_mul(n).ok_or(bad)?;
        let floor = min_class_bytes.max(align).min(span);
        loop {
            match Self::create_with_span(table, span) {
                Err(SlabError::Map { .. }) if span / 2 >= floor => span /= 2,
                r => return r,
            }
        }
    }

    fn create_with_span(table: SizeClasses, span: usize) -> Result<NonNull<Classes>, SlabError> {
        let sizes = table.sizes();
        let n = sizes.len();
        let len = span * n;
        let base = sys::reserve(len, classes_align(table)).map_err(|errno| SlabError::Map {
            what: "kmalloc arena",
            errno,
        })?;
        let bytes = mapping_bytes(n);
        let at = match sys::map(bytes) {
            Ok(at) => at,
            Err(errno) => {
                // SAFETY: reserved above, used by nothing.
                let _ = unsafe { sys::unmap(base, len) };
                return Err(SlabError::Map {
                    what: "kmalloc classes",
                    errno,
                });
            }
        };
        let cores = (at + std::mem::size_of::<Classes>().next_multiple_of(64)) as *mut SlabCore;
        for (c, &size) in sizes.iter().enumerate() {
            let g = Geometry {
                size,
                cap: table.capacity(c),
                max_full: table.max_full(c),
            };
            match SlabCore::new(g, base + c * span, span) {
                // SAFETY: slot `c` of the fresh mapping, written once.
                Ok(core) => unsafe { cores.add(c).write(core) },
                Err(errno) => {
                    for i in 0..c {
                        // SAFETY: cores below `c` were written and never used.
                        unsafe {
                            (*cores.add(i)).unmap_meta();
                            std::ptr::drop_in_place(cores.add(i));
                        }
                    }
                    // SAFETY: mapped and reserved above, used by nothing.
                    unsafe {
                        let _ = sys::unmap(at, bytes);
                        let _ = sys::unmap(base, len);
                    }
                    return Err(SlabError::Map {
                        what: "kmalloc metadata",
                        errno,
                    });
                }
            }
        }
        let me = Classes {
            base,
            len,
            span_shift: span.trailing_zeros(),
            table,
            // SAFETY: inside the mapping, non-null.
            cores: unsafe { NonNull::new_unchecked(cores) },
            ncores: n,
            large: Large::new(),
        };
        let at = at as *mut Classes;
        // SAFETY: `at` is the start of the fresh, writable, page-aligned
        // mapping, big enough.
        unsafe { at.write(me) };
        // SAFETY: just written, non-null.
        Ok(unsafe { NonNull::new_unchecked(at) })
    }

    /// Unmaps everything: arena, metadata, and the Classes itself.
    ///
    /// # Safety
    /// `p` came from [`create`](Self::create); nothing of it is used afterwards.
    pub(crate) unsafe fn destroy(p: NonNull<Classes>) {
        // SAFETY: forwarded to the caller.
        let me = unsafe { p.as_ref() };
        me.large.shrink();
        for core in me.cores() {
            // SAFETY: forwarded to the caller.
            unsafe { core.unmap_meta() };
        }
        let (base, len, n) = (me.base, me.len, me.ncores);
        // SAFETY: forwarded to the caller. Failures only leave address
        // space mapped that nothing uses.
        unsafe {
            for i in 0..n {
                std::ptr::drop_in_place(me.cores.as_ptr().add(i));
            }
            let _ = sys::unmap(base, len);
            std::ptr::drop_in_place(p.as_ptr());
            let _ = sys::unmap(p.as_ptr() as usize, mapping_bytes(n));
        }
    }

    /// Every class's cache.
    #[inline(always)]
    pub(crate) fn cores(&self) -> &[SlabCore] {
        // SAFETY: `ncores` cores were written at `cores` in `create` and
        // live as long as self.
        unsafe { std::slice::from_raw_parts(self.cores.as_ptr(), self.ncores) }
    }

    /// Class `c`'s cache.
    #[inline(always)]
    pub(crate) fn core(&self, c: usize) -> &SlabCore {
        debug_assert!(c < self.ncores);
        // SAFETY: class indices come from the table or `class_of`, both
        // below `ncores`.
        unsafe { &*self.cores.as_ptr().add(c) }
    }

    /// The class of an object address, or `None` (a large object).
    #[inline(always)]
    pub(crate) fn class_of(&self, p: *mut u8) -> Option<usize> {
        let off = (p as usize).wrapping_sub(self.base);
        (off < self.len).then_some(off >> self.span_shift)
    }

    /// The class serving `size` bytes aligned to `align`, or `None` (large).
    #[inline(always)]
    pub(crate) fn class_for(&self, size: usize, align: usize) -> Option<usize> {
        self.table.class_for(size, align)
    }

    /// Usable size of an allocated object.
    ///
    /// # Safety
    /// `p` is allocated from this instance (checked in debug builds for large objects).
    pub(crate) unsafe fn usable_size(&self, p: *mut u8) -> Result<usize, FreeError> {
        match self.class_of(p) {
            Some(c) => Ok(self.core(c).size()),
            // SAFETY: forwarded to the caller.
            None => unsafe { crate::large::usable_size(p) },
        }
    }

    /// The shared path's allocation (no slot).
    pub(crate) fn alloc_shared(&self, size: usize, align: usize) -> *mut u8 {
        match self.class_for(size, align) {
            Some(c) => {
                let p = self.core(c).alloc_shared();
                if !p.is_null() {
                    self.core(c).mark_allocated(p);
                }
                p
            }
            None => self.large.alloc(size, align, false),
        }
    }

    /// The shared path's free.
    ///
    /// # Safety
    /// `p` is allocated from this instance and given up.
    pub(crate) unsafe fn free_shared(&self, p: *mut u8) -> Result<(), FreeError> {
        match self.class_of(p) {
            Some(c) => {
                if !self.core(c).is_object_start(p as usize) {
                    return Err(FreeError::NotObjectStart {
                        ptr: p as usize,
                        object_size: self.core(c).size,
                    });
                }
                self.core(c).check_free(p)?;
                // SAFETY: forwarded to the caller.
                unsafe { self.core(c).free_shared(p) };
                Ok(())
            }
            // SAFETY: forwarded to the caller.
            None => unsafe { self.large.free(p) },
        }
    }

    /// The in-place part of a reallocation: `Kept(p)` when `p` can serve
    /// `new_size` as it is (same class) or after an `mremap` (large), else
    /// `Move(bytes)`: allocate anew and copy that many bytes.
    ///
    /// # Safety
    /// `p` is allocated from this instance with alignment `align`.
    pub(crate) unsafe fn resize(
        &self,
        p: *mut u8,
        align: usize,
        new_size: usize,
    ) -> Result<Resize, FreeError> {
        // SAFETY: forwarded to the caller.
        let old = unsafe { self.usable_size(p) }?;
        let new_class = self.class_for(new_size, align);
        match self.class_of(p) {
            Some(c) if new_class == Some(c) => return Ok(Resize::Kept(p)),
            None if new_class.is_none() && align <= sys::page_size() => {
                // SAFETY: `p` is a live, page-aligned large object.
                let np = unsafe { self.large.realloc(p, new_size) };
                if !np.is_null() {
                    return Ok(Resize::Kept(np));
                }
            }
            _ => {}
        }
        Ok(Resize::Move(old.min(new_size)))
    }

    /// The fork hook's `prepare`: takes every lock of these classes.
    pub(crate) fn lock_for_fork(&self) {
        for core in self.cores() {
            core.lock_for_fork();
        }
        self.large.lock_for_fork();
    }

    /// The fork hook's `parent` and `child`: releases what `prepare` took.
    ///
    /// # Safety
    /// After [`lock_for_fork`](Self::lock_for_fork), by the forking thread.
    pub(crate) unsafe fn unlock_after_fork(&self) {
        // SAFETY: forwarded to the caller.
        unsafe {
            self.large.unlock_after_fork();
            for core in self.cores() {
                core.unlock_after_fork();
            }
        }
    }
}
