//! `ringline transcribe` and `ringline speak`: the speech engines on files.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::audio::{self, Audio, MODEL_RATE};
use crate::models::ModelStore;
use crate::stt::whisper::WhisperStt;
use crate::stt::SpeechToText;
use crate::tts::piper::{PiperVoice, Scales};
use crate::tts::{self, TextToSpeech};
use crate::vad::{self, silero::{SileroStream, SileroVad}};

/// Default speech-to-text model.
pub const DEFAULT_STT_MODEL: &str = "whisper-tiny.en";

#[derive(Debug, Args)]
pub struct TranscribeArgs {
    /// Audio files: WAV (PCM 8/16/24/32-bit, float, μ-law, A-law; any rate and channels) or FLAC.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Print one JSON object per file (text, segments with timings, real-time factor).
    #[arg(long)]
    pub json: bool,
    /// Treat the files as headerless signed 16-bit little-endian PCM at this rate.
    #[arg(long, value_name = "HZ")]
    pub raw_rate: Option<u32>,
    /// Channels of raw PCM input.
    #[arg(long, default_value_t = 1, requires = "raw_rate")]
    pub raw_channels: u16,
    /// Speech-to-text model from the store.
    #[arg(long, default_value = DEFAULT_STT_MODEL)]
    pub model: String,
    /// Spoken language (e.g. en, de); English-only models imply `en`.
    #[arg(long)]
    pub language: Option<String>,
    /// Prime the recognizer with these words (names, a business's vocabulary), as a call's
    /// assistant and flow do.
    #[arg(long, value_name = "TEXT")]
    pub prompt: Option<String>,
    /// Hear each file in one pass. By default a recording with pauses of 1.2 s or more is cut
    /// at them by the voice-activity detector and heard a stretch of speech at a time.
    #[arg(long)]
    pub whole: bool,
}

/// A recording at least this long shows its progress while it is heard.
const LONG_SECS: f32 = 60.0;

#[derive(Debug, Serialize)]
struct FileTranscript<'a> {
    file: &'a std::path::Path,
    #[serde(flatten)]
    transcript: &'a crate::stt::Transcript,
    real_time_factor: f64,
    /// Stretches of speech heard apart (1: the file in one pass).
    stretches: usize,
}

pub fn transcribe(args: TranscribeArgs) -> anyhow::Result<()> {
    let store = ModelStore::from_env()?;
    let stt = WhisperStt::load(&store, &args.model, threads(), args.language.as_deref())?;
    let vad = match args.whole {
        true => None,
        false => SileroVad::load(&store)
            .map_err(|e| eprintln!("warning: {e}; each file is heard in one pass, uncut (pull the VAD to cut recordings at their pauses, or give --whole)"))
            .ok(),
    };
    let many = args.files.len() > 1;
    for file in &args.files {
        let audio = read_audio(file, args.raw_rate, args.raw_channels)?;
        let audio = audio.to_rate(MODEL_RATE).with_context(|| format!("resampling {}", file.display()))?;
        let stretches = match &vad {
            Some(vad) => {
                let mut stream = SileroStream::default();
                vad::recording_stretches(&audio.samples, |frame| vad.probability(&mut stream, frame).unwrap_or(0.0))
            }
            None => Vec::new(),
        };
        let secs = |s: usize| s as f64 / MODEL_RATE as f64;
        tracing::debug!(file = %file.display(), stretches = ?stretches.iter().map(|(a, b)| format!("{:.2}-{:.2}", secs(*a), secs(*b))).collect::<Vec<_>>(), "speech found by the VAD");
        let never = std::sync::atomic::AtomicBool::new(false);
        let transcript = match (args.prompt.as_deref(), stretches.len()) {
            (prompt, 2..) => {
                // Long work shows progress (on a terminal; nothing when stderr is redirected).
                let progress = match audio.duration_secs() >= LONG_SECS {
                    true => ProgressBar::new(stretches.len() as u64),
                    false => ProgressBar::hidden(),
                };
                progress.set_style(ProgressStyle::with_template("{spinner} {bar:30} {pos}/{len} stretches of speech  {msg}").unwrap_or_else(|_| ProgressStyle::default_bar()));
                progress.set_message(file.display().to_string());
                let transcript = crate::stt::transcribe_stretches(&stt, &audio.samples, &stretches, prompt, || progress.inc(1));
                progress.finish_and_clear();
                transcript
            }
            (Some(prompt), _) => stt.transcribe_primed(&audio.samples, &never, prompt),
            (None, _) => stt.transcribe(&audio.samples),
        }
        .with_context(|| format!("transcribing {}", file.display()))?;
        if args.json {
            let record = FileTranscript { file, transcript: &transcript, real_time_factor: transcript.real_time_factor(), stretches: stretches.len().max(1) };
            println!("{}", serde_json::to_string(&record)?);
        } else if many {
            println!("{}: {}", file.display(), transcript.text);
        } else {
            println!("{}", transcript.text);
        }
    }
    Ok(())
}

