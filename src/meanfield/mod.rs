//! Scaled deep ResNets in the mean-field regime and their generalization
//! (PAPERS.md, PAPER 1: Chen, Liu, Lu, Chrysos, Cevher, ICLR 2024).
//!
//! # The model (PAPERS.md 1.2)
//!
//! Inputs `x` on the unit sphere of R^d, a residual stack in R^d and a two-layer head:
//!
//! ```text
//! z_0 = x,   z_{l+1} = z_l + (alpha/(L M)) sum_{m<=M} u_{l,m} sigma(w_{l,m}^T z_l),  l < L
//! f(x) = (beta/M0) sum_{j<=M0} a_j sigma(b_j^T z_L)
//! ```
//!
//! with particles `theta_{l,m} = (u, w) ~ N(0, I_2d)` and `omega_j = (a, b) ~ N(0, I_{1+d})`
//! ([`Init`]), the squared loss `L = (1/2n) sum_i (f(x_i) - y_i)^2` on labels ±1 and full-batch
//! GD with the particle learning rates `L M` (stack) and `M0` (head) times the step size
//! eta: `theta <- theta - eta L M dL/dtheta`, `omega <- omega - eta M0 dL/domega`.
//!
//! The block is the engine's block (`crate::train`): `h_{l+1} = h_l + m_V V sigma(m_U U^T h_l)`
//! with `m_U = 1`, `m_V = alpha/(L M)`, `U^T = W_l` (rows w_m) and `V = U_l^T` (columns u_m).
//! The engine's streaming kernels are tuned for large D and N <= 12; this problem is the
//! opposite (d = 3, n up to thousands), so [`net`] runs batch-major faer GEMMs instead.
//!
//! # What is measured (PAPERS.md 1.3)
//!
//! - [`gram`]: the Gram matrices G1 (stack) and G2 (head) without Jacobians, with
//!   `dL/dt = -(1/n^2) r^T (G1 + G2) r` for the particle flow, and their extreme
//!   eigenvalues;
//! - [`kernel0`]: K0 (`G2 = beta^2 K0` at initialization in the limit) and
//!   `Lambda = lambda_min(K0)`;
//! - [`kl`]: `KL(tau_t || tau_0)` and `KL(nu_t || nu_0)` by the change-of-variables
//!   estimator along the flow, and a nearest-neighbour cross-check;
//! - [`experiment`]: the Two Spirals experiment of PAPERS.md 1.4 (spec, runs, resumption)
//!   and [`report`]: its Markdown report and figures.
//!
//! Where PAPERS.md marks a choice as unverified or a recommendation (the initialization,
//! beta's dependence on n, the data generator and its lifting, the widths, the stopping
//! rule, the surrogate loss of the bound), it is a spec field, and its default is
//! documented as reslim's choice.
//!
//! # reslim's choices (not the paper's)
//!
//! - initialization: antithetic particle pairs ([`Init::Symmetric`]), so that the network
//!   starts exactly at the limit's state (identity stack, zero output); `iid` on request;
//! - step size `eta = lr / beta^2`: GD in function space moves at a beta-independent
//!   speed and is stable for `lr` below about 1.8 (the top eigenvalue of G is about
//!   `0.55 n beta^2` for tanh);
//! - beta = sqrt(n) (the reviewers' scaling), a [`crate::param::Scale`] in n;
//! - spirals scaled by `1/(2 pi turns)`, lifted by a constant coordinate and normalised;
//! - Lambda from the dual-activation closed form evaluated by quadrature; an eigenvalue
//!   counts as resolved only above `n eps lambda_max`;
//! - the bound's surrogate loss is the clipped squared loss and its unknown constants are 1.

pub mod data;
pub mod elementwise;
pub mod experiment;
pub mod gram;
pub mod kernel0;
pub mod kl;
pub mod net;
pub mod report;
pub mod spec;

pub use data::{Dataset, Spirals};
pub use experiment::{RunResult, run_experiment, run_one};
pub use gram::{Grams, Spectrum, extreme_eigenvalues, grams};
pub use kernel0::InitKernel;
pub use kl::{FlowKl, KlEstimate};
pub use net::{Arch, Derivatives, Init, Net, Workspace};
pub use spec::{ExperimentConfig, ExperimentSpec};

#[cfg(test)]
mod tests;
