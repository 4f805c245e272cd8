//! The closed vocabulary of what flows between a call's stages.
//!
//! ```text
//! transport ─ audio chunks (live edge) ─► listen
//! listen ─ SpeechSuspected · SpeechDismissed · SpeechStarted · SpeechStopped
//!          · TranscriptPartial · TranscriptFinal · End · Error ─► agent
//! keypad ─ Dtmf ─► agent
//! per turn: think ─ LlmText · LlmTextEnd ─► chunk ─ Sentence ─► speak ─ TtsAudio ─► play ─► transport
//! ```
//!
//! Two things are deliberately not frames. Caller audio crosses the live edge
//! (`transport::live`) as bare chunks, because that edge alone drops (the oldest chunk) rather
//! than blocks. An interruption is each turn's cancellation token, not a frame queued behind
//! data: every turn stage selects on it before its inbox, so it overtakes everything in
//! flight. Measurements travel with the frames that carry them (a [`UserTurn`]'s decision
//! and transcript times; the turn's progress record) and leave the call as
//! `CallEvent::Turn`.

use std::time::Duration;

#[derive(Debug, Clone)]
pub enum Frame {
    // System: handled before data.
    /// The line closed: the caller hung up or the transport ended.
    End { reason: String },
    /// A stage failed; the call carries on or ends politely.
    Error { stage: &'static str, message: String },

    // Control.
    /// The VAD heard what may be caller speech (`onset` is when it began): the agent pauses.
    SpeechSuspected { onset: Duration },
    /// What the VAD suspected was not speech: the agent plays on.
    SpeechDismissed,
    /// The VAD confirmed caller speech (`onset` is when the speech began).
    SpeechStarted { onset: Duration },
    /// The VAD heard the caller stop (`at` is when the speech ended).
    SpeechStopped { at: Duration },
    /// A keypad digit from the caller.
    Dtmf(char),

    // Data.
    /// Words so far in an unfinished caller turn.
    TranscriptPartial(String),
    /// The caller's finished turn.
    TranscriptFinal(UserTurn),
    /// A piece of the agent's text: streamed by the LLM, or a fixed line.
    LlmText(String),
    /// The end of a run of text (an LLM round, a fixed line): flush what is buffered.
    LlmTextEnd,
    /// A chunk of text ready for TTS.
    Sentence(crate::text::Chunk),
    /// A chunk's synthesized audio at the transport's rate.
    TtsAudio { sentence: crate::text::Chunk, samples: Vec<f32> },
}

/// A finished caller turn, with when it ended and how long deciding took.
#[derive(Debug, Clone, Default)]
pub struct UserTurn {
    pub text: String,
    /// When the caller's speech ended (call timeline).
    pub speech_end: Duration,
    /// When the end-of-turn decision was made.
    pub decided_at: Duration,
    /// The silence the listener chose to wait after the VAD's end of speech before deciding
    /// (none for words that read finished; all of `incomplete_wait_ms` for words that dangle,
    /// such as a number read halfway): the end-of-turn policy's choice, not the machine's work.
    pub held: Duration,
    /// When the final transcript was ready.
    pub transcribed_at: Duration,
    /// How sure the recognizer was of the words (0..=1), when it says.
    pub confidence: Option<f32>,
    /// Words the recognizer was unsure of ([`crate::stt::UNSURE_WORD`]).
    pub unsure: Vec<String>,
    /// The caller went on after a pause the listener took for the end of their turn, before
    /// the answer to it was heard: `text` is both parts, heard again as one utterance, and
    /// replaces the turn before it (see `listen::Continuation`).
    pub continues: bool,
}
