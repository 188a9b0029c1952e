use super::SweepError;
use super::spec::{Axis, Coupling, Knob, ReferenceSpec, Shapes, SweepSpec, inv_data};
use crate::limit::{LinearLimitParams, MonteCarlo};
use std::sync::Arc;

use crate::memory::{self, MemoryError};
use crate::model::Activation;
use crate::param::{Dims, Parametrization};
use crate::rng::derive_seed;
use crate::spec::SpecError;
use crate::vslimit::LimitReference;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Mutex;

/// A checked sweep.
#[derive(Debug, Clone, Serialize)]
pub struct Sweep {
    pub spec: SweepSpec,
    pub param: Parametrization,
    pub activation: Activation,
    pub ls: Vec<usize>,
    pub ms: Vec<usize>,
    pub ds: Vec<usize>,
    /// The grid's shapes (L, M, D) in plan order: the product of `ls`, `ms`, `ds`, or
    /// with `[grid] shapes = "zip"` the ladder as written.
    pub shapes: Vec<(usize, usize, usize)>,
    /// The reference shape; (0, 0, 0) for a limit reference.
    pub reference: (usize, usize, usize),
    pub read_steps: Vec<usize>,
    /// The knob axes of a transfer sweep (empty for a shape sweep).
    pub knobs: KnobGrid,
    /// Bytes one task may use, for the automatic choice of its engine
    /// ([`super::Strategy`]; `backend = "auto"`): [`super::MEMORY_FRACTION`] of the
    /// memory available when the spec was checked (`RESLIM_MEMORY_LIMIT` overrides it).
    /// Fixed with the plan, so that a task's engine never changes within a run.
    pub memory_budget: usize,
    /// The limit of a `kind = "limit"` reference: checked with the spec, solved when
    /// first needed ([`Sweep::limit_reference`]).
    #[serde(skip)]
    pub limit: Option<LimitPlan>,
}

/// How a sweep's limit reference is solved, checked but not yet solved, and the
/// solution once it is (shared by the clones of the [`Sweep`]).
#[derive(Debug, Clone)]
pub struct LimitPlan {
    pub solver: LimitSolver,
    solved: Arc<Mutex<Option<Arc<LimitReference>>>>,
}

/// The limit a sweep is measured against.
#[derive(Debug, Clone)]
pub enum LimitSolver {
    /// Linear blocks: the exact ODE systems ([`LimitReference::solve`]).
    Exact(LinearLimitParams),
    /// Any other activation: the Monte-Carlo limit ([`LimitReference::solve_nonlinear`]).
    MonteCarlo {
        params: LinearLimitParams,
        activation: Activation,
        mc: MonteCarlo,
    },
}

impl LimitPlan {
    fn new(solver: LimitSolver) -> Self {
        LimitPlan {
            solver,
            solved: Arc::new(Mutex::new(None)),
        }
    }
}

/// The knob axes of a transfer sweep: their names (as in `[grid]`), knobs and values
/// (sorted); the knob points are their Cartesian product, the last axis varying fastest.
#[derive(Debug, Clone, Default, Serialize)]
pub struct KnobGrid {
    pub names: Vec<String>,
    #[serde(skip)]
    pub knobs: Vec<Knob>,
    pub values: Vec<Vec<f64>>,
}

impl KnobGrid {
    /// Number of knob points (1 when there is no knob axis: the spec's own values).
    pub fn points(&self) -> usize {
        self.values.iter().map(Vec::len).product()
    }

    /// The values of point `i` (< [`KnobGrid::points`]), one per axis.
    pub fn point(&self, i: usize) -> Vec<f64> {
        let mut rest = i;
        let mut out = vec![0.0; self.values.len()];
        for (a, vs) in self.values.iter().enumerate().rev() {
            out[a] = vs[rest % vs.len()];
            rest /= vs.len();
        }
        out
    }

