use super::*;
use std::path::Path;

const QUICK: &str = include_str!("../../experiments/quick.toml");

fn quick_with(from: &str, to: &str) -> SweepSpec {
    let text = QUICK.replacen(from, to, 1);
    assert_ne!(text, QUICK, "{from}");
    toml::from_str(&text).unwrap()
}

#[test]
fn huge_sizes_are_refused_before_the_plan_is_built() {
    let e = quick_with("reps = 3", "reps = 10000000")
        .check()
        .unwrap_err()
        .to_string();
    assert!(e.contains("'reps'") && e.contains("1000000"), "{e}");
    let e = quick_with("[4, 640, 8]", "[4, 640, 100000000000]")
        .check()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("'grid.M'") && e.contains("logspace count"),
        "{e}"
    );
    let e = quick_with("steps = 15", "steps = 1000000000000000")
        .check()
        .unwrap_err()
        .to_string();
    assert!(e.contains("'steps'") && e.contains("needs"), "{e}");
    let e = quick_with("N = 10", "N = 4611686018427387904")
        .check()
        .unwrap_err()
        .to_string();
    assert!(e.contains("'data.N'") && e.contains("overflows"), "{e}");
    // M = 2^62: the plan is small, the task's size overflows and says so.
    let sw = quick_with(
        "M = { logspace = [4, 640, 8] }",
        "M = [4611686018427387904]",
    )
    .check()
    .unwrap();
    let big = sw.plan().into_iter().find(|t| t.m == 1 << 62).unwrap();
    let e = sw.task_bytes(&big).unwrap_err().to_string();
    assert!(
        e.contains("'M'") && e.contains("4611686018427387904"),
        "{e}"
    );
    assert!(big.cost() > 1e18);
    let quick: SweepSpec = toml::from_str(QUICK).unwrap();
    let sw = quick.check().unwrap();
    let plan = sw.plan();
    let bytes: Vec<usize> = plan.iter().map(|t| sw.task_bytes(t).unwrap()).collect();
    assert!(bytes.iter().all(|&b| b > 0));
}

#[test]
fn logspace_matches_the_papers_grids() {
    assert_eq!(
        logspace(1.5, 2000.0, 20),
        vec![
            1, 2, 3, 4, 6, 9, 14, 21, 31, 45, 66, 96, 141, 206, 301, 439, 642, 937, 1369, 2000
        ]
    );
    assert_eq!(
        logspace(10.0, 500.0, 15),
        vec![
            10, 13, 17, 23, 30, 40, 53, 70, 93, 123, 163, 216, 285, 378, 500
        ]
    );
}

const BASE: &str = r#"
name = "t"
steps = 4
read_steps = [2, 3]
[data]
din = 3
dout = 2
N = 4
[grid]
L = [3]
M = [4, 8, 16]
D = [5, 10, 20]
[reference]
kind = "largest"
[report]
bootstrap = 20
"#;

/// The check's error for BASE with `from` replaced by `to` (parse errors included).
fn refused(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "{from}");
    let text = BASE.replacen(from, to, 1);
    match toml::from_str::<SweepSpec>(&text) {
        Err(e) => e.to_string(),
        Ok(spec) => spec.check().expect_err(&text).to_string(),
    }
}

