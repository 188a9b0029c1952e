//! Measurements of the GD step against the machine's roofline, all taken in one run.
//!
//! - Memory bandwidth: a STREAM-style triad `a = b + s c` over arrays much larger than the
//!   caches, on the current rayon pool; bytes counted as STREAM does (3 arrays x 8 bytes
//!   per element; write-allocate traffic is not counted). Best of several repetitions.
//! - Compute peak: independent fused multiply-add chains held in registers, with the
//!   kernels' vector width and precision, on every thread.
//! - The step: seconds per GD step (median of the timed steps after one warm-up) for
//!   the given shapes. Bytes moved per step: each of U and V read once forward and read
//!   and written once backward, `6 L M D` values (the activations, O(L N (M + D)),
//!   are counted too). FLOPs: `12 N L M D` (three multiply-adds per weight and sample)
//!   plus the activations' small terms.
//! - Roofline time = max(bytes / bandwidth, flops / peak); fraction = roofline / measured.

use crate::kernels::{self, Par};
use crate::model::{Activation, Data, Real, Weights};
use crate::param::{Dims, Parametrization};
use crate::train::{self, Workspace};
use rayon::prelude::*;
use serde::Serialize;
use std::time::Instant;

/// The machine's measured limits.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Machine {
    pub threads: usize,
    pub isa: &'static str,
    /// Triad bandwidth, bytes per second.
    pub bandwidth: f64,
    /// Peak multiply-add throughput in the step's precision, FLOP per second (2 per
    /// multiply-add).
    pub peak_flops: f64,
}

/// STREAM triad bandwidth in bytes/s over `len` f64 per array, best of `reps`.
pub fn triad_bandwidth(len: usize, reps: usize, par: Par) -> f64 {
    // On huge pages where the weights get them too (`model::huge_pages`), so that the
    // roofline's bandwidth is the one the step could reach.
    let fresh = |x: f64| {
        let mut v = vec![0.0f64; len];
        crate::model::huge_pages(&mut v);
        v.fill(x);
        v
    };
    let (b, c, mut a) = (fresh(1.0), fresh(2.0), fresh(0.0));
    let s = 3.0;
    let chunk = 1 << 16;
    let mut best = f64::INFINITY;
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        match par {
            Par::Seq => {
                for ((x, y), z) in a.iter_mut().zip(&b).zip(&c) {
                    *x = y + s * z;
                }
            }
            Par::Rayon => a
                .par_chunks_mut(chunk)
                .zip(b.par_chunks(chunk))
                .zip(c.par_chunks(chunk))
                .for_each(|((x, y), z)| {
                    for ((x, y), z) in x.iter_mut().zip(y).zip(z) {
                        *x = y + s * z;
                    }
                }),
        }
        best = best.min(t.elapsed().as_secs_f64());
        std::hint::black_box(&mut a);
    }
    (3 * 8 * len) as f64 / best
}

/// Fused multiply-add peak in FLOP/s (2 per FMA) on every thread of the pool, with the
/// kernels' own vector width: 12 independent register-resident chains per thread.
pub fn peak_flops<T: Real>(par: Par) -> f64 {
    let iters = 20_000_000;
    let threads = if par == Par::Rayon {
        rayon::current_num_threads()
    } else {
        1
    };
    let run = || {
        let (r, lanes) = T::fma_probe(iters);
        std::hint::black_box(r);
        lanes
    };
    let mut best = f64::INFINITY;
    let mut lanes = 1;
    for _ in 0..3 {
        let t = Instant::now();
        lanes = if threads > 1 {
            (0..threads)
                .into_par_iter()
                .map(|_| run())
                .max()
                .unwrap_or(1)
        } else {
            run()
        };
        best = best.min(t.elapsed().as_secs_f64());
    }
    (iters * 12 * lanes * 2) as f64 * threads as f64 / best
}

/// Measures the machine (bandwidth over `mib` MiB per array).
pub fn machine<T: Real>(par: Par, mib: usize) -> Machine {
    Machine {
        threads: if par == Par::Rayon {
            rayon::current_num_threads()
        } else {
            1
        },
        isa: match kernels::isa() {
            kernels::Isa::Avx512 => "avx512",
            kernels::Isa::Generic => "generic",
        },
        bandwidth: triad_bandwidth(mib * (1 << 20) / 8, 5, par),
        peak_flops: peak_flops::<T>(par),
    }
}

/// One shape's step timing against the roofline.
#[derive(Debug, Clone, Serialize)]
pub struct StepBench {
    pub dims: Dims,
    pub dtype: &'static str,
    pub sec_per_step: f64,
    pub bytes: f64,
    pub flops: f64,
    pub achieved_gb_s: f64,
    pub achieved_gflop_s: f64,
    pub roofline_s: f64,
    /// "memory" or "compute": which bound is the larger.
    pub bound: &'static str,
    pub fraction: f64,
}

/// Bytes moved and FLOPs of one GD step.
pub fn step_cost(dims: &Dims, elem: usize) -> (f64, f64) {
    let (l, m, d, n) = (dims.l as f64, dims.m as f64, dims.d as f64, dims.n as f64);
    let weights = 6.0 * l * m * d * elem as f64;
    let acts = (l * n * (2.0 * d + m) * 3.0) * elem as f64;
    let flops = 12.0 * n * l * m * d + 10.0 * l * m * n;
    (weights + acts, flops)
}

/// Times `steps` GD steps (after one warm-up) of the chizat-julia tanh network of shape
/// `dims`; returns the median seconds per step.
pub fn time_step<T: Real>(dims: &Dims, steps: usize, par: Par) -> f64 {
    let p = Parametrization::preset("chizat-julia").expect("preset exists");
    let r = p.resolve(dims);
    let data = Data::synthetic(dims.din, dims.dout, dims.n, 1);
    let mut w = Weights::<T>::draw(dims, &r, 1, 1, par == Par::Rayon);
    let mut ws = Workspace::new(&w, dims.n);
    let mut times = Vec::with_capacity(steps);
    for k in 0..=steps {
        let t = Instant::now();
        let ok =
            train::forward(&mut w, &data, &r, Activation::Tanh, &mut ws, par, k).and_then(|_| {
                train::backward_update(&mut w, &data, &r, Activation::Tanh, 1.0, &mut ws, par, k)
            });
        // The bench network is small-loss tanh; divergence would be a bug worth seeing.
        if let Err(e) = ok {
            eprintln!("bench: {e}");
            return f64::NAN;
        }
        if k > 0 {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Benchmarks one shape against the machine's roofline.
pub fn bench_shape<T: Real>(dims: &Dims, steps: usize, par: Par, mach: &Machine) -> StepBench {
    let sec = time_step::<T>(dims, steps, par);
    let (bytes, flops) = step_cost(dims, std::mem::size_of::<T>());
    let t_mem = bytes / mach.bandwidth;
    let t_cpu = flops / mach.peak_flops;
    let roof = t_mem.max(t_cpu);
    StepBench {
        dims: *dims,
        dtype: T::NAME,
        sec_per_step: sec,
        bytes,
        flops,
        achieved_gb_s: bytes / sec / 1e9,
        achieved_gflop_s: flops / sec / 1e9,
        roofline_s: roof,
        bound: if t_mem >= t_cpu { "memory" } else { "compute" },
        fraction: roof / sec,
    }
}
