//! A streamed line: a call whose audio travels over one socket in 20 ms frames — a Twilio
//! Media Stream, a browser's web call. The protocol modules (`twilio`, `webcall`) turn
//! messages into calls on this line and [`Outgoing`] into messages.
//!
//! The agent's audio goes out on the line's own 20 ms clock, one frame a tick, so the far end
//! never holds more than a frame or two: what was sent is what the caller heard, a pause stops
//! the audio at once, and a mark after each segment lets the far end confirm its end.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::live::LiveSender;
use super::playout::Playout;
use super::recorder::Recorder;
use super::AudioOut;

const TICK: Duration = Duration::from_millis(20);
/// Outgoing messages queued for the socket before the line counts it as not keeping up (10 s).
const OUT_DEPTH: usize = 500;
/// Ids of the segments this line plays for DTMF tones, counted down from the top so they never
/// meet the pipeline's.
const DTMF_SEGMENTS: u64 = u64::MAX - 1_000_000;

/// What the line asks its socket to send.
#[derive(Debug, Clone, PartialEq)]
pub enum Outgoing {
    /// One 20 ms frame of agent audio at the line's rate.
    Audio(Vec<f32>),
    /// The segment whose last frame was just sent.
    Mark(u64),
    /// Drop whatever agent audio is buffered (a barge-in).
    Clear,
    /// A JSON event for the far end (a web call's transcript); audio-only protocols drop it.
    Event(serde_json::Value),
    /// A key the agent presses, from the next frame on, on a line whose far end takes keys out
    /// of band ([`CallControl::sends_keys`]): the frames meanwhile are silence as long as the
    /// key's tone would have been, for the protocol to send the key as it sends keys.
    Key(char),
}

/// What the call does beyond audio (for Twilio, through its REST API).
pub trait CallControl: Send + Sync {
    /// Ends the call for both sides.
    fn hang_up(&self);
    /// Sends the caller on to `destination`, then cancels `done` (which closes the stream).
    fn transfer(&self, destination: &str, done: CancellationToken);
    /// Tells the far end we hold the call or take it off hold (see
    /// [`super::AudioOut::hold_far_end`]); by default, nothing.
    fn hold(&self, _on: bool) {}
    /// Whether the far end takes the agent's keys out of band (RTP telephone-events): then
    /// the line says [`Outgoing::Key`] where a key's tone would begin and plays silence for it.
    /// By default no: keys go in band, as tones.
    fn sends_keys(&self) -> bool {
        false
    }
}

/// What happened on the line, for the call's record and tests.
#[derive(Debug, Clone, Default)]
pub struct StreamLog {
    pub frames_sent: u64,
    pub clears_sent: u64,
    pub marks_sent: u64,
    /// Marks Twilio reported played: segments the caller heard to their end.
    pub marks_played: u64,
    pub dtmf_received: String,
    /// Ticks on which the socket's queue was full (the socket is not keeping up).
    pub frames_late: u64,
    /// Clock ticks, and those that ran more than a frame (20 ms) after their due time.
    pub ticks: u64,
    pub ticks_late: u64,
    /// The latest a tick ran after its due time.
    pub max_lateness: Duration,
}

struct State {
    playout: Playout,
    recorder: Option<Recorder>,
    ticks: u64,
    log: StreamLog,
    next_dtmf_segment: u64,
    /// The keys sent out of band, by the segment of silence played in their place.
    keys: HashMap<u64, char>,
}

/// One live streamed call; cheap to clone.
#[derive(Clone)]
pub struct StreamLine {
    /// The stream's name in logs (Twilio's stream sid, a web call's id).
    name: Arc<str>,
    rate: u32,
    state: Arc<Mutex<State>>,
    out: mpsc::Sender<Outgoing>,
    audio_in: Arc<LiveSender>,
    dtmf_in: mpsc::UnboundedSender<char>,
    /// Cancelled when the call is over, by either side.
    ended: CancellationToken,
    control: Option<Arc<dyn CallControl>>,
    /// Why the stream broke, if it did (the call is then `failed` with this reason).
    failure: Arc<Mutex<Option<String>>>,
    /// A transfer is under way: the call is handed on, not hung up.
    transferring: Arc<std::sync::atomic::AtomicBool>,
}

