//! Audio in memory, and the conversions every transport and model needs.
//!
//! Everything inside Ringline is mono `f32` in `[-1, 1]` at a known sample rate: transports
//! decode into it at their edge (G.711, PCM, WAV, FLAC) and the models resample it to what
//! they were trained on. Keeping one representation means one resampler and one set of
//! level measurements instead of one per codec.

pub mod decode;
pub mod echo;
pub mod g711;
pub mod resample;

use std::path::Path;

pub use decode::{decode_file, decode_raw_pcm16, DecodeError};
pub use resample::{resample, ResampleError};

/// The sample rate every speech model in Ringline consumes.
pub const MODEL_RATE: u32 = 16_000;

/// Mono audio at a known sample rate.
#[derive(Debug, Clone, PartialEq)]
pub struct Audio {
    pub samples: Vec<f32>,
    pub rate: u32,
}

impl Audio {
    pub fn new(samples: Vec<f32>, rate: u32) -> Self {
        debug_assert!(rate > 0, "a sample rate of zero is never valid");
        Audio { samples, rate }
    }

    pub fn silence(seconds: f32, rate: u32) -> Self {
        Audio::new(vec![0.0; (seconds * rate as f32).round() as usize], rate)
    }

    pub fn duration_secs(&self) -> f32 {
        self.samples.len() as f32 / self.rate as f32
    }

    /// Root-mean-square level in dBFS; `-inf` for empty or digital silence.
    pub fn rms_dbfs(&self) -> f32 {
        if self.samples.is_empty() {
            return f32::NEG_INFINITY;
        }
        let sum: f64 = self.samples.iter().map(|s| (*s as f64) * (*s as f64)).sum();
        let rms = (sum / self.samples.len() as f64).sqrt();
        20.0 * (rms.max(1e-12)).log10() as f32
    }

    /// Peak absolute level in dBFS.
    pub fn peak_dbfs(&self) -> f32 {
        let peak = self.samples.iter().fold(0.0f32, |m, s| m.max(s.abs()));
        20.0 * peak.max(1e-12).log10()
    }

    /// This audio at `rate`, resampled with rubato when the rates differ.
    pub fn to_rate(&self, rate: u32) -> Result<Audio, ResampleError> {
        if rate == self.rate {
            return Ok(self.clone());
        }
        Ok(Audio::new(resample(&self.samples, self.rate, rate)?, rate))
    }

