use super::SweepError;
use super::plan::{Sweep, Task};
use super::store::{Survey, SweepDir};
use super::task::run_task_on;
use crate::cancel::Cancel;
use crate::train::TrainError;

use crate::io::{self};
use crate::memory::{self};
use crate::spec::SpecError;
use serde::{Deserialize, Serialize};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Most parallel jobs (`--jobs`) or threads (`--threads`) reslim accepts: far above any
/// core count it runs on, far below the point where starting the threads fails.
pub const MAX_JOBS: usize = 4096;

/// Checks a parallelism flag (`--jobs`, `--threads`): between 1 and [`MAX_JOBS`].
pub fn check_jobs(flag: &str, n: usize) -> Result<usize, SpecError> {
    if n == 0 || n > MAX_JOBS {
        return Err(SpecError::Flag {
            flag: flag.into(),
            value: n.to_string(),
            why: format!("must be between 1 and {MAX_JOBS}"),
        });
    }
    Ok(n)
}

/// How to run a sweep.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Parallel tasks.
    pub jobs: usize,
    /// Stop after this many tasks have finished in this invocation (for tests).
    pub max_tasks: Option<usize>,
    /// The memory the tasks may use together; `None`: [`MEMORY_FRACTION`] of
    /// [`memory::available`] when the run starts.
    pub memory: Option<memory::Available>,
    /// Retrain tasks whose stored records were made by a different spec (overwriting
    /// them); without it such a sweep is refused ([`SweepError::Stale`]).
    pub redo_stale: bool,
    /// Checked before each task and each GD step: once set, the run stops with
    /// [`SweepError::Cancelled`], keeping every finished task (the interrupted ones are
    /// not written).
    pub cancel: Cancel,
}

/// The share of the available memory a sweep's tasks may use together
/// ([`memory::FRACTION`]).
pub use crate::memory::FRACTION as MEMORY_FRACTION;

/// What a run did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunSummary {
    pub planned: usize,
    pub skipped: usize,
    pub ran: usize,
    pub seconds: f64,
    /// Stale tasks retrained (with `redo_stale`).
    #[serde(default)]
    pub redone_stale: usize,
    /// Tasks whose records were unreadable or incomplete, retrained: id and why.
    #[serde(default)]
    pub redone_corrupt: Vec<(String, String)>,
}

/// Runs every unfinished task of the sweep in `dir`, largest first, `jobs` at a time.
/// `progress(done_cost, total_cost, task)` is called after each task.
pub fn run(
    sw: &Sweep,
    dir: &SweepDir,
    opts: &RunOptions,
    progress: &(dyn Fn(f64, f64, &Task) + Sync),
) -> Result<RunSummary, SweepError> {
    dir.lock()?;
    run_surveyed(sw, dir, &dir.survey(sw), opts, progress)
}

