//! Sentiment of one utterance: a valence lexicon with negation, intensifiers, "but", shouting
//! and exclamation, scored like VADER (`sum / sqrt(sum² + 15)`, so −1..1), plus the call-level
//! escalation rule.
//!
//! Why a lexicon and not the embedding model: a caller's anger on a phone line is said in a
//! few plain words ("this is ridiculous", "I've been waiting an hour"), a lexicon reads those
//! the same way every time and explains itself, and it costs microseconds on the voice path's
//! side branch. The words are VADER's human-rated lexicon (≈7,500 entries, the model store's
//! `vader-lexicon`), under a layer written for service calls (waiting, being cut off,
//! charges) that also silences what is no sentiment on a phone ("please", "yes", "no").
//! Without the store's file the service-call layer works alone.
use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

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

/// The model store's lexicon: VADER's, one entry per line, `token<TAB>mean valence<TAB>…`.
pub const MODEL: &str = "vader-lexicon";

/// Service-call words: (word, valence −4..4), over the store's lexicon. Multi-word phrases are
/// matched on the joined words; a valence of 0 removes a word that carries no sentiment on a
/// phone line.
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
    // Words of a phone call's mechanics, which general lexicons rate.
    ("please", 0.0), ("yes", 0.0), ("no", 0.0), ("ok", 0.0), ("okay", 0.0), ("yeah", 0.0), ("sure", 0.0), ("hold", 0.0),
    ("call", 0.0), ("number", 0.0), ("order", 0.0), ("charge", 0.0), ("charged", -0.6), ("bill", 0.0), ("care", 0.0),
];

/// Words with valences, looked up by their lower-case text.
pub struct Lexicon {
    entries: HashMap<String, f32>,
    /// Words in the longest entry.
    longest: usize,
}

impl Lexicon {
    /// The service-call words alone.
    pub fn built_in() -> Self {
        Self::with(HashMap::new())
    }

