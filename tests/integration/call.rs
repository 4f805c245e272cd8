//! Whole calls through the real pipeline on the loopback line (`ringline simulate --json`).
//!
//! The first tests run on the local models end to end. The tool and failure tests put an
//! OpenAI-compatible stand-in on loopback where a cloud LLM would be, so the model's
//! replies — tool calls, garbage, silence — are exactly what each test needs; everything
//! else (VAD, Smart Turn, whisper, Piper, the line) is real.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::standin::{self, Reply, Response, Server};
use crate::support::{models_dir, ringline, run, run_ok, word_recall};

struct Call {
    report: Value,
    dir: tempfile::TempDir,
}

impl Call {
    fn said(&self, speaker: &str) -> Vec<String> {
        self.report["transcript"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["speaker"] == speaker)
            .map(|t| t["text"].as_str().unwrap().to_string())
            .collect()
    }
    fn agent_text(&self) -> String {
        self.said("agent").join(" ")
    }
    fn ended_by(&self) -> String {
        self.report["ended_by"].as_str().unwrap_or("").to_string()
    }
}

/// Writes the assistant (YAML body after `version`/`name`) and the caller script, runs the call.
fn simulate(assistant_body: &str, caller: &str) -> Call {
    let dir = tempfile::tempdir().unwrap();
    let assistant = dir.path().join("assistant.yaml");
    std::fs::write(&assistant, format!("version: 1\nname: Test line\n{assistant_body}")).unwrap();
    let script = dir.path().join("caller.yaml");
    std::fs::write(&script, caller).unwrap();
    let out = dir.path().join("out");
    let stdout = run_ok(
        ringline()
            .args(["simulate", "--json", "--assistant"])
            .arg(&assistant)
            .arg("--caller")
            .arg(&script)
            .arg("--out")
            .arg(&out)
            .env("RINGLINE_MODELS_DIR", models_dir()),
    );
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    Call { report, dir }
}

/// The requests of the conversation itself: not the KV warm-up, not the post-call summary.
fn conversation_requests(llm: &Server) -> Vec<Value> {
    llm.requests().into_iter().filter(|r| r["max_tokens"] != json!(1) && r["messages"][0]["content"] == "You are a test assistant.").collect()
}

/// An assistant on the stand-in LLM, with extra YAML appended.
fn standin_assistant(llm: &Server, extra: &str) -> String {
    format!(
        "system_prompt: You are a test assistant.\nfirst_message: Hello, how can I help?\nllm: {{ provider: openai, base_url: \"{}\", model: standin }}\n{extra}",
        llm.url("/v1")
    )
}

#[test]
fn a_full_call_on_the_local_models_completes_and_is_heard_back() {
    let assistant = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("assistants/luigis_booking.yaml")).unwrap();
    let body = assistant
        .lines()
        .filter(|l| !l.starts_with("version:") && !l.starts_with("name:"))
        .map(|l| l.replace("prompts/luigis_booking.j2", &Path::new(env!("CARGO_MANIFEST_DIR")).join("prompts/luigis_booking.j2").display().to_string()))
        .collect::<Vec<_>>()
        .join("\n");
    let call = simulate(&body, "lines:\n  - say: \"Hi. Are you open on Sunday?\"\nfinal_wait_ms: 8000\n");
    let caller = call.said("caller");
    assert!(word_recall("are you open on sunday", &caller.join(" ")) >= 0.75, "{caller:?}");
    let agent = call.said("agent");
    assert!(agent.len() >= 2, "greeting and an answer expected: {agent:?}");
    let turns = call.report["turns"].as_array().unwrap();
    assert!(!turns.is_empty() && turns[0]["voice_to_voice"].as_f64().unwrap() > 0.0, "{turns:?}");
    // What the agent meant to say is what the caller's ear got: transcribe the right channel.
    let wav = call.dir.path().join("out/call.wav");
    let right = call.dir.path().join("agent.wav");
    crate::support::sox(&[wav.as_os_str(), right.as_os_str(), std::ffi::OsStr::new("remix"), std::ffi::OsStr::new("2")]);
    let heard = crate::support::transcribe_utterances(&right);
    let recall = word_recall(&agent.join(" "), &heard);
    assert!(recall >= 0.7, "agent said {agent:?}; the line carried {heard:?} ({recall:.2})");
}

#[test]
fn barge_in_stops_the_agent_and_history_keeps_only_what_was_heard() {
    let long = "Our restaurant has a long history that goes back more than fifty years, and every single dish on our menu is prepared fresh each morning by our chefs, who trained in Naples and Rome, and we are very proud of our wood fired oven.";
    let llm = standin::llm(vec![Reply::Text(long), Reply::Text("Of course, go ahead.")]);
    // The caller stays on the line a while after its question: an unoptimised build of the
    // suite takes over a second to decide a turn.
    let caller = "lines:\n  - say: \"Tell me about the restaurant.\"\n  - say: \"Sorry, can I ask something else?\"\n    barge_in_after_ms: 1500\n    then_silence_ms: 3000\nfinal_wait_ms: 5000\n";
    // The VAD confirms speech only after 400 ms, so a pause that waited for confirmation
    // would show; the agent must pause on the first suspected frame (barge_in_pause_ms, 32).
    let call = simulate(&standin_assistant(&llm, "turn: { vad_start_ms: 400 }\n"), caller);
    let barge_ins = call.report["barge_ins"].as_array().unwrap();
    assert_eq!(barge_ins.len(), 1, "{}", call.report);
    let reaction = barge_ins[0]["reaction_ms"].as_f64().unwrap();
    // Measured on the line's audio timeline, from the VAD's onset to the agent's audio
    // pausing: one 32 ms frame of suspicion and the frame's delivery, not the 400 ms start.
    assert!(reaction < 250.0, "agent audio stopped {reaction} ms after the VAD's onset: it waited for confirmation");
    let history = call.report["history"].as_array().unwrap();
    let cut = history
        .iter()
        .filter_map(|m| m["content"].as_str())
        .find(|c| c.starts_with("Our restaurant"))
        .unwrap_or_else(|| panic!("no interrupted reply in {history:?}"));
    // Only the words heard, with no mark a small model could copy; the transcript marks the cut.
    assert!(cut.len() < long.len() && long.starts_with(cut), "history kept more than was heard: {cut}");
    assert!(call.said("agent").iter().any(|line| line.ends_with('—') && long.starts_with(line.trim_end_matches('—'))), "{:?}", call.said("agent"));
    // The caller's interruption was answered.
    assert!(call.agent_text().contains("go ahead"), "{}", call.report);
}

