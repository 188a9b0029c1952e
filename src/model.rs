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

pub use crate::cpu::Float;
use crate::cpu::{Aligned, Par};
use crate::io::{self, IoError};
use crate::memory::{self, MemoryError};
use crate::param::{Dims, Resolved};
use crate::rng::{Stream, Tensor};
use serde::{Deserialize, Serialize};
use std::fmt::Debug;
use std::path::Path;

/// The floating-point types the engine runs in (f64 by default, f32 on request).
///
/// The arithmetic, `NAME`, `of` and `to` come from [`Float`] (in [`crate::cpu`], which the
/// kernels use without this module); the SIMD entry points from
/// [`crate::kernels::Kernels`] and [`crate::vtanh::VTanh`].
pub trait Real: Float + crate::kernels::Kernels + crate::vtanh::VTanh {
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
/// Fills `buf`, rows of `d` values, with rows `row0, row0 + 1, ...` of stream `s` times
/// `std` ([`Real::fill_normal_row`]), the rows shared out over the threads of `par`: the
/// same values either way. The one way the block weights are made
/// ([`Weights::draw`]) and remade ([`crate::factored::Init::Regenerated`]).
pub fn fill_rows<T: Real>(s: &Stream, row0: u64, std: f64, d: usize, buf: &mut [T], par: Par) {
    if d == 0 {
        return;
    }
    let job = |(i, out): (usize, &mut [T])| T::fill_normal_row(s, row0 + i as u64, std, out);
    if par == Par::Rayon {
        use rayon::prelude::*;
        buf.par_chunks_mut(d).enumerate().for_each(job);
    } else {
        buf.chunks_mut(d).enumerate().for_each(job);
    }
}

impl Real for f64 {
    fn fill_normal_row(s: &Stream, row: u64, scale: f64, out: &mut [Self]) {
        s.fill_normal_row(row, 0, scale, out)
    }
}
impl Real for f32 {
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
    /// The identity (the linear experiments of docs/papers.md section 2.5, E2).
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
            Activation::Gelu | Activation::Softplus => {
                let (f, d1, _) = self.f_d1_d2(x);
                (f, d1)
            }
            _ => (self.f(x), self.d1(x)),
        }
    }

    /// (sigma(x), sigma'(x), sigma''(x)) in the operations of [`Activation::f`],
    /// [`Activation::d1`] and [`Activation::d2`] (the same bits), sharing one exponential
    /// (softplus: and one log1p; gelu: and one erfc) among the three.
    #[inline]
    pub fn f_d1_d2<T: Real>(self, x: T) -> (T, T, T) {
        match self {
            Activation::Softplus => {
                let (e, s) = softplus_parts(x);
                (x.max(T::zero()) + e.ln_1p(), s, s * (T::one() - s))
            }
            Activation::Gelu => {
                let v = x.to();
                let (cdf, e) = gelu_parts(v);
                (
                    T::of(v * cdf),
                    T::of(cdf + v * INV_SQRT_2PI * e),
                    T::of(INV_SQRT_2PI * e * (2.0 - v * v)),
                )
            }
            _ => (self.f(x), self.d1(x), self.d2(x)),
        }
    }

    /// (sigma'(x), sigma''(x)) in the operations of [`Activation::d1`] and
    /// [`Activation::d2`] (the same bits), sharing one exponential (gelu: and one erfc);
    /// [`Activation::f_d1_d2`] without sigma's log1p (softplus) or product (gelu).
    #[inline]
    pub fn d1_d2<T: Real>(self, x: T) -> (T, T) {
        match self {
            Activation::Softplus => {
                let (_, s) = softplus_parts(x);
                (s, s * (T::one() - s))
            }
            Activation::Gelu => {
                let v = x.to();
                let (cdf, e) = gelu_parts(v);
                (
                    T::of(cdf + v * INV_SQRT_2PI * e),
                    T::of(INV_SQRT_2PI * e * (2.0 - v * v)),
                )
            }
            _ => (self.d1(x), self.d2(x)),
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

/// Softplus's `(exp(-|x|), sigmoid(x))`: the exp(-x) of [`sigmoid`] for x >= 0, its
/// exp(x) below, and the sigmoid from it in the same operations.
#[inline]
fn softplus_parts<T: Real>(x: T) -> (T, T) {
    let e = (-x.abs()).exp();
    let s = if x >= T::zero() {
        T::one() / (T::one() + e)
    } else {
        e / (T::one() + e)
    };
    (e, s)
}

/// Gelu's `(Phi(v), exp(-v^2 / 2))`.
#[inline]
fn gelu_parts(v: f64) -> (f64, f64) {
    (phi_cdf(v), (-0.5 * v * v).exp())
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
    /// Seeded synthetic regression as in the paper (docs/papers.md 2.5, E1): X and Y with
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

/// How the block weights U_l, V_l are laid out in [`Weights::ut`], [`Weights::vt`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BlockLayout {
    /// The storage layout: U_l^T, V_l^T as M rows of length D (one row per hidden unit).
    #[default]
    RowsD,
    /// U_l, V_l as D rows of length M (for the step on rows of M when M > D).
    RowsM,
}

/// The weights of one ResNet, in precision `T`.
#[derive(Debug, PartialEq)]
pub struct Weights<T> {
    pub dims: Dims,
    pub we: Vec<T>,
    /// On 64-byte boundaries and huge pages ([`Aligned`]); laid out as `layout` says.
    pub ut: Aligned<T>,
    pub vt: Aligned<T>,
    pub wu: Vec<T>,
    /// The layout of `ut`, `vt` ([`Weights::lay_out`] changes it).
    pub layout: BlockLayout,
}

impl<T: Copy> Clone for Weights<T> {
    fn clone(&self) -> Self {
        Weights {
            dims: self.dims,
            we: self.we.clone(),
            ut: self.ut.clone(),
            vt: self.vt.clone(),
            wu: self.wu.clone(),
            layout: self.layout,
        }
    }
}

impl<T: Real> Weights<T> {
    /// Lays the blocks out as `layout`: transposes every U_l and V_l in place if they
    /// are laid out otherwise (the storage layout U_l^T, V_l^T as M x D, row-major, to
    /// U_l, V_l as D x M, or back); nothing if they already are.
    pub fn lay_out(&mut self, layout: BlockLayout) {
        if layout == self.layout {
            return;
        }
        let to_rows_m = layout == BlockLayout::RowsM;
        self.layout = layout;
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
    pub fn draw(dims: &Dims, r: &Resolved, embed_seed: u64, block_seed: u64, par: Par) -> Self {
        Self::try_draw(dims, r, embed_seed, block_seed, par).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Weights::draw`], or an error if L x M x D overflows or cannot be allocated.
    pub fn try_draw(
        dims: &Dims,
        r: &Resolved,
        embed_seed: u64,
        block_seed: u64,
        par: Par,
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
                fill_rows(&s, 0, std, d, block, Par::Seq);
            };
            if par == Par::Rayon {
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
            layout: BlockLayout::RowsD,
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
        Ok(Self::from_reference_layout(dims, &we, &wu, &u, &v))
    }

    /// The weights from arrays in the layout of `shared/reference/README.md`: `we`
    /// (D, d_in), `wu` (D, d_out), `u`, `v` (L, D, M), C order, whose lengths the caller
    /// has checked against `dims`.
    fn from_reference_layout(dims: &Dims, we: &[f64], wu: &[f64], u: &[f64], v: &[f64]) -> Self {
        let (l, m, d) = (dims.l, dims.m, dims.d);
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
        Weights {
            dims: *dims,
            we: we.iter().map(|&x| T::of(x)).collect(),
            ut: tr(u),
            vt: tr(v),
            wu: wu.iter().map(|&x| T::of(x)).collect(),
            layout: BlockLayout::RowsD,
        }
    }
}

/// A run's starting point given as arrays instead of an `--init-npy` directory (the
/// Python package's `init=`): the same six arrays in the same layout (float64, C order),
/// `x` (d_in, N), `y` (d_out, N), `we` (D, d_in), `wu` (D, d_out), `u` and `v`
/// (L, D, M). [`InitArrays::dims`] checks them against each other.
#[derive(Debug, Clone, PartialEq)]
pub struct InitArrays {
    pub x: io::NpyArray,
    pub y: io::NpyArray,
    pub we: io::NpyArray,
    pub wu: io::NpyArray,
    pub u: io::NpyArray,
    pub v: io::NpyArray,
}

/// Init arrays that do not fit together; each message names the array (as the Python
/// package's `init` key) and the shape it should have.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum InitError {
    #[error("init array '{name}': expected shape {expected}, found {found:?}")]
    Shape {
        name: &'static str,
        expected: String,
        found: Vec<usize>,
    },
    #[error(
        "init array '{name}': dimension {dim} is 0 (shape {shape:?}); every dimension must be positive"
    )]
    Empty {
        name: &'static str,
        dim: &'static str,
        shape: Vec<usize>,
    },
    #[error("init array '{name}': entry {index} (flat, C order) is not finite ({value})")]
    NonFinite {
        name: &'static str,
        index: usize,
        value: f64,
    },
}

impl InitArrays {
    /// The arrays with their names, in the order X, Y, WE, WU, U, V.
    fn named(&self) -> [(&'static str, &io::NpyArray); 6] {
        [
            ("X", &self.x),
            ("Y", &self.y),
            ("WE", &self.we),
            ("WU", &self.wu),
            ("U", &self.u),
            ("V", &self.v),
        ]
    }

    /// The dimensions the arrays define, once every shape agrees with the others, no
    /// dimension is 0 and every entry is finite.
    pub fn dims(&self) -> Result<Dims, InitError> {
        let shape = |name: &'static str, a: &io::NpyArray, axes: &[&'static str]| {
            if a.shape.len() != axes.len() {
                return Err(InitError::Shape {
                    name,
                    expected: format!("({})", axes.join(", ")),
                    found: a.shape.clone(),
                });
            }
            if let Some(i) = a.shape.iter().position(|&s| s == 0) {
                return Err(InitError::Empty {
                    name,
                    dim: axes[i],
                    shape: a.shape.clone(),
                });
            }
            Ok(())
        };
        shape("X", &self.x, &["d_in", "N"])?;
        shape("Y", &self.y, &["d_out", "N"])?;
        shape("WE", &self.we, &["D", "d_in"])?;
        shape("WU", &self.wu, &["D", "d_out"])?;
        shape("U", &self.u, &["L", "D", "M"])?;
        shape("V", &self.v, &["L", "D", "M"])?;
        let (din, n) = (self.x.shape[0], self.x.shape[1]);
        let dout = self.y.shape[0];
        let (l, d, m) = (self.u.shape[0], self.u.shape[1], self.u.shape[2]);
        let expect = |name: &'static str, a: &io::NpyArray, want: Vec<usize>, text: String| {
            if a.shape != want {
                return Err(InitError::Shape {
                    name,
                    expected: text,
                    found: a.shape.clone(),
                });
            }
            Ok(())
        };
        expect(
            "Y",
            &self.y,
            vec![dout, n],
            format!("(d_out, N) with N = {n} from X"),
        )?;
        expect(
            "WE",
            &self.we,
            vec![d, din],
            format!("(D, d_in) = ({d}, {din}) from U and X"),
        )?;
        expect(
            "WU",
            &self.wu,
            vec![d, dout],
            format!("(D, d_out) = ({d}, {dout}) from U and Y"),
        )?;
        expect(
            "V",
            &self.v,
            vec![l, d, m],
            format!("(L, D, M) = ({l}, {d}, {m}) from U"),
        )?;
        for (name, a) in self.named() {
            if let Some((index, &value)) = a.data.iter().enumerate().find(|(_, x)| !x.is_finite()) {
                return Err(InitError::NonFinite { name, index, value });
            }
        }
        Ok(Dims {
            l,
            m,
            d,
            din,
            dout,
            n,
        })
    }

    /// The training data X, Y.
    pub fn data(&self) -> Data {
        Data {
            din: self.x.shape[0],
            dout: self.y.shape[0],
            n: self.x.shape[1],
            x: self.x.data.clone(),
            y: self.y.data.clone(),
        }
    }

    /// The weights, for `dims` = [`InitArrays::dims`].
    pub fn weights<T: Real>(&self, dims: &Dims) -> Weights<T> {
        Weights::from_reference_layout(
            dims,
            &self.we.data,
            &self.wu.data,
            &self.u.data,
            &self.v.data,
        )
    }

    /// Bytes the arrays hold.
    pub fn bytes(&self) -> usize {
        self.named().iter().map(|(_, a)| a.data.len() * 8).sum()
    }

    /// Each array's shape by name (what a run's metadata records of them).
    pub fn shapes(&self) -> std::collections::BTreeMap<&'static str, Vec<usize>> {
        self.named()
            .iter()
            .map(|(n, a)| (*n, a.shape.clone()))
            .collect()
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

    fn arr(shape: &[usize], f: impl Fn(usize) -> f64) -> io::NpyArray {
        let n = shape.iter().product();
        io::NpyArray {
            shape: shape.to_vec(),
            data: (0..n).map(f).collect(),
        }
    }

    #[test]
    fn init_arrays_give_their_dims_and_name_the_array_that_does_not_fit() {
        let (l, m, d, din, dout, n) = (2, 3, 4, 2, 1, 5);
        let good = InitArrays {
            x: arr(&[din, n], |i| i as f64),
            y: arr(&[dout, n], |i| -(i as f64)),
            we: arr(&[d, din], |i| 0.1 * i as f64),
            wu: arr(&[d, dout], |i| 0.2 * i as f64),
            u: arr(&[l, d, m], |i| 0.01 * i as f64),
            v: arr(&[l, d, m], |i| -0.01 * i as f64),
        };
        let dims = good.dims().unwrap();
        assert_eq!(
            (dims.l, dims.m, dims.d, dims.din, dims.dout, dims.n),
            (l, m, d, din, dout, n)
        );
        // The weights are those of an NPY directory with the same arrays: U_l^T row mm,
        // column dd is U[l, dd, mm].
        let w = good.weights::<f64>(&dims);
        assert_eq!(w.ut[m * d + 2 * d + 3], good.u.data[d * m + 3 * m + 2]);
        assert_eq!(good.data().y, good.y.data);
        let msg = |a: InitArrays| a.dims().unwrap_err().to_string();
        let e = msg(InitArrays {
            v: arr(&[l, d, m + 1], |_| 0.0),
            ..good.clone()
        });
        assert!(
            e.contains("'V'") && e.contains("(L, D, M) = (2, 4, 3)"),
            "{e}"
        );
        let e = msg(InitArrays {
            y: arr(&[dout, n - 1], |_| 0.0),
            ..good.clone()
        });
        assert!(e.contains("'Y'") && e.contains("N = 5"), "{e}");
        let e = msg(InitArrays {
            x: arr(&[din * n], |_| 0.0),
            ..good.clone()
        });
        assert!(e.contains("'X'") && e.contains("(d_in, N)"), "{e}");
        let e = msg(InitArrays {
            u: arr(&[l, 0, m], |_| 0.0),
            ..good.clone()
        });
        assert!(e.contains("'U'") && e.contains("dimension D"), "{e}");
        let e = msg(InitArrays {
            wu: arr(&[d, dout], |i| if i == 3 { f64::NAN } else { 0.0 }),
            ..good.clone()
        });
        assert!(e.contains("'WU'") && e.contains("entry 3"), "{e}");
    }

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
        let e = Weights::<f64>::try_draw(&dims, &r, 1, 2, Par::Seq).unwrap_err();
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
        let a = Weights::<f64>::draw(&dims, &r, 1, 2, Par::Seq);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let b = pool.install(|| Weights::<f64>::draw(&dims, &r, 1, 2, Par::Rayon));
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
            Par::Seq,
        );
        assert_eq!(&c.we[..14], &a.we[..]);
        let f = Weights::<f32>::draw(&dims, &r, 1, 2, Par::Seq);
        assert_eq!(f.ut[4], a.ut[4] as f32);
    }
}
