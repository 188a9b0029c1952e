//! The experiment spec (TOML) and its validated form [`ExperimentConfig`].
//!
//! ```toml
//! name = "spirals"            # report title
//! seed = 1                    # base seed; repetition k uses seeds derived from (seed, k)
//! seeds = 5                   # repetitions per training-set size
//! n_train = [50, 100, 200, 400, 800, 1600, 3200]
//! n_test = 10000              # test points (spirals; a CSV test set is used whole)
//!
//! [data]
//! source = "spirals"          # "spirals" | "csv"
//! turns = 2.1667              # spirals: turns of each arm (default 780/360)
//! noise = 0.5                 # spirals: uniform noise, in the generator's units
//! lift = 1.0                  # append this constant coordinate, then normalise (d = 3)
//! # train = "train.csv"       # csv: x_1..x_d, label (+1/-1); n_train rows drawn from it
//! # test = "test.csv"         # csv
//! # normalize = true          # csv: put inputs on the unit sphere (default true)
//!
//! [model]
//! L = 10                      # depth
//! M = 200                     # particles per block
//! M0 = 1000                   # head particles
//! alpha = 1.0                 # branch scale
//! beta = { c = 0.25, n = 0.5 } # output scale, a power law in n (and L, M, ...)
//! activation = "tanh"
//! init = "symmetric"          # "symmetric" (antithetic pairs) | "iid"
//!
//! [train]
//! lr = 5.0                    # step size eta = lr / beta^2
//! max_steps = { c = 800, n = 0.25 } # step budget: a number, or a power law in n
//!                             # (here round(800 n^0.25): 2127 steps at n = 50, 6017 at 3200)
//! target_loss = 5e-3          # stop once the training loss is at most this
//! backoff = 0.7               # multiply eta by this after a step that raised the loss
//! backoff_rise = 0.5          # ... by more than this fraction (0: any rise)
//! growth = 1.0                # and by this after any other step, up to lr / beta^2
//!                             # (backoff = growth = 1: constant step size)
//!
//! [measure]
//! checkpoints = 6             # Gram, eigenvalues, errors, bound at step 0, 5 more log-spaced steps up to the budget, and the last step run
//! gram = true                 # compute G1, G2 (false: only loss, KL, errors)
//! gram_max_n = 3200           # skip the Gram matrices above this n
//! delta = 0.05                # confidence of the generalization bound
//! ```
//!
//! Every field has the default shown; the defaults of `[model]` and `[train]` are
//! reslim's protocol (the module docs of [`super`] say why). The earlier protocol was
//! `L = 20, M = 500, beta = { c = 1.0, n = 0.5 }, lr = 1.5, max_steps = 1200,
//! target_loss = 1e-3, backoff = 1`. [`ExperimentSpec::check`] turns a spec into an
//! [`ExperimentConfig`]; its errors name the field and the bad value.

use super::data::{self, Dataset, Spirals};
use super::net::Init;
use crate::model::Activation;
use crate::param::{Dims, Scale};
use crate::spec::{SpecError, invalid, read_toml};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// An experiment spec as written: every field optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentSpec {
    /// Report title. Default `"spirals"`.
    pub name: Option<String>,
    /// Base seed; repetition k uses seeds derived from (seed, k). Default 1; any u64.
    pub seed: Option<u64>,
    /// Repetitions per training-set size, a count. Default 5; integer >= 1.
    pub seeds: Option<i64>,
    /// Training-set sizes n. Default `[50, 100, 200, 400, 800, 1600, 3200]`; non-empty,
    /// distinct, each >= 2 (csv: at most the training file's rows).
    pub n_train: Option<Vec<i64>>,
    /// Test points drawn for spirals (a CSV test set is used whole). Default 10000; >= 1.
    pub n_test: Option<i64>,
    /// `[data]`: where the data come from ([`DataSpec`]). Default: spirals.
    pub data: Option<DataSpec>,
    /// `[model]`: the scaled ResNet ([`ModelSpec`]). Default: every setting's default.
    pub model: Option<ModelSpec>,
    /// `[train]`: the GD protocol ([`TrainSection`]). Default: every setting's default.
    pub train: Option<TrainSection>,
    /// `[measure]`: what is measured ([`MeasureSpec`]). Default: every setting's default.
    pub measure: Option<MeasureSpec>,
}

