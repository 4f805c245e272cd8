//! The speech engines on files: TTS → STT round trips, human recordings, every audio format,
//! silence, and bad files.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use crate::support::{models_dir, ringline, run, run_ok, sox, word_recall};

/// Recordings of human speech from Debian's pocketsphinx-testdata (installed by .ci/setup).
const HUMAN: &str = "/usr/share/pocketsphinx/test/data";

fn speak(text: &str, voice: &str, out: &Path) {
    run_ok(ringline().args(["speak", text, "--voice", voice, "-o"]).arg(out).env("RINGLINE_MODELS_DIR", models_dir()));
}

/// Piper samples its sound and timing afresh on every synthesis; with both noises at 0 a text
/// always gives the same audio, so what whisper hears does not change from run to run.
fn speak_repeatably(text: &str, voice: &str, out: &Path) {
    let flags = ["--noise-scale", "0", "--noise-w", "0"];
    run_ok(ringline().args(["speak", text, "--voice", voice]).args(flags).arg("-o").arg(out).env("RINGLINE_MODELS_DIR", models_dir()));
}

/// Transcribes files in one process; returns one text per file (in order).
fn transcribe(files: &[PathBuf], extra: &[&str]) -> Vec<String> {
    let stdout = run_ok(ringline().arg("transcribe").arg("--json").args(extra).args(files).env("RINGLINE_MODELS_DIR", models_dir()));
    stdout
        .lines()
        .map(|line| {
            let record: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            record["text"].as_str().unwrap().to_string()
        })
        .collect()
}

#[test]
fn piper_speech_transcribes_back_to_its_words() {
    let dir = tempfile::tempdir().unwrap();
    // Names tiny.en hears reliably: it takes a sampled "Sarah Johnson" for "Eric Johnson"
    // about one time in six.
    let sentences = [
        "My name is David Miller.",
        "Please call me back at seven o'clock tomorrow.",
        "My account number is four five six.",
        "Can you book a table for two people?",
    ];
    let files: Vec<PathBuf> = (0..sentences.len()).map(|i| dir.path().join(format!("{i}.wav"))).collect();
    for (sentence, file) in sentences.iter().zip(&files) {
        speak_repeatably(sentence, "en_US-joe-medium", file);
    }
    let heard = transcribe(&files, &[]);
    for (sentence, text) in sentences.iter().zip(&heard) {
        // One slip per sentence is tolerated (tiny.en once hears "account" as "count")…
        let recall = word_recall(sentence, text);
        assert!(recall >= 0.8, "said {sentence:?}, heard {text:?} ({recall:.2})");
    }
    // …but names, numbers and times must come through exactly.
    for (i, key) in [(0, "david miller"), (1, "seven o'clock"), (2, "four five six"), (3, "two people")] {
        assert!(word_recall(key, &heard[i]) >= 0.99, "{key:?} not in {:?}", heard[i]);
    }
    assert!(heard[3].trim_end().ends_with('?'), "a question should read as one: {:?}", heard[3]);
}

#[test]
fn recordings_of_human_speech_are_transcribed() {
    let librivox = Path::new(HUMAN).join("librivox");
    let files = vec![
        librivox.join("sense_and_sensibility_01_austen_64kb-0870.wav"),
        librivox.join("sense_and_sensibility_01_austen_64kb-0930.wav"),
        Path::new(HUMAN).join("cards/005.wav"),
    ];
    let heard = transcribe(&files, &[]);
    let expected = [
        "and mister john dashwood had then leisure to consider how much there might be prudently in his power to do for them",
        "he might even have been made amiable himself",
        "eight of spades four of clubs seven of hearts",
    ];
    for (want, got) in expected.iter().zip(&heard) {
        // tiny.en writes "Mr." and mishears "clubs" as "close" once: allow one word in ten.
        assert!(word_recall(want, got) >= 0.8, "expected {want:?}, heard {got:?}");
    }
    let raw = transcribe(&[Path::new(HUMAN).join("goforward.raw"), Path::new(HUMAN).join("something.raw")], &["--raw-rate", "16000"]);
    assert!(word_recall("go forward ten meters", &raw[0]) >= 0.99, "{:?}", raw[0]);
    assert!(word_recall("go somewhere and do something", &raw[1]) >= 0.99, "{:?}", raw[1]);
}

