//! Local speech-to-text with whisper.cpp (through whisper-rs), on the store's ggml models.
//!
//! Whisper pads every input to a 30 s window by default, so a 2 s utterance would cost as much
//! as 30 s of audio. We size the encoder window (`audio_ctx`) to the utterance plus a margin,
//! decode greedily with no temperature fallback (bounded time per turn), and treat silence as
//! silence: an utterance below the level gate, or segments that are only non-speech
//! annotations, give an empty transcript rather than a hallucinated "you".

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use whisper_rs::{FullParams, SamplingStrategy, WhisperContext, WhisperContextParameters, WhisperState};

use super::{Segment, SpeechToText, SttError, Transcript};
use crate::models::ModelStore;

/// Below this peak level the input is taken as silence and not decoded at all.
pub const SILENCE_PEAK_DBFS: f32 = -50.0;
/// Encoder frames per second of audio (whisper's 20 ms frames).
const FRAMES_PER_SEC: f64 = 50.0;
/// Extra encoder frames beyond the audio: too tight a window makes whisper hallucinate.
const AUDIO_CTX_MARGIN: usize = 128;
/// The smallest window used. Measured on human recordings: below ~384 frames tiny.en falls
/// into repetition loops ("five five five …") on short utterances; 512 is clean and still
/// a third of the full window's cost.
const MIN_AUDIO_CTX: usize = 512;
/// A phrase repeated this many times in a row is a decoding loop, not speech.
const LOOP_REPEATS: usize = 4;
/// Faster than any caller speaks (read speech runs at 2.5–3 words a second, quick speech at 4):
/// a transcript this dense over its audio, made of a phrase said twice or more, is the decoder
/// starting the utterance over after its end, not the caller repeating it. (The token bound
/// stops such a loop after two or three copies, below [`LOOP_REPEATS`].)
const MAX_WORDS_PER_SEC: f64 = 4.5;
/// The shortest phrase whose second copy, at that density, counts as a loop.
const MIN_LOOPED_PHRASE: usize = 3;
/// The longest phrase looked for: a loop restarts a whole utterance of two short sentences.
const MAX_LOOPED_PHRASE: usize = 16;
const FULL_AUDIO_CTX: usize = 1500;
/// whisper.cpp refuses inputs shorter than one second; shorter ones are padded with silence.
const MIN_SAMPLES: usize = 16_000 + 1_600;
/// Segments whose no-speech probability exceeds this are dropped when their text is empty-ish.
const NO_SPEECH_THRESHOLD: f32 = 0.8;

pub struct WhisperStt {
    /// The model and its pooled decoder states, shared by every view of the same file.
    model: Arc<WhisperModel>,
    threads: usize,
    language: Option<String>,
    /// Segment timestamps cost extra decoder tokens; live turns don't need them.
    timestamps: bool,
}

/// One loaded Whisper model file. Languages and other settings are per view
/// ([`WhisperStt::for_language`]), so calls in different languages share it.
pub struct WhisperModel {
    name: String,
    context: WhisperContext,
    /// Decoder states are large (KV caches); reuse them across utterances.
    states: Mutex<Vec<WhisperState>>,
}

impl WhisperStt {
    /// Loads `model` (a store name such as `whisper-tiny.en`).
    pub fn load(store: &ModelStore, model: &str, threads: usize, language: Option<&str>) -> Result<Self, SttError> {
        Ok(WhisperStt::shared(Arc::new(WhisperModel::load(store, model)?), threads, language))
    }

    /// A view of an already loaded model with its own threads and language.
    pub fn shared(model: Arc<WhisperModel>, threads: usize, language: Option<&str>) -> Self {
        let language = match language {
            Some(lang) => Some(lang.split(['-', '_']).next().unwrap_or(lang).to_lowercase()),
            None if model.name.ends_with(".en") => Some("en".to_string()),
            None => None,
        };
        WhisperStt { model, threads: threads.max(1), language, timestamps: true }
    }

    /// Utterance mode: one segment, no timestamp tokens (faster; what a live turn uses).
    pub fn without_timestamps(mut self) -> Self {
        self.timestamps = false;
        self
    }

    fn take_state(&self) -> Result<WhisperState, SttError> {
        let pooled = self.model.states.lock().unwrap_or_else(|e| e.into_inner()).pop();
        match pooled {
            Some(state) => Ok(state),
            None => self.model.context.create_state().map_err(|e| SttError::Whisper(format!("creating a decoder state: {e}"))),
        }
    }

