//! The inference worker: one thread owns llama.cpp and advances every active request
//! together — continuous batching.
//!
//! The context holds several sequences ("slots"). Each slot remembers the tokens in its KV
//! cache; a request takes the free slot sharing the longest prefix with its prompt, drops the
//! rest, and processes only the new tokens. A call's turns share everything up to the new user
//! line, so the system prompt is processed once per call, not once per turn.
//!
//! Each step builds one llama.cpp batch: the next token of every request that is generating,
//! then prompt tokens of requests still reading theirs (in chunks while others generate, so
//! a long prompt never stalls the others for long). A new turn therefore joins the running
//! batch at once instead of waiting for other calls' whole replies; on a CPU one step with
//! several sequences costs little more than a step with one. Requests beyond the slots wait,
//! in arrival order.
//!
//! Generation stops at an end-of-generation token, a stop string, `max_tokens`, or when the
//! requester goes away (its channel closes): a barge-in cancels inference within one step.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::mpsc as std_mpsc;
use std::time::Instant;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use tokio::sync::mpsc;

use crate::template::ChatTemplate;

pub struct EngineConfig {
    pub model: PathBuf,
    pub threads: i32,
    pub batch_threads: i32,
    pub slots: u32,
    pub slot_ctx: u32,
    pub flash_attention: bool,
}

/// What a request asks the worker to do.
pub struct Job {
    pub prompt: String,
    pub max_tokens: usize,
    pub temperature: f32,
    /// llama.cpp's repeat penalty over the last [`PENALTY_WINDOW`] tokens (1.0 = off).
    pub repeat_penalty: f32,
    /// OpenAI's frequency and presence penalties.
    pub frequency_penalty: f32,
    pub presence_penalty: f32,
    pub stop: Vec<String>,
    /// What the output must follow, if anything.
    pub constraint: Option<Constraint>,
    pub events: mpsc::Sender<Event>,
}

/// Grammars (GBNF, see [`crate::grammar`]) the output must follow.
#[derive(Debug, Clone)]
pub enum Constraint {
    /// The whole reply.
    Always(String),
    /// Free text, until the model opens a tool call: from `<tool_call>` on the output follows
    /// `tagged`; a reply that opens with `{` follows `bare`.
    ToolCalls { tagged: String, bare: String },
}

/// Tokens a tool call may run past `max_tokens` once its grammar holds: a call cut short
/// would be lost.
const CALL_ALLOWANCE: usize = 160;

#[derive(Debug)]
pub enum Event {
    /// Prompt processed: how many tokens were new and how many came from the cache.
    Prompt { new_tokens: usize, cached_tokens: usize, secs: f64 },
    Text(String),
    /// `most_sequences`: the most requests (this one included) that shared one decode step
    /// with it.
    Done { finish: Finish, completion_tokens: usize, decode_secs: f64, most_sequences: usize },
    Error(EngineError),
}

/// Why a request failed. The first two are the request's own fault (the API answers 400); a
/// failure of the engine is the server's (500).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    #[error("context_length_exceeded: the prompt has {tokens} tokens; this engine holds {holds} per conversation")]
    ContextLength { tokens: usize, holds: usize },
    #[error("invalid_grammar: llama.cpp refused the grammar ({0})")]
    Grammar(String),
    #[error("{0}")]
    Failed(String),
}

impl EngineError {
    /// Whether the request, not the engine, was at fault.
    pub fn is_bad_request(&self) -> bool {
        matches!(self, EngineError::ContextLength { .. } | EngineError::Grammar(_))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    Stop,
    Length,
}

/// A handle to the worker thread.
#[derive(Clone)]
pub struct Engine {
    jobs: std_mpsc::SyncSender<Job>,
    pub template: std::sync::Arc<ChatTemplate>,
}

/// Jobs waiting for the worker; beyond this the API answers 503 instead of queueing forever.
const QUEUE_DEPTH: usize = 64;
const BATCH: usize = 512;
/// Prompt tokens one request may add to a step in which others are generating: bounds how
/// long a long prompt holds up their next token.
const PREFILL_CHUNK: usize = 128;
/// Tokens the repetition penalties look back over.
const PENALTY_WINDOW: i32 = 64;

impl Engine {
    pub fn start(config: EngineConfig) -> anyhow::Result<Engine> {
        let (jobs, inbox) = std_mpsc::sync_channel::<Job>(QUEUE_DEPTH);
        let (ready_tx, ready_rx) = std_mpsc::channel::<Result<String, String>>();
        std::thread::Builder::new().name("llm-worker".into()).spawn(move || worker(config, inbox, ready_tx))?;
        let template = ready_rx.recv()?.map_err(anyhow::Error::msg)?;
        Ok(Engine { jobs, template: std::sync::Arc::new(ChatTemplate::new(template)) })
    }

