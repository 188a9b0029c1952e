//! tanh over whole slices, for the activation pass of the GD step:
//! `s = tanh(p)`, `ds = 1 - s*s` (tanh's derivative, from the rounded `s`), `ca = mv * s`.
//!
//! # Approximation
//!
//! With `a = |x|`, and the sign of `x` put back at the end (so `tanh(-x) = -tanh(x)`
//! exactly):
//!
//! - `a < 0.625`: `tanh a = a + a * z P(z) / Q(z)`, `z = a^2`, with the minimax rational of
//!   Cephes' `tanh.c` (P of degree 2, Q monic of degree 3; approximation error about
//!   2e-17 relative). The correction term is at most 11 % of `a`, so its rounding errors
//!   count about a tenth, and tiny `a` (subnormals included) gives exactly `a`.
//! - `a >= 0.625`: `tanh a = 1 - 2 / (exp(2a) + 1)`, with `a` first clamped to 20 (f64) or
//!   10 (f32), beyond which tanh rounds to 1 anyway (so `±inf` gives `±1`; no overflow).
//!   `exp(y) = 2^k exp(r)`, `k = round(y / ln 2)` (by the 1.5 * 2^52 (2^23) shift, which
//!   leaves k in the low mantissa bits, from where 2^k is assembled in the exponent
//!   bits), `r = y - k ln 2` by Cody–Waite (ln 2 split in a short high part, times which
//!   k is exact, and a low part), `|r| <= ln(2)/2`, and `exp(r)` by its Taylor polynomial
//!   of degree 13 (f64; truncation below 5e-18) or 7 (f32; below 6e-9), in Horner form.
//!   From `a = 0.625` on the subtraction loses nothing: `2 / (e + 1) <= 0.45 < tanh a`.
//!
//! NaN propagates (the clamp keeps NaN, and NaN lanes take the exp branch).
//!
//! Both branches are evaluated on every lane and blended (no data-dependent branches),
//! with a single division (`num / den`, whose operands are picked per lane).
//!
//! # Accuracy
//!
//! Measured against a double-double reference (f64) and the f64 tanh (f32) by the tests
//! below, which assert these bounds:
//!
//! - f64: at most 1.34 ulp from the exact tanh (the worst cases just above the switch at
//!   0.625, where `2 / (e + 1)` is largest), relative error at most 2.7e-16; exactly `x`
//!   for |x| < 1e-8. (glibc's `tanh` here: up to 1.98 ulp; the two differ by at most
//!   2 ulp.)
//! - f32: at most 1.38 ulp from the exact tanh over all f32 inputs (exhaustive run of the
//!   ignored test `exhaustive_f32`: max 1.371, 1.6e-5 of the inputs above 1 ulp; the
//!   AVX-512 and portable bits agree on all of them); glibc's `tanhf`: up to 1.99 ulp.
//!
//! `ds = 1 - s*s` is computed from the rounded `s` without fusing (as
//! [`crate::model::Activation::f_d1`] does), `ca = mv * s` with one rounding.
//!
//! # Implementations
//!
//! One generic body (`tanh_lanes`) over a lane trait ([`Lanes`]), instantiated for
//! AVX-512F (+VL; 8 f64 or 16 f32 lanes, masked loads and stores for the tail), picked
//! at run time when [`crate::kernels::isa`] says so, and for single lanes (portable, any
//! CPU; compiled a second time with AVX2 + FMA enabled and picked at run time on such
//! x86-64 CPUs, where LLVM vectorizes the loop). All operations are correctly rounded
//! IEEE operations (fused multiply-adds through `mul_add` in the portable code), so every
//! path gives the same bits: results do not depend on the CPU. The price: the baseline
//! x86-64 build of the portable code calls libm's `fma` per multiply-add (about 4x
//! slower than scalar libm tanh), which x86-64 only runs on CPUs without AVX2 + FMA
//! (on aarch64, FMA is baseline).
//!
//! `cargo bench --bench tanh` times the paths against per-element libm (N = 20000, in
//! cache, one thread; a shared Xeon with AVX-512, ns per element, best run; loaded runs
//! were up to 1.5x slower on every path): f64 libm 15.7, AVX-512 1.29,
//! AVX2 + FMA 2.4; f32 libm 16.5, AVX-512 0.48, AVX2 + FMA 0.90.

