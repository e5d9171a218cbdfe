//! Size classes and routing a request to one: the kernel's table (what
//! [`Kmalloc`](crate::Kmalloc) serves by default, 8 B .. 8 KiB) and the fine
//! table of the global allocator (8 B .. 256 KiB, classes at most 25% apart
//! from 64 B on), and their geometry (sheaf capacity, depot cap).

use crate::geometry::{default_depot_max_full, default_sheaf_capacity};

/// The size classes, as the kernel's `kmalloc-8` .. `kmalloc-8k` caches.
pub const KMALLOC_SIZES: [usize; NCLASSES] = [
    8, 16, 32, 64, 96, 128, 192, 256, 512, 1024, 2048, 4096, 8192,
];
/// Requests above this size are mapped directly (`KMALLOC_MAX_CACHE_SIZE`).
pub const KMALLOC_MAX_CACHE_SIZE: usize = 8192;
/// Number of size classes.
pub const NCLASSES: usize = 13;

/// Size class of requests up to 192 bytes, by `(size + 7) / 8` (the
/// kernel's `kmalloc_size_index`).
const SIZE_INDEX: [u8; 25] = [
    0, 0, 1, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 6,
];

/// The largest class of the fine table: requests above it are large
/// (cached mappings).
pub const FINE_MAX_SIZE: usize = 256 << 10;
/// Classes of the fine table: 8 .. 64 by 8, 80 .. 128 by 16, then four per
/// doubling (`1.25`, `1.5`, `1.75`, `2` times the power of two) up to
/// [`FINE_MAX_SIZE`].
pub const FINE_NCLASSES: usize = 8 + 4 + 4 * 11;
/// The fine table's sizes.
pub const FINE_SIZES: [usize; FINE_NCLASSES] = fine_sizes();
/// The most classes any table has (the per-slot sheaf array's length).
pub(crate) const MAX_CLASSES: usize = FINE_NCLASSES;
/// Index of 1024 in [`FINE_SIZES`]: sizes up to it use [`FINE_INDEX`].
const FINE_SMALL_LAST: usize = 8 + 4 + 4 * 3 - 1;
const FINE_SMALL_MAX: usize = 1024;

const fn fine_sizes() -> [usize; FINE_NCLASSES] {
    let mut t = [0usize; FINE_NCLASSES];
    let mut i = 0;
    while i < 8 {
        t[i] = 8 * (i + 1);
        i += 1;
    }
    while i < 12 {
        t[i] = 64 + 16 * (i - 7);
        i += 1;
    }
    let mut p = 128;
    while i < FINE_NCLASSES {
        let mut q = 1;
        while q <= 4 {
            t[i] = p + q * (p / 4);
            i += 1;
            q += 1;
        }
        p *= 2;
    }
    t
}

/// Fine class of requests up to 1024 bytes, by `(size + 7) / 8`.
const FINE_INDEX: [u8; FINE_SMALL_MAX / 8 + 1] = fine_index();

const fn fine_index() -> [u8; FINE_SMALL_MAX / 8 + 1] {
    let mut t = [0u8; FINE_SMALL_MAX / 8 + 1];
    let mut k = 0;
    let mut c = 0;
    while k < t.len() {
        let size = if k == 0 { 0 } else { k * 8 };
        while FINE_SIZES[c] < size {
            c += 1;
        }
        t[k] = c as u8;
        k += 1;
    }
    t
}

/// The size-class table of a [`Kmalloc`](crate::Kmalloc) instance
/// ([`KmallocBuilder::size_classes`](crate::KmallocBuilder::size_classes)).
///
/// A build option rather than a separate type, so both tables share every
/// path (and the seed's `kmalloc` benchmark rows, on `Kernel`, measure the
/// same code as the global allocator).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SizeClasses {
    /// [`KMALLOC_SIZES`]: the kernel's 13 classes, 8 B .. 8 KiB (powers of
    /// two above 256 B); larger requests are mapped. The default, for
    /// figures comparable with the kernel's.
    #[default]
    Kernel,
    /// [`FINE_SIZES`]: 56 classes, 8 B .. 256 KiB, at most 25% apart from
    /// 64 B on; what [`QpwAlloc`](crate::QpwAlloc) uses.
    Fine,
}

