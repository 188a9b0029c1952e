use super::*;

/// A check of `preset` over widths x depths, 2 seeds, K = 4.
fn spec(preset: &str, widths: &[usize], depths: &[usize]) -> CoordCheckSpec {
    CoordCheckSpec {
        preset: Some(preset.into()),
        widths: Some(widths.to_vec()),
        depths: Some(depths.to_vec()),
        steps: Some(4),
        seeds: Some(2),
        ..CoordCheckSpec::default()
    }
}

fn checked(s: &CoordCheckSpec) -> CoordCheck {
    let cc = run(&s.check().unwrap()).unwrap();
    eprintln!(
        "{} vary {:?} ({:.2} s)\n{}",
        cc.config.param.name,
        cc.config.vary,
        cc.seconds,
        verdict_table(&cc)
    );
    cc
}

fn class(cc: &CoordCheck, q: Quantity, axis: &str) -> (&'static str, f64) {
    let v = cc.verdict(q, axis).unwrap();
    (v.class, v.slope)
}

/// `chizat-julia` (docs/papers.md 2.2): with B = D dloss/dh = O(1) (g_L = m_W W_U dl/df,
/// m_W = 1/D, W_U entries O(1)), the update of V_l is eta (LMD/2)(1/(LM)) g sigma^T,
/// so the branch changes by m_V dV sigma = (eta/2)(D g)(sigma.sigma/M)/L = O(1/L), and the
/// L blocks move h_l by O(1): `dh` and `df` (= m_W W_U^T dh_L, O(1)) are stable in M, D
/// and L, while the branch itself is O(1/L) (exponent -1 in depth). Widths from 64 and
/// depths from 4: below, the O(D^{-1/2}) fluctuations of the embedding's Gram matrix and
/// the O(1/L) distance to the depth limit still show (on depths 2..16 with M = 64 and D
/// from 64 to 256, `dh` has a depth exponent near -0.27).
#[test]
fn chizat_julia_feature_and_output_changes_are_stable_in_m_d_and_l() {
    for vary in ["MD", "M", "D"] {
        let mut s = spec("chizat-julia", &[64, 128, 256], &[4, 8, 16, 32]);
        s.vary = Some(vary.into());
        let cc = checked(&s);
        for q in [Quantity::Dh, Quantity::Df] {
            for axis in ["width", "depth"] {
                let (c, b) = class(&cc, q, axis);
                assert_eq!(c, "stable", "{vary}: {} in {axis}: exponent {b}", q.name());
            }
        }
        let (c, b) = class(&cc, Quantity::Branch, "depth");
        assert!(
            c == "vanishing" && (b + 1.0).abs() < 0.1,
            "{vary}: branch {b}"
        );
    }
}

/// `lazy` = `chizat-python` with the rate L M D / alpha^2: the gradient of the loss with
/// respect to V_l (and U_l) carries one factor alpha (the branch is alpha m_V V sigma),
/// so while dloss/df = O(1) the weights move by alpha / alpha^2 = 1/alpha (exponent -1)
/// and the output by alpha * (1/alpha) = O(1) (the lazy regime of "The Hidden Width of
/// Deep ResNets"). dloss/df = O(1) needs the branches' part of f(0), about
/// alpha / sqrt(L M) with this table, to be small: hence M = D >= 128, L >= 4, alpha <= 8.
/// That part still grows with alpha (here `f` has an exponent near +0.3 in alpha, and so
/// has `df`): the output keeps moving (`df` does not vanish) while the weights freeze.
#[test]
fn lazy_weight_changes_vanish_as_alpha_grows() {
    let mut s = spec("lazy", &[128, 256], &[4, 8]);
    s.alphas = Some(vec![1.0, 2.0, 4.0, 8.0]);
    let cc = checked(&s);
    for q in [Quantity::Du, Quantity::Dv] {
        let (c, b) = class(&cc, q, "alpha");
        assert!(
            c == "vanishing" && (b + 1.0).abs() < 0.3,
            "{}: exponent {b} in alpha",
            q.name()
        );
    }
    let (c, b) = class(&cc, Quantity::Df, "alpha");
    assert!(c != "vanishing" && b < 0.6, "df: exponent {b} in alpha");
}

