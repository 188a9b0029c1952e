//! Full-batch gradient descent on the ResNet, with the backward pass fused into the
//! update, and the per-step records.
//!
//! One step (notation of [`crate::param`]; g_l = dloss/dh_l; rows of U_l^T, V_l^T are
//! the hidden units):
//!
//! ```text
//! forward   h_0 = m_E W_E x
//!           p_l = m_U U_l^T h_l                     (kernels::dot_rows over U_l)
//!           h_{l+1} = h_l + m_V V_l sigma(p_l)      (kernels::axpy_rows over V_l)
//!           f = m_W W_U^T h_L,  loss = c sum (f - y)^2
//! backward  g_L = m_W W_U dloss/df,  dloss/df = 2 c (f - y)
//!           q_l = m_V V_l^T g_{l+1};   V_l -= eta lr_V m_V g_{l+1} sigma(p_l)^T   (one pass)
//!           G_l = sigma'(p_l) * q_l
//!           g_l = g_{l+1} + m_U U_l G_l;  U_l -= eta lr_U m_U h_l G_l^T        (one pass)
//! ```
//!
//! With the `chizat-julia` table this is exactly the notebook's `B = (D/2) g`,
//! `gU = (DLM/2) dloss/dU` recursion (docs/papers.md 2.2), and with `chizat-python` the
//! linear code's `B_L = W_u (f - y)/D` recursion with `eta_u = eta_v = D`.
//!
//! Every update uses the gradient at the weights before the step: V_l's rows are updated
//! after their own dot products, and U_l's after their contribution to g_l.

use crate::cpu::Aligned;
use crate::cpu::Par;
use crate::kernels;
use crate::memory::{self, MemoryError};
use crate::model::{Activation, BlockLayout, Data, Real, Weights};
use crate::param::Resolved;
use serde::Serialize;

/// Why training stopped early.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    /// A NaN or infinity appeared.
    #[error("training diverged at step {step}: {what} is not finite{}", layer.map(|l| format!(" at layer {l}")).unwrap_or_default())]
    Diverged {
        step: usize,
        layer: Option<usize>,
        what: &'static str,
    },
    /// The loss overflowed while every h_l is finite: the read-out `f = m_W W_U^T h_L` or
    /// the squared error did. `detail` says which (and where).
    #[error("training diverged at step {step}: the loss is not finite ({detail}; h_L is finite)")]
    LossOverflow { step: usize, detail: String },
    /// The loss is finite but has grown past [`TrainOptions::max_loss_growth`] times its
    /// value at step 0.
    #[error(
        "training diverged at step {step}: the loss {loss:.3e} is more than {factor:e} times the initial loss {initial:.3e} (the learning rate is too large for this shape)"
    )]
    LossExploded {
        step: usize,
        loss: f64,
        initial: f64,
        factor: f64,
    },
    /// Data and weights disagree on a dimension.
    #[error("data and model disagree: {0}")]
    Mismatch(String),
    /// The records of the run overflow or do not fit.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// [`TrainOptions::cancel`] was set; steps `0..step` were done.
    #[error("training cancelled before step {step}")]
    Cancelled { step: usize },
}

impl TrainError {
    /// The step at which training diverged (any of the divergence variants), if it did.
    pub fn diverged_at(&self) -> Option<usize> {
        match self {
            TrainError::Diverged { step, .. }
            | TrainError::LossOverflow { step, .. }
            | TrainError::LossExploded { step, .. } => Some(*step),
            TrainError::Mismatch(_) | TrainError::Memory(_) | TrainError::Cancelled { .. } => None,
        }
    }
}

/// Default of [`TrainOptions::max_loss_growth`].
///
/// Why relative, and why 1e20: the scale of the loss is the user's (targets, `loss`
/// constant, N), so an absolute bound would be wrong for some data; its growth is not.
/// Gradient descent that converges lowers the loss, and even a catapult phase raises it
/// by a few orders of magnitude before it comes down; a loss 1e20 times its start
/// (outputs 1e10 times too large) is a divergence that has not overflowed yet. Stopping
/// there names the step where the run left the tracks instead of reporting an absurd
/// final loss (or an overflow many steps later).
pub const DEFAULT_MAX_LOSS_GROWTH: f64 = 1e20;

/// The error for a loss that is not finite while h_L is: names the first output
/// `f[o, sample]` that overflowed, or else says that the squared error did.
pub(crate) fn loss_overflow(step: usize, f: &[f64], y: &[f64], n: usize) -> TrainError {
    let detail = match f.iter().position(|v| !v.is_finite()) {
        Some(i) => format!(
            "output f[{}, sample {}] is {}: the read-out m_W W_U^T h_L overflowed",
            i / n.max(1),
            i % n.max(1),
            f[i]
        ),
        None => {
            let worst = f
                .iter()
                .zip(y)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f64, f64::max);
            format!(
                "every output f is finite, the largest |f - y| is {worst:e}: the squared error overflowed"
            )
        }
    };
    TrainError::LossOverflow { step, detail }
}

/// Stops with [`TrainError::Cancelled`] once [`TrainOptions::cancel`] is set.
pub(crate) fn check_cancel(opts: &TrainOptions, step: usize) -> Result<(), TrainError> {
    if opts.cancel.is_cancelled() {
        return Err(TrainError::Cancelled { step });
    }
    Ok(())
}

/// Refuses a finite loss beyond `opts.max_loss_growth` times the loss at step 0.
pub(crate) fn check_growth(
    opts: &TrainOptions,
    step: usize,
    loss: f64,
    initial: f64,
) -> Result<(), TrainError> {
    if step > 0 && loss > opts.max_loss_growth * initial {
        return Err(TrainError::LossExploded {
            step,
            loss,
            initial,
            factor: opts.max_loss_growth,
        });
    }
    Ok(())
}

/// Options of a training run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrainOptions {
    /// Number of GD steps K: records 0..K-1 are the networks after 0..K-1 updates.
    pub steps: usize,
    /// The global learning rate eta multiplying every role's rate.
    pub eta: f64,
    pub activation: Activation,
    /// Record h_L (D x N values per recorded step).
    pub record_hidden: bool,
    /// With `record_hidden`: only at these steps (None: every step).
    pub hidden_steps: Option<Vec<usize>>,
    /// Record per-layer coordinate statistics.
    pub layer_stats: bool,
    /// Steps at which h_l of every layer l = 0..=L is recorded into `History::layers`
    /// (the finite-vs-limit errors of docs/papers.md 2.4 need every depth); empty: none.
    pub layer_steps: Vec<usize>,
    /// How the step lays out U_l and V_l in memory (results agree to rounding).
    pub layout: Layout,
    /// Training stops with [`TrainError::LossExploded`] when the loss exceeds this many
    /// times its value at step 0 ([`DEFAULT_MAX_LOSS_GROWTH`]; infinity: never).
    pub max_loss_growth: f64,
    /// Checked before each step: once set, training stops with
    /// [`TrainError::Cancelled`] (the default token never is).
    #[serde(skip)]
    pub cancel: crate::cancel::Cancel,
}

impl Default for TrainOptions {
    /// One step at eta = 1, tanh, nothing recorded beyond losses and outputs.
    fn default() -> Self {
        TrainOptions {
            steps: 1,
            eta: 1.0,
            activation: Activation::Tanh,
            record_hidden: false,
            hidden_steps: None,
            layer_stats: false,
            layer_steps: Vec::new(),
            layout: Layout::Auto,
            max_loss_growth: DEFAULT_MAX_LOSS_GROWTH,
            cancel: crate::cancel::Cancel::default(),
        }
    }
}

