//! `ringline serve`: the HTTP API (Ringg-compatible paths under `/v1`), over one [`Store`].
//!
//! ```text
//! request ─► metrics layer ─► router ─► Auth (key → workspace, rate limit) ─► handler ─► store
//!                                                   outbound call ─► runner (this worker) ─► pipeline
//! control for a call another worker owns ─► NOTIFY ringline_control ─► that worker's listener
//! ```
//!
//! One process holds many calls. A call belongs to the worker that started it (`calls.worker_id`);
//! any worker answers queries about it from the database, and control (end, DTMF, transfer)
//! reaches the owner through PostgreSQL's LISTEN/NOTIFY. Workers heartbeat into `workers`;
//! calls of a worker that stopped heartbeating are closed as failed, never left in progress.

pub mod analysis;
pub mod assistants;
pub mod auth;
pub mod calls;
pub mod campaigns;
pub mod inbound;
pub mod error;
pub mod limits;
pub mod meta;
pub mod metrics;
pub mod numbers;
pub mod ringez;
pub mod ringg;
pub mod runner;
pub mod secrets;
pub mod sip;
pub mod twilio;
pub mod webcall;
pub mod webhooks;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::{get, post, put};
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::models::ModelStore;
use crate::store::{self, Backend, Store};

/// The channel control messages travel on between workers.
pub const CONTROL_CHANNEL: &str = "ringline_control";

/// The largest request body the API reads.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub bind: SocketAddr,
    pub database_url: String,
    /// File-defined assistants (`assistants/*.yaml`), reloaded when they change.
    pub assistants_dir: PathBuf,
    /// Requests a minute per key, unless the key sets its own.
    pub rate_limit_per_min: u32,
    /// A worker silent this long is dead: its calls are closed as failed.
    pub worker_stale: Duration,
    /// Reverse proxies whose X-Forwarded-For is believed (a key's whitelisted addresses).
    pub trusted_proxies: Vec<crate::egress::Cidr>,
    /// Where calls may connect (LLM/STT/TTS endpoints, HTTP tools).
    pub egress: crate::egress::EgressPolicy,
    pub limits: limits::Limits,
    pub engine_limits: crate::pipeline::EngineLimits,
    /// The secrets key file (created on first use), unless `secrets_key` is given.
    pub secrets_key_file: PathBuf,
    /// The secrets key itself (base64 of 32 bytes), from the environment.
    pub secrets_key: Option<String>,
    /// Real phone calls through Twilio; an empty `public_url` means the listening address.
    pub twilio: Option<twilio::TwilioConfig>,
    /// Calls from a SIP trunk (see `ringline serve --sip-bind`).
    pub sip: Option<sip::SipConfig>,
    /// Where recordings of calls are written.
    pub recordings_dir: PathBuf,
    /// Every valid number reaches the sandbox line (see `ringline serve --sandbox-line`).
    pub sandbox_line: bool,
    /// Load the file assistants' local models at start (see `--no-preload`).
    pub preload: bool,
}

/// What every handler shares; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub config: Arc<ServeConfig>,
    pub limiter: Arc<auth::RateLimiter>,
    pub catalog: Arc<assistants::Catalog>,
    pub runner: Arc<runner::Runner>,
    pub metrics: Arc<metrics::Metrics>,
    pub worker_id: Arc<str>,
    pub vault: Arc<secrets::Vault>,
    pub limits: Arc<limits::Limits>,
    pub twilio: Option<Arc<twilio::Twilio>>,
}

impl AppState {
    /// Whether numbers beyond the sandbox's can be called: a telephony provider, or every
    /// number going to the sandbox line.
    pub fn can_dial_out(&self) -> bool {
        self.twilio.is_some() || self.config.sandbox_line || self.runner.dials_sip()
    }
}

