//! Per-turn latency, measured on the call's timeline, and percentiles over many turns.
//!
//! Every turn records: caller end of speech → end-of-turn decision → final transcript →
//! LLM first token → first TTS audio → first audio out (voice-to-voice). Barge-ins record
//! caller onset → agent audio stopped.

use std::time::Duration;

use serde::Serialize;

#[derive(Debug, Clone, Default, Serialize)]
pub struct TurnTimings {
    pub turn: usize,
    /// When the VAD heard the caller's speech end, on the call's timeline; every duration
    /// below counts from here.
    #[serde(serialize_with = "ms")]
    pub speech_end_at: Duration,
    pub user_text: String,
    pub agent_text: String,
    /// Caller end of speech → end-of-turn decision.
    #[serde(serialize_with = "ms")]
    pub end_of_turn: Duration,
    /// The part of `end_of_turn` the listener chose to wait for more words (`UserTurn::held`).
    #[serde(serialize_with = "ms")]
    pub held: Duration,
    /// Caller end of speech → final transcript.
    #[serde(serialize_with = "ms")]
    pub stt_final: Duration,
    /// Caller end of speech → first LLM token; zero when the turn asked no LLM (a flow's line).
    #[serde(serialize_with = "ms")]
    pub llm_first_token: Duration,
    /// Caller end of speech → first synthesized audio.
    #[serde(serialize_with = "ms")]
    pub tts_first_audio: Duration,
    /// Caller end of speech → first agent audio on the line (voice-to-voice).
    #[serde(serialize_with = "ms")]
    pub voice_to_voice: Duration,
    pub prompt_tokens: usize,
    pub cached_tokens: usize,
}

impl TurnTimings {
    /// The same turn counted from `end` instead (the caller's true end of speech, where a
    /// script knows it): every stage moves by the VAD's error; a stage that did not happen
    /// (zero) stays zero.
    pub fn counted_from(&self, end: Duration) -> TurnTimings {
        let shift = |d: Duration| if d.is_zero() { d } else { (d + self.speech_end_at).saturating_sub(end) };
        TurnTimings {
            speech_end_at: end,
            end_of_turn: shift(self.end_of_turn),
            stt_final: shift(self.stt_final),
            llm_first_token: shift(self.llm_first_token),
            tts_first_audio: shift(self.tts_first_audio),
            voice_to_voice: shift(self.voice_to_voice),
            ..self.clone()
        }
    }
}

fn ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((d.as_secs_f64() * 1000.0).round())
}

pub fn ms_of(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The `q`-quantile (0..=1) of `values` by nearest rank; `None` when empty.
pub fn percentile<T: Copy + PartialOrd>(values: &[T], q: f64) -> Option<T> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let values: Vec<Duration> = (1..=20).map(|i| Duration::from_millis(i * 10)).collect();
        assert_eq!(percentile(&values, 0.5), Some(Duration::from_millis(100)));
        assert_eq!(percentile(&values, 0.95), Some(Duration::from_millis(190)));
        assert_eq!(percentile::<Duration>(&[], 0.5), None);
    }
}
