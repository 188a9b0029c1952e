//! One training run from a checked [`TrainConfig`]: initialise, train, and write the run
//! directory.
//!
//! A run directory holds (all written atomically):
//! - `losses.npy` (K,), `outputs.npy` (K, d_out, N), `hL.npy` (K, D, N): record k is the
//!   forward pass before update k, exactly the layout of `shared/reference/README.md`;
//! - `steps.csv`: one row per step (`step, loss, output_rms`);
//! - `layers.csv` (with `layer_stats`): one row per step and layer;
//! - `metadata.json`: the config, the parametrization table and its resolved numbers,
//!   seeds, versions, the kernels' instruction set, threads and timings.
//!
//! The directory is written as a unit: every file goes into a temporary directory beside
//! it ([`io::temp_name`]), which is renamed into place when complete, so a run that fails
//! midway (a full disk, a kill) leaves no partial run directory, and an earlier run in the
//! same place is replaced whole, never mixed with the new one. [`check_out_dir`] refuses,
//! before any training, a place that holds something other than a run directory.

use crate::Result;
use crate::cancel::Cancel;
use crate::cpu::Par;
use crate::io::{self, IoError};
use crate::memory::{self, MemoryError};
use crate::model::{self, Data, Dtype, Real, Weights};
use crate::param::Resolved;
use crate::spec::TrainConfig;
use crate::train::{self, History, TrainOptions};
use serde::Serialize;
use std::path::Path;
use std::time::Instant;

/// A finished run.
#[derive(Debug, Clone)]
pub struct RunOutput {
    pub history: History,
    pub resolved: Resolved,
    pub timings: Timings,
}

/// Wall-clock seconds of a run's phases.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Timings {
    pub init_s: f64,
    pub train_s: f64,
    pub per_step_s: f64,
}

/// Initialises and trains the model of `cfg`. `on_step(k, loss)` is called after each
/// step; once `cancel` is set, training stops before its next step
/// ([`train::TrainError::Cancelled`]).
pub fn execute(
    cfg: &TrainConfig,
    par: Par,
    cancel: &Cancel,
    on_step: &mut dyn FnMut(usize, f64),
) -> Result<RunOutput> {
    match cfg.dtype {
        Dtype::F64 => execute_t::<f64>(cfg, par, cancel, on_step),
        Dtype::F32 => execute_t::<f32>(cfg, par, cancel, on_step),
    }
}

/// The data of a config: the NPY arrays, or the seeded synthetic regression.
pub fn load_data(cfg: &TrainConfig) -> Result<Data> {
    Ok(match (&cfg.init_arrays, &cfg.init_npy) {
        (Some(a), _) => a.data(),
        (None, Some(dir)) => model::data_from_npy_dir(dir)?,
        (None, None) => Data::synthetic(cfg.dims.din, cfg.dims.dout, cfg.dims.n, cfg.data_seed),
    })
}

/// Bytes a run of `cfg` needs at its peak, estimated before anything is allocated:
/// the weights (twice with `layer_stats`, which keeps the initial ones), the step's
/// workspace, the data, the records (losses and outputs at every step, h_L with
/// `record_hidden`, per-layer statistics), the largest file written at the end, and
/// with `init_npy` the f64 arrays U, V and one file's bytes while they are read. An
/// error naming the quantities if the count overflows.
pub fn bytes(cfg: &TrainConfig) -> Result<usize, MemoryError> {
    let d = &cfg.dims;
    let (w, ws) = match cfg.dtype {
        Dtype::F64 => (
            Weights::<f64>::bytes(d)?,
            train::Workspace::<f64>::bytes(d)?,
        ),
        Dtype::F32 => (
            Weights::<f32>::bytes(d)?,
            train::Workspace::<f32>::bytes(d)?,
        ),
    };
    let copies = if cfg.layer_stats { 2 } else { 1 };
    let k = cfg.steps;
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
        (
            "weights",
            memory::product(&[("copies", copies), ("weight bytes", w)])?,
        ),
        ("workspace", ws),
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

fn execute_t<T: Real>(
    cfg: &TrainConfig,
    par: Par,
    cancel: &Cancel,
    on_step: &mut dyn FnMut(usize, f64),
) -> Result<RunOutput> {
    let dims = &cfg.dims;
    memory::check(
        bytes(cfg)?,
        &format!(
            "training with 'L' = {}, 'M' = {}, 'D' = {}, 'N' = {}, 'steps' = {}",
            dims.l, dims.m, dims.d, dims.n, cfg.steps
        ),
    )?;
    let t0 = Instant::now();
    let resolved = cfg.param.resolve(&cfg.dims);
    let data = load_data(cfg)?;
    let mut w: Weights<T> = match (&cfg.init_arrays, &cfg.init_npy) {
        (Some(a), _) => a.weights(&cfg.dims),
        (None, Some(dir)) => Weights::from_npy_dir(dir, &cfg.dims)?,
        (None, None) => Weights::draw(&cfg.dims, &resolved, cfg.embed_seed, cfg.seed, par),
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
    let history = train::train(&mut w, &data, &resolved, &opts, par, on_step)?;
    let train_s = t1.elapsed().as_secs_f64();
    Ok(RunOutput {
        history,
        resolved,
        timings: Timings {
            init_s,
            train_s,
            per_step_s: train_s / cfg.steps as f64,
        },
    })
}

#[derive(Serialize)]
struct Metadata<'a> {
    reslim_version: &'static str,
    created_unix_s: u64,
    config: &'a TrainConfig,
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
        resolved: &out.resolved,
        timings: &out.timings,
        threads: rayon::current_num_threads(),
        isa: format!("{:?}", crate::cpu::isa()),
        final_loss: h.losses.last().copied(),
        files,
    };
    serde_json::to_string_pretty(&meta).expect("metadata serialises")
}
