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

/// One sentence's IPA phonemes, with Piper's punctuation marks kept in place.
pub fn phonemize(text: &str, voice: &str) -> Result<Vec<String>, EspeakError> {
    with_espeak(voice, |_| {
        let text = CString::new(text.replace('\0', " ")).unwrap_or_default();
        let bytes = text.as_bytes();
        let start = text.as_ptr() as *const c_void;
        let mut cursor: *const c_void = start;
        let mut sentences = Vec::new();
        let mut current = String::new();
        while !cursor.is_null() {
            let before = cursor as usize - start as usize;
            // SAFETY: `cursor` points into `text`, NUL-terminated and alive for this loop;
            // espeak advances it past one clause or sets it to null at the end.
            let phonemes = unsafe { espeak_TextToPhonemes(&mut cursor, ESPEAK_CHARS_UTF8, ESPEAK_PHONEMES_IPA) };
            let after = if cursor.is_null() { bytes.len() } else { cursor as usize - start as usize };
            if !phonemes.is_null() {
                // SAFETY: espeak returns a NUL-terminated string valid until the next call.
                current.push_str(&unsafe { CStr::from_ptr(phonemes) }.to_string_lossy());
            }
            let consumed = String::from_utf8_lossy(&bytes[before..after.min(bytes.len())]);
            match consumed.trim_end().chars().last() {
                Some(p @ ('.' | '?' | '!')) => {
                    current.push(p);
                    sentences.push(std::mem::take(&mut current));
                }
                Some(p @ (',' | ';' | ':')) => {
                    current.push(p);
                    current.push(' ');
                }
                _ => current.push(' '),
            }
        }
        let rest = current.trim();
        if !rest.is_empty() {
            sentences.push(rest.to_string());
        }
        Ok(sentences.into_iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
    })
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
        assert!(sentences[0].contains(", ") && sentences[0].ends_with('.'), "{sentences:?}");
        assert!(sentences[1].ends_with('?'), "{sentences:?}");
        assert!(sentences[0].contains('h'), "{sentences:?}");
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
