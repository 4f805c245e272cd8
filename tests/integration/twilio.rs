//! Phone calls through Twilio, end to end: `ringline serve` against a loopback stand-in for
//! Twilio that speaks its documented protocols — webhooks signed as Twilio signs them
//! (HMAC-SHA1 of the URL and sorted parameters), TwiML, the REST API's Calls resource, and the
//! Media Streams WebSocket (base64 μ-law at 8 kHz in 20 ms frames, marks, DTMF, `clear`).
//! The caller is a recording of human speech, resampled and μ-law encoded here; what the
//! agent said is checked by transcribing its audio back.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::api::{create_key, get, post, wait_for, Database, Serve};
use crate::standin::{self, Reply, Response, Server};
use crate::support::{models_dir, ringline, run_ok, word_recall};

const ACCOUNT: &str = "AC00000000000000000000000000000001";
const AUTH_TOKEN: &str = "twilio-test-auth-token";
const NUMBER: &str = "+14155552671";
const CALLER: &str = "+14155552672";
/// The stand-in answers a call to this number with `busy`.
const BUSY: &str = "+14155552673";
/// The stand-in lets a call to this number ring and ring.
const NEVER: &str = "+14155552674";
/// Human speech (Debian's pocketsphinx-testdata): "eight of spades four of clubs seven of hearts".
const CARDS: &str = "/usr/share/pocketsphinx/test/data/cards/005.wav";

/// Signs as Twilio does: base64(HMAC-SHA1(auth token, URL + sorted name/value pairs)).
fn twilio_signature(url: &str, params: &BTreeMap<String, String>) -> String {
    let mut data = url.to_string();
    for (name, value) in params {
        data.push_str(name);
        data.push_str(value);
    }
    let key = openssl::pkey::PKey::hmac(AUTH_TOKEN.as_bytes()).unwrap();
    let mut signer = openssl::sign::Signer::new(openssl::hash::MessageDigest::sha1(), &key).unwrap();
    signer.update(data.as_bytes()).unwrap();
    base64::engine::general_purpose::STANDARD.encode(signer.sign_to_vec().unwrap())
}

/// A webhook from "Twilio": (status, body).
fn webhook(url: &str, params: &[(&str, &str)], signature: Option<String>) -> (u16, String) {
    let params: BTreeMap<String, String> = params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let signature = signature.unwrap_or_else(|| twilio_signature(url, &params));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let response = reqwest::Client::new().post(url).header("X-Twilio-Signature", signature)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(url::form_urlencoded::Serializer::new(String::new()).extend_pairs(&params).finish())
            .timeout(Duration::from_secs(20)).send().await.expect("the server answers");
        (response.status().as_u16(), response.text().await.unwrap())
    })
}

