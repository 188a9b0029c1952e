//! The P-scaling report of a ladder sweep (`[grid] shapes = "zip"`): networks of growing
//! parameter count P = L M D along a chosen path of shapes, each measured against the
//! sweep's reference (the limit, or the ladder's largest network), and the exponent of
//! the error in P.
//!
//! The paper's law (docs/papers.md 2.4, "Optimal shapes"): with the embedding error
//! `sqrt(D / (L M)) + 1 / sqrt(D)` (plus `1/L`), P = L M D and the shape optimised,
//! D ∝ P^(1/3) and L M ∝ P^(2/3) give **P^(-1/6)** in embedding space; the output error
//! `D / (L M) + 1 / sqrt(D)` is best at D ∝ P^(2/5), giving **P^(-1/5)**. Along a ladder
//! with D ∝ P^(1/3) the output error is dominated by `1/sqrt(D)`, so it too falls like
//! P^(-1/6); the report states the exponent the authors' fitted rate model predicts
//! along the ladder's own shapes beside the paper's headline values.
//!
//! For each error space (embedding: coupled runs, `err_h`; output: uncoupled runs if the
//! sweep has them, else coupled, `err_y`; docs/papers.md 2.4) at the report's `p_step`:
//! - per shape: the RMS error over repetitions (the paper's `errs_h`, `errs_y`), the
//!   geometric mean and its 95% t interval across repetitions (`pscaling.csv`);
//! - the exponent b of err ≈ a P^b: OLS of ln err on ln P over every (shape, repetition)
//!   point ([`crate::fit::loglog_fit`]), with its 95% interval and p-value, over the
//!   whole ladder and over each half of its range in log P (the middle shape, when it
//!   sits on the midpoint, belongs to both), each with a verdict against the paper's
//!   value (`fits.json`);
//! - the figure (`figures/pscaling.png`): the points, the RMS curve with its band, the
//!   fitted line and the paper's slope through the middle of the fit;
//! - `report.md`.
//!
//! The reference shape itself (error 0 by construction) never enters a fit; a diverged
//! run (error beyond [`super::collect::DIVERGED_ERROR`] against the limit) neither.

use super::{Coupling, ErrorRow, Sweep, SweepDir, SweepError};
use crate::fit::{self, LinearFit, RateFit, Shape};
use crate::io;
use crate::plot::{self, Figure, Scale, Series, Style};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

/// Everything the P-scaling report states, also written as `fits.json`.
#[derive(Debug, Clone, Serialize)]
pub struct LadderSummary {
    /// The read step of the errors (`[report] p_step`).
    pub step: usize,
    pub spaces: Vec<SpaceScaling>,
    /// Wall time of this invocation, seconds.
    pub wall_s: f64,
}

/// The P scaling of one error space.
#[derive(Debug, Clone, Serialize)]
pub struct SpaceScaling {
    /// "embedding" or "output".
    pub space: String,
    pub coupling: Coupling,
    /// The paper's exponent at the best shapes: -1/6 (embedding), -1/5 (output).
    pub paper: f64,
    /// The exponent of the authors' fitted rate model (their constants, docs/papers.md
    /// 2.5) along this ladder's shapes: what the paper predicts for these very networks.
    pub predicted: Option<f64>,
    /// Over the whole ladder, then the lower and the upper half of its range in log P.
    pub fits: Vec<RangeFit>,
    /// Per shape, in ladder order.
    pub shapes: Vec<ShapeErrors>,
}

/// The exponent fitted over one range of P.
#[derive(Debug, Clone, Serialize)]
pub struct RangeFit {
    /// "whole", "lower half" or "upper half".
    pub range: String,
    pub p_min: f64,
    pub p_max: f64,
    /// Shapes in the range (each with its repetitions).
    pub shapes: usize,
    /// OLS of ln err on ln P over every (shape, repetition) point; `None` with fewer than
    /// two shapes.
    pub fit: Option<LinearFit>,
    /// Against the paper's value: "consistent" (inside the 95% interval), "steeper",
    /// "shallower", or "undetermined" (no interval).
    pub verdict: String,
}

