//! The report of a shape sweep: honest rate fits, figures and a Markdown summary.
//!
//! For each error space (embedding: coupled runs; output: uncoupled runs, and coupled if
//! present) at the report's read step:
//! - **slices**: log-log OLS of the RMS error against D at fixed (L, M), against M at
//!   fixed (L, D), against L at fixed (M, D) (when L varies), with the slope's standard
//!   error, 95% interval (Student t) and p-value ([`crate::fit::loglog_fit`]);
//! - **joint fit** of the paper's rate model (docs/papers.md 2.4, "Fitted laws"):
//!   err^2 = a D/(LM) + b/D + c/L^2 (embedding) or a (D/(LM))^2 + b/D (output), with
//!   non-negative coefficients fitted in log space, and percentile intervals from a
//!   bootstrap over repetitions ([`crate::fit::bootstrap_rate_fit`]); beside it the
//!   authors' hand-drawn constants (`fit_h`, `fit_y`, docs/papers.md 2.5; against a linear limit
//!   reference, their fitted E2 constants a = 0.673, b = 0.437 and a = 0.0265, b = 0.250)
//!   and their log-space residual on the same data;
//! - **P scaling**: the fitted error along the shapes that minimise it at each P
//!   ([`crate::fit::p_scaling`]; the paper's -1/6 and -1/5) and the empirical exponent of
//!   the lower envelope (the best grid shape in each half-decade of P).
//!
//! The reference shape itself (error 0 by construction) never enters a fit.

use super::{Coupling, ErrorRow, Sweep, SweepDir, SweepError};
use crate::fit::{self, LinearFit, RateFit, RateModel, Shape};
use crate::io;
use crate::plot::{self, Figure, Scale, Series, Style};
use crate::vslimit::LimitReference;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// One fitted slice.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SliceFit {
    pub space: String,
    /// "D", "M" or "L": the varying dimension.
    pub against: &'static str,
    /// The fixed dimensions, e.g. "L=50, M=937".
    pub fixed: String,
    pub fit: LinearFit,
}

/// Everything the report states, also written as `fits.json`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub step: usize,
    pub p_step: usize,
    pub slices: Vec<SliceFit>,
    pub joint: Vec<JointFit>,
    pub headline: Vec<Headline>,
    pub wall_s: f64,
}

/// A joint rate-model fit of one space.
#[derive(Debug, Clone, serde::Serialize)]
pub struct JointFit {
    pub space: String,
    pub names: Vec<String>,
    pub coefs: Vec<f64>,
    pub ci95: Vec<(f64, f64)>,
    pub n_boot: usize,
    pub rss_log: f64,
    pub authors_coefs: Vec<f64>,
    pub authors_rss_log: f64,
    /// Exponent of the fitted error along optimal shapes over the grid's P range.
    pub p_exponent_fitted: Option<f64>,
    /// OLS exponent of the lower envelope of the measured errors against P.
    pub p_exponent_envelope: Option<LinearFit>,
}

/// A headline number beside the paper's.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Headline {
    pub what: String,
    pub value: f64,
    pub ci95: (f64, f64),
    pub paper: f64,
}

/// The two error spaces of docs/papers.md 2.4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Metric {
    /// `err_h`, the embedding (hidden-state) error of coupled runs.
    Embedding,
    /// `err_y`, the output error.
    Output,
}

impl Metric {
    fn name(self) -> &'static str {
        match self {
            Metric::Embedding => "embedding",
            Metric::Output => "output",
        }
    }
    /// The row's mean squared error in this space.
    fn msq(self, r: &ErrorRow) -> f64 {
        match self {
            Metric::Embedding => r.msq_h,
            Metric::Output => r.msq_y,
        }
    }
    /// The rate model fitted in this space (docs/papers.md 2.4, "Fitted laws").
    fn model(self) -> RateModel {
        match self {
            Metric::Embedding => RateModel::embedding(),
            Metric::Output => RateModel::output(),
        }
    }
    /// The paper's P exponent at the best shape: -1/6 (embedding), -1/5 (output).
    fn paper_p_exponent(self) -> f64 {
        match self {
            Metric::Embedding => -1.0 / 6.0,
            Metric::Output => -1.0 / 5.0,
        }
    }
}

