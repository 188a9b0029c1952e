//! Measurements of the GD step against the machine's roofline, all taken in one run.
//!
//! - Memory bandwidth: a STREAM-style triad `a = b + s c` over arrays much larger than the
//!   caches, on the current rayon pool; bytes counted as STREAM does (3 arrays x 8 bytes
//!   per element; write-allocate traffic is not counted). Best of several repetitions.
//! - Compute peak: independent fused multiply-add chains held in registers, with the
//!   kernels' vector width and precision, on every thread.
//! - The step: seconds per GD step (median of the timed steps after one warm-up) for
//!   the given shapes. Bytes moved per step: each of U and V read once forward and read
//!   and written once backward, `6 L M D` values (the activations, O(L N (M + D)),
//!   are counted too). FLOPs: `12 N L M D` (three multiply-adds per weight and sample)
//!   plus the activations' small terms.
//! - Where the time goes: each step's [`train::PassTimes`] (the four weight passes, the
//!   activation, `G = sigma'(p) q`; the rest of the step as the remainder), medians over
//!   the timed steps, and each weight pass's GB/s (one tensor of L M D values read, or
//!   read and written), to set against the triad; and each pass's share of the plain
//!   stream of its kind, sampled beside the triad on its arrays (a sum for the
//!   read-only forward passes, an update in place for the backward passes), the median
//!   over steps. A pass that reads and writes moves more bytes per second than one that
//!   only reads (on the Intel Xeon, Emerald Rapids: 34-41 against 21-23 GB/s), so its
//!   GB/s alone says little about which pass lags; the shares do (M = D = 500, four
//!   runs: forward passes at 75-88% of a plain read, backward V at 56-61% and backward
//!   U at 47-50% of an update).
//! - The regenerated backend ([`bench_regenerated`]): seconds per step of the low-rank
//!   step whose initial weights are regenerated in row blocks inside each pass
//!   ([`crate::factored::Init::Regenerated`]), as nanoseconds per regenerated weight and
//!   core (4 L M D weights a step: U and V forward and backward), against the row
//!   filler's own nanoseconds per normal and core in the same run; their ratio is the
//!   fraction of the filler's limit reached.
//! - Roofline time = max(bytes / bandwidth, flops / peak); fraction = roofline / measured.
//!   The fraction can exceed 1 where writing a line costs a read to allocate it (seen on
//!   an Intel Xeon, Emerald Rapids: a triad of 25-29 GB/s, the backward passes at 32-43
//!   GB/s read and written in place at M = D = 1000-2000); the table then says so.
//!   On a shared machine the bandwidth left free drifts by tens of percent within
//!   minutes, so the bandwidth and peak are sampled again right before every timed step
//!   ([`Probe`]) and each step is compared with its own sample; the fraction is the
//!   median of these per-step fractions.

use crate::cpu::Par;
use crate::model::{Activation, Data, Real, Weights};
use crate::param::{Dims, Parametrization};
use crate::train::{self, Workspace};
use rayon::prelude::*;
use serde::Serialize;
use std::time::Instant;

/// The machine's measured limits.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Machine {
    pub threads: usize,
    pub isa: &'static str,
    /// Triad bandwidth, bytes per second.
    pub bandwidth: f64,
    /// A plain read of the triad's arrays (a sum), bytes read per second: the stream a
    /// read-only weight pass (forward U, forward V) is set against.
    pub read_bandwidth: f64,
    /// A plain update in place (`a = a / 2 + 1`), bytes read and written per second:
    /// the stream a weight pass with update (backward V, backward U) is set against.
    pub update_bandwidth: f64,
    /// Peak multiply-add throughput in the step's precision, FLOP per second (2 per
    /// multiply-add).
    pub peak_flops: f64,
}

/// The arrays of a STREAM triad, allocated once so that it can be sampled again and
/// again (between the timed steps of [`bench_shape`]).
pub struct Triad {
    a: crate::cpu::Aligned<f64>,
    b: crate::cpu::Aligned<f64>,
    c: crate::cpu::Aligned<f64>,
    par: Par,
}

impl Triad {
    /// Three arrays of `len` f64, aligned and on huge pages like the weights
    /// (`cpu::Aligned`), so that the bandwidth is the one the step could reach.
    pub fn new(len: usize, par: Par) -> Self {
        let fresh = |x: f64| {
            let mut v = crate::cpu::Aligned::<f64>::zeroed(len);
            v.fill(x);
            v
        };
        Triad {
            a: fresh(0.0),
            b: fresh(1.0),
            c: fresh(2.0),
            par,
        }
    }

