//! The linear large-D limit with `N ≥ 1` training inputs (an extension of docs/papers.md §2.3,
//! which covers `N = 1`; derived here, not taken from the papers).
//!
//! # Model
//!
//! Inputs `x_n`, targets `y_n` (`n = 0..N`), loss `(1/N) Σ_n ½|f_n − y_n|²` (the authors'
//! Python convention: per-sample gradients summed and the update divided by `N`), otherwise
//! the network and learning rates of [`crate::limit`]. Per-sample backward states
//! `B_{k,n} = D ∂(½|f_{k,n} − y_n|²)/∂h_{k,n}`, so `B_{k,n}(1) = W_u g_{k,n}`.
//!
//! # Derivation
//!
//! The unit update sums over samples, `ũ ← ũ − (c_u/N) Σ_n h_{k,n} (ṽᵀ B_{k,n})/D` (and
//! likewise for `ṽ`), so the derivation of [`crate::limit`] goes through with
//! 1. the pass index `k` replaced by the pair `a = (k, n)` (stored as `k·N + n`), every
//!    correlation becoming a `KN × KN` matrix (`Γᴴ_{(j,m),(k,n)} = ⟨h_{j,m}, h_{k,n}⟩/D`, …);
//! 2. "earlier" meaning "earlier step" (`j < k`, any sample): the `M` matrices are block
//!    upper triangular with diagonal blocks `(0, I_N, I_N, 0)` for `(F1, F2, G1, G2)`;
//! 3. `c_u, c_v` replaced by `c̄_u = c_u/N`, `c̄_v = c_v/N`.
//!
//! The velocity field of step `k` is still `α Σ_k = Σ_{a,b<k} A_{ab} B_b h_aᵀ/D` with the same
//! closed form of `A` (with `c̄`). Its new blocks at step `k`, for sample `n`, `n'`:
//!
//! ```text
//! A[<k, (k,n)]      = α c̄_u c̄_v [σ_u²(F1 + F1ᵀ) − c̄_u(σ_u² F1ᵀΓᴴF1 + σ_v² F2ᵀΓᴮF2)] γᴴ_n
//! A[(k,n), <k]      = α c̄_u c̄_v [σ_v²(G2 + G2ᵀ) − c̄_v(σ_u² G1ᵀΓᴴG1 + σ_v² G2ᵀΓᴮG2)] γᴮ_n
//! A[(k,n), (k,n')]  = −α(c̄_u σ_v² + c̄_v σ_u²) δ_{nn'} + c̄_u c̄_v γᴴ_{n'}ᵀ A_{<k} γᴮ_n
//! ```
//!
//! with `γᴴ_n = Γᴴ_{<k,(k,n)}`, `γᴮ_n = Γᴮ_{<k,(k,n)}` (note the sample swap in the diagonal
//! block). For each sample the forward and backward correlation systems are those of
//! `N = 1` with the same `C_H`, `C_B` (over the `kN` earlier indices), initial values
//! `Γᴴ_{(j,m),(k,n)}(0) = σ_we² x_m·x_n`, `Λ_{(k,n),(j,m)}(0) = ξ^{We}_{B,(j,m)}(0)·x_n`, terminal
//! values `Γᴮ_{(j,m),(k,n)}(1) = σ_wu² g_{j,m}·g_{k,n}`, `Λ_{(j,m),(k,n)}(1) = ξ^{Wu}_{H,(j,m)}(1)·g_{k,n}`.
//! The within-step blocks solve
//!
//! ```text
//! (Γᴴ_{(k,n),(k,n')})' = (A_{<k}ᵀγᴴ_n)·Λ_{(k,n'),<k} + (A_{<k}ᵀγᴴ_{n'})·Λ_{(k,n),<k},   from σ_we² x_n·x_{n'},
//! (Γᴮ_{(k,n),(k,n')})' = −(A_{<k}γᴮ_n)·Λ_{<k,(k,n')} − (A_{<k}γᴮ_{n'})·Λ_{<k,(k,n)},   from σ_wu² g_{k,n}·g_{k,n'},
//! Λ_{(k,n),(k,n')} ≡ x_n·ξ^{We}_{B,(k,n')}(0)   (conserved: h' = αΣh, B' = −αΣᵀB).
//! ```
//!
//! For `N = 1` every formula, and every ODE solve, is the one of
//! [`solve_linear_limit`](super::solve_linear_limit) (test `multi_n1_reduces_exactly`).

