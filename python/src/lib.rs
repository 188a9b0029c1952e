//! `reslim._native`: the extension module under reslim's Python package.
//!
//! Every function is a thin bridge to the library's own entry points, so Python gets the
//! CLI's validation, messages and results:
//!
//! | function | library |
//! |---|---|
//! | [`train`] | [`reslim::spec::TrainSpec::check_with`], [`reslim::run::execute`] |
//! | [`sweep`] | [`reslim::sweep::execute`] (the CLI's `reslim sweep`) |
//! | [`limit`] | [`reslim::solve::LimitSpec::check`], [`reslim::solve::solve`] |
//! | [`spirals`] | [`reslim::meanfield::run_experiment`] and its report |
//!
//! Specs cross the boundary as JSON text (a Python dict, `json.dumps`'d by the package)
//! and are read by the same serde types as the TOML files, with the same checks. Arrays
//! come back as NumPy arrays in the layouts of the NPY files the CLI writes.
//!
//! While Rust computes, the GIL is released and the work runs on its own thread; the
//! calling thread wakes every 100 ms to let Python handle signals. On Ctrl-C it sets the
//! run's [`Cancel`] token, waits for the work to stop at its next safe point (a GD step,
//! or a sweep task, whose finished tasks are all on disk) and raises `KeyboardInterrupt`.
//!
//! Errors become the exceptions of `reslim.errors` ([`to_py_err`]); a panic of the engine
//! (a bug) becomes a `RuntimeError`, never a crash of the interpreter.

