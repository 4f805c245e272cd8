//! The inference worker: one thread owns llama.cpp; requests queue to it in arrival order.
//!
//! The context holds several sequences ("slots"). Each slot remembers the tokens in its KV
//! cache; a request takes the slot sharing the longest prefix with its prompt, drops the rest,
//! and processes only the new tokens. A call's turns share everything up to the new user
//! line, so the system prompt is processed once per call, not once per turn.
//!
//! Generation stops at an end-of-generation token, a stop string, `max_tokens`, or when the
//! requester goes away (its channel closes): a barge-in cancels inference within one token.

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
    Done { finish: Finish, completion_tokens: usize, decode_secs: f64 },
    Error(String),
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
    tokens: Vec<LlamaToken>,
    last_used: u64,
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
    let mut slots: Vec<Slot> = (0..config.slots).map(|_| Slot { tokens: Vec::new(), last_used: 0 }).collect();
    let mut clock = 0u64;
    for job in inbox {
        clock += 1;
        if job.events.is_closed() {
            continue;
        }
        if let Err(error) = run_job(model, &mut ctx, &mut slots, clock, config.slot_ctx as usize, &job) {
            // After a failed decode the KV state is unknown: start every slot afresh.
            ctx.clear_kv_cache();
            for slot in &mut slots {
                slot.tokens.clear();
            }
            let _ = job.events.blocking_send(Event::Error(error));
        }
    }
}

