//! Bounded, fair pools for model inference, shared by every call in the process.
//!
//! Each kind of inference (speech-to-text, end-of-turn, speech synthesis) has a fixed number
//! of slots sized to the machine's cores and the threads each job uses. A job waits for a
//! slot, then runs on a blocking thread — never on the async runtime's threads. Waiters are
//! served in arrival order (tokio's semaphore is FIFO), so one busy call cannot starve the
//! others: its next sentence queues behind the other calls' requests. A job whose caller
//! stops waiting (a barge-in) still holds its slot until it finishes, because the CPU is
//! still busy with it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::sync::Semaphore;

pub struct InferencePool {
    name: &'static str,
    slots: Arc<Semaphore>,
    size: usize,
    jobs: AtomicU64,
    waited: AtomicU64,
}

#[derive(Debug, thiserror::Error)]
#[error("the {0} pool could not run the job (the process is shutting down)")]
pub struct PoolError(&'static str);

impl InferencePool {
    pub fn new(name: &'static str, slots: usize) -> Self {
        let size = slots.max(1);
        InferencePool { name, slots: Arc::new(Semaphore::new(size)), size, jobs: AtomicU64::new(0), waited: AtomicU64::new(0) }
    }

    /// Runs `job` on a blocking thread once a slot is free.
    pub async fn run<T: Send + 'static>(&self, job: impl FnOnce() -> T + Send + 'static) -> Result<T, PoolError> {
        self.jobs.fetch_add(1, Ordering::Relaxed);
        if self.slots.available_permits() == 0 {
            self.waited.fetch_add(1, Ordering::Relaxed);
        }
        let permit = self.slots.clone().acquire_owned().await.map_err(|_| PoolError(self.name))?;
        tokio::task::spawn_blocking(move || {
            let _slot = permit;
            job()
        })
        .await
        .map_err(|_| PoolError(self.name))
    }

    /// (jobs run, jobs that had to wait for a slot, slots).
    pub fn stats(&self) -> (u64, u64, usize) {
        (self.jobs.load(Ordering::Relaxed), self.waited.load(Ordering::Relaxed), self.size)
    }
}

/// Whisper uses both cores per job ([`super::STT_THREADS`]): one at a time.
pub fn stt() -> &'static InferencePool {
    static POOL: OnceLock<InferencePool> = OnceLock::new();
    POOL.get_or_init(|| InferencePool::new("speech-to-text", cores() / super::STT_THREADS))
}

/// Smart Turn: small (~10 ms a run); one per core.
pub fn end_of_turn() -> &'static InferencePool {
    static POOL: OnceLock<InferencePool> = OnceLock::new();
    POOL.get_or_init(|| InferencePool::new("end-of-turn", cores()))
}

/// Piper uses one thread per job ([`super::TTS_THREADS`]): one per core.
pub fn tts() -> &'static InferencePool {
    static POOL: OnceLock<InferencePool> = OnceLock::new();
    POOL.get_or_init(|| InferencePool::new("speech synthesis", cores() / super::TTS_THREADS))
}

fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jobs_never_exceed_the_slots_and_run_in_arrival_order() {
        let pool = Arc::new(InferencePool::new("test", 1));
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let order = Arc::new(Mutex::new(Vec::new()));
        // Hold the slot so every job queues behind it, in the order each is first polled.
        let gate = pool.slots.clone().acquire_owned().await.unwrap();
        let mut jobs = Vec::new();
        for i in 0..4 {
            let (running, most, order) = (running.clone(), most.clone(), order.clone());
            let mut job = Box::pin(pool.run(move || {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                order.lock().unwrap().push(i);
                running.fetch_sub(1, Ordering::SeqCst);
            }));
            assert!(futures::poll!(&mut job).is_pending(), "the slot is held: the job waits");
            jobs.push(job);
        }
        drop(gate);
        // Polled together: the order they run in is the pool's, not this loop's.
        for result in futures::future::join_all(jobs.into_iter().rev()).await {
            result.unwrap();
        }
        assert_eq!(most.load(Ordering::SeqCst), 1);
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3]);
        assert_eq!(pool.stats(), (4, 4, 1));
    }
}
