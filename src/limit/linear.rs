//! The large-D limit of a ResNet with linear two-layer-perceptron blocks trained on one
//! input (PAPERS.md §2.3, "Large-D (DMFT) limit, linear case"). See the module
//! documentation of [`crate::limit`] for the equations and their derivation.

use super::LimitError;
use super::grid::{DepthGrid, DepthSeries};
use super::ode::{Dopri5, SolverReport};
use serde::{Deserialize, Serialize};

/// Parameters of the linear large-D limit.
///
/// The finite network it describes: `h_0 = W_e x`, `h_{l+1} = h_l + α/(LM) V_l U_lᵀ h_l / D`,
/// `f = W_uᵀ h_L / D`, loss `½|f − y|²`, `U, V` with `N(0, D σ_u²)`, `N(0, D σ_v²)` entries,
/// `W_e, W_u` frozen with `N(0, σ_we²)`, `N(0, σ_wu²)` entries, and full-batch GD on the raw
/// weights with learning rates `η_u L M D/α²` on `U` and `η_v L M D/α²` on `V`.
/// Defaults are those of `reference.json` (and of the authors' linear experiments).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LinearLimitParams {
    /// Number `K ≥ 1` of forward passes computed (`f_0, …, f_{K−1}`: `K − 1` GD steps).
    pub k_steps: usize,
    /// Residual scale `α > 0`.
    pub alpha: f64,
    /// Learning-rate factor `η_u ≥ 0` of the `U` weights.
    pub eta_u: f64,
    /// Learning-rate factor `η_v ≥ 0` of the `V` weights.
    pub eta_v: f64,
    /// Initial standard deviation `σ_u ≥ 0` of the normalised `U` entries.
    pub sigma_u: f64,
    /// Initial standard deviation `σ_v ≥ 0` of the normalised `V` entries.
    pub sigma_v: f64,
    /// Standard deviation `σ_we ≥ 0` of the embedding entries.
    pub sigma_we: f64,
    /// Standard deviation `σ_wu ≥ 0` of the unembedding entries.
    pub sigma_wu: f64,
    /// Relative tolerance of every ODE solve.
    pub rtol: f64,
    /// Absolute tolerance of every ODE solve.
    pub atol: f64,
    /// Number `≥ 2` of points of the depth grid.
    pub num_s: usize,
}

impl Default for LinearLimitParams {
    fn default() -> Self {
        Self {
            k_steps: 15,
            alpha: 1.0,
            eta_u: 0.1,
            eta_v: 0.1,
            sigma_u: 1.0,
            sigma_v: 1.0,
            sigma_we: 1.0,
            sigma_wu: 1.0,
            rtol: 1e-5,
            atol: 1e-7,
            num_s: 100,
        }
    }
}

impl LinearLimitParams {
    /// Checks every field; the error names the first bad field and its value.
    pub fn validate(&self) -> Result<(), LimitError> {
        if self.k_steps == 0 {
            return Err(LimitError::invalid("k_steps", self.k_steps, "must be >= 1"));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(LimitError::invalid(
                "alpha",
                self.alpha,
                "must be finite and > 0",
            ));
        }
        for (field, v) in [
            ("eta_u", self.eta_u),
            ("eta_v", self.eta_v),
            ("sigma_u", self.sigma_u),
            ("sigma_v", self.sigma_v),
            ("sigma_we", self.sigma_we),
            ("sigma_wu", self.sigma_wu),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(LimitError::invalid(field, v, "must be finite and >= 0"));
            }
        }
        if !(self.rtol.is_finite() && self.rtol >= 100.0 * f64::EPSILON) {
            return Err(LimitError::invalid(
                "rtol",
                self.rtol,
                "must be finite and at least 100·f64::EPSILON (2.2e-14)",
            ));
        }
        if !(self.atol.is_finite() && self.atol >= 0.0) {
            return Err(LimitError::invalid(
                "atol",
                self.atol,
                "must be finite and >= 0",
            ));
        }
        if self.num_s < 2 {
            return Err(LimitError::invalid("num_s", self.num_s, "must be >= 2"));
        }
        Ok(())
    }

    /// Effective learning rate `c_u = η_u/α` of a normalised `U` column (see the module
    /// documentation).
    pub fn c_u(&self) -> f64 {
        self.eta_u / self.alpha
    }

    /// Effective learning rate `c_v = η_v/α` of a normalised `V` column.
    pub fn c_v(&self) -> f64 {
        self.eta_v / self.alpha
    }
}

