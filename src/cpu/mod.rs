//! The CPU layer: which instruction set runs, the lane operations on it, the one run-time
//! dispatch, parallelism of a call, and aligned arrays. It imports nothing else of the
//! crate; the step's kernels ([`crate::kernels`]), tanh ([`crate::vtanh`]), the RNG row
//! fillers ([`crate::rng`]) and the mean-field element-wise passes
//! ([`crate::meanfield::elementwise`]) are written on it.
//!
//! # Design
//!
//! - **Detection in one place.** [`isa`] is the instruction set every dispatched path
//!   takes: AVX-512F + VL, else AVX2 + FMA, else the portable code. `RESLIM_NO_AVX512`
//!   (set to anything) skips AVX-512, `RESLIM_NO_AVX2` AVX2 too (for A/B timings and to
//!   test the other paths; every path gives the same bits). No other code of the crate
//!   asks the CPU.
//! - **Tokens prove features.** [`Avx512`], [`Avx2`] and [`Portable`] are zero-sized
//!   types. The first two are made only by `try_new`, which checks the CPU (whatever the
//!   overrides say: the tests compare every path the CPU has), so holding one proves the
//!   instruction set; the lane operations take the token by value and are therefore safe
//!   functions. The `unsafe` is in three kinds of places, each argued once: the token
//!   constructors, the `#[target_feature]` entry of [`Token::vectorize`], and the
//!   raw-pointer loads and stores ([`Simd::load`] and friends, `unsafe fn` because the
//!   pointer's extent is the caller's to prove, as for `ptr::read`).
//! - **One lane trait.** [`Simd<T>`] (f32 and f64), implemented by each token with
//!   64 bytes of lanes per vector (AVX-512: one zmm register; AVX2: two ymm halves, so
//!   the lane order, and with it every bit, is AVX-512's; portable: arrays). The bodies
//!   per element type come from one macro per instruction set ([`simd`]). Every
//!   operation is exact or correctly rounded (fused multiply-adds included), so generic
//!   code gives the same bits on every token.
//! - **One dispatch.** Generic code is a [`WithSimd`] (a generic function as a type);
//!   [`dispatch`] runs it on the token of [`isa`], inside a function compiled with that
//!   instruction set's target features, into which the generic body and the lane
//!   operations (all `#[inline(always)]`) are inlined. That is the only run-time check.

mod aligned;
mod simd;

pub use aligned::{Aligned, AllocError};
pub(crate) use simd::Simd;

use std::fmt::Debug;

/// The floating-point element types of the crate (f64 and f32): arithmetic, and the
/// conversions to and from f64. [`crate::model::Real`] adds the engine's entry points.
pub trait Float:
    num_traits::Float
    + Send
    + Sync
    + Default
    + Debug
    + std::iter::Sum
    + std::ops::AddAssign
    + std::ops::SubAssign
    + 'static
{
    /// "f64" or "f32".
    const NAME: &'static str;
    fn of(x: f64) -> Self;
    fn to(self) -> f64;
}

impl Float for f64 {
    const NAME: &'static str = "f64";
    #[inline(always)]
    fn of(x: f64) -> Self {
        x
    }
    #[inline(always)]
    fn to(self) -> f64 {
        self
    }
}

impl Float for f32 {
    const NAME: &'static str = "f32";
    #[inline(always)]
    fn of(x: f64) -> Self {
        x as f32
    }
    #[inline(always)]
    fn to(self) -> f64 {
        self as f64
    }
}

/// Which instruction set the dispatched code runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512F + VL intrinsics ([`Avx512`]).
    Avx512,
    /// AVX2 + FMA intrinsics ([`Avx2`]), with register tiles for 16 registers.
    Avx2Fma,
    /// The portable code for the baseline target (multiply-adds through `mul_add`, a
    /// libm call per element on x86-64 without FMA).
    Generic,
}

impl Isa {
    /// The name `reslim bench` and the run metadata print.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "avx512",
            Isa::Avx2Fma => "avx2+fma",
            Isa::Generic => "generic",
        }
    }
}

/// What this CPU has (cached; the overrides are not applied here).
#[derive(Clone, Copy)]
struct Features {
    avx512: bool,
    avx2: bool,
}

fn features() -> Features {
    static F: std::sync::OnceLock<Features> = std::sync::OnceLock::new();
    *F.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            Features {
                avx512: has!("avx512f") && has!("avx512vl"),
                avx2: has!("avx2") && has!("fma"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        Features {
            avx512: false,
            avx2: false,
        }
    })
}

/// Clears the upper halves of the vector registers (`vzeroupper`) where the CPU has AVX;
/// nothing elsewhere.
///
/// Code for the baseline target does its scalar floating point in legacy SSE
/// instructions; run while the upper halves are dirty (as a thread can find them, and
/// inherit them from the thread that spawned it), each pays a transition on Intel cores.
/// Measured on the 2-core Intel Xeon (Emerald Rapids): the softplus table of
/// [`crate::meanfield::InitKernel`], scalar libm `exp`/`log1p` between SSE arithmetic,
/// took 6.0 s on 2 threads, 0.29 s with this call at the entry of its loop; the
/// mean-field network's forward pass of softplus and gelu made a softplus `reslim
/// spirals` run at n = 100 take 526 s, 34-35 s with it (the same bits; tanh: 1.7 s,
/// vectorized). Never inlined, so no caller holds a vector value in a register across
/// it (all are caller-saved).
#[inline(never)]
pub fn clean_upper() {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: the CPU has AVX; vzeroupper zeroes only bits 128 and up of ymm/zmm 0-15,
        // which hold nothing live here (see above).
        unsafe { std::arch::asm!("vzeroupper", options(nomem, nostack, preserves_flags)) };
    }
}

