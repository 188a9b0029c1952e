use super::*;

/// The paths this CPU can run (the portable one always).
fn paths() -> Vec<Path> {
    let v: Vec<Path> = [Path::Avx512, Path::Avx2Fma, Path::Portable]
        .into_iter()
        .filter(|p| p.available())
        .collect();
    if !v.contains(&Path::Avx512) {
        eprintln!("note: no AVX-512 here, only {v:?} tested");
    }
    v
}

fn eval<T: VTanh + Copy + Default>(path: Path, p: &[T], mv: T) -> (Vec<T>, Vec<T>, Vec<T>) {
    let n = p.len();
    let (mut s, mut ds, mut ca) = (
        vec![T::default(); n],
        vec![T::default(); n],
        vec![T::default(); n],
    );
    T::tanh_d1_scaled_on(path, p, &mut s, &mut ds, &mut ca, mv);
    (s, ds, ca)
}

/// Distance in ulp between two f64 of the same sign (u64::MAX if the signs differ).
fn ulps64(a: f64, b: f64) -> u64 {
    if a == b {
        0
    } else if a.is_sign_negative() != b.is_sign_negative() {
        u64::MAX
    } else {
        a.to_bits().abs_diff(b.to_bits())
    }
}

/// Double-double numbers (hi + lo, about 104 bits), for an f64 tanh reference more
/// accurate than libm's (glibc's tanh is itself up to 2 ulp off).
#[derive(Clone, Copy, Debug)]
struct Dd(f64, f64);

fn two_sum(a: f64, b: f64) -> Dd {
    let s = a + b;
    let bb = s - a;
    Dd(s, (a - (s - bb)) + (b - bb))
}

fn fast_two_sum(a: f64, b: f64) -> Dd {
    let s = a + b;
    Dd(s, b - (s - a))
}

fn dd_add(x: Dd, y: Dd) -> Dd {
    let s = two_sum(x.0, y.0);
    let t = two_sum(x.1, y.1);
    let u = fast_two_sum(s.0, s.1 + t.0);
    fast_two_sum(u.0, u.1 + t.1)
}

fn dd_mul(x: Dd, y: Dd) -> Dd {
    let p = x.0 * y.0;
    let e = x.0.mul_add(y.0, -p) + (x.0 * y.1 + x.1 * y.0);
    fast_two_sum(p, e)
}

fn dd_div(x: Dd, y: Dd) -> Dd {
    let q1 = x.0 / y.0;
    let r = dd_add(x, dd_mul(Dd(-q1, 0.0), y));
    let q2 = r.0 / y.0;
    let r = dd_add(r, dd_mul(Dd(-q2, 0.0), y));
    let q3 = r.0 / y.0;
    dd_add(fast_two_sum(q1, q2), Dd(q3, 0.0))
}

/// tanh(x) for 1e-8 <= |x| <= 20 to about 1e-22 relative: (E - 1) / (E + 1) with
/// E = exp(2|x|) = 2^k exp(r), exp(r) by 30 Taylor terms in double-double.
fn tanh_dd(x: f64) -> Dd {
    const LN2: Dd = Dd(std::f64::consts::LN_2, 2.319_046_813_846_299_6e-17);
    let y = 2.0 * x.abs();
    let k = (y / LN2.0).round();
    let r = dd_add(Dd(y, 0.0), dd_mul(Dd(-k, 0.0), LN2));
    let (mut sum, mut term) = (Dd(1.0, 0.0), Dd(1.0, 0.0));
    for n in 1..30 {
        term = dd_div(dd_mul(term, r), Dd(n as f64, 0.0));
        sum = dd_add(sum, term);
    }
    let e = dd_mul(sum, Dd(2f64.powi(k as i32), 0.0));
    let t = dd_div(dd_add(e, Dd(-1.0, 0.0)), dd_add(e, Dd(1.0, 0.0)));
    if x < 0.0 { Dd(-t.0, -t.1) } else { t }
}