    fn return_state(&self, state: WhisperState) {
        self.model.states.lock().unwrap_or_else(|e| e.into_inner()).push(state);
    }
}

extern "C" {
    /// Defined by `.cargo/whisper-last-logits.cmake` in the whisper.cpp it patches: a prompt's
    /// decode computes the vocabulary's logits for its last token only, not for all ~100.
    /// Referring to it makes a whisper.cpp built without the patch fail to link.
    fn ringline_whisper_last_logits() -> std::os::raw::c_int;
}

/// Whether the linked whisper.cpp computes only the logits a batch keeps (always, once built).
pub fn decodes_last_logits_only() -> bool {
    // SAFETY: a C function without arguments that returns a constant.
    unsafe { ringline_whisper_last_logits() == 1 }
}

impl WhisperModel {
    /// Loads the store model `model` (e.g. `whisper-tiny.en`).
    pub fn load(store: &ModelStore, model: &str) -> Result<Self, SttError> {
        let path = store.require(model)?;
        tracing::debug!(model, last_logits_only = decodes_last_logits_only(), "loading whisper");
        let mut params = WhisperContextParameters::default();
        params.use_gpu = false;
        let context = WhisperContext::new_with_params(&path, params).map_err(|e| {
            let file = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
            SttError::Whisper(format!("loading {model} ({file}): {e}"))
        })?;
        Ok(WhisperModel { name: model.to_string(), context, states: Mutex::new(Vec::new()) })
    }
}

/// The encoder window for `samples` of 16 kHz audio.
pub fn audio_ctx_for(samples: usize) -> usize {
    let frames = (samples as f64 / 16_000.0 * FRAMES_PER_SEC).ceil() as usize + AUDIO_CTX_MARGIN;
    if frames >= FULL_AUDIO_CTX - 64 {
        return FULL_AUDIO_CTX;
    }
    (frames.div_ceil(64) * 64).max(MIN_AUDIO_CTX)
}

/// The longest run of a phrase of `lengths` words repeated back to back in `words`, among the
/// phrases `counts` accepts: (repeats, start, phrase length); the shortest phrase wins a tie,
/// and (1, 0, 0) is none.
fn longest_repetition(words: &[&str], lengths: std::ops::RangeInclusive<usize>, counts: impl Fn(&[&str]) -> bool) -> (usize, usize, usize) {
    let mut best = (1, 0, 0);
    for len in *lengths.start()..=(*lengths.end()).min(words.len() / 2) {
        for start in 0..words.len().saturating_sub(len) {
            if !counts(&words[start..start + len]) {
                continue;
            }
            let mut repeats = 1;
            while start + (repeats + 1) * len <= words.len()
                && words[start..start + len] == words[start + repeats * len..start + (repeats + 1) * len]
            {
                repeats += 1;
            }
            if repeats > best.0 {
                best = (repeats, start, len);
            }
        }
    }
    best
}

/// Whether `words`, heard in `audio_secs`, hold a loop: a phrase repeated [`LOOP_REPEATS`] or
/// more times (digits only in a transcript denser than [`MAX_WORDS_PER_SEC`]: "1 0 0 0 0"
/// said at a speaking pace is a number), or, in such a dense transcript, one of
/// [`MIN_LOOPED_PHRASE`] words or more repeated at all. Returns the repetition to collapse.
fn find_loop(words: &[&str], audio_secs: f64) -> Option<(usize, usize, usize)> {
    let dense = words.len() as f64 > audio_secs * MAX_WORDS_PER_SEC;
    let any = longest_repetition(words, 1..=MAX_LOOPED_PHRASE, |phrase| dense || !phrase.iter().all(|w| is_digit_word(w)));
    if any.0 >= LOOP_REPEATS {
        return Some(any);
    }
    if dense {
        let long = longest_repetition(words, MIN_LOOPED_PHRASE..=MAX_LOOPED_PHRASE, |_| true);
        return (long.0 >= 2).then_some(long);
    }
    None
}

/// Digits as whisper writes them said at a speaking pace: one ("5", "five", "oh") or a group
/// ("555").
fn is_digit_word(word: &str) -> bool {
    let bare = word.trim_matches(|c: char| !c.is_alphanumeric());
    crate::text::is_one_digit(bare) || (!bare.is_empty() && bare.chars().all(|c| c.is_ascii_digit()))
}