/// The memory layout of the block weights during training. The kernels stream rows
/// and vectorize along them, so rows should be the longer of M and D: with rows of
/// length D and D << M, every row pays a horizontal reduction and a scalar tail for a
/// few multiply-adds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
    /// Rows of M when M > D, rows of D otherwise.
    #[default]
    Auto,
    /// U_l^T, V_l^T as M rows of length D (the storage layout of [`Weights`]).
    RowsD,
    /// U_l, V_l as D rows of length M (weights transposed for the run, and back).
    RowsM,
}

impl Layout {
    /// Whether a run of these dimensions streams rows of length M.
    pub fn rows_m(self, dims: &crate::param::Dims) -> bool {
        match self {
            Layout::Auto => dims.m > dims.d,
            Layout::RowsD => false,
            Layout::RowsM => true,
        }
    }
}

/// Per-layer coordinate statistics at one step (for coordinate checks).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LayerStat {
    pub step: usize,
    pub layer: usize,
    /// RMS over samples and coordinates of h_l.
    pub rms_h: f64,
    /// RMS of the branch output h_{l+1} - h_l (NaN for l = L).
    pub rms_branch: f64,
    /// RMS of U_l - U_l(0) and V_l - V_l(0) over entries (NaN for l = L).
    pub rms_du: f64,
    pub rms_dv: f64,
    /// RMS of the feature change h_l(k) - h_l(0) (0 at step 0).
    pub rms_dh: f64,
    /// RMS of the change of the branch output since step 0,
    /// (h_{l+1} - h_l)(k) - (h_{l+1} - h_l)(0) (NaN for l = L).
    pub rms_dbranch: f64,
    /// RMS of the backward signal g_l = dloss/dh_l of this step's forward pass (as the
    /// table's loss constant and multipliers make it; NaN if the backward pass stopped).
    pub rms_g: f64,
}

/// What a run records: entry k is the forward pass before update k.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct History {
    pub losses: Vec<f64>,
    /// K x d_out x N.
    pub outputs: Vec<f64>,
    /// (recorded steps) x D x N (empty unless `record_hidden`).
    pub hidden: Vec<f64>,
    /// The steps at which `hidden` was recorded.
    pub hidden_steps: Vec<usize>,
    pub layer_stats: Vec<LayerStat>,
    /// (steps in `layer_steps`) x (L+1) x D x N: h_l of every layer at those steps.
    pub layers: Vec<f64>,
    /// The steps at which `layers` was recorded.
    pub layer_steps: Vec<usize>,
}

/// Seconds spent in each part of the step's L blocks, summed over layers (and over
/// steps) since the workspace was made or [`Workspace::take_times`] last read them: the
/// four weight passes and what lies between them, named by tensor whatever the
/// [`Layout`]. Off unless [`Workspace::time_parts`] turns it on; then one `Instant` per
/// part and layer (tens of nanoseconds, against microseconds for a small block).
/// `reslim bench` reports them, with the rest of the step
/// (embedding, readout, head and embedding updates) as its remainder.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct PassTimes {
    /// Forward over U: `p = m_U U^T h_l`.
    pub forward_u: f64,
    /// Forward: `sigma(p)`, `sigma'(p)` and `m_V sigma(p)`.
    pub activation: f64,
    /// Forward over V: `h_{l+1} = h_l + m_V V sigma(p)`, and the finiteness check of
    /// `h_{l+1}`.
    pub forward_v: f64,
    /// Backward over V: `q = m_V V^T g` fused with V's update.
    pub backward_v: f64,
    /// Backward: `G = sigma'(p) q` and the coefficients of the U pass.
    pub between: f64,
    /// Backward over U: `g_l = g + m_U U G` fused with U's update, and the finiteness
    /// check of `g_l`.
    pub backward_u: f64,
}

impl PassTimes {
    /// The four weight passes (forward U, forward V, backward V, backward U).
    pub fn weight_passes(&self) -> [f64; 4] {
        [
            self.forward_u,
            self.forward_v,
            self.backward_v,
            self.backward_u,
        ]
    }

    /// All parts together.
    pub fn total(&self) -> f64 {
        self.weight_passes().iter().sum::<f64>() + self.activation + self.between
    }
}

/// The running clock of a block's [`lap`]s: `None` when the workspace does not time
/// the step ([`Workspace::time_parts`]).
type Clock = Option<std::time::Instant>;

fn clock(on: bool) -> Clock {
    on.then(std::time::Instant::now)
}

/// Adds the time since `t` to `acc` and restarts `t` (nothing when `t` is off).
fn lap(t: &mut Clock, acc: &mut f64) {
    if let Some(t) = t {
        let now = std::time::Instant::now();
        *acc += (now - *t).as_secs_f64();
        *t = now;
    }
}

/// Scratch memory of the step, allocated once per run.
pub struct Workspace<T> {
    /// Where the blocks' time went ([`PassTimes`]), kept when `timing` is on.
    times: PassTimes,
    timing: bool,
    /// (L+1) x N x D: h_l for every layer, sample-major.
    h: Aligned<T>,
    /// L x M x N: pre-activations, and sigma, sigma' at them (kept for the backward
    /// pass so each activation is evaluated once per step).
    p: Aligned<T>,
    s: Aligned<T>,
    ds: Aligned<T>,
    /// M x N scratch coefficient blocks.
    ca: Aligned<T>,
    cb: Aligned<T>,
    q: Aligned<T>,
    /// N x D gradients.
    g: Aligned<T>,
    /// With layer statistics: RMS of g_l per layer l = 0..=L, filled by the backward pass.
    grad_rms: Option<Vec<f64>>,
    g2: Aligned<T>,
    /// With rows of M ([`Layout::RowsM`]): D x N coefficient and output blocks, and the
    /// per-layer M-side arrays (p, s, ds, ca, cb, q) are N x M instead of M x N.
    rows_m: bool,
    ta: Aligned<T>,
    tb: Aligned<T>,
    tout: Aligned<T>,
    /// d_out x N outputs and dloss/df.
    pub f: Vec<f64>,
    dldf: Vec<f64>,
}

impl<T: Real> Workspace<T> {
    /// Scratch for [`forward`] and [`backward_update`] on weights in their storage
    /// layout (rows of D).
    pub fn new(w: &Weights<T>, n: usize) -> Self {
        Self::with_layout(w, n, false)
    }

    fn with_layout(w: &Weights<T>, n: usize, rows_m: bool) -> Self {
        let d = w.dims;
        let t = if rows_m { d.d * n } else { 0 };
        Workspace {
            times: PassTimes::default(),
            timing: false,
            rows_m,
            ta: Aligned::zeroed(t),
            tb: Aligned::zeroed(t),
            tout: Aligned::zeroed(t),
            h: Aligned::zeroed((d.l + 1) * n * d.d),
            p: Aligned::zeroed(d.l * d.m * n),
            s: Aligned::zeroed(d.l * d.m * n),
            ds: Aligned::zeroed(d.l * d.m * n),
            ca: Aligned::zeroed(d.m * n),
            cb: Aligned::zeroed(d.m * n),
            q: Aligned::zeroed(d.m * n),
            g: Aligned::zeroed(n * d.d),
            grad_rms: None,
            g2: Aligned::zeroed(n * d.d),
            f: vec![0.0; d.dout * n],
            dldf: vec![0.0; d.dout * n],
        }
    }

