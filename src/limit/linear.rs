//! The large-D limit of a ResNet with linear two-layer-perceptron blocks trained on one
//! input (docs/papers.md §2.3, "Large-D (DMFT) limit, linear case"). See the module
//! documentation of [`crate::limit`] for the equations and their derivation.
//!
//! The solver is the `N`-input one ([`crate::limit::multi`]) with `N = 1`, which reduces to
//! the one-input construction exactly (bit for bit: the test `multi_n1_reduces_exactly`
//! pinned this while the two were separate code); this module gives it the one-input
//! shapes (`f_k ∈ ℝ^{d_out}`, `K × K` series).

use super::LimitError;
use super::multi::{LinearLimitMulti, solve_linear_limit_multi};
use super::params::LinearLimitParams;
use serde::{Deserialize, Serialize};

/// Everything the linear limit computes, for one training pair `(x, y)`: the `N = 1`
/// solution ([`LinearLimitMulti`], reached through `Deref`: `params`, `grid`, `loss`,
/// `gamma_h`, `gamma_b`, `lambda`, `a`, the `ξ` and `M` series, `w_h`, `w_b`, `report`)
/// with the one-input shapes of the pair and of the outputs.
///
/// Step indices `j, k` run over `0..K` (`K = params.k_steps`); `k` is the forward pass made
/// after `k` GD steps. Matrices on the depth grid are [`DepthSeries`](super::DepthSeries) of shape
/// `num_s × K × K` (or `num_s × K × d`): entry `(j, k)` at grid point `i` is the quantity at
/// depth `s_i` (with one sample the combined index `a = k·N + n` is `k`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LinearLimit {
    /// The solution with `N = 1`.
    pub multi: LinearLimitMulti,
    /// The training input `x ∈ ℝ^{d_in}`.
    pub x: Vec<f64>,
    /// The target `y ∈ ℝ^{d_out}`.
    pub y: Vec<f64>,
    /// Limit outputs `f_k = ξ^{Wu}_{H,k}(1)`, `K × d_out`.
    pub f: Vec<Vec<f64>>,
    /// Residuals `g_k = f_k − y` (the loss gradients), `K × d_out`.
    pub g: Vec<Vec<f64>>,
}

impl std::ops::Deref for LinearLimit {
    type Target = LinearLimitMulti;
    fn deref(&self) -> &LinearLimitMulti {
        &self.multi
    }
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
        let first = |v: &[Vec<Vec<f64>>]| v.iter().map(|per_n| per_n[0].clone()).collect();
        LinearLimit {
            x: m.x[0].clone(),
            y: m.y[0].clone(),
            f: first(&m.f),
            g: first(&m.g),
            multi: m,
        }
    }
}
