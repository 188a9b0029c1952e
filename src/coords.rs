//! The coordinate plots of docs/papers.md §2.5, E3 (the `coords` command): one finite network
//! of the `chizat-python` family beside its limit, exact (linear blocks) or Monte Carlo
//! (any other activation): trajectories of coordinates of `h` and `D·b` against depth
//! beside their limit curves, and histograms against the limit law `N(0, Γ_kk(s))`.
//!
//! - [`backward_states`]: `∂loss/∂h_l` at every layer of a finite network (a plain
//!   backward pass that updates nothing), for the `D·b` coordinates.
//! - [`coordinates`]: trains the network, solves its limit ([`crate::vslimit`]) and draws
//!   the figures.

use crate::cpu::Par;
use crate::io;
use crate::limit::{DepthSeries, MonteCarlo};
use crate::model::{Activation, Data, Real, Weights};
use crate::param::{Dims, Parametrization, Resolved};
use crate::plot::{self, Figure, Series, Style};
use crate::train::{self, TrainOptions, Workspace};
use crate::vslimit::{LimitReference, SolverSettings, frame_params, invalid};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// `∂loss/∂h_l` of every layer `l = 0..=L` (`(L+1) × D × N`, coordinate-major like
/// `History::hidden`), for the network whose forward pass `ws` holds (after
/// [`train::forward`] on `w`). A plain backward pass in `f64`; nothing is updated. With
/// `g_L = m_W W_U ∂loss/∂f`, `q = m_V V_lᵀ g_{l+1}`, `G = σ'(p_l) q`,
/// `g_l = g_{l+1} + m_U U_l G` (the recursion of [`crate::train`]).
pub fn backward_states<T: Real>(
    w: &Weights<T>,
    data: &Data,
    r: &Resolved,
    act: Activation,
    ws: &Workspace<T>,
) -> Vec<f64> {
    let dims = w.dims;
    let (l_n, m, d, n, d_o) = (dims.l, dims.m, dims.d, data.n, dims.dout);
    let mut out = vec![0.0; (l_n + 1) * d * n];
    let mut g = vec![0.0; n * d];
    for s in 0..n {
        for dd in 0..d {
            let mut acc = 0.0;
            for o in 0..d_o {
                let e = ws.f[o * n + s] - data.y[o * n + s];
                acc += w.wu[dd * d_o + o].to() * 2.0 * r.loss * e;
            }
            g[s * d + dd] = r.wu.mult * acc;
        }
    }
    let store = |out: &mut [f64], l: usize, g: &[f64]| {
        for dd in 0..d {
            for s in 0..n {
                out[(l * d + dd) * n + s] = g[s * d + dd];
            }
        }
    };
    store(&mut out, l_n, &g);
    let (mu, mv) = (r.u.mult, r.v.mult);
    let mut gn = vec![0.0; n * d];
    let mut gcoef = vec![0.0; n];
    for l in (0..l_n).rev() {
        let h = ws.hidden(l, n, d);
        gn.copy_from_slice(&g);
        for mm in 0..m {
            let off = (l * m + mm) * d;
            let (urow, vrow) = (&w.ut[off..off + d], &w.vt[off..off + d]);
            for s in 0..n {
                let (hs, gs) = (&h[s * d..(s + 1) * d], &g[s * d..(s + 1) * d]);
                let p: f64 = urow.iter().zip(hs).map(|(u, x)| u.to() * x.to()).sum();
                let q: f64 = vrow.iter().zip(gs).map(|(v, x)| v.to() * x).sum();
                gcoef[s] = mu * act.d1(mu * p) * mv * q;
            }
            for s in 0..n {
                let c = gcoef[s];
                for (o, u) in gn[s * d..(s + 1) * d].iter_mut().zip(urow) {
                    *o += c * u.to();
                }
            }
        }
        std::mem::swap(&mut g, &mut gn);
        store(&mut out, l, &g);
    }
    out
}

