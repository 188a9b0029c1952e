//! [`Simd<T>`], the lane operations, and their implementations: portable arrays, AVX-512F
//! (+ VL) and AVX2 + FMA, each generated for f64 and f32 by one macro.

#[cfg(target_arch = "x86_64")]
use super::{Avx2, Avx512};
use super::{Float, Portable};

/// The lane operations on 64 bytes of lanes of `T` (8 f64 or 16 f32), for the token
/// `Self`. All are exact or correctly rounded IEEE operations, so generic code over them
/// gives the same bits on every implementation. The arithmetic is safe (the token proves
/// the instruction set); the loads and stores are `unsafe fn` because they dereference
/// raw pointers, whose extent their caller proves.
pub(crate) trait Simd<T: Float>: Copy {
    type V: Copy;
    /// A lane mask ([`Simd::lt`], [`Simd::select`]).
    type M: Copy;
    /// Lanes per vector.
    const W: usize;
    /// Vectors that fit in the register file (8 where each vector is two of 16 ymm
    /// registers).
    const REGISTERS: usize;
    fn zero(self) -> Self::V;
    fn splat(self, x: T) -> Self::V;
    /// `W` elements from `p` (any alignment).
    ///
    /// # Safety
    /// `p .. p + W` must be readable.
    unsafe fn load(self, p: *const T) -> Self::V;
    /// Stores `W` elements at `p` (any alignment).
    ///
    /// # Safety
    /// `p .. p + W` must be writable.
    unsafe fn store(self, p: *mut T, v: Self::V);
    /// The first `n < W` lanes from `p`, the others zero.
    ///
    /// # Safety
    /// `p .. p + n` must be readable.
    unsafe fn load_part(self, p: *const T, n: usize) -> Self::V;
    /// Stores the first `n < W` lanes at `p`, nothing else.
    ///
    /// # Safety
    /// `p .. p + n` must be writable.
    unsafe fn store_part(self, p: *mut T, v: Self::V, n: usize);
    fn add(self, a: Self::V, b: Self::V) -> Self::V;
    fn sub(self, a: Self::V, b: Self::V) -> Self::V;
    fn mul(self, a: Self::V, b: Self::V) -> Self::V;
    fn div(self, a: Self::V, b: Self::V) -> Self::V;
    /// `a * b + c`, rounded once.
    fn fma(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    fn abs(self, a: Self::V) -> Self::V;
    /// `a < b` (false where either is NaN).
    fn lt(self, a: Self::V, b: Self::V) -> Self::M;
    /// `m ? a : b`.
    fn select(self, m: Self::M, a: Self::V, b: Self::V) -> Self::V;
    /// `c < a ? c : a` (so NaN in `a` is kept).
    fn min_keep_nan(self, c: Self::V, a: Self::V) -> Self::V;
    /// 2^k, for `kk = k + 1.5 * 2^(mantissa bits)` (as a float, the integer k in its low
    /// mantissa bits); k + bias must be a valid exponent.
    fn pow2(self, kk: Self::V) -> Self::V;
    /// `t` (non-negative) with the sign bit of `x`.
    fn with_sign_of(self, t: Self::V, x: Self::V) -> Self::V;
    /// Sum of the lanes by a fixed halving tree ([`tree_sum`]).
    fn reduce(self, v: Self::V) -> T;
    /// A hint to fetch the cache line of `p` (any address; never faults).
    #[inline(always)]
    fn prefetch(self, _p: *const T) {}
}

/// The sum of `a` by a halving tree: lanes `k` and `k + w/2` added, for w = W, W/2, ...
#[inline(always)]
pub(crate) fn tree_sum<T: Float, const W: usize>(mut a: [T; W]) -> T {
    let mut w = W;
    while w > 1 {
        w /= 2;
        for k in 0..w {
            let x = a[k + w];
            a[k] += x;
        }
    }
    a[0]
}

/// Arrays of 64 bytes of lanes, any CPU: multiply-adds through `mul_add`, correctly
/// rounded everywhere (a libm call per element on x86-64 without FMA).
macro_rules! portable {
    ($t:ty, $w:literal, $bias:literal, $mant:literal) => {
        impl Simd<$t> for Portable {
            type V = [$t; $w];
            type M = [bool; $w];
            const W: usize = $w;
            const REGISTERS: usize = 16;
            #[inline(always)]
            fn zero(self) -> Self::V {
                [0.0; $w]
            }
            #[inline(always)]
            fn splat(self, x: $t) -> Self::V {
                [x; $w]
            }
            #[inline(always)]
            unsafe fn load(self, p: *const $t) -> Self::V {
                // SAFETY: the caller's.
                unsafe { std::ptr::read_unaligned(p as *const [$t; $w]) }
            }
            #[inline(always)]
            unsafe fn store(self, p: *mut $t, v: Self::V) {
                // SAFETY: the caller's.
                unsafe { std::ptr::write_unaligned(p as *mut [$t; $w], v) }
            }
            #[inline(always)]
            unsafe fn load_part(self, p: *const $t, n: usize) -> Self::V {
                let mut a = [0.0; $w];
                // SAFETY: the caller's; n < W fit in `a`.
                unsafe { std::ptr::copy_nonoverlapping(p, a.as_mut_ptr(), n) };
                a
            }
            #[inline(always)]
            unsafe fn store_part(self, p: *mut $t, v: Self::V, n: usize) {
                // SAFETY: the caller's; n < W.
                unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), p, n) }
            }
            #[inline(always)]
            fn add(self, a: Self::V, b: Self::V) -> Self::V {
                std::array::from_fn(|k| a[k] + b[k])
            }
            #[inline(always)]
            fn sub(self, a: Self::V, b: Self::V) -> Self::V {
                std::array::from_fn(|k| a[k] - b[k])
            }
            #[inline(always)]
            fn mul(self, a: Self::V, b: Self::V) -> Self::V {
                std::array::from_fn(|k| a[k] * b[k])
            }
            #[inline(always)]
            fn div(self, a: Self::V, b: Self::V) -> Self::V {
                std::array::from_fn(|k| a[k] / b[k])
            }
            #[inline(always)]
            fn fma(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V {
                std::array::from_fn(|k| a[k].mul_add(b[k], c[k]))
            }
            #[inline(always)]
            fn abs(self, a: Self::V) -> Self::V {
                std::array::from_fn(|k| a[k].abs())
            }
            #[inline(always)]
            fn lt(self, a: Self::V, b: Self::V) -> Self::M {
                std::array::from_fn(|k| a[k] < b[k])
            }
            #[inline(always)]
            fn select(self, m: Self::M, a: Self::V, b: Self::V) -> Self::V {
                std::array::from_fn(|k| if m[k] { a[k] } else { b[k] })
            }
            #[inline(always)]
            fn min_keep_nan(self, c: Self::V, a: Self::V) -> Self::V {
                std::array::from_fn(|k| if c[k] < a[k] { c[k] } else { a[k] })
            }
            #[inline(always)]
            fn pow2(self, kk: Self::V) -> Self::V {
                std::array::from_fn(|k| {
                    <$t>::from_bits(kk[k].to_bits().wrapping_add($bias) << $mant)
                })
            }
            #[inline(always)]
            fn with_sign_of(self, t: Self::V, x: Self::V) -> Self::V {
                let sign = (-0.0 as $t).to_bits();
                std::array::from_fn(|k| <$t>::from_bits(t[k].to_bits() | (x[k].to_bits() & sign)))
            }
            #[inline(always)]
            fn reduce(self, v: Self::V) -> $t {
                tree_sum(v)
            }
        }
    };
}
portable!(f64, 8, 1023, 52);
portable!(f32, 16, 127, 23);

