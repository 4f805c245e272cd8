//! The listening stage: caller audio in, turn-taking frames out.
//!
//! Audio is resampled to 16 kHz and scored by Silero in 32 ms frames (~0.1 ms each, so it
//! runs inline). When the VAD hears the caller stop, the utterance so far is transcribed on
//! a blocking thread *at once*: the transcript is both the end-of-turn cue and, if the turn
//! is over, the final transcript — no second STT pass. The turn ends when
//!
//! - the transcript reads as finished (final punctuation: whisper punctuates what it hears
//!   as a complete sentence or question), or
//! - it reads as unfinished ("my number is five five five") but the caller stays silent for
//!   `incomplete_wait_ms` more — bounded, so a flat voice never waits seconds.
//!
//! Speech resuming before the decision continues the same turn. A turn with speech but no
//! words is still reported (empty text), never dropped: the agent decides what to do with it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::frames::{Frame, UserTurn};
use crate::assistant::TurnSpec;
use crate::audio::resample::StreamResampler;
use crate::audio::MODEL_RATE;
use crate::stt::{SpeechToText, Transcript};
use crate::vad::silero::{SileroStream, SileroVad};
use crate::vad::{VadDetector, VadEvent, FRAME_MS, FRAME_SAMPLES};

/// Audio kept from before the VAD's onset so the first syllable is not clipped.
const PRE_ROLL_MS: usize = 320;
/// The longest utterance sent to STT at once (whisper's window).
const MAX_UTTERANCE_SECS: usize = 28;

pub struct Listener {
    pub vad: Arc<SileroVad>,
    pub stt: Arc<dyn SpeechToText>,
    pub turn: TurnSpec,
    pub input_rate: u32,
}

enum Phase {
    Quiet,
    Speaking,
    /// The caller stopped; transcribing and deciding.
    Deciding { speech_end: Duration, stopped_at: Duration, result: Option<oneshot::Receiver<(Transcript, Duration)>>, transcript: Option<(Transcript, Duration)> },
}

