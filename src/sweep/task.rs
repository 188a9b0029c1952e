//! How one task runs: its [`Strategy`] (the dense step, the low-rank step, or the dense
//! step against the limit), chosen once from the task's shape, gives both the bytes the
//! task needs at its peak ([`Strategy::bytes`], which the runner checks against the
//! memory before it starts anything) and the run itself ([`Strategy::run`]), so the two
//! can never disagree on which engine a task uses.
//!
//! Every coupling variant of a task starts from the same block weights U, V (drawn once
//! from the task's seed); the `coupled` variant keeps the repetition's embedding rows,
//! the `uncoupled` one draws its own (module docs of [`crate::sweep`]).

use super::SweepError;
use super::plan::{Sweep, Task};
use super::spec::{Backend, Coupling};
use crate::cancel::Cancel;
use crate::cpu::Par;
use crate::factored;
use crate::memory::{self, MemoryError};
use crate::model::{BlockLayout, Data, Dtype, Real, Weights};
use crate::param::{Dims, Resolved};
use crate::train::{self, TrainOptions};
use crate::vslimit::{LimitReference, StepErrors};
use serde::{Deserialize, Serialize};

/// What one task wrote, per coupling variant.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskRecord {
    pub task: Task,
    pub coupling: Coupling,
    /// One per step done (fewer than K when a run against the limit diverged).
    pub losses: Vec<f64>,
    /// (read steps) x d_out x N (empty with a limit reference).
    pub outputs: Vec<f64>,
    /// (read steps) x D x N, coupled variant only (empty with a limit reference).
    pub hidden: Vec<f64>,
    pub seconds: f64,
    /// With a limit reference: the errors at each read step (NaN at and after a
    /// divergence, which is recorded rather than fatal, as in docs/papers.md 2.5 E2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<Vec<StepErrors>>,
    /// Transfer sweeps: the divergence that stopped this variant (the training error's
    /// message, naming the step and layer); its losses, outputs and hidden states are
    /// then empty. A divergence is an outcome there (a learning rate too large), not a
    /// failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diverged: Option<String>,
    /// The engine that trained it ([`Strategy::name`]); absent in records of reslim
    /// versions before the option.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
}

/// How a task trains its coupling variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// The dense step ([`crate::train`]), one variant after another, from a copy of the
    /// block weights each. `rows_m`: the weights are transposed once, for every variant,
    /// for the step on rows of M ([`train::Layout::Auto`]).
    Dense { rows_m: bool },
    /// The low-rank step ([`crate::factored`]): every variant trained together from one
    /// read-only copy of the block weights, when [`factored::worth_it`] says it is
    /// cheaper.
    LowRank,
    /// Against the limit: the dense step (it records every layer at the read steps),
    /// one variant after another, each measured against the solved limit
    /// ([`LimitReference::train_against`]).
    Limit,
    /// The low-rank step with the initial block weights regenerated in row blocks
    /// inside each pass ([`factored::Init::Regenerated`]): never stored, so memory grows
    /// like L K N (M + D). Chosen when the stored engines would not fit, or on request.
    Regenerated,
    /// Against the limit with the regenerated engine: the low-rank step over regenerated
    /// initial weights ([`factored::Init::Regenerated`]) recording every layer at the
    /// read steps, each variant measured against the solved limit
    /// ([`LimitReference::step_errors`]). Chosen when the dense step would not fit, or
    /// on request (`backend = "regenerated"`); the same errors to rounding.
    LimitRegenerated,
}

impl Strategy {
    /// The engine's name, as records and plans show it.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Dense { .. } => "dense",
            Strategy::LowRank => "lowrank",
            Strategy::Limit => "limit",
            Strategy::Regenerated => "regenerated",
            Strategy::LimitRegenerated => "limit-regenerated",
        }
    }
}

