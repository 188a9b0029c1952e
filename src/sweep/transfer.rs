//! Transfer sweeps: does the best value of a knob (the learning rate, alpha, a scalar of
//! the parametrization table) found on a small network stay the best on a large one?
//!
//! A transfer sweep has knob axes in its `[grid]` besides L, M, D and no reference
//! (`[reference] kind = "none"`). Every (repetition, shape, knob point) is a task that
//! trains K full-batch GD steps; every knob point of a shape and repetition starts from
//! the same weights (common random numbers, [`super::Task::shape_id`]), so that a loss
//! curve over the knob is smooth in the knob. A run that diverges (non-finite values, or
//! a loss beyond `max_loss_growth` times its initial value, [`crate::train`]) is an
//! outcome here, recorded with its step and layer ([`super::TaskRecord::diverged`]), and
//! counts as an infinite loss.
//!
//! **The loss.** `loss_K` is the training loss of the last record (k = K - 1: after
//! K - 1 updates; [`crate::train`]'s record convention), per (repetition, shape, other
//! knob values, coupling), along the transfer knob `x` (`[report] transfer`; default
//! `lr`).
//!
//! **The optimum.** On the knob's grid (log10 of the values when they are all
//! positive, the values themselves otherwise), with `y = ln loss_K`: the grid point of
//! least loss `i`; when both neighbours are finite, the vertex of the parabola through
//! `(x_{i-1}, y_{i-1}), (x_i, y_i), (x_{i+1}, y_{i+1})`, clamped to `[x_{i-1}, x_{i+1}]`;
//! when `i` is the first or last grid point the optimum is that point and marked as
//! censored (`edge = "low"`/`"high"`: the true optimum may lie beyond the grid). Per
//! shape, over repetitions, the uncensored optima give the mean of `x*`, its standard
//! error and 95% Student-t interval (`n - 1` degrees of freedom), reported in the knob's
//! units (`10^mean`: the geometric mean, for a log grid).
//!
//! **The drift.** For each shape axis a in {L, M, D} with at least two values, and for
//! the width M = D along the grid's diagonal (the shapes with M = D, when M and D share
//! two values or more), the
//! exponent b of `x* ~ a^b` (log grid; for a linear grid, the slope of `x*` in `ln a`)
//! is fitted by [`fit::loglog_fit_grouped`]: OLS of `ln x*` on `ln a` with one intercept
//! per combination of the other shape axes, other knob values and coupling, every
//! repetition's uncensored optimum a point; its standard error and 95% interval
//! (n - G - 1 degrees of freedom). The knob **transfers** along a when `|b| <= tau`
//! (`[report] tolerance`, default 0.25), **grows** when `b > tau`, **shrinks** when
//! `b < -tau`; **undetermined** when too few optima are uncensored to fit.
//!
//! What the presets do (`experiments/transfer-*.toml`, the tests in
//! `sweep::tests`): under the papers' scaling (`chizat-julia`: every rate times
//! `L M D`, multipliers `1/D` and `alpha/(L M)`) the optimal global rate is the same at
//! every M, D and L; under `standard` (fan-in init, one global rate, no multipliers) it
//! shrinks with the width and with the depth.

use super::SweepError;
use super::plan::Sweep;
use super::spec::Coupling;
use super::store::{SweepDir, TaskState};
use crate::fit;
use crate::io::{self, IoError};
use crate::plot::{self, Figure, Series, Style};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// One variant of one task: its final training loss.
#[derive(Debug, Clone, Serialize)]
pub struct LossRow {
    pub coupling: Coupling,
    pub rep: usize,
    #[serde(rename = "L")]
    pub l: usize,
    #[serde(rename = "M")]
    pub m: usize,
    #[serde(rename = "D")]
    pub d: usize,
    /// The knob point's values, one per knob axis (in [`super::plan::KnobGrid`] order).
    #[serde(skip)]
    pub knobs: Vec<f64>,
    /// Training loss at the last record; +inf when the run diverged.
    pub loss: f64,
    /// The divergence (step and layer), empty when the run finished.
    pub diverged: String,
    pub seconds: f64,
}