/// Everything the linear limit computes, for one training pair `(x, y)`.
///
/// Step indices `j, k` run over `0..K` (`K = params.k_steps`); `k` is the forward pass made
/// after `k` GD steps. Matrices on the depth grid are [`DepthSeries`] of shape
/// `num_s × K × K` (or `num_s × K × d`): entry `(j, k)` at grid point `i` is the quantity at
/// depth `s_i`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LinearLimit {
    /// The parameters used.
    pub params: LinearLimitParams,
    /// The training input `x ∈ ℝ^{d_in}`.
    pub x: Vec<f64>,
    /// The target `y ∈ ℝ^{d_out}`.
    pub y: Vec<f64>,
    /// The depth grid.
    pub grid: DepthGrid,
    /// Limit outputs `f_k = ξ^{Wu}_{H,k}(1)`, `K × d_out`.
    pub f: Vec<Vec<f64>>,
    /// Residuals `g_k = f_k − y` (the loss gradients), `K × d_out`.
    pub g: Vec<Vec<f64>>,
    /// Limit losses `½|f_k − y|²`.
    pub loss: Vec<f64>,
    /// `Γᴴ_{jk}(s) = lim ⟨h_j(s), h_k(s)⟩/D`.
    pub gamma_h: DepthSeries,
    /// `Γᴮ_{jk}(s) = lim ⟨B_j(s), B_k(s)⟩/D`, with `B = D·∂loss/∂h`.
    pub gamma_b: DepthSeries,
    /// `Λ_{jk}(s) = lim ⟨h_j(s), B_k(s)⟩/D`.
    pub lambda: DepthSeries,
    /// Response matrix: the velocity field of pass `k` at depth `s` is
    /// `α Σ_k(s) = Σ_{i,j<k} A_{ij}(s) B_j(s) h_i(s)ᵀ / D`.
    pub a: DepthSeries,
    /// `ξ^{We}_{H,k}(s) = lim W_eᵀ h_k(s)/D` (row `k`), `num_s × K × d_in`.
    pub xi_h_we: DepthSeries,
    /// `ξ^{Wu}_{H,k}(s) = lim W_uᵀ h_k(s)/D`, `num_s × K × d_out`.
    pub xi_h_wu: DepthSeries,
    /// `ξ^{We}_{B,k}(s) = lim W_eᵀ B_k(s)/D`, `num_s × K × d_in`.
    pub xi_b_we: DepthSeries,
    /// `ξ^{Wu}_{B,k}(s) = lim W_uᵀ B_k(s)/D`, `num_s × K × d_out`.
    pub xi_b_wu: DepthSeries,
    /// Coefficients of the unit features on the Gaussian initial features (module doc).
    pub m_f1: DepthSeries,
    /// See [`LinearLimit::m_f1`].
    pub m_f2: DepthSeries,
    /// See [`LinearLimit::m_f1`].
    pub m_g1: DepthSeries,
    /// See [`LinearLimit::m_f1`].
    pub m_g2: DepthSeries,
    /// `W_h[k, j] = (A_{<k}ᵀ γᴴ_k)_j`: `h_k' = Σ_j W_h[k, j] B_j`.
    pub w_h: DepthSeries,
    /// `W_b[k, j] = −(A_{<k} γᴮ_k)_j`: `B_k' = Σ_j W_b[k, j] h_j`.
    pub w_b: DepthSeries,
    /// Work of all ODE solves together.
    pub report: SolverReport,
}

impl LinearLimit {
    /// Number `K` of forward passes.
    pub fn k_steps(&self) -> usize {
        self.params.k_steps
    }

    /// Input dimension.
    pub fn d_in(&self) -> usize {
        self.x.len()
    }

    /// Output dimension.
    pub fn d_out(&self) -> usize {
        self.y.len()
    }

    /// The `K × K` matrix `Γᴴ(s_i)` as nested rows.
    pub fn gamma_h_at(&self, i: usize) -> Vec<Vec<f64>> {
        self.gamma_h.matrix(i)
    }

