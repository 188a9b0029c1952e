//! The two memory-streaming kernels the GD step is made of.
//!
//! Both work on a weight matrix stored as rows of length D (`rows[m*ld .. m*ld + D]`) and
//! on N "sample vectors" of length D (`vecs[n*ld_v ..]`), which stay in cache:
//!
//! - [`dot_rows`] (row-parallel): `out[m][n] = scale * <row_m, vec_n>`, and optionally, in
//!   the same pass over the row, `row_m -= sum_n coef[m][n] vec_n`. Used for the forward
//!   pre-activations `p = m_U U^T h` (no update) and for the fused backward pass over V,
//!   `q = m_V V^T g` together with `V -= lr_V m_V g sigma(p)^T`.
//! - [`axpy_rows`] (column-parallel): `tgt_n += sum_m a[m][n] row_m` over all rows, and
//!   optionally `row_m -= sum_n b[m][n] vec_n`. Used for the forward residual update
//!   `h_{l+1} = h_l + m_V V sigma(p)` (no update) and for the fused backward pass over U,
//!   `g_l = g_{l+1} + m_U U G` together with `U -= lr_U m_U h G^T`.
//!
//! Each weight is therefore read once by the forward pass and read and written once by
//! the backward pass: 3 * 2 * L*M*D values per step, the minimum (ARCHITECTURE.md, "The GD step and its bytes").
//!
//! The dot kernels read the sample vectors from a copy padded to whole cache lines
//! ([`on_lines`]) where their rows would straddle lines: the values and the order are the
//! same, only the split loads go.
//!
//! Determinism: every output entry is summed in an order fixed by the data layout alone
//! (lane-wise partial sums over D in chunks of W = 64 bytes, reduced by a fixed tree,
//! plus the last `D % W` columns in one chain; sums over m in increasing m), so results
//! are bitwise independent of the number of threads and of how rows or column tiles are
//! distributed. The test `kernels_follow_the_documented_order_bit_for_bit` writes this
//! order out with scalars.
//!
//! The last `D % W` columns keep the order of a scalar loop but are computed with vector
//! instructions: the dot products across vectors ([`dot_tail`]), the updates and the
//! axpy through zero-padded chunks ([`update_tail`], [`axpy_tail`]). Column by column,
//! they had cost up to half of an axpy pass (f32, D = 301: 13 of 301 columns).
//!
//! # Instruction sets
//!
//! One generic body per kernel over the lane trait [`crate::cpu::Simd`], compiled three
//! times and picked at run time by [`crate::cpu::dispatch`] (on [`crate::cpu::isa`]):
//!
//! - AVX-512F + VL: one zmm register per 64-byte vector, 32 registers;
//! - AVX2 + FMA (e.g. AMD Zen 2/3, Intel before Ice Lake): each 64-byte vector
//!   is two ymm halves, so the lane order, and with it every bit, is the same as on
//!   AVX-512; only 16 registers, so smaller register tiles ([`Tiles::DOT_GROUP`] and
//!   the other tile constants), and the dot's coefficients broadcast at each use (see
//!   `opaque`; the axpy broadcasts them so on every instruction set, [`axpy_blk`]);
//! - portable (arrays of 64 bytes, any CPU), whose `mul_add` is a libm call per
//!   element on x86-64 without FMA: about 20x slower than the AVX2 build (M = D = 500:
//!   1.8 s per step against 0.056-0.086 s, on the 2-core Zen 3 machine).
//!
//! All three use fused multiply-adds, each correctly rounded, in the same order per
//! entry, so they give identical bits (tested for f64 and f32); a run does not depend on
//! the CPU it ran on.
//!
//! With 16 registers the kernels are bound by loads from L1 rather than by multiply-adds
//! (a clean 2 x 2 tile in L1 ran at about one ymm multiply-add per cycle on Zen 3, half
//! the peak). A temporary A/B harness (M = D = 500, L = 50, 2 threads, each kernel's
//! GB/s over that of a plain parallel read or read-write of the same weights, median of
//! 15 interleaved rounds) chose the AVX2 tiles: read-only dot 0.64 with 2 rows x 3
//! vectors, 0.50 with 1 x 6 and 0.55 on row blocks and column segments; the blocked
//! dot with update ([`dot_blocked_n`], pairs of rows updated together) was the best of
//! its variants, if by less than the noise between rounds. The read-only axpy takes the
//! row blocks of [`axpy_blk`] up to 12 vectors on AVX2 (on AVX-512 both axpys take the
//! register tiles of [`axpy_tiles`], measured on an Intel Xeon; see there): timed
//! inside the step (M = D = 500, N = 10, 2 threads), its forward pass fell from 13-14 ms
//! with the register tiles of [`axpy_ro_impl`] to 9-10 ms, and the whole step from
//! about 60 to 53 ms; thin shapes of the f32 paper grid gained too (M = 100, D = 2000:
//! 0.86-0.88 s per task against 1.03-1.16 s, `cargo bench --bench task`). The microbench
//! of a lone kernel (`cargo bench --bench step`) had favoured the tiles.

#![allow(clippy::needless_range_loop)] // SIMD lanes and register arrays are indexed.

use crate::cpu::Par;
use crate::cpu::{Float, Simd, Token, WithSimd, dispatch};
use rayon::prelude::*;

/// Raw pointer that may cross threads; each user touches disjoint parts.
#[derive(Clone, Copy)]
struct Ptr<T>(*mut T);
unsafe impl<T> Send for Ptr<T> {}
unsafe impl<T> Sync for Ptr<T> {}

/// The register tiles of the kernels, by the size of the register file of the lanes
/// `S` ([`Simd::REGISTERS`]: 32 or 16 vectors, or 8 where each vector is two ymm halves).
trait Tiles<T: Float>: Simd<T> {
    /// Rows per read-only dot tile (1 or 2) and vectors per dot tile ...
    const DOT_ROWS: usize = 2;
    const DOT_GROUP: usize = if Self::REGISTERS > 8 { 12 } else { 3 };
    /// ... vectors per read-only axpy tile (from [`AXPY_TILED_FROM`] vectors on), and
    /// its chunks of W columns (1 or 2).
    const AXPY_GROUP: usize = if Self::REGISTERS > 8 { 12 } else { 6 };
    const AXPY_CHUNKS: usize = if Self::REGISTERS > 8 { 2 } else { 1 };
}

impl<T: Float, S: Simd<T>> Tiles<T> for S {}

/// One row against N vectors (N a compile-time constant so the accumulators live in
/// registers). Writes the N dot products; applies the update when `coef` is given.
#[inline(always)]
unsafe fn dot_row_n<T: Float, S: Tiles<T>, const N: usize>(
    s: S,
    row: *mut T,
    d: usize,
    vecs: *const T,
    ldv: usize,
    coef: Option<&[T]>,
    out: &mut [T],
) {
    unsafe {
        let w = S::W;
        let mut acc = [s.zero(); N];
        let mut c = [s.zero(); N];
        let mut cs = [T::zero(); N];
        if let Some(cf) = coef {
            for n in 0..N {
                cs[n] = cf[n];
                c[n] = s.splat(cf[n]);
            }
        }
        let mut i = 0;
        if coef.is_some() {
            while i + w <= d {
                let r = s.load(row.add(i));
                let mut upd = s.zero();
                for n in 0..N {
                    let v = s.load(vecs.add(n * ldv + i));
                    acc[n] = s.fma(r, v, acc[n]);
                    upd = s.fma(c[n], v, upd);
                }
                s.store(row.add(i), s.sub(r, upd));
                i += w;
            }
        } else {
            while i + w <= d {
                let r = s.load(row.add(i));
                for n in 0..N {
                    acc[n] = s.fma(r, s.load(vecs.add(n * ldv + i)), acc[n]);
                }
                i += w;
            }
        }
        let mut tail = [T::zero(); N];
        while i < d {
            let r = *row.add(i);
            let mut upd = T::zero();
            for n in 0..N {
                let v = *vecs.add(n * ldv + i);
                tail[n] = r.mul_add(v, tail[n]);
                upd = cs[n].mul_add(v, upd);
            }
            if coef.is_some() {
                *row.add(i) = r - upd;
            }
            i += 1;
        }
        for n in 0..N {
            out[n] = s.reduce(acc[n]) + tail[n];
        }
    }
}

/// Runtime-N fallback of [`dot_row_n`] for N > 12: vectors in groups of 8, the update in a
/// second sweep over the (cached) row, after all dot products have used the old row.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn dot_row_any<T: Float, S: Tiles<T>>(
    s: S,
    row: *mut T,
    d: usize,
    vecs: *const T,
    ldv: usize,
    n: usize,
    coef: Option<&[T]>,
    out: &mut [T],
) {
    unsafe {
        let mut n0 = 0;
        while n0 < n {
            let g = (n - n0).min(8);
            let v = vecs.add(n0 * ldv);
            let o = &mut out[n0..n0 + g];
            match g {
                8 => dot_row_n::<T, S, 8>(s, row, d, v, ldv, None, o),
                7 => dot_row_n::<T, S, 7>(s, row, d, v, ldv, None, o),
                6 => dot_row_n::<T, S, 6>(s, row, d, v, ldv, None, o),
                5 => dot_row_n::<T, S, 5>(s, row, d, v, ldv, None, o),
                4 => dot_row_n::<T, S, 4>(s, row, d, v, ldv, None, o),
                3 => dot_row_n::<T, S, 3>(s, row, d, v, ldv, None, o),
                2 => dot_row_n::<T, S, 2>(s, row, d, v, ldv, None, o),
                _ => dot_row_n::<T, S, 1>(s, row, d, v, ldv, None, o),
            }
            n0 += g;
        }
        if let Some(cf) = coef {
            for i in 0..d {
                let mut upd = T::zero();
                for (k, &c) in cf.iter().enumerate().take(n) {
                    upd += c * *vecs.add(k * ldv + i);
                }
                *row.add(i) = *row.add(i) - upd;
            }
        }
    }
}

/// How far ahead of its reads a kernel prefetches the weight rows. Ten FMAs per cache
/// line keep too few demand misses in flight to cover the memory latency; prefetching
/// about 2 KiB ahead does.
const PREFETCH_BYTES: usize = 4096;

/// Row stride of [`Tails::vt`]: room for two vectors' lanes (32 f32) from any group start.
const VT_STRIDE: usize = 28;

/// The sample vectors' last `d % W` columns (W = 64 bytes of lanes), laid out for the
/// dot kernels' tails: transposed, `vt[i * VT_STRIDE + n]` = column `dv + i` of vector
/// n, for the dot products across vectors ([`dot_tail`]), and as zero-padded chunks,
/// `vpad[n * 16 + i]`, for the update across columns ([`update_tail`]). Zero elsewhere.
/// Filled for N <= 12; with more vectors, the read-only tiles keep the scalar loop.
struct Tails<T> {
    vt: [T; 15 * VT_STRIDE],
    vpad: [T; 12 * 16],
}

