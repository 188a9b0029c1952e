//! reslim: scaled deep residual networks and their large-scale limits.
//!
//! See `ARCHITECTURE.md` for how the modules fit together and
//! `../shared/spec/PAPERS.md` for the mathematics they implement.

pub mod io;
pub mod limit;
