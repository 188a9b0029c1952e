//! Low-rank gradient descent: the block weights kept as their initialization plus the sum
//! of the rank-N updates, shared by networks that differ only in their embeddings.
//!
//! Every GD update of the dense step ([`crate::train`]) is rank N (N samples):
//!
//! ```text
//! U_l^T <- U_l^T - c_U G_l h_l^T            c_U = eta lr_U m_U   (M x N times N x D)
//! V_l^T <- V_l^T - c_V sigma(p_l) g_{l+1}^T c_V = eta lr_V m_V
//! ```
//!
//! so after k steps `U_l^T(k) = U_l^T(0) - A_l B_l`, with A_l (M x kN) the stacked
//! `c_U G_l` and B_l (kN x D) the stacked h_l (likewise for V with `c_V sigma(p_l)` and
//! g_{l+1}; A is stored transposed). Each product of the step splits into a pass over the initial weights and a
//! product with the factors:
//!
//! ```text
//! U^T(k) h            = U^T(0) h - A (B h)                   MDN + (M + D) kN^2 flops
//! sum_m a_m U^T(k)_m  = sum_m a_m U^T(0)_m - (a^T A) B
//! ```
//!
//! The initial weights are then only read (two passes per step instead of the dense
//! step's read, read and write), and networks that share them, such as a sweep's coupled
//! and uncoupled variants (docs/papers.md 2.4: same U, V, different W_E, W_U), read them once
//! for all: each pass runs over all variants' samples together. The update after the last
//! recorded forward pass is not made (nothing observes it). In exact arithmetic the
//! records are those of the dense step; in floating point they differ by rounding.
//! Cheaper than the dense step when the rank stays small against M and D
//! ([`worth_it`]).
//!
//! **Regenerated initial weights** ([`Init::Regenerated`]). Every initial weight is a
//! pure function of its (seed, tensor, layer, row, column) address ([`crate::rng`]), so
//! the initial matrices need not be stored: each pass over U_l^T(0) or V_l^T(0) fills a
//! block of [`regen_block_rows`] rows (about 256 KiB, in cache; at least 16 rows) with the row filler that
//! [`crate::model::Weights::draw`] uses and runs the same kernel on the block, block after
//! block. Memory then grows like `L K N (M + D)` (the factors) instead of `L M D`, and the
//! passes cost the row filler's time instead of memory bandwidth. The dot passes give the
//! same bits as over stored weights (each output row is one row's dot products); the
//! axpy passes sum the rows block by block, so the results differ from the stored
//! backend by rounding only. The block size depends on D and the precision alone, never on
//! the thread count: the results do not either.

use crate::cpu::Par;
use crate::kernels;
use crate::memory::{self, MemoryError};
use crate::model::{Data, Real};
use crate::param::{Dims, Resolved};
use crate::rng::{Stream, Tensor};
use crate::train::{self, History, TrainError, TrainOptions};

/// One network sharing the initial block weights: its own embedding and unembedding.
#[derive(Debug, Clone)]
pub struct Variant<T> {
    /// D x d_in.
    pub we: Vec<T>,
    /// D x d_out.
    pub wu: Vec<T>,
    /// Record h_L (at `TrainOptions::hidden_steps`).
    pub record_hidden: bool,
}

/// Whether the low-rank step beats the dense one for K steps of N samples shared by
/// `variants` networks. Per step and layer the dense step moves 3 MD values per network
/// (and makes 3 MDN multiply-adds); the low-rank one moves 2 MD values in all, plus
/// factors of about (M + D) kN / 2 values per network and pass.
pub fn worth_it(dims: &Dims, steps: usize, variants: usize) -> bool {
    let (m, d) = (dims.m as f64, dims.d as f64);
    let rank = (steps.saturating_sub(1) * dims.n) as f64;
    let dense = 3.0 * m * d * variants as f64;
    let lowrank = 2.0 * m * d + variants as f64 * 4.0 * (m + d) * rank / 2.0;
    lowrank < dense
}

