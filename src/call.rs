//! A call's status, and who speaks in it: the one vocabulary the lines, the runner, the API,
//! webhooks and storage share. Ringg's statuses (`initiated` first), plus `ending` (a hang-up
//! asked for, not yet done) and `canceled`. Rows stored as `queued` by earlier versions were
//! renamed (migration 0006).
//!
//! ```text
//! initiated ─► ringing ─► in-progress ─► (ending) ─► completed │ failed
//!              └─► no-answer │ busy │ failed │ canceled
//! ```

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CallStatus {
    Initiated,
    Ringing,
    InProgress,
    Ending,
    Completed,
    Failed,
    NoAnswer,
    Busy,
    Canceled,
}

impl CallStatus {
    pub const ALL: [CallStatus; 9] = [
        CallStatus::Initiated,
        CallStatus::Ringing,
        CallStatus::InProgress,
        CallStatus::Ending,
        CallStatus::Completed,
        CallStatus::Failed,
        CallStatus::NoAnswer,
        CallStatus::Busy,
        CallStatus::Canceled,
    ];

    /// The name stored and shown (`in-progress`, `no-answer`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            CallStatus::Initiated => "initiated",
            CallStatus::Ringing => "ringing",
            CallStatus::InProgress => "in-progress",
            CallStatus::Ending => "ending",
            CallStatus::Completed => "completed",
            CallStatus::Failed => "failed",
            CallStatus::NoAnswer => "no-answer",
            CallStatus::Busy => "busy",
            CallStatus::Canceled => "canceled",
        }
    }

    pub fn parse(name: &str) -> Option<CallStatus> {
        CallStatus::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// A status a client may name in a filter: ours, and `queued` (the old name of `initiated`).
    pub fn parse_lenient(name: &str) -> Option<CallStatus> {
        match name {
            "queued" => Some(CallStatus::Initiated),
            other => CallStatus::parse(other),
        }
    }

    /// Not over yet.
    pub fn is_live(self) -> bool {
        matches!(self, CallStatus::Initiated | CallStatus::Ringing | CallStatus::InProgress | CallStatus::Ending)
    }

    /// Twilio's `CallStatus` as ours (`queued` is still initiated; `answered` is in progress).
    pub fn from_twilio(name: &str) -> Option<CallStatus> {
        match name {
            "queued" | "initiated" => Some(CallStatus::Initiated),
            "answered" => Some(CallStatus::InProgress),
            other => CallStatus::parse(other).filter(|s| *s != CallStatus::Ending),
        }
    }
}

/// Where a transfer may go: a phone number (returned in E.164) or a `sip:`/`sips:` address.
/// Anything else — an unresolved `{{ name }}`, words an LLM made up — is refused with the
/// form to use, so no call is handed to a destination nobody meant.
pub fn transfer_destination(text: &str) -> Result<String, String> {
    let text = text.trim();
    let refuse = || format!("`{}` is not a phone number in E.164 form (+15005550100) or a sip: address", text.chars().take(80).collect::<String>());
    if text.is_empty() || text.len() > 200 || text.chars().any(char::is_control) {
        return Err(refuse());
    }
    let lower = text.to_ascii_lowercase();
    if let Some(rest) = lower.strip_prefix("sip:").or_else(|| lower.strip_prefix("sips:")) {
        let host = rest.rsplit('@').next().unwrap_or("");
        let plain = |c: char| c.is_ascii_alphanumeric() || ".-_:;=[]".contains(c);
        if host.is_empty() || !rest.chars().all(|c| plain(c) || "@+%!~*'()&$,?/".contains(c)) || !host.chars().all(plain) {
            return Err(refuse());
        }
        return Ok(text.to_string());
    }
    if !text.starts_with('+') || !text.chars().skip(1).all(|c| c.is_ascii_digit() || " -.()".contains(c)) {
        return Err(refuse());
    }
    let number = phonenumber::parse(None, text).map_err(|_| refuse())?;
    let e164 = number.format().mode(phonenumber::Mode::E164).to_string();
    if number.is_valid() || crate::simulation::sandbox(&e164).is_some() {
        Ok(e164)
    } else {
        Err(refuse())
    }
}

impl std::fmt::Display for CallStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who said a line of a call: its transcript, its events and its stored rows name one of two.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Speaker {
    Caller,
    Agent,
}

impl Speaker {
    pub fn as_str(self) -> &'static str {
        match self {
            Speaker::Caller => "caller",
            Speaker::Agent => "agent",
        }
    }

    /// A stored or received name; `None` for any other.
    pub fn parse(text: &str) -> Option<Speaker> {
        match text {
            "caller" => Some(Speaker::Caller),
            "agent" => Some(Speaker::Agent),
            _ => None,
        }
    }
}

impl std::fmt::Display for Speaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_match_serde() {
        for status in CallStatus::ALL {
            assert_eq!(CallStatus::parse(status.as_str()), Some(status));
            assert_eq!(serde_json::to_value(status).unwrap(), status.as_str());
        }
        assert_eq!(CallStatus::from_twilio("queued"), Some(CallStatus::Initiated));
        assert_eq!(CallStatus::parse_lenient("queued"), Some(CallStatus::Initiated));
        assert_eq!(CallStatus::from_twilio("no-answer"), Some(CallStatus::NoAnswer));
        assert_eq!(CallStatus::from_twilio("ending"), None);
        assert!(CallStatus::Ending.is_live() && !CallStatus::Busy.is_live());
    }

    #[test]
    fn speakers_round_trip_and_match_serde() {
        for speaker in [Speaker::Caller, Speaker::Agent] {
            assert_eq!(Speaker::parse(speaker.as_str()), Some(speaker));
            assert_eq!(serde_json::to_value(speaker).unwrap(), speaker.as_str());
        }
        assert_eq!(Speaker::parse("user"), None);
    }

    #[test]
    fn transfers_go_to_phone_numbers_and_sip_addresses_only() {
        assert_eq!(transfer_destination(" +1 415 555 2671 ").as_deref(), Ok("+14155552671"));
        assert_eq!(transfer_destination("+15005550100").as_deref(), Ok("+15005550100"), "a sandbox number");
        assert_eq!(transfer_destination("sip:desk@pbx.example.com").as_deref(), Ok("sip:desk@pbx.example.com"));
        for bad in ["", "{{ desk }}", "the manager", "+15550100", "4155552671", "sip:", "sip:desk@", "sip:a b@host", "+1415555\u{0}2671"] {
            assert!(transfer_destination(bad).is_err(), "{bad:?} must be refused");
        }
    }
}
