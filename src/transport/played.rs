//! What the line played to the caller, for echo cancellation.
//!
//! A line steps its playout on a clock; each step's agent audio (silence when nothing played)
//! is appended here at the line's rate, so the listener can take exactly as many reference
//! samples as caller samples it hears and keep the two streams in step. The buffer is bounded:
//! a listener that never takes (no canceller) costs at most [`KEEP_SECS`] of audio.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// Reference audio kept for a listener that falls behind (more than the live edge holds).
const KEEP_SECS: usize = 2;

/// Agent audio as played, shared between a line's playout and the call's listener.
#[derive(Clone)]
pub struct Played {
    samples: Arc<Mutex<VecDeque<f32>>>,
    capacity: usize,
}

impl Played {
    pub fn new(rate: u32) -> Played {
        let capacity = rate as usize * KEEP_SECS;
        Played { samples: Arc::new(Mutex::new(VecDeque::with_capacity(capacity))), capacity }
    }

    /// Appends one step's audio, padded with silence to `len` samples.
    pub fn push(&self, samples: &[f32], len: usize) {
        let mut buffer = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        buffer.extend(samples.iter().copied());
        buffer.extend(std::iter::repeat_n(0.0, len.saturating_sub(samples.len())));
        let excess = buffer.len().saturating_sub(self.capacity);
        buffer.drain(..excess);
    }

    /// The oldest `n` samples not yet taken (silence where none were played yet).
    pub fn take(&self, n: usize) -> Vec<f32> {
        let mut buffer = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let available = n.min(buffer.len());
        let mut out: Vec<f32> = buffer.drain(..available).collect();
        out.resize(n, 0.0);
        out
    }

    /// Drops the oldest `n` samples: the caller audio they went with was dropped.
    pub fn skip(&self, n: usize) {
        let mut buffer = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let n = n.min(buffer.len());
        buffer.drain(..n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_padded_taken_in_order_and_bounded() {
        let played = Played::new(100);
        played.push(&[1.0, 2.0], 4);
        played.push(&[3.0; 4], 4);
        assert_eq!(played.take(3), vec![1.0, 2.0, 0.0]);
        played.skip(2);
        assert_eq!(played.take(5), vec![3.0, 3.0, 3.0, 0.0, 0.0], "silence where nothing was played yet");
        played.push(&vec![5.0; 500], 500);
        assert_eq!(played.take(1000).iter().filter(|s| **s == 5.0).count(), 200, "two seconds at most");
    }
}