    /// The `K × K` matrix `Γᴮ(s_i)` as nested rows.
    pub fn gamma_b_at(&self, i: usize) -> Vec<Vec<f64>> {
        self.gamma_b.matrix(i)
    }

    /// The `K × K` matrix `Λ(s_i)` as nested rows.
    pub fn lambda_at(&self, i: usize) -> Vec<Vec<f64>> {
        self.lambda.matrix(i)
    }

    /// The `K × K` matrix `A(s_i)` as nested rows.
    pub fn a_at(&self, i: usize) -> Vec<Vec<f64>> {
        self.a.matrix(i)
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `θ`-interpolation of entry `(r, c)` of a series between grid points `i` and `i + 1`.
#[inline]
fn lerp_at(m: &DepthSeries, i: usize, theta: f64, r: usize, c: usize) -> f64 {
    let lo = m.get(i, r, c);
    lo + theta * (m.get(i + 1, r, c) - lo)
}

/// Right-hand side `dy = C(s) y` of a linear system tabulated on the grid
/// (`C` interpolated entrywise, as in the authors' solver).
fn tabulated_linear_rhs<'a>(
    grid: &'a DepthGrid,
    cmat: &'a DepthSeries,
) -> impl FnMut(f64, &[f64], &mut [f64]) + 'a {
    move |s, y, dy| {
        let (i, theta) = grid.locate(s);
        let n = cmat.cols;
        let (lo, hi) = (cmat.at(i), cmat.at(i + 1));
        for (r, d) in dy.iter_mut().enumerate() {
            let (lr, hr) = (&lo[r * n..(r + 1) * n], &hi[r * n..(r + 1) * n]);
            let mut acc = 0.0;
            for c in 0..n {
                acc += (lr[c] + theta * (hr[c] - lr[c])) * y[c];
            }
            *d = acc;
        }
    }
}

/// Solves the linear limit for one training pair `(x, y)` (`x ∈ ℝ^{d_in}`, `y ∈ ℝ^{d_out}`).
///
/// Implements the step-by-step construction of the module documentation: for
/// `k = 1..K`, four linear ODE solves on `[0, 1]` (forward `Γᴴ_{·k}, Λ_{k·}`, forward `ξ_{H,k}`,
/// backward `Γᴮ_{·k}, Λ_{·k}`, backward `ξ_{B,k}`) and the two diagonal quadratures, then the
/// pointwise updates of `M`, `A`, `W`. Every solve uses [`Dopri5`] with
/// `params.rtol`, `params.atol` and the depth-grid interpolation of earlier-step quantities.
pub fn solve_linear_limit(
    x: &[f64],
    y: &[f64],
    params: &LinearLimitParams,
) -> Result<LinearLimit, LimitError> {
    params.validate()?;
    if x.is_empty() {
        return Err(LimitError::invalid("x", "[]", "must not be empty"));
    }
    if y.is_empty() {
        return Err(LimitError::invalid("y", "[]", "must not be empty"));
    }
    if let Some(v) = x.iter().find(|v| !v.is_finite()) {
        return Err(LimitError::invalid("x", v, "entries must be finite"));
    }
    if let Some(v) = y.iter().find(|v| !v.is_finite()) {
        return Err(LimitError::invalid("y", v, "entries must be finite"));
    }
    let mut st = State::new(x, y, params)?;
    st.base_case();
    for k in 1..params.k_steps {
        st.step(k)?;
    }
    Ok(st.finish())
}

/// Working state of [`solve_linear_limit`].
struct State {
    p: LinearLimitParams,
    x: Vec<f64>,
    y: Vec<f64>,
    grid: DepthGrid,
    ode: Dopri5,
    report: SolverReport,
    f: Vec<Vec<f64>>,
    g: Vec<Vec<f64>>,
    gh: DepthSeries,
    gb: DepthSeries,
    lam: DepthSeries,
    a: DepthSeries,
    mf1: DepthSeries,
    mf2: DepthSeries,
    mg1: DepthSeries,
    mg2: DepthSeries,
    wh: DepthSeries,
    wb: DepthSeries,
    xhe: DepthSeries,
    xhu: DepthSeries,
    xbe: DepthSeries,
    xbu: DepthSeries,
}

