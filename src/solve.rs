//! The `limit` command: a spec file, the large-D limit it describes, and its output
//! directory.
//!
//! The spec has the fields of a sweep spec that define the trained network (`preset`,
//! `[param]`, `activation`, `[data]`, `steps`, `lr`) and a `[solver]` table:
//!
//! ```toml
//! name = "e1-limit"
//! preset = "chizat-julia"      # any table of the chizat-python family (frozen embeddings)
//! activation = "tanh"
//! steps = 15                   # K forward passes: f_0 .. f_{K-1}
//! lr = 1.0
//! [data]
//! din = 5
//! dout = 5
//! N = 10
//! seed = 1                     # or explicit x = [[...], ...], y = [[...], ...]
//! [solver]
//! method = "auto"              # "auto": exact ODEs for linear blocks, Monte Carlo otherwise;
//!                              # "exact" (linear only) or "monte-carlo" (any activation)
//! num_s = 101                  # depth grid points
//! samples = 2000               # Monte Carlo: units per depth point (even)
//! replicas = 8                 # Monte Carlo: independent replicas (standard errors)
//! seed = 0                     # Monte Carlo: seed of the unit clouds
//! rtol = 1e-8                  # exact: ODE tolerances
//! atol = 1e-10
//! ```
//!
//! The parametrization maps onto the limit's parameters by
//! [`crate::vslimit::frame_params`]; a table outside the family it describes is refused
//! naming the field. The output directory (written as a unit, [`io::write_dir_as_unit`]):
//!
//! | file | contents |
//! |---|---|
//! | `outputs.npy` | `f_k`, shape `(K, d_out, N)` (as `train`'s `outputs.npy`) |
//! | `outputs_se.npy` | Monte-Carlo standard errors of `f_k` (zeros for the exact solver) |
//! | `losses.npy` | the loss of the spec's parametrization at each pass, `(K,)` |
//! | `gamma_h.npy`, `gamma_b.npy`, `lambda.npy` | `Γᴴ`, `Γᴮ`, `Λ` at each depth point, `(num_s, K·N, K·N)`, index `k·N + n` |
//! | `depth.npy` | the depth grid `s_i`, `(num_s,)` |
//! | `limit.json` | the spec, the limit's parameters, the solver and its report (standard errors, time) |
//! | `figures/outputs.{png,svg}`, `figures/gamma_h_diag.{png,svg}` | `f_k` against `k`; `Γᴴ_{kk}(s)` against depth |
//!
//! `Γᴮ` and `Λ` are those of the per-sample backward states of [`crate::limit::multi`]
//! (`B = D ∂(½|f − y|²)/∂h`), whatever the parametrization's loss constant.

use crate::error::Result;
use crate::io::{self, IoError};
use crate::limit::{
    self, LinearLimitParams, MonteCarlo, nonlinear::nonlinear_bytes, solve_linear_limit_multi,
    solve_nonlinear_limit,
};
use crate::memory;
use crate::model::Activation;
use crate::param::{Dims, ParamOverride, Parametrization};
use crate::plot::{self, Figure, Series, Style};
use crate::spec::SpecError;
use crate::sweep::DataSpec;
use crate::vslimit::{SolverSettings, columns, frame_params};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// How the limit is solved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// The exact ODE system for linear blocks, Monte Carlo otherwise.
    #[default]
    Auto,
    /// The exact ODE system ([`limit::solve_linear_limit_multi`]); linear blocks only.
    Exact,
    /// Monte Carlo over single units ([`limit::solve_nonlinear_limit`]); any activation.
    MonteCarlo,
}

/// The `[solver]` table.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SolverSpec {
    /// `"auto"` (default: exact for linear blocks, Monte Carlo otherwise), `"exact"`
    /// (linear blocks only) or `"monte-carlo"`.
    pub method: Method,
    /// Depth grid points s in [0, 1]. Default 201 (exact) or 101 (Monte Carlo); 2 to 100000.
    pub num_s: Option<usize>,
    /// Monte Carlo only: units per depth point. Default 2000; even, between
    /// 2(din + dout) + 2 and 1e8.
    pub samples: Option<usize>,
    /// Monte Carlo only: independent replicas (standard errors). Default 8; 2 to 10000.
    pub replicas: Option<usize>,
    /// Monte Carlo only: seed of the unit clouds. Default 0; any u64.
    pub seed: Option<u64>,
    /// Exact only: relative ODE tolerance. Default 1e-8; finite, >= 2.2e-14.
    pub rtol: Option<f64>,
    /// Exact only: absolute ODE tolerance. Default 1e-10; finite, >= 0.
    pub atol: Option<f64>,
}

