//! Adaptive Dormand–Prince 5(4) integration of `y' = F(s, y)` on vector states.
//!
//! The scheme is the classical seven-stage, first-same-as-last pair of Dormand and Prince
//! (Hairer, Nørsett and Wanner, *Solving ODEs I*, §II.5): the fifth-order solution is
//! propagated, the embedded fourth-order one gives the local error estimate, and a
//! fourth-order continuous extension (Shampine's dense output for DOPRI5) evaluates the
//! solution anywhere inside an accepted step.
//!
//! Error control follows the usual conventions (the same ones as SciPy's `RK45`, so that
//! results can be compared with reference computations made with it):
//! - the error of a step is the root-mean-square over components of
//!   `err_i / (atol + rtol·max(|y_i|, |y_new_i|))`; a step is accepted when it is `< 1`;
//! - the next step is `h·min(10, max(0.2, 0.9·err^(-1/5)))`, and never grows right after a
//!   rejection;
//! - the first step is chosen by the standard two-evaluation heuristic (Hairer et al.,
//!   §II.4) from `|y0|`, `|F(s0, y0)|` and a finite-difference estimate of `|F'|`.
//!
//! Integration can run forward (`s1 > s0`) or backward (`s1 < s0`). A [`Dopri5`] owns its
//! work buffers, so repeated solves of the same dimension allocate nothing per step.

use super::LimitError;
use serde::{Deserialize, Serialize};

/// Counters of the work done by one or more solves.
///
/// Reports of several solves are combined with [`SolverReport::merge`]: the counts add up
/// and `max_err_estimate` is the largest over all of them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SolverReport {
    /// Accepted steps.
    pub steps: usize,
    /// Rejected step attempts.
    pub rejected: usize,
    /// Evaluations of the right-hand side.
    pub fn_evals: usize,
    /// Largest scaled error norm of an accepted step (in `[0, 1)`; `0` if no step was taken).
    pub max_err_estimate: f64,
}

impl SolverReport {
    /// Adds the work of `other` to `self`.
    pub fn merge(&mut self, other: &SolverReport) {
        self.steps += other.steps;
        self.rejected += other.rejected;
        self.fn_evals += other.fn_evals;
        self.max_err_estimate = self.max_err_estimate.max(other.max_err_estimate);
    }
}

/// Default cap on the number of step attempts of one solve.
pub const DEFAULT_MAX_STEPS: usize = 1_000_000;