    /// Whether there is no knob axis.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The table and global learning rate at point `i`: `param`, `lr` with each knob set.
    pub fn apply(&self, i: usize, param: &Parametrization, lr: f64) -> (Parametrization, f64) {
        let (mut p, mut lr) = (param.clone(), lr);
        for (k, v) in self.knobs.iter().zip(self.point(i)) {
            k.apply(v, &mut p, &mut lr);
        }
        (p, lr)
    }
}

impl Sweep {
    /// Whether this is a transfer sweep (`[reference] kind = "none"`, knob axes in the
    /// grid): no reference; a task's divergence is recorded, not fatal.
    pub fn is_transfer(&self) -> bool {
        matches!(self.spec.reference, ReferenceSpec::None)
    }

    /// The parametrization table and global learning rate of task `t`: the sweep's, with
    /// the task's knob values set.
    pub fn task_param(&self, t: &Task) -> (Parametrization, f64) {
        match t.knob {
            Some(i) => self.knobs.apply(i, &self.param, self.spec.lr),
            None => (self.param.clone(), self.spec.lr),
        }
    }

    /// The report's settings ([`super::spec::ReportSpec::resolve`]; checked with the spec).
    pub fn report_settings(&self) -> Result<super::spec::ReportSettings, SpecError> {
        let names: Vec<&str> = self.knobs.names.iter().map(String::as_str).collect();
        self.spec
            .report
            .resolve(&self.read_steps, &self.ms, &self.ds, &names)
    }

    /// Depth grid points of the limit reference (0 without one).
    pub fn limit_num_s(&self) -> usize {
        match self.limit.as_ref().map(|l| &l.solver) {
            Some(LimitSolver::Exact(lp)) | Some(LimitSolver::MonteCarlo { params: lp, .. }) => {
                lp.num_s
            }
            None => 0,
        }
    }

    /// Whether the reference is the large-scale limit (`[reference] kind = "limit"`).
    pub fn against_limit(&self) -> bool {
        self.limit.is_some()
    }

