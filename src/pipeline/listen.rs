//! The listening stage: caller audio in, turn-taking frames out.
//!
//! Audio is resampled to 16 kHz and scored by Silero in 32 ms frames (~0.1 ms each, so it
//! runs inline). Once the caller has been silent [`EARLY_HEAR_MS`] — before the VAD's own
//! `endpointing_ms` calls the end of speech — the utterance so far is transcribed on a
//! blocking thread, so whisper overlaps the rest of that silence; a sound before the VAD's
//! call stops the job and it starts again at the next silence. That early start is a guess,
//! made only on a core free then (tried each silent frame): under load a guess that the
//! caller then talks on costs another caller's final transcript its core, so a busy box
//! starts the transcript at the VAD's call, queued as urgent. The transcript is both the
//! end-of-turn cue and, if the turn is over, the final transcript — no second STT pass. The
//! turn ends when
//!
//! - Smart Turn (run beside whisper on the last 8 s) hears a finished turn, helped by the
//!   transcript's final punctuation (models.md: the model alone judged flat synthetic lines
//!   unfinished); words that dangle ("…and", "my number is", digits being read out) never end
//!   the turn at once, or
//! - the turn falls short of that but the caller stays silent a while longer: up to
//!   `incomplete_wait_ms` for words that dangle (or no words), less the nearer the score came
//!   to the threshold — a finished sentence that the model doubts waits a little, a number
//!   read halfway waits the whole fallback ([`extra_wait`]).
//!
//! Speech resuming before the decision continues the same turn; speech resuming soon after it,
//! while the agent's answer is unheard, continues it too, heard again from the turn's start
//! ([`Continuation`]). A turn with speech but no
//! words is still reported (empty text), never dropped: the agent decides what to do with it.
//!
//! While the caller speaks, every `stt.partial_interval_ms` of new speech the utterance so far
//! is transcribed in the same pool for a partial transcript, when a slot is free (under load
//! none is made). Only one runs at a time per call, and the moment the caller stops, a partial still running is told to stop (whisper.cpp checks after
//! its encoder and after every decoder step) so the final transcript waits as little as it can.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::frames::{Frame, UserTurn};
use crate::assistant::TurnSpec;
use crate::audio::resample::StreamResampler;
use crate::audio::MODEL_RATE;
use crate::stt::{SpeechToText, SttError, Transcript};
use crate::audio::echo::EchoCanceller;
use crate::transport::live::LiveReceiver;
use crate::transport::played::Played;
use crate::vad::silero::{SileroStream, SileroVad};
use crate::vad::smart_turn::SmartTurn;
use crate::vad::{VadDetector, VadEvent, FRAME_MS, FRAME_SAMPLES};

/// Silence after which the final transcript and Smart Turn start, ahead of the VAD's end of
/// speech. Their input is padded with the silence still to come, so they judge the same
/// length of audio as at the VAD's call.
const EARLY_HEAR_MS: u32 = 64;
/// Audio kept from before the VAD's onset so the first syllable is not clipped.
const PRE_ROLL_MS: usize = 320;
/// Silence kept after a turn's speech for joining it to words that continue it (the caller's
/// pre-roll of [`PRE_ROLL_MS`] follows it).
const KEPT_PAUSE: Duration = Duration::from_millis(200);
/// The longest utterance sent to STT at once (whisper's window).
const MAX_UTTERANCE_SECS: usize = 28;
/// What the listener learns when the caller stops: the words, and Smart Turn's probability
/// that the turn is complete.
type Heard = (Transcript, Option<f32>);

pub struct Listener {
    pub vad: Arc<SileroVad>,
    pub smart_turn: Arc<SmartTurn>,
    pub stt: Arc<dyn SpeechToText>,
    pub turn: TurnSpec,
    pub input_rate: u32,
    /// New speech between partial transcripts; `None` for no partials.
    pub partial_every: Option<Duration>,
    /// What the recognizer is primed with; the agent keeps it current.
    pub prompt: crate::stt::Prompt,
    /// Whether words already answer the flow's question; the agent keeps it current.
    pub answers: Answers,
    /// What the line played, when it can say: the agent's echo is cancelled from the
    /// caller's audio before anything listens to it.
    pub played: Option<Played>,
    /// Where this caller counts itself while it talks or is being transcribed, and which
    /// decides how many cores its transcriptions take: the process's [`super::pool::talkers`].
    pub talkers: &'static super::pool::Talkers,
    /// Whether words that follow a turn closely continue it; the agent keeps it current.
    pub continuation: Continuation,
}

/// The agent's echo taken out of the caller's audio: the line's played audio, taken in step
/// with the caller's (as many samples as each caller chunk has), through the canceller.
struct EchoPath {
    played: Played,
    canceller: EchoCanceller,
    resampler: Option<StreamResampler>,
    /// Caller chunks the live edge dropped, as far as this path has skipped their reference.
    drops_seen: u64,
}

impl EchoPath {
    fn new(played: Played, input_rate: u32) -> Result<EchoPath, String> {
        let canceller = EchoCanceller::new().map_err(|e| e.to_string())?;
        let resampler = to_model_rate(input_rate).map_err(|e| e.to_string())?;
        Ok(EchoPath { played, canceller, resampler, drops_seen: 0 })
    }

    /// `heard` (16 kHz) came from a caller chunk of `chunk_len` samples at the line's rate.
    fn cancel(&mut self, chunk_len: usize, dropped: u64, heard: Vec<f32>, faults: &mut Faults) -> Vec<f32> {
        if dropped > self.drops_seen {
            // The edge dropped caller chunks: drop what was played beside them.
            self.played.skip((dropped - self.drops_seen) as usize * chunk_len);
            self.drops_seen = dropped;
        }
        let reference = self.played.take(chunk_len);
        let reference = match self.resampler.as_mut().map(|r| r.push(&reference)) {
            Some(Ok(resampled)) => resampled,
            Some(Err(error)) => {
                faults.add(Fault::Echo, error);
                return heard;
            }
            None => reference,
        };
        match self.canceller.process(&reference, &heard) {
            Ok(clean) => clean,
            Err(error) => {
                faults.add(Fault::Echo, error);
                heard
            }
        }
    }
}

