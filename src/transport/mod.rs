//! Transports: where a call's audio comes from and goes to.
//!
//! A transport delivers caller audio at its own rate and plays agent audio out. Agent audio
//! is queued in *segments* (one per spoken sentence) so that after a barge-in the turn manager
//! can ask how much of each segment the caller actually heard, and `clear` drops everything
//! not yet played — the equivalent of Twilio's `clear` or flushing an RTP queue.

pub mod hold;
pub mod jitter;
pub mod live;
pub mod played;
pub mod playout;
pub mod recorder;
pub mod sip;
pub mod stream;
pub mod twilio;
pub mod webcall;
pub mod loopback;

use std::time::Duration;

use tokio::sync::mpsc;

/// What a transport delivers into a call: live audio, and keypad digits (out of band, as
/// Twilio and RTP telephone-events carry them). Digits are few: that channel is unbounded.
pub struct CallInput {
    pub audio: live::LiveReceiver,
    pub dtmf: mpsc::UnboundedReceiver<char>,
}

/// The agent's side of the line.
pub trait AudioOut: Send + Sync {
    /// The transport's sample rate.
    fn rate(&self) -> u32;
    /// The call's timeline: time since the call started, as the audio sees it.
    fn now(&self) -> Duration;
    /// Queues one segment of agent audio (at `rate()`).
    fn play(&self, segment: u64, samples: Vec<f32>);
    /// Drops every queued sample not yet played (and ends a pause); returns when it was cleared.
    fn clear(&self) -> Duration;
    /// Stops playing without dropping anything (the caller may be starting a barge-in);
    /// returns when the audio stopped.
    fn pause(&self) -> Duration;
    /// Plays on from where [`AudioOut::pause`] stopped.
    fn resume(&self);
    /// Fraction (0..=1) of `segment` that has been played.
    fn heard(&self, segment: u64) -> f32;
    /// True when nothing is queued or playing.
    fn is_idle(&self) -> bool;
    /// When the first sample of `segment` went out, if it has.
    fn started_at(&self, segment: u64) -> Option<Duration>;
    /// Tells the far end to hang up.
    fn hang_up(&self);
    /// Sends DTMF digits to the far end.
    fn send_dtmf(&self, digits: &str);
    /// Transfers the call (a transport without telephony records the request).
    fn transfer(&self, destination: &str);
    /// Records both sides from now on, one clock step at a time, until the line closes.
    fn record(&self, recorder: recorder::Recorder);
    /// The call is on hold (see [`hold::HoldableLine`]): the agent neither hears nor speaks.
    fn held(&self) -> bool {
        false
    }
    /// Tells the far end that we hold the call (`on`) or take it off hold — a SIP re-INVITE
    /// offering `sendonly`, so that a phone shows it and a PBX plays its music. A line that
    /// cannot say does nothing: the hold is ours alone.
    fn hold_far_end(&self, _on: bool) {}
    /// The agent audio this line plays, step by step, for cancelling its echo on the
    /// caller's side; `None` for a line that cannot say.
    fn played(&self) -> Option<played::Played> {
        None
    }
}
