//! The runs of an experiment: one model per (training-set size n, repetition k), trained
//! and measured along training; results written one JSON file per run, atomically, so an
//! interrupted experiment resumes where it stopped.
//!
//! A run (docs/papers.md 1.4, "Recommended protocol"):
//! 1. draws its training set (n samples) and test set, and its particles;
//! 2. computes K0 on the training inputs and `Lambda = lambda_min(K0)` (docs/papers.md 1.3);
//! 3. runs GD with step `eta = lr / beta^2` until the training loss is at most
//!    `target_loss` or the step budget `max_steps` (a power law in n) is spent,
//!    recording the loss and the KL estimates at every step; with `backoff < 1`, eta is
//!    multiplied by `backoff` after every step that raised the loss by more than the
//!    fraction `backoff_rise` (a step beyond the stability limit `2 n / lambda_max(G)`,
//!    and `lambda_max(G)` grows during training) and by `growth` (capped at
//!    `lr / beta^2`) after every other step; the time `t` is the sum of the steps taken;
//! 4. at the checkpoint steps and at the last step, measures the training and test 0-1
//!    errors, the Gram matrices and their smallest eigenvalues, the instantaneous decay
//!    rate `2 r^T G r / (n |r|^2)`, and the terms of the generalization bound.
//!
//! Runs are independent and run in parallel (rayon over runs, each run sequential
//! inside); a run's result depends only on the config, n and k, never on the thread
//! count.

use super::data::{DataError, Dataset};
use super::gram::{self, Spectrum};
use super::kernel0::InitKernel;
use super::kl::{FlowKl, KlEstimate};
use super::net::{Derivatives, Net, Workspace};
use super::spec::{DataSource, ExperimentConfig};
use crate::io::{self, IoError};
use crate::memory::{self, MemoryError};
use crate::provenance;
use crate::shard::{Shard, ShardError};
use crate::train::TrainError;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Errors of the mean-field experiment.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MeanFieldError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("run n = {n}, repetition {k}: {source}")]
    Train {
        n: usize,
        k: usize,
        #[source]
        source: TrainError,
    },
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("{path}: {msg}")]
    Json { path: PathBuf, msg: String },
    #[error("report: {0}")]
    Report(String),
    /// Stored runs of the output directory were made by a different config.
    #[error(
        "{count} stored run(s) in {dir} were made by a different spec or an older reslim; changed: {fields}. They are not used. Rerun with --redo-stale to retrain them (overwriting them), or write to another output directory"
    )]
    Stale {
        dir: PathBuf,
        count: usize,
        fields: String,
    },
    #[error(transparent)]
    Memory(#[from] MemoryError),
}

/// The terms of the generalization bound (docs/papers.md 1.3, "Rademacher / generalization"),
/// with the unknown constants set to 1:
/// `P[y f(x) < 0] <= surrogate + 2 beta sqrt(r/n) + 3 sqrt(log(2/delta) / (2n))`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Bound {
    /// KL radius `r = KL(tau) + KL(nu)` (negative estimates clamped to 0).
    pub r: f64,
    /// Empirical surrogate loss: the mean clipped squared loss `min(1, (f - y)^2)`, an upper
    /// bound of the 0-1 loss for labels ±1 (reslim's choice; the paper's surrogate is not
    /// known).
    pub surrogate: f64,
    /// `beta sqrt(r / n)`.
    pub rademacher: f64,
    /// `3 sqrt(log(2/delta) / (2n))`.
    pub confidence: f64,
    /// `surrogate + 2 rademacher + confidence`.
    pub total: f64,
}

impl Bound {
    pub fn new(beta: f64, n: usize, delta: f64, kl: KlEstimate, surrogate: f64) -> Self {
        let r = kl.total().max(0.0);
        let rademacher = beta * (r / n as f64).sqrt();
        let confidence = 3.0 * ((2.0 / delta).ln() / (2.0 * n as f64)).sqrt();
        Bound {
            r,
            surrogate,
            rademacher,
            confidence,
            total: surrogate + 2.0 * rademacher + confidence,
        }
    }
}

