//! An inbound phone call, whatever line brought it (a Twilio webhook, a SIP INVITE): the dialled
//! number's assistant, the limits, and the call's record. The line then connects its audio.

use std::sync::Arc;

use super::runner::AssistantOwner;
use super::AppState;
use crate::assistant::Assistant;
use crate::store::{self, CallRecord};

/// Why an inbound call is not taken; each line words it its own way (a message the caller
/// hears, a SIP status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No workspace holds the number, or no assistant answers it.
    NotInService,
    /// The workspace or this server is at its limit of calls.
    Busy,
    /// The store failed.
    Unavailable,
}

impl Refusal {
    /// What the caller hears.
    pub fn message(self) -> &'static str {
        match self {
            Refusal::NotInService => "Sorry, this number is not in service.",
            Refusal::Busy => "Sorry, all our lines are busy. Please call again later.",
            Refusal::Unavailable => "Sorry, we cannot take your call right now.",
        }
    }
}

/// A call admitted and recorded, for its line to connect.
pub struct Admitted {
    pub call: CallRecord,
    pub assistant: Arc<Assistant>,
    pub owner: AssistantOwner,
    /// The assistant records its calls.
    pub record: bool,
}

/// Admits a call from `from` to `to`: the number's assistant, within the workspace's and this
/// server's limits; the call is stored as `initiated` with `metadata` (what the line knows of
/// it, e.g. the provider's call id).
pub async fn admit(state: &AppState, to: &str, from: &str, metadata: serde_json::Value) -> Result<Admitted, Refusal> {
    let number = match state.store.number_holder(to).await {
        Ok(Some(number)) => number,
        Ok(None) => return Err(Refusal::NotInService),
        Err(error) => {
            tracing::error!(%error, "cannot look up an inbound number");
            return Err(Refusal::Unavailable);
        }
    };
    let Some(assistant_id) = number.assistant_id.clone() else {
        tracing::info!(number = %to, "an inbound call to a number no assistant answers");
        return Err(Refusal::NotInService);
    };
    let record = match state.store.assistant(&number.workspace_id, &assistant_id).await {
        Ok(Some(record)) => record,
        _ => return Err(Refusal::NotInService),
    };
    let Ok(assistant) = super::assistants::from_stored(&record.id, record.current_version, &record.spec) else { return Err(Refusal::NotInService) };
    if state.limits.check_call(&state.store, &number.workspace_id, state.runner.load_for(&assistant)).await.is_err() {
        return Err(Refusal::Busy);
    }
    let owner = if record.source == "file" { AssistantOwner::Deployment } else { AssistantOwner::Workspace };
    let now = store::now_ms();
    let call = CallRecord {
        id: store::new_id("call"),
        workspace_id: number.workspace_id.clone(),
        assistant_id: record.id.clone(),
        assistant_version: record.current_version,
        direction: "inbound".into(),
        to_number: to.to_string(),
        from_number: from.to_string(),
        status: crate::call::CallStatus::Initiated.as_str().into(),
        dynamic_variables: "{}".into(),
        metadata: metadata.to_string(),
        worker_id: Some(state.worker_id.to_string()),
        day: store::day_of(now),
        created_at: now,
        ..CallRecord::default()
    };
    let digest = call.id.clone();
    match state.store.insert_call(&call, super::calls::IDEMPOTENCY_WINDOW_MS, &digest).await {
        Ok(Ok(())) => {}
        _ => return Err(Refusal::Unavailable),
    }
    state.metrics.call_started();
    let record = assistant.spec.recording;
    Ok(Admitted { call, assistant: Arc::new(assistant), owner, record })
}
