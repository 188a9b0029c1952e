//! Elementwise activation passes over whole `M x T` blocks: sigma, sigma', sigma'' of
//! [`Activation`], with a vectorisable tanh.
//!
//! The mean-field model evaluates sigma on `L * M * n` pre-activations per GD step, so
//! the scalar libm `tanh` (about 15 ns here) would dominate the step. [`tanh`] is a
//! branch-free f64 tanh that compilers vectorise: `tanh|x| = e / (e + 2)` with
//! `e = expm1(2|x|)` (Cody–Waite reduction and a degree-14 Taylor polynomial; `|x|`
//! clamped at 20, where tanh rounds to 1). It is within 3 ulp of libm's tanh (tested).
//!
//! Each pass is compiled three times (AVX-512F, AVX2+FMA, baseline) and picked at run
//! time. The bodies use no reductions, and their fused multiply-adds (`mul_add`) are
//! correctly rounded on every path (a library call on CPUs without FMA), so the three
//! versions give the same bits: results do not depend on the CPU.
//!
//! For tanh the derivatives come from the stored value `s = sigma(p)`:
//! `sigma' = 1 - s^2`, `sigma'' = -2 s (1 - s^2)` (the formulas of
//! [`Activation::d1`]/[`Activation::d2`]); other activations call those methods.

use crate::model::Activation;

/// 1/13!, ..., 1/2!: the Taylor coefficients of `(expm1(r) - r) / r^2` after the leading
/// 1/14!.
const EXPM1_TAYLOR: [f64; 12] = [
    1.0 / 6_227_020_800.0,
    1.0 / 479_001_600.0,
    1.0 / 39_916_800.0,
    1.0 / 3_628_800.0,
    1.0 / 362_880.0,
    1.0 / 40_320.0,
    1.0 / 5_040.0,
    1.0 / 720.0,
    1.0 / 120.0,
    1.0 / 24.0,
    1.0 / 6.0,
    0.5,
];

/// `exp(y) - 1` for y in [0, 40] (no overflow checks: the caller clamps): `y = k ln 2 + r`
/// with `|r| <= ln(2)/2` (Cody–Waite), `expm1(r)` by its Taylor series to degree 14, and
/// `expm1(y) = 2^k expm1(r) + (2^k - 1)` (exact for k = 0, no cancellation for k >= 1).
#[inline(always)]
fn expm1_small(y: f64) -> f64 {
    const LOG2E: f64 = std::f64::consts::LOG2_E;
    const LN2_HI: f64 = 6.931_471_803_691_238e-1;
    const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;
    // 1.5 * 2^52: adding it rounds to an integer held in the low mantissa bits.
    const SHIFT: f64 = 6_755_399_441_055_744.0;
    let kk = y.mul_add(LOG2E, SHIFT);
    let k = kk - SHIFT;
    let r = k.mul_add(-LN2_LO, k.mul_add(-LN2_HI, y));
    let mut p: f64 = 1.0 / 87_178_291_200.0;
    for c in EXPM1_TAYLOR {
        p = p.mul_add(r, c);
    }
    let em = (p * r).mul_add(r, r);
    // 2^k from the integer in the low bits of kk.
    let two_k = f64::from_bits(kk.to_bits().wrapping_add(1023) << 52);
    two_k.mul_add(em, two_k - 1.0)
}

/// tanh(x) = expm1(2|x|) / (expm1(2|x|) + 2), with the sign of x, branch-free (see the
/// module docs); within 3 ulp of libm.
#[inline(always)]
pub fn tanh(x: f64) -> f64 {
    let e = expm1_small(2.0 * x.abs().min(20.0));
    let t = (e / (e + 2.0)).copysign(x);
    if x.is_nan() { x } else { t }
}

