//! `ringline bench analysis`: what the live analysis branch costs per caller line, and — given
//! public labelled sets — how often its intents and sentiments are right.
//!
//! The sets are not shipped; the README says where each comes from. Both are read in the
//! layout their authors publish:
//! - intents: CLINC150's `data_full.json` (`train`, `val`, `test`, `oos_val`, `oos_test`, each a
//!   list of `[text, intent]`). The first `--examples` training lines per intent (at most 10)
//!   become the examples; `val` is where the classifier's weights were chosen, `test` is held out
//!   and is the figure to report.
//! - sentiment: the folder of VADER's human-rated sets (`*_GroundTruth.txt`: `id<TAB>mean
//!   rating −4..4<TAB>text`, Latin-1). Every fifth line is the dev part the scoring rules were
//!   checked on; the rest is held out and reported, beside VADER's own published correlations.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::analysis::{sentiment, Analyzer, IntentDef};
use crate::models::ModelStore;

#[derive(Debug, clap::Args)]
pub struct BenchAnalysisArgs {
    /// The assistant whose intents time the per-line analysis.
    #[arg(long, default_value = "assistants/order_status.yaml")]
    assistant: PathBuf,
    /// CLINC150's `data_full.json`: intent accuracy with few examples per intent.
    #[arg(long)]
    intent_set: Option<PathBuf>,
    /// Examples per intent taken from the set's training lines (1–10).
    #[arg(long, default_value_t = 10)]
    examples: usize,
    /// The folder of VADER's `*_GroundTruth.txt` files: agreement with human ratings.
    #[arg(long)]
    sentiment_set: Option<PathBuf>,
}

/// Caller lines of the kind the analysis sees, each said once (so none is cached).
const CALLER_LINES: &[&str] = &[
    "Hi, I'm calling about my order, it still hasn't arrived.",
    "It's four five six seven eight.",
    "Can I talk to a real person please?",
    "This is ridiculous, I've been waiting for two weeks!",
    "Yes, that's right.",
    "No, the number is AB12345.",
    "When are you open tomorrow?",
    "I was charged $49.99 twice last Friday.",
    "Thanks, that's all, goodbye.",
    "My email is john dot smith at example dot com.",
    "Could you check whether the parcel has shipped?",
    "I want to make a complaint about the delivery driver.",
    "Sorry, what did you say?",
    "It was supposed to come on Monday at 10 am.",
    "Great, thank you so much, that's really helpful.",
    "Put me through to a manager, now.",
    "The order number is 2 9 3 4 0.",
    "Hmm, I'm not sure, let me check.",
    "Where is my package?",
    "I don't need it any more, cancel it.",
];

/// VADER's published correlations with the human ratings (Hutto & Gilbert, ICWSM 2014), per set.
const VADER_PUBLISHED_R: &[(&str, f64)] = &[("tweets", 0.881), ("movieReviewSnippets", 0.451), ("amazonReviewSnippets", 0.565), ("nytEditorialSnippets", 0.492)];

