//! The Gram matrices G1 (stack) and G2 (head) of docs/papers.md 1.3, and their extreme
//! eigenvalues.
//!
//! As particle averages (the integrals of docs/papers.md 1.3 with tau, nu replaced by the
//! particle clouds):
//!
//! ```text
//! G2[i,j] = (beta^2/M0) sum_j' grad_w h(z_i, w_j') . grad_w h(z_j, w_j'),
//!           grad_w h(z, (a, b)) = (sigma(b^T z), a sigma'(b^T z) z),   z = z_L
//! G1[i,j] = (1/(L M)) sum_{l,m} grad_theta g_i(theta_lm) . grad_theta g_j(theta_lm),
//!           grad_u g_i = alpha sigma(w^T z_{l,i}) p_{l+1,i},
//!           grad_w g_i = alpha (p_{l+1,i}^T u) sigma'(w^T z_{l,i}) z_{l,i}
//! ```
//!
//! With these normalisations the particle flow with rates L M and M0 gives exactly
//! `dL/dt = -(1/n^2) r^T (G1 + G2) r` (tested against a small GD step).
//!
//! No Jacobian is formed. Per layer, with `S[m,i] = sigma(w_m^T z_{l,i})` and
//! `A[m,i] = (p_{l+1,i}^T u_m) sigma'(w_m^T z_{l,i})` (`M x n`),
//! `G1 += (alpha^2/(LM)) [ (S^T S) o (P^T P) + (A^T A) o (Z^T Z) ]` (o: Hadamard product,
//! P, Z the `d x n` adjoints and states), computed in `256 x 256` tiles of the lower
//! triangle, each a faer GEMM with inner dimension M: `2 L M n^2` flops in all.

use super::elementwise;
use super::net::{Arch, Net, gemm, mm, mr};
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef, Par};
use serde::{Deserialize, Serialize};

/// Tile side of the Gram products.
const BLOCK: usize = 256;

/// The two Gram matrices, `n x n`, column-major (symmetric).
#[derive(Debug, Clone, PartialEq)]
pub struct Grams {
    pub n: usize,
    pub g1: Vec<f64>,
    pub g2: Vec<f64>,
}

impl Grams {
    /// `G1 + G2`.
    pub fn total(&self) -> Vec<f64> {
        self.g1.iter().zip(&self.g2).map(|(a, b)| a + b).collect()
    }
}

/// G1 and G2 of `net` on inputs `x` (`d x n`); see the module docs.
pub fn grams(net: &Net, x: &[f64]) -> Grams {
    let Arch {
        d,
        l: depth,
        m,
        m0,
        alpha,
        beta,
        activation: act,
    } = net.arch;
    let n = x.len() / d;
    let tr = net.trace(x);
    let mut g1 = vec![0.0; n * n];
    let mut g2 = vec![0.0; n * n];
    let k = m.max(m0);
    let mut pm = vec![0.0; k * n];
    let mut sm = vec![0.0; k * n];
    let mut am = vec![0.0; k * n];
    let mut bm = vec![0.0; k * n];
    let c1 = alpha * alpha / (depth * m) as f64;
    for l in 0..depth {
        gemm(
            mm(&mut pm, m, n),
            Accum::Replace,
            mr(&net.w[l], m, d),
            mr(&tr.z[l], d, n),
            1.0,
        );
        elementwise::forward(act, &pm[..m * n], &mut sm[..m * n]);
        gemm(
            mm(&mut am, m, n),
            Accum::Replace,
            mr(&net.u[l], m, d),
            mr(&tr.p[l + 1], d, n),
            1.0,
        );
        elementwise::backward(
            act,
            &mut pm[..m * n],
            &sm[..m * n],
            &mut am[..m * n],
            &mut bm[..m * n],
        );
        hadamard_gram(&mut g1, n, &sm[..m * n], m, Some((&tr.p[l + 1], d)), c1);
        hadamard_gram(&mut g1, n, &am[..m * n], m, Some((&tr.z[l], d)), c1);
    }
    gemm(
        mm(&mut pm, m0, n),
        Accum::Replace,
        mr(&net.b, m0, d),
        mr(&tr.z[depth], d, n),
        1.0,
    );
    elementwise::forward(act, &pm[..m0 * n], &mut sm[..m0 * n]);
    elementwise::derivatives(act, &mut pm[..m0 * n], &sm[..m0 * n], &mut bm[..m0 * n]);
    for i in 0..n {
        for j in 0..m0 {
            pm[i * m0 + j] *= net.a[j];
        }
    }
    let c2 = beta * beta / m0 as f64;
    hadamard_gram(&mut g2, n, &sm[..m0 * n], m0, None, c2);
    hadamard_gram(&mut g2, n, &pm[..m0 * n], m0, Some((&tr.z[depth], d)), c2);
    symmetrize(&mut g1, n);
    symmetrize(&mut g2, n);
    Grams { n, g1, g2 }
}

