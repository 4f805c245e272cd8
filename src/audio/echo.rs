//! Echo cancellation: the agent's own voice, come back on the caller's side, taken out.
//!
//! A phone line carries some of what the agent says back to us — a handset's earpiece leaking
//! into its microphone, a speakerphone, a hybrid on an analogue leg — delayed and attenuated.
//! Heard as the caller, it makes the agent interrupt itself and answer its own words. The call
//! knows exactly what it played, so the echo can be predicted and subtracted: WebRTC's AEC3
//! (the `aec3` crate, a Rust port) estimates the delay and the echo path from the played
//! audio and removes it, and suppresses what the linear filter leaves while the agent talks
//! alone. Noise suppression and gain control stay off: the VAD and Whisper want the caller's
//! audio as it came.

use aec3::nodes::audio::AudioFormat;
use aec3::pipelines::linear::{self, LinearPipeline};

use super::MODEL_RATE;

/// The echo path's gain the suppressor assumes until it has measured the line's.
const ASSUMED_ECHO_GAIN: f32 = 0.1;

/// AEC3 works on 10 ms frames.
const FRAME: usize = MODEL_RATE as usize / 100;

/// The line is judged in blocks of this many frames (250 ms).
const BLOCK_FRAMES: usize = 25;
/// A block is evidence only when the agent played through it and the blocks before it: an echo
/// up to a second late (the most a line is expected to bring back) lands inside that window.
const WINDOW_BLOCKS: usize = 5;
/// Played this loud (mean square, −40 dBFS), a block counts as the agent talking.
const TALKING: f32 = 1e-4;
/// The caller's side this far below the quietest block of the window (−40 dB) carries no echo
/// worth cancelling.
const ECHO_FREE_RATIO: f32 = 1e-4;
/// Blocks of such evidence (half a second) before the line is judged free of echo.
const EVIDENCE_BLOCKS: u32 = 2;

#[derive(Debug, thiserror::Error)]
#[error("the echo canceller failed: {0}")]
pub struct EchoError(String);

/// One call's echo canceller, at [`MODEL_RATE`]. The canceller itself (`aec3`'s graph, built
/// on `Rc`) cannot move between threads, so it lives on a thread of its own for the call, and
/// [`EchoCanceller::process`] hands it audio and waits for the result — the same time the work
/// would take inline (~0.2 ms per 20 ms of audio), with the thread gone when the call ends.
pub struct EchoCanceller {
    work: std::sync::mpsc::Sender<(Vec<f32>, Vec<f32>)>,
    done: std::sync::mpsc::Receiver<Result<Vec<f32>, EchoError>>,
}

