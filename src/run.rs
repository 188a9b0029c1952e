//! One training run from a checked [`TrainConfig`]: initialise, train, and write the run
//! directory.
//!
//! A run directory holds (all written atomically):
//! - `losses.npy` (K,), `outputs.npy` (K, d_out, N), `hL.npy` (K, D, N): record k is the
//!   forward pass before update k, exactly the layout of `shared/reference/README.md`;
//! - `steps.csv`: one row per step (`step, loss, output_rms`);
//! - `layers.csv` (with `layer_stats`): one row per step and layer;
//! - `metadata.json`: the config, the parametrization table and its resolved numbers,
//!   seeds, versions, the kernels' instruction set, threads and timings, the engine that
//!   ran (`backend`) and the one asked for (`backend_requested`), and the memory
//!   estimate of every engine (`memory`).
//!
//! **Engines.** The GD step runs on one of three engines (the spec's `backend`,
//! [`Backend`]): the dense step ([`train::train`]), the low-rank step over the stored
//! initial weights ([`factored::Init::Stored`]), or the low-rank step with the initial
//! weights regenerated inside each pass ([`factored::Init::Regenerated`], never stored).
//! All three write the same files, with the same numbers to rounding; layer statistics
//! need the dense one. [`estimate`] computes the peak bytes of every engine before
//! anything is allocated and picks the engine for `auto` ([`MemoryEstimate`]): the
//! dense step, or the low-rank one where it is cheaper ([`factored::worth_it`]), or the
//! regenerated one when the stored one exceeds [`MEMORY_FRACTION`] of the available
//! memory and the regenerated one does not; a run that fits under no engine is refused
//! ([`RunError::DoesNotFit`]).
//!
//! The directory is written as a unit: every file goes into a temporary directory beside
//! it ([`io::temp_name`]), which is renamed into place when complete, so a run that fails
//! midway (a full disk, a kill) leaves no partial run directory, and an earlier run in the
//! same place is replaced whole, never mixed with the new one. [`check_out_dir`] refuses,
//! before any training, a place that holds something other than a run directory.

use crate::Result;
use crate::cancel::Cancel;
use crate::cpu::Par;
use crate::factored;
use crate::io::{self, IoError};
use crate::memory::{self, Available, MemoryError};
use crate::model::{self, BlockLayout, Data, Dtype, Real, Weights};
use crate::param::{Dims, Resolved};
use crate::spec::{Backend, TrainConfig};
use crate::train::{self, History, TrainOptions};
use serde::Serialize;
use std::path::Path;
use std::time::Instant;

/// The share of the available memory that `backend = "auto"` plans a run's engine for
/// (the rest is headroom for what the estimates leave out): [`memory::FRACTION`], as a
/// sweep's.
pub const MEMORY_FRACTION: f64 = memory::FRACTION;

/// A finished run.
#[derive(Debug, Clone)]
pub struct RunOutput {
    pub history: History,
    pub resolved: Resolved,
    pub timings: Timings,
    /// The memory estimate of every engine and the engine that ran
    /// ([`MemoryEstimate::chosen`]).
    pub memory: MemoryEstimate,
}

impl RunOutput {
    /// The engine that ran (never [`Backend::Auto`]).
    pub fn backend(&self) -> Backend {
        self.memory.chosen
    }
}

/// A run that cannot start.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The run fits under none of the engines it may use (or under the one asked for):
    /// `shape` names L, M, D, N, steps and dtype; `estimate` holds every engine's bytes
    /// and the bytes available.
    #[error("{}", does_not_fit(shape, estimate))]
    DoesNotFit {
        shape: String,
        estimate: Box<MemoryEstimate>,
    },
}

/// The peak bytes of a run under each engine, the memory available, and the engine
/// chosen ([`estimate`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemoryEstimate {
    /// The engine the spec asked for (may be `auto`).
    pub requested: Backend,
    /// The engine that runs (never `auto`).
    pub chosen: Backend,
    /// Bytes at the peak with the dense step; `None` when the count overflows.
    pub dense: Option<usize>,
    /// Bytes with the low-rank step over stored initial weights.
    pub lowrank: Option<usize>,
    /// Bytes with the regenerated initial weights.
    pub regenerated: Option<usize>,
    /// The engines this config cannot use, each with the field that rules it out
    /// ([`TrainConfig::rules_out`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ruled_out: Vec<(Backend, &'static str)>,
    /// The memory available (`usize::MAX` bytes when no limit is known) and what set it.
    pub available: Available,
}

impl MemoryEstimate {
    /// The bytes of `engine` (`None`: the count overflows, or `engine` is `auto`).
    pub fn bytes(&self, engine: Backend) -> Option<usize> {
        match engine {
            Backend::Dense => self.dense,
            Backend::Lowrank => self.lowrank,
            Backend::Regenerated => self.regenerated,
            Backend::Auto => None,
        }
    }

