//! The agent's side of a line: queued segments played out one clock step at a time.
//!
//! Every line that plays on a 20 ms clock (the loopback line, a Twilio media stream) keeps one
//! [`Playout`]: segments in order, how far each has played, when each began, and a pause. The
//! line decides what a step is and where its samples go; this keeps what was heard.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

struct Segment {
    id: u64,
    samples: Vec<f32>,
    offset: usize,
}

/// Queued agent audio and what of it has played.
#[derive(Default)]
pub struct Playout {
    queue: VecDeque<Segment>,
    /// Per segment: samples played, samples in all.
    progress: HashMap<u64, (usize, usize)>,
    started: HashMap<u64, Duration>,
    paused: bool,
    /// Every step's audio, for echo cancellation; kept once someone asks ([`Playout::played`]).
    played: Option<super::played::Played>,
}

/// One step's output.
pub struct Step {
    /// Up to the step's length of samples; fewer (possibly none) when idle or paused.
    pub samples: Vec<f32>,
    /// Segments whose last sample is in this step.
    pub finished: Vec<u64>,
    /// Segments whose first sample is in this step.
    pub begun: Vec<u64>,
}

impl Playout {
    pub fn play(&mut self, segment: u64, samples: Vec<f32>) {
        self.progress.insert(segment, (0, samples.len()));
        self.queue.push_back(Segment { id: segment, samples, offset: 0 });
    }

    /// Drops everything not yet played and ends a pause; true when something was cut.
    pub fn clear(&mut self) -> bool {
        let cut = !self.queue.is_empty();
        self.queue.clear();
        self.paused = false;
        cut
    }

    pub fn pause(&mut self) {
        self.paused = true;
    }

    pub fn resume(&mut self) {
        self.paused = false;
    }

    /// Fraction (0..=1) of `segment` played.
    pub fn heard(&self, segment: u64) -> f32 {
        match self.progress.get(&segment) {
            Some((played, total)) if *total > 0 => *played as f32 / *total as f32,
            _ => 0.0,
        }
    }

    pub fn is_idle(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn started_at(&self, segment: u64) -> Option<Duration> {
        self.started.get(&segment).copied()
    }

    /// The audio this playout plays from now on, a step at a time (silence padded to each
    /// step's length), at the line's `rate`.
    pub fn played(&mut self, rate: u32) -> super::played::Played {
        self.played.get_or_insert_with(|| super::played::Played::new(rate)).clone()
    }

    /// Plays up to `len` samples at `now`.
    pub fn step(&mut self, len: usize, now: Duration) -> Step {
        let mut samples = Vec::with_capacity(len);
        let (mut finished, mut begun) = (Vec::new(), Vec::new());
        while samples.len() < len && !self.paused {
            let Some(segment) = self.queue.front_mut() else { break };
            if segment.offset == 0 {
                begun.push(segment.id);
            }
            let take = (len - samples.len()).min(segment.samples.len() - segment.offset);
            samples.extend_from_slice(&segment.samples[segment.offset..segment.offset + take]);
            segment.offset += take;
            let (id, offset, done) = (segment.id, segment.offset, segment.offset >= segment.samples.len());
            self.started.entry(id).or_insert(now);
            if let Some(progress) = self.progress.get_mut(&id) {
                progress.0 = offset;
            }
            if done {
                self.queue.pop_front();
                finished.push(id);
            }
        }
        if let Some(played) = &self.played {
            played.push(&samples, len);
        }
        Step { samples, finished, begun }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_cross_segments_and_a_clear_keeps_what_was_heard() {
        let mut playout = Playout::default();
        playout.play(1, vec![1.0; 30]);
        playout.play(2, vec![2.0; 30]);
        let step = playout.step(40, Duration::ZERO);
        assert_eq!(step.samples.len(), 40);
        assert_eq!((step.finished, step.begun), (vec![1], vec![1, 2]));
        assert_eq!(playout.started_at(2), Some(Duration::ZERO));
        assert!((playout.heard(2) - 10.0 / 30.0).abs() < 1e-6);
        playout.pause();
        assert!(playout.step(40, Duration::from_millis(20)).samples.is_empty());
        assert!(playout.clear());
        assert!(playout.is_idle() && (playout.heard(2) - 10.0 / 30.0).abs() < 1e-6);
    }
}
