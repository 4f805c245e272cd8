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

#[cfg(test)]
mod tests {
    use super::*;

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
}