/// The `[data]` table of an experiment spec.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    /// `"spirals"` (default) or `"csv"`.
    pub source: Option<String>,
    /// Spirals only: turns of each arm. Default 780/360 (2.1667); finite, > 0.
    pub turns: Option<f64>,
    /// Spirals only: uniform noise amplitude, in the generator's units (before the
    /// coordinates are divided by `turns * 2 pi`). Default 0.5; finite, >= 0.
    pub noise: Option<f64>,
    /// Constant coordinate appended before normalising. Spirals: default 1.0, finite and
    /// positive (d = 3). CSV: default none (no lift), finite.
    pub lift: Option<f64>,
    /// CSV only: training file (`x_1..x_d, label` with labels +1/-1), relative to the
    /// spec's directory. Required for `source = "csv"`.
    pub train: Option<PathBuf>,
    /// CSV only: test file, same columns as `train`. Required for `source = "csv"`.
    pub test: Option<PathBuf>,
    /// CSV only: put the inputs on the unit sphere. Default true.
    pub normalize: Option<bool>,
}

/// The `[model]` table of an experiment spec.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// `L`: depth, the number of residual blocks. Default 10; integer >= 1.
    #[serde(rename = "L")]
    pub l: Option<i64>,
    /// `M`: particles (hidden units) per block. Default 200; integer >= 1, even with
    /// `init = "symmetric"`.
    #[serde(rename = "M")]
    pub m: Option<i64>,
    /// `M0`: particles of the output head. Default 1000; integer >= 1, even with
    /// `init = "symmetric"`.
    #[serde(rename = "M0")]
    pub m0: Option<i64>,
    /// Branch scale alpha. Default 1.0; finite, >= 0.
    pub alpha: Option<f64>,
    /// Output scale beta, a [`Scale`] (power law in n, L, M, D = d, ...). Default
    /// `{ c = 0.25, n = 0.5 }`; must be finite and > 0 at every n.
    pub beta: Option<Scale>,
    /// Activation: `tanh` (default), `relu`, `gelu`, `softplus`, `linear`.
    pub activation: Option<String>,
    /// Initialisation: `"symmetric"` (default; antithetic pairs) or `"iid"`.
    pub init: Option<String>,
}

/// The `[train]` table of an experiment spec.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    /// Learning rate: the step size is eta = lr / beta^2. Default 5.0; finite, > 0.
    pub lr: Option<f64>,
    /// Step budget, a count or a power law in n ([`StepBudget`]). Default
    /// `{ c = 800, n = 0.25 }`; between 1 and 1e9 steps at every n.
    pub max_steps: Option<StepBudget>,
    /// Stop once the training loss is at most this. Default 5e-3; finite, >= 0.
    pub target_loss: Option<f64>,
    /// Factor on eta after a step that raised the loss. Default 0.7; in (0, 1] (1:
    /// constant step size).
    pub backoff: Option<f64>,
    /// A step raised the loss when it grew it by more than this fraction. Default 0.5;
    /// finite, >= 0 (0: any rise).
    pub backoff_rise: Option<f64>,
    /// Factor on eta after any other step, capped at lr / beta^2. Default 1.0; finite and
    /// at least 1 (1: eta never grows back).
    pub growth: Option<f64>,
}

/// `train.max_steps` as written: a number of steps, or a power law in the shape
/// (`{ c = 400, n = 0.25 }`: `round(400 n^0.25)` steps at training-set size n).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StepBudget {
    Fixed(i64),
    Law(Scale),
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeasureSpec {
    /// Measured steps per run: step 0 and `checkpoints - 1` log-spaced steps up to the
    /// budget (and the last step run). Default 6; 2 to 10000.
    pub checkpoints: Option<i64>,
    /// Compute the Gram matrices G1, G2 (false: only loss, KL, errors). Default true.
    pub gram: Option<bool>,
    /// Skip the Gram matrices above this training-set size n. Default 3200; >= 1.
    pub gram_max_n: Option<i64>,
    /// Confidence parameter of the generalization bound. Default 0.05; in (0, 1).
    pub delta: Option<f64>,
}

