//! Speech-to-text: one trait, one file per provider.
//!
//! A provider turns a finished utterance (mono, 16 kHz) into text with timings. It knows
//! nothing of calls or assistants; the pipeline decides when an utterance is finished.

pub mod openai;
pub mod whisper;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum SttError {
    #[error(transparent)]
    Model(#[from] crate::models::ModelError),
    #[error("whisper failed: {0}")]
    Whisper(String),
    #[error("the transcription endpoint {endpoint} failed: {reason}")]
    Remote { endpoint: String, reason: String },
    #[error("transcription stopped before it finished")]
    Stopped,
}

/// A transcription with segment timings.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Transcript {
    pub text: String,
    pub segments: Vec<Segment>,
    /// Seconds of audio transcribed.
    pub audio_secs: f64,
    /// Wall time spent transcribing.
    #[serde(serialize_with = "as_secs")]
    pub processing: Duration,
}

/// Below this a word is reported as unsure ([`Transcript::unsure_words`]).
pub const UNSURE_WORD: f32 = 0.4;

impl Transcript {
    /// Processing time over audio time: below 1 is faster than real time.
    pub fn real_time_factor(&self) -> f64 {
        if self.audio_secs > 0.0 {
            self.processing.as_secs_f64() / self.audio_secs
        } else {
            0.0
        }
    }

    /// How sure the recognizer is of the whole transcript (0..=1): the geometric mean of its
    /// words' probabilities, so one badly heard word in a short answer shows. `None` when
    /// the provider reports no probabilities (or there are no words).
    pub fn confidence(&self) -> Option<f32> {
        let words: Vec<f32> = self.segments.iter().flat_map(|s| s.words.iter().map(|w| w.confidence)).collect();
        if words.is_empty() {
            return None;
        }
        let mean_log = words.iter().map(|p| (p.max(1e-6) as f64).ln()).sum::<f64>() / words.len() as f64;
        Some(mean_log.exp() as f32)
    }

    /// The words heard with a probability below [`UNSURE_WORD`], in order.
    pub fn unsure_words(&self) -> Vec<String> {
        self.segments.iter().flat_map(|s| s.words.iter()).filter(|w| w.confidence < UNSURE_WORD).map(|w| w.text.clone()).collect()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Segment {
    pub start_secs: f64,
    pub end_secs: f64,
    pub text: String,
    pub no_speech_prob: f32,
    /// The segment's words with the recognizer's probability of each (empty when the
    /// provider reports none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub words: Vec<Word>,
}

/// One recognized word and the probability of its least likely token.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Word {
    pub text: String,
    pub confidence: f32,
}

/// Groups a decoder's text tokens into words: a token starting with a space (or the first)
/// opens a word; a word's probability is its least likely token's. Punctuation-only tokens
/// join the word before them without lowering it.
pub fn words_from_tokens(tokens: &[(String, f32)]) -> Vec<Word> {
    let mut words: Vec<Word> = Vec::new();
    for (text, p) in tokens {
        let is_punctuation = !text.chars().any(|c| c.is_alphanumeric());
        match words.last_mut() {
            Some(word) if !text.starts_with(' ') || (is_punctuation && !text.trim().is_empty()) => {
                word.text.push_str(text);
                if !is_punctuation {
                    word.confidence = word.confidence.min(*p);
                }
            }
            _ if text.trim().is_empty() => {}
            _ => words.push(Word { text: text.to_string(), confidence: if is_punctuation { 1.0 } else { *p } }),
        }
    }
    for word in &mut words {
        word.text = word.text.trim().to_string();
    }
    words.retain(|w| !w.text.is_empty());
    words
}

fn as_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// Text the recognizer is primed with (Whisper's initial prompt): words the caller is likely
/// to say next. The agent sets it as the conversation moves; the listener reads it for each
/// utterance.
#[derive(Debug, Clone, Default)]
pub struct Prompt(std::sync::Arc<std::sync::Mutex<String>>);

/// Longest prompt kept. Whisper's prompt shares its 448-token window with the transcript, and
/// it costs time on every final transcript: tiny.en on a 2.6 s line took 559 ms unprimed,
/// +30 ms per 100 characters of prompt up to 450, then ~+170 ms more past ~500
/// (`docs/decisions.md`, 2026-12-01).
const PROMPT_CHARS: usize = 450;

impl Prompt {
    /// Sets the prompt; a long one keeps its end (what Whisper heeds most).
    pub fn set(&self, text: &str) {
        self.set_parts("", text);
    }