    /// The solved limit reference: solved on the first call (with every core), the same
    /// `Arc` afterwards. An error for a sweep with a finite reference.
    pub fn limit_reference(&self) -> Result<Arc<LimitReference>, SweepError> {
        let Some(plan) = &self.limit else {
            return Err(SpecError::Invalid {
                field: "reference".into(),
                value: format!("{:?}", self.spec.reference),
                why: "is not the limit".into(),
            }
            .into());
        };
        let mut solved = plan.solved.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = &*solved {
            return Ok(l.clone());
        }
        let data = self.spec.data.data()?;
        let lim = match &plan.solver {
            LimitSolver::Exact(lp) => LimitReference::solve(&data, lp)?,
            LimitSolver::MonteCarlo {
                params,
                activation,
                mc,
            } => LimitReference::solve_nonlinear(&data, params, *activation, mc)?,
        };
        let lim = Arc::new(lim);
        *solved = Some(lim.clone());
        Ok(lim)
    }
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
        crate::spec::check_name("name", &self.name)?;
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
        let shapes = match self.grid.shapes {
            Shapes::Product => {
                // In floating point: the count itself may not fit `usize`.
                let n = ls.len() as f64 * ms.len() as f64 * ds.len() as f64;
                if n > MAX_TASKS as f64 {
                    Vec::new() // refused by `plan_size` below
                } else {
                    let mut v = Vec::with_capacity(n as usize);
                    for &l in &ls {
                        for &m in &ms {
                            for &d in &ds {
                                v.push((l, m, d));
                            }
                        }
                    }
                    v
                }
            }
            Shapes::Zip => zip_shapes(&self.grid)?,
        };
        let mut knobs = KnobGrid::default();
        for (name, axis) in &self.grid.knobs {
            let field = format!("grid.{name}");
            let knob: Knob = name
                .parse()
                .map_err(|e: String| inv(&field, name.clone(), &e))?;
            knobs.names.push(name.clone());
            knobs.knobs.push(knob);
            knobs.values.push(axis.values(&field)?);
        }
        plan_size(
            self.reps,
            &self.grid,
            &ls,
            &ms,
            &ds,
            knobs.values.iter().map(Vec::len),
        )?;
        if self.grid.shapes == Shapes::Zip && !knobs.is_empty() {
            return Err(inv(
                "grid.shapes",
                "zip".into(),
                "a transfer sweep (knob axes) runs over the product of its shapes: leave grid.shapes at \"product\"",
            ));
        }
        match (&self.reference, knobs.is_empty()) {
            (ReferenceSpec::None, true) => {
                return Err(inv(
                    "reference",
                    "none".into(),
                    "a sweep without a reference is a transfer sweep: give [grid] a knob axis (lr, alpha or a parametrization scalar such as \"U.lr.c\")",
                ));
            }
            (ReferenceSpec::None, false) | (_, true) => {}
            (_, false) => {
                return Err(inv(
                    "reference",
                    format!("{:?}", self.reference).to_lowercase(),
                    &format!(
                        "a grid over knobs ({}) is a transfer sweep: use [reference] kind = \"none\" (errors against a reference per knob value are not supported)",
                        knobs.names.join(", ")
                    ),
                ));
            }
        }
        // Every knob point must give a valid table and learning rate.
        for i in 0..knobs.points() {
            let (p, lr) = knobs.apply(i, &param, self.lr);
            let at = || {
                knobs
                    .names
                    .iter()
                    .zip(knobs.point(i))
                    .map(|(n, v)| format!("{n} = {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            if !(lr.is_finite() && lr >= 0.0) {
                return Err(inv(
                    "grid.lr",
                    lr.to_string(),
                    "must be finite and non-negative",
                ));
            }
            p.check().map_err(|e| inv("grid", at(), &e.to_string()))?;
        }
        let reference = match self.reference {
            ReferenceSpec::None => (0, 0, 0),
            // A ladder's largest network: the shape of the largest L M D (the last of
            // equals); the product grid's (max L, max M, max D).
            ReferenceSpec::Largest if self.grid.shapes == Shapes::Zip => *shapes
                .iter()
                .rev()
                .max_by(|a, b| {
                    let p = |s: &(usize, usize, usize)| s.0 as f64 * s.1 as f64 * s.2 as f64;
                    p(a).total_cmp(&p(b))
                })
                .expect("a checked ladder has a shape"),
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
        let knob_names: Vec<&str> = knobs.names.iter().map(String::as_str).collect();
        self.report.resolve(&read_steps, &ms, &ds, &knob_names)?;
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
                let solver = if activation == Activation::Linear {
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
                    if let Some(ns) = num_s.filter(|ns| *ns > 100_000) {
                        return Err(inv(
                            "reference.num_s",
                            ns.to_string(),
                            "must be at most 100000",
                        ));
                    }
                    let settings = crate::vslimit::SolverSettings { rtol, atol, num_s };
                    let lp = crate::vslimit::limit_params(
                        &param, activation, dd, self.steps, self.lr, settings,
                    )?;
                    let need = crate::limit::multi::exact_bytes(lp.num_s, self.steps, dd.2)
                        .map_err(|e| inv("reference", "limit".into(), &e.to_string()))?;
                    let avail = memory::available()
                        .map_err(|e| inv("reference", "limit".into(), &e.to_string()))?;
                    avail
                        .check(
                            need,
                            &format!(
                                "the exact limit with 'steps' = {}, 'data.N' = {}, 'reference.num_s' = {}",
                                self.steps, dd.2, lp.num_s
                            ),
                        )
                        .map_err(|e| inv("reference.num_s", lp.num_s.to_string(), &e.to_string()))?;
                    LimitSolver::Exact(lp)
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
                        num_s: Some(num_s.unwrap_or(crate::limit::nonlinear::DEFAULT_NUM_S)),
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
                    LimitSolver::MonteCarlo {
                        params: lp,
                        activation,
                        mc,
                    }
                };
                // Everything the solver would refuse is refused now, naming the field,
                // without solving (the solve waits for the first task or the report).
                let xs = crate::vslimit::columns(&data.x, data.din, data.n);
                let ys = crate::vslimit::columns(&data.y, data.dout, data.n);
                let checked = match &solver {
                    LimitSolver::Exact(lp) => lp.validate(),
                    LimitSolver::MonteCarlo { params, mc, .. } => {
                        crate::limit::nonlinear::check_inputs(&xs, &ys, params, mc).map(|_| ())
                    }
                };
                checked.map_err(|e| inv("reference", "limit".into(), &e.to_string()))?;
                Some(LimitPlan::new(solver))
            }
            _ => None,
        };
        if self.backend != super::spec::Backend::Auto && self.backend != super::spec::Backend::Dense
        {
            if matches!(self.reference, ReferenceSpec::Limit { .. })
                && self.backend == super::spec::Backend::Lowrank
            {
                return Err(inv(
                    "backend",
                    "lowrank".into(),
                    "against the limit a task runs the dense step or the regenerated one (both record every layer): use \"auto\", \"dense\" or \"regenerated\"",
                ));
            }
            if !knobs.is_empty() && self.couplings.len() > 1 {
                return Err(inv(
                    "backend",
                    format!("{:?}", self.backend).to_lowercase(),
                    "the low-rank steps train the coupling variants together, and a transfer sweep records each one's divergence: use one coupling, or \"auto\" / \"dense\"",
                ));
            }
        }
        let memory_budget = memory::available()
            .map_err(|e| inv("RESLIM_MEMORY_LIMIT", "?".into(), &e.to_string()))?
            .scaled(super::MEMORY_FRACTION)
            .bytes;
        Ok(Sweep {
            memory_budget,
            spec: self,
            param,
            activation,
            ls,
            ms,
            ds,
            shapes,
            reference,
            read_steps,
            knobs,
            limit,
        })
    }
}

