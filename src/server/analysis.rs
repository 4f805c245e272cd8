//! `/v1/analysis/*`: the engines the live call analysis uses, as endpoints — intent against a
//! list of intents or an assistant's, with entities; sentiment of a text.
//!
//! Every size is bounded (the text, the intents, their examples) and embedding work runs on a
//! blocking thread, one request at a time per server, so no key can hold both cores or grow
//! memory without bound. Examples are cached by text: a client that sends the same few
//! hundred intents with every request pays for embedding them once.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Semaphore;
use utoipa::ToSchema;

use super::auth::Auth;
use super::error::{ApiError, ApiJson, ErrorBody};
use super::AppState;
use crate::analysis::{intent, IntentDef, Sentiment};
use crate::assistant::check::MAX_INTENT_EXAMPLES;

const MAX_TEXT_CHARS: usize = 2_000;
const MAX_INTENTS: usize = 1_000;
const MAX_EXAMPLES_PER_INTENT: usize = 50;
const MAX_EXAMPLE_CHARS: usize = 500;

/// Embedding jobs from the API run one at a time: live calls keep the other core.
static JOBS: Semaphore = Semaphore::const_new(1);

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IntentInput {
    pub name: String,
    pub description: Option<String>,
    #[serde(default)]
    pub examples: Vec<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IntentRequest {
    /// What the caller said.
    pub text: String,
    /// The intents to choose from; or name an assistant to use its `intents`.
    pub intents: Option<Vec<IntentInput>>,
    pub assistant_id: Option<String>,
    /// Below this similarity the answer is `unknown` (default: the assistant's, else 0.5).
    pub threshold: Option<f32>,
    /// IANA timezone that "tomorrow" and "Friday" resolve in (default: the assistant's, else UTC).
    pub timezone: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct RunnerUp {
    pub intent: String,
    pub confidence: f32,
}

#[derive(Serialize, ToSchema)]
pub struct IntentResponse {
    /// One of the intents' names, or `unknown`.
    pub intent: String,
    /// 0–1: the similarity of the nearest example (for `unknown`, one minus the nearest).
    pub confidence: f32,
    pub runner_up: Option<RunnerUp>,
    /// Dates, times, amounts, emails, phone numbers, ids and numbers in the text.
    #[schema(value_type = Vec<Object>)]
    pub entities: Vec<Value>,
}

/// Which intent a text expresses, with its entities.
#[utoipa::path(post, path = "/v1/analysis/intent", tag = "analysis", request_body = IntentRequest,
    responses((status = 200, body = IntentResponse), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn intent(State(state): State<AppState>, auth: Auth, ApiJson(request): ApiJson<IntentRequest>) -> Result<Json<IntentResponse>, ApiError> {
    check_text(&request.text)?;
    let (defs, threshold, timezone) = match (request.intents, request.assistant_id) {
        (Some(_), Some(_)) => return Err(ApiError::invalid("assistant_id", "give `intents` or `assistant_id`, not both")),
        (None, None) => return Err(ApiError::invalid("intents", "give the `intents` to choose from, or an `assistant_id` whose intents to use")),
        (Some(intents), None) => (check_intents(intents)?, None, None),
        (None, Some(id)) => {
            let record = state.store.assistant(&auth.workspace_id, &id).await?.ok_or_else(|| ApiError::not_found("assistant", &id))?;
            let spec: crate::assistant::AssistantSpec = serde_json::from_str(&record.spec).map_err(|e| ApiError::internal(format!("the stored assistant does not parse: {e}")))?;
            if spec.intents.is_empty() {
                return Err(ApiError::invalid("assistant_id", format!("assistant `{id}` declares no `intents`; add some or send `intents`")));
            }
            let defs = spec.intents.iter().map(crate::assistant::IntentSpec::def).collect();
            (defs, Some(spec.intent_threshold), Some(spec.timezone))
        }
    };
    let threshold = match request.threshold {
        Some(t) if !(0.0..=1.0).contains(&t) => return Err(ApiError::invalid("threshold", format!("{t} is not a similarity; give a value from 0 to 1"))),
        Some(t) => t,
        None => threshold.unwrap_or(intent::DEFAULT_THRESHOLD),
    };
    let today = today_in(request.timezone.or(timezone).as_deref())?;
    let found = analyze(&state, request.text, Some(defs), threshold, today).await?;
    let matched = found.intent.expect("intents were given");
    Ok(Json(IntentResponse {
        intent: matched.intent,
        confidence: matched.confidence,
        runner_up: matched.runner_up.map(|(intent, confidence)| RunnerUp { intent, confidence }),
        entities: found.entities.iter().map(|e| serde_json::json!({ "type": e.kind, "value": e.value })).collect(),
    }))
}

/// A text's analysis against `intents` (or sentiment and entities alone without them): the one
/// path every dialect's intent endpoint takes. Embedding runs on a blocking thread, one job at
/// a time per server.
pub async fn analyze(state: &AppState, text: String, intents: Option<Vec<IntentDef>>, threshold: f32, today: chrono::NaiveDate) -> Result<crate::analysis::UtteranceAnalysis, ApiError> {
    let Some(defs) = intents else {
        return Ok(crate::analysis::UtteranceAnalysis::without_intent(&text, crate::analysis::Day::of(today)));
    };
    let analyzer = state.runner.analyzer().await.map_err(|e| ApiError::new(axum::http::StatusCode::SERVICE_UNAVAILABLE, "model_unavailable", e.to_string()))?;
    let _permit = JOBS.acquire().await.map_err(|_| ApiError::internal("the analysis queue closed"))?;
    tokio::task::spawn_blocking(move || {
        let set = analyzer.intent_set(&defs);
        analyzer.analyze(&text, Some(&set), threshold, crate::analysis::Day::of(today))
    })
    .await
    .map_err(|e| ApiError::internal(format!("the analysis stopped: {e}")))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SentimentRequest {
    pub text: String,
}

#[derive(Serialize, ToSchema)]
pub struct SentimentResponse {
    /// −1 (very negative) … 1 (very positive).
    pub score: f32,
    /// `negative`, `neutral` or `positive`.
    pub label: String,
}

/// The sentiment of a text.
#[utoipa::path(post, path = "/v1/analysis/sentiment", tag = "analysis", request_body = SentimentRequest,
    responses((status = 200, body = SentimentResponse), (status = 422, body = ErrorBody)))]
pub async fn sentiment(_auth: Auth, ApiJson(request): ApiJson<SentimentRequest>) -> Result<Json<SentimentResponse>, ApiError> {
    check_text(&request.text)?;
    let Sentiment { score, label } = crate::analysis::sentiment::score(&request.text);
    Ok(Json(SentimentResponse { score, label: label.as_str().to_string() }))
}

pub fn check_text(text: &str) -> Result<(), ApiError> {
    let chars = text.chars().count();
    if text.trim().is_empty() {
        return Err(ApiError::invalid("text", "is empty; send what the caller said"));
    }
    if chars > MAX_TEXT_CHARS {
        return Err(ApiError::invalid("text", format!("is {chars} characters; the most is {MAX_TEXT_CHARS} (send one utterance)")));
    }
    Ok(())
}

pub fn check_intents(intents: Vec<IntentInput>) -> Result<Vec<IntentDef>, ApiError> {
    if intents.is_empty() {
        return Err(ApiError::invalid("intents", "is empty; give at least one intent with examples"));
    }
    if intents.len() > MAX_INTENTS {
        return Err(ApiError::invalid("intents", format!("has {} intents; the most is {MAX_INTENTS}", intents.len())));
    }
    let total: usize = intents.iter().map(|i| i.examples.len()).sum();
    if total > MAX_INTENT_EXAMPLES {
        return Err(ApiError::invalid("intents", format!("has {total} examples in all; the most is {MAX_INTENT_EXAMPLES}")));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, intent) in intents.iter().enumerate() {
        let name = intent.name.trim();
        if name.is_empty() || name.chars().count() > 100 {
            return Err(ApiError::invalid(format!("intents.{i}.name"), "give a name of 1 to 100 characters"));
        }
        if !seen.insert(name.to_string()) {
            return Err(ApiError::invalid(format!("intents.{i}.name"), format!("`{name}` is given twice; names must be unique")));
        }
        if intent.examples.len() > MAX_EXAMPLES_PER_INTENT {
            return Err(ApiError::invalid(format!("intents.{i}.examples"), format!("has {} examples; the most is {MAX_EXAMPLES_PER_INTENT}", intent.examples.len())));
        }
        if intent.examples.iter().all(|e| e.trim().is_empty()) && intent.description.as_deref().is_none_or(|d| d.trim().is_empty()) {
            return Err(ApiError::invalid(format!("intents.{i}.examples"), format!("intent `{name}` has no examples; give phrases a caller would say")));
        }
        for (j, text) in intent.examples.iter().chain(intent.description.iter()).enumerate() {
            if text.chars().count() > MAX_EXAMPLE_CHARS {
                return Err(ApiError::invalid(format!("intents.{i}.examples.{j}"), format!("is longer than {MAX_EXAMPLE_CHARS} characters")));
            }
        }
    }
    Ok(intents.into_iter().map(|i| IntentDef { name: i.name.trim().to_string(), description: i.description, examples: i.examples }).collect())
}

pub fn today_in(timezone: Option<&str>) -> Result<chrono::NaiveDate, ApiError> {
    let zone: chrono_tz::Tz = match timezone {
        None => chrono_tz::UTC,
        Some(name) => name.parse().map_err(|_| ApiError::invalid("timezone", format!("`{name}` is not an IANA timezone such as Europe/London")))?,
    };
    Ok(chrono::Utc::now().with_timezone(&zone).date_naive())
}
