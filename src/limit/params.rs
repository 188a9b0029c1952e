//! The parameters of the linear large-D limit (which also parametrize the nonlinear
//! limit's finite network, with its activation beside them) and the checks of the
//! training pairs that every limit solver shares.

use super::LimitError;
use serde::{Deserialize, Serialize};

/// Parameters of the linear large-D limit.
///
/// The finite network it describes: `h_0 = W_e x`, `h_{l+1} = h_l + α/(LM) V_l U_lᵀ h_l / D`,
/// `f = W_uᵀ h_L / D`, loss `½|f − y|²`, `U, V` with `N(0, D σ_u²)`, `N(0, D σ_v²)` entries,
/// `W_e, W_u` frozen with `N(0, σ_we²)`, `N(0, σ_wu²)` entries, and full-batch GD on the raw
/// weights with learning rates `η_u L M D/α²` on `U` and `η_v L M D/α²` on `V`.
/// Defaults are those of `reference.json` (and of the authors' linear experiments).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LinearLimitParams {
    /// Number `K ≥ 1` of forward passes computed (`f_0, …, f_{K−1}`: `K − 1` GD steps).
    pub k_steps: usize,
    /// Residual scale `α > 0`.
    pub alpha: f64,
    /// Learning-rate factor `η_u ≥ 0` of the `U` weights.
    pub eta_u: f64,
    /// Learning-rate factor `η_v ≥ 0` of the `V` weights.
    pub eta_v: f64,
    /// Initial standard deviation `σ_u ≥ 0` of the normalised `U` entries.
    pub sigma_u: f64,
    /// Initial standard deviation `σ_v ≥ 0` of the normalised `V` entries.
    pub sigma_v: f64,
    /// Standard deviation `σ_we ≥ 0` of the embedding entries.
    pub sigma_we: f64,
    /// Standard deviation `σ_wu ≥ 0` of the unembedding entries.
    pub sigma_wu: f64,
    /// Relative tolerance of every ODE solve.
    pub rtol: f64,
    /// Absolute tolerance of every ODE solve.
    pub atol: f64,
    /// Number `≥ 2` of points of the depth grid.
    pub num_s: usize,
}

impl Default for LinearLimitParams {
    fn default() -> Self {
        Self {
            k_steps: 15,
            alpha: 1.0,
            eta_u: 0.1,
            eta_v: 0.1,
            sigma_u: 1.0,
            sigma_v: 1.0,
            sigma_we: 1.0,
            sigma_wu: 1.0,
            rtol: 1e-5,
            atol: 1e-7,
            num_s: 100,
        }
    }
}

impl LinearLimitParams {
    /// Checks every field; the error names the first bad field and its value.
    pub fn validate(&self) -> Result<(), LimitError> {
        if self.k_steps == 0 {
            return Err(LimitError::invalid("k_steps", self.k_steps, "must be >= 1"));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(LimitError::invalid(
                "alpha",
                self.alpha,
                "must be finite and > 0",
            ));
        }
        for (field, v) in [
            ("eta_u", self.eta_u),
            ("eta_v", self.eta_v),
            ("sigma_u", self.sigma_u),
            ("sigma_v", self.sigma_v),
            ("sigma_we", self.sigma_we),
            ("sigma_wu", self.sigma_wu),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(LimitError::invalid(field, v, "must be finite and >= 0"));
            }
        }
        if !(self.rtol.is_finite() && self.rtol >= 100.0 * f64::EPSILON) {
            return Err(LimitError::invalid(
                "rtol",
                self.rtol,
                "must be finite and at least 100·f64::EPSILON (2.2e-14)",
            ));
        }
        if !(self.atol.is_finite() && self.atol >= 0.0) {
            return Err(LimitError::invalid(
                "atol",
                self.atol,
                "must be finite and >= 0",
            ));
        }
        if self.num_s < 2 {
            return Err(LimitError::invalid("num_s", self.num_s, "must be >= 2"));
        }
        Ok(())
    }

    /// Effective learning rate `c_u = η_u/α` of a normalised `U` column (see the module
    /// documentation).
    pub fn c_u(&self) -> f64 {
        self.eta_u / self.alpha
    }

    /// Effective learning rate `c_v = η_v/α` of a normalised `V` column.
    pub fn c_v(&self) -> f64 {
        self.eta_v / self.alpha
    }
}

/// Checks the training pairs of a limit solver (at least one; inputs, and targets, all of
/// one non-zero length; finite entries): returns `(d_in, d_out)`.
pub(crate) fn check_data(x: &[Vec<f64>], y: &[Vec<f64>]) -> Result<(usize, usize), LimitError> {
    if x.is_empty() {
        return Err(LimitError::invalid("x", "[]", "needs at least one sample"));
    }
    if y.len() != x.len() {
        return Err(LimitError::Dimension {
            what: "y (one target per input)",
            expected: x.len(),
            got: y.len(),
        });
    }
    let (di, d_o) = (x[0].len(), y[0].len());
    if di == 0 {
        return Err(LimitError::invalid("x", "[]", "inputs must not be empty"));
    }
    if d_o == 0 {
        return Err(LimitError::invalid("y", "[]", "targets must not be empty"));
    }
    for (xn, yn) in x.iter().zip(y) {
        if xn.len() != di {
            return Err(LimitError::Dimension {
                what: "x[n] (all inputs of one length)",
                expected: di,
                got: xn.len(),
            });
        }
        if yn.len() != d_o {
            return Err(LimitError::Dimension {
                what: "y[n] (all targets of one length)",
                expected: d_o,
                got: yn.len(),
            });
        }
        if let Some(v) = xn.iter().chain(yn).find(|v| !v.is_finite()) {
            return Err(LimitError::invalid("x/y", v, "entries must be finite"));
        }
    }
    Ok((di, d_o))
}