/// What is measured at a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub step: usize,
    /// Time `t`: the sum of the step sizes so far (`step * eta` at a constant eta).
    pub t: f64,
    pub loss: f64,
    pub train_error: f64,
    pub test_error: f64,
    pub kl: KlEstimate,
    pub bound: Bound,
    /// Spectra of G2 and G1 + G2 (absent when the Gram matrices are off or n is above
    /// `gram_max_n`).
    pub g2: Option<Spectrum>,
    pub g: Option<Spectrum>,
    /// `lambda_min(G) / (beta^2 Lambda)`: the claim is that it stays at least 1/2.
    #[serde(with = "crate::io::nullable")]
    pub ratio: f64,
    /// Instantaneous decay rate of the loss under the flow, `2 r^T G r / (n |r|^2)`.
    #[serde(with = "crate::io::nullable")]
    pub rayleigh_rate: f64,
}

/// Linear-convergence rates of the loss, per unit time `t` (docs/papers.md 1.3:
/// `L(t) <= exp(-2 lambda t / n) L(0)` when `lambda_min(G) >= lambda`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Rates {
    /// `-slope` of the OLS fit of `log L` against t over the whole run.
    #[serde(with = "crate::io::nullable")]
    pub fitted: f64,
    /// `-slope` over the second half of the run.
    #[serde(with = "crate::io::nullable")]
    pub fitted_tail: f64,
    /// `2 min_t lambda_min(G(t)) / n` over the checkpoints: the rate the Gram matrix
    /// guarantees.
    #[serde(with = "crate::io::nullable")]
    pub gram: f64,
    /// `beta^2 Lambda / n`: the rate of the paper's bound with lambda = beta^2 Lambda / 2.
    #[serde(with = "crate::io::nullable")]
    pub paper: f64,
}

/// The result of one run, written as `runs/n{n}-k{k}.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    pub n: usize,
    /// Repetition index.
    pub k: usize,
    /// Size of the test set.
    pub n_test: usize,
    pub data_seed: u64,
    pub model_seed: u64,
    pub beta: f64,
    /// The initial step size `lr / beta^2`.
    pub eta: f64,
    /// The step size of every update: `etas[s]` took the parameters after s updates to
    /// s + 1 (constant `eta` unless `backoff < 1`).
    #[serde(default)]
    pub etas: Vec<f64>,
    /// Steps taken (updates applied).
    pub steps: usize,
    /// "target_loss" or "max_steps".
    pub stopped: String,
    /// `Lambda = lambda_min(K0)` on the training inputs (absent for unnormalised inputs).
    pub lambda0: Option<Spectrum>,
    /// Training loss after 0..=steps updates.
    pub losses: Vec<f64>,
    /// KL estimates after 0..=steps updates.
    pub kl_stack: Vec<f64>,
    pub kl_head: Vec<f64>,
    /// Particle steps where `det(I - eta H) <= 0`.
    pub kl_folds: u64,
    pub checkpoints: Vec<Checkpoint>,
    pub rates: Rates,
    pub seconds: Seconds,
    /// The config the run was made with (minus the list of sizes and repetitions), to
    /// decide whether a stored run can be reused.
    pub config: serde_json::Value,
}

/// Wall-clock seconds of a run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Seconds {
    pub train: f64,
    pub measure: f64,
    pub total: f64,
}

impl RunResult {
    /// The last checkpoint (the end of training).
    pub fn last(&self) -> &Checkpoint {
        self.checkpoints
            .last()
            .expect("a run has at least one checkpoint")
    }

    /// The step size of update `s` (from the parameters after s updates to s + 1).
    pub fn eta_at(&self, s: usize) -> f64 {
        self.etas.get(s).copied().unwrap_or(self.eta)
    }

    /// The step size of the last update (the initial one if there was none).
    pub fn final_eta(&self) -> f64 {
        self.etas.last().copied().unwrap_or(self.eta)
    }

    /// The time `t` after 0..=steps updates (the running sum of the step sizes).
    pub fn times(&self) -> Vec<f64> {
        times_of(&self.etas)
    }

    /// How many times the step size was cut (updates with a smaller eta than the one
    /// before).
    pub fn backoffs(&self) -> usize {
        self.etas.windows(2).filter(|w| w[1] < w[0]).count()
    }

    /// The step at which the loss reached the target, if it did.
    pub fn steps_to_target(&self) -> Option<usize> {
        (self.stopped == "target_loss").then_some(self.steps)
    }

    /// `min_t lambda_min(G(t)) / (beta^2 Lambda)` over the checkpoints.
    pub fn min_ratio(&self) -> f64 {
        self.checkpoints
            .iter()
            .map(|c| c.ratio)
            .fold(f64::NAN, f64::min)
    }
}