/// The `<Stream url>` and its `<Parameter>`s from TwiML.
fn stream_of(twiml: &str) -> Option<(String, BTreeMap<String, String>)> {
    let url = regex::Regex::new(r#"<Stream url="([^"]+)""#).unwrap().captures(twiml)?.get(1)?.as_str().to_string();
    let parameters = regex::Regex::new(r#"<Parameter name="([^"]+)" value="([^"]+)"/>"#)
        .unwrap()
        .captures_iter(twiml)
        .map(|c| (c[1].to_string(), c[2].to_string()))
        .collect();
    Some((url, parameters))
}

/// The caller's recording as Twilio carries it: 8 kHz μ-law.
fn caller_speech() -> Vec<u8> {
    let audio = ringline::audio::decode::decode_file(Path::new(CARDS)).expect("the recording decodes");
    let audio = audio.to_rate(8_000).unwrap();
    ringline::audio::g711::encode_mulaw(&audio.samples)
}

/// What the far end of a media stream saw.
#[derive(Default, Debug)]
struct Session {
    /// Agent audio received before the barge-in's `clear`, and after it.
    before_clear: Vec<u8>,
    after_clear: Vec<u8>,
    clears: usize,
    marks: Vec<String>,
    /// The server closed the socket (the agent hung up).
    closed_by_server: bool,
}

/// How the stand-in's caller behaves on the stream.
#[derive(Clone, Copy)]
struct Plan {
    /// Speak this long after the agent's first audio (a barge-in during its greeting), or
    /// after the greeting has finished when `None`.
    barge_in_after: Option<Duration>,
    /// Press this key once the agent has answered.
    dtmf: Option<char>,
    /// Hang up (send `stop`) this long after the last agent audio; `None`: wait for the
    /// server to end the call.
    hang_up_after_quiet: Option<Duration>,
}

/// Plays a Media Streams session in real time: `connected`, `start`, a 20 ms μ-law frame a
/// tick (the recording when the plan says, silence otherwise), DTMF, and `stop`.
async fn media_session(url: &str, parameters: &BTreeMap<String, String>, call_sid: &str, plan: Plan) -> Session {
    let (socket, _) = tokio_tungstenite::connect_async(url).await.expect("the stream socket opens");
    let (mut sink, mut incoming) = socket.split();
    let stream_sid = "MZ00000000000000000000000000000001";
    sink.send(Message::text(json!({ "event": "connected", "protocol": "Call", "version": "1.0.0" }).to_string())).await.unwrap();
    let start = json!({
        "event": "start", "sequenceNumber": "1", "streamSid": stream_sid,
        "start": { "accountSid": ACCOUNT, "streamSid": stream_sid, "callSid": call_sid, "tracks": ["inbound"],
                   "mediaFormat": { "encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1 }, "customParameters": parameters }
    });
    sink.send(Message::text(start.to_string())).await.unwrap();

    let speech = caller_speech();
    let mut session = Session::default();
    let mut to_say: std::collections::VecDeque<u8> = Default::default();
    let mut first_agent_audio: Option<Instant> = None;
    let mut last_agent_audio: Option<Instant> = None;
    let mut spoke_at: Option<Instant> = None;
    let mut pressed = false;
    let mut sequence = 2u64;
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let now = Instant::now();
                assert!(now - started < Duration::from_secs(90), "the media session ran past 90 s: {session:?}");
                let quiet_for = last_agent_audio.map(|t| now - t);
                if spoke_at.is_none() {
                    let due = match plan.barge_in_after {
                        Some(after) => first_agent_audio.is_some_and(|t| now - t >= after),
                        None => quiet_for.is_some_and(|q| q >= Duration::from_millis(800)),
                    };
                    if due {
                        to_say.extend(&speech);
                        spoke_at = Some(now);
                    }
                }
                let answered = spoke_at.is_some() && to_say.is_empty() && !session.after_clear.is_empty() && quiet_for.is_some_and(|q| q >= Duration::from_millis(1500));
                if let (Some(key), false, true) = (plan.dtmf, pressed, answered) {
                    pressed = true;
                    let dtmf = json!({ "event": "dtmf", "streamSid": stream_sid, "sequenceNumber": sequence.to_string(), "dtmf": { "track": "inbound_track", "digit": key.to_string() } });
                    sink.send(Message::text(dtmf.to_string())).await.unwrap();
                    sequence += 1;
                    // Let the agent answer the key too.
                    last_agent_audio = Some(now + Duration::from_secs(3));
                    continue;
                }
                if let Some(quiet) = plan.hang_up_after_quiet {
                    if answered && (pressed || plan.dtmf.is_none()) && quiet_for.is_some_and(|q| q >= quiet) {
                        let stop = json!({ "event": "stop", "streamSid": stream_sid, "sequenceNumber": sequence.to_string(), "stop": { "accountSid": ACCOUNT, "callSid": call_sid } });
                        let _ = sink.send(Message::text(stop.to_string())).await;
                        let _ = sink.close().await;
                        return session;
                    }
                }
                let frame: Vec<u8> = (0..160).map(|_| to_say.pop_front().unwrap_or(0xFF)).collect();
                let media = json!({ "event": "media", "streamSid": stream_sid, "sequenceNumber": sequence.to_string(),
                    "media": { "track": "inbound", "chunk": sequence.to_string(), "timestamp": (now - started).as_millis().to_string(),
                               "payload": base64::engine::general_purpose::STANDARD.encode(&frame) } });
                sequence += 1;
                if sink.send(Message::text(media.to_string())).await.is_err() {
                    session.closed_by_server = true;
                    return session;
                }
            }
            message = incoming.next() => {
                let Some(Ok(message)) = message else {
                    session.closed_by_server = true;
                    return session;
                };
                let Message::Text(text) = message else {
                    if let Message::Close(_) = message {
                        session.closed_by_server = true;
                        return session;
                    }
                    continue;
                };
                let event: Value = serde_json::from_str(&text).expect("the server sends JSON");
                assert_eq!(event["streamSid"], stream_sid, "every message names the stream: {event}");
                match event["event"].as_str() {
                    Some("media") => {
                        let bytes = base64::engine::general_purpose::STANDARD.decode(event["media"]["payload"].as_str().unwrap()).unwrap();
                        assert_eq!(bytes.len(), 160, "agent audio comes in 20 ms μ-law frames");
                        let now = Instant::now();
                        first_agent_audio.get_or_insert(now);
                        last_agent_audio = Some(now);
                        if session.clears == 0 { session.before_clear.extend(bytes) } else { session.after_clear.extend(bytes) }
                    }
                    Some("mark") => session.marks.push(event["mark"]["name"].as_str().unwrap().to_string()),
                    Some("clear") => session.clears += 1,
                    other => panic!("the server sent an event Twilio does not know: {other:?} in {event}"),
                }
            }
        }
    }
}

/// Transcribes 8 kHz μ-law with the local recognizer.
pub fn transcribe(mulaw: &[u8], dir: &Path, name: &str) -> String {
    let path = dir.join(format!("{name}.wav"));
    ringline::audio::Audio::new(ringline::audio::g711::decode_mulaw(mulaw), 8_000).write_wav(&path).unwrap();
    let stdout = run_ok(ringline().arg("transcribe").arg("--json").arg(&path).env("RINGLINE_MODELS_DIR", models_dir()));
    let record: Value = serde_json::from_str(stdout.lines().next().unwrap_or("{}")).unwrap();
    record["text"].as_str().unwrap_or_default().to_string()
}

pub fn assistant(llm: &Server) -> Value {
    json!({
        "version": 1,
        "name": "Hardware shop line",
        "system_prompt": "You answer the phone for a hardware shop.",
        "first_message": "Hello, thank you for calling the hardware shop. We are open every day of the week. How can I help you today?",
        "llm": { "provider": "openai", "base_url": llm.url("/v1"), "model": "standin" },
        "tools": ["end_call"],
        "turn": { "idle_reprompt_s": 30, "idle_hangup_s": 60, "max_duration_s": 120 }
    })
}

/// The stand-in's REST API: creating a call (`Calls.json`) answers with a sid and then plays
/// the call from Twilio's side on a thread; updating one (`Calls/{sid}.json`) is recorded.
fn rest_standin(plan: Plan) -> (Server, Arc<Mutex<Vec<Session>>>) {
    let sessions = Arc::new(Mutex::new(Vec::new()));
    let kept = sessions.clone();
    let created = Arc::new(Mutex::new(0usize));
    let server = Server::start(move |_, body| {
        let raw = body["raw"].as_str().unwrap_or_default().to_string();
        let form: BTreeMap<String, String> = url::form_urlencoded::parse(raw.as_bytes()).into_owned().collect();
        if form.contains_key("Url") {
            let sid = {
                let mut n = created.lock().unwrap();
                *n += 1;
                format!("CA{:032}", *n)
            };
            let (sessions, call_sid) = (kept.clone(), sid.clone());
            let body = json!({ "sid": sid, "status": "queued", "account_sid": ACCOUNT, "to": form.get("To"), "from": form.get("From") });
            std::thread::spawn(move || {
                let callback = form["StatusCallback"].clone();
                let status = |status: &str| webhook(&callback, &[("CallSid", &call_sid), ("AccountSid", ACCOUNT), ("CallStatus", status), ("To", &form["To"]), ("From", &form["From"])], None);
                assert_eq!(status("initiated").0, 204);
                assert_eq!(status("ringing").0, 204);
                if form["To"] == BUSY {
                    assert_eq!(status("busy").0, 204);
                    return;
                }
                if form["To"] == NEVER {
                    return;
                }
                let params = [("CallSid", call_sid.as_str()), ("AccountSid", ACCOUNT), ("CallStatus", "in-progress"), ("Direction", "outbound-api"), ("To", &form["To"]), ("From", &form["From"])];
                let (code, twiml) = webhook(&form["Url"], &params, None);
                assert_eq!(code, 200, "{twiml}");
                let (url, parameters) = stream_of(&twiml).unwrap_or_else(|| panic!("the answer connects a stream: {twiml}"));
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                let session = runtime.block_on(media_session(&url, &parameters, &call_sid, plan));
                sessions.lock().unwrap().push(session);
                assert_eq!(status("completed").0, 204);
            });
            return Response { status: 201, content_type: "application/json", body: body.to_string().into_bytes(), delay: Duration::ZERO };
        }
        Response { status: 200, content_type: "application/json", body: b"{}".to_vec(), delay: Duration::ZERO }
    });
    (server, sessions)
}

fn serve_with_twilio(db: &Database, rest: &Server) -> Serve {
    Serve::start(db, &crate::api::repo_assistants(), &[("TWILIO_ACCOUNT_SID", ACCOUNT), ("TWILIO_AUTH_TOKEN", AUTH_TOKEN), ("RINGLINE_TWILIO_API_BASE", &rest.url(""))])
}

fn history_total(serve: &Serve, key: &str) -> i64 {
    let (status, history) = get(serve, key, "/v1/calls/history");
    assert_eq!(status, 200, "{history}");
    history["total"].as_i64().unwrap_or(-1)
}

#[test]
fn an_inbound_twilio_call_is_answered_heard_interrupted_and_keyed() {
    let llm = standin::llm(vec![Reply::Text("We open at nine in the morning."), Reply::Text("You pressed five. Thank you."), Reply::Text("The caller asked about opening hours.")]);
    let (rest, _) = rest_standin(Plan { barge_in_after: None, dtmf: None, hang_up_after_quiet: None });
    let db = Database::sqlite();
    let key = create_key(&db, "shop", &[]);
    let serve = serve_with_twilio(&db, &rest);
    let (status, created) = post(&serve, &key, "/v1/assistants", assistant(&llm));
    assert_eq!(status, 201, "{created}");
    let (status, number) = post(&serve, &key, "/v1/numbers", json!({ "number": NUMBER, "assistant_id": created["id"] }));
    assert_eq!(status, 201, "{number}");
    let voice = serve.url("/twilio/voice");
    let call_sid = "CA00000000000000000000000000000042";
    let params = [("CallSid", call_sid), ("AccountSid", ACCOUNT), ("From", CALLER), ("To", NUMBER), ("CallStatus", "ringing"), ("Direction", "inbound")];

    // A forged or missing signature changes nothing.
    let (status, _) = webhook(&voice, &params, Some("bm90IGEgc2lnbmF0dXJl".into()));
    assert_eq!(status, 403);
    let tampered = [("CallSid", call_sid), ("AccountSid", ACCOUNT), ("From", CALLER), ("To", NUMBER), ("CallStatus", "ringing"), ("Direction", "inbound")];
    let mut signed: BTreeMap<String, String> = tampered.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let signature = twilio_signature(&voice, &signed);
    signed.insert("To".into(), "+14155559999".into());
    let (status, _) = webhook(&voice, &[("CallSid", call_sid), ("AccountSid", ACCOUNT), ("From", CALLER), ("To", "+14155559999"), ("CallStatus", "ringing"), ("Direction", "inbound")], Some(signature));
    assert_eq!(status, 403, "a signature covers the parameters");
    assert_eq!(history_total(&serve, &key), 0, "no call was created by an unsigned webhook");

    // A number nobody answers gets a polite message and a hang-up.
    let (status, twiml) = webhook(&voice, &[("CallSid", "CA1"), ("AccountSid", ACCOUNT), ("From", CALLER), ("To", "+14155550199")], None);
    assert_eq!(status, 200);
    assert!(twiml.contains("<Say>") && twiml.contains("<Hangup/>") && !twiml.contains("<Stream"), "{twiml}");

    let (status, twiml) = webhook(&voice, &params, None);
    assert_eq!(status, 200, "{twiml}");
    let (url, parameters) = stream_of(&twiml).unwrap_or_else(|| panic!("the answer connects a stream: {twiml}"));
    assert!(url.starts_with("ws://127.0.0.1:") && url.ends_with("/twilio/stream"), "{url}");
    let call_id = parameters["call_id"].clone();

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    // A stream with a wrong token is refused, and the call still waits for its own.
    let mut forged = parameters.clone();
    forged.insert("token".into(), "0".repeat(48));
    let refused = runtime.block_on(async {
        let (socket, _) = tokio_tungstenite::connect_async(url.as_str()).await.unwrap();
        let (mut sink, mut incoming) = socket.split();
        let start = json!({ "event": "start", "streamSid": "MZ1", "start": { "streamSid": "MZ1", "callSid": call_sid, "customParameters": forged,
            "mediaFormat": { "encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1 } } });
        sink.send(Message::text(start.to_string())).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), async { while let Some(Ok(message)) = incoming.next().await { if let Message::Close(_) = message { break } } }).await.is_ok()
    });
    assert!(refused, "a stream with a forged token is closed");

    let session = runtime.block_on(media_session(&url, &parameters, call_sid, Plan { barge_in_after: Some(Duration::from_millis(1500)), dtmf: Some('5'), hang_up_after_quiet: Some(Duration::from_secs(2)) }));
    let done = wait_for(&serve, &key, &call_id, Duration::from_secs(60), crate::api::ended);
    assert_eq!(done["status"], "completed", "{done}");

    // The caller heard the greeting, cut off by the barge-in: Twilio was told to drop its buffer.
    assert!(session.clears >= 1, "a barge-in sends `clear`: {session:?}");
    let dir = tempfile::tempdir().unwrap();
    let greeting = transcribe(&session.before_clear, dir.path(), "greeting");
    assert!(word_recall("thank you for calling the hardware shop", &greeting) >= 0.6, "the greeting as heard: {greeting:?}");
    assert!(session.before_clear.len() < 8_000 * 5, "the greeting stopped at the barge-in, not after all of it");
    let reply = transcribe(&session.after_clear, dir.path(), "reply");
    assert!(reply.to_lowercase().contains("nine") || reply.contains('9'), "the agent's answer as heard: {reply:?}");
    assert!(session.marks.iter().any(|m| m.starts_with("segment-")), "a mark follows each segment: {:?}", session.marks);

    // What the assistant heard: the recorded words, and the key.
    let (_, transcript) = get(&serve, &key, &format!("/v1/calls/{call_id}/transcript"));
    let lines = transcript["transcript"].as_array().cloned().unwrap_or_default();
    let caller: Vec<String> = lines.iter().filter(|l| l["speaker"] == "caller").map(|l| l["text"].as_str().unwrap_or_default().to_string()).collect();
    let heard = caller.join(" ");
    assert!(word_recall("eight of spades four of clubs seven of hearts", &heard) >= 0.5, "the caller as heard: {heard:?} ({transcript})");
    assert!(caller.iter().any(|l| l.contains("DTMF 5")), "the key reached the call: {caller:?}");
    assert!(llm.requests().iter().any(|r| r.to_string().contains("pressed 5")), "the key reached the LLM");

    let (_, detail) = get(&serve, &key, &format!("/v1/calls/{call_id}"));
    assert_eq!((detail["direction"].as_str(), detail["from_number"].as_str(), detail["to_number"].as_str()), (Some("inbound"), Some(CALLER), Some(NUMBER)), "{detail}");

    // The used token cannot start a second stream.
    let again = runtime.block_on(async {
        let (socket, _) = tokio_tungstenite::connect_async(url.as_str()).await.unwrap();
        let (mut sink, mut incoming) = socket.split();
        let start = json!({ "event": "start", "streamSid": "MZ2", "start": { "streamSid": "MZ2", "callSid": call_sid, "customParameters": parameters } });
        sink.send(Message::text(start.to_string())).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), async { while let Some(Ok(message)) = incoming.next().await { if let Message::Close(_) = message { break } } }).await.is_ok()
    });
    assert!(again, "a used token is refused");
}

#[test]
fn an_outbound_call_goes_through_twilios_rest_api_and_its_status_callbacks() {
    let llm = standin::llm(vec![
        Reply::Tool { text: "We open at nine in the morning. Goodbye.", name: "end_call", arguments: r#"{"reason":"answered"}"# },
        Reply::Text("The caller asked about opening hours."),
    ]);
    let (rest, sessions) = rest_standin(Plan { barge_in_after: None, dtmf: None, hang_up_after_quiet: None });
    let db = Database::sqlite();
    let key = create_key(&db, "shop", &[]);
    let serve = serve_with_twilio(&db, &rest);
    let (_, created) = post(&serve, &key, "/v1/assistants", assistant(&llm));
    let (status, number) = post(&serve, &key, "/v1/numbers", json!({ "number": NUMBER, "assistant_id": created["id"] }));
    assert_eq!(status, 201, "{number}");

    let (status, validated) = post(&serve, &key, "/v1/numbers/validate", json!({ "number": CALLER }));
    assert_eq!((status, validated["callable"].as_bool()), (200, Some(true)), "with Twilio configured a real number is callable: {validated}");

    let (status, call) = post(&serve, &key, "/v1/calls/outbound", json!({ "assistant_id": created["id"], "to_number": CALLER, "from_number": NUMBER }));
    assert_eq!(status, 201, "{call}");
    let id = call["call_id"].as_str().unwrap().to_string();
    let done = wait_for(&serve, &key, &id, Duration::from_secs(90), crate::api::ended);
    assert_eq!(done["status"], "completed", "{done}");

    let heads = rest.heads();
    let create = heads.iter().find(|h| h.starts_with(&format!("POST /2010-04-01/Accounts/{ACCOUNT}/Calls.json"))).unwrap_or_else(|| panic!("the call was placed through the REST API: {heads:?}"));
    assert!(create.to_ascii_lowercase().contains("authorization: basic"), "with the account's credentials: {create}");
    assert!(heads.iter().any(|h| h.starts_with(&format!("POST /2010-04-01/Accounts/{ACCOUNT}/Calls/CA"))), "end_call ended the call through the REST API: {heads:?}");
    let session = {
        let started = Instant::now();
        loop {
            if let Some(session) = sessions.lock().unwrap().pop() {
                break session;
            }
            assert!(started.elapsed() < Duration::from_secs(20), "the stand-in's media session did not finish");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    assert!(session.closed_by_server, "the agent's end_call closed the stream");
    let dir = tempfile::tempdir().unwrap();
    let said = transcribe(&session.after_clear, dir.path(), "outbound").to_lowercase() + &transcribe(&session.before_clear, dir.path(), "greeting").to_lowercase();
    assert!(said.contains("nine") || said.contains('9'), "the agent's answer as heard: {said:?}");
    let (_, detail) = get(&serve, &key, &format!("/v1/calls/{id}"));
    assert_eq!(detail["direction"], "outbound");

    // A busy line, as Twilio's status callback reports it.
    let (status, call) = post(&serve, &key, "/v1/calls/outbound", json!({ "assistant_id": created["id"], "to_number": BUSY, "from_number": NUMBER }));
    assert_eq!(status, 201, "{call}");
    let id = call["call_id"].as_str().unwrap().to_string();
    let done = wait_for(&serve, &key, &id, Duration::from_secs(30), crate::api::ended);
    assert_eq!(done["status"], "busy", "{done}");
}

#[test]
fn a_malformed_stream_fails_its_call_only() {
    let llm = standin::llm(vec![Reply::Text("Sure.")]);
    let (rest, _) = rest_standin(Plan { barge_in_after: None, dtmf: None, hang_up_after_quiet: None });
    let db = Database::sqlite();
    let key = create_key(&db, "shop", &[]);
    let serve = serve_with_twilio(&db, &rest);
    let (_, created) = post(&serve, &key, "/v1/assistants", assistant(&llm));
    post(&serve, &key, "/v1/numbers", json!({ "number": NUMBER, "assistant_id": created["id"] }));
    let voice = serve.url("/twilio/voice");
    let (_, twiml) = webhook(&voice, &[("CallSid", "CA7"), ("AccountSid", ACCOUNT), ("From", CALLER), ("To", NUMBER)], None);
    let (url, parameters) = stream_of(&twiml).unwrap();
    let call_id = parameters["call_id"].clone();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let (socket, _) = tokio_tungstenite::connect_async(url.as_str()).await.unwrap();
        let (mut sink, mut incoming) = socket.split();
        let start = json!({ "event": "start", "streamSid": "MZ7", "start": { "streamSid": "MZ7", "callSid": "CA7", "customParameters": parameters,
            "mediaFormat": { "encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1 } } });
        sink.send(Message::text(start.to_string())).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        sink.send(Message::text(r#"{"event":"media","streamSid":"MZ7","media":{"payload":"%%% not base64 %%%"}}"#)).await.unwrap();
        let closed = tokio::time::timeout(Duration::from_secs(10), async { while let Some(Ok(message)) = incoming.next().await { if let Message::Close(_) = message { break } } }).await;
        assert!(closed.is_ok(), "the server ends a stream that sends garbage");
    });
    let done = wait_for(&serve, &key, &call_id, Duration::from_secs(30), crate::api::ended);
    assert_eq!(done["status"], "failed", "{done}");
    let reason = done["reason"].as_str().unwrap_or_default().to_string();
    assert!(reason.contains("base64"), "the reason names what was wrong: {done}");
    // The server carries on: a health check and the API still answer.
    let (status, _) = get(&serve, &key, "/v1/workspace");
    assert_eq!(status, 200);
}

#[test]
fn a_server_that_stops_cancels_a_call_still_ringing_at_twilio() {
    let llm = standin::llm(vec![Reply::Text("Hello.")]);
    let (rest, _) = rest_standin(Plan { barge_in_after: None, dtmf: None, hang_up_after_quiet: None });
    let db = Database::sqlite();
    let key = create_key(&db, "shop", &[]);
    let mut serve = serve_with_twilio(&db, &rest);
    let (_, created) = post(&serve, &key, "/v1/assistants", assistant(&llm));
    post(&serve, &key, "/v1/numbers", json!({ "number": NUMBER, "assistant_id": created["id"] }));
    let (status, call) = post(&serve, &key, "/v1/calls/outbound", json!({ "assistant_id": created["id"], "to_number": NEVER, "from_number": NUMBER }));
    assert_eq!(status, 201, "{call}");
    let id = call["call_id"].as_str().unwrap().to_string();
    wait_for(&serve, &key, &id, Duration::from_secs(20), |c| c["status"] == "ringing");
    let started = Instant::now();
    while !rest.heads().iter().any(|h| h.starts_with(&format!("POST /2010-04-01/Accounts/{ACCOUNT}/Calls.json"))) {
        assert!(started.elapsed() < Duration::from_secs(20), "the call was never placed");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(serve.child.id() as i32, libc::SIGTERM) };
    let _ = serve.child.wait();
    let canceled = rest.requests().iter().any(|r| r["raw"].as_str().is_some_and(|raw| raw.contains("Status=canceled")));
    assert!(canceled, "the ringing call was canceled at Twilio: {:?}", rest.heads());
}
