//! Intent by similarity to examples: each intent is its examples' embeddings (and its name's
//! and description's); an utterance scores against each intent as 0.8 × the cosine to the
//! intent's centroid (the normalized mean of its texts) + 0.2 × the cosine to its nearest
//! text, takes the best intent, or `unknown` below the threshold.
//!
//! Why the blend: the centroid averages away what one example says by accident and weighs
//! every intent alike (a mean of cosines would favour intents whose examples are alike); the
//! nearest text keeps an intent said in ways that do not average well ("forget it", "I don't
//! need it any more") reachable. On CLINC150 with 10 examples per intent (`ringline bench
//! analysis --intent-set`), nearest-example alone was 80% right, the centroid alone 86%, the
//! blend (weight chosen on the validation split) 86.6% — see docs/decisions.md. The score is
//! the confidence, so a threshold means the same thing in every assistant.

use std::sync::Arc;

use serde::Serialize;

/// What an utterance is classified as when nothing is close enough.
pub const UNKNOWN: &str = "unknown";

/// Below this score an utterance is `unknown` (MiniLM puts paraphrases above ~0.55 and
/// unrelated sentences below ~0.3).
pub const DEFAULT_THRESHOLD: f32 = 0.5;

/// One intent as the classifier takes it.
#[derive(Debug, Clone)]
pub struct IntentDef {
    pub name: String,
    pub description: Option<String>,
    pub examples: Vec<String>,
}

impl IntentDef {
    /// The texts that stand for this intent: its examples, its description, and its name read
    /// as words ("book_table" → "book table").
    pub fn texts(&self) -> Vec<String> {
        let mut texts: Vec<String> = self.examples.iter().map(|e| e.trim().to_string()).filter(|e| !e.is_empty()).collect();
        if let Some(description) = self.description.as_deref().map(str::trim).filter(|d| !d.is_empty()) {
            texts.push(description.to_string());
        }
        texts.push(self.name.replace(['_', '-'], " "));
        texts
    }
}

/// The centroid's share of an intent's score; the nearest text has the rest.
const CENTROID_WEIGHT: f32 = 0.8;

/// A set of intents with their examples embedded.
pub struct IntentSet {
    names: Vec<String>,
    /// (intent index, unit embedding).
    examples: Vec<(usize, Arc<[f32]>)>,
    /// Per intent, the unit mean of its texts' embeddings (`None` for an intent with no text).
    centroids: Vec<Option<Vec<f32>>>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IntentMatch {
    pub intent: String,
    /// The intent's score (centroid and nearest-text cosines blended), 0..1; for `unknown`,
    /// one minus that of the nearest intent.
    pub confidence: f32,
    /// The next-best intent and its similarity (for `unknown`, the nearest one), to show how
    /// close the decision was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runner_up: Option<(String, f32)>,
}

impl IntentSet {
    /// `embedded[i]` holds the embeddings of `intents[i].texts()`, in order.
    pub fn new(intents: &[IntentDef], embedded: Vec<Vec<Arc<[f32]>>>) -> Self {
        let mut examples = Vec::new();
        let mut centroids = Vec::with_capacity(embedded.len());
        for (i, vectors) in embedded.into_iter().enumerate() {
            centroids.push(vectors.first().map(|first| {
                let mut sum = vec![0.0f32; first.len()];
                for v in &vectors {
                    sum.iter_mut().zip(v.iter()).for_each(|(s, x)| *s += x);
                }
                let norm = sum.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                sum.iter_mut().for_each(|s| *s /= norm);
                sum
            }));
            examples.extend(vectors.into_iter().map(|v| (i, v)));
        }
        IntentSet { names: intents.iter().map(|i| i.name.clone()).collect(), examples, centroids }
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The intent of an utterance's unit embedding.
    pub fn classify(&self, utterance: &[f32], threshold: f32) -> IntentMatch {
        let mut best = vec![f32::NEG_INFINITY; self.names.len()];
        for (intent, example) in &self.examples {
            let cosine: f32 = example.iter().zip(utterance).map(|(a, b)| a * b).sum();
            best[*intent] = best[*intent].max(cosine);
        }
        let dot = |a: &[f32]| a.iter().zip(utterance).map(|(x, y)| x * y).sum::<f32>();
        let blended = best.into_iter().zip(&self.centroids).map(|(nearest, centroid)| match centroid {
            Some(c) => CENTROID_WEIGHT * dot(c) + (1.0 - CENTROID_WEIGHT) * nearest,
            None => nearest,
        });
        let mut ranked: Vec<(usize, f32)> = blended.enumerate().filter(|(_, s)| s.is_finite()).collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        let round = |s: f32| (s.clamp(0.0, 1.0) * 1000.0).round() / 1000.0;
        match ranked.first() {
            Some(&(i, score)) if score >= threshold => IntentMatch {
                intent: self.names[i].clone(),
                confidence: round(score),
                runner_up: ranked.get(1).map(|&(j, s)| (self.names[j].clone(), round(s))),
            },
            top => IntentMatch {
                intent: UNKNOWN.to_string(),
                confidence: round(1.0 - top.map_or(0.0, |t| t.1.max(0.0))),
                runner_up: top.map(|&(j, s)| (self.names[j].clone(), round(s))),
            },
        }
    }
}
