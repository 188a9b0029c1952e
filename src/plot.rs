//! Figures as PNG and SVG: a small declarative layer over plotters.
//!
//! A [`Figure`] is a title, axis labels, a [`Scale`] per axis and a list of [`Series`];
//! [`save`] writes it as `stem.png` and `stem.svg`, [`save_panels`] writes a grid of
//! figures into one image. Both files go through [`crate::io::atomic_write_with`], so a
//! reader never sees a half-written image.
//!
//! # Coordinates and ticks
//!
//! Everything is drawn in transformed coordinates `t(v) = v` (linear axis) or
//! `t(v) = log10 v` (log axis), so a straight line on a log-log figure is a power law
//! `y ∝ x^b` with slope `b`. Points with a NaN or infinite coordinate are skipped, and so
//! are non-positive values on a log axis (a line is broken where a point is skipped). The
//! axis range is the range of the drawable data (points and bands), padded by 5% of its
//! span on each side (at least 0.1 decade on a log axis; a zero span is widened).
//!
//! Linear ticks are at multiples of a "nice" step `{1, 2, 5} × 10^k` giving about six
//! ticks. Log ticks are at decades, labelled `10ᵏ`, with light grid lines at
//! `2…9 × 10ᵏ`; when the range holds fewer than three decades the ticks are at
//! `{1, 2, 5} × 10ᵏ` (or `1…9 × 10ᵏ`) and labelled with plain numbers; when it holds more
//! than eight, every second (third, ...) decade is labelled.
//!
//! # Colours and styles
//!
//! Colours come from matplotlib's `tab10` palette ([`PALETTE`]). A series with
//! `color: None` takes the colour of its position in the figure; give a fitted or
//! reference curve the palette index of its data series and [`Style::Dashed`] so that it
//! reads as "the fit of those points". An optional `y_band` (lower, upper) is drawn as
//! error bars for point styles and as a translucent band for line styles. A legend is
//! drawn when some series has a non-empty label, in the corner with the least data.
//!
//! Text uses the DejaVu Sans font embedded in the binary, registered with plotters'
//! `ab_glyph` support: rendering needs no system fonts.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::element::DashedPathElement;
use plotters::prelude::*;

use crate::io::{IoError, atomic_write, atomic_write_with};

/// Errors of plotting. Each names the figure (by title) and, where there is one, the
/// series (by label).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlotError {
    /// A series whose `y` or band has another length than its `x`.
    #[error("figure '{title}', series '{series}': x has {x_len} values but {what} has {len}")]
    LengthMismatch {
        title: String,
        series: String,
        what: &'static str,
        x_len: usize,
        len: usize,
    },
    /// No point of the figure can be drawn (no series, empty series, or NaN everywhere).
    #[error("figure '{title}': no drawable point (every point is missing, NaN or infinite)")]
    NoDrawablePoints { title: String },
    /// Finite points exist but none is positive on a log axis.
    #[error(
        "figure '{title}': no positive {axis} value to draw on the log {axis} axis \
         (non-positive values are skipped on log axes)"
    )]
    NoPositiveOnLogAxis { title: String, axis: &'static str },
    /// A panel layout that cannot be drawn.
    #[error("panel layout: {why}")]
    BadLayout { why: String },
    /// An output stem without a file name.
    #[error("output stem '{}' has no file name", stem.display())]
    BadStem { stem: PathBuf },
    /// The embedded font could not be parsed (a build problem, not a user error).
    #[error("the embedded DejaVu Sans font could not be registered with plotters")]
    Font,
    /// plotters failed while drawing.
    #[error("figure '{title}': drawing failed: {message}")]
    Draw { title: String, message: String },
    /// Writing a file failed.
    #[error(transparent)]
    Io(#[from] IoError),
}

/// How an axis maps values to positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Scale {
    Linear,
    /// Base-10 logarithmic; non-positive values are skipped.
    Log,
}

/// How a series is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Style {
    Line,
    Points,
    LinePoints,
    /// A dashed line, for fitted and reference curves.
    Dashed,
}

/// One set of `(x, y)` points.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend text; empty for no legend entry.
    pub label: String,
    pub x: Vec<f64>,
    pub y: Vec<f64>,
    pub style: Style,
    /// Index into [`PALETTE`] (taken modulo its length); `None`: the series' position.
    pub color: Option<usize>,
    /// Optional (lower, upper) bounds per point: error bars for `Points`/`LinePoints`, a
    /// shaded band for `Line`/`Dashed`.
    pub y_band: Option<(Vec<f64>, Vec<f64>)>,
}

impl Series {
    /// A series with the automatic colour and no band.
    pub fn new(label: impl Into<String>, x: Vec<f64>, y: Vec<f64>, style: Style) -> Self {
        Series {
            label: label.into(),
            x,
            y,
            style,
            color: None,
            y_band: None,
        }
    }

    /// Sets the palette index.
    pub fn with_color(mut self, color: usize) -> Self {
        self.color = Some(color);
        self
    }

    /// Sets the (lower, upper) band.
    pub fn with_band(mut self, lower: Vec<f64>, upper: Vec<f64>) -> Self {
        self.y_band = Some((lower, upper));
        self
    }
}

/// A figure: one set of axes.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub x_scale: Scale,
    pub y_scale: Scale,
    pub series: Vec<Series>,
}

impl Figure {
    /// A figure with no series yet.
    pub fn new(
        title: impl Into<String>,
        x_label: impl Into<String>,
        y_label: impl Into<String>,
        x_scale: Scale,
        y_scale: Scale,
    ) -> Self {
        Figure {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            x_scale,
            y_scale,
            series: Vec::new(),
        }
    }
}