// Dormand–Prince 5(4) tableau.
const C: [f64; 7] = [0.0, 1.0 / 5.0, 3.0 / 10.0, 4.0 / 5.0, 8.0 / 9.0, 1.0, 1.0];
const A: [[f64; 6]; 7] = [
    [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    [1.0 / 5.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    [3.0 / 40.0, 9.0 / 40.0, 0.0, 0.0, 0.0, 0.0],
    [44.0 / 45.0, -56.0 / 15.0, 32.0 / 9.0, 0.0, 0.0, 0.0],
    [
        19372.0 / 6561.0,
        -25360.0 / 2187.0,
        64448.0 / 6561.0,
        -212.0 / 729.0,
        0.0,
        0.0,
    ],
    [
        9017.0 / 3168.0,
        -355.0 / 33.0,
        46732.0 / 5247.0,
        49.0 / 176.0,
        -5103.0 / 18656.0,
        0.0,
    ],
    // The seventh stage is F at the new point (FSAL); its row equals the weights B.
    [
        35.0 / 384.0,
        0.0,
        500.0 / 1113.0,
        125.0 / 192.0,
        -2187.0 / 6784.0,
        11.0 / 84.0,
    ],
];
/// Fifth-order weights (stages 0..6).
const B: [f64; 6] = [
    35.0 / 384.0,
    0.0,
    500.0 / 1113.0,
    125.0 / 192.0,
    -2187.0 / 6784.0,
    11.0 / 84.0,
];
/// Difference between the fifth- and fourth-order weights (stages 0..7).
const E: [f64; 7] = [
    -71.0 / 57600.0,
    0.0,
    71.0 / 16695.0,
    -71.0 / 1920.0,
    17253.0 / 339200.0,
    -22.0 / 525.0,
    1.0 / 40.0,
];
/// Dense-output coefficients: `y(t_old + θh) = y_old + h·Σ_j (Σ_s K_s P[s][j]) θ^(j+1)`.
const P: [[f64; 4]; 7] = [
    [
        1.0,
        -8048581381.0 / 2820520608.0,
        8663915743.0 / 2820520608.0,
        -12715105075.0 / 11282082432.0,
    ],
    [0.0, 0.0, 0.0, 0.0],
    [
        0.0,
        131558114200.0 / 32700410799.0,
        -68118460800.0 / 10900136933.0,
        87487479700.0 / 32700410799.0,
    ],
    [
        0.0,
        -1754552775.0 / 470086768.0,
        14199869525.0 / 1410260304.0,
        -10690763975.0 / 1880347072.0,
    ],
    [
        0.0,
        127303824393.0 / 49829197408.0,
        -318862633887.0 / 49829197408.0,
        701980252875.0 / 199316789632.0,
    ],
    [
        0.0,
        -282668133.0 / 205662961.0,
        2019193451.0 / 616988883.0,
        -1453857185.0 / 822651844.0,
    ],
    [
        0.0,
        40617522.0 / 29380423.0,
        -110615467.0 / 29380423.0,
        69997945.0 / 29380423.0,
    ],
];

const SAFETY: f64 = 0.9;
const MIN_FACTOR: f64 = 0.2;
const MAX_FACTOR: f64 = 10.0;
const ERROR_EXPONENT: f64 = -1.0 / 5.0;

/// Root-mean-square norm of `v[i] / scale[i]`.
fn rms_scaled(v: &[f64], scale: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let sum: f64 = v
        .iter()
        .zip(scale)
        .map(|(a, s)| {
            let r = a / s;
            r * r
        })
        .sum();
    (sum / v.len() as f64).sqrt()
}

/// One accepted step, as seen by the dense-output consumers.
struct Step<'a> {
    t_old: f64,
    h: f64,
    y_old: &'a [f64],
    /// Stages, `7 × dim`, row-major.
    k: &'a [f64],
}

impl Step<'_> {
    /// Writes `y(t)` for `t` inside the step into `out`.
    fn eval(&self, t: f64, out: &mut [f64]) {
        let dim = self.y_old.len();
        let theta = (t - self.t_old) / self.h;
        let pw = [theta, theta * theta, theta.powi(3), theta.powi(4)];
        // Weight of stage s: Σ_j P[s][j] θ^(j+1).
        let mut w = [0.0; 7];
        for (ws, ps) in w.iter_mut().zip(P.iter()) {
            *ws = ps[0] * pw[0] + ps[1] * pw[1] + ps[2] * pw[2] + ps[3] * pw[3];
        }
        for (i, o) in out.iter_mut().enumerate().take(dim) {
            let mut acc = 0.0;
            for (s, ws) in w.iter().enumerate() {
                acc += self.k[s * dim + i] * ws;
            }
            *o = self.y_old[i] + self.h * acc;
        }
    }

    /// The dense-output polynomial coefficients `Q = Kᵀ P` (`dim × 4`, row-major).
    fn q(&self, out: &mut [f64]) {
        let dim = self.y_old.len();
        for i in 0..dim {
            for j in 0..4 {
                let mut acc = 0.0;
                for (s, ps) in P.iter().enumerate() {
                    acc += self.k[s * dim + i] * ps[j];
                }
                out[i * 4 + j] = acc;
            }
        }
    }
}

/// A Dormand–Prince 5(4) integrator with its tolerances and work buffers.
///
/// The buffers are sized on first use and reused by later solves of the same (or a
/// smaller) dimension.
#[derive(Clone, Debug)]
pub struct Dopri5 {
    rtol: f64,
    atol: f64,
    max_steps: usize,
    /// Stages, `7 × dim`.
    k: Vec<f64>,
    y: Vec<f64>,
    y_new: Vec<f64>,
    y_stage: Vec<f64>,
    scale: Vec<f64>,
    err: Vec<f64>,
}

impl Dopri5 {
    /// An integrator with relative tolerance `rtol` and absolute tolerance `atol`.
    ///
    /// Both must be finite; `rtol` must be positive (at least `100·ε`) and `atol`
    /// non-negative with `atol > 0` needed when a component can pass through zero.
    pub fn new(rtol: f64, atol: f64) -> Result<Self, LimitError> {
        if !(rtol.is_finite() && rtol >= 100.0 * f64::EPSILON) {
            return Err(LimitError::invalid(
                "rtol",
                rtol,
                "must be finite and at least 100·f64::EPSILON (2.2e-14)",
            ));
        }
        if !(atol.is_finite() && atol >= 0.0) {
            return Err(LimitError::invalid("atol", atol, "must be finite and >= 0"));
        }
        Ok(Self {
            rtol,
            atol,
            max_steps: DEFAULT_MAX_STEPS,
            k: Vec::new(),
            y: Vec::new(),
            y_new: Vec::new(),
            y_stage: Vec::new(),
            scale: Vec::new(),
            err: Vec::new(),
        })
    }