pub use super::spec::MAX_TASKS;

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

/// The shapes of a `shapes = "zip"` grid: (L[i], M[i], D[i]) in the order written, an
/// axis of one value going with every shape; the axes must otherwise have one length.
/// A repeated shape is kept once.
fn zip_shapes(g: &super::spec::GridSpec) -> Result<Vec<(usize, usize, usize)>, SpecError> {
    let axes = [
        ("grid.L", g.l.written("grid.L")?),
        ("grid.M", g.m.written("grid.M")?),
        ("grid.D", g.d.written("grid.D")?),
    ];
    let n = axes.iter().map(|a| a.1.len()).max().unwrap_or(0);
    if let Some((field, v)) = axes.iter().find(|a| a.1.len() != 1 && a.1.len() != n) {
        let lens: Vec<String> = axes
            .iter()
            .map(|(f, v)| format!("{f}: {}", v.len()))
            .collect();
        return Err(inv_data(
            field,
            format!("{} values", v.len()),
            &format!(
                "with grid.shapes = \"zip\" the axes go together value by value: give them one length, or one value ({})",
                lens.join(", ")
            ),
        ));
    }
    if n > MAX_TASKS {
        return Err(inv_data(
            "grid.shapes",
            n,
            &format!("a ladder may hold at most {MAX_TASKS} shapes"),
        ));
    }
    let at = |v: &Vec<usize>, i: usize| if v.len() == 1 { v[0] } else { v[i] };
    let mut out: Vec<(usize, usize, usize)> = Vec::with_capacity(n);
    for i in 0..n {
        let s = (at(&axes[0].1, i), at(&axes[1].1, i), at(&axes[2].1, i));
        if !out.contains(&s) {
            out.push(s);
        }
    }
    Ok(out)
}