/// matplotlib's `tab10` palette, as RGB.
pub const PALETTE: [(u8, u8, u8); 10] = [
    (0x1f, 0x77, 0xb4),
    (0xff, 0x7f, 0x0e),
    (0x2c, 0xa0, 0x2c),
    (0xd6, 0x27, 0x28),
    (0x94, 0x67, 0xbd),
    (0x8c, 0x56, 0x4b),
    (0xe3, 0x77, 0xc2),
    (0x7f, 0x7f, 0x7f),
    (0xbc, 0xbd, 0x22),
    (0x17, 0xbe, 0xcf),
];

/// Size of a single figure, in pixels.
pub const FIGURE_SIZE: (u32, u32) = (1000, 700);
/// Size of one panel of [`save_panels`], in pixels.
pub const PANEL_SIZE: (u32, u32) = (640, 480);
/// Largest image side [`save_panels`] draws, in pixels.
const MAX_SIDE: u64 = 16_384;

const FONT_FAMILY: &str = "sans-serif";
static FONT_BYTES: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// Registers the embedded font under `sans-serif` once per process.
fn ensure_font() -> Result<(), PlotError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font(FONT_FAMILY, FontStyle::Normal, FONT_BYTES).is_ok()
    });
    if ok { Ok(()) } else { Err(PlotError::Font) }
}

// ---------------------------------------------------------------------------------------
// Preparation: validation, transformed coordinates, ranges and ticks
// ---------------------------------------------------------------------------------------

/// One axis in transformed coordinates.
#[derive(Debug, Clone)]
struct Axis {
    log: bool,
    lo: f64,
    hi: f64,
    ticks: Vec<f64>,
    minor: Vec<f64>,
    /// Log axes: ticks are whole decades, labelled `10ᵏ`.
    decades: bool,
    /// Linear axes: the tick step, for the number of decimals.
    step: f64,
}

impl Axis {
    fn new(scale: Scale, lo: f64, hi: f64) -> Axis {
        let log = scale == Scale::Log;
        let span = hi - lo;
        let pad = if span > 0.0 {
            if log {
                (0.05 * span).max(0.1)
            } else {
                0.05 * span
            }
        } else if log {
            0.5
        } else if lo == 0.0 {
            1.0
        } else {
            0.1 * lo.abs()
        };
        let (lo, hi) = (lo - pad, hi + pad);
        let mut axis = Axis {
            log,
            lo,
            hi,
            ticks: Vec::new(),
            minor: Vec::new(),
            decades: false,
            step: 0.0,
        };
        if log {
            axis.log_ticks();
        } else {
            axis.linear_ticks();
        }
        axis
    }

    fn linear_ticks(&mut self) {
        let raw = (self.hi - self.lo) / 6.0;
        let mag = 10f64.powf(raw.log10().floor());
        let step = [1.0, 2.0, 5.0, 10.0]
            .iter()
            .map(|m| m * mag)
            .find(|s| *s >= raw)
            .unwrap_or(10.0 * mag);
        let first = (self.lo / step).ceil() as i64;
        let last = (self.hi / step).floor() as i64;
        // About six ticks; more only when rounding breaks down at extreme magnitudes.
        if last.saturating_sub(first) <= 20 {
            self.ticks = (first..=last).map(|k| k as f64 * step).collect();
        }
        self.step = step;
    }

    fn log_ticks(&mut self) {
        let (k_lo, k_hi) = (self.lo.ceil() as i64, self.hi.floor() as i64);
        let n_dec = k_hi - k_lo + 1;
        if n_dec >= 3 {
            let stride = (n_dec + 7) / 8;
            self.decades = true;
            self.ticks = (k_lo..=k_hi)
                .filter(|k| (k - k_lo) % stride == 0)
                .map(|k| k as f64)
                .collect();
            let minor_mantissas: Vec<f64> = if stride == 1 {
                (2..10).map(|m| m as f64).collect()
            } else {
                vec![1.0]
            };
            self.minor = (k_lo - 1..=k_hi)
                .flat_map(|k| minor_mantissas.iter().map(move |m| k as f64 + m.log10()))
                .filter(|v| *v >= self.lo && *v <= self.hi && !self.ticks.contains(v))
                .collect();
            return;
        }
        let mantissa_ticks = |ms: &[f64]| -> Vec<f64> {
            (self.lo.floor() as i64..=self.hi.ceil() as i64)
                .flat_map(|k| ms.iter().map(move |m| k as f64 + m.log10()))
                .filter(|v| *v >= self.lo && *v <= self.hi)
                .collect()
        };
        let all: Vec<f64> = (1..10).map(|m| m as f64).collect();
        self.ticks = mantissa_ticks(&[1.0, 2.0, 5.0]);
        if self.ticks.len() < 3 {
            self.ticks = mantissa_ticks(&all);
        }
        self.minor = mantissa_ticks(&all)
            .into_iter()
            .filter(|v| !self.ticks.contains(v))
            .collect();
    }

    /// The label of a tick at transformed position `v`.
    fn label(&self, v: f64) -> String {
        if self.log {
            let k = v.round();
            if self.decades && (v - k).abs() < 1e-9 {
                format!("10{}", superscript(k as i64))
            } else {
                plain_number(10f64.powf(v))
            }
        } else {
            let decimals = (-self.step.log10().floor()).max(0.0) as usize;
            let big = v.abs() >= 1e5 || (self.step < 1e-4 && v != 0.0);
            if big {
                format!("{v:e}")
            } else {
                // Avoid "-0" from rounding.
                let s = format!("{v:.decimals$}");
                if s.trim_start_matches(['-', '0', '.']).is_empty() {
                    s.trim_start_matches('-').to_string()
                } else {
                    s
                }
            }
        }
    }
}