    /// One line: every engine's bytes, the chosen one and the memory available, e.g.
    /// `dense 1.61 GB, lowrank 1.62 GB, regenerated 4.80 MB (chosen: regenerated by auto;
    /// available 1.20 GB: RESLIM_MEMORY_LIMIT)`.
    pub fn line(&self) -> String {
        let engines: Vec<String> = Backend::ENGINES
            .iter()
            .map(|&e| self.engine_bytes(e, ""))
            .collect();
        format!(
            "{} (chosen: {}{}; available {})",
            engines.join(", "),
            self.chosen,
            if self.requested.is_auto() {
                " by auto"
            } else {
                ""
            },
            available_size(&self.available)
        )
    }

    /// `engine` and its bytes (`verb` between them), with the field that rules it out.
    fn engine_bytes(&self, engine: Backend, verb: &str) -> String {
        let bytes = match self.bytes(engine) {
            Some(b) => format!("{verb}{}", size(b)),
            None => "overflows".to_string(),
        };
        match self.ruled_out.iter().find(|(e, _)| *e == engine) {
            Some((_, field)) => format!("{engine} {bytes} (not with '{field}')"),
            None => format!("{engine} {bytes}"),
        }
    }
}

/// Bytes with three significant digits in decimal units (`4.80 MB`, `19.8 GB`).
fn size(bytes: usize) -> String {
    let b = bytes as f64;
    let (v, unit) = [(1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "kB")]
        .into_iter()
        .find(|&(u, _)| b >= u)
        .map_or((b, "B"), |(u, name)| (b / u, name));
    if unit == "B" {
        format!("{bytes} B")
    } else if v < 10.0 {
        format!("{v:.2} {unit}")
    } else if v < 100.0 {
        format!("{v:.1} {unit}")
    } else {
        format!("{v:.0} {unit}")
    }
}

/// The memory available and what set it: `19.8 GB: cgroup v2 limit`.
fn available_size(a: &Available) -> String {
    if a.bytes == usize::MAX {
        format!("unlimited: {}", a.source)
    } else {
        format!("{}: {}", size(a.bytes), a.source)
    }
}

/// The message of [`RunError::DoesNotFit`].
fn does_not_fit(shape: &str, e: &MemoryEstimate) -> String {
    let with_bytes = |engine: Backend| match e.bytes(engine) {
        Some(b) => format!("{} ({b} bytes)", size(b)),
        None => "a size that overflows".to_string(),
    };
    let avail = if e.available.bytes == usize::MAX {
        format!("no limit known ({})", e.available.source)
    } else {
        format!(
            "{} ({} bytes) available ({})",
            size(e.available.bytes),
            e.available.bytes,
            e.available.source
        )
    };
    if e.requested.is_auto() {
        let each: Vec<String> = Backend::ENGINES
            .iter()
            .map(|&x| {
                let mut s = format!("{x} needs {}", with_bytes(x));
                if let Some((_, f)) = e.ruled_out.iter().find(|(y, _)| *y == x) {
                    s.push_str(&format!(" (not with '{f}')"));
                }
                s
            })
            .collect();
        format!(
            "{shape} fits under no backend: {}; {avail}",
            each.join(", ")
        )
    } else {
        let others: Vec<String> = Backend::ENGINES
            .iter()
            .filter(|&&x| x != e.requested)
            .map(|&x| format!("{x} {}", with_bytes(x)))
            .collect();
        format!(
            "{shape} with backend = \"{}\" needs {}, {avail} (the other backends would need: {})",
            e.requested,
            with_bytes(e.requested),
            others.join(", ")
        )
    }
}

/// Wall-clock seconds of a run's phases.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Timings {
    pub init_s: f64,
    pub train_s: f64,
    pub per_step_s: f64,
}

/// Initialises and trains the model of `cfg` on the engine that [`estimate`] picks
/// against [`memory::available`]. `on_step(k, loss)` is called after each step; once
/// `cancel` is set, training stops before its next step
/// ([`train::TrainError::Cancelled`]).
pub fn execute(
    cfg: &TrainConfig,
    par: Par,
    cancel: &Cancel,
    on_step: &mut dyn FnMut(usize, f64),
) -> Result<RunOutput> {
    let est = estimate(cfg, memory::available()?)?;
    execute_with(cfg, &est, par, cancel, on_step)
}