use numpy::{PyArray1, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::{PyFileNotFoundError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use reslim::cancel::Cancel;
use reslim::cpu::Par;
use reslim::io::{IoError, NpyArray};
use reslim::model::InitArrays;
use reslim::spec::{SpecError, TrainSpec};
use reslim::sweep::{self as rsweep, SweepDir, SweepError, SweepSpec};
use reslim::train::TrainError;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// What kind of Python exception an error of the library becomes.
enum Kind {
    /// A bad spec or argument: `reslim.errors.SpecError` (a `ValueError`).
    Spec,
    /// A bad file or array: `reslim.errors.DataError` (a `ValueError`).
    Data,
    /// A missing file: `FileNotFoundError`.
    NotFound,
    /// Training diverged: `reslim.errors.DivergenceError` with `step` and `layer`.
    Diverged { step: usize, layer: Option<usize> },
    /// More memory than available: `reslim.errors.MemoryLimitError` (a `MemoryError`).
    Memory,
    /// Records of another spec in the output directory:
    /// `reslim.errors.StaleResultsError`.
    Stale,
    /// Another process works in the output directory: `reslim.errors.BusyError`.
    Busy,
    /// Anything else: `reslim.errors.ReslimError`.
    Other,
}

fn kind_io(e: &IoError) -> Kind {
    match e {
        IoError::Os { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            Kind::NotFound
        }
        IoError::Os { .. } => Kind::Other,
        IoError::Busy { .. } => Kind::Busy,
        _ => Kind::Data,
    }
}

fn kind_train(e: &TrainError) -> Kind {
    match e {
        TrainError::Diverged { step, layer, .. } => Kind::Diverged {
            step: *step,
            layer: *layer,
        },
        TrainError::LossOverflow { step, .. } | TrainError::LossExploded { step, .. } => {
            Kind::Diverged {
                step: *step,
                layer: None,
            }
        }
        TrainError::Mismatch(_) => Kind::Data,
        TrainError::Memory(_) => Kind::Memory,
        _ => Kind::Other,
    }
}

fn kind_sweep(e: &SweepError) -> Kind {
    match e {
        SweepError::Memory { .. } | SweepError::Available(_) => Kind::Memory,
        SweepError::Stale { .. } => Kind::Stale,
        SweepError::Task { source, .. } => kind_sweep(source),
        SweepError::Spec(_) | SweepError::Param(_) => Kind::Spec,
        SweepError::Io(e) => kind_io(e),
        SweepError::Train(e) => kind_train(e),
        _ => Kind::Other,
    }
}

fn kind_of(e: &reslim::Error) -> Kind {
    use reslim::Error as E;
    match e {
        E::Io(e) => kind_io(e),
        // Init arrays that do not fit together are bad data, not a bad field.
        E::Spec(SpecError::Invalid { field, .. }) if field == "init" => Kind::Data,
        E::Spec(_) | E::Param(_) => Kind::Spec,
        E::Train(e) => kind_train(e),
        E::Sweep(e) => kind_sweep(e),
        E::Memory(_) => Kind::Memory,
        // Fits under no engine (every engine's bytes named).
        E::Run(reslim::run::RunError::DoesNotFit { .. }) => Kind::Memory,
        E::Limit(reslim::limit::LimitError::InvalidParameter { .. }) => Kind::Spec,
        E::MeanField(reslim::meanfield::experiment::MeanFieldError::Io(e)) => kind_io(e),
        E::MeanField(reslim::meanfield::experiment::MeanFieldError::Stale { .. }) => Kind::Stale,
        _ => Kind::Other,
    }
}

/// The Python exception of a library error: the class of `reslim.errors` for its
/// [`Kind`], with the full message (every cause once, [`reslim::error::chain_message`]).
fn to_py_err(py: Python<'_>, e: reslim::Error) -> PyErr {
    let msg = reslim::error::chain_message(&e);
    let class =
        |name: &str| -> PyResult<Bound<'_, PyAny>> { py.import("reslim.errors")?.getattr(name) };
    let made = (|| -> PyResult<PyErr> {
        Ok(match kind_of(&e) {
            Kind::NotFound => PyFileNotFoundError::new_err(msg.clone()),
            Kind::Spec => PyErr::from_value(class("SpecError")?.call1((msg.clone(),))?),
            Kind::Data => PyErr::from_value(class("DataError")?.call1((msg.clone(),))?),
            Kind::Memory => PyErr::from_value(class("MemoryLimitError")?.call1((msg.clone(),))?),
            Kind::Stale => PyErr::from_value(class("StaleResultsError")?.call1((msg.clone(),))?),
            Kind::Busy => PyErr::from_value(class("BusyError")?.call1((msg.clone(),))?),
            Kind::Diverged { step, layer } => {
                PyErr::from_value(class("DivergenceError")?.call1((msg.clone(), step, layer))?)
            }
            Kind::Other => PyErr::from_value(class("ReslimError")?.call1((msg.clone(),))?),
        })
    })();
    made.unwrap_or_else(|_| PyRuntimeError::new_err(msg))
}

fn spec_err(py: Python<'_>, e: SpecError) -> PyErr {
    to_py_err(py, e.into())
}

/// Drops the nulls of a JSON value (Python's `None`: "not given"), recursively.
fn drop_nulls(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            m.retain(|_, x| !x.is_null());
            m.values_mut().for_each(drop_nulls);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

/// A spec from a JSON value (a Python dict), read as the TOML file with the same fields
/// would be: the value is written as TOML and parsed by the spec's own reader, so every
/// message is the command line's (naming the field and showing the line). `origin` names
/// the source in messages.
fn spec_from_value<T: serde::de::DeserializeOwned>(
    py: Python<'_>,
    mut value: serde_json::Value,
    origin: &str,
) -> PyResult<T> {
    let parse = |msg: String| {
        spec_err(
            py,
            SpecError::Parse {
                path: PathBuf::from(origin),
                msg,
            },
        )
    };
    drop_nulls(&mut value);
    let table = toml::Table::try_from(value).map_err(|e| parse(e.to_string()))?;
    let text = toml::to_string(&table).map_err(|e| parse(e.to_string()))?;
    toml::from_str(&text).map_err(|e| parse(e.to_string()))
}

/// The JSON text of a Python dict as a value (`origin` names it in messages).
fn json_value(py: Python<'_>, text: &str, origin: &str) -> PyResult<serde_json::Value> {
    serde_json::from_str(text).map_err(|e| {
        spec_err(
            py,
            SpecError::Parse {
                path: PathBuf::from(origin),
                msg: e.to_string(),
            },
        )
    })
}

/// A spec from the JSON text of a Python dict ([`spec_from_value`]).
fn from_json<T: serde::de::DeserializeOwned>(
    py: Python<'_>,
    text: &str,
    origin: &str,
) -> PyResult<T> {
    spec_from_value(py, json_value(py, text, origin)?, origin)
}

/// Runs `work` on its own thread with the GIL released, checking for signals every
/// 100 ms; on a pending signal (Ctrl-C) sets `cancel`, waits for `work` to return and
/// raises the signal's exception.
fn interruptible<T: Send>(
    py: Python<'_>,
    cancel: &Cancel,
    work: impl FnOnce() -> T + Send,
) -> PyResult<T> {
    let panicked = |p: Box<dyn std::any::Any + Send>| {
        let what = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        PyRuntimeError::new_err(format!(
            "reslim's engine panicked (a bug, please report it): {what}"
        ))
    };
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let handle = s.spawn(move || {
            let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
            let _ = tx.send(());
            out
        });
        let mut rx = rx;
        loop {
            let (done, back) = py.detach(move || {
                let r = rx.recv_timeout(Duration::from_millis(100));
                (
                    !matches!(r, Err(std::sync::mpsc::RecvTimeoutError::Timeout)),
                    rx,
                )
            });
            rx = back;
            if done {
                return match handle.join() {
                    Ok(Ok(v)) => Ok(v),
                    Ok(Err(p)) | Err(p) => Err(panicked(p)),
                };
            }
            if let Err(signal) = py.check_signals() {
                cancel.cancel();
                py.detach(move || {
                    let _ = rx.recv();
                });
                let _ = handle.join();
                return Err(signal);
            }
        }
    })
}

/// A float64 array of `shape` from a vector.
fn array<'py>(py: Python<'py>, data: Vec<f64>, shape: &[usize]) -> PyResult<Bound<'py, PyAny>> {
    Ok(PyArray1::from_vec(py, data)
        .reshape(shape.to_vec())?
        .into_any())
}