/// |y - t| in ulp of f64 at t.
fn err64(y: f64, t: Dd) -> f64 {
    let d = dd_add(Dd(y, 0.0), Dd(-t.0, -t.1));
    let e = ((t.0.abs().to_bits() >> 52) as i32 - 1023).max(-1022);
    d.0.abs() / 2f64.powi(e - 52)
}

/// |y - exact| in ulp of f32 at `exact` (the f64 tanh, within 1e-16 relative, stands for
/// the exact value).
fn err32(y: f32, exact: f64) -> f64 {
    let e = ((exact.abs().to_bits() >> 52) as i32 - 1023).max(-126);
    (y as f64 - exact).abs() / 2f64.powi(e - 23)
}

/// Inputs: a dense even sweep of [-20, 20], log-spaced magnitudes from 1e-300 (f64) to
/// 40 of both signs, the neighbourhoods of the branch switch (0.625), of the saturation
/// and of the clamps, and the special values.
fn inputs64() -> Vec<f64> {
    let mut v: Vec<f64> = (0..1_000_001)
        .map(|i| -20.0 + 40.0 * (i as f64 / 1e6) + 3.1e-8)
        .collect();
    for i in 0..200_000 {
        let m = 10f64.powf(-300.0 + 301.6 * i as f64 / 2e5);
        v.push(m);
        v.push(-m);
    }
    for c in [0.625, 0.55, 1.0, 9.01, 10.0, 19.06, 20.0, 1e-8] {
        let mut u = c;
        let mut d = c;
        for _ in 0..2000 {
            v.extend([u, -u, d, -d]);
            u = u.next_up();
            d = d.next_down();
        }
    }
    v.extend([
        0.0,
        -0.0,
        f64::MIN_POSITIVE,
        5e-324,
        -5e-324,
        1e-310,
        -1e-310,
        f64::EPSILON,
        1e-5,
        40.0,
        710.0,
        1e300,
        -1e300,
        f64::MAX,
        f64::MIN,
        f64::INFINITY,
        f64::NEG_INFINITY,
    ]);
    v
}

fn inputs32() -> Vec<f32> {
    let mut v: Vec<f32> = (0..1_000_001)
        .map(|i| (-20.0 + 40.0 * (i as f64 / 1e6) + 3.1e-8) as f32)
        .collect();
    for i in 0..100_000 {
        let m = 10f64.powf(-45.5 + 47.1 * i as f64 / 1e5) as f32;
        v.push(m);
        v.push(-m);
    }
    for c in [0.625f32, 0.55, 1.0, 4.5, 9.01, 10.0, 1e-4] {
        let mut u = c;
        let mut d = c;
        for _ in 0..2000 {
            v.extend([u, -u, d, -d]);
            u = u.next_up();
            d = d.next_down();
        }
    }
    v.extend([
        0.0,
        -0.0,
        f32::MIN_POSITIVE,
        1e-45,
        -1e-45,
        1e-40,
        f32::EPSILON,
        89.0,
        1e30,
        f32::MAX,
        f32::MIN,
        f32::INFINITY,
        f32::NEG_INFINITY,
    ]);
    v
}

