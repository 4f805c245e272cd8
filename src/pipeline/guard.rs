//! Guards on a free-form LLM's replies: a small model refuses ("as an AI, I can't book
//! tables") or says the same thing turn after turn. The think stage holds a reply's opening
//! until it can be judged, asks again once with other sampling when it is refused, and says
//! the assistant's fallback line when the second is refused too. The caller never hears the
//! refused words; only the opening waits (to its first clause, or its first sentence when it
//! opens like an apology).

use crate::llm::Message;

/// Openings that may turn into a refusal: held to the end of the sentence, not the clause.
const APOLOGETIC: &[&str] = &["i'm sorry", "i am sorry", "sorry", "unfortunately", "as a", "as an", "i'm an", "i am an", "i'm a", "i am a", "i'm just", "i cannot", "i can't", "i don't"];

/// Words that mark a refusal to do the job.
const REFUSALS: &[&str] = &[
    "as an ai", "as a chatbot", "as a language model", "as an assistant, i can", "i'm an ai", "i am an ai", "i'm a chatbot", "i am a chatbot", "text-based",
    "language model", "i'm just a bot", "i don't have the ability", "i do not have the ability", "i'm not able to assist", "i am not able to assist",
    "i can't assist with", "i cannot assist with", "i can't help with that", "i cannot help with that", "i'm unable to", "i am unable to", "virtual assistant",
];

/// The longest opening held before it is judged anyway.
const MAX_HELD_CHARS: usize = 160;

/// Whether enough of the reply has come to judge it: its first clause, or its first sentence
/// when it opens like an apology or like an earlier reply of the conversation.
pub fn ready(held: &str, conversation: &[Message]) -> bool {
    let lowered = held.trim_start().to_lowercase();
    if held.len() >= MAX_HELD_CHARS {
        return true;
    }
    let sentence_done = held.contains(['.', '?', '!']);
    let so_far = crate::text::normalized_words(held);
    let echoes = conversation.iter().any(|m| match m {
        Message::Assistant { content, .. } => opens_like(&so_far, &first_sentence_words(content)),
        _ => false,
    });
    if echoes || APOLOGETIC.iter().any(|a| lowered.starts_with(a)) {
        return sentence_done;
    }
    sentence_done || held.contains([',', ';', ':'])
}

/// Why the reply's opening must not be said: `refusal` or `repeat`; `None` when it may.
pub fn judge(held: &str, conversation: &[Message]) -> Option<&'static str> {
    let lowered = held.to_lowercase().replace('’', "'");
    if REFUSALS.iter().any(|r| lowered.contains(r)) {
        return Some("refusal");
    }
    let opening = first_sentence_words(held);
    if opening.len() >= 4 {
        let said_before = conversation.iter().any(|m| match m {
            Message::Assistant { content, .. } => first_sentence_words(content) == opening,
            _ => false,
        });
        if said_before {
            return Some("repeat");
        }
    }
    None
}

/// Whether the words so far could be the opening of `earlier`: all but the last the same, and
/// the last the start of its word there (a token may end mid-word: "I" of "I'm").
fn opens_like(so_far: &[String], earlier: &[String]) -> bool {
    let Some((last, whole)) = so_far.split_last() else { return false };
    earlier.len() > whole.len() && earlier.starts_with(whole) && earlier[whole.len()].starts_with(last.as_str())
}

fn first_sentence_words(text: &str) -> Vec<String> {
    let first = text.split(['.', '?', '!']).next().unwrap_or("");
    crate::text::normalized_words(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assistant(text: &str) -> Message {
        Message::Assistant { content: text.into(), tool_calls: Vec::new() }
    }

    #[test]
    fn refusals_and_repeats_are_caught_and_ordinary_replies_pass() {
        assert_eq!(judge("I'm sorry for any misunderstanding, but as a chatbot, I don't have the ability to book tables.", &[]), Some("refusal"));
        assert_eq!(judge("As an AI language model, I cannot do that.", &[]), Some("refusal"));
        let history = vec![assistant("I'm so glad to hear that. What's the best option?")];
        assert_eq!(judge("I'm so glad to hear that.", &history), Some("repeat"));
        assert_eq!(judge("Sure, for how many people?", &history), None);
        assert_eq!(judge("Yes.", &history), None, "a short answer is not a repeat");
    }

    #[test]
    fn an_apologetic_opening_is_held_to_its_sentence_and_others_to_their_clause() {
        assert!(!ready("I'm sorry,", &[]), "an apology may turn into a refusal");
        assert!(ready("I'm sorry, we're full.", &[]));
        assert!(ready("Sure,", &[]));
        assert!(!ready("Sure", &[]));
        assert!(ready(&"word ".repeat(40), &[]));
        let history = vec![assistant("Sure, we have a table at seven.")];
        assert!(!ready("Sure,", &history), "an opening like an earlier reply is held to its sentence");
        assert!(ready("Sure, we have a table at seven.", &history));
        // A token may end inside a word: "I" of "I'm" still opens like the greeting.
        let greeted = vec![assistant("Hello, I'm an automated assistant calling on behalf of my client. I'd like a table.")];
        let mut held = String::new();
        for piece in ["Hello", ",", " I", "'m", " an", " automated", " assistant", " calling", " on", " behalf", " of", " my", " client", "."] {
            held.push_str(piece);
            assert_eq!(ready(&held, &greeted), piece == ".", "held until its sentence ends: {held:?}");
        }
        assert_eq!(judge(&held, &greeted), Some("repeat"));
        assert!(ready("Hello, it's", &greeted), "another reply goes on at its clause");
    }
}