use super::LimitError;
use super::grid::{DepthGrid, DepthSeries};
use super::ode::{Dopri5, SolverReport};
use super::params::LinearLimitParams;
use serde::{Deserialize, Serialize};

/// Everything the `N`-input linear limit computes. Combined indices `a = k·N + n` (step `k`,
/// sample `n`) label the rows and columns of the `KN × KN` series.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LinearLimitMulti {
    /// The parameters used.
    pub params: LinearLimitParams,
    /// Number of samples `N`.
    pub n_samples: usize,
    /// Inputs `x_n`.
    pub x: Vec<Vec<f64>>,
    /// Targets `y_n`.
    pub y: Vec<Vec<f64>>,
    /// The depth grid.
    pub grid: DepthGrid,
    /// Limit outputs `f[k][n]`.
    pub f: Vec<Vec<Vec<f64>>>,
    /// Residuals `g[k][n] = f[k][n] − y_n`.
    pub g: Vec<Vec<Vec<f64>>>,
    /// Losses `(1/N) Σ_n ½|f_{k,n} − y_n|²`.
    pub loss: Vec<f64>,
    /// `Γᴴ_{ab}(s)`, `num_s × KN × KN`.
    pub gamma_h: DepthSeries,
    /// `Γᴮ_{ab}(s)`.
    pub gamma_b: DepthSeries,
    /// `Λ_{ab}(s) = ⟨h_a, B_b⟩/D`.
    pub lambda: DepthSeries,
    /// Response matrix: `α Σ_k = Σ_{a,b<k} A_{ab} B_b h_aᵀ/D`.
    pub a: DepthSeries,
    /// `ξ^{We}_{H,a}`, `num_s × KN × d_in`.
    pub xi_h_we: DepthSeries,
    /// `ξ^{Wu}_{H,a}`, `num_s × KN × d_out`.
    pub xi_h_wu: DepthSeries,
    /// `ξ^{We}_{B,a}`, `num_s × KN × d_in`.
    pub xi_b_we: DepthSeries,
    /// `ξ^{Wu}_{B,a}`, `num_s × KN × d_out`.
    pub xi_b_wu: DepthSeries,
    /// Unit-feature coefficients (see [`crate::limit`]).
    pub m_f1: DepthSeries,
    /// See [`LinearLimitMulti::m_f1`].
    pub m_f2: DepthSeries,
    /// See [`LinearLimitMulti::m_f1`].
    pub m_g1: DepthSeries,
    /// See [`LinearLimitMulti::m_f1`].
    pub m_g2: DepthSeries,
    /// `h_a' = Σ_b W_h[a, b] B_b`.
    pub w_h: DepthSeries,
    /// `B_a' = Σ_b W_b[a, b] h_b`.
    pub w_b: DepthSeries,
    /// Work of all ODE solves.
    pub report: SolverReport,
}

impl LinearLimitMulti {
    /// The combined index of step `k`, sample `n`.
    pub fn index(&self, k: usize, n: usize) -> usize {
        k * self.n_samples + n
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[inline]
fn lerp_at(m: &DepthSeries, i: usize, theta: f64, r: usize, c: usize) -> f64 {
    let lo = m.get(i, r, c);
    lo + theta * (m.get(i + 1, r, c) - lo)
}

fn tabulated_linear_rhs<'a>(
    grid: &'a DepthGrid,
    cmat: &'a DepthSeries,
) -> impl FnMut(f64, &[f64], &mut [f64]) + 'a {
    move |s, y, dy| {
        let (i, theta) = grid.locate(s);
        let n = cmat.cols;
        let (lo, hi) = (cmat.at(i), cmat.at(i + 1));
        for (r, d) in dy.iter_mut().enumerate() {
            let (lr, hr) = (&lo[r * n..(r + 1) * n], &hi[r * n..(r + 1) * n]);
            let mut acc = 0.0;
            for c in 0..n {
                acc += (lr[c] + theta * (hr[c] - lr[c])) * y[c];
            }
            *d = acc;
        }
    }
}

