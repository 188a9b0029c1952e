//! The crate's error type: one variant per module error, each with a message that says
//! what went wrong in the user's terms.

/// Any error of reslim's library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Io(#[from] crate::io::IoError),
    #[error(transparent)]
    Param(#[from] crate::param::ParamError),
    #[error(transparent)]
    Spec(#[from] crate::spec::SpecError),
    #[error(transparent)]
    Train(#[from] crate::train::TrainError),
    #[error(transparent)]
    Sweep(#[from] crate::sweep::SweepError),
    #[error(transparent)]
    Fit(#[from] crate::fit::FitError),
    #[error(transparent)]
    Plot(#[from] crate::plot::PlotError),
    #[error(transparent)]
    Limit(#[from] crate::limit::LimitError),
    #[error(transparent)]
    Memory(#[from] crate::memory::MemoryError),
    #[error(transparent)]
    MeanField(#[from] crate::meanfield::experiment::MeanFieldError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
