//! The ResNet with two-layer-perceptron blocks: its numeric types, activations, weights
//! and data, and how weights are drawn from the RNG streams or read from NumPy files.
//!
//! Storage (row-major throughout):
//! - `we`: D x d_in, entry (d, i) of W_E;
//! - `ut`, `vt`: L x M x D; row m of layer l is column m of U_l (resp. V_l), the input
//!   (resp. output) vector of hidden unit m. A row is contiguous, so the fused GD passes
//!   of [`crate::train`] stream each weight matrix once;
//! - `wu`: D x d_out, entry (d, o) of W_U;
//! - data `x`: d_in x N, `y`: d_out x N (one column per sample), as in the authors' code.

use crate::io::{self, IoError};
use crate::memory::{self, MemoryError};
use crate::param::{Dims, Resolved};
use crate::rng::{Stream, Tensor};
use serde::{Deserialize, Serialize};
use std::fmt::Debug;
use std::path::Path;

/// The floating-point types the engine runs in (f64 by default, f32 on request).
pub trait Real:
    num_traits::Float
    + Send
    + Sync
    + Default
    + Debug
    + std::iter::Sum
    + std::ops::AddAssign
    + std::ops::SubAssign
    + crate::kernels::Kernels
    + crate::vtanh::VTanh
    + 'static
{
    /// "f64" or "f32".
    const NAME: &'static str;
    fn of(x: f64) -> Self;
    fn to(self) -> f64;
    /// Fills `out` with the standard normals of one row of a stream, times `scale`.
    fn fill_normal_row(s: &Stream, row: u64, scale: f64, out: &mut [Self]);
    /// `s = tanh(p)`, `ds = 1 - s*s` (tanh's derivative, from the rounded `s`) and
    /// `ca = mv * s`, elementwise over whole slices, vectorized ([`crate::vtanh`]:
    /// AVX-512 where available, else portable code; same bits on every path). A
    /// rational approximation below |x| = 0.625, `1 - 2/(exp(2|x|) + 1)` above; within
    /// 1.4 ulp of the exact tanh in f64 and in f32, exact for tiny |x|, `±inf -> ±1`, NaN
    /// kept. Panics if the lengths differ.
    #[inline]
    fn tanh_d1_scaled(p: &[Self], s: &mut [Self], ds: &mut [Self], ca: &mut [Self], mv: Self) {
        Self::tanh_d1_scaled_on(crate::vtanh::Path::best(), p, s, ds, ca, mv)
    }
}
impl Real for f64 {
    const NAME: &'static str = "f64";
    #[inline(always)]
    fn of(x: f64) -> Self {
        x
    }
    #[inline(always)]
    fn to(self) -> f64 {
        self
    }
    fn fill_normal_row(s: &Stream, row: u64, scale: f64, out: &mut [Self]) {
        s.fill_normal_row(row, 0, scale, out)
    }
}
impl Real for f32 {
    const NAME: &'static str = "f32";
    #[inline(always)]
    fn of(x: f64) -> Self {
        x as f32
    }
    #[inline(always)]
    fn to(self) -> f64 {
        self as f64
    }
    fn fill_normal_row(s: &Stream, row: u64, scale: f64, out: &mut [Self]) {
        s.fill_normal_row_f32(row, 0, scale, out)
    }
}

/// Precision of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    #[default]
    F64,
    F32,
}

impl std::str::FromStr for Dtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f64" => Ok(Dtype::F64),
            "f32" => Ok(Dtype::F32),
            other => Err(format!("must be f64 or f32, got '{other}'")),
        }
    }
}

/// The activation sigma of the blocks, with its first two derivatives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    #[default]
    Tanh,
    Relu,
    /// The exact GELU x * Phi(x) (Phi the standard normal CDF).
    Gelu,
    /// log(1 + e^x).
    Softplus,
    /// The identity (the linear experiments of PAPERS.md section 2.5, E2).
    Linear,
}

/// The activation names, for help texts and error messages.
pub const ACTIVATIONS: [&str; 5] = ["tanh", "relu", "gelu", "softplus", "linear"];