impl EchoCanceller {
    pub fn new() -> Result<EchoCanceller, EchoError> {
        let (work, jobs) = std::sync::mpsc::channel::<(Vec<f32>, Vec<f32>)>();
        let (results, done) = std::sync::mpsc::channel();
        let (ready_tx, ready) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("echo-canceller".into())
            .spawn(move || {
                let mut frames = match Frames::new() {
                    Ok(frames) => {
                        let _ = ready_tx.send(Ok(()));
                        frames
                    }
                    Err(error) => {
                        let _ = ready_tx.send(Err(error));
                        return;
                    }
                };
                while let Ok((played, heard)) = jobs.recv() {
                    if results.send(frames.process(&played, &heard)).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| EchoError(format!("starting its thread: {e}")))?;
        ready.recv().map_err(|_| EchoError("its thread ended before it started".into()))??;
        Ok(EchoCanceller { work, done })
    }

    /// Takes `played` (what the agent played) and `heard` (the caller's side) over the same
    /// stretch of time and returns the caller's side without the echo. Audio goes through in
    /// 10 ms frames: the rest of a frame waits for the next call, so the output may be up to a
    /// frame shorter (or longer) than `heard`, never out of order.
    pub fn process(&mut self, played: &[f32], heard: &[f32]) -> Result<Vec<f32>, EchoError> {
        self.work.send((played.to_vec(), heard.to_vec())).map_err(|_| EchoError("its thread has ended".into()))?;
        self.done.recv().map_err(|_| EchoError("its thread has ended".into()))?
    }
}

/// The canceller and the audio not yet a whole frame.
struct Frames {
    pipeline: LinearPipeline,
    played: Vec<f32>,
    heard: Vec<f32>,
    probe: LineProbe,
}

impl Frames {
    fn new() -> Result<Frames, EchoError> {
        let format = AudioFormat::ten_ms(MODEL_RATE, 1);
        let mut config = aec3::api::EchoCanceller3Config::default();
        // Before the linear filter has found the line's echo, the suppressor assumes one as
        // loud as `default_gain` times what was played. WebRTC's 1.0 (a speakerphone) takes
        // a caller talking over the agent's first reply on a line with no echo for echo and
        // removes it (37 dB down); a phone's echo comes back well below the agent's level,
        // and at 0.1 that caller is kept whole while a −10 dB echo is still 32 dB down from
        // its first second. The price: an echo louder than that (−4 dB) leaks for its first
        // half second, 11 dB down, before the filter has it (unit tests below).
        config.ep_strength.default_gain = ASSUMED_ECHO_GAIN;
        let pipeline = linear::builder(format, format)
            .aec3_config(config)
            .enable_noise_suppression(false)
            .enable_gain_controller2(false)
            .enable_post_filter(false)
            .build()
            .map_err(|e| EchoError(format!("{e:?}")))?;
        Ok(Frames { pipeline, played: Vec::new(), heard: Vec::new(), probe: LineProbe::default() })
    }

    fn process(&mut self, played: &[f32], heard: &[f32]) -> Result<Vec<f32>, EchoError> {
        self.played.extend_from_slice(played);
        self.heard.extend_from_slice(heard);
        let mut out = Vec::with_capacity(self.heard.len());
        let mut frame_out = [0f32; FRAME];
        let frames = self.heard.len() / FRAME;
        for i in 0..frames {
            // The reference first: an echo never comes back before it was played.
            let reference: [f32; FRAME] = match self.played.get(i * FRAME..(i + 1) * FRAME) {
                Some(samples) => samples.try_into().expect("a frame"),
                None => [0.0; FRAME],
            };
            let capture = &self.heard[i * FRAME..(i + 1) * FRAME];
            if self.probe.echo_free() {
                // Even without echo the suppressor alters a caller who talks over the agent
                // (enough to turn "Friday, please" into "Right, day three"): hear it as it came.
                out.extend_from_slice(capture);
                continue;
            }
            if self.probe.frame(&reference, capture) {
                tracing::debug!("the line carries no echo of the agent: echo cancellation stands aside");
            }
            self.pipeline.handle_render_frame(&reference).map_err(|e| EchoError(format!("{e:?}")))?;
            let produced = self.pipeline.process_capture_frame(capture, &mut frame_out).map_err(|e| EchoError(format!("{e:?}")))?;
            if produced {
                out.extend_from_slice(&frame_out);
            } else {
                out.extend_from_slice(capture);
            }
        }
        self.heard.drain(..frames * FRAME);
        let used = (frames * FRAME).min(self.played.len());
        self.played.drain(..used);
        Ok(out)
    }
}

/// Whether the line brings any of the agent's voice back. A clean line (a headset, a browser
/// with its own echo control, a good handset) shows it while the agent talks and the caller
/// listens: the caller's side stays near silent however long the agent plays. A caller talking
/// or noise on the line only delays the judgement; an echo never passes for silence, since every
/// block judged had the agent talking for the longest delay before it.
#[derive(Default)]
struct LineProbe {
    /// Mean squares of what was played in the latest blocks, oldest first.
    played_blocks: std::collections::VecDeque<f32>,
    played: f32,
    heard: f32,
    frames: usize,
    evidence: u32,
}

impl LineProbe {
    fn echo_free(&self) -> bool {
        self.evidence >= EVIDENCE_BLOCKS
    }

    /// Takes one frame of each side; true when this frame settled that the line is echo-free.
    fn frame(&mut self, played: &[f32], heard: &[f32]) -> bool {
        self.played += played.iter().map(|x| x * x).sum::<f32>();
        self.heard += heard.iter().map(|x| x * x).sum::<f32>();
        self.frames += 1;
        if self.frames < BLOCK_FRAMES {
            return false;
        }
        let samples = (BLOCK_FRAMES * FRAME) as f32;
        let (played, heard) = (self.played / samples, self.heard / samples);
        (self.played, self.heard, self.frames) = (0.0, 0.0, 0);
        if self.played_blocks.len() == WINDOW_BLOCKS {
            self.played_blocks.pop_front();
        }
        self.played_blocks.push_back(played);
        let quietest = self.played_blocks.iter().copied().fold(f32::INFINITY, f32::min);
        if self.played_blocks.len() == WINDOW_BLOCKS && quietest >= TALKING && heard < quietest * ECHO_FREE_RATIO {
            self.evidence += 1;
            return self.echo_free();
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rms(x: &[f32]) -> f32 {
        (x.iter().map(|v| v * v).sum::<f32>() / x.len().max(1) as f32).sqrt()
    }

    /// A voice-like test signal: a few drifting harmonics, amplitude-modulated into syllables.
    fn voice(seconds: f32, pitch: f32, seed: u32) -> Vec<f32> {
        let n = (seconds * MODEL_RATE as f32) as usize;
        let mut state = seed;
        (0..n)
            .map(|i| {
                let t = i as f32 / MODEL_RATE as f32;
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                let noise = (state >> 9) as f32 / (1u32 << 23) as f32 - 0.5;
                let f = pitch * (1.0 + 0.1 * (t * 1.3).sin());
                let syllables = (0.5 + 0.5 * (t * std::f32::consts::TAU * 3.0).sin()).powi(2);
                let tone: f32 = (1..6).map(|h| (t * f * h as f32 * std::f32::consts::TAU).sin() / h as f32).sum();
                0.2 * syllables * (tone + 0.3 * noise)
            })
            .collect()
    }

    #[test]
    fn an_attenuated_delayed_echo_is_removed_and_the_caller_kept() {
        // A loud handset (120 ms, a third of the agent's level) and a long, strong path
        // (500 ms, −4 dB): both louder than the canceller assumes before it has measured them.
        for (delay_ms, gain) in [(120, 0.3), (500, 0.63)] {
            let agent = voice(6.0, 140.0, 1);
            let caller = voice(2.0, 210.0, 2);
            let delay = MODEL_RATE as usize * delay_ms / 1000;
            // The caller's side: the agent, late and attenuated; the caller talks over it from 4 s.
            let heard: Vec<f32> = (0..agent.len())
                .map(|i| {
                    let echo = if i >= delay { gain * agent[i - delay] } else { 0.0 };
                    let talk = if i >= 4 * MODEL_RATE as usize { caller[i - 4 * MODEL_RATE as usize] } else { 0.0 };
                    echo + talk
                })
                .collect();
            let out = cancel(&agent, &heard);
            let second = |x: &[f32], s: usize| rms(&x[s * MODEL_RATE as usize..(s + 1) * MODEL_RATE as usize]);
            let context = format!("{delay_ms} ms at {gain}");
            // Echo alone, once adapted (seconds 1–3): at least 20 dB down. In the first second
            // a path louder than the canceller assumes leaks while the filter learns it (the
            // −4 dB one: 11 dB down; the −10 dB one: 32 dB), never less than 10 dB down.
            assert!(second(&out, 0) < second(&heard, 0) / 3.0, "{context}, first second: echo {} → {}", second(&heard, 0), second(&out, 0));
            for s in [1, 2] {
                assert!(second(&out, s) < second(&heard, s) / 10.0, "{context}, second {s}: echo {} → {}", second(&heard, s), second(&out, s));
            }
            // The caller over the echo (seconds 4–5) keeps most of its level.
            let caller_level = rms(&caller[..MODEL_RATE as usize]);
            assert!(second(&out, 4) > caller_level * 0.4, "{context}: the caller {caller_level} came out at {}", second(&out, 4));
        }
    }

    /// Runs the canceller over `heard` against `agent`, in 20 ms pieces.
    fn cancel(agent: &[f32], heard: &[f32]) -> Vec<f32> {
        let mut canceller = EchoCanceller::new().unwrap();
        agent.chunks(320).zip(heard.chunks(320)).flat_map(|(played, heard)| canceller.process(played, heard).unwrap()).collect()
    }

    #[test]
    fn on_a_line_without_echo_a_caller_talking_over_the_first_reply_is_kept() {
        // The agent's first reply plays; the line carries none of it back. The caller starts
        // talking 1 s in, before the canceller could have learnt anything about the line.
        let agent = voice(4.0, 140.0, 3);
        let caller = voice(2.5, 210.0, 4);
        let start = MODEL_RATE as usize;
        let heard: Vec<f32> = (0..agent.len()).map(|i| if i >= start && i - start < caller.len() { 0.5 * caller[i - start] } else { 0.0 }).collect();
        let out = cancel(&agent, &heard);
        let level = |x: &[f32]| rms(&x[start + 1600..start + 2 * MODEL_RATE as usize]);
        assert!(level(&out) > level(&heard) * 0.7, "the caller {} came out at {}", level(&heard), level(&out));
    }

    #[test]
    fn once_the_line_has_shown_no_echo_a_caller_over_the_agent_comes_through_untouched() {
        // The agent talks alone for two seconds on a clean line, then the caller talks over it.
        let agent = voice(5.0, 140.0, 5);
        let caller = voice(2.0, 210.0, 6);
        let start = 2 * MODEL_RATE as usize;
        let heard: Vec<f32> = (0..agent.len()).map(|i| if i >= start && i - start < caller.len() { 0.5 * caller[i - start] } else { 0.0 }).collect();
        let out = cancel(&agent, &heard);
        assert_eq!(&out[start..start + caller.len()], &heard[start..start + caller.len()]);
    }

    #[test]
    fn an_echo_is_never_taken_for_a_clean_line() {
        // Faint and strong echoes, up to the longest delay a line may bring, from the agent's first
        // word: the probe never judges the line clean. A clean line is judged within two seconds.
        let agent = voice(8.0, 140.0, 7);
        for (delay_ms, gain) in [(0, 0.3), (120, 0.3), (500, 0.63), (1000, 0.3), (1000, 0.02), (250, 0.011)] {
            let delay = MODEL_RATE as usize * delay_ms / 1000;
            let heard: Vec<f32> = (0..agent.len()).map(|i| if i >= delay { gain * agent[i - delay] } else { 0.0 }).collect();
            let mut probe = LineProbe::default();
            for (played, heard) in agent.chunks(FRAME).zip(heard.chunks(FRAME)) {
                probe.frame(played, heard);
            }
            assert!(!probe.echo_free(), "an echo {delay_ms} ms late at {gain} passed for a clean line");
        }
        let mut probe = LineProbe::default();
        let quiet_line: Vec<f32> = voice(2.0, 300.0, 8).iter().map(|x| x * 0.001).collect();
        let decided = agent.chunks(FRAME).zip(quiet_line.chunks(FRAME)).position(|(played, heard)| probe.frame(played, heard));
        assert!(decided.is_some_and(|frame| frame * FRAME <= 2 * MODEL_RATE as usize), "{decided:?}");
    }
}
