//! The closed vocabulary of what flows between a call's stages.
//!
//! System frames (interruption, end, error) are never dropped and are handled before data;
//! control frames carry turn-taking decisions; data frames carry audio and text. Payloads
//! that belong to one stage live with that stage (this file stays small).

use std::time::Duration;

use super::metrics::TurnTimings;

#[derive(Debug, Clone)]
pub enum Frame {
    // System: never dropped.
    /// The caller spoke over the agent: cancel the turn everywhere.
    Interruption { onset: Duration },
    /// The call is over.
    End { reason: String },
    /// A stage failed; the call carries on or ends politely.
    Error { stage: &'static str, message: String },

    // Control.
    /// The VAD confirmed caller speech (`onset` is when the speech began).
    SpeechStarted { onset: Duration },
    /// The VAD heard the caller stop.
    SpeechStopped { at: Duration },
    /// A keypad digit from the caller.
    Dtmf(char),
    /// Per-turn measurements, when a turn completes.
    Metrics(TurnTimings),

    // Data.
    /// Caller audio at the model rate (16 kHz).
    AudioIn(Vec<f32>),
    /// Words so far in an unfinished caller turn.
    TranscriptPartial(String),
    /// The caller's finished turn.
    TranscriptFinal(UserTurn),
    /// A piece of the LLM's streamed answer.
    LlmText(String),
    /// A complete sentence, ready for TTS.
    Sentence(String),
    /// Synthesized agent audio at the transport's rate.
    TtsAudio(Vec<f32>),
}

impl Frame {
    /// System frames jump queues and are never dropped.
    pub fn is_system(&self) -> bool {
        matches!(self, Frame::Interruption { .. } | Frame::End { .. } | Frame::Error { .. })
    }
}

/// A finished caller turn, with when it ended and how long deciding took.
#[derive(Debug, Clone, Default)]
pub struct UserTurn {
    pub text: String,
    /// When the caller's speech ended (call timeline).
    pub speech_end: Duration,
    /// When the end-of-turn decision was made.
    pub decided_at: Duration,
    /// When the final transcript was ready.
    pub transcribed_at: Duration,
}
