//! `ringline bench stt`: every installed speech model side by side — word errors on the dev
//! set (`eval/stt/devset.yaml`) as recorded and through a phone line, digit strings, and the
//! time to transcribe 2, 5 and 10 s utterances, and the 2 s one primed as a call primes it.
//! Figures, not tests.

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
    clips: Vec<Clip>,
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
    wideband: Vec<f32>,
    phone: Vec<f32>,
}

/// The phone line a call's audio crosses: 8 kHz, G.711 μ-law, then back up to the models' rate.
pub fn through_phone_line(audio: &Audio) -> anyhow::Result<Vec<f32>> {
    let narrow = audio.to_rate(8_000)?;
    let coded = crate::audio::g711::decode_mulaw(&crate::audio::g711::encode_mulaw(&narrow.samples));
    Ok(Audio::new(coded, 8_000).to_rate(MODEL_RATE)?.samples)
}

fn load_devset(path: &Path) -> anyhow::Result<Vec<Heard>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading the dev set {}", path.display()))?;
    let set: DevSet = serde_yaml::from_str(&text).with_context(|| format!("{}", path.display()))?;
    let root = if set.root.is_absolute() { set.root.clone() } else { path.parent().unwrap_or(Path::new(".")).join(&set.root) };
    let mut clips = Vec::new();
    for clip in set.clips {
        let file = root.join(&clip.audio);
        let audio = if file.extension().is_some_and(|e| e == "raw") {
            let bytes = std::fs::read(&file).with_context(|| format!("{}: install the dev set's recordings with `bash .ci/setup`", file.display()))?;
            crate::audio::decode_raw_pcm16(&bytes, MODEL_RATE, 1)
        } else {
            crate::audio::decode_file(&file).map_err(|e| anyhow::anyhow!("{}: {e}; install the dev set's recordings with `bash .ci/setup`", file.display()))?
        };
        let wideband = audio.to_rate(MODEL_RATE)?;
        clips.push(Heard {
            held_out: clip.split == "test",
            digits: clip.kind.as_deref() == Some("digits"),
            phone: through_phone_line(&wideband)?,
            wideband: wideband.samples,
            text: clip.text,
        });
    }
    Ok(clips)
}

/// Digit strings read out by the default voice, through the phone line: synthetic speech, but
/// the path a caller's order or phone number takes to a slot. A fixed sequence, so every run
/// and every model hears the same strings.
fn synthetic_digits(voice: &dyn crate::tts::TextToSpeech) -> anyhow::Result<Vec<(String, Vec<f32>)>> {
    let mut state: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut out = Vec::new();
    for i in 0..20 {
        let len = 4 + (i % 7);
        let digits: String = (0..len).map(|_| char::from(b'0' + (next() % 10) as u8)).collect();
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
        let heard = stt.transcribe(if phone { &clip.phone } else { &clip.wideband })?;
        let (e, n) = crate::eval::word_errors(&clip.text, &heard.text);
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

pub fn run(runs: usize, models: Vec<String>, devset: &Path) -> anyhow::Result<()> {
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
    let clips = load_devset(devset)?;
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
        let primed = digits_right(&stt, &synthetic, crate::flow::DIGITS_PRIME)?;
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
    }
    println!();
    println!("ms: median time to transcribe an utterance of that length; 2 s pr: the 2 s one primed with a flow's {}-character prompt, as a call's final transcript is.", FLOW_PROMPT.len());
    println!("WER: word errors over the references' words (numbers and number words alike); wide: as recorded; phone: 8 kHz μ-law and back.");
    println!("held: the held-out clips (the final figure; nothing is tuned on them). digits: strings read by the flows' digit parser, exactly right, on the phone line;");
    println!("synth: the default voice reading digit strings (synthetic speech); primed: the same, primed as a flow waiting for digits primes the recognizer.");
    Ok(())
}