/// Bytes the exact solver needs for `K = steps` passes on `n` samples on `num_s` depth
/// points: about twenty `num_s × KN × KN` series (correlations, responses, ODE work) of
/// 8 bytes; an error naming the quantities if the count overflows.
pub fn exact_bytes(
    num_s: usize,
    steps: usize,
    n: usize,
) -> Result<usize, crate::memory::MemoryError> {
    use crate::memory::product;
    let kn = product(&[("steps", steps), ("data.N", n)])?;
    product(&[
        ("num_s", num_s),
        ("steps x data.N", kn),
        ("steps x data.N", kn),
        ("20 series x 8 bytes", 160),
    ])
}

/// Solves the linear limit for `N = x.len()` training pairs `(x[n], y[n])` (all `x[n]` of
/// one length `d_in`, all `y[n]` of one length `d_out`).
pub fn solve_linear_limit_multi(
    x: &[Vec<f64>],
    y: &[Vec<f64>],
    params: &LinearLimitParams,
) -> Result<LinearLimitMulti, LimitError> {
    params.validate()?;
    super::params::check_data(x, y)?;
    let mut st = State::new(x, y, params)?;
    st.base_case();
    for k in 1..params.k_steps {
        st.step(k)?;
    }
    Ok(st.finish())
}

struct State {
    p: LinearLimitParams,
    nn: usize,
    x: Vec<Vec<f64>>,
    y: Vec<Vec<f64>>,
    grid: DepthGrid,
    ode: Dopri5,
    report: SolverReport,
    f: Vec<Vec<Vec<f64>>>,
    g: Vec<Vec<Vec<f64>>>,
    gh: DepthSeries,
    gb: DepthSeries,
    lam: DepthSeries,
    a: DepthSeries,
    mf1: DepthSeries,
    mf2: DepthSeries,
    mg1: DepthSeries,
    mg2: DepthSeries,
    wh: DepthSeries,
    wb: DepthSeries,
    xhe: DepthSeries,
    xhu: DepthSeries,
    xbe: DepthSeries,
    xbu: DepthSeries,
}

impl State {
    fn new(x: &[Vec<f64>], y: &[Vec<f64>], p: &LinearLimitParams) -> Result<Self, LimitError> {
        let nn = x.len();
        let (kk, ns, di, d_o) = (p.k_steps, p.num_s, x[0].len(), y[0].len());
        let kn = kk * nn;
        let sq = || DepthSeries::zeros(ns, kn, kn);
        Ok(Self {
            p: p.clone(),
            nn,
            x: x.to_vec(),
            y: y.to_vec(),
            grid: DepthGrid::new(ns)?,
            ode: Dopri5::new(p.rtol, p.atol)?,
            report: SolverReport::default(),
            f: vec![vec![vec![0.0; d_o]; nn]; kk],
            g: vec![vec![vec![0.0; d_o]; nn]; kk],
            gh: sq(),
            gb: sq(),
            lam: sq(),
            a: sq(),
            mf1: sq(),
            mf2: sq(),
            mg1: sq(),
            mg2: sq(),
            wh: sq(),
            wb: sq(),
            xhe: DepthSeries::zeros(ns, kn, di),
            xhu: DepthSeries::zeros(ns, kn, d_o),
            xbe: DepthSeries::zeros(ns, kn, di),
            xbu: DepthSeries::zeros(ns, kn, d_o),
        })
    }

    fn ns(&self) -> usize {
        self.p.num_s
    }

    /// Effective per-unit rates `c̄ = c/N`.
    fn cbar(&self) -> (f64, f64) {
        let n = self.nn as f64;
        (self.p.c_u() / n, self.p.c_v() / n)
    }