    /// Bytes per second of a plain read (the sum of `b`) and of a plain update in place
    /// (`a = a / 2 + 1`, read and written), each the best of `reps` passes.
    pub fn streams(&mut self, reps: usize) -> (f64, f64) {
        let chunk = 1 << 16;
        let (a, b) = (&mut self.a, &self.b);
        let (mut read, mut update) = (f64::INFINITY, f64::INFINITY);
        let sum = |v: &[f64]| {
            let mut acc = [0.0; 8];
            for c in v.chunks_exact(8) {
                for (s, x) in acc.iter_mut().zip(c) {
                    *s += x;
                }
            }
            acc.iter().sum::<f64>()
        };
        let halve = |v: &mut [f64]| {
            for x in v.iter_mut() {
                *x = 0.5 * *x + 1.0;
            }
        };
        for _ in 0..reps.max(1) {
            let t = Instant::now();
            let total = match self.par {
                Par::Seq => sum(b),
                Par::Rayon => b.par_chunks(chunk).map(sum).sum(),
            };
            std::hint::black_box(total);
            read = read.min(t.elapsed().as_secs_f64());
            let t = Instant::now();
            match self.par {
                Par::Seq => halve(a),
                Par::Rayon => a.par_chunks_mut(chunk).for_each(halve),
            }
            std::hint::black_box(&mut *a);
            update = update.min(t.elapsed().as_secs_f64());
        }
        let bytes = (8 * b.len()) as f64;
        (bytes / read, 2.0 * bytes / update)
    }

    /// Bandwidth in bytes/s, best of `reps` passes of `a = b + 3 c`.
    pub fn sample(&mut self, reps: usize) -> f64 {
        let s = 3.0;
        let chunk = 1 << 16;
        let (a, b, c) = (&mut self.a, &self.b, &self.c);
        let mut best = f64::INFINITY;
        for _ in 0..reps.max(1) {
            let t = Instant::now();
            match self.par {
                Par::Seq => {
                    for ((x, y), z) in a.iter_mut().zip(b.iter()).zip(c.iter()) {
                        *x = y + s * z;
                    }
                }
                Par::Rayon => a
                    .par_chunks_mut(chunk)
                    .zip(b.par_chunks(chunk))
                    .zip(c.par_chunks(chunk))
                    .for_each(|((x, y), z)| {
                        for ((x, y), z) in x.iter_mut().zip(y).zip(z) {
                            *x = y + s * z;
                        }
                    }),
            }
            best = best.min(t.elapsed().as_secs_f64());
            std::hint::black_box(&mut *a);
        }
        (3 * 8 * a.len()) as f64 / best
    }
}

/// Fused multiply-add peak in FLOP/s (2 per FMA) on every thread of the pool, with the
/// kernels' own instruction set and vector width: independent register-resident chains
/// per thread (12 vectors, 6 on AVX2's 16 registers).
pub fn peak_flops<T: Real>(par: Par) -> f64 {
    let iters = 20_000_000;
    let threads = if par == Par::Rayon {
        rayon::current_num_threads()
    } else {
        1
    };
    let run = || {
        let (r, fmas) = T::fma_probe(iters);
        std::hint::black_box(r);
        fmas
    };
    let mut best = f64::INFINITY;
    let mut fmas = 1;
    for _ in 0..3 {
        let t = Instant::now();
        fmas = if threads > 1 {
            (0..threads)
                .into_par_iter()
                .map(|_| run())
                .max()
                .unwrap_or(1)
        } else {
            run()
        };
        best = best.min(t.elapsed().as_secs_f64());
    }
    (iters * fmas * 2) as f64 * threads as f64 / best
}

/// The machine's limits: measured at the start of a run ([`Probe::new`], the best of
/// several repetitions) and sampled again right before every timed step
/// ([`Probe::sample`], used by [`bench_shape`]). On a shared machine the bandwidth that
/// neighbours leave free drifts by tens of percent within minutes, so a step is compared
/// with the limits measured next to it, not with one measurement minutes earlier.
pub struct Probe<T> {
    triad: Triad,
    par: Par,
    start: Machine,
    samples: Vec<Machine>,
    _t: std::marker::PhantomData<T>,
}

