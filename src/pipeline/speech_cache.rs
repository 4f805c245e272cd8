//! Synthesized sentences kept for reuse, so a line an agent says in every call — a flow's
//! question, a greeting, "Is that right?" — is synthesized once and then played from memory,
//! without waiting for a slot of the synthesis budget.
//!
//! Entries are kept per [`SpeechScope`]: whose calls (the tenant — a workspace, or the operator)
//! and which voice. A hit is faster than a synthesis, so a cache shared between tenants would
//! let one tenant time a line and learn whether another tenant's agent said it lately (a
//! caller's name in a read-back, say); a scope only ever reads its own entries.
//!
//! A sentence being synthesized for one call is not synthesized again for another call of the
//! same scope that needs it meanwhile: [`SpeechCache::lookup`] hands the later call a
//! [`Coming`] that resolves to the first call's audio. Four callers who say "hi" together all
//! hear the same flow question, and on two cores four syntheses of it would queue behind each
//! other. A caller waiting now never waits on a synthesis that was only needed later (its
//! job would run behind every urgent one): such a call synthesizes the line itself.
//!
//! Bounded: the whole cache holds at most its capacity in samples' bytes (least recently used
//! out first), one scope at most a quarter of it (so one tenant cannot flush every other's
//! lines), and an entry at most [`MAX_ENTRY_SECONDS`] of audio.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::watch;

/// The default capacity: 32 MiB, about nine minutes of audio at 16 kHz.
pub const DEFAULT_CAPACITY_BYTES: usize = 32 << 20;

/// The longest sentence kept, in seconds of audio.
pub const MAX_ENTRY_SECONDS: usize = 20;

/// The longest sentence text kept, in bytes.
const MAX_TEXT_BYTES: usize = 1000;

/// Whose entries a call reads and writes: a tenant and a voice.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpeechScope(Arc<str>);

impl SpeechScope {
    /// `tenant` names whose calls these are (a workspace's id; empty for the operator's own
    /// commands), `voice` what synthesizes them (provider, model, voice name, endpoint).
    pub fn new(tenant: &str, voice: &str) -> Self {
        // A separator that neither a workspace id nor a voice's identity contains.
        SpeechScope(format!("{tenant}\u{0}{voice}").into())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    scope: SpeechScope,
    rate: u32,
    text: String,
}

struct Entry {
    samples: Arc<[f32]>,
    /// The tick of its last use; the smallest goes first.
    used: u64,
}

/// A synthesis under way: which claim it is, whether a caller waits on it now, and where its
/// audio will be sent.
struct Pending {
    id: u64,
    now: bool,
    audio: watch::Receiver<Option<Arc<[f32]>>>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<Key, Entry>,
    pending: HashMap<Key, Pending>,
    /// Bytes held per scope, and in all.
    scope_bytes: HashMap<SpeechScope, usize>,
    bytes: usize,
    tick: u64,
    capacity: usize,
}

/// What the cache did so far (for `/metrics` and the benchmarks).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub entries: usize,
    pub bytes: usize,
    pub capacity: usize,
}

pub struct SpeechCache {
    inner: Mutex<Inner>,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// What [`SpeechCache::lookup`] found for a sentence.
pub enum Lookup<'a> {
    /// Said before in this scope.
    Held(Arc<[f32]>),
    /// Being synthesized for another call of this scope, at least as urgently: its audio.
    Coming(Coming<'a>),
    /// Neither: synthesize it. With a claim, [`Claim::fulfil`] keeps the audio and hands it to
    /// whoever asked meanwhile; without one (the cache is off, or a less urgent synthesis of
    /// the same sentence is under way), [`SpeechCache::put`] keeps it.
    Missing(Option<Claim<'a>>),
}

/// Audio another call's synthesis will send.
pub struct Coming<'a> {
    cache: &'a SpeechCache,
    audio: watch::Receiver<Option<Arc<[f32]>>>,
}

impl Coming<'_> {
    /// The audio, or `None` when the synthesis was given up (its call hung up or was
    /// interrupted, or the voice failed): then synthesize it.
    pub async fn audio(mut self) -> Option<Arc<[f32]>> {
        let audio = self.audio.wait_for(Option::is_some).await.ok().and_then(|audio| audio.clone());
        self.cache.count(audio.is_some());
        audio
    }
}

/// The one synthesis of a sentence under way in its scope. Dropped unfulfilled, it lets
/// whoever waits on it synthesize the sentence themselves.
pub struct Claim<'a> {
    cache: &'a SpeechCache,
    key: Key,
    id: u64,
    audio: watch::Sender<Option<Arc<[f32]>>>,
}