    fn wrap<T>(k: usize, stage: &'static str, r: Result<T, LimitError>) -> Result<T, LimitError> {
        r.map_err(|e| LimitError::Solve {
            step: k,
            stage,
            source: Box::new(e),
        })
    }

    fn base_case(&mut self) {
        let p = self.p.clone();
        let nn = self.nn;
        let (we2, wu2) = (p.sigma_we * p.sigma_we, p.sigma_wu * p.sigma_wu);
        let (u2, v2) = (p.sigma_u * p.sigma_u, p.sigma_v * p.sigma_v);
        let (cu, cv) = self.cbar();
        for n in 0..nn {
            self.g[0][n] = self.y[n].iter().map(|v| -v).collect();
        }
        let a00 = -p.alpha * (cu * v2 + cv * u2);
        for i in 0..self.ns() {
            for n in 0..nn {
                for m in 0..nn {
                    self.gh.set(i, n, m, we2 * dot(&self.x[n], &self.x[m]));
                    self.gb
                        .set(i, n, m, wu2 * dot(&self.g[0][n], &self.g[0][m]));
                    // Within-step block of A: −α(c̄_u σ_v² + c̄_v σ_u²) δ (no earlier steps).
                    self.a.set(i, n, m, if n == m { a00 } else { 0.0 });
                }
                self.mf2.set(i, n, n, 1.0);
                self.mg1.set(i, n, n, 1.0);
                for (c, xc) in self.x[n].iter().enumerate() {
                    self.xhe.set(i, n, c, we2 * xc);
                }
                for (c, gc) in self.g[0][n].iter().enumerate() {
                    self.xbu.set(i, n, c, wu2 * gc);
                }
            }
        }
    }

    fn step(&mut self, k: usize) -> Result<(), LimitError> {
        let nn = self.nn;
        self.correlations(k, true)?;
        for n in 0..nn {
            self.xi(k, n, true)?;
        }
        let last = self.ns() - 1;
        for n in 0..nn {
            let a = k * nn + n;
            self.f[k][n] = self.xhu.row(last, a).to_vec();
            self.g[k][n] = self.f[k][n]
                .iter()
                .zip(&self.y[n])
                .map(|(f, y)| f - y)
                .collect();
        }
        self.correlations(k, false)?;
        for n in 0..nn {
            self.xi(k, n, false)?;
        }
        self.within_step_blocks(k)?;
        self.fill_m_a_w(k);
        Ok(())
    }

