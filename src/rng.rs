//! Stream-addressed, counter-based random numbers.
//!
//! Every random number reslim draws is a pure function of `(seed, tensor, layer, row,
//! column)`: the generator is Philox4x32-10 (Salmon, Moraes, Dror, Shaw, "Parallel random
//! numbers: as easy as 1, 2, 3", SC'11), keyed by a hash of `(seed, tensor, layer)` and
//! counted by the element's `(row, column)`. Consequences:
//!
//! - results never depend on the thread count or the order in which blocks are drawn;
//! - any row of any weight matrix can be regenerated on demand without having been stored
//!   (what a matrix-free backend needs);
//! - prefixes are coupled: the entry `(r, c)` of a tensor does not depend on the tensor's
//!   size, so the first D rows of a d_max-row embedding are exactly the embedding of the
//!   width-D model (docs/papers.md section 2.4, "coupled randomness").
//!
//! Standard normals come from a 256-layer ziggurat (Marsaglia & Tsang 2000, with
//! Doornik's 2005 symmetric variant): entry `(r, c)` uses the 64-bit half `c mod 2` of the
//! Philox block with counter `(c / 2, r, 0, 0)`; the rare rejections (about 1.5%) draw
//! from the element's private counters `(c, r, attempt, 1)`, so even they stay addressable.
//!
//! Rows are filled ([`Stream::fill_normal_row`]) in steps of 32 columns from an even one:
//! the 16 Philox blocks `(c/2 + j, r, 0, 0)`, then the ziggurat's fast path on their 32
//! words, branch-free, then the rejected columns in batches (`Pending`). The AVX-512 filler
//! does this 8 lanes to a vector (see the `avx512` module), the portable one on arrays of
//! lanes; both reproduce [`Stream::normal`] bit for bit, as the tests check, so results
//! never depend on the CPU either.

#![allow(clippy::needless_range_loop)] // Lanes of several arrays are indexed together.

use std::sync::OnceLock;

/// What a random stream is for: the `tensor` part of a stream's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tensor {
    WE,
    U,
    V,
    WU,
    DataX,
    DataY,
    /// Free for other uses (sweeps, bootstrap, mean-field particles); distinct values give
    /// independent streams.
    Other(u32),
}

impl Tensor {
    fn id(self) -> u64 {
        match self {
            Tensor::WE => 1,
            Tensor::U => 2,
            Tensor::V => 3,
            Tensor::WU => 4,
            Tensor::DataX => 5,
            Tensor::DataY => 6,
            Tensor::Other(k) => 0x1_0000_0000 + k as u64,
        }
    }
}

/// SplitMix64's finaliser (Steele, Lea, Flood 2014): a bijective 64-bit mixer.
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Derives a child seed from a parent seed and a label (for sweeps: task seeds from the
/// sweep seed and the task id, never from the order of execution).
pub fn derive_seed(parent: u64, label: u64) -> u64 {
    mix64(mix64(parent) ^ label.wrapping_mul(0xD6E8_FEB8_6659_FD93))
}

/// One Philox4x32 round constant set.
const PHILOX_M0: u32 = 0xD251_1F53;
const PHILOX_M1: u32 = 0xCD9E_8D57;
const PHILOX_W0: u32 = 0x9E37_79B9;
const PHILOX_W1: u32 = 0xBB67_AE85;

/// Philox4x32-10: the block `ctr` under `key`.
#[inline(always)]
pub fn philox4x32(ctr: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    philox4x32_lanes::<1>(ctr.map(|w| [w]), key).map(|w| w[0])
}

/// [`philox4x32`] of `N` blocks at once, in structure-of-arrays form: `ctr[w][j]` is word
/// `w` of block `j`. The same rounds, written lane by lane so that they vectorize.
#[inline(always)]
fn philox4x32_lanes<const N: usize>(ctr: [[u32; N]; 4], key: [u32; 2]) -> [[u32; N]; 4] {
    let [mut c0, mut c1, mut c2, mut c3] = ctr;
    let [mut k0, mut k1] = key;
    for round in 0..10 {
        if round > 0 {
            k0 = k0.wrapping_add(PHILOX_W0);
            k1 = k1.wrapping_add(PHILOX_W1);
        }
        for j in 0..N {
            let p0 = (PHILOX_M0 as u64) * (c0[j] as u64);
            let p1 = (PHILOX_M1 as u64) * (c2[j] as u64);
            c0[j] = ((p1 >> 32) as u32) ^ c1[j] ^ k0;
            c1[j] = p1 as u32;
            c2[j] = ((p0 >> 32) as u32) ^ c3[j] ^ k1;
            c3[j] = p0 as u32;
        }
    }
    [c0, c1, c2, c3]
}

/// A random stream: the key of `(seed, tensor, layer)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stream {
    key: [u32; 2],
}

impl Stream {
    pub fn new(seed: u64, tensor: Tensor, layer: u64) -> Self {
        let k = mix64(mix64(mix64(seed) ^ tensor.id()) ^ layer.wrapping_add(0x5851_F42D));
        Stream {
            key: [k as u32, (k >> 32) as u32],
        }
    }

    /// The two 64-bit words of block `(a, b, c, d)`.
    #[inline(always)]
    fn block(&self, a: u64, b: u64, c: u32, d: u32) -> [u64; 2] {
        // Columns and rows up to 2^32 each; their high halves go to the third word.
        let x = philox4x32(
            [
                a as u32,
                b as u32,
                c ^ ((a >> 32) as u32) << 16,
                d ^ ((b >> 32) as u32) << 16,
            ],
            self.key,
        );
        [
            (x[0] as u64) | ((x[1] as u64) << 32),
            (x[2] as u64) | ((x[3] as u64) << 32),
        ]
    }

