//! Voice activity detection: Silero v6 probabilities turned into speech start/stop events.
//!
//! [`silero::SileroVad`] scores each 32 ms frame; [`VadDetector`] applies hysteresis — speech
//! starts after `start_ms` of frames above `threshold`, and stops after `stop_ms` below
//! `threshold - 0.15` — so a breath or a click neither opens nor closes a turn. Before it
//! starts, `suspect_ms` of speech makes it *suspected*, then either started or dismissed: the
//! agent pauses its audio on a suspicion, so a barge-in does not wait out the hysteresis.

pub mod silero;
pub mod smart_turn;

use serde::{Deserialize, Serialize};

/// Samples per Silero frame at 16 kHz (32 ms).
pub const FRAME_SAMPLES: usize = 512;
pub const FRAME_MS: u32 = 32;

/// Hysteresis settings, configurable per assistant.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VadParams {
    /// Speech probability that counts as speech.
    pub threshold: f32,
    /// Speech needed before "speech started".
    pub start_ms: u32,
    /// Speech needed before "speech suspected" (no suspicions when ≥ `start_ms`).
    pub suspect_ms: u32,
    /// Silence needed before "speech stopped".
    pub stop_ms: u32,
}

pub const DEFAULT_VAD_THRESHOLD: f32 = 0.5;
pub const DEFAULT_VAD_START_MS: u32 = 96;
pub const DEFAULT_VAD_STOP_MS: u32 = 256;
pub const DEFAULT_VAD_SUSPECT_MS: u32 = 32;

impl VadParams {
    /// Frames of speech before "speech started".
    pub fn start_frames(&self) -> u32 {
        self.start_ms.div_ceil(FRAME_MS).max(1)
    }

    /// Frames of speech before "speech suspected".
    pub fn suspect_frames(&self) -> u32 {
        self.suspect_ms.div_ceil(FRAME_MS).max(1)
    }

    /// Frames of silence before "speech stopped".
    pub fn stop_frames(&self) -> u32 {
        self.stop_ms.div_ceil(FRAME_MS).max(1)
    }
}