impl<T: Float> Tails<T> {
    fn new(vecs: &[T], ldv: usize, d: usize, n: usize) -> Self {
        let w = 64 / std::mem::size_of::<T>();
        let (k, dv) = (d % w, d - d % w);
        let mut t = Tails {
            vt: [T::zero(); 15 * VT_STRIDE],
            vpad: [T::zero(); 12 * 16],
        };
        if n <= 12 {
            for g in 0..n {
                for i in 0..k {
                    let v = vecs[g * ldv + dv + i];
                    t.vt[i * VT_STRIDE + g] = v;
                    t.vpad[g * 16 + i] = v;
                }
            }
        }
        t
    }
}

/// The tails (columns `dv..d`) of the dot products of the row at `row` with the G
/// vectors from `g0`, exactly as the scalar loop gives them (`t = fma(r_i, v_i, t)` over
/// i in order, from zero), computed across the vectors: lane g is vector `g0 + g`.
#[inline(always)]
unsafe fn dot_tail<T: Float, S: Tiles<T>, const G: usize>(
    s: S,
    a: &DotArgs<T>,
    row: *const T,
    g0: usize,
) -> [T; G] {
    unsafe {
        let w = S::W;
        let k = a.d % w;
        let dv = a.d - k;
        if a.n > 12 {
            // Groups of many vectors (the read-only tiles): the scalar loop itself.
            let mut t = [T::zero(); G];
            for i in dv..a.d {
                let r = *row.add(i);
                for g in 0..G {
                    t[g] = r.mul_add(*a.vecs.add((g0 + g) * a.ldv + i), t[g]);
                }
            }
            return t;
        }
        let nv = G.div_ceil(w);
        let mut t = [s.zero(); 2];
        for i in 0..k {
            let r = s.splat(*row.add(dv + i));
            let vt = a.tails.vt.as_ptr().add(i * VT_STRIDE + g0);
            for j in 0..nv {
                t[j] = s.fma(r, s.load(vt.add(j * w)), t[j]);
            }
        }
        let mut lanes = [T::zero(); 32];
        for j in 0..nv {
            s.store(lanes.as_mut_ptr().add(j * w), t[j]);
        }
        std::array::from_fn(|g| lanes[g])
    }
}

/// `row_i -= sum_n cf[n] v_n,i` on the columns `dv..d` of the row at `row`, exactly as
/// the scalar loop does it (`u = fma(cf_n, v_ni, u)` over n in order, then `r - u`),
/// computed across the columns.
#[inline(always)]
unsafe fn update_tail<T: Float, S: Tiles<T>, const N: usize>(
    s: S,
    a: &DotArgs<T>,
    row: *mut T,
    cf: &[T],
) {
    unsafe {
        let w = S::W;
        let k = a.d % w;
        if k == 0 {
            return;
        }
        let dv = a.d - k;
        let mut u = s.zero();
        for n in 0..N {
            let v = s.load(a.tails.vpad.as_ptr().add(n * 16));
            u = s.fma(s.splat(cf[n]), v, u);
        }
        let mut r = [T::zero(); 16];
        for i in 0..k {
            r[i] = *row.add(dv + i);
        }
        s.store(r.as_mut_ptr(), s.sub(s.load(r.as_ptr()), u));
        for i in 0..k {
            *row.add(dv + i) = r[i];
        }
    }
}

/// `$f::<T, S, N>(args)` with the vector count `$n` as the compile-time constant N
/// (1 to 12: the register tiles' accumulators then live in registers), or `$other`
/// for any other count.
macro_rules! with_const_n {
    ($n:expr, $f:ident::<$t:ty, $s:ty>($($arg:expr),*), $other:expr) => {
        match $n {
            1 => $f::<$t, $s, 1>($($arg),*),
            2 => $f::<$t, $s, 2>($($arg),*),
            3 => $f::<$t, $s, 3>($($arg),*),
            4 => $f::<$t, $s, 4>($($arg),*),
            5 => $f::<$t, $s, 5>($($arg),*),
            6 => $f::<$t, $s, 6>($($arg),*),
            7 => $f::<$t, $s, 7>($($arg),*),
            8 => $f::<$t, $s, 8>($($arg),*),
            9 => $f::<$t, $s, 9>($($arg),*),
            10 => $f::<$t, $s, 10>($($arg),*),
            11 => $f::<$t, $s, 11>($($arg),*),
            12 => $f::<$t, $s, 12>($($arg),*),
            _ => $other,
        }
    };
}

#[inline(always)]
unsafe fn dot_rows_impl<T: Float, S: Tiles<T>>(s: S, a: &DotArgs<T>, m0: usize, m1: usize) {
    unsafe {
        let n = a.n;
        with_const_n!(n, dot_blocked_n::<T, S>(s, a, m0, m1), {
            for m in m0..m1 {
                let row = a.rows.0.add(m * a.ld);
                let out = std::slice::from_raw_parts_mut(a.out.0.add(m * n), n);
                let coef = a.coef.map(|c| &c[m * n..m * n + n]);
                dot_row_any::<T, S>(s, row, a.d, a.vecs, a.ldv, n, coef, out);
                if a.scale != T::one() {
                    for o in out.iter_mut() {
                        *o = *o * a.scale;
                    }
                }
            }
        })
    }
}

/// Read-only dot products of R (1 or 2) consecutive rows from `m` against G <= 12 of the
/// vectors starting at vector `g0`: the R x G lane accumulators live in registers, each
/// vector load feeds R multiply-adds. Per entry the same operations in the same order as
/// [`dot_row_n`] (lane-wise over D in chunks of W, then the tree and the tail chain).
#[inline(always)]
unsafe fn dot_ro_tile<T: Float, S: Tiles<T>, const R: usize, const G: usize>(
    s: S,
    a: &DotArgs<T>,
    m: usize,
    g0: usize,
) {
    unsafe {
        let w = S::W;
        let d = a.d;
        let dv = d - d % w;
        // Ahead along the row, and with 16 registers also past the rows of the next tile.
        let pf = PREFETCH_BYTES / std::mem::size_of::<T>()
            + if S::REGISTERS <= 8 { R * a.ld } else { 0 };
        let vecs = a.vecs.add(g0 * a.ldv);
        // Two named accumulator arrays (not [[V; G]; R]): LLVM keeps these in registers.
        let row0 = a.rows.0.add(m * a.ld) as *const T;
        let row1 = if R == 2 { row0.add(a.ld) } else { row0 };
        // A zero LLVM cannot see as a constant: its zero idiom (VEX vxorpd) confines the
        // accumulators to zmm0-15, and the tile then spills.
        let z = s.splat(std::hint::black_box(T::zero()));
        let mut acc0 = [z; G];
        let mut acc1 = [z; G];
        let mut i = 0;
        while i < dv {
            s.prefetch(row0.wrapping_add(i + pf));
            let r0 = s.load(row0.add(i));
            let r1 = if R == 2 {
                s.prefetch(row1.wrapping_add(i + pf));
                s.load(row1.add(i))
            } else {
                r0
            };
            for g in 0..G {
                let v = s.load(vecs.add(g * a.ldv + i));
                acc0[g] = s.fma(r0, v, acc0[g]);
                if R == 2 {
                    acc1[g] = s.fma(r1, v, acc1[g]);
                }
            }
            i += w;
        }
        for j in 0..R {
            let (row, acc) = if j == 0 { (row0, &acc0) } else { (row1, &acc1) };
            let tail = dot_tail::<T, S, G>(s, a, row, g0);
            for g in 0..G {
                let x = s.reduce(acc[g]) + tail[g];
                *a.out.0.add((m + j) * a.n + g0 + g) =
                    if a.scale != T::one() { x * a.scale } else { x };
            }
        }
    }
}

/// Read-only dot products of R (1 or 2) rows from `m` against all `a.n` vectors, in
/// balanced groups of at most [`Tiles::DOT_GROUP`] (20 vectors as 10 + 10, not 12 + 8; the
/// rows are re-read from cache for each further group).
#[inline(always)]
unsafe fn dot_ro_groups<T: Float, S: Tiles<T>, const R: usize>(s: S, a: &DotArgs<T>, m: usize) {
    unsafe {
        let groups = a.n.div_ceil(S::DOT_GROUP);
        let mut g0 = 0;
        for k in 0..groups {
            let g1 = a.n * (k + 1) / groups;
            match g1 - g0 {
                12 => dot_ro_tile::<T, S, R, 12>(s, a, m, g0),
                11 => dot_ro_tile::<T, S, R, 11>(s, a, m, g0),
                10 => dot_ro_tile::<T, S, R, 10>(s, a, m, g0),
                9 => dot_ro_tile::<T, S, R, 9>(s, a, m, g0),
                8 => dot_ro_tile::<T, S, R, 8>(s, a, m, g0),
                7 => dot_ro_tile::<T, S, R, 7>(s, a, m, g0),
                6 => dot_ro_tile::<T, S, R, 6>(s, a, m, g0),
                5 => dot_ro_tile::<T, S, R, 5>(s, a, m, g0),
                4 => dot_ro_tile::<T, S, R, 4>(s, a, m, g0),
                3 => dot_ro_tile::<T, S, R, 3>(s, a, m, g0),
                2 => dot_ro_tile::<T, S, R, 2>(s, a, m, g0),
                _ => dot_ro_tile::<T, S, R, 1>(s, a, m, g0),
            }
            g0 = g1;
        }
    }
}

/// Read-only [`dot_rows`] over rows [m0, m1): with 32 registers, when the N <= 12
/// vectors take more than [`DOT_RO_L1`] bytes, on row blocks and column segments
/// ([`dot_blocked_n`]; the AVX2 tiles measured better unblocked, module docs), whose
/// vector pieces stay in L1 (else every row pair re-reads them from L2: on a Zen 4 the
/// pass ran at 16-18 GB/s at every size); otherwise rows in pairs (one at a time where
/// the registers hold fewer than 12 vectors), the vectors in groups
/// ([`dot_ro_groups`]). The same bits either way.
#[inline(always)]
unsafe fn dot_ro_impl<T: Float, S: Tiles<T>>(s: S, a: &DotArgs<T>, m0: usize, m1: usize) {
    unsafe {
        if S::REGISTERS > 8 && a.n <= 12 && a.n * a.d * std::mem::size_of::<T>() > DOT_RO_L1 {
            with_const_n!(
                a.n,
                dot_blocked_n::<T, S>(s, a, m0, m1),
                unreachable!("at most 12 vectors")
            );
            return;
        }
        let mut m = m0;
        while m < m1 {
            if S::DOT_ROWS == 2 && m + 1 < m1 {
                dot_ro_groups::<T, S, 2>(s, a, m);
                m += 2;
            } else {
                dot_ro_groups::<T, S, 1>(s, a, m);
                m += 1;
            }
        }
    }
}

/// Bytes of vectors from which the read-only dot runs on column segments
/// ([`dot_ro_impl`]): half of a 32 KiB L1, the rest for the rows streaming past.
const DOT_RO_L1: usize = 16 << 10;

