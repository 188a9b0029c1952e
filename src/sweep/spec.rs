use crate::model::Data;
use crate::param::ParamOverride;
use crate::spec::SpecError;
use serde::{Deserialize, Serialize};

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
    /// The axis's values, sorted and deduplicated.
    pub(crate) fn values(&self, field: &str) -> Result<Vec<usize>, SpecError> {
        let mut v = self.written(field)?;
        v.sort_unstable();
        v.dedup();
        Ok(v)
    }

    /// The axis's values in the order written (a logspace ascending), checked positive.
    pub(crate) fn written(&self, field: &str) -> Result<Vec<usize>, SpecError> {
        let bad = |v: String, why: &str| SpecError::Invalid {
            field: field.into(),
            value: v,
            why: why.into(),
        };
        let v: Vec<usize> = match self {
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
        Ok(v)
    }
}

/// The most tasks a sweep may plan (and the most values a logspace axis may have): the
/// plan, the finished-task scan and the tables hold one entry per task.
pub const MAX_TASKS: usize = 1_000_000;

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
/// explicit samples `x`, `y` when given (both; e.g. the input of docs/papers.md 2.5, E2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    /// Input dimension d_in. Required; integer >= 1.
    pub din: usize,
    /// Output dimension d_out. Required; integer >= 1.
    pub dout: usize,
    /// `N`: number of training samples. Required; integer >= 1.
    #[serde(rename = "N")]
    pub n: usize,
    /// Seed of the synthetic X, Y (unused with `x`, `y`). Default 1; any u64.
    #[serde(default = "one")]
    pub seed: u64,
    /// Explicit inputs: one list of `din` numbers when N = 1, or N such lists (finite).
    /// Default: none (synthetic); give `y` with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<Samples>,
    /// Explicit targets: one list of `dout` numbers when N = 1, or N such lists (finite).
    /// Default: none (synthetic); give `x` with it.
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

pub(crate) fn inv_data(field: &str, value: impl ToString, why: &str) -> SpecError {
    SpecError::Invalid {
        field: field.into(),
        value: value.to_string(),
        why: why.into(),
    }
}

/// The grids of shapes, and the knob axes of a transfer sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawGrid")]
pub struct GridSpec {
    /// Depths L: an [`Axis`] of positive integers (sorted, deduplicated). Required.
    #[serde(rename = "L")]
    pub l: Axis,
    /// Block widths M: an [`Axis`] of positive integers. Required.
    #[serde(rename = "M")]
    pub m: Axis,
    /// Embedding dimensions D: an [`Axis`] of positive integers. Required.
    #[serde(rename = "D")]
    pub d: Axis,
    /// How the axes make shapes: `"product"` (default), every (L, M, D) of the three
    /// axes; `"zip"`, the i-th shape is (L[i], M[i], D[i]) in the order written (an axis
    /// of one value goes with every shape), e.g. a ladder of growing networks along
    /// D ∝ P^(1/3) (the P-scaling report, [`crate::sweep::ladder`]).
    #[serde(default, skip_serializing_if = "Shapes::is_product")]
    pub shapes: Shapes,
    /// Knob axes ([`Knob`]: `lr`, `alpha`, or a scalar of the parametrization table such
    /// as `"U.lr.c"`), each a [`KnobAxis`]; by name (their order in the plan). Default:
    /// none. A sweep with knob axes is a transfer sweep (`[reference] kind = "none"`).
    #[serde(flatten)]
    pub knobs: std::collections::BTreeMap<String, KnobAxis>,
}

/// How the axes of `[grid]` make the shapes of a sweep.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Shapes {
    /// Every combination of the L, M and D values.
    #[default]
    Product,
    /// The i-th values of the three axes together (a ladder of shapes).
    Zip,
}

impl Shapes {
    fn is_product(&self) -> bool {
        *self == Shapes::Product
    }
}

/// `[grid]` as written; its axes are checked by [`axis_from_value`] and
/// [`knob_axis_from_value`].
#[derive(Deserialize)]
struct RawGrid {
    #[serde(rename = "L")]
    l: toml::Value,
    #[serde(rename = "M")]
    m: toml::Value,
    #[serde(rename = "D")]
    d: toml::Value,
    #[serde(flatten)]
    rest: std::collections::BTreeMap<String, toml::Value>,
}