    /// VADER's lexicon file under the service-call words.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut entries = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let mut fields = line.split('\t');
            let (Some(token), Some(valence)) = (fields.next(), fields.next()) else { continue };
            let valence: f32 = valence.trim().parse().map_err(|_| format!("{}:{}: valence {valence:?} is not a number", path.display(), n + 1))?;
            entries.insert(token.trim().to_lowercase(), valence);
        }
        if entries.len() < 1000 {
            return Err(format!("{}: {} entries; not VADER's lexicon", path.display(), entries.len()));
        }
        Ok(Self::with(entries))
    }

    fn with(mut entries: HashMap<String, f32>) -> Self {
        for (word, valence) in LEXICON {
            if *valence == 0.0 {
                entries.remove(*word);
            } else {
                entries.insert(word.to_string(), *valence);
            }
        }
        let longest = entries.keys().map(|k| k.split(' ').count()).max().unwrap_or(1).min(4);
        Lexicon { entries, longest }
    }

    /// VADER's lexicon from the model store (`ringline models pull` installs it).
    pub fn from_store() -> Result<Self, String> {
        let store = crate::models::ModelStore::from_env().map_err(|e| e.to_string())?;
        Lexicon::from_file(&store.require(MODEL).map_err(|e| e.to_string())?)
    }

    /// The process's lexicon: the store's when it is installed, else the built-in one (said once).
    pub fn shared() -> &'static Lexicon {
        static SHARED: OnceLock<Lexicon> = OnceLock::new();
        SHARED.get_or_init(|| {
            Lexicon::from_store().unwrap_or_else(|e| {
                tracing::warn!("sentiment: service-call words only ({e}); run `ringline models pull` for the full lexicon");
                Lexicon::built_in()
            })
        })
    }

    /// The sentiment of `text`.
    pub fn score(&self, text: &str) -> Sentiment {
        let words = words_of(text);
        // Shouting a word counts only when the rest is not shouted too.
        let shouting_matters = words.iter().any(|w| !w.shouted);
        // After "but", what follows counts more than what came before ("the food was fine but the
        // service was awful").
        let but = words.iter().rposition(|w| w.text == "but" || w.text == "however");
        let mut sum = 0.0f32;
        let mut i = 0;
        while i < words.len() {
            let Some((valence, span)) = self.lookup(&words, i) else {
                i += 1;
                continue;
            };
            // "kind of" hedges; it is not kindness. A booster ("most", "seriously") only
            // strengthens the word after it.
            let booster = BOOSTERS.iter().any(|(b, _)| *b == words[i].text);
            if booster || (words[i].text == "kind" && words.get(i + 1).is_some_and(|w| w.text == "of")) {
                i += 1;
                continue;
            }
            let mut v = valence;
            if shouting_matters && words[i].shouted {
                v += 0.733 * v.signum();
            }
            for back in 1..=3 {
                let Some(j) = i.checked_sub(back) else { break };
                let prev = words[j].text.as_str();
                if let Some((_, boost)) = BOOSTERS.iter().find(|(b, _)| *b == prev) {
                    // A booster further back counts a little less.
                    v += boost * v.signum() * [1.0, 0.95, 0.9][back - 1];
                }
                // "the least helpful" is unhelpful; "at least" is not a negation.
                let least = prev == "least" && !(j > 0 && matches!(words[j - 1].text.as_str(), "at" | "very"));
                if NEGATIONS.contains(&prev) || prev.ends_with("n't") || least {
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
        // Emoticons (":)", ":-(") are whole space-separated tokens the word split drops.
        sum += text.split_whitespace().filter(|t| t.chars().any(|c| !c.is_alphanumeric())).filter_map(|t| self.entries.get(t)).sum::<f32>();
        // Exclamation marks raise what was said; so do repeated question marks ("really??").
        let exclaims = 0.29 * text.matches('!').count().min(4) as f32;
        let questions = match text.matches('?').count() {
            0 | 1 => 0.0,
            n @ 2..=3 => 0.18 * n as f32,
            _ => 0.96,
        };
        if sum != 0.0 {
            sum += sum.signum() * (exclaims + questions);
        }
        let score = (sum / (sum * sum + 15.0).sqrt()).clamp(-1.0, 1.0);
        Sentiment { score: (score * 1000.0).round() / 1000.0, label: Label::of(score) }
    }

    /// The longest entry starting at word `i`: (valence, words spanned).
    fn lookup<W: AsRef<str>>(&self, words: &[W], i: usize) -> Option<(f32, usize)> {
        for span in (1..=self.longest).rev() {
            if i + span > words.len() {
                continue;
            }
            let found = if span == 1 {
                self.entries.get(words[i].as_ref())
            } else {
                self.entries.get(&words[i..i + span].iter().map(AsRef::as_ref).collect::<Vec<_>>().join(" "))
            };
            if let Some(v) = found {
                return Some((*v, span));
            }
        }
        None
    }
}

/// Words that turn the sentiment word after them around (and any word ending in "n't").
const NEGATIONS: &[&str] = &[
    "not", "no", "never", "dont", "isnt", "wasnt", "cant", "cannot", "wont", "didnt", "aint", "hardly", "without", "nor", "none", "nothing",
    "nowhere", "neither", "nope", "rarely", "seldom", "despite", "arent", "couldnt", "doesnt", "hadnt", "hasnt", "havent", "shouldnt",
    "werent", "wouldnt", "mustnt", "neednt",
];
/// Words that strengthen (or, below zero, soften) the sentiment word after them.
const BOOSTERS: &[(&str, f32)] = &[
    ("very", 0.3), ("really", 0.3), ("so", 0.25), ("extremely", 0.4), ("absolutely", 0.35), ("totally", 0.3), ("completely", 0.3),
    ("incredibly", 0.4), ("quite", 0.1), ("utterly", 0.35), ("highly", 0.3), ("deeply", 0.3), ("truly", 0.3), ("particularly", 0.25),
    ("especially", 0.25), ("most", 0.25), ("more", 0.2), ("seriously", 0.3), ("entirely", 0.3), ("thoroughly", 0.3), ("hugely", 0.3),
    ("remarkably", 0.3), ("unbelievably", 0.35), ("awfully", 0.3), ("fucking", 0.35), ("freaking", 0.3),
    ("bit", -0.3), ("slightly", -0.3), ("somewhat", -0.2), ("barely", -0.3), ("almost", -0.2), ("kinda", -0.3),
    ("sorta", -0.3), ("partly", -0.25), ("marginally", -0.3), ("less", -0.2), ("little", -0.2), ("fairly", -0.1), ("rather", -0.1),
];

/// One word: lower case, apostrophes kept inside ("don't"), and whether it was written in
/// capitals ("this is UNACCEPTABLE").
struct Word {
    text: String,
    shouted: bool,
}

impl AsRef<str> for Word {
    fn as_ref(&self) -> &str {
        &self.text
    }
}

fn words_of(text: &str) -> Vec<Word> {
    // A typographic apostrophe is an apostrophe ("don’t").
    let text = text.replace('\u{2019}', "'");
    text.split(|c: char| !(c.is_alphanumeric() || c == '\''))
        .map(|w| w.trim_matches('\''))
        .filter(|w| !w.is_empty())
        .map(|w| Word { text: w.to_lowercase(), shouted: w.chars().count() > 1 && w.chars().any(char::is_alphabetic) && !w.chars().any(char::is_lowercase) })
        .collect()
}

/// The sentiment of `text`, with the process's lexicon.
pub fn score(text: &str) -> Sentiment {
    Lexicon::shared().score(text)
}

/// The words that carried the sentiment, each with the booster or negation before it
/// ("extremely frustrating", "not happy"), strongest first.
pub fn key_phrases(text: &str) -> Vec<String> {
    let lexicon = Lexicon::shared();
    let words: Vec<Word> = words_of(text);
    let words: Vec<String> = words.into_iter().map(|w| w.text).collect();
    let mut found: Vec<(f32, String)> = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let Some((valence, span)) = lexicon.lookup(&words, i) else {
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

    /// The built-in words, and the store's lexicon when it is pulled.
    fn lexicons() -> Vec<Lexicon> {
        let mut all = vec![Lexicon::built_in()];
        match Lexicon::from_store() {
            Ok(lexicon) => all.push(lexicon),
            Err(e) => eprintln!("store lexicon skipped: {e} (run `ringline models pull`)"),
        }
        all
    }

    #[test]
    fn callers_words_get_the_expected_label() {
        for lexicon in lexicons() {
            let score = |text: &str| lexicon.score(text);
            for (text, label) in [
                ("That's great, thank you so much!", Label::Positive),
                ("Perfect, see you then.", Label::Positive),
                ("This is ridiculous, I've been waiting for an hour.", Label::Negative),
                ("The service was terrible and nobody called me back.", Label::Negative),
                ("I'm not happy with this at all.", Label::Negative),
                ("It's not bad actually.", Label::Positive),
                ("A table for two at seven please.", Label::Neutral),
                ("My order number is 4 5 6 7.", Label::Neutral),
                ("No, the number is AB12345.", Label::Neutral),
                ("Yes, that's right.", Label::Neutral),
                ("The food was fine but the service was awful.", Label::Negative),
            ] {
                assert_eq!(score(text).label, label, "{text}: {:?} ({} entries)", score(text), lexicon.entries.len());
            }
            assert!(score("really terrible").score < score("terrible").score);
            assert!(score("absolutely useless!!!").score <= -0.6);
            assert!(score("this is UNACCEPTABLE").score < score("this is unacceptable").score, "shouting counts");
            assert_eq!(score("THIS IS UNACCEPTABLE").score, score("this is unacceptable").score, "all capitals is not shouting one word");
        }
    }

    #[test]
    fn the_stores_lexicon_knows_what_the_service_words_do_not() {
        let all = lexicons();
        let Some(full) = all.get(1) else { return };
        for (text, label) in [("I'm thrilled with it", Label::Positive), ("That was a dreadful experience", Label::Negative), ("sounds good :)", Label::Positive), ("missed it again :(", Label::Negative)] {
            assert_eq!(full.score(text).label, label, "{text}: {:?}", full.score(text));
        }
        assert_eq!(all[0].score("I'm thrilled with it").label, Label::Neutral);
    }

    #[test]
    fn vaders_finer_rules_hold() {
        for lexicon in lexicons() {
            let score = |text: &str| lexicon.score(text).score;
            // "least" turns a word around, except in "at least".
            assert!(score("the least helpful person") < 0.0, "{}", score("the least helpful person"));
            assert!(score("at least it was helpful") > 0.0);
            // "kind of" is a hedge, not kindness; a booster adds nothing by itself.
            assert_eq!(score("it was kind of late"), score("it was late"));
            assert_eq!(score("seriously"), 0.0);
            // Repeated question marks raise what was said; one does not.
            assert!(score("is this terrible??") < score("is this terrible?"));
            assert_eq!(score("is this terrible?"), score("is this terrible"));
            // A typographic apostrophe negates like a plain one.
            assert_eq!(score("I don\u{2019}t like it"), score("I don't like it"));
        }
    }

    #[test]
    fn a_file_that_is_not_the_lexicon_is_refused_naming_it() {
        let dir = std::env::temp_dir().join(format!("ringline-lexicon-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bad = dir.join("bad.txt");
        std::fs::write(&bad, "good\tvery\n").unwrap();
        let e = Lexicon::from_file(&bad).err().unwrap();
        assert!(e.contains("bad.txt:1") && e.contains("\"very\""), "{e}");
        std::fs::write(&bad, "good\t1.9\n").unwrap();
        assert!(Lexicon::from_file(&bad).err().unwrap().contains("not VADER's lexicon"));
        std::fs::remove_dir_all(&dir).unwrap();
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