/// `standard` (fan-in init, no multipliers, one rate eta for every tensor, W_U trained):
/// the read-out's own update is dW_U = -eta h_L (dloss/df)^T, which moves the output by
/// df = -eta |h_L|^2 dloss/df, and |h_L|^2 = D rms(h_L)^2 grows like D (every coordinate
/// is O(1)) and with depth (each block adds V sigma(p) with O(1) variance per
/// coordinate: rms(h_L)^2 ~ 1 + c L). So at a fixed rate the output change grows with the
/// width (exponent -> 1) and with the depth: the rate must shrink like 1/D (muP) or the
/// output blows up. eta = 0.002 keeps eta D rms(h)^2 below 1 on this ladder.
#[test]
fn standard_output_change_grows_with_width_and_depth() {
    let mut s = spec("standard", &[64, 128, 256], &[2, 4, 8, 16]);
    s.lr = Some(0.002);
    let cc = checked(&s);
    for axis in ["width", "depth"] {
        let (c, b) = class(&cc, Quantity::Df, axis);
        assert_eq!(c, "growing", "df: exponent {b} in {axis}");
    }
    let (_, b) = class(&cc, Quantity::Df, "width");
    assert!(b > 0.5, "df: exponent {b} in width, expected near 1");
}

/// The per-layer records follow their definitions: recomputed from h_l of every layer
/// (`History::layers`), from the weights, and from a plain backward pass
/// ([`crate::coords::backward_states`]).
#[test]
fn records_follow_their_definitions() {
    let dims = Dims {
        l: 3,
        m: 6,
        d: 5,
        din: 2,
        dout: 2,
        n: 3,
    };
    let data = Data::synthetic(2, 2, 3, 4);
    let r = Parametrization::preset("standard").unwrap().resolve(&dims);
    let w0 = Weights::<f64>::draw(&dims, &r, 3, 3, Par::Seq);
    let k_last = 2;
    let mut w = w0.clone();
    let opts = TrainOptions {
        steps: k_last + 1,
        eta: 0.05,
        layer_stats: true,
        layer_steps: vec![0, k_last],
        ..TrainOptions::default()
    };
    let h = train::train(&mut w, &data, &r, &opts, Par::Seq, &mut |_, _| {}).unwrap();
    let (nd, l_n) = (dims.d * dims.n, dims.l);
    let layer = |k: usize, l: usize| &h.layers[(k * (l_n + 1) + l) * nd..][..nd];
    let rms = |v: Vec<f64>| (v.iter().map(|x| x * x).sum::<f64>() / v.len() as f64).sqrt();
    // The weights after k_last updates: train k_last steps from w0.
    let mut wk = w0.clone();
    let o2 = TrainOptions {
        steps: k_last,
        eta: 0.05,
        ..TrainOptions::default()
    };
    train::train(&mut wk, &data, &r, &o2, Par::Seq, &mut |_, _| {}).unwrap();
    let mut ws = Workspace::new(&wk, data.n);
    let mut wf = wk.clone();
    train::forward(&mut wf, &data, &r, Activation::Tanh, &mut ws, Par::Seq, 0).unwrap();
    let b = crate::coords::backward_states(&wf, &data, &r, Activation::Tanh, &ws);
    for st in h.layer_stats.iter().filter(|s| s.step == k_last) {
        let l = st.layer;
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-10 * b.abs().max(1e-300);
        let dh = rms((0..nd).map(|i| layer(1, l)[i] - layer(0, l)[i]).collect());
        assert!(close(st.rms_dh, dh), "dh at {l}: {} vs {dh}", st.rms_dh);
        let g = rms(b[l * nd..(l + 1) * nd].to_vec());
        assert!(close(st.rms_g, g), "g at {l}: {} vs {g}", st.rms_g);
        if l < l_n {
            let db = rms((0..nd)
                .map(|i| {
                    (layer(1, l + 1)[i] - layer(1, l)[i]) - (layer(0, l + 1)[i] - layer(0, l)[i])
                })
                .collect());
            assert!(close(st.rms_dbranch, db), "dbranch at {l}");
            let blk = l * dims.m * dims.d..(l + 1) * dims.m * dims.d;
            let du = rms(wk.ut[blk.clone()]
                .iter()
                .zip(&w0.ut[blk])
                .map(|(a, b)| a - b)
                .collect());
            assert!(close(st.rms_du, du), "dU at {l}: {} vs {du}", st.rms_du);
        } else {
            assert!(st.rms_dbranch.is_nan());
        }
    }
    assert!(
        h.layer_stats
            .iter()
            .filter(|s| s.step == 0)
            .all(|s| s.rms_dh == 0.0)
    );
}

