//! Shape sweeps: train ResNets over grids of (L, M, D), measure their distance to a
//! reference, and collect tidy tables.
//!
//! **Plan.** A sweep is planned into independent tasks, one per (repetition, shape). A
//! task's id is `r{rep}-L{L}-M{M}-D{D}` and its seeds are derived from the sweep seed and
//! that id ([`crate::rng::derive_seed`]), never from the order of execution. A task trains
//! every coupling variant of its shape from the same block weights U, V:
//! - `coupled`: W_E, W_U are the first D rows of the repetition's embedding draw (the
//!   reference's rows), PAPERS.md 2.4 "coupled randomness";
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
//! **Collect.** Errors at every read step (PAPERS.md 2.4):
//! - embedding space (coupled only): `msq_h = sum_{n, d<D} (h_L[d,n] - h_L^ref[d,n])^2 / (D N)`
//!   per repetition, `err_h = sqrt(mean_reps msq_h)` (the Julia `errs_h`);
//! - output space: `msq_y = mean_{o,n} (f[o,n] - f^ref[o,n])^2`, `err_y = sqrt(mean_reps msq_y)`.
//!
//! Step numbering: record k is the network after k updates (k = 0..K-1). The Julia
//! notebook's 1-based "k = 15" with K = 15 is record 14 here, its "k = 10" record 9.

use crate::io::{self, IoError};
use crate::kernels::Par;
use crate::memory::{self, MemoryError};
use crate::model::{Activation, Data, Weights};
use crate::param::{Dims, ParamOverride, Parametrization};
use crate::provenance;
use crate::rng::derive_seed;
use crate::spec::SpecError;
use crate::train::{self, TrainOptions};
use crate::vslimit::{LimitReference, StepErrors};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// A grid axis as written: a list, or `{ logspace = [lo, hi, count] }` meaning
/// `floor(10^linspace(log10 lo, log10 hi, count))` with duplicates removed (the paper's
/// grids).
///
/// In a [`GridSpec`] an axis is read through [`axis_from_value`]: this untagged enum
/// alone would silently ignore unknown keys beside `logspace` (a typo like
/// `{ logspace = [...], cout = 8 }` would pass).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Axis {
    List(Vec<i64>),
    Logspace { logspace: (f64, f64, usize) },
}

/// Parses a grid axis as written, with errors naming `field` (e.g. `grid.M`): a list of
/// integers, or a table whose only key is `logspace`.
fn axis_from_value(field: &str, v: toml::Value) -> Result<Axis, String> {
    const FORMS: &str = "a list of integers or { logspace = [lo, hi, count] }";
    match v {
        toml::Value::Array(xs) => xs
            .into_iter()
            .map(|x| match x {
                toml::Value::Integer(i) => Ok(i),
                other => Err(format!(
                    "{field}: list entries must be integers, got {other}"
                )),
            })
            .collect::<Result<_, _>>()
            .map(Axis::List),
        toml::Value::Table(t) => {
            if let Some(k) = t.keys().find(|k| *k != "logspace") {
                return Err(format!("{field}: unknown key '{k}' (expected {FORMS})"));
            }
            let ls = t
                .get("logspace")
                .ok_or_else(|| format!("{field}: empty table (expected {FORMS})"))?;
            ls.clone()
                .try_into::<(f64, f64, usize)>()
                .map(|logspace| Axis::Logspace { logspace })
                .map_err(|_| {
                    format!("{field}: logspace must be [lo, hi, count] with an integer count >= 0, got {ls}")
                })
        }
        other => Err(format!("{field}: expected {FORMS}, got {other}")),
    }
}

impl Axis {
    fn values(&self, field: &str) -> Result<Vec<usize>, SpecError> {
        let bad = |v: String, why: &str| SpecError::Invalid {
            field: field.into(),
            value: v,
            why: why.into(),
        };
        let mut v: Vec<usize> = match self {
            Axis::List(xs) => {
                if xs.is_empty() {
                    return Err(bad("[]".into(), "must not be empty"));
                }
                xs.iter()
                    .map(|&x| {
                        if x <= 0 {
                            Err(bad(x.to_string(), "must hold positive integers"))
                        } else {
                            Ok(x as usize)
                        }
                    })
                    .collect::<Result<_, _>>()?
            }
            Axis::Logspace {
                logspace: (lo, hi, n),
            } => {
                if !(lo.is_finite() && hi.is_finite() && *lo >= 1.0 && hi >= lo && *n >= 1) {
                    return Err(bad(
                        format!("[{lo}, {hi}, {n}]"),
                        "logspace needs 1 <= lo <= hi and count >= 1",
                    ));
                }
                logspace(*lo, *hi, *n)
            }
        };
        v.sort_unstable();
        v.dedup();
        Ok(v)
    }
}

/// `floor(10^linspace(log10 lo, log10 hi, n))`, as NumPy/Julia compute it.
pub fn logspace(lo: f64, hi: f64, n: usize) -> Vec<usize> {
    let (a, b) = (lo.log10(), hi.log10());
    (0..n)
        .map(|i| {
            let t = if n == 1 {
                0.0
            } else {
                i as f64 / (n - 1) as f64
            };
            // Guard the endpoints against 10^log10(x) landing just below an integer.
            let e = if i + 1 == n { b } else { a + (b - a) * t };
            let x = 10f64.powf(e);
            let r = x.round();
            (if (x - r).abs() < 1e-9 * r.max(1.0) {
                r
            } else {
                x.floor()
            }) as usize
        })
        .collect()
}

/// The data of a sweep: seeded synthetic regression (X, Y standard Gaussian), or the
/// explicit samples `x`, `y` when given (both; e.g. the input of PAPERS.md 2.5, E2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    pub din: usize,
    pub dout: usize,
    #[serde(rename = "N")]
    pub n: usize,
    #[serde(default = "one")]
    pub seed: u64,
    /// Explicit inputs: one list of `din` numbers when N = 1, or N such lists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<Samples>,
    /// Explicit targets: one list of `dout` numbers when N = 1, or N such lists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<Samples>,
}
fn one() -> u64 {
    1
}

/// Explicit samples: one vector (N = 1) or one vector per sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Samples {
    One(Vec<f64>),
    Many(Vec<Vec<f64>>),
}

impl DataSpec {
    /// The training data: the explicit samples, or the synthetic draw of `seed`.
    pub fn data(&self) -> Result<Data, SpecError> {
        let (x, y) = match (&self.x, &self.y) {
            (None, None) => return Ok(Data::synthetic(self.din, self.dout, self.n, self.seed)),
            (Some(x), Some(y)) => (x, y),
            (Some(_), None) => return Err(inv_data("data.y", "missing", "give y with x")),
            (None, Some(_)) => return Err(inv_data("data.x", "missing", "give x with y")),
        };
        let cols = |field: &str, s: &Samples, dim: usize| -> Result<Vec<f64>, SpecError> {
            let rows: Vec<&Vec<f64>> = match s {
                Samples::One(v) => vec![v],
                Samples::Many(v) => v.iter().collect(),
            };
            if rows.len() != self.n {
                return Err(inv_data(
                    field,
                    format!("{} sample(s)", rows.len()),
                    &format!("data.N = {} samples expected", self.n),
                ));
            }
            let mut out = vec![0.0; dim * self.n];
            for (sm, r) in rows.iter().enumerate() {
                if r.len() != dim {
                    return Err(inv_data(
                        field,
                        format!("{r:?}"),
                        &format!("each sample needs {dim} numbers (data.din / data.dout)"),
                    ));
                }
                if let Some(v) = r.iter().find(|v| !v.is_finite()) {
                    return Err(inv_data(field, v, "entries must be finite"));
                }
                for (i, v) in r.iter().enumerate() {
                    out[i * self.n + sm] = *v;
                }
            }
            Ok(out)
        };
        Ok(Data {
            din: self.din,
            dout: self.dout,
            n: self.n,
            x: cols("data.x", x, self.din)?,
            y: cols("data.y", y, self.dout)?,
        })
    }
}

fn inv_data(field: &str, value: impl ToString, why: &str) -> SpecError {
    SpecError::Invalid {
        field: field.into(),
        value: value.to_string(),
        why: why.into(),
    }
}