/// The axis is its own plotters coordinate: a linear map of the transformed range whose
/// key points are exactly our ticks (bold) and minor ticks (light).
impl Ranged for Axis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        let frac = (v - self.lo) / (self.hi - self.lo);
        let len = (limit.1 - limit.0) as f64;
        if !frac.is_finite() {
            return if frac > 0.0 { limit.1 } else { limit.0 };
        }
        limit.0 + (len * frac).round().clamp(-1e6, 1e6) as i32
    }

    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            self.minor.clone()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.lo..self.hi
    }
}

fn superscript(k: i64) -> String {
    k.to_string()
        .chars()
        .map(|c| match c {
            '-' => '⁻',
            '0' => '⁰',
            '1' => '¹',
            '2' => '²',
            '3' => '³',
            '4' => '⁴',
            '5' => '⁵',
            '6' => '⁶',
            '7' => '⁷',
            '8' => '⁸',
            '9' => '⁹',
            c => c,
        })
        .collect()
}

/// A positive number with three significant digits: `0.02`, `250`, `3×10⁻⁵`.
fn plain_number(v: f64) -> String {
    let e = v.log10().floor();
    if (-3.0..5.0).contains(&e) {
        let decimals = (2.0 - e).max(0.0) as usize;
        let s = format!("{v:.decimals$}");
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    } else {
        let m = v / 10f64.powf(e);
        let ms = format!("{m:.2}");
        let ms = ms.trim_end_matches('0').trim_end_matches('.');
        let pow = format!("10{}", superscript(e as i64));
        if ms == "1" {
            pow
        } else {
            format!("{ms}×{pow}")
        }
    }
}

/// A series in transformed coordinates.
struct PreparedSeries {
    label: String,
    style: Style,
    color: RGBColor,
    /// Runs of consecutive drawable points (lines break at skipped points).
    segments: Vec<Vec<(f64, f64)>>,
    /// Runs of consecutive drawable band points `(x, lower, upper)`.
    band: Vec<Vec<(f64, f64, f64)>>,
}

struct Prepared {
    title: String,
    x_label: String,
    y_label: String,
    x: Axis,
    y: Axis,
    series: Vec<PreparedSeries>,
}

fn transform(scale: Scale, v: f64) -> Option<f64> {
    match scale {
        _ if !v.is_finite() => None,
        Scale::Linear => Some(v),
        Scale::Log if v > 0.0 => Some(v.log10()),
        Scale::Log => None,
    }
}

