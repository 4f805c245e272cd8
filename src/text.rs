//! Text utilities shared by the speech stages: sentence splitting and word normalisation.
//!
//! The splitter decides what TTS speaks as one unit, so it must not break "Dr. Smith" or
//! "3.5" and must never lose text: joining its output with spaces gives back the input's words.

/// Abbreviations after which a period does not end a sentence.
const ABBREVIATIONS: &[&str] = &["mr", "mrs", "ms", "dr", "st", "jr", "sr", "prof", "vs", "etc", "e.g", "i.e", "no", "approx"];

/// Splits text into sentences at `.`, `!`, `?` (and newlines), keeping the punctuation.
pub fn split_sentences(text: &str) -> Vec<String> {
    let mut sentences = Vec::new();
    let mut current = String::new();
    let chars: Vec<char> = text.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if c == '\n' {
            push_trimmed(&mut sentences, &mut current);
            continue;
        }
        current.push(c);
        if matches!(c, '.' | '!' | '?') {
            let next = chars.get(i + 1).copied();
            let at_boundary = next.is_none_or(|n| n.is_whitespace() || n == '"' || n == '\'');
            let decimal = c == '.' && next.is_some_and(|n| n.is_ascii_digit());
            if at_boundary && !decimal && !(c == '.' && ends_with_abbreviation(&current)) {
                push_trimmed(&mut sentences, &mut current);
            }
        }
    }
    push_trimmed(&mut sentences, &mut current);
    sentences
}

/// The byte index just after the last sentence end in `text` that is followed by more text
/// (a final "Dr." or "3." with nothing after it may still be growing).
fn last_sentence_boundary(text: &str) -> Option<usize> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut boundary = None;
    for (i, &(at, c)) in chars.iter().enumerate() {
        if !matches!(c, '.' | '!' | '?') {
            continue;
        }
        let Some(&(next_at, next)) = chars.get(i + 1) else { continue };
        if !next.is_whitespace() {
            continue;
        }
        if c == '.' && ends_with_abbreviation(&text[..at + 1]) {
            continue;
        }
        boundary = Some(next_at);
    }
    boundary
}

fn push_trimmed(sentences: &mut Vec<String>, current: &mut String) {
    let trimmed = current.trim();
    if !trimmed.is_empty() {
        sentences.push(trimmed.to_string());
    }
    current.clear();
}

fn ends_with_abbreviation(text: &str) -> bool {
    let word = text.trim_end_matches('.').rsplit(|c: char| c.is_whitespace()).next().unwrap_or("");
    ABBREVIATIONS.contains(&word.to_lowercase().as_str()) || (word.len() == 1 && word.chars().all(|c| c.is_uppercase()))
}

/// Lowercase words without punctuation, for comparing what was said with what was heard.
pub fn normalized_words(text: &str) -> Vec<String> {
    text.split(|c: char| c.is_whitespace() || c == '-')
        .map(|w| w.chars().filter(|c| c.is_alphanumeric() || *c == '\'').collect::<String>().to_lowercase())
        .filter(|w| !w.is_empty())
        .collect()
}

/// Whether `heard` says nothing but `said`, once or more back to back: what a caller's cough
/// after their turn, heard again with the turn, may come back as ("It's 4 5. It's 4 5." — the
/// decoder starting the words over on the sound).
pub fn says_only(heard: &str, said: &str) -> bool {
    let (heard, said) = (normalized_words(heard), normalized_words(said));
    if said.is_empty() {
        return heard.is_empty();
    }
    !heard.is_empty() && heard.len() % said.len() == 0 && heard.chunks(said.len()).all(|copy| copy == said.as_slice())
}