#[test]
fn every_report_and_grid_setting_is_checked_before_training() {
    toml::from_str::<SweepSpec>(BASE).unwrap().check().unwrap();
    for (from, to, names) in [
        (
            "read_steps = [2, 3]",
            "read_steps = []",
            &["'read_steps'", "[]"][..],
        ),
        (
            "bootstrap = 20",
            "step = 1",
            &["'report.step'", "1", "[2, 3]"],
        ),
        ("bootstrap = 20", "p_step = 0", &["'report.p_step'", "0"]),
        ("bootstrap = 20", "p_max = 0", &["'report.p_max'", "0"]),
        ("bootstrap = 20", "p_max = -1e5", &["'report.p_max'"]),
        ("bootstrap = 20", "p_max = nan", &["'report.p_max'", "NaN"]),
        (
            "bootstrap = 20",
            "slice_m = [4, 7]",
            &["'report.slice_m'", "7", "grid.M"],
        ),
        (
            "bootstrap = 20",
            "slice_d = [6]",
            &["'report.slice_d'", "6", "grid.D"],
        ),
        (
            "bootstrap = 20",
            "bootstrap = 1",
            &["'report.bootstrap'", "1"],
        ),
        (
            "bootstrap = 20",
            "bootstrap = 10000000",
            &["'report.bootstrap'"],
        ),
        ("bootstrap = 20", "colour = 1", &["colour"]),
        (
            "M = [4, 8, 16]",
            "M = { logspace = [4, 16, 3], cout = 2 }",
            &["grid.M", "unknown key 'cout'"],
        ),
        (
            "M = [4, 8, 16]",
            "M = { logspace = [4, 16] }",
            &["grid.M", "logspace"],
        ),
        ("M = [4, 8, 16]", "M = \"big\"", &["grid.M", "big"]),
        ("D = [5, 10, 20]", "D = [5, 1.5]", &["grid.D", "1.5"]),
        (
            "kind = \"largest\"",
            "kind = \"largest\"\nL = 3",
            &["unknown field `L`"],
        ),
        (
            "kind = \"largest\"",
            "kind = \"shape\"\nL = 3\nM = 4\nD = 20\nwidth = 3",
            &["unknown field `width`"],
        ),
        (
            "kind = \"largest\"",
            "kind = \"limit\"\nrtoll = 1e-3",
            &["unknown field `rtoll`"],
        ),
        ("N = 4", "N = 4\nseeed = 2", &["seeed"]),
        (
            "steps = 4",
            "steps = 4\nparam = { alphaa = 2 }",
            &["alphaa"],
        ),
        (
            "steps = 4",
            "steps = 4\npreset = \"chizat-python\"\nparam = { alpha = 0 }",
            &["'param'", "'alpha' is 0", "U.lr"],
        ),
        (
            "steps = 4",
            "steps = 4\nparam = { alpha = -1 }",
            &["alpha", "non-negative", "-1"],
        ),
    ] {
        let e = refused(from, to);
        for n in names {
            assert!(e.contains(n), "{to}: {n} not in {e}");
        }
    }
    // alpha = 0 where nothing divides by it: a frozen branch, accepted.
    let text = BASE.replacen("steps = 4", "steps = 4\nparam = { alpha = 0 }", 1);
    toml::from_str::<SweepSpec>(&text).unwrap().check().unwrap();
    // The logspace form still reads.
    let text = BASE.replacen("M = [4, 8, 16]", "M = { logspace = [4, 16, 3] }", 1);
    let sw = toml::from_str::<SweepSpec>(&text).unwrap().check().unwrap();
    assert_eq!(sw.ms, vec![4, 8, 16]);
}

#[test]
fn the_shipped_experiments_pass_their_checks() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments");
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let p = e.path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("spirals") || p.extension().is_none_or(|x| x != "toml") {
            continue;
        }
        if name.starts_with("coordcheck") {
            let spec = crate::coordcheck::CoordCheckSpec::from_file(&p).unwrap();
            spec.check().expect(&name);
            continue;
        }
        if name.starts_with("limit") {
            let spec = crate::solve::LimitSpec::from_file(&p).unwrap();
            spec.check().expect(&name);
            continue;
        }
        let spec = SweepSpec::from_file(&p).unwrap();
        if matches!(spec.reference, ReferenceSpec::Limit { .. }) {
            // The limit's solve is slow: check the report's settings alone.
            let ms = spec.grid.m.values("grid.M").unwrap();
            let ds = spec.grid.d.values("grid.D").unwrap();
            let mut reads = spec.read_steps.clone().unwrap_or(vec![spec.steps - 1]);
            reads.sort_unstable();
            spec.report.resolve(&reads, &ms, &ds, &[]).expect(&name);
        } else {
            spec.check().expect(&name);
        }
    }
}

#[test]
fn parallelism_flags_are_bounded() {
    assert_eq!(check_jobs("--jobs", 4).unwrap(), 4);
    assert_eq!(check_jobs("--jobs", MAX_JOBS).unwrap(), MAX_JOBS);
    for bad in [0, MAX_JOBS + 1, 100_000] {
        let e = check_jobs("--jobs", bad).unwrap_err().to_string();
        assert!(e.contains("--jobs") && e.contains(&bad.to_string()), "{e}");
    }
}

#[test]
fn explicit_data_is_column_per_sample_and_checked() {
    let spec: DataSpec =
        toml::from_str("din = 2\ndout = 1\nN = 2\nx = [[1, 2], [3, 4]]\ny = [[5], [6]]").unwrap();
    let d = spec.data().unwrap();
    assert_eq!((d.x, d.y), (vec![1.0, 3.0, 2.0, 4.0], vec![5.0, 6.0]));
    let one: DataSpec = toml::from_str("din = 2\ndout = 1\nN = 1\nx = [0.5, -1]\ny = [2]").unwrap();
    assert_eq!(one.data().unwrap().x, vec![0.5, -1.0]);
    let no_y = DataSpec { y: None, ..one };
    let e = no_y.data().unwrap_err().to_string();
    assert!(e.contains("'data.y'"), "{e}");
}