/// The grids of shapes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawGrid")]
pub struct GridSpec {
    #[serde(rename = "L")]
    pub l: Axis,
    #[serde(rename = "M")]
    pub m: Axis,
    #[serde(rename = "D")]
    pub d: Axis,
}

/// `[grid]` as written; its axes are checked by [`axis_from_value`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrid {
    #[serde(rename = "L")]
    l: toml::Value,
    #[serde(rename = "M")]
    m: toml::Value,
    #[serde(rename = "D")]
    d: toml::Value,
}

impl TryFrom<RawGrid> for GridSpec {
    type Error = String;
    fn try_from(g: RawGrid) -> Result<Self, String> {
        Ok(GridSpec {
            l: axis_from_value("grid.L", g.l)?,
            m: axis_from_value("grid.M", g.m)?,
            d: axis_from_value("grid.D", g.d)?,
        })
    }
}

/// What the models are compared with.
///
/// Read through [`ReferenceRepr`]: serde's `deny_unknown_fields` covers the struct
/// variants of an internally tagged enum but not its unit variants, so
/// `kind = "largest"` beside a stray `L = 100` would pass silently.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "kind",
    rename_all = "snake_case",
    deny_unknown_fields,
    from = "ReferenceRepr"
)]
pub enum ReferenceSpec {
    /// The largest shape of the grid (max L, max M, max D).
    Largest,
    /// A named shape (need not be in the grid).
    Shape {
        #[serde(rename = "L")]
        l: usize,
        #[serde(rename = "M")]
        m: usize,
        #[serde(rename = "D")]
        d: usize,
    },
    /// The large-D limit (PAPERS.md 2.3; [`crate::vslimit`]) of a table of the
    /// chizat-python family (chizat-julia included); errors of PAPERS.md 2.4 "Python
    /// errors". Linear blocks: the exact ODE limit, optional settings `rtol`, `atol`,
    /// `num_s` (defaults: the authors' 1e-5, 1e-7, 100). Any other activation: the
    /// Monte-Carlo limit of [`crate::limit::nonlinear`], optional settings `num_s`
    /// (default 101), `samples`, `replicas`, `seed` (defaults of
    /// [`crate::limit::MonteCarlo`]).
    Limit {
        rtol: Option<f64>,
        atol: Option<f64>,
        num_s: Option<usize>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        samples: Option<usize>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        replicas: Option<usize>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seed: Option<u64>,
    },
}

/// [`ReferenceSpec`] as written, every variant a struct so that unknown keys are refused.
#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
enum ReferenceRepr {
    Largest {},
    Shape {
        #[serde(rename = "L")]
        l: usize,
        #[serde(rename = "M")]
        m: usize,
        #[serde(rename = "D")]
        d: usize,
    },
    Limit {
        rtol: Option<f64>,
        atol: Option<f64>,
        num_s: Option<usize>,
        samples: Option<usize>,
        replicas: Option<usize>,
        seed: Option<u64>,
    },
}

impl From<ReferenceRepr> for ReferenceSpec {
    fn from(r: ReferenceRepr) -> Self {
        match r {
            ReferenceRepr::Largest {} => ReferenceSpec::Largest,
            ReferenceRepr::Shape { l, m, d } => ReferenceSpec::Shape { l, m, d },
            ReferenceRepr::Limit {
                rtol,
                atol,
                num_s,
                samples,
                replicas,
                seed,
            } => ReferenceSpec::Limit {
                rtol,
                atol,
                num_s,
                samples,
                replicas,
                seed,
            },
        }
    }
}

/// Embedding randomness of the models relative to the reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Coupling {
    Coupled,
    Uncoupled,
}

impl Coupling {
    pub fn name(self) -> &'static str {
        match self {
            Coupling::Coupled => "coupled",
            Coupling::Uncoupled => "uncoupled",
        }
    }
}

/// Which plots and fits the report makes (all optional).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportSpec {
    /// Read step of the slice plots and rate fits (default: the last read step).
    pub step: Option<usize>,
    /// Read step of the P plots (default: `step`).
    pub p_step: Option<usize>,
    /// M values of the error-vs-D slices (default: four spread over the grid).
    pub slice_m: Option<Vec<usize>>,
    /// D values of the error-vs-M slices (default: four spread over the grid).
    pub slice_d: Option<Vec<usize>>,
    /// Only shapes with P = L M D below this enter the P plots and P fits.
    pub p_max: Option<f64>,
    /// Bootstrap replicates of the joint fits (default 200).
    pub bootstrap: Option<usize>,
    /// Another sweep's output directory (relative to the working directory), whose
    /// headline and joint fits the report sets beside this sweep's: e.g. the same grid
    /// against the largest network and against the limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compare: Option<std::path::PathBuf>,
}

/// Fewest bootstrap replicates a report accepts: below 20 the 2.5% and 97.5% percentiles
/// of the replicates are their minimum and maximum, not a 95% interval.
pub const MIN_BOOTSTRAP: usize = 20;
/// Most bootstrap replicates a report accepts: each is a full rate fit, and beyond this
/// the interval's endpoints no longer move while the report takes minutes.
pub const MAX_BOOTSTRAP: usize = 100_000;

/// The report's settings, checked and with their defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportSettings {
    pub step: usize,
    pub p_step: usize,
    pub slice_m: Vec<usize>,
    pub slice_d: Vec<usize>,
    pub p_max: f64,
    pub bootstrap: usize,
}

impl ReportSpec {
    /// Checks the settings against the sweep's read steps and grid (sorted, non-empty),
    /// so that a report that cannot be written is refused before any training: a step
    /// that is not read has no errors to fit, and a slice outside the grid has no points.
    pub fn resolve(
        &self,
        read_steps: &[usize],
        ms: &[usize],
        ds: &[usize],
    ) -> Result<ReportSettings, SpecError> {
        let Some(&last) = read_steps.last() else {
            return Err(inv_data(
                "read_steps",
                "[]",
                "must name at least one record",
            ));
        };
        let read = |field: &str, k: Option<usize>, default: usize| {
            let k = k.unwrap_or(default);
            if read_steps.contains(&k) {
                Ok(k)
            } else {
                Err(inv_data(
                    field,
                    k,
                    &format!(
                        "must be one of the read steps {read_steps:?} (only those are recorded)"
                    ),
                ))
            }
        };
        let step = read("report.step", self.step, last)?;
        let p_step = read("report.p_step", self.p_step, step)?;
        let in_grid =
            |field: &str, grid_field: &str, v: &Option<Vec<usize>>, grid: &[usize]| match v {
                None => Ok(crate::report::pick_spread(grid, 4)),
                Some(v) => match v.iter().find(|x| !grid.contains(x)) {
                    Some(x) => Err(inv_data(
                        field,
                        x,
                        &format!("must be values of {grid_field} {grid:?}"),
                    )),
                    None => Ok(v.clone()),
                },
            };
        let slice_m = in_grid("report.slice_m", "grid.M", &self.slice_m, ms)?;
        let slice_d = in_grid("report.slice_d", "grid.D", &self.slice_d, ds)?;
        let p_max = self.p_max.unwrap_or(f64::INFINITY);
        if self.p_max.is_some() && !(p_max.is_finite() && p_max > 0.0) {
            return Err(inv_data(
                "report.p_max",
                p_max,
                "must be a finite positive number (or left out: no limit)",
            ));
        }
        let bootstrap = self.bootstrap.unwrap_or(200);
        if !(MIN_BOOTSTRAP..=MAX_BOOTSTRAP).contains(&bootstrap) {
            return Err(inv_data(
                "report.bootstrap",
                bootstrap,
                &format!(
                    "must be between {MIN_BOOTSTRAP} (fewer replicates give no 95% interval) and {MAX_BOOTSTRAP}"
                ),
            ));
        }
        Ok(ReportSettings {
            step,
            p_step,
            slice_m,
            slice_d,
            p_max,
            bootstrap,
        })
    }
}

