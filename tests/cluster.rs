//! Sweeps on a cluster without a cluster: shard processes sharing one directory at once
//! (duplicates included) give the errors of one process; the shared and exclusive locks;
//! duplicate task writes keep the first; the Slurm scripts (`--slurm --dry-run`), run by
//! hand element by element, give the same errors; no Slurm gives a clear error. The real
//! Slurm is `scripts/slurm-e2e.sh`.

use reslim::sweep::{self, SweepDir, SweepSpec, cluster};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const SPEC: &str = r#"
name = "shards-test"
steps = 6
reps = 2
read_steps = [2, 5]
[data]
din = 3
dout = 2
N = 4
[grid]
L = [4]
M = [8, 16, 32, 64]
D = [8, 16, 32, 64]
[reference]
kind = "largest"
[report]
bootstrap = 20
"#;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_reslim"));
    c.env("RAYON_NUM_THREADS", "1");
    c
}

fn reslim(args: &[&str]) -> Output {
    bin().args(args).output().expect("the binary runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("reslim-cluster-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn setup(name: &str) -> (PathBuf, String) {
    let root = tmp(name);
    let spec = root.join("s.toml");
    std::fs::write(&spec, SPEC).unwrap();
    (root, spec.to_string_lossy().into_owned())
}

/// No temporaries left in `dir/tasks`.
fn no_temps(out: &Path) {
    for e in std::fs::read_dir(out.join("tasks")).unwrap().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        assert!(!n.starts_with('.'), "temporary {n} left behind");
    }
}

/// The errors of one unsharded process.
fn single(root: &Path, spec: &str) -> Vec<u8> {
    let one = root.join("one");
    let o = reslim(&["sweep", spec, "--out", one.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    std::fs::read(one.join("errors.csv")).unwrap()
}

#[test]
fn shards_partition_the_plan_the_same_way_every_time() {
    let sw = SpecText::check();
    let plan = sw.plan();
    for n in [1, 3, 4, 40] {
        let mut all: Vec<String> = (0..n)
            .flat_map(|j| cluster::shard_tasks(&sw, reslim::shard::Shard::new(j, n).unwrap()))
            .map(|t| t.id())
            .collect();
        all.sort();
        let mut want: Vec<String> = plan.iter().map(|t| t.id()).collect();
        want.sort();
        assert_eq!(all, want, "{n} shards");
    }
    // Balanced: with 4 shards no shard has more than the largest task above the mean.
    let costs: Vec<f64> = (0..4)
        .map(|j| {
            cluster::shard_tasks(&sw, reslim::shard::Shard::new(j, 4).unwrap())
                .iter()
                .map(|t| t.cost())
                .sum()
        })
        .collect();
    let max_task = plan.iter().map(|t| t.cost()).fold(0.0, f64::max);
    let mean = costs.iter().sum::<f64>() / 4.0;
    for c in &costs {
        assert!((c - mean).abs() <= max_task, "{costs:?}");
    }
}

struct SpecText;
impl SpecText {
    fn check() -> sweep::Sweep {
        toml::from_str::<SweepSpec>(SPEC).unwrap().check().unwrap()
    }
}

#[test]
fn four_shard_processes_at_once_give_the_errors_of_one() {
    let (root, spec) = setup("four");
    let want = single(&root, &spec);
    let out = root.join("sharded");
    let o = out.to_str().unwrap();
    let r = reslim(&["sweep", &spec, "--out", o, "--status", "--shards", "4"]);
    assert_eq!(r.status.code(), Some(1), "{}", text(&r.stderr));
    assert!(
        text(&r.stderr).contains("32 of 32 tasks are missing, in shard(s) 0, 1, 2, 3 of 4"),
        "{}",
        text(&r.stderr)
    );
    // Shards 0-3 and a second copy of shard 1, all started at once.
    let children: Vec<_> = ["0/4", "1/4", "2/4", "3/4", "1/4"]
        .iter()
        .map(|s| {
            bin()
                .args(["sweep", &spec, "--out", o, "--shard", s, "--jobs", "1"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let r = c.wait_with_output().unwrap();
        assert!(r.status.success(), "{}", text(&r.stderr));
        assert!(
            text(&r.stdout).contains("tasks finished"),
            "{}",
            text(&r.stdout)
        );
    }
    no_temps(&out);
    assert!(!out.join("errors.csv").exists(), "a shard reported");
    let r = reslim(&["sweep", &spec, "--out", o, "--status", "--shards", "4"]);
    assert!(r.status.success(), "{}", text(&r.stderr));
    let status = text(&r.stdout);
    assert!(status.contains("all 32 tasks finished"), "{status}");
    assert_eq!(status.matches("finished").count(), 5, "{status}");
    // Every process logged its run in a file of its own.
    let logs = std::fs::read_dir(out.join(sweep::runner::RUN_LOG))
        .unwrap()
        .count();
    assert_eq!(logs, 5);
    let r = reslim(&["sweep", &spec, "--out", o, "--report-only"]);
    assert!(r.status.success(), "{}", text(&r.stderr));
    assert_eq!(std::fs::read(out.join("errors.csv")).unwrap(), want);
    assert!(
        std::fs::read_to_string(out.join("report.md"))
            .unwrap()
            .contains("over 5 invocation(s)")
    );
    // Running a finished shard again does nothing.
    let r = reslim(&["sweep", &spec, "--out", o, "--shard", "2/4"]);
    assert!(r.status.success(), "{}", text(&r.stderr));
    assert!(
        text(&r.stdout).contains("ran 0 task(s)"),
        "{}",
        text(&r.stdout)
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn shards_share_the_directory_and_exclude_a_whole_sweep() {
    let root = tmp("locks");
    let sw = SpecText::check();
    let (a, b, c) = (
        SweepDir::new(&root),
        SweepDir::new(&root),
        SweepDir::new(&root),
    );
    a.lock_shared().unwrap();
    b.lock_shared().unwrap();
    let e = c.lock().unwrap_err().to_string();
    assert!(e.contains("in use by another reslim process"), "{e}");
    // A whole sweep is refused while shards work; a shard of it is not.
    let opts = sweep::PipelineOptions {
        jobs: Some(1),
        ..Default::default()
    };
    let e = sweep::execute(&sw, &c, &opts, &sweep::Silent)
        .unwrap_err()
        .to_string();
    assert!(e.contains("in use by another reslim process"), "{e}");
    let shard = sweep::PipelineOptions {
        shard: Some(reslim::shard::Shard::new(3, 4).unwrap()),
        ..opts.clone()
    };
    let d = SweepDir::new(&root);
    match sweep::execute(&sw, &d, &shard, &sweep::Silent).unwrap() {
        sweep::Outcome::Shard { run, plan } => {
            assert_eq!(run.ran, plan.tasks);
            assert!(run.ran > 0 && run.ran < 32);
        }
        _ => panic!("a shard run collects nothing"),
    }
    drop((a, b, d));
    // With the shards gone, the exclusive lock is free; and a shard refuses to report.
    c.lock().unwrap();
    let e = sweep::execute(
        &sw,
        &SweepDir::new(&root),
        &sweep::PipelineOptions {
            report_only: true,
            ..shard
        },
        &sweep::Silent,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("--report-only"), "{e}");
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_duplicate_task_write_keeps_the_first_and_replaces_only_unusable_ones() {
    let root = tmp("dup");
    let sw = SpecText::check();
    let dir = SweepDir::new(&root);
    let t = sw.plan()[0];
    let data = sw.spec.data.data().unwrap();
    let recs = sweep::run_task(&sw, &t, &data, &Default::default()).unwrap();
    dir.write_task(&sw, &t, &recs).unwrap();
    let path = dir.task_dir(&t).join("records.json");
    let first = std::fs::read(&path).unwrap();
    // A later duplicate (here with other numbers, to tell them apart) is dropped.
    let mut other = recs.clone();
    other[0].losses[0] += 1.0;
    dir.write_task(&sw, &t, &other).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), first);
    // A corrupt directory is replaced whole.
    std::fs::write(&path, b"[").unwrap();
    std::fs::write(dir.task_dir(&t).join("junk"), b"x").unwrap();
    dir.write_task(&sw, &t, &recs).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), first);
    assert!(!dir.task_dir(&t).join("junk").exists());
    no_temps(&root);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn the_slurm_scripts_run_by_hand_give_the_errors_of_one_process() {
    let (root, spec) = setup("slurm");
    let want = single(&root, &spec);
    let out = root.join("array");
    let o = out.to_str().unwrap();
    let r = reslim(&[
        "sweep",
        &spec,
        "--out",
        o,
        "--slurm",
        "--dry-run",
        "--shards",
        "3",
        "--max-parallel",
        "2",
        "--partition",
        "short",
        "--account",
        "proj-1",
        "--jobs",
        "2",
        "--sbatch-arg=--qos=low",
        "--setup",
        "export RESLIM_SETUP_RAN=1",
    ]);
    assert!(r.status.success(), "{}", text(&r.stderr));
    let array = std::fs::read_to_string(out.join("slurm/array.sbatch")).unwrap();
    for want in [
        "#!/bin/bash\n",
        "#SBATCH --array=0-2%2\n",
        "#SBATCH --cpus-per-task=2\n",
        "#SBATCH --mem=",
        "#SBATCH --time=0-00:",
        "#SBATCH --partition=short\n",
        "#SBATCH --account=proj-1\n",
        "#SBATCH --qos=low\n",
        &format!("#SBATCH --output={o}/slurm/logs/%A_%a.out\n"),
        "export RESLIM_SETUP_RAN=1\n",
        "--shard \"${SLURM_ARRAY_TASK_ID}/3\" --jobs 2\n",
    ] {
        assert!(array.contains(want), "{want:?} not in\n{array}");
    }
    let collect = std::fs::read_to_string(out.join("slurm/collect.sbatch")).unwrap();
    for want in ["--status --shards 3", "--report-only", "--slurm"] {
        assert!(collect.contains(want), "{want:?} not in\n{collect}");
    }
    assert!(out.join("slurm/logs").is_dir());
    // Element 1 by hand, as Slurm would run it; the resubmission covers 0 and 2 only.
    let element = |j: &str| {
        let r = Command::new("bash")
            .arg(out.join("slurm/array.sbatch"))
            .env("SLURM_ARRAY_TASK_ID", j)
            .env("RAYON_NUM_THREADS", "1")
            .output()
            .unwrap();
        assert!(r.status.success(), "element {j}: {}", text(&r.stderr));
    };
    element("1");
    let r = reslim(&["sweep", &spec, "--out", o, "--slurm", "--dry-run"]);
    assert!(r.status.success(), "{}", text(&r.stderr));
    let array = std::fs::read_to_string(out.join("slurm/array.sbatch")).unwrap();
    assert!(array.contains("#SBATCH --array=0,2\n"), "{array}");
    // The collect script names what is missing and fails; then, complete, it reports.
    let collect = || {
        Command::new("bash")
            .arg(out.join("slurm/collect.sbatch"))
            .env("RAYON_NUM_THREADS", "1")
            .output()
            .unwrap()
    };
    let r = collect();
    assert_eq!(r.status.code(), Some(1));
    assert!(
        text(&r.stdout).contains("reslim: tasks are missing")
            && text(&r.stderr).contains("in shard(s) 0, 2 of 3"),
        "{}{}",
        text(&r.stdout),
        text(&r.stderr)
    );
    element("0");
    element("2");
    let r = collect();
    assert!(r.status.success(), "{}", text(&r.stderr));
    assert_eq!(std::fs::read(out.join("errors.csv")).unwrap(), want);
    // Nothing left to submit.
    let r = reslim(&["sweep", &spec, "--out", o, "--slurm"]);
    assert!(r.status.success(), "{}", text(&r.stderr));
    assert!(text(&r.stderr).contains("nothing to submit"));
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn without_slurm_submission_is_a_clear_error() {
    let (root, spec) = setup("nosbatch");
    let out = root.join("out");
    let r = bin()
        .args(["sweep", &spec, "--out", out.to_str().unwrap(), "--slurm"])
        .env("PATH", root.join("no-bin"))
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(1), "{}", text(&r.stderr));
    let e = text(&r.stderr);
    assert!(
        e.contains("sbatch is not on PATH") && e.contains("--dry-run") && !e.contains("panicked"),
        "{e}"
    );
    for bad in [["--shard", "4/4"], ["--shard", "x"]] {
        let r = reslim(&[
            "sweep",
            &spec,
            "--out",
            out.to_str().unwrap(),
            bad[0],
            bad[1],
        ]);
        assert_eq!(r.status.code(), Some(1));
        assert!(text(&r.stderr).contains("--shard"), "{}", text(&r.stderr));
    }
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn spirals_shards_at_once_give_the_runs_of_one_process() {
    let root = tmp("spirals");
    let spec = root.join("tiny.toml");
    std::fs::write(
        &spec,
        "name = \"tiny\"\nseeds = 2\nn_train = [16, 32, 48]\nn_test = 100\n\
         [model]\nL = 2\nM = 8\nM0 = 32\n\
         [train]\nlr = 1.0\nmax_steps = { c = 10, n = 0.5 }\ntarget_loss = 0.0\n\
         [measure]\ncheckpoints = 3\n",
    )
    .unwrap();
    let s = spec.to_str().unwrap();
    let (one, sharded) = (root.join("one"), root.join("sharded"));
    let r = reslim(&["spirals", s, "--out", one.to_str().unwrap()]);
    assert!(r.status.success(), "{}", text(&r.stderr));
    let o = sharded.to_str().unwrap();
    let r = reslim(&["spirals", s, "--out", o, "--status", "--shards", "3"]);
    assert_eq!(r.status.code(), Some(1));
    assert!(
        text(&r.stderr).contains("6 run(s) are missing"),
        "{}",
        text(&r.stderr)
    );
    // Shards 0-2 and shard 0 again, at once.
    let children: Vec<_> = ["0/3", "1/3", "2/3", "0/3"]
        .iter()
        .map(|j| {
            bin()
                .args(["spirals", s, "--out", o, "--shard", j])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let r = c.wait_with_output().unwrap();
        assert!(r.status.success(), "{}", text(&r.stderr));
        assert!(
            text(&r.stdout).contains("run(s) finished"),
            "{}",
            text(&r.stdout)
        );
    }
    assert!(!sharded.join("report.md").exists(), "a shard reported");
    let r = reslim(&["spirals", s, "--out", o, "--status", "--shards", "3"]);
    assert!(r.status.success(), "{}", text(&r.stderr));
    assert!(
        text(&r.stdout).contains("shard 2/3: 2/2 finished"),
        "{}",
        text(&r.stdout)
    );
    // The stored runs are those of one process; the report reuses all of them.
    let runs = |d: &Path| {
        let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(d.join("runs"))
            .unwrap()
            .flatten()
            .map(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                (n, std::fs::read(e.path()).unwrap())
            })
            .collect();
        v.sort();
        v
    };
    let r = reslim(&["spirals", s, "--out", o]);
    assert!(r.status.success(), "{}", text(&r.stderr));
    let (a, b) = (runs(&one), runs(&sharded));
    assert_eq!(a.len(), 6);
    assert_eq!(
        a.iter().map(|x| &x.0).collect::<Vec<_>>(),
        b.iter().map(|x| &x.0).collect::<Vec<_>>()
    );
    for (x, y) in a.iter().zip(&b) {
        let strip = |bytes: &[u8]| {
            let mut v: serde_json::Value = serde_json::from_slice(bytes).unwrap();
            v.as_object_mut().unwrap().remove("seconds");
            v
        };
        assert_eq!(strip(&x.1), strip(&y.1), "{}", x.0);
    }
    // runs.csv alike but for its last column, the wall time.
    let csv = |d: &Path| -> Vec<String> {
        std::fs::read_to_string(d.join("runs.csv"))
            .unwrap()
            .lines()
            .map(|l| l.rsplit_once(',').unwrap().0.to_string())
            .collect()
    };
    assert!(csv(&one) == csv(&sharded), "runs.csv differs");
    let _ = std::fs::remove_dir_all(&root);
}