/// The name becomes runs/<name>: it must stay a single directory inside runs/; an exact
/// limit reference is bounded in depth points and refused when its solve cannot fit.
#[test]
fn names_and_exact_limit_sizes_are_checked() {
    let e = refused("name = ", "name = \"../elsewhere\" #");
    assert!(e.contains("'name'") && e.contains("'/'"), "{e}");
    let e = refused("name = ", "name = \"\" #");
    assert!(e.contains("'name'") && e.contains("empty"), "{e}");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments");
    let text = std::fs::read_to_string(dir.join("paper-linear-quick.toml")).unwrap();
    let with = |extra: &str| -> String {
        let t = text.replacen("kind = \"limit\"", &format!("kind = \"limit\"\n{extra}"), 1);
        assert_ne!(t, text);
        let spec: SweepSpec = toml::from_str(&t).unwrap();
        spec.check()
            .map(|_| ())
            .map_err(|e| e.to_string())
            .unwrap_err()
    };
    let e = with("num_s = 1000000");
    assert!(
        e.contains("'reference.num_s'") && e.contains("100000"),
        "{e}"
    );
    // 1e5 depth points of a 1000-step limit: about 16 TB, beyond any machine.
    let big = text.replacen("steps = 15", "steps = 1000", 1);
    let spec: SweepSpec =
        toml::from_str(&big.replacen("kind = \"limit\"", "kind = \"limit\"\nnum_s = 100000", 1))
            .unwrap();
    let e = spec.check().unwrap_err().to_string();
    assert!(
        e.contains("'reference.num_s'") && e.contains("needs"),
        "{e}"
    );
}

/// A task whose stored weights exceed the memory budget runs on regenerated weights
/// (never stored) and gives the dense step's results to rounding; the engine is recorded,
/// and a spec may ask for any engine.
#[test]
fn a_task_too_large_for_memory_runs_regenerated_with_the_dense_results() {
    let text = BASE
        .replace("M = [4, 8, 16]", "M = [40]")
        .replace("D = [5, 10, 20]", "D = [30]");
    let mut sw = toml::from_str::<SweepSpec>(&text).unwrap().check().unwrap();
    let t = sw.plan()[0];
    let data = sw.spec.data.data().unwrap();
    let stored = sw.strategy(&t);
    assert_ne!(stored, Strategy::Regenerated);
    let stored_bytes = sw.task_bytes(&t).unwrap();
    let regen_bytes = Strategy::Regenerated.bytes(&sw, &t).unwrap();
    assert!(
        regen_bytes < stored_bytes,
        "{regen_bytes} vs {stored_bytes}"
    );
    let dense = toml::from_str::<SweepSpec>(&format!("backend = \"dense\"\n{text}"))
        .unwrap()
        .check()
        .unwrap();
    let want = run_task(&dense, &t, &data, &Default::default()).unwrap();
    sw.memory_budget = regen_bytes;
    assert_eq!(sw.strategy(&t), Strategy::Regenerated);
    let got = run_task(&sw, &t, &data, &Default::default()).unwrap();
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g.backend.as_deref(), Some("regenerated"));
        assert_eq!(w.backend.as_deref(), Some("dense"));
        for (what, a, b) in [
            ("losses", &g.losses, &w.losses),
            ("outputs", &g.outputs, &w.outputs),
            ("hidden", &g.hidden, &w.hidden),
        ] {
            assert_eq!(a.len(), b.len(), "{what}");
            let scale = b.iter().fold(0.0f64, |s, x| s.max(x.abs()));
            for (x, y) in a.iter().zip(b.iter()) {
                assert!((x - y).abs() <= 1e-11 * scale, "{what}: {x} vs {y}");
            }
        }
    }
    // Nothing fits: the stored engine stays, and the runner refuses it by its bytes.
    sw.memory_budget = 1;
    assert_eq!(sw.strategy(&t), stored);
    // Asked for by name: any engine, recorded in the provenance.
    for name in ["regenerated", "lowrank", "dense"] {
        let sw = toml::from_str::<SweepSpec>(&format!("backend = \"{name}\"\n{text}"))
            .unwrap()
            .check()
            .unwrap();
        assert_eq!(sw.strategy(&t).name(), name);
        assert_eq!(sw.task_inputs(&t)["backend"], name);
    }
    let limit = format!(
        "backend = \"regenerated\"\n{}",
        BASE.replace("kind = \"largest\"", "kind = \"limit\"")
    );
    // Against the limit the regenerated engine is allowed, the low-rank one refused.
    toml::from_str::<SweepSpec>(&limit)
        .unwrap()
        .check()
        .unwrap();
    let e = toml::from_str::<SweepSpec>(&limit.replace("\"regenerated\"", "\"lowrank\""))
        .unwrap()
        .check()
        .unwrap_err()
        .to_string();
    assert!(e.contains("'backend'") && e.contains("limit"), "{e}");
    // "auto" leaves the provenance as it was.
    let auto = toml::from_str::<SweepSpec>(&text).unwrap().check().unwrap();
    assert!(auto.task_inputs(&t).get("backend").is_none());
}

