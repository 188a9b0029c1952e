//! Finite networks against the linear large-D limit (PAPERS.md §2.3–2.5).
//!
//! - [`limit_params`]: which finite networks the limit of [`crate::limit`] describes (the
//!   `chizat-python` family with linear blocks, PAPERS.md §2.2 "Python" column) and the
//!   [`LinearLimitParams`] of one of them. The effective rates are `c = η/α` (module
//!   documentation of [`crate::limit`]).
//! - [`LimitReference`]: the solved limit of one data set (`N = 1`: [`solve_linear_limit`];
//!   `N > 1`: [`solve_linear_limit_multi`]) with its per-coordinate basis
//!   ([`CoordinateBasis`]).
//! - [`LimitReference::step_errors`]: the Python errors of PAPERS.md §2.4, from a training
//!   [`History`] that recorded every layer at the read steps (`TrainOptions::layer_steps`):
//!   - embedding space: `max_l mean_{d,n} |h_{d,n}(l) − H_{d,(k,n)}(l/L)|`, where `H_d` is the
//!     limit trajectory of coordinate `d` driven by that coordinate's own rows of `W_E`,
//!     `W_U` (the finite network's actual rows), interpolated linearly from the depth grid
//!     onto the `L + 1` depths `l/L`; also its mean over depth and the RMS at the last
//!     layer `√(mean_{d,n} (h_{d,n}(L) − H_{d,(k,n)}(1))²)`;
//!   - output space: `√(mean_{o,n} (f_{o,n} − f^lim_{k,o,n})²)`.
//! - [`backward_states`]: `∂loss/∂h_l` at every layer of a finite network (a plain
//!   backward pass that updates nothing), for the `D·b` coordinate plots.
//! - [`coordinates`]: the coordinate plots of PAPERS.md §2.5, E3 (trajectories against
//!   depth beside their limit curves; histograms against `N(0, Γ_kk(s))`).
//!
//! With `N > 1` the finite loss is `(1/N) Σ_n ½|f_n − y_n|²` and the per-sample backward
//! state is `B_{k,n} = D ∂(½|f_{k,n} − y_n|²)/∂h_{k,n}` (module documentation of
//! [`crate::limit::multi`]); for the engine's loss `c Σ (f − y)²` that is
//! `B = D g / (2c)` with `g = ∂loss/∂h`.

use crate::io;
use crate::kernels::Par;
use crate::limit::nonlinear::McReport;
use crate::limit::{
    CoordinateBasis, CoordinateTrajectories, DepthGrid, DepthSeries, LimitError, LinearLimit,
    LinearLimitMulti, LinearLimitParams, MonteCarlo, NonlinearLimit, solve_linear_limit,
    solve_linear_limit_multi, solve_nonlinear_limit,
};
use crate::model::{Activation, Data, Real, Weights};
use crate::param::{Dims, Parametrization, Resolved, Scale};
use crate::plot::{self, Figure, Series, Style};
use crate::spec::SpecError;
use crate::train::{self, History, TrainOptions, Workspace};
use serde::Serialize;
use std::path::{Path, PathBuf};

fn invalid(field: &str, value: impl ToString, why: impl Into<String>) -> SpecError {
    SpecError::Invalid {
        field: field.into(),
        value: value.to_string(),
        why: why.into(),
    }
}

/// Solver settings of the limit; `None` keeps the [`LinearLimitParams`] default
/// (`rtol = 1e-5`, `atol = 1e-7`, `num_s = 100`, the authors' settings).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SolverSettings {
    pub rtol: Option<f64>,
    pub atol: Option<f64>,
    pub num_s: Option<usize>,
}

/// The constant of `s` at the data's `d_in`, `d_out`, `N` and the branch scale, after
/// checking that its `L, M, D` exponents are `(l, m, d)`.
fn family_const(
    field: &str,
    s: &Scale,
    (l, m, d): (f64, f64, f64),
    data: (usize, usize, usize),
    alpha: f64,
) -> Result<f64, SpecError> {
    if s.l != l || s.m != m || s.d != d {
        return Err(invalid(
            field,
            s,
            format!(
                "the limit needs the chizat-python scaling (exponents L^{l} M^{m} D^{d}); \
                 constants may differ"
            ),
        ));
    }
    let at = Dims {
        l: 1,
        m: 1,
        d: 1,
        din: data.0,
        dout: data.1,
        n: data.2,
    };
    Ok(s.eval(&at, alpha))
}

/// The parameters of the linear large-D limit that describes finite networks of
/// parametrization `param` trained with global rate `eta` for `k_steps` forward passes on
/// data of dimensions `(d_in, d_out, N)`.
///
/// The finite networks must be in the `chizat-python` family (PAPERS.md §2.2, Python
/// column; `lazy` is in it, and so is `chizat-julia` with linear blocks: its table has the
/// same `L, M, D` scalings and other constants): linear activation; `W_E`, `W_U` frozen with `L, M, D`-free init
/// stds (`σ_we`, `σ_wu`); `U`, `V` with init `σ D^{1/2}`; multipliers exactly `1` (`W_E`),
/// `1/D` (`U`, `W_U`) and `α/(LM)` (`V`); learning rates `∝ L M D`; an `L, M, D`-free loss
/// constant `c`. Then `η_{u,v} = η · lr_{u,v} · α² · 2cN` (the raw-weight rate is
/// `η_u L M D/α²` for the loss `(1/N) Σ ½|f − y|²`). Every error names the spec field.
pub fn limit_params(
    param: &Parametrization,
    activation: Activation,
    data: (usize, usize, usize),
    k_steps: usize,
    eta: f64,
    solver: SolverSettings,
) -> Result<LinearLimitParams, SpecError> {
    if activation != Activation::Linear {
        return Err(invalid(
            "activation",
            activation.name(),
            "a limit reference of a sweep needs activation = \"linear\" (the sweeps compare with the linear ODE limit; `reslim limit` solves the nonlinear one)",
        ));
    }
    frame_params(param, data, k_steps, eta, solver)
}