impl<T: Real> Probe<T> {
    /// Measures the machine (bandwidth over `mib` MiB per array).
    pub fn new(par: Par, mib: usize) -> Self {
        let mut triad = Triad::new(mib * (1 << 20) / 8, par);
        let (read_bandwidth, update_bandwidth) = triad.streams(5);
        let start = Machine {
            threads: if par == Par::Rayon {
                rayon::current_num_threads()
            } else {
                1
            },
            isa: crate::cpu::isa().name(),
            bandwidth: triad.sample(5),
            read_bandwidth,
            update_bandwidth,
            peak_flops: peak_flops::<T>(par),
        };
        Probe {
            triad,
            par,
            start,
            samples: Vec::new(),
            _t: std::marker::PhantomData,
        }
    }

    /// One more measurement of the bandwidth (best of 3 triads, and of 3 plain reads and
    /// updates) and the compute peak.
    pub fn sample(&mut self) -> Machine {
        let (read_bandwidth, update_bandwidth) = self.triad.streams(3);
        let m = Machine {
            bandwidth: self.triad.sample(3),
            read_bandwidth,
            update_bandwidth,
            peak_flops: peak_flops::<T>(self.par),
            ..self.start
        };
        self.samples.push(m);
        m
    }

    /// The limits measured at the start.
    pub fn machine(&self) -> Machine {
        self.start
    }

    /// The median of the samples so far (the start's measurement if none).
    pub fn median(&self) -> Machine {
        if self.samples.is_empty() {
            return self.start;
        }
        Machine::median_of(&self.samples, self.start)
    }
}

impl Machine {
    /// The median of each measured field over `samples`; the rest from `base`.
    fn median_of(samples: &[Machine], base: Machine) -> Machine {
        let med = |f: fn(&Machine) -> f64| median(samples.iter().map(f).collect());
        Machine {
            bandwidth: med(|m| m.bandwidth),
            read_bandwidth: med(|m| m.read_bandwidth),
            update_bandwidth: med(|m| m.update_bandwidth),
            peak_flops: med(|m| m.peak_flops),
            ..base
        }
    }
}

/// The median (the upper one for an even count) of a non-empty list.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One shape's step timing against the roofline.
#[derive(Debug, Clone, Serialize)]
pub struct StepBench {
    pub dims: Dims,
    pub dtype: &'static str,
    pub sec_per_step: f64,
    pub bytes: f64,
    pub flops: f64,
    pub achieved_gb_s: f64,
    pub achieved_gflop_s: f64,
    pub roofline_s: f64,
    /// "memory" or "compute": which bound is the larger (at the median limits).
    pub bound: &'static str,
    /// Median over steps of the roofline at the limits sampled before the step, over
    /// the step's time.
    pub fraction: f64,
    /// The median of the limits sampled before the steps.
    pub machine: Machine,
    /// Seconds per step in each part of the L blocks (the median over the timed steps,
    /// part by part; [`train::PassTimes`]).
    pub passes: train::PassTimes,
    /// GB/s of each weight pass (forward U, forward V, backward V, backward U): one
    /// tensor of L M D values read (forward) or read and written (backward).
    pub pass_gb_s: [f64; 4],
    /// Each weight pass against the plain stream of its kind sampled before the same
    /// step ([`Machine::read_bandwidth`] for the forward passes,
    /// [`Machine::update_bandwidth`] for the backward ones): the median over steps of
    /// (the stream's time for the pass's bytes / the pass's time).
    pub pass_of_stream: [f64; 4],
    /// The median over steps of the rest of the step (its time less its parts'):
    /// embedding, readout, head and embedding updates.
    pub other_s: f64,
}

/// Bytes moved and FLOPs of one GD step.
pub fn step_cost(dims: &Dims, elem: usize) -> (f64, f64) {
    let (l, m, d, n) = (dims.l as f64, dims.m as f64, dims.d as f64, dims.n as f64);
    let weights = 6.0 * l * m * d * elem as f64;
    let acts = (l * n * (2.0 * d + m) * 3.0) * elem as f64;
    let flops = 12.0 * n * l * m * d + 10.0 * l * m * n;
    (weights + acts, flops)
}

