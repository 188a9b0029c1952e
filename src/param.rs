//! The parametrization table: how every tensor of the ResNet is initialised, scaled in
//! the forward pass, and trained, as data.
//!
//! The model (docs/papers.md section 2.2, with the multipliers made explicit) is
//!
//! ```text
//! h_0     = m_E  W_E x                               W_E: D x d_in
//! p_l     = m_U  U_l^T h_l                           U_l: D x M
//! h_{l+1} = h_l + alpha m_V V_l sigma(p_l)           V_l: D x M,  l = 0..L-1
//! f       = m_W  W_U^T h_L                           W_U: D x d_out
//! loss    = c_loss * sum_{o,n} (f_{o n} - y_{o n})^2
//! ```
//!
//! with entries of each tensor drawn i.i.d. N(0, std^2), and full-batch gradient descent
//! `W <- W - eta * lr_W * dloss/dW` on every trained tensor, `eta` the global learning rate
//! of the run. Every scale (std, multiplier, learning rate, and the loss constant) is a
//! [`Scale`]: `c * L^l * M^m * D^d * d_in^din * d_out^dout * N^n * alpha^alpha`.
//!
//! The presets reproduce the authors' codes exactly (docs/papers.md section 2.2, table and
//! "Learning rates"):
//! - `chizat-julia` (nonlinear experiments): std(W_E) = d_in^-1/2, std(U) = std(V) = D^1/2,
//!   std(W_U) = d_out^1/2; m_U = m_W = 1/D, m_V = 1/(LM); loss = sum/(N d_in);
//!   lr_U = lr_V = L M D / 2 (the notebook's `gU = (DLM/2) dloss/dU`); W_E, W_U frozen.
//! - `chizat-python` (linear experiments): std(W_E) = std(W_U) = 1, std(U) = std(V) = D^1/2;
//!   m_U = m_W = 1/D, branch alpha/(LM); loss = sum/(2N); lr_U = lr_V = L M D / alpha^2
//!   (the code's `eta_u = eta_v = D` times `eta/alpha`, docs/papers.md "raw-weight rate
//!   eta_0 D L M / alpha^2"); W_E, W_U frozen.
//! - `lazy`: `chizat-python` with alpha = 10 (override it): the 1/alpha^2 learning rate
//!   keeps the function-space speed fixed while the features move O(1/alpha)
//!   (the lazy ODE regime of "The Hidden Width of Deep ResNets").
//! - `standard`: std = fan_in^-1/2 for every tensor (d_in, D, M, D), no multipliers,
//!   alpha = 1, one global learning rate, loss = sum/(2N), every tensor trained.
//!
//! In normalised weights u = U/sqrt(D), v = V/sqrt(D) the two Chizat presets give the
//! block h + (sqrt(D)/(LM)) v sigma(u^T h / sqrt(D)): the maximal-local-update residual
//! scale sqrt(D)/(LM) of the companion paper (docs/papers.md 2.2, "Normalised form").

use serde::{Deserialize, Serialize};
use std::fmt;

/// A power law in the shape: `c * L^l * M^m * D^d * d_in^din * d_out^dout * N^n * alpha^alpha`.
/// Every exponent defaults to 0 in specs, `c` to 1.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Scale {
    /// Constant factor. Default 1; finite.
    pub c: f64,
    /// Exponent of the depth L. Default 0; finite.
    pub l: f64,
    /// Exponent of the block width M. Default 0; finite.
    pub m: f64,
    /// Exponent of the embedding dimension D. Default 0; finite.
    pub d: f64,
    /// Exponent of the input dimension d_in. Default 0; finite.
    pub din: f64,
    /// Exponent of the output dimension d_out. Default 0; finite.
    pub dout: f64,
    /// Exponent of the number of samples N. Default 0; finite.
    pub n: f64,
    /// Exponent of the branch scale alpha. Default 0; finite (< 0 refused when alpha = 0).
    pub alpha: f64,
}

impl Default for Scale {
    fn default() -> Self {
        Scale::constant(1.0)
    }
}