#[test]
fn f64_is_within_1_5_ulp() {
    let x = inputs64();
    let reference = paths()
        .into_iter()
        .map(|path| (path, eval(path, &x, 1.0).0))
        .collect::<Vec<_>>();
    let s = &reference[0].1;
    for (path, other) in &reference[1..] {
        for i in 0..x.len() {
            assert_eq!(
                s[i].to_bits(),
                other[i].to_bits(),
                "{path:?} differs at {}",
                x[i]
            );
        }
    }
    let (mut worst, mut at, mut worst_rel, mut libm) = (0f64, 0.0, 0f64, 0u64);
    let (mut libm_worst, mut libm_rel) = (0f64, 0f64);
    for (&xi, &y) in x.iter().zip(s) {
        libm = libm.max(ulps64(y, xi.tanh()));
        assert_eq!(y.to_bits(), (-y).to_bits() ^ (1 << 63));
        if xi.abs() < 1e-8 {
            // tanh x = x (1 - x^2/3 + ...) rounds to x.
            assert_eq!(y.to_bits(), xi.to_bits(), "tanh({xi:e}) = {y:e}");
        } else if xi.abs() <= 19.5 {
            let t = tanh_dd(xi);
            let e = err64(y, t);
            if e > worst {
                (worst, at) = (e, xi);
            }
            worst_rel = worst_rel.max((dd_add(Dd(y, 0.0), Dd(-t.0, -t.1)).0 / t.0).abs());
            let el = err64(xi.tanh(), t);
            libm_worst = libm_worst.max(el);
            libm_rel = libm_rel.max((dd_add(Dd(xi.tanh(), 0.0), Dd(-t.0, -t.1)).0 / t.0).abs());
        } else {
            // tanh rounds to ±1 from 19.06 on (NaN aside).
            assert!(
                y.is_nan() == xi.is_nan() && (xi.is_nan() || y.abs() == 1.0),
                "{xi}"
            );
        }
    }
    eprintln!(
        "f64: max {worst:.3} ulp (at {at}), relative {worst_rel:.2e}; \
         libm: {libm_worst:.3} ulp, relative {libm_rel:.2e}; max {libm} ulp between the two"
    );
    assert!(worst <= 1.5, "{worst} ulp at {at}");
    assert!(worst_rel <= 3e-16, "relative error {worst_rel:e}");
    assert!(libm <= 3, "{libm} ulp from libm");
    // The special values.
    let (s, ds, ca) = eval(
        Path::best(),
        &[f64::INFINITY, f64::NEG_INFINITY, -0.0, f64::NAN],
        3.0,
    );
    assert_eq!(&s[..3], &[1.0, -1.0, -0.0]);
    assert!(s[2].is_sign_negative());
    assert_eq!(&ds[..2], &[0.0, 0.0]);
    assert!(s[3].is_nan() && ds[3].is_nan() && ca[3].is_nan());
}

#[test]
fn f32_is_within_1_5_ulp() {
    let x = inputs32();
    let reference = paths()
        .into_iter()
        .map(|path| (path, eval(path, &x, 1.0).0))
        .collect::<Vec<_>>();
    let s = &reference[0].1;
    for (path, other) in &reference[1..] {
        for i in 0..x.len() {
            assert_eq!(
                s[i].to_bits(),
                other[i].to_bits(),
                "{path:?} differs at {}",
                x[i]
            );
        }
    }
    let (mut worst, mut at, mut worst_libm) = (0f64, 0.0, 0f64);
    for (&xi, &y) in x.iter().zip(s) {
        let e = err32(y, (xi as f64).tanh());
        if e > worst {
            (worst, at) = (e, xi);
        }
        worst_libm = worst_libm.max(err32(xi.tanh(), (xi as f64).tanh()));
        assert_eq!(y.to_bits(), (-y).to_bits() ^ (1 << 31));
        if xi.abs() < 1e-4 {
            assert_eq!(y.to_bits(), xi.to_bits(), "tanh({xi:e}) = {y:e}");
        }
    }
    eprintln!("f32: max {worst:.3} ulp (at {at}); libm's tanhf: {worst_libm:.3} ulp");
    assert!(worst <= 1.5, "{worst} ulp at {at}");
    let (s, ds, ca) = eval(
        Path::best(),
        &[f32::INFINITY, f32::NEG_INFINITY, -0.0, f32::NAN],
        3.0,
    );
    assert_eq!(&s[..3], &[1.0, -1.0, -0.0]);
    assert!(s[2].is_sign_negative());
    assert_eq!(&ds[..2], &[0.0, 0.0]);
    assert!(s[3].is_nan() && ds[3].is_nan() && ca[3].is_nan());
}

