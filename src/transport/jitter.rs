//! Caller audio from RTP put back on a clock: a jitter buffer.
//!
//! Packets cross a network: they arrive bunched, out of order, twice or not at all, and a
//! peer that suppresses silence sends nothing while its caller is quiet. The listener needs
//! what the caller's microphone heard, in order and in time — the end of a turn *is* a
//! stretch of silence. So packets are placed by their RTP timestamp (the sampling instant),
//! and the line's 20 ms clock takes one frame per tick, [`DELAY`] behind the newest audio:
//! what is missing at its turn (lost, or never sent) is played as silence.
//!
//! The delay adapts. A peer that stalls and then sends a burst (a busy PBX, a congested
//! link) delivers packets after their turn; dropping them would cut words out of the
//! caller's speech. A late packet that follows everything already played moves playout
//! back to it, so the burst plays whole, a little later ([`MOST_EXTRA`] at most); the
//! delay so added is given back on quiet frames, which are skipped while it lasts.
//!
//! No sockets and no time here: the caller of [`JitterBuffer::frame`] is the clock.

use std::collections::BTreeMap;

/// Samples per clock tick: 20 ms at the 8 kHz of an RTP audio clock for G.711.
pub const FRAME: i64 = 160;
/// How far playout runs behind the first packet: 40 ms of reordering or lateness absorbed.
pub const DELAY: i64 = 2 * FRAME;
/// A packet further ahead than this (500 ms) is no early arrival: the peer's clock jumped.
const AHEAD: i64 = 4_000;
/// Packets in a row that came too late or too early before playout follows them: one
/// straggler is dropped, a clock that jumped (or drifted a buffer's worth) is followed.
const STRAYS_FOLLOWED: u32 = 3;
/// The most packets held at once (a second of 20 ms packets, twice over): a peer sending
/// slivers cannot make the buffer large.
const MOST_HELD: usize = 100;
/// The most delay late packets may add to [`DELAY`] (240 ms): beyond it they are dropped,
/// so a peer's lateness cannot make the caller's turns end ever later.
pub const MOST_EXTRA: i64 = 12 * FRAME;
/// A frame whose every sample is below this (about -40 dBFS) is quiet: skipping it to give
/// back added delay loses no speech.
const QUIET: f32 = 0.01;

/// Audio packets held until their turn to play.
#[derive(Default)]
pub struct JitterBuffer {
    ssrc: Option<u32>,
    /// The timestamp of the next sample to play, extended past the 32-bit wrap; `None` until
    /// the first packet.
    next: Option<i64>,
    /// Packets by extended timestamp.
    held: BTreeMap<i64, Vec<f32>>,
    /// Packets in a row outside playout's window.
    strays: u32,
    /// Where the audio played so far ends (extended timestamp): a late packet at or after it
    /// fills a gap that was played as silence; one before it comes after its neighbours.
    played_to: i64,
    /// Delay added beyond [`DELAY`] by late packets and not yet given back, in samples.
    extra: i64,
    /// Packets dropped for coming after their turn (or with the buffer full).
    pub late: u64,
    /// Late packets played after all, playout moved back to them.
    pub waited: u64,
    /// Jumps of the peer's clock that playout followed.
    pub resynced: u64,
}