/// Which curve a row belongs to: everything but the transfer knob and the repetition.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct CurveKey {
    pub coupling: Coupling,
    #[serde(rename = "L")]
    pub l: usize,
    #[serde(rename = "M")]
    pub m: usize,
    #[serde(rename = "D")]
    pub d: usize,
    /// The other knob axes' values, as their bit patterns (ordered, hashable).
    #[serde(skip)]
    pub others: Vec<u64>,
}

/// The optimum of one repetition's curve.
#[derive(Debug, Clone, Serialize)]
pub struct Optimum {
    #[serde(flatten)]
    pub key: CurveKey,
    pub rep: usize,
    /// The optimal knob value (in the knob's units).
    pub opt: f64,
    /// The loss at the optimum (the parabola's value when interpolated).
    pub loss: f64,
    /// "low"/"high" when the least loss is at the grid's first/last point (censored);
    /// "all diverged" when every run diverged; empty otherwise.
    pub edge: &'static str,
    /// Whether the optimum was interpolated (both neighbours finite).
    pub interpolated: bool,
}

/// The optimum of one shape over repetitions.
#[derive(Debug, Clone, Serialize)]
pub struct ShapeOptimum {
    #[serde(flatten)]
    pub key: CurveKey,
    /// Uncensored optima (repetitions).
    pub n: usize,
    /// Censored or all-diverged repetitions.
    pub censored: usize,
    /// Mean optimum (geometric mean for a log grid); NaN when n = 0.
    pub opt: f64,
    /// 95% interval of the mean (Student t, n - 1 dof); NaN when n < 2.
    pub ci_lo: f64,
    pub ci_hi: f64,
    /// Standard error of the mean of the optimum's grid coordinate (log10 units for a
    /// log grid).
    pub se: f64,
}

/// The drift of the optimum along one shape axis.
#[derive(Debug, Clone, Serialize)]
pub struct Drift {
    /// "L", "M", "D", or "M=D" (the width along the diagonal M = D).
    pub axis: &'static str,
    /// Points (uncensored optima) in the fit.
    pub n: usize,
    /// Groups (intercepts).
    pub groups: usize,
    pub exponent: f64,
    pub se: f64,
    pub ci_lo: f64,
    pub ci_hi: f64,
    /// "transfers", "grows", "shrinks" or "undetermined".
    pub verdict: String,
}

/// What the transfer report found, as written to `fits.json`.
#[derive(Debug, Clone, Serialize)]
pub struct TransferSummary {
    /// The transfer knob.
    pub knob: String,
    /// Whether its grid is logarithmic (every value positive).
    pub log_grid: bool,
    pub tolerance: f64,
    pub drift: Vec<Drift>,
    pub shapes: Vec<ShapeOptimum>,
    pub runs: usize,
    pub diverged: usize,
    pub wall_s: f64,
}

/// Every finished task's final losses (transfer sweeps).
pub fn collect_losses(sw: &Sweep, dir: &SweepDir) -> Vec<LossRow> {
    let k = sw.spec.steps;
    let mut rows = Vec::new();
    for t in sw.plan() {
        let TaskState::Done(recs) = dir.state(sw, &t) else {
            continue;
        };
        let knobs = t.knob.map(|i| sw.knobs.point(i)).unwrap_or_default();
        for r in recs {
            let loss = match (&r.diverged, r.losses.len() == k) {
                (None, true) => r.losses[k - 1],
                _ => f64::INFINITY,
            };
            rows.push(LossRow {
                coupling: r.coupling,
                rep: t.rep,
                l: t.l,
                m: t.m,
                d: t.d,
                knobs: knobs.clone(),
                loss: if loss.is_finite() {
                    loss
                } else {
                    f64::INFINITY
                },
                diverged: r.diverged.clone().unwrap_or_default(),
                seconds: r.seconds,
            });
        }
    }
    rows
}

