//! One error shape for the whole API: `{"error": {"code", "message", "field"}}` with a stable
//! code, and extractors that turn bad JSON or a bad query string into that shape (naming the
//! field) instead of axum's plain-text rejections.

use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::assistant::{join_field, named_field};
use crate::store::StoreError;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
    pub retry_after_s: Option<u64>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `invalid_field`, `not_found`, `rate_limited`, …
    pub code: String,
    pub message: String,
    /// The request field at fault, when there is one.
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), field: None, retry_after_s: None }
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// A field with a wrong value (422).
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", message).with_field(field)
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(what: &str, id: &str) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no {what} `{id}` in this workspace"))
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::CONFLICT, code, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        tracing::error!(%error, "storage failed");
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable", "the database did not answer; retry shortly")
    }
}

/// The longest message an error carries: inputs quoted in messages are cut, never echoed whole.
const MAX_MESSAGE_CHARS: usize = 600;

fn clipped(message: String) -> String {
    match message.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((end, _)) => format!("{}… (cut)", &message[..end]),
        None => message,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let field = self.field.map(|f| if f.len() > 200 { format!("{}…", &f[..f.char_indices().nth(200).map_or(f.len(), |(i, _)| i)]) } else { f });
        let body = ErrorBody { error: ErrorDetail { code: self.code.to_string(), message: clipped(self.message), field } };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after_s {
            response.headers_mut().insert("retry-after", HeaderValue::from(seconds));
        }
        response
    }
}

/// A JSON body whose errors name the field: `{"error": {"code": "invalid_json", "field": "to_number"}}`.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = match axum::body::Bytes::from_request(request, state).await {
            Ok(bytes) => bytes,
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", format!("the body is larger than {} KB", super::MAX_BODY_BYTES / 1024)))
            }
            Err(e) => return Err(ApiError::bad_request("invalid_body", format!("cannot read the body: {e}"))),
        };
        parse_json(&bytes).map(ApiJson)
    }
}

/// Parses JSON, naming the field at fault in any error.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::bad_request("invalid_json", "the body is empty; send a JSON object"));
    }
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| ApiError::bad_request("invalid_json", format!("the body is not JSON: {e}")))?;
    if let Some((field, found)) = control_character(&value, "") {
        return Err(control_character_error(&field, found));
    }
    from_value_at("", value)
}

/// A part of a body (`value`, found at `at`: `contacts`, or "" for the whole) as `T`, naming
/// the field at fault from the body's top.
pub fn from_value_at<T: DeserializeOwned>(at: &str, value: serde_json::Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let message = e.inner().to_string();
        let inner = join_field(&path, named_field(&message));
        let field = match inner.as_str() {
            _ if at.is_empty() => inner.clone(),
            "." | "" => at.to_string(),
            rest if rest.starts_with('[') => format!("{at}{rest}"),
            rest => format!("{at}.{rest}"),
        };
        let code = if message.starts_with("missing field") { "missing_field" } else { "invalid_field" };
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, format!("{field}: {message}")).with_field(field)
    })
}


/// A query string whose errors are the API's shape.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state).await.map(|q| ApiQuery(q.0)).map_err(|e: QueryRejection| {
            let text = e.body_text();
            let field = named_field(&text).or_else(|| text.split(": ").nth(1).map(|s| s.split_whitespace().next().unwrap_or("").to_string()));
            let mut error = ApiError::bad_request("invalid_query", text);
            error.field = field.filter(|f| !f.is_empty());
            error
        })
    }
}

/// Characters no text field may hold: C0 controls but tab, newline and carriage return, and
/// DEL. (PostgreSQL cannot store NUL at all; the others are never meant.)
fn is_forbidden(c: char) -> bool {
    (c.is_control() && !matches!(c, '\t' | '\n' | '\r') && (c as u32) < 0x80) || c == '\u{7f}'
}

