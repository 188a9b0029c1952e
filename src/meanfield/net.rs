//! The finite mean-field ResNet of docs/papers.md 1.2: its particles, the fused
//! forward/backward pass that yields every particle's gradient and potential Hessian, and
//! the GD step.
//!
//! Storage is column-major (faer's): a layer's particles form two `M x d` matrices `U_l`,
//! `W_l` (row m = `u_{l,m}`, `w_{l,m}`), the head an `M0`-vector `a` and an `M0 x d`
//! matrix `B`; inputs and hidden states are `d x n` (column i = sample i).
//!
//! The pass runs over tiles of [`TILE`] samples; within a tile it goes forward through all
//! L layers (keeping `P_l = W_l Z_l` and `S_l = sigma(P_l)`, `M x T` each), through the
//! head, and back. Every product is a faer GEMM, `(M x d)(d x T)` forward and
//! `(M x T)(T x k)` for the particle sums; sums over samples accumulate tile by tile in
//! sample order, so results do not depend on threads.

use super::elementwise;
use crate::model::Activation;
use crate::rng::{Stream, Tensor};
use crate::train::TrainError;
use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use serde::{Deserialize, Serialize};

/// Samples per tile of the fused pass.
pub const TILE: usize = 32;

/// RNG stream of the stack particles: particle (l, m) is row m of stream
/// `(seed, Other(STACK_STREAM), l)`, columns `0..d` = u, `d..2d` = w.
pub const STACK_STREAM: u32 = 0x4d46_0001;
/// RNG stream of the head particles: particle j is row j of `(seed, Other(HEAD_STREAM), 0)`,
/// column 0 = a, columns `1..=d` = b.
pub const HEAD_STREAM: u32 = 0x4d46_0002;

/// How the particles are drawn. Both give every particle the law `N(0, I)`
/// (docs/papers.md 1.2, "Initialization").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Init {
    /// Antithetic pairs: particle `2k+1` is particle `2k` with `u` (stack) or `a` (head)
    /// negated. The branch and the output are then exactly zero at initialization, as in
    /// the limit (`Z(x, s) = x`, `f = 0`; the "zero initialization of the network's
    /// prediction" of docs/papers.md 1.1). Needs even M and M0. reslim's default.
    #[default]
    Symmetric,
    /// Independent particles.
    Iid,
}

/// The architecture and scales of a network (docs/papers.md 1.2).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Arch {
    /// Input (and hidden) dimension d.
    pub d: usize,
    /// Depth L (number of residual blocks).
    #[serde(rename = "L")]
    pub l: usize,
    /// Particles per block M.
    #[serde(rename = "M")]
    pub m: usize,
    /// Head particles M0.
    #[serde(rename = "M0")]
    pub m0: usize,
    /// Branch scale alpha.
    pub alpha: f64,
    /// Output scale beta.
    pub beta: f64,
    pub activation: Activation,
}

impl Arch {
    /// The residual multiplier alpha/(L M) (the engine's `m_V` with `m_U = 1`).
    pub fn branch(&self) -> f64 {
        self.alpha / (self.l * self.m) as f64
    }
    /// Distinct entries of a symmetric d x d matrix.
    pub fn dsym(&self) -> usize {
        self.d * (self.d + 1) / 2
    }
}

/// The particles of a network.
#[derive(Debug, Clone, PartialEq)]
pub struct Net {
    pub arch: Arch,
    /// L matrices `U_l`, `M x d` column-major.
    pub u: Vec<Vec<f64>>,
    /// L matrices `W_l`, `M x d` column-major.
    pub w: Vec<Vec<f64>>,
    /// Head output weights, `M0`.
    pub a: Vec<f64>,
    /// Head input weights `B`, `M0 x d` column-major.
    pub b: Vec<f64>,
}

pub(crate) fn mr(v: &[f64], r: usize, c: usize) -> MatRef<'_, f64> {
    MatRef::from_column_major_slice(&v[..r * c], r, c)
}
pub(crate) fn mm(v: &mut [f64], r: usize, c: usize) -> MatMut<'_, f64> {
    MatMut::from_column_major_slice_mut(&mut v[..r * c], r, c)
}
/// `dst = [dst +] k * lhs * rhs`, sequential.
pub(crate) fn gemm(
    dst: MatMut<'_, f64>,
    acc: Accum,
    lhs: MatRef<'_, f64>,
    rhs: MatRef<'_, f64>,
    k: f64,
) {
    matmul(dst, acc, lhs, rhs, k, Par::Seq)
}

