//! Bounded, fair pools for model inference, shared by every call in the process.
//!
//! Each kind of inference (speech-to-text, end-of-turn, speech synthesis) has a fixed number
//! of slots sized to the machine's cores and the threads each job uses. A job waits for a
//! slot, then runs on a blocking thread — never on the async runtime's threads. A free slot
//! goes to the most urgent waiter ([`Urgency`]): a caller waiting for a reply's first sentence
//! or a turn's final transcript goes before another call's third sentence or a partial
//! transcript; among equals, waiters are served in arrival order, so one busy call cannot
//! starve the others. A job whose caller stops waiting (a barge-in) still holds its slot until
//! it finishes, because the CPU is still busy with it; a waiter that gives up before its turn
//! passes the slot on. A job that can give way ([`InferencePool::try_run_yielding`], a partial
//! transcript that a newer one replaces anyway) starts only on a slot no one waits for and is
//! told to stop the moment an urgent job finds no free slot, so a caller's final transcript
//! never waits out another call's partial, and under load partials are not made at all.
//!
//! Speech-to-text has a slot per core, and a job takes both cores only when nothing else is
//! inferring ([`stt_threads`]): ggml's threads meet at every step of the graph, so a job
//! split over cores that another job also uses runs at the pace of its slowest thread.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::oneshot;

/// How soon a job's result is needed: a free slot goes to the most urgent waiter, and among
/// equals to the first to ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Urgency {
    /// Someone is waiting on it now: a turn's final transcript or end-of-turn check, the first
    /// sentence of a reply.
    Now,
    /// Needed later: the next sentences of a reply that is already playing, partial
    /// transcripts.
    Ahead,
}

pub struct InferencePool {
    name: &'static str,
    shared: Arc<Shared>,
    size: usize,
    jobs: AtomicU64,
    waited: AtomicU64,
    /// Running jobs told to give way to an urgent one.
    yielded: AtomicU64,
}

struct Shared {
    state: Mutex<Slots>,
}

struct Slots {
    free: usize,
    /// Waiters by (urgency, arrival): the first entry is served next.
    waiting: BTreeMap<(Urgency, u64), oneshot::Sender<Permit>>,
    arrivals: u64,
    /// Running jobs that give way to an urgent one: their stop flags, by arrival.
    yielding: BTreeMap<u64, Arc<AtomicBool>>,
}