fn times_of(etas: &[f64]) -> Vec<f64> {
    let mut t = Vec::with_capacity(etas.len() + 1);
    let mut acc = 0.0;
    t.push(acc);
    for e in etas {
        acc += e;
        t.push(acc);
    }
    t
}

/// The part of the config a single run depends on (everything but the name, the list of
/// sizes and the number of repetitions), with [`crate::provenance::FORMAT`] and, for CSV
/// data, a hash of the files' contents (an edited data file makes stored runs stale even
/// where its path is unchanged).
pub fn run_key(cfg: &ExperimentConfig) -> serde_json::Value {
    let mut v = serde_json::to_value(cfg).expect("config serialises");
    if let Some(o) = v.as_object_mut() {
        for k in ["name", "seeds", "n_train"] {
            o.remove(k);
        }
        o.insert("format".into(), crate::provenance::FORMAT.into());
        if let DataSource::Csv { train, test, .. } = &cfg.data {
            let hash = |p: &Path| match std::fs::read(p) {
                Ok(b) => crate::provenance::hash_bytes(&b),
                Err(e) => format!("unreadable: {e}"),
            };
            o.insert(
                "data_contents".into(),
                serde_json::json!({"train": hash(train), "test": hash(test)}),
            );
        }
    }
    v
}

/// What an output directory holds for one run.
#[derive(Debug, Clone)]
pub enum StoredRun {
    /// Nothing.
    Missing,
    /// A complete result made by this config.
    Usable(Box<RunResult>),
    /// A result made by another config (or an older reslim): the changed fields.
    Stale(Vec<String>),
    /// A file that cannot be read or is incomplete: why.
    Corrupt(String),
}

/// Reads the stored result of run (n, k) at `path` and says whether it can be reused for
/// the config whose [`run_key`] is `key`.
pub fn stored_run(path: &Path, key: &serde_json::Value, n: usize, k: usize) -> StoredRun {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return StoredRun::Missing,
        Err(e) => return StoredRun::Corrupt(format!("{}: {e}", path.display())),
    };
    let r: RunResult = match serde_json::from_str(&text) {
        Ok(r) => r,
        Err(e) => return StoredRun::Corrupt(format!("{}: unreadable: {e}", path.display())),
    };
    if r.config != *key {
        let mut changed = crate::provenance::changed_fields(&r.config, key);
        if changed.is_empty() {
            changed.push("(config)".into());
        }
        return StoredRun::Stale(changed);
    }
    match r.check(n, k) {
        Ok(()) => StoredRun::Usable(Box::new(r)),
        Err(why) => StoredRun::Corrupt(format!("{}: {why}", path.display())),
    }
}

impl RunResult {
    /// Whether this is a complete result of run (n, k): `steps` updates with their step
    /// sizes, `steps + 1` losses and KL values, and checkpoints from 0 to `steps`.
    pub fn check(&self, n: usize, k: usize) -> Result<(), String> {
        if (self.n, self.k) != (n, k) {
            return Err(format!("holds run n = {}, k = {}", self.n, self.k));
        }
        let s = self.steps;
        for (what, len, want) in [
            ("step sizes", self.etas.len(), Some(s)),
            ("losses", self.losses.len(), s.checked_add(1)),
            (
                "KL values of the stack",
                self.kl_stack.len(),
                s.checked_add(1),
            ),
            (
                "KL values of the head",
                self.kl_head.len(),
                s.checked_add(1),
            ),
        ] {
            if Some(len) != want {
                return Err(format!("{len} {what} for {s} steps"));
            }
        }
        let steps: Vec<usize> = self.checkpoints.iter().map(|c| c.step).collect();
        if steps.first() != Some(&0)
            || steps.last() != Some(&s)
            || steps.windows(2).any(|w| w[0] >= w[1])
        {
            return Err(format!("checkpoints at steps {steps:?} for {s} steps"));
        }
        Ok(())
    }
}

/// Fraction of samples where `sign(f) != y` (f = 0 counts as an error).
pub fn zero_one_error(f: &[f64], y: &[f64]) -> f64 {
    f.iter().zip(y).filter(|(f, y)| **f * **y <= 0.0).count() as f64 / y.len().max(1) as f64
}