    /// 16-bit PCM mono WAV in memory.
    pub fn to_wav_bytes(&self) -> Result<Vec<u8>, hound::Error> {
        let spec = hound::WavSpec { channels: 1, sample_rate: self.rate, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
        let mut cursor = std::io::Cursor::new(Vec::new());
        {
            let mut writer = hound::WavWriter::new(&mut cursor, spec)?;
            for sample in &self.samples {
                writer.write_sample(f32_to_i16(*sample))?;
            }
            writer.finalize()?;
        }
        Ok(cursor.into_inner())
    }

    /// Writes 16-bit PCM mono WAV.
    pub fn write_wav(&self, path: &Path) -> Result<(), hound::Error> {
        write_wav_channels(path, self.rate, &[&self.samples])
    }
}

/// Writes 16-bit PCM WAV with one channel per slice; shorter channels are padded with silence.
pub fn write_wav_channels(path: &Path, rate: u32, channels: &[&[f32]]) -> Result<(), hound::Error> {
    let spec = hound::WavSpec {
        channels: channels.len() as u16,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let frames = channels.iter().map(|c| c.len()).max().unwrap_or(0);
    let mut writer = hound::WavWriter::create(path, spec)?;
    for i in 0..frames {
        for channel in channels {
            let sample = channel.get(i).copied().unwrap_or(0.0);
            writer.write_sample(f32_to_i16(sample))?;
        }
    }
    writer.finalize()
}

pub fn f32_to_i16(sample: f32) -> i16 {
    (sample.clamp(-1.0, 1.0) * i16::MAX as f32).round() as i16
}

pub fn i16_to_f32(sample: i16) -> f32 {
    sample as f32 / 32768.0
}

/// `samples` from the first to the last one louder than `level`, with `margin` samples kept
/// either side: a recording without the silence around its sound. `None` when nothing is that
/// loud.
pub fn trim_to_sound(samples: &[f32], level: f32, margin: usize) -> Option<&[f32]> {
    let loud = |s: &f32| s.abs() > level;
    let (first, last) = (samples.iter().position(loud)?, samples.iter().rposition(loud)?);
    Some(&samples[first.saturating_sub(margin)..(last + margin + 1).min(samples.len())])
}

/// Averages interleaved channels into one.
pub fn downmix(interleaved: &[f32], channels: usize) -> Vec<f32> {
    if channels <= 1 {
        return interleaved.to_vec();
    }
    interleaved
        .chunks(channels)
        .map(|frame| frame.iter().sum::<f32>() / channels as f32)
        .collect()
}

/// A keypad key as its dual tone (ITU-T Q.23): 100 ms of the row and column frequencies, then
/// 60 ms of silence, at `rate`; `w` (or `W`) is half a second of silence, the pause dialers
/// write between keys. `None` for anything that is not a key.
pub fn dtmf_tone(key: char, rate: u32) -> Option<Vec<f32>> {
    if key.eq_ignore_ascii_case(&'w') {
        return Some(vec![0.0; rate as usize / 2]);
    }
    const ROWS: [f32; 4] = [697.0, 770.0, 852.0, 941.0];
    const COLUMNS: [f32; 4] = [1209.0, 1336.0, 1477.0, 1633.0];
    const KEYS: [[char; 4]; 4] = [['1', '2', '3', 'A'], ['4', '5', '6', 'B'], ['7', '8', '9', 'C'], ['*', '0', '#', 'D']];
    let (row, column) = KEYS.iter().enumerate().find_map(|(r, keys)| keys.iter().position(|&k| k == key).map(|c| (r, c)))?;
    let tone = (rate as usize) / 10;
    let gap = (rate as usize) * 6 / 100;
    let mut samples: Vec<f32> = (0..tone)
        .map(|i| {
            let t = i as f32 / rate as f32;
            0.25 * ((std::f32::consts::TAU * ROWS[row] * t).sin() + (std::f32::consts::TAU * COLUMNS[column] * t).sin())
        })
        .collect();
    samples.resize(tone + gap, 0.0);
    Some(samples)
}

/// The most keys one press of a line sends (a menu's path, an account number, the pauses).
pub const MAX_DTMF_KEYS: usize = 64;

/// Whether `digits` is something a keypad can send: 0-9, *, #, A-D and `w` pauses.
pub fn is_dialable(digits: &str) -> bool {
    digits.chars().all(|c| c.is_ascii_digit() || matches!(c, '*' | '#' | 'A'..='D' | 'w' | 'W'))
}

/// Keys to press, as every place that takes them checks them (the API, a flow's `send_dtmf`,
/// the LLM's tool, a scripted caller): `Err` is the fix, to follow the value in a message.
pub fn check_keys(keys: &str) -> Result<(), String> {
    if keys.is_empty() || keys.len() > MAX_DTMF_KEYS || !is_dialable(keys) {
        return Err(format!("use 1..{MAX_DTMF_KEYS} of 0-9, *, #, A-D and w (a half-second pause)"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_to_press_are_checked_once_for_every_place_that_takes_them() {
        for good in ["1", "1w2#", "*0D", &"9".repeat(MAX_DTMF_KEYS)] {
            assert_eq!(check_keys(good), Ok(()), "{good}");
        }
        for bad in ["", "12x", "1 2", &"9".repeat(MAX_DTMF_KEYS + 1)] {
            assert!(check_keys(bad).unwrap_err().contains("0-9, *, #, A-D and w"), "{bad}");
        }
    }

    #[test]
    fn trimming_keeps_the_sound_and_its_margin_and_finds_nothing_in_silence() {
        let samples = [0.0, 0.001, 0.5, -0.3, 0.002, 0.0, 0.0];
        assert_eq!(trim_to_sound(&samples, 0.01, 0), Some(&samples[2..4]));
        assert_eq!(trim_to_sound(&samples, 0.01, 1), Some(&samples[1..5]));
        assert_eq!(trim_to_sound(&samples, 0.01, 10), Some(&samples[..]), "the margin stops at the ends");
        assert_eq!(trim_to_sound(&[0.0; 8], 0.01, 2), None);
    }
}
