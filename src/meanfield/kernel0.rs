//! The initial kernel K0 and the eigenvalue bound Lambda = lambda_min(K0)
//! (docs/papers.md 1.3, "Eigenvalue at initialization").
//!
//! At initialization the stack is the identity (`Z = x`) and `G2 = beta^2 K0` with
//!
//! ```text
//! K0[i,j] = E_b[sigma(b^T x_i) sigma(b^T x_j)] + (x_i^T x_j) E_b[sigma'(b^T x_i) sigma'(b^T x_j)],
//! b ~ N(0, I_d).
//! ```
//!
//! For unit inputs `(b^T x_i, b^T x_j)` is a standard bivariate normal pair `(X, Y)` with
//! correlation `rho = x_i^T x_j`, so `K0[i,j] = k(rho)`,
//! `k(rho) = E[sigma(X) sigma(Y)] + rho E[sigma'(X) sigma'(Y)]`: the dual-activation form.
//! [`InitKernel`] evaluates it by Gauss–Hermite quadrature (`Y = rho X + sqrt(1-rho^2) X'`,
//! 96 x 96 nodes) on a grid of 4097 correlations and interpolates by cubic Hermite
//! polynomials in the angle `theta = acos(rho)` (so that the grid is fine near
//! `rho = ±1`, where nearby inputs decide the small eigenvalues), with the derivative
//! from Price's theorem,
//! `k'(rho) = 2 E[sigma'(X) sigma'(Y)] + rho E[sigma''(X) sigma''(Y)]`. For smooth sigma
//! (tanh) the table is accurate to about 1e-14 (tested against direct quadrature and
//! Monte Carlo); for relu the quadrature converges slowly and the table is rougher.

use super::elementwise;
use crate::model::Activation;
use faer::Mat;

/// Gauss–Hermite nodes per dimension.
const GH_NODES: usize = 96;
/// Intervals of the angle grid on [0, pi].
const GRID: usize = 4096;

/// The tabulated initial kernel `k(rho)` of one activation.
#[derive(Debug, Clone, PartialEq)]
pub struct InitKernel {
    pub activation: Activation,
    value: Vec<f64>,
    slope: Vec<f64>,
}

/// Nodes and weights of the `n`-point Gauss–Hermite rule for the standard normal
/// (Golub–Welsch: eigen-decomposition of the Jacobi matrix of the probabilists' Hermite
/// polynomials, off-diagonal `sqrt(k)`); the weights sum to 1.
pub fn gauss_hermite(n: usize) -> (Vec<f64>, Vec<f64>) {
    let j = Mat::<f64>::from_fn(n, n, |p, q| {
        if p + 1 == q || q + 1 == p {
            (p.max(q) as f64).sqrt()
        } else {
            0.0
        }
    });
    let (nodes, vecs) = super::gram::sym_eigen(j.as_ref(), true);
    let vecs = vecs.expect("eigenvectors requested");
    let weights = (0..n).map(|k| vecs[(0, k)] * vecs[(0, k)]).collect();
    (nodes, weights)
}

impl InitKernel {
    /// Tabulates `k(rho)` for `act`: 4097 quadratures of 96 x 96 nodes, on scoped
    /// threads (one per core; each grid point is computed alone, so the table does not
    /// depend on their number). Not on the rayon pool: the table is built inside a
    /// `OnceLock` from rayon jobs, and a job stolen while waiting could ask for the same
    /// table again. On the 2-core Intel Xeon: tanh 0.1 s; softplus 0.3 s, which had
    /// taken 24 s (a fuzz case of `reslim spirals` timed out on it; see [`values`]).
    pub fn new(act: Activation) -> Self {
        let (x, w) = gauss_hermite(GH_NODES);
        let q = Quadrature::new(act, &x, &w);
        let mut table = vec![(0.0, 0.0); GRID + 1];
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let per = (GRID + 1).div_ceil(threads.max(1));
        std::thread::scope(|sc| {
            for (i, part) in table.chunks_mut(per).enumerate() {
                let q = &q;
                sc.spawn(move || {
                    for (j, slot) in part.iter_mut().enumerate() {
                        let k = i * per + j;
                        let theta = std::f64::consts::PI * k as f64 / GRID as f64;
                        let (v, s) = q.eval(theta.cos());
                        // dk/dtheta = -sin(theta) k'(rho).
                        *slot = (v, -theta.sin() * s);
                    }
                });
            }
        });
        let (value, slope) = table.into_iter().unzip();
        InitKernel {
            activation: act,
            value,
            slope,
        }
    }

