//! The large-D limit of a ResNet with linear two-layer-perceptron blocks trained on one
//! input (docs/papers.md §2.3, "Large-D (DMFT) limit, linear case"). See the module
//! documentation of [`crate::limit`] for the equations and their derivation.
//!
//! The solver is the `N`-input one ([`crate::limit::multi`]) with `N = 1`, which reduces to
//! the one-input construction exactly (bit for bit: the test `multi_n1_reduces_exactly`
//! pinned this while the two were separate code); this module gives it the one-input
//! shapes (`f_k ∈ ℝ^{d_out}`, `K × K` series).

use super::LimitError;
use super::grid::{DepthGrid, DepthSeries};
use super::multi::{LinearLimitMulti, solve_linear_limit_multi};
use super::ode::SolverReport;
use super::params::LinearLimitParams;
use serde::{Deserialize, Serialize};

/// Everything the linear limit computes, for one training pair `(x, y)`.
///
/// Step indices `j, k` run over `0..K` (`K = params.k_steps`); `k` is the forward pass made
/// after `k` GD steps. Matrices on the depth grid are [`DepthSeries`] of shape
/// `num_s × K × K` (or `num_s × K × d`): entry `(j, k)` at grid point `i` is the quantity at
/// depth `s_i`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LinearLimit {
    /// The parameters used.
    pub params: LinearLimitParams,
    /// The training input `x ∈ ℝ^{d_in}`.
    pub x: Vec<f64>,
    /// The target `y ∈ ℝ^{d_out}`.
    pub y: Vec<f64>,
    /// The depth grid.
    pub grid: DepthGrid,
    /// Limit outputs `f_k = ξ^{Wu}_{H,k}(1)`, `K × d_out`.
    pub f: Vec<Vec<f64>>,
    /// Residuals `g_k = f_k − y` (the loss gradients), `K × d_out`.
    pub g: Vec<Vec<f64>>,
    /// Limit losses `½|f_k − y|²`.
    pub loss: Vec<f64>,
    /// `Γᴴ_{jk}(s) = lim ⟨h_j(s), h_k(s)⟩/D`.
    pub gamma_h: DepthSeries,
    /// `Γᴮ_{jk}(s) = lim ⟨B_j(s), B_k(s)⟩/D`, with `B = D·∂loss/∂h`.
    pub gamma_b: DepthSeries,
    /// `Λ_{jk}(s) = lim ⟨h_j(s), B_k(s)⟩/D`.
    pub lambda: DepthSeries,
    /// Response matrix: the velocity field of pass `k` at depth `s` is
    /// `α Σ_k(s) = Σ_{i,j<k} A_{ij}(s) B_j(s) h_i(s)ᵀ / D`.
    pub a: DepthSeries,
    /// `ξ^{We}_{H,k}(s) = lim W_eᵀ h_k(s)/D` (row `k`), `num_s × K × d_in`.
    pub xi_h_we: DepthSeries,
    /// `ξ^{Wu}_{H,k}(s) = lim W_uᵀ h_k(s)/D`, `num_s × K × d_out`.
    pub xi_h_wu: DepthSeries,
    /// `ξ^{We}_{B,k}(s) = lim W_eᵀ B_k(s)/D`, `num_s × K × d_in`.
    pub xi_b_we: DepthSeries,
    /// `ξ^{Wu}_{B,k}(s) = lim W_uᵀ B_k(s)/D`, `num_s × K × d_out`.
    pub xi_b_wu: DepthSeries,
    /// Coefficients of the unit features on the Gaussian initial features (module doc).
    pub m_f1: DepthSeries,
    /// See [`LinearLimit::m_f1`].
    pub m_f2: DepthSeries,
    /// See [`LinearLimit::m_f1`].
    pub m_g1: DepthSeries,
    /// See [`LinearLimit::m_f1`].
    pub m_g2: DepthSeries,
    /// `W_h[k, j] = (A_{<k}ᵀ γᴴ_k)_j`: `h_k' = Σ_j W_h[k, j] B_j`.
    pub w_h: DepthSeries,
    /// `W_b[k, j] = −(A_{<k} γᴮ_k)_j`: `B_k' = Σ_j W_b[k, j] h_j`.
    pub w_b: DepthSeries,
    /// Work of all ODE solves together.
    pub report: SolverReport,
}

