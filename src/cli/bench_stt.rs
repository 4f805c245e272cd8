//! `ringline bench stt`: every installed speech model side by side — word errors on the dev
//! set (`eval/stt/devset.yaml`) as recorded and through a phone line, and on recordings made
//! for the phone (`eval/stt/phone.yaml`); digit strings, synthetic and spliced from recorded
//! digits; the time to transcribe 2, 5 and 10 s utterances, and the 2 s one primed as a call
//! primes it. Figures, not tests.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;

use crate::audio::{Audio, MODEL_RATE};
use crate::models::ModelStore;
use crate::stt::whisper::WhisperStt;
use crate::stt::SpeechToText;

/// A prompt shaped like the one a flow's call primes Whisper with (its vocabulary, global
/// phrases and knowledge questions, then the question's examples), near the 450-character bound.
const FLOW_PROMPT: &str = "Luigi's Trattoria. Sarah. Do you have a vegetarian menu? Is there parking? What are \
    your opening hours? Can I bring a dog? Hold on. One more thing. Wait, sorry. Speak to a person. Cancel my \
    booking. Change the time. Goodbye. Thank you. For two people. For four. A table for six. Tonight. Tomorrow \
    evening. Friday. At seven. Half past eight. Seven thirty. The name is Johnson. My name is John Smith. Under \
    the name Garcia. Yes. No.";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DevSet {
    /// Where the clips' paths start (absolute, or relative to the dev set's file).
    root: PathBuf,
    /// What the clips were recorded as.
    #[serde(default)]
    line: Line,
    /// A folder (under `root`) of single digits, `0.wav` … `9.wav`, spliced into digit strings.
    #[serde(default)]
    digits: Option<PathBuf>,
    clips: Vec<Clip>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Line {
    /// Recorded wideband: heard as recorded (a browser call) and through a phone line.
    #[default]
    Wideband,
    /// Recorded for the phone (8 kHz): heard through the line only.
    Phone,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Clip {
    audio: PathBuf,
    text: String,
    /// `dev` (look at it freely) or `test` (held out: the final figure).
    split: String,
    /// `digits`: also scored as a digit string.
    #[serde(default)]
    kind: Option<String>,
}

/// A clip as each line type delivers it to the recognizer (16 kHz).
struct Heard {
    text: String,
    held_out: bool,
    digits: bool,
    /// `None` for a recording made for the phone.
    wideband: Option<Vec<f32>>,
    phone: Vec<f32>,
}

/// A dev set read in: its clips, and the digit strings spliced from its recorded digits.
struct Loaded {
    clips: Vec<Heard>,
    spliced: Vec<(String, Vec<f32>)>,
}

/// The phone line a call's audio crosses: 8 kHz, G.711 μ-law, then back up to the models' rate.
pub fn through_phone_line(audio: &Audio) -> anyhow::Result<Vec<f32>> {
    let narrow = audio.to_rate(8_000)?;
    let coded = crate::audio::g711::decode_mulaw(&crate::audio::g711::encode_mulaw(&narrow.samples));
    Ok(Audio::new(coded, 8_000).to_rate(MODEL_RATE)?.samples)
}

fn read_recording(file: &Path) -> anyhow::Result<Audio> {
    if file.extension().is_some_and(|e| e == "raw") {
        let bytes = std::fs::read(file).with_context(|| format!("{}: install the dev set's recordings with `bash .ci/setup`", file.display()))?;
        Ok(crate::audio::decode_raw_pcm16(&bytes, MODEL_RATE, 1))
    } else {
        crate::audio::decode_file(file).map_err(|e| anyhow::anyhow!("{}: {e}; install the dev set's recordings with `bash .ci/setup`", file.display()))
    }
}

fn load_devset(path: &Path) -> anyhow::Result<Loaded> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading the dev set {}", path.display()))?;
    let set: DevSet = serde_yaml::from_str(&text).with_context(|| format!("{}", path.display()))?;
    let root = if set.root.is_absolute() { set.root.clone() } else { path.parent().unwrap_or(Path::new(".")).join(&set.root) };
    let mut clips = Vec::new();
    for clip in set.clips {
        let audio = read_recording(&root.join(&clip.audio))?;
        let (wideband, phone) = match set.line {
            Line::Wideband => {
                let wideband = audio.to_rate(MODEL_RATE)?;
                (Some(wideband.samples.clone()), through_phone_line(&wideband)?)
            }
            Line::Phone => (None, through_phone_line(&audio)?),
        };
        clips.push(Heard { held_out: clip.split == "test", digits: clip.kind.as_deref() == Some("digits"), wideband, phone, text: clip.text });
    }
    let spliced = match &set.digits {
        Some(folder) => {
            let digits = (0..10).map(|d| read_recording(&root.join(folder).join(format!("{d}.wav")))).collect::<anyhow::Result<Vec<_>>>()?;
            fixed_digit_strings().into_iter().map(|string| Ok((string.clone(), through_phone_line(&splice(&digits, &string))?))).collect::<anyhow::Result<_>>()?
        }
        None => Vec::new(),
    };
    Ok(Loaded { clips, spliced })
}

/// The recorded digits of `string` one after another, each trimmed of its silence, 120 ms
/// apart, with 200 ms of silence before and after: a number read out at a caller's pace.
fn splice(digits: &[Audio], string: &str) -> Audio {
    let rate = digits[0].rate;
    let ms = |n: u32| (rate * n / 1000) as usize;
    let mut samples = vec![0.0; ms(200)];
    for (i, d) in string.bytes().map(|b| usize::from(b - b'0')).enumerate() {
        if i > 0 {
            samples.extend(std::iter::repeat_n(0.0, ms(120)));
        }
        samples.extend_from_slice(trim_silence(&digits[d].samples, ms(30)));
    }
    samples.extend(std::iter::repeat_n(0.0, ms(200)));
    Audio::new(samples, rate)
}

/// `samples` from the first to the last one above a twentieth of the peak, with `margin` kept
/// either side (a recording of silence alone, as it is).
fn trim_silence(samples: &[f32], margin: usize) -> &[f32] {
    let peak = samples.iter().fold(0.0f32, |m, s| m.max(s.abs()));
    crate::audio::trim_to_sound(samples, peak / 20.0, margin).unwrap_or(samples)
}

/// Twenty digit strings of 4 to 10 digits: a fixed sequence, so every run, model and voice
/// reads the same numbers.
fn fixed_digit_strings() -> Vec<String> {
    let mut state: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..20).map(|i| (0..4 + (i % 7)).map(|_| char::from(b'0' + (next() % 10) as u8)).collect()).collect()
}