/// The parameters of the large-D limit, for any activation, of finite networks of
/// parametrization `param` (the scalings of [`limit_params`], which this checks; the
/// activation is not looked at): those of [`crate::limit::solve_linear_limit_multi`] and
/// [`crate::limit::solve_nonlinear_limit`]. Every error names the spec field.
pub fn frame_params(
    param: &Parametrization,
    data: (usize, usize, usize),
    k_steps: usize,
    eta: f64,
    solver: SolverSettings,
) -> Result<LinearLimitParams, SpecError> {
    let a = param.alpha;
    if !(a.is_finite() && a > 0.0) {
        return Err(invalid("param.alpha", a, "the limit needs alpha > 0"));
    }
    for (field, trained) in [
        ("param.W_E.trained", param.we.trained),
        ("param.W_U.trained", param.wu.trained),
    ] {
        if trained {
            return Err(invalid(field, trained, "the limit has frozen embeddings"));
        }
    }
    let c = |field: &str, s: &Scale, e: (f64, f64, f64)| family_const(field, s, e, data, a);
    let one = |field: &str, v: f64| -> Result<(), SpecError> {
        if (v - 1.0).abs() > 1e-12 {
            return Err(invalid(
                field,
                v,
                "the limit needs the chizat-python multiplier (constant 1)",
            ));
        }
        Ok(())
    };
    let sigma_we = c("param.W_E.init", &param.we.init, (0.0, 0.0, 0.0))?;
    let sigma_wu = c("param.W_U.init", &param.wu.init, (0.0, 0.0, 0.0))?;
    let sigma_u = c("param.U.init", &param.u.init, (0.0, 0.0, 0.5))?;
    let sigma_v = c("param.V.init", &param.v.init, (0.0, 0.0, 0.5))?;
    one(
        "param.W_E.mult",
        c("param.W_E.mult", &param.we.mult, (0.0, 0.0, 0.0))?,
    )?;
    one(
        "param.W_U.mult",
        c("param.W_U.mult", &param.wu.mult, (0.0, 0.0, -1.0))?,
    )?;
    one(
        "param.U.mult",
        c("param.U.mult", &param.u.mult, (0.0, 0.0, -1.0))?,
    )?;
    one(
        "param.V.mult",
        c("param.V.mult", &param.v.mult, (-1.0, -1.0, 0.0))?,
    )?;
    let loss = c("param.loss", &param.loss, (0.0, 0.0, 0.0))?;
    if !(loss.is_finite() && loss > 0.0) {
        return Err(invalid("param.loss", loss, "must be positive"));
    }
    let rate = |field: &str, rp: &crate::param::RoleParams| -> Result<f64, SpecError> {
        if !rp.trained {
            return Ok(0.0);
        }
        Ok(c(field, &rp.lr, (1.0, 1.0, 1.0))? * a * a * 2.0 * loss * data.2 as f64 * eta)
    };
    let d = LinearLimitParams::default();
    let p = LinearLimitParams {
        k_steps,
        alpha: a,
        eta_u: rate("param.U.lr", &param.u)?,
        eta_v: rate("param.V.lr", &param.v)?,
        sigma_u,
        sigma_v,
        sigma_we,
        sigma_wu,
        rtol: solver.rtol.unwrap_or(d.rtol),
        atol: solver.atol.unwrap_or(d.atol),
        num_s: solver.num_s.unwrap_or(d.num_s),
    };
    p.validate().map_err(|e| match e {
        LimitError::InvalidParameter {
            field,
            value,
            reason,
        } => {
            let f = match field {
                "rtol" | "atol" | "num_s" => format!("reference.{field}"),
                "k_steps" => "steps".into(),
                other => format!("param (limit {other})"),
            };
            invalid(&f, value, reason)
        }
        other => invalid("reference", "limit", other.to_string()),
    })?;
    Ok(p)
}

/// The solved limit: linear with one input or several, or nonlinear (Monte Carlo).
#[derive(Debug, Clone)]
pub enum Solved {
    One(Box<LinearLimit>),
    Many(Box<LinearLimitMulti>),
    Nonlinear(Box<NonlinearLimit>),
}

/// The linear large-D limit of one data set, ready to be compared with finite networks.
#[derive(Debug, Clone)]
pub struct LimitReference {
    pub params: LinearLimitParams,
    /// Number of samples `N`.
    pub n: usize,
    pub d_in: usize,
    pub d_out: usize,
    /// Limit outputs `f_k`, `K × d_out × N` (the layout of `History::outputs`).
    pub outputs: Vec<f64>,
    /// Limit losses `(1/N) Σ_n ½|f_{k,n} − y_n|²`.
    pub losses: Vec<f64>,
    pub solved: Solved,
    /// The activation of the blocks the limit describes (finite networks compared with it
    /// are trained with it).
    pub activation: Activation,
    /// The per-coordinate basis of a linear limit (combined index `a = k·N + n`); `None`
    /// for a nonlinear one, whose coordinates are read from its frame vectors.
    pub basis: Option<CoordinateBasis>,
}

/// The columns of `x` (`d × n`, row-major, the layout of [`Data`]) as vectors: the
/// samples, as the limit solvers take them.
pub fn columns(v: &[f64], d: usize, n: usize) -> Vec<Vec<f64>> {
    (0..n)
        .map(|s| (0..d).map(|i| v[i * n + s]).collect())
        .collect()
}

impl LimitReference {
    /// Solves the limit for the data `(x, y)` (`N = 1`: the reference-checked solver;
    /// `N > 1`: the multi-input extension).
    pub fn solve(data: &Data, params: &LinearLimitParams) -> Result<Self, LimitError> {
        let (di, d_o, n) = (data.din, data.dout, data.n);
        let xs = columns(&data.x, di, n);
        let ys = columns(&data.y, d_o, n);
        let kk = params.k_steps;
        let mut outputs = vec![0.0; kk * d_o * n];
        let (solved, basis, losses) = if n == 1 {
            let lim = solve_linear_limit(&xs[0], &ys[0], params)?;
            for k in 0..kk {
                outputs[k * d_o..(k + 1) * d_o].copy_from_slice(&lim.f[k]);
            }
            let basis = CoordinateBasis::new(&lim)?;
            let losses = lim.loss.clone();
            (Solved::One(Box::new(lim)), Some(basis), losses)
        } else {
            let lim = solve_linear_limit_multi(&xs, &ys, params)?;
            for k in 0..kk {
                for s in 0..n {
                    for o in 0..d_o {
                        outputs[(k * d_o + o) * n + s] = lim.f[k][s][o];
                    }
                }
            }
            let basis = CoordinateBasis::from_multi(&lim)?;
            let losses = lim.loss.clone();
            (Solved::Many(Box::new(lim)), Some(basis), losses)
        };
        Ok(LimitReference {
            params: params.clone(),
            n,
            d_in: di,
            d_out: d_o,
            outputs,
            losses,
            solved,
            activation: Activation::Linear,
            basis,
        })
    }

    /// The Monte-Carlo limit of activation `act` for the data `(x, y)`
    /// ([`crate::limit::solve_nonlinear_limit`]), ready for the same comparisons.
    pub fn solve_nonlinear(
        data: &Data,
        params: &LinearLimitParams,
        act: Activation,
        mc: &MonteCarlo,
    ) -> Result<Self, LimitError> {
        let (di, d_o, n) = (data.din, data.dout, data.n);
        let xs = columns(&data.x, di, n);
        let ys = columns(&data.y, d_o, n);
        let lim = solve_nonlinear_limit(&xs, &ys, params, act, mc)?;
        let kk = params.k_steps;
        let mut outputs = vec![0.0; kk * d_o * n];
        for k in 0..kk {
            for s in 0..n {
                for o in 0..d_o {
                    outputs[(k * d_o + o) * n + s] = lim.f[k][s][o];
                }
            }
        }
        Ok(LimitReference {
            params: params.clone(),
            n,
            d_in: di,
            d_out: d_o,
            outputs,
            losses: lim.loss.clone(),
            solved: Solved::Nonlinear(Box::new(lim)),
            activation: act,
            basis: None,
        })
    }

