//! Bounded, fair pools for model inference, shared by every call in the process.
//!
//! Speech-to-text and speech synthesis draw on one [`Budget`] of slots, a slot per core this
//! process may use: two pools sized by cores each would run two jobs per core, and each of
//! them — the caller's final transcript too — at half its speed. Smart Turn's end-of-turn
//! check (~35 ms on one thread) has slots of its own: its answer and the final transcript
//! decide the turn together, and it should not wait out a sentence's synthesis for a slot.
//! A job waits for a slot, then runs on a blocking thread — never on the async runtime's
//! threads. A free slot
//! goes to the most urgent waiter ([`Urgency`]): a caller waiting for a reply's first sentence
//! or a turn's final transcript goes before another call's third sentence or a partial
//! transcript; among equals, waiters are served in arrival order, so one busy call cannot
//! starve the others. A job whose caller stops waiting (a barge-in) still holds its slot until
//! it finishes, because the CPU is still busy with it; a waiter that gives up before its turn
//! passes the slot on. A job that can give way ([`InferencePool::try_run_yielding`], a partial
//! transcript that a newer one replaces anyway) starts only when no inference runs and no one
//! waits, and is told to stop the moment an urgent job finds no free slot, so a caller's final
//! transcript never waits out another call's partial, and under load partials are not made at
//! all.
//!
//! A job may take several slots at once ([`InferencePool::run_on_cores`]), one per thread it
//! runs: a transcription takes both cores when both are free, and then nothing else of the
//! budget runs beside it. ggml's threads meet at every step of the graph, spinning while they
//! wait, so a job whose threads share a core with another job's runs at the pace of its
//! descheduled thread: measured, a 2-thread transcription beside a 1-thread one took 1.3 s
//! against 0.32 s alone and 0.63 s on one thread (`docs/decisions.md`).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
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

/// Slots shared by one or more [`InferencePool`]s: at most this many jobs of all their kinds
/// run at once.
#[derive(Clone)]
pub struct Budget(Arc<Shared>);

impl Budget {
    pub fn new(slots: usize) -> Self {
        let size = slots.max(1);
        Budget(Arc::new(Shared { size, state: Mutex::new(Slots { free: size, waiting: BTreeMap::new(), arrivals: 0, yielding: BTreeMap::new() }) }))
    }

    /// Slots held now by jobs of every kind.
    pub fn running(&self) -> usize {
        self.0.size - self.0.lock().free
    }
}

/// One kind of inference and its figures, drawing slots from a [`Budget`].
pub struct InferencePool {
    name: &'static str,
    shared: Arc<Shared>,
    /// This kind's jobs holding a slot now.
    running: Arc<AtomicUsize>,
    jobs: AtomicU64,
    waited: AtomicU64,
    /// Running jobs told to give way to an urgent one.
    yielded: AtomicU64,
    /// The latest jobs' waits for a slot and times on it, and how many ever finished.
    recent: Mutex<VecDeque<JobTiming>>,
    finished: AtomicU64,
}

/// One finished job: how long it waited for a slot, then how long it held one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobTiming {
    pub urgency: Urgency,
    pub waited: std::time::Duration,
    pub ran: std::time::Duration,
}

/// How many finished jobs a pool remembers.
const RECENT_JOBS: usize = 4096;

struct Shared {
    size: usize,
    state: Mutex<Slots>,
}

struct Slots {
    free: usize,
    /// Waiters of every kind by (urgency, arrival): the first entry is served next.
    waiting: BTreeMap<(Urgency, u64), Waiter>,
    arrivals: u64,
    /// Running jobs that give way to an urgent one: their stop flags, by arrival.
    yielding: BTreeMap<u64, Arc<AtomicBool>>,
}

impl Slots {
    /// Whether a job asking now may take a slot: one is free and no one waits for one.
    fn free_for_newcomer(&self) -> bool {
        self.free > 0 && self.waiting.is_empty()
    }
}

struct Waiter {
    permit: oneshot::Sender<Permit>,
    /// The running count of the waiter's kind, which its permit holds up.
    running: Arc<AtomicUsize>,
    /// The most slots the waiter's job can use (its threads).
    most: usize,
}