    /// A uniform in [0, 1) for element `(row, col)` (53 random bits).
    pub fn uniform(&self, row: u64, col: u64) -> f64 {
        let w = self.block(col / 2, row, 0, 2)[(col % 2) as usize];
        (w >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// The standard normal of element `(row, col)`.
    #[inline]
    pub fn normal(&self, row: u64, col: u64) -> f64 {
        self.normal_in(zig(), row, col)
    }

    /// [`Stream::normal`] with the tables at hand: the element-wise definition that the
    /// row fillers reproduce bit for bit.
    #[inline]
    fn normal_in(&self, z: &Ziggurat, row: u64, col: u64) -> f64 {
        let w = self.block(col / 2, row, 0, 0)[(col % 2) as usize];
        match z.fast(w) {
            Some(x) => x,
            None => z.slow(w, |attempt| self.block(col, row, attempt, 1)),
        }
    }

    /// Fills `out` with the standard normals of row `row`, columns `col0..col0+out.len()`,
    /// each multiplied by `scale`: `out[k] == self.normal(row, col0 + k) * scale`, bit for
    /// bit. Runs the AVX-512 filler where the CPU has it (see [`crate::cpu::isa`];
    /// `RESLIM_NO_AVX512` turns it off), else the portable one (compiled with AVX2 + FMA
    /// where [`crate::cpu::isa`] allows); all give the same bits.
    pub fn fill_normal_row(&self, row: u64, col0: u64, scale: f64, out: &mut [f64]) {
        fill_row(self, row, col0, scale, out)
    }

    /// [`Stream::fill_normal_row`] for f32 storage: `out[k] == (self.normal(row, col0 + k)
    /// * scale) as f32`, the normal drawn and scaled in f64, then rounded once.
    pub fn fill_normal_row_f32(&self, row: u64, col0: u64, scale: f64, out: &mut [f32]) {
        fill_row(self, row, col0, scale, out)
    }

    /// The words of the 16 blocks `(pair0 + j, row, 0, 0)`, `j < 16`, in column order:
    /// entry `2 j + h` is half `h` of block `pair0 + j`, the word of column
    /// `2 (pair0 + j) + h`. Philox runs on structure-of-arrays lanes, which the compiler
    /// vectorizes.
    #[inline(always)]
    fn words16(&self, pair0: u64, row: u64) -> [u64; STEP] {
        let mut c = [[0u32; 16]; 4];
        for j in 0..16 {
            let a = pair0 + j as u64;
            // As in `block`: the high halves of column pair and row go to words 2 and 3.
            c[0][j] = a as u32;
            c[1][j] = row as u32;
            c[2][j] = ((a >> 32) as u32) << 16;
            c[3][j] = ((row >> 32) as u32) << 16;
        }
        let [c0, c1, c2, c3] = philox4x32_lanes(c, self.key);
        let mut w = [0u64; STEP];
        for j in 0..16 {
            w[2 * j] = (c0[j] as u64) | ((c1[j] as u64) << 32);
            w[2 * j + 1] = (c2[j] as u64) | ((c3[j] as u64) << 32);
        }
        w
    }

    /// A whole `rows x cols` matrix in row-major order, times `scale`.
    pub fn normal_matrix(&self, rows: usize, cols: usize, scale: f64) -> Vec<f64> {
        let mut out = vec![0.0; rows * cols];
        for (r, row) in out.chunks_mut(cols.max(1)).enumerate() {
            self.fill_normal_row(r as u64, 0, scale, row);
        }
        out
    }
}

/// Columns per step of the row fillers: 16 Philox blocks of two 64-bit words each.
const STEP: usize = 32;

/// What the row fillers write: the f64 normal times the scale, converted (f64: as is; f32:
/// rounded to nearest, as `as f32` and `vcvtpd2ps` both do).
trait RowElem: Copy {
    fn of(x: f64) -> Self;
    /// Stores 8 lanes, converted, at `p` (unaligned).
    #[cfg(target_arch = "x86_64")]
    unsafe fn store8(p: *mut Self, v: std::arch::x86_64::__m512d);
}

impl RowElem for f64 {
    #[inline(always)]
    fn of(x: f64) -> f64 {
        x
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn store8(p: *mut f64, v: std::arch::x86_64::__m512d) {
        // SAFETY: the caller has AVX-512F and 8 writable f64 at `p`.
        unsafe { std::arch::x86_64::_mm512_storeu_pd(p, v) }
    }
}

impl RowElem for f32 {
    #[inline(always)]
    fn of(x: f64) -> f32 {
        x as f32
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn store8(p: *mut f32, v: std::arch::x86_64::__m512d) {
        use std::arch::x86_64::*;
        // SAFETY: the caller has AVX-512F and 8 writable f32 at `p`.
        unsafe { _mm256_storeu_ps(p, _mm512_cvtpd_ps(v)) }
    }
}

/// The row filler of [`Stream::fill_normal_row`] and [`Stream::fill_normal_row_f32`].
fn fill_row<O: RowElem>(s: &Stream, row: u64, col0: u64, scale: f64, out: &mut [O]) {
    let z = zig();
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::isa() == crate::cpu::Isa::Avx512
        && let Some(t) = crate::cpu::Avx512::try_new()
    {
        avx512::fill_row(t, s, z, row, col0, scale, out);
        return;
    }
    // Elsewhere the portable filler, compiled for AVX2 (+ FMA) where `isa` says so (LLVM
    // vectorizes the Philox lanes): the same operations, so the same bits.
    crate::cpu::vectorized(|| fill_row_portable(s, z, row, col0, scale, out))
}

/// The portable row filler. An odd `col0` is drawn alone; then each step of [`STEP`]
/// columns starts at an even column `c`: the 16 blocks `(c/2 + j, row, 0, 0)` in lanes
/// ([`Stream::words16`]), the fast ziggurat test of all 32 words without branches, and
/// the rejected columns recorded in a [`Pending`] list, fixed up in batches. Inlined
/// into its AVX2 build ([`fill_row_avx2`]).
#[inline(always)]
fn fill_row_portable<O: RowElem>(
    s: &Stream,
    z: &Ziggurat,
    row: u64,
    col0: u64,
    scale: f64,
    out: &mut [O],
) {
    let Some(first) = out.first_mut() else {
        return;
    };
    let mut k = 0;
    if col0 % 2 == 1 {
        *first = O::of(s.normal_in(z, row, col0) * scale);
        k = 1;
    }
    let mut pending = Pending::new();
    while k < out.len() {
        let c = col0 + k as u64;
        let words = s.words16(c / 2, row);
        let end = (k + STEP).min(out.len());
        let mut rejected = 0u32;
        for (j, o) in out[k..end].iter_mut().enumerate() {
            let (x, ok) = z.fast_lane(words[j]);
            *o = O::of(x * scale);
            rejected |= (!ok as u32) << j;
        }
        pending.push_mask(rejected, k);
        if pending.full() {
            pending.flush(s, z, row, col0, scale, out);
        }
        k = end;
    }
    pending.flush(s, z, row, col0, scale, out);
}

/// Capacity of [`Pending`].
const PENDING: usize = 64;

/// The rejected draws of a row (about 1.5% of them), recorded by the fast loop without a
/// branch and fixed up in batches of 8 whose Philox blocks run in lanes: the draw's own
/// word `(col/2, row, 0, 0)[col % 2]` is drawn again, and its first extra block
/// `(col, row, 0, 1)` drawn; the first round of [`Ziggurat::slow`] (wedge test with the
/// block's first word, else the fast test of its second) then runs for the 8 together;
/// what it leaves undecided (the tail, about 1 in 4000 draws, and second rejections, 1 in
/// 10^4) goes through [`Ziggurat::slow`] itself. The same blocks and the same arithmetic
/// as [`Stream::normal`], so the same bits. (A branch per step on "any rejection", taken
/// by about 40% of the steps at random, cost more in mispredictions than all the rest of
/// the slow path.)
struct Pending {
    n: usize,
    /// Where the rejected normals go: indices into the row's output, in increasing order.
    at: [usize; PENDING],
}

impl Pending {
    fn new() -> Self {
        Pending {
            n: 0,
            at: [0; PENDING],
        }
    }

    /// Records the bits of `mask` (rejected lanes of a step, at most [`STEP`]) as the
    /// output indices `at0 + bit`. Two entries are written unconditionally (entries past
    /// `n` are scratch), so the usual 0, 1 or 2 rejections of a step take no branch.
    #[inline(always)]
    fn push_mask(&mut self, mut mask: u32, at0: usize) {
        let (n, count) = (self.n, mask.count_ones() as usize);
        self.at[n] = at0 + mask.trailing_zeros() as usize;
        mask &= mask.wrapping_sub(1);
        self.at[n + 1] = at0 + mask.trailing_zeros() as usize;
        mask &= mask.wrapping_sub(1);
        let mut m = n + 2;
        while mask != 0 {
            self.at[m] = at0 + mask.trailing_zeros() as usize;
            mask &= mask - 1;
            m += 1;
        }
        self.n = n + count;
    }

    /// Whether the rejections of one more step might not fit (with the two scratch
    /// entries of [`Pending::push_mask`]).
    #[inline(always)]
    fn full(&self) -> bool {
        self.n > PENDING - STEP
    }

    /// Writes the pending normals of row `row` (output index `k` is column `col0 + k`),
    /// times `scale`, and empties the list.
    #[inline(always)]
    fn flush<O: RowElem>(
        &mut self,
        s: &Stream,
        z: &Ziggurat,
        row: u64,
        col0: u64,
        scale: f64,
        out: &mut [O],
    ) {
        for base in (0..self.n).step_by(8) {
            let m = (self.n - base).min(8);
            // Lanes 0..8: the blocks `(col/2, row, 0, 0)` of the draws' words; lanes
            // 8..16: their first extra blocks `(col, row, 0, 1)`; counters as in
            // `Stream::block`. Lanes past `m` are unused.
            let mut c = [[0u32; 16]; 4];
            for j in 0..8 {
                let col = col0 + self.at[base + j] as u64;
                let pair = col / 2;
                c[0][j] = pair as u32;
                c[0][j + 8] = col as u32;
                c[1][j] = row as u32;
                c[1][j + 8] = row as u32;
                c[2][j] = ((pair >> 32) as u32) << 16;
                c[2][j + 8] = ((col >> 32) as u32) << 16;
                c[3][j] = ((row >> 32) as u32) << 16;
                c[3][j + 8] = 1 ^ (((row >> 32) as u32) << 16);
            }
            let [x0, x1, x2, x3] = philox4x32_lanes(c, s.key);
            let word = |j: usize, h: usize| {
                let (lo, hi) = if h == 0 {
                    (x0[j], x1[j])
                } else {
                    (x2[j], x3[j])
                };
                (lo as u64) | ((hi as u64) << 32)
            };
            let w: [u64; 8] = std::array::from_fn(|j| {
                let col = col0 + self.at[base + j] as u64;
                word(j, (col % 2) as usize)
            });
            let b0: [u64; 8] = std::array::from_fn(|j| word(j + 8, 0));
            let b1: [u64; 8] = std::array::from_fn(|j| word(j + 8, 1));
            // The first round of `Ziggurat::slow` for all 8, without branches.
            let mut x = [0.0; 8];
            let mut wedge = [0.0; 8];
            for j in 0..8 {
                let i = (w[j] & 0xff) as usize;
                x[j] = z.fast_lane(w[j]).0;
                wedge[j] = z.wedge_point(i.max(1), b0[j]);
            }
            let density: [f64; 8] = std::array::from_fn(|j| wedge_density(x[j]));
            for j in 0..m {
                let at = self.at[base + j];
                let layer0 = w[j] & 0xff == 0;
                let (x_next, ok_next) = z.fast_lane(b1[j]);
                let ok_wedge = wedge[j] < density[j];
                let v = if !layer0 && (ok_wedge || ok_next) {
                    if ok_wedge { x[j] } else { x_next }
                } else {
                    // The tail, or a second rejection: the whole slow path again.
                    let col = col0 + at as u64;
                    let first = [b0[j], b1[j]];
                    z.slow(w[j], |attempt| match attempt {
                        0 => first,
                        _ => s.block(col, row, attempt, 1),
                    })
                };
                out[at] = O::of(v * scale);
            }
        }
        self.n = 0;
    }
}

/// The AVX-512F row filler: 16 Philox blocks, 32 normals, per step.
///
/// Philox keeps one 32-bit word per 64-bit lane, the upper half don't-care: then
/// `_mm512_mul_epu32` gives the full 32x32->64 products of 8 lanes in one instruction, `hi`
/// is one shift and `lo` needs none, so a round is 2 multiplies, 2 shifts and 2 three-way
/// XORs (`vpternlogq`) per 8 blocks. (With 16 blocks in 32-bit lanes the 16 products take
/// the same 2 `vpmuludq` per 8, plus shifts and blends to split and merge even and odd
/// lanes; `vpmulld` for the low halves is slower still.) A step runs two such vectors as
/// independent chains, the ten rounds unrolled and their keys broadcast once per row. Lane
/// `l` of vector `g` holds the column pair `c/2 + 8g + [0, 4, 1, 5, 2, 6, 3, 7][l]`, so that
/// `unpacklo/hi_epi64` of the blocks' (even, odd) column words give 8 consecutive columns
/// each, without a cross-lane permute.
///
/// The ziggurat's fast path then runs on 8 words at a time ([`fast8`]). The layer table is
/// read as 16-byte pairs `(x[i], x[i+1])` (`Ziggurat::pairs`): the 8 layer indices (the
/// words' low bytes) come out in one register (`vpmovqb`, `vmovq`), each pair is one
/// 16-byte load, and inserts plus `unpacklo/hi_pd` make the `x[i]` and `x[i+1]` vectors.
/// That beats two `vgatherqpd` (of `x` and `x + 1`) by about 0.6 ns a normal on the AMD
/// Zen 4 this was tuned on (1.28 against 1.91 ns for Philox plus fast path in isolation),
/// gathers being slow there. `u = m 2^-51 - 1` is exact: the top 52 bits as the mantissa of
/// a number in [2, 4), minus 3 (AVX-512F has no u64 -> f64 conversion). All lanes are
/// scaled and stored straight into the output (f32: `vcvtpd2ps`); the rejected lanes go to
/// a [`Pending`] list, without a branch, and are overwritten by [`flush`].
///
/// Every operation is the scalar code's, correctly rounded and without contraction into
/// fused multiply-adds, so the bits are those of [`Stream::normal`]. Where the 16 column
/// pairs of a step do not share their high half (columns near multiples of 2^33) the step
/// is left to the portable filler.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{
        PHILOX_M0, PHILOX_M1, PHILOX_W0, PHILOX_W1, Pending, RowElem, STEP, Stream, Ziggurat,
        fill_row_portable, wedge_density,
    };
    use std::arch::x86_64::*;

    /// The ten round keys of a stream, broadcast.
    type Keys = [[__m512i; 2]; 10];

    /// The lanes of a vector of 8 u64.
    #[inline(always)]
    fn u64s(v: __m512i) -> [u64; 8] {
        // SAFETY: both are 64 bytes of plain integers.
        unsafe { std::mem::transmute::<__m512i, [u64; 8]>(v) }
    }

    /// The lanes of a vector of 8 f64.
    #[inline(always)]
    fn f64s(v: __m512d) -> [f64; 8] {
        // SAFETY: both are 64 bytes of plain floats.
        unsafe { std::mem::transmute::<__m512d, [f64; 8]>(v) }
    }

    /// Ten Philox rounds on two vectors of 8 blocks (words `[c0, c1, c2, c3]`, one per
    /// 64-bit lane, upper halves ignored).
    #[inline(always)]
    unsafe fn philox16(s: &mut [[__m512i; 4]; 2], keys: &Keys) {
        // SAFETY: called from the AVX-512F filler only.
        unsafe {
            let m0 = _mm512_set1_epi64(PHILOX_M0 as i64);
            let m1 = _mm512_set1_epi64(PHILOX_M1 as i64);
            // The ten rounds, unrolled (a loop over `keys` stays rolled and shuffles registers).
            macro_rules! round {
                ($r:expr) => {
                    let [k0, k1] = keys[$r];
                    for g in s.iter_mut() {
                        let [c0, c1, c2, c3] = *g;
                        let p0 = _mm512_mul_epu32(c0, m0);
                        let p1 = _mm512_mul_epu32(c2, m1);
                        *g = [
                            _mm512_ternarylogic_epi64::<0x96>(_mm512_srli_epi64::<32>(p1), c1, k0),
                            p1,
                            _mm512_ternarylogic_epi64::<0x96>(_mm512_srli_epi64::<32>(p0), c3, k1),
                            p0,
                        ];
                    }
                };
            }
            round!(0);
            round!(1);
            round!(2);
            round!(3);
            round!(4);
            round!(5);
            round!(6);
            round!(7);
            round!(8);
            round!(9);
        }
    }

    /// The 32 words of the blocks `(pair0 + j, row, 0, 0)`, `j < 16`, as 4 vectors of 8
    /// consecutive columns from `2 pair0`. `ctr = [row, pair0_hi, row_hi]`: counter words
    /// 1..3, broadcast; the caller makes sure that all 16 pairs share their high half.
    #[inline(always)]
    unsafe fn words32(pair0: u64, ctr: [__m512i; 3], keys: &Keys) -> [__m512i; 4] {
        // SAFETY: called from the AVX-512F filler only.
        unsafe {
            let [c1, c2, c3] = ctr;
            let lane = _mm512_setr_epi64(0, 4, 1, 5, 2, 6, 3, 7);
            let a = _mm512_add_epi64(_mm512_set1_epi64(pair0 as i64), lane);
            let b = _mm512_add_epi64(a, _mm512_set1_epi64(8));
            let mut s = [[a, c1, c2, c3], [b, c1, c2, c3]];
            philox16(&mut s, keys);
            let mut w = [_mm512_setzero_si512(); 4];
            for (g, [x0, x1, x2, x3]) in s.into_iter().enumerate() {
                // The two 64-bit words of each block: lo | hi << 32.
                let even = _mm512_mask_blend_epi32(0xAAAA, x0, _mm512_slli_epi64::<32>(x1));
                let odd = _mm512_mask_blend_epi32(0xAAAA, x2, _mm512_slli_epi64::<32>(x3));
                w[2 * g] = _mm512_unpacklo_epi64(even, odd);
                w[2 * g + 1] = _mm512_unpackhi_epi64(even, odd);
            }
            w
        }
    }

    /// The ziggurat's fast path on 8 words: the candidates `u x[i]` and the mask of the
    /// accepted lanes.
    #[inline(always)]
    unsafe fn fast8(w: __m512i, pairs: &[[f64; 2]; 256]) -> (__m512d, __mmask8) {
        // SAFETY: called from the AVX-512F filler only.
        unsafe {
            // `(x[i], x[i+1])` of lane l, one 16-byte load; i = the low byte of the word.
            // The 8 layer indices, one byte each, in one general register (`vpmovqb`).
            let idx = _mm_cvtsi128_si64(_mm512_cvtepi64_epi8(w)) as u64;
            // SAFETY: a reference to 2 f64 is valid for a 16-byte load.
            let pair = |l: usize| _mm_loadu_pd(pairs[(idx >> (8 * l)) as u8 as usize].as_ptr());
            // Even lanes in a, odd lanes in b; unpacklo/hi then yield x[i] and x[i+1] in lane
            // order.
            let quad = |l0: usize| {
                let lo = _mm256_insertf128_pd::<1>(_mm256_castpd128_pd256(pair(l0)), pair(l0 + 2));
                let hi =
                    _mm256_insertf128_pd::<1>(_mm256_castpd128_pd256(pair(l0 + 4)), pair(l0 + 6));
                _mm512_insertf64x4::<1>(_mm512_castpd256_pd512(lo), hi)
            };
            let (a, b) = (quad(0), quad(1));
            let (xi, xi1) = (_mm512_unpacklo_pd(a, b), _mm512_unpackhi_pd(a, b));
            // 2 + m 2^-51 (m = w >> 12 as the mantissa of [2, 4)), minus 3: u = m 2^-51 - 1,
            // exact, the scalar path's value.
            let two = _mm512_or_si512(
                _mm512_srli_epi64::<12>(w),
                _mm512_set1_epi64(0x4000_0000_0000_0000),
            );
            let u = _mm512_sub_pd(_mm512_castsi512_pd(two), _mm512_set1_pd(3.0));
            let x = _mm512_mul_pd(u, xi);
            let ok = _mm512_cmp_pd_mask::<_CMP_LT_OQ>(_mm512_abs_pd(x), xi1);
            (x, ok)
        }
    }

    /// `1 / j!` for `j = 0..=9`.
    const INV_FACTORIAL: [f64; 10] = [
        1.0,
        1.0,
        1.0 / 2.0,
        1.0 / 6.0,
        1.0 / 24.0,
        1.0 / 120.0,
        1.0 / 720.0,
        1.0 / 5_040.0,
        1.0 / 40_320.0,
        1.0 / 362_880.0,
    ];

    /// Bounds `(below, above)` with `below < exp(t) < above` for whatever `exp` returns
    /// (any result within 2^-31 of the true value; a libm's is within 1 ulp = 2^-52),
    /// for `-8 < t <= 0`: `2^k e^r` with `k = round(t / ln 2)`, `|r| <= ln(2)/2`, and the
    /// degree-9 Taylor polynomial of `e^r` (truncation below 2e-11 relative, rounding and
    /// the reduction below 1e-15), widened by 2^-30 each way.
    #[inline(always)]
    unsafe fn exp_squeeze(t: __m512d) -> (__m512d, __m512d) {
        // SAFETY: called from the AVX-512F filler only.
        unsafe {
            let k = _mm512_roundscale_pd::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                _mm512_mul_pd(t, _mm512_set1_pd(std::f64::consts::LOG2_E)),
            );
            let r = _mm512_fnmadd_pd(k, _mm512_set1_pd(std::f64::consts::LN_2), t);
            // sum r^j / j!, j <= 9, by Estrin's scheme (a shorter chain than Horner's).
            let c = |j: usize| _mm512_set1_pd(INV_FACTORIAL[j]);
            let fma = |a, b, c| _mm512_fmadd_pd(a, b, c);
            let r2 = _mm512_mul_pd(r, r);
            let r4 = _mm512_mul_pd(r2, r2);
            let p0_3 = fma(r2, fma(r, c(3), c(2)), fma(r, c(1), c(0)));
            let p4_7 = fma(r2, fma(r, c(7), c(6)), fma(r, c(5), c(4)));
            let p8_9 = fma(r, c(9), c(8));
            let p = fma(_mm512_mul_pd(r4, r4), p8_9, fma(r4, p4_7, p0_3));
            let e = _mm512_scalef_pd(p, k);
            let margin = 1.0 / (1u64 << 30) as f64;
            (
                _mm512_mul_pd(e, _mm512_set1_pd(1.0 - margin)),
                _mm512_mul_pd(e, _mm512_set1_pd(1.0 + margin)),
            )
        }
    }

    /// [`exp_squeeze`] as lanes, for the tests.
    ///
    /// # Safety
    /// The CPU must support AVX-512F.
    #[cfg(test)]
    pub(super) unsafe fn exp_squeeze_lanes(t: [f64; 8]) -> ([f64; 8], [f64; 8]) {
        // SAFETY: the caller's; 8 f64 are the 64 bytes of a vector.
        let (lo, hi) = unsafe { exp_squeeze(std::mem::transmute::<[f64; 8], __m512d>(t)) };
        (f64s(lo), f64s(hi))
    }

    /// See the module docs; same contract as [`super::fill_row_portable`]. The token
    /// proves AVX-512F.
    #[inline]
    pub(super) fn fill_row<O: RowElem>(
        t: crate::cpu::Avx512,
        s: &Stream,
        z: &Ziggurat,
        row: u64,
        col0: u64,
        scale: f64,
        out: &mut [O],
    ) {
        let _: crate::cpu::Avx512 = t;
        // SAFETY: the token exists, so the CPU has AVX-512F.
        unsafe { fill_row_512(s, z, row, col0, scale, out) }
    }

    #[target_feature(enable = "avx512f")]
    fn fill_row_512<O: RowElem>(
        s: &Stream,
        z: &Ziggurat,
        row: u64,
        col0: u64,
        scale: f64,
        out: &mut [O],
    ) {
        let n = out.len();
        if n == 0 {
            return;
        }
        let mut k = 0;
        if col0 % 2 == 1 {
            out[0] = O::of(s.normal_in(z, row, col0) * scale);
            k = 1;
        }
        let mut keys = [[_mm512_setzero_si512(); 2]; 10];
        for (r, kr) in keys.iter_mut().enumerate() {
            let r = r as u32;
            *kr = [
                _mm512_set1_epi64(s.key[0].wrapping_add(PHILOX_W0.wrapping_mul(r)) as i64),
                _mm512_set1_epi64(s.key[1].wrapping_add(PHILOX_W1.wrapping_mul(r)) as i64),
            ];
        }
        let c1 = _mm512_set1_epi64(row as u32 as i64);
        let c3 = _mm512_set1_epi64((((row >> 32) as u32) << 16) as i64);
        let sc = _mm512_set1_pd(scale);
        let mut tail = [O::of(0.0); STEP];
        let mut pending = Pending::new();
        while k < n {
            let c = col0 + k as u64;
            let len = (n - k).min(STEP);
            let pair0 = c / 2;
            if (pair0 >> 32) != ((pair0 + 15) >> 32) {
                // The 16 pairs straddle a multiple of 2^32 (columns beyond 2^33 only).
                fill_row_portable(s, z, row, c, scale, &mut out[k..k + len]);
                k += len;
                continue;
            }
            let c2 = _mm512_set1_epi64((((pair0 >> 32) as u32) << 16) as i64);
            // SAFETY: this function runs with AVX-512F.
            let words = unsafe { words32(pair0, [c1, c2, c3], &keys) };
            // A full step goes straight into `out`, a partial last one through `tail`.
            let dst = if len == STEP {
                // SAFETY: k + STEP <= n.
                unsafe { out.as_mut_ptr().add(k) }
            } else {
                tail.as_mut_ptr()
            };
            let mut rejected = 0u32;
            for (v, &w) in words.iter().enumerate() {
                // SAFETY: as above.
                let (x, ok) = unsafe { fast8(w, &z.pairs) };
                // SAFETY: `dst` has STEP = 4 * 8 writable elements.
                unsafe { O::store8(dst.add(8 * v), _mm512_mul_pd(x, sc)) };
                rejected |= ((!ok) as u32) << (8 * v);
            }
            if len < STEP {
                rejected &= (1u32 << len) - 1;
                out[k..].copy_from_slice(&tail[..len]);
            }
            pending.push_mask(rejected, k);
            if pending.full() {
                flush(&mut pending, s, z, &keys, row, col0, scale, out);
            }
            k += len;
        }
        flush(&mut pending, s, z, &keys, row, col0, scale, out);
    }

    /// [`Pending::flush`] in vectors, 8 draws at a time, out of the fast loop: their words
    /// and first extra blocks by [`philox16`] (one vector of each), the first round of
    /// [`Ziggurat::slow`] in lanes (`f[i]`, `f[i+1]` gathered: rare, so the gathers' cost
    /// does not matter), its density `exp(-x^2/2)` bracketed by [`exp_squeeze`] and only
    /// where that cannot decide (about 1 in 10^8) taken from `exp` itself.
    #[inline(never)]
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    fn flush<O: RowElem>(
        pending: &mut Pending,
        s: &Stream,
        z: &Ziggurat,
        keys: &Keys,
        row: u64,
        col0: u64,
        scale: f64,
        out: &mut [O],
    ) {
        let n = pending.n;
        let one = _mm512_set1_epi64(1);
        let c1 = _mm512_set1_epi64(row as u32 as i64);
        let row_hi = ((row >> 32) as u32) << 16;
        let (c3, c3_more) = (
            _mm512_set1_epi64(row_hi as i64),
            _mm512_set1_epi64((1 ^ row_hi) as i64),
        );
        // Low 32 bits: `((v >> 32) as u32) << 16`, as in `Stream::block`.
        let hi16 = |v: __m512i| _mm512_slli_epi64::<16>(_mm512_srli_epi64::<32>(v));
        let join = |lo: __m512i, hi: __m512i| {
            _mm512_mask_blend_epi32(0xAAAA, lo, _mm512_slli_epi64::<32>(hi))
        };
        // An exact u64 -> f64 for v < 2^52 (AVX-512F has no such conversion).
        let exact = |v: __m512i| {
            let magic = _mm512_set1_epi64(0x4330_0000_0000_0000);
            let two52 = _mm512_set1_pd(4_503_599_627_370_496.0);
            _mm512_sub_pd(_mm512_castsi512_pd(_mm512_or_si512(v, magic)), two52)
        };
        for base in (0..n).step_by(8) {
            let m = (n - base).min(8);
            // SAFETY: base is a multiple of 8 below n <= PENDING, a multiple of 8.
            let at = unsafe { _mm512_loadu_epi64(pending.at.as_ptr().add(base) as *const i64) };
            let col = _mm512_add_epi64(_mm512_set1_epi64(col0 as i64), at);
            let pair = _mm512_srli_epi64::<1>(col);
            // The blocks `(col/2, row, 0, 0)` and `(col, row, 0, 1)`.
            let mut st = [[pair, c1, hi16(pair), c3], [col, c1, hi16(col), c3_more]];
            // SAFETY: this function runs with AVX-512F.
            unsafe { philox16(&mut st, keys) };
            let [[a0, a1, a2, a3], [e0, e1, e2, e3]] = st;
            let odd = _mm512_test_epi64_mask(col, one);
            let w = _mm512_mask_blend_epi64(odd, join(a0, a1), join(a2, a3));
            let (b0, b1) = (join(e0, e1), join(e2, e3));
            // SAFETY: as above.
            let (x, _) = unsafe { fast8(w, &z.pairs) };
            let i = _mm512_and_si512(w, _mm512_set1_epi64(0xff));
            let layer0 = _mm512_cmpeq_epi64_mask(i, _mm512_setzero_si512());
            let i = _mm512_max_epu64(i, one);
            // SAFETY: 1 <= i <= 255 and `f` has 257 entries.
            let (fi, fi1) = unsafe {
                (
                    _mm512_i64gather_pd::<8>(i, z.f.as_ptr()),
                    _mm512_i64gather_pd::<8>(i, z.f.as_ptr().add(1)),
                )
            };
            // `unif(b0)`: b0 >> 11 (53 bits) as hi * 2^21 + lo, both parts and the sum
            // exact; then + 0.5 and * 2^-53 as in `unif`.
            let hi = exact(_mm512_srli_epi64::<32>(b0));
            let lo = exact(_mm512_and_si512(
                _mm512_srli_epi64::<11>(b0),
                _mm512_set1_epi64(0x1f_ffff),
            ));
            let v = _mm512_add_pd(_mm512_mul_pd(hi, _mm512_set1_pd(2_097_152.0)), lo);
            let u = _mm512_mul_pd(
                _mm512_add_pd(v, _mm512_set1_pd(0.5)),
                _mm512_set1_pd(1.0 / (1u64 << 53) as f64),
            );
            // `wedge_point`: f[i+1] + (f[i] - f[i+1]) * u.
            let wedge = _mm512_add_pd(fi1, _mm512_mul_pd(_mm512_sub_pd(fi, fi1), u));
            // The wedge test `wedge < wedge_density(x)`, decided by a squeeze where it is
            // sure ([`exp_squeeze`]), else with `exp` itself (about 1 in 10^8).
            let t = _mm512_mul_pd(_mm512_mul_pd(_mm512_set1_pd(-0.5), x), x);
            // SAFETY: this function runs with AVX-512F.
            let (below, above) = unsafe { exp_squeeze(t) };
            let mut ok_wedge = _mm512_cmp_pd_mask::<_CMP_LT_OQ>(wedge, below);
            let sure = ok_wedge | _mm512_cmp_pd_mask::<_CMP_GT_OQ>(wedge, above);
            let mut unsure = !sure & !layer0 & ((1u32 << m) - 1) as u8;
            if unsure != 0 {
                let (xs, ws) = (f64s(x), f64s(wedge));
                while unsure != 0 {
                    let j = unsure.trailing_zeros() as usize;
                    unsure &= unsure - 1;
                    ok_wedge |= ((ws[j] < wedge_density(xs[j])) as u8) << j;
                }
            }
            // SAFETY: as above.
            let (x_next, ok_next) = unsafe { fast8(b1, &z.pairs) };
            let done = !layer0 & (ok_wedge | ok_next);
            let y = f64s(_mm512_mul_pd(
                _mm512_mask_blend_pd(ok_wedge, x_next, x),
                _mm512_set1_pd(scale),
            ));
            let (ws, bs0, bs1) = (u64s(w), u64s(b0), u64s(b1));
            for j in 0..m {
                let at = pending.at[base + j];
                out[at] = if done & (1 << j) != 0 {
                    O::of(y[j])
                } else {
                    // The tail, or a second rejection: the whole slow path again.
                    let col = col0 + at as u64;
                    let first = [bs0[j], bs1[j]];
                    O::of(
                        z.slow(ws[j], |attempt| match attempt {
                            0 => first,
                            _ => s.block(col, row, attempt, 1),
                        }) * scale,
                    )
                };
            }
        }
        pending.n = 0;
    }
}

/// The ziggurat tables for the standard normal, 256 layers.
struct Ziggurat {
    /// x[0] = v / f(r), x[1] = r, decreasing to x[256] = 0.
    x: [f64; 257],
    /// f(x[i]) = exp(-x[i]^2 / 2).
    f: [f64; 257],
    /// `(x[i], x[i+1])`, 16 bytes a layer: what the fast path of layer i reads, in one
    /// load (for the AVX-512 filler).
    pairs: [[f64; 2]; 256],
}

/// Rightmost layer boundary and layer area of the 256-layer normal ziggurat (Marsaglia &
/// Tsang 2000, table for n = 256).
const ZIG_R: f64 = 3.654_152_885_361_009;
const ZIG_V: f64 = 0.004_928_673_233_99;

fn zig() -> &'static Ziggurat {
    static Z: OnceLock<Ziggurat> = OnceLock::new();
    Z.get_or_init(|| {
        let pdf = |x: f64| (-0.5 * x * x).exp();
        let mut x = [0.0; 257];
        let mut f = [0.0; 257];
        x[0] = ZIG_V / pdf(ZIG_R);
        x[1] = ZIG_R;
        for i in 2..256 {
            let prev = x[i - 1];
            x[i] = (-2.0 * (ZIG_V / prev + pdf(prev)).ln()).sqrt();
        }
        x[256] = 0.0;
        for i in 0..257 {
            f[i] = pdf(x[i]);
        }
        let pairs = std::array::from_fn(|i| [x[i], x[i + 1]]);
        Ziggurat { x, f, pairs }
    })
}