/// Times `steps` GD steps (after one warm-up) of the chizat-julia tanh network of shape
/// `dims`, calling `between` right before each; returns the seconds of each step (NaN
/// for all if the network diverged) and the time of each step's parts.
pub fn time_steps<T: Real>(
    dims: &Dims,
    steps: usize,
    par: Par,
    between: &mut dyn FnMut(),
) -> (Vec<f64>, Vec<train::PassTimes>) {
    let p = Parametrization::preset("chizat-julia").expect("preset exists");
    let r = p.resolve(dims);
    let data = Data::synthetic(dims.din, dims.dout, dims.n, 1);
    let mut w = Weights::<T>::draw(dims, &r, 1, 1, par);
    let mut ws = Workspace::new(&w, dims.n);
    ws.time_parts(true);
    let mut times = Vec::with_capacity(steps);
    let mut parts = Vec::with_capacity(steps);
    for k in 0..=steps {
        if k > 0 {
            between();
        }
        let t = Instant::now();
        let ok =
            train::forward(&mut w, &data, &r, Activation::Tanh, &mut ws, par, k).and_then(|_| {
                train::backward_update(&mut w, &data, &r, Activation::Tanh, 1.0, &mut ws, par, k)
            });
        // The bench network is small-loss tanh; divergence would be a bug worth seeing.
        if let Err(e) = ok {
            eprintln!("bench: {e}");
            let nan = train::PassTimes {
                forward_u: f64::NAN,
                activation: f64::NAN,
                forward_v: f64::NAN,
                backward_v: f64::NAN,
                between: f64::NAN,
                backward_u: f64::NAN,
            };
            return (vec![f64::NAN; steps.max(1)], vec![nan; steps.max(1)]);
        }
        let part = ws.take_times();
        if k > 0 {
            times.push(t.elapsed().as_secs_f64());
            parts.push(part);
        }
    }
    (times, parts)
}

/// Benchmarks one shape against the machine's roofline. Each timed step follows a
/// sample of the machine's limits ([`Probe::sample`]), and is compared with it: the
/// fraction is the median over steps of (that sample's roofline / the step's time).
/// Seconds per step, the limits and the roofline are the medians over the steps.
pub fn bench_shape<T: Real>(
    dims: &Dims,
    steps: usize,
    par: Par,
    probe: &mut Probe<T>,
) -> StepBench {
    let steps = steps.max(1);
    let mut machines = Vec::with_capacity(steps);
    let (times, parts) = time_steps::<T>(dims, steps, par, &mut || machines.push(probe.sample()));
    let part = |f: fn(&train::PassTimes) -> f64| median(parts.iter().map(f).collect());
    let passes = train::PassTimes {
        forward_u: part(|p| p.forward_u),
        activation: part(|p| p.activation),
        forward_v: part(|p| p.forward_v),
        backward_v: part(|p| p.backward_v),
        between: part(|p| p.between),
        backward_u: part(|p| p.backward_u),
    };
    let other_s = median(
        times
            .iter()
            .zip(&parts)
            .map(|(t, p)| t - p.total())
            .collect(),
    );
    let tensor = (dims.l * dims.m * dims.d * std::mem::size_of::<T>()) as f64;
    let t = passes.weight_passes();
    let reads = [1.0, 1.0, 2.0, 2.0];
    let pass_gb_s = std::array::from_fn(|i| reads[i] * tensor / t[i] / 1e9);
    // Each pass of each step against the plain stream of its kind sampled before it.
    let pass_of_stream = std::array::from_fn(|i| {
        median(
            machines
                .iter()
                .zip(&parts)
                .map(|(m, p)| {
                    let stream = if i < 2 {
                        m.read_bandwidth
                    } else {
                        m.update_bandwidth
                    };
                    reads[i] * tensor / stream / p.weight_passes()[i]
                })
                .collect(),
        )
    });
    let (bytes, flops) = step_cost(dims, std::mem::size_of::<T>());
    let roof = |m: &Machine| (bytes / m.bandwidth).max(flops / m.peak_flops);
    let fraction = median(
        machines
            .iter()
            .zip(&times)
            .map(|(m, t)| roof(m) / t)
            .collect(),
    );
    let mach = Machine::median_of(&machines, probe.machine());
    let sec = median(times);
    let (t_mem, t_cpu) = (bytes / mach.bandwidth, flops / mach.peak_flops);
    StepBench {
        dims: *dims,
        dtype: T::NAME,
        sec_per_step: sec,
        bytes,
        flops,
        achieved_gb_s: bytes / sec / 1e9,
        achieved_gflop_s: flops / sec / 1e9,
        roofline_s: t_mem.max(t_cpu),
        bound: if t_mem >= t_cpu { "memory" } else { "compute" },
        fraction,
        machine: mach,
        passes,
        pass_gb_s,
        pass_of_stream,
        other_s,
    }
}