/// One shape's errors over repetitions.
#[derive(Debug, Clone, Serialize)]
pub struct ShapeErrors {
    #[serde(rename = "L")]
    pub l: usize,
    #[serde(rename = "M")]
    pub m: usize,
    #[serde(rename = "D")]
    pub d: usize,
    #[serde(rename = "P")]
    pub p: f64,
    pub reps: usize,
    /// RMS over repetitions.
    pub err_rms: f64,
    /// Geometric mean over repetitions and its 95% t interval (NaN with one repetition).
    pub err_geo: f64,
    pub ci95_lo: f64,
    pub ci95_hi: f64,
    /// The authors' rate model at this shape.
    pub predicted: f64,
}

/// The verdict of an exponent's interval against the paper's value.
fn verdict(f: Option<&LinearFit>, paper: f64) -> &'static str {
    match f {
        Some(f) if f.slope_ci95.0.is_finite() && f.slope_ci95.1.is_finite() => {
            if paper < f.slope_ci95.0 {
                "shallower"
            } else if paper > f.slope_ci95.1 {
                "steeper"
            } else {
                "consistent"
            }
        }
        _ => "undetermined",
    }
}

/// The scaling of one space from the sweep's error rows at `step`.
fn space_scaling(
    rows: &[ErrorRow],
    sw: &Sweep,
    space: &str,
    coupling: Coupling,
    step: usize,
    authors: &RateFit,
) -> SpaceScaling {
    let embedding = space == "embedding";
    let paper = if embedding { -1.0 / 6.0 } else { -1.0 / 5.0 };
    // Per shape, the repetitions' errors (finite, positive).
    let mut per: BTreeMap<(usize, usize, usize), Vec<f64>> = BTreeMap::new();
    for r in rows {
        if r.coupling != coupling || r.step != step || r.is_reference {
            continue;
        }
        let msq = if embedding { r.msq_h } else { r.msq_y };
        if msq.is_finite() && msq > 0.0 {
            per.entry((r.l, r.m, r.d)).or_default().push(msq.sqrt());
        }
    }
    let shapes: Vec<ShapeErrors> = sw
        .shapes
        .iter()
        .filter_map(|&(l, m, d)| {
            let errs = per.get(&(l, m, d))?;
            let logs: Vec<f64> = errs.iter().map(|e| e.ln()).collect();
            let (mean, _, half) = fit::mean_ci95(&logs);
            let rms = (errs.iter().map(|e| e * e).sum::<f64>() / errs.len() as f64).sqrt();
            Some(ShapeErrors {
                l,
                m,
                d,
                p: l as f64 * m as f64 * d as f64,
                reps: errs.len(),
                err_rms: rms,
                err_geo: mean.exp(),
                ci95_lo: (mean - half).exp(),
                ci95_hi: (mean + half).exp(),
                predicted: authors.predict(Shape::new(l as f64, m as f64, d as f64)),
            })
        })
        .collect();
    let predicted = {
        let ps: Vec<f64> = shapes.iter().map(|s| s.p).collect();
        let ys: Vec<f64> = shapes.iter().map(|s| s.predicted).collect();
        fit::loglog_fit(&ps, &ys).ok().map(|f| f.slope)
    };
    let ranges = match (shapes.first(), shapes.iter().map(|s| s.p).reduce(f64::max)) {
        (Some(_), Some(pmax)) => {
            let pmin = shapes.iter().map(|s| s.p).fold(f64::INFINITY, f64::min);
            let mid = (pmin.ln() + pmax.ln()) / 2.0;
            let eps = 1e-9;
            vec![
                ("whole", f64::NEG_INFINITY, f64::INFINITY),
                ("lower half", f64::NEG_INFINITY, mid + eps),
                ("upper half", mid - eps, f64::INFINITY),
            ]
        }
        _ => Vec::new(),
    };
    let fits = ranges
        .into_iter()
        .map(|(name, lo, hi)| {
            let inside: Vec<&ShapeErrors> = shapes
                .iter()
                .filter(|s| s.p.ln() >= lo && s.p.ln() <= hi)
                .collect();
            let (mut x, mut y) = (Vec::new(), Vec::new());
            for s in &inside {
                for e in &per[&(s.l, s.m, s.d)] {
                    x.push(s.p);
                    y.push(*e);
                }
            }
            let fit = if inside.len() >= 2 {
                fit::loglog_fit(&x, &y).ok()
            } else {
                None
            };
            RangeFit {
                range: name.into(),
                p_min: inside.iter().map(|s| s.p).fold(f64::NAN, f64::min),
                p_max: inside.iter().map(|s| s.p).fold(f64::NAN, f64::max),
                shapes: inside.len(),
                verdict: verdict(fit.as_ref(), paper).into(),
                fit,
            }
        })
        .collect();
    SpaceScaling {
        space: space.into(),
        coupling,
        paper,
        predicted,
        fits,
        shapes,
    }
}

