//! Coordinate checks over width and depth (`reslim coordcheck`): does a parametrization
//! keep activations, updates and outputs of order one as the network grows?
//!
//! For every shape of a ladder of widths (M and D together, or one of them with the other
//! fixed), depths L and, optionally, branch scales alpha, and every seed, the network of
//! the parametrization table ([`crate::param`]) is trained for K full-batch GD steps
//! ([`crate::train`], dense step, f64) and the following are recorded at each step
//! k = 0..K-1 (the forward pass before update k, as [`train::History`] does), every RMS
//! being the root mean square over all entries (samples and coordinates):
//!
//! | quantity  | definition (per layer l)                                                        |
//! |-----------|---------------------------------------------------------------------------------|
//! | `h`       | RMS of h_l, l = 0..L                                                            |
//! | `branch`  | RMS of the branch output h_{l+1} - h_l = alpha m_V V_l sigma(p_l), l < L          |
//! | `dh`      | RMS of the feature change h_l(k) - h_l(0), l = 0..L                              |
//! | `dU`,`dV` | RMS of the weight changes U_l(k) - U_l(0), V_l(k) - V_l(0) over entries, l < L   |
//! | `dbranch` | RMS of the change of the block's output since step 0, b_l(k) - b_l(0) with b_l = h_{l+1} - h_l: the effect of the weight changes on the layer's output (with the change of its input h_l) |
//! | `grad`    | RMS of B_l = D dloss/dh_l, the backward signal in the scale of h (docs/papers.md 2.4: B = D b, b = dl/dh); the raw gradient is D times smaller |
//! | `f`       | RMS of the outputs f = m_W W_U^T h_L (one value per network)                     |
//! | `df`      | RMS of the output change f(k) - f(0)                                             |
//!
//! A per-layer quantity is summarised per network as the RMS over its layers
//! (`sqrt(mean_l q_l^2)`, i.e. the RMS over all layers' entries when they have equal
//! size), so that networks of different depths compare.
//!
//! # The verdict
//!
//! At the last step K-1, for each quantity q and each axis a (width, depth, alpha) with
//! at least two values, the exponent b of `q ~ a^b` is fitted by
//! [`fit::loglog_fit_grouped`]: OLS of ln q on ln a with one intercept per combination of
//! the other axes (every seed a point), giving b, its standard error and its 95% interval
//! (Student's t, n - G - 1 degrees of freedom). With the tolerance `tau` (default
//! [`DEFAULT_TOLERANCE`]) the quantity is **stable** along the axis when |b| <= tau,
//! **growing** when b > tau, **vanishing** when b < -tau; **zero** when it is exactly 0
//! at every point (a frozen tensor), **undefined** when some value is 0 or not finite.
//!
//! What the presets do (derived in the tests' comments from the tables of
//! [`crate::param`]): under `chizat-julia` the feature change per layer `dh` and the
//! output change `df` are stable in M, D and L; under `lazy` (`chizat-python` with a
//! large alpha and the rate `L M D / alpha^2`) the weight changes vanish like 1/alpha;
//! under `standard` (fan-in init, one global rate, no multipliers) `h` grows like
//! `L^{1/2}` with depth and `df` like D with width.
//!
//! Every (shape, seed) trains sequentially (its results do not depend on the thread
//! count); the tasks run in parallel, largest first.

use crate::cpu::Par;
use crate::fit;
use crate::io::{self, IoError};
use crate::memory::{self, MemoryError};
use crate::model::{Activation, Data, Weights};
use crate::param::{Dims, ParamError, ParamOverride, Parametrization};
use crate::plot::{self, Figure, HeatMap, PlotError, Series, Style};
use crate::spec::{SpecError, invalid, read_toml};
use crate::sweep::spec::DataSpec;
use crate::train::{self, TrainError, TrainOptions, Workspace};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::Path;

/// Default tolerance of the classification: an exponent within +-0.25 is "stable".
pub const DEFAULT_TOLERANCE: f64 = 0.25;