/// The best instruction set of this CPU that the crate supports (cached): AVX-512F + VL,
/// else AVX2 + FMA, else the portable code. Every choice gives the same bits.
/// `RESLIM_NO_AVX512` (set to anything) skips AVX-512, `RESLIM_NO_AVX2` AVX2 too.
pub fn isa() -> Isa {
    static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *ISA.get_or_init(|| {
        let off = |k: &str| std::env::var_os(k).is_some();
        let f = features();
        if f.avx512 && !off("RESLIM_NO_AVX512") {
            Isa::Avx512
        } else if f.avx2 && !off("RESLIM_NO_AVX2") {
            Isa::Avx2Fma
        } else {
            Isa::Generic
        }
    })
}

/// AVX-512F + VL: a value proves that the CPU has them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Avx512(());

/// AVX2 + FMA: a value proves that the CPU has them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Avx2(());

/// The portable code (any CPU).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Portable;

impl Avx512 {
    /// The token, where the CPU has AVX-512F and AVX-512VL (whatever `RESLIM_NO_AVX512`).
    #[inline]
    pub(crate) fn try_new() -> Option<Self> {
        features().avx512.then_some(Avx512(()))
    }
}

impl Avx2 {
    /// The token, where the CPU has AVX2 and FMA (whatever `RESLIM_NO_AVX2`).
    #[inline]
    pub(crate) fn try_new() -> Option<Self> {
        features().avx2.then_some(Avx2(()))
    }
}

/// A generic function over the instruction sets: what [`dispatch`] and
/// [`Token::vectorize`] run.
pub(crate) trait WithSimd {
    type Output;
    /// The body, for the token `s`; `#[inline(always)]` in every implementation, so that
    /// it is compiled inside the entry with the token's target features.
    fn with_simd<S: Token>(self, s: S) -> Self::Output;
}

/// An instruction set's token: the lanes of both element types, and its entry point.
pub(crate) trait Token: Simd<f32> + Simd<f64> + Copy + Send + Sync + 'static {
    /// Runs `f` compiled with this instruction set's target features enabled.
    fn vectorize<F: WithSimd>(self, f: F) -> F::Output;
}

impl Token for Portable {
    #[inline(always)]
    fn vectorize<F: WithSimd>(self, f: F) -> F::Output {
        f.with_simd(self)
    }
}

/// The `#[target_feature]` entry of a token: `$feat` enabled for the body of `f`.
macro_rules! entry {
    ($tok:ty, $feat:literal) => {
        impl Token for $tok {
            #[inline(always)]
            fn vectorize<F: WithSimd>(self, f: F) -> F::Output {
                #[target_feature(enable = $feat)]
                fn run<F: WithSimd>(s: $tok, f: F) -> F::Output {
                    f.with_simd(s)
                }
                // SAFETY: `self` exists, so `try_new` found these features on this CPU.
                unsafe { run(self, f) }
            }
        }
    };
}
#[cfg(target_arch = "x86_64")]
entry!(Avx512, "avx512f,avx512vl");
#[cfg(target_arch = "x86_64")]
entry!(Avx2, "avx2,fma");

/// Runs `f` on the instruction set of [`isa`]: the only run-time choice of a code path.
#[inline(always)]
pub(crate) fn dispatch<F: WithSimd>(f: F) -> F::Output {
    match isa() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => match Avx512::try_new() {
            Some(s) => s.vectorize(f),
            None => unreachable!("isa() found AVX-512"),
        },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => match Avx2::try_new() {
            Some(s) => s.vectorize(f),
            None => unreachable!("isa() found AVX2"),
        },
        _ => Portable.vectorize(f),
    }
}

/// A closure as a [`WithSimd`] that ignores the lanes: its body is compiled with the
/// target features of the token (where LLVM vectorizes plain loops by itself).
struct Plain<F>(F);

impl<R, F: FnOnce() -> R> WithSimd for Plain<F> {
    type Output = R;
    #[inline(always)]
    fn with_simd<S: Token>(self, _: S) -> R {
        (self.0)()
    }
}

/// Runs `f` (whose body should be `#[inline(always)]`) compiled for the instruction set
/// of [`isa`], through [`dispatch`]: for loops the compiler vectorizes without the lane
/// operations.
#[inline(always)]
pub(crate) fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    dispatch(Plain(f))
}

/// Parallelism of one call: sequential, or over the current rayon pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Par {
    Seq,
    Rayon,
}

impl Par {
    /// Runs `f` where its parallel calls are cheapest: with [`Par::Rayon`] on a thread
    /// that is not one of the pool's workers (the binary's main thread), on a worker of
    /// the current pool. A parallel call made from outside the pool injects its job and
    /// puts the caller to sleep until the workers are done, two wake-ups per call; from a
    /// worker it forks and joins on the pool's own queues. The GD step makes about five
    /// parallel calls per layer, so this is one wake-up per pass instead of hundreds
    /// (M = D = 100, L = 50, 2 threads: 7.2-7.9 ms per step against 8.5-9.2).
    pub fn on_workers<R: Send>(self, f: impl FnOnce() -> R + Send) -> R {
        if self == Par::Seq || rayon::current_thread_index().is_some() {
            return f();
        }
        let mut out = None;
        rayon::scope(|s| s.spawn(|_| out = Some(f())));
        out.expect("the spawned job ran")
    }
}