/// Fits, draws and writes the P-scaling report of a ladder sweep (module docs) from its
/// error rows ([`super::collect::collect`]). Returns the path of `report.md`.
pub fn write_report(
    sw: &Sweep,
    dir: &SweepDir,
    rows: &[ErrorRow],
    wall_s: f64,
) -> Result<PathBuf, SweepError> {
    let step = sw.report_settings()?.p_step;
    let lim = if sw.against_limit() {
        Some(sw.limit_reference()?)
    } else {
        None
    };
    let (authors_h, authors_y) = super::report::authors_constants(lim.as_deref());
    let has = |c: Coupling| sw.spec.couplings.contains(&c);
    let mut spaces = Vec::new();
    if has(Coupling::Coupled) {
        spaces.push(space_scaling(
            rows,
            sw,
            "embedding",
            Coupling::Coupled,
            step,
            &authors_h,
        ));
    }
    let out_coupling = if has(Coupling::Uncoupled) {
        Coupling::Uncoupled
    } else {
        Coupling::Coupled
    };
    spaces.push(space_scaling(
        rows,
        sw,
        "output",
        out_coupling,
        step,
        &authors_y,
    ));
    let summary = LadderSummary {
        step,
        spaces,
        wall_s,
    };
    // pscaling.csv: one row per space and shape.
    #[derive(Serialize)]
    struct Row<'a> {
        space: &'a str,
        coupling: Coupling,
        #[serde(rename = "L")]
        l: usize,
        #[serde(rename = "M")]
        m: usize,
        #[serde(rename = "D")]
        d: usize,
        #[serde(rename = "P")]
        p: f64,
        reps: usize,
        err_rms: f64,
        err_geo: f64,
        ci95_lo: f64,
        ci95_hi: f64,
        predicted: f64,
    }
    let table = summary.spaces.iter().flat_map(|sp| {
        sp.shapes.iter().map(move |s| Row {
            space: &sp.space,
            coupling: sp.coupling,
            l: s.l,
            m: s.m,
            d: s.d,
            p: s.p,
            reps: s.reps,
            err_rms: s.err_rms,
            err_geo: s.err_geo,
            ci95_lo: s.ci95_lo,
            ci95_hi: s.ci95_hi,
            predicted: s.predicted,
        })
    });
    super::collect::write_csv(&dir.root.join("pscaling.csv"), table)?;
    io::atomic_write(
        &dir.root.join("fits.json"),
        serde_json::to_string_pretty(&summary)
            .expect("summary serialises")
            .as_bytes(),
    )?;
    let figure = figure(&summary, &dir.root.join("figures").join("pscaling"))?;
    let reference = match (&lim, lim.as_ref().and_then(|l| l.monte_carlo())) {
        (Some(l), Some(mc)) => format!(
            "the large-D limit of {} blocks by Monte Carlo (num_s = {}, {} units per point, {} replicas; standard error of the limit outputs up to {:.1e})",
            l.activation.name(),
            mc.num_s,
            mc.samples,
            mc.replicas,
            mc.f_se_max
        ),
        (Some(l), None) => format!(
            "the exact linear large-D limit (docs/papers.md 2.3; rtol = {:e}, atol = {:e}, num_s = {})",
            l.params.rtol, l.params.atol, l.params.num_s
        ),
        (None, _) => format!(
            "the ladder's network L = {}, M = {}, D = {} (left out of the fits)",
            sw.reference.0, sw.reference.1, sw.reference.2
        ),
    };
    let md = markdown(sw, &summary, &reference, figure.as_ref(), dir);
    let path = dir.root.join("report.md");
    io::atomic_write(&path, md.as_bytes())?;
    Ok(path)
}

