//! The large-D limit for any activation σ, solved by Monte Carlo over single units
//! (the frame form of `docs/nonlinear-limit.md` §2.1–2.4 and its algorithm, §3).
//!
//! # The object
//!
//! The finite network and its parameters are those of [`LinearLimitParams`] and
//! [`crate::limit::multi`] with the block `h ← h + α√D/(LM) Σ_m ṽ_m σ(ũ_m·h/√D)`:
//! loss `(1/N) Σ_n ½|f_n − y_n|²`, per-sample backward states
//! `B_{k,n} = D ∂(½|f_{k,n} − y_n|²)/∂h_{k,n}`, rates `c_u = η_u/α`, `c_v = η_v/α` on the
//! normalised units, and `K` forward passes (`k = 0..K`, pass `k` after `k` updates).
//!
//! In the mean ODE (L → ∞) every `h_{k,n}(s)` and `B_{k,n}(s)` stays in the span of the
//! `d_E = d_in + d_out` columns of `W_E` and `W_U` (§2.1: the updates only add `h`'s and
//! `B`'s to the units, and by Stein's lemma `√D E[ṽ_0 F]` lies in that span). In frame
//! coordinates `ε_d = (e_d/σ_we, w_d/σ_wu)` of coordinate `d` (i.i.d. `N(0, I_{d_E})` over
//! `d` as `D → ∞`) the limit state is two vectors per step, sample and depth,
//!
//! ```text
//! (F1)  H_{k,d}⁽ⁿ⁾(s) = ε_d·θᴴ_{k,n}(s),   B_{k,d}⁽ⁿ⁾(s) = ε_d·θᴮ_{k,n}(s),
//! ```
//!
//! and the units seen through the frame are a `2 d_E`-dimensional single-unit process at
//! each depth (§2.3; the dot products are the CLT sums `ũ·h/√D`, `ṽ·B/√D` of the finite
//! network):
//!
//! ```text
//! (F2)  ũ_0 = σ_u ζ,  ṽ_0 = σ_v ω,  (ζ, ω) ~ N(0, I_{2d_E}),
//!       p_k⁽ⁿ⁾ = ũ_k·θᴴ_{k,n},  q_k⁽ⁿ⁾ = ṽ_k·θᴮ_{k,n},
//!       ũ_{k+1} = ũ_k − (c_u/N) Σ_n θᴴ_{k,n} σ'(p_k⁽ⁿ⁾) q_k⁽ⁿ⁾,
//!       ṽ_{k+1} = ṽ_k − (c_v/N) Σ_n θᴮ_{k,n} σ(p_k⁽ⁿ⁾).
//! ```
//!
//! Each pass is, in order (§2.4; causal, no fixed point: the unit law of pass `k` depends
//! only on passes `j < k`):
//!
//! ```text
//! (F3)  forward:   θᴴ_{k,n}(0) = (σ_we x_n, 0),     ∂_s θᴴ_{k,n} = α E[ṽ_k σ(ũ_k·θᴴ_{k,n})],
//! (F4)  output:    f_{k,n} = σ_wu θᴴ_{k,n,out}(1),  g_{k,n} = f_{k,n} − y_n,
//! (F5)  backward:  θᴮ_{k,n}(1) = (0, σ_wu g_{k,n}), ∂_s θᴮ_{k,n} = −α E[ũ_k σ'(p_k⁽ⁿ⁾) q_k⁽ⁿ⁾],
//! (F6)  update the unit law by (F2) at every depth.
//! ```
//!
//! The correlations of [`crate::limit::multi`] are inner products in the frame:
//! `Γᴴ_{ab}(s) = θᴴ_a·θᴴ_b`, `Γᴮ_{ab} = θᴮ_a·θᴮ_b`, `Λ_{ab} = θᴴ_a·θᴮ_b`, with the combined index
//! `a = k·N + n`. For σ = identity the system is the linear limit of
//! [`crate::limit::multi`] (its `A`-matrix form is the Gaussian closed form of these
//! expectations; `docs/nonlinear-limit.md` §2.6).
//!
//! Relation to `docs/nonlinear-limit.md` §1.1 (its `a, η_u, η_v, c, σ_E, σ_U`): `a = α`,
//! `σ_E = σ_we`, `σ_U = σ_wu`, and the per-sample `B` with the `1/N` of the loss moved into
//! the update: its `a η_u r` is our `(c_u/N) g` (`η_u^doc c = η_u/(α² N)` with `c = 1/N`).
//! A parametrization whose loss has another constant (the Julia convention
//! `c = 1/(N d_in)`) maps onto these parameters through
//! [`crate::vslimit::limit_params`], which folds the constant into the rates (the
//! outputs depend on the rates and the loss constant only through their product).
//!
//! # The algorithm (§3.1)
//!
//! - Depth grid `s_i = i/(num_s − 1)`; Heun (explicit trapezoid, second order) on the grid
//!   points for (F3) and, backwards, (F5). Never Euler: the finite networks are themselves
//!   Euler with step `1/L`.
//! - An **independent** cloud of `S` units at each grid point, drawn from the stream
//!   `(seed, replica, grid point)`: `S/2` draws of `(ζ, ω)` and their antithetic copies
//!   `(−ζ, ω)`, then whitened exactly (sample mean 0, sample covariance `I_{2d_E}`; the
//!   antithetic cross-covariance is zero, so whitening keeps the pairs). Whitening makes
//!   every part of the integrands that is linear in `(ζ, ω)` exact: for σ = identity the
//!   solver is exact on its grid whatever the draw. Antithetic pairs make pass 0 exact for
//!   odd σ (`f_0 = 0`).
//! - Expectations are cloud means: `F_i(θ) = (α/S) Σ_s ṽ_s σ(ũ_s·θ)` forward; backward
//!   `−(α/S) Σ_s ũ_s σ'(p_s)(ṽ_s·θᴮ)` with `σ'(p_s)` cached from the forward pass.
//! - `R` independent replicas (different clouds): every output is their mean, and its
//!   Monte-Carlo standard error is their standard deviation over `√R`. The RMS error of
//!   `f` per replica is about `0.35/√(num_s S)` (§3.3), so the mean's is about
//!   `0.35/√(R num_s S)`.
//!
//! Replicas run in parallel; each is sequential, so results do not depend on the thread
//! count.
//!
//! # Cost (E1 setting: K = 15, N = 10, d_in = d_out = 5, tanh; 2 cores)
//!
//! | num_s × S × R | reslim | RMS standard error of f_14 | NumPy prototype (`docs/nonlinear-limit.md` §3.3, one replica) |
//! |---|---|---|---|
//! | 101 × 2000 × 4 | 3.3 s | 6.0e-4 | 101 × 4000 × 1: 2.1 s, 6.2e-4 |
//! | 101 × 2000 × 8 (default) | 6.3 s | 4.0e-4 | 101 × 10⁴ × 1: 5.1 s, 3.3e-4 |
//! | 101 × 4000 × 4 | 5.9 s | 4.1e-4 | |
//!
//! (`cargo run --release --example nonlinear_limit [S] [R] [num_s]`.) The prototype's
//! errors were measured against a converged reference, ours are the replicas' spread;
//! the replicas cost the same work per unit and give the error bars.