macro_rules! multiversion {
    ($(#[$doc:meta])* pub fn $name:ident($($arg:ident : $ty:ty),*) $body:block) => {
        $(#[$doc])*
        pub fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn v512($($arg: $ty),*) { body($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn v256($($arg: $ty),*) { body($($arg),*) }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU supports the enabled features.
                    return unsafe { v512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: as above.
                    return unsafe { v256($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

multiversion! {
    /// `s = tanh(p)` elementwise.
    pub fn tanh_slice(p: &[f64], s: &mut [f64]) {
        for (o, &v) in s.iter_mut().zip(p) {
            *o = tanh(v);
        }
    }
}

multiversion! {
    /// tanh's backward pass: on entry `s = tanh(p)`, `a` holds a coefficient `A`; on exit
    /// `d1 = 1 - s^2`, `a = d1 * A`, `b = -2 s d1 * A`.
    pub fn tanh_backward(s: &[f64], d1: &mut [f64], a: &mut [f64], b: &mut [f64]) {
        let n = s.len();
        let (d1, a, b) = (&mut d1[..n], &mut a[..n], &mut b[..n]);
        for i in 0..n {
            let t = s[i];
            let g = 1.0 - t * t;
            let c = a[i];
            d1[i] = g;
            a[i] = g * c;
            b[i] = -2.0 * t * g * c;
        }
    }
}

multiversion! {
    /// tanh's first and second derivatives from `s = tanh(p)`.
    pub fn tanh_d12(s: &[f64], d1: &mut [f64], d2: &mut [f64]) {
        let n = s.len();
        let (d1, d2) = (&mut d1[..n], &mut d2[..n]);
        for i in 0..n {
            let t = s[i];
            let g = 1.0 - t * t;
            d1[i] = g;
            d2[i] = -2.0 * t * g;
        }
    }
}

/// `s = sigma(p)` elementwise.
pub fn forward(act: Activation, p: &[f64], s: &mut [f64]) {
    match act {
        Activation::Tanh => tanh_slice(p, s),
        _ => {
            for (o, &v) in s.iter_mut().zip(p) {
                *o = act.f(v);
            }
        }
    }
}

/// The backward pass of a block: on entry `p` holds pre-activations, `s = sigma(p)`, `a`
/// a coefficient `A`; on exit `p = sigma'(p)`, `a = sigma'(p) A`, `b = sigma''(p) A`.
pub fn backward(act: Activation, p: &mut [f64], s: &[f64], a: &mut [f64], b: &mut [f64]) {
    match act {
        Activation::Tanh => tanh_backward(s, p, a, b),
        _ => {
            let n = s.len();
            for i in 0..n {
                let (d1, d2) = (act.d1(p[i]), act.d2(p[i]));
                p[i] = d1;
                b[i] = d2 * a[i];
                a[i] *= d1;
            }
        }
    }
}

/// On entry `p` holds pre-activations and `s = sigma(p)`; on exit `p = sigma'(p)` and
/// `d2 = sigma''(p)`.
pub fn derivatives(act: Activation, p: &mut [f64], s: &[f64], d2: &mut [f64]) {
    match act {
        Activation::Tanh => {
            // tanh_d12 writes d1 from s; p is only overwritten.
            tanh_d12(s, p, d2)
        }
        _ => {
            for i in 0..s.len() {
                d2[i] = act.d2(p[i]);
                p[i] = act.d1(p[i]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tanh_is_within_3_ulp_of_libm() {
        let mut worst = 0u64;
        for i in 0..400_001 {
            let x = (i as f64 - 200_000.0) * 1.1e-4;
            let (a, b) = (tanh(x), x.tanh());
            worst = worst.max((a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs());
        }
        assert!(worst <= 3, "{worst} ulp");
        for x in [
            0.0, -0.0, 1e-300, -1e-300, 5e-9, 19.9, 20.0, 25.0, 1e300, -1e300,
        ] {
            let (a, b) = (tanh(x), x.tanh());
            assert!(
                a == b || (a - b).abs() <= 4.0 * f64::EPSILON * b.abs(),
                "{x}: {a} {b}"
            );
        }
        assert!(tanh(f64::NAN).is_nan());
        let mut s = vec![0.0; 37];
        let p: Vec<f64> = (0..37).map(|i| i as f64 * 0.3 - 5.0).collect();
        tanh_slice(&p, &mut s);
        for (x, y) in p.iter().zip(&s) {
            assert_eq!(*y, tanh(*x));
        }
    }

    #[test]
    fn backward_passes_match_the_activation_derivatives() {
        let p0: Vec<f64> = (0..23).map(|i| i as f64 * 0.37 - 4.0).collect();
        for act in [Activation::Tanh, Activation::Gelu, Activation::Softplus] {
            let mut s = vec![0.0; 23];
            forward(act, &p0, &mut s);
            let mut p = p0.clone();
            let mut a: Vec<f64> = (0..23).map(|i| 1.0 + i as f64).collect();
            let mut b = vec![0.0; 23];
            backward(act, &mut p, &s, &mut a, &mut b);
            let mut q = p0.clone();
            let mut d2 = vec![0.0; 23];
            derivatives(act, &mut q, &s, &mut d2);
            for i in 0..23 {
                let x = p0[i];
                let c = 1.0 + i as f64;
                assert!((s[i] - act.f(x)).abs() < 1e-15, "{act:?}");
                assert!((p[i] - act.d1(x)).abs() < 1e-14, "{act:?}");
                assert!((a[i] - c * act.d1(x)).abs() < 1e-13 * c, "{act:?}");
                assert!((b[i] - c * act.d2(x)).abs() < 1e-13 * c, "{act:?}");
                assert_eq!((q[i], d2[i] * c), (p[i], b[i]));
            }
        }
    }
}
