//! BERT's WordPiece tokenizer, read from the `tokenizer.json` the MiniLM package ships.
//!
//! The embedding model was trained with one exact tokenization (lower-casing, accents
//! stripped, punctuation split, greedy longest-match word pieces with `##` continuations), so
//! this follows the Hugging Face `BertNormalizer` + `BertPreTokenizer` + `WordPiece` pipeline
//! the file declares rather than any approximation of it; the unit tests pin its output on
//! the real vocabulary. Only what all-MiniLM-L6-v2 uses is implemented, and a file that asks
//! for something else is refused on load.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;
use unicode_normalization::UnicodeNormalization;

/// Words longer than this become `[UNK]`, as in BERT.
const MAX_WORD_CHARS: usize = 100;

pub struct WordPiece {
    vocab: HashMap<String, u32>,
    unk: u32,
    cls: u32,
    sep: u32,
}

#[derive(Deserialize)]
struct File {
    model: Model,
}

#[derive(Deserialize)]
struct Model {
    #[serde(rename = "type")]
    kind: String,
    vocab: HashMap<String, u32>,
    #[serde(default = "unk")]
    unk_token: String,
    #[serde(default = "prefix")]
    continuing_subword_prefix: String,
}

fn unk() -> String {
    "[UNK]".into()
}

fn prefix() -> String {
    "##".into()
}

impl WordPiece {
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let file: File = serde_json::from_str(&text).map_err(|e| format!("{}: not a tokenizer file: {e}", path.display()))?;
        let model = file.model;
        if model.kind != "WordPiece" || model.continuing_subword_prefix != "##" {
            return Err(format!("{}: a {} tokenizer; only BERT's WordPiece is supported", path.display(), model.kind));
        }
        let id = |token: &str| model.vocab.get(token).copied().ok_or_else(|| format!("{}: no {token} in the vocabulary", path.display()));
        Ok(WordPiece { unk: id(&model.unk_token)?, cls: id("[CLS]")?, sep: id("[SEP]")?, vocab: model.vocab })
    }

    /// `[CLS] pieces… [SEP]`, at most `max_len` ids in all.
    pub fn encode(&self, text: &str, max_len: usize) -> Vec<u32> {
        let mut ids = vec![self.cls];
        'words: for word in pre_tokenize(text) {
            for id in self.pieces(&word) {
                if ids.len() + 1 >= max_len {
                    break 'words;
                }
                ids.push(id);
            }
        }
        ids.push(self.sep);
        ids
    }

    fn pieces(&self, word: &str) -> Vec<u32> {
        let chars: Vec<char> = word.chars().collect();
        if chars.len() > MAX_WORD_CHARS {
            return vec![self.unk];
        }
        let mut out = Vec::new();
        let mut start = 0;
        while start < chars.len() {
            let mut end = chars.len();
            let mut found = None;
            while start < end {
                let piece: String = chars[start..end].iter().collect();
                let key = if start > 0 { format!("##{piece}") } else { piece };
                if let Some(&id) = self.vocab.get(&key) {
                    found = Some(id);
                    break;
                }
                end -= 1;
            }
            match found {
                Some(id) => out.push(id),
                // One piece that matches nothing makes the whole word unknown.
                None => return vec![self.unk],
            }
            start = end;
        }
        out
    }
}

/// BertNormalizer (clean, CJK spacing, lower case, accents stripped) then BertPreTokenizer
/// (split on whitespace and around every punctuation character).
fn pre_tokenize(text: &str) -> Vec<String> {
    let mut cleaned = String::with_capacity(text.len());
    for c in text.chars() {
        if c == '\0' || c == '\u{fffd}' || (c.is_control() && !c.is_whitespace()) {
            continue;
        }
        if is_cjk(c) {
            cleaned.push(' ');
            cleaned.push(c);
            cleaned.push(' ');
        } else if c.is_whitespace() {
            cleaned.push(' ');
        } else {
            cleaned.push(c);
        }
    }
    let normalized: String = cleaned.to_lowercase().nfd().filter(|c| !is_combining_mark(*c)).collect();
    let mut words = Vec::new();
    for chunk in normalized.split_whitespace() {
        let mut word = String::new();
        for c in chunk.chars() {
            if is_punctuation(c) {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                words.push(c.to_string());
            } else {
                word.push(c);
            }
        }
        if !word.is_empty() {
            words.push(word);
        }
    }
    words
}

/// BERT counts every non-alphanumeric ASCII symbol as punctuation, and Unicode's `P*`
/// classes beyond it; outside ASCII this takes what is neither a letter, a digit nor a mark.
fn is_punctuation(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_punctuation();
    }
    matches!(c, '\u{2000}'..='\u{206f}' | '\u{3000}'..='\u{303f}' | '\u{ff01}'..='\u{ff0f}' | '¡' | '¿' | '«' | '»' | '·')
}

fn is_combining_mark(c: char) -> bool {
    matches!(c, '\u{0300}'..='\u{036f}' | '\u{1ab0}'..='\u{1aff}' | '\u{1dc0}'..='\u{1dff}' | '\u{20d0}'..='\u{20ff}' | '\u{fe20}'..='\u{fe2f}')
}

fn is_cjk(c: char) -> bool {
    matches!(c as u32, 0x4E00..=0x9FFF | 0x3400..=0x4DBF | 0x20000..=0x2A6DF | 0x2A700..=0x2B73F | 0x2B740..=0x2B81F | 0x2B820..=0x2CEAF | 0xF900..=0xFAFF | 0x2F800..=0x2FA1F)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_lowered_stripped_of_accents_and_split_at_punctuation() {
        assert_eq!(pre_tokenize("Café, s'il vous plaît!"), ["cafe", ",", "s", "'", "il", "vous", "plait", "!"]);
        assert_eq!(pre_tokenize("  I'd\tlike\u{0}  2 tables.  "), ["i", "'", "d", "like", "2", "tables", "."]);
    }

    #[test]
    fn words_split_into_the_longest_pieces_the_vocabulary_has() {
        let vocab: HashMap<String, u32> =
            ["[UNK]", "[CLS]", "[SEP]", "book", "##ing", "##s", "un", "##want", "##ed", "a"].iter().enumerate().map(|(i, t)| (t.to_string(), i as u32)).collect();
        let tokenizer = WordPiece { unk: 0, cls: 1, sep: 2, vocab };
        assert_eq!(tokenizer.encode("Bookings unwanted", 64), [1, 3, 4, 5, 6, 7, 8, 2]);
        // A word with a piece the vocabulary lacks is one [UNK], not a partial match.
        assert_eq!(tokenizer.encode("bookx a", 64), [1, 0, 9, 2]);
        // Truncation keeps [SEP] last.
        assert_eq!(tokenizer.encode("a a a a a", 4), [1, 9, 9, 2]);
    }
}
