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
//! the backward pass: 3 * 2 * L*M*D values per step, the minimum (DESIGN.md).
//!
//! Determinism: every output entry is summed in an order fixed by the data layout alone
//! (lane-wise partial sums over D in chunks of W, reduced by a fixed tree; sums over m in
//! increasing m), so results are bitwise independent of the number of threads and of how
//! rows or column tiles are distributed. No fused multiply-add is used, so the scalar
//! fallback and the AVX-512/AVX2 paths give identical bits.

use crate::model::Real;
use rayon::prelude::*;

/// Raw pointer that may cross threads; each user touches disjoint parts.
#[derive(Clone, Copy)]
struct Ptr<T>(*mut T);
unsafe impl<T> Send for Ptr<T> {}
unsafe impl<T> Sync for Ptr<T> {}

#[inline(always)]
unsafe fn load<T: Copy, const W: usize>(p: *const T) -> [T; W] {
    unsafe { std::ptr::read_unaligned(p as *const [T; W]) }
}
#[inline(always)]
unsafe fn store<T: Copy, const W: usize>(p: *mut T, v: [T; W]) {
    unsafe { std::ptr::write_unaligned(p as *mut [T; W], v) }
}

#[inline(always)]
fn tree_sum<T: Real, const W: usize>(mut a: [T; W]) -> T {
    let mut w = W;
    while w > 1 {
        w /= 2;
        for k in 0..w {
            a[k] = a[k] + a[k + w];
        }
    }
    a[0]
}

/// One row against N vectors (N a compile-time constant so the accumulators live in
/// registers). Returns the N dot products; applies the update when `coef` is given.
#[inline(always)]
unsafe fn dot_row_n<T: Real, const W: usize, const N: usize>(
    row: *mut T,
    d: usize,
    vecs: *const T,
    ldv: usize,
    coef: Option<&[T]>,
    out: &mut [T],
) {
    unsafe {
        let mut acc = [[T::zero(); W]; N];
        let mut c = [T::zero(); N];
        if let Some(cf) = coef {
            c.copy_from_slice(&cf[..N]);
        }
        let mut i = 0;
        while i + W <= d {
            let r: [T; W] = load(row.add(i));
            let mut upd = [T::zero(); W];
            for n in 0..N {
                let v: [T; W] = load(vecs.add(n * ldv + i));
                for k in 0..W {
                    acc[n][k] = acc[n][k] + r[k] * v[k];
                }
                if coef.is_some() {
                    for k in 0..W {
                        upd[k] = upd[k] + c[n] * v[k];
                    }
                }
            }
            if coef.is_some() {
                let mut nr = r;
                for k in 0..W {
                    nr[k] = r[k] - upd[k];
                }
                store(row.add(i), nr);
            }
            i += W;
        }
        let mut tail = [T::zero(); N];
        while i < d {
            let r = *row.add(i);
            let mut upd = T::zero();
            for n in 0..N {
                let v = *vecs.add(n * ldv + i);
                tail[n] = tail[n] + r * v;
                upd = upd + c[n] * v;
            }
            if coef.is_some() {
                *row.add(i) = r - upd;
            }
            i += 1;
        }
        for n in 0..N {
            out[n] = tree_sum(acc[n]) + tail[n];
        }
    }
}

/// Runtime-N fallback of [`dot_row_n`] for N > 12: vectors in groups of 8, the update in a
/// second sweep over the (cached) row, after all dot products have used the old row.
#[inline(always)]
unsafe fn dot_row_any<T: Real, const W: usize>(
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
                8 => dot_row_n::<T, W, 8>(row, d, v, ldv, None, o),
                7 => dot_row_n::<T, W, 7>(row, d, v, ldv, None, o),
                6 => dot_row_n::<T, W, 6>(row, d, v, ldv, None, o),
                5 => dot_row_n::<T, W, 5>(row, d, v, ldv, None, o),
                4 => dot_row_n::<T, W, 4>(row, d, v, ldv, None, o),
                3 => dot_row_n::<T, W, 3>(row, d, v, ldv, None, o),
                2 => dot_row_n::<T, W, 2>(row, d, v, ldv, None, o),
                _ => dot_row_n::<T, W, 1>(row, d, v, ldv, None, o),
            }
            n0 += g;
        }
        if let Some(cf) = coef {
            for i in 0..d {
                let mut upd = T::zero();
                for (k, &c) in cf.iter().enumerate().take(n) {
                    upd = upd + c * *vecs.add(k * ldv + i);
                }
                *row.add(i) = *row.add(i) - upd;
            }
        }
    }
}

