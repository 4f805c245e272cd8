//! Ringez subscriptions and agent features: Ringez-shaped webhooks, intent, sentiment, routing,
//! analytics and spending, over Ringline's engines.

use super::*;

// ── webhooks ────────────────────────────────────────────────────────────────────────────

/// What a Ringez subscription may ask for.
pub const EVENTS: &[&str] = &["call.initiated", "call.ringing", "call.answered", "call.completed", "call.failed", "transcription.updated", "balance.low"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscribeRequest {
    pub session_id: Option<String>,
    pub webhook_url: String,
    pub events: Vec<String>,
    pub secret: Option<String>,
}

/// Subscribes a URL to call events in Ringez's shape (`{event, timestamp, data}`), signed with
/// `X-Ringez-Signature: <hex HMAC-SHA256 of the body>`.
pub async fn subscribe(State(state): State<AppState>, caller: RingezCaller, ApiJson(request): ApiJson<SubscribeRequest>) -> Result<impl IntoResponse, ApiError> {
    caller.session_named(&state, request.session_id.as_deref()).await?;
    for event in &request.events {
        if !EVENTS.contains(&event.as_str()) {
            return Err(ApiError::invalid("events", format!("`{}` is not an event; use {}", crate::assistant::check::clip(event), EVENTS.join(", "))));
        }
    }
    let hook = crate::server::webhooks::subscribe(&state, &caller.auth, &request.webhook_url, "webhook_url", request.events.clone(), request.secret, "ringez").await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "webhook_id": hook.id,
            "status": "active",
            "events": request.events,
            "secret": hook.secret,
            "created_at": hook.created_at,
        })),
    ))
}

// ── agent features ──────────────────────────────────────────────────────────────────────

