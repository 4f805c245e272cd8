//! `ringline bench calls`: how many calls one process carries over Twilio Media Streams.
//!
//! One process holds both ends on loopback: a server that answers each stream with a
//! `StreamLine` and the same socket pump `ringline serve` uses, and as many clients playing
//! Twilio (a 20 ms μ-law frame out every tick, everything read back). The agent is scripted —
//! a two-second utterance, a pause, again — so speech recognition, the LLM and synthesis cost
//! nothing and the figure is the transport and the runtime: lines, clocks, codecs, sockets.
//! Steps of N calls at once, each held for a while; a step passes when every line's clock sent
//! every frame within 20 ms of its due time. Prints the machine, each step's figures and the
//! largest N that passed. Both ends are counted in CPU and memory (a conservative figure).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::WebSocketUpgrade;
use axum::routing::get;
use base64::Engine as _;
use clap::Args;
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::transport::stream::{StreamLog, StreamLine};
use crate::transport::twilio;
use crate::transport::AudioOut;

#[derive(Debug, Args)]
pub struct BenchCallsArgs {
    /// The most calls to try at once.
    #[arg(long, default_value_t = 1000)]
    pub calls: usize,
    /// Calls added at each step.
    #[arg(long, default_value_t = 100)]
    pub step: usize,
    /// How long each step holds its calls (seconds).
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
}

/// What the server side saw of one step's calls.
#[derive(Default)]
struct Collected {
    logs: Vec<StreamLog>,
}

pub fn run(args: BenchCallsArgs) -> anyhow::Result<()> {
    println!("{}", super::call_cmds::machine_line());
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(bench(args))
}

/// The scripted agent's utterance: two seconds of a voice-like signal (a few harmonics under
/// a syllable-rate envelope) at 8 kHz.
fn utterance() -> Arc<Vec<f32>> {
    let rate = twilio::RATE as f32;
    Arc::new(
        (0..(2 * twilio::RATE) as usize)
            .map(|i| {
                let t = i as f32 / rate;
                let envelope = (std::f32::consts::PI * 4.0 * t).sin().abs();
                let voice: f32 = [140.0, 280.0, 420.0, 700.0].iter().enumerate().map(|(k, f)| (std::f32::consts::TAU * f * t).sin() / (k as f32 + 1.0)).sum();
                0.2 * envelope * voice
            })
            .collect(),
    )
}