/// Bytes the low-rank run needs besides the initial weights; an error naming the
/// quantities if the count overflows.
pub fn bytes<T>(dims: &Dims, steps: usize, variants: usize) -> Result<usize, MemoryError> {
    let (l, m, d, n) = (dims.l, dims.m, dims.d, dims.n);
    let s = std::mem::size_of::<T>();
    let rmax = memory::product(&[("steps - 1", steps.saturating_sub(1)), ("N", n)])?;
    let vn = memory::product(&[("variants", variants), ("N", n)])?;
    let md = memory::sum(&[("M", m), ("D", d)])?;
    let l1 = memory::sum(&[("L", l), ("1", 1)])?;
    let p = |f: &[(&str, usize)]| memory::product(f);
    let values = memory::sum(&[
        (
            "factors",
            p(&[
                ("variants", variants),
                ("2", 2),
                ("L", l),
                ("M + D", md),
                ("rank", rmax),
            ])?,
        ),
        ("h", p(&[("L + 1", l1), ("variants x N", vn), ("D", d)])?),
        (
            "p, s, ds",
            p(&[("3", 3), ("L", l), ("M", m), ("variants x N", vn)])?,
        ),
        (
            "ca, q, scratch",
            p(&[("3", 3), ("M", m), ("variants x N", vn)])?,
        ),
        ("g, g2", p(&[("2", 2), ("variants x N", vn), ("D", d)])?),
        ("products", p(&[("4", 4), ("rank", rmax), ("N", n)])?),
        ("N x M", p(&[("2", 2), ("M", m), ("N", n)])?),
    ])?;
    memory::product(&[("values", values), ("bytes", s)])
}

/// The factors of one tensor role for one network: per layer A^T (rmax x M, row j the
/// j-th column of A) and B (rmax x D), of which the first `rank` rows are filled. Both
/// are stored as rows so that every factor product streams long rows of M or D.
struct Factors<T> {
    at: Vec<T>,
    b: Vec<T>,
    rank: usize,
}

impl<T: Real> Factors<T> {
    fn new(l: usize, m: usize, d: usize, rmax: usize) -> Self {
        Factors {
            at: vec![T::zero(); l * rmax * m],
            b: vec![T::zero(); l * rmax * d],
            rank: 0,
        }
    }
}

/// Scratch for the factor products (sizes for rank <= rmax, N samples).
struct Small<T> {
    /// rank x N.
    z: Vec<T>,
    /// N x M.
    nm: Vec<T>,
}

/// Geometry shared by the helpers.
#[derive(Clone, Copy)]
struct Geo {
    m: usize,
    d: usize,
    n: usize,
    vn: usize,
}

/// `out[m][off + n] -= scale * sum_j A[m][j] (B x^T)[j][n]` for x (N x D): the factor part
/// of a dot pass (`out` is M x VN).
#[allow(clippy::too_many_arguments)]
fn factor_dot<T: Real>(
    g: Geo,
    at: &[T],
    b: &[T],
    rank: usize,
    x: &[T],
    scale: T,
    out: &mut [T],
    off: usize,
    sm: &mut Small<T>,
) {
    if rank == 0 {
        return;
    }
    let n = g.n;
    // z = B x^T (rank x N); (A z)^T = sum_j z[j] A^T_j (N x M).
    kernels::dot_ro(b, rank, g.d, g.d, x, g.d, n, T::one(), &mut sm.z, Par::Seq);
    sm.nm.fill(T::zero());
    kernels::axpy_ro(at, rank, g.m, g.m, &sm.z, n, &mut sm.nm, Par::Seq);
    for mm in 0..g.m {
        for k in 0..n {
            let o = &mut out[mm * g.vn + off + k];
            *o -= scale * sm.nm[k * g.m + mm];
        }
    }
}

/// `tgt_n -= sum_j (sum_m coef[m][off + n] A[m][j]) B_j` (tgt: N x D; coef: M x VN): the
/// factor part of an axpy pass.
#[allow(clippy::too_many_arguments)]
fn factor_axpy<T: Real>(
    g: Geo,
    at: &[T],
    b: &[T],
    rank: usize,
    coef: &[T],
    off: usize,
    tgt: &mut [T],
    sm: &mut Small<T>,
) {
    if rank == 0 {
        return;
    }
    let n = g.n;
    for mm in 0..g.m {
        for k in 0..n {
            sm.nm[k * g.m + mm] = coef[mm * g.vn + off + k];
        }
    }
    // z[j][n] = <A^T_j, coef_n> (rank x N), then tgt_n -= sum_j z[j][n] B_j.
    kernels::dot_ro(
        at,
        rank,
        g.m,
        g.m,
        &sm.nm,
        g.m,
        n,
        -T::one(),
        &mut sm.z,
        Par::Seq,
    );
    kernels::axpy_ro(b, rank, g.d, g.d, &sm.z, n, tgt, Par::Seq);
}