/// `g += c (F^T F) o (V^T V)` on the lower triangle, `F` `k x n`, `V` `d x n` (or no
/// Hadamard factor).
fn hadamard_gram(g: &mut [f64], n: usize, f: &[f64], k: usize, v: Option<(&[f64], usize)>, c: f64) {
    let fr = mr(f, k, n);
    let mut tmp = vec![0.0; BLOCK * BLOCK];
    for j0 in (0..n).step_by(BLOCK) {
        let nj = BLOCK.min(n - j0);
        for i0 in (j0..n).step_by(BLOCK) {
            let ni = BLOCK.min(n - i0);
            let t = mm(&mut tmp, ni, nj);
            matmul(
                t,
                Accum::Replace,
                fr.subcols(i0, ni).transpose(),
                fr.subcols(j0, nj),
                c,
                Par::Seq,
            );
            for jj in 0..nj {
                let j = j0 + jj;
                let col = &mut g[j * n..(j + 1) * n];
                let tcol = &tmp[jj * ni..(jj + 1) * ni];
                match v {
                    None => {
                        for ii in 0..ni {
                            col[i0 + ii] += tcol[ii];
                        }
                    }
                    Some((v, d)) => {
                        let vj = &v[j * d..(j + 1) * d];
                        for ii in 0..ni {
                            let vi = &v[(i0 + ii) * d..(i0 + ii + 1) * d];
                            let dot: f64 = vi.iter().zip(vj).map(|(a, b)| a * b).sum();
                            col[i0 + ii] += tcol[ii] * dot;
                        }
                    }
                }
            }
        }
    }
}

/// Copies the lower triangle onto the upper one.
fn symmetrize(g: &mut [f64], n: usize) {
    for j in 0..n {
        for i in j + 1..n {
            g[i * n + j] = g[j * n + i];
        }
    }
}

/// Extreme eigenvalues of a symmetric positive semi-definite matrix.
///
/// `floor = n eps lambda_max` is the resolution of the computation (a backward-stable
/// eigensolver, or a Cholesky factorization, perturbs the matrix by about that much):
/// `resolved` is false when `min` lies below it, and `min` is then only a bound.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Spectrum {
    #[serde(with = "crate::io::nullable")]
    pub min: f64,
    #[serde(with = "crate::io::nullable")]
    pub max: f64,
    pub floor: f64,
    pub resolved: bool,
    pub method: EigMethod,
    /// Lanczos iterations (largest + smallest); 0 for dense.
    pub iterations: usize,
}

/// How a [`Spectrum`] was computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EigMethod {
    /// Full eigendecomposition (faer's self-adjoint EVD).
    Dense,
    /// Lanczos on G for the largest eigenvalue, shift-and-invert Lanczos with a Cholesky
    /// factor of `G + floor I` for the smallest.
    Lanczos,
}

/// Largest size solved by a dense eigendecomposition; above it, Lanczos.
const DENSE_MAX: usize = 600;