    /// Bytes of scratch a run of this shape needs (either layout); an error naming the
    /// dimensions if the count overflows.
    pub fn bytes(dims: &crate::param::Dims) -> Result<usize, MemoryError> {
        let (l, m, d, n) = (dims.l, dims.m, dims.d, dims.n);
        let s = std::mem::size_of::<T>();
        let l1 = memory::sum(&[("L", l), ("1", 1)])?;
        memory::sum(&[
            (
                "h bytes",
                memory::product(&[("L + 1", l1), ("N", n), ("D", d), ("bytes", s)])?,
            ),
            (
                "p, s, ds bytes",
                memory::product(&[("3", 3), ("L", l), ("M", m), ("N", n), ("bytes", s)])?,
            ),
            (
                "ca, cb, q bytes",
                memory::product(&[("3", 3), ("M", m), ("N", n), ("bytes", s)])?,
            ),
            (
                "g, g2, ta, tb, tout bytes",
                memory::product(&[("5", 5), ("N", n), ("D", d), ("bytes", s)])?,
            ),
            (
                "f, dldf bytes",
                memory::product(&[("2", 2), ("dout", dims.dout), ("N", n), ("8", 8)])?,
            ),
        ])
    }

    /// Whether the step keeps the time of its parts ([`PassTimes`]; off by default).
    pub fn time_parts(&mut self, on: bool) {
        self.timing = on;
    }

    /// The time per part of the step since the last call (or since the workspace was
    /// made), resetting it; all zero unless [`Workspace::time_parts`] is on.
    pub fn take_times(&mut self) -> PassTimes {
        std::mem::take(&mut self.times)
    }

    /// h_l as N x D (sample-major).
    pub fn hidden(&self, layer: usize, n: usize, d: usize) -> &[T] {
        &self.h[layer * n * d..(layer + 1) * n * d]
    }
}

pub(crate) fn all_finite<T: Real>(v: &[T]) -> bool {
    v.iter().all(|x| x.is_finite())
}

/// The embedding, `h_0[n][d] = m_E sum_i W_E[d][i] x[i][n]` (h0: N x D).
pub(crate) fn embed<T: Real>(we: &[T], data: &Data, r: &Resolved, d: usize, h0: &mut [T]) {
    let (n, din) = (data.n, data.din);
    for s in 0..n {
        for dd in 0..d {
            let mut acc = 0.0;
            for i in 0..din {
                acc += we[dd * din + i].to() * data.x[i * n + s];
            }
            h0[s * d + dd] = T::of(r.we.mult * acc);
        }
    }
}

/// The read-out `f[o][n] = m_W sum_d W_U[d][o] h_L[n][d]`, dloss/df and the loss
/// `c sum (f - y)^2`.
pub(crate) fn readout<T: Real>(
    wu: &[T],
    data: &Data,
    r: &Resolved,
    h_last: &[T],
    d: usize,
    f: &mut [f64],
    dldf: &mut [f64],
) -> f64 {
    let (n, dout) = (data.n, data.dout);
    let mut loss = 0.0;
    for o in 0..dout {
        for s in 0..n {
            let mut acc = 0.0;
            for dd in 0..d {
                acc += wu[dd * dout + o].to() * h_last[s * d + dd].to();
            }
            let fv = r.wu.mult * acc;
            f[o * n + s] = fv;
            let e = fv - data.y[o * n + s];
            loss += e * e;
            dldf[o * n + s] = 2.0 * r.loss * e;
        }
    }
    r.loss * loss
}

/// `g_L[n][d] = m_W sum_o W_U[d][o] dloss/df[o][n]`, then the W_U update when it trains.
#[allow(clippy::too_many_arguments)]
pub(crate) fn head_backward<T: Real>(
    wu: &mut [T],
    data: &Data,
    r: &Resolved,
    eta: f64,
    dldf: &[f64],
    h_last: &[T],
    d: usize,
    g: &mut [T],
) {
    let (n, dout) = (data.n, data.dout);
    for s in 0..n {
        for dd in 0..d {
            let mut acc = 0.0;
            for o in 0..dout {
                acc += wu[dd * dout + o].to() * dldf[o * n + s];
            }
            g[s * d + dd] = T::of(r.wu.mult * acc);
        }
    }
    if r.wu.trained {
        let c = eta * r.wu.lr * r.wu.mult;
        for dd in 0..d {
            for o in 0..dout {
                let mut acc = 0.0;
                for s in 0..n {
                    acc += h_last[s * d + dd].to() * dldf[o * n + s];
                }
                let e = &mut wu[dd * dout + o];
                *e = T::of(e.to() - c * acc);
            }
        }
    }
}

/// The W_E update when it trains: `dloss/dW_E[d][i] = m_E sum_n g_0[n][d] x[i][n]`.
pub(crate) fn embed_update<T: Real>(
    we: &mut [T],
    data: &Data,
    r: &Resolved,
    eta: f64,
    g0: &[T],
    d: usize,
) {
    if !r.we.trained {
        return;
    }
    let (n, din) = (data.n, data.din);
    let c = eta * r.we.lr * r.we.mult;
    for dd in 0..d {
        for i in 0..din {
            let mut acc = 0.0;
            for s in 0..n {
                acc += g0[s * d + dd].to() * data.x[i * n + s];
            }
            let e = &mut we[dd * din + i];
            *e = T::of(e.to() - c * acc);
        }
    }
}

/// The forward pass: fills `ws.h`, `ws.p`, `ws.f` and returns the loss.
pub fn forward<T: Real>(
    w: &mut Weights<T>,
    data: &Data,
    r: &Resolved,
    act: Activation,
    ws: &mut Workspace<T>,
    par: Par,
    step: usize,
) -> Result<f64, TrainError> {
    let dims = w.dims;
    let (l_n, d, n) = (dims.l, dims.d, data.n);
    check_data(&dims, data)?;
    embed(&w.we, data, r, d, &mut ws.h[..n * d]);
    if !all_finite(&ws.h[..n * d]) {
        return Err(TrainError::Diverged {
            step,
            layer: Some(0),
            what: "h",
        });
    }
    par.on_workers(|| forward_blocks(w, r, act, ws, par, step, n))?;
    let h_last = &ws.h[l_n * n * d..];
    let loss = readout(&w.wu, data, r, h_last, d, &mut ws.f, &mut ws.dldf);
    if !loss.is_finite() {
        return Err(loss_overflow(step, &ws.f, &data.y, n));
    }
    Ok(loss)
}

/// The block multipliers and learning-rate factors of one step.
#[derive(Clone, Copy)]
struct Scales<T> {
    mu: T,
    mv: T,
    /// eta lr_U m_U and eta lr_V m_V.
    cu: T,
    cv: T,
}

impl<T: Real> Scales<T> {
    fn new(r: &Resolved, eta: f64) -> Self {
        Scales {
            mu: T::of(r.u.mult),
            mv: T::of(r.v.mult),
            cu: T::of(eta * r.u.lr * r.u.mult),
            cv: T::of(eta * r.v.lr * r.v.mult),
        }
    }
}