#![allow(clippy::excessive_precision)] // Cephes' coefficients, as published.

/// The element types, with their constants.
#[doc(hidden)]
pub trait Elem: Copy + 'static {
    const ONE: Self;
    const TWO: Self;
    /// Below this |x|, the rational approximation.
    const SMALL: Self;
    /// |x| is clamped to this before exp (tanh rounds to 1 beyond).
    const CLAMP: Self;
    /// 1.5 * 2^(mantissa bits): adding it rounds to an integer kept in the low bits.
    const SHIFT: Self;
    const LOG2E: Self;
    const NEG_LN2_HI: Self;
    const NEG_LN2_LO: Self;
    /// exp(r) = sum c_j r^j: coefficients from the highest degree down to c_0 = 1.
    const EXP: &'static [Self];
    /// P(z) = P[0] z^2 + P[1] z + P[2].
    const P: [Self; 3];
    /// Q(z) = z^3 + Q[0] z^2 + Q[1] z + Q[2].
    const Q: [Self; 3];
}

// Cephes tanh.c (Stephen L. Moshier), |x| < 0.625: tanh x = x + x z P(z) / Q(z).
const CEPHES_P: [f64; 3] = [
    -9.64399179425052238628e-1,
    -9.92877231001918586564e1,
    -1.61468768441708447952e3,
];
const CEPHES_Q: [f64; 3] = [
    1.12811678491632931402e2,
    2.23548839060100448583e3,
    4.84406305325125486048e3,
];

/// 1/13!, 1/12!, ..., 1/2!, 1, 1.
const EXP_F64: [f64; 14] = [
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
    1.0,
    1.0,
];
/// 1/7!, ..., 1/2!, 1, 1.
const EXP_F32: [f32; 8] = [
    1.0 / 5_040.0,
    1.0 / 720.0,
    1.0 / 120.0,
    1.0 / 24.0,
    1.0 / 6.0,
    0.5,
    1.0,
    1.0,
];

impl Elem for f64 {
    const ONE: f64 = 1.0;
    const TWO: f64 = 2.0;
    const SMALL: f64 = 0.625;
    // tanh(x) rounds to 1 from x = 19.06 (2 e^{-2x} < 2^-54).
    const CLAMP: f64 = 20.0;
    const SHIFT: f64 = 6_755_399_441_055_744.0;
    const LOG2E: f64 = std::f64::consts::LOG2_E;
    // fdlibm's split: the high part has 32 significant bits, so k * hi is exact.
    const NEG_LN2_HI: f64 = -6.931_471_803_691_238e-1;
    const NEG_LN2_LO: f64 = -1.908_214_929_270_587_7e-10;
    const EXP: &'static [f64] = &EXP_F64;
    const P: [f64; 3] = CEPHES_P;
    const Q: [f64; 3] = CEPHES_Q;
}

impl Elem for f32 {
    const ONE: f32 = 1.0;
    const TWO: f32 = 2.0;
    const SMALL: f32 = 0.625;
    // tanh(x) rounds to 1 in f32 from x = 9.01 (2 e^{-2x} < 2^-25).
    const CLAMP: f32 = 10.0;
    const SHIFT: f32 = 12_582_912.0;
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // 0.693359375 = 355/512 (9 bits), and ln 2 minus it.
    const NEG_LN2_HI: f32 = -0.693_359_375;
    const NEG_LN2_LO: f32 = 2.121_944_4e-4;
    const EXP: &'static [f32] = &EXP_F32;
    const P: [f32; 3] = [CEPHES_P[0] as f32, CEPHES_P[1] as f32, CEPHES_P[2] as f32];
    const Q: [f32; 3] = [CEPHES_Q[0] as f32, CEPHES_Q[1] as f32, CEPHES_Q[2] as f32];
}