/// A `limit` spec file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSpec {
    /// Name of the solve: figure titles and the default output `runs/<name>-limit`.
    /// Default `"limit"`.
    #[serde(default = "default_name")]
    pub name: String,
    /// Parametrization preset of the chizat-python family: `chizat-julia` (default),
    /// `chizat-python`, `lazy`.
    #[serde(default = "crate::spec::default_preset")]
    pub preset: String,
    /// `[param]`: changes to the preset's table ([`ParamOverride`]). Default: none.
    #[serde(default)]
    pub param: Option<ParamOverride>,
    /// Activation of the blocks: `tanh` (default), `relu`, `gelu`, `softplus`, `linear`.
    #[serde(default = "crate::spec::default_activation")]
    pub activation: String,
    /// `[data]`: the training data, as in a sweep ([`DataSpec`]). Required.
    pub data: DataSpec,
    /// Forward passes K (`f_0 .. f_{K-1}`), a count. Required; integer >= 1.
    pub steps: usize,
    /// Global learning rate eta, multiplies every role's rate. Default 1.0; finite, >= 0.
    #[serde(default = "crate::spec::default_lr")]
    pub lr: f64,
    /// `[solver]`: how the limit is solved ([`SolverSpec`]). Default: every setting's
    /// default.
    #[serde(default)]
    pub solver: SolverSpec,
}
fn default_name() -> String {
    "limit".into()
}

/// Default depth grid points of the Monte-Carlo solver ([`crate::limit::nonlinear::DEFAULT_NUM_S`]).
pub use crate::limit::nonlinear::DEFAULT_NUM_S as MC_NUM_S;
/// Default depth grid points of the exact solver.
pub const EXACT_NUM_S: usize = 201;

/// A checked `limit` spec.
#[derive(Debug, Clone)]
pub struct LimitJob {
    pub spec: LimitSpec,
    pub param: Parametrization,
    pub activation: Activation,
    /// The method chosen (never `Auto`).
    pub method: Method,
    pub params: LinearLimitParams,
    pub mc: MonteCarlo,
    /// The loss constant of the parametrization at the data's size: loss = c Σ (f − y)².
    pub loss_constant: f64,
    /// Bytes the solve needs at its peak.
    pub bytes: usize,
}

fn inv(field: &str, value: impl ToString, why: &str) -> SpecError {
    SpecError::Invalid {
        field: field.into(),
        value: value.to_string(),
        why: why.into(),
    }
}

impl LimitSpec {
    /// Reads a spec file (unknown keys are refused).
    pub fn from_file(path: &Path) -> Result<Self, SpecError> {
        crate::spec::read_toml(path)
    }

