use super::SweepError;
use super::plan::{Sweep, Task};
use super::spec::Coupling;
use super::store::{SweepDir, TaskState};
use super::task::TaskRecord;

use crate::io::{self, IoError};
use crate::vslimit::StepErrors;
use serde::Serialize;
use std::collections::BTreeMap;

/// One tidy row: a model, a repetition, a coupling variant and a read step.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorRow {
    pub coupling: Coupling,
    pub rep: usize,
    #[serde(rename = "L")]
    pub l: usize,
    #[serde(rename = "M")]
    pub m: usize,
    #[serde(rename = "D")]
    pub d: usize,
    #[serde(rename = "P")]
    pub p: f64,
    pub step: usize,
    pub loss: f64,
    /// Mean squared embedding-space deviation (NaN when uncoupled).
    pub msq_h: f64,
    /// Mean squared output-space deviation.
    pub msq_y: f64,
    pub is_reference: bool,
}

/// Reads every finished task and computes the errors against the references.
pub fn collect(sw: &Sweep, dir: &SweepDir) -> Result<Vec<ErrorRow>, SweepError> {
    if sw.against_limit() {
        return collect_limit(sw, dir).map(|t| t.into_iter().map(|(row, _)| row).collect());
    }
    let plan = sw.plan();
    let mut refs: BTreeMap<usize, TaskRecord> = BTreeMap::new();
    for t in plan.iter().filter(|t| t.is_reference) {
        if let TaskState::Done(recs) = dir.state(sw, t)
            && let Some(r) = recs.into_iter().find(|r| r.coupling == Coupling::Coupled)
        {
            refs.insert(t.rep, r);
        }
    }
    let (dout, n) = (sw.spec.data.dout, sw.spec.data.n);
    let dref = sw.reference.2;
    let grid: std::collections::HashSet<(usize, usize, usize)> =
        sw.shapes.iter().copied().collect();
    let mut rows = Vec::new();
    for t in &plan {
        let TaskState::Done(recs) = dir.state(sw, t) else {
            continue;
        };
        let Some(rf) = refs.get(&t.rep) else { continue };
        let in_grid = grid.contains(&(t.l, t.m, t.d));
        if !in_grid {
            continue;
        }
        for rec in recs {
            if !sw.spec.couplings.contains(&rec.coupling) {
                continue;
            }
            // Records written under another spec (other read steps or data) do not
            // hold what is indexed below: refuse them by name rather than panic.
            let short = |what: &str, task: &Task| IoError::BadRecord {
                path: dir.task_dir(task).join("records.json"),
                why: format!(
                    "its {what} do not cover the read steps {:?} of this spec (written by another spec?)",
                    sw.read_steps
                ),
            };
            let steps = sw.read_steps.len();
            let hd = if rec.coupling == Coupling::Coupled {
                t.d
            } else {
                0
            };
            if rec.outputs.len() < steps * dout * n
                || rec.hidden.len() < steps * hd * n
                || sw.read_steps.iter().any(|&k| k >= rec.losses.len())
            {
                return Err(short("outputs, hidden states or losses", t).into());
            }
            if rf.outputs.len() < steps * dout * n || rf.hidden.len() < steps * dref * n {
                return Err(short("outputs or hidden states", &rf.task).into());
            }
            for (j, &k) in sw.read_steps.iter().enumerate() {
                let f = &rec.outputs[j * dout * n..(j + 1) * dout * n];
                let fr = &rf.outputs[j * dout * n..(j + 1) * dout * n];
                let msq_y = f
                    .iter()
                    .zip(fr)
                    .map(|(a, b)| (a - b) * (a - b))
                    .sum::<f64>()
                    / (dout * n) as f64;
                let msq_h = if rec.coupling == Coupling::Coupled {
                    let h = &rec.hidden[j * t.d * n..(j + 1) * t.d * n];
                    let hr = &rf.hidden[j * dref * n..(j + 1) * dref * n];
                    // Both are D x N row-major; compare the first D coordinates.
                    let mut s = 0.0;
                    for dd in 0..t.d {
                        for s_ in 0..n {
                            let e = h[dd * n + s_] - hr[dd * n + s_];
                            s += e * e;
                        }
                    }
                    s / (t.d * n) as f64
                } else {
                    f64::NAN
                };
                rows.push(ErrorRow {
                    coupling: rec.coupling,
                    rep: t.rep,
                    l: t.l,
                    m: t.m,
                    d: t.d,
                    p: (t.l * t.m * t.d) as f64,
                    step: k,
                    loss: rec.losses[k],
                    msq_h,
                    msq_y,
                    is_reference: t.is_reference,
                });
            }
        }
    }
    Ok(rows)
}

/// Against the limit, a run whose error exceeds this counts as diverged, as in the authors'
/// analysis (docs/papers.md 2.5, E2: "runs with error > 1e3 are set to 0 (diverged)"); here its
/// row gets NaN, so it leaves the fits and plots (`errors_limit.csv` keeps the value).
pub const DIVERGED_ERROR: f64 = 1e3;