/// The six init arrays of a dict (`X`, `Y`, `WE`, `WU`, `U`, `V`), float64 and C order.
fn init_arrays(py: Python<'_>, init: &Bound<'_, PyDict>) -> PyResult<InitArrays> {
    const NAMES: [&str; 6] = ["X", "Y", "WE", "WU", "U", "V"];
    for key in init.keys() {
        let k: String = key.extract()?;
        if !NAMES.contains(&k.as_str()) {
            return Err(spec_err(
                py,
                SpecError::Invalid {
                    field: "init".into(),
                    value: format!("{k:?}"),
                    why: "unknown array (expected X, Y, WE, WU, U, V)".into(),
                },
            ));
        }
    }
    let get = |name: &str| -> PyResult<NpyArray> {
        let Some(a) = init.get_item(name)? else {
            return Err(spec_err(
                py,
                SpecError::Invalid {
                    field: "init".into(),
                    value: format!("missing {name:?}"),
                    why: "give all of X, Y, WE, WU, U, V".into(),
                },
            ));
        };
        let a: PyReadonlyArrayDyn<'_, f64> = a.extract().map_err(|_| {
            PyValueError::new_err(format!(
                "init array '{name}': expected a numpy.ndarray of dtype float64"
            ))
        })?;
        let shape = a.shape().to_vec();
        let data = a
            .as_slice()
            .map_err(|_| {
                PyValueError::new_err(format!(
                    "init array '{name}': expected a C-contiguous array (numpy.ascontiguousarray), shape {shape:?}"
                ))
            })?
            .to_vec();
        Ok(NpyArray { shape, data })
    };
    Ok(InitArrays {
        x: get("X")?,
        y: get("Y")?,
        we: get("WE")?,
        wu: get("WU")?,
        u: get("U")?,
        v: get("V")?,
    })
}

