//! Kernel micro-benchmarks: `cargo bench --bench step [-- --seq]`. Prints seconds per
//! pass (the best of `REPS`) and GB/s for each kernel over an L x M x D stack of weights
//! on huge pages, as the step has them (one call per layer), beside a plain streaming sum
//! (read) and scaling (read + write) on the same threads as the machine's baselines.
//! Shapes from the environment: `L=50 M=500 D=500 N=10` by default.
//!
//! Everything runs on a worker of the rayon pool ([`Par::on_workers`]), as the step's
//! passes do. Called from the main thread, each parallel call would inject its job and
//! put the caller to sleep until it is done: two wake-ups per call, which cost the
//! kernels 20-50% of their `--seq` speed with one rayon thread on the 2-core Intel Xeon
//! (L = 50, M = D = 500; on par with `--seq` from a worker).

use rayon::prelude::*;
use reslim::cpu::Par;
use reslim::kernels;
use reslim::rng::{Stream, Tensor};
use std::time::Instant;

fn main() {
    Par::Rayon.on_workers(bench);
}

fn bench() {
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (l, m, d, n) = (env("L", 50), env("M", 500), env("D", 500), env("N", 10));
    let args: Vec<String> = std::env::args().collect();
    let par = if args.iter().any(|a| a == "--seq") {
        Par::Seq
    } else {
        Par::Rayon
    };
    let mut w = reslim::cpu::Aligned::from_slice(&Stream::new(1, Tensor::U, 0).normal_matrix(
        l * m,
        d,
        0.01,
    ));
    let vecs = Stream::new(1, Tensor::V, 0).normal_matrix(n, d, 1.0);
    let coef = Stream::new(2, Tensor::V, 0).normal_matrix(m, n, 1e-6);
    let mut out = vec![0.0; m * n];
    let mut tgt = vec![0.0; n * d];
    let bytes_r = (l * m * d * 8) as f64;
    let time = |name: &str, rw: f64, f: &mut dyn FnMut()| {
        f();
        let mut s = f64::INFINITY;
        for _ in 0..env("REPS", 5) {
            let t = Instant::now();
            f();
            s = s.min(t.elapsed().as_secs_f64());
        }
        println!("{name:<24} {s:.5} s  {:.1} GB/s", rw * bytes_r / s / 1e9);
    };
    let chunk = 1 << 13;
    time("plain sum (read)", 1.0, &mut || {
        let sum = |c: &[f64]| {
            let mut acc = [0.0f64; 16];
            for c in c.chunks_exact(16) {
                for (a, x) in acc.iter_mut().zip(c) {
                    *a += x;
                }
            }
            acc.iter().sum::<f64>()
        };
        let s: f64 = match par {
            Par::Seq => sum(&w),
            Par::Rayon => w.par_chunks(chunk).map(sum).sum(),
        };
        std::hint::black_box(s);
    });
    time("plain scale (read+write)", 2.0, &mut || {
        let scale = |c: &mut [f64]| c.iter_mut().for_each(|x| *x *= 0.999_999_9);
        match par {
            Par::Seq => scale(&mut w),
            Par::Rayon => w.par_chunks_mut(chunk).for_each(scale),
        }
    });
    time("dot (read)", 1.0, &mut || {
        for layer in 0..l {
            kernels::dot_rows(
                &mut w[layer * m * d..],
                m,
                d,
                &vecs,
                n,
                None,
                1.0,
                &mut out,
                par,
            );
        }
    });
    time("dot+update (read+write)", 2.0, &mut || {
        for layer in 0..l {
            kernels::dot_rows(
                &mut w[layer * m * d..],
                m,
                d,
                &vecs,
                n,
                Some(&coef),
                1.0,
                &mut out,
                par,
            );
        }
    });
    time("axpy (read)", 1.0, &mut || {
        for layer in 0..l {
            kernels::axpy_rows(
                &mut w[layer * m * d..],
                m,
                d,
                &coef,
                None,
                &vecs,
                n,
                &mut tgt,
                par,
            );
        }
    });
    time("axpy+update (read+write)", 2.0, &mut || {
        for layer in 0..l {
            kernels::axpy_rows(
                &mut w[layer * m * d..],
                m,
                d,
                &coef,
                Some(&coef),
                &vecs,
                n,
                &mut tgt,
                par,
            );
        }
    });
}
