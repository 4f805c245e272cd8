//! Loopback stand-ins for remote services a call talks to: an OpenAI-compatible LLM
//! endpoint (a cloud provider, which cannot be reached from here) and a customer's HTTP tool.
//! Both speak the documented wire protocols (HTTP/1.1, server-sent events) and record what
//! they were sent, so tests can check what crossed the wire.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

/// A response: status, content type, body, and a delay before answering.
#[derive(Clone)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub delay: Duration,
}

/// A tiny HTTP/1.1 server on 127.0.0.1 that records request bodies and heads.
pub struct Server {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<Value>>>,
    /// Each request's line and headers, as received.
    pub heads: Arc<Mutex<Vec<String>>>,
}

impl Server {
    pub fn start(handler: impl Fn(usize, &Value) -> Response + Send + 'static) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let recorded = requests.clone();
        let recorded_heads = heads.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (head, body) = match read_request(&stream) {
                    Some(request) => request,
                    None => continue,
                };
                recorded_heads.lock().unwrap().push(head);
                let index = {
                    let mut all = recorded.lock().unwrap();
                    all.push(body.clone());
                    all.len() - 1
                };
                let response = handler(index, &body);
                std::thread::spawn(move || respond(stream, response));
            }
        });
        Server { addr, requests, heads }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn requests(&self) -> Vec<Value> {
        self.requests.lock().unwrap().clone()
    }

    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

fn read_request(stream: &TcpStream) -> Option<(String, Value)> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut length = 0;
    let mut request_line = String::new();
    reader.read_line(&mut request_line).ok()?;
    let mut head = request_line.clone();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        head.push_str(&line);
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    let query = request_line.split_whitespace().nth(1).and_then(|t| t.split_once('?')).map(|(_, q)| q.to_string());
    Some((head, serde_json::from_slice(&body).unwrap_or_else(|_| json!({ "raw": String::from_utf8_lossy(&body), "query": query }))))
}

fn respond(mut stream: TcpStream, response: Response) {
    std::thread::sleep(response.delay);
    let head = format!(
        "HTTP/1.1 {} X\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        response.status,
        response.content_type,
        response.body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(&response.body);
    let _ = stream.flush();
}

/// One scripted LLM answer.
#[derive(Clone)]
pub enum Reply {
    Text(&'static str),
    /// Words, then a tool call with raw JSON arguments.
    Tool { text: &'static str, name: &'static str, arguments: &'static str },
    /// Not JSON at all.
    Garbage,
}

fn chunk(delta: Value, finish: Option<&str>) -> String {
    format!("data: {}\n\n", json!({ "id": "x", "object": "chat.completion.chunk", "created": 0, "model": "standin", "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }] }))
}

/// An OpenAI-compatible chat-completions endpoint answering `replies` in order (the last
/// one repeats); warm-up requests (`max_tokens: 1`) get an empty answer.
pub fn llm(replies: Vec<Reply>) -> Server {
    llm_with(replies, None)
}

/// [`llm`], and `structured` for every request with a `response_format` (a JSON schema).
pub fn llm_with(replies: Vec<Reply>, structured: Option<&'static str>) -> Server {
    let served = Arc::new(Mutex::new(0usize));
    Server::start(move |_, body| {
        let mut events = String::new();
        if body["max_tokens"] == json!(1) {
            events.push_str(&chunk(json!({ "content": "" }), Some("stop")));
        } else if let (Some(answer), true) = (structured, body.get("response_format").is_some()) {
            events.push_str(&chunk(json!({ "content": answer }), None));
            events.push_str(&chunk(json!({}), Some("stop")));
        } else {
            let mut n = served.lock().unwrap();
            let reply = replies[(*n).min(replies.len() - 1)].clone();
            *n += 1;
            match reply {
                Reply::Text(text) => {
                    for word in text.split_inclusive(' ') {
                        events.push_str(&chunk(json!({ "content": word }), None));
                    }
                    events.push_str(&chunk(json!({}), Some("stop")));
                }
                Reply::Tool { text, name, arguments } => {
                    if !text.is_empty() {
                        events.push_str(&chunk(json!({ "content": text }), None));
                    }
                    events.push_str(&chunk(json!({ "tool_calls": [{ "index": 0, "id": "call_1", "type": "function", "function": { "name": name, "arguments": arguments } }] }), None));
                    events.push_str(&chunk(json!({}), Some("tool_calls")));
                }
                Reply::Garbage => events.push_str("data: {this is not json\n\n"),
            }
        }
        events.push_str("data: [DONE]\n\n");
        Response { status: 200, content_type: "text/event-stream", body: events.into_bytes(), delay: Duration::ZERO }
    })
}