impl std::str::FromStr for Activation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tanh" => Ok(Activation::Tanh),
            "relu" => Ok(Activation::Relu),
            "gelu" => Ok(Activation::Gelu),
            "softplus" => Ok(Activation::Softplus),
            "linear" | "identity" => Ok(Activation::Linear),
            _ => Err(format!(
                "unknown activation '{s}' (known: {})",
                ACTIVATIONS.join(", ")
            )),
        }
    }
}

const INV_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

impl Activation {
    pub fn name(self) -> &'static str {
        match self {
            Activation::Tanh => "tanh",
            Activation::Relu => "relu",
            Activation::Gelu => "gelu",
            Activation::Softplus => "softplus",
            Activation::Linear => "linear",
        }
    }

    /// sigma(x).
    #[inline]
    pub fn f<T: Real>(self, x: T) -> T {
        match self {
            Activation::Tanh => x.tanh(),
            Activation::Relu => x.max(T::zero()),
            Activation::Gelu => T::of(x.to() * phi_cdf(x.to())),
            Activation::Softplus => x.max(T::zero()) + (-x.abs()).exp().ln_1p(),
            Activation::Linear => x,
        }
    }

    /// sigma'(x).
    #[inline]
    pub fn d1<T: Real>(self, x: T) -> T {
        match self {
            Activation::Tanh => {
                let t = x.tanh();
                T::one() - t * t
            }
            Activation::Relu => {
                if x > T::zero() {
                    T::one()
                } else {
                    T::zero()
                }
            }
            Activation::Gelu => {
                let v = x.to();
                T::of(phi_cdf(v) + v * INV_SQRT_2PI * (-0.5 * v * v).exp())
            }
            Activation::Softplus => sigmoid(x),
            Activation::Linear => T::one(),
        }
    }

    /// (sigma(x), sigma'(x)) with one evaluation of the expensive part.
    #[inline]
    pub fn f_d1<T: Real>(self, x: T) -> (T, T) {
        match self {
            Activation::Tanh => {
                let t = x.tanh();
                (t, T::one() - t * t)
            }
            _ => (self.f(x), self.d1(x)),
        }
    }

    /// sigma''(x).
    #[inline]
    pub fn d2<T: Real>(self, x: T) -> T {
        match self {
            Activation::Tanh => {
                let t = x.tanh();
                T::of(-2.0) * t * (T::one() - t * t)
            }
            Activation::Relu | Activation::Linear => T::zero(),
            Activation::Gelu => {
                let v = x.to();
                T::of(INV_SQRT_2PI * (-0.5 * v * v).exp() * (2.0 - v * v))
            }
            Activation::Softplus => {
                let s = sigmoid(x);
                s * (T::one() - s)
            }
        }
    }
}

fn sigmoid<T: Real>(x: T) -> T {
    if x >= T::zero() {
        T::one() / (T::one() + (-x).exp())
    } else {
        let e = x.exp();
        e / (T::one() + e)
    }
}

/// The standard normal CDF, through musl's erfc (the `libm` crate, about 1 ulp).
fn phi_cdf(x: f64) -> f64 {
    0.5 * libm::erfc(-x / std::f64::consts::SQRT_2)
}

/// The training data: inputs `x` (d_in x N) and targets `y` (d_out x N), row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Data {
    pub din: usize,
    pub dout: usize,
    pub n: usize,
    pub x: Vec<f64>,
    pub y: Vec<f64>,
}

impl Data {
    /// Seeded synthetic regression as in the paper (PAPERS.md 2.5, E1): X and Y with
    /// i.i.d. standard Gaussian entries, drawn from the `DataX` / `DataY` streams.
    pub fn synthetic(din: usize, dout: usize, n: usize, seed: u64) -> Self {
        Data {
            din,
            dout,
            n,
            x: Stream::new(seed, Tensor::DataX, 0).normal_matrix(din, n, 1.0),
            y: Stream::new(seed, Tensor::DataY, 0).normal_matrix(dout, n, 1.0),
        }
    }
}

/// Where the initial weights come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InitSource {
    /// Drawn from the RNG streams: W_E, W_U from `embed_seed`, U, V from `block_seed`.
    /// With the same `embed_seed`, models of different D share the embedding rows
    /// (coupled randomness).
    Rng { embed_seed: u64, block_seed: u64 },
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

