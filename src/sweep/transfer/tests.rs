//! Transfer sweeps: the spec's knob axes, the plan, the optimum of a curve, divergence
//! as an outcome, and the verdicts of the presets (the papers' scaling transfers the
//! learning rate across L, M and D; `standard` does not).

use super::*;
use crate::param::Role;
use crate::sweep::spec::{Knob, SweepSpec};
use crate::sweep::{PipelineOptions, Silent, SweepDir};

const BASE: &str = r#"
name = "tr"
preset = "chizat-julia"
steps = 4
reps = 2
couplings = ["coupled"]
[data]
din = 3
dout = 2
N = 4
[grid]
L = [2, 4]
M = [4, 8]
D = [5]
lr = { logspace = [0.1, 10, 3] }
[reference]
kind = "none"
"#;

fn spec(text: &str) -> SweepSpec {
    toml::from_str(text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// The error of BASE with `from` replaced by `to` (parse or check).
fn refused(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "{from}");
    let text = BASE.replacen(from, to, 1);
    match toml::from_str::<SweepSpec>(&text) {
        Err(e) => e.to_string(),
        Ok(s) => s.check().expect_err(&text).to_string(),
    }
}

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("reslim-transfer-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn knob_axes_are_parsed_and_checked_naming_the_field() {
    let sw = spec(BASE).check().unwrap();
    assert_eq!(sw.knobs.names, ["lr"]);
    let v = &sw.knobs.values[0];
    assert_eq!(v.len(), 3);
    assert!((v[0] - 0.1).abs() < 1e-15 && (v[1] - 1.0).abs() < 1e-15 && v[2] == 10.0);
    // Dotted names of the table, lists with integers, linspace.
    let text = BASE.replace(
        "lr = { logspace = [0.1, 10, 3] }",
        "\"U.lr.c\" = [1, 0.5]\n\"V.mult.l\" = { linspace = [-1, 0, 3] }",
    );
    let sw = spec(&text).check().unwrap();
    assert_eq!(sw.knobs.names, ["U.lr.c", "V.mult.l"]);
    assert_eq!(sw.knobs.values, [vec![0.5, 1.0], vec![-1.0, -0.5, 0.0]]);
    assert_eq!(sw.knobs.points(), 6);
    // The last axis varies fastest.
    assert_eq!(sw.knobs.point(0), [0.5, -1.0]);
    assert_eq!(sw.knobs.point(4), [1.0, -0.5]);
    let (p, lr) = sw.knobs.apply(4, &sw.param, 1.0);
    assert_eq!((p.u.lr.c, p.v.mult.l, lr), (1.0, -0.5, 1.0));
    assert_eq!(p.u.lr.m, sw.param.u.lr.m);
    for (from, to, names) in [
        (
            "lr = {",
            "lrr = {",
            &["grid.lrr", "unknown grid axis", "'lr'"][..],
        ),
        (
            "lr = {",
            "\"U.lr.q\" = {",
            &["grid.U.lr.q", "unknown grid axis"],
        ),
        (
            "lr = {",
            "\"X.lr.c\" = {",
            &["grid.X.lr.c", "unknown grid axis"],
        ),
        ("[0.1, 10, 3]", "[0, 10, 3]", &["'grid.lr'", "0 < lo"]),
        (
            "[0.1, 10, 3]",
            "[1, 10, 3], cout = 2",
            &["grid.lr", "expected"],
        ),
        ("{ logspace = [0.1, 10, 3] }", "[]", &["'grid.lr'", "empty"]),
        (
            "[0.1, 10, 3]",
            "[0.1, 10, 100000000000]",
            &["'grid.lr'", "at most"],
        ),
        (
            "{ logspace = [0.1, 10, 3] }",
            "[1, \"a\"]",
            &["grid.lr", "numbers"],
        ),
        (
            "{ logspace = [0.1, 10, 3] }",
            "[-1.0]",
            &["'grid.lr'", "non-negative"],
        ),
        (
            "kind = \"none\"",
            "kind = \"largest\"",
            &["'reference'", "transfer sweep", "none"],
        ),
        (
            "kind = \"none\"",
            "kind = \"none\"\n[report]\ntransfer = \"alpha\"",
            &["'report.transfer'", "alpha"],
        ),
        (
            "kind = \"none\"",
            "kind = \"none\"\n[report]\ntolerance = 0",
            &["'report.tolerance'"],
        ),
    ] {
        let e = refused(from, to);
        for n in names {
            assert!(e.contains(n), "{to}: {e}");
        }
    }
    // A reference of none needs a knob axis.
    let e = refused("lr = { logspace = [0.1, 10, 3] }", "");
    assert!(e.contains("'reference'") && e.contains("knob axis"), "{e}");
    // Every point is checked: alpha = 0 with a table that divides by alpha.
    let text = BASE
        .replace("preset = \"chizat-julia\"", "preset = \"chizat-python\"")
        .replace("lr = { logspace = [0.1, 10, 3] }", "alpha = [0, 1]");
    let e = spec(&text).check().unwrap_err().to_string();
    assert!(e.contains("'grid'") && e.contains("alpha = 0"), "{e}");
    assert_eq!(
        "W_E.init.din".parse::<Knob>(),
        Ok(Knob::Scale {
            role: Some(Role::WE),
            what: 0,
            field: 4
        })
    );
}

#[test]
fn knob_points_share_the_shapes_seeds_and_differ_in_provenance() {
    let sw = spec(BASE).check().unwrap();
    let plan = sw.plan();
    // 2 reps x 2 L x 2 M x 1 D x 3 lr; no reference task.
    assert_eq!(plan.len(), 24);
    assert!(plan.iter().all(|t| t.knob.is_some() && !t.is_reference));
    let a = plan.iter().find(|t| t.knob == Some(0)).unwrap();
    let b = plan
        .iter()
        .find(|t| t.knob == Some(2) && (t.rep, t.l, t.m, t.d) == (a.rep, a.l, a.m, a.d))
        .unwrap();
    assert_eq!(a.id(), format!("{}-k0", a.shape_id()));
    assert_eq!(sw.task_seeds(a), sw.task_seeds(b));
    let (ia, ib) = (sw.task_inputs(a), sw.task_inputs(b));
    assert_ne!(ia["lr"], ib["lr"]);
    assert_eq!(ib["lr"], serde_json::json!(10.0));
    // A shape sweep's ids, seeds and provenance are those of before (no knob field).
    let quick: SweepSpec = toml::from_str(include_str!("../../../experiments/quick.toml")).unwrap();
    let q = quick.check().unwrap();
    let t = q.plan()[0];
    assert_eq!(t.id(), t.shape_id());
    assert!(q.task_inputs(&t)["task"].get("knob").is_none());
}

#[test]
fn the_optimum_is_the_parabolas_vertex_or_a_censored_edge() {
    // y = (x - 0.3)^2 sampled on a grid: the vertex is exact.
    let xs = [-1.0, -0.5, 0.0, 0.5, 1.0];
    let ys: Vec<f64> = xs.iter().map(|x: &f64| (x - 0.3).powi(2) + 2.0).collect();
    let (x, y, edge, interp) = curve_optimum(&xs, &ys).unwrap();
    assert!(
        (x - 0.3).abs() < 1e-12 && (y - 2.0).abs() < 1e-12,
        "{x} {y}"
    );
    assert!(edge.is_empty() && interp);
    // Uneven spacing: still exact for a parabola.
    let xs = [0.0, 0.1, 0.5, 2.0];
    let ys: Vec<f64> = xs.iter().map(|x: &f64| 3.0 * (x - 0.4).powi(2)).collect();
    assert!((curve_optimum(&xs, &ys).unwrap().0 - 0.4).abs() < 1e-12);
    // Monotone: censored at an edge.
    let ys = [4.0, 3.0, 2.0, 1.0];
    assert_eq!(curve_optimum(&xs, &ys).unwrap().2, "high");
    let ys = [1.0, 3.0, f64::INFINITY, f64::INFINITY];
    assert_eq!(curve_optimum(&xs, &ys).unwrap().2, "low");
    // Next to a divergence: the grid point, not interpolated.
    let ys = [3.0, 1.0, f64::INFINITY, f64::INFINITY];
    assert_eq!(curve_optimum(&xs, &ys), Some((0.1, 1.0, "", false)));
    assert_eq!(curve_optimum(&xs, &[f64::INFINITY; 4]), None);
}

#[test]
fn divergence_is_recorded_as_an_outcome_and_resumed() {
    // lr up to 1e6 diverges: recorded, not fatal; the report names it.
    let text = BASE.replace("[0.1, 10, 3]", "[0.1, 1e6, 4]");
    let sw = spec(&text).check().unwrap();
    let dir = tmp("diverge");
    let d = SweepDir::new(&dir);
    let opts = PipelineOptions {
        jobs: Some(2),
        ..PipelineOptions::default()
    };
    crate::sweep::execute(&sw, &d, &opts, &Silent).unwrap();
    let rows = collect_losses(&sw, &d);
    assert_eq!(rows.len(), 32);
    let div: Vec<&LossRow> = rows.iter().filter(|r| !r.diverged.is_empty()).collect();
    assert!(
        !div.is_empty()
            && div
                .iter()
                .all(|r| r.knobs[0] == 1e6 && r.loss == f64::INFINITY)
    );
    assert!(div[0].diverged.contains("step"), "{}", div[0].diverged);
    assert!(
        rows.iter()
            .filter(|r| r.knobs[0] < 1.0)
            .all(|r| r.loss.is_finite())
    );
    for f in [
        "losses.csv",
        "optima.csv",
        "transfer.csv",
        "fits.json",
        "report.md",
        "figures/transfer.png",
    ] {
        assert!(dir.join(f).is_file(), "{f}");
    }
    // Every task is finished, diverged ones included: a second run trains nothing.
    let survey = d.survey(&sw);
    assert_eq!((survey.done.len(), survey.missing.len()), (32, 0));
    // A diverged record is corrupt in a sweep with a reference.
    let mut rec = crate::sweep::TaskRecord {
        task: sw.plan()[0],
        coupling: Coupling::Coupled,
        losses: Vec::new(),
        outputs: Vec::new(),
        hidden: Vec::new(),
        seconds: 0.0,
        limit: None,
        diverged: Some("training diverged at step 1".into()),
        backend: None,
    };
    sw.check_records(&rec.task, std::slice::from_ref(&rec))
        .unwrap();
    let shape: SweepSpec = toml::from_str(
        &text
            .replace("lr = { logspace = [0.1, 1e6, 4] }", "")
            .replace("kind = \"none\"", "kind = \"largest\""),
    )
    .unwrap();
    let shape = shape.check().unwrap();
    rec.task = shape.plan()[0];
    let e = shape
        .check_records(&rec.task, std::slice::from_ref(&rec))
        .unwrap_err();
    assert!(e.contains("diverged"), "{e}");
    // Editing the knob grid makes the changed points stale, never reused.
    let edited = spec(&text.replace("[0.1, 1e6, 4]", "[0.2, 1e6, 4]"))
        .check()
        .unwrap();
    let s = d.survey(&edited);
    assert!(
        !s.stale.is_empty() && s.stale_fields().iter().any(|f| f.contains("lr")),
        "{:?}",
        s.stale_fields()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The transfer verdicts of the presets, on a small grid (K = 10, tanh, 3 seeds):
///
/// - `chizat-julia` (docs/papers.md 2.2): every block's rate is `eta L M D`-scaled
///   against multipliers `1/D` (U) and `1/(L M)` (V), so one step moves each
///   block's output by O(eta / L) whatever the shape, and the function by O(eta): the best
///   eta is the same at every L, M, D (|exponent| <= 0.25).
/// - `standard` (fan-in init, one global rate, no multipliers): a step of the read-out
///   W_U moves f by O(eta D) (D coordinates of h_L, each O(1)), a step of V_l moves the
///   branch by O(eta M), and the L branches add up without a 1/L: the largest stable
///   eta, and with it the best, falls with D, M and L. The fitted exponents are
///   negative, their intervals below -0.25 for L and D ("shrinks"); for M below 0
///   (about -0.23 on this grid, -0.4 on `experiments/transfer-standard.toml`'s
///   32..512: at small widths the read-out's O(eta D) sets the best rate).
#[test]
fn the_papers_scaling_transfers_the_learning_rate_and_standard_does_not() {
    let grid = |preset: &str, lo: &str, hi: &str| {
        format!(
            r#"
name = "{preset}"
preset = "{preset}"
activation = "tanh"
steps = 10
reps = 3
couplings = ["coupled"]
[data]
din = 5
dout = 5
N = 10
[grid]
L = [2, 4, 8]
M = [32, 64, 128]
D = [32, 64, 128]
lr = {{ logspace = [{lo}, {hi}, 13] }}
[reference]
kind = "none"
"#
        )
    };
    let drift_of = |preset: &str, lo: &str, hi: &str| {
        let sw = spec(&grid(preset, lo, hi)).check().unwrap();
        let dir = tmp(preset);
        let d = SweepDir::new(&dir);
        crate::sweep::execute(&sw, &d, &PipelineOptions::default(), &Silent).unwrap();
        let rows = collect_losses(&sw, &d);
        let (optima, shapes, drift, log_grid) = analyse(&sw, &rows, 0, 0.25);
        assert!(log_grid);
        // The grid brackets every optimum.
        assert!(
            optima.iter().all(|o| o.edge.is_empty()),
            "{preset}: censored optima"
        );
        assert_eq!(shapes.len(), 27);
        let _ = std::fs::remove_dir_all(&dir);
        drift
    };
    let cj = drift_of("chizat-julia", "1e-2", "1e2");
    assert_eq!(cj.len(), 4);
    assert_eq!(cj[3].axis, "M=D");
    for d in &cj {
        assert_eq!(d.verdict, "transfers", "chizat-julia {d:?}");
        assert!(
            d.ci_lo.abs() <= 0.25 && d.ci_hi.abs() <= 0.25,
            "chizat-julia {d:?}"
        );
    }
    let sp = drift_of("standard", "1e-4", "1e0");
    for d in &sp {
        if d.axis == "M=D" {
            // Width along the diagonal: about 1/width, the classic result.
            assert!(d.ci_hi < -0.5, "standard {d:?}");
        } else if d.axis == "M" {
            assert!(d.ci_hi < 0.0, "standard {d:?}");
        } else {
            assert_eq!(d.verdict, "shrinks", "standard {d:?}");
            assert!(d.ci_hi < -0.25, "standard {d:?}");
        }
    }
}
