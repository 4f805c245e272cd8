//! `ringline demo`: pull the default models, then prove them with a voice round trip.
//!
//! The assistant's lines are spoken by Piper, resampled to the telephone's 8 kHz μ-law and
//! back (what a phone call does to them), transcribed by Whisper and compared word by word.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;

use super::audio_cmds::load_default_engines;
use super::models_cmd;
use crate::audio::{g711, Audio, MODEL_RATE};
use crate::models::ModelStore;
use crate::stt::SpeechToText;
use crate::text::normalized_words;

const LINES: &[&str] = &[
    "Hello, this is Ringline calling about your order.",
    "Your table for two is booked for seven o'clock tonight.",
    "Could you confirm your phone number, please?",
];

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where to write the call's audio.
    #[arg(long, default_value = "out/demo.wav")]
    pub output: PathBuf,
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let store = ModelStore::from_env()?;
    models_cmd::pull(&store, &[])?;
    let (voice, stt) = load_default_engines(&store)?;
    let mut call_audio = Vec::new();
    let mut matched = 0;
    let mut total = 0;
    for line in LINES {
        let started = Instant::now();
        let spoken = voice.speak_all(line)?;
        let tts_secs = started.elapsed().as_secs_f64();
        // Through the telephone network: 8 kHz G.711 μ-law and back.
        let phone = spoken.to_rate(8_000)?;
        let phone = Audio::new(g711::decode_mulaw(&g711::encode_mulaw(&phone.samples)), 8_000);
        let heard = phone.to_rate(MODEL_RATE)?;
        let transcript = stt.transcribe(&heard.samples)?;
        let said_words = normalized_words(line);
        let heard_words = normalized_words(&transcript.text);
        let same = said_words.iter().filter(|w| heard_words.contains(w)).count();
        matched += same;
        total += said_words.len();
        println!("agent said : {line}");
        println!("caller hear: {}", transcript.text);
        println!(
            "             {same}/{} words · tts {:.0} ms for {:.1} s of audio · stt {:.0} ms (rtf {:.2})",
            said_words.len(),
            tts_secs * 1000.0,
            spoken.duration_secs(),
            transcript.processing.as_secs_f64() * 1000.0,
            transcript.real_time_factor()
        );
        call_audio.extend_from_slice(&phone.samples);
        call_audio.extend(std::iter::repeat_n(0.0, 4_000));
    }
    if let Some(parent) = args.output.parent() {
        std::fs::create_dir_all(parent)?;
    }
    Audio::new(call_audio, 8_000).write_wav(&args.output)?;
    println!("\n{matched}/{total} words understood; audio written to {}", args.output.display());
    if matched * 10 < total * 8 {
        anyhow::bail!("the round trip lost too many words ({matched}/{total})");
    }
    Ok(())
}
