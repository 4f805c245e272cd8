//! The loopback line: a simulated phone line inside the process, driven in real time.
//!
//! One clock task ticks every 20 ms. Each tick it takes 20 ms of caller audio (silence when
//! the caller is quiet) into the call, and plays 20 ms of queued agent audio out. Both
//! directions are recorded on the same timeline (the stereo WAV of `demo`/`simulate`), and
//! every time — when agent audio started, when a clear took effect — is a tick of that clock,
//! so latency figures are measured on the audio, not on log lines.
//!
//! The far end is played by `crate::simulation::ScriptedCaller`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::live::LiveSender;
use super::playout::Playout;
use super::recorder::Recorder;
use super::AudioOut;

pub const TICK: Duration = Duration::from_millis(20);

/// What happened on the line, for reports and tests.
#[derive(Debug, Clone, Default)]
pub struct LineLog {
    /// Caller speech (start, end) on the timeline, one per spoken line.
    pub caller_speech: Vec<(Duration, Duration)>,
    /// The scripted lines in the order the caller said them (a line asked for again twice).
    pub caller_lines: Vec<usize>,
    /// Times at which agent audio was cleared (barge-in), and whether anything was cut.
    pub clears: Vec<(Duration, bool)>,
    pub hung_up_by_agent: Option<Duration>,
    pub dtmf_sent: String,
    pub transfers: Vec<String>,
}

#[derive(Default)]
struct State {
    playout: Playout,
    recorder: Option<Recorder>,
    caller_queue: VecDeque<f32>,
    caller_track: Vec<f32>,
    agent_track: Vec<f32>,
    ticks: u64,
    log: LineLog,
    /// What the agent said since the caller's last line began (for `after:` waits).
    agent_words: String,
    /// The agent's audio was cut (a clear dropped queued audio) and it has queued none since:
    /// it is hearing the words that cut it, not done talking.
    cut_unanswered: bool,
    /// The agent's audio coming back on the caller's side, as on a phone whose earpiece
    /// leaks into its microphone ([`LoopbackLine::echo`]).
    echo: Option<EchoPath>,
}

/// An echo path: the agent's audio, delayed and attenuated, added to the caller's.
struct EchoPath {
    gain: f32,
    /// Agent audio on its way back, the delay's worth ahead of what comes back now.
    delay_line: VecDeque<f32>,
}

/// The line itself; cheap to clone (shared state).
#[derive(Clone)]
pub struct LoopbackLine {
    rate: u32,
    state: Arc<Mutex<State>>,
    hangup: CancellationToken,
    dtmf: tokio::sync::mpsc::UnboundedSender<char>,
}

impl LoopbackLine {
    /// Creates the line and starts its clock; caller audio arrives on the returned receiver.
    pub fn start(rate: u32) -> (LoopbackLine, super::CallInput) {
        let (dtmf, dtmf_rx) = tokio::sync::mpsc::unbounded_channel();
        let line = LoopbackLine { rate, state: Arc::new(Mutex::new(State::default())), hangup: CancellationToken::new(), dtmf };
        // Live audio: if the call falls behind, the oldest chunks are dropped and counted.
        let (tx, rx) = super::live::channel(AUDIO_IN_DEPTH);
        tokio::spawn(line.clone().run_clock(tx));
        (line, super::CallInput { audio: rx, dtmf: dtmf_rx })
    }

    /// From now on the caller's side carries the agent's audio back, `delay` late and scaled
    /// by `gain` (0.3 is a loud handset; 0.05 a quiet one).
    pub fn echo(&self, delay: Duration, gain: f32) {
        let samples = (delay.as_secs_f64() * self.rate as f64).round() as usize;
        self.lock().echo = Some(EchoPath { gain, delay_line: std::iter::repeat_n(0.0, samples).collect() });
    }

