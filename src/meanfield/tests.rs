//! Tests of the mean-field model against finite differences, known answers and
//! independent estimators.

use super::data::Spirals;
use super::gram::{self, extreme_eigenvalues_for_test};
use super::kl::{self, FlowKl};
use super::net::{Arch, Derivatives, Init, Net, Workspace, sym_index};
use super::*;
use crate::model::Activation;
use crate::rng::{Stream, Tensor};

fn arch(d: usize, l: usize, m: usize, m0: usize, alpha: f64, beta: f64) -> Arch {
    Arch {
        d,
        l,
        m,
        m0,
        alpha,
        beta,
        activation: Activation::Tanh,
    }
}

/// n unit inputs in R^d and ±1 labels.
fn toy_data(d: usize, n: usize, seed: u64) -> (Vec<f64>, Vec<f64>) {
    let s = Stream::new(seed, Tensor::Other(77), 0);
    let mut x = s.normal_matrix(n, d, 1.0);
    for xi in x.chunks_mut(d) {
        let nr = xi.iter().map(|v| v * v).sum::<f64>().sqrt();
        xi.iter_mut().for_each(|v| *v /= nr);
    }
    let y = (0..n)
        .map(|i| {
            if s.uniform(1000 + i as u64, 0) < 0.5 {
                1.0
            } else {
                -1.0
            }
        })
        .collect();
    (x, y)
}

fn loss(net: &Net, x: &[f64], y: &[f64]) -> f64 {
    let f = net.predict(x);
    f.iter().zip(y).map(|(f, y)| (f - y) * (f - y)).sum::<f64>() / (2.0 * y.len() as f64)
}

fn derivs(net: &Net, x: &[f64], y: &[f64]) -> Derivatives {
    let mut ws = Workspace::new(&net.arch);
    let mut der = Derivatives::new(&net.arch);
    net.derivatives(x, y, &mut ws, &mut der);
    der
}

fn close(a: f64, b: f64, rel: f64, abs: f64) -> bool {
    (a - b).abs() <= abs + rel * a.abs().max(b.abs())
}

/// Iid particles scaled up so that every term of the pass is far from zero.
fn tiny_net(act: Activation) -> (Net, Vec<f64>, Vec<f64>) {
    let mut a = arch(3, 2, 5, 6, 1.7, 1.3);
    a.activation = act;
    let net = Net::init(a, Init::Iid, 11);
    let (x, y) = toy_data(3, 70, 5); // 70 > TILE: two tiles
    (net, x, y)
}

#[test]
fn gradients_match_central_finite_differences() {
    for act in [Activation::Tanh, Activation::Softplus] {
        let (net, x, y) = tiny_net(act);
        let der = derivs(&net, &x, &y);
        assert!(close(der.loss, loss(&net, &x, &y), 1e-13, 0.0));
        let Arch {
            l: depth, m, m0, ..
        } = net.arch;
        let h = 1e-5;
        let fd = |edit: &dyn Fn(&mut Net, f64)| {
            let (mut p, mut q) = (net.clone(), net.clone());
            edit(&mut p, h);
            edit(&mut q, -h);
            (loss(&p, &x, &y) - loss(&q, &x, &y)) / (2.0 * h)
        };
        // Rates: d Psi = L M dL/dtheta (stack), M0 dL/domega (head).
        let (rs, rh) = ((depth * m) as f64, m0 as f64);
        for l in 0..depth {
            for k in [0, m - 1] {
                let gw = der.grad_w(&net, l, k);
                for (c, &gwc) in gw.iter().enumerate() {
                    let gu = rs * fd(&|n: &mut Net, e| n.u[l][c * m + k] += e);
                    assert!(
                        close(gu, der.grad_u[l][c * m + k], 1e-6, 1e-9),
                        "{act:?} u l{l} m{k} c{c}: {gu}"
                    );
                    let g = rs * fd(&|n: &mut Net, e| n.w[l][c * m + k] += e);
                    assert!(
                        close(g, gwc, 1e-6, 1e-9),
                        "{act:?} w l{l} m{k} c{c}: {g} vs {gwc}"
                    );
                }
            }
        }
        for j in [0, 3, m0 - 1] {
            let ga = rh * fd(&|n: &mut Net, e| n.a[j] += e);
            assert!(close(ga, der.grad_a[j], 1e-6, 1e-9), "{act:?} a{j}");
            let gb = der.grad_b(&net, j);
            for (c, &gbc) in gb.iter().enumerate() {
                let g = rh * fd(&|n: &mut Net, e| n.b[c * m0 + j] += e);
                assert!(close(g, gbc, 1e-6, 1e-9), "{act:?} b{j} c{c}");
            }
        }
    }
}

