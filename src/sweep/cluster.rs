//! Sweeps on a cluster: shards of a plan, their state in a directory, and Slurm job
//! arrays that run them.
//!
//! **Shards.** [`shard_tasks`] splits [`Sweep::plan`] into N shards by each task's work
//! estimate ([`crate::shard::partition`], largest first to the least loaded shard), the
//! same in every process. `reslim sweep SPEC --out DIR --shard J/N`
//! ([`super::PipelineOptions::shard`]) runs the unfinished tasks of shard J.
//!
//! **A directory shared by many processes.** Shard runs take the directory's lock
//! *shared* ([`SweepDir::lock_shared`]): any number of them, on any hosts sharing the
//! directory, work at once, and an unsharded run or a report (the exclusive lock) is
//! refused while any of them works. What makes concurrent shards safe:
//! - a task is written as a whole directory, renamed into place, and the first complete
//!   one is kept ([`SweepDir::write_task`]): a task is never half-written, and a task run
//!   twice (a requeued element, the same shard started twice) is harmless, as tasks are
//!   deterministic;
//! - each invocation writes its own run log file (`run-log/`, [`super::read_run_log`]);
//!   `sweep.json` is the same bytes from every process of one spec, written atomically;
//! - a process removes only the temporaries of dead processes of its own host
//!   ([`crate::io::remove_stale_temps`]), never a live shard's;
//! - an element killed mid-task leaves at most a temporary directory; its task stays
//!   missing and the next run of its shard does it.
//!
//! **Status.** [`status`] gives each shard's finished and missing tasks.
//!
//! **Slurm.** [`slurm_files`] writes `DIR/slurm/array.sbatch` (one array element per
//! shard with missing tasks) and `DIR/slurm/collect.sbatch` (after the array, whatever
//! its outcome: the status, then the tables and report); [`submit`] submits them with
//! `sbatch`. Resources come from the plan: `--mem` from the memory estimate of the
//! largest tasks an element runs at once ([`Sweep::task_bytes`], over
//! [`super::MEMORY_FRACTION`], plus [`PROCESS_MIB`]), `--time` from the element's work at
//! [`PARAM_STEPS_PER_CORE_SECOND`] times [`TIME_SAFETY`].

use super::SweepError;
use super::plan::{Sweep, Task};
use super::runner::MEMORY_FRACTION;
use super::store::{SweepDir, TaskState};
use crate::io;
use crate::shard::{self, Shard};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The tasks of `shard`, in plan order.
pub fn shard_tasks(sw: &Sweep, shard: Shard) -> Vec<Task> {
    let plan = sw.plan();
    let costs: Vec<f64> = plan.iter().map(|t| t.cost()).collect();
    let of = shard::partition(&costs, shard.count);
    plan.into_iter()
        .enumerate()
        .filter(|(i, _)| shard.holds(&of, *i))
        .map(|(_, t)| t)
        .collect()
}

/// One shard's tasks by their state in a directory.
#[derive(Debug, Clone)]
pub struct ShardStatus {
    pub shard: Shard,
    /// Every task of the shard, in plan order.
    pub tasks: Vec<Task>,
    /// Finished tasks (made by this spec).
    pub done: usize,
    /// Tasks to run: missing, stale or corrupt.
    pub missing: Vec<Task>,
}

/// Each of `count` shards' finished and missing tasks in `dir` (reads every task's
/// records; takes no lock).
pub fn status(sw: &Sweep, dir: &SweepDir, count: usize) -> Result<Vec<ShardStatus>, SweepError> {
    let plan = sw.plan();
    let costs: Vec<f64> = plan.iter().map(|t| t.cost()).collect();
    let count = Shard::new(0, count)?.count;
    let of = shard::partition(&costs, count);
    let mut out: Vec<ShardStatus> = (0..count)
        .map(|index| ShardStatus {
            shard: Shard { index, count },
            tasks: Vec::new(),
            done: 0,
            missing: Vec::new(),
        })
        .collect();
    for (t, &s) in plan.iter().zip(&of) {
        let st = &mut out[s];
        st.tasks.push(*t);
        match dir.state(sw, t) {
            TaskState::Done(_) => st.done += 1,
            _ => st.missing.push(*t),
        }
    }
    Ok(out)
}