fn common_prefix(a: &[LlamaToken], b: &[LlamaToken]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

fn run_job(
    model: &LlamaModel,
    ctx: &mut LlamaContext<'_>,
    slots: &mut [Slot],
    clock: u64,
    slot_ctx: usize,
    job: &Job,
) -> Result<(), String> {
    let started = Instant::now();
    let prompt = model.vocab().tokenize(job.prompt.as_bytes(), false, true);
    if prompt.is_empty() {
        return Err("the prompt is empty".into());
    }
    if prompt.len() + job.max_tokens.min(64) > slot_ctx {
        return Err(format!("context_length_exceeded: the prompt has {} tokens; this engine holds {slot_ctx} per conversation", prompt.len()));
    }
    // The slot with the longest shared prefix, else the least recently used.
    let (index, shared) = slots
        .iter()
        .enumerate()
        .map(|(i, s)| (i, common_prefix(&s.tokens, &prompt)))
        .max_by_key(|(i, shared)| (*shared, std::cmp::Reverse(slots[*i].last_used)))
        .expect("at least one slot");
    let seq = index as i32;
    // At least one prompt token must be decoded to get logits.
    let keep = shared.min(prompt.len() - 1);
    ctx.kv_cache_seq_rm(seq, Some(keep as u32), None).map_err(|e| e.to_string())?;
    slots[index].tokens.truncate(keep);
    slots[index].last_used = clock;

    let mut batch = LlamaBatch::new(BATCH, 1);
    let new = &prompt[keep..];
    for (chunk_index, chunk) in new.chunks(BATCH).enumerate() {
        batch.clear();
        let base = keep + chunk_index * BATCH;
        for (i, token) in chunk.iter().enumerate() {
            let position = base + i;
            batch.add(*token, position as i32, &[seq], position == prompt.len() - 1).map_err(|e| e.to_string())?;
        }
        ctx.decode(&mut batch).map_err(|e| format!("prompt decode failed: {e}"))?;
        slots[index].tokens.extend_from_slice(chunk);
    }
    let _ = job.events.blocking_send(Event::Prompt { new_tokens: new.len(), cached_tokens: keep, secs: started.elapsed().as_secs_f64() });

    // Small models loop ("I'm sorry, I'm sorry, …") without a repetition penalty.
    let penalties = LlamaSampler::penalties(model.n_vocab(), PENALTY_WINDOW, job.repeat_penalty.max(0.01), job.frequency_penalty, job.presence_penalty);
    let mut sampler = if job.temperature <= 0.0 {
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
    let decode_started = Instant::now();
    let mut produced = 0;
    let mut text = String::new();
    let mut pending_bytes: Vec<u8> = Vec::new();
    let mut sent = 0; // bytes of `text` already sent
    let mut position = prompt.len();
    let mut logits_index = batch.n_tokens() - 1;
    let mut grammar = match &job.constraint {
        Some(Constraint::Always(gbnf)) => Some(compile(model, gbnf)?),
        _ => None,
    };
    let mut allowance = 0;
    let finish = loop {
        if produced >= job.max_tokens + allowance || position + 1 >= slot_ctx {
            break Finish::Length;
        }
        let token = match grammar.as_mut() {
            Some(grammar) => sample_constrained(ctx, logits_index, &mut sampler, grammar),
            None => sampler.sample(ctx, logits_index),
        };
        if model.vocab().is_eog(token) {
            break Finish::Stop;
        }
        sampler.accept(token);
        if let Some(grammar) = grammar.as_mut() {
            grammar.accept(token);
        }
        produced += 1;
        pending_bytes.extend(model.vocab().token_to_piece(token, false, None));
        // Emit only complete UTF-8; a multi-byte character may span tokens.
        match std::str::from_utf8(&pending_bytes) {
            Ok(piece) => {
                text.push_str(piece);
                pending_bytes.clear();
            }
            Err(e) if e.error_len().is_none() => {}
            Err(_) => {
                text.push_str(&String::from_utf8_lossy(&pending_bytes));
                pending_bytes.clear();
            }
        }
        if grammar.is_none() {
            if let Some(Constraint::ToolCalls { tagged, bare }) = &job.constraint {
                // The model opens a call: what follows must be one. Text the opening token
                // carried past the marker is dropped; the grammar writes the call afresh.
                let opened = match text.find(crate::template::TOOL_OPEN) {
                    Some(at) => Some((at + crate::template::TOOL_OPEN.len(), tagged)),
                    None if sent == 0 || text[..sent].trim().is_empty() => text.find(|c: char| !c.is_whitespace()).filter(|at| text[*at..].starts_with('{')).map(|at| (at, bare)),
                    None => None,
                };
                if let Some((keep, gbnf)) = opened {
                    text.truncate(keep);
                    grammar = Some(compile(model, gbnf)?);
                    allowance = CALL_ALLOWANCE;
                }
            }
        }
        if let Some(stop_at) = job.stop.iter().filter_map(|s| text.find(s.as_str())).min() {
            text.truncate(stop_at);
            if text.len() > sent {
                let _ = job.events.blocking_send(Event::Text(text[sent..].to_string()));
            }
            sent = text.len();
            break Finish::Stop;
        }
        // Hold back a tail that could be the start of a stop string.
        let hold = job.stop.iter().map(|s| crate::template::partial_marker_len(&text, s)).max().unwrap_or(0);
        let ready_to = text.len() - hold;
        if ready_to > sent && text.is_char_boundary(ready_to) {
            if job.events.blocking_send(Event::Text(text[sent..ready_to].to_string())).is_err() {
                break Finish::Stop; // the caller went away: stop spending compute
            }
            sent = ready_to;
        }
        batch.clear();
        batch.add(token, position as i32, &[seq], true).map_err(|e| e.to_string())?;
        ctx.decode(&mut batch).map_err(|e| format!("decode failed: {e}"))?;
        slots[index].tokens.push(token);
        position += 1;
        logits_index = 0;
    };
    if text.len() > sent {
        let _ = job.events.blocking_send(Event::Text(text[sent..].to_string()));
    }
    let _ = job.events.blocking_send(Event::Done { finish, completion_tokens: produced, decode_secs: decode_started.elapsed().as_secs_f64() });
    Ok(())
}

fn compile(model: &LlamaModel, gbnf: &str) -> Result<LlamaSampler, String> {
    LlamaSampler::grammar(model, gbnf, "root").map_err(|e| format!("invalid_grammar: llama.cpp refused the grammar ({e})"))
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