/// Whether a word says one digit, as a caller reads a number out and whisper writes it: "5",
/// "five", "oh", "zero" (case and punctuation aside: "Five,", "0.").
pub fn is_one_digit(word: &str) -> bool {
    const SPELLED: &[&str] = &["zero", "oh", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"];
    let word = word.trim_matches(|c: char| !c.is_alphanumeric()).to_lowercase();
    (word.len() == 1 && word.chars().all(|c| c.is_ascii_digit())) || SPELLED.contains(&word.as_str())
}

/// Cuts streamed LLM text into speakable chunks as it arrives.
///
/// Whole sentences are released as soon as the next one begins. The first chunk of a reply is
/// released early at a clause break (`,` `;` `:`) once it has a few words, so the caller hears
/// the agent sooner; later chunks wait for full sentences, which sound more natural.
#[derive(Debug, Default)]
pub struct SentenceChunker {
    buffer: String,
    emitted_any: bool,
}

/// Words needed before the first chunk may end at a clause break: one, so that an opening
/// "Sure," or "Of course," is spoken while the rest is still being written.
const FIRST_CHUNK_MIN_WORDS: usize = 1;

impl SentenceChunker {
    pub fn push(&mut self, text: &str) -> Vec<String> {
        self.buffer.push_str(text);
        let mut ready = Vec::new();
        if let Some(boundary) = last_sentence_boundary(&self.buffer) {
            ready = split_sentences(&self.buffer[..boundary]);
            self.buffer.drain(..boundary);
        } else if !self.emitted_any {
            if let Some(cut) = self.clause_break() {
                ready.push(self.buffer[..cut].trim().to_string());
                self.buffer.drain(..cut);
            }
        }
        if !ready.is_empty() {
            self.emitted_any = true;
        }
        ready
    }

    /// The byte index just past the first clause break after enough words, if any.
    fn clause_break(&self) -> Option<usize> {
        let mut words = 0;
        let mut in_word = false;
        for (i, c) in self.buffer.char_indices() {
            if c.is_whitespace() {
                in_word = false;
            } else if !in_word {
                in_word = true;
                words += 1;
            }
            let followed_by_space = self.buffer[i + c.len_utf8()..].starts_with(char::is_whitespace);
            if matches!(c, ',' | ';' | ':') && followed_by_space && words >= FIRST_CHUNK_MIN_WORDS {
                return Some(i + c.len_utf8());
            }
        }
        None
    }

    /// Whatever is left when the stream ends.
    pub fn finish(&mut self) -> Option<String> {
        let rest = std::mem::take(&mut self.buffer);
        let rest = rest.trim();
        (!rest.is_empty()).then(|| rest.to_string())
    }
}

/// Opens a span the caller cannot interrupt (a legal disclosure, a confirmation read back).
pub const HOLD_OPEN: &str = "<no-interrupt>";
/// Closes it.
pub const HOLD_CLOSE: &str = "</no-interrupt>";

/// Text without the `<no-interrupt>` marks, as it is spoken and kept in the history.
pub fn strip_marks(text: &str) -> String {
    let stripped = text.replace(HOLD_OPEN, "").replace(HOLD_CLOSE, "");
    stripped.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A speakable chunk, and whether the caller may interrupt it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub text: String,
    pub interruptible: bool,
}

/// A [`SentenceChunker`] that also follows `<no-interrupt>…</no-interrupt>` marks, even when a
/// mark arrives split across pieces: a mark always ends the chunk before it, and the chunks
/// inside are flagged uninterruptible.
#[derive(Debug, Default)]
pub struct MarkedChunker {
    chunker: SentenceChunker,
    /// Text held back because it may be the start of a mark.
    held: String,
    inside: bool,
}

impl MarkedChunker {
    pub fn push(&mut self, piece: &str) -> Vec<Chunk> {
        self.held.push_str(piece);
        let mut ready = Vec::new();
        loop {
            let mark = if self.inside { HOLD_CLOSE } else { HOLD_OPEN };
            match self.held.find(mark) {
                Some(at) => {
                    let before: String = self.held.drain(..at + mark.len()).collect();
                    self.feed(&before[..at], &mut ready);
                    self.flush_into(&mut ready);
                    self.inside = !self.inside;
                }
                None => {
                    // Keep back the longest tail that could still grow into the mark.
                    let keep = (1..mark.len()).rev().find(|&n| self.held.ends_with(&mark[..n])).unwrap_or(0);
                    let cut = self.held.len() - keep;
                    let text: String = self.held.drain(..cut).collect();
                    self.feed(&text, &mut ready);
                    return ready;
                }
            }
        }
    }

    /// Ends a run of text (the end of an LLM round, a fixed line): everything buffered comes out.
    pub fn flush(&mut self) -> Vec<Chunk> {
        let held = std::mem::take(&mut self.held);
        let mut ready = Vec::new();
        self.feed(&held, &mut ready);
        self.flush_into(&mut ready);
        ready
    }

    /// Text received but not yet released as a chunk (for the history after a cut).
    pub fn pending(&self) -> String {
        strip_marks(&format!("{}{}", self.chunker.buffer, self.held))
    }

    fn feed(&mut self, text: &str, ready: &mut Vec<Chunk>) {
        let interruptible = !self.inside;
        ready.extend(self.chunker.push(text).into_iter().map(|text| Chunk { text, interruptible }));
    }

    fn flush_into(&mut self, ready: &mut Vec<Chunk>) {
        let interruptible = !self.inside;
        ready.extend(self.chunker.finish().map(|text| Chunk { text, interruptible }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_said_again_say_only_them_and_new_words_do_not() {
        assert!(says_only("It's 4 5.", "it's 4, 5"));
        assert!(says_only("It's 4 5, 0, 0. It's 4 5, 0, 0", "It's 4 5, 0, 0."), "started over on a cough");
        assert!(!says_only("It's 4 5, 6 7 8.", "It's 4 5."), "the caller went on");
        assert!(!says_only("It's 4 5. It's 4", "It's 4 5."));
        assert!(!says_only("", "It's 4 5."));
        assert!(says_only("", ""));
    }

    fn chunk_all(pieces: &[&str]) -> Vec<String> {
        let mut chunker = SentenceChunker::default();
        let mut out = Vec::new();
        for piece in pieces {
            out.extend(chunker.push(piece));
        }
        out.extend(chunker.finish());
        out
    }

    #[test]
    fn one_digit_is_told_written_or_spelled() {
        for word in ["5", "0.", "Five,", "oh", "zero", "nine"] {
            assert!(is_one_digit(word), "{word}");
        }
        for word in ["55", "ten", "o", "", "-", "fives"] {
            assert!(!is_one_digit(word), "{word}");
        }
    }

    #[test]
    fn chunks_stream_into_sentences_with_an_early_first_clause() {
        let chunks = chunk_all(&["Sure", ", I can help you", " with that, no problem. Your tab", "le is at 7.30 pm with Dr. Smith. Anything ", "else?"]);
        assert_eq!(chunks, vec!["Sure,", "I can help you with that, no problem.", "Your table is at 7.30 pm with Dr. Smith.", "Anything else?"]);
        let early = chunk_all(&["Well", ", let me see about", " that for you, and then", " I will call back."]);
        assert_eq!(early, vec!["Well,", "let me see about that for you, and then I will call back."]);
        let joined = chunks.join(" ");
        assert_eq!(normalized_words(&joined), normalized_words("Sure, I can help you with that, no problem. Your table is at 7.30 pm with Dr. Smith. Anything else?"));
    }

    #[test]
    fn a_short_reply_comes_out_whole() {
        assert_eq!(chunk_all(&["Hello", " there."]), vec!["Hello there."]);
    }

    #[test]
    fn splits_sentences_but_not_abbreviations_or_decimals() {
        let text = "Hello Dr. Smith. Your balance is 3.5 dollars! Is that right? Thanks";
        assert_eq!(split_sentences(text), vec!["Hello Dr. Smith.", "Your balance is 3.5 dollars!", "Is that right?", "Thanks"]);
    }

    #[test]
    fn no_words_are_lost() {
        let text = "One. Two!  Three?\nFour five";
        let joined = split_sentences(text).join(" ");
        assert_eq!(normalized_words(&joined), normalized_words(text));
    }

    #[test]
    fn marks_make_uninterruptible_chunks_even_when_split_across_pieces() {
        let mut chunker = MarkedChunker::default();
        let mut out = Vec::new();
        for piece in ["Hello. <no-inter", "rupt>This call is recorded. It may be", " reviewed.</no-", "interrupt> How can I help?"] {
            out.extend(chunker.push(piece));
        }
        out.extend(chunker.flush());
        let flags: Vec<(&str, bool)> = out.iter().map(|c| (c.text.as_str(), c.interruptible)).collect();
        assert_eq!(flags, vec![("Hello.", true), ("This call is recorded.", false), ("It may be reviewed.", false), ("How can I help?", true)]);
        assert_eq!(strip_marks("Hi. <no-interrupt>Recorded.</no-interrupt>  Bye."), "Hi. Recorded. Bye.");
    }

    #[test]
    fn a_lone_angle_bracket_is_not_held_forever() {
        let mut chunker = MarkedChunker::default();
        let mut out = chunker.push("Is 3 < 4? Yes. And <");
        out.extend(chunker.flush());
        let texts: Vec<&str> = out.iter().map(|c| c.text.as_str()).collect();
        assert_eq!(texts, vec!["Is 3 < 4?", "Yes.", "And <"]);
    }
}
