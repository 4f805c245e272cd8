//! The browser web call, end to end in headless Chromium (Debian's `chromium`): the page
//! `ringline serve` hands out runs the widget, whose microphone is a fake device fed from a
//! recording of human speech; the test reads the page through the DevTools protocol and the
//! call through the API. Forged, expired and reused tokens are refused.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::api::{create_key, get, post, wait_for, Database, Serve};
use crate::standin::{self, Reply};
use crate::support::word_recall;

/// Human speech (Debian's pocketsphinx-testdata): "eight of spades four of clubs seven of hearts".
const CARDS: &str = "/usr/share/pocketsphinx/test/data/cards/005.wav";

/// The microphone's sound: a pause the greeting fits in, the recording, then a long silence (Chromium loops it).
fn microphone(dir: &Path) -> std::path::PathBuf {
    let speech = ringline::audio::decode::decode_file(Path::new(CARDS)).unwrap().to_rate(16_000).unwrap();
    let mut samples = vec![0.0; 16_000 * 9];
    samples.extend(&speech.samples);
    samples.extend(vec![0.0; 16_000 * 40]);
    let path = dir.join("microphone.wav");
    ringline::audio::Audio::new(samples, 16_000).write_wav(&path).unwrap();
    path
}

/// Headless Chromium with a fake microphone, its DevTools socket on a free port.
struct Browser {
    child: Child,
    devtools: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn open(url: &str, microphone: &Path) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new("chromium")
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--remote-debugging-port=0"])
            .args(["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream", "--autoplay-policy=no-user-gesture-required"])
            .arg(format!("--use-file-for-fake-audio-capture={}", microphone.display()))
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chromium is installed (.ci/setup)");
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        // What chromium said before its address, to show if it never gives one.
        let said = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let log = said.clone();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in stderr.lines().map_while(Result::ok) {
                if let (false, Some(at)) = (sent, line.find("ws://")) {
                    let _ = tx.send(line[at..].trim().to_string());
                    sent = true;
                } else if !sent {
                    log.lock().unwrap().push(line);
                }
            }
        });
        // At the end of a clean-clone suite on two cores chromium once gave no address within
        // 30 s (alone it starts in seconds; why was not seen): this is a bound, not a timing.
        let devtools = rx.recv_timeout(Duration::from_secs(180)).unwrap_or_else(|e| {
            let exited = child.try_wait().ok().flatten();
            let said = said.lock().unwrap();
            panic!("chromium gave no DevTools address ({e}); exited: {exited:?}; its last words: {:?}", &said[said.len().saturating_sub(20)..])
        });
        Browser { child, devtools, _profile: profile }
    }

    /// Evaluates `expression` in the page (the first page target) and returns its value.
    async fn evaluate(&self, expression: &str) -> Value {
        let (mut socket, _) = tokio_tungstenite::connect_async(self.devtools.as_str()).await.expect("DevTools answers");
        let mut id = 0;
        let mut call = |method: &str, params: Value, session: Option<&str>| {
            id += 1;
            let mut message = json!({ "id": id, "method": method, "params": params });
            if let Some(session) = session {
                message["sessionId"] = json!(session);
            }
            (id, message.to_string())
        };
        async fn answer(socket: &mut (impl StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin), id: u64) -> Value {
            while let Some(Ok(message)) = socket.next().await {
                if let Message::Text(text) = message {
                    let value: Value = serde_json::from_str(&text).unwrap();
                    if value["id"] == id {
                        return value["result"].clone();
                    }
                }
            }
            Value::Null
        }
        let (n, message) = call("Target.getTargets", json!({}), None);
        socket.send(Message::text(message)).await.unwrap();
        let targets = answer(&mut socket, n).await;
        let Some(page) = targets["targetInfos"].as_array().and_then(|t| t.iter().find(|t| t["type"] == "page")).map(|t| t["targetId"].clone()) else { return Value::Null };
        let (n, message) = call("Target.attachToTarget", json!({ "targetId": page, "flatten": true }), None);
        socket.send(Message::text(message)).await.unwrap();
        let session = answer(&mut socket, n).await["sessionId"].as_str().unwrap_or_default().to_string();
        let (n, message) = call("Runtime.evaluate", json!({ "expression": expression, "returnByValue": true }), Some(&session));
        socket.send(Message::text(message)).await.unwrap();
        answer(&mut socket, n).await["result"]["value"].clone()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Opens the call's socket as a browser would; the HTTP status when it is refused.
fn open_socket(serve: &Serve, token: &str) -> Result<(), u16> {
    let url = serve.url(&format!("/v1/webcall/ws?token={token}")).replace("http://", "ws://");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        match tokio_tungstenite::connect_async(url.as_str()).await {
            Ok((mut socket, _)) => {
                let _ = socket.close(None).await;
                Ok(())
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
            Err(error) => panic!("{error}"),
        }
    })
}