/// [`run`] with the directory already locked and surveyed (the survey reads every
/// task's records; [`super::execute`] has it already).
pub(crate) fn run_surveyed(
    sw: &Sweep,
    dir: &SweepDir,
    survey: &Survey,
    opts: &RunOptions,
    progress: &(dyn Fn(f64, f64, &Task) + Sync),
) -> Result<RunSummary, SweepError> {
    let t0 = std::time::Instant::now();
    if !survey.stale.is_empty() && !opts.redo_stale {
        return Err(SweepError::Stale {
            dir: dir.root.clone(),
            count: survey.stale.len(),
            fields: survey.stale_fields().join("; "),
        });
    }
    io::atomic_write(
        &dir.root.join("sweep.json"),
        serde_json::to_string_pretty(sw)
            .expect("sweep serialises")
            .as_bytes(),
    )?;
    // The surveyed tasks: the whole plan, or a shard's.
    let planned =
        survey.done.len() + survey.missing.len() + survey.stale.len() + survey.corrupt.len();
    let mut todo: Vec<Task> = survey.missing.clone();
    todo.extend(survey.stale.iter().map(|(t, _)| *t));
    todo.extend(survey.corrupt.iter().map(|(t, _)| *t));
    let skipped = survey.done.len();
    todo.sort_by(|a, b| b.cost().total_cmp(&a.cost()).then(a.id().cmp(&b.id())));
    // Memory: refuse a task that cannot fit at all; limit concurrency so that the
    // largest tasks running together fit.
    // Never more workers than tasks to run (a worker per core is the point; idle threads
    // only cost), and never an absurd number whatever the caller asked.
    let mut jobs = opts.jobs.clamp(1, MAX_JOBS).min(todo.len().max(1));
    if let Some(big) = todo.first() {
        let memory_err = |source| SweepError::Memory {
            task: big.id(),
            source,
        };
        let need = sw.task_bytes(big).map_err(memory_err)?;
        let budget = match opts.memory {
            Some(a) => a,
            None => memory::available()?.scaled(MEMORY_FRACTION),
        };
        // The message (every engine's bytes) is built only for a task that does not fit.
        if need > budget.bytes {
            let every: Vec<String> = sw
                .engine_bytes(big)
                .into_iter()
                .map(|(name, b)| match b {
                    Some(b) => format!("{name} {:.3} GB", b as f64 / 1e9),
                    None => format!("{name} more than 2^64 bytes"),
                })
                .collect();
            let what = format!(
                "the largest task (L = {}, M = {}, D = {}, N = {}, steps = {}, {}; engine {}; every engine: {})",
                big.l,
                big.m,
                big.d,
                sw.spec.data.n,
                sw.spec.steps,
                format!("{:?}", sw.spec.dtype).to_lowercase(),
                sw.strategy(big).name(),
                every.join(", ")
            );
            budget.check(need, &what).map_err(memory_err)?;
        }
        jobs = jobs.min((budget.bytes / need.max(1)).max(1));
    }
    let data = sw.spec.data.data()?;
    if sw.against_limit() && !todo.is_empty() {
        // Solved once, with every core, before the workers start.
        sw.limit_reference()?;
    }
    let total: f64 = todo.iter().map(|t| t.cost()).sum();
    let next = AtomicUsize::new(0);
    let finished = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let done_cost = Mutex::new(0.0f64);
    let first_err: Mutex<Option<SweepError>> = Mutex::new(None);
    // One task at a time (one task, or the memory allows one): it gets every core.
    let par = if jobs == 1 && rayon::current_num_threads() > 1 {
        crate::cpu::Par::Rayon
    } else {
        crate::cpu::Par::Seq
    };
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| {
                loop {
                    if stop.load(Ordering::SeqCst) || opts.cancel.is_cancelled() {
                        return;
                    }
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(t) = todo.get(i) else { return };
                    if opts
                        .max_tasks
                        .is_some_and(|max| finished.load(Ordering::SeqCst) >= max)
                    {
                        return;
                    }
                    let res = run_task_on(sw, t, &data, &opts.cancel, par)
                        .and_then(|recs| Ok(dir.write_task(sw, t, &recs)?));
                    match res {
                        Ok(()) => {
                            let n = finished.fetch_add(1, Ordering::SeqCst) + 1;
                            let mut dc = done_cost.lock().expect("progress lock");
                            *dc += t.cost();
                            progress(*dc, total, t);
                            if opts.max_tasks.is_some_and(|m| n >= m) {
                                stop.store(true, Ordering::SeqCst);
                            }
                        }
                        Err(SweepError::Train(TrainError::Cancelled { .. })) => return,
                        Err(e) => {
                            stop.store(true, Ordering::SeqCst);
                            let mut fe = first_err.lock().expect("error lock");
                            if fe.is_none() {
                                *fe = Some(SweepError::Task {
                                    task: t.id(),
                                    source: Box::new(e),
                                });
                            }
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = first_err.into_inner().expect("error lock") {
        return Err(e);
    }
    let cancelled = opts.cancel.is_cancelled();
    let summary = RunSummary {
        planned,
        skipped,
        ran: finished.into_inner(),
        seconds: t0.elapsed().as_secs_f64(),
        redone_stale: survey.stale.len(),
        redone_corrupt: survey
            .corrupt
            .iter()
            .map(|(t, why)| (t.id(), why.clone()))
            .collect(),
    };
    // One file per invocation, never rewritten: shards running at once each add theirs.
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    io::write_new(
        &dir.root
            .join(RUN_LOG)
            .join(format!("{since:015}-{}.json", io::unique_tag())),
        serde_json::to_string_pretty(&summary)
            .expect("run summary serialises")
            .as_bytes(),
    )?;
    if cancelled {
        return Err(SweepError::Cancelled {
            finished: summary.ran,
            remaining: todo.len().saturating_sub(summary.ran),
        });
    }
    Ok(summary)
}

/// The run log's directory in a sweep directory: one `{unix ms}-{host}-{pid}-{seq}.json`
/// per invocation that ran tasks (its [`RunSummary`]).
pub const RUN_LOG: &str = "run-log";

/// Every invocation's summary so far, oldest first: `runs.json` (the single log file
/// of earlier versions) if present, then the files of [`RUN_LOG`] in name (time) order.
pub fn read_run_log(dir: &SweepDir) -> Vec<RunSummary> {
    let mut log: Vec<RunSummary> = std::fs::read(dir.root.join("runs.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(dir.root.join(RUN_LOG))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.extension().is_some_and(|x| x == "json")
                        && !p
                            .file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    log.extend(files.iter().filter_map(|p| {
        std::fs::read(p)
            .ok()
            .and_then(|b| serde_json::from_slice::<RunSummary>(&b).ok())
    }));
    log
}
