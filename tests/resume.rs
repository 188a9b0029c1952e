//! Resume integrity: a sweep directory never yields a record that the current spec did
//! not make. Every training-relevant edit makes the finished tasks stale (refused, naming
//! the field, or retrained on request, with the same results as a fresh sweep); corrupt,
//! empty and shortened records are redone; two sweeps never write one directory at once;
//! the temporary files of killed processes are removed, those of live ones and of other
//! hosts are not.

use reslim::sweep::{self, RunOptions, SweepDir, SweepSpec, TaskState};
use std::path::{Path, PathBuf};

const BASE: &str = r#"
name = "resume"
steps = 4
reps = 2
read_steps = [2, 3]
[data]
din = 3
dout = 2
N = 3
[grid]
L = [2]
M = [3, 5]
D = [4, 6]
[reference]
kind = "largest"
[report]
bootstrap = 20
"#;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("reslim-resume-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn spec(text: &str) -> SweepSpec {
    toml::from_str(text).unwrap()
}

fn opts(redo_stale: bool) -> RunOptions {
    RunOptions {
        jobs: 2,
        max_tasks: None,
        memory: None,
        redo_stale,
        cancel: Default::default(),
    }
}

/// Runs `text` into `dir` and returns the collected rows as CSV text (bit-exact floats).
fn run(text: &str, dir: &Path, redo_stale: bool) -> Result<(sweep::RunSummary, String), String> {
    let sw = spec(text).check().map_err(|e| e.to_string())?;
    let d = SweepDir::new(dir);
    let s = sweep::run(&sw, &d, &opts(redo_stale), &|_, _, _| {}).map_err(|e| e.to_string())?;
    Ok((s, rows_csv(text, dir)))
}

fn rows_csv(text: &str, dir: &Path) -> String {
    let sw = spec(text).check().unwrap();
    let rows = sweep::collect(&sw, &SweepDir::new(dir)).unwrap();
    rows.iter()
        .map(|r| {
            format!(
                "{} {} {} {} {} {} {:e} {:e} {:e}\n",
                r.coupling, r.rep, r.l, r.m, r.d, r.step, r.loss, r.msq_h, r.msq_y
            )
        })
        .collect()
}