/// Rows per block of [`dot_blocked_n`].
const DOT_BLOCK: usize = 8;

/// L1 bytes the vectors' column segment may take in [`dot_blocked_n`].
const DOT_SEG_L1: usize = 8 << 10;

/// `p`, hidden from the optimizer: a load through it stays where it is written. A
/// coefficient broadcast from memory at each use costs one load; hoisted out of the loop,
/// N such splats spill on 16 registers and each use reloads 64 bytes.
#[inline(always)]
fn opaque<P>(p: *const P) -> *const P {
    let mut p = p;
    #[cfg(target_arch = "x86_64")]
    // SAFETY: an empty instruction; it only tells the compiler that `p` may change (the
    // pointer is not dereferenced in it).
    #[allow(clippy::pointers_in_nomem_asm_block)]
    unsafe {
        std::arch::asm!("/* {0} */", inout(reg) p, options(nomem, nostack, preserves_flags));
    }
    p
}

/// The read-only dot tile of [`dot_ro_tile`] on the columns [c0, c1) of a segment: the
/// R x G lane accumulators are loaded from and stored back to `acc` (R rows of `a.n`
/// vectors each, from vector g0), and the loop prefetches `pf[j] + (i - c0)` for row j
/// (the row it will read `2 R` rows later in [`dot_blocked_n`]'s order).
#[inline(always)]
unsafe fn dot_seg_tile<T: Float, S: Tiles<T>, const R: usize, const G: usize>(
    s: S,
    a: &DotArgs<T>,
    m: usize,
    g0: usize,
    (c0, c1): (usize, usize),
    acc: *mut S::V,
    pf: [*const T; 2],
) {
    unsafe {
        let w = S::W;
        let vecs = a.vecs.add(g0 * a.ldv);
        let row0 = a.rows.0.add(m * a.ld) as *const T;
        let row1 = if R == 2 { row0.add(a.ld) } else { row0 };
        let (acc0p, acc1p) = (acc.add(g0), acc.add(a.n + g0));
        let mut acc0 = [s.zero(); G];
        let mut acc1 = [s.zero(); G];
        for g in 0..G {
            acc0[g] = *acc0p.add(g);
            if R == 2 {
                acc1[g] = *acc1p.add(g);
            }
        }
        let mut i = c0;
        while i < c1 {
            s.prefetch(pf[0].wrapping_add(i - c0));
            let r0 = s.load(row0.add(i));
            let r1 = if R == 2 {
                s.prefetch(pf[1].wrapping_add(i - c0));
                s.load(row1.add(i))
            } else {
                r0
            };
            for g in 0..G {
                let v = s.load(vecs.add(g * a.ldv + i));
                acc0[g] = s.fma(r0, v, acc0[g]);
                if R == 2 {
                    acc1[g] = s.fma(r1, v, acc1[g]);
                }
            }
            i += w;
        }
        for g in 0..G {
            *acc0p.add(g) = acc0[g];
            if R == 2 {
                *acc1p.add(g) = acc1[g];
            }
        }
    }
}

/// `row_j -= sum_n cf[j][n] vec_n` on the columns [c0, c1) for the R rows from `m`, as
/// [`dot_row_n`] computes it per row: two chains (even and odd n), lane-wise. The rows
/// of a pair share each vector load; coefficients are broadcast at each use.
#[inline(always)]
unsafe fn update_seg<T: Float, S: Tiles<T>, const R: usize, const N: usize>(
    s: S,
    a: &DotArgs<T>,
    cf: &[T],
    m: usize,
    (c0, c1): (usize, usize),
) {
    unsafe {
        let w = S::W;
        let row0 = a.rows.0.add(m * a.ld);
        let row1 = if R == 2 { row0.add(a.ld) } else { row0 };
        let cp = cf.as_ptr().add(m * N);
        let mut i = c0;
        while i < c1 {
            let c = opaque(cp);
            let mut u0 = [s.zero(); 2];
            let mut u1 = [s.zero(); 2];
            for n in 0..N {
                let v = s.load(a.vecs.add(n * a.ldv + i));
                u0[n % 2] = s.fma(s.splat(*c.add(n)), v, u0[n % 2]);
                if R == 2 {
                    u1[n % 2] = s.fma(s.splat(*c.add(N + n)), v, u1[n % 2]);
                }
            }
            s.store(row0.add(i), s.sub(s.sub(s.load(row0.add(i)), u0[0]), u0[1]));
            if R == 2 {
                s.store(row1.add(i), s.sub(s.sub(s.load(row1.add(i)), u1[0]), u1[1]));
            }
            i += w;
        }
    }
}

/// The dot kernel with or without its update, for N <= 12 vectors (the dot with update
/// always; the read-only dot when the vectors exceed [`DOT_RO_L1`]): rows in blocks of
/// [`DOT_BLOCK`], columns in segments whose N vector pieces fit in [`DOT_SEG_L1`], so
/// that the vectors are read from L1 rather than from L2 for every row pair; per
/// segment, each row pair runs the register tiles over the vectors in groups (their
/// accumulators carried across segments in a stash on the stack), then its update. Per
/// entry the same operations in the same order as [`dot_row_n`] and [`dot_ro_tile`]:
/// lane-wise sums over D in chunks of W, the tree, the tail chain ([`dot_tail`]), then the
/// scale. Measured on the 2-core Zen 4 (AVX-512), `reslim bench` at M = D = 1000 and
/// 2000: the forward pass over U went from 16.6-17.7 to 21-25 GB/s and the backward pass
/// over V from 28 to 29-35 GB/s, against whole rows streamed with the vectors from L2.
#[inline(always)]
unsafe fn dot_blocked_n<T: Float, S: Tiles<T>, const N: usize>(
    s: S,
    a: &DotArgs<T>,
    m0: usize,
    m1: usize,
) {
    unsafe {
        let (w, d) = (S::W, a.d);
        let dv = d - d % w;
        let size = std::mem::size_of::<T>();
        let seg = (DOT_SEG_L1 / (N * size) / w * w).max(w);
        let mut stash = [[s.zero(); N]; DOT_BLOCK];
        let rows = |j: usize| a.rows.0.add(j * a.ld) as *const T;
        let mut b0 = m0;
        while b0 < m1 {
            let b1 = (b0 + DOT_BLOCK).min(m1);
            let nb = b1 - b0;
            for slot in stash.iter_mut() {
                *slot = [s.zero(); N];
            }
            let acc = stash.as_mut_ptr() as *mut S::V;
            let mut c0 = 0;
            while c0 < dv {
                let c1 = (c0 + seg).min(dv);
                let mut j = 0;
                while j < nb {
                    let r = if S::DOT_ROWS == 2 && j + 1 < nb { 2 } else { 1 };
                    // The pieces this loop reads 2 R rows later: further down the block,
                    // else at the next segment, else in the next block.
                    let ahead = |k: usize| {
                        let jj = j + 2 * r + k;
                        if jj < nb {
                            rows(b0 + jj).wrapping_add(c0)
                        } else if c0 + seg < dv {
                            rows(b0 + jj - nb).wrapping_add(c0 + seg)
                        } else {
                            rows(b1 + jj - nb)
                        }
                    };
                    let pf = [ahead(0), ahead(1)];
                    let mut g0 = 0;
                    let groups = N.div_ceil(S::DOT_GROUP);
                    for k in 0..groups {
                        let g1 = N * (k + 1) / groups;
                        let st = acc.add(j * N);
                        macro_rules! tile {
                            ($r:literal; $($g:literal)*) => {
                                match g1 - g0 {
                                    $($g => dot_seg_tile::<T, S, $r, $g>(
                                        s,
                                        a,
                                        b0 + j,
                                        g0,
                                        (c0, c1),
                                        st,
                                        pf,
                                    ),)*
                                    _ => dot_seg_tile::<T, S, $r, 1>(
                                        s,
                                        a,
                                        b0 + j,
                                        g0,
                                        (c0, c1),
                                        st,
                                        pf,
                                    ),
                                }
                            };
                        }
                        // Groups of at most `Tiles::DOT_GROUP` (12, or 3) vectors.
                        if r == 2 {
                            tile!(2; 12 11 10 9 8 7 6 5 4 3 2)
                        } else {
                            tile!(1; 12 11 10 9 8 7 6 5 4 3 2)
                        }
                        g0 = g1;
                    }
                    if let Some(cf) = a.coef {
                        if r == 2 {
                            update_seg::<T, S, 2, N>(s, a, cf, b0 + j, (c0, c1));
                        } else {
                            update_seg::<T, S, 1, N>(s, a, cf, b0 + j, (c0, c1));
                        }
                    }
                    j += r;
                }
                c0 = c1;
            }
            // Tails (d % W columns, before their update) and the reductions.
            for j in 0..nb {
                let m = b0 + j;
                let row = a.rows.0.add(m * a.ld);
                let tail = dot_tail::<T, S, N>(s, a, row, 0);
                if let Some(cf) = a.coef {
                    update_tail::<T, S, N>(s, a, row, &cf[m * N..]);
                }
                for n in 0..N {
                    let x = s.reduce(stash[j][n]) + tail[n];
                    *a.out.0.add(m * N + n) = if a.scale != T::one() { x * a.scale } else { x };
                }
            }
            b0 = b1;
        }
    }
}

/// The fewest vectors for which the read-only axpy takes the register tiles of
/// [`axpy_ro_impl`] (groups of at most [`Tiles::AXPY_GROUP`] vectors) rather than the
/// row blocks of [`axpy_blk`] (AVX2) or the tiles of all N vectors of [`axpy_tiles`]
/// (AVX-512); see the module docs for the AVX2 measurement.
const AXPY_TILED_FROM: usize = 13;

/// Rows per block of the read-only axpy kernel: a tile's targets stay in registers while
/// this many rows stream past.
const AXPY_RO_ROWS: usize = 32;

/// Read-only axpy on C chunks of columns from `c` for rows [m0, m1): the G x C target
/// vectors live in registers, each broadcast coefficient feeds C multiply-adds. Every
/// target entry sums over m in increasing order, as [`axpy_blk`] does.
#[inline(always)]
unsafe fn axpy_ro_tile<T: Float, S: Tiles<T>, const C: usize, const G: usize>(
    s: S,
    x: &AxpyArgs<T>,
    g0: usize,
    m0: usize,
    m1: usize,
    c: usize,
) {
    unsafe {
        let (d, w, n) = (x.d, S::W, x.n);
        let mut t = [[s.zero(); C]; G];
        for g in 0..G {
            for k in 0..C {
                t[g][k] = s.load(x.tgt.0.add((g0 + g) * d + c + k * w));
            }
        }
        for m in m0..m1 {
            let row = x.rows.0.add(m * x.ld + c);
            let mut r = [s.zero(); C];
            for k in 0..C {
                s.prefetch(row.wrapping_add(AXPY_RO_ROWS * x.ld + k * w));
                r[k] = s.load(row.add(k * w));
            }
            let coef = x.a.as_ptr().add(m * n + g0);
            for g in 0..G {
                let c = s.splat(*coef.add(g));
                for k in 0..C {
                    t[g][k] = s.fma(c, r[k], t[g][k]);
                }
            }
        }
        for g in 0..G {
            for k in 0..C {
                s.store(x.tgt.0.add((g0 + g) * d + c + k * w), t[g][k]);
            }
        }
    }
}