#[test]
fn the_agents_echo_on_the_callers_side_is_neither_a_barge_in_nor_the_callers_words() {
    // The caller's side carries the agent back, 120 ms late at a third of its level (a loud
    // handset), as the issue asks. The caller asks, listens to a long answer, then really
    // interrupts it four seconds in.
    let long = "Our restaurant has a long history that goes back more than fifty years, and every single dish on our menu is prepared fresh each morning by our chefs, who trained in Naples and Rome, and we are very proud of our wood fired oven.";
    let caller = "echo: { delay_ms: 120, gain: 0.3 }\nlines:\n  - say: \"Tell me about the restaurant.\"\n  - say: \"Sorry, can I ask something else?\"\n    barge_in_after_ms: 4000\n    then_silence_ms: 3000\nfinal_wait_ms: 5000\n";
    let echoed_agent = |call: &Call| {
        // Agent words heard as the caller's: any run of three words of the agent's lines.
        let agent = crate::support::canonical_words(&call.agent_text()).join(" ");
        call.said("caller").iter().any(|line| {
            let words = crate::support::canonical_words(line);
            words.windows(3).any(|w| agent.contains(&w.join(" ")))
        })
    };

    let llm = standin::llm(vec![Reply::Text(long), Reply::Text("Of course, go ahead.")]);
    let call = simulate(&standin_assistant(&llm, "turn: { cancel_echo: true }\n"), caller);
    let barge_ins = call.report["barge_ins"].as_array().unwrap();
    // The one barge-in is the caller's, about four seconds into the answer, not the echo's.
    assert_eq!(barge_ins.len(), 1, "{}", call.report);
    let caller_lines = call.said("caller");
    assert_eq!(caller_lines.len(), 2, "only what the caller said: {caller_lines:?}");
    assert!(word_recall("tell me about the restaurant", &caller_lines[0]) >= 0.75, "{caller_lines:?}");
    assert!(word_recall("can i ask something else", &caller_lines[1]) >= 0.6, "heard through the echo: {caller_lines:?}");
    assert!(!echoed_agent(&call), "the agent's words came back as the caller's: {caller_lines:?}");
    assert!(call.agent_text().contains("go ahead"), "{}", call.report);

    // The same line with the canceller off: the echo is strong enough to matter.
    let llm = standin::llm(vec![Reply::Text(long), Reply::Text("Of course, go ahead."), Reply::Text("Sure."), Reply::Text("Yes.")]);
    let call = simulate(&standin_assistant(&llm, "turn: { cancel_echo: false }\n"), caller);
    let barge_ins = call.report["barge_ins"].as_array().unwrap().len();
    assert!(barge_ins > 1 || echoed_agent(&call) || call.said("caller").len() > 2, "without cancellation the echo went unnoticed: {}", call.report);
}

#[test]
fn a_slot_heard_unsure_is_checked_with_the_caller_before_the_flow_goes_on() {
    // Every turn counts as unsure here (confirm_below near 1), so the order number, in a node
    // without a read-back, is checked; the caller's yes lets the flow go on with it.
    let llm = standin::llm(vec![Reply::Text("Goodbye.")]);
    let flow = "stt: { confirm_below: 0.999 }\nflow:\n  start: ask\n  first_message_asks: order_number\n  llm_reads: false\n  nodes:\n    ask:\n      collect:\n        - { name: order_number, type: digits, min_digits: 4, question: \"What is your order number?\" }\n      next: done\n    done:\n      say: \"Thanks, order {{ spoken.order_number }} is on its way. Goodbye.\"\n      actions: [end_call]\n";
    // "That's right." without a comma: "Yes, that's right." was once heard as two turns, the
    // second cutting the goodbye, and the caller hung up while the agent heard it (CI). The
    // goodbye reads the number back: twelve digits once took more than 8 s to say (CI).
    let caller = "lines:\n  - say: \"It's four five six seven eight.\"\n  - say: \"That's right.\"\n    after: \"is that right\"\nfinal_wait_ms: 12000\n";
    let call = simulate(&standin_assistant(&llm, flow), caller);
    let agent = call.agent_text();
    assert!(agent.contains("Just to be sure, I heard"), "no check of the unsure value: {agent}");
    assert!(agent.contains("is on its way"), "the yes did not let the flow go on: {}", call.report);
    let heard = call.report["slots"]["order_number"].as_str().unwrap_or_default().to_string();
    assert!(heard.len() >= 4 && heard.chars().all(|c| c.is_ascii_digit()), "{}", call.report);
    assert!(call.ended_by().starts_with("agent"), "{}: {:#}", call.ended_by(), call.report);
}

#[test]
fn a_caller_asked_again_says_it_again_and_words_that_are_no_name_are_not_booked_as_one() {
    // "I don't know." fills no name slot (it was booked as "Don't Know" once): the agent asks
    // again, the caller (repeat_on) says it again, and after the third miss the agent ends the
    // call politely instead of looping.
    let llm = standin::llm(vec![Reply::Text("Goodbye.")]);
    let flow = "flow:\n  start: ask\n  llm_reads: false\n  nodes:\n    ask:\n      collect:\n        - { name: name, type: name, question: \"What name should I put the booking under?\" }\n      next: done\n    done:\n      say: \"Thank you, {{ name }}. Goodbye.\"\n      actions: [end_call]\n";
    let caller = "repeat_on: [\"didn't catch\"]\nlines:\n  - say: \"Hi, I would like to book a table.\"\n  - say: \"I don't know.\"\nfinal_wait_ms: 8000\n";
    let call = simulate(&standin_assistant(&llm, flow), caller);
    let caller_said = call.said("caller");
    assert_eq!(caller_said.len(), 4, "the second line once and again twice: {caller_said:?} {}", call.report);
    assert!(caller_said[1..].iter().all(|line| word_recall("i don't know", line) >= 0.6), "{caller_said:?}");
    assert!(call.report["slots"]["name"].is_null(), "no name was given: {}", call.report);
    let agent = call.agent_text();
    assert_eq!(agent.matches("didn't catch").count(), 2, "{agent}");
    assert!(!agent.contains("Thank you,"), "{agent}");
    assert!(call.ended_by().starts_with("agent"), "{}", call.ended_by());
}