impl State {
    fn new(x: &[f64], y: &[f64], p: &LinearLimitParams) -> Result<Self, LimitError> {
        let (kk, ns, di, d_o) = (p.k_steps, p.num_s, x.len(), y.len());
        let sq = || DepthSeries::zeros(ns, kk, kk);
        Ok(Self {
            p: p.clone(),
            x: x.to_vec(),
            y: y.to_vec(),
            grid: DepthGrid::new(ns)?,
            ode: Dopri5::new(p.rtol, p.atol)?,
            report: SolverReport::default(),
            f: vec![vec![0.0; d_o]; kk],
            g: vec![vec![0.0; d_o]; kk],
            gh: sq(),
            gb: sq(),
            lam: sq(),
            a: sq(),
            mf1: sq(),
            mf2: sq(),
            mg1: sq(),
            mg2: sq(),
            wh: sq(),
            wb: sq(),
            xhe: DepthSeries::zeros(ns, kk, di),
            xhu: DepthSeries::zeros(ns, kk, d_o),
            xbe: DepthSeries::zeros(ns, kk, di),
            xbu: DepthSeries::zeros(ns, kk, d_o),
        })
    }

    fn ns(&self) -> usize {
        self.p.num_s
    }

    fn base_case(&mut self) {
        let p = &self.p;
        let (we2, wu2) = (p.sigma_we * p.sigma_we, p.sigma_wu * p.sigma_wu);
        let (u2, v2) = (p.sigma_u * p.sigma_u, p.sigma_v * p.sigma_v);
        let nx2 = dot(&self.x, &self.x);
        let g0: Vec<f64> = self.y.iter().map(|v| -v).collect();
        let a00 = -p.alpha * (p.c_u() * v2 + p.c_v() * u2);
        for i in 0..self.p.num_s {
            self.gh.set(i, 0, 0, we2 * nx2);
            self.gb.set(i, 0, 0, wu2 * dot(&g0, &g0));
            self.a.set(i, 0, 0, a00);
            self.mf2.set(i, 0, 0, 1.0);
            self.mg1.set(i, 0, 0, 1.0);
            for (c, xc) in self.x.iter().enumerate() {
                self.xhe.set(i, 0, c, we2 * xc);
            }
            for (c, gc) in g0.iter().enumerate() {
                self.xbu.set(i, 0, c, wu2 * gc);
            }
        }
        self.g[0] = g0;
    }

    fn wrap<T>(k: usize, stage: &'static str, r: Result<T, LimitError>) -> Result<T, LimitError> {
        r.map_err(|e| LimitError::Solve {
            step: k,
            stage,
            source: Box::new(e),
        })
    }

    fn step(&mut self, k: usize) -> Result<(), LimitError> {
        self.forward_correlations(k)?;
        self.xi_h(k)?;
        let last = self.ns() - 1;
        self.f[k] = self.xhu.row(last, k).to_vec();
        self.g[k] = self.f[k].iter().zip(&self.y).map(|(f, y)| f - y).collect();
        self.backward_correlations(k)?;
        self.xi_b(k)?;
        self.diagonals(k)?;
        self.fill_m_a_w(k);
        Ok(())
    }

    /// Forward solve of `y = [Γᴴ_{jk}; Λ_{kj}]_{j<k}` with
    /// `C_H = [[Λ A_{<k}ᵀ, W_h], [Γᴮ A_{<k}ᵀ + W_b, 0]]` (`Λ, Γᴮ, W` restricted to `<k`).
    fn forward_correlations(&mut self, k: usize) -> Result<(), LimitError> {
        let (ns, n2) = (self.ns(), 2 * k);
        let mut cmat = DepthSeries::zeros(ns, n2, n2);
        for i in 0..ns {
            let c = cmat.at_mut(i);
            for r in 0..k {
                for col in 0..k {
                    let mut la = 0.0;
                    let mut ga = 0.0;
                    for m in 0..k {
                        let am = self.a.get(i, col, m);
                        la += self.lam.get(i, r, m) * am;
                        ga += self.gb.get(i, r, m) * am;
                    }
                    c[r * n2 + col] = la;
                    c[r * n2 + k + col] = self.wh.get(i, r, col);
                    c[(k + r) * n2 + col] = ga + self.wb.get(i, r, col);
                }
            }
        }
        let p = &self.p;
        let ic_gamma = p.sigma_we * p.sigma_we * dot(&self.x, &self.x);
        let mut y0 = vec![0.0; n2];
        for j in 0..k {
            y0[j] = ic_gamma;
            y0[k + j] = dot(self.xbe.row(0, j), &self.x);
        }
        let mut out = vec![0.0; ns * n2];
        let rep = Self::wrap(
            k,
            "forward correlations (Gamma_H, Lambda)",
            self.ode.solve_at(
                tabulated_linear_rhs(&self.grid, &cmat),
                0.0,
                1.0,
                &y0,
                self.grid.points(),
                &mut out,
            ),
        )?;
        self.report.merge(&rep);
        for i in 0..ns {
            let row = &out[i * n2..(i + 1) * n2];
            for j in 0..k {
                self.gh.set(i, j, k, row[j]);
                self.gh.set(i, k, j, row[j]);
                self.lam.set(i, k, j, row[k + j]);
            }
        }
        Ok(())
    }

