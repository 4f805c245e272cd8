//! libespeak-ng through a small FFI: IPA phonemes for Piper, and a fallback voice.
//!
//! espeak-ng keeps global state (voice, callback, buffers), so every use goes through one
//! process-wide lock. Debian's 1.51 lacks `espeak_TextToPhonemesWithTerminator`, so clause
//! punctuation — which Piper's models were trained to see — is recovered from the text each
//! call consumed.

use std::ffi::{c_char, c_int, c_short, c_uint, c_void, CStr, CString};
use std::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum EspeakError {
    #[error("espeak-ng failed to initialise (is the espeak-ng-data package installed? `apt-get install espeak-ng`)")]
    Init,
    #[error("espeak-ng has no voice `{0}` (try `espeak-ng --voices`)")]
    Voice(String),
    #[error("espeak-ng synthesis failed with code {0}")]
    Synth(c_int),
}

const AUDIO_OUTPUT_SYNCHRONOUS: c_int = 2;
const ESPEAK_CHARS_UTF8: c_int = 1;
const ESPEAK_PHONEMES_IPA: c_int = 0x02;
const POS_CHARACTER: c_int = 1;
const ESPEAK_RATE: c_int = 1;
const DEFAULT_WPM: c_int = 175;

#[link(name = "espeak-ng")]
extern "C" {
    fn espeak_Initialize(output: c_int, buflength: c_int, path: *const c_char, options: c_int) -> c_int;
    fn espeak_SetVoiceByName(name: *const c_char) -> c_int;
    fn espeak_TextToPhonemes(textptr: *mut *const c_void, textmode: c_int, phonememode: c_int) -> *const c_char;
    fn espeak_SetSynthCallback(callback: extern "C" fn(*mut c_short, c_int, *mut c_void) -> c_int);
    fn espeak_SetParameter(parameter: c_int, value: c_int, relative: c_int) -> c_int;
    fn espeak_Synth(
        text: *const c_void,
        size: usize,
        position: c_uint,
        position_type: c_int,
        end_position: c_uint,
        flags: c_uint,
        unique_identifier: *mut c_uint,
        user_data: *mut c_void,
    ) -> c_int;
}

/// The lock around espeak's global state; holds the output sample rate once initialised.
static ESPEAK: Mutex<Option<u32>> = Mutex::new(None);
/// Where the synthesis callback appends samples; only touched while `ESPEAK` is held.
static SYNTH_BUFFER: Mutex<Vec<i16>> = Mutex::new(Vec::new());

extern "C" fn collect_samples(wav: *mut c_short, count: c_int, _events: *mut c_void) -> c_int {
    if !wav.is_null() && count > 0 {
        // SAFETY: espeak passes a buffer of `count` samples valid for this call.
        let samples = unsafe { std::slice::from_raw_parts(wav, count as usize) };
        SYNTH_BUFFER.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(samples);
    }
    0
}

fn with_espeak<T>(voice: &str, f: impl FnOnce(u32) -> Result<T, EspeakError>) -> Result<T, EspeakError> {
    let mut guard = ESPEAK.lock().unwrap_or_else(|e| e.into_inner());
    let rate = match *guard {
        Some(rate) => rate,
        None => {
            // SAFETY: called once, under the lock; a null path selects the packaged data.
            let rate = unsafe { espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, std::ptr::null(), 0) };
            if rate <= 0 {
                return Err(EspeakError::Init);
            }
            // SAFETY: the callback is a plain function valid for the process lifetime.
            unsafe { espeak_SetSynthCallback(collect_samples) };
            *guard = Some(rate as u32);
            rate as u32
        }
    };
    let name = CString::new(voice).map_err(|_| EspeakError::Voice(voice.to_string()))?;
    // SAFETY: espeak is initialised and we hold its lock.
    if unsafe { espeak_SetVoiceByName(name.as_ptr()) } != 0 {
        return Err(EspeakError::Voice(voice.to_string()));
    }
    f(rate)
}

/// IPA phonemes for `text`, one string per sentence, with Piper's punctuation marks in place.
///
/// Sentences and clauses are split here (espeak 1.51 phonemizes a whole sentence per call and
/// drops its commas), then each clause is phonemized and its punctuation appended.
pub fn phonemize(text: &str, voice: &str) -> Result<Vec<String>, EspeakError> {
    with_espeak(voice, |_| {
        let mut sentences = Vec::new();
        for sentence in crate::text::split_sentences(text) {
            let mut phonemes = String::new();
            for (clause, punctuation) in split_clauses(&sentence) {
                let clause_phonemes = clause_to_phonemes(clause);
                if clause_phonemes.is_empty() {
                    continue;
                }
                if !phonemes.is_empty() && !phonemes.ends_with(' ') {
                    phonemes.push(' ');
                }
                phonemes.push_str(&clause_phonemes);
                if let Some(p) = punctuation {
                    phonemes.push(p);
                }
            }
            let phonemes = phonemes.trim().to_string();
            if !phonemes.is_empty() {
                sentences.push(phonemes);
            }
        }
        Ok(sentences)
    })
}