/// The optimum of one curve: `xs` the grid coordinates (sorted), `ys = ln loss`
/// (+inf for a diverged run). `(x*, y*, edge, interpolated)`; `None` when every
/// point diverged.
pub fn curve_optimum(xs: &[f64], ys: &[f64]) -> Option<(f64, f64, &'static str, bool)> {
    let (i, &y) = ys
        .iter()
        .enumerate()
        .filter(|(_, y)| y.is_finite() || **y == f64::NEG_INFINITY)
        .min_by(|a, b| a.1.total_cmp(b.1))?;
    let n = xs.len();
    if n == 1 {
        return Some((xs[0], y, "", false));
    }
    if i == 0 {
        return Some((xs[0], y, "low", false));
    }
    if i + 1 == n {
        return Some((xs[n - 1], y, "high", false));
    }
    let (x0, x1, x2) = (xs[i - 1], xs[i], xs[i + 1]);
    let (y0, y1, y2) = (ys[i - 1], ys[i], ys[i + 1]);
    if !(y0.is_finite() && y1.is_finite() && y2.is_finite()) {
        return Some((x1, y1, "", false));
    }
    // The parabola through the three points (divided differences): y = y1 + b (x - x1)
    // + a (x - x1)^2 ... written with a = [x0, x1, x2] y, b = [x0, x1] y + a (x1 - x0).
    let d01 = (y1 - y0) / (x1 - x0);
    let d12 = (y2 - y1) / (x2 - x1);
    let a = (d12 - d01) / (x2 - x0);
    if a.is_nan() || a <= 0.0 {
        return Some((x1, y1, "", false));
    }
    let b = d01 + a * (x1 - x0);
    let xv = (x1 - b / (2.0 * a)).clamp(x0, x2);
    let yv = y1 + b * (xv - x1) + a * (xv - x1) * (xv - x1);
    Some((xv, yv, "", true))
}