/// A sweep spec as written in TOML. See `experiments/*.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepSpec {
    pub name: String,
    #[serde(default = "default_preset")]
    pub preset: String,
    #[serde(default)]
    pub param: Option<ParamOverride>,
    #[serde(default = "default_activation")]
    pub activation: String,
    pub data: DataSpec,
    pub grid: GridSpec,
    /// GD steps K.
    pub steps: usize,
    /// Global learning rate eta.
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// Repetitions (independent weight draws).
    #[serde(default = "default_reps")]
    pub reps: usize,
    /// Sweep seed: every task's seeds derive from it.
    #[serde(default = "one")]
    pub seed: u64,
    /// Records (0-based, record k = after k updates) at which errors are read
    /// (default: the last).
    #[serde(default)]
    pub read_steps: Option<Vec<usize>>,
    pub reference: ReferenceSpec,
    /// Coupling variants (default: both).
    #[serde(default = "default_couplings")]
    pub couplings: Vec<Coupling>,
    #[serde(default)]
    pub report: ReportSpec,
    /// Precision of the training runs: "f64" (default) or "f32". Errors are computed in
    /// f64 either way.
    #[serde(default)]
    pub dtype: crate::model::Dtype,
}
pub(crate) fn default_preset() -> String {
    "chizat-julia".into()
}
pub(crate) fn default_activation() -> String {
    "tanh".into()
}
pub(crate) fn default_lr() -> f64 {
    1.0
}
fn default_reps() -> usize {
    1
}
fn default_couplings() -> Vec<Coupling> {
    vec![Coupling::Coupled, Coupling::Uncoupled]
}

/// A checked sweep.
#[derive(Debug, Clone, Serialize)]
pub struct Sweep {
    pub spec: SweepSpec,
    pub param: Parametrization,
    pub activation: Activation,
    pub ls: Vec<usize>,
    pub ms: Vec<usize>,
    pub ds: Vec<usize>,
    /// The reference shape; (0, 0, 0) for a limit reference.
    pub reference: (usize, usize, usize),
    pub read_steps: Vec<usize>,
    /// The solved limit of a `kind = "limit"` reference.
    #[serde(skip)]
    pub limit: Option<std::sync::Arc<LimitReference>>,
}

impl SweepSpec {
    pub fn from_file(path: &Path) -> Result<Self, SpecError> {
        crate::spec::read_toml(path)
    }

    /// Validates the spec.
    pub fn check(self) -> Result<Sweep, SpecError> {
        let inv = |field: &str, value: String, why: &str| SpecError::Invalid {
            field: field.into(),
            value,
            why: why.into(),
        };
        let mut param = Parametrization::preset(&self.preset)
            .map_err(|e| inv("preset", self.preset.clone(), &e.to_string()))?;
        if let Some(o) = &self.param {
            o.apply(&mut param);
        }
        param
            .check()
            .map_err(|e| inv("param", param.name.clone(), &e.to_string()))?;
        let activation: Activation = self
            .activation
            .parse()
            .map_err(|e: String| inv("activation", self.activation.clone(), &e))?;
        for (f, v) in [
            ("data.din", self.data.din),
            ("data.dout", self.data.dout),
            ("data.N", self.data.n),
            ("steps", self.steps),
            ("reps", self.reps),
        ] {
            if v == 0 {
                return Err(inv(f, "0".into(), "must be positive"));
            }
        }
        if !(self.lr.is_finite() && self.lr >= 0.0) {
            return Err(inv(
                "lr",
                self.lr.to_string(),
                "must be finite and non-negative",
            ));
        }
        if self.couplings.is_empty() {
            return Err(inv(
                "couplings",
                "[]".into(),
                "must name at least one variant",
            ));
        }
        self.check_sizes()?;
        let ls = self.grid.l.values("grid.L")?;
        let ms = self.grid.m.values("grid.M")?;
        let ds = self.grid.d.values("grid.D")?;
        plan_size(self.reps, &ls, &ms, &ds)?;
        let reference = match self.reference {
            ReferenceSpec::Largest => (
                *ls.last().unwrap(),
                *ms.last().unwrap(),
                *ds.last().unwrap(),
            ),
            ReferenceSpec::Shape { l, m, d } => {
                if l == 0 || m == 0 || d == 0 {
                    return Err(inv(
                        "reference",
                        format!("L={l} M={m} D={d}"),
                        "dimensions must be positive",
                    ));
                }
                (l, m, d)
            }
            ReferenceSpec::Limit { .. } => (0, 0, 0),
        };
        if let Some(&dmax) = ds.last()
            && dmax > reference.2
            && reference != (0, 0, 0)
        {
            return Err(inv(
                "reference.D",
                reference.2.to_string(),
                &format!(
                    "must be at least the largest D of the grid ({dmax}) for coupled embeddings"
                ),
            ));
        }
        let read_steps = self
            .read_steps
            .clone()
            .unwrap_or_else(|| vec![self.steps - 1]);
        if read_steps.is_empty() {
            return Err(inv(
                "read_steps",
                "[]".into(),
                "must name at least one record (leave it out for the last)",
            ));
        }
        if let Some(&bad) = read_steps.iter().find(|&&k| k >= self.steps) {
            return Err(inv(
                "read_steps",
                bad.to_string(),
                &format!(
                    "records are 0..{} (record k is after k updates)",
                    self.steps - 1
                ),
            ));
        }
        let mut read_steps = read_steps;
        read_steps.sort_unstable();
        read_steps.dedup();
        self.report.resolve(&read_steps, &ms, &ds)?;
        let data = self.data.data()?;
        let limit = match self.reference {
            ReferenceSpec::Limit {
                rtol,
                atol,
                num_s,
                samples,
                replicas,
                seed,
            } => {
                let dd = (data.din, data.dout, data.n);
                let lim = if activation == Activation::Linear {
                    for (f, set) in [
                        ("reference.samples", samples.is_some()),
                        ("reference.replicas", replicas.is_some()),
                        ("reference.seed", seed.is_some()),
                    ] {
                        if set {
                            return Err(inv(
                                f,
                                "set".into(),
                                "only for the Monte-Carlo limit of nonlinear blocks (linear blocks use the exact ODEs)",
                            ));
                        }
                    }
                    let settings = crate::vslimit::SolverSettings { rtol, atol, num_s };
                    let lp = crate::vslimit::limit_params(
                        &param, activation, dd, self.steps, self.lr, settings,
                    )?;
                    LimitReference::solve(&data, &lp)
                } else {
                    for (f, set) in [
                        ("reference.rtol", rtol.is_some()),
                        ("reference.atol", atol.is_some()),
                    ] {
                        if set {
                            return Err(inv(
                                f,
                                "set".into(),
                                "only for the exact limit of linear blocks (nonlinear blocks use Monte Carlo: num_s, samples, replicas, seed)",
                            ));
                        }
                    }
                    let settings = crate::vslimit::SolverSettings {
                        rtol: None,
                        atol: None,
                        num_s: Some(num_s.unwrap_or(crate::solve::MC_NUM_S)),
                    };
                    let lp =
                        crate::vslimit::frame_params(&param, dd, self.steps, self.lr, settings)?;
                    let d = crate::limit::MonteCarlo::default();
                    let mc = crate::limit::MonteCarlo {
                        samples: samples.unwrap_or(d.samples),
                        replicas: replicas.unwrap_or(d.replicas),
                        seed: seed.unwrap_or(d.seed),
                    };
                    let (de, kn) = (dd.0.saturating_add(dd.1), self.steps.saturating_mul(dd.2));
                    if mc.samples > 100_000_000 || mc.replicas > 10_000 || kn > 100_000 {
                        return Err(inv(
                            "reference",
                            format!(
                                "samples = {}, replicas = {}, steps x data.N = {kn}",
                                mc.samples, mc.replicas
                            ),
                            "the Monte-Carlo limit allows at most 1e8 samples, 10000 replicas and 100000 passes x samples",
                        ));
                    }
                    let need = crate::limit::nonlinear::nonlinear_bytes(
                        self.steps,
                        dd.2,
                        dd.0,
                        dd.1,
                        lp.num_s,
                        &mc,
                        rayon::current_num_threads(),
                    );
                    let avail = memory::available()
                        .map_err(|e| inv("reference", "limit".into(), &e.to_string()))?;
                    match need {
                        Some(b) if b <= avail.bytes => {}
                        _ => {
                            return Err(inv(
                                "reference",
                                format!(
                                    "samples = {}, num_s = {}, d_in + d_out = {de}",
                                    mc.samples, lp.num_s
                                ),
                                &format!(
                                    "the Monte-Carlo limit needs {} bytes, {} available",
                                    need.map_or("more than 2^64".into(), |b| b.to_string()),
                                    avail.bytes
                                ),
                            ));
                        }
                    }
                    LimitReference::solve_nonlinear(&data, &lp, activation, &mc)
                };
                let lim = lim.map_err(|e| inv("reference", "limit".into(), &e.to_string()))?;
                Some(std::sync::Arc::new(lim))
            }
            _ => None,
        };
        Ok(Sweep {
            spec: self,
            param,
            activation,
            ls,
            ms,
            ds,
            reference,
            read_steps,
            limit,
        })
    }
}