    /// Checks every field and the memory the solve needs, before any work; errors name
    /// the field.
    pub fn check(self) -> Result<LimitJob> {
        crate::spec::check_name("name", &self.name)?;
        let mut param = Parametrization::preset(&self.preset)
            .map_err(|e| inv("preset", &self.preset, &e.to_string()))?;
        if let Some(o) = &self.param {
            o.apply(&mut param);
        }
        param
            .check()
            .map_err(|e| inv("param", &param.name, &e.to_string()))?;
        let activation: Activation = self
            .activation
            .parse()
            .map_err(|e: String| inv("activation", &self.activation, &e))?;
        for (f, v) in [
            ("data.din", self.data.din),
            ("data.dout", self.data.dout),
            ("data.N", self.data.n),
            ("steps", self.steps),
        ] {
            if v == 0 {
                return Err(inv(f, 0, "must be positive").into());
            }
        }
        if !(self.lr.is_finite() && self.lr >= 0.0) {
            return Err(inv("lr", self.lr, "must be finite and non-negative").into());
        }
        let method = match (self.solver.method, activation) {
            (Method::Auto, Activation::Linear) => Method::Exact,
            (Method::Auto, _) => Method::MonteCarlo,
            (Method::Exact, a) if a != Activation::Linear => {
                return Err(inv(
                    "solver.method",
                    "exact",
                    &format!(
                        "the exact ODE limit is for activation = \"linear\" (got \"{}\"); use \"monte-carlo\" or \"auto\"",
                        a.name()
                    ),
                )
                .into());
            }
            (m, _) => m,
        };
        let sv = &self.solver;
        let mc_only = [
            ("solver.samples", sv.samples.is_some()),
            ("solver.replicas", sv.replicas.is_some()),
            ("solver.seed", sv.seed.is_some()),
        ];
        let exact_only = [
            ("solver.rtol", sv.rtol.is_some()),
            ("solver.atol", sv.atol.is_some()),
        ];
        let (unused, by) = match method {
            Method::Exact => (&mc_only[..], "the Monte-Carlo solver"),
            _ => (&exact_only[..], "the exact solver"),
        };
        if let Some((f, _)) = unused.iter().find(|(_, set)| *set) {
            return Err(inv(
                f,
                "set",
                &format!("only used by {by}, not by the method chosen here"),
            )
            .into());
        }
        let num_s = sv.num_s.unwrap_or(match method {
            Method::Exact => EXACT_NUM_S,
            _ => MC_NUM_S,
        });
        if !(2..=100_000).contains(&num_s) {
            return Err(inv("solver.num_s", num_s, "must be between 2 and 100000").into());
        }
        let d = MonteCarlo::default();
        let mc = MonteCarlo {
            samples: sv.samples.unwrap_or(d.samples),
            replicas: sv.replicas.unwrap_or(d.replicas),
            seed: sv.seed.unwrap_or(d.seed),
        };
        let (din, dout, n) = (self.data.din, self.data.dout, self.data.n);
        if method == Method::MonteCarlo {
            let de = din.saturating_add(dout);
            let min = de.saturating_mul(2).saturating_add(2);
            if mc.samples < min || !mc.samples.is_multiple_of(2) || mc.samples > 100_000_000 {
                return Err(inv(
                    "solver.samples",
                    mc.samples,
                    &format!(
                        "must be even, at least 2(data.din + data.dout) + 2 = {min} and at most 1e8"
                    ),
                )
                .into());
            }
            if !(2..=10_000).contains(&mc.replicas) {
                return Err(inv(
                    "solver.replicas",
                    mc.replicas,
                    "must be between 2 and 10000 (the standard errors come from their spread)",
                )
                .into());
            }
        }
        for (f, v) in [("solver.rtol", sv.rtol), ("solver.atol", sv.atol)] {
            if let Some(v) = v.filter(|v| !(v.is_finite() && *v >= 0.0)) {
                return Err(inv(f, v, "must be finite and non-negative").into());
            }
        }
        // The ODE solver's own floor (`LinearLimitParams::validate`), named here.
        if let Some(v) = sv.rtol.filter(|v| *v < 100.0 * f64::EPSILON) {
            return Err(inv(
                "solver.rtol",
                v,
                "must be at least 100 f64::EPSILON (2.2e-14)",
            )
            .into());
        }
        // Memory before anything is allocated (the data included).
        let data_bytes = memory::product(&[
            ("data.N", n),
            ("data.din + data.dout", din.saturating_add(dout)),
            ("8 bytes", 8),
        ])?;
        let solve_bytes = match method {
            // About twenty num_s x KN x KN series (correlations, responses, ODE work).
            Method::Exact => limit::multi::exact_bytes(num_s, self.steps, n)?,
            _ => nonlinear_bytes(
                self.steps,
                n,
                din,
                dout,
                num_s,
                &mc,
                rayon::current_num_threads(),
            )
            .ok_or_else(|| {
                inv(
                    "solver.samples",
                    mc.samples,
                    "the Monte-Carlo solve's size overflows",
                )
            })?,
        };
        let bytes = memory::sum(&[("data", data_bytes), ("solve", solve_bytes)])?;
        memory::check(
            bytes,
            &format!(
                "the limit with 'steps' = {}, 'data.N' = {n}, 'data.din' = {din}, 'data.dout' = {dout}, 'solver.num_s' = {num_s}{}",
                self.steps,
                if method == Method::MonteCarlo {
                    format!(
                        ", 'solver.samples' = {}, 'solver.replicas' = {}",
                        mc.samples, mc.replicas
                    )
                } else {
                    String::new()
                }
            ),
        )?;
        let settings = SolverSettings {
            rtol: sv.rtol.or(Some(1e-8)),
            atol: sv.atol.or(Some(1e-10)),
            num_s: Some(num_s),
        };
        let params = frame_params(&param, (din, dout, n), self.steps, self.lr, settings)?;
        if method == Method::MonteCarlo {
            for (f, v) in [
                ("param.W_E.init", params.sigma_we),
                ("param.W_U.init", params.sigma_wu),
            ] {
                if v <= 0.0 {
                    return Err(inv(
                        f,
                        v,
                        "the Monte-Carlo limit needs embeddings of positive scale",
                    )
                    .into());
                }
            }
        }
        let dims = Dims {
            l: 1,
            m: 1,
            d: 1,
            din,
            dout,
            n,
        };
        let loss_constant = param.resolve(&dims).loss;
        Ok(LimitJob {
            spec: self,
            param,
            activation,
            method,
            params,
            mc,
            loss_constant,
            bytes,
        })
    }
}