/// The transfer analysis of `rows`: every curve's optimum, each shape's mean optimum and
/// the drift along L, M and D.
pub fn analyse(
    sw: &Sweep,
    rows: &[LossRow],
    knob: usize,
    tolerance: f64,
) -> (Vec<Optimum>, Vec<ShapeOptimum>, Vec<Drift>, bool) {
    let values = &sw.knobs.values[knob];
    let log_grid = values.iter().all(|v| *v > 0.0);
    let coord = |v: f64| if log_grid { v.log10() } else { v };
    let uncoord = |x: f64| if log_grid { 10f64.powf(x) } else { x };
    let xs: Vec<f64> = values.iter().map(|v| coord(*v)).collect();
    // (curve, rep) -> ln loss per grid point.
    let mut curves: BTreeMap<(CurveKey, usize), Vec<f64>> = BTreeMap::new();
    for r in rows {
        let key = CurveKey {
            coupling: r.coupling,
            l: r.l,
            m: r.m,
            d: r.d,
            others: r
                .knobs
                .iter()
                .enumerate()
                .filter(|(a, _)| *a != knob)
                .map(|(_, v)| v.to_bits())
                .collect(),
        };
        let Some(j) = values
            .iter()
            .position(|v| v.to_bits() == r.knobs[knob].to_bits())
        else {
            continue;
        };
        let ys = curves
            .entry((key, r.rep))
            .or_insert_with(|| vec![f64::NAN; values.len()]);
        ys[j] = if r.loss.is_finite() {
            r.loss.max(f64::MIN_POSITIVE).ln()
        } else {
            f64::INFINITY
        };
    }
    let mut optima = Vec::new();
    for ((key, rep), ys) in &curves {
        // A curve with missing points (unfinished tasks) is left out.
        if ys.iter().any(|y| y.is_nan()) {
            continue;
        }
        let (opt, loss, edge, interpolated) = match curve_optimum(&xs, ys) {
            Some((x, y, e, i)) => (uncoord(x), y.exp(), e, i),
            None => (f64::NAN, f64::INFINITY, "all diverged", false),
        };
        optima.push(Optimum {
            key: key.clone(),
            rep: *rep,
            opt,
            loss,
            edge,
            interpolated,
        });
    }
    let mut by_shape: BTreeMap<CurveKey, Vec<&Optimum>> = BTreeMap::new();
    for o in &optima {
        by_shape.entry(o.key.clone()).or_default().push(o);
    }
    let shapes: Vec<ShapeOptimum> = by_shape
        .into_iter()
        .map(|(key, os)| {
            let xs: Vec<f64> = os
                .iter()
                .filter(|o| o.edge.is_empty())
                .map(|o| coord(o.opt))
                .collect();
            let n = xs.len();
            let (mean, se, half) = fit::mean_ci95(&xs);
            ShapeOptimum {
                key,
                n,
                censored: os.len() - n,
                opt: uncoord(mean),
                ci_lo: uncoord(mean - half),
                ci_hi: uncoord(mean + half),
                se,
            }
        })
        .collect();
    let mut drift = Vec::new();
    // The axes: L, M, D, and the width M = D along the grid's diagonal (shapes with
    // M = D, when M and D share two values or more).
    let diagonal = sw.ms.iter().filter(|m| sw.ds.contains(m)).count();
    let axes: [(&'static str, usize); 4] = [
        ("L", sw.ls.len()),
        ("M", sw.ms.len()),
        ("D", sw.ds.len()),
        ("M=D", diagonal),
    ];
    for (a, (name, count)) in axes.into_iter().enumerate() {
        if count < 2 {
            continue;
        }
        let mut groups: BTreeMap<CurveKey, usize> = BTreeMap::new();
        let (mut x, mut y, mut g) = (Vec::new(), Vec::new(), Vec::new());
        for o in optima.iter().filter(|o| o.edge.is_empty()) {
            let mut k = o.key.clone();
            let v = match a {
                0 => std::mem::take(&mut k.l),
                1 => std::mem::take(&mut k.m),
                2 => std::mem::take(&mut k.d),
                _ if k.m == k.d => {
                    k.d = 0;
                    std::mem::take(&mut k.m)
                }
                _ => continue,
            };
            let next = groups.len();
            g.push(*groups.entry(k).or_insert(next));
            x.push(v as f64);
            // ln y is the fitted coordinate: ln x* on a log grid, x* itself otherwise.
            y.push(if log_grid { o.opt } else { o.opt.exp() });
        }
        let d = match fit::loglog_fit_grouped(&x, &y, &g) {
            Ok(f) if f.slope.is_finite() && f.slope_se.is_finite() => Drift {
                axis: name,
                n: x.len(),
                groups: groups.len(),
                exponent: f.slope,
                se: f.slope_se,
                ci_lo: f.slope_ci95.0,
                ci_hi: f.slope_ci95.1,
                verdict: if f.slope.abs() <= tolerance {
                    "transfers"
                } else if f.slope > 0.0 {
                    "grows"
                } else {
                    "shrinks"
                }
                .into(),
            },
            Ok(_) | Err(_) => Drift {
                axis: name,
                n: x.len(),
                groups: groups.len(),
                exponent: f64::NAN,
                se: f64::NAN,
                ci_lo: f64::NAN,
                ci_hi: f64::NAN,
                verdict: "undetermined".into(),
            },
        };
        drift.push(d);
    }
    (optima, shapes, drift, log_grid)
}

fn csv_bytes(path: &Path, header: &[String], rows: &[Vec<String>]) -> Result<Vec<u8>, IoError> {
    let err = |e: csv::Error| IoError::Os {
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    };
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(header).map_err(err)?;
    for r in rows {
        w.write_record(r).map_err(err)?;
    }
    w.into_inner().map_err(|e| err(e.into_error().into()))
}

fn num(x: f64) -> String {
    if x.is_nan() {
        "NaN".into()
    } else if x.is_infinite() {
        if x > 0.0 { "inf" } else { "-inf" }.into()
    } else {
        format!("{x:e}")
    }
}

/// Writes a transfer sweep's tables, figures and report: `losses.csv` (one row per run),
/// `optima.csv` (one per curve and repetition), `transfer.csv` (one per shape),
/// `fits.json` (the [`TransferSummary`]), `figures/transfer.{png,svg}` and `report.md`.
/// Returns the report's path.
pub fn write_report(sw: &Sweep, dir: &SweepDir, wall_s: f64) -> Result<PathBuf, SweepError> {
    let settings = sw.report_settings()?;
    let Some(knob_name) = settings.transfer.clone() else {
        return Err(crate::spec::SpecError::Invalid {
            field: "grid".into(),
            value: "no knob axis".into(),
            why: "a transfer sweep needs a knob axis".into(),
        }
        .into());
    };
    let knob = sw
        .knobs
        .names
        .iter()
        .position(|n| *n == knob_name)
        .expect("report.transfer is a knob axis (checked)");
    let rows = collect_losses(sw, dir);
    let (optima, shapes, drift, log_grid) = analyse(sw, &rows, knob, settings.tolerance);
    let others: Vec<(usize, &String)> = sw
        .knobs
        .names
        .iter()
        .enumerate()
        .filter(|(a, _)| *a != knob)
        .collect();
    let other_cols = |k: &CurveKey| -> Vec<String> {
        k.others.iter().map(|b| num(f64::from_bits(*b))).collect()
    };
    let key_cols = |k: &CurveKey| -> Vec<String> {
        let mut v = vec![
            k.coupling.name().to_string(),
            k.l.to_string(),
            k.m.to_string(),
            k.d.to_string(),
        ];
        v.extend(other_cols(k));
        v
    };
    let mut key_head: Vec<String> = ["coupling", "L", "M", "D"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    key_head.extend(others.iter().map(|(_, n)| (*n).clone()));

    // losses.csv
    let path = dir.root.join("losses.csv");
    let mut head: Vec<String> = ["coupling", "rep", "L", "M", "D"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    head.extend(sw.knobs.names.iter().cloned());
    head.extend(
        ["loss", "diverged", "seconds"]
            .iter()
            .map(|s| s.to_string()),
    );
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut v = vec![
                r.coupling.name().to_string(),
                r.rep.to_string(),
                r.l.to_string(),
                r.m.to_string(),
                r.d.to_string(),
            ];
            v.extend(r.knobs.iter().map(|x| num(*x)));
            v.extend([num(r.loss), r.diverged.clone(), format!("{:.4}", r.seconds)]);
            v
        })
        .collect();
    io::atomic_write(&path, &csv_bytes(&path, &head, &body)?)?;

    // optima.csv, transfer.csv: the curve's key columns, then their own.
    let keyed = |name: &str, cols: &[&str], rows: Vec<(&CurveKey, Vec<String>)>| {
        let path = dir.root.join(name);
        let mut head = key_head.clone();
        head.extend(cols.iter().map(|s| s.to_string()));
        let body: Vec<Vec<String>> = rows
            .into_iter()
            .map(|(k, own)| {
                let mut v = key_cols(k);
                v.extend(own);
                v
            })
            .collect();
        io::atomic_write(&path, &csv_bytes(&path, &head, &body)?)
    };
    keyed(
        "optima.csv",
        &["rep", "opt", "loss", "edge", "interpolated"],
        optima
            .iter()
            .map(|o| {
                let own = vec![
                    o.rep.to_string(),
                    num(o.opt),
                    num(o.loss),
                    o.edge.to_string(),
                    o.interpolated.to_string(),
                ];
                (&o.key, own)
            })
            .collect(),
    )?;
    keyed(
        "transfer.csv",
        &["n", "censored", "opt", "ci_lo", "ci_hi", "se"],
        shapes
            .iter()
            .map(|s| {
                let own = vec![
                    s.n.to_string(),
                    s.censored.to_string(),
                    num(s.opt),
                    num(s.ci_lo),
                    num(s.ci_hi),
                    num(s.se),
                ];
                (&s.key, own)
            })
            .collect(),
    )?;

    let summary = TransferSummary {
        knob: knob_name.clone(),
        log_grid,
        tolerance: settings.tolerance,
        drift: drift.clone(),
        shapes: shapes.clone(),
        runs: rows.len(),
        diverged: rows.iter().filter(|r| !r.diverged.is_empty()).count(),
        wall_s,
    };
    io::atomic_write(
        &dir.root.join("fits.json"),
        serde_json::to_string_pretty(&summary)
            .expect("transfer summary serialises")
            .as_bytes(),
    )?;

    let figs = figures(sw, &rows, &shapes, &drift, knob, log_grid);
    let mut fig_paths = Vec::new();
    if !figs.is_empty() {
        let stem = dir.root.join("figures").join("transfer");
        std::fs::create_dir_all(dir.root.join("figures")).map_err(|source| IoError::Os {
            path: dir.root.join("figures"),
            source,
        })?;
        fig_paths = plot::save_panels(&figs, 2, &stem)?;
    }

    // report.md
    let mut md = String::new();
    let _ = writeln!(md, "# Transfer sweep `{}`\n", sw.spec.name);
    let _ = writeln!(
        md,
        "Parametrization `{}`, activation `{}`, K = {} steps, {} repetition(s), couplings {:?}; knob axes {}. The loss is the training loss at the last record (k = K - 1). Runs: {} ({} diverged). Wall time {:.1} s.\n",
        sw.param.name,
        sw.activation.name(),
        sw.spec.steps,
        sw.spec.reps,
        sw.spec
            .couplings
            .iter()
            .map(|c| c.name())
            .collect::<Vec<_>>(),
        sw.knobs
            .names
            .iter()
            .zip(&sw.knobs.values)
            .map(|(n, v)| format!(
                "`{n}` ({} values, {} to {})",
                v.len(),
                num(v[0]),
                num(v[v.len() - 1])
            ))
            .collect::<Vec<_>>()
            .join(", "),
        rows.len(),
        summary.diverged,
        wall_s
    );
    let _ = writeln!(
        md,
        "## Drift of the optimal `{knob_name}`\n\nExponent b of `{knob_name}* ~ a^b`{}, fitted over every repetition's uncensored optimum with one intercept per combination of the other axes (`M=D`: the width along the grid's diagonal, shapes with M = D); **transfers** when |b| <= {}.\n",
        if log_grid {
            ""
        } else {
            " (linear grid: slope of the optimum in ln a)"
        },
        settings.tolerance
    );
    let _ = writeln!(
        md,
        "| axis | points | groups | exponent | 95% CI | verdict |\n|---|---|---|---|---|---|"
    );
    for d in &drift {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.3} | [{:.3}, {:.3}] | {} |",
            d.axis, d.n, d.groups, d.exponent, d.ci_lo, d.ci_hi, d.verdict
        );
    }
    let censored: usize = shapes.iter().map(|s| s.censored).sum();
    if censored > 0 {
        let _ = writeln!(
            md,
            "\n{censored} optimum/optima lay at the edge of the grid (or every run diverged) and are left out of the fits: widen `grid.{knob_name}`."
        );
    }
    let _ = writeln!(md, "\n## Optimum per shape\n");
    let mut h = key_head.join(" | ");
    h.push_str(" | n | censored | optimum | 95% CI |");
    let _ = writeln!(md, "| {h}\n|{}", "---|".repeat(key_head.len() + 4));
    for s in &shapes {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.4e} | [{:.4e}, {:.4e}] |",
            key_cols(&s.key).join(" | "),
            s.n,
            s.censored,
            s.opt,
            s.ci_lo,
            s.ci_hi
        );
    }
    let _ = writeln!(
        md,
        "\nTables: `losses.csv`, `optima.csv`, `transfer.csv`; fits: `fits.json`."
    );
    if let Some(png) = fig_paths.first() {
        let rel = png.strip_prefix(&dir.root).unwrap_or(png);
        let _ = writeln!(md, "\n![loss against {knob_name}]({})", rel.display());
    }
    let path = dir.root.join("report.md");
    io::atomic_write(&path, md.as_bytes())?;
    Ok(path)
}