/// The errors of a coordinate check.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CoordCheckError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("the parametrization at alpha = {alpha}: {source}")]
    Param { alpha: f64, source: ParamError },
    /// Training one shape failed (diverged: lower `lr`).
    #[error("coordcheck task {task} failed: {source}")]
    Train { task: String, source: TrainError },
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Io(#[from] IoError),
    #[error(transparent)]
    Plot(#[from] PlotError),
}

/// A coordinate-check spec as written (TOML; every field optional, flags override it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordCheckSpec {
    /// Name of the check (report title). Default "coordcheck".
    pub name: Option<String>,
    /// Parametrization preset. Default `chizat-julia`.
    pub preset: Option<String>,
    /// Changes to the preset's table (`[param]`, as in train specs). Default none.
    pub param: Option<ParamOverride>,
    /// Block activation. Default `tanh`.
    pub activation: Option<String>,
    /// The width ladder (integers >= 1, at least one). Default [16, 32, 64, 128, 256].
    pub widths: Option<Vec<usize>>,
    /// Which dimensions the width sets: "MD" (M = D = width), "M" (D fixed) or "D"
    /// (M fixed). Default "MD".
    pub vary: Option<String>,
    /// The fixed M when `vary = "D"`. Default 64.
    #[serde(rename = "M")]
    pub m: Option<usize>,
    /// The fixed D when `vary = "M"`. Default 64.
    #[serde(rename = "D")]
    pub d: Option<usize>,
    /// The depth ladder (integers >= 1, at least one). Default [2, 4, 8, 16].
    pub depths: Option<Vec<usize>>,
    /// A ladder of branch scales alpha (> 0), replacing the table's. Default: the table's
    /// alpha alone.
    pub alphas: Option<Vec<f64>>,
    /// GD steps K (>= 2). Default 5.
    pub steps: Option<usize>,
    /// Global learning rate eta (> 0). Default 1.
    pub lr: Option<f64>,
    /// Number of seeds (>= 1); seed s draws every weight from `seed + s`. Default 3.
    pub seeds: Option<usize>,
    /// First seed. Default 1.
    pub seed: Option<u64>,
    /// The data (as in sweep specs). Default: synthetic, din = 4, dout = 2, N = 8, seed 1.
    pub data: Option<DataSpec>,
    /// Tolerance of the classification (> 0). Default [`DEFAULT_TOLERANCE`].
    pub tolerance: Option<f64>,
}

/// Which dimensions the width ladder sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Vary {
    /// M = D = width.
    MD,
    /// M = width, D fixed.
    M,
    /// D = width, M fixed.
    D,
}

impl Vary {
    pub fn label(self) -> &'static str {
        match self {
            Vary::MD => "width M = D",
            Vary::M => "width M",
            Vary::D => "width D",
        }
    }
}

/// A checked coordinate-check configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CoordCheckConfig {
    pub name: String,
    pub param: Parametrization,
    pub activation: Activation,
    pub vary: Vary,
    pub widths: Vec<usize>,
    /// The dimension the width does not set (M or D).
    pub fixed: usize,
    pub depths: Vec<usize>,
    pub alphas: Vec<f64>,
    pub steps: usize,
    pub lr: f64,
    pub seeds: Vec<u64>,
    pub data_spec: DataSpec,
    #[serde(skip)]
    pub data: Data,
    pub tolerance: f64,
}

impl CoordCheckSpec {
    pub fn from_file(path: &Path) -> Result<Self, SpecError> {
        read_toml(path)
    }

    /// `self` with every field that `over` sets replaced (flags override the file).
    pub fn overridden_by(self, over: CoordCheckSpec) -> CoordCheckSpec {
        macro_rules! pick {
            ($($f:ident)*) => { CoordCheckSpec { $($f: over.$f.or(self.$f),)* } };
        }
        pick!(name preset param activation widths vary m d depths alphas steps lr seeds seed data tolerance)
    }