/// Where the low-rank step reads the initial block weights U_l^T(0), V_l^T(0) from.
#[derive(Debug, Clone, Copy)]
pub enum Init<'a, T> {
    /// Stored: L x M x D each, row-major U_l^T, V_l^T (as [`crate::model::Weights`] holds
    /// them in [`crate::model::BlockLayout::RowsD`]); only read.
    Stored { ut0: &'a [T], vt0: &'a [T] },
    /// Regenerated in row blocks inside each pass, never held whole: the rows
    /// [`crate::model::Weights::draw`] makes from `block_seed` (stream (seed, U or V,
    /// layer), row = hidden unit), with standard deviations `std_u`, `std_v`
    /// ([`crate::param::Resolved`]'s `u.std`, `v.std`).
    Regenerated {
        block_seed: u64,
        std_u: f64,
        std_v: f64,
    },
}

/// Rows per block of a regenerated pass: about 256 KiB of weights (a block stays in the
/// L2 cache between its generation and its kernel), at least 16 rows (so that the threads
/// filling a block share it evenly at large D). A function of D and the precision only,
/// so that the results do not depend on the thread count.
pub fn regen_block_rows<T>(d: usize) -> usize {
    const BLOCK_BYTES: usize = 256 * 1024;
    (BLOCK_BYTES / (d.max(1) * std::mem::size_of::<T>())).max(16)
}

/// Bytes of the regenerated backend's block buffer for width D (besides [`bytes`]).
pub fn regen_scratch_bytes<T>(m: usize, d: usize) -> Result<usize, MemoryError> {
    memory::product(&[
        ("rows per block", regen_block_rows::<T>(d).min(m.max(1))),
        ("D", d),
        ("bytes", std::mem::size_of::<T>()),
    ])
}

/// The passes over one layer's initial weights, from [`Init`].
struct InitPasses<'a, T> {
    init: Init<'a, T>,
    m: usize,
    d: usize,
    /// Rows per block ([`regen_block_rows`]; smaller in tests).
    rows: usize,
    /// The regenerated backend's block (rows x D).
    block: Vec<T>,
}

/// Which initial tensor a pass reads.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Which {
    U,
    V,
}

impl<'a, T: Real> InitPasses<'a, T> {
    fn new(init: Init<'a, T>, m: usize, d: usize, rows: usize) -> Self {
        let rows = rows.clamp(1, m.max(1));
        let block = match init {
            Init::Stored { .. } => Vec::new(),
            Init::Regenerated { .. } => vec![T::zero(); rows * d],
        };
        InitPasses {
            init,
            m,
            d,
            rows,
            block,
        }
    }

    /// Fills the block with rows `m0..m0 + rows` of layer `l`'s initial `which`.
    fn fill(&mut self, which: Which, l: usize, m0: usize, rows: usize, par: Par) {
        let Init::Regenerated {
            block_seed,
            std_u,
            std_v,
        } = self.init
        else {
            unreachable!("only the regenerated backend fills blocks")
        };
        let (tensor, std) = match which {
            Which::U => (Tensor::U, std_u),
            Which::V => (Tensor::V, std_v),
        };
        let s = Stream::new(block_seed, tensor, l as u64);
        let d = self.d;
        crate::model::fill_rows(&s, m0 as u64, std, d, &mut self.block[..rows * d], par);
    }

    /// Regenerates layer `l`'s initial `which` block by block, in row order, and hands
    /// each block (rows x D) to `pass` with its first row and row count.
    fn blocks(
        &mut self,
        which: Which,
        l: usize,
        par: Par,
        mut pass: impl FnMut(&[T], usize, usize),
    ) {
        let mut m0 = 0;
        while m0 < self.m {
            let rows = self.rows.min(self.m - m0);
            self.fill(which, l, m0, rows, par);
            pass(&self.block[..rows * self.d], m0, rows);
            m0 += rows;
        }
    }

