//! The call's analysis branch: each final caller utterance gets its intent, sentiment and
//! entities here, beside the voice path and never in its way.
//!
//! The agent hands utterances over an unbounded channel (a few per minute; never blocks the
//! turn manager) and goes on answering. One task per call takes them in order, so the
//! escalation rule sees the caller's turns in the order they were said; the model work runs
//! on blocking threads. Results become `CallEvent::Analysis` (stored per transcript line and
//! streamed live) and the report's `analyses`; a matching `routes:` entry of the assistant
//! (an intent, or escalation) is handed back to the agent, which acts on it without asking
//! the LLM.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{CallEvent, CallReport};
use crate::analysis::{Analyzer, IntentDef, IntentSet, Trend, UtteranceAnalysis};
use crate::assistant::{Assistant, RouteSpec};

/// One analysed caller utterance.
#[derive(Debug, Clone, Serialize)]
pub struct TurnAnalysis {
    /// Which caller line of the transcript (0 = the first), keypad lines included.
    pub line: usize,
    pub text: String,
    #[serde(flatten)]
    pub analysis: UtteranceAnalysis,
    /// The caller turned sharply negative here.
    pub escalation: bool,
}

/// The agent's end of the branch: where it hands utterances over.
pub struct AnalysisInbox {
    utterances: mpsc::UnboundedSender<(usize, String)>,
}

impl AnalysisInbox {
    /// Hands over caller line `line`; never blocks.
    pub fn analyze(&self, line: usize, text: &str) {
        let _ = self.utterances.send((line, text.to_string()));
    }
}

/// The branch's task, which the call waits for at its end.
pub struct AnalysisBranch {
    task: JoinHandle<()>,
}

/// How long the end of a call waits for analyses still running.
const DRAIN: Duration = Duration::from_secs(5);

/// A system prompt that shows the live analysis (`{{ last_intent }}`, `{{ sentiment }}`):
/// rendered again on this branch after each caller line's analysis — never on the voice path —
/// and handed to the agent for its next LLM turn.
pub struct LivePrompt {
    pub template: String,
    pub context: Mutex<serde_json::Map<String, serde_json::Value>>,
    pub prompts: mpsc::UnboundedSender<String>,
}

impl LivePrompt {
    async fn update(&self, turn: &TurnAnalysis) {
        let context = {
            let mut context = self.context.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(found) = &turn.analysis.intent {
                context.insert("last_intent".into(), serde_json::json!(found.intent));
            }
            context.insert("sentiment".into(), serde_json::json!(turn.analysis.sentiment.label.as_str()));
            context.insert("sentiment_score".into(), serde_json::json!(turn.analysis.sentiment.score));
            serde_json::Value::Object(context.clone())
        };
        let template = self.template.clone();
        match tokio::task::spawn_blocking(move || crate::assistant::prompt::render(&template, &context)).await {
            Ok(Ok(rendered)) => {
                let _ = self.prompts.send(rendered);
            }
            Ok(Err(error)) => tracing::warn!(%error, "the prompt did not render with the live analysis; the last one stays"),
            Err(_) => {}
        }
    }
}

/// A route the analysis matched, with the caller line (counted from 0, as `analyze` was told)
/// whose words matched it.
pub type Routed = (usize, RouteSpec);

impl AnalysisBranch {
    /// Starts the branch for one call. `analyzer` is `None` when the assistant declares no
    /// intents (sentiment and entities need no model); `routes` go back to the agent.
    pub fn start(
        assistant: &Assistant,
        analyzer: Option<Arc<Analyzer>>,
        day: crate::analysis::Day,
        events: mpsc::UnboundedSender<CallEvent>,
        report: Arc<Mutex<CallReport>>,
        routes: mpsc::UnboundedSender<Routed>,
        prompt: Option<LivePrompt>,
    ) -> (AnalysisInbox, Self) {
        let (tx, mut rx) = mpsc::unbounded_channel::<(usize, String)>();
        let defs: Vec<IntentDef> = assistant.spec.intents.iter().map(crate::assistant::IntentSpec::def).collect();
        let threshold = assistant.spec.intent_threshold;
        let rules = assistant.spec.routes.clone();
        let task = tokio::spawn(async move {
            // The assistant's examples, embedded once per call (cached by text across calls).
            let set: Option<Arc<IntentSet>> = match analyzer.clone().filter(|_| !defs.is_empty()) {
                Some(analyzer) => tokio::task::spawn_blocking(move || Arc::new(analyzer.intent_set(&defs))).await.ok(),
                None => None,
            };
            let mut trend = Trend::default();
            let mut routed = false;
            while let Some((line, text)) = rx.recv().await {
                let (analyzer, set, text_for) = (analyzer.clone(), set.clone(), text.clone());
                let analysis = tokio::task::spawn_blocking(move || match analyzer {
                    Some(analyzer) => analyzer.analyze(&text_for, set.as_deref(), threshold, day),
                    None => UtteranceAnalysis::without_intent(&text_for, day),
                })
                .await;
                let Ok(analysis) = analysis else { continue };
                let escalation = trend.push(analysis.sentiment);
                let turn = TurnAnalysis { line, text, analysis, escalation };
                if !routed {
                    let intent = turn.analysis.intent.as_ref().map(|m| m.intent.as_str());
                    if let Some(route) = rules.iter().find(|r| r.matches(intent, escalation)) {
                        routed = true;
                        let _ = routes.send((turn.line, route.clone()));
                    }
                }
                if let Some(live) = &prompt {
                    live.update(&turn).await;
                }
                {
                    // A line heard again whole (the caller went on after a pause) is analysed
                    // again under its number: the later analysis stands.
                    let mut report = report.lock().unwrap_or_else(|e| e.into_inner());
                    report.analyses.retain(|a| a.line != turn.line);
                    report.analyses.push(turn.clone());
                }
                let _ = events.send(CallEvent::Analysis(turn));
            }
        });
        (AnalysisInbox { utterances: tx }, AnalysisBranch { task })
    }

    /// Waits (briefly) for what was handed over to be analysed; the inbox must be gone.
    pub async fn finish(self) {
        let mut task = self.task;
        if tokio::time::timeout(DRAIN, &mut task).await.is_err() {
            task.abort();
        }
    }
}