/// What a solve produced, in the layout of the output files.
#[derive(Debug, Clone)]
pub struct LimitOutput {
    /// `f`, flat `(K, d_out, N)`.
    pub outputs: Vec<f64>,
    /// Standard errors of `outputs` (zeros for the exact solver).
    pub outputs_se: Vec<f64>,
    /// The parametrization's loss `c Σ (f − y)²` at each pass.
    pub losses: Vec<f64>,
    /// Standard errors of `losses`.
    pub losses_se: Vec<f64>,
    /// `Γᴴ`, `Γᴮ`, `Λ`, each flat `(num_s, KN, KN)`.
    pub gamma_h: Vec<f64>,
    pub gamma_b: Vec<f64>,
    pub lambda: Vec<f64>,
    /// The depth grid.
    pub depth: Vec<f64>,
    /// The solver's report, as JSON.
    pub report: serde_json::Value,
}

/// Solves the limit of a checked spec.
pub fn solve(job: &LimitJob) -> Result<LimitOutput> {
    let data = job.spec.data.data()?;
    let (din, dout, n) = (data.din, data.dout, data.n);
    let x = columns(&data.x, din, n);
    let y = columns(&data.y, dout, n);
    let kk = job.params.k_steps;
    let flat = |f: &[Vec<Vec<f64>>]| -> Vec<f64> {
        let mut out = vec![0.0; kk * dout * n];
        for k in 0..kk {
            for j in 0..n {
                for o in 0..dout {
                    out[(k * dout + o) * n + j] = f[k][j][o];
                }
            }
        }
        out
    };
    // The solvers' loss is (1/N) Σ ½|f − y|²; the parametrization's is c Σ |f − y|².
    let to_param_loss = 2.0 * n as f64 * job.loss_constant;
    let series = |s: &limit::DepthSeries| -> Vec<f64> {
        (0..s.num_s).flat_map(|i| s.at(i).to_vec()).collect()
    };
    match job.method {
        Method::Exact => {
            let lim = solve_linear_limit_multi(&x, &y, &job.params)?;
            Ok(LimitOutput {
                outputs: flat(&lim.f),
                outputs_se: vec![0.0; kk * dout * n],
                losses: lim.loss.iter().map(|l| l * to_param_loss).collect(),
                losses_se: vec![0.0; kk],
                gamma_h: series(&lim.gamma_h),
                gamma_b: series(&lim.gamma_b),
                lambda: series(&lim.lambda),
                depth: lim.grid.points().to_vec(),
                report: serde_json::json!({
                    "method": "exact",
                    "num_s": job.params.num_s,
                    "rtol": job.params.rtol,
                    "atol": job.params.atol,
                    "ode": lim.report,
                }),
            })
        }
        _ => {
            let lim = solve_nonlinear_limit(&x, &y, &job.params, job.activation, &job.mc)?;
            Ok(LimitOutput {
                outputs: flat(&lim.f),
                outputs_se: flat(&lim.f_se),
                losses: lim.loss.iter().map(|l| l * to_param_loss).collect(),
                losses_se: lim.loss_se.iter().map(|l| l * to_param_loss).collect(),
                gamma_h: series(&lim.gamma_h),
                gamma_b: series(&lim.gamma_b),
                lambda: series(&lim.lambda),
                depth: lim.grid.points().to_vec(),
                report: serde_json::json!({
                    "method": "monte-carlo",
                    "integrator": "Heun on the depth grid",
                    "clouds": "independent per depth point, antithetic, whitened",
                    "monte_carlo": lim.report,
                }),
            })
        }
    }
}