/// The potentials of docs/papers.md 1.2 evaluated directly from the frozen states and adjoints.
fn psi_stack(net: &Net, tr: &net::Trace, r: &[f64], l: usize, th: &[f64]) -> f64 {
    let Arch {
        d,
        alpha,
        activation: act,
        ..
    } = net.arch;
    let n = r.len();
    (0..n)
        .map(|i| {
            let z = &tr.z[l][i * d..(i + 1) * d];
            let p = &tr.p[l + 1][i * d..(i + 1) * d];
            let pu: f64 = (0..d).map(|c| p[c] * th[c]).sum();
            let wz: f64 = (0..d).map(|c| th[d + c] * z[c]).sum();
            r[i] * pu * act.f(wz)
        })
        .sum::<f64>()
        * alpha
        / n as f64
}

fn psi_head(net: &Net, tr: &net::Trace, r: &[f64], om: &[f64]) -> f64 {
    let Arch {
        d,
        l,
        beta,
        activation: act,
        ..
    } = net.arch;
    let n = r.len();
    (0..n)
        .map(|i| {
            let z = &tr.z[l][i * d..(i + 1) * d];
            let bz: f64 = (0..d).map(|c| om[1 + c] * z[c]).sum();
            r[i] * om[0] * act.f(bz)
        })
        .sum::<f64>()
        * beta
        / n as f64
}

fn fd_hessian(f: &dyn Fn(&[f64]) -> f64, x: &[f64]) -> Vec<f64> {
    let k = x.len();
    let h = 1e-4;
    let mut out = vec![0.0; k * k];
    for a in 0..k {
        for b in 0..k {
            let at = |sa: f64, sb: f64| {
                let mut y = x.to_vec();
                y[a] += sa;
                y[b] += sb;
                f(&y)
            };
            out[a * k + b] = (at(h, h) - at(h, -h) - at(-h, h) + at(-h, -h)) / (4.0 * h * h);
        }
    }
    out
}

#[test]
fn potential_hessians_match_finite_differences() {
    let (net, x, y) = tiny_net(Activation::Tanh);
    let der = derivs(&net, &x, &y);
    let tr = net.trace(&x);
    let r: Vec<f64> = tr.f.iter().zip(&y).map(|(f, y)| f - y).collect();
    let Arch { d, m, m0, .. } = net.arch;
    for (l, k) in [(0, 1), (1, 4)] {
        let th: Vec<f64> = (0..d)
            .map(|c| net.u[l][c * m + k])
            .chain((0..d).map(|c| net.w[l][c * m + k]))
            .collect();
        let hs = fd_hessian(&|t| psi_stack(&net, &tr, &r, l, t), &th);
        let dd = 2 * d;
        for a in 0..d {
            for b in 0..d {
                assert!(hs[a * dd + b].abs() < 1e-7, "d_uu must vanish");
                let uw = der.huw[l][(a * d + b) * m + k];
                assert!(
                    close(hs[a * dd + d + b], uw, 1e-5, 1e-8),
                    "uw {a}{b}: {} vs {uw}",
                    hs[a * dd + d + b]
                );
                let ww = der.hww[l][sym_index(d, a, b) * m + k];
                assert!(close(hs[(d + a) * dd + d + b], ww, 1e-5, 1e-8), "ww {a}{b}");
            }
        }
    }
    for j in [0, 5] {
        let om: Vec<f64> = std::iter::once(net.a[j])
            .chain((0..d).map(|c| net.b[c * m0 + j]))
            .collect();
        let hs = fd_hessian(&|o| psi_head(&net, &tr, &r, o), &om);
        let k = d + 1;
        assert!(hs[0].abs() < 1e-7);
        for a in 0..d {
            assert!(close(hs[1 + a], der.hab[a * m0 + j], 1e-5, 1e-8), "ab {a}");
            for b in 0..d {
                let bb = net.a[j] * der.hbb[sym_index(d, a, b) * m0 + j];
                assert!(close(hs[(1 + a) * k + 1 + b], bb, 1e-5, 1e-8), "bb {a}{b}");
            }
        }
    }
}

