//! The process-wide ONNX Runtime environment, loaded from the model store.
//!
//! ort is built with `load-dynamic`: nothing is linked at build time, and the shared library
//! (`libonnxruntime.so`, a model-store entry) is opened on first use. Resolving it here, once,
//! turns a missing library into a clear "run models pull" error instead of a failure at the
//! first inference call. `ORT_DYLIB_PATH` overrides the store's copy.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;
use ort::session::Session;

use crate::models::{ModelError, ModelStore};

#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("cannot load ONNX Runtime from {path}: {reason}")]
    Runtime { path: PathBuf, reason: String },
    #[error("cannot load {path}: {reason}")]
    Session { path: PathBuf, reason: String },
    #[error("inference failed in {model}: {reason}")]
    Run { model: String, reason: String },
}

static ENVIRONMENT: OnceLock<Result<Environment, String>> = OnceLock::new();

/// The shared environment; the first call loads the library.
pub fn environment(store: &ModelStore) -> Result<&'static Environment, OnnxError> {
    let path = match std::env::var_os("ORT_DYLIB_PATH") {
        Some(path) => PathBuf::from(path),
        None => store.require("onnxruntime")?,
    };
    let result = ENVIRONMENT.get_or_init(|| {
        let builder = ort::init_from(&path).map_err(|e| e.to_string())?;
        builder.with_name("ringline").build().map_err(|e| e.to_string())
    });
    result.as_ref().map_err(|reason| OnnxError::Runtime { path, reason: reason.clone() })
}

/// Loads an ONNX model with `threads` intra-op threads (budgeted per engine, not "all cores").
pub fn session(store: &ModelStore, model: &Path, threads: usize) -> Result<Session, OnnxError> {
    let env = environment(store)?;
    build_session(env, model, threads).map_err(|e| OnnxError::Session { path: model.to_path_buf(), reason: e.to_string() })
}

// Builder errors are not `Send`; convert them here, inside one function.
fn build_session(env: &Environment, model: &Path, threads: usize) -> ort::Result<Session> {
    let mut builder = Session::builder(env)?.with_intra_threads(threads.max(1))?.with_inter_threads(1)?;
    Ok(builder.commit_from_file(model)?)
}
