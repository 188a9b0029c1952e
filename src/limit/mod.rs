//! Large-D limits of scaled ResNets (`docs/papers.md` §2.2–2.3).
//!
//! Contents:
//! - [`ode`]: an adaptive Dormand–Prince 5(4) integrator ([`Dopri5`]) with error control,
//!   forward or backward integration, dense output and evaluation on a grid, and a work
//!   report ([`SolverReport`]).
//! - [`linear`]: the deterministic large-D (DMFT) limit of a ResNet with *linear*
//!   two-layer-perceptron blocks trained by GD on one input ([`solve_linear_limit`]).
//! - [`coords`]: the per-coordinate limit trajectories `H_k(s)`, `B_k(s)` of that limit,
//!   batched over many coordinates ([`CoordinateBasis`]).
//! - [`multi`]: the extension to `N ≥ 1` training inputs ([`solve_linear_limit_multi`]),
//!   derived in that module's documentation.
//! - [`nonlinear`]: the limit for any activation (`docs/nonlinear-limit.md`):
//!   the frame form, solved by Monte Carlo over single units with Heun in depth, with
//!   standard errors from independent replicas ([`solve_nonlinear_limit`]).
//!
//! Finite networks are compared with these limits in [`crate::vslimit`] (errors of
//! docs/papers.md §2.4, limit sweeps, coordinate plots); `tests/limit_convergence.rs` checks that
//! they approach them as `D`, `M`, `L` grow, for `N = 1` and `N = 4`.
//!
//! # The finite network
//!
//! One input `x ∈ ℝ^{d_in}`, target `y ∈ ℝ^{d_out}`. Embedding `h_0 = W_e x`
//! (`W_e ∈ ℝ^{D×d_in}`, entries `N(0, σ_we²)`), blocks `l = 0..L`:
//! `p_l = U_lᵀ h_l / D`, `h_{l+1} = h_l + α/(LM) V_l p_l` (σ = identity), output
//! `f = W_uᵀ h_L / D` (`W_u ∈ ℝ^{D×d_out}`, entries `N(0, σ_wu²)`), loss `½|f − y|²`.
//! `U_l, V_l ∈ ℝ^{D×M}` have `N(0, Dσ_u²)`, `N(0, Dσ_v²)` entries; `W_e`, `W_u` are frozen;
//! `U`, `V` follow full-batch GD with raw learning rates `η_u LMD/α²`, `η_v LMD/α²`
//! (docs/papers.md §2.2, Python convention). Pass `k` is the forward pass after `k` updates.
//!
//! Normalised form: with `ũ = u/√D`, `ṽ = v/√D` for the columns `u`, `v` of `U_l`, `V_l`
//! (`N(0, σ_u²)`, `N(0, σ_v²)` entries), the block is `h ← h + α√D/(LM) Σ_m ṽ_m (ũ_mᵀ h/√D)`,
//! and with `b = ∂loss/∂h`, `B = D b` (entries of order one), one GD step is
//!
//! ```text
//! ũ ← ũ − c_u h (ṽᵀ B)/D,   ṽ ← ṽ − c_v B (ũᵀ h)/D,   c_u = η_u/α,  c_v = η_v/α.
//! ```
//!
//! # The limit (L → ∞ at any M, then D → ∞)
//!
//! As `L → ∞` the depth `s = l/L ∈ [0, 1]` becomes continuous and the network follows the
//! Neural Mean ODE (docs/papers.md §2.3): `h_k' = α Σ_k(s) h_k` with `Σ_k(s) = E[ṽ_k ũ_kᵀ]` the mean
//! over the units at depth `s` after `k` steps, and the adjoint `B_k' = −α Σ_kᵀ B_k`,
//! `h_k(0) = W_e x`, `B_k(1) = W_u g_k`, `g_k = f_k − y`. At initialisation `Σ_0 = 0`.
//! The correlations `Γᴴ_{jk} = ⟨h_j, h_k⟩/D`, `Γᴮ_{jk} = ⟨B_j, B_k⟩/D`, `Λ_{jk} = ⟨h_j, B_k⟩/D`
//! and the projections `ξ^{We/Wu}_{H,k} = W_{e/u}ᵀ h_k / D`, `ξ^{We/Wu}_{B,k} = W_{e/u}ᵀ B_k / D`
//! become deterministic as `D → ∞`; `f_k = ξ^{Wu}_{H,k}(1)`.
//!
//! ## Derivation of the response matrix and its index convention
//!
//! Unrolling the updates of one unit, `ũ_k = ũ_0 − D^{-1/2} c_u Σ_{j<k} h_j ζ_j` and
//! `ṽ_k = ṽ_0 − D^{-1/2} c_v Σ_{j<k} B_j ω_j` with the scalar unit features
//! `ω_j = ũ_jᵀ h_j/√D`, `ζ_j = ṽ_jᵀ B_j/√D`. Writing `χᵘ_j = ũ_0ᵀ h_j/√D`, `χᵛ_j = ṽ_0ᵀ B_j/√D`
//! (jointly Gaussian over units, independent, covariances `σ_u² Γᴴ`, `σ_v² Γᴮ`), the
//! recursion `ζ_k = χᵛ_k − c_v Σ_{j<k} Γᴮ_{jk} ω_j`, `ω_k = χᵘ_k − c_u Σ_{j<k} Γᴴ_{jk} ζ_j`
//! gives `ζ_k = Σ_i M_F1[i,k] χᵘ_i + M_F2[i,k] χᵛ_i`, `ω_k = Σ_i M_G1[i,k] χᵘ_i + M_G2[i,k] χᵛ_i`
//! with upper-triangular `M` of diagonals `(0, 1, 1, 0)` and the columns (step 7 of §2.3)
//!
//! ```text
//! M_F1[<k,k] = −c_v M_G1 γᴮ_k,  M_F2[<k,k] = −c_v M_G2 γᴮ_k,
//! M_G1[<k,k] = −c_u M_F1 γᴴ_k,  M_G2[<k,k] = −c_u M_F2 γᴴ_k,     γᴴ_k = Γᴴ_{<k,k}, γᴮ_k = Γᴮ_{<k,k}.
//! ```
//!
//! Taking `E[ṽ_k ũ_kᵀ]` with Gaussian integration by parts (`E[ṽ_0 χᵛ_i] = σ_v² B_i/√D`, …):
//!
//! ```text
//! α Σ_k(s) = (1/D) Σ_{i,j<k} A_{ij}(s) B_j(s) h_i(s)ᵀ,
//! A = α [ −c_u σ_v² M_F2ᵀ − c_v σ_u² M_G1 + c_u c_v (σ_u² M_F1ᵀ Γᴴ M_G1 + σ_v² M_F2ᵀ Γᴮ M_G2) ].
//! ```
//!
//! So **`A_{ij}` couples the forward state `h_i` (row index) to the backward state `B_j`
//! (column index)**, and `A_{<k}` is the leading block of `A_{<k+1}`. Expanding the closed
//! form column by column gives exactly the recursion of docs/papers.md §2.3 step 8 (column `k`
//! carries `γᴴ`, row `k` carries `γᴮ`, and `A_kk = −α(c_uσ_v² + c_vσ_u²) + c_u c_v γᴴᵀ A_{<k} γᴮ`);
//! the test `closed_form_response_matches_recursion` checks the two agree. Hence
//!
//! ```text
//! h_k' = α Σ_k h_k   = Σ_j B_j (A_{<k}ᵀ γᴴ_k)_j,
//! B_k' = −α Σ_kᵀ B_k = −Σ_i h_i (A_{<k} γᴮ_k)_i = Σ_i h_i (Ãᵀ γᴮ_k)_i,    Ã = −Aᵀ.
//! ```
//!
//! **Caveat (ii) of docs/papers.md §2.3, resolved.** The backward equation is the adjoint of
//! the forward one, so it must use `Ãᵀ γᴮ = −A γᴮ`. The authors' correlation equations
//! (`ξ_B`, `C_B`, the `Γᴮ_kk` equation, `W_b = Ãᵀ γᴮ`) do: they are the inner products of
//! this `B_k'` with `B_j`, `h_j`, `W_e`, `W_u`. Their per-coordinate simulator
//! (`simulate_system_batched_optimized`) uses `Ã γᴮ = −Aᵀ γᴮ`, the adjoint of the
//! *transposed* response, which is inconsistent with their own correlations (the two only
//! agree when `A` is symmetric, which it is not: `max|A − Aᵀ|/|A| ≈ 2%`). This module uses
//! `Ãᵀ γᴮ` in both places. Evidence (tests `exact_moments_reproduce_correlations`): the exact
//! Gaussian moments of the coordinate trajectories reproduce `Γᴴ`, `Γᴮ`, `Λ`, `ξ` to
//! about `1.5e-6` at tight tolerances with `Ãᵀ γᴮ`, and miss them by `1.6e-4 – 1.7e-3` with `Ã γᴮ`.
//!
//! ## The step-by-step system (docs/papers.md §2.3, steps 1–9)
//!
//! Base case (all `s`): `Γᴴ_00 = σ_we²|x|²`, `Γᴮ_00 = σ_wu²|g_0|²` (`f_0 = 0`), `Λ_00 = 0`,
//! `ξ^{We}_{H,0} = σ_we² x`, `ξ^{Wu}_{B,0} = σ_wu² g_0`, the other `ξ_0 = 0`,
//! `A_00 = −α(c_u σ_v² + c_v σ_u²)`. Then for `k = 1..K`:
//! 1. forward: `[Γᴴ_{·k}; Λ_{k·}]' = C_H [Γᴴ_{·k}; Λ_{k·}]`,
//!    `C_H = [[Λ A_{<k}ᵀ, W_h], [Γᴮ A_{<k}ᵀ + W_b, 0]]`, from `Γᴴ_{jk}(0) = σ_we²|x|²`,
//!    `Λ_{kj}(0) = ξ^{We}_{B,j}(0)·x`;
//! 2. forward: `ξ_{H,k}' = Σ_{j<k} ξ_{B,j} (A_{<k}ᵀ γᴴ_k)_j`, `ξ^{Wu}_{H,k}(0) = 0`,
//!    `ξ^{We}_{H,k}(0) = σ_we² x`;
//! 3. `f_k = ξ^{Wu}_{H,k}(1)`, `g_k = f_k − y`;
//! 4. backward: `[Γᴮ_{·k}; Λ_{·k}]' = C_B [Γᴮ_{·k}; Λ_{·k}]`,
//!    `C_B = [[Λᵀ Ãᵀ, W_b], [Γᴴ Ãᵀ + W_h, 0]]`, from `Γᴮ_{jk}(1) = σ_wu² g_j·g_k`,
//!    `Λ_{jk}(1) = ξ^{Wu}_{H,j}(1)·g_k`;
//! 5. backward: `ξ_{B,k}' = Σ_{j<k} ξ_{H,j} (Ãᵀ γᴮ_k)_j`, `ξ^{Wu}_{B,k}(1) = σ_wu² g_k`,
//!    `ξ^{We}_{B,k}(1) = 0`;
//! 6. `(Γᴴ_kk)' = 2 γᴴ_kᵀ A_{<k} Λ_{k,<k}` forward, `(Γᴮ_kk)' = 2 γᴮ_kᵀ Ã Λ_{<k,k}` backward
//!    from `σ_wu²|g_k|²`, and `Λ_kk ≡ ξ^{We}_{B,k}(0)·x` (`⟨h_k, B_k⟩` is conserved since
//!    `h_k' = αΣ_k h_k`, `B_k' = −αΣ_kᵀ B_k`);
//! 7. the `M` columns above; 8. the row, column and diagonal `k` of `A`;
//! 9. `W_h[k, <k] = A_{<k}ᵀ γᴴ_k`, `W_b[k, <k] = Ãᵀ γᴮ_k` (so `h_k' = Σ_j W_h[k,j] B_j`,
//!    `B_k' = Σ_j W_b[k,j] h_j`).
//!
//! Everything depth-dependent is tabulated on the grid `s_i = i/(num_s − 1)` and read back by
//! piecewise-linear interpolation, as in the authors' solver: the block matrices `C_H`, `C_B`
//! are interpolated as wholes, while in the `ξ` and diagonal equations each factor is
//! interpolated separately and then multiplied. Each ODE is solved by [`Dopri5`] with the
//! given `rtol`, `atol` (no merging of solves, so the step-size sequences are those of the
//! reference). With the reference's settings (`num_s = 100`, `rtol = 1e-5`, `atol = 1e-7`)
//! this reproduces `reference.json` to about `5e-13` (test `matches_reference_json`).
//! That K = 15 solve (450 accepted steps, 2924 right-hand-side evaluations over its 112 ODE
//! solves) takes about 5 ms in release mode (`cargo run --release --example linear_limit`,
//! shared 2-core machine), against about 0.2 s for the authors' SciPy solver.
//!
//! ## The α convention (a difference with the authors' code)
//!
//! For the finite network above the effective rates are `c = η/α`. The authors' limit code
//! (`CorrelationGenerator`) uses `c = αη` (their `A_00 = −a²(η_uσ_v² + η_vσ_u²)` and
//! `c = a³η_uη_v`), which does not correspond to their finite code when `α ≠ 1`; all their
//! runs have `α = 1`, where the two agree. To reproduce their solver at `α = a ≠ 1`, pass
//! `eta_u = a² η_u`, `eta_v = a² η_v`.