/// Read-only [`axpy_rows`] on the column segments [k0, k1) (segments of
/// [`AXPY_SEG_BYTES`]): per segment, row blocks of [`AXPY_RO_ROWS`], column tiles of two
/// chunks (one for the last odd chunk), targets in groups of at most [`Tiles::AXPY_GROUP`].
#[inline(always)]
unsafe fn axpy_ro_impl<T: Float, S: Tiles<T>>(s: S, x: &AxpyArgs<T>, k0: usize, k1: usize) {
    unsafe {
        macro_rules! tile {
            ($c:literal, $g0:expr, $g:expr, $m0:expr, $m1:expr, $col:expr) => {
                match $g {
                    12 => axpy_ro_tile::<T, S, $c, 12>(s, x, $g0, $m0, $m1, $col),
                    11 => axpy_ro_tile::<T, S, $c, 11>(s, x, $g0, $m0, $m1, $col),
                    10 => axpy_ro_tile::<T, S, $c, 10>(s, x, $g0, $m0, $m1, $col),
                    9 => axpy_ro_tile::<T, S, $c, 9>(s, x, $g0, $m0, $m1, $col),
                    8 => axpy_ro_tile::<T, S, $c, 8>(s, x, $g0, $m0, $m1, $col),
                    7 => axpy_ro_tile::<T, S, $c, 7>(s, x, $g0, $m0, $m1, $col),
                    6 => axpy_ro_tile::<T, S, $c, 6>(s, x, $g0, $m0, $m1, $col),
                    5 => axpy_ro_tile::<T, S, $c, 5>(s, x, $g0, $m0, $m1, $col),
                    4 => axpy_ro_tile::<T, S, $c, 4>(s, x, $g0, $m0, $m1, $col),
                    3 => axpy_ro_tile::<T, S, $c, 3>(s, x, $g0, $m0, $m1, $col),
                    2 => axpy_ro_tile::<T, S, $c, 2>(s, x, $g0, $m0, $m1, $col),
                    _ => axpy_ro_tile::<T, S, $c, 1>(s, x, $g0, $m0, $m1, $col),
                }
            };
        }
        let seg = AXPY_SEG_BYTES / std::mem::size_of::<T>();
        let w = S::W;
        let dv = x.d - x.d % w;
        let groups = x.n.div_ceil(S::AXPY_GROUP);
        for k in k0..k1 {
            let c0 = k * seg;
            let c1 = ((k + 1) * seg).min(dv);
            let mut m0 = 0;
            while m0 < x.m {
                let m1 = (m0 + AXPY_RO_ROWS).min(x.m);
                let mut g0 = 0;
                for q in 0..groups {
                    let g1 = x.n * (q + 1) / groups;
                    let mut c = c0;
                    // Two chunks per tile, but one with 16 registers.
                    while S::AXPY_CHUNKS == 2 && c + 2 * w <= c1 {
                        tile!(2, g0, g1 - g0, m0, m1, c);
                        c += 2 * w;
                    }
                    while c < c1 {
                        tile!(1, g0, g1 - g0, m0, m1, c);
                        c += w;
                    }
                    g0 = g1;
                }
                m0 = m1;
            }
            let end = ((k + 1) * seg).min(x.d);
            if end > dv.max(c0) {
                axpy_cols_scalar(x, dv.max(c0), end);
            }
        }
    }
}

#[inline(always)]
fn fma_chains<T: Float, S: Tiles<T>>(s: S, iters: usize) -> (T, usize) {
    {
        // As many chains as fit in half the registers: enough to cover the latency.
        const MAX: usize = 12;
        let k = (S::REGISTERS * 3 / 4).min(MAX);
        let mut a = [s.splat(T::one()); MAX];
        let m = s.splat(T::of(0.999_999));
        let c = s.splat(T::of(1e-9));
        macro_rules! rounds {
            ($k:literal) => {
                for _ in 0..iters {
                    for j in 0..$k {
                        a[j] = s.fma(a[j], m, c);
                    }
                }
            };
        }
        if k >= 12 {
            rounds!(12)
        } else {
            rounds!(6)
        }
        let k = if k >= 12 { 12 } else { 6 };
        let mut sum = T::zero();
        for j in 0..k {
            sum += s.reduce(a[j]);
        }
        (sum, k * S::W)
    }
}

/// The arguments of the kernels and their per-type entry points: public items of a
/// private module (a supertrait of [`crate::model::Real`], not nameable outside the crate).
mod entry {
    use super::{Ptr, Tails};

    /// A dot kernel's call: rows, vectors, coefficients, outputs (raw parts checked by the
    /// public wrappers).
    pub struct DotArgs<'a, T> {
        pub(super) rows: Ptr<T>,
        pub(super) ld: usize,
        pub(super) d: usize,
        pub(super) vecs: *const T,
        pub(super) ldv: usize,
        pub(super) n: usize,
        pub(super) coef: Option<&'a [T]>,
        pub(super) out: Ptr<T>,
        pub(super) scale: T,
        pub(super) tails: Tails<T>,
    }
    // SAFETY: the kernels' threads touch disjoint rows and outputs.
    unsafe impl<T> Sync for DotArgs<'_, T> {}

    /// An axpy kernel's call (raw parts checked by the public wrappers).
    #[derive(Clone, Copy)]
    pub struct AxpyArgs<'a, T> {
        pub(super) rows: Ptr<T>,
        /// Row stride of `rows` (the targets' is `d`).
        pub(super) ld: usize,
        pub(super) m: usize,
        pub(super) d: usize,
        pub(super) a: &'a [T],
        pub(super) b: Option<&'a [T]>,
        pub(super) vecs: *const T,
        pub(super) tgt: Ptr<T>,
        pub(super) n: usize,
    }
    // SAFETY: the kernels' threads touch disjoint column segments.
    unsafe impl<T> Sync for AxpyArgs<'_, T> {}

    /// Per-type entry points of the kernels (implemented for f64 and f32).
    pub trait Kernels: Sized {
        fn run_dot(a: &DotArgs<Self>, m0: usize, m1: usize);
        fn run_axpy(x: &AxpyArgs<Self>, t0: usize, t1: usize);
        /// `iters` rounds of independent register-resident FMA chains; returns their sum and
        /// the lane multiply-adds per round (for the bench's compute-peak probe).
        fn fma_probe(iters: usize) -> (Self, usize);
    }
}
pub(crate) use entry::Kernels;
use entry::{AxpyArgs, DotArgs};

/// The kernels as generic functions over the instruction set, for [`dispatch`] (one
/// type per kernel: each is compiled into its own entry with the target features; the
/// read-only kernels are separate because, inlined together with the updating ones, LLVM
/// spilled the register tiles). Rows [m0, m1) or column segments [t0, t1).
struct DotRo<'a, 'b, T>(&'a DotArgs<'b, T>, usize, usize);
struct DotUpd<'a, 'b, T>(&'a DotArgs<'b, T>, usize, usize);
struct AxpyRo<'a, 'b, T>(&'a AxpyArgs<'b, T>, usize, usize);
struct AxpyUpd<'a, 'b, T>(&'a AxpyArgs<'b, T>, usize, usize);
/// [`fma_chains`] with `iters` rounds.
struct Probe<T>(usize, std::marker::PhantomData<T>);

// The axpy `with_simd`s copy the arguments into a local first: the `#[target_feature]` entry
// receives them inside a struct, whose reference LLVM cannot mark `noalias`, so every
// store through the rows' raw pointer would force the fields (strides, pointers,
// coefficient slices) to be reloaded in the inner loops (measured: the axpy passes 6%
// and 18% slower at M = D = 2000). A local that never escapes cannot alias those stores.
macro_rules! kernels_for {
    ($t:ty) => {
        impl WithSimd for DotRo<'_, '_, $t> {
            type Output = ();
            #[inline(always)]
            fn with_simd<S: Token>(self, s: S) {
                // SAFETY: the public wrappers checked the extents of the arguments.
                unsafe { dot_ro_impl::<$t, S>(s, self.0, self.1, self.2) }
            }
        }
        impl WithSimd for DotUpd<'_, '_, $t> {
            type Output = ();
            #[inline(always)]
            fn with_simd<S: Token>(self, s: S) {
                // SAFETY: as above.
                unsafe { dot_rows_impl::<$t, S>(s, self.0, self.1, self.2) }
            }
        }
        impl WithSimd for AxpyRo<'_, '_, $t> {
            type Output = ();
            #[inline(always)]
            fn with_simd<S: Token>(self, s: S) {
                let args = *self.0;
                // SAFETY: as above.
                unsafe { axpy_ro_impl::<$t, S>(s, &args, self.1, self.2) }
            }
        }
        impl WithSimd for AxpyUpd<'_, '_, $t> {
            type Output = ();
            #[inline(always)]
            fn with_simd<S: Token>(self, s: S) {
                let args = *self.0;
                // SAFETY: as above.
                unsafe { axpy_impl::<$t, S>(s, &args, self.1, self.2) }
            }
        }
        impl WithSimd for Probe<$t> {
            type Output = ($t, usize);
            #[inline(always)]
            fn with_simd<S: Token>(self, s: S) -> ($t, usize) {
                fma_chains::<$t, S>(s, self.0)
            }
        }
        impl Kernels for $t {
            fn run_dot(a: &DotArgs<Self>, m0: usize, m1: usize) {
                if a.coef.is_none() {
                    dispatch(DotRo(a, m0, m1))
                } else {
                    dispatch(DotUpd(a, m0, m1))
                }
            }
            fn run_axpy(x: &AxpyArgs<Self>, t0: usize, t1: usize) {
                if x.b.is_none() && x.n >= AXPY_TILED_FROM {
                    dispatch(AxpyRo(x, t0, t1))
                } else {
                    dispatch(AxpyUpd(x, t0, t1))
                }
            }
            fn fma_probe(iters: usize) -> ($t, usize) {
                dispatch(Probe::<$t>(iters, std::marker::PhantomData))
            }
        }
    };
}
kernels_for!(f64);
kernels_for!(f32);

/// Runs the dot kernel over rows [0, m): sequentially, or in blocks of [`ROW_BLOCK`] rows
/// over the rayon pool.
fn run_dot_rows<T: Float + Kernels>(args: &DotArgs<T>, m: usize, par: Par) {
    match par {
        Par::Seq => T::run_dot(args, 0, m),
        Par::Rayon => {
            let blocks = m.div_ceil(ROW_BLOCK);
            (0..blocks).into_par_iter().for_each(|b| {
                T::run_dot(args, b * ROW_BLOCK, ((b + 1) * ROW_BLOCK).min(m));
            })
        }
    }
}