impl JitterBuffer {
    /// Takes a packet's decoded audio: `timestamp` is its first sample's RTP timestamp.
    pub fn put(&mut self, ssrc: u32, timestamp: u32, samples: Vec<f32>) {
        if samples.is_empty() {
            return;
        }
        let next = match (self.ssrc == Some(ssrc), self.next) {
            (true, Some(next)) => next,
            // A new stream (the first, or the peer switched sources): playout starts on it.
            _ => {
                self.ssrc = Some(ssrc);
                self.restart(timestamp as i64)
            }
        };
        // The nearest extended timestamp that reads as `timestamp`.
        let at = next + timestamp.wrapping_sub(next as u32) as i32 as i64;
        let mut late = at + samples.len() as i64 <= next;
        // A burst after a stall: this packet's turn was played as silence, nothing after it
        // has played yet. Playout goes back to it while the added delay stays bounded.
        if late && at >= self.played_to && self.extra + (next - at) <= MOST_EXTRA {
            self.extra += next - at;
            self.waited += 1;
            self.next = Some(at);
            late = false;
        }
        if late || at > next + AHEAD {
            self.strays += 1;
            if self.strays < STRAYS_FOLLOWED {
                self.late += late as u64;
                return;
            }
            self.resynced += 1;
            self.restart(at);
        }
        self.strays = 0;
        if self.held.len() >= MOST_HELD && !self.held.contains_key(&at) {
            self.late += 1;
            return;
        }
        self.held.insert(at, samples);
    }

    /// The next frame of the caller, silence where no audio came for it; `None` before the
    /// first packet (there is no caller yet to hear).
    pub fn frame(&mut self) -> Option<Vec<f32>> {
        let frame = self.take()?;
        // Delay added for late packets is given back a quiet frame at a time.
        if self.extra >= FRAME && frame.iter().all(|s| s.abs() < QUIET) {
            self.extra -= FRAME;
            return self.take();
        }
        Some(frame)
    }

    /// The frame at the playout point, which moves past it.
    fn take(&mut self) -> Option<Vec<f32>> {
        let next = self.next?;
        let end = next + FRAME;
        let mut frame = vec![0.0f32; FRAME as usize];
        for (&at, samples) in self.held.range(..end) {
            let from = at.max(next);
            let to = (at + samples.len() as i64).min(end);
            for t in from..to {
                frame[(t - next) as usize] = samples[(t - at) as usize];
            }
            self.played_to = self.played_to.max(to);
        }
        self.held.retain(|&at, samples| at + samples.len() as i64 > end);
        self.next = Some(end);
        Some(frame)
    }

    /// Playout starts over [`DELAY`] before `at` (returned); what was held is dropped.
    fn restart(&mut self, at: i64) -> i64 {
        self.held.clear();
        self.strays = 0;
        self.extra = 0;
        self.played_to = at - DELAY;
        self.next = Some(at - DELAY);
        at - DELAY
    }

    /// The delay late packets have added to [`DELAY`] and playout has not yet given back, in
    /// samples.
    pub fn extra(&self) -> i64 {
        self.extra
    }

