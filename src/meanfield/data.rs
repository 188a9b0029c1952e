//! Binary classification data for the mean-field model: the two-spirals generator of
//! docs/papers.md 1.4 and CSV input, with the lifting to the unit sphere.
//!
//! A [`Dataset`] holds inputs `x` (`d x n`, column i = sample i) and labels `y_i = ±1`.

use crate::io::IoError;
use crate::rng::{Stream, Tensor};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Inputs and ±1 labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    pub d: usize,
    /// `d x n`, column-major (sample i at `x[i*d .. (i+1)*d]`).
    pub x: Vec<f64>,
    pub y: Vec<f64>,
}

impl Dataset {
    pub fn n(&self) -> usize {
        self.y.len()
    }

    /// The samples `idx`, in that order.
    pub fn select(&self, idx: &[usize]) -> Dataset {
        let d = self.d;
        let mut x = Vec::with_capacity(idx.len() * d);
        for &i in idx {
            x.extend_from_slice(&self.x[i * d..(i + 1) * d]);
        }
        Dataset {
            d,
            x,
            y: idx.iter().map(|&i| self.y[i]).collect(),
        }
    }

    /// The first `n` samples.
    pub fn head(&self, n: usize) -> Dataset {
        Dataset {
            d: self.d,
            x: self.x[..n * self.d].to_vec(),
            y: self.y[..n].to_vec(),
        }
    }

    /// Appends the constant coordinate `c` to every input (`d -> d + 1`).
    pub fn lift(&self, c: f64) -> Dataset {
        let d = self.d;
        let mut x = Vec::with_capacity(self.n() * (d + 1));
        for i in 0..self.n() {
            x.extend_from_slice(&self.x[i * d..(i + 1) * d]);
            x.push(c);
        }
        Dataset {
            d: d + 1,
            x,
            y: self.y.clone(),
        }
    }

    /// Scales every input to unit norm (docs/papers.md 1.2: inputs on the unit sphere). An
    /// input of norm zero is an error naming the sample.
    pub fn normalize(&self) -> Result<Dataset, DataError> {
        let d = self.d;
        let mut x = self.x.clone();
        for (i, xi) in x.chunks_mut(d).enumerate() {
            let nrm = xi.iter().map(|v| v * v).sum::<f64>().sqrt();
            if nrm.is_nan() || nrm <= 0.0 || nrm.is_infinite() {
                return Err(DataError::ZeroInput { index: i });
            }
            xi.iter_mut().for_each(|v| *v /= nrm);
        }
        Ok(Dataset {
            d,
            x,
            y: self.y.clone(),
        })
    }

    /// Fraction of samples with label +1.
    pub fn positive_fraction(&self) -> f64 {
        self.y.iter().filter(|&&v| v > 0.0).count() as f64 / self.n().max(1) as f64
    }
}

/// Errors of data input.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("{path}: line {line}: {why}")]
    Csv {
        path: PathBuf,
        line: usize,
        why: String,
    },
    #[error("input {index} has norm zero (or is not finite) and cannot be put on the unit sphere")]
    ZeroInput { index: usize },
}

/// The two-spirals generator (docs/papers.md 1.4, the widely copied one).
///
/// Pair k draws `U, U1, U2 ~ Unif(0, 1)` from row k of its stream and
/// `t = sqrt(U) * turns * 2 pi`; sample `2k` (label +1) is
/// `(-t cos t + U1 noise, t sin t + U2 noise)` and sample `2k+1` (label -1) its negation.
/// The coordinates are then divided by `turns * 2 pi` (the spiral fits the unit disk),
/// so `noise` is in the generator's units (added before the scaling): `noise = 0.5` at
/// the default `turns` = 780/360 (the generator's 780 degrees) is
/// `0.5 / (780/360 * 2 pi) = 0.037` of the unit disk after scaling.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Spirals {
    pub turns: f64,
    pub noise: f64,
}

impl Default for Spirals {
    fn default() -> Self {
        Spirals {
            turns: 780.0 / 360.0,
            noise: 0.5,
        }
    }
}