    /// Backward solve of `y = [Γᴮ_{jk}; Λ_{jk}]_{j<k}` with
    /// `C_B = [[Λᵀ Ãᵀ, W_b], [Γᴴ Ãᵀ + W_h, 0]]`, `Ãᵀ = −A_{<k}`.
    fn backward_correlations(&mut self, k: usize) -> Result<(), LimitError> {
        let (ns, n2) = (self.ns(), 2 * k);
        let mut cmat = DepthSeries::zeros(ns, n2, n2);
        for i in 0..ns {
            let c = cmat.at_mut(i);
            for r in 0..k {
                for col in 0..k {
                    let mut la = 0.0;
                    let mut ga = 0.0;
                    for m in 0..k {
                        let am = self.a.get(i, m, col);
                        la += self.lam.get(i, m, r) * am;
                        ga += self.gh.get(i, r, m) * am;
                    }
                    c[r * n2 + col] = -la;
                    c[r * n2 + k + col] = self.wb.get(i, r, col);
                    c[(k + r) * n2 + col] = -ga + self.wh.get(i, r, col);
                }
            }
        }
        let p = &self.p;
        let wu2 = p.sigma_wu * p.sigma_wu;
        let last = ns - 1;
        let mut y1 = vec![0.0; n2];
        for j in 0..k {
            y1[j] = wu2 * dot(&self.g[k], &self.g[j]);
            y1[k + j] = dot(self.xhu.row(last, j), &self.g[k]);
        }
        let mut out = vec![0.0; ns * n2];
        let rep = Self::wrap(
            k,
            "backward correlations (Gamma_B, Lambda)",
            self.ode.solve_at(
                tabulated_linear_rhs(&self.grid, &cmat),
                1.0,
                0.0,
                &y1,
                self.grid.points(),
                &mut out,
            ),
        )?;
        self.report.merge(&rep);
        for i in 0..ns {
            let row = &out[i * n2..(i + 1) * n2];
            for j in 0..k {
                self.gb.set(i, j, k, row[j]);
                self.gb.set(i, k, j, row[j]);
                self.lam.set(i, j, k, row[k + j]);
            }
        }
        Ok(())
    }

    /// `ξ_{H,k}' = Σ_{j<k} ξ_{B,j} (A_{<k}ᵀ γᴴ)_j` forward, for the `W_u` and `W_e` projections.
    fn xi_h(&mut self, k: usize) -> Result<(), LimitError> {
        let we2 = self.p.sigma_we * self.p.sigma_we;
        let x0: Vec<f64> = self.x.iter().map(|v| we2 * v).collect();
        let zero = vec![0.0; self.y.len()];
        let wu = self.solve_xi(k, true, &zero)?;
        let we = self.solve_xi(k, false, &x0)?;
        for (i, (ru, re)) in wu
            .chunks(self.y.len())
            .zip(we.chunks(self.x.len()))
            .enumerate()
        {
            for (c, v) in ru.iter().enumerate() {
                self.xhu.set(i, k, c, *v);
            }
            for (c, v) in re.iter().enumerate() {
                self.xhe.set(i, k, c, *v);
            }
        }
        Ok(())
    }

