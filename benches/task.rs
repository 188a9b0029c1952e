//! Sweep-task breakdown: `cargo bench --bench task`. Times drawing the weights of one
//! sweep task and its K GD steps for two variants (coupled and uncoupled), single-threaded
//! as the sweep runs them: with the dense step (one after the other) and with the low-rank
//! step (together). Shape and precision from the environment:
//! `L=50 M=1000 D=1000 N=10 K=15 DTYPE=f32`; `DENSE=0` skips the dense runs, `LOWRANK=0` the low-rank ones;
//! `LAYOUT=d|m` forces the dense step's rows of D or of M (default: automatic).

use reslim::cpu::Par;
use reslim::factored::{self, Variant};
use reslim::model::{Activation, Data, Real, Weights};
use reslim::param::{Dims, Parametrization};
use reslim::train::{self, Layout, TrainOptions};
use std::time::Instant;

fn env(k: &str, d: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn run<T: Real>(dims: Dims, k: usize) {
    let data = Data::synthetic(dims.din, dims.dout, dims.n, 1);
    let r = Parametrization::preset("chizat-julia")
        .expect("preset")
        .resolve(&dims);
    let t = Instant::now();
    let w = Weights::<T>::draw(&dims, &r, 1, 2, Par::Seq);
    let draw = t.elapsed().as_secs_f64();
    let opts = TrainOptions {
        steps: k,
        eta: 1.0,
        activation: Activation::Tanh,
        record_hidden: true,
        hidden_steps: Some(vec![k - 1]),
        layer_stats: false,
        layer_steps: Vec::new(),
        layout: match std::env::var("LAYOUT").as_deref() {
            Ok("d") => Layout::RowsD,
            Ok("m") => Layout::RowsM,
            _ => Layout::Auto,
        },
        max_loss_growth: reslim::train::DEFAULT_MAX_LOSS_GROWTH,
        cancel: Default::default(),
    };
    let dense = if env("DENSE", 1) == 1 {
        let t = Instant::now();
        for _ in 0..2 {
            let mut wc = w.clone();
            train::train(&mut wc, &data, &r, &opts, Par::Seq, &mut |_, _| {}).expect("trains");
        }
        t.elapsed().as_secs_f64()
    } else {
        f64::NAN
    };
    let mut vars: Vec<Variant<T>> = (0..2)
        .map(|_| Variant {
            we: w.we.clone(),
            wu: w.wu.clone(),
            record_hidden: true,
        })
        .collect();
    let t = Instant::now();
    let lowrank = if env("LOWRANK", 1) == 1 {
        factored::train_shared(&dims, &w.ut, &w.vt, &mut vars, &data, &r, &opts, Par::Seq)
            .expect("trains");
        t.elapsed().as_secs_f64()
    } else {
        f64::NAN
    };
    let normals = 2 * dims.l * dims.m * dims.d;
    println!(
        "L={} M={} D={} N={} K={k} {}: draw {draw:.3} s ({:.2} ns/normal); two variants: dense {dense:.3} s, low-rank {lowrank:.3} s",
        dims.l,
        dims.m,
        dims.d,
        dims.n,
        std::any::type_name::<T>(),
        draw / normals as f64 * 1e9,
    );
}

fn main() {
    let dims = Dims {
        l: env("L", 50),
        m: env("M", 1000),
        d: env("D", 1000),
        din: 5,
        dout: 5,
        n: env("N", 10),
    };
    let k = env("K", 15);
    match std::env::var("DTYPE").as_deref() {
        Ok("f64") => run::<f64>(dims, k),
        _ => run::<f32>(dims, k),
    }
}