#[test]
fn a_no_interrupt_segment_plays_through_and_the_caller_is_answered_after_it() {
    let disclosure = "This call is recorded for quality and training purposes, and your answers may be reviewed by our staff to improve our service.";
    let reply = format!("<no-interrupt>{disclosure}</no-interrupt> Now, what date would you like?");
    let llm = standin::llm(vec![Reply::Text(Box::leak(reply.into_boxed_str())), Reply::Text("Sure, Friday works.")]);
    // The caller talks over the disclosure once it has played long enough to show the line
    // carries no echo; before that the echo canceller may alter the caller's words.
    let caller = "lines:\n  - say: \"I want to book a table.\"\n  - say: \"Friday, please.\"\n    barge_in_after_ms: 2500\nfinal_wait_ms: 12000\n";
    let call = simulate(&standin_assistant(&llm, ""), caller);
    let agent = call.said("agent");
    // The disclosure was heard whole, though the caller spoke over it.
    assert!(agent.iter().any(|line| line.contains(disclosure)), "the disclosure was cut: {agent:?}");
    // The caller's words were answered after it.
    assert!(call.agent_text().contains("Friday works"), "{agent:?}");
    let caller_said = call.said("caller").join(" ");
    assert!(word_recall("friday please", &caller_said) >= 0.5, "{caller_said}");
}

#[test]
fn partial_transcripts_arrive_while_the_caller_is_still_speaking() {
    let llm = standin::llm(vec![Reply::Text("Thank you, I have noted all of that.")]);
    let caller = "lines:\n  - say: \"I would like to book a table for six people on Saturday evening at around half past seven, near the window if you have one.\"\nfinal_wait_ms: 4000\n";
    let call = simulate(&standin_assistant(&llm, "stt: { partial_interval_ms: 1000 }\n"), caller);
    let partials = call.report["partials"].as_array().unwrap();
    assert!(!partials.is_empty(), "no partial transcripts: {}", call.report);
    let caller_line = call.report["transcript"].as_array().unwrap().iter().find(|t| t["speaker"] == "caller").expect("the caller's turn");
    let ended = caller_line["at_ms"].as_f64().unwrap();
    // The first partial came while the caller was still talking, and held real words of it.
    let first = &partials[0];
    assert!(first["at_ms"].as_f64().unwrap() < ended, "{partials:?} vs the end of speech at {ended}");
    assert!(word_recall(first["text"].as_str().unwrap(), "I would like to book a table for six people on Saturday evening") >= 0.6, "{partials:?}");
}

#[test]
fn a_cough_does_not_lose_the_reply() {
    let reply = "Yes, we are open every day from noon until eleven at night, except on Mondays when we are closed.";
    let llm = standin::llm(vec![Reply::Text(reply)]);
    let caller = "lines:\n  - say: \"When are you open?\"\n  - noise_ms: 90\n    barge_in_after_ms: 1200\nfinal_wait_ms: 15000\n";
    let call = simulate(&standin_assistant(&llm, ""), caller);
    assert!(call.report["barge_ins"].as_array().unwrap().is_empty(), "a cough interrupted: {}", call.report);
    assert!(call.agent_text().contains("closed"), "the reply was lost: {}", call.agent_text());
}

#[test]
fn a_mid_sentence_pause_does_not_end_the_turn() {
    let llm = standin::llm(vec![Reply::Text("Thank you, I have noted your number.")]);
    let caller = "lines:\n  - say: \"My phone number is five five five ... one two three four.\"\n    inner_pause_ms: 600\nfinal_wait_ms: 5000\n";
    let call = simulate(&standin_assistant(&llm, ""), caller);
    let caller_turns = call.said("caller");
    assert_eq!(caller_turns.len(), 1, "the pause split the turn: {caller_turns:?}");
    // Both halves in the one turn (espeak's "five" is often heard as "fine").
    assert!(word_recall("my phone number is one two three four", &caller_turns[0]) >= 0.8, "{caller_turns:?}");
    // The LLM saw the whole number in one user message.
    let users: Vec<String> = conversation_requests(&llm).iter().filter_map(|r| r["messages"].as_array().and_then(|m| m.last()).map(|m| m["content"].to_string())).collect();
    assert_eq!(users.len(), 1, "{users:?}");
}

#[test]
fn words_after_a_pause_that_ended_the_turn_continue_it_before_its_answer_is_heard() {
    let llm = standin::llm(vec![Reply::Text("Of course. For how many people?"), Reply::Text("A table for two, lovely. What time?")]);
    // A finished sentence, a second of silence (past this assistant's longest end-of-turn
    // wait, 200 + 300 ms, so the turn ends in it), and the rest of what the caller meant.
    let caller = "lines:\n  - say: \"I would like to book a table. ... For two people, please.\"\n    inner_pause_ms: 1000\nfinal_wait_ms: 5000\n";
    let call = simulate(&standin_assistant(&llm, "turn: { incomplete_wait_ms: 300 }\n"), caller);
    let requests = conversation_requests(&llm);
    let users = |r: &Value| -> Vec<String> { r["messages"].as_array().unwrap().iter().filter(|m| m["role"] == "user").map(|m| m["content"].as_str().unwrap_or("").to_string()).collect() };
    // The pause ended the turn: its first half was answered on its own first.
    assert!(requests.len() >= 2, "the pause did not end the turn: {:?}", requests.iter().map(users).collect::<Vec<_>>());
    assert!(word_recall("book a table", &users(&requests[0]).join(" ")) >= 0.6, "{:?}", users(&requests[0]));
    // The caller went on before that answer was heard: the LLM was asked again with the whole
    // sentence as one message, and no answer to its half in between.
    let last = requests.last().unwrap();
    let said = users(last);
    assert_eq!(said.len(), 1, "the halves reached the LLM as two turns: {said:?}");
    assert!(word_recall("book a table for two people", &said[0]) >= 0.8, "{said:?}");
    let assistant_lines = last["messages"].as_array().unwrap().iter().filter(|m| m["role"] == "assistant").count();
    assert_eq!(assistant_lines, 1, "only the greeting was heard before the whole sentence: {last}");
    assert!(call.agent_text().contains("lovely"), "the whole sentence was not answered: {}", call.report);
    // The transcript holds the caller's line once, whole.
    let caller_lines = call.said("caller");
    assert_eq!(caller_lines.len(), 1, "the whole replaces its half in the transcript: {caller_lines:?}");
    assert!(word_recall("book a table for two people", &caller_lines[0]) >= 0.8, "{caller_lines:?}");
}