#[inline(always)]
unsafe fn dot_rows_impl<T: Real, const W: usize>(a: &DotArgs<T>, m0: usize, m1: usize) {
    unsafe {
        let n = a.n;
        for m in m0..m1 {
            let row = a.rows.0.add(m * a.ld);
            let out = std::slice::from_raw_parts_mut(a.out.0.add(m * n), n);
            let coef = a.coef.map(|c| &c[m * n..m * n + n]);
            macro_rules! go {
                ($($k:literal)*) => {
                    match n {
                        $($k => dot_row_n::<T, W, $k>(row, a.d, a.vecs, a.ldv, coef, out),)*
                        _ => dot_row_any::<T, W>(row, a.d, a.vecs, a.ldv, n, coef, out),
                    }
                };
            }
            go!(1 2 3 4 5 6 7 8 9 10 11 12);
            if a.scale != T::one() {
                for o in out.iter_mut() {
                    *o = *o * a.scale;
                }
            }
        }
    }
}

struct DotArgs<'a, T> {
    rows: Ptr<T>,
    ld: usize,
    d: usize,
    vecs: *const T,
    ldv: usize,
    n: usize,
    coef: Option<&'a [T]>,
    out: Ptr<T>,
    scale: T,
}
unsafe impl<T> Sync for DotArgs<'_, T> {}

/// Which instruction set the kernels run with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Avx512,
    Avx2,
    Generic,
}

/// The best instruction set of this CPU that the kernels support.
pub fn isa() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return Isa::Avx512;
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            return Isa::Avx2;
        }
    }
    Isa::Generic
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512dq,avx2")]
unsafe fn dot_avx512<T: Real, const W: usize>(a: &DotArgs<T>, m0: usize, m1: usize) {
    unsafe { dot_rows_impl::<T, W>(a, m0, m1) }
}
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot_avx2<T: Real, const W: usize>(a: &DotArgs<T>, m0: usize, m1: usize) {
    unsafe { dot_rows_impl::<T, W>(a, m0, m1) }
}

fn run_dot<T: Real>(a: &DotArgs<T>, m0: usize, m1: usize) {
    // SAFETY: the caller checked the extents; the ISA is checked at run time.
    unsafe {
        match isa() {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                if std::mem::size_of::<T>() == 8 {
                    dot_avx512::<T, 8>(a, m0, m1)
                } else {
                    dot_avx512::<T, 16>(a, m0, m1)
                }
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                if std::mem::size_of::<T>() == 8 {
                    dot_avx2::<T, 8>(a, m0, m1)
                } else {
                    dot_avx2::<T, 16>(a, m0, m1)
                }
            }
            _ => {
                if std::mem::size_of::<T>() == 8 {
                    dot_rows_impl::<T, 8>(a, m0, m1)
                } else {
                    dot_rows_impl::<T, 16>(a, m0, m1)
                }
            }
        }
    }
}

/// Parallelism of one call: sequential, or over the current rayon pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Par {
    Seq,
    Rayon,
}

/// Rows per parallel work item (fixed, so work splitting never depends on thread count;
/// results do not depend on it either way).
const ROW_BLOCK: usize = 16;