/// The L blocks of the forward pass, in the workspace's layout, stopping at the first
/// layer whose output is not finite.
fn forward_blocks<T: Real>(
    w: &mut Weights<T>,
    r: &Resolved,
    act: Activation,
    ws: &mut Workspace<T>,
    par: Par,
    step: usize,
    n: usize,
) -> Result<(), TrainError> {
    let k = Scales::new(r, 0.0);
    let nd = n * w.dims.d;
    for l in 0..w.dims.l {
        let mut t = forward_layer(w, k, act, ws, par, n, l);
        let finite = all_finite(&ws.h[(l + 1) * nd..(l + 2) * nd]);
        lap(&mut t, &mut ws.times.forward_v);
        if !finite {
            return Err(TrainError::Diverged {
                step,
                layer: Some(l + 1),
                what: "h",
            });
        }
    }
    Ok(())
}

/// Block l of the forward pass, in the workspace's layout. Returns the clock of its
/// last [`lap`] (the V pass is still running on it).
///
/// Rows of D (U_l^T, V_l^T: M x D): `p_l = m_U U_l^T h_l` ([`kernels::dot_rows`] over
/// U_l^T), then `h_{l+1} = h_l + m_V V_l sigma(p_l)` ([`kernels::axpy_rows`] over V_l^T).
///
/// Rows of M (U_l, V_l: D x M), M-side arrays N x M:
///
/// ```text
/// p_l^T[n] = sum_d (m_U h_l[n][d]) U_l[d]          (kernels::axpy_rows over U_l)
/// h_{l+1}[n][d] = h_l[n][d] + m_V <V_l[d], sigma(p_l)^T[n]>   (kernels::dot_rows over V_l)
/// ```
fn forward_layer<T: Real>(
    w: &mut Weights<T>,
    k: Scales<T>,
    act: Activation,
    ws: &mut Workspace<T>,
    par: Par,
    n: usize,
    l: usize,
) -> Clock {
    let mut t = clock(ws.timing);
    let (m, d) = (w.dims.m, w.dims.d);
    let (lo, hi) = ws.h.split_at_mut((l + 1) * n * d);
    let h_l = &lo[l * n * d..];
    let h_next = &mut hi[..n * d];
    let p = &mut ws.p[l * m * n..(l + 1) * m * n];
    let u = &mut w.ut[l * m * d..(l + 1) * m * d];
    if ws.rows_m {
        p.fill(T::zero());
        transpose_scaled(h_l, n, d, k.mu, &mut ws.ta);
        kernels::axpy_rows(u, d, m, &ws.ta, None, &[], n, p, par);
    } else {
        kernels::dot_rows(u, m, d, h_l, n, None, k.mu, p, par);
    }
    lap(&mut t, &mut ws.times.forward_u);
    let sl = &mut ws.s[l * m * n..(l + 1) * m * n];
    let dsl = &mut ws.ds[l * m * n..(l + 1) * m * n];
    activate(act, k.mv, p, sl, dsl, &mut ws.ca, par);
    lap(&mut t, &mut ws.times.activation);
    let v = &mut w.vt[l * m * d..(l + 1) * m * d];
    if ws.rows_m {
        kernels::dot_rows(v, d, m, sl, n, None, k.mv, &mut ws.tout, par);
        for s in 0..n {
            for dd in 0..d {
                h_next[s * d + dd] = h_l[s * d + dd] + ws.tout[dd * n + s];
            }
        }
    } else {
        h_next.copy_from_slice(h_l);
        kernels::axpy_rows(v, m, d, &ws.ca, None, &[], n, h_next, par);
    }
    t
}

/// `t[j][i] = c * a[i][j]` for `a`: rows x cols (row-major), `t`: cols x rows.
fn transpose_scaled<T: Real>(a: &[T], rows: usize, cols: usize, c: T, t: &mut [T]) {
    for i in 0..rows {
        for j in 0..cols {
            t[j * rows + i] = c * a[i * cols + j];
        }
    }
}

/// Matching chunks of p, sigma(p), sigma'(p) and m_V sigma(p).
type ActChunks<'a, T> = (((&'a [T], &'a mut [T]), &'a mut [T]), &'a mut [T]);

/// `s = sigma(p)`, `ds = sigma'(p)`, `ca = m_V s`, elementwise, in parallel chunks. tanh
/// goes through the vectorized [`Real::tanh_d1_scaled`] (within 1.4 ulp of the exact tanh,
/// not libm's bits); the other activations through [`Activation::f_d1`].
pub(crate) fn activate<T: Real>(
    act: Activation,
    mv: T,
    p: &[T],
    s: &mut [T],
    ds: &mut [T],
    ca: &mut [T],
    par: Par,
) {
    let job = |(((pc, sc), dc), cc): ActChunks<T>| {
        if act == Activation::Tanh {
            return T::tanh_d1_scaled(pc, sc, dc, cc, mv);
        }
        for (((&pv, sv), dv), cv) in pc
            .iter()
            .zip(sc.iter_mut())
            .zip(dc.iter_mut())
            .zip(cc.iter_mut())
        {
            let (f, d1) = act.f_d1(pv);
            *sv = f;
            *dv = d1;
            *cv = mv * f;
        }
    };
    const CHUNK: usize = 1024;
    match par {
        Par::Seq => job((((p, s), ds), ca)),
        Par::Rayon => {
            use rayon::prelude::*;
            p.par_chunks(CHUNK)
                .zip(s.par_chunks_mut(CHUNK))
                .zip(ds.par_chunks_mut(CHUNK))
                .zip(ca.par_chunks_mut(CHUNK))
                .for_each(job)
        }
    }
}

pub(crate) fn check_data(dims: &crate::param::Dims, data: &Data) -> Result<(), TrainError> {
    if data.din != dims.din || data.dout != dims.dout {
        return Err(TrainError::Mismatch(format!(
            "data has d_in = {}, d_out = {}; the model has d_in = {}, d_out = {}",
            data.din, data.dout, dims.din, dims.dout
        )));
    }
    Ok(())
}

/// The backward pass fused with the update (after [`forward`] on the same workspace).
#[allow(clippy::too_many_arguments)]
pub fn backward_update<T: Real>(
    w: &mut Weights<T>,
    data: &Data,
    r: &Resolved,
    act: Activation,
    eta: f64,
    ws: &mut Workspace<T>,
    par: Par,
    step: usize,
) -> Result<(), TrainError> {
    let dims = w.dims;
    let (l_n, d, n) = (dims.l, dims.d, data.n);
    let h_last = &ws.h[l_n * n * d..(l_n + 1) * n * d];
    head_backward(&mut w.wu, data, r, eta, &ws.dldf, h_last, d, &mut ws.g);
    let _ = act;
    par.on_workers(|| backward_blocks(w, r, eta, ws, par, step, n))?;
    embed_update(&mut w.we, data, r, eta, &ws.g, d);
    let bad = |v: &[T]| !all_finite(v);
    if bad(&w.we) || bad(&w.wu) {
        return Err(TrainError::Diverged {
            step,
            layer: None,
            what: "an embedding weight",
        });
    }
    Ok(())
}