    /// `ξ_{B,k}' = Σ_{j<k} ξ_{H,j} (Ãᵀ γᴮ)_j = −Σ_j ξ_{H,j} (A_{<k} γᴮ)_j` backward.
    fn xi_b(&mut self, k: usize) -> Result<(), LimitError> {
        let wu2 = self.p.sigma_wu * self.p.sigma_wu;
        let g1: Vec<f64> = self.g[k].iter().map(|v| wu2 * v).collect();
        let zero = vec![0.0; self.x.len()];
        let wu = self.solve_xi_b(k, true, &g1)?;
        let we = self.solve_xi_b(k, false, &zero)?;
        for (i, (ru, re)) in wu
            .chunks(self.y.len())
            .zip(we.chunks(self.x.len()))
            .enumerate()
        {
            for (c, v) in ru.iter().enumerate() {
                self.xbu.set(i, k, c, *v);
            }
            for (c, v) in re.iter().enumerate() {
                self.xbe.set(i, k, c, *v);
            }
        }
        Ok(())
    }

    fn solve_xi(&mut self, k: usize, unembed: bool, x0: &[f64]) -> Result<Vec<f64>, LimitError> {
        let (ns, d) = (self.ns(), x0.len());
        let xib = if unembed { &self.xbu } else { &self.xbe };
        let (grid, a, gh) = (&self.grid, &self.a, &self.gh);
        let mut v = vec![0.0; k];
        let rhs = |s: f64, _y: &[f64], dy: &mut [f64]| {
            let (i, t) = grid.locate(s);
            for (j, vj) in v.iter_mut().enumerate() {
                let mut acc = 0.0;
                for m in 0..k {
                    acc += lerp_at(a, i, t, m, j) * lerp_at(gh, i, t, m, k);
                }
                *vj = acc;
            }
            for (c, d) in dy.iter_mut().enumerate() {
                let mut acc = 0.0;
                for (j, vj) in v.iter().enumerate() {
                    acc += lerp_at(xib, i, t, j, c) * vj;
                }
                *d = acc;
            }
        };
        let mut out = vec![0.0; ns * d];
        let stage = if unembed {
            "forward xi_H^Wu"
        } else {
            "forward xi_H^We"
        };
        let rep = Self::wrap(
            k,
            stage,
            self.ode
                .solve_at(rhs, 0.0, 1.0, x0, self.grid.points(), &mut out),
        )?;
        self.report.merge(&rep);
        Ok(out)
    }

    fn solve_xi_b(&mut self, k: usize, unembed: bool, x1: &[f64]) -> Result<Vec<f64>, LimitError> {
        let (ns, d) = (self.ns(), x1.len());
        let xih = if unembed { &self.xhu } else { &self.xhe };
        let (grid, a, gb) = (&self.grid, &self.a, &self.gb);
        let mut v = vec![0.0; k];
        let rhs = |s: f64, _y: &[f64], dy: &mut [f64]| {
            let (i, t) = grid.locate(s);
            for (j, vj) in v.iter_mut().enumerate() {
                let mut acc = 0.0;
                for m in 0..k {
                    acc += lerp_at(a, i, t, j, m) * lerp_at(gb, i, t, m, k);
                }
                *vj = -acc;
            }
            for (c, d) in dy.iter_mut().enumerate() {
                let mut acc = 0.0;
                for (j, vj) in v.iter().enumerate() {
                    acc += lerp_at(xih, i, t, j, c) * vj;
                }
                *d = acc;
            }
        };
        let mut out = vec![0.0; ns * d];
        let stage = if unembed {
            "backward xi_B^Wu"
        } else {
            "backward xi_B^We"
        };
        let rep = Self::wrap(
            k,
            stage,
            self.ode
                .solve_at(rhs, 1.0, 0.0, x1, self.grid.points(), &mut out),
        )?;
        self.report.merge(&rep);
        Ok(out)
    }

