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
//! One generic body (`tanh_lanes`) over the lane trait [`crate::cpu::Simd`], run on the
//! token of each [`Path`]: AVX-512F (+VL; 8 f64 or 16 f32 lanes, masked loads and stores
//! for the tail), AVX2 + FMA (two ymm halves per 64-byte vector; the tail through a
//! zero-padded copy) and portable arrays (any CPU); [`Path::best`] is the instruction set
//! of [`crate::cpu::isa`]. (Before the `cpu` layer, the AVX2 path was the single-lane
//! portable loop compiled with AVX2 + FMA and vectorized by LLVM.) All operations are
//! correctly rounded IEEE operations (fused multiply-adds through `mul_add` in the
//! portable code), so every path gives the same bits: results do not depend on the CPU. The price: the baseline
//! x86-64 build of the portable code calls libm's `fma` per multiply-add (about 4x
//! slower than scalar libm tanh), which x86-64 only runs on CPUs without AVX2 + FMA
//! (on aarch64, FMA is baseline).
//!
//! `cargo bench --bench tanh` times the paths against per-element libm (N = 20000, in
//! cache, one thread; a shared Xeon with AVX-512, ns per element, best run; loaded runs
//! were up to 1.5x slower on every path): f64 libm 15.7, AVX-512 1.29,
//! AVX2 + FMA 2.4; f32 libm 16.5, AVX-512 0.48, AVX2 + FMA 0.90.

#![allow(clippy::excessive_precision)] // Cephes' coefficients, as published.

use crate::cpu::{Avx2, Avx512, Float, Portable, Simd, Token, WithSimd};

