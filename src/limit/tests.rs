use super::*;

mod ode_tests {
    use super::*;

    #[test]
    fn exponential_forward_and_backward() {
        let lam = [-1.5, 0.7, 3.0];
        let rhs = |_s: f64, y: &[f64], dy: &mut [f64]| {
            for i in 0..3 {
                dy[i] = lam[i] * y[i];
            }
        };
        for &(rtol, atol) in &[(1e-6, 1e-9), (1e-10, 1e-12)] {
            let mut ode = Dopri5::new(rtol, atol).unwrap();
            let grid: Vec<f64> = (0..=20).map(|i| i as f64 / 20.0).collect();
            let mut out = vec![0.0; grid.len() * 3];
            let rep = ode
                .solve_at(rhs, 0.0, 1.0, &[1.0, 2.0, -1.0], &grid, &mut out)
                .unwrap();
            let y0 = [1.0, 2.0, -1.0];
            let mut max_rel: f64 = 0.0;
            for (i, &t) in grid.iter().enumerate() {
                for c in 0..3 {
                    let exact = y0[c] * (lam[c] * t).exp();
                    max_rel = max_rel.max((out[i * 3 + c] - exact).abs() / exact.abs());
                }
            }
            assert!(
                max_rel < 50.0 * rtol,
                "forward rel err {max_rel} at rtol {rtol}"
            );
            assert!(rep.steps > 0 && rep.fn_evals >= 6 * rep.steps + 2);
            assert!(rep.max_err_estimate < 1.0);

            // Backward from the exact value at s = 1.
            let y1: Vec<f64> = (0..3).map(|c| y0[c] * lam[c].exp()).collect();
            let rep = ode.solve_at(rhs, 1.0, 0.0, &y1, &grid, &mut out).unwrap();
            let mut max_rel: f64 = 0.0;
            for (i, &t) in grid.iter().enumerate() {
                for c in 0..3 {
                    let exact = y0[c] * (lam[c] * t).exp();
                    max_rel = max_rel.max((out[i * 3 + c] - exact).abs() / exact.abs());
                }
            }
            assert!(
                max_rel < 50.0 * rtol,
                "backward rel err {max_rel} at rtol {rtol}"
            );
            assert!(rep.steps > 0);
        }
    }

    #[test]
    fn harmonic_oscillator_dense_output() {
        // y'' = −ω² y over several periods, forward then backward.
        let w = 2.0 * std::f64::consts::PI * 3.0;
        let rhs = |_s: f64, y: &[f64], dy: &mut [f64]| {
            dy[0] = y[1];
            dy[1] = -w * w * y[0];
        };
        let mut ode = Dopri5::new(1e-9, 1e-12).unwrap();
        let (sol, rep) = ode.solve_dense(rhs, 0.0, 1.0, &[1.0, 0.0]).unwrap();
        assert_eq!(sol.steps(), rep.steps);
        let mut y = [0.0; 2];
        let mut max_err: f64 = 0.0;
        for i in 0..=1000 {
            let t = i as f64 / 1000.0;
            sol.eval(t, &mut y).unwrap();
            max_err = max_err.max((y[0] - (w * t).cos()).abs());
            max_err = max_err.max((y[1] + w * (w * t).sin()).abs() / w);
        }
        assert!(max_err < 1e-7, "dense output error {max_err}");
        assert!(sol.eval(1.5, &mut y).is_err());

        let (sol, _) = ode.solve_dense(rhs, 1.0, 0.0, &[1.0, 0.0]).unwrap();
        let mut max_err: f64 = 0.0;
        for i in 0..=1000 {
            let t = i as f64 / 1000.0;
            sol.eval(t, &mut y).unwrap();
            // Started at s = 1 from (cos 0, 0): y(t) = cos(ω(t − 1)).
            max_err = max_err.max((y[0] - (w * (t - 1.0)).cos()).abs());
        }
        assert!(max_err < 1e-7, "backward dense output error {max_err}");
    }