/// The lane operations the body needs, for element type `T`: [`Scalar`] (one lane, any
/// CPU) and [`Avx512`] (intrinsics). All are exact or correctly rounded, so both give the
/// same bits.
#[doc(hidden)]
pub trait Lanes<T: Elem> {
    type V: Copy;
    type M: Copy;
    /// Lanes per vector.
    const W: usize;
    unsafe fn splat(x: T) -> Self::V;
    unsafe fn load(p: *const T) -> Self::V;
    unsafe fn store(p: *mut T, v: Self::V);
    /// The first `n < W` lanes from `p`, the others zero.
    unsafe fn load_part(p: *const T, n: usize) -> Self::V;
    /// Stores the first `n < W` lanes to `p`, nothing else.
    unsafe fn store_part(p: *mut T, v: Self::V, n: usize);
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn sub(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn div(a: Self::V, b: Self::V) -> Self::V;
    /// `a * b + c`, rounded once.
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    unsafe fn abs(a: Self::V) -> Self::V;
    /// `a < b` (false where either is NaN).
    unsafe fn lt(a: Self::V, b: Self::V) -> Self::M;
    /// `m ? a : b`.
    unsafe fn select(m: Self::M, a: Self::V, b: Self::V) -> Self::V;
    /// `c < a ? c : a` (so NaN in `a` is kept).
    unsafe fn min_keep_nan(c: Self::V, a: Self::V) -> Self::V;
    /// 2^k, for `kk = k + SHIFT` (as a float, the integer k in its low mantissa bits);
    /// k + bias must be a valid exponent.
    unsafe fn pow2(kk: Self::V) -> Self::V;
    /// `t` (non-negative) with the sign bit of `x`.
    unsafe fn with_sign_of(t: Self::V, x: Self::V) -> Self::V;
}

/// One lane in plain Rust (any CPU).
#[doc(hidden)]
pub struct Scalar;

macro_rules! scalar {
    ($t:ty, $bias:expr, $mant:expr) => {
        impl Lanes<$t> for Scalar {
            type V = $t;
            type M = bool;
            const W: usize = 1;
            #[inline(always)]
            unsafe fn splat(x: $t) -> $t {
                x
            }
            #[inline(always)]
            unsafe fn load(p: *const $t) -> $t {
                unsafe { *p }
            }
            #[inline(always)]
            unsafe fn store(p: *mut $t, v: $t) {
                unsafe { *p = v }
            }
            #[inline(always)]
            unsafe fn load_part(_p: *const $t, _n: usize) -> $t {
                0.0 // n < W = 1: no lane.
            }
            #[inline(always)]
            unsafe fn store_part(_p: *mut $t, _v: $t, _n: usize) {}
            #[inline(always)]
            unsafe fn add(a: $t, b: $t) -> $t {
                a + b
            }
            #[inline(always)]
            unsafe fn sub(a: $t, b: $t) -> $t {
                a - b
            }
            #[inline(always)]
            unsafe fn mul(a: $t, b: $t) -> $t {
                a * b
            }
            #[inline(always)]
            unsafe fn div(a: $t, b: $t) -> $t {
                a / b
            }
            #[inline(always)]
            unsafe fn fma(a: $t, b: $t, c: $t) -> $t {
                a.mul_add(b, c)
            }
            #[inline(always)]
            unsafe fn abs(a: $t) -> $t {
                a.abs()
            }
            #[inline(always)]
            unsafe fn lt(a: $t, b: $t) -> bool {
                a < b
            }
            #[inline(always)]
            unsafe fn select(m: bool, a: $t, b: $t) -> $t {
                if m { a } else { b }
            }
            #[inline(always)]
            unsafe fn min_keep_nan(c: $t, a: $t) -> $t {
                if c < a { c } else { a }
            }
            #[inline(always)]
            unsafe fn pow2(kk: $t) -> $t {
                <$t>::from_bits(kk.to_bits().wrapping_add($bias) << $mant)
            }
            #[inline(always)]
            unsafe fn with_sign_of(t: $t, x: $t) -> $t {
                <$t>::from_bits(t.to_bits() | (x.to_bits() & (-0.0 as $t).to_bits()))
            }
        }
    };
}
scalar!(f64, 1023, 52);
scalar!(f32, 127, 23);

/// AVX-512F (+VL) intrinsics; only called after a run-time check of the CPU.
#[cfg(target_arch = "x86_64")]
#[doc(hidden)]
pub struct Avx512;

#[cfg(target_arch = "x86_64")]
mod avx512_impl {
    use super::{Avx512, Lanes};
    use std::arch::x86_64::*;