/// True when whisper looped (see [`find_loop`]).
pub fn is_looping(text: &str, audio_secs: f64) -> bool {
    let words: Vec<&str> = text.split_whitespace().collect();
    find_loop(&words, audio_secs).is_some()
}

/// Collapses every looped phrase to a single occurrence, and drops the start of one more copy
/// that the token bound cut off at the end.
pub fn collapse_loops(text: &str, audio_secs: f64) -> String {
    let mut words: Vec<&str> = text.split_whitespace().collect();
    while let Some((repeats, start, len)) = find_loop(&words, audio_secs) {
        words.drain(start + len..start + repeats * len);
        let after = start + len;
        let tail = words.len() - after;
        if tail > 0 && tail < len && words[after..] == words[start..start + tail] {
            words.truncate(after);
        }
    }
    words.join(" ")
}

/// True for texts like "[BLANK_AUDIO]", "(music)" or "♪" that are not words.
/// Whether a transcript is (most of) the prompt it was primed with: four or more words in a
/// row from the prompt, making up most of the transcript.
fn echoes_prompt(text: &str, prompt: &str) -> bool {
    let norm = |t: &str| -> Vec<String> { t.split_whitespace().map(|w| w.trim_matches(|c: char| !c.is_alphanumeric()).to_lowercase()).filter(|w| !w.is_empty()).collect() };
    let (said, primed) = (norm(text), norm(prompt));
    if said.len() < 4 {
        return false;
    }
    let copied = said.windows(4).filter(|w| primed.windows(4).any(|p| p == *w)).count();
    copied * 2 >= said.len().saturating_sub(3)
}

/// `text` without whisper's best-known invention: a lone lowercase "you" after the last
/// sentence, written over the silence that ends an utterance (said, it would open a sentence
/// and be capitalized). `None` when there is none.
fn without_trailing_you(text: &str) -> Option<String> {
    let kept = text.strip_suffix(" you").or_else(|| (text == "you").then_some(""))?;
    (kept.is_empty() || kept.ends_with(['.', '!', '?'])).then(|| kept.to_string())
}

fn is_annotation(text: &str) -> bool {
    let trimmed = text.trim();
    trimmed.is_empty()
        || (trimmed.starts_with('[') && trimmed.ends_with(']'))
        || (trimmed.starts_with('(') && trimmed.ends_with(')'))
        || trimmed.chars().all(|c| !c.is_alphanumeric())
}

impl SpeechToText for WhisperStt {
    fn transcribe(&self, samples_16k: &[f32]) -> Result<Transcript, SttError> {
        self.transcribe_with(samples_16k, None, "")
    }

    fn transcribe_until(&self, samples_16k: &[f32], stop: &AtomicBool) -> Result<Transcript, SttError> {
        self.transcribe_with(samples_16k, Some(stop), "")
    }

    fn transcribe_primed(&self, samples_16k: &[f32], stop: &AtomicBool, prompt: &str) -> Result<Transcript, SttError> {
        self.transcribe_with(samples_16k, Some(stop), prompt)
    }
}

/// whisper.cpp's abort callback: true once the flag behind `user_data` is set. whisper.cpp
/// asks after the encoder and after every decoder step.
unsafe extern "C" fn stop_requested(user_data: *mut std::ffi::c_void) -> bool {
    // SAFETY: `decode` passes a pointer to an `AtomicBool` it borrows for the whole of
    // `WhisperState::full`, the only time whisper.cpp calls this.
    unsafe { (*(user_data as *const AtomicBool)).load(Ordering::Relaxed) }
}

impl WhisperStt {
    fn transcribe_with(&self, samples_16k: &[f32], stop: Option<&AtomicBool>, prompt: &str) -> Result<Transcript, SttError> {
        if stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
            return Err(SttError::Stopped);
        }
        let started = Instant::now();
        let audio_secs = samples_16k.len() as f64 / 16_000.0;
        let audio = crate::audio::Audio::new(samples_16k.to_vec(), 16_000);
        if samples_16k.is_empty() || audio.peak_dbfs() < SILENCE_PEAK_DBFS {
            return Ok(Transcript { audio_secs, processing: started.elapsed(), ..Transcript::default() });
        }
        let mut padded = audio.samples;
        if padded.len() < MIN_SAMPLES {
            padded.resize(MIN_SAMPLES, 0.0);
        }