    /// `out[m][n] = scale <W_l(0) row m, x_n>` (out: M x N; x: N x D), W = `which`.
    #[allow(clippy::too_many_arguments)]
    fn dot(
        &mut self,
        which: Which,
        l: usize,
        x: &[T],
        n: usize,
        scale: T,
        out: &mut [T],
        par: Par,
    ) {
        let (m, d) = (self.m, self.d);
        match self.init {
            Init::Stored { ut0, vt0 } => {
                let w = if which == Which::U { ut0 } else { vt0 };
                kernels::dot_ro(
                    &w[l * m * d..(l + 1) * m * d],
                    m,
                    d,
                    d,
                    x,
                    d,
                    n,
                    scale,
                    out,
                    par,
                );
            }
            Init::Regenerated { .. } => self.blocks(which, l, par, |block, m0, rows| {
                let o = &mut out[m0 * n..(m0 + rows) * n];
                kernels::dot_ro(block, rows, d, d, x, d, n, scale, o, par);
            }),
        }
    }

    /// `tgt_n += sum_m a[m][n] W_l(0) row m` (tgt: N x D; a: M x N), W = `which`.
    fn axpy(&mut self, which: Which, l: usize, a: &[T], n: usize, tgt: &mut [T], par: Par) {
        let (m, d) = (self.m, self.d);
        match self.init {
            Init::Stored { ut0, vt0 } => {
                let w = if which == Which::U { ut0 } else { vt0 };
                kernels::axpy_ro(&w[l * m * d..(l + 1) * m * d], m, d, d, a, n, tgt, par);
            }
            Init::Regenerated { .. } => self.blocks(which, l, par, |block, m0, rows| {
                let ab = &a[m0 * n..(m0 + rows) * n];
                kernels::axpy_ro(block, rows, d, d, ab, n, tgt, par);
            }),
        }
    }
}

/// K steps of GD for every variant, from the shared initial block weights `ut0`, `vt0`
/// (L x M x D each, row-major U_l^T, V_l^T; only read). Records as [`train::train`]
/// (`opts.record_hidden` is taken per variant); layer statistics need the dense step.
#[allow(clippy::too_many_arguments)]
pub fn train_shared<T: Real>(
    dims: &Dims,
    ut0: &[T],
    vt0: &[T],
    variants: &mut [Variant<T>],
    data: &Data,
    r: &Resolved,
    opts: &TrainOptions,
    par: Par,
) -> Result<Vec<History>, TrainError> {
    let n_blocks = memory::product(&[("L", dims.l), ("M", dims.m), ("D", dims.d)])?;
    if ut0.len() != n_blocks || vt0.len() != n_blocks {
        return Err(TrainError::Mismatch(format!(
            "the initial block weights hold {} and {} values, L x M x D = {n_blocks}",
            ut0.len(),
            vt0.len()
        )));
    }
    train_shared_from(
        dims,
        Init::Stored { ut0, vt0 },
        variants,
        data,
        r,
        opts,
        par,
    )
}

/// [`train_shared`] with the initial block weights from `init`: stored, or regenerated
/// in row blocks inside each pass ([`Init::Regenerated`], module docs).
#[allow(clippy::too_many_arguments)]
pub fn train_shared_from<T: Real>(
    dims: &Dims,
    init: Init<'_, T>,
    variants: &mut [Variant<T>],
    data: &Data,
    r: &Resolved,
    opts: &TrainOptions,
    par: Par,
) -> Result<Vec<History>, TrainError> {
    train_shared_observed(dims, init, variants, data, r, opts, par, &mut |_, _| {})
}

/// [`train_shared_from`] that calls `on_step(k, losses)` after step k with the losses of
/// every variant at that step (for progress bars, as [`train::train`]'s `on_step`).
#[allow(clippy::too_many_arguments)]
pub fn train_shared_observed<T: Real>(
    dims: &Dims,
    init: Init<'_, T>,
    variants: &mut [Variant<T>],
    data: &Data,
    r: &Resolved,
    opts: &TrainOptions,
    par: Par,
    on_step: &mut dyn FnMut(usize, &[f64]),
) -> Result<Vec<History>, TrainError> {
    let rows = regen_block_rows::<T>(dims.d);
    train_shared_blocks(dims, init, rows, variants, data, r, opts, par, on_step)
}