    /// Queues a job; `Err` when the queue is full or the worker died.
    pub fn submit(&self, job: Job) -> Result<(), &'static str> {
        self.jobs.try_send(job).map_err(|e| match e {
            std_mpsc::TrySendError::Full(_) => "the engine's queue is full",
            std_mpsc::TrySendError::Disconnected(_) => "the engine's worker has stopped",
        })
    }
}

struct Slot {
    /// The tokens in this sequence's KV cache, in order.
    tokens: Vec<LlamaToken>,
    last_used: u64,
}

/// A request being served: reading its prompt, then generating.
struct Active {
    job: Job,
    slot: usize,
    prompt: Vec<LlamaToken>,
    /// Prompt tokens in the cache (or in the step being decoded).
    fed: usize,
    cached: usize,
    started: Instant,
    decode_started: Option<Instant>,
    sampler: LlamaSampler,
    grammar: Option<LlamaSampler>,
    allowance: usize,
    produced: usize,
    text: String,
    pending_bytes: Vec<u8>,
    /// Bytes of `text` already sent.
    sent: usize,
    /// The token sampled last, to be decoded in the next step.
    next: Option<LlamaToken>,
    /// Where this request's logits are in the step just decoded.
    logits_at: Option<i32>,
    most_sequences: usize,
}

fn worker(config: EngineConfig, inbox: std_mpsc::Receiver<Job>, ready: std_mpsc::Sender<Result<String, String>>) {
    let setup = || -> anyhow::Result<(&'static LlamaBackend, &'static LlamaModel, String)> {
        let mut backend = LlamaBackend::init()?;
        backend.void_logs();
        let backend: &'static LlamaBackend = Box::leak(Box::new(backend));
        let model = LlamaModel::load_from_file(backend, &config.model, &LlamaModelParams::default())?;
        let model: &'static LlamaModel = Box::leak(Box::new(model));
        let template = model.meta_val_str("tokenizer.chat_template").unwrap_or_else(|_| CHATML_FALLBACK.to_string());
        Ok((backend, model, template))
    };
    let (backend, model, template) = match setup() {
        Ok(v) => v,
        Err(e) => {
            let _ = ready.send(Err(format!("loading {}: {e}", config.model.display())));
            return;
        }
    };
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(config.slot_ctx * config.slots))
        .with_n_batch(BATCH as u32)
        .with_n_ubatch(BATCH as u32)
        .with_n_seq_max(config.slots)
        .with_n_threads(config.threads)
        .with_n_threads_batch(config.batch_threads)
        .with_flash_attention_policy(if config.flash_attention {
            llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_ENABLED
        } else {
            llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_DISABLED
        });
    let mut ctx = match model.new_context(backend, params) {
        Ok(ctx) => ctx,
        Err(e) => {
            let _ = ready.send(Err(format!("creating the context: {e}")));
            return;
        }
    };
    let _ = ready.send(Ok(template));
    let slot_ctx = config.slot_ctx as usize;
    let mut slots: Vec<Slot> = (0..config.slots).map(|_| Slot { tokens: Vec::new(), last_used: 0 }).collect();
    let mut waiting: VecDeque<Job> = VecDeque::new();
    let mut active: Vec<Active> = Vec::new();
    let mut batch = LlamaBatch::new(BATCH, config.slots as i32);
    let mut clock = 0u64;
    loop {
        // Take new requests: wait for one when there is nothing to do.
        if active.is_empty() && waiting.is_empty() {
            match inbox.recv() {
                Ok(job) => waiting.push_back(job),
                Err(_) => return,
            }
        }
        while let Ok(job) = inbox.try_recv() {
            waiting.push_back(job);
        }
        // Each active request holds one slot; the others are free.
        while active.len() < slots.len() {
            let Some(job) = waiting.pop_front() else { break };
            if job.events.is_closed() {
                continue;
            }
            clock += 1;
            let taken: Vec<usize> = active.iter().map(|r| r.slot).collect();
            match admit(model, &mut ctx, &mut slots, &taken, clock, slot_ctx, job) {
                Ok(request) => active.push(request),
                Err((job, error)) => {
                    let _ = job.events.blocking_send(Event::Error(error));
                }
            }
        }
        if active.is_empty() {
            continue;
        }
        if let Err(error) = step(model, &mut ctx, &mut slots, &mut active, &mut batch, slot_ctx) {
            // After a failed decode the KV state is unknown: every request fails, every slot
            // starts afresh.
            ctx.clear_kv_cache();
            for slot in &mut slots {
                slot.tokens.clear();
            }
            for request in active.drain(..) {
                let _ = request.job.events.blocking_send(Event::Error(error.clone()));
            }
        }
    }
}

