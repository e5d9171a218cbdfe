//! Errors of the slab allocator: each names what was wrong.

use std::fmt;

/// Why a cache (or a `kmalloc` instance) could not be made, or why a drain failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SlabError {
    /// An object size of zero or above the largest a cache supports.
    BadObjectSize {
        /// The size given.
        size: usize,
        /// The largest accepted.
        max: usize,
    },
    /// An alignment that is not a power of two, or above the largest supported.
    BadAlign {
        /// The alignment given.
        align: usize,
        /// The largest accepted.
        max: usize,
    },
    /// A sheaf capacity of zero or above [`MAX_SHEAF_CAPACITY`](crate::MAX_SHEAF_CAPACITY).
    BadSheafCapacity {
        /// The capacity given.
        capacity: usize,
        /// The largest accepted.
        max: usize,
    },
    /// A memory limit too small to hold one slab.
    BadMaxBytes {
        /// The limit given.
        max_bytes: usize,
        /// The smallest accepted for this object size.
        min: usize,
    },
    /// The OS refused a mapping.
    Map {
        /// What was being mapped.
        what: &'static str,
        /// The errno.
        errno: i32,
    },
    /// Building the domain or reaching its slots failed.
    Qpw(qpw::Error),
}

impl fmt::Display for SlabError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SlabError::BadObjectSize { size, max } => {
                write!(
                    f,
                    "object size {size} is not supported: it must be between 1 and {max} bytes"
                )
            }
            SlabError::BadAlign { align, max } => {
                write!(
                    f,
                    "alignment {align} is not supported: it must be a power of two up to {max}"
                )
            }
            SlabError::BadSheafCapacity { capacity, max } => {
                write!(
                    f,
                    "sheaf capacity {capacity} is not supported: it must be between 1 and {max}"
                )
            }
            SlabError::BadMaxBytes { max_bytes, min } => {
                write!(
                    f,
                    "max_bytes {max_bytes} is too small: one slab of this cache needs {min}"
                )
            }
            SlabError::Map { what, errno } => {
                write!(
                    f,
                    "mapping {what} failed: {}",
                    std::io::Error::from_raw_os_error(*errno)
                )
            }
            SlabError::Qpw(e) => write!(f, "qpw: {e}"),
        }
    }
}

impl std::error::Error for SlabError {}

impl From<qpw::Error> for SlabError {
    fn from(e: qpw::Error) -> Self {
        SlabError::Qpw(e)
    }
}

/// A free that debug builds refuse (release builds do not check: freeing
/// is `unsafe` and these are broken contracts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FreeError {
    /// The pointer is not inside any slab of this cache.
    Foreign {
        /// The pointer.
        ptr: usize,
    },
    /// The pointer is inside a slab but not at the start of an object.
    NotObjectStart {
        /// The pointer.
        ptr: usize,
        /// The cache's object size.
        object_size: usize,
    },
    /// A large (directly mapped) object's address that is not a live large
    /// allocation: freed already, or never allocated here.
    NotLive {
        /// The pointer.
        ptr: usize,
    },
    /// The object is not allocated: it was freed already (or never handed out).
    DoubleFree {
        /// The pointer.
        ptr: usize,
        /// The cache's object size.
        object_size: usize,
    },
}

impl fmt::Display for FreeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            FreeError::Foreign { ptr } => {
                write!(f, "free of foreign pointer {ptr:#x}: it is not an object of this cache")
            }
            FreeError::NotObjectStart { ptr, object_size } => write!(
                f,
                "free of {ptr:#x}: not the start of an object (objects of this cache are {object_size} bytes)"
            ),
            FreeError::NotLive { ptr } => write!(
                f,
                "free of {ptr:#x}: not a live large allocation (double free, or foreign pointer)"
            ),
            FreeError::DoubleFree { ptr, object_size } => write!(
                f,
                "double free of {ptr:#x} ({object_size}-byte object): it is not allocated"
            ),
        }
    }
}

impl std::error::Error for FreeError {}

impl FreeError {
    /// The reason, in the words of glibc's messages: `"double free
    /// detected"` or `"invalid pointer (...)"`.
    pub fn reason(&self) -> &'static str {
        match self {
            FreeError::Foreign { .. } => "invalid pointer (not from this allocator)",
            FreeError::NotObjectStart { .. } => {
                "invalid pointer (inside an object, not at its start)"
            }
            FreeError::NotLive { .. } => {
                "invalid pointer (not a live allocation: freed already, or not from this allocator)"
            }
            FreeError::DoubleFree { .. } => "double free detected",
        }
    }

    /// The pointer that was passed.
    pub fn ptr(&self) -> usize {
        match *self {
            FreeError::Foreign { ptr }
            | FreeError::NotObjectStart { ptr, .. }
            | FreeError::NotLive { ptr }
            | FreeError::DoubleFree { ptr, .. } => ptr,
        }
    }

    /// Prints `<who>: <call>(): <reason>: <pointer>` (and the object size
    /// when known) on stderr and aborts, as glibc does on a bad free
    /// (`free(): invalid pointer`). Allocates nothing: usable inside an
    /// allocator.
    pub fn abort(&self, who: &str, call: &str) -> ! {
        use fmt::Write;
        let mut w = crate::sys::StderrLine::new();
        let _ = write!(w, "{who}: {call}(): {}: {:#x}", self.reason(), self.ptr());
        match *self {
            FreeError::NotObjectStart { object_size, .. }
            | FreeError::DoubleFree { object_size, .. } => {
                let _ = write!(w, " ({object_size}-byte objects)");
            }
            _ => {}
        }
        let _ = w.write_str("\n");
        w.flush();
        std::process::abort()
    }
}

/// Why [`KmemCache::destroy`](crate::KmemCache::destroy) (or
/// [`Kmalloc::destroy`](crate::Kmalloc::destroy)) did not release the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DestroyError {
    /// Objects were still allocated. Their memory is kept mapped (leaked, as
    /// the kernel keeps the slabs of a cache destroyed with live objects), so
    /// those pointers stay valid.
    Leaked {
        /// Objects never freed.
        objects: usize,
        /// Bytes they occupy (object size times count, plus large allocations).
        bytes: usize,
    },
    /// The drain before the check did not finish (an owner in `defer` mode
    /// that never reached a quiescent point, for example).
    Flush(qpw::FlushError),
    /// Other references to the cache are still alive (implicit per-thread
    /// bindings of threads that have not exited, or a drain stuck on a slot).
    InUse {
        /// How many references other than the one destroying it.
        references: usize,
    },
}

impl fmt::Display for DestroyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DestroyError::Leaked { objects, bytes } => {
                write!(f, "cache destroyed with {objects} objects ({bytes} bytes) still allocated: memory leaked")
            }
            DestroyError::Flush(e) => write!(f, "draining the per-CPU sheaves failed: {e}"),
            DestroyError::InUse { references } => write!(
                f,
                "cache still in use by {references} other references (threads bound to it must exit or unbind first)"
            ),
        }
    }
}

impl std::error::Error for DestroyError {}