    /// Validates every field (messages `spec field 'X': why (got value)`).
    pub fn check(&self) -> Result<CoordCheckConfig, CoordCheckError> {
        let preset = self.preset.clone().unwrap_or_else(|| "chizat-julia".into());
        let mut param = Parametrization::preset(&preset)
            .map_err(|e| invalid("preset", &preset, &e.to_string()))?;
        if let Some(o) = &self.param {
            o.apply(&mut param);
        }
        let act_name = self.activation.clone().unwrap_or_else(|| "tanh".into());
        let activation: Activation = act_name
            .parse()
            .map_err(|e: String| invalid("activation", &act_name, &e))?;
        let widths = self
            .widths
            .clone()
            .unwrap_or_else(|| vec![16, 32, 64, 128, 256]);
        let depths = self.depths.clone().unwrap_or_else(|| vec![2, 4, 8, 16]);
        for (field, v) in [("widths", &widths), ("depths", &depths)] {
            if v.is_empty() || v.contains(&0) {
                return Err(invalid(
                    field,
                    format!("{v:?}"),
                    "needs at least one value, each an integer >= 1",
                )
                .into());
            }
        }
        let vary = match self.vary.as_deref().unwrap_or("MD") {
            "MD" | "md" => Vary::MD,
            "M" | "m" => Vary::M,
            "D" | "d" => Vary::D,
            other => {
                return Err(invalid("vary", other, "must be \"MD\", \"M\" or \"D\"").into());
            }
        };
        let fixed = match vary {
            Vary::MD => 0,
            Vary::M => self.d.unwrap_or(64),
            Vary::D => self.m.unwrap_or(64),
        };
        if vary != Vary::MD && fixed == 0 {
            let f = if vary == Vary::M { "D" } else { "M" };
            return Err(invalid(f, 0, "must be an integer >= 1").into());
        }
        let alphas = self.alphas.clone().unwrap_or_else(|| vec![param.alpha]);
        if alphas.is_empty() || alphas.iter().any(|a| !(a.is_finite() && *a > 0.0)) {
            return Err(invalid(
                "alphas",
                format!("{alphas:?}"),
                "needs at least one value, each finite and > 0",
            )
            .into());
        }
        for &alpha in &alphas {
            let mut p = param.clone();
            p.alpha = alpha;
            p.check()
                .map_err(|source| CoordCheckError::Param { alpha, source })?;
        }
        let steps = self.steps.unwrap_or(5);
        if steps < 2 {
            return Err(invalid(
                "steps",
                steps,
                "must be >= 2 (changes since step 0 need a second step)",
            )
            .into());
        }
        let lr = self.lr.unwrap_or(1.0);
        if !(lr.is_finite() && lr > 0.0) {
            return Err(invalid("lr", lr, "must be finite and > 0").into());
        }
        let n_seeds = self.seeds.unwrap_or(3);
        if n_seeds == 0 {
            return Err(invalid("seeds", 0, "must be >= 1").into());
        }
        let first = self.seed.unwrap_or(1);
        let seeds: Vec<u64> = (0..n_seeds as u64).map(|s| first.wrapping_add(s)).collect();
        let tolerance = self.tolerance.unwrap_or(DEFAULT_TOLERANCE);
        if !(tolerance.is_finite() && tolerance > 0.0) {
            return Err(invalid("tolerance", tolerance, "must be finite and > 0").into());
        }
        let data_spec = self.data.clone().unwrap_or(DataSpec {
            din: 4,
            dout: 2,
            n: 8,
            seed: 1,
            x: None,
            y: None,
        });
        for (f, v) in [
            ("data.din", data_spec.din),
            ("data.dout", data_spec.dout),
            ("data.N", data_spec.n),
        ] {
            if v == 0 {
                return Err(invalid(f, 0, "must be an integer >= 1").into());
            }
        }
        let data = data_spec.data()?;
        let cfg = CoordCheckConfig {
            name: self.name.clone().unwrap_or_else(|| "coordcheck".into()),
            param,
            activation,
            vary,
            widths,
            fixed,
            depths,
            alphas,
            steps,
            lr,
            seeds,
            data_spec,
            data,
            tolerance,
        };
        cfg.check_memory()?;
        Ok(cfg)
    }
}

/// One network shape of the check.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Shape {
    pub width: usize,
    pub depth: usize,
    pub alpha: f64,
    pub dims: Dims,
}

impl CoordCheckConfig {
    /// Every shape: widths x depths x alphas.
    pub fn shapes(&self) -> Vec<Shape> {
        let mut out = Vec::new();
        for &alpha in &self.alphas {
            for &depth in &self.depths {
                for &width in &self.widths {
                    let (m, d) = match self.vary {
                        Vary::MD => (width, width),
                        Vary::M => (width, self.fixed),
                        Vary::D => (self.fixed, width),
                    };
                    out.push(Shape {
                        width,
                        depth,
                        alpha,
                        dims: Dims {
                            l: depth,
                            m,
                            d,
                            din: self.data.din,
                            dout: self.data.dout,
                            n: self.data.n,
                        },
                    });
                }
            }
        }
        out
    }

    /// Bytes one task needs: the weights twice (trained and initial), the step's
    /// workspace, h_l(0) and the records.
    fn task_bytes(&self, s: &Shape) -> Result<usize, MemoryError> {
        let d = s.dims;
        let w = memory::product(&[("2 L", 2 * d.l), ("M", d.m), ("D", d.d), ("8", 8)])?;
        let ws = Workspace::<f64>::bytes(&d)?;
        let h0 = memory::product(&[("L + 1", d.l + 1), ("N", d.n), ("D", d.d), ("8", 8)])?;
        let rec = memory::product(&[
            ("steps", self.steps),
            ("L + 1", d.l + 1),
            ("record bytes", 200),
        ])?;
        memory::sum(&[
            ("weights", w),
            ("workspace", ws),
            ("h0", h0),
            ("records", rec),
        ])
    }

