use super::plan::{Sweep, Task};
use super::spec::Coupling;
use super::task::TaskRecord;

use crate::io::{self, IoError};
use crate::provenance;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

impl Sweep {
    /// Whether `recs` are the complete records of task `t` as this sweep writes them: one
    /// per coupling variant in order, each of this task, with K losses (at most K against
    /// the limit, where a divergence is recorded) and outputs, hidden states or limit
    /// errors for exactly the read steps. Anything else is a corrupt record.
    pub fn check_records(&self, t: &Task, recs: &[TaskRecord]) -> Result<(), String> {
        let want = self.couplings_of(t);
        let got: Vec<Coupling> = recs.iter().map(|r| r.coupling).collect();
        if got != want {
            return Err(format!("holds the variants {got:?}, expected {want:?}"));
        }
        let (k, reads) = (self.spec.steps, self.read_steps.len());
        let (dout, n) = (self.spec.data.dout, self.spec.data.n);
        for r in recs {
            let c = r.coupling.name();
            if r.task != *t {
                return Err(format!("the {c} record is of task {}", r.task.id()));
            }
            if let Some(why) = &r.diverged {
                if !self.is_transfer() {
                    return Err(format!(
                        "the {c} record diverged ({why}) in a sweep that does not record divergences"
                    ));
                }
                if !(r.losses.is_empty() && r.outputs.is_empty() && r.hidden.is_empty()) {
                    return Err(format!("the {c} record diverged but holds results"));
                }
                continue;
            }
            let limit = self.against_limit();
            let losses_ok = if limit {
                r.losses.len() <= k
            } else {
                r.losses.len() == k
            };
            if !losses_ok {
                return Err(format!(
                    "the {c} record has {} losses, K = {k}",
                    r.losses.len()
                ));
            }
            let len = |what: &str, got: usize, want: Option<usize>| match want {
                Some(w) if w != got => {
                    Err(format!("the {c} record has {got} {what}, expected {w}"))
                }
                _ => Ok(()),
            };
            if limit {
                let steps: Vec<usize> = match &r.limit {
                    Some(e) => e.iter().map(|e| e.step).collect(),
                    None => return Err(format!("the {c} record has no limit errors")),
                };
                let mut sorted = steps.clone();
                sorted.sort_unstable();
                if sorted != self.read_steps {
                    return Err(format!(
                        "the {c} record has limit errors at steps {steps:?}, expected {:?}",
                        self.read_steps
                    ));
                }
            } else {
                let hidden = if r.coupling == Coupling::Coupled {
                    reads.checked_mul(t.d).and_then(|x| x.checked_mul(n))
                } else {
                    Some(0)
                };
                len("outputs", r.outputs.len(), reads.checked_mul(dout * n))?;
                len("hidden values", r.hidden.len(), hidden)?;
                if r.limit.is_some() {
                    return Err(format!(
                        "the {c} record has limit errors in a finite-reference sweep"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A task's `records.json`: its records and their provenance ([`crate::provenance`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredTask {
    /// [`crate::provenance::FORMAT`] of the reslim that wrote it.
    pub format: u32,
    /// The fingerprint of `inputs`.
    pub fingerprint: String,
    /// [`Sweep::task_inputs`] of the sweep that wrote it.
    pub inputs: serde_json::Value,
    /// The version of the reslim that wrote it (for information).
    pub reslim_version: String,
    pub records: Vec<TaskRecord>,
}

/// What a sweep directory holds for one task.
#[derive(Debug, Clone)]
pub enum TaskState {
    /// Nothing: the task has not finished.
    Missing,
    /// Complete records made by this very spec.
    Done(Vec<TaskRecord>),
    /// Records made by a different spec (or an older reslim): never used. The fields that
    /// differ, as `field: stored -> now`.
    Stale(Vec<String>),
    /// Records that cannot be read or are incomplete: redone. Why.
    Corrupt(String),
}

/// Where a sweep keeps its files.
pub struct SweepDir {
    pub root: PathBuf,
    lock: std::sync::OnceLock<io::DirLock>,
}

impl SweepDir {
    pub fn new(root: &Path) -> Self {
        SweepDir {
            root: root.to_path_buf(),
            lock: std::sync::OnceLock::new(),
        }
    }

    /// Takes the directory's lock ([`io::DirLock`]) for as long as this `SweepDir`
    /// lives (a second call does nothing), then removes the temporary files and
    /// directories that killed runs of this host left ([`io::remove_stale_temps`]).
    /// Another process working in the directory makes it fail at once with
    /// [`IoError::Busy`]. [`super::run`] calls it; a caller that collects and reports after the
    /// run should call it first, so that no other sweep writes while it reads.
    pub fn lock(&self) -> Result<(), IoError> {
        self.take_lock(true)
    }

    /// Takes the directory's lock shared ([`io::DirLock::acquire_shared`]): for shard
    /// runs, any number of which may work in the directory at once (on any hosts that
    /// share it) since each writes only whole task directories ([`SweepDir::write_task`])
    /// and its own run log. A process holding the exclusive lock ([`SweepDir::lock`]: an
    /// unsharded sweep, a report) makes it fail with [`IoError::Busy`], and the other way
    /// round. Removes the temporaries of dead processes of this host like
    /// [`SweepDir::lock`] (never those of a live shard). A `SweepDir` holds one lock: the
    /// first call's kind stays.
    pub fn lock_shared(&self) -> Result<(), IoError> {
        self.take_lock(false)
    }

    fn take_lock(&self, exclusive: bool) -> Result<(), IoError> {
        if self.lock.get().is_some() {
            return Ok(());
        }
        let l = if exclusive {
            io::DirLock::acquire(&self.root)?
        } else {
            io::DirLock::acquire_shared(&self.root)?
        };
        let _ = self.lock.set(l);
        io::remove_stale_temps(&self.root, 2);
        Ok(())
    }

    pub fn tasks(&self) -> PathBuf {
        self.root.join("tasks")
    }
    pub fn task_dir(&self, t: &Task) -> PathBuf {
        self.tasks().join(t.id())
    }

    /// What the directory holds for task `t` of sweep `sw` ([`TaskState`]).
    pub fn state(&self, sw: &Sweep, t: &Task) -> TaskState {
        let dir = self.task_dir(t);
        if !dir.exists() {
            return TaskState::Missing;
        }
        let p = dir.join("records.json");
        let bytes = match std::fs::read(&p) {
            Ok(b) => b,
            Err(e) => return TaskState::Corrupt(format!("{}: {e}", p.display())),
        };
        let stored: StoredTask = match serde_json::from_slice(&bytes) {
            Ok(s) => s,
            Err(e) => {
                if serde_json::from_slice::<Vec<TaskRecord>>(&bytes).is_ok() {
                    return TaskState::Stale(vec![format!(
                        "format: 1 -> {} (written by an older reslim, without provenance)",
                        crate::provenance::FORMAT
                    )]);
                }
                return TaskState::Corrupt(format!("{}: unreadable: {e}", p.display()));
            }
        };
        if stored.fingerprint != crate::provenance::fingerprint(&stored.inputs) {
            return TaskState::Corrupt(format!(
                "{}: its fingerprint does not match its inputs",
                p.display()
            ));
        }
        let inputs = sw.task_inputs(t);
        if stored.fingerprint != crate::provenance::fingerprint(&inputs) {
            let mut changed = crate::provenance::changed_fields(&stored.inputs, &inputs);
            if changed.is_empty() {
                changed.push("(fingerprint)".into());
            }
            return TaskState::Stale(changed);
        }
        match sw.check_records(t, &stored.records) {
            Ok(()) => TaskState::Done(stored.records),
            Err(why) => TaskState::Corrupt(format!("{}: {why}", p.display())),
        }
    }

    /// Whether task `t` has complete records made by this spec.
    pub fn is_done(&self, sw: &Sweep, t: &Task) -> bool {
        matches!(self.state(sw, t), TaskState::Done(_))
    }

    /// Writes a task's records with their provenance: into a temporary directory (a name
    /// no other process uses, [`io::temp_name`]), renamed into place. Safe against other
    /// processes writing the same task at once (shards run twice, on any hosts sharing
    /// the directory): the rename of a directory onto a non-empty one fails, so the first
    /// complete `tasks/{id}` stays and a later duplicate is dropped (both hold the same
    /// records: a task is deterministic). A stale or corrupt directory of the task is
    /// first renamed aside (then removed) and the rename retried, so a reader sees the
    /// old directory, none, or the new one, never a mix.
    pub fn write_task(&self, sw: &Sweep, t: &Task, recs: &[TaskRecord]) -> Result<(), IoError> {
        let tmp = self.tasks().join(io::temp_name(&t.id()));
        let os = |path: &Path| {
            let path = path.to_path_buf();
            move |source| IoError::Os { path, source }
        };
        std::fs::create_dir_all(&tmp).map_err(os(&tmp))?;
        let inputs = sw.task_inputs(t);
        let stored = StoredTask {
            format: crate::provenance::FORMAT,
            fingerprint: crate::provenance::fingerprint(&inputs),
            inputs,
            reslim_version: env!("CARGO_PKG_VERSION").into(),
            records: recs.to_vec(),
        };
        let json = serde_json::to_vec(&stored).expect("records serialise");
        let written = io::atomic_write(&tmp.join("records.json"), &json)
            .and_then(|()| self.place_task(sw, t, &tmp));
        if tmp.exists() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        written
    }

    /// Renames the complete temporary directory `tmp` to `tasks/{id}` unless a finished
    /// one of this spec is there already ([`SweepDir::write_task`]).
    fn place_task(&self, sw: &Sweep, t: &Task, tmp: &Path) -> Result<(), IoError> {
        let final_dir = self.task_dir(t);
        // Each round either places the directory, finds a finished one, or moves an
        // unusable one aside; other writers can only make the next round succeed.
        for _ in 0..16 {
            let err = match std::fs::rename(tmp, &final_dir) {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if !final_dir.is_dir() {
                // Not an occupied target (another writer moved it aside meanwhile, or
                // a real failure): a second try tells them apart.
                if final_dir.exists() {
                    return Err(IoError::Os {
                        path: final_dir,
                        source: err,
                    });
                }
                continue;
            }
            if self.is_done(sw, t) {
                return Ok(());
            }
            let aside = self.tasks().join(io::temp_name(&format!("{}.old", t.id())));
            if std::fs::rename(&final_dir, &aside).is_ok() {
                let _ = std::fs::remove_dir_all(&aside);
            }
        }
        Err(IoError::Os {
            path: final_dir,
            source: std::io::Error::other(
                "another process keeps replacing this task's directory; is a second spec writing to the same --out?",
            ),
        })
    }

    /// The state of every task of the plan.
    pub fn survey(&self, sw: &Sweep) -> Survey {
        self.survey_of(sw, &sw.plan())
    }

    /// The state of each of `tasks` (a shard's).
    pub fn survey_of(&self, sw: &Sweep, tasks: &[Task]) -> Survey {
        let mut s = Survey::default();
        for &t in tasks {
            match self.state(sw, &t) {
                TaskState::Missing => s.missing.push(t),
                TaskState::Done(_) => s.done.push(t),
                TaskState::Stale(c) => s.stale.push((t, c)),
                TaskState::Corrupt(why) => s.corrupt.push((t, why)),
            }
        }
        s
    }
}

/// The tasks of a plan by their state in a sweep directory.
#[derive(Debug, Clone, Default)]
pub struct Survey {
    pub done: Vec<Task>,
    pub missing: Vec<Task>,
    /// With the fields that changed.
    pub stale: Vec<(Task, Vec<String>)>,
    /// With why.
    pub corrupt: Vec<(Task, String)>,
}

impl Survey {
    /// The changed fields of every stale task, each once, in order of first appearance.
    /// The task's own coordinates are left out: they differ between tasks, not specs.
    pub fn stale_fields(&self) -> Vec<String> {
        provenance::union_of_changes(self.stale.iter().map(|(_, c)| c.as_slice()), |field| {
            field == "task" || field.starts_with("task.")
        })
    }
}
