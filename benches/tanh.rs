//! The activation pass for tanh alone: `cargo bench --bench tanh`. For a slice of `N`
//! pre-activations (env, default 20000; standard normals times 1.5) computes
//! `s = tanh(p)`, `ds = 1 - s*s`, `ca = mv * s`, with scalar libm `tanh` per element
//! (what `Activation::f_d1` does) and with `Real::tanh_d1_scaled` on each path this CPU
//! has (`reslim::vtanh::Path`), f64 and f32, single-threaded, in cache, and prints the
//! best of `REPS` rounds (default 200) in ns per element.

use reslim::model::Real;
use reslim::rng::{Stream, Tensor};
use reslim::vtanh::Path;
use std::hint::black_box;
use std::time::Instant;

fn env(k: &str, d: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn best_of(reps: usize, n: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    best * 1e9 / n as f64
}

fn run<T: Real>(p64: &[f64], reps: usize) {
    let n = p64.len();
    let p: Vec<T> = p64.iter().map(|&v| T::of(v)).collect();
    let (mut s, mut ds, mut ca) = (vec![T::zero(); n], vec![T::zero(); n], vec![T::zero(); n]);
    let mv = T::of(0.3);
    let libm = best_of(reps, n, || {
        for i in 0..n {
            let t = black_box(p[i]).tanh();
            s[i] = t;
            ds[i] = T::one() - t * t;
            ca[i] = mv * t;
        }
        black_box((&s, &ds, &ca));
    });
    let mut line = format!("{}: libm {libm:.3} ns/elem", T::NAME);
    for path in [Path::Avx512, Path::Avx2Fma, Path::Portable] {
        if !path.available() {
            continue;
        }
        let t = best_of(reps, n, || {
            T::tanh_d1_scaled_on(path, black_box(&p), &mut s, &mut ds, &mut ca, mv);
            black_box((&s, &ds, &ca));
        });
        line += &format!(", {path:?} {t:.3} ({:.1}x)", libm / t);
    }
    println!("{line}  [best: {:?}]", Path::best());
}

fn main() {
    let (n, reps) = (env("N", 20_000), env("REPS", 200));
    let p = Stream::new(1, Tensor::U, 0).normal_matrix(1, n, 1.5);
    println!("tanh activation pass, N = {n}, best of {reps}:");
    run::<f64>(&p, reps);
    run::<f32>(&p, reps);
}