/// Extreme eigenvalues of the symmetric `n x n` column-major `g` (see [`Spectrum`]).
/// Dense for `n <= 600`; above, Lanczos iterations and one Cholesky factorization,
/// `O(n^3 / 3)` instead of the `O(4 n^3 / 3)` of a tridiagonalization (seconds at n = 3200).
pub fn extreme_eigenvalues(g: &[f64], n: usize) -> Spectrum {
    extreme_eigenvalues_with(g, n, DENSE_MAX)
}

fn extreme_eigenvalues_with(g: &[f64], n: usize, dense_max: usize) -> Spectrum {
    let eps = f64::EPSILON;
    if n == 0 {
        return Spectrum {
            min: f64::NAN,
            max: f64::NAN,
            floor: 0.0,
            resolved: false,
            method: EigMethod::Dense,
            iterations: 0,
        };
    }
    if n <= dense_max {
        let ev = sym_eigenvalues(mr(g, n, n));
        let (min, max) = (ev[0], ev[n - 1]);
        let floor = n as f64 * eps * max.abs();
        return Spectrum {
            min,
            max,
            floor,
            resolved: min > floor,
            method: EigMethod::Dense,
            iterations: 0,
        };
    }
    let gm = mr(g, n, n);
    let mut y = Mat::<f64>::zeros(n, 1);
    let (max, it1) = lanczos_max(n, f64::INFINITY, |v, out| {
        matmul(y.as_mut(), Accum::Replace, gm, mr(v, n, 1), 1.0, Par::Seq);
        out.copy_from_slice(y.col_as_slice(0));
    });
    let floor = n as f64 * eps * max.abs();
    let mut shift = floor.max(f64::MIN_POSITIVE);
    for _ in 0..8 {
        let mut l = Mat::<f64>::from_fn(n, n, |i, j| if i >= j { g[j * n + i] } else { 0.0 });
        for i in 0..n {
            l[(i, i)] += shift;
        }
        if cholesky(l.as_mut()).is_err() {
            shift *= 10.0;
            continue;
        }
        let mut rhs = Mat::<f64>::zeros(n, 1);
        // lambda_min(G) <= floor once 1/theta - shift <= floor.
        let (theta, it2) = lanczos_max(n, 1.0 / (shift + floor), |v, out| {
            rhs.col_as_slice_mut(0).copy_from_slice(v);
            faer::linalg::triangular_solve::solve_lower_triangular_in_place(
                l.as_ref(),
                rhs.as_mut(),
                Par::Seq,
            );
            faer::linalg::triangular_solve::solve_upper_triangular_in_place(
                l.transpose(),
                rhs.as_mut(),
                Par::Seq,
            );
            out.copy_from_slice(rhs.col_as_slice(0));
        });
        let min = 1.0 / theta - shift;
        return Spectrum {
            min,
            max,
            floor,
            resolved: min > floor,
            method: EigMethod::Lanczos,
            iterations: it1 + it2,
        };
    }
    // Not reachable for a PSD matrix with finite entries; report what is known.
    Spectrum {
        min: f64::NAN,
        max,
        floor,
        resolved: false,
        method: EigMethod::Lanczos,
        iterations: it1,
    }
}

fn cholesky(a: faer::MatMut<'_, f64>) -> Result<(), faer::linalg::cholesky::llt::factor::LltError> {
    use faer::dyn_stack::{MemBuffer, MemStack};
    let n = a.nrows();
    let req = faer::linalg::cholesky::llt::factor::cholesky_in_place_scratch::<f64>(
        n,
        Par::Seq,
        Default::default(),
    );
    let mut mem = MemBuffer::new(req);
    faer::linalg::cholesky::llt::factor::cholesky_in_place(
        a,
        Default::default(),
        Par::Seq,
        MemStack::new(&mut mem),
        Default::default(),
    )
    .map(|_| ())
}

/// Eigenvalues (ascending) of a symmetric matrix, sequential.
pub fn sym_eigenvalues(a: MatRef<'_, f64>) -> Vec<f64> {
    sym_eigen(a, false).0
}

