//! Per-coordinate limit trajectories of the linear large-D limit (docs/papers.md §2.3,
//! "Per-coordinate limit trajectories").
//!
//! In the large-D limit, coordinate `d` of the hidden state and of the (D-scaled) backward
//! state of pass `k` follow deterministic functions of the coordinate's own frozen rows
//! `e = W_e[d, :]` and `w = W_u[d, :]`:
//!
//! - `H_0(s) ≡ e·x`, `B_0(s) ≡ w·g_0`;
//! - `k ≥ 1`: `H_k(0) = e·x`, `H_k' = Σ_{j<k} B_j (A_{<k}ᵀ γᴴ_k)_j` (forward);
//! - `k ≥ 1`: `B_k(1) = w·g_k`, `B_k' = −Σ_{j<k} H_j (A_{<k} γᴮ_k)_j = Σ_j H_j (Ãᵀ γᴮ_k)_j`
//!   (backward),
//!
//! with `γᴴ_k = Γᴴ_{<k,k}`, `γᴮ_k = Γᴮ_{<k,k}` and `A`, `Ã = −Aᵀ` the response matrices of
//! [`LinearLimit`]. These are the `d`-th coordinates of `h_k' = α Σ_k h_k` and of the adjoint
//! `B_k' = −α Σ_kᵀ B_k` with `α Σ_k = Σ_{i,j<k} A_{ij} B_j h_iᵀ/D` (see the index
//! convention in the documentation of [`crate::limit`]; the authors' coordinate simulator
//! uses `Ã γᴮ` instead of `Ãᵀ γᴮ` here, which is inconsistent with their own correlation
//! equations).
//!
//! The system is linear and its coefficients are shared by all coordinates: only the
//! drivers `z = (e·x, w·g_0, …, w·g_{K−1}) ∈ ℝ^{K+1}` differ. So [`CoordinateBasis`] integrates
//! once the basis solutions `Φᴴ_k(s), Φᴮ_k(s) ∈ ℝ^{K+1}` with `H_k(s) = Φᴴ_k(s)·z` and
//! `B_k(s) = Φᴮ_k(s)·z`, and any number of coordinates is then a matrix product. The same
//! basis gives the exact Gaussian moments of the trajectories over random rows
//! ([`CoordinateBasis::gaussian_moments`]), which must reproduce `Γᴴ`, `Γᴮ`, `Λ`.
//!
//! With `N` training inputs ([`LinearLimitMulti`], combined indices `a = k·N + n`) the same
//! holds with `H_{(k,n)}(0) = e·x_n`, `B_{(k,n)}(1) = w·g_{k,n}`, sums over all earlier
//! indices `b < kN`, and drivers `z = (e·x_0, …, e·x_{N−1}, w·g_0, …, w·g_{KN−1})`
//! ([`CoordinateBasis::from_multi`]).

use super::LimitError;
use super::grid::{DepthGrid, DepthSeries};
use super::linear::LinearLimit;
use super::multi::LinearLimitMulti;
use super::ode::{Dopri5, SolverReport};
use super::params::LinearLimitParams;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Basis solutions of the per-coordinate system of one limit.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CoordinateBasis {
    /// Number of training inputs `N`.
    pub n_samples: usize,
    /// Number of steps `K`.
    pub k_steps: usize,
    /// The inputs `x_n`.
    x: Vec<Vec<f64>>,
    /// Residuals `g_a`, one per combined index `a = k·N + n`.
    g: Vec<Vec<f64>>,
    /// `σ_we`, `σ_wu` of the limit (used by the Gaussian moments).
    sigma_we: f64,
    sigma_wu: f64,
    /// `Φᴴ`: `num_s × KN × (N + KN)`; entry `(a, m)` at grid point `i` is the coefficient of
    /// the driver `z_m` in `H_a(s_i)`.
    pub phi_h: DepthSeries,
    /// `Φᴮ`: `num_s × KN × (N + KN)`, likewise for `B_a(s_i)`.
    pub phi_b: DepthSeries,
    /// Work of the basis solves.
    pub report: SolverReport,
}

/// Trajectories of a batch of coordinates on the depth grid.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CoordinateTrajectories {
    /// Number of coordinates.
    pub n: usize,
    /// Number of depth grid points.
    pub num_s: usize,
    /// Number of combined indices `KN` (`K` when there is one training input).
    pub n_index: usize,
    /// `H`: `n × num_s × KN`, row-major (`h[(r·num_s + i)·KN + a] = H_a(s_i)` of coordinate `r`).
    pub h: Vec<f64>,
    /// `B`: `n × num_s × KN`, same layout.
    pub b: Vec<f64>,
}