/// The intents Ringez's intent detection chooses from when the call's assistant declares none:
/// (intent, sub-intent, department, examples).
const DEFAULT_INTENTS: &[(&str, &str, &str, &[&str])] = &[
    ("customer_support", "order_inquiry", "orders", &["I need to speak with someone about my order", "where is my order", "my parcel has not arrived", "I want to check the status of my order"]),
    ("customer_support", "billing", "billing", &["I was charged twice", "there is a problem with my bill", "I want a refund", "why was I charged"]),
    ("customer_support", "technical_support", "support", &["it doesn't work", "the app keeps crashing", "I can't log in to my account", "my device is broken"]),
    ("sales", "purchase", "sales", &["I want to buy", "how much does it cost", "I'd like to upgrade my plan", "can I get a quote"]),
    ("account", "account_change", "accounts", &["I want to change my address", "update my phone number", "close my account", "reset my password"]),
    ("appointment", "booking", "bookings", &["I'd like to book an appointment", "can I reschedule", "cancel my booking", "is there a table for two tonight"]),
    ("transfer_request", "human_agent", "customer_service", &["let me speak to a person", "can I talk to a human", "transfer me to an agent", "I want to speak to a manager"]),
    ("greeting", "greeting", "customer_service", &["hello", "hi there", "good morning", "is this customer service"]),
    ("goodbye", "goodbye", "customer_service", &["thank you, bye", "that's all", "goodbye", "have a nice day"]),
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntentDetection {
    pub call_id: Option<String>,
    pub transcript_segment: String,
    #[serde(default)]
    pub context: Value,
    /// Ringline: intents to choose from instead of the call's assistant's or the defaults.
    pub intents: Option<Vec<crate::server::analysis::IntentInput>>,
}

/// The utterance's intent (the call's assistant's intents, else a general customer-service
/// set) with entities and what to do next.
pub async fn intent_detection(State(state): State<AppState>, caller: RingezCaller, ApiJson(request): ApiJson<IntentDetection>) -> Result<Json<Value>, ApiError> {
    crate::server::analysis::check_text(&request.transcript_segment).map_err(|e| e.with_field("transcript_segment"))?;
    if !(request.context.is_null() || request.context.is_object()) || request.context.to_string().len() > 4096 {
        return Err(ApiError::invalid("context", "must be a JSON object of at most 4 KB"));
    }
    let mut timezone = None;
    let mut assistant_intents = None;
    if let Some(id) = &request.call_id {
        let call = caller.call(&state, id).await?;
        if let Some(spec) = state.store.assistant_version(&call.assistant_id, call.assistant_version).await? {
            if let Ok(spec) = serde_json::from_str::<crate::assistant::AssistantSpec>(&spec) {
                timezone = Some(spec.timezone.clone());
                if !spec.intents.is_empty() {
                    assistant_intents = Some((spec.intents.iter().map(crate::assistant::IntentSpec::def).collect::<Vec<_>>(), spec.intent_threshold));
                }
            }
        }
    }
    let (defs, threshold, defaults) = match (request.intents, assistant_intents) {
        (Some(given), _) => (crate::server::analysis::check_intents(given)?, crate::analysis::intent::DEFAULT_THRESHOLD, false),
        (None, Some((defs, threshold))) => (defs, threshold, false),
        (None, None) => {
            let defs = DEFAULT_INTENTS
                .iter()
                .map(|(intent, sub, _, examples)| crate::analysis::IntentDef { name: format!("{intent}/{sub}"), description: None, examples: examples.iter().map(|e| e.to_string()).collect() })
                .collect();
            (defs, 0.45, true)
        }
    };
    let today = crate::server::analysis::today_in(timezone.as_deref())?;
    let text = request.transcript_segment.clone();
    let found = crate::server::analysis::analyze(&state, text, Some(defs), threshold, today).await?;
    let matched = found.intent.clone().ok_or_else(|| ApiError::internal("no intent came back"))?;
    let (intent, sub_intent) = match matched.intent.split_once('/') {
        Some((i, s)) if defaults => (i.to_string(), Some(s.to_string())),
        _ => (matched.intent.clone(), None),
    };
    let department = DEFAULT_INTENTS.iter().find(|(i, s, ..)| *i == intent && Some(*s) == sub_intent.as_deref()).map(|(.., d, _)| *d);
    let mut entities = serde_json::Map::new();
    for entity in &found.entities {
        let key = match entity.kind {
            "id" | "number" if request.transcript_segment.to_lowercase().contains("order") => "order_number",
            "id" => "reference",
            other => other,
        };
        // Ids are text (a leading zero is part of one).
        let value = match (&entity.value, key) {
            (Value::Number(n), "order_number" | "reference") => Value::String(n.to_string()),
            (value, _) => value.clone(),
        };
        entities.entry(key.to_string()).or_insert(value);
    }
    if let Some(department) = department {
        entities.insert("department".into(), json!(department));
    }
    let negative = found.sentiment.score < -0.5;
    let suggested_action = match intent.as_str() {
        "transfer_request" => "transfer_to_department",
        _ if negative => "escalate_to_supervisor",
        "customer_support" | "sales" | "account" => "transfer_to_department",
        "unknown" => "ask_clarifying_question",
        "goodbye" => "end_call",
        _ => "continue_conversation",
    };
    Ok(Json(json!({
        "intent": intent,
        "sub_intent": sub_intent,
        "entities": entities,
        "confidence": matched.confidence,
        "suggested_action": suggested_action,
        "suggested_parameters": { "department": department, "priority": if negative { "high" } else { "medium" } },
        "sentiment": found.sentiment,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SentimentAnalysis {
    pub call_id: Option<String>,
    pub transcript_segment: String,
    pub include_recommendations: Option<bool>,
}

const URGENT: &[&str] = &["urgent", "immediately", "right now", "asap", "emergency", "weeks", "still", "again"];

pub async fn sentiment_analysis(State(state): State<AppState>, caller: RingezCaller, ApiJson(request): ApiJson<SentimentAnalysis>) -> Result<Json<Value>, ApiError> {
    let text = &request.transcript_segment;
    crate::server::analysis::check_text(text).map_err(|e| e.with_field("transcript_segment"))?;
    if let Some(id) = &request.call_id {
        caller.call(&state, id).await?;
    }
    let sentiment = crate::analysis::sentiment::score(text);
    let lower = text.to_lowercase();
    let emotion = if sentiment.score <= -0.2 {
        if ["angry", "furious", "ridiculous", "outrageous", "unacceptable"].iter().any(|w| lower.contains(w)) {
            "angry"
        } else if ["frustrat", "annoy", "fed up", "waiting"].iter().any(|w| lower.contains(w)) {
            "frustrated"
        } else if ["worried", "afraid", "scared", "anxious"].iter().any(|w| lower.contains(w)) {
            "anxious"
        } else {
            "dissatisfied"
        }
    } else if sentiment.score >= 0.2 {
        "satisfied"
    } else {
        "neutral"
    };
    let urgent_words = URGENT.iter().filter(|w| lower.contains(*w)).count();
    let urgency = if sentiment.score < -0.6 || (sentiment.score < -0.2 && urgent_words > 0) || urgent_words >= 2 {
        "high"
    } else if sentiment.score < -0.2 || urgent_words == 1 {
        "medium"
    } else {
        "low"
    };
    let escalate = sentiment.score < -0.6 || (urgency == "high" && sentiment.score < -0.2);
    let mut body = json!({
        "sentiment": sentiment.label.as_str(),
        "sentiment_score": sentiment.score,
        "emotion": emotion,
        "urgency": urgency,
        "escalation_recommended": escalate,
        "key_phrases": crate::analysis::sentiment::key_phrases(text),
    });
    if request.include_recommendations.unwrap_or(true) {
        let (tone, actions): (&str, &[&str]) = match (sentiment.label.as_str(), escalate) {
            ("negative", true) => ("empathetic_and_solution_focused", &["acknowledge_frustration", "offer_immediate_solution", "escalate_to_supervisor"]),
            ("negative", false) => ("empathetic", &["acknowledge_concern", "offer_solution"]),
            ("positive", _) => ("warm", &["thank_customer", "offer_further_help"]),
            _ => ("neutral_and_helpful", &["answer_question"]),
        };
        body["recommended_response_tone"] = json!(tone);
        body["suggested_actions"] = json!(actions);
    }
    Ok(Json(body))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingRequest {
    #[serde(default)]
    pub caller_info: Value,
    #[serde(default)]
    pub routing_criteria: Value,
    pub business_hours: Option<bool>,
}

/// Where to send a caller: the workspace's number labelled with the department (numbers are
/// labelled when added: `POST /v1/numbers {"label": "sales"}`); `voicemail` and `callback`
/// labelled numbers are the fallbacks.
pub async fn call_routing(State(state): State<AppState>, caller: RingezCaller, ApiJson(request): ApiJson<RoutingRequest>) -> Result<Json<Value>, ApiError> {
    let department = request.routing_criteria.get("department").and_then(Value::as_str).map(str::to_lowercase);
    let skill = request.routing_criteria.get("skill_required").and_then(Value::as_str).map(str::to_lowercase);
    let (numbers, _) = state.store.numbers(&caller.auth.workspace_id, 1000, 0).await?;
    let label_of = |n: &crate::store::NumberRecord| n.label.clone().unwrap_or_default().to_lowercase();
    let wanted: Vec<String> = [department.clone(), skill.clone()].into_iter().flatten().collect();
    let matching = numbers.iter().filter(|n| !wanted.is_empty() && wanted.iter().all(|w| label_of(n).contains(w.as_str()))).chain(
        numbers.iter().filter(|n| department.as_deref().is_some_and(|d| label_of(n).contains(d))),
    );
    let fallback: Vec<Value> = numbers
        .iter()
        .filter(|n| label_of(n).contains("voicemail"))
        .map(|n| json!({ "type": "voicemail", "number": n.e164 }))
        .chain(numbers.iter().filter(|n| label_of(n).contains("callback")).map(|n| json!({ "type": "callback", "number": n.e164 })))
        .collect();
    let open = request.business_hours.unwrap_or(true);
    let Some(target) = matching.into_iter().next().filter(|_| open) else {
        if let Some(first) = fallback.first() {
            return Ok(Json(json!({ "route_to": first["number"], "route_type": first["type"], "estimated_wait_time": 0, "agent_available": false, "fallback_options": fallback[1..].to_vec() })));
        }
        let asked = department.unwrap_or_else(|| "(none given)".into());
        return Err(ApiError::new(StatusCode::NOT_FOUND, "no_route", format!("no number in this workspace is labelled for department `{asked}`, and none for voicemail; label numbers when adding them (POST /v1/numbers with \"label\": \"{asked}\")")).with_field("routing_criteria.department"));
    };
    let busy = state.store.history(&caller.auth.workspace_id, &HistoryFilter { to_number: Some(target.e164.clone()), status: Some("in-progress".into()), to: i64::MAX, limit: 1, ..HistoryFilter::default() }).await?.1;
    Ok(Json(json!({
        "route_to": target.e164,
        "route_type": "direct",
        // Ringline does not queue transfers: a free line is answered at once.
        "estimated_wait_time": 0,
        "agent_available": busy == 0,
        "fallback_options": fallback,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsQuery {
    pub session_id: Option<String>,
    pub start_date: Option<String>,
    pub end_date: Option<String>,
    /// day, week or month.
    pub group_by: Option<String>,
}

fn bucket(ms: i64, group: &str) -> String {
    let Some(t) = chrono::DateTime::from_timestamp_millis(ms) else { return String::new() };
    match group {
        "week" => {
            let week = t.iso_week();
            format!("{}-W{:02}", week.year(), week.week())
        }
        "month" => t.format("%Y-%m").to_string(),
        "hour" => t.format("%Y-%m-%dT%H:00").to_string(),
        _ => t.format("%Y-%m-%d").to_string(),
    }
}

use chrono::Datelike;

pub async fn call_metrics(State(state): State<AppState>, caller: RingezCaller, ApiQuery(query): ApiQuery<MetricsQuery>) -> Result<Json<Value>, ApiError> {
    let session = caller.session_named(&state, query.session_id.as_deref()).await?;
    let group = query.group_by.unwrap_or_else(|| "day".into());
    if !matches!(group.as_str(), "day" | "week" | "month" | "hour") {
        return Err(ApiError::bad_request("invalid_query", format!("group_by `{}` is not day, week, month or hour", crate::assistant::check::clip(&group))).with_field("group_by"));
    }
    let from = calls::time_bound("start_date", query.start_date.as_deref(), false, 0)?;
    let to = calls::time_bound("end_date", query.end_date.as_deref(), true, i64::MAX)?;
    let rows = calls_in(&state, &caller.auth.workspace_id, session.as_ref().map(|s| s.id.as_str()), from, to).await?;
    let currency = session.as_ref().map(|s| s.currency.clone()).unwrap_or_else(|| "USD".into());
    let mut by_country: BTreeMap<String, i64> = BTreeMap::new();
    let mut by_type: BTreeMap<String, i64> = BTreeMap::new();
    let mut by_status: BTreeMap<String, i64> = BTreeMap::new();
    let mut by_period: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    let (mut duration_s, mut total_cost, mut completed, mut ended) = (0i64, 0.0f64, 0i64, 0i64);
    for call in &rows {
        let info = describe(&call.to_number, None);
        *by_country.entry(info.country.clone().unwrap_or_else(|| "unknown".into())).or_default() += 1;
        let kind = match info.kind.as_deref() {
            Some("fixed_line" | "toll_free") => "landline",
            _ => "mobile",
        };
        *by_type.entry(kind.into()).or_default() += 1;
        *by_status.entry(call.status.replace('-', "_")).or_default() += 1;
        let period = by_period.entry(bucket(call.created_at, &group)).or_default();
        period.0 += 1;
        period.1 += duration_ms(call) / 1000;
        duration_s += duration_ms(call) / 1000;
        total_cost += cost(call, &currency).1;
        if !call.is_live() {
            ended += 1;
            if call.status == "completed" {
                completed += 1;
            }
        }
    }
    let total = rows.len() as i64;
    let first = rows.iter().map(|c| c.created_at).min();
    let last = rows.iter().map(|c| c.created_at).max();
    let mut breakdown = json!({ "by_country": by_country, "by_type": by_type, "by_status": by_status });
    breakdown[format!("by_{group}")] = json!(by_period.into_iter().map(|(period, (calls, seconds))| json!({ group.clone(): period, "total_calls": calls, "total_duration": seconds })).collect::<Vec<_>>());
    Ok(Json(json!({
        "period": {
            "start": if from > 0 { Some(rfc3339(from)) } else { first.map(rfc3339) },
            "end": if to < i64::MAX { Some(rfc3339(to - 1)) } else { last.map(rfc3339) },
        },
        "metrics": {
            "total_calls": total,
            "total_duration": duration_s,
            "total_cost": money(total_cost),
            "currency": currency,
            "average_duration": if total > 0 { ((duration_s as f64 / total as f64) * 100.0).round() / 100.0 } else { 0.0 },
            "success_rate": if ended > 0 { ((completed as f64 / ended as f64) * 100.0).round() / 100.0 } else { 0.0 },
            // No line measures MOS here.
            "call_quality_avg": Value::Null,
        },
        "breakdown": breakdown,
    })))
}

/// This month's spending against the session's budget, and a straight-line forecast.
pub async fn spending(State(state): State<AppState>, caller: RingezCaller, ApiQuery(query): ApiQuery<SessionQuery>) -> Result<Json<Value>, ApiError> {
    let session = caller.session_named(&state, query.session_id.as_deref()).await?;
    let now = chrono::Utc::now();
    let start = chrono::NaiveDate::from_ymd_opt(now.year(), now.month(), 1).and_then(|d| d.and_hms_opt(0, 0, 0)).map(|t| t.and_utc()).unwrap_or(now);
    let next = if now.month() == 12 { chrono::NaiveDate::from_ymd_opt(now.year() + 1, 1, 1) } else { chrono::NaiveDate::from_ymd_opt(now.year(), now.month() + 1, 1) };
    let end = next.and_then(|d| d.and_hms_opt(0, 0, 0)).map(|t| t.and_utc()).unwrap_or(now);
    let rows = calls_in(&state, &caller.auth.workspace_id, session.as_ref().map(|s| s.id.as_str()), start.timestamp_millis(), end.timestamp_millis()).await?;
    let currency = session.as_ref().map(|s| s.currency.clone()).unwrap_or_else(|| "USD".into());
    let spent = money(rows.iter().map(|c| cost(c, &currency).1).sum());
    let limit = session.as_ref().and_then(SessionRecord::spend_limit);
    let elapsed = (now - start).num_seconds().max(1) as f64;
    let month = (end - start).num_seconds().max(1) as f64;
    let forecast = money(spent * month / elapsed);
    let risk = match limit {
        Some(l) if forecast > l => "high",
        Some(l) if forecast > 0.8 * l => "medium",
        Some(_) => "low",
        None => "none",
    };
    Ok(Json(json!({
        "current_period": {
            "start": start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "end": (end - chrono::Duration::seconds(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "total_spent": spent,
            "currency": currency,
            "budget_limit": limit,
            "budget_remaining": limit.map(|l| money((l - spent).max(0.0))),
            "utilization_percentage": limit.filter(|l| *l > 0.0).map(|l| money(spent / l * 100.0)),
        },
        "predictions": {
            "estimated_month_end_spend": forecast,
            "over_budget_risk": risk,
            "recommended_top_up": limit.map(|l| money((forecast - l).max(0.0))),
        },
    })))
}