#[test]
fn end_call_hangs_up_after_the_goodbye() {
    // A key pressed over the goodbye neither cuts it nor gets an answer: the call ends as the
    // LLM decided (the key used to replace the goodbye with a new reply).
    let llm = standin::llm(vec![
        Reply::Tool { text: "Goodbye, have a lovely evening, and thank you for calling us today.", name: "end_call", arguments: "{\"reason\": \"caller is done\"}" },
        Reply::Text("You pressed one."),
    ]);
    let caller = "lines:\n  - say: \"That is all, thanks.\"\n  - dtmf: \"1\"\n    barge_in_after_ms: 800\n  - say: \"Are you still there?\"\n    pause_ms: 4000\nfinal_wait_ms: 4000\n";
    let call = simulate(&standin_assistant(&llm, "tools: [end_call]\n"), caller);
    assert!(call.agent_text().contains("lovely evening, and thank you for calling us today"), "{}", call.report);
    assert!(!call.agent_text().contains("You pressed"), "{}", call.report);
    assert!(call.ended_by().starts_with("agent: caller is done"), "{}", call.ended_by());
    assert_eq!(call.said("caller").len(), 1, "the call went on after end_call: {:?}", call.said("caller"));
}

/// An LLM that ends the call, answers the parking question said over its goodbye, ends the
/// call again, and has one more line should the call wrongly go on.
fn an_llm_that_says_goodbye_twice() -> Server {
    standin::llm(vec![
        Reply::Tool { text: "Goodbye, have a lovely evening, and thank you for calling us today.", name: "end_call", arguments: "{\"reason\": \"caller is done\"}" },
        Reply::Text("Yes, there is free parking behind the building."),
        Reply::Tool { text: "Wonderful, enjoy your evening, and thank you again for calling us today.", name: "end_call", arguments: "{\"reason\": \"done at last\"}" },
        Reply::Text("You said goodbye."),
    ])
}

#[test]
fn words_that_cut_the_llms_goodbye_keep_the_call_open_and_a_farewell_lets_it_end() {
    // A question that cuts the goodbye is answered and the call goes on until the LLM ends it
    // again (it used to hang up at once, over the caller's words); "Thank you, goodbye." over
    // the second goodbye is no question: the rest of it is said, and the call ends.
    let llm = an_llm_that_says_goodbye_twice();
    let caller = "lines:\n  - say: \"That is all, thanks.\"\n  - say: \"Wait, do you have parking?\"\n    barge_in_after_ms: 800\n  - say: \"Great, that is all I needed.\"\n    after: \"free parking\"\n  - say: \"Thank you, goodbye.\"\n    barge_in_after_ms: 800\nfinal_wait_ms: 6000\n";
    let call = simulate(&standin_assistant(&llm, "tools: [end_call]\n"), caller);
    let agent = call.said("agent");
    assert!(agent.iter().any(|l| l.contains("free parking")), "the question over the goodbye was answered: {:#}", call.report);
    assert_eq!(call.said("caller").len(), 4, "the call went on after the answer: {:#}", call.report);
    assert_eq!(call.report["barge_ins"].as_array().map(Vec::len), Some(2), "{:#}", call.report);
    assert_eq!(conversation_requests(&llm).len(), 3, "the farewell got no answer of its own: {:#}", call.report);
    // The LLM is told its end_call did not happen (its result no longer says the call will end).
    let after_cut = conversation_requests(&llm)[1]["messages"].to_string();
    assert!(after_cut.contains("not done") && !after_cut.contains("will end after"), "{after_cut}");
    let last = agent.last().unwrap();
    assert!(last.ends_with("calling us today.") && !last.starts_with("Wonderful"), "the rest of the cut goodbye, then the end: {agent:?}");
    assert!(call.ended_by().starts_with("agent: done at last"), "{}", call.ended_by());
}

#[test]
fn a_key_pressed_after_words_that_cut_the_goodbye_leaves_the_words_to_decide() {
    // The caller cuts the goodbye with a question and presses a key before the question is
    // transcribed. The key used to be answered at once, the question then held as words over
    // that answer (still a goodbye), and the call hung up with the question unanswered.
    let llm = an_llm_that_says_goodbye_twice();
    let caller = "lines:\n  - say: \"That is all, thanks.\"\n  - say: \"Wait, do you have parking?\"\n    barge_in_after_ms: 800\n  - dtmf: \"1\"\n    at_once: true\n  - say: \"Great, that is all I needed.\"\n    after: \"free parking\"\nfinal_wait_ms: 6000\n";
    let call = simulate(&standin_assistant(&llm, "tools: [end_call]\n"), caller);
    let requests = conversation_requests(&llm);
    let asked = requests.get(1).map(|r| r["messages"].to_string()).unwrap_or_default();
    assert!(asked.contains("parking") && asked.contains("pressed 1"), "the answer heard the words, and the key before them: {:#}", call.report);
    assert!(call.agent_text().contains("free parking"), "{:#}", call.report);
    assert_eq!(call.said("caller").len(), 3, "the call went on after the answer (keys are no transcript line): {:#}", call.report);
    assert!(call.ended_by().starts_with("agent: done at last"), "{}", call.ended_by());
}