/// The API's routes; the OpenAPI document describes the same set (see `meta::ApiDoc`).
pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/workspace", get(meta::workspace))
        .route("/assistants", get(assistants::list).post(assistants::create))
        .route("/assistants/{id}", get(assistants::read).patch(assistants::update).delete(assistants::remove))
        .route("/assistants/{id}/versions/{version}", get(assistants::read_version))
        .route("/numbers", get(numbers::list).post(numbers::add))
        .route("/numbers/validate", post(numbers::validate))
        .route("/numbers/{id}/assign", post(numbers::assign))
        .route("/calls/outbound", post(calls::outbound))
        .route("/calls/history", get(calls::history))
        .route("/calls/{id}", get(calls::detail).delete(calls::remove))
        .route("/calls/{id}/status", get(calls::status))
        .route("/calls/{id}/transcript", get(calls::transcript))
        .route("/calls/{id}/analysis", get(calls::analysis))
        .route("/calls/{id}/recording", get(calls::recording))
        .route("/calls/{id}/events", get(calls::events))
        .route("/calls/{id}/end", post(calls::end))
        .route("/calls/{id}/actions", post(calls::actions))
        .route("/campaigns", get(campaigns::list).post(campaigns::create))
        .route("/campaigns/launch", post(campaigns::launch))
        .route("/campaigns/{id}", get(campaigns::status))
        .route("/campaigns/{id}/status", get(campaigns::status))
        .route("/campaigns/{id}/pause", post(campaigns::pause))
        .route("/campaigns/{id}/resume", post(campaigns::resume))
        .route("/campaigns/{id}/cancel", post(campaigns::cancel))
        .route("/secrets", get(secrets::list).post(secrets::create))
        .route("/secrets/{name}", put(secrets::replace).delete(secrets::remove))
        .route("/webhooks", get(webhooks::list).post(webhooks::create))
        .route("/webhooks/signing-secret", get(webhooks::signing))
        .route("/webhooks/{id}", get(webhooks::read).delete(webhooks::remove))
        .route("/webhooks/{id}/deliveries", get(webhooks::deliveries))
        .route("/webhook-deliveries", get(webhooks::all_deliveries))
        .route("/webhook-deliveries/{id}/resend", post(webhooks::resend))
        .route("/webcall/token", post(webcall::token))
        .route("/webcall/ws", get(webcall::socket))
        .route("/analysis/intent", post(analysis::intent))
        .route("/analysis/sentiment", post(analysis::sentiment))
        .route("/analytics", get(meta::analytics))
        .route("/openapi.json", get(meta::openapi));
    Router::new()
        .nest("/v1", v1.merge(ringg::router()))
        .nest("/api/v1", ringez::router())
        .route("/webcall.js", get(webcall::widget))
        .route("/webcall", get(webcall::page))
        .route("/twilio/voice", post(twilio::voice))
        .route("/twilio/status", post(twilio::status))
        .route("/twilio/stream", get(twilio::stream))
        .route("/healthz", get(meta::healthz))
        .route("/metrics", get(meta::prometheus))
        .fallback(meta::not_found)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(error::uniform_errors))
        .layer(axum::middleware::from_fn_with_state(state.clone(), metrics::track))
        .with_state(state)
}