struct Space {
    metric: Metric,
    name: &'static str,
    coupling: Coupling,
    model: RateModel,
    authors: RateFit,
}

/// A grid shape (L, M, D).
type ShapeKey = (usize, usize, usize);

/// Per shape: the per-repetition mean squared errors of one space at one step.
type PerShape = BTreeMap<ShapeKey, BTreeMap<usize, f64>>;

fn per_shape(rows: &[ErrorRow], sp: &Space, step: usize) -> PerShape {
    let mut m: PerShape = BTreeMap::new();
    for r in rows {
        if r.coupling != sp.coupling || r.step != step || r.is_reference {
            continue;
        }
        let v = sp.metric.msq(r);
        if v.is_finite() && v > 0.0 {
            m.entry((r.l, r.m, r.d)).or_default().insert(r.rep, v);
        }
    }
    m
}

fn rms(reps: &BTreeMap<usize, f64>) -> f64 {
    (reps.values().sum::<f64>() / reps.len() as f64).sqrt()
}

/// `k` values spread over the sorted `v` (the default slices).
pub(crate) fn pick_spread(v: &[usize], k: usize) -> Vec<usize> {
    if v.len() <= k {
        return v.to_vec();
    }
    let n = v.len();
    let mut out: Vec<usize> = (0..k)
        .map(|i| v[((0.3 + 0.65 * i as f64 / (k - 1) as f64) * (n - 1) as f64).round() as usize])
        .collect();
    out.dedup();
    out
}

/// Fits, draws and writes the report of a sweep. Returns the path of `report.md`.
pub fn write_report(
    sw: &Sweep,
    dir: &SweepDir,
    rows: &[ErrorRow],
    wall_s: f64,
) -> Result<PathBuf, SweepError> {
    let lim = if sw.against_limit() {
        Some(sw.limit_reference()?)
    } else {
        None
    };
    // Checked again (SweepSpec::check refuses these before training), so that a `Sweep`
    // built or edited by a library caller cannot make the report index past its data.
    let settings = sw.report_settings()?;
    let (step, p_step, n_boot) = (settings.step, settings.p_step, settings.bootstrap);
    let (slice_m, slice_d) = (settings.slice_m, settings.slice_d);
    let grid_err = |field: &str| crate::spec::SpecError::Invalid {
        field: field.into(),
        value: "[]".into(),
        why: "must not be empty".into(),
    };
    let lmax = *sw.ls.last().ok_or_else(|| grid_err("grid.L"))?;
    let mmax = *sw.ms.last().ok_or_else(|| grid_err("grid.M"))?;
    let (dmin, dmax) = match (sw.ds.first(), sw.ds.last()) {
        (Some(&a), Some(&b)) => (a, b),
        _ => return Err(grid_err("grid.D").into()),
    };
    let mut spaces = Vec::new();
    let has = |c: Coupling| sw.spec.couplings.contains(&c);
    let (authors_h, authors_y) = authors_constants(lim.as_deref());
    if has(Coupling::Coupled) {
        spaces.push(Space {
            metric: Metric::Embedding,
            name: Metric::Embedding.name(),
            coupling: Coupling::Coupled,
            model: Metric::Embedding.model(),
            authors: authors_h,
        });
    }
    let out_coupling = if has(Coupling::Uncoupled) {
        Coupling::Uncoupled
    } else {
        Coupling::Coupled
    };
    spaces.push(Space {
        metric: Metric::Output,
        name: Metric::Output.name(),
        coupling: out_coupling,
        model: Metric::Output.model(),
        authors: authors_y,
    });
    let figdir = dir.root.join("figures");
    let mut summary = Summary {
        step,
        p_step,
        slices: Vec::new(),
        joint: Vec::new(),
        headline: Vec::new(),
        wall_s,
    };
    let mut figures: Vec<(String, PathBuf)> = Vec::new();
    let cx = Context {
        sw,
        rows,
        step,
        p_step,
        p_max: settings.p_max,
        n_boot,
        slice_m: &slice_m,
        slice_d: &slice_d,
        lmax,
        mmax,
        dmax,
        figdir: &figdir,
    };
    for sp in &spaces {
        report_space(&cx, sp, &mut summary, &mut figures)?;
    }
    // Loss curves of repetition 0 for a few shapes.
    let mut fig_l = Figure::new(
        "training loss (repetition 0, coupled)",
        "step",
        "loss",
        Scale::Linear,
        Scale::Log,
    );
    let mut loss_shapes: Vec<(usize, usize, usize)> = Vec::new();
    for &m in slice_m.iter().rev().take(2) {
        for &d in [dmin, dmax].iter() {
            loss_shapes.push((lmax, m, d));
        }
    }
    loss_shapes.push(sw.reference);
    loss_shapes.dedup();
    for (ci, &(l, m, d)) in loss_shapes.iter().enumerate() {
        let t = sw
            .plan()
            .into_iter()
            .find(|t| t.rep == 0 && (t.l, t.m, t.d) == (l, m, d));
        if let Some(t) = t
            && let super::TaskState::Done(recs) = dir.state(sw, &t)
            && let Some(rec) = recs.into_iter().next()
        {
            let x: Vec<f64> = (0..rec.losses.len()).map(|k| k as f64).collect();
            fig_l.series.push(
                Series::new(
                    format!("L={l} M={m} D={d}"),
                    x,
                    rec.losses,
                    Style::LinePoints,
                )
                .with_color(ci),
            );
        }
    }
    if !fig_l.series.is_empty() {
        let stem = figdir.join("loss");
        plot::save(&fig_l, &stem)?;
        figures.push((fig_l.title.clone(), stem.with_extension("png")));
    }
    io::atomic_write(
        &dir.root.join("fits.json"),
        serde_json::to_string_pretty(&summary)
            .expect("summary serialises")
            .as_bytes(),
    )?;
    let md = markdown(sw, lim.as_deref(), &summary, &figures, &dir.root);
    let path = dir.root.join("report.md");
    io::atomic_write(&path, md.as_bytes())?;
    Ok(path)
}