/// Runs the axpy kernel over every column segment of D columns: sequentially, or in
/// blocks of [`SEG_BLOCK`] segments over the rayon pool.
fn run_axpy_segs<T: Float + Kernels>(x: &AxpyArgs<T>, d: usize, par: Par) {
    let segs = axpy_segments::<T>(d);
    match par {
        Par::Seq => T::run_axpy(x, 0, segs),
        Par::Rayon => {
            let blocks = segs.div_ceil(SEG_BLOCK);
            (0..blocks).into_par_iter().for_each(|blk| {
                T::run_axpy(x, blk * SEG_BLOCK, ((blk + 1) * SEG_BLOCK).min(segs));
            })
        }
    }
}

/// Rows per parallel work item (results never depend on it).
const ROW_BLOCK: usize = 16;

/// `out[m][n] = scale * <rows_m, vecs_n>` for m < M (out: M x N), and, when `coef`
/// (M x N) is given, `rows_m -= sum_n coef[m][n] vecs_n` in the same pass.
#[allow(clippy::too_many_arguments)]
pub fn dot_rows<T: Float + Kernels>(
    rows: &mut [T],
    m: usize,
    d: usize,
    vecs: &[T],
    n: usize,
    coef: Option<&[T]>,
    scale: T,
    out: &mut [T],
    par: Par,
) {
    assert!(rows.len() >= m * d && vecs.len() >= n * d && out.len() >= m * n);
    if let Some(c) = coef {
        assert!(c.len() >= m * n);
    }
    if m == 0 || n == 0 {
        return;
    }
    let rows = Ptr(rows.as_mut_ptr());
    dot_entry(rows, (m, d, d), (vecs, d, n), coef, scale, out, par);
}

/// [`dot_rows`] and [`dot_ro`] past their checks: the vectors on cache lines
/// ([`on_lines`]), then the kernel over the M rows of D at stride `ld` (`shape`: M, D,
/// ld), the N vectors at stride `ldv` (`vecs`, ldv, N).
fn dot_entry<T: Float + Kernels>(
    rows: Ptr<T>,
    (m, d, ld): (usize, usize, usize),
    (vecs, ldv, n): (&[T], usize, usize),
    coef: Option<&[T]>,
    scale: T,
    out: &mut [T],
    par: Par,
) {
    let lined = on_lines(vecs, n, d, ldv, m);
    let (vecs, ldv) = lined.as_ref().map_or((vecs, ldv), |(v, ld)| (&v[..], *ld));
    let args = DotArgs {
        rows,
        ld,
        d,
        vecs: vecs.as_ptr(),
        ldv,
        n,
        coef,
        out: Ptr(out.as_mut_ptr()),
        scale,
        tails: Tails::new(vecs, ldv, d, n),
    };
    run_dot_rows(&args, m, par);
}

/// For a dot kernel over M rows: the N vectors of length D (`vecs`, row stride `ldv`)
/// copied to a 64-byte-aligned array whose rows are padded to a whole number of cache
/// lines, with its row stride; `None` where `vecs` is already so laid out, D is shorter
/// than a line, the rows are too few (M < 8 N) to repay the copy, or it cannot be
/// allocated. The kernel then reads `vecs` in place: the same bits, more slowly.
///
/// Why: the dot kernels load each vector chunk as one 64-byte vector. Stored at a row
/// stride of D = 500 f64 (4000 bytes), and from a `Vec` that starts 16 bytes into a
/// line, every other vector's chunks (or all of them) straddle two cache lines, and a
/// split load takes two passes through the L1 port: the read-only dot, whose tiles load
/// ten vector chunks per two row chunks, ran at 17-18 GB/s per core from L2 against
/// 25 with the vectors on lines (`cargo bench --bench step -- --seq`, L = 1, M = 250,
/// D = 500, on the Intel Xeon), and the dot with update at 19 against 24. Inside the
/// step the backward pass over V (the dot with update, M = D = 500) went from a median
/// of 20 to 22-24 GB/s (two sets of five interleaved `reslim bench` runs, each pair on
/// the same minute's neighbours), and the step's median from 0.0338 to 0.0315 s. The
/// copy is N D values against the pass's M D, a few microseconds per call.
fn on_lines<T: Float>(
    vecs: &[T],
    n: usize,
    d: usize,
    ldv: usize,
    m: usize,
) -> Option<(crate::cpu::Aligned<T>, usize)> {
    let w = 64 / std::mem::size_of::<T>();
    let ld = d.div_ceil(w) * w;
    let lined = (vecs.as_ptr() as usize).is_multiple_of(64) && ldv.is_multiple_of(w);
    if d < w || lined || m < n.saturating_mul(8) {
        return None;
    }
    let mut out = crate::cpu::Aligned::try_zeroed(n.checked_mul(ld)?, "vectors").ok()?;
    for (k, dst) in out.chunks_exact_mut(ld).enumerate() {
        dst[..d].copy_from_slice(&vecs[k * ldv..k * ldv + d]);
    }
    Some((out, ld))
}

/// Rows [m0, m0 + R) on the columns [c0, c1) of one segment (c1 - c0 a multiple of W):
/// each target vector is loaded and stored once per R rows, each sample vector loaded
/// once per R rows, and the rows are read (and written) once, sequentially.
///
/// Every coefficient is broadcast from memory at its use (one 8- or 4-byte load, which
/// the multiply-add can take as its memory operand), on every instruction set. Hoisted
/// out of the column loop, the R N splats (2 R N with the update) took 40 of the 32
/// zmm registers at N = 10, so they spilled and each use reloaded a whole 64-byte
/// vector from the stack: 40 vector loads per chunk of the update's 4 x 10 (2 x 10 x 2)
/// multiply-adds, on top of the targets' and vectors' 20, which kept the kernel on the
/// load ports rather than on memory (see [`axpy_blocks`] for the times).
#[inline(always)]
unsafe fn axpy_blk<T: Float, S: Tiles<T>, const R: usize, const N: usize>(
    s: S,
    x: &AxpyArgs<T>,
    m0: usize,
    c0: usize,
    c1: usize,
) {
    unsafe {
        let (d, w) = (x.d, S::W);
        let ahead = x.rows.0.wrapping_add((m0 + 2 * R) * x.ld);
        let mut c = c0;
        while c < c1 {
            for j in 0..R {
                s.prefetch(ahead.wrapping_add(j * x.ld + c));
            }
            let mut r = [s.zero(); R];
            for j in 0..R {
                r[j] = s.load(x.rows.0.add((m0 + j) * x.ld + c));
            }
            let mut u = [s.zero(); R];
            // Opaque, so that LLVM cannot hoist the broadcasts out of the loop again.
            let (ap, bp) = (opaque(x.a.as_ptr()), opaque(x.b.unwrap_or(x.a).as_ptr()));
            let coef = |p: *const T, j: usize, n: usize| s.splat(*p.add((m0 + j) * N + n));
            for n in 0..N {
                let tp = x.tgt.0.add(n * d + c);
                let mut t = s.load(tp);
                for j in 0..R {
                    t = s.fma(coef(ap, j, n), r[j], t);
                }
                s.store(tp, t);
                if x.b.is_some() {
                    let v = s.load(x.vecs.add(n * d + c));
                    for j in 0..R {
                        u[j] = s.fma(coef(bp, j, n), v, u[j]);
                    }
                }
            }
            if x.b.is_some() {
                for j in 0..R {
                    s.store(x.rows.0.add((m0 + j) * x.ld + c), s.sub(r[j], u[j]));
                }
            }
            c += w;
        }
    }
}

/// Chunks of W columns that the tiles of [`axpy_tiles`] prefetch ahead of their reads,
/// in their visiting order, in the first row block of a segment.
const AXPY_AHEAD: usize = 2;

/// Columns per segment of the axpy kernel: the targets' and vectors' segments
/// (2 N SEG values) stay in L1 while all rows stream past. A multiple of every W.
const AXPY_SEG_BYTES: usize = 1024;

/// Column segments [k0, k1) (all rows); the last d % W columns as one staged chunk
/// ([`axpy_tail`]).
#[inline(always)]
unsafe fn axpy_segs<T: Float, S: Tiles<T>, const N: usize>(
    s: S,
    x: &AxpyArgs<T>,
    k0: usize,
    k1: usize,
) {
    unsafe {
        let seg = AXPY_SEG_BYTES / std::mem::size_of::<T>();
        let dv = x.d - x.d % S::W;
        for k in k0..k1 {
            let c0 = k * seg;
            let c1 = ((k + 1) * seg).min(dv);
            if c0 < c1 && S::REGISTERS > 8 {
                axpy_tiles::<T, S, N>(s, x, c0, c1);
            } else if c0 < c1 {
                axpy_blocks::<T, S, N>(s, x, c0, c1);
            }
            let end = ((k + 1) * seg).min(x.d);
            if end > dv.max(c0) {
                axpy_tail::<T, S, N>(s, x, dv.max(c0), end - dv.max(c0));
            }
        }
    }
}