impl TryFrom<RawGrid> for GridSpec {
    type Error = String;
    fn try_from(mut g: RawGrid) -> Result<Self, String> {
        let shapes = match g.rest.remove("shapes") {
            None => Shapes::Product,
            Some(toml::Value::String(s)) if s == "product" => Shapes::Product,
            Some(toml::Value::String(s)) if s == "zip" => Shapes::Zip,
            Some(other) => {
                return Err(format!(
                    "grid.shapes: must be \"product\" or \"zip\", got {other}"
                ));
            }
        };
        let mut knobs = std::collections::BTreeMap::new();
        for (name, v) in g.rest {
            let field = format!("grid.{name}");
            if let Err(why) = name.parse::<Knob>() {
                return Err(format!("{field}: {why}"));
            }
            knobs.insert(name, knob_axis_from_value(&field, v)?);
        }
        Ok(GridSpec {
            l: axis_from_value("grid.L", g.l)?,
            m: axis_from_value("grid.M", g.m)?,
            d: axis_from_value("grid.D", g.d)?,
            shapes,
            knobs,
        })
    }
}

/// A knob of a transfer sweep: a real number of the run that a `[grid]` axis may range
/// over besides the shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Knob {
    /// `lr`: the global learning rate eta (multiplies every role's rate).
    Lr,
    /// `alpha`: the branch scale of the parametrization table.
    Alpha,
    /// `"<role>.<init|mult|lr>.<c|l|m|d|din|dout|n|alpha>"` (role `W_E`, `U`, `V`, `W_U`)
    /// or `"loss.<c|l|...>"`: one number of the table ([`crate::param::Scale`]).
    Scale {
        /// `None` for the loss constant.
        role: Option<crate::param::Role>,
        /// 0 init, 1 mult, 2 lr (unused for the loss).
        what: u8,
        /// Index into [`SCALE_FIELDS`].
        field: u8,
    },
}

/// The numbers of a [`crate::param::Scale`], by their spec names.
pub const SCALE_FIELDS: [&str; 8] = ["c", "l", "m", "d", "din", "dout", "n", "alpha"];

const KNOB_FORMS: &str = "a knob is 'lr', 'alpha', \"<role>.<init|mult|lr>.<c|l|m|d|din|dout|n|alpha>\" with role W_E, U, V or W_U, or \"loss.<c|l|m|d|din|dout|n|alpha>\" (quote dotted names)";

impl std::str::FromStr for Knob {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        use crate::param::Role;
        let unknown =
            || format!("unknown grid axis '{s}' (the shape axes are L, M, D; {KNOB_FORMS})");
        let field_of = |f: &str| {
            SCALE_FIELDS
                .iter()
                .position(|x| *x == f)
                .map(|i| i as u8)
                .ok_or_else(unknown)
        };
        match s {
            "lr" => return Ok(Knob::Lr),
            "alpha" => return Ok(Knob::Alpha),
            _ => {}
        }
        let parts: Vec<&str> = s.split('.').collect();
        match parts.as_slice() {
            ["loss", f] => Ok(Knob::Scale {
                role: None,
                what: 0,
                field: field_of(f)?,
            }),
            [r, w, f] => {
                let role = Role::ALL
                    .into_iter()
                    .find(|x| x.name() == *r)
                    .ok_or_else(unknown)?;
                let what = match *w {
                    "init" => 0,
                    "mult" => 1,
                    "lr" => 2,
                    _ => return Err(unknown()),
                };
                Ok(Knob::Scale {
                    role: Some(role),
                    what,
                    field: field_of(f)?,
                })
            }
            _ => Err(unknown()),
        }
    }
}

impl Knob {
    /// Sets this knob to `v` in a run's table and global learning rate.
    pub fn apply(self, v: f64, p: &mut crate::param::Parametrization, lr: &mut f64) {
        match self {
            Knob::Lr => *lr = v,
            Knob::Alpha => p.alpha = v,
            Knob::Scale { role, what, field } => {
                let sc = match role {
                    None => &mut p.loss,
                    Some(r) => {
                        let rp = p.role_mut(r);
                        match what {
                            0 => &mut rp.init,
                            1 => &mut rp.mult,
                            _ => &mut rp.lr,
                        }
                    }
                };
                let slot = match field {
                    0 => &mut sc.c,
                    1 => &mut sc.l,
                    2 => &mut sc.m,
                    3 => &mut sc.d,
                    4 => &mut sc.din,
                    5 => &mut sc.dout,
                    6 => &mut sc.n,
                    _ => &mut sc.alpha,
                };
                *slot = v;
            }
        }
    }
}