#[test]
fn a_question_that_cuts_a_flows_goodbye_is_answered_and_the_goodbye_said_again() {
    // A flow that ended stays ended: its knowledge answers a question said over the closing
    // line, which then comes again; words it has no answer for hear the rest of the line (not
    // its fallback question, before a hang-up).
    let flow = "first_message: \"Hello, how many people is the table for?\"\nflow:\n  start: ask\n  first_message_asks: party_size\n  nodes:\n    ask:\n      collect: [{ name: party_size, type: integer, question: \"For how many people?\" }]\n      next: done\n    done:\n      say: \"Thank you, your table for {{ party_size }} is noted, and we look forward to seeing you very soon. Goodbye!\"\n      actions: [{ set_disposition: booked }, end_call]\n  knowledge:\n    - { question: [\"parking\"], answer: \"There is a large car park right behind the restaurant.\" }\n  fallback: \"Is there anything else I can help with?\"\ndispositions: [{ name: booked }]\n";
    let caller = "lines:\n  - say: \"Two people.\"\n  - say: \"Oh, do you have parking?\"\n    barge_in_after_ms: 800\n  - say: \"And can I bring my dog?\"\n    barge_in_after_ms: 800\nfinal_wait_ms: 15000\n";
    let call = simulate(flow, caller);
    let agent = call.agent_text();
    assert!(agent.contains("car park right behind"), "the question was answered: {:#}", call.report);
    assert!(!agent.contains("anything else"), "no fallback question before the hang-up: {agent}");
    assert!(agent.ends_with("Goodbye!"), "the closing line ends the call: {agent}");
    assert_eq!(call.said("caller").len(), 3, "{:#}", call.report);
    assert_eq!(call.report["disposition"], "booked", "{:#}", call.report);
    assert!(call.ended_by().starts_with("agent: the flow ended the call"), "{}", call.ended_by());

    // Past the call's maximum duration nothing said over the goodbye is answered: a caller who
    // kept cutting it with questions would otherwise keep the call going.
    let limited = flow.replace("dispositions:", "turn: { max_duration_s: 6 }\ndispositions:");
    let call = simulate(&limited, "lines:\n  - say: \"Two people.\"\n  - say: \"Oh, and one more thing, do you have parking near the restaurant?\"\n    barge_in_after_ms: 800\nfinal_wait_ms: 15000\n");
    assert!(!call.agent_text().contains("car park"), "answered past the time limit: {:#}", call.report);
    assert!(call.ended_by().starts_with("agent:"), "{}", call.ended_by());
}

