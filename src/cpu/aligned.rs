//! [`Aligned`]: zeroed arrays on cache lines (and, from 4 MiB, on huge pages) for the
//! arrays the kernels stream.

use super::Float;
use std::fmt::Debug;

/// Why an [`Aligned`] array could not be made (`memory::MemoryError` takes it in, with the
/// same messages).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AllocError {
    /// The byte count does not fit in `isize`.
    #[error("{expr} overflows (sizes are limited to 2^63 - 1)")]
    Overflow {
        /// What and how many, e.g. `U: 10 elements x 8 bytes`.
        expr: String,
    },
    /// The global allocator returned null.
    #[error("{what} needs {bytes} bytes: the allocator refused")]
    Refused { what: String, bytes: usize },
}

/// A zero-initialised heap array whose first element sits on a 64-byte boundary (a
/// cache line, and the widest vector register), for the arrays the kernels stream:
/// their vector loads of a row then never straddle two cache lines where the row length
/// is a multiple of 64 bytes. `Vec` gives no such alignment: glibc's allocations start 16
/// bytes into a line, so every 64-byte load and every other 32-byte load crossed a line.
///
/// Arrays of at least 4 MiB are mapped directly (Linux) and start on a 2 MiB boundary,
/// with the kernel asked to back them by transparent huge pages (THP in `madvise` mode,
/// the default of many distributions): the step streams the block weights, and 2 MiB
/// pages spare it most TLB misses. The pages are untouched until first written, so they
/// are faulted in large (and in parallel where the writer is). A hint only: results do
/// not depend on it. `RESLIM_NO_HUGE_PAGES` (set to anything) skips it, for A/B timings.
/// `reslim bench`, M = D = 1000, f64, 2 threads, three interleaved runs each (AVX-512
/// machine): 0.126-0.150 s/step with huge pages, 0.150-0.157 without.
pub struct Aligned<T> {
    ptr: std::ptr::NonNull<T>,
    len: usize,
    /// Bytes mapped by `mmap` (0: allocated by the global allocator).
    mapped: usize,
}

// SAFETY: `Aligned` owns its elements like a `Vec`.
unsafe impl<T: Send> Send for Aligned<T> {}
unsafe impl<T: Sync> Sync for Aligned<T> {}

const LINE: usize = 64;
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
const HUGE_PAGE: usize = 2 << 20;

impl<T: Float> Aligned<T> {
    /// `len` zeros, or an error if `len` elements overflow the address space or cannot
    /// be allocated. For sizes that come from user input.
    pub fn try_zeroed(len: usize, what: &str) -> Result<Self, AllocError> {
        // All-zero bits are 0.0 in f32 and f64.
        Self::zero_bytes(len, what)
    }

    /// `len` zeros. Panics where [`Aligned::try_zeroed`] fails: only for sizes already
    /// validated (by a memory estimate of the same shape, or a live allocation).
    pub fn zeroed(len: usize) -> Self {
        Self::zero_bytes(len, "array").unwrap_or_else(|e| panic!("{e}"))
    }

    /// A copy of `v`.
    pub fn from_slice(v: &[T]) -> Self {
        let mut a = Self::zeroed(v.len());
        a.copy_from_slice(v);
        a
    }
}

impl<T> Aligned<T> {
    /// `len` elements of all-zero bytes (valid values for the float types of
    /// [`Aligned::zeroed`]; other types only reach it through `clone`, which overwrites
    /// every element before any is read). The byte count is checked: a wrapped count
    /// would allocate less than the `len` elements the slice claims.
    fn zero_bytes(len: usize, what: &str) -> Result<Self, AllocError> {
        let layout = Self::layout(len, what)?;
        let bytes = layout.size();
        if bytes == 0 {
            // A dangling pointer, but on a line like the others.
            let ptr = std::ptr::NonNull::new(std::ptr::without_provenance_mut::<T>(LINE));
            return Ok(Aligned {
                ptr: ptr.expect("LINE is not null"),
                len,
                mapped: 0,
            });
        }
        #[cfg(target_os = "linux")]
        if bytes >= 2 * HUGE_PAGE
            && let Some((ptr, mapped)) = map_huge(bytes)
        {
            return Ok(Aligned {
                ptr: ptr.cast(),
                len,
                mapped,
            });
        }
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let Some(ptr) = std::ptr::NonNull::new(raw.cast::<T>()) else {
            return Err(AllocError::Refused {
                what: format!("{what} of {len} elements"),
                bytes,
            });
        };
        Ok(Aligned {
            ptr,
            len,
            mapped: 0,
        })
    }