/// `out[m][n] = scale * <rows_m, vecs_n>` for m < M (out: M x N), and, when `coef`
/// (M x N) is given, `rows_m -= sum_n coef[m][n] vecs_n` in the same pass.
#[allow(clippy::too_many_arguments)]
pub fn dot_rows<T: Real>(
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
    let args = DotArgs {
        rows: Ptr(rows.as_mut_ptr()),
        ld: d,
        d,
        vecs: vecs.as_ptr(),
        ldv: d,
        n,
        coef,
        out: Ptr(out.as_mut_ptr()),
        scale,
    };
    match par {
        Par::Seq => run_dot(&args, 0, m),
        Par::Rayon => {
            let blocks = m.div_ceil(ROW_BLOCK);
            (0..blocks).into_par_iter().for_each(|b| {
                run_dot(&args, b * ROW_BLOCK, ((b + 1) * ROW_BLOCK).min(m));
            })
        }
    }
}

struct AxpyArgs<'a, T> {
    rows: Ptr<T>,
    m: usize,
    d: usize,
    a: &'a [T],
    b: Option<&'a [T]>,
    vecs: *const T,
    tgt: Ptr<T>,
    n: usize,
}
unsafe impl<T> Sync for AxpyArgs<'_, T> {}

/// Columns [c0, c0 + W*2) (or fewer at the end) of every row; accumulators for up to
/// 12 targets in registers.
#[inline(always)]
unsafe fn axpy_tile_n<T: Real, const W: usize, const N: usize>(x: &AxpyArgs<T>, c0: usize) {
    unsafe {
        let d = x.d;
        let full = c0 + 2 * W <= d;
        if !full {
            // Ragged end tile: scalar code, same summation order (over m) per entry.
            for c in c0..d {
                let mut t = [T::zero(); N];
                for (n, tn) in t.iter_mut().enumerate() {
                    *tn = *x.tgt.0.add(n * d + c);
                }
                for mm in 0..x.m {
                    let rp = x.rows.0.add(mm * d + c);
                    let r = *rp;
                    let a = &x.a[mm * N..mm * N + N];
                    for n in 0..N {
                        t[n] = t[n] + a[n] * r;
                    }
                    if let Some(b) = x.b {
                        let b = &b[mm * N..mm * N + N];
                        let mut u = T::zero();
                        for n in 0..N {
                            u = u + b[n] * *x.vecs.add(n * d + c);
                        }
                        *rp = r - u;
                    }
                }
                for (n, tn) in t.iter().enumerate() {
                    *x.tgt.0.add(n * d + c) = *tn;
                }
            }
            return;
        }
        let mut t = [[[T::zero(); W]; 2]; N];
        for n in 0..N {
            t[n][0] = load(x.tgt.0.add(n * d + c0));
            t[n][1] = load(x.tgt.0.add(n * d + c0 + W));
        }
        for mm in 0..x.m {
            let rp = x.rows.0.add(mm * d + c0);
            let r0: [T; W] = load(rp);
            let r1: [T; W] = load(rp.add(W));
            let a = &x.a[mm * N..mm * N + N];
            for n in 0..N {
                let an = a[n];
                for k in 0..W {
                    t[n][0][k] = t[n][0][k] + an * r0[k];
                    t[n][1][k] = t[n][1][k] + an * r1[k];
                }
            }
            if let Some(b) = x.b {
                let b = &b[mm * N..mm * N + N];
                let mut u0 = [T::zero(); W];
                let mut u1 = [T::zero(); W];
                for n in 0..N {
                    let bn = b[n];
                    let v0: [T; W] = load(x.vecs.add(n * d + c0));
                    let v1: [T; W] = load(x.vecs.add(n * d + c0 + W));
                    for k in 0..W {
                        u0[k] = u0[k] + bn * v0[k];
                        u1[k] = u1[k] + bn * v1[k];
                    }
                }
                let mut n0 = r0;
                let mut n1 = r1;
                for k in 0..W {
                    n0[k] = r0[k] - u0[k];
                    n1[k] = r1[k] - u1[k];
                }
                store(rp, n0);
                store(rp.add(W), n1);
            }
        }
        for n in 0..N {
            store(x.tgt.0.add(n * d + c0), t[n][0]);
            store(x.tgt.0.add(n * d + c0 + W), t[n][1]);
        }
    }
}