    impl Lanes<f64> for Avx512 {
        type V = __m512d;
        type M = __mmask8;
        const W: usize = 8;
        #[inline(always)]
        unsafe fn splat(x: f64) -> __m512d {
            unsafe { _mm512_set1_pd(x) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f64) -> __m512d {
            unsafe { _mm512_loadu_pd(p) }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f64, v: __m512d) {
            unsafe { _mm512_storeu_pd(p, v) }
        }
        #[inline(always)]
        unsafe fn load_part(p: *const f64, n: usize) -> __m512d {
            unsafe { _mm512_maskz_loadu_pd(((1u32 << n) - 1) as __mmask8, p) }
        }
        #[inline(always)]
        unsafe fn store_part(p: *mut f64, v: __m512d, n: usize) {
            unsafe { _mm512_mask_storeu_pd(p, ((1u32 << n) - 1) as __mmask8, v) }
        }
        #[inline(always)]
        unsafe fn add(a: __m512d, b: __m512d) -> __m512d {
            unsafe { _mm512_add_pd(a, b) }
        }
        #[inline(always)]
        unsafe fn sub(a: __m512d, b: __m512d) -> __m512d {
            unsafe { _mm512_sub_pd(a, b) }
        }
        #[inline(always)]
        unsafe fn mul(a: __m512d, b: __m512d) -> __m512d {
            unsafe { _mm512_mul_pd(a, b) }
        }
        #[inline(always)]
        unsafe fn div(a: __m512d, b: __m512d) -> __m512d {
            unsafe { _mm512_div_pd(a, b) }
        }
        #[inline(always)]
        unsafe fn fma(a: __m512d, b: __m512d, c: __m512d) -> __m512d {
            unsafe { _mm512_fmadd_pd(a, b, c) }
        }
        #[inline(always)]
        unsafe fn abs(a: __m512d) -> __m512d {
            unsafe { _mm512_abs_pd(a) }
        }
        #[inline(always)]
        unsafe fn lt(a: __m512d, b: __m512d) -> __mmask8 {
            unsafe { _mm512_cmp_pd_mask::<_CMP_LT_OQ>(a, b) }
        }
        #[inline(always)]
        unsafe fn select(m: __mmask8, a: __m512d, b: __m512d) -> __m512d {
            unsafe { _mm512_mask_blend_pd(m, b, a) }
        }
        #[inline(always)]
        unsafe fn min_keep_nan(c: __m512d, a: __m512d) -> __m512d {
            // vminpd returns its second operand when either is NaN.
            unsafe { _mm512_min_pd(c, a) }
        }
        #[inline(always)]
        unsafe fn pow2(kk: __m512d) -> __m512d {
            unsafe {
                let k = _mm512_add_epi64(_mm512_castpd_si512(kk), _mm512_set1_epi64(1023));
                _mm512_castsi512_pd(_mm512_slli_epi64::<52>(k))
            }
        }
        #[inline(always)]
        unsafe fn with_sign_of(t: __m512d, x: __m512d) -> __m512d {
            unsafe {
                let sign = _mm512_and_si512(_mm512_castpd_si512(x), _mm512_set1_epi64(i64::MIN));
                _mm512_castsi512_pd(_mm512_or_si512(_mm512_castpd_si512(t), sign))
            }
        }
    }

