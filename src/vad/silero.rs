//! Silero VAD v6 through ONNX Runtime (the `state` interface; vad-rs speaks only v4's h/c).
//!
//! Input per call: the previous frame's last 64 samples followed by 512 new ones (16 kHz),
//! the recurrent `state` [2, 1, 128] fed back from `stateN`, and `sr`. Output: the speech
//! probability. One intra-op thread: a frame costs ~0.1 ms, threads would only add overhead.

use ort::session::Session;
use ort::value::Tensor;

use super::FRAME_SAMPLES;
use crate::models::ModelStore;
use crate::onnx::OnnxError;

const CONTEXT: usize = 64;
const STATE_LEN: usize = 2 * 128;

/// The loaded model, shared by every call; per-call state lives in [`SileroStream`].
pub struct SileroVad {
    session: std::sync::Mutex<Session>,
}

/// One audio stream's recurrent state.
#[derive(Clone)]
pub struct SileroStream {
    state: Vec<f32>,
    context: Vec<f32>,
}

impl Default for SileroStream {
    fn default() -> Self {
        SileroStream { state: vec![0.0; STATE_LEN], context: vec![0.0; CONTEXT] }
    }
}

impl SileroVad {
    pub fn load(store: &ModelStore) -> Result<Self, OnnxError> {
        let path = store.require("silero-vad")?;
        Ok(SileroVad { session: std::sync::Mutex::new(crate::onnx::session(store, &path, 1)?) })
    }

    /// The speech probability of one 512-sample frame; advances `stream`.
    pub fn probability(&self, stream: &mut SileroStream, frame: &[f32]) -> Result<f32, OnnxError> {
        debug_assert_eq!(frame.len(), FRAME_SAMPLES);
        let fail = |e: ort::Error| OnnxError::Run { model: "silero-vad".into(), reason: e.to_string() };
        let mut input = Vec::with_capacity(CONTEXT + FRAME_SAMPLES);
        input.extend_from_slice(&stream.context);
        input.extend_from_slice(frame);
        let input = Tensor::from_array(([1usize, CONTEXT + FRAME_SAMPLES], input)).map_err(fail)?;
        let state = Tensor::from_array(([2usize, 1, 128], stream.state.clone())).map_err(fail)?;
        let rate = Tensor::from_array(([1usize], vec![16_000i64])).map_err(fail)?;
        let mut session = self.session.lock().unwrap_or_else(|e| e.into_inner());
        let outputs = session.run(ort::inputs!["input" => input, "state" => state, "sr" => rate]).map_err(fail)?;
        let (_, probability) = outputs["output"].try_extract_tensor::<f32>().map_err(fail)?;
        let (_, next_state) = outputs["stateN"].try_extract_tensor::<f32>().map_err(fail)?;
        let probability = probability.first().copied().unwrap_or(0.0);
        stream.state.copy_from_slice(&next_state[..STATE_LEN]);
        stream.context.copy_from_slice(&frame[FRAME_SAMPLES - CONTEXT..]);
        Ok(probability)
    }
}