pub fn read_audio(file: &std::path::Path, raw_rate: Option<u32>, raw_channels: u16) -> anyhow::Result<Audio> {
    match raw_rate {
        Some(0) => anyhow::bail!("--raw-rate must be a positive sample rate in Hz, e.g. --raw-rate 16000"),
        Some(rate) => {
            let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
            Ok(audio::decode_raw_pcm16(&bytes, rate, raw_channels))
        }
        None => Ok(audio::decode_file(file)?),
    }
}

#[derive(Debug, Args)]
pub struct SpeakArgs {
    /// The text to speak.
    pub text: String,
    /// Output WAV file (16-bit PCM, mono).
    #[arg(short, long)]
    pub output: PathBuf,
    /// A Piper voice from the store, or `espeak` / `espeak:VOICE` for espeak-ng's own voice.
    #[arg(long, default_value = tts::DEFAULT_VOICE)]
    pub voice: String,
    /// Output sample rate (default: the voice's own).
    #[arg(long, value_name = "HZ")]
    pub rate: Option<u32>,
    /// A Piper voice's variation in sound (default: the voice's config, usually 0.667).
    /// With `--noise-w`, 0 makes a text always give the same audio.
    #[arg(long, value_name = "0..=2")]
    pub noise_scale: Option<f32>,
    /// A Piper voice's variation in timing (default: the voice's config, usually 0.8).
    #[arg(long, value_name = "0..=2")]
    pub noise_w: Option<f32>,
    /// A Piper voice's pace: > 1 speaks slower, < 1 faster (default: the voice's config, usually 1).
    #[arg(long, value_name = "0.25..=4")]
    pub length_scale: Option<f32>,
}

impl SpeakArgs {
    /// Checks the Piper settings given on the command line; the first one given, if any.
    fn scale_flag(&self) -> anyhow::Result<Option<&'static str>> {
        let given = [("noise-scale", self.noise_scale, 0.0, 2.0), ("noise-w", self.noise_w, 0.0, 2.0), ("length-scale", self.length_scale, 0.25, 4.0)];
        for (flag, value, min, max) in given {
            if let Some(value) = value.filter(|v| !(min..=max).contains(v)) {
                anyhow::bail!("--{flag} {value} is out of range: give a number from {min} to {max}");
            }
        }
        Ok(given.iter().find(|(_, value, ..)| value.is_some()).map(|(flag, ..)| *flag))
    }

    fn apply(&self, scales: &mut Scales) {
        scales.noise_scale = self.noise_scale.unwrap_or(scales.noise_scale);
        scales.noise_w = self.noise_w.unwrap_or(scales.noise_w);
        scales.length_scale = self.length_scale.unwrap_or(scales.length_scale);
    }
}

pub fn speak(args: SpeakArgs) -> anyhow::Result<()> {
    if args.text.trim().is_empty() {
        anyhow::bail!("nothing to speak: the text is empty");
    }
    let scale_flag = args.scale_flag()?;
    let store = ModelStore::from_env()?;
    let voice: Box<dyn TextToSpeech> = match scale_flag {
        None => tts::load_voice(&store, &args.voice, threads()).with_context(|| format!("loading voice {}", args.voice))?,
        Some(flag) if tts::espeak_voice(&args.voice).is_some() => {
            anyhow::bail!("--{flag} applies to Piper voices only, not --voice {}: drop it, or pick a Piper voice", args.voice)
        }
        Some(_) => {
            let mut voice = PiperVoice::load(&store, &args.voice, threads()).with_context(|| format!("loading voice {}", args.voice))?;
            args.apply(voice.scales_mut());
            Box::new(voice)
        }
    };
    let mut audio = voice.speak_all(&args.text)?;
    if let Some(rate) = args.rate {
        if rate == 0 {
            anyhow::bail!("--rate must be a positive sample rate in Hz, e.g. --rate 16000");
        }
        audio = audio.to_rate(rate)?;
    }
    audio.write_wav(&args.output).with_context(|| format!("writing {}", args.output.display()))?;
    eprintln!("wrote {} ({:.2} s at {} Hz)", args.output.display(), audio.duration_secs(), audio.rate);
    Ok(())
}

/// Threads for one engine: the machine's cores (a 2-core box gets 2).
pub fn threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).min(4)
}

