//! Report (stub).
