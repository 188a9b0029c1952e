//! KL divergence of the trained particle distributions from their initialization
//! (docs/papers.md 1.3, "KL divergence").
//!
//! The KL divergence between two empirical clouds is infinite, so reslim uses the exact
//! change-of-variables formula for a deterministic flow. A particle starting at
//! `theta_0 ~ rho_0 = N(0, I)` is at `theta_t = Phi_t(theta_0)`, and
//! `rho_t(Phi_t(theta)) = rho_0(theta) / |det grad Phi_t(theta)|`, so
//!
//! ```text
//! KL(rho_t || rho_0) = E_{rho_0}[ l_t + (|theta_t|^2 - |theta_0|^2) / 2 ],
//! l_t = -log|det grad Phi_t(theta_0)|.
//! ```
//!
//! For the gradient flow `d theta/dt = -grad Psi(theta)`, `d/dt log det grad Phi = -Lap Psi`;
//! for a GD step `theta <- theta - eta grad Psi(theta)` the step's Jacobian is
//! `I - eta Hess Psi`, so each particle accumulates `l += -log|det(I - eta Hess Psi)|`
//! with the exact Hessian of its potential (the distribution held fixed). A linear
//! flow `theta -> A theta` gives `KL = (tr(A A^T) - dim - log det(A A^T)) / 2` (tested).
//!
//! The stack's divergence `KL(tau || tau_0) = int_0^1 KL(tau_s || tau_0) ds` is the
//! average over layers; with M particles per layer it is the mean over all L M particles.
//!
//! [`knn_kl_to_standard_normal`] is an independent, sample-based estimator (the
//! Kozachenko–Leonenko nearest-neighbour entropy estimator), used to cross-check the
//! flow estimator in low dimension.

use super::net::{Net, StepDeterminants};
use serde::{Deserialize, Serialize};

/// Per-particle log-determinants of the flow map (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct FlowKl {
    /// `l = -log|det grad Phi|` of every stack particle (index `l * M + m`).
    pub stack: Vec<f64>,
    /// The same for every head particle.
    pub head: Vec<f64>,
    stack_norm0: Vec<f64>,
    head_norm0: Vec<f64>,
    /// Particle steps whose `det(I - eta H)` was not positive (the step map folded:
    /// the step size is too large for the estimator to be exact).
    pub folds: u64,
}

/// The estimated divergences.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct KlEstimate {
    /// `KL(tau_t || tau_0)`, averaged over depth.
    pub stack: f64,
    /// `KL(nu_t || nu_0)`.
    pub head: f64,
}

impl KlEstimate {
    /// The radius `r = KL(tau) + KL(nu)` of docs/papers.md 1.3 ("Rademacher").
    pub fn total(&self) -> f64 {
        self.stack + self.head
    }
}

impl FlowKl {
    /// Starts the estimator at the current particles (which must have law N(0, I)).
    pub fn new(net: &Net) -> Self {
        let stack_norm0 = net.stack_norms();
        let head_norm0 = net.head_norms();
        FlowKl {
            stack: vec![0.0; stack_norm0.len()],
            head: vec![0.0; head_norm0.len()],
            stack_norm0,
            head_norm0,
            folds: 0,
        }
    }

    /// The divergences at the current particles of `net`.
    pub fn estimate(&self, net: &Net) -> KlEstimate {
        KlEstimate {
            stack: change_of_variables_kl(&self.stack, &self.stack_norm0, &net.stack_norms()),
            head: change_of_variables_kl(&self.head, &self.head_norm0, &net.head_norms()),
        }
    }
}

/// `mean_k [ l_k + (|theta_t,k|^2 - |theta_0,k|^2) / 2 ]` for `rho_0 = N(0, I)`.
pub fn change_of_variables_kl(logdet: &[f64], norm0: &[f64], norm_t: &[f64]) -> f64 {
    let n = logdet.len().max(1) as f64;
    logdet
        .iter()
        .zip(norm0)
        .zip(norm_t)
        .map(|((l, a), b)| l + 0.5 * (b - a))
        .sum::<f64>()
        / n
}