impl Scale {
    /// The constant `c`.
    pub const fn constant(c: f64) -> Self {
        Scale {
            c,
            l: 0.0,
            m: 0.0,
            d: 0.0,
            din: 0.0,
            dout: 0.0,
            n: 0.0,
            alpha: 0.0,
        }
    }
    pub const fn l(mut self, e: f64) -> Self {
        self.l = e;
        self
    }
    pub const fn m(mut self, e: f64) -> Self {
        self.m = e;
        self
    }
    pub const fn d(mut self, e: f64) -> Self {
        self.d = e;
        self
    }
    pub const fn din(mut self, e: f64) -> Self {
        self.din = e;
        self
    }
    pub const fn dout(mut self, e: f64) -> Self {
        self.dout = e;
        self
    }
    pub const fn n(mut self, e: f64) -> Self {
        self.n = e;
        self
    }
    pub const fn alpha(mut self, e: f64) -> Self {
        self.alpha = e;
        self
    }

    /// The value at a given shape and branch scale.
    pub fn eval(&self, s: &Dims, alpha: f64) -> f64 {
        let p = |x: usize, e: f64| if e == 0.0 { 1.0 } else { (x as f64).powf(e) };
        let a = if self.alpha == 0.0 {
            1.0
        } else {
            alpha.powf(self.alpha)
        };
        self.c
            * p(s.l, self.l)
            * p(s.m, self.m)
            * p(s.d, self.d)
            * p(s.din, self.din)
            * p(s.dout, self.dout)
            * p(s.n, self.n)
            * a
    }

    fn is_finite(&self) -> bool {
        [
            self.c, self.l, self.m, self.d, self.din, self.dout, self.n, self.alpha,
        ]
        .iter()
        .all(|x| x.is_finite())
    }
}

impl fmt::Display for Scale {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.c)?;
        for (name, e) in [
            ("L", self.l),
            ("M", self.m),
            ("D", self.d),
            ("d_in", self.din),
            ("d_out", self.dout),
            ("N", self.n),
            ("alpha", self.alpha),
        ] {
            if e != 0.0 {
                write!(f, "*{name}^{e}")?;
            }
        }
        Ok(())
    }
}

/// The integer dimensions a [`Scale`] can depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dims {
    #[serde(rename = "L")]
    pub l: usize,
    #[serde(rename = "M")]
    pub m: usize,
    #[serde(rename = "D")]
    pub d: usize,
    pub din: usize,
    pub dout: usize,
    #[serde(rename = "N")]
    pub n: usize,
}

/// The four tensor roles of the ResNet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Embedding W_E (D x d_in).
    #[serde(rename = "W_E")]
    WE,
    /// First-layer weights U_l (D x M) of every block.
    U,
    /// Second-layer weights V_l (D x M) of every block.
    V,
    /// Unembedding W_U (D x d_out).
    #[serde(rename = "W_U")]
    WU,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::WE, Role::U, Role::V, Role::WU];
    pub fn name(self) -> &'static str {
        match self {
            Role::WE => "W_E",
            Role::U => "U",
            Role::V => "V",
            Role::WU => "W_U",
        }
    }
}

/// How one tensor role is initialised, scaled and trained.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleParams {
    /// Standard deviation of the i.i.d. Gaussian entries at initialisation.
    pub init: Scale,
    /// Forward multiplier (for V, multiplied by the branch scale alpha).
    pub mult: Scale,
    /// Learning rate, multiplied by the run's global learning rate eta.
    pub lr: Scale,
    /// Whether gradient descent updates this tensor.
    pub trained: bool,
}

/// The whole parametrization: one [`RoleParams`] per role, the branch scale and the
/// loss constant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Parametrization {
    /// Name of the preset this table came from, `<preset>+overrides` after a `[param]`
    /// table changed it.
    pub name: String,
    /// Branch scale alpha: the residual branch is alpha * m_V * V sigma(p).
    pub alpha: f64,
    #[serde(rename = "W_E")]
    pub we: RoleParams,
    #[serde(rename = "U")]
    pub u: RoleParams,
    #[serde(rename = "V")]
    pub v: RoleParams,
    #[serde(rename = "W_U")]
    pub wu: RoleParams,
    /// The loss is `loss * sum (f - y)^2`.
    pub loss: Scale,
}

/// A parametrization with an error in it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ParamError {
    #[error(
        "unknown parametrization preset '{0}' (known: chizat-julia, chizat-python, lazy, standard)"
    )]
    UnknownPreset(String),
    #[error("parametrization field '{field}' must be finite, got {value}")]
    NotFinite { field: String, value: String },
    #[error("parametrization field '{field}' must be finite and non-negative, got {value}")]
    Negative { field: String, value: f64 },
    /// alpha = 0 with a scale that divides by a power of alpha (e.g. the `chizat-python`
    /// learning rate L M D / alpha^2).
    #[error(
        "parametrization field 'alpha' is 0, but '{field}' scales as alpha^{exponent} and would be infinite; use alpha > 0 or give '{field}' a non-negative alpha exponent"
    )]
    InfiniteAtZeroAlpha { field: String, exponent: f64 },
}