impl StreamLine {
    /// Starts the line's clock for a started stream at `rate`. What the socket must send
    /// arrives on the returned receiver; the caller's audio and keys reach the call through the
    /// `CallInput`.
    pub fn start(name: &str, rate: u32, control: Option<Arc<dyn CallControl>>) -> (StreamLine, super::CallInput, mpsc::Receiver<Outgoing>) {
        let (out, out_rx) = mpsc::channel(OUT_DEPTH);
        let (audio_tx, audio_rx) = super::live::channel(AUDIO_IN_DEPTH);
        let (dtmf_tx, dtmf_rx) = mpsc::unbounded_channel();
        let line = StreamLine {
            name: Arc::from(name),
            rate,
            state: Arc::new(Mutex::new(State { playout: Playout::default(), recorder: None, ticks: 0, log: StreamLog::default(), next_dtmf_segment: DTMF_SEGMENTS, keys: HashMap::new() })),
            out,
            audio_in: Arc::new(audio_tx),
            dtmf_in: dtmf_tx,
            ended: CancellationToken::new(),
            control,
            failure: Arc::new(Mutex::new(None)),
            transferring: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        };
        Clock::shared().add(line.clone());
        (line, super::CallInput { audio: audio_rx, dtmf: dtmf_rx }, out_rx)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One step of the clock, `lateness` after its due time: the next frame out, and a mark
    /// for each segment that ended in it.
    fn tick(&self, lateness: Duration) {
        let messages = {
            let mut state = self.lock();
            state.log.ticks += 1;
            if lateness > TICK {
                state.log.ticks_late += 1;
            }
            state.log.max_lateness = state.log.max_lateness.max(lateness);
            let now = TICK * state.ticks as u32;
            state.ticks += 1;
            let frame_len = (self.rate / 50) as usize;
            let step = state.playout.step(frame_len, now);
            if let Some(recorder) = &state.recorder {
                recorder.step(&step.samples);
            }
            let mut messages: Vec<Outgoing> = step.begun.iter().filter_map(|segment| state.keys.remove(segment)).map(Outgoing::Key).collect();
            if !step.samples.is_empty() {
                let mut frame = step.samples;
                frame.resize(frame_len, 0.0);
                messages.push(Outgoing::Audio(frame));
                state.log.frames_sent += 1;
            }
            for segment in step.finished {
                messages.push(Outgoing::Mark(segment));
                state.log.marks_sent += 1;
            }
            messages
        };
        for message in messages {
            self.send(message);
        }
    }

    /// The line has closed: its recording is finished.
    fn finish(&self) {
        if let Some(recorder) = self.lock().recorder.take() {
            recorder.finish();
        }
    }

    fn send(&self, message: Outgoing) {
        if let Err(error) = self.out.try_send(message) {
            if matches!(error, mpsc::error::TrySendError::Full(_)) {
                self.lock().log.frames_late += 1;
                tracing::warn!(stream = %self.name, "the socket is not keeping up; a message was dropped");
            }
        }
    }

    /// Caller audio at the line's rate.
    pub fn caller_audio(&self, samples: Vec<f32>) {
        if !samples.is_empty() {
            if let Some(recorder) = &self.lock().recorder {
                recorder.caller(&samples);
            }
            self.audio_in.push(samples);
        }
    }

    /// The caller pressed a key.
    pub fn caller_key(&self, digit: char) {
        self.lock().log.dtmf_received.push(digit);
        let _ = self.dtmf_in.send(digit);
    }

    /// The far end reports a segment's mark played: the caller heard it to its end.
    pub fn mark_played(&self) {
        self.lock().log.marks_played += 1;
    }

    /// Sends an event to the far end (a web call's live transcript); lines that carry only
    /// audio drop it.
    pub fn notify(&self, event: serde_json::Value) {
        self.send(Outgoing::Event(event));
    }

    /// Cancelled when the call is over (the caller hung up, the stream stopped, or the agent
    /// ended it).
    pub fn ended(&self) -> CancellationToken {
        self.ended.clone()
    }

    /// The agent is on the line (the call's models are ready): the far end is told, if its
    /// protocol has a word for it (a web call's `answered`).
    pub fn answer(&self) {
        self.notify(serde_json::json!({ "type": "answered" }));
    }

    /// The socket is gone: the call is over.
    pub fn close(&self) {
        self.ended.cancel();
    }

    /// The stream broke (a malformed message, a dead socket): the call ends as failed.
    pub fn fail(&self, reason: &str) {
        tracing::warn!(stream = %self.name, reason, "a stream failed; its call ends");
        self.failure.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_with(|| reason.to_string());
        self.ended.cancel();
    }

    pub fn failure(&self) -> Option<String> {
        self.failure.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn log(&self) -> StreamLog {
        self.lock().log.clone()
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Caller frames buffered before the oldest is dropped (~1 s).
const AUDIO_IN_DEPTH: usize = 50;

impl AudioOut for StreamLine {
    fn rate(&self) -> u32 {
        self.rate
    }

    fn now(&self) -> Duration {
        TICK * self.lock().ticks as u32
    }

    fn play(&self, segment: u64, samples: Vec<f32>) {
        self.lock().playout.play(segment, samples);
    }

    fn clear(&self) -> Duration {
        let now = {
            let mut state = self.lock();
            state.playout.clear();
            // Keys not begun are cut with the rest.
            state.keys.clear();
            state.log.clears_sent += 1;
            TICK * state.ticks as u32
        };
        // The far end drops whatever it still buffers (a frame or two at most, on this clock).
        self.send(Outgoing::Clear);
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
        if self.transferring.load(std::sync::atomic::Ordering::SeqCst) {
            // The transfer closes the stream once Twilio has the new instructions; closing it
            // now would end the call first.
            return;
        }
        if let Some(control) = &self.control {
            control.hang_up();
        }
        // Closing the stream ends the call (for Twilio: `<Connect>` ends and the TwiML has
        // nothing after it).
        self.ended.cancel();
    }

    fn send_dtmf(&self, digits: &str) {
        // In band, as tones the far end's keypad detector hears, unless the far end takes keys
        // out of band: then silence as long, its key said where it begins (pauses are silence
        // either way).
        let out_of_band = self.control.as_ref().is_some_and(|control| control.sends_keys());
        let mut state = self.lock();
        for digit in digits.chars() {
            if let Some(mut tone) = crate::audio::dtmf_tone(digit, self.rate) {
                let id = state.next_dtmf_segment;
                state.next_dtmf_segment += 1;
                if out_of_band && !digit.eq_ignore_ascii_case(&'w') {
                    tone.fill(0.0);
                    state.keys.insert(id, digit);
                }
                state.playout.play(id, tone);
            }
        }
    }

    fn record(&self, recorder: Recorder) {
        self.lock().recorder = Some(recorder);
    }

    fn played(&self) -> Option<super::played::Played> {
        Some(self.lock().playout.played(self.rate))
    }

    fn hold_far_end(&self, on: bool) {
        if let Some(control) = &self.control {
            control.hold(on);
        }
    }

    fn transfer(&self, destination: &str) {
        match &self.control {
            Some(control) => {
                self.transferring.store(true, std::sync::atomic::Ordering::SeqCst);
                control.transfer(destination, self.ended.clone());
            }
            None => tracing::warn!(destination, "this line has no call control: the transfer cannot happen"),
        }
    }
}

/// The clock every streamed line steps on: one thread, one 20 ms tick, every live line in
/// turn. One timer for all calls instead of one each: hundreds of calls cost one wake-up a
/// tick, and no line's frame waits behind the async runtime's other work. A tick that runs late
/// sends its frames at once and the next ones follow on schedule (the caller hears a gap, not a
/// drift).
struct Clock {
    lines: Mutex<Vec<StreamLine>>,
}

impl Clock {
    fn shared() -> &'static Clock {
        static CLOCK: std::sync::OnceLock<&'static Clock> = std::sync::OnceLock::new();
        CLOCK.get_or_init(|| {
            let clock: &'static Clock = Box::leak(Box::new(Clock { lines: Mutex::new(Vec::new()) }));
            std::thread::Builder::new().name("line-clock".into()).spawn(move || clock.run()).expect("the line clock's thread starts");
            clock
        })
    }

    fn add(&self, line: StreamLine) {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).push(line);
    }

    fn run(&self) {
        let start = Instant::now();
        let mut ticks: u64 = 0;
        loop {
            ticks += 1;
            let due = start + Duration::from_micros(TICK.as_micros() as u64 * ticks);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            let lateness = Instant::now().saturating_duration_since(due);
            let lines: Vec<StreamLine> = self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let mut closed = false;
            for line in &lines {
                if line.ended.is_cancelled() {
                    line.finish();
                    closed = true;
                } else {
                    line.tick(lateness);
                }
            }
            if closed {
                self.lines.lock().unwrap_or_else(|e| e.into_inner()).retain(|line| !line.ended.is_cancelled());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn agent_audio_goes_out_in_frames_then_a_mark_and_a_clear_follows_a_barge_in() {
        let (line, _input, mut out) = StreamLine::start("test", 8_000, None);
        line.play(7, vec![0.1; 160 * 2 + 10]);
        let mut got = Vec::new();
        while got.len() < 4 {
            got.push(out.recv().await.unwrap());
        }
        assert!(matches!(&got[0], Outgoing::Audio(frame) if frame.len() == 160), "20 ms frames");
        assert!(matches!(&got[2], Outgoing::Audio(_)));
        assert_eq!(got[3], Outgoing::Mark(7));
        assert_eq!(line.heard(7), 1.0);
        line.play(8, vec![0.1; 160 * 50]);
        line.clear();
        while out.recv().await.unwrap() != Outgoing::Clear {}
        assert!(line.heard(8) < 0.2);
        line.close();
    }
}