/// Refuses a plan of more than [`MAX_TASKS`] tasks, before it is built.
fn plan_size(
    reps: usize,
    grid: &super::spec::GridSpec,
    ls: &[usize],
    ms: &[usize],
    ds: &[usize],
    knobs: impl Iterator<Item = usize>,
) -> Result<(), SpecError> {
    // In floating point: the count itself may not fit `usize`.
    let points: f64 = knobs.map(|n| n as f64).product();
    let shapes = match grid.shapes {
        Shapes::Product => ls.len() as f64 * ms.len() as f64 * ds.len() as f64,
        // Checked by `zip_shapes` (at most MAX_TASKS).
        Shapes::Zip => ls.len().max(ms.len()).max(ds.len()) as f64,
    };
    let tasks = reps as f64 * shapes * points;
    if tasks > MAX_TASKS as f64 {
        return Err(inv_data(
            "reps",
            reps,
            &format!(
                "the plan would hold 'reps' x L values x M values x D values x knob points = {reps} x {} x {} x {} x {points} = {tasks:.3e} tasks, more than {MAX_TASKS}",
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
    /// The knob point of a transfer sweep's task (index into [`KnobGrid::point`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub knob: Option<usize>,
}

impl Task {
    /// The task's name (its directory): `r{rep}-L{L}-M{M}-D{D}`, then `-k{point}` in a
    /// transfer sweep.
    pub fn id(&self) -> String {
        match self.knob {
            Some(k) => format!("{}-k{k}", self.shape_id()),
            None => self.shape_id(),
        }
    }

    /// The repetition and shape part of [`Task::id`], from which the task's seeds
    /// derive: every knob point of a shape starts from the same weights (common random
    /// numbers, so that the loss curves over a knob are smooth).
    pub fn shape_id(&self) -> String {
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
            for &(l, m, d) in &self.shapes {
                let is_ref = (l, m, d) == (rl, rm, rd);
                in_grid |= is_ref;
                if self.knobs.is_empty() {
                    tasks.push(Task {
                        rep,
                        l,
                        m,
                        d,
                        is_reference: is_ref,
                        knob: None,
                    });
                }
                for k in 0..if self.knobs.is_empty() {
                    0
                } else {
                    self.knobs.points()
                } {
                    tasks.push(Task {
                        rep,
                        l,
                        m,
                        d,
                        is_reference: false,
                        knob: Some(k),
                    });
                }
            }
            if !in_grid && !self.against_limit() && !self.is_transfer() {
                tasks.push(Task {
                    rep,
                    l: rl,
                    m: rm,
                    d: rd,
                    is_reference: true,
                    knob: None,
                });
            }
        }
        tasks
    }

    pub(crate) fn dims(&self, t: &Task) -> Dims {
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

    /// Seeds of a task: (block weights, uncoupled embeddings), from the task's
    /// [`Task::shape_id`] (every knob point of a shape shares them).
    pub fn task_seeds(&self, t: &Task) -> (u64, u64) {
        let h = fnv1a(t.shape_id().as_bytes());
        (
            derive_seed(self.spec.seed, h),
            derive_seed(self.spec.seed, h ^ 0x55_4E_43),
        )
    }

    /// Couplings a task trains: the reference only needs its coupled run unless it is
    /// also a grid point.
    pub(crate) fn couplings_of(&self, t: &Task) -> Vec<Coupling> {
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
    /// learning rate (the table and rate with the task's knob values set, in a transfer
    /// sweep), the sweep seed (every task seed derives from it and the task id), the
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
        let (param, lr) = self.task_param(t);
        let mut inputs = serde_json::json!({
            "format": crate::provenance::FORMAT,
            "task": t,
            "couplings": self.couplings_of(t),
            "dtype": self.spec.dtype,
            "param": param,
            "activation": self.activation.name(),
            "data": data,
            "steps": self.spec.steps,
            "lr": lr,
            "seed": self.spec.seed,
            "read_steps": self.read_steps,
            "reference": reference,
        });
        // An explicit engine changes the results by rounding: part of the provenance
        // (left out for "auto", as before the option existed).
        if !self.spec.backend.is_auto()
            && let Some(o) = inputs.as_object_mut()
        {
            o.insert(
                "backend".into(),
                serde_json::to_value(self.spec.backend).expect("serialises"),
            );
        }
        inputs
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