impl SizeClasses {
    #[inline(always)]
    pub(crate) fn sizes(self) -> &'static [usize] {
        match self {
            SizeClasses::Kernel => &KMALLOC_SIZES,
            SizeClasses::Fine => &FINE_SIZES,
        }
    }

    /// The largest class size.
    #[inline(always)]
    pub(crate) fn max_size(self) -> usize {
        match self {
            SizeClasses::Kernel => KMALLOC_MAX_CACHE_SIZE,
            SizeClasses::Fine => FINE_MAX_SIZE,
        }
    }

    /// Sheaf capacity of class `c`: the kernel table keeps the default; the
    /// fine table bounds what a slot caches to about 64 KiB per sheaf above
    /// 8 KiB (a slot holds at most two sheaves per class).
    pub(crate) fn capacity(self, c: usize) -> usize {
        let size = self.sizes()[c];
        match self {
            SizeClasses::Fine if size > 8192 => ((64 << 10) / size).clamp(1, 4),
            _ => default_sheaf_capacity(size),
        }
    }

    /// Cap on class `c`'s full depot sheaves: about 1 MiB of objects, at
    /// least 8 sheaves, in the kernel table; in the fine one's classes over
    /// 8 KiB about 256 KiB, at least 2 sheaves (a few mid-size buffers
    /// cached per class, not a megabyte each: peak RSS).
    pub(crate) fn max_full(self, c: usize) -> usize {
        let size = self.sizes()[c];
        let cap = self.capacity(c);
        match self {
            SizeClasses::Fine if size > 8192 => ((256 << 10) / (size * cap)).max(2),
            _ => default_depot_max_full(size, cap),
        }
    }

    /// The class for a request of `size` bytes (at most `max_size`).
    #[inline(always)]
    pub(crate) fn index(self, size: usize) -> usize {
        match self {
            SizeClasses::Kernel => class_index(size),
            SizeClasses::Fine => fine_class_index(size),
        }
    }

    /// The class serving `size` bytes aligned to `align`, or `None` for the
    /// large path.
    ///
    /// Alignments up to 16 (every `malloc`) take no loop and no branch on
    /// the size below 1 KiB: a 16-aligned request is rounded up to a
    /// multiple of 16 first, and in both tables the smallest class at or
    /// above such a size is itself a multiple of 16 (every multiple of 16
    /// up to 128 is a class, larger classes are multiples of 32), so its
    /// objects are 16-aligned. Larger alignments search upwards.
    #[inline(always)]
    pub(crate) fn class_for(self, size: usize, align: usize) -> Option<usize> {
        if size > self.max_size() {
            return None;
        }
        if align <= 16 {
            // A select, not a branch; the maximum size is a multiple of 16.
            let s = if align > 8 {
                ((size + 15) & !15).max(16)
            } else {
                size
            };
            return Some(self.index(s));
        }
        self.class_for_aligned(size, align)
    }

    /// [`class_for`](Self::class_for) of an alignment above 16.
    #[cold]
    #[inline(never)]
    fn class_for_aligned(self, size: usize, align: usize) -> Option<usize> {
        let sizes = self.sizes();
        let mut c = self.index(size);
        while class_align(sizes[c]) < align {
            c += 1;
            if c == sizes.len() {
                return None;
            }
        }
        Some(c)
    }
}

/// The size class (index into [`KMALLOC_SIZES`]) for a request of `size`
/// bytes, or `None` above [`KMALLOC_MAX_CACHE_SIZE`] (the large path). A
/// zero size gets the smallest class: every `kmalloc(0)` is a distinct,
/// freeable object.
pub fn size_class(size: usize) -> Option<usize> {
    (size <= KMALLOC_MAX_CACHE_SIZE).then(|| class_index(size))
}

/// [`size_class`] for sizes already known to be at most
/// `KMALLOC_MAX_CACHE_SIZE` (the fast path).
#[inline(always)]
pub(crate) fn class_index(size: usize) -> usize {
    debug_assert!(size <= KMALLOC_MAX_CACHE_SIZE);
    if size <= 192 {
        SIZE_INDEX[(size + 7) >> 3] as usize
    } else {
        (usize::BITS - (size - 1).leading_zeros()) as usize - 1
    }
}

