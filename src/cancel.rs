//! Cooperative cancellation: a [`Cancel`] token that a caller (the Python package on
//! Ctrl-C, a service shutting down) sets from another thread, and that long work checks
//! at its safe points: training before each GD step ([`crate::train::TrainError::Cancelled`])
//! and a sweep before each task ([`crate::sweep::SweepError::Cancelled`]). Nothing
//! finished is lost: a sweep's finished tasks are already on disk, and the task that was
//! interrupted is simply not written.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// A cancellation token; clones share one flag. The default token can never be set (no
/// allocation, no checks that cost anything).
#[derive(Clone, Default)]
pub struct Cancel(Option<Arc<AtomicBool>>);

impl Cancel {
    /// A token that [`Cancel::cancel`] can set.
    pub fn new() -> Self {
        Cancel(Some(Arc::new(AtomicBool::new(false))))
    }

    /// Asks the work holding a clone of this token to stop at its next safe point.
    pub fn cancel(&self) {
        if let Some(f) = &self.0 {
            f.store(true, Ordering::SeqCst);
        }
    }

    /// Whether [`Cancel::cancel`] was called on this token or a clone.
    pub fn is_cancelled(&self) -> bool {
        self.0.as_ref().is_some_and(|f| f.load(Ordering::Relaxed))
    }
}

impl std::fmt::Debug for Cancel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            None => f.write_str("Cancel(never)"),
            Some(_) => write!(f, "Cancel({})", self.is_cancelled()),
        }
    }
}

/// Tokens compare equal whatever their state: they steer a run, they are not part of
/// its configuration.
impl PartialEq for Cancel {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_the_flag_and_the_default_never_fires() {
        let c = Cancel::new();
        let d = c.clone();
        assert!(!d.is_cancelled());
        c.cancel();
        assert!(d.is_cancelled());
        let never = Cancel::default();
        never.cancel();
        assert!(!never.is_cancelled());
    }
}