impl LinearLimit {
    /// Number `K` of forward passes.
    pub fn k_steps(&self) -> usize {
        self.params.k_steps
    }

    /// Input dimension.
    pub fn d_in(&self) -> usize {
        self.x.len()
    }

    /// Output dimension.
    pub fn d_out(&self) -> usize {
        self.y.len()
    }

    /// The `K × K` matrix `Γᴴ(s_i)` as nested rows.
    pub fn gamma_h_at(&self, i: usize) -> Vec<Vec<f64>> {
        self.gamma_h.matrix(i)
    }

    /// The `K × K` matrix `Γᴮ(s_i)` as nested rows.
    pub fn gamma_b_at(&self, i: usize) -> Vec<Vec<f64>> {
        self.gamma_b.matrix(i)
    }

    /// The `K × K` matrix `Λ(s_i)` as nested rows.
    pub fn lambda_at(&self, i: usize) -> Vec<Vec<f64>> {
        self.lambda.matrix(i)
    }

    /// The `K × K` matrix `A(s_i)` as nested rows.
    pub fn a_at(&self, i: usize) -> Vec<Vec<f64>> {
        self.a.matrix(i)
    }
}

/// Solves the linear limit for one training pair `(x, y)` (`x ∈ ℝ^{d_in}`, `y ∈ ℝ^{d_out}`).
///
/// The step-by-step construction of the module documentation of [`crate::limit`]: for
/// `k = 1..K`, four linear ODE solves on `[0, 1]` (forward `Γᴴ_{·k}, Λ_{k·}`, forward `ξ_{H,k}`,
/// backward `Γᴮ_{·k}, Λ_{·k}`, backward `ξ_{B,k}`) and the two diagonal quadratures, then the
/// pointwise updates of `M`, `A`, `W`; [`solve_linear_limit_multi`] with one sample.
pub fn solve_linear_limit(
    x: &[f64],
    y: &[f64],
    params: &LinearLimitParams,
) -> Result<LinearLimit, LimitError> {
    params.validate()?;
    if x.is_empty() {
        return Err(LimitError::invalid("x", "[]", "must not be empty"));
    }
    if y.is_empty() {
        return Err(LimitError::invalid("y", "[]", "must not be empty"));
    }
    if let Some(v) = x.iter().find(|v| !v.is_finite()) {
        return Err(LimitError::invalid("x", v, "entries must be finite"));
    }
    if let Some(v) = y.iter().find(|v| !v.is_finite()) {
        return Err(LimitError::invalid("y", v, "entries must be finite"));
    }
    let m = solve_linear_limit_multi(&[x.to_vec()], &[y.to_vec()], params)?;
    Ok(LinearLimit::from_one_sample(m))
}

impl LinearLimit {
    /// The one-sample limit from the `N`-input one with `N = 1` (combined index `a = k`).
    fn from_one_sample(m: LinearLimitMulti) -> Self {
        debug_assert_eq!(m.n_samples, 1);
        let first = |v: Vec<Vec<Vec<f64>>>| {
            v.into_iter()
                .map(|mut per_n| per_n.swap_remove(0))
                .collect()
        };
        LinearLimit {
            params: m.params,
            x: m.x.into_iter().next().unwrap_or_default(),
            y: m.y.into_iter().next().unwrap_or_default(),
            grid: m.grid,
            f: first(m.f),
            g: first(m.g),
            loss: m.loss,
            gamma_h: m.gamma_h,
            gamma_b: m.gamma_b,
            lambda: m.lambda,
            a: m.a,
            xi_h_we: m.xi_h_we,
            xi_h_wu: m.xi_h_wu,
            xi_b_we: m.xi_b_we,
            xi_b_wu: m.xi_b_wu,
            m_f1: m.m_f1,
            m_f2: m.m_f2,
            m_g1: m.m_g1,
            m_g2: m.m_g2,
            w_h: m.w_h,
            w_b: m.w_b,
            report: m.report,
        }
    }
}