impl Claim<'_> {
    /// Keeps `samples` (within the cache's bounds) and sends them to whoever waits.
    pub fn fulfil(self, samples: &[f32]) {
        let samples: Arc<[f32]> = samples.into();
        self.cache.keep(&self.key, samples.clone());
        self.audio.send_replace(Some(samples));
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let mut inner = self.cache.lock();
        if inner.pending.get(&self.key).is_some_and(|pending| pending.id == self.id) {
            inner.pending.remove(&self.key);
        }
    }
}

fn bytes_of(samples: usize) -> usize {
    samples * std::mem::size_of::<f32>()
}

impl SpeechCache {
    pub fn new(capacity_bytes: usize) -> Self {
        SpeechCache { inner: Mutex::new(Inner { capacity: capacity_bytes, ..Inner::default() }), hits: AtomicU64::new(0), misses: AtomicU64::new(0) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the capacity (0 turns the cache off) and lets go of what no longer fits.
    pub fn set_capacity(&self, bytes: usize) {
        let mut inner = self.lock();
        inner.capacity = bytes;
        inner.shrink();
    }

    /// Lets go of every sentence held; the capacity stays. Syntheses under way still fulfil
    /// their claims (and are held afterwards).
    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.entries.clear();
        inner.scope_bytes.clear();
        inner.bytes = 0;
    }

    /// `text` as `scope`'s voice said it at `rate`, if it is held.
    pub fn get(&self, scope: &SpeechScope, rate: u32, text: &str) -> Option<Arc<[f32]>> {
        // A borrowed key would need the scope cloned anyway: it is an `Arc`.
        let found = self.lock().find(&Key { scope: scope.clone(), rate, text: text.to_string() });
        self.count(found.is_some());
        found
    }

    fn count(&self, hit: bool) {
        match hit {
            true => self.hits.fetch_add(1, Ordering::Relaxed),
            false => self.misses.fetch_add(1, Ordering::Relaxed),
        };
    }

    /// `text` as `scope`'s voice says it at `rate`: held, coming from another call's synthesis,
    /// or missing. `now` says whether a caller waits on this sentence now (a reply's first):
    /// such a lookup never waits on a synthesis that was not urgent.
    pub fn lookup(&self, scope: &SpeechScope, rate: u32, text: &str, now: bool) -> Lookup<'_> {
        let key = Key { scope: scope.clone(), rate, text: text.to_string() };
        let mut inner = self.lock();
        if let Some(samples) = inner.find(&key) {
            self.count(true);
            return Lookup::Held(samples);
        }
        if inner.capacity == 0 {
            self.count(false);
            return Lookup::Missing(None);
        }
        if let Some(pending) = inner.pending.get(&key) {
            // Counted when the audio comes (or does not).
            if pending.now || !now {
                return Lookup::Coming(Coming { cache: self, audio: pending.audio.clone() });
            }
            self.count(false);
            return Lookup::Missing(None);
        }
        self.count(false);
        inner.tick += 1;
        let id = inner.tick;
        let (sender, receiver) = watch::channel(None);
        inner.pending.insert(key.clone(), Pending { id, now, audio: receiver });
        Lookup::Missing(Some(Claim { cache: self, key, id, audio: sender }))
    }

    /// Keeps `samples` as `scope`'s `text` at `rate`, when it fits the bounds.
    pub fn put(&self, scope: &SpeechScope, rate: u32, text: &str, samples: &[f32]) {
        self.keep(&Key { scope: scope.clone(), rate, text: text.to_string() }, samples.into());
    }

    fn keep(&self, key: &Key, samples: Arc<[f32]>) {
        let size = bytes_of(samples.len());
        let mut inner = self.lock();
        let quota = inner.capacity / 4;
        if key.text.len() > MAX_TEXT_BYTES || samples.len() > MAX_ENTRY_SECONDS * key.rate as usize || size > quota || samples.is_empty() {
            return;
        }
        inner.tick += 1;
        let scope = &key.scope;
        let entry = Entry { samples, used: inner.tick };
        if let Some(old) = inner.entries.insert(key.clone(), entry) {
            inner.forget(scope, bytes_of(old.samples.len()));
        }
        inner.bytes += size;
        *inner.scope_bytes.entry(scope.clone()).or_default() += size;
        while inner.scope_bytes.get(scope).copied().unwrap_or(0) > quota {
            inner.evict(|key| &key.scope == scope);
        }
        inner.shrink();
    }

    pub fn stats(&self) -> CacheStats {
        let inner = self.lock();
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries: inner.entries.len(),
            bytes: inner.bytes,
            capacity: inner.capacity,
        }
    }
}