/// Clauses of one sentence with the punctuation that ends each (`, ; : . ? !`), if any.
/// A comma between digits ("3,000") does not split.
fn split_clauses(sentence: &str) -> Vec<(&str, Option<char>)> {
    let mut clauses = Vec::new();
    let mut start = 0;
    let chars: Vec<(usize, char)> = sentence.char_indices().collect();
    for (i, &(at, c)) in chars.iter().enumerate() {
        let between_digits = i > 0
            && chars[i - 1].1.is_ascii_digit()
            && chars.get(i + 1).is_some_and(|(_, n)| n.is_ascii_digit());
        let ends_sentence = matches!(c, '.' | '?' | '!') && i + 1 == chars.len();
        if (matches!(c, ',' | ';' | ':') && !between_digits) || ends_sentence {
            clauses.push((&sentence[start..at], Some(c)));
            start = at + c.len_utf8();
        }
    }
    if start < sentence.len() {
        clauses.push((&sentence[start..], None));
    }
    clauses
}

/// Runs espeak's phonemizer over one clause (it may still answer in several pieces).
/// Must be called with the espeak lock held.
fn clause_to_phonemes(clause: &str) -> String {
    let clause = clause.trim();
    if clause.is_empty() {
        return String::new();
    }
    let text = CString::new(clause.replace('\0', " ")).unwrap_or_default();
    let mut cursor: *const c_void = text.as_ptr() as *const c_void;
    let mut out = String::new();
    while !cursor.is_null() {
        // SAFETY: `cursor` points into `text`, NUL-terminated and alive for this loop; espeak
        // advances it past what it consumed or sets it to null at the end. The caller holds
        // the espeak lock.
        let phonemes = unsafe { espeak_TextToPhonemes(&mut cursor, ESPEAK_CHARS_UTF8, ESPEAK_PHONEMES_IPA) };
        if phonemes.is_null() {
            break;
        }
        // SAFETY: espeak returns a NUL-terminated string valid until its next call.
        let piece = unsafe { CStr::from_ptr(phonemes) }.to_string_lossy();
        if !out.is_empty() && !piece.is_empty() {
            out.push(' ');
        }
        out.push_str(piece.trim());
    }
    out
}

/// Speaks `text` with espeak's own formant voice; returns 16-bit samples and their rate.
pub fn synthesize(text: &str, voice: &str, words_per_minute: Option<u32>) -> Result<(Vec<i16>, u32), EspeakError> {
    with_espeak(voice, |rate| {
        SYNTH_BUFFER.lock().unwrap_or_else(|e| e.into_inner()).clear();
        if let Some(wpm) = words_per_minute {
            // SAFETY: initialised, under the lock.
            unsafe { espeak_SetParameter(ESPEAK_RATE, wpm as c_int, 0) };
        }
        let text = CString::new(text.replace('\0', " ")).unwrap_or_default();
        // SAFETY: text is NUL-terminated and outlives the synchronous call.
        let code = unsafe {
            espeak_Synth(
                text.as_ptr() as *const c_void,
                text.as_bytes().len() + 1,
                0,
                POS_CHARACTER,
                0,
                ESPEAK_CHARS_UTF8 as c_uint,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        if words_per_minute.is_some() {
            // SAFETY: as above; restore espeak's default rate for the next caller.
            unsafe { espeak_SetParameter(ESPEAK_RATE, DEFAULT_WPM, 0) };
        }
        if code != 0 {
            return Err(EspeakError::Synth(code));
        }
        Ok((std::mem::take(&mut *SYNTH_BUFFER.lock().unwrap_or_else(|e| e.into_inner())), rate))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_keep_their_punctuation() {
        let sentences = phonemize("Hello there, my friend. How are you?", "en-us").unwrap();
        assert_eq!(sentences.len(), 2, "{sentences:?}");
        assert!(sentences[0].contains(", ") || sentences[0].contains(','), "{sentences:?}");
        assert!(sentences[0].ends_with('.'), "{sentences:?}");
        assert!(sentences[1].ends_with('?'), "{sentences:?}");
        assert!(sentences[0].contains('h'), "{sentences:?}");
    }

    #[test]
    fn clauses_split_at_punctuation_but_not_inside_numbers() {
        assert_eq!(
            split_clauses("It costs 3,000 dollars, or less: fine."),
            vec![("It costs 3,000 dollars", Some(',')), (" or less", Some(':')), (" fine", Some('.'))]
        );
        assert_eq!(split_clauses("no punctuation"), vec![("no punctuation", None)]);
    }

    #[test]
    fn espeak_speaks() {
        let (samples, rate) = synthesize("testing one two three", "en-us", None).unwrap();
        assert_eq!(rate, 22_050);
        assert!(samples.len() > rate as usize / 2, "only {} samples", samples.len());
        assert!(samples.iter().any(|s| s.abs() > 1000));
    }

    #[test]
    fn an_unknown_voice_is_an_error() {
        let error = phonemize("hi", "xx-nonexistent").unwrap_err().to_string();
        assert!(error.contains("xx-nonexistent"), "{error}");
    }
}

/// espeak-ng's own voice as a [`super::TextToSpeech`]: robotic, but needs no model files.
pub struct EspeakVoice {
    voice: String,
}

impl EspeakVoice {
    pub fn new(voice: &str) -> Self {
        EspeakVoice { voice: voice.to_string() }
    }
}

impl super::TextToSpeech for EspeakVoice {
    fn speak(&self, text: &str, on_sentence: &mut dyn FnMut(super::SentenceAudio)) -> Result<(), super::TtsError> {
        for sentence in crate::text::split_sentences(text) {
            let (samples, rate) = synthesize(&sentence, &self.voice, None)?;
            let audio = crate::audio::Audio::new(samples.into_iter().map(crate::audio::i16_to_f32).collect(), rate);
            on_sentence(super::SentenceAudio { text: sentence, audio });
        }
        Ok(())
    }
}
