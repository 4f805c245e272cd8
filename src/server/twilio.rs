//! Twilio: the voice webhook that answers a number with a media stream, status callbacks, the
//! Media Streams socket, and the REST calls that place, transfer and end calls.
//!
//! Every webhook must carry a valid `X-Twilio-Signature` (HMAC-SHA1 of the URL Twilio
//! requested and its sorted form parameters, keyed with the account's auth token), else 403
//! and nothing changes. The socket is accepted only for a stream a signed webhook started: the
//! TwiML carries a one-time token the stream's `start` must give back.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;

use super::runner::Connect;
use super::AppState;
use crate::store::CallRecord;
use crate::transport::stream::{CallControl, Outgoing, StreamLine};
use crate::transport::twilio::{self, Incoming};

/// How Ringline reaches Twilio and Twilio reaches Ringline.
#[derive(Debug, Clone)]
pub struct TwilioConfig {
    pub account_sid: String,
    pub auth_token: String,
    /// Twilio's REST API (a stand-in's address in tests).
    pub api_base: String,
    /// Where Twilio reaches this server (`https://…`, the base of the webhook and stream URLs).
    pub public_url: String,
}

/// Twilio, configured.
pub struct Twilio {
    config: TwilioConfig,
    http: reqwest::Client,
}

/// How long the first message of a stream may take.
const START_WITHIN: Duration = Duration::from_secs(10);

impl Twilio {
    pub fn new(mut config: TwilioConfig) -> anyhow::Result<Twilio> {
        config.public_url = config.public_url.trim_end_matches('/').to_string();
        config.api_base = config.api_base.trim_end_matches('/').to_string();
        for (name, value) in [("--public-url", &config.public_url), ("--twilio-api-base", &config.api_base)] {
            let url = url::Url::parse(value).map_err(|e| anyhow::anyhow!("{name} `{value}` is not a URL ({e}); give e.g. https://voice.example.com"))?;
            anyhow::ensure!(matches!(url.scheme(), "http" | "https"), "{name} `{value}` must be an http:// or https:// URL");
        }
        let http = reqwest::Client::builder().timeout(Duration::from_secs(15)).build()?;
        Ok(Twilio { config, http })
    }

    /// The URL Twilio signed: the public base and the path (and query) it requested.
    fn signed_url(&self, uri: &Uri) -> String {
        format!("{}{}", self.config.public_url, uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
    }

    /// Twilio's signature of a request: base64(HMAC-SHA1(auth token, URL + each sorted
    /// parameter's name and value)).
    pub fn signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
        let mut sorted: Vec<&(String, String)> = params.iter().collect();
        sorted.sort();
        let mut data = url.to_string();
        for (name, value) in sorted {
            data.push_str(name);
            data.push_str(value);
        }
        let digest = super::secrets::hmac(openssl::hash::MessageDigest::sha1(), auth_token.as_bytes(), data.as_bytes());
        base64::engine::general_purpose::STANDARD.encode(digest)
    }

    fn verify(&self, uri: &Uri, params: &[(String, String)], headers: &HeaderMap) -> bool {
        let Some(given) = headers.get("x-twilio-signature").and_then(|v| v.to_str().ok()) else { return false };
        let expected = Self::signature(&self.config.auth_token, &self.signed_url(uri), params);
        given.len() == expected.len() && openssl::memcmp::eq(given.as_bytes(), expected.as_bytes())
    }

    fn stream_url(&self) -> String {
        let base = &self.config.public_url;
        let ws = if let Some(rest) = base.strip_prefix("https://") { format!("wss://{rest}") } else { format!("ws://{}", base.trim_start_matches("http://")) };
        format!("{ws}/twilio/stream")
    }

    fn calls_url(&self) -> String {
        format!("{}/2010-04-01/Accounts/{}/Calls", self.config.api_base, self.config.account_sid)
    }