/// Splits `items` into runs of consecutive `Some`.
fn runs<T: Copy>(items: impl Iterator<Item = Option<T>>) -> Vec<Vec<T>> {
    let mut out: Vec<Vec<T>> = Vec::new();
    let mut cur = Vec::new();
    for it in items {
        match it {
            Some(v) => cur.push(v),
            None if !cur.is_empty() => out.push(std::mem::take(&mut cur)),
            None => {}
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Validates a figure and computes everything drawing needs.
fn prepare(fig: &Figure) -> Result<Prepared, PlotError> {
    let title = || fig.title.clone();
    let (xs, ys) = (fig.x_scale, fig.y_scale);
    let mut series = Vec::with_capacity(fig.series.len());
    let (mut finite_pairs, mut finite_pos_x) = (0usize, 0usize);
    let (mut xmin, mut xmax) = (f64::INFINITY, f64::NEG_INFINITY);
    let (mut ymin, mut ymax) = (f64::INFINITY, f64::NEG_INFINITY);
    for (i, s) in fig.series.iter().enumerate() {
        let mismatch = |what, len| PlotError::LengthMismatch {
            title: title(),
            series: s.label.clone(),
            what,
            x_len: s.x.len(),
            len,
        };
        if s.y.len() != s.x.len() {
            return Err(mismatch("y", s.y.len()));
        }
        if let Some((lo, hi)) = &s.y_band {
            if lo.len() != s.x.len() {
                return Err(mismatch("y_band lower", lo.len()));
            }
            if hi.len() != s.x.len() {
                return Err(mismatch("y_band upper", hi.len()));
            }
        }
        for (&x, &y) in s.x.iter().zip(&s.y) {
            if x.is_finite() && y.is_finite() {
                finite_pairs += 1;
                if x > 0.0 {
                    finite_pos_x += 1;
                }
            }
        }
        let segments = runs(
            s.x.iter()
                .zip(&s.y)
                .map(|(&x, &y)| Some((transform(xs, x)?, transform(ys, y)?))),
        );
        let band = match &s.y_band {
            Some((lo, hi)) => runs((0..s.x.len()).map(|j| {
                Some((
                    transform(xs, s.x[j])?,
                    transform(ys, lo[j])?,
                    transform(ys, hi[j])?,
                ))
            })),
            None => Vec::new(),
        };
        for &(x, y) in segments.iter().flatten() {
            (xmin, xmax) = (xmin.min(x), xmax.max(x));
            (ymin, ymax) = (ymin.min(y), ymax.max(y));
        }
        for &(x, lo, hi) in band.iter().flatten() {
            (xmin, xmax) = (xmin.min(x), xmax.max(x));
            (ymin, ymax) = (ymin.min(lo.min(hi)), ymax.max(lo.max(hi)));
        }
        let (r, g, b) = PALETTE[s.color.unwrap_or(i) % PALETTE.len()];
        series.push(PreparedSeries {
            label: s.label.clone(),
            style: s.style,
            color: RGBColor(r, g, b),
            segments,
            band,
        });
    }
    if series.iter().all(|s| s.segments.is_empty()) {
        return Err(if finite_pairs == 0 {
            PlotError::NoDrawablePoints { title: title() }
        } else {
            let axis = if xs == Scale::Log && finite_pos_x == 0 {
                "x"
            } else {
                "y"
            };
            PlotError::NoPositiveOnLogAxis {
                title: title(),
                axis,
            }
        });
    }
    Ok(Prepared {
        title: title(),
        x_label: fig.x_label.clone(),
        y_label: fig.y_label.clone(),
        x: Axis::new(xs, xmin, xmax),
        y: Axis::new(ys, ymin, ymax),
        series,
    })
}

/// The legend corner with the fewest data points (lines sampled along their segments).
fn legend_position(p: &Prepared) -> SeriesLabelPosition {
    let n_labels = p.series.iter().filter(|s| !s.label.is_empty()).count() as f64;
    let (w, h) = (0.4, (0.07 * n_labels + 0.05).min(0.7));
    let norm = |(x, y): (f64, f64)| {
        (
            (x - p.x.lo) / (p.x.hi - p.x.lo),
            (y - p.y.lo) / (p.y.hi - p.y.lo),
        )
    };
    let mut pts = Vec::new();
    for s in &p.series {
        for seg in &s.segments {
            pts.push(norm(seg[0]));
            for win in seg.windows(2) {
                let (a, b) = (norm(win[0]), norm(win[1]));
                let with_line = s.style != Style::Points;
                let steps = if with_line { 16 } else { 1 };
                for k in 1..=steps {
                    let t = k as f64 / steps as f64;
                    pts.push((a.0 + t * (b.0 - a.0), a.1 + t * (b.1 - a.1)));
                }
            }
        }
    }
    let corners = [
        (SeriesLabelPosition::UpperRight, true, true),
        (SeriesLabelPosition::UpperLeft, false, true),
        (SeriesLabelPosition::LowerRight, true, false),
        (SeriesLabelPosition::LowerLeft, false, false),
    ];
    let count = |right: bool, upper: bool| {
        pts.iter()
            .filter(|(x, y)| {
                let in_x = if right { *x >= 1.0 - w } else { *x <= w };
                let in_y = if upper { *y >= 1.0 - h } else { *y <= h };
                in_x && in_y
            })
            .count()
    };
    corners
        .into_iter()
        .min_by_key(|&(_, r, u)| count(r, u))
        .map_or(SeriesLabelPosition::UpperRight, |c| c.0)
}

// ---------------------------------------------------------------------------------------
// Drawing
// ---------------------------------------------------------------------------------------

fn draw_error<E: std::error::Error + Send + Sync>(
    title: &str,
) -> impl Fn(DrawingAreaErrorKind<E>) -> PlotError + '_ {
    move |e| PlotError::Draw {
        title: title.to_string(),
        message: e.to_string(),
    }
}

/// Draws one figure on `area`; `s` scales fonts and marks.
fn draw_figure<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    p: &Prepared,
    s: f64,
) -> Result<(), PlotError> {
    let err = draw_error(&p.title);
    let px = |v: f64| (v * s).round().max(1.0) as u32;
    let mut builder = ChartBuilder::on(area);
    builder
        .margin(px(16.0))
        .x_label_area_size(px(56.0))
        .y_label_area_size(px(80.0));
    if !p.title.is_empty() {
        builder.caption(&p.title, (FONT_FAMILY, px(30.0)));
    }
    let mut chart = builder
        .build_cartesian_2d(p.x.clone(), p.y.clone())
        .map_err(&err)?;
    let xfmt = |v: &f64| p.x.label(*v);
    let yfmt = |v: &f64| p.y.label(*v);
    chart
        .configure_mesh()
        .x_desc(p.x_label.as_str())
        .y_desc(p.y_label.as_str())
        .x_label_formatter(&xfmt)
        .y_label_formatter(&yfmt)
        .label_style((FONT_FAMILY, px(20.0)))
        .axis_desc_style((FONT_FAMILY, px(22.0)))
        .bold_line_style(BLACK.mix(0.15))
        .light_line_style(BLACK.mix(0.05))
        .draw()
        .map_err(&err)?;

    let stroke = px(2.0);
    let radius = px(4.0);
    // Bands first, so that lines and points are drawn over them.
    for ser in &p.series {
        let c = ser.color;
        match ser.style {
            Style::Line | Style::Dashed => {
                chart
                    .draw_series(ser.band.iter().filter(|b| b.len() >= 2).map(|b| {
                        let mut poly: Vec<(f64, f64)> =
                            b.iter().map(|&(x, _, hi)| (x, hi)).collect();
                        poly.extend(b.iter().rev().map(|&(x, lo, _)| (x, lo)));
                        Polygon::new(poly, c.mix(0.18).filled())
                    }))
                    .map_err(&err)?;
            }
            Style::Points | Style::LinePoints => {
                let cap = px(5.0) as i32;
                let st = c.stroke_width(px(1.5));
                chart
                    .draw_series(ser.band.iter().flatten().map(|&(x, lo, _)| {
                        EmptyElement::at((x, lo)) + PathElement::new(vec![(-cap, 0), (cap, 0)], st)
                    }))
                    .map_err(&err)?;
                chart
                    .draw_series(ser.band.iter().flatten().map(|&(x, _, hi)| {
                        EmptyElement::at((x, hi)) + PathElement::new(vec![(-cap, 0), (cap, 0)], st)
                    }))
                    .map_err(&err)?;
                chart
                    .draw_series(
                        ser.band
                            .iter()
                            .flatten()
                            .map(|&(x, lo, hi)| PathElement::new(vec![(x, lo), (x, hi)], st)),
                    )
                    .map_err(&err)?;
            }
        }
    }
    for ser in &p.series {
        let c = ser.color;
        let line = c.stroke_width(stroke);
        let dot = c.filled();
        let (dash, gap) = (px(10.0), px(6.0));
        let annotation = match ser.style {
            Style::Line => chart
                .draw_series(
                    ser.segments
                        .iter()
                        .map(|seg| PathElement::new(seg.clone(), line)),
                )
                .map_err(&err)?,
            Style::Dashed => chart
                .draw_series(
                    ser.segments
                        .iter()
                        .map(|seg| DashedPathElement::new(seg.clone(), dash, gap, line)),
                )
                .map_err(&err)?,
            Style::Points => chart
                .draw_series(
                    ser.segments
                        .iter()
                        .flatten()
                        .map(|&pt| Circle::new(pt, radius, dot)),
                )
                .map_err(&err)?,
            Style::LinePoints => {
                chart
                    .draw_series(
                        ser.segments
                            .iter()
                            .map(|seg| PathElement::new(seg.clone(), line)),
                    )
                    .map_err(&err)?;
                chart
                    .draw_series(
                        ser.segments
                            .iter()
                            .flatten()
                            .map(|&pt| Circle::new(pt, radius, dot)),
                    )
                    .map_err(&err)?
            }
        };
        if ser.label.is_empty() {
            continue;
        }
        // One element type for every style: a marker and two strokes, where the unused
        // parts coincide with the used ones (dynamic elements would need 'static backends).
        let w = px(28.0) as i32;
        let (a, b, centre, r) = match ser.style {
            Style::Line => (vec![(0, 0), (w, 0)], vec![(0, 0), (w, 0)], (0, 0), 1),
            Style::Dashed => (
                vec![(0, 0), (w * 2 / 5, 0)],
                vec![(w * 3 / 5, 0), (w, 0)],
                (0, 0),
                1,
            ),
            Style::Points => (vec![(w / 2, 0); 2], vec![(w / 2, 0); 2], (w / 2, 0), radius),
            Style::LinePoints => (
                vec![(0, 0), (w, 0)],
                vec![(0, 0), (w, 0)],
                (w / 2, 0),
                radius,
            ),
        };
        annotation.label(ser.label.as_str()).legend(move |(x, y)| {
            EmptyElement::at((x, y))
                + PathElement::new(a.clone(), line)
                + PathElement::new(b.clone(), line)
                + Circle::new(centre, r, dot)
        });
    }
    if p.series.iter().any(|s| !s.label.is_empty()) {
        chart
            .configure_series_labels()
            .position(legend_position(p))
            .margin(px(12.0))
            .legend_area_size(px(36.0))
            .label_font((FONT_FAMILY, px(20.0)))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .draw()
            .map_err(&err)?;
    }
    Ok(())
}

/// Draws `figs` in a grid of `cols` columns on `root` and presents it.
fn draw_grid<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    figs: &[Prepared],
    cols: usize,
    scale: f64,
) -> Result<(), PlotError> {
    let title = figs.first().map_or("", |f| f.title.as_str());
    root.fill(&WHITE).map_err(draw_error(title))?;
    let rows = figs.len().div_ceil(cols);
    let areas = root.split_evenly((rows, cols));
    for (fig, area) in figs.iter().zip(&areas) {
        draw_figure(area, fig, scale)?;
    }
    root.present().map_err(draw_error(title))
}