async fn bench(args: BenchCallsArgs) -> anyhow::Result<()> {
    let collected = Arc::new(Mutex::new(Collected::default()));
    let speech = utterance();
    let app = {
        let collected = collected.clone();
        axum::Router::new().route(
            "/stream",
            get(move |ws: WebSocketUpgrade| {
                let (collected, speech) = (collected.clone(), speech.clone());
                async move { ws.on_upgrade(move |socket| answer(socket, collected, speech)) }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("ws://{}/stream", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });

    println!("{:>6} {:>10} {:>10} {:>12} {:>12} {:>10} {:>10}", "calls", "frames", "late", "max late ms", "CPU % core", "MB/call", "CPU ms/s/call");
    let mut passed = 0;
    let mut n = args.step.max(1);
    // Memory per call against the process before any call: conservative (what earlier steps
    // freed but the allocator kept counts against this one).
    let rss_idle = rss_bytes();
    while n <= args.calls {
        collected.lock().unwrap_or_else(|e| e.into_inner()).logs.clear();
        let cpu_before = cpu_seconds();
        let started = Instant::now();
        let hold = Duration::from_secs(args.seconds.max(2));
        let clients: Vec<_> = (0..n).map(|i| tokio::spawn(play_twilio(url.clone(), i, hold))).collect();
        // Memory at steady state: halfway through the step.
        tokio::time::sleep(hold / 2).await;
        let rss_during = rss_bytes();
        let mut failed = 0;
        for client in clients {
            if !matches!(client.await, Ok(Ok(()))) {
                failed += 1;
            }
        }
        // The server's lines finish as their sockets close.
        let deadline = Instant::now() + Duration::from_secs(10);
        while collected.lock().unwrap_or_else(|e| e.into_inner()).logs.len() < n - failed && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let wall = started.elapsed().as_secs_f64();
        let cpu = cpu_seconds() - cpu_before;
        let logs = std::mem::take(&mut collected.lock().unwrap_or_else(|e| e.into_inner()).logs);
        let frames: u64 = logs.iter().map(|l| l.ticks).sum();
        let late: u64 = logs.iter().map(|l| l.ticks_late).sum();
        let max_late = logs.iter().map(|l| l.max_lateness).max().unwrap_or_default();
        let per_call_mb = rss_during.saturating_sub(rss_idle) as f64 / n as f64 / 1e6;
        println!(
            "{n:>6} {frames:>10} {late:>10} {:>12.1} {:>12.0} {per_call_mb:>10.2} {:>10.2}{}",
            max_late.as_secs_f64() * 1000.0,
            100.0 * cpu / wall,
            1000.0 * cpu / wall / n as f64,
            if failed > 0 { format!("  ({failed} calls could not connect)") } else { String::new() }
        );
        if late > 0 || failed > 0 {
            break;
        }
        passed = n;
        n += args.step.max(1);
    }
    println!("largest number of calls with every frame within 20 ms of its due time: {passed}");
    Ok(())
}

/// The server's side of one stream: a line whose scripted agent talks, pauses, talks again.
async fn answer(socket: axum::extract::ws::WebSocket, collected: Arc<Mutex<Collected>>, speech: Arc<Vec<f32>>) {
    let (sink, mut messages) = socket.split();
    let Ok(start) = crate::server::twilio::first_start(&mut messages).await else { return };
    let (line, input, outgoing) = StreamLine::start(&start.stream_sid, twilio::RATE, None);
    // The listener's place: caller audio is taken off the line as it comes.
    let mut audio = input.audio;
    tokio::spawn(async move { while audio.recv().await.is_some() {} });
    let agent = {
        let line = line.clone();
        tokio::spawn(async move {
            let mut segment = 1;
            loop {
                line.play(segment, speech.to_vec());
                segment += 1;
                while !line.is_idle() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                tokio::time::sleep(Duration::from_millis(600)).await;
            }
        })
    };
    crate::server::twilio::pump(sink, messages, &line, outgoing, &start.stream_sid).await;
    agent.abort();
    collected.lock().unwrap_or_else(|e| e.into_inner()).logs.push(line.log());
}

/// Twilio's side of one call: `connected`, `start`, a frame every 20 ms, `stop`.
async fn play_twilio(url: String, index: usize, hold: Duration) -> anyhow::Result<()> {
    let (socket, _) = tokio_tungstenite::connect_async(url.as_str()).await?;
    let (mut sink, mut incoming) = socket.split();
    let sid = format!("MZ{index:032}");
    sink.send(Message::text(json!({ "event": "connected", "protocol": "Call", "version": "1.0.0" }).to_string())).await?;
    let start = json!({ "event": "start", "streamSid": sid, "start": { "streamSid": sid, "callSid": format!("CA{index:032}"),
        "mediaFormat": { "encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1 } } });
    sink.send(Message::text(start.to_string())).await?;
    let payload = base64::engine::general_purpose::STANDARD.encode([0xFFu8; 160]);
    let media = json!({ "event": "media", "streamSid": sid, "media": { "track": "inbound", "payload": payload } }).to_string();
    let reader = tokio::spawn(async move { while let Some(Ok(_)) = incoming.next().await {} });
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let until = Instant::now() + hold;
    while Instant::now() < until {
        tick.tick().await;
        sink.send(Message::text(media.clone())).await?;
    }
    sink.send(Message::text(json!({ "event": "stop", "streamSid": sid, "stop": {} }).to_string())).await?;
    let _ = sink.close().await;
    let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
    Ok(())
}

/// CPU time this process has used (user and system).
fn cpu_seconds() -> f64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we own; RUSAGE_SELF is always valid.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0.0;
    }
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// This process's resident memory.
fn rss_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm").ok().and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok())).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(0) as u64
}