    /// Refuses a check whose largest tasks, one per thread, do not fit in memory.
    fn check_memory(&self) -> Result<(), MemoryError> {
        let mut sizes = self
            .shapes()
            .iter()
            .map(|s| self.task_bytes(s))
            .collect::<Result<Vec<_>, _>>()?;
        sizes.sort_unstable_by(|a, b| b.cmp(a));
        let threads = rayon::current_num_threads().max(1);
        let need = memory::sum(
            &sizes
                .iter()
                .take(threads)
                .map(|&b| ("task bytes", b))
                .collect::<Vec<_>>(),
        )?;
        memory::check(
            need,
            "the coordinate check's largest tasks (one per thread)",
        )
    }
}

/// The recorded quantities (see the module documentation for their definitions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Quantity {
    H,
    Branch,
    Dh,
    Du,
    Dv,
    Dbranch,
    Grad,
    F,
    Df,
}

impl Quantity {
    pub const ALL: [Quantity; 9] = [
        Quantity::H,
        Quantity::Branch,
        Quantity::Dh,
        Quantity::Du,
        Quantity::Dv,
        Quantity::Dbranch,
        Quantity::Grad,
        Quantity::F,
        Quantity::Df,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Quantity::H => "h",
            Quantity::Branch => "branch",
            Quantity::Dh => "dh",
            Quantity::Du => "dU",
            Quantity::Dv => "dV",
            Quantity::Dbranch => "dbranch",
            Quantity::Grad => "grad",
            Quantity::F => "f",
            Quantity::Df => "df",
        }
    }
    /// What it is, for figure titles and the report.
    pub fn describe(self) -> &'static str {
        match self {
            Quantity::H => "RMS h_l",
            Quantity::Branch => "RMS branch h_{l+1} - h_l",
            Quantity::Dh => "RMS h_l(k) - h_l(0)",
            Quantity::Du => "RMS U_l(k) - U_l(0)",
            Quantity::Dv => "RMS V_l(k) - V_l(0)",
            Quantity::Dbranch => "RMS branch(k) - branch(0)",
            Quantity::Grad => "RMS D dloss/dh_l",
            Quantity::F => "RMS f",
            Quantity::Df => "RMS f(k) - f(0)",
        }
    }
    fn per_layer(self) -> bool {
        !matches!(self, Quantity::F | Quantity::Df)
    }
}

/// One row of the tidy table: a quantity of one layer (or of the network) at one step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Row {
    pub shape: usize,
    pub seed: u64,
    /// None for the network-level quantities `f`, `df`.
    pub layer: Option<usize>,
    pub step: usize,
    pub quantity: Quantity,
    pub value: f64,
}

/// The records of one (shape, seed).
fn records(shape_idx: usize, seed: u64, d: usize, h: &train::History, out_len: usize) -> Vec<Row> {
    let mut rows = Vec::with_capacity(h.layer_stats.len() * 7 + h.losses.len() * 2);
    for st in &h.layer_stats {
        for (q, v) in [
            (Quantity::H, st.rms_h),
            (Quantity::Branch, st.rms_branch),
            (Quantity::Dh, st.rms_dh),
            (Quantity::Du, st.rms_du),
            (Quantity::Dv, st.rms_dv),
            (Quantity::Dbranch, st.rms_dbranch),
            (Quantity::Grad, d as f64 * st.rms_g),
        ] {
            // The block quantities have no value at l = L.
            if v.is_nan() && q != Quantity::H && q != Quantity::Dh && q != Quantity::Grad {
                continue;
            }
            rows.push(Row {
                shape: shape_idx,
                seed,
                layer: Some(st.layer),
                step: st.step,
                quantity: q,
                value: v,
            });
        }
    }
    let f0 = &h.outputs[..out_len];
    for k in 0..h.losses.len() {
        let f = &h.outputs[k * out_len..(k + 1) * out_len];
        let rms = |it: &mut dyn Iterator<Item = f64>| {
            (it.map(|x| x * x).sum::<f64>() / out_len.max(1) as f64).sqrt()
        };
        for (q, v) in [
            (Quantity::F, rms(&mut f.iter().copied())),
            (Quantity::Df, rms(&mut f.iter().zip(f0).map(|(a, b)| a - b))),
        ] {
            rows.push(Row {
                shape: shape_idx,
                seed,
                layer: None,
                step: k,
                quantity: q,
                value: v,
            });
        }
    }
    rows
}

/// The fitted exponent of one quantity along one axis, and its class.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    pub quantity: Quantity,
    /// "width", "depth" or "alpha".
    pub axis: &'static str,
    /// The exponent b of q ~ axis^b, its 95% interval and the number of points (NaN,
    /// NaN, NaN when not fitted).
    pub slope: f64,
    pub ci95: (f64, f64),
    pub points: usize,
    /// "stable", "growing", "vanishing", "zero" or "undefined".
    pub class: &'static str,
}

