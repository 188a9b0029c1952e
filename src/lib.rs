//! reslim: scaled deep residual networks and their large-scale limits.
//!
//! See `ARCHITECTURE.md` for how the modules fit together and
//! `../shared/spec/PAPERS.md` for the mathematics they implement.

pub mod bench;
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
pub mod solve;
pub mod spec;
pub mod sweep;
pub mod train;
pub mod vslimit;
pub mod vtanh;

pub use error::{Error, Result};
