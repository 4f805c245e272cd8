//! Ringline's integration tests: one binary (one link step), a module per area.
//!
//! These run the real `ringline` binary and the real local models from the store that
//! `.ci/test` pulls first (`models/cache/`, or `RINGLINE_MODELS_DIR`). Our own components are
//! never mocked; remote services a call talks to (a cloud LLM, a customer's HTTP tool) are
//! loopback stand-ins speaking their wire protocols (`standin.rs`).

mod analysis;
mod api;
mod call;
mod campaigns;
mod dialects;
mod eval;
mod engine;
mod listen;
mod models;
mod security;
mod sip;
mod speech;
mod twilio;
mod standin;
mod support;
mod vad;
mod webcall;
mod webhooks;