impl Listener {
    pub async fn run(self, mut audio_in: mpsc::Receiver<Vec<f32>>, out: mpsc::Sender<Frame>, cancel: CancellationToken) {
        let mut resampler = match StreamResampler::new(self.input_rate, MODEL_RATE, (self.input_rate / 50) as usize) {
            Ok(r) => Some(r),
            Err(e) if self.input_rate == MODEL_RATE => {
                tracing::debug!(%e, "no resampling needed");
                None
            }
            Err(e) => {
                let _ = out.send(Frame::Error { stage: "listen", message: e.to_string() }).await;
                return;
            }
        };
        if self.input_rate == MODEL_RATE {
            resampler = None;
        }
        let mut stream = SileroStream::default();
        let mut detector = VadDetector::new(self.turn.vad_params());
        let mut pending: Vec<f32> = Vec::new();
        let mut recent: std::collections::VecDeque<f32> = std::collections::VecDeque::new();
        let pre_roll = MODEL_RATE as usize * PRE_ROLL_MS / 1000;
        let mut utterance: Vec<f32> = Vec::new();
        let mut phase = Phase::Quiet;
        let frame_time = |frame: u64| Duration::from_millis(frame * FRAME_MS as u64);

        loop {
            // Wait for audio, or for a pending transcript.
            let chunk = {
                let result_rx = match &mut phase {
                    Phase::Deciding { result: Some(rx), .. } => Some(rx),
                    _ => None,
                };
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    chunk = audio_in.recv() => match chunk { Some(c) => Some(c), None => return },
                    transcript = async { result_rx.unwrap().await }, if result_rx.is_some() => {
                        if let Phase::Deciding { result, transcript: slot, .. } = &mut phase {
                            *result = None;
                            *slot = transcript.ok();
                        }
                        None
                    }
                }
            };
            let now = frame_time(detector.frames());
            if let Some(chunk) = chunk {
                let samples = match resampler.as_mut() {
                    Some(r) => r.push(&chunk).unwrap_or_default(),
                    None => chunk,
                };
                pending.extend(samples);
                while pending.len() >= FRAME_SAMPLES {
                    let frame: Vec<f32> = pending.drain(..FRAME_SAMPLES).collect();
                    let probability = self.vad.probability(&mut stream, &frame).unwrap_or(0.0);
                    let event = detector.push(probability);
                    if matches!(phase, Phase::Quiet) {
                        recent.extend(frame.iter().copied());
                        while recent.len() > pre_roll + FRAME_SAMPLES * 4 {
                            recent.pop_front();
                        }
                    } else if utterance.len() < MODEL_RATE as usize * MAX_UTTERANCE_SECS {
                        utterance.extend_from_slice(&frame);
                    }
                    match event {
                        Some(VadEvent::SpeechStarted { onset_frame }) => {
                            let onset = frame_time(onset_frame);
                            if out.send(Frame::SpeechStarted { onset }).await.is_err() {
                                return;
                            }
                            if matches!(phase, Phase::Quiet) {
                                // Start the utterance a little before the onset.
                                let frames_since_onset = (detector.frames() - onset_frame) as usize * FRAME_SAMPLES;
                                let keep = (frames_since_onset + pre_roll).min(recent.len());
                                utterance = recent.iter().skip(recent.len() - keep).copied().collect();
                                recent.clear();
                            }
                            // Speech resumed: the same turn goes on.
                            phase = Phase::Speaking;
                        }
                        Some(VadEvent::SpeechStopped { last_speech_frame }) => {
                            let speech_end = frame_time(last_speech_frame + 1);
                            let stopped_at = frame_time(detector.frames());
                            let _ = out.send(Frame::SpeechStopped { at: speech_end }).await;
                            let (tx, rx) = oneshot::channel();
                            let stt = self.stt.clone();
                            let audio = utterance.clone();
                            tokio::task::spawn_blocking(move || {
                                let started = std::time::Instant::now();
                                let transcript = stt.transcribe(&audio).unwrap_or_else(|e| {
                                    tracing::warn!(error = %e, "transcription failed");
                                    Transcript::default()
                                });
                                let _ = tx.send((transcript, started.elapsed()));
                            });
                            phase = Phase::Deciding { speech_end, stopped_at, result: Some(rx), transcript: None };
                        }
                        None => {}
                    }
                }
            }
            // Decide the end of turn.
            let now = frame_time(detector.frames()).max(now);
            if let Phase::Deciding { speech_end, stopped_at, transcript: Some((transcript, stt_time)), .. } = &phase {
                let finished = reads_finished(&transcript.text);
                let waited = now.saturating_sub(*stopped_at);
                if finished || waited >= Duration::from_millis(self.turn.incomplete_wait_ms as u64) {
                    let turn = UserTurn {
                        text: transcript.text.clone(),
                        speech_end: *speech_end,
                        decided_at: now,
                        transcribed_at: *stopped_at + *stt_time,
                        stt: *stt_time,
                    };
                    if out.send(Frame::TranscriptFinal(turn)).await.is_err() {
                        return;
                    }
                    utterance.clear();
                    phase = Phase::Quiet;
                } else if waited.is_zero() {
                    let _ = out.send(Frame::TranscriptPartial(transcript.text.clone())).await;
                }
            }
        }
    }
}

/// True when a transcript reads as a complete turn: it ends a sentence or a question.
pub fn reads_finished(text: &str) -> bool {
    let trimmed = text.trim_end();
    if trimmed.is_empty() {
        return false;
    }
    let last_word = trimmed.rsplit(char::is_whitespace).next().unwrap_or("").to_lowercase();
    // "my number is five five five..." or a trailing conjunction: the caller is mid-thought.
    let dangling = ["and", "or", "but", "so", "is", "the", "a", "to", "my", "uh", "um", "because"];
    if trimmed.ends_with("...") || trimmed.ends_with(',') {
        return false;
    }
    let bare = last_word.trim_end_matches(['.', '?', '!']);
    if dangling.contains(&bare) {
        return false;
    }
    trimmed.ends_with(['.', '?', '!'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finished_sentences_end_the_turn_and_fragments_do_not() {
        assert!(reads_finished("I'd like to book a table."));
        assert!(reads_finished("Can you hear me?"));
        assert!(!reads_finished("My number is 5 5 5..."));
        assert!(!reads_finished("My number is 5 5 5,"));
        assert!(!reads_finished("I want to go and"));
        assert!(!reads_finished("I want to go and."));
        assert!(!reads_finished("my number is"));
        assert!(!reads_finished(""));
    }
}