impl Spirals {
    /// `n` planar samples (`d = 2`) from stream `(seed, Other(tag), 0)`; the classes are
    /// balanced (`n/2` each for even n, the extra one +1 for odd n), and the samples of
    /// a smaller `n` are a prefix of a larger one.
    pub fn sample(&self, n: usize, seed: u64, tag: u32) -> Dataset {
        let s = Stream::new(seed, Tensor::Other(tag), 0);
        let tmax = self.turns * 2.0 * std::f64::consts::PI;
        let mut x = Vec::with_capacity(2 * n);
        let mut y = Vec::with_capacity(n);
        for k in 0..n.div_ceil(2) {
            let r = k as u64;
            let t = s.uniform(r, 0).sqrt() * tmax;
            let px = (-t * t.cos() + s.uniform(r, 1) * self.noise) / tmax;
            let py = (t * t.sin() + s.uniform(r, 2) * self.noise) / tmax;
            x.extend_from_slice(&[px, py]);
            y.push(1.0);
            if 2 * k + 1 < n {
                x.extend_from_slice(&[-px, -py]);
                y.push(-1.0);
            }
        }
        Dataset { d: 2, x, y }
    }

    /// The label a noise-free point `(px, py)` (scaled coordinates) must carry: arm +1 is
    /// `t (-cos t, sin t)`, at polar angle `pi - t`, arm -1 at angle `-t`; returns the
    /// label and the distance in angle (mod 2 pi) to the arm's curve, 0 on the curve.
    pub fn arm_of(&self, px: f64, py: f64) -> (f64, f64) {
        let tmax = self.turns * 2.0 * std::f64::consts::PI;
        let t = (px * px + py * py).sqrt() * tmax;
        let two_pi = 2.0 * std::f64::consts::PI;
        let phase = (py.atan2(px) + t - std::f64::consts::PI).rem_euclid(two_pi);
        // phase 0 on arm +1, pi on arm -1.
        let d_plus = phase.min(two_pi - phase);
        let d_minus = (phase - std::f64::consts::PI).abs();
        if d_plus <= d_minus {
            (1.0, d_plus)
        } else {
            (-1.0, d_minus)
        }
    }
}

/// Reads a CSV of samples: one row per sample, the first `d` columns the input and the
/// last the label, `+1`/`-1` (`1`/`0` are read as `+1`/`-1`). A header row is skipped when
/// its first field is not a number. Errors name the file and line.
pub fn read_csv(path: &Path) -> Result<Dataset, DataError> {
    let text = std::fs::read_to_string(path).map_err(|source| IoError::Os {
        path: path.to_path_buf(),
        source,
    })?;
    let err = |line: usize, why: String| DataError::Csv {
        path: path.to_path_buf(),
        line,
        why,
    };
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(false)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let (mut x, mut y) = (Vec::new(), Vec::new());
    let mut width = None;
    for (k, rec) in rdr.records().enumerate() {
        let line = k + 1;
        let rec = rec.map_err(|e| err(line, e.to_string()))?;
        if rec.iter().all(|f| f.is_empty()) {
            continue;
        }
        if k == 0 && rec.get(0).is_some_and(|f| f.parse::<f64>().is_err()) {
            continue;
        }
        let vals = rec
            .iter()
            .enumerate()
            .map(|(c, f)| {
                f.parse::<f64>()
                    .map_err(|_| err(line, format!("column {}: '{f}' is not a number", c + 1)))
            })
            .collect::<Result<Vec<f64>, _>>()?;
        if vals.len() < 2 {
            return Err(err(
                line,
                format!(
                    "need at least one input column and a label, found {} column(s)",
                    vals.len()
                ),
            ));
        }
        match width {
            None => width = Some(vals.len()),
            Some(w) if w != vals.len() => {
                return Err(err(
                    line,
                    format!("{} columns, but the first row has {w}", vals.len()),
                ));
            }
            _ => {}
        }
        if let Some(c) = vals.iter().position(|v| !v.is_finite()) {
            return Err(err(line, format!("column {}: value is not finite", c + 1)));
        }
        let label = vals[vals.len() - 1];
        let yv = if label == 1.0 {
            1.0
        } else if label == -1.0 || label == 0.0 {
            -1.0
        } else {
            return Err(err(line, format!("label '{label}' is not +1/-1 (or 1/0)")));
        };
        x.extend_from_slice(&vals[..vals.len() - 1]);
        y.push(yv);
    }
    let Some(w) = width else {
        return Err(err(0, "no samples".into()));
    };
    Ok(Dataset { d: w - 1, x, y })
}