/// Index of entry (a, b), a <= b, of a symmetric d x d matrix in packed storage.
#[inline]
pub(crate) fn sym_index(d: usize, a: usize, b: usize) -> usize {
    let (a, b) = if a <= b { (a, b) } else { (b, a) };
    a * d - a * (a + 1) / 2 + b
}

/// Where [`Net::apply`] puts each particle's `det(I - eta H)` of a step: the flow
/// KL estimator ([`super::kl::FlowKl`]) accumulates their log-determinants.
pub trait StepDeterminants {
    /// Adds a step with `det(I - eta H) = det` to stack particle `idx`.
    fn push_stack(&mut self, idx: usize, det: f64);
    /// Adds a step with `det(I - eta H) = det` to head particle `j`.
    fn push_head(&mut self, j: usize, det: f64);
}

impl Net {
    /// Draws the particles from the RNG streams [`STACK_STREAM`] and [`HEAD_STREAM`] of
    /// `seed`, each coordinate standard normal (docs/papers.md 1.2: tau_0 = N(0, I_2d),
    /// nu_0 = N(0, I_{1+d})).
    pub fn init(arch: Arch, init: Init, seed: u64) -> Net {
        let (d, m, m0) = (arch.d, arch.m, arch.m0);
        let row_of = |k: usize| match init {
            Init::Symmetric => (k / 2, k % 2 == 1),
            Init::Iid => (k, false),
        };
        let mut row = vec![0.0; 2 * d];
        let mut u = Vec::with_capacity(arch.l);
        let mut w = Vec::with_capacity(arch.l);
        for l in 0..arch.l {
            let s = Stream::new(seed, Tensor::Other(STACK_STREAM), l as u64);
            let (mut ul, mut wl) = (vec![0.0; m * d], vec![0.0; m * d]);
            for k in 0..m {
                let (r, flip) = row_of(k);
                s.fill_normal_row(r as u64, 0, 1.0, &mut row);
                for c in 0..d {
                    ul[c * m + k] = if flip { -row[c] } else { row[c] };
                    wl[c * m + k] = row[d + c];
                }
            }
            u.push(ul);
            w.push(wl);
        }
        let s = Stream::new(seed, Tensor::Other(HEAD_STREAM), 0);
        let (mut a, mut b) = (vec![0.0; m0], vec![0.0; m0 * d]);
        let mut row = vec![0.0; 1 + d];
        for j in 0..m0 {
            let (r, flip) = row_of(j);
            s.fill_normal_row(r as u64, 0, 1.0, &mut row);
            a[j] = if flip { -row[0] } else { row[0] };
            for c in 0..d {
                b[c * m0 + j] = row[1 + c];
            }
        }
        Net { arch, u, w, a, b }
    }

    /// `|theta|^2` of every stack particle (index `l * M + m`).
    pub fn stack_norms(&self) -> Vec<f64> {
        let (d, m) = (self.arch.d, self.arch.m);
        let mut out = vec![0.0; self.arch.l * m];
        for l in 0..self.arch.l {
            for k in 0..m {
                out[l * m + k] = (0..d)
                    .map(|c| self.u[l][c * m + k].powi(2) + self.w[l][c * m + k].powi(2))
                    .sum();
            }
        }
        out
    }

    /// `|omega|^2` of every head particle.
    pub fn head_norms(&self) -> Vec<f64> {
        let (d, m0) = (self.arch.d, self.arch.m0);
        (0..m0)
            .map(|j| self.a[j].powi(2) + (0..d).map(|c| self.b[c * m0 + j].powi(2)).sum::<f64>())
            .collect()
    }

    /// The outputs f(x_i) for inputs `x` (`d x n`).
    pub fn predict(&self, x: &[f64]) -> Vec<f64> {
        let n = x.len() / self.arch.d;
        let mut ws = Workspace::new(&self.arch);
        let mut f = vec![0.0; n];
        for i0 in (0..n).step_by(TILE) {
            let t = TILE.min(n - i0);
            self.forward_tile(x, i0, t, &mut ws);
            f[i0..i0 + t].copy_from_slice(&ws.f[..t]);
        }
        f
    }

