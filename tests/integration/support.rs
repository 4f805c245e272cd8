//! Helpers shared by the integration tests: running the binary and comparing words.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn ringline() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ringline"))
}

/// Runs the binary, returning (success, stdout, stderr); panics in the output never pass.
pub fn run(command: &mut Command) -> (bool, String, String) {
    let Output { status, stdout, stderr } = command.output().expect("the ringline binary runs");
    let (stdout, stderr) = (String::from_utf8_lossy(&stdout).into_owned(), String::from_utf8_lossy(&stderr).into_owned());
    assert!(!stderr.contains("panicked"), "ringline panicked:\n{stderr}");
    (status.success(), stdout, stderr)
}

/// Runs the binary and expects success; returns stdout.
pub fn run_ok(command: &mut Command) -> String {
    let (ok, stdout, stderr) = run(command);
    assert!(ok, "ringline failed:\nstdout: {stdout}\nstderr: {stderr}");
    stdout
}

/// The store the suite's models were pulled into.
pub fn models_dir() -> PathBuf {
    std::env::var_os("RINGLINE_MODELS_DIR").map(PathBuf::from).unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("models/cache"))
}

/// Runs SoX with `args`, the same way every time.
///
/// SoX adds dither when a conversion lowers the bit depth (16-bit to 8-bit μ-law, say) and
/// seeds that noise afresh on every run, so a test handed whisper slightly different audio
/// each time and a borderline word could flip: the long recording's espeak sentence was heard
/// "and of course…" in most runs and "and course…" in some. `-D` adds no dither (a test that
/// wants noise adds it itself); `-R` fixes the seed of anything else SoX draws at random.
pub fn sox(args: &[&std::ffi::OsStr]) {
    let status = Command::new("sox").args(["-D", "-R"]).args(args).status().expect("sox is installed by .ci/setup");
    assert!(status.success(), "sox {args:?} failed");
}

/// What `ringline transcribe` hears in a recorded channel, one stretch of speech at a time: the
/// channel is cut at pauses of 0.6 s or more. Whole, a channel that is mostly silence between
/// sentences can lose its later sentences (the recognizer's one window ends early), which is
/// not what these checks are about.
pub fn transcribe_utterances(wav: &Path) -> String {
    let dir = tempfile::tempdir().unwrap();
    let pattern = dir.path().join("piece.wav");
    let to = |s: &'static str| std::ffi::OsStr::new(s);
    sox(&[wav.as_os_str(), pattern.as_os_str(), to("silence"), to("1"), to("0.05"), to("0.1%"), to("1"), to("0.6"), to("0.1%"), to(":"), to("newfile"), to(":"), to("restart")]);
    let mut pieces: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        // A piece under 0.1 s at 16 kHz is a click, not a word.
        .filter(|path| std::fs::metadata(path).map(|m| m.len() > 3_244).unwrap_or(false))
        .collect();
    pieces.sort();
    if pieces.is_empty() {
        return String::new();
    }
    let mut command = ringline();
    command.arg("transcribe").arg("--json").args(&pieces).env("RINGLINE_MODELS_DIR", models_dir());
    run_ok(&mut command)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter_map(|record| record["text"].as_str().map(str::to_string))
        .collect::<Vec<_>>()
        .join(" ")
}

const NUMBER_WORDS: &[&str] = &["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"];

/// Words for comparison: lowercase, no punctuation, number words as digits, digit runs joined
/// ("four five six" and "456" both become "456"), so formatting choices don't count as errors.
pub fn canonical_words(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut previous_was_digit = false;
    for word in ringline::text::normalized_words(text) {
        let word = match NUMBER_WORDS.iter().position(|n| *n == word) {
            Some(value) => value.to_string(),
            None => word,
        };
        let is_digits = word.chars().all(|c| c.is_ascii_digit());
        if is_digits && previous_was_digit && word.len() == 1 {
            out.last_mut().expect("previous word").push_str(&word);
        } else {
            out.push(word);
        }
        previous_was_digit = is_digits;
    }
    out
}

/// Fraction of the expected words found, in order, in what was heard.
pub fn word_recall(expected: &str, heard: &str) -> f64 {
    let expected = canonical_words(expected);
    let heard = canonical_words(heard);
    let mut position = 0;
    let mut found = 0;
    for word in &expected {
        if let Some(offset) = heard[position..].iter().position(|h| h == word) {
            found += 1;
            position += offset + 1;
        }
    }
    found as f64 / expected.len().max(1) as f64
}
