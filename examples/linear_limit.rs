//! Solves the linear large-D limit on the authors' input (docs/papers.md §2.5, E2) with the
//! default parameters and prints the outputs, the losses and the solve time.
//!
//! `cargo run --release --example linear_limit [repeats]`

use reslim::limit::{LinearLimitParams, solve_linear_limit};
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let repeats: usize = std::env::args().nth(1).map_or(Ok(20), |s| s.parse())?;
    let x = [0.4800016366501795, -0.13361224046088563, 0.6258963157042639];
    let y = [0.627895235604804, 0.2659797617857747, -0.05539644339098687];
    let params = LinearLimitParams::default();
    let mut times = Vec::with_capacity(repeats);
    let mut lim = solve_linear_limit(&x, &y, &params)?;
    for _ in 0..repeats {
        let t0 = Instant::now();
        lim = solve_linear_limit(&x, &y, &params)?;
        times.push(t0.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    for (k, (f, l)) in lim.f.iter().zip(&lim.loss).enumerate() {
        println!("k = {k:2}  f = {f:?}  loss = {l:.6e}");
    }
    println!("{:?}", lim.report);
    println!(
        "K = {} solve time over {repeats} runs: min {:.3} ms, median {:.3} ms",
        params.k_steps,
        1e3 * times[0],
        1e3 * times[times.len() / 2]
    );
    Ok(())
}