impl CoordinateTrajectories {
    /// `H_a(s_i)` of coordinate `r` (`a = k` for one training input, `k·N + n` otherwise).
    pub fn h(&self, r: usize, i: usize, a: usize) -> f64 {
        self.h[(r * self.num_s + i) * self.n_index + a]
    }

    /// `B_a(s_i)` of coordinate `r`.
    pub fn b(&self, r: usize, i: usize, a: usize) -> f64 {
        self.b[(r * self.num_s + i) * self.n_index + a]
    }
}

/// Exact second moments of the coordinate trajectories over Gaussian rows
/// (`KN × KN` series, or `KN × d`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CoordinateMoments {
    /// `E[H_a H_b](s)`, to compare with `Γᴴ_{ab}(s)`.
    pub hh: DepthSeries,
    /// `E[B_a B_b](s)`, to compare with `Γᴮ_{ab}(s)`.
    pub bb: DepthSeries,
    /// `E[H_a B_b](s)`, to compare with `Λ_{ab}(s)`.
    pub hb: DepthSeries,
    /// `E[e H_a](s)`, to compare with `ξ^{We}_{H,a}(s)`.
    pub eh: DepthSeries,
    /// `E[w H_a](s)`, to compare with `ξ^{Wu}_{H,a}(s)`.
    pub wh: DepthSeries,
}

/// What the basis needs from a solved limit.
struct View<'a> {
    params: &'a LinearLimitParams,
    grid: &'a DepthGrid,
    a: &'a DepthSeries,
    gh: &'a DepthSeries,
    gb: &'a DepthSeries,
    nn: usize,
    x: Vec<Vec<f64>>,
    g: Vec<Vec<f64>>,
}

impl CoordinateBasis {
    /// Integrates the basis solutions for a one-input limit, with its tolerances and grid.
    pub fn new(lim: &LinearLimit) -> Result<Self, LimitError> {
        Self::build(lim, false)
    }

    /// Integrates the basis solutions for an `N`-input limit.
    pub fn from_multi(lim: &LinearLimitMulti) -> Result<Self, LimitError> {
        Self::build_view(
            View {
                params: &lim.params,
                grid: &lim.grid,
                a: &lim.a,
                gh: &lim.gamma_h,
                gb: &lim.gamma_b,
                nn: lim.n_samples,
                x: lim.x.clone(),
                g: lim.g.iter().flatten().cloned().collect(),
            },
            false,
        )
    }

    /// `transposed_backward = true` uses `Ã γᴮ` in the backward equation, as the authors'
    /// `simulate_system_batched_optimized` does (kept only to show, in the tests, that the
    /// moment check detects it).
    pub(crate) fn build(lim: &LinearLimit, transposed_backward: bool) -> Result<Self, LimitError> {
        Self::build_view(
            View {
                params: &lim.params,
                grid: &lim.grid,
                a: &lim.a,
                gh: &lim.gamma_h,
                gb: &lim.gamma_b,
                nn: 1,
                x: vec![lim.x.clone()],
                g: lim.g.clone(),
            },
            transposed_backward,
        )
    }