impl Sweep {
    /// The strategy of task `t`: the spec's `backend`, or for "auto" the dense step, or
    /// the low-rank one where it is cheaper ([`factored::worth_it`]), or the regenerated
    /// one when that would not fit in [`Sweep::memory_budget`] (not against the limit,
    /// nor in a transfer sweep with several couplings, whose divergences are per
    /// variant).
    pub fn strategy(&self, t: &Task) -> Strategy {
        let dims = self.dims(t);
        let variants = self.couplings_of(t).len();
        let dense = Strategy::Dense {
            rows_m: train::Layout::Auto.rows_m(&dims),
        };
        let together = variants == 1 || !self.is_transfer();
        let fits = |s: Strategy| s.bytes(self, t).is_ok_and(|b| b <= self.memory_budget);
        if self.against_limit() {
            // `lowrank` is refused against the limit by the spec's check.
            return match self.spec.backend {
                Backend::Regenerated => Strategy::LimitRegenerated,
                Backend::Auto if !fits(Strategy::Limit) && fits(Strategy::LimitRegenerated) => {
                    Strategy::LimitRegenerated
                }
                _ => Strategy::Limit,
            };
        }
        match self.spec.backend {
            Backend::Dense => return dense,
            Backend::Lowrank => return Strategy::LowRank,
            Backend::Regenerated => return Strategy::Regenerated,
            Backend::Auto => {}
        }
        let stored = if together && factored::worth_it(&dims, self.spec.steps, variants) {
            Strategy::LowRank
        } else {
            dense
        };
        if together && !fits(stored) && fits(Strategy::Regenerated) {
            Strategy::Regenerated
        } else {
            stored
        }
    }

    /// Every engine that could run task `t` (against the limit: `limit`,
    /// `limit-regenerated`; else `dense`, `lowrank`, `regenerated`) with its bytes
    /// ([`Strategy::bytes`]; `None` where the count overflows), for messages that refuse
    /// a task.
    pub fn engine_bytes(&self, t: &Task) -> Vec<(&'static str, Option<usize>)> {
        let engines: Vec<Strategy> = if self.against_limit() {
            vec![Strategy::Limit, Strategy::LimitRegenerated]
        } else {
            vec![
                Strategy::Dense {
                    rows_m: train::Layout::Auto.rows_m(&self.dims(t)),
                },
                Strategy::LowRank,
                Strategy::Regenerated,
            ]
        };
        engines
            .into_iter()
            .map(|s| (s.name(), s.bytes(self, t).ok()))
            .collect()
    }

    /// Bytes task `t` needs at its peak ([`Strategy::bytes`]).
    pub fn task_bytes(&self, t: &Task) -> Result<usize, MemoryError> {
        self.strategy(t).bytes(self, t)
    }
}

/// Trains one task: every coupling variant from the same block weights, on one thread
/// (the runner parallelizes across tasks).
pub fn run_task(
    sw: &Sweep,
    t: &Task,
    data: &Data,
    cancel: &Cancel,
) -> Result<Vec<TaskRecord>, SweepError> {
    run_task_on(sw, t, data, cancel, Par::Seq)
}

/// [`run_task`] with the step's parallelism `par`: the runner gives a task every core
/// when it runs one task at a time. The records do not depend on it (every engine's
/// results are independent of the thread count).
pub fn run_task_on(
    sw: &Sweep,
    t: &Task,
    data: &Data,
    cancel: &Cancel,
    par: Par,
) -> Result<Vec<TaskRecord>, SweepError> {
    sw.strategy(t).run(sw, t, data, cancel, par)
}

/// In a transfer sweep, a variant's divergence becomes its record
/// ([`TaskRecord::diverged`]); elsewhere, and for any other error, the error stays.
fn diverged_or(
    sw: &Sweep,
    t: &Task,
    strategy: Strategy,
    c: Coupling,
    res: Result<TaskRecord, SweepError>,
) -> Result<TaskRecord, SweepError> {
    match res {
        Err(SweepError::Train(e)) if sw.is_transfer() && e.diverged_at().is_some() => {
            Ok(TaskRecord {
                task: *t,
                coupling: c,
                losses: Vec::new(),
                outputs: Vec::new(),
                hidden: Vec::new(),
                seconds: 0.0,
                limit: None,
                diverged: Some(e.to_string()),
                backend: Some(strategy.name().into()),
            })
        }
        other => other,
    }
}