impl Default for VadParams {
    fn default() -> Self {
        VadParams { threshold: DEFAULT_VAD_THRESHOLD, start_ms: DEFAULT_VAD_START_MS, suspect_ms: DEFAULT_VAD_SUSPECT_MS, stop_ms: DEFAULT_VAD_STOP_MS }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VadEvent {
    /// Maybe speech: `suspect_ms` of it, not yet `start_ms`; followed by started or dismissed.
    SpeechSuspected { onset_frame: u64 },
    /// A suspicion that did not last to `start_ms`.
    SpeechDismissed,
    /// Speech began; `onset_frame` is the first speech frame (before the start delay).
    SpeechStarted { onset_frame: u64 },
    /// Speech ended; `last_speech_frame` is the last frame that was speech.
    SpeechStopped { last_speech_frame: u64 },
}

/// Turns per-frame probabilities into events.
#[derive(Debug, Clone)]
pub struct VadDetector {
    params: VadParams,
    speaking: bool,
    run: u32,
    run_start: u64,
    last_speech: u64,
    frame: u64,
}

impl VadDetector {
    pub fn new(params: VadParams) -> Self {
        VadDetector { params, speaking: false, run: 0, run_start: 0, last_speech: 0, frame: 0 }
    }

    pub fn is_speaking(&self) -> bool {
        self.speaking
    }

    /// Frames below the stop threshold since the last speech frame, while speaking (0 when
    /// the latest frame was speech or the caller is quiet).
    pub fn silent_frames(&self) -> u32 {
        if self.speaking {
            self.run
        } else {
            0
        }
    }

    /// Frames seen so far.
    pub fn frames(&self) -> u64 {
        self.frame
    }

    /// Feeds one frame's probability; returns an event when the state flips.
    pub fn push(&mut self, probability: f32) -> Option<VadEvent> {
        let frame = self.frame;
        self.frame += 1;
        let (start_frames, stop_frames) = (self.params.start_frames(), self.params.stop_frames());
        let suspect_frames = self.params.suspect_frames();
        if !self.speaking {
            if probability >= self.params.threshold {
                if self.run == 0 {
                    self.run_start = frame;
                }
                self.run += 1;
                if self.run >= start_frames {
                    self.speaking = true;
                    self.run = 0;
                    self.last_speech = frame;
                    return Some(VadEvent::SpeechStarted { onset_frame: self.run_start });
                }
                if self.run == suspect_frames {
                    return Some(VadEvent::SpeechSuspected { onset_frame: self.run_start });
                }
            } else {
                let suspected = self.run >= suspect_frames;
                self.run = 0;
                if suspected {
                    return Some(VadEvent::SpeechDismissed);
                }
            }
            return None;
        }
        if probability >= self.params.threshold - 0.15 {
            self.last_speech = frame;
            self.run = 0;
            return None;
        }
        self.run += 1;
        if self.run >= stop_frames {
            self.speaking = false;
            self.run = 0;
            return Some(VadEvent::SpeechStopped { last_speech_frame: self.last_speech });
        }
        None
    }
}

/// Stretches of speech (start, end) in samples at 16 kHz, found by a [`VadDetector`] with
/// `params` over a whole recording: `probability` gives a [`FRAME_SAMPLES`] frame's speech
/// probability. Stretches closer than `gap_ms` are one; shorter than `min_ms`, noise.
pub fn speech_stretches(samples_16k: &[f32], params: VadParams, gap_ms: u32, min_ms: u32, mut probability: impl FnMut(&[f32]) -> f32) -> Vec<(usize, usize)> {
    let mut vad = VadDetector::new(params);
    let mut spans: Vec<(usize, usize)> = Vec::new();
    let mut open: Option<usize> = None;
    for frame in samples_16k.chunks_exact(FRAME_SAMPLES) {
        match vad.push(probability(frame)) {
            Some(VadEvent::SpeechStarted { onset_frame }) => open = Some(onset_frame as usize * FRAME_SAMPLES),
            Some(VadEvent::SpeechStopped { last_speech_frame }) => {
                if let Some(start) = open.take() {
                    spans.push((start, (last_speech_frame as usize + 1) * FRAME_SAMPLES));
                }
            }
            _ => {}
        }
    }
    if let Some(start) = open {
        spans.push((start, samples_16k.len()));
    }
    let mut stretches = join_close(spans, gap_ms as usize * 16);
    stretches.retain(|(start, end)| end - start >= min_ms as usize * 16);
    stretches
}

/// Spans (start, end, in order) with those less than `gap` apart joined into one.
pub fn join_close(spans: impl IntoIterator<Item = (usize, usize)>, gap: usize) -> Vec<(usize, usize)> {
    let mut joined: Vec<(usize, usize)> = Vec::new();
    for (start, end) in spans {
        match joined.last_mut() {
            Some(last) if start.saturating_sub(last.1) < gap => last.1 = end,
            _ => joined.push((start, end)),
        }
    }
    joined
}

/// Pauses at least this long cut a recording into stretches heard apart.
pub const RECORDING_PAUSE_MS: u32 = 1_200;
/// Sound shorter than this between pauses is a click or a breath, not speech.
pub const RECORDING_MIN_SPEECH_MS: u32 = 250;
/// Speech probability that counts as speech when cutting a recording. Below a live call's:
/// what no stretch holds is never heard, and a soft first word through a phone line can
/// score under 0.5 for its whole length (a Piper "Hello," at 8 kHz μ-law, seen at 0.35–0.5).
pub const RECORDING_THRESHOLD: f32 = 0.35;

/// The stretches of speech a recording is heard in, one at a time (see
/// `stt::transcribe_stretches`): [`speech_stretches`] cut at pauses of
/// [`RECORDING_PAUSE_MS`], with the permissive [`RECORDING_THRESHOLD`].
pub fn recording_stretches(samples_16k: &[f32], probability: impl FnMut(&[f32]) -> f32) -> Vec<(usize, usize)> {
    speech_stretches(samples_16k, VadParams { threshold: RECORDING_THRESHOLD, ..Default::default() }, RECORDING_PAUSE_MS, RECORDING_MIN_SPEECH_MS, probability)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(detector: &mut VadDetector, probabilities: &[f32]) -> Vec<(usize, VadEvent)> {
        probabilities.iter().enumerate().filter_map(|(i, p)| detector.push(*p).map(|e| (i, e))).collect()
    }

    #[test]
    fn hysteresis_ignores_blips_and_short_gaps() {
        let mut detector = VadDetector::new(VadParams::default());
        // A 1-frame blip, then 10 frames of speech with a 2-frame dip, then silence.
        let mut p = vec![0.0, 0.9, 0.0, 0.0];
        p.extend([0.9; 5]);
        p.extend([0.1, 0.1]);
        p.extend([0.9; 5]);
        p.extend([0.0; 12]);
        let events = feed(&mut detector, &p);
        assert_eq!(events.len(), 5, "{events:?}");
        // The blip is suspected, then dismissed; the speech suspected, then started.
        assert_eq!(events[0], (1, VadEvent::SpeechSuspected { onset_frame: 1 }));
        assert_eq!(events[1], (2, VadEvent::SpeechDismissed));
        assert_eq!(events[2], (4, VadEvent::SpeechSuspected { onset_frame: 4 }));
        assert_eq!(events[3], (6, VadEvent::SpeechStarted { onset_frame: 4 }));
        assert!(matches!(events[4], (_, VadEvent::SpeechStopped { last_speech_frame: 15 })), "{events:?}");
        assert!(!detector.is_speaking());
    }

    #[test]
    fn no_suspicions_when_they_would_not_come_before_the_start() {
        let mut detector = VadDetector::new(VadParams { suspect_ms: 96, ..VadParams::default() });
        let events = feed(&mut detector, &[0.0, 0.9, 0.9, 0.0, 0.9, 0.9, 0.9]);
        assert_eq!(events, vec![(6, VadEvent::SpeechStarted { onset_frame: 4 })]);
        // Two frames to suspect: a one-frame blip passes unremarked.
        let mut detector = VadDetector::new(VadParams { suspect_ms: 64, ..VadParams::default() });
        let events = feed(&mut detector, &[0.9, 0.0, 0.9, 0.9, 0.0]);
        assert_eq!(events, vec![(3, VadEvent::SpeechSuspected { onset_frame: 2 }), (4, VadEvent::SpeechDismissed)]);
    }

    #[test]
    fn silent_frames_count_the_gap_while_speaking_and_reset_on_speech() {
        let mut detector = VadDetector::new(VadParams::default());
        feed(&mut detector, &[0.9; 4]);
        assert_eq!(detector.silent_frames(), 0);
        feed(&mut detector, &[0.1, 0.1]);
        assert_eq!(detector.silent_frames(), 2);
        // Above the stop threshold (0.35) counts as speech again.
        feed(&mut detector, &[0.4]);
        assert_eq!(detector.silent_frames(), 0);
        feed(&mut detector, &[0.0; 8]);
        assert!(!detector.is_speaking());
        assert_eq!(detector.silent_frames(), 0, "quiet is not a gap in speech");
    }
}