/// For each shape axis with two values or more: the loss curves along the knob (the
/// geometric mean over repetitions, the other axes at their middle values, the first
/// coupling, the other knobs at their middle values; losses beyond 10 times the largest
/// one at the smallest knob value left out) with each shape's mean optimum marked by a
/// dashed vertical tick, and the optimum against the axis with its 95% intervals.
fn figures(
    sw: &Sweep,
    rows: &[LossRow],
    shapes: &[ShapeOptimum],
    drift: &[Drift],
    knob: usize,
    log_grid: bool,
) -> Vec<Figure> {
    let mid = |v: &[usize]| v[v.len() / 2];
    let (lm, mm, dm) = (mid(&sw.ls), mid(&sw.ms), mid(&sw.ds));
    let coupling = sw.spec.couplings[0];
    let other_mid: Vec<u64> = sw
        .knobs
        .values
        .iter()
        .enumerate()
        .filter(|(a, _)| *a != knob)
        .map(|(_, v)| v[v.len() / 2].to_bits())
        .collect();
    let row_others = |r: &LossRow| -> Vec<u64> {
        r.knobs
            .iter()
            .enumerate()
            .filter(|(a, _)| *a != knob)
            .map(|(_, v)| v.to_bits())
            .collect()
    };
    let xscale = if log_grid {
        plot::Scale::Log
    } else {
        plot::Scale::Linear
    };
    let kname = &sw.knobs.names[knob];
    let values = &sw.knobs.values[knob];
    let mut figs = Vec::new();
    let axes: [(&str, &Vec<usize>); 3] = [("L", &sw.ls), ("M", &sw.ms), ("D", &sw.ds)];
    for (a, (name, vals)) in axes.iter().enumerate() {
        if vals.len() < 2 {
            continue;
        }
        let fixed = |l: usize, m: usize, d: usize| -> Option<usize> {
            let s = [l, m, d];
            let f = [lm, mm, dm];
            (0..3).all(|i| i == a || s[i] == f[i]).then_some(s[a])
        };
        let others_txt = ["L", "M", "D"]
            .iter()
            .zip([lm, mm, dm])
            .enumerate()
            .filter(|(i, _)| *i != a)
            .map(|(_, (n, v))| format!("{n} = {v}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut fig = Figure::new(
            format!("loss after K steps vs {kname}, {name} varies ({others_txt})"),
            kname.clone(),
            "training loss",
            xscale,
            plot::Scale::Log,
        );
        let mut curves = Vec::new();
        for &v in vals.iter() {
            let mut xs = Vec::new();
            let mut ys = Vec::new();
            for &kv in values {
                let ls: Vec<f64> = rows
                    .iter()
                    .filter(|r| {
                        r.coupling == coupling
                            && fixed(r.l, r.m, r.d) == Some(v)
                            && r.knobs[knob].to_bits() == kv.to_bits()
                            && row_others(r) == other_mid
                    })
                    .map(|r| r.loss)
                    .collect();
                if ls.is_empty() || ls.iter().any(|l| !(l.is_finite() && *l > 0.0)) {
                    continue;
                }
                xs.push(kv);
                ys.push((ls.iter().map(|l| l.ln()).sum::<f64>() / ls.len() as f64).exp());
            }
            curves.push((v, xs, ys));
        }
        // Losses that blew up (beyond 10 times the largest loss at the smallest knob
        // value drawn) are left out, so that the basin stays readable.
        let cap = 10.0
            * curves
                .iter()
                .filter_map(|(_, _, ys)| ys.first().copied())
                .fold(0.0, f64::max);
        for (ci, (v, xs, ys)) in curves.into_iter().enumerate() {
            let (xs, ys): (Vec<f64>, Vec<f64>) =
                xs.into_iter().zip(ys).filter(|(_, y)| *y <= cap).unzip();
            if xs.is_empty() {
                continue;
            }
            fig.series.push(
                Series::new(
                    format!("{name} = {v}"),
                    xs.clone(),
                    ys.clone(),
                    Style::LinePoints,
                )
                .with_color(ci),
            );
            // The optimum: on the curve, at the interpolated mean optimum.
            if let Some(s) = shapes.iter().find(|s| {
                s.key.coupling == coupling
                    && fixed(s.key.l, s.key.m, s.key.d) == Some(v)
                    && s.key.others == other_mid
            }) && s.opt.is_finite()
            {
                // A dashed vertical tick through the curve at the optimum.
                let y = interp(&xs, &ys, s.opt, log_grid);
                fig.series.push(
                    Series::new(
                        "",
                        vec![s.opt, s.opt],
                        vec![y / 2.0, y * 2.0],
                        Style::Dashed,
                    )
                    .with_color(ci),
                );
            }
        }
        if fig.series.is_empty() {
            continue;
        }
        figs.push(fig);
        // The drift panel: every shape's optimum along this axis, per group (the curves'
        // fixed values only, to keep it readable).
        let mut dfig = Figure::new(
            format!(
                "optimal {kname} vs {name}{}",
                drift
                    .iter()
                    .find(|d| d.axis == *name)
                    .map(|d| format!(
                        ": exponent {:.2} [{:.2}, {:.2}], {}",
                        d.exponent, d.ci_lo, d.ci_hi, d.verdict
                    ))
                    .unwrap_or_default()
            ),
            name.to_string(),
            format!("optimal {kname}"),
            plot::Scale::Log,
            xscale,
        );
        let pts: Vec<&ShapeOptimum> = shapes
            .iter()
            .filter(|s| {
                s.key.coupling == coupling
                    && fixed(s.key.l, s.key.m, s.key.d).is_some()
                    && s.key.others == other_mid
                    && s.opt.is_finite()
            })
            .collect();
        if !pts.is_empty() {
            let x: Vec<f64> = pts
                .iter()
                .map(|s| [s.key.l, s.key.m, s.key.d][a] as f64)
                .collect();
            let y: Vec<f64> = pts.iter().map(|s| s.opt).collect();
            let lo: Vec<f64> = pts
                .iter()
                .map(|s| if s.ci_lo.is_finite() { s.ci_lo } else { s.opt })
                .collect();
            let hi: Vec<f64> = pts
                .iter()
                .map(|s| if s.ci_hi.is_finite() { s.ci_hi } else { s.opt })
                .collect();
            dfig.series.push(
                Series::new("optimum (95% CI)", x, y, Style::LinePoints)
                    .with_band(lo, hi)
                    .with_color(0),
            );
            figs.push(dfig);
        }
    }
    figs
}

/// The curve `(xs, ys)` at `x`: linear interpolation in (coordinate, ln y).
fn interp(xs: &[f64], ys: &[f64], x: f64, log_grid: bool) -> f64 {
    let c = |v: f64| if log_grid { v.log10() } else { v };
    let xc = c(x);
    for i in 1..xs.len() {
        let (a, b) = (c(xs[i - 1]), c(xs[i]));
        if xc >= a && xc <= b && b > a {
            let t = (xc - a) / (b - a);
            return (ys[i - 1].ln() * (1.0 - t) + ys[i].ln() * t).exp();
        }
    }
    let i = xs
        .iter()
        .enumerate()
        .min_by(|p, q| (c(*p.1) - xc).abs().total_cmp(&(c(*q.1) - xc).abs()))
        .map(|p| p.0)
        .unwrap_or(0);
    ys[i]
}

#[cfg(test)]
mod tests;