/// Parameter-steps (L M D per coupling variant per step) one core is assumed to do per
/// second when `--time` is derived: a conservative figure, 5x below what the quick sweep
/// (`experiments/quick.toml`, small tasks dominated by overheads) does on one core of a
/// shared 2-core x86 VM (about 2.5e8), so that slow nodes still fit.
pub const PARAM_STEPS_PER_CORE_SECOND: f64 = 5.0e7;
/// The factor on the estimated time of an element for its `--time`.
pub const TIME_SAFETY: f64 = 3.0;
/// Seconds added to every element's estimate (start-up, the data, a limit reference).
pub const STARTUP_SECONDS: f64 = 120.0;
/// Memory of the process beyond its tasks' estimates (binary, data, records), MiB.
pub const PROCESS_MIB: u64 = 512;

/// How to write and submit a sweep's Slurm job array.
#[derive(Debug, Clone, Default)]
pub struct SlurmOptions {
    /// Shards (array elements).
    pub shards: usize,
    /// Elements running at once (`%K`); `None`: no limit.
    pub max_parallel: Option<usize>,
    /// Cores of each element (`--cpus-per-task`), and its parallel tasks.
    pub cpus: usize,
    pub partition: Option<String>,
    pub account: Option<String>,
    /// `--time` as Slurm reads it; `None`: from the work estimate.
    pub time: Option<String>,
    /// More `#SBATCH` options for both scripts (e.g. `--qos=long`, `--constraint=avx512`).
    pub sbatch_args: Vec<String>,
    /// Shell lines run before reslim in both scripts (e.g. `module load ...`).
    pub setup: Vec<String>,
    /// The reslim binary the jobs run (absolute: the nodes must see it).
    pub reslim: PathBuf,
    /// The spec file (absolute).
    pub spec: PathBuf,
    /// The jobs' working directory.
    pub workdir: PathBuf,
    /// Pass `--redo-stale` to the shards.
    pub redo_stale: bool,
}

/// The scripts of a submission and what they ask for.
#[derive(Debug, Clone)]
pub struct SlurmFiles {
    /// Shards of the plan.
    pub shards: usize,
    /// Shards with missing tasks: the array's elements.
    pub elements: Vec<usize>,
    /// `--mem` of each element, MiB.
    pub mem_mib: u64,
    /// `--time` of each element.
    pub time: String,
    /// Whether `time` came from the estimate.
    pub time_estimated: bool,
    pub array_path: PathBuf,
    pub collect_path: PathBuf,
    /// The collect script without its dependency (added by [`submit`]).
    collect: String,
}

/// What [`submit`] submitted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Submission {
    pub shards: usize,
    pub elements: Vec<usize>,
    pub array_job: String,
    pub collect_job: String,
    /// Unix time.
    pub at: u64,
}

/// What `DIR/slurm/submissions.json` keeps: every submission, oldest first.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SlurmState {
    pub submissions: Vec<Submission>,
}

/// The directory of a sweep's Slurm files.
pub fn slurm_dir(dir: &SweepDir) -> PathBuf {
    dir.root.join("slurm")
}