impl Inner {
    /// A held entry, marked as just used.
    fn find(&mut self, key: &Key) -> Option<Arc<[f32]>> {
        if self.capacity == 0 {
            return None;
        }
        self.tick += 1;
        let tick = self.tick;
        self.entries.get_mut(key).map(|entry| {
            entry.used = tick;
            entry.samples.clone()
        })
    }

    fn forget(&mut self, scope: &SpeechScope, size: usize) {
        self.bytes -= size;
        if let Some(held) = self.scope_bytes.get_mut(scope) {
            *held -= size;
            if *held == 0 {
                self.scope_bytes.remove(scope);
            }
        }
    }

    /// Drops the least recently used entry among those `matches` accepts.
    fn evict(&mut self, matches: impl Fn(&Key) -> bool) {
        let oldest = self.entries.iter().filter(|(key, _)| matches(key)).min_by_key(|(_, entry)| entry.used).map(|(key, _)| key.clone());
        if let Some(key) = oldest {
            let entry = self.entries.remove(&key).expect("the key was just found");
            self.forget(&key.scope, bytes_of(entry.samples.len()));
        }
    }

    fn shrink(&mut self) {
        while self.bytes > self.capacity && !self.entries.is_empty() {
            self.evict(|_| true);
        }
    }
}

/// The process's cache, shared by every call (sized by [`configure`]).
pub fn speech_cache() -> &'static SpeechCache {
    static CACHE: OnceLock<SpeechCache> = OnceLock::new();
    CACHE.get_or_init(|| SpeechCache::new(DEFAULT_CAPACITY_BYTES))
}