/// The regenerated backend at one shape ([`crate::factored::Init::Regenerated`]): the
/// low-rank step with the initial weights regenerated in row blocks inside each pass,
/// against the row filler's own throughput measured in the same run.
#[derive(Debug, Clone, Serialize)]
pub struct RegenBench {
    pub dims: Dims,
    /// Timed GD steps (the first, a warm-up of one step, not counted).
    pub steps: usize,
    /// Seconds per step (a step regenerates each of U, V twice: forward and backward).
    pub sec_per_step: f64,
    /// Seconds per regenerated weight times the threads: the step's cost per weight and
    /// core, in nanoseconds.
    pub ns_per_weight_core: f64,
    /// The row filler alone, in nanoseconds per normal and core (rows of D filled on
    /// every thread, as the passes fill them).
    pub filler_ns_per_normal_core: f64,
    /// `filler_ns_per_normal_core / ns_per_weight_core`: the share of the step's time
    /// that generating the weights would take at the filler's speed (1 = the step runs at
    /// the limit the filler sets).
    pub fraction: f64,
}

/// The row filler's throughput: nanoseconds per normal and core, filling rows of `d`
/// on every thread of `par` for about `seconds`.
pub fn filler_ns_per_normal<T: Real>(d: usize, par: Par, seconds: f64) -> f64 {
    let threads = match par {
        Par::Rayon => rayon::current_num_threads(),
        Par::Seq => 1,
    };
    let rows = crate::factored::regen_block_rows::<T>(d).max(threads);
    let mut buf = vec![T::zero(); rows * d];
    let s = crate::rng::Stream::new(7, crate::rng::Tensor::U, 0);
    let mut filled = 0usize;
    let mut row0 = 0u64;
    let t0 = Instant::now();
    while t0.elapsed().as_secs_f64() < seconds || filled == 0 {
        crate::model::fill_rows(&s, row0, 1.0, d, &mut buf, par);
        filled += rows * d;
        row0 += rows as u64;
    }
    std::hint::black_box(&buf);
    t0.elapsed().as_secs_f64() * threads as f64 / filled as f64 * 1e9
}

/// Times `steps` GD steps (after a warm-up step) of the regenerated backend at `dims`
/// (chizat-julia, tanh, one network), and the row filler in the same run.
pub fn bench_regenerated<T: Real>(dims: &Dims, steps: usize, par: Par) -> RegenBench {
    let threads = match par {
        Par::Rayon => rayon::current_num_threads(),
        Par::Seq => 1,
    };
    let p = Parametrization::preset("chizat-julia").expect("preset exists");
    let r = p.resolve(dims);
    let data = Data::synthetic(dims.din, dims.dout, dims.n, 1);
    let emb = Weights::<T>::draw(&Dims { l: 0, ..*dims }, &r, 1, 1, par);
    let init = crate::factored::Init::Regenerated {
        block_seed: 1,
        std_u: r.u.std,
        std_v: r.v.std,
    };
    // K steps make K forward and K - 1 backward passes: time K = 1 and K = steps + 1
    // and take the difference, `steps` whole steps.
    let run = |k: usize| {
        let mut vars = vec![crate::factored::Variant {
            we: emb.we.clone(),
            wu: emb.wu.clone(),
            record_hidden: false,
        }];
        let opts = train::TrainOptions {
            steps: k,
            eta: 1.0,
            activation: Activation::Tanh,
            ..Default::default()
        };
        let t = Instant::now();
        let ok = crate::factored::train_shared_from(dims, init, &mut vars, &data, &r, &opts, par);
        if let Err(e) = ok {
            eprintln!("bench: {e}");
            return f64::NAN;
        }
        t.elapsed().as_secs_f64()
    };
    let steps = steps.max(1);
    let one = run(1);
    let all = run(steps + 1);
    let sec_per_step = ((all - one) / steps as f64).max(0.0);
    let weights = 4.0 * dims.l as f64 * dims.m as f64 * dims.d as f64;
    let ns_per_weight_core = sec_per_step * threads as f64 / weights * 1e9;
    let filler = filler_ns_per_normal::<T>(dims.d, par, 0.3);
    RegenBench {
        dims: *dims,
        steps,
        sec_per_step,
        ns_per_weight_core,
        filler_ns_per_normal_core: filler,
        fraction: filler / ns_per_weight_core,
    }
}

