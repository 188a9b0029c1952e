//! Times the mean-field GD step (derivatives, update with the log-determinants, KL
//! estimate) and the measurements (K0, G1 + G2, extreme eigenvalues) at one n:
//!   cargo run --release --example mf_profile -- experiments/spirals.toml 3200 [STEPS]
use reslim::meanfield::{self, Derivatives, FlowKl, Net, Workspace, gram};
use std::path::Path;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let path = Path::new(&args[1]);
    let spec = meanfield::ExperimentSpec::from_file(path).unwrap();
    let cfg = spec.check(path.parent().unwrap_or(Path::new("."))).unwrap();
    let n: usize = args[2].parse().unwrap();
    let steps: usize = args.get(3).map(|s| s.parse().unwrap()).unwrap_or(5);
    let (train, _test) = cfg.datasets(n, 0).unwrap();
    let arch = cfg.arch(n);
    let eta = cfg.lr / (arch.beta * arch.beta);
    let mut net = Net::init(arch, cfg.init, 7);
    let mut ws = Workspace::new(&arch);
    let mut der = Derivatives::new(&arch);
    let mut kl = FlowKl::new(&net);
    let (mut td, mut ta, mut tk) = (0.0, 0.0, 0.0);
    for _ in 0..steps {
        let t = Instant::now();
        net.derivatives(&train.x, &train.y, &mut ws, &mut der);
        td += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let _ = kl.estimate(&net);
        tk += t.elapsed().as_secs_f64();
        let t = Instant::now();
        net.apply(&der, eta, Some(&mut kl));
        ta += t.elapsed().as_secs_f64();
    }
    let s = steps as f64;
    println!(
        "n={n}: per step derivatives {:.4} s, apply+logdet {:.4} s, kl estimate {:.4} s, loss {:.4}",
        td / s,
        ta / s,
        tk / s,
        der.loss
    );
    let t = Instant::now();
    let k0 = meanfield::InitKernel::shared(cfg.activation).matrix(&train.x, train.d);
    let tk0 = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let sp0 = gram::extreme_eigenvalues(&k0, n);
    let te0 = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let g = gram::grams(&net, &train.x);
    let tg = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let sp2 = gram::extreme_eigenvalues(&g.g2, n);
    let tot = g.total();
    let sp = gram::extreme_eigenvalues(&tot, n);
    let te = t.elapsed().as_secs_f64();
    println!(
        "K0 {tk0:.2} s, eig(K0) {te0:.2} s ({:?}); G1+G2 {tg:.2} s; eig(G2), eig(G) {te:.2} s; lambda_max(G)/(n beta^2) {:.3}, min {:e} {:?} {:?}",
        sp0,
        sp.max / (n as f64 * arch.beta * arch.beta),
        sp.min,
        sp2.method,
        sp.resolved
    );
}