/// `figures/pscaling.{png,svg}`: one panel per space. `None` when no space has a point.
fn figure(s: &LadderSummary, stem: &std::path::Path) -> Result<Option<PathBuf>, SweepError> {
    let mut figs = Vec::new();
    for sp in &s.spaces {
        if sp.shapes.is_empty() {
            continue;
        }
        let mut fig = Figure::new(
            format!("{} error vs P (k = {})", sp.space, s.step),
            "P = L M D",
            format!("{} error", sp.space),
            Scale::Log,
            Scale::Log,
        );
        let ps: Vec<f64> = sp.shapes.iter().map(|x| x.p).collect();
        fig.series.push(
            Series::new(
                "RMS over repetitions (band: 95% interval of the geometric mean)",
                ps.clone(),
                sp.shapes.iter().map(|x| x.err_rms).collect(),
                Style::LinePoints,
            )
            .with_color(0)
            .with_band(
                sp.shapes
                    .iter()
                    .map(|x| {
                        if x.ci95_lo.is_finite() {
                            x.ci95_lo
                        } else {
                            x.err_rms
                        }
                    })
                    .collect(),
                sp.shapes
                    .iter()
                    .map(|x| {
                        if x.ci95_hi.is_finite() {
                            x.ci95_hi
                        } else {
                            x.err_rms
                        }
                    })
                    .collect(),
            ),
        );
        if let Some(f) = sp.fits.first().and_then(|r| r.fit.as_ref()) {
            let (lo, hi) = (ps[0], *ps.last().expect("non-empty"));
            let (lo, hi) = (lo.min(hi), lo.max(hi));
            let line = |b: f64, a: f64| -> Vec<f64> {
                [lo, hi].iter().map(|p| (a + b * p.ln()).exp()).collect()
            };
            fig.series.push(
                Series::new(
                    format!("fit: P^{:.3}", f.slope),
                    vec![lo, hi],
                    line(f.slope, f.intercept),
                    Style::Dashed,
                )
                .with_color(1),
            );
            // The paper's slope through the fit at the geometric middle of the range.
            let mid = (lo.ln() + hi.ln()) / 2.0;
            let a = f.predict(mid) - sp.paper * mid;
            fig.series.push(
                Series::new(
                    format!("paper: P^{:.3}", sp.paper),
                    vec![lo, hi],
                    line(sp.paper, a),
                    Style::Dashed,
                )
                .with_color(2),
            );
        }
        fig.series.push(
            Series::new(
                "authors' rate model",
                ps,
                sp.shapes.iter().map(|x| x.predicted).collect(),
                Style::Line,
            )
            .with_color(3),
        );
        figs.push(fig);
    }
    if figs.is_empty() {
        return Ok(None);
    }
    plot::save_panels(&figs, figs.len(), stem)?;
    Ok(Some(stem.with_extension("png")))
}

fn fmt_ci(f: &LinearFit) -> String {
    if f.slope_ci95.0.is_finite() {
        format!("[{:.3}, {:.3}]", f.slope_ci95.0, f.slope_ci95.1)
    } else {
        "n/a".into()
    }
}

