//! Sweep-task breakdown: `cargo bench --bench task`. Times drawing the weights of one
//! sweep task and its K GD steps, single-threaded as the sweep runs them. Shape and
//! precision from the environment: `L=50 M=1000 D=1000 N=10 K=15 DTYPE=f32`.

use reslim::kernels::Par;
use reslim::model::{Activation, Data, Real, Weights};
use reslim::param::{Dims, Parametrization};
use reslim::train::{self, TrainOptions};
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
    let mut w = Weights::<T>::draw(&dims, &r, 1, 2, false);
    let draw = t.elapsed().as_secs_f64();
    let opts = TrainOptions {
        steps: k,
        eta: 1.0,
        activation: Activation::Tanh,
        record_hidden: true,
        hidden_steps: Some(vec![k - 1]),
        layer_stats: false,
        layer_steps: Vec::new(),
    };
    let t = Instant::now();
    train::train(&mut w, &data, &r, &opts, Par::Seq, &mut |_, _| {}).expect("trains");
    let steps = t.elapsed().as_secs_f64();
    let normals = 2 * dims.l * dims.m * dims.d;
    println!(
        "L={} M={} D={} N={} K={k} {}: draw {draw:.3} s ({:.2} ns/normal), train {steps:.3} s ({:.4} s/step)",
        dims.l,
        dims.m,
        dims.d,
        dims.n,
        std::any::type_name::<T>(),
        draw / normals as f64 * 1e9,
        steps / k as f64
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