/// The element types, with their constants.
trait Elem: Float {
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

/// tanh of each lane (see the module docs for the approximation).
#[inline(always)]
fn tanh_lanes<T: Elem, S: Simd<T>>(s: S, x: S::V) -> S::V {
    let one = s.splat(T::ONE);
    let a = s.abs(x);
    // a < 0.625: tanh a = a + a * (z P(z)) / Q(z).
    let z = s.mul(a, a);
    let pz = s.fma(
        s.fma(s.splat(T::P[0]), z, s.splat(T::P[1])),
        z,
        s.splat(T::P[2]),
    );
    let qz = s.fma(
        s.fma(s.add(z, s.splat(T::Q[0])), z, s.splat(T::Q[1])),
        z,
        s.splat(T::Q[2]),
    );
    // a >= 0.625: tanh a = 1 - 2 / (exp(2a) + 1), exp(y) = 2^k exp(r).
    let c = s.min_keep_nan(s.splat(T::CLAMP), a);
    let y = s.add(c, c);
    let kk = s.fma(y, s.splat(T::LOG2E), s.splat(T::SHIFT));
    let k = s.sub(kk, s.splat(T::SHIFT));
    let r = s.fma(
        k,
        s.splat(T::NEG_LN2_LO),
        s.fma(k, s.splat(T::NEG_LN2_HI), y),
    );
    let mut e = s.splat(T::EXP[0]);
    for &cj in &T::EXP[1..] {
        e = s.fma(e, r, s.splat(cj));
    }
    let e = s.mul(e, s.pow2(kk));
    // One division for both branches.
    let small = s.lt(a, s.splat(T::SMALL));
    let num = s.select(small, s.mul(z, pz), s.splat(T::TWO));
    let den = s.select(small, qz, s.add(e, one));
    let q = s.div(num, den);
    let t = s.select(small, s.fma(a, q, a), s.sub(one, q));
    s.with_sign_of(t, x)
}

/// `s = tanh(p)`, `ds = 1 - s*s`, `ca = mv * s` on one vector.
#[inline(always)]
fn lanes_step<T: Elem, S: Simd<T>>(s: S, x: S::V, mv: S::V) -> (S::V, S::V, S::V) {
    let t = tanh_lanes::<T, S>(s, x);
    let d = s.sub(s.splat(T::ONE), s.mul(t, t));
    (t, d, s.mul(mv, t))
}

/// The slice loop over full vectors, then one partial vector for the tail. With `FULL`,
/// writes s, ds and ca; without, only s (ds and ca are not touched and may be empty).
/// Panics unless the slices it writes have the length of `p`.
#[inline(always)]
fn run_vec<T: Elem, S: Simd<T>, const FULL: bool>(
    sd: S,
    p: &[T],
    s: &mut [T],
    ds: &mut [T],
    ca: &mut [T],
    mv: T,
) {
    let n = p.len();
    assert!(s.len() == n && (!FULL || (ds.len() == n && ca.len() == n)));
    let (pp, sp, dp, cp) = (p.as_ptr(), s.as_mut_ptr(), ds.as_mut_ptr(), ca.as_mut_ptr());
    let m = sd.splat(mv);
    let mut i = 0;
    // SAFETY: every slice written has n elements (asserted above), and each access is of
    // the W elements from i < n - W + 1, or of the n - i < W from i.
    unsafe {
        while i + S::W <= n {
            let x = sd.load(pp.add(i));
            if FULL {
                let (t, d, c) = lanes_step::<T, S>(sd, x, m);
                sd.store(sp.add(i), t);
                sd.store(dp.add(i), d);
                sd.store(cp.add(i), c);
            } else {
                sd.store(sp.add(i), tanh_lanes::<T, S>(sd, x));
            }
            i += S::W;
        }
        if i < n {
            let r = n - i;
            let x = sd.load_part(pp.add(i), r);
            if FULL {
                let (t, d, c) = lanes_step::<T, S>(sd, x, m);
                sd.store_part(sp.add(i), t, r);
                sd.store_part(dp.add(i), d, r);
                sd.store_part(cp.add(i), c, r);
            } else {
                sd.store_part(sp.add(i), tanh_lanes::<T, S>(sd, x), r);
            }
        }
    }
}

/// [`run_vec`] as a generic function over the instruction set.
struct Run<'a, T, const FULL: bool> {
    p: &'a [T],
    s: &'a mut [T],
    ds: &'a mut [T],
    ca: &'a mut [T],
    mv: T,
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
            Path::Avx512 => Avx512::try_new().is_some(),
            Path::Avx2Fma => Avx2::try_new().is_some(),
        }
    }

    /// Runs `f` on this path. Panics if the CPU cannot run it.
    fn run<F: WithSimd>(self, f: F) -> F::Output {
        let no = || -> ! { panic!("tanh_slice: {self:?} unavailable here") };
        match self {
            Path::Portable => Portable.vectorize(f),
            Path::Avx512 => Avx512::try_new().unwrap_or_else(|| no()).vectorize(f),
            Path::Avx2Fma => Avx2::try_new().unwrap_or_else(|| no()).vectorize(f),
        }
    }

    /// The path [`crate::model::Real::tanh_d1_scaled`] takes on this CPU: the instruction
    /// set of [`crate::cpu::isa`] (AVX-512, else AVX2 + FMA, else portable;
    /// `RESLIM_NO_AVX512`, `RESLIM_NO_AVX2` step down).
    pub fn best() -> Path {
        match crate::cpu::isa() {
            crate::cpu::Isa::Avx512 => Path::Avx512,
            crate::cpu::Isa::Avx2Fma => Path::Avx2Fma,
            crate::cpu::Isa::Generic => Path::Portable,
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
    ($t:ty) => {
        impl<const FULL: bool> WithSimd for Run<'_, $t, FULL> {
            type Output = ();
            #[inline(always)]
            fn with_simd<S: Token>(self, sd: S) {
                run_vec::<$t, S, FULL>(sd, self.p, self.s, self.ds, self.ca, self.mv)
            }
        }
        impl VTanh for $t {
            fn tanh_on(path: Path, p: &[$t], s: &mut [$t]) {
                assert!(s.len() == p.len(), "tanh_slice: slice lengths differ");
                let (ds, ca): (&mut [$t], &mut [$t]) = (&mut [], &mut []);
                let mv = 0.0;
                path.run(Run::<$t, false> { p, s, ds, ca, mv })
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
                path.run(Run::<$t, true> { p, s, ds, ca, mv })
            }
        }
    };
}
vtanh_for!(f64);
vtanh_for!(f32);

#[cfg(test)]
mod tests;
