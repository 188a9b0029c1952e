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
    Run(#[from] crate::run::RunError),
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
    CoordCheck(#[from] crate::coordcheck::CoordCheckError),
    #[error(transparent)]
    MeanField(#[from] crate::meanfield::experiment::MeanFieldError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The message of `e` followed by its causes, each printed once: a cause whose message
/// its parent already includes (thiserror's `"...: {source}"` style, or a transparent
/// wrapper) is skipped, so `task X failed: training diverged ...` is not followed by
/// the same divergence again, as `anyhow`'s `{:#}` would print it.
pub fn chain_message(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let s = c.to_string();
        if !msg.contains(&s) {
            msg.push_str(": ");
            msg.push_str(&s);
        }
        cause = c.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cause_is_printed_once() {
        let inner = crate::train::TrainError::Diverged {
            step: 3,
            layer: Some(2),
            what: "h",
        };
        let e = Error::Sweep(crate::sweep::SweepError::Task {
            task: "r0-L3-M4-D5".into(),
            source: Box::new(crate::sweep::SweepError::Train(inner)),
        });
        let m = chain_message(&e);
        assert_eq!(m.matches("diverged").count(), 1, "{m}");
        assert!(
            m.starts_with("task r0-L3-M4-D5 failed: training diverged at step 3"),
            "{m}"
        );
        let os = Error::Io(crate::io::IoError::Os {
            path: "/x/y".into(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "gone"),
        });
        assert_eq!(chain_message(&os), "/x/y: gone");
        // A cause that its parent does not state is kept.
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        let o = Outer(std::io::Error::other("inner"));
        assert_eq!(chain_message(&o), "outer: inner");
    }
}
