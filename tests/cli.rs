//! The `reslim` binary end to end: reference reproduction, clear errors on bad input,
//! and sweeps that survive interruption.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn reslim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_reslim"))
        .args(args)
        .env("RAYON_NUM_THREADS", "2")
        .output()
        .expect("the binary runs")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("reslim-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn shared() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/reference")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn train_writes_the_reference_trajectories() {
    let out = tmp("train");
    let inputs = shared().join("chizat_julia_small/inputs");
    let o = reslim(&[
        "train",
        "--preset",
        "chizat-julia",
        "--activation",
        "tanh",
        "--init-npy",
        inputs.to_str().unwrap(),
        "--steps",
        "15",
        "--lr",
        "1",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    for name in ["losses", "outputs", "hL"] {
        let got = reslim::io::read_npy(&out.join(format!("{name}.npy"))).unwrap();
        let want =
            reslim::io::read_npy(&shared().join(format!("chizat_julia_small/expected/{name}.npy")))
                .unwrap();
        assert_eq!(got.shape, want.shape, "{name}");
        let scale = want.data.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        for (a, b) in got.data.iter().zip(&want.data) {
            assert!(
                (a - b).abs() <= 1e-10 * b.abs().max(1e-3 * scale),
                "{name}: {a} vs {b}"
            );
        }
    }
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metadata.json")).unwrap()).unwrap();
    assert_eq!(meta["config"]["param"]["name"], "chizat-julia");
    assert!(meta["resolved"]["U"]["lr"].as_f64().unwrap() > 0.0);
    assert!(
        std::fs::read_to_string(out.join("steps.csv"))
            .unwrap()
            .starts_with("step,loss")
    );
}

#[test]
fn bad_input_gets_a_clear_error_and_nonzero_exit() {
    let o = reslim(&["train", "--M", "-3", "--steps", "1"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("'M'") && stderr(&o).contains("-3"),
        "{}",
        stderr(&o)
    );

    let dir = tmp("badspec");
    let spec = dir.join("bad.toml");
    std::fs::write(&spec, "L = 5\nwidth = 3\n").unwrap();
    let o = reslim(&["train", spec.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("bad.toml") && stderr(&o).contains("width"),
        "{}",
        stderr(&o)
    );

    let o = reslim(&["train", "/no/such/spec.toml"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("/no/such/spec.toml"), "{}", stderr(&o));

    // A mis-shaped NPY file is named.
    let npy = dir.join("npy");
    std::fs::create_dir_all(&npy).unwrap();
    let src = shared().join("chizat_julia_small/inputs");
    for f in ["X", "Y", "WU", "U", "V"] {
        std::fs::copy(src.join(format!("{f}.npy")), npy.join(format!("{f}.npy"))).unwrap();
    }
    reslim::io::write_npy(&npy.join("WE.npy"), &[4, 5], &[0.0f64; 20]).unwrap();
    let o = reslim(&[
        "train",
        "--init-npy",
        npy.to_str().unwrap(),
        "--steps",
        "1",
        "--out",
        dir.join("o").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("WE.npy"), "{}", stderr(&o));

    // NaN in data is named.
    let mut x = reslim::io::read_npy(&src.join("X.npy")).unwrap();
    x.data[3] = f64::NAN;
    reslim::io::write_npy(&npy.join("X.npy"), &x.shape, &x.data).unwrap();
    std::fs::copy(src.join("WE.npy"), npy.join("WE.npy")).unwrap();
    let o = reslim(&["train", "--init-npy", npy.to_str().unwrap(), "--steps", "1"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("X.npy") && stderr(&o).contains("NaN"),
        "{}",
        stderr(&o)
    );

    // Divergence names the step.
    let o = reslim(&[
        "train",
        "--preset",
        "standard",
        "--lr",
        "1e200",
        "--steps",
        "20",
        "--L",
        "3",
        "--M",
        "4",
        "--D",
        "4",
        "--out",
        dir.join("div").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("diverged at step"), "{}", stderr(&o));
}

const SMALL_SWEEP: &str = r#"
name = "resume-test"
steps = 4
reps = 2
read_steps = [3]
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

fn task_files(dir: &Path) -> Vec<(String, Vec<u8>, std::time::SystemTime)> {
    let mut v: Vec<_> = std::fs::read_dir(dir.join("tasks"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .map(|e| {
                    let p = e.path().join("records.json");
                    let meta = std::fs::metadata(&p).unwrap();
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        std::fs::read(&p).unwrap(),
                        meta.modified().unwrap(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn an_interrupted_sweep_resumes_without_redoing_or_losing_tasks() {
    let dir = tmp("resume");
    let spec = dir.join("s.toml");
    std::fs::write(&spec, SMALL_SWEEP).unwrap();
    let out = dir.join("out");
    let (s, o) = (spec.to_str().unwrap(), out.to_str().unwrap());
    // Interrupted after 5 of the 18 tasks.
    let r = reslim(&["sweep", s, "--out", o, "--max-tasks", "5", "--jobs", "1"]);
    assert!(r.status.success(), "{}", stderr(&r));
    let first = task_files(&out);
    assert_eq!(first.len(), 5);
    std::thread::sleep(std::time::Duration::from_millis(20));
    let r = reslim(&["sweep", s, "--out", o]);
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(
        stderr(&r).contains("ran 13 task(s), skipped 5 finished"),
        "{}",
        stderr(&r)
    );
    let second = task_files(&out);
    assert_eq!(second.len(), 18);
    for f in &first {
        let again = second
            .iter()
            .find(|s| s.0 == f.0)
            .expect("finished task kept");
        assert_eq!(again.1, f.1, "{} rewritten", f.0);
        assert_eq!(again.2, f.2, "{} redone", f.0);
    }
    // A third run has nothing left to do; the report is there.
    let r = reslim(&["sweep", s, "--out", o]);
    assert!(
        stderr(&r).contains("ran 0 task(s), skipped 18 finished"),
        "{}",
        stderr(&r)
    );
    assert!(out.join("report.md").is_file() && out.join("errors.csv").is_file());
}

#[test]
fn a_killed_sweep_resumes() {
    let dir = tmp("kill");
    let spec = dir.join("s.toml");
    // Enough work per task that the kill lands mid-sweep.
    std::fs::write(
        &spec,
        SMALL_SWEEP
            .replace("M = [4, 8, 16]", "M = [40, 80, 160, 320]")
            .replace("D = [5, 10, 20]", "D = [50, 100, 200, 400]")
            .replace("steps = 4", "steps = 40")
            .replace("read_steps = [3]", "read_steps = [39]"),
    )
    .unwrap();
    let out = dir.join("out");
    let mut child = Command::new(env!("CARGO_BIN_EXE_reslim"))
        .args([
            "sweep",
            spec.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--jobs",
            "2",
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while task_files(&out).len() < 2 && t0.elapsed().as_secs() < 120 {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let before = task_files(&out);
    assert!(
        !before.is_empty() && before.len() < 32,
        "{} tasks finished before the kill",
        before.len()
    );
    let r = reslim(&[
        "sweep",
        spec.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(r.status.success(), "{}", stderr(&r));
    let after = task_files(&out);
    assert_eq!(after.len(), 32);
    for f in &before {
        let again = after.iter().find(|s| s.0 == f.0).expect("kept");
        assert_eq!((&again.1, again.2), (&f.1, f.2), "{} redone", f.0);
    }
    // No temporary directories are left behind.
    assert!(
        std::fs::read_dir(out.join("tasks"))
            .unwrap()
            .flatten()
            .all(|e| !e.file_name().to_string_lossy().starts_with('.'))
    );
}

#[test]
fn two_sweeps_into_one_directory_never_mix() {
    let dir = tmp("two");
    let spec = dir.join("s.toml");
    std::fs::write(&spec, SMALL_SWEEP).unwrap();
    let out = dir.join("out");
    let start = || {
        Command::new(env!("CARGO_BIN_EXE_reslim"))
            .args([
                "sweep",
                spec.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ])
            .args(["--jobs", "1"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (start(), start());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let mut ok = 0;
    for o in [&a, &b] {
        assert!(o.status.code().is_some(), "killed by a signal");
        if o.status.success() {
            ok += 1;
        } else {
            assert!(
                stderr(o).contains("is in use by another reslim process"),
                "{}",
                stderr(o)
            );
        }
    }
    assert!(ok >= 1);
    let r = reslim(&[
        "sweep",
        spec.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        stderr(&r).contains("ran 0 task(s), skipped 18 finished"),
        "{}",
        stderr(&r)
    );
}

#[test]
fn an_edited_spec_never_reuses_old_records() {
    let dir = tmp("edited");
    let spec = dir.join("s.toml");
    std::fs::write(&spec, SMALL_SWEEP).unwrap();
    let out = dir.join("out");
    let (s, o) = (spec.to_str().unwrap(), out.to_str().unwrap());
    let r = reslim(&["sweep", s, "--out", o]);
    assert!(r.status.success(), "{}", stderr(&r));
    let before = std::fs::read_to_string(out.join("errors.csv")).unwrap();
    std::fs::write(
        &spec,
        SMALL_SWEEP.replace("steps = 4\n", "steps = 4\nlr = 0.5\n"),
    )
    .unwrap();
    let r = reslim(&["sweep", s, "--out", o]);
    assert_eq!(r.status.code(), Some(1), "{}", stderr(&r));
    let e = stderr(&r);
    assert!(
        e.contains("18 finished task(s)")
            && e.contains("lr: 1.0 -> 0.5")
            && e.contains("--redo-stale"),
        "{e}"
    );
    // --report-only reports nothing stale either.
    let r = reslim(&["sweep", s, "--out", o, "--report-only"]);
    assert!(stderr(&r).contains("not used"), "{}", stderr(&r));
    let csv = std::fs::read_to_string(out.join("errors.csv")).unwrap_or_default();
    assert!(csv.lines().count() <= 1, "{csv}");
    let r = reslim(&["sweep", s, "--out", o, "--redo-stale"]);
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(
        stderr(&r).contains("18 stale task(s) retrained"),
        "{}",
        stderr(&r)
    );
    let after = std::fs::read_to_string(out.join("errors.csv")).unwrap();
    assert_ne!(before, after);
}

#[test]
fn train_writes_its_run_directory_as_a_unit() {
    let dir = tmp("unit");
    let run = |out: &Path, extra: &[&str]| {
        let mut args = vec!["train", "--L", "2", "--M", "3", "--D", "4", "--N", "2"];
        args.extend_from_slice(&["--din", "2", "--dout", "2", "--steps", "3"]);
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--out", out.to_str().unwrap()]);
        reslim(&args)
    };
    let out = dir.join("run");
    let r = run(&out, &[]);
    assert!(r.status.success(), "{}", stderr(&r));
    // An earlier run is replaced whole (no file of it survives).
    std::fs::write(out.join("layers.csv"), "stale").unwrap();
    let r = run(&out, &["--lr", "0.5"]);
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(!out.join("layers.csv").exists());
    let meta = std::fs::read_to_string(out.join("metadata.json")).unwrap();
    assert!(meta.contains("0.5"), "{meta}");
    // A directory of other things is refused before training, and left as it was.
    let other = dir.join("mine");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("thesis.tex"), "x").unwrap();
    let r = run(&other, &[]);
    assert_eq!(r.status.code(), Some(1));
    assert!(stderr(&r).contains("no metadata.json"), "{}", stderr(&r));
    assert_eq!(std::fs::read_dir(&other).unwrap().count(), 1);
    // No temporary directory is left beside the runs.
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

const LIMIT_SWEEP: &str = r#"
name = "limit-test"
preset = "chizat-python"
activation = "linear"
steps = 6
lr = 0.1
reps = 2
read_steps = [5]
couplings = ["coupled"]
[data]
din = 3
dout = 3
N = 1
x = [0.4800016366501795, -0.13361224046088563, 0.6258963157042639]
y = [0.627895235604804, 0.2659797617857747, -0.05539644339098687]
[grid]
L = [4, 8, 16]
M = [8, 16, 32]
D = [8, 16, 32]
[reference]
kind = "limit"
num_s = 50
[report]
bootstrap = 20
"#;

#[test]
fn a_sweep_against_the_linear_limit_reports_its_errors() {
    let dir = tmp("limit");
    let spec = dir.join("s.toml");
    std::fs::write(&spec, LIMIT_SWEEP).unwrap();
    let out = dir.join("out");
    let r = reslim(&[
        "sweep",
        spec.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(r.status.success(), "{}", stderr(&r));
    // 27 shapes x 2 repetitions, no reference task.
    assert!(stderr(&r).contains("ran 54 task(s)"), "{}", stderr(&r));
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        md.contains("linear large-D limit") && md.contains("| D/(LM) |"),
        "{md}"
    );
    assert!(md.contains("| embedding | L |"), "{md}");
    let table = std::fs::read_to_string(out.join("errors_limit.csv")).unwrap();
    let mut lines = table.lines();
    assert_eq!(
        lines.next().unwrap(),
        "coupling,rep,L,M,D,step,h_mad_max,h_mad_mean,h_rms_last,y_rms,loss,loss_limit"
    );
    assert_eq!(lines.count(), 54);
    assert!(out.join("figures/embedding_vs_M.png").is_file());
    // `report.compare`: the fits set beside another sweep's (here: itself, so every row
    // repeats its value), or a note when that sweep has no fits yet.
    for (other, found) in [(out.clone(), true), (dir.join("none"), false)] {
        let text = LIMIT_SWEEP.replace(
            "bootstrap = 20",
            &format!("bootstrap = 20\ncompare = {:?}", other.to_str().unwrap()),
        );
        std::fs::write(&spec, text).unwrap();
        let r = reslim(&[
            "sweep",
            spec.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--report-only",
        ]);
        assert!(r.status.success(), "{}", stderr(&r));
        let md = std::fs::read_to_string(out.join("report.md")).unwrap();
        assert!(md.contains("## Beside"), "{md}");
        if found {
            let row = md
                .lines()
                .find(|l| l.starts_with("| embedding joint fit: D/(LM) |"))
                .expect("a joint-fit row");
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            assert_eq!(cells[2], cells[4], "{row}");
            assert_ne!(cells[4], "NaN", "{row}");
        } else {
            assert!(md.contains("could not be read"), "{md}");
        }
    }
}

#[test]
fn a_limit_reference_needs_the_python_family_and_good_data() {
    let dir = tmp("limitbad");
    let spec = dir.join("s.toml");
    let run = |text: String| {
        std::fs::write(&spec, text).unwrap();
        let r = reslim(&["sweep", spec.to_str().unwrap(), "--plan"]);
        assert!(!r.status.success());
        stderr(&r)
    };
    // Tanh blocks: the Monte-Carlo limit, whose settings are checked; the exact solver's
    // tolerances are refused for it, and its Monte-Carlo settings for linear blocks.
    let tanh = LIMIT_SWEEP.replace("\"linear\"", "\"tanh\"");
    let e = run(tanh.replace("num_s = 50", "num_s = 50\nrtol = 1e-6"));
    assert!(e.contains("'reference.rtol'"), "{e}");
    let e = run(tanh.replace("num_s = 50", "num_s = 50\nsamples = 7"));
    assert!(e.contains("samples") && e.contains('7'), "{e}");
    let e = run(LIMIT_SWEEP.replace("num_s = 50", "num_s = 50\nreplicas = 4"));
    assert!(e.contains("'reference.replicas'"), "{e}");
    let e = run(LIMIT_SWEEP.replace("\"chizat-python\"", "\"standard\""));
    assert!(e.contains("param.W_E.trained"), "{e}");
    let e = run(LIMIT_SWEEP.replace("num_s = 50", "num_s = 1"));
    assert!(e.contains("reference.num_s") && e.contains("got 1"), "{e}");
    let e = run(LIMIT_SWEEP.replace("num_s = 50", "tol = 1"));
    assert!(e.contains("tol"), "{e}");
    let e = run(LIMIT_SWEEP.replace("x = [0.4800016366501795, ", "x = ["));
    assert!(e.contains("'data.x'") && e.contains("3 numbers"), "{e}");
    let e = run(LIMIT_SWEEP.replace("N = 1", "N = 2"));
    assert!(e.contains("'data.x'") && e.contains("N = 2"), "{e}");
}

#[test]
fn coords_draws_trajectories_and_histograms() {
    let out = tmp("coords");
    let r = reslim(&[
        "coords",
        "--L",
        "6",
        "--M",
        "40",
        "--D",
        "50",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(r.status.success(), "{}", stderr(&r));
    for f in [
        "coord_trajectory_h",
        "coord_trajectory_b",
        "coord_histogram_h",
        "coord_histogram_b",
    ] {
        for ext in ["png", "svg"] {
            assert!(out.join(format!("{f}.{ext}")).is_file(), "{f}.{ext}");
        }
    }
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("coords.json")).unwrap()).unwrap();
    // (k, l) in {0, 4, 8} x {0, L}; at l = 0, h = W_E x is the limit's H exactly.
    let stats = s["stats"].as_array().unwrap();
    assert_eq!(stats.len(), 6);
    assert!(
        stats
            .iter()
            .filter(|st| st["layer"] == 0)
            .all(|st| st["mad_h"] == 0.0)
    );
    let r = reslim(&["coords", "--D", "0", "--out", out.to_str().unwrap()]);
    assert!(
        !r.status.success() && stderr(&r).contains("'D'"),
        "{}",
        stderr(&r)
    );
    // Tanh blocks (the Julia conventions) against the Monte-Carlo limit: the same plots,
    // h = W_E x at l = 0 is still the limit's H exactly, and the output is close.
    let tanh = out.join("tanh");
    let r = reslim(&[
        "coords",
        "--activation",
        "tanh",
        "--preset",
        "chizat-julia",
        "--lr",
        "1",
        "--L",
        "10",
        "--M",
        "100",
        "--D",
        "100",
        "--samples",
        "200",
        "--replicas",
        "2",
        "--out",
        tanh.to_str().unwrap(),
    ]);
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(tanh.join("coord_trajectory_h.png").is_file());
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tanh.join("coords.json")).unwrap()).unwrap();
    let stats = s["stats"].as_array().unwrap();
    assert!(
        stats
            .iter()
            .filter(|st| st["layer"] == 0)
            .all(|st| st["mad_h"].as_f64().unwrap() < 1e-12),
        "{s}"
    );
    let f: Vec<f64> = serde_json::from_value(s["f"].clone()).unwrap();
    let fl: Vec<f64> = serde_json::from_value(s["f_limit"].clone()).unwrap();
    for (a, b) in f.iter().zip(&fl) {
        assert!((a - b).abs() < 0.3, "f {f:?} vs limit {fl:?}");
    }
    let r = reslim(&[
        "coords",
        "--activation",
        "sigmoid",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        !r.status.success() && stderr(&r).contains("--activation"),
        "{}",
        stderr(&r)
    );
}

#[test]
fn spirals_trains_reports_and_names_bad_fields() {
    let dir = tmp("spirals");
    let spec = dir.join("tiny.toml");
    std::fs::write(
        &spec,
        "name = \"tiny\"\nseeds = 2\nn_train = [16, 32]\nn_test = 100\n\
         [model]\nL = 2\nM = 8\nM0 = 32\n\
         [train]\nlr = 1.0\nmax_steps = { c = 10, n = 0.5 }\ntarget_loss = 0.0\n\
         [measure]\ncheckpoints = 3\n",
    )
    .unwrap();
    let out = dir.join("out");
    let o = reslim(&[
        "spirals",
        spec.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("test error ~ n^b"), "{stdout}");
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        report.contains("slope") && report.contains("p-value"),
        "{report}"
    );
    // Budgets round(10 sqrt(n)) = 40 and 57 steps; no run reaches a zero loss.
    assert!(report.contains("| 40 | 0/2 |"), "{report}");
    assert!(report.contains("| 57 | 0/2 |"), "{report}");
    assert!(
        report.contains("Not every run reached the target loss"),
        "{report}"
    );
    for f in [
        "test_error.png",
        "loss.png",
        "kl.png",
        "lambda_min.png",
        "runs.csv",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let csv = std::fs::read_to_string(out.join("runs.csv")).unwrap();
    assert_eq!(csv.lines().count(), 5);
    assert!(
        csv.lines().skip(1).all(|l| l.contains(",max_steps,")),
        "{csv}"
    );
    // A second invocation reuses every run.
    let o = reslim(&[
        "spirals",
        spec.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("4 of them stored"), "{report}");
    // A bad field is named, with a non-zero exit.
    std::fs::write(&spec, "[train]\nbackoff = 1.5\n").unwrap();
    let o = reslim(&[
        "spirals",
        spec.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("train.backoff") && e.contains("1.5"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `reslim` with `RESLIM_MEMORY_LIMIT` set (bytes).
fn reslim_limited(limit: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_reslim"))
        .args(args)
        .env("RAYON_NUM_THREADS", "2")
        .env("RESLIM_MEMORY_LIMIT", limit)
        .output()
        .expect("the binary runs")
}

/// A clean refusal: a non-zero exit code (no signal), an `error:` line holding every
/// one of `needles`, and no panic.
#[track_caller]
fn refused(o: &Output, needles: &[&str]) {
    let e = stderr(o);
    assert!(o.status.code().is_some(), "killed by a signal: {e}");
    assert!(!o.status.success(), "{e}");
    assert!(!e.contains("panicked"), "{e}");
    assert!(e.contains("error:"), "{e}");
    for n in needles {
        assert!(e.contains(n), "'{n}' missing from: {e}");
    }
}

/// A failure that the program reported itself: a non-zero exit code (not a signal), no
/// panic, and a message naming every one of `names`.
fn assert_refused(o: &Output, names: &[&str]) {
    let e = stderr(o);
    assert!(o.status.code().is_some(), "killed by a signal: {e}");
    assert_ne!(o.status.code(), Some(0), "exit 0: {e}");
    assert!(!e.contains("panicked"), "{e}");
    for n in names {
        assert!(e.contains(n), "'{n}' not in: {e}");
    }
}

#[test]
fn sweep_settings_are_refused_before_any_training() {
    let dir = tmp("validate");
    let cases: &[(&str, &str, &[&str])] = &[
        ("read_steps = [3]", "read_steps = []", &["read_steps", "[]"]),
        ("bootstrap = 20", "step = 2", &["report.step", "2", "[3]"]),
        ("bootstrap = 20", "p_step = 1", &["report.p_step", "1"]),
        ("bootstrap = 20", "p_max = 0", &["report.p_max", "0"]),
        ("bootstrap = 20", "p_max = -3", &["report.p_max", "-3"]),
        (
            "bootstrap = 20",
            "slice_m = [4, 5]",
            &["report.slice_m", "5"],
        ),
        ("bootstrap = 20", "slice_d = [7]", &["report.slice_d", "7"]),
        (
            "bootstrap = 20",
            "bootstrap = 0",
            &["report.bootstrap", "0"],
        ),
        (
            "M = [4, 8, 16]",
            "M = { logspace = [4, 16, 3], count = 3 }",
            &["grid.M", "count"],
        ),
        (
            "kind = \"largest\"",
            "kind = \"largest\"\nD = 40",
            &["s.toml", "unknown field `D`"],
        ),
        (
            "kind = \"largest\"",
            "kind = \"shape\"\nL = 3\nM = 16\nD = 20\nrtol = 1",
            &["s.toml", "unknown field `rtol`"],
        ),
        (
            "steps = 4",
            "steps = 4\npreset = \"chizat-python\"\nparam = { alpha = 0 }",
            &["alpha", "U.lr"],
        ),
    ];
    for (i, (from, to, names)) in cases.iter().enumerate() {
        assert!(SMALL_SWEEP.contains(from), "{from}");
        let case = dir.join(format!("c{i}"));
        std::fs::create_dir_all(&case).unwrap();
        let spec = case.join("s.toml");
        std::fs::write(&spec, SMALL_SWEEP.replacen(from, to, 1)).unwrap();
        let out = case.join("out");
        let t0 = std::time::Instant::now();
        let o = reslim(&[
            "sweep",
            spec.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_refused(&o, names);
        assert!(!out.join("tasks").exists(), "{to}: trained before refusing");
        assert!(t0.elapsed().as_secs() < 20, "{to}: slow refusal");
    }
}

#[test]
fn parallelism_flags_are_bounded() {
    let dir = tmp("jobs");
    let spec = dir.join("s.toml");
    std::fs::write(&spec, SMALL_SWEEP).unwrap();
    let out = dir.join("out");
    for jobs in ["0", "100000"] {
        let o = reslim(&[
            "sweep",
            spec.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--jobs",
            jobs,
        ]);
        assert_refused(&o, &["--jobs", jobs]);
        assert!(!out.join("tasks").exists());
    }
    let o = reslim(&["--threads", "100000", "train", "--steps", "1"]);
    assert_refused(&o, &["--threads", "100000"]);
    // More jobs than tasks run as many as there are tasks.
    let o = reslim(&[
        "sweep",
        spec.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--jobs",
        "4096",
        "--max-tasks",
        "1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("18 parallel job(s)"), "{}", stderr(&o));
}

/// The reference inputs with one array replaced.
fn npy_dir_with(dir: &Path, name: &str, shape: &[usize]) -> PathBuf {
    let src = shared().join("chizat_julia_small/inputs");
    let npy = dir.join(format!(
        "npy-{name}-{}",
        shape
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join("x")
    ));
    std::fs::create_dir_all(&npy).unwrap();
    for f in ["X", "Y", "WE", "WU", "U", "V"] {
        std::fs::copy(src.join(format!("{f}.npy")), npy.join(format!("{f}.npy"))).unwrap();
    }
    let n: usize = shape.iter().product();
    reslim::io::write_npy(&npy.join(name), shape, &vec![0.25f64; n]).unwrap();
    npy
}

#[test]
fn npy_inputs_with_a_zero_dimension_or_a_quoted_fortran_order_are_refused() {
    let dir = tmp("npy-zero");
    let u = reslim::io::read_npy(&shared().join("chizat_julia_small/inputs/U.npy")).unwrap();
    let (l, d, m) = (u.shape[0], u.shape[1], u.shape[2]);
    let cases: Vec<(&str, Vec<usize>, &str)> = vec![
        ("U.npy", vec![0, d, m], "dimension L"),
        ("U.npy", vec![l, d, 0], "dimension M"),
        ("U.npy", vec![l, 0, m], "dimension D"),
        ("Y.npy", vec![0, 4], "dimension d_out"),
        ("X.npy", vec![5, 0], "dimension N"),
    ];
    for (name, shape, dim) in cases {
        let npy = npy_dir_with(&dir, name, &shape);
        let out = dir.join("out");
        let o = reslim(&[
            "train",
            "--init-npy",
            npy.to_str().unwrap(),
            "--steps",
            "2",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_refused(&o, &["init_npy", name, dim]);
        assert!(
            !out.exists(),
            "{name} {shape:?}: a run directory was written"
        );
    }
    // fortran_order written as the string 'True' is not a Python bool.
    let npy = npy_dir_with(&dir, "X.npy", &[1, 1]);
    let x = std::fs::read(npy.join("X.npy")).unwrap();
    let hlen = u16::from_le_bytes([x[8], x[9]]) as usize;
    let header = String::from_utf8_lossy(&x[10..10 + hlen])
        .replace("'fortran_order': False", "'fortran_order': 'True'");
    let mut bytes = x[..8].to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(&x[10 + hlen..]);
    std::fs::write(npy.join("X.npy"), bytes).unwrap();
    let o = reslim(&["train", "--init-npy", npy.to_str().unwrap(), "--steps", "1"]);
    assert_refused(&o, &["X.npy", "fortran_order", "'True'"]);
}

#[test]
fn divergence_names_the_step_and_the_place() {
    let dir = tmp("diverge");
    // The loss overflows while tanh keeps h_L finite: the read-out is named.
    let o = reslim(&[
        "train",
        "--lr",
        "1e8",
        "--steps",
        "10",
        "--out",
        dir.join("a").to_str().unwrap(),
    ]);
    assert_refused(&o, &["training diverged at step"]);
    let e = stderr(&o);
    assert!(
        ["layer", "output f", "times the initial loss"]
            .iter()
            .any(|w| e.contains(w)),
        "{e}"
    );
    // A finite but absurd loss stops at the stated growth.
    let o = reslim(&[
        "train",
        "--lr",
        "1e3",
        "--out",
        dir.join("b").to_str().unwrap(),
    ]);
    assert_refused(
        &o,
        &[
            "training diverged at step",
            "times the initial loss",
            "hint: lower the learning rate ('--lr'",
        ],
    );
    // A sweep task's failure prints its cause once.
    let spec = dir.join("s.toml");
    std::fs::write(
        &spec,
        SMALL_SWEEP.replace("steps = 4", "steps = 4\nlr = 1e8"),
    )
    .unwrap();
    let o = reslim(&[
        "sweep",
        spec.to_str().unwrap(),
        "--out",
        dir.join("sw").to_str().unwrap(),
        "--jobs",
        "1",
    ]);
    assert_refused(
        &o,
        &[
            "task r",
            "failed: training diverged at step",
            "hint: lower the learning rate ('lr' in the spec)",
        ],
    );
    assert_eq!(stderr(&o).matches("diverged").count(), 1, "{}", stderr(&o));
}

#[test]
fn a_report_over_records_of_another_spec_does_not_panic() {
    let dir = tmp("stale");
    let spec = dir.join("s.toml");
    std::fs::write(&spec, SMALL_SWEEP).unwrap();
    let out = dir.join("out");
    let (s, o) = (spec.to_str().unwrap(), out.to_str().unwrap());
    let r = reslim(&["sweep", s, "--out", o, "--jobs", "1"]);
    assert!(r.status.success(), "{}", stderr(&r));
    // The same tasks, now read at two steps: the stored records hold one.
    std::fs::write(
        &spec,
        SMALL_SWEEP.replace("read_steps = [3]", "read_steps = [2, 3]"),
    )
    .unwrap();
    let r = reslim(&["sweep", s, "--out", o, "--report-only"]);
    let e = stderr(&r);
    assert!(r.status.code().is_some() && !e.contains("panicked"), "{e}");
    // Refused naming a record file, unless the stale records were set aside.
    assert!(r.status.success() || e.contains("records.json"), "{e}");
}

#[test]
fn sizes_that_overflow_or_exceed_memory_are_refused_before_allocating() {
    let dir = tmp("sizes");
    let out = dir.join("run");
    let out = out.to_str().unwrap();
    // A small run with some flags replaced.
    let train = |extra: &[&str]| {
        let mut args = vec!["train", "--out", out];
        for pair in [
            ["--L", "2"],
            ["--M", "3"],
            ["--D", "4"],
            ["--N", "2"],
            ["--din", "1"],
            ["--dout", "1"],
            ["--steps", "1"],
        ] {
            if !extra.contains(&pair[0]) {
                args.extend_from_slice(&pair);
            }
        }
        args.extend_from_slice(extra);
        reslim(&args)
    };
    // L x M x D x 8 bytes wraps to 0: this was a SIGSEGV.
    let o = train(&["--L", "2147483648", "--M", "1073741824", "--D", "1"]);
    refused(&o, &["'L' x 'M' x 'D'", "2147483648", "overflows"]);
    let o = train(&["--steps", "4611686018427387904"]);
    refused(&o, &["'steps'", "overflows"]);
    let o = train(&["--D", "4611686018427387904"]);
    refused(&o, &["'D'", "overflows"]);
    let o = train(&["--L", "4611686018427387904"]);
    refused(&o, &["'L'", "overflows"]);
    let o = train(&["--dout", "4611686018427387904"]);
    refused(&o, &["dout", "overflows"]);
    // Fits in 64 bits, not in the memory given: refused before the weights are drawn.
    let o = reslim_limited(
        "100000000",
        &[
            "train", "--L", "50", "--M", "2000", "--D", "2000", "--steps", "1", "--out", out,
        ],
    );
    refused(
        &o,
        &[
            "'L' = 50, 'M' = 2000, 'D' = 2000",
            "needs 3.2 GB",
            "0.100 GB available",
            "RESLIM_MEMORY_LIMIT",
        ],
    );
    let o = reslim_limited("lots", &["train", "--steps", "1", "--out", out]);
    refused(&o, &["RESLIM_MEMORY_LIMIT", "lots"]);
    // An NPY header claiming 2^61 rows over an empty body (2^61 x 8 wraps to 0).
    let npy = dir.join("npy");
    std::fs::create_dir_all(&npy).unwrap();
    let header = "{'descr': '<f8', 'fortran_order': False, 'shape': (2305843009213693952, 1), }";
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16 + 1).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.push(b'\n');
    std::fs::write(npy.join("X.npy"), &bytes).unwrap();
    let o = reslim(&["train", "--init-npy", npy.to_str().unwrap(), "--out", out]);
    refused(&o, &["X.npy", "overflows"]);

    // Sweeps: the plan's size, the records and the largest task are checked first.
    let sweep = |name: &str, from: &str, to: &str| {
        let text = include_str!("../experiments/quick.toml").replacen(from, to, 1);
        let spec = dir.join(format!("{name}.toml"));
        std::fs::write(&spec, text).unwrap();
        let sweep_out = dir.join(name);
        reslim(&[
            "sweep",
            spec.to_str().unwrap(),
            "--out",
            sweep_out.to_str().unwrap(),
            "--plan",
        ])
    };
    let o = sweep("m62", "{ logspace = [4, 640, 8] }", "[4611686018427387904]");
    refused(&o, &["'M'", "4611686018427387904", "overflows"]);
    let o = sweep("reps", "reps = 3", "reps = 10000000");
    refused(&o, &["'reps'", "10000000", "1000000"]);
    let o = sweep("steps", "steps = 15", "steps = 1000000000000000");
    refused(&o, &["'steps'", "needs"]);
    let o = sweep("n", "N = 10", "N = 1000000000");
    refused(&o, &["'data.N'", "needs"]);
    let o = sweep("count", "[4, 640, 8]", "[4, 640, 10000000000]");
    refused(&o, &["'grid.M'", "logspace count"]);
    // The largest task against a limit (the plan itself only reports).
    let spec = dir.join("quick.toml");
    std::fs::write(&spec, include_str!("../experiments/quick.toml")).unwrap();
    let sweep_out = dir.join("quick");
    let o = reslim_limited(
        "2M",
        &[
            "sweep",
            spec.to_str().unwrap(),
            "--out",
            sweep_out.to_str().unwrap(),
        ],
    );
    refused(&o, &["largest task needs", "RESLIM_MEMORY_LIMIT"]);
    // The refusal names the shape and every engine's bytes.
    refused(&o, &["L = 20", "M = 640", "every engine: dense", "regenerated"]);

    // Spirals: the concurrent runs' estimate against the limit.
    let spec = dir.join("spirals.toml");
    std::fs::write(
        &spec,
        "name = \"big\"\nseeds = 1\nn_train = [100000000]\nn_test = 100\n\
         [model]\nL = 2\nM = 8\nM0 = 32\n",
    )
    .unwrap();
    let o = reslim(&["spirals", spec.to_str().unwrap(), "--out", out]);
    refused(&o, &["'n_train' = 100000000", "needs"]);
    // Coords: weights, snapshots and the limit against the limit.
    let o = reslim_limited("1000000", &["coords", "--out", out]);
    refused(
        &o,
        &[
            "coords with 'L' = 200, 'M' = 1000, 'D' = 1000",
            "needs",
            "RESLIM_MEMORY_LIMIT",
        ],
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `reslim limit`: a tanh spec by Monte Carlo and a linear one by the exact ODEs write
/// their directories (outputs of shape (K, d_out, N), correlations of shape
/// (num_s, KN, KN), metadata, figures); bad specs are refused naming the field.
#[test]
fn limit_solves_tanh_and_linear_specs_and_names_bad_fields() {
    let dir = tmp("limitcmd");
    let spec = |extra: &str, solver: &str| {
        format!(
            "name = \"t\"\nsteps = 3\n{extra}\n[data]\ndin = 2\ndout = 2\nN = 2\n[solver]\n{solver}\n"
        )
    };
    let run = |name: &str, text: &str| {
        let p = dir.join(format!("{name}.toml"));
        std::fs::write(&p, text).unwrap();
        let out = dir.join(name);
        let o = reslim(&["limit", p.to_str().unwrap(), "--out", out.to_str().unwrap()]);
        (o, out)
    };
    let npy_shape = |p: &std::path::Path| reslim::io::npy_shape(p).unwrap();
    let (o, out) = run("tanh", &spec("", "num_s = 11\nsamples = 64\nreplicas = 2"));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(npy_shape(&out.join("outputs.npy")), vec![3, 2, 2]);
    assert_eq!(npy_shape(&out.join("outputs_se.npy")), vec![3, 2, 2]);
    assert_eq!(npy_shape(&out.join("losses.npy")), vec![3]);
    for g in ["gamma_h.npy", "gamma_b.npy", "lambda.npy"] {
        assert_eq!(npy_shape(&out.join(g)), vec![11, 6, 6]);
    }
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("limit.json")).unwrap()).unwrap();
    assert_eq!(meta["method"], "monte-carlo");
    assert_eq!(meta["solver"]["monte_carlo"]["samples"], 64);
    assert!(out.join("figures/outputs.png").is_file());
    assert!(out.join("figures/gamma_h_diag.svg").is_file());
    // The same spec again replaces the directory, with the same numbers (fixed seed).
    let before = std::fs::read(out.join("outputs.npy")).unwrap();
    let (o, _) = run("tanh", &spec("", "num_s = 11\nsamples = 64\nreplicas = 2"));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(out.join("outputs.npy")).unwrap(), before);
    // Linear blocks: the exact solver by default.
    let (o, out) = run("linear", &spec("activation = \"linear\"", "num_s = 21"));
    assert!(o.status.success(), "{}", stderr(&o));
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("limit.json")).unwrap()).unwrap();
    assert_eq!(meta["method"], "exact");
    assert_eq!(npy_shape(&out.join("gamma_h.npy")), vec![21, 6, 6]);
    // Bad specs.
    for (name, text, needles) in [
        ("s0", spec("", "samples = 0"), &["solver.samples", "0"][..]),
        ("r1", spec("", "replicas = 1"), &["solver.replicas"][..]),
        (
            "exact",
            spec("", "method = \"exact\""),
            &["solver.method", "linear"][..],
        ),
        ("ns", spec("", "num_s = 1"), &["solver.num_s"][..]),
        ("key", spec("", "sampels = 64"), &["sampels"][..]),
        (
            "rtol",
            spec("", "rtol = 1e-6"),
            &["solver.rtol", "exact solver"][..],
        ),
        ("preset", spec("preset = \"standard\"", ""), &["param."][..]),
        (
            "k0",
            spec("", "").replace("steps = 3", "steps = 0"),
            &["steps"][..],
        ),
        (
            "tiny-rtol",
            spec("activation = \"linear\"", "rtol = 1e-20"),
            &["solver.rtol", "2.2e-14"][..],
        ),
        (
            "dotdot",
            spec("", "").replace("name = \"t\"", "name = \"..\""),
            &["'name'", "runs/<name>"][..],
        ),
        (
            "slash",
            spec("", "").replace("name = \"t\"", "name = \"../../x\""),
            &["'name'", "'/'"][..],
        ),
    ] {
        let (o, out) = run(name, &text);
        assert_refused(&o, needles);
        assert!(!out.exists(), "{name}: an output directory was written");
    }
    // A directory of other files is not overwritten.
    let other = dir.join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("notes.txt"), "mine").unwrap();
    let p = dir.join("tanh.toml");
    let o = reslim(&[
        "limit",
        p.to_str().unwrap(),
        "--out",
        other.to_str().unwrap(),
    ]);
    assert_refused(&o, &["limit.json"]);
    assert!(other.join("notes.txt").is_file());
    let _ = std::fs::remove_dir_all(&dir);
}

/// `reslim coordcheck`: the shipped quick spec with flags over it writes the table, the
/// figures and the verdict; bad flags and spec fields are refused, naming them.
#[test]
fn coordcheck_writes_the_table_figures_and_verdict() {
    let out = tmp("coordcheck");
    let dir = out.join("cc");
    let o = reslim(&[
        "coordcheck",
        "experiments/coordcheck-quick.toml",
        "--widths",
        "8,16",
        "--depths",
        "2,4",
        "--seeds",
        "2",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("| `df` (") && stdout.contains("exponent in depth"),
        "{stdout}"
    );
    for f in [
        "coordcheck.csv",
        "verdict.json",
        "report.md",
        "width.png",
        "depth.svg",
        "heatmap.png",
    ] {
        assert!(dir.join(f).is_file(), "{f}");
    }
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("verdict.json")).unwrap()).unwrap();
    assert_eq!(v["config"]["widths"], serde_json::json!([8, 16]));
    assert!(v["verdicts"].as_array().unwrap().len() == 18);
    for (args, field) in [
        (vec!["--widths", "0,8"], "'widths'"),
        (vec!["--vary", "X"], "'vary'"),
        (vec!["--steps", "1"], "'steps'"),
        (vec!["--preset", "nope"], "'preset'"),
    ] {
        let mut a = vec!["coordcheck", "--out", dir.to_str().unwrap()];
        a.extend(args);
        let r = reslim(&a);
        assert!(
            !r.status.success() && stderr(&r).contains(field),
            "{}",
            stderr(&r)
        );
    }
    let bad = out.join("bad.toml");
    std::fs::write(&bad, "widths = [8]\nwidht = 3\n").unwrap();
    let r = reslim(&["coordcheck", bad.to_str().unwrap()]);
    assert!(
        !r.status.success() && stderr(&r).contains("widht"),
        "{}",
        stderr(&r)
    );
    let _ = std::fs::remove_dir_all(&out);
}
