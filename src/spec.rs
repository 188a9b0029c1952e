//! Training specs: what a user writes (TOML file and/or command-line flags), and its
//! validated form [`TrainConfig`], the only thing the engine sees. An example (each field
//! with its default is in `docs/specs.md`):
//!
//! ```toml
//! preset = "chizat-julia"   # chizat-julia | chizat-python | lazy | standard
//! activation = "tanh"       # tanh | relu | gelu | softplus | linear
//! L = 50                    # depth (number of blocks)
//! M = 100                   # hidden width of each block
//! D = 100                   # embedding dimension
//! N = 10                    # training samples
//! din = 5                   # input dimension
//! dout = 5                  # output dimension
//! steps = 15                # GD steps K (records k = 0..K-1)
//! lr = 1.0                  # global learning rate eta
//! seed = 1                  # seed of the block weights U, V
//! embed_seed = 1            # seed of W_E, W_U (default: seed)
//! data_seed = 1             # seed of the synthetic data X, Y
//! dtype = "f64"             # f64 | f32
//! # init_npy = "dir"        # start from X, Y, WE, WU, U, V .npy files instead
//! record_hidden = true      # write h_L at every step (hL.npy)
//! layer_stats = false       # per-layer coordinate statistics (layers.csv)
//! backend = "auto"          # auto | dense | lowrank | regenerated (the GD engine)
//! [param]                   # optional changes to the preset's table (see param.rs)
//! alpha = 1.0
//! U = { lr = { c = 0.5, l = 1, m = 1, d = 1 } }
//! ```

use crate::model::{Activation, Dtype, InitArrays};
use crate::param::{Dims, ParamOverride, Parametrization};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A spec with a problem. Every message names the field (or file) and the bad value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    #[error("spec field '{field}': {why} (got {value})")]
    Invalid {
        field: String,
        value: String,
        why: String,
    },
    /// A command-line flag out of its range.
    #[error("{flag}: {why} (got {value})")]
    Flag {
        flag: String,
        value: String,
        why: String,
    },
    #[error("{path}: {msg}")]
    Parse { path: PathBuf, msg: String },
    #[error("{path}: cannot read the spec: {msg}")]
    Read { path: PathBuf, msg: String },
}

/// [`SpecError::Invalid`]: field `field` has the bad value `value`, for reason `why`.
pub(crate) fn invalid(field: &str, value: impl ToString, why: &str) -> SpecError {
    SpecError::Invalid {
        field: field.into(),
        value: value.to_string(),
        why: why.into(),
    }
}

/// A training spec as written: every field optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSpec {
    /// Parametrization preset: `chizat-julia` (default), `chizat-python`, `lazy` or
    /// `standard` (see [`crate::param`]).
    pub preset: Option<String>,
    /// Activation of the blocks: `tanh` (default), `relu`, `gelu`, `softplus`, `linear`.
    pub activation: Option<String>,
    /// `L`: depth, the number of residual blocks. Default 10; integer >= 1.
    #[serde(rename = "L")]
    pub l: Option<i64>,
    /// `M`: hidden width of each block. Default 50; integer >= 1.
    #[serde(rename = "M")]
    pub m: Option<i64>,
    /// `D`: embedding dimension (width of the residual stream). Default 50; integer >= 1.
    #[serde(rename = "D")]
    pub d: Option<i64>,
    /// `N`: number of training samples. Default 10; integer >= 1.
    #[serde(rename = "N")]
    pub n: Option<i64>,
    /// Input dimension d_in. Default 5; integer >= 1.
    pub din: Option<i64>,
    /// Output dimension d_out. Default 5; integer >= 1.
    pub dout: Option<i64>,
    /// GD steps K, a count (records k = 0..K-1). Default 15; integer >= 1.
    pub steps: Option<i64>,
    /// Global learning rate eta, multiplies every role's rate. Default 1.0; finite, >= 0.
    pub lr: Option<f64>,
    /// Seed of the block weights U, V. Default 1; any u64.
    pub seed: Option<u64>,
    /// Seed of the embeddings W_E, W_U. Default: `seed`; any u64.
    pub embed_seed: Option<u64>,
    /// Seed of the synthetic data X, Y (standard Gaussian). Default 1; any u64.
    pub data_seed: Option<u64>,
    /// Precision of training: `f64` (default) or `f32`.
    pub dtype: Option<String>,
    /// Directory of X, Y, WE, WU, U, V `.npy` files to start from instead of the seeded
    /// draws; the shapes come from the arrays. Default: none.
    pub init_npy: Option<PathBuf>,
    /// Write h_L at every step (`hL.npy`). Default true.
    pub record_hidden: Option<bool>,
    /// Write per-layer coordinate statistics (`layers.csv`). Default false.
    pub layer_stats: Option<bool>,
    /// The engine of the GD step ([`Backend`]): `auto` (default), `dense`, `lowrank` or
    /// `regenerated`.
    pub backend: Option<String>,
    /// `[param]`: changes to the preset's table ([`ParamOverride`]). Default: none.
    pub param: Option<ParamOverride>,
}