#[test]
fn a_browser_calls_an_assistant_through_the_widget_and_tokens_are_single_use() {
    let llm = standin::llm(vec![Reply::Text("We open at nine in the morning."), Reply::Text("The caller asked about opening hours.")]);
    let db = Database::sqlite();
    let key = create_key(&db, "shop", &[]);
    let serve = Serve::start(&db, &crate::api::repo_assistants(), &[]);
    let mut spec = crate::twilio::assistant(&llm);
    spec["recording"] = json!(true);
    let (status, created) = post(&serve, &key, "/v1/assistants", spec);
    assert_eq!(status, 201, "{created}");

    // Bad requests are named.
    let (status, body) = post(&serve, &key, "/v1/webcall/token", json!({ "assistant_id": created["id"], "ttl_s": 999999 }));
    assert_eq!((status, body["error"]["field"].as_str()), (422, Some("ttl_s")), "{body}");
    let (status, body) = post(&serve, &key, "/v1/webcall/token", json!({ "assistant_id": "asst_nope" }));
    assert_eq!(status, 404, "{body}");

    // A forged token and an expired one are refused before any call exists.
    let (_, short) = post(&serve, &key, "/v1/webcall/token", json!({ "assistant_id": created["id"], "ttl_s": 1 }));
    let short = short["token"].as_str().unwrap().to_string();
    let (payload, mac) = short.split_once('.').unwrap();
    let mut forged_payload = payload.to_string();
    forged_payload.replace_range(0..1, if payload.starts_with('e') { "f" } else { "e" });
    assert_eq!(open_socket(&serve, &format!("{forged_payload}.{mac}")), Err(401), "a changed token is refused");
    assert_eq!(open_socket(&serve, "not-a-token"), Err(401));
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(open_socket(&serve, &short), Err(401), "an expired token is refused");
    let (_, history) = get(&serve, &key, "/v1/calls/history");
    assert_eq!(history["total"], 0, "no call was started: {history}");

    let (status, issued) = post(&serve, &key, "/v1/webcall/token", json!({ "assistant_id": created["id"] }));
    assert_eq!(status, 201, "{issued}");
    let token = issued["token"].as_str().unwrap().to_string();
    let call_id = issued["call_id"].as_str().unwrap().to_string();
    assert!(issued["websocket_path"].as_str().unwrap().starts_with("/v1/webcall/ws?token="));

    let dir = tempfile::tempdir().unwrap();
    let browser = Browser::open(&serve.url(&format!("/webcall?token={token}&autostart")), &microphone(dir.path()));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let started = Instant::now();
    let page = loop {
        let text = runtime.block_on(browser.evaluate("document.body.innerText")).as_str().unwrap_or_default().to_string();
        if text.contains("nine in the morning") {
            break text;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the page never showed the agent's answer; it shows:\n{text}");
        std::thread::sleep(Duration::from_millis(500));
    };
    let (_, so_far) = get(&serve, &key, &format!("/v1/calls/{call_id}/transcript"));
    assert!(page.contains("Agent: Hello, thank you"), "the greeting is in the live transcript:\n{page}\n{so_far}");
    assert!(page.contains("In call"), "the server said the agent answered, and the widget shows it:\n{page}");
    let state = runtime.block_on(browser.evaluate("document.getElementById('call').getAttribute('data-call-id')"));
    assert_eq!(state.as_str(), Some(call_id.as_str()), "the page knows its call");

    // The caller hangs up with the widget's button.
    runtime.block_on(browser.evaluate("document.querySelector('.ringline-button').click()"));
    let done = wait_for(&serve, &key, &call_id, Duration::from_secs(30), crate::api::ended);
    assert_eq!(done["status"], "completed", "{done}");
    let (_, detail) = get(&serve, &key, &format!("/v1/calls/{call_id}"));
    assert_eq!(detail["direction"], "web", "{detail}");
    let (_, transcript) = get(&serve, &key, &format!("/v1/calls/{call_id}/transcript"));
    let heard: Vec<&str> = transcript["transcript"].as_array().unwrap().iter().filter(|l| l["speaker"] == "caller").filter_map(|l| l["text"].as_str()).collect();
    let heard = heard.join(" ");
    assert!(word_recall("eight of spades four of clubs seven of hearts", &heard) >= 0.5, "the assistant heard the microphone: {heard:?}");

    // The token started its call: it cannot start another.
    assert_eq!(open_socket(&serve, &token), Err(409), "a used token is refused");

    // The assistant records its calls: caller left, agent right, downloadable with the key.
    assert_eq!(detail["recording_url"].as_str(), Some(format!("/v1/calls/{call_id}/recording").as_str()), "{detail}");
    let (status, wav) = download(&serve, &key, &format!("/v1/calls/{call_id}/recording"));
    assert_eq!(status, 200);
    let mut reader = hound::WavReader::new(std::io::Cursor::new(wav)).expect("the recording is a WAV");
    assert_eq!((reader.spec().channels, reader.spec().sample_rate), (2, 16_000));
    let samples: Vec<f32> = reader.samples::<i16>().map(|s| s.unwrap() as f32 / 32768.0).collect();
    let (caller, agent): (Vec<f32>, Vec<f32>) = (samples.iter().step_by(2).copied().collect(), samples.iter().skip(1).step_by(2).copied().collect());
    let channel = |name: &str, audio: Vec<f32>| {
        let path = dir.path().join(format!("{name}.wav"));
        ringline::audio::Audio::new(audio, 16_000).write_wav(&path).unwrap();
        crate::support::transcribe_utterances(&path).to_lowercase()
    };
    let left = channel("left", caller);
    assert!(word_recall("eight of spades four of clubs seven of hearts", &left) >= 0.5, "the caller's channel: {left:?}");
    let right = channel("right", agent);
    // The microphone may cut the greeting short ("thank you for call-" heard as "coming").
    assert!(right.contains("thank you for") && !right.contains("spades"), "the agent's channel: {right:?}");

    // Deleting the call deletes its recording.
    let (status, _, _) = crate::api::http("DELETE", &serve.url(&format!("/v1/calls/{call_id}")), Some(&key), None);
    assert_eq!(status, 204);
    assert_eq!(get(&serve, &key, &format!("/v1/calls/{call_id}")).0, 404);
    assert_eq!(download(&serve, &key, &format!("/v1/calls/{call_id}/recording")).0, 404);
}

fn download(serve: &Serve, key: &str, path: &str) -> (u16, Vec<u8>) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let response = reqwest::Client::new().get(serve.url(path)).bearer_auth(key).send().await.unwrap();
        (response.status().as_u16(), response.bytes().await.unwrap().to_vec())
    })
}
