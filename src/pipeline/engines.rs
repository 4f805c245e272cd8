//! The engines a call uses, shared across calls by model identity.
//!
//! A model file is loaded once per process, whatever else two assistants disagree on: one
//! Silero and one Smart Turn for everyone, one Whisper per model file (the language is per
//! call), one Piper per voice, one `ringline-llm` per GGUF. Per-call settings — temperature,
//! max tokens, endpointing, language — travel with each call or request, never in the key.
//! Remote providers (OpenAI-compatible endpoints) are cheap clients made per call, through
//! the egress policy, with the key the call's [`Credentials`] resolve.
//!
//! Loading never holds a lock another call needs: the registry's map is locked only to find
//! or insert an entry's cell; the cell is filled (on a blocking thread) while other calls
//! go on, and calls that want the same model wait for that one load.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::OnceCell;

use crate::assistant::{Assistant, LlmProvider, SttProvider, VoiceProvider};
use crate::egress::EgressPolicy;
use crate::llm::local::LocalEngine;
use crate::llm::openai::OpenAiLlm;
use crate::llm::LanguageModel;
use crate::models::ModelStore;
use crate::stt::openai::OpenAiStt;
use crate::stt::whisper::{WhisperModel, WhisperStt};
use crate::stt::SpeechToText;
use crate::tts::openai::OpenAiTts;
use crate::tts::TextToSpeech;
use crate::vad::silero::SileroVad;
use crate::vad::smart_turn::SmartTurn;

/// Threads per engine on a 2-core machine. Whisper usually runs alone (the caller just
/// stopped), so it takes both cores — but only when both slots of the inference budget are
/// free, and then holds both ([`super::pool::stt_cores`]); else it runs on one; the LLM keeps decoding while Piper speaks its first sentence, so they
/// get one core each — measured: with two LLM threads, Piper's first audio came ~400 ms after
/// the first token; with one each, the two overlap instead of fighting.
pub const STT_THREADS: usize = 2;
pub const TTS_THREADS: usize = 1;
pub const LLM_THREADS: usize = 1;
/// Prompt processing happens before anything is spoken: it gets both cores.
pub const LLM_BATCH_THREADS: usize = 2;

/// [`LLM_BATCH_THREADS`], never more than the cores this process may use: ggml's threads wait
/// for each other spinning, so two of them on one core take turns at a fraction of the speed.
pub fn llm_batch_threads() -> usize {
    LLM_BATCH_THREADS.min(super::pool::cores())
}