    /// The Monte-Carlo report of a nonlinear limit (`None` for a linear one).
    pub fn monte_carlo(&self) -> Option<&McReport> {
        match &self.solved {
            Solved::Nonlinear(l) => Some(&l.report),
            _ => None,
        }
    }

    /// The depth grid of the solution.
    pub fn grid(&self) -> &DepthGrid {
        match &self.solved {
            Solved::One(l) => &l.grid,
            Solved::Many(l) => &l.grid,
            Solved::Nonlinear(l) => &l.grid,
        }
    }

    /// `Γᴴ_{ab}(s)` (combined indices `a = k·N + n`).
    pub fn gamma_h(&self) -> &DepthSeries {
        match &self.solved {
            Solved::One(l) => &l.gamma_h,
            Solved::Many(l) => &l.gamma_h,
            Solved::Nonlinear(l) => &l.gamma_h,
        }
    }

    /// `Γᴮ_{ab}(s)`.
    pub fn gamma_b(&self) -> &DepthSeries {
        match &self.solved {
            Solved::One(l) => &l.gamma_b,
            Solved::Many(l) => &l.gamma_b,
            Solved::Nonlinear(l) => &l.gamma_b,
        }
    }

    /// The limit outputs of pass `k` (`d_out × N`).
    pub fn output(&self, k: usize) -> &[f64] {
        let w = self.d_out * self.n;
        &self.outputs[k * w..(k + 1) * w]
    }

    /// The coupled limit trajectories of coordinates with rows `we` (`D × d_in`, the
    /// finite network's `W_E`) and `wu` (`D × d_out`).
    pub fn trajectories(
        &self,
        we: &[f64],
        wu: &[f64],
    ) -> Result<CoordinateTrajectories, LimitError> {
        match (&self.solved, &self.basis) {
            (Solved::Nonlinear(l), _) => l.trajectories(we, wu),
            (_, Some(b)) => b.trajectories(we, wu),
            (_, None) => Err(LimitError::invalid(
                "basis",
                "none",
                "a linear limit reference without its coordinate basis",
            )),
        }
    }

    /// `value(s)` of a tabulated trajectory, by linear interpolation on the depth grid
    /// (`at(i)` is the value at grid point `i`).
    pub fn interpolate(&self, s: f64, at: impl Fn(usize) -> f64) -> f64 {
        let (i, t) = self.grid().locate(s);
        let lo = at(i);
        lo + t * (at(i + 1) - lo)
    }

    /// The errors of PAPERS.md §2.4 ("Python errors") of a finite network of shape `dims`
    /// with embedding rows `we`, `wu`, at each of `steps`; `hist` must hold every layer at
    /// those steps (`TrainOptions::layer_steps`).
    pub fn step_errors(
        &self,
        dims: &Dims,
        we: &[f64],
        wu: &[f64],
        hist: &History,
        steps: &[usize],
    ) -> Result<Vec<StepErrors>, LimitError> {
        self.check_dims(dims)?;
        let traj = self.trajectories(we, wu)?;
        let per = (dims.l + 1) * dims.d * dims.n;
        let w = dims.dout * dims.n;
        let mut out = Vec::with_capacity(steps.len());
        for &k in steps {
            let Some(j) = hist.layer_steps.iter().position(|&s| s == k) else {
                return Err(LimitError::invalid(
                    "step",
                    k,
                    "the training history did not record every layer at this step",
                ));
            };
            out.push(self.errors_at(
                dims,
                &traj,
                k,
                &hist.layers[j * per..(j + 1) * per],
                &hist.outputs[k * w..(k + 1) * w],
                hist.losses[k],
            )?);
        }
        Ok(out)
    }

    fn check_dims(&self, dims: &Dims) -> Result<(), LimitError> {
        if dims.n != self.n || dims.dout != self.d_out || dims.din != self.d_in {
            return Err(LimitError::invalid(
                "dims",
                format!("d_in={} d_out={} N={}", dims.din, dims.dout, dims.n),
                "the network and the limit have different data dimensions",
            ));
        }
        Ok(())
    }

    /// The errors at pass `k` from the layers `(L+1) × D × N`, outputs `d_out × N` and loss
    /// of the finite network at that pass, with the coupled trajectories `traj`.
    fn errors_at(
        &self,
        dims: &Dims,
        traj: &CoordinateTrajectories,
        k: usize,
        layers: &[f64],
        f: &[f64],
        loss: f64,
    ) -> Result<StepErrors, LimitError> {
        let (l_n, d, n) = (dims.l, dims.d, dims.n);
        if k >= self.params.k_steps {
            return Err(LimitError::invalid(
                "step",
                k,
                "beyond the passes the limit was solved for",
            ));
        }
        let (mut mad_max, mut mad_sum, mut rms_last) = (0.0f64, 0.0, 0.0);
        for l in 0..=l_n {
            let s = if l_n == 0 { 0.0 } else { l as f64 / l_n as f64 };
            let (i, t) = self.grid().locate(s);
            let h = &layers[l * d * n..(l + 1) * d * n];
            let (mut abs, mut sq) = (0.0, 0.0);
            for r in 0..d {
                for sm in 0..n {
                    let a = k * n + sm;
                    let lo = traj.h(r, i, a);
                    let lim = lo + t * (traj.h(r, i + 1, a) - lo);
                    let e = h[r * n + sm] - lim;
                    abs += e.abs();
                    sq += e * e;
                }
            }
            let mad = abs / (d * n) as f64;
            mad_max = mad_max.max(mad);
            mad_sum += mad;
            if l == l_n {
                rms_last = (sq / (d * n) as f64).sqrt();
            }
        }
        let y_rms = (f
            .iter()
            .zip(self.output(k))
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f64>()
            / f.len() as f64)
            .sqrt();
        Ok(StepErrors {
            step: k,
            h_mad_max: mad_max,
            h_mad_mean: mad_sum / (l_n + 1) as f64,
            h_rms_last: rms_last,
            y_rms,
            loss,
            loss_limit: self.losses[k],
        })
    }