/// Every length 0..70 at every start offset mod 16 (the masked tails): `ds` and `ca` are
/// computed from `s` as documented, `s` is the elementwise tanh, and nothing outside the
/// slices is written.
fn tails<T>(one: T, sentinel: T, mv: T)
where
    T: VTanh + Copy + Default + PartialEq + std::fmt::Debug + From<f32>,
    T: std::ops::Mul<Output = T> + std::ops::Sub<Output = T>,
{
    let x: Vec<T> = (0..100)
        .map(|i| T::from(((i * 37 % 101) as f32 - 50.0) * 0.09))
        .collect();
    for path in paths() {
        for off in 0..16 {
            for n in 0..70 {
                let p = &x[off..off + n];
                let mut buf = [
                    vec![sentinel; 100],
                    vec![sentinel; 100],
                    vec![sentinel; 100],
                ];
                let [s, ds, ca] = &mut buf;
                T::tanh_d1_scaled_on(
                    path,
                    p,
                    &mut s[off..off + n],
                    &mut ds[off..off + n],
                    &mut ca[off..off + n],
                    mv,
                );
                for i in 0..100 {
                    let inside = (off..off + n).contains(&i);
                    for b in &buf {
                        assert_eq!(b[i] == sentinel, !inside, "{path:?} off {off} n {n} i {i}");
                    }
                    if inside {
                        let (mut s1, mut d1, mut c1) =
                            ([T::default()], [T::default()], [T::default()]);
                        T::tanh_d1_scaled_on(
                            Path::Portable,
                            &x[i..i + 1],
                            &mut s1,
                            &mut d1,
                            &mut c1,
                            mv,
                        );
                        let t = buf[0][i];
                        assert_eq!(t, s1[0], "{path:?} off {off} n {n} i {i}");
                        assert_eq!(buf[1][i], one - t * t);
                        assert_eq!(buf[2][i], mv * t);
                    }
                }
            }
        }
    }
}

#[test]
fn tails_and_outputs_f64() {
    tails::<f64>(1.0, 1234.5, -0.37);
}

#[test]
fn tails_and_outputs_f32() {
    tails::<f32>(1.0, 1234.5, -0.37);
}

#[test]
#[should_panic(expected = "lengths differ")]
fn mismatched_lengths_panic() {
    let (mut s, mut ds, mut ca) = (vec![0.0; 3], vec![0.0; 3], vec![0.0; 2]);
    f64::tanh_d1_scaled_on(Path::Portable, &[1.0; 3], &mut s, &mut ds, &mut ca, 1.0);
}

/// The plain slice tanh gives the bits of `tanh_d1_scaled`'s `s` on every path, for
/// every tail length and start offset, and writes nothing past its slice.
#[test]
fn plain_tanh_matches_the_fused_pass() {
    let x: Vec<f64> = (0..90).map(|i| (i as f64 - 45.0) * 0.173).collect();
    let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
    for path in paths() {
        for start in 0..9 {
            for len in 0..(x.len() - start) {
                let p = &x[start..start + len];
                let mut s = vec![7.0; len + 1];
                f64::tanh_on(path, p, &mut s[..len]);
                assert_eq!(
                    &s[..len],
                    &eval(path, p, 1.0).0[..],
                    "{path:?} {start} {len}"
                );
                assert_eq!(s[len], 7.0);
                let p = &x32[start..start + len];
                let mut s = vec![7.0f32; len];
                f32::tanh_on(path, p, &mut s);
                assert_eq!(s, eval(path, p, 1.0).0, "{path:?} f32 {start} {len}");
            }
        }
    }
}

/// `activate` takes the slice tanh for tanh, chunked or not, and the per-element path
/// for the others.
#[test]
fn activate_uses_the_slice_tanh() {
    use crate::cpu::Par;
    use crate::model::{Activation, Real};
    let n = 5000;
    let p: Vec<f64> = (0..n)
        .map(|i| ((i * 7919 % n) as f64 - 2500.0) * 1.3e-3)
        .collect();
    let mut want = [vec![0.0; n], vec![0.0; n], vec![0.0; n]];
    let [s, ds, ca] = &mut want;
    f64::tanh_d1_scaled(&p, s, ds, ca, 0.5);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap();
    for par in [Par::Seq, Par::Rayon] {
        let mut got = [vec![0.0; n], vec![0.0; n], vec![0.0; n]];
        let [s, ds, ca] = &mut got;
        pool.install(|| crate::train::activate(Activation::Tanh, 0.5, &p, s, ds, ca, par));
        assert_eq!(got, want, "{par:?}");
        for i in 0..n {
            assert!((got[0][i] - p[i].tanh()).abs() <= 2.0 * f64::EPSILON * got[0][i].abs());
        }
        let [s, ds, ca] = &mut got;
        crate::train::activate(Activation::Softplus, 0.5, &p, s, ds, ca, par);
        let (f, d) = Activation::Softplus.f_d1(p[17]);
        assert_eq!((got[0][17], got[1][17], got[2][17]), (f, d, 0.5 * f));
    }
    let _ = <f32 as Real>::tanh_d1_scaled;
}