/// A fault in the caller's audio path that the call lives with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    /// A chunk the resampler refused: heard as silence.
    Resample,
    /// The agent's echo could not be taken out: the chunk heard as it came.
    Echo,
    /// A frame the VAD could not score: read as silence.
    Vad,
}

impl Fault {
    fn describe(self) -> &'static str {
        match self {
            Fault::Resample => "caller audio the resampler refused, heard as silence",
            Fault::Echo => "caller audio whose echo could not be cancelled, heard with it",
            Fault::Vad => "caller audio the VAD could not score, read as silence",
        }
    }
}

/// The faults a listener lived with: each kind counted with its first error, logged once, and
/// put in the call's errors when the listener stops (a call that heard nothing says why).
#[derive(Debug, Default)]
struct Faults(std::collections::BTreeMap<Fault, (u64, String)>);

impl Faults {
    fn add(&mut self, fault: Fault, error: impl std::fmt::Display) {
        let (count, _) = self.0.entry(fault).or_insert_with(|| {
            tracing::warn!(%error, "{}", fault.describe());
            (0, error.to_string())
        });
        *count += 1;
    }

    fn into_errors(self) -> Vec<String> {
        self.0.into_iter().map(|(fault, (count, first))| format!("{}: {count} time(s); the first: {first}", fault.describe())).collect()
    }
}

/// Shared between agent and listener: the current flow question's tests of an answer. A
/// transcript that answers it ends the turn at once (no wait for a hesitation to resolve),
/// unless it is an answer that usually leads on (a bare "No." to a read-back), which waits the
/// whole end-of-turn wait for more; one the flow would not understand at all, heard doubtfully,
/// is heard a second time.
#[derive(Clone, Default)]
pub struct Answers(Arc<std::sync::Mutex<AnswerChecks>>);

/// [`crate::flow::Flow::answer_check`], [`crate::flow::Flow::understands`] and
/// [`crate::flow::Flow::answer_leads_on`], as of the flow's last reply.
#[derive(Default)]
struct AnswerChecks {
    ends_turn: Option<crate::flow::AnswerCheck>,
    understood: Option<crate::flow::AnswerCheck>,
    leads_on: Option<crate::flow::AnswerCheck>,
}

impl Answers {
    /// Takes the tests of what `flow` waits for now.
    pub fn follow(&self, flow: &crate::flow::Flow) {
        let checks = AnswerChecks { ends_turn: flow.answer_check(), understood: flow.understands(), leads_on: flow.answer_leads_on() };
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = checks;
    }

    fn check(&self, pick: impl Fn(&AnswerChecks) -> &Option<crate::flow::AnswerCheck>, text: &str) -> Option<bool> {
        let check = pick(&self.0.lock().unwrap_or_else(|e| e.into_inner())).clone();
        check.map(|check| !text.trim().is_empty() && check(text))
    }

    pub fn answered_by(&self, text: &str) -> bool {
        self.check(|c| &c.ends_turn, text) == Some(true)
    }

    /// Whether `text` answers but usually goes on (see [`crate::flow::Flow::answer_leads_on`]).
    pub fn leads_on(&self, text: &str) -> bool {
        self.check(|c| &c.leads_on, text) == Some(true)
    }

    /// Tests that only judge what the flow would understand.
    #[cfg(test)]
    fn understanding(check: crate::flow::AnswerCheck) -> Answers {
        Answers(Arc::new(std::sync::Mutex::new(AnswerChecks { understood: Some(check), ..AnswerChecks::default() })))
    }

    /// Whether the flow would understand `text`; `None` when it waits for nothing in particular.
    pub fn understood(&self, text: &str) -> Option<bool> {
        self.check(|c| &c.understood, text)
    }
}

/// Shared between agent and listener: whether the agent's answer to the caller's last turn is
/// still unheard (not yet playing, or barely begun), so that a caller who goes on within
/// [`CONTINUE_GAP`] of that turn's end continues it. The listener then hears both parts again as
/// one utterance — a sentence cut at its comma ("At 7 o'clock," … "please.") was heard in two
/// pieces, each worse than the whole ("Table far to this evening." + "Please.") — and the agent
/// takes back its answer and answers the whole. The agent opens it when it answers a turn in a
/// way it can take back, and closes it once the answer has been heard or did something that
/// cannot be undone (a tool call, an end of the call).
#[derive(Clone, Default)]
pub struct Continuation(Arc<AtomicBool>);