    /// The caller presses keys.
    pub fn caller_presses(&self, digits: &str) {
        for digit in digits.chars() {
            let _ = self.dtmf.send(digit);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }


    async fn run_clock(self, audio_in: LiveSender) {
        let chunk = (self.rate / 50) as usize;
        let start = Instant::now();
        let mut interval = tokio::time::interval_at(tokio::time::Instant::from_std(start), TICK);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        loop {
            tokio::select! {
                _ = self.hangup.cancelled() => break,
                _ = interval.tick() => {}
            }
            audio_in.push(self.tick(chunk));
        }
        if let Some(recorder) = self.lock().recorder.take() {
            recorder.finish();
        }
    }

    /// One 20 ms step in both directions; returns the caller's chunk.
    fn tick(&self, chunk: usize) -> Vec<f32> {
        let mut state = self.lock();
        let now = TICK * state.ticks as u32;
        state.ticks += 1;
        let mut caller = Vec::with_capacity(chunk);
        for _ in 0..chunk {
            caller.push(state.caller_queue.pop_front().unwrap_or(0.0));
        }
        let mut out = state.playout.step(chunk, now).samples;
        out.resize(chunk, 0.0);
        if let Some(echo) = &mut state.echo {
            echo.delay_line.extend(out.iter().copied());
            for sample in &mut caller {
                *sample += echo.gain * echo.delay_line.pop_front().unwrap_or(0.0);
            }
        }
        state.caller_track.extend_from_slice(&caller);
        if let Some(recorder) = &state.recorder {
            recorder.caller(&caller);
            recorder.step(&out);
        }
        state.agent_track.extend_from_slice(&out);
        caller
    }

    /// Queues caller audio (at the line's rate); returns when it will have been heard.
    pub fn caller_says(&self, samples: &[f32]) -> (Duration, Duration) {
        let mut state = self.lock();
        state.agent_words.clear();
        let now = TICK * state.ticks as u32;
        let start = now + Duration::from_secs_f64(state.caller_queue.len() as f64 / self.rate as f64);
        state.caller_queue.extend(samples.iter().copied());
        let end = start + Duration::from_secs_f64(samples.len() as f64 / self.rate as f64);
        (start, end)
    }

    pub fn caller_is_speaking(&self) -> bool {
        !self.lock().caller_queue.is_empty()
    }

    /// The agent's words, as the call reports them once said: a scripted caller may wait for
    /// a phrase (`after:`).
    pub fn agent_said(&self, text: &str) {
        let mut state = self.lock();
        state.agent_words.push(' ');
        state.agent_words.push_str(text);
    }

    /// Whether the agent said `phrase` (words, case and punctuation aside) since the caller's
    /// last line began.
    pub fn agent_has_said(&self, phrase: &str) -> bool {
        let said = crate::text::normalized_words(&self.lock().agent_words).join(" ");
        let phrase = crate::text::normalized_words(phrase).join(" ");
        !phrase.is_empty() && format!(" {said} ").contains(&format!(" {phrase} "))
    }

    pub fn record_caller_line(&self, index: usize) {
        self.lock().log.caller_lines.push(index);
    }

    pub fn record_caller_speech(&self, start: Duration, end: Duration) {
        self.lock().log.caller_speech.push((start, end));
    }

    /// The caller hangs up: the clock stops and the call's audio input closes.
    pub fn caller_hangs_up(&self) {
        self.hangup.cancel();
    }

    pub fn is_hung_up(&self) -> bool {
        self.hangup.is_cancelled()
    }

    pub fn hung_up(&self) -> CancellationToken {
        self.hangup.clone()
    }

    /// Whether the agent was cut off and has not spoken since ([`State::cut_unanswered`]).
    pub fn agent_was_cut(&self) -> bool {
        self.lock().cut_unanswered
    }

    pub fn log(&self) -> LineLog {
        self.lock().log.clone()
    }

    /// The recording: caller on the left, agent on the right.
    pub fn recording(&self) -> (Vec<f32>, Vec<f32>) {
        let state = self.lock();
        (state.caller_track.clone(), state.agent_track.clone())
    }
}

/// Caller chunks buffered before the oldest is dropped (~1 s of audio).
const AUDIO_IN_DEPTH: usize = 50;

impl AudioOut for LoopbackLine {
    fn rate(&self) -> u32 {
        self.rate
    }

    fn now(&self) -> Duration {
        TICK * self.lock().ticks as u32
    }

    fn play(&self, segment: u64, samples: Vec<f32>) {
        let mut state = self.lock();
        state.cut_unanswered = false;
        state.playout.play(segment, samples);
    }

    fn clear(&self) -> Duration {
        let mut state = self.lock();
        let now = TICK * state.ticks as u32;
        let cut = state.playout.clear();
        state.cut_unanswered |= cut;
        state.log.clears.push((now, cut));
        now
    }

    fn pause(&self) -> Duration {
        let mut state = self.lock();
        state.playout.pause();
        TICK * state.ticks as u32
    }

    fn resume(&self) {
        self.lock().playout.resume();
    }

    fn heard(&self, segment: u64) -> f32 {
        self.lock().playout.heard(segment)
    }

    fn is_idle(&self) -> bool {
        self.lock().playout.is_idle()
    }

    fn started_at(&self, segment: u64) -> Option<Duration> {
        self.lock().playout.started_at(segment)
    }

    fn hang_up(&self) {
        let now = self.now();
        self.lock().log.hung_up_by_agent = Some(now);
        self.hangup.cancel();
    }

    fn send_dtmf(&self, digits: &str) {
        self.lock().log.dtmf_sent.push_str(digits);
    }

    fn transfer(&self, destination: &str) {
        self.lock().log.transfers.push(destination.to_string());
    }

    fn record(&self, recorder: Recorder) {
        self.lock().recorder = Some(recorder);
    }

    fn played(&self) -> Option<super::played::Played> {
        Some(self.lock().playout.played(self.rate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_phrase_counts_once_the_agent_said_it_since_the_callers_last_line() {
        let (line, _input) = LoopbackLine::start(8_000);
        assert!(!line.agent_has_said("what time"));
        line.agent_said("Of course. And at what time?");
        assert!(line.agent_has_said("At what TIME"), "case and punctuation aside");
        assert!(!line.agent_has_said("what tim"), "whole words only");
        line.caller_says(&[0.0; 80]);
        assert!(!line.agent_has_said("what time"), "said before the caller's last line");
        line.caller_hangs_up();
    }

    #[tokio::test]
    async fn an_agent_cut_off_is_hearing_until_it_speaks_again() {
        let (line, _input) = LoopbackLine::start(8_000);
        line.clear();
        assert!(!line.agent_was_cut(), "a clear with nothing queued cuts nothing");
        line.play(1, vec![0.1; 8_000]);
        line.clear();
        assert!(line.agent_was_cut());
        assert!(line.is_idle(), "silent while it hears the words that cut it");
        line.play(2, vec![0.1; 800]);
        assert!(!line.agent_was_cut(), "it answered");
        line.caller_hangs_up();
    }
}
