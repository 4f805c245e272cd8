//! Speech-to-text through any OpenAI-compatible `/audio/transcriptions` endpoint.
//!
//! The utterance is sent as a 16 kHz WAV in a multipart form. The trait is synchronous (it
//! runs on a blocking thread), so the request is driven with the runtime's handle.

use std::time::{Duration, Instant};

use super::{SpeechToText, SttError, Transcript};
use crate::audio::Audio;

pub struct OpenAiStt {
    client: reqwest::Client,
    base_url: String,
    model: String,
    api_key: String,
    language: Option<String>,
    runtime: tokio::runtime::Handle,
}

impl OpenAiStt {
    /// Must be created inside the Tokio runtime that will drive its requests.
    /// Connections obey `egress`.
    pub fn new(base_url: &str, model: &str, api_key: &str, language: Option<&str>, egress: &crate::egress::EgressPolicy) -> Self {
        OpenAiStt {
            client: egress.client(reqwest::Client::builder().timeout(Duration::from_secs(15))),
            base_url: base_url.trim_end_matches('/').to_string(),
            model: model.to_string(),
            api_key: api_key.to_string(),
            language: language.map(|l| l.split(['-', '_']).next().unwrap_or(l).to_lowercase()),
            runtime: tokio::runtime::Handle::current(),
        }
    }
}

impl SpeechToText for OpenAiStt {
    fn transcribe(&self, samples_16k: &[f32]) -> Result<Transcript, SttError> {
        self.transcribe_prompted(samples_16k, "")
    }

    fn transcribe_primed(&self, samples_16k: &[f32], stop: &std::sync::atomic::AtomicBool, prompt: &str) -> Result<Transcript, SttError> {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(SttError::Stopped);
        }
        self.transcribe_prompted(samples_16k, prompt)
    }
}

impl OpenAiStt {
    /// One request; `prompt` is the API's `prompt` field (text the model continues from).
    fn transcribe_prompted(&self, samples_16k: &[f32], prompt: &str) -> Result<Transcript, SttError> {
        let started = Instant::now();
        let audio_secs = samples_16k.len() as f64 / 16_000.0;
        let wav = Audio::new(samples_16k.to_vec(), 16_000).to_wav_bytes().map_err(|e| SttError::Whisper(e.to_string()))?;
        let url = format!("{}/audio/transcriptions", self.base_url);
        let fail = |reason: String| SttError::Remote { endpoint: url.clone(), reason };
        let part = reqwest::multipart::Part::bytes(wav).file_name("utterance.wav").mime_str("audio/wav").map_err(|e| fail(e.to_string()))?;
        let mut form = reqwest::multipart::Form::new().part("file", part).text("model", self.model.clone()).text("response_format", "json");
        if let Some(language) = &self.language {
            form = form.text("language", language.clone());
        }
        if !prompt.is_empty() {
            form = form.text("prompt", prompt.to_string());
        }
        let request = self.client.post(&url).bearer_auth(&self.api_key).multipart(form);
        let body: serde_json::Value = self.runtime.block_on(async {
            let response = request.send().await.map_err(|e| fail(e.to_string()))?;
            let status = response.status();
            let text = response.text().await.map_err(|e| fail(e.to_string()))?;
            if !status.is_success() {
                return Err(fail(format!("HTTP {status}: {}", text.chars().take(300).collect::<String>())));
            }
            serde_json::from_str(&text).map_err(|e| fail(format!("not JSON ({e}): {}", text.chars().take(300).collect::<String>())))
        })?;
        let text = body["text"].as_str().ok_or_else(|| fail("no `text` in the response".into()))?.trim().to_string();
        Ok(Transcript { text, segments: Vec::new(), audio_secs, processing: started.elapsed() })
    }
}
