//! A Twilio Media Streams line: the caller's μ-law audio in, the agent's out, over one
//! WebSocket (`<Connect><Stream>`, bidirectional).
//!
//! Wire protocol (Twilio's, JSON text frames): Twilio sends `connected`, `start` (stream and
//! call ids, media format, the `<Parameter>`s of the TwiML), `media` (base64 μ-law, 8 kHz,
//! 20 ms), `dtmf`, `mark` (a mark we sent has been played) and `stop`. We send `media`, a
//! `mark` after each segment, and `clear` on a barge-in so Twilio drops what it buffered.
//!
//! This module knows the protocol: messages in become calls on a [`StreamLine`], and the
//! line's [`Outgoing`] become messages. The server owns the socket and the call.

use std::collections::HashMap;

use base64::Engine as _;
use serde_json::{json, Value};

use super::stream::{Outgoing, StreamLine};
use crate::audio::g711;

/// Media Streams' audio: μ-law at 8 kHz, mono.
pub const RATE: u32 = 8_000;
/// The largest text frame accepted from Twilio (a media frame is ~300 bytes).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// The most audio one `media` event may carry (Twilio sends 20 ms; allow a second).
const MAX_MEDIA_BYTES: usize = 8_000;

/// An event from Twilio.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    Connected,
    Start(Start),
    /// Decoded audio at [`RATE`].
    Media(Vec<f32>),
    Dtmf(char),
    /// A mark we sent has been played.
    Mark(String),
    Stop,
}

/// What `start` says about the stream.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Start {
    pub stream_sid: String,
    pub call_sid: String,
    pub account_sid: String,
    /// The TwiML `<Parameter>`s.
    pub parameters: HashMap<String, String>,
}