/// What `reslim bench` measures: steps of networks of depth `l`, `n` samples and
/// M = D = each of `sizes`, `steps` timed steps each (after a warm-up), and, when
/// `peers` names the directory of `peer_numpy.py` and python3 with NumPy is there, the
/// NumPy port of the same step in the same run.
#[derive(Debug, Clone)]
pub struct TableSpec {
    pub l: usize,
    pub n: usize,
    pub sizes: Vec<usize>,
    pub steps: usize,
    pub peers: Option<std::path::PathBuf>,
}

impl TableSpec {
    /// The benchmarked network at M = D = `s`: depth `l`, `n` samples, d_in = d_out = 5.
    pub fn dims(&self, s: usize) -> Dims {
        Dims {
            l: self.l,
            m: s,
            d: s,
            din: 5,
            dout: 5,
            n: self.n,
        }
    }
}

/// One measured shape of the table.
#[derive(Debug, Clone, Serialize)]
pub struct TableRow {
    pub bench: StepBench,
    /// Seconds per step of the NumPy peer (its fused implementation), same shape and
    /// threads, when it ran.
    pub numpy_fused_s: Option<f64>,
}

/// What [`table`] measured.
#[derive(Debug, Clone, Serialize)]
pub struct Table {
    /// The machine's limits at the start.
    pub machine: Machine,
    /// The median of the limits sampled beside the timed steps.
    pub machine_median: Machine,
    pub rows: Vec<TableRow>,
    /// The regenerated backend at each size ([`bench_regenerated`]).
    pub regenerated: Vec<RegenBench>,
}