/// The outcome of a coordinate check.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CoordCheck {
    pub config: CoordCheckConfig,
    pub shapes: Vec<Shape>,
    pub rows: Vec<Row>,
    pub verdicts: Vec<Verdict>,
    /// Seconds of training.
    pub seconds: f64,
}

impl CoordCheck {
    /// The verdict of `q` along `axis`.
    pub fn verdict(&self, q: Quantity, axis: &str) -> Option<&Verdict> {
        self.verdicts
            .iter()
            .find(|v| v.quantity == q && v.axis == axis)
    }

    /// Per (shape, seed, step, quantity): the RMS over layers of a per-layer quantity,
    /// the value of a network-level one. Indexed `[shape][seed][step][quantity]`.
    pub fn summaries(&self) -> Vec<Vec<Vec<[f64; 9]>>> {
        let (ns, nk) = (self.config.seeds.len(), self.config.steps);
        let mut sum = vec![vec![vec![[0.0f64; 9]; nk]; ns]; self.shapes.len()];
        let mut cnt = vec![vec![vec![[0usize; 9]; nk]; ns]; self.shapes.len()];
        let seed_idx = |s: u64| self.config.seeds.iter().position(|&x| x == s).unwrap_or(0);
        for r in &self.rows {
            let qi = Quantity::ALL
                .iter()
                .position(|&q| q == r.quantity)
                .unwrap_or(0);
            let si = seed_idx(r.seed);
            let v = if r.quantity.per_layer() {
                r.value * r.value
            } else {
                r.value
            };
            sum[r.shape][si][r.step][qi] += v;
            cnt[r.shape][si][r.step][qi] += 1;
        }
        for (a, c) in sum
            .iter_mut()
            .flatten()
            .flatten()
            .zip(cnt.iter().flatten().flatten())
        {
            for ((v, &n), q) in a.iter_mut().zip(c).zip(Quantity::ALL) {
                if q.per_layer() {
                    *v = (*v / n.max(1) as f64).sqrt();
                } else if n == 0 {
                    *v = f64::NAN;
                }
            }
        }
        sum
    }
}

/// Runs the check: trains every (shape, seed), in parallel, largest first.
pub fn run(cfg: &CoordCheckConfig) -> Result<CoordCheck, CoordCheckError> {
    let t0 = std::time::Instant::now();
    let shapes = cfg.shapes();
    let mut tasks: Vec<(usize, u64)> = (0..shapes.len())
        .flat_map(|i| cfg.seeds.iter().map(move |&s| (i, s)))
        .collect();
    let size = |i: usize| {
        let d = shapes[i].dims;
        d.l * d.m * d.d
    };
    tasks.sort_by(|a, b| size(b.0).cmp(&size(a.0)).then(a.cmp(b)));
    let results: Vec<Result<Vec<Row>, CoordCheckError>> = tasks
        .par_iter()
        .map(|&(i, seed)| {
            let s = &shapes[i];
            let name = format!(
                "L{}-M{}-D{}-alpha{}-seed{}",
                s.dims.l, s.dims.m, s.dims.d, s.alpha, seed
            );
            let fail = |source: TrainError| CoordCheckError::Train {
                task: name.clone(),
                source,
            };
            let mut p = cfg.param.clone();
            p.alpha = s.alpha;
            let r = p.resolve(&s.dims);
            let mut w = Weights::<f64>::try_draw(&s.dims, &r, seed, seed, Par::Seq)?;
            let opts = TrainOptions {
                steps: cfg.steps,
                eta: cfg.lr,
                activation: cfg.activation,
                layer_stats: true,
                ..TrainOptions::default()
            };
            let h = train::train(&mut w, &cfg.data, &r, &opts, Par::Seq, &mut |_, _| {})
                .map_err(fail)?;
            Ok(records(i, seed, s.dims.d, &h, cfg.data.dout * cfg.data.n))
        })
        .collect();
    let mut rows = Vec::new();
    for r in results {
        rows.extend(r?);
    }
    rows.sort_by(|a, b| {
        (a.shape, a.seed, a.step, a.quantity as usize, a.layer).cmp(&(
            b.shape,
            b.seed,
            b.step,
            b.quantity as usize,
            b.layer,
        ))
    });
    let mut out = CoordCheck {
        config: cfg.clone(),
        shapes,
        rows,
        verdicts: Vec::new(),
        seconds: 0.0,
    };
    out.verdicts = verdicts(&out);
    out.seconds = t0.elapsed().as_secs_f64();
    Ok(out)
}