/// [`execute`] on the engine of `est` ([`MemoryEstimate::chosen`]), an estimate of
/// `cfg` that the caller has made (and shown) first.
pub fn execute_with(
    cfg: &TrainConfig,
    est: &MemoryEstimate,
    par: Par,
    cancel: &Cancel,
    on_step: &mut dyn FnMut(usize, f64),
) -> Result<RunOutput> {
    let engine = match est.chosen {
        Backend::Auto => return Err(no_engine(cfg)),
        e => e,
    };
    if let Some(e) = cfg.refuses(engine) {
        return Err(e.into());
    }
    match cfg.dtype {
        Dtype::F64 => execute_t::<f64>(cfg, est, engine, par, cancel, on_step),
        Dtype::F32 => execute_t::<f32>(cfg, est, engine, par, cancel, on_step),
    }
}

/// The error of an estimate whose engine is still `auto` (not made by [`estimate`]).
fn no_engine(cfg: &TrainConfig) -> crate::Error {
    crate::spec::SpecError::Invalid {
        field: "backend".into(),
        value: cfg.backend.name().into(),
        why: "the memory estimate names no engine (make it with run::estimate)".into(),
    }
    .into()
}

/// The bytes of every engine for `cfg` ([`bytes`]) and the engine the run uses, against
/// `available` (normally [`memory::available`]; tests and callers with a budget of
/// their own pass theirs):
/// - an engine asked for by name must fit in `available`;
/// - `auto` takes the first of (the dense step, or the low-rank one where
///   [`factored::worth_it`]; then the regenerated one; then the other stored one) that
///   fits in [`MEMORY_FRACTION`] of `available`, else the first that fits in all of it,
///   skipping the engines the config rules out ([`TrainConfig::rules_out`]).
///
/// A run that fits under none is refused ([`RunError::DoesNotFit`], naming the shape,
/// every engine's bytes and the bytes available); when every count it could use
/// overflows, the overflow of the first, naming the quantities.
pub fn estimate(cfg: &TrainConfig, available: Available) -> Result<MemoryEstimate> {
    let all = Backend::ENGINES.map(|e| bytes(cfg, e));
    let of = |e: Backend| &all[Backend::ENGINES.iter().position(|&x| x == e).unwrap_or(0)];
    let candidates: Vec<Backend> = match cfg.backend {
        Backend::Auto => {
            let preferred = if factored::worth_it(&cfg.dims, cfg.steps, 1) {
                Backend::Lowrank
            } else {
                Backend::Dense
            };
            let other = if preferred == Backend::Dense {
                Backend::Lowrank
            } else {
                Backend::Dense
            };
            [preferred, Backend::Regenerated, other]
                .into_iter()
                .filter(|&e| cfg.rules_out(e).is_none())
                .collect()
        }
        e => {
            if let Some(err) = cfg.refuses(e) {
                return Err(err.into());
            }
            vec![e]
        }
    };
    let budget = available.scaled(MEMORY_FRACTION).bytes;
    let fits = |e: Backend, limit: usize| of(e).as_ref().is_ok_and(|&b| b <= limit);
    let chosen = candidates
        .iter()
        .copied()
        .find(|&e| fits(e, budget))
        .or_else(|| {
            candidates
                .iter()
                .copied()
                .find(|&e| fits(e, available.bytes))
        });
    let est = MemoryEstimate {
        requested: cfg.backend,
        chosen: chosen.unwrap_or(candidates[0]),
        dense: all[0].as_ref().ok().copied(),
        lowrank: all[1].as_ref().ok().copied(),
        regenerated: all[2].as_ref().ok().copied(),
        ruled_out: Backend::ENGINES
            .iter()
            .filter_map(|&e| cfg.rules_out(e).map(|f| (e, f)))
            .collect(),
        available,
    };
    if chosen.is_some() {
        return Ok(est);
    }
    if let Some(Err(overflow)) = candidates
        .iter()
        .all(|&e| of(e).is_err())
        .then(|| of(candidates[0]))
    {
        return Err(overflow.clone().into());
    }
    let d = &cfg.dims;
    Err(RunError::DoesNotFit {
        shape: format!(
            "training with 'L' = {}, 'M' = {}, 'D' = {}, 'N' = {}, 'steps' = {}, 'dtype' = {}",
            d.l,
            d.m,
            d.d,
            d.n,
            cfg.steps,
            cfg.dtype_name()
        ),
        estimate: Box::new(est),
    }
    .into())
}

/// The data of a config: the NPY arrays, or the seeded synthetic regression.
pub fn load_data(cfg: &TrainConfig) -> Result<Data> {
    Ok(match (&cfg.init_arrays, &cfg.init_npy) {
        (Some(a), _) => a.data(),
        (None, Some(dir)) => model::data_from_npy_dir(dir)?,
        (None, None) => Data::synthetic(cfg.dims.din, cfg.dims.dout, cfg.dims.n, cfg.data_seed),
    })
}

