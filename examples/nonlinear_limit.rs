//! Solves the nonlinear (tanh) large-D limit in the E1 setting of `docs/nonlinear-limit.md`
//! §3.3 (K = 15, N = 10, d_in = d_out = 5, the Julia conventions) and prints the solve
//! time and the Monte-Carlo standard errors of the outputs.
//!
//! `cargo run --release --example nonlinear_limit [samples] [replicas] [num_s]`

use reslim::limit::{LinearLimitParams, MonteCarlo, solve_nonlinear_limit};
use reslim::model::{Activation, Data};
use reslim::vslimit::columns;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let arg = |i: usize, d: usize| -> Result<usize, std::num::ParseIntError> {
        std::env::args().nth(i).map_or(Ok(d), |s| s.parse())
    };
    let (samples, replicas, num_s) = (arg(1, 2000)?, arg(2, 8)?, arg(3, 101)?);
    let (din, dout, n) = (5, 5, 10);
    let data = Data::synthetic(din, dout, n, 1);
    let x = columns(&data.x, din, n);
    let y = columns(&data.y, dout, n);
    // Julia (E1): a = 1, η = 1, c = 1/(N d_in), σ_E² = 1/d_in, σ_U² = d_out; in the
    // per-sample convention of the solver (loss (1/N) Σ ½|f − y|²) the rates carry the
    // loss constant: η_u = η_v = η α² · 2cN with the Julia loss c = 1/(2 N d_in), i.e. 1/d_in.
    let params = LinearLimitParams {
        k_steps: 15,
        alpha: 1.0,
        eta_u: 1.0 / din as f64,
        eta_v: 1.0 / din as f64,
        sigma_we: (1.0 / din as f64).sqrt(),
        sigma_wu: (dout as f64).sqrt(),
        num_s,
        ..LinearLimitParams::default()
    };
    let mc = MonteCarlo {
        samples,
        replicas,
        seed: 0,
    };
    let lim = solve_nonlinear_limit(&x, &y, &params, Activation::Tanh, &mc)?;
    for (k, l) in lim.loss.iter().enumerate() {
        println!("k = {k:2}  loss = {l:.6e} ± {:.1e}", lim.loss_se[k]);
    }
    println!("f_14[sample 0] = {:?}", lim.f[14][0]);
    println!("{:?}", lim.report);
    println!(
        "num_s x S x R = {num_s} x {samples} x {replicas}: {:.2} s; standard error of f: max {:.2e}, RMS at k = 14 {:.2e}",
        lim.report.seconds, lim.report.f_se_max, lim.report.f_last_se_rms
    );
    Ok(())
}