/// The coordinate plots of docs/papers.md §2.5, E3: one finite network of the
/// `chizat-python` family beside its limit.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CoordsSpec {
    #[serde(rename = "L")]
    pub l: usize,
    #[serde(rename = "M")]
    pub m: usize,
    #[serde(rename = "D")]
    pub d: usize,
    /// Seed of the block weights `U`, `V`.
    pub seed: u64,
    /// Seed of `W_E`, `W_U`.
    pub embed_seed: u64,
    /// Passes `K` the limit is solved for (at least the largest step plotted + 1).
    pub steps: usize,
    /// Global learning rate `η` (the paper: 0.1).
    pub eta: f64,
    /// Branch scale `α`.
    pub alpha: f64,
    /// The step of the trajectory plots (the paper: 8).
    pub traj_step: usize,
    /// The steps of the histograms (the paper: 0, 4, 8).
    pub hist_steps: Vec<usize>,
    /// Coordinates drawn in the trajectory plots of `h` and of `D·b` (the paper: 10, 9).
    pub n_h: usize,
    pub n_b: usize,
    /// The training input and target (one sample).
    pub x: Vec<f64>,
    pub y: Vec<f64>,
    /// The parametrization preset (the chizat-python family; default `chizat-python`).
    pub preset: String,
    /// The blocks' activation (default linear: the exact limit; any other: the
    /// Monte-Carlo limit of [`crate::limit::nonlinear`] with `mc`).
    pub activation: Activation,
    #[serde(skip)]
    pub solver: SolverSettings,
    /// Monte-Carlo settings of a nonlinear limit.
    #[serde(skip)]
    pub mc: MonteCarlo,
}

/// The input and target of the paper's linear experiments (docs/papers.md §2.5, E2).
pub const PAPER_X: [f64; 3] = [0.4800016366501795, -0.13361224046088563, 0.6258963157042639];
/// See [`PAPER_X`].
pub const PAPER_Y: [f64; 3] = [0.627895235604804, 0.2659797617857747, -0.05539644339098687];

impl Default for CoordsSpec {
    /// The paper's run (E3): `D = M = 1000`, `L = 200`, seed 1, `K = 15`, `η = 0.1`.
    fn default() -> Self {
        CoordsSpec {
            l: 200,
            m: 1000,
            d: 1000,
            seed: 1,
            embed_seed: 1,
            steps: 15,
            eta: 0.1,
            alpha: 1.0,
            traj_step: 8,
            hist_steps: vec![0, 4, 8],
            n_h: 10,
            n_b: 9,
            x: PAPER_X.to_vec(),
            y: PAPER_Y.to_vec(),
            preset: "chizat-python".into(),
            activation: Activation::Linear,
            solver: SolverSettings::default(),
            mc: MonteCarlo::default(),
        }
    }
}

/// One (step, depth) of the coordinate comparison.
#[derive(Debug, Clone, Serialize)]
pub struct CoordStat {
    pub step: usize,
    pub layer: usize,
    /// `mean_d h_d²` and the limit's `Γᴴ_kk(l/L)`.
    pub mean_sq_h: f64,
    pub gamma_h: f64,
    /// `mean_d (D b_d)²` and `Γᴮ_kk(l/L)`.
    pub mean_sq_b: f64,
    pub gamma_b: f64,
    /// `mean_d |h_d − H_d|`, `mean_d |D b_d − B_d|` (coupled trajectories).
    pub mad_h: f64,
    pub mad_b: f64,
}

/// What [`coordinates`] measured and wrote.
#[derive(Debug, Clone, Serialize)]
pub struct CoordsSummary {
    pub spec: CoordsSpec,
    pub stats: Vec<CoordStat>,
    /// `max_l mean_d |h − H|` and `max_l mean_d |D b − B|` at the trajectory step.
    pub traj_mad_h: f64,
    pub traj_mad_b: f64,
    /// Finite and limit outputs at the trajectory step.
    pub f: Vec<f64>,
    pub f_limit: Vec<f64>,
    pub seconds: f64,
    pub files: Vec<PathBuf>,
}