#[inline(always)]
unsafe fn axpy_impl<T: Real, const W: usize>(x: &AxpyArgs<T>, t0: usize, t1: usize) {
    unsafe {
        macro_rules! go {
            ($($k:literal)*) => {
                for tile in t0..t1 {
                    match x.n {
                        $($k => axpy_tile_n::<T, W, $k>(x, tile * 2 * W),)*
                        _ => unreachable!(),
                    }
                }
            };
        }
        go!(1 2 3 4 5 6 7 8 9 10 11 12);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512dq,avx2")]
unsafe fn axpy_avx512<T: Real, const W: usize>(x: &AxpyArgs<T>, t0: usize, t1: usize) {
    unsafe { axpy_impl::<T, W>(x, t0, t1) }
}
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn axpy_avx2<T: Real, const W: usize>(x: &AxpyArgs<T>, t0: usize, t1: usize) {
    unsafe { axpy_impl::<T, W>(x, t0, t1) }
}

fn run_axpy<T: Real>(x: &AxpyArgs<T>, t0: usize, t1: usize) {
    // SAFETY: extents checked by the caller; ISA checked at run time.
    unsafe {
        match isa() {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                if std::mem::size_of::<T>() == 8 {
                    axpy_avx512::<T, 8>(x, t0, t1)
                } else {
                    axpy_avx512::<T, 16>(x, t0, t1)
                }
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                if std::mem::size_of::<T>() == 8 {
                    axpy_avx2::<T, 8>(x, t0, t1)
                } else {
                    axpy_avx2::<T, 16>(x, t0, t1)
                }
            }
            _ => {
                if std::mem::size_of::<T>() == 8 {
                    axpy_impl::<T, 8>(x, t0, t1)
                } else {
                    axpy_impl::<T, 16>(x, t0, t1)
                }
            }
        }
    }
}

/// Tiles per parallel work item.
const TILE_BLOCK: usize = 4;

/// `tgt_n += sum_m a[m][n] rows_m` for n < N (tgt: N x D; a: M x N), and, when `b`
/// (M x N) is given, `rows_m -= sum_n b[m][n] vecs_n` (vecs: N x D) in the same pass,
/// the targets using the rows before their update.
#[allow(clippy::too_many_arguments)]
pub fn axpy_rows<T: Real>(
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
    if n > 12 {
        // Groups of at most 12 targets; the row update goes with the last group so that
        // every group reads the rows before the update.
        let mut n0 = 0;
        let mut a_g = vec![T::zero(); m * 12];
        let mut b_g = vec![T::zero(); m * 12];
        while n0 < n {
            let g = (n - n0).min(12);
            let last = n0 + g == n;
            for mm in 0..m {
                for k in 0..g {
                    a_g[mm * g + k] = a[mm * n + n0 + k];
                }
            }
            axpy_rows(
                rows,
                m,
                d,
                &a_g[..m * g],
                None,
                vecs,
                g,
                &mut tgt[n0 * d..(n0 + g) * d],
                par,
            );
            n0 += g;
            if last {
                break;
            }
        }
        if let Some(b) = b {
            // Row update: rows_m -= sum_n b[m][n] vecs_n, as a zero-target axpy per group.
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
                let _ = &mut scratch;
                axpy_rows(
                    rows,
                    m,
                    d,
                    &a_g[..m * g],
                    Some(&b_g[..m * g]),
                    &vecs[k0 * d..(k0 + g) * d],
                    g,
                    &mut scratch[..g * d],
                    par,
                );
                k0 += g;
            }
        }
        return;
    }
    let x = AxpyArgs {
        rows: Ptr(rows.as_mut_ptr()),
        m,
        d,
        a,
        b,
        vecs: vecs.as_ptr(),
        tgt: Ptr(tgt.as_mut_ptr()),
        n,
    };
    let w = 2 * if std::mem::size_of::<T>() == 8 { 8 } else { 16 };
    let tiles = d.div_ceil(w);
    match par {
        Par::Seq => run_axpy(&x, 0, tiles),
        Par::Rayon => {
            let blocks = tiles.div_ceil(TILE_BLOCK);
            (0..blocks).into_par_iter().for_each(|b| {
                run_axpy(&x, b * TILE_BLOCK, ((b + 1) * TILE_BLOCK).min(tiles));
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