/// Reads and parses a TOML file into `T`, with errors naming the file.
pub fn read_toml<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, SpecError> {
    let text = std::fs::read_to_string(path).map_err(|e| SpecError::Read {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })?;
    toml::from_str(&text).map_err(|e| SpecError::Parse {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })
}

/// The defaults that sweep and limit specs share: the papers' scaling
/// (`chizat-julia`), tanh blocks, eta = 1.
pub(crate) fn default_preset() -> String {
    "chizat-julia".into()
}
pub(crate) fn default_activation() -> String {
    "tanh".into()
}
pub(crate) fn default_lr() -> f64 {
    1.0
}

/// Checks an experiment's `name` (field `field`), which names its default output
/// directory `runs/<name>`: not empty, at most 200 bytes, no path separator or NUL, not
/// `.` or `..`, so that the default directory stays inside `runs/`.
pub fn check_name(field: &str, name: &str) -> Result<(), SpecError> {
    let why = if name.is_empty() {
        Some("must not be empty")
    } else if name.len() > 200 {
        Some("must be at most 200 bytes")
    } else if name.contains(['/', '\\', '\0']) {
        Some("must not contain '/', '\\' or NUL (it names the directory runs/<name>)")
    } else if name == "." || name == ".." {
        Some("must not be '.' or '..' (it names the directory runs/<name>)")
    } else {
        None
    };
    match why {
        Some(why) => Err(SpecError::Invalid {
            field: field.into(),
            value: format!("{name:?}"),
            why: why.into(),
        }),
        None => Ok(()),
    }
}

impl TrainSpec {
    pub fn from_file(path: &Path) -> Result<Self, SpecError> {
        read_toml(path)
    }

    /// `self` with every field that `over` sets replaced (flags override the file).
    pub fn overridden_by(self, over: TrainSpec) -> TrainSpec {
        macro_rules! pick {
            ($($f:ident)*) => { TrainSpec { $($f: over.$f.or(self.$f),)* } };
        }
        pick!(preset activation l m d n din dout steps lr seed embed_seed data_seed dtype init_npy record_hidden layer_stats backend param)
    }

    /// Validates the spec into a [`TrainConfig`]. With `init_npy`, the shapes come from
    /// the arrays, and any dimension also given must agree with them.
    pub fn check(&self) -> Result<TrainConfig, SpecError> {
        self.check_with(None)
    }