    fn build_view(view: View<'_>, transposed_backward: bool) -> Result<Self, LimitError> {
        let (nn, kk) = (view.nn, view.params.k_steps);
        let kn = kk * nn;
        let ns = view.grid.len();
        let nz = nn + kn;
        let mut phi_h = DepthSeries::zeros(ns, kn, nz);
        let mut phi_b = DepthSeries::zeros(ns, kn, nz);
        for i in 0..ns {
            for n in 0..nn {
                phi_h.set(i, n, n, 1.0);
                phi_b.set(i, n, nn + n, 1.0);
            }
        }
        let mut ode = Dopri5::new(view.params.rtol, view.params.atol)?;
        let mut report = SolverReport::default();
        let grid = view.grid;
        let (a, gh, gb) = (view.a, view.gh, view.gb);
        let lerp = |m: &DepthSeries, i: usize, t: f64, r: usize, c: usize| {
            let lo = m.get(i, r, c);
            lo + t * (m.get(i + 1, r, c) - lo)
        };
        let wrap = |k: usize, stage: &'static str| {
            move |e: LimitError| LimitError::Solve {
                step: k,
                stage,
                source: Box::new(e),
            }
        };
        let mut v = vec![0.0; kn];
        for k in 1..kk {
            let q = k * nn;
            // H_{(k,n)}: support on the N inputs and the drivers of the earlier indices.
            for n in 0..nn {
                let ai = q + n;
                let dim = nn + q;
                let mut y0 = vec![0.0; dim];
                y0[n] = 1.0;
                let mut out = vec![0.0; ns * dim];
                let pb = &phi_b;
                let rhs = |s: f64, _y: &[f64], dy: &mut [f64]| {
                    let (i, t) = grid.locate(s);
                    for (j, vj) in v.iter_mut().enumerate().take(q) {
                        let mut acc = 0.0;
                        for m in 0..q {
                            acc += lerp(a, i, t, m, j) * lerp(gh, i, t, m, ai);
                        }
                        *vj = acc;
                    }
                    for (c, d) in dy.iter_mut().enumerate() {
                        let mut acc = 0.0;
                        for (j, vj) in v.iter().enumerate().take(q) {
                            acc += lerp(pb, i, t, j, c) * vj;
                        }
                        *d = acc;
                    }
                };
                let rep = ode
                    .solve_at(rhs, 0.0, 1.0, &y0, grid.points(), &mut out)
                    .map_err(wrap(k, "coordinate basis H"))?;
                report.merge(&rep);
                for i in 0..ns {
                    for c in 0..dim {
                        phi_h.set(i, ai, c, out[i * dim + c]);
                    }
                }
            }
            // B_{(k,n)}: support adds the drivers w·g_{(k,·)}.
            for n in 0..nn {
                let ai = q + n;
                let dim = nn + q + nn;
                let mut y1 = vec![0.0; dim];
                y1[nn + ai] = 1.0;
                let mut out = vec![0.0; ns * dim];
                let ph = &phi_h;
                let rhs = |s: f64, _y: &[f64], dy: &mut [f64]| {
                    let (i, t) = grid.locate(s);
                    for (j, vj) in v.iter_mut().enumerate().take(q) {
                        let mut acc = 0.0;
                        for m in 0..q {
                            let amat = if transposed_backward {
                                lerp(a, i, t, m, j)
                            } else {
                                lerp(a, i, t, j, m)
                            };
                            acc += amat * lerp(gb, i, t, m, ai);
                        }
                        *vj = -acc;
                    }
                    for (c, d) in dy.iter_mut().enumerate() {
                        let mut acc = 0.0;
                        for (j, vj) in v.iter().enumerate().take(q) {
                            acc += lerp(ph, i, t, j, c) * vj;
                        }
                        *d = acc;
                    }
                };
                let rep = ode
                    .solve_at(rhs, 1.0, 0.0, &y1, grid.points(), &mut out)
                    .map_err(wrap(k, "coordinate basis B"))?;
                report.merge(&rep);
                for i in 0..ns {
                    for c in 0..dim {
                        phi_b.set(i, ai, c, out[i * dim + c]);
                    }
                }
            }
        }
        Ok(Self {
            n_samples: nn,
            k_steps: kk,
            x: view.x,
            g: view.g,
            sigma_we: view.params.sigma_we,
            sigma_wu: view.params.sigma_wu,
            phi_h,
            phi_b,
            report,
        })
    }

    /// Number of combined indices `KN`.
    pub fn n_index(&self) -> usize {
        self.phi_h.rows
    }

    /// Number of depth grid points.
    pub fn num_s(&self) -> usize {
        self.phi_h.num_s
    }

    fn d_in(&self) -> usize {
        self.x[0].len()
    }

    fn d_out(&self) -> usize {
        self.g[0].len()
    }

    /// The drivers `z = (e·x_0, …, e·x_{N−1}, w·g_0, …, w·g_{KN−1})` of one coordinate
    /// (`z` has `N + KN` entries).
    pub fn drivers(&self, e: &[f64], w: &[f64], z: &mut [f64]) -> Result<(), LimitError> {
        check_len("e (embedding row)", self.d_in(), e.len())?;
        check_len("w (unembedding row)", self.d_out(), w.len())?;
        check_len("z (drivers)", self.n_samples + self.n_index(), z.len())?;
        self.fill_drivers(e, w, z);
        Ok(())
    }

    fn fill_drivers(&self, e: &[f64], w: &[f64], z: &mut [f64]) {
        let nn = self.n_samples;
        for (zn, xn) in z[..nn].iter_mut().zip(&self.x) {
            *zn = dot(e, xn);
        }
        for (za, ga) in z[nn..].iter_mut().zip(&self.g) {
            *za = dot(w, ga);
        }
    }

    /// Trajectories of `n` coordinates with rows `e_rows` (`n × d_in`, row-major, the rows
    /// `W_e[d, :]`) and `w_rows` (`n × d_out`, the rows `W_u[d, :]`).
    pub fn trajectories(
        &self,
        e_rows: &[f64],
        w_rows: &[f64],
    ) -> Result<CoordinateTrajectories, LimitError> {
        let (di, d_o) = (self.d_in(), self.d_out());
        if !e_rows.len().is_multiple_of(di) {
            return Err(LimitError::Dimension {
                what: "e_rows (a multiple of d_in)",
                expected: e_rows.len() / di * di,
                got: e_rows.len(),
            });
        }
        let n = e_rows.len() / di;
        check_len("w_rows (n × d_out)", n * d_o, w_rows.len())?;
        let (kn, ns) = (self.n_index(), self.num_s());
        let nz = self.n_samples + kn;
        let per = ns * kn;
        let mut h = vec![0.0; n * per];
        let mut b = vec![0.0; n * per];
        h.par_chunks_mut(per)
            .zip(b.par_chunks_mut(per))
            .enumerate()
            .for_each_init(
                || vec![0.0; nz],
                |z, (r, (hr, br))| {
                    let e = &e_rows[r * di..(r + 1) * di];
                    let w = &w_rows[r * d_o..(r + 1) * d_o];
                    self.fill_drivers(e, w, z);
                    for i in 0..ns {
                        for a in 0..kn {
                            hr[i * kn + a] = dot(self.phi_h.row(i, a), z);
                            br[i * kn + a] = dot(self.phi_b.row(i, a), z);
                        }
                    }
                },
            );
        Ok(CoordinateTrajectories {
            n,
            num_s: ns,
            n_index: kn,
            h,
            b,
        })
    }

    /// Exact moments of the trajectories when `e ~ N(0, σ_we² I)` and `w ~ N(0, σ_wu² I)`
    /// are independent (the law of the rows of `W_e`, `W_u`): the drivers then have
    /// covariance `σ_we² x_n·x_m` (inputs), `σ_wu² g_a·g_b` (residuals), and `0` across.
    pub fn gaussian_moments(&self) -> CoordinateMoments {
        let (kn, ns, nn) = (self.n_index(), self.num_s(), self.n_samples);
        let nz = nn + kn;
        let (di, d_o) = (self.d_in(), self.d_out());
        let (we2, wu2) = (self.sigma_we.powi(2), self.sigma_wu.powi(2));
        let mut gcov = vec![0.0; nz * nz];
        for n in 0..nn {
            for m in 0..nn {
                gcov[n * nz + m] = we2 * dot(&self.x[n], &self.x[m]);
            }
        }
        for a in 0..kn {
            for b in 0..kn {
                gcov[(nn + a) * nz + nn + b] = wu2 * dot(&self.g[a], &self.g[b]);
            }
        }
        let quad = |u: &[f64], v: &[f64]| -> f64 {
            let mut acc = 0.0;
            for (r, ur) in u.iter().enumerate() {
                if *ur != 0.0 {
                    acc += ur * dot(&gcov[r * nz..(r + 1) * nz], v);
                }
            }
            acc
        };
        let mut m = CoordinateMoments {
            hh: DepthSeries::zeros(ns, kn, kn),
            bb: DepthSeries::zeros(ns, kn, kn),
            hb: DepthSeries::zeros(ns, kn, kn),
            eh: DepthSeries::zeros(ns, kn, di),
            wh: DepthSeries::zeros(ns, kn, d_o),
        };
        for i in 0..ns {
            for a in 0..kn {
                let (ha, ba) = (self.phi_h.row(i, a), self.phi_b.row(i, a));
                for b in 0..kn {
                    let (hb, bb) = (self.phi_h.row(i, b), self.phi_b.row(i, b));
                    m.hh.set(i, a, b, quad(ha, hb));
                    m.bb.set(i, a, b, quad(ba, bb));
                    m.hb.set(i, a, b, quad(ha, bb));
                }
                // E[e H_a] = σ_we² Σ_n x_n Φᴴ_{a,n}; E[w H_a] = σ_wu² Σ_b g_b Φᴴ_{a,N+b}.
                for c in 0..di {
                    let s: f64 = (0..nn).map(|n| self.x[n][c] * ha[n]).sum();
                    m.eh.set(i, a, c, we2 * s);
                }
                for c in 0..d_o {
                    let s: f64 = (0..kn).map(|b| self.g[b][c] * ha[nn + b]).sum();
                    m.wh.set(i, a, c, wu2 * s);
                }
            }
        }
        m
    }
}

/// Trajectories of the coordinates with rows `e_rows` (`n × d_in`) and `w_rows`
/// (`n × d_out`) for the limit `lim`: builds the [`CoordinateBasis`] and combines it.
pub fn coordinate_trajectories(
    lim: &LinearLimit,
    e_rows: &[f64],
    w_rows: &[f64],
) -> Result<CoordinateTrajectories, LimitError> {
    CoordinateBasis::new(lim)?.trajectories(e_rows, w_rows)
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn check_len(what: &'static str, expected: usize, got: usize) -> Result<(), LimitError> {
    if expected == got {
        Ok(())
    } else {
        Err(LimitError::Dimension {
            what,
            expected,
            got,
        })
    }
}