/// The most tasks a sweep may plan (and the most values a logspace axis may have): the
/// plan, the finished-task scan and the tables hold one entry per task.
pub const MAX_TASKS: usize = 1_000_000;

impl SweepSpec {
    /// Refuses sizes that would allocate more than the machine has while the sweep is
    /// checked and planned, before anything is allocated: logspace counts, the data
    /// (N x (din + dout)) and the per-step records (steps x (1 + dout x N) per variant).
    fn check_sizes(&self) -> Result<(), SpecError> {
        for (field, axis) in [
            ("grid.L", &self.grid.l),
            ("grid.M", &self.grid.m),
            ("grid.D", &self.grid.d),
        ] {
            if let Axis::Logspace {
                logspace: (_, _, n),
            } = axis
                && *n > MAX_TASKS
            {
                return Err(inv_data(
                    field,
                    n,
                    &format!("a logspace count must be at most {MAX_TASKS}"),
                ));
            }
        }
        let size = |field: &str, r: Result<usize, MemoryError>| {
            r.map_err(|e| inv_data(field, "too large", &e.to_string()))
        };
        let io = size(
            "data.N",
            memory::sum(&[("data.din", self.data.din), ("data.dout", self.data.dout)]),
        )?;
        let data = size(
            "data.N",
            memory::product(&[
                ("data.N", self.data.n),
                ("data.din + data.dout", io),
                ("8", 8),
            ]),
        )?;
        let dout_n = size(
            "data.N",
            memory::product(&[("data.dout", self.data.dout), ("data.N", self.data.n)]),
        )?;
        let per_step = size(
            "steps",
            memory::sum(&[("loss", 1), ("data.dout x data.N", dout_n)]),
        )?;
        let records = size(
            "steps",
            memory::product(&[
                ("steps", self.steps),
                ("1 + data.dout x data.N", per_step),
                ("couplings", self.couplings.len().max(1)),
                ("8", 8),
            ]),
        )?;
        let need = size(
            "steps",
            memory::sum(&[("data bytes", data), ("record bytes", records)]),
        )?;
        // The records are steps x (1 + dout x N): name the larger factor.
        let field = if self.steps >= dout_n {
            "steps"
        } else {
            "data.N"
        };
        let what = format!(
            "the data and per-step records of one task (steps = {}, data.N = {})",
            self.steps, self.data.n
        );
        let available = memory::available().map_err(|e| match e {
            MemoryError::BadOverride(v) => inv_data("RESLIM_MEMORY_LIMIT", v, "is not a size"),
            e => inv_data(field, "too large", &e.to_string()),
        })?;
        available
            .check(need, &what)
            .map_err(|e| inv_data(field, "too large", &e.to_string()))
    }
}

/// Refuses a plan of more than [`MAX_TASKS`] tasks, before it is built.
fn plan_size(reps: usize, ls: &[usize], ms: &[usize], ds: &[usize]) -> Result<(), SpecError> {
    // In floating point: the count itself may not fit `usize`.
    let tasks = reps as f64 * ls.len() as f64 * ms.len() as f64 * ds.len() as f64;
    if tasks > MAX_TASKS as f64 {
        return Err(inv_data(
            "reps",
            reps,
            &format!(
                "the plan would hold 'reps' x L values x M values x D values = {reps} x {} x {} x {} = {tasks:.3e} tasks, more than {MAX_TASKS}",
                ls.len(),
                ms.len(),
                ds.len()
            ),
        ));
    }
    Ok(())
}

/// One unit of work: a shape in one repetition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Task {
    pub rep: usize,
    #[serde(rename = "L")]
    pub l: usize,
    #[serde(rename = "M")]
    pub m: usize,
    #[serde(rename = "D")]
    pub d: usize,
    /// Whether this is the reference shape (trained coupled only... and as a grid point).
    pub is_reference: bool,
}

impl Task {
    pub fn id(&self) -> String {
        format!("r{}-L{}-M{}-D{}", self.rep, self.l, self.m, self.d)
    }
    /// Work of the task, for scheduling: its parameters L M D (times steps, the same
    /// for every task). In floating point: the shape's product may not fit `usize`.
    pub fn cost(&self) -> f64 {
        self.l as f64 * self.m as f64 * self.d as f64
    }
}

impl Sweep {
    /// Every task, reference shapes included, in a deterministic order.
    pub fn plan(&self) -> Vec<Task> {
        let mut tasks = Vec::new();
        let (rl, rm, rd) = self.reference;
        for rep in 0..self.spec.reps {
            let mut in_grid = false;
            for &l in &self.ls {
                for &m in &self.ms {
                    for &d in &self.ds {
                        let is_ref = (l, m, d) == (rl, rm, rd);
                        in_grid |= is_ref;
                        tasks.push(Task {
                            rep,
                            l,
                            m,
                            d,
                            is_reference: is_ref,
                        });
                    }
                }
            }
            if !in_grid && self.limit.is_none() {
                tasks.push(Task {
                    rep,
                    l: rl,
                    m: rm,
                    d: rd,
                    is_reference: true,
                });
            }
        }
        tasks
    }

    fn dims(&self, t: &Task) -> Dims {
        Dims {
            l: t.l,
            m: t.m,
            d: t.d,
            din: self.spec.data.din,
            dout: self.spec.data.dout,
            n: self.spec.data.n,
        }
    }

    /// Seed of the repetition's coupled embeddings (shared by every shape).
    pub fn embed_seed(&self, rep: usize) -> u64 {
        derive_seed(self.spec.seed, 0x45_4D_42 ^ ((rep as u64) << 20))
    }

    /// Seeds of a task: (block weights, uncoupled embeddings), from the task id.
    pub fn task_seeds(&self, t: &Task) -> (u64, u64) {
        let h = fnv1a(t.id().as_bytes());
        (
            derive_seed(self.spec.seed, h),
            derive_seed(self.spec.seed, h ^ 0x55_4E_43),
        )
    }

    /// Couplings a task trains: the reference only needs its coupled run unless it is
    /// also a grid point.
    fn couplings_of(&self, t: &Task) -> Vec<Coupling> {
        let mut c = self.spec.couplings.clone();
        if t.is_reference && !c.contains(&Coupling::Coupled) {
            c.insert(0, Coupling::Coupled);
        }
        c
    }

    /// Everything the records of task `t` depend on, and nothing else
    /// ([`crate::provenance`]): the task (repetition, shape, whether it is the
    /// reference), its coupling variants, the dtype, the parametrization table, the
    /// activation, the data (the explicit samples, or the synthetic draw's seed), steps,
    /// learning rate, the sweep seed (every task seed derives from it and the task id), the
    /// read steps, and for a limit reference its solver settings. The sweep's name, its
    /// other grid points and the report options are left out: extending a grid or
    /// re-plotting reuses every finished task.
    pub fn task_inputs(&self, t: &Task) -> serde_json::Value {
        let mut data = serde_json::to_value(&self.spec.data).expect("data spec serialises");
        if self.spec.data.x.is_some()
            && let Some(o) = data.as_object_mut()
        {
            o.remove("seed");
        }
        let reference = match &self.spec.reference {
            r @ ReferenceSpec::Limit { .. } => serde_json::to_value(r).expect("serialises"),
            _ => serde_json::Value::Null,
        };
        serde_json::json!({
            "format": crate::provenance::FORMAT,
            "task": t,
            "couplings": self.couplings_of(t),
            "dtype": self.spec.dtype,
            "param": self.param,
            "activation": self.activation.name(),
            "data": data,
            "steps": self.spec.steps,
            "lr": self.spec.lr,
            "seed": self.spec.seed,
            "read_steps": self.read_steps,
            "reference": reference,
        })
    }

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
            let limit = self.limit.is_some();
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