    /// The layout of `len` elements on a cache line; an error if its size overflows
    /// (`isize::MAX` bytes at most).
    fn layout(len: usize, what: &str) -> Result<std::alloc::Layout, AllocError> {
        let overflow = || AllocError::Overflow {
            expr: format!(
                "{what}: {len} elements x {} bytes",
                std::mem::size_of::<T>()
            ),
        };
        let bytes = len
            .checked_mul(std::mem::size_of::<T>())
            .ok_or_else(overflow)?;
        std::alloc::Layout::from_size_align(bytes, LINE).map_err(|_| overflow())
    }
}

/// `bytes` of fresh zero pages starting on a 2 MiB boundary, advised to THP; the pointer
/// and the mapped length (what `munmap` takes).
#[cfg(target_os = "linux")]
fn map_huge(bytes: usize) -> Option<(std::ptr::NonNull<u8>, usize)> {
    let len = bytes.next_multiple_of(HUGE_PAGE);
    // SAFETY: an anonymous private mapping; the parts outside [start, start + len) are
    // unmapped again, and only [start, start + len) is ever used.
    unsafe {
        let base = libc::mmap(
            std::ptr::null_mut(),
            len + HUGE_PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if base == libc::MAP_FAILED {
            return None;
        }
        let b = base as usize;
        let start = b.next_multiple_of(HUGE_PAGE);
        if start > b {
            libc::munmap(base, start - b);
        }
        let end = b + len + HUGE_PAGE;
        if end > start + len {
            libc::munmap((start + len) as *mut libc::c_void, end - start - len);
        }
        if std::env::var_os("RESLIM_NO_HUGE_PAGES").is_none() {
            libc::madvise(start as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
        }
        Some((std::ptr::NonNull::new(start as *mut u8)?, len))
    }
}

impl<T> Drop for Aligned<T> {
    fn drop(&mut self) {
        if self.len == 0 || std::mem::size_of::<T>() == 0 {
            return;
        }
        // SAFETY: `ptr` came from `map_huge` (with this length) or the global allocator
        // (with this layout), and is freed once.
        unsafe {
            #[cfg(target_os = "linux")]
            if self.mapped > 0 {
                libc::munmap(self.ptr.as_ptr().cast(), self.mapped);
                return;
            }
            let layout = Self::layout(self.len, "array").expect("allocated with this layout");
            std::alloc::dealloc(self.ptr.as_ptr().cast(), layout);
        }
    }
}

impl<T> std::ops::Deref for Aligned<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: `len` initialised elements at `ptr` (or dangling and empty).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T> std::ops::DerefMut for Aligned<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as above, and `&mut self` is unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Copy> Clone for Aligned<T> {
    fn clone(&self) -> Self {
        let a = Self::zero_bytes(self.len, "copy").unwrap_or_else(|e| panic!("{e}"));
        // SAFETY: both hold `len` elements; distinct allocations.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.as_ptr(), a.ptr.as_ptr(), self.len) };
        a
    }
}

impl<'a, T> IntoIterator for &'a Aligned<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<'a, T> IntoIterator for &'a mut Aligned<T> {
    type Item = &'a mut T;
    type IntoIter = std::slice::IterMut<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter_mut()
    }
}

impl<T: Debug> Debug for Aligned<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

impl<T: PartialEq> PartialEq for Aligned<T> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}