/// The fixed digit strings read out by the default voice, through the phone line: synthetic
/// speech, but the path a caller's order or phone number takes to a slot.
fn synthetic_digits(voice: &dyn crate::tts::TextToSpeech) -> anyhow::Result<Vec<(String, Vec<f32>)>> {
    let mut out = Vec::new();
    for digits in fixed_digit_strings() {
        let spoken: Vec<String> = digits.chars().map(|c| c.to_string()).collect();
        let audio = voice.speak_all(&format!("It's {}.", spoken.join(" ")))?.to_rate(MODEL_RATE)?;
        out.push((digits, through_phone_line(&audio)?));
    }
    Ok(out)
}

/// Word error rate (%) of `stt` over `clips`, on the phone line or wideband.
fn wer(stt: &WhisperStt, clips: &[&Heard], phone: bool) -> anyhow::Result<(f64, usize)> {
    let (mut errors, mut words) = (0, 0);
    for clip in clips {
        let audio = if phone { &clip.phone } else { clip.wideband.as_ref().unwrap_or(&clip.phone) };
        let heard = stt.transcribe(audio)?;
        let (e, n) = crate::eval::word_errors(&clip.text, &heard.text);
        if e > 0 {
            tracing::debug!(errors = e, reference = %clip.text, heard = %heard.text, "clip misheard");
        }
        errors += e;
        words += n;
    }
    Ok((100.0 * errors as f64 / words.max(1) as f64, words))
}

/// How many digit strings `stt` gets exactly right, read by the flows' digit parser; primed
/// with `prompt` as a flow waiting for digits primes it (or not, when empty).
fn digits_right(stt: &WhisperStt, strings: &[(String, &[f32])], prompt: &str) -> anyhow::Result<usize> {
    let mut right = 0;
    let go_on = std::sync::atomic::AtomicBool::new(false);
    for (digits, audio) in strings {
        let heard = stt.transcribe_primed(audio, &go_on, prompt)?;
        if crate::flow::parse::digits(&heard.text) == crate::flow::parse::digits(digits) {
            right += 1;
        } else {
            tracing::debug!(expected = %digits, heard = %heard.text, "digit string misheard");
        }
    }
    Ok(right)
}

