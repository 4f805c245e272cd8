//! Synthesized sentences kept for reuse, so a line an agent says in every call — a flow's
//! question, a greeting, "Is that right?" — is synthesized once and then played from memory,
//! without waiting for a slot of the synthesis budget.
//!
//! Entries are kept per [`SpeechScope`]: whose calls (the tenant — a workspace, or the operator)
//! and which voice. A hit is faster than a synthesis, so a cache shared between tenants would
//! let one tenant time a line and learn whether another tenant's agent said it lately (a
//! caller's name in a read-back, say); a scope only ever reads its own entries.
//!
//! Bounded: the whole cache holds at most its capacity in samples' bytes (least recently used
//! out first), one scope at most a quarter of it (so one tenant cannot flush every other's
//! lines), and an entry at most [`MAX_ENTRY_SECONDS`] of audio.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

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

#[derive(Default)]
struct Inner {
    entries: HashMap<Key, Entry>,
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

    /// `text` as `scope`'s voice said it at `rate`, if it is held.
    pub fn get(&self, scope: &SpeechScope, rate: u32, text: &str) -> Option<Arc<[f32]>> {
        let mut inner = self.lock();
        if inner.capacity == 0 {
            return None;
        }
        inner.tick += 1;
        let tick = inner.tick;
        // A borrowed key would need the scope cloned anyway: it is an `Arc`.
        let key = Key { scope: scope.clone(), rate, text: text.to_string() };
        let found = inner.entries.get_mut(&key).map(|entry| {
            entry.used = tick;
            entry.samples.clone()
        });
        drop(inner);
        match &found {
            Some(_) => self.hits.fetch_add(1, Ordering::Relaxed),
            None => self.misses.fetch_add(1, Ordering::Relaxed),
        };
        found
    }

    /// Keeps `samples` as `scope`'s `text` at `rate`, when it fits the bounds.
    pub fn put(&self, scope: &SpeechScope, rate: u32, text: &str, samples: &[f32]) {
        let size = bytes_of(samples.len());
        let mut inner = self.lock();
        let quota = inner.capacity / 4;
        if text.len() > MAX_TEXT_BYTES || samples.len() > MAX_ENTRY_SECONDS * rate as usize || size > quota || samples.is_empty() {
            return;
        }
        inner.tick += 1;
        let key = Key { scope: scope.clone(), rate, text: text.to_string() };
        let entry = Entry { samples: samples.into(), used: inner.tick };
        if let Some(old) = inner.entries.insert(key, entry) {
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
}