/// Trains and measures the model of repetition k on n training samples.
pub fn run_one(cfg: &ExperimentConfig, n: usize, k: usize) -> Result<RunResult, MeanFieldError> {
    let t_start = Instant::now();
    let (train, test) = cfg.datasets(n, k)?;
    let (data_seed, model_seed) = cfg.seeds_of(k);
    let arch = cfg.arch(n);
    let beta = arch.beta;
    let eta0 = cfg.lr / (beta * beta);
    let mut eta = eta0;
    let mut etas = Vec::new();
    let mut t = 0.0;
    let max_steps = cfg.max_steps_at(n);
    let mut net = Net::init(arch, cfg.init, model_seed);
    let mut measure_s = 0.0;
    let t0 = Instant::now();
    let lambda0 = cfg.normalized().then(|| {
        let k0 = InitKernel::shared(cfg.activation).matrix(&train.x, train.d);
        gram::extreme_eigenvalues(&k0, n)
    });
    measure_s += t0.elapsed().as_secs_f64();
    let big_lambda = lambda0.map(|s| s.min).unwrap_or(f64::NAN);
    let mut ws = Workspace::new(&arch);
    let mut der = Derivatives::new(&arch);
    let mut kl = FlowKl::new(&net);
    let plan = cfg.checkpoint_steps(n);
    let (mut losses, mut kl_stack, mut kl_head) = (Vec::new(), Vec::new(), Vec::new());
    let mut checkpoints = Vec::new();
    let mut step = 0;
    let stopped = loop {
        net.derivatives(&train.x, &train.y, &mut ws, &mut der);
        if !der.loss.is_finite() {
            return Err(MeanFieldError::Train {
                n,
                k,
                source: TrainError::Diverged {
                    step,
                    layer: None,
                    what: "loss",
                },
            });
        }
        // A step that raised the loss went beyond the stability limit: shrink eta; after
        // a step that did not, let it grow back towards lr / beta^2.
        if let Some(&prev) = losses.last() {
            if der.loss > prev * (1.0 + cfg.backoff_rise) {
                eta *= cfg.backoff;
            } else {
                eta = (eta * cfg.growth).min(eta0);
            }
        }
        let est = kl.estimate(&net);
        losses.push(der.loss);
        kl_stack.push(est.stack);
        kl_head.push(est.head);
        let done = if der.loss <= cfg.target_loss {
            Some("target_loss")
        } else if step == max_steps {
            Some("max_steps")
        } else {
            None
        };
        if done.is_some() || plan.contains(&step) {
            let t0 = Instant::now();
            checkpoints.push(measure(
                cfg, &net, &train, &test, step, t, der.loss, est, big_lambda,
            ));
            measure_s += t0.elapsed().as_secs_f64();
        }
        if let Some(why) = done {
            break why.to_string();
        }
        net.apply(&der, eta, Some(&mut kl));
        etas.push(eta);
        t += eta;
        step += 1;
        net.check_finite(step)
            .map_err(|source| MeanFieldError::Train { n, k, source })?;
    };
    let total = t_start.elapsed().as_secs_f64();
    let times = times_of(&etas);
    let rates = rates(&losses, &times, n, beta, big_lambda, &checkpoints);
    Ok(RunResult {
        n,
        k,
        n_test: test.n(),
        data_seed,
        model_seed,
        beta,
        eta: eta0,
        etas,
        steps: step,
        stopped,
        lambda0,
        losses,
        kl_stack,
        kl_head,
        kl_folds: kl.folds,
        checkpoints,
        rates,
        seconds: Seconds {
            train: total - measure_s,
            measure: measure_s,
            total,
        },
        config: run_key(cfg),
    })
}