/// A small ladder against the exact linear limit (the P-scaling spec's setting).
const LADDER: &str = r#"
name = "ladder"
preset = "chizat-python"
activation = "linear"
steps = 4
lr = 0.1
reps = 2
read_steps = [3]
couplings = ["coupled"]
[data]
din = 3
dout = 3
N = 1
x = [0.48, -0.13, 0.63]
y = [0.63, 0.27, -0.06]
[grid]
shapes = "zip"
L = [4, 6, 9, 13, 20]
M = { logspace = [4, 20, 5] }
D = [5, 8, 12, 18, 27]
[reference]
kind = "limit"
[report]
step = 3
p_step = 3
"#;

#[test]
fn a_zipped_grid_is_a_ladder_of_shapes_checked_naming_the_field() {
    let sw = toml::from_str::<SweepSpec>(LADDER)
        .unwrap()
        .check()
        .unwrap();
    assert_eq!(
        sw.shapes,
        vec![(4, 4, 5), (6, 5, 8), (9, 8, 12), (13, 13, 18), (20, 20, 27)]
    );
    let plan = sw.plan();
    assert_eq!(plan.len(), 10);
    assert_eq!((plan[1].l, plan[1].m, plan[1].d), (6, 5, 8));
    // The product grid is unchanged.
    let product = LADDER.replace("shapes = \"zip\"\n", "");
    let sw = toml::from_str::<SweepSpec>(&product)
        .unwrap()
        .check()
        .unwrap();
    assert_eq!(sw.shapes.len(), 125);
    // One value goes with every shape; the order is as written; a repeated shape once.
    let text = LADDER
        .replace("L = [4, 6, 9, 13, 20]", "L = [7]")
        .replace("D = [5, 8, 12, 18, 27]", "D = [30, 20, 10, 10, 5]")
        .replace("M = { logspace = [4, 20, 5] }", "M = [1, 2, 3, 3, 4]");
    let sw = toml::from_str::<SweepSpec>(&text).unwrap().check().unwrap();
    assert_eq!(
        sw.shapes,
        vec![(7, 1, 30), (7, 2, 20), (7, 3, 10), (7, 4, 5)]
    );
    // The largest network of a ladder: the largest L M D.
    let largest = text
        .replace("kind = \"limit\"", "kind = \"largest\"")
        .replace("activation = \"linear\"", "activation = \"tanh\"")
        .replace("D = [30, 20, 10, 10, 5]", "D = [9, 20, 10, 10, 5]");
    let sw = toml::from_str::<SweepSpec>(&largest)
        .unwrap()
        .check()
        .unwrap();
    assert_eq!(sw.reference, (7, 2, 20));
    // Refusals name the field.
    let refuse = |from: &str, to: &str| {
        let t = LADDER.replace(from, to);
        assert_ne!(t, LADDER);
        match toml::from_str::<SweepSpec>(&t) {
            Err(e) => e.to_string(),
            Ok(s) => s.check().unwrap_err().to_string(),
        }
    };
    let e = refuse("D = [5, 8, 12, 18, 27]", "D = [5, 8, 12]");
    assert!(e.contains("'grid.D'") && e.contains("one length"), "{e}");
    let e = refuse("shapes = \"zip\"", "shapes = \"diagonal\"");
    assert!(e.contains("grid.shapes") && e.contains("diagonal"), "{e}");
    let e = refuse("L = [4, 6, 9, 13, 20]", "L = [4, 6, 0, 13, 20]");
    assert!(e.contains("'grid.L'") && e.contains("positive"), "{e}");
    let transfer = LADDER
        .replace("[grid]", "[grid]\nlr = [0.1, 1]")
        .replace("kind = \"limit\"", "kind = \"none\"");
    let e = toml::from_str::<SweepSpec>(&transfer)
        .unwrap()
        .check()
        .unwrap_err()
        .to_string();
    assert!(e.contains("'grid.shapes'") && e.contains("transfer"), "{e}");
}