/// The L blocks of the backward pass fused with the update, in the workspace's layout,
/// stopping at the first layer whose gradient is not finite.
fn backward_blocks<T: Real>(
    w: &mut Weights<T>,
    r: &Resolved,
    eta: f64,
    ws: &mut Workspace<T>,
    par: Par,
    step: usize,
    n: usize,
) -> Result<(), TrainError> {
    let k = Scales::new(r, eta);
    let nd = n * w.dims.d;
    if let Some(gr) = &mut ws.grad_rms {
        gr.clear();
        gr.resize(w.dims.l + 1, f64::NAN);
        gr[w.dims.l] = rms(ws.g.iter().copied(), nd);
    }
    for l in (0..w.dims.l).rev() {
        let mut t = backward_layer(w, r, k, ws, par, n, l);
        if let Some(gr) = &mut ws.grad_rms {
            gr[l] = rms(ws.g.iter().copied(), nd);
        }
        let finite = all_finite(&ws.g);
        lap(&mut t, &mut ws.times.backward_u);
        if !finite {
            return Err(TrainError::Diverged {
                step,
                layer: Some(l),
                what: "the gradient",
            });
        }
    }
    Ok(())
}

/// Block l of the backward pass fused with the update, in the workspace's layout:
/// `ws.g` goes from g_{l+1} to g_l. Returns the clock of its last [`lap`] (the U pass is
/// still running on it).
///
/// Rows of D (U_l^T, V_l^T: M x D): `q = m_V V_l^T g` with `V -= eta lr_V m_V g
/// sigma(p)^T` in one pass ([`kernels::dot_rows`] with update), `G = sigma'(p) q`, then
/// `g_l = g + m_U U_l G` with `U -= eta lr_U m_U h G^T` ([`kernels::axpy_rows`] with
/// update).
///
/// Rows of M (U_l, V_l: D x M), M-side arrays N x M:
///
/// ```text
/// q_l^T[n] = sum_d (m_V g[n][d]) V_l[d];   V_l[d] -= sum_n (eta lr_V m_V g[n][d]) sigma(p_l)^T[n]
///                                                              (kernels::axpy_rows over V_l)
/// G_l = sigma'(p_l) * q_l
/// g_l[n][d] = g[n][d] + m_U <U_l[d], G_l^T[n]>;  U_l[d] -= sum_n (eta lr_U m_U h_l[n][d]) G_l^T[n]
///                                                              (kernels::dot_rows over U_l)
/// ```
fn backward_layer<T: Real>(
    w: &mut Weights<T>,
    r: &Resolved,
    k: Scales<T>,
    ws: &mut Workspace<T>,
    par: Par,
    n: usize,
    l: usize,
) -> Clock {
    let mut t = clock(ws.timing);
    let (m, d) = (w.dims.m, w.dims.d);
    let sl = &ws.s[l * m * n..(l + 1) * m * n];
    let dsl = &ws.ds[l * m * n..(l + 1) * m * n];
    let h_l = &ws.h[l * n * d..(l + 1) * n * d];
    let v = &mut w.vt[l * m * d..(l + 1) * m * d];
    let u = &mut w.ut[l * m * d..(l + 1) * m * d];
    if ws.rows_m {
        // V pass: q^T = m_V V^T g (as N x M), V -= eta lr_V m_V g sigma(p)^T.
        transpose_scaled(&ws.g, n, d, k.mv, &mut ws.ta);
        let b = if r.v.trained {
            transpose_scaled(&ws.g, n, d, k.cv, &mut ws.tb);
            Some(&ws.tb[..])
        } else {
            None
        };
        ws.q.fill(T::zero());
        kernels::axpy_rows(v, d, m, &ws.ta, b, sl, n, &mut ws.q, par);
        lap(&mut t, &mut ws.times.backward_v);
        // G = sigma'(p) q; U pass: g_l = g + m_U U G, U -= eta lr_U m_U h G^T.
        for ((a, &dv), &qv) in ws.ca.iter_mut().zip(dsl).zip(&ws.q) {
            *a = dv * qv;
        }
        let coef = if r.u.trained {
            transpose_scaled(h_l, n, d, k.cu, &mut ws.tb);
            Some(&ws.tb[..])
        } else {
            None
        };
        lap(&mut t, &mut ws.times.between);
        kernels::dot_rows(u, d, m, &ws.ca, n, coef, k.mu, &mut ws.tout, par);
        for s in 0..n {
            for dd in 0..d {
                ws.g[s * d + dd] += ws.tout[dd * n + s];
            }
        }
    } else {
        // V pass: q = m_V V^T g, V -= eta lr_V m_V g sigma(p)^T.
        let coef = if r.v.trained {
            for (c, &sv) in ws.cb.iter_mut().zip(sl.iter()) {
                *c = k.cv * sv;
            }
            Some(&ws.cb[..])
        } else {
            None
        };
        kernels::dot_rows(v, m, d, &ws.g, n, coef, k.mv, &mut ws.q, par);
        lap(&mut t, &mut ws.times.backward_v);
        // G = sigma'(p) q; U pass: g_l = g + m_U U G, U -= eta lr_U m_U h G^T.
        for ((a, b), (&dv, &qv)) in ws
            .ca
            .iter_mut()
            .zip(ws.cb.iter_mut())
            .zip(dsl.iter().zip(ws.q.iter()))
        {
            let gv = dv * qv;
            *a = k.mu * gv;
            *b = k.cu * gv;
        }
        ws.g2.copy_from_slice(&ws.g);
        lap(&mut t, &mut ws.times.between);
        let b = if r.u.trained { Some(&ws.cb[..]) } else { None };
        kernels::axpy_rows(u, m, d, &ws.ca, b, h_l, n, &mut ws.g2, par);
        std::mem::swap(&mut ws.g, &mut ws.g2);
    }
    t
}

/// Runs K steps of full-batch GD, recording each forward pass before its update.
/// `on_step(k)` is called after step k (for progress bars).
pub fn train<T: Real>(
    w: &mut Weights<T>,
    data: &Data,
    r: &Resolved,
    opts: &TrainOptions,
    par: Par,
    on_step: &mut dyn FnMut(usize, f64),
) -> Result<History, TrainError> {
    let stored = w.layout;
    if opts.layout.rows_m(&w.dims) {
        w.lay_out(BlockLayout::RowsM);
    }
    let out = train_laid_out(w, data, r, opts, par, on_step);
    w.lay_out(stored);
    out
}

