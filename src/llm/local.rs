//! The local engine: `ringline-llm` as a supervised child process, reached over loopback.
//!
//! Started on first use with a model from the store and a thread budget, it prints the port
//! it bound; from then on it is just another OpenAI-compatible endpoint. If it dies, the next
//! request restarts it. It is killed when the owner drops, and it exits by itself when this
//! process dies in any way (it watches a pipe from us: `--exit-with-stdin`).

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;

use futures::future::BoxFuture;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Mutex;

use super::openai::OpenAiLlm;
use super::{ChatRequest, LanguageModel, LlmError, LlmStream};
use crate::models::ModelStore;

/// How long the engine may take to load its model and bind.
const START_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
/// Per-read timeout on the engine's stream (a stuck engine must not hang a call).
const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

pub struct LocalEngine {
    model_name: String,
    model_path: PathBuf,
    threads: usize,
    batch_threads: usize,
    running: Mutex<Option<Running>>,
}

struct Running {
    child: Child,
    /// The engine exits when this pipe closes: when this process drops it or dies.
    _lifeline: tokio::process::ChildStdin,
    client: Arc<OpenAiLlm>,
}

impl LocalEngine {
    /// Prepares (does not yet start) the engine for store model `model` (e.g. `smollm2-135m`),
    /// decoding on `threads` and processing prompts on `batch_threads`.
    pub fn new(store: &ModelStore, model: &str, threads: usize, batch_threads: usize) -> Result<Self, LlmError> {
        let model_path = store.require(model)?;
        Ok(LocalEngine {
            model_name: model.to_string(),
            model_path,
            threads: threads.max(1),
            batch_threads: batch_threads.max(1),
            running: Mutex::new(None),
        })
    }

    async fn client(&self) -> Result<Arc<OpenAiLlm>, LlmError> {
        let mut running = self.running.lock().await;
        if let Some(current) = running.as_mut() {
            match current.child.try_wait() {
                Ok(None) => return Ok(current.client.clone()),
                Ok(Some(status)) => tracing::warn!(%status, model = %self.model_name, "the LLM engine exited; restarting it"),
                Err(error) => tracing::warn!(%error, "cannot poll the LLM engine; restarting it"),
            }
        }
        let started = self.spawn().await?;
        let client = started.client.clone();
        *running = Some(started);
        Ok(client)
    }

    async fn spawn(&self) -> Result<Running, LlmError> {
        let binary = engine_binary()?;
        let mut child = Command::new(&binary)
            .arg("--model")
            .arg(&self.model_path)
            .args(["--bind", "127.0.0.1:0", "--threads", &self.threads.to_string(), "--batch-threads", &self.batch_threads.to_string()])
            .args(["--name", &self.model_name, "--exit-with-stdin"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| LlmError::Engine(format!("{}: {e}", binary.display())))?;
        let lifeline = child.stdin.take().expect("stdin is piped");
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(START_TIMEOUT, lines.next_line())
            .await
            .map_err(|_| LlmError::Engine(format!("{} did not start within {START_TIMEOUT:?}", binary.display())))?
            .map_err(|e| LlmError::Engine(e.to_string()))?
            .ok_or_else(|| LlmError::Engine(format!("{} exited while loading {}", binary.display(), self.model_path.display())))?;
        let url = line
            .strip_prefix("listening on ")
            .ok_or_else(|| LlmError::Engine(format!("unexpected first line from the engine: {line:?}")))?;
        // Keep draining stdout so the engine never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        // The engine is this process's own child on loopback: no egress policy applies.
        let client = Arc::new(OpenAiLlm::new(&format!("{url}/v1"), &self.model_name, "", READ_TIMEOUT, &crate::egress::EgressPolicy::allow_all()));
        tracing::info!(model = %self.model_name, %url, "local LLM engine started");
        Ok(Running { child, _lifeline: lifeline, client })
    }
}

/// `RINGLINE_LLM_BIN`, else `ringline-llm` beside this executable (or one folder up, for tests).
pub fn engine_binary() -> Result<PathBuf, LlmError> {
    if let Some(path) = std::env::var_os("RINGLINE_LLM_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().map_err(|e| LlmError::Engine(e.to_string()))?;
    let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    for candidate in [dir.join("ringline-llm"), dir.parent().map(|p| p.join("ringline-llm")).unwrap_or_default()] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(LlmError::Engine(format!(
        "the local engine binary `ringline-llm` is not beside {} (build it with `cargo build --release -p ringline-llm`, or set RINGLINE_LLM_BIN)",
        exe.display()
    )))
}

impl LanguageModel for LocalEngine {
    fn name(&self) -> String {
        format!("{} (local engine)", self.model_name)
    }

    fn stream(&self, request: ChatRequest) -> BoxFuture<'_, Result<LlmStream, LlmError>> {
        Box::pin(async move { self.client().await?.stream(request).await })
    }

    /// Starts the engine now, so the first turn doesn't pay for loading the model.
    fn warm_up(&self) -> BoxFuture<'_, Result<(), LlmError>> {
        Box::pin(async move { self.client().await.map(|_| ()) })
    }
}