/// Where the data come from.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "source", rename_all = "lowercase")]
pub enum DataSource {
    /// Two spirals, lifted by `lift` and normalised.
    Spirals { spirals: Spirals, lift: f64 },
    /// A user's CSV files; `lift` (if any) is appended before normalising.
    Csv {
        train: PathBuf,
        test: PathBuf,
        lift: Option<f64>,
        normalize: bool,
        train_rows: usize,
    },
}

/// A checked experiment configuration: the only thing the runs see.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExperimentConfig {
    pub name: String,
    pub seed: u64,
    pub seeds: usize,
    pub n_train: Vec<usize>,
    pub n_test: usize,
    pub data: DataSource,
    /// Input dimension after lifting.
    pub d: usize,
    #[serde(rename = "L")]
    pub l: usize,
    #[serde(rename = "M")]
    pub m: usize,
    #[serde(rename = "M0")]
    pub m0: usize,
    pub alpha: f64,
    pub beta: Scale,
    pub activation: Activation,
    pub init: Init,
    pub lr: f64,
    /// The step budget, a power law in n (a constant for a fixed budget); see
    /// [`ExperimentConfig::max_steps_at`].
    pub max_steps: Scale,
    pub target_loss: f64,
    /// Factor applied to eta after every step that raised the training loss (1: constant
    /// eta).
    pub backoff: f64,
    /// A step "raised the loss" when it multiplied it by more than `1 + backoff_rise`.
    pub backoff_rise: f64,
    /// Factor applied to eta after every step that did not raise the loss, capped at
    /// `lr / beta^2`.
    pub growth: f64,
    pub checkpoints: usize,
    pub gram: bool,
    pub gram_max_n: usize,
    pub delta: f64,
}

/// Stream tags of the data.
pub const TRAIN_STREAM: u32 = 0x4d46_0010;
pub const TEST_STREAM: u32 = 0x4d46_0011;
pub const SUBSET_STREAM: u32 = 0x4d46_0012;

/// The most runs (training-set sizes x repetitions) one experiment may hold: larger
/// counts are typos, refused before the list of runs is built.
pub const MAX_RUNS: usize = 1_000_000;

/// The most measurement checkpoints per run: each computes Gram matrices and
/// eigenvalues, so more would be a typo (the steps are log-spaced; a few dozen resolve
/// any run).
pub const MAX_CHECKPOINTS: usize = 10_000;

impl ExperimentSpec {
    pub fn from_file(path: &Path) -> Result<Self, SpecError> {
        read_toml(path)
    }