/// Bytes a run of `cfg` needs at its peak on `engine` (`auto`: the dense step),
/// estimated before anything is allocated: the data, the records (losses and outputs at
/// every step, h_L with `record_hidden`, per-layer statistics), the largest file written
/// at the end, with `init_npy` the f64 arrays U, V and one file's bytes while they are
/// read, and
/// - dense: the weights (twice with `layer_stats`, which keeps the initial ones) and the
///   step's workspace;
/// - lowrank: the weights and the factors ([`factored::bytes`], one network);
/// - regenerated: the embeddings, the factors and the block of regenerated rows
///   ([`factored::regen_scratch_bytes`]).
///
/// An error naming the quantities if the count overflows.
pub fn bytes(cfg: &TrainConfig, engine: Backend) -> Result<usize, MemoryError> {
    let d = &cfg.dims;
    let k = cfg.steps;
    let engine_bytes = match cfg.dtype {
        Dtype::F64 => engine_bytes::<f64>(cfg, engine)?,
        Dtype::F32 => engine_bytes::<f32>(cfg, engine)?,
    };
    let io = memory::sum(&[("din", d.din), ("dout", d.dout)])?;
    let data = memory::product(&[("N", d.n), ("din + dout", io), ("8", 8)])?;
    let outputs = memory::product(&[("steps", k), ("dout", d.dout), ("N", d.n), ("8", 8)])?;
    let hidden = if cfg.record_hidden {
        memory::product(&[("steps", k), ("D", d.d), ("N", d.n), ("8", 8)])?
    } else {
        0
    };
    let l1 = memory::sum(&[("L", d.l), ("1", 1)])?;
    let layers = if cfg.layer_stats {
        // A LayerStat in memory and its CSV row (about 100 bytes).
        let per = std::mem::size_of::<train::LayerStat>() + 100;
        memory::product(&[("steps", k), ("L + 1", l1), ("bytes per layer", per)])?
    } else {
        0
    };
    // losses.npy and steps.csv (about 40 bytes a row).
    let per_step = memory::product(&[("steps", k), ("48", 48)])?;
    let npy = match &cfg.init_npy {
        Some(_) => memory::product(&[("3", 3), ("L", d.l), ("M", d.m), ("D", d.d), ("8", 8)])?,
        None => 0,
    };
    memory::sum(&[
        (engine.name(), engine_bytes),
        ("data", data),
        ("outputs", outputs),
        ("hidden", hidden),
        ("largest file", outputs.max(hidden)),
        ("layer statistics", layers),
        ("per-step records", per_step),
        ("init_npy arrays", npy),
        (
            "init arrays (a copy)",
            cfg.init_arrays.as_ref().map_or(0, |a| a.bytes()),
        ),
    ])
}

/// The weights and the engine's own buffers ([`bytes`]).
fn engine_bytes<T: Real>(cfg: &TrainConfig, engine: Backend) -> Result<usize, MemoryError> {
    let d = &cfg.dims;
    let factors = || factored::bytes::<T>(d, cfg.steps, 1);
    match engine {
        Backend::Auto | Backend::Dense => {
            let copies = if cfg.layer_stats { 2 } else { 1 };
            memory::sum(&[
                (
                    "weights",
                    memory::product(&[
                        ("copies", copies),
                        ("weight bytes", Weights::<T>::bytes(d)?),
                    ])?,
                ),
                ("workspace", train::Workspace::<T>::bytes(d)?),
            ])
        }
        Backend::Lowrank => memory::sum(&[
            ("weights", Weights::<T>::bytes(d)?),
            ("factors", factors()?),
        ]),
        Backend::Regenerated => memory::sum(&[
            ("embeddings", Weights::<T>::bytes(&Dims { l: 0, ..*d })?),
            ("factors", factors()?),
            (
                "regenerated block",
                factored::regen_scratch_bytes::<T>(d.m, d.d)?,
            ),
        ]),
    }
}