    /// Trains `w` (the limit's activation, parametrization resolved as `r`) for `steps` GD steps at
    /// rate `eta` and measures its errors to the limit at each of `read_steps`.
    ///
    /// The run goes in segments that end at the read steps (GD has no state besides the
    /// weights, so this is the same run), so a run that diverges later keeps its errors at
    /// the earlier read steps, as in the paper (PAPERS.md 2.5, E2: `k = 5` is read from runs
    /// whose later steps blow up). Divergence is data: the read steps at or after it get
    /// NaN errors and `diverged_at` says where it happened.
    pub fn train_against<T: crate::model::Real>(
        &self,
        w: &mut Weights<T>,
        data: &Data,
        r: &Resolved,
        eta: f64,
        steps: usize,
        read_steps: &[usize],
    ) -> crate::Result<AgainstLimit> {
        let dims = w.dims;
        self.check_dims(&dims)?;
        let f64s = |v: &[T]| v.iter().map(|x| x.to()).collect::<Vec<f64>>();
        let traj = self.trajectories(&f64s(&w.we), &f64s(&w.wu))?;
        let mut reads: Vec<usize> = read_steps.to_vec();
        reads.sort_unstable();
        reads.dedup();
        let mut out = AgainstLimit::default();
        let mut done = 0;
        // Segment ends: every read step (recording its layers), then the last step.
        let mut ends: Vec<(usize, bool)> = reads.iter().map(|&k| (k + 1, true)).collect();
        if steps > ends.last().map_or(0, |e| e.0) {
            ends.push((steps, false));
        }
        for (end, read) in ends {
            let opts = TrainOptions {
                steps: end - done,
                eta,
                activation: self.activation,
                record_hidden: false,
                hidden_steps: None,
                layer_stats: false,
                layer_steps: if read { vec![end - 1 - done] } else { vec![] },
                layout: Default::default(),
                // Divergence against the limit is data, judged by the errors (sweep::DIVERGED_ERROR);
                // only a non-finite value stops the run.
                max_loss_growth: f64::INFINITY,
            };
            match train::train(w, data, r, &opts, Par::Seq, &mut |_, _| {}) {
                Ok(h) => {
                    out.losses.extend_from_slice(&h.losses);
                    if read {
                        let k = end - 1;
                        let wd = dims.dout * dims.n;
                        let last = h.losses.len() - 1;
                        out.errors.push(self.errors_at(
                            &dims,
                            &traj,
                            k,
                            &h.layers,
                            &h.outputs[last * wd..(last + 1) * wd],
                            h.losses[last],
                        )?);
                    }
                }
                Err(e) => match e.diverged_at() {
                    Some(step) => {
                        out.diverged_at = Some(done + step);
                        break;
                    }
                    None => return Err(e.into()),
                },
            }
            done = end;
        }
        for &k in reads.iter().filter(|&&k| k >= done) {
            out.errors.push(StepErrors {
                step: k,
                h_mad_max: f64::NAN,
                h_mad_mean: f64::NAN,
                h_rms_last: f64::NAN,
                y_rms: f64::NAN,
                loss: f64::NAN,
                loss_limit: self.losses[k],
            });
        }
        Ok(out)
    }
}

/// What [`LimitReference::train_against`] measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgainstLimit {
    /// The losses of the steps done (all `K` unless the run diverged).
    pub losses: Vec<f64>,
    /// The errors at the read steps (NaN at and after a divergence).
    pub errors: Vec<StepErrors>,
    /// The step at which the run diverged, if it did.
    pub diverged_at: Option<usize>,
}

/// A number that JSON writes as `null` when it is NaN (serde_json's convention) read back.
fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    use serde::Deserialize;
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// The distance of one finite network to the limit at one step (PAPERS.md §2.4, Python).
/// NaN (written `null` in JSON) where the run diverged before the step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
pub struct StepErrors {
    /// Record `k` (the network after `k` updates).
    pub step: usize,
    /// `max_l mean_{d,n} |h(l) − H(l/L)|` (the paper's embedding error).
    #[serde(deserialize_with = "nan_if_null")]
    pub h_mad_max: f64,
    /// `mean_l mean_{d,n} |h(l) − H(l/L)|`.
    #[serde(deserialize_with = "nan_if_null")]
    pub h_mad_mean: f64,
    /// `√(mean_{d,n} (h(L) − H(1))²)`.
    #[serde(deserialize_with = "nan_if_null")]
    pub h_rms_last: f64,
    /// `√(mean_{o,n} (f − f^lim)²)` (the paper's output error).
    #[serde(deserialize_with = "nan_if_null")]
    pub y_rms: f64,
    /// The finite network's loss and the limit's.
    #[serde(deserialize_with = "nan_if_null")]
    pub loss: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub loss_limit: f64,
}

/// `∂loss/∂h_l` of every layer `l = 0..=L` (`(L+1) × D × N`, coordinate-major like
/// `History::hidden`), for the network whose forward pass `ws` holds (after
/// [`train::forward`] on `w`). A plain backward pass in `f64`; nothing is updated. With
/// `g_L = m_W W_U ∂loss/∂f`, `q = m_V V_lᵀ g_{l+1}`, `G = σ'(p_l) q`,
/// `g_l = g_{l+1} + m_U U_l G` (the recursion of [`crate::train`]).
pub fn backward_states<T: Real>(
    w: &Weights<T>,
    data: &Data,
    r: &Resolved,
    act: Activation,
    ws: &Workspace<T>,
) -> Vec<f64> {
    let dims = w.dims;
    let (l_n, m, d, n, d_o) = (dims.l, dims.m, dims.d, data.n, dims.dout);
    let mut out = vec![0.0; (l_n + 1) * d * n];
    let mut g = vec![0.0; n * d];
    for s in 0..n {
        for dd in 0..d {
            let mut acc = 0.0;
            for o in 0..d_o {
                let e = ws.f[o * n + s] - data.y[o * n + s];
                acc += w.wu[dd * d_o + o].to() * 2.0 * r.loss * e;
            }
            g[s * d + dd] = r.wu.mult * acc;
        }
    }
    let store = |out: &mut [f64], l: usize, g: &[f64]| {
        for dd in 0..d {
            for s in 0..n {
                out[(l * d + dd) * n + s] = g[s * d + dd];
            }
        }
    };
    store(&mut out, l_n, &g);
    let (mu, mv) = (r.u.mult, r.v.mult);
    let mut gn = vec![0.0; n * d];
    let mut gcoef = vec![0.0; n];
    for l in (0..l_n).rev() {
        let h = ws.hidden(l, n, d);
        gn.copy_from_slice(&g);
        for mm in 0..m {
            let off = (l * m + mm) * d;
            let (urow, vrow) = (&w.ut[off..off + d], &w.vt[off..off + d]);
            for s in 0..n {
                let (hs, gs) = (&h[s * d..(s + 1) * d], &g[s * d..(s + 1) * d]);
                let p: f64 = urow.iter().zip(hs).map(|(u, x)| u.to() * x.to()).sum();
                let q: f64 = vrow.iter().zip(gs).map(|(v, x)| v.to() * x).sum();
                gcoef[s] = mu * act.d1(mu * p) * mv * q;
            }
            for s in 0..n {
                let c = gcoef[s];
                for (o, u) in gn[s * d..(s + 1) * d].iter_mut().zip(urow) {
                    *o += c * u.to();
                }
            }
        }
        std::mem::swap(&mut g, &mut gn);
        store(&mut out, l, &g);
    }
    out
}