#[test]
fn an_http_tool_gets_its_arguments_and_its_result_reaches_the_llm() {
    let tool = Server::start(|_, _| Response { status: 200, content_type: "application/json", body: br#"{"available": true, "table": 12}"#.to_vec(), delay: Duration::ZERO });
    let llm = standin::llm(vec![
        Reply::Tool { text: "", name: "check_table", arguments: "{\"people\": 4, \"time\": \"19:00\"}" },
        Reply::Text("Good news, table twelve is free."),
    ]);
    let tools = format!("tools:\n  - name: check_table\n    description: check availability\n    url: \"{}\"\n    parameters: {{ type: object, properties: {{ people: {{ type: integer }}, time: {{ type: string }} }} }}\n", tool.url("/availability"));
    let call = simulate(&standin_assistant(&llm, &tools), "lines:\n  - say: \"Do you have a table for four at seven?\"\nfinal_wait_ms: 5000\n");
    assert_eq!(tool.requests(), vec![json!({ "people": 4, "time": "19:00" })]);
    let second = conversation_requests(&llm).into_iter().nth(1).expect("a second LLM round");
    let tool_message = second["messages"].as_array().unwrap().iter().find(|m| m["role"] == "tool").expect("a tool message");
    assert!(tool_message["content"].as_str().unwrap().contains("\"table\": 12"), "{tool_message}");
    assert!(call.agent_text().contains("table twelve"), "{}", call.agent_text());
}

#[test]
fn a_slow_tool_gets_a_filler_and_a_failing_one_an_apology() {
    let slow = Server::start(|_, _| Response { status: 200, content_type: "application/json", body: b"{\"ok\": true}".to_vec(), delay: Duration::from_millis(2_500) });
    let broken = Server::start(|_, _| Response { status: 500, content_type: "text/plain", body: b"database down".to_vec(), delay: Duration::ZERO });
    let llm = standin::llm(vec![
        Reply::Tool { text: "", name: "slow_lookup", arguments: "{}" },
        Reply::Text("All done."),
        Reply::Tool { text: "", name: "broken_lookup", arguments: "{}" },
        Reply::Text(""),
    ]);
    let tools = format!(
        "tools:\n  - {{ name: slow_lookup, url: \"{}\", filler: \"Bear with me one moment.\", filler_after_ms: 300 }}\n  - {{ name: broken_lookup, url: \"{}\" }}\n",
        slow.url("/"),
        broken.url("/")
    );
    // The caller waits out the slow tool (speaking over it would rightly interrupt the turn).
    let caller = "lines:\n  - say: \"Can you look up my booking?\"\n  - say: \"And my loyalty points?\"\n    pause_ms: 4000\nfinal_wait_ms: 8000\n";
    let call = simulate(&standin_assistant(&llm, &tools), caller);
    let agent = call.agent_text();
    assert!(agent.contains("Bear with me one moment"), "{agent}");
    assert!(agent.contains("All done"), "{agent}");
    assert!(agent.contains("couldn't complete that"), "{agent}");
    let errors = call.report["errors"].to_string();
    assert!(errors.contains("broken_lookup") && errors.contains("500"), "{errors}");
}

#[test]
fn a_malformed_tool_call_goes_back_to_the_llm_as_an_error() {
    let llm = standin::llm(vec![
        Reply::Tool { text: "", name: "no_such_tool", arguments: "{not json" },
        Reply::Text("Sorry about that, how else can I help?"),
    ]);
    let call = simulate(&standin_assistant(&llm, "tools: [end_call]\n"), "lines:\n  - say: \"Please cancel my order.\"\nfinal_wait_ms: 5000\n");
    let second = conversation_requests(&llm).into_iter().nth(1).expect("a second LLM round");
    let tool_message = second["messages"].as_array().unwrap().iter().find(|m| m["role"] == "tool").expect("a tool message").to_string();
    assert!(tool_message.contains("error"), "{tool_message}");
    assert!(call.agent_text().contains("how else can I help"), "{}", call.agent_text());
}

#[test]
fn an_llm_that_is_down_or_talks_garbage_gets_an_apology_not_a_dead_call() {
    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}/v1", closed.local_addr().unwrap());
    drop(closed);
    let caller = "lines:\n  - say: \"Hello?\"\n  - say: \"Hello, anyone there?\"\n  - say: \"I will try later.\"\nfinal_wait_ms: 20000\n";
    let call = simulate(&format!("system_prompt: Test.\nllm: {{ provider: openai, base_url: \"{dead_url}\", model: x }}\n"), caller);
    let agent = call.agent_text();
    assert!(agent.contains("having trouble"), "{agent}");
    assert!(agent.contains("can't continue the call"), "after three failures the agent says goodbye: {agent}");
    assert!(call.ended_by().contains("LLM kept failing"), "{}", call.ended_by());
    assert!(!call.report["errors"].as_array().unwrap().is_empty());

    let garbage = standin::llm(vec![Reply::Garbage, Reply::Text("Sorry, I am back now.")]);
    let call = simulate(&standin_assistant(&garbage, ""), "lines:\n  - say: \"Hello?\"\n  - say: \"Are you there?\"\nfinal_wait_ms: 5000\n");
    assert!(call.agent_text().contains("having trouble") && call.agent_text().contains("back now"), "{}", call.agent_text());
}

#[test]
fn idle_callers_are_reprompted_then_hung_up_on() {
    let llm = standin::llm(vec![Reply::Text("Sure.")]);
    let assistant = standin_assistant(&llm, "turn: { idle_reprompt_s: 2, idle_hangup_s: 5 }\n");
    let call = simulate(&assistant, "lines:\n  - say: \"Hi.\"\n    then_silence_ms: 15000\nfinal_wait_ms: 15000\n");
    let agent = call.agent_text();
    assert!(agent.contains("Are you still there?"), "{agent}");
    assert!(agent.contains("end the call now"), "{agent}");
    assert_eq!(call.ended_by(), "agent: idle");
}

#[test]
fn the_maximum_duration_ends_the_call_politely() {
    // The first line is answered; the second runs past the limit, so the closing line starts
    // while the caller talks and their words come in over it: those are kept, not answered
    // (answering them dropped the closing line, on a slow box even after a short line), and
    // the analysis route they match does not replace the closing line either.
    let llm = standin::llm(vec![Reply::Text("Let me tell you all about it."), Reply::Text("Sure, here it is.")]);
    let words = "And I want the manager to tell me about the parking.";
    let routes = format!(
        "turn: {{ max_duration_s: 8, idle_reprompt_s: 30, idle_hangup_s: 60 }}\nintents:\n  - {{ name: manager, examples: [\"{words}\"] }}\n  - {{ name: hello, examples: [\"hello there\"] }}\nroutes:\n  - {{ intent: manager, say: \"Let me put you through to the manager.\", transfer: \"+15005550100\", disposition: escalated }}\n"
    );
    let assistant = standin_assistant(&llm, &routes);
    let call = simulate(&assistant, &format!("lines:\n  - say: \"Tell me everything.\"\n  - say: \"{words}\"\n    pause_ms: 300\n    then_silence_ms: 15000\nfinal_wait_ms: 15000\n"));
    let agent = call.agent_text();
    assert!(agent.contains("tell you all about it") && agent.contains("time limit"), "{}", call.report);
    assert!(!agent.contains("here it is") && !agent.contains("put you through"), "{}", call.report);
    let matched: Vec<&Value> = call.report["analyses"].as_array().unwrap().iter().filter(|a| a["line"] == 1 && a["intent"]["intent"] == "manager").collect();
    assert_eq!(matched.len(), 1, "the words over the closing line matched the route's intent: {:#}", call.report["analyses"]);
    assert_eq!((call.report["transfers"].as_array().map(Vec::len), call.report["disposition"].as_str()), (Some(0), Some("completed")), "{:#}", call.report);
    assert_eq!(call.ended_by(), "agent: maximum duration");
    let duration = call.report["duration_ms"].as_f64().unwrap();
    assert!(duration < 20_000.0, "call lasted {duration} ms");
}

#[test]
fn a_missing_required_variable_is_refused_before_the_call() {
    let dir = tempfile::tempdir().unwrap();
    let assistant = dir.path().join("a.yaml");
    std::fs::write(&assistant, "version: 1\nname: Renewals\nsystem_prompt: \"Remind {{ customer_name }}.\"\nvariables:\n  customer_name: { type: string, required: true }\n").unwrap();
    let script = dir.path().join("c.yaml");
    std::fs::write(&script, "lines: []\n").unwrap();
    let (ok, _, stderr) = run(ringline().args(["simulate", "--assistant"]).arg(&assistant).arg("--caller").arg(&script).env("RINGLINE_MODELS_DIR", models_dir()));
    assert!(!ok);
    assert!(stderr.contains("customer_name") && stderr.contains("--var customer_name="), "{stderr}");
}

#[test]
fn keypad_digits_reach_the_turn_manager() {
    let llm = standin::llm(vec![Reply::Text("You chose billing. How can I help with your bill?")]);
    let call = simulate(&standin_assistant(&llm, ""), "lines:\n  - dtmf: \"2\"\nfinal_wait_ms: 6000\n");
    let request = conversation_requests(&llm).into_iter().next().expect("the digit started a turn");
    let last = request["messages"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["content"], "(the caller pressed 2 on the keypad)", "{request}");
    assert!(call.agent_text().contains("You chose billing"), "{}", call.agent_text());
}

#[test]
fn cloud_stt_and_tts_endpoints_are_a_configuration_switch() {
    let stt = Server::start(|_, _| Response { status: 200, content_type: "application/json", body: br#"{"text": "I would like to book a table."}"#.to_vec(), delay: Duration::ZERO });
    let tone = ringline::audio::Audio::new((0..24_000).map(|i| 0.2 * (i as f32 * 0.05).sin()).collect(), 24_000).to_wav_bytes().unwrap();
    let tts = Server::start(move |_, _| Response { status: 200, content_type: "audio/wav", body: tone.clone(), delay: Duration::ZERO });
    let llm = standin::llm(vec![Reply::Text("Certainly, for how many people?")]);
    let extra = format!(
        "stt: {{ provider: openai, base_url: \"{}\", model: whisper-1 }}\nvoice: {{ provider: openai, base_url: \"{}\", model: tts-1, name: alloy }}\n",
        stt.url("/v1"),
        tts.url("/v1")
    );
    let call = simulate(&standin_assistant(&llm, &extra), "lines:\n  - say: \"Hello there, I need a table.\"\nfinal_wait_ms: 6000\n");
    assert_eq!(call.said("caller"), vec!["I would like to book a table."]);
    let uploads = stt.requests();
    assert!(!uploads.is_empty());
    let form = uploads[0]["raw"].as_str().unwrap_or_default();
    assert!(form.contains("filename=\"utterance.wav\"") && form.contains("whisper-1"), "{}", &form[..form.len().min(300)]);
    let spoken: Vec<String> = tts.requests().iter().map(|r| r["input"].as_str().unwrap_or_default().to_string()).collect();
    assert!(spoken.iter().any(|s| s.contains("for how many people")), "{spoken:?}");
    assert!(tts.requests().iter().all(|r| r["voice"] == "alloy" && r["response_format"] == "wav"));
}

#[test]
fn a_voice_that_fails_mid_call_falls_back_to_espeak_and_the_call_goes_on() {
    // The cloud voice speaks the greeting, then fails every request: a provider outage mid-call.
    let tone = ringline::audio::Audio::new((0..24_000).map(|i| 0.2 * (i as f32 * 0.05).sin()).collect(), 24_000).to_wav_bytes().unwrap();
    let tts = Server::start(move |index, _| match index {
        0 => Response { status: 200, content_type: "audio/wav", body: tone.clone(), delay: Duration::ZERO },
        _ => Response { status: 503, content_type: "application/json", body: br#"{"error": {"message": "overloaded"}}"#.to_vec(), delay: Duration::ZERO },
    });
    let llm = standin::llm(vec![Reply::Text("We are open every day from noon."), Reply::Text("Goodbye.")]);
    let extra = format!("voice: {{ provider: openai, base_url: \"{}\", model: tts-1, name: alloy }}\n", tts.url("/v1"));
    let call = simulate(&standin_assistant(&llm, &extra), "lines:\n  - say: \"When are you open?\"\n  - say: \"Thank you.\"\nfinal_wait_ms: 6000\n");
    let agent = call.said("agent").join(" ");
    assert!(agent.contains("open every day"), "the reply was spoken in the fallback voice: {agent}");
    let errors = call.report["errors"].as_array().unwrap();
    assert!(errors.iter().any(|e| e.as_str().unwrap_or_default().contains("fell back to espeak")), "the failure is recorded: {errors:?}");
    assert_eq!(call.said("caller").len(), 2, "the call went on after the failure: {}", call.report);
    assert!(tts.requests().len() >= 2, "the cloud voice was tried again");
}

/// Runs a repository assistant (its own file and prompt) against a repository caller script.
fn simulate_repo(assistant: &str, caller: &str) -> Value {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let stdout = run_ok(
        ringline()
            .args(["simulate", "--json", "--assistant"])
            .arg(root.join("assistants").join(assistant))
            .arg("--caller")
            .arg(root.join("eval/callers").join(caller))
            .env("RINGLINE_MODELS_DIR", models_dir()),
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[test]
fn the_demo_booking_flow_books_the_table_on_the_local_models() {
    // The demo's own assistant and caller: the flow carries the task, no LLM needed for it.
    let report = simulate_repo("luigis_booking.yaml", "booking.yaml");
    assert_eq!(report["disposition"], "booked", "{report:#}");
    assert_eq!(report["slots"]["party_size"], 2, "{report:#}");
    assert_eq!(report["slots"]["time"], "19:00", "{report:#}");
    assert_eq!(report["slots"]["name"], "Sarah", "{report:#}");
    let agent: String = report["transcript"].as_array().unwrap().iter().filter(|t| t["speaker"] == "agent").map(|t| t["text"].as_str().unwrap()).collect::<Vec<_>>().join(" ");
    assert!(agent.contains("under the name Sarah. Is that right?"), "the booking is read back: {agent}");
    assert!(report["ended_by"].as_str().unwrap_or("").starts_with("agent"), "the agent ends the call after booking: {report:#}");
    assert!(report["summary"].as_str().unwrap_or("").starts_with("Booked: 2 people"), "{report:#}");
}

#[test]
fn a_correction_after_no_at_a_read_back_is_heard_with_the_no() {
    // "No, sorry, make it six people." ended its turn at "No" (an answer to the read-back)
    // when the caller paused after it, and the flow asked for every slot again; now a bare no
    // waits for what follows.
    let flow = "first_message: \"Hello, how many people is the table for?\"\nflow:\n  start: ask\n  first_message_asks: party_size\n  nodes:\n    ask:\n      collect:\n        - { name: party_size, type: integer, question: \"For how many people?\" }\n        - { name: name, type: name, question: \"And the name?\" }\n      confirm: \"So a table for {{ party_size }} under {{ name }}. Is that right?\"\n      next: done\n    done:\n      say: \"Booked, goodbye!\"\n      actions: [{ set_disposition: booked }, end_call]\ndispositions: [{ name: booked }]\n";
    let caller = "lines:\n  - say: \"Two people.\"\n  - say: \"The name is Sarah.\"\n  - say: \"No... sorry, make it five people.\"\n    inner_pause_ms: 450\n  - say: \"Yes, that's right.\"\nfinal_wait_ms: 6000\n";
    let call = simulate(flow, caller);
    assert!(call.agent_text().contains("So a table for 5 under Sarah."), "read back again with the change: {:#}", call.report);
    assert_eq!(call.report["disposition"], "booked", "{:#}", call.report);
    assert_eq!(call.report["slots"]["party_size"], 5, "{:#}", call.report);
}

#[test]
fn a_flow_calls_its_http_tool_with_a_slot_and_says_the_result() {
    let tool = Server::start(|_, _| Response { status: 200, content_type: "application/json", body: br#"{"status": "out for delivery", "eta": "tomorrow"}"#.to_vec(), delay: Duration::from_millis(300) });
    let assistant = format!(
        r#"first_message: "Thanks for calling. What is your order number?"
dispositions: [{{ name: resolved }}, {{ name: unresolved }}]
tools:
  - name: lookup_order
    url: "{}"
    parameters: {{ type: object, properties: {{ order_number: {{ type: string }} }} }}
flow:
  start: ask
  first_message_asks: order_number
  nodes:
    ask:
      collect: [{{ name: order_number, type: digits, min_digits: 4, question: "What is your order number?" }}]
      next: lookup
    lookup:
      say: "Let me check order {{{{ spoken.order_number }}}}."
      call: {{ tool: lookup_order, arguments: {{ order_number: "{{{{ order_number }}}}" }} }}
      next: report
      on_failure: failed
    report:
      say: "It is {{{{ lookup_order.status | default('on its way') }}}}, expected {{{{ lookup_order.eta | default('soon') }}}}. Goodbye!"
      actions: [{{ set_disposition: resolved }}, end_call]
    failed:
      say: "Sorry, I could not find it. Goodbye!"
      actions: [{{ set_disposition: unresolved }}, end_call]
"#,
        tool.url("/orders")
    );
    let call = simulate(&assistant, "lines:\n  - say: \"It's four five six seven.\"\nfinal_wait_ms: 8000\n");
    assert_eq!(tool.requests(), vec![json!({ "order_number": "4567" })], "{:#}", call.report);
    let agent = call.agent_text();
    assert!(agent.contains("Let me check order 4 5 6 7") && agent.contains("out for delivery, expected tomorrow"), "{agent}");
    assert_eq!(call.report["disposition"], "resolved");
    assert_eq!(call.report["slots"]["lookup_order"]["status"], "out for delivery");
}

#[test]
fn a_refusing_or_repeating_llm_is_asked_again_then_replaced_by_the_fallback_line() {
    // First turn: a refusal, then a proper answer on the second try. Second turn: the same
    // reply as before (a repeat), twice — the assistant's fallback line is said instead.
    let llm = standin::llm(vec![
        Reply::Text("I'm sorry, but as an AI language model, I cannot book tables."),
        Reply::Text("Sure, we have a table at seven."),
        Reply::Text("Sure, we have a table at seven."),
        Reply::Text("Sure, we have a table at seven."),
    ]);
    let assistant = standin_assistant(&llm, "fallback: \"Let me take a message for the manager instead.\"\n");
    let call = simulate(&assistant, "lines:\n  - say: \"Can I book a table for two?\"\n  - say: \"And for tomorrow?\"\nfinal_wait_ms: 5000\n");
    let agent = call.agent_text();
    assert!(!agent.to_lowercase().contains("as an ai"), "a refused reply was spoken: {agent}");
    assert!(agent.contains("we have a table at seven"), "{agent}");
    assert!(agent.contains("take a message for the manager"), "a repeated reply twice gives the fallback: {agent}");
    assert_eq!(call.report["guards"]["refusal"], 1, "{:#}", call.report["guards"]);
    assert_eq!(call.report["guards"]["repeat"], 2, "{:#}", call.report["guards"]);
    assert_eq!(call.report["guards"]["fallback"], 1, "{:#}", call.report["guards"]);
}

#[test]
fn a_transfer_by_a_flow_or_by_the_llm_reaches_the_line_after_its_words() {
    let flow = "first_message: \"Hello, how can I help?\"\nflow:\n  start: main\n  nodes:\n    main: { say: \"Anything else?\", actions: [end_call] }\n  global:\n    - { says: [\"a person\"], say: \"Putting you through now.\", actions: [{ transfer_call: \"+15005550100\" }] }\n";
    let call = simulate(flow, "lines:\n  - say: \"Can I talk to a person, please?\"\nfinal_wait_ms: 6000\n");
    assert_eq!(call.report["line_transfers"], json!(["+15005550100"]), "{:#}", call.report);
    assert!(call.agent_text().contains("Putting you through now"), "{}", call.agent_text());
    assert!(call.ended_by().starts_with("agent: transferred"), "{}", call.ended_by());

    let llm = standin::llm(vec![Reply::Tool { text: "Let me transfer you.", name: "transfer_call", arguments: "{\"destination\": \"+15005550199\"}" }]);
    let call = simulate(&standin_assistant(&llm, "tools: [transfer_call]\n"), "lines:\n  - say: \"I want a manager.\"\nfinal_wait_ms: 6000\n");
    assert_eq!(call.report["line_transfers"], json!(["+15005550199"]), "{:#}", call.report);
}

#[test]
fn the_prompt_shows_the_callers_latest_intent_and_sentiment() {
    let llm = standin::llm(vec![Reply::Text("I understand, I'm sorry."), Reply::Text("Thank you.")]);
    let body = format!(
        "system_prompt: \"You help callers. Their mood: {{{{ sentiment }}}}. What they want: {{{{ last_intent }}}}.\"\nfirst_message: Hello, how can I help?\nllm: {{ provider: openai, base_url: \"{}\", model: standin }}\nintents:\n  - {{ name: complaint, examples: [\"this is terrible\", \"I am very unhappy with this\", \"I want to complain\"] }}\n  - {{ name: order_status, examples: [\"where is my order\"] }}\n",
        llm.url("/v1")
    );
    simulate(&body, "lines:\n  - say: \"This is terrible, I am very unhappy with this!\"\n  - say: \"Okay then.\"\nfinal_wait_ms: 5000\n");
    let systems: Vec<String> = llm.requests().iter().filter_map(|r| r["messages"][0]["content"].as_str().map(str::to_string)).collect();
    assert!(systems.iter().any(|s| s.contains("Their mood: neutral.")), "before any analysis, the defaults: {systems:#?}");
    assert!(systems.iter().any(|s| s.contains("Their mood: negative.") && s.contains("What they want: complaint.")), "a later turn reads the analysis: {systems:#?}");
}

#[test]
fn a_free_form_calls_extract_fields_are_read_after_it_typed_and_checked() {
    // The LLM's reading comes under the fields' schema: one value is in the call, one is
    // invented (and dropped), one was not said.
    let llm = standin::llm_with(
        vec![Reply::Text("Yes, we can do seven pm for two, reference B 42."), Reply::Text("Goodbye.")],
        Some(r#"{"booked_time": "seven pm", "party_name": "Smith", "reference": null, "goal_reached": true, "goal_reason": "A table for two at seven was booked.", "disposition": "booked"}"#),
    );
    let extract = "goal: a table is booked\ndispositions:\n  - { name: booked, description: a table was booked }\n  - { name: not_booked }\nextract:\n  - { name: booked_time, type: string, description: the time booked }\n  - { name: party_name, type: string, description: the name it is under }\n  - { name: reference, type: string, description: a booking reference }\n";
    let call = simulate(&standin_assistant(&llm, extract), "lines:\n  - say: \"Do you have a table for two at seven?\"\nfinal_wait_ms: 4000\n");
    assert_eq!(call.report["slots"], json!({ "booked_time": "seven pm", "party_name": null, "reference": null }), "{:#}", call.report);
    assert_eq!(call.report["success"], json!([true, "A table for two at seven was booked."]), "judged against the goal in the same reading");
    assert_eq!((call.report["disposition"].as_str(), call.report["disposition_notes"].as_str()), (Some("booked"), Some("chosen after the call from the transcript")), "the agent set none: the reading chose one of the assistant's");
    let asked: Vec<Value> = llm.requests().into_iter().filter(|r| r.get("response_format").is_some()).collect();
    assert_eq!(asked.len(), 1, "one reading after the call");
    let schema = &asked[0]["response_format"]["json_schema"]["schema"];
    assert_eq!(schema["required"], json!(["booked_time", "party_name", "reference", "goal_reached", "goal_reason", "disposition"]));
    assert_eq!(schema["properties"]["disposition"]["enum"], json!(["booked", "not_booked", null]), "only the assistant's dispositions");
}