/// What the per-space part of the report needs from the sweep and its settings.
struct Context<'a> {
    sw: &'a Sweep,
    rows: &'a [ErrorRow],
    step: usize,
    p_step: usize,
    p_max: f64,
    n_boot: usize,
    slice_m: &'a [usize],
    slice_d: &'a [usize],
    lmax: usize,
    mmax: usize,
    dmax: usize,
    figdir: &'a Path,
}

/// One error space of the report: its joint fit (bootstrap over repetitions), its
/// slices against D, M and L, its headline slopes and P exponents, and their figures;
/// added to `summary` and `figures`.
fn report_space(
    cx: &Context,
    sp: &Space,
    summary: &mut Summary,
    figures: &mut Vec<(String, PathBuf)>,
) -> Result<(), SweepError> {
    let Context {
        sw,
        rows,
        step,
        p_step,
        p_max,
        n_boot,
        slice_m,
        slice_d,
        lmax,
        mmax,
        dmax,
        figdir,
    } = *cx;
    let data = per_shape(rows, sp, step);
    if data.is_empty() {
        return Ok(());
    }
    let label = format!("{} error ({}, k={step})", sp.name, sp.coupling.name());
    // Joint fit, with bootstrap over repetitions where every shape has every rep.
    let shapes: Vec<(usize, usize, usize)> = data.keys().copied().collect();
    let shp: Vec<Shape> = shapes
        .iter()
        .map(|&(l, m, d)| Shape::new(l as f64, m as f64, d as f64))
        .collect();
    let errs: Vec<f64> = shapes.iter().map(|k| rms(&data[k])).collect();
    let reps: Vec<usize> = (0..sw.spec.reps).collect();
    // The bootstrap resamples repetitions: it uses the shapes that have every one (all
    // of them, unless some runs are missing or diverged).
    let full: Vec<usize> = (0..shapes.len())
        .filter(|&i| reps.iter().all(|r| data[&shapes[i]].contains_key(r)))
        .collect();
    let (joint, ci, nb) = if sw.spec.reps >= 2 && full.len() > sp.model.terms.len() {
        let per_rep: Vec<Vec<f64>> = reps
            .iter()
            .map(|r| full.iter().map(|&i| data[&shapes[i]][r]).collect())
            .collect();
        let shp_full: Vec<Shape> = full.iter().map(|&i| shp[i]).collect();
        match fit::bootstrap_rate_fit(&sp.model, &shp_full, &per_rep, n_boot, sw.spec.seed) {
            Ok(b) => (Some(b.fit), b.coef_ci95, n_boot),
            Err(_) => (fit::fit_rate_model(&sp.model, &shp, &errs).ok(), vec![], 0),
        }
    } else {
        (fit::fit_rate_model(&sp.model, &shp, &errs).ok(), vec![], 0)
    };
    let resid = |f: &RateFit| -> f64 {
        shp.iter()
            .zip(&errs)
            .map(|(s, e)| (e.ln() - f.predict(*s).ln()).powi(2))
            .sum()
    };
    // Slices.
    let mut slice =
        |against: &'static str, fixed: String, pts: Vec<(f64, f64)>| -> Option<LinearFit> {
            let f = slice_fit(&pts)?;
            summary.slices.push(SliceFit {
                space: sp.name.into(),
                against,
                fixed,
                fit: f.clone(),
            });
            Some(f)
        };
    let fig_d = slice_figure(
        format!("{label} vs D"),
        Dim::D,
        slice_m
            .iter()
            .map(|&m| SliceLine {
                legend: format!("M={m}"),
                fixed: format!("L={lmax}, M={m}"),
                shapes: sw.ds.iter().map(|&d| (lmax, m, d)).collect(),
            })
            .collect(),
        &data,
        joint.as_ref(),
        &mut slice,
    );
    let fig_m = slice_figure(
        format!("{label} vs M"),
        Dim::M,
        slice_d
            .iter()
            .map(|&d| SliceLine {
                legend: format!("D={d}"),
                fixed: format!("L={lmax}, D={d}"),
                shapes: sw.ms.iter().map(|&m| (lmax, m, d)).collect(),
            })
            .collect(),
        &data,
        joint.as_ref(),
        &mut slice,
    );
    // Headline slices: at the largest M (against D), the largest D (against M).
    let hd: Vec<(f64, f64)> = sw
        .ds
        .iter()
        .filter_map(|&d| data.get(&(lmax, mmax, d)).map(|r| (d as f64, rms(r))))
        .collect();
    let hm: Vec<(f64, f64)> = sw
        .ms
        .iter()
        .filter_map(|&m| data.get(&(lmax, m, dmax)).map(|r| (m as f64, rms(r))))
        .collect();
    let fd = if slice_m.contains(&mmax) {
        slice_fit(&hd)
    } else {
        slice("D", format!("L={lmax}, M={mmax}"), hd)
    };
    let fm = if slice_d.contains(&dmax) {
        slice_fit(&hm)
    } else {
        slice("M", format!("L={lmax}, D={dmax}"), hm)
    };
    let mut heads = Vec::new();
    if let Some(f) = fd {
        heads.push(Headline {
            what: format!("{} slope vs D at L={lmax}, M={mmax}", sp.name),
            value: f.slope,
            ci95: f.slope_ci95,
            paper: -0.5,
        });
    }
    if let Some(f) = fm {
        heads.push(Headline {
            what: format!("{} slope vs M at L={lmax}, D={dmax}", sp.name),
            value: f.slope,
            ci95: f.slope_ci95,
            paper: -0.5,
        });
    }
    // Against L (when L varies): at the largest M, for the D slices and the largest D.
    let fig_l = if sw.ls.len() >= 3 {
        let mut ds_l = slice_d.to_vec();
        if !ds_l.contains(&dmax) {
            ds_l.push(dmax);
        }
        slice_figure(
            format!("{label} vs L"),
            Dim::L,
            ds_l.iter()
                .map(|&d| SliceLine {
                    legend: format!("D={d}"),
                    fixed: format!("M={mmax}, D={d}"),
                    shapes: sw.ls.iter().map(|&l| (l, mmax, d)).collect(),
                })
                .collect(),
            &data,
            joint.as_ref(),
            &mut slice,
        )
    } else {
        Figure::new(
            format!("{label} vs L"),
            "L",
            "RMS error",
            Scale::Log,
            Scale::Log,
        )
    };
    summary.headline.extend(heads);
    // P scaling at p_step.
    let pdata = per_shape(rows, sp, p_step);
    let pts: Vec<(f64, f64)> = pdata
        .iter()
        .map(|(&(l, m, d), r)| ((l * m * d) as f64, rms(r)))
        .filter(|&(p, _)| p < p_max)
        .collect();
    let envelope = lower_envelope(&pts);
    let env_fit = if envelope.len() >= 3 {
        let (x, y): (Vec<f64>, Vec<f64>) = envelope.iter().copied().unzip();
        fit::loglog_fit(&x, &y).ok()
    } else {
        None
    };
    let pjoint = if p_step == step {
        joint.clone()
    } else {
        let sh: Vec<(usize, usize, usize)> = pdata.keys().copied().collect();
        let s2: Vec<Shape> = sh
            .iter()
            .map(|&(l, m, d)| Shape::new(l as f64, m as f64, d as f64))
            .collect();
        let e2: Vec<f64> = sh.iter().map(|k| rms(&pdata[k])).collect();
        fit::fit_rate_model(&sp.model, &s2, &e2).ok()
    };
    let (pmin, pmax) = pts.iter().fold((f64::INFINITY, 0.0f64), |(a, b), &(p, _)| {
        (a.min(p), b.max(p))
    });
    let pgrid: Vec<f64> = if pmax > pmin {
        (0..24)
            .map(|i| pmin * (pmax / pmin).powf(i as f64 / 23.0))
            .collect()
    } else {
        vec![]
    };
    let pscal = pjoint.as_ref().and_then(|j| fit::p_scaling(j, &pgrid).ok());
    let mut fig_p = Figure::new(
        format!(
            "{} error ({}, k={p_step}) vs P",
            sp.name,
            sp.coupling.name()
        ),
        "P = L M D",
        "RMS error",
        Scale::Log,
        Scale::Log,
    );
    let (x, y): (Vec<f64>, Vec<f64>) = pts.iter().copied().unzip();
    fig_p
        .series
        .push(Series::new("grid shapes", x, y, Style::Points).with_color(7));
    if !envelope.is_empty() {
        let (x, y): (Vec<f64>, Vec<f64>) = envelope.iter().copied().unzip();
        let lab = match &env_fit {
            Some(f) => format!("best shape per half-decade (slope {:.3})", f.slope),
            None => "best shape per half-decade".into(),
        };
        fig_p
            .series
            .push(Series::new(lab, x, y, Style::LinePoints).with_color(3));
    }
    if let Some(ps) = &pscal {
        fig_p.series.push(
            Series::new(
                format!("fitted model at optimal shapes (slope {:.3})", ps.fit.slope),
                ps.p.clone(),
                ps.errors.clone(),
                Style::Line,
            )
            .with_color(0),
        );
    }
    let paper_exp = sp.metric.paper_p_exponent();
    if let Some(ps) = &pscal {
        // The model's asymptotic exponent is fixed by its form; over the finite P range
        // of the grid it can differ. No interval: it is a property of the fitted curve.
        summary.headline.push(Headline {
            what: format!(
                "{} P exponent (fitted model at optimal shapes, over the grid's P range)",
                sp.name
            ),
            value: ps.fit.slope,
            ci95: (f64::NAN, f64::NAN),
            paper: paper_exp,
        });
    }
    if let Some(f) = &env_fit {
        summary.headline.push(Headline {
            what: format!("{} P exponent (lower envelope of the grid)", sp.name),
            value: f.slope,
            ci95: f.slope_ci95,
            paper: paper_exp,
        });
    }
    for (name, fig) in [
        ("vs_D", fig_d),
        ("vs_M", fig_m),
        ("vs_L", fig_l),
        ("vs_P", fig_p),
    ] {
        if fig.series.is_empty() {
            continue;
        }
        let stem = figdir.join(format!("{}_{}", sp.name, name));
        plot::save(&fig, &stem)?;
        figures.push((fig.title.clone(), stem.with_extension("png")));
    }
    if let Some(j) = &joint {
        summary.joint.push(JointFit {
            space: sp.name.into(),
            names: j.names.clone(),
            coefs: j.coefs.clone(),
            ci95: ci,
            n_boot: nb,
            rss_log: resid(j),
            authors_coefs: sp.authors.coefs.clone(),
            authors_rss_log: resid(&sp.authors),
            p_exponent_fitted: pscal.as_ref().map(|p| p.fit.slope),
            p_exponent_envelope: env_fit.clone(),
        });
    }
    Ok(())
}