#[test]
fn gram_matrices_match_a_finite_difference_jacobian() {
    let a = arch(3, 2, 4, 6, 1.5, 1.2);
    let net = Net::init(a, Init::Iid, 3);
    let (x, _) = toy_data(3, 5, 8);
    let n = 5;
    let g = grams(&net, &x);
    let h = 1e-6;
    // Jacobian columns: df/dparam for every parameter, by central differences.
    let jac = |edit: &dyn Fn(&mut Net, f64)| -> Vec<f64> {
        let (mut p, mut q) = (net.clone(), net.clone());
        edit(&mut p, h);
        edit(&mut q, -h);
        p.predict(&x)
            .iter()
            .zip(q.predict(&x))
            .map(|(a, b)| (a - b) / (2.0 * h))
            .collect()
    };
    let mut g1 = vec![0.0; n * n];
    let mut g2 = vec![0.0; n * n];
    let add = |g: &mut Vec<f64>, col: &[f64], w: f64| {
        for i in 0..n {
            for j in 0..n {
                g[j * n + i] += w * col[i] * col[j];
            }
        }
    };
    let Arch {
        d, l: depth, m, m0, ..
    } = a;
    let (ws, wh) = ((depth * m) as f64, m0 as f64);
    for l in 0..depth {
        for idx in 0..m * d {
            add(&mut g1, &jac(&|nn: &mut Net, e| nn.u[l][idx] += e), ws);
            add(&mut g1, &jac(&|nn: &mut Net, e| nn.w[l][idx] += e), ws);
        }
    }
    for j in 0..m0 {
        add(&mut g2, &jac(&|nn: &mut Net, e| nn.a[j] += e), wh);
    }
    for idx in 0..m0 * d {
        add(&mut g2, &jac(&|nn: &mut Net, e| nn.b[idx] += e), wh);
    }
    let s1 = g1.iter().map(|v| v.abs()).fold(0.0, f64::max);
    assert!(s1 > 1e-3, "G1 should not be negligible here ({s1})");
    for k in 0..n * n {
        assert!(
            close(g.g1[k], g1[k], 1e-6, 1e-9 * s1),
            "G1[{k}]: {} vs {}",
            g.g1[k],
            g1[k]
        );
        assert!(
            close(g.g2[k], g2[k], 1e-6, 1e-9),
            "G2[{k}]: {} vs {}",
            g.g2[k],
            g2[k]
        );
    }
}

#[test]
fn loss_decrease_of_a_small_step_is_minus_eta_r_g_r_over_n_squared() {
    let net0 = Net::init(arch(3, 3, 6, 8, 2.0, 1.5), Init::Iid, 4);
    let (x, y) = toy_data(3, 9, 2);
    let n = 9;
    let der = derivs(&net0, &x, &y);
    let g = grams(&net0, &x);
    let r: Vec<f64> = net0
        .predict(&x)
        .iter()
        .zip(&y)
        .map(|(f, y)| f - y)
        .collect();
    let quad = |gm: &[f64]| -> f64 {
        (0..n)
            .map(|j| r[j] * (0..n).map(|i| gm[j * n + i] * r[i]).sum::<f64>())
            .sum::<f64>()
            / (n * n) as f64
    };
    let (q1, q2) = (quad(&g.g1), quad(&g.g2));
    assert!(q1 > 0.05 * q2, "both parts should matter: {q1} {q2}");
    let eta = 1e-6;
    let mut net = net0.clone();
    net.apply(&der, eta, None);
    let rate = (loss(&net, &x, &y) - der.loss) / eta;
    assert!(
        close(rate, -(q1 + q2), 1e-4, 0.0),
        "dL/dt {rate} vs -(r^T G r)/n^2 = {}",
        -(q1 + q2)
    );
}

#[test]
fn symmetric_init_starts_at_the_limit_state() {
    let net = Net::init(arch(3, 4, 6, 8, 1.0, 3.0), Init::Symmetric, 9);
    let (x, _) = toy_data(3, 7, 1);
    assert!(net.predict(&x).iter().all(|&f| f == 0.0));
    let tr = net.trace(&x);
    assert!(tr.z[4].iter().zip(&x).all(|(a, b)| (a - b).abs() < 1e-15));
    // Every particle is still marginally standard normal: pairs share w, negate u.
    assert_eq!(net.u[0][0], -net.u[0][1]);
    assert_eq!(net.w[0][0], net.w[0][1]);
    assert_eq!(net.a[2], -net.a[3]);
}

#[test]
fn step_determinants_use_the_full_hessian() {
    // The Schur-complement determinant of Net::apply equals det(I - eta H) of the full
    // Hessian of each particle.
    let (net, x, y) = tiny_net(Activation::Tanh);
    let der = derivs(&net, &x, &y);
    let eta = 0.3;
    let mut kl = FlowKl::new(&net);
    net.clone().apply(&der, eta, Some(&mut kl));
    let Arch { d, m, m0, .. } = net.arch;
    let dd = 2 * d;
    for (l, k) in [(0, 0), (1, 3)] {
        let mut hm = vec![0.0; dd * dd];
        for a in 0..d {
            for b in 0..d {
                let c = der.huw[l][(a * d + b) * m + k];
                hm[a * dd + d + b] = c;
                hm[(d + b) * dd + a] = c;
                hm[(d + a) * dd + d + b] = der.hww[l][sym_index(d, a, b) * m + k];
            }
        }
        let (ld, _) = kl::log_abs_det_step(eta, &hm, dd);
        assert!(close(-ld, kl.stack[l * m + k], 1e-12, 1e-14));
    }
    let k = d + 1;
    for j in [0, 4] {
        let mut hm = vec![0.0; k * k];
        for a in 0..d {
            hm[1 + a] = der.hab[a * m0 + j];
            hm[(1 + a) * k] = der.hab[a * m0 + j];
            for b in 0..d {
                hm[(1 + a) * k + 1 + b] = net.a[j] * der.hbb[sym_index(d, a, b) * m0 + j];
            }
        }
        let (ld, _) = kl::log_abs_det_step(eta, &hm, k);
        assert!(close(-ld, kl.head[j], 1e-12, 1e-14));
    }
}