pub fn run(runs: usize, models: Vec<String>, devset: &Path, phone_set: &Path) -> anyhow::Result<()> {
    let store = ModelStore::from_env()?;
    let threads = super::audio_cmds::threads();
    println!("{}", crate::telemetry::machine_line());
    let models: Vec<String> = if models.is_empty() {
        store.manifest.models.iter().filter(|m| m.role == "stt" && store.require(&m.name).is_ok()).map(|m| m.name.clone()).collect()
    } else {
        models
    };
    if models.is_empty() {
        anyhow::bail!("no speech model is installed: run `ringline models pull`");
    }
    let clips = load_devset(devset)?.clips;
    let phone = load_devset(phone_set)?;
    let voice = crate::tts::load_voice(&store, crate::tts::DEFAULT_VOICE, threads)?;
    let synthetic = synthetic_digits(voice.as_ref())?;
    let mut utterances = Vec::new();
    for (target, text) in super::bench::UTTERANCES {
        let mut audio = voice.speak_all(text)?.to_rate(MODEL_RATE)?;
        audio.samples.resize(audio.samples.len().max((*target * MODEL_RATE as f32) as usize), 0.0);
        utterances.push((*target, audio.samples));
    }
    let (dev, test): (Vec<&Heard>, Vec<&Heard>) = clips.iter().partition(|c| !c.held_out);
    let real_digits: Vec<(String, &[f32])> = clips.iter().filter(|c| c.digits).map(|c| (c.text.clone(), c.phone.as_slice())).collect();
    let synthetic: Vec<(String, &[f32])> = synthetic.iter().map(|(d, a)| (d.clone(), a.as_slice())).collect();
    let words = |set: &[&Heard]| set.iter().map(|c| crate::eval::word_errors(&c.text, "").1).sum::<usize>();
    let (phone_dev, phone_test): (Vec<&Heard>, Vec<&Heard>) = phone.clips.iter().partition(|c| !c.held_out);
    let spliced: Vec<(String, &[f32])> = phone.spliced.iter().map(|(d, a)| (d.clone(), a.as_slice())).collect();
    let mut phone_rows = Vec::new();
    // As a flow waiting for digits writes its prime: a sentence.
    let digits_prompt = format!("{}.", crate::flow::DIGITS_PRIME);
    println!(
        "dev set {}: {} clips ({} words) to look at, {} held out ({} words); {} real and {} synthetic digit strings; utterance mode, {threads} threads, {runs} runs per length",
        devset.display(),
        dev.len(),
        words(&dev),
        test.len(),
        words(&test),
        real_digits.len(),
        synthetic.len()
    );
    println!();
    println!(
        "{:<22} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8}",
        "model", "2 s ms", "5 s ms", "10 s ms", "2 s pr", "WER wide", "WER phone", "held wide", "held phone", "digits", "synth", "primed"
    );
    for model in &models {
        let stt = match WhisperStt::load(&store, model, threads, None) {
            Ok(stt) => stt.without_timestamps(),
            Err(error) => {
                println!("{model:<22} cannot load: {error}");
                continue;
            }
        };
        let median = |mut times: Vec<Duration>| {
            times.sort();
            times[times.len() / 2].as_secs_f64() * 1000.0
        };
        let mut latency = Vec::new();
        for (_, samples) in &utterances {
            stt.transcribe(samples)?;
            latency.push(median((0..runs).map(|_| stt.transcribe(samples).map(|t| t.processing)).collect::<Result<_, _>>()?));
        }
        let stop = AtomicBool::new(false);
        let primed_2s = || stt.transcribe_primed(&utterances[0].1, &stop, FLOW_PROMPT).map(|t| t.processing);
        primed_2s()?;
        latency.push(median((0..runs).map(|_| primed_2s()).collect::<Result<_, _>>()?));
        let (dev_wide, _) = wer(&stt, &dev, false)?;
        let (dev_phone, _) = wer(&stt, &dev, true)?;
        let (test_wide, _) = wer(&stt, &test, false)?;
        let (test_phone, _) = wer(&stt, &test, true)?;
        let real = digits_right(&stt, &real_digits, "")?;
        let synth = digits_right(&stt, &synthetic, "")?;
        let primed = digits_right(&stt, &synthetic, &digits_prompt)?;
        println!(
            "{model:<22} {:>8.0} {:>8.0} {:>8.0} {:>8.0} {:>8.1}% {:>8.1}% {:>8.1}% {:>9.1}% {:>5}/{:<2} {:>5}/{:<2} {:>5}/{:<2}",
            latency[0],
            latency[1],
            latency[2],
            latency[3],
            dev_wide,
            dev_phone,
            test_wide,
            test_phone,
            real,
            real_digits.len(),
            synth,
            synthetic.len(),
            primed,
            synthetic.len()
        );
        let (dev, _) = wer(&stt, &phone_dev, true)?;
        let (test, _) = wer(&stt, &phone_test, true)?;
        let real = digits_right(&stt, &spliced, "")?;
        let primed = digits_right(&stt, &spliced, &digits_prompt)?;
        phone_rows.push(format!("{model:<22} {dev:>8.1}% {test:>9.1}% {real:>5}/{:<2} {primed:>5}/{:<2}", spliced.len(), spliced.len()));
    }
    println!();
    println!(
        "recorded for the phone, {}: {} clips ({} words) to look at, {} held out ({} words); {} digit strings spliced from its recorded digits",
        phone_set.display(),
        phone_dev.len(),
        words(&phone_dev),
        phone_test.len(),
        words(&phone_test),
        spliced.len()
    );
    println!("{:<22} {:>9} {:>10} {:>8} {:>8}", "model", "WER phone", "held phone", "spliced", "primed");
    for row in phone_rows {
        println!("{row}");
    }
    println!();
    println!("ms: median time to transcribe an utterance of that length; 2 s pr: the 2 s one primed with a flow's {}-character prompt, as a call's final transcript is.", FLOW_PROMPT.len());
    println!("WER: word errors over the references' words (numbers and number words alike, contractions spelled out, a compound one word or two); wide: as recorded; phone: 8 kHz μ-law and back.");
    println!("held: the held-out clips (the final figure; nothing is tuned on them). digits: strings read by the flows' digit parser, exactly right, on the phone line;");
    println!("synth: the default voice reading digit strings (synthetic speech); primed: the same, primed as a flow waiting for digits primes the recognizer.");
    println!("recorded for the phone: 8 kHz recordings, μ-law coded as the line codes them; spliced: the same digit strings read by splicing the recorded digits.");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dev_sets_load_with_their_recordings() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("eval/stt");
        let wide = load_devset(&root.join("devset.yaml")).expect("devset.yaml loads (its recordings come with `bash .ci/setup`)");
        assert!(wide.clips.iter().all(|c| c.wideband.is_some()));
        assert!(wide.spliced.is_empty());
        let phone = load_devset(&root.join("phone.yaml")).expect("phone.yaml loads (its recordings come with `bash .ci/setup`)");
        assert!(phone.clips.len() > 100, "{} clips", phone.clips.len());
        assert!(phone.clips.iter().any(|c| c.held_out) && phone.clips.iter().any(|c| !c.held_out));
        assert!(phone.clips.iter().all(|c| c.wideband.is_none() && !c.phone.is_empty()));
        assert_eq!(phone.spliced.len(), 20);
        for (digits, audio) in &phone.spliced {
            // Each recorded digit is under a second with its silence; trimmed, well under.
            let secs = audio.len() as f64 / MODEL_RATE as f64;
            assert!(secs > 0.2 * digits.len() as f64 && secs < 0.4 + 0.8 * digits.len() as f64, "{digits}: {secs} s");
        }
    }

    #[test]
    fn spliced_digits_keep_the_sound_and_drop_the_silence_around_it() {
        let rate = 8_000;
        let tone = |n: usize, level: f32| -> Vec<f32> { (0..n).map(|i| if i % 2 == 0 { level } else { -level }).collect() };
        let mut one = vec![0.0; 2_000];
        one.extend(tone(800, 0.5));
        one.extend(vec![0.0; 3_000]);
        let trimmed = trim_silence(&one, 240);
        assert_eq!(trimmed.len(), 800 + 2 * 240, "the sound and the margin either side");
        assert!(trim_silence(&[0.0; 100], 10).len() == 100, "silence alone is kept as it is");
        let digits: Vec<Audio> = (0..10).map(|_| Audio::new(one.clone(), rate)).collect();
        let spliced = splice(&digits, "407");
        // 200 ms lead and tail, two 120 ms gaps, three trimmed digits (30 ms margins).
        assert_eq!(spliced.samples.len(), 2 * 1_600 + 2 * 960 + 3 * trimmed.len());
        assert_eq!(spliced.rate, rate);
    }
}