/// Parses one text frame from Twilio; the error names what is wrong.
pub fn parse(text: &str) -> Result<Incoming, String> {
    if text.len() > MAX_MESSAGE_BYTES {
        return Err(format!("a {} byte message; the most is {MAX_MESSAGE_BYTES}", text.len()));
    }
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let str_at = |pointer: &str| value.pointer(pointer).and_then(Value::as_str);
    match value.get("event").and_then(Value::as_str) {
        Some("connected") => Ok(Incoming::Connected),
        Some("start") => {
            let format = value.pointer("/start/mediaFormat");
            let encoding = format.and_then(|f| f.get("encoding")).and_then(Value::as_str).unwrap_or("audio/x-mulaw");
            let rate = format.and_then(|f| f.get("sampleRate")).and_then(Value::as_u64).unwrap_or(RATE as u64);
            let channels = format.and_then(|f| f.get("channels")).and_then(Value::as_u64).unwrap_or(1);
            if encoding != "audio/x-mulaw" || rate != RATE as u64 || channels != 1 {
                return Err(format!("start.mediaFormat is {encoding} at {rate} Hz, {channels} channel(s); only audio/x-mulaw at 8000 Hz mono is spoken"));
            }
            let stream_sid = str_at("/start/streamSid").or_else(|| str_at("/streamSid")).ok_or("start without start.streamSid")?;
            let parameters = value
                .pointer("/start/customParameters")
                .and_then(Value::as_object)
                .map(|o| o.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
                .unwrap_or_default();
            Ok(Incoming::Start(Start {
                stream_sid: stream_sid.to_string(),
                call_sid: str_at("/start/callSid").unwrap_or_default().to_string(),
                account_sid: str_at("/start/accountSid").unwrap_or_default().to_string(),
                parameters,
            }))
        }
        Some("media") => {
            if str_at("/media/track").is_some_and(|t| t != "inbound" && t != "inbound_track") {
                // Only the caller's track is ours to hear.
                return Ok(Incoming::Media(Vec::new()));
            }
            let payload = str_at("/media/payload").ok_or("media without media.payload")?;
            let bytes = base64::engine::general_purpose::STANDARD.decode(payload).map_err(|e| format!("media.payload is not base64: {e}"))?;
            if bytes.len() > MAX_MEDIA_BYTES {
                return Err(format!("media.payload holds {} bytes of audio; the most in one event is {MAX_MEDIA_BYTES}", bytes.len()));
            }
            Ok(Incoming::Media(g711::decode_mulaw(&bytes)))
        }
        Some("dtmf") => {
            let digit = str_at("/dtmf/digit").ok_or("dtmf without dtmf.digit")?;
            let mut chars = digit.chars();
            match (chars.next(), chars.next()) {
                (Some(c), None) if c.is_ascii_digit() || matches!(c, '*' | '#' | 'A'..='D') => Ok(Incoming::Dtmf(c)),
                _ => Err(format!("dtmf.digit `{}` is not a keypad key", digit.escape_default())),
            }
        }
        Some("mark") => Ok(Incoming::Mark(str_at("/mark/name").ok_or("mark without mark.name")?.to_string())),
        Some("stop") => Ok(Incoming::Stop),
        Some(other) => Err(format!("unknown event `{}`", other.escape_default())),
        None => Err("a message without `event`".into()),
    }
}

/// The message Twilio gets for what the line sends; `None` for what Media Streams has no
/// message for.
pub fn encode(stream_sid: &str, outgoing: &Outgoing) -> Option<String> {
    let message = match outgoing {
        Outgoing::Audio(samples) => {
            let payload = base64::engine::general_purpose::STANDARD.encode(g711::encode_mulaw(samples));
            json!({ "event": "media", "streamSid": stream_sid, "media": { "payload": payload } })
        }
        Outgoing::Mark(segment) => json!({ "event": "mark", "streamSid": stream_sid, "mark": { "name": format!("segment-{segment}") } }),
        Outgoing::Clear => json!({ "event": "clear", "streamSid": stream_sid }),
        // Twilio's lines never take keys out of band: they are tones in the audio.
        Outgoing::Event(_) | Outgoing::Key(_) => return None,
    };
    Some(message.to_string())
}

/// Applies one event from Twilio to its call's line. `Stop` ends the call.
pub fn receive(line: &StreamLine, event: Incoming) {
    match event {
        Incoming::Media(samples) => line.caller_audio(samples),
        Incoming::Connected | Incoming::Start(_) => {}
        Incoming::Dtmf(digit) => line.caller_key(digit),
        Incoming::Mark(name) => {
            if name.starts_with("segment-") {
                line.mark_played();
            }
        }
        Incoming::Stop => line.close(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twilios_events_parse_and_bad_ones_are_named() {
        let start = r#"{"event":"start","sequenceNumber":"1","start":{"accountSid":"AC1","streamSid":"MZ1","callSid":"CA1","tracks":["inbound"],
            "mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1},"customParameters":{"call_id":"call_1","token":"t"}},"streamSid":"MZ1"}"#;
        let Incoming::Start(start) = parse(start).unwrap() else { panic!("a start") };
        assert_eq!((start.stream_sid.as_str(), start.call_sid.as_str()), ("MZ1", "CA1"));
        assert_eq!(start.parameters.get("call_id").map(String::as_str), Some("call_1"));

        let payload = base64::engine::general_purpose::STANDARD.encode([0xFFu8; 160]);
        let media = format!(r#"{{"event":"media","media":{{"track":"inbound","chunk":"1","timestamp":"5","payload":"{payload}"}},"streamSid":"MZ1"}}"#);
        assert!(matches!(parse(&media).unwrap(), Incoming::Media(s) if s.len() == 160));
        assert_eq!(parse(r#"{"event":"dtmf","dtmf":{"track":"inbound_track","digit":"5"}}"#).unwrap(), Incoming::Dtmf('5'));
        assert_eq!(parse(r#"{"event":"mark","mark":{"name":"segment-3"}}"#).unwrap(), Incoming::Mark("segment-3".into()));
        assert_eq!(parse(r#"{"event":"stop","stop":{}}"#).unwrap(), Incoming::Stop);

        for (bad, says) in [
            (r#"{"event":"media","media":{"payload":"***"}}"#, "not base64"),
            (r#"{"event":"dtmf","dtmf":{"digit":"55"}}"#, "not a keypad key"),
            (r#"{"event":"start","start":{"streamSid":"MZ","mediaFormat":{"encoding":"audio/l16","sampleRate":16000,"channels":1}}}"#, "only audio/x-mulaw"),
            (r#"{"event":"surprise"}"#, "unknown event"),
            (r#"[1,2]"#, "without `event`"),
            ("not json", "not JSON"),
        ] {
            let error = parse(bad).unwrap_err();
            assert!(error.contains(says), "{bad}: {error}");
        }
        let huge = format!(r#"{{"event":"media","media":{{"payload":"{}"}}}}"#, base64::engine::general_purpose::STANDARD.encode(vec![0u8; 9_000]));
        assert!(parse(&huge).unwrap_err().contains("the most in one event"));
    }

    #[test]
    fn what_the_line_sends_becomes_twilios_messages() {
        let media: Value = serde_json::from_str(&encode("MZ9", &Outgoing::Audio(vec![0.0; 160])).unwrap()).unwrap();
        assert_eq!((media["event"].as_str(), media["streamSid"].as_str()), (Some("media"), Some("MZ9")));
        let frame = base64::engine::general_purpose::STANDARD.decode(media["media"]["payload"].as_str().unwrap()).unwrap();
        assert_eq!(frame.len(), 160, "20 ms of μ-law");
        let mark: Value = serde_json::from_str(&encode("MZ9", &Outgoing::Mark(7)).unwrap()).unwrap();
        assert_eq!(mark["mark"]["name"], "segment-7");
        assert_eq!(encode("MZ9", &Outgoing::Clear).unwrap(), r#"{"event":"clear","streamSid":"MZ9"}"#);
        assert_eq!(encode("MZ9", &Outgoing::Event(json!({}))), None);
    }
}
