//! Prometheus metrics: requests by route and status with latency, calls started, calls live.
//! Rendered in the text exposition format at `/metrics`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

use super::AppState;

/// Upper bounds (seconds) of the request-latency histogram.
const BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

#[derive(Default)]
pub struct Metrics {
    /// (method, route, status) → count.
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    /// route → (bucket counts, sum of seconds, count).
    latency: Mutex<BTreeMap<String, ([u64; BUCKETS.len()], f64, u64)>>,
    calls_started: AtomicU64,
}

impl Metrics {
    pub fn call_started(&self) {
        self.calls_started.fetch_add(1, Ordering::Relaxed);
    }

    fn record(&self, method: &str, route: &str, status: u16, seconds: f64) {
        *self.requests.lock().unwrap_or_else(|e| e.into_inner()).entry((method.to_string(), route.to_string(), status)).or_default() += 1;
        let mut latency = self.latency.lock().unwrap_or_else(|e| e.into_inner());
        let (buckets, sum, count) = latency.entry(route.to_string()).or_insert(([0; BUCKETS.len()], 0.0, 0));
        for (bucket, bound) in buckets.iter_mut().zip(BUCKETS) {
            if seconds <= bound {
                *bucket += 1;
            }
        }
        *sum += seconds;
        *count += 1;
    }

    pub fn render(&self, live_calls: usize) -> String {
        let mut out = String::new();
        out.push_str("# HELP ringline_http_requests_total HTTP requests answered, by route and status.\n# TYPE ringline_http_requests_total counter\n");
        for ((method, route, status), count) in self.requests.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            out.push_str(&format!("ringline_http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {count}\n"));
        }
        out.push_str("# HELP ringline_http_request_duration_seconds Time to answer a request.\n# TYPE ringline_http_request_duration_seconds histogram\n");
        for (route, (buckets, sum, count)) in self.latency.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            for (bucket, bound) in buckets.iter().zip(BUCKETS) {
                out.push_str(&format!("ringline_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {bucket}\n"));
            }
            out.push_str(&format!("ringline_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {count}\n"));
            out.push_str(&format!("ringline_http_request_duration_seconds_sum{{route=\"{route}\"}} {sum}\n"));
            out.push_str(&format!("ringline_http_request_duration_seconds_count{{route=\"{route}\"}} {count}\n"));
        }
        out.push_str("# HELP ringline_calls_started_total Calls started by this worker.\n# TYPE ringline_calls_started_total counter\n");
        out.push_str(&format!("ringline_calls_started_total {}\n", self.calls_started.load(Ordering::Relaxed)));
        out.push_str("# HELP ringline_calls_live Calls running on this worker now.\n# TYPE ringline_calls_live gauge\n");
        out.push_str(&format!("ringline_calls_live {live_calls}\n"));
        out
    }
}

/// Middleware: counts and times every request under its route template (`/v1/calls/{id}`).
pub async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_else(|| "unmatched".into());
    let method = request.method().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    state.metrics.record(&method, &route, response.status().as_u16(), started.elapsed().as_secs_f64());
    response
}