/// An intrinsic call in a lane operation of [`Avx512`] or [`Avx2`], on registers only.
macro_rules! proven {
    ($e:expr) => {
        // SAFETY: the intrinsic needs the instruction set of the token `self`, which
        // exists only where `try_new` found it on this CPU; it reads no memory.
        unsafe { $e }
    };
}

/// AVX-512F (+ VL) intrinsics on one zmm register; masks are `__mmask8`/`__mmask16`.
#[cfg(target_arch = "x86_64")]
macro_rules! avx512 {
    ($t:ty, $v:ty, $m:ty, $w:literal, $int:ty, $bias:literal, $mant:literal,
     $setzero:ident, $set1:ident, $loadu:ident, $storeu:ident, $maskz_loadu:ident,
     $mask_storeu:ident, $add:ident, $sub:ident, $mul:ident, $div:ident, $fmadd:ident,
     $abs:ident, $cmp_mask:ident, $blend:ident, $min:ident, $to_int:ident, $of_int:ident,
     $add_i:ident, $set1_i:ident, $slli:ident) => {
        impl Simd<$t> for Avx512 {
            type V = $v;
            type M = $m;
            const W: usize = $w;
            const REGISTERS: usize = 32;
            #[inline(always)]
            fn zero(self) -> $v {
                proven!($setzero())
            }
            #[inline(always)]
            fn splat(self, x: $t) -> $v {
                proven!($set1(x))
            }
            #[inline(always)]
            unsafe fn load(self, p: *const $t) -> $v {
                // SAFETY: the caller's (memory); the token's (AVX-512F).
                unsafe { $loadu(p) }
            }
            #[inline(always)]
            unsafe fn store(self, p: *mut $t, v: $v) {
                // SAFETY: as for `load`.
                unsafe { $storeu(p, v) }
            }
            #[inline(always)]
            unsafe fn load_part(self, p: *const $t, n: usize) -> $v {
                // SAFETY: as for `load`; the masked-off lanes are not accessed.
                unsafe { $maskz_loadu(((1u32 << n) - 1) as $m, p) }
            }
            #[inline(always)]
            unsafe fn store_part(self, p: *mut $t, v: $v, n: usize) {
                // SAFETY: as for `load_part`.
                unsafe { $mask_storeu(p, ((1u32 << n) - 1) as $m, v) }
            }
            #[inline(always)]
            fn add(self, a: $v, b: $v) -> $v {
                proven!($add(a, b))
            }
            #[inline(always)]
            fn sub(self, a: $v, b: $v) -> $v {
                proven!($sub(a, b))
            }
            #[inline(always)]
            fn mul(self, a: $v, b: $v) -> $v {
                proven!($mul(a, b))
            }
            #[inline(always)]
            fn div(self, a: $v, b: $v) -> $v {
                proven!($div(a, b))
            }
            #[inline(always)]
            fn fma(self, a: $v, b: $v, c: $v) -> $v {
                proven!($fmadd(a, b, c))
            }
            #[inline(always)]
            fn abs(self, a: $v) -> $v {
                proven!($abs(a))
            }
            #[inline(always)]
            fn lt(self, a: $v, b: $v) -> $m {
                proven!($cmp_mask::<_CMP_LT_OQ>(a, b))
            }
            #[inline(always)]
            fn select(self, m: $m, a: $v, b: $v) -> $v {
                proven!($blend(m, b, a))
            }
            #[inline(always)]
            fn min_keep_nan(self, c: $v, a: $v) -> $v {
                // vminp[sd] returns its second operand when either is NaN.
                proven!($min(c, a))
            }
            #[inline(always)]
            fn pow2(self, kk: $v) -> $v {
                proven!($of_int($slli::<$mant>($add_i($to_int(kk), $set1_i($bias)))))
            }
            #[inline(always)]
            fn with_sign_of(self, t: $v, x: $v) -> $v {
                proven!({
                    let sign = _mm512_and_si512($to_int(x), $set1_i(<$int>::MIN));
                    $of_int(_mm512_or_si512($to_int(t), sign))
                })
            }
            #[inline(always)]
            fn reduce(self, v: $v) -> $t {
                let mut a = [0.0 as $t; $w];
                // SAFETY: `a` holds W elements.
                unsafe { self.store(a.as_mut_ptr(), v) };
                tree_sum(a)
            }
            #[inline(always)]
            fn prefetch(self, p: *const $t) {
                // A hint: never faults, whatever the address.
                proven!(_mm_prefetch::<_MM_HINT_T0>(p as *const i8))
            }
        }
    };
}

