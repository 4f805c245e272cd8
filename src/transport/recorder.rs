//! A call's recording, streamed to disk as the call goes: a stereo 16-bit WAV at the line's
//! rate, the caller on the left and the agent on the right, one 20 ms step at a time. Never
//! the whole call in memory; the file's header is finished when the call ends (a crash leaves
//! a file whose data a WAV reader can still recover).

use std::collections::VecDeque;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Caller audio held for the next steps before the oldest is dropped (half a second): the
/// caller's frames arrive on the network's schedule, the steps on the line's clock.
const CALLER_BACKLOG_STEPS: usize = 25;

struct Inner {
    writer: Option<hound::WavWriter<BufWriter<File>>>,
    caller: VecDeque<f32>,
    step: usize,
}

/// Records one call; cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    inner: Arc<Mutex<Inner>>,
    path: PathBuf,
}

impl Recorder {
    /// Creates `path` (its folder too) for a call at `rate`.
    pub fn create(path: &Path, rate: u32) -> Result<Recorder, String> {
        if let Some(folder) = path.parent() {
            std::fs::create_dir_all(folder).map_err(|e| format!("cannot create the recordings folder {}: {e}", folder.display()))?;
        }
        let spec = hound::WavSpec { channels: 2, sample_rate: rate, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
        let writer = hound::WavWriter::create(path, spec).map_err(|e| format!("cannot create the recording {}: {e}", path.display()))?;
        Ok(Recorder { inner: Arc::new(Mutex::new(Inner { writer: Some(writer), caller: VecDeque::new(), step: (rate / 50) as usize })), path: path.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Caller audio as it arrived.
    pub fn caller(&self, samples: &[f32]) {
        let mut inner = self.lock();
        inner.caller.extend(samples);
        let most = inner.step * CALLER_BACKLOG_STEPS;
        let excess = inner.caller.len().saturating_sub(most);
        inner.caller.drain(..excess);
    }

    /// One step of the line's clock: the agent's samples this step (fewer or none when it is
    /// quiet) beside a step of the caller's.
    pub fn step(&self, agent: &[f32]) {
        let mut inner = self.lock();
        let len = inner.step.max(agent.len());
        let caller: Vec<f32> = (0..len).map(|_| inner.caller.pop_front().unwrap_or(0.0)).collect();
        let Some(writer) = inner.writer.as_mut() else { return };
        for (i, left) in caller.iter().enumerate() {
            let right = agent.get(i).copied().unwrap_or(0.0);
            if writer.write_sample(crate::audio::f32_to_i16(*left)).and_then(|_| writer.write_sample(crate::audio::f32_to_i16(right))).is_err() {
                tracing::warn!(path = %self.path.display(), "cannot write the recording; it stops here");
                inner.writer = None;
                return;
            }
        }
    }

    /// Writes the header's lengths; later steps are ignored.
    pub fn finish(&self) {
        if let Some(writer) = self.lock().writer.take() {
            if let Err(error) = writer.finalize() {
                tracing::warn!(%error, path = %self.path.display(), "cannot finish the recording");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_left_agent_right_one_step_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("calls/c.wav");
        let recorder = Recorder::create(&path, 8_000).unwrap();
        recorder.caller(&[0.5; 100]);
        recorder.step(&[-0.5; 160]);
        recorder.step(&[]);
        recorder.finish();
        recorder.step(&[0.1; 160]);
        let mut reader = hound::WavReader::open(&path).unwrap();
        assert_eq!(reader.spec().channels, 2);
        let samples: Vec<i16> = reader.samples::<i16>().map(Result::unwrap).collect();
        assert_eq!(samples.len(), 2 * 320, "two steps of 160 frames, nothing after finish");
        assert!(samples[0] > 16_000 && samples[1] < -16_000, "caller left, agent right");
        assert_eq!((samples[2 * 100], samples[2 * 100 + 1] < 0), (0, true), "the caller's audio ran out; the agent's had not");
        assert_eq!(samples[2 * 160 + 1], 0, "a quiet agent is silence");
    }
}