#[test]
fn every_supported_format_transcribes() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source.wav");
    let sentence = "Your appointment is on Friday afternoon.";
    speak(sentence, "en_US-joe-medium", &source);
    // (file name, sox output options)
    let variants: [(&str, &[&str]); 7] = [
        ("mulaw-8k.wav", &["-r", "8000", "-e", "u-law"]),
        ("alaw-8k.wav", &["-r", "8000", "-e", "a-law"]),
        ("pcm24-stereo-44k.wav", &["-r", "44100", "-b", "24", "-c", "2"]),
        ("float-48k.wav", &["-r", "48000", "-e", "floating-point", "-b", "32"]),
        ("pcm32-16k.wav", &["-r", "16000", "-b", "32"]),
        ("pcm8-11k.wav", &["-r", "11025", "-b", "8"]),
        ("flac-16k.flac", &["-r", "16000"]),
    ];
    let mut files = Vec::new();
    for (name, options) in variants {
        let out = dir.path().join(name);
        let mut args: Vec<&OsStr> = vec![source.as_os_str()];
        args.extend(options.iter().map(OsStr::new));
        args.push(out.as_os_str());
        sox(&args);
        files.push(out);
    }
    let raw = dir.path().join("speech.raw");
    sox(&[source.as_os_str(), OsStr::new("-r"), OsStr::new("16000"), OsStr::new("-e"), OsStr::new("signed"), OsStr::new("-b"), OsStr::new("16"), OsStr::new("-t"), OsStr::new("raw"), raw.as_os_str()]);
    let mut heard = transcribe(&files, &[]);
    heard.extend(transcribe(&[raw], &["--raw-rate", "16000"]));
    for (text, name) in heard.iter().zip(variants.iter().map(|v| v.0).chain(["speech.raw"])) {
        assert!(word_recall(sentence, text) >= 0.8, "{name}: heard {text:?}");
    }
}

#[test]
fn silence_and_line_noise_give_an_empty_transcript() {
    let dir = tempfile::tempdir().unwrap();
    let silent = dir.path().join("silent.wav");
    let hiss = dir.path().join("hiss.wav");
    let tiny = dir.path().join("tiny.wav");
    sox(&[OsStr::new("-n"), OsStr::new("-r"), OsStr::new("16000"), OsStr::new("-b"), OsStr::new("16"), silent.as_os_str(), OsStr::new("trim"), OsStr::new("0"), OsStr::new("3")]);
    sox(&[OsStr::new("-n"), OsStr::new("-r"), OsStr::new("16000"), OsStr::new("-b"), OsStr::new("16"), hiss.as_os_str(), OsStr::new("synth"), OsStr::new("3"), OsStr::new("whitenoise"), OsStr::new("vol"), OsStr::new("0.001")]);
    ringline::audio::Audio::new(vec![], 8_000).write_wav(&tiny).unwrap();
    let heard = transcribe(&[silent, hiss, tiny], &[]);
    assert_eq!(heard, vec!["", "", ""]);

    // A phone line's own noises, μ-law at 8 kHz and loud enough to pass the silence gate: hiss
    // at three levels, mains hum, rumble. Whisper must not write words into them.
    let mut noises = Vec::new();
    for (name, synth, volume) in [("pink1", "pinknoise", "0.003"), ("pink2", "pinknoise", "0.01"), ("pink3", "pinknoise", "0.03"), ("hum", "sine", "0.05"), ("rumble", "brownnoise", "0.05")] {
        let file = dir.path().join(format!("{name}.wav"));
        let mut args: Vec<&OsStr> = vec![OsStr::new("-n"), OsStr::new("-r"), OsStr::new("8000"), OsStr::new("-e"), OsStr::new("u-law"), file.as_os_str(), OsStr::new("synth"), OsStr::new("3"), OsStr::new(synth)];
        if synth == "sine" {
            args.push(OsStr::new("60"));
        }
        args.extend([OsStr::new("vol"), OsStr::new(volume)]);
        sox(&args);
        noises.push(file);
    }
    let heard = transcribe(&noises, &[]);
    assert!(heard.iter().all(String::is_empty), "words written into line noise: {heard:?}");
}