/// A knob axis as written: a list of numbers, `{ logspace = [lo, hi, count] }` (count
/// values from lo to hi evenly spaced in log10, not rounded; 0 < lo <= hi) or
/// `{ linspace = [lo, hi, count] }` (evenly spaced, e.g. for exponents).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum KnobAxis {
    List(Vec<f64>),
    Logspace { logspace: (f64, f64, usize) },
    Linspace { linspace: (f64, f64, usize) },
}

/// Parses a knob axis as written, with errors naming `field` (e.g. `grid.lr`).
fn knob_axis_from_value(field: &str, v: toml::Value) -> Result<KnobAxis, String> {
    const FORMS: &str =
        "a list of numbers, { logspace = [lo, hi, count] } or { linspace = [lo, hi, count] }";
    match v {
        toml::Value::Array(xs) => xs
            .into_iter()
            .map(|x| match x {
                toml::Value::Integer(i) => Ok(i as f64),
                toml::Value::Float(f) => Ok(f),
                other => Err(format!(
                    "{field}: list entries must be numbers, got {other}"
                )),
            })
            .collect::<Result<_, _>>()
            .map(KnobAxis::List),
        toml::Value::Table(t) => {
            if t.len() != 1 {
                return Err(format!("{field}: expected {FORMS}, got {t}"));
            }
            let (k, range) = t.into_iter().next().expect("one key");
            let parsed = range.clone().try_into::<(f64, f64, usize)>().map_err(|_| {
                format!(
                    "{field}: {k} must be [lo, hi, count] with an integer count >= 0, got {range}"
                )
            });
            match k.as_str() {
                "logspace" => parsed.map(|logspace| KnobAxis::Logspace { logspace }),
                "linspace" => parsed.map(|linspace| KnobAxis::Linspace { linspace }),
                _ => Err(format!("{field}: unknown key '{k}' (expected {FORMS})")),
            }
        }
        other => Err(format!("{field}: expected {FORMS}, got {other}")),
    }
}

impl KnobAxis {
    /// The axis' values, sorted and deduplicated; every value finite, at least one.
    pub(crate) fn values(&self, field: &str) -> Result<Vec<f64>, SpecError> {
        let bad = |v: String, why: &str| SpecError::Invalid {
            field: field.into(),
            value: v,
            why: why.into(),
        };
        if let KnobAxis::Logspace {
            logspace: (_, _, n),
        }
        | KnobAxis::Linspace {
            linspace: (_, _, n),
        } = self
            && *n > MAX_TASKS
        {
            return Err(bad(
                n.to_string(),
                &format!("a count must be at most {MAX_TASKS}"),
            ));
        }
        let mut v: Vec<f64> = match self {
            KnobAxis::List(xs) => {
                if xs.is_empty() {
                    return Err(bad("[]".into(), "must not be empty"));
                }
                if let Some(x) = xs.iter().find(|x| !x.is_finite()) {
                    return Err(bad(x.to_string(), "must hold finite numbers"));
                }
                xs.clone()
            }
            KnobAxis::Logspace {
                logspace: (lo, hi, n),
            } => {
                if !(lo.is_finite() && hi.is_finite() && *lo > 0.0 && hi >= lo && *n >= 1) {
                    return Err(bad(
                        format!("[{lo}, {hi}, {n}]"),
                        "logspace needs 0 < lo <= hi (finite) and count >= 1",
                    ));
                }
                let (a, b) = (lo.log10(), hi.log10());
                spaced(a, b, *n)
                    .into_iter()
                    .map(|e| 10f64.powf(e))
                    .collect()
            }
            KnobAxis::Linspace {
                linspace: (lo, hi, n),
            } => {
                if !(lo.is_finite() && hi.is_finite() && hi >= lo && *n >= 1) {
                    return Err(bad(
                        format!("[{lo}, {hi}, {n}]"),
                        "linspace needs lo <= hi (finite) and count >= 1",
                    ));
                }
                spaced(*lo, *hi, *n)
            }
        };
        if v.len() > MAX_TASKS {
            return Err(bad(
                v.len().to_string(),
                &format!("an axis may hold at most {} values", MAX_TASKS),
            ));
        }
        v.sort_by(f64::total_cmp);
        v.dedup();
        Ok(v)
    }
}

