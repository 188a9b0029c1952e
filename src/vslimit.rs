//! Finite networks against the linear large-D limit (docs/papers.md §2.3–2.5).
//!
//! - [`limit_params`]: which finite networks the limit of [`crate::limit`] describes (the
//!   `chizat-python` family with linear blocks, docs/papers.md §2.2 "Python" column) and the
//!   [`LinearLimitParams`] of one of them. The effective rates are `c = η/α` (module
//!   documentation of [`crate::limit`]).
//! - [`LimitReference`]: the solved limit of one data set (`N = 1`: [`solve_linear_limit`];
//!   `N > 1`: [`solve_linear_limit_multi`]) with its per-coordinate basis
//!   ([`CoordinateBasis`]).
//! - [`LimitReference::step_errors`]: the Python errors of docs/papers.md §2.4, from a training
//!   [`History`] that recorded every layer at the read steps (`TrainOptions::layer_steps`):
//!   - embedding space: `max_l mean_{d,n} |h_{d,n}(l) − H_{d,(k,n)}(l/L)|`, where `H_d` is the
//!     limit trajectory of coordinate `d` driven by that coordinate's own rows of `W_E`,
//!     `W_U` (the finite network's actual rows), interpolated linearly from the depth grid
//!     onto the `L + 1` depths `l/L`; also its mean over depth and the RMS at the last
//!     layer `√(mean_{d,n} (h_{d,n}(L) − H_{d,(k,n)}(1))²)`;
//!   - output space: `√(mean_{o,n} (f_{o,n} − f^lim_{k,o,n})²)`.
//! - [`LimitReference::train_against`]: a finite network trained and measured against the
//!   limit at the read steps (a sweep task against the limit, [`crate::sweep::Strategy`]).
//!
//! The coordinate plots of E3 (`reslim coords`) are in [`crate::coords`].
//!
//! With `N > 1` the finite loss is `(1/N) Σ_n ½|f_n − y_n|²` and the per-sample backward
//! state is `B_{k,n} = D ∂(½|f_{k,n} − y_n|²)/∂h_{k,n}` (module documentation of
//! [`crate::limit::multi`]); for the engine's loss `c Σ (f − y)²` that is
//! `B = D g / (2c)` with `g = ∂loss/∂h`.

use crate::cpu::Par;
use crate::io;
use crate::limit::nonlinear::McReport;
use crate::limit::{
    CoordinateBasis, CoordinateTrajectories, DepthGrid, DepthSeries, LimitError, LinearLimit,
    LinearLimitMulti, LinearLimitParams, MonteCarlo, NonlinearLimit, solve_linear_limit,
    solve_linear_limit_multi, solve_nonlinear_limit,
};
use crate::model::{Activation, Data, Weights};
use crate::param::{Dims, Parametrization, Resolved, Scale};
use crate::spec::SpecError;
use crate::train::{self, History, TrainOptions};
use serde::Serialize;