pub fn run(args: BenchAnalysisArgs) -> anyhow::Result<()> {
    if !(1..=10).contains(&args.examples) {
        bail!("--examples {}: must be 1 to 10 (the target is few examples per intent)", args.examples);
    }
    let store = ModelStore::from_env()?;
    let started = Instant::now();
    let analyzer = Analyzer::shared(&store)?;
    let load = started.elapsed();
    per_line(&analyzer, &args.assistant, load)?;
    if let Some(set) = &args.intent_set {
        intent_accuracy(&analyzer, set, args.examples)?;
    }
    if let Some(folder) = &args.sentiment_set {
        sentiment_agreement(folder)?;
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The timing: each caller line analysed as a call's branch does it.
fn per_line(analyzer: &Analyzer, assistant: &Path, load: Duration) -> anyhow::Result<()> {
    let assistant = crate::assistant::Assistant::load(assistant)?;
    let defs: Vec<IntentDef> = assistant.spec.intents.iter().map(crate::assistant::IntentSpec::def).collect();
    let texts: usize = defs.iter().map(|d| d.texts().len()).sum();
    let started = Instant::now();
    let set = analyzer.intent_set(&defs);
    let build = started.elapsed();
    let today = crate::analysis::Day::of(chrono::Utc::now().date_naive());
    let mut whole = Vec::new();
    let mut lexical = Vec::new();
    for line in CALLER_LINES {
        let started = Instant::now();
        let found = analyzer.analyze(line, Some(&set), assistant.spec.intent_threshold, today);
        whole.push(started.elapsed());
        let started = Instant::now();
        let _ = (sentiment::score(line), crate::analysis::entities::find(line, today));
        lexical.push(started.elapsed());
        let intent = found.intent.map(|m| format!("{} {:.2}", m.intent, m.confidence)).unwrap_or_default();
        println!("  {:<58} {intent:<24} {} {:+.2}", line, found.sentiment.label.as_str(), found.sentiment.score);
    }
    whole.sort();
    lexical.sort();
    let at = |v: &[Duration], q: f64| ms(v[((v.len() - 1) as f64 * q).round() as usize]);
    println!("\n{}; encoder kernel: {}", crate::telemetry::machine_line(), ringline_kernels::dense::kernel());
    println!("model loaded in {:.0} ms; {} intents, {texts} texts embedded in {:.0} ms ({:.1} ms each)", ms(load), defs.len(), ms(build), ms(build) / texts.max(1) as f64);
    println!("per caller line, intent + sentiment + entities: p50 {:.1} ms, p95 {:.1} ms (target ≤ 5 ms)", at(&whole, 0.5), at(&whole, 0.95));
    println!("  of which sentiment + entities alone: p50 {:.2} ms, p95 {:.2} ms", at(&lexical, 0.5), at(&lexical, 0.95));
    Ok(())
}

/// Embeds `texts`, printing progress on one line.
fn embed_with_progress(analyzer: &Analyzer, what: &str, texts: &[String]) -> Vec<std::sync::Arc<[f32]>> {
    let total = texts.len();
    let vectors = analyzer.embed(texts, &|done| eprint!("\r  embedding {what}: {done}/{total}"));
    eprintln!();
    vectors
}

fn intent_accuracy(analyzer: &Analyzer, path: &Path, examples: usize) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| format!("--intent-set {}", path.display()))?;
    let data: HashMap<String, Vec<(String, String)>> = serde_json::from_str(&text)
        .with_context(|| format!("--intent-set {}: not CLINC150's data_full.json (an object of lists of [text, intent])", path.display()))?;
    let split = |name: &str| data.get(name).with_context(|| format!("--intent-set {}: no \"{name}\" list; use CLINC150's data_full.json", path.display()));
    let mut by_intent: Vec<IntentDef> = Vec::new();
    for (text, intent) in split("train")? {
        let def = match by_intent.iter_mut().find(|d| d.name == *intent) {
            Some(def) => def,
            None => {
                by_intent.push(IntentDef { name: intent.clone(), description: None, examples: Vec::new() });
                by_intent.last_mut().expect("just pushed")
            }
        };
        if def.examples.len() < examples {
            def.examples.push(text.clone());
        }
    }
    println!("\nIntent accuracy: CLINC150, {} intents, {examples} examples each (+ the intent's name)", by_intent.len());
    let started = Instant::now();
    let set = analyzer.intent_set_with_progress(&by_intent, &|done, total| eprint!("\r  embedding examples: {done}/{total}"));
    eprintln!();
    println!("  {} texts embedded in {:.1} s", by_intent.iter().map(|d| d.texts().len()).sum::<usize>(), started.elapsed().as_secs_f64());
    let threshold = crate::analysis::intent::DEFAULT_THRESHOLD;
    for (scope, out_of_scope, role) in [("val", "oos_val", "weights chosen here"), ("test", "oos_test", "held out")] {
        let lines = split(scope)?;
        let unknown = split(out_of_scope)?;
        let line_texts: Vec<String> = lines.iter().map(|(t, _)| t.clone()).collect();
        let unknown_texts: Vec<String> = unknown.iter().map(|(t, _)| t.clone()).collect();
        let started = Instant::now();
        let line_vectors = embed_with_progress(analyzer, scope, &line_texts);
        let unknown_vectors = embed_with_progress(analyzer, out_of_scope, &unknown_texts);
        let per_line = started.elapsed() / (line_texts.len() + unknown_texts.len()).max(1) as u32;
        let mut closed = 0;
        let mut gated = 0;
        for ((_, intent), vector) in lines.iter().zip(&line_vectors) {
            let best = set.classify(vector, 0.0);
            closed += usize::from(best.intent == *intent);
            gated += usize::from(set.classify(vector, threshold).intent == *intent);
        }
        let refused = unknown_vectors.iter().filter(|v| set.classify(v, threshold).intent == crate::analysis::intent::UNKNOWN).count();
        let pct = |n: usize, of: usize| 100.0 * n as f64 / of.max(1) as f64;
        println!(
            "  {scope:<4} ({role}): {} lines, {:.1}% right; with the default threshold {threshold}: {:.1}% right, {:.1}% of {} out-of-scope lines `unknown` ({:.1} ms per line embedded in batches)",
            lines.len(),
            pct(closed, lines.len()),
            pct(gated, lines.len()),
            pct(refused, unknown.len()),
            unknown.len(),
            ms(per_line)
        );
    }
    Ok(())
}