fn execute_t<T: Real>(
    cfg: &TrainConfig,
    est: &MemoryEstimate,
    engine: Backend,
    par: Par,
    cancel: &Cancel,
    on_step: &mut dyn FnMut(usize, f64),
) -> Result<RunOutput> {
    let t0 = Instant::now();
    let resolved = cfg.param.resolve(&cfg.dims);
    let data = load_data(cfg)?;
    // The regenerated engine never holds the block weights: the embeddings alone.
    let drawn = match engine {
        Backend::Regenerated => Dims { l: 0, ..cfg.dims },
        _ => cfg.dims,
    };
    let mut w: Weights<T> = match (&cfg.init_arrays, &cfg.init_npy) {
        (Some(a), _) => a.weights(&cfg.dims),
        (None, Some(dir)) => Weights::from_npy_dir(dir, &cfg.dims)?,
        (None, None) => Weights::draw(&drawn, &resolved, cfg.embed_seed, cfg.seed, par),
    };
    let init_s = t0.elapsed().as_secs_f64();
    let opts = TrainOptions {
        steps: cfg.steps,
        eta: cfg.eta,
        activation: cfg.activation,
        record_hidden: cfg.record_hidden,
        layer_stats: cfg.layer_stats,
        cancel: cancel.clone(),
        ..TrainOptions::default()
    };
    let t1 = Instant::now();
    let history = match engine {
        Backend::Auto | Backend::Dense => {
            train::train(&mut w, &data, &resolved, &opts, par, on_step)?
        }
        Backend::Lowrank | Backend::Regenerated => {
            // The factored engines read U_l^T(0), V_l^T(0) as M rows of length D.
            w.lay_out(BlockLayout::RowsD);
            let mut variant = [factored::Variant {
                we: std::mem::take(&mut w.we),
                wu: std::mem::take(&mut w.wu),
                record_hidden: cfg.record_hidden,
            }];
            let init = match engine {
                Backend::Regenerated => factored::Init::Regenerated {
                    block_seed: cfg.seed,
                    std_u: resolved.u.std,
                    std_v: resolved.v.std,
                },
                _ => factored::Init::Stored {
                    ut0: &w.ut,
                    vt0: &w.vt,
                },
            };
            let mut hs = factored::train_shared_observed(
                &cfg.dims,
                init,
                &mut variant,
                &data,
                &resolved,
                &opts,
                par,
                &mut |k, losses| on_step(k, losses[0]),
            )?;
            hs.pop().unwrap_or_default()
        }
    };
    let train_s = t1.elapsed().as_secs_f64();
    Ok(RunOutput {
        history,
        resolved,
        timings: Timings {
            init_s,
            train_s,
            per_step_s: train_s / cfg.steps as f64,
        },
        memory: est.clone(),
    })
}

#[derive(Serialize)]
struct Metadata<'a> {
    reslim_version: &'static str,
    created_unix_s: u64,
    config: &'a TrainConfig,
    /// The engine that ran.
    backend: Backend,
    /// The engine asked for (`config.backend`).
    backend_requested: Backend,
    /// Every engine's bytes, the memory available.
    memory: &'a MemoryEstimate,
    resolved: &'a Resolved,
    timings: &'a Timings,
    threads: usize,
    isa: String,
    final_loss: Option<f64>,
    files: Vec<&'static str>,
}

/// Whether `dir` may receive a run directory: it does not exist, is empty, or holds an
/// earlier run (a `metadata.json`), which [`write_run_dir`] then replaces. Anything else
/// (a file, a directory of other things) is refused, naming it, so that a mistyped
/// `--out` never deletes someone's files. Call it before training.
pub fn check_out_dir(dir: &Path) -> Result<(), IoError> {
    io::check_out_dir(dir, "metadata.json", "run")
}

/// Writes the run directory `dir` as a unit (see the module docs): the files go into a
/// temporary directory beside `dir`, which then replaces `dir` (an earlier run there is
/// removed; anything else there is refused, [`check_out_dir`]). On an error nothing is
/// left behind.
pub fn write_run_dir(dir: &Path, cfg: &TrainConfig, out: &RunOutput) -> Result<(), IoError> {
    check_out_dir(dir)?;
    io::write_dir_as_unit(dir, |tmp| write_run_files(tmp, cfg, out))
}

/// The files of a run directory, written into `dir`.
fn write_run_files(dir: &Path, cfg: &TrainConfig, out: &RunOutput) -> Result<(), IoError> {
    std::fs::create_dir_all(dir).map_err(|source| IoError::Os {
        path: dir.to_path_buf(),
        source,
    })?;
    let h = &out.history;
    let k = h.losses.len();
    let (d, n, dout) = (cfg.dims.d, cfg.dims.n, cfg.dims.dout);
    io::write_npy(&dir.join("losses.npy"), &[k], &h.losses)?;
    io::write_npy(&dir.join("outputs.npy"), &[k, dout, n], &h.outputs)?;
    if cfg.record_hidden {
        io::write_npy(&dir.join("hL.npy"), &[k, d, n], &h.hidden)?;
    }
    let mut csv = String::from("step,loss,output_rms\n");
    for (s, loss) in h.losses.iter().enumerate() {
        let f = &h.outputs[s * dout * n..(s + 1) * dout * n];
        let rms = (f.iter().map(|x| x * x).sum::<f64>() / f.len().max(1) as f64).sqrt();
        csv.push_str(&format!("{s},{loss:e},{rms:e}\n"));
    }
    io::atomic_write(&dir.join("steps.csv"), csv.as_bytes())?;
    if cfg.layer_stats {
        let mut csv =
            String::from("step,layer,rms_h,rms_branch,rms_du,rms_dv,rms_dh,rms_dbranch,rms_g\n");
        for s in &h.layer_stats {
            csv.push_str(&format!(
                "{},{},{:e},{:e},{:e},{:e},{:e},{:e},{:e}\n",
                s.step,
                s.layer,
                s.rms_h,
                s.rms_branch,
                s.rms_du,
                s.rms_dv,
                s.rms_dh,
                s.rms_dbranch,
                s.rms_g
            ));
        }
        io::atomic_write(&dir.join("layers.csv"), csv.as_bytes())?;
    }
    io::atomic_write(
        &dir.join("metadata.json"),
        metadata_json(cfg, out).as_bytes(),
    )
}

