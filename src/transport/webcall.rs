//! The browser web call's wire format, over one WebSocket.
//!
//! Browser → server: binary frames of 16-bit little-endian PCM, mono, 16 kHz (the microphone;
//! any length up to a second, 20 ms is usual), and text frames of JSON: `{"type": "dtmf",
//! "digit": "5"}`, `{"type": "hangup"}`.
//!
//! Server → browser: binary frames of the same PCM (the agent, 20 ms each, sent in real time),
//! and text frames of JSON: `{"type": "call", "call_id"}` first, `{"type": "answered"}` once
//! the agent is on the line (its models ready; microphone audio before it is not listened to
//! beyond its last second, so the widget starts sending then), `{"type": "clear"}` (stop
//! playing now: the caller barged in), `{"type": "transcript", "speaker": "agent"|"caller",
//! "text", "replaces_last"}` (`replaces_last`: the caller's last line heard again whole, after
//! they went on from a pause), `{"type": "partial", "text"}` (the caller's words so far), and `{"type": "ended",
//! "reason"}` last.

use serde_json::{json, Value};

use super::stream::Outgoing;

/// The web call's audio rate, both ways.
pub const RATE: u32 = 16_000;
/// The largest frame accepted from a browser (a second of audio is 32,000 bytes).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
const MAX_AUDIO_BYTES: usize = 32_000;

/// What a browser sends.
#[derive(Debug, Clone, PartialEq)]
pub enum FromBrowser {
    Audio(Vec<f32>),
    Dtmf(char),
    Hangup,
}

/// A binary frame: microphone audio.
pub fn parse_audio(bytes: &[u8]) -> Result<FromBrowser, String> {
    if bytes.len() > MAX_AUDIO_BYTES {
        return Err(format!("a {} byte audio frame; the most is {MAX_AUDIO_BYTES} (one second of 16 kHz PCM16)", bytes.len()));
    }
    if bytes.len() % 2 != 0 {
        return Err(format!("a {} byte audio frame: 16-bit samples come in pairs of bytes", bytes.len()));
    }
    Ok(FromBrowser::Audio(bytes.chunks_exact(2).map(|b| crate::audio::i16_to_f32(i16::from_le_bytes([b[0], b[1]]))).collect()))
}

/// A text frame: a control message.
pub fn parse_text(text: &str) -> Result<FromBrowser, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    match value.get("type").and_then(Value::as_str) {
        Some("dtmf") => {
            let digit = value.get("digit").and_then(Value::as_str).unwrap_or_default();
            let mut chars = digit.chars();
            match (chars.next(), chars.next()) {
                (Some(c), None) if c.is_ascii_digit() || matches!(c, '*' | '#' | 'A'..='D') => Ok(FromBrowser::Dtmf(c)),
                _ => Err(format!("digit `{}` is not a keypad key (0-9, *, #, A-D)", digit.escape_default())),
            }
        }
        Some("hangup") => Ok(FromBrowser::Hangup),
        Some(other) => Err(format!("unknown message type `{}`; the browser sends dtmf or hangup", other.escape_default())),
        None => Err("a message without `type`".into()),
    }
}

/// A frame for the browser.
#[derive(Debug, Clone, PartialEq)]
pub enum ToBrowser {
    Binary(Vec<u8>),
    Text(String),
}

/// What the browser gets for what the line sends (nothing for marks: playback is local).
pub fn encode(outgoing: &Outgoing) -> Option<ToBrowser> {
    match outgoing {
        Outgoing::Audio(samples) => Some(ToBrowser::Binary(samples.iter().flat_map(|s| crate::audio::f32_to_i16(*s).to_le_bytes()).collect())),
        Outgoing::Mark(_) | Outgoing::Key(_) => None,
        Outgoing::Clear => Some(ToBrowser::Text(json!({ "type": "clear" }).to_string())),
        Outgoing::Event(event) => Some(ToBrowser::Text(event.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn browser_frames_parse_and_bad_ones_are_named() {
        let FromBrowser::Audio(samples) = parse_audio(&[0, 0, 0xFF, 0x7F]).unwrap() else { panic!("audio") };
        assert_eq!(samples.len(), 2);
        assert!(samples[1] > 0.99);
        assert!(parse_audio(&[0, 0, 0]).unwrap_err().contains("pairs"));
        assert!(parse_audio(&vec![0; 40_000]).unwrap_err().contains("the most"));
        assert_eq!(parse_text(r##"{"type":"dtmf","digit":"#"}"##).unwrap(), FromBrowser::Dtmf('#'));
        assert_eq!(parse_text(r#"{"type":"hangup"}"#).unwrap(), FromBrowser::Hangup);
        assert!(parse_text(r#"{"type":"dtmf","digit":"12"}"#).unwrap_err().contains("not a keypad key"));
        assert!(parse_text(r#"{"type":"shout"}"#).unwrap_err().contains("unknown message type"));
        assert!(parse_text("{").unwrap_err().contains("not JSON"));
    }

    #[test]
    fn agent_audio_is_pcm16_and_a_clear_is_a_message() {
        assert_eq!(encode(&Outgoing::Audio(vec![0.0, 1.0])), Some(ToBrowser::Binary(vec![0, 0, 0xFF, 0x7F])));
        assert_eq!(encode(&Outgoing::Clear), Some(ToBrowser::Text(r#"{"type":"clear"}"#.into())));
        assert_eq!(encode(&Outgoing::Mark(3)), None);
    }
}