    /// Validates the spec. Relative CSV paths are taken relative to `base` (the spec's
    /// directory).
    pub fn check(&self, base: &Path) -> Result<ExperimentConfig, SpecError> {
        let pos = |field: &str, v: Option<i64>, default: i64| -> Result<usize, SpecError> {
            let x = v.unwrap_or(default);
            if x <= 0 {
                return Err(invalid(field, x, "must be a positive integer"));
            }
            Ok(x as usize)
        };
        let finite_pos = |field: &str, v: Option<f64>, default: f64| -> Result<f64, SpecError> {
            let x = v.unwrap_or(default);
            if !(x.is_finite() && x > 0.0) {
                return Err(invalid(field, x, "must be a finite positive number"));
            }
            Ok(x)
        };
        let seeds = pos("seeds", self.seeds, 5)?;
        let n_train_raw = self
            .n_train
            .clone()
            .unwrap_or_else(|| vec![50, 100, 200, 400, 800, 1600, 3200]);
        if n_train_raw.is_empty() {
            return Err(invalid("n_train", "[]", "must list at least one size"));
        }
        let mut n_train = Vec::new();
        for &n in &n_train_raw {
            if n < 2 {
                return Err(invalid("n_train", n, "every size must be at least 2"));
            }
            if n_train.contains(&(n as usize)) {
                return Err(invalid("n_train", n, "sizes must be distinct"));
            }
            n_train.push(n as usize);
        }
        // Refused before the list of runs is built.
        let runs = (n_train.len() as f64) * (seeds as f64);
        if runs > MAX_RUNS as f64 {
            return Err(invalid(
                "seeds",
                seeds,
                &format!(
                    "the experiment would hold 'n_train' sizes x 'seeds' = {} x {seeds} = {runs:.3e} runs, more than {MAX_RUNS}",
                    n_train.len()
                ),
            ));
        }
        let n_test = pos("n_test", self.n_test, 10_000)?;
        let ds = self.data.clone().unwrap_or_default();
        let source = ds.source.as_deref().unwrap_or("spirals");
        let (data, d) = match source {
            "spirals" => {
                for (f, v) in [("data.train", &ds.train), ("data.test", &ds.test)] {
                    if let Some(p) = v {
                        return Err(invalid(f, p.display(), "only for source = \"csv\""));
                    }
                }
                if let Some(nz) = ds.normalize {
                    return Err(invalid(
                        "data.normalize",
                        nz,
                        "spirals are always normalised; only for source = \"csv\"",
                    ));
                }
                let def = Spirals::default();
                let turns = finite_pos("data.turns", ds.turns, def.turns)?;
                let noise = ds.noise.unwrap_or(def.noise);
                if !(noise.is_finite() && noise >= 0.0) {
                    return Err(invalid(
                        "data.noise",
                        noise,
                        "must be a finite non-negative number",
                    ));
                }
                let lift = finite_pos("data.lift", ds.lift, 1.0)?;
                (
                    DataSource::Spirals {
                        spirals: Spirals { turns, noise },
                        lift,
                    },
                    3,
                )
            }
            "csv" => {
                for (f, v) in [("data.turns", ds.turns), ("data.noise", ds.noise)] {
                    if let Some(x) = v {
                        return Err(invalid(f, x, "only for source = \"spirals\""));
                    }
                }
                let path = |field: &str, p: &Option<PathBuf>| -> Result<PathBuf, SpecError> {
                    let p = p.as_ref().ok_or_else(|| {
                        invalid(
                            field,
                            "(missing)",
                            "a CSV path is required for source = \"csv\"",
                        )
                    })?;
                    Ok(if p.is_absolute() {
                        p.clone()
                    } else {
                        base.join(p)
                    })
                };
                let train = path("data.train", &ds.train)?;
                let test = path("data.test", &ds.test)?;
                let read = |field: &str, p: &Path| {
                    data::read_csv(p).map_err(|e| invalid(field, p.display(), &e.to_string()))
                };
                let (tr, te) = (read("data.train", &train)?, read("data.test", &test)?);
                if tr.d != te.d {
                    return Err(invalid(
                        "data.test",
                        test.display(),
                        &format!("has {} input columns, the training file {}", te.d, tr.d),
                    ));
                }
                let lift = match ds.lift {
                    Some(c) if !c.is_finite() => {
                        return Err(invalid("data.lift", c, "must be finite"));
                    }
                    other => other,
                };
                if let Some(&n) = n_train.iter().find(|&&n| n > tr.n()) {
                    return Err(invalid(
                        "n_train",
                        n,
                        &format!("exceeds the {} rows of {}", tr.n(), train.display()),
                    ));
                }
                let d = tr.d + usize::from(lift.is_some());
                let normalize = ds.normalize.unwrap_or(true);
                (
                    DataSource::Csv {
                        train,
                        test,
                        lift,
                        normalize,
                        train_rows: tr.n(),
                    },
                    d,
                )
            }
            other => {
                return Err(invalid(
                    "data.source",
                    other,
                    "must be \"spirals\" or \"csv\"",
                ));
            }
        };
        let ms = self.model.clone().unwrap_or_default();
        let init = match ms.init.as_deref().unwrap_or("symmetric") {
            "symmetric" => Init::Symmetric,
            "iid" => Init::Iid,
            other => {
                return Err(invalid(
                    "model.init",
                    other,
                    "must be \"symmetric\" or \"iid\"",
                ));
            }
        };
        let l = pos("model.L", ms.l, 10)?;
        let m = pos("model.M", ms.m, 200)?;
        let m0 = pos("model.M0", ms.m0, 1000)?;
        if init == Init::Symmetric {
            for (f, v) in [("model.M", m), ("model.M0", m0)] {
                if v % 2 == 1 {
                    return Err(invalid(
                        f,
                        v,
                        "must be even with init = \"symmetric\" (antithetic pairs)",
                    ));
                }
            }
        }
        let alpha = ms.alpha.unwrap_or(1.0);
        if !(alpha.is_finite() && alpha >= 0.0) {
            return Err(invalid(
                "model.alpha",
                alpha,
                "must be finite and >= 0 (as [param].alpha of the other specs)",
            ));
        }
        let beta = ms.beta.unwrap_or(Scale::constant(0.25).n(0.5));
        let activation: Activation =
            ms.activation
                .as_deref()
                .unwrap_or("tanh")
                .parse()
                .map_err(|e: String| {
                    invalid(
                        "model.activation",
                        ms.activation.as_deref().unwrap_or(""),
                        &e,
                    )
                })?;
        let ts = self.train.clone().unwrap_or_default();
        let lr = finite_pos("train.lr", ts.lr, 5.0)?;
        let max_steps = match ts.max_steps {
            None => Scale::constant(800.0).n(0.25),
            Some(StepBudget::Fixed(k)) => {
                Scale::constant(pos("train.max_steps", Some(k), 1)? as f64)
            }
            Some(StepBudget::Law(s)) => s,
        };
        let backoff = ts.backoff.unwrap_or(0.7);
        if !(backoff > 0.0 && backoff <= 1.0) {
            return Err(invalid(
                "train.backoff",
                backoff,
                "must lie in (0, 1] (1: constant step size)",
            ));
        }
        let backoff_rise = ts.backoff_rise.unwrap_or(0.5);
        if !(backoff_rise.is_finite() && backoff_rise >= 0.0) {
            return Err(invalid(
                "train.backoff_rise",
                backoff_rise,
                "must be a finite non-negative number",
            ));
        }
        let growth = ts.growth.unwrap_or(1.0);
        if !(growth.is_finite() && growth >= 1.0) {
            return Err(invalid(
                "train.growth",
                growth,
                "must be a finite number at least 1 (1: eta never grows back)",
            ));
        }
        let target_loss = ts.target_loss.unwrap_or(5e-3);
        if !(target_loss.is_finite() && target_loss >= 0.0) {
            return Err(invalid(
                "train.target_loss",
                target_loss,
                "must be a finite non-negative number",
            ));
        }
        let me = self.measure.clone().unwrap_or_default();
        let checkpoints = pos("measure.checkpoints", me.checkpoints, 6)?;
        if checkpoints < 2 {
            return Err(invalid(
                "measure.checkpoints",
                checkpoints,
                "must be at least 2 (the first and the last step)",
            ));
        }
        if checkpoints > MAX_CHECKPOINTS {
            return Err(invalid(
                "measure.checkpoints",
                checkpoints,
                &format!("must be at most {MAX_CHECKPOINTS}"),
            ));
        }
        let gram_max_n = pos("measure.gram_max_n", me.gram_max_n, 3200)?;
        let delta = me.delta.unwrap_or(0.05);
        if !(delta > 0.0 && delta < 1.0) {
            return Err(invalid(
                "measure.delta",
                delta,
                "must lie strictly between 0 and 1",
            ));
        }
        let cfg = ExperimentConfig {
            name: self.name.clone().unwrap_or_else(|| "spirals".into()),
            seed: self.seed.unwrap_or(1),
            seeds,
            n_train,
            n_test,
            data,
            d,
            l,
            m,
            m0,
            alpha,
            beta,
            activation,
            init,
            lr,
            max_steps,
            target_loss,
            backoff,
            backoff_rise,
            growth,
            checkpoints,
            gram: me.gram.unwrap_or(true),
            gram_max_n,
            delta,
        };
        for &n in &cfg.n_train {
            let b = cfg.beta_at(n);
            if !(b.is_finite() && b > 0.0) {
                return Err(invalid(
                    "model.beta",
                    cfg.beta,
                    &format!("gives beta = {b} at n = {n}; must be finite and positive"),
                ));
            }
            let k = cfg.max_steps.eval(&cfg.dims(n), cfg.alpha);
            if !(k.is_finite() && k.round() >= 1.0 && k < 1e9) {
                return Err(invalid(
                    "train.max_steps",
                    cfg.max_steps,
                    &format!("gives {k} steps at n = {n}; must be between 1 and 1e9"),
                ));
            }
        }
        Ok(cfg)
    }
}

