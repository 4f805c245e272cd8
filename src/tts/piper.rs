//! Piper voices (VITS, ONNX) through ort, with espeak-ng phonemes.
//!
//! Text → IPA phonemes (libespeak-ng, one sentence at a time) → ids from the voice's
//! `phoneme_id_map` as `^ _ p₁ _ p₂ _ … pₙ _ $` → the model → 22.05 kHz audio. The ONNX
//! session loads once (about a second) and is shared; `Session::run` needs `&mut`, so calls
//! take turns through a mutex — one sentence costs tens of milliseconds.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use ort::session::Session;
use ort::value::Tensor;
use serde::Deserialize;

use super::{espeak, SentenceAudio, TextToSpeech, TtsError};
use crate::audio::Audio;
use crate::models::ModelStore;
use crate::onnx::OnnxError;

#[derive(Debug, Deserialize)]
struct VoiceConfig {
    audio: AudioConfig,
    espeak: EspeakConfig,
    #[serde(default)]
    inference: Scales,
    phoneme_id_map: HashMap<String, Vec<i64>>,
}

#[derive(Debug, Deserialize)]
struct AudioConfig {
    sample_rate: u32,
}

#[derive(Debug, Deserialize)]
struct EspeakConfig {
    voice: String,
}

/// Piper's sampling settings, from the voice's config unless overridden: how much the voice
/// varies from one synthesis to the next (`noise_scale` in the sound, `noise_w` in the
/// timing; with both at 0 a text always gives the same audio) and how slowly it speaks
/// (`length_scale`, > 1 is slower).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct Scales {
    pub noise_scale: f32,
    pub length_scale: f32,
    pub noise_w: f32,
}

impl Default for Scales {
    fn default() -> Self {
        Scales { noise_scale: 0.667, length_scale: 1.0, noise_w: 0.8 }
    }
}

pub struct PiperVoice {
    name: String,
    session: Mutex<Session>,
    config: VoiceConfig,
}

impl PiperVoice {
    /// Loads voice `name` from the store model `piper-<name>`.
    pub fn load(store: &ModelStore, name: &str, threads: usize) -> Result<Self, TtsError> {
        let model_name = format!("piper-{name}");
        let model = store.require(&model_name)?;
        let config_path = store.require_file(&model_name, &format!("{}.json", model.file_name().unwrap_or_default().to_string_lossy()))?;
        let config = read_config(&config_path)?;
        let session = crate::onnx::session(store, &model, threads)?;
        Ok(PiperVoice { name: name.to_string(), session: Mutex::new(session), config })
    }

    /// The sampling settings every synthesis uses (the voice config's, until changed).
    pub fn scales_mut(&mut self) -> &mut Scales {
        &mut self.config.inference
    }

    pub fn sample_rate(&self) -> u32 {
        self.config.audio.sample_rate
    }

    /// Phoneme ids for one sentence of IPA.
    fn ids(&self, phonemes: &str) -> Vec<i64> {
        let map = &self.config.phoneme_id_map;
        let id = |symbol: &str| map.get(symbol).cloned().unwrap_or_default();
        let pad = id("_");
        let mut ids = id("^");
        ids.extend(&pad);
        for symbol in phonemes.chars() {
            match map.get(symbol.encode_utf8(&mut [0; 4]) as &str) {
                Some(symbol_ids) => {
                    ids.extend(symbol_ids);
                    ids.extend(&pad);
                }
                None => tracing::debug!(voice = %self.name, ?symbol, "phoneme not in the voice's map"),
            }
        }
        ids.extend(id("$"));
        ids
    }

    fn infer(&self, ids: Vec<i64>) -> Result<Vec<f32>, OnnxError> {
        let run_error = |e: ort::Error| OnnxError::Run { model: self.name.clone(), reason: e.to_string() };
        let len = ids.len();
        let input = Tensor::from_array(([1usize, len], ids)).map_err(run_error)?;
        let lengths = Tensor::from_array(([1usize], vec![len as i64])).map_err(run_error)?;
        let Scales { noise_scale, length_scale, noise_w } = self.config.inference;
        let scales = Tensor::from_array(([3usize], vec![noise_scale, length_scale, noise_w])).map_err(run_error)?;
        let mut session = self.session.lock().unwrap_or_else(|e| e.into_inner());
        let outputs = session
            .run(ort::inputs!["input" => input, "input_lengths" => lengths, "scales" => scales])
            .map_err(run_error)?;
        let (_, audio) = outputs[0].try_extract_tensor::<f32>().map_err(run_error)?;
        Ok(audio.iter().map(|s| s.clamp(-1.0, 1.0)).collect())
    }
}

impl TextToSpeech for PiperVoice {
    fn speak(&self, text: &str, on_sentence: &mut dyn FnMut(SentenceAudio)) -> Result<(), TtsError> {
        for sentence in crate::text::split_sentences(text) {
            for phonemes in espeak::phonemize(&sentence, &self.config.espeak.voice)? {
                let samples = self.infer(self.ids(&phonemes))?;
                on_sentence(SentenceAudio { text: sentence.clone(), audio: Audio::new(samples, self.sample_rate()) });
            }
        }
        Ok(())
    }
}

fn read_config(path: &Path) -> Result<VoiceConfig, TtsError> {
    let text = std::fs::read_to_string(path).map_err(|e| TtsError::Config { path: path.to_path_buf(), reason: e.to_string() })?;
    serde_json::from_str(&text).map_err(|e| TtsError::Config { path: path.to_path_buf(), reason: e.to_string() })
}