/// Eigenvalues (ascending) and, if asked, eigenvectors (`n x n` column-major) of a
/// symmetric matrix, sequential (faer's self-adjoint EVD with `Par::Seq`).
pub fn sym_eigen(a: MatRef<'_, f64>, vectors: bool) -> (Vec<f64>, Option<Mat<f64>>) {
    use faer::dyn_stack::{MemBuffer, MemStack};
    use faer::linalg::evd::{self, ComputeEigenvectors};
    let n = a.nrows();
    let mut s = faer::diag::Diag::<f64>::zeros(n);
    let mut u = vectors.then(|| Mat::<f64>::zeros(n, n));
    let cu = if vectors {
        ComputeEigenvectors::Yes
    } else {
        ComputeEigenvectors::No
    };
    let req = evd::self_adjoint_evd_scratch::<f64>(n, cu, Par::Seq, Default::default());
    let mut mem = MemBuffer::new(req);
    let res = evd::self_adjoint_evd(
        a,
        s.as_mut(),
        u.as_mut().map(|u| u.as_mut()),
        Par::Seq,
        MemStack::new(&mut mem),
        Default::default(),
    );
    if res.is_err() {
        return (vec![f64::NAN; n], None);
    }
    ((0..n).map(|i| s[i]).collect(), u)
}

/// The largest eigenvalue of a symmetric operator by Lanczos with full
/// reorthogonalization, to a residual of `1e-10` relative (or an invariant subspace, or
/// `min(n, 400)` iterations, or a Ritz value at least `stop_above`). Deterministic start
/// vector. Returns the value and the iterations used.
fn lanczos_max(
    n: usize,
    stop_above: f64,
    mut apply: impl FnMut(&[f64], &mut [f64]),
) -> (f64, usize) {
    let max_iter = n.min(400);
    let s = crate::rng::Stream::new(0x4d46_4c41, crate::rng::Tensor::Other(0x4d46_4c41), 0);
    let mut v0: Vec<f64> = (0..n).map(|i| s.normal(0, i as u64)).collect();
    let nv = v0.iter().map(|x| x * x).sum::<f64>().sqrt();
    v0.iter_mut().for_each(|x| *x /= nv);
    let mut basis: Vec<Vec<f64>> = vec![v0];
    let (mut alphas, mut betas) = (Vec::new(), Vec::new());
    let mut w = vec![0.0; n];
    let mut theta = 0.0;
    for j in 0..max_iter {
        apply(&basis[j], &mut w);
        let a = dot(&w, &basis[j]);
        alphas.push(a);
        for _ in 0..2 {
            for v in &basis {
                let c = dot(&w, v);
                w.iter_mut().zip(v).for_each(|(x, y)| *x -= c * y);
            }
        }
        let b = dot(&w, &w).sqrt();
        let k = j + 1;
        let check = k == max_iter || k % 4 == 0 || b == 0.0 || k < 4;
        if check {
            let t = Mat::<f64>::from_fn(k, k, |p, q| {
                if p == q {
                    alphas[p]
                } else if p + 1 == q || q + 1 == p {
                    betas[p.min(q)]
                } else {
                    0.0
                }
            });
            let (ev, vecs) = sym_eigen(t.as_ref(), true);
            theta = ev[k - 1];
            let last = vecs.map(|u| u[(k - 1, k - 1)]).unwrap_or(1.0);
            // Ritz values increase towards the largest eigenvalue: past `stop_above` the
            // answer is already known to be out of the resolved range.
            if b * last.abs() <= 1e-10 * theta.abs()
                || b <= 1e-300
                || k == max_iter
                || theta >= stop_above
            {
                return (theta, k);
            }
        }
        betas.push(b);
        basis.push(w.iter().map(|x| x / b).collect());
    }
    (theta, max_iter)
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
pub(crate) fn extreme_eigenvalues_for_test(g: &[f64], n: usize, dense_max: usize) -> Spectrum {
    extreme_eigenvalues_with(g, n, dense_max)
}