/// AVX2 + FMA intrinsics on 64 bytes as two ymm halves (so the lane order, and with it
/// every bit, is that of [`Avx512`]); masks are vectors of all-ones lanes.
#[cfg(target_arch = "x86_64")]
macro_rules! avx2 {
    ($t:ty, $v:ty, $w:literal, $h:literal, $bias:literal, $mant:literal,
     $setzero:ident, $set1:ident, $loadu:ident, $storeu:ident, $add:ident, $sub:ident,
     $mul:ident, $div:ident, $fmadd:ident, $and:ident, $or:ident, $andnot:ident,
     $cmp:ident, $blendv:ident, $min:ident, $to_int:ident, $of_int:ident, $add_i:ident,
     $set1_i:ident, $slli:ident) => {
        impl Simd<$t> for Avx2 {
            type V = [$v; 2];
            type M = [$v; 2];
            const W: usize = $w;
            // Each vector is two of the 16 ymm registers.
            const REGISTERS: usize = 8;
            #[inline(always)]
            fn zero(self) -> Self::V {
                proven!([$setzero(), $setzero()])
            }
            #[inline(always)]
            fn splat(self, x: $t) -> Self::V {
                let v = proven!($set1(x));
                [v, v]
            }
            #[inline(always)]
            unsafe fn load(self, p: *const $t) -> Self::V {
                // SAFETY: the caller's (memory); the token's (AVX).
                unsafe { [$loadu(p), $loadu(p.add($h))] }
            }
            #[inline(always)]
            unsafe fn store(self, p: *mut $t, v: Self::V) {
                // SAFETY: as for `load`.
                unsafe {
                    $storeu(p, v[0]);
                    $storeu(p.add($h), v[1]);
                }
            }
            #[inline(always)]
            unsafe fn load_part(self, p: *const $t, n: usize) -> Self::V {
                let mut a = [0.0 as $t; $w];
                // SAFETY: the caller's; n < W fit in `a`, which `load` then reads.
                unsafe {
                    std::ptr::copy_nonoverlapping(p, a.as_mut_ptr(), n);
                    self.load(a.as_ptr())
                }
            }
            #[inline(always)]
            unsafe fn store_part(self, p: *mut $t, v: Self::V, n: usize) {
                let mut a = [0.0 as $t; $w];
                // SAFETY: `a` holds W elements; the caller's for `p`, n < W.
                unsafe {
                    self.store(a.as_mut_ptr(), v);
                    std::ptr::copy_nonoverlapping(a.as_ptr(), p, n);
                }
            }
            #[inline(always)]
            fn add(self, a: Self::V, b: Self::V) -> Self::V {
                proven!([$add(a[0], b[0]), $add(a[1], b[1])])
            }
            #[inline(always)]
            fn sub(self, a: Self::V, b: Self::V) -> Self::V {
                proven!([$sub(a[0], b[0]), $sub(a[1], b[1])])
            }
            #[inline(always)]
            fn mul(self, a: Self::V, b: Self::V) -> Self::V {
                proven!([$mul(a[0], b[0]), $mul(a[1], b[1])])
            }
            #[inline(always)]
            fn div(self, a: Self::V, b: Self::V) -> Self::V {
                proven!([$div(a[0], b[0]), $div(a[1], b[1])])
            }
            #[inline(always)]
            fn fma(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V {
                proven!([$fmadd(a[0], b[0], c[0]), $fmadd(a[1], b[1], c[1])])
            }
            #[inline(always)]
            fn abs(self, a: Self::V) -> Self::V {
                let sign = <Self as Simd<$t>>::splat(self, -0.0);
                proven!([$andnot(sign[0], a[0]), $andnot(sign[1], a[1])])
            }
            #[inline(always)]
            fn lt(self, a: Self::V, b: Self::V) -> Self::M {
                proven!([
                    $cmp::<_CMP_LT_OQ>(a[0], b[0]),
                    $cmp::<_CMP_LT_OQ>(a[1], b[1])
                ])
            }
            #[inline(always)]
            fn select(self, m: Self::M, a: Self::V, b: Self::V) -> Self::V {
                proven!([$blendv(b[0], a[0], m[0]), $blendv(b[1], a[1], m[1])])
            }
            #[inline(always)]
            fn min_keep_nan(self, c: Self::V, a: Self::V) -> Self::V {
                // vminp[sd] returns its second operand when either is NaN.
                proven!([$min(c[0], a[0]), $min(c[1], a[1])])
            }
            #[inline(always)]
            fn pow2(self, kk: Self::V) -> Self::V {
                proven!({
                    let b = $set1_i($bias);
                    [
                        $of_int($slli::<$mant>($add_i($to_int(kk[0]), b))),
                        $of_int($slli::<$mant>($add_i($to_int(kk[1]), b))),
                    ]
                })
            }
            #[inline(always)]
            fn with_sign_of(self, t: Self::V, x: Self::V) -> Self::V {
                let sign = <Self as Simd<$t>>::splat(self, -0.0);
                proven!([
                    $or(t[0], $and(x[0], sign[0])),
                    $or(t[1], $and(x[1], sign[1]))
                ])
            }
            #[inline(always)]
            fn reduce(self, v: Self::V) -> $t {
                let mut a = [0.0 as $t; $w];
                // SAFETY: `a` holds W elements.
                unsafe { self.store(a.as_mut_ptr(), v) };
                tree_sum(a)
            }
            #[inline(always)]
            fn prefetch(self, p: *const $t) {
                // A hint: never faults, whatever the address.
                proven!(_mm_prefetch::<_MM_HINT_T0>(p as *const i8))
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Avx2, Avx512, Simd, tree_sum};
    use std::arch::x86_64::*;

    avx512!(
        f64,
        __m512d,
        __mmask8,
        8,
        i64,
        1023,
        52,
        _mm512_setzero_pd,
        _mm512_set1_pd,
        _mm512_loadu_pd,
        _mm512_storeu_pd,
        _mm512_maskz_loadu_pd,
        _mm512_mask_storeu_pd,
        _mm512_add_pd,
        _mm512_sub_pd,
        _mm512_mul_pd,
        _mm512_div_pd,
        _mm512_fmadd_pd,
        _mm512_abs_pd,
        _mm512_cmp_pd_mask,
        _mm512_mask_blend_pd,
        _mm512_min_pd,
        _mm512_castpd_si512,
        _mm512_castsi512_pd,
        _mm512_add_epi64,
        _mm512_set1_epi64,
        _mm512_slli_epi64
    );
    avx512!(
        f32,
        __m512,
        __mmask16,
        16,
        i32,
        127,
        23,
        _mm512_setzero_ps,
        _mm512_set1_ps,
        _mm512_loadu_ps,
        _mm512_storeu_ps,
        _mm512_maskz_loadu_ps,
        _mm512_mask_storeu_ps,
        _mm512_add_ps,
        _mm512_sub_ps,
        _mm512_mul_ps,
        _mm512_div_ps,
        _mm512_fmadd_ps,
        _mm512_abs_ps,
        _mm512_cmp_ps_mask,
        _mm512_mask_blend_ps,
        _mm512_min_ps,
        _mm512_castps_si512,
        _mm512_castsi512_ps,
        _mm512_add_epi32,
        _mm512_set1_epi32,
        _mm512_slli_epi32
    );
    avx2!(
        f64,
        __m256d,
        8,
        4,
        1023,
        52,
        _mm256_setzero_pd,
        _mm256_set1_pd,
        _mm256_loadu_pd,
        _mm256_storeu_pd,
        _mm256_add_pd,
        _mm256_sub_pd,
        _mm256_mul_pd,
        _mm256_div_pd,
        _mm256_fmadd_pd,
        _mm256_and_pd,
        _mm256_or_pd,
        _mm256_andnot_pd,
        _mm256_cmp_pd,
        _mm256_blendv_pd,
        _mm256_min_pd,
        _mm256_castpd_si256,
        _mm256_castsi256_pd,
        _mm256_add_epi64,
        _mm256_set1_epi64x,
        _mm256_slli_epi64
    );
    avx2!(
        f32,
        __m256,
        16,
        8,
        127,
        23,
        _mm256_setzero_ps,
        _mm256_set1_ps,
        _mm256_loadu_ps,
        _mm256_storeu_ps,
        _mm256_add_ps,
        _mm256_sub_ps,
        _mm256_mul_ps,
        _mm256_div_ps,
        _mm256_fmadd_ps,
        _mm256_and_ps,
        _mm256_or_ps,
        _mm256_andnot_ps,
        _mm256_cmp_ps,
        _mm256_blendv_ps,
        _mm256_min_ps,
        _mm256_castps_si256,
        _mm256_castsi256_ps,
        _mm256_add_epi32,
        _mm256_set1_epi32,
        _mm256_slli_epi32
    );
}