/// [`train_shared_observed`] with `block_rows` rows per regenerated block.
#[allow(clippy::too_many_arguments)]
fn train_shared_blocks<T: Real>(
    dims: &Dims,
    init: Init<'_, T>,
    block_rows: usize,
    variants: &mut [Variant<T>],
    data: &Data,
    r: &Resolved,
    opts: &TrainOptions,
    par: Par,
    on_step: &mut dyn FnMut(usize, &[f64]),
) -> Result<Vec<History>, TrainError> {
    train::check_data(dims, data)?;
    if opts.layer_stats {
        return Err(TrainError::Mismatch(
            "layer statistics need the dense step".into(),
        ));
    }
    let (l_n, m, d, n) = (dims.l, dims.m, dims.d, data.n);
    let nv = variants.len();
    // Every buffer below is sized from these: checked once, here.
    bytes::<T>(&Dims { n, ..*dims }, opts.steps, nv)?;
    memory::product(&[
        ("steps", opts.steps),
        ("dout", dims.dout),
        ("N", n),
        ("8", 8),
    ])?;
    memory::product(&[("steps", opts.steps), ("D", d), ("N", n), ("8", 8)])?;
    let vn = nv * n;
    if let Init::Regenerated { .. } = init {
        regen_scratch_bytes::<T>(m, d)?;
    }
    let mut passes = InitPasses::new(init, m, d, block_rows);
    let rmax = opts.steps.saturating_sub(1) * n;
    let geo = Geo { m, d, n, vn };
    let mut fu: Vec<Factors<T>> = (0..nv).map(|_| Factors::new(l_n, m, d, rmax)).collect();
    let mut fv: Vec<Factors<T>> = (0..nv).map(|_| Factors::new(l_n, m, d, rmax)).collect();
    let mut sm = Small {
        z: vec![T::zero(); rmax * n],
        nm: vec![T::zero(); n * m],
    };
    let mut h = vec![T::zero(); (l_n + 1) * vn * d];
    let mut p = vec![T::zero(); l_n * m * vn];
    let mut sg = vec![T::zero(); l_n * m * vn];
    let mut ds = vec![T::zero(); l_n * m * vn];
    let mut ca = vec![T::zero(); m * vn];
    let mut q = vec![T::zero(); m * vn];
    let mut g = vec![T::zero(); vn * d];
    let mut g2 = vec![T::zero(); vn * d];
    let (dout, din) = (dims.dout, dims.din);
    let mut f = vec![vec![0.0; dout * n]; nv];
    let mut dldf = vec![vec![0.0; dout * n]; nv];
    let mut hist: Vec<History> = variants
        .iter()
        .map(|v| History {
            losses: Vec::with_capacity(opts.steps),
            outputs: Vec::with_capacity(opts.steps * dout * n),
            hidden: Vec::with_capacity(if v.record_hidden {
                opts.steps * d * n
            } else {
                0
            }),
            ..History::default()
        })
        .collect();
    let (mu, mv) = (T::of(r.u.mult), T::of(r.v.mult));
    let cu = T::of(opts.eta * r.u.lr * r.u.mult);
    let cv = T::of(opts.eta * r.v.lr * r.v.mult);
    let fa = |l: usize| l * rmax * m..(l + 1) * rmax * m;
    let fb = |l: usize| l * rmax * d..(l + 1) * rmax * d;
    let diverged = |step, layer, what| TrainError::Diverged { step, layer, what };
    let mut step_losses = vec![0.0; nv];
    for k in 0..opts.steps {
        train::check_cancel(opts, k)?;
        // Forward, all variants together.
        for (v, var) in variants.iter().enumerate() {
            assert_eq!(var.we.len(), d * din);
            train::embed(&var.we, data, r, d, &mut h[v * n * d..(v + 1) * n * d]);
        }
        if !train::all_finite(&h[..vn * d]) {
            return Err(diverged(k, Some(0), "h"));
        }
        for l in 0..l_n {
            let (lo, hi) = h.split_at_mut((l + 1) * vn * d);
            let h_l = &lo[l * vn * d..];
            let h_next = &mut hi[..vn * d];
            let pl = &mut p[l * m * vn..(l + 1) * m * vn];
            passes.dot(Which::U, l, h_l, vn, mu, pl, par);
            for v in 0..nv {
                let x = &h_l[v * n * d..(v + 1) * n * d];
                let fuv = &fu[v];
                factor_dot(
                    geo,
                    &fuv.at[fa(l)],
                    &fuv.b[fb(l)],
                    fuv.rank,
                    x,
                    mu,
                    pl,
                    v * n,
                    &mut sm,
                );
            }
            let sl = &mut sg[l * m * vn..(l + 1) * m * vn];
            let dsl = &mut ds[l * m * vn..(l + 1) * m * vn];
            train::activate(opts.activation, mv, pl, sl, dsl, &mut ca, par);
            h_next.copy_from_slice(h_l);
            passes.axpy(Which::V, l, &ca, vn, h_next, par);
            for v in 0..nv {
                let fvv = &fv[v];
                let t = &mut h_next[v * n * d..(v + 1) * n * d];
                factor_axpy(
                    geo,
                    &fvv.at[fa(l)],
                    &fvv.b[fb(l)],
                    fvv.rank,
                    &ca,
                    v * n,
                    t,
                    &mut sm,
                );
            }
            if !train::all_finite(h_next) {
                return Err(diverged(k, Some(l + 1), "h"));
            }
        }
        let h_last = &h[l_n * vn * d..];
        for (v, var) in variants.iter().enumerate() {
            let hv = &h_last[v * n * d..(v + 1) * n * d];
            let loss = train::readout(&var.wu, data, r, hv, d, &mut f[v], &mut dldf[v]);
            if !loss.is_finite() {
                return Err(train::loss_overflow(k, &f[v], &data.y, n));
            }
            let hs = &mut hist[v];
            train::check_growth(opts, k, loss, hs.losses.first().copied().unwrap_or(loss))?;
            hs.losses.push(loss);
            step_losses[v] = loss;
            hs.outputs.extend_from_slice(&f[v]);
            let want =
                var.record_hidden && opts.hidden_steps.as_ref().is_none_or(|s| s.contains(&k));
            if want {
                hs.hidden_steps.push(k);
                for dd in 0..d {
                    for s in 0..n {
                        hs.hidden.push(hv[s * d + dd].to());
                    }
                }
            }
            if opts.layer_steps.contains(&k) {
                hs.layer_steps.push(k);
                for ll in 0..=l_n {
                    let hl = &h[ll * vn * d + v * n * d..][..n * d];
                    hs.layers
                        .extend((0..d * n).map(|i| hl[(i % n) * d + i / n].to()));
                }
            }
        }
        if k + 1 == opts.steps {
            on_step(k, &step_losses);
            break;
        }
        // Backward: the same recursion as the dense step, the updates appended to the
        // factors after their layer's products.
        for (v, var) in variants.iter_mut().enumerate() {
            let hv = &h[l_n * vn * d + v * n * d..][..n * d];
            let gv = &mut g[v * n * d..(v + 1) * n * d];
            train::head_backward(&mut var.wu, data, r, opts.eta, &dldf[v], hv, d, gv);
        }
        for l in (0..l_n).rev() {
            let sl = &sg[l * m * vn..(l + 1) * m * vn];
            let dsl = &ds[l * m * vn..(l + 1) * m * vn];
            // q = m_V V^T(k) g.
            passes.dot(Which::V, l, &g, vn, mv, &mut q, par);
            for v in 0..nv {
                let x = &g[v * n * d..(v + 1) * n * d];
                let f = &fv[v];
                factor_dot(
                    geo,
                    &f.at[fa(l)],
                    &f.b[fb(l)],
                    f.rank,
                    x,
                    mv,
                    &mut q,
                    v * n,
                    &mut sm,
                );
            }
            if r.v.trained {
                for (v, f) in fv.iter_mut().enumerate() {
                    let rk = f.rank;
                    let at = &mut f.at[fa(l)];
                    for mm in 0..m {
                        for s in 0..n {
                            at[(rk + s) * m + mm] = cv * sl[mm * vn + v * n + s];
                        }
                    }
                    f.b[fb(l)][rk * d..(rk + n) * d].copy_from_slice(&g[v * n * d..][..n * d]);
                }
            }
            // G = sigma'(p) q; g_l = g_{l+1} + m_U U(k) G.
            for ((c, gq), &dv) in ca.iter_mut().zip(q.iter_mut()).zip(dsl.iter()) {
                *gq = dv * *gq;
                *c = mu * *gq;
            }
            g2.copy_from_slice(&g);
            passes.axpy(Which::U, l, &ca, vn, &mut g2, par);
            for v in 0..nv {
                let f = &fu[v];
                let t = &mut g2[v * n * d..(v + 1) * n * d];
                factor_axpy(
                    geo,
                    &f.at[fa(l)],
                    &f.b[fb(l)],
                    f.rank,
                    &ca,
                    v * n,
                    t,
                    &mut sm,
                );
            }
            if r.u.trained {
                for (v, f) in fu.iter_mut().enumerate() {
                    let rk = f.rank;
                    let at = &mut f.at[fa(l)];
                    for mm in 0..m {
                        for s in 0..n {
                            at[(rk + s) * m + mm] = cu * q[mm * vn + v * n + s];
                        }
                    }
                    let hl = &h[l * vn * d + v * n * d..][..n * d];
                    f.b[fb(l)][rk * d..(rk + n) * d].copy_from_slice(hl);
                }
            }
            std::mem::swap(&mut g, &mut g2);
            if !train::all_finite(&g) {
                return Err(diverged(k, Some(l), "the gradient"));
            }
        }
        for (v, var) in variants.iter_mut().enumerate() {
            train::embed_update(&mut var.we, data, r, opts.eta, &g[v * n * d..][..n * d], d);
            if !train::all_finite(&var.we) || !train::all_finite(&var.wu) {
                return Err(diverged(k, None, "an embedding weight"));
            }
        }
        for f in fu.iter_mut().filter(|_| r.u.trained) {
            f.rank += n;
        }
        for f in fv.iter_mut().filter(|_| r.v.trained) {
            f.rank += n;
        }
        on_step(k, &step_losses);
    }
    Ok(hist)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Activation, Weights};
    use crate::param::Parametrization;

    fn dense_and_lowrank(preset: &str, act: Activation, dims: Dims, steps: usize) {
        let data = Data::synthetic(dims.din, dims.dout, dims.n, 3);
        let mut table = Parametrization::preset(preset).unwrap();
        table.alpha = table.alpha.max(1.0);
        let r = table.resolve(&dims);
        let base = Weights::<f64>::draw(&dims, &r, 11, 12, Par::Seq);
        let other = Weights::<f64>::draw(&Dims { l: 0, ..dims }, &r, 13, 0, Par::Seq);
        let opts = TrainOptions {
            steps,
            // Stable for each preset (standard and lazy blow up at eta ~ 1 on this data,
            // which would amplify rounding).
            eta: if preset.starts_with("chizat") {
                0.7
            } else {
                0.01
            },
            activation: act,
            record_hidden: true,
            hidden_steps: None,
            layer_stats: false,
            layer_steps: vec![0, steps - 1],
            layout: Default::default(),
            max_loss_growth: train::DEFAULT_MAX_LOSS_GROWTH,
            cancel: Default::default(),
        };
        let mut want = Vec::new();
        for emb in [&base, &other] {
            let mut w = base.clone();
            w.we = emb.we.clone();
            w.wu = emb.wu.clone();
            want.push(train::train(&mut w, &data, &r, &opts, Par::Seq, &mut |_, _| {}).unwrap());
        }
        let vars = vec![
            Variant {
                we: base.we.clone(),
                wu: base.wu.clone(),
                record_hidden: true,
            },
            Variant {
                we: other.we.clone(),
                wu: other.wu.clone(),
                record_hidden: true,
            },
        ];
        let stored = Init::Stored {
            ut0: &base.ut,
            vt0: &base.vt,
        };
        let regen = Init::Regenerated {
            block_seed: 12,
            std_u: r.u.std,
            std_v: r.v.std,
        };
        // Stored; regenerated in blocks of 5 rows (a ragged last block), of the default
        // size, and on two threads (the same bits as on one).
        let runs: Vec<(Init<f64>, usize, Par)> = vec![
            (stored, 0, Par::Seq),
            (regen, 5, Par::Seq),
            (regen, regen_block_rows::<f64>(dims.d), Par::Seq),
            (regen, 5, Par::Rayon),
        ];
        let mut gots = Vec::new();
        for (init, rows, par) in runs {
            let mut vs = vars.clone();
            gots.push(
                train_shared_blocks(
                    &dims,
                    init,
                    rows,
                    &mut vs,
                    &data,
                    &r,
                    &opts,
                    par,
                    &mut |_, _| {},
                )
                .unwrap(),
            );
        }
        let bits = |h: &[History]| -> Vec<u64> {
            h.iter()
                .flat_map(|x| {
                    x.losses
                        .iter()
                        .chain(&x.outputs)
                        .chain(&x.hidden)
                        .chain(&x.layers)
                })
                .map(|v| v.to_bits())
                .collect()
        };
        assert_eq!(
            bits(&gots[1]),
            bits(&gots[3]),
            "{preset}: thread count changed the bits"
        );
        for got in &gots {
            let got = got.clone();
            let close = |a: &[f64], b: &[f64], what: &str| {
                assert_eq!(a.len(), b.len(), "{what}");
                let scale = b.iter().fold(0.0f64, |s, x| s.max(x.abs())).max(1e-300);
                for (x, y) in a.iter().zip(b) {
                    assert!(
                        (x - y).abs() <= 1e-11 * scale,
                        "{preset} {what}: {x} vs {y}"
                    );
                }
            };
            for (g, w) in got.iter().zip(&want) {
                close(&g.losses, &w.losses, "losses");
                close(&g.outputs, &w.outputs, "outputs");
                close(&g.hidden, &w.hidden, "hidden");
                close(&g.layers, &w.layers, "layers");
            }
        }
    }

    #[test]
    fn lowrank_step_stops_where_the_dense_step_does() {
        let dims = Dims {
            l: 3,
            m: 37,
            d: 29,
            din: 4,
            dout: 3,
            n: 5,
        };
        let data = Data::synthetic(dims.din, dims.dout, dims.n, 3);
        let r = Parametrization::preset("chizat-julia")
            .unwrap()
            .resolve(&dims);
        let base = Weights::<f64>::draw(&dims, &r, 11, 12, Par::Seq);
        let opts = TrainOptions {
            steps: 8,
            eta: 1e3,
            ..Default::default()
        };
        let dense = train::train(
            &mut base.clone(),
            &data,
            &r,
            &opts,
            Par::Seq,
            &mut |_, _| {},
        )
        .unwrap_err();
        let mut vars = vec![Variant {
            we: base.we.clone(),
            wu: base.wu.clone(),
            record_hidden: false,
        }];
        let low = train_shared(
            &dims,
            &base.ut,
            &base.vt,
            &mut vars,
            &data,
            &r,
            &opts,
            Par::Seq,
        )
        .unwrap_err();
        assert!(dense.diverged_at().is_some(), "{dense}");
        assert_eq!(low.diverged_at(), dense.diverged_at(), "{low} vs {dense}");
        assert_eq!(
            std::mem::discriminant(&low),
            std::mem::discriminant(&dense),
            "{low} vs {dense}"
        );
    }

    #[test]
    fn lowrank_step_matches_the_dense_step() {
        let dims = Dims {
            l: 3,
            m: 37,
            d: 29,
            din: 4,
            dout: 3,
            n: 5,
        };
        for preset in ["chizat-julia", "chizat-python", "standard", "lazy"] {
            for act in [Activation::Tanh, Activation::Relu] {
                dense_and_lowrank(preset, act, dims, 6);
            }
        }
        // Ranks past the register tiles (N = 13 samples, 20 shared vectors in a pass).
        dense_and_lowrank("chizat-julia", Activation::Gelu, Dims { n: 13, ..dims }, 4);
        // M < D, and M much larger than D.
        dense_and_lowrank(
            "chizat-julia",
            Activation::Tanh,
            Dims {
                m: 11,
                d: 41,
                ..dims
            },
            5,
        );
        dense_and_lowrank(
            "standard",
            Activation::Relu,
            Dims {
                m: 64,
                d: 7,
                ..dims
            },
            5,
        );
    }

    #[test]
    fn worth_it_only_for_large_blocks() {
        let dims = |m, d| Dims {
            l: 50,
            m,
            d,
            din: 5,
            dout: 5,
            n: 10,
        };
        assert!(worth_it(&dims(2000, 2000), 15, 2));
        assert!(worth_it(&dims(500, 500), 15, 2));
        assert!(!worth_it(&dims(14, 2000), 15, 2));
        assert!(!worth_it(&dims(9, 9), 15, 1));
    }
}