/// [`train`] on the weights in the layout they are in ([`Weights::layout`], left so);
/// `opts.layout` is not consulted. For callers that train several variants from one
/// draw laid out once ([`Weights::lay_out`]) and need only the records.
pub fn train_laid_out<T: Real>(
    w: &mut Weights<T>,
    data: &Data,
    r: &Resolved,
    opts: &TrainOptions,
    par: Par,
    on_step: &mut dyn FnMut(usize, f64),
) -> Result<History, TrainError> {
    let rows_m = w.layout == BlockLayout::RowsM;
    let dims = w.dims;
    let (d, n) = (dims.d, data.n);
    // The records are sized up front from user input: checked (in bytes, so that the
    // f64 capacities fit an allocation), so that a huge K is an error rather than a
    // capacity overflow.
    let outputs = memory::product(&[
        ("steps", opts.steps),
        ("dout", dims.dout),
        ("N", n),
        ("8", 8),
    ])? / 8;
    let hidden = if opts.record_hidden {
        let recorded = opts
            .hidden_steps
            .as_ref()
            .map_or(opts.steps, |s| s.len().min(opts.steps));
        memory::product(&[("recorded steps", recorded), ("D", d), ("N", n), ("8", 8)])? / 8
    } else {
        0
    };
    let mut ws = Workspace::with_layout(w, n, rows_m);
    let init = if opts.layer_stats {
        ws.grad_rms = Some(Vec::with_capacity(dims.l + 1));
        Some(w.clone())
    } else {
        None
    };
    // With layer statistics: h_l(0) of every layer, for the changes since step 0.
    let mut h0: Vec<T> = Vec::new();
    let mut hist = History {
        losses: Vec::with_capacity(opts.steps),
        outputs: Vec::with_capacity(outputs),
        hidden: Vec::with_capacity(hidden),
        layer_stats: Vec::new(),
        hidden_steps: Vec::new(),
        layers: Vec::new(),
        layer_steps: Vec::new(),
    };
    for k in 0..opts.steps {
        check_cancel(opts, k)?;
        let loss = forward(w, data, r, opts.activation, &mut ws, par, k)?;
        check_growth(opts, k, loss, hist.losses.first().copied().unwrap_or(loss))?;
        hist.losses.push(loss);
        hist.outputs.extend_from_slice(&ws.f);
        let want_h =
            opts.record_hidden && opts.hidden_steps.as_ref().is_none_or(|s| s.contains(&k));
        if want_h {
            hist.hidden_steps.push(k);
            let h = ws.hidden(dims.l, n, d);
            for dd in 0..d {
                for s in 0..n {
                    hist.hidden.push(h[s * d + dd].to());
                }
            }
        }
        if opts.layer_steps.contains(&k) {
            hist.layer_steps.push(k);
            for l in 0..=dims.l {
                let h = ws.hidden(l, n, d);
                hist.layers
                    .extend((0..d * n).map(|i| h[(i % n) * d + i / n].to()));
            }
        }
        if let Some(w0) = &init {
            if k == 0 {
                h0 = ws.h.to_vec();
            }
            layer_stats(w, w0, &ws, &h0, n, k, &mut hist.layer_stats);
        }
        backward_update(w, data, r, opts.activation, opts.eta, &mut ws, par, k)?;
        if let Some(gr) = &ws.grad_rms {
            let first = hist.layer_stats.len() - (dims.l + 1);
            for (st, &g) in hist.layer_stats[first..].iter_mut().zip(gr) {
                st.rms_g = g;
            }
        }
        on_step(k, loss);
    }
    Ok(hist)
}

fn rms<T: Real>(it: impl Iterator<Item = T>, count: usize) -> f64 {
    (it.map(|x| x.to() * x.to()).sum::<f64>() / count.max(1) as f64).sqrt()
}