impl Ziggurat {
    /// The common case: a point inside the rectangle of its layer.
    #[inline(always)]
    fn fast(&self, w: u64) -> Option<f64> {
        let (x, ok) = self.fast_lane(w);
        ok.then_some(x)
    }

    /// [`Ziggurat::fast`] without a branch: the candidate and whether it is accepted.
    #[inline(always)]
    fn fast_lane(&self, w: u64) -> (f64, bool) {
        let i = (w & 0xff) as usize;
        // 52 bits -> u in [-1, 1).
        let u = ((w >> 12) as f64) * (2.0 / (1u64 << 52) as f64) - 1.0;
        let x = u * self.x[i];
        (x, x.abs() < self.x[i + 1])
    }

    /// The wedges and the tail, with fresh bits from `more(attempt)`.
    #[cold]
    fn slow(&self, mut w: u64, more: impl Fn(u32) -> [u64; 2]) -> f64 {
        let mut attempt = 0u32;
        loop {
            let i = (w & 0xff) as usize;
            let u = ((w >> 12) as f64) * (2.0 / (1u64 << 52) as f64) - 1.0;
            let x = u * self.x[i];
            if x.abs() < self.x[i + 1] {
                return x;
            }
            let [b0, b1] = more(attempt);
            attempt += 1;
            if i == 0 {
                // Tail beyond r (Marsaglia 1964): accept r + e1 with e1 ~ Exp(r) when
                // 2 e2 > e1^2.
                let mut k = 0u32;
                let (mut e0, mut e1) = (b0, b1);
                loop {
                    let t = -unif(e0).ln() / ZIG_R;
                    let s = -unif(e1).ln();
                    if 2.0 * s > t * t {
                        return if u < 0.0 { -(ZIG_R + t) } else { ZIG_R + t };
                    }
                    let nb = more(1_000_000 + k);
                    k += 1;
                    e0 = nb[0];
                    e1 = nb[1];
                }
            }
            if self.wedge_point(i, b0) < wedge_density(x) {
                return x;
            }
            w = b1;
        }
    }