/// A slot held; dropping it hands the slot to the next waiter (or frees it).
struct Permit {
    shared: Arc<Shared>,
    /// False for a permit that never reached its waiter (it gave up): dropping it must not
    /// release the slot a second time.
    armed: bool,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.armed {
            self.shared.release();
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn release(self: &Arc<Self>) {
        let mut slots = self.lock();
        while let Some((_, waiter)) = slots.waiting.pop_first() {
            match waiter.send(Permit { shared: self.clone(), armed: true }) {
                Ok(()) => return,
                // The waiter gave up (its call moved on): the next one gets the slot.
                Err(mut unused) => unused.armed = false,
            }
        }
        slots.free += 1;
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the {0} pool could not run the job (the process is shutting down)")]
pub struct PoolError(&'static str);

impl InferencePool {
    pub fn new(name: &'static str, slots: usize) -> Self {
        let size = slots.max(1);
        let shared = Arc::new(Shared { state: Mutex::new(Slots { free: size, waiting: BTreeMap::new(), arrivals: 0, yielding: BTreeMap::new() }) });
        InferencePool { name, shared, size, jobs: AtomicU64::new(0), waited: AtomicU64::new(0), yielded: AtomicU64::new(0) }
    }

    /// Runs `job`, needed [`Urgency::Ahead`] and able to give way, if a slot is free and no
    /// one waits for one; `None` (nothing run) otherwise. While it runs, an urgent job that
    /// finds no free slot sets `stop`, which `job` must heed soon (whisper.cpp checks it
    /// after its encoder and after every decoder step).
    pub fn try_run_yielding<T: Send + 'static>(&self, stop: Arc<AtomicBool>, job: impl FnOnce() -> T + Send + 'static) -> Option<impl std::future::Future<Output = Result<T, PoolError>>> {
        let (permit, id) = {
            let mut slots = self.shared.lock();
            if slots.free == 0 || !slots.waiting.is_empty() {
                return None;
            }
            slots.free -= 1;
            slots.arrivals += 1;
            let id = slots.arrivals;
            slots.yielding.insert(id, stop);
            (Permit { shared: self.shared.clone(), armed: true }, id)
        };
        self.jobs.fetch_add(1, Ordering::Relaxed);
        let (shared, name) = (self.shared.clone(), self.name);
        let running = tokio::task::spawn_blocking(move || {
            let _slot = permit;
            let result = job();
            shared.lock().yielding.remove(&id);
            result
        });
        Some(async move { running.await.map_err(|_| PoolError(name)) })
    }

    /// Runs `job` on a blocking thread once a slot is free, as needed [`Urgency::Now`].
    pub async fn run<T: Send + 'static>(&self, job: impl FnOnce() -> T + Send + 'static) -> Result<T, PoolError> {
        self.run_with(Urgency::Now, job).await
    }

    /// Runs `job` on a blocking thread once a slot is free and no more urgent job waits.
    pub async fn run_with<T: Send + 'static>(&self, urgency: Urgency, job: impl FnOnce() -> T + Send + 'static) -> Result<T, PoolError> {
        self.jobs.fetch_add(1, Ordering::Relaxed);
        let permit = self.acquire(urgency).await?;
        tokio::task::spawn_blocking(move || {
            let _slot = permit;
            job()
        })
        .await
        .map_err(|_| PoolError(self.name))
    }

    async fn acquire(&self, urgency: Urgency) -> Result<Permit, PoolError> {
        let waiting = {
            let mut slots = self.shared.lock();
            if slots.free > 0 && slots.waiting.is_empty() {
                slots.free -= 1;
                return Ok(Permit { shared: self.shared.clone(), armed: true });
            }
            self.waited.fetch_add(1, Ordering::Relaxed);
            if urgency == Urgency::Now {
                // Whatever can give way does: its slot comes free as soon as it stops.
                for (_, stop) in std::mem::take(&mut slots.yielding) {
                    stop.store(true, Ordering::Relaxed);
                    self.yielded.fetch_add(1, Ordering::Relaxed);
                }
            }
            let (tx, rx) = oneshot::channel();
            slots.arrivals += 1;
            let key = (urgency, slots.arrivals);
            slots.waiting.insert(key, tx);
            rx
        };
        waiting.await.map_err(|_| PoolError(self.name))
    }

    /// (jobs run, jobs that had to wait for a slot, slots).
    pub fn stats(&self) -> (u64, u64, usize) {
        (self.jobs.load(Ordering::Relaxed), self.waited.load(Ordering::Relaxed), self.size)
    }

    /// Jobs running now: the slots held (a slot is held from the moment a job gets it to the
    /// moment it ends).
    pub fn running(&self) -> usize {
        self.size - self.shared.lock().free
    }

    /// Running jobs told to stop so an urgent one could have their slot.
    pub fn yielded(&self) -> u64 {
        self.yielded.load(Ordering::Relaxed)
    }
}

/// Whisper: a slot per core; each job's threads are [`stt_threads`].
pub fn stt() -> &'static InferencePool {
    static POOL: OnceLock<InferencePool> = OnceLock::new();
    POOL.get_or_init(|| InferencePool::new("speech-to-text", cores()))
}

/// Threads for a speech-to-text job that has just started (call it inside the job):
/// [`super::STT_THREADS`] when it is the only inference running in the process, else one.
pub fn stt_threads() -> usize {
    if stt().running() <= 1 && tts().running() == 0 {
        super::STT_THREADS.min(cores())
    } else {
        1
    }
}