/// All rows on the columns [c0, c1) (a multiple of W) with 32 registers: row blocks of
/// [`AXPY_RO_ROWS`], and in each the column tiles of [`axpy_tile`] (two chunks wide
/// without the update, one with it). Each row's lines are prefetched a row block ahead
/// (at the same columns); in the first row block also [`AXPY_AHEAD`] chunks ahead in
/// the visiting order.
///
/// Why tiles rather than the row blocks of [`axpy_blk`] here: a row block loads and
/// stores every target, and loads every vector, once per 4 rows (3 N memory operations
/// per 4 lines of rows, beside the 2 N broadcasts per line that both take); a tile once
/// per 32 rows. On the 2-core Intel Xeon (Emerald Rapids, AVX-512, KVM) the
/// row blocks ran the two axpy passes of the step at half the GB/s of its two dot passes
/// at M = D = 500 (`reslim bench`: forward V 12-16 GB/s, backward U 12-14, against
/// 20-24), the gap the step's roofline fraction lost there (55-62%); the tiles run them
/// at 15-20 and 17-22 GB/s as the neighbours' load varies, and the step at 67-77%
/// (ARCHITECTURE.md, "The GD step and its bytes"). The thin
/// shapes of the f32 paper grid (M = 100, D = 2000, one thread, `cargo bench --bench
/// task`) lost 15-20% with tiles that prefetched only the next row block, since with
/// 100 rows a third of the lines, those of the first block, were then first touched
/// unprefetched. Prefetching only [`AXPY_AHEAD`] chunks ahead in the visiting order
/// fixed them, but left the forward V pass at M = D = 500 slower (median of 4
/// interleaved bench rounds 8.4 ms against 5.9 ms with both prefetches; its lines then
/// arrive about one tile, some 100 ns, ahead); with both, the thin task is on par with
/// the row blocks (0.90-0.94 s best of 4 rounds). On AVX2's 16 registers the 2 N + 3
/// registers of a tile do not fit, so the row blocks stay. Not measured on an AMD Zen 4
/// (AVX-512), where the 4-row blocks had been tuned.
#[inline(always)]
unsafe fn axpy_tiles<T: Float, S: Tiles<T>, const N: usize>(
    s: S,
    x: &AxpyArgs<T>,
    c0: usize,
    c1: usize,
) {
    unsafe {
        let w = S::W;
        let chunks = (c1 - c0) / w;
        // Two prefetches per row and chunk: the same lines of the next row block (far
        // ahead), and in the first row block, which nothing before has prefetched, the
        // lines AXPY_AHEAD chunks further in the visiting order (row blocks, and the
        // chunks of the segment within each); elsewhere the second repeats the first.
        // Past the last row block they lie beyond the rows: a hint never faults.
        let ahead = |m0: usize, c: usize| {
            let far = x.rows.0.wrapping_add((m0 + AXPY_RO_ROWS) * x.ld + c) as *const T;
            if m0 > 0 {
                return (far, far);
            }
            let mut ch = (c - c0) / w + AXPY_AHEAD;
            let mut b0 = m0;
            while ch >= chunks {
                ch -= chunks;
                b0 += AXPY_RO_ROWS;
            }
            (
                far,
                x.rows.0.wrapping_add(b0 * x.ld + c0 + ch * w) as *const T,
            )
        };
        let mut m0 = 0;
        while m0 < x.m {
            let m1 = (m0 + AXPY_RO_ROWS).min(x.m);
            let mut c = c0;
            if x.b.is_none() {
                while c + 2 * w <= c1 {
                    axpy_tile::<T, S, 2, N, false>(s, x, m0, m1, c, ahead(m0, c));
                    c += 2 * w;
                }
                while c < c1 {
                    axpy_tile::<T, S, 1, N, false>(s, x, m0, m1, c, ahead(m0, c));
                    c += w;
                }
            } else {
                while c < c1 {
                    axpy_tile::<T, S, 1, N, true>(s, x, m0, m1, c, ahead(m0, c));
                    c += w;
                }
            }
            m0 = m1;
        }
    }
}

/// Rows [m0, m1) on the C chunks of columns from `c`, with the N targets' pieces (and,
/// with the update, the N vectors') in registers while the rows stream past: per row,
/// its C chunks are loaded once, feed the N C target multiply-adds and, with the update,
/// are written back as `r - u`, `u = sum_n b[m][n] v_n` (the order of [`axpy_blk`]: each
/// target sums over m in increasing order, each `u` over n from zero). With the update
/// C = 1 (2 N + 3 registers; N <= 12).
#[inline(always)]
unsafe fn axpy_tile<T: Float, S: Tiles<T>, const C: usize, const N: usize, const UPD: bool>(
    s: S,
    x: &AxpyArgs<T>,
    m0: usize,
    m1: usize,
    c: usize,
    (pf, pf2): (*const T, *const T),
) {
    unsafe {
        let (d, w) = (x.d, S::W);
        let mut t = [[s.zero(); C]; N];
        let mut v = [[s.zero(); C]; N];
        for n in 0..N {
            for k in 0..C {
                t[n][k] = s.load(x.tgt.0.add(n * d + c + k * w));
                if UPD {
                    v[n][k] = s.load(x.vecs.add(n * d + c + k * w));
                }
            }
        }
        // Every field in a local: the row stores must not force them to be reloaded.
        let (rows, ld, a0) = (x.rows.0, x.ld, x.a.as_ptr());
        let bp = x.b.map_or(std::ptr::null(), |b| b.as_ptr());
        for m in m0..m1 {
            let row = rows.add(m * ld + c);
            let mut r = [s.zero(); C];
            for k in 0..C {
                s.prefetch(pf.wrapping_add((m - m0) * ld + k * w));
                s.prefetch(pf2.wrapping_add((m - m0) * ld + k * w));
                r[k] = s.load(row.add(k * w));
            }
            let ap = a0.add(m * N);
            for n in 0..N {
                let cf = s.splat(*ap.add(n));
                for k in 0..C {
                    t[n][k] = s.fma(cf, r[k], t[n][k]);
                }
            }
            if UPD {
                let mut u = [s.zero(); C];
                for n in 0..N {
                    let cf = s.splat(*bp.add(m * N + n));
                    for k in 0..C {
                        u[k] = s.fma(cf, v[n][k], u[k]);
                    }
                }
                for k in 0..C {
                    s.store(row.add(k * w), s.sub(r[k], u[k]));
                }
            }
        }
        for n in 0..N {
            for k in 0..C {
                s.store(x.tgt.0.add(n * d + c + k * w), t[n][k]);
            }
        }
    }
}

/// All rows on the columns [c0, c1) (a multiple of W), in row blocks of [`axpy_blk`].
#[inline(always)]
unsafe fn axpy_blocks<T: Float, S: Tiles<T>, const N: usize>(
    s: S,
    x: &AxpyArgs<T>,
    c0: usize,
    c1: usize,
) {
    unsafe {
        let mut m = 0;
        if x.b.is_some() && S::REGISTERS <= 8 {
            // With 16 registers, blocks of 3 rows:
            // per target, 10 loads (its two halves, the vector's, 2 x 3 broadcasts) and 2
            // stores feed 12 multiply-adds, against 8 and 2 for 8 with 2 rows. Inside the
            // step (M = D = 500, N = 10, 2 threads), the backward U pass took 15.0-15.5 ms
            // at best of 4-10 interleaved rounds against 15.7-16.8 ms with 2 rows.
            while m + 3 <= x.m {
                axpy_blk::<T, S, 3, N>(s, x, m, c0, c1);
                m += 3;
            }
        }
        // With 32 registers (where only the staged last columns of [`axpy_tail`] still
        // come here; the rest runs in the tiles of [`axpy_tiles`]), blocks of 4 rows, with
        // the update too: each target's load
        // and store then feed 4 multiply-adds, each vector load 4. (Blocks of 2 had been
        // chosen while the 2 x 4 x N coefficient splats of 4 rows were hoisted and
        // spilled; broadcast at each use, 4 rows win.) Measured inside the step on the
        // 2-core AMD EPYC (Zen 4, AVX-512) machine, f64, N = 10, L = 50, 2 threads,
        // `reslim bench`, interleaved runs of the old and new kernels: at M = D = 500 the
        // backward U pass went from 9.9-13.9 ms (14-20 GB/s) to 7.7-8.3 ms (24-26 GB/s)
        // and the forward V pass from 5.9-8.3 ms (12-17 GB/s) to 5.0-5.5 ms (18-20
        // GB/s); at M = D = 1000 backward U from 27.5 to 23.3 ms (29 -> 34 GB/s) and
        // forward V from 21.5-22.1 to 17.4 ms (18 -> 23 GB/s).
        while m + 4 <= x.m {
            axpy_blk::<T, S, 4, N>(s, x, m, c0, c1);
            m += 4;
        }
        match x.m - m {
            3 => axpy_blk::<T, S, 3, N>(s, x, m, c0, c1),
            2 => axpy_blk::<T, S, 2, N>(s, x, m, c0, c1),
            1 => axpy_blk::<T, S, 1, N>(s, x, m, c0, c1),
            _ => {}
        }
    }
}

/// Rows staged at a time by [`axpy_tail`].
const TAIL_ROWS: usize = 64;

/// The last `k < W` columns [c, c + k): their pieces of the targets, the vectors and
/// [`TAIL_ROWS`] rows at a time are copied into zero-padded chunks of W on the stack,
/// [`axpy_blocks`] runs on them, and the k columns are copied back. Each entry gets the
/// operations of the scalar loops (`t = fma(a_m, r_m, t)` over m in order; the update
/// `u = fma(b_n, v_n, u)` over n, then `r - u`), vectorized over the columns. In the
/// step (f32, M = 2000, D = 301: 13 such columns; N = 10, 2 threads), best of 6
/// interleaved rounds, per 500 x 500 weights: forward V pass 9.1 -> 6.6 ms, backward U
/// pass 15.0 -> 9.5 ms (column by column before; 5.6 and 8.3 ms at D = 304).
#[inline(always)]
unsafe fn axpy_tail<T: Float, S: Tiles<T>, const N: usize>(
    s: S,
    x: &AxpyArgs<T>,
    c: usize,
    k: usize,
) {
    unsafe {
        let w = S::W;
        let mut tg = [T::zero(); 12 * 16];
        let mut vs = [T::zero(); 12 * 16];
        let mut rs = [T::zero(); TAIL_ROWS * 16];
        for n in 0..N {
            for i in 0..k {
                tg[n * w + i] = *x.tgt.0.add(n * x.d + c + i);
                if x.b.is_some() {
                    vs[n * w + i] = *x.vecs.add(n * x.d + c + i);
                }
            }
        }
        let mut m0 = 0;
        while m0 < x.m {
            let rb = TAIL_ROWS.min(x.m - m0);
            for j in 0..rb {
                for i in 0..k {
                    rs[j * w + i] = *x.rows.0.add((m0 + j) * x.ld + c + i);
                }
            }
            let staged = AxpyArgs {
                rows: Ptr(rs.as_mut_ptr()),
                ld: w,
                m: rb,
                d: w,
                a: &x.a[m0 * N..],
                b: x.b.map(|b| &b[m0 * N..]),
                vecs: vs.as_ptr(),
                tgt: Ptr(tg.as_mut_ptr()),
                n: N,
            };
            axpy_blocks::<T, S, N>(s, &staged, 0, w);
            if x.b.is_some() {
                for j in 0..rb {
                    for i in 0..k {
                        *x.rows.0.add((m0 + j) * x.ld + c + i) = rs[j * w + i];
                    }
                }
            }
            m0 += rb;
        }
        for n in 0..N {
            for i in 0..k {
                *x.tgt.0.add(n * x.d + c + i) = tg[n * w + i];
            }
        }
    }
}

/// Number of column segments of the axpy kernel for D columns.
fn axpy_segments<T>(d: usize) -> usize {
    d.div_ceil(AXPY_SEG_BYTES / std::mem::size_of::<T>())
}

/// The ragged end of the columns: scalar code with the same order (over m) per entry.
#[inline(always)]
unsafe fn axpy_cols_scalar<T: Float>(x: &AxpyArgs<T>, c0: usize, c1: usize) {
    unsafe {
        let (d, n) = (x.d, x.n);
        for c in c0..c1 {
            for mm in 0..x.m {
                let rp = x.rows.0.add(mm * x.ld + c);
                let r = *rp;
                for k in 0..n {
                    let t = x.tgt.0.add(k * d + c);
                    *t = x.a[mm * n + k].mul_add(r, *t);
                }
                if let Some(b) = x.b {
                    let mut u = T::zero();
                    for k in 0..n {
                        u = b[mm * n + k].mul_add(*x.vecs.add(k * d + c), u);
                    }
                    *rp = r - u;
                }
            }
        }
    }
}