/// Slots held by one job; dropping it hands them to the next waiters (or frees them).
struct Permit {
    shared: Arc<Shared>,
    running: Arc<AtomicUsize>,
    /// How many slots: the threads the job may run.
    slots: usize,
    /// False for a permit that never reached its waiter (it gave up): dropping it must not
    /// release the slots a second time.
    armed: bool,
}

impl Permit {
    /// `slots` just taken by a job of the kind counted by `running` (call with the lock held).
    fn new(shared: &Arc<Shared>, running: &Arc<AtomicUsize>, slots: usize) -> Self {
        running.fetch_add(1, Ordering::Relaxed);
        Permit { shared: shared.clone(), running: running.clone(), slots, armed: true }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.armed {
            self.shared.release(&self.running, self.slots);
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Up to `most` slots (at least one) for a job of the kind counted by `running`, if one is
    /// free and no one waits for one.
    fn try_take(self: &Arc<Self>, running: &Arc<AtomicUsize>, most: usize) -> Option<Permit> {
        let mut slots = self.lock();
        self.take_free(&mut slots, running, most)
    }

    /// [`Self::try_take`] with the lock held.
    fn take_free(self: &Arc<Self>, slots: &mut Slots, running: &Arc<AtomicUsize>, most: usize) -> Option<Permit> {
        if !slots.free_for_newcomer() {
            return None;
        }
        let take = most.clamp(1, slots.free);
        slots.free -= take;
        Some(Permit::new(self, running, take))
    }

    /// A job of the kind counted by `running` ended: its `back` slots go to the next waiters,
    /// one each, and the last of them may take what is left, as many as it can use.
    fn release(self: &Arc<Self>, running: &AtomicUsize, mut back: usize) {
        let mut slots = self.lock();
        running.fetch_sub(1, Ordering::Relaxed);
        while back > 0 {
            let Some((_, waiter)) = slots.waiting.pop_first() else { break };
            let take = if slots.waiting.is_empty() { back.min(waiter.most) } else { 1 };
            match waiter.permit.send(Permit::new(self, &waiter.running, take)) {
                Ok(()) => back -= take,
                // The waiter gave up (its call moved on): the next one gets the slot.
                Err(mut unused) => {
                    unused.armed = false;
                    unused.running.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
        slots.free += back;
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the {0} pool could not run the job (the process is shutting down)")]
pub struct PoolError(&'static str);

impl InferencePool {
    /// A pool with slots of its own.
    pub fn new(name: &'static str, slots: usize) -> Self {
        Self::sharing(name, &Budget::new(slots))
    }

    /// A pool whose jobs take their slots from `budget`, beside other pools' jobs.
    pub fn sharing(name: &'static str, budget: &Budget) -> Self {
        InferencePool {
            name,
            shared: budget.0.clone(),
            running: Arc::new(AtomicUsize::new(0)),
            jobs: AtomicU64::new(0),
            waited: AtomicU64::new(0),
            yielded: AtomicU64::new(0),
            recent: Mutex::new(VecDeque::new()),
            finished: AtomicU64::new(0),
        }
    }

    /// Runs `job`, needed [`Urgency::Ahead`] and able to give way, if no job of any kind in
    /// its budget runs and no one waits; `None` (nothing run) otherwise. It takes up to
    /// `most` slots (all are free) and is told how many. While it runs, an urgent job that
    /// finds no free slot sets `stop`, which `job` must heed soon (whisper.cpp checks it
    /// after its encoder and after every decoder step).
    pub fn try_run_yielding<T: Send + 'static>(&self, stop: Arc<AtomicBool>, most: usize, job: impl FnOnce(usize) -> T + Send + 'static) -> Option<impl std::future::Future<Output = Result<T, PoolError>>> {
        let (permit, id) = {
            let mut slots = self.shared.lock();
            if slots.free < self.shared.size {
                return None;
            }
            let permit = self.shared.take_free(&mut slots, &self.running, most)?;
            slots.arrivals += 1;
            let id = slots.arrivals;
            slots.yielding.insert(id, stop);
            (permit, id)
        };
        self.jobs.fetch_add(1, Ordering::Relaxed);
        let (shared, name) = (self.shared.clone(), self.name);
        let running = tokio::task::spawn_blocking(move || {
            let cores = permit.slots;
            let _slots = permit;
            let result = job(cores);
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
        self.run_on_cores(urgency, 1, move |_| job()).await
    }

    /// Like [`Self::run_with`] for a job that can spread over up to `most` threads: it takes
    /// as many slots as are free then (at least one) and is told how many, its thread count.
    /// Nothing else of the budget runs on the cores it took.
    pub async fn run_on_cores<T: Send + 'static>(&self, urgency: Urgency, most: usize, job: impl FnOnce(usize) -> T + Send + 'static) -> Result<T, PoolError> {
        self.jobs.fetch_add(1, Ordering::Relaxed);
        let asked = std::time::Instant::now();
        let permit = self.acquire_up_to(urgency, most).await?;
        self.run_permitted(permit, urgency, asked.elapsed(), job).await
    }

    /// Whether a job asked for now would find a slot free with no one waiting: a cheap look
    /// before preparing the input of a [`Self::try_run_on_cores`] job (which checks again).
    pub fn has_free_slot(&self) -> bool {
        self.shared.lock().free_for_newcomer()
    }

    /// Like [`Self::run_on_cores`], but only if a slot is free now and no one waits for one;
    /// `None` (nothing run) otherwise. For work worth doing only on a core nobody else needs.
    pub fn try_run_on_cores<T: Send + 'static>(&self, urgency: Urgency, most: usize, job: impl FnOnce(usize) -> T + Send + 'static) -> Option<impl std::future::Future<Output = Result<T, PoolError>> + '_> {
        let permit = self.shared.try_take(&self.running, most)?;
        self.jobs.fetch_add(1, Ordering::Relaxed);
        Some(self.run_permitted(permit, urgency, std::time::Duration::ZERO, job))
    }

    async fn run_permitted<T: Send + 'static>(&self, permit: Permit, urgency: Urgency, waited: std::time::Duration, job: impl FnOnce(usize) -> T + Send + 'static) -> Result<T, PoolError> {
        let (result, ran) = tokio::task::spawn_blocking(move || {
            let cores = permit.slots;
            let _slots = permit;
            let started = std::time::Instant::now();
            let result = job(cores);
            (result, started.elapsed())
        })
        .await
        .map_err(|_| PoolError(self.name))?;
        self.record(JobTiming { urgency, waited, ran });
        Ok(result)
    }

    fn record(&self, timing: JobTiming) {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() == RECENT_JOBS {
            recent.pop_front();
        }
        recent.push_back(timing);
        self.finished.fetch_add(1, Ordering::Relaxed);
    }

    /// How many of this kind's jobs (run with [`Self::run_with`]) have finished.
    pub fn finished(&self) -> u64 {
        self.finished.load(Ordering::Relaxed)
    }

    /// The jobs finished since [`Self::finished`] read `since` (at most the latest
    /// [`RECENT_JOBS`]), oldest first.
    pub fn finished_since(&self, since: u64) -> Vec<JobTiming> {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        let count = (self.finished().saturating_sub(since) as usize).min(recent.len());
        recent.iter().skip(recent.len() - count).copied().collect()
    }

    #[cfg(test)]
    async fn acquire(&self, urgency: Urgency) -> Result<Permit, PoolError> {
        self.acquire_up_to(urgency, 1).await
    }

    /// One slot, and more of those free up to `most`.
    async fn acquire_up_to(&self, urgency: Urgency, most: usize) -> Result<Permit, PoolError> {
        let most = most.max(1);
        let waiting = {
            let mut slots = self.shared.lock();
            if let Some(permit) = self.shared.take_free(&mut slots, &self.running, most) {
                return Ok(permit);
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
            slots.waiting.insert(key, Waiter { permit: tx, running: self.running.clone(), most });
            rx
        };
        waiting.await.map_err(|_| PoolError(self.name))
    }

    /// (jobs run, jobs that had to wait for a slot, slots in its budget).
    pub fn stats(&self) -> (u64, u64, usize) {
        (self.jobs.load(Ordering::Relaxed), self.waited.load(Ordering::Relaxed), self.shared.size)
    }

    /// This kind's jobs running now (a job holds its slots from the moment it gets them to the
    /// moment it ends).
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }

    /// Running jobs told to stop so an urgent one could have their slot.
    pub fn yielded(&self) -> u64 {
        self.yielded.load(Ordering::Relaxed)
    }
}

/// The process's budget for speech-to-text and synthesis together: a slot per core it may use
/// (Piper uses one thread a job; whisper one, or both cores alone).
pub fn budget() -> &'static Budget {
    static BUDGET: OnceLock<Budget> = OnceLock::new();
    BUDGET.get_or_init(|| Budget::new(cores()))
}

/// Whisper; a job takes up to [`stt_cores`] slots, a thread each.
pub fn stt() -> &'static InferencePool {
    static POOL: OnceLock<InferencePool> = OnceLock::new();
    POOL.get_or_init(|| InferencePool::sharing("speech-to-text", budget()))
}

/// The most cores a transcription takes ([`super::STT_THREADS`]); it gets them only when
/// they are free ([`InferencePool::run_on_cores`]).
pub fn stt_cores() -> usize {
    super::STT_THREADS.min(cores())
}

/// A count of callers who will want a final transcript soon: speaking (or silent after speech,
/// the turn not yet decided), or whose turn is being transcribed. The process's is
/// [`talkers`].
pub struct Talkers(AtomicUsize);

/// One caller counted in [`Talkers`] while it lives.
pub struct Talking<'a>(&'a Talkers);

impl Talkers {
    pub const fn new() -> Self {
        Talkers(AtomicUsize::new(0))
    }

    /// Callers counted now.
    pub fn count(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    pub fn begin(&self) -> Talking<'_> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Talking(self)
    }

    /// The most cores a final transcription should take now, for the caller holding `own`
    /// (if counted): [`stt_cores_beside`] the others counted.
    pub fn stt_cores(&self, own: Option<&Talking<'_>>) -> usize {
        stt_cores_beside(self.count().saturating_sub(own.is_some() as usize))
    }
}

impl Drop for Talking<'_> {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// This process's callers who will want a final transcript soon.
pub fn talkers() -> &'static Talkers {
    static TALKERS: Talkers = Talkers::new();
    &TALKERS
}

/// The most cores a final transcription should take when `others` other callers will want
/// one soon ([`Talkers`]). Alone it takes [`stt_cores`]: two threads finish one transcript
/// sooner. Beside others it takes one: a second thread speeds whisper up by less than twice
/// (the same lines ~1.33× faster on two cores on a 2-core Xeon, ~1.5× on a 2-core EPYC), so
/// transcripts on a core each finish sooner than ones run in turn on both — and one that took
/// both cores would hold them while the others queue (callers who stop together,
/// `docs/decisions.md`).
pub fn stt_cores_beside(others: usize) -> usize {
    if others == 0 { stt_cores() } else { 1 }
}


/// Smart Turn: small (~35 ms a run on one thread), a slot per core of its own.
pub fn end_of_turn() -> &'static InferencePool {
    static POOL: OnceLock<InferencePool> = OnceLock::new();
    POOL.get_or_init(|| InferencePool::new("end-of-turn", cores()))
}