        let mut transcript = self.decode(&padded, audio_ctx_for(padded.len()), audio_secs, stop, prompt)?;
        if !prompt.is_empty() && (echoes_prompt(&transcript.text, prompt) || is_looping(&transcript.text, audio_secs)) {
            // Whisper wrote out its prompt, or fell into repeating (a prompt of phrases invites
            // "tomorrow evening, tomorrow evening, …"): decode again unprimed, same window.
            tracing::debug!(text = %transcript.text, "whisper echoed or looped on its prompt; decoding unprimed");
            transcript = self.decode(&padded, audio_ctx_for(padded.len()), audio_secs, stop, "")?;
        }
        if is_looping(&transcript.text, audio_secs) {
            // A loop on a short window: decode once more on the full window, then give up
            // on decoding and keep one copy of the looped phrase. Bounded: at most two passes.
            tracing::debug!(text = %transcript.text, "whisper looped; retrying on the full window");
            transcript = self.decode(&padded, FULL_AUDIO_CTX, audio_secs, stop, "")?;
            if is_looping(&transcript.text, audio_secs) {
                transcript.text = collapse_loops(&transcript.text, audio_secs);
                for segment in &mut transcript.segments {
                    segment.text = collapse_loops(&segment.text, audio_secs);
                }
            }
        }
        transcript.processing = started.elapsed();
        Ok(transcript)
    }

    fn decode(&self, padded: &[f32], audio_ctx: usize, audio_secs: f64, stop: Option<&AtomicBool>, prompt: &str) -> Result<Transcript, SttError> {
        let mut params = FullParams::new(SamplingStrategy::Greedy { best_of: 1 });
        if !prompt.is_empty() {
            params.set_initial_prompt(prompt);
        }
        // Speech runs at about three words (four tokens) a second: a decode far past that is a
        // loop, cut short rather than paid for.
        params.set_max_tokens((audio_secs * 8.0).ceil().max(24.0) as i32);
        params.set_n_threads(super::threads_or(self.threads) as i32);
        params.set_language(self.language.as_deref());
        params.set_no_context(true);
        params.set_print_progress(false);
        params.set_print_realtime(false);
        params.set_print_special(false);
        params.set_print_timestamps(false);
        params.set_no_timestamps(!self.timestamps);
        params.set_single_segment(!self.timestamps);
        params.set_suppress_blank(true);
        params.set_suppress_nst(true);
        params.set_temperature(0.0);
        params.set_temperature_inc(0.0);
        // 0 means whisper's full 30 s window.
        params.set_audio_ctx(if audio_ctx >= FULL_AUDIO_CTX { 0 } else { audio_ctx as i32 });

        if let Some(stop) = stop {
            // SAFETY: `stop` outlives `state.full` below, the only call that uses it.
            unsafe {
                params.set_abort_callback(Some(stop_requested));
                params.set_abort_callback_user_data(stop as *const AtomicBool as *mut std::ffi::c_void);
            }
        }
        let mut state = self.take_state()?;
        let result = state.full(params, padded);
        if stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
            self.return_state(state);
            return Err(SttError::Stopped);
        }
        let eot = self.model.context.token_eot();
        let transcript = result.map_err(|e| SttError::Whisper(e.to_string())).map(|_| {
            let mut segments = Vec::new();
            for segment in state.as_iter() {
                let text = segment.to_str_lossy().map(|t| t.trim().to_string()).unwrap_or_default();
                let no_speech_prob = segment.no_speech_probability();
                if is_annotation(&text) || (no_speech_prob > NO_SPEECH_THRESHOLD && text.split_whitespace().count() <= 1) {
                    continue;
                }
                // Text tokens with their probabilities (ids from end-of-text on are special).
                let tokens: Vec<(String, f32)> = (0..segment.n_tokens())
                    .filter_map(|i| segment.get_token(i))
                    .filter(|token| token.token_id() < eot)
                    .map(|token| (token.to_str_lossy().map(|t| t.into_owned()).unwrap_or_default(), token.token_probability()))
                    .collect();
                segments.push(Segment {
                    start_secs: segment.start_timestamp() as f64 / 100.0,
                    end_secs: (segment.end_timestamp() as f64 / 100.0).min(audio_secs),
                    text,
                    no_speech_prob,
                    words: super::words_from_tokens(&tokens),
                });
            }
            if let Some(last) = segments.last_mut() {
                if let Some(kept) = without_trailing_you(&last.text) {
                    last.text = kept;
                    if last.words.last().is_some_and(|word| word.text.trim() == "you") {
                        last.words.pop();
                    }
                }
                if last.text.is_empty() {
                    segments.pop();
                }
            }
            let text = segments.iter().map(|s| s.text.as_str()).collect::<Vec<_>>().join(" ");
            Transcript { text, segments, audio_secs, processing: Default::default() }
        });
        self.return_state(state);
        transcript
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_covers_the_audio_with_a_margin() {
        assert_eq!(audio_ctx_for(2 * 16_000), MIN_AUDIO_CTX);
        assert_eq!(audio_ctx_for(16_000 * 10), 640); // 500 frames + 128, rounded up to 64
        assert_eq!(audio_ctx_for(16_000 * 29), FULL_AUDIO_CTX);
        assert_eq!(audio_ctx_for(16_000 * 120), FULL_AUDIO_CTX);
    }

    #[test]
    fn loops_are_detected_and_collapsed() {
        assert!(is_looping("Thank you. Thank you. Thank you. Thank you.", 10.0));
        assert!(is_looping("Go forward 10 meters. Go forward 10 meters. Go forward 10 meters. Go forward 10 meters.", 10.0));
        assert!(!is_looping("my number is five five five one two three four", 3.0));
        assert_eq!(collapse_loops("I said go on go on go on go on go on now", 10.0), "I said go on now");
        // Digits written faster than anyone reads them out are a loop ...
        assert!(is_looping("five five five five five five five five five five", 1.5));
        assert_eq!(collapse_loops("5 5 5 5 5 5 5 5 5 5 5 5", 1.5), "5");
        // ... but at a speaking pace they are a number with a digit said four times or more.
        assert!(!is_looping("1 0 0 0 0", 2.5));
        assert!(!is_looping("It's 5 5 5, 5 5 5 5.", 3.5));
        assert_eq!(collapse_loops("My PIN is 0 0 0 0 0 0.", 3.0), "My PIN is 0 0 0 0 0 0.");
    }

    #[test]
    fn an_utterance_started_over_after_its_end_is_a_loop() {
        // What whisper made of recordings of 2.6 and 4.9 s (a phone system's prompts): the
        // token bound stopped each after two or three copies, fewer than LOOP_REPEATS.
        let once = "Press 1 to call this number.";
        let looped = "Press 1 to call this number. Press 1 to call this number. Press 1 to call this number. Press 1 to call";
        assert!(is_looping(looped, 2.6));
        assert_eq!(collapse_loops(looped, 2.6), once, "one copy, without the cut-off start of another");
        let two = "Press 1 to enter an extension. Press 2 to use the directory.";
        let looped = format!("{two} {two} {two}");
        assert!(is_looping(&looped, 4.9));
        assert_eq!(collapse_loops(&looped, 4.9), two);
        // A caller who says a thing twice at a speaking pace is heard twice.
        let twice = "I want to book a table. I want to book a table.";
        assert!(!is_looping(twice, 4.0));
        assert_eq!(collapse_loops(twice, 4.0), twice);
        // Quick short repeats are words, not a loop: "no, no" and "five five five".
        assert!(!is_looping("No no. Five five five.", 1.0));
    }

    #[test]
    fn a_transcript_that_copies_its_prompt_is_caught() {
        let prompt = "Luigi's. For how many people? Two people. Four.";
        assert!(echoes_prompt("For how many people? Two people.", prompt));
        assert!(!echoes_prompt("A table for two people please", prompt));
        assert!(!echoes_prompt("Two.", prompt));
    }

    #[test]
    fn a_lone_you_after_the_last_sentence_is_dropped() {
        assert_eq!(without_trailing_you("…to simulate the actions of a standard telephone. you").as_deref(), Some("…to simulate the actions of a standard telephone."));
        assert_eq!(without_trailing_you("you").as_deref(), Some(""));
        assert_eq!(without_trailing_you("I'll call you"), None, "said in a sentence");
        assert_eq!(without_trailing_you("Thank you."), None);
        assert_eq!(without_trailing_you("Fine. You"), None, "capitalized: said");
    }

    #[test]
    fn annotations_are_not_words() {
        for text in ["[BLANK_AUDIO]", "(music)", " ♪ ", "...", ""] {
            assert!(is_annotation(text), "{text:?}");
        }
        assert!(!is_annotation("Hello."));
    }
}