/// The fine class of `size` (at most [`FINE_MAX_SIZE`]).
#[inline(always)]
pub(crate) fn fine_class_index(size: usize) -> usize {
    debug_assert!(size <= FINE_MAX_SIZE);
    if size <= FINE_SMALL_MAX {
        FINE_INDEX[(size + 7) >> 3] as usize
    } else {
        // size - 1 in [2^b, 2^(b+1)): classes 2^b * (1.25, 1.5, 1.75, 2),
        // picked by the two bits below the leading one.
        let w = size - 1;
        let b = (usize::BITS - 1 - w.leading_zeros()) as usize;
        let q = (w >> (b - 2)) & 3;
        FINE_SMALL_LAST + 1 + (b - 10) * 4 + q
    }
}

/// The alignment objects of a class of `size` bytes have (the largest power
/// of two dividing it: 32 for 96, 64 for 192).
#[inline(always)]
pub(crate) const fn class_align(size: usize) -> usize {
    size & size.wrapping_neg()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `class_for` is the smallest class that fits the size and whose
    /// objects have the alignment, for every size and alignment of both
    /// tables (the rounding shortcut up to 16 included).
    #[test]
    fn class_for_is_the_smallest_fitting_aligned_class() {
        for table in [SizeClasses::Kernel, SizeClasses::Fine] {
            let sizes = table.sizes();
            for align in [1, 2, 4, 8, 16, 32, 64, 4096] {
                for size in 0..=table.max_size() + 1 {
                    let want = sizes
                        .iter()
                        .position(|&s| s >= size && class_align(s) >= align);
                    let want = if size > table.max_size() { None } else { want };
                    assert_eq!(
                        table.class_for(size, align),
                        want,
                        "{table:?}, size {size}, align {align}"
                    );
                }
            }
        }
    }

    #[test]
    fn kernel_size_classes_fit_and_are_tight() {
        for size in 0..=KMALLOC_MAX_CACHE_SIZE {
            let c = class_index(size);
            assert!(
                KMALLOC_SIZES[c] >= size,
                "size {size} -> class {}",
                KMALLOC_SIZES[c]
            );
            if c > 0 {
                assert!(
                    KMALLOC_SIZES[c - 1] < size.max(1),
                    "size {size} could use a smaller class"
                );
            }
        }
    }

    #[test]
    fn fine_classes_fit_are_tight_and_close() {
        assert_eq!(FINE_SIZES[FINE_SMALL_LAST], FINE_SMALL_MAX);
        assert_eq!(FINE_SIZES[FINE_NCLASSES - 1], FINE_MAX_SIZE);
        for w in FINE_SIZES.windows(2) {
            assert!(w[0] < w[1]);
            if w[0] >= 64 {
                assert!(w[1] * 4 <= w[0] * 5, "{} -> {} is over 25%", w[0], w[1]);
            }
        }
        for size in 0..=FINE_MAX_SIZE {
            let c = fine_class_index(size);
            assert!(FINE_SIZES[c] >= size, "size {size} -> {}", FINE_SIZES[c]);
            if c > 0 {
                assert!(FINE_SIZES[c - 1] < size.max(1), "size {size} too loose");
            }
        }
    }

    #[test]
    fn aligned_classes_are_aligned() {
        for t in [SizeClasses::Kernel, SizeClasses::Fine] {
            for align in (0..16).map(|s| 1usize << s) {
                for size in [1usize, 7, 8, 9, 33, 65, 96, 100, 192, 200, 4000, 4097, 8192] {
                    match t.class_for(size, align) {
                        Some(c) => {
                            assert!(t.sizes()[c] >= size);
                            assert!(class_align(t.sizes()[c]) >= align);
                        }
                        None => assert!(size > t.max_size() || align > t.max_size()),
                    }
                }
            }
        }
        let k = SizeClasses::Kernel;
        assert_eq!(k.class_for(8193, 8), None);
        assert_eq!(k.class_for(10, 8192), Some(NCLASSES - 1));
        assert_eq!(k.class_for(10, 16384), None);
        assert_eq!(SizeClasses::Fine.class_for(FINE_MAX_SIZE + 1, 8), None);
        assert_eq!(
            SizeClasses::Fine.class_for(10, 4096).map(|c| FINE_SIZES[c]),
            Some(4096)
        );
    }

    #[test]
    fn big_classes_cache_little_per_slot() {
        let t = SizeClasses::Fine;
        for (c, &size) in FINE_SIZES.iter().enumerate() {
            let cap = t.capacity(c);
            assert!((1..=crate::MAX_SHEAF_CAPACITY).contains(&cap));
            if size > 8192 {
                assert!(cap * size <= (64 << 10).max(size), "class {size}: {cap}");
            }
        }
    }
}