#[test]
fn a_ladder_against_the_limit_runs_regenerated_when_dense_does_not_fit() {
    let mut sw = toml::from_str::<SweepSpec>(LADDER)
        .unwrap()
        .check()
        .unwrap();
    let t = *sw.plan().last().unwrap();
    let data = sw.spec.data.data().unwrap();
    assert_eq!(sw.strategy(&t), Strategy::Limit);
    let want = run_task(&sw, &t, &data, &Default::default()).unwrap();
    let regen = Strategy::LimitRegenerated.bytes(&sw, &t).unwrap();
    assert!(regen < Strategy::Limit.bytes(&sw, &t).unwrap());
    sw.memory_budget = regen;
    assert_eq!(sw.strategy(&t), Strategy::LimitRegenerated);
    let got = run_task(&sw, &t, &data, &Default::default()).unwrap();
    assert_eq!(got[0].backend.as_deref(), Some("limit-regenerated"));
    assert_eq!(want[0].backend.as_deref(), Some("limit"));
    let (g, w) = (
        got[0].limit.as_ref().unwrap(),
        want[0].limit.as_ref().unwrap(),
    );
    assert_eq!(g.len(), 1);
    for (a, b) in [
        (g[0].h_mad_max, w[0].h_mad_max),
        (g[0].y_rms, w[0].y_rms),
        (g[0].loss, w[0].loss),
    ] {
        assert!((a - b).abs() <= 1e-11 * b.abs(), "{a} vs {b}");
    }
    assert_eq!(got[0].losses.len(), 4);
}

#[test]
fn a_ladder_reports_its_p_exponent_over_the_whole_range_and_each_half() {
    let sw = toml::from_str::<SweepSpec>(LADDER)
        .unwrap()
        .check()
        .unwrap();
    let root = std::env::temp_dir().join(format!("reslim-ladder-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let d = SweepDir::new(&root);
    crate::sweep::execute(&sw, &d, &PipelineOptions::default(), &Silent).unwrap();
    let fits: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("fits.json")).unwrap()).unwrap();
    let spaces = fits["spaces"].as_array().unwrap();
    assert_eq!(spaces.len(), 2);
    for sp in spaces {
        let ranges: Vec<&str> = sp["fits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["range"].as_str().unwrap())
            .collect();
        assert_eq!(ranges, ["whole", "lower half", "upper half"]);
        let whole = &sp["fits"][0];
        assert_eq!(whole["shapes"], 5);
        assert_eq!(whole["fit"]["n"], 10);
        // The errors fall with P.
        let b = whole["fit"]["slope"].as_f64().unwrap();
        assert!(b < 0.0 && b > -1.0, "{b}");
        // Each half holds the middle shape (P = 9 8 12 = 864 is not the midpoint: 3 + 2).
        let (lo, hi) = (&sp["fits"][1], &sp["fits"][2]);
        assert_eq!(
            lo["shapes"].as_u64().unwrap() + hi["shapes"].as_u64().unwrap(),
            5
        );
        // The same fit by hand from the per-shape table.
        assert_eq!(sp["shapes"].as_array().unwrap().len(), 5);
    }
    let csv = std::fs::read_to_string(root.join("pscaling.csv")).unwrap();
    assert_eq!(csv.lines().count(), 11);
    assert!(csv.starts_with("space,coupling,L,M,D,P,reps,err_rms"));
    let md = std::fs::read_to_string(root.join("report.md")).unwrap();
    assert!(md.contains("upper half") && md.contains("-0.167"), "{md}");
    assert!(root.join("figures").join("pscaling.png").exists());
    // The whole-range exponent is the OLS of the tidy rows.
    let rows = collect(&sw, &d).unwrap();
    let (x, y): (Vec<f64>, Vec<f64>) = rows.iter().map(|r| (r.p, r.msq_h.sqrt())).unzip();
    let f = crate::fit::loglog_fit(&x, &y).unwrap();
    let got = spaces[0]["fits"][0]["fit"]["slope"].as_f64().unwrap();
    assert!((f.slope - got).abs() < 1e-12, "{} vs {got}", f.slope);
    let _ = std::fs::remove_dir_all(&root);
}