    /// `(Γᴴ_{kk})' = 2 γᴴᵀ A_{<k} Λ_{k,<k}` forward and `(Γᴮ_{kk})' = 2 γᴮᵀ Ã Λ_{<k,k}`
    /// backward; `Λ_{kk} ≡ ξ^{We}_{B,k}(0)·x`.
    fn diagonals(&mut self, k: usize) -> Result<(), LimitError> {
        let ns = self.ns();
        let p = &self.p;
        let h0 = p.sigma_we * p.sigma_we * dot(&self.x, &self.x);
        let b1 = p.sigma_wu * p.sigma_wu * dot(&self.g[k], &self.g[k]);
        let mut out_h = vec![0.0; ns];
        let mut out_b = vec![0.0; ns];
        {
            let (grid, a, gh, gb, lam) = (&self.grid, &self.a, &self.gh, &self.gb, &self.lam);
            let rhs_h = |s: f64, _y: &[f64], dy: &mut [f64]| {
                let (i, t) = grid.locate(s);
                let mut acc = 0.0;
                for r in 0..k {
                    let mut al = 0.0;
                    for c in 0..k {
                        al += lerp_at(a, i, t, r, c) * lerp_at(lam, i, t, k, c);
                    }
                    acc += lerp_at(gh, i, t, r, k) * al;
                }
                dy[0] = 2.0 * acc;
            };
            let rep = Self::wrap(
                k,
                "diagonal Gamma_H",
                self.ode
                    .solve_at(rhs_h, 0.0, 1.0, &[h0], grid.points(), &mut out_h),
            )?;
            self.report.merge(&rep);
            let rhs_b = |s: f64, _y: &[f64], dy: &mut [f64]| {
                let (i, t) = grid.locate(s);
                let mut acc = 0.0;
                for r in 0..k {
                    // (Ã Λ_{<k,k})_r = −Σ_c A_{cr} Λ_{ck}
                    let mut al = 0.0;
                    for c in 0..k {
                        al -= lerp_at(a, i, t, c, r) * lerp_at(lam, i, t, c, k);
                    }
                    acc += lerp_at(gb, i, t, r, k) * al;
                }
                dy[0] = 2.0 * acc;
            };
            let rep = Self::wrap(
                k,
                "diagonal Gamma_B",
                self.ode
                    .solve_at(rhs_b, 1.0, 0.0, &[b1], grid.points(), &mut out_b),
            )?;
            self.report.merge(&rep);
        }
        let lkk = dot(self.xbe.row(0, k), &self.x);
        for i in 0..ns {
            self.gh.set(i, k, k, out_h[i]);
            self.gb.set(i, k, k, out_b[i]);
            self.lam.set(i, k, k, lkk);
        }
        Ok(())
    }