#[test]
fn kl_of_a_linear_gaussian_flow_has_the_known_value() {
    // theta_{k+1} = (I - eta H) theta_k from N(0, I_3): A = (I - eta H)^K and
    // KL = (tr(A A^T) - 3 - log det(A A^T)) / 2.
    let dim = 3;
    let h = [1.0, 0.3, 0.0, 0.3, -0.5, 0.2, 0.0, 0.2, 0.8];
    let (eta, steps, count) = (0.1, 10, 40_000);
    let s = Stream::new(5, Tensor::Other(1), 0);
    let theta0 = s.normal_matrix(count, dim, 1.0);
    let mut theta = theta0.clone();
    let mut logdet = vec![0.0; count];
    let (ld, pos) = kl::log_abs_det_step(eta, &h, dim);
    assert!(pos);
    let step: Vec<f64> = (0..9)
        .map(|k| f64::from(k / 3 == k % 3) - eta * h[k])
        .collect();
    for _ in 0..steps {
        for (p, l) in theta.chunks_mut(dim).zip(&mut logdet) {
            let q: Vec<f64> = (0..dim)
                .map(|a| (0..dim).map(|b| step[a * dim + b] * p[b]).sum())
                .collect();
            p.copy_from_slice(&q);
            *l -= ld;
        }
    }
    let norms = |v: &[f64]| {
        v.chunks(dim)
            .map(|p| p.iter().map(|x| x * x).sum())
            .collect::<Vec<f64>>()
    };
    let est = kl::change_of_variables_kl(&logdet, &norms(&theta0), &norms(&theta));
    // Exact value from A = step^K.
    let mut a = vec![0.0; 9];
    for k in 0..3 {
        a[k * 4] = 1.0;
    }
    for _ in 0..steps {
        a = (0..9)
            .map(|k| {
                (0..3)
                    .map(|e| step[(k / 3) * 3 + e] * a[e * 3 + k % 3])
                    .sum()
            })
            .collect();
    }
    let tr_aat: f64 = a.iter().map(|v| v * v).sum();
    let det_a = net::det_small(&mut a.clone(), 3);
    let exact = 0.5 * (tr_aat - 3.0 - (det_a * det_a).ln());
    assert!(exact > 0.3, "a non-trivial case ({exact})");
    assert!(
        (est - exact).abs() < 0.02,
        "estimate {est} vs exact {exact}"
    );
    // The opposite sign convention would be off by 2 |log det A| = 2.8.
    assert!((det_a.ln() * 2.0).abs() > 1.0);
}

#[test]
fn kl_along_training_agrees_with_nearest_neighbours() {
    // d = 1: stack particles (u, w) and head particles (a, b) live in R^2, where the
    // Kozachenko–Leonenko estimator is accurate with a few thousand particles.
    let a = Arch {
        d: 1,
        l: 1,
        m: 3000,
        m0: 3000,
        alpha: 3.0,
        beta: 1.0,
        activation: Activation::Tanh,
    };
    let mut net = Net::init(a, Init::Iid, 21);
    let x: Vec<f64> = (0..8).map(|i| -1.0 + i as f64 * 2.0 / 7.0).collect();
    let y: Vec<f64> = x
        .iter()
        .map(|v| if (3.0 * v).sin() > 0.0 { 1.0 } else { -1.0 })
        .collect();
    let mut ws = Workspace::new(&a);
    let mut der = Derivatives::new(&a);
    let mut kl = FlowKl::new(&net);
    let knn0 = kl::knn_kl_to_standard_normal(&head_points(&net), 2, 4);
    for _ in 0..150 {
        net.derivatives(&x, &y, &mut ws, &mut der);
        net.apply(&der, 0.5, Some(&mut kl));
    }
    assert_eq!(kl.folds, 0);
    let est = kl.estimate(&net);
    let stack: Vec<f64> = (0..a.m).flat_map(|k| [net.u[0][k], net.w[0][k]]).collect();
    let knn_stack = kl::knn_kl_to_standard_normal(&stack, 2, 4);
    let knn_head = kl::knn_kl_to_standard_normal(&head_points(&net), 2, 4);
    // At initialization the sample estimator sees (nearly) zero: its bias is small.
    assert!(knn0.abs() < 0.03, "knn at init {knn0}");
    assert!(
        est.head > 0.1 && est.stack > 0.1,
        "particles must move: {est:?}"
    );
    assert!(
        (est.head - knn_head).abs() < 0.04 + 0.1 * est.head,
        "head: flow {} vs knn {knn_head}",
        est.head
    );
    assert!(
        (est.stack - knn_stack).abs() < 0.04 + 0.1 * est.stack,
        "stack: flow {} vs knn {knn_stack}",
        est.stack
    );
}