    /// Bytes a task needs at its peak: two copies of the weights (one per variant)
    /// and the workspace (or the initial weights and the factors of the low-rank step),
    /// and every variant's records (losses and outputs at every step, h_L at the read
    /// steps). An error naming the quantities if the count overflows.
    pub fn task_bytes(&self, t: &Task) -> Result<usize, MemoryError> {
        use crate::model::Dtype;
        let dims = self.dims(t);
        let variants = self.couplings_of(t).len();
        let k = self.spec.steps;
        let dout_n = memory::product(&[("data.dout", dims.dout), ("data.N", dims.n)])?;
        let per_step = memory::sum(&[("loss", 1), ("data.dout x data.N", dout_n)])?;
        let records = memory::sum(&[
            (
                "output records",
                memory::product(&[
                    ("variants", variants),
                    ("steps", k),
                    ("1 + data.dout x data.N", per_step),
                    ("8", 8),
                ])?,
            ),
            (
                "hidden records",
                memory::product(&[
                    ("read steps", self.read_steps.len()),
                    ("D", dims.d),
                    ("data.N", dims.n),
                    ("8", 8),
                ])?,
            ),
        ])?;
        let w = match self.spec.dtype {
            Dtype::F64 => Weights::<f64>::bytes(&dims)?,
            Dtype::F32 => Weights::<f32>::bytes(&dims)?,
        };
        if self.limit.is_none() && crate::factored::worth_it(&dims, k, variants) {
            let f = match self.spec.dtype {
                Dtype::F64 => crate::factored::bytes::<f64>(&dims, k, variants)?,
                Dtype::F32 => crate::factored::bytes::<f32>(&dims, k, variants)?,
            };
            return memory::sum(&[("weights", w), ("factors", f), ("records", records)]);
        }
        let copies = if variants > 1 { 2 } else { 1 };
        let ws = match self.spec.dtype {
            Dtype::F64 => train::Workspace::<f64>::bytes(&dims)?,
            Dtype::F32 => train::Workspace::<f32>::bytes(&dims)?,
        };
        memory::sum(&[
            (
                "weights",
                memory::product(&[("copies", copies), ("weight bytes", w)])?,
            ),
            ("workspace", ws),
            ("records", records),
        ])
    }
}

/// FNV-1a, for stable ids -> seeds.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// What one task wrote, per coupling variant.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskRecord {
    pub task: Task,
    pub coupling: Coupling,
    /// One per step done (fewer than K when a run against the limit diverged).
    pub losses: Vec<f64>,
    /// (read steps) x d_out x N (empty with a limit reference).
    pub outputs: Vec<f64>,
    /// (read steps) x D x N, coupled variant only (empty with a limit reference).
    pub hidden: Vec<f64>,
    pub seconds: f64,
    /// With a limit reference: the errors at each read step (NaN at and after a
    /// divergence, which is recorded rather than fatal, as in PAPERS.md 2.5 E2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<Vec<StepErrors>>,
}

/// Trains one task: every coupling variant from the same block weights.
pub fn run_task(sw: &Sweep, t: &Task, data: &Data) -> Result<Vec<TaskRecord>, crate::Error> {
    match sw.spec.dtype {
        crate::model::Dtype::F64 => run_task_t::<f64>(sw, t, data),
        crate::model::Dtype::F32 => run_task_t::<f32>(sw, t, data),
    }
}

fn run_task_t<T: crate::model::Real>(
    sw: &Sweep,
    t: &Task,
    data: &Data,
) -> Result<Vec<TaskRecord>, crate::Error> {
    let dims = sw.dims(t);
    let r = sw.param.resolve(&dims);
    let (block_seed, own_embed) = sw.task_seeds(t);
    let base = Weights::<T>::draw(&dims, &r, sw.embed_seed(t.rep), block_seed, false);
    let couplings = sw.couplings_of(t);
    if sw.limit.is_none() && crate::factored::worth_it(&dims, sw.spec.steps, couplings.len()) {
        return run_task_lowrank(sw, t, data, &r, base, &couplings, own_embed);
    }
    let mut out = Vec::new();
    // The weights are transposed once for every variant when the step runs on rows of M.
    let rows_m = sw.limit.is_none() && train::Layout::Auto.rows_m(&dims);
    let mut base = base;
    if rows_m {
        base.transpose_blocks(true);
    }
    let mut spare = Some(base);
    for (i, &c) in couplings.iter().enumerate() {
        let last = i + 1 == couplings.len();
        let mut w = if last {
            spare.take().expect("weights available")
        } else {
            spare.as_ref().expect("weights available").clone()
        };
        if c == Coupling::Uncoupled {
            let fresh = Weights::<T>::draw(&Dims { l: 0, ..dims }, &r, own_embed, 0, false);
            w.we = fresh.we;
            w.wu = fresh.wu;
        }
        if let Some(lim) = &sw.limit {
            let t0 = std::time::Instant::now();
            let (eta, k) = (sw.spec.lr, sw.spec.steps);
            let a = lim.train_against(&mut w, data, &r, eta, k, &sw.read_steps)?;
            out.push(TaskRecord {
                task: *t,
                coupling: c,
                losses: a.losses,
                outputs: Vec::new(),
                hidden: Vec::new(),
                seconds: t0.elapsed().as_secs_f64(),
                limit: Some(a.errors),
            });
            continue;
        }
        let opts = TrainOptions {
            steps: sw.spec.steps,
            eta: sw.spec.lr,
            activation: sw.activation,
            record_hidden: c == Coupling::Coupled,
            hidden_steps: Some(sw.read_steps.clone()),
            layer_stats: false,
            layer_steps: Vec::new(),
            layout: Default::default(),
            max_loss_growth: train::DEFAULT_MAX_LOSS_GROWTH,
        };
        let t0 = std::time::Instant::now();
        let h = train::train_laid_out(&mut w, data, &r, &opts, Par::Seq, &mut |_, _| {}, rows_m)?;
        let (dout, n) = (dims.dout, dims.n);
        let mut outputs = Vec::with_capacity(sw.read_steps.len() * dout * n);
        for &k in &sw.read_steps {
            outputs.extend_from_slice(&h.outputs[k * dout * n..(k + 1) * dout * n]);
        }
        out.push(TaskRecord {
            task: *t,
            coupling: c,
            losses: h.losses,
            outputs,
            hidden: h.hidden,
            seconds: t0.elapsed().as_secs_f64(),
            limit: None,
        });
    }
    Ok(out)
}