/// The names of the presets, for help texts.
pub const PRESETS: [&str; 4] = ["chizat-julia", "chizat-python", "lazy", "standard"];

impl Parametrization {
    /// A named preset (see the module documentation).
    pub fn preset(name: &str) -> Result<Self, ParamError> {
        let s = Scale::constant;
        let frozen = |init: Scale, mult: Scale| RoleParams {
            init,
            mult,
            lr: s(0.0),
            trained: false,
        };
        match name {
            "chizat-julia" => Ok(Parametrization {
                name: name.into(),
                alpha: 1.0,
                we: frozen(s(1.0).din(-0.5), s(1.0)),
                u: RoleParams {
                    init: s(1.0).d(0.5),
                    mult: s(1.0).d(-1.0),
                    lr: s(0.5).l(1.0).m(1.0).d(1.0),
                    trained: true,
                },
                v: RoleParams {
                    init: s(1.0).d(0.5),
                    mult: s(1.0).l(-1.0).m(-1.0),
                    lr: s(0.5).l(1.0).m(1.0).d(1.0),
                    trained: true,
                },
                wu: frozen(s(1.0).dout(0.5), s(1.0).d(-1.0)),
                loss: s(1.0).n(-1.0).din(-1.0),
            }),
            "chizat-python" | "lazy" => {
                let lr = s(1.0).l(1.0).m(1.0).d(1.0).alpha(-2.0);
                Ok(Parametrization {
                    name: name.into(),
                    alpha: if name == "lazy" { 10.0 } else { 1.0 },
                    we: frozen(s(1.0), s(1.0)),
                    u: RoleParams {
                        init: s(1.0).d(0.5),
                        mult: s(1.0).d(-1.0),
                        lr,
                        trained: true,
                    },
                    v: RoleParams {
                        init: s(1.0).d(0.5),
                        mult: s(1.0).l(-1.0).m(-1.0),
                        lr,
                        trained: true,
                    },
                    wu: frozen(s(1.0), s(1.0).d(-1.0)),
                    loss: s(0.5).n(-1.0),
                })
            }
            "standard" => {
                let t = |init: Scale| RoleParams {
                    init,
                    mult: s(1.0),
                    lr: s(1.0),
                    trained: true,
                };
                Ok(Parametrization {
                    name: name.into(),
                    alpha: 1.0,
                    we: t(s(1.0).din(-0.5)),
                    u: t(s(1.0).d(-0.5)),
                    v: t(s(1.0).m(-0.5)),
                    wu: t(s(1.0).d(-0.5)),
                    loss: s(0.5).n(-1.0),
                })
            }
            other => Err(ParamError::UnknownPreset(other.to_string())),
        }
    }

    pub fn role(&self, r: Role) -> &RoleParams {
        match r {
            Role::WE => &self.we,
            Role::U => &self.u,
            Role::V => &self.v,
            Role::WU => &self.wu,
        }
    }

    pub fn role_mut(&mut self, r: Role) -> &mut RoleParams {
        match r {
            Role::WE => &mut self.we,
            Role::U => &mut self.u,
            Role::V => &mut self.v,
            Role::WU => &mut self.wu,
        }
    }

    /// Checks that every number is finite and alpha is non-negative.
    ///
    /// alpha = 0 is accepted: it freezes the residual branch (h_L = h_0, the network is
    /// its embedding and read-out), a meaningful baseline. It is refused only where a
    /// scale has a negative alpha exponent and would be infinite at alpha = 0.
    pub fn check(&self) -> Result<(), ParamError> {
        if !(self.alpha.is_finite() && self.alpha >= 0.0) {
            return Err(ParamError::Negative {
                field: "alpha".into(),
                value: self.alpha,
            });
        }
        let mut scales = Vec::with_capacity(13);
        for r in Role::ALL {
            let p = self.role(r);
            for (what, sc) in [("init", p.init), ("mult", p.mult), ("lr", p.lr)] {
                // A frozen tensor's rate is never evaluated (it resolves to 0).
                let used = what != "lr" || p.trained;
                scales.push((format!("{}.{what}", r.name()), sc, used));
            }
        }
        scales.push(("loss".into(), self.loss, true));
        for (field, sc, used) in scales {
            if !sc.is_finite() {
                return Err(ParamError::NotFinite {
                    field,
                    value: sc.to_string(),
                });
            }
            // A standard deviation and a learning rate are not negative (a negative rate
            // would climb the loss); a multiplier may flip a sign.
            if used && (field.ends_with(".init") || field.ends_with(".lr")) && sc.c < 0.0 {
                return Err(ParamError::Negative {
                    field: format!("{field}.c"),
                    value: sc.c,
                });
            }
            if used && self.alpha == 0.0 && sc.alpha < 0.0 && sc.c != 0.0 {
                return Err(ParamError::InfiniteAtZeroAlpha {
                    field,
                    exponent: sc.alpha,
                });
            }
        }
        Ok(())
    }