fn head_points(net: &Net) -> Vec<f64> {
    (0..net.arch.m0)
        .flat_map(|j| [net.a[j], net.b[j]])
        .collect()
}

#[test]
fn spirals_are_balanced_prefix_nested_and_separable_without_noise() {
    let sp = Spirals {
        noise: 0.0,
        ..Spirals::default()
    };
    for n in [1000, 1001] {
        let ds = sp.sample(n, 3, 1);
        let pos = ds.y.iter().filter(|&&v| v > 0.0).count();
        assert_eq!(pos, n.div_ceil(2));
        assert_eq!(n - pos, n / 2);
        // The arm's own curve labels every point: the classes are separable.
        for i in 0..n {
            let (lab, dist) = sp.arm_of(ds.x[2 * i], ds.x[2 * i + 1]);
            assert_eq!(lab, ds.y[i], "sample {i}");
            assert!(dist < 1e-9);
        }
    }
    let noisy = Spirals::default();
    let big = noisy.sample(400, 7, 1);
    assert_eq!(noisy.sample(150, 7, 1), big.head(150));
    assert_ne!(noisy.sample(150, 8, 1), big.head(150));
    let lifted = big.lift(1.0).normalize().unwrap();
    assert_eq!(lifted.d, 3);
    for xi in lifted.x.chunks(3) {
        assert!((xi.iter().map(|v| v * v).sum::<f64>() - 1.0).abs() < 1e-14);
    }
    assert_eq!(lifted.positive_fraction(), 0.5);
}

#[test]
fn initial_kernel_matches_quadrature_and_monte_carlo() {
    let kern = InitKernel::shared(Activation::Tanh);
    for rho in [-1.0, -0.73, -0.1, 0.0, 0.377, 0.9, 0.99991, 1.0] {
        let (v, _) = InitKernel::direct(Activation::Tanh, rho);
        assert!(
            close(kern.eval(rho), v, 1e-12, 1e-14),
            "rho {rho}: {} vs {v}",
            kern.eval(rho)
        );
    }
    // k(1) = E[tanh(X)^2] + E[tanh'(X)^2] and k(0) = E[tanh'(X)]^2 * 0 + E[tanh]^2 = 0.
    assert!(kern.eval(0.0).abs() < 1e-14);
    // Monte Carlo over b for two unit inputs, and G2 at a symmetric initialization.
    let s = Stream::new(2, Tensor::Other(3), 0);
    let (x1, x2) = ([1.0, 0.0, 0.0], [0.6, 0.8, 0.0]);
    let count = 200_000;
    let mut acc = 0.0;
    for k in 0..count {
        let b: Vec<f64> = (0..3).map(|c| s.normal(k, c)).collect();
        let (p, q) = (b[0] * x1[0] + b[1] * x1[1], b[0] * x2[0] + b[1] * x2[1]);
        acc += p.tanh() * q.tanh() + 0.6 * (1.0 - p.tanh().powi(2)) * (1.0 - q.tanh().powi(2));
    }
    let mc = acc / count as f64;
    assert!(
        (mc - kern.eval(0.6)).abs() < 4e-3,
        "MC {mc} vs {}",
        kern.eval(0.6)
    );
    let net = Net::init(
        Arch {
            d: 3,
            l: 1,
            m: 2,
            m0: 40_000,
            alpha: 1.0,
            beta: 2.0,
            activation: Activation::Tanh,
        },
        Init::Symmetric,
        5,
    );
    let x = [x1, x2].concat();
    let g = grams(&net, &x);
    let k0 = kern.matrix(&x, 3);
    for (gk, kk) in g.g2.iter().zip(&k0) {
        assert!(
            (gk / 4.0 - kk).abs() < 0.02,
            "G2/beta^2 {} vs K0 {kk}",
            gk / 4.0
        );
    }
    assert!(
        g.g1.iter().all(|&v| v.abs() < 1e-20),
        "the stack has no gradient at a symmetric init"
    );
}