use super::LimitError;
use super::coords::CoordinateTrajectories;
use super::grid::{DepthGrid, DepthSeries};
use super::params::{LinearLimitParams, check_data};
use crate::model::Activation;
use crate::rng::{Stream, Tensor, derive_seed};
use serde::{Deserialize, Serialize};

/// The random stream of the unit clouds (`Tensor::Other` label).
pub const CLOUD_STREAM: u32 = 0x4c49_4d31;

/// Monte-Carlo settings of [`solve_nonlinear_limit`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MonteCarlo {
    /// Units `S` per depth point (even: antithetic pairs).
    pub samples: usize,
    /// Independent replicas `R ≥ 2`, for the standard errors.
    pub replicas: usize,
    /// Seed of the clouds.
    pub seed: u64,
}

impl Default for MonteCarlo {
    /// `S = 2000`, `R = 8`: with `num_s = 101`, in the E1 setting (K = 15, N = 10,
    /// d_in = d_out = 5, tanh), the RMS standard error of the last outputs is 4.0e-4 and
    /// the solve takes about 6 s on 2 cores (`cargo run --release --example
    /// nonlinear_limit`).
    fn default() -> Self {
        Self {
            samples: 2000,
            replicas: 8,
            seed: 0,
        }
    }
}

/// What the Monte-Carlo solve did, and how precise its outputs are.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct McReport {
    /// Depth grid points.
    pub num_s: usize,
    /// Units per depth point and replica.
    pub samples: usize,
    /// Replicas.
    pub replicas: usize,
    /// Seed of the clouds.
    pub seed: u64,
    /// Largest standard error of any output `f_{k,n,o}`.
    pub f_se_max: f64,
    /// Root mean square of the standard errors of the last pass's outputs.
    pub f_last_se_rms: f64,
    /// Largest standard error of any loss.
    pub loss_se_max: f64,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// The nonlinear limit: replica means of everything, with standard errors.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NonlinearLimit {
    /// The parameters used.
    pub params: LinearLimitParams,
    /// The activation σ.
    pub activation: Activation,
    /// The Monte-Carlo settings used.
    pub mc: MonteCarlo,
    /// Inputs `x_n`.
    pub x: Vec<Vec<f64>>,
    /// Targets `y_n`.
    pub y: Vec<Vec<f64>>,
    /// The depth grid.
    pub grid: DepthGrid,
    /// Limit outputs `f[k][n][o]`.
    pub f: Vec<Vec<Vec<f64>>>,
    /// Standard errors of `f`.
    pub f_se: Vec<Vec<Vec<f64>>>,
    /// Losses `(1/N) Σ_n ½|f_{k,n} − y_n|²` (replica means).
    pub loss: Vec<f64>,
    /// Standard errors of `loss`.
    pub loss_se: Vec<f64>,
    /// `Γᴴ_{ab}(s)`, `num_s × KN × KN` (`a = k·N + n`).
    pub gamma_h: DepthSeries,
    /// `Γᴮ_{ab}(s)`.
    pub gamma_b: DepthSeries,
    /// `Λ_{ab}(s) = θᴴ_a·θᴮ_b`.
    pub lambda: DepthSeries,
    /// Standard errors of `gamma_h`.
    pub gamma_h_se: DepthSeries,
    /// Standard errors of `gamma_b`.
    pub gamma_b_se: DepthSeries,
    /// Standard errors of `lambda`.
    pub lambda_se: DepthSeries,
    /// `θᴴ_{k,n}(s_i)`, flat `(K, N, num_s, d_E)` (replica means).
    pub theta_h: Vec<f64>,
    /// `θᴮ_{k,n}(s_i)`, flat `(K, N, num_s, d_E)`.
    pub theta_b: Vec<f64>,
    /// Work and precision.
    pub report: McReport,
}

impl NonlinearLimit {
    /// Passes `K`.
    pub fn k_steps(&self) -> usize {
        self.f.len()
    }

    /// Samples `N`.
    pub fn n_samples(&self) -> usize {
        self.x.len()
    }

    /// `d_E = d_in + d_out`.
    pub fn d_frame(&self) -> usize {
        self.x[0].len() + self.y[0].len()
    }

    /// The combined index of pass `k`, sample `n`.
    pub fn index(&self, k: usize, n: usize) -> usize {
        k * self.n_samples() + n
    }

    /// `θᴴ_{k,n}(s_i)`.
    pub fn theta_h_at(&self, k: usize, n: usize, i: usize) -> &[f64] {
        let (de, ns, nn) = (self.d_frame(), self.grid.len(), self.n_samples());
        let o = ((k * nn + n) * ns + i) * de;
        &self.theta_h[o..o + de]
    }