/// The step's speed against the roofline at each size of `spec`, and the NumPy peer's,
/// measured in the same run. `print` gets the table's lines as they are measured (the
/// machine, one row per shape, then where each step's time goes). A shape whose weights
/// would not fit in 80% of the memory available is skipped with a line saying so.
pub fn table<T: Real>(
    spec: &TableSpec,
    par: Par,
    print: &mut dyn FnMut(&str),
) -> Result<Table, crate::memory::MemoryError> {
    let mut probe = Probe::<T>::new(par, 256);
    let machine_line = |m: &Machine, when: &str| {
        format!(
            "machine ({when}): {} threads, {}, triad bandwidth {:.1} GB/s (plain read {:.1}, update in place {:.1}), {} multiply-add peak {:.1} GFLOP/s",
            m.threads,
            m.isa,
            m.bandwidth / 1e9,
            m.read_bandwidth / 1e9,
            m.update_bandwidth / 1e9,
            T::NAME,
            m.peak_flops / 1e9
        )
    };
    let start = probe.machine();
    print(&machine_line(&start, "at the start"));
    print(&format!(
        "{:>5} {:>5} {:>5} {:>3} {:>11} {:>10} {:>8} {:>8} {:>8} {:>11} {:>7} {:>9} {:>10}",
        "L",
        "M",
        "D",
        "N",
        "s/step",
        "MB/step",
        "GB/s",
        "GFLOP/s",
        "triad",
        "roofline s",
        "bound",
        "fraction",
        "numpy s"
    ));
    let mut rows = Vec::new();
    // The weights, with headroom for the workspace and the probe's arrays.
    let budget = crate::memory::available()?.scaled(0.8);
    for &s in &spec.sizes {
        let dims = spec.dims(s);
        let need = Weights::<T>::bytes(&dims)?;
        if need > budget.bytes {
            print(&format!(
                "{:>5} {s:>5} {s:>5}: skipped, needs {:.1} GB",
                spec.l,
                need as f64 / 1e9
            ));
            continue;
        }
        let r = bench_shape::<T>(&dims, spec.steps, par, &mut probe);
        let peer = spec
            .peers
            .as_deref()
            .and_then(|dir| numpy_peer(dir, &dims, T::NAME, r.machine.threads));
        print(&format!(
            "{:>5} {:>5} {:>5} {:>3} {:>11.5} {:>10.1} {:>8.1} {:>8.1} {:>8.1} {:>11.5} {:>7} {:>8.0}% {:>10}",
            spec.l,
            s,
            s,
            spec.n,
            r.sec_per_step,
            r.bytes / 1e6,
            r.achieved_gb_s,
            r.achieved_gflop_s,
            r.machine.bandwidth / 1e9,
            r.roofline_s,
            r.bound,
            100.0 * r.fraction,
            match peer {
                Some(p) => format!("{p:.5} ({:.1}x)", p / r.sec_per_step),
                None => "-".into(),
            }
        ));
        rows.push(TableRow {
            bench: r,
            numpy_fused_s: peer,
        });
    }
    if rows.iter().any(|r| r.bench.fraction > 1.0) {
        print(
            "note: a fraction above 100% means the step moved its bytes faster than the triad; \
             the triad counts 3 arrays per element as STREAM does, not the read that allocates \
             the line it writes, which the step's in-place passes never pay, so on such a \
             machine it understates the bandwidth",
        );
    }
    let machine_median = probe.median();
    print(&machine_line(
        &machine_median,
        "median of the samples beside the steps",
    ));
    if !rows.is_empty() {
        print(
            "where the step's time goes, ms per step (GB/s of each weight pass; its share of the plain stream of its kind, read for the forward passes, update in place for the backward ones):",
        );
        print(&format!(
            "{:>5} {:>5}  {:>19} {:>6} {:>19} {:>19} {:>6} {:>19} {:>6}",
            "M", "D", "forward U", "sigma", "forward V", "backward V", "G", "backward U", "rest"
        ));
        for row in &rows {
            let r = &row.bench;
            let ms = |s: f64| s * 1e3;
            let gb = r.pass_gb_s;
            let t = r.passes.weight_passes();
            let pass = |i: usize| {
                format!(
                    "{:.2} ({:.1}; {:.0}%)",
                    ms(t[i]),
                    gb[i],
                    100.0 * r.pass_of_stream[i]
                )
            };
            print(&format!(
                "{:>5} {:>5}  {:>19} {:>6.2} {:>19} {:>19} {:>6.2} {:>19} {:>6.2}",
                r.dims.m,
                r.dims.d,
                pass(0),
                ms(r.passes.activation),
                pass(1),
                pass(2),
                ms(r.passes.between),
                pass(3),
                ms(r.other_s)
            ));
        }
    }
    print(
        "regenerated initial weights (the low-rank step, U(0) and V(0) generated in row blocks inside each pass, never stored):",
    );
    print(&format!(
        "{:>5} {:>5} {:>5} {:>3} {:>11} {:>16} {:>18} {:>9}",
        "L", "M", "D", "N", "s/step", "ns/weight/core", "filler ns/normal", "fraction"
    ));
    let mut regenerated = Vec::new();
    for &s in &spec.sizes {
        let dims = spec.dims(s);
        let need = crate::factored::bytes::<T>(&dims, spec.steps + 1, 1)?;
        if need > budget.bytes {
            continue;
        }
        let g = bench_regenerated::<T>(&dims, spec.steps, par);
        print(&format!(
            "{:>5} {:>5} {:>5} {:>3} {:>11.5} {:>16.3} {:>18.3} {:>8.0}%",
            spec.l,
            s,
            s,
            spec.n,
            g.sec_per_step,
            g.ns_per_weight_core,
            g.filler_ns_per_normal_core,
            100.0 * g.fraction
        ));
        regenerated.push(g);
    }
    Ok(Table {
        machine: start,
        machine_median,
        rows,
        regenerated,
    })
}

/// Seconds per step of the NumPy port of the step (`peer_numpy.py --impl fused` in
/// `dir`), 4 steps of shape `dims` in `dtype` on `threads` threads; `None` when the
/// script, python3 or NumPy is missing or the run fails.
pub fn numpy_peer(dir: &std::path::Path, dims: &Dims, dtype: &str, threads: usize) -> Option<f64> {
    let script = dir.join("peer_numpy.py");
    if !script.is_file() {
        return None;
    }
    let out = std::process::Command::new("python3")
        .arg(&script)
        .args(["--impl", "fused", "--json", "--K", "4"])
        .args([
            "--L",
            &dims.l.to_string(),
            "--M",
            &dims.m.to_string(),
            "--D",
            &dims.d.to_string(),
        ])
        .args([
            "--N",
            &dims.n.to_string(),
            "--dtype",
            dtype,
            "--threads",
            &threads.to_string(),
        ])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find_map(|l| l.strip_prefix("JSON "))?;
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    v.get("sec_per_step")?.as_f64()
}