pub mod coords;
pub mod grid;
pub mod linear;
pub mod multi;
pub mod nonlinear;
pub mod ode;
pub mod params;

pub use coords::{
    CoordinateBasis, CoordinateMoments, CoordinateTrajectories, coordinate_trajectories,
};
pub use grid::{DepthGrid, DepthSeries};
pub use linear::{LinearLimit, solve_linear_limit};
pub use multi::{LinearLimitMulti, solve_linear_limit_multi};
pub use nonlinear::{MonteCarlo, NonlinearLimit, solve_nonlinear_limit};
pub use ode::{DenseSolution, Dopri5, SolverReport};
pub use params::LinearLimitParams;

/// Errors of the limit solvers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LimitError {
    /// A parameter or input is out of its domain.
    #[error("invalid {field} = {value}: {reason}")]
    InvalidParameter {
        field: &'static str,
        value: String,
        reason: &'static str,
    },
    /// A buffer or array has the wrong size.
    #[error("{what}: expected length {expected}, got {got}")]
    Dimension {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    /// The step size controller asked for a step below the floating-point resolution.
    #[error("ODE step size {h:e} at s = {t} is below the minimum {min:e}")]
    StepTooSmall { t: f64, h: f64, min: f64 },
    /// The solve needed more step attempts than allowed.
    #[error("ODE solve exceeded {max_steps} step attempts (reached s = {t})")]
    TooManySteps { t: f64, max_steps: usize },
    /// A NaN or infinity appeared.
    #[error("non-finite {what} at s = {t}")]
    NonFinite { t: f64, what: String },
    /// One of the ODE solves of the step-by-step construction failed.
    #[error("step k = {step}, {stage}: {source}")]
    Solve {
        step: usize,
        stage: &'static str,
        #[source]
        source: Box<LimitError>,
    },
}

impl LimitError {
    pub(crate) fn invalid(
        field: &'static str,
        value: impl std::fmt::Display,
        reason: &'static str,
    ) -> Self {
        LimitError::InvalidParameter {
            field,
            value: value.to_string(),
            reason,
        }
    }
}

#[cfg(test)]
mod tests;