/// `n` values from `a` to `b` evenly spaced, the endpoints exact.
fn spaced(a: f64, b: f64, n: usize) -> Vec<f64> {
    (0..n)
        .map(|i| {
            if i + 1 == n && n > 1 {
                b
            } else if n == 1 {
                a
            } else {
                a + (b - a) * (i as f64 / (n - 1) as f64)
            }
        })
        .collect()
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
    /// No reference: a transfer sweep, which records the training losses of every shape
    /// and knob value and reports the optimal knob value per shape and its drift
    /// ([`crate::sweep::transfer`]). Needs a knob axis in `[grid]`.
    None,
    /// A named shape (need not be in the grid).
    Shape {
        /// Depth of the reference. Required; integer >= 1.
        #[serde(rename = "L")]
        l: usize,
        /// Block width of the reference. Required; integer >= 1.
        #[serde(rename = "M")]
        m: usize,
        /// Embedding dimension of the reference. Required; at least the grid's largest D.
        #[serde(rename = "D")]
        d: usize,
    },
    /// The large-D limit (docs/papers.md 2.3; [`crate::vslimit`]) of a table of the
    /// chizat-python family (chizat-julia included); errors of docs/papers.md 2.4 "Python
    /// errors". Linear blocks: the exact ODE limit, optional settings `rtol`, `atol`,
    /// `num_s` (defaults: the authors' 1e-5, 1e-7, 100). Any other activation: the
    /// Monte-Carlo limit of [`crate::limit::nonlinear`], optional settings `num_s`
    /// (default 101), `samples`, `replicas`, `seed` (defaults of
    /// [`crate::limit::MonteCarlo`]).
    Limit {
        /// Exact (linear) solver: relative ODE tolerance. Default 1e-5; finite, >= 2.2e-14.
        rtol: Option<f64>,
        /// Exact (linear) solver: absolute ODE tolerance. Default 1e-7; finite, >= 0.
        atol: Option<f64>,
        /// Depth grid points s in [0, 1]. Default 100 (exact) or 101 (Monte Carlo); >= 2.
        num_s: Option<usize>,
        /// Monte Carlo: units per depth point. Default 2000; even, >= 2(din + dout) + 2, <= 1e8.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        samples: Option<usize>,
        /// Monte Carlo: independent replicas (standard errors). Default 8; 2 to 10000.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        replicas: Option<usize>,
        /// Monte Carlo: seed of the unit clouds. Default 0; any u64.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seed: Option<u64>,
    },
}

/// [`ReferenceSpec`] as written, every variant a struct so that unknown keys are refused.
#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
enum ReferenceRepr {
    Largest {},
    None {},
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
            ReferenceRepr::None {} => ReferenceSpec::None,
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
    /// `"coupled"`: W_E, W_U are the first D rows of the repetition's embedding draw (the
    /// reference's rows).
    Coupled,
    /// `"uncoupled"`: W_E, W_U drawn afresh for each shape.
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

impl std::fmt::Display for Coupling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which plots and fits the report makes (all optional).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportSpec {
    /// Read step (record index) of the slice plots and rate fits (default: the last read
    /// step); must be one of `read_steps`.
    pub step: Option<usize>,
    /// Read step of the P plots (default: `step`); must be one of `read_steps`.
    pub p_step: Option<usize>,
    /// M values of the error-vs-D slices (default: four spread over the grid); values of
    /// `grid.M`.
    pub slice_m: Option<Vec<usize>>,
    /// D values of the error-vs-M slices (default: four spread over the grid); values of
    /// `grid.D`.
    pub slice_d: Option<Vec<usize>>,
    /// Only shapes with P = L M D below this enter the P plots and P fits. Default: no
    /// limit; finite, > 0.
    pub p_max: Option<f64>,
    /// Bootstrap replicates of the joint fits (count; default 200; 20 to 100000).
    pub bootstrap: Option<usize>,
    /// Another sweep's output directory (relative to the working directory), whose
    /// headline and joint fits the report sets beside this sweep's: e.g. the same grid
    /// against the largest network and against the limit. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compare: Option<std::path::PathBuf>,
    /// Transfer sweeps: the knob axis the optimum is sought along. Default `lr` when the
    /// grid has it, else the first knob axis by name; one of the grid's knob axes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<String>,
    /// Transfer sweeps: the optimum transfers along a shape axis when the fitted exponent
    /// of its drift is within +-tolerance. Default 0.25; finite, > 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerance: Option<f64>,
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
    /// The transfer knob (transfer sweeps), a key of `grid`'s knob axes.
    pub transfer: Option<String>,
    pub tolerance: f64,
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
        knobs: &[&str],
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
                None => Ok(super::report::pick_spread(grid, 4)),
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
        let transfer = match &self.transfer {
            None if knobs.contains(&"lr") => Some("lr".to_string()),
            None => knobs.first().map(|k| k.to_string()),
            Some(t) if knobs.contains(&t.as_str()) => Some(t.clone()),
            Some(t) => {
                return Err(inv_data(
                    "report.transfer",
                    t,
                    &format!("must name a knob axis of [grid] (here {knobs:?})"),
                ));
            }
        };
        let tolerance = self.tolerance.unwrap_or(0.25);
        if !(tolerance.is_finite() && tolerance > 0.0) {
            return Err(inv_data(
                "report.tolerance",
                tolerance,
                "must be a finite positive number",
            ));
        }
        Ok(ReportSettings {
            step,
            p_step,
            slice_m,
            slice_d,
            p_max,
            bootstrap,
            transfer,
            tolerance,
        })
    }
}