/// Bytes [`coordinates`] needs, estimated before it allocates: the network and its
/// workspace (one sample), h and D b at every layer for each of `snaps` steps, the
/// limit's covariances (two `K x K` matrices at about `num_s` depths, counted twice for
/// the solver's stages) and its trajectories (`num_s` depths x D x K, for h and b).
fn coords_bytes(
    dims: &Dims,
    steps: usize,
    snaps: usize,
    num_s: usize,
) -> Result<usize, crate::memory::MemoryError> {
    use crate::memory::{product, sum};
    let l1 = sum(&[("L", dims.l), ("1", 1)])?;
    let s1 = sum(&[("num_s", num_s), ("1", 1)])?;
    sum(&[
        ("weights", Weights::<f64>::bytes(dims)?),
        ("workspace", crate::train::Workspace::<f64>::bytes(dims)?),
        (
            "snapshots",
            product(&[
                ("2", 2),
                ("snapshots", snaps),
                ("L + 1", l1),
                ("D", dims.d),
                ("8", 8),
            ])?,
        ),
        (
            "limit covariances",
            product(&[
                ("4", 4),
                ("steps", steps),
                ("steps", steps),
                ("num_s + 1", s1),
                ("8", 8),
            ])?,
        ),
        (
            "limit trajectories",
            product(&[
                ("2", 2),
                ("num_s + 1", s1),
                ("D", dims.d),
                ("steps", steps),
                ("8", 8),
            ])?,
        ),
    ])
}