    /// Forward (`forward = true`: `[Γᴴ_{<k,(k,n)}; Λ_{(k,n),<k}]`, `C_H`) or backward
    /// (`[Γᴮ_{<k,(k,n)}; Λ_{<k,(k,n)}]`, `C_B`) correlation solve for every sample `n`.
    fn correlations(&mut self, k: usize, forward: bool) -> Result<(), LimitError> {
        let (ns, nn) = (self.ns(), self.nn);
        let q = k * nn; // number of earlier indices
        let n2 = 2 * q;
        let mut cmat = DepthSeries::zeros(ns, n2, n2);
        for i in 0..ns {
            let c = cmat.at_mut(i);
            for r in 0..q {
                for col in 0..q {
                    let (mut la, mut ga) = (0.0, 0.0);
                    if forward {
                        // Λ Aᵀ and Γᴮ Aᵀ
                        for m in 0..q {
                            let am = self.a.get(i, col, m);
                            la += self.lam.get(i, r, m) * am;
                            ga += self.gb.get(i, r, m) * am;
                        }
                        c[r * n2 + col] = la;
                        c[r * n2 + q + col] = self.wh.get(i, r, col);
                        c[(q + r) * n2 + col] = ga + self.wb.get(i, r, col);
                    } else {
                        // Λᵀ Ãᵀ = −Λᵀ A and Γᴴ Ãᵀ = −Γᴴ A
                        for m in 0..q {
                            let am = self.a.get(i, m, col);
                            la += self.lam.get(i, m, r) * am;
                            ga += self.gh.get(i, r, m) * am;
                        }
                        c[r * n2 + col] = -la;
                        c[r * n2 + q + col] = self.wb.get(i, r, col);
                        c[(q + r) * n2 + col] = -ga + self.wh.get(i, r, col);
                    }
                }
            }
        }
        let p = &self.p;
        let (we2, wu2) = (p.sigma_we * p.sigma_we, p.sigma_wu * p.sigma_wu);
        let last = ns - 1;
        let mut y0 = vec![0.0; n2];
        let mut out = vec![0.0; ns * n2];
        for n in 0..nn {
            let a = k * nn + n;
            for b in 0..q {
                let (j, m) = (b / nn, b % nn);
                if forward {
                    y0[b] = we2 * dot(&self.x[m], &self.x[n]);
                    y0[q + b] = dot(self.xbe.row(0, b), &self.x[n]);
                } else {
                    y0[b] = wu2 * dot(&self.g[k][n], &self.g[j][m]);
                    y0[q + b] = dot(self.xhu.row(last, b), &self.g[k][n]);
                }
            }
            let (s0, s1, stage) = if forward {
                (0.0, 1.0, "forward correlations (Gamma_H, Lambda)")
            } else {
                (1.0, 0.0, "backward correlations (Gamma_B, Lambda)")
            };
            let rep = Self::wrap(
                k,
                stage,
                self.ode.solve_at(
                    tabulated_linear_rhs(&self.grid, &cmat),
                    s0,
                    s1,
                    &y0,
                    self.grid.points(),
                    &mut out,
                ),
            )?;
            self.report.merge(&rep);
            for i in 0..ns {
                let row = &out[i * n2..(i + 1) * n2];
                for b in 0..q {
                    if forward {
                        self.gh.set(i, b, a, row[b]);
                        self.gh.set(i, a, b, row[b]);
                        self.lam.set(i, a, b, row[q + b]);
                    } else {
                        self.gb.set(i, b, a, row[b]);
                        self.gb.set(i, a, b, row[b]);
                        self.lam.set(i, b, a, row[q + b]);
                    }
                }
            }
        }
        Ok(())
    }

    /// `ξ_{H,(k,n)}' = Σ_b ξ_{B,b} (A_{<k}ᵀ γᴴ_n)_b` forward (`forward = true`), or
    /// `ξ_{B,(k,n)}' = −Σ_b ξ_{H,b} (A_{<k} γᴮ_n)_b` backward, for both projections.
    fn xi(&mut self, k: usize, n: usize, forward: bool) -> Result<(), LimitError> {
        let (ns, nn) = (self.ns(), self.nn);
        let (q, a_idx) = (k * nn, k * nn + n);
        let p = &self.p;
        let (we2, wu2) = (p.sigma_we * p.sigma_we, p.sigma_wu * p.sigma_wu);
        for unembed in [true, false] {
            let d = if unembed {
                self.y[0].len()
            } else {
                self.x[0].len()
            };
            let init: Vec<f64> = match (forward, unembed) {
                (true, true) => vec![0.0; d],
                (true, false) => self.x[n].iter().map(|v| we2 * v).collect(),
                (false, true) => self.g[k][n].iter().map(|v| wu2 * v).collect(),
                (false, false) => vec![0.0; d],
            };
            let other = match (forward, unembed) {
                (true, true) => &self.xbu,
                (true, false) => &self.xbe,
                (false, true) => &self.xhu,
                (false, false) => &self.xhe,
            };
            let gam = if forward { &self.gh } else { &self.gb };
            let (grid, amat) = (&self.grid, &self.a);
            let mut v = vec![0.0; q];
            let rhs = |s: f64, _y: &[f64], dy: &mut [f64]| {
                let (i, t) = grid.locate(s);
                for (j, vj) in v.iter_mut().enumerate() {
                    let mut acc = 0.0;
                    for m in 0..q {
                        let am = if forward {
                            lerp_at(amat, i, t, m, j)
                        } else {
                            -lerp_at(amat, i, t, j, m)
                        };
                        acc += am * lerp_at(gam, i, t, m, a_idx);
                    }
                    *vj = acc;
                }
                for (c, dc) in dy.iter_mut().enumerate() {
                    let mut acc = 0.0;
                    for (j, vj) in v.iter().enumerate() {
                        acc += lerp_at(other, i, t, j, c) * vj;
                    }
                    *dc = acc;
                }
            };
            let mut out = vec![0.0; ns * d];
            let (s0, s1, stage) = if forward {
                (0.0, 1.0, "forward xi_H")
            } else {
                (1.0, 0.0, "backward xi_B")
            };
            let rep = Self::wrap(
                k,
                stage,
                self.ode
                    .solve_at(rhs, s0, s1, &init, self.grid.points(), &mut out),
            )?;
            self.report.merge(&rep);
            let target = match (forward, unembed) {
                (true, true) => &mut self.xhu,
                (true, false) => &mut self.xhe,
                (false, true) => &mut self.xbu,
                (false, false) => &mut self.xbe,
            };
            for i in 0..ns {
                for c in 0..d {
                    target.set(i, a_idx, c, out[i * d + c]);
                }
            }
        }
        Ok(())
    }