/// The axis value of a shape.
fn axis_value(s: &Shape, axis: &str) -> f64 {
    match axis {
        "width" => s.width as f64,
        "depth" => s.depth as f64,
        _ => s.alpha,
    }
}

/// The fitted exponents at the last step (module documentation, "The verdict").
fn verdicts(cc: &CoordCheck) -> Vec<Verdict> {
    let cfg = &cc.config;
    let sums = cc.summaries();
    let last = cfg.steps - 1;
    let mut out = Vec::new();
    let distinct = |v: Vec<f64>| {
        let mut v = v;
        v.sort_by(f64::total_cmp);
        v.dedup();
        v.len()
    };
    let axes: Vec<&'static str> = ["width", "depth", "alpha"]
        .into_iter()
        .filter(|a| distinct(cc.shapes.iter().map(|s| axis_value(s, a)).collect()) >= 2)
        .collect();
    for (qi, &q) in Quantity::ALL.iter().enumerate() {
        for &axis in &axes {
            let (mut x, mut y, mut g) = (Vec::new(), Vec::new(), Vec::new());
            for (i, s) in cc.shapes.iter().enumerate() {
                // The group: the other axes' values.
                let key: Vec<u64> = ["width", "depth", "alpha"]
                    .iter()
                    .filter(|a| **a != axis)
                    .map(|a| axis_value(s, a).to_bits())
                    .collect();
                let gid = cc
                    .shapes
                    .iter()
                    .position(|t| {
                        ["width", "depth", "alpha"]
                            .iter()
                            .filter(|a| **a != axis)
                            .map(|a| axis_value(t, a).to_bits())
                            .eq(key.iter().copied())
                    })
                    .unwrap_or(i);
                for per_seed in &sums[i] {
                    x.push(axis_value(s, axis));
                    y.push(per_seed[last][qi]);
                    g.push(gid);
                }
            }
            let nan = f64::NAN;
            let (slope, ci95, class) = if y.iter().all(|&v| v == 0.0) {
                (nan, (nan, nan), "zero")
            } else {
                match fit::loglog_fit_grouped(&x, &y, &g) {
                    Ok(f) => {
                        let c = if f.slope > cfg.tolerance {
                            "growing"
                        } else if f.slope < -cfg.tolerance {
                            "vanishing"
                        } else {
                            "stable"
                        };
                        (f.slope, f.slope_ci95, c)
                    }
                    Err(_) => (nan, (nan, nan), "undefined"),
                }
            };
            out.push(Verdict {
                quantity: q,
                axis,
                slope,
                ci95,
                points: y.len(),
                class,
            });
        }
    }
    out
}

/// The tidy table: one row per shape, seed, layer, step and quantity.
pub fn tidy_csv(cc: &CoordCheck) -> String {
    let mut s = String::from("preset,vary,width,M,D,L,alpha,seed,layer,step,quantity,value\n");
    for r in &cc.rows {
        let sh = &cc.shapes[r.shape];
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{},{},{},{},{},{:e}",
            cc.config.param.name,
            cc.config.vary.label().trim_start_matches("width "),
            sh.width,
            sh.dims.m,
            sh.dims.d,
            sh.dims.l,
            sh.alpha,
            r.seed,
            r.layer.map(|l| l.to_string()).unwrap_or_default(),
            r.step,
            r.quantity.name(),
            r.value
        );
    }
    s
}

fn fmt_ci(v: &Verdict) -> String {
    if v.slope.is_nan() {
        "-".into()
    } else if v.ci95.0.is_nan() {
        format!("{:+.2}", v.slope)
    } else {
        format!("{:+.2} [{:+.2}, {:+.2}]", v.slope, v.ci95.0, v.ci95.1)
    }
}

/// The verdict as a markdown table: one row per quantity, one column pair per axis.
pub fn verdict_table(cc: &CoordCheck) -> String {
    let axes: Vec<&str> = ["width", "depth", "alpha"]
        .into_iter()
        .filter(|a| cc.verdicts.iter().any(|v| v.axis == *a))
        .collect();
    let mut s = String::from("| quantity |");
    for a in &axes {
        let _ = write!(s, " exponent in {a} [95% CI] | {a} |");
    }
    s.push_str("\n|---|");
    for _ in &axes {
        s.push_str("---|---|");
    }
    s.push('\n');
    for q in Quantity::ALL {
        let _ = write!(s, "| `{}` ({}) |", q.name(), q.describe());
        for a in &axes {
            match cc.verdict(q, a) {
                Some(v) => {
                    let _ = write!(s, " {} | {} |", fmt_ci(v), v.class);
                }
                None => s.push_str(" - | - |"),
            }
        }
        s.push('\n');
    }
    s
}