/// Merges the JSON object `over` into `base` (objects key by key, other values replace).
fn merge(base: &mut serde_json::Value, over: serde_json::Value) {
    match (base, over) {
        (serde_json::Value::Object(b), serde_json::Value::Object(o)) => {
            for (k, v) in o {
                if v.is_null() {
                    continue;
                }
                match b.get_mut(&k) {
                    Some(slot) if slot.is_object() && v.is_object() => merge(slot, v),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

/// Calls a Python callable with progress, from whichever thread reports it (taking the
/// GIL for the call, which the waiting thread has released). An exception in the
/// callable is reported as unraisable and the work goes on.
struct PyProgress(Option<Py<PyAny>>);

impl PyProgress {
    fn call(&self, args: (f64, f64, String)) {
        if let Some(cb) = &self.0 {
            Python::attach(|py| {
                if let Err(e) = cb.call1(py, args) {
                    e.write_unraisable(py, Some(cb.bind(py)));
                }
            });
        }
    }
}

impl rsweep::Observer for PyProgress {
    fn progress(&self, done: f64, total: f64, task: &rsweep::Task) {
        self.call((done, total, task.id()));
    }
}

/// Trains one network: the spec file `spec_path` (if any) with the fields of
/// `overrides_json` merged in (tables key by key), from `init` arrays if given. Writes a
/// run directory to `out` if given; `progress(step, steps, "loss ...")` is called after
/// each step. Returns `losses`, `outputs`, `h_last` (or None),
/// `layer_stats` (a dict of columns, or None) and `metadata` (JSON text).
#[pyfunction]
#[pyo3(signature = (spec_path, overrides_json, init=None, out=None, progress=None))]
fn train<'py>(
    py: Python<'py>,
    spec_path: Option<PathBuf>,
    overrides_json: &str,
    init: Option<Bound<'py, PyDict>>,
    out: Option<PathBuf>,
    progress: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyDict>> {
    let file = match &spec_path {
        Some(p) => TrainSpec::from_file(p).map_err(|e| spec_err(py, e))?,
        None => TrainSpec::default(),
    };
    let mut spec = serde_json::to_value(&file).expect("a spec serialises");
    merge(
        &mut spec,
        json_value(py, overrides_json, "<train arguments>")?,
    );
    let spec: TrainSpec = spec_from_value(py, spec, "<train arguments>")?;
    let arrays = init.map(|d| init_arrays(py, &d)).transpose()?;
    let cfg = spec
        .check_with(arrays.map(Arc::new))
        .map_err(|e| spec_err(py, e))?;
    if let Some(dir) = &out {
        reslim::run::check_out_dir(dir).map_err(|e| to_py_err(py, e.into()))?;
    }
    let cancel = Cancel::new();
    let progress = PyProgress(progress);
    let steps = cfg.steps as f64;
    let res = interruptible(py, &cancel, || {
        let run = reslim::run::execute(&cfg, Par::Rayon, &cancel, &mut |k, loss| {
            progress.call(((k + 1) as f64, steps, format!("loss {loss:.4e}")))
        })?;
        if let Some(dir) = &out {
            reslim::run::write_run_dir(dir, &cfg, &run)?;
        }
        Ok::<_, reslim::Error>(run)
    })?;
    let run = res.map_err(|e| to_py_err(py, e))?;
    let d = &cfg.dims;
    let k = run.history.losses.len();
    let meta = reslim::run::metadata_json(&cfg, &run);
    let h = run.history;
    let dict = PyDict::new(py);
    dict.set_item("losses", array(py, h.losses, &[k])?)?;
    dict.set_item("outputs", array(py, h.outputs, &[k, d.dout, d.n])?)?;
    if cfg.record_hidden {
        dict.set_item("h_last", array(py, h.hidden, &[k, d.d, d.n])?)?;
    } else {
        dict.set_item("h_last", py.None())?;
    }
    if cfg.layer_stats {
        let cols = PyDict::new(py);
        let s = &h.layer_stats;
        let ints = |f: fn(&reslim::train::LayerStat) -> usize| -> Vec<i64> {
            s.iter().map(|x| f(x) as i64).collect()
        };
        let floats =
            |f: fn(&reslim::train::LayerStat) -> f64| -> Vec<f64> { s.iter().map(f).collect() };
        cols.set_item("step", PyArray1::from_vec(py, ints(|x| x.step)))?;
        cols.set_item("layer", PyArray1::from_vec(py, ints(|x| x.layer)))?;
        cols.set_item("rms_h", PyArray1::from_vec(py, floats(|x| x.rms_h)))?;
        cols.set_item(
            "rms_branch",
            PyArray1::from_vec(py, floats(|x| x.rms_branch)),
        )?;
        cols.set_item("rms_du", PyArray1::from_vec(py, floats(|x| x.rms_du)))?;
        cols.set_item("rms_dv", PyArray1::from_vec(py, floats(|x| x.rms_dv)))?;
        cols.set_item("rms_dh", PyArray1::from_vec(py, floats(|x| x.rms_dh)))?;
        cols.set_item(
            "rms_dbranch",
            PyArray1::from_vec(py, floats(|x| x.rms_dbranch)),
        )?;
        cols.set_item("rms_g", PyArray1::from_vec(py, floats(|x| x.rms_g)))?;
        dict.set_item("layer_stats", cols)?;
    } else {
        dict.set_item("layer_stats", py.None())?;
    }
    dict.set_item("metadata", meta)?;
    Ok(dict)
}

/// Runs or resumes a sweep exactly as `reslim sweep` does ([`sweep::execute`]): the spec
/// from the TOML file `spec_path` or the JSON text `spec_json`; `out` defaults to
/// `runs/<name>`. With `shard` (`J/N`), only that shard's unfinished tasks run, beside
/// any other shard processes in `out`, and nothing is collected (as `--shard`).
/// `progress(done, total, task)` is called after each task (work in
/// parameter-steps). Returns the output directory, the report's path and the run's
/// summary.
#[pyfunction]
#[pyo3(signature = (spec_path, spec_json, out=None, jobs=None, redo_stale=false, report_only=false, max_tasks=None, progress=None, shard=None))]
#[allow(clippy::too_many_arguments)]
fn sweep<'py>(
    py: Python<'py>,
    spec_path: Option<PathBuf>,
    spec_json: Option<&str>,
    out: Option<PathBuf>,
    jobs: Option<i64>,
    redo_stale: bool,
    report_only: bool,
    max_tasks: Option<usize>,
    progress: Option<Py<PyAny>>,
    shard: Option<&str>,
) -> PyResult<Bound<'py, PyDict>> {
    let shard = shard
        .map(|s| {
            reslim::shard::Shard::parse(s).map_err(|e| SpecError::Flag {
                flag: "shard".into(),
                value: s.into(),
                why: e.to_string(),
            })
        })
        .transpose()
        .map_err(|e| spec_err(py, e))?;
    let spec: SweepSpec = match (&spec_path, spec_json) {
        (Some(p), _) => SweepSpec::from_file(p).map_err(|e| spec_err(py, e))?,
        (None, Some(text)) => from_json(py, text, "<sweep spec>")?,
        (None, None) => return Err(PyValueError::new_err("give a sweep spec")),
    };
    let jobs = jobs
        .map(|j| {
            if j < 1 {
                return Err(SpecError::Flag {
                    flag: "jobs".into(),
                    value: j.to_string(),
                    why: "must be a positive integer".into(),
                });
            }
            rsweep::check_jobs("jobs", j as usize)
        })
        .transpose()
        .map_err(|e| spec_err(py, e))?;
    let out = out.unwrap_or_else(|| PathBuf::from("runs").join(&spec.name));
    let sw = spec.check().map_err(|e| spec_err(py, e))?;
    let cancel = Cancel::new();
    let opts = rsweep::PipelineOptions {
        jobs,
        max_tasks,
        redo_stale,
        report_only,
        shard,
        cancel: cancel.clone(),
        ..Default::default()
    };
    let dir = SweepDir::new(&out);
    let observer = PyProgress(progress);
    let res = interruptible(py, &cancel, || rsweep::execute(&sw, &dir, &opts, &observer))?;
    let outcome = res.map_err(|e| to_py_err(py, e.into()))?;
    let dict = PyDict::new(py);
    dict.set_item("out", out.to_string_lossy().into_owned())?;
    let (plan, run) = match outcome {
        rsweep::Outcome::Done {
            plan, run, report, ..
        } => {
            dict.set_item("report", report.to_string_lossy().into_owned())?;
            (plan, run)
        }
        rsweep::Outcome::Shard { plan, run } => (plan, Some(run)),
        rsweep::Outcome::Planned { plan, .. } => (plan, None),
    };
    dict.set_item("tasks", plan.tasks)?;
    if let Some(r) = run {
        dict.set_item("skipped", r.skipped)?;
        dict.set_item("ran", r.ran)?;
        dict.set_item("seconds", r.seconds)?;
    }
    Ok(dict)
}

/// The large-D limit of a `limit` spec given as JSON text (the fields of `reslim limit`'s
/// TOML): `outputs` (K, d_out, N), `outputs_se`, `losses`, `losses_se` (K,), `gamma_h`,
/// `gamma_b`, `lambda` (num_s, K N, K N), `depth` (num_s,) and `report` (JSON text).
/// Writes `reslim limit`'s output directory to `out` if given.
#[pyfunction]
#[pyo3(signature = (spec_json, out=None))]
fn limit<'py>(
    py: Python<'py>,
    spec_json: &str,
    out: Option<PathBuf>,
) -> PyResult<Bound<'py, PyDict>> {
    use reslim::solve::{self, LimitSpec};
    let spec: LimitSpec = from_json(py, spec_json, "<limit arguments>")?;
    let job = spec.check().map_err(|e| to_py_err(py, e))?;
    if let Some(dir) = &out {
        reslim::io::check_out_dir(dir, "limit.json", "limit output")
            .map_err(|e| to_py_err(py, e.into()))?;
    }
    // The solvers have no safe point to stop at: Ctrl-C waits for the solve.
    let res = interruptible(py, &Cancel::default(), || {
        let r = solve::solve(&job)?;
        if let Some(dir) = &out {
            solve::write(dir, &job, &r)?;
        }
        Ok::<_, reslim::Error>(r)
    })?;
    let r = res.map_err(|e| to_py_err(py, e))?;
    let (k, dout, n) = (job.params.k_steps, job.spec.data.dout, job.spec.data.n);
    let ns = r.depth.len();
    let kn = k * n;
    let dict = PyDict::new(py);
    dict.set_item("outputs", array(py, r.outputs, &[k, dout, n])?)?;
    dict.set_item("outputs_se", array(py, r.outputs_se, &[k, dout, n])?)?;
    dict.set_item("losses", array(py, r.losses, &[k])?)?;
    dict.set_item("losses_se", array(py, r.losses_se, &[k])?)?;
    dict.set_item("gamma_h", array(py, r.gamma_h, &[ns, kn, kn])?)?;
    dict.set_item("gamma_b", array(py, r.gamma_b, &[ns, kn, kn])?)?;
    dict.set_item("lambda", array(py, r.lambda, &[ns, kn, kn])?)?;
    dict.set_item("depth", array(py, r.depth, &[ns])?)?;
    dict.set_item("report", r.report.to_string())?;
    Ok(dict)
}

/// Runs or resumes the two-spirals experiment of the spec file `spec_path` into `out`
/// (as `reslim spirals`) and writes its report. Returns the report's path.
#[pyfunction]
#[pyo3(signature = (spec_path, out, redo_stale=false))]
fn spirals(py: Python<'_>, spec_path: PathBuf, out: PathBuf, redo_stale: bool) -> PyResult<String> {
    use reslim::meanfield;
    let spec = meanfield::ExperimentSpec::from_file(&spec_path).map_err(|e| spec_err(py, e))?;
    let base = spec_path.parent().unwrap_or(Path::new("."));
    let cfg = spec.check(base).map_err(|e| to_py_err(py, e.into()))?;
    // The experiment checks no cancel token: Ctrl-C waits for it (finished runs are kept
    // on disk either way, and a second call resumes).
    let res = interruptible(py, &Cancel::default(), || {
        let _lock = reslim::io::DirLock::acquire(&out)?;
        reslim::io::remove_stale_temps(&out, 2);
        let t0 = std::time::Instant::now();
        let reused = std::sync::atomic::AtomicUsize::new(0);
        let runs = meanfield::run_experiment(&cfg, &out, redo_stale, &|_, status| {
            if status == meanfield::experiment::RunStatus::Reused {
                reused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        })?;
        meanfield::report::write_report(
            &cfg,
            &runs,
            &out,
            "reslim.spirals (Python)",
            t0.elapsed().as_secs_f64(),
            reused.into_inner(),
        )?;
        Ok::<_, reslim::Error>(())
    })?;
    res.map_err(|e| to_py_err(py, e))?;
    Ok(out.join("report.md").to_string_lossy().into_owned())
}

/// The version of the engine.
#[pyfunction]
fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(train, m)?)?;
    m.add_function(wrap_pyfunction!(sweep, m)?)?;
    m.add_function(wrap_pyfunction!(limit, m)?)?;
    m.add_function(wrap_pyfunction!(spirals, m)?)?;
    m.add_function(wrap_pyfunction!(version, m)?)?;
    Ok(())
}