    /// The `N × N` blocks `Γᴴ_{(k,·),(k,·)}` (forward), `Γᴮ_{(k,·),(k,·)}` (backward) and the
    /// conserved `Λ_{(k,·),(k,·)}`. The upper triangles `n ≤ n'` are solved as one vector ODE.
    fn within_step_blocks(&mut self, k: usize) -> Result<(), LimitError> {
        let (ns, nn) = (self.ns(), self.nn);
        let q = k * nn;
        let pairs: Vec<(usize, usize)> =
            (0..nn).flat_map(|n| (n..nn).map(move |m| (n, m))).collect();
        let np = pairs.len();
        let p = &self.p;
        let (we2, wu2) = (p.sigma_we * p.sigma_we, p.sigma_wu * p.sigma_wu);
        let h0: Vec<f64> = pairs
            .iter()
            .map(|&(n, m)| we2 * dot(&self.x[n], &self.x[m]))
            .collect();
        let b1: Vec<f64> = pairs
            .iter()
            .map(|&(n, m)| wu2 * dot(&self.g[k][n], &self.g[k][m]))
            .collect();
        let mut out_h = vec![0.0; ns * np];
        let mut out_b = vec![0.0; ns * np];
        {
            let (grid, amat, gh, gb, lam) = (&self.grid, &self.a, &self.gh, &self.gb, &self.lam);
            // Per sample n: γ_n (interpolated) and w_n = A_{<k} Λ_{(k,n),<k} (forward) or
            // w_n = Ã Λ_{<k,(k,n)} (backward), so that the derivative of entry (n, m) is
            // γ_n·w_m + γ_m·w_n.
            let rhs_for = |forward: bool| {
                let pairs = &pairs;
                let mut gam = vec![0.0; nn * q];
                let mut w = vec![0.0; nn * q];
                move |s: f64, _y: &[f64], dy: &mut [f64]| {
                    let (i, t) = grid.locate(s);
                    for n in 0..nn {
                        let a = k * nn + n;
                        for r in 0..q {
                            let mut acc = 0.0;
                            if forward {
                                for c in 0..q {
                                    acc += lerp_at(amat, i, t, r, c) * lerp_at(lam, i, t, a, c);
                                }
                                gam[n * q + r] = lerp_at(gh, i, t, r, a);
                            } else {
                                for c in 0..q {
                                    acc -= lerp_at(amat, i, t, c, r) * lerp_at(lam, i, t, c, a);
                                }
                                gam[n * q + r] = lerp_at(gb, i, t, r, a);
                            }
                            w[n * q + r] = acc;
                        }
                    }
                    for (d, &(n, m)) in dy.iter_mut().zip(pairs) {
                        let (gn, gm) = (&gam[n * q..(n + 1) * q], &gam[m * q..(m + 1) * q]);
                        let (wn, wm) = (&w[n * q..(n + 1) * q], &w[m * q..(m + 1) * q]);
                        *d = dot(gn, wm) + dot(gm, wn);
                    }
                }
            };
            let rep = Self::wrap(
                k,
                "within-step Gamma_H block",
                self.ode
                    .solve_at(rhs_for(true), 0.0, 1.0, &h0, grid.points(), &mut out_h),
            )?;
            self.report.merge(&rep);
            let rep = Self::wrap(
                k,
                "within-step Gamma_B block",
                self.ode
                    .solve_at(rhs_for(false), 1.0, 0.0, &b1, grid.points(), &mut out_b),
            )?;
            self.report.merge(&rep);
        }
        for i in 0..ns {
            for (pi, &(n, m)) in pairs.iter().enumerate() {
                let (a, b) = (k * nn + n, k * nn + m);
                for (s, out) in [(&mut self.gh, &out_h), (&mut self.gb, &out_b)] {
                    s.set(i, a, b, out[i * np + pi]);
                    s.set(i, b, a, out[i * np + pi]);
                }
            }
        }
        for n in 0..nn {
            for m in 0..nn {
                let (a, b) = (k * nn + n, k * nn + m);
                let v = dot(self.xbe.row(0, b), &self.x[n]);
                for i in 0..ns {
                    self.lam.set(i, a, b, v);
                }
            }
        }
        Ok(())
    }

