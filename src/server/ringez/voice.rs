//! Ringez voice synthesis: WAV clips of the installed voices, kept an hour per workspace.

use super::*;

/// The longest text one clip speaks.
const MAX_SYNTHESIS_CHARS: usize = 1_000;
/// How long a clip stays.
const CLIP_TTL_MS: i64 = 3600 * 1000;
/// Clips one workspace may keep at once.
const MAX_CLIPS: usize = 200;
/// One synthesis at a time per server: live calls keep the other core.
static SYNTHESIS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SynthesisRequest {
    pub text: String,
    /// A Ringg name (`female-1`), a voice in the store, or `espeak:VOICE`; another provider's
    /// name (`en-US-Neural2-A`) speaks with the default voice, and the answer says so.
    pub voice: Option<String>,
    /// 0.5 to 2.0.
    pub speed: Option<f32>,
    /// Only 0 (the voice's own pitch).
    pub pitch: Option<f32>,
    /// `wav` (mp3 and webm are not encoded here).
    pub output_format: Option<String>,
}

/// Where a workspace's clips are kept.
fn clips_dir(state: &AppState, workspace_id: &str) -> std::path::PathBuf {
    let safe: String = workspace_id.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
    state.config.recordings_dir.join("synthesized").join(safe)
}

/// Deletes a workspace's clips older than their hour; returns how many are left.
fn sweep_clips(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut left = 0;
    for entry in entries.flatten() {
        let age = entry.metadata().ok().and_then(|m| m.modified().ok()).and_then(|t| t.elapsed().ok()).map(|d| d.as_millis() as i64).unwrap_or(i64::MAX);
        if age > CLIP_TTL_MS {
            let _ = std::fs::remove_file(entry.path());
        } else {
            left += 1;
        }
    }
    left
}

/// The voice a request names, as `load_voice` takes it, and a note when it was replaced.
fn synthesis_voice(state: &AppState, requested: Option<&str>) -> (String, Option<String>) {
    let Some(name) = requested else { return (crate::tts::DEFAULT_VOICE.to_string(), None) };
    if let Some((provider, voice)) = crate::tts::resolve_named_voice(name) {
        return (crate::tts::load_name(provider, voice), None);
    }
    if crate::tts::espeak_voice(name).is_some() || state.runner.models().manifest.get(&format!("piper-{name}")).is_ok() {
        return (name.to_string(), None);
    }
    let note = format!("no voice `{}` here; spoken with {}", crate::assistant::check::clip(name), crate::tts::DEFAULT_VOICE);
    (crate::tts::DEFAULT_VOICE.to_string(), Some(note))
}

fn speak_clip(models: &crate::models::ModelStore, voice: &str, text: &str, speed: f32) -> Result<crate::audio::Audio, String> {
    use crate::tts::TextToSpeech;
    match crate::tts::espeak_voice(voice) {
        Some(espeak) => {
            let (samples, rate) = crate::tts::espeak::synthesize(text, espeak, Some((175.0 * speed).round() as u32)).map_err(|e| e.to_string())?;
            Ok(crate::audio::Audio::new(samples.iter().map(|s| *s as f32 / 32768.0).collect(), rate))
        }
        None => {
            let mut piper = crate::tts::piper::PiperVoice::load(models, voice, 1).map_err(|e| e.to_string())?;
            piper.scales_mut().length_scale = 1.0 / speed;
            piper.speak_all(text).map_err(|e| e.to_string())
        }
    }
}

/// Speaks a text into a WAV the workspace can fetch for an hour.
pub async fn voice_synthesis(State(state): State<AppState>, caller: RingezCaller, ApiJson(request): ApiJson<SynthesisRequest>) -> Result<impl IntoResponse, ApiError> {
    let chars = request.text.chars().count();
    if request.text.trim().is_empty() || chars > MAX_SYNTHESIS_CHARS {
        return Err(ApiError::invalid("text", format!("give 1 to {MAX_SYNTHESIS_CHARS} characters to speak (this is {chars})")));
    }
    let speed = request.speed.unwrap_or(1.0);
    if !(0.5..=2.0).contains(&speed) {
        return Err(ApiError::invalid("speed", format!("{speed}: give 0.5 to 2.0 (1.0 is the voice's own pace)")));
    }
    if request.pitch.is_some_and(|p| p != 0.0) {
        return Err(ApiError::invalid("pitch", "only 0 (the voice's own pitch); choose another voice for a different one"));
    }
    let format = request.output_format.unwrap_or_else(|| "wav".into());
    if format != "wav" {
        return Err(ApiError::invalid("output_format", format!("`{}`: Ringline writes wav (16-bit PCM); convert it if you need mp3 or webm", crate::assistant::check::clip(&format))));
    }
    let (voice, note) = synthesis_voice(&state, request.voice.as_deref());
    let dir = clips_dir(&state, &caller.auth.workspace_id);
    let _permit = SYNTHESIS.acquire().await.map_err(|_| ApiError::internal("the synthesis queue closed"))?;
    let (models, text, spoken_with, folder) = (state.runner.models().clone(), request.text.clone(), voice.clone(), dir.clone());
    let id = store::new_id("audio");
    let path = dir.join(format!("{id}.wav"));
    let target = path.clone();
    let duration = tokio::task::spawn_blocking(move || -> Result<f64, ApiError> {
        std::fs::create_dir_all(&folder).map_err(|e| ApiError::internal(format!("cannot keep the clip: {e}")))?;
        if sweep_clips(&folder) >= MAX_CLIPS {
            return Err(ApiError::new(StatusCode::TOO_MANY_REQUESTS, "clip_limit", format!("this workspace keeps {MAX_CLIPS} clips, its limit; each goes an hour after it was made")));
        }
        let audio = speak_clip(&models, &spoken_with, &text, speed).map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "voice_unavailable", e))?;
        audio.write_wav(&target).map_err(|e| ApiError::internal(format!("cannot write the clip: {e}")))?;
        Ok(audio.samples.len() as f64 / audio.rate as f64)
    })
    .await
    .map_err(|e| ApiError::internal(format!("synthesis stopped: {e}")))??;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "audio_id": id,
            "audio_url": format!("/api/v1/audio/{id}"),
            "duration": (duration * 100.0).round() / 100.0,
            "format": "wav",
            "voice": voice,
            "note": note,
            "expires_at": rfc3339(store::now_ms() + CLIP_TTL_MS),
        })),
    ))
}

/// A clip this workspace synthesized, within its hour.
pub async fn audio(State(state): State<AppState>, caller: RingezCaller, Path(id): Path<String>) -> Result<axum::response::Response, ApiError> {
    let missing = || ApiError::not_found("audio clip", &id);
    if !id.starts_with("audio_") || !id[6..].chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(missing());
    }
    let path = clips_dir(&state, &caller.auth.workspace_id).join(format!("{id}.wav"));
    let fresh = std::fs::metadata(&path).ok().and_then(|m| m.modified().ok()).and_then(|t| t.elapsed().ok()).is_some_and(|age| (age.as_millis() as i64) <= CLIP_TTL_MS);
    if !fresh {
        return Err(missing());
    }
    let bytes = tokio::fs::read(&path).await.map_err(|_| missing())?;
    Ok(([(axum::http::header::CONTENT_TYPE, "audio/wav")], bytes).into_response())
}