/// Writes the output directory `dir` of a solve (see the module documentation), as a unit.
pub fn write(dir: &Path, job: &LimitJob, out: &LimitOutput) -> Result<()> {
    io::check_out_dir(dir, "limit.json", "limit output")?;
    io::write_dir_as_unit(dir, |tmp| write_files(tmp, job, out))
}

fn write_files(dir: &Path, job: &LimitJob, out: &LimitOutput) -> Result<()> {
    let (kk, n, dout) = (job.params.k_steps, job.spec.data.n, job.spec.data.dout);
    let ns = out.depth.len();
    let kn = kk * n;
    io::write_npy(&dir.join("outputs.npy"), &[kk, dout, n], &out.outputs)?;
    io::write_npy(&dir.join("outputs_se.npy"), &[kk, dout, n], &out.outputs_se)?;
    io::write_npy(&dir.join("losses.npy"), &[kk], &out.losses)?;
    io::write_npy(&dir.join("depth.npy"), &[ns], &out.depth)?;
    for (name, v) in [
        ("gamma_h.npy", &out.gamma_h),
        ("gamma_b.npy", &out.gamma_b),
        ("lambda.npy", &out.lambda),
    ] {
        io::write_npy(&dir.join(name), &[ns, kn, kn], v)?;
    }
    let meta = serde_json::json!({
        "reslim_version": env!("CARGO_PKG_VERSION"),
        "spec": job.spec,
        "parametrization": job.param,
        "activation": job.activation.name(),
        "method": job.method,
        "limit_params": job.params,
        "loss": "the parametrization's: loss_constant * sum over samples and outputs of (f - y)^2",
        "loss_constant": job.loss_constant,
        "losses": out.losses,
        "losses_se": out.losses_se,
        "index": "correlations are indexed by k * N + n (pass k, sample n); gamma_b and lambda use per-sample B = D d(|f - y|^2 / 2)/dh",
        "solver": out.report,
        "files": ["outputs.npy", "outputs_se.npy", "losses.npy", "depth.npy", "gamma_h.npy", "gamma_b.npy", "lambda.npy", "limit.json", "figures/"],
    });
    let text = serde_json::to_string_pretty(&meta).map_err(|e| IoError::Os {
        path: dir.join("limit.json"),
        source: std::io::Error::other(e.to_string()),
    })?;
    let figs = dir.join("figures");
    // f_k against k: every output component of sample 0, with ±2 SE bands.
    let ks: Vec<f64> = (0..kk).map(|k| k as f64).collect();
    let mut fig = Figure::new(
        format!(
            "{}: limit outputs f_k (sample 0, {})",
            job.spec.name,
            job.activation.name()
        ),
        "step k",
        "f_k",
        plot::Scale::Linear,
        plot::Scale::Linear,
    );
    for o in 0..dout.min(8) {
        let y: Vec<f64> = (0..kk).map(|k| out.outputs[(k * dout + o) * n]).collect();
        let se: Vec<f64> = (0..kk)
            .map(|k| out.outputs_se[(k * dout + o) * n])
            .collect();
        let lo = y.iter().zip(&se).map(|(v, s)| v - 2.0 * s).collect();
        let hi = y.iter().zip(&se).map(|(v, s)| v + 2.0 * s).collect();
        fig.series.push(
            Series::new(format!("f[{o}]"), ks.clone(), y, Style::LinePoints).with_band(lo, hi),
        );
    }
    plot::save(&fig, &figs.join("outputs"))?;
    // Γᴴ_kk(s) of sample 0 against depth, for a few passes.
    let mut fig = Figure::new(
        format!("{}: Gamma^H_kk(s), sample 0", job.spec.name),
        "depth s",
        "Gamma^H_kk",
        plot::Scale::Linear,
        plot::Scale::Linear,
    );
    let shown: Vec<usize> = if kk <= 6 {
        (0..kk).collect()
    } else {
        (0..6).map(|j| j * (kk - 1) / 5).collect()
    };
    for k in shown {
        let a = k * n;
        let y: Vec<f64> = (0..ns)
            .map(|i| out.gamma_h[(i * kn + a) * kn + a])
            .collect();
        fig.series.push(Series::new(
            format!("k = {k}"),
            out.depth.clone(),
            y,
            Style::Line,
        ));
    }
    plot::save(&fig, &figs.join("gamma_h_diag"))?;
    io::atomic_write(&dir.join("limit.json"), text.as_bytes())?;
    Ok(())
}