/// Connects, recovers, starts the background tasks and serves until Ctrl-C or SIGTERM.
pub async fn serve(config: ServeConfig, models: ModelStore) -> anyhow::Result<()> {
    let store = Store::connect(&config.database_url).await?;
    let listener = tokio::net::TcpListener::bind(config.bind).await.map_err(|e| anyhow::anyhow!("--bind {}: {e}", config.bind))?;
    let address = listener.local_addr()?;
    let worker_id: Arc<str> = Arc::from(store::new_id("wrk"));
    store.register_worker(&worker_id, &address.to_string()).await?;
    // Calls left in flight by a process that is gone are closed now. SQLite serves one
    // process, so every live call there is an orphan; on PostgreSQL only those whose
    // worker stopped heartbeating.
    let stale_before = match store.backend {
        Backend::Sqlite => i64::MAX,
        Backend::Postgres => store::now_ms() - config.worker_stale.as_millis() as i64,
    };
    let closed = store.close_orphaned_calls(&worker_id, stale_before, "the worker running the call stopped before it ended").await?;
    if closed > 0 {
        tracing::warn!(closed, "closed calls left in progress by a stopped worker");
    }
    if store.backend == Backend::Sqlite {
        // One process per SQLite file: a claim left by a killed server holds nothing.
        store.release_delivery_claims().await?;
    }

    // Workspaces write templates: every render runs in a child with bounded memory and CPU.
    match std::env::current_exe() {
        Ok(binary) => crate::assistant::prompt::sandbox_renders(binary),
        Err(error) => anyhow::bail!("cannot find this program to sandbox template rendering: {error}"),
    }
    let shutdown = CancellationToken::new();
    let catalog = Arc::new(assistants::Catalog::new(config.assistants_dir.clone()));
    catalog.reload(&store).await;
    let vault = Arc::new(secrets::Vault::new(config.secrets_key_file.clone(), config.secrets_key.clone()));
    let engines = crate::pipeline::EngineRegistry::new(models.clone(), config.egress.clone(), config.engine_limits);
    let twilio = match config.twilio.clone() {
        Some(mut twilio) => {
            if twilio.public_url.is_empty() {
                twilio.public_url = format!("http://{address}");
            }
            tracing::info!(public_url = %twilio.public_url, "Twilio is configured: POST /twilio/voice answers its numbers");
            Some(Arc::new(twilio::Twilio::new(twilio)?))
        }
        None => None,
    };
    let runner = Arc::new(runner::Runner::new(store.clone(), models, engines, vault.clone(), worker_id.clone(), twilio.clone(), config.recordings_dir.clone()).with_sandbox_line(config.sandbox_line));
    let state = AppState {
        store: store.clone(),
        config: Arc::new(config.clone()),
        limiter: Arc::new(auth::RateLimiter::default()),
        catalog: catalog.clone(),
        runner: runner.clone(),
        metrics: Arc::new(metrics::Metrics::default()),
        worker_id: worker_id.clone(),
        vault,
        limits: Arc::new(config.limits),
        twilio,
    };
    if config.preload {
        tokio::spawn(preload(runner.clone(), catalog.clone()));
    }
    tokio::spawn(background(state.clone(), shutdown.clone()));
    tokio::spawn(campaigns::drive(state.clone(), shutdown.clone()));
    tokio::spawn(webhooks::deliver_loop(store.clone(), state.vault.clone(), config.egress.clone(), shutdown.clone()));
    if store.backend == Backend::Postgres {
        tokio::spawn(runner::listen_for_control(store.url.clone(), runner.clone(), shutdown.clone()));
    }

    if let Some(sip_config) = config.sip.clone() {
        let trunk = sip_config.trunk;
        let (sip_address, dialer) = sip::start(state.clone(), sip_config, shutdown.clone()).await?;
        tracing::info!(address = %sip_address, "SIP: INVITEs to the workspaces' numbers are answered");
        if let Some(trunk) = trunk {
            tracing::info!(%trunk, "SIP: calls are placed through this trunk");
            runner.set_sip_dialer(dialer);
        }
    }

    // The first line on stdout says where to connect (tests and scripts read it).
    println!("listening on http://{address}");
    tracing::info!(%address, worker = %worker_id, database = ?store.backend, "serving");
    let app = router(state);
    let stop = shutdown.clone();
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(async move {
            wait_for_signal().await;
            stop.cancel();
        })
        .await?;
    shutdown.cancel();
    let ended = runner.hang_up_all("the server shut down");
    if ended > 0 {
        // Give the calls a moment to write their outcome.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    store.close_worker_calls(&worker_id, "the server shut down during the call").await?;
    store.remove_worker(&worker_id).await?;
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Loads the local models of the file assistants while the server already answers, so the
/// first caller is not the one who waits for them (calls that come sooner wait on the same
/// loads, never start their own).
async fn preload(runner: Arc<runner::Runner>, catalog: Arc<assistants::Catalog>) {
    runner.set_preload(runner::Preload::Loading);
    let started = std::time::Instant::now();
    let mut failures = std::collections::HashSet::new();
    for assistant in catalog.assistants().into_iter().filter(|a| a.uses_local_models()) {
        if let Err(error) = runner.preload(&assistant).await {
            // Assistants sharing a missing model fail alike: said once.
            if failures.insert(error.to_string()) {
                tracing::warn!(%error, assistant = %assistant.spec.name, "cannot load the assistant's models ahead; its first call tries again");
            }
        }
    }
    let loaded = runner.loaded_engines();
    let ms = started.elapsed().as_millis() as u64;
    match failures.is_empty() {
        true => tracing::info!(ms, whisper = loaded.whisper, voices = loaded.voices, llms = loaded.llms, "the file assistants' models are loaded"),
        false => tracing::warn!(ms, whisper = loaded.whisper, voices = loaded.voices, llms = loaded.llms, "some of the file assistants' models could not be loaded ahead (above)"),
    }
    runner.set_preload(runner::Preload::Done);
}

/// Heartbeat, orphan sweep and assistant-file reload, every two seconds.
async fn background(state: AppState, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(error) = state.store.heartbeat(&state.worker_id).await {
            tracing::warn!(%error, "heartbeat failed");
        }
        if state.store.backend == Backend::Postgres {
            let stale_before = store::now_ms() - state.config.worker_stale.as_millis() as i64;
            match state.store.close_orphaned_calls(&state.worker_id, stale_before, "the worker running the call stopped before it ended").await {
                Ok(0) => {}
                Ok(closed) => tracing::warn!(closed, "closed calls of a stopped worker"),
                Err(error) => tracing::warn!(%error, "orphan sweep failed"),
            }
        }
        state.catalog.reload(&state.store).await;
    }
}