/// One thread or many: the same rows; the tidy table has one row per shape, seed, layer,
/// step and quantity, and the output directory holds the table, figures and report.
#[test]
fn rows_do_not_depend_on_threads_and_the_directory_is_complete() {
    let s = spec("chizat-julia", &[8, 16], &[2, 3]);
    let cfg = s.check().unwrap();
    let many = run(&cfg).unwrap();
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap()
        .install(|| run(&cfg).unwrap());
    assert_eq!(many.rows, one.rows);
    // Per shape, seed, step: L + 1 values of h, dh, grad; L of branch, dU, dV, dbranch;
    // one of f, df.
    let per: usize = [2usize, 3]
        .iter()
        .map(|&l| 3 * (l + 1) + 4 * l + 2)
        .sum::<usize>()
        * 2;
    assert_eq!(many.rows.len(), per * 2 * 4);
    let csv = tidy_csv(&many);
    assert_eq!(csv.lines().count(), many.rows.len() + 1);
    assert!(csv.starts_with("preset,vary,width,M,D,L,alpha,seed,layer,step,quantity,value\n"));
    let dir = std::env::temp_dir().join(format!("reslim-coordcheck-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    write(&many, &dir).unwrap();
    for f in [
        "coordcheck.csv",
        "verdict.json",
        "report.md",
        "width.png",
        "width.svg",
        "depth.png",
        "heatmap.png",
        "heatmap.svg",
        "coordcheck.json",
    ] {
        assert!(dir.join(f).is_file(), "{f}");
    }
    let report = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(report.contains("| `dh` (") && report.contains("## What `chizat-julia` does"));
    // A second write replaces it; a directory of other files is refused.
    write(&many, &dir).unwrap();
    let other = dir.join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("x.txt"), "x").unwrap();
    assert!(write(&many, &other).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_specs_name_the_field_and_value() {
    let err = |s: CoordCheckSpec| s.check().unwrap_err().to_string();
    let base = || spec("chizat-julia", &[8], &[2]);
    let e = err(CoordCheckSpec {
        widths: Some(vec![]),
        ..base()
    });
    assert!(e.contains("'widths'"), "{e}");
    let e = err(CoordCheckSpec {
        depths: Some(vec![2, 0]),
        ..base()
    });
    assert!(e.contains("'depths'") && e.contains("[2, 0]"), "{e}");
    let e = err(CoordCheckSpec {
        vary: Some("W".into()),
        ..base()
    });
    assert!(e.contains("'vary'") && e.contains("(got W)"), "{e}");
    let e = err(CoordCheckSpec {
        steps: Some(1),
        ..base()
    });
    assert!(e.contains("'steps'") && e.contains(">= 2"), "{e}");
    let e = err(CoordCheckSpec {
        lr: Some(-1.0),
        ..base()
    });
    assert!(e.contains("'lr'") && e.contains("-1"), "{e}");
    let e = err(CoordCheckSpec {
        alphas: Some(vec![1.0, 0.0]),
        ..base()
    });
    assert!(e.contains("'alphas'"), "{e}");
    let e = err(CoordCheckSpec {
        preset: Some("mup".into()),
        ..base()
    });
    assert!(e.contains("'preset'") && e.contains("mup"), "{e}");
    let e = err(CoordCheckSpec {
        activation: Some("sigmoid".into()),
        ..base()
    });
    assert!(e.contains("'activation'"), "{e}");
    let e = err(CoordCheckSpec {
        tolerance: Some(0.0),
        ..base()
    });
    assert!(e.contains("'tolerance'"), "{e}");
    let e = err(CoordCheckSpec {
        seeds: Some(0),
        ..base()
    });
    assert!(e.contains("'seeds'"), "{e}");
    assert!(toml::from_str::<CoordCheckSpec>("widths = [8]\nwidth = [8]").is_err());
    // The shipped specs parse and check.
    for f in [
        "experiments/coordcheck.toml",
        "experiments/coordcheck-quick.toml",
    ] {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(f);
        CoordCheckSpec::from_file(&p).unwrap().check().unwrap();
    }
}
