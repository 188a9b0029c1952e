//! The depth grid and quantities tabulated on it.
//!
//! Every depth-dependent quantity of the limit is stored at the points
//! `s_i = i/(num_s − 1)`, `i = 0..num_s`, and is read back between grid points by
//! piecewise-linear interpolation, as in the authors' solver (docs/papers.md §2.3: `num_s`
//! grid points, `interp1d(kind='linear')`). The grid is part of the definition of the
//! computed object: refining it changes the results by `O(1/num_s²)`.

use super::LimitError;
use serde::{Deserialize, Serialize};

/// The uniform depth grid `s_i = i/(num_s − 1)` on `[0, 1]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DepthGrid {
    s: Vec<f64>,
}

impl DepthGrid {
    /// A grid of `num_s ≥ 2` points.
    pub fn new(num_s: usize) -> Result<Self, LimitError> {
        if num_s < 2 {
            return Err(LimitError::invalid("num_s", num_s, "must be at least 2"));
        }
        let step = 1.0 / (num_s - 1) as f64;
        let mut s: Vec<f64> = (0..num_s).map(|i| i as f64 * step).collect();
        s[num_s - 1] = 1.0;
        Ok(Self { s })
    }

    /// Number of points.
    pub fn len(&self) -> usize {
        self.s.len()
    }

    /// Always `false` (a grid has at least two points).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The points, ascending.
    pub fn points(&self) -> &[f64] {
        &self.s
    }

    /// The cell `[s_i, s_{i+1}]` holding `s` and the weight `θ = (s − s_i)/(s_{i+1} − s_i)`,
    /// so that a tabulated `v` interpolates to `v_i + θ (v_{i+1} − v_i)`. Points outside
    /// `[0, 1]` extrapolate linearly from the end cells.
    #[inline]
    pub fn locate(&self, s: f64) -> (usize, f64) {
        let n = self.s.len();
        let f = s * (n - 1) as f64;
        let i = if f.is_nan() || f <= 0.0 {
            0
        } else {
            (f.floor() as usize).min(n - 2)
        };
        let (lo, hi) = (self.s[i], self.s[i + 1]);
        (i, (s - lo) / (hi - lo))
    }
}

/// A `rows × cols` matrix at every point of a depth grid, stored row-major point after
/// point: entry `(r, c)` at grid point `i` is `data[(i·rows + r)·cols + c]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DepthSeries {
    pub num_s: usize,
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f64>,
}

impl DepthSeries {
    /// All zeros.
    pub fn zeros(num_s: usize, rows: usize, cols: usize) -> Self {
        Self {
            num_s,
            rows,
            cols,
            data: vec![0.0; num_s * rows * cols],
        }
    }

    /// The matrix at grid point `i` (row-major, `rows × cols`).
    #[inline]
    pub fn at(&self, i: usize) -> &[f64] {
        let n = self.rows * self.cols;
        &self.data[i * n..(i + 1) * n]
    }

    /// The matrix at grid point `i`, mutably.
    #[inline]
    pub fn at_mut(&mut self, i: usize) -> &mut [f64] {
        let n = self.rows * self.cols;
        &mut self.data[i * n..(i + 1) * n]
    }

    /// Entry `(r, c)` at grid point `i`.
    #[inline]
    pub fn get(&self, i: usize, r: usize, c: usize) -> f64 {
        self.data[(i * self.rows + r) * self.cols + c]
    }

    /// Sets entry `(r, c)` at grid point `i`.
    #[inline]
    pub fn set(&mut self, i: usize, r: usize, c: usize, v: f64) {
        self.data[(i * self.rows + r) * self.cols + c] = v;
    }

    /// Row `r` of the matrix at grid point `i`.
    #[inline]
    pub fn row(&self, i: usize, r: usize) -> &[f64] {
        let start = (i * self.rows + r) * self.cols;
        &self.data[start..start + self.cols]
    }

    /// Entry `(r, c)` along the grid, as a vector of `num_s` values.
    pub fn entry_series(&self, r: usize, c: usize) -> Vec<f64> {
        (0..self.num_s).map(|i| self.get(i, r, c)).collect()
    }

    /// The matrix at grid point `i` as nested rows.
    pub fn matrix(&self, i: usize) -> Vec<Vec<f64>> {
        self.at(i).chunks(self.cols).map(<[f64]>::to_vec).collect()
    }
}