    /// Forward pass of samples `i0..i0+t`: fills `ws.z`, `ws.keep`, `ws.ph`, `ws.sh`
    /// and `ws.f`.
    ///
    /// `z_{l+1} = z_l + (alpha/(LM)) sum_m u_m sigma(w_m^T z_l)` and
    /// `f = (beta/M0) sum_j a_j sigma(b_j^T z_L)` (docs/papers.md 1.2). In the engine's
    /// notation (`crate::train`) this is `h_{l+1} = h_l + m_V V sigma(m_U U^T h_l)` with
    /// `U = W_l^T`, `V = U_l^T`, `m_U = 1`, `m_V = alpha/(LM)`.
    fn forward_tile(&self, x: &[f64], i0: usize, t: usize, ws: &mut Workspace) {
        let Arch {
            d,
            l: depth,
            m,
            m0,
            beta,
            activation: act,
            ..
        } = self.arch;
        let c = self.arch.branch();
        ws.z[0][..d * t].copy_from_slice(&x[i0 * d..(i0 + t) * d]);
        let tanh = act == Activation::Tanh;
        for l in 0..depth {
            gemm(
                mm(&mut ws.pre, m, t),
                Accum::Replace,
                mr(&self.w[l], m, d),
                mr(&ws.z[l], d, t),
                1.0,
            );
            // Keep sigma(P) (tanh: its derivatives follow from it) or P (others).
            if tanh {
                elementwise::tanh_slice(&ws.pre[..m * t], &mut ws.keep[l][..m * t]);
            } else {
                ws.keep[l][..m * t].copy_from_slice(&ws.pre[..m * t]);
                elementwise::forward(act, &ws.pre[..m * t], &mut ws.sbuf[..m * t]);
            }
            let s = if tanh { &ws.keep[l] } else { &ws.sbuf };
            let (lo, hi) = ws.z.split_at_mut(l + 1);
            hi[0][..d * t].copy_from_slice(&lo[l][..d * t]);
            gemm(
                mm(&mut hi[0], d, t),
                Accum::Add,
                mr(&self.u[l], m, d).transpose(),
                mr(s, m, t),
                c,
            );
        }
        gemm(
            mm(&mut ws.ph, m0, t),
            Accum::Replace,
            mr(&self.b, m0, d),
            mr(&ws.z[depth], d, t),
            1.0,
        );
        elementwise::forward(act, &ws.ph[..m0 * t], &mut ws.sh[..m0 * t]);
        gemm(
            mm(&mut ws.f, 1, t),
            Accum::Replace,
            mr(&self.a, m0, 1).transpose(),
            mr(&ws.sh, m0, t),
            beta / m0 as f64,
        );
    }