fn common_prefix(a: &[LlamaToken], b: &[LlamaToken]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Gives a request a free slot (the one sharing the longest prefix with its prompt, else the
/// least recently used) and drops what that slot held past the shared part.
fn admit(model: &LlamaModel, ctx: &mut LlamaContext<'_>, slots: &mut [Slot], taken: &[usize], clock: u64, slot_ctx: usize, job: Job) -> Result<Active, (Job, EngineError)> {
    let started = Instant::now();
    let prompt = model.vocab().tokenize(job.prompt.as_bytes(), false, true);
    if prompt.is_empty() {
        return Err((job, EngineError::Failed("the prompt is empty".into())));
    }
    if prompt.len() + job.max_tokens.min(64) > slot_ctx {
        return Err((job, EngineError::ContextLength { tokens: prompt.len(), holds: slot_ctx }));
    }
    let (index, shared) = slots
        .iter()
        .enumerate()
        .filter(|(i, _)| !taken.contains(i))
        .map(|(i, s)| (i, common_prefix(&s.tokens, &prompt)))
        .max_by_key(|(i, shared)| (*shared, std::cmp::Reverse(slots[*i].last_used)))
        .expect("admit is called with a free slot");
    // At least one prompt token must be decoded to get logits.
    let keep = shared.min(prompt.len() - 1);
    if let Err(e) = ctx.kv_cache_seq_rm(index as i32, Some(keep as u32), None) {
        return Err((job, EngineError::Failed(e.to_string())));
    }
    let slot = &mut slots[index];
    slot.tokens.truncate(keep);
    slot.last_used = clock;
    // Small models loop ("I'm sorry, I'm sorry, …") without a repetition penalty.
    let penalties = LlamaSampler::penalties(model.n_vocab(), PENALTY_WINDOW, job.repeat_penalty.max(0.01), job.frequency_penalty, job.presence_penalty);
    let sampler = if job.temperature <= 0.0 {
        LlamaSampler::chain_simple([penalties, LlamaSampler::greedy()])
    } else {
        LlamaSampler::chain_simple([
            penalties,
            LlamaSampler::top_k(40),
            LlamaSampler::top_p(0.95, 1),
            LlamaSampler::temp(job.temperature),
            LlamaSampler::dist(clock as u32),
        ])
    };
    let grammar = match &job.constraint {
        Some(Constraint::Always(gbnf)) => match compile(model, gbnf) {
            Ok(grammar) => Some(grammar),
            Err(error) => return Err((job, error)),
        },
        _ => None,
    };
    Ok(Active {
        job,
        slot: index,
        prompt,
        fed: keep,
        cached: keep,
        started,
        decode_started: None,
        sampler,
        grammar,
        allowance: 0,
        produced: 0,
        text: String::new(),
        pending_bytes: Vec::new(),
        sent: 0,
        next: None,
        logits_at: None,
        most_sequences: 1,
    })
}

/// One decode step over every active request; finished ones leave `active` and free their slot.
fn step(model: &LlamaModel, ctx: &mut LlamaContext<'_>, slots: &mut [Slot], active: &mut Vec<Active>, batch: &mut LlamaBatch, slot_ctx: usize) -> Result<(), EngineError> {
    // A request whose caller went away (a barge-in) stops here; what it decoded stays cached.
    active.retain(|request| !request.job.events.is_closed());
    batch.clear();
    let generating = active.iter().filter(|r| r.next.is_some()).count();
    let mut sequences = generating;
    // First every generating request's next token…
    for request in active.iter_mut() {
        request.logits_at = None;
        if let Some(token) = request.next {
            let position = slots[request.slot].tokens.len();
            request.logits_at = Some(batch.n_tokens());
            batch.add(token, position as i32, &[request.slot as i32], true).map_err(|e| EngineError::Failed(e.to_string()))?;
        }
    }
    // …then prompt tokens, in arrival order, in the room left.
    let mut room = BATCH - generating;
    for request in active.iter_mut().filter(|r| r.fed < r.prompt.len()) {
        let chunk = if generating > 0 { PREFILL_CHUNK } else { BATCH };
        let take = (request.prompt.len() - request.fed).min(room).min(chunk);
        if take == 0 {
            break;
        }
        for position in request.fed..request.fed + take {
            let last = position == request.prompt.len() - 1;
            if last {
                request.logits_at = Some(batch.n_tokens());
            }
            batch.add(request.prompt[position], position as i32, &[request.slot as i32], last).map_err(|e| EngineError::Failed(e.to_string()))?;
        }
        room -= take;
        request.fed += take;
        sequences += 1;
    }
    if batch.n_tokens() == 0 {
        return Ok(());
    }
    ctx.decode(batch).map_err(|e| EngineError::Failed(format!("decode failed: {e}")))?;
    // What was decoded is now in each slot's cache.
    for request in active.iter_mut() {
        let slot = &mut slots[request.slot];
        if let Some(token) = request.next.take() {
            slot.tokens.push(token);
        } else {
            let cached = slot.tokens.len();
            if request.fed > cached {
                slot.tokens.extend_from_slice(&request.prompt[cached..request.fed]);
            }
        }
        request.most_sequences = request.most_sequences.max(sequences);
    }
    let mut finished = Vec::new();
    for (i, request) in active.iter_mut().enumerate() {
        let Some(index) = request.logits_at else { continue };
        if request.decode_started.is_none() {
            let new_tokens = request.prompt.len() - request.cached;
            let _ = request.job.events.blocking_send(Event::Prompt { new_tokens, cached_tokens: request.cached, secs: request.started.elapsed().as_secs_f64() });
            request.decode_started = Some(Instant::now());
        }
        if let Some(finish) = advance(model, ctx, request, index, slots[request.slot].tokens.len(), slot_ctx)? {
            finished.push((i, finish));
        }
    }
    for (i, finish) in finished.into_iter().rev() {
        let request = active.swap_remove(i);
        if request.text.len() > request.sent {
            let _ = request.job.events.blocking_send(Event::Text(request.text[request.sent..].to_string()));
        }
        let decode_secs = request.decode_started.map_or(0.0, |t| t.elapsed().as_secs_f64());
        let done = Event::Done { finish, completion_tokens: request.produced, decode_secs, most_sequences: request.most_sequences };
        let _ = request.job.events.blocking_send(done);
    }
    Ok(())
}

/// Samples a request's next token from its logits at `index`, emits the text it completes,
/// and says whether the request is done (`position`: the tokens in its cache).
fn advance(model: &LlamaModel, ctx: &LlamaContext<'_>, request: &mut Active, index: i32, position: usize, slot_ctx: usize) -> Result<Option<Finish>, EngineError> {
    if request.produced >= request.job.max_tokens + request.allowance || position + 1 >= slot_ctx {
        return Ok(Some(Finish::Length));
    }
    let token = match request.grammar.as_mut() {
        Some(grammar) => sample_constrained(ctx, index, &mut request.sampler, grammar),
        None => request.sampler.sample(ctx, index),
    };
    if model.vocab().is_eog(token) {
        return Ok(Some(Finish::Stop));
    }
    request.sampler.accept(token);
    if let Some(grammar) = request.grammar.as_mut() {
        grammar.accept(token);
    }
    request.produced += 1;
    request.pending_bytes.extend(model.vocab().token_to_piece(token, false, None));
    // Emit only complete UTF-8; a multi-byte character may span tokens.
    match std::str::from_utf8(&request.pending_bytes) {
        Ok(piece) => {
            request.text.push_str(piece);
            request.pending_bytes.clear();
        }
        Err(e) if e.error_len().is_none() => {}
        Err(_) => {
            request.text.push_str(&String::from_utf8_lossy(&request.pending_bytes));
            request.pending_bytes.clear();
        }
    }
    if request.grammar.is_none() {
        if let Some(Constraint::ToolCalls { tagged, bare }) = &request.job.constraint {
            // The model opens a call: what follows must be one. Text the opening token
            // carried past the marker is dropped; the grammar writes the call afresh.
            let text = &request.text;
            let opened = match text.find(crate::template::TOOL_OPEN) {
                Some(at) => Some((at + crate::template::TOOL_OPEN.len(), tagged)),
                None if request.sent == 0 || text[..request.sent].trim().is_empty() => {
                    text.find(|c: char| !c.is_whitespace()).filter(|at| text[*at..].starts_with('{')).map(|at| (at, bare))
                }
                None => None,
            };
            if let Some((keep, gbnf)) = opened {
                let grammar = compile(model, gbnf)?;
                request.text.truncate(keep);
                request.grammar = Some(grammar);
                request.allowance = CALL_ALLOWANCE;
            }
        }
    }
    if let Some(stop_at) = request.job.stop.iter().filter_map(|s| request.text.find(s.as_str())).min() {
        request.text.truncate(stop_at);
        return Ok(Some(Finish::Stop));
    }
    // Hold back a tail that could be the start of a stop string.
    let hold = request.job.stop.iter().map(|s| crate::template::partial_marker_len(&request.text, s)).max().unwrap_or(0);
    let ready_to = request.text.len() - hold;
    if ready_to > request.sent && request.text.is_char_boundary(ready_to) {
        let piece = request.text[request.sent..ready_to].to_string();
        let delivered = match request.job.events.try_send(Event::Text(piece)) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(event)) => request.job.events.blocking_send(event).is_ok(),
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        };
        if !delivered {
            return Ok(Some(Finish::Stop)); // the caller went away: stop spending compute
        }
        request.sent = ready_to;
    }
    request.next = Some(token);
    Ok(None)
}

