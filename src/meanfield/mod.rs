//! Scaled deep ResNets in the mean-field regime and their generalization
//! (docs/papers.md, PAPER 1: Chen, Liu, Lu, Chrysos, Cevher, ICLR 2024).
//!
//! # The model (docs/papers.md 1.2)
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
//! # What is measured (docs/papers.md 1.3)
//!
//! - [`gram`]: the Gram matrices G1 (stack) and G2 (head) without Jacobians, with
//!   `dL/dt = -(1/n^2) r^T (G1 + G2) r` for the particle flow, and their extreme
//!   eigenvalues;
//! - [`kernel0`]: K0 (`G2 = beta^2 K0` at initialization in the limit) and
//!   `Lambda = lambda_min(K0)`;
//! - [`kl`]: `KL(tau_t || tau_0)` and `KL(nu_t || nu_0)` by the change-of-variables
//!   estimator along the flow, and a nearest-neighbour cross-check;
//! - [`experiment`]: the Two Spirals experiment of docs/papers.md 1.4 (spec, runs, resumption)
//!   and [`report`]: its Markdown report and figures.
//!
//! Where docs/papers.md marks a choice as unverified or a recommendation (the initialization,
//! beta's dependence on n, the data generator and its lifting, the widths, the stopping
//! rule, the surrogate loss of the bound), it is a spec field, and its default is
//! documented as reslim's choice.
//!
//! # reslim's choices (not the paper's)
//!
//! - initialization: antithetic particle pairs ([`Init::Symmetric`]), so that the network
//!   starts exactly at the limit's state (identity stack, zero output); `iid` on request;
//! - beta = sqrt(n) / 4, a [`crate::param::Scale`] in n: the reviewers' sqrt(n) growth
//!   with a smaller constant. Training is lazier the larger beta is: the loss first sits
//!   on the plateau of the fixed initial kernel K0 (which cannot fit the spirals: K0 is
//!   smooth, `lambda_min(K0)` is below 1e-10 at n = 3200) until the particles have moved,
//!   and the plateau lasts longer at larger beta. On the two spirals (2.17 turns), the
//!   steps to a loss of 1e-2 at `lr = 5` grow from about 900 at beta = 3.5 to 2000 at
//!   beta = 14 and more than 3000 at beta = 28, whatever n, so beta = sqrt(n) (beta = 57
//!   at n = 3200) does not fit the largest sets within the time budget;
//!   `beta = { c = 1.0, n = 0.5 }` restores sqrt(n);
//! - step size `eta = lr / beta^2` with `lr = 5`, cut by 0.7 after a step that raised
//!   the loss by more than 50%: GD in function space moves at a beta-independent speed.
//!   At initialization `lambda_max(G) = 0.34 n beta^2`, so GD is stable for `lr < 5.9`;
//!   during training `lambda_max(G)` grows (to `1.3 n beta^2` at n = 800 when eta is cut
//!   after every rise of the loss, `backoff_rise = 0`, which keeps GD stable and takes
//!   3322 steps to a loss of 5e-3). A constant `lr = 5` runs GD at the edge of
//!   stability, where GD holds `lambda_max(G)` near `2 n / eta` itself (0.4 n beta^2 at
//!   n = 800) and takes 1453 steps, but its loss spikes (catapults) diverge now and then
//!   at small n (n = 50, beta = 1.8). Cutting eta after rises above 50% stops those and
//!   keeps most of the speed (1530 to 2222 steps at n = 800 over 5 seeds);
//!   `backoff = 1` gives the constant step;
//! - stopping rule: a training loss of 5e-3 (the last 1e-2 -> 1e-3 is slow: a few points
//!   near the spirals' centre, where the classes lie within the noise of each other,
//!   take thousands of steps) or a step budget `800 n^0.25` (a power law in n, since the
//!   steps needed grow with beta);
//! - widths L = 10, M = 200, M0 = 1000: the particle dynamics are close to the limit's
//!   already (at n = 800, constant `lr = 5`: 1453 steps to a loss of 5e-3 against 1336
//!   with L = 20, M = 500) at a quarter of the cost per step (0.04-0.06 s against 0.2 s
//!   at n = 3200 on one core);
//! - spirals: the generator's 780 degrees (2.17 turns), scaled by `1/(2 pi turns)`,
//!   lifted by a constant coordinate 0.5 and normalised;
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