impl Strategy {
    /// Bytes task `t` of `sw` needs at its peak under this strategy: every variant's
    /// records (losses and outputs at every step, h_L at the read steps), and
    /// - dense (and against the limit): two copies of the weights (one per variant, when
    ///   there are several) and the step's workspace;
    /// - low-rank: the initial weights and every variant's factors.
    ///
    /// An error naming the quantities if the count overflows.
    pub fn bytes(self, sw: &Sweep, t: &Task) -> Result<usize, MemoryError> {
        let dims = sw.dims(t);
        let variants = sw.couplings_of(t).len();
        let k = sw.spec.steps;
        let dout_n = memory::product(&[("data.dout", dims.dout), ("data.N", dims.n)])?;
        let per_step = memory::sum(&[("loss", 1), ("data.dout x data.N", dout_n)])?;
        let records = memory::sum(&[
            (
                "output records",
                memory::product(&[
                    ("variants", variants),
                    ("steps", k),
                    ("1 + data.dout x data.N", per_step),
                    ("8", 8),
                ])?,
            ),
            (
                "hidden records",
                memory::product(&[
                    ("read steps", sw.read_steps.len()),
                    ("D", dims.d),
                    ("data.N", dims.n),
                    ("8", 8),
                ])?,
            ),
        ])?;
        // Every layer's h_l (L + 1 states of D x N, f64) at one read step.
        let layers = memory::product(&[
            ("L + 1", memory::sum(&[("L", dims.l), ("1", 1)])?),
            ("D", dims.d),
            ("data.N", dims.n),
            ("8", 8),
        ])?;
        let w = match sw.spec.dtype {
            Dtype::F64 => Weights::<f64>::bytes(&dims),
            Dtype::F32 => Weights::<f32>::bytes(&dims),
        };
        let block = || match sw.spec.dtype {
            Dtype::F64 => factored::regen_scratch_bytes::<f64>(dims.m, dims.d),
            Dtype::F32 => factored::regen_scratch_bytes::<f32>(dims.m, dims.d),
        };
        let factors = || match sw.spec.dtype {
            Dtype::F64 => factored::bytes::<f64>(&dims, k, variants),
            Dtype::F32 => factored::bytes::<f32>(&dims, k, variants),
        };
        match self {
            Strategy::LowRank => {
                let w = w?;
                memory::sum(&[
                    ("weights", w),
                    ("factors", factors()?),
                    ("records", records),
                ])
            }
            Strategy::Regenerated => memory::sum(&[
                ("factors", factors()?),
                ("regenerated block", block()?),
                ("records", records),
            ]),
            Strategy::LimitRegenerated => {
                // One variant at a time, every read step's layers recorded in one run.
                let one = match sw.spec.dtype {
                    Dtype::F64 => factored::bytes::<f64>(&dims, k, 1),
                    Dtype::F32 => factored::bytes::<f32>(&dims, k, 1),
                }?;
                memory::sum(&[
                    ("factors", one),
                    ("regenerated block", block()?),
                    ("records", records),
                    ("limit trajectories", limit_bytes(sw, &dims)?),
                    (
                        "layer records",
                        memory::product(&[
                            ("read steps", sw.read_steps.len()),
                            ("layers", layers),
                        ])?,
                    ),
                ])
            }
            Strategy::Limit => {
                let w = w?;
                let ws = match sw.spec.dtype {
                    Dtype::F64 => train::Workspace::<f64>::bytes(&dims)?,
                    Dtype::F32 => train::Workspace::<f32>::bytes(&dims)?,
                };
                // One variant at a time (each on its own copy when there are several),
                // one read step's layers at a time.
                let copies = if variants > 1 { 2 } else { 1 };
                memory::sum(&[
                    (
                        "weights",
                        memory::product(&[("copies", copies), ("weight bytes", w)])?,
                    ),
                    ("workspace", ws),
                    ("records", records),
                    ("limit trajectories", limit_bytes(sw, &dims)?),
                    ("layer records", layers),
                ])
            }
            Strategy::Dense { .. } => {
                let w = w?;
                let copies = if variants > 1 { 2 } else { 1 };
                let ws = match sw.spec.dtype {
                    Dtype::F64 => train::Workspace::<f64>::bytes(&dims)?,
                    Dtype::F32 => train::Workspace::<f32>::bytes(&dims)?,
                };
                memory::sum(&[
                    (
                        "weights",
                        memory::product(&[("copies", copies), ("weight bytes", w)])?,
                    ),
                    ("workspace", ws),
                    ("records", records),
                ])
            }
        }
    }

    /// Trains every coupling variant of task `t` of `sw` on `data`, in the sweep's dtype,
    /// on the threads of `par` (the runner parallelizes across tasks, and gives a task
    /// that runs alone every core; the records do not depend on it).
    pub fn run(
        self,
        sw: &Sweep,
        t: &Task,
        data: &Data,
        cancel: &Cancel,
        par: Par,
    ) -> Result<Vec<TaskRecord>, SweepError> {
        match sw.spec.dtype {
            Dtype::F64 => self.run_t::<f64>(sw, t, data, cancel, par),
            Dtype::F32 => self.run_t::<f32>(sw, t, data, cancel, par),
        }
    }