/// The [`LayerStat`]s of step `step` (before its update), `h0` holding h_l(0) of every
/// layer ((L+1) x N x D, the workspace's `h` at step 0); `rms_g` is NaN until the
/// backward pass fills it.
fn layer_stats<T: Real>(
    w: &Weights<T>,
    w0: &Weights<T>,
    ws: &Workspace<T>,
    h0: &[T],
    n: usize,
    step: usize,
    out: &mut Vec<LayerStat>,
) {
    let dims = w.dims;
    let (m, d) = (dims.m, dims.d);
    let nd = n * d;
    let at0 = |l: usize| &h0[l * nd..(l + 1) * nd];
    for l in 0..=dims.l {
        let h = ws.hidden(l, n, d);
        let dh = rms(h.iter().zip(at0(l)).map(|(&a, &b)| a - b), nd);
        let dbranch = if l < dims.l {
            let (hn, hn0, h_0) = (ws.hidden(l + 1, n, d), at0(l + 1), at0(l));
            rms((0..nd).map(|i| (hn[i] - h[i]) - (hn0[i] - h_0[i])), nd)
        } else {
            f64::NAN
        };
        let (rb, du, dv) = if l < dims.l {
            let hn = ws.hidden(l + 1, n, d);
            let blk = l * m * d..(l + 1) * m * d;
            (
                rms(hn.iter().zip(h).map(|(&a, &b)| a - b), nd),
                rms(
                    w.ut[blk.clone()]
                        .iter()
                        .zip(&w0.ut[blk.clone()])
                        .map(|(&a, &b)| a - b),
                    m * d,
                ),
                rms(
                    w.vt[blk.clone()]
                        .iter()
                        .zip(&w0.vt[blk])
                        .map(|(&a, &b)| a - b),
                    m * d,
                ),
            )
        } else {
            (f64::NAN, f64::NAN, f64::NAN)
        };
        out.push(LayerStat {
            step,
            layer: l,
            rms_h: rms(h.iter().copied(), nd),
            rms_branch: rb,
            rms_du: du,
            rms_dv: dv,
            rms_dh: dh,
            rms_dbranch: dbranch,
            rms_g: f64::NAN,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Activation;
    use crate::param::{Dims, PRESETS, Parametrization};

    fn dims() -> Dims {
        Dims {
            l: 3,
            m: 4,
            d: 5,
            din: 2,
            dout: 3,
            n: 3,
        }
    }

    #[test]
    fn sizes_from_huge_dimensions_are_errors() {
        let big = Dims {
            l: 1 << 62,
            ..dims()
        };
        let e = Workspace::<f64>::bytes(&big).unwrap_err().to_string();
        assert!(e.contains("'L + 1'"), "{e}");
        assert!(Workspace::<f32>::bytes(&dims()).unwrap() > 0);
        // K records of d_out x N f64: a K near 2^62 is an error, not a capacity overflow.
        let dims = dims();
        let data = Data::synthetic(dims.din, dims.dout, dims.n, 1);
        let r = Parametrization::preset("chizat-julia")
            .unwrap()
            .resolve(&dims);
        let mut w = Weights::<f64>::draw(&dims, &r, 1, 2, Par::Seq);
        let opts = TrainOptions {
            steps: 1 << 62,
            eta: 0.1,
            activation: Activation::Tanh,
            record_hidden: true,
            hidden_steps: None,
            layer_stats: false,
            layer_steps: Vec::new(),
            layout: Layout::RowsD,
            ..TrainOptions::default()
        };
        let e = train(&mut w, &data, &r, &opts, Par::Seq, &mut |_, _| {}).unwrap_err();
        assert!(matches!(e, TrainError::Memory(_)), "{e}");
        assert!(e.to_string().contains("'steps'"), "{e}");
    }

    /// The loss at the current weights (forward only).
    fn loss_at(w: &Weights<f64>, data: &Data, r: &Resolved, act: Activation) -> f64 {
        let mut w = w.clone();
        let mut ws = Workspace::new(&w, data.n);
        forward(&mut w, data, r, act, &mut ws, Par::Seq, 0).unwrap()
    }

    /// The fused step's update, divided by eta * lr, is minus the gradient: compare it
    /// with central finite differences of the loss, for every entry of every tensor.
    #[test]
    fn gradients_match_finite_differences_for_every_activation_and_preset() {
        let dims = dims();
        let data = Data::synthetic(dims.din, dims.dout, dims.n, 11);
        for preset in PRESETS {
            let mut p = Parametrization::preset(preset).unwrap();
            for role in crate::param::Role::ALL {
                let rp = p.role_mut(role);
                rp.trained = true;
                if rp.lr.c == 0.0 {
                    rp.lr.c = 1.0;
                }
            }
            let r = p.resolve(&dims);
            for act in [
                Activation::Tanh,
                Activation::Relu,
                Activation::Gelu,
                Activation::Softplus,
                Activation::Linear,
            ] {
                let w0 = Weights::<f64>::draw(&dims, &r, 3, 4, Par::Seq);
                let mut w1 = w0.clone();
                let mut ws = Workspace::new(&w1, data.n);
                let eta = 1e-3;
                forward(&mut w1, &data, &r, act, &mut ws, Par::Seq, 0).unwrap();
                backward_update(&mut w1, &data, &r, act, eta, &mut ws, Par::Seq, 0).unwrap();
                type Get = fn(&mut Weights<f64>) -> &mut [f64];
                let tensors: [(&str, Get, f64); 4] = [
                    ("W_E", |w| &mut w.we, r.we.lr),
                    ("U", |w| &mut w.ut, r.u.lr),
                    ("V", |w| &mut w.vt, r.v.lr),
                    ("W_U", |w| &mut w.wu, r.wu.lr),
                ];
                for (name, get, lr) in tensors {
                    let len = get(&mut w0.clone()).len();
                    for idx in 0..len {
                        let grad =
                            (get(&mut w0.clone())[idx] - get(&mut w1.clone())[idx]) / (eta * lr);
                        let mut wp = w0.clone();
                        let x = get(&mut wp)[idx];
                        let hstep = 1e-5 * x.abs().max(1e-2);
                        get(&mut wp)[idx] = x + hstep;
                        let lp = loss_at(&wp, &data, &r, act);
                        get(&mut wp)[idx] = x - hstep;
                        let lm = loss_at(&wp, &data, &r, act);
                        let fd = (lp - lm) / (2.0 * hstep);
                        let scale = fd
                            .abs()
                            .max(grad.abs())
                            .max(1e-6 * lp.abs().max(1e-12) / hstep.max(1e-300) * hstep);
                        assert!(
                            (fd - grad).abs() <= 2e-5 * scale + 1e-10,
                            "{preset}/{act:?}/{name}[{idx}]: fd {fd} vs analytic {grad}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn the_step_reports_the_time_of_each_part() {
        let dims = dims();
        let r = Parametrization::preset("chizat-julia")
            .unwrap()
            .resolve(&dims);
        let data = Data::synthetic(dims.din, dims.dout, dims.n, 2);
        let mut w = Weights::<f64>::draw(&dims, &r, 1, 2, Par::Seq);
        let mut ws = Workspace::new(&w, data.n);
        forward(&mut w, &data, &r, Activation::Tanh, &mut ws, Par::Seq, 0).unwrap();
        assert_eq!(ws.take_times(), PassTimes::default(), "off by default");
        ws.time_parts(true);
        let t = std::time::Instant::now();
        forward(&mut w, &data, &r, Activation::Tanh, &mut ws, Par::Seq, 0).unwrap();
        let fwd = ws.take_times();
        backward_update(
            &mut w,
            &data,
            &r,
            Activation::Tanh,
            0.1,
            &mut ws,
            Par::Seq,
            0,
        )
        .unwrap();
        let wall = t.elapsed().as_secs_f64();
        let bwd = ws.take_times();
        // Each pass lands in its own field, and reading resets them.
        assert!(fwd.forward_u > 0.0 && fwd.activation > 0.0 && fwd.forward_v > 0.0);
        assert_eq!(
            (fwd.backward_v, fwd.between, fwd.backward_u),
            (0.0, 0.0, 0.0)
        );
        assert!(bwd.backward_v > 0.0 && bwd.between > 0.0 && bwd.backward_u > 0.0);
        assert_eq!(
            (bwd.forward_u, bwd.activation, bwd.forward_v),
            (0.0, 0.0, 0.0)
        );
        assert!(fwd.total() + bwd.total() <= wall);
        assert_eq!(ws.take_times(), PassTimes::default());
    }

    #[test]
    fn zero_branch_scale_is_the_identity() {
        let dims = dims();
        let mut p = Parametrization::preset("chizat-python").unwrap();
        p.alpha = 0.0;
        let r = p.resolve(&dims);
        let data = Data::synthetic(dims.din, dims.dout, dims.n, 2);
        let mut w = Weights::<f64>::draw(&dims, &r, 1, 2, Par::Seq);
        let mut ws = Workspace::new(&w, data.n);
        forward(&mut w, &data, &r, Activation::Tanh, &mut ws, Par::Seq, 0).unwrap();
        let h0 = ws.hidden(0, data.n, dims.d).to_vec();
        assert_eq!(ws.hidden(dims.l, data.n, dims.d), &h0[..]);
    }

    #[test]
    fn divergence_names_step_and_layer() {
        let dims = dims();
        let p = Parametrization::preset("standard").unwrap();
        let r = p.resolve(&dims);
        let data = Data::synthetic(dims.din, dims.dout, dims.n, 2);
        let mut w = Weights::<f64>::draw(&dims, &r, 1, 2, Par::Seq);
        let opts = TrainOptions {
            steps: 50,
            eta: 1e200,
            activation: Activation::Linear,
            // Past the growth check: this test is about non-finite values.
            max_loss_growth: f64::INFINITY,
            ..TrainOptions::default()
        };
        let e = train(&mut w, &data, &r, &opts, Par::Seq, &mut |_, _| {}).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, TrainError::Diverged { .. }), "{msg}");
        assert!(msg.contains("step"), "{msg}");
    }

    #[test]
    fn an_overflowing_readout_is_named_with_h_l_finite() {
        let dims = dims();
        let r = Parametrization::preset("standard").unwrap().resolve(&dims);
        let data = Data::synthetic(dims.din, dims.dout, dims.n, 2);
        let mut w = Weights::<f64>::draw(&dims, &r, 1, 2, Par::Seq);
        // One huge read-out weight: h_L is finite, f[1, *] overflows.
        w.wu[1] = 1e308;
        w.wu[1 + dims.dout] = 1e308;
        let mut ws = Workspace::new(&w, data.n);
        let e = forward(&mut w, &data, &r, Activation::Tanh, &mut ws, Par::Seq, 7).unwrap_err();
        let msg = e.to_string();
        assert_eq!(e.diverged_at(), Some(7));
        assert!(
            msg.contains("at step 7")
                && msg.contains("output f[1, sample")
                && msg.contains("h_L is finite"),
            "{msg}"
        );
        // Finite outputs whose squared error overflows.
        let f = [1e200, 0.0, 0.0];
        let e = loss_overflow(3, &f, &[0.0; 3], 3).to_string();
        assert!(
            e.contains("every output f is finite") && e.contains("1e200"),
            "{e}"
        );
    }

    #[test]
    fn a_finite_but_exploding_loss_stops_at_the_stated_growth() {
        let dims = dims();
        let r = Parametrization::preset("standard").unwrap().resolve(&dims);
        let data = Data::synthetic(dims.din, dims.dout, dims.n, 2);
        let opts = TrainOptions {
            steps: 30,
            eta: 50.0,
            activation: Activation::Linear,
            ..Default::default()
        };
        let w0 = Weights::<f64>::draw(&dims, &r, 1, 2, Par::Seq);
        let e = train(&mut w0.clone(), &data, &r, &opts, Par::Seq, &mut |_, _| {}).unwrap_err();
        let TrainError::LossExploded {
            step,
            loss,
            initial,
            factor,
        } = e
        else {
            panic!("expected LossExploded, got {e}");
        };
        assert!(step > 0 && loss > factor * initial && factor == DEFAULT_MAX_LOSS_GROWTH);
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("at step {step}")) && msg.contains("1e20"),
            "{msg}"
        );
        // A tighter threshold stops earlier; none lets it run into the overflow.
        let tight = TrainOptions {
            max_loss_growth: 10.0,
            ..opts.clone()
        };
        let e2 = train(&mut w0.clone(), &data, &r, &tight, Par::Seq, &mut |_, _| {}).unwrap_err();
        assert!(e2.diverged_at().unwrap() <= step, "{e2}");
        let off = TrainOptions {
            max_loss_growth: f64::INFINITY,
            ..opts
        };
        let e3 = train(&mut w0.clone(), &data, &r, &off, Par::Seq, &mut |_, _| {}).unwrap_err();
        assert!(e3.diverged_at().unwrap() > step, "{e3}");
        assert!(!matches!(e3, TrainError::LossExploded { .. }), "{e3}");
    }

    #[test]
    fn a_cancelled_run_stops_before_its_next_step() {
        let dims = dims();
        let r = Parametrization::preset("chizat-julia")
            .unwrap()
            .resolve(&dims);
        let data = Data::synthetic(dims.din, dims.dout, dims.n, 2);
        let cancel = crate::cancel::Cancel::new();
        let opts = TrainOptions {
            steps: 10,
            cancel: cancel.clone(),
            ..Default::default()
        };
        let w0 = Weights::<f64>::draw(&dims, &r, 1, 2, Par::Seq);
        let mut done = Vec::new();
        let e = train(&mut w0.clone(), &data, &r, &opts, Par::Seq, &mut |k, _| {
            done.push(k);
            if k == 2 {
                cancel.cancel();
            }
        })
        .unwrap_err();
        assert_eq!(e, TrainError::Cancelled { step: 3 });
        assert_eq!(done, [0, 1, 2]);
        assert_eq!(e.diverged_at(), None);
        // The factored step checks the same token.
        let mut variants = [crate::factored::Variant {
            we: w0.we.clone(),
            wu: w0.wu.clone(),
            record_hidden: false,
        }];
        let e = crate::factored::train_shared(
            &dims,
            &w0.ut,
            &w0.vt,
            &mut variants,
            &data,
            &r,
            &opts,
            Par::Seq,
        )
        .unwrap_err();
        assert_eq!(e, TrainError::Cancelled { step: 0 });
    }

    #[test]
    fn results_do_not_depend_on_threads_and_f32_tracks_f64() {
        let dims = Dims {
            l: 4,
            m: 37,
            d: 45,
            din: 3,
            dout: 2,
            n: 5,
        };
        let r = Parametrization::preset("chizat-julia")
            .unwrap()
            .resolve(&dims);
        let data = Data::synthetic(dims.din, dims.dout, dims.n, 1);
        let opts = TrainOptions {
            steps: 4,
            eta: 1.0,
            activation: Activation::Tanh,
            record_hidden: true,
            layer_stats: true,
            layer_steps: vec![1, 3],
            ..TrainOptions::default()
        };
        let run = |par| {
            let mut w = Weights::<f64>::draw(&dims, &r, 1, 2, Par::Seq);
            train(&mut w, &data, &r, &opts, par, &mut |_, _| {}).unwrap()
        };
        let a = run(Par::Seq);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let b = pool.install(|| run(Par::Rayon));
        assert_eq!(a.losses, b.losses);
        assert_eq!(a.hidden, b.hidden);
        assert_eq!(a.layer_stats.len(), 4 * 5);
        assert_eq!(a.layers, b.layers);
        assert_eq!(a.layer_steps, vec![1, 3]);
        // The last layer of a recorded step is the recorded h_L of that step.
        let per = (dims.l + 1) * dims.d * dims.n;
        let last = &a.layers[per + dims.l * dims.d * dims.n..2 * per];
        assert_eq!(last, &a.hidden[3 * dims.d * dims.n..4 * dims.d * dims.n]);
        let mut w = Weights::<f32>::draw(&dims, &r, 1, 2, Par::Seq);
        let c = train(&mut w, &data, &r, &opts, Par::Seq, &mut |_, _| {}).unwrap();
        for (x, y) in a.losses.iter().zip(&c.losses) {
            assert!((x - y).abs() < 1e-4 * x.abs(), "{x} vs {y}");
        }
    }

    /// Rows of M (the transposed step) and rows of D give the same run to rounding:
    /// losses, outputs, h_L, every layer's h_l, the layer statistics and the final
    /// weights (rows of D passes the finite-difference check above). Thin, wide, square
    /// and one-wide shapes; 13 samples takes the kernels' grouped paths.
    #[test]
    fn both_layouts_train_the_same_network() {
        let shapes = [
            (40, 7, 5),
            (7, 40, 5),
            (1, 9, 3),
            (9, 1, 3),
            (17, 17, 13),
            (50, 3, 13),
        ];
        for (m, d, n) in shapes {
            for (name, eta) in [
                ("chizat-julia", 0.5),
                ("chizat-python", 0.1),
                ("standard", 0.01),
            ] {
                for act in [Activation::Tanh, Activation::Relu] {
                    let dims = Dims {
                        l: 3,
                        m,
                        d,
                        din: 3,
                        dout: 2,
                        n,
                    };
                    let r = Parametrization::preset(name).unwrap().resolve(&dims);
                    let data = Data::synthetic(dims.din, dims.dout, n, 3);
                    let run = |layout| {
                        let opts = TrainOptions {
                            steps: 3,
                            eta,
                            activation: act,
                            record_hidden: true,
                            hidden_steps: None,
                            layer_stats: true,
                            layer_steps: vec![2],
                            layout,
                            max_loss_growth: DEFAULT_MAX_LOSS_GROWTH,
                            cancel: Default::default(),
                        };
                        let mut w = Weights::<f64>::draw(&dims, &r, 1, 2, Par::Seq);
                        let h = train(&mut w, &data, &r, &opts, Par::Seq, &mut |_, _| {});
                        (h.unwrap(), w)
                    };
                    let (a, wa) = run(Layout::RowsD);
                    let (b, wb) = run(Layout::RowsM);
                    let close = |x: &[f64], y: &[f64], what: &str| {
                        let scale = x.iter().fold(1e-300_f64, |s, v| s.max(v.abs()));
                        for (i, (u, v)) in x.iter().zip(y).enumerate() {
                            assert!(
                                (u - v).abs() <= 1e-11 * scale,
                                "{name} {act:?} M={m} D={d} N={n} {what}[{i}]: {u} vs {v}"
                            );
                        }
                        assert_eq!(x.len(), y.len());
                    };
                    close(&a.losses, &b.losses, "loss");
                    close(&a.outputs, &b.outputs, "outputs");
                    close(&a.hidden, &b.hidden, "h_L");
                    close(&a.layers, &b.layers, "h_l");
                    let stats = |h: &History| {
                        h.layer_stats
                            .iter()
                            .flat_map(|s| [s.rms_h, s.rms_branch, s.rms_du, s.rms_dv])
                            .filter(|v| !v.is_nan())
                            .collect::<Vec<_>>()
                    };
                    close(&stats(&a), &stats(&b), "layer stats");
                    close(&wa.ut, &wb.ut, "U");
                    close(&wa.vt, &wb.vt, "V");
                    close(&wa.we, &wb.we, "W_E");
                    close(&wa.wu, &wb.wu, "W_U");
                }
            }
        }
    }
}
