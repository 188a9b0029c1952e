//! Agreement with the authors' two GD conventions on fixed inputs
//! (`../shared/reference/`, see its README): losses, outputs and h_L at every step to
//! 1e-10 relative.

use reslim::cpu::Par;
use reslim::io::read_npy;
use reslim::run;
use reslim::spec::TrainSpec;
use std::path::PathBuf;

fn reference_dir(case: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/reference")
        .join(case);
    assert!(
        dir.is_dir(),
        "reference data missing: {} (shared/ must sit beside the repo)",
        dir.display()
    );
    dir
}

/// Max over entries of |a - b| / max(|b|, 1e-3 max|b|): relative error with a floor for
/// entries that are tiny compared with the array.
fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / y.abs().max(1e-3 * scale))
        .fold(0.0, f64::max)
}

fn check(case: &str, preset: &str, activation: &str, lr: f64) {
    let dir = reference_dir(case);
    let spec = TrainSpec {
        preset: Some(preset.into()),
        activation: Some(activation.into()),
        init_npy: Some(dir.join("inputs")),
        steps: Some(15),
        lr: Some(lr),
        ..Default::default()
    };
    let cfg = spec.check().unwrap();
    let out = run::execute(&cfg, Par::Seq, &Default::default(), &mut |_, _| {}).unwrap();
    let h = &out.history;
    for (name, got) in [
        ("losses", &h.losses),
        ("outputs", &h.outputs),
        ("hL", &h.hidden),
    ] {
        let want = read_npy(&dir.join("expected").join(format!("{name}.npy"))).unwrap();
        assert_eq!(want.data.len(), got.len(), "{case}/{name}: length");
        let e = rel_err(got, &want.data);
        println!("{case}/{name}: max relative error {e:.3e}");
        assert!(e < 1e-10, "{case}/{name}: max relative error {e:e}");
    }
}

#[test]
fn julia_convention_reproduces_reference() {
    check("chizat_julia_small", "chizat-julia", "tanh", 1.0);
}

#[test]
fn python_convention_reproduces_reference() {
    check("chizat_python_small", "chizat-python", "linear", 0.1);
}