fn markdown(
    sw: &Sweep,
    s: &LadderSummary,
    reference: &str,
    figure: Option<&PathBuf>,
    dir: &SweepDir,
) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# P scaling: sweep `{}`\n", sw.spec.name);
    let _ = writeln!(
        md,
        "Preset `{}`, activation `{}`, K = {} steps at eta = {}, {} repetition(s), data d_in = {}, d_out = {}, N = {}, {}. \
         A ladder of {} shapes from P = {:.3e} to {:.3e}. Reference: {}. Errors at record k = {}.\n",
        sw.param.name,
        sw.activation.name(),
        sw.spec.steps,
        sw.spec.lr,
        sw.spec.reps,
        sw.spec.data.din,
        sw.spec.data.dout,
        sw.spec.data.n,
        format!("{:?}", sw.spec.dtype).to_lowercase(),
        sw.shapes.len(),
        sw.shapes
            .iter()
            .map(|x| x.0 as f64 * x.1 as f64 * x.2 as f64)
            .fold(f64::INFINITY, f64::min),
        sw.shapes
            .iter()
            .map(|x| x.0 as f64 * x.1 as f64 * x.2 as f64)
            .fold(0.0, f64::max),
        reference,
        s.step
    );
    let log = super::read_run_log(dir);
    let _ = writeln!(
        md,
        "Wall time of this invocation: {:.1} s. Training over {} invocation(s): {:.1} s ({} tasks trained in all).\n",
        s.wall_s,
        log.len(),
        log.iter().map(|r| r.seconds).sum::<f64>(),
        log.iter().map(|r| r.ran).sum::<usize>()
    );
    let _ = writeln!(
        md,
        "## Exponent of the error in P\n\nerr ≈ a P^b, OLS of ln err on ln P over every (shape, repetition) point, 95% interval (Student t).\n\n\
         | space | range | P | shapes | b | 95% interval | p-value | paper | verdict | rate model along these shapes |\n|---|---|---|---|---|---|---|---|---|---|"
    );
    for sp in &s.spaces {
        for r in &sp.fits {
            let (b, ci, pv) = match &r.fit {
                Some(f) => (
                    format!("{:.3}", f.slope),
                    fmt_ci(f),
                    format!("{:.1e}", f.p_value),
                ),
                None => ("n/a".into(), "n/a".into(), "n/a".into()),
            };
            let _ = writeln!(
                md,
                "| {} | {} | {:.2e} – {:.2e} | {} | {b} | {ci} | {pv} | {:.3} | {} | {} |",
                sp.space,
                r.range,
                r.p_min,
                r.p_max,
                r.shapes,
                sp.paper,
                r.verdict,
                sp.predicted.map_or("n/a".into(), |p| format!("{p:.3}"))
            );
        }
    }
    let _ = writeln!(
        md,
        "\nThe paper's exponents hold at the best shapes: -1/6 in embedding space (D ∝ P^(1/3)), \
         -1/5 in output space (D ∝ P^(2/5)). The last column is the exponent of the authors' fitted \
         rate model along this ladder's shapes (along D ∝ P^(1/3) the output error is dominated by 1/√D, \
         so it predicts about -1/6 there too).\n"
    );
    for sp in &s.spaces {
        let _ = writeln!(
            md,
            "### {} ({:?} runs)\n\n| L | M | D | P | reps | RMS error | geometric mean | 95% interval | rate model |\n|---|---|---|---|---|---|---|---|---|",
            sp.space, sp.coupling
        );
        for x in &sp.shapes {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.3e} | {} | {:.4e} | {:.4e} | [{:.4e}, {:.4e}] | {:.4e} |",
                x.l, x.m, x.d, x.p, x.reps, x.err_rms, x.err_geo, x.ci95_lo, x.ci95_hi, x.predicted
            );
        }
        let _ = writeln!(md);
    }
    if let Some(p) = figure {
        let rel = p.strip_prefix(&dir.root).unwrap_or(p);
        let _ = writeln!(md, "![error vs P]({})\n", rel.display());
    }
    super::report::spec_section(
        &mut md,
        sw,
        "`pscaling.csv` (per space and shape), `errors.csv` (one row per model, repetition, coupling and read step), `errors_rms.csv`",
    );
    md
}