    /// The loss `(1/2n) sum_i (f(x_i) - y_i)^2` (docs/papers.md 1.2), every particle's gradient
    /// of its potential and the potential's Hessian, into `der`.
    ///
    /// With `r_i = f(x_i) - y_i`, `z_{l,i}` the hidden states and `p_{l+1,i} = df_i/dz_{l+1}`
    /// the adjoint after block l (docs/papers.md 1.2, "Training"):
    ///
    /// ```text
    /// Psi_l(u, w) = (alpha/n) sum_i r_i p_{l+1,i}^T u sigma(w^T z_{l,i})   (= L M dL/dtheta)
    /// Psi_nu(a, b) = (beta/n) sum_i r_i a sigma(b^T z_{L,i})                (= M0 dL/domega)
    /// ```
    ///
    /// Gradients: `d_u Psi = (alpha/n) sum r_i sigma_i p_i`,
    /// `d_w Psi = (alpha/n) sum r_i (p_i^T u) sigma'_i z_i`; Hessian blocks `d_uu = 0`,
    /// `d_uw = (alpha/n) sum r_i sigma'_i p_i z_i^T`,
    /// `d_ww = (alpha/n) sum r_i (p_i^T u) sigma''_i z_i z_i^T`; head:
    /// `d_a = (beta/n) sum r_i sigma_i`, `d_b = a d_ab`, `d_aa = 0`,
    /// `d_ab = (beta/n) sum r_i sigma'_i z_i`, `d_bb = (beta/n) a sum r_i sigma''_i z_i z_i^T`.
    /// The Hessians are those of the potential with the distribution held fixed (the
    /// Jacobian of the mean-field velocity field, docs/papers.md 1.3 "KL divergence").
    pub fn derivatives(&self, x: &[f64], y: &[f64], ws: &mut Workspace, der: &mut Derivatives) {
        let Arch {
            d,
            l: depth,
            m,
            m0,
            alpha,
            beta,
            activation: act,
        } = self.arch;
        let n = y.len();
        let c = self.arch.branch();
        let ds = self.arch.dsym();
        let (ks, kh) = (alpha / n as f64, beta / n as f64);
        let tanh = act == Activation::Tanh;
        der.clear();
        // B scaled by a (rows): p_L = (beta/M0) (a . B)^T sigma'(B z).
        for col in 0..d {
            for j in 0..m0 {
                ws.ab[col * m0 + j] = self.a[j] * self.b[col * m0 + j];
            }
        }
        let mut loss = 0.0;
        for i0 in (0..n).step_by(TILE) {
            let t = TILE.min(n - i0);
            self.forward_tile(x, i0, t, ws);
            for i in 0..t {
                let r = ws.f[i] - y[i0 + i];
                ws.r[i] = r;
                loss += r * r;
            }
            // Head backward.
            elementwise::derivatives(
                act,
                &mut ws.ph[..m0 * t],
                &ws.sh[..m0 * t],
                &mut ws.sh2[..m0 * t],
            );
            gemm(
                mm(&mut ws.g, d, t),
                Accum::Replace,
                mr(&ws.ab, m0, d).transpose(),
                mr(&ws.ph, m0, t),
                beta / m0 as f64,
            );
            gemm(
                mm(&mut der.grad_a, m0, 1),
                Accum::Add,
                mr(&ws.sh, m0, t),
                mr(&ws.r, t, 1),
                kh,
            );
            fill_rz(&ws.r, &ws.z[depth], d, t, &mut ws.rz);
            gemm(
                mm(&mut der.hab, m0, d),
                Accum::Add,
                mr(&ws.ph, m0, t),
                mr(&ws.rz, t, d),
                kh,
            );
            fill_r6(&ws.r, &ws.z[depth], d, t, &mut ws.r6);
            gemm(
                mm(&mut der.hbb, m0, ds),
                Accum::Add,
                mr(&ws.sh2, m0, t),
                mr(&ws.r6, t, ds),
                kh,
            );
            // Stack backward; ws.g holds p_{l+1} = df/dz_{l+1}.
            for l in (0..depth).rev() {
                gemm(
                    mm(&mut ws.am, m, t),
                    Accum::Replace,
                    mr(&self.u[l], m, d),
                    mr(&ws.g, d, t),
                    1.0,
                );
                ws.layer_backward(act, l, m * t);
                let s = if tanh { &ws.keep[l] } else { &ws.sbuf };
                fill_rz(&ws.r, &ws.g, d, t, &mut ws.rz);
                gemm(
                    mm(&mut der.grad_u[l], m, d),
                    Accum::Add,
                    mr(s, m, t),
                    mr(&ws.rz, t, d),
                    ks,
                );
                fill_r9(&ws.r, &ws.g, &ws.z[l], d, t, &mut ws.r9);
                gemm(
                    mm(&mut der.huw[l], m, d * d),
                    Accum::Add,
                    mr(&ws.pre, m, t),
                    mr(&ws.r9, t, d * d),
                    ks,
                );
                fill_r6(&ws.r, &ws.z[l], d, t, &mut ws.r6);
                gemm(
                    mm(&mut der.hww[l], m, ds),
                    Accum::Add,
                    mr(&ws.bm, m, t),
                    mr(&ws.r6, t, ds),
                    ks,
                );
                // p_l = p_{l+1} + (alpha/(LM)) W_l^T (sigma' . U_l p_{l+1}).
                gemm(
                    mm(&mut ws.g, d, t),
                    Accum::Add,
                    mr(&self.w[l], m, d).transpose(),
                    mr(&ws.am, m, t),
                    c,
                );
            }
        }
        der.loss = loss / (2.0 * n as f64);
    }

