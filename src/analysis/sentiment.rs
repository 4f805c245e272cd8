//! Sentiment of one utterance: a valence lexicon with negation, intensifiers and "but", scored
//! like VADER (`sum / sqrt(sum² + 15)`, so −1..1), plus the call-level escalation rule.
//!
//! Why a lexicon and not the embedding model: a caller's anger on a phone line is said in a
//! few plain words ("this is ridiculous", "I've been waiting an hour"), a lexicon reads those
//! the same way every time and explains itself, and it costs microseconds on the voice path's
//! side branch. The lexicon is written for service calls (waiting, being cut off, charges).

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Sentiment {
    /// −1 (very negative) … 1 (very positive).
    pub score: f32,
    pub label: Label,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Label {
    Negative,
    Neutral,
    Positive,
}

impl Label {
    /// The label of a score: negative or positive outside the neutral band.
    pub fn of(score: f32) -> Label {
        if score <= -NEUTRAL_BAND {
            Label::Negative
        } else if score >= NEUTRAL_BAND {
            Label::Positive
        } else {
            Label::Neutral
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Label::Negative => "negative",
            Label::Neutral => "neutral",
            Label::Positive => "positive",
        }
    }
}

/// Below or above these a score is negative or positive.
const NEUTRAL_BAND: f32 = 0.2;

/// (word, valence −4..4). Multi-word phrases are matched on the joined words.
const LEXICON: &[(&str, f32)] = &[
    ("great", 3.1), ("good", 1.9), ("fine", 0.8), ("nice", 1.8), ("lovely", 2.8), ("wonderful", 2.9), ("excellent", 3.1),
    ("perfect", 2.9), ("amazing", 2.8), ("awesome", 3.1), ("fantastic", 2.6), ("brilliant", 2.8), ("happy", 2.7),
    ("glad", 2.0), ("pleased", 2.0), ("love", 3.2), ("like", 1.2), ("thanks", 1.9), ("thank", 1.5), ("appreciate", 2.1),
    ("helpful", 1.9), ("kind", 2.0), ("sorted", 1.2), ("resolved", 1.5), ("works", 0.8), ("easy", 1.4), ("quick", 1.0),
    ("best", 3.2), ("cool", 1.3), ("super", 2.0), ("delighted", 3.0), ("satisfied", 1.9), ("exactly", 0.6),
    ("bad", -2.5), ("terrible", -3.1), ("awful", -3.1), ("horrible", -3.0), ("worst", -3.1), ("poor", -2.1),
    ("useless", -2.6), ("ridiculous", -2.4), ("unacceptable", -2.8), ("disgusting", -3.0), ("pathetic", -2.9),
    ("angry", -2.7), ("annoyed", -2.2), ("annoying", -2.2), ("frustrated", -2.4), ("frustrating", -2.4),
    ("furious", -3.2), ("upset", -2.2), ("disappointed", -2.3), ("disappointing", -2.3), ("unhappy", -2.4),
    ("hate", -3.0), ("sick", -1.9), ("tired", -1.4), ("fed up", -2.3), ("waste", -2.0), ("wasted", -2.1),
    ("wrong", -2.1), ("broken", -2.0), ("problem", -1.5), ("problems", -1.6), ("issue", -1.0), ("complaint", -1.8),
    ("complain", -1.8), ("rude", -2.6), ("scam", -3.0), ("fraud", -3.0), ("liar", -3.0), ("lying", -2.6),
    ("stupid", -2.6), ("idiot", -3.0), ("incompetent", -2.9), ("nonsense", -2.0), ("joke", -1.2), ("mess", -2.0),
    ("late", -1.2), ("delayed", -1.6), ("waiting", -1.0), ("cancelled", -1.2), ("overcharged", -2.5),
    ("refund", -0.8), ("never", -0.6), ("again", -0.2), ("sorry", -0.4), ("unfortunately", -1.2), ("worried", -1.8),
    ("confused", -1.3), ("damn", -2.5), ("hell", -2.0), ("shit", -3.0), ("crap", -2.5), ("bloody", -1.8),
    ("cut off", -1.8), ("hung up", -1.8), ("on hold", -1.4), ("no one", -1.0), ("nobody", -1.2), ("lost", -1.5),
    ("speak to a manager", -1.8), ("not happy", -2.4), ("not good", -2.0), ("what a", -0.5),
];

const NEGATIONS: &[&str] = &["not", "no", "never", "dont", "don't", "isnt", "isn't", "wasnt", "wasn't", "cant", "can't", "cannot", "wont", "won't", "didnt", "didn't", "aint", "hardly", "without", "nor"];
const BOOSTERS: &[(&str, f32)] = &[("very", 0.3), ("really", 0.3), ("so", 0.25), ("extremely", 0.4), ("absolutely", 0.35), ("totally", 0.3), ("completely", 0.3), ("incredibly", 0.4), ("quite", 0.1), ("bit", -0.3), ("slightly", -0.3), ("somewhat", -0.2)];

/// Lower-case words, apostrophes kept inside them ("don't").
fn words_of(text: &str) -> Vec<String> {
    text.to_lowercase().split(|c: char| !(c.is_alphanumeric() || c == '\'')).filter(|w| !w.is_empty()).map(|w| w.trim_matches('\'').to_string()).collect()
}

/// The sentiment of `text`.
pub fn score(text: &str) -> Sentiment {
    let words = words_of(text);
    // After "but", what follows counts more than what came before ("the food was fine but the
    // service was awful").
    let but = words.iter().rposition(|w| w == "but" || w == "however");
    let mut sum = 0.0f32;
    let mut i = 0;
    while i < words.len() {
        let (valence, span) = match lookup(&words, i) {
            Some(found) => found,
            None => {
                i += 1;
                continue;
            }
        };
        let mut v = valence;
        for back in 1..=3 {
            let Some(prev) = i.checked_sub(back).map(|j| words[j].as_str()) else { break };
            if let Some((_, boost)) = BOOSTERS.iter().find(|(b, _)| *b == prev) {
                v += boost * v.signum() * (1.0 - 0.2 * (back - 1) as f32);
            }
            if NEGATIONS.contains(&prev) || prev.ends_with("n't") {
                // "not good" is mildly bad; "not bad" is mildly good.
                v *= -0.74;
                break;
            }
        }
        match but {
            Some(b) if i < b => v *= 0.5,
            Some(b) if i > b => v *= 1.5,
            _ => {}
        }
        sum += v;
        i += span;
    }
    let exclaims = text.matches('!').count().min(3) as f32;
    if sum != 0.0 {
        sum += sum.signum() * 0.29 * exclaims;
    }
    let score = (sum / (sum * sum + 15.0).sqrt()).clamp(-1.0, 1.0);
    Sentiment { score: (score * 1000.0).round() / 1000.0, label: Label::of(score) }
}

/// The words that carried the sentiment, each with the booster or negation before it
/// ("extremely frustrating", "not happy"), strongest first.
pub fn key_phrases(text: &str) -> Vec<String> {
    let words = words_of(text);
    let mut found: Vec<(f32, String)> = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let Some((valence, span)) = lookup(&words, i) else {
            i += 1;
            continue;
        };
        let start = match i.checked_sub(1).map(|j| words[j].as_str()) {
            Some(prev) if BOOSTERS.iter().any(|(b, _)| *b == prev) || NEGATIONS.contains(&prev) => i - 1,
            _ => i,
        };
        // A complaint about waiting says how long: keep "for 3 weeks" with it.
        let mut end = i + span;
        if words[i] == "waiting" && words.get(end).is_some_and(|w| w == "for") {
            end = (end + 3).min(words.len());
        }
        let phrase = words[start..end].join(" ");
        if !found.iter().any(|(_, p)| *p == phrase) {
            found.push((valence.abs(), phrase));
        }
        i += span;
    }
    found.sort_by(|a, b| b.0.total_cmp(&a.0));
    found.into_iter().map(|(_, p)| p).take(5).collect()
}

