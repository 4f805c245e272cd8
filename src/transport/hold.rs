//! Hold: the agent neither hears nor speaks until the call is taken off hold.
//!
//! A line on hold wraps the transport's [`AudioOut`]: going on hold clears what the agent was
//! saying, and what it would say while held is dropped; the caller's audio reaches the listener
//! as silence of the same length (the clock keeps running, nothing is mistaken for speech). The
//! turn manager sees [`AudioOut::held`] and does not count the time as the caller's silence.
//!
//! Two parties may hold a call, each for its own reasons: the API (a business's request) and
//! the far end (a SIP phone's hold key). The call stays on hold while either does; one party
//! taking it off hold does not undo the other's.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::live::Silencer;
use super::{recorder, AudioOut};

/// Who holds a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    /// The API's hold action.
    Api,
    /// The far end: a SIP peer that stopped taking our audio.
    FarEnd,
}

pub struct HoldableLine {
    inner: Arc<dyn AudioOut>,
    /// Whether the API holds the call, and whether the far end does.
    holders: Mutex<[bool; 2]>,
    /// Either does: read on every frame the agent plays.
    held: AtomicBool,
    silencer: Silencer,
}

impl HoldableLine {
    pub fn new(inner: Arc<dyn AudioOut>, silencer: Silencer) -> Self {
        HoldableLine { inner, holders: Mutex::new([false; 2]), held: AtomicBool::new(false), silencer }
    }

    /// `by` puts the call on hold or takes its own hold off; returns whether that changed
    /// `by`'s hold. The call is held while any party holds it.
    pub fn set_hold(&self, by: Holder, on: bool) -> bool {
        let mut holders = self.holders.lock().unwrap_or_else(|e| e.into_inner());
        let slot = &mut holders[by as usize];
        let changed = std::mem::replace(slot, on) != on;
        let held = holders.iter().any(|&h| h);
        let was = self.held.swap(held, Ordering::SeqCst);
        self.silencer.set(held);
        if held && !was {
            self.inner.clear();
        }
        changed
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
        assert!(held.set_hold(Holder::Api, true) && held.held());
        assert!(line.is_idle(), "going on hold cut the agent off");
        held.play(2, vec![0.1; 16_000]);
        assert!(line.is_idle(), "nothing the agent says on hold is played");
        assert!(!held.set_hold(Holder::Api, true), "holding twice changes nothing");
        assert!(held.set_hold(Holder::Api, false) && !held.held());
        held.play(3, vec![0.1; 1_600]);
        assert!(!line.is_idle(), "off hold the agent is heard again");
        // What the caller says meanwhile reaches the listener as silence: `live`'s own test.
    }

    #[tokio::test]
    async fn a_call_held_by_both_parties_stays_held_until_both_take_it_off() {
        let (line, input) = LoopbackLine::start(16_000);
        let line: Arc<dyn AudioOut> = Arc::new(line);
        let held = HoldableLine::new(line.clone(), input.audio.silencer());
        assert!(held.set_hold(Holder::Api, true));
        assert!(held.set_hold(Holder::FarEnd, true), "the far end's hold is its own");
        assert!(held.set_hold(Holder::FarEnd, false));
        assert!(held.held(), "the far end coming back does not undo the API's hold");
        held.play(1, vec![0.1; 16_000]);
        assert!(line.is_idle(), "still held: nothing is played");
        assert!(!held.set_hold(Holder::FarEnd, false), "nothing of the far end's to take off");
        assert!(held.set_hold(Holder::Api, false) && !held.held());
        // The other way round: the API takes its hold off while the far end still holds.
        held.set_hold(Holder::FarEnd, true);
        held.set_hold(Holder::Api, true);
        held.set_hold(Holder::Api, false);
        assert!(held.held(), "the API's unhold does not undo the far end's hold");
        held.set_hold(Holder::FarEnd, false);
        assert!(!held.held());
        held.play(2, vec![0.1; 1_600]);
        assert!(!line.is_idle(), "off hold the agent is heard again");
    }
}
