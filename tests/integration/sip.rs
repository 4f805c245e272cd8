//! Calls over SIP, end to end, against real SIP peers. SIPp (Debian's `sip-tester`) places a
//! call — INVITE with an SDP offer, ACK, the caller's recorded speech streamed as μ-law RTP, a
//! key pressed as SIP INFO — and answers the agent's BYE; plays the callee of a call placed
//! through the trunk, and a trunk that asks for credentials. baresip, a softphone with its own
//! SIP stack, calls in too; and a phone that suppresses silence, its packets reordered and
//! lost on the way, is played by hand. The agent's RTP goes to a socket of the test (the offer
//! names it) or to baresip's dump, and is transcribed back.

use std::net::UdpSocket;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::api::{create_key, get, post, wait_for, Database, Serve};
use crate::standin::{self, Reply};
use crate::support::word_recall;

const NUMBER: &str = "+14155552671";
const CALLER: &str = "14155552672";
/// Human speech (Debian's pocketsphinx-testdata): "eight of spades four of clubs seven of hearts".
const CARDS: &str = "/usr/share/pocketsphinx/test/data/cards/005.wav";

/// A port free for UDP and for TCP alike: a server's SIP port listens on both, and a port free
/// for UDP alone may be a TCP connection's of another test.
fn free_port() -> u16 {
    loop {
        let port = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A SIPp `<send>` answering the request it last received: `status` with its Via, From, To
/// (given SIPp's tag when `tagged`), Call-ID and CSeq, then `headers`, no body; `attributes`
/// go on the element (` next="end"`).
fn reply(status: &str, tagged: bool, headers: &[&str], attributes: &str) -> String {
    let tag = if tagged { ";tag=[pid]SIPpTag01[call_number]" } else { "" };
    let mut lines = vec![format!("SIP/2.0 {status}"), "[last_Via:]".into(), "[last_From:]".into(), format!("[last_To:]{tag}"), "[last_Call-ID:]".into(), "[last_CSeq:]".into()];
    lines.extend(headers.iter().map(|header| header.to_string()));
    lines.push("Content-Length: 0".into());
    let lines: Vec<String> = lines.iter().map(|line| format!("      {line}")).collect();
    format!("<send{attributes}>\n    <![CDATA[\n{}\n    ]]>\n  </send>", lines.join("\n"))
}

/// The caller's side, as SIPp plays it: INVITE offering PCMU (and telephone-events) with its
/// media at `media_port`, ACK, silence through the greeting (12 s: on a busy box the greeting
/// starts late, and a caller talking over it cuts it short), the recording, a key, then the
/// agent's BYE answered.
fn caller_scenario(media_port: u16, audio: &Path) -> String {
    format!(
        r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="a caller">
  <send retrans="500">
    <![CDATA[
      INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:{CALLER}@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:caller@[local_ip]:[local_port]>
      Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=caller 1 1 IN IP4 [local_ip]
      s=-
      c=IN IP4 [local_ip]
      t=0 0
      m=audio {media_port} RTP/AVP 0 101
      a=rtpmap:0 PCMU/8000
      a=rtpmap:101 telephone-event/8000
    ]]>
  </send>
  <recv response="100" optional="true"/>
  <recv response="200" rtd="true"/>
  <send>
    <![CDATA[
      ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:{CALLER}@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0
    ]]>
  </send>
  <pause milliseconds="12000"/>
  <nop><action><exec rtp_stream="{audio},1,0"/></action></nop>
  <pause milliseconds="14000"/>
  <send retrans="500">
    <![CDATA[
      INFO sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:{CALLER}@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 2 INFO
      Max-Forwards: 70
      Content-Type: application/dtmf-relay
      Content-Length: [len]

      Signal=5
      Duration=160
    ]]>
  </send>
  <recv response="200"/>
  <recv request="BYE" timeout="60000"/>
  {bye_ok}
</scenario>
"#,
        audio = audio.display(),
        bye_ok = reply("200 OK", false, &[], ""),
    )
}

/// Runs SIPp once against the server's SIP port; true when its scenario passed.
fn sipp(scenario: &str, dir: &Path, service: &str, server: u16) -> (bool, String) {
    let mut command = sipp_command(scenario, dir, free_port());
    command.arg(format!("127.0.0.1:{server}")).args(["-s", service]);
    finish_sipp(command.output().expect("sipp runs (Debian's sip-tester, installed by .ci/setup)"), dir)
}

/// SIPp with `scenario`, on `port`, for one call, its messages and errors logged in `dir`.
fn sipp_command(scenario: &str, dir: &Path, port: u16) -> Command {
    let path = dir.join(format!("scenario-{}.xml", free_port()));
    std::fs::write(&path, scenario).unwrap();
    let mut command = Command::new("sipp");
    command
        .arg("-sf")
        .arg(&path)
        .args(["-m", "1", "-i", "127.0.0.1", "-p", &port.to_string(), "-mp", &free_port().to_string()])
        .args(["-nostdin", "-timeout", "120s", "-timeout_error", "-trace_err", "-error_file"])
        .arg(dir.join("sipp-errors.log"))
        .args(["-trace_msg", "-message_file"])
        .arg(dir.join("sipp-messages.log"))
        .current_dir(dir)
        .stdout(std::process::Stdio::null());
    command
}

fn finish_sipp(output: std::process::Output, dir: &Path) -> (bool, String) {
    let errors = std::fs::read_to_string(dir.join("sipp-errors.log")).unwrap_or_default();
    let messages = std::fs::read_to_string(dir.join("sipp-messages.log")).unwrap_or_default();
    let tail: String = messages.chars().rev().take(6_000).collect::<Vec<_>>().into_iter().rev().collect();
    (output.status.success(), format!("{}\nerrors: {errors}\nmessages (the last of them): {tail}", String::from_utf8_lossy(&output.stderr)))
}

/// Collects the payloads of the RTP packets arriving on a socket of its own until stopped.
struct Listener {
    port: u16,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<(Vec<u8>, Vec<u8>)>,
}

impl Listener {
    fn start() -> Listener {
        let media = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = media.local_addr().unwrap().port();
        media.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut buffer, mut payload, mut payload_types) = ([0u8; 2048], Vec::new(), Vec::new());
            while !stopped.load(std::sync::atomic::Ordering::SeqCst) {
                if let Ok((length, _)) = media.recv_from(&mut buffer) {
                    if length > 12 {
                        payload_types.push(buffer[1] & 0x7f);
                        payload.extend_from_slice(&buffer[12..length]);
                    }
                }
            }
            (payload, payload_types)
        });
        Listener { port, stop, thread }
    }

    /// The payloads, and each packet's payload type.
    fn stop(self) -> (Vec<u8>, Vec<u8>) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.join().unwrap()
    }
}

/// Sends one datagram to the server's SIP port and reads its answers for a while.
fn exchange(server: u16, message: &str) -> Vec<String> {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(1500))).unwrap();
    socket.send_to(message.as_bytes(), ("127.0.0.1", server)).unwrap();
    let mut answers = Vec::new();
    let mut buffer = [0u8; 4096];
    while let Ok((length, _)) = socket.recv_from(&mut buffer) {
        answers.push(String::from_utf8_lossy(&buffer[..length]).to_string());
        if answers.last().is_some_and(|a| !a.starts_with("SIP/2.0 1")) {
            break;
        }
    }
    answers
}

fn invite(to: &str, sdp: &str) -> String {
    format!(
        "INVITE sip:{to}@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK-{to}\r\nFrom: <sip:{CALLER}@127.0.0.1>;tag=raw\r\nTo: <sip:{to}@127.0.0.1>\r\nCall-ID: raw-{to}@127.0.0.1\r\nCSeq: 1 INVITE\r\nContact: <sip:caller@127.0.0.1:5999>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    )
}

/// The caller's recording (human speech, CARDS) at the line's 8 kHz.
fn cards() -> Vec<f32> {
    ringline::audio::decode::decode_file(Path::new(CARDS)).expect("the recording decodes").to_rate(8_000).unwrap().samples
}

/// The recording written to `dir/name` as SIPp streams it: raw G.711 by `encode`.
fn cards_file(dir: &Path, name: &str, encode: fn(&[f32]) -> Vec<u8>) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, encode(&cards())).unwrap();
    path
}

/// A server answering `caller_scenario`'s caller: the opening hours for the recording, a
/// goodbye that ends the call for the key five, then the summary.
fn answering_the_caller_who_presses_five() -> (Database, Serve, String, u16) {
    let llm = standin::llm(vec![
        Reply::Text("We open at nine in the morning."),
        Reply::Tool { text: "You pressed five. Goodbye.", name: "end_call", arguments: "{}" },
        Reply::Text("The caller asked about opening hours and pressed five."),
    ]);
    let (db, serve, key, port, _) = answering(crate::twilio::assistant(&llm), &[]);
    (db, serve, key, port)
}

/// A server answering SIP on a port of its own (with `extra` settings), `assistant` created in a
/// workspace and given NUMBER: the database (kept while the server runs), the server, the
/// workspace's key, the SIP port and the assistant's id.
fn answering(assistant: serde_json::Value, extra: &[(&str, &str)]) -> (Database, Serve, String, u16, serde_json::Value) {
    let db = Database::sqlite();
    let key = create_key(&db, "shop", &[]);
    let port = free_port();
    let bind = format!("127.0.0.1:{port}");
    let mut settings = vec![("RINGLINE_SIP_BIND", bind.as_str())];
    settings.extend_from_slice(extra);
    let serve = Serve::start(&db, &crate::api::repo_assistants(), &settings);
    let (status, created) = post(&serve, &key, "/v1/assistants", assistant);
    assert_eq!(status, 201, "{created}");
    let (status, number) = post(&serve, &key, "/v1/numbers", json!({ "number": NUMBER, "assistant_id": created["id"] }));
    assert_eq!(status, 201, "{number}");
    (db, serve, key, port, created["id"].clone())
}

#[test]
fn a_call_from_a_sip_trunk_is_answered_heard_keyed_and_hung_up() {
    let (_db, serve, key, port) = answering_the_caller_who_presses_five();

    // What no call may come of: garbage, a number nobody holds, an offer without G.711, a
    // method the endpoint does not take, a session interval too short or unreadable. Each gets
    // its SIP answer, and no call is stored.
    assert!(exchange(port, "\u{0}\u{1}garbage").is_empty(), "garbage is dropped unanswered");
    let g711 = "v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 40000 RTP/AVP 0\r\n";
    let answers = exchange(port, &invite("14155550199", g711));
    assert!(answers.iter().any(|a| a.starts_with("SIP/2.0 404")), "{answers:?}");
    let answers = exchange(port, &invite("14155552671", "v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 40000 RTP/AVP 18\r\n"));
    assert!(answers.iter().any(|a| a.starts_with("SIP/2.0 488") && a.contains("neither PCMU")), "{answers:?}");
    let answers = exchange(port, &invite("14155552671", g711).replacen("From: ", "Require: 100rel, x-foo\r\nFrom: ", 1));
    assert!(answers.iter().any(|a| a.starts_with("SIP/2.0 420") && a.contains("Unsupported: 100rel, x-foo\r\n") && a.contains(";tag=")), "an extension we lack is refused: {answers:?}");
    let answers = exchange(port, &invite("14155552671", g711).replacen("From: ", "Session-Expires: 30\r\nFrom: ", 1).replace("Call-ID: raw-", "Call-ID: short-"));
    assert!(answers.iter().any(|a| a.starts_with("SIP/2.0 422") && a.contains("Min-SE: 90\r\n")), "a session interval under RFC 4028's floor: {answers:?}");
    let answers = exchange(port, &invite("14155552671", g711).replacen("From: ", "Session-Expires: soon\r\nFrom: ", 1).replace("Call-ID: raw-", "Call-ID: soon-"));
    assert!(answers.iter().any(|a| a.starts_with("SIP/2.0 400") && a.contains("SECONDS")), "{answers:?}");
    let register = "REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK-r\r\nFrom: <sip:a@127.0.0.1>;tag=r\r\nTo: <sip:a@127.0.0.1>\r\nCall-ID: r@127.0.0.1\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n";
    let answers = exchange(port, register);
    assert!(answers.iter().any(|a| a.starts_with("SIP/2.0 405") && a.contains("Allow: INVITE")), "{answers:?}");
    let (_, history) = get(&serve, &key, "/v1/calls/history");
    assert_eq!(history["total"], 0, "{history}");

    // The agent's audio comes here.
    let listener = Listener::start();
    let media_port = listener.port;

    // The caller's recording as SIPp streams it: raw μ-law at 8 kHz.
    let dir = tempfile::tempdir().unwrap();
    let caller_audio = cards_file(dir.path(), "caller.ulaw", ringline::audio::g711::encode_mulaw);
    let (passed, log) = sipp(&caller_scenario(media_port, &caller_audio), dir.path(), "14155552671", port);
    assert!(passed, "SIPp's call went as its scenario says (answered, INFO taken, BYE from the agent): {log}");
    let (heard, payload_types) = listener.stop();
    assert!(!payload_types.is_empty() && payload_types.iter().all(|&pt| pt == 0), "the agent answered in the offered PCMU: {:?}", &payload_types[..payload_types.len().min(10)]);

    let (_, history) = get(&serve, &key, "/v1/calls/history");
    let call_id = history["calls"][0]["call_id"].as_str().unwrap_or_else(|| panic!("one call: {history}")).to_string();
    let done = wait_for(&serve, &key, &call_id, Duration::from_secs(30), crate::api::ended);
    assert_eq!(done["status"], "completed", "{done}");

    // The caller heard the greeting and the answer.
    let agent = crate::twilio::transcribe(&heard, dir.path(), "agent");
    assert!(word_recall("thank you for calling the hardware shop", &agent) >= 0.6, "the agent as heard over RTP: {agent:?}");
    assert!(agent.to_lowercase().contains("nine") || agent.contains('9'), "the answer as heard: {agent:?}");

    // The agent heard the recording and the key.
    let (_, transcript) = get(&serve, &key, &format!("/v1/calls/{call_id}/transcript"));
    let lines = transcript["transcript"].as_array().cloned().unwrap_or_default();
    let caller: Vec<String> = lines.iter().filter(|l| l["speaker"] == "caller").map(|l| l["text"].as_str().unwrap_or_default().to_string()).collect();
    assert!(word_recall("eight of spades four of clubs seven of hearts", &caller.join(" ")) >= 0.5, "the caller as heard: {caller:?}");
    assert!(caller.iter().any(|l| l.contains("DTMF 5")), "the key reached the call: {caller:?}");
    let (_, detail) = get(&serve, &key, &format!("/v1/calls/{call_id}"));
    assert_eq!((detail["direction"].as_str(), detail["from_number"].as_str(), detail["to_number"].as_str()), (Some("inbound"), Some("+14155552672"), Some(NUMBER)), "{detail}");
}