/// The first string (or key) in `value` holding a forbidden character: its field path and
/// the character.
pub fn control_character(value: &serde_json::Value, path: &str) -> Option<(String, char)> {
    use serde_json::Value;
    let join = |key: &str| if path.is_empty() { key.to_string() } else { format!("{path}.{key}") };
    match value {
        Value::String(text) => text.chars().find(|c| is_forbidden(*c)).map(|c| (if path.is_empty() { "body".to_string() } else { path.to_string() }, c)),
        Value::Array(items) => items.iter().enumerate().find_map(|(i, item)| control_character(item, &join(&i.to_string()))),
        Value::Object(map) => map.iter().find_map(|(key, item)| match key.chars().find(|c| is_forbidden(*c)) {
            Some(c) => Some((join(&key.escape_default().to_string()), c)),
            None => control_character(item, &join(key)),
        }),
        _ => None,
    }
}

fn control_character_error(field: &str, found: char) -> ApiError {
    ApiError::invalid(field, format!("{field} contains the control character U+{:04X}; remove it (text fields take no control characters but tab and newlines)", found as u32))
        .with_code("invalid_characters")
}

impl ApiError {
    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = code;
        self
    }
}

/// The most headers, and header bytes, a request may bring. Below the HTTP server's own
/// limits (100 headers, ~400 KB), so that a request past ours gets the error shape.
const MAX_HEADERS: usize = 64;
const MAX_HEADER_BYTES: usize = 32 * 1024;

/// A percent-encoded control character (`%00`..`%1F`, `%7F`) in a path or query string.
fn encoded_control(text: &str) -> Option<char> {
    let bytes = text.as_bytes();
    (0..bytes.len().saturating_sub(2)).find_map(|i| {
        if bytes[i] != b'%' {
            return None;
        }
        let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
        let byte = u8::from_str_radix(hex, 16).ok()?;
        (byte < 0x20 || byte == 0x7f).then_some(byte as char).filter(|c| is_forbidden(*c))
    })
}