    /// [`TrainSpec::check`] for a run that starts from `init` arrays (the Python
    /// package's `init=`) when given: the shapes come from them ([`InitArrays::dims`]),
    /// and any dimension also given must agree, as with `init_npy` (which cannot be given
    /// as well).
    pub fn check_with(&self, init: Option<Arc<InitArrays>>) -> Result<TrainConfig, SpecError> {
        let preset = self.preset.clone().unwrap_or_else(|| "chizat-julia".into());
        let mut param = Parametrization::preset(&preset)
            .map_err(|e| invalid("preset", &preset, &e.to_string()))?;
        if let Some(o) = &self.param {
            o.apply(&mut param);
        }
        param
            .check()
            .map_err(|e| invalid("param", &param.name, &e.to_string()))?;
        let activation: Activation = self
            .activation
            .as_deref()
            .unwrap_or("tanh")
            .parse()
            .map_err(|e: String| {
                invalid("activation", self.activation.as_deref().unwrap_or(""), &e)
            })?;
        let dim = |field: &str, v: Option<i64>, default: i64| -> Result<usize, SpecError> {
            let x = v.unwrap_or(default);
            if x <= 0 {
                return Err(invalid(field, x, "must be a positive integer"));
            }
            Ok(x as usize)
        };
        let mut dims = Dims {
            l: dim("L", self.l, 10)?,
            m: dim("M", self.m, 50)?,
            d: dim("D", self.d, 50)?,
            din: dim("din", self.din, 5)?,
            dout: dim("dout", self.dout, 5)?,
            n: dim("N", self.n, 10)?,
        };
        if let Some(dir) = &self.init_npy {
            if !dir.is_dir() {
                return Err(invalid(
                    "init_npy",
                    dir.display(),
                    "is not a directory (expected X.npy, Y.npy, WE.npy, WU.npy, U.npy, V.npy)",
                ));
            }
            let data = crate::model::data_from_npy_dir(dir)
                .map_err(|e| invalid("init_npy", dir.display(), &e.to_string()))?;
            let (l, m, d) = crate::model::blocks_shape_from_npy_dir(dir)
                .map_err(|e| invalid("init_npy", dir.display(), &e.to_string()))?;
            let from_files = Dims {
                l,
                m,
                d,
                din: data.din,
                dout: data.dout,
                n: data.n,
            };
            for (field, given, found) in [
                ("L", self.l, l),
                ("M", self.m, m),
                ("D", self.d, d),
                ("din", self.din, data.din),
                ("dout", self.dout, data.dout),
                ("N", self.n, data.n),
            ] {
                if let Some(g) = given
                    && g != found as i64
                {
                    return Err(invalid(
                        field,
                        g,
                        &format!("disagrees with the arrays of {} ({found})", dir.display()),
                    ));
                }
            }
            dims = from_files;
        }
        if let Some(arrays) = &init {
            if let Some(dir) = &self.init_npy {
                return Err(invalid(
                    "init_npy",
                    dir.display(),
                    "give init_npy or init arrays, not both",
                ));
            }
            let found = arrays
                .dims()
                .map_err(|e| invalid("init", "arrays", &e.to_string()))?;
            for (field, given, found) in [
                ("L", self.l, found.l),
                ("M", self.m, found.m),
                ("D", self.d, found.d),
                ("din", self.din, found.din),
                ("dout", self.dout, found.dout),
                ("N", self.n, found.n),
            ] {
                if let Some(g) = given
                    && g != found as i64
                {
                    return Err(invalid(
                        field,
                        g,
                        &format!("disagrees with the init arrays ({found})"),
                    ));
                }
            }
            dims = found;
        }
        let steps = self.steps.unwrap_or(15);
        if steps <= 0 {
            return Err(invalid("steps", steps, "must be a positive integer"));
        }
        let eta = self.lr.unwrap_or(1.0);
        if !eta.is_finite() || eta < 0.0 {
            return Err(invalid("lr", eta, "must be a finite non-negative number"));
        }
        let dtype = match self.dtype.as_deref().unwrap_or("f64") {
            "f64" => Dtype::F64,
            "f32" => Dtype::F32,
            other => return Err(invalid("dtype", other, "must be f64 or f32")),
        };
        let backend: Backend = match &self.backend {
            None => Backend::Auto,
            Some(b) => b.parse().map_err(|e: String| invalid("backend", b, &e))?,
        };
        let seed = self.seed.unwrap_or(1);
        let cfg = TrainConfig {
            dims,
            param,
            activation,
            steps: steps as usize,
            eta,
            seed,
            embed_seed: self.embed_seed.unwrap_or(seed),
            data_seed: self.data_seed.unwrap_or(1),
            dtype,
            init_npy: self.init_npy.clone(),
            init_arrays: init,
            record_hidden: self.record_hidden.unwrap_or(true),
            layer_stats: self.layer_stats.unwrap_or(false),
            backend,
        };
        match cfg.refuses(backend) {
            Some(e) => Err(e),
            None => Ok(cfg),
        }
    }
}

/// A checked training configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrainConfig {
    pub dims: Dims,
    pub param: Parametrization,
    pub activation: Activation,
    pub steps: usize,
    /// Global learning rate eta.
    pub eta: f64,
    /// Seed of U, V.
    pub seed: u64,
    /// Seed of W_E, W_U.
    pub embed_seed: u64,
    /// Seed of the synthetic data.
    pub data_seed: u64,
    pub dtype: Dtype,
    pub init_npy: Option<PathBuf>,
    /// Start from these arrays ([`TrainSpec::check_with`]); recorded by their shapes.
    #[serde(
        serialize_with = "init_shapes",
        skip_serializing_if = "Option::is_none"
    )]
    pub init_arrays: Option<Arc<InitArrays>>,
    pub record_hidden: bool,
    pub layer_stats: bool,
    /// The engine asked for; `auto` is resolved against the memory before the run
    /// (`run::estimate`).
    pub backend: Backend,
}

fn init_shapes<S: serde::Serializer>(
    init: &Option<Arc<InitArrays>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    init.as_ref().map(|a| a.shapes()).serialize(s)
}

