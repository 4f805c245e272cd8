//! Ringline's integration tests: one binary (one link step), a module per area.
//!
//! These run the real `ringline` binary and the real local models from the store that
//! `.ci/test` pulls first (`models/cache/`, or `RINGLINE_MODELS_DIR`). Nothing here is mocked.

mod models;
mod speech;
mod support;
mod vad;
