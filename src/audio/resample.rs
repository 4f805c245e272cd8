//! Sample-rate conversion with rubato's FFT resampler.
//!
//! Transports run at 8, 16 or 48 kHz, Piper speaks at 22.05 kHz and the speech models want
//! 16 kHz. [`StreamResampler`] converts a live stream chunk by chunk and hides the filter's
//! delay, so that N seconds in give N seconds out, aligned; [`resample`] is the whole-buffer
//! convenience built on it.

use rubato::{FftFixedIn, Resampler};

#[derive(Debug, thiserror::Error)]
pub enum ResampleError {
    #[error("cannot resample from {from} Hz to {to} Hz: {reason}")]
    Construction { from: u32, to: u32, reason: String },
    #[error("resampling failed: {0}")]
    Process(String),
}

/// Input frames the whole-buffer path feeds per FFT chunk.
const BATCH_CHUNK: usize = 1024;

/// Resamples a whole mono buffer from `from` Hz to `to` Hz.
///
/// The output has `round(len × to / from)` samples and is time-aligned with the input.
pub fn resample(samples: &[f32], from: u32, to: u32) -> Result<Vec<f32>, ResampleError> {
    if from == to {
        return Ok(samples.to_vec());
    }
    let mut stream = StreamResampler::new(from, to, BATCH_CHUNK)?;
    let mut out = stream.push(samples)?;
    out.extend(stream.finish()?);
    Ok(out)
}

/// A stateful mono resampler for audio that arrives in pieces of any length.
pub struct StreamResampler {
    inner: FftFixedIn<f32>,
    from: u32,
    to: u32,
    /// Input not yet filling a whole chunk.
    pending: Vec<f32>,
    /// Output samples still to discard: the filter's delay.
    delay_left: usize,
    frames_in: u64,
    frames_out: u64,
}

impl StreamResampler {
    /// `chunk` is the number of input frames processed at a time (20 ms suits live audio).
    pub fn new(from: u32, to: u32, chunk: usize) -> Result<Self, ResampleError> {
        let inner = FftFixedIn::<f32>::new(from as usize, to as usize, chunk.max(1), 1, 1).map_err(|e| {
            ResampleError::Construction { from, to, reason: e.to_string() }
        })?;
        let delay_left = inner.output_delay();
        Ok(StreamResampler { inner, from, to, pending: Vec::new(), delay_left, frames_in: 0, frames_out: 0 })
    }

    pub fn input_rate(&self) -> u32 {
        self.from
    }

    pub fn output_rate(&self) -> u32 {
        self.to
    }

    /// Feeds samples; returns whatever output is ready.
    pub fn push(&mut self, samples: &[f32]) -> Result<Vec<f32>, ResampleError> {
        self.frames_in += samples.len() as u64;
        self.pending.extend_from_slice(samples);
        let mut out = Vec::new();
        let mut consumed = 0;
        loop {
            let need = self.inner.input_frames_next();
            if self.pending.len() - consumed < need {
                break;
            }
            let chunk = &self.pending[consumed..consumed + need];
            let produced = self.inner.process(&[chunk], None).map_err(|e| ResampleError::Process(e.to_string()))?;
            consumed += need;
            self.emit(&produced[0], &mut out);
        }
        self.pending.drain(..consumed);
        Ok(out)
    }

    /// Flushes the tail: pads with silence until every input sample has come out.
    pub fn finish(&mut self) -> Result<Vec<f32>, ResampleError> {
        let expected = (self.frames_in as f64 * self.to as f64 / self.from as f64).round() as u64;
        let mut out = Vec::new();
        while self.frames_out < expected {
            let need = self.inner.input_frames_next();
            let mut chunk = std::mem::take(&mut self.pending);
            chunk.resize(need, 0.0);
            let produced = self.inner.process(&[&chunk[..]], None).map_err(|e| ResampleError::Process(e.to_string()))?;
            self.emit(&produced[0], &mut out);
        }
        let excess = (self.frames_out - expected) as usize;
        out.truncate(out.len() - excess.min(out.len()));
        self.frames_out = expected;
        self.inner.reset();
        self.delay_left = self.inner.output_delay();
        self.frames_in = 0;
        self.frames_out = 0;
        Ok(out)
    }

    fn emit(&mut self, produced: &[f32], out: &mut Vec<f32>) {
        let skip = self.delay_left.min(produced.len());
        self.delay_left -= skip;
        out.extend_from_slice(&produced[skip..]);
        self.frames_out += (produced.len() - skip) as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sine(freq: f32, rate: u32, seconds: f32) -> Vec<f32> {
        let n = (rate as f32 * seconds) as usize;
        (0..n).map(|i| 0.5 * (2.0 * std::f32::consts::PI * freq * i as f32 / rate as f32).sin()).collect()
    }

    /// The dominant frequency, from zero crossings over the middle of the signal.
    fn zero_crossing_frequency(samples: &[f32], rate: u32) -> f32 {
        let middle = &samples[samples.len() / 10..samples.len() * 9 / 10];
        let crossings = middle.windows(2).filter(|w| (w[0] < 0.0) != (w[1] < 0.0)).count();
        crossings as f32 / 2.0 / (middle.len() as f32 / rate as f32)
    }

    const RATES: [u32; 5] = [8_000, 16_000, 22_050, 44_100, 48_000];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        #[test]
        fn length_follows_the_ratio(from in 0usize..5, to in 0usize..5, len in 0usize..20_000) {
            let (from, to) = (RATES[from], RATES[to]);
            let input = vec![0.1f32; len];
            let out = resample(&input, from, to).unwrap();
            let expected = (len as f64 * to as f64 / from as f64).round() as usize;
            prop_assert_eq!(out.len(), expected);
        }

        #[test]
        fn a_sine_keeps_its_frequency(from in 0usize..5, to in 0usize..5, freq in 200f32..3_500.0) {
            let (from, to) = (RATES[from], RATES[to]);
            let out = resample(&sine(freq, from, 0.5), from, to).unwrap();
            let measured = zero_crossing_frequency(&out, to);
            prop_assert!((measured - freq).abs() < freq * 0.02 + 5.0, "{freq} Hz came out as {measured} Hz");
        }
    }

    #[test]
    fn streaming_in_odd_pieces_matches_the_whole_buffer() {
        let input = sine(440.0, 8_000, 1.0);
        let whole = resample(&input, 8_000, 16_000).unwrap();
        let mut stream = StreamResampler::new(8_000, 16_000, 1024).unwrap();
        let mut pieces = Vec::new();
        for piece in input.chunks(77) {
            pieces.extend(stream.push(piece).unwrap());
        }
        pieces.extend(stream.finish().unwrap());
        assert_eq!(pieces.len(), whole.len());
        let max_diff = pieces.iter().zip(&whole).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(max_diff < 1e-4, "streamed output differs by {max_diff}");
    }

    #[test]
    fn output_is_time_aligned() {
        // A click at 0.5 s must still be at 0.5 s after resampling (the delay is removed).
        let mut input = vec![0.0f32; 16_000];
        input[8_000] = 1.0;
        let out = resample(&input, 16_000, 48_000).unwrap();
        let peak = out.iter().enumerate().max_by(|a, b| a.1.abs().total_cmp(&b.1.abs())).unwrap().0;
        assert!((peak as i64 - 24_000).abs() <= 2, "click moved to {peak}");
    }
}