/// The coordinate plots of PAPERS.md §2.5, E3: one finite network of the
/// `chizat-python` family beside its limit.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CoordsSpec {
    #[serde(rename = "L")]
    pub l: usize,
    #[serde(rename = "M")]
    pub m: usize,
    #[serde(rename = "D")]
    pub d: usize,
    /// Seed of the block weights `U`, `V`.
    pub seed: u64,
    /// Seed of `W_E`, `W_U`.
    pub embed_seed: u64,
    /// Passes `K` the limit is solved for (at least the largest step plotted + 1).
    pub steps: usize,
    /// Global learning rate `η` (the paper: 0.1).
    pub eta: f64,
    /// Branch scale `α`.
    pub alpha: f64,
    /// The step of the trajectory plots (the paper: 8).
    pub traj_step: usize,
    /// The steps of the histograms (the paper: 0, 4, 8).
    pub hist_steps: Vec<usize>,
    /// Coordinates drawn in the trajectory plots of `h` and of `D·b` (the paper: 10, 9).
    pub n_h: usize,
    pub n_b: usize,
    /// The training input and target (one sample).
    pub x: Vec<f64>,
    pub y: Vec<f64>,
    /// The parametrization preset (the chizat-python family; default `chizat-python`).
    pub preset: String,
    /// The blocks' activation (default linear: the exact limit; any other: the
    /// Monte-Carlo limit of [`crate::limit::nonlinear`] with `mc`).
    pub activation: Activation,
    #[serde(skip)]
    pub solver: SolverSettings,
    /// Monte-Carlo settings of a nonlinear limit.
    #[serde(skip)]
    pub mc: MonteCarlo,
}

/// The input and target of the paper's linear experiments (PAPERS.md §2.5, E2).
pub const PAPER_X: [f64; 3] = [0.4800016366501795, -0.13361224046088563, 0.6258963157042639];
/// See [`PAPER_X`].
pub const PAPER_Y: [f64; 3] = [0.627895235604804, 0.2659797617857747, -0.05539644339098687];

impl Default for CoordsSpec {
    /// The paper's run (E3): `D = M = 1000`, `L = 200`, seed 1, `K = 15`, `η = 0.1`.
    fn default() -> Self {
        CoordsSpec {
            l: 200,
            m: 1000,
            d: 1000,
            seed: 1,
            embed_seed: 1,
            steps: 15,
            eta: 0.1,
            alpha: 1.0,
            traj_step: 8,
            hist_steps: vec![0, 4, 8],
            n_h: 10,
            n_b: 9,
            x: PAPER_X.to_vec(),
            y: PAPER_Y.to_vec(),
            preset: "chizat-python".into(),
            activation: Activation::Linear,
            solver: SolverSettings::default(),
            mc: MonteCarlo::default(),
        }
    }
}

/// One (step, depth) of the coordinate comparison.
#[derive(Debug, Clone, Serialize)]
pub struct CoordStat {
    pub step: usize,
    pub layer: usize,
    /// `mean_d h_d²` and the limit's `Γᴴ_kk(l/L)`.
    pub mean_sq_h: f64,
    pub gamma_h: f64,
    /// `mean_d (D b_d)²` and `Γᴮ_kk(l/L)`.
    pub mean_sq_b: f64,
    pub gamma_b: f64,
    /// `mean_d |h_d − H_d|`, `mean_d |D b_d − B_d|` (coupled trajectories).
    pub mad_h: f64,
    pub mad_b: f64,
}

/// What [`coordinates`] measured and wrote.
#[derive(Debug, Clone, Serialize)]
pub struct CoordsSummary {
    pub spec: CoordsSpec,
    pub stats: Vec<CoordStat>,
    /// `max_l mean_d |h − H|` and `max_l mean_d |D b − B|` at the trajectory step.
    pub traj_mad_h: f64,
    pub traj_mad_b: f64,
    /// Finite and limit outputs at the trajectory step.
    pub f: Vec<f64>,
    pub f_limit: Vec<f64>,
    pub seconds: f64,
    pub files: Vec<PathBuf>,
}

/// Bytes [`coordinates`] needs, estimated before it allocates: the network and its
/// workspace (one sample), h and D b at every layer for each of `snaps` steps, the
/// limit's covariances (two `K x K` matrices at about `num_s` depths, counted twice for
/// the solver's stages) and its trajectories (`num_s` depths x D x K, for h and b).
fn coords_bytes(
    dims: &Dims,
    steps: usize,
    snaps: usize,
    num_s: usize,
) -> Result<usize, crate::memory::MemoryError> {
    use crate::memory::{product, sum};
    let l1 = sum(&[("L", dims.l), ("1", 1)])?;
    let s1 = sum(&[("num_s", num_s), ("1", 1)])?;
    sum(&[
        ("weights", Weights::<f64>::bytes(dims)?),
        ("workspace", crate::train::Workspace::<f64>::bytes(dims)?),
        (
            "snapshots",
            product(&[
                ("2", 2),
                ("snapshots", snaps),
                ("L + 1", l1),
                ("D", dims.d),
                ("8", 8),
            ])?,
        ),
        (
            "limit covariances",
            product(&[
                ("4", 4),
                ("steps", steps),
                ("steps", steps),
                ("num_s + 1", s1),
                ("8", 8),
            ])?,
        ),
        (
            "limit trajectories",
            product(&[
                ("2", 2),
                ("num_s + 1", s1),
                ("D", dims.d),
                ("steps", steps),
                ("8", 8),
            ])?,
        ),
    ])
}

