//! Text-to-speech: one trait, one file per provider.
//!
//! Providers speak sentence by sentence and hand each sentence's audio over as soon as it is
//! ready, so the first words play while later ones are still being synthesized.

pub mod espeak;
pub mod openai;
pub mod piper;

use crate::assistant::VoiceProvider;
use crate::audio::Audio;
use crate::models::ModelStore;

#[derive(Debug, thiserror::Error)]
pub enum TtsError {
    #[error(transparent)]
    Model(#[from] crate::models::ModelError),
    #[error(transparent)]
    Onnx(#[from] crate::onnx::OnnxError),
    #[error(transparent)]
    Espeak(#[from] espeak::EspeakError),
    #[error("the speech endpoint {endpoint} failed: {reason}")]
    Remote { endpoint: String, reason: String },
    #[error("voice config {path}: {reason}")]
    Config { path: std::path::PathBuf, reason: String },
}

/// The voice used when none is named.
pub const DEFAULT_VOICE: &str = "en_US-joe-medium";

/// One spoken sentence.
#[derive(Debug, Clone)]
pub struct SentenceAudio {
    pub text: String,
    pub audio: Audio,
}

/// Anything that turns text into speech, sentence by sentence.
pub trait TextToSpeech: Send + Sync {
    /// Calls `on_sentence` with each sentence's audio as soon as it is synthesized.
    fn speak(&self, text: &str, on_sentence: &mut dyn FnMut(SentenceAudio)) -> Result<(), TtsError>;

    /// Speaks all of `text` into one buffer, with a short pause between sentences.
    fn speak_all(&self, text: &str) -> Result<Audio, TtsError> {
        let mut samples = Vec::new();
        let mut rate = 0;
        self.speak(text, &mut |sentence| {
            if rate != 0 {
                samples.extend(std::iter::repeat_n(0.0, (sentence.audio.rate as f32 * SENTENCE_PAUSE_SECS) as usize));
            }
            rate = sentence.audio.rate;
            samples.extend_from_slice(&sentence.audio.samples);
        })?;
        Ok(Audio::new(samples, if rate == 0 { 22_050 } else { rate }))
    }
}

/// Silence between sentences in `speak_all`.
pub const SENTENCE_PAUSE_SECS: f32 = 0.15;

/// Ringg's named voices and the installed voice each speaks with, as (name, provider, voice).
/// The store holds one Piper voice (male); the female names are espeak-ng's formant variants
/// until a female Piper voice is in the store.
pub const NAMED_VOICES: &[(&str, VoiceProvider, &str)] = &[
    ("male-1", VoiceProvider::Piper, DEFAULT_VOICE),
    ("male-2", VoiceProvider::Espeak, "en-us+m3"),
    ("female-1", VoiceProvider::Espeak, "en-us+f3"),
    ("female-2", VoiceProvider::Espeak, "en-us+f4"),
];

/// The (provider, voice) a Ringg voice name (`female-1`) stands for.
pub fn resolve_named_voice(name: &str) -> Option<(VoiceProvider, &'static str)> {
    NAMED_VOICES.iter().find(|(named, ..)| named.eq_ignore_ascii_case(name)).map(|(_, provider, voice)| (*provider, *voice))
}

/// Loads a voice by name: a Piper voice in the store (`en_US-joe-medium`), or espeak-ng's
/// formant voice (`espeak`, or `espeak:VOICE` such as `espeak:en-gb`).
pub fn load_voice(store: &ModelStore, name: &str, threads: usize) -> Result<Box<dyn TextToSpeech>, TtsError> {
    match espeak_voice(name) {
        Some(voice) => Ok(Box::new(espeak::EspeakVoice::new(voice))),
        None => Ok(Box::new(piper::PiperVoice::load(store, name, threads)?)),
    }
}

/// The name [`load_voice`] takes for a provider's voice: `espeak:VOICE` for espeak-ng, the
/// voice's own name for Piper (the inverse of [`espeak_voice`]).
pub fn load_name(provider: VoiceProvider, voice: &str) -> String {
    match provider {
        VoiceProvider::Espeak => format!("espeak:{voice}"),
        VoiceProvider::Piper | VoiceProvider::Openai => voice.to_string(),
    }
}

/// espeak-ng's voice for a voice name that asks for one (`espeak`, `espeak:VOICE`); `None`
/// for a Piper voice.
pub fn espeak_voice(name: &str) -> Option<&str> {
    if name == "espeak" {
        return Some("en-us");
    }
    name.strip_prefix("espeak:")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_voices_load_name_reads_back_as_its_provider_and_voice() {
        assert_eq!(espeak_voice(&load_name(VoiceProvider::Espeak, "en-us+f3")), Some("en-us+f3"));
        assert_eq!(load_name(VoiceProvider::Piper, DEFAULT_VOICE), DEFAULT_VOICE);
        assert_eq!(espeak_voice(&load_name(VoiceProvider::Piper, DEFAULT_VOICE)), None);
    }
}