    /// Sets the prompt to the call's `vocabulary` (its names: kept whole where they fit in half
    /// the prompt) then what is `expected` next; when the two are too long, `expected` loses
    /// its start (the phrases that hold anywhere in a flow come first, the question's own
    /// last), cut at a word.
    pub fn set_parts(&self, vocabulary: &str, expected: &str) {
        let vocabulary = tail(vocabulary.trim(), PROMPT_CHARS / 2);
        let room = PROMPT_CHARS.saturating_sub(vocabulary.len() + 1);
        let expected = tail(expected.trim(), room);
        let text = format!("{vocabulary} {expected}").trim().to_string();
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = text;
    }

    pub fn get(&self) -> String {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The last `at_most` bytes of `text`, starting at a word when it had to be cut.
fn tail(text: &str, at_most: usize) -> &str {
    if text.len() <= at_most {
        return text;
    }
    let mut start = text.len() - at_most;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    let rest = &text[start..];
    match rest.find(' ') {
        // Mid-word: begin at the next whole word.
        Some(space) if !text[..start].ends_with(' ') => rest[space..].trim_start(),
        _ => rest.trim_start(),
    }
}

thread_local! {
    static THREADS: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` with transcriptions on this thread using `threads` CPU threads, whatever the
/// provider was loaded with: the inference pool decides per job how many cores it may take.
pub fn with_threads<T>(threads: usize, f: impl FnOnce() -> T) -> T {
    let before = THREADS.with(|t| t.replace(Some(threads.max(1))));
    let result = f();
    THREADS.with(|t| t.set(before));
    result
}

/// The threads a transcription on this thread uses: [`with_threads`]'s, else `default`.
pub fn threads_or(default: usize) -> usize {
    THREADS.with(|t| t.get()).unwrap_or(default)
}

/// Anything that can transcribe a finished utterance of 16 kHz mono audio.
pub trait SpeechToText: Send + Sync {
    fn transcribe(&self, samples_16k: &[f32]) -> Result<Transcript, SttError>;

    /// Like [`SpeechToText::transcribe`], but may give up early with [`SttError::Stopped`] once
    /// `stop` is set (a partial transcript that a newer one replaces). A provider that cannot
    /// stop midway checks before it starts.
    fn transcribe_until(&self, samples_16k: &[f32], stop: &AtomicBool) -> Result<Transcript, SttError> {
        if stop.load(Ordering::Relaxed) {
            return Err(SttError::Stopped);
        }
        self.transcribe(samples_16k)
    }

    /// Like [`SpeechToText::transcribe_until`], primed with `prompt` (words likely to be
    /// said). A provider without priming ignores it.
    fn transcribe_primed(&self, samples_16k: &[f32], stop: &AtomicBool, prompt: &str) -> Result<Transcript, SttError> {
        let _ = prompt;
        self.transcribe_until(samples_16k, stop)
    }
}

/// Sound kept before a stretch of speech when it is cut out of a recording: the VAD's onset
/// can fall after a soft first sound.
pub const STRETCH_LEAD_MS: usize = 400;
/// Silence kept after a stretch: the VAD's end can fall before a word's fading end.
pub const STRETCH_TAIL_MS: usize = 300;

/// Where each stretch of speech (start and end in samples at 16 kHz, in order) is cut out of
/// a recording of `len` samples: with [`STRETCH_LEAD_MS`] before it and [`STRETCH_TAIL_MS`]
/// after, but never past the middle of the pause to a neighbour, so no sound is heard twice
/// however close the stretches are.
pub fn stretch_pieces(len: usize, stretches: &[(usize, usize)]) -> Vec<std::ops::Range<usize>> {
    let mut pieces = Vec::with_capacity(stretches.len());
    for (i, &(start, end)) in stretches.iter().enumerate() {
        let floor = match i {
            0 => 0,
            _ => stretches[i - 1].1.midpoint(start).min(start),
        };
        let ceiling = stretches.get(i + 1).map_or(len, |next| end.midpoint(next.0).max(end)).min(len);
        let from = start.saturating_sub(STRETCH_LEAD_MS * 16).max(floor).min(len);
        let to = (end + STRETCH_TAIL_MS * 16).min(ceiling).max(from);
        pieces.push(from..to);
    }
    pieces
}

/// The transcripts of a recording's pieces (each with the sample at 16 kHz it was cut from)
/// joined into one for the whole recording of `audio_secs`: texts in order, segments moved
/// to the recording's times, processing summed.
pub fn join_pieces(audio_secs: f64, pieces: impl IntoIterator<Item = (usize, Transcript)>) -> Transcript {
    let mut whole = Transcript { audio_secs, ..Transcript::default() };
    let mut texts: Vec<String> = Vec::new();
    for (from, piece) in pieces {
        let offset = from as f64 / 16_000.0;
        whole.processing += piece.processing;
        whole.segments.extend(piece.segments.into_iter().map(|s| Segment { start_secs: s.start_secs + offset, end_secs: s.end_secs + offset, ..s }));
        let text = piece.text.trim();
        if !text.is_empty() {
            texts.push(text.to_string());
        }
    }
    whole.text = texts.join(" ");
    whole
}

/// A recording transcribed one stretch of speech at a time (`stretches`: start and end in
/// samples at 16 kHz, in order): each cut out by [`stretch_pieces`], transcribed alone
/// (primed with `prompt` when given), and joined by [`join_pieces`]. Whisper decodes a long
/// recording in 30 s windows and a window ending in a long pause can take the rest of the
/// window with it; a stretch at a time hears every one. `heard` is called after each stretch
/// (to show progress).
pub fn transcribe_stretches(stt: &dyn SpeechToText, samples_16k: &[f32], stretches: &[(usize, usize)], prompt: Option<&str>, mut heard: impl FnMut()) -> Result<Transcript, SttError> {
    let never = AtomicBool::new(false);
    let mut pieces = Vec::with_capacity(stretches.len());
    for range in stretch_pieces(samples_16k.len(), stretches) {
        let from = range.start;
        let piece = match prompt {
            Some(prompt) => stt.transcribe_primed(&samples_16k[range], &never, prompt)?,
            None => stt.transcribe(&samples_16k[range])?,
        };
        pieces.push((from, piece));
        heard();
    }
    Ok(join_pieces(samples_16k.len() as f64 / 16_000.0, pieces))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hears every piece as "piece N", one segment over all of it, and keeps the pieces' lengths.
    #[derive(Default)]
    struct Pieces(std::sync::Mutex<Vec<usize>>);

    impl SpeechToText for Pieces {
        fn transcribe(&self, samples_16k: &[f32]) -> Result<Transcript, SttError> {
            let mut heard = self.0.lock().unwrap();
            heard.push(samples_16k.len());
            let text = format!(" piece {}", heard.len());
            let secs = samples_16k.len() as f64 / 16_000.0;
            let segment = Segment { start_secs: 0.0, end_secs: secs, text: text.clone(), no_speech_prob: 0.0, words: Vec::new() };
            Ok(Transcript { text, segments: vec![segment], audio_secs: secs, processing: Duration::from_millis(10) })
        }
    }

    #[test]
    fn stretches_are_heard_one_at_a_time_with_the_recording_s_times() {
        let stt = Pieces::default();
        let recording = vec![0.0f32; 20 * 16_000];
        // Speech at 1–3 s, at 10–12 s, and from 19.9 s to the end (its tail cut at the end).
        let stretches = [(16_000, 48_000), (160_000, 192_000), (318_400, 320_000)];
        let mut calls = 0;
        let whole = transcribe_stretches(&stt, &recording, &stretches, None, || calls += 1).unwrap();
        assert_eq!(calls, 3);
        assert_eq!(whole.text, "piece 1 piece 2 piece 3");
        // Each piece is the stretch with 0.4 s before it and 0.3 s after, within the recording.
        assert_eq!(*stt.0.lock().unwrap(), vec![43_200, 43_200, 8_000]);
        let ms = |secs: f64| (secs * 1000.0).round() as u32;
        let times: Vec<(u32, u32)> = whole.segments.iter().map(|s| (ms(s.start_secs), ms(s.end_secs))).collect();
        assert_eq!(times, vec![(600, 3300), (9600, 12300), (19500, 20000)]);
        assert_eq!(whole.audio_secs, 20.0);
        assert_eq!(whole.processing, Duration::from_millis(30));
    }

    #[test]
    fn no_stretches_is_no_words() {
        let whole = transcribe_stretches(&Pieces::default(), &[0.0; 16_000], &[], Some("Luigi's"), || {}).unwrap();
        assert!(whole.text.is_empty() && whole.segments.is_empty());
        assert_eq!(whole.audio_secs, 1.0);
    }

    #[test]
    fn close_stretches_are_cut_at_the_middle_of_their_pause() {
        // 16 kHz: speech at 1.0–2.0 s and 2.2–3.0 s (a 0.2 s pause), and 3.5–4.0 s of a 4.1 s recording.
        let stretches = [(16_000, 32_000), (35_200, 48_000), (56_000, 64_000)];
        let pieces = stretch_pieces(65_600, &stretches);
        // The first keeps its 0.4 s lead; the 0.2 s pause is split at 2.1 s; the 0.5 s one at
        // 3.25 s (0.25 s each side, under the lead and the tail); the last ends with the recording.
        assert_eq!(pieces, vec![9_600..33_600, 33_600..52_000, 52_000..65_600]);
        assert!(pieces.windows(2).all(|w| w[0].end <= w[1].start), "no sound heard twice: {pieces:?}");
    }

    fn tokens(list: &[(&str, f32)]) -> Vec<(String, f32)> {
        list.iter().map(|(t, p)| (t.to_string(), *p)).collect()
    }

    #[test]
    fn tokens_join_into_words_at_their_least_likely_piece() {
        let words = words_from_tokens(&tokens(&[(" My", 0.9), (" name", 0.95), (" is", 0.9), (" Sar", 0.8), ("ah", 0.3), (".", 0.2)]));
        assert_eq!(words, vec![
            Word { text: "My".into(), confidence: 0.9 },
            Word { text: "name".into(), confidence: 0.95 },
            Word { text: "is".into(), confidence: 0.9 },
            // The word is as sure as its least likely piece; the full stop does not count.
            Word { text: "Sarah.".into(), confidence: 0.3 },
        ]);
        assert_eq!(words_from_tokens(&tokens(&[("Hello", 0.5), (",", 0.1), (" ", 0.9)])), vec![Word { text: "Hello,".into(), confidence: 0.5 }]);
        assert!(words_from_tokens(&[]).is_empty());
    }

    #[test]
    fn a_transcript_is_as_sure_as_the_geometric_mean_of_its_words() {
        let segment = |words: Vec<Word>| Segment { start_secs: 0.0, end_secs: 1.0, text: String::new(), no_speech_prob: 0.0, words };
        let sure = Transcript { segments: vec![segment(vec![Word { text: "yes".into(), confidence: 0.9 }, Word { text: "please".into(), confidence: 0.9 }])], ..Transcript::default() };
        assert!((sure.confidence().unwrap() - 0.9).abs() < 1e-5);
        assert!(sure.unsure_words().is_empty());
        let one_bad = Transcript { segments: vec![segment(vec![Word { text: "four".into(), confidence: 0.9 }, Word { text: "five".into(), confidence: 0.1 }])], ..Transcript::default() };
        assert!((one_bad.confidence().unwrap() - 0.3).abs() < 1e-5);
        assert_eq!(one_bad.unsure_words(), vec!["five".to_string()]);
        assert_eq!(Transcript::default().confidence(), None);
    }

    #[test]
    fn a_long_prompt_keeps_the_calls_names_and_the_questions_end_within_its_bound() {
        let prompt = Prompt::default();
        let shared: String = (0..60).map(|i| format!("Shared phrase {i}. ")).collect();
        let expected = format!("{shared}My name is John Smith. It's under Maria Garcia.");
        prompt.set_parts("Luigi's Trattoria. Zoë Okonkwo.", &expected);
        let text = prompt.get();
        assert!(text.len() <= PROMPT_CHARS, "{} characters", text.len());
        assert!(text.starts_with("Luigi's Trattoria. Zoë Okonkwo. "), "{text}");
        assert!(text.ends_with("It's under Maria Garcia."), "{text}");
        // Cut at a word, and the earliest shared phrases went first.
        let kept = text.trim_start_matches("Luigi's Trattoria. Zoë Okonkwo. ");
        assert!(kept.starts_with("Shared ") || kept.starts_with("phrase ") || kept.chars().next().is_some_and(|c| c.is_ascii_digit()), "{kept}");
        assert!(!text.contains("Shared phrase 0."), "{text}");
        // Short ones are kept whole; a vocabulary alone too.
        prompt.set_parts("Luigi's.", "Yes. No.");
        assert_eq!(prompt.get(), "Luigi's. Yes. No.");
        prompt.set("Sarah.");
        assert_eq!(prompt.get(), "Sarah.");
        // A vocabulary longer than half the prompt keeps its end, and room is left for the question.
        let names: String = (0..80).map(|i| format!("Name{i}. ")).collect();
        prompt.set_parts(&names, "Yes. No.");
        assert!(prompt.get().len() <= PROMPT_CHARS && prompt.get().ends_with("Name79. Yes. No."), "{}", prompt.get());
    }
}