/// Sizes the process's cache: `mib` MiB, 0 for none.
pub fn configure(mib: usize) {
    speech_cache().set_capacity(mib << 20);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(seconds: usize, rate: u32) -> Vec<f32> {
        vec![0.25; seconds * rate as usize]
    }

    #[test]
    fn a_sentence_said_again_in_the_same_scope_is_reused_and_never_across_scopes() {
        let cache = SpeechCache::new(1 << 20);
        let ours = SpeechScope::new("ws_a", "piper:en_US-joe-medium");
        let theirs = SpeechScope::new("ws_b", "piper:en_US-joe-medium");
        let other_voice = SpeechScope::new("ws_a", "piper:en_US-lessac-medium");
        assert!(cache.get(&ours, 8000, "And at what time?").is_none());
        cache.put(&ours, 8000, "And at what time?", &line(1, 8000));
        assert_eq!(cache.get(&ours, 8000, "And at what time?").map(|s| s.len()), Some(8000));
        // Another tenant, another voice, another line rate, another text: all misses.
        assert!(cache.get(&theirs, 8000, "And at what time?").is_none());
        assert!(cache.get(&other_voice, 8000, "And at what time?").is_none());
        assert!(cache.get(&ours, 16000, "And at what time?").is_none());
        assert!(cache.get(&ours, 8000, "And at what time").is_none());
        let stats = cache.stats();
        assert_eq!((stats.hits, stats.misses, stats.entries, stats.bytes), (1, 5, 1, 8000 * 4));
    }

    #[test]
    fn the_cache_stays_within_its_bounds_and_one_scope_cannot_flush_the_others() {
        // 400 kB in all: a scope may hold 100 kB, i.e. three 1 s lines at 8 kHz (32 kB each).
        let cache = SpeechCache::new(400_000);
        let quiet = SpeechScope::new("ws_quiet", "v");
        cache.put(&quiet, 8000, "Hello.", &line(1, 8000));
        let busy = SpeechScope::new("ws_busy", "v");
        for n in 0..50 {
            cache.put(&busy, 8000, &format!("Line {n}."), &line(1, 8000));
            assert!(cache.stats().bytes <= 400_000);
        }
        // The busy scope kept its three most recent lines; the quiet one kept its line.
        assert!(cache.get(&quiet, 8000, "Hello.").is_some());
        assert!(cache.get(&busy, 8000, "Line 49.").is_some());
        assert!(cache.get(&busy, 8000, "Line 47.").is_some());
        assert!(cache.get(&busy, 8000, "Line 46.").is_none());
        assert_eq!(cache.stats().entries, 4);

        // Many scopes: the least recently used go first, whoever they belong to.
        for n in 0..20 {
            let scope = SpeechScope::new(&format!("ws_{n}"), "v");
            cache.put(&scope, 8000, "Hello.", &line(1, 8000));
        }
        let stats = cache.stats();
        assert!(stats.bytes <= 400_000 && stats.entries == 400_000 / 32_000, "{stats:?}");
        assert!(cache.get(&SpeechScope::new("ws_19", "v"), 8000, "Hello.").is_some());
        assert!(cache.get(&quiet, 8000, "Hello.").is_none());

        // Emptied, it keeps its size and holds lines again.
        cache.clear();
        let stats = cache.stats();
        assert_eq!((stats.entries, stats.bytes, stats.capacity), (0, 0, 400_000), "{stats:?}");
        cache.put(&quiet, 8000, "Hello.", &line(1, 8000));
        assert!(cache.get(&quiet, 8000, "Hello.").is_some());

        // Too long a line is not kept, nor anything once the cache is off.
        cache.put(&quiet, 8000, "A long story.", &line(MAX_ENTRY_SECONDS + 1, 8000));
        assert!(cache.get(&quiet, 8000, "A long story.").is_none());
        cache.set_capacity(0);
        assert_eq!(cache.stats().bytes, 0);
        cache.put(&quiet, 8000, "Hello.", &line(1, 8000));
        assert!(cache.get(&quiet, 8000, "Hello.").is_none());
    }

    #[test]
    fn a_line_said_again_replaces_its_entry_without_counting_it_twice() {
        let cache = SpeechCache::new(1 << 20);
        let scope = SpeechScope::new("", "espeak:en-us");
        cache.put(&scope, 8000, "Hi.", &line(1, 8000));
        cache.put(&scope, 8000, "Hi.", &line(2, 8000));
        let stats = cache.stats();
        assert_eq!((stats.entries, stats.bytes), (1, 2 * 8000 * 4));
        assert_eq!(cache.get(&scope, 8000, "Hi.").map(|s| s.len()), Some(16000));
    }

    #[tokio::test]
    async fn a_sentence_being_synthesized_is_not_synthesized_again_for_another_call() {
        let cache = SpeechCache::new(1 << 20);
        let scope = SpeechScope::new("ws_a", "piper:en_US-joe-medium");
        let ask = "For how many people?";
        let Lookup::Missing(Some(claim)) = cache.lookup(&scope, 8000, ask, true) else { panic!("the first call synthesizes") };
        // Three more calls want it meanwhile: they wait for the first one's audio…
        let waiting: Vec<Coming> = (0..3)
            .map(|_| match cache.lookup(&scope, 8000, ask, true) {
                Lookup::Coming(coming) => coming,
                _ => panic!("a call synthesized a sentence already under way"),
            })
            .collect();
        // …and another workspace's call, or another line rate, synthesizes its own.
        assert!(matches!(cache.lookup(&SpeechScope::new("ws_b", "piper:en_US-joe-medium"), 8000, ask, true), Lookup::Missing(Some(_))));
        assert!(matches!(cache.lookup(&scope, 16000, ask, true), Lookup::Missing(Some(_))));
        claim.fulfil(&line(1, 8000));
        for coming in waiting {
            assert_eq!(coming.audio().await.map(|s| s.len()), Some(8000));
        }
        assert!(matches!(cache.lookup(&scope, 8000, ask, true), Lookup::Held(_)));
        let stats = cache.stats();
        assert_eq!((stats.hits, stats.misses), (4, 3), "{stats:?}");
    }

    #[tokio::test]
    async fn a_synthesis_given_up_lets_the_waiting_call_synthesize_and_urgency_is_never_inverted() {
        let cache = SpeechCache::new(1 << 20);
        let scope = SpeechScope::new("ws_a", "v");
        // The first call hangs up mid-synthesis: the waiting one gets nothing and claims it.
        let Lookup::Missing(Some(claim)) = cache.lookup(&scope, 8000, "Hi.", true) else { panic!() };
        let Lookup::Coming(coming) = cache.lookup(&scope, 8000, "Hi.", true) else { panic!() };
        drop(claim);
        assert!(coming.audio().await.is_none());
        let Lookup::Missing(Some(claim)) = cache.lookup(&scope, 8000, "Hi.", true) else { panic!("the pending entry outlived its claim") };
        drop(claim);

        // A later sentence under way for one call (not urgent): a caller waiting now on the same
        // sentence synthesizes it at once rather than behind it; another later one waits.
        let Lookup::Missing(Some(later)) = cache.lookup(&scope, 8000, "Is that right?", false) else { panic!() };
        assert!(matches!(cache.lookup(&scope, 8000, "Is that right?", true), Lookup::Missing(None)));
        let Lookup::Coming(coming) = cache.lookup(&scope, 8000, "Is that right?", false) else { panic!() };
        later.fulfil(&line(1, 8000));
        assert!(coming.audio().await.is_some());

        // With the cache off, every call synthesizes its own: nothing to share it through.
        cache.set_capacity(0);
        assert!(matches!(cache.lookup(&scope, 8000, "Bye.", true), Lookup::Missing(None)));
        assert!(matches!(cache.lookup(&scope, 8000, "Bye.", true), Lookup::Missing(None)));
    }
}