#[test]
fn lanczos_extreme_eigenvalues_match_the_dense_solver() {
    let n = 240;
    let s = Stream::new(9, Tensor::Other(4), 0);
    let f = s.normal_matrix(n, 2 * n, 1.0);
    // A well-conditioned Gram matrix, and an ill-conditioned kernel matrix.
    let mut g = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            g[j * n + i] = (0..2 * n)
                .map(|k| f[i * 2 * n + k] * f[j * 2 * n + k])
                .sum::<f64>()
                / (2 * n) as f64;
        }
    }
    let kern = InitKernel::shared(Activation::Tanh);
    let sp = Spirals::default()
        .sample(n, 1, 1)
        .lift(1.0)
        .normalize()
        .unwrap();
    let k0 = kern.matrix(&sp.x, 3);
    for (name, m) in [("gram", &g), ("k0", &k0)] {
        let dense = extreme_eigenvalues_for_test(m, n, n);
        let lz = extreme_eigenvalues_for_test(m, n, 0);
        assert_eq!(dense.method, gram::EigMethod::Dense);
        assert_eq!(lz.method, gram::EigMethod::Lanczos);
        assert!(
            close(dense.max, lz.max, 1e-9, 0.0),
            "{name} max {} {}",
            dense.max,
            lz.max
        );
        if dense.resolved {
            assert!(
                close(dense.min, lz.min, 1e-6, 0.0),
                "{name} min {} {}",
                dense.min,
                lz.min
            );
        } else {
            assert!(lz.min < 10.0 * lz.floor, "{name}: {lz:?}");
        }
    }
    let gd = extreme_eigenvalues_for_test(&g, n, n);
    assert!(gd.resolved && gd.min > 0.01, "{gd:?}");
}

#[test]
fn spec_errors_name_the_field_and_value() {
    let base = std::path::Path::new(".");
    let check = |text: &str| -> String {
        let spec: ExperimentSpec = match toml::from_str(text) {
            Ok(s) => s,
            Err(e) => return e.to_string(),
        };
        match spec.check(base) {
            Ok(_) => "ok".into(),
            Err(e) => e.to_string(),
        }
    };
    assert_eq!(check(""), "ok");
    let e = check("[model]\nM = 7\n");
    assert!(
        e.contains("model.M") && e.contains('7') && e.contains("even"),
        "{e}"
    );
    let e = check("n_train = [50, 1]\n");
    assert!(e.contains("n_train") && e.contains('1'), "{e}");
    let e = check("[data]\nsource = \"moons\"\n");
    assert!(e.contains("data.source") && e.contains("moons"), "{e}");
    let e = check("[data]\nsource = \"csv\"\n");
    assert!(e.contains("data.train") && e.contains("required"), "{e}");
    let e = check("[train]\nlr = -1.0\n");
    assert!(e.contains("train.lr") && e.contains("-1"), "{e}");
    let e = check("[model]\nbeta = { c = 0.0 }\n");
    assert!(e.contains("model.beta"), "{e}");
    let e = check("[model]\nalpha = -2.0\n");
    assert!(e.contains("model.alpha") && e.contains("-2"), "{e}");
    let e = check("[measure]\ndelta = 1.5\n");
    assert!(e.contains("measure.delta") && e.contains("1.5"), "{e}");
    let e = check("[model]\nwidth = 3\n");
    assert!(e.contains("width"), "{e}");
    let e = check("[model]\nactivation = \"sigmoidal\"\n");
    assert!(
        e.contains("model.activation") && e.contains("sigmoidal"),
        "{e}"
    );
    // Counts that would build huge lists (or loop for ever) are refused first.
    let e = check("seeds = 2305843009213693952\nn_train = [4, 6]\n");
    assert!(
        e.contains("seeds") && e.contains("2305843009213693952") && e.contains("1000000"),
        "{e}"
    );
    let e = check("[measure]\ncheckpoints = 9223372036854775807\n");
    assert!(
        e.contains("measure.checkpoints") && e.contains("at most 10000"),
        "{e}"
    );
    assert_eq!(check("[measure]\ncheckpoints = 10000\n"), "ok");
    // The defaults are the documented protocol.
    let cfg = ExperimentSpec::default().check(base).unwrap();
    assert_eq!(cfg.n_train, vec![50, 100, 200, 400, 800, 1600, 3200]);
    assert_eq!(
        (cfg.d, cfg.l, cfg.m, cfg.m0, cfg.seeds),
        (3, 10, 200, 1000, 5)
    );
    assert!((cfg.beta_at(400) - 5.0).abs() < 1e-12);
    assert_eq!(
        (
            cfg.lr,
            cfg.target_loss,
            cfg.backoff,
            cfg.backoff_rise,
            cfg.growth
        ),
        (5.0, 5e-3, 0.7, 0.5, 1.0)
    );
    assert_eq!((cfg.max_steps_at(50), cfg.max_steps_at(3200)), (2127, 6017));
    assert_eq!(cfg.checkpoint_steps(400), vec![0, 5, 26, 136, 696, 3578]);
}