    impl Lanes<f32> for Avx512 {
        type V = __m512;
        type M = __mmask16;
        const W: usize = 16;
        #[inline(always)]
        unsafe fn splat(x: f32) -> __m512 {
            unsafe { _mm512_set1_ps(x) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m512 {
            unsafe { _mm512_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m512) {
            unsafe { _mm512_storeu_ps(p, v) }
        }
        #[inline(always)]
        unsafe fn load_part(p: *const f32, n: usize) -> __m512 {
            unsafe { _mm512_maskz_loadu_ps(((1u32 << n) - 1) as __mmask16, p) }
        }
        #[inline(always)]
        unsafe fn store_part(p: *mut f32, v: __m512, n: usize) {
            unsafe { _mm512_mask_storeu_ps(p, ((1u32 << n) - 1) as __mmask16, v) }
        }
        #[inline(always)]
        unsafe fn add(a: __m512, b: __m512) -> __m512 {
            unsafe { _mm512_add_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn sub(a: __m512, b: __m512) -> __m512 {
            unsafe { _mm512_sub_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn mul(a: __m512, b: __m512) -> __m512 {
            unsafe { _mm512_mul_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn div(a: __m512, b: __m512) -> __m512 {
            unsafe { _mm512_div_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
            unsafe { _mm512_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        unsafe fn abs(a: __m512) -> __m512 {
            unsafe { _mm512_abs_ps(a) }
        }
        #[inline(always)]
        unsafe fn lt(a: __m512, b: __m512) -> __mmask16 {
            unsafe { _mm512_cmp_ps_mask::<_CMP_LT_OQ>(a, b) }
        }
        #[inline(always)]
        unsafe fn select(m: __mmask16, a: __m512, b: __m512) -> __m512 {
            unsafe { _mm512_mask_blend_ps(m, b, a) }
        }
        #[inline(always)]
        unsafe fn min_keep_nan(c: __m512, a: __m512) -> __m512 {
            unsafe { _mm512_min_ps(c, a) }
        }
        #[inline(always)]
        unsafe fn pow2(kk: __m512) -> __m512 {
            unsafe {
                let k = _mm512_add_epi32(_mm512_castps_si512(kk), _mm512_set1_epi32(127));
                _mm512_castsi512_ps(_mm512_slli_epi32::<23>(k))
            }
        }
        #[inline(always)]
        unsafe fn with_sign_of(t: __m512, x: __m512) -> __m512 {
            unsafe {
                let sign = _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(i32::MIN));
                _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(t), sign))
            }
        }
    }
}

/// tanh of each lane (see the module docs for the approximation).
#[inline(always)]
unsafe fn tanh_lanes<T: Elem, S: Lanes<T>>(x: S::V) -> S::V {
    unsafe {
        let one = S::splat(T::ONE);
        let a = S::abs(x);
        // a < 0.625: tanh a = a + a * (z P(z)) / Q(z).
        let z = S::mul(a, a);
        let pz = S::fma(
            S::fma(S::splat(T::P[0]), z, S::splat(T::P[1])),
            z,
            S::splat(T::P[2]),
        );
        let qz = S::fma(
            S::fma(S::add(z, S::splat(T::Q[0])), z, S::splat(T::Q[1])),
            z,
            S::splat(T::Q[2]),
        );
        // a >= 0.625: tanh a = 1 - 2 / (exp(2a) + 1), exp(y) = 2^k exp(r).
        let c = S::min_keep_nan(S::splat(T::CLAMP), a);
        let y = S::add(c, c);
        let kk = S::fma(y, S::splat(T::LOG2E), S::splat(T::SHIFT));
        let k = S::sub(kk, S::splat(T::SHIFT));
        let r = S::fma(
            k,
            S::splat(T::NEG_LN2_LO),
            S::fma(k, S::splat(T::NEG_LN2_HI), y),
        );
        let mut e = S::splat(T::EXP[0]);
        for &cj in &T::EXP[1..] {
            e = S::fma(e, r, S::splat(cj));
        }
        let e = S::mul(e, S::pow2(kk));
        // One division for both branches.
        let small = S::lt(a, S::splat(T::SMALL));
        let num = S::select(small, S::mul(z, pz), S::splat(T::TWO));
        let den = S::select(small, qz, S::add(e, one));
        let q = S::div(num, den);
        let t = S::select(small, S::fma(a, q, a), S::sub(one, q));
        S::with_sign_of(t, x)
    }
}

/// `s = tanh(p)`, `ds = 1 - s*s`, `ca = mv * s` on one vector.
#[inline(always)]
unsafe fn lanes_step<T: Elem, S: Lanes<T>>(x: S::V, mv: S::V) -> (S::V, S::V, S::V) {
    unsafe {
        let t = tanh_lanes::<T, S>(x);
        let d = S::sub(S::splat(T::ONE), S::mul(t, t));
        (t, d, S::mul(mv, t))
    }
}

/// The slice loop over full vectors, then one masked vector for the tail. With `FULL`,
/// writes s, ds and ca; without, only s (ds and ca are not touched and may be empty).
/// The caller checks that the slices it writes have the length of `p`.
#[inline(always)]
unsafe fn run_vec<T: Elem, S: Lanes<T>, const FULL: bool>(
    p: &[T],
    s: &mut [T],
    ds: &mut [T],
    ca: &mut [T],
    mv: T,
) {
    unsafe {
        let n = p.len();
        let (pp, sp, dp, cp) = (p.as_ptr(), s.as_mut_ptr(), ds.as_mut_ptr(), ca.as_mut_ptr());
        let m = S::splat(mv);
        let mut i = 0;
        while i + S::W <= n {
            let x = S::load(pp.add(i));
            if FULL {
                let (t, d, c) = lanes_step::<T, S>(x, m);
                S::store(sp.add(i), t);
                S::store(dp.add(i), d);
                S::store(cp.add(i), c);
            } else {
                S::store(sp.add(i), tanh_lanes::<T, S>(x));
            }
            i += S::W;
        }
        if i < n {
            let r = n - i;
            let x = S::load_part(pp.add(i), r);
            if FULL {
                let (t, d, c) = lanes_step::<T, S>(x, m);
                S::store_part(sp.add(i), t, r);
                S::store_part(dp.add(i), d, r);
                S::store_part(cp.add(i), c, r);
            } else {
                S::store_part(sp.add(i), tanh_lanes::<T, S>(x), r);
            }
        }
    }
}

/// The portable loop: one element at a time, in a form LLVM vectorizes where the target
/// has vector FMA. `FULL` as in [`run_vec`].
#[inline(always)]
fn run_portable<T: Elem, const FULL: bool>(p: &[T], s: &mut [T], ds: &mut [T], ca: &mut [T], mv: T)
where
    Scalar: Lanes<T, V = T>,
{
    if !FULL {
        for (&x, sv) in p.iter().zip(s.iter_mut()) {
            // SAFETY: register-only arithmetic.
            *sv = unsafe { tanh_lanes::<T, Scalar>(x) };
        }
        return;
    }
    for (((&x, sv), dv), cv) in p.iter().zip(s.iter_mut()).zip(ds.iter_mut()).zip(ca) {
        // SAFETY: register-only arithmetic.
        let (t, d, c) = unsafe { lanes_step::<T, Scalar>(x, mv) };
        *sv = t;
        *dv = d;
        *cv = c;
    }
}

/// The implementations; all give the same bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// Explicit AVX-512F (+VL) intrinsics.
    Avx512,
    /// The portable code compiled with AVX2 and FMA enabled (x86-64).
    Avx2Fma,
    /// The portable code for the baseline target.
    Portable,
}

impl Path {
    /// Whether this CPU can run the path.
    pub fn available(self) -> bool {
        match self {
            Path::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Path::Avx512 => crate::kernels::isa() == crate::kernels::Isa::Avx512,
            #[cfg(target_arch = "x86_64")]
            Path::Avx2Fma => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The path [`crate::model::Real::tanh_d1_scaled`] takes on this CPU: the instruction
    /// set of the kernels ([`crate::kernels::isa`]: AVX-512, else AVX2 + FMA, else
    /// portable; `RESLIM_NO_AVX512`, `RESLIM_NO_AVX2` step down).
    pub fn best() -> Path {
        match crate::kernels::isa() {
            crate::kernels::Isa::Avx512 => Path::Avx512,
            crate::kernels::Isa::Avx2Fma => Path::Avx2Fma,
            crate::kernels::Isa::Generic => Path::Portable,
        }
    }
}

/// The slice tanh of f64 and f32 on a chosen path (a supertrait of
/// [`crate::model::Real`], whose `tanh_d1_scaled` takes [`Path::best`]).
pub trait VTanh: Sized {
    /// `s = tanh(p)`, `ds = 1 - s*s`, `ca = mv * s` elementwise, on the given path.
    /// Panics if the slices' lengths differ or the CPU cannot run `path`.
    fn tanh_d1_scaled_on(
        path: Path,
        p: &[Self],
        s: &mut [Self],
        ds: &mut [Self],
        ca: &mut [Self],
        mv: Self,
    );

    /// `s = tanh(p)` elementwise, on the given path (the same bits as the `s` of
    /// [`VTanh::tanh_d1_scaled_on`]). Panics if the lengths differ or the CPU cannot run
    /// `path`.
    fn tanh_on(path: Path, p: &[Self], s: &mut [Self]);
}

/// `s = tanh(p)` elementwise on [`Path::best`].
pub fn tanh_slice<T: VTanh>(p: &[T], s: &mut [T]) {
    T::tanh_on(Path::best(), p, s)
}

macro_rules! vtanh_for {
    ($t:ty, $avx512:ident, $avx2:ident) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f,avx512vl")]
        unsafe fn $avx512<const FULL: bool>(
            p: &[$t],
            s: &mut [$t],
            ds: &mut [$t],
            ca: &mut [$t],
            mv: $t,
        ) {
            unsafe { run_vec::<$t, Avx512, FULL>(p, s, ds, ca, mv) }
        }
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn $avx2<const FULL: bool>(
            p: &[$t],
            s: &mut [$t],
            ds: &mut [$t],
            ca: &mut [$t],
            mv: $t,
        ) {
            run_portable::<$t, FULL>(p, s, ds, ca, mv)
        }
        impl VTanh for $t {
            fn tanh_on(path: Path, p: &[$t], s: &mut [$t]) {
                assert!(s.len() == p.len(), "tanh_slice: slice lengths differ");
                assert!(path.available(), "tanh_slice: {path:?} unavailable here");
                let (ds, ca): (&mut [$t], &mut [$t]) = (&mut [], &mut []);
                match path {
                    Path::Portable => run_portable::<$t, false>(p, s, ds, ca, 0.0),
                    // SAFETY: lengths checked above, the CPU features at run time.
                    #[cfg(target_arch = "x86_64")]
                    Path::Avx512 => unsafe { $avx512::<false>(p, s, ds, ca, 0.0) },
                    #[cfg(target_arch = "x86_64")]
                    Path::Avx2Fma => unsafe { $avx2::<false>(p, s, ds, ca, 0.0) },
                    #[cfg(not(target_arch = "x86_64"))]
                    _ => unreachable!(),
                }
            }

            fn tanh_d1_scaled_on(
                path: Path,
                p: &[$t],
                s: &mut [$t],
                ds: &mut [$t],
                ca: &mut [$t],
                mv: $t,
            ) {
                let n = p.len();
                assert!(
                    s.len() == n && ds.len() == n && ca.len() == n,
                    "tanh_d1_scaled: slice lengths differ"
                );
                assert!(
                    path.available(),
                    "tanh_d1_scaled: {path:?} unavailable here"
                );
                match path {
                    Path::Portable => run_portable::<$t, true>(p, s, ds, ca, mv),
                    // SAFETY: lengths checked above, the CPU features at run time.
                    #[cfg(target_arch = "x86_64")]
                    Path::Avx512 => unsafe { $avx512::<true>(p, s, ds, ca, mv) },
                    #[cfg(target_arch = "x86_64")]
                    Path::Avx2Fma => unsafe { $avx2::<true>(p, s, ds, ca, mv) },
                    #[cfg(not(target_arch = "x86_64"))]
                    _ => unreachable!(),
                }
            }
        }
    };
}
vtanh_for!(f64, avx512_f64, avx2_f64);
vtanh_for!(f32, avx512_f32, avx2_f32);

#[cfg(test)]
mod tests;