    /// Places an outbound call; Twilio fetches its TwiML from our voice webhook once it is
    /// answered, and reports its progress to our status callback. Returns the CallSid.
    pub async fn place_call(&self, call: &CallRecord) -> Result<String, String> {
        let base = &self.config.public_url;
        let id = &call.id;
        let form = [
            ("To", call.to_number.clone()),
            ("From", call.from_number.clone()),
            ("Url", format!("{base}/twilio/voice?call_id={id}")),
            ("Method", "POST".into()),
            ("StatusCallback", format!("{base}/twilio/status?call_id={id}")),
            ("StatusCallbackMethod", "POST".into()),
            ("StatusCallbackEvent", "initiated ringing answered completed".into()),
            ("Timeout", "45".into()),
        ];
        let response = self
            .http
            .post(format!("{}.json", self.calls_url()))
            .basic_auth(&self.config.account_sid, Some(&self.config.auth_token))
            .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(form_body(form.iter().map(|(k, v)| (*k, v.as_str()))))
            .send()
            .await
            .map_err(|e| format!("Twilio could not be reached to place the call: {e}"))?;
        let status = response.status();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        if !status.is_success() {
            let message = body.get("message").and_then(|m| m.as_str()).unwrap_or("no message");
            return Err(format!("Twilio refused the call ({status}): {message}"));
        }
        body.get("sid").and_then(|s| s.as_str()).map(str::to_string).ok_or_else(|| "Twilio's answer to placing the call had no sid".to_string())
    }

    /// Changes a live call (`Status=completed` ends it; `Twiml=…` replaces what it does).
    pub async fn update_call(&self, call_sid: &str, form: &[(&str, &str)]) -> Result<(), String> {
        let response = self
            .http
            .post(format!("{}/{call_sid}.json", self.calls_url()))
            .basic_auth(&self.config.account_sid, Some(&self.config.auth_token))
            .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(form_body(form.iter().copied()))
            .send()
            .await
            .map_err(|e| format!("Twilio could not be reached: {e}"))?;
        match response.status() {
            status if status.is_success() => Ok(()),
            status => Err(format!("Twilio refused to update call {call_sid} ({status})")),
        }
    }
}

/// Ends and transfers a live call through Twilio's REST API.
struct RestControl {
    twilio: Arc<Twilio>,
    call_sid: String,
}

impl CallControl for RestControl {
    fn hang_up(&self) {
        let (twilio, sid) = (self.twilio.clone(), self.call_sid.clone());
        tokio::spawn(async move {
            if let Err(error) = twilio.update_call(&sid, &[("Status", "completed")]).await {
                tracing::warn!(%error, call_sid = %sid, "cannot end the Twilio call (closing its stream ends it too)");
            }
        });
    }

    fn transfer(&self, destination: &str, done: tokio_util::sync::CancellationToken) {
        let twiml = format!("<Response><Dial>{}</Dial></Response>", xml_escape(destination));
        let (twilio, sid) = (self.twilio.clone(), self.call_sid.clone());
        tokio::spawn(async move {
            if let Err(error) = twilio.update_call(&sid, &[("Twiml", &twiml)]).await {
                tracing::warn!(%error, call_sid = %sid, "cannot transfer the Twilio call");
            }
            done.cancel();
        });
    }
}

fn form_body<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let mut body = url::form_urlencoded::Serializer::new(String::new());
    for (name, value) in pairs {
        body.append_pair(name, value);
    }
    body.finish()
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&apos;")
}

