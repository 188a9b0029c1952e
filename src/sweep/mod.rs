//! Shape sweeps: train ResNets over grids of (L, M, D), measure their distance to a
//! reference, and collect tidy tables.
//!
//! **Plan.** A sweep is planned into independent tasks, one per (repetition, shape). A
//! task's id is `r{rep}-L{L}-M{M}-D{D}` and its seeds are derived from the sweep seed and
//! that id ([`crate::rng::derive_seed`]), never from the order of execution. A transfer
//! sweep ([`transfer`]) has one task per (repetition, shape, knob point), with id
//! `r{rep}-L{L}-M{M}-D{D}-k{point}` and the shape's seeds. A task trains
//! every coupling variant of its shape from the same block weights U, V:
//! - `coupled`: W_E, W_U are the first D rows of the repetition's embedding draw (the
//!   reference's rows), docs/papers.md 2.4 "coupled randomness";
//! - `uncoupled`: W_E, W_U drawn afresh for this shape (the paper's `errs_y2`).
//!
//! The reference of repetition r is the reference shape trained with the coupled
//! embeddings of repetition r (it is itself a task; its `coupled` record is the
//! reference).
//!
//! **Run.** Tasks run in parallel across runs (one worker thread per job, each task with a
//! single-threaded step), largest first so that the cores stay busy. Each task writes its
//! records into a temporary directory that is renamed into `tasks/{id}` when complete, so
//! a task is either absent or complete: re-running a sweep skips finished tasks, and a
//! killed sweep resumes where it stopped without losing anything.
//!
//! **Collect.** Errors at every read step (docs/papers.md 2.4):
//! - embedding space (coupled only): `msq_h = sum_{n, d<D} (h_L[d,n] - h_L^ref[d,n])^2 / (D N)`
//!   per repetition, `err_h = sqrt(mean_reps msq_h)` (the Julia `errs_h`);
//! - output space: `msq_y = mean_{o,n} (f[o,n] - f^ref[o,n])^2`, `err_y = sqrt(mean_reps msq_y)`.
//!
//! Step numbering: record k is the network after k updates (k = 0..K-1). The Julia
//! notebook's 1-based "k = 15" with K = 15 is record 14 here, its "k = 10" record 9.

//! The module is built in rooms, one stage of the pipeline each:
//! - [`spec`]: the sweep spec as written (grid axes, data, reference, report options);
//! - [`plan`]: the checked [`Sweep`] (validation without solving or training anything)
//!   and its deterministic [`Task`]s, with their seeds and provenance inputs;
//! - [`error`]: [`SweepError`], the sweep's errors and those of the modules it drives;
//! - [`task`]: how a task runs ([`Strategy`]: dense, low-rank or against the limit),
//!   its bytes and its records;
//! - [`store`]: the sweep directory, task states and the lock;
//! - [`runner`]: the resumable, largest-first parallel runner;
//! - [`collect`](mod@collect): errors against the reference and the tidy tables;
//! - [`transfer`]: transfer sweeps (knob axes in the grid, no reference): the loss
//!   after K steps against a knob, its optimum per shape and the optimum's drift with
//!   L, M and D;
//! - [`cluster`]: shards of the plan for many processes sharing one directory, their
//!   status, and Slurm job arrays that run them;
//! - [`pipeline`]: the whole sweep as one library function ([`execute`]) that the CLI
//!   calls (check, plan, run, collect, tables, report).

pub mod cluster;
pub mod collect;
pub mod error;
pub mod ladder;
pub mod pipeline;
pub mod plan;
pub mod report;
pub mod runner;
pub mod spec;
pub mod store;
pub mod task;
pub mod transfer;

pub use collect::{
    AggRow, DIVERGED_ERROR, ErrorRow, aggregate, collect, collect_limit, write_limit_table,
    write_tables,
};
pub use error::SweepError;
pub use pipeline::{Observer, Outcome, PipelineOptions, PlanEntry, PlanSummary, Silent, execute};
pub use plan::{KnobGrid, LimitPlan, LimitSolver, MAX_TASKS, Sweep, Task};
pub use runner::{
    MAX_JOBS, MEMORY_FRACTION, RunOptions, RunSummary, check_jobs, read_run_log, run,
};
pub use spec::{
    Axis, Backend, Coupling, DataSpec, GridSpec, Knob, KnobAxis, MAX_BOOTSTRAP, MIN_BOOTSTRAP,
    ReferenceSpec, ReportSettings, ReportSpec, Samples, SweepSpec, logspace,
};
pub use store::{StoredTask, Survey, SweepDir, TaskState};
pub use task::{Strategy, TaskRecord, run_task, run_task_on};

#[cfg(test)]
mod tests;