    /// One GD step `theta <- theta - eta grad Psi` for every particle (the particle
    /// rates L M and M0 of docs/papers.md 1.2 are inside Psi), from `der` computed at the
    /// current particles. With `kl`, each particle first adds `-log|det(I - eta H)|` of
    /// its potential Hessian H to its log-determinant (docs/papers.md 1.3, discrete steps).
    pub fn apply(&mut self, der: &Derivatives, eta: f64, kl: Option<&mut dyn StepDeterminants>) {
        let Arch {
            d, l: depth, m, m0, ..
        } = self.arch;
        let mut kl = kl;
        let mut cm = vec![0.0; d * d];
        let mut s = vec![0.0; d * d];
        let mut dm = vec![0.0; d * d];
        let mut gw = vec![0.0; d];
        for l in 0..depth {
            for k in 0..m {
                // C[a][b] = d^2 Psi / du_a dw_b,  D[a][b] = d^2 Psi / dw_a dw_b.
                for a in 0..d {
                    for b in 0..d {
                        cm[a * d + b] = der.huw[l][(a * d + b) * m + k];
                        dm[a * d + b] = der.hww[l][sym_index(d, a, b) * m + k];
                    }
                }
                if let Some(kl) = kl.as_deref_mut() {
                    // det(I - eta H) with H = [[0, C], [C^T, D]] is
                    // det(I - eta D - eta^2 C^T C) (Schur complement of the identity block).
                    for a in 0..d {
                        for b in 0..d {
                            let ctc: f64 = (0..d).map(|e| cm[e * d + a] * cm[e * d + b]).sum();
                            s[a * d + b] =
                                f64::from(a == b) - eta * dm[a * d + b] - eta * eta * ctc;
                        }
                    }
                    kl.push_stack(l * m + k, det_small(&mut s, d));
                }
                for (b, g) in gw.iter_mut().enumerate() {
                    *g = (0..d).map(|a| self.u[l][a * m + k] * cm[a * d + b]).sum();
                }
                for (a, g) in gw.iter().enumerate() {
                    self.u[l][a * m + k] -= eta * der.grad_u[l][a * m + k];
                    self.w[l][a * m + k] -= eta * g;
                }
            }
        }
        for j in 0..m0 {
            let aj = self.a[j];
            if let Some(kl) = kl.as_deref_mut() {
                for a in 0..d {
                    for b in 0..d {
                        let ca = der.hab[a * m0 + j];
                        let cb = der.hab[b * m0 + j];
                        s[a * d + b] = f64::from(a == b)
                            - eta * aj * der.hbb[sym_index(d, a, b) * m0 + j]
                            - eta * eta * ca * cb;
                    }
                }
                kl.push_head(j, det_small(&mut s, d));
            }
            self.a[j] -= eta * der.grad_a[j];
            for c in 0..d {
                self.b[c * m0 + j] -= eta * aj * der.hab[c * m0 + j];
            }
        }
    }

    /// Checks that every particle is finite; the error names the step and layer.
    pub fn check_finite(&self, step: usize) -> Result<(), TrainError> {
        for l in 0..self.arch.l {
            if !self.u[l].iter().chain(&self.w[l]).all(|v| v.is_finite()) {
                return Err(TrainError::Diverged {
                    step,
                    layer: Some(l),
                    what: "stack particles",
                });
            }
        }
        if !self.a.iter().chain(&self.b).all(|v| v.is_finite()) {
            return Err(TrainError::Diverged {
                step,
                layer: Some(self.arch.l),
                what: "head particles",
            });
        }
        Ok(())
    }

    /// Hidden states and adjoints of every sample at every depth (for the Gram matrices).
    pub fn trace(&self, x: &[f64]) -> Trace {
        let Arch {
            d,
            l: depth,
            m,
            m0,
            beta,
            activation: act,
            ..
        } = self.arch;
        let n = x.len() / d;
        let c = self.arch.branch();
        let mut ws = Workspace::new(&self.arch);
        for col in 0..d {
            for j in 0..m0 {
                ws.ab[col * m0 + j] = self.a[j] * self.b[col * m0 + j];
            }
        }
        let mut tr = Trace {
            z: vec![vec![0.0; d * n]; depth + 1],
            p: vec![vec![0.0; d * n]; depth + 1],
            f: vec![0.0; n],
        };
        for i0 in (0..n).step_by(TILE) {
            let t = TILE.min(n - i0);
            self.forward_tile(x, i0, t, &mut ws);
            tr.f[i0..i0 + t].copy_from_slice(&ws.f[..t]);
            elementwise::derivatives(
                act,
                &mut ws.ph[..m0 * t],
                &ws.sh[..m0 * t],
                &mut ws.sh2[..m0 * t],
            );
            gemm(
                mm(&mut ws.g, d, t),
                Accum::Replace,
                mr(&ws.ab, m0, d).transpose(),
                mr(&ws.ph, m0, t),
                beta / m0 as f64,
            );
            for l in (0..=depth).rev() {
                tr.z[l][i0 * d..(i0 + t) * d].copy_from_slice(&ws.z[l][..d * t]);
                tr.p[l][i0 * d..(i0 + t) * d].copy_from_slice(&ws.g[..d * t]);
                if l == 0 {
                    break;
                }
                let l = l - 1;
                gemm(
                    mm(&mut ws.am, m, t),
                    Accum::Replace,
                    mr(&self.u[l], m, d),
                    mr(&ws.g, d, t),
                    1.0,
                );
                ws.layer_backward(act, l, m * t);
                gemm(
                    mm(&mut ws.g, d, t),
                    Accum::Add,
                    mr(&self.w[l], m, d).transpose(),
                    mr(&ws.am, m, t),
                    c,
                );
            }
        }
        tr
    }
}