fn twiml(body: String) -> Response {
    ([(axum::http::header::CONTENT_TYPE, "text/xml")], format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response>{body}</Response>")).into_response()
}

/// TwiML that says `text` and hangs up.
fn say_and_hang_up(text: &str) -> Response {
    twiml(format!("<Say>{}</Say><Hangup/>", xml_escape(text)))
}

fn connect_stream(twilio: &Twilio, call_id: &str, token: &str) -> Response {
    twiml(format!(
        "<Connect><Stream url=\"{}\"><Parameter name=\"call_id\" value=\"{}\"/><Parameter name=\"token\" value=\"{}\"/></Stream></Connect>",
        xml_escape(&twilio.stream_url()),
        xml_escape(call_id),
        xml_escape(token)
    ))
}

fn forbidden() -> Response {
    (StatusCode::FORBIDDEN, "X-Twilio-Signature is missing or does not match this request").into_response()
}

/// The form parameters of a webhook, refused past a size no Twilio webhook reaches.
fn form(body: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(body).into_owned().take(200).collect()
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn query_call_id(uri: &Uri) -> Option<String> {
    url::form_urlencoded::parse(uri.query()?.as_bytes()).find(|(k, _)| k == "call_id").map(|(_, v)| v.into_owned())
}

/// `POST /twilio/voice`: Twilio asks what to do with a call — one we placed (`?call_id=`) that
/// was answered, or an inbound call to one of the workspaces' numbers.
pub async fn voice(State(state): State<AppState>, uri: Uri, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let Some(twilio) = state.twilio.clone() else { return (StatusCode::NOT_FOUND, "Twilio is not configured on this server").into_response() };
    let params = form(&body);
    if !twilio.verify(&uri, &params, &headers) {
        tracing::warn!(path = %uri, "refused a Twilio webhook with a bad signature");
        return forbidden();
    }
    if let Some(call_id) = query_call_id(&uri) {
        return match state.runner.stream_token(&call_id) {
            Some(token) => connect_stream(&twilio, &call_id, &token),
            None => say_and_hang_up("Sorry, this call has ended."),
        };
    }
    match inbound(&state, &params).await {
        Ok((call_id, token)) => connect_stream(&twilio, &call_id, &token),
        Err(message) => say_and_hang_up(&message),
    }
}

/// Starts an inbound call: the number's assistant, a call record, and a stream to wait for.
/// The error is what the caller hears.
async fn inbound(state: &AppState, params: &[(String, String)]) -> Result<(String, String), String> {
    let (to, from) = (param(params, "To").unwrap_or_default(), param(params, "From").unwrap_or_default());
    let metadata = serde_json::json!({ "twilio_call_sid": param(params, "CallSid") });
    let admitted = super::inbound::admit(state, to, from, metadata).await.map_err(|refusal| refusal.message().to_string())?;
    let waiting = state.runner.expect_stream(&admitted.call.id);
    let token = waiting.token.clone();
    let call_id = admitted.call.id.clone();
    state.runner.start(admitted.call, admitted.assistant, admitted.owner, Connect::Twilio(waiting), admitted.record);
    Ok((call_id, token))
}

/// `POST /twilio/status`: Twilio reports a call's progress (`CallStatus`).
pub async fn status(State(state): State<AppState>, uri: Uri, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let Some(twilio) = state.twilio.clone() else { return (StatusCode::NOT_FOUND, "Twilio is not configured on this server").into_response() };
    let params = form(&body);
    if !twilio.verify(&uri, &params, &headers) {
        tracing::warn!(path = %uri, "refused a Twilio status callback with a bad signature");
        return forbidden();
    }
    if let (Some(call_id), Some(status)) = (query_call_id(&uri), param(&params, "CallStatus").and_then(crate::call::CallStatus::from_twilio)) {
        state.runner.provider_status(&call_id, status).await;
    }
    StatusCode::NO_CONTENT.into_response()
}

/// `GET /twilio/stream`: the Media Streams socket.
pub async fn stream(State(state): State<AppState>, ws: WebSocketUpgrade) -> Response {
    if state.twilio.is_none() {
        return (StatusCode::NOT_FOUND, "Twilio is not configured on this server").into_response();
    }
    ws.max_message_size(twilio::MAX_MESSAGE_BYTES).max_frame_size(twilio::MAX_MESSAGE_BYTES).on_upgrade(move |socket| run_stream(socket, state))
}

/// Reads until `start`, hands the line to the call waiting for it, then carries audio both
/// ways until the call ends. A broken message ends this call (failed, with the reason), never
/// another.
async fn run_stream(socket: WebSocket, state: AppState) {
    let (mut sink, mut messages) = socket.split();
    let start = match tokio::time::timeout(START_WITHIN, first_start(&mut messages)).await {
        Ok(Ok(start)) => start,
        Ok(Err(problem)) => {
            tracing::warn!(problem, "refused a Twilio stream before its start");
            let _ = sink.close().await;
            return;
        }
        Err(_) => {
            tracing::warn!("refused a Twilio stream that sent no start within {START_WITHIN:?}");
            let _ = sink.close().await;
            return;
        }
    };
    let (call_id, token) = (start.parameters.get("call_id").cloned().unwrap_or_default(), start.parameters.get("token").cloned().unwrap_or_default());
    let Some(answer) = state.runner.take_stream(&call_id, &token) else {
        tracing::warn!(call = %call_id, "refused a Twilio stream for no call waiting for one (unknown call, wrong or used token)");
        let _ = sink.close().await;
        return;
    };
    let control = state.twilio.clone().filter(|_| !start.call_sid.is_empty()).map(|twilio| Arc::new(RestControl { twilio, call_sid: start.call_sid.clone() }) as Arc<dyn CallControl>);
    let (line, input, outgoing) = StreamLine::start(&start.stream_sid, twilio::RATE, control);
    if !answer.answer(line.clone(), input) {
        line.close();
        let _ = sink.close().await;
        return;
    }
    pump(sink, messages, &line, outgoing, &start.stream_sid).await;
}

/// Carries a started stream both ways until its call ends: Twilio's events to the line, the
/// line's frames, marks and clears to Twilio. A malformed message fails the call.
pub async fn pump(mut sink: SplitSink<WebSocket, Message>, mut messages: SplitStream<WebSocket>, line: &StreamLine, mut outgoing: mpsc::Receiver<Outgoing>, stream_sid: &str) {
    let ended = line.ended();
    loop {
        tokio::select! {
            _ = ended.cancelled() => break,
            Some(message) = outgoing.recv() => {
                let Some(text) = twilio::encode(stream_sid, &message) else { continue };
                if sink.send(Message::Text(text.into())).await.is_err() {
                    line.fail("the Twilio socket closed while sending");
                    break;
                }
            }
            incoming = messages.next() => match incoming {
                Some(Ok(Message::Text(text))) => match twilio::parse(&text) {
                    Ok(Incoming::Start(_)) => {
                        line.fail("Twilio sent a second start on one stream");
                        break;
                    }
                    Ok(event) => twilio::receive(line, event),
                    Err(problem) => {
                        line.fail(&format!("a malformed Twilio message: {problem}"));
                        break;
                    }
                },
                Some(Ok(Message::Binary(_))) => {
                    line.fail("Twilio Media Streams sends text frames; a binary frame arrived");
                    break;
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | None => break,
                Some(Err(error)) => {
                    line.fail(&format!("the Twilio socket failed: {error}"));
                    break;
                }
            },
        }
    }
    // Whatever is still queued for Twilio goes out before the socket closes.
    while let Ok(message) = outgoing.try_recv() {
        let Some(text) = twilio::encode(stream_sid, &message) else { continue };
        if sink.send(Message::Text(text.into())).await.is_err() {
            break;
        }
    }
    line.close();
    let _ = sink.close().await;
}

/// Reads `connected` (optional) and then `start`.
pub async fn first_start(messages: &mut SplitStream<WebSocket>) -> Result<twilio::Start, String> {
    while let Some(message) = messages.next().await {
        match message {
            Ok(Message::Text(text)) => match twilio::parse(&text)? {
                Incoming::Connected => continue,
                Incoming::Start(start) => return Ok(start),
                other => return Err(format!("{other:?} before start")),
            },
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            Ok(_) => return Err("a non-text frame before start".into()),
            Err(error) => return Err(error.to_string()),
        }
    }
    Err("the socket closed before start".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_match_twilios_documented_example() {
        // The example in Twilio's "Webhooks security" documentation.
        let params: Vec<(String, String)> = [("CallSid", "CA1234567890ABCDE"), ("Caller", "+12349013030"), ("Digits", "1234"), ("From", "+12349013030"), ("To", "+18005551212")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let signature = Twilio::signature("12345", "https://mycompany.com/myapp.php?foo=1&bar=2", &params);
        assert_eq!(signature, "0/KCTR6DLpKmkAf8muzZqo1nDgQ=");
    }

    #[test]
    fn twiml_escapes_what_it_embeds() {
        assert_eq!(xml_escape("a<b>&\"c'"), "a&lt;b&gt;&amp;&quot;c&apos;");
    }
}