/// Trains one network of the `chizat-python` family (chizat-julia included; one input;
/// linear blocks against the exact limit, any other activation against the Monte-Carlo
/// one), and writes
/// into `out` the coordinate plots of docs/papers.md §2.5, E3, as PNG and SVG:
/// `coord_trajectory_h`, `coord_trajectory_b` (the first `n_h` coordinates of `h_l` and the
/// first `n_b` of `D b_l` against depth `l/L` at `traj_step`, each beside its coupled limit
/// trajectory, dashed), `coord_histogram_h`, `coord_histogram_b` (the coordinates at depths
/// `l ∈ {0, L}` and `hist_steps` against `N(0, Γ_kk(l/L))`), and `coords.json`.
/// `D·b` comes from a backward pass of the network at each step ([`backward_states`]).
pub fn coordinates(spec: &CoordsSpec, out: &Path) -> crate::Result<CoordsSummary> {
    let t0 = std::time::Instant::now();
    for (f, v) in [("L", spec.l), ("M", spec.m), ("D", spec.d)] {
        if v == 0 {
            return Err(invalid(f, 0, "must be positive").into());
        }
    }
    if spec.x.is_empty() || spec.y.is_empty() {
        return Err(invalid("x/y", "[]", "must not be empty").into());
    }
    let mut snaps: Vec<usize> = spec.hist_steps.clone();
    snaps.push(spec.traj_step);
    snaps.sort_unstable();
    snaps.dedup();
    let last = *snaps.last().expect("one step at least");
    let steps = spec.steps.max(last.saturating_add(1));
    let dims = Dims {
        l: spec.l,
        m: spec.m,
        d: spec.d,
        din: spec.x.len(),
        dout: spec.y.len(),
        n: 1,
    };
    let linear = spec.activation == Activation::Linear;
    let num_s = spec.solver.num_s.unwrap_or(if linear {
        100
    } else {
        crate::limit::nonlinear::DEFAULT_NUM_S
    });
    let mc_bytes = if linear {
        0
    } else {
        crate::limit::nonlinear::nonlinear_bytes(
            steps,
            1,
            dims.din,
            dims.dout,
            num_s,
            &spec.mc,
            rayon::current_num_threads(),
        )
        .ok_or_else(|| invalid("samples", spec.mc.samples, "the limit's size overflows"))?
    };
    crate::memory::check(
        crate::memory::sum(&[
            (
                "run and limit",
                coords_bytes(&dims, steps, snaps.len(), num_s)?,
            ),
            ("Monte-Carlo limit", mc_bytes),
        ])?,
        &format!(
            "coords with 'L' = {}, 'M' = {}, 'D' = {} for {steps} steps",
            spec.l, spec.m, spec.d
        ),
    )?;
    let mut param = Parametrization::preset(&spec.preset)
        .map_err(|e| invalid("preset", &spec.preset, e.to_string()))?;
    param.alpha = spec.alpha;
    let data = Data {
        din: dims.din,
        dout: dims.dout,
        n: 1,
        x: spec.x.clone(),
        y: spec.y.clone(),
    };
    let act = spec.activation;
    let settings = SolverSettings {
        num_s: Some(num_s),
        ..spec.solver
    };
    let lp = frame_params(&param, (dims.din, dims.dout, 1), steps, spec.eta, settings)?;
    let lim = if linear {
        LimitReference::solve(&data, &lp)?
    } else {
        LimitReference::solve_nonlinear(&data, &lp, act, &spec.mc)?
    };
    let r = param.resolve(&dims);
    let mut w = Weights::<f64>::draw(&dims, &r, spec.embed_seed, spec.seed, Par::Rayon);
    let traj = lim.trajectories(&w.we, &w.wu)?;
    let (l_n, d) = (dims.l, dims.d);
    let b_scale = d as f64 / (2.0 * r.loss);
    // Per snapshot step: h and D b at every layer, (L+1) x D.
    let mut snap_h = Vec::new();
    let mut snap_b = Vec::new();
    let mut f_at = Vec::new();
    let mut done = 0;
    let mut ws = Workspace::new(&w, 1);
    for &k in &snaps {
        if k > done {
            let opts = TrainOptions {
                steps: k - done,
                eta: spec.eta,
                activation: act,
                ..TrainOptions::default()
            };
            train::train(&mut w, &data, &r, &opts, Par::Rayon, &mut |_, _| {})?;
            done = k;
        }
        train::forward(&mut w, &data, &r, act, &mut ws, Par::Rayon, k)?;
        let mut h = vec![0.0; (l_n + 1) * d];
        for l in 0..=l_n {
            h[l * d..(l + 1) * d].copy_from_slice(ws.hidden(l, 1, d));
        }
        let mut b = backward_states(&w, &data, &r, act, &ws);
        b.iter_mut().for_each(|v| *v *= b_scale);
        snap_h.push(h);
        snap_b.push(b);
        f_at.push(ws.f.clone());
    }
    let si = |k: usize| snaps.iter().position(|&s| s == k).expect("snapshot");
    let depth = |l: usize| l as f64 / l_n as f64;
    let lim_h = |r_: usize, k: usize, l: usize| lim.interpolate(depth(l), |i| traj.h(r_, i, k));
    let lim_b = |r_: usize, k: usize, l: usize| lim.interpolate(depth(l), |i| traj.b(r_, i, k));
    let gam = |g: &DepthSeries, k: usize, l: usize| lim.interpolate(depth(l), |i| g.get(i, k, k));
    let mut stats = Vec::new();
    for (j, &k) in snaps.iter().enumerate() {
        for l in [0, l_n] {
            let (h, b) = (
                &snap_h[j][l * d..(l + 1) * d],
                &snap_b[j][l * d..(l + 1) * d],
            );
            let ms = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>() / d as f64;
            stats.push(CoordStat {
                step: k,
                layer: l,
                mean_sq_h: ms(h),
                gamma_h: gam(lim.gamma_h(), k, l),
                mean_sq_b: ms(b),
                gamma_b: gam(lim.gamma_b(), k, l),
                mad_h: (0..d)
                    .map(|r_| (h[r_] - lim_h(r_, k, l)).abs())
                    .sum::<f64>()
                    / d as f64,
                mad_b: (0..d)
                    .map(|r_| (b[r_] - lim_b(r_, k, l)).abs())
                    .sum::<f64>()
                    / d as f64,
            });
        }
    }
    let kt = spec.traj_step;
    let jt = si(kt);
    let mad_over_depth = |snap: &[f64], f: &dyn Fn(usize, usize) -> f64| {
        (0..=l_n)
            .map(|l| {
                (0..d)
                    .map(|r_| (snap[l * d + r_] - f(r_, l)).abs())
                    .sum::<f64>()
                    / d as f64
            })
            .fold(0.0f64, f64::max)
    };
    let traj_mad_h = mad_over_depth(&snap_h[jt], &|r_, l| lim_h(r_, kt, l));
    let traj_mad_b = mad_over_depth(&snap_b[jt], &|r_, l| lim_b(r_, kt, l));
    // Figures.
    let shape = format!("L={}, M={}, D={}", spec.l, spec.m, spec.d);
    let s_grid: Vec<f64> = lim.grid().points().to_vec();
    let depths: Vec<f64> = (0..=l_n).map(depth).collect();
    let mut files = Vec::new();
    for (what, snap, nc, is_h) in [
        ("h", &snap_h[jt], spec.n_h, true),
        ("D b", &snap_b[jt], spec.n_b, false),
    ] {
        let mut fig = Figure::new(
            format!("{what} coordinates at k={kt} ({shape}); dashed: limit"),
            "depth s = l/L",
            what,
            plot::Scale::Linear,
            plot::Scale::Linear,
        );
        for r_ in 0..nc.min(d) {
            let y: Vec<f64> = (0..=l_n).map(|l| snap[l * d + r_]).collect();
            let yl: Vec<f64> = (0..s_grid.len())
                .map(|i| {
                    if is_h {
                        traj.h(r_, i, kt)
                    } else {
                        traj.b(r_, i, kt)
                    }
                })
                .collect();
            let label = if r_ == 0 {
                "finite network (solid)".to_string()
            } else {
                String::new()
            };
            fig.series
                .push(Series::new(label, depths.clone(), y, Style::Line).with_color(r_));
            let label = if r_ == 0 { "limit (dashed)" } else { "" };
            fig.series
                .push(Series::new(label, s_grid.clone(), yl, Style::Dashed).with_color(r_));
        }
        let stem = out.join(if is_h {
            "coord_trajectory_h"
        } else {
            "coord_trajectory_b"
        });
        files.extend(plot::save(&fig, &stem)?);
    }
    for (what, snaps_v, gseries, is_h) in [
        ("h", &snap_h, lim.gamma_h(), true),
        ("D b", &snap_b, lim.gamma_b(), false),
    ] {
        let mut panels = Vec::new();
        for l in [0, l_n] {
            for &k in &spec.hist_steps {
                let j = si(k);
                let v = &snaps_v[j][l * d..(l + 1) * d];
                let var = gam(gseries, k, l);
                panels.push(histogram_panel(
                    format!("{what}, k={k}, l={l} ({shape})"),
                    what,
                    v,
                    var,
                ));
            }
        }
        let stem = out.join(if is_h {
            "coord_histogram_h"
        } else {
            "coord_histogram_b"
        });
        files.extend(plot::save_panels(
            &panels,
            spec.hist_steps.len().max(1),
            &stem,
        )?);
    }
    let summary = CoordsSummary {
        spec: spec.clone(),
        stats,
        traj_mad_h,
        traj_mad_b,
        f: f_at[jt].clone(),
        f_limit: lim.output(kt).to_vec(),
        seconds: t0.elapsed().as_secs_f64(),
        files: files.clone(),
    };
    let json = out.join("coords.json");
    io::atomic_write(
        &json,
        serde_json::to_string_pretty(&summary)
            .expect("summary serialises")
            .as_bytes(),
    )?;
    let mut summary = summary;
    summary.files.push(json);
    Ok(summary)
}

