//! Call intelligence on each caller utterance: intent (nearest examples in MiniLM embedding
//! space), sentiment (a lexicon) and entities (the flows' parsers) — on a side branch of the
//! call that never delays the voice path, and behind `/v1/analysis/*`.
//!
//! One [`Analyzer`] per process holds the encoder (loaded from the model store on first use)
//! and a bounded cache of embeddings by text, so an assistant's examples are embedded once
//! and every call to it after the first only embeds what the caller said. Work is CPU-bound:
//! callers run it on a blocking thread, never on the async runtime.

pub mod entities;
pub mod intent;
mod minilm;
pub mod sentiment;
mod wordpiece;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::NaiveDate;
use serde::Serialize;

pub use entities::Entity;
pub use intent::{IntentDef, IntentMatch, IntentSet};
pub use sentiment::{Label, Sentiment, Trend};

use crate::models::{ModelError, ModelStore};

/// The embedding model in the store.
pub const MODEL: &str = "minilm-l6-v2";

/// Embeddings kept by text (each 1.5 KiB): enough for every example of a few large assistants.
const CACHE_ENTRIES: usize = 50_000;

/// Texts embedded per batch: long enough to amortize, short enough to bound memory.
const BATCH: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum AnalysisError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("cannot load the embedding model: {0}")]
    Load(String),
}

/// When a caller's words are read: the call's date, which resolves "tomorrow" and "Friday", and
/// the hours an unmarked time falls in ("at 7" is 19:00 for a restaurant that books from noon;
/// with no hours, 07:00).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Day {
    pub date: NaiveDate,
    pub hours: crate::flow::parse::TimeWindow,
}

impl Day {
    /// `date`, with no hours.
    pub fn of(date: NaiveDate) -> Self {
        Day { date, hours: Default::default() }
    }
}

/// Everything found in one caller utterance.
#[derive(Debug, Clone, Serialize)]
pub struct UtteranceAnalysis {
    /// The intent, when the assistant declares any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub intent: Option<IntentMatch>,
    pub sentiment: Sentiment,
    pub entities: Vec<Entity>,
}

impl UtteranceAnalysis {
    /// Sentiment and entities: what needs no model.
    pub fn without_intent(text: &str, day: Day) -> Self {
        UtteranceAnalysis { intent: None, sentiment: sentiment::score(text), entities: entities::find(text, day) }
    }
}

pub struct Analyzer {
    model: minilm::MiniLm,
    cache: Mutex<HashMap<String, Arc<[f32]>>>,
}

static SHARED: Mutex<Option<Arc<Analyzer>>> = Mutex::new(None);

impl Analyzer {
    /// The process's analyzer; the first call loads the model (~0.5 s), so call it off the
    /// async runtime.
    pub fn shared(store: &ModelStore) -> Result<Arc<Analyzer>, AnalysisError> {
        let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(analyzer) = shared.as_ref() {
            return Ok(analyzer.clone());
        }
        let weights = store.require(MODEL)?;
        let tokenizer = store.require_file(MODEL, "tokenizer.json")?;
        let model = minilm::MiniLm::load(&weights, &tokenizer).map_err(AnalysisError::Load)?;
        let analyzer = Arc::new(Analyzer { model, cache: Mutex::new(HashMap::new()) });
        *shared = Some(analyzer.clone());
        Ok(analyzer)
    }

    /// Unit embeddings of `texts`, from the cache where it has them. `progress` is told how
    /// many were embedded so far.
    pub fn embed(&self, texts: &[String], progress: &dyn Fn(usize)) -> Vec<Arc<[f32]>> {
        let mut out: Vec<Option<Arc<[f32]>>> = {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            texts.iter().map(|t| cache.get(t).cloned()).collect()
        };
        let missing: Vec<usize> = (0..texts.len()).filter(|&i| out[i].is_none()).collect();
        for (done, chunk) in missing.chunks(BATCH).enumerate() {
            let batch: Vec<&str> = chunk.iter().map(|&i| texts[i].as_str()).collect();
            let vectors = self.model.embed(&batch);
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if cache.len() + chunk.len() > CACHE_ENTRIES {
                // Crude but bounded: start over rather than track recency per entry.
                cache.clear();
            }
            for (&i, vector) in chunk.iter().zip(vectors) {
                let vector: Arc<[f32]> = vector.into();
                cache.insert(texts[i].clone(), vector.clone());
                out[i] = Some(vector);
            }
            progress((done * BATCH + chunk.len()).min(missing.len()));
        }
        out.into_iter().map(|v| v.expect("every text embedded")).collect()
    }

    /// The intents with their texts embedded.
    pub fn intent_set(&self, intents: &[IntentDef]) -> IntentSet {
        self.intent_set_with_progress(intents, &|_, _| {})
    }