#[test]
fn sip_from_outside_the_trusted_ranges_is_dropped_unanswered() {
    let db = Database::sqlite();
    let port = free_port();
    let _serve = Serve::start(&db, &crate::api::repo_assistants(), &[("RINGLINE_SIP_BIND", &format!("127.0.0.1:{port}")), ("RINGLINE_SIP_TRUSTED", "127.0.0.2/32")]);
    let options = |from: &str| {
        let socket = UdpSocket::bind((from, 0)).unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(1500))).unwrap();
        let message = format!("OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bK-o\r\nFrom: <sip:probe@{from}>;tag=o\r\nTo: <sip:127.0.0.1>\r\nCall-ID: o@{from}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n");
        socket.send_to(message.as_bytes(), ("127.0.0.1", port)).unwrap();
        let mut buffer = [0u8; 4096];
        socket.recv_from(&mut buffer).ok().map(|(length, _)| String::from_utf8_lossy(&buffer[..length]).to_string())
    };
    assert_eq!(options("127.0.0.1"), None, "a source outside --sip-trusted gets no answer at all");
    let answer = options("127.0.0.2").expect("a trusted source is answered");
    assert!(answer.starts_with("SIP/2.0 200") && answer.contains("Allow: INVITE"), "{answer}");
    // Over TCP the same: the stranger's connection is closed with nothing said.
    let mut stranger = std::net::TcpStream::connect(("127.0.0.1", port)).expect("the SIP port takes TCP too");
    stranger.set_read_timeout(Some(Duration::from_millis(1500))).unwrap();
    let _ = std::io::Write::write_all(&mut stranger, tcp_options("o1").as_bytes());
    let mut buffer = [0u8; 512];
    assert!(matches!(std::io::Read::read(&mut stranger, &mut buffer), Ok(0) | Err(_)), "an untrusted connection is answered nothing");
}