/// Where an OpenAI-compatible provider is reached when the assistant names no `base_url`.
pub const DEFAULT_REMOTE_BASE: &str = "http://127.0.0.1:8000/v1";

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    Credentials(#[from] CredentialError),
    #[error("{field}: {source}")]
    Egress { field: String, source: crate::egress::EgressError },
    #[error(transparent)]
    Stt(#[from] crate::stt::SttError),
    #[error(transparent)]
    Tts(#[from] crate::tts::TtsError),
    #[error(transparent)]
    Llm(#[from] crate::llm::LlmError),
    #[error(transparent)]
    Onnx(#[from] crate::onnx::OnnxError),
    #[error(transparent)]
    Analysis(#[from] crate::analysis::AnalysisError),
    #[error("this server holds {limit} local {kind} models already (`--max-engines`); {wanted} would be one more")]
    TooManyEngines { kind: &'static str, limit: usize, wanted: String },
    #[error("loading a model stopped unexpectedly: {0}")]
    Join(String),
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CredentialError {
    #[error("{section}.api_key_env: `{variable}` is not set in the server's environment: export it with the provider's key")]
    MissingEnv { section: String, variable: String },
    #[error("{section}.api_key_env: assistants created over the API cannot read the server's environment; store the key with POST /v1/secrets and name it in `{section}.api_key_secret`")]
    EnvNotAllowed { section: String },
    #[error("{section}.api_key_secret: no secret `{name}` in this workspace (POST /v1/secrets creates one)")]
    UnknownSecret { section: String, name: String },
    #[error("{section}: give `api_key_env` or `api_key_secret`, not both")]
    Both { section: String },
}

/// Where a call's provider keys may come from, and how far its requests may reach.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// The deployment's own assistant (a file, or the operator's command): it may read
    /// `api_key_env` and connect anywhere. A workspace's assistant may do neither: its keys
    /// are its secrets, its requests obey the server's egress policy.
    env_allowed: bool,
    /// The workspace's secrets this call may use, by name, already decrypted.
    secrets: BTreeMap<String, String>,
}

impl Credentials {
    /// The operator's own commands (`simulate`, `demo`, `chat`): environment variables.
    pub fn from_env() -> Self {
        Credentials { env_allowed: true, secrets: BTreeMap::new() }
    }

    /// A call in a workspace: its secrets, and the environment only when the assistant is
    /// the deployment's (a file assistant) rather than the workspace's own.
    pub fn for_workspace(secrets: BTreeMap<String, String>, deployment_assistant: bool) -> Self {
        Credentials { env_allowed: deployment_assistant, secrets }
    }

    /// Whether this call runs the deployment's own assistant.
    pub fn is_deployment(&self) -> bool {
        self.env_allowed
    }

    /// The key for one provider section (`llm`, `stt`, `voice`); empty when none is named.
    pub fn key(&self, section: &str, env: Option<&str>, secret: Option<&str>) -> Result<String, CredentialError> {
        match (env, secret) {
            (Some(_), Some(_)) => Err(CredentialError::Both { section: section.into() }),
            (Some(_), None) if !self.env_allowed => Err(CredentialError::EnvNotAllowed { section: section.into() }),
            (Some(variable), None) => {
                std::env::var(variable).map_err(|_| CredentialError::MissingEnv { section: section.into(), variable: variable.into() })
            }
            (None, Some(name)) => self.secrets.get(name).cloned().ok_or_else(|| CredentialError::UnknownSecret { section: section.into(), name: name.into() }),
            (None, None) => Ok(String::new()),
        }
    }
}

/// The models one call uses, assembled from the registry.
pub struct Engines {
    pub vad: Arc<SileroVad>,
    pub smart_turn: Arc<SmartTurn>,
    pub stt: Arc<dyn SpeechToText>,
    pub tts: Arc<dyn TextToSpeech>,
    /// What `tts` is (provider, model, voice, endpoint): part of the speech cache's scope.
    pub voice: String,
    /// espeak-ng: used when the main voice fails.
    pub fallback_tts: Arc<dyn TextToSpeech>,
    pub llm: Arc<dyn LanguageModel>,
    /// For the assistant's HTTP tools: obeys the egress policy.
    pub http: reqwest::Client,
    /// The embedding model, when the assistant declares intents.
    pub analyzer: Option<Arc<crate::analysis::Analyzer>>,
}

type Cells<T> = Mutex<HashMap<String, Arc<OnceCell<T>>>>;

/// How many local models of each kind a server may hold.
#[derive(Debug, Clone, Copy)]
pub struct EngineLimits {
    pub per_kind: usize,
}

impl Default for EngineLimits {
    fn default() -> Self {
        EngineLimits { per_kind: 4 }
    }
}

/// Every loaded model of this process, by identity.
pub struct EngineRegistry {
    store: ModelStore,
    egress: EgressPolicy,
    limits: EngineLimits,
    vad: OnceCell<Arc<SileroVad>>,
    smart_turn: OnceCell<Arc<SmartTurn>>,
    whisper: Cells<Arc<WhisperModel>>,
    voices: Cells<Arc<dyn TextToSpeech>>,
    llms: Cells<Arc<LocalEngine>>,
    fallback_tts: Arc<dyn TextToSpeech>,
}

/// How many local models are loaded, by kind (for `/metrics` and the tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadedEngines {
    pub vad: usize,
    pub smart_turn: usize,
    pub whisper: usize,
    pub voices: usize,
    pub llms: usize,
}

impl EngineRegistry {
    pub fn new(store: ModelStore, egress: EgressPolicy, limits: EngineLimits) -> Self {
        EngineRegistry {
            store,
            egress,
            limits,
            vad: OnceCell::new(),
            smart_turn: OnceCell::new(),
            whisper: Mutex::new(HashMap::new()),
            voices: Mutex::new(HashMap::new()),
            llms: Mutex::new(HashMap::new()),
            fallback_tts: Arc::new(crate::tts::espeak::EspeakVoice::new("en-us")),
        }
    }

    pub fn egress(&self) -> &EgressPolicy {
        &self.egress
    }

    pub fn loaded(&self) -> LoadedEngines {
        fn count<T>(cells: &Cells<T>) -> usize {
            cells.lock().unwrap_or_else(|e| e.into_inner()).values().filter(|c| c.initialized()).count()
        }
        LoadedEngines {
            vad: self.vad.initialized() as usize,
            smart_turn: self.smart_turn.initialized() as usize,
            whisper: count(&self.whisper),
            voices: count(&self.voices),
            llms: count(&self.llms),
        }
    }

    /// Everything `assistant` needs for one call; loads what is not loaded yet and starts the
    /// local LLM engine.
    pub async fn engines_for(&self, assistant: &Assistant, credentials: &Credentials) -> Result<Arc<Engines>, EngineError> {
        let store = self.store.clone();
        let vad = self.vad.get_or_try_init(|| blocking(move || SileroVad::load(&store).map(Arc::new).map_err(EngineError::from))).await?.clone();
        let store = self.store.clone();
        let smart_turn = self.smart_turn.get_or_try_init(|| blocking(move || SmartTurn::load(&store).map(Arc::new).map_err(EngineError::from))).await?.clone();
        let stt = self.stt_for(assistant, credentials).await?;
        let tts = self.tts_for(assistant, credentials).await?;
        let voice = voice_identity(&assistant.spec.voice);
        let llm = self.llm_for(assistant, credentials).await?;
        llm.warm_up().await?;
        let http = self.egress_for(credentials).client(reqwest::Client::builder());
        let analyzer = match assistant.spec.intents.is_empty() {
            true => None,
            false => Some(self.analyzer().await?),
        };
        Ok(Arc::new(Engines { vad, smart_turn, stt, tts, voice, fallback_tts: self.fallback_tts.clone(), llm, http, analyzer }))
    }

    /// The process's embedding model (loaded once, off the runtime).
    pub async fn analyzer(&self) -> Result<Arc<crate::analysis::Analyzer>, EngineError> {
        let store = self.store.clone();
        blocking(move || Ok(crate::analysis::Analyzer::shared(&store)?)).await
    }

    async fn stt_for(&self, assistant: &Assistant, credentials: &Credentials) -> Result<Arc<dyn SpeechToText>, EngineError> {
        let spec = &assistant.spec.stt;
        if spec.provider == SttProvider::Openai {
            let key = credentials.key("stt", spec.api_key_env.as_deref(), spec.api_key_secret.as_deref())?;
            let egress = self.egress_for(credentials);
            let base = remote_base(&egress, "stt.base_url", spec.base_url.as_deref())?;
            return Ok(Arc::new(OpenAiStt::new(&base, &spec.model, &key, Some(&assistant.spec.language), &egress)));
        }
        let name = match spec.model.as_str() {
            m if m.starts_with("whisper-") => m.to_string(),
            m => format!("whisper-{m}"),
        };
        let store = self.store.clone();
        let key = name.clone();
        let model = self.cached(&self.whisper, "speech-to-text", &name, || blocking(move || WhisperModel::load(&store, &key).map(Arc::new).map_err(EngineError::from))).await?;
        Ok(Arc::new(WhisperStt::shared(model, STT_THREADS, Some(&assistant.spec.language)).without_timestamps()))
    }

    /// The assistant's voice: the local one for its name, or a client for its endpoint.
    async fn tts_for(&self, assistant: &Assistant, credentials: &Credentials) -> Result<Arc<dyn TextToSpeech>, EngineError> {
        let voice = &assistant.spec.voice;
        if voice.provider == VoiceProvider::Openai {
            let key = credentials.key("voice", voice.api_key_env.as_deref(), voice.api_key_secret.as_deref())?;
            let egress = self.egress_for(credentials);
            let base = remote_base(&egress, "voice.base_url", voice.base_url.as_deref())?;
            return Ok(Arc::new(OpenAiTts::new(&base, voice.model.as_deref().unwrap_or(DEFAULT_OPENAI_VOICE_MODEL), &voice.name, &key, &egress)));
        }
        let name = crate::tts::load_name(voice.provider, &voice.name);
        let store = self.store.clone();
        let key = name.clone();
        self.cached(&self.voices, "voice", &name, || {
            blocking(move || crate::tts::load_voice(&store, &key, TTS_THREADS).map(Arc::from).map_err(EngineError::from))
        })
        .await
    }

    /// The assistant's LLM: the shared local engine for its model, or a client for its
    /// OpenAI-compatible endpoint.
    pub async fn llm_for(&self, assistant: &Assistant, credentials: &Credentials) -> Result<Arc<dyn LanguageModel>, EngineError> {
        let spec = &assistant.spec.llm;
        if spec.provider == LlmProvider::Openai {
            let key = credentials.key("llm", spec.api_key_env.as_deref(), spec.api_key_secret.as_deref())?;
            let egress = self.egress_for(credentials);
            let base = remote_base(&egress, "llm.base_url", spec.base_url.as_deref())?;
            return Ok(Arc::new(OpenAiLlm::new(&base, &spec.model, &key, Duration::from_secs(30), &egress)));
        }
        let store = self.store.clone();
        let model = spec.model.clone();
        let engine = self.cached(&self.llms, "LLM", &spec.model, || async move { Ok(Arc::new(LocalEngine::new(&store, &model, LLM_THREADS, llm_batch_threads())?)) }).await?;
        Ok(engine)
    }

    /// The policy a call's requests obey: the server's for a workspace's assistant, none
    /// for the deployment's own.
    fn egress_for(&self, credentials: &Credentials) -> EgressPolicy {
        if credentials.is_deployment() {
            EgressPolicy::allow_all()
        } else {
            self.egress.clone()
        }
    }

    /// The entry `key` of `cells`, loaded by `load` the first time. The map's lock is held
    /// only to find or insert the cell.
    async fn cached<T: Clone, F, Fut>(&self, cells: &Cells<T>, kind: &'static str, key: &str, load: F) -> Result<T, EngineError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<T, EngineError>>,
    {
        let cell = {
            let mut map = cells.lock().unwrap_or_else(|e| e.into_inner());
            if !map.contains_key(key) && map.len() >= self.limits.per_kind {
                return Err(EngineError::TooManyEngines { kind, limit: self.limits.per_kind, wanted: key.to_string() });
            }
            map.entry(key.to_string()).or_default().clone()
        };
        let loaded = cell.get_or_try_init(load).await;
        if loaded.is_err() {
            // A failed load leaves no entry behind, so it neither counts against the limit
            // nor hides a model that appears in the store later.
            let mut map = cells.lock().unwrap_or_else(|e| e.into_inner());
            if map.get(key).is_some_and(|c| !c.initialized()) {
                map.remove(key);
            }
        }
        loaded.cloned()
    }
}

fn remote_base(egress: &EgressPolicy, field: &str, base: Option<&str>) -> Result<String, EngineError> {
    let base = base.unwrap_or(DEFAULT_REMOTE_BASE);
    egress.check_url(base).map_err(|source| EngineError::Egress { field: field.into(), source })?;
    Ok(base.to_string())
}

/// Runs model loading on a blocking thread: it reads and prepares files for a while.
async fn blocking<T: Send + 'static>(load: impl FnOnce() -> Result<T, EngineError> + Send + 'static) -> Result<T, EngineError> {
    tokio::task::spawn_blocking(load).await.map_err(|e| EngineError::Join(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_come_from_where_the_assistant_may_take_them() {
        std::env::set_var("RINGLINE_TEST_CANARY_KEY", "canary");
        let tenant = Credentials::for_workspace(BTreeMap::from([("openai".to_string(), "sk-tenant".to_string())]), false);
        assert_eq!(tenant.key("llm", None, Some("openai")).unwrap(), "sk-tenant");
        assert_eq!(tenant.key("llm", Some("RINGLINE_TEST_CANARY_KEY"), None), Err(CredentialError::EnvNotAllowed { section: "llm".into() }));
        assert_eq!(tenant.key("llm", Some("NOT_SET_ANYWHERE"), None), Err(CredentialError::EnvNotAllowed { section: "llm".into() }), "no probing which variables exist");
        assert!(matches!(tenant.key("stt", None, Some("other")), Err(CredentialError::UnknownSecret { .. })));
        assert_eq!(tenant.key("voice", None, None).unwrap(), "");
        let operator = Credentials::from_env();
        assert_eq!(operator.key("llm", Some("RINGLINE_TEST_CANARY_KEY"), None).unwrap(), "canary");
        assert!(matches!(operator.key("llm", Some("A"), Some("B")), Err(CredentialError::Both { .. })));
    }
}

/// A cloud voice's model when the assistant names none.
const DEFAULT_OPENAI_VOICE_MODEL: &str = "tts-1";

/// What synthesizes an assistant's speech, as one string: two assistants with the same identity
/// sound the same, so one may replay what the other's voice said (within one tenant).
fn voice_identity(voice: &crate::assistant::VoiceSpec) -> String {
    match voice.provider {
        VoiceProvider::Openai => format!("openai|{}|{}|{}", voice.base_url.as_deref().unwrap_or(""), voice.model.as_deref().unwrap_or(DEFAULT_OPENAI_VOICE_MODEL), voice.name),
        provider @ (VoiceProvider::Piper | VoiceProvider::Espeak) => format!("{provider}|{}", voice.name),
    }
}