    /// `θᴮ_{k,n}(s_i)`.
    pub fn theta_b_at(&self, k: usize, n: usize, i: usize) -> &[f64] {
        let (de, ns, nn) = (self.d_frame(), self.grid.len(), self.n_samples());
        let o = ((k * nn + n) * ns + i) * de;
        &self.theta_b[o..o + de]
    }

    /// The limit trajectories (F1) of the coordinates whose rows of `W_E` are `e`
    /// (`rows × d_in`, row-major) and of `W_U` are `w` (`rows × d_out`):
    /// `ε_d = (e_d/σ_we, w_d/σ_wu)`, `H = ε_d·θᴴ`, `B = ε_d·θᴮ`. For a finite network
    /// compare its `h_l` with `H` at `s = l/L` (coupled rows, `docs/nonlinear-limit.md` §3.2).
    pub fn trajectories(&self, e: &[f64], w: &[f64]) -> Result<CoordinateTrajectories, LimitError> {
        let (di, dout) = (self.x[0].len(), self.y[0].len());
        let rows = e.len() / di;
        if e.len() != rows * di || w.len() != rows * dout {
            return Err(LimitError::Dimension {
                what: "W_U rows (as many rows as W_E, d_out columns)",
                expected: rows * dout,
                got: w.len(),
            });
        }
        let (kn, ns, de) = (
            self.k_steps() * self.n_samples(),
            self.grid.len(),
            self.d_frame(),
        );
        let len = rows * ns * kn;
        let mut h = vec![0.0; len];
        let mut b = vec![0.0; len];
        let mut eps = vec![0.0; de];
        for r in 0..rows {
            for c in 0..di {
                eps[c] = e[r * di + c] / self.params.sigma_we;
            }
            for c in 0..dout {
                eps[di + c] = w[r * dout + c] / self.params.sigma_wu;
            }
            for a in 0..kn {
                for i in 0..ns {
                    let o = (a * ns + i) * de;
                    h[(r * ns + i) * kn + a] = dot(&eps, &self.theta_h[o..o + de]);
                    b[(r * ns + i) * kn + a] = dot(&eps, &self.theta_b[o..o + de]);
                }
            }
        }
        Ok(CoordinateTrajectories {
            n: rows,
            num_s: ns,
            n_index: kn,
            h,
            b,
        })
    }
}