/// `rz[i, k] = r_i v[k, i]` (`t x d`, column-major) from `v` (`d x t`).
fn fill_rz(r: &[f64], v: &[f64], d: usize, t: usize, out: &mut [f64]) {
    for k in 0..d {
        for i in 0..t {
            out[k * t + i] = r[i] * v[i * d + k];
        }
    }
}

/// `out[i, a d + b] = r_i p[a, i] z[b, i]` (`t x d^2`).
fn fill_r9(r: &[f64], p: &[f64], z: &[f64], d: usize, t: usize, out: &mut [f64]) {
    for a in 0..d {
        for b in 0..d {
            let col = &mut out[(a * d + b) * t..(a * d + b + 1) * t];
            for i in 0..t {
                col[i] = r[i] * p[i * d + a] * z[i * d + b];
            }
        }
    }
}

/// `out[i, sym(a, b)] = r_i z[a, i] z[b, i]` for `a <= b` (`t x d(d+1)/2`).
fn fill_r6(r: &[f64], z: &[f64], d: usize, t: usize, out: &mut [f64]) {
    for a in 0..d {
        for b in a..d {
            let k = sym_index(d, a, b);
            let col = &mut out[k * t..(k + 1) * t];
            for i in 0..t {
                col[i] = r[i] * z[i * d + a] * z[i * d + b];
            }
        }
    }
}

/// The determinant of a small `d x d` row-major matrix (LU with partial pivoting;
/// destroys `a`).
pub fn det_small(a: &mut [f64], d: usize) -> f64 {
    let mut det = 1.0;
    for col in 0..d {
        let piv = (col..d)
            .max_by(|&i, &j| a[i * d + col].abs().total_cmp(&a[j * d + col].abs()))
            .unwrap_or(col);
        if a[piv * d + col] == 0.0 {
            return 0.0;
        }
        if piv != col {
            for k in 0..d {
                a.swap(piv * d + k, col * d + k);
            }
            det = -det;
        }
        let p = a[col * d + col];
        det *= p;
        for i in col + 1..d {
            let f = a[i * d + col] / p;
            for k in col + 1..d {
                a[i * d + k] -= f * a[col * d + k];
            }
        }
    }
    det
}

/// Hidden states `z[l]` (`d x n`, l = 0..=L) and adjoints `p[l] = df/dz_l` (`d x n`) of
/// every sample, and the outputs `f`.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    pub z: Vec<Vec<f64>>,
    pub p: Vec<Vec<f64>>,
    pub f: Vec<f64>,
}

/// Every particle's potential gradient and Hessian (see [`Net::derivatives`]), and the
/// loss. Layouts: `grad_u[l]` `M x d`; `huw[l]` `M x d^2` (column `a d + b` =
/// `d^2 Psi/du_a dw_b`); `hww[l]` `M x d(d+1)/2` (packed `d^2 Psi/dw_a dw_b`); `grad_a`
/// `M0`; `hab` `M0 x d` (`d^2 Psi/da db`); `hbb` `M0 x d(d+1)/2` (`d^2 Psi/db db` divided
/// by a). `d_w Psi = C^T u` and `d_b Psi = a d_ab` follow from the Hessian blocks.
#[derive(Debug, Clone, PartialEq)]
pub struct Derivatives {
    pub loss: f64,
    pub grad_u: Vec<Vec<f64>>,
    pub huw: Vec<Vec<f64>>,
    pub hww: Vec<Vec<f64>>,
    pub grad_a: Vec<f64>,
    pub hab: Vec<f64>,
    pub hbb: Vec<f64>,
}

