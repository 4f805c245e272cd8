//! Ringline: a runtime for conversational voice agents.
//!
//! See ARCHITECTURE.md for the map. Modules follow a call's audio: `audio` (codecs and
//! resampling), `stt`, `tts`, with `models` (the local model store) and `onnx` underneath
//! them and `cli` on top.

pub mod analysis;
pub mod assistant;
pub mod audio;
pub mod call;
pub mod cli;
pub mod egress;
pub mod eval;
pub mod flow;
pub mod llm;
pub mod models;
pub mod onnx;
pub mod pipeline;
pub mod server;
pub mod simulation;
pub mod store;
pub mod stt;
pub mod telemetry;
pub mod text;
pub mod transport;
pub mod tts;
pub mod vad;
