//! Per-coordinate limit trajectories of the linear large-D limit (PAPERS.md §2.3,
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

use super::LimitError;
use super::grid::DepthSeries;
use super::linear::LinearLimit;
use super::ode::{Dopri5, SolverReport};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Basis solutions of the per-coordinate system of one [`LinearLimit`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CoordinateBasis {
    /// `x` of the limit.
    x: Vec<f64>,
    /// Residuals `g_k` of the limit, `K × d_out`.
    g: Vec<Vec<f64>>,
    /// `σ_we`, `σ_wu` of the limit (used by the Gaussian moments).
    sigma_we: f64,
    sigma_wu: f64,
    /// `Φᴴ`: `num_s × K × (K+1)`; entry `(k, m)` at grid point `i` is the coefficient of the
    /// driver `z_m` in `H_k(s_i)`.
    pub phi_h: DepthSeries,
    /// `Φᴮ`: `num_s × K × (K+1)`, likewise for `B_k(s_i)`.
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
    /// Number of passes `K`.
    pub k_steps: usize,
    /// `H`: `n × num_s × K`, row-major (`h[(r·num_s + i)·K + k] = H_k(s_i)` of coordinate `r`).
    pub h: Vec<f64>,
    /// `B`: `n × num_s × K`, same layout.
    pub b: Vec<f64>,
}

impl CoordinateTrajectories {
    /// `H_k(s_i)` of coordinate `r`.
    pub fn h(&self, r: usize, i: usize, k: usize) -> f64 {
        self.h[(r * self.num_s + i) * self.k_steps + k]
    }

    /// `B_k(s_i)` of coordinate `r`.
    pub fn b(&self, r: usize, i: usize, k: usize) -> f64 {
        self.b[(r * self.num_s + i) * self.k_steps + k]
    }
}

/// Exact second moments of the coordinate trajectories over Gaussian rows.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CoordinateMoments {
    /// `E[H_j H_k](s)`, to compare with `Γᴴ_{jk}(s)`.
    pub hh: DepthSeries,
    /// `E[B_j B_k](s)`, to compare with `Γᴮ_{jk}(s)`.
    pub bb: DepthSeries,
    /// `E[H_j B_k](s)`, to compare with `Λ_{jk}(s)`.
    pub hb: DepthSeries,
    /// `E[e H_k](s)` (`num_s × K × d_in`), to compare with `ξ^{We}_{H,k}(s)`.
    pub eh: DepthSeries,
    /// `E[w H_k](s)` (`num_s × K × d_out`), to compare with `ξ^{Wu}_{H,k}(s)`.
    pub wh: DepthSeries,
}

impl CoordinateBasis {
    /// Integrates the basis solutions for `lim`, with its tolerances and depth grid.
    pub fn new(lim: &LinearLimit) -> Result<Self, LimitError> {
        Self::build(lim, false)
    }