    /// The table of `act`, computed once per process.
    pub fn shared(act: Activation) -> &'static InitKernel {
        use std::sync::OnceLock;
        static TABLES: [OnceLock<InitKernel>; 5] = [const { OnceLock::new() }; 5];
        let slot = match act {
            Activation::Tanh => 0,
            Activation::Relu => 1,
            Activation::Gelu => 2,
            Activation::Softplus => 3,
            Activation::Linear => 4,
        };
        TABLES[slot].get_or_init(|| InitKernel::new(act))
    }

    /// `k(rho)` by quadrature (no table): value and derivative.
    pub fn direct(act: Activation, rho: f64) -> (f64, f64) {
        let (x, w) = gauss_hermite(GH_NODES);
        Quadrature::new(act, &x, &w).eval(rho)
    }

    /// `k(rho)` from the table (cubic Hermite interpolation in `acos(rho)`); `rho` is
    /// clamped to [-1, 1].
    pub fn eval(&self, rho: f64) -> f64 {
        let h = std::f64::consts::PI / GRID as f64;
        let pos = (rho.clamp(-1.0, 1.0).acos() / h).min(GRID as f64);
        let k = (pos.floor() as usize).min(GRID - 1);
        let t = pos - k as f64;
        let (y0, y1) = (self.value[k], self.value[k + 1]);
        let (m0, m1) = (self.slope[k] * h, self.slope[k + 1] * h);
        let (t2, t3) = (t * t, t * t * t);
        (2.0 * t3 - 3.0 * t2 + 1.0) * y0
            + (t3 - 2.0 * t2 + t) * m0
            + (-2.0 * t3 + 3.0 * t2) * y1
            + (t3 - t2) * m1
    }

    /// The `n x n` (column-major) matrix `K0[i,j] = k(x_i^T x_j)` of unit inputs `x`
    /// (`d x n`).
    pub fn matrix(&self, x: &[f64], d: usize) -> Vec<f64> {
        let n = x.len() / d;
        let mut k0 = vec![0.0; n * n];
        for j in 0..n {
            let xj = &x[j * d..(j + 1) * d];
            for i in j..n {
                let xi = &x[i * d..(i + 1) * d];
                let rho: f64 = xi.iter().zip(xj).map(|(a, b)| a * b).sum();
                let v = self.eval(rho);
                k0[j * n + i] = v;
                k0[i * n + j] = v;
            }
        }
        k0
    }
}

/// The 2-D Gauss–Hermite quadrature of the dual kernel for one activation.
struct Quadrature {
    act: Activation,
    x: Vec<f64>,
    w: Vec<f64>,
    /// sigma, sigma', sigma'' at the nodes.
    f0: Vec<f64>,
    f1: Vec<f64>,
    f2: Vec<f64>,
}

impl Quadrature {
    fn new(act: Activation, x: &[f64], w: &[f64]) -> Self {
        let n = x.len();
        let (mut f0, mut f1, mut f2) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
        values(act, x, &mut f0, &mut f1, &mut f2);
        Quadrature {
            act,
            x: x.to_vec(),
            w: w.to_vec(),
            f0,
            f1,
            f2,
        }
    }

    /// `(k(rho), k'(rho))`.
    fn eval(&self, rho: f64) -> (f64, f64) {
        let n = self.x.len();
        let s = (1.0 - rho * rho).max(0.0).sqrt();
        let mut y = vec![0.0; n];
        let (mut g0, mut g1, mut g2) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
        let (mut e00, mut e11, mut e22) = (0.0, 0.0, 0.0);
        for a in 0..n {
            for (b, yb) in y.iter_mut().enumerate() {
                *yb = rho * self.x[a] + s * self.x[b];
            }
            values(self.act, &y, &mut g0, &mut g1, &mut g2);
            let (mut i0, mut i1, mut i2) = (0.0, 0.0, 0.0);
            for b in 0..n {
                i0 += self.w[b] * g0[b];
                i1 += self.w[b] * g1[b];
                i2 += self.w[b] * g2[b];
            }
            e00 += self.w[a] * self.f0[a] * i0;
            e11 += self.w[a] * self.f1[a] * i1;
            e22 += self.w[a] * self.f2[a] * i2;
        }
        (e00 + rho * e11, 2.0 * e11 + rho * e22)
    }
}

/// sigma, sigma', sigma'' at `y`: the slices of [`elementwise`] for tanh (vectorized),
/// [`Activation::f_d1_d2`] otherwise (for softplus and gelu one exponential per point
/// shared by the three, the same bits as [`Activation::f`], [`Activation::d1`],
/// [`Activation::d2`]). Starts by [`crate::cpu::clean_upper`] (softplus table: 6.0 ->
/// 0.3 s on the Intel Xeon).
fn values(act: Activation, y: &[f64], f0: &mut [f64], f1: &mut [f64], f2: &mut [f64]) {
    // The scalar loops below run legacy-SSE arithmetic between libm calls.
    crate::cpu::clean_upper();
    if act == Activation::Tanh {
        elementwise::forward(act, y, f0);
        f1.copy_from_slice(y);
        elementwise::derivatives(act, f1, f0, f2);
        return;
    }
    for i in 0..y.len() {
        (f0[i], f1[i], f2[i]) = act.f_d1_d2(y[i]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fused_values_equal_the_activation_functions_bit_for_bit() {
        let mut y: Vec<f64> = (0..4001).map(|i| (i as f64 - 2000.0) * 0.0137).collect();
        y.extend([0.0, -0.0, 40.0, -40.0, 700.0, -745.0, f64::NAN]);
        let n = y.len();
        for act in [
            Activation::Softplus,
            Activation::Gelu,
            Activation::Tanh,
            Activation::Relu,
        ] {
            let (mut f0, mut f1, mut f2) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
            values(act, &y, &mut f0, &mut f1, &mut f2);
            for i in 0..n {
                let v = y[i];
                let same =
                    |a: f64, b: f64| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
                if act == Activation::Tanh {
                    // The vectorized tanh is within 2 ulp of libm (elementwise's tests).
                    assert!(
                        (f0[i] - act.f(v)).abs() <= 1e-15 || v.is_nan(),
                        "{act:?} {v}"
                    );
                    continue;
                }
                assert!(
                    same(f0[i], act.f(v)),
                    "{act:?} f({v}): {} {}",
                    f0[i],
                    act.f(v)
                );
                assert!(same(f1[i], act.d1(v)), "{act:?} d1({v})");
                assert!(same(f2[i], act.d2(v)), "{act:?} d2({v})");
                let (d1, d2) = act.d1_d2(v);
                assert!(
                    same(d1, act.d1(v)) && same(d2, act.d2(v)),
                    "{act:?} d1_d2({v})"
                );
            }
        }
    }
}