/// One sentence per axis naming the quantities by class.
fn what_it_does(cc: &CoordCheck) -> String {
    let mut s = String::new();
    for axis in ["width", "depth", "alpha"] {
        let vs: Vec<&Verdict> = cc.verdicts.iter().filter(|v| v.axis == axis).collect();
        if vs.is_empty() {
            continue;
        }
        let _ = write!(s, "- along {axis}:");
        for class in ["stable", "growing", "vanishing", "zero", "undefined"] {
            let names: Vec<String> = vs
                .iter()
                .filter(|v| v.class == class)
                .map(|v| format!("`{}`", v.quantity.name()))
                .collect();
            if !names.is_empty() {
                let _ = write!(s, " {class}: {};", names.join(", "));
            }
        }
        s.push('\n');
    }
    s
}

/// Seed means of the summaries at `step`: `[shape][quantity]`.
fn seed_means(sums: &[Vec<Vec<[f64; 9]>>], step: usize) -> Vec<[f64; 9]> {
    sums.iter()
        .map(|per_seed| {
            let mut m = [0.0; 9];
            for s in per_seed {
                for (a, v) in m.iter_mut().zip(&s[step]) {
                    *a += v / per_seed.len() as f64;
                }
            }
            m
        })
        .collect()
}

/// mup-style panels: one per quantity, log-log against `axis` at fixed other axes (the
/// largest depth or width, the first alpha), one line per step (seed means).
fn ladder_figures(cc: &CoordCheck, axis: &str) -> Vec<Figure> {
    let cfg = &cc.config;
    let sums = cc.summaries();
    let means: Vec<Vec<[f64; 9]>> = (0..cfg.steps).map(|k| seed_means(&sums, k)).collect();
    let max_w = *cfg.widths.iter().max().unwrap_or(&1);
    let max_l = *cfg.depths.iter().max().unwrap_or(&1);
    let a0 = cfg.alphas[0];
    // The other axes at their largest (depth, width) or first (alpha) value.
    let pick = |s: &Shape| match axis {
        "width" => s.depth == max_l && s.alpha == a0,
        "depth" => s.width == max_w && s.alpha == a0,
        _ => s.width == max_w && s.depth == max_l,
    };
    let (xlabel, at) = match axis {
        "width" => (cfg.vary.label().to_string(), format!("L = {max_l}")),
        "depth" => ("depth L".to_string(), format!("width {max_w}")),
        _ => ("alpha".to_string(), format!("width {max_w}, L = {max_l}")),
    };
    let mut idx: Vec<usize> = (0..cc.shapes.len())
        .filter(|&i| pick(&cc.shapes[i]))
        .collect();
    idx.sort_by(|&a, &b| {
        axis_value(&cc.shapes[a], axis).total_cmp(&axis_value(&cc.shapes[b], axis))
    });
    let mut figs = Vec::new();
    for (qi, q) in Quantity::ALL.iter().enumerate() {
        let mut f = Figure::new(
            format!("{} ({at})", q.describe()),
            xlabel.clone(),
            q.name(),
            plot::Scale::Log,
            plot::Scale::Log,
        );
        for (k, m) in means.iter().enumerate() {
            let x: Vec<f64> = idx
                .iter()
                .map(|&i| axis_value(&cc.shapes[i], axis))
                .collect();
            let y: Vec<f64> = idx.iter().map(|&i| m[i][qi]).collect();
            f.series
                .push(Series::new(format!("k={k}"), x, y, Style::LinePoints).with_color(k));
        }
        figs.push(f);
    }
    figs
}

/// Heat maps of every quantity over (width, depth) at the last step (seed means, first
/// alpha).
fn heatmaps(cc: &CoordCheck) -> Vec<HeatMap> {
    let cfg = &cc.config;
    let sums = cc.summaries();
    let means = seed_means(&sums, cfg.steps - 1);
    let mut ws = cfg.widths.clone();
    ws.sort_unstable();
    ws.dedup();
    let mut ls = cfg.depths.clone();
    ls.sort_unstable();
    ls.dedup();
    let a0 = cfg.alphas[0];
    Quantity::ALL
        .iter()
        .enumerate()
        .map(|(qi, q)| {
            let mut z = Vec::with_capacity(ws.len() * ls.len());
            for &l in &ls {
                for &w in &ws {
                    let v = cc
                        .shapes
                        .iter()
                        .position(|s| s.width == w && s.depth == l && s.alpha == a0)
                        .map_or(f64::NAN, |i| means[i][qi]);
                    z.push(v);
                }
            }
            HeatMap {
                title: format!("{} at k = {}", q.describe(), cfg.steps - 1),
                x_label: cfg.vary.label().to_string(),
                y_label: "depth L".to_string(),
                x_ticks: ws.iter().map(|w| w.to_string()).collect(),
                y_ticks: ls.iter().map(|l| l.to_string()).collect(),
                z,
            }
        })
        .collect()
}

