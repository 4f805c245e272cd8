//! Text-to-speech through any OpenAI-compatible `/audio/speech` endpoint (WAV responses).

use std::time::Duration;

use super::{SentenceAudio, TextToSpeech, TtsError};

pub struct OpenAiTts {
    client: reqwest::Client,
    base_url: String,
    model: String,
    voice: String,
    api_key: String,
    runtime: tokio::runtime::Handle,
}

impl OpenAiTts {
    /// Must be created inside the Tokio runtime that will drive its requests.
    /// Connections obey `egress`.
    pub fn new(base_url: &str, model: &str, voice: &str, api_key: &str, egress: &crate::egress::EgressPolicy) -> Self {
        OpenAiTts {
            client: egress.client(reqwest::Client::builder().timeout(Duration::from_secs(15))),
            base_url: base_url.trim_end_matches('/').to_string(),
            model: model.to_string(),
            voice: voice.to_string(),
            api_key: api_key.to_string(),
            runtime: tokio::runtime::Handle::current(),
        }
    }
}

impl TextToSpeech for OpenAiTts {
    fn speak(&self, text: &str, on_sentence: &mut dyn FnMut(SentenceAudio)) -> Result<(), TtsError> {
        let url = format!("{}/audio/speech", self.base_url);
        let fail = |reason: String| TtsError::Remote { endpoint: url.clone(), reason };
        for sentence in crate::text::split_sentences(text) {
            let body = serde_json::json!({ "model": self.model, "voice": self.voice, "input": sentence, "response_format": "wav" });
            let request = self.client.post(&url).bearer_auth(&self.api_key).json(&body);
            let bytes = self.runtime.block_on(async {
                let response = request.send().await.map_err(|e| fail(e.to_string()))?;
                let status = response.status();
                let bytes = response.bytes().await.map_err(|e| fail(e.to_string()))?;
                if !status.is_success() {
                    return Err(fail(format!("HTTP {status}: {}", String::from_utf8_lossy(&bytes).chars().take(300).collect::<String>())));
                }
                Ok(bytes)
            })?;
            let audio = crate::audio::decode::decode_bytes(&bytes, std::path::Path::new(&url)).map_err(|e| fail(e.to_string()))?;
            on_sentence(SentenceAudio { text: sentence, audio });
        }
        Ok(())
    }
}
