//! The whole sweep as one library function: [`execute`] takes a checked [`Sweep`] and
//! its directory through every stage (lock, plan and survey, memory estimate, run,
//! collect, tables, report) and returns what happened, so the CLI, the Python package
//! and cluster shards run the very same pipeline. What a caller shows on the way (a
//! progress bar, log lines) goes through an [`Observer`]; the library prints nothing.

use super::SweepError;
use super::cluster;
use super::collect::{self, ErrorRow};
use super::plan::{Sweep, Task};
use super::report;
use super::runner::{self, MAX_JOBS, RunOptions, RunSummary};
use super::store::SweepDir;
use crate::cancel::Cancel;
use crate::memory::Available;
use crate::shard::Shard;
use crate::spec::SpecError;
use std::collections::HashMap;
use std::path::PathBuf;

/// How to run a whole sweep.
#[derive(Debug, Clone, Default)]
pub struct PipelineOptions {
    /// Parallel tasks; `None`: one per thread of rayon's pool (the cores, or
    /// `RAYON_NUM_THREADS`). Never more than tasks to run.
    pub jobs: Option<usize>,
    /// Run only this shard's unfinished tasks ([`super::cluster`]), under the
    /// directory's shared lock so that other shard processes may work there at once;
    /// no collect and no report ([`Outcome::Shard`]). With `plan_only`: the shard's plan.
    pub shard: Option<Shard>,
    /// Stop after this many tasks have finished in this invocation (for tests).
    pub max_tasks: Option<usize>,
    /// Retrain tasks whose records were made by a different spec
    /// ([`RunOptions::redo_stale`]).
    pub redo_stale: bool,
    /// Train nothing: collect, tabulate and report what is finished.
    pub report_only: bool,
    /// Only plan: no lock, no training, no files; the plan and each task's state and
    /// bytes come back as [`Outcome::Planned`].
    pub plan_only: bool,
    /// The memory the tasks may use together ([`RunOptions::memory`]).
    pub memory: Option<Available>,
    /// Stops the run between tasks and GD steps ([`RunOptions::cancel`]); nothing is
    /// collected or reported then ([`SweepError::Cancelled`]).
    pub cancel: Cancel,
}

/// The plan of a sweep against its directory, before anything runs.
#[derive(Debug, Clone)]
pub struct PlanSummary {
    /// The sweep's name.
    pub name: String,
    /// Tasks planned, and how many of them are finished.
    pub tasks: usize,
    pub finished: usize,
    /// Parameter-steps of work of the whole plan: sum of L M D over tasks, times K.
    pub work: f64,
    /// Bytes the largest task needs at its peak.
    pub largest_bytes: usize,
    /// Parallel jobs that will run.
    pub jobs: usize,
    /// Tasks with unusable records (redone), and why.
    pub corrupt: Vec<(Task, String)>,
    /// Tasks made by a different spec, and the fields that changed (each once).
    pub stale: usize,
    pub stale_fields: Vec<String>,
}

/// One task of the plan as `--plan` lists it.
#[derive(Debug, Clone)]
pub struct PlanEntry {
    pub task: Task,
    /// `done`, `todo`, `stale` or `corrupt`.
    pub state: &'static str,
    /// Bytes at its peak.
    pub bytes: usize,
}

/// What [`execute`] did.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// [`PipelineOptions::plan_only`]: the plan, nothing run or written.
    Planned {
        plan: PlanSummary,
        entries: Vec<PlanEntry>,
    },
    /// [`PipelineOptions::shard`]: the shard's unfinished tasks ran; nothing collected.
    Shard { plan: PlanSummary, run: RunSummary },
    /// The sweep ran (unless `report_only`), and its tables and report are written.
    Done {
        plan: PlanSummary,
        /// `None` with `report_only`.
        run: Option<RunSummary>,
        /// The tidy rows of `errors.csv`.
        rows: Vec<ErrorRow>,
        /// `report.md`.
        report: PathBuf,
    },
}

/// What a caller is told while [`execute`] works. Every method does nothing unless
/// implemented.
pub trait Observer: Sync {
    /// The plan and the directory's state, before anything runs.
    fn planned(&self, _plan: &PlanSummary) {}
    /// After each task: the work done and the total of this invocation (parameter
    /// counts), and the task that finished.
    fn progress(&self, _done: f64, _total: f64, _task: &Task) {}
    /// After the run (not with `report_only`).
    fn ran(&self, _run: &RunSummary) {}
}

/// An [`Observer`] that shows nothing.
pub struct Silent;
impl Observer for Silent {}