    fn run_t<T: Real>(
        self,
        sw: &Sweep,
        t: &Task,
        data: &Data,
        cancel: &Cancel,
        par: Par,
    ) -> Result<Vec<TaskRecord>, SweepError> {
        let dims = sw.dims(t);
        let (param, eta) = sw.task_param(t);
        let r = param.resolve(&dims);
        let (block_seed, own_embed) = sw.task_seeds(t);
        // The regenerated engine never holds the block weights: the embeddings alone.
        let drawn = match self {
            Strategy::Regenerated | Strategy::LimitRegenerated => Dims { l: 0, ..dims },
            _ => dims,
        };
        let base = Weights::<T>::draw(&drawn, &r, sw.embed_seed(t.rep), block_seed, par);
        let variants = Variants {
            couplings: sw.couplings_of(t),
            dims,
            r: &r,
            own_embed,
        };
        match self {
            Strategy::LowRank | Strategy::Regenerated => {
                let init = match self {
                    Strategy::Regenerated => factored::Init::Regenerated {
                        block_seed,
                        std_u: r.u.std,
                        std_v: r.v.std,
                    },
                    _ => factored::Init::Stored {
                        ut0: &base.ut,
                        vt0: &base.vt,
                    },
                };
                // One variant here in a transfer sweep (`Sweep::strategy`).
                match run_lowrank(sw, t, eta, data, &variants, &base, init, self, cancel, par) {
                    Err(e) if variants.couplings.len() == 1 => Ok(vec![diverged_or(
                        sw,
                        t,
                        self,
                        variants.couplings[0],
                        Err(e),
                    )?]),
                    other => other,
                }
            }
            Strategy::Dense { rows_m } => {
                let mut base = base;
                if rows_m {
                    base.lay_out(BlockLayout::RowsM);
                }
                variants.each(base, |c, mut w| {
                    let opts = TrainOptions {
                        steps: sw.spec.steps,
                        eta,
                        activation: sw.activation,
                        record_hidden: c == Coupling::Coupled,
                        hidden_steps: Some(sw.read_steps.clone()),
                        cancel: cancel.clone(),
                        ..TrainOptions::default()
                    };
                    let t0 = std::time::Instant::now();
                    let h = train::train_laid_out(&mut w, data, &r, &opts, par, &mut |_, _| {});
                    diverged_or(
                        sw,
                        t,
                        self,
                        c,
                        h.map_err(SweepError::from).map(|h| TaskRecord {
                            task: *t,
                            coupling: c,
                            outputs: read_outputs(sw, &dims, &h.outputs),
                            losses: h.losses,
                            hidden: h.hidden,
                            seconds: t0.elapsed().as_secs_f64(),
                            limit: None,
                            diverged: None,
                            backend: Some(self.name().into()),
                        }),
                    )
                })
            }
            Strategy::Limit | Strategy::LimitRegenerated => {
                let lim: std::sync::Arc<LimitReference> = sw.limit_reference()?;
                variants.each(base, |c, mut w| {
                    let t0 = std::time::Instant::now();
                    let (eta, k, reads) = (sw.spec.lr, sw.spec.steps, &sw.read_steps);
                    let a = if self == Strategy::Limit {
                        lim.train_against(&mut w, data, &r, eta, k, reads, par)?
                    } else {
                        lim.train_against_regenerated(
                            &dims, block_seed, &w.we, &w.wu, data, &r, eta, k, reads, par,
                        )?
                    };
                    Ok(TaskRecord {
                        task: *t,
                        coupling: c,
                        losses: a.losses,
                        outputs: Vec::new(),
                        hidden: Vec::new(),
                        seconds: t0.elapsed().as_secs_f64(),
                        limit: Some(a.errors),
                        diverged: None,
                        backend: Some(self.name().into()),
                    })
                })
            }
        }
    }
}