impl Derivatives {
    pub fn new(arch: &Arch) -> Self {
        let Arch { d, l, m, m0, .. } = *arch;
        let ds = arch.dsym();
        Derivatives {
            loss: 0.0,
            grad_u: vec![vec![0.0; m * d]; l],
            huw: vec![vec![0.0; m * d * d]; l],
            hww: vec![vec![0.0; m * ds]; l],
            grad_a: vec![0.0; m0],
            hab: vec![0.0; m0 * d],
            hbb: vec![0.0; m0 * ds],
        }
    }

    fn clear(&mut self) {
        self.loss = 0.0;
        for v in self
            .grad_u
            .iter_mut()
            .chain(&mut self.huw)
            .chain(&mut self.hww)
        {
            v.fill(0.0);
        }
        self.grad_a.fill(0.0);
        self.hab.fill(0.0);
        self.hbb.fill(0.0);
    }

    /// `grad_w Psi` of stack particle (l, m): `C^T u`.
    pub fn grad_w(&self, net: &Net, l: usize, k: usize) -> Vec<f64> {
        let (d, m) = (net.arch.d, net.arch.m);
        (0..d)
            .map(|b| {
                (0..d)
                    .map(|a| net.u[l][a * m + k] * self.huw[l][(a * d + b) * m + k])
                    .sum()
            })
            .collect()
    }

    /// `grad_b Psi` of head particle j: `a_j d_ab`.
    pub fn grad_b(&self, net: &Net, j: usize) -> Vec<f64> {
        let (d, m0) = (net.arch.d, net.arch.m0);
        (0..d).map(|c| net.a[j] * self.hab[c * m0 + j]).collect()
    }
}

/// Scratch of the fused pass (one tile), allocated once per run.
pub struct Workspace {
    z: Vec<Vec<f64>>,
    /// Per layer: sigma(P_l) for tanh (whose derivatives follow from it), P_l otherwise.
    keep: Vec<Vec<f64>>,
    /// Scratch: P_l in the forward pass, sigma'(P_l) in the backward pass.
    pre: Vec<f64>,
    /// Scratch: sigma(P_l) for activations other than tanh.
    sbuf: Vec<f64>,
    ph: Vec<f64>,
    sh: Vec<f64>,
    sh2: Vec<f64>,
    ab: Vec<f64>,
    f: Vec<f64>,
    r: Vec<f64>,
    g: Vec<f64>,
    am: Vec<f64>,
    bm: Vec<f64>,
    rz: Vec<f64>,
    r9: Vec<f64>,
    r6: Vec<f64>,
}

impl Workspace {
    /// The elementwise backward pass of layer l (`len = M t` entries): on entry `am`
    /// holds `U_l p_{l+1}`; on exit `pre = sigma'(P_l)`, `am = sigma'(P_l) . U_l p_{l+1}`,
    /// `bm = sigma''(P_l) . U_l p_{l+1}`, and sigma(P_l) is in `keep[l]` (tanh) or `sbuf`.
    fn layer_backward(&mut self, act: Activation, l: usize, len: usize) {
        if act == Activation::Tanh {
            elementwise::tanh_backward(
                &self.keep[l][..len],
                &mut self.pre[..len],
                &mut self.am[..len],
                &mut self.bm[..len],
            );
        } else {
            self.pre[..len].copy_from_slice(&self.keep[l][..len]);
            elementwise::forward(act, &self.pre[..len], &mut self.sbuf[..len]);
            elementwise::backward(
                act,
                &mut self.pre[..len],
                &self.sbuf[..len],
                &mut self.am[..len],
                &mut self.bm[..len],
            );
        }
    }

    pub fn new(arch: &Arch) -> Self {
        let Arch { d, l, m, m0, .. } = *arch;
        let t = TILE;
        Workspace {
            z: vec![vec![0.0; d * t]; l + 1],
            keep: vec![vec![0.0; m * t]; l],
            pre: vec![0.0; m * t],
            sbuf: vec![0.0; m * t],
            ph: vec![0.0; m0 * t],
            sh: vec![0.0; m0 * t],
            sh2: vec![0.0; m0 * t],
            ab: vec![0.0; m0 * d],
            f: vec![0.0; t],
            r: vec![0.0; t],
            g: vec![0.0; d * t],
            am: vec![0.0; m * t],
            bm: vec![0.0; m * t],
            rz: vec![0.0; t * d],
            r9: vec![0.0; t * d * d],
            r6: vec![0.0; t * arch.dsym()],
        }
    }
}