impl TrainConfig {
    pub fn dtype_name(&self) -> &'static str {
        match self.dtype {
            Dtype::F64 => "f64",
            Dtype::F32 => "f32",
        }
    }

    /// The field of this config that rules out `engine`, if any: `layer_stats` (the
    /// statistics need the dense step's per-layer weights) for `lowrank` and
    /// `regenerated`; `init_npy` or `init` (initial weights given as arrays cannot be
    /// regenerated from their seed) for `regenerated`.
    pub fn rules_out(&self, engine: Backend) -> Option<&'static str> {
        match engine {
            Backend::Auto | Backend::Dense => None,
            _ if self.layer_stats => Some("layer_stats"),
            Backend::Lowrank => None,
            Backend::Regenerated if self.init_npy.is_some() => Some("init_npy"),
            Backend::Regenerated if self.init_arrays.is_some() => Some("init"),
            Backend::Regenerated => None,
        }
    }

    /// [`TrainConfig::rules_out`] as the error of a spec that asks for `engine`, naming
    /// both fields and their values.
    pub fn refuses(&self, engine: Backend) -> Option<SpecError> {
        let why = match self.rules_out(engine)? {
            "layer_stats" => "'layer_stats' = true needs the dense engine (the low-rank \
                engines keep no per-layer weights to take statistics of): use \"auto\" or \
                \"dense\", or 'layer_stats' = false"
                .to_string(),
            "init_npy" => format!(
                "'init_npy' = {} gives the initial weights as arrays, which cannot be \
                 regenerated from a seed: use \"auto\", \"dense\" or \"lowrank\"",
                self.init_npy.as_deref().unwrap_or(Path::new("")).display()
            ),
            _ => "the 'init' arrays give the initial weights, which cannot be regenerated \
                from a seed: use \"auto\", \"dense\" or \"lowrank\""
                .to_string(),
        };
        Some(invalid("backend", engine.name(), &why))
    }
}

/// The engine of the GD step, for a training run (`backend` of a train spec) and for a
/// sweep's tasks (`backend` of a sweep spec, `sweep::Strategy`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The dense step, or the low-rank step where it is cheaper
    /// ([`crate::factored::worth_it`]); the regenerated one when neither fits in memory.
    #[default]
    Auto,
    /// The dense step ([`crate::train`]): the weights stored and updated in place.
    Dense,
    /// The low-rank step ([`crate::factored`]) over stored initial weights.
    Lowrank,
    /// The low-rank step with the initial weights regenerated in row blocks inside each
    /// pass, never stored ([`crate::factored::Init::Regenerated`]): memory grows like
    /// L K N (M + D) instead of L M D.
    Regenerated,
}

impl Backend {
    /// The three engines, in the order estimates list them.
    pub const ENGINES: [Backend; 3] = [Backend::Dense, Backend::Lowrank, Backend::Regenerated];

    pub fn is_auto(&self) -> bool {
        *self == Backend::Auto
    }

    /// The name a spec gives it.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Auto => "auto",
            Backend::Dense => "dense",
            Backend::Lowrank => "lowrank",
            Backend::Regenerated => "regenerated",
        }
    }
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Backend::Auto),
            "dense" => Ok(Backend::Dense),
            "lowrank" => Ok(Backend::Lowrank),
            "regenerated" => Ok(Backend::Regenerated),
            _ => Err("must be auto, dense, lowrank or regenerated".into()),
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_field_and_value() {
        let s = TrainSpec {
            m: Some(-3),
            ..Default::default()
        };
        let e = s.check().unwrap_err().to_string();
        assert!(e.contains("'M'") && e.contains("-3"), "{e}");
        let s = TrainSpec {
            activation: Some("sigmoidal".into()),
            ..Default::default()
        };
        let e = s.check().unwrap_err().to_string();
        assert!(e.contains("activation") && e.contains("sigmoidal"), "{e}");
        let s = TrainSpec {
            preset: Some("mup".into()),
            ..Default::default()
        };
        assert!(s.check().unwrap_err().to_string().contains("mup"));
        let e = toml::from_str::<TrainSpec>("L = 5\nwidht = 3\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("widht"), "{e}");
        let s = TrainSpec {
            init_npy: Some("/nonexistent/dir".into()),
            ..Default::default()
        };
        assert!(
            s.check()
                .unwrap_err()
                .to_string()
                .contains("/nonexistent/dir")
        );
    }

    #[test]
    fn flags_override_the_file_and_param_overrides_apply() {
        let file: TrainSpec =
            toml::from_str("L = 5\nM = 7\npreset = \"chizat-python\"\n[param]\nalpha = 3.0\nU = { trained = false }\n")
                .unwrap();
        let flags = TrainSpec {
            m: Some(9),
            ..Default::default()
        };
        let c = file.overridden_by(flags).check().unwrap();
        assert_eq!((c.dims.l, c.dims.m), (5, 9));
        assert_eq!(c.param.alpha, 3.0);
        assert!(!c.param.u.trained);
        assert_eq!(c.param.name, "chizat-python+overrides");
    }
}
