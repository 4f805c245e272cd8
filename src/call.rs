//! A call's status: the one vocabulary the lines, the runner, the API, webhooks and storage
//! share. Ringg's statuses (`initiated` first), plus `ending` (a hang-up asked for, not yet
//! done) and `canceled`. Rows stored as `queued` by earlier versions were renamed (migration 0006).
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

impl std::fmt::Display for CallStatus {
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
}