#[inline(always)]
unsafe fn axpy_impl<T: Float, S: Tiles<T>>(s: S, x: &AxpyArgs<T>, k0: usize, k1: usize) {
    unsafe {
        with_const_n!(
            x.n,
            axpy_segs::<T, S>(s, x, k0, k1),
            unreachable!("axpy_rows splits N into groups of at most 12")
        )
    }
}

/// Column segments per parallel work item.
const SEG_BLOCK: usize = 1;

/// `tgt_n += sum_m a[m][n] rows_m` for n < N (tgt: N x D; a: M x N), and, when `b`
/// (M x N) is given, `rows_m -= sum_n b[m][n] vecs_n` (vecs: N x D) in the same pass,
/// the targets using the rows before their update.
#[allow(clippy::too_many_arguments)]
pub fn axpy_rows<T: Float + Kernels>(
    rows: &mut [T],
    m: usize,
    d: usize,
    a: &[T],
    b: Option<&[T]>,
    vecs: &[T],
    n: usize,
    tgt: &mut [T],
    par: Par,
) {
    assert!(rows.len() >= m * d && tgt.len() >= n * d && a.len() >= m * n);
    if let Some(b) = b {
        assert!(b.len() >= m * n && vecs.len() >= n * d);
    }
    if m == 0 || n == 0 || d == 0 {
        return;
    }
    if n > 12 && b.is_some() {
        axpy_rows_grouped(rows, m, d, a, b, vecs, n, tgt, par);
        return;
    }
    let x = AxpyArgs {
        rows: Ptr(rows.as_mut_ptr()),
        ld: d,
        m,
        d,
        a,
        b,
        vecs: vecs.as_ptr(),
        tgt: Ptr(tgt.as_mut_ptr()),
        n,
    };
    run_axpy_segs(&x, d, par);
}

/// N > 12: the targets in groups of at most 12 (reading the rows before any update),
/// then the row update as zero-coefficient passes over groups of the vectors.
#[allow(clippy::too_many_arguments)]
fn axpy_rows_grouped<T: Float + Kernels>(
    rows: &mut [T],
    m: usize,
    d: usize,
    a: &[T],
    b: Option<&[T]>,
    vecs: &[T],
    n: usize,
    tgt: &mut [T],
    par: Par,
) {
    let mut a_g = vec![T::zero(); m * 12];
    let mut b_g = vec![T::zero(); m * 12];
    let mut n0 = 0;
    while n0 < n {
        let g = (n - n0).min(12);
        for mm in 0..m {
            for k in 0..g {
                a_g[mm * g + k] = a[mm * n + n0 + k];
            }
        }
        let t = &mut tgt[n0 * d..(n0 + g) * d];
        axpy_rows(rows, m, d, &a_g[..m * g], None, vecs, g, t, par);
        n0 += g;
    }
    if let Some(b) = b {
        let mut scratch = vec![T::zero(); 12 * d];
        let mut k0 = 0;
        while k0 < n {
            let g = (n - k0).min(12);
            for mm in 0..m {
                for k in 0..g {
                    b_g[mm * g + k] = b[mm * n + k0 + k];
                    a_g[mm * g + k] = T::zero();
                }
            }
            let v = &vecs[k0 * d..(k0 + g) * d];
            let s = &mut scratch[..g * d];
            axpy_rows(rows, m, d, &a_g[..m * g], Some(&b_g[..m * g]), v, g, s, par);
            k0 += g;
        }
    }
}

/// Read-only [`dot_rows`] with strides: `out[m][n] = scale * <rows[m*ld ..][..d],
/// vecs[n*ldv ..][..d]>` for m < M, n < N (out: M x N). The rows are only read.
#[allow(clippy::too_many_arguments)]
pub fn dot_ro<T: Float + Kernels>(
    rows: &[T],
    m: usize,
    d: usize,
    ld: usize,
    vecs: &[T],
    ldv: usize,
    n: usize,
    scale: T,
    out: &mut [T],
    par: Par,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(ld >= d && ldv >= d && rows.len() >= (m - 1) * ld + d);
    assert!(vecs.len() >= (n - 1) * ldv + d && out.len() >= m * n);
    // Never written: the read-only kernel only loads through it.
    let rows = Ptr(rows.as_ptr() as *mut T);
    dot_entry(rows, (m, d, ld), (vecs, ldv, n), None, scale, out, par);
}