/// All non-negative f32 (negative ones are their mirror image by construction):
/// `cargo test --release vtanh::tests::exhaustive_f32 -- --ignored --nocapture`.
#[test]
#[ignore]
fn exhaustive_f32() {
    let best = Path::best();
    let (mut worst, mut at, mut hist) = (0f64, 0f32, [0u64; 4]);
    let chunk = 1 << 16;
    let mut x = vec![0f32; chunk];
    let mut lo = 0u32;
    while lo < 0x7f80_0000 {
        for (i, v) in x.iter_mut().enumerate() {
            *v = f32::from_bits(lo + i as u32);
        }
        let (a, _, _) = eval(best, &x, 1.0);
        let (b, _, _) = eval(Path::Portable, &x, 1.0);
        for i in 0..chunk {
            assert_eq!(a[i].to_bits(), b[i].to_bits(), "{}", x[i]);
            let e = err32(a[i], (x[i] as f64).tanh());
            hist[(e.floor() as usize).min(3)] += 1;
            if e > worst {
                (worst, at) = (e, x[i]);
            }
        }
        lo += chunk as u32;
    }
    eprintln!(
        "f32 exhaustive ({best:?} = portable): max {worst:.3} ulp at {at}; [0,1) [1,2) [2,3) >=3 ulp: {hist:?}"
    );
    assert!(worst <= 1.5);
}

/// Special values on every path, alone and in every lane position of a vector: NaN (both
/// signs) stays NaN in s, ds and ca; ±inf, ±0, subnormals and the clamps give the
/// portable bits.
#[test]
fn special_values_on_every_path() {
    let sp = [
        f64::NAN,
        -f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        0.0,
        -0.0,
        5e-324,
        -1e-310,
        0.625,
        -0.625f64.next_down(),
        20.0,
        -20.0f64.next_up(),
        10.0,
        f64::MAX,
        f64::MIN,
    ];
    for path in paths() {
        for (k, &v) in sp.iter().enumerate() {
            for pos in 0..19 {
                let mut x: Vec<f64> = (0..19).map(|i| 0.1 * i as f64 - 0.9).collect();
                x[pos] = v;
                let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
                let (s, ds, ca) = eval(path, &x, -0.7);
                let (s0, ds0, ca0) = eval(Path::Portable, &x, -0.7);
                let (t, dt, ct) = eval(path, &x32, -0.7);
                let (t0, dt0, ct0) = eval(Path::Portable, &x32, -0.7);
                for i in 0..19 {
                    let msg = format!("{path:?} value {k} at {pos}, lane {i}");
                    if x[i].is_nan() {
                        assert!(s[i].is_nan() && ds[i].is_nan() && ca[i].is_nan(), "{msg}");
                        assert!(t[i].is_nan() && dt[i].is_nan() && ct[i].is_nan(), "{msg}");
                    } else {
                        let b = |v: &[f64]| v[i].to_bits();
                        let b32 = |v: &[f32]| v[i].to_bits();
                        assert_eq!([b(&s), b(&ds), b(&ca)], [b(&s0), b(&ds0), b(&ca0)], "{msg}");
                        assert_eq!(
                            [b32(&t), b32(&dt), b32(&ct)],
                            [b32(&t0), b32(&dt0), b32(&ct0)],
                            "{msg}"
                        );
                    }
                }
            }
        }
    }
}
