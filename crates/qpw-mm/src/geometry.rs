//! How a cache is cut, as numbers: slab sizes, the sheaf area, default
//! sheaf capacities and depot caps, and which classes are *line-private*.
//! The bottom layer of the slab files: `slab`, `depot`, `cache` and
//! `size_class` all read it and it reads none of them (not even in doc
//! links).

/// The smallest slab.
pub(crate) const MIN_SLAB_BYTES: usize = 64 << 10;
/// Objects a slab holds at least (the slab grows to fit them).
pub(crate) const MIN_OBJS_PER_SLAB: usize = 16;
/// The largest object a cache supports.
pub const MAX_OBJECT_SIZE: usize = 1 << 20;
/// Address space reserved for the sheaves of one cache.
pub(crate) const SHEAF_AREA: usize = 32 << 20;
/// The cache line whose sharing between threads line-private classes avoid.
pub(crate) const LINE: usize = 64;

/// The slab size for objects of `size` bytes.
pub(crate) const fn slab_bytes_for(size: usize) -> usize {
    let want = (size * MIN_OBJS_PER_SLAB).next_power_of_two();
    if want > MIN_SLAB_BYTES {
        want
    } else {
        MIN_SLAB_BYTES
    }
}

/// Whether objects of `size` bytes are *line-private*: smaller than a
/// cache line, so a whole object shares its line with neighbours, and two
/// slots must not hand out objects of one slab at once (see
/// `sheaf::Pcs`). Sizes above a line that are not multiples
/// of it (80 .. 224 B) share only a boundary line with each neighbour and
/// are not: making them line-private cost `prod-cons` about a fifth of its
/// throughput (every free of the other thread's objects went back to its
/// slab). Their slabs are [`MIN_SLAB_BYTES`]: a slot's home slab is named
/// by `address >> 16`.
pub(crate) const fn line_private(size: usize) -> bool {
    size < LINE && slab_bytes_for(size) == MIN_SLAB_BYTES
}

/// Where a cache's memory is and how it is cut.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geometry {
    /// Object size (a multiple of `align`).
    pub(crate) size: usize,
    /// Sheaf capacity.
    pub(crate) cap: usize,
    /// Cap on the depot's full sheaves (0 for line-private classes, whose
    /// sheaves never go from one slot to another with objects).
    pub(crate) max_full: usize,
}

/// The default sheaf capacity for objects of `size` bytes: 8 KiB worth of
/// objects, between 4 and 64 (SLUB, too, gives small objects bigger sheaves).
pub const fn default_sheaf_capacity(size: usize) -> usize {
    let c = 8192 / if size == 0 { 1 } else { size };
    if c < 4 {
        4
    } else if c > 64 {
        64
    } else {
        c
    }
}

/// The default cap on full sheaves in the depot: about 1 MiB of objects, at least 8.
/// A zero size or capacity counts as one.
pub const fn default_depot_max_full(size: usize, capacity: usize) -> usize {
    let per_sheaf = size.saturating_mul(capacity);
    let n = (1 << 20) / if per_sheaf == 0 { 1 } else { per_sheaf };
    if n < 8 {
        8
    } else {
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_private_classes_are_those_below_a_line() {
        for size in [8, 16, 24, 32, 40, 48, 56] {
            assert!(line_private(size), "{size}");
            assert_eq!(slab_bytes_for(size), MIN_SLAB_BYTES);
        }
        for size in [64, 80, 96, 128, 192, 224, 4096, 8192, 5000, 1 << 20] {
            assert!(!line_private(size), "{size}");
        }
    }
}