/// Runs a speech-to-text job's transcription (call it inside the job) on the threads it may
/// take now ([`stt_threads`]).
pub fn transcribing<T>(f: impl FnOnce() -> T) -> T {
    crate::stt::with_threads(stt_threads(), f)
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

pub(crate) fn cores() -> usize {
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
        let gate = pool.acquire(Urgency::Now).await.unwrap();
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_needed_now_overtakes_jobs_needed_later_and_a_waiter_that_leaves_passes_its_turn() {
        let pool = Arc::new(InferencePool::new("test", 1));
        let order = Arc::new(Mutex::new(Vec::new()));
        let gate = pool.acquire(Urgency::Now).await.unwrap();
        let job = |name: &'static str, urgency: Urgency| {
            let order = order.clone();
            Box::pin(pool.run_with(urgency, move || order.lock().unwrap().push(name)))
        };
        // Another call's later sentences queued first, then this call's first sentence.
        let mut later_1 = job("other call, sentence 2", Urgency::Ahead);
        let mut later_2 = job("other call, sentence 3", Urgency::Ahead);
        let mut gone = job("a partial no one waits for any more", Urgency::Now);
        let mut first = job("this call, sentence 1", Urgency::Now);
        for waiting in [&mut later_1, &mut later_2, &mut gone, &mut first] {
            assert!(futures::poll!(waiting).is_pending());
        }
        drop(gone);
        drop(gate);
        let (a, b, c) = futures::join!(later_1, later_2, first);
        a.unwrap();
        b.unwrap();
        c.unwrap();
        assert_eq!(*order.lock().unwrap(), vec!["this call, sentence 1", "other call, sentence 2", "other call, sentence 3"]);
        // Every slot came back: a new job runs at once.
        let slots = pool.shared.lock();
        assert!(slots.free == 1 && slots.waiting.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_that_can_give_way_stops_for_an_urgent_one_and_an_ordinary_one_does_not() {
        let pool = Arc::new(InferencePool::new("test", 1));
        // Another call's partial transcript holds the only slot, working until told to stop.
        let stop = Arc::new(AtomicBool::new(false));
        let (started_tx, started) = std::sync::mpsc::channel();
        let flag = stop.clone();
        let partial = pool
            .try_run_yielding(stop, move || {
                started_tx.send(()).unwrap();
                let began = std::time::Instant::now();
                while !flag.load(Ordering::Relaxed) && began.elapsed() < std::time::Duration::from_secs(30) {
                    std::thread::yield_now();
                }
                flag.load(Ordering::Relaxed)
            })
            .expect("the slot is free: the partial starts");
        let partial = tokio::spawn(partial);
        tokio::task::spawn_blocking(move || started.recv().unwrap()).await.unwrap();
        assert_eq!(pool.running(), 1);
        // No slot: another partial is not made at all (nothing queues for it).
        assert!(pool.try_run_yielding(Arc::new(AtomicBool::new(false)), || false).is_none());
        // A later-needed job waiting does not stop it; a final transcript does.
        let mut later = Box::pin(pool.run_with(Urgency::Ahead, || "later"));
        assert!(futures::poll!(&mut later).is_pending());
        assert_eq!(pool.yielded(), 0);
        // While anyone waits, a partial does not take a slot that comes free either.
        assert!(pool.try_run_yielding(Arc::new(AtomicBool::new(false)), || false).is_none());
        let now = pool.run(|| "final transcript");
        assert_eq!(now.await.unwrap(), "final transcript");
        assert!(partial.await.unwrap().unwrap(), "the partial was told to stop");
        assert_eq!(pool.yielded(), 1);
        assert_eq!(later.await.unwrap(), "later");
        assert_eq!(pool.running(), 0);
        assert_eq!(pool.stats().0, 3, "the partials that found no slot were never counted as jobs");
    }
}
