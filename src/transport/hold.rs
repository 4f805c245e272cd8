//! Hold: the agent neither hears nor speaks until the call is taken off hold.
//!
//! A line on hold wraps the transport's [`AudioOut`]: going on hold clears what the agent was
//! saying, and what it would say while held is dropped; the caller's audio reaches the listener
//! as silence of the same length (the clock keeps running, nothing is mistaken for speech). The
//! turn manager sees [`AudioOut::held`] and does not count the time as the caller's silence.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::live::Silencer;
use super::{recorder, AudioOut};

pub struct HoldableLine {
    inner: Arc<dyn AudioOut>,
    held: AtomicBool,
    silencer: Silencer,
}

impl HoldableLine {
    pub fn new(inner: Arc<dyn AudioOut>, silencer: Silencer) -> Self {
        HoldableLine { inner, held: AtomicBool::new(false), silencer }
    }

    /// Puts the call on hold or takes it off; returns whether that changed anything.
    pub fn set_hold(&self, on: bool) -> bool {
        let was = self.held.swap(on, Ordering::SeqCst);
        self.silencer.set(on);
        if on && !was {
            self.inner.clear();
        }
        was != on
    }
}

impl AudioOut for HoldableLine {
    fn rate(&self) -> u32 {
        self.inner.rate()
    }
    fn now(&self) -> Duration {
        self.inner.now()
    }
    fn play(&self, segment: u64, samples: Vec<f32>) {
        if !self.held.load(Ordering::SeqCst) {
            self.inner.play(segment, samples);
        }
    }
    fn clear(&self) -> Duration {
        self.inner.clear()
    }
    fn pause(&self) -> Duration {
        self.inner.pause()
    }
    fn resume(&self) {
        self.inner.resume()
    }
    fn heard(&self, segment: u64) -> f32 {
        self.inner.heard(segment)
    }
    fn is_idle(&self) -> bool {
        self.inner.is_idle()
    }
    fn started_at(&self, segment: u64) -> Option<Duration> {
        self.inner.started_at(segment)
    }
    fn hang_up(&self) {
        self.inner.hang_up()
    }
    fn send_dtmf(&self, digits: &str) {
        self.inner.send_dtmf(digits)
    }
    fn transfer(&self, destination: &str) {
        self.inner.transfer(destination)
    }
    fn record(&self, recorder: recorder::Recorder) {
        self.inner.record(recorder)
    }
    fn held(&self) -> bool {
        self.held.load(Ordering::SeqCst)
    }
    fn hold_far_end(&self, on: bool) {
        self.inner.hold_far_end(on)
    }
    fn played(&self) -> Option<super::played::Played> {
        self.inner.played()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::loopback::LoopbackLine;

    #[tokio::test]
    async fn on_hold_the_agent_is_cut_off_and_silent_until_taken_off_hold() {
        let (line, input) = LoopbackLine::start(16_000);
        let line: Arc<dyn AudioOut> = Arc::new(line);
        let held = HoldableLine::new(line.clone(), input.audio.silencer());
        held.play(1, vec![0.1; 16_000]);
        assert!(!line.is_idle(), "the agent speaks");
        assert!(held.set_hold(true) && held.held());
        assert!(line.is_idle(), "going on hold cut the agent off");
        held.play(2, vec![0.1; 16_000]);
        assert!(line.is_idle(), "nothing the agent says on hold is played");
        assert!(!held.set_hold(true), "holding twice changes nothing");
        assert!(held.set_hold(false) && !held.held());
        held.play(3, vec![0.1; 1_600]);
        assert!(!line.is_idle(), "off hold the agent is heard again");
        // What the caller says meanwhile reaches the listener as silence: `live`'s own test.
    }
}