    /// Caps the number of step attempts per solve (default [`DEFAULT_MAX_STEPS`]).
    pub fn with_max_steps(mut self, max_steps: usize) -> Self {
        self.max_steps = max_steps.max(1);
        self
    }

    /// The relative tolerance.
    pub fn rtol(&self) -> f64 {
        self.rtol
    }

    /// The absolute tolerance.
    pub fn atol(&self) -> f64 {
        self.atol
    }

    fn resize(&mut self, dim: usize) {
        self.k.resize(7 * dim, 0.0);
        self.y.resize(dim, 0.0);
        self.y_new.resize(dim, 0.0);
        self.y_stage.resize(dim, 0.0);
        self.scale.resize(dim, 0.0);
        self.err.resize(dim, 0.0);
    }

    /// Solves `y' = rhs(s, y)` from `y(s0) = y0` to `s1` and writes `y(t_eval[i])` into
    /// row `i` of `out` (`t_eval.len() × dim`, row-major).
    ///
    /// `rhs(s, y, dy)` must write `F(s, y)` into `dy`. The points `t_eval` must be sorted
    /// ascending and lie in the closed interval between `s0` and `s1`, whichever the
    /// direction of integration; they are produced by the dense output of the step that
    /// covers them (a point equal to `s0` gets `y0` exactly).
    pub fn solve_at<F>(
        &mut self,
        rhs: F,
        s0: f64,
        s1: f64,
        y0: &[f64],
        t_eval: &[f64],
        out: &mut [f64],
    ) -> Result<SolverReport, LimitError>
    where
        F: FnMut(f64, &[f64], &mut [f64]),
    {
        let dim = y0.len();
        if out.len() != t_eval.len() * dim {
            return Err(LimitError::Dimension {
                what: "solve_at output buffer",
                expected: t_eval.len() * dim,
                got: out.len(),
            });
        }
        let (lo, hi) = if s0 <= s1 { (s0, s1) } else { (s1, s0) };
        for (i, &t) in t_eval.iter().enumerate() {
            if !(t >= lo && t <= hi) {
                return Err(LimitError::invalid(
                    "t_eval",
                    t,
                    "evaluation point outside the integration interval",
                ));
            }
            if i > 0 && t < t_eval[i - 1] {
                return Err(LimitError::invalid(
                    "t_eval",
                    t,
                    "evaluation points must be sorted ascending",
                ));
            }
        }
        let forward = s1 >= s0;
        let n = t_eval.len();
        // Next point to fill, in the order of integration.
        let mut next = 0usize;
        let idx = |m: usize| if forward { m } else { n - 1 - m };
        // Points equal to s0 (none can be visited by a step with θ in (0, 1]).
        while next < n && t_eval[idx(next)] == s0 {
            let i = idx(next);
            out[i * dim..(i + 1) * dim].copy_from_slice(y0);
            next += 1;
        }
        self.integrate(rhs, s0, s1, y0, |step: &Step<'_>| {
            let t_new = step.t_old + step.h;
            while next < n {
                let i = idx(next);
                let t = t_eval[i];
                let covered = if forward { t <= t_new } else { t >= t_new };
                if !covered {
                    break;
                }
                step.eval(t, &mut out[i * dim..(i + 1) * dim]);
                next += 1;
            }
        })
    }

    /// Solves `y' = rhs(s, y)` from `y(s0) = y0` to `s1` and keeps the dense output of
    /// every step, so that the solution can be evaluated anywhere in the interval.
    pub fn solve_dense<F>(
        &mut self,
        rhs: F,
        s0: f64,
        s1: f64,
        y0: &[f64],
    ) -> Result<(DenseSolution, SolverReport), LimitError>
    where
        F: FnMut(f64, &[f64], &mut [f64]),
    {
        let dim = y0.len();
        let mut sol = DenseSolution {
            dim,
            s0,
            s1,
            y0: y0.to_vec(),
            t_old: Vec::new(),
            h: Vec::new(),
            y_old: Vec::new(),
            q: Vec::new(),
        };
        let report = self.integrate(rhs, s0, s1, y0, |step: &Step<'_>| {
            sol.t_old.push(step.t_old);
            sol.h.push(step.h);
            sol.y_old.extend_from_slice(step.y_old);
            let start = sol.q.len();
            sol.q.resize(start + 4 * dim, 0.0);
            step.q(&mut sol.q[start..]);
        })?;
        Ok((sol, report))
    }

    /// The stepping loop; `on_step` sees every accepted step.
    fn integrate<F, G>(
        &mut self,
        mut rhs: F,
        s0: f64,
        s1: f64,
        y0: &[f64],
        mut on_step: G,
    ) -> Result<SolverReport, LimitError>
    where
        F: FnMut(f64, &[f64], &mut [f64]),
        G: FnMut(&Step<'_>),
    {
        if !(s0.is_finite() && s1.is_finite()) {
            return Err(LimitError::invalid(
                "integration interval",
                format!("[{s0}, {s1}]"),
                "end points must be finite",
            ));
        }
        let dim = y0.len();
        let mut report = SolverReport::default();
        if s0 == s1 || dim == 0 {
            return Ok(report);
        }
        if let Some(i) = y0.iter().position(|v| !v.is_finite()) {
            return Err(LimitError::NonFinite {
                t: s0,
                what: format!("initial value, component {i}"),
            });
        }
        self.resize(dim);
        let (rtol, atol) = (self.rtol, self.atol);
        let direction = if s1 > s0 { 1.0 } else { -1.0 };
        self.y.copy_from_slice(y0);
        // K_0 = F(s0, y0).
        {
            let (k0, _) = self.k.split_at_mut(dim);
            rhs(s0, &self.y, k0);
        }
        report.fn_evals += 1;

        // Initial step (Hairer, Nørsett & Wanner, §II.4, with SciPy's constants).
        let mut h_abs = {
            let interval = (s1 - s0).abs();
            for i in 0..dim {
                self.scale[i] = atol + self.y[i].abs() * rtol;
            }
            let d0 = rms_scaled(&self.y, &self.scale);
            let d1 = rms_scaled(&self.k[..dim], &self.scale);
            let h0 = if d0 < 1e-5 || d1 < 1e-5 {
                1e-6
            } else {
                0.01 * d0 / d1
            };
            let h0 = h0.min(interval);
            for i in 0..dim {
                self.y_stage[i] = self.y[i] + h0 * direction * self.k[i];
            }
            rhs(s0 + h0 * direction, &self.y_stage, &mut self.err);
            report.fn_evals += 1;
            for i in 0..dim {
                self.err[i] -= self.k[i];
            }
            let d2 = rms_scaled(&self.err, &self.scale) / h0;
            let h1 = if d1 <= 1e-15 && d2 <= 1e-15 {
                (h0 * 1e-3).max(1e-6)
            } else {
                (0.01 / d1.max(d2)).powf(1.0 / 5.0)
            };
            (100.0 * h0).min(h1).min(interval)
        };

        let mut t = s0;
        let mut attempts = 0usize;
        loop {
            if direction * (t - s1) >= 0.0 {
                break;
            }
            let min_step = 10.0 * (t.abs() * f64::EPSILON).max(f64::MIN_POSITIVE);
            if h_abs < min_step {
                h_abs = min_step;
            }
            let mut rejected = false;
            loop {
                attempts += 1;
                if attempts > self.max_steps {
                    return Err(LimitError::TooManySteps {
                        t,
                        max_steps: self.max_steps,
                    });
                }
                if h_abs < min_step {
                    return Err(LimitError::StepTooSmall {
                        t,
                        h: h_abs,
                        min: min_step,
                    });
                }
                let mut t_new = t + direction * h_abs;
                if direction * (t_new - s1) > 0.0 {
                    t_new = s1;
                }
                let h = t_new - t;
                h_abs = h.abs();
                // Stages 1..5.
                for s in 1..6 {
                    for i in 0..dim {
                        let mut acc = 0.0;
                        for (j, a) in A[s].iter().enumerate().take(s) {
                            acc += self.k[j * dim + i] * a;
                        }
                        self.y_stage[i] = self.y[i] + acc * h;
                    }
                    let rest = &mut self.k[s * dim..];
                    rhs(t + C[s] * h, &self.y_stage, &mut rest[..dim]);
                }
                // Fifth-order solution and the FSAL stage.
                for i in 0..dim {
                    let mut acc = 0.0;
                    for (j, b) in B.iter().enumerate() {
                        acc += self.k[j * dim + i] * b;
                    }
                    self.y_new[i] = self.y[i] + h * acc;
                }
                rhs(t_new, &self.y_new, &mut self.k[6 * dim..7 * dim]);
                report.fn_evals += 6;
                if let Some(i) = self.y_new.iter().position(|v| !v.is_finite()) {
                    return Err(LimitError::NonFinite {
                        t: t_new,
                        what: format!("solution, component {i}"),
                    });
                }
                for i in 0..dim {
                    let mut acc = 0.0;
                    for (j, e) in E.iter().enumerate() {
                        acc += self.k[j * dim + i] * e;
                    }
                    self.err[i] = acc * h;
                    self.scale[i] = atol + self.y[i].abs().max(self.y_new[i].abs()) * rtol;
                }
                let err_norm = rms_scaled(&self.err, &self.scale);
                if err_norm < 1.0 {
                    let mut factor = if err_norm == 0.0 {
                        MAX_FACTOR
                    } else {
                        MAX_FACTOR.min(SAFETY * err_norm.powf(ERROR_EXPONENT))
                    };
                    if rejected {
                        factor = factor.min(1.0);
                    }
                    report.steps += 1;
                    report.max_err_estimate = report.max_err_estimate.max(err_norm);
                    on_step(&Step {
                        t_old: t,
                        h,
                        y_old: &self.y,
                        k: &self.k,
                    });
                    h_abs *= factor;
                    t = t_new;
                    std::mem::swap(&mut self.y, &mut self.y_new);
                    // FSAL: K_0 of the next step is K_6 of this one.
                    let (k0, rest) = self.k.split_at_mut(dim);
                    k0.copy_from_slice(&rest[5 * dim..6 * dim]);
                    break;
                } else if err_norm.is_nan() {
                    return Err(LimitError::NonFinite {
                        t: t_new,
                        what: "error estimate".to_string(),
                    });
                } else {
                    h_abs *= MIN_FACTOR.max(SAFETY * err_norm.powf(ERROR_EXPONENT));
                    report.rejected += 1;
                    rejected = true;
                }
            }
        }
        Ok(report)
    }
}

