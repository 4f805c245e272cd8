//! Conversation flows: an assistant as nodes with narrow goals, so that a small local model
//! — or none — carries a task to its end.
//!
//! An assistant may have a `flow:` beside its free-form `prompt`. A node says a line (a
//! template), collects typed slots (each with its question, a re-prompt and validation),
//! optionally reads them back for a yes/no confirmation, and moves on: when its slots are
//! filled, on yes or no, on a keypad digit, or on a condition over the slots; actions run on
//! the way in (set a disposition, end the call, transfer it, press keys). Global handlers
//! (a caller who wants a person, or has the wrong number) work in every node, and questions off
//! the flow are answered from `knowledge:` before the flow asks again where it was.
//!
//! Slots are filled by the parsers in `parse.rs` from the words as heard: the slot asked for
//! takes the whole utterance; the others are filled too when the words clearly hold them
//! ("a table for two this evening" fills the party size and the date at once). Every line is
//! a template the turn renders (within the template limits) with the call's variables, the
//! slots, and `spoken` (each slot as the agent says it: "7 pm", "today", "5 5 5, 1 2 3 4").
//! Where the parsers find nothing in an answer to a choice, a name or a yes/no, the LLM reads
//! it under a JSON schema (`extract.rs`) and the flow checks what it found.

pub mod extract;
pub mod parse;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use chrono::{NaiveDate, NaiveTime};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::pipeline::tools::Action;
pub use extract::ExtractRequest;
use parse::TimeWindow;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FlowSpec {
    /// The node the conversation begins in (after the first message).
    pub start: String,
    pub nodes: BTreeMap<String, NodeSpec>,
    /// Handlers active in every node, tried before the node's own slots.
    #[serde(default)]
    pub global: Vec<HandlerSpec>,
    /// Questions off the flow and their answers; the flow then asks again where it was.
    #[serde(default)]
    pub knowledge: Vec<KnowledgeSpec>,
    /// Said when the caller's words fit nothing the node expects (default: the pending
    /// question's re-prompt).
    pub fallback: Option<String>,
    /// Said, before the call ends, to a caller who takes their leave ("Thanks, goodbye.") while
    /// the flow still waits for an answer (default: [`FAREWELL`]).
    pub farewell: Option<String>,
    /// The start node's slot that the assistant's first message asks for ("what is your
    /// order number?"): the caller's first words are read as its answer, not only searched
    /// for clear evidence.
    pub first_message_asks: Option<String>,
    /// Whether answers to a choice, a name or a yes/no that the parsers don't understand go to
    /// the LLM, under a JSON schema of what the slot can take (default true).
    #[serde(default = "default_true")]
    pub llm_reads: bool,
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// Said on entering the node (a template).
    pub say: Option<String>,
    /// Slots to fill here, asked in order.
    #[serde(default)]
    pub collect: Vec<SlotSpec>,
    /// Read back once the slots are filled; a yes goes to `next`, a no asks them again.
    pub confirm: Option<String>,
    /// Where to go when the slots are filled (and confirmed).
    pub next: Option<String>,
    /// For a question the node's `say` asks: phrases and where each leads, tried before
    /// yes and no ("reschedule" → `reschedule`).
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
    /// For a yes/no question (`say` asks it): where each answer goes.
    pub on_yes: Option<String>,
    pub on_no: Option<String>,
    /// Keypad digits and where each goes.
    #[serde(default)]
    pub on_digit: BTreeMap<String, String>,
    /// Conditions over the slots, tried in order once they are filled (before `confirm`).
    #[serde(default)]
    pub when: Vec<ConditionSpec>,
    /// Run on entering the node.
    #[serde(default)]
    pub actions: Vec<ActionSpec>,
    /// Slots forgotten on entering the node (to ask them again: "another order?").
    #[serde(default)]
    pub clear: Vec<String>,
    /// An HTTP tool of the assistant to call on entering (after `say`, which covers the
    /// wait); its result is the slot named after the tool, then the flow goes to `next`, or
    /// to `on_failure` when the call fails.
    pub call: Option<ToolCallSpec>,
    pub on_failure: Option<String>,
}

impl NodeSpec {
    /// Every node this one may go to, each with the field that names it (`next`,
    /// `on_digit.1`, `when.0.goto`, …).
    fn targets(&self) -> Vec<(String, &String)> {
        let named = [("next", &self.next), ("on_yes", &self.on_yes), ("on_no", &self.on_no), ("on_failure", &self.on_failure)];
        named
            .into_iter()
            .filter_map(|(key, target)| target.as_ref().map(|t| (key.to_string(), t)))
            .chain(self.on_digit.iter().map(|(d, t)| (format!("on_digit.{d}"), t)))
            .chain(self.when.iter().enumerate().map(|(i, c)| (format!("when.{i}.goto"), &c.goto)))
            .chain(self.routes.iter().enumerate().map(|(i, r)| (format!("routes.{i}.goto"), &r.goto)))
            .collect()
    }