    /// Audio held and not yet played, in samples.
    pub fn held(&self) -> usize {
        self.held.values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A packet whose every sample is `value`.
    fn packet(value: f32) -> Vec<f32> {
        vec![value; FRAME as usize]
    }

    /// The value each frame played carries (its first sample; 0 for silence).
    fn play(buffer: &mut JitterBuffer, frames: usize) -> Vec<f32> {
        (0..frames).filter_map(|_| buffer.frame()).map(|frame| frame[0]).collect()
    }

    #[test]
    fn nothing_plays_before_the_first_packet_then_it_plays_after_the_delay() {
        let mut buffer = JitterBuffer::default();
        assert!(buffer.frame().is_none());
        buffer.put(7, 1_000, packet(1.0));
        buffer.put(7, 1_160, packet(2.0));
        assert_eq!(play(&mut buffer, 5), vec![0.0, 0.0, 1.0, 2.0, 0.0]);
        assert_eq!(buffer.held(), 0);
    }

    #[test]
    fn packets_out_of_order_play_in_order_and_a_lost_one_is_silence_in_its_place() {
        let mut buffer = JitterBuffer::default();
        buffer.put(7, 0, packet(1.0));
        buffer.put(7, 320, packet(3.0));
        buffer.put(7, 160, packet(2.0));
        // 480 never comes; 640 does.
        buffer.put(7, 640, packet(5.0));
        buffer.put(7, 640, packet(5.0)); // a duplicate
        assert_eq!(play(&mut buffer, 7), vec![0.0, 0.0, 1.0, 2.0, 3.0, 0.0, 5.0]);
        // The lost packet coming after its turn is dropped, not played out of place.
        buffer.put(7, 480, packet(4.0));
        assert_eq!(buffer.late, 1);
        assert_eq!(play(&mut buffer, 1), vec![0.0]);
    }

    #[test]
    fn a_peer_that_stops_sending_while_its_caller_is_quiet_is_heard_as_silence_in_time() {
        let mut buffer = JitterBuffer::default();
        buffer.put(7, 0, packet(1.0));
        let mut played = play(&mut buffer, 3);
        // A second of silence suppressed: nothing arrives, the clock goes on.
        played.extend(play(&mut buffer, 50));
        // The caller speaks again: the timestamp says a second passed, and that is where it plays.
        buffer.put(7, 160 + 8_000, packet(2.0));
        played.extend(play(&mut buffer, 3));
        assert_eq!(played.len(), 56);
        assert_eq!(played.iter().position(|&v| v == 1.0), Some(2));
        assert_eq!(played.iter().position(|&v| v == 2.0), Some(2 + 1 + 50));
        assert!(played.iter().filter(|&&v| v != 0.0).count() == 2, "silence everywhere else: {played:?}");
    }

    #[test]
    fn packets_of_other_lengths_are_cut_to_the_clocks_frames() {
        let mut buffer = JitterBuffer::default();
        // 30 ms packets (240 samples), as some peers send.
        for (i, value) in [1.0, 2.0].into_iter().enumerate() {
            buffer.put(7, 240 * i as u32, vec![value; 240]);
        }
        let frames: Vec<Vec<f32>> = (0..5).filter_map(|_| buffer.frame()).collect();
        let samples: Vec<f32> = frames.concat();
        assert_eq!(samples.len(), 800);
        let start = DELAY as usize;
        assert!(samples[..start].iter().all(|&v| v == 0.0));
        assert!(samples[start..start + 240].iter().all(|&v| v == 1.0));
        assert!(samples[start + 240..start + 480].iter().all(|&v| v == 2.0));
        assert!(samples[start + 480..].iter().all(|&v| v == 0.0));
    }

    #[test]
    fn timestamps_wrap_and_a_new_source_restarts_playout() {
        let mut buffer = JitterBuffer::default();
        let first = u32::MAX - 159;
        buffer.put(7, first, packet(1.0));
        buffer.put(7, first.wrapping_add(160), packet(2.0));
        assert_eq!(play(&mut buffer, 4), vec![0.0, 0.0, 1.0, 2.0]);
        // The peer switches its media source: a new SSRC with timestamps of its own.
        buffer.put(9, 123_456, packet(3.0));
        assert_eq!(play(&mut buffer, 3), vec![0.0, 0.0, 3.0]);
        assert_eq!(buffer.resynced, 0);
    }

    #[test]
    fn a_clock_that_jumps_is_followed_a_straggler_is_not_and_nothing_is_held_without_bound() {
        let mut buffer = JitterBuffer::default();
        buffer.put(7, 0, packet(1.0));
        assert_eq!(play(&mut buffer, 3), vec![0.0, 0.0, 1.0]);
        // One packet far behind or far ahead is a straggler (or garbage): dropped.
        buffer.put(7, 0u32.wrapping_sub(16_000), packet(9.0));
        buffer.put(7, 80_000, packet(9.0));
        buffer.put(7, 160, packet(2.0));
        assert_eq!(play(&mut buffer, 1), vec![2.0]);
        assert_eq!((buffer.late, buffer.resynced), (1, 0));
        // Ten seconds ahead, packet after packet: playout follows, after the delay.
        for (i, value) in [3.0, 4.0, 5.0, 6.0].into_iter().enumerate() {
            buffer.put(7, 80_000 + 160 * i as u32, packet(value));
        }
        assert_eq!(play(&mut buffer, 4), vec![0.0, 0.0, 5.0, 6.0], "the first two were strays");
        // Back in time, packet after packet (a clock that jumped back): followed too.
        for (i, value) in [7.0, 8.0, 9.0].into_iter().enumerate() {
            buffer.put(7, 40_000 + 160 * i as u32, packet(value));
        }
        assert_eq!(play(&mut buffer, 3), vec![0.0, 0.0, 9.0]);
        assert_eq!(buffer.resynced, 2);
        // A flood of packets ahead holds at most about half a second.
        for i in 0..1_000u32 {
            buffer.put(7, 40_000 + 160 * i, packet(4.0));
        }
        assert!(buffer.held() <= (AHEAD + DELAY + FRAME) as usize, "{}", buffer.held());
        // Slivers of one sample each, thousands of them: only so many are held.
        let mut buffer = JitterBuffer::default();
        for i in 0..4_000u32 {
            buffer.put(7, i, vec![0.5]);
        }
        assert!(buffer.held.len() <= MOST_HELD && buffer.late > 3_000, "{} held", buffer.held.len());
    }

    #[test]
    fn a_peer_whose_clock_runs_slow_is_waited_for_within_the_bound_then_caught_up_with() {
        let mut buffer = JitterBuffer::default();
        let mut played = Vec::new();
        // Its packets come a little later each time than ours expect them.
        for i in 0..300u32 {
            buffer.put(7, 160 * i, packet(1.0));
            played.extend(play(&mut buffer, 1));
            if i % 10 == 9 {
                played.extend(play(&mut buffer, 1)); // our clock ran one frame further
            }
            assert!(buffer.extra() <= MOST_EXTRA);
        }
        // Our clock ran 30 frames further than the peer's audio: those are silence. The
        // first dozen late packets are waited for (nothing of the caller is lost while the
        // delay allows), then playout catches up with the peer, losing a few packets.
        let silent = played.iter().skip(2).filter(|&&v| v == 0.0).count();
        assert!(silent <= 32, "{silent} of {} silent", played.len());
        assert!(buffer.waited >= 10, "{} waited for", buffer.waited);
        assert!(buffer.late <= 6 && buffer.resynced >= 1, "{} late, {} resynced", buffer.late, buffer.resynced);
    }

    #[test]
    fn a_burst_after_a_stall_plays_whole_and_the_delay_is_given_back_on_quiet_frames() {
        let mut buffer = JitterBuffer::default();
        buffer.put(7, 0, packet(1.0));
        assert_eq!(play(&mut buffer, 3), vec![0.0, 0.0, 1.0]);
        // The peer stalls 100 ms: our clock plays five frames of nothing; then its packets
        // for those turns come at once, each after its turn, followed by the next ones.
        assert_eq!(play(&mut buffer, 5), vec![0.0; 5]);
        for i in 1..=8u32 {
            buffer.put(7, 160 * i, packet(1.0 + i as f32));
        }
        assert_eq!(buffer.late, 0, "none of the burst is dropped");
        assert_eq!(buffer.extra(), 5 * FRAME, "the stall was added to the delay");
        assert_eq!(play(&mut buffer, 8), vec![2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0], "in order, nothing lost");
        // A duplicate of a packet already played is no gap to fill: dropped, not played twice.
        buffer.put(7, 160 * 4, packet(5.0));
        assert_eq!(buffer.late, 1);
        // The caller goes quiet: the delay is given back, a quiet frame skipped per turn.
        for i in 9..30u32 {
            buffer.put(7, 160 * i, packet(0.001));
        }
        assert_eq!(play(&mut buffer, 8).len(), 8);
        assert_eq!(buffer.extra(), 0);
        assert_eq!(buffer.held(), 8 * FRAME as usize, "13 frames played in 8 turns");
        // A stall longer than the most that may be added loses its packets instead.
        let mut buffer = JitterBuffer::default();
        buffer.put(7, 0, packet(1.0));
        play(&mut buffer, 3 + 20);
        buffer.put(7, 160, packet(2.0));
        assert_eq!((buffer.late, buffer.extra()), (1, 0), "more than {MOST_EXTRA} samples late is dropped");
    }
}