    /// Evaluates the table at a shape: the numbers the engine uses.
    pub fn resolve(&self, dims: &Dims) -> Resolved {
        let a = self.alpha;
        let r = |p: &RoleParams, extra: f64| ResolvedRole {
            std: p.init.eval(dims, a),
            mult: p.mult.eval(dims, a) * extra,
            lr: if p.trained { p.lr.eval(dims, a) } else { 0.0 },
            trained: p.trained,
        };
        Resolved {
            we: r(&self.we, 1.0),
            u: r(&self.u, 1.0),
            v: r(&self.v, a),
            wu: r(&self.wu, 1.0),
            loss: self.loss.eval(dims, a),
        }
    }
}

/// One role's numbers at a given shape.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ResolvedRole {
    pub std: f64,
    /// Forward multiplier; for V it includes the branch scale alpha.
    pub mult: f64,
    /// Learning rate before the global eta (0 when frozen).
    pub lr: f64,
    pub trained: bool,
}

/// The parametrization evaluated at a shape.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Resolved {
    #[serde(rename = "W_E")]
    pub we: ResolvedRole,
    #[serde(rename = "U")]
    pub u: ResolvedRole,
    #[serde(rename = "V")]
    pub v: ResolvedRole,
    #[serde(rename = "W_U")]
    pub wu: ResolvedRole,
    pub loss: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dims() -> Dims {
        Dims {
            l: 5,
            m: 7,
            d: 9,
            din: 5,
            dout: 3,
            n: 10,
        }
    }

    #[test]
    fn julia_preset_matches_the_notebook() {
        let r = Parametrization::preset("chizat-julia")
            .unwrap()
            .resolve(&dims());
        assert!((r.we.std - 1.0 / 5f64.sqrt()).abs() < 1e-15);
        assert!((r.u.std - 3.0).abs() < 1e-15);
        assert!((r.wu.std - 3f64.sqrt()).abs() < 1e-15);
        assert!((r.u.mult - 1.0 / 9.0).abs() < 1e-15);
        assert!((r.v.mult - 1.0 / 35.0).abs() < 1e-15);
        assert!((r.u.lr - 0.5 * 5.0 * 7.0 * 9.0).abs() < 1e-12);
        assert!((r.loss - 1.0 / 50.0).abs() < 1e-15);
        assert!(!r.we.trained && r.we.lr == 0.0);
    }

    #[test]
    fn python_preset_scales_with_alpha() {
        let mut p = Parametrization::preset("chizat-python").unwrap();
        p.alpha = 2.0;
        let r = p.resolve(&dims());
        assert!((r.v.mult - 2.0 / 35.0).abs() < 1e-15);
        assert!((r.u.lr - 315.0 / 4.0).abs() < 1e-12);
        assert!((r.loss - 0.05).abs() < 1e-15);
        let lazy = Parametrization::preset("lazy").unwrap();
        assert_eq!(lazy.alpha, 10.0);
    }

    #[test]
    fn table_round_trips_through_toml_and_rejects_unknown_fields() {
        let p = Parametrization::preset("standard").unwrap();
        let s = toml::to_string(&p).unwrap();
        let back: Parametrization = toml::from_str(&s).unwrap();
        assert_eq!(p, back);
        let bad = s.replace("trained", "trianed");
        assert!(toml::from_str::<Parametrization>(&bad).is_err());
        assert!(matches!(
            Parametrization::preset("nope"),
            Err(ParamError::UnknownPreset(_))
        ));
    }

    #[test]
    fn alpha_zero_freezes_the_branch_unless_a_scale_divides_by_alpha() {
        let mut p = Parametrization::preset("chizat-julia").unwrap();
        p.alpha = 0.0;
        p.check().unwrap();
        assert_eq!(p.resolve(&dims()).v.mult, 0.0);
        let mut p = Parametrization::preset("chizat-python").unwrap();
        p.alpha = 0.0;
        let e = p.check().unwrap_err().to_string();
        assert!(
            e.contains("'alpha' is 0") && e.contains("'U.lr'") && e.contains("alpha^-2"),
            "{e}"
        );
        // Frozen tensors' rates are never used.
        p.u.trained = false;
        p.v.trained = false;
        p.check().unwrap();
        p.alpha = -1.0;
        let e = p.check().unwrap_err().to_string();
        assert!(
            e.contains("'alpha'") && e.contains("non-negative") && e.contains("-1"),
            "{e}"
        );
        p.alpha = f64::NAN;
        assert!(p.check().unwrap_err().to_string().contains("NaN"));
    }

    /// A standard deviation or a learning rate with a negative coefficient is refused,
    /// naming it; a multiplier may be negative, and a frozen tensor's rate is not used.
    #[test]
    fn negative_stds_and_rates_are_refused() {
        let mut p = Parametrization::preset("chizat-julia").unwrap();
        p.u.lr = Scale::constant(-0.5);
        let e = p.check().unwrap_err().to_string();
        assert!(e.contains("'U.lr.c'") && e.contains("-0.5"), "{e}");
        p.u.trained = false;
        p.check().unwrap();
        p.v.init = Scale::constant(-1.0).d(0.5);
        let e = p.check().unwrap_err().to_string();
        assert!(
            e.contains("'V.init.c'") && e.contains("non-negative"),
            "{e}"
        );
        p.v.init = Scale::constant(1.0);
        p.v.mult = Scale::constant(-1.0);
        p.check().unwrap();
    }

    #[test]
    fn scale_display_is_readable() {
        assert_eq!(
            Scale::constant(0.5).l(1.0).m(1.0).d(1.0).to_string(),
            "0.5*L^1*M^1*D^1"
        );
    }
}