/// A histogram of `v` as bin densities (a line through the bin centres) beside the
/// density of `N(0, var)` (dashed).
fn histogram_panel(title: String, what: &str, v: &[f64], var: f64) -> Figure {
    let n = v.len();
    let sd = var.max(0.0).sqrt();
    let emp = (v.iter().map(|x| x * x).sum::<f64>() / n.max(1) as f64).sqrt();
    let half = 4.0 * sd.max(emp).max(1e-12);
    let bins = ((n as f64).sqrt().round() as usize).clamp(8, 40);
    let width = 2.0 * half / bins as f64;
    let mut counts = vec![0usize; bins];
    for &x in v {
        let b = ((x + half) / width).floor();
        if b >= 0.0 && (b as usize) < bins {
            counts[b as usize] += 1;
        }
    }
    let centres: Vec<f64> = (0..bins)
        .map(|b| -half + (b as f64 + 0.5) * width)
        .collect();
    let dens: Vec<f64> = counts
        .iter()
        .map(|&c| c as f64 / (n as f64 * width))
        .collect();
    let xs: Vec<f64> = (0..=200).map(|i| -half + i as f64 * half / 100.0).collect();
    let gauss: Vec<f64> = xs
        .iter()
        .map(|&x| {
            if sd > 0.0 {
                (-0.5 * x * x / var).exp() / (sd * (2.0 * std::f64::consts::PI).sqrt())
            } else {
                f64::NAN
            }
        })
        .collect();
    let mut fig = Figure::new(
        title,
        what,
        "density",
        plot::Scale::Linear,
        plot::Scale::Linear,
    );
    fig.series.push(
        Series::new(
            format!("finite ({n} coordinates)"),
            centres,
            dens,
            Style::LinePoints,
        )
        .with_color(0),
    );
    fig.series
        .push(Series::new(format!("limit N(0, {var:.3})"), xs, gauss, Style::Dashed).with_color(3));
    fig
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dims(n: usize) -> Dims {
        Dims {
            l: 4,
            m: 6,
            d: 7,
            din: 3,
            dout: 2,
            n,
        }
    }

    /// `backward_states` gives ∂loss/∂h_0: with W_E trained, the engine's W_E update is
    /// `−η lr_E m_E Σ_n g_0[n] x_n`; compare, for a nonlinear activation and N > 1.
    #[test]
    fn backward_states_match_the_fused_step() {
        let dims = dims(3);
        let p = Parametrization::preset("standard").unwrap();
        let r = p.resolve(&dims);
        let data = Data::synthetic(dims.din, dims.dout, dims.n, 5);
        for act in [Activation::Tanh, Activation::Linear] {
            let mut w = Weights::<f64>::draw(&dims, &r, 1, 2, Par::Seq);
            let w0 = w.clone();
            let mut ws = Workspace::new(&w, dims.n);
            train::forward(&mut w, &data, &r, act, &mut ws, Par::Seq, 0).unwrap();
            let g = backward_states(&w, &data, &r, act, &ws);
            let eta = 1e-3;
            train::backward_update(&mut w, &data, &r, act, eta, &mut ws, Par::Seq, 0).unwrap();
            for dd in 0..dims.d {
                for i in 0..dims.din {
                    let want: f64 = (0..dims.n)
                        .map(|s| g[dd * dims.n + s] * data.x[i * dims.n + s])
                        .sum::<f64>()
                        * r.we.mult;
                    let got =
                        (w0.we[dd * dims.din + i] - w.we[dd * dims.din + i]) / (eta * r.we.lr);
                    assert!(
                        (want - got).abs() < 1e-9 * want.abs().max(1.0),
                        "{want} vs {got}"
                    );
                }
            }
            // The top layer is m_W W_U dloss/df.
            let last = &g[dims.l * dims.d * dims.n..];
            assert!(last.iter().any(|v| *v != 0.0));
        }
    }
}