/// Runs a whole sweep in `dir`: takes the directory's lock (held until the report is
/// written, so no other sweep writes meanwhile; a shard run takes it shared and stops
/// after its tasks, [`PipelineOptions::shard`]), plans and surveys the tasks, estimates
/// every task's memory, runs the unfinished tasks ([`runner::run`]), collects the
/// errors, writes `errors.csv`, `errors_rms.csv` (and `errors_limit.csv` against the
/// limit) and the report ([`report::write_report`]).
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use reslim::sweep::{self, Outcome, PipelineOptions, Silent, SweepDir, SweepSpec};
/// let sw = SweepSpec::from_file("experiments/quick.toml".as_ref())?.check()?;
/// let dir = SweepDir::new("runs/quick".as_ref());
/// if let Outcome::Done { rows, report, .. } =
///     sweep::execute(&sw, &dir, &PipelineOptions::default(), &Silent)?
/// {
///     println!("{} rows; report in {}", rows.len(), report.display());
/// }
/// # Ok(())
/// # }
/// ```
pub fn execute(
    sw: &Sweep,
    dir: &SweepDir,
    opts: &PipelineOptions,
    observer: &dyn Observer,
) -> Result<Outcome, SweepError> {
    let t0 = std::time::Instant::now();
    if opts.shard.is_some() && opts.report_only {
        return Err(SpecError::Flag {
            flag: "--report-only".into(),
            value: "with --shard".into(),
            why: "a shard only trains its tasks; report without --shard once they are done".into(),
        }
        .into());
    }
    if !opts.plan_only {
        match opts.shard {
            Some(_) => dir.lock_shared()?,
            None => dir.lock()?,
        }
    }
    let tasks = match opts.shard {
        Some(shard) => cluster::shard_tasks(sw, shard),
        None => sw.plan(),
    };
    let survey = dir.survey_of(sw, &tasks);
    let bytes = tasks
        .iter()
        .map(|t| {
            sw.task_bytes(t).map_err(|source| SweepError::Memory {
                task: t.id(),
                source,
            })
        })
        .collect::<Result<Vec<usize>, SweepError>>()?;
    let jobs = opts
        .jobs
        .unwrap_or_else(rayon::current_num_threads)
        .clamp(1, MAX_JOBS)
        .min(tasks.len().max(1));
    let plan = PlanSummary {
        name: sw.spec.name.clone(),
        tasks: tasks.len(),
        finished: survey.done.len(),
        work: tasks.iter().map(|t| t.cost()).sum::<f64>() * sw.spec.steps as f64,
        largest_bytes: bytes.iter().copied().max().unwrap_or(0),
        jobs,
        corrupt: survey.corrupt.clone(),
        stale: survey.stale.len(),
        stale_fields: survey.stale_fields(),
    };
    observer.planned(&plan);
    if opts.plan_only {
        let mut states: HashMap<Task, &'static str> = HashMap::new();
        for (list, state) in [(&survey.done, "done"), (&survey.missing, "todo")] {
            states.extend(list.iter().map(|t| (*t, state)));
        }
        states.extend(survey.stale.iter().map(|(t, _)| (*t, "stale")));
        states.extend(survey.corrupt.iter().map(|(t, _)| (*t, "corrupt")));
        let entries = tasks
            .iter()
            .zip(bytes)
            .map(|(t, bytes)| PlanEntry {
                task: *t,
                state: states.get(t).copied().unwrap_or("todo"),
                bytes,
            })
            .collect();
        return Ok(Outcome::Planned { plan, entries });
    }
    let run = if opts.report_only {
        None
    } else {
        let run_opts = RunOptions {
            jobs,
            max_tasks: opts.max_tasks,
            memory: opts.memory,
            redo_stale: opts.redo_stale,
            cancel: opts.cancel.clone(),
        };
        let summary = runner::run_surveyed(sw, dir, &survey, &run_opts, &|done, total, t| {
            observer.progress(done, total, t)
        })?;
        observer.ran(&summary);
        if opts.shard.is_some() {
            return Ok(Outcome::Shard { plan, run: summary });
        }
        Some(summary)
    };
    if sw.is_transfer() {
        let report = super::transfer::write_report(sw, dir, t0.elapsed().as_secs_f64())?;
        return Ok(Outcome::Done {
            plan,
            run,
            rows: Vec::new(),
            report,
        });
    }
    let rows = collect::collect(sw, dir)?;
    collect::write_tables(dir, &rows)?;
    if sw.against_limit() {
        collect::write_limit_table(sw, dir)?;
    }
    let report = if sw.spec.grid.shapes == super::spec::Shapes::Zip {
        super::ladder::write_report(sw, dir, &rows, t0.elapsed().as_secs_f64())?
    } else {
        report::write_report(sw, dir, &rows, t0.elapsed().as_secs_f64())?
    };
    Ok(Outcome::Done {
        plan,
        run,
        rows,
        report,
    })
}
