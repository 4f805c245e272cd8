//! Smart Turn v3.2: is the caller's turn complete, judged from the sound of it.
//!
//! A Whisper-tiny encoder classifier over the last 8 s of the caller's audio as 80-bin
//! log-mel features, computed the way the model was trained (the HuggingFace Whisper
//! feature extractor with an 8 s chunk): the audio is left-padded with zeros to 8 s,
//! normalised to zero mean and unit variance, framed with a centred, reflect-padded STFT
//! (400-point periodic Hann window, hop 160), projected onto Slaney mel filters, log10'd,
//! clamped to 8 decades below its peak and scaled to about [-1, 1]. The model answers with
//! the probability that the turn is complete (~35 ms on one thread).

use std::sync::Arc;

use ort::session::Session;
use ort::value::Tensor;
use realfft::RealFftPlanner;

use crate::models::ct2_ggml::mel_filters;
use crate::models::ModelStore;
use crate::onnx::OnnxError;

const SAMPLES: usize = 16_000 * 8;
const N_FFT: usize = 400;
const HOP: usize = 160;
const N_MELS: usize = 80;
const BINS: usize = N_FFT / 2 + 1;
const FRAMES: usize = SAMPLES / HOP; // 800, after dropping the last of 801

pub struct SmartTurn {
    session: std::sync::Mutex<Session>,
    filters: Arc<Vec<f32>>,
}

impl SmartTurn {
    pub fn load(store: &ModelStore) -> Result<Self, OnnxError> {
        let path = store.require("smart-turn-v3.2")?;
        Ok(SmartTurn { session: std::sync::Mutex::new(crate::onnx::session(store, &path, 1)?), filters: Arc::new(mel_filters()) })
    }

    /// Probability (0..=1) that the turn in `audio_16k` (its end is what matters) is complete.
    pub fn probability(&self, audio_16k: &[f32]) -> Result<f32, OnnxError> {
        let features = features(audio_16k, &self.filters);
        let fail = |e: ort::Error| OnnxError::Run { model: "smart-turn-v3.2".into(), reason: e.to_string() };
        let input = Tensor::from_array(([1usize, N_MELS, FRAMES], features)).map_err(fail)?;
        let mut session = self.session.lock().unwrap_or_else(|e| e.into_inner());
        let outputs = session.run(ort::inputs!["input_features" => input]).map_err(fail)?;
        let (_, values) = outputs[0].try_extract_tensor::<f32>().map_err(fail)?;
        Ok(values.first().copied().unwrap_or(0.0).clamp(0.0, 1.0))
    }
}

/// Log-mel features [80 × 800], row-major by mel bin.
pub fn features(audio_16k: &[f32], filters: &[f32]) -> Vec<f32> {
    // The last 8 s, zero-padded at the front.
    let tail = &audio_16k[audio_16k.len().saturating_sub(SAMPLES)..];
    let mut x = vec![0f64; SAMPLES - tail.len()];
    x.extend(tail.iter().map(|s| *s as f64));
    let mean = x.iter().sum::<f64>() / SAMPLES as f64;
    let variance = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / SAMPLES as f64;
    let scale = 1.0 / (variance + 1e-7).sqrt();
    x.iter_mut().for_each(|v| *v = (*v - mean) * scale);

    // Centred frames: reflect-pad by half a window on both sides.
    let pad = N_FFT / 2;
    let mut padded = Vec::with_capacity(SAMPLES + 2 * pad);
    padded.extend((1..=pad).rev().map(|i| x[i]));
    padded.extend_from_slice(&x);
    padded.extend((0..pad).map(|i| x[SAMPLES - 2 - i]));
    let window: Vec<f64> = (0..N_FFT).map(|n| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * n as f64 / N_FFT as f64).cos()).collect();

    let mut planner = RealFftPlanner::<f64>::new();
    let fft = planner.plan_fft_forward(N_FFT);
    let mut input = fft.make_input_vec();
    let mut spectrum = fft.make_output_vec();
    let mut log_mel = vec![0f32; N_MELS * FRAMES];
    let mut power = vec![0f64; BINS];
    for frame in 0..FRAMES {
        let start = frame * HOP;
        for (i, slot) in input.iter_mut().enumerate() {
            *slot = padded[start + i] * window[i];
        }
        fft.process(&mut input, &mut spectrum).expect("buffer sizes come from the planner");
        for (bin, c) in spectrum.iter().enumerate() {
            power[bin] = c.re * c.re + c.im * c.im;
        }
        for mel in 0..N_MELS {
            let row = &filters[mel * BINS..(mel + 1) * BINS];
            let energy: f64 = row.iter().zip(&power).map(|(w, p)| *w as f64 * p).sum();
            log_mel[mel * FRAMES + frame] = energy.max(1e-10).log10() as f32;
        }
    }
    let peak = log_mel.iter().copied().fold(f32::MIN, f32::max);
    log_mel.iter_mut().for_each(|v| *v = ((*v).max(peak - 8.0) + 4.0) / 4.0);
    log_mel
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_have_whispers_shape_and_range() {
        let tone: Vec<f32> = (0..16_000).map(|i| 0.3 * (i as f32 * 440.0 * std::f32::consts::TAU / 16_000.0).sin()).collect();
        let f = features(&tone, &mel_filters());
        assert_eq!(f.len(), 80 * 800);
        let max = f.iter().copied().fold(f32::MIN, f32::max);
        let min = f.iter().copied().fold(f32::MAX, f32::min);
        assert!(max <= 1.0 + 1.0 && min >= max - 2.0 - 1e-6, "range {min}..{max}");
        // The tone sits at the end of the window: the last frames are louder than the first.
        let band = 10; // ~440 Hz
        assert!(f[band * 800 + 790] > f[band * 800 + 10]);
    }
}