#[inline]
fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Bytes [`solve_nonlinear_limit`] needs at its peak (the replicas running at once, each
/// with its clouds and activation caches, plus the accumulated outputs), or `None` if the
/// count overflows.
pub fn nonlinear_bytes(
    k_steps: usize,
    n: usize,
    d_in: usize,
    d_out: usize,
    num_s: usize,
    mc: &MonteCarlo,
    parallel: usize,
) -> Option<usize> {
    let de = d_in.checked_add(d_out)?;
    let kn = k_steps.checked_mul(n)?;
    let cloud = num_s.checked_mul(mc.samples)?.checked_mul(2 * de)?;
    let cache = num_s
        .checked_mul(mc.samples)?
        .checked_mul(n.checked_mul(2)?)?;
    let thetas = kn.checked_mul(num_s)?.checked_mul(de)?.checked_mul(2)?;
    let per_replica = cloud.checked_add(cache)?.checked_add(thetas)?;
    let grams = num_s.checked_mul(kn)?.checked_mul(kn)?.checked_mul(6)?;
    let replicas = mc.replicas.min(parallel.max(1));
    per_replica
        .checked_mul(replicas)?
        .checked_add(grams)?
        .checked_add(thetas)?
        .checked_mul(8)
}

/// Default depth grid points of the Monte-Carlo limit: the document's grid
/// (`docs/nonlinear-limit.md` §3.3), Heun's error well below the Monte-Carlo error there.
pub const DEFAULT_NUM_S: usize = 101;

/// Checks the inputs of [`solve_nonlinear_limit`] without solving anything: the
/// parameters, the data, the frame's embedding scales, the clouds' size and the
/// replicas, and the depth grid. Returns `(d_in, d_out)`.
pub fn check_inputs(
    x: &[Vec<f64>],
    y: &[Vec<f64>],
    params: &LinearLimitParams,
    mc: &MonteCarlo,
) -> Result<(usize, usize), LimitError> {
    params.validate()?;
    let (di, d_o) = check_data(x, y)?;
    for (field, v) in [("sigma_we", params.sigma_we), ("sigma_wu", params.sigma_wu)] {
        if v <= 0.0 {
            return Err(LimitError::invalid(
                field,
                v,
                "must be > 0 for the frame form (the frame coordinates divide by it)",
            ));
        }
    }
    let de = di + d_o;
    let min_s = 2 * de + 2;
    if mc.samples < min_s || !mc.samples.is_multiple_of(2) {
        return Err(LimitError::InvalidParameter {
            field: "samples",
            value: mc.samples.to_string(),
            reason: "must be even and at least 2(d_in + d_out) + 2 (antithetic pairs whose covariance can be whitened)",
        });
    }
    if mc.replicas < 2 {
        return Err(LimitError::invalid(
            "replicas",
            mc.replicas,
            "must be at least 2 (the standard errors come from the spread of the replicas)",
        ));
    }
    DepthGrid::new(params.num_s)?;
    Ok((di, d_o))
}

/// Solves the limit of `docs/nonlinear-limit.md` (module documentation) for activation `act`
/// on the pairs `(x[n], y[n])`, with `params.num_s` depth points and `mc`'s clouds
/// (`params.rtol`, `atol` are not used: the integrator is Heun on the grid).
pub fn solve_nonlinear_limit(
    x: &[Vec<f64>],
    y: &[Vec<f64>],
    params: &LinearLimitParams,
    act: Activation,
    mc: &MonteCarlo,
) -> Result<NonlinearLimit, LimitError> {
    use rayon::prelude::*;
    let t0 = std::time::Instant::now();
    let (di, d_o) = check_inputs(x, y, params, mc)?;
    let de = di + d_o;
    let grid = DepthGrid::new(params.num_s)?;
    let (kk, nn, ns) = (params.k_steps, x.len(), params.num_s);
    let reps: Vec<Replica> = (0..mc.replicas)
        .into_par_iter()
        .map(|r| {
            solve_replica(
                x,
                y,
                params,
                act,
                mc.samples,
                derive_seed(mc.seed, r as u64),
            )
        })
        .collect::<Result<_, _>>()?;
    let rr = reps.len() as f64;
    // Mean and standard error over replicas of a per-replica quantity.
    let stats = |get: &dyn Fn(&Replica) -> f64| -> (f64, f64) {
        let m = reps.iter().map(get).sum::<f64>() / rr;
        let v = reps.iter().map(|r| (get(r) - m).powi(2)).sum::<f64>() / (rr - 1.0);
        (m, (v / rr).sqrt())
    };
    let mut f = vec![vec![vec![0.0; d_o]; nn]; kk];
    let mut f_se = f.clone();
    for k in 0..kk {
        for n in 0..nn {
            for o in 0..d_o {
                let (m, s) = stats(&|r| r.f[(k * nn + n) * d_o + o]);
                f[k][n][o] = m;
                f_se[k][n][o] = s;
            }
        }
    }
    let mut loss = vec![0.0; kk];
    let mut loss_se = vec![0.0; kk];
    for k in 0..kk {
        let (m, s) = stats(&|r| {
            (0..nn)
                .map(|n| {
                    (0..d_o)
                        .map(|o| (r.f[(k * nn + n) * d_o + o] - y[n][o]).powi(2))
                        .sum::<f64>()
                })
                .sum::<f64>()
                / (2.0 * nn as f64)
        });
        loss[k] = m;
        loss_se[k] = s;
    }
    let kn = kk * nn;
    let mut grams: Vec<DepthSeries> = (0..6).map(|_| DepthSeries::zeros(ns, kn, kn)).collect();
    // The slice of θ_a(s_i) in a flat (K, N, num_s, d_E) array (a = k·N + n).
    let at = |a: usize, i: usize| -> std::ops::Range<usize> {
        let o = (a * ns + i) * de;
        o..o + de
    };
    for i in 0..ns {
        for a in 0..kn {
            for b in 0..kn {
                let vals = |which: usize| {
                    stats(&|r: &Replica| match which {
                        0 => dot(&r.th_h[at(a, i)], &r.th_h[at(b, i)]),
                        1 => dot(&r.th_b[at(a, i)], &r.th_b[at(b, i)]),
                        _ => dot(&r.th_h[at(a, i)], &r.th_b[at(b, i)]),
                    })
                };
                for w in 0..3 {
                    let (m, s) = vals(w);
                    grams[w].set(i, a, b, m);
                    grams[w + 3].set(i, a, b, s);
                }
            }
        }
    }
    let mean_of = |get: &dyn Fn(&Replica) -> &Vec<f64>| -> Vec<f64> {
        let mut out = vec![0.0; get(&reps[0]).len()];
        for r in &reps {
            for (o, v) in out.iter_mut().zip(get(r)) {
                *o += v / rr;
            }
        }
        out
    };
    let theta_h = mean_of(&|r| &r.th_h);
    let theta_b = mean_of(&|r| &r.th_b);
    let f_se_max = f_se
        .iter()
        .flatten()
        .flatten()
        .fold(0.0f64, |a, &b| a.max(b));
    let last = &f_se[kk - 1];
    let f_last_se_rms =
        (last.iter().flatten().map(|v| v * v).sum::<f64>() / (nn * d_o) as f64).sqrt();
    let loss_se_max = loss_se.iter().fold(0.0f64, |a, &b| a.max(b));
    let mut g = grams.into_iter();
    let mut next = || g.next().expect("six series");
    let (gamma_h, gamma_b, lambda) = (next(), next(), next());
    let (gamma_h_se, gamma_b_se, lambda_se) = (next(), next(), next());
    Ok(NonlinearLimit {
        params: params.clone(),
        activation: act,
        mc: mc.clone(),
        x: x.to_vec(),
        y: y.to_vec(),
        grid,
        f,
        f_se,
        loss,
        loss_se,
        gamma_h,
        gamma_b,
        lambda,
        gamma_h_se,
        gamma_b_se,
        lambda_se,
        theta_h,
        theta_b,
        report: McReport {
            num_s: ns,
            samples: mc.samples,
            replicas: mc.replicas,
            seed: mc.seed,
            f_se_max,
            f_last_se_rms,
            loss_se_max,
            seconds: t0.elapsed().as_secs_f64(),
        },
    })
}

/// Cloud rows per block of the forward pass (its activations are evaluated together).
const BLOCK: usize = 64;

/// `s = σ(p)`, `d = σ'(p)` elementwise (the vectorised tanh of the engine for tanh).
fn activate(act: Activation, p: &[f64], s: &mut [f64], d: &mut [f64]) {
    match act {
        Activation::Tanh => {
            crate::vtanh::tanh_slice(p, s);
            for (dv, sv) in d.iter_mut().zip(s.iter()) {
                *dv = 1.0 - sv * sv;
            }
        }
        Activation::Linear => {
            s.copy_from_slice(p);
            d.fill(1.0);
        }
        _ => {
            for ((pv, sv), dv) in p.iter().zip(s.iter_mut()).zip(d.iter_mut()) {
                (*sv, *dv) = act.f_d1(*pv);
            }
        }
    }
}

/// One replica's outputs: `f` flat `(K, N, d_out)`, `θ`'s flat `(K, N, num_s, d_E)`.
struct Replica {
    f: Vec<f64>,
    th_h: Vec<f64>,
    th_b: Vec<f64>,
}

/// The cloud of grid point `i`: `S` whitened antithetic units, rows `(ũ, ṽ)` of length
/// `2 d_E` (`ũ = σ_u ζ`, `ṽ = σ_v ω`).
fn draw_cloud(
    stream: &Stream,
    s: usize,
    de: usize,
    sigma_u: f64,
    sigma_v: f64,
) -> Result<Vec<f64>, LimitError> {
    let w = 2 * de;
    let half = s / 2;
    let mut z = vec![0.0; s * w];
    for j in 0..half {
        stream.fill_normal_row(j as u64, 0, 1.0, &mut z[j * w..(j + 1) * w]);
        let (a, b) = z.split_at_mut((half + j) * w);
        let src = &a[j * w..(j + 1) * w];
        let dst = &mut b[..w];
        for c in 0..w {
            dst[c] = if c < de { -src[c] } else { src[c] };
        }
    }
    // Exact whitening: z ← L⁻¹(z − mean) with L Lᵀ the sample covariance.
    let mut mean = vec![0.0; w];
    for row in z.chunks_exact(w) {
        for (m, v) in mean.iter_mut().zip(row) {
            *m += v;
        }
    }
    for m in &mut mean {
        *m /= s as f64;
    }
    let mut cov = vec![0.0; w * w];
    for row in z.chunks_exact_mut(w) {
        for (v, m) in row.iter_mut().zip(&mean) {
            *v -= m;
        }
        for a in 0..w {
            let ra = row[a];
            for b in 0..=a {
                cov[a * w + b] += ra * row[b];
            }
        }
    }
    for a in 0..w {
        for b in 0..=a {
            cov[a * w + b] /= s as f64;
        }
    }
    let l = cholesky_lower(&cov, w).ok_or_else(|| {
        LimitError::invalid(
            "samples",
            s,
            "the sample covariance of a unit cloud is singular: use more samples",
        )
    })?;
    for row in z.chunks_exact_mut(w) {
        // Forward substitution L t = row.
        for a in 0..w {
            let mut acc = row[a];
            for b in 0..a {
                acc -= l[a * w + b] * row[b];
            }
            row[a] = acc / l[a * w + a];
        }
        for (c, v) in row.iter_mut().enumerate() {
            *v *= if c < de { sigma_u } else { sigma_v };
        }
    }
    Ok(z)
}

/// The lower Cholesky factor of the symmetric positive definite `w × w` matrix whose lower
/// triangle is `a`, or `None` if it is not positive definite.
fn cholesky_lower(a: &[f64], w: usize) -> Option<Vec<f64>> {
    let mut l = vec![0.0; w * w];
    for i in 0..w {
        for j in 0..=i {
            let mut s = a[i * w + j];
            for k in 0..j {
                s -= l[i * w + k] * l[j * w + k];
            }
            if i == j {
                if !(s > 0.0 && s.is_finite()) {
                    return None;
                }
                l[i * w + i] = s.sqrt();
            } else {
                l[i * w + j] = s / l[j * w + j];
            }
        }
    }
    Some(l)
}

/// Solves one replica: clouds from `seed`, then for each pass forward (Heun), output,
/// backward (Heun), update of every cloud.
fn solve_replica(
    x: &[Vec<f64>],
    y: &[Vec<f64>],
    p: &LinearLimitParams,
    act: Activation,
    s: usize,
    seed: u64,
) -> Result<Replica, LimitError> {
    let (di, d_o) = (x[0].len(), y[0].len());
    let (de, nn, ns, kk) = (di + d_o, x.len(), p.num_s, p.k_steps);
    let w = 2 * de;
    let ds = 1.0 / (ns - 1) as f64;
    let a = p.alpha;
    // (F2): the unit update rates, per-sample B with the loss's 1/N in the update.
    let (cu, cv) = (p.c_u() / nn as f64, p.c_v() / nn as f64);
    let mut clouds = Vec::with_capacity(ns);
    for i in 0..ns {
        let stream = Stream::new(seed, Tensor::Other(CLOUD_STREAM), i as u64);
        clouds.push(draw_cloud(&stream, s, de, p.sigma_u, p.sigma_v)?);
    }
    // σ(p) and σ'(p) at the accepted forward states, per grid point: (S, N).
    let mut sig = vec![0.0; ns * s * nn];
    let mut dsig = vec![0.0; ns * s * nn];
    let mut f = vec![0.0; kk * nn * d_o];
    let mut th_h = vec![0.0; kk * nn * ns * de];
    let mut th_b = vec![0.0; kk * nn * ns * de];
    let inv_s = 1.0 / s as f64;
    // Scratch of one block of cloud rows: pre-activations, σ, σ'.
    let mut scratch = vec![0.0; 3 * BLOCK * nn];
    // F_i(θ) = (α/S) Σ_s ṽ_s σ(ũ_s·θ_n) for every n; with `cache`, also stores σ, σ'.
    let forward_rhs = |cloud: &[f64],
                       th: &[f64],
                       out: &mut [f64],
                       scratch: &mut [f64],
                       mut cache: Option<(&mut [f64], &mut [f64])>| {
        out.fill(0.0);
        let (pb, rest) = scratch.split_at_mut(BLOCK * nn);
        let (sb, db) = rest.split_at_mut(BLOCK * nn);
        for (b, rows) in cloud.chunks(BLOCK * w).enumerate() {
            let m = rows.len() / w * nn;
            for (j, row) in rows.chunks_exact(w).enumerate() {
                let u = &row[..de];
                for n in 0..nn {
                    pb[j * nn + n] = dot(u, &th[n * de..(n + 1) * de]);
                }
            }
            let (sv, dv) = match cache.as_mut() {
                Some((cs, cd)) => (
                    &mut cs[b * BLOCK * nn..b * BLOCK * nn + m],
                    &mut cd[b * BLOCK * nn..b * BLOCK * nn + m],
                ),
                None => (&mut sb[..m], &mut db[..m]),
            };
            activate(act, &pb[..m], sv, dv);
            for (j, row) in rows.chunks_exact(w).enumerate() {
                let v = &row[de..];
                for n in 0..nn {
                    let c = sv[j * nn + n];
                    let o = &mut out[n * de..(n + 1) * de];
                    for (oe, ve) in o.iter_mut().zip(v) {
                        *oe += c * ve;
                    }
                }
            }
        }
        for v in out.iter_mut() {
            *v *= a * inv_s;
        }
    };
    // −(α/S) Σ_s ũ_s σ'(p_s,n) (ṽ_s·β_n) for every n, σ' from the cache.
    let backward_rhs = |cloud: &[f64], cd: &[f64], tb: &[f64], out: &mut [f64]| {
        out.fill(0.0);
        for (j, row) in cloud.chunks_exact(w).enumerate() {
            let (u, v) = row.split_at(de);
            for n in 0..nn {
                let c = cd[j * nn + n] * dot(v, &tb[n * de..(n + 1) * de]);
                let o = &mut out[n * de..(n + 1) * de];
                for (oe, ue) in o.iter_mut().zip(u) {
                    *oe += c * ue;
                }
            }
        }
        for v in out.iter_mut() {
            *v *= -a * inv_s;
        }
    };
    let idx = |k: usize, n: usize, i: usize| ((k * nn + n) * ns + i) * de;
    let mut th = vec![0.0; nn * de];
    let mut f1 = vec![0.0; nn * de];
    let mut f2 = vec![0.0; nn * de];
    let mut pred = vec![0.0; nn * de];
    for k in 0..kk {
        // (F3) forward, Heun.
        th.fill(0.0);
        for n in 0..nn {
            for c in 0..di {
                th[n * de + c] = p.sigma_we * x[n][c];
            }
        }
        for i in 0..ns {
            for n in 0..nn {
                let o = idx(k, n, i);
                th_h[o..o + de].copy_from_slice(&th[n * de..(n + 1) * de]);
            }
            let (cs, cd) = (
                &mut sig[i * s * nn..(i + 1) * s * nn],
                &mut dsig[i * s * nn..(i + 1) * s * nn],
            );
            forward_rhs(&clouds[i], &th, &mut f1, &mut scratch, Some((cs, cd)));
            if i + 1 == ns {
                break;
            }
            for ((pr, t), d) in pred.iter_mut().zip(&th).zip(&f1) {
                *pr = t + ds * d;
            }
            forward_rhs(&clouds[i + 1], &pred, &mut f2, &mut scratch, None);
            for ((t, d1), d2) in th.iter_mut().zip(&f1).zip(&f2) {
                *t += 0.5 * ds * (d1 + d2);
            }
        }
        // (F4) output.
        let mut tb = vec![0.0; nn * de];
        for n in 0..nn {
            for o in 0..d_o {
                let fo = p.sigma_wu * th[n * de + di + o];
                if !fo.is_finite() {
                    return Err(LimitError::NonFinite {
                        t: 1.0,
                        what: format!("limit output f[{o}, sample {n}] at step k = {k}"),
                    });
                }
                f[(k * nn + n) * d_o + o] = fo;
                tb[n * de + di + o] = p.sigma_wu * (fo - y[n][o]);
            }
        }
        // (F5) backward, Heun from s = 1.
        for i in (0..ns).rev() {
            for n in 0..nn {
                let o = idx(k, n, i);
                th_b[o..o + de].copy_from_slice(&tb[n * de..(n + 1) * de]);
            }
            if i == 0 {
                break;
            }
            backward_rhs(
                &clouds[i],
                &dsig[i * s * nn..(i + 1) * s * nn],
                &tb,
                &mut f1,
            );
            for ((pr, t), d) in pred.iter_mut().zip(&tb).zip(&f1) {
                *pr = t - ds * d;
            }
            backward_rhs(
                &clouds[i - 1],
                &dsig[(i - 1) * s * nn..i * s * nn],
                &pred,
                &mut f2,
            );
            for ((t, d1), d2) in tb.iter_mut().zip(&f1).zip(&f2) {
                *t -= 0.5 * ds * (d1 + d2);
            }
        }
        if k + 1 == kk {
            break;
        }
        // (F6) update every cloud with (F2), from the old units (simultaneous).
        let mut q = vec![0.0; nn];
        for i in 0..ns {
            let (cs, cd) = (
                &sig[i * s * nn..(i + 1) * s * nn],
                &dsig[i * s * nn..(i + 1) * s * nn],
            );
            for (j, row) in clouds[i].chunks_exact_mut(w).enumerate() {
                let (u, v) = row.split_at_mut(de);
                for n in 0..nn {
                    q[n] = dot(v, &th_b[idx(k, n, i)..idx(k, n, i) + de]);
                }
                for n in 0..nn {
                    let gu = cu * cd[j * nn + n] * q[n];
                    let gv = cv * cs[j * nn + n];
                    let h = &th_h[idx(k, n, i)..idx(k, n, i) + de];
                    let b = &th_b[idx(k, n, i)..idx(k, n, i) + de];
                    for e in 0..de {
                        u[e] -= gu * h[e];
                        v[e] -= gv * b[e];
                    }
                }
            }
        }
        if let Some(bad) = th_b[idx(k, 0, 0)..idx(k, nn - 1, ns - 1) + de]
            .iter()
            .position(|v| !v.is_finite())
        {
            let i = (bad / de) % ns;
            return Err(LimitError::NonFinite {
                t: i as f64 * ds,
                what: format!("backward state θᴮ at step k = {k}"),
            });
        }
    }
    Ok(Replica { f, th_h, th_b })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limit::solve_linear_limit_multi;

    fn data(n: usize, di: usize, d_o: usize, seed: u64) -> (Vec<Vec<f64>>, Vec<Vec<f64>>) {
        let s = Stream::new(seed, Tensor::DataX, 0);
        let x = (0..n)
            .map(|i| {
                (0..di)
                    .map(|c| 0.7 * s.normal(i as u64, c as u64))
                    .collect()
            })
            .collect();
        let t = Stream::new(seed, Tensor::DataY, 0);
        let y = (0..n)
            .map(|i| {
                (0..d_o)
                    .map(|c| 0.5 * t.normal(i as u64, c as u64))
                    .collect()
            })
            .collect();
        (x, y)
    }

    fn params(k: usize, num_s: usize) -> LinearLimitParams {
        LinearLimitParams {
            k_steps: k,
            alpha: 1.0,
            eta_u: 0.3,
            eta_v: 0.2,
            num_s,
            rtol: 1e-10,
            atol: 1e-12,
            ..LinearLimitParams::default()
        }
    }

    fn mc(samples: usize, seed: u64) -> MonteCarlo {
        MonteCarlo {
            samples,
            replicas: 2,
            seed,
        }
    }

    fn max_diff(a: &[Vec<Vec<f64>>], b: &[Vec<Vec<f64>>]) -> f64 {
        a.iter()
            .flatten()
            .flatten()
            .zip(b.iter().flatten().flatten())
            .map(|(u, v)| (u - v).abs())
            .fold(0.0, f64::max)
    }

    /// σ = identity with whitened clouds is exact on its grid: any seed and any S give the
    /// same limit to rounding, with standard errors at rounding level.
    #[test]
    fn identity_is_exact_whatever_the_clouds() {
        for (n, di, d_o) in [(1, 2, 1), (3, 2, 2)] {
            let (x, y) = data(n, di, d_o, 7);
            let p = params(4, 41);
            let a = solve_nonlinear_limit(&x, &y, &p, Activation::Linear, &mc(16, 1)).unwrap();
            let b = solve_nonlinear_limit(&x, &y, &p, Activation::Linear, &mc(200, 99)).unwrap();
            let d = max_diff(&a.f, &b.f);
            assert!(d < 1e-12, "N = {n}: f differs by {d}");
            assert!(a.report.f_se_max < 1e-12, "{:?}", a.report);
            for (s1, s2) in [
                (&a.gamma_h, &b.gamma_h),
                (&a.gamma_b, &b.gamma_b),
                (&a.lambda, &b.lambda),
            ] {
                for i in 0..p.num_s {
                    for (u, v) in s1.at(i).iter().zip(s2.at(i)) {
                        assert!((u - v).abs() < 1e-11, "N = {n}: {u} vs {v}");
                    }
                }
            }
        }
    }

    /// σ = identity agrees with the exact linear ODE solver (Dopri5) up to the depth
    /// discretisation of Heun, which falls as 1/num_s².
    #[test]
    fn identity_matches_the_linear_ode_solver() {
        for (n, di, d_o) in [(1, 3, 2), (3, 2, 2)] {
            let (x, y) = data(n, di, d_o, 3);
            let exact = solve_linear_limit_multi(&x, &y, &params(5, 801)).unwrap();
            let mut errs = Vec::new();
            for num_s in [21, 41, 81] {
                let p = params(5, num_s);
                let m = solve_nonlinear_limit(&x, &y, &p, Activation::Linear, &mc(16, 5)).unwrap();
                let df = max_diff(&m.f, &exact.f);
                // Γ's at s = 0 and s = 1 (grid points of both).
                let kn = 5 * n;
                let mut dg = 0.0f64;
                for (i_m, i_e) in [(0, 0), (num_s - 1, 800)] {
                    for a in 0..kn {
                        for b in 0..kn {
                            for (s1, s2) in [
                                (&m.gamma_h, &exact.gamma_h),
                                (&m.gamma_b, &exact.gamma_b),
                                (&m.lambda, &exact.lambda),
                            ] {
                                dg = dg.max((s1.get(i_m, a, b) - s2.get(i_e, a, b)).abs());
                            }
                        }
                    }
                }
                errs.push(df.max(dg));
            }
            assert!(errs[2] < 1e-5, "N = {n}: {errs:?}");
            // Second order: each halving of the step divides the error by about 4.
            assert!(
                errs[0] / errs[1] > 3.0 && errs[1] / errs[2] > 3.0,
                "N = {n}: {errs:?}"
            );
        }
    }

    /// Odd σ: (x, y) → (−x, −y) flips every output exactly (same clouds), and the first
    /// pass has f_0 = 0 (antithetic pairs).
    #[test]
    fn odd_activations_flip_with_the_data_and_start_at_zero() {
        let (x, y) = data(3, 2, 2, 11);
        let neg = |v: &Vec<Vec<f64>>| -> Vec<Vec<f64>> {
            v.iter().map(|r| r.iter().map(|a| -a).collect()).collect()
        };
        let p = params(4, 21);
        let a = solve_nonlinear_limit(&x, &y, &p, Activation::Tanh, &mc(64, 2)).unwrap();
        let b =
            solve_nonlinear_limit(&neg(&x), &neg(&y), &p, Activation::Tanh, &mc(64, 2)).unwrap();
        for (fa, fb) in
            a.f.iter()
                .flatten()
                .flatten()
                .zip(b.f.iter().flatten().flatten())
        {
            assert!((fa + fb).abs() < 1e-14, "{fa} vs {fb}");
        }
        assert!(
            a.f[0].iter().flatten().all(|v| v.abs() < 1e-14),
            "{:?}",
            a.f[0]
        );
        // tanh learns: the loss falls.
        assert!(a.loss[3] < a.loss[0], "{:?}", a.loss);
    }

    /// Rotations: x → Qx leaves f unchanged, y → Q'y maps f → Q'f. Exact for σ = identity
    /// (any whitened cloud gives the exact answer); for tanh within the standard errors
    /// (the clouds are not rotated along, so only the law is invariant).
    #[test]
    fn rotations_of_inputs_and_outputs_act_as_they_should() {
        let (x, y) = data(3, 2, 2, 23);
        let (c, s) = (0.6f64, 0.8f64); // a rotation by atan(4/3)
        let rot = |v: &Vec<Vec<f64>>| -> Vec<Vec<f64>> {
            v.iter()
                .map(|r| vec![c * r[0] - s * r[1], s * r[0] + c * r[1]])
                .collect()
        };
        let p = params(4, 21);
        for (act, samples, tol_z) in [
            (Activation::Linear, 16, None),
            (Activation::Tanh, 800, Some(4.0)),
        ] {
            let m = MonteCarlo {
                samples,
                replicas: 4,
                seed: 9,
            };
            let base = solve_nonlinear_limit(&x, &y, &p, act, &m).unwrap();
            let rx = solve_nonlinear_limit(&rot(&x), &y, &p, act, &mc_with(&m, 10)).unwrap();
            let ry = solve_nonlinear_limit(&x, &rot(&y), &p, act, &mc_with(&m, 11)).unwrap();
            let mut z2 = (0.0, 0.0);
            for k in 0..4 {
                for n in 0..3 {
                    let fb = &base.f[k][n];
                    let want_y = [c * fb[0] - s * fb[1], s * fb[0] + c * fb[1]];
                    for o in 0..2 {
                        let se_x = (base.f_se[k][n][o].powi(2) + rx.f_se[k][n][o].powi(2)).sqrt();
                        let se_y = (base.f_se[k][n][o].powi(2) + ry.f_se[k][n][o].powi(2)).sqrt();
                        let (dx, dy) = (rx.f[k][n][o] - fb[o], ry.f[k][n][o] - want_y[o]);
                        match tol_z {
                            None => {
                                assert!(dx.abs() < 1e-11 && dy.abs() < 1e-11, "{dx} {dy}");
                            }
                            Some(_) if k > 0 => {
                                z2.0 += (dx / se_x).powi(2);
                                z2.1 += (dy / se_y).powi(2);
                            }
                            Some(_) => {}
                        }
                    }
                }
            }
            if let Some(t) = tol_z {
                let count = 3.0 * 3.0 * 2.0;
                let (zx, zy) = ((z2.0 / count).sqrt(), (z2.1 / count).sqrt());
                assert!(zx < t && zy < t, "rms z: inputs {zx}, outputs {zy}");
            }
        }
    }

    fn mc_with(m: &MonteCarlo, seed: u64) -> MonteCarlo {
        MonteCarlo { seed, ..m.clone() }
    }

    /// Permuting the inputs permutes the outputs.
    #[test]
    fn permuting_samples_permutes_outputs() {
        let (x, y) = data(3, 2, 1, 13);
        let perm = [2, 0, 1];
        let xp: Vec<_> = perm.iter().map(|&i| x[i].clone()).collect();
        let yp: Vec<_> = perm.iter().map(|&i| y[i].clone()).collect();
        let p = params(3, 21);
        let a = solve_nonlinear_limit(&x, &y, &p, Activation::Gelu, &mc(64, 4)).unwrap();
        let b = solve_nonlinear_limit(&xp, &yp, &p, Activation::Gelu, &mc(64, 4)).unwrap();
        for k in 0..3 {
            for (j, &i) in perm.iter().enumerate() {
                assert!((a.f[k][i][0] - b.f[k][j][0]).abs() < 1e-12);
            }
        }
    }

    /// Two seeds agree within their standard errors, and the errors shrink like 1/√S.
    #[test]
    fn seeds_agree_within_their_standard_errors() {
        let (x, y) = data(2, 2, 2, 17);
        let p = params(4, 21);
        let run = |s, seed| {
            let m = MonteCarlo {
                samples: s,
                replicas: 4,
                seed,
            };
            solve_nonlinear_limit(&x, &y, &p, Activation::Tanh, &m).unwrap()
        };
        let (a, b) = (run(400, 1), run(400, 2));
        let mut z2 = 0.0;
        let mut count = 0.0;
        for k in 1..4 {
            for n in 0..2 {
                for o in 0..2 {
                    let se = (a.f_se[k][n][o].powi(2) + b.f_se[k][n][o].powi(2)).sqrt();
                    assert!(se > 0.0);
                    z2 += ((a.f[k][n][o] - b.f[k][n][o]) / se).powi(2);
                    count += 1.0;
                }
            }
        }
        // RMS z-score of the 12 differences (4 replicas: heavy-tailed t; generous bound).
        assert!((z2 / count).sqrt() < 4.0, "rms z = {}", (z2 / count).sqrt());
        let c = run(1600, 1);
        let ratio = a.report.f_last_se_rms / c.report.f_last_se_rms;
        assert!(
            ratio > 1.2 && ratio < 4.5,
            "SE ratio for 4x samples: {ratio}"
        );
    }

    #[test]
    fn bad_settings_name_the_field() {
        let (x, y) = data(2, 2, 1, 1);
        let p = params(3, 11);
        let err = |m: MonteCarlo, p: &LinearLimitParams| {
            solve_nonlinear_limit(&x, &y, p, Activation::Tanh, &m)
                .unwrap_err()
                .to_string()
        };
        for s in [0, 7, 6] {
            let e = err(mc(s, 0), &p);
            assert!(e.contains("samples") && e.contains(&s.to_string()), "{e}");
        }
        let e = err(
            MonteCarlo {
                replicas: 1,
                ..mc(64, 0)
            },
            &p,
        );
        assert!(e.contains("replicas"), "{e}");
        let e = err(
            mc(64, 0),
            &LinearLimitParams {
                sigma_wu: 0.0,
                ..p.clone()
            },
        );
        assert!(e.contains("sigma_wu"), "{e}");
        let e = err(
            mc(64, 0),
            &LinearLimitParams {
                num_s: 1,
                ..p.clone()
            },
        );
        assert!(e.contains("num_s"), "{e}");
        let e = solve_nonlinear_limit(&[], &[], &p, Activation::Tanh, &mc(64, 0))
            .unwrap_err()
            .to_string();
        assert!(e.contains('x'), "{e}");
    }

    /// The coordinate trajectories of the frame rows themselves are the frame vectors.
    #[test]
    fn trajectories_read_the_frame() {
        let (x, y) = data(2, 2, 1, 5);
        let p = params(2, 11);
        let m = solve_nonlinear_limit(&x, &y, &p, Activation::Tanh, &mc(32, 0)).unwrap();
        // Rows: e = σ_we·(1, 0), w = 0 → ε = (1, 0, 0): H is the first frame component.
        let t = m.trajectories(&[p.sigma_we, 0.0], &[0.0]).unwrap();
        let ns = 11;
        for k in 0..2 {
            for n in 0..2 {
                for i in 0..ns {
                    assert_eq!(t.h(0, i, k * 2 + n), m.theta_h_at(k, n, i)[0]);
                }
            }
        }
        assert!(m.trajectories(&[1.0, 0.0], &[0.0, 1.0]).is_err());
    }
}
