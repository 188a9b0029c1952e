//! Elementwise activation passes over whole `M x T` blocks: sigma, sigma', sigma'' of
//! [`Activation`].
//!
//! The mean-field model evaluates sigma on `L * M * n` pre-activations per GD step, so
//! the scalar libm `tanh` (about 15 ns here) would dominate the step: tanh goes through
//! the vectorized [`crate::vtanh::tanh_slice`] (within 1.34 ulp of the exact tanh, the
//! same bits on every CPU path).
//!
//! The derivative passes are compiled three times (AVX-512F + VL, AVX2+FMA, baseline) and
//! picked at run time by [`crate::cpu::vectorized`] (the instruction set of
//! [`crate::cpu::isa`], which honours `RESLIM_NO_AVX512` and `RESLIM_NO_AVX2`). The bodies use no reductions and only correctly rounded
//! operations, so the three versions give the same bits: results do not depend on the
//! CPU.
//!
//! For tanh the derivatives come from the stored value `s = sigma(p)`:
//! `sigma' = 1 - s^2`, `sigma'' = -2 s (1 - s^2)` (the formulas of
//! [`Activation::d1`]/[`Activation::d2`]); other activations call those methods.

use crate::model::Activation;

macro_rules! multiversion {
    ($(#[$doc:meta])* pub fn $name:ident($($arg:ident : $ty:ty),*) $body:block) => {
        $(#[$doc])*
        pub fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) $body
            crate::cpu::vectorized(|| body($($arg),*))
        }
    };
}

/// `s = tanh(p)` elementwise.
pub fn tanh_slice(p: &[f64], s: &mut [f64]) {
    crate::vtanh::tanh_slice(p, s)
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

/// `s = sigma(p)` elementwise. Other activations than tanh run scalar libm calls in
/// code for the baseline target (legacy SSE), so it starts by
/// [`crate::cpu::clean_upper`]: a softplus `reslim spirals` run at n = 100 took 526 s
/// without it and 34 s with it on the Intel Xeon (same bits). The derivative passes are
/// compiled for the CPU's vector instruction set and need none.
pub fn forward(act: Activation, p: &[f64], s: &mut [f64]) {
    match act {
        Activation::Tanh => tanh_slice(p, s),
        _ => {
            crate::cpu::clean_upper();
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
                let (d1, d2) = act.d1_d2(p[i]);
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
                (p[i], d2[i]) = act.d1_d2(p[i]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tanh_slice_is_within_2_ulp_of_libm() {
        let p: Vec<f64> = (0..400_001)
            .map(|i| (i as f64 - 200_000.0) * 1.1e-4)
            .collect();
        let mut s = vec![0.0; p.len()];
        tanh_slice(&p, &mut s);
        for (x, y) in p.iter().zip(&s) {
            let ulp = (y.to_bits() as i64 - x.tanh().to_bits() as i64).unsigned_abs();
            assert!(ulp <= 2, "tanh({x}): {y} vs libm {}", x.tanh());
        }
        let mut t = [0.0; 3];
        tanh_slice(&[f64::NAN, f64::INFINITY, -1e-300], &mut t);
        assert!(t[0].is_nan());
        assert_eq!(&t[1..], &[1.0, -1e-300]);
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