#[test]
fn bad_audio_files_are_named_errors() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.wav");
    std::fs::write(&empty, b"").unwrap();
    let text = dir.path().join("notes.wav");
    std::fs::write(&text, b"this is not audio").unwrap();
    for (file, reason) in [(&empty, "empty"), (&text, "not a WAV or FLAC"), (&dir.path().join("absent.wav"), "cannot read")] {
        let (ok, _, stderr) = run(ringline().arg("transcribe").arg(file).env("RINGLINE_MODELS_DIR", models_dir()));
        assert!(!ok, "{} should fail", file.display());
        assert!(stderr.contains(&file.display().to_string()) && stderr.contains(reason), "{stderr}");
    }
}

#[test]
fn json_output_has_segments_timings_and_speed() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a.wav");
    speak("Good morning. How can I help you today?", "en_US-joe-medium", &file);
    let stdout = run_ok(ringline().arg("transcribe").arg("--json").arg(&file).env("RINGLINE_MODELS_DIR", models_dir()));
    let record: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let segments = record["segments"].as_array().unwrap();
    assert!(!segments.is_empty());
    let audio_secs = record["audio_secs"].as_f64().unwrap();
    for segment in segments {
        let (start, end) = (segment["start_secs"].as_f64().unwrap(), segment["end_secs"].as_f64().unwrap());
        assert!(0.0 <= start && start < end && end <= audio_secs + 0.01, "{segment}");
    }
    assert!(record["real_time_factor"].as_f64().unwrap() > 0.0);
}

#[test]
fn a_long_recording_is_heard_a_stretch_at_a_time() {
    // An agent's channel as a phone call's recording keeps it: sentences many seconds apart
    // (the caller speaks in between, on the other channel), 89 s in all, 8 kHz μ-law. Heard
    // in one pass, this recording lost two of its four sentences ("Of course, what name…" and
    // the greeting, a made-up "You can't do that." in their place); a stretch at a time, none.
    let dir = tempfile::tempdir().unwrap();
    let said = [
        ("espeak", "Of course. Could I have your phone number, please?", "22"),
        ("en_US-joe-medium", "Your table for two is booked for seven o'clock tonight.", "22"),
        ("en_US-joe-medium", "Of course. What name should I put the booking under?", "28"),
        ("en_US-joe-medium", "Hello, thank you for calling Luigi's. How can I help you?", "5"),
    ];
    let to = |s: &str| std::ffi::OsString::from(s);
    let mut parts: Vec<PathBuf> = Vec::new();
    for (i, (voice, sentence, pause)) in said.iter().enumerate() {
        let speech = dir.path().join(format!("said-{i}.wav"));
        let mut speak = ringline();
        speak.args(["speak", sentence, "--voice", voice, "--rate", "16000"]);
        if *voice != "espeak" {
            speak.args(["--noise-scale", "0", "--noise-w", "0"]);
        }
        run_ok(speak.arg("-o").arg(&speech).env("RINGLINE_MODELS_DIR", models_dir()));
        let quiet = dir.path().join(format!("quiet-{i}.wav"));
        let args = [to("-n"), to("-r"), to("16000"), to("-c"), to("1"), to("-b"), to("16"), quiet.clone().into_os_string(), to("trim"), to("0"), to(pause)];
        sox(&args.iter().map(|s| s.as_os_str()).collect::<Vec<_>>());
        parts.push(speech);
        parts.push(quiet);
    }
    let wideband = dir.path().join("wideband.wav");
    let mut args: Vec<&OsStr> = parts.iter().map(|p| p.as_os_str()).collect();
    args.push(wideband.as_os_str());
    sox(&args);
    let recording = dir.path().join("recording.wav");
    sox(&[wideband.as_os_str(), OsStr::new("-r"), OsStr::new("8000"), OsStr::new("-e"), OsStr::new("u-law"), recording.as_os_str()]);

    let stdout = run_ok(ringline().arg("transcribe").arg("--json").arg(&recording).env("RINGLINE_MODELS_DIR", models_dir()));
    let record: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(record["stretches"], 4, "each sentence is a stretch of its own: {record}");
    let heard = record["text"].as_str().unwrap();
    for (_, sentence, _) in said {
        assert!(word_recall(sentence, heard) >= 0.8, "said {sentence:?}; heard {heard:?}");
    }
    // The segments keep the recording's times: the last one starts where the greeting does.
    let secs = |path: &PathBuf| {
        let audio = ringline::audio::decode_file(path).unwrap();
        audio.samples.len() as f64 / audio.rate as f64
    };
    let greeting_at: f64 = parts[..parts.len() - 2].iter().map(secs).sum();
    let last = record["segments"].as_array().unwrap().last().unwrap().clone();
    let (start, end) = (last["start_secs"].as_f64().unwrap(), last["end_secs"].as_f64().unwrap());
    assert!((start - greeting_at).abs() < 1.0 && end <= record["audio_secs"].as_f64().unwrap() + 0.01, "greeting at {greeting_at:.2} s: {record}");
    assert!(word_recall("how can i help you", last["text"].as_str().unwrap()) >= 0.99, "{record}");

    // One pass is still there for who wants it.
    let stdout = run_ok(ringline().args(["transcribe", "--json", "--whole"]).arg(&recording).env("RINGLINE_MODELS_DIR", models_dir()));
    let record: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(record["stretches"], 1, "{record}");
}