/// Middleware: every answer of the API is in the one error shape. Requests whose path or
/// query holds an encoded control character are refused before routing (422 naming where);
/// error responses made outside the handlers (axum's 404/405, the body limit's 413, a path
/// that does not parse) are rewritten into `{"error": …}`, with their headers kept.
pub async fn uniform_errors(request: Request, next: axum::middleware::Next) -> Response {
    let headers = request.headers();
    let header_bytes: usize = headers.iter().map(|(name, value)| name.as_str().len() + value.len() + 4).sum();
    if headers.len() > MAX_HEADERS || header_bytes > MAX_HEADER_BYTES {
        return ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!("{} headers, {} bytes: the most is {MAX_HEADERS} headers and {} KB", headers.len(), header_bytes, MAX_HEADER_BYTES / 1024),
        )
        .into_response();
    }
    let uri = request.uri();
    if let Some(found) = encoded_control(uri.path()) {
        return control_character_error("path", found).into_response();
    }
    if let Some(query) = uri.query() {
        for pair in query.split('&') {
            if let Some(found) = encoded_control(pair) {
                let name = pair.split('=').next().unwrap_or("query");
                let name = if encoded_control(name).is_some() { "query" } else { name };
                return control_character_error(name, found).into_response();
            }
        }
    }
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response.headers().get(axum::http::header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.map(|b| String::from_utf8_lossy(&b).trim().to_string()).unwrap_or_default();
    let (code, default_message) = match status {
        StatusCode::NOT_FOUND => ("no_route", "no such path; see GET /v1/openapi.json"),
        StatusCode::METHOD_NOT_ALLOWED => ("method_not_allowed", "this path does not take that method"),
        StatusCode::PAYLOAD_TOO_LARGE => ("payload_too_large", "the body is too large"),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => ("headers_too_large", "the request's headers are too large"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ("unsupported_media_type", "send the body as application/json"),
        StatusCode::BAD_REQUEST => ("invalid_request", "the request is malformed"),
        _ if status.is_server_error() => ("internal", "the server failed; retry shortly"),
        _ => ("invalid_request", "the request was refused"),
    };
    let message = if text.is_empty() || status.is_server_error() { default_message.to_string() } else { text };
    let mut rewritten = ApiError::new(status, code, message).into_response();
    for (name, value) in parts.headers.iter() {
        if name != axum::http::header::CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
            rewritten.headers_mut().insert(name.clone(), value.clone());
        }
    }
    rewritten
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_found_with_their_field() {
        let body = serde_json::json!({ "name": "ok\nfine\ttoo", "metadata": { "tags": ["a", "b\u{0}c"] } });
        assert_eq!(control_character(&body, ""), Some(("metadata.tags.1".to_string(), '\0')));
        assert_eq!(control_character(&serde_json::json!({ "a\u{1}": 1 }), "").map(|f| f.1), Some('\u{1}'));
        assert_eq!(control_character(&serde_json::json!({ "text": "Ünïcode ☎ fine\r\n" }), ""), None);
        assert_eq!(encoded_control("/v1/calls/abc%00"), Some('\0'));
        assert_eq!(encoded_control("/v1/calls/abc%2F%7f"), Some('\u{7f}'));
        assert_eq!(encoded_control("/v1/calls/a%20b"), None);
    }

    #[test]
    fn long_messages_are_cut() {
        let message = clipped("x".repeat(100_000));
        assert!(message.len() < 700, "{}", message.len());
    }

    // Fuzzing: any body, to every endpoint's body type, gives a value or an error in the
    // documented shape (a 4xx with a code and a message); none panics.
    mod fuzz {
        use super::*;
        use proptest::prelude::*;
        use serde_json::Value;

        /// JSON built from the API's own field names, so the parser gets past the outer layer.
        fn json_value() -> impl Strategy<Value = Value> {
            let names = prop::sample::select(vec![
                "assistant_id", "to_number", "from_number", "dynamic_variables", "metadata", "sandbox_caller", "lines", "say", "voice",
                "idempotency_key", "webhook_url", "action", "digits", "reason", "number", "country", "label", "name", "value", "dtmf",
            ]);
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
                ".{0,40}".prop_map(Value::from),
                prop::sample::select(vec!["+15005550006", "dtmf", "hangup", "transfer", "luigis_booking", "GB", "1#", "\u{0}"]).prop_map(Value::from),
            ];
            leaf.prop_recursive(4, 48, 6, move |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..5).prop_map(Value::from),
                    prop::collection::btree_map(names.clone(), inner, 0..6).prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())),
                ]
            })
        }

        fn check<T: serde::de::DeserializeOwned>(bytes: &[u8]) {
            if let Err(error) = parse_json::<T>(bytes) {
                assert!(error.status.is_client_error(), "{error:?}");
                assert!(!error.code.is_empty() && !error.message.is_empty(), "{error:?}");
                let response = error.into_response();
                assert!(response.status().is_client_error());
            }
        }

        fn every_body(bytes: &[u8]) {
            check::<crate::server::calls::OutboundRequest>(bytes);
            check::<crate::server::calls::ActionRequest>(bytes);
            check::<crate::server::calls::EndRequest>(bytes);
            check::<crate::server::numbers::ValidateRequest>(bytes);
            check::<crate::server::numbers::AddNumberRequest>(bytes);
            check::<crate::server::numbers::AssignRequest>(bytes);
            check::<crate::server::secrets::CreateSecret>(bytes);
            check::<Value>(bytes);
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(300))]

            #[test]
            fn any_json_body_is_accepted_or_refused_in_the_error_shape(value in json_value()) {
                every_body(value.to_string().as_bytes());
                if let Ok(request) = serde_json::from_value::<crate::server::calls::OutboundRequest>(value.clone()) {
                    // What the handler checks next must not panic either.
                    let _ = crate::server::numbers::describe(&request.to_number, None);
                    if let Some(script) = request.metadata.get("sandbox_caller") {
                        if let Ok(script) = serde_json::from_value::<crate::simulation::CallerScript>(script.clone()) {
                            let _ = script.problems();
                        }
                    }
                }
            }

            #[test]
            fn any_bytes_are_refused_in_the_error_shape(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
                every_body(&bytes);
            }

            #[test]
            fn any_text_as_a_phone_number_is_described_or_refused(text in ".{0,40}") {
                let info = crate::server::numbers::describe(&text, None);
                prop_assert!(info.valid || info.reason.is_some());
            }
        }
    }
}
