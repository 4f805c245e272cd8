//! `ringline bench api`: requests per second and latency of the API on loopback, on SQLite
//! and on PostgreSQL. Starts a real `ringline serve` process per database, loads it from
//! this process with a bounded number of requests (and a time limit), prints figures.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde_json::{json, Value};

use crate::server::auth;
use crate::store::Store;

#[derive(Debug, Args)]
pub struct BenchApiArgs {
    /// Requests per endpoint and database.
    #[arg(long, default_value_t = 2000)]
    pub requests: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// A PostgreSQL server to measure on (a scratch database is created and dropped there);
    /// `none` measures SQLite only.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    pub postgres: String,
    /// Stop a phase after this many seconds, whatever is left.
    #[arg(long, default_value_t = 60)]
    pub max_seconds: u64,
}

struct ServeProcess(Child);

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn run(args: BenchApiArgs) -> anyhow::Result<()> {
    let runtime = super::call_cmds::runtime()?;
    runtime.block_on(async {
        println!(
            "{:<10} {:<34} {:>9} {:>10} {:>9} {:>9} {:>7}",
            "database", "endpoint", "requests", "req/s", "p50 ms", "p99 ms", "errors"
        );
        let scratch = tempfile::tempdir()?;
        let sqlite = format!("sqlite://{}", scratch.path().join("bench.db").display());
        bench_one("sqlite", &sqlite, &args, scratch.path()).await?;
        if args.postgres != "none" {
            match scratch_postgres(&args.postgres).await {
                Ok((url, name, admin)) => {
                    let result = bench_one("postgres", &url, &args, scratch.path()).await;
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&admin).await;
                    result?;
                }
                Err(error) => println!("{:<10} skipped: {error:#}", "postgres"),
            }
        }
        println!("\nloopback, one `ringline serve` process per database; outbound calls go to the sandbox's");
        println!("no-answer number (+1 500 555 0001): each is validated, stored, rung and closed, no models run.");
        Ok(())
    })
}

async fn scratch_postgres(admin_url: &str) -> anyhow::Result<(String, String, sqlx::PgPool)> {
    let admin = sqlx::postgres::PgPoolOptions::new().max_connections(1).acquire_timeout(Duration::from_secs(3)).connect(admin_url).await.with_context(|| format!("connecting to {admin_url}"))?;
    let name = format!("ringline_bench_{}", std::process::id());
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name}")).execute(&admin).await?;
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&admin).await?;
    let base = admin_url.rsplit_once('/').map(|(b, _)| b).unwrap_or(admin_url);
    Ok((format!("{base}/{name}"), name, admin))
}

async fn bench_one(label: &str, url: &str, args: &BenchApiArgs, scratch: &std::path::Path) -> anyhow::Result<()> {
    let store = Store::connect(url).await?;
    let (_, key) = auth::create_key(&store, "bench", Some(1_000_000_000)).await?;
    drop(store);
    let empty = scratch.join(format!("assistants-{label}"));
    std::fs::create_dir_all(&empty)?;
    let mut child = Command::new(std::env::current_exe()?)
        .args(["serve", "--bind", "127.0.0.1:0", "--database-url", url, "--assistants"])
        .arg(&empty)
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting ringline serve")?;
    let stdout = child.stdout.take().context("serve's stdout")?;
    let _serve = ServeProcess(child);
    let mut first = String::new();
    BufReader::new(stdout).read_line(&mut first)?;
    let base = first.trim().strip_prefix("listening on ").with_context(|| format!("serve printed `{first}`"))?.to_string();

    let client = reqwest::Client::builder().pool_max_idle_per_host(args.concurrency).build()?;
    let auth = format!("Bearer {key}");
    let assistant: Value = client
        .post(format!("{base}/v1/assistants"))
        .header("authorization", &auth)
        .json(&json!({ "version": 1, "name": "Bench", "system_prompt": "You are brief." }))
        .send()
        .await?
        .json()
        .await?;
    let assistant_id = assistant["id"].as_str().context("creating the bench assistant")?.to_string();
    let outbound = json!({ "assistant_id": assistant_id, "to_number": "+15005550001" }).to_string();
    let call: Value = client.post(format!("{base}/v1/calls/outbound")).header("authorization", &auth).header("content-type", "application/json").body(outbound.clone()).send().await?.json().await?;
    let call_id = call["call_id"].as_str().context("placing the first call")?.to_string();

    let status_url = format!("{base}/v1/calls/{call_id}/status");
    let (client_a, auth_a) = (client.clone(), auth.clone());
    phase(label, "GET /v1/calls/{id}/status", args, move || {
        let request = client_a.get(&status_url).header("authorization", &auth_a);
        async move { request.send().await.map(|r| r.status().is_success()).unwrap_or(false) }
    })
    .await;
    let outbound_url = format!("{base}/v1/calls/outbound");
    phase(label, "POST /v1/calls/outbound (sandbox)", args, move || {
        let request = client.post(&outbound_url).header("authorization", &auth).header("content-type", "application/json").body(outbound.clone());
        async move { request.send().await.map(|r| r.status().as_u16() == 201).unwrap_or(false) }
    })
    .await;
    // Let the sandbox finish ringing the calls before the server goes.
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(())
}

/// Runs `requests` requests, `concurrency` at a time, and prints throughput and percentiles.
async fn phase<F, Fut>(label: &str, name: &str, args: &BenchApiArgs, make: F)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send + 'static,
{
    let make = Arc::new(make);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.max_seconds);
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.concurrency.max(1) {
        let (make, next, total) = (make.clone(), next.clone(), args.requests);
        workers.push(tokio::spawn(async move {
            let mut times = Vec::new();
            let mut errors = 0usize;
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < total && Instant::now() < deadline {
                let t = Instant::now();
                if !make().await {
                    errors += 1;
                }
                times.push(t.elapsed());
            }
            (times, errors)
        }));
    }
    let mut times = Vec::new();
    let mut errors = 0;
    for worker in workers {
        if let Ok((t, e)) = worker.await {
            times.extend(t);
            errors += e;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    times.sort();
    let pick = |q: f64| times.get(((times.len() as f64 - 1.0) * q).round() as usize).map(|d| d.as_secs_f64() * 1000.0).unwrap_or(0.0);
    println!(
        "{:<10} {:<34} {:>9} {:>10.0} {:>9.2} {:>9.2} {:>7}",
        label,
        name,
        times.len(),
        times.len() as f64 / elapsed.max(1e-9),
        pick(0.5),
        pick(0.99),
        errors
    );
}