#[test]
fn csv_data_are_read_with_errors_naming_file_and_line() {
    let dir = std::env::temp_dir().join(format!("reslim-mf-csv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("train.csv");
    let mut text = String::from("x1,x2,y\n");
    for i in 0..40 {
        let t = i as f64 * 0.3;
        text.push_str(&format!(
            "{},{},{}\n",
            t.cos(),
            t.sin(),
            if i % 2 == 0 { 1 } else { 0 }
        ));
    }
    std::fs::write(&good, &text).unwrap();
    let ds = data::read_csv(&good).unwrap();
    assert_eq!((ds.d, ds.n()), (2, 40));
    assert_eq!(ds.positive_fraction(), 0.5);
    let bad = dir.join("bad.csv");
    std::fs::write(&bad, "1,2,1\n3,oops,-1\n").unwrap();
    let e = data::read_csv(&bad).unwrap_err().to_string();
    assert!(
        e.contains("bad.csv") && e.contains("line 2") && e.contains("oops"),
        "{e}"
    );
    std::fs::write(&bad, "1,2,1\n3,4,2\n").unwrap();
    let e = data::read_csv(&bad).unwrap_err().to_string();
    assert!(e.contains("line 2") && e.contains("label"), "{e}");
    // A CSV experiment: lifted to d = 3, n_train rows drawn per repetition.
    let spec: ExperimentSpec = toml::from_str(&format!(
        "n_train = [10, 20]\n[data]\nsource = \"csv\"\ntrain = \"{}\"\ntest = \"{}\"\nlift = 1.0\n",
        good.display(),
        good.display()
    ))
    .unwrap();
    let cfg = spec.check(&dir).unwrap();
    assert_eq!(cfg.d, 3);
    let (tr, te) = cfg.datasets(20, 0).unwrap();
    assert_eq!((tr.n(), te.n(), tr.d), (20, 40, 3));
    let (tr10, _) = cfg.datasets(10, 0).unwrap();
    assert_eq!(tr10, tr.head(10), "nested subsets");
    let spec: ExperimentSpec = toml::from_str(&format!(
        "n_train = [50]\n[data]\nsource = \"csv\"\ntrain = \"{}\"\ntest = \"{}\"\n",
        good.display(),
        good.display()
    ))
    .unwrap();
    let e = spec.check(&dir).unwrap_err().to_string();
    assert!(
        e.contains("n_train") && e.contains("50") && e.contains("40 rows"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn experiment_runs_resume_and_report() {
    let dir = std::env::temp_dir().join(format!("reslim-mf-exp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let spec: ExperimentSpec = toml::from_str(
        "name = \"tiny\"\nseeds = 2\nn_train = [12, 24]\nn_test = 50\n\
         [model]\nL = 2\nM = 8\nM0 = 16\nbeta = { c = 1.0, n = 0.5 }\n\
         [train]\nlr = 1.0\nmax_steps = 20\n[measure]\ncheckpoints = 3\n",
    )
    .unwrap();
    let cfg = spec.check(&dir).unwrap();
    let count = std::sync::atomic::AtomicUsize::new(0);
    let runs = run_experiment(&cfg, &dir, false, &|_, s| {
        assert_eq!(s, experiment::RunStatus::Done);
        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    })
    .unwrap();
    assert_eq!(count.into_inner(), 4);
    assert_eq!(
        runs.iter().map(|r| (r.n, r.k)).collect::<Vec<_>>(),
        vec![(12, 0), (12, 1), (24, 0), (24, 1)]
    );
    for r in &runs {
        assert_eq!(r.losses.len(), r.steps + 1);
        assert_eq!(r.checkpoints.first().unwrap().step, 0);
        assert_eq!(r.last().step, r.steps);
        assert!(r.last().g.is_some() && r.lambda0.is_some());
        assert!(r.losses.last().unwrap() < &r.losses[0]);
    }
    // A second call reuses every stored run; a changed config recomputes.
    let again = run_experiment(&cfg, &dir, false, &|_, s| {
        assert_eq!(s, experiment::RunStatus::Reused)
    })
    .unwrap();
    assert!(again == runs, "stored runs must reload exactly");
    // Unreadable or incomplete stored runs are trained again (and come out the same).
    let p0 = experiment::run_path(&dir, 12, 0);
    let text = std::fs::read_to_string(&p0).unwrap();
    std::fs::write(&p0, &text[..text.len() / 2]).unwrap();
    let p1 = experiment::run_path(&dir, 24, 1);
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p1).unwrap()).unwrap();
    v["checkpoints"] = serde_json::json!([]);
    std::fs::write(&p1, v.to_string()).unwrap();
    let replaced = std::sync::atomic::AtomicUsize::new(0);
    let again = run_experiment(&cfg, &dir, false, &|r, s| {
        let damaged = (r.n, r.k) == (12, 0) || (r.n, r.k) == (24, 1);
        let want = if damaged {
            experiment::RunStatus::Replaced
        } else {
            experiment::RunStatus::Reused
        };
        assert_eq!(s, want, "run n = {}, k = {}", r.n, r.k);
        replaced.fetch_add(damaged as usize, std::sync::atomic::Ordering::Relaxed);
    })
    .unwrap();
    assert_eq!(replaced.into_inner(), 2);
    for (a, b) in again.iter().zip(&runs) {
        assert_eq!(a.losses, b.losses);
        assert_eq!(a.checkpoints.len(), b.checkpoints.len());
    }
    let mut other = cfg.clone();
    other.lr = 0.5;
    let n_done = std::sync::atomic::AtomicUsize::new(0);
    // A changed config: the stored runs are stale, never reused; refused (naming the
    // field) unless told to redo them.
    let e = run_experiment(&other, &dir, false, &|_, _| panic!("nothing may run"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("4 stored run(s)") && e.contains("lr: 1.0 -> 0.5"),
        "{e}"
    );
    run_experiment(&other, &dir, true, &|_, s| {
        if s == experiment::RunStatus::Replaced {
            n_done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    })
    .unwrap();
    assert_eq!(n_done.into_inner(), 4);
    // The result does not depend on the thread count.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let one = pool.install(|| run_one(&cfg, 24, 1).unwrap());
    assert_eq!(one.losses, runs[3].losses);
    let s = report::write_report(&cfg, &runs, &dir, "test", 0.0, 0).unwrap();
    assert!(s.fit.is_some());
    for f in [
        "report.md",
        "test_error.png",
        "test_error.svg",
        "loss.png",
        "kl.png",
        "lambda_min.png",
        "bound.png",
        "summary.json",
        "runs.csv",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn step_budget_is_a_power_law_and_backoff_shrinks_eta_after_a_loss_increase() {
    let base = std::path::Path::new(".");
    let check = |text: &str| -> String {
        let spec: ExperimentSpec = toml::from_str(text).map_err(|e| e.to_string()).unwrap();
        spec.check(base)
            .map(|_| "ok".into())
            .unwrap_or_else(|e| e.to_string())
    };
    let e = check("[train]\nbackoff = 0.0\n");
    assert!(e.contains("train.backoff") && e.contains('0'), "{e}");
    let e = check("[train]\ngrowth = 0.9\n");
    assert!(e.contains("train.growth") && e.contains("0.9"), "{e}");
    let e = check("[train]\nmax_steps = { c = 0.1 }\n");
    assert!(e.contains("train.max_steps") && e.contains("0.1"), "{e}");
    assert_eq!(check("[train]\nmax_steps = 300\n"), "ok");
    let spec: ExperimentSpec = toml::from_str(
        "n_train = [16, 64]\nn_test = 20\n[model]\nL = 2\nM = 8\nM0 = 16\n\
         [train]\nlr = 60.0\nbackoff = 0.5\nbackoff_rise = 0.0\ngrowth = 1.25\nmax_steps = { c = 5, n = 0.5 }\ntarget_loss = 0.0\n\
         [measure]\ncheckpoints = 3\ngram = false\n",
    )
    .unwrap();
    let cfg = spec.check(base).unwrap();
    assert_eq!((cfg.max_steps_at(16), cfg.max_steps_at(64)), (20, 40));
    assert_eq!(cfg.checkpoint_steps(64), vec![0, 6, 40]);
    let r = run_one(&cfg, 64, 0).unwrap();
    assert_eq!((r.steps, r.stopped.as_str()), (40, "max_steps"));
    // A backoff follows exactly the steps that raised the loss; eta grows back after
    // the others, up to lr / beta^2.
    assert_eq!(r.etas.len(), r.steps);
    assert_eq!(r.etas[0], r.eta);
    let rises: Vec<usize> = (1..r.steps)
        .filter(|&s| r.losses[s] > r.losses[s - 1])
        .collect();
    assert!(!rises.is_empty(), "lr = 60 must overshoot: {:?}", r.losses);
    for s in 1..r.steps {
        let want = if rises.contains(&s) {
            r.etas[s - 1] * 0.5
        } else {
            (r.etas[s - 1] * 1.25).min(r.eta)
        };
        assert_eq!(r.etas[s], want, "step {s}");
    }
    assert_eq!(r.backoffs(), rises.len());
    // The time is the sum of the step sizes.
    let t = r.times();
    assert_eq!(t.len(), r.steps + 1);
    for c in &r.checkpoints {
        assert_eq!(c.t, t[c.step]);
    }
    let direct: f64 = r.etas.iter().sum();
    assert!(close(t[r.steps], direct, 1e-12, 0.0));
    // With backoff_rise, only rises by more than that fraction count.
    let mut tolerant = cfg.clone();
    tolerant.backoff_rise = 0.1;
    let r = run_one(&tolerant, 64, 0).unwrap();
    for s in 1..r.steps {
        let rise = r.losses[s] > 1.1 * r.losses[s - 1];
        assert_eq!(r.etas[s] < r.etas[s - 1], rise, "step {s}");
    }
    // backoff = growth = 1: a constant step.
    let mut constant = cfg.clone();
    (constant.backoff, constant.growth, constant.lr) = (1.0, 1.0, 1.0);
    let r = run_one(&constant, 16, 0).unwrap();
    assert_eq!(r.etas, vec![r.eta; r.steps]);
    assert_eq!(r.steps, 20);
    assert!(close(r.last().t, 20.0 * r.eta, 1e-12, 0.0));
}
