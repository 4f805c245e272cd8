//! The eval run as one self-contained HTML page: no network, no script needed to read it.
//!
//! A summary per assistant (with the baseline's figures beside it when there is one), the
//! regressions, a histogram of voice-to-voice latency, the confusion matrix of dispositions,
//! then each scenario: its failures, a timeline of who made sound when (barge-ins marked, each
//! line of the transcript placed where it was said), its turns' stage latencies, the
//! transcript, the extracted fields, and its recording when one was written beside the page.
//! Charts are inline SVG built here; every text from a call is escaped.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use super::{regressions, Figures, Outcome, Results, Thresholds};

/// Escapes text for HTML content and attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn pct(v: Option<f64>) -> String {
    v.map(|v| format!("{:.0}%", v * 100.0)).unwrap_or_else(|| "–".into())
}

fn ms(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.0}")).unwrap_or_else(|| "–".into())
}

const STYLE: &str = "
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1100px; color: #222; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 32px; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 8px 0; } td, th { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; } th { background: #f4f4f4; }
.pass { color: #14782a; font-weight: 600; } .fail { color: #b3261e; font-weight: 600; }
.was { color: #888; font-size: 12px; } .regression { color: #b3261e; }
details { border: 1px solid #ddd; border-radius: 6px; padding: 6px 10px; margin: 8px 0; }
summary { cursor: pointer; } .who { font-weight: 600; width: 60px; display: inline-block; }
.caller { color: #1f5fa8; } .agent { color: #8a4b00; } ul.failures { color: #b3261e; }
svg text { font: 11px system-ui, sans-serif; }
";

/// The whole page. `baseline`: an earlier run to compare with.
pub fn html(results: &Results, baseline: Option<&Results>, machine: &str) -> String {
    let mut page = String::new();
    let overall = &results.overall;
    let _ = write!(
        page,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Ringline eval: {} of {} passed</title><style>{STYLE}</style></head><body>",
        overall.passed, overall.scenarios
    );
    let _ = write!(page, "<h1>Ringline eval: {} of {} scenarios passed ({})</h1>", overall.passed, overall.scenarios, pct(Some(overall.task_success)));
    let _ = write!(page, "<p>{}</p>", esc(machine));
    summary(&mut page, results, baseline);
    if let Some(baseline) = baseline {
        diff(&mut page, results, baseline);
    }
    histogram(&mut page, &results.outcomes);
    confusion(&mut page, &results.outcomes);
    page.push_str("<h2 id=\"scenarios\">Scenarios</h2>");
    let before: BTreeMap<&str, &Outcome> = baseline.map(|b| b.outcomes.iter().map(|o| (o.name.as_str(), o)).collect()).unwrap_or_default();
    for (index, outcome) in results.outcomes.iter().enumerate() {
        scenario(&mut page, index, outcome, before.get(outcome.name.as_str()).copied());
    }
    page.push_str("</body></html>\n");
    page
}

fn summary(page: &mut String, results: &Results, baseline: Option<&Results>) {
    page.push_str("<h2>Summary</h2><table><tr><th>assistant</th><th>scenarios</th><th>task success</th><th>disposition</th><th>extraction</th><th>v2v p50 ms</th><th>v2v p95 ms</th><th>barge-in p95 ms</th><th>talk-over ms</th><th>caller WER</th><th>agent WER</th></tr>");
    let rows = results.by_assistant.iter().map(|(name, f)| (name.as_str(), f)).chain([("all", &results.overall)]);
    for (name, figures) in rows {
        let old: Option<&Figures> = baseline.and_then(|b| if name == "all" { Some(&b.overall) } else { b.by_assistant.get(name) });
        let was = |now: String, then: Option<String>| match then {
            Some(then) if then != now => format!("{now} <span class=\"was\">(was {then})</span>"),
            _ => now,
        };
        let _ = write!(
            page,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.0}</td><td>{}</td><td>{}</td></tr>",
            esc(name),
            figures.scenarios,
            was(pct(Some(figures.task_success)), old.map(|o| pct(Some(o.task_success)))),
            was(pct(figures.disposition_accuracy), old.map(|o| pct(o.disposition_accuracy))),
            was(pct(figures.extraction_accuracy), old.map(|o| pct(o.extraction_accuracy))),
            was(ms(figures.voice_to_voice_p50_ms), old.map(|o| ms(o.voice_to_voice_p50_ms))),
            was(ms(figures.voice_to_voice_p95_ms), old.map(|o| ms(o.voice_to_voice_p95_ms))),
            ms(figures.barge_in_p95_ms),
            figures.talk_over_ms,
            was(pct(figures.stt_wer), old.map(|o| pct(o.stt_wer))),
            pct(figures.agent_wer)
        );
    }
    page.push_str("</table>");
    let guards: Vec<String> = results.overall.guards.iter().map(|(kind, n)| format!("{} {n}", esc(kind))).collect();
    let _ = write!(page, "<p>Guards fired: {}.</p>", if guards.is_empty() { "none".into() } else { guards.join(", ") });
}

fn diff(page: &mut String, results: &Results, baseline: &Results) {
    page.push_str("<h2>Against the baseline</h2>");
    let found = regressions(results, baseline, Thresholds::default());
    if found.is_empty() {
        page.push_str("<p class=\"pass\">No regression.</p>");
    } else {
        page.push_str("<ul>");
        for regression in &found {
            let _ = write!(page, "<li class=\"regression\">{}</li>", esc(regression));
        }
        page.push_str("</ul>");
    }
    let before: BTreeMap<&str, bool> = baseline.outcomes.iter().map(|o| (o.name.as_str(), o.passed)).collect();
    let fixed: Vec<&str> = results.outcomes.iter().filter(|o| o.passed && before.get(o.name.as_str()) == Some(&false)).map(|o| o.name.as_str()).collect();
    if !fixed.is_empty() {
        let _ = write!(page, "<p class=\"pass\">Now passing: {}.</p>", fixed.iter().map(|n| esc(n)).collect::<Vec<_>>().join("; "));
    }
    let new: Vec<&str> = results.outcomes.iter().filter(|o| !before.contains_key(o.name.as_str())).map(|o| o.name.as_str()).collect();
    if !new.is_empty() {
        let _ = write!(page, "<p>Not in the baseline: {}.</p>", new.iter().map(|n| esc(n)).collect::<Vec<_>>().join("; "));
    }
}

/// Voice-to-voice latency of every turn, in 100 ms bins (the last bin holds the rest).
fn histogram(page: &mut String, outcomes: &[Outcome]) {
    let values: Vec<f64> = outcomes.iter().flat_map(|o| o.voice_to_voice_ms.iter().copied()).collect();
    page.push_str("<h2>Voice-to-voice latency</h2>");
    if values.is_empty() {
        page.push_str("<p>No answered turns.</p>");
        return;
    }
    const BINS: usize = 30;
    let mut counts = [0usize; BINS];
    for v in &values {
        counts[((v / 100.0).max(0.0) as usize).min(BINS - 1)] += 1;
    }
    let top = counts.iter().copied().max().unwrap_or(1).max(1);
    let (width, height, left, bottom) = (900.0, 200.0, 40.0, 30.0);
    let bar = (width - left) / BINS as f64;
    let _ = write!(page, "<svg id=\"histogram\" width=\"{width}\" height=\"{}\" role=\"img\" aria-label=\"histogram of voice-to-voice latency\">", height + bottom);
    for (i, count) in counts.iter().enumerate() {
        let h = *count as f64 / top as f64 * height;
        let x = left + i as f64 * bar;
        let _ = write!(
            page,
            "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"#4a7fc1\"><title>{}–{} ms: {count} turns</title></rect>",
            height - h,
            bar - 2.0,
            i * 100,
            if i == BINS - 1 { "…".to_string() } else { ((i + 1) * 100).to_string() }
        );
        if i % 5 == 0 {
            let _ = write!(page, "<text x=\"{x:.1}\" y=\"{}\">{}</text>", height + 15.0, i * 100);
        }
    }
    let _ = write!(page, "<text x=\"0\" y=\"12\">{top}</text><text x=\"{}\" y=\"{}\">ms</text></svg>", width - 30.0, height + 28.0);
    let _ = write!(page, "<p>{} turns; p50 {} ms, p95 {} ms.</p>", values.len(), ms(crate::pipeline::metrics::percentile(&values, 0.5)), ms(crate::pipeline::metrics::percentile(&values, 0.95)));
}

fn confusion(page: &mut String, outcomes: &[Outcome]) {
    let judged: Vec<&Outcome> = outcomes.iter().filter(|o| o.expected_disposition.is_some()).collect();
    page.push_str("<h2>Dispositions</h2>");
    if judged.is_empty() {
        page.push_str("<p>No scenario expects a disposition.</p>");
        return;
    }
    let expected: BTreeSet<&str> = judged.iter().filter_map(|o| o.expected_disposition.as_deref()).collect();
    let got: BTreeSet<&str> = judged.iter().map(|o| o.disposition.as_str()).collect();
    page.push_str("<table id=\"confusion\"><tr><th>expected ↓ / got →</th>");
    for g in &got {
        let _ = write!(page, "<th>{}</th>", esc(g));
    }
    page.push_str("</tr>");
    for e in &expected {
        let _ = write!(page, "<tr><td>{}</td>", esc(e));
        for g in &got {
            let n = judged.iter().filter(|o| o.expected_disposition.as_deref() == Some(*e) && o.disposition == *g).count();
            let style = match (n, e == g) {
                (0, _) => "",
                (_, true) => " style=\"background:#dff3e2\"",
                (_, false) => " style=\"background:#fbe0de\"",
            };
            let _ = write!(page, "<td{style}>{}</td>", if n == 0 { String::new() } else { n.to_string() });
        }
        page.push_str("</tr>");
    }
    page.push_str("</table>");
}

fn scenario(page: &mut String, index: usize, outcome: &Outcome, before: Option<&Outcome>) {
    let verdict = if outcome.passed { "<span class=\"pass\">PASS</span>" } else { "<span class=\"fail\">FAIL</span>" };
    let change = match before {
        Some(old) if old.passed && !outcome.passed => " <span class=\"regression\">(passed in the baseline)</span>",
        Some(old) if !old.passed && outcome.passed => " <span class=\"pass\">(failed in the baseline)</span>",
        _ => "",
    };
    let open = if outcome.passed { "" } else { " open" };
    let _ = write!(
        page,
        "<details id=\"s{index}\"{open}><summary>{verdict} {} <span class=\"was\">{} · {:.1} s · disposition {}</span>{change}</summary>",
        esc(&outcome.name),
        esc(&outcome.assistant),
        outcome.duration_s,
        esc(&outcome.disposition)
    );
    if !outcome.failures.is_empty() || outcome.error.is_some() {
        page.push_str("<ul class=\"failures\">");
        for failure in outcome.failures.iter().chain(outcome.error.iter()) {
            let _ = write!(page, "<li>{}</li>", esc(failure));
        }
        page.push_str("</ul>");
    }
    timeline(page, outcome);
    if !outcome.turns.is_empty() {
        page.push_str("<table><tr><th>turn at s</th><th>end of turn ms</th><th>transcript ms</th><th>LLM ms</th><th>first audio ms</th><th>voice-to-voice ms</th></tr>");
        for turn in &outcome.turns {
            let _ = write!(
                page,
                "<tr><td>{:.1}</td><td>{:.0}</td><td>{:.0}</td><td>{:.0}</td><td>{:.0}</td><td>{:.0}</td></tr>",
                turn.at_s, turn.end_of_turn_ms, turn.stt_ms, turn.llm_ms, turn.tts_ms, turn.voice_to_voice_ms
            );
        }
        page.push_str("</table>");
    }
    page.push_str("<div class=\"transcript\">");
    for (i, (who, text)) in outcome.transcript.iter().enumerate() {
        let at = outcome.said_at_s.get(i).map(|s| format!("{s:.1}s ")).unwrap_or_default();
        let _ = write!(page, "<div><span class=\"was\">{at}</span><span class=\"who {}\">{}</span> {}</div>", who, who, esc(text));
    }
    page.push_str("</div>");
    if outcome.stt_words > 0 || outcome.agent_words > 0 {
        let _ = write!(
            page,
            "<p class=\"was\">Caller recognized with {} word errors in {}; the agent transcribed back with {} in {}.</p>",
            outcome.stt_errors, outcome.stt_words, outcome.agent_errors, outcome.agent_words
        );
    }
    if !outcome.reference.is_empty() {
        page.push_str("<p>The recorded agent, after each caller turn (the reference):</p><ol class=\"was\">");
        for said in &outcome.reference {
            let _ = write!(page, "<li>{}</li>", if said.is_empty() { "(silence)".to_string() } else { esc(said) });
        }
        page.push_str("</ol>");
    }
    if !outcome.extracted.is_empty() {
        let fields: Vec<String> = outcome.extracted.iter().map(|(k, v)| format!("{} = {}", esc(k), esc(&v.to_string()))).collect();
        let _ = write!(page, "<p>Extracted: {}</p>", fields.join(", "));
    }
    if let Some(audio) = &outcome.audio {
        let _ = write!(page, "<p><audio controls preload=\"none\" src=\"{}\"></audio> <span class=\"was\">caller left, agent right</span></p>", esc(audio));
    }
    page.push_str("</details>");
}

/// Two lanes, caller above agent: who made sound when, barge-ins as red lines, each line of
/// the transcript as a tick with its words on hover.
fn timeline(page: &mut String, outcome: &Outcome) {
    let end = outcome
        .caller_speech
        .iter()
        .chain(outcome.agent_speech.iter())
        .map(|(_, to)| *to)
        .chain(outcome.said_at_s.iter().copied())
        .fold(outcome.duration_s, f64::max);
    if end <= 0.0 {
        return;
    }
    let (width, left) = (1000.0, 50.0);
    let scale = (width - left - 10.0) / end;
    let x = |s: f64| left + s * scale;
    let _ = write!(page, "<svg class=\"timeline\" width=\"{width}\" height=\"74\" role=\"img\" aria-label=\"who spoke when\">");
    let _ = write!(page, "<text x=\"0\" y=\"18\">caller</text><text x=\"0\" y=\"48\">agent</text>");
    for (lane, spans, colour) in [(8.0, &outcome.caller_speech, "#1f5fa8"), (38.0, &outcome.agent_speech, "#d98a1c")] {
        for (from, to) in spans.iter() {
            let _ = write!(page, "<rect x=\"{:.1}\" y=\"{lane}\" width=\"{:.1}\" height=\"16\" fill=\"{colour}\"><title>{from:.2}–{to:.2} s</title></rect>", x(*from), ((to - from) * scale).max(1.0));
        }
    }
    for (i, (who, text)) in outcome.transcript.iter().enumerate() {
        if let Some(at) = outcome.said_at_s.get(i) {
            let y = if *who == crate::call::Speaker::Caller { 26.0 } else { 56.0 };
            let _ = write!(page, "<rect x=\"{:.1}\" y=\"{y}\" width=\"2\" height=\"6\" fill=\"#333\"><title>{at:.1} s {}: {}</title></rect>", x(*at), who, esc(text));
        }
    }
    for at in &outcome.barge_ins_at_s {
        let _ = write!(page, "<line x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"4\" y2=\"60\" stroke=\"#d0021b\" stroke-width=\"2\"><title>barge-in: the agent stopped at {at:.2} s</title></line>", x(*at));
    }
    let mut tick = 0.0;
    let step = if end > 120.0 { 20.0 } else if end > 40.0 { 10.0 } else { 5.0 };
    while tick <= end {
        let _ = write!(page, "<text x=\"{:.1}\" y=\"72\">{tick:.0}s</text>", x(tick));
        tick += step;
    }
    page.push_str("</svg>");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::results;

    fn outcome(name: &str, passed: bool, disposition: &str) -> Outcome {
        Outcome {
            name: name.into(),
            assistant: "luigis_booking".into(),
            passed,
            failures: if passed { vec![] } else { vec!["extracted name = \"Hotel\", expected \"Patel\"".into()] },
            disposition: disposition.into(),
            expected_disposition: Some("booked".into()),
            voice_to_voice_ms: vec![640.0, 720.0],
            duration_s: 12.0,
            transcript: vec![(crate::call::Speaker::Agent, "Hello".into()), (crate::call::Speaker::Caller, "<script>alert(1)</script> a table".into())],
            said_at_s: vec![0.5, 3.0],
            caller_speech: vec![(2.0, 3.5)],
            agent_speech: vec![(0.2, 1.6), (4.1, 6.0)],
            barge_ins_at_s: vec![5.0],
            audio: Some("run-audio/0.wav".into()),
            ..Outcome::default()
        }
    }

    #[test]
    fn the_page_has_every_part_and_escapes_what_callers_said() {
        let now = results(vec![outcome("books", true, "booked"), outcome("one sentence", false, "completed")]);
        let then = results(vec![outcome("books", false, "completed"), outcome("one sentence", true, "booked"), outcome("gone", false, "completed")]);
        let page = html(&now, Some(&then), "test machine");
        for part in ["<h2>Summary</h2>", "id=\"histogram\"", "id=\"confusion\"", "class=\"timeline\"", "<audio controls", "Against the baseline", "passed in the baseline", "Now passing: books"] {
            assert!(page.contains(part), "missing {part}");
        }
        assert!(!page.contains("<script>"), "caller text is escaped");
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(page.contains("50% <span class=\"was\">(was 33%)</span>"), "the baseline's figures beside: {page}");
    }

    #[test]
    fn an_empty_run_still_renders() {
        let page = html(&results(vec![]), None, "");
        assert!(page.contains("No answered turns") && page.ends_with("</html>\n"));
    }
}