#[test]
fn speak_resamples_and_espeak_is_a_fallback_voice() {
    let dir = tempfile::tempdir().unwrap();
    let phone = dir.path().join("phone.wav");
    run_ok(ringline().args(["speak", "Thank you for calling.", "--rate", "8000", "-o"]).arg(&phone).env("RINGLINE_MODELS_DIR", models_dir()));
    assert_eq!(ringline::audio::decode_file(&phone).unwrap().rate, 8_000);
    let robot = dir.path().join("robot.wav");
    speak("Thank you for calling. Goodbye.", "espeak", &robot);
    let heard = transcribe(&[phone, robot], &[]);
    assert!(word_recall("thank you for calling", &heard[0]) >= 0.99, "{heard:?}");
    // espeak's formant voice is robotic; tiny.en still gets most of it.
    assert!(word_recall("thank you for calling goodbye", &heard[1]) >= 0.6, "{heard:?}");
    let (ok, _, stderr) = run(ringline().args(["speak", "  ", "-o"]).arg(dir.path().join("x.wav")));
    assert!(!ok && stderr.contains("nothing to speak"), "{stderr}");
}

#[test]
fn piper_settings_make_synthesis_repeatable_and_bad_ones_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let files = [dir.path().join("a.wav"), dir.path().join("b.wav")];
    for file in &files {
        speak_repeatably("The same words twice.", "en_US-joe-medium", file);
    }
    assert_eq!(std::fs::read(&files[0]).unwrap(), std::fs::read(&files[1]).unwrap(), "noise 0 should give the same audio");
    let slow = dir.path().join("slow.wav");
    run_ok(ringline().args(["speak", "The same words twice.", "--noise-scale", "0", "--noise-w", "0", "--length-scale", "1.5", "-o"]).arg(&slow).env("RINGLINE_MODELS_DIR", models_dir()));
    let (normal, slower) = (ringline::audio::decode_file(&files[0]).unwrap(), ringline::audio::decode_file(&slow).unwrap());
    assert!(slower.duration_secs() > normal.duration_secs() * 1.3, "length-scale 1.5 should speak slower");

    let out = dir.path().join("x.wav");
    let (ok, _, stderr) = run(ringline().args(["speak", "hello", "--noise-w", "3", "-o"]).arg(&out));
    assert!(!ok && stderr.contains("--noise-w 3") && stderr.contains("from 0 to 2"), "{stderr}");
    let (ok, _, stderr) = run(ringline().args(["speak", "hello", "--voice", "espeak", "--noise-scale", "0", "-o"]).arg(&out));
    assert!(!ok && stderr.contains("Piper voices only"), "{stderr}");
    assert!(!out.exists(), "a refused request writes nothing");
}