    /// [`Analyzer::intent_set`], telling `progress` (texts embedded, of all) as it goes.
    pub fn intent_set_with_progress(&self, intents: &[IntentDef], progress: &dyn Fn(usize, usize)) -> IntentSet {
        let texts: Vec<Vec<String>> = intents.iter().map(IntentDef::texts).collect();
        let flat: Vec<String> = texts.iter().flatten().cloned().collect();
        let mut vectors = self.embed(&flat, &|done| progress(done, flat.len())).into_iter();
        let embedded = texts.iter().map(|t| vectors.by_ref().take(t.len()).collect()).collect();
        IntentSet::new(intents, embedded)
    }

    /// Intent (when `intents` has any), sentiment and entities of one utterance.
    pub fn analyze(&self, text: &str, intents: Option<&IntentSet>, threshold: f32, day: Day) -> UtteranceAnalysis {
        let intent = intents.filter(|set| !set.is_empty()).map(|set| {
            let vector = self.embed(&[text.to_string()], &|_| {}).remove(0);
            set.classify(&vector, threshold)
        });
        UtteranceAnalysis { intent, ..UtteranceAnalysis::without_intent(text, day) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn analyzer() -> Option<Arc<Analyzer>> {
        let store = ModelStore::from_env().ok()?;
        match Analyzer::shared(&store) {
            Ok(analyzer) => Some(analyzer),
            Err(AnalysisError::Model(e)) => {
                eprintln!("skipped: {e} (run `ringline models pull`)");
                None
            }
            Err(e) => panic!("{e}"),
        }
    }

    fn cosine(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    /// Token ids from Hugging Face's `tokenizers` on the same tokenizer.json, and embedding
    /// values from an independent numpy forward pass over the same f32 weights (within 1e-4:
    /// where the CPU converts half floats the encoder holds its weights as f16).
    #[test]
    fn tokens_and_embeddings_match_the_reference_implementation() {
        let Some(analyzer) = analyzer() else { return };
        let text = "Café, I'd like to cancel my order #AB123!";
        assert_eq!(analyzer.model.tokenizer_ids(text), [101, 7668, 1010, 1045, 1005, 1040, 2066, 2000, 17542, 2026, 2344, 1001, 11113, 12521, 2509, 999, 102]);
        let vectors = analyzer.model.embed(&[text, "Hello"]);
        for (got, want) in [(&vectors[0], [-0.03363, 0.01598, 0.04828, 0.03261, -0.01617, 0.01235]), (&vectors[1], [-0.06277, 0.05496, 0.05216, 0.08579, -0.08275, -0.07457])] {
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() < 1e-4, "{:?} vs {want:?}", &got[..6]);
            }
        }
    }

    #[test]
    fn paraphrases_are_closer_than_unrelated_sentences() {
        let Some(analyzer) = analyzer() else { return };
        let texts: Vec<String> = ["I want to cancel my order", "Please cancel the order I placed", "What time do you open tomorrow?", "The weather is lovely today"]
            .map(String::from)
            .to_vec();
        let v = analyzer.embed(&texts, &|_| {});
        assert_eq!(v[0].len(), 384);
        let norm: f32 = cosine(&v[0], &v[0]);
        assert!((norm - 1.0).abs() < 1e-4, "unit length: {norm}");
        let same = cosine(&v[0], &v[1]);
        assert!(same > 0.7, "paraphrase {same}");
        assert!(cosine(&v[0], &v[2]) < 0.35 && cosine(&v[0], &v[3]) < 0.2, "{} {}", cosine(&v[0], &v[2]), cosine(&v[0], &v[3]));
        // Packed batches give what one sentence alone gives.
        let alone = analyzer.model.embed(&["Please cancel the order I placed"]);
        assert!(cosine(&alone[0], &v[1]) > 0.9999);
    }

    #[test]
    fn utterances_take_the_intent_of_their_nearest_examples_or_unknown() {
        let Some(analyzer) = analyzer() else { return };
        let def = |name: &str, examples: &[&str]| IntentDef { name: name.into(), description: None, examples: examples.iter().map(|e| e.to_string()).collect() };
        let intents = [
            def("book_table", &["I'd like to book a table", "can I reserve a table for tonight", "do you have a table for four"]),
            def("opening_hours", &["when are you open", "what time do you close", "are you open on sundays"]),
            def("speak_to_human", &["can I talk to a real person", "put me through to a manager", "I want to speak to someone"]),
            def("cancel", &["cancel my booking", "I need to cancel my reservation", "forget it, I don't need it anymore"]),
        ];
        let set = analyzer.intent_set(&intents);
        let today = NaiveDate::from_ymd_opt(2026, 11, 30).unwrap();
        for (text, expected) in [
            ("Hi, could I get a table for two this evening?", "book_table"),
            ("Are you open late on Saturday?", "opening_hours"),
            ("Let me speak to a human please", "speak_to_human"),
            ("I'd like to cancel the reservation I made", "cancel"),
            ("My cat knocked the plant off the windowsill", intent::UNKNOWN),
        ] {
            let found = analyzer.analyze(text, Some(&set), intent::DEFAULT_THRESHOLD, Day::of(today)).intent.unwrap();
            assert_eq!(found.intent, expected, "{text}: {found:?}");
        }
    }
}