/// Pearson's r.
fn correlation(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt().max(f64::MIN_POSITIVE)
}

/// F1 over negative / neutral / positive at VADER's ±0.05, each class weighted by its share of
/// the human labels.
fn weighted_f1(truth: &[f64], scores: &[f64]) -> f64 {
    let class = |x: f64| if x >= 0.05 { 1 } else if x <= -0.05 { -1 } else { 0 };
    let mut total = 0.0;
    for c in [-1, 0, 1] {
        let count = |want_truth: bool, want_score: bool| truth.iter().zip(scores).filter(|(t, s)| (class(**t) == c) == want_truth && (class(**s) == c) == want_score).count() as f64;
        let (tp, fp, missed) = (count(true, true), count(false, true), count(true, false));
        let f1 = if tp > 0.0 { 2.0 * tp / (2.0 * tp + fp + missed) } else { 0.0 };
        total += f1 * (tp + missed);
    }
    total / truth.len().max(1) as f64
}

fn sentiment_agreement(folder: &Path) -> anyhow::Result<()> {
    println!("\nSentiment agreement with human ratings: VADER's sets, held out (all but every fifth line; the fifth lines are the dev part rules were tried on)");
    println!("  {:<22} {:>6} {:>8} {:>10} {:>14} {:>9}", "set", "lines", "r", "F1 (3-way)", "VADER's r", "r (dev)");
    let mut found = 0;
    for (set, published) in VADER_PUBLISHED_R {
        let path = folder.join(format!("{set}_GroundTruth.txt"));
        let Ok(bytes) = std::fs::read(&path) else { continue };
        found += 1;
        // The files are Latin-1: every byte is the character of that code point.
        let text: String = bytes.iter().map(|&b| b as char).collect();
        let (mut truth, mut scores) = (Vec::new(), Vec::new());
        let (mut dev_truth, mut dev_scores) = (Vec::new(), Vec::new());
        for (n, line) in text.lines().enumerate() {
            let mut fields = line.splitn(3, '\t');
            let (Some(id), Some(rating), Some(words)) = (fields.next(), fields.next(), fields.next()) else { continue };
            let (false, Ok(rating)) = (id.trim().is_empty(), rating.trim().parse::<f64>()) else {
                bail!("{}:{}: expected `id<TAB>rating<TAB>text`", path.display(), n + 1);
            };
            let (truth, scores) = if (n + 1) % 5 == 0 { (&mut dev_truth, &mut dev_scores) } else { (&mut truth, &mut scores) };
            truth.push(rating / 4.0);
            scores.push(f64::from(sentiment::score(words).score));
        }
        println!(
            "  {set:<22} {:>6} {:>8.3} {:>10.3} {:>14.3} {:>9.3}",
            truth.len(),
            correlation(&truth, &scores),
            weighted_f1(&truth, &scores),
            published,
            correlation(&dev_truth, &dev_scores)
        );
    }
    if found == 0 {
        bail!("--sentiment-set {}: no *_GroundTruth.txt files; unpack VADER's hutto_ICWSM_2014.tar.gz there (see the README)", folder.display());
    }
    Ok(())
}