/// A sweep spec as written in TOML. See `experiments/*.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepSpec {
    /// Name of the sweep; the default output directory is `runs/<name>`. Required.
    pub name: String,
    /// Parametrization preset: `chizat-julia` (default), `chizat-python`, `lazy`, `standard`.
    #[serde(default = "crate::spec::default_preset")]
    pub preset: String,
    /// `[param]`: changes to the preset's table ([`ParamOverride`]). Default: none.
    #[serde(default)]
    pub param: Option<ParamOverride>,
    /// Activation of the blocks: `tanh` (default), `relu`, `gelu`, `softplus`, `linear`.
    #[serde(default = "crate::spec::default_activation")]
    pub activation: String,
    /// `[data]`: the training data ([`DataSpec`]). Required.
    pub data: DataSpec,
    /// `[grid]`: the shapes L x M x D ([`GridSpec`]). Required.
    pub grid: GridSpec,
    /// GD steps K, a count (records k = 0..K-1). Required; integer >= 1.
    pub steps: usize,
    /// Global learning rate eta, multiplies every role's rate. Default 1.0; finite, >= 0.
    #[serde(default = "crate::spec::default_lr")]
    pub lr: f64,
    /// Repetitions (independent weight draws), a count. Default 1; >= 1.
    #[serde(default = "default_reps")]
    pub reps: usize,
    /// Sweep seed: every task's seeds derive from it. Default 1; any u64.
    #[serde(default = "one")]
    pub seed: u64,
    /// Records (0-based, record k = after k updates) at which errors are read
    /// (default: the last, `steps - 1`); non-empty, each < `steps`.
    #[serde(default)]
    pub read_steps: Option<Vec<usize>>,
    /// `[reference]`: what the models are compared with ([`ReferenceSpec`]). Required.
    pub reference: ReferenceSpec,
    /// Coupling variants, `"coupled"` and/or `"uncoupled"` (default: both); non-empty.
    #[serde(default = "default_couplings")]
    pub couplings: Vec<Coupling>,
    /// `[report]`: plots and fits ([`ReportSpec`]). Default: every setting's default.
    #[serde(default)]
    pub report: ReportSpec,
    /// Precision of the training runs: "f64" (default) or "f32". Errors are computed in
    /// f64 either way.
    #[serde(default)]
    pub dtype: crate::model::Dtype,
    /// How the tasks train ([`Backend`]): "auto" (default), "dense", "lowrank" or
    /// "regenerated".
    #[serde(default, skip_serializing_if = "Backend::is_auto")]
    pub backend: Backend,
}

pub use crate::spec::Backend;
fn default_reps() -> usize {
    1
}
fn default_couplings() -> Vec<Coupling> {
    vec![Coupling::Coupled, Coupling::Uncoupled]
}