impl ExperimentConfig {
    /// The shape at training-set size n, for the power laws (L, M, D = d, N = n).
    fn dims(&self, n: usize) -> Dims {
        Dims {
            l: self.l,
            m: self.m,
            d: self.d,
            din: self.d,
            dout: 1,
            n,
        }
    }

    /// beta at training-set size n (the Scale evaluated at L, M, D = d, N = n).
    pub fn beta_at(&self, n: usize) -> f64 {
        self.beta.eval(&self.dims(n), self.alpha)
    }

    /// The step budget at training-set size n: `max_steps` evaluated like beta, rounded.
    pub fn max_steps_at(&self, n: usize) -> usize {
        (self.max_steps.eval(&self.dims(n), self.alpha).round() as usize).max(1)
    }

    /// The architecture of the runs with n training samples.
    pub fn arch(&self, n: usize) -> super::net::Arch {
        super::net::Arch {
            d: self.d,
            l: self.l,
            m: self.m,
            m0: self.m0,
            alpha: self.alpha,
            beta: self.beta_at(n),
            activation: self.activation,
        }
    }

    /// Data and model seeds of repetition k.
    pub fn seeds_of(&self, k: usize) -> (u64, u64) {
        (
            crate::rng::derive_seed(self.seed, 2 * k as u64),
            crate::rng::derive_seed(self.seed, 2 * k as u64 + 1),
        )
    }