/// An OPTIONS request for a stream, by `tag`.
fn tcp_options(tag: &str) -> String {
    format!("OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1;branch=z9hG4bK-{tag}\r\nFrom: <sip:probe@127.0.0.1>;tag={tag}\r\nTo: <sip:127.0.0.1>\r\nCall-ID: {tag}@127.0.0.1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
}

/// Reads from `stream` until `done` holds for what came (or a read times out).
fn read_until(stream: &mut std::net::TcpStream, done: impl Fn(&str) -> bool) -> String {
    let (mut text, mut buffer) = (String::new(), [0u8; 4096]);
    while !done(&text) {
        match std::io::Read::read(stream, &mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(length) => text.push_str(&String::from_utf8_lossy(&buffer[..length])),
        }
    }
    text
}

/// SIP over TCP, the server's side: messages cut anywhere and run together on one connection
/// are read one by one, a keep-alive ping is answered, one that cannot be a message closes the
/// connection; and SIPp calls in on a connection of its own — the answer, the INFO's 200 and
/// the agent's BYE come back on it.
#[test]
fn a_call_over_tcp_is_answered_and_hung_up_on_its_connection() {
    let (_db, serve, key, port) = answering_the_caller_who_presses_five();

    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("the SIP port takes TCP");
    stream.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    std::io::Write::write_all(&mut stream, b"\r\n\r\n").unwrap();
    assert_eq!(read_until(&mut stream, |t| t.contains("\r\n")), "\r\n", "a ping (CRLF CRLF) is answered with a pong (CRLF)");
    let two = format!("{}{}", tcp_options("a"), tcp_options("b"));
    let (first, rest) = two.as_bytes().split_at(30);
    std::io::Write::write_all(&mut stream, first).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    std::io::Write::write_all(&mut stream, rest).unwrap();
    let answers = read_until(&mut stream, |t| t.matches("SIP/2.0 200").count() >= 2);
    assert!(answers.contains("Call-ID: a@127.0.0.1") && answers.contains("Call-ID: b@127.0.0.1") && answers.contains("Via: SIP/2.0/TCP"), "both messages answered on the connection: {answers}");
    std::io::Write::write_all(&mut stream, b"OPTIONS sip:127.0.0.1 SIP/2.0\r\nContent-Length: 99999999\r\n\r\n").unwrap();
    let mut buffer = [0u8; 512];
    assert!(matches!(std::io::Read::read(&mut stream, &mut buffer), Ok(0) | Err(_)), "a message beyond the bound closes the connection");

    let listener = Listener::start();
    let dir = tempfile::tempdir().unwrap();
    let caller_audio = cards_file(dir.path(), "caller.ulaw", ringline::audio::g711::encode_mulaw);
    let mut command = sipp_command(&caller_scenario(listener.port, &caller_audio), dir.path(), free_port());
    command.args(["-t", "t1"]).arg(format!("127.0.0.1:{port}")).args(["-s", "14155552671"]);
    let (passed, log) = finish_sipp(command.output().expect("sipp runs (Debian's sip-tester, installed by .ci/setup)"), dir.path());
    assert!(passed, "SIPp's call over TCP went as its scenario says (answered, INFO taken, BYE from the agent on its connection): {log}");
    let (heard, _) = listener.stop();
    assert!(!heard.is_empty(), "the agent's RTP came");

    let messages = std::fs::read_to_string(dir.path().join("sipp-messages.log")).unwrap_or_default();
    let ok = messages.split("SIP/2.0 200 OK").nth(1).unwrap_or_default();
    assert!(ok.contains(&format!("<sip:ringline@127.0.0.1:{port};transport=tcp>")), "the answer's Contact names TCP: {log}");
    let bye = messages.split("BYE sip:").nth(1).unwrap_or_else(|| panic!("the agent's BYE: {log}"));
    assert!(bye.contains(&format!("Via: SIP/2.0/TCP 127.0.0.1:{port}")), "the BYE's Via names TCP: {bye}");

    let (_, history) = get(&serve, &key, "/v1/calls/history");
    let call_id = history["calls"][0]["call_id"].as_str().unwrap_or_else(|| panic!("one call: {history}")).to_string();
    let done = wait_for(&serve, &key, &call_id, Duration::from_secs(30), crate::api::ended);
    assert_eq!(done["status"], "completed", "{done}");
    let (_, detail) = get(&serve, &key, &format!("/v1/calls/{call_id}"));
    assert_eq!(detail["metadata"]["sip_transport"], "tcp", "{detail}");
    let (_, transcript) = get(&serve, &key, &format!("/v1/calls/{call_id}/transcript"));
    let lines = transcript["transcript"].as_array().cloned().unwrap_or_default();
    assert!(lines.iter().any(|l| l["speaker"] == "caller" && l["text"].as_str().is_some_and(|t| t.contains("DTMF 5"))), "the INFO's key reached the call: {transcript}");
}

/// The callee's side, as SIPp plays it: rings, answers in PCMA with its media at `media_port`,
/// says the recording (A-law) after the agent's greeting, and, as a trunk that asks for
/// credentials on every request, challenges the agent's BYE and then answers it.
fn callee_scenario(media_port: u16, audio: &Path) -> String {
    format!(
        r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="a callee">
  <recv request="INVITE" crlf="true"/>
  {ringing}
  <pause milliseconds="500"/>
  <send retrans="500">
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      Record-Route: <sip:edge.example;lr>, <sip:[local_ip]:[local_port];lr>
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:callee@[local_ip]:[local_port]>
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=callee 1 1 IN IP4 [local_ip]
      s=-
      c=IN IP4 [local_ip]
      t=0 0
      m=audio {media_port} RTP/AVP 8 101
      a=rtpmap:8 PCMA/8000
      a=rtpmap:101 telephone-event/8000
    ]]>
  </send>
  <recv request="ACK" crlf="true"/>
  <pause milliseconds="9000"/>
  <nop><action><exec rtp_stream="{audio},1,8"/></action></nop>
  <recv request="BYE" timeout="60000"/>
  {challenge}
  <recv request="BYE">
    <action>
      <verifyauth assign_to="byeauth" username="ringline" password="s3cret-Pa55"/>
    </action>
  </recv>
  <nop hide="true" test="byeauth" next="good"/>
  {refused}
  <label id="good"/>
  {bye_ok}
  <label id="end"/>
</scenario>
"#,
        audio = audio.display(),
        ringing = reply("180 Ringing", true, &["Contact: <sip:callee@[local_ip]:[local_port]>"], ""),
        challenge = reply("401 Unauthorized", false, &[r#"WWW-Authenticate: Digest realm="trunk.example", nonce="b7e0ddba11", qop="auth""#], ""),
        refused = reply("403 Forbidden", false, &[], r#" next="end""#),
        bye_ok = reply("200 OK", false, &[], ""),
    )
}

/// An outbound call placed through a trunk that SIPp plays as `callee_scenario`, reached over
/// `transport` (`udp` or `tcp`) with credentials: once SIPp's run is over.
struct Placed {
    _db: Database,
    serve: Serve,
    key: String,
    assistant_id: Value,
    dir: tempfile::TempDir,
    listener: Listener,
    trunk: u16,
    port: u16,
    id: String,
    passed: bool,
    log: String,
}

fn placed_through_the_trunk(transport: &str) -> Placed {
    let llm = standin::llm(vec![
        Reply::Tool { text: "We open at nine in the morning. Goodbye.", name: "end_call", arguments: r#"{"reason":"answered"}"# },
        Reply::Text("The callee heard the opening hours."),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let callee_audio = cards_file(dir.path(), "callee.alaw", ringline::audio::g711::encode_alaw);
    let listener = Listener::start();
    let trunk = free_port();
    let mut callee = sipp_command(&callee_scenario(listener.port, &callee_audio), dir.path(), trunk);
    if transport == "tcp" {
        callee.args(["-t", "t1"]);
    }
    let callee = callee.spawn().expect("sipp runs (Debian's sip-tester, installed by .ci/setup)");

    let credentials = [("RINGLINE_SIP_TRUNK_TRANSPORT", transport), ("RINGLINE_SIP_TRUNK_USER", "ringline"), ("RINGLINE_SIP_TRUNK_PASSWORD", "s3cret-Pa55")];
    let Trunked { db, serve, key, port, assistant_id } = with_a_trunk(trunk, crate::twilio::assistant(&llm), &credentials);
    let (status, validated) = post(&serve, &key, "/v1/numbers/validate", json!({ "number": "+14155552672" }));
    assert_eq!((status, validated["callable"].as_bool()), (200, Some(true)), "with a SIP trunk a real number is callable: {validated}");

    let id = place_call(&serve, &key, &assistant_id);
    let (passed, log) = finish_sipp(callee.wait_with_output().unwrap(), dir.path());
    Placed { _db: db, serve, key, assistant_id, dir, listener, trunk, port, id, passed, log }
}

/// A server whose SIP trunk is at `trunk` (and `extra` settings), with a number for
/// `assistant`.
struct Trunked {
    db: Database,
    serve: Serve,
    key: String,
    /// The server's SIP port.
    port: u16,
    assistant_id: Value,
}

fn with_a_trunk(trunk: u16, assistant: Value, extra: &[(&str, &str)]) -> Trunked {
    let db = Database::sqlite();
    let key = create_key(&db, "shop", &[]);
    let port = free_port();
    let (bind, trunk) = (format!("127.0.0.1:{port}"), format!("127.0.0.1:{trunk}"));
    let mut settings = vec![("RINGLINE_SIP_BIND", bind.as_str()), ("RINGLINE_SIP_TRUNK", trunk.as_str())];
    settings.extend_from_slice(extra);
    let serve = Serve::start(&db, &crate::api::repo_assistants(), &settings);
    let (_, created) = post(&serve, &key, "/v1/assistants", assistant);
    let (status, number) = post(&serve, &key, "/v1/numbers", json!({ "number": NUMBER, "assistant_id": created["id"] }));
    assert_eq!(status, 201, "{number}");
    Trunked { db, serve, key, port, assistant_id: created["id"].clone() }
}

/// Calls +14155552672 from the workspace's number: the call's id.
fn place_call(serve: &Serve, key: &str, assistant_id: &Value) -> String {
    let (status, call) = post(serve, key, "/v1/calls/outbound", json!({ "assistant_id": assistant_id, "to_number": "+14155552672", "from_number": NUMBER }));
    assert_eq!(status, 201, "{call}");
    call["call_id"].as_str().unwrap().to_string()
}

#[test]
fn an_outbound_call_goes_through_the_sip_trunk() {
    let Placed { _db, serve, key, assistant_id, dir, listener, trunk, port, id, passed, log } = placed_through_the_trunk("udp");
    assert!(passed, "SIPp's callee saw the call its scenario expects (INVITE, ACK, BYE from the agent): {log}");
    let done = wait_for(&serve, &key, &id, Duration::from_secs(30), crate::api::ended);
    assert_eq!(done["status"], "completed", "{done}");

    let messages = std::fs::read_to_string(dir.path().join("sipp-messages.log")).unwrap_or_default();
    assert!(messages.contains("INVITE sip:+14155552672@127.0.0.1"), "the INVITE dials the number at the trunk: {log}");
    assert!(messages.contains(&format!("From: <sip:{NUMBER}@127.0.0.1:{port}>")), "from the workspace's number: {log}");
    // The BYE was challenged, and sent again with the trunk's credentials, which it took.
    assert!(messages.contains("Authorization: Digest username=\"ringline\"") && !messages.contains("SIP/2.0 403"), "the challenged BYE answered with credentials: {log}");
    // The callee's 200 OK came record-routed (the proxy nearest the callee on top, the trunk
    // last): our ACK and BYE name the route set, the trunk first (the list reversed).
    for method in ["ACK", "BYE"] {
        let request = messages.split(&format!("{method} sip:callee@127.0.0.1:{trunk} SIP/2.0")).nth(1).unwrap_or_else(|| panic!("our {method} to the callee's Contact: {log}"));
        let request = request.split("Content-Length").next().unwrap_or_default();
        let (near, edge) = (request.find(&format!("Route: <sip:127.0.0.1:{trunk};lr>")), request.find("Route: <sip:edge.example;lr>"));
        assert!(near.is_some() && edge.is_some() && near < edge, "our {method} names the route set in order: {request}");
    }

    // The callee heard the greeting and the answer, in the PCMA it chose.
    let (heard, payload_types) = listener.stop();
    assert!(!payload_types.is_empty() && payload_types.iter().all(|&pt| pt == 8), "the agent spoke the answered PCMA: {:?}", &payload_types[..payload_types.len().min(10)]);
    let as_mulaw = ringline::audio::g711::encode_mulaw(&ringline::audio::g711::decode_alaw(&heard));
    let agent = crate::twilio::transcribe(&as_mulaw, dir.path(), "agent");
    assert!(word_recall("thank you for calling the hardware shop", &agent) >= 0.6, "the agent as heard over RTP: {agent:?}");
    assert!(agent.to_lowercase().contains("nine") || agent.contains('9'), "the answer as heard: {agent:?}");

    // The agent heard the callee.
    let (_, transcript) = get(&serve, &key, &format!("/v1/calls/{id}/transcript"));
    let lines = transcript["transcript"].as_array().cloned().unwrap_or_default();
    let callee: Vec<String> = lines.iter().filter(|l| l["speaker"] == "caller").map(|l| l["text"].as_str().unwrap_or_default().to_string()).collect();
    assert!(word_recall("eight of spades four of clubs seven of hearts", &callee.join(" ")) >= 0.5, "the callee as heard: {callee:?}");

    // A busy callee: 486, ACKed, and the call ends `busy`.
    let busy = format!(
        r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="a busy callee">
  <recv request="INVITE" crlf="true"/>
  {busy}
  <recv request="ACK"/>
</scenario>
"#,
        busy = reply("486 Busy Here", true, &[], "")
    );
    let callee = sipp_command(&busy, dir.path(), trunk).spawn().unwrap();
    let call = place_call(&serve, &key, &assistant_id);
    let (passed, log) = finish_sipp(callee.wait_with_output().unwrap(), dir.path());
    assert!(passed, "the busy callee's refusal was ACKed: {log}");
    let done = wait_for(&serve, &key, &call, Duration::from_secs(30), crate::api::ended);
    assert_eq!(done["status"], "busy", "{done}");

    // A callee that takes no session shorter than an hour (422, RFC 4028) is asked again, once,
    // at its Min-SE; then it is busy.
    let stretching = format!(
        r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="a callee that wants longer sessions">
  <recv request="INVITE" crlf="true"/>
  {too_small}
  <recv request="ACK"/>
  <recv request="INVITE"/>
  {busy}
  <recv request="ACK"/>
</scenario>
"#,
        too_small = reply("422 Session Interval Too Small", true, &["Min-SE: 3600"], ""),
        busy = reply("486 Busy Here", true, &[], "")
    );
    let dir = tempfile::tempdir().unwrap();
    let callee = sipp_command(&stretching, dir.path(), trunk).spawn().unwrap();
    let call = place_call(&serve, &key, &assistant_id);
    let (passed, log) = finish_sipp(callee.wait_with_output().unwrap(), dir.path());
    assert!(passed, "the INVITE came again after the 422, and both refusals were ACKed: {log}");
    let done = wait_for(&serve, &key, &call, Duration::from_secs(30), crate::api::ended);
    assert_eq!(done["status"], "busy", "{done}");
    let messages = std::fs::read_to_string(dir.path().join("sipp-messages.log")).unwrap_or_default();
    let invites: Vec<&str> = messages.split("INVITE sip:+14155552672@").skip(1).map(|m| m.split("v=0").next().unwrap_or_default()).collect();
    assert_eq!(invites.len(), 2, "{log}");
    let says = |invite: &str, lines: &[&str]| lines.iter().all(|line| invite.lines().any(|l| l.trim() == *line));
    assert!(says(invites[0], &["Supported: timer", "Session-Expires: 1800", "Min-SE: 90"]), "half an hour asked: {}", invites[0]);
    assert!(says(invites[1], &["CSeq: 2 INVITE", "Session-Expires: 3600", "Min-SE: 3600"]), "the callee's floor asked: {}", invites[1]);
}

/// Session timers (RFC 4028), both ways at once: a phone that leaves the refreshing to us gets
/// a re-INVITE with the session as it stands at half the interval; a phone that is to refresh
/// and does so once, 20 s into the call, then falls silent, is hung up before its session would
/// run out — a minute after its refresh, not a minute after the call began.
#[test]
fn session_timers_are_refreshed_by_the_side_the_answer_names() {
    let llm = standin::llm(vec![Reply::Text("A caller who said nothing."), Reply::Text("A caller who said nothing.")]);
    let mut assistant = crate::twilio::assistant(&llm);
    assistant["turn"] = json!({ "idle_reprompt_s": 200, "idle_hangup_s": 300, "max_duration_s": 300 });
    let (_db, serve, key, port, _) = answering(assistant, &[]);
    let media = UdpSocket::bind("127.0.0.1:0").unwrap();
    let sdp = phone_sdp(media.local_addr().unwrap().port(), "sendrecv");
    let ours = Phone::call(port, &sdp, "Session-Expires: 90;refresher=uas\r\nSupported: timer\r\n");
    let theirs = Phone::call(port, &sdp, "Session-Expires: 90\r\nSupported: timer\r\n");
    assert!(ours.ok.contains("Session-Expires: 90;refresher=uas\r\n") && ours.ok.contains("Require: timer\r\n"), "{}", ours.ok);
    assert!(theirs.ok.contains("Session-Expires: 90;refresher=uac\r\n"), "unnamed, the phone that supports timers refreshes: {}", theirs.ok);
    // Both phones talk (silence, in RTP) all along: only the session timer may end a call here.
    let talker = Silence::sent(media, vec![port_of_media(&ours.ok), port_of_media(&theirs.ok)]);

    // The phone to refresh does, once: the session goes on from there.
    std::thread::sleep(Duration::from_secs(20));
    // One asking for a session under the floor is refused, and refreshes nothing.
    theirs.send(&theirs.request("INVITE", 2, &["Session-Expires: 30"], Some(&sdp)));
    let too_small = theirs.read(Duration::from_secs(10), &|m| m.starts_with("SIP/2.0 4")).expect("the short refresh is refused");
    assert!(too_small.starts_with("SIP/2.0 422") && too_small.contains("Min-SE: 90\r\n"), "{too_small}");
    theirs.send(&theirs.ack(2));
    let refreshed = theirs.reinvite(3, &sdp);
    assert!(refreshed.contains("Session-Expires: 90;refresher=uac\r\n"), "{refreshed}");
    let refreshed_at = std::time::Instant::now();

    // Ours to refresh: a re-INVITE offering the session unchanged, acknowledged once answered.
    // Its refresh names the server, the re-INVITE's sender, `uac` (RFC 4028 names roles in the
    // transaction).
    let refresh = ours.read(Duration::from_secs(60), &|m| m.starts_with("INVITE ")).expect("the server refreshes the session it is to refresh");
    assert!(refresh.contains("Session-Expires: 90;refresher=uac\r\n"), "{refresh}");
    assert_eq!(sdp_version(&refresh), sdp_version(&ours.ok), "the session offered as it stands: {refresh}");
    ours.send(&ours.respond(&refresh, "200 OK", Some(&sdp)).replacen("Contact:", "Session-Expires: 90;refresher=uac\r\nContact:", 1));
    assert!(ours.read(Duration::from_secs(5), &|m| m.starts_with("ACK ")).is_some(), "the refresh's 200 is acknowledged");
    ours.send(&ours.request("BYE", 3, &[], None));

    // The other phone refreshes no more: the server hangs up a third of the interval (under 32
    // s) before the session would run out, counted from the refresh.
    let bye = theirs.read(Duration::from_secs(60), &|m| m.starts_with("BYE ")).expect("a session not refreshed is hung up");
    assert!(refreshed_at.elapsed() >= Duration::from_secs(55), "not before the session from the refresh runs low: {:?}", refreshed_at.elapsed());
    theirs.send(&theirs.respond(&bye, "200 OK", None));
    talker.stop();
    let (_, history) = get(&serve, &key, "/v1/calls/history");
    let calls = history["calls"].as_array().cloned().unwrap_or_default();
    assert_eq!(calls.len(), 2, "{history}");
    for call in calls {
        let id = call["call_id"].as_str().unwrap();
        let done = wait_for(&serve, &key, id, Duration::from_secs(30), crate::api::ended);
        let (_, detail) = get(&serve, &key, &format!("/v1/calls/{id}"));
        if detail["metadata"]["sip_call_id"].as_str() == Some(header(&theirs.ok, "Call-ID").trim_start_matches("Call-ID: ")) {
            assert_eq!(done["status"], "failed", "{done}");
            assert!(done["reason"].as_str().unwrap_or_default().contains("session expired"), "{done}");
        } else {
            assert_eq!(done["status"], "completed", "{done}");
        }
    }
}

/// PCMU silence sent from `media` to the server's RTP `ports` every 200 ms until stopped: a
/// peer that stays on the line, so that only what a test is about ends its call.
struct Silence {
    sending: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Silence {
    fn sent(media: UdpSocket, ports: Vec<u16>) -> Silence {
        let sending = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let still = sending.clone();
        let thread = std::thread::spawn(move || {
            let mut sequence = 0u16;
            while still.load(std::sync::atomic::Ordering::SeqCst) {
                let packet = ringline::transport::sip::rtp_packet(sequence == 0, 0, sequence, u32::from(sequence) * 160, 7, &[0xff; 160]);
                for &port in &ports {
                    let _ = media.send_to(&packet, ("127.0.0.1", port));
                }
                sequence = sequence.wrapping_add(1);
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        Silence { sending, thread }
    }

    fn stop(self) {
        self.sending.store(false, std::sync::atomic::Ordering::SeqCst);
        self.thread.join().unwrap();
    }
}

/// The agent's keys (the API's `dtmf` action) reach a phone as the phone takes keys: one that
/// offered telephone-events gets RFC 4733 events, each marked at its start, its duration growing,
/// its end said three times, in order; one that did not hears the keys' tones in its audio.
#[test]
fn the_agents_keys_go_as_telephone_events_to_a_phone_that_takes_them_else_as_tones() {
    let llm = standin::llm(vec![Reply::Text("A caller who said nothing."), Reply::Text("A caller who said nothing.")]);
    let (_db, serve, key, port, _) = answering(crate::twilio::assistant(&llm), &[]);
    let (events_media, tones_media) = (UdpSocket::bind("127.0.0.1:0").unwrap(), UdpSocket::bind("127.0.0.1:0").unwrap());
    let with_events = format!("{}m=audio {} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n", "v=0\r\no=phone 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n", events_media.local_addr().unwrap().port());
    let events_phone = Phone::call(port, &with_events, "");
    assert!(events_phone.ok.contains("a=rtpmap:101 telephone-event/8000"), "the answer takes the events: {}", events_phone.ok);
    let tones_phone = Phone::call(port, &phone_sdp(tones_media.local_addr().unwrap().port(), "sendrecv"), "");
    let talkers = [(&events_media, &events_phone), (&tones_media, &tones_phone)].map(|(media, phone)| Silence::sent(media.try_clone().unwrap(), vec![port_of_media(&phone.ok)]));

    let (_, history) = get(&serve, &key, "/v1/calls/history");
    let calls = history["calls"].as_array().cloned().unwrap_or_default();
    assert_eq!(calls.len(), 2, "{history}");
    for call in &calls {
        let id = call["call_id"].as_str().unwrap();
        wait_for(&serve, &key, id, Duration::from_secs(30), |c| c["status"] == "in-progress");
        let (status, body) = post(&serve, &key, &format!("/v1/calls/{id}/actions"), json!({ "action": "dtmf", "digits": "1#" }));
        assert_eq!(status, 202, "{body}");
    }

    // Events: every packet of a key carries its first timestamp; the first is marked.
    let mut events: Vec<(u32, bool, char, bool, u16)> = Vec::new();
    let mut buffer = [0u8; 2048];
    events_media.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let start = std::time::Instant::now();
    while events.iter().filter(|e| e.3).count() < 6 && start.elapsed() < Duration::from_secs(40) {
        let Ok(length) = events_media.recv(&mut buffer) else { continue };
        let Ok(rtp) = ringline::transport::sip::parse_rtp(&buffer[..length]) else { continue };
        if rtp.payload_type == 101 {
            let (key, end) = ringline::transport::sip::telephone_event(rtp.payload).expect("a telephone-event");
            events.push((rtp.timestamp, rtp.marker, key, end, u16::from_be_bytes([rtp.payload[2], rtp.payload[3]])));
        }
    }
    let mut presses: Vec<(char, Vec<(bool, bool, u16)>)> = Vec::new();
    let mut timestamps = Vec::new();
    for (timestamp, marker, key, end, duration) in &events {
        if timestamps.last() != Some(timestamp) {
            timestamps.push(*timestamp);
            presses.push((*key, Vec::new()));
        }
        presses.last_mut().unwrap().1.push((*marker, *end, *duration));
    }
    assert_eq!(presses.iter().map(|(key, _)| *key).collect::<String>(), "1#", "{events:?}");
    for (key, packets) in &presses {
        let expected: Vec<(bool, bool, u16)> = (0..8u16).map(|n| (n == 0, n >= 5, 160 * (n.min(4) + 1))).collect();
        assert_eq!(packets, &expected, "{key}: marked first, 20 ms more each, 100 ms, then ended three times");
    }
    assert!(timestamps[1].wrapping_sub(timestamps[0]) >= 8 * 160, "the second key after the first's eight frames: {timestamps:?}");

    // Tones: the keys' two frequencies, row and column, in the audio, in order.
    tones_media.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut heard = Vec::new();
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(40) && !(heard.contains(&'1') && heard.contains(&'#')) {
        let Ok(length) = tones_media.recv(&mut buffer) else { continue };
        let Ok(rtp) = ringline::transport::sip::parse_rtp(&buffer[..length]) else { continue };
        assert_eq!(rtp.payload_type, 0, "no events to a phone that did not offer them");
        let frame = ringline::audio::g711::decode_mulaw(rtp.payload);
        if let Some(key) = keypad_tone(&frame).filter(|key| heard.last() != Some(key)) {
            heard.push(key);
        }
    }
    assert_eq!(heard, vec!['1', '#'], "the tones as heard");
    for talker in talkers {
        talker.stop();
    }
    for phone in [&events_phone, &tones_phone] {
        phone.send(&phone.request("BYE", 2, &[], None));
    }
}

/// The key whose two frequencies (one row's, one column's) dominate a 20 ms frame, if one does
/// (Goertzel's power at each of the eight).
fn keypad_tone(frame: &[f32]) -> Option<char> {
    let power = |frequency: f32| {
        let coefficient = 2.0 * (std::f32::consts::TAU * frequency / 8_000.0).cos();
        let (mut previous, mut before) = (0.0f32, 0.0f32);
        for &sample in frame {
            let current = sample + coefficient * previous - before;
            before = previous;
            previous = current;
        }
        previous * previous + before * before - coefficient * previous * before
    };
    let strongest = |frequencies: [f32; 4]| {
        let powers = frequencies.map(power);
        let (best, &top) = powers.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap();
        let others = powers.iter().enumerate().filter(|(i, _)| *i != best).map(|(_, p)| *p).fold(0.0f32, f32::max);
        (top > 50.0 && top > 10.0 * others).then_some(best)
    };
    let (row, column) = (strongest([697.0, 770.0, 852.0, 941.0])?, strongest([1209.0, 1336.0, 1477.0, 1633.0])?);
    Some([['1', '2', '3', 'A'], ['4', '5', '6', 'B'], ['7', '8', '9', 'C'], ['*', '0', '#', 'D']][row][column])
}

/// A call we place whose callee grants the shortest session, leaves the refreshing to us
/// (RFC 4028) and allows UPDATE: our UPDATE, without SDP, comes at half the interval, naming us
/// its refresher, and the call goes on once it is answered. (A peer that does not allow UPDATE
/// gets a re-INVITE: the inbound timer test.)
#[test]
fn a_placed_call_whose_callee_leaves_the_refreshing_to_us_is_refreshed() {
    let listener = Listener::start();
    let trunk = free_port();
    let scenario = format!(
        r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="a callee that keeps sessions short">
  <recv request="INVITE" crlf="true"/>
  <send retrans="500">
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:callee@[local_ip]:[local_port]>
      Allow: INVITE, ACK, CANCEL, BYE, UPDATE
      Session-Expires: 90;refresher=uac
      Require: timer
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=callee 1 1 IN IP4 [local_ip]
      s=-
      c=IN IP4 [local_ip]
      t=0 0
      m=audio {port} RTP/AVP 0
      a=rtpmap:0 PCMU/8000
    ]]>
  </send>
  <recv request="ACK" crlf="true"/>
  <recv request="UPDATE" timeout="80000"/>
  {refreshed}
  <recv request="BYE" timeout="30000"/>
  {bye_ok}
</scenario>
"#,
        port = listener.port,
        refreshed = reply("200 OK", false, &["Session-Expires: 90;refresher=uac", "Require: timer"], ""),
        bye_ok = reply("200 OK", false, &[], ""),
    );
    let dir = tempfile::tempdir().unwrap();
    let callee = sipp_command(&scenario, dir.path(), trunk).spawn().unwrap();
    let llm = standin::llm(vec![Reply::Text("A callee who said nothing."), Reply::Text("A callee who said nothing.")]);
    let mut assistant = crate::twilio::assistant(&llm);
    assistant["turn"] = json!({ "idle_reprompt_s": 200, "idle_hangup_s": 300, "max_duration_s": 300 });
    let Trunked { db: _db, serve, key, port, assistant_id } = with_a_trunk(trunk, assistant, &[]);
    let placed = std::time::Instant::now();
    let id = place_call(&serve, &key, &assistant_id);

    // The callee stays on the line (silence, in RTP, to the port our INVITE offered).
    let log_file = dir.path().join("sipp-messages.log");
    let offered = || std::fs::read_to_string(&log_file).unwrap_or_default().split("INVITE sip:+14155552672@").nth(1).and_then(|m| m.split("SIP/2.0 200").next().map(str::to_string));
    while offered().is_none_or(|sdp| !sdp.contains("m=audio")) && placed.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let talker = Silence::sent(UdpSocket::bind("127.0.0.1:0").unwrap(), vec![port_of_media(&offered().unwrap_or_default())]);

    // The refresh, answered: then the agent's side hangs up.
    let refresh_target = format!("UPDATE sip:callee@127.0.0.1:{trunk} SIP/2.0");
    let refreshed = || std::fs::read_to_string(&log_file).unwrap_or_default().split(&refresh_target).nth(1).is_some_and(|after| after.contains("SIP/2.0 200 OK"));
    while !refreshed() && placed.elapsed() < Duration::from_secs(90) {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(placed.elapsed() >= Duration::from_secs(40), "not refreshed before half the interval: {:?}", placed.elapsed());
    end_call(&serve, &key, &id);
    let (passed, log) = finish_sipp(callee.wait_with_output().unwrap(), dir.path());
    talker.stop();
    assert!(passed, "SIPp's callee saw the call its scenario expects (INVITE, ACK, the UPDATE, BYE): {log}");
    let done = wait_for(&serve, &key, &id, Duration::from_secs(30), crate::api::ended);
    assert_eq!(done["status"], "completed", "the call lived through its refresh: {done}");
    let (heard, _) = listener.stop();
    assert!(!heard.is_empty(), "the agent's RTP came");

    let messages = std::fs::read_to_string(&log_file).unwrap_or_default();
    let refresh = messages.split(&refresh_target).nth(1).and_then(|m| m.split("SIP/2.0 200 OK").next()).unwrap_or_default();
    let says = |line: &str| refresh.lines().any(|l| l.trim() == line);
    assert!(says("Session-Expires: 90;refresher=uac") && says("Supported: timer") && says("CSeq: 2 UPDATE") && says("Content-Length: 0"), "our refresh names us, its sender, the refresher, and offers nothing: {refresh}");
    assert!(refresh.contains(&format!("Via: SIP/2.0/UDP 127.0.0.1:{port}")), "{refresh}");
}

/// A hand-played phone on TCP: where it listens for the server's connections, and its media.
struct TcpPhone {
    listener: std::net::TcpListener,
    port: u16,
    _media: UdpSocket,
    media_port: u16,
}

impl TcpPhone {
    fn new() -> TcpPhone {
        let (listener, media) = (std::net::TcpListener::bind("127.0.0.1:0").unwrap(), UdpSocket::bind("127.0.0.1:0").unwrap());
        let (port, media_port) = (listener.local_addr().unwrap().port(), media.local_addr().unwrap().port());
        TcpPhone { listener, port, _media: media, media_port }
    }

    /// Its INVITE to the number: the Via naming its listening port, `contact` its Contact.
    fn invite(&self, contact: &str) -> String {
        let sdp = format!("v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio {} RTP/AVP 0\r\n", self.media_port);
        invite("14155552671", &sdp).replace("SIP/2.0/UDP 127.0.0.1:5999", &format!("SIP/2.0/TCP 127.0.0.1:{}", self.port)).replace("<sip:caller@127.0.0.1:5999>", contact)
    }
}

/// The hand-played TCP phone's ACK of the server's 200 `ok`, over a connection to the server at
/// `port`.
fn tcp_ack(ok: &str, port: u16, listening: u16) -> String {
    let to = header(ok, "To");
    format!("ACK sip:ringline@127.0.0.1:{port};transport=tcp SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:{listening};branch=z9hG4bK-ack\r\nFrom: <sip:{CALLER}@127.0.0.1>;tag=raw\r\n{to}\r\nCall-ID: raw-14155552671@127.0.0.1\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n")
}

/// The connection the server opens to `listener` within 15 s (for `what`).
fn accepted(listener: &std::net::TcpListener, what: &str) -> std::net::TcpStream {
    listener.set_nonblocking(true).unwrap();
    let start = std::time::Instant::now();
    let stream = loop {
        match listener.accept() {
            Ok((stream, _)) => break stream,
            Err(_) if start.elapsed() < Duration::from_secs(15) => std::thread::sleep(Duration::from_millis(50)),
            Err(error) => panic!("the server connected to the phone {what}: {error}"),
        }
    };
    stream.set_nonblocking(false).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream
}

/// Hangs the call up from the API.
fn end_call(serve: &Serve, key: &str, call_id: &str) {
    let (status, body) = post(serve, key, &format!("/v1/calls/{call_id}/end"), json!({}));
    assert_eq!(status, 202, "{body}");
}

/// Answers the BYE that comes on `connection` (its text from `BYE` on); the call ends
/// `completed`.
fn answer_bye(serve: &Serve, key: &str, call_id: &str, connection: &mut std::net::TcpStream) -> String {
    let text = read_until(connection, |t| t.split("BYE sip:").nth(1).is_some_and(|bye| bye.contains("\r\n\r\n")));
    let bye = text.find("BYE sip:").map(|at| text[at..].to_string()).unwrap_or_else(|| panic!("the BYE on the connection: {text}"));
    let reply = format!("SIP/2.0 200 OK\r\n{}\r\n{}\r\n{}\r\n{}\r\n{}\r\nContent-Length: 0\r\n\r\n", header(&bye, "Via"), header(&bye, "From"), header(&bye, "To"), header(&bye, "Call-ID"), header(&bye, "CSeq"));
    std::io::Write::write_all(connection, reply.as_bytes()).unwrap();
    let done = wait_for(serve, key, call_id, Duration::from_secs(30), crate::api::ended);
    assert_eq!(done["status"], "completed", "{done}");
    bye
}

/// A phone over TCP that closes its connection once the call is set up (as some PBXs do between
/// transactions): the agent's BYE comes on a new connection to the phone's Contact.
#[test]
fn a_tcp_phone_that_closed_its_connection_gets_the_bye_at_its_contact() {
    let llm = standin::llm(vec![Reply::Text("We open at nine in the morning."), Reply::Text("A caller who said nothing.")]);
    let (_db, serve, key, port, _) = answering(crate::twilio::assistant(&llm), &[]);
    let phone_side = TcpPhone::new();
    let contact_port = phone_side.port;
    let request = phone_side.invite(&format!("<sip:caller@127.0.0.1:{contact_port};transport=tcp>"));
    let mut phone = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    phone.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    std::io::Write::write_all(&mut phone, request.as_bytes()).unwrap();
    let answered = read_until(&mut phone, |t| t.contains("SIP/2.0 200") && t.ends_with("\r\n") && t.contains("m=audio"));
    let ok = answered.split("SIP/2.0 200").nth(1).unwrap_or_else(|| panic!("the call is answered over TCP: {answered}"));
    std::io::Write::write_all(&mut phone, tcp_ack(ok, port, contact_port).as_bytes()).unwrap();
    let call_id = call_in_progress(&serve, &key);
    drop(phone);
    std::thread::sleep(Duration::from_millis(300));

    end_call(&serve, &key, &call_id);
    let mut again = accepted(&phone_side.listener, "at its Contact for its BYE");
    let bye = answer_bye(&serve, &key, &call_id, &mut again);
    assert!(bye.starts_with(&format!("BYE sip:caller@127.0.0.1:{contact_port};transport=tcp SIP/2.0\r\n")) && bye.contains(&format!("Via: SIP/2.0/TCP 127.0.0.1:{port}")), "{bye}");
}

/// A phone over TCP that closes its connection right after its INVITE, and whose Contact names
/// a host (no names are resolved here): the answer comes on a new connection to the address it
/// came from at its Via's port (RFC 3261 18.2.2), and the call goes on on that connection.
#[test]
fn a_tcp_phone_gone_before_its_answer_gets_it_at_its_vias_port() {
    let llm = standin::llm(vec![Reply::Text("A caller who said nothing."), Reply::Text("A caller who said nothing.")]);
    let (_db, serve, key, port, _) = answering(crate::twilio::assistant(&llm), &[]);
    let phone_side = TcpPhone::new();
    let listening_port = phone_side.port;
    let mut phone = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    std::io::Write::write_all(&mut phone, phone_side.invite("<sip:caller@phone.invalid;transport=tcp>").as_bytes()).unwrap();
    drop(phone);

    let mut again = accepted(&phone_side.listener, "at its Via's port for the answer");
    let answered = read_until(&mut again, |t| t.contains("SIP/2.0 200") && t.ends_with("\r\n") && t.contains("m=audio"));
    let ok = answered.split("SIP/2.0 200").nth(1).unwrap_or_else(|| panic!("the answer on the new connection: {answered}"));
    assert!(ok.contains(&format!("Via: SIP/2.0/TCP 127.0.0.1:{listening_port}")), "{ok}");
    std::io::Write::write_all(&mut again, tcp_ack(ok, port, listening_port).as_bytes()).unwrap();
    let call_id = call_in_progress(&serve, &key);
    end_call(&serve, &key, &call_id);
    let bye = answer_bye(&serve, &key, &call_id, &mut again);
    assert!(bye.starts_with("BYE sip:caller@phone.invalid;transport=tcp SIP/2.0\r\n"), "to its Contact, on the connection its answer went by: {bye}");
}

/// A trunk reached over TCP (`--sip-trunk-transport tcp`): the server opens the connection, and
/// the INVITE, the ACK and the challenged BYE go on it, named TCP in their Via and Contact.
#[test]
fn an_outbound_call_goes_through_a_trunk_over_tcp() {
    let Placed { _db, serve, key, dir, listener, trunk, port, id, passed, log, .. } = placed_through_the_trunk("tcp");
    assert!(passed, "SIPp's callee over TCP saw the call its scenario expects (INVITE, ACK, BYE challenged and sent again): {log}");
    let done = wait_for(&serve, &key, &id, Duration::from_secs(30), crate::api::ended);
    assert_eq!(done["status"], "completed", "{done}");
    let (heard, _) = listener.stop();
    assert!(!heard.is_empty(), "the agent's RTP came");

    let messages = std::fs::read_to_string(dir.path().join("sipp-messages.log")).unwrap_or_default();
    let invite = messages.split(&format!("INVITE sip:+14155552672@127.0.0.1:{trunk};transport=tcp SIP/2.0")).nth(1).unwrap_or_else(|| panic!("the INVITE names the trunk's TCP: {log}"));
    let invite = invite.split("v=0").next().unwrap_or_default();
    assert!(invite.contains(&format!("Via: SIP/2.0/TCP 127.0.0.1:{port}")) && invite.contains(&format!("Contact: <sip:ringline@127.0.0.1:{port};transport=tcp>")), "{invite}");
    assert_eq!(messages.matches("INVITE sip:+14155552672").count(), 1, "over TCP the INVITE is sent once: {log}");
    assert!(messages.contains("Authorization: Digest username=\"ringline\"") && !messages.contains("SIP/2.0 403"), "the challenged BYE answered with credentials: {log}");
}

#[test]
fn a_trunk_that_asks_for_credentials_is_answered_with_them() {
    // The trunk challenges the INVITE (401, digest with qop=auth), checks the credentials the
    // second INVITE carries, and then answers busy if they are right, 403 if not.
    let trunk_scenario = format!(
        r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="a trunk that asks for credentials">
  <recv request="INVITE" crlf="true"/>
  {challenge}
  <recv request="ACK"/>
  <recv request="INVITE">
    <action>
      <verifyauth assign_to="authvalid" username="ringline" password="s3cret-Pa55"/>
    </action>
  </recv>
  <nop hide="true" test="authvalid" next="good"/>
  {refused}
  <label id="good"/>
  {busy}
  <label id="end"/>
  <recv request="ACK"/>
</scenario>
"#,
        challenge = reply("401 Unauthorized", true, &[r#"WWW-Authenticate: Digest realm="trunk.example", nonce="5ca1ab1e0ddba11", qop="auth""#], ""),
        refused = reply("403 Forbidden", true, &[], r#" next="end""#),
        busy = reply("486 Busy Here", true, &[], "")
    );
    let llm = standin::llm(vec![Reply::Text("Hello.")]);
    let dir = tempfile::tempdir().unwrap();
    let trunk = free_port();
    let db = Database::sqlite();
    let key = create_key(&db, "shop", &[]);
    let port = free_port();
    let serve = Serve::start(
        &db,
        &crate::api::repo_assistants(),
        &[
            ("RINGLINE_SIP_BIND", &format!("127.0.0.1:{port}")),
            ("RINGLINE_SIP_TRUNK", &format!("127.0.0.1:{trunk}")),
            ("RINGLINE_SIP_TRUNK_USER", "ringline"),
            ("RINGLINE_SIP_TRUNK_PASSWORD", "s3cret-Pa55"),
        ],
    );
    let (_, created) = post(&serve, &key, "/v1/assistants", crate::twilio::assistant(&llm));
    let (status, number) = post(&serve, &key, "/v1/numbers", json!({ "number": NUMBER, "assistant_id": created["id"] }));
    assert_eq!(status, 201, "{number}");
    let callee = sipp_command(&trunk_scenario, dir.path(), trunk).spawn().unwrap();
    let (status, call) = post(&serve, &key, "/v1/calls/outbound", json!({ "assistant_id": created["id"], "to_number": "+14155552672", "from_number": NUMBER }));
    assert_eq!(status, 201, "{call}");
    let (passed, log) = finish_sipp(callee.wait_with_output().unwrap(), dir.path());
    assert!(passed, "the trunk's scenario ran through: {log}");
    let done = wait_for(&serve, &key, call["call_id"].as_str().unwrap(), Duration::from_secs(30), crate::api::ended);
    assert_eq!(done["status"], "busy", "the credentials were right (a wrong answer gets 403, `failed`): {done}");
    let messages = std::fs::read_to_string(dir.path().join("sipp-messages.log")).unwrap_or_default();
    assert!(messages.contains("CSeq: 2 INVITE") && messages.contains("Authorization: Digest username=\"ringline\""), "{log}");
    assert!(!messages.contains("s3cret-Pa55"), "the password never crosses the wire");
}

/// A softphone as the caller: baresip (Debian's `baresip-core`) dials the number with its own
/// SIP stack and SDP, plays a recording from a file and writes what it hears to another.
#[test]
fn baresip_calls_in_and_hears_the_agent() {
    let llm = standin::llm(vec![
        Reply::Tool { text: "We open at nine in the morning. Goodbye.", name: "end_call", arguments: r#"{"reason":"answered"}"# },
        Reply::Text("The caller asked about opening hours."),
    ]);
    let (_db, serve, key, port, _) = answering(crate::twilio::assistant(&llm), &[]);

    // baresip's configuration: G.711 only, the recording (after 9 s of silence, the agent's
    // greeting) as the microphone, a bridge as the speaker, and every stream dumped to a file.
    let dir = tempfile::tempdir().unwrap();
    let audio = cards();
    let mut samples = vec![0.0f32; 8_000 * 9];
    samples.extend_from_slice(&audio);
    samples.extend(std::iter::repeat(0.0).take(8_000 * 30));
    let caller = dir.path().join("caller.wav");
    ringline::audio::Audio::new(samples, 8_000).write_wav(&caller).unwrap();
    let config = format!(
        "poll_method\t\tepoll\nnet_interface\t\t127.0.0.1\nsip_listen\t\t127.0.0.1:{}\naudio_player\t\taubridge,speaker\naudio_source\t\taufile,{}\naudio_alert\t\taubridge,speaker\n\
audio_srate\t\t8000\naudio_channels\t\t1\nmodule_path\t\t/usr/lib/baresip/modules\nmodule\t\t\tg711.so\nmodule\t\t\taufile.so\nmodule\t\t\taubridge.so\n\
module\t\t\tsndfile.so\nmodule_app\t\taccount.so\nmodule_app\t\tmenu.so\nsnd_path\t\t{}\n",
        free_port(),
        caller.display(),
        dir.path().display()
    );
    std::fs::write(dir.path().join("config"), config).unwrap();
    std::fs::write(dir.path().join("accounts"), "<sip:caller@127.0.0.1>;regint=0\n").unwrap();
    std::fs::write(dir.path().join("contacts"), "").unwrap();
    let output = Command::new("baresip")
        .args(["-f"])
        .arg(dir.path())
        .args(["-4", "-n", "127.0.0.1", "-e", &format!("/dial sip:14155552671@127.0.0.1:{port}"), "-t", "45"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("baresip runs (Debian's baresip-core, installed by .ci/setup)");
    let log = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));

    let (_, history) = get(&serve, &key, "/v1/calls/history");
    let call_id = history["calls"][0]["call_id"].as_str().unwrap_or_else(|| panic!("baresip's call reached the server: {history}\n{log}")).to_string();
    let done = wait_for(&serve, &key, &call_id, Duration::from_secs(30), crate::api::ended);
    assert_eq!(done["status"], "completed", "{done}\n{log}");

    // What baresip heard: its dump of the decoded incoming stream.
    let heard = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("dump-") && n.ends_with("-dec.wav")))
        .unwrap_or_else(|| panic!("baresip dumped what it heard: {log}"));
    let heard = ringline::audio::decode::decode_file(&heard).unwrap().to_rate(8_000).unwrap();
    let agent = crate::twilio::transcribe(&ringline::audio::g711::encode_mulaw(&heard.samples), dir.path(), "agent");
    assert!(word_recall("thank you for calling the hardware shop", &agent) >= 0.6, "the agent as baresip heard it: {agent:?}\n{log}");
    assert!(agent.to_lowercase().contains("nine") || agent.contains('9'), "the answer as heard: {agent:?}");

    let (_, transcript) = get(&serve, &key, &format!("/v1/calls/{call_id}/transcript"));
    let lines = transcript["transcript"].as_array().cloned().unwrap_or_default();
    let caller: Vec<String> = lines.iter().filter(|l| l["speaker"] == "caller").map(|l| l["text"].as_str().unwrap_or_default().to_string()).collect();
    assert!(word_recall("eight of spades four of clubs seven of hearts", &caller.join(" ")) >= 0.5, "baresip's caller as heard: {caller:?}");
}

#[test]
fn a_call_ended_while_it_rings_is_cancelled_at_the_trunk() {
    // The callee rings and never answers; the API's end cancels the INVITE, whose 487 is ACKed.
    let ringing = format!(
        r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="a callee that rings">
  <recv request="INVITE" crlf="true"/>
  {ringing}
  <recv request="CANCEL" timeout="60000"/>
  {cancel_ok}
  <send>
    <![CDATA[
      SIP/2.0 487 Request Terminated
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      CSeq: [cseq] INVITE
      Content-Length: 0
    ]]>
  </send>
  <recv request="ACK"/>
</scenario>
"#,
        ringing = reply("180 Ringing", true, &[], ""),
        cancel_ok = reply("200 OK", true, &[], "")
    );
    let llm = standin::llm(vec![Reply::Text("Hello.")]);
    let dir = tempfile::tempdir().unwrap();
    let trunk = free_port();
    let (_db, serve, key, _, assistant_id) = answering(crate::twilio::assistant(&llm), &[("RINGLINE_SIP_TRUNK", &format!("127.0.0.1:{trunk}"))]);
    let callee = sipp_command(&ringing, dir.path(), trunk).spawn().unwrap();
    let (status, call) = post(&serve, &key, "/v1/calls/outbound", json!({ "assistant_id": assistant_id, "to_number": "+14155552672", "from_number": NUMBER }));
    assert_eq!(status, 201, "{call}");
    let id = call["call_id"].as_str().unwrap().to_string();
    wait_for(&serve, &key, &id, Duration::from_secs(30), |body| body["status"] == "ringing");
    let (status, ended) = post(&serve, &key, &format!("/v1/calls/{id}/end"), json!({}));
    assert!(status < 300, "{ended}");
    let (passed, log) = finish_sipp(callee.wait_with_output().unwrap(), dir.path());
    assert!(passed, "the ringing INVITE was cancelled and the 487 ACKed: {log}");
    let done = wait_for(&serve, &key, &id, Duration::from_secs(30), crate::api::ended);
    assert_eq!(done["status"], "canceled", "{done}");
}

/// A phone that suppresses silence: it sends RTP only while its caller speaks, some packets
/// out of order and one lost, and nothing at all once the caller stops. The agent must hear the
/// words in order and the silence after them — the end of the turn — though no packet carries it.
/// The call comes through two record-routing proxies, and the phone moves its media mid-call.
#[test]
fn a_phone_that_sends_nothing_while_its_caller_is_quiet_is_answered() {
    let llm = standin::llm(vec![
        Reply::Tool { text: "We open at nine in the morning. Goodbye.", name: "end_call", arguments: r#"{"reason":"answered"}"# },
        Reply::Text("The caller asked about opening hours."),
    ]);
    let mut assistant = crate::twilio::assistant(&llm);
    // No prompt for a quiet caller: only the end of the caller's turn can bring the answer. The
    // phone's gaps between the recording's phrases (its quietest frames not sent) are up to
    // ~200 ms of silence, as long as the default endpointing: on a fast box a turn ended there
    // and was answered by the hang-up, which is not taken back. The test is about the silence
    // after the words, so it waits longer for it.
    assistant["turn"] = json!({ "idle_reprompt_s": 300, "idle_hangup_s": 600, "max_duration_s": 900, "endpointing_ms": 600 });
    let (_db, serve, key, port, _) = answering(assistant, &[]);

    // The call: INVITE, 200 OK, ACK, by hand. It comes through two proxies that record-route
    // it: our requests in the dialog must name them (Route), in order, or a carrier's edge
    // drops them.
    let media = UdpSocket::bind("127.0.0.1:0").unwrap();
    let media_port = media.local_addr().unwrap().port();
    let sdp = phone_sdp(media_port, "sendrecv");
    let record_route = "Record-Route: <sip:127.0.0.1:{sip_port};lr;ftag=raw>\r\nRecord-Route: <sip:edge.example;lr>\r\n";
    let phone = Phone::call(port, &sdp, record_route);
    let record_route = record_route.replace("{sip_port}", &phone.sip_port.to_string());
    assert!(phone.ok.contains(&record_route), "the 200 OK names the proxies: {}", phone.ok);

    // The agent's audio: collected on a thread from the media socket and from a second one,
    // where the caller will move the call's media; the greeting is over once it has gone quiet.
    let moved = UdpSocket::bind("127.0.0.1:0").unwrap();
    let moved_port = moved.local_addr().unwrap().port();
    let heard = Arc::new(std::sync::Mutex::new(([Vec::new(), Vec::new()], std::time::Instant::now())));
    let collector = {
        let (sockets, heard) = ([media.try_clone().unwrap(), moved.try_clone().unwrap()], heard.clone());
        std::thread::spawn(move || {
            let mut buffer = [0u8; 2048];
            for socket in &sockets {
                socket.set_nonblocking(true).unwrap();
            }
            // Everything waiting on both sockets, read each time round (and once more at the
            // end), so nothing is left unread when the test stops listening.
            let mut drain = |heard: &std::sync::Mutex<([Vec<u8>; 2], std::time::Instant)>| {
                for (which, socket) in sockets.iter().enumerate() {
                    while let Ok((length, _)) = socket.recv_from(&mut buffer) {
                        let mut heard = heard.lock().unwrap();
                        heard.0[which].extend_from_slice(&buffer[12.min(length)..length]);
                        heard.1 = std::time::Instant::now();
                    }
                }
            };
            let start = std::time::Instant::now();
            while start.elapsed() < Duration::from_secs(90) && Arc::strong_count(&heard) > 1 {
                drain(&heard);
                std::thread::sleep(Duration::from_millis(5));
            }
            drain(&heard);
            heard
        })
    };
    let greeted = std::time::Instant::now();
    while greeted.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
        let heard = heard.lock().unwrap();
        if !heard.0[0].is_empty() && heard.1.elapsed() > Duration::from_millis(1500) {
            break;
        }
    }

    // The phone moves its media to another port (a re-INVITE, as a carrier re-anchoring a call
    // does): the agent's audio follows it, and the caller's audio from there is heard.
    let reanswered = phone.reinvite(2, &phone_sdp(moved_port, "sendrecv"));
    let media_port_again = port_of_media(&reanswered);
    let media = moved;
    // A session refresh (RFC 4028) by UPDATE without SDP: answered, nothing changed.
    phone.send(&phone.request("UPDATE", 3, &[], None));
    let refreshed = phone.read(Duration::from_secs(10), &|m| m.contains("CSeq: 3 UPDATE")).expect("the UPDATE is answered");
    assert!(refreshed.starts_with("SIP/2.0 200") && refreshed.contains("Content-Length: 0"), "{refreshed}");

    // The caller speaks: 20 ms frames on the clock, only those with speech in them sent, every
    // fifth pair swapped in flight and the 30th lost; then nothing.
    let audio = cards();
    let frames: Vec<&[f32]> = audio.chunks_exact(160).collect();
    let loud = |frame: &[f32]| (frame.iter().map(|s| s * s).sum::<f32>() / 160.0).sqrt() > 0.01;
    let (ssrc, first_timestamp) = (0x5eed_u32, 4_000_000_000u32);
    let (mut sequence, mut sent, mut held_back) = (7u16, 0usize, None::<Vec<u8>>);
    let server_media = ("127.0.0.1", media_port_again);
    let start = std::time::Instant::now();
    for (index, frame) in frames.iter().enumerate() {
        let due = Duration::from_millis(20 * index as u64);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
        if !loud(frame) {
            continue;
        }
        let timestamp = first_timestamp.wrapping_add(160 * index as u32);
        let packet = ringline::transport::sip::rtp_packet(sent == 0, 0, sequence, timestamp, ssrc, &ringline::audio::g711::encode_mulaw(frame));
        sequence = sequence.wrapping_add(1);
        sent += 1;
        if sent == 30 {
            continue;
        }
        match held_back.take() {
            Some(earlier) => {
                media.send_to(&packet, server_media).unwrap();
                media.send_to(&earlier, server_media).unwrap();
            }
            None if sent % 10 == 5 => held_back = Some(packet),
            None => {
                media.send_to(&packet, server_media).unwrap();
            }
        }
    }
    assert!(sent > 50 && sent + 20 < frames.len(), "the phone suppressed the recording's quiet frames ({sent} of {} sent)", frames.len());

    // The agent answers after the caller's silence, and hangs up.
    let bye = phone.read(Duration::from_secs(40), &|m| m.starts_with("BYE ")).expect("the agent answered the quiet caller and hung up");
    assert!(bye.starts_with("BYE sip:caller@127.0.0.1:") && bye.contains(&record_route.replace("Record-Route", "Route")), "the BYE goes to the caller's Contact through the proxies: {bye}");
    phone.send(&phone.respond(&bye, "200 OK", None));

    let (_, history) = get(&serve, &key, "/v1/calls/history");
    let call_id = history["calls"][0]["call_id"].as_str().unwrap_or_else(|| panic!("one call: {history}")).to_string();
    let done = wait_for(&serve, &key, &call_id, Duration::from_secs(30), crate::api::ended);
    assert_eq!(done["status"], "completed", "{done}");
    let (_, transcript) = get(&serve, &key, &format!("/v1/calls/{call_id}/transcript"));
    let lines = transcript["transcript"].as_array().cloned().unwrap_or_default();
    let caller: Vec<String> = lines.iter().filter(|l| l["speaker"] == "caller").map(|l| l["text"].as_str().unwrap_or_default().to_string()).collect();
    assert!(word_recall("eight of spades four of clubs seven of hearts", &caller.join(" ")) >= 0.6, "the caller, in order despite the network: {caller:?}");
    drop(heard);
    let [greeting, answer] = std::mem::take(&mut collector.join().unwrap().lock().unwrap().0);
    let dir = tempfile::tempdir().unwrap();
    let greeting = crate::twilio::transcribe(&greeting, dir.path(), "greeting");
    assert!(word_recall("thank you for calling the hardware shop", &greeting) >= 0.6, "the greeting, at the first media address: {greeting:?}");
    let answer = crate::twilio::transcribe(&answer, dir.path(), "answer");
    assert!((answer.to_lowercase().contains("nine") || answer.contains('9')) && word_recall("we open at nine in the morning goodbye", &answer) >= 0.6, "the answer, whole, at the address the media moved to: {answer:?}");
}

/// A phone that sends no RTP until its caller speaks, and a caller who speaks over the
/// greeting: the caller is heard whole, and placed in the call when it spoke. The echo
/// canceller pairs what the caller's side carries with what the agent played at the same
/// moment; a line that gave the listener nothing before the phone's first packet left it
/// pairing the caller's first words with greeting audio from seconds before (on a busy box
/// the canceller then took them for echo) and placed them seconds early.
#[test]
fn a_caller_whose_first_packet_comes_over_the_greeting_is_heard_whole() {
    let llm = standin::llm(vec![
        Reply::Tool { text: "We open at nine in the morning. Goodbye.", name: "end_call", arguments: r#"{"reason":"answered"}"# },
        Reply::Text("The caller asked about opening hours."),
    ]);
    let (_db, serve, key, port, _) = answering(crate::twilio::assistant(&llm), &[]);
    let media = UdpSocket::bind("127.0.0.1:0").unwrap();
    let phone = Phone::call(port, &phone_sdp(media.local_addr().unwrap().port(), "sendrecv"), "");
    let server_media = ("127.0.0.1", port_of_media(&phone.ok));

    // The greeting begins; three seconds into it the caller speaks, in every 20 ms frame.
    media.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut buffer = [0u8; 2048];
    media.recv_from(&mut buffer).expect("the greeting begins");
    std::thread::sleep(Duration::from_secs(3));
    let audio = cards();
    let start = std::time::Instant::now();
    for (index, frame) in audio.chunks_exact(160).enumerate() {
        if let Some(wait) = Duration::from_millis(20 * index as u64).checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
        let packet = ringline::transport::sip::rtp_packet(index == 0, 0, index as u16, 160 * index as u32, 0x5eed, &ringline::audio::g711::encode_mulaw(frame));
        media.send_to(&packet, server_media).unwrap();
    }

    let bye = phone.read(Duration::from_secs(40), &|m| m.starts_with("BYE ")).expect("the agent answered the caller and hung up");
    phone.send(&phone.respond(&bye, "200 OK", None));
    let (_, history) = get(&serve, &key, "/v1/calls/history");
    let call_id = history["calls"][0]["call_id"].as_str().unwrap_or_else(|| panic!("one call: {history}")).to_string();
    wait_for(&serve, &key, &call_id, Duration::from_secs(30), crate::api::ended);
    let (_, transcript) = get(&serve, &key, &format!("/v1/calls/{call_id}/transcript"));
    let lines = transcript["transcript"].as_array().cloned().unwrap_or_default();
    let caller: Vec<String> = lines.iter().filter(|l| l["speaker"] == "caller").map(|l| l["text"].as_str().unwrap_or_default().to_string()).collect();
    assert!(word_recall("eight of spades four of clubs seven of hearts", &caller.join(" ")) >= 0.75, "the caller, first words included: {caller:?}");
    // The caller's words are placed when they were said: the line's clock ran from the answer,
    // so the listener's time (and the canceller's pairing) is the call's. Heard from the
    // first packet on, they would sit three seconds early, at the greeting's start.
    let at = |speaker: &str| lines.iter().find(|l| l["speaker"] == speaker).and_then(|l| l["at_ms"].as_i64()).unwrap_or_else(|| panic!("a {speaker} line: {lines:?}"));
    assert!(at("caller") >= at("agent") + 3_000, "the caller's turn ended at {} ms, the greeting began at {} ms, and the caller spoke 3 s into it for 3 s", at("caller"), at("agent"));
}

/// A phone that puts the agent on hold (a re-INVITE saying `a=sendonly`, as a handset's hold
/// key does) and takes it off again: the answers mirror each offer's direction under a new
/// SDP version, the agent goes on hold (it stops talking and nothing goes to the phone), and
/// off hold it answers the caller again.
#[test]
fn a_phone_that_holds_the_call_is_sent_nothing_until_it_resumes() {
    let llm = standin::llm(vec![Reply::Text("You pressed five."), Reply::Text("The caller held the call, came back and pressed five.")]);
    let (_db, serve, key, port, _) = answering(crate::twilio::assistant(&llm), &[]);

    // When each of the agent's packets arrived.
    let media = UdpSocket::bind("127.0.0.1:0").unwrap();
    let media_port = media.local_addr().unwrap().port();
    media.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let arrivals = Arc::new(std::sync::Mutex::new(Vec::<std::time::Instant>::new()));
    let collector = {
        let arrivals = arrivals.clone();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 2048];
            let start = std::time::Instant::now();
            while start.elapsed() < Duration::from_secs(90) && Arc::strong_count(&arrivals) > 1 {
                if media.recv_from(&mut buffer).is_ok() {
                    arrivals.lock().unwrap().push(std::time::Instant::now());
                }
            }
        })
    };
    let count_since = |since: std::time::Instant| arrivals.lock().unwrap().iter().filter(|&&at| at >= since).count();
    let phone = Phone::call(port, &phone_sdp(media_port, "sendrecv"), "");
    let first = sdp_version(&phone.ok);
    assert!(phone.ok.contains("a=sendrecv\r\n"), "{}", phone.ok);

    // The greeting begins (about seven seconds of it); the phone holds at once.
    let called = std::time::Instant::now();
    while count_since(called) < 5 && called.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(count_since(called) >= 5, "the greeting's audio arrived before the hold");
    let held = phone.reinvite(2, &phone_sdp(media_port, "sendonly"));
    let quiet_from = std::time::Instant::now() + Duration::from_millis(200);
    assert!(held.contains("a=recvonly\r\n") && !held.contains("a=sendrecv"), "a phone that only sends is only received: {held}");
    assert_eq!(sdp_version(&held), first + 1, "a changed answer is a new version: {held}");
    std::thread::sleep(Duration::from_millis(1700));
    assert_eq!(count_since(quiet_from), 0, "nothing is sent to a phone that holds the call");

    // Off hold: the answer flows both ways again; a key pressed is answered.
    let resumed = phone.reinvite(3, &phone_sdp(media_port, "sendrecv"));
    assert!(resumed.contains("a=sendrecv\r\n"), "{resumed}");
    assert_eq!(sdp_version(&resumed), first + 2, "{resumed}");
    // The same offer again (a session refresh by re-INVITE) keeps the version.
    assert_eq!(sdp_version(&phone.reinvite(4, &phone_sdp(media_port, "sendrecv"))), first + 2);
    let back = std::time::Instant::now();
    phone.send(&phone.request("INFO", 5, &["Content-Type: application/dtmf-relay"], Some("Signal=5\r\nDuration=160\r\n")));
    while count_since(back) < 25 && back.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(count_since(back) >= 25, "the agent answers again after the hold ({} packets)", count_since(back));

    // The phone hangs up.
    phone.send(&phone.request("BYE", 6, &[], None));
    let bye_ok = phone.read(Duration::from_secs(10), &|m| m.contains("CSeq: 6 BYE")).expect("the BYE is answered");
    assert!(bye_ok.starts_with("SIP/2.0 200"), "{bye_ok}");
    drop(arrivals);
    collector.join().unwrap();
    let (_, history) = get(&serve, &key, "/v1/calls/history");
    let call_id = history["calls"][0]["call_id"].as_str().unwrap_or_else(|| panic!("one call: {history}")).to_string();
    // The phone's hold was the call's: on hold, then off, in its events.
    let events = held_and_resumed(&serve, &key, &call_id);
    assert!(events.contains(r#""by":"caller""#), "the hold was the phone's: {events}");
}

/// The API's hold is the phone's to know: the server re-INVITEs it `sendonly` (in a glare,
/// both sides re-INVITEing at once, it refuses the phone's offer with 491 and offers again after
/// the phone's 491), acknowledges the answer (again when the answer comes again), answers the
/// phone's own offer meanwhile as the holder — the phone holding and coming back leaves the
/// API's hold in place — and takes the call off hold the same way.
#[test]
fn the_apis_hold_is_offered_to_the_phone_and_taken_off_the_same_way() {
    let llm = standin::llm(vec![Reply::Text("Still here."), Reply::Text("Held through the API and taken off hold.")]);
    let (_db, serve, key, port, _) = answering(crate::twilio::assistant(&llm), &[]);
    let media = UdpSocket::bind("127.0.0.1:0").unwrap();
    let media_port = media.local_addr().unwrap().port();
    let phone = Phone::call(port, &phone_sdp(media_port, "sendrecv"), "");
    let answered = sdp_version(&phone.ok);
    let call_id = call_in_progress(&serve, &key);
    let action = |action: &str| act(&serve, &key, &call_id, action);
    let cseq_of = |message: &str| header(message, "CSeq");
    let acked = |request: &str| {
        let number = cseq_of(request).split_whitespace().nth(1).unwrap_or_default().to_string();
        let want = format!("CSeq: {number} ACK");
        phone.read(Duration::from_secs(5), &|m| m.starts_with("ACK ") && m.contains(&want)).is_some()
    };

    // On hold: our offer says we only send.
    action("hold");
    let first = phone.read(Duration::from_secs(10), &|m| m.starts_with("INVITE ")).expect("the hold is offered to the phone");
    assert!(first.contains("a=sendonly\r\n") && sdp_version(&first) == answered + 1, "{first}");
    // The phone was re-INVITEing at that moment too: each side's offer is refused with 491.
    phone.send(&phone.request("INVITE", 2, &[], Some(&phone_sdp(media_port, "sendrecv"))));
    let refused = phone.read(Duration::from_secs(5), &|m| m.contains("CSeq: 2 INVITE")).expect("the phone's offer is answered");
    assert!(refused.starts_with("SIP/2.0 491"), "a glare: {refused}");
    phone.send(&phone.ack(2));
    phone.send(&phone.respond(&first, "491 Request Pending", None));
    assert!(acked(&first), "the server acknowledges the phone's 491");
    let again = phone.read(Duration::from_secs(10), &|m| m.starts_with("INVITE ") && cseq_of(m) != cseq_of(&first)).expect("the hold is offered again after the glare");
    assert!(again.contains("a=sendonly\r\n"), "{again}");
    let ok = phone.respond(&again, "200 OK", Some(&phone_sdp(media_port, "recvonly")));
    phone.send(&ok);
    assert!(acked(&again), "the phone's answer is acknowledged");
    phone.send(&ok);
    assert!(acked(&again), "an answer that comes again (its ACK was lost) is acknowledged again");
    // The phone's own offer while we hold is answered as the holder's: we take no audio.
    let held = phone.reinvite(3, &phone_sdp(media_port, "sendrecv"));
    assert!(held.contains("a=sendonly\r\n"), "{held}");
    // The phone holds too, and comes back: the API's hold stands. A key pressed then is not
    // answered aloud (the agent is held; it would say "Still here.").
    let both = phone.reinvite(4, &phone_sdp(media_port, "sendonly"));
    assert!(both.contains("a=inactive\r\n"), "both sides hold: {both}");
    let back = phone.reinvite(5, &phone_sdp(media_port, "sendrecv"));
    assert!(back.contains("a=sendonly\r\n"), "the API still holds: {back}");
    media.set_nonblocking(true).unwrap();
    let mut buffer = [0u8; 2048];
    while media.recv_from(&mut buffer).is_ok() {}
    media.set_nonblocking(false).unwrap();
    media.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    phone.send(&phone.request("INFO", 6, &["Content-Type: application/dtmf-relay"], Some("Signal=5\r\nDuration=160\r\n")));
    let pressed = std::time::Instant::now();
    let mut heard = 0;
    while pressed.elapsed() < Duration::from_secs(4) {
        heard += media.recv_from(&mut buffer).is_ok() as usize;
    }
    assert_eq!(heard, 0, "the phone's coming back took the call off the API's hold: the agent spoke");

    // Off hold: our offer flows both ways again.
    action("unhold");
    let resumed = phone.read(Duration::from_secs(10), &|m| m.starts_with("INVITE ")).expect("taking the call off hold is offered to the phone");
    assert!(resumed.contains("a=sendrecv\r\n") && sdp_version(&resumed) > sdp_version(&again), "{resumed}");
    phone.send(&phone.respond(&resumed, "200 OK", Some(&phone_sdp(media_port, "sendrecv"))));
    assert!(acked(&resumed), "{resumed}");

    phone.send(&phone.request("BYE", 7, &[], None));
    let bye_ok = phone.read(Duration::from_secs(10), &|m| m.contains("CSeq: 7 BYE")).expect("the BYE is answered");
    assert!(bye_ok.starts_with("SIP/2.0 200"), "{bye_ok}");
    // The API held first and took its hold off last; the phone's own hold came and went between.
    let events = held_and_resumed(&serve, &key, &call_id);
    let holds: Vec<String> = events
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|data| serde_json::from_str::<Value>(data.trim()).ok())
        .filter(|e| e["type"] == "hold" || e["type"] == "unhold")
        .map(|e| format!("{} by {}", e["type"].as_str().unwrap_or_default(), e["by"].as_str().unwrap_or("api")))
        .collect();
    assert_eq!(holds, ["hold by api", "hold by caller", "unhold by caller", "unhold by api"], "{events}");
}

/// A key pressing hold and unhold again and again while the phone has not yet answered the
/// first offer: one offer is in flight at a time, and when it is answered the server offers
/// only what the API asked last — here nothing more, the last request being a hold again.
#[test]
fn the_apis_hold_pressed_again_and_again_is_offered_once_per_change_that_stands() {
    let llm = standin::llm(vec![Reply::Text("Still here."), Reply::Text("Held and taken off hold through the API.")]);
    let (_db, serve, key, port, _) = answering(crate::twilio::assistant(&llm), &[]);
    let media = UdpSocket::bind("127.0.0.1:0").unwrap();
    let media_port = media.local_addr().unwrap().port();
    let phone = Phone::call(port, &phone_sdp(media_port, "sendrecv"), "");
    let call_id = call_in_progress(&serve, &key);
    let action = |action: &str| act(&serve, &key, &call_id, action);
    let cseq_of = |message: &str| header(message, "CSeq");

    action("hold");
    let first = phone.read(Duration::from_secs(10), &|m| m.starts_with("INVITE ")).expect("the hold is offered to the phone");
    assert!(first.contains("a=sendonly\r\n"), "{first}");
    // While the phone thinks it over, the key is pressed four more times.
    for again in ["unhold", "hold", "unhold", "hold"] {
        action(again);
    }
    let other_offer = |wait: u64| phone.read(Duration::from_secs(wait), &|m| m.starts_with("INVITE ") && cseq_of(m) != cseq_of(&first));
    assert!(other_offer(1).is_none(), "a second offer went out before the first was answered");
    phone.send(&phone.respond(&first, "200 OK", Some(&phone_sdp(media_port, "recvonly"))));
    assert!(other_offer(3).is_none(), "the API's last word was a hold, which the phone has taken: nothing more to offer");

    // Taken off hold once more: one offer, flowing both ways.
    action("unhold");
    let resumed = phone.read(Duration::from_secs(10), &|m| m.starts_with("INVITE ") && cseq_of(m) != cseq_of(&first)).expect("taking the call off hold is offered");
    assert!(resumed.contains("a=sendrecv\r\n"), "{resumed}");
    phone.send(&phone.respond(&resumed, "200 OK", Some(&phone_sdp(media_port, "sendrecv"))));

    phone.send(&phone.request("BYE", 2, &[], None));
    let bye_ok = phone.read(Duration::from_secs(10), &|m| m.contains("CSeq: 2 BYE")).expect("the BYE is answered");
    assert!(bye_ok.starts_with("SIP/2.0 200"), "{bye_ok}");
    held_and_resumed(&serve, &key, &call_id);
}

/// The id of the one call the server answered, once it is in progress.
fn call_in_progress(serve: &Serve, key: &str) -> String {
    let start = std::time::Instant::now();
    let call_id = loop {
        let (_, history) = get(serve, key, "/v1/calls/history");
        if let Some(id) = history["calls"][0]["call_id"].as_str() {
            break id.to_string();
        }
        assert!(start.elapsed() < Duration::from_secs(30), "the call is listed: {history}");
        std::thread::sleep(Duration::from_millis(100));
    };
    wait_for(serve, key, &call_id, Duration::from_secs(30), |c| c["status"] == "in-progress");
    call_id
}

/// Asks the API for `action` (`hold`, `unhold`) on the call; it is accepted.
fn act(serve: &Serve, key: &str, call_id: &str, action: &str) {
    let (status, body) = post(serve, key, &format!("/v1/calls/{call_id}/actions"), json!({ "action": action }));
    assert_eq!(status, 202, "{action}: {body}");
}

/// The version in the `o=` line of the SDP in `message`.
fn sdp_version(message: &str) -> u64 {
    message.lines().find_map(|l| l.strip_prefix("o=")).and_then(|o| o.split(' ').nth(2)).and_then(|v| v.parse().ok()).expect("an o= line")
}

/// Waits for the call to end completed; its events, which show it held and then taken off hold.
fn held_and_resumed(serve: &Serve, key: &str, call_id: &str) -> String {
    let done = wait_for(serve, key, call_id, Duration::from_secs(30), crate::api::ended);
    assert_eq!(done["status"], "completed", "{done}");
    let (_, _, events) = crate::api::http("GET", &serve.url(&format!("/v1/calls/{call_id}/events")), Some(key), None);
    let events = events.as_str().unwrap_or_default().to_string();
    let (on, off) = (events.find(r#""type":"hold""#), events.find(r#""type":"unhold""#));
    assert!(on.is_some() && off.is_some() && on < off, "held, then taken off hold: {events}");
    events
}

/// A phone's SDP offer: PCMU at `media_port` on loopback, flowing `direction`.
fn phone_sdp(media_port: u16, direction: &str) -> String {
    format!("v=0\r\no=phone 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {media_port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na={direction}\r\n")
}

/// A header line of `message` as it stands (`From: <sip:…>;tag=…`), or empty.
fn header(message: &str, name: &str) -> String {
    message.lines().find(|l| l.to_lowercase().starts_with(&format!("{}:", name.to_lowercase()))).unwrap_or_default().to_string()
}

/// A phone played by hand on a signalling socket of its own: one dialog with the server.
struct Phone {
    signalling: UdpSocket,
    sip_port: u16,
    server: u16,
    /// The server's 200 OK to the INVITE.
    ok: String,
}

impl Phone {
    /// Calls the number with `sdp` (`headers` before From, `{sip_port}` in them the phone's
    /// port), waits for the answer and acknowledges it. As a phone on UDP does, it sends the
    /// INVITE again (every 500 ms, then doubling) until the server's first response.
    fn call(server: u16, sdp: &str, headers: &str) -> Phone {
        let signalling = UdpSocket::bind("127.0.0.1:0").unwrap();
        let sip_port = signalling.local_addr().unwrap().port();
        signalling.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let mut phone = Phone { signalling, sip_port, server, ok: String::new() };
        let headers = headers.replace("{sip_port}", &sip_port.to_string());
        let request = invite(NUMBER.trim_start_matches('+'), sdp)
            .replace("5999", &sip_port.to_string())
            .replace("Call-ID: raw-", &format!("Call-ID: raw-{sip_port}-"))
            .replacen("From: ", &format!("{headers}From: "), 1);
        let start = std::time::Instant::now();
        let (mut resend_at, mut interval) = (Duration::ZERO, Duration::from_millis(500));
        let mut heard: Vec<String> = Vec::new();
        let mut buffer = [0u8; 4096];
        phone.ok = loop {
            assert!(start.elapsed() < Duration::from_secs(30), "the INVITE is answered within 30 s; the server said {heard:?}");
            if heard.is_empty() && start.elapsed() >= resend_at {
                phone.send(&request);
                resend_at += interval;
                interval = (interval * 2).min(Duration::from_secs(4));
            }
            if let Ok((length, _)) = phone.signalling.recv_from(&mut buffer) {
                let message = String::from_utf8_lossy(&buffer[..length]).to_string();
                if message.starts_with("SIP/2.0 200") {
                    break message;
                }
                heard.push(message.lines().next().unwrap_or_default().to_string());
            }
        };
        phone.signalling.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        phone.send(&phone.ack(1));
        phone
    }

    fn send(&self, text: &str) {
        self.signalling.send_to(text.as_bytes(), ("127.0.0.1", self.server)).unwrap();
    }

    /// The first message from the server within `deadline` that `want` picks.
    fn read(&self, deadline: Duration, want: &dyn Fn(&str) -> bool) -> Option<String> {
        let start = std::time::Instant::now();
        let mut buffer = [0u8; 4096];
        while start.elapsed() < deadline {
            if let Ok((length, _)) = self.signalling.recv_from(&mut buffer) {
                let message = String::from_utf8_lossy(&buffer[..length]).to_string();
                if want(&message) {
                    return Some(message);
                }
            }
        }
        None
    }

    fn ack(&self, cseq: u32) -> String {
        let target = format!("sip:{}@127.0.0.1:{}", NUMBER.trim_start_matches('+'), self.server);
        self.request_to(&target, "ACK", cseq, &[], None)
    }

    /// A request in the dialog, to the server's Contact; a body is SDP unless `extra` names
    /// its Content-Type.
    fn request(&self, method: &str, cseq: u32, extra: &[&str], sdp: Option<&str>) -> String {
        let contact = ringline::transport::sip::uri_of(header(&self.ok, "Contact").split_once(':').map(|(_, v)| v).unwrap_or_default()).to_string();
        self.request_to(&contact, method, cseq, extra, sdp)
    }

    fn request_to(&self, target: &str, method: &str, cseq: u32, extra: &[&str], body: Option<&str>) -> String {
        let sip_port = self.sip_port;
        let mut text = format!(
            "{method} {target} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{sip_port};branch=z9hG4bK-{}{cseq}\r\n{}\r\n{}\r\n{}\r\nCSeq: {cseq} {method}\r\nContact: <sip:caller@127.0.0.1:{sip_port}>\r\n",
            method.to_lowercase(),
            header(&self.ok, "From"),
            header(&self.ok, "To"),
            header(&self.ok, "Call-ID")
        );
        for line in extra {
            text.push_str(line);
            text.push_str("\r\n");
        }
        match body {
            Some(body) => {
                if !extra.iter().any(|line| line.starts_with("Content-Type:")) {
                    text.push_str("Content-Type: application/sdp\r\n");
                }
                text.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
            }
            None => text.push_str("Content-Length: 0\r\n\r\n"),
        }
        text
    }

    /// The phone's response to the server's `request`: `status` ("200 OK"), its SDP `body`.
    fn respond(&self, request: &str, status: &str, body: Option<&str>) -> String {
        let mut text = format!("SIP/2.0 {status}
");
        for line in request.lines().filter(|l| l.to_lowercase().starts_with("via:")) {
            text.push_str(&format!("{line}
"));
        }
        for name in ["From", "To", "Call-ID", "CSeq"] {
            text.push_str(&format!("{}
", header(request, name)));
        }
        text.push_str(&format!("Contact: <sip:caller@127.0.0.1:{}>
", self.sip_port));
        match body {
            Some(body) => text.push_str(&format!("Content-Type: application/sdp
Content-Length: {}

{body}", body.len())),
            None => text.push_str("Content-Length: 0

"),
        }
        text
    }

    /// A re-INVITE offering `sdp`: its 200 OK, acknowledged.
    fn reinvite(&self, cseq: u32, sdp: &str) -> String {
        self.send(&self.request("INVITE", cseq, &[], Some(sdp)));
        let cseq_line = format!("CSeq: {cseq} INVITE");
        let answer = self.read(Duration::from_secs(10), &|m| m.starts_with("SIP/2.0 200") && m.contains(&cseq_line)).expect("the re-INVITE is answered");
        self.send(&self.ack(cseq));
        answer
    }
}

/// The port of the media the SDP in `message` offers.
fn port_of_media(message: &str) -> u16 {
    message.lines().find_map(|l| l.strip_prefix("m=audio ")).and_then(|rest| rest.split(' ').next()).and_then(|p| p.parse().ok()).expect("an SDP with an audio line")
}

/// A trunk that sends an account's calls to where it registered: SIPp as its registrar asks
/// for credentials, checks them, grants two seconds, and sees the registration refreshed.
#[test]
fn the_server_registers_with_the_trunk_and_keeps_it_fresh() {
    let registrar = format!(
        r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="a registrar">
  <recv request="REGISTER" crlf="true"/>
  {challenge}
  <recv request="REGISTER">
    <action>
      <verifyauth assign_to="regauth" username="ringline" password="s3cret-Pa55"/>
    </action>
  </recv>
  <nop hide="true" test="regauth" next="good"/>
  {refused}
  <label id="good"/>
  {}
  <recv request="REGISTER" timeout="10000"/>
  {}
  <label id="end"/>
</scenario>
"#,
        reply("200 OK", true, &["[last_Contact:];expires=2"], ""),
        reply("200 OK", false, &["[last_Contact:];expires=2"], ""),
        challenge = reply("401 Unauthorized", true, &[r#"WWW-Authenticate: Digest realm="trunk.example", nonce="4e6157e4", qop="auth""#], ""),
        refused = reply("403 Forbidden", false, &[], r#" next="end""#),
    );
    // Over UDP, and over TCP to a trunk reached that way (`--sip-trunk-transport tcp`).
    for (transport, uri_param) in [("udp", ""), ("tcp", ";transport=tcp")] {
        let dir = tempfile::tempdir().unwrap();
        let trunk = free_port();
        let mut command = sipp_command(&registrar, dir.path(), trunk);
        if transport == "tcp" {
            command.args(["-t", "t1"]);
        }
        let registrar = command.spawn().expect("sipp runs (Debian's sip-tester, installed by .ci/setup)");
        let db = Database::sqlite();
        let (_serve, port) = registering(&db, trunk, &[("RINGLINE_SIP_TRUNK_TRANSPORT", transport)]);
        let (passed, log) = finish_sipp(registrar.wait_with_output().unwrap(), dir.path());
        assert!(passed, "registered over {transport}, challenged, then refreshed as the registrar's scenario says: {log}");
        let messages = std::fs::read_to_string(dir.path().join("sipp-messages.log")).unwrap_or_default();
        assert!(messages.contains(&format!("REGISTER sip:127.0.0.1:{trunk}{uri_param} SIP/2.0")), "{log}");
        assert!(messages.contains(&format!("Via: SIP/2.0/{} 127.0.0.1:{port}", transport.to_uppercase())), "{log}");
        assert!(messages.contains(&format!("Contact: <sip:ringline@127.0.0.1:{port}{uri_param}>")), "our Contact is what the trunk calls: {log}");
        assert!(messages.contains("Authorization: Digest username=\"ringline\"") && !messages.contains("SIP/2.0 403"), "the challenge answered with the right credentials: {log}");
        assert!(!messages.contains("s3cret-Pa55"), "the password never crosses the wire");
    }
}

/// A server that registers with the trunk at `trunk` as `ringline` (and `extra` settings), and
/// the port of its SIP endpoint.
fn registering(db: &Database, trunk: u16, extra: &[(&str, &str)]) -> (Serve, u16) {
    let port = free_port();
    let (bind, trunk) = (format!("127.0.0.1:{port}"), format!("127.0.0.1:{trunk}"));
    let mut settings = vec![
        ("RINGLINE_SIP_BIND", bind.as_str()),
        ("RINGLINE_SIP_TRUNK", trunk.as_str()),
        ("RINGLINE_SIP_TRUNK_USER", "ringline"),
        ("RINGLINE_SIP_TRUNK_PASSWORD", "s3cret-Pa55"),
        ("RINGLINE_SIP_REGISTER", "true"),
    ];
    settings.extend_from_slice(extra);
    (Serve::start(db, &crate::api::repo_assistants(), &settings), port)
}

/// Registered from behind a NAT, the server keeps the mapping open that the trunk's calls come
/// back through: between refreshes, a keep-alive (CRLF) goes to the trunk every
/// `--sip-keepalive` seconds. The registrar is played by hand and grants five minutes, so what
/// comes after the REGISTER in the next seconds is keep-alives and no refresh.
#[test]
fn a_registered_server_keeps_the_way_back_through_a_nat_open() {
    let registrar = UdpSocket::bind("127.0.0.1:0").unwrap();
    let trunk = registrar.local_addr().unwrap().port();
    registrar.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let db = Database::sqlite();
    let _serve = registering(&db, trunk, &[("RINGLINE_SIP_KEEPALIVE", "1")]);
    let mut buffer = [0u8; 4096];
    let mut receive = || registrar.recv_from(&mut buffer).ok().map(|(length, source)| (buffer[..length].to_vec(), source));
    let start = std::time::Instant::now();
    let (register, server) = loop {
        assert!(start.elapsed() < Duration::from_secs(30), "the server registers");
        if let Some((datagram, source)) = receive() {
            let text = String::from_utf8_lossy(&datagram).to_string();
            if text.starts_with("REGISTER ") {
                break (text, source);
            }
        }
    };
    let ok = format!(
        "SIP/2.0 200 OK\r\n{}\r\n{}\r\n{};tag=registrar\r\n{}\r\n{}\r\n{};expires=300\r\nContent-Length: 0\r\n\r\n",
        header(&register, "Via"),
        header(&register, "From"),
        header(&register, "To"),
        header(&register, "Call-ID"),
        header(&register, "CSeq"),
        header(&register, "Contact")
    );
    registrar.send_to(ok.as_bytes(), server).unwrap();
    let (mut keepalives, mut requests) = (0, Vec::new());
    let granted = std::time::Instant::now();
    while granted.elapsed() < Duration::from_millis(3500) {
        match receive() {
            Some((datagram, _)) if datagram == b"\r\n\r\n" => keepalives += 1,
            Some((datagram, _)) => requests.push(String::from_utf8_lossy(&datagram).to_string()),
            None => {}
        }
    }
    assert!((2..=4).contains(&keepalives), "a keep-alive a second while registered: {keepalives} in 3.5 s");
    // (A retransmission of the first REGISTER, sent before the answer came, is no refresh.)
    assert!(requests.iter().all(|r| header(r, "CSeq") == header(&register, "CSeq")), "no refresh within the five minutes granted: {requests:?}");
}