#[allow(clippy::too_many_arguments)]
fn measure(
    cfg: &ExperimentConfig,
    net: &Net,
    train: &Dataset,
    test: &Dataset,
    step: usize,
    t: f64,
    loss: f64,
    kl: KlEstimate,
    big_lambda: f64,
) -> Checkpoint {
    let n = train.n();
    let beta = net.arch.beta;
    let f = net.predict(&train.x);
    let ft = net.predict(&test.x);
    let r: Vec<f64> = f.iter().zip(&train.y).map(|(f, y)| f - y).collect();
    let surrogate = r.iter().map(|e| (e * e).min(1.0)).sum::<f64>() / n as f64;
    let (mut g2s, mut gs, mut ratio, mut rayleigh_rate) = (None, None, f64::NAN, f64::NAN);
    if cfg.gram && n <= cfg.gram_max_n {
        let gram::Grams { g1: mut g, g2, .. } = gram::grams(net, &train.x);
        g2s = Some(gram::extreme_eigenvalues(&g2, n));
        g.iter_mut().zip(&g2).for_each(|(a, b)| *a += b);
        let s = gram::extreme_eigenvalues(&g, n);
        ratio = s.min / (beta * beta * big_lambda);
        gs = Some(s);
        let rr: f64 = r.iter().map(|x| x * x).sum();
        let mut rgr = 0.0;
        for j in 0..n {
            let col = &g[j * n..(j + 1) * n];
            rgr += r[j] * col.iter().zip(&r).map(|(a, b)| a * b).sum::<f64>();
        }
        rayleigh_rate = 2.0 * rgr / (n as f64 * rr);
    }
    Checkpoint {
        step,
        t,
        loss,
        train_error: zero_one_error(&f, &train.y),
        test_error: zero_one_error(&ft, &test.y),
        kl,
        bound: Bound::new(beta, n, cfg.delta, kl, surrogate),
        g2: g2s,
        g: gs,
        ratio,
        rayleigh_rate,
    }
}

fn rates(
    losses: &[f64],
    times: &[f64],
    n: usize,
    beta: f64,
    big_lambda: f64,
    cps: &[Checkpoint],
) -> Rates {
    let fit = |from: usize| -> f64 {
        let (t, l): (Vec<f64>, Vec<f64>) = losses
            .iter()
            .enumerate()
            .skip(from)
            .filter(|(_, l)| **l > 0.0)
            .map(|(k, l)| (times[k], l.ln()))
            .unzip();
        crate::fit::ols(&t, &l)
            .map(|f| -f.slope)
            .unwrap_or(f64::NAN)
    };
    let min_g = cps
        .iter()
        .filter_map(|c| c.g.map(|s| s.min))
        .fold(f64::NAN, f64::min);
    Rates {
        fitted: fit(0),
        fitted_tail: fit(losses.len() / 2),
        gram: 2.0 * min_g / n as f64,
        paper: beta * beta * big_lambda / n as f64,
    }
}

/// Where the result of run (n, k) is stored under the output directory.
pub fn run_path(out: &Path, n: usize, k: usize) -> PathBuf {
    out.join("runs").join(format!("n{n:05}-k{k}.json"))
}

/// What happened to one run of [`run_experiment`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    /// Trained now.
    Done,
    /// A stored result with the same config was reused.
    Reused,
    /// Trained now, replacing a stored result that was unusable (unreadable or
    /// incomplete) or, with `redo_stale`, made by another config.
    Replaced,
}

/// Runs every (n, k) of the config that has no stored result with the same config under
/// `out/runs/`, in parallel (one worker per rayon thread, larger n first), writing each
/// result atomically as soon as it is done; returns all results, sorted by (n, k).
/// `on_run` is called after each run. The first failing run stops the workers (runs
/// already written stay on disk) and its error is returned.
///
/// Stored results are checked first ([`stored_run`]): complete ones of this config are
/// reused, unreadable or incomplete ones are redone ([`RunStatus::Replaced`]), and ones
/// made by another config are never used: the call fails with [`MeanFieldError::Stale`],
/// naming the changed fields, unless `redo_stale` (then they are redone). The caller
/// should hold the directory's [`io::DirLock`] so that no other process writes there.
pub fn run_experiment(
    cfg: &ExperimentConfig,
    out: &Path,
    redo_stale: bool,
    on_run: &(dyn Fn(&RunResult, RunStatus) + Sync),
) -> Result<Vec<RunResult>, MeanFieldError> {
    run_shard(cfg, out, None, redo_stale, on_run)
}

/// Every (n, k) of the config, in plan order (n as listed, then k).
pub fn plan_runs(cfg: &ExperimentConfig) -> Vec<(usize, usize)> {
    cfg.n_train
        .iter()
        .flat_map(|&n| (0..cfg.seeds).map(move |k| (n, k)))
        .collect()
}

/// The runs of `shard` ([`crate::shard::partition`] of [`plan_runs`] by the training's
/// work estimate, n times the step budget at n), in plan order.
pub fn shard_runs(cfg: &ExperimentConfig, shard: Shard) -> Vec<(usize, usize)> {
    let runs = plan_runs(cfg);
    let costs: Vec<f64> = runs
        .iter()
        .map(|&(n, _)| n as f64 * cfg.max_steps_at(n) as f64)
        .collect();
    let of = crate::shard::partition(&costs, shard.count);
    runs.into_iter()
        .enumerate()
        .filter(|(i, _)| shard.holds(&of, *i))
        .map(|(_, r)| r)
        .collect()
}

