//! reslim: scaled deep residual networks and their large-scale limits.
//!
//! - **One network:** a [`Parametrization`] (a preset or table of scalings) resolved for
//!   [`Dims`], [`Weights`] drawn from counter-based streams, [`train::train`] by full-batch GD
//!   ([`TrainOptions`]; records in a [`History`]); [`run::execute`] does it from a checked
//!   [`TrainConfig`].
//! - **A sweep over shapes:** [`SweepSpec`] (a TOML file) checked into a [`Sweep`], run
//!   whole by [`sweep::execute`] in a [`SweepDir`] (resumable, fingerprinted records,
//!   tidy tables, rate fits and a report).
//! - **The large-scale limits:** [`solve_linear_limit`] / [`solve_linear_limit_multi`]
//!   (exact ODEs, linear blocks) and [`solve_nonlinear_limit`] (Monte Carlo, any
//!   activation); [`solve::solve`] is the `reslim limit` command.
//! - **Coordinate checks:** [`coordcheck`] trains ladders of widths and depths under a
//!   parametrization and fits how activations, updates and outputs scale with them
//!   (`reslim coordcheck`).
//! - **The mean-field model** of Chen et al. (2024): [`meanfield`].
//! - **Long work stops cleanly:** a [`cancel::Cancel`] token, checked before each GD step
//!   and each sweep task (the Python package, `python/`, sets it on Ctrl-C).
//!
//! `ARCHITECTURE.md` maps the modules and their layers; `docs/papers.md` is the
//! mathematics they implement (cited by section throughout), `docs/specs.md` every spec
//! field with its default and unit.

pub mod bench;
pub mod cancel;
pub mod coordcheck;
pub mod coords;
pub mod cpu;
pub mod error;
pub mod factored;
pub mod fit;
pub mod io;
pub mod kernels;
pub mod limit;
pub mod meanfield;
pub mod memory;
pub mod model;
pub mod param;
pub mod plot;
pub mod provenance;
pub mod rng;
pub mod run;
pub mod shard;
pub mod solve;
pub mod spec;
pub mod sweep;
pub mod train;
pub mod vslimit;
pub mod vtanh;

pub use error::{Error, Result};

pub use cpu::Par;
pub use limit::{
    LinearLimitParams, MonteCarlo, solve_linear_limit, solve_linear_limit_multi,
    solve_nonlinear_limit,
};
pub use model::{Activation, Data, Dtype, Real, Weights};
pub use param::{Dims, Parametrization};
pub use spec::{TrainConfig, TrainSpec};
pub use sweep::{Sweep, SweepDir, SweepError, SweepSpec};
pub use train::{History, TrainOptions};