/// The report (markdown).
pub fn report_md(cc: &CoordCheck) -> String {
    let cfg = &cc.config;
    let mut s = String::new();
    let _ = writeln!(s, "# Coordinate check: {}\n", cfg.name);
    let _ = writeln!(
        s,
        "Parametrization `{}` (alpha {:?}), activation {}, {} = {:?}{}, depths L = {:?}, K = {} steps at lr = {}, seeds {:?}, data d_in = {}, d_out = {}, N = {}. {} networks trained in {:.1} s.\n",
        cfg.param.name,
        cfg.alphas,
        cfg.activation.name(),
        cfg.vary.label(),
        cfg.widths,
        match cfg.vary {
            Vary::MD => String::new(),
            Vary::M => format!(" (D = {})", cfg.fixed),
            Vary::D => format!(" (M = {})", cfg.fixed),
        },
        cfg.depths,
        cfg.steps,
        cfg.lr,
        cfg.seeds,
        cfg.data.din,
        cfg.data.dout,
        cfg.data.n,
        cc.shapes.len() * cfg.seeds.len(),
        cc.seconds
    );
    let _ = writeln!(
        s,
        "## Verdict at step k = {}\n\nExponent b of `q ~ axis^b` (OLS of ln q on ln axis with one intercept per value of the other axes, every seed a point; 95% interval, Student's t). Stable: |b| <= {}; growing: b > {}; vanishing: b < -{}. Per-layer quantities are the RMS over layers.\n",
        cfg.steps - 1,
        cfg.tolerance,
        cfg.tolerance,
        cfg.tolerance
    );
    s.push_str(&verdict_table(cc));
    let _ = writeln!(s, "\n## What `{}` does\n", cfg.param.name);
    s.push_str(&what_it_does(cc));
    s.push_str(
        "\n## Quantities\n\n\
- `h`: RMS of h_l; `branch`: RMS of h_{l+1} - h_l; `dh`: RMS of h_l(k) - h_l(0).\n\
- `dU`, `dV`: RMS over entries of U_l(k) - U_l(0), V_l(k) - V_l(0).\n\
- `dbranch`: RMS of (h_{l+1} - h_l)(k) - (h_{l+1} - h_l)(0), the change of the block's output since step 0 (the weight changes' effect, with the input's).\n\
- `grad`: RMS of D dloss/dh_l (the backward signal B = D b of docs/papers.md 2.4, in the scale of h).\n\
- `f`, `df`: RMS of the outputs and of f(k) - f(0).\n\n\
Step k is the forward pass before update k. Files: `coordcheck.csv` (tidy), `verdict.json`, `width.png`, `depth.png`, `heatmap.png` (and `alpha.png` with an alpha ladder), SVG beside each.\n",
    );
    s
}

/// Writes the output directory as a unit: the tidy CSV, the verdict (JSON), the figures
/// and `report.md`. `check_out_dir` refuses a directory of other files.
pub fn write(cc: &CoordCheck, out: &Path) -> Result<(), CoordCheckError> {
    io::check_out_dir(out, "coordcheck.json", "coordinate check")?;
    io::write_dir_as_unit(out, |dir| -> Result<(), CoordCheckError> {
        io::atomic_write(&dir.join("coordcheck.csv"), tidy_csv(cc).as_bytes())?;
        let json = serde_json::json!({
            "config": &cc.config,
            "verdicts": &cc.verdicts,
            "seconds": cc.seconds,
        });
        let text = serde_json::to_string_pretty(&json).unwrap_or_default();
        io::atomic_write(&dir.join("verdict.json"), text.as_bytes())?;
        let axes: Vec<&str> = ["width", "depth", "alpha"]
            .into_iter()
            .filter(|a| cc.verdicts.iter().any(|v| v.axis == *a))
            .collect();
        for a in axes {
            plot::save_panels(&ladder_figures(cc, a), 3, &dir.join(a))?;
        }
        plot::save_heatmaps(&heatmaps(cc), 3, &dir.join("heatmap"))?;
        io::atomic_write(&dir.join("report.md"), report_md(cc).as_bytes())?;
        // The marker last: a directory with it is a complete check.
        let cfg = serde_json::to_string_pretty(&cc.config).unwrap_or_default();
        io::atomic_write(&dir.join("coordcheck.json"), cfg.as_bytes())?;
        Ok(())
    })
}

#[cfg(test)]
mod tests;