/// A heat map: one value per cell of a grid, coloured by `log10` of the value (viridis,
/// from the smallest to the largest positive finite value of the map) and written in the
/// cell; cells with a non-positive or non-finite value are grey.
#[derive(Debug, Clone, PartialEq)]
pub struct HeatMap {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// Column labels (left to right) and row labels (bottom to top).
    pub x_ticks: Vec<String>,
    pub y_ticks: Vec<String>,
    /// Row-major: `z[row * x_ticks.len() + col]`.
    pub z: Vec<f64>,
}

/// Viridis at `t` in [0, 1], interpolated between nine of its colours.
fn viridis(t: f64) -> RGBColor {
    const V: [(u8, u8, u8); 9] = [
        (68, 1, 84),
        (71, 45, 123),
        (59, 82, 139),
        (44, 114, 142),
        (33, 145, 140),
        (40, 174, 128),
        (94, 201, 98),
        (173, 220, 48),
        (253, 231, 37),
    ];
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let x = t * (V.len() - 1) as f64;
    let i = (x.floor() as usize).min(V.len() - 2);
    let f = x - i as f64;
    let mix = |a: u8, b: u8| (a as f64 + f * (b as f64 - a as f64)).round() as u8;
    let (a, b) = (V[i], V[i + 1]);
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

fn draw_heatmap<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    h: &HeatMap,
    s: f64,
) -> Result<(), PlotError> {
    use plotters::coord::ranged1d::SegmentValue;
    let err = draw_error(&h.title);
    let px = |v: f64| (v * s).round().max(1.0) as u32;
    let (nx, ny) = (h.x_ticks.len(), h.y_ticks.len());
    let logs: Vec<f64> =
        h.z.iter()
            .filter(|v| v.is_finite() && **v > 0.0)
            .map(|v| v.log10())
            .collect();
    let lo = logs.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = logs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let span = if hi > lo { hi - lo } else { 1.0 };
    let mut builder = ChartBuilder::on(area);
    builder
        .margin(px(16.0))
        .x_label_area_size(px(56.0))
        .y_label_area_size(px(80.0));
    if !h.title.is_empty() {
        builder.caption(&h.title, (FONT_FAMILY, px(26.0)));
    }
    let mut chart = builder
        // An integer range of plotters holds both ends: 0..n-1 gives the n cells.
        .build_cartesian_2d(
            (0..nx.max(1) - 1).into_segmented(),
            (0..ny.max(1) - 1).into_segmented(),
        )
        .map_err(&err)?;
    let label = |ticks: &[String], v: &SegmentValue<usize>| match v {
        SegmentValue::CenterOf(i) => ticks.get(*i).cloned().unwrap_or_default(),
        _ => String::new(),
    };
    let xfmt = |v: &SegmentValue<usize>| label(&h.x_ticks, v);
    let yfmt = |v: &SegmentValue<usize>| label(&h.y_ticks, v);
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc(h.x_label.as_str())
        .y_desc(h.y_label.as_str())
        .x_labels(nx + 1)
        .y_labels(ny + 1)
        .x_label_formatter(&xfmt)
        .y_label_formatter(&yfmt)
        .label_style((FONT_FAMILY, px(18.0)))
        .axis_desc_style((FONT_FAMILY, px(20.0)))
        .draw()
        .map_err(&err)?;
    let cells: Vec<(usize, usize, f64)> = (0..ny)
        .flat_map(|r| (0..nx).map(move |c| (r, c)))
        .map(|(r, c)| (r, c, h.z.get(r * nx + c).copied().unwrap_or(f64::NAN)))
        .collect();
    let fill = |v: f64| {
        if v.is_finite() && v > 0.0 {
            viridis((v.log10() - lo) / span)
        } else {
            RGBColor(200, 200, 200)
        }
    };
    chart
        .draw_series(cells.iter().map(|&(r, c, v)| {
            Rectangle::new(
                [
                    (SegmentValue::Exact(c), SegmentValue::Exact(r)),
                    (SegmentValue::Exact(c + 1), SegmentValue::Exact(r + 1)),
                ],
                fill(v).filled(),
            )
        }))
        .map_err(&err)?;
    let font = (FONT_FAMILY, px(16.0)).into_font();
    chart
        .draw_series(cells.iter().map(|&(r, c, v)| {
            let dark = !(v.is_finite() && v > 0.0) || (v.log10() - lo) / span > 0.6;
            let text = if v.is_finite() {
                format!("{v:.2e}")
            } else {
                "-".to_string()
            };
            let colour = if dark { BLACK } else { WHITE };
            Text::new(
                text,
                (SegmentValue::CenterOf(c), SegmentValue::CenterOf(r)),
                font.clone()
                    .color(&colour)
                    .pos(plotters::style::text_anchor::Pos::new(
                        plotters::style::text_anchor::HPos::Center,
                        plotters::style::text_anchor::VPos::Center,
                    )),
            )
        }))
        .map_err(&err)?;
    Ok(())
}