/// Piper, one thread per job ([`super::TTS_THREADS`]).
pub fn tts() -> &'static InferencePool {
    static POOL: OnceLock<InferencePool> = OnceLock::new();
    POOL.get_or_init(|| InferencePool::sharing("speech synthesis", budget()))
}

pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;

    #[test]
    fn a_transcription_spreads_over_cores_only_when_no_other_caller_is_about_to_need_one() {
        assert_eq!(stt_cores_beside(0), stt_cores());
        assert_eq!(stt_cores_beside(1), 1);
        assert_eq!(stt_cores_beside(3), 1);
        let talkers = Talkers::new();
        assert_eq!(talkers.stt_cores(None), stt_cores());
        // The asking caller does not count as another.
        let own = talkers.begin();
        assert_eq!(talkers.stt_cores(Some(&own)), stt_cores());
        let other = talkers.begin();
        assert_eq!(talkers.stt_cores(Some(&own)), 1);
        assert_eq!(talkers.stt_cores(None), 1);
        drop(other);
        assert_eq!(talkers.stt_cores(Some(&own)), stt_cores());
        drop(own);
        assert_eq!(talkers.stt_cores(None), stt_cores());
    }

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
    async fn a_pool_remembers_its_latest_jobs_wait_and_run_and_what_finished_since() {
        let pool = Arc::new(InferencePool::new("test", 1));
        let gate = pool.acquire(Urgency::Now).await.unwrap();
        let mut waiting = Box::pin(pool.run_with(Urgency::Ahead, || std::thread::sleep(std::time::Duration::from_millis(5))));
        assert!(futures::poll!(&mut waiting).is_pending());
        drop(gate);
        waiting.await.unwrap();
        let jobs = pool.finished_since(0);
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].urgency, Urgency::Ahead);
        assert!(!jobs[0].waited.is_zero(), "it waited for the held slot");
        assert!(jobs[0].ran >= std::time::Duration::from_millis(5), "it held the slot while it slept");
        let mark = pool.finished();
        for _ in 0..RECENT_JOBS + 3 {
            pool.run(|| ()).await.unwrap();
        }
        // Bounded: only the latest are kept, and only those since the mark are returned.
        assert_eq!(pool.finished(), mark + RECENT_JOBS as u64 + 3);
        let since = pool.finished_since(mark);
        assert_eq!(since.len(), RECENT_JOBS);
        assert!(since.iter().all(|j| j.urgency == Urgency::Now));
        assert!(pool.finished_since(pool.finished()).is_empty());
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
            .try_run_yielding(stop, 1, move |_| {
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
        assert!(pool.try_run_yielding(Arc::new(AtomicBool::new(false)), 1, |_| false).is_none());
        // A later-needed job waiting does not stop it; a final transcript does.
        let mut later = Box::pin(pool.run_with(Urgency::Ahead, || "later"));
        assert!(futures::poll!(&mut later).is_pending());
        assert_eq!(pool.yielded(), 0);
        // While anyone waits, a partial does not take a slot that comes free either.
        assert!(pool.try_run_yielding(Arc::new(AtomicBool::new(false)), 1, |_| false).is_none());
        let now = pool.run(|| "final transcript");
        assert_eq!(now.await.unwrap(), "final transcript");
        assert!(partial.await.unwrap().unwrap(), "the partial was told to stop");
        assert_eq!(pool.yielded(), 1);
        assert_eq!(later.await.unwrap(), "later");
        assert_eq!(pool.running(), 0);
        assert_eq!(pool.stats().0, 3, "the partials that found no slot were never counted as jobs");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn kinds_sharing_a_budget_never_exceed_it_and_a_partial_waits_for_it_to_be_idle() {
        let budget = Budget::new(2);
        let (stt, tts) = (Arc::new(InferencePool::sharing("stt", &budget)), Arc::new(InferencePool::sharing("tts", &budget)));
        // Another call's later sentence is being synthesized: one slot of two held.
        let sentence = tts.acquire(Urgency::Ahead).await.unwrap();
        assert_eq!((tts.running(), stt.running(), budget.running()), (1, 0, 1));
        // A slot is free, but a partial transcript starts only on an idle budget.
        assert!(stt.try_run_yielding(Arc::new(AtomicBool::new(false)), 2, |_| ()).is_none());
        // A final transcript takes the other slot; then the budget is spent for every kind.
        let last = stt.acquire(Urgency::Now).await.unwrap();
        assert_eq!((tts.running(), stt.running(), budget.running()), (1, 1, 2));
        let order = Arc::new(Mutex::new(Vec::new()));
        let push = |name: &'static str| {
            let order = order.clone();
            move || order.lock().unwrap().push(name)
        };
        let mut later = Box::pin(tts.run_with(Urgency::Ahead, push("other call, sentence 3")));
        let mut first = Box::pin(tts.run_with(Urgency::Now, push("this call, sentence 1")));
        let mut transcript = Box::pin(stt.run_with(Urgency::Now, push("third call, final transcript")));
        for waiting in [&mut later, &mut first, &mut transcript] {
            assert!(futures::poll!(waiting).is_pending(), "two slots for every kind together: the job waits");
        }
        // One slot comes free and passes from job to job: the jobs needed now go first,
        // whatever their kind, in arrival order.
        drop(sentence);
        let (a, b, c) = futures::join!(later, first, transcript);
        (a.unwrap(), b.unwrap(), c.unwrap());
        assert_eq!(*order.lock().unwrap(), vec!["this call, sentence 1", "third call, final transcript", "other call, sentence 3"]);
        drop(last);
        assert_eq!((tts.running(), stt.running(), budget.running()), (0, 0, 0));
        assert_eq!((stt.stats().2, tts.stats().2), (2, 2));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_guess_runs_only_on_a_slot_free_now_with_no_one_waiting_and_takes_what_it_can_use() {
        let budget = Budget::new(2);
        let (stt, tts) = (Arc::new(InferencePool::sharing("stt", &budget)), Arc::new(InferencePool::sharing("tts", &budget)));
        // An idle budget: the guess takes both cores it can use.
        assert!(stt.has_free_slot());
        assert_eq!(stt.try_run_on_cores(Urgency::Now, 2, |cores| cores).expect("idle: it runs").await.unwrap(), 2);
        // One slot held by a sentence: the guess runs beside it on the other, unlike a partial.
        let sentence = tts.acquire(Urgency::Ahead).await.unwrap();
        assert!(stt.try_run_yielding(Arc::new(AtomicBool::new(false)), 2, |_| ()).is_none());
        let (started_tx, started) = std::sync::mpsc::channel();
        let go = Arc::new(AtomicBool::new(false));
        let guess = stt.try_run_on_cores(Urgency::Now, 2, held_job("guess", started_tx, go.clone())).expect("a slot is free: it runs");
        let mut guess = Box::pin(guess);
        assert!(futures::poll!(&mut guess).is_pending());
        assert_eq!(started_job(&started), ("guess", 1));
        assert_eq!(budget.running(), 2);
        // No slot free: nothing runs, and nothing is counted.
        let jobs = stt.stats().0;
        assert!(!stt.has_free_slot());
        assert!(stt.try_run_on_cores(Urgency::Now, 1, |_| ()).is_none());
        // A slot that comes free while someone waits goes to the waiter, not to a guess.
        let mut waiter = Box::pin(tts.run_with(Urgency::Ahead, || "sentence 2"));
        assert!(futures::poll!(&mut waiter).is_pending());
        go.store(true, Ordering::Relaxed);
        assert_eq!(guess.await.unwrap(), 1);
        assert!(stt.try_run_on_cores(Urgency::Now, 1, |_| ()).is_none(), "the freed slot went to the waiter: no guess");
        assert!(!stt.has_free_slot());
        assert_eq!(stt.stats().0, jobs);
        assert_eq!(waiter.await.unwrap(), "sentence 2");
        drop(sentence);
        assert_eq!(budget.running(), 0);
    }

    /// A job that blocks until `go` is set, reporting the cores it was given on `started`.
    fn held_job(name: &'static str, started: std::sync::mpsc::Sender<(&'static str, usize)>, go: Arc<AtomicBool>) -> impl FnOnce(usize) -> usize + Send + 'static {
        move |cores| {
            started.send((name, cores)).unwrap();
            let began = std::time::Instant::now();
            while !go.load(Ordering::Relaxed) && began.elapsed() < std::time::Duration::from_secs(30) {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            cores
        }
    }

    /// `job`, needed now on up to `most` cores of `pool`, running on its own task.
    fn spawn_held(pool: &Arc<InferencePool>, most: usize, job: impl FnOnce(usize) -> usize + Send + 'static) -> tokio::task::JoinHandle<Result<usize, PoolError>> {
        let pool = pool.clone();
        tokio::spawn(async move { pool.run_on_cores(Urgency::Now, most, job).await })
    }

    /// The next job that started, and the cores it was given.
    fn started_job(started: &std::sync::mpsc::Receiver<(&'static str, usize)>) -> (&'static str, usize) {
        started.recv_timeout(std::time::Duration::from_secs(10)).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_transcription_on_both_cores_holds_both_slots_and_nothing_runs_beside_it() {
        let budget = Budget::new(2);
        let (stt, tts) = (Arc::new(InferencePool::sharing("stt", &budget)), Arc::new(InferencePool::sharing("tts", &budget)));
        let (started_tx, started) = std::sync::mpsc::channel();
        // A caller's final transcript on an idle budget takes both cores.
        let go_first = Arc::new(AtomicBool::new(false));
        let first = spawn_held(&stt, 2, held_job("first transcript", started_tx.clone(), go_first.clone()));
        assert_eq!(started_job(&started), ("first transcript", 2));
        assert_eq!((budget.running(), stt.running()), (2, 1));
        // Another caller's transcript and a reply's first sentence wait for it rather than run
        // on a core its threads use; a partial is not started.
        let go = Arc::new(AtomicBool::new(false));
        let mut second = Box::pin({
            let (stt, job) = (stt.clone(), held_job("second transcript", started_tx.clone(), go.clone()));
            async move { stt.run_on_cores(Urgency::Now, 2, job).await }
        });
        let mut sentence = Box::pin({
            let (tts, job) = (tts.clone(), held_job("first sentence", started_tx.clone(), go.clone()));
            async move { tts.run_on_cores(Urgency::Now, 1, job).await }
        });
        assert!(futures::poll!(&mut second).is_pending(), "both cores are taken: the transcript waits");
        assert!(futures::poll!(&mut sentence).is_pending(), "both cores are taken: the sentence waits");
        assert!(stt.try_run_yielding(Arc::new(AtomicBool::new(false)), 2, |_| ()).is_none());
        // The two slots it gives back go one to each waiter, in arrival order.
        go_first.store(true, Ordering::Relaxed);
        assert_eq!(first.await.unwrap().unwrap(), 2);
        let (second, sentence) = (tokio::spawn(second), tokio::spawn(sentence));
        let mut given = [started_job(&started), started_job(&started)];
        given.sort();
        assert_eq!(given, [("first sentence", 1), ("second transcript", 1)]);
        assert_eq!(budget.running(), 2);
        go.store(true, Ordering::Relaxed);
        assert_eq!((second.await.unwrap().unwrap(), sentence.await.unwrap().unwrap()), (1, 1));
        assert_eq!(budget.running(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lone_waiter_gets_every_slot_it_can_use_and_a_partial_on_both_cores_gives_way() {
        let budget = Budget::new(2);
        let stt = Arc::new(InferencePool::sharing("stt", &budget));
        let (started_tx, started) = std::sync::mpsc::channel();
        // A partial transcript on the idle budget takes both cores…
        let stop = Arc::new(AtomicBool::new(false));
        let partial = stt.try_run_yielding(stop.clone(), 2, held_job("partial", started_tx.clone(), stop)).expect("idle: the partial starts");
        let partial = tokio::spawn(partial);
        assert_eq!(started_job(&started), ("partial", 2));
        assert_eq!(budget.running(), 2);
        // …so a final transcript finds no slot, tells it to stop, and then gets both.
        let go = Arc::new(AtomicBool::new(false));
        let last = spawn_held(&stt, 2, held_job("final transcript", started_tx.clone(), go.clone()));
        assert_eq!(started_job(&started), ("final transcript", 2));
        assert_eq!(partial.await.unwrap().unwrap(), 2);
        assert_eq!(stt.yielded(), 1);
        // One slot is all a job of one thread takes, even when both are free.
        go.store(true, Ordering::Relaxed);
        last.await.unwrap().unwrap();
        assert_eq!(stt.run_on_cores(Urgency::Now, 1, |cores| cores).await.unwrap(), 1);
        assert_eq!(budget.running(), 0);
    }
}