#[test]
fn every_training_relevant_edit_makes_finished_tasks_stale() {
    let edits: &[(&str, &str, &str)] = &[
        ("lr", "steps = 4\n", "steps = 4\nlr = 0.5\n"),
        ("data.seed", "N = 3\n", "N = 3\nseed = 7\n"),
        ("steps", "steps = 4\n", "steps = 5\n"),
        ("read_steps", "read_steps = [2, 3]", "read_steps = [3]"),
        ("data.N", "N = 3\n", "N = 2\n"),
        ("dtype", "steps = 4\n", "steps = 4\ndtype = \"f32\"\n"),
        (
            "activation",
            "steps = 4\n",
            "steps = 4\nactivation = \"relu\"\n",
        ),
        (
            "param",
            "steps = 4\n",
            "steps = 4\npreset = \"chizat-python\"\n",
        ),
        ("seed", "steps = 4\n", "steps = 4\nseed = 9\n"),
        ("param.alpha", "[report]", "[param]\nalpha = 0.5\n[report]"),
        (
            "couplings",
            "steps = 4\n",
            "steps = 4\ncouplings = [\"coupled\"]\n",
        ),
        (
            "data.x",
            "N = 3\n",
            "N = 3\nx = [[1, 2, 3], [0, 1, 0], [2, 0, 1]]\ny = [[1, 0], [0, 1], [1, 1]]\n",
        ),
    ];
    let root = tmp("edits");
    let base_dir = root.join("base");
    let (_, base_rows) = run(BASE, &base_dir, false).unwrap();
    assert!(!base_rows.is_empty());
    for (i, (field, from, to)) in edits.iter().enumerate() {
        assert!(BASE.contains(from), "{field}");
        let edited = BASE.replacen(from, to, 1);
        // A fresh sweep of the edited spec: what a correct resume must give.
        let fresh_dir = root.join(format!("fresh{i}"));
        let (_, fresh_rows) = run(&edited, &fresh_dir, false).unwrap();
        // (More steps leave the rows of earlier read steps as they were; the records, which
        // hold every loss, still differ.)
        if *field != "steps" {
            assert_ne!(
                fresh_rows, base_rows,
                "{field}: the edit must change results"
            );
        }
        // Resuming the base directory with the edited spec: refused, naming the field ...
        let dir = root.join(format!("edit{i}"));
        copy_dir(&base_dir, &dir);
        let e = run(&edited, &dir, false).unwrap_err();
        assert!(
            e.contains("made by a different spec")
                && e.contains(field)
                && e.contains("--redo-stale"),
            "{field}: {e}"
        );
        // ... and the old records are never read as the edited spec's.
        let sw = spec(&edited).check().unwrap();
        let d = SweepDir::new(&dir);
        for t in sw.plan() {
            assert!(
                matches!(d.state(&sw, &t), TaskState::Stale(_) | TaskState::Missing),
                "{field}: {}",
                t.id()
            );
        }
        assert_eq!(rows_csv(&edited, &dir), "", "{field}: stale rows collected");
        // With --redo-stale: retrained, exactly as the fresh sweep.
        let (s, rows) = run(&edited, &dir, true).unwrap();
        assert!(s.redone_stale > 0, "{field}");
        assert_eq!(rows, fresh_rows, "{field}");
        // And the base spec now finds the edited records stale in turn.
        let e = run(BASE, &dir, false).unwrap_err();
        assert!(e.contains(field), "{field}: {e}");
    }
    // Report-only edits and a larger grid reuse every finished task.
    let dir = root.join("reuse");
    copy_dir(&base_dir, &dir);
    let wider = BASE
        .replace("bootstrap = 20", "bootstrap = 24\nstep = 3")
        .replace("name = \"resume\"", "name = \"renamed\"")
        .replace("M = [3, 5]", "M = [3, 5, 7]")
        .replace(
            "kind = \"largest\"",
            "kind = \"shape\"\nL = 2\nM = 5\nD = 6",
        );
    let (s, _) = run(&wider, &dir, false).unwrap();
    assert_eq!((s.skipped, s.ran, s.redone_stale), (8, 4, 0), "{s:?}");
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn corrupt_empty_and_shortened_records_are_redone() {
    let root = tmp("corrupt");
    let good = root.join("good");
    let (_, want) = run(BASE, &good, false).unwrap();
    let sw = spec(BASE).check().unwrap();
    let plan = sw.plan();
    let rec = |dir: &Path, i: usize| dir.join("tasks").join(plan[i].id()).join("records.json");
    type Damage = fn(&Path, &serde_json::Value);
    let damages: &[(&str, Damage)] = &[
        ("truncated", |p, _| {
            let b = std::fs::read(p).unwrap();
            std::fs::write(p, &b[..b.len() / 2]).unwrap();
        }),
        ("empty file", |p, _| std::fs::write(p, b"").unwrap()),
        ("no records", |p, v| {
            let mut v = v.clone();
            v["records"] = serde_json::json!([]);
            std::fs::write(p, v.to_string()).unwrap();
        }),
        ("old format []", |p, _| std::fs::write(p, b"[]").unwrap()),
        ("shortened outputs", |p, v| {
            let mut v = v.clone();
            v["records"][0]["outputs"].as_array_mut().unwrap().pop();
            std::fs::write(p, v.to_string()).unwrap();
        }),
        ("shortened losses", |p, v| {
            let mut v = v.clone();
            v["records"][1]["losses"]
                .as_array_mut()
                .unwrap()
                .truncate(1);
            std::fs::write(p, v.to_string()).unwrap();
        }),
        ("shortened hidden", |p, v| {
            let mut v = v.clone();
            v["records"][0]["hidden"]
                .as_array_mut()
                .unwrap()
                .truncate(3);
            std::fs::write(p, v.to_string()).unwrap();
        }),
        ("inputs edited by hand", |p, v| {
            let mut v = v.clone();
            v["inputs"]["lr"] = serde_json::json!(2.0);
            std::fs::write(p, v.to_string()).unwrap();
        }),
        ("missing file", |p, _| std::fs::remove_file(p).unwrap()),
    ];
    for (i, (what, damage)) in damages.iter().enumerate() {
        let dir = root.join(format!("d{i}"));
        copy_dir(&good, &dir);
        // Damage one task of each repetition (the reference among them).
        let victims = [i % (plan.len() - 1), plan.len() - 1];
        for &j in &victims {
            let p = rec(&dir, j);
            let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
            damage(&p, &v);
            let d = SweepDir::new(&dir);
            let st = d.state(&sw, &plan[j]);
            assert!(
                !matches!(st, TaskState::Done(_)),
                "{what}: task {} still counts as done",
                plan[j].id()
            );
        }
        // The report never sees the damaged task (and does not panic) ...
        let partial = rows_csv(BASE, &dir);
        assert!(partial.len() < want.len(), "{what}");
        // ... and the next run redoes it, with the same bits as before.
        let (s, rows) = match run(BASE, &dir, false) {
            Ok(x) => x,
            // An old-format record reads as stale: it needs --redo-stale.
            Err(e) if *what == "old format []" => {
                assert!(e.contains("older reslim"), "{e}");
                run(BASE, &dir, true).unwrap()
            }
            Err(e) => panic!("{what}: {e}"),
        };
        assert_eq!(s.ran, 2, "{what}: {s:?}");
        assert_eq!(rows, want, "{what}");
    }
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn one_directory_has_one_writer_at_a_time() {
    let root = tmp("lock");
    let sw = spec(BASE).check().unwrap();
    let first = SweepDir::new(&root);
    first.lock().unwrap();
    // A second writer (another open of the lock, as another process would) is refused
    // at once, and is told who holds it.
    let second = SweepDir::new(&root);
    let e = sweep::run(&sw, &second, &opts(false), &|_, _, _| {})
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("in use by another reslim process")
            && e.contains(&format!("pid {}", std::process::id())),
        "{e}"
    );
    assert!(
        !root.join("tasks").exists(),
        "the refused sweep wrote tasks"
    );
    // The holder runs; once it is gone the second may.
    sweep::run(&sw, &first, &opts(false), &|_, _, _| {}).unwrap();
    drop(first);
    let s = sweep::run(&sw, &second, &opts(false), &|_, _, _| {}).unwrap();
    assert_eq!(s.ran, 0);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn stale_temporaries_of_dead_processes_are_removed_and_no_others() {
    let root = tmp("orphans");
    let host = reslim::io::host_name();
    // A pid that is certainly dead: a child that has exited and been reaped.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    child.wait().unwrap();
    let dead = child.id();
    let live = std::process::id();
    let dead_files = [
        root.join(format!(".errors.csv.tmp-{host}-{dead}-0")),
        root.join(format!("figures/.loss.png.tmp-{host}-{dead}-4")),
        root.join(format!(".report.md.tmp-{host}-{dead}-7")),
    ];
    let dead_dir = root.join(format!("tasks/.r0-L2-M3-D4.tmp-{host}-{dead}-2"));
    let kept = [
        root.join(format!(".errors.csv.tmp-other-host-{dead}-0")),
        root.join(format!(".fits.json.tmp-{host}-{live}-0")),
        root.join("figures/.hidden-user-file"),
    ];
    for p in dead_files.iter().chain(&kept) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"partial").unwrap();
    }
    std::fs::create_dir_all(&dead_dir).unwrap();
    std::fs::write(dead_dir.join("records.json"), b"[").unwrap();
    let sw = spec(BASE).check().unwrap();
    sweep::run(&sw, &SweepDir::new(&root), &opts(false), &|_, _, _| {}).unwrap();
    for p in dead_files.iter().chain([&dead_dir]) {
        assert!(!p.exists(), "{} left behind", p.display());
    }
    for p in &kept {
        assert!(p.exists(), "{} removed", p.display());
    }
    let _ = std::fs::remove_dir_all(&root);
}

fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let name = e.file_name();
        if name == ".lock" {
            continue;
        }
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(&name));
        } else {
            std::fs::copy(&p, to.join(&name)).unwrap();
        }
    }
}

#[test]
fn a_cancelled_sweep_keeps_its_finished_tasks_and_resumes_to_the_same_rows() {
    let root = tmp("cancel");
    let (_, whole) = run(BASE, &root.join("whole"), false).unwrap();
    let sw = spec(BASE).check().unwrap();
    let dir = root.join("cut");
    // Cancelled before anything runs: nothing trained, nothing lost.
    let cancel = reslim::cancel::Cancel::new();
    cancel.cancel();
    let o = RunOptions {
        jobs: 1,
        cancel: cancel.clone(),
        ..opts(false)
    };
    let e = sweep::run(&sw, &SweepDir::new(&dir), &o, &|_, _, _| {}).unwrap_err();
    assert!(
        matches!(
            e,
            sweep::SweepError::Cancelled {
                finished: 0,
                remaining: 8
            }
        ),
        "{e}"
    );
    // Cancelled from the progress callback once two tasks are done (as Ctrl-C would).
    let cancel = reslim::cancel::Cancel::new();
    let o = RunOptions {
        jobs: 1,
        cancel: cancel.clone(),
        ..opts(false)
    };
    let seen = std::sync::atomic::AtomicUsize::new(0);
    let e = sweep::run(&sw, &SweepDir::new(&dir), &o, &|_, _, _| {
        if seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 == 2 {
            cancel.cancel();
        }
    })
    .unwrap_err();
    assert!(
        matches!(
            e,
            sweep::SweepError::Cancelled {
                finished: 2,
                remaining: 6
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("run it again to resume"), "{e}");
    let survey = SweepDir::new(&dir).survey(&sw);
    assert_eq!(survey.done.len(), 2);
    // The resume runs only the other six, and the rows are those of an uncut sweep.
    let (s, rows) = run(BASE, &dir, false).unwrap();
    assert_eq!((s.skipped, s.ran), (2, 6));
    assert_eq!(rows, whole);
}