/// The submissions so far (empty if none or unreadable).
pub fn slurm_state(dir: &SweepDir) -> SlurmState {
    std::fs::read(slurm_dir(dir).join("submissions.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// The shard count of the directory's last Slurm scripts ([`slurm_files`] keeps it in
/// `DIR/slurm/shards`), if any.
pub fn submitted_shards(dir: &SweepDir) -> Option<usize> {
    std::fs::read_to_string(slurm_dir(dir).join("shards"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// `s` quoted for a POSIX shell.
fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+=:,@%".contains(&b))
    {
        s.into()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn path_arg(p: &Path) -> String {
    quote(&p.to_string_lossy())
}

/// Seconds as Slurm's `D-HH:MM:SS`, rounded up to whole minutes.
pub fn slurm_time(seconds: f64) -> String {
    let min = (seconds.max(60.0) / 60.0).ceil() as u64;
    format!(
        "{}-{:02}:{:02}:00",
        min / (24 * 60),
        (min / 60) % 24,
        min % 60
    )
}

/// Writes `DIR/slurm/array.sbatch` and `DIR/slurm/collect.sbatch` for the shards of
/// `statuses` ([`status`]) that have missing tasks, the shard count in `DIR/slurm/shards`
/// (the default of later `--status` and `--slurm`), and makes `DIR/slurm/logs/`.
pub fn slurm_files(
    sw: &Sweep,
    dir: &SweepDir,
    statuses: &[ShardStatus],
    o: &SlurmOptions,
) -> Result<SlurmFiles, SweepError> {
    let cpus = o.cpus.max(1);
    let elements: Vec<usize> = statuses
        .iter()
        .filter(|s| !s.missing.is_empty())
        .map(|s| s.shard.index)
        .collect();
    // Memory: the `cpus` largest tasks of an element at once; time: its work over its
    // cores, or its largest task, whichever is longer (over the shards that run).
    let (mut need, mut secs) = (0usize, 0.0f64);
    for s in statuses.iter().filter(|s| !s.missing.is_empty()) {
        let mut bytes = Vec::with_capacity(s.missing.len());
        for t in &s.missing {
            bytes.push(sw.task_bytes(t).map_err(|source| SweepError::Memory {
                task: t.id(),
                source,
            })?);
        }
        bytes.sort_unstable_by(|a, b| b.cmp(a));
        need = need.max(bytes.iter().take(cpus).sum());
        let work = |t: &Task| t.cost() * sw.spec.steps as f64 * sw.couplings_of(t).len() as f64;
        let total: f64 = s.missing.iter().map(work).sum();
        let largest = s.missing.iter().map(work).fold(0.0, f64::max);
        secs = secs.max((total / cpus as f64).max(largest) / PARAM_STEPS_PER_CORE_SECOND);
    }
    let mem_mib = (need as f64 / MEMORY_FRACTION / (1 << 20) as f64).ceil() as u64 + PROCESS_MIB;
    let (time, time_estimated) = match &o.time {
        Some(t) => (t.clone(), false),
        None => (slurm_time(TIME_SAFETY * secs + STARTUP_SECONDS), true),
    };
    let sdir = slurm_dir(dir);
    let logs = sdir.join("logs");
    std::fs::create_dir_all(&logs).map_err(|source| io::IoError::Os {
        path: logs.clone(),
        source,
    })?;
    let name = &sw.spec.name;
    let mut head = String::new();
    let mut common = String::new();
    for (k, v) in [("partition", &o.partition), ("account", &o.account)] {
        if let Some(v) = v {
            let _ = writeln!(common, "#SBATCH --{k}={v}");
        }
    }
    for a in &o.sbatch_args {
        let _ = writeln!(common, "#SBATCH {a}");
    }
    let mut setup = format!("set -u\ncd {}\n", path_arg(&o.workdir));
    for l in &o.setup {
        let _ = writeln!(setup, "{l}");
    }
    let base = format!(
        "{} --threads {cpus} sweep {} --out {}",
        path_arg(&o.reslim),
        path_arg(&o.spec),
        path_arg(&dir.root)
    );
    let array_list = elements
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let array_spec = match (elements.first(), elements.last()) {
        (Some(&a), Some(&b)) if a == b => a.to_string(),
        (Some(&a), Some(&b)) if b - a + 1 == elements.len() => format!("{a}-{b}"),
        _ => array_list,
    };
    let limit = o.max_parallel.map(|k| format!("%{k}")).unwrap_or_default();
    let _ = write!(
        head,
        "#!/bin/bash\n\
         # Written by `reslim sweep --slurm` (reslim {ver}): sweep '{name}' in {n} shard(s);\n\
         # this array runs the {e} shard(s) with missing tasks. Element J runs the unfinished\n\
         # tasks of shard J/{n}; any element may be re-run, requeued or run twice.\n\
         # --mem: its {cpus} largest tasks at once / {frac} + {PROCESS_MIB} MiB; --time: {how}.\n\
         #SBATCH --job-name=reslim-{name}\n\
         #SBATCH --array={array_spec}{limit}\n\
         #SBATCH --cpus-per-task={cpus}\n\
         #SBATCH --mem={mem_mib}M\n\
         #SBATCH --time={time}\n\
         #SBATCH --output={logs}/%A_%a.out\n",
        ver = env!("CARGO_PKG_VERSION"),
        n = statuses.len(),
        e = elements.len(),
        frac = MEMORY_FRACTION,
        how = if time_estimated {
            format!(
                "({TIME_SAFETY} x the work at {PARAM_STEPS_PER_CORE_SECOND:e} parameter-steps per core-second + {STARTUP_SECONDS} s)"
            )
        } else {
            "as given".into()
        },
        logs = logs.display(),
    );
    let array = format!(
        "{head}{common}\n{setup}exec {base} --shard \"${{SLURM_ARRAY_TASK_ID}}/{n}\" --jobs {cpus}{redo}\n",
        n = statuses.len(),
        redo = if o.redo_stale { " --redo-stale" } else { "" },
    );
    let collect = format!(
        "#!/bin/bash\n\
         # Written by `reslim sweep --slurm`: after the array (afterany, whatever its elements'\n\
         # fate), the status of every shard, then the tables, fits and report of what finished.\n\
         # Exits 1 with a line naming the missing tasks if some are missing.\n\
         #SBATCH --job-name=reslim-{name}-collect\n\
         #SBATCH --cpus-per-task={cpus}\n\
         #SBATCH --mem={mem_mib}M\n\
         #SBATCH --time=0-01:00:00\n\
         #SBATCH --output={logs}/collect_%j.out\n\
         {common}{{DEPENDENCY}}\n{setup}\
         complete=0\n\
         {base} --status --shards {n} || complete=$?\n\
         if [ \"$complete\" != 0 ]; then\n\
         \x20 {base} --report-only || echo \"reslim: no report of the finished tasks (above)\"\n\
         \x20 echo \"reslim: tasks are missing (above); resubmit the shards that have them: reslim sweep {spec} --out {out} --slurm\"\n\
         \x20 exit 1\n\
         fi\n\
         exec {base} --report-only\n",
        logs = logs.display(),
        n = statuses.len(),
        spec = path_arg(&o.spec),
        out = path_arg(&dir.root),
    );
    let array_path = sdir.join("array.sbatch");
    let collect_path = sdir.join("collect.sbatch");
    io::atomic_write(&array_path, array.as_bytes())?;
    io::atomic_write(
        &sdir.join("shards"),
        format!("{}\n", statuses.len()).as_bytes(),
    )?;
    io::atomic_write(
        &collect_path,
        collect
            .replace(
                "{DEPENDENCY}",
                "# (submitted with --dependency=afterany:<the array's job id>)",
            )
            .as_bytes(),
    )?;
    Ok(SlurmFiles {
        shards: statuses.len(),
        elements,
        mem_mib,
        time,
        time_estimated,
        array_path,
        collect_path,
        collect,
    })
}

/// Runs `sbatch --parsable ARGS`, returning the job id.
fn sbatch(args: &[String]) -> Result<String, SweepError> {
    let command = format!("sbatch --parsable {}", args.join(" "));
    let out = std::process::Command::new("sbatch")
        .arg("--parsable")
        .args(args)
        .output()
        .map_err(|e| SweepError::Slurm {
            command: command.clone(),
            why: if e.kind() == std::io::ErrorKind::NotFound {
                "sbatch is not on PATH: Slurm is not installed or not loaded on this machine \
                 (submit from a login node of the cluster; --dry-run writes the scripts without submitting)"
                    .into()
            } else {
                e.to_string()
            },
        })?;
    if !out.status.success() {
        return Err(SweepError::Slurm {
            command,
            why: format!(
                "{} ({})",
                String::from_utf8_lossy(&out.stderr).trim(),
                out.status
            ),
        });
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let id = stdout
        .trim()
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SweepError::Slurm {
            command,
            why: format!("no job id in its output '{}'", stdout.trim()),
        });
    }
    Ok(id)
}

/// Submits the array, then the collect job after it (`afterany`), writing the
/// dependency into `collect.sbatch`, and records the submission in
/// `DIR/slurm/submissions.json`. Nothing is submitted when no shard has missing tasks.
pub fn submit(dir: &SweepDir, files: &SlurmFiles) -> Result<Option<Submission>, SweepError> {
    if files.elements.is_empty() {
        return Ok(None);
    }
    let array_job = sbatch(&[files.array_path.to_string_lossy().into_owned()])?;
    io::atomic_write(
        &files.collect_path,
        files
            .collect
            .replace(
                "{DEPENDENCY}",
                &format!("#SBATCH --dependency=afterany:{array_job}"),
            )
            .as_bytes(),
    )?;
    let collect_job = sbatch(&[files.collect_path.to_string_lossy().into_owned()])?;
    let sub = Submission {
        shards: files.shards,
        elements: files.elements.clone(),
        array_job,
        collect_job,
        at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    let mut state = slurm_state(dir);
    state.submissions.push(sub.clone());
    io::atomic_write(
        &slurm_dir(dir).join("submissions.json"),
        serde_json::to_string_pretty(&state)
            .expect("submissions serialise")
            .as_bytes(),
    )?;
    Ok(Some(sub))
}
