//! The live-audio edge from a transport to the listener.
//!
//! Bounded, and never blocking the transport: when the listener falls behind, the *oldest*
//! chunk is dropped — stale audio is worth less than fresh — and the drop is counted, so a
//! call that cannot keep up shows it in its report instead of drifting further behind.
//!
//! Audio that comes before the listener first reads (a line opened while the call's models
//! were still loading) is kept the same way, its freshest second, but what falls out then is
//! not the listener lagging: it is counted apart (`unheard`, which only decides the one debug
//! line) and not warned of.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

struct Shared {
    queue: Mutex<VecDeque<Vec<f32>>>,
    capacity: usize,
    notify: Notify,
    closed: AtomicBool,
    dropped: AtomicU64,
    /// The listener has asked for audio: from now on a drop means it is behind.
    listening: AtomicBool,
    /// Chunks dropped before the listener started.
    unheard: AtomicU64,
    /// The call is on hold: the listener gets silence of the same length instead.
    silenced: AtomicBool,
}

/// Creates the edge; `capacity` chunks are buffered before the oldest is dropped.
pub fn channel(capacity: usize) -> (LiveSender, LiveReceiver) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(VecDeque::with_capacity(capacity)),
        capacity: capacity.max(1),
        notify: Notify::new(),
        closed: AtomicBool::new(false),
        dropped: AtomicU64::new(0),
        listening: AtomicBool::new(false),
        unheard: AtomicU64::new(0),
        silenced: AtomicBool::new(false),
    });
    (LiveSender { shared: shared.clone() }, LiveReceiver { shared })
}

pub struct LiveSender {
    shared: Arc<Shared>,
}

impl LiveSender {
    /// Queues a chunk, dropping the oldest if full.
    pub fn push(&self, chunk: Vec<f32>) {
        let mut queue = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
        if queue.len() >= self.shared.capacity {
            queue.pop_front();
            if self.shared.listening.load(Ordering::Acquire) {
                let dropped = self.shared.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::warn!(dropped, "listener behind real time: dropped the oldest caller audio");
            } else if self.shared.unheard.fetch_add(1, Ordering::Relaxed) == 0 {
                tracing::debug!("caller audio before the listener started: keeping its freshest chunks");
            }
        }
        queue.push_back(chunk);
        drop(queue);
        self.shared.notify.notify_one();
    }

    /// Chunks dropped so far because the listener fell behind.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for LiveSender {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.notify.notify_one();
    }
}

pub struct LiveReceiver {
    shared: Arc<Shared>,
}

impl LiveReceiver {
    /// The next chunk, or `None` once the sender is gone and the queue is drained.
    pub async fn recv(&mut self) -> Option<Vec<f32>> {
        self.shared.listening.store(true, Ordering::Release);
        loop {
            let notified = self.shared.notify.notified();
            if let Some(mut chunk) = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front() {
                if self.shared.silenced.load(Ordering::Acquire) {
                    chunk.fill(0.0);
                }
                return Some(chunk);
            }
            if self.shared.closed.load(Ordering::Acquire) {
                return None;
            }
            notified.await;
        }
    }

    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// A handle that reads the drop count after the receiver has moved into its stage.
    pub fn drop_counter(&self) -> DropCounter {
        DropCounter { shared: self.shared.clone() }
    }

    /// A handle that turns what the listener hears into silence and back (a call on hold).
    pub fn silencer(&self) -> Silencer {
        Silencer { shared: self.shared.clone() }
    }
}

/// Silences the edge while set (see [`LiveReceiver::silencer`]).
#[derive(Clone)]
pub struct Silencer {
    shared: Arc<Shared>,
}

impl Silencer {
    pub fn set(&self, silent: bool) {
        self.shared.silenced.store(silent, Ordering::Release);
    }
}

/// Reads how many chunks the edge dropped (see [`LiveReceiver::drop_counter`]).
pub struct DropCounter {
    shared: Arc<Shared>,
}

impl DropCounter {
    pub fn get(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_silenced_edge_delivers_silence_of_the_same_length() {
        let (tx, mut rx) = channel(4);
        let silencer = rx.silencer();
        tx.push(vec![0.5; 3]);
        silencer.set(true);
        tx.push(vec![0.5; 3]);
        assert_eq!(rx.recv().await, Some(vec![0.0; 3]), "a chunk read while on hold is silence, even if it came before");
        assert_eq!(rx.recv().await, Some(vec![0.0; 3]));
        silencer.set(false);
        tx.push(vec![0.5; 2]);
        assert_eq!(rx.recv().await, Some(vec![0.5; 2]));
    }

    #[tokio::test]
    async fn the_oldest_chunk_is_dropped_and_counted() {
        let (tx, mut rx) = channel(2);
        tx.push(vec![-1.0]);
        assert_eq!(rx.recv().await, Some(vec![-1.0]));
        for i in 0..4 {
            tx.push(vec![i as f32]);
        }
        assert_eq!(tx.dropped(), 2);
        assert_eq!(rx.recv().await, Some(vec![2.0]));
        assert_eq!(rx.recv().await, Some(vec![3.0]));
        drop(tx);
        assert_eq!(rx.recv().await, None);
        assert_eq!((rx.dropped(), rx.shared.unheard.load(Ordering::Relaxed)), (2, 0));
    }

    #[tokio::test]
    async fn audio_before_the_listener_starts_keeps_its_freshest_chunks_and_is_not_lag() {
        let (tx, mut rx) = channel(2);
        for i in 0..5 {
            tx.push(vec![i as f32]);
        }
        let unheard = |tx: &LiveSender| tx.shared.unheard.load(Ordering::Relaxed);
        assert_eq!((tx.dropped(), unheard(&tx)), (0, 3), "nobody was listening yet: not the listener behind");
        assert_eq!(rx.recv().await, Some(vec![3.0]), "the freshest audio is kept for the listener");
        assert_eq!(rx.recv().await, Some(vec![4.0]));
        for i in 5..8 {
            tx.push(vec![i as f32]);
        }
        assert_eq!((tx.dropped(), unheard(&tx)), (1, 3), "once it listens, a drop is lag");
    }
}