pub(crate) fn invalid(field: &str, value: impl ToString, why: impl Into<String>) -> SpecError {
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
/// The finite networks must be in the `chizat-python` family (docs/papers.md §2.2, Python
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

    /// The errors of docs/papers.md §2.4 ("Python errors") of a finite network of shape `dims`
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
    /// the earlier read steps, as in the paper (docs/papers.md 2.5, E2: `k = 5` is read from runs
    /// whose later steps blow up). Divergence is data: the read steps at or after it get
    /// NaN errors and `diverged_at` says where it happened.
    #[allow(clippy::too_many_arguments)]
    pub fn train_against<T: crate::model::Real>(
        &self,
        w: &mut Weights<T>,
        data: &Data,
        r: &Resolved,
        eta: f64,
        steps: usize,
        read_steps: &[usize],
        par: Par,
    ) -> Result<AgainstLimit, ReferenceError> {
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
                // A sweep checks its cancel token between tasks.
                cancel: Default::default(),
            };
            match train::train(w, data, r, &opts, par, &mut |_, _| {}) {
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

/// Why a finite network could not be measured against the limit.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReferenceError {
    /// The network does not match the limit, or its coordinates cannot be followed.
    #[error(transparent)]
    Limit(#[from] LimitError),
    /// Training failed otherwise than by diverging (divergence is data).
    #[error(transparent)]
    Train(#[from] train::TrainError),
}

impl LimitReference {
    /// [`LimitReference::train_against`] with the regenerated engine: the low-rank step
    /// over initial block weights regenerated from `block_seed` inside each pass
    /// ([`crate::factored::Init::Regenerated`], standard deviations `r.u.std`, `r.v.std`),
    /// never stored, recording every layer at the read steps in one run; `we`, `wu` the
    /// network's embeddings (D x d_in, D x d_out). The same errors as the dense step to
    /// rounding. A run that diverges is run again up to the step before, so that the
    /// read steps it reached keep their errors (NaN after, as in `train_against`).
    #[allow(clippy::too_many_arguments)]
    pub fn train_against_regenerated<T: crate::model::Real>(
        &self,
        dims: &Dims,
        block_seed: u64,
        we: &[T],
        wu: &[T],
        data: &Data,
        r: &Resolved,
        eta: f64,
        steps: usize,
        read_steps: &[usize],
        par: Par,
    ) -> Result<AgainstLimit, ReferenceError> {
        use crate::factored;
        self.check_dims(dims)?;
        let f64s = |v: &[T]| v.iter().map(|x| x.to()).collect::<Vec<f64>>();
        let (we0, wu0) = (f64s(we), f64s(wu));
        let mut reads: Vec<usize> = read_steps.to_vec();
        reads.sort_unstable();
        reads.dedup();
        let run = |steps: usize| {
            let opts = TrainOptions {
                steps,
                eta,
                activation: self.activation,
                record_hidden: false,
                hidden_steps: None,
                layer_stats: false,
                layer_steps: reads.iter().copied().filter(|&k| k < steps).collect(),
                layout: Default::default(),
                // As `train_against`: only a non-finite value stops the run.
                max_loss_growth: f64::INFINITY,
                cancel: Default::default(),
            };
            let mut v = [factored::Variant {
                we: we.to_vec(),
                wu: wu.to_vec(),
                record_hidden: false,
            }];
            let init = factored::Init::Regenerated {
                block_seed,
                std_u: r.u.std,
                std_v: r.v.std,
            };
            factored::train_shared_from(dims, init, &mut v, data, r, &opts, par)
                .map(|mut h| h.swap_remove(0))
        };
        let (hist, diverged_at) = match run(steps) {
            Ok(h) => (h, None),
            Err(e) => match e.diverged_at() {
                Some(0) => (History::default(), Some(0)),
                Some(step) => (run(step)?, Some(step)),
                None => return Err(e.into()),
            },
        };
        let done = hist.losses.len();
        let reached: Vec<usize> = reads.iter().copied().filter(|&k| k < done).collect();
        let mut errors = self.step_errors(dims, &we0, &wu0, &hist, &reached)?;
        for &k in reads.iter().filter(|&&k| k >= done) {
            errors.push(StepErrors {
                step: k,
                h_mad_max: f64::NAN,
                h_mad_mean: f64::NAN,
                h_rms_last: f64::NAN,
                y_rms: f64::NAN,
                loss: f64::NAN,
                loss_limit: self.losses[k],
            });
        }
        Ok(AgainstLimit {
            losses: hist.losses,
            errors,
            diverged_at,
        })
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

/// The distance of one finite network to the limit at one step (docs/papers.md §2.4, Python).
/// NaN (written `null` in JSON) where the run diverged before the step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
pub struct StepErrors {
    /// Record `k` (the network after `k` updates).
    pub step: usize,
    /// `max_l mean_{d,n} |h(l) − H(l/L)|` (the paper's embedding error).
    #[serde(deserialize_with = "io::nullable::deserialize")]
    pub h_mad_max: f64,
    /// `mean_l mean_{d,n} |h(l) − H(l/L)|`.
    #[serde(deserialize_with = "io::nullable::deserialize")]
    pub h_mad_mean: f64,
    /// `√(mean_{d,n} (h(L) − H(1))²)`.
    #[serde(deserialize_with = "io::nullable::deserialize")]
    pub h_rms_last: f64,
    /// `√(mean_{o,n} (f − f^lim)²)` (the paper's output error).
    #[serde(deserialize_with = "io::nullable::deserialize")]
    pub y_rms: f64,
    /// The finite network's loss and the limit's.
    #[serde(deserialize_with = "io::nullable::deserialize")]
    pub loss: f64,
    #[serde(deserialize_with = "io::nullable::deserialize")]
    pub loss_limit: f64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coords::{PAPER_X, PAPER_Y};

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
        let mut w = Weights::<f64>::draw(&dims, &r, 3, 4, Par::Seq);
        let opts = TrainOptions {
            steps: 4,
            eta: 0.1,
            activation: Activation::Linear,
            layer_steps: vec![0, 3],
            ..TrainOptions::default()
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
        let mut w2 = Weights::<f64>::draw(&dims, &r, 3, 4, Par::Seq);
        let a = lim
            .train_against(&mut w2, &data, &r, 0.1, 4, &[3, 0], Par::Seq)
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
        let mut w = Weights::<f64>::draw(&dims, &r, 1, 2, Par::Seq);
        let a = lim
            .train_against(&mut w, &data, &r, eta, 6, &[0, 5], Par::Seq)
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

    #[test]
    fn the_regenerated_engine_measures_the_dense_errors() {
        let p = Parametrization::preset("chizat-python").unwrap();
        let data = Data {
            din: 3,
            dout: 3,
            n: 1,
            x: PAPER_X.to_vec(),
            y: PAPER_Y.to_vec(),
        };
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-11 * a.abs().max(b.abs()).max(1e-300);
        for (eta, (l, m, d)) in [(0.1, (6, 40, 13)), (0.1, (4, 9, 31)), (1e30, (3, 5, 6))] {
            let dims = Dims {
                l,
                m,
                d,
                din: 3,
                dout: 3,
                n: 1,
            };
            let r = p.resolve(&dims);
            let lp = limit_params(
                &p,
                Activation::Linear,
                (3, 3, 1),
                6,
                eta,
                SolverSettings::default(),
            )
            .unwrap();
            let lim = LimitReference::solve(
                &data,
                &LinearLimitParams {
                    eta_u: lp.eta_u.min(0.1),
                    eta_v: lp.eta_v.min(0.1),
                    ..lp
                },
            )
            .unwrap();
            let mut w = Weights::<f64>::draw(&dims, &r, 1, 2, Par::Seq);
            let (we, wu) = (w.we.clone(), w.wu.clone());
            let dense = lim
                .train_against(&mut w, &data, &r, eta, 6, &[0, 2, 5], Par::Seq)
                .unwrap();
            for par in [Par::Seq, Par::Rayon] {
                let regen = lim
                    .train_against_regenerated(
                        &dims,
                        2,
                        &we,
                        &wu,
                        &data,
                        &r,
                        eta,
                        6,
                        &[5, 0, 2],
                        par,
                    )
                    .unwrap();
                assert_eq!(regen.diverged_at, dense.diverged_at, "{dims:?}");
                assert_eq!(regen.errors.len(), 3);
                for (a, b) in regen.errors.iter().zip(&dense.errors) {
                    assert_eq!(a.step, b.step);
                    for (x, y) in [
                        (a.h_mad_max, b.h_mad_max),
                        (a.h_mad_mean, b.h_mad_mean),
                        (a.h_rms_last, b.h_rms_last),
                        (a.y_rms, b.y_rms),
                        (a.loss, b.loss),
                        (a.loss_limit, b.loss_limit),
                    ] {
                        assert!(
                            close(x, y) || (x.is_nan() && y.is_nan()),
                            "{dims:?} {a:?} {b:?}"
                        );
                    }
                }
                // The dense run keeps the losses of its segments that finished; the
                // regenerated one every step before the divergence.
                let n = dense.losses.len();
                assert!(regen.losses.len() >= n);
                for (x, y) in regen.losses.iter().zip(&dense.losses) {
                    assert!(close(*x, *y), "{x} {y}");
                }
            }
            if eta > 1.0 {
                assert!(dense.diverged_at.is_some());
            }
        }
    }
}