/// [`run_task_t`] with the low-rank step ([`crate::factored`]): every variant trained
/// together from one read-only copy of the block weights.
fn run_task_lowrank<T: crate::model::Real>(
    sw: &Sweep,
    t: &Task,
    data: &Data,
    r: &crate::param::Resolved,
    base: Weights<T>,
    couplings: &[Coupling],
    own_embed: u64,
) -> Result<Vec<TaskRecord>, crate::Error> {
    let dims = base.dims;
    let mut variants: Vec<crate::factored::Variant<T>> = couplings
        .iter()
        .map(|&c| {
            let (we, wu) = if c == Coupling::Uncoupled {
                let fresh = Weights::<T>::draw(&Dims { l: 0, ..dims }, r, own_embed, 0, false);
                (fresh.we, fresh.wu)
            } else {
                (base.we.clone(), base.wu.clone())
            };
            crate::factored::Variant {
                we,
                wu,
                record_hidden: c == Coupling::Coupled,
            }
        })
        .collect();
    let opts = TrainOptions {
        steps: sw.spec.steps,
        eta: sw.spec.lr,
        activation: sw.activation,
        record_hidden: true,
        hidden_steps: Some(sw.read_steps.clone()),
        layer_stats: false,
        layer_steps: Vec::new(),
        layout: Default::default(),
        max_loss_growth: train::DEFAULT_MAX_LOSS_GROWTH,
    };
    let t0 = std::time::Instant::now();
    let hs = crate::factored::train_shared(
        &dims,
        &base.ut,
        &base.vt,
        &mut variants,
        data,
        r,
        &opts,
        Par::Seq,
    )?;
    let seconds = t0.elapsed().as_secs_f64() / couplings.len() as f64;
    let (dout, n) = (dims.dout, dims.n);
    Ok(couplings
        .iter()
        .zip(hs)
        .map(|(&c, h)| {
            let mut outputs = Vec::with_capacity(sw.read_steps.len() * dout * n);
            for &k in &sw.read_steps {
                outputs.extend_from_slice(&h.outputs[k * dout * n..(k + 1) * dout * n]);
            }
            TaskRecord {
                task: *t,
                coupling: c,
                losses: h.losses,
                outputs,
                hidden: h.hidden,
                seconds,
                limit: None,
            }
        })
        .collect())
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
    /// [`IoError::Busy`]. [`run`] calls it; a caller that collects and reports after the
    /// run should call it first, so that no other sweep writes while it reads.
    pub fn lock(&self) -> Result<(), IoError> {
        if self.lock.get().is_some() {
            return Ok(());
        }
        let l = io::DirLock::acquire(&self.root)?;
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
    /// no other process uses, [`io::temp_name`]), renamed into place. A stale or corrupt
    /// directory of the task is replaced.
    pub fn write_task(&self, sw: &Sweep, t: &Task, recs: &[TaskRecord]) -> Result<(), IoError> {
        let final_dir = self.task_dir(t);
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
        let written = io::atomic_write(&tmp.join("records.json"), &json).and_then(|()| {
            if final_dir.exists() {
                std::fs::remove_dir_all(&final_dir).map_err(os(&final_dir))?;
            }
            std::fs::rename(&tmp, &final_dir).map_err(os(&final_dir))
        });
        if written.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        written
    }

    /// The state of every task of the plan.
    pub fn survey(&self, sw: &Sweep) -> Survey {
        let mut s = Survey::default();
        for t in sw.plan() {
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
}

/// The share of the available memory a sweep's tasks may use together: the estimates
/// leave out the allocator's slack, the data and the records being written.
pub const MEMORY_FRACTION: f64 = 0.85;

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

/// A sweep that cannot run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SweepError {
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
    #[error("task {task} failed: {source}")]
    Task {
        task: String,
        #[source]
        source: Box<crate::Error>,
    },
}

/// Runs every unfinished task of the sweep in `dir`, largest first, `jobs` at a time.
/// `progress(done_cost, total_cost, task)` is called after each task.
pub fn run(
    sw: &Sweep,
    dir: &SweepDir,
    opts: &RunOptions,
    progress: &(dyn Fn(f64, f64, &Task) + Sync),
) -> Result<RunSummary, crate::Error> {
    let t0 = std::time::Instant::now();
    dir.lock()?;
    let survey = dir.survey(sw);
    if !survey.stale.is_empty() && !opts.redo_stale {
        return Err(crate::Error::Sweep(SweepError::Stale {
            dir: dir.root.clone(),
            count: survey.stale.len(),
            fields: survey.stale_fields().join("; "),
        }));
    }
    io::atomic_write(
        &dir.root.join("sweep.json"),
        serde_json::to_string_pretty(sw)
            .expect("sweep serialises")
            .as_bytes(),
    )?;
    let all = sw.plan();
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
        budget.check(need, "the largest task").map_err(memory_err)?;
        jobs = jobs.min((budget.bytes / need.max(1)).max(1));
    }
    let data = sw.spec.data.data()?;
    let total: f64 = todo.iter().map(|t| t.cost()).sum();
    let next = AtomicUsize::new(0);
    let finished = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let done_cost = Mutex::new(0.0f64);
    let first_err: Mutex<Option<crate::Error>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| {
                loop {
                    if stop.load(Ordering::SeqCst) {
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
                    let res =
                        run_task(sw, t, &data).and_then(|recs| Ok(dir.write_task(sw, t, &recs)?));
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
                        Err(e) => {
                            stop.store(true, Ordering::SeqCst);
                            let mut fe = first_err.lock().expect("error lock");
                            if fe.is_none() {
                                *fe = Some(crate::Error::Sweep(SweepError::Task {
                                    task: t.id(),
                                    source: Box::new(e),
                                }));
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
    let summary = RunSummary {
        planned: all.len(),
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
    let mut log = read_run_log(dir);
    log.push(summary.clone());
    io::atomic_write(
        &dir.root.join("runs.json"),
        serde_json::to_string_pretty(&log)
            .expect("run log serialises")
            .as_bytes(),
    )?;
    Ok(summary)
}

/// Every invocation's summary so far (`runs.json`), oldest first.
pub fn read_run_log(dir: &SweepDir) -> Vec<RunSummary> {
    std::fs::read(dir.root.join("runs.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// One tidy row: a model, a repetition, a coupling variant and a read step.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorRow {
    pub coupling: &'static str,
    pub rep: usize,
    #[serde(rename = "L")]
    pub l: usize,
    #[serde(rename = "M")]
    pub m: usize,
    #[serde(rename = "D")]
    pub d: usize,
    #[serde(rename = "P")]
    pub p: f64,
    pub step: usize,
    pub loss: f64,
    /// Mean squared embedding-space deviation (NaN when uncoupled).
    pub msq_h: f64,
    /// Mean squared output-space deviation.
    pub msq_y: f64,
    pub is_reference: bool,
}

/// Reads every finished task and computes the errors against the references.
pub fn collect(sw: &Sweep, dir: &SweepDir) -> Result<Vec<ErrorRow>, crate::Error> {
    if sw.limit.is_some() {
        return collect_limit(sw, dir).map(|t| t.into_iter().map(|(row, _)| row).collect());
    }
    let plan = sw.plan();
    let mut refs: BTreeMap<usize, TaskRecord> = BTreeMap::new();
    for t in plan.iter().filter(|t| t.is_reference) {
        if let TaskState::Done(recs) = dir.state(sw, t)
            && let Some(r) = recs.into_iter().find(|r| r.coupling == Coupling::Coupled)
        {
            refs.insert(t.rep, r);
        }
    }
    let (dout, n) = (sw.spec.data.dout, sw.spec.data.n);
    let dref = sw.reference.2;
    let mut rows = Vec::new();
    for t in &plan {
        let TaskState::Done(recs) = dir.state(sw, t) else {
            continue;
        };
        let Some(rf) = refs.get(&t.rep) else { continue };
        let in_grid = sw.ls.contains(&t.l) && sw.ms.contains(&t.m) && sw.ds.contains(&t.d);
        if !in_grid {
            continue;
        }
        for rec in recs {
            if !sw.spec.couplings.contains(&rec.coupling) {
                continue;
            }
            // Records written under another spec (other read steps or data) do not
            // hold what is indexed below: refuse them by name rather than panic.
            let short = |what: &str, task: &Task| IoError::BadRecord {
                path: dir.task_dir(task).join("records.json"),
                why: format!(
                    "its {what} do not cover the read steps {:?} of this spec (written by another spec?)",
                    sw.read_steps
                ),
            };
            let steps = sw.read_steps.len();
            let hd = if rec.coupling == Coupling::Coupled {
                t.d
            } else {
                0
            };
            if rec.outputs.len() < steps * dout * n
                || rec.hidden.len() < steps * hd * n
                || sw.read_steps.iter().any(|&k| k >= rec.losses.len())
            {
                return Err(short("outputs, hidden states or losses", t).into());
            }
            if rf.outputs.len() < steps * dout * n || rf.hidden.len() < steps * dref * n {
                return Err(short("outputs or hidden states", &rf.task).into());
            }
            for (j, &k) in sw.read_steps.iter().enumerate() {
                let f = &rec.outputs[j * dout * n..(j + 1) * dout * n];
                let fr = &rf.outputs[j * dout * n..(j + 1) * dout * n];
                let msq_y = f
                    .iter()
                    .zip(fr)
                    .map(|(a, b)| (a - b) * (a - b))
                    .sum::<f64>()
                    / (dout * n) as f64;
                let msq_h = if rec.coupling == Coupling::Coupled {
                    let h = &rec.hidden[j * t.d * n..(j + 1) * t.d * n];
                    let hr = &rf.hidden[j * dref * n..(j + 1) * dref * n];
                    // Both are D x N row-major; compare the first D coordinates.
                    let mut s = 0.0;
                    for dd in 0..t.d {
                        for s_ in 0..n {
                            let e = h[dd * n + s_] - hr[dd * n + s_];
                            s += e * e;
                        }
                    }
                    s / (t.d * n) as f64
                } else {
                    f64::NAN
                };
                rows.push(ErrorRow {
                    coupling: rec.coupling.name(),
                    rep: t.rep,
                    l: t.l,
                    m: t.m,
                    d: t.d,
                    p: (t.l * t.m * t.d) as f64,
                    step: k,
                    loss: rec.losses[k],
                    msq_h,
                    msq_y,
                    is_reference: t.is_reference,
                });
            }
        }
    }
    Ok(rows)
}

/// Against the limit, a run whose error exceeds this counts as diverged, as in the authors'
/// analysis (PAPERS.md 2.5, E2: "runs with error > 1e3 are set to 0 (diverged)"); here its
/// row gets NaN, so it leaves the fits and plots (`errors_limit.csv` keeps the value).
pub const DIVERGED_ERROR: f64 = 1e3;

/// With a limit reference (PAPERS.md 2.4, "Python errors"): per finished model, repetition,
/// coupling and read step, the row (`msq_h` the square of the embedding error
/// `max_l mean_d |h - H|`, `msq_y` the mean squared output deviation, so that `err_h`,
/// `err_y` are RMS over repetitions; NaN beyond [`DIVERGED_ERROR`]) and every limit error.
pub fn collect_limit(
    sw: &Sweep,
    dir: &SweepDir,
) -> Result<Vec<(ErrorRow, StepErrors)>, crate::Error> {
    let mut rows = Vec::new();
    for t in sw.plan() {
        let TaskState::Done(recs) = dir.state(sw, &t) else {
            continue;
        };
        for rec in recs {
            let Some(errs) = rec.limit.as_ref() else {
                continue;
            };
            if !sw.spec.couplings.contains(&rec.coupling) {
                continue;
            }
            for e in errs.iter().filter(|e| sw.read_steps.contains(&e.step)) {
                let row = ErrorRow {
                    coupling: rec.coupling.name(),
                    rep: t.rep,
                    l: t.l,
                    m: t.m,
                    d: t.d,
                    p: (t.l * t.m * t.d) as f64,
                    step: e.step,
                    loss: e.loss,
                    msq_h: diverged_nan(e.h_mad_max.max(e.y_rms), e.h_mad_max.powi(2)),
                    msq_y: diverged_nan(e.h_mad_max.max(e.y_rms), e.y_rms.powi(2)),
                    is_reference: false,
                };
                rows.push((row, *e));
            }
        }
    }
    Ok(rows)
}

fn diverged_nan(err: f64, v: f64) -> f64 {
    if err > DIVERGED_ERROR { f64::NAN } else { v }
}

/// Writes `errors_limit.csv`: every limit error of [`collect_limit`], one row per model,
/// repetition, coupling and read step.
pub fn write_limit_table(sw: &Sweep, dir: &SweepDir) -> Result<(), crate::Error> {
    #[derive(Serialize)]
    struct Row {
        coupling: &'static str,
        rep: usize,
        #[serde(rename = "L")]
        l: usize,
        #[serde(rename = "M")]
        m: usize,
        #[serde(rename = "D")]
        d: usize,
        step: usize,
        h_mad_max: f64,
        h_mad_mean: f64,
        h_rms_last: f64,
        y_rms: f64,
        loss: f64,
        loss_limit: f64,
    }
    let path = dir.root.join("errors_limit.csv");
    let csv_err = |e: csv::Error| crate::io::IoError::Os {
        path: path.clone(),
        source: std::io::Error::other(e.to_string()),
    };
    let mut w = csv::Writer::from_writer(Vec::new());
    for (r, e) in collect_limit(sw, dir)? {
        w.serialize(Row {
            coupling: r.coupling,
            rep: r.rep,
            l: r.l,
            m: r.m,
            d: r.d,
            step: e.step,
            h_mad_max: e.h_mad_max,
            h_mad_mean: e.h_mad_mean,
            h_rms_last: e.h_rms_last,
            y_rms: e.y_rms,
            loss: e.loss,
            loss_limit: e.loss_limit,
        })
        .map_err(csv_err)?;
    }
    let bytes = w.into_inner().map_err(|e| csv_err(e.into_error().into()))?;
    io::atomic_write(&path, &bytes)?;
    Ok(())
}

/// Writes the tidy per-repetition table and the aggregated (RMS over repetitions) one.
pub fn write_tables(dir: &SweepDir, rows: &[ErrorRow]) -> Result<(), crate::Error> {
    let csv_err = |e: csv::Error| crate::io::IoError::Os {
        path: dir.root.join("errors.csv"),
        source: std::io::Error::other(e.to_string()),
    };
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in rows {
        w.serialize(r).map_err(csv_err)?;
    }
    let bytes = w.into_inner().map_err(|e| csv_err(e.into_error().into()))?;
    io::atomic_write(&dir.root.join("errors.csv"), &bytes)?;
    let agg = aggregate(rows);
    let mut w = csv::Writer::from_writer(Vec::new());
    for a in &agg {
        w.serialize(a).map_err(csv_err)?;
    }
    let bytes = w.into_inner().map_err(|e| csv_err(e.into_error().into()))?;
    io::atomic_write(&dir.root.join("errors_rms.csv"), &bytes)?;
    Ok(())
}

/// Errors aggregated over repetitions: RMS, as the paper's `errs_h` and `errs_y`.
#[derive(Debug, Clone, Serialize)]
pub struct AggRow {
    pub coupling: &'static str,
    #[serde(rename = "L")]
    pub l: usize,
    #[serde(rename = "M")]
    pub m: usize,
    #[serde(rename = "D")]
    pub d: usize,
    #[serde(rename = "P")]
    pub p: f64,
    pub step: usize,
    pub reps: usize,
    pub loss: f64,
    pub err_h: f64,
    pub err_y: f64,
    pub is_reference: bool,
}

pub fn aggregate(rows: &[ErrorRow]) -> Vec<AggRow> {
    let mut groups: BTreeMap<(&'static str, usize, usize, usize, usize), Vec<&ErrorRow>> =
        BTreeMap::new();
    for r in rows {
        groups
            .entry((r.coupling, r.l, r.m, r.d, r.step))
            .or_default()
            .push(r);
    }
    groups
        .into_iter()
        .map(|((c, l, m, d, step), g)| {
            let k = g.len() as f64;
            AggRow {
                coupling: c,
                l,
                m,
                d,
                p: (l * m * d) as f64,
                step,
                reps: g.len(),
                loss: g.iter().map(|r| r.loss).sum::<f64>() / k,
                err_h: (g.iter().map(|r| r.msq_h).sum::<f64>() / k).sqrt(),
                err_y: (g.iter().map(|r| r.msq_y).sum::<f64>() / k).sqrt(),
                is_reference: g[0].is_reference,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUICK: &str = include_str!("../experiments/quick.toml");

    fn quick_with(from: &str, to: &str) -> SweepSpec {
        let text = QUICK.replacen(from, to, 1);
        assert_ne!(text, QUICK, "{from}");
        toml::from_str(&text).unwrap()
    }

    #[test]
    fn huge_sizes_are_refused_before_the_plan_is_built() {
        let e = quick_with("reps = 3", "reps = 10000000")
            .check()
            .unwrap_err()
            .to_string();
        assert!(e.contains("'reps'") && e.contains("1000000"), "{e}");
        let e = quick_with("[4, 640, 8]", "[4, 640, 100000000000]")
            .check()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("'grid.M'") && e.contains("logspace count"),
            "{e}"
        );
        let e = quick_with("steps = 15", "steps = 1000000000000000")
            .check()
            .unwrap_err()
            .to_string();
        assert!(e.contains("'steps'") && e.contains("needs"), "{e}");
        let e = quick_with("N = 10", "N = 4611686018427387904")
            .check()
            .unwrap_err()
            .to_string();
        assert!(e.contains("'data.N'") && e.contains("overflows"), "{e}");
        // M = 2^62: the plan is small, the task's size overflows and says so.
        let sw = quick_with(
            "M = { logspace = [4, 640, 8] }",
            "M = [4611686018427387904]",
        )
        .check()
        .unwrap();
        let big = sw.plan().into_iter().find(|t| t.m == 1 << 62).unwrap();
        let e = sw.task_bytes(&big).unwrap_err().to_string();
        assert!(
            e.contains("'M'") && e.contains("4611686018427387904"),
            "{e}"
        );
        assert!(big.cost() > 1e18);
        let quick: SweepSpec = toml::from_str(QUICK).unwrap();
        let sw = quick.check().unwrap();
        let plan = sw.plan();
        let bytes: Vec<usize> = plan.iter().map(|t| sw.task_bytes(t).unwrap()).collect();
        assert!(bytes.iter().all(|&b| b > 0));
    }

    #[test]
    fn logspace_matches_the_papers_grids() {
        assert_eq!(
            logspace(1.5, 2000.0, 20),
            vec![
                1, 2, 3, 4, 6, 9, 14, 21, 31, 45, 66, 96, 141, 206, 301, 439, 642, 937, 1369, 2000
            ]
        );
        assert_eq!(
            logspace(10.0, 500.0, 15),
            vec![
                10, 13, 17, 23, 30, 40, 53, 70, 93, 123, 163, 216, 285, 378, 500
            ]
        );
    }

    const BASE: &str = r#"
name = "t"
steps = 4
read_steps = [2, 3]
[data]
din = 3
dout = 2
N = 4
[grid]
L = [3]
M = [4, 8, 16]
D = [5, 10, 20]
[reference]
kind = "largest"
[report]
bootstrap = 20
"#;

    /// The check's error for BASE with `from` replaced by `to` (parse errors included).
    fn refused(from: &str, to: &str) -> String {
        assert!(BASE.contains(from), "{from}");
        let text = BASE.replacen(from, to, 1);
        match toml::from_str::<SweepSpec>(&text) {
            Err(e) => e.to_string(),
            Ok(spec) => spec.check().expect_err(&text).to_string(),
        }
    }

    #[test]
    fn every_report_and_grid_setting_is_checked_before_training() {
        toml::from_str::<SweepSpec>(BASE).unwrap().check().unwrap();
        for (from, to, names) in [
            (
                "read_steps = [2, 3]",
                "read_steps = []",
                &["'read_steps'", "[]"][..],
            ),
            (
                "bootstrap = 20",
                "step = 1",
                &["'report.step'", "1", "[2, 3]"],
            ),
            ("bootstrap = 20", "p_step = 0", &["'report.p_step'", "0"]),
            ("bootstrap = 20", "p_max = 0", &["'report.p_max'", "0"]),
            ("bootstrap = 20", "p_max = -1e5", &["'report.p_max'"]),
            ("bootstrap = 20", "p_max = nan", &["'report.p_max'", "NaN"]),
            (
                "bootstrap = 20",
                "slice_m = [4, 7]",
                &["'report.slice_m'", "7", "grid.M"],
            ),
            (
                "bootstrap = 20",
                "slice_d = [6]",
                &["'report.slice_d'", "6", "grid.D"],
            ),
            (
                "bootstrap = 20",
                "bootstrap = 1",
                &["'report.bootstrap'", "1"],
            ),
            (
                "bootstrap = 20",
                "bootstrap = 10000000",
                &["'report.bootstrap'"],
            ),
            ("bootstrap = 20", "colour = 1", &["colour"]),
            (
                "M = [4, 8, 16]",
                "M = { logspace = [4, 16, 3], cout = 2 }",
                &["grid.M", "unknown key 'cout'"],
            ),
            (
                "M = [4, 8, 16]",
                "M = { logspace = [4, 16] }",
                &["grid.M", "logspace"],
            ),
            ("M = [4, 8, 16]", "M = \"big\"", &["grid.M", "big"]),
            ("D = [5, 10, 20]", "D = [5, 1.5]", &["grid.D", "1.5"]),
            (
                "kind = \"largest\"",
                "kind = \"largest\"\nL = 3",
                &["unknown field `L`"],
            ),
            (
                "kind = \"largest\"",
                "kind = \"shape\"\nL = 3\nM = 4\nD = 20\nwidth = 3",
                &["unknown field `width`"],
            ),
            (
                "kind = \"largest\"",
                "kind = \"limit\"\nrtoll = 1e-3",
                &["unknown field `rtoll`"],
            ),
            ("N = 4", "N = 4\nseeed = 2", &["seeed"]),
            (
                "steps = 4",
                "steps = 4\nparam = { alphaa = 2 }",
                &["alphaa"],
            ),
            (
                "steps = 4",
                "steps = 4\npreset = \"chizat-python\"\nparam = { alpha = 0 }",
                &["'param'", "'alpha' is 0", "U.lr"],
            ),
            (
                "steps = 4",
                "steps = 4\nparam = { alpha = -1 }",
                &["alpha", "non-negative", "-1"],
            ),
        ] {
            let e = refused(from, to);
            for n in names {
                assert!(e.contains(n), "{to}: {n} not in {e}");
            }
        }
        // alpha = 0 where nothing divides by it: a frozen branch, accepted.
        let text = BASE.replacen("steps = 4", "steps = 4\nparam = { alpha = 0 }", 1);
        toml::from_str::<SweepSpec>(&text).unwrap().check().unwrap();
        // The logspace form still reads.
        let text = BASE.replacen("M = [4, 8, 16]", "M = { logspace = [4, 16, 3] }", 1);
        let sw = toml::from_str::<SweepSpec>(&text).unwrap().check().unwrap();
        assert_eq!(sw.ms, vec![4, 8, 16]);
    }

    #[test]
    fn the_shipped_experiments_pass_their_checks() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments");
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with("spirals") || p.extension().is_none_or(|x| x != "toml") {
                continue;
            }
            if name.starts_with("limit") {
                let spec = crate::solve::LimitSpec::from_file(&p).unwrap();
                spec.check().expect(&name);
                continue;
            }
            let spec = SweepSpec::from_file(&p).unwrap();
            if matches!(spec.reference, ReferenceSpec::Limit { .. }) {
                // The limit's solve is slow: check the report's settings alone.
                let ms = spec.grid.m.values("grid.M").unwrap();
                let ds = spec.grid.d.values("grid.D").unwrap();
                let mut reads = spec.read_steps.clone().unwrap_or(vec![spec.steps - 1]);
                reads.sort_unstable();
                spec.report.resolve(&reads, &ms, &ds).expect(&name);
            } else {
                spec.check().expect(&name);
            }
        }
    }

    #[test]
    fn parallelism_flags_are_bounded() {
        assert_eq!(check_jobs("--jobs", 4).unwrap(), 4);
        assert_eq!(check_jobs("--jobs", MAX_JOBS).unwrap(), MAX_JOBS);
        for bad in [0, MAX_JOBS + 1, 100_000] {
            let e = check_jobs("--jobs", bad).unwrap_err().to_string();
            assert!(e.contains("--jobs") && e.contains(&bad.to_string()), "{e}");
        }
    }

    #[test]
    fn explicit_data_is_column_per_sample_and_checked() {
        let spec: DataSpec =
            toml::from_str("din = 2\ndout = 1\nN = 2\nx = [[1, 2], [3, 4]]\ny = [[5], [6]]")
                .unwrap();
        let d = spec.data().unwrap();
        assert_eq!((d.x, d.y), (vec![1.0, 3.0, 2.0, 4.0], vec![5.0, 6.0]));
        let one: DataSpec =
            toml::from_str("din = 2\ndout = 1\nN = 1\nx = [0.5, -1]\ny = [2]").unwrap();
        assert_eq!(one.data().unwrap().x, vec![0.5, -1.0]);
        let no_y = DataSpec { y: None, ..one };
        let e = no_y.data().unwrap_err().to_string();
        assert!(e.contains("'data.y'"), "{e}");
    }
}