/// The longest lexicon entry starting at word `i`: (valence, words spanned).
fn lookup(words: &[String], i: usize) -> Option<(f32, usize)> {
    for span in (1..=4).rev() {
        if i + span > words.len() {
            continue;
        }
        let phrase = words[i..i + span].join(" ");
        if let Some((_, v)) = LEXICON.iter().find(|(w, _)| *w == phrase) {
            return Some((*v, span));
        }
    }
    None
}

/// A call's running sentiment: flags escalation when a caller turns sharply negative.
#[derive(Debug, Default, Clone)]
pub struct Trend {
    scores: Vec<f32>,
}

impl Trend {
    /// Adds one caller turn; true when this turn is an escalation: very negative, or negative
    /// and well below the caller's mood so far.
    pub fn push(&mut self, sentiment: Sentiment) -> bool {
        let before = (!self.scores.is_empty()).then(|| self.scores.iter().sum::<f32>() / self.scores.len() as f32);
        self.scores.push(sentiment.score);
        sentiment.label == Label::Negative && (sentiment.score <= -0.6 || before.is_some_and(|mood| mood - sentiment.score >= 0.5))
    }

    /// The mean score of the caller's turns so far (0 before any).
    pub fn mood(&self) -> f32 {
        if self.scores.is_empty() {
            0.0
        } else {
            self.scores.iter().sum::<f32>() / self.scores.len() as f32
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callers_words_get_the_expected_label() {
        for (text, label) in [
            ("That's great, thank you so much!", Label::Positive),
            ("Perfect, see you then.", Label::Positive),
            ("This is ridiculous, I've been waiting for an hour.", Label::Negative),
            ("The service was terrible and nobody called me back.", Label::Negative),
            ("I'm not happy with this at all.", Label::Negative),
            ("It's not bad actually.", Label::Positive),
            ("A table for two at seven please.", Label::Neutral),
            ("My order number is 4 5 6 7.", Label::Neutral),
            ("The food was fine but the service was awful.", Label::Negative),
        ] {
            assert_eq!(score(text).label, label, "{text}: {:?}", score(text));
        }
        assert!(score("really terrible").score < score("terrible").score);
        assert!(score("absolutely useless!!!").score <= -0.6);
    }

    #[test]
    fn a_sharp_turn_to_anger_is_an_escalation_and_mild_annoyance_is_not() {
        let mut trend = Trend::default();
        assert!(!trend.push(score("Hi, I'm calling about my order.")));
        assert!(!trend.push(score("Yes, it's 4 5 6 7.")));
        assert!(trend.push(score("This is absolutely ridiculous, you people are useless!")));
        let mut calm = Trend::default();
        assert!(!calm.push(score("It's a bit late, but that's fine.")));
        assert!(calm.mood() > -0.5);
    }
}