/// The continuous solution of a [`Dopri5::solve_dense`] solve: one quartic per step.
#[derive(Clone, Debug)]
pub struct DenseSolution {
    dim: usize,
    s0: f64,
    s1: f64,
    y0: Vec<f64>,
    t_old: Vec<f64>,
    h: Vec<f64>,
    /// `steps × dim`.
    y_old: Vec<f64>,
    /// `steps × dim × 4`.
    q: Vec<f64>,
}

impl DenseSolution {
    /// Dimension of the state.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Number of accepted steps.
    pub fn steps(&self) -> usize {
        self.h.len()
    }

    /// Writes `y(t)` into `out` (`dim` long); `t` must lie between `s0` and `s1`.
    pub fn eval(&self, t: f64, out: &mut [f64]) -> Result<(), LimitError> {
        if out.len() != self.dim {
            return Err(LimitError::Dimension {
                what: "DenseSolution::eval output",
                expected: self.dim,
                got: out.len(),
            });
        }
        let (lo, hi) = if self.s0 <= self.s1 {
            (self.s0, self.s1)
        } else {
            (self.s1, self.s0)
        };
        if !(t >= lo && t <= hi) {
            return Err(LimitError::invalid(
                "t",
                t,
                "evaluation point outside the solved interval",
            ));
        }
        if self.h.is_empty() {
            out.copy_from_slice(&self.y0);
            return Ok(());
        }
        let forward = self.s1 >= self.s0;
        // Index of the step covering t: the last step whose start is not past t.
        let n = self.h.len();
        let past = |m: usize| {
            if forward {
                self.t_old[m] > t
            } else {
                self.t_old[m] < t
            }
        };
        let (mut a, mut b) = (0usize, n);
        while a < b {
            let mid = (a + b) / 2;
            if past(mid) {
                b = mid;
            } else {
                a = mid + 1;
            }
        }
        let step = a.saturating_sub(1);
        let d = self.dim;
        let theta = (t - self.t_old[step]) / self.h[step];
        let h = self.h[step];
        for (i, o) in out.iter_mut().enumerate() {
            let q = &self.q[(step * d + i) * 4..(step * d + i) * 4 + 4];
            let poly = theta * (q[0] + theta * (q[1] + theta * (q[2] + theta * q[3])));
            *o = self.y_old[step * d + i] + h * poly;
        }
        Ok(())
    }
}