fn compile(model: &LlamaModel, gbnf: &str) -> Result<LlamaSampler, EngineError> {
    LlamaSampler::grammar(model, gbnf, "root").map_err(|e| EngineError::Grammar(e.to_string()))
}

/// Samples a token the grammar allows. The usual chain picks first and only that token is
/// checked (one grammar test instead of one per vocabulary entry); if the grammar refuses
/// it, the grammar filters the whole vocabulary and the chain picks again.
fn sample_constrained(ctx: &LlamaContext<'_>, index: i32, chain: &mut LlamaSampler, grammar: &mut LlamaSampler) -> LlamaToken {
    let mut candidates = ctx.token_data_array_ith(index);
    let logits: Vec<f32> = candidates.data.iter().map(|d| d.logit()).collect();
    candidates.apply_sampler(chain);
    if let Some(token) = candidates.selected_token() {
        let mut single = llama_cpp_2::token::data_array::LlamaTokenDataArray::new(
            vec![llama_cpp_2::token::data::LlamaTokenData::new(token, logits[token.0 as usize], 0.0)],
            false,
        );
        single.apply_sampler(grammar);
        if single.data[0].logit().is_finite() {
            return token;
        }
    }
    let mut candidates = ctx.token_data_array_ith(index);
    candidates.apply_sampler(grammar);
    candidates.apply_sampler(chain);
    candidates.selected_token().unwrap_or_else(|| {
        // Only reachable if the chain selected nothing: take the grammar's best.
        candidates.data.iter().filter(|d| d.logit().is_finite()).max_by(|a, b| a.logit().total_cmp(&b.logit())).map(|d| d.id()).unwrap_or(LlamaToken(0))
    })
}

/// Used when a GGUF carries no chat template.
const CHATML_FALLBACK: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_requests_own_fault_is_told_apart_from_the_engines_and_keeps_its_code() {
        let long = EngineError::ContextLength { tokens: 5000, holds: 4096 };
        assert!(long.is_bad_request());
        assert_eq!(long.to_string(), "context_length_exceeded: the prompt has 5000 tokens; this engine holds 4096 per conversation");
        let grammar = EngineError::Grammar("parse error at 3".into());
        assert!(grammar.is_bad_request() && grammar.to_string().starts_with("invalid_grammar: "));
        assert!(!EngineError::Failed("decode failed: -1".into()).is_bad_request());
    }
}