impl<T: Real> Aligned<T> {
    /// `len` zeros, or an error if `len` elements overflow the address space or cannot
    /// be allocated. For sizes that come from user input.
    pub fn try_zeroed(len: usize, what: &str) -> Result<Self, MemoryError> {
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
    fn zero_bytes(len: usize, what: &str) -> Result<Self, MemoryError> {
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
            return Err(MemoryError::Insufficient {
                what: format!("{what} of {len} elements"),
                need: bytes,
                available: 0,
                by: crate::memory::Source::Allocator,
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
    fn layout(len: usize, what: &str) -> Result<std::alloc::Layout, MemoryError> {
        let overflow = || MemoryError::Overflow {
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

/// `t[j][i] = a[i][j]` for `a`: rows x cols, row-major; in tiles that stay in L1.
fn transpose_into<T: Copy>(a: &[T], rows: usize, cols: usize, t: &mut [T]) {
    const B: usize = 32;
    for i0 in (0..rows).step_by(B) {
        for j0 in (0..cols).step_by(B) {
            for i in i0..(i0 + B).min(rows) {
                for j in j0..(j0 + B).min(cols) {
                    t[j * rows + i] = a[i * cols + j];
                }
            }
        }
    }
}

/// The weights of one ResNet, in precision `T`.
#[derive(Debug, PartialEq)]
pub struct Weights<T> {
    pub dims: Dims,
    pub we: Vec<T>,
    /// On 64-byte boundaries and huge pages ([`Aligned`]).
    pub ut: Aligned<T>,
    pub vt: Aligned<T>,
    pub wu: Vec<T>,
}

impl<T: Copy> Clone for Weights<T> {
    fn clone(&self) -> Self {
        Weights {
            dims: self.dims,
            we: self.we.clone(),
            ut: self.ut.clone(),
            vt: self.vt.clone(),
            wu: self.wu.clone(),
        }
    }
}

impl<T: Real> Weights<T> {
    /// Transposes every U_l and V_l in place: `to_rows_m` turns the storage layout
    /// (U_l^T, V_l^T as M x D, row-major) into U_l, V_l as D x M; otherwise back.
    pub fn transpose_blocks(&mut self, to_rows_m: bool) {
        let (m, d) = (self.dims.m, self.dims.d);
        let (rows, cols) = if to_rows_m { (m, d) } else { (d, m) };
        let mut tmp = vec![T::zero(); m * d];
        for buf in [&mut self.ut, &mut self.vt] {
            for layer in buf.chunks_exact_mut(m * d) {
                tmp.copy_from_slice(layer);
                transpose_into(&tmp, rows, cols, layer);
            }
        }
    }

    /// Bytes the weights take; an error naming the dimensions if the count overflows.
    pub fn bytes(dims: &Dims) -> Result<usize, MemoryError> {
        let s = std::mem::size_of::<T>();
        let io = memory::sum(&[("din", dims.din), ("dout", dims.dout)])?;
        let embed = memory::product(&[("D", dims.d), ("din + dout", io), ("bytes", s)])?;
        let blocks = memory::product(&[
            ("2", 2),
            ("L", dims.l),
            ("M", dims.m),
            ("D", dims.d),
            ("bytes", s),
        ])?;
        memory::sum(&[("embedding bytes", embed), ("block bytes", blocks)])
    }

    /// Draws the weights from the RNG streams `(seed, tensor, layer)`: entry (d, i) of W_E
    /// is `std_E * normal(embed_seed, W_E, 0; row d, col i)`, entry (m, d) of row-major
    /// U_l^T is `std_U * normal(block_seed, U, l; row m, col d)`, and likewise for V, W_U.
    /// Layers are drawn in parallel when called inside a rayon pool; the result does not
    /// depend on the number of threads.
    ///
    /// Panics if the blocks cannot be allocated: for shapes already checked against a
    /// memory estimate; [`Weights::try_draw`] for others.
    pub fn draw(dims: &Dims, r: &Resolved, embed_seed: u64, block_seed: u64, par: bool) -> Self {
        Self::try_draw(dims, r, embed_seed, block_seed, par).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Weights::draw`], or an error if L x M x D overflows or cannot be allocated.
    pub fn try_draw(
        dims: &Dims,
        r: &Resolved,
        embed_seed: u64,
        block_seed: u64,
        par: bool,
    ) -> Result<Self, MemoryError> {
        memory::product(&[("D", dims.d), ("din", dims.din)])?;
        memory::product(&[("D", dims.d), ("dout", dims.dout)])?;
        let blocks = memory::product(&[("L", dims.l), ("M", dims.m), ("D", dims.d)])?;
        let mut ut = Aligned::try_zeroed(blocks, "U")?;
        let mut vt = Aligned::try_zeroed(blocks, "V")?;
        let to_t = |v: Vec<f64>| v.into_iter().map(T::of).collect::<Vec<T>>();
        let we =
            to_t(Stream::new(embed_seed, Tensor::WE, 0).normal_matrix(dims.d, dims.din, r.we.std));
        let wu =
            to_t(Stream::new(embed_seed, Tensor::WU, 0).normal_matrix(dims.d, dims.dout, r.wu.std));
        let (m, d) = (dims.m, dims.d);
        let fill = |tensor: Tensor, std: f64, buf: &mut [T]| {
            let job = |(layer, block): (usize, &mut [T])| {
                let s = Stream::new(block_seed, tensor, layer as u64);
                for (row, out) in block.chunks_mut(d).enumerate() {
                    T::fill_normal_row(&s, row as u64, std, out);
                }
            };
            if par {
                use rayon::prelude::*;
                buf.par_chunks_mut(m * d).enumerate().for_each(job);
            } else {
                buf.chunks_mut(m * d).enumerate().for_each(job);
            }
        };
        if m * d > 0 {
            fill(Tensor::U, r.u.std, &mut ut);
            fill(Tensor::V, r.v.std, &mut vt);
        }
        Ok(Weights {
            dims: *dims,
            we,
            ut,
            vt,
            wu,
        })
    }

    /// Reads the weights from a directory in the layout of `shared/reference/README.md`:
    /// `WE.npy` (D, d_in), `WU.npy` (D, d_out), `U.npy`, `V.npy` (L, D, M), float64.
    pub fn from_npy_dir(dir: &Path, dims: &Dims) -> Result<Self, IoError> {
        let (l, m, d) = (dims.l, dims.m, dims.d);
        // Checked against the expected shapes first: with a zero dimension the arrays
        // below would match an empty file and the step would run on empty tensors.
        for (file, shape, names) in [
            ("WE.npy", vec![d, dims.din], &["D", "d_in"][..]),
            ("WU.npy", vec![d, dims.dout], &["D", "d_out"][..]),
            ("U.npy", vec![l, d, m], &["L", "D", "M"][..]),
            ("V.npy", vec![l, d, m], &["L", "D", "M"][..]),
        ] {
            refuse_empty(&dir.join(file), &shape, names)?;
        }
        let we = io::read_npy_shaped(&dir.join("WE.npy"), &[d, dims.din])?;
        let wu = io::read_npy_shaped(&dir.join("WU.npy"), &[d, dims.dout])?;
        let u = io::read_npy_shaped(&dir.join("U.npy"), &[l, d, m])?;
        let v = io::read_npy_shaped(&dir.join("V.npy"), &[l, d, m])?;
        // (L, D, M) -> (L, M, D): transpose each layer.
        let tr = |a: &[f64]| {
            let mut out = Aligned::zeroed(l * m * d);
            for layer in 0..l {
                for dd in 0..d {
                    for mm in 0..m {
                        out[layer * m * d + mm * d + dd] = T::of(a[layer * d * m + dd * m + mm]);
                    }
                }
            }
            out
        };
        Ok(Weights {
            dims: *dims,
            we: we.into_iter().map(T::of).collect(),
            ut: tr(&u),
            vt: tr(&v),
            wu: wu.into_iter().map(T::of).collect(),
        })
    }
}

/// Reads the data of an `--init-npy` directory: `X.npy` (d_in, N) and `Y.npy` (d_out, N).
pub fn data_from_npy_dir(dir: &Path) -> Result<Data, IoError> {
    let x = io::read_npy(&dir.join("X.npy"))?;
    let y = io::read_npy(&dir.join("Y.npy"))?;
    let bad = |p: &str, a: &io::NpyArray| IoError::BadNpy {
        path: dir.join(p),
        why: format!("expected a 2-d array, found shape {:?}", a.shape),
    };
    if x.shape.len() != 2 {
        return Err(bad("X.npy", &x));
    }
    if y.shape.len() != 2 {
        return Err(bad("Y.npy", &y));
    }
    refuse_empty(&dir.join("X.npy"), &x.shape, &["d_in", "N"])?;
    refuse_empty(&dir.join("Y.npy"), &y.shape, &["d_out", "N"])?;
    if y.shape[1] != x.shape[1] {
        return Err(IoError::Shape {
            path: dir.join("Y.npy"),
            expected: vec![y.shape[0], x.shape[1]],
            found: y.shape.clone(),
        });
    }
    Ok(Data {
        din: x.shape[0],
        dout: y.shape[0],
        n: x.shape[1],
        x: x.data,
        y: y.data,
    })
}

/// The shape (L, M, D) stored in an `--init-npy` directory's `U.npy`.
pub fn blocks_shape_from_npy_dir(dir: &Path) -> Result<(usize, usize, usize), IoError> {
    // The header alone: the arrays are read once the run's memory has been checked.
    let u = io::npy_shape(&dir.join("U.npy"))?;
    if u.len() != 3 {
        return Err(IoError::BadNpy {
            path: dir.join("U.npy"),
            why: format!("expected shape (L, D, M), found {u:?}"),
        });
    }
    refuse_empty(&dir.join("U.npy"), &u, &["L", "D", "M"])?;
    Ok((u[0], u[2], u[1]))
}

/// Refuses an array with a zero among its dimensions (named by `names`, axis by axis).
fn refuse_empty(path: &Path, shape: &[usize], names: &[&str]) -> Result<(), IoError> {
    match shape.iter().position(|&s| s == 0) {
        Some(axis) => Err(IoError::EmptyAxis {
            path: path.to_path_buf(),
            dim: format!("{} (axis {axis})", names.get(axis).copied().unwrap_or("?")),
            shape: shape.to_vec(),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of issue 13: L x M x D x 8 bytes wraps to 0 in 64 bits. The sizes are
    /// errors that name the dimensions, and no slice is built over a short allocation.
    #[test]
    fn oversized_arrays_are_errors_not_short_allocations() {
        let e = Aligned::<f64>::try_zeroed(usize::MAX / 4, "U").unwrap_err();
        assert!(e.to_string().contains("U: "), "{e}");
        assert!(Aligned::<f64>::try_zeroed(1 << 61, "U").is_err());
        assert_eq!(Aligned::<f64>::try_zeroed(7, "U").unwrap().len(), 7);
        let dims = Dims {
            l: 1 << 31,
            m: 1 << 30,
            d: 1,
            din: 1,
            dout: 1,
            n: 2,
        };
        let e = Weights::<f64>::bytes(&dims).unwrap_err().to_string();
        assert!(
            e.contains("'L' x 'M' x 'D'") && e.contains("2147483648"),
            "{e}"
        );
        let r = crate::param::Parametrization::preset("chizat-julia")
            .unwrap()
            .resolve(&dims);
        let e = Weights::<f64>::try_draw(&dims, &r, 1, 2, false).unwrap_err();
        assert!(e.to_string().contains("overflows"), "{e}");
        let wide = Dims {
            l: 1,
            d: 1 << 62,
            ..dims
        };
        assert!(Weights::<f32>::bytes(&wide).is_err());
    }

    #[test]
    fn npy_dirs_with_a_zero_dimension_are_refused_naming_file_and_dimension() {
        let dir = std::env::temp_dir().join(format!("reslim-model-empty-{}", std::process::id()));
        let w = |name: &str, shape: &[usize]| {
            let n: usize = shape.iter().product();
            io::write_npy(&dir.join(name), shape, &vec![0.5f64; n]).unwrap();
        };
        let err = |e: IoError| e.to_string();
        w("X.npy", &[2, 0]);
        w("Y.npy", &[1, 0]);
        let e = err(data_from_npy_dir(&dir).unwrap_err());
        assert!(e.contains("X.npy") && e.contains("dimension N"), "{e}");
        w("X.npy", &[2, 3]);
        w("Y.npy", &[0, 3]);
        let e = err(data_from_npy_dir(&dir).unwrap_err());
        assert!(e.contains("Y.npy") && e.contains("dimension d_out"), "{e}");
        for (shape, dim) in [([0, 4, 5], "L"), ([2, 0, 5], "D"), ([2, 4, 0], "M")] {
            w("U.npy", &shape);
            let e = err(blocks_shape_from_npy_dir(&dir).unwrap_err());
            assert!(
                e.contains("U.npy") && e.contains(&format!("dimension {dim}")),
                "{e}"
            );
        }
        let dims = Dims {
            l: 2,
            m: 5,
            d: 0,
            din: 2,
            dout: 1,
            n: 3,
        };
        let e = err(Weights::<f64>::from_npy_dir(&dir, &dims).unwrap_err());
        assert!(e.contains("WE.npy") && e.contains("dimension D"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn aligned_arrays_start_on_cache_lines_and_behave_like_vectors() {
        // Empty, small (global allocator) and large (mapped, huge-page aligned).
        for len in [0usize, 1, 3, 1000, 600_000, (4 << 20) / 8 + 5] {
            let mut a = Aligned::<f64>::zeroed(len);
            assert_eq!(a.len(), len);
            assert_eq!(a.as_ptr() as usize % 64, 0, "len {len}");
            if len * 8 >= 4 << 20 {
                assert_eq!(a.as_ptr() as usize % (2 << 20), 0, "len {len}");
            }
            assert!(a.iter().all(|&x| x == 0.0));
            for (i, x) in a.iter_mut().enumerate() {
                *x = i as f64;
            }
            let b = a.clone();
            assert_eq!(a, b);
            assert!(len == 0 || a.as_ptr() != b.as_ptr());
            assert_eq!(Aligned::from_slice(&b), a);
            let f = Aligned::<f32>::from_slice(&[1.5, 2.5]);
            assert_eq!(&*f, &[1.5, 2.5]);
        }
    }

    #[test]
    fn derivatives_match_finite_differences() {
        let h = 1e-6;
        for act in [
            Activation::Tanh,
            Activation::Relu,
            Activation::Gelu,
            Activation::Softplus,
            Activation::Linear,
        ] {
            for &x in &[-2.3f64, -0.7, 0.31, 1.9, 4.0] {
                let fd1 = (act.f(x + h) - act.f(x - h)) / (2.0 * h);
                let fd2 = (act.d1(x + h) - act.d1(x - h)) / (2.0 * h);
                assert!((fd1 - act.d1(x)).abs() < 1e-8, "{act:?} d1 at {x}");
                assert!((fd2 - act.d2(x)).abs() < 1e-7, "{act:?} d2 at {x}");
            }
        }
        assert!((Activation::Gelu.f(1.0f64) - 0.841_344_746_068_542_9).abs() < 1e-14);
        assert!((Activation::Softplus.f(-50.0f64) - (-50f64).exp()).abs() < 1e-30);
    }

    #[test]
    fn drawing_is_thread_count_independent() {
        let dims = Dims {
            l: 3,
            m: 5,
            d: 7,
            din: 2,
            dout: 2,
            n: 1,
        };
        let r = crate::param::Parametrization::preset("chizat-julia")
            .unwrap()
            .resolve(&dims);
        let a = Weights::<f64>::draw(&dims, &r, 1, 2, false);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let b = pool.install(|| Weights::<f64>::draw(&dims, &r, 1, 2, true));
        assert_eq!(a, b);
        // Coupled embeddings: the width-7 model's W_E is a prefix of the width-20 one.
        let big = Dims { d: 20, ..dims };
        let c = Weights::<f64>::draw(
            &big,
            &crate::param::Parametrization::preset("chizat-julia")
                .unwrap()
                .resolve(&big),
            1,
            9,
            false,
        );
        assert_eq!(&c.we[..14], &a.we[..]);
        let f = Weights::<f32>::draw(&dims, &r, 1, 2, false);
        assert_eq!(f.ut[4], a.ut[4] as f32);
    }
}