fn draw_heat_grid<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    maps: &[HeatMap],
    grid: (usize, usize),
) -> Result<(), PlotError> {
    let title = maps.first().map_or("", |m| m.title.as_str());
    root.fill(&WHITE).map_err(draw_error(title))?;
    for (m, a) in maps.iter().zip(root.split_evenly(grid).iter()) {
        draw_heatmap(a, m, 0.8)?;
    }
    root.present().map_err(draw_error(title))
}

/// Writes `maps` as a grid of heat-map panels, `cols` per row (640×480 each), into
/// `stem.png` and `stem.svg`; returns the two paths.
pub fn save_heatmaps(
    maps: &[HeatMap],
    cols: usize,
    stem: &Path,
) -> Result<Vec<PathBuf>, PlotError> {
    if maps.is_empty() || cols == 0 {
        return Err(PlotError::BadLayout {
            why: format!("{} heat maps in {cols} columns", maps.len()),
        });
    }
    for m in maps {
        if m.x_ticks.is_empty()
            || m.y_ticks.is_empty()
            || m.z.len() != m.x_ticks.len() * m.y_ticks.len()
        {
            return Err(PlotError::BadLayout {
                why: format!(
                    "heat map '{}': {} values for {} x {} cells",
                    m.title,
                    m.z.len(),
                    m.y_ticks.len(),
                    m.x_ticks.len()
                ),
            });
        }
    }
    if stem.file_name().is_none() {
        return Err(PlotError::BadStem {
            stem: stem.to_path_buf(),
        });
    }
    ensure_font()?;
    let cols = cols.min(maps.len());
    let rows = maps.len().div_ceil(cols);
    let size = (cols as u32 * PANEL_SIZE.0, rows as u32 * PANEL_SIZE.1);
    let png_path = with_suffix(stem, "png");
    let svg_path = with_suffix(stem, "svg");
    let mut rgb = vec![0u8; size.0 as usize * size.1 as usize * 3];
    draw_heat_grid(
        BitMapBackend::with_buffer(&mut rgb, size).into_drawing_area(),
        maps,
        (rows, cols),
    )?;
    atomic_write_with(&png_path, |tmp| write_png(tmp, &rgb, size))?;
    let mut svg = String::new();
    draw_heat_grid(
        SVGBackend::with_string(&mut svg, size).into_drawing_area(),
        maps,
        (rows, cols),
    )?;
    atomic_write(&svg_path, svg.as_bytes())?;
    Ok(vec![png_path, svg_path])
}

/// `stem` with `.ext` appended (not replacing an extension: `fit.v2` gives `fit.v2.png`).
fn with_suffix(stem: &Path, ext: &str) -> PathBuf {
    let mut s = stem.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}