    /// Pointwise updates of `M`, `A`, `W` for the new indices `(k, ·)`.
    fn fill_m_a_w(&mut self, k: usize) {
        let nn = self.nn;
        let q = k * nn;
        let kn = self.p.k_steps * nn;
        let (cu, cv) = self.cbar();
        let al = self.p.alpha;
        let (u2, v2) = (self.p.sigma_u.powi(2), self.p.sigma_v.powi(2));
        let mv = |m: &[f64], x: &[f64], y: &mut [f64]| {
            for (r, yr) in y.iter_mut().enumerate() {
                *yr = dot(&m[r * kn..r * kn + q], x);
            }
        };
        let mtv = |m: &[f64], x: &[f64], y: &mut [f64]| {
            for (c, yc) in y.iter_mut().enumerate() {
                *yc = x.iter().enumerate().map(|(r, xr)| m[r * kn + c] * xr).sum();
            }
        };
        let axpy = |acc: &mut [f64], f: f64, v: &[f64]| {
            for (a, b) in acc.iter_mut().zip(v) {
                *a += f * b;
            }
        };
        let mut gh = vec![vec![0.0; q]; nn];
        let mut gb = vec![vec![0.0; q]; nn];
        let (mut t1, mut t2, mut t3) = (vec![0.0; q], vec![0.0; q], vec![0.0; q]);
        let mut colk = vec![vec![0.0; q]; nn];
        let mut rowk = vec![vec![0.0; q]; nn];
        let mut agb = vec![vec![0.0; q]; nn];
        let mut mcols = [vec![0.0; q], vec![0.0; q], vec![0.0; q], vec![0.0; q]];
        for i in 0..self.ns() {
            for n in 0..nn {
                let a = k * nn + n;
                for b in 0..q {
                    gh[n][b] = self.gh.get(i, b, a);
                    gb[n][b] = self.gb.get(i, b, a);
                }
            }
            // M columns (k, n), then the identity/zero within-step blocks.
            for n in 0..nn {
                let a = k * nn + n;
                mv(self.mg1.at(i), &gb[n], &mut mcols[0]);
                mv(self.mg2.at(i), &gb[n], &mut mcols[1]);
                mv(self.mf1.at(i), &gh[n], &mut mcols[2]);
                mv(self.mf2.at(i), &gh[n], &mut mcols[3]);
                for (mat, (col, c)) in [&mut self.mf1, &mut self.mf2, &mut self.mg1, &mut self.mg2]
                    .into_iter()
                    .zip(mcols.iter().zip([cv, cv, cu, cu]))
                {
                    for (b, v) in col.iter().enumerate() {
                        mat.set(i, b, a, -c * v);
                    }
                }
                for m in 0..nn {
                    let b = k * nn + m;
                    let id = if m == n { 1.0 } else { 0.0 };
                    self.mf1.set(i, b, a, 0.0);
                    self.mf2.set(i, b, a, id);
                    self.mg1.set(i, b, a, id);
                    self.mg2.set(i, b, a, 0.0);
                }
            }
            let (ghm, gbm, am) = (self.gh.at(i), self.gb.at(i), self.a.at(i));
            let (f1, f2) = (self.mf1.at(i), self.mf2.at(i));
            let (g1, g2) = (self.mg1.at(i), self.mg2.at(i));
            for n in 0..nn {
                let col = &mut colk[n];
                col.fill(0.0);
                mv(f1, &gh[n], &mut t1);
                mtv(f1, &gh[n], &mut t2);
                axpy(col, u2, &t1);
                axpy(col, u2, &t2);
                mv(ghm, &t1, &mut t2);
                mtv(f1, &t2, &mut t3);
                axpy(col, -cu * u2, &t3);
                mv(f2, &gh[n], &mut t1);
                mv(gbm, &t1, &mut t2);
                mtv(f2, &t2, &mut t3);
                axpy(col, -cu * v2, &t3);

                let row = &mut rowk[n];
                row.fill(0.0);
                mv(g2, &gb[n], &mut t1);
                mtv(g2, &gb[n], &mut t2);
                axpy(row, v2, &t1);
                axpy(row, v2, &t2);
                mv(gbm, &t1, &mut t2);
                mtv(g2, &t2, &mut t3);
                axpy(row, -cv * v2, &t3);
                mv(g1, &gb[n], &mut t1);
                mv(ghm, &t1, &mut t2);
                mtv(g1, &t2, &mut t3);
                axpy(row, -cv * u2, &t3);

                mv(am, &gb[n], &mut agb[n]);
            }
            let scale = al * cu * cv;
            for n in 0..nn {
                let a = k * nn + n;
                mtv(am, &gh[n], &mut t2);
                for b in 0..q {
                    self.wh.set(i, a, b, t2[b]);
                    self.wb.set(i, a, b, -agb[n][b]);
                }
            }
            for n in 0..nn {
                let a = k * nn + n;
                for b in 0..q {
                    self.a.set(i, b, a, scale * colk[n][b]);
                    self.a.set(i, a, b, scale * rowk[n][b]);
                }
                for (m, ghm) in gh.iter().enumerate() {
                    // A[(k,n),(k,m)] = −α(c̄_u σ_v² + c̄_v σ_u²) δ + c̄_u c̄_v γᴴ_mᵀ A_{<k} γᴮ_n.
                    let diag = if m == n {
                        -al * (cu * v2 + cv * u2)
                    } else {
                        0.0
                    };
                    let v = diag + cu * cv * dot(ghm, &agb[n]);
                    self.a.set(i, a, k * nn + m, v);
                }
            }
        }
    }

    fn finish(self) -> LinearLimitMulti {
        let nn = self.nn as f64;
        let loss = self
            .g
            .iter()
            .map(|gk| gk.iter().map(|g| 0.5 * dot(g, g)).sum::<f64>() / nn)
            .collect();
        LinearLimitMulti {
            params: self.p,
            n_samples: self.nn,
            x: self.x,
            y: self.y,
            grid: self.grid,
            f: self.f,
            g: self.g,
            loss,
            gamma_h: self.gh,
            gamma_b: self.gb,
            lambda: self.lam,
            a: self.a,
            xi_h_we: self.xhe,
            xi_h_wu: self.xhu,
            xi_b_we: self.xbe,
            xi_b_wu: self.xbu,
            m_f1: self.mf1,
            m_f2: self.mf2,
            m_g1: self.mg1,
            m_g2: self.mg2,
            w_h: self.wh,
            w_b: self.wb,
            report: self.report,
        }
    }
}