/// Partial changes to a preset, as written in a spec's `[param]` table: every field is
/// optional and replaces the preset's value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamOverride {
    /// Branch scale alpha. Default: the preset's (1; 10 for `lazy`); finite, >= 0.
    pub alpha: Option<f64>,
    /// Loss constant: loss = `loss` * sum (f - y)^2, a [`Scale`]. Default: the preset's.
    pub loss: Option<Scale>,
    /// `W_E`: changes to the embedding's row of the table. Default: none.
    #[serde(rename = "W_E")]
    pub we: Option<RoleOverride>,
    /// `U`: changes to the first-layer block weights. Default: none.
    #[serde(rename = "U")]
    pub u: Option<RoleOverride>,
    /// `V`: changes to the second-layer block weights. Default: none.
    #[serde(rename = "V")]
    pub v: Option<RoleOverride>,
    /// `W_U`: changes to the unembedding. Default: none.
    #[serde(rename = "W_U")]
    pub wu: Option<RoleOverride>,
}

/// Partial changes to one role.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleOverride {
    /// Standard deviation of the Gaussian entries at init, a [`Scale`] (coefficient >= 0).
    /// Default: the preset's.
    pub init: Option<Scale>,
    /// Forward multiplier, a [`Scale`] (V's is also multiplied by alpha). Default: the
    /// preset's.
    pub mult: Option<Scale>,
    /// Learning rate, a [`Scale`] (coefficient >= 0) multiplied by the run's eta (`lr`).
    /// Default: the preset's.
    pub lr: Option<Scale>,
    /// Whether GD updates this tensor. Default: the preset's.
    pub trained: Option<bool>,
}

impl ParamOverride {
    pub fn is_empty(&self) -> bool {
        *self == ParamOverride::default()
    }

    /// Applies the changes; the table's name records that it was changed.
    pub fn apply(&self, p: &mut Parametrization) {
        if self.is_empty() {
            return;
        }
        if let Some(a) = self.alpha {
            p.alpha = a;
        }
        if let Some(l) = self.loss {
            p.loss = l;
        }
        for (role, o) in [
            (Role::WE, &self.we),
            (Role::U, &self.u),
            (Role::V, &self.v),
            (Role::WU, &self.wu),
        ] {
            if let Some(o) = o {
                let rp = p.role_mut(role);
                if let Some(x) = o.init {
                    rp.init = x;
                }
                if let Some(x) = o.mult {
                    rp.mult = x;
                }
                if let Some(x) = o.lr {
                    rp.lr = x;
                }
                if let Some(x) = o.trained {
                    rp.trained = x;
                }
            }
        }
        if !p.name.ends_with("+overrides") {
            p.name.push_str("+overrides");
        }
    }
}