    /// The training set (n samples) and test set of repetition k. Spirals: the training
    /// samples of a smaller n are a prefix of a larger one's, and the test set depends on
    /// k only. CSV: n training rows drawn without replacement (a seeded shuffle, nested
    /// in n); the whole test file.
    pub fn datasets(&self, n: usize, k: usize) -> Result<(Dataset, Dataset), data::DataError> {
        let (data_seed, _) = self.seeds_of(k);
        match &self.data {
            DataSource::Spirals { spirals, lift } => {
                let tr = spirals
                    .sample(n, data_seed, TRAIN_STREAM)
                    .lift(*lift)
                    .normalize()?;
                let te = spirals
                    .sample(self.n_test, data_seed, TEST_STREAM)
                    .lift(*lift)
                    .normalize()?;
                Ok((tr, te))
            }
            DataSource::Csv {
                train,
                test,
                lift,
                normalize,
                ..
            } => {
                let all = data::read_csv(train)?;
                let s =
                    crate::rng::Stream::new(data_seed, crate::rng::Tensor::Other(SUBSET_STREAM), 0);
                let mut keys: Vec<(f64, usize)> =
                    (0..all.n()).map(|i| (s.uniform(i as u64, 0), i)).collect();
                keys.sort_by(|a, b| a.0.total_cmp(&b.0));
                let idx: Vec<usize> = keys.iter().take(n).map(|&(_, i)| i).collect();
                let prep = |ds: Dataset| -> Result<Dataset, data::DataError> {
                    let ds = match lift {
                        Some(c) => ds.lift(*c),
                        None => ds,
                    };
                    if *normalize { ds.normalize() } else { Ok(ds) }
                };
                Ok((prep(all.select(&idx))?, prep(data::read_csv(test)?)?))
            }
        }
    }

    /// Whether the inputs lie on the unit sphere (needed for K0's closed form).
    pub fn normalized(&self) -> bool {
        match &self.data {
            DataSource::Spirals { .. } => true,
            DataSource::Csv { normalize, .. } => *normalize,
        }
    }

    /// The steps at which the Gram matrices, errors and the bound are measured at
    /// training-set size n: 0 and `checkpoints - 1` log-spaced steps up to the budget
    /// [`Self::max_steps_at`] (the last step of a run is always measured too).
    pub fn checkpoint_steps(&self, n: usize) -> Vec<usize> {
        let c = self.checkpoints;
        let max = self.max_steps_at(n);
        let mut v = vec![0];
        for j in 1..c {
            let s = (max as f64).powf(j as f64 / (c - 1) as f64).round() as usize;
            if s > *v.last().unwrap_or(&0) {
                v.push(s.min(max));
            }
        }
        v
    }
}