/// Bytes of the limit's coordinate trajectories for a network of width D (H and B:
/// 2 x D x depth points x K N, f64; [`crate::limit::CoordinateTrajectories`]).
fn limit_bytes(sw: &Sweep, dims: &Dims) -> Result<usize, MemoryError> {
    memory::product(&[
        ("2", 2),
        ("D", dims.d),
        ("reference.num_s", sw.limit_num_s()),
        ("steps", sw.spec.steps),
        ("data.N", dims.n),
        ("8", 8),
    ])
}

/// The coupling variants of a task and how their embeddings are made.
struct Variants<'a> {
    couplings: Vec<Coupling>,
    dims: Dims,
    r: &'a Resolved,
    /// Seed of the `uncoupled` variant's own embeddings.
    own_embed: u64,
}

impl Variants<'_> {
    /// The embeddings (W_E, W_U) of variant `c`: the base weights' (the repetition's
    /// coupled rows), or a fresh draw for `uncoupled`.
    fn embeddings<T: Real>(&self, c: Coupling, base: &Weights<T>) -> (Vec<T>, Vec<T>) {
        if c == Coupling::Uncoupled {
            let no_blocks = Dims { l: 0, ..self.dims };
            let fresh = Weights::<T>::draw(&no_blocks, self.r, self.own_embed, 0, Par::Seq);
            (fresh.we, fresh.wu)
        } else {
            (base.we.clone(), base.wu.clone())
        }
    }

    /// Runs `train` on every variant in turn, each on its own copy of `base` (the last
    /// variant takes `base` itself) with the variant's embeddings.
    fn each<T: Real>(
        &self,
        base: Weights<T>,
        mut train: impl FnMut(Coupling, Weights<T>) -> Result<TaskRecord, SweepError>,
    ) -> Result<Vec<TaskRecord>, SweepError> {
        let mut out = Vec::with_capacity(self.couplings.len());
        let mut spare = Some(base);
        for (i, &c) in self.couplings.iter().enumerate() {
            let last = i + 1 == self.couplings.len();
            let mut w = if last {
                spare.take().expect("weights available")
            } else {
                spare.as_ref().expect("weights available").clone()
            };
            if c == Coupling::Uncoupled {
                (w.we, w.wu) = self.embeddings(c, &w);
            }
            out.push(train(c, w)?);
        }
        Ok(out)
    }
}

/// The outputs of `outputs` (K x d_out x N) at the sweep's read steps.
fn read_outputs(sw: &Sweep, dims: &Dims, outputs: &[f64]) -> Vec<f64> {
    let dn = dims.dout * dims.n;
    let mut out = Vec::with_capacity(sw.read_steps.len() * dn);
    for &k in &sw.read_steps {
        out.extend_from_slice(&outputs[k * dn..(k + 1) * dn]);
    }
    out
}

/// [`Strategy::LowRank`]: every variant trained together from one read-only copy of the
/// block weights.
#[allow(clippy::too_many_arguments)]
fn run_lowrank<T: Real>(
    sw: &Sweep,
    t: &Task,
    eta: f64,
    data: &Data,
    variants: &Variants,
    base: &Weights<T>,
    init: factored::Init<'_, T>,
    strategy: Strategy,
    cancel: &Cancel,
    par: Par,
) -> Result<Vec<TaskRecord>, SweepError> {
    let dims = variants.dims;
    let mut factored_variants: Vec<factored::Variant<T>> = variants
        .couplings
        .iter()
        .map(|&c| {
            let (we, wu) = variants.embeddings(c, base);
            factored::Variant {
                we,
                wu,
                record_hidden: c == Coupling::Coupled,
            }
        })
        .collect();
    let opts = TrainOptions {
        steps: sw.spec.steps,
        eta,
        activation: sw.activation,
        record_hidden: true,
        hidden_steps: Some(sw.read_steps.clone()),
        cancel: cancel.clone(),
        ..TrainOptions::default()
    };
    let t0 = std::time::Instant::now();
    let hs = factored::train_shared_from(
        &dims,
        init,
        &mut factored_variants,
        data,
        variants.r,
        &opts,
        par,
    )?;
    let seconds = t0.elapsed().as_secs_f64() / variants.couplings.len() as f64;
    Ok(variants
        .couplings
        .iter()
        .zip(hs)
        .map(|(&c, h)| TaskRecord {
            task: *t,
            coupling: c,
            outputs: read_outputs(sw, &dims, &h.outputs),
            losses: h.losses,
            hidden: h.hidden,
            seconds,
            limit: None,
            diverged: None,
            backend: Some(strategy.name().into()),
        })
        .collect())
}