/// Read-only [`axpy_rows`] with a row stride: `tgt_n += sum_m a[m][n] rows[m*ld ..][..d]`
/// (tgt: N x D contiguous; a: M x N). The rows are only read.
#[allow(clippy::too_many_arguments)]
pub fn axpy_ro<T: Float + Kernels>(
    rows: &[T],
    m: usize,
    d: usize,
    ld: usize,
    a: &[T],
    n: usize,
    tgt: &mut [T],
    par: Par,
) {
    if m == 0 || n == 0 || d == 0 {
        return;
    }
    assert!(ld >= d && rows.len() >= (m - 1) * ld + d);
    assert!(a.len() >= m * n && tgt.len() >= n * d);
    let x = AxpyArgs {
        // Never written: the read-only kernel only loads through it.
        rows: Ptr(rows.as_ptr() as *mut T),
        ld,
        m,
        d,
        a,
        b: None,
        vecs: std::ptr::null(),
        tgt: Ptr(tgt.as_mut_ptr()),
        n,
    };
    run_axpy_segs(&x, d, par);
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "x86_64")]
    use crate::cpu::{Avx2, Avx512, Portable};
    use crate::rng::{Stream, Tensor};

    fn rand(n: usize, seed: u32) -> Vec<f64> {
        Stream::new(5, Tensor::Other(seed), 0).normal_matrix(1, n, 1.0)
    }

    fn check_dot(m: usize, d: usize, n: usize, with_coef: bool) {
        let rows0 = rand(m * d, 1);
        let vecs = rand(n * d, 2);
        let coef = rand(m * n, 3);
        let mut rows = rows0.clone();
        let mut out = vec![0.0; m * n];
        let cf = if with_coef { Some(&coef[..]) } else { None };
        dot_rows(&mut rows, m, d, &vecs, n, cf, 0.5, &mut out, Par::Seq);
        for mm in 0..m {
            for k in 0..n {
                let want: f64 = (0..d)
                    .map(|i| rows0[mm * d + i] * vecs[k * d + i])
                    .sum::<f64>()
                    * 0.5;
                assert!(
                    (out[mm * n + k] - want).abs() < 1e-12 * (1.0 + want.abs()),
                    "dot m={m} d={d} n={n}"
                );
            }
            for i in 0..d {
                let mut want = rows0[mm * d + i];
                if with_coef {
                    for k in 0..n {
                        want -= coef[mm * n + k] * vecs[k * d + i];
                    }
                }
                assert!(
                    (rows[mm * d + i] - want).abs() < 1e-12,
                    "update m={m} d={d} n={n}"
                );
            }
        }
        // Thread-count independence, bitwise.
        let mut rows2 = rows0.clone();
        let mut out2 = vec![0.0; m * n];
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        pool.install(|| dot_rows(&mut rows2, m, d, &vecs, n, cf, 0.5, &mut out2, Par::Rayon));
        assert_eq!(out, out2);
        assert_eq!(rows, rows2);
    }

    fn check_axpy(m: usize, d: usize, n: usize, with_b: bool) {
        let rows0 = rand(m * d, 4);
        let vecs = rand(n * d, 5);
        let a = rand(m * n, 6);
        let b = rand(m * n, 7);
        let tgt0 = rand(n * d, 8);
        let mut rows = rows0.clone();
        let mut tgt = tgt0.clone();
        let bb = if with_b { Some(&b[..]) } else { None };
        axpy_rows(&mut rows, m, d, &a, bb, &vecs, n, &mut tgt, Par::Seq);
        for k in 0..n {
            for i in 0..d {
                let want = tgt0[k * d + i]
                    + (0..m)
                        .map(|mm| a[mm * n + k] * rows0[mm * d + i])
                        .sum::<f64>();
                assert!(
                    (tgt[k * d + i] - want).abs() < 1e-12 * (1.0 + want.abs()),
                    "axpy tgt m={m} d={d} n={n}"
                );
            }
        }
        for mm in 0..m {
            for i in 0..d {
                let mut want = rows0[mm * d + i];
                if with_b {
                    for k in 0..n {
                        want -= b[mm * n + k] * vecs[k * d + i];
                    }
                }
                assert!(
                    (rows[mm * d + i] - want).abs() < 1e-12,
                    "axpy rows m={m} d={d} n={n}"
                );
            }
        }
        let mut rows2 = rows0.clone();
        let mut tgt2 = tgt0.clone();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        pool.install(|| axpy_rows(&mut rows2, m, d, &a, bb, &vecs, n, &mut tgt2, Par::Rayon));
        assert_eq!(tgt, tgt2);
        assert_eq!(rows, rows2);
    }

    /// The kernels of instruction set `isa` ("avx512", "avx2" or "portable") on
    /// rows x vectors, with or without the update: (rows, dot outputs, axpy targets).
    #[cfg(target_arch = "x86_64")]
    fn run_isa<T: Float>(
        isa: &str,
        (m, d, n, upd): (usize, usize, usize, bool),
    ) -> (Vec<T>, Vec<T>, Vec<T>)
    where
        for<'a, 'b> DotRo<'a, 'b, T>: WithSimd<Output = ()>,
        for<'a, 'b> DotUpd<'a, 'b, T>: WithSimd<Output = ()>,
        for<'a, 'b> AxpyRo<'a, 'b, T>: WithSimd<Output = ()>,
        for<'a, 'b> AxpyUpd<'a, 'b, T>: WithSimd<Output = ()>,
    {
        let t = |v: Vec<f64>| v.into_iter().map(T::of).collect::<Vec<T>>();
        let mut rows = t(rand(m * d, 1));
        let vecs = t(rand(n * d, 2));
        let coef = t(rand(m * n, 3));
        let mut out = vec![T::zero(); m * n];
        let mut tgt = t(rand(n * d, 9));
        let args = DotArgs {
            rows: Ptr(rows.as_mut_ptr()),
            ld: d,
            d,
            vecs: vecs.as_ptr(),
            ldv: d,
            n,
            coef: upd.then_some(&coef[..]),
            out: Ptr(out.as_mut_ptr()),
            scale: T::of(0.5),
            tails: Tails::new(&vecs, d, d, n),
        };
        let ax = AxpyArgs {
            rows: Ptr(rows.as_mut_ptr()),
            ld: d,
            m,
            d,
            a: &coef,
            b: upd.then_some(&coef[..]),
            vecs: vecs.as_ptr(),
            tgt: Ptr(tgt.as_mut_ptr()),
            n,
        };
        let tiles = axpy_segments::<T>(d);
        fn on<S: Token, T>(
            s: S,
            upd: bool,
            args: &DotArgs<T>,
            ax: &AxpyArgs<T>,
            m: usize,
            tiles: usize,
        ) where
            for<'a, 'b> DotRo<'a, 'b, T>: WithSimd<Output = ()>,
            for<'a, 'b> DotUpd<'a, 'b, T>: WithSimd<Output = ()>,
            for<'a, 'b> AxpyRo<'a, 'b, T>: WithSimd<Output = ()>,
            for<'a, 'b> AxpyUpd<'a, 'b, T>: WithSimd<Output = ()>,
        {
            if upd {
                s.vectorize(DotUpd(args, 0, m));
                s.vectorize(AxpyUpd(ax, 0, tiles));
            } else {
                s.vectorize(DotRo(args, 0, m));
                s.vectorize(AxpyRo(ax, 0, tiles));
            }
        }
        match isa {
            "avx512" => on(Avx512::try_new().unwrap(), upd, &args, &ax, m, tiles),
            "avx2" => on(Avx2::try_new().unwrap(), upd, &args, &ax, m, tiles),
            _ => on(Portable, upd, &args, &ax, m, tiles),
        }
        (rows, out, tgt)
    }

    /// The AVX-512, AVX2 + FMA and portable paths give the same bits, in f64 and f32 (on
    /// the instruction sets this CPU has; their register tiles, row blocks and column
    /// segments differ). The shapes cover odd tails, several row blocks and column
    /// segments of the blocked dot, vector groups of every tile, and N > 12.
    #[test]
    fn every_instruction_set_gives_the_portable_bits() {
        #[cfg(target_arch = "x86_64")]
        {
            let has = |f: &str| match f {
                "avx512" => Avx512::try_new().is_some(),
                _ => Avx2::try_new().is_some(),
            };
            let isas: Vec<&str> = ["avx512", "avx2"].into_iter().filter(|f| has(f)).collect();
            for &shape in &[
                (7usize, 45usize, 10usize, true),
                (6, 53, 3, false),
                (5, 40, 12, true),
                (9, 150, 20, false),
                (8, 77, 24, false),
                (11, 300, 10, false),
                (10, 264, 7, true),
                (19, 700, 9, true),
                (17, 1203, 12, true),
                (3, 1030, 13, false),
                (4, 16, 1, true),
                (70, 300, 10, true),
                (70, 300, 11, false),
            ] {
                let want64 = run_isa::<f64>("portable", shape);
                let want32 = run_isa::<f32>("portable", shape);
                for isa in &isas {
                    assert!(run_isa::<f64>(isa, shape) == want64, "{isa} f64 {shape:?}");
                    assert!(run_isa::<f32>(isa, shape) == want32, "{isa} f32 {shape:?}");
                }
            }
        }
    }

    #[test]
    fn strided_read_only_kernels_match_the_naive_loops() {
        // Rows of length d inside a wider matrix (ld > d), up to 24 vectors in one pass.
        for &(m, d, ld, n) in &[
            (5usize, 19usize, 23usize, 20usize),
            (16, 64, 70, 24),
            (3, 9, 9, 7),
        ] {
            let rows = rand(m * ld, 11);
            let vecs = rand(n * ld, 12);
            let a = rand(m * n, 13);
            let mut out = vec![0.0; m * n];
            dot_ro(&rows, m, d, ld, &vecs, ld, n, 2.0, &mut out, Par::Seq);
            for mm in 0..m {
                for k in 0..n {
                    let want: f64 = 2.0
                        * (0..d)
                            .map(|i| rows[mm * ld + i] * vecs[k * ld + i])
                            .sum::<f64>();
                    assert!((out[mm * n + k] - want).abs() < 1e-12 * (1.0 + want.abs()));
                }
            }
            let tgt0 = rand(n * d, 14);
            let mut tgt = tgt0.clone();
            axpy_ro(&rows, m, d, ld, &a, n, &mut tgt, Par::Seq);
            for k in 0..n {
                for i in 0..d {
                    let want = tgt0[k * d + i]
                        + (0..m)
                            .map(|mm| a[mm * n + k] * rows[mm * ld + i])
                            .sum::<f64>();
                    assert!((tgt[k * d + i] - want).abs() < 1e-12 * (1.0 + want.abs()));
                }
            }
        }
    }

    /// The order of operations the module docs define, written out with scalars: the dot
    /// products as W lane-wise chains over the full chunks, the tree, then the last
    /// `d % W` columns as one chain, then the scale; the dot's update as two chains (even
    /// and odd n) on the full chunks and one on the last columns; the axpy as one chain
    /// over m per entry, its update one chain over n. Returns (rows, dot outputs, axpy
    /// targets) after `dot_rows` then `axpy_rows` on the updated rows.
    fn in_documented_order<T: Float>(
        (m, d, n, upd): (usize, usize, usize, bool),
        rows: &[T],
        vecs: &[T],
        coef: &[T],
        tgt: &[T],
    ) -> (Vec<T>, Vec<T>, Vec<T>) {
        let w = 64 / std::mem::size_of::<T>();
        let dv = d - d % w;
        let scale = T::of(0.5);
        let (mut rows, mut tgt) = (rows.to_vec(), tgt.to_vec());
        let mut out = vec![T::zero(); m * n];
        for mm in 0..m {
            let row = &mut rows[mm * d..(mm + 1) * d];
            for g in 0..n {
                let v = &vecs[g * d..(g + 1) * d];
                let mut lanes = vec![T::zero(); w];
                for c in (0..dv).step_by(w) {
                    for l in 0..w {
                        lanes[l] = row[c + l].mul_add(v[c + l], lanes[l]);
                    }
                }
                let mut half = w;
                while half > 1 {
                    half /= 2;
                    for l in 0..half {
                        let x = lanes[l + half];
                        lanes[l] += x;
                    }
                }
                let mut tail = T::zero();
                for i in dv..d {
                    tail = row[i].mul_add(v[i], tail);
                }
                out[mm * n + g] = (lanes[0] + tail) * scale;
            }
            if upd {
                let c = &coef[mm * n..(mm + 1) * n];
                for i in 0..d {
                    row[i] = if i < dv {
                        let mut u = [T::zero(); 2];
                        for k in 0..n {
                            u[k % 2] = c[k].mul_add(vecs[k * d + i], u[k % 2]);
                        }
                        row[i] - u[0] - u[1]
                    } else {
                        let mut u = T::zero();
                        for k in 0..n {
                            u = c[k].mul_add(vecs[k * d + i], u);
                        }
                        row[i] - u
                    };
                }
            }
        }
        for i in 0..d {
            for k in 0..n {
                for mm in 0..m {
                    tgt[k * d + i] = coef[mm * n + k].mul_add(rows[mm * d + i], tgt[k * d + i]);
                }
            }
            if upd {
                for mm in 0..m {
                    let mut u = T::zero();
                    for k in 0..n {
                        u = coef[mm * n + k].mul_add(vecs[k * d + i], u);
                    }
                    rows[mm * d + i] -= u;
                }
            }
        }
        (rows, out, tgt)
    }

    fn follows_documented_order<T: Float + Kernels>(shape: (usize, usize, usize, bool), par: Par) {
        let (m, d, n, upd) = shape;
        let t = |v: Vec<f64>| v.into_iter().map(T::of).collect::<Vec<T>>();
        let (rows0, vecs) = (t(rand(m * d, 21)), t(rand(n * d, 22)));
        let (coef, tgt0) = (t(rand(m * n, 23)), t(rand(n * d, 24)));
        let (want_rows, want_out, want_tgt) =
            in_documented_order(shape, &rows0, &vecs, &coef, &tgt0);
        let (mut rows, mut out, mut tgt) = (rows0.clone(), vec![T::zero(); m * n], tgt0);
        let cf = upd.then_some(&coef[..]);
        dot_rows(&mut rows, m, d, &vecs, n, cf, T::of(0.5), &mut out, par);
        axpy_rows(&mut rows, m, d, &coef, cf, &vecs, n, &mut tgt, par);
        let bits = |v: &[T]| v.iter().map(|x| x.to().to_bits()).collect::<Vec<u64>>();
        let what = format!("{} {shape:?} {par:?}", T::NAME);
        assert_eq!(bits(&out), bits(&want_out), "dot outputs, {what}");
        assert_eq!(bits(&rows), bits(&want_rows), "rows, {what}");
        assert_eq!(bits(&tgt), bits(&want_tgt), "axpy targets, {what}");
        if !upd {
            // The strided read-only kernels, on the same numbers.
            let mut out2 = vec![T::zero(); m * n];
            dot_ro(&rows0, m, d, d, &vecs, d, n, T::of(0.5), &mut out2, par);
            assert_eq!(bits(&out2), bits(&want_out), "dot_ro, {what}");
            // Vectors at a stride of D + 3, as `on_lines` copies them from.
            let mut wide = vec![T::of(f64::NAN); n * (d + 3)];
            for k in 0..n {
                wide[k * (d + 3)..k * (d + 3) + d].copy_from_slice(&vecs[k * d..(k + 1) * d]);
            }
            let mut out3 = vec![T::zero(); m * n];
            dot_ro(&rows0, m, d, d, &wide, d + 3, n, T::of(0.5), &mut out3, par);
            assert_eq!(
                bits(&out3),
                bits(&want_out),
                "dot_ro, vectors at stride D + 3, {what}"
            );
        }
    }

    /// Every path (the best instruction set of this CPU; the portable code is checked
    /// against it by `every_instruction_set_gives_the_portable_bits`) gives the bits of
    /// the documented order, including the last `d % W` columns, which the kernels handle
    /// across vectors or through zero-padded chunks rather than column by column.
    #[test]
    fn kernels_follow_the_documented_order_bit_for_bit() {
        for &(m, d, n) in &[
            (1usize, 1usize, 1usize),
            (5, 13, 3),
            (7, 45, 10),
            (3, 66, 12),
            (70, 23, 11),
            (9, 301, 10),
            (4, 500, 7),
            (6, 16, 5),
            (2, 129, 9),
            // Three row blocks of the axpy tiles (the last partial), an odd number of
            // chunks in the last segment, and a tail.
            (67, 300, 10),
            (40, 150, 12),
            // M >= 8 N: the dot kernels read the vectors from a copy on cache lines
            // (`on_lines`), padded from D = 45, 301 and 500.
            (96, 45, 10),
            (40, 301, 5),
            (200, 500, 12),
        ] {
            for upd in [false, true] {
                for par in [Par::Seq, Par::Rayon] {
                    follows_documented_order::<f64>((m, d, n, upd), par);
                    follows_documented_order::<f32>((m, d, n, upd), par);
                }
            }
        }
    }

    #[test]
    fn kernels_match_the_naive_loops() {
        for &(m, d, n) in &[
            (1, 1, 1),
            (3, 7, 2),
            (17, 33, 5),
            (20, 64, 10),
            (5, 70, 12),
            (9, 41, 13),
            (4, 100, 27),
        ] {
            for flag in [false, true] {
                check_dot(m, d, n, flag);
                check_axpy(m, d, n, flag);
            }
        }
    }
}