impl Continuation {
    pub fn open(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn close(&self) {
        self.0.store(false, Ordering::Relaxed);
    }

    pub fn is_open(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// The longest pause, from the end of a turn's speech to the caller's next words, after which
/// those words may still continue it (see [`Continuation`]). A comma's pause is a few hundred
/// milliseconds; a caller who waits longer than this for an answer that has not come asks
/// something new ("Hello?"), and answering the whole again would throw away an answer nearly
/// ready.
pub const CONTINUE_GAP: Duration = Duration::from_millis(1200);

/// A primed transcript less sure than this (the geometric mean of its words' probabilities),
/// or holding a word below [`crate::stt::UNSURE_WORD`], that the flow would not understand is
/// heard a second time, unprimed. The demo's "The name is Sarah", cut a frame later, came back
/// primed as "I made it." at 0.40 (unprimed: "I made it, Sarah."); the right transcripts of its
/// calls scored 0.6 and up. The reminder's espeak "I need to reschedule." came back primed as
/// "I need to rescadual." at 0.54, its last word at 0.12 (`docs/decisions.md`).
const SECOND_HEARING_BELOW: f32 = 0.5;

/// Transcribes `audio` primed with `prompt`; when the words come back doubtful and not what
/// the flow can take, hears them once more unprimed — the prompt is the likeliest cause of a
/// mishearing that still looks like fluent words — and keeps the second hearing only if the flow
/// understands it. Costs a second decode on those turns only; a re-asked question costs the
/// caller seconds.
///
/// A transcript that holds one of the prompt's example names is heard again too, understood or
/// not: whisper writes an example in place of a name it heard badly (the demo's spelled
/// "S, A, R, A, H" came back primed as "My name is Oliver Maxs. A R A H"), and a wrong name
/// taken is worse than a question asked again. The second hearing stands when it holds no
/// example name — a caller who is called Oliver is heard as Oliver unprimed too.
fn transcribe_for_flow(stt: &dyn SpeechToText, audio: &[f32], stop: &AtomicBool, prompt: &str, answers: &Answers) -> Result<Transcript, SttError> {
    let first = stt.transcribe_primed(audio, stop, prompt)?;
    let borrowed = borrows_example(&first.text, prompt);
    let doubtful = first.confidence().is_some_and(|c| c < SECOND_HEARING_BELOW) || !first.unsure_words().is_empty();
    if prompt.is_empty() || !(borrowed || doubtful && answers.understood(&first.text) == Some(false)) {
        return Ok(first);
    }
    let second = stt.transcribe_primed(audio, stop, "")?;
    let take = if borrowed {
        !second.text.trim().is_empty() && !borrows_example(&second.text, prompt)
    } else {
        answers.understood(&second.text) == Some(true)
    };
    tracing::debug!(first = %first.text, second = %second.text, borrowed, take, "heard a transcript a second time, unprimed");
    Ok(if take { Transcript { processing: first.processing + second.processing, ..second } } else { first })
}

/// Whether `text` holds one of [`crate::flow::example_names`] that `prompt` taught.
fn borrows_example(text: &str, prompt: &str) -> bool {
    let words = |t: &str| -> Vec<String> { t.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase).collect() };
    let (said, primed) = (words(text), words(prompt));
    crate::flow::example_names().any(|name| primed.contains(&name) && said.contains(&name))
}

/// The final transcript and Smart Turn's judgement in flight: set `stop` to abandon them.
struct HearJob {
    stop: Arc<AtomicBool>,
    heard: oneshot::Receiver<Heard>,
}

impl HearJob {
    fn abandon(self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A partial transcript in flight: set `stop` to abandon it.
struct PartialJob {
    stop: Arc<AtomicBool>,
    words: oneshot::Receiver<String>,
}

impl PartialJob {
    fn abandon(self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

enum Phase {
    Quiet,
    Speaking,
    /// The caller stopped; transcribing and deciding.
    Deciding { speech_end: Duration, stopped_at: Duration, result: Option<HearJob>, transcript: Option<(Heard, Duration)> },
}

impl Listener {
    /// Follows the caller until the call is cancelled, the audio ends or the agent is gone;
    /// returns the faults its audio path lived with, as the call's errors.
    pub async fn run(self, mut audio_in: LiveReceiver, out: mpsc::Sender<Frame>, cancel: CancellationToken) -> Vec<String> {
        let Some((mut resampler, mut echo)) = self.input_path(&out).await else {
            return Vec::new();
        };
        let mut ear = Ear::new(&self);
        self.follow(&mut ear, &mut audio_in, &mut resampler, &mut echo, &out, &cancel).await;
        ear.faults.into_errors()
    }

    async fn follow(&self, ear: &mut Ear, audio_in: &mut LiveReceiver, resampler: &mut Option<StreamResampler>, echo: &mut Option<EchoPath>, out: &mpsc::Sender<Frame>, cancel: &CancellationToken) {
        loop {
            // Wait for audio, or for a pending transcript.
            let chunk = {
                let result_rx = match &mut ear.phase {
                    Phase::Deciding { result: Some(job), .. } => Some(&mut job.heard),
                    _ => None,
                };
                let partial_rx = ear.partial.as_mut().map(|job| &mut job.words);
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    chunk = audio_in.recv() => match chunk {
                        Some(c) => Some(c),
                        None => {
                            let _ = out.send(Frame::End { reason: "the caller's audio ended".into() }).await;
                            return;
                        }
                    },
                    words = async { partial_rx.unwrap().await }, if partial_rx.is_some() => {
                        ear.partial = None;
                        if let (Ok(words), Phase::Speaking) = (words, &ear.phase) {
                            if !words.is_empty() && out.send(Frame::TranscriptPartial(words)).await.is_err() {
                                return;
                            }
                        }
                        None
                    }
                    transcript = async { result_rx.unwrap().await }, if result_rx.is_some() => {
                        ear.transcript_arrived(transcript.ok());
                        None
                    }
                }
            };
            if let Some(chunk) = chunk {
                let chunk_len = chunk.len();
                let samples = match resampler.as_mut().map(|r| r.push(&chunk)) {
                    Some(Ok(resampled)) => resampled,
                    Some(Err(error)) => {
                        ear.faults.add(Fault::Resample, error);
                        Vec::new()
                    }
                    None => chunk,
                };
                let samples = match echo.as_mut() {
                    Some(path) => path.cancel(chunk_len, audio_in.dropped(), samples, &mut ear.faults),
                    None => samples,
                };
                if ear.take(self, samples, out).await.is_err() {
                    return;
                }
            }
            if ear.decide(self, out).await.is_err() {
                return;
            }
        }
    }

    /// The caller's audio on its way to the VAD: resampled to the model rate, and the agent's
    /// echo cancelled where the line says what it played. `None` (reported) when the line's
    /// rate cannot be resampled.
    async fn input_path(&self, out: &mpsc::Sender<Frame>) -> Option<(Option<StreamResampler>, Option<EchoPath>)> {
        let resampler = match to_model_rate(self.input_rate) {
            Ok(resampler) => resampler,
            Err(e) => {
                let _ = out.send(Frame::Error { stage: "listen", message: e.to_string() }).await;
                return None;
            }
        };
        let echo = match self.played.clone().map(|played| EchoPath::new(played, self.input_rate)) {
            Some(Ok(path)) => Some(path),
            Some(Err(error)) => {
                let _ = out.send(Frame::Error { stage: "listen", message: format!("no echo cancellation: {error}") }).await;
                None
            }
            None => None,
        };
        Some((resampler, echo))
    }
}

/// The stage downstream is gone; the listener stops.
struct Gone;

/// One caller's speech as the listener follows it, frame by frame.
struct Ear {
    stream: SileroStream,
    detector: VadDetector,
    /// Samples not yet a whole VAD frame.
    pending: Vec<f32>,
    /// The audio just before speech, while quiet, so an utterance starts a little early.
    recent: std::collections::VecDeque<f32>,
    utterance: Vec<f32>,
    phase: Phase,
    partial: Option<PartialJob>,
    /// The final transcript started early, on a short silence while still `Speaking`.
    early: Option<HearJob>,
    /// Utterance length (samples) when the last partial started.
    partial_from: usize,
    /// New speech (samples) between partials, when they are made.
    partial_samples: Option<usize>,
    stop_frames: u64,
    /// Counted among the process's callers about to want a final transcript while this one
    /// speaks or is being transcribed (how many cores a transcription takes).
    talking: Option<super::pool::Talking<'static>>,
    /// The last turn's audio (its speech and [`KEPT_PAUSE`] after) and when its speech ended,
    /// which words that follow closely may continue ([`Continuation`]).
    last_turn: Option<(Vec<f32>, Duration)>,
    /// The utterance under way begins with the last turn's audio: it continues that turn.
    continues: bool,
    faults: Faults,
}

/// Samples kept from before the VAD's onset.
const PRE_ROLL: usize = MODEL_RATE as usize * PRE_ROLL_MS / 1000;
/// Silent frames after which the final transcript starts early.
const EARLY_FRAMES: u64 = EARLY_HEAR_MS.div_ceil(FRAME_MS) as u64;

fn frame_time(frame: u64) -> Duration {
    Duration::from_millis(frame * FRAME_MS as u64)
}

impl Ear {
    fn new(listener: &Listener) -> Ear {
        Ear {
            stream: SileroStream::default(),
            detector: VadDetector::new(listener.turn.vad_params()),
            pending: Vec::new(),
            recent: std::collections::VecDeque::new(),
            utterance: Vec::new(),
            phase: Phase::Quiet,
            partial: None,
            early: None,
            partial_from: 0,
            partial_samples: listener.partial_every.map(|every| (every.as_secs_f64() * MODEL_RATE as f64) as usize),
            stop_frames: listener.turn.vad_params().stop_frames() as u64,
            talking: None,
            last_turn: None,
            continues: false,
            faults: Faults::default(),
        }
    }

    /// The final transcript and Smart Turn's judgement are in (`None`: the job was dropped).
    fn transcript_arrived(&mut self, heard: Option<Heard>) {
        let arrived = frame_time(self.detector.frames());
        if let Phase::Deciding { result, transcript, .. } = &mut self.phase {
            *result = None;
            *transcript = heard.map(|heard| (heard, arrived));
        }
        self.talking = None;
    }

    /// New audio at the model rate: each whole frame through the VAD, then a partial transcript
    /// if one is due.
    async fn take(&mut self, listener: &Listener, samples: Vec<f32>, out: &mpsc::Sender<Frame>) -> Result<(), Gone> {
        self.pending.extend(samples);
        while self.pending.len() >= FRAME_SAMPLES {
            let frame: Vec<f32> = self.pending.drain(..FRAME_SAMPLES).collect();
            self.frame(listener, &frame, out).await?;
        }
        if let (Phase::Speaking, None, None, Some(every)) = (&self.phase, &self.partial, &self.early, self.partial_samples) {
            if self.utterance.len() >= self.partial_from + every {
                self.partial_from = self.utterance.len();
                self.partial = listener.transcribe_partial(self.utterance.clone());
            }
        }
        Ok(())
    }

    async fn frame(&mut self, listener: &Listener, frame: &[f32], out: &mpsc::Sender<Frame>) -> Result<(), Gone> {
        let probability = listener.vad.probability(&mut self.stream, frame).unwrap_or_else(|error| {
            self.faults.add(Fault::Vad, error);
            0.0
        });
        let event = self.detector.push(probability);
        if matches!(self.phase, Phase::Quiet) {
            self.recent.extend(frame.iter().copied());
            while self.recent.len() > PRE_ROLL + FRAME_SAMPLES * 4 {
                self.recent.pop_front();
            }
        } else if self.utterance.len() < MODEL_RATE as usize * MAX_UTTERANCE_SECS {
            self.utterance.extend_from_slice(frame);
        }
        if let Some(event) = event {
            self.vad_event(listener, event, out).await?;
        }
        if matches!(self.phase, Phase::Speaking) {
            self.hear_early(listener);
        }
        let counted = match &self.phase {
            Phase::Speaking => true,
            Phase::Deciding { result, .. } => result.is_some(),
            Phase::Quiet => false,
        };
        if counted != self.talking.is_some() {
            self.talking = counted.then(|| listener.talkers.begin());
        }
        Ok(())
    }

    async fn vad_event(&mut self, listener: &Listener, event: VadEvent, out: &mpsc::Sender<Frame>) -> Result<(), Gone> {
        match event {
            VadEvent::SpeechSuspected { onset_frame } => {
                out.send(Frame::SpeechSuspected { onset: frame_time(onset_frame) }).await.map_err(|_| Gone)?;
            }
            VadEvent::SpeechDismissed => out.send(Frame::SpeechDismissed).await.map_err(|_| Gone)?,
            VadEvent::SpeechStarted { onset_frame } => {
                out.send(Frame::SpeechStarted { onset: frame_time(onset_frame) }).await.map_err(|_| Gone)?;
                // Speech (re)started; if it resumed before the decision, the same turn goes on.
                match std::mem::replace(&mut self.phase, Phase::Speaking) {
                    Phase::Quiet => {
                        let last_turn = self.last_turn.take();
                        let continued = last_turn.filter(|(audio, speech_end)| {
                            listener.continuation.is_open()
                                && frame_time(onset_frame).saturating_sub(*speech_end) <= CONTINUE_GAP
                                && audio.len() + self.recent.len() < MODEL_RATE as usize * MAX_UTTERANCE_SECS
                        });
                        self.continues = continued.is_some();
                        // Start the utterance a little before the onset — after the last turn,
                        // when this continues it.
                        let frames_since_onset = (self.detector.frames() - onset_frame) as usize * FRAME_SAMPLES;
                        let keep = (frames_since_onset + PRE_ROLL).min(self.recent.len());
                        let mut audio = continued.map(|(audio, _)| audio).unwrap_or_default();
                        audio.extend(self.recent.iter().skip(self.recent.len() - keep));
                        if self.continues {
                            tracing::debug!(audio_secs = audio.len() as f64 / MODEL_RATE as f64, "the caller went on: the last turn continues");
                        }
                        self.utterance = audio;
                        // Partials count new speech.
                        self.partial_from = if self.continues { self.utterance.len() } else { 0 };
                        self.recent.clear();
                    }
                    // The transcript under way is of a turn that is not over.
                    Phase::Deciding { result: Some(job), .. } => job.abandon(),
                    _ => {}
                }
            }
            VadEvent::SpeechStopped { last_speech_frame } => {
                let speech_end = frame_time(last_speech_frame + 1);
                let stopped_at = frame_time(self.detector.frames());
                let _ = out.send(Frame::SpeechStopped { at: speech_end }).await;
                // The final transcript goes first: abandon a partial still running.
                if let Some(job) = self.partial.take() {
                    job.abandon();
                }
                let job = self.early.take().unwrap_or_else(|| listener.hear(self.utterance.clone(), self.talking.as_ref()));
                self.phase = Phase::Deciding { speech_end, stopped_at, result: Some(job), transcript: None };
            }
        }
        Ok(())
    }

    /// While the caller speaks: a sound stops an early transcript; a short silence starts one
    /// when a slot is free (tried again each silent frame until the VAD's end of speech),
    /// padded with the silence still to come before that end.
    fn hear_early(&mut self, listener: &Listener) {
        let silent = self.detector.silent_frames() as u64;
        if silent == 0 {
            // A sound: the caller may be going on.
            if let Some(job) = self.early.take() {
                job.abandon();
            }
        } else if (EARLY_FRAMES..self.stop_frames).contains(&silent) && self.early.is_none() {
            // Tried each silent frame: copy the utterance only when the job could start.
            if self.partial.is_none() && !super::pool::stt().has_free_slot() {
                return;
            }
            let mut audio = self.utterance.clone();
            audio.resize(audio.len() + (self.stop_frames - silent) as usize * FRAME_SAMPLES, 0.0);
            self.early = match self.partial.take() {
                // A partial still running holds a core no one else wanted: the final
                // transcript takes its place, waiting for it to stop.
                Some(partial) => {
                    partial.abandon();
                    Some(listener.hear(audio, self.talking.as_ref()))
                }
                None => listener.hear_if_free(audio, self.talking.as_ref()),
            };
        }
    }

    /// Ends the turn once its transcript is in and the caller has been silent as long as the
    /// words and Smart Turn ask for.
    async fn decide(&mut self, listener: &Listener, out: &mpsc::Sender<Frame>) -> Result<(), Gone> {
        let now = frame_time(self.detector.frames());
        let Phase::Deciding { speech_end, stopped_at, transcript: Some(((transcript, probability), arrived)), .. } = &self.phase else {
            return Ok(());
        };
        let fallback = Duration::from_millis(listener.turn.incomplete_wait_ms as u64);
        let wait = if listener.answers.leads_on(&transcript.text) {
            fallback
        } else if listener.answers.answered_by(&transcript.text) {
            Duration::ZERO
        } else {
            extra_wait(&transcript.text, *probability, listener.turn.smart_turn_threshold, fallback)
        };
        let waited = now.saturating_sub(*stopped_at);
        if waited >= wait {
            tracing::debug!(text = %transcript.text, probability, wait_ms = wait.as_millis() as u64, "end of turn");
            let turn = UserTurn {
                text: transcript.text.clone(),
                speech_end: *speech_end,
                decided_at: now,
                held: wait,
                transcribed_at: *arrived,
                confidence: transcript.confidence(),
                unsure: transcript.unsure_words(),
                continues: self.continues,
            };
            let speech_end = *speech_end;
            out.send(Frame::TranscriptFinal(turn)).await.map_err(|_| Gone)?;
            // Kept to its speech and a short pause after: joined to words that continue it, the
            // silence between stays a comma's (whisper tiny dropped words after a long one).
            let mut audio = std::mem::take(&mut self.utterance);
            let silence = (now.saturating_sub(speech_end).saturating_sub(KEPT_PAUSE).as_secs_f64() * MODEL_RATE as f64) as usize;
            audio.truncate(audio.len().saturating_sub(silence));
            self.last_turn = Some((audio, speech_end));
            self.continues = false;
            self.partial_from = 0;
            self.phase = Phase::Quiet;
        } else if waited.is_zero() {
            let _ = out.send(Frame::TranscriptPartial(transcript.text.clone())).await;
        }
        Ok(())
    }
}

impl Listener {
    /// Transcribes the unfinished `utterance` for a partial transcript, stoppably — only when
    /// a speech-to-text slot is free and no one waits for one (`None` otherwise: under load a
    /// partial is not worth a final transcript's delay).
    fn transcribe_partial(&self, utterance: Vec<f32>) -> Option<PartialJob> {
        let (tx, rx) = oneshot::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let (stt, job_stop, prompt) = (self.stt.clone(), stop.clone(), self.prompt.get());
        // A partial gives way: another call's final transcript stops it (a newer partial
        // replaces it anyway).
        let words = super::pool::stt().try_run_yielding(stop.clone(), super::pool::stt_cores(), move |cores| {
            crate::stt::with_threads(cores, || stt.transcribe_primed(&utterance, &job_stop, &prompt).map(|t| t.text))
        })?;
        tokio::spawn(async move {
            if let Ok(Ok(text)) = words.await {
                let _ = tx.send(text);
            }
        });
        Some(PartialJob { stop, words: rx })
    }

    /// Transcribes `utterance` and asks Smart Turn about it, side by side in the shared pools;
    /// stoppable. `talking` is this caller's own count among those about to want a transcript,
    /// if counted.
    fn hear(&self, utterance: Vec<f32>, talking: Option<&super::pool::Talking<'_>>) -> HearJob {
        self.start_hearing(utterance, talking, false).expect("a queued hearing always starts")
    }

    /// [`Self::hear`] ahead of the VAD's end of speech, a guess that the caller has stopped:
    /// only on a speech-to-text slot free now with no one waiting (`None` otherwise). A caller
    /// who pauses and goes on wastes the job (whisper stops only after its encoder), and under
    /// load that core was another caller's final transcript.
    fn hear_if_free(&self, utterance: Vec<f32>, talking: Option<&super::pool::Talking<'_>>) -> Option<HearJob> {
        self.start_hearing(utterance, talking, true)
    }

    fn start_hearing(&self, utterance: Vec<f32>, talking: Option<&super::pool::Talking<'_>>, only_if_free: bool) -> Option<HearJob> {
        let (tx, rx) = oneshot::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let (stt, smart_turn, prompt, answers) = (self.stt.clone(), self.smart_turn.clone(), self.prompt.get(), self.answers.clone());
        let audio = Arc::new(utterance);
        let audio_for_turn = audio.clone();
        let (stt_stop, turn_stop) = (stop.clone(), stop.clone());
        let most = self.talkers.stt_cores(talking);
        let transcribe = move |cores| {
            let started = std::time::Instant::now();
            let heard = crate::stt::with_threads(cores, || transcribe_for_flow(stt.as_ref(), &audio, &stt_stop, &prompt, &answers));
            let secs = audio.len() as f64 / MODEL_RATE as f64;
            let text = heard.as_ref().map(|t| t.text.as_str()).unwrap_or_default();
            tracing::debug!(cores, audio_secs = secs, ms = started.elapsed().as_millis() as u64, prompt_chars = prompt.len(), stopped = matches!(heard, Err(SttError::Stopped)), text, "final transcription");
            if let (Ok(heard), Some(dir)) = (&heard, keep_heard_dir()) {
                keep_heard(&dir, &audio, &prompt, &heard.text);
            }
            heard.unwrap_or_else(|e| {
                if !matches!(e, SttError::Stopped) {
                    tracing::warn!(error = %e, "transcription failed");
                }
                Transcript::default()
            })
        };
        let (pool, now) = (super::pool::stt(), super::pool::Urgency::Now);
        let words = if only_if_free {
            futures::future::Either::Left(pool.try_run_on_cores(now, most, transcribe)?)
        } else {
            futures::future::Either::Right(pool.run_on_cores(now, most, transcribe))
        };
        let complete = super::pool::end_of_turn().run(move || {
            if turn_stop.load(Ordering::Relaxed) {
                return None;
            }
            smart_turn.probability(&audio_for_turn).ok()
        });
        tokio::spawn(async move {
            let (words, complete) = futures::join!(words, complete);
            let transcript = words.unwrap_or_default();
            let probability = complete.ok().flatten();
            let _ = tx.send((transcript, probability));
        });
        Some(HearJob { stop, heard: rx })
    }
}

/// Where each final transcription's input is kept for diagnosis, when the operator asks
/// (`RINGLINE_KEEP_HEARD`): a prompt change can then be replayed on exactly the audio the
/// calls cut (`ringline transcribe --prompt`), not on a re-synthesized line.
fn keep_heard_dir() -> Option<std::path::PathBuf> {
    std::env::var_os("RINGLINE_KEEP_HEARD").filter(|d| !d.is_empty()).map(Into::into)
}

/// Writes `audio` (16 kHz) as `heard-<pid>-<n>.wav` beside `heard-<pid>-<n>.json` (prompt and
/// words).
fn keep_heard(dir: &std::path::Path, audio: &[f32], prompt: &str, text: &str) {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let stem = dir.join(format!("heard-{}-{n:04}", std::process::id()));
    let written = std::fs::create_dir_all(dir)
        .map_err(|e| e.to_string())
        .and_then(|()| crate::audio::Audio::new(audio.to_vec(), MODEL_RATE).write_wav(&stem.with_extension("wav")).map_err(|e| e.to_string()))
        .and_then(|()| std::fs::write(stem.with_extension("json"), serde_json::json!({ "prompt": prompt, "text": text }).to_string()).map_err(|e| e.to_string()));
    if let Err(error) = written {
        tracing::warn!(%error, dir = %dir.display(), "could not keep what was heard");
    }
}

/// Weight of a finished sentence in the transcript against Smart Turn's probability.
const PUNCTUATION_BONUS: f32 = 0.3;

/// How much silence, after the VAD's, ends the turn: none when Smart Turn's probability and
/// the transcript together reach `threshold`; all of `fallback` when there are no words or
/// they dangle; in between, the share of `fallback` by which the score fell short.
/// The line's audio to the models' 16 kHz, 20 ms at a time (none when it already is): the
/// caller's and the echo reference's alike, so the two stay sample for sample together.
fn to_model_rate(input_rate: u32) -> Result<Option<StreamResampler>, crate::audio::resample::ResampleError> {
    if input_rate == MODEL_RATE {
        return Ok(None);
    }
    StreamResampler::new(input_rate, MODEL_RATE, (input_rate / 50) as usize).map(Some)
}

pub fn extra_wait(text: &str, probability: Option<f32>, threshold: f32, fallback: Duration) -> Duration {
    if text.trim().is_empty() || is_dangling(text) {
        // No words (a cough, or words still to come), or words that promise more.
        return fallback;
    }
    let score = match probability {
        None if reads_finished(text) => return Duration::ZERO,
        None => return fallback,
        Some(p) if reads_finished(text) => p + PUNCTUATION_BONUS,
        Some(p) => p,
    };
    let short = ((threshold - score) / threshold.max(f32::EPSILON)).clamp(0.0, 1.0);
    fallback.mul_f32(short)
}

/// Ends like an unfinished thought: a trailing conjunction, "...", a comma, digits being
/// read out (a phone number, an account number: "555", "five five five"), or nothing but a
/// break-off ("Wait.", "Hold on, one more thing."): whoever says that has more to say, and a
/// barge-in's "Wait," before a comma's pause was a turn of its own, answered 1.9 s late.
pub fn is_dangling(text: &str) -> bool {
    let trimmed = text.trim_end();
    if trimmed.ends_with("...") || trimmed.ends_with(',') || crate::flow::parse::holds_on(trimmed) {
        return true;
    }
    let words: Vec<String> = trimmed.rsplit(char::is_whitespace).take(2).map(|w| w.trim_end_matches(['.', '?', '!', ',']).to_lowercase()).collect();
    let last = words.first().map(String::as_str).unwrap_or("");
    // Spelled ("five five") or written one digit a word ("1 2 3.", as whisper wrote the eval's
    // "one two three... four five" before its pause).
    let spelled_run = words.len() == 2 && words.iter().all(|w| crate::text::is_one_digit(w));
    let digits = last.len() >= 3 && last.chars().all(|c| c.is_ascii_digit() || c == '-');
    spelled_run || digits || number_under_way(trimmed) || ["and", "or", "but", "so", "is", "are", "the", "a", "an", "to", "my", "uh", "um", "because", "of", "at", "for"].contains(&last)
}

/// Digits (or words) a number given over the phone has at least: a local phone number.
const NUMBER_MIN_DIGITS: usize = 7;

/// "…number is" followed by fewer than [`NUMBER_MIN_DIGITS`] digits or words: the caller is
/// still giving it. The words count too, because whisper often hears spelled digits from a
/// flat voice as other words ("five five five" → "time time time").
fn number_under_way(text: &str) -> bool {
    let lower = text.to_lowercase();
    let Some(at) = ["number is ", "number's ", "number: "].iter().filter_map(|cue| lower.rfind(cue).map(|i| i + cue.len())).max() else {
        return false;
    };
    let given: usize = lower[at..]
        .split(|c: char| c.is_whitespace() || c == ',' || c == '.')
        .filter(|w| !w.is_empty())
        .map(|w| if w.chars().any(|c| c.is_ascii_digit()) { w.chars().filter(char::is_ascii_digit).count() } else { 1 })
        .sum();
    given < NUMBER_MIN_DIGITS
}

/// True when a transcript reads as a complete turn: it ends a sentence or a question.
pub fn reads_finished(text: &str) -> bool {
    let trimmed = text.trim_end();
    !trimmed.is_empty() && !is_dangling(trimmed) && trimmed.ends_with(['.', '?', '!'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_are_counted_by_kind_with_the_first_error_and_become_the_calls_errors() {
        let mut faults = Faults::default();
        assert!(Faults::default().into_errors().is_empty(), "a clean line reports nothing");
        faults.add(Fault::Vad, "input shape [1, 511]");
        faults.add(Fault::Resample, "chunk of 3 samples");
        faults.add(Fault::Vad, "a later error");
        assert_eq!(
            faults.into_errors(),
            [
                "caller audio the resampler refused, heard as silence: 1 time(s); the first: chunk of 3 samples",
                "caller audio the VAD could not score, read as silence: 2 time(s); the first: input shape [1, 511]",
            ]
        );
    }

    /// A recognizer that hears `primed` with any prompt and `unprimed` without, its words at
    /// the given probabilities (the last one for the words after); counts its decodes.
    struct Scripted {
        primed: (&'static str, &'static [f32]),
        unprimed: (&'static str, &'static [f32]),
        decodes: std::sync::atomic::AtomicUsize,
    }

    impl SpeechToText for Scripted {
        fn transcribe(&self, _: &[f32]) -> Result<Transcript, SttError> {
            self.transcribe_primed(&[], &AtomicBool::new(false), "")
        }

        fn transcribe_primed(&self, _: &[f32], _: &AtomicBool, prompt: &str) -> Result<Transcript, SttError> {
            self.decodes.fetch_add(1, Ordering::Relaxed);
            let (text, p) = if prompt.is_empty() { self.unprimed } else { self.primed };
            let words = text.split_whitespace().enumerate().map(|(i, w)| crate::stt::Word { text: w.into(), confidence: p[i.min(p.len() - 1)] }).collect();
            Ok(Transcript { text: text.into(), segments: vec![crate::stt::Segment { start_secs: 0.0, end_secs: 1.0, text: text.into(), no_speech_prob: 0.0, words }], ..Transcript::default() })
        }
    }

    fn heard(primed: (&'static str, &'static [f32]), unprimed: (&'static str, &'static [f32]), prompt: &str, answers: &Answers) -> (String, usize) {
        let stt = Scripted { primed, unprimed, decodes: Default::default() };
        let transcript = transcribe_for_flow(&stt, &[0.0; 16], &AtomicBool::new(false), prompt, answers).unwrap();
        (transcript.text, stt.decodes.load(Ordering::Relaxed))
    }

    #[test]
    fn a_doubtful_transcript_the_flow_cannot_take_is_heard_again_unprimed() {
        let names = Answers::understanding(Arc::new(|text: &str| crate::flow::parse::name(text).is_some()));
        let (made_it, sarah) = (("I made it.", &[0.4][..]), ("I made it, Sarah.", &[0.6][..]));
        assert_eq!(heard(made_it, sarah, "My name is John Smith.", &names), ("I made it, Sarah.".into(), 2));
        // Sure of it, or understood, or unprimed already: one decode.
        assert_eq!(heard(("I made it.", &[0.9][..]), sarah, "My name is John Smith.", &names), ("I made it.".into(), 1));
        assert_eq!(heard(("The name is Sarah.", &[0.3][..]), sarah, "My name is John Smith.", &names), ("The name is Sarah.".into(), 1));
        assert_eq!(heard(made_it, ("I made it.", &[0.4][..]), "", &names), ("I made it.".into(), 1));
        // Nothing in particular awaited: nothing to judge by.
        assert_eq!(heard(made_it, sarah, "My name is John Smith.", &Answers::default()), ("I made it.".into(), 1));
        // The second hearing is no better: the first stands.
        assert_eq!(heard(made_it, ("I made it.", &[0.7][..]), "My name is John Smith.", &names), ("I made it.".into(), 2));
        // Sure on the whole but for one word (0.54 here): heard again too.
        let routes = Answers::understanding(Arc::new(|text: &str| text.contains("reschedule")));
        let rescadual = ("I need to rescadual.", &[0.92, 0.99, 0.8, 0.12][..]);
        assert_eq!(heard(rescadual, ("I need to reschedule.", &[0.9][..]), "Reschedule. Yes. No.", &routes), ("I need to reschedule.".into(), 2));
    }

    #[test]
    fn a_name_borrowed_from_the_prompts_examples_is_heard_again_unprimed() {
        let names = Answers::understanding(Arc::new(|text: &str| crate::flow::parse::name(text).is_some()));
        let prompt = "My name is Oliver Quinn. It's under Elena Novak.";
        // Understood and sure, yet the name is the prompt's: the unprimed hearing stands.
        let oliver = ("My name is Oliver Maxs. A R A H", &[0.9][..]);
        assert_eq!(heard(oliver, ("S, A, R, A, H.", &[0.7][..]), prompt, &names), ("S, A, R, A, H.".into(), 2));
        // A caller called Oliver is Oliver unprimed too: the first hearing stands.
        let real = ("It's Oliver Grant.", &[0.9][..]);
        assert_eq!(heard(real, ("It's Oliver Grant.", &[0.8][..]), prompt, &names), ("It's Oliver Grant.".into(), 2));
        // Nothing heard unprimed is no better.
        assert_eq!(heard(oliver, ("", &[0.0][..]), prompt, &names), ("My name is Oliver Maxs. A R A H".into(), 2));
        // A prompt without the examples, or a transcript without them: one decode.
        assert_eq!(heard(real, ("It's all of a grant.", &[0.8][..]), "Yes. No.", &names), ("It's Oliver Grant.".into(), 1));
        assert_eq!(heard(("The name is Sarah.", &[0.9][..]), ("", &[0.0][..]), prompt, &names), ("The name is Sarah.".into(), 1));
    }

    #[test]
    fn a_short_doubtful_first_line_before_a_collecting_start_node_is_heard_again() {
        let spec: crate::flow::FlowSpec = serde_yaml::from_str(
            r#"
start: booking
nodes:
  booking:
    collect: [{ name: party_size, type: integer, question: "For how many people?" }]
global: [{ says: ["wrong number"], say: "Goodbye!", actions: [end_call] }]
"#,
        )
        .unwrap();
        let flow = crate::flow::Flow::new(spec, serde_json::Map::new(), chrono::NaiveDate::from_ymd_opt(2026, 12, 3).unwrap());
        let first = Answers::default();
        first.follow(&flow);
        let prompt = "Wrong number.";
        // The luigis eval's "Oh, sorry, wrong number." once came back primed as "Sorry. Right.".
        let right = ("Sorry. Right.", &[0.4][..]);
        assert_eq!(heard(right, ("Oh, sorry, wrong number.", &[0.7][..]), prompt, &first), ("Oh, sorry, wrong number.".into(), 2));
        // A doubtful request is taken as heard: no second decode on the first turn.
        let request = ("Hi. I would like to work available.", &[0.9, 0.9, 0.9, 0.9, 0.9, 0.36, 0.4][..]);
        assert_eq!(heard(request, ("Hi, I would like to book a table.", &[0.8][..]), prompt, &first), ("Hi. I would like to work available.".into(), 1));
    }

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

    #[test]
    fn smart_turn_and_transcript_decide_the_wait_together() {
        let fallback = Duration::from_millis(700);
        let wait = |text, p| extra_wait(text, p, 0.5, fallback);
        // The model is unsure but the caller finished a sentence: done.
        assert_eq!(wait("I'd like a table for two.", Some(0.3)), Duration::ZERO);
        // No punctuation, but the model is confident: done.
        assert_eq!(wait("My name is Sarah", Some(0.9)), Duration::ZERO);
        // A finished sentence the model doubts waits a little, in proportion.
        assert!(wait("For four people.", Some(0.1)).as_millis().abs_diff(140) <= 1);
        // The model hears an ending, but the words dangle or a number is half read: the whole fallback.
        assert_eq!(wait("My number is five five five and", Some(0.8)), fallback);
        assert_eq!(wait("My phone number is 555.", Some(0.9)), fallback);
        assert_eq!(wait("My phone number is five five five.", Some(0.9)), fallback);
        // Without the model, punctuation decides.
        assert_eq!(wait("Yes.", None), Duration::ZERO);
        assert_eq!(wait("yes", None), fallback);
        assert_eq!(wait("", Some(1.0)), fallback);
    }

    #[test]
    fn numbers_being_read_out_dangle_but_a_count_does_not() {
        assert!(is_dangling("It's 555-12"));
        assert!(is_dangling("one two three"));
        assert!(is_dangling("Sure, it's 1 2 3."), "digits read out one a word, before a pause");
        assert!(is_dangling("It's 1, 2, 3."));
        assert!(is_dangling("Wait."), "a break-off alone has more to come");
        assert!(is_dangling("Hold on. One more thing."));
        assert!(is_dangling("Let me ask something else."));
        assert!(!is_dangling("Wait, no, that's wrong."), "an answer in the same breath");
        assert!(!is_dangling("Sorry?"), "asks to hear it again: no break-off");
        assert!(!is_dangling("Just the 2."));
        assert!(!is_dangling("For four people."));
        assert!(!is_dangling("Table for 2."));
        // A number under way, even when whisper mishears the digits.
        assert!(is_dangling("My phone number is time time time."));
        assert!(is_dangling("My number is 555."));
        assert!(!is_dangling("My number is 555-1234, call me back."));
        assert!(!is_dangling("My phone number is five five five one two three four, thanks."));
    }
}