    /// `transposed_backward = true` uses `Ã γᴮ` in the backward equation, as the authors'
    /// `simulate_system_batched_optimized` does (kept only to show, in the tests, that the
    /// moment check detects it).
    pub(crate) fn build(lim: &LinearLimit, transposed_backward: bool) -> Result<Self, LimitError> {
        let kk = lim.k_steps();
        let ns = lim.grid.len();
        let nz = kk + 1;
        let mut phi_h = DepthSeries::zeros(ns, kk, nz);
        let mut phi_b = DepthSeries::zeros(ns, kk, nz);
        for i in 0..ns {
            phi_h.set(i, 0, 0, 1.0);
            phi_b.set(i, 0, 1, 1.0);
        }
        let mut ode = Dopri5::new(lim.params.rtol, lim.params.atol)?;
        let mut report = SolverReport::default();
        let grid = &lim.grid;
        let (a, gh, gb) = (&lim.a, &lim.gamma_h, &lim.gamma_b);
        let lerp = |m: &DepthSeries, i: usize, t: f64, r: usize, c: usize| {
            let lo = m.get(i, r, c);
            lo + t * (m.get(i + 1, r, c) - lo)
        };
        let mut v = vec![0.0; kk];
        for k in 1..kk {
            // H_k: support on z_0..z_k.
            let dim = k + 1;
            let mut y0 = vec![0.0; dim];
            y0[0] = 1.0;
            let mut out = vec![0.0; ns * dim];
            {
                let pb = &phi_b;
                let rhs = |s: f64, _y: &[f64], dy: &mut [f64]| {
                    let (i, t) = grid.locate(s);
                    for (j, vj) in v.iter_mut().enumerate().take(k) {
                        let mut acc = 0.0;
                        for m in 0..k {
                            acc += lerp(a, i, t, m, j) * lerp(gh, i, t, m, k);
                        }
                        *vj = acc;
                    }
                    for (c, d) in dy.iter_mut().enumerate() {
                        let mut acc = 0.0;
                        for (j, vj) in v.iter().enumerate().take(k) {
                            acc += lerp(pb, i, t, j, c) * vj;
                        }
                        *d = acc;
                    }
                };
                let rep = ode
                    .solve_at(rhs, 0.0, 1.0, &y0, grid.points(), &mut out)
                    .map_err(|e| LimitError::Solve {
                        step: k,
                        stage: "coordinate basis H_k",
                        source: Box::new(e),
                    })?;
                report.merge(&rep);
            }
            for i in 0..ns {
                for c in 0..dim {
                    phi_h.set(i, k, c, out[i * dim + c]);
                }
            }
            // B_k: support on z_0..z_{k+1}.
            let dim = k + 2;
            let mut y1 = vec![0.0; dim];
            y1[k + 1] = 1.0;
            let mut out = vec![0.0; ns * dim];
            {
                let ph = &phi_h;
                let rhs = |s: f64, _y: &[f64], dy: &mut [f64]| {
                    let (i, t) = grid.locate(s);
                    for (j, vj) in v.iter_mut().enumerate().take(k) {
                        let mut acc = 0.0;
                        for m in 0..k {
                            let amat = if transposed_backward {
                                lerp(a, i, t, m, j)
                            } else {
                                lerp(a, i, t, j, m)
                            };
                            acc += amat * lerp(gb, i, t, m, k);
                        }
                        *vj = -acc;
                    }
                    for (c, d) in dy.iter_mut().enumerate() {
                        let mut acc = 0.0;
                        for (j, vj) in v.iter().enumerate().take(k) {
                            acc += lerp(ph, i, t, j, c) * vj;
                        }
                        *d = acc;
                    }
                };
                let rep = ode
                    .solve_at(rhs, 1.0, 0.0, &y1, grid.points(), &mut out)
                    .map_err(|e| LimitError::Solve {
                        step: k,
                        stage: "coordinate basis B_k",
                        source: Box::new(e),
                    })?;
                report.merge(&rep);
            }
            for i in 0..ns {
                for c in 0..dim {
                    phi_b.set(i, k, c, out[i * dim + c]);
                }
            }
        }
        Ok(Self {
            x: lim.x.clone(),
            g: lim.g.clone(),
            sigma_we: lim.params.sigma_we,
            sigma_wu: lim.params.sigma_wu,
            phi_h,
            phi_b,
            report,
        })
    }

    /// Number of passes `K`.
    pub fn k_steps(&self) -> usize {
        self.phi_h.rows
    }

    /// Number of depth grid points.
    pub fn num_s(&self) -> usize {
        self.phi_h.num_s
    }

    /// The drivers `z = (e·x, w·g_0, …, w·g_{K−1})` of one coordinate.
    pub fn drivers(&self, e: &[f64], w: &[f64], z: &mut [f64]) -> Result<(), LimitError> {
        check_len("e (embedding row)", self.x.len(), e.len())?;
        check_len("w (unembedding row)", self.g[0].len(), w.len())?;
        check_len("z (drivers)", self.k_steps() + 1, z.len())?;
        z[0] = dot(e, &self.x);
        for (zk, gk) in z[1..].iter_mut().zip(&self.g) {
            *zk = dot(w, gk);
        }
        Ok(())
    }