/// One shard's runs, as (n, k): with a usable stored result, and without (missing,
/// stale or corrupt).
pub type ShardRuns = (Shard, Vec<(usize, usize)>, Vec<(usize, usize)>);

/// Each of `count` shards' finished and missing runs in `out`.
pub fn shard_status(
    cfg: &ExperimentConfig,
    out: &Path,
    count: usize,
) -> Result<Vec<ShardRuns>, ShardError> {
    let key = run_key(cfg);
    (0..count)
        .map(|j| {
            let shard = Shard::new(j, count)?;
            let (mut done, mut missing) = (Vec::new(), Vec::new());
            for (n, k) in shard_runs(cfg, shard) {
                match stored_run(&run_path(out, n, k), &key, n, k) {
                    StoredRun::Usable(_) => done.push((n, k)),
                    _ => missing.push((n, k)),
                }
            }
            Ok((shard, done, missing))
        })
        .collect()
}

/// [`run_experiment`] for the runs of `shard` alone (all with `None`). Shard processes
/// may share `out` (hold its lock shared, [`io::DirLock::acquire_shared`]): a run is
/// written with [`io::write_new`], so of two processes finishing the same run the first
/// result stays (an unusable stored one is replaced atomically).
pub fn run_shard(
    cfg: &ExperimentConfig,
    out: &Path,
    shard: Option<Shard>,
    redo_stale: bool,
    on_run: &(dyn Fn(&RunResult, RunStatus) + Sync),
) -> Result<Vec<RunResult>, MeanFieldError> {
    use rayon::prelude::*;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let key = run_key(cfg);
    let mut jobs: Vec<(usize, usize)> = match shard {
        Some(s) => shard_runs(cfg, s),
        None => plan_runs(cfg),
    };
    jobs.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let workers = rayon::current_num_threads().min(jobs.len()).max(1);
    // The largest runs start together, one per worker: they must fit side by side.
    let mut need = 0usize;
    for &(n, _) in jobs.iter().take(workers) {
        need = memory::sum(&[("runs so far", need), ("run", run_bytes(cfg, n)?)])?;
    }
    memory::check(
        need,
        &format!(
            "{} concurrent run(s) with 'n_train' = {}, 'model.L' = {}, 'model.M' = {}, 'model.M0' = {}, 'n_test' = {}, 'train.max_steps' = {}",
            workers,
            jobs.first().map_or(0, |j| j.0),
            cfg.l,
            cfg.m,
            cfg.m0,
            cfg.n_test,
            cfg.max_steps
        ),
    )?;
    let mut stored: Vec<StoredRun> = jobs
        .iter()
        .map(|&(n, k)| stored_run(&run_path(out, n, k), &key, n, k))
        .collect();
    let stale_fields = provenance::union_of_changes(
        stored.iter().filter_map(|s| match s {
            StoredRun::Stale(c) => Some(c.as_slice()),
            _ => None,
        }),
        |_| false,
    );
    let stale = stored
        .iter()
        .filter(|s| matches!(s, StoredRun::Stale(_)))
        .count();
    if stale > 0 && !redo_stale {
        return Err(MeanFieldError::Stale {
            dir: out.to_path_buf(),
            count: stale,
            fields: stale_fields.join("; "),
        });
    }
    let stored: Vec<Mutex<StoredRun>> = stored
        .iter_mut()
        .map(|s| Mutex::new(std::mem::replace(s, StoredRun::Missing)))
        .collect();
    let one = |i: usize| -> Result<RunResult, MeanFieldError> {
        let (n, k) = jobs[i];
        let path = run_path(out, n, k);
        let before = std::mem::replace(
            &mut *stored[i].lock().unwrap_or_else(|e| e.into_inner()),
            StoredRun::Missing,
        );
        let status = match before {
            StoredRun::Usable(r) => {
                on_run(&r, RunStatus::Reused);
                return Ok(*r);
            }
            StoredRun::Missing => RunStatus::Done,
            StoredRun::Stale(_) | StoredRun::Corrupt(_) => RunStatus::Replaced,
        };
        let r = run_one(cfg, n, k)?;
        let json = serde_json::to_string(&r).map_err(|e| MeanFieldError::Json {
            path: path.clone(),
            msg: e.to_string(),
        })?;
        if status == RunStatus::Done {
            io::write_new(&path, json.as_bytes())?;
        } else {
            io::atomic_write(&path, json.as_bytes())?;
        }
        on_run(&r, status);
        Ok(r)
    };
    // One worker per thread takes the next job in order (largest n first), so the long
    // runs start first and the last ones to finish are short.
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let slots: Vec<Mutex<Option<Result<RunResult, MeanFieldError>>>> =
        jobs.iter().map(|_| Mutex::new(None)).collect();
    (0..workers).into_par_iter().for_each(|_| {
        while !failed.load(Ordering::Relaxed) {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= jobs.len() {
                break;
            }
            let r = one(i);
            failed.fetch_or(r.is_err(), Ordering::Relaxed);
            *slots[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
        }
    });
    let mut results = Vec::with_capacity(jobs.len());
    for slot in slots {
        match slot.into_inner().unwrap_or_else(|e| e.into_inner()) {
            Some(Ok(r)) => results.push(r),
            Some(Err(e)) => return Err(e),
            None => {}
        }
    }
    results.sort_by_key(|r| (r.n, r.k));
    Ok(results)
}

/// Bytes one run with `n` training samples needs at its peak, estimated before it
/// allocates (f64 values): the particles, their derivatives (the Hessian blocks of the
/// KL estimator included) and KL state, the tiled workspace, the data, a forward trace
/// over the larger of the training and test sets, K0 and the Gram matrices with their
/// eigensolver copies where they are computed, and the per-step vectors (loss, KL of
/// stack and head, eta) of up to `max_steps` steps. An error naming the quantities if
/// the count overflows.
pub fn run_bytes(cfg: &ExperimentConfig, n: usize) -> Result<usize, MemoryError> {
    use memory::{product as p, sum};
    let (d, l, m, m0, t) = (cfg.d, cfg.l, cfg.m, cfg.m0, super::net::TILE);
    let ds = p(&[("d", d), ("d + 1", d.saturating_add(1))])? / 2;
    let lm = p(&[("L", l), ("M", m)])?;
    let l1 = sum(&[("L", l), ("1", 1)])?;
    let dd = p(&[("d", d), ("d", d)])?;
    let per_particle = sum(&[
        ("u, w, grad", p(&[("3", 3), ("d", d)])?),
        ("d x d", dd),
        ("dsym", ds),
        ("kl", 2),
    ])?;
    let per_head = sum(&[("a, b", d), ("d", d), ("dsym", ds), ("a, grad, kl", 4)])?;
    let n_eval = n.max(cfg.n_test);
    let kernels = if cfg.normalized() { 3 } else { 0 }
        + if cfg.gram && n <= cfg.gram_max_n {
            4
        } else {
            0
        };
    let steps = sum(&[("max_steps", cfg.max_steps_at(n)), ("1", 1)])?;
    let values = sum(&[
        (
            "stack particles",
            p(&[("L x M", lm), ("values per particle", per_particle)])?,
        ),
        (
            "head particles",
            p(&[("M0", m0), ("values per particle", per_head)])?,
        ),
        ("workspace", p(&[("L + 1", l1), ("d", d), ("tile", t)])?),
        (
            "workspace",
            p(&[("L + 4", l.saturating_add(4)), ("M", m), ("tile", t)])?,
        ),
        ("workspace", p(&[("3", 3), ("M0", m0), ("tile", t)])?),
        ("workspace", p(&[("M0", m0), ("d", d)])?),
        (
            "data",
            p(&[
                ("n + n_test", n.saturating_add(cfg.n_test)),
                ("d + 1", d.saturating_add(1)),
            ])?,
        ),
        (
            "trace",
            p(&[
                ("2", 2),
                ("L + 1", l1),
                ("d", d),
                ("max(n, n_test)", n_eval),
            ])?,
        ),
        (
            "gram scratch",
            p(&[("4", 4), ("max(M, M0)", m.max(m0)), ("n", n)])?,
        ),
        (
            "kernel matrices",
            p(&[("matrices", kernels), ("n", n), ("n", n)])?,
        ),
        (
            "per-step vectors",
            p(&[("4", 4), ("max_steps + 1", steps)])?,
        ),
    ])?;
    p(&[("values", values), ("8", 8)])
}