/// Trains one network of the `chizat-python` family (chizat-julia included; one input;
/// linear blocks against the exact limit, any other activation against the Monte-Carlo
/// one), and writes
/// into `out` the coordinate plots of PAPERS.md §2.5, E3, as PNG and SVG:
/// `coord_trajectory_h`, `coord_trajectory_b` (the first `n_h` coordinates of `h_l` and the
/// first `n_b` of `D b_l` against depth `l/L` at `traj_step`, each beside its coupled limit
/// trajectory, dashed), `coord_histogram_h`, `coord_histogram_b` (the coordinates at depths
/// `l ∈ {0, L}` and `hist_steps` against `N(0, Γ_kk(l/L))`), and `coords.json`.
/// `D·b` comes from a backward pass of the network at each step ([`backward_states`]).
pub fn coordinates(spec: &CoordsSpec, out: &Path) -> crate::Result<CoordsSummary> {
    let t0 = std::time::Instant::now();
    for (f, v) in [("L", spec.l), ("M", spec.m), ("D", spec.d)] {
        if v == 0 {
            return Err(invalid(f, 0, "must be positive").into());
        }
    }
    if spec.x.is_empty() || spec.y.is_empty() {
        return Err(invalid("x/y", "[]", "must not be empty").into());
    }
    let mut snaps: Vec<usize> = spec.hist_steps.clone();
    snaps.push(spec.traj_step);
    snaps.sort_unstable();
    snaps.dedup();
    let last = *snaps.last().expect("one step at least");
    let steps = spec.steps.max(last.saturating_add(1));
    let dims = Dims {
        l: spec.l,
        m: spec.m,
        d: spec.d,
        din: spec.x.len(),
        dout: spec.y.len(),
        n: 1,
    };
    let linear = spec.activation == Activation::Linear;
    let num_s = spec
        .solver
        .num_s
        .unwrap_or(if linear { 100 } else { crate::solve::MC_NUM_S });
    let mc_bytes = if linear {
        0
    } else {
        crate::limit::nonlinear::nonlinear_bytes(
            steps,
            1,
            dims.din,
            dims.dout,
            num_s,
            &spec.mc,
            rayon::current_num_threads(),
        )
        .ok_or_else(|| invalid("samples", spec.mc.samples, "the limit's size overflows"))?
    };
    crate::memory::check(
        crate::memory::sum(&[
            (
                "run and limit",
                coords_bytes(&dims, steps, snaps.len(), num_s)?,
            ),
            ("Monte-Carlo limit", mc_bytes),
        ])?,
        &format!(
            "coords with 'L' = {}, 'M' = {}, 'D' = {} for {steps} steps",
            spec.l, spec.m, spec.d
        ),
    )?;
    let mut param = Parametrization::preset(&spec.preset)
        .map_err(|e| invalid("preset", &spec.preset, e.to_string()))?;
    param.alpha = spec.alpha;
    let data = Data {
        din: dims.din,
        dout: dims.dout,
        n: 1,
        x: spec.x.clone(),
        y: spec.y.clone(),
    };
    let act = spec.activation;
    let settings = SolverSettings {
        num_s: Some(num_s),
        ..spec.solver
    };
    let lp = frame_params(&param, (dims.din, dims.dout, 1), steps, spec.eta, settings)?;
    let lim = if linear {
        LimitReference::solve(&data, &lp)?
    } else {
        LimitReference::solve_nonlinear(&data, &lp, act, &spec.mc)?
    };
    let r = param.resolve(&dims);
    let mut w = Weights::<f64>::draw(&dims, &r, spec.embed_seed, spec.seed, true);
    let traj = lim.trajectories(&w.we, &w.wu)?;
    let (l_n, d) = (dims.l, dims.d);
    let b_scale = d as f64 / (2.0 * r.loss);
    // Per snapshot step: h and D b at every layer, (L+1) x D.
    let mut snap_h = Vec::new();
    let mut snap_b = Vec::new();
    let mut f_at = Vec::new();
    let mut done = 0;
    let mut ws = Workspace::new(&w, 1);
    for &k in &snaps {
        if k > done {
            let opts = TrainOptions {
                steps: k - done,
                eta: spec.eta,
                activation: act,
                record_hidden: false,
                hidden_steps: None,
                layer_stats: false,
                layer_steps: Vec::new(),
                layout: Default::default(),
                max_loss_growth: train::DEFAULT_MAX_LOSS_GROWTH,
            };
            train::train(&mut w, &data, &r, &opts, Par::Rayon, &mut |_, _| {})?;
            done = k;
        }
        train::forward(&mut w, &data, &r, act, &mut ws, Par::Rayon, k)?;
        let mut h = vec![0.0; (l_n + 1) * d];
        for l in 0..=l_n {
            h[l * d..(l + 1) * d].copy_from_slice(ws.hidden(l, 1, d));
        }
        let mut b = backward_states(&w, &data, &r, act, &ws);
        b.iter_mut().for_each(|v| *v *= b_scale);
        snap_h.push(h);
        snap_b.push(b);
        f_at.push(ws.f.clone());
    }
    let si = |k: usize| snaps.iter().position(|&s| s == k).expect("snapshot");
    let depth = |l: usize| l as f64 / l_n as f64;
    let lim_h = |r_: usize, k: usize, l: usize| lim.interpolate(depth(l), |i| traj.h(r_, i, k));
    let lim_b = |r_: usize, k: usize, l: usize| lim.interpolate(depth(l), |i| traj.b(r_, i, k));
    let gam = |g: &DepthSeries, k: usize, l: usize| lim.interpolate(depth(l), |i| g.get(i, k, k));
    let mut stats = Vec::new();
    for (j, &k) in snaps.iter().enumerate() {
        for l in [0, l_n] {
            let (h, b) = (
                &snap_h[j][l * d..(l + 1) * d],
                &snap_b[j][l * d..(l + 1) * d],
            );
            let ms = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>() / d as f64;
            stats.push(CoordStat {
                step: k,
                layer: l,
                mean_sq_h: ms(h),
                gamma_h: gam(lim.gamma_h(), k, l),
                mean_sq_b: ms(b),
                gamma_b: gam(lim.gamma_b(), k, l),
                mad_h: (0..d)
                    .map(|r_| (h[r_] - lim_h(r_, k, l)).abs())
                    .sum::<f64>()
                    / d as f64,
                mad_b: (0..d)
                    .map(|r_| (b[r_] - lim_b(r_, k, l)).abs())
                    .sum::<f64>()
                    / d as f64,
            });
        }
    }
    let kt = spec.traj_step;
    let jt = si(kt);
    let mad_over_depth = |snap: &[f64], f: &dyn Fn(usize, usize) -> f64| {
        (0..=l_n)
            .map(|l| {
                (0..d)
                    .map(|r_| (snap[l * d + r_] - f(r_, l)).abs())
                    .sum::<f64>()
                    / d as f64
            })
            .fold(0.0f64, f64::max)
    };
    let traj_mad_h = mad_over_depth(&snap_h[jt], &|r_, l| lim_h(r_, kt, l));
    let traj_mad_b = mad_over_depth(&snap_b[jt], &|r_, l| lim_b(r_, kt, l));
    // Figures.
    let shape = format!("L={}, M={}, D={}", spec.l, spec.m, spec.d);
    let s_grid: Vec<f64> = lim.grid().points().to_vec();
    let depths: Vec<f64> = (0..=l_n).map(depth).collect();
    let mut files = Vec::new();
    for (what, snap, nc, is_h) in [
        ("h", &snap_h[jt], spec.n_h, true),
        ("D b", &snap_b[jt], spec.n_b, false),
    ] {
        let mut fig = Figure::new(
            format!("{what} coordinates at k={kt} ({shape}); dashed: limit"),
            "depth s = l/L",
            what,
            plot::Scale::Linear,
            plot::Scale::Linear,
        );
        for r_ in 0..nc.min(d) {
            let y: Vec<f64> = (0..=l_n).map(|l| snap[l * d + r_]).collect();
            let yl: Vec<f64> = (0..s_grid.len())
                .map(|i| {
                    if is_h {
                        traj.h(r_, i, kt)
                    } else {
                        traj.b(r_, i, kt)
                    }
                })
                .collect();
            let label = if r_ == 0 {
                "finite network (solid)".to_string()
            } else {
                String::new()
            };
            fig.series
                .push(Series::new(label, depths.clone(), y, Style::Line).with_color(r_));
            let label = if r_ == 0 { "limit (dashed)" } else { "" };
            fig.series
                .push(Series::new(label, s_grid.clone(), yl, Style::Dashed).with_color(r_));
        }
        let stem = out.join(if is_h {
            "coord_trajectory_h"
        } else {
            "coord_trajectory_b"
        });
        files.extend(plot::save(&fig, &stem)?);
    }
    for (what, snaps_v, gseries, is_h) in [
        ("h", &snap_h, lim.gamma_h(), true),
        ("D b", &snap_b, lim.gamma_b(), false),
    ] {
        let mut panels = Vec::new();
        for l in [0, l_n] {
            for &k in &spec.hist_steps {
                let j = si(k);
                let v = &snaps_v[j][l * d..(l + 1) * d];
                let var = gam(gseries, k, l);
                panels.push(histogram_panel(
                    format!("{what}, k={k}, l={l} ({shape})"),
                    what,
                    v,
                    var,
                ));
            }
        }
        let stem = out.join(if is_h {
            "coord_histogram_h"
        } else {
            "coord_histogram_b"
        });
        files.extend(plot::save_panels(
            &panels,
            spec.hist_steps.len().max(1),
            &stem,
        )?);
    }
    let summary = CoordsSummary {
        spec: spec.clone(),
        stats,
        traj_mad_h,
        traj_mad_b,
        f: f_at[jt].clone(),
        f_limit: lim.output(kt).to_vec(),
        seconds: t0.elapsed().as_secs_f64(),
        files: files.clone(),
    };
    let json = out.join("coords.json");
    io::atomic_write(
        &json,
        serde_json::to_string_pretty(&summary)
            .expect("summary serialises")
            .as_bytes(),
    )?;
    let mut summary = summary;
    summary.files.push(json);
    Ok(summary)
}