    /// Trajectories of `n` coordinates with rows `e_rows` (`n × d_in`, row-major, the rows
    /// `W_e[d, :]`) and `w_rows` (`n × d_out`, the rows `W_u[d, :]`).
    pub fn trajectories(
        &self,
        e_rows: &[f64],
        w_rows: &[f64],
    ) -> Result<CoordinateTrajectories, LimitError> {
        let (di, d_o) = (self.x.len(), self.g[0].len());
        if e_rows.len() % di != 0 {
            return Err(LimitError::Dimension {
                what: "e_rows (a multiple of d_in)",
                expected: e_rows.len() / di * di,
                got: e_rows.len(),
            });
        }
        let n = e_rows.len() / di;
        check_len("w_rows (n × d_out)", n * d_o, w_rows.len())?;
        let (kk, ns) = (self.k_steps(), self.num_s());
        let nz = kk + 1;
        let per = ns * kk;
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
                    z[0] = dot(e, &self.x);
                    for (zk, gk) in z[1..].iter_mut().zip(&self.g) {
                        *zk = dot(w, gk);
                    }
                    for i in 0..ns {
                        for k in 0..kk {
                            hr[i * kk + k] = dot(self.phi_h.row(i, k), z);
                            br[i * kk + k] = dot(self.phi_b.row(i, k), z);
                        }
                    }
                },
            );
        Ok(CoordinateTrajectories {
            n,
            num_s: ns,
            k_steps: kk,
            h,
            b,
        })
    }

    /// Exact moments of the trajectories when `e ~ N(0, σ_we² I)` and `w ~ N(0, σ_wu² I)`
    /// are independent (the law of the rows of `W_e`, `W_u`): the drivers then have
    /// covariance `G_00 = σ_we²|x|²`, `G_{1+i,1+j} = σ_wu² g_i·g_j`, `G_{0,1+j} = 0`.
    pub fn gaussian_moments(&self) -> CoordinateMoments {
        let (kk, ns) = (self.k_steps(), self.num_s());
        let nz = kk + 1;
        let (di, d_o) = (self.x.len(), self.g[0].len());
        let (we2, wu2) = (self.sigma_we.powi(2), self.sigma_wu.powi(2));
        let mut gcov = vec![0.0; nz * nz];
        gcov[0] = we2 * dot(&self.x, &self.x);
        for i in 0..kk {
            for j in 0..kk {
                gcov[(1 + i) * nz + 1 + j] = wu2 * dot(&self.g[i], &self.g[j]);
            }
        }
        let quad = |a: &[f64], b: &[f64]| -> f64 {
            let mut acc = 0.0;
            for (r, ar) in a.iter().enumerate() {
                if *ar != 0.0 {
                    acc += ar * dot(&gcov[r * nz..(r + 1) * nz], b);
                }
            }
            acc
        };
        let mut m = CoordinateMoments {
            hh: DepthSeries::zeros(ns, kk, kk),
            bb: DepthSeries::zeros(ns, kk, kk),
            hb: DepthSeries::zeros(ns, kk, kk),
            eh: DepthSeries::zeros(ns, kk, di),
            wh: DepthSeries::zeros(ns, kk, d_o),
        };
        for i in 0..ns {
            for j in 0..kk {
                for k in 0..kk {
                    let (hj, bj) = (self.phi_h.row(i, j), self.phi_b.row(i, j));
                    let (hk, bk) = (self.phi_h.row(i, k), self.phi_b.row(i, k));
                    m.hh.set(i, j, k, quad(hj, hk));
                    m.bb.set(i, j, k, quad(bj, bk));
                    m.hb.set(i, j, k, quad(hj, bk));
                }
                // E[e H_j] = σ_we² x Φᴴ_{j,0}; E[w H_j] = σ_wu² Σ_m g_m Φᴴ_{j,1+m}.
                let ph = self.phi_h.row(i, j);
                for c in 0..di {
                    m.eh.set(i, j, c, we2 * self.x[c] * ph[0]);
                }
                for c in 0..d_o {
                    let s: f64 = (0..kk).map(|mm| self.g[mm][c] * ph[1 + mm]).sum();
                    m.wh.set(i, j, c, wu2 * s);
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