    /// Pointwise updates of `M_{F1,F2,G1,G2}`, `A` and `W_{h,b}` at step `k`.
    fn fill_m_a_w(&mut self, k: usize) {
        let p = self.p.clone();
        let (cu, cv, al) = (p.c_u(), p.c_v(), p.alpha);
        let (u2, v2) = (p.sigma_u * p.sigma_u, p.sigma_v * p.sigma_v);
        let kk = p.k_steps;
        let mut gh = vec![0.0; k];
        let mut gb = vec![0.0; k];
        let mut t1 = vec![0.0; k];
        let mut t2 = vec![0.0; k];
        let mut t3 = vec![0.0; k];
        let mut colk = vec![0.0; k];
        let mut rowk = vec![0.0; k];
        let mut mcols = [vec![0.0; k], vec![0.0; k], vec![0.0; k], vec![0.0; k]];
        // `y ← M x` over the `<k` block of the row-major `K × K` matrix `m`.
        let mv = |m: &[f64], x: &[f64], y: &mut [f64]| {
            for (r, yr) in y.iter_mut().enumerate() {
                *yr = dot(&m[r * kk..r * kk + k], x);
            }
        };
        // `y ← Mᵀ x` over the `<k` block.
        let mtv = |m: &[f64], x: &[f64], y: &mut [f64]| {
            for (c, yc) in y.iter_mut().enumerate() {
                *yc = x.iter().enumerate().map(|(r, xr)| m[r * kk + c] * xr).sum();
            }
        };
        // `acc ← acc + f·v`.
        let axpy = |acc: &mut [f64], f: f64, v: &[f64]| {
            for (a, b) in acc.iter_mut().zip(v) {
                *a += f * b;
            }
        };
        for i in 0..self.ns() {
            for (j, (h, b)) in gh.iter_mut().zip(gb.iter_mut()).enumerate() {
                *h = self.gh.get(i, j, k);
                *b = self.gb.get(i, j, k);
            }
            // M updates (only the `<k` blocks are read, so the order is irrelevant):
            // M_F1[·,k] = −c_v M_G1 γᴮ, M_F2[·,k] = −c_v M_G2 γᴮ,
            // M_G1[·,k] = −c_u M_F1 γᴴ, M_G2[·,k] = −c_u M_F2 γᴴ.
            mv(self.mg1.at(i), &gb, &mut mcols[0]);
            mv(self.mg2.at(i), &gb, &mut mcols[1]);
            mv(self.mf1.at(i), &gh, &mut mcols[2]);
            mv(self.mf2.at(i), &gh, &mut mcols[3]);
            for (m, (col, (c, diag))) in
                [&mut self.mf1, &mut self.mf2, &mut self.mg1, &mut self.mg2]
                    .into_iter()
                    .zip(
                        mcols
                            .iter()
                            .zip([(cv, 0.0), (cv, 1.0), (cu, 1.0), (cu, 0.0)]),
                    )
            {
                for (j, v) in col.iter().enumerate() {
                    m.set(i, j, k, -c * v);
                }
                m.set(i, k, k, diag);
            }

            let (ghm, gbm, am) = (self.gh.at(i), self.gb.at(i), self.a.at(i));
            // Column k: α c_u c_v [σ_u²(F1 + F1ᵀ) − c_u(σ_u² F1ᵀΓᴴF1 + σ_v² F2ᵀΓᴮF2)] γᴴ.
            let (f1, f2) = (self.mf1.at(i), self.mf2.at(i));
            colk.fill(0.0);
            mv(f1, &gh, &mut t1);
            mtv(f1, &gh, &mut t2);
            axpy(&mut colk, u2, &t1);
            axpy(&mut colk, u2, &t2);
            mv(ghm, &t1, &mut t2);
            mtv(f1, &t2, &mut t3);
            axpy(&mut colk, -cu * u2, &t3);
            mv(f2, &gh, &mut t1);
            mv(gbm, &t1, &mut t2);
            mtv(f2, &t2, &mut t3);
            axpy(&mut colk, -cu * v2, &t3);
            // Row k: α c_u c_v [σ_v²(G2 + G2ᵀ) − c_v(σ_u² G1ᵀΓᴴG1 + σ_v² G2ᵀΓᴮG2)] γᴮ.
            let (g1, g2) = (self.mg1.at(i), self.mg2.at(i));
            rowk.fill(0.0);
            mv(g2, &gb, &mut t1);
            mtv(g2, &gb, &mut t2);
            axpy(&mut rowk, v2, &t1);
            axpy(&mut rowk, v2, &t2);
            mv(gbm, &t1, &mut t2);
            mtv(g2, &t2, &mut t3);
            axpy(&mut rowk, -cv * v2, &t3);
            mv(g1, &gb, &mut t1);
            mv(ghm, &t1, &mut t2);
            mtv(g1, &t2, &mut t3);
            axpy(&mut rowk, -cv * u2, &t3);
            // Diagonal: −α(c_u σ_v² + c_v σ_u²) + c_u c_v γᴴᵀ A_{<k} γᴮ.
            mv(am, &gb, &mut t1);
            let akk = -al * (cu * v2 + cv * u2) + cu * cv * dot(&gh, &t1);
            // W: W_h[k, ·] = A_{<k}ᵀ γᴴ, W_b[k, ·] = −A_{<k} γᴮ (= Ãᵀ γᴮ).
            mtv(am, &gh, &mut t2);
            let scale = al * cu * cv;
            for j in 0..k {
                self.wh.set(i, k, j, t2[j]);
                self.wb.set(i, k, j, -t1[j]);
                self.a.set(i, j, k, scale * colk[j]);
                self.a.set(i, k, j, scale * rowk[j]);
            }
            self.a.set(i, k, k, akk);
        }
    }

    fn finish(self) -> LinearLimit {
        let loss = self.g.iter().map(|g| 0.5 * dot(g, g)).collect();
        LinearLimit {
            params: self.p,
            x: self.x,
            y: self.y,
            grid: self.grid,
            f: self.f,
            g: self.g,
            loss,
            gamma_h: self.gh,
            gamma_b: self.gb,
            lambda: self.lam,
            a: self.a,
            xi_h_we: self.xhe,
            xi_h_wu: self.xhu,
            xi_b_we: self.xbe,
            xi_b_wu: self.xbu,
            m_f1: self.mf1,
            m_f2: self.mf2,
            m_g1: self.mg1,
            m_g2: self.mg2,
            w_h: self.wh,
            w_b: self.wb,
            report: self.report,
        }
    }
}