/// `log|det(I - eta H)|` and whether the determinant is positive, for a `dim x dim`
/// row-major `H` (the general form of the step Jacobian; [`Net::apply`] uses the block
/// structure of the model's Hessians instead).
pub fn log_abs_det_step(eta: f64, h: &[f64], dim: usize) -> (f64, bool) {
    let mut a: Vec<f64> = (0..dim * dim)
        .map(|k| f64::from(k / dim == k % dim) - eta * h[k])
        .collect();
    let det = super::net::det_small(&mut a, dim);
    (det.abs().ln(), det > 0.0)
}

/// Sample-based estimate of `KL(p || N(0, I))` from `points` (`N x dim`, row-major)
/// drawn from p: `-H(p) - E_p[log N(0, I)]`, with the entropy `H` by the
/// Kozachenko–Leonenko estimator
/// `H ≈ psi(N) - psi(k) + log V_dim + (dim/N) sum_i log eps_i`, `eps_i` the distance from
/// point i to its k-th nearest neighbour and `V_dim` the volume of the unit ball
/// (Kozachenko & Leonenko 1987; Kraskov, Stögbauer & Grassberger 2004, eq. 20).
pub fn knn_kl_to_standard_normal(points: &[f64], dim: usize, k: usize) -> f64 {
    use statrs::function::gamma::{digamma, ln_gamma};
    let n = points.len() / dim;
    assert!(k >= 1 && n > k, "need more than k = {k} points, got {n}");
    let pt = |i: usize| &points[i * dim..(i + 1) * dim];
    // Sort by the first coordinate; scan outwards until the coordinate gap exceeds the
    // current k-th distance.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| pt(i)[0].total_cmp(&pt(j)[0]));
    let mut sum_log_eps = 0.0;
    let mut best: Vec<f64> = Vec::with_capacity(k + 1);
    for pos in 0..n {
        let p = pt(order[pos]);
        best.clear();
        let kth = |best: &Vec<f64>| {
            if best.len() < k {
                f64::INFINITY
            } else {
                best[k - 1]
            }
        };
        let consider = |q: &[f64], best: &mut Vec<f64>| {
            let d2: f64 = p.iter().zip(q).map(|(a, b)| (a - b) * (a - b)).sum();
            if d2 < kth(best) {
                let at = best.partition_point(|&x| x <= d2);
                best.insert(at, d2);
                best.truncate(k);
            }
        };
        let (mut lo, mut hi) = (pos, pos + 1);
        loop {
            let gap_lo = if lo > 0 {
                p[0] - pt(order[lo - 1])[0]
            } else {
                f64::INFINITY
            };
            let gap_hi = if hi < n {
                pt(order[hi])[0] - p[0]
            } else {
                f64::INFINITY
            };
            let gap = gap_lo.min(gap_hi);
            if gap == f64::INFINITY || gap * gap >= kth(&best) {
                break;
            }
            if gap_lo <= gap_hi {
                lo -= 1;
                consider(pt(order[lo]), &mut best);
            } else {
                consider(pt(order[hi]), &mut best);
                hi += 1;
            }
        }
        sum_log_eps += 0.5 * best[k - 1].ln();
    }
    let dimf = dim as f64;
    let log_vd = 0.5 * dimf * std::f64::consts::PI.ln() - ln_gamma(0.5 * dimf + 1.0);
    let entropy = digamma(n as f64) - digamma(k as f64) + log_vd + dimf * sum_log_eps / n as f64;
    let mean_sq = points.iter().map(|x| x * x).sum::<f64>() / n as f64;
    -entropy + 0.5 * dimf * (2.0 * std::f64::consts::PI).ln() + 0.5 * mean_sq
}

impl StepDeterminants for FlowKl {
    #[inline]
    fn push_stack(&mut self, idx: usize, det: f64) {
        self.folds += u64::from(det <= 0.0);
        self.stack[idx] -= det.abs().ln();
    }
    #[inline]
    fn push_head(&mut self, j: usize, det: f64) {
        self.folds += u64::from(det <= 0.0);
        self.head[j] -= det.abs().ln();
    }
}