/// Encodes an RGB8 buffer as PNG into a new file at `path`.
fn write_png(path: &Path, rgb: &[u8], (w, h): (u32, u32)) -> std::io::Result<()> {
    let file = std::fs::File::create(path)?;
    let mut out = std::io::BufWriter::new(file);
    let mut enc = png::Encoder::new(&mut out, w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header().map_err(std::io::Error::other)?;
    writer
        .write_image_data(rgb)
        .map_err(std::io::Error::other)?;
    writer.finish().map_err(std::io::Error::other)?;
    out.flush()?;
    out.into_inner().map_err(|e| e.into_error())?.sync_all()
}

/// Renders the grid twice (bitmap and SVG, both in memory) and writes `stem.png` and
/// `stem.svg` atomically.
fn render(
    figs: &[Prepared],
    cols: usize,
    size: (u32, u32),
    scale: f64,
    stem: &Path,
) -> Result<Vec<PathBuf>, PlotError> {
    if stem.file_name().is_none() {
        return Err(PlotError::BadStem {
            stem: stem.to_path_buf(),
        });
    }
    ensure_font()?;
    let png_path = with_suffix(stem, "png");
    let svg_path = with_suffix(stem, "svg");
    let mut rgb = vec![0u8; size.0 as usize * size.1 as usize * 3];
    draw_grid(
        BitMapBackend::with_buffer(&mut rgb, size).into_drawing_area(),
        figs,
        cols,
        scale,
    )?;
    atomic_write_with(&png_path, |tmp| write_png(tmp, &rgb, size))?;
    let mut svg = String::new();
    draw_grid(
        SVGBackend::with_string(&mut svg, size).into_drawing_area(),
        figs,
        cols,
        scale,
    )?;
    atomic_write(&svg_path, svg.as_bytes())?;
    Ok(vec![png_path, svg_path])
}

/// Writes `fig` as `stem.png` (1000×700) and `stem.svg`; returns the two paths.
pub fn save(fig: &Figure, stem: &Path) -> Result<Vec<PathBuf>, PlotError> {
    render(&[prepare(fig)?], 1, FIGURE_SIZE, 1.0, stem)
}

/// Writes `figs` as a grid of panels, `cols` per row (640×480 each), into `stem.png` and
/// `stem.svg`; returns the two paths. Every figure must be drawable.
pub fn save_panels(figs: &[Figure], cols: usize, stem: &Path) -> Result<Vec<PathBuf>, PlotError> {
    if figs.is_empty() {
        return Err(PlotError::BadLayout {
            why: "no figures".to_string(),
        });
    }
    if cols == 0 {
        return Err(PlotError::BadLayout {
            why: "cols = 0; need at least one column".to_string(),
        });
    }
    let cols = cols.min(figs.len());
    let rows = figs.len().div_ceil(cols);
    let (w, h) = (
        cols as u64 * PANEL_SIZE.0 as u64,
        rows as u64 * PANEL_SIZE.1 as u64,
    );
    if w > MAX_SIDE || h > MAX_SIDE {
        return Err(PlotError::BadLayout {
            why: format!(
                "{rows} rows × {cols} columns make a {w}×{h} image; the limit is {MAX_SIDE} \
                 pixels a side"
            ),
        });
    }
    let prepared = figs.iter().map(prepare).collect::<Result<Vec<_>, _>>()?;
    render(&prepared, cols, (w as u32, h as u32), 0.8, stem)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("reslim-plot-{name}-{}", std::process::id()))
    }

    fn loglog_figure() -> Figure {
        let x: Vec<f64> = (0..8).map(|i| 10f64.powf(1.0 + 0.5 * i as f64)).collect();
        let y: Vec<f64> = x.iter().map(|v| 2.0 * v.powf(-1.0 / 6.0)).collect();
        let lo: Vec<f64> = y.iter().map(|v| v * 0.9).collect();
        let hi: Vec<f64> = y.iter().map(|v| v * 1.1).collect();
        let mut fig = Figure::new(
            "Embedding error vs P",
            "parameters P",
            "error",
            Scale::Log,
            Scale::Log,
        );
        fig.series.push(
            Series::new("measured", x.clone(), y.clone(), Style::Points)
                .with_color(0)
                .with_band(lo, hi),
        );
        let fit: Vec<f64> = x.iter().map(|v| 2.1 * v.powf(-1.0 / 6.0)).collect();
        fig.series
            .push(Series::new("fit P^-1/6", x, fit, Style::Dashed).with_color(0));
        fig
    }

    #[test]
    fn saving_a_loglog_figure_writes_png_and_svg() {
        let dir = temp_dir("save");
        let paths = save(&loglog_figure(), &dir.join("err_vs_p")).unwrap();
        assert_eq!(
            paths,
            vec![dir.join("err_vs_p.png"), dir.join("err_vs_p.svg")]
        );
        let png = std::fs::read(&paths[0]).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert!(png.len() > 10_000, "PNG of {} bytes", png.len());
        // IHDR holds the size.
        assert_eq!(&png[16..24], &[0, 0, 3, 0xe8, 0, 0, 2, 0xbc]);
        let svg = std::fs::read_to_string(&paths[1]).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..100]);
        for text in [
            "Embedding error vs P",
            "measured",
            "fit P^-1/6",
            "parameters P",
        ] {
            assert!(svg.contains(text), "SVG lacks {text:?}");
        }
        // x spans 10..10^4.5 (decade ticks); y spans less than a decade (plain numbers).
        assert!(
            svg.contains("10³") && svg.contains("10⁴"),
            "no decade labels"
        );
        // (plotters writes each text on its own line.)
        assert!(
            svg.contains("\n0.5\n") && svg.contains("\n1\n"),
            "no plain y labels"
        );
        // No temporary files are left behind.
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        if std::env::var_os("RESLIM_KEEP_PLOTS").is_none() {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    #[test]
    fn panels_go_into_one_image() {
        let dir = temp_dir("panels");
        let mut lin = Figure::new("linear", "L", "loss", Scale::Linear, Scale::Linear);
        lin.series.push(Series::new(
            "",
            vec![1.0, 2.0, 3.0, f64::NAN, 5.0],
            vec![0.5, -0.25, 0.1, 1.0, 0.0],
            Style::LinePoints,
        ));
        let figs = [loglog_figure(), lin.clone(), lin];
        let paths = save_panels(&figs, 2, &dir.join("grid")).unwrap();
        let png = std::fs::read(&paths[0]).unwrap();
        // Two columns of 640 and two rows of 480 pixels.
        assert_eq!(&png[16..24], &[0, 0, 5, 0, 0, 0, 3, 0xc0]);
        let svg = std::fs::read_to_string(&paths[1]).unwrap();
        assert!(svg.contains("Embedding error vs P") && svg.matches("\nlinear\n").count() == 2);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_figures_are_errors_that_name_them() {
        let dir = temp_dir("bad");
        let mut fig = Figure::new("empty one", "x", "y", Scale::Log, Scale::Log);
        let e = save(&fig, &dir.join("a")).unwrap_err();
        assert!(matches!(e, PlotError::NoDrawablePoints { .. }));
        assert!(e.to_string().contains("empty one"), "{e}");

        fig.series.push(Series::new(
            "s",
            vec![1.0, 2.0],
            vec![f64::NAN, f64::INFINITY],
            Style::Line,
        ));
        assert!(matches!(
            save(&fig, &dir.join("a")),
            Err(PlotError::NoDrawablePoints { .. })
        ));

        fig.series[0].y = vec![-1.0, 0.0];
        let e = save(&fig, &dir.join("a")).unwrap_err();
        assert!(
            matches!(e, PlotError::NoPositiveOnLogAxis { axis: "y", .. }),
            "{e}"
        );
        fig.series[0].x = vec![-1.0, 0.0];
        let e = save(&fig, &dir.join("a")).unwrap_err();
        assert!(
            matches!(e, PlotError::NoPositiveOnLogAxis { axis: "x", .. }),
            "{e}"
        );

        fig.series[0].y = vec![1.0];
        let e = save(&fig, &dir.join("a")).unwrap_err();
        assert!(e.to_string().contains("series 's'"), "{e}");
        fig.series[0].y = vec![1.0, 2.0];
        fig.series[0].x = vec![1.0, 2.0];
        fig.series[0].y_band = Some((vec![1.0, 2.0], vec![1.0]));
        let e = save(&fig, &dir.join("a")).unwrap_err();
        assert!(
            matches!(
                e,
                PlotError::LengthMismatch {
                    what: "y_band upper",
                    ..
                }
            ),
            "{e}"
        );

        assert!(matches!(
            save_panels(&[], 2, &dir.join("a")),
            Err(PlotError::BadLayout { .. })
        ));
        assert!(matches!(
            save_panels(&[loglog_figure()], 0, &dir.join("a")),
            Err(PlotError::BadLayout { .. })
        ));
        fig.series[0].y_band = None;
        let e = save_panels(&[loglog_figure(), fig.clone()], 2, &dir.join("a"));
        assert!(e.is_ok(), "{e:?}");
        fig.series.clear();
        let e = save_panels(&[loglog_figure(), fig], 2, &dir.join("a")).unwrap_err();
        assert!(e.to_string().contains("empty one"), "{e}");
        assert!(matches!(
            save(&loglog_figure(), Path::new("/")),
            Err(PlotError::BadStem { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn non_positive_points_are_skipped_on_log_axes() {
        let mut fig = Figure::new("t", "x", "y", Scale::Log, Scale::Linear);
        fig.series.push(Series::new(
            "s",
            vec![-1.0, 0.0, 10.0, 100.0, f64::NAN, 1000.0],
            vec![5.0, 5.0, 1.0, 2.0, 3.0, -4.0],
            Style::Line,
        ));
        let p = prepare(&fig).unwrap();
        // Two runs: (10, 100) and (1000), broken at the NaN.
        assert_eq!(p.series[0].segments.len(), 2);
        assert_eq!(p.series[0].segments[0], vec![(1.0, 1.0), (2.0, 2.0)]);
        // The x range is 10..1000 padded by 5% of two decades each side.
        assert!((p.x.lo - 0.9).abs() < 1e-12 && (p.x.hi - 3.1).abs() < 1e-12);
        assert_eq!(p.x.ticks, vec![1.0, 2.0, 3.0]);
        assert!(p.x.decades);
        // Linear y covers the negative value.
        assert!(p.y.lo < -4.0 && p.y.hi > 2.0);
    }

    #[test]
    fn tick_labels_are_readable() {
        let a = Axis::new(Scale::Log, -3.0, 2.0);
        assert!(a.decades);
        assert_eq!(a.label(-3.0), "10⁻³");
        assert_eq!(a.label(2.0), "10²");
        assert!(a.minor.contains(&(2f64.log10())));
        // Less than three decades: 1-2-5 ticks, plain labels.
        let b = Axis::new(Scale::Log, 0.2f64.log10(), 3f64.log10());
        assert!(!b.decades);
        let labels: Vec<String> = b.ticks.iter().map(|&t| b.label(t)).collect();
        assert_eq!(labels, ["0.2", "0.5", "1", "2"]);
        // Many decades: at most about eight labelled.
        let c = Axis::new(Scale::Log, 0.0, 30.0);
        assert!(c.ticks.len() <= 9 && c.ticks.len() >= 4, "{:?}", c.ticks);
        let l = Axis::new(Scale::Linear, 0.0, 1.0);
        assert_eq!(l.step, 0.2);
        assert_eq!(l.label(0.4), "0.4");
        assert_eq!(l.label(-0.0), "0.0");
        assert_eq!(plain_number(2.5e-5), "2.5×10⁻⁵");
        assert_eq!(plain_number(1e6), "10⁶");
        assert_eq!(plain_number(250.0), "250");
    }

    #[test]
    fn legend_avoids_the_data() {
        // Points crowd the upper right: the legend goes elsewhere.
        let mut fig = Figure::new("t", "x", "y", Scale::Linear, Scale::Linear);
        fig.series.push(Series::new(
            "data",
            vec![0.0, 9.0, 9.5, 10.0],
            vec![0.0, 9.0, 9.5, 10.0],
            Style::Points,
        ));
        let p = prepare(&fig).unwrap();
        assert!(!matches!(
            legend_position(&p),
            SeriesLabelPosition::UpperRight
        ));
    }
}