    #[test]
    fn tolerance_controls_error_and_work() {
        let rhs = |s: f64, y: &[f64], dy: &mut [f64]| dy[0] = -2.0 * s * y[0];
        let mut prev_steps = 0;
        for &rtol in &[1e-4, 1e-7, 1e-10] {
            let mut ode = Dopri5::new(rtol, rtol * 1e-3).unwrap();
            let mut out = [0.0];
            let rep = ode
                .solve_at(rhs, 0.0, 2.0, &[1.0], &[2.0], &mut out)
                .unwrap();
            let exact = (-4.0f64).exp();
            assert!((out[0] - exact).abs() < 20.0 * rtol * exact.max(1e-3) + 1e-12);
            assert!(rep.steps > prev_steps);
            prev_steps = rep.steps;
        }
    }

    #[test]
    fn rejects_bad_tolerances_and_points() {
        let e = Dopri5::new(-1e-6, 1e-9).unwrap_err().to_string();
        assert!(e.contains("rtol") && e.contains("-0.000001"), "{e}");
        let e = Dopri5::new(1e-6, f64::NAN).unwrap_err().to_string();
        assert!(e.contains("atol") && e.contains("NaN"), "{e}");
        let mut ode = Dopri5::new(1e-6, 1e-9).unwrap();
        let rhs = |_s: f64, _y: &[f64], dy: &mut [f64]| dy[0] = 1.0;
        let mut out = [0.0; 2];
        assert!(
            ode.solve_at(rhs, 0.0, 1.0, &[0.0], &[0.5, 0.2], &mut out)
                .is_err()
        );
        assert!(
            ode.solve_at(rhs, 0.0, 1.0, &[0.0], &[0.5, 1.2], &mut out)
                .is_err()
        );
        let r = ode
            .solve_at(rhs, 0.0, 1.0, &[0.0], &[0.5, 1.0], &mut out)
            .unwrap();
        assert!((out[0] - 0.5).abs() < 1e-12 && (out[1] - 1.0).abs() < 1e-12);
        assert!(r.steps >= 1);
    }

    #[test]
    fn report_merge() {
        let mut a = SolverReport {
            steps: 3,
            rejected: 1,
            fn_evals: 26,
            max_err_estimate: 0.5,
        };
        a.merge(&SolverReport {
            steps: 2,
            rejected: 0,
            fn_evals: 14,
            max_err_estimate: 0.7,
        });
        assert_eq!((a.steps, a.rejected, a.fn_evals), (5, 1, 40));
        assert_eq!(a.max_err_estimate, 0.7);
    }
}

mod linear_tests {
    use super::*;
    use serde_json::Value;

    fn reference() -> Value {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/reference/linear_limit/reference.json"
        );
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| {
            panic!("reference file {path} is required for this test and could not be read: {e}")
        });
        serde_json::from_str(&text).expect("reference.json is not valid JSON")
    }

    fn vec1(v: &Value) -> Vec<f64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    }

    fn vec2(v: &Value) -> Vec<Vec<f64>> {
        v.as_array().unwrap().iter().map(vec1).collect()
    }

    fn max_abs_diff(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .flat_map(|(r, s)| {
                assert_eq!(r.len(), s.len());
                r.iter().zip(s).map(|(x, y)| (x - y).abs())
            })
            .fold(0.0, f64::max)
    }

    #[test]
    fn matches_reference_json() {
        let r = reference();
        let p = &r["params"];
        let params = LinearLimitParams {
            k_steps: p["K"].as_u64().unwrap() as usize,
            alpha: p["a"].as_f64().unwrap(),
            eta_u: p["eta_u"].as_f64().unwrap(),
            eta_v: p["eta_v"].as_f64().unwrap(),
            sigma_u: p["sigma_u"].as_f64().unwrap(),
            sigma_v: p["sigma_v"].as_f64().unwrap(),
            sigma_we: p["sigma_we"].as_f64().unwrap(),
            sigma_wu: p["sigma_wu"].as_f64().unwrap(),
            rtol: p["rtol"].as_f64().unwrap(),
            atol: p["atol"].as_f64().unwrap(),
            num_s: p["num_s"].as_u64().unwrap() as usize,
        };
        assert_eq!(params, LinearLimitParams::default());
        let x = vec1(&r["x"]);
        let y = vec1(&r["y"]);
        let lim = solve_linear_limit(&x, &y, &params).unwrap();
        let last = params.num_s - 1;
        let df = max_abs_diff(&lim.f, &vec2(&r["f"]));
        let dft = max_abs_diff(&lim.f, &vec2(&r["tight_tolerance"]["f"]));
        let dloss = lim
            .loss
            .iter()
            .zip(vec1(&r["half_sq_err_per_step"]))
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(df < 1e-6, "f deviates by {df}");
        assert!(dloss < 1e-6, "loss deviates by {dloss}");
        // Matrices: absolute deviation, and deviation relative to the largest entry of the
        // reference matrix (the meaningful one for Γᴮ(0) and Λ(1), whose entries are small).
        for (name, ours) in [
            ("Gamma_H_at_s1", lim.gamma_h_at(last)),
            ("Gamma_B_at_s0", lim.gamma_b_at(0)),
            ("Lambda_HB_at_s1", lim.lambda_at(last)),
            ("A_at_s1", lim.a_at(last)),
        ] {
            let reference = vec2(&r[name]);
            let abs = max_abs_diff(&ours, &reference);
            let scale = reference
                .iter()
                .flatten()
                .fold(0.0f64, |m, v| m.max(v.abs()));
            let rel = abs / scale;
            eprintln!("{name}: max |Δ| {abs:.3e}, relative to max |entry| {rel:.3e}");
            assert!(
                abs < 1e-5 && rel < 1e-5,
                "{name}: |Δ| = {abs:e}, relative {rel:e}"
            );
        }
        eprintln!(
            "f: max |Δ| {df:.3e} (tight-tolerance reference: {dft:.3e}); loss {dloss:.3e}; {:?}",
            lim.report
        );
    }
}