/// A histogram of `v` as bin densities (a line through the bin centres) beside the
/// density of `N(0, var)` (dashed).
fn histogram_panel(title: String, what: &str, v: &[f64], var: f64) -> Figure {
    let n = v.len();
    let sd = var.max(0.0).sqrt();
    let emp = (v.iter().map(|x| x * x).sum::<f64>() / n.max(1) as f64).sqrt();
    let half = 4.0 * sd.max(emp).max(1e-12);
    let bins = ((n as f64).sqrt().round() as usize).clamp(8, 40);
    let width = 2.0 * half / bins as f64;
    let mut counts = vec![0usize; bins];
    for &x in v {
        let b = ((x + half) / width).floor();
        if b >= 0.0 && (b as usize) < bins {
            counts[b as usize] += 1;
        }
    }
    let centres: Vec<f64> = (0..bins)
        .map(|b| -half + (b as f64 + 0.5) * width)
        .collect();
    let dens: Vec<f64> = counts
        .iter()
        .map(|&c| c as f64 / (n as f64 * width))
        .collect();
    let xs: Vec<f64> = (0..=200).map(|i| -half + i as f64 * half / 100.0).collect();
    let gauss: Vec<f64> = xs
        .iter()
        .map(|&x| {
            if sd > 0.0 {
                (-0.5 * x * x / var).exp() / (sd * (2.0 * std::f64::consts::PI).sqrt())
            } else {
                f64::NAN
            }
        })
        .collect();
    let mut fig = Figure::new(
        title,
        what,
        "density",
        plot::Scale::Linear,
        plot::Scale::Linear,
    );
    fig.series.push(
        Series::new(
            format!("finite ({n} coordinates)"),
            centres,
            dens,
            Style::LinePoints,
        )
        .with_color(0),
    );
    fig.series
        .push(Series::new(format!("limit N(0, {var:.3})"), xs, gauss, Style::Dashed).with_color(3));
    fig
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dims(n: usize) -> Dims {
        Dims {
            l: 4,
            m: 6,
            d: 7,
            din: 3,
            dout: 2,
            n,
        }
    }

    #[test]
    fn python_family_maps_to_the_limit_and_others_are_named() {
        let p = Parametrization::preset("chizat-python").unwrap();
        let lp = limit_params(
            &p,
            Activation::Linear,
            (3, 3, 1),
            15,
            0.1,
            SolverSettings::default(),
        )
        .unwrap();
        assert_eq!(lp, LinearLimitParams::default());
        // N = 4: the loss sum/(2N) gives the same rates.
        let lp4 = limit_params(
            &p,
            Activation::Linear,
            (3, 3, 4),
            15,
            0.1,
            SolverSettings::default(),
        )
        .unwrap();
        assert!((lp4.eta_u - 0.1).abs() < 1e-15);
        // lazy: alpha = 10, rates eta (c = eta/alpha inside the limit).
        let lazy = Parametrization::preset("lazy").unwrap();
        let ll = limit_params(
            &lazy,
            Activation::Linear,
            (3, 3, 1),
            5,
            0.1,
            SolverSettings::default(),
        )
        .unwrap();
        assert_eq!(ll.alpha, 10.0);
        assert!((ll.eta_u - 0.1).abs() < 1e-14, "{}", ll.eta_u);
        let err = |p: &Parametrization, act: Activation, s: SolverSettings| {
            limit_params(p, act, (3, 3, 1), 15, 0.1, s)
                .unwrap_err()
                .to_string()
        };
        let e = err(&p, Activation::Tanh, SolverSettings::default());
        assert!(e.contains("'activation'") && e.contains("tanh"), "{e}");
        let standard = Parametrization::preset("standard").unwrap();
        let e = err(&standard, Activation::Linear, SolverSettings::default());
        assert!(e.contains("param.W_E.trained"), "{e}");
        let mut q = p.clone();
        q.u.init = Scale::constant(1.0).m(-0.5);
        let e = err(&q, Activation::Linear, SolverSettings::default());
        assert!(e.contains("param.U.init") && e.contains("M^-0.5"), "{e}");
        let mut q = p.clone();
        q.v.mult = Scale::constant(2.0).l(-1.0).m(-1.0);
        let e = err(&q, Activation::Linear, SolverSettings::default());
        assert!(e.contains("param.V.mult"), "{e}");
        // The Julia convention has the same L, M, D scalings: only constants differ
        // (σ_we = d_in^-1/2, σ_wu = d_out^1/2, loss sum/(N d_in), rate η·DLM/2).
        let julia = Parametrization::preset("chizat-julia").unwrap();
        let lj = limit_params(
            &julia,
            Activation::Linear,
            (3, 3, 2),
            15,
            0.1,
            SolverSettings::default(),
        )
        .unwrap();
        assert!((lj.sigma_we - 3f64.sqrt().recip()).abs() < 1e-15);
        assert!((lj.sigma_wu - 3f64.sqrt()).abs() < 1e-15);
        assert!((lj.eta_u - 0.1 / 3.0).abs() < 1e-15 && lj.eta_v == lj.eta_u);
        let mut q = p.clone();
        q.we.trained = true;
        let e = err(&q, Activation::Linear, SolverSettings::default());
        assert!(e.contains("param.W_E.trained"), "{e}");
        let e = err(
            &p,
            Activation::Linear,
            SolverSettings {
                num_s: Some(1),
                ..Default::default()
            },
        );
        assert!(e.contains("reference.num_s") && e.contains("got 1"), "{e}");
    }

    /// `backward_states` gives ∂loss/∂h_0: with W_E trained, the engine's W_E update is
    /// `−η lr_E m_E Σ_n g_0[n] x_n`; compare, for a nonlinear activation and N > 1.
    #[test]
    fn backward_states_match_the_fused_step() {
        let dims = dims(3);
        let p = Parametrization::preset("standard").unwrap();
        let r = p.resolve(&dims);
        let data = Data::synthetic(dims.din, dims.dout, dims.n, 5);
        for act in [Activation::Tanh, Activation::Linear] {
            let mut w = Weights::<f64>::draw(&dims, &r, 1, 2, false);
            let w0 = w.clone();
            let mut ws = Workspace::new(&w, dims.n);
            train::forward(&mut w, &data, &r, act, &mut ws, Par::Seq, 0).unwrap();
            let g = backward_states(&w, &data, &r, act, &ws);
            let eta = 1e-3;
            train::backward_update(&mut w, &data, &r, act, eta, &mut ws, Par::Seq, 0).unwrap();
            for dd in 0..dims.d {
                for i in 0..dims.din {
                    let want: f64 = (0..dims.n)
                        .map(|s| g[dd * dims.n + s] * data.x[i * dims.n + s])
                        .sum::<f64>()
                        * r.we.mult;
                    let got =
                        (w0.we[dd * dims.din + i] - w.we[dd * dims.din + i]) / (eta * r.we.lr);
                    assert!(
                        (want - got).abs() < 1e-9 * want.abs().max(1.0),
                        "{want} vs {got}"
                    );
                }
            }
            // The top layer is m_W W_U dloss/df.
            let last = &g[dims.l * dims.d * dims.n..];
            assert!(last.iter().any(|v| *v != 0.0));
        }
    }

    #[test]
    fn errors_are_small_for_a_wide_net_and_need_recorded_layers() {
        let dims = Dims {
            l: 8,
            m: 64,
            d: 64,
            din: 3,
            dout: 3,
            n: 1,
        };
        let p = Parametrization::preset("chizat-python").unwrap();
        let r = p.resolve(&dims);
        let data = Data {
            din: 3,
            dout: 3,
            n: 1,
            x: PAPER_X.to_vec(),
            y: PAPER_Y.to_vec(),
        };
        let lp = limit_params(
            &p,
            Activation::Linear,
            (3, 3, 1),
            4,
            0.1,
            SolverSettings::default(),
        )
        .unwrap();
        let lim = LimitReference::solve(&data, &lp).unwrap();
        let mut w = Weights::<f64>::draw(&dims, &r, 3, 4, false);
        let opts = TrainOptions {
            steps: 4,
            eta: 0.1,
            activation: Activation::Linear,
            record_hidden: false,
            hidden_steps: None,
            layer_stats: false,
            layer_steps: vec![0, 3],
            layout: Default::default(),
            max_loss_growth: train::DEFAULT_MAX_LOSS_GROWTH,
        };
        let hist = train::train(&mut w, &data, &r, &opts, Par::Seq, &mut |_, _| {}).unwrap();
        let e = lim
            .step_errors(&dims, &w.we, &w.wu, &hist, &[0, 3])
            .unwrap();
        // At k = 0 the limit is the identity map and h_0 = W_E x exactly.
        assert_eq!(e.len(), 2);
        for s in &e {
            assert!(s.h_mad_max > 0.0 && s.h_mad_max < 0.5, "{s:?}");
            assert!(s.h_mad_mean <= s.h_mad_max && s.y_rms < 0.5, "{s:?}");
        }
        let err = lim
            .step_errors(&dims, &w.we, &w.wu, &hist, &[2])
            .unwrap_err()
            .to_string();
        assert!(err.contains("step") && err.contains('2'), "{err}");
        // Training in segments ending at the read steps is the same run.
        let mut w2 = Weights::<f64>::draw(&dims, &r, 3, 4, false);
        let a = lim
            .train_against(&mut w2, &data, &r, 0.1, 4, &[3, 0])
            .unwrap();
        assert_eq!(a.losses, hist.losses);
        assert_eq!(a.errors, e);
        assert_eq!((a.diverged_at, w2.ut), (None, w.ut));
    }

    #[test]
    fn divergence_after_a_read_step_keeps_its_errors() {
        let dims = Dims {
            l: 3,
            m: 5,
            d: 6,
            din: 3,
            dout: 3,
            n: 1,
        };
        let p = Parametrization::preset("chizat-python").unwrap();
        let r = p.resolve(&dims);
        let data = Data {
            din: 3,
            dout: 3,
            n: 1,
            x: PAPER_X.to_vec(),
            y: PAPER_Y.to_vec(),
        };
        let eta = 1e30;
        let lp = limit_params(
            &p,
            Activation::Linear,
            (3, 3, 1),
            6,
            eta,
            SolverSettings::default(),
        )
        .unwrap();
        // The limit itself is solved at a sane rate: only the finite run must blow up.
        let lim = LimitReference::solve(
            &data,
            &LinearLimitParams {
                eta_u: 0.1,
                eta_v: 0.1,
                ..lp
            },
        )
        .unwrap();
        let mut w = Weights::<f64>::draw(&dims, &r, 1, 2, false);
        let a = lim
            .train_against(&mut w, &data, &r, eta, 6, &[0, 5])
            .unwrap();
        let at = a.diverged_at.expect("diverges");
        assert!((1..5).contains(&at), "{at}");
        assert!(a.errors[0].h_mad_max.is_finite() && a.errors[0].y_rms.is_finite());
        assert!(a.errors[1].h_mad_max.is_nan() && a.errors[1].step == 5);
        assert_eq!(a.losses.len(), 1);
        // NaN errors survive the task records (JSON writes them as null).
        let back: Vec<StepErrors> =
            serde_json::from_str(&serde_json::to_string(&a.errors).unwrap()).unwrap();
        assert!(back[1].y_rms.is_nan() && back[1].loss_limit == a.errors[1].loss_limit);
        assert!((back[0].h_mad_max - a.errors[0].h_mad_max).abs() < 1e-14);
    }
}