/// The run's `metadata.json` (see the module docs), as text.
pub fn metadata_json(cfg: &TrainConfig, out: &RunOutput) -> String {
    let h = &out.history;
    let mut files = vec!["losses.npy", "outputs.npy", "steps.csv", "metadata.json"];
    if cfg.record_hidden {
        files.push("hL.npy");
    }
    if cfg.layer_stats {
        files.push("layers.csv");
    }
    let meta = Metadata {
        reslim_version: env!("CARGO_PKG_VERSION"),
        created_unix_s: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        config: cfg,
        backend: out.backend(),
        backend_requested: cfg.backend,
        memory: &out.memory,
        resolved: &out.resolved,
        timings: &out.timings,
        threads: rayon::current_num_threads(),
        isa: format!("{:?}", crate::cpu::isa()),
        final_loss: h.losses.last().copied(),
        files,
    };
    serde_json::to_string_pretty(&meta).expect("metadata serialises")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::Source;
    use crate::spec::TrainSpec;

    fn unlimited() -> Available {
        Available {
            bytes: usize::MAX,
            source: Source::Unknown,
        }
    }

    fn limited(bytes: usize) -> Available {
        Available {
            bytes,
            source: Source::Override,
        }
    }

    /// A small tanh network whose block weights outweigh the low-rank engines' factors
    /// (and where the low-rank step is cheaper), on `backend`.
    fn spec(backend: &str) -> TrainSpec {
        TrainSpec {
            l: Some(4),
            m: Some(64),
            d: Some(48),
            n: Some(3),
            din: Some(3),
            dout: Some(2),
            steps: Some(4),
            lr: Some(0.7),
            seed: Some(5),
            embed_seed: Some(6),
            backend: Some(backend.into()),
            ..Default::default()
        }
    }

    fn run(cfg: &TrainConfig, avail: Available) -> RunOutput {
        let est = estimate(cfg, avail).unwrap();
        execute_with(cfg, &est, Par::Seq, &Default::default(), &mut |_, _| {}).unwrap()
    }

    /// `got` equals `want` to 1e-11 of the largest |want|.
    #[track_caller]
    fn close(what: &str, got: &[f64], want: &[f64]) {
        assert_eq!(got.len(), want.len(), "{what}");
        assert!(!want.is_empty(), "{what}");
        let scale = want.iter().fold(0.0f64, |s, x| s.max(x.abs()));
        for (x, y) in got.iter().zip(want) {
            assert!((x - y).abs() <= 1e-11 * scale, "{what}: {x} vs {y}");
        }
    }

    #[track_caller]
    fn same_records(got: &History, want: &History) {
        close("losses", &got.losses, &want.losses);
        close("outputs", &got.outputs, &want.outputs);
        close("h_L", &got.hidden, &want.hidden);
        assert_eq!(got.hidden_steps, want.hidden_steps);
    }

    fn tmp(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("reslim-run-{name}-{}", std::process::id()))
    }

    /// The low-rank and regenerated engines give the dense run's losses, outputs and
    /// h_L to rounding, and write the same files, each naming its engine.
    #[test]
    fn every_engine_gives_the_dense_records_and_files() {
        let dense_cfg = spec("dense").check().unwrap();
        let dense = run(&dense_cfg, unlimited());
        assert_eq!(dense.backend(), Backend::Dense);
        assert!(dense.history.losses.last() < dense.history.losses.first());
        let base = tmp("engines");
        let files = |dir: &Path| {
            let mut f: Vec<String> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            f.sort();
            f
        };
        write_run_dir(&base.join("dense"), &dense_cfg, &dense).unwrap();
        for name in ["regenerated", "lowrank"] {
            let cfg = spec(name).check().unwrap();
            let out = run(&cfg, unlimited());
            assert_eq!(out.backend().name(), name);
            same_records(&out.history, &dense.history);
            let dir = base.join(name);
            write_run_dir(&dir, &cfg, &out).unwrap();
            assert_eq!(files(&dir), files(&base.join("dense")));
            let meta: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(dir.join("metadata.json")).unwrap())
                    .unwrap();
            assert_eq!(meta["backend"], name);
            assert_eq!(meta["backend_requested"], name);
            assert_eq!(meta["config"]["backend"], name);
            for e in ["dense", "lowrank", "regenerated"] {
                assert!(meta["memory"][e].as_u64().unwrap() > 0, "{e}: {meta}");
            }
            let hl = io::read_npy(&dir.join("hL.npy")).unwrap();
            assert_eq!(hl.shape, vec![4, 48, 3]);
            close("hL.npy", &hl.data, &dense.history.hidden);
        }
        // Without h_L records, the same.
        let mut cfg = spec("regenerated").check().unwrap();
        cfg.record_hidden = false;
        let out = run(&cfg, unlimited());
        assert!(out.history.hidden.is_empty());
        close("losses", &out.history.losses, &dense.history.losses);
        let _ = std::fs::remove_dir_all(&base);
    }

    /// `auto`: the dense step for a small network, the low-rank one where it is cheaper,
    /// the regenerated one when the stored weights exceed the budget (with the dense
    /// results), the dense one with layer statistics.
    #[test]
    fn auto_picks_the_engine_by_cost_and_memory() {
        let small = TrainSpec {
            l: Some(3),
            m: Some(12),
            d: Some(10),
            steps: Some(5),
            ..spec("auto")
        }
        .check()
        .unwrap();
        assert_eq!(
            estimate(&small, unlimited()).unwrap().chosen,
            Backend::Dense
        );
        let cfg = spec("auto").check().unwrap();
        assert!(factored::worth_it(&cfg.dims, cfg.steps, 1));
        let est = estimate(&cfg, unlimited()).unwrap();
        assert_eq!(
            (est.requested, est.chosen),
            (Backend::Auto, Backend::Lowrank)
        );
        let dense = run(&spec("dense").check().unwrap(), unlimited());
        let (d, l, r) = (
            est.dense.unwrap(),
            est.lowrank.unwrap(),
            est.regenerated.unwrap(),
        );
        assert_eq!(d, bytes(&cfg, Backend::Dense).unwrap());
        // Neither stored engine fits in the budget (85% of what is available):
        // regenerated, with the dense step's records.
        let tight = limited(d.min(l) - 1);
        assert!((r as f64) < MEMORY_FRACTION * tight.bytes as f64, "{est:?}");
        let est = estimate(&cfg, tight).unwrap();
        assert_eq!(est.chosen, Backend::Regenerated);
        let line = est.line();
        assert!(
            line.contains("chosen: regenerated by auto") && line.contains("RESLIM_MEMORY_LIMIT"),
            "{line}"
        );
        let out = execute_with(&cfg, &est, Par::Seq, &Default::default(), &mut |_, _| {}).unwrap();
        assert_eq!(out.backend(), Backend::Regenerated);
        same_records(&out.history, &dense.history);
        let meta: serde_json::Value = serde_json::from_str(&metadata_json(&cfg, &out)).unwrap();
        assert_eq!(meta["backend"], "regenerated");
        assert_eq!(meta["backend_requested"], "auto");
        assert_eq!(meta["memory"]["regenerated"], r);
        // Within the budget, the low-rank step stays.
        let roomy = limited((l as f64 / MEMORY_FRACTION) as usize + 16);
        assert_eq!(estimate(&cfg, roomy).unwrap().chosen, Backend::Lowrank);
        // Layer statistics: dense only, whatever the cost and the memory say; over the
        // budget but within the memory, still dense.
        let stats = TrainConfig {
            layer_stats: true,
            ..cfg.clone()
        };
        let est = estimate(&stats, unlimited()).unwrap();
        assert_eq!(est.chosen, Backend::Dense);
        assert_eq!(
            est.ruled_out,
            vec![
                (Backend::Lowrank, "layer_stats"),
                (Backend::Regenerated, "layer_stats")
            ]
        );
        let ds = est.dense.unwrap();
        assert_eq!(
            estimate(&stats, limited(ds)).unwrap().chosen,
            Backend::Dense
        );
        let e = estimate(&stats, limited(ds - 1)).unwrap_err().to_string();
        assert!(
            e.contains("fits under no backend") && e.contains("(not with 'layer_stats')"),
            "{e}"
        );
    }

    /// A run that fits under no engine (or not under the one asked for) is refused,
    /// naming the shape, every engine's bytes and the bytes available; sizes that
    /// overflow under every engine name the quantities.
    #[test]
    fn a_run_that_fits_nowhere_is_refused_naming_shape_and_bytes() {
        let cfg = spec("auto").check().unwrap();
        let est = estimate(&cfg, unlimited()).unwrap();
        let e = estimate(&cfg, limited(1000)).unwrap_err();
        assert!(
            matches!(e, crate::Error::Run(RunError::DoesNotFit { .. })),
            "{e:?}"
        );
        let msg = e.to_string();
        for want in [
            "'L' = 4, 'M' = 64, 'D' = 48, 'N' = 3, 'steps' = 4, 'dtype' = f64",
            "fits under no backend",
            &format!(
                "dense needs {} ({} bytes)",
                size(est.dense.unwrap()),
                est.dense.unwrap()
            ),
            &format!(
                "lowrank needs {} ({} bytes)",
                size(est.lowrank.unwrap()),
                est.lowrank.unwrap()
            ),
            &format!(
                "regenerated needs {} ({} bytes)",
                size(est.regenerated.unwrap()),
                est.regenerated.unwrap()
            ),
            "1.00 kB (1000 bytes) available (RESLIM_MEMORY_LIMIT)",
        ] {
            assert!(msg.contains(want), "'{want}' missing from: {msg}");
        }
        // Asked for by name: that engine must fit, even where another would.
        let dense = spec("dense").check().unwrap();
        let msg = estimate(&dense, limited(est.dense.unwrap() - 1))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("with backend = \"dense\" needs")
                && msg.contains(&format!("({} bytes)", est.dense.unwrap()))
                && msg.contains("regenerated"),
            "{msg}"
        );
        // Every count overflows: the overflow, naming the quantities.
        let huge = TrainConfig {
            steps: 1 << 62,
            ..cfg.clone()
        };
        let msg = estimate(&huge, unlimited()).unwrap_err().to_string();
        assert!(
            msg.contains("'steps'") && msg.contains("overflows"),
            "{msg}"
        );
        assert!(matches!(
            estimate(&huge, unlimited()),
            Err(crate::Error::Memory(MemoryError::Overflow { .. }))
        ));
    }

    /// Writes an `init_npy` directory for the dims of `spec("auto")`.
    fn npy_dir(dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        let (l, m, d, n, din, dout) = (4, 64, 48, 3, 3, 2);
        let vals =
            |k: usize| -> Vec<f64> { (0..k).map(|i| ((i * 7 % 11) as f64 - 5.0) / 10.0).collect() };
        for (name, shape) in [
            ("X", vec![din, n]),
            ("Y", vec![dout, n]),
            ("WE", vec![d, din]),
            ("WU", vec![d, dout]),
            ("U", vec![l, d, m]),
            ("V", vec![l, d, m]),
        ] {
            let k = shape.iter().product();
            io::write_npy(&dir.join(format!("{name}.npy")), &shape, &vals(k)).unwrap();
        }
    }

    /// The backends a config cannot use are refused naming both fields and the value;
    /// an unknown backend names the field and the value.
    #[test]
    fn backend_refusals_name_the_fields() {
        let e = spec("nonsense").check().unwrap_err().to_string();
        assert!(
            e.contains("'backend'") && e.contains("nonsense") && e.contains("regenerated"),
            "{e}"
        );
        for name in ["lowrank", "regenerated"] {
            let s = TrainSpec {
                layer_stats: Some(true),
                ..spec(name)
            };
            let e = s.check().unwrap_err().to_string();
            assert!(
                e.contains("'backend'") && e.contains(name) && e.contains("'layer_stats'"),
                "{e}"
            );
        }
        let stats = TrainSpec {
            layer_stats: Some(true),
            ..spec("auto")
        };
        assert_eq!(stats.check().unwrap().backend, Backend::Auto);
        let dir = tmp("npy");
        npy_dir(&dir);
        let with_npy = |b: &str| TrainSpec {
            init_npy: Some(dir.clone()),
            ..spec(b)
        };
        let e = with_npy("regenerated").check().unwrap_err().to_string();
        assert!(
            e.contains("'backend'")
                && e.contains("regenerated")
                && e.contains("'init_npy'")
                && e.contains(&dir.display().to_string()),
            "{e}"
        );
        // From the arrays: auto never regenerates them; the stored engines agree.
        let auto = with_npy("auto").check().unwrap();
        let est = estimate(&auto, limited(1 << 40)).unwrap();
        assert_eq!(est.ruled_out, vec![(Backend::Regenerated, "init_npy")]);
        assert!(estimate(&auto, limited(est.regenerated.unwrap() + 1)).is_err());
        let dense = run(&with_npy("dense").check().unwrap(), unlimited());
        let lowrank = run(&with_npy("lowrank").check().unwrap(), unlimited());
        same_records(&lowrank.history, &dense.history);
        // An estimate of another config cannot run a config its engine refuses.
        let regen = estimate(&spec("regenerated").check().unwrap(), unlimited()).unwrap();
        let e = execute_with(&auto, &regen, Par::Seq, &Default::default(), &mut |_, _| {})
            .unwrap_err()
            .to_string();
        assert!(e.contains("'init_npy'"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