    /// Whether the node asks a question its own answers decide: a route, a yes or no, a key.
    fn asks(&self) -> bool {
        self.on_yes.is_some() || self.on_no.is_some() || !self.routes.is_empty() || !self.on_digit.is_empty()
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ToolCallSpec {
    pub tool: String,
    /// Each argument: a slot or variable as `{{ name }}`, or a fixed text.
    #[serde(default)]
    pub arguments: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SlotKind {
    Integer,
    Number,
    Date,
    Time,
    Phone,
    /// An id read out digit by digit (order and account numbers); `min_digits` (default 4).
    Digits,
    Email,
    Enum,
    Boolean,
    Name,
    String,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SlotSpec {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: SlotKind,
    /// How the agent asks for it (a template).
    pub question: String,
    /// Said when the answer held no value (default: "Sorry, I didn't catch that." and the question).
    pub reprompt: Option<String>,
    /// Said when the value is outside what `min`/`max`/`between` allow (default names the range).
    pub invalid: Option<String>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// Times: the earliest and latest acceptable, `HH:MM` (opening hours).
    pub between: Option<[String; 2]>,
    /// Phone numbers: the fewest digits (default 7).
    pub min_digits: Option<usize>,
    /// Enums: each value and the phrases that name it.
    #[serde(default)]
    pub values: Vec<ChoiceSpec>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ChoiceSpec {
    pub value: String,
    #[serde(default)]
    pub says: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// Phrases that choose it (any one, as words in the answer).
    pub says: Vec<String>,
    pub goto: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConditionSpec {
    pub slot: String,
    pub equals: Option<Value>,
    pub above: Option<f64>,
    pub below: Option<f64>,
    pub goto: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HandlerSpec {
    /// Phrases that trigger it (any one, as words in the utterance).
    pub says: Vec<String>,
    /// Said when it triggers (a template).
    pub say: Option<String>,
    /// Where the flow goes; none: back to where it was.
    pub goto: Option<String>,
    #[serde(default)]
    pub actions: Vec<ActionSpec>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KnowledgeSpec {
    /// Phrases a caller asks it with (any one, as words in the utterance).
    pub question: Vec<String>,
    pub answer: String,
}

/// An action: `end_call`, or a map such as `{set_disposition: booked, notes: "…"}`,
/// `{transfer_call: "+15005550100"}`, `{send_dtmf: "1#"}`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum ActionSpec {
    Named(String),
    Disposition {
        set_disposition: String,
        #[serde(default)]
        notes: String,
    },
    Transfer {
        transfer_call: String,
    },
    Dtmf {
        send_dtmf: String,
    },
}

/// What the agent does next: say a line (a template rendered with `context`), and act.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub template: String,
    pub context: Value,
    pub actions: Vec<Action>,
    /// Where the flow is now, and the slots so far (for events and the report).
    pub node: String,
    pub slots: Map<String, Value>,
    /// A tool to call now; its result goes back through [`Flow::on_tool_result`].
    pub tool: Option<ToolRequest>,
    /// Words no parser understood, for the LLM to read; its answer goes back through
    /// [`Flow::on_extracted`].
    pub extract: Option<ExtractRequest>,
}

/// An HTTP tool call a flow asks for, with its arguments resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolRequest {
    pub tool: String,
    pub arguments: Map<String, Value>,
}

/// The most words a caller's first line may have and still be heard a second time when it
/// comes back doubtful and not understood ([`Flow::understands`]). The bench caller's espeak
/// "Hi. I would like to book a table." came back primed as "Hi. I would like to work
/// available." (words at 0.36 and 0.40); the eval's misheard "Oh, sorry, wrong number." as
/// "Sorry. Right.".
const SHORT_FIRST_LINE: usize = 4;

/// Whether words answer what the flow waits for ([`Flow::answer_check`]).
pub type AnswerCheck = std::sync::Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// What the flow waits for.
#[derive(Debug, Clone, PartialEq)]
enum Awaiting {
    /// The slot at this index of the node's `collect`.
    Slot(usize),
    /// A yes/no to the node's read-back.
    Confirmation,
    /// A yes/no to the node's own question (`on_yes` / `on_no`).
    Answer,
    /// The result of the node's tool call.
    Tool,
    /// The LLM reading `text`: for the slot at this index, or (`None`) a yes/no to the read-back.
    Extraction { slot: Option<usize>, text: String, id: u64 },
    /// A yes/no to "I heard …, is that right?": the slot at `slot` was filled from words the
    /// recognizer was unsure of, in a node without a read-back of its own. `text` is what
    /// the caller said (it may hold the next slots too).
    Check { slot: usize, text: String, question: String },
    /// Nothing more here (the call is ending, or a dead end).
    Nothing,
}

/// What the recognizer is primed with while a flow waits for digits: digits written as
/// digits, grouped as the flow reads them back, after a cue (`bench stt` measures its effect).
/// Without the cue, a prompt that ended in digits made tiny.en drop the first digits of
/// strings said a digit at a time ("25236" heard as "6"; `docs/decisions.md`).
pub const DIGITS_PRIME: &str = "It's 5 5 5, 0 1 2 3";
/// What a name question primes the recognizer with: names said after a cue.
const NAME_PRIMES: [&str; 2] = ["My name is Oliver Quinn", "It's under Elena Novak"];
/// The names in [`NAME_PRIMES`] (their capitalized words after the first), lowercase.
/// Uncommon on purpose: a transcript holding one the caller did not say is the prompt leaking
/// in, and the listener hears such a line again unprimed.
pub fn example_names() -> impl Iterator<Item = String> {
    NAME_PRIMES.iter().flat_map(|prime| prime.split_whitespace().skip(1)).filter(|w| w.starts_with(char::is_uppercase)).map(str::to_lowercase)
}

/// Attempts at one slot before the flow says its fallback and moves on without it.
const MAX_ATTEMPTS: u32 = 3;
const PARDON: &str = "Sorry, I didn't catch that.";
/// The fewest digits of a phone number, where a slot sets none.
const DEFAULT_PHONE_DIGITS: usize = 7;
/// Said to a phone number given at a read-back that collects none.
const NO_NUMBER_NEEDED: &str = "Thanks, I won't need a number for this.";
/// The answer to "Hold on, one more thing.": the flow keeps waiting for what it asked.
const GO_AHEAD: &str = "Sure, go ahead.";
/// The goodbye to a caller who leaves mid-flow, without a `farewell` of its own.
pub const FAREWELL: &str = "Thank you for calling. Goodbye!";
/// The answer to a question the flow cannot answer, without a `fallback` of its own.
const CANNOT_ANSWER: &str = "Sorry, I can't help with that on this call.";

/// One call's flow. Cloned to take back an answer the caller did not let it finish (the
/// agent's continuation of a turn cut in two).
#[derive(Clone)]
pub struct Flow {
    spec: FlowSpec,
    /// Variables and built-ins, for templates.
    base: Map<String, Value>,
    today: NaiveDate,
    node: String,
    slots: Map<String, Value>,
    spoken: Map<String, Value>,
    awaiting: Awaiting,
    attempts: u32,
    /// Nodes entered, in order (a loop guard: a flow cannot pass through more than this many
    /// nodes in one reply).
    visited: Vec<String>,
    /// Whether the start node was entered: by `begin` (the flow greets), or by the caller's
    /// first words after the assistant's first message (which may already hold slots).
    started: bool,
    /// A tool call the reply being built asks for.
    tool: Option<ToolRequest>,
    /// A slot whose answer is being read leniently though the flow did not ask it itself.
    lenient: Option<String>,
    /// Keys pressed for a number slot, until `#`.
    keyed: String,
    /// Whether words no parser understood go to the LLM ([`Flow::read_with_llm`]).
    llm_reads: bool,
    /// What the reply being built asks the LLM to read.
    extract: Option<ExtractRequest>,
    /// Readings asked for so far: each has its number, and only the latest counts.
    readings: u64,
    /// The caller turn being answered was heard unsure: these words (lower case), or all of
    /// them (`Some(empty)`) when the whole turn was.
    unsure: Option<Vec<String>>,
    /// The lines of the last reply that ended or transferred the call, said again after a
    /// question the caller asks over them ([`Flow::after_end`]).
    closing: Vec<String>,
}

/// How many nodes one reply may pass through (`next` chains without a question).
const MAX_HOPS: usize = 16;

impl Flow {
    /// `base` holds the call's variables and built-ins; `today` is the call's date in the
    /// assistant's timezone.
    pub fn new(spec: FlowSpec, base: Map<String, Value>, today: NaiveDate) -> Flow {
        let node = spec.start.clone();
        Flow { spec, base, today, node, slots: Map::new(), spoken: Map::new(), awaiting: Awaiting::Nothing, attempts: 0, visited: Vec::new(), started: false, tool: None, lenient: None, keyed: String::new(), llm_reads: false, extract: None, readings: 0, unsure: None, closing: Vec::new() }
    }

    /// Like [`Flow::on_caller`], for words the recognizer was unsure of: `unsure` names the
    /// doubtful words (empty: the whole turn). A slot filled from them, in a node without a
    /// read-back, is checked with the caller before the flow goes on.
    pub fn on_caller_unsure(&mut self, text: &str, unsure: &[String]) -> Reply {
        self.unsure = Some(unsure.iter().flat_map(|w| crate::text::normalized_words(w)).collect());
        let reply = self.on_caller(text);
        self.unsure = None;
        reply
    }

    /// Lets the flow ask the LLM to read answers its parsers don't understand (see
    /// [`extract`]); the agent turns this on when the assistant has an LLM.
    pub fn read_with_llm(&mut self, on: bool) {
        self.llm_reads = on && self.spec.llm_reads;
    }

    /// A test of whether words already answer what the flow waits for — a choice, a yes or no,
    /// a route — so the listener can end the caller's turn at once instead of waiting out
    /// Smart Turn's doubt. `None` where an answer may pause midway (numbers, dates, times,
    /// digits, names, free text) or nothing is awaited.
    pub fn answer_check(&self) -> Option<AnswerCheck> {
        let node = self.current().clone();
        let probe = Flow::new(self.spec.clone(), Map::new(), self.today);
        match &self.awaited() {
            Awaiting::Slot(index) => {
                let slot = node.collect.get(*index)?.clone();
                // Not numbers, dates or times: callers pause inside them ("for two… this
                // evening"), and an early end cut the eval's hesitations short (2026-11-30).
                if !matches!(slot.kind, SlotKind::Enum | SlotKind::Boolean) {
                    return None;
                }
                Some(std::sync::Arc::new(move |text: &str| probe.parse_slot(&slot, text, false).is_some()))
            }
            Awaiting::Confirmation | Awaiting::Check { .. } => Some(std::sync::Arc::new(|text: &str| parse::yes_no(text).is_some())),
            Awaiting::Answer => {
                let routes: Vec<Vec<String>> = node.routes.iter().map(|r| r.says.clone()).collect();
                let yes_no = node.on_yes.is_some() || node.on_no.is_some();
                Some(std::sync::Arc::new(move |text: &str| (yes_no && parse::yes_no(text).is_some()) || routes.iter().any(|says| mentions(text, says))))
            }
            _ => None,
        }
    }

    /// A test of words that answer what the flow waits for yet usually lead on, so the listener
    /// waits out the whole end-of-turn wait for more: a bare no to a read-back or a check, which
    /// a correction follows after a comma ("No, sorry, make it six people" ended at "No" and the
    /// flow asked for every slot again). `None` where nothing such is awaited.
    pub fn answer_leads_on(&self) -> Option<AnswerCheck> {
        match self.awaited() {
            Awaiting::Confirmation | Awaiting::Check { .. } => Some(std::sync::Arc::new(parse::only_no)),
            _ => None,
        }
    }

    /// Whether the flow would understand words as the caller's answer to what it waits for —
    /// the slot's value, a yes or no, a route, or words any node answers (a global handler, a
    /// knowledge question) — unlike [`Flow::answer_check`], for every kind of slot. `None`
    /// when it waits for nothing in particular. The listener asks it of a doubtful transcript
    /// before it hears the words a second time.
    ///
    /// The first words before a start node that collects are understood when they hold what
    /// works anywhere or clear evidence of one of its slots: the luigis eval's "Oh, sorry, wrong
    /// number." came back primed as "Sorry. Right." and began a booking (2026-12-03). A first
    /// line longer than [`SHORT_FIRST_LINE`] words is taken as heard: it is most often the
    /// request the flow serves ("I would like to book a table."), which no second hearing
    /// would make understood, and every doubtful one would cost a decode on the first turn.
    pub fn understands(&self) -> Option<AnswerCheck> {
        let node = self.current().clone();
        let probe = Flow::new(self.spec.clone(), Map::new(), self.today);
        let awaited = self.awaited();
        let first_words = !self.started && awaited == Awaiting::Nothing && !node.collect.is_empty();
        let slot = match &awaited {
            Awaiting::Slot(index) => Some(node.collect.get(*index)?.clone()),
            Awaiting::Confirmation | Awaiting::Check { .. } | Awaiting::Answer => None,
            Awaiting::Nothing if first_words => None,
            _ => return None,
        };
        let answer = self.answer_check();
        let answering = awaited == Awaiting::Answer;
        Some(std::sync::Arc::new(move |text: &str| {
            let anywhere = probe.spec.global.iter().any(|h| mentions(text, &h.says)) || probe.knowledge(text).is_some();
            let answers = match &slot {
                Some(slot) => probe.parse_slot(slot, text, false).is_some(),
                None if first_words => text.split_whitespace().count() > SHORT_FIRST_LINE || node.collect.iter().any(|slot| probe.parse_slot(slot, text, true).is_some()),
                None => answer.as_ref().is_some_and(|check| check(text)) || (answering && probe.route_by_slots(&node, text).is_some()),
            };
            anywhere || answers
        }))
    }

    /// What the caller's next words answer. Before the flow starts that is the start node's
    /// question when the first message asks it — its routes or yes/no (the first words enter
    /// the start node and are routed by them), or the slot named by `first_message_asks` —
    /// and nothing in particular otherwise (a start node that collects takes only clear
    /// evidence from the first words).
    fn awaited(&self) -> Awaiting {
        if self.started {
            return self.awaiting.clone();
        }
        let node = self.current();
        if let Some(index) = self.spec.first_message_asks.as_ref().and_then(|asked| node.collect.iter().position(|slot| &slot.name == asked)) {
            return Awaiting::Slot(index);
        }
        let asks = node.asks();
        if asks && node.collect.is_empty() {
            Awaiting::Answer
        } else {
            Awaiting::Nothing
        }
    }

    /// Phrases the caller is likely to say next, to prime the recognizer with: what works
    /// anywhere (global handlers, knowledge questions), then what the current question expects
    /// (the slot's choices, examples of its kind, a yes or no, the node's routes).
    pub fn expects(&self) -> String {
        let node = self.current();
        // What works anywhere first: Whisper heeds the end of its prompt most.
        let mut phrases: Vec<String> = Vec::new();
        for handler in &self.spec.global {
            phrases.extend(handler.says.iter().cloned());
        }
        for entry in &self.spec.knowledge {
            phrases.extend(entry.question.iter().cloned());
        }
        let yes_no = || vec!["yes".to_string(), "no".to_string()];
        match &self.awaited() {
            Awaiting::Slot(index) => {
                if let Some(slot) = node.collect.get(*index) {
                    let examples: &[&str] = match slot.kind {
                        // With an hour said with "o'clock" among them, 20 of 40 espeak times on
                        // the phone line came back right, against 12 without (`docs/decisions.md`).
                        SlotKind::Time => &["at 7:30 pm", "at 9 o'clock", "two in the afternoon", "half past eight"],
                        SlotKind::Date => &["tomorrow", "next Tuesday", "on Friday"],
                        SlotKind::Phone | SlotKind::Digits => &[DIGITS_PRIME],
                        SlotKind::Email => &["john dot smith at example dot com"],
                        SlotKind::Boolean => &["yes", "no"],
                        // A name said after a cue: without one, tiny.en on a phone line took
                        // "The name is Sarah" for "Mm-hmm" or "the name is Error". The example
                        // names are uncommon ones: with "John Smith", "The name is Johnson" came
                        // back as the example, caught as an echo and decoded a second time.
                        SlotKind::Name => &NAME_PRIMES,
                        _ => &[],
                    };
                    phrases.extend(examples.iter().map(|e| e.to_string()));
                    for choice in &slot.values {
                        phrases.push(choice.value.replace('_', " "));
                        phrases.extend(choice.says.iter().cloned());
                    }
                }
            }
            Awaiting::Confirmation | Awaiting::Check { .. } => phrases.extend(yes_no()),
            Awaiting::Answer => {
                for route in &node.routes {
                    phrases.extend(route.says.iter().cloned());
                }
                if node.on_yes.is_some() || node.on_no.is_some() {
                    phrases.extend(yes_no());
                }
            }
            _ => {}
        }
        let mut seen = BTreeSet::new();
        phrases.retain(|p| !p.trim().is_empty() && seen.insert(p.to_lowercase()));
        if phrases.is_empty() {
            return String::new();
        }
        // Sentences, not a comma list: after "tomorrow, next Tuesday, on Friday," Whisper went on
        // listing ("tomorrow evening, tomorrow evening, …").
        let sentence = |p: &String| {
            let mut chars = p.trim().trim_end_matches(['.', '?', '!']).chars();
            chars.next().map(|c| c.to_uppercase().chain(chars).collect::<String>()).unwrap_or_default()
        };
        format!("{}.", phrases.iter().map(sentence).collect::<Vec<_>>().join(". "))
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn slots(&self) -> &Map<String, Value> {
        &self.slots
    }

    /// Enters the start node. Its line (if any) follows the first message.
    pub fn begin(&mut self) -> Reply {
        let mut lines = Vec::new();
        let mut actions = Vec::new();
        let start = self.spec.start.clone();
        self.started = true;
        self.enter(&start, "", &mut lines, &mut actions);
        self.reply(lines, actions)
    }

    /// What the caller said; the reply to say.
    pub fn on_caller(&mut self, text: &str) -> Reply {
        self.visited.clear();
        let mut lines = Vec::new();
        let mut actions = Vec::new();
        if let Some(handler) = self.spec.global.iter().find(|h| mentions(text, &h.says)).cloned() {
            if let Some(say) = &handler.say {
                lines.push(say.clone());
            }
            actions.extend(handler.actions.iter().filter_map(action));
            let leaves = actions.iter().any(|a| matches!(a, Action::EndCall { .. } | Action::Transfer { .. }));
            match &handler.goto {
                Some(node) => {
                    self.started = true;
                    self.enter(node, "", &mut lines, &mut actions)
                }
                None if leaves => self.awaiting = Awaiting::Nothing,
                None => lines.extend(self.pending_question()),
            }
            return self.reply(lines, actions);
        }
        if !self.started {
            // The first words after the greeting: they begin the flow, and may fill its slots;
            // a question off the flow is answered first.
            if let Some(answer) = self.knowledge(text) {
                lines.push(answer);
            }
            self.started = true;
            let start = self.spec.start.clone();
            self.lenient = self.spec.first_message_asks.clone();
            self.enter(&start, text, &mut lines, &mut actions);
            self.lenient = None;
            return self.reply(lines, actions);
        }
        if !matches!(self.awaiting, Awaiting::Extraction { .. }) && parse::holds_on(text) {
            // "Hold on, one more thing." answers nothing and is no failed answer: the caller
            // is told to go on, and the flow waits for the same thing.
            lines.push(GO_AHEAD.into());
            return self.reply(lines, actions);
        }
        let leaving = parse::takes_leave(text);
        match self.awaiting.clone() {
            // A goodbye is no answer to a question, however the parsers might read it (a name
            // slot would take "Goodbye"): the caller is seen off, not asked again.
            Awaiting::Slot(_) | Awaiting::Check { .. } if leaving => self.farewell(&mut lines, &mut actions),
            Awaiting::Slot(index) => self.on_slot_answer(index, text, &mut lines, &mut actions),
            Awaiting::Confirmation => match (self.corrections(text), parse::yes_no(text)) {
                // "No, make it five people", "Yes, but on Friday": the read-back again with
                // what changed, the rest kept.
                (corrections, _) if !corrections.is_empty() => self.correct(corrections, &mut lines, &mut actions),
                (_, Some(answer)) => self.confirmed(answer, text, &mut lines, &mut actions),
                (_, None) if leaving => self.farewell(&mut lines, &mut actions),
                // A phone number the node does not collect ("my phone number is 555 1234") is
                // thanked for, not taken for a mishearing: the read-back is asked again.
                (_, None) if self.unasked_phone_number(text) => {
                    lines.push(NO_NUMBER_NEEDED.into());
                    lines.extend(self.pending_question());
                }
                // Other digits that correct nothing are no yes or no however a model reads
                // them: the read-back is asked again.
                (_, None) if parse::digits(text).len() >= 3 => self.not_understood(text, &mut lines),
                (_, None) if self.llm_reads && self.knowledge(text).is_none() => {
                    let question = self.current().confirm.clone().unwrap_or_default();
                    self.ask_llm(extract::for_yes_no(&question, text), None, text);
                }
                (_, None) => self.not_understood(text, &mut lines),
            },
            Awaiting::Answer => {
                // A route or a no ("No thanks, bye.") is the node's to follow; a goodbye that
                // chooses neither ends the call.
                if !self.answer(text, &mut lines, &mut actions) {
                    if leaving {
                        self.farewell(&mut lines, &mut actions);
                    } else {
                        self.not_understood(text, &mut lines);
                    }
                }
            }
            Awaiting::Check { slot, text: heard, .. } => self.checked(slot, &heard, text, &mut lines, &mut actions),
            Awaiting::Extraction { slot, .. } => {
                // New words while the LLM read the last ones: these are the answer now (the
                // reading still in flight finds the flow no longer waiting for it).
                self.awaiting = slot.map_or(Awaiting::Confirmation, Awaiting::Slot);
                return self.on_caller(text);
            }
            Awaiting::Tool | Awaiting::Nothing => {
                if let Some(answer) = self.knowledge(text) {
                    lines.push(answer);
                } else if leaving {
                    self.farewell(&mut lines, &mut actions);
                } else {
                    lines.push(self.spec.fallback.clone().unwrap_or_else(|| "Is there anything else I can help with?".into()));
                }
            }
        }
        self.reply(lines, actions)
    }

    /// Words the caller cut the flow's last line with, once that line ended the call: a flow
    /// that ended stays ended (its disposition, its transfer), so only a question its
    /// `knowledge` answers is answered, and the closing line follows again. `None`: nothing
    /// to answer (the agent says the rest of the closing line).
    pub fn after_end(&mut self, text: &str) -> Option<Reply> {
        if self.closing.is_empty() {
            return None;
        }
        let answer = self.knowledge(text)?;
        let lines = std::iter::once(answer).chain(self.closing.iter().cloned()).collect();
        Some(self.reply(lines, Vec::new()))
    }

    /// A keypad digit.
    pub fn on_digit(&mut self, digit: char) -> Reply {
        self.visited.clear();
        let mut lines = Vec::new();
        let mut actions = Vec::new();
        if !self.started {
            // A key before any words: the first message asked the start node's question, so
            // enter it without asking again, then take the key as its answer.
            self.started = true;
            let start = self.spec.start.clone();
            let mut asked = Vec::new();
            self.enter(&start, "", &mut asked, &mut actions);
        }
        let node = self.current().clone();
        // A number slot may be keyed in: digits, then # (or as many as a number can have).
        if let Awaiting::Slot(index) = self.awaiting {
            let keyable = node.collect.get(index).is_some_and(|s| matches!(s.kind, SlotKind::Digits | SlotKind::Phone | SlotKind::Integer | SlotKind::Number));
            if keyable && !node.on_digit.contains_key(&digit.to_string()) {
                if digit.is_ascii_digit() {
                    self.keyed.push(digit);
                    if self.keyed.len() < 16 {
                        return self.reply(lines, actions);
                    }
                }
                if digit == '#' || self.keyed.len() >= 16 {
                    let keyed = std::mem::take(&mut self.keyed);
                    return self.on_caller(&keyed);
                }
            }
        }
        match node.on_digit.get(&digit.to_string()) {
            Some(next) => self.enter(next, "", &mut lines, &mut actions),
            None => match (&self.awaiting, digit) {
                (Awaiting::Confirmation | Awaiting::Answer | Awaiting::Check { .. }, '1') => return self.on_caller("yes"),
                (Awaiting::Confirmation | Awaiting::Answer | Awaiting::Check { .. }, '2') => return self.on_caller("no"),
                _ => lines.extend(self.pending_question()),
            },
        }
        self.reply(lines, actions)
    }

    /// A tool argument: `{{ name }}` is that slot's or variable's value; anything else is sent
    /// as written.
    fn argument(&self, text: &str) -> Value {
        match reference(text) {
            Some(name) => self.slots.get(name).or_else(|| self.base.get(name)).cloned().unwrap_or(Value::Null),
            None => json!(text),
        }
    }

    /// Follows the answer to the node's own question: a route's phrase, then yes or no.
    /// False when the words choose nothing.
    fn answer(&mut self, text: &str, lines: &mut Vec<String>, actions: &mut Vec<Action>) -> bool {
        let node = self.current().clone();
        let next = match node.routes.iter().find(|r| mentions_affirmed(text, &r.says)) {
            Some(route) => Some(route.goto.clone()),
            None => parse::yes_no(text).and_then(|yes| if yes { node.on_yes.clone() } else { node.on_no.clone() }).or_else(|| self.route_by_slots(&node, text)),
        };
        match next {
            Some(next) => {
                // "Can we move it to Friday at 10?" chooses the route and fills its slots; the
                // same words never answer the next node's own question too.
                let collects = self.spec.nodes.get(&next).is_some_and(|n| !n.collect.is_empty());
                self.enter(&next, if collects { text } else { "" }, lines, actions);
                true
            }
            None => false,
        }
    }

    /// Where an answer that names no route but gives what one route's node collects leads:
    /// asked "confirm or reschedule?", "Next Tuesday." reschedules (to Tuesday). Only clear
    /// evidence counts (a date, a time said as one, a count, digits, a choice — not a name or
    /// free text), and only when it fits exactly one of the answer's destinations.
    fn route_by_slots(&self, node: &NodeSpec, text: &str) -> Option<String> {
        let mut targets: Vec<&String> = node.routes.iter().map(|r| &r.goto).chain(node.on_yes.iter()).chain(node.on_no.iter()).collect();
        targets.sort();
        targets.dedup();
        let fits = |target: &&String| {
            self.spec.nodes.get(*target).is_some_and(|next| {
                next.collect.iter().any(|slot| !matches!(slot.kind, SlotKind::Name | SlotKind::String | SlotKind::Boolean) && self.parse_slot(slot, text, true).is_some())
            })
        };
        let mut fitting = targets.into_iter().filter(fits);
        match (fitting.next(), fitting.next()) {
            (Some(only), None) => Some(only.clone()),
            _ => None,
        }
    }

    /// Sees off a caller who took their leave mid-flow, and ends the call.
    fn farewell(&mut self, lines: &mut Vec<String>, actions: &mut Vec<Action>) {
        lines.push(self.spec.farewell.clone().unwrap_or_else(|| FAREWELL.into()));
        actions.push(Action::EndCall { reason: "the caller took their leave".into() });
        self.awaiting = Awaiting::Nothing;
    }

    fn current(&self) -> &NodeSpec {
        // Checked at load: every node the flow can reach exists.
        self.spec.nodes.get(&self.node).expect("flow nodes are checked when the assistant loads")
    }

    fn reply(&mut self, lines: Vec<String>, actions: Vec<Action>) -> Reply {
        if actions.iter().any(|a| matches!(a, Action::EndCall { .. } | Action::Transfer { .. })) {
            self.closing = lines.clone();
        }
        let actions = actions.into_iter().map(|a| self.resolve(a)).collect();
        Reply { template: lines.join(" "), context: self.context(), actions, node: self.node.clone(), slots: self.slots.clone(), tool: self.tool.take(), extract: self.extract.take() }
    }

    /// An action's destination or keys given as `{{ name }}` take that slot's or variable's
    /// value (no template engine: a lookup).
    fn resolve(&self, action: Action) -> Action {
        let lookup = |text: String| -> String {
            match reference(&text).and_then(|n| self.slots.get(n).or_else(|| self.base.get(n))) {
                Some(Value::String(value)) => value.clone(),
                Some(value) => value.to_string(),
                None => text,
            }
        };
        match action {
            Action::Transfer { destination } => Action::Transfer { destination: lookup(destination) },
            Action::Dtmf { digits } => Action::Dtmf { digits: lookup(digits) },
            other => other,
        }
    }

    /// The result of the tool call the last reply asked for: stored as the slot named after
    /// the tool, then the flow moves on (`next`, or `on_failure` when it failed).
    pub fn on_tool_result(&mut self, succeeded: bool, result: Value) -> Reply {
        self.visited.clear();
        let mut lines = Vec::new();
        let mut actions = Vec::new();
        let node = self.current().clone();
        if self.awaiting == Awaiting::Tool {
            if let Some(call) = &node.call {
                self.slots.insert(call.tool.clone(), result);
            }
            let next = if succeeded { self.route(&node).or(node.next.clone()) } else { node.on_failure.clone().or(node.next.clone()) };
            match next {
                Some(next) => self.enter(&next, "", &mut lines, &mut actions),
                None => self.awaiting = Awaiting::Nothing,
            }
        }
        self.reply(lines, actions)
    }

    /// The template context: variables, slots, and `spoken`.
    pub fn context(&self) -> Value {
        let mut map = self.base.clone();
        for (name, value) in &self.slots {
            map.insert(name.clone(), value.clone());
        }
        map.insert("spoken".into(), Value::Object(self.spoken.clone()));
        map.insert("node".into(), json!(self.node));
        Value::Object(map)
    }

    /// Enters node `name`; `text` (the caller's words that led here, if any) may fill its slots.
    fn enter(&mut self, name: &str, text: &str, lines: &mut Vec<String>, actions: &mut Vec<Action>) {
        if self.visited.len() >= MAX_HOPS || !self.spec.nodes.contains_key(name) {
            self.awaiting = Awaiting::Nothing;
            actions.push(Action::EndCall { reason: format!("the flow could not continue at `{name}`") });
            return;
        }
        self.visited.push(name.to_string());
        self.node = name.to_string();
        self.attempts = 0;
        let node = self.current().clone();
        for slot in &node.clear {
            self.slots.remove(slot);
            self.spoken.remove(slot);
        }
        let asks = node.asks();
        if asks && node.collect.is_empty() && !text.is_empty() {
            // The words that led here may already answer this node's question (the first
            // message asked it): follow them without asking again.
            self.awaiting = Awaiting::Answer;
            actions.extend(node.actions.iter().filter_map(action));
            if self.answer(text, lines, actions) {
                return;
            }
            if let Some(say) = &node.say {
                lines.push(say.clone());
            }
            return;
        }
        if let Some(say) = &node.say {
            lines.push(say.clone());
        }
        actions.extend(node.actions.iter().filter_map(action));
        if let Some(call) = &node.call {
            let arguments = call.arguments.iter().map(|(name, value)| (name.clone(), self.argument(value))).collect();
            self.tool = Some(ToolRequest { tool: call.tool.clone(), arguments });
            self.awaiting = Awaiting::Tool;
            return;
        }
        if node.collect.is_empty() {
            if asks {
                self.awaiting = Awaiting::Answer;
            } else if let Some(next) = self.route(&node).or(node.next.clone()) {
                self.enter(&next, "", lines, actions);
            } else {
                self.awaiting = Awaiting::Nothing;
            }
            return;
        }
        self.fill_or_ask(text, lines, actions);
    }

    /// Fills what `text` holds (the asked slot leniently, others only on clear evidence),
    /// then asks for the next missing slot, or moves on.
    fn fill_or_ask(&mut self, text: &str, lines: &mut Vec<String>, actions: &mut Vec<Action>) {
        let node = self.current().clone();
        if !text.is_empty() {
            for (index, slot) in node.collect.iter().enumerate() {
                if self.slots.contains_key(&slot.name) {
                    continue;
                }
                let opportunistic = self.lenient.as_deref() != Some(slot.name.as_str());
                if let Some((value, spoken)) = self.parse_slot(slot, text, opportunistic) {
                    if self.validate(slot, &value).is_ok() {
                        self.slots.insert(slot.name.clone(), value);
                        self.spoken.insert(slot.name.clone(), json!(spoken));
                        if node.confirm.is_none() && self.heard_unsure(&spoken) {
                            // No read-back will catch a mishearing here: check this value now.
                            let question = format!("Just to be sure, I heard {spoken}. Is that right?");
                            lines.push(question.clone());
                            self.awaiting = Awaiting::Check { slot: index, text: text.to_string(), question };
                            return;
                        }
                    }
                }
            }
        }
        if let Some(next) = self.route(&node) {
            // A condition holds as soon as its slot is known ("a party of ten").
            self.enter(&next, "", lines, actions);
            return;
        }
        match node.collect.iter().position(|s| !self.slots.contains_key(&s.name)) {
            Some(index) => {
                self.awaiting = Awaiting::Slot(index);
                lines.push(node.collect[index].question.clone());
            }
            None => self.slots_filled(lines, actions),
        }
    }

    fn on_slot_answer(&mut self, index: usize, text: &str, lines: &mut Vec<String>, actions: &mut Vec<Action>) {
        let node = self.current().clone();
        let slot = &node.collect[index];
        if matches!(slot.kind, SlotKind::Name | SlotKind::String) {
            // Any words can be a name: a question off the flow ("is there parking nearby?")
            // is answered first, not booked under "There Parking Nearby".
            if let Some(answer) = self.knowledge(text) {
                lines.push(answer);
                lines.push(slot.question.clone());
                return;
            }
        }
        match self.parse_slot(slot, text, false) {
            Some((value, spoken)) => self.take_slot(index, value, spoken, text, lines, actions),
            None => {
                if let Some(answer) = self.knowledge(text) {
                    lines.push(answer);
                    lines.push(slot.question.clone());
                    return;
                }
                if self.llm_reads {
                    // A question may still hold the value ("Could you put it down for the
                    // Hendersons?"): the LLM reads it as any other answer.
                    if let Some(request) = extract::for_slot(slot, text) {
                        self.ask_llm(request, Some(index), text);
                        return;
                    }
                }
                self.slot_missed_or_asked(index, text, lines, actions);
            }
        }
    }

    fn ask_llm(&mut self, mut request: ExtractRequest, slot: Option<usize>, text: &str) {
        self.readings += 1;
        request.id = self.readings;
        self.extract = Some(request);
        self.awaiting = Awaiting::Extraction { slot, text: text.to_string(), id: self.readings };
    }

    /// What the LLM read for request `id` ([`Reply::extract`]); `value` is `None` when it
    /// found nothing or failed. A reading the flow no longer waits for changes nothing.
    pub fn on_extracted(&mut self, id: u64, value: Option<Value>) -> Reply {
        self.visited.clear();
        let mut lines = Vec::new();
        let mut actions = Vec::new();
        if let Awaiting::Extraction { slot, text, id: waiting_for } = self.awaiting.clone() {
            if waiting_for != id {
                return self.reply(lines, actions);
            }
            match slot {
                Some(index) => {
                    self.awaiting = Awaiting::Slot(index);
                    let node = self.current().clone();
                    match value.and_then(|v| extract::accept(node.collect.get(index), &text, &v)) {
                        Some((value, spoken)) => self.take_slot(index, value, spoken, &text, &mut lines, &mut actions),
                        None => self.slot_missed_or_asked(index, &text, &mut lines, &mut actions),
                    }
                }
                None => {
                    self.awaiting = Awaiting::Confirmation;
                    match value.and_then(|v| v.as_bool()) {
                        Some(answer) => self.confirmed(answer, &text, &mut lines, &mut actions),
                        None => self.not_understood(&text, &mut lines),
                    }
                }
            }
        }
        self.reply(lines, actions)
    }

    /// A value for the slot at `index`, found in `text`: kept if valid, then on to the next.
    fn take_slot(&mut self, index: usize, value: Value, spoken: String, text: &str, lines: &mut Vec<String>, actions: &mut Vec<Action>) {
        let node = self.current().clone();
        let slot = &node.collect[index];
        match self.validate(slot, &value) {
            Ok(()) => {
                self.slots.insert(slot.name.clone(), value);
                self.spoken.insert(slot.name.clone(), json!(spoken));
                self.attempts = 0;
                if node.confirm.is_none() && self.heard_unsure(&spoken) {
                    // No read-back will catch a mishearing here: check this one value now.
                    let question = format!("Just to be sure, I heard {spoken}. Is that right?");
                    lines.push(question.clone());
                    self.awaiting = Awaiting::Check { slot: index, text: text.to_string(), question };
                    return;
                }
                // The same words may hold the next slots too.
                self.fill_or_ask(text, lines, actions);
            }
            Err(message) => {
                self.attempts += 1;
                lines.push(message);
                lines.push(slot.question.clone());
            }
        }
    }

    /// Whether the words a slot's value was read from were heard unsure.
    fn heard_unsure(&self, spoken: &str) -> bool {
        match &self.unsure {
            None => false,
            Some(words) if words.is_empty() => true,
            Some(words) => crate::text::normalized_words(spoken).iter().any(|w| words.contains(w)),
        }
    }

    /// The caller's answer to "I heard …, is that right?" for the slot at `index`, filled from
    /// `heard`: yes goes on with those words; no asks the slot again; anything else is taken
    /// as the slot's answer itself ("no, seven thirty" → "seven thirty" is heard afresh).
    fn checked(&mut self, index: usize, heard: &str, text: &str, lines: &mut Vec<String>, actions: &mut Vec<Action>) {
        let node = self.current().clone();
        let Some(slot) = node.collect.get(index) else { return };
        match parse::yes_no(text) {
            Some(true) => {
                self.awaiting = Awaiting::Slot(index);
                self.fill_or_ask(heard, lines, actions);
            }
            answer => {
                self.slots.remove(&slot.name);
                self.spoken.remove(&slot.name);
                self.awaiting = Awaiting::Slot(index);
                if answer.is_some() && self.parse_slot(slot, text, false).is_none() {
                    lines.push(format!("Sorry about that. {}", slot.question));
                } else {
                    self.on_slot_answer(index, text, lines, actions);
                }
            }
        }
    }

    /// No value for the slot at `index` in `text`. A question the flow cannot answer ("Can I
    /// bring a dog?") is no failed answer: it gets the fallback and the slot's question again,
    /// without counting a try. Anything else is a miss.
    fn slot_missed_or_asked(&mut self, index: usize, text: &str, lines: &mut Vec<String>, actions: &mut Vec<Action>) {
        if parse::is_question(text) {
            let question = self.current().collect[index].question.clone();
            lines.push(self.spec.fallback.clone().unwrap_or_else(|| CANNOT_ANSWER.into()));
            lines.push(question);
            return;
        }
        self.slot_missed(index, lines, actions);
    }

    /// No value for the slot at `index`: ask again, or after [`MAX_ATTEMPTS`] end politely.
    fn slot_missed(&mut self, index: usize, lines: &mut Vec<String>, actions: &mut Vec<Action>) {
        let node = self.current().clone();
        let slot = &node.collect[index];
        self.attempts += 1;
        if self.attempts >= MAX_ATTEMPTS {
            // Don't loop forever on one slot: say the fallback and end politely.
            lines.push(self.spec.fallback.clone().unwrap_or_else(|| "I'm sorry, I'm having trouble understanding. Let me end the call here; please call back anytime. Goodbye.".into()));
            actions.push(Action::EndCall { reason: format!("slot `{}` not understood after {MAX_ATTEMPTS} tries", slot.name) });
            self.awaiting = Awaiting::Nothing;
            return;
        }
        lines.push(slot.reprompt.clone().unwrap_or_else(|| format!("{PARDON} {}", slot.question)));
    }

    /// The caller's yes or no to the read-back.
    fn confirmed(&mut self, yes: bool, text: &str, lines: &mut Vec<String>, actions: &mut Vec<Action>) {
        if yes {
            self.after_confirmation(lines, actions);
            return;
        }
        // Ask the slots again, keeping none of them.
        let node = self.current().clone();
        for slot in &node.collect {
            self.slots.remove(&slot.name);
            self.spoken.remove(&slot.name);
        }
        lines.push("Sorry about that, let's try again.".into());
        self.fill_or_ask(text, lines, actions);
    }

    /// The node's slots that the words clearly give another valid value for (only clear
    /// evidence counts, as for slots not asked for).
    fn corrections(&self, text: &str) -> Vec<(String, Value, String)> {
        self.current()
            .collect
            .iter()
            .filter_map(|slot| {
                let (value, spoken) = self.parse_slot(slot, text, true)?;
                (self.slots.get(&slot.name) != Some(&value) && self.validate(slot, &value).is_ok()).then(|| (slot.name.clone(), value, spoken))
            })
            .collect()
    }

    /// Takes the corrected slots, then routes (a party grown past a condition's bound) or reads
    /// the booking back again.
    fn correct(&mut self, corrections: Vec<(String, Value, String)>, lines: &mut Vec<String>, actions: &mut Vec<Action>) {
        for (name, value, spoken) in corrections {
            self.slots.insert(name.clone(), value);
            self.spoken.insert(name, json!(spoken));
        }
        self.slots_filled(lines, actions);
    }

    fn slots_filled(&mut self, lines: &mut Vec<String>, actions: &mut Vec<Action>) {
        let node = self.current().clone();
        if let Some(next) = self.route(&node) {
            self.enter(&next, "", lines, actions);
            return;
        }
        match &node.confirm {
            Some(confirm) => {
                self.awaiting = Awaiting::Confirmation;
                lines.push(confirm.clone());
            }
            None => self.after_confirmation(lines, actions),
        }
    }

    fn after_confirmation(&mut self, lines: &mut Vec<String>, actions: &mut Vec<Action>) {
        let node = self.current().clone();
        match node.next.or(node.on_yes) {
            Some(next) => self.enter(&next, "", lines, actions),
            None => self.awaiting = Awaiting::Nothing,
        }
    }

    /// The first condition over the slots that holds.
    fn route(&self, node: &NodeSpec) -> Option<String> {
        node.when.iter().find(|c| self.holds(c)).map(|c| c.goto.clone())
    }

    fn holds(&self, condition: &ConditionSpec) -> bool {
        let Some(value) = self.slots.get(&condition.slot) else { return false };
        let number = value.as_f64();
        condition.equals.as_ref().is_none_or(|e| e == value || e.as_str().is_some_and(|s| value.as_str() == Some(s)))
            && condition.above.is_none_or(|a| number.is_some_and(|n| n > a))
            && condition.below.is_none_or(|b| number.is_some_and(|n| n < b))
    }

    /// Words that give a phone number, and say so ("my number is …"), where the current node
    /// collects no number read digit by digit: not a failed correction, only something the
    /// booking does not need. (Bare digits may be a time or date the parsers missed.) A number
    /// heard in part ("my phone number is fine, fine, one two three four") is still one when
    /// the words name a phone.
    fn unasked_phone_number(&self, text: &str) -> bool {
        let words = parse::words(text);
        let says = |names: &[&str]| words.iter().any(|w| names.contains(&w.as_str()));
        let whole = parse::phone(text, DEFAULT_PHONE_DIGITS).is_some() && says(&["number", "phone"]);
        let named = says(&["number"]) && says(&["phone", "cell", "mobile"]) && parse::digits(text).len() >= 3;
        (whole || named) && !self.current().collect.iter().any(|slot| matches!(slot.kind, SlotKind::Phone | SlotKind::Digits))
    }

    fn not_understood(&mut self, text: &str, lines: &mut Vec<String>) {
        if let Some(answer) = self.knowledge(text) {
            lines.push(answer);
        } else {
            lines.push(PARDON.into());
        }
        lines.extend(self.pending_question());
    }

    /// The question the flow is waiting on, to ask again.
    fn pending_question(&self) -> Option<String> {
        let node = self.current();
        match &self.awaiting {
            Awaiting::Slot(index) => node.collect.get(*index).map(|s| s.question.clone()),
            Awaiting::Confirmation => node.confirm.clone(),
            Awaiting::Answer => node.say.clone(),
            Awaiting::Extraction { slot: Some(index), .. } => node.collect.get(*index).map(|s| s.question.clone()),
            Awaiting::Extraction { slot: None, .. } => node.confirm.clone(),
            Awaiting::Check { question, .. } => Some(question.clone()),
            Awaiting::Tool | Awaiting::Nothing => None,
        }
    }

    fn knowledge(&self, text: &str) -> Option<String> {
        self.spec.knowledge.iter().find(|k| mentions(text, &k.question)).map(|k| k.answer.clone())
    }

    /// The slot's value in `text`, and how the agent says it. `opportunistic`: the slot was
    /// not asked for, so only clear evidence counts ("two people", "at 7 pm", "the name is").
    fn parse_slot(&self, slot: &SlotSpec, text: &str, opportunistic: bool) -> Option<(Value, String)> {
        match slot.kind {
            SlotKind::Integer => {
                let found = if opportunistic { parse::count_of_people(text) } else { parse::integer(text) };
                found.map(|n| (json!(n), n.to_string()))
            }
            SlotKind::Number => {
                if opportunistic {
                    return None;
                }
                parse::number(text).map(|n| (json!(n), trim_number(n)))
            }
            SlotKind::Time => {
                if opportunistic && !says_a_time(text) {
                    return None;
                }
                parse::time(text, window(slot)).map(|t| (parse::to_json_time(t), parse::spoken_time(t)))
            }
            SlotKind::Date => parse::date(text, self.today).map(|d| (json!(d.format("%Y-%m-%d").to_string()), self.spoken_date(d))),
            SlotKind::Phone => {
                let found = parse::phone(text, slot.min_digits.unwrap_or(DEFAULT_PHONE_DIGITS))?;
                Some((json!(found), parse::spoken_digits(&found)))
            }
            SlotKind::Digits => {
                if opportunistic {
                    return None;
                }
                let found = parse::digits(text);
                let count = found.chars().filter(char::is_ascii_digit).count();
                (count >= slot.min_digits.unwrap_or(4) && count <= 24).then(|| (json!(found.trim_start_matches('+')), parse::spoken_digits(&found)))
            }
            SlotKind::Email => parse::email(text).map(|e| (json!(e), e.replace('@', " at ").replace('.', " dot "))),
            SlotKind::Enum => {
                let values: Vec<(String, Vec<String>)> = slot.values.iter().map(|v| (v.value.clone(), v.says.clone())).collect();
                parse::choice(text, &values).map(|v| (json!(v), v.replace('_', " ")))
            }
            SlotKind::Boolean => {
                if opportunistic {
                    return None;
                }
                parse::yes_no(text).map(|b| (json!(b), if b { "yes".into() } else { "no".into() }))
            }
            SlotKind::Name => {
                if opportunistic && !names_someone(text) {
                    return None;
                }
                parse::name(text).map(|n| (json!(n), n))
            }
            SlotKind::String => {
                if opportunistic {
                    return None;
                }
                parse::free_text(text).map(|t| (json!(t), t))
            }
        }
    }

    fn spoken_date(&self, date: NaiveDate) -> String {
        match (date - self.today).num_days() {
            0 => "today".into(),
            1 => "tomorrow".into(),
            _ => parse::spoken_date(date),
        }
    }

    /// Whether a value is inside the slot's bounds; else the message to say.
    fn validate(&self, slot: &SlotSpec, value: &Value) -> Result<(), String> {
        if let Some(n) = value.as_f64() {
            let low = slot.min.is_none_or(|m| n >= m);
            let high = slot.max.is_none_or(|m| n <= m);
            if !(low && high) {
                return Err(slot.invalid.clone().unwrap_or_else(|| match (slot.min, slot.max) {
                    (Some(min), Some(max)) => format!("Sorry, that needs to be between {} and {}.", trim_number(min), trim_number(max)),
                    (Some(min), None) => format!("Sorry, that needs to be at least {}.", trim_number(min)),
                    (None, Some(max)) => format!("Sorry, that can be at most {}.", trim_number(max)),
                    (None, None) => PARDON.to_string(),
                }));
            }
        }
        if slot.kind == SlotKind::Time {
            let window = window(slot);
            let time = value.as_str().and_then(|t| NaiveTime::parse_from_str(t, "%H:%M").ok());
            if let Some(time) = time.filter(|t| !window.contains(*t)) {
                return Err(slot.invalid.clone().unwrap_or_else(|| {
                    let (from, to) = (window.from.map(parse::spoken_time).unwrap_or_default(), window.to.map(parse::spoken_time).unwrap_or_default());
                    format!("Sorry, {} is outside our hours, {from} to {to}.", parse::spoken_time(time))
                }));
            }
        }
        Ok(())
    }
}

/// The name in a `{{ name }}` that stands alone (an argument or a destination), if it is one.
fn reference(text: &str) -> Option<&str> {
    text.trim().strip_prefix("{{").and_then(|t| t.strip_suffix("}}")).map(str::trim)
}

fn trim_number(n: f64) -> String {
    if n.fract() == 0.0 {
        format!("{}", n as i64)
    } else {
        format!("{n}")
    }
}

impl FlowSpec {
    /// The hours its time slots accept (`between`), when they agree: what an unmarked hour
    /// said anywhere in the call means ("at 7" is 19:00 for bookings from noon). No window when
    /// no time slot has one or two disagree.
    pub fn hours(&self) -> TimeWindow {
        let mut windows = self.nodes.values().flat_map(|node| &node.collect).filter(|slot| slot.kind == SlotKind::Time && slot.between.is_some()).map(window);
        let Some(first) = windows.next() else { return TimeWindow::default() };
        if windows.all(|w| w == first) {
            first
        } else {
            TimeWindow::default()
        }
    }
}

fn window(slot: &SlotSpec) -> TimeWindow {
    let parse_time = |t: &String| NaiveTime::parse_from_str(t, "%H:%M").ok();
    match &slot.between {
        Some([from, to]) => TimeWindow { from: parse_time(from), to: parse_time(to) },
        None => TimeWindow::default(),
    }
}

/// Whether the words hold one of `phrases` (as whole words).
fn mentions(text: &str, phrases: &[String]) -> bool {
    let said = crate::text::normalized_words(text);
    phrases.iter().any(|p| parse::phrase_at(&said, &crate::text::normalized_words(p)).is_some())
}

/// Like [`mentions`], but not when the phrase is negated just before it ("I don't want to
/// renew" does not choose `renew`).
fn mentions_affirmed(text: &str, phrases: &[String]) -> bool {
    let said: Vec<String> = crate::text::normalized_words(text);
    phrases.iter().any(|p| {
        let phrase = crate::text::normalized_words(p);
        if phrase.is_empty() {
            return false;
        }
        said.windows(phrase.len()).enumerate().any(|(at, window)| {
            let negated = said[at.saturating_sub(3)..at].iter().any(|w| matches!(w.as_str(), "not" | "don't" | "dont" | "no" | "never" | "won't" | "cannot" | "can't"));
            window == phrase.as_slice() && !negated
        })
    })
}

fn normalized(text: &str) -> String {
    crate::text::normalized_words(text).join(" ")
}

/// Clear evidence of a time of day.
fn says_a_time(text: &str) -> bool {
    let lowered = text.to_lowercase();
    let words = parse::words(text);
    ["o'clock", "oclock", "p.m", "a.m", ":", "half past", "quarter past", "quarter to", "noon", "midnight"].iter().any(|cue| lowered.contains(cue))
        || words.iter().any(|w| w == "pm" || w == "am")
        || words.windows(2).any(|w| w[0] == "at" && parse::integer(&w[1]).is_some())
}

/// Clear evidence of a name.
fn names_someone(text: &str) -> bool {
    let lowered = format!(" {} ", normalized(text));
    [" name is ", " name's ", " under the name ", " call me ", " spelled "].iter().any(|cue| lowered.contains(cue))
}

fn action(spec: &ActionSpec) -> Option<Action> {
    match spec {
        ActionSpec::Named(name) if name == "end_call" => Some(Action::EndCall { reason: "the flow ended the call".into() }),
        ActionSpec::Named(_) => None,
        ActionSpec::Disposition { set_disposition, notes } => Some(Action::Disposition { name: set_disposition.clone(), notes: notes.clone() }),
        ActionSpec::Transfer { transfer_call } => Some(Action::Transfer { destination: transfer_call.clone() }),
        ActionSpec::Dtmf { send_dtmf } => Some(Action::Dtmf { digits: send_dtmf.clone() }),
    }
}

/// Every rule a flow breaks, as (field, message with the fix): unknown nodes and slots,
/// unreachable nodes, dead ends, bad slot settings. `dispositions` are the assistant's.
pub fn problems(flow: &FlowSpec, dispositions: &[String], tools: &[String]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let names = flow.nodes.keys().cloned().collect::<Vec<_>>().join(", ");
    let check_target = |out: &mut Vec<(String, String)>, field: String, target: &str| {
        if !flow.nodes.contains_key(target) {
            out.push((field, format!("no node `{target}`; use one of: {names}")));
        }
    };
    check_target(&mut out, "flow.start".into(), &flow.start);
    for (name, node) in &flow.nodes {
        let field = format!("flow.nodes.{name}");
        for (key, target) in node.targets() {
            check_target(&mut out, format!("{field}.{key}"), target);
        }
        node_problems(name, node, dispositions, tools, &mut out);
    }
    for (i, handler) in flow.global.iter().enumerate() {
        if handler.says.iter().all(|s| s.trim().is_empty()) {
            out.push((format!("flow.global.{i}.says"), "give at least one phrase that triggers it".into()));
        }
        if let Some(target) = &handler.goto {
            check_target(&mut out, format!("flow.global.{i}.goto"), target);
        }
        for (j, a) in handler.actions.iter().enumerate() {
            out.extend(action_problem(a, dispositions).map(|m| (format!("flow.global.{i}.actions.{j}"), m)));
        }
    }
    for (i, entry) in flow.knowledge.iter().enumerate() {
        if entry.question.iter().all(|s| s.trim().is_empty()) {
            out.push((format!("flow.knowledge.{i}.question"), "give at least one phrase a caller would ask it with".into()));
        }
    }
    if let Some(asked) = &flow.first_message_asks {
        let in_start = flow.nodes.get(&flow.start).is_some_and(|n| n.collect.iter().any(|s| &s.name == asked));
        if !in_start {
            out.push(("flow.first_message_asks".into(), format!("no slot `{asked}` is collected in the start node `{}`", flow.start)));
        }
    }
    if flow.nodes.contains_key(&flow.start) {
        for name in unreachable(flow) {
            out.push((format!("flow.nodes.{name}"), format!("is unreachable from `{}`; link it with next, on_yes, on_no, on_digit or when, or remove it", flow.start)));
        }
    }
    out
}

/// One node's own problems, its links to other nodes aside.
fn node_problems(name: &str, node: &NodeSpec, dispositions: &[String], tools: &[String], out: &mut Vec<(String, String)>) {
    let field = format!("flow.nodes.{name}");
    if !crate::assistant::check::is_identifier(name) {
        out.push((field.clone(), format!("`{name}` is not a node name; use letters, digits and underscores")));
    }
    if let Some(call) = &node.call {
        if !tools.contains(&call.tool) {
            out.push((format!("{field}.call.tool"), format!("no HTTP tool `{}` in the assistant's tools (declared: {})", call.tool, tools.join(", "))));
        }
        if node.next.is_none() {
            out.push((format!("{field}.next"), "is missing: where does the flow go with the tool's result?".into()));
        }
        if !node.collect.is_empty() {
            out.push((format!("{field}.call"), "a node either collects slots or calls a tool; split it in two".into()));
        }
    }
    for digit in node.on_digit.keys() {
        if digit.len() != 1 || !digit.chars().all(|c| c.is_ascii_digit() || c == '*' || c == '#') {
            out.push((format!("{field}.on_digit.{digit}"), "is not one keypad key (0-9, * or #)".into()));
        }
    }
    let ends = node.actions.iter().any(|a| matches!(a, ActionSpec::Named(n) if n == "end_call") || matches!(a, ActionSpec::Transfer { .. }));
    if node.targets().is_empty() && !ends && !node.asks() && node.say.is_none() && node.call.is_none() {
        out.push((field.clone(), "is a dead end: it says nothing, goes nowhere and does not end the call; add `say`, `next`, or an `end_call` action".into()));
    }
    if !node.collect.is_empty() && node.next.is_none() && node.when.is_empty() && !ends {
        out.push((format!("{field}.next"), "is missing: where does the flow go once the slots are filled? (or end the call with an `end_call` action)".into()));
    }
    if (node.on_yes.is_some() || node.on_no.is_some() || !node.routes.is_empty()) && node.say.is_none() {
        out.push((format!("{field}.say"), "is missing: routes and on_yes/on_no answer the node's own question, so `say` must ask it".into()));
    }
    for (i, route) in node.routes.iter().enumerate() {
        if route.says.iter().all(|s| s.trim().is_empty()) {
            out.push((format!("{field}.routes.{i}.says"), "give at least one phrase that chooses it".into()));
        }
    }
    let mut slots = BTreeSet::new();
    for (i, slot) in node.collect.iter().enumerate() {
        let unique = slots.insert(slot.name.clone());
        slot_problems(&format!("{field}.collect.{i}"), slot, unique, out);
    }
    for (i, condition) in node.when.iter().enumerate() {
        if !node.collect.iter().any(|s| s.name == condition.slot) {
            out.push((format!("{field}.when.{i}.slot"), format!("no slot `{}` is collected in this node", condition.slot)));
        }
    }
    for (i, a) in node.actions.iter().enumerate() {
        out.extend(action_problem(a, dispositions).map(|m| (format!("{field}.actions.{i}"), m)));
    }
}

/// One slot's problems; `unique`: no slot before it in the node has its name.
fn slot_problems(field: &str, slot: &SlotSpec, unique: bool, out: &mut Vec<(String, String)>) {
    if !crate::assistant::check::is_identifier(&slot.name) || !unique {
        out.push((format!("{field}.name"), format!("`{}` must be an identifier, unique in the node", slot.name)));
    }
    if slot.kind == SlotKind::Enum && slot.values.is_empty() {
        out.push((format!("{field}.values"), "an enum slot needs its values".into()));
    }
    if let Some([from, to]) = &slot.between {
        for (which, t) in [("0", from), ("1", to)] {
            if NaiveTime::parse_from_str(t, "%H:%M").is_err() {
                out.push((format!("{field}.between.{which}"), format!("`{t}` is not a time; use HH:MM, e.g. 12:00")));
            }
        }
    }
    if let (Some(min), Some(max)) = (slot.min, slot.max) {
        if min > max {
            out.push((format!("{field}.min"), format!("{min} is above max {max}")));
        }
    }
}

/// The nodes no path reaches from the start or a global handler.
fn unreachable(flow: &FlowSpec) -> Vec<&String> {
    let mut seen = BTreeSet::new();
    let mut queue: VecDeque<&String> = VecDeque::from([&flow.start]);
    queue.extend(flow.global.iter().filter_map(|h| h.goto.as_ref()));
    while let Some(name) = queue.pop_front() {
        if !seen.insert(name) {
            continue;
        }
        if let Some(node) = flow.nodes.get(name) {
            queue.extend(node.targets().into_iter().map(|(_, target)| target));
        }
    }
    flow.nodes.keys().filter(|n| !seen.contains(n)).collect()
}

fn action_problem(spec: &ActionSpec, dispositions: &[String]) -> Option<String> {
    match spec {
        ActionSpec::Named(name) if name != "end_call" => Some(format!("unknown action `{name}`; use end_call, {{set_disposition: NAME}}, {{transfer_call: NUMBER}} or {{send_dtmf: KEYS}}")),
        ActionSpec::Disposition { set_disposition, .. } if !dispositions.contains(set_disposition) => {
            Some(format!("no disposition `{set_disposition}`; declare it under `dispositions:` (declared: {})", dispositions.join(", ")))
        }
        ActionSpec::Dtmf { send_dtmf } => crate::audio::check_keys(send_dtmf).err().map(|fix| format!("`{send_dtmf}` is not keypad keys; {fix}")),
        _ => None,
    }
}

/// Every template of a flow, with its field, for the load-time render check.
pub fn templates(flow: &FlowSpec) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (name, node) in &flow.nodes {
        let field = format!("flow.nodes.{name}");
        out.extend(node.say.iter().map(|t| (format!("{field}.say"), t.clone())));
        out.extend(node.confirm.iter().map(|t| (format!("{field}.confirm"), t.clone())));
        for (i, slot) in node.collect.iter().enumerate() {
            out.push((format!("{field}.collect.{i}.question"), slot.question.clone()));
            out.extend(slot.reprompt.iter().map(|t| (format!("{field}.collect.{i}.reprompt"), t.clone())));
            out.extend(slot.invalid.iter().map(|t| (format!("{field}.collect.{i}.invalid"), t.clone())));
        }
    }
    for (i, handler) in flow.global.iter().enumerate() {
        out.extend(handler.say.iter().map(|t| (format!("flow.global.{i}.say"), t.clone())));
    }
    for (i, entry) in flow.knowledge.iter().enumerate() {
        out.push((format!("flow.knowledge.{i}.answer"), entry.answer.clone()));
    }
    out.extend(flow.fallback.iter().map(|t| ("flow.fallback".to_string(), t.clone())));
    out.extend(flow.farewell.iter().map(|t| ("flow.farewell".to_string(), t.clone())));
    for (name, node) in &flow.nodes {
        for (i, action) in node.actions.iter().enumerate() {
            if let ActionSpec::Disposition { notes, .. } = action {
                out.push((format!("flow.nodes.{name}.actions.{i}.notes"), notes.clone()));
            }
        }
    }
    out
}

/// A sample context for checking a flow's templates: every slot of every node with a value of
/// its type, and `spoken`.
pub fn sample_context(flow: &FlowSpec, base: &Map<String, Value>) -> Value {
    let mut map = base.clone();
    let mut spoken = Map::new();
    for node in flow.nodes.values() {
        for slot in &node.collect {
            let value = match slot.kind {
                SlotKind::Integer => json!(2),
                SlotKind::Number => json!(2.5),
                SlotKind::Date => json!("2026-12-04"),
                SlotKind::Time => json!("19:00"),
                SlotKind::Phone => json!("5551234"),
                SlotKind::Digits => json!("12345"),
                SlotKind::Email => json!("ann@example.com"),
                SlotKind::Enum => json!(slot.values.first().map(|v| v.value.clone()).unwrap_or_default()),
                SlotKind::Boolean => json!(true),
                SlotKind::Name => json!("Ann"),
                SlotKind::String => json!("something"),
            };
            spoken.insert(slot.name.clone(), json!(value.to_string()));
            map.insert(slot.name.clone(), value);
        }
    }
    for node in flow.nodes.values() {
        if let Some(call) = &node.call {
            // A tool's result is whatever JSON it answers: templates must cope with fields
            // missing (`| default`, `is defined`).
            map.insert(call.tool.clone(), json!({}));
        }
    }
    map.insert("spoken".into(), Value::Object(spoken));
    map.insert("node".into(), json!(flow.start));
    Value::Object(map)
}

#[cfg(test)]
mod tests;