    /// The wedge test's uniform height in layer `i` (`0 < i < 256`) from the word `b0`.
    #[inline(always)]
    fn wedge_point(&self, i: usize, b0: u64) -> f64 {
        self.f[i + 1] + (self.f[i] - self.f[i + 1]) * unif(b0)
    }
}

/// A uniform in (0, 1) from the top 53 bits of `b`.
#[inline(always)]
fn unif(b: u64) -> f64 {
    ((b >> 11) as f64 + 0.5) * (1.0 / (1u64 << 53) as f64)
}

/// The density `exp(-x^2 / 2)` that a wedge point is tested against.
#[inline(always)]
fn wedge_density(x: f64) -> f64 {
    (-0.5 * x * x).exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known-answer tests from Random123 (`kat_vectors`, philox4x32 with 10 rounds).
    #[test]
    fn philox_known_answers() {
        assert_eq!(
            philox4x32([0, 0, 0, 0], [0, 0]),
            [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]
        );
        assert_eq!(
            philox4x32([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]
        );
        assert_eq!(
            philox4x32(
                [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
                [0xa4093822, 0x299f31d0]
            ),
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
        );
    }

    /// reslim's own known answers: pin the first normals of a stream so that a change of
    /// the generator (or of the ziggurat tables) cannot pass unnoticed.
    #[test]
    fn normal_known_answers() {
        let s = Stream::new(1, Tensor::U, 0);
        let got: Vec<f64> = (0..4).map(|c| s.normal(0, c)).collect();
        let want = KNOWN_NORMALS;
        for (g, w) in got.iter().zip(want.iter()) {
            assert!((g - w).abs() < 1e-15, "got {got:?}");
        }
    }
    const KNOWN_NORMALS: [f64; 4] = [
        -1.0943075134621434,
        1.329671226546863,
        -0.9033773224191429,
        0.11003469892999039,
    ];

    #[test]
    fn rows_are_addressable_and_prefix_coupled() {
        let s = Stream::new(7, Tensor::WE, 3);
        let big = s.normal_matrix(40, 9, 1.0);
        let small = s.normal_matrix(10, 9, 1.0);
        assert_eq!(&big[..90], &small[..]);
        let mut row = vec![0.0; 5];
        s.fill_normal_row(13, 3, 1.0, &mut row);
        for (k, &x) in row.iter().enumerate() {
            assert_eq!(x, s.normal(13, 3 + k as u64));
            assert_eq!(x, big[13 * 9 + 3 + k]);
        }
        assert_ne!(Stream::new(7, Tensor::WE, 4).normal(0, 0), big[0]);
        assert_ne!(Stream::new(8, Tensor::WE, 3).normal(0, 0), big[0]);
    }

    /// The row fillers against element-wise [`Stream::normal`], bit for bit: every filler
    /// this CPU can run (portable, and AVX-512 where present, whatever `RESLIM_NO_AVX512`
    /// says), f64 and f32, odd and even `col0`, lengths that are no multiple of 8 or 32,
    /// rows and columns with nonzero high halves, a step that straddles 2^32 column pairs,
    /// rows long enough to flush the list of rejections midway, and enough draws that the
    /// slow path is hit in all its branches: wedge accepted, wedge rejected and the next
    /// word accepted, tail, and further attempts.
    #[test]
    fn row_fillers_match_elementwise_normals() {
        type Filler64 = fn(&Stream, u64, u64, f64, &mut [f64]);
        type Filler32 = fn(&Stream, u64, u64, f64, &mut [f32]);
        let mut fillers: Vec<(&str, Filler64, Filler32)> = vec![
            (
                "portable",
                |s, r, c, a, o| fill_row_portable(s, zig(), r, c, a, o),
                |s, r, c, a, o| fill_row_portable(s, zig(), r, c, a, o),
            ),
            (
                "dispatch",
                |s, r, c, a, o| s.fill_normal_row(r, c, a, o),
                |s, r, c, a, o| s.fill_normal_row_f32(r, c, a, o),
            ),
        ];
        #[cfg(target_arch = "x86_64")]
        if crate::cpu::Avx512::try_new().is_some() {
            fillers.push((
                "avx512",
                |s, r, c, a, o| {
                    avx512::fill_row(crate::cpu::Avx512::try_new().unwrap(), s, zig(), r, c, a, o)
                },
                |s, r, c, a, o| {
                    avx512::fill_row(crate::cpu::Avx512::try_new().unwrap(), s, zig(), r, c, a, o)
                },
            ));
        }
        let z = zig();
        let (mut draws, mut slow, mut tail) = (0usize, 0usize, 0usize);
        // Slow draws by their path: wedge accepted, wedge rejected and the next word
        // accepted (both from the first extra block), tail, more extra blocks.
        let mut paths = [0usize; 4];
        let mut cases: Vec<(Stream, u64, u64, usize, f64)> = Vec::new();
        for r in 0..300u64 {
            let s = Stream::new(11 + r % 3, Tensor::V, r % 5);
            let col0 = (r * 37) % 101; // odd and even
            let len = (r as usize * 53) % 700; // 0..700, any remainder mod 8 and 32
            cases.push((s, r * 7919, col0, len, 0.5 + r as f64 / 7.0));
        }
        let s = Stream::new(5, Tensor::U, 1);
        // High halves of row and column; a step across 2^32 pairs (column 2^33).
        cases.push((s, (3 << 32) + 5, (1 << 33) - 41, 97, 1.0));
        cases.push((s, 1 << 40, (1 << 33) - 40, 96, -2.0));
        cases.push((s, u32::MAX as u64, (7 << 34) + 1, 65, 3.0));
        // Long rows: more rejections than fit in one batch list.
        for r in 0..20 {
            cases.push((
                Stream::new(2, Tensor::WE, r),
                r,
                r % 2,
                6000 + 7 * r as usize,
                0.1,
            ));
        }
        for (s, row, col0, len, scale) in cases {
            let want: Vec<f64> = (0..len as u64)
                .map(|k| s.normal(row, col0 + k) * scale)
                .collect();
            for (k, &x) in want.iter().enumerate() {
                let col = col0 + k as u64;
                let w = s.block(col / 2, row, 0, 0)[(col % 2) as usize];
                if z.fast(w).is_none() {
                    slow += 1;
                    let used = std::cell::Cell::new(0);
                    let v = z.slow(w, |attempt| {
                        used.set(used.get() + 1);
                        s.block(col, row, attempt, 1)
                    });
                    paths[match (w & 0xff, used.get()) {
                        (0, _) => 2,
                        (_, 1) if v == z.fast_lane(w).0 => 0,
                        (_, 1) => 1,
                        _ => 3,
                    }] += 1;
                }
                tail += (x.abs() > ZIG_R * scale.abs()) as usize;
            }
            draws += len;
            for &(name, f64s, f32s) in &fillers {
                let mut got = vec![f64::NAN; len];
                f64s(&s, row, col0, scale, &mut got);
                let mut got32 = vec![f32::NAN; len];
                f32s(&s, row, col0, scale, &mut got32);
                for k in 0..len {
                    assert_eq!(
                        got[k].to_bits(),
                        want[k].to_bits(),
                        "{name} f64: row {row}, col {}",
                        col0 + k as u64
                    );
                    assert_eq!(
                        got32[k].to_bits(),
                        (want[k] as f32).to_bits(),
                        "{name} f32: row {row}, col {}",
                        col0 + k as u64
                    );
                }
            }
        }
        // About 1.5% of draws take the slow path, 2.6e-4 land in the tail.
        assert!(draws > 200_000, "{draws} draws");
        assert!(slow > draws / 100, "{slow} slow of {draws}");
        assert!(tail > 30, "{tail} in the tail of {draws}");
        assert!(paths.iter().all(|&p| p >= 10), "slow paths taken {paths:?}");
    }

    /// The AVX-512 filler's squeeze of `exp` in the wedge test brackets libm's `exp` on
    /// the whole range the wedges need (`-x^2/2` for `|x| < x[0]`), tightly.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn exp_squeeze_brackets_exp() {
        if crate::cpu::Avx512::try_new().is_none() {
            return;
        }
        let n = 200_000;
        for k in 0..n / 8 {
            let t: [f64; 8] = std::array::from_fn(|j| -8.0 * (8 * k + j) as f64 / n as f64);
            // SAFETY: the CPU has AVX-512F (checked above).
            let (lo, hi) = unsafe { avx512::exp_squeeze_lanes(t) };
            for j in 0..8 {
                let e = t[j].exp();
                assert!(
                    lo[j] < e && e < hi[j],
                    "t {}: {} {e} {}",
                    t[j],
                    lo[j],
                    hi[j]
                );
                assert!(hi[j] / lo[j] - 1.0 < 3e-9, "t {}", t[j]);
            }
        }
    }

    #[test]
    fn normals_have_the_right_moments() {
        let s = Stream::new(42, Tensor::Other(9), 0);
        let n = 400_000;
        let v = s.normal_matrix(400, n / 400, 1.0);
        let mean = v.iter().sum::<f64>() / n as f64;
        let m2 = v.iter().map(|x| x * x).sum::<f64>() / n as f64;
        let m4 = v.iter().map(|x| x.powi(4)).sum::<f64>() / n as f64;
        let tail = v.iter().filter(|x| x.abs() > ZIG_R).count() as f64 / n as f64;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((m2 - 1.0).abs() < 0.01, "var {m2}");
        assert!((m4 - 3.0).abs() < 0.05, "kurtosis {m4}");
        // P(|Z| > 3.654) = 2.58e-4.
        assert!((tail - 2.58e-4).abs() < 1.2e-4, "tail {tail}");
        // P(|Z| < 1) = 0.6827 checks the shape in the bulk.
        let inner = v.iter().filter(|x| x.abs() < 1.0).count() as f64 / n as f64;
        assert!((inner - 0.682_689).abs() < 0.003, "inner {inner}");
    }

    #[test]
    fn uniforms_are_in_range() {
        let s = Stream::new(3, Tensor::Other(1), 0);
        let u: Vec<f64> = (0..1000).map(|c| s.uniform(0, c)).collect();
        assert!(u.iter().all(|&x| (0.0..1.0).contains(&x)));
        let mean = u.iter().sum::<f64>() / 1000.0;
        assert!((mean - 0.5).abs() < 0.03);
    }
}
