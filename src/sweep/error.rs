//! The errors of a sweep: its own (a task that cannot fit, stale records, a failed task)
//! and those of the modules it drives, each kept whole so that its message names the
//! field, file, step or layer.

use crate::fit::FitError;
use crate::io::IoError;
use crate::limit::LimitError;
use crate::memory::MemoryError;
use crate::param::ParamError;
use crate::plot::PlotError;
use crate::shard::ShardError;
use crate::spec::SpecError;
use crate::train::TrainError;
use crate::vslimit::ReferenceError;
use std::path::PathBuf;

/// A sweep that cannot be checked, run, collected or reported.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SweepError {
    /// The largest task cannot fit in the memory available.
    #[error("task {task}: {source}")]
    Memory {
        task: String,
        #[source]
        source: MemoryError,
    },
    /// Finished tasks of the directory were made by a different spec.
    #[error(
        "{count} finished task(s) in {dir} were made by a different spec or an older reslim; changed: {fields}. Their records are not used. Rerun with --redo-stale to retrain them (overwriting them), or write to another output directory"
    )]
    Stale {
        dir: PathBuf,
        count: usize,
        fields: String,
    },
    /// The run's cancel token was set ([`super::RunOptions::cancel`]): every finished
    /// task is on disk, and running the sweep again resumes with the others.
    #[error(
        "sweep cancelled: {finished} task(s) finished in this run are kept, {remaining} remain (run it again to resume)"
    )]
    Cancelled { finished: usize, remaining: usize },
    /// A task failed (the first one to, when several run at once).
    #[error("task {task} failed: {source}")]
    Task {
        task: String,
        #[source]
        source: Box<SweepError>,
    },
    /// A Slurm command (`sbatch`) could not run or failed.
    #[error("{command}: {why}")]
    Slurm { command: String, why: String },
    #[error(transparent)]
    Shard(#[from] ShardError),
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Io(#[from] IoError),
    #[error(transparent)]
    Available(#[from] MemoryError),
    #[error(transparent)]
    Param(#[from] ParamError),
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error(transparent)]
    Limit(#[from] LimitError),
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error(transparent)]
    Fit(#[from] FitError),
    #[error(transparent)]
    Plot(#[from] PlotError),
}
