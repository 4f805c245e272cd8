//! Replaying a recorded call: the caller's channel cut into turns by the VAD, each turn to be
//! played after the new agent has answered the one before (reactive replay); the recorded
//! agent's channel is the reference the new answers are set beside.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// The rate turns are cut and written at.
pub const RATE: u32 = 16_000;

/// The two channels of a WAV as mono tracks, and its rate.
pub fn two_channels(path: &Path) -> anyhow::Result<(Vec<f32>, Vec<f32>, u32)> {
    let mut reader = hound::WavReader::open(path).with_context(|| format!("{}: not a WAV file (give the call's two-channel recording)", path.display()))?;
    let spec = reader.spec();
    anyhow::ensure!(spec.channels == 2, "{}: {} channel(s); a replay needs the caller and the agent on two channels", path.display(), spec.channels);
    let samples: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => reader.samples::<f32>().collect::<Result<_, _>>()?,
        hound::SampleFormat::Int => {
            let scale = (1i64 << (spec.bits_per_sample - 1)) as f32;
            reader.samples::<i32>().map(|s| s.map(|s| s as f32 / scale)).collect::<Result<_, _>>()?
        }
    };
    let left = samples.iter().step_by(2).copied().collect();
    let right = samples.iter().skip(1).step_by(2).copied().collect();
    Ok((left, right, spec.sample_rate))
}

/// The agent channel's audio after caller turn `i` up to the next turn (at [`RATE`]): what the
/// recorded agent answered to it.
pub fn answer_after<'a>(agent: &'a [f32], turns: &[(usize, usize)], i: usize) -> &'a [f32] {
    let end = turns[i].1.min(agent.len());
    let next = turns.get(i + 1).map(|t| t.0).unwrap_or(agent.len()).min(agent.len());
    &agent[end..next.max(end)]
}

/// What the recorded agent said in `span` (empty when it holds no speech), heard as
/// `ringline transcribe` hears a recording: its stretches of speech found by the VAD
/// (`probability` gives a frame's speech probability, from a stream fresh for this span)
/// and heard one at a time, so a long answer with pauses loses none of its sentences.
pub fn said_in(span: &[f32], stt: &dyn crate::stt::SpeechToText, probability: impl FnMut(&[f32]) -> f32) -> String {
    let stretches = crate::vad::recording_stretches(span, probability);
    crate::stt::transcribe_stretches(stt, span, &stretches, None, || {}).map(|t| t.text).unwrap_or_default()
}

/// Each caller turn (spans at [`RATE`] of `caller`) written to `dir` as a clip with a little
/// of the silence around it — the VAD's edges clip soft onsets and word endings — as the
/// caller lines of a script (`{"audio": path}`).
pub fn turn_clips(caller: &[f32], turns: &[(usize, usize)], dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut clips = Vec::new();
    for (i, (start, end)) in turns.iter().enumerate() {
        let path = dir.join(format!("turn-{i}.wav"));
        let (start, end) = (start.saturating_sub(RATE as usize / 5), (end + RATE as usize * 3 / 10).min(caller.len()));
        crate::audio::Audio::new(caller[start..end].to_vec(), RATE).write_wav(&path)?;
        clips.push(path);
    }
    Ok(clips)
}

/// Silence that separates two caller turns (shorter pauses stay inside a turn).
pub const TURN_GAP_MS: u32 = 1_200;
/// Turns shorter than this are noise, not speech.
pub const MIN_TURN_MS: u32 = 250;

/// Caller turns (start, end) in samples at 16 kHz, found by the VAD: `probability` gives a
/// 512-sample frame's speech probability. Spans closer than [`TURN_GAP_MS`] are one turn.
pub fn caller_turns(samples_16k: &[f32], probability: impl FnMut(&[f32]) -> f32) -> Vec<(usize, usize)> {
    crate::vad::speech_stretches(samples_16k, crate::vad::VadParams::default(), TURN_GAP_MS, MIN_TURN_MS, probability)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speech_spans_become_turns_and_short_pauses_stay_inside_one() {
        // 16 kHz: speech (1.0) for 1 s, a 0.5 s pause, 1 s more, 3 s of silence, 0.8 s, silence.
        let mut samples = Vec::new();
        for (value, seconds) in [(1.0f32, 1.0f32), (0.0, 0.5), (1.0, 1.0), (0.0, 3.0), (1.0, 0.8), (0.0, 2.0)] {
            samples.extend(std::iter::repeat_n(value, (seconds * 16_000.0) as usize));
        }
        let turns = caller_turns(&samples, |frame| frame[0]);
        assert_eq!(turns.len(), 2, "{turns:?}");
        let seconds = |s: usize| s as f32 / 16_000.0;
        assert!(seconds(turns[0].0) < 0.05 && (seconds(turns[0].1) - 2.5).abs() < 0.1, "{turns:?}");
        assert!((seconds(turns[1].0) - 5.5).abs() < 0.1 && (seconds(turns[1].1) - 6.3).abs() < 0.1, "{turns:?}");
    }

    /// Hears every piece as "part N".
    #[derive(Default)]
    struct Parts(std::sync::Mutex<usize>);

    impl crate::stt::SpeechToText for Parts {
        fn transcribe(&self, _samples_16k: &[f32]) -> Result<crate::stt::Transcript, crate::stt::SttError> {
            let mut heard = self.0.lock().unwrap();
            *heard += 1;
            Ok(crate::stt::Transcript { text: format!(" part {heard}"), ..Default::default() })
        }
    }

    #[test]
    fn a_recorded_answer_is_heard_a_stretch_at_a_time_and_silence_is_no_words() {
        // 16 kHz: silence 1 s, speech 1 s, a 2 s pause, speech 1.5 s, silence 1 s.
        let mut samples = Vec::new();
        for (value, seconds) in [(0.0f32, 1.0f32), (1.0, 1.0), (0.0, 2.0), (1.0, 1.5), (0.0, 1.0)] {
            samples.extend(std::iter::repeat_n(value, (seconds * 16_000.0) as usize));
        }
        let stt = Parts::default();
        assert_eq!(said_in(&samples, &stt, |frame| frame[0]), "part 1 part 2");
        assert_eq!(said_in(&vec![0.0; 48_000], &stt, |frame| frame[0]), "", "no speech, nothing heard");
        assert_eq!(*stt.0.lock().unwrap(), 2, "silence is not sent to the recognizer");
    }
}