/// With a limit reference (docs/papers.md 2.4, "Python errors"): per finished model, repetition,
/// coupling and read step, the row (`msq_h` the square of the embedding error
/// `max_l mean_d |h - H|`, `msq_y` the mean squared output deviation, so that `err_h`,
/// `err_y` are RMS over repetitions; NaN beyond [`DIVERGED_ERROR`]) and every limit error.
pub fn collect_limit(
    sw: &Sweep,
    dir: &SweepDir,
) -> Result<Vec<(ErrorRow, StepErrors)>, SweepError> {
    let mut rows = Vec::new();
    for t in sw.plan() {
        let TaskState::Done(recs) = dir.state(sw, &t) else {
            continue;
        };
        for rec in recs {
            let Some(errs) = rec.limit.as_ref() else {
                continue;
            };
            if !sw.spec.couplings.contains(&rec.coupling) {
                continue;
            }
            for e in errs.iter().filter(|e| sw.read_steps.contains(&e.step)) {
                let row = ErrorRow {
                    coupling: rec.coupling,
                    rep: t.rep,
                    l: t.l,
                    m: t.m,
                    d: t.d,
                    p: (t.l * t.m * t.d) as f64,
                    step: e.step,
                    loss: e.loss,
                    msq_h: diverged_nan(e.h_mad_max.max(e.y_rms), e.h_mad_max.powi(2)),
                    msq_y: diverged_nan(e.h_mad_max.max(e.y_rms), e.y_rms.powi(2)),
                    is_reference: false,
                };
                rows.push((row, *e));
            }
        }
    }
    Ok(rows)
}

fn diverged_nan(err: f64, v: f64) -> f64 {
    if err > DIVERGED_ERROR { f64::NAN } else { v }
}

/// Writes `errors_limit.csv`: every limit error of [`collect_limit`], one row per model,
/// repetition, coupling and read step.
pub fn write_limit_table(sw: &Sweep, dir: &SweepDir) -> Result<(), SweepError> {
    #[derive(Serialize)]
    struct Row {
        coupling: Coupling,
        rep: usize,
        #[serde(rename = "L")]
        l: usize,
        #[serde(rename = "M")]
        m: usize,
        #[serde(rename = "D")]
        d: usize,
        step: usize,
        h_mad_max: f64,
        h_mad_mean: f64,
        h_rms_last: f64,
        y_rms: f64,
        loss: f64,
        loss_limit: f64,
    }
    let rows: Vec<Row> = collect_limit(sw, dir)?
        .into_iter()
        .map(|(r, e)| Row {
            coupling: r.coupling,
            rep: r.rep,
            l: r.l,
            m: r.m,
            d: r.d,
            step: e.step,
            h_mad_max: e.h_mad_max,
            h_mad_mean: e.h_mad_mean,
            h_rms_last: e.h_rms_last,
            y_rms: e.y_rms,
            loss: e.loss,
            loss_limit: e.loss_limit,
        })
        .collect();
    write_csv(&dir.root.join("errors_limit.csv"), rows)?;
    Ok(())
}

/// Writes the tidy per-repetition table and the aggregated (RMS over repetitions) one.
pub fn write_tables(dir: &SweepDir, rows: &[ErrorRow]) -> Result<(), SweepError> {
    write_csv(&dir.root.join("errors.csv"), rows)?;
    write_csv(&dir.root.join("errors_rms.csv"), aggregate(rows))?;
    Ok(())
}

/// Writes `rows` as a CSV table at `path` (atomically; the header from the first row's
/// field names).
pub(crate) fn write_csv<R: Serialize>(
    path: &std::path::Path,
    rows: impl IntoIterator<Item = R>,
) -> Result<(), IoError> {
    let csv_err = |e: csv::Error| IoError::Os {
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    };
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in rows {
        w.serialize(r).map_err(csv_err)?;
    }
    let bytes = w.into_inner().map_err(|e| csv_err(e.into_error().into()))?;
    io::atomic_write(path, &bytes)
}

/// Errors aggregated over repetitions: RMS, as the paper's `errs_h` and `errs_y`.
#[derive(Debug, Clone, Serialize)]
pub struct AggRow {
    pub coupling: Coupling,
    #[serde(rename = "L")]
    pub l: usize,
    #[serde(rename = "M")]
    pub m: usize,
    #[serde(rename = "D")]
    pub d: usize,
    #[serde(rename = "P")]
    pub p: f64,
    pub step: usize,
    pub reps: usize,
    pub loss: f64,
    pub err_h: f64,
    pub err_y: f64,
    pub is_reference: bool,
}

pub fn aggregate(rows: &[ErrorRow]) -> Vec<AggRow> {
    let mut groups: BTreeMap<(Coupling, usize, usize, usize, usize), Vec<&ErrorRow>> =
        BTreeMap::new();
    for r in rows {
        groups
            .entry((r.coupling, r.l, r.m, r.d, r.step))
            .or_default()
            .push(r);
    }
    groups
        .into_iter()
        .map(|((c, l, m, d, step), g)| {
            let k = g.len() as f64;
            AggRow {
                coupling: c,
                l,
                m,
                d,
                p: (l * m * d) as f64,
                step,
                reps: g.len(),
                loss: g.iter().map(|r| r.loss).sum::<f64>() / k,
                err_h: (g.iter().map(|r| r.msq_h).sum::<f64>() / k).sqrt(),
                err_y: (g.iter().map(|r| r.msq_y).sum::<f64>() / k).sqrt(),
                is_reference: g[0].is_reference,
            }
        })
        .collect()
}
