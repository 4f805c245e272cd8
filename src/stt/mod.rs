//! Speech-to-text: one trait, one file per provider.
//!
//! A provider turns a finished utterance (mono, 16 kHz) into text with timings. It knows
//! nothing of calls or assistants; the pipeline decides when an utterance is finished.

pub mod openai;
pub mod whisper;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum SttError {
    #[error(transparent)]
    Model(#[from] crate::models::ModelError),
    #[error("whisper failed: {0}")]
    Whisper(String),
    #[error("the transcription endpoint {endpoint} failed: {reason}")]
    Remote { endpoint: String, reason: String },
    #[error("transcription stopped before it finished")]
    Stopped,
}

/// A transcription with segment timings.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Transcript {
    pub text: String,
    pub segments: Vec<Segment>,
    /// Seconds of audio transcribed.
    pub audio_secs: f64,
    /// Wall time spent transcribing.
    #[serde(serialize_with = "as_secs")]
    pub processing: Duration,
}

impl Transcript {
    /// Processing time over audio time: below 1 is faster than real time.
    pub fn real_time_factor(&self) -> f64 {
        if self.audio_secs > 0.0 {
            self.processing.as_secs_f64() / self.audio_secs
        } else {
            0.0
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Segment {
    pub start_secs: f64,
    pub end_secs: f64,
    pub text: String,
    pub no_speech_prob: f32,
}

fn as_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// Text the recognizer is primed with (Whisper's initial prompt): words the caller is likely
/// to say next. The agent sets it as the conversation moves; the listener reads it for each
/// utterance.
#[derive(Debug, Clone, Default)]
pub struct Prompt(std::sync::Arc<std::sync::Mutex<String>>);

/// Longest prompt kept: Whisper's prompt shares its 448-token window with the transcript.
const PROMPT_CHARS: usize = 600;

impl Prompt {
    /// Sets the prompt; a long one keeps its end (what Whisper heeds most).
    pub fn set(&self, text: &str) {
        let mut start = text.len().saturating_sub(PROMPT_CHARS);
        while !text.is_char_boundary(start) {
            start += 1;
        }
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = text[start..].to_string();
    }

    pub fn get(&self) -> String {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Anything that can transcribe a finished utterance of 16 kHz mono audio.
pub trait SpeechToText: Send + Sync {
    fn transcribe(&self, samples_16k: &[f32]) -> Result<Transcript, SttError>;

    /// Like [`SpeechToText::transcribe`], but may give up early with [`SttError::Stopped`] once
    /// `stop` is set (a partial transcript that a newer one replaces). A provider that cannot
    /// stop midway checks before it starts.
    fn transcribe_until(&self, samples_16k: &[f32], stop: &AtomicBool) -> Result<Transcript, SttError> {
        if stop.load(Ordering::Relaxed) {
            return Err(SttError::Stopped);
        }
        self.transcribe(samples_16k)
    }

    /// Like [`SpeechToText::transcribe_until`], primed with `prompt` (words likely to be
    /// said). A provider without priming ignores it.
    fn transcribe_primed(&self, samples_16k: &[f32], stop: &AtomicBool, prompt: &str) -> Result<Transcript, SttError> {
        let _ = prompt;
        self.transcribe_until(samples_16k, stop)
    }
}