/// A shape's dimension that a slice varies.
#[derive(Debug, Clone, Copy)]
enum Dim {
    L,
    M,
    D,
}

impl Dim {
    fn name(self) -> &'static str {
        match self {
            Dim::L => "L",
            Dim::M => "M",
            Dim::D => "D",
        }
    }
    fn of(self, (l, m, d): (usize, usize, usize)) -> usize {
        match self {
            Dim::L => l,
            Dim::M => m,
            Dim::D => d,
        }
    }
}

/// One line of a slice figure: the shapes along it and its labels.
struct SliceLine {
    /// In the legend, e.g. "M=640".
    legend: String,
    /// The fixed dimensions as `fits.json` states them, e.g. "L=20, M=640".
    fixed: String,
    shapes: Vec<(usize, usize, usize)>,
}

/// The figure of the RMS error against `against` (log-log): per line, the measured
/// errors of the shapes that have any, fitted by `slice` (which records the fit), and,
/// dashed, the joint fit's prediction at the same shapes.
fn slice_figure(
    title: String,
    against: Dim,
    lines: Vec<SliceLine>,
    data: &PerShape,
    joint: Option<&RateFit>,
    slice: &mut dyn FnMut(&'static str, String, Vec<(f64, f64)>) -> Option<LinearFit>,
) -> Figure {
    let mut fig = Figure::new(title, against.name(), "RMS error", Scale::Log, Scale::Log);
    for (ci, line) in lines.into_iter().enumerate() {
        let (shapes, pts): (Vec<ShapeKey>, Vec<(f64, f64)>) = line
            .shapes
            .iter()
            .filter_map(|&s| data.get(&s).map(|r| (s, (against.of(s) as f64, rms(r)))))
            .unzip();
        if pts.is_empty() {
            continue;
        }
        let f = slice(against.name(), line.fixed, pts.clone());
        let (x, y): (Vec<f64>, Vec<f64>) = pts.into_iter().unzip();
        let lab = match &f {
            Some(f) => format!("{} (slope {:.2})", line.legend, f.slope),
            None => line.legend,
        };
        if let Some(j) = joint {
            let yf: Vec<f64> = shapes
                .iter()
                .map(|&(l, m, d)| j.predict(Shape::new(l as f64, m as f64, d as f64)))
                .collect();
            fig.series
                .push(Series::new("", x.clone(), yf, Style::Dashed).with_color(ci));
        }
        fig.series
            .push(Series::new(lab, x, y, Style::LinePoints).with_color(ci));
    }
    fig
}

/// Log-log OLS of a slice with at least 3 points.
fn slice_fit(pts: &[(f64, f64)]) -> Option<LinearFit> {
    if pts.len() < 3 {
        return None;
    }
    let (x, y): (Vec<f64>, Vec<f64>) = pts.iter().copied().unzip();
    fit::loglog_fit(&x, &y).ok()
}

/// The best (lowest-error) point in each half-decade of P.
fn lower_envelope(pts: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut bins: BTreeMap<i64, (f64, f64)> = BTreeMap::new();
    for &(p, e) in pts {
        let b = (2.0 * p.log10()).floor() as i64;
        let slot = bins.entry(b).or_insert((p, e));
        if e < slot.1 {
            *slot = (p, e);
        }
    }
    bins.into_values().collect()
}

fn fmt_ci(c: (f64, f64)) -> String {
    if c.0.is_finite() && c.1.is_finite() {
        format!("[{:.3}, {:.3}]", c.0, c.1)
    } else {
        "n/a".into()
    }
}

/// The section that sets this sweep's headline and joint fits beside those of the sweep
/// in `other` (its `fits.json`), quantity by quantity; a note if it cannot be read.
fn comparison(md: &mut String, s: &Summary, other: &Path) {
    let path = other.join("fits.json");
    let _ = writeln!(md, "\n## Beside `{}`\n", other.display());
    let theirs: serde_json::Value = match std::fs::read_to_string(&path)
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
    {
        Ok(v) => v,
        Err(e) => {
            let _ = writeln!(
                md,
                "*`{}` could not be read ({e}): run that sweep first, then `--report-only` here.*",
                path.display()
            );
            return;
        }
    };
    let num = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
    let ci = |v: &serde_json::Value| (num(&v[0]), num(&v[1]));
    let _ = writeln!(
        md,
        "| quantity | this sweep | 95% interval | `{0}` | 95% interval |\n|---|---|---|---|---|",
        other.display()
    );
    let empty = Vec::new();
    let their_head = theirs["headline"].as_array().unwrap_or(&empty);
    for h in &s.headline {
        let t = their_head.iter().find(|t| t["what"] == h.what.as_str());
        let (tv, tc) = t.map_or((f64::NAN, (f64::NAN, f64::NAN)), |t| {
            (num(&t["value"]), ci(&t["ci95"]))
        });
        let _ = writeln!(
            md,
            "| {} | {:.3} | {} | {:.3} | {} |",
            h.what,
            h.value,
            fmt_ci(h.ci95),
            tv,
            fmt_ci(tc)
        );
    }
    let their_joint = theirs["joint"].as_array().unwrap_or(&empty);
    for j in &s.joint {
        let t = their_joint.iter().find(|t| t["space"] == j.space.as_str());
        for (i, name) in j.names.iter().enumerate() {
            let (tv, tc) = t.map_or((f64::NAN, (f64::NAN, f64::NAN)), |t| {
                let k = t["names"]
                    .as_array()
                    .and_then(|n| n.iter().position(|x| x == name.as_str()));
                match k {
                    Some(k) => (num(&t["coefs"][k]), ci(&t["ci95"][k])),
                    None => (f64::NAN, (f64::NAN, f64::NAN)),
                }
            });
            let mine = j.ci95.get(i).copied().unwrap_or((f64::NAN, f64::NAN));
            let _ = writeln!(
                md,
                "| {} joint fit: {} | {:.4} | {} | {:.4} | {} |",
                j.space,
                name,
                j.coefs[i],
                fmt_ci(mine),
                tv,
                fmt_ci(tc)
            );
        }
    }
}

fn markdown(
    sw: &Sweep,
    lim: Option<&LimitReference>,
    s: &Summary,
    figures: &[(String, PathBuf)],
    root: &Path,
) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Sweep `{}`\n", sw.spec.name);
    let _ = writeln!(
        md,
        "Preset `{}`, activation `{}`, K = {} steps at eta = {}, {} repetition(s), data d_in = {}, d_out = {}, N = {}. \
         Grid: L in {:?}, M in {:?}, D in {:?}. Reference: {}. Wall time of this invocation: {:.1} s.\n",
        sw.param.name,
        sw.activation.name(),
        sw.spec.steps,
        sw.spec.lr,
        sw.spec.reps,
        sw.spec.data.din,
        sw.spec.data.dout,
        sw.spec.data.n,
        sw.ls,
        sw.ms,
        sw.ds,
        match (lim, lim.and_then(|l| l.monte_carlo())) {
            (Some(l), Some(mc)) => format!(
                "the large-D limit of {} blocks, solved by Monte Carlo over single units \
                 (`reslim::limit::nonlinear`; Heun on num_s = {} depth points, {} units per point, \
                 {} replicas, seed {}; Monte-Carlo standard error of the limit outputs: max {:.1e}, RMS at the last pass {:.1e}); \
                 embedding error max_l mean_d |h_d(l) - H_d(l/L)| with each network's own embedding rows \
                 (docs/papers.md 2.4, Python), more limit errors in `errors_limit.csv`",
                l.activation.name(),
                mc.num_s,
                mc.samples,
                mc.replicas,
                mc.seed,
                mc.f_se_max,
                mc.f_last_se_rms
            ),
            (Some(l), None) => format!(
                "the linear large-D limit (docs/papers.md 2.3; rtol = {:e}, atol = {:e}, num_s = {}); \
                 embedding error max_l mean_d |h_d(l) - H_d(l/L)| (docs/papers.md 2.4, Python), \
                 more limit errors in `errors_limit.csv`",
                l.params.rtol, l.params.atol, l.params.num_s
            ),
            (None, _) => format!(
                "L = {}, M = {}, D = {}",
                sw.reference.0, sw.reference.1, sw.reference.2
            ),
        },
        s.wall_s
    );
    let log = super::read_run_log(&SweepDir::new(root));
    let _ = writeln!(
        md,
        "Training wall time over {} invocation(s): {:.1} s ({} tasks trained in all).\n",
        log.len(),
        log.iter().map(|r| r.seconds).sum::<f64>(),
        log.iter().map(|r| r.ran).sum::<usize>()
    );
    let _ = writeln!(
        md,
        "Errors are read at record k = {} (the network after k updates; the Julia notebook's 1-based k is one more); P plots at k = {}.\n",
        s.step, s.p_step
    );
    let _ = writeln!(
        md,
        "## Headline\n\n| quantity | reslim | 95% interval | paper |\n|---|---|---|---|"
    );
    for h in &s.headline {
        let _ = writeln!(
            md,
            "| {} | {:.3} | {} | {:.3} |",
            h.what,
            h.value,
            fmt_ci(h.ci95),
            h.paper
        );
    }
    if let Some(other) = &sw.spec.report.compare {
        comparison(&mut md, s, other);
    }
    let _ = writeln!(md, "\n## Joint rate fits\n");
    for j in &s.joint {
        let _ = writeln!(
            md,
            "**{}** (log-space residual {:.3}; the authors' constants give {:.3} on the same data)\n",
            j.space, j.rss_log, j.authors_rss_log
        );
        let _ = writeln!(
            md,
            "| term | coefficient | 95% bootstrap interval ({} replicates) | authors |\n|---|---|---|---|",
            j.n_boot
        );
        for (i, n) in j.names.iter().enumerate() {
            let ci = j
                .ci95
                .get(i)
                .map(|&c| fmt_ci(c))
                .unwrap_or_else(|| "n/a".into());
            let a = j
                .authors_coefs
                .get(i)
                .map(|a| format!("{a:.4}"))
                .unwrap_or_default();
            let c = j.coefs.get(i).copied().unwrap_or(f64::NAN);
            let _ = writeln!(md, "| {n} | {c:.4} | {ci} | {a} |");
        }
        let _ = writeln!(md);
    }
    let _ = writeln!(
        md,
        "## Slices (log-log OLS)\n\n| space | against | fixed | slope | SE | 95% interval | R^2 | points |\n|---|---|---|---|---|---|---|---|"
    );
    for sl in &s.slices {
        let f = &sl.fit;
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.3} | {:.3} | {} | {:.3} | {} |",
            sl.space,
            sl.against,
            sl.fixed,
            f.slope,
            f.slope_se,
            fmt_ci(f.slope_ci95),
            f.r2,
            f.n
        );
    }
    let _ = writeln!(md, "\n## Figures\n");
    for (title, p) in figures {
        let rel = p.strip_prefix(root).unwrap_or(p);
        let _ = writeln!(md, "![{title}]({})\n", rel.display());
    }
    spec_section(
        &mut md,
        sw,
        "`errors.csv` (one row per model, repetition, coupling and read step), `errors_rms.csv` (RMS over repetitions)",
    );
    md
}

/// The authors' rate constants (embedding, output) for a sweep against `lim`: against the
/// linear limit their fits of E2 (docs/papers.md 2.5); otherwise (the largest network, or
/// the nonlinear limit of the E1 setting) their hand-set E1 curves.
pub(crate) fn authors_constants(lim: Option<&LimitReference>) -> (RateFit, RateFit) {
    match lim {
        Some(l) if l.monte_carlo().is_none() => (
            RateFit::authors_e2_embedding(),
            RateFit::authors_e2_output(),
        ),
        _ => (
            RateFit::hand_tuned_embedding(),
            RateFit::hand_tuned_output(),
        ),
    }
}

/// The end of a report: the spec as checked, and the tables and fits written beside it.
pub(crate) fn spec_section(md: &mut String, sw: &Sweep, tables: &str) {
    let _ = writeln!(
        md,
        "## Spec\n\n```toml\n{}```\n",
        toml::to_string(&sw.spec).unwrap_or_else(|e| format!("# not serialisable: {e}\n"))
    );
    let _ = writeln!(md, "Tables: {tables}; fits: `fits.json`.");
}