/// The input of the authors' linear experiments (docs/papers.md §2.5, E2).
const X_REF: [f64; 3] = [0.4800016366501795, -0.13361224046088563, 0.6258963157042639];
const Y_REF: [f64; 3] = [0.627895235604804, 0.2659797617857747, -0.05539644339098687];

/// Deterministic standard normals (SplitMix64 + Box–Muller), for the sampling tests.
struct Normals {
    state: u64,
    spare: Option<f64>,
}

impl Normals {
    fn new(seed: u64) -> Self {
        Self {
            state: seed,
            spare: None,
        }
    }

    fn uniform(&mut self) -> f64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn next(&mut self) -> f64 {
        if let Some(v) = self.spare.take() {
            return v;
        }
        let (u1, u2) = (self.uniform(), self.uniform());
        let r = (-2.0 * u1.ln()).sqrt();
        let th = 2.0 * std::f64::consts::PI * u2;
        self.spare = Some(r * th.sin());
        r * th.cos()
    }
}

/// Largest `|a − b|` over all grid points and the `(j, k)` entries with `j, k < kk`.
fn series_dev(a: &DepthSeries, b: &DepthSeries) -> f64 {
    assert_eq!((a.num_s, a.rows, a.cols), (b.num_s, b.rows, b.cols));
    a.data
        .iter()
        .zip(&b.data)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

mod coord_tests {
    use super::*;

    fn asymmetric_params() -> LinearLimitParams {
        LinearLimitParams {
            k_steps: 8,
            alpha: 1.3,
            eta_u: 0.3,
            eta_v: 0.05,
            sigma_u: 1.4,
            sigma_v: 0.7,
            sigma_we: 1.1,
            sigma_wu: 0.9,
            num_s: 60,
            rtol: 1e-9,
            atol: 1e-11,
        }
    }

    #[test]
    fn exact_moments_reproduce_correlations() {
        for params in [LinearLimitParams::default(), asymmetric_params()] {
            let lim = solve_linear_limit(&X_REF, &Y_REF, &params).unwrap();
            let basis = CoordinateBasis::new(&lim).unwrap();
            let m = basis.gaussian_moments();
            let dh = series_dev(&m.hh, &lim.gamma_h);
            let db = series_dev(&m.bb, &lim.gamma_b);
            let dl = series_dev(&m.hb, &lim.lambda);
            let de = series_dev(&m.eh, &lim.xi_h_we);
            let dw = series_dev(&m.wh, &lim.xi_h_wu);
            let wrong = CoordinateBasis::build(&lim, true)
                .unwrap()
                .gaussian_moments();
            let wb = series_dev(&wrong.bb, &lim.gamma_b);
            let wl = series_dev(&wrong.hb, &lim.lambda);
            let wh = series_dev(&wrong.hh, &lim.gamma_h);
            eprintln!(
                "adjoint: |ΔΓᴴ| {dh:.2e} |ΔΓᴮ| {db:.2e} |ΔΛ| {dl:.2e} |Δξe| {de:.2e} |Δξu| {dw:.2e}; \
                 transposed: |ΔΓᴴ| {wh:.2e} |ΔΓᴮ| {wb:.2e} |ΔΛ| {wl:.2e}"
            );
            for (name, d) in [("Γᴴ", dh), ("Γᴮ", db), ("Λ", dl), ("ξe", de), ("ξu", dw)] {
                assert!(
                    d < 2e-5,
                    "{name}: moments of the trajectories deviate by {d}"
                );
            }
            assert!(
                wb.max(wl) > 20.0 * db.max(dl),
                "the transposed convention is not detected"
            );
        }
    }

    #[test]
    fn sampled_second_moments_match_diagonals() {
        let lim = solve_linear_limit(&X_REF, &Y_REF, &LinearLimitParams::default()).unwrap();
        let n = 8000;
        let mut rng = Normals::new(12345);
        let e: Vec<f64> = (0..n * 3).map(|_| rng.next()).collect();
        let w: Vec<f64> = (0..n * 3).map(|_| rng.next()).collect();
        let tr = coordinate_trajectories(&lim, &e, &w).unwrap();
        assert_eq!((tr.n, tr.num_s, tr.n_index), (n, 100, 15));
        let mut worst: f64 = 0.0;
        for i in (0..tr.num_s).step_by(11).chain([tr.num_s - 1]) {
            for k in 0..tr.n_index {
                let (mut h2, mut b2) = (0.0, 0.0);
                for r in 0..n {
                    h2 += tr.h(r, i, k).powi(2);
                    b2 += tr.b(r, i, k).powi(2);
                }
                let (h2, b2) = (h2 / n as f64, b2 / n as f64);
                let rh = (h2 / lim.gamma_h.get(i, k, k) - 1.0).abs();
                let rb = (b2 / lim.gamma_b.get(i, k, k) - 1.0).abs();
                worst = worst.max(rh).max(rb);
                assert!(rh < 0.05, "E[H_{k}²](s_{i}) off by {rh:.3}");
                assert!(rb < 0.05, "E[B_{k}²](s_{i}) off by {rb:.3}");
            }
        }
        eprintln!("worst relative deviation of sampled second moments: {worst:.4}");
    }

    #[test]
    fn trajectories_satisfy_boundary_conditions() {
        let lim = solve_linear_limit(&X_REF, &Y_REF, &asymmetric_params()).unwrap();
        let basis = CoordinateBasis::new(&lim).unwrap();
        let e = [0.3, -1.2, 0.8, 1.0, 0.0, 0.5];
        let w = [-0.7, 0.4, 2.0, 0.1, -0.3, 0.9];
        let tr = basis.trajectories(&e, &w).unwrap();
        let last = tr.num_s - 1;
        for r in 0..2 {
            let ex: f64 = (0..3).map(|c| e[r * 3 + c] * X_REF[c]).sum();
            for k in 0..tr.n_index {
                let wg: f64 = (0..3).map(|c| w[r * 3 + c] * lim.g[k][c]).sum();
                assert!((tr.h(r, 0, k) - ex).abs() < 1e-12);
                assert!((tr.b(r, last, k) - wg).abs() < 1e-12);
            }
            for i in 0..tr.num_s {
                assert!((tr.h(r, i, 0) - ex).abs() < 1e-12);
            }
        }
        let mut z = vec![0.0; lim.k_steps() + 1];
        basis.drivers(&e[..3], &w[..3], &mut z).unwrap();
        assert!(basis.drivers(&e[..2], &w[..3], &mut z).is_err());
        assert!(basis.trajectories(&e[..5], &w).is_err());
    }
}

mod linear_more {
    use super::*;

    #[test]
    fn params_validation_names_field_and_value() {
        let base = LinearLimitParams::default();
        let cases: Vec<(LinearLimitParams, &str, &str)> = vec![
            (
                LinearLimitParams {
                    k_steps: 0,
                    ..base.clone()
                },
                "k_steps",
                "0",
            ),
            (
                LinearLimitParams {
                    rtol: -1e-5,
                    ..base.clone()
                },
                "rtol",
                "-0.00001",
            ),
            (
                LinearLimitParams {
                    atol: -1.0,
                    ..base.clone()
                },
                "atol",
                "-1",
            ),
            (
                LinearLimitParams {
                    alpha: 0.0,
                    ..base.clone()
                },
                "alpha",
                "0",
            ),
            (
                LinearLimitParams {
                    eta_v: f64::NAN,
                    ..base.clone()
                },
                "eta_v",
                "NaN",
            ),
            (
                LinearLimitParams {
                    sigma_wu: -2.0,
                    ..base.clone()
                },
                "sigma_wu",
                "-2",
            ),
            (
                LinearLimitParams {
                    num_s: 1,
                    ..base.clone()
                },
                "num_s",
                "1",
            ),
        ];
        for (p, field, value) in cases {
            let msg = p.validate().unwrap_err().to_string();
            assert!(msg.contains(field) && msg.contains(value), "{msg}");
            let msg = solve_linear_limit(&X_REF, &Y_REF, &p)
                .unwrap_err()
                .to_string();
            assert!(msg.contains(field), "{msg}");
        }
        assert!(base.validate().is_ok());
        let msg = solve_linear_limit(&[], &Y_REF, &base)
            .unwrap_err()
            .to_string();
        assert!(msg.contains('x'), "{msg}");
        let msg = solve_linear_limit(&X_REF, &[f64::INFINITY], &base).unwrap_err();
        assert!(msg.to_string().contains("inf"), "{msg}");
    }

    #[test]
    fn params_serde_defaults_and_unknown_fields() {
        let p: LinearLimitParams = serde_json::from_str(r#"{"k_steps": 4, "alpha": 2.0}"#).unwrap();
        assert_eq!(p.k_steps, 4);
        assert_eq!(p.alpha, 2.0);
        assert_eq!(p.num_s, 100);
        assert_eq!(p.rtol, 1e-5);
        let back: LinearLimitParams =
            serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
        assert!(serde_json::from_str::<LinearLimitParams>(r#"{"eta": 1.0}"#).is_err());
    }

    /// `A` from the recursion (step 8) equals the closed form
    /// `α[−c_u σ_v² M_F2ᵀ − c_v σ_u² M_G1 + c_u c_v(σ_u² M_F1ᵀ Γᴴ M_G1 + σ_v² M_F2ᵀ Γᴮ M_G2)]`
    /// derived in the module documentation, at every grid point, for α ≠ 1.
    #[test]
    fn closed_form_response_matches_recursion() {
        let p = LinearLimitParams {
            k_steps: 7,
            alpha: 1.7,
            eta_u: 0.4,
            eta_v: 0.15,
            sigma_u: 1.3,
            sigma_v: 0.8,
            sigma_we: 1.2,
            sigma_wu: 0.7,
            num_s: 30,
            ..LinearLimitParams::default()
        };
        let lim = solve_linear_limit(&X_REF, &Y_REF, &p).unwrap();
        let kk = p.k_steps;
        let (cu, cv) = (p.c_u(), p.c_v());
        let (u2, v2) = (p.sigma_u.powi(2), p.sigma_v.powi(2));
        let mut worst: f64 = 0.0;
        for i in 0..p.num_s {
            let m = |s: &DepthSeries, r: usize, c: usize| s.get(i, r, c);
            // Xᵀ Γ Y
            let tgy = |x: &DepthSeries, g: &DepthSeries, y: &DepthSeries, r: usize, c: usize| {
                let mut acc = 0.0;
                for a in 0..kk {
                    for b in 0..kk {
                        acc += m(x, a, r) * m(g, a, b) * m(y, b, c);
                    }
                }
                acc
            };
            for r in 0..kk {
                for c in 0..kk {
                    let closed = p.alpha
                        * (-cu * v2 * m(&lim.m_f2, c, r) - cv * u2 * m(&lim.m_g1, r, c)
                            + cu * cv
                                * (u2 * tgy(&lim.m_f1, &lim.gamma_h, &lim.m_g1, r, c)
                                    + v2 * tgy(&lim.m_f2, &lim.gamma_b, &lim.m_g2, r, c)));
                    worst = worst.max((closed - m(&lim.a, r, c)).abs());
                }
            }
        }
        assert!(worst < 1e-13, "closed form and recursion differ by {worst}");
    }

    #[test]
    fn structural_invariants() {
        let p = LinearLimitParams {
            k_steps: 6,
            num_s: 40,
            ..LinearLimitParams::default()
        };
        let lim = solve_linear_limit(&X_REF, &Y_REF, &p).unwrap();
        let nx2: f64 = X_REF.iter().map(|v| v * v).sum();
        let last = p.num_s - 1;
        for i in 0..p.num_s {
            // Pass 0: the residual branch vanishes at initialisation.
            assert_eq!(lim.gamma_h.get(i, 0, 0), nx2);
            for j in 0..p.k_steps {
                for k in 0..p.k_steps {
                    assert_eq!(lim.gamma_h.get(i, j, k), lim.gamma_h.get(i, k, j));
                    assert_eq!(lim.gamma_b.get(i, j, k), lim.gamma_b.get(i, k, j));
                }
                // Λ_kk is constant in depth.
                assert_eq!(lim.lambda.get(i, j, j), lim.lambda.get(0, j, j));
            }
        }
        for k in 0..p.k_steps {
            assert!((lim.gamma_h.get(0, k, k) - nx2).abs() < 1e-12);
            let g2: f64 = lim.g[k].iter().map(|v| v * v).sum();
            assert!((lim.gamma_b.get(last, k, k) - g2).abs() < 1e-12);
            assert!((lim.loss[k] - 0.5 * g2).abs() < 1e-15);
            assert_eq!(lim.f[k], lim.xi_h_wu.row(last, k));
            // ⟨h_k, B_k⟩ at s = 1 is f_k·g_k (σ_wu = 1).
            let fg: f64 = lim.f[k].iter().zip(&lim.g[k]).map(|(a, b)| a * b).sum();
            assert!((lim.lambda.get(last, k, k) - fg).abs() < 1e-5);
        }
        // GD decreases the loss on this problem.
        assert!(lim.loss.windows(2).all(|w| w[1] < w[0]));
        assert_eq!(lim.f[0], vec![0.0; 3]);
        let r = lim.report;
        assert!(r.steps > 0 && r.fn_evals > 6 * r.steps && r.max_err_estimate < 1.0);
    }
}

mod multi_tests {
    use super::*;

    fn samples(n: usize, seed: u64) -> (Vec<Vec<f64>>, Vec<Vec<f64>>) {
        let mut rng = Normals::new(seed);
        let x: Vec<Vec<f64>> = (0..n)
            .map(|_| {
                let v: Vec<f64> = (0..3).map(|_| rng.next()).collect();
                let norm = v.iter().map(|a| a * a).sum::<f64>().sqrt();
                v.iter().map(|a| 0.8 * a / norm).collect()
            })
            .collect();
        let y = (0..n)
            .map(|_| (0..2).map(|_| 0.5 * rng.next()).collect())
            .collect();
        (x, y)
    }

    fn params() -> LinearLimitParams {
        LinearLimitParams {
            k_steps: 6,
            alpha: 1.2,
            eta_u: 0.25,
            eta_v: 0.1,
            sigma_u: 1.2,
            sigma_v: 0.9,
            sigma_we: 1.1,
            sigma_wu: 0.8,
            num_s: 40,
            ..LinearLimitParams::default()
        }
    }

    #[test]
    fn multi_n1_reduces_exactly() {
        for p in [LinearLimitParams::default(), params()] {
            let single = solve_linear_limit(&X_REF, &Y_REF, &p).unwrap();
            let multi = solve_linear_limit_multi(&[X_REF.to_vec()], &[Y_REF.to_vec()], &p).unwrap();
            assert_eq!(multi.n_samples, 1);
            for k in 0..p.k_steps {
                assert_eq!(multi.f[k][0], single.f[k]);
                assert_eq!(multi.g[k][0], single.g[k]);
            }
            assert_eq!(multi.loss, single.loss);
            for (name, a, b) in [
                ("Gamma_H", &multi.gamma_h, &single.gamma_h),
                ("Gamma_B", &multi.gamma_b, &single.gamma_b),
                ("Lambda", &multi.lambda, &single.lambda),
                ("A", &multi.a, &single.a),
                ("xi_H_We", &multi.xi_h_we, &single.xi_h_we),
                ("xi_H_Wu", &multi.xi_h_wu, &single.xi_h_wu),
                ("xi_B_We", &multi.xi_b_we, &single.xi_b_we),
                ("xi_B_Wu", &multi.xi_b_wu, &single.xi_b_wu),
                ("M_F1", &multi.m_f1, &single.m_f1),
                ("M_F2", &multi.m_f2, &single.m_f2),
                ("M_G1", &multi.m_g1, &single.m_g1),
                ("M_G2", &multi.m_g2, &single.m_g2),
                ("W_h", &multi.w_h, &single.w_h),
                ("W_b", &multi.w_b, &single.w_b),
            ] {
                assert!(a == b, "{name} differs: max |Δ| = {:e}", series_dev(a, b));
            }
            assert_eq!(multi.report, single.report);
        }
    }

    /// Two copies of one sample train exactly like the sample alone (the loss averages).
    #[test]
    fn duplicated_sample_matches_single() {
        let p = params();
        let (x, y) = samples(1, 7);
        let single = solve_linear_limit(&x[0], &y[0], &p).unwrap();
        let x2 = vec![x[0].clone(), x[0].clone()];
        let y2 = vec![y[0].clone(), y[0].clone()];
        let multi = solve_linear_limit_multi(&x2, &y2, &p).unwrap();
        let mut worst: f64 = 0.0;
        for k in 0..p.k_steps {
            for n in 0..2 {
                for (a, b) in multi.f[k][n].iter().zip(&single.f[k]) {
                    worst = worst.max((a - b).abs());
                }
            }
            worst = worst.max((multi.loss[k] - single.loss[k]).abs());
            let (a, b) = (multi.index(k, 0), multi.index(k, 1));
            let last = p.num_s - 1;
            worst =
                worst.max((multi.gamma_h.get(last, a, b) - single.gamma_h.get(last, k, k)).abs());
        }
        assert!(worst < 1e-9, "duplicated samples deviate by {worst}");
    }

    #[test]
    fn sample_order_is_irrelevant() {
        let p = params();
        let (x, y) = samples(3, 11);
        let perm = [2usize, 0, 1];
        let xp: Vec<Vec<f64>> = perm.iter().map(|&i| x[i].clone()).collect();
        let yp: Vec<Vec<f64>> = perm.iter().map(|&i| y[i].clone()).collect();
        let a = solve_linear_limit_multi(&x, &y, &p).unwrap();
        let b = solve_linear_limit_multi(&xp, &yp, &p).unwrap();
        let mut worst: f64 = 0.0;
        for k in 0..p.k_steps {
            for (j, &i) in perm.iter().enumerate() {
                for (u, v) in a.f[k][i].iter().zip(&b.f[k][j]) {
                    worst = worst.max((u - v).abs());
                }
            }
            worst = worst.max((a.loss[k] - b.loss[k]).abs());
        }
        assert!(worst < 1e-8, "permuted samples deviate by {worst}");
        assert!(a.loss[p.k_steps - 1] < a.loss[0]);
    }

    /// The Gaussian moments of the per-coordinate trajectories reproduce every block of the
    /// `KN × KN` correlations, cross-sample and within-step blocks included.
    #[test]
    fn multi_exact_moments_reproduce_correlations() {
        // The residual at tight tolerances is the O(1/num_s²) difference between the two
        // interpolation conventions (products interpolated vs factors interpolated).
        for (n, rtol, num_s, tol) in [(2usize, 1e-5, 40, 3e-5), (3, 1e-9, 200, 1e-6)] {
            let p = LinearLimitParams {
                rtol,
                atol: rtol * 1e-2,
                num_s,
                ..params()
            };
            let (x, y) = samples(n, 3 + n as u64);
            let lim = solve_linear_limit_multi(&x, &y, &p).unwrap();
            let basis = CoordinateBasis::from_multi(&lim).unwrap();
            assert_eq!(basis.n_index(), p.k_steps * n);
            let m = basis.gaussian_moments();
            let devs = [
                ("Γᴴ", series_dev(&m.hh, &lim.gamma_h)),
                ("Γᴮ", series_dev(&m.bb, &lim.gamma_b)),
                ("Λ", series_dev(&m.hb, &lim.lambda)),
                ("ξe", series_dev(&m.eh, &lim.xi_h_we)),
                ("ξu", series_dev(&m.wh, &lim.xi_h_wu)),
            ];
            eprintln!("N = {n}, rtol {rtol:e}: {devs:?}");
            for (name, d) in devs {
                assert!(d < tol, "N = {n}: {name} moments deviate by {d}");
            }
            // Trajectories of explicit rows have the right boundary values.
            let e = [0.3, -1.0, 0.5];
            let w = [1.5, -0.2];
            let tr = basis.trajectories(&e, &w).unwrap();
            let last = p.num_s - 1;
            for k in 0..p.k_steps {
                for (s, xs) in x.iter().enumerate() {
                    let a = lim.index(k, s);
                    let ex: f64 = e.iter().zip(xs).map(|(u, v)| u * v).sum();
                    let wg: f64 = w.iter().zip(&lim.g[k][s]).map(|(u, v)| u * v).sum();
                    assert!((tr.h(0, 0, a) - ex).abs() < 1e-12);
                    assert!((tr.b(0, last, a) - wg).abs() < 1e-12);
                }
            }
        }
    }

    /// The step recursion for `A` (blocks of `multi.rs`) equals the closed form with
    /// `c̄ = c/N` over the full `KN × KN` matrix.
    #[test]
    fn multi_closed_form_response() {
        let p = params();
        let n = 2;
        let (x, y) = samples(n, 5);
        let lim = solve_linear_limit_multi(&x, &y, &p).unwrap();
        let kn = p.k_steps * n;
        let (cu, cv) = (p.c_u() / n as f64, p.c_v() / n as f64);
        let (u2, v2) = (p.sigma_u.powi(2), p.sigma_v.powi(2));
        let mut worst: f64 = 0.0;
        for i in (0..p.num_s).step_by(7) {
            let m = |s: &DepthSeries, r: usize, c: usize| s.get(i, r, c);
            let tgy = |x: &DepthSeries, g: &DepthSeries, y: &DepthSeries, r: usize, c: usize| {
                let mut acc = 0.0;
                for a in 0..kn {
                    for b in 0..kn {
                        acc += m(x, a, r) * m(g, a, b) * m(y, b, c);
                    }
                }
                acc
            };
            for r in 0..kn {
                for c in 0..kn {
                    let closed = p.alpha
                        * (-cu * v2 * m(&lim.m_f2, c, r) - cv * u2 * m(&lim.m_g1, r, c)
                            + cu * cv
                                * (u2 * tgy(&lim.m_f1, &lim.gamma_h, &lim.m_g1, r, c)
                                    + v2 * tgy(&lim.m_f2, &lim.gamma_b, &lim.m_g2, r, c)));
                    worst = worst.max((closed - m(&lim.a, r, c)).abs());
                }
            }
        }
        assert!(worst < 1e-13, "closed form and recursion differ by {worst}");
    }

    #[test]
    fn multi_rejects_bad_inputs() {
        let p = params();
        let (x, y) = samples(2, 1);
        assert!(solve_linear_limit_multi(&[], &[], &p).is_err());
        let e = solve_linear_limit_multi(&x, &y[..1], &p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected length 2, got 1"), "{e}");
        let bad = vec![x[0].clone(), vec![1.0]];
        assert!(solve_linear_limit_multi(&bad, &y, &p).is_err());
        let p0 = LinearLimitParams { k_steps: 0, ..p };
        let e = solve_linear_limit_multi(&x, &y, &p0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("k_steps"), "{e}");
    }
}
