//! The row fillers alone: `cargo bench --bench rng`. Fills rows of D normals (env `D`,
//! default 1000) into a buffer that stays in cache, single-threaded, f64 and f32, and
//! prints the best of `REPS` rounds (default 30) in ns per normal. Unlike the `draw` of
//! `benches/task.rs`, no fresh allocation: its first-touch page faults are not counted.
//! `RESLIM_NO_AVX512=1` times the AVX2 build of the portable filler, and with
//! `RESLIM_NO_AVX2=1` too the baseline build.

use reslim::rng::{Stream, Tensor};
use std::time::Instant;

fn env(k: &str, d: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn main() {
    let (d, reps) = (env("D", 1000), env("REPS", 30));
    let rows = (2_000_000 / d.max(1)).max(1);
    let s = Stream::new(1, Tensor::U, 0);
    let mut b64 = vec![0.0f64; d];
    let mut b32 = vec![0.0f32; d];
    let (mut t64, mut t32) = (f64::INFINITY, f64::INFINITY);
    let mut check = 0.0;
    for rep in 0..reps {
        let t = Instant::now();
        for r in 0..rows {
            s.fill_normal_row((rep * rows + r) as u64, 0, 1.0, &mut b64);
            check += b64[r % d];
        }
        t64 = t64.min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        for r in 0..rows {
            s.fill_normal_row_f32((rep * rows + r) as u64, 0, 1.0, &mut b32);
            check += b32[r % d] as f64;
        }
        t32 = t32.min(t.elapsed().as_secs_f64());
    }
    let per = 1e9 / (rows * d) as f64;
    println!(
        "fill_normal_row D={d} ({:?}): f64 {:.2} ns/normal, f32 {:.2} ns/normal (best of {reps}; check {check:.3})",
        reslim::cpu::isa(),
        t64 * per,
        t32 * per
    );
}
