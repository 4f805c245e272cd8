//! SIP and RTP, the wire protocols of a SIP trunk: what a call's messages and audio look like,
//! with no sockets. The server's endpoint (`server::sip`) owns the sockets and the dialogs.
//!
//! Spoken here (RFC 3261 over UDP and TCP, as a user agent that answers and places INVITEs):
//! requests and responses as text with headers (compact forms too), the SDP offer of an INVITE
//! and our answer (RFC 3264: G.711 μ-law or A-law at 8 kHz, and RFC 4733 telephone-events), RTP
//! packets (RFC 3550) and the DTMF events they carry, and the session timer an INVITE asks for
//! (RFC 4028). Everything a peer sends is bounded and checked: a datagram that is not what it
//! says it is gets an error naming the part. On a stream (TCP) a message ends where its
//! `Content-Length` says ([`framed_length`]).

use std::fmt::Write as _;
use std::net::IpAddr;

/// The largest SIP message read (a UDP datagram, or one message on a TCP stream; an INVITE with
/// SDP is about 1 KiB).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024;
/// Headers one message may carry.
const MAX_HEADERS: usize = 100;
/// G.711 at 8 kHz: the rate of every SIP line here.
pub const RATE: u32 = 8_000;
/// The most audio one RTP packet may carry (a second).
pub const MAX_RTP_PAYLOAD: usize = 8_000;

/// How SIP messages travel between us and a peer (RFC 3261 section 18).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// Datagrams: lost ones are sent again on SIP's timers.
    #[default]
    Udp,
    /// A connection that frames each message by its `Content-Length`; nothing is sent twice
    /// but a 2xx to an INVITE (RFC 3261 13.3.1.4, which holds on any transport).
    Tcp,
}

impl Transport {
    /// The name in a Via header (`SIP/2.0/UDP`).
    pub fn via_name(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
        }
    }

    /// Whether the transport itself delivers what is sent (no retransmissions).
    pub fn reliable(self) -> bool {
        self == Transport::Tcp
    }

    /// The URI parameter a Contact names it by (UDP, the default, by none).
    pub fn uri_param(self) -> &'static str {
        match self {
            Transport::Udp => "",
            Transport::Tcp => ";transport=tcp",
        }
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        })
    }
}

impl std::str::FromStr for Transport {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "udp" => Ok(Transport::Udp),
            "tcp" => Ok(Transport::Tcp),
            other => Err(format!("`{}` is not a SIP transport this server speaks; give udp or tcp", other.escape_default())),
        }
    }
}

/// The length of the first message in `buffer`, read from a stream: its headers up to the blank
/// line, then as many bytes of body as its `Content-Length` says (none when it says nothing,
/// RFC 3261 18.3). `Ok(None)` until all of it has arrived; an error when it cannot be one
/// message of at most [`MAX_MESSAGE_BYTES`] (the connection is then beyond saving: where the
/// next message starts is unknown).
pub fn framed_length(buffer: &[u8]) -> Result<Option<usize>, String> {
    let window = &buffer[..buffer.len().min(MAX_MESSAGE_BYTES)];
    let Some(end) = window.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buffer.len() >= MAX_MESSAGE_BYTES {
            return Err(format!("no end of headers within {MAX_MESSAGE_BYTES} bytes"));
        }
        return Ok(None);
    };
    let head = std::str::from_utf8(&buffer[..end]).map_err(|_| "the headers are not UTF-8 text".to_string())?;
    let mut body = 0usize;
    for line in head.split("\r\n").skip(1) {
        let Some((name, value)) = line.split_once(':') else { continue };
        if full_name(name.trim()) == "content-length" {
            body = value.trim().parse().map_err(|_| format!("Content-Length `{}` is not a number of bytes", truncate(value.trim())))?;
        }
    }
    let total = end + 4 + body.min(MAX_MESSAGE_BYTES);
    if total > MAX_MESSAGE_BYTES {
        return Err(format!("a message of {} bytes with its body; the most is {MAX_MESSAGE_BYTES}", end as u64 + 4 + body as u64));
    }
    Ok((buffer.len() >= total).then_some(total))
}

/// A SIP message's first line.
#[derive(Debug, Clone, PartialEq)]
pub enum StartLine {
    Request { method: String, uri: String },
    Response { code: u16, reason: String },
}

/// A parsed SIP message.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub start: StartLine,
    /// Headers in order, names in their full lowercase form (`v` is `via`).
    headers: Vec<(String, String)>,
    pub body: String,
}

/// The full name of a header given in its compact form (RFC 3261 §7.3.3).
fn full_name(name: &str) -> String {
    let lower = name.to_ascii_lowercase();
    match lower.as_str() {
        "v" => "via",
        "f" => "from",
        "t" => "to",
        "i" => "call-id",
        "m" => "contact",
        "l" => "content-length",
        "c" => "content-type",
        "e" => "content-encoding",
        "k" => "supported",
        "s" => "subject",
        "r" => "refer-to",
        "x" => "session-expires",
        other => return other.to_string(),
    }
    .to_string()
}

/// Parses one datagram; the error names what is wrong.
pub fn parse(datagram: &[u8]) -> Result<Message, String> {
    if datagram.len() > MAX_MESSAGE_BYTES {
        return Err(format!("a {} byte message; the most is {MAX_MESSAGE_BYTES}", datagram.len()));
    }
    let text = std::str::from_utf8(datagram).map_err(|_| "the message is not UTF-8 text".to_string())?;
    let (head, body) = match text.find("\r\n\r\n") {
        Some(at) => (&text[..at], &text[at + 4..]),
        None => match text.find("\n\n") {
            Some(at) => (&text[..at], &text[at + 2..]),
            None => (text.trim_end(), ""),
        },
    };
    let mut lines = head.lines();
    let first = lines.next().unwrap_or_default().trim();
    let start = parse_start(first)?;
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in lines {
        if line.starts_with(' ') || line.starts_with('\t') {
            // A folded header line continues the last one.
            let Some((_, value)) = headers.last_mut() else { return Err("the first header line is a continuation".into()) };
            value.push(' ');
            value.push_str(line.trim());
            continue;
        }
        let (name, value) = line.split_once(':').ok_or_else(|| format!("header line `{}` has no `:`", truncate(line)))?;
        let name = name.trim();
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)) {
            return Err(format!("header name `{}` is not a token", truncate(name)));
        }
        if headers.len() == MAX_HEADERS {
            return Err(format!("more than {MAX_HEADERS} headers"));
        }
        headers.push((full_name(name), value.trim().to_string()));
    }
    let mut message = Message { start, headers, body: String::new() };
    let length = match message.header("content-length") {
        Some(value) => value.parse::<usize>().map_err(|_| format!("Content-Length `{}` is not a number", truncate(value)))?,
        None => body.len(),
    };
    if length > body.len() {
        return Err(format!("Content-Length says {length} bytes; the body has {}", body.len()));
    }
    message.body = body.get(..length).ok_or("Content-Length ends inside a character")?.to_string();
    Ok(message)
}

fn parse_start(line: &str) -> Result<StartLine, String> {
    if let Some(rest) = line.strip_prefix("SIP/2.0 ") {
        let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
        let code = code.parse::<u16>().ok().filter(|c| (100..700).contains(c)).ok_or_else(|| format!("status line `{}` has no status code 100-699", truncate(line)))?;
        return Ok(StartLine::Response { code, reason: reason.to_string() });
    }
    let mut parts = line.split(' ');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(method), Some(uri), Some("SIP/2.0"), None) if !method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase()) && !uri.is_empty() => {
            Ok(StartLine::Request { method: method.to_string(), uri: uri.to_string() })
        }
        _ => Err(format!("`{}` is not a SIP/2.0 request or status line", truncate(line))),
    }
}

fn truncate(text: &str) -> String {
    let cut: String = text.chars().take(60).collect();
    cut.escape_default().to_string()
}

impl Message {
    /// A response's status code; `None` for a request.
    pub fn code(&self) -> Option<u16> {
        match self.start {
            StartLine::Response { code, .. } => Some(code),
            StartLine::Request { .. } => None,
        }
    }

    /// The first value of a header (any spelling, compact forms included).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = full_name(name);
        self.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    /// Every value of a header, in order (several lines, or one line's comma-separated values
    /// are left as given).
    pub fn headers(&self, name: &str) -> impl Iterator<Item = &str> {
        let name = full_name(name);
        self.headers.iter().filter(move |(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    /// The dialog's route set from its Record-Route headers (RFC 3261 12.1): each entry, in
    /// the order the headers list them — the order a callee uses; a caller reverses it.
    pub fn record_route(&self) -> Vec<String> {
        self.headers("record-route").flat_map(split_list).map(str::to_string).collect()
    }

    pub fn method(&self) -> Option<&str> {
        match &self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    /// `CSeq`: its number and method.
    pub fn cseq(&self) -> Option<(u32, &str)> {
        let (number, method) = self.header("cseq")?.split_once(' ')?;
        Some((number.trim().parse().ok()?, method.trim()))
    }

    /// The port of the top `Via`'s sent-by (5060 when it names none): where its sender takes
    /// responses on a new connection once the one the request came on has closed (RFC 3261
    /// 18.2.2). `None` when the Via cannot be read.
    pub fn via_port(&self) -> Option<u16> {
        let via = self.header("via")?.split(',').next()?;
        let sent_by = via.split(';').next()?.split_whitespace().nth(1)?;
        let port = match sent_by.strip_prefix('[') {
            Some(v6) => v6.split_once(']')?.1.strip_prefix(':'),
            None => sent_by.split_once(':').map(|(_, port)| port),
        };
        match port {
            Some(port) => port.parse().ok(),
            None => Some(5060),
        }
    }

    /// The top `Via`'s branch: the transaction a retransmission belongs to.
    pub fn branch(&self) -> Option<&str> {
        param(self.header("via")?, "branch")
    }

    /// The headers a request must carry for a response to reach its sender.
    pub fn check_request(&self) -> Result<(), String> {
        for name in ["via", "from", "to", "call-id", "cseq"] {
            if self.header(name).is_none() {
                return Err(format!("the request has no {name} header"));
            }
        }
        if self.cseq().is_none() {
            return Err(format!("CSeq `{}` is not a number and a method", truncate(self.header("cseq").unwrap_or_default())));
        }
        Ok(())
    }
}

/// A `;name=value` parameter of a header value (outside its `<…>`).
pub fn param<'a>(value: &'a str, name: &str) -> Option<&'a str> {
    let outside = match value.rfind('>') {
        Some(at) => &value[at + 1..],
        None => value,
    };
    outside.split(';').skip(1).find_map(|p| {
        let (key, found) = p.split_once('=').unwrap_or((p, ""));
        key.trim().eq_ignore_ascii_case(name).then(|| found.trim())
    })
}

/// The URI of a name-addr (`"Alice" <sip:alice@host>;tag=1`) or of a bare addr-spec.
pub fn uri_of(value: &str) -> &str {
    match (value.find('<'), value.find('>')) {
        (Some(open), Some(close)) if open < close => &value[open + 1..close],
        _ => value.split(';').next().unwrap_or_default().trim(),
    }
}

/// Whether a proxy's URI says it routes loosely (an `lr` parameter, RFC 3261 19.1.1).
fn routes_loosely(uri: &str) -> bool {
    let without_headers = uri.split('?').next().unwrap_or_default();
    without_headers.split(';').skip(1).any(|param| {
        let name = param.split('=').next().unwrap_or_default().trim();
        name.eq_ignore_ascii_case("lr")
    })
}

/// The URI of a route set's entry: `<uri>` with header parameters after it, or a bare URI
/// taken whole (its `;lr` kept).
fn route_uri(entry: &str) -> &str {
    if entry.contains('<') {
        uri_of(entry)
    } else {
        entry.trim()
    }
}

/// A URI as a Request-URI: without the header part (`?…`), which a Request-URI may not carry
/// (RFC 3261 19.1.5).
fn request_uri_of(uri: &str) -> &str {
    uri.split('?').next().unwrap_or_default()
}

/// The address a SIP URI names as an IP literal and port (5060 when it gives none): where a
/// request to it goes; `None` for a name (this endpoint resolves none) or a `tel:` URI.
pub fn socket_addr_of(uri: &str) -> Option<std::net::SocketAddr> {
    let rest = uri.strip_prefix("sip:")?;
    let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let host = host.split([';', '?']).next().unwrap_or_default();
    if let Ok(address) = host.parse() {
        return Some(address);
    }
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    bare.parse::<IpAddr>().ok().map(|ip| std::net::SocketAddr::new(ip, 5060))
}

/// The user part of a `sip:`/`sips:`/`tel:` URI (the dialled or calling number), without its
/// parameters; `None` when it has none.
pub fn user_of(uri: &str) -> Option<&str> {
    let rest = uri.strip_prefix("sip:").or_else(|| uri.strip_prefix("sips:")).or_else(|| uri.strip_prefix("tel:"))?;
    let user = if uri.starts_with("tel:") { rest } else { rest.split_once('@')?.0 };
    let user = user.split(';').next().unwrap_or_default();
    (!user.is_empty()).then_some(user)
}

/// The entries of a header that lists several (`<sip:a;lr>, <sip:b;lr>`): split at commas
/// outside angle brackets and quotes.
fn split_list(value: &str) -> impl Iterator<Item = &str> {
    let (mut depth, mut quoted, mut start, mut parts) = (0i32, false, 0, Vec::new());
    for (at, c) in value.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '<' if !quoted => depth += 1,
            '>' if !quoted => depth -= 1,
            ',' if !quoted && depth <= 0 => {
                parts.push(&value[start..at]);
                start = at + 1;
            }
            _ => {}
        }
    }
    parts.push(&value[start..]);
    parts.into_iter().map(str::trim).filter(|part| !part.is_empty())
}

/// The option tags we implement: session timers (RFC 4028).
pub const SUPPORTED: &str = "timer";

/// The option tags a request's `Require` names (RFC 3261 8.2.2.3) that we do not implement —
/// every one but `timer`: no reliable provisional responses (`100rel`), say. A request requiring
/// any is refused with 420 and them in `Unsupported`.
pub fn unsupported_requirements(request: &Message) -> Vec<String> {
    request.headers("require").flat_map(split_list).filter(|tag| !tag.eq_ignore_ascii_case("timer")).map(str::to_string).collect()
}

/// Whether a message's `Allow` lists `method`.
pub fn allows(message: &Message, method: &str) -> bool {
    message.headers("allow").flat_map(split_list).any(|m| m.eq_ignore_ascii_case(method))
}

/// Whether a message lists `tag` in its `Supported` or `Require`.
pub fn has_option(message: &Message, tag: &str) -> bool {
    message.headers("supported").chain(message.headers("require")).flat_map(split_list).any(|t| t.eq_ignore_ascii_case(tag))
}

/// The smallest session interval we take (RFC 4028's floor): a shorter one is refused with 422
/// and this in `Min-SE`; a peer's answer naming a shorter one is kept at this.
pub const MIN_SESSION_EXPIRES: u32 = 90;

/// The session interval our INVITE asks for (RFC 4028's recommendation): half an hour.
pub const SESSION_EXPIRES: u32 = 1800;

/// The largest `Min-SE` a 422 may ask of our INVITE before we give up on the call: a day.
pub const MAX_SESSION_EXPIRES: u32 = 86_400;

/// Which side of a transaction refreshes the session (RFC 4028): the one that sent the request
/// or the one that answered it. It names roles in the transaction the header is in, not in the
/// dialog: a refresh's re-INVITE from the callee names the callee `uac`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresher {
    Uac,
    Uas,
}

impl Refresher {
    fn name(self) -> &'static str {
        match self {
            Refresher::Uac => "uac",
            Refresher::Uas => "uas",
        }
    }
}

/// A session timer as one message names it: refreshed every half `interval` (by a re-INVITE or
/// UPDATE), else ended by the other side before it runs out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionTimer {
    /// Seconds.
    pub interval: u32,
    pub refresher: Refresher,
}

/// A session timer as one side of a dialog keeps it, whichever side sent the transaction that
/// set it: its interval, and whether this side refreshes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeptSession {
    /// Seconds.
    pub interval: u32,
    pub ours: bool,
}

impl KeptSession {
    /// The timer `named` in a transaction where this side was `we_are`.
    pub fn named(named: SessionTimer, we_are: Refresher) -> Self {
        KeptSession { interval: named.interval, ours: named.refresher == we_are }
    }

    /// The `Session-Expires` value of a message this side sends as `we_are` of its transaction.
    pub fn header(&self, we_are: Refresher) -> String {
        let refresher = match (self.ours, we_are) {
            (true, side) => side,
            (false, Refresher::Uac) => Refresher::Uas,
            (false, Refresher::Uas) => Refresher::Uac,
        };
        format!("{};refresher={}", self.interval, refresher.name())
    }

    /// When this side acts once the session was last refreshed: when it refreshes, at half the
    /// interval; otherwise it gives up on a session not refreshed a third of the interval or 32
    /// s before it runs out, whichever is less (RFC 4028, section 10).
    pub fn due(&self) -> std::time::Duration {
        let interval = u64::from(self.interval);
        std::time::Duration::from_secs(if self.ours { interval / 2 } else { interval - (interval / 3).min(32) })
    }
}

/// Why an INVITE's session timer is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimerRefusal {
    /// Below [`MIN_SESSION_EXPIRES`]: 422 Session Interval Too Small.
    TooSmall(u32),
    /// A `Session-Expires` that is not `SECONDS[;refresher=uac|uas]`: 400.
    Malformed(String),
}

/// A `Session-Expires` value: its seconds and the refresher it names, if any.
fn session_expires(value: &str) -> Result<(u32, Option<Refresher>), TimerRefusal> {
    let mut parts = value.split(';').map(str::trim);
    let malformed = || TimerRefusal::Malformed(format!("Session-Expires `{}` is not SECONDS[;refresher=uac|uas]", truncate(value)));
    let interval: u32 = parts.next().unwrap_or_default().parse().map_err(|_| malformed())?;
    let mut refresher = None;
    for part in parts {
        let (name, given) = part.split_once('=').unwrap_or((part, ""));
        if name.trim().eq_ignore_ascii_case("refresher") {
            refresher = Some(match given.trim().to_ascii_lowercase().as_str() {
                "uac" => Refresher::Uac,
                "uas" => Refresher::Uas,
                _ => return Err(malformed()),
            });
        }
    }
    Ok((interval, refresher))
}

/// The session timer a request (an INVITE, a refresh's re-INVITE or UPDATE) asks for, as the
/// side answering it grants it (RFC 4028, section 9): none without `Session-Expires`; the
/// interval as asked; the refresher it names, else the sender when it supports timers, else us.
pub fn session_timer(request: &Message) -> Result<Option<SessionTimer>, TimerRefusal> {
    let Some(value) = request.header("session-expires") else { return Ok(None) };
    let (interval, refresher) = session_expires(value)?;
    if interval < MIN_SESSION_EXPIRES {
        return Err(TimerRefusal::TooSmall(interval));
    }
    let refresher = refresher.unwrap_or(if has_option(request, "timer") { Refresher::Uac } else { Refresher::Uas });
    Ok(Some(SessionTimer { interval, refresher }))
}

/// The session timer a 2xx to our INVITE, re-INVITE or UPDATE sets (RFC 4028, section 7.2):
/// none without `Session-Expires` (the timer is off, even mid-call); the refresher it names,
/// else us (an answer must name one); an interval under [`MIN_SESSION_EXPIRES`] kept at it.
pub fn answered_timer(response: &Message) -> Result<Option<SessionTimer>, String> {
    let Some(value) = response.header("session-expires") else { return Ok(None) };
    let (interval, refresher) = session_expires(value).map_err(|refusal| match refusal {
        TimerRefusal::Malformed(problem) => problem,
        TimerRefusal::TooSmall(interval) => format!("Session-Expires {interval}"),
    })?;
    Ok(Some(SessionTimer { interval: interval.max(MIN_SESSION_EXPIRES), refresher: refresher.unwrap_or(Refresher::Uac) }))
}

/// The `Min-SE` a message names (a 422 to our INVITE, the smallest interval its sender takes).
pub fn min_session_expires(message: &Message) -> Option<u32> {
    message.header("min-se").and_then(|value| value.split(';').next()).and_then(|seconds| seconds.trim().parse().ok())
}

/// A response to `request`: its Via, From, Call-ID and CSeq copied, its To with `to_tag`
/// added if it has none, then `extra` headers and the body.
pub fn response(request: &Message, code: u16, reason: &str, to_tag: Option<&str>, extra: &[(&str, &str)], body: Option<(&str, &str)>) -> String {
    let mut out = format!("SIP/2.0 {code} {reason}\r\n");
    for via in request.headers("via") {
        let _ = write!(out, "Via: {via}\r\n");
    }
    // The proxies that record-route a dialog see its responses name them (RFC 3261 12.1.1).
    for route in request.headers("record-route") {
        let _ = write!(out, "Record-Route: {route}\r\n");
    }
    let to = request.header("to").unwrap_or_default();
    let to = match to_tag {
        Some(tag) if param(to, "tag").is_none() => format!("{to};tag={tag}"),
        _ => to.to_string(),
    };
    let _ = write!(out, "From: {}\r\nTo: {to}\r\nCall-ID: {}\r\nCSeq: {}\r\n", request.header("from").unwrap_or_default(), request.header("call-id").unwrap_or_default(), request.header("cseq").unwrap_or_default());
    finish(out, extra, body)
}

/// Headers common to what we send, then the body with its length.
fn finish(mut out: String, extra: &[(&str, &str)], body: Option<(&str, &str)>) -> String {
    for (name, value) in extra {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    match body {
        Some((content_type, body)) => {
            let _ = write!(out, "Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        }
        None => out.push_str("Content-Length: 0\r\n\r\n"),
    }
    out
}

/// A request within a dialog we are in (BYE, REFER): `from` is our side of it (with our tag),
/// `to` the peer's (with theirs), `target` the peer's Contact, `route` the dialog's route set
/// (the proxies that record-routed it). A route set whose first proxy routes loosely (`;lr`)
/// goes in Route headers before the target; one whose first proxy is a strict router (RFC 2543)
/// takes that proxy's URI as the Request-URI, the rest of the set and then the target as
/// Route headers (RFC 3261, section 12.2.1.1).
pub struct InDialog<'a> {
    pub method: &'a str,
    pub target: &'a str,
    pub route: &'a [String],
    /// The Via's transport and our `host:port` (`UDP 192.0.2.1:5060`).
    pub via: &'a str,
    pub branch: &'a str,
    pub from: &'a str,
    pub to: &'a str,
    pub call_id: &'a str,
    pub cseq: u32,
}

impl InDialog<'_> {
    pub fn render(&self, extra: &[(&str, &str)]) -> String {
        self.render_with(extra, None)
    }

    /// The request with a body (`Content-Type`, body): a re-INVITE's SDP.
    pub fn render_with(&self, extra: &[(&str, &str)], body: Option<(&str, &str)>) -> String {
        let strict = self.route.first().filter(|first| !routes_loosely(route_uri(first)));
        let request_uri = match strict {
            Some(first) => request_uri_of(route_uri(first)),
            None => self.target,
        };
        let mut out = format!("{} {} SIP/2.0\r\n", self.method, request_uri);
        let _ = write!(
            out,
            "Via: SIP/2.0/{};branch={};rport\r\nMax-Forwards: 70\r\n",
            self.via, self.branch
        );
        for route in &self.route[strict.is_some() as usize..] {
            let _ = write!(out, "Route: {route}\r\n");
        }
        if strict.is_some() {
            let _ = write!(out, "Route: <{}>\r\n", self.target);
        }
        let _ = write!(out, "From: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {} {}\r\n", self.from, self.to, self.call_id, self.cseq, self.method);
        finish(out, extra, body)
    }
}

/// A digest challenge (RFC 8760/2617: `WWW-Authenticate` or `Proxy-Authenticate`), MD5 only.
#[derive(Debug, Clone, PartialEq)]
pub struct Challenge {
    pub realm: String,
    pub nonce: String,
    pub opaque: Option<String>,
    /// The server offers `qop=auth`.
    pub qop_auth: bool,
}

/// Reads a digest challenge; the error says what cannot be answered.
pub fn challenge(header: &str) -> Result<Challenge, String> {
    let rest = header.trim().strip_prefix("Digest").or_else(|| header.trim().strip_prefix("digest")).ok_or_else(|| format!("`{}` is not a Digest challenge", truncate(header)))?;
    let mut fields: Vec<(String, String)> = Vec::new();
    let mut text = rest.trim();
    while !text.is_empty() {
        let (name, after) = text.split_once('=').ok_or_else(|| format!("challenge parameter `{}` has no value", truncate(text)))?;
        let after = after.trim_start();
        let (value, remaining) = match after.strip_prefix('"') {
            Some(quoted) => {
                let end = quoted.find('"').ok_or("a quoted challenge value is not closed")?;
                (&quoted[..end], &quoted[end + 1..])
            }
            None => after.split_once(',').unwrap_or((after, "")),
        };
        fields.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        text = remaining.trim_start().trim_start_matches(',').trim_start();
    }
    let field = |name: &str| fields.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    if let Some(algorithm) = field("algorithm") {
        if !algorithm.eq_ignore_ascii_case("MD5") {
            return Err(format!("the challenge asks for algorithm {}; only MD5 is spoken", truncate(&algorithm)));
        }
    }
    Ok(Challenge {
        realm: field("realm").ok_or("the challenge has no realm")?,
        nonce: field("nonce").ok_or("the challenge has no nonce")?,
        opaque: field("opaque"),
        qop_auth: field("qop").is_some_and(|q| q.split(',').any(|q| q.trim() == "auth")),
    })
}

fn md5_hex(text: &str) -> String {
    hex::encode(openssl::hash::hash(openssl::hash::MessageDigest::md5(), text.as_bytes()).map(|d| d.to_vec()).unwrap_or_default())
}

/// The `Authorization` (or `Proxy-Authorization`) value answering `challenge` for `method` on
/// `uri`; `cnonce` is a fresh random string.
pub fn digest(challenge: &Challenge, user: &str, password: &str, method: &str, uri: &str, cnonce: &str) -> String {
    let ha1 = md5_hex(&format!("{user}:{}:{password}", challenge.realm));
    let ha2 = md5_hex(&format!("{method}:{uri}"));
    let mut value = format!("Digest username=\"{user}\", realm=\"{}\", nonce=\"{}\", uri=\"{uri}\", algorithm=MD5", challenge.realm, challenge.nonce);
    if challenge.qop_auth {
        let response = md5_hex(&format!("{ha1}:{}:00000001:{cnonce}:auth:{ha2}", challenge.nonce));
        let _ = write!(value, ", response=\"{response}\", qop=auth, nc=00000001, cnonce=\"{cnonce}\"");
    } else {
        let response = md5_hex(&format!("{ha1}:{}:{ha2}", challenge.nonce));
        let _ = write!(value, ", response=\"{response}\"");
    }
    if let Some(opaque) = &challenge.opaque {
        let _ = write!(value, ", opaque=\"{opaque}\"");
    }
    value
}

/// The G.711 codecs a SIP line speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// μ-law, static payload type 0.
    Pcmu,
    /// A-law, static payload type 8.
    Pcma,
}

impl Codec {
    pub fn payload_type(self) -> u8 {
        match self {
            Codec::Pcmu => 0,
            Codec::Pcma => 8,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
        }
    }

    pub fn decode(self, bytes: &[u8]) -> Vec<f32> {
        match self {
            Codec::Pcmu => crate::audio::g711::decode_mulaw(bytes),
            Codec::Pcma => crate::audio::g711::decode_alaw(bytes),
        }
    }

    pub fn encode(self, samples: &[f32]) -> Vec<u8> {
        match self {
            Codec::Pcmu => crate::audio::g711::encode_mulaw(samples),
            Codec::Pcma => crate::audio::g711::encode_alaw(samples),
        }
    }
}

/// What an SDP offer asks for, as far as this line needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Offer {
    /// Where the peer wants our audio.
    pub address: IpAddr,
    pub port: u16,
    /// The codec chosen from the offer's, in its order of preference.
    pub codec: Codec,
    /// The payload type the peer gave RFC 4733 telephone-events, if it offered them.
    pub telephone_event: Option<u8>,
    /// Which ways the peer's audio stream flows, seen from the peer (`a=sendrecv` when unsaid).
    pub direction: Direction,
}

impl Offer {
    /// The peer holds the call or will not send (`c=0.0.0.0`, `a=sendonly`, `recvonly` or
    /// `inactive`): its silence on RTP is no sign it is gone.
    pub fn held(&self) -> bool {
        self.address.is_unspecified() || self.direction != Direction::SendRecv
    }

    /// The peer takes our audio: it named an address and did not say `sendonly` or `inactive`.
    /// (RTP to 0.0.0.0 would reach this host itself.)
    pub fn receives(&self) -> bool {
        !self.address.is_unspecified() && matches!(self.direction, Direction::SendRecv | Direction::RecvOnly)
    }
}

/// An SDP media stream's direction attribute (RFC 3264, section 5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Direction {
    #[default]
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    fn parse(value: &str) -> Option<Direction> {
        Some(match value {
            "sendrecv" => Direction::SendRecv,
            "sendonly" => Direction::SendOnly,
            "recvonly" => Direction::RecvOnly,
            "inactive" => Direction::Inactive,
            _ => return None,
        })
    }

    fn attribute(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    /// The direction an answer gives to an offer of this one: a peer that only sends is only
    /// received (RFC 3264, section 6.1).
    pub fn answered(self) -> Direction {
        match self {
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            same => same,
        }
    }

    /// This direction without our receiving: what we say while we hold the call (RFC 3264,
    /// section 8.4: `sendrecv` held is `sendonly`, `recvonly` held is `inactive`).
    pub fn holding(self) -> Direction {
        match self {
            Direction::SendRecv | Direction::SendOnly => Direction::SendOnly,
            Direction::RecvOnly | Direction::Inactive => Direction::Inactive,
        }
    }
}

/// Reads the offer's first audio stream and chooses a codec; the error is why the offer
/// cannot be answered (sent back as 488).
pub fn parse_offer(sdp: &str) -> Result<Offer, String> {
    parse_offer_preferring(sdp, None)
}

/// As [`parse_offer`], choosing `prefer` when the offer lists it (a re-offer in a call that
/// already speaks a codec).
pub fn parse_offer_preferring(sdp: &str, prefer: Option<Codec>) -> Result<Offer, String> {
    let mut session_address: Option<IpAddr> = None;
    let mut media_address: Option<IpAddr> = None;
    let mut audio: Option<(u16, Vec<u8>)> = None;
    let mut rtpmap: Vec<(u8, String)> = Vec::new();
    let mut in_audio = false;
    let mut direction = Direction::SendRecv;
    for line in sdp.lines().map(str::trim) {
        let Some((kind, value)) = line.split_once('=') else { continue };
        match kind {
            "c" => {
                let address = value.split(' ').nth(2).ok_or_else(|| format!("c=`{}` names no address", truncate(value)))?;
                let address: IpAddr = address.split('/').next().unwrap_or_default().parse().map_err(|_| format!("c=`{}`: `{}` is not an IP address", truncate(value), truncate(address)))?;
                if audio.is_some() && in_audio {
                    media_address = Some(address);
                } else if audio.is_none() {
                    session_address = Some(address);
                }
            }
            "m" => {
                in_audio = false;
                let mut parts = value.split(' ');
                if parts.next() == Some("audio") && audio.is_none() {
                    let port = parts.next().and_then(|p| p.split('/').next()?.parse::<u16>().ok()).ok_or_else(|| format!("m=`{}` has no port", truncate(value)))?;
                    let profile = parts.next().unwrap_or_default();
                    if profile != "RTP/AVP" {
                        return Err(format!("the audio stream's profile is `{}`; only RTP/AVP (plain RTP) is spoken", truncate(profile)));
                    }
                    let formats = parts.filter_map(|p| p.parse::<u8>().ok()).collect();
                    audio = Some((port, formats));
                    in_audio = true;
                }
            }
            // A session-wide direction, or the audio stream's own (which wins).
            "a" if in_audio || audio.is_none() => match Direction::parse(value) {
                Some(said) => direction = said,
                None if in_audio => {
                    if let Some((pt, name)) = value.strip_prefix("rtpmap:").and_then(|map| map.split_once(' ')) {
                        if let Ok(pt) = pt.parse::<u8>() {
                            rtpmap.push((pt, name.to_ascii_lowercase()));
                        }
                    }
                }
                None => {}
            },
            _ => {}
        }
    }
    let (port, formats) = audio.ok_or("the offer has no audio stream (m=audio)")?;
    let address = media_address.or(session_address).ok_or("the offer names no connection address (c=)")?;
    let named = |pt: u8| rtpmap.iter().find(|(p, _)| *p == pt).map(|(_, n)| n.as_str());
    let spoken: Vec<Codec> = formats
        .iter()
        .filter_map(|&pt| match (pt, named(pt)) {
            (0, None) => Some(Codec::Pcmu),
            (8, None) => Some(Codec::Pcma),
            (_, Some(name)) if name.starts_with("pcmu/8000") => (pt == 0).then_some(Codec::Pcmu),
            (_, Some(name)) if name.starts_with("pcma/8000") => (pt == 8).then_some(Codec::Pcma),
            _ => None,
        })
        .collect();
    let codec = prefer
        .filter(|codec| spoken.contains(codec))
        .or_else(|| spoken.first().copied())
        .ok_or_else(|| format!("the offer's audio formats {formats:?} include neither PCMU (0) nor PCMA (8) at 8000 Hz"))?;
    let telephone_event = formats.iter().copied().find(|&pt| named(pt).is_some_and(|n| n.starts_with("telephone-event/8000")));
    Ok(Offer { address, port, codec, telephone_event, direction })
}

/// Our SDP answer: audio from `address:port` in `codec`, with telephone-events if offered,
/// in the direction that mirrors the offer's (without our receiving while we hold the call,
/// `holding`). `version` is the o= line's: an answer that
/// differs from the one before it in the dialog counts it up (RFC 3264, section 8).
pub fn answer(address: IpAddr, port: u16, offer: &Offer, session: u64, version: u64, holding: bool) -> String {
    let direction = offer.direction.answered();
    chosen(address, port, offer, (session, version), if holding { direction.holding() } else { direction })
}

/// Our offer within a call (a re-INVITE): the codec and telephone-events the call already
/// speaks, `sendonly` while we hold it, `sendrecv` otherwise.
pub fn reoffer(address: IpAddr, port: u16, call: &Offer, session: u64, version: u64, holding: bool) -> String {
    chosen(address, port, call, (session, version), if holding { Direction::SendOnly } else { Direction::SendRecv })
}

/// A session in the codec (and telephone-event type) the call agreed on.
fn chosen(address: IpAddr, port: u16, call: &Offer, session: (u64, u64), direction: Direction) -> String {
    let mut formats = vec![(call.codec.payload_type(), format!("{}/8000", call.codec.name()))];
    formats.extend(call.telephone_event.map(|event| (event, "telephone-event/8000".to_string())));
    sdp(address, session, port, &formats, direction)
}

/// Our SDP offer for a call we place: audio at `address:port` in PCMU or PCMA, and keys as
/// telephone-events (payload type 101).
pub fn offer(address: IpAddr, port: u16, session: u64) -> String {
    sdp(address, (session, session), port, &[(0, "PCMU/8000".into()), (8, "PCMA/8000".into()), (101, "telephone-event/8000".into())], Direction::SendRecv)
}

/// A session (its id and version) with one audio stream at `address:port` in these payload
/// types (and names), flowing `direction`.
fn sdp(address: IpAddr, (session, version): (u64, u64), port: u16, formats: &[(u8, String)], direction: Direction) -> String {
    let family = if address.is_ipv4() { "IP4" } else { "IP6" };
    let types: Vec<String> = formats.iter().map(|(pt, _)| pt.to_string()).collect();
    let mut sdp = format!("v=0\r\no=ringline {session} {version} IN {family} {address}\r\ns=ringline\r\nc=IN {family} {address}\r\nt=0 0\r\nm=audio {port} RTP/AVP {}\r\n", types.join(" "));
    for (pt, name) in formats {
        let _ = write!(sdp, "a=rtpmap:{pt} {name}\r\n");
        if name.starts_with("telephone-event") {
            let _ = write!(sdp, "a=fmtp:{pt} 0-16\r\n");
        }
    }
    let _ = write!(sdp, "a=ptime:20\r\na={}\r\n", direction.attribute());
    sdp
}

/// One RTP packet (RFC 3550), borrowed from its datagram.
#[derive(Debug, Clone, PartialEq)]
pub struct Rtp<'a> {
    pub marker: bool,
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    pub payload: &'a [u8],
}

/// Parses an RTP packet: version 2, contributing sources, a header extension and padding
/// skipped; the error names what is wrong.
pub fn parse_rtp(bytes: &[u8]) -> Result<Rtp<'_>, String> {
    if bytes.len() < 12 {
        return Err(format!("a {} byte packet is shorter than an RTP header (12)", bytes.len()));
    }
    if bytes[0] >> 6 != 2 {
        return Err(format!("RTP version {} (only 2 exists)", bytes[0] >> 6));
    }
    let padding = bytes[0] & 0x20 != 0;
    let extension = bytes[0] & 0x10 != 0;
    let csrcs = (bytes[0] & 0x0f) as usize;
    let mut start = 12 + 4 * csrcs;
    if extension {
        let words = bytes.get(start + 2..start + 4).ok_or("the header extension is cut off")?;
        start += 4 + 4 * u16::from_be_bytes([words[0], words[1]]) as usize;
    }
    let mut end = bytes.len();
    if padding {
        let pad = *bytes.last().unwrap_or(&0) as usize;
        end = end.checked_sub(pad).ok_or("the padding is longer than the packet")?;
    }
    let payload = bytes.get(start..end).ok_or("the header runs past the packet")?;
    if payload.len() > MAX_RTP_PAYLOAD {
        return Err(format!("a {} byte payload; the most is {MAX_RTP_PAYLOAD}", payload.len()));
    }
    Ok(Rtp {
        marker: bytes[1] & 0x80 != 0,
        payload_type: bytes[1] & 0x7f,
        sequence: u16::from_be_bytes([bytes[2], bytes[3]]),
        timestamp: u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
        ssrc: u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]),
        payload,
    })
}

/// An RTP packet with no contributing sources, extension or padding.
pub fn rtp_packet(marker: bool, payload_type: u8, sequence: u16, timestamp: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    let mut packet = Vec::with_capacity(12 + payload.len());
    packet.push(0x80);
    packet.push(((marker as u8) << 7) | (payload_type & 0x7f));
    packet.extend_from_slice(&sequence.to_be_bytes());
    packet.extend_from_slice(&timestamp.to_be_bytes());
    packet.extend_from_slice(&ssrc.to_be_bytes());
    packet.extend_from_slice(payload);
    packet
}

/// An RFC 4733 telephone-event: the key, and whether this packet ends it.
pub fn telephone_event(payload: &[u8]) -> Option<(char, bool)> {
    if payload.len() < 4 {
        return None;
    }
    let key = match payload[0] {
        digit @ 0..=9 => (b'0' + digit) as char,
        10 => '*',
        11 => '#',
        letter @ 12..=15 => (b'A' + letter - 12) as char,
        _ => return None,
    };
    Some((key, payload[1] & 0x80 != 0))
}

/// The payload of an RFC 4733 telephone-event for `key` (0-9, *, #, A-D): `duration` in
/// samples so far, `end` on the packets that end it; the volume −10 dBm0.
pub fn telephone_event_payload(key: char, end: bool, duration: u16) -> Option<[u8; 4]> {
    let event = match key.to_ascii_uppercase() {
        digit @ '0'..='9' => digit as u8 - b'0',
        '*' => 10,
        '#' => 11,
        letter @ 'A'..='D' => letter as u8 - b'A' + 12,
        _ => return None,
    };
    let [high, low] = duration.to_be_bytes();
    Some([event, if end { 0x80 } else { 0 } | 10, high, low])
}

/// The key of a SIP INFO's `application/dtmf-relay` body (`Signal=5`).
pub fn dtmf_relay(body: &str) -> Option<char> {
    let signal = body.lines().find_map(|l| {
        let (name, value) = l.split_once('=')?;
        name.trim().eq_ignore_ascii_case("signal").then(|| value.trim())
    })?;
    let mut chars = signal.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) if c.is_ascii_digit() || matches!(c, '*' | '#' | 'A'..='D') => Some(c),
        (Some(c @ 'a'..='d'), None) => Some(c.to_ascii_uppercase()),
        _ => match signal {
            "10" => Some('*'),
            "11" => Some('#'),
            _ => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &str = "INVITE sip:+14155552671@127.0.0.1:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-1;rport\r\n\
f: \"Caller\" <sip:+14155552672@127.0.0.1:5070>;tag=abc\r\n\
To: <sip:+14155552671@127.0.0.1:5060>\r\n\
Call-ID: 1-2@127.0.0.1\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:caller@127.0.0.1:5070>\r\n\
Content-Type: application/sdp\r\n\
l: 145\r\n\r\n\
v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 8 0 101\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\n";

    #[test]
    fn an_invite_parses_with_compact_headers_and_its_offer_is_answered() {
        let message = parse(INVITE.as_bytes()).unwrap();
        assert_eq!(message.method(), Some("INVITE"));
        assert!(message.check_request().is_ok());
        assert_eq!(message.cseq(), Some((1, "INVITE")));
        assert_eq!(message.branch(), Some("z9hG4bK-1"));
        assert_eq!(param(message.header("from").unwrap(), "tag"), Some("abc"));
        assert_eq!(user_of(uri_of(message.header("From").unwrap())), Some("+14155552672"));
        let StartLine::Request { uri, .. } = &message.start else { panic!("a request") };
        assert_eq!(user_of(uri), Some("+14155552671"));
        assert_eq!(user_of("tel:+14155552671;phone-context=x"), Some("+14155552671"));
        assert_eq!(message.body.len(), 145);

        let offer = parse_offer(&message.body).unwrap();
        assert_eq!(offer, Offer { address: "127.0.0.1".parse().unwrap(), port: 6000, codec: Codec::Pcma, telephone_event: Some(101), direction: Direction::SendRecv }, "the offer's first G.711 codec");
        let sdp = answer("127.0.0.1".parse().unwrap(), 7000, &offer, 42, 43, false);
        assert!(sdp.contains("m=audio 7000 RTP/AVP 8 101\r\n") && sdp.contains("a=rtpmap:8 PCMA/8000"), "{sdp}");
        assert!(sdp.contains("o=ringline 42 43 IN IP4 127.0.0.1\r\n") && sdp.contains("a=sendrecv\r\n"), "{sdp}");

        let ok = response(&message, 200, "OK", Some("t1"), &[("Contact", "<sip:ringline@127.0.0.1:5060>")], Some(("application/sdp", &sdp)));
        let reply = parse(ok.as_bytes()).unwrap();
        assert_eq!(reply.start, StartLine::Response { code: 200, reason: "OK".into() });
        assert_eq!(param(reply.header("to").unwrap(), "tag"), Some("t1"));
        assert_eq!((reply.header("call-id"), reply.header("cseq")), (Some("1-2@127.0.0.1"), Some("1 INVITE")));
        assert_eq!(parse_offer(&reply.body).unwrap().port, 7000, "the answer reads back as SDP");
    }

    #[test]
    fn malformed_messages_and_offers_are_named() {
        for (bad, says) in [
            ("HELLO\r\n\r\n", "not a SIP/2.0"),
            ("INVITE sip:x SIP/3.0\r\n\r\n", "not a SIP/2.0"),
            ("SIP/2.0 99 Odd\r\n\r\n", "status code"),
            ("OPTIONS sip:x SIP/2.0\r\nNoColon\r\n\r\n", "has no `:`"),
            ("OPTIONS sip:x SIP/2.0\r\nContent-Length: 50\r\n\r\nshort", "Content-Length says 50"),
            ("OPTIONS sip:x SIP/2.0\r\nContent-Length: many\r\n\r\n", "not a number"),
        ] {
            let error = parse(bad.as_bytes()).unwrap_err();
            assert!(error.contains(says), "{bad:?}: {error}");
        }
        assert!(parse(&[0xff, 0xfe]).unwrap_err().contains("UTF-8"));
        assert!(parse(&vec![b'a'; MAX_MESSAGE_BYTES + 1]).unwrap_err().contains("the most is"));
        let many = format!("OPTIONS sip:x SIP/2.0\r\n{}\r\n", "X-A: 1\r\n".repeat(MAX_HEADERS + 1));
        assert!(parse(many.as_bytes()).unwrap_err().contains("headers"));
        let missing = parse(b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/UDP h\r\n\r\n").unwrap();
        assert!(missing.check_request().unwrap_err().contains("from"));

        for (bad, says) in [
            ("v=0\r\nc=IN IP4 127.0.0.1\r\n", "no audio stream"),
            ("v=0\r\nm=audio 5000 RTP/AVP 0\r\n", "no connection address"),
            ("v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 5000 RTP/AVP 9 18\r\n", "neither PCMU"),
            ("v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 5000 RTP/SAVP 0\r\n", "only RTP/AVP"),
            ("v=0\r\nc=IN IP4 not-an-ip\r\nm=audio 5000 RTP/AVP 0\r\n", "not an IP address"),
        ] {
            let error = parse_offer(bad).unwrap_err();
            assert!(error.contains(says), "{bad:?}: {error}");
        }
    }

    #[test]
    fn rtp_packets_round_trip_and_bad_ones_are_refused() {
        let packet = rtp_packet(true, 0, 65535, 160, 7, &[0xff; 160]);
        let rtp = parse_rtp(&packet).unwrap();
        assert_eq!((rtp.marker, rtp.payload_type, rtp.sequence, rtp.timestamp, rtp.ssrc, rtp.payload.len()), (true, 0, 65535, 160, 7, 160));

        // Two contributing sources, an extension of one word and two bytes of padding.
        let mut odd = vec![0x80 | 0x20 | 0x10 | 2, 8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9];
        odd.extend_from_slice(&[0; 8]);
        odd.extend_from_slice(&[0xbe, 0xde, 0, 1, 0, 0, 0, 0]);
        odd.extend_from_slice(&[1, 2, 3, 0, 2]);
        assert_eq!(parse_rtp(&odd).unwrap().payload, &[1, 2, 3]);

        assert!(parse_rtp(&[0x80; 5]).unwrap_err().contains("shorter"));
        assert!(parse_rtp(&[0x40; 12]).unwrap_err().contains("version 1"));
        assert!(parse_rtp(&[0x8f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).unwrap_err().contains("runs past"));
        let mut padded = vec![0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 200];
        padded[12] = 200;
        assert!(parse_rtp(&padded).unwrap_err().contains("padding"));
    }

    #[test]
    fn keys_arrive_as_telephone_events_or_in_info() {
        assert_eq!(telephone_event(&[5, 0x0a, 0, 160]), Some(('5', false)));
        assert_eq!(telephone_event(&[11, 0x8a, 3, 32]), Some(('#', true)));
        assert_eq!(telephone_event(&[16, 0, 0, 0]), None, "flash is no key");
        assert_eq!(telephone_event(&[1, 2]), None);
        assert_eq!(dtmf_relay("Signal=5\r\nDuration=160\r\n"), Some('5'));
        assert_eq!(dtmf_relay("Signal= 11\r\n"), Some('#'));
        assert_eq!(dtmf_relay("Signal=55\r\n"), None);
    }

    #[test]
    fn no_cut_or_changed_byte_of_a_message_or_packet_panics() {
        // Every prefix of an INVITE, and the INVITE with each byte replaced by a few odd ones:
        // an error or a message, never a panic (slicing at a character's middle, lengths that
        // overrun).
        let (head, body) = INVITE.split_once("\r\n\r\n").unwrap();
        let invite = format!("{}\r\n\r\n{body}", head.replace("127.0.0.1", "ü.example"));
        assert!(parse(invite.as_bytes()).is_ok_and(|m| parse_offer(&m.body).is_ok()), "the changed INVITE still parses whole");
        let bytes = invite.as_bytes();
        for end in 0..=bytes.len() {
            if let Ok(message) = parse(&bytes[..end]) {
                let _ = (message.check_request(), message.cseq(), message.branch(), parse_offer(&message.body));
            }
        }
        for at in 0..bytes.len() {
            for odd in [b' ', b':', b';', b'<', b'>', b'=', b'\n', 0xc3, 0xff, b'0'] {
                let mut changed = bytes.to_vec();
                changed[at] = odd;
                if let Ok(message) = parse(&changed) {
                    let from = message.header("from").unwrap_or_default();
                    let _ = (message.check_request(), message.cseq(), message.branch(), user_of(uri_of(from)), param(from, "tag"), parse_offer(&message.body));
                }
            }
        }
        let packet = rtp_packet(false, 101, 1, 2, 3, &[5, 0x8a, 0, 160]);
        for end in 0..=packet.len() {
            let _ = parse_rtp(&packet[..end]).map(|rtp| telephone_event(rtp.payload));
        }
        for first in 0..=255u8 {
            let mut changed = packet.clone();
            changed[0] = first;
            let _ = parse_rtp(&changed);
        }
    }

    #[test]
    fn a_digest_challenge_is_answered_as_rfc_2617_computes_it() {
        // RFC 2617 §3.5's example.
        let header = r#"Digest realm="testrealm@host.com", qop="auth,auth-int", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41""#;
        let parsed = challenge(header).unwrap();
        assert_eq!((parsed.realm.as_str(), parsed.qop_auth, parsed.opaque.as_deref()), ("testrealm@host.com", true, Some("5ccc069c403ebaf9f0171e9517f40e41")));
        let answer = digest(&parsed, "Mufasa", "Circle Of Life", "GET", "/dir/index.html", "0a4f113b");
        assert!(answer.contains(r#"response="6629fae49393a05397450978507c4ef1""#), "{answer}");
        assert!(answer.contains("nc=00000001") && answer.contains(r#"opaque="5ccc069c403ebaf9f0171e9517f40e41""#), "{answer}");

        let plain = challenge("Digest realm=trunk, nonce=abc").unwrap();
        assert!(!plain.qop_auth && digest(&plain, "u", "p", "INVITE", "sip:+1@h", "c").contains("response="));
        assert!(challenge("Basic realm=x").unwrap_err().contains("not a Digest"));
        assert!(challenge(r#"Digest realm="x", nonce="y", algorithm=SHA-256"#).unwrap_err().contains("only MD5"));
        assert!(challenge(r#"Digest nonce="y""#).unwrap_err().contains("no realm"));
        assert!(challenge(r#"Digest realm="x"#).is_err());
    }

    #[test]
    fn a_re_offer_keeps_the_calls_codec_when_it_lists_it() {
        let sdp = "v=0\r\nc=IN IP4 192.0.2.9\r\nm=audio 7002 RTP/AVP 0 8\r\n";
        assert_eq!(parse_offer(sdp).unwrap().codec, Codec::Pcmu);
        assert_eq!(parse_offer_preferring(sdp, Some(Codec::Pcma)).unwrap().codec, Codec::Pcma);
        // A hold: the session's or the stream's direction, or the old-style null address.
        assert!(!parse_offer(sdp).unwrap().held());
        assert!(parse_offer("v=0\r\nc=IN IP4 192.0.2.9\r\na=sendonly\r\nm=audio 7002 RTP/AVP 0\r\n").unwrap().held());
        assert!(parse_offer("v=0\r\nc=IN IP4 192.0.2.9\r\nm=audio 7002 RTP/AVP 0\r\na=inactive\r\n").unwrap().held());
        assert!(!parse_offer("v=0\r\nc=IN IP4 192.0.2.9\r\na=sendonly\r\nm=audio 7002 RTP/AVP 0\r\na=sendrecv\r\n").unwrap().held(), "the stream's own wins");
        assert!(parse_offer("v=0\r\nc=IN IP4 0.0.0.0\r\nm=audio 7002 RTP/AVP 0\r\n").unwrap().held());
        let pcmu_only = "v=0\r\nc=IN IP4 192.0.2.9\r\nm=audio 7002 RTP/AVP 0\r\n";
        assert_eq!(parse_offer_preferring(pcmu_only, Some(Codec::Pcma)).unwrap().codec, Codec::Pcmu, "the caller sees it differs");
    }

    #[test]
    fn our_offer_reads_back_as_an_offer() {
        let offer = parse_offer(&offer("127.0.0.1".parse().unwrap(), 7000, 1)).unwrap();
        assert_eq!(offer, Offer { address: "127.0.0.1".parse().unwrap(), port: 7000, codec: Codec::Pcmu, telephone_event: Some(101), direction: Direction::SendRecv });
    }

    #[test]
    fn an_answer_mirrors_the_offers_direction_and_audio_goes_only_where_it_is_taken() {
        let address: IpAddr = "192.0.2.1".parse().unwrap();
        for (offered, answered, receives) in [("sendrecv", "sendrecv", true), ("sendonly", "recvonly", false), ("recvonly", "sendonly", true), ("inactive", "inactive", false)] {
            let offer = parse_offer(&format!("v=0\r\nc=IN IP4 192.0.2.9\r\nm=audio 7002 RTP/AVP 0\r\na={offered}\r\n")).unwrap();
            assert_eq!(offer.receives(), receives, "{offered}");
            let sdp = answer(address, 7000, &offer, 5, 6, false);
            assert!(sdp.contains(&format!("a={answered}\r\n")) && sdp.matches("a=").count() == 3, "{offered}: {sdp}");
            assert_eq!(parse_offer(&sdp).unwrap().direction, Direction::parse(answered).unwrap(), "{offered}: the answer reads back");
        }
        // While we hold the call we take no audio, whatever the peer offers.
        for (offered, answered) in [("sendrecv", "sendonly"), ("sendonly", "inactive"), ("recvonly", "sendonly"), ("inactive", "inactive")] {
            let offer = parse_offer(&format!("v=0\r\nc=IN IP4 192.0.2.9\r\nm=audio 7002 RTP/AVP 0\r\na={offered}\r\n")).unwrap();
            let sdp = answer(address, 7000, &offer, 5, 6, true);
            assert!(sdp.contains(&format!("a={answered}\r\n")), "holding, {offered}: {sdp}");
        }
        let old_style = parse_offer("v=0\r\nc=IN IP4 0.0.0.0\r\nm=audio 7002 RTP/AVP 0\r\n").unwrap();
        assert!(old_style.held() && !old_style.receives(), "no audio to 0.0.0.0");
    }

    #[test]
    fn a_reoffer_keeps_the_calls_codec_and_says_whether_we_hold() {
        let call = parse_offer("v=0\r\nc=IN IP4 192.0.2.9\r\nm=audio 7002 RTP/AVP 8 0 101\r\na=rtpmap:101 telephone-event/8000\r\na=recvonly\r\n").unwrap();
        let held = reoffer("192.0.2.1".parse().unwrap(), 7000, &call, 5, 7, true);
        assert!(held.contains("o=ringline 5 7 IN IP4 192.0.2.1\r\n") && held.contains("m=audio 7000 RTP/AVP 8 101\r\n"), "{held}");
        assert_eq!(parse_offer(&held).unwrap().direction, Direction::SendOnly, "{held}");
        let resumed = reoffer("192.0.2.1".parse().unwrap(), 7000, &call, 5, 8, false);
        assert_eq!(parse_offer(&resumed).unwrap().direction, Direction::SendRecv, "{resumed}");
    }

    #[test]
    fn an_in_dialog_request_reads_back_with_its_route() {
        let route = ["<sip:edge.example;lr>".to_string(), "<sip:10.0.0.2:5060;lr;ftag=x>".to_string()];
        let bye = InDialog { method: "BYE", target: "sip:caller@127.0.0.1:5070", route: &route, via: "UDP 127.0.0.1:5060", branch: "z9hG4bK-x", from: "<sip:+1@h>;tag=t1", to: "<sip:+2@h>;tag=abc", call_id: "c1", cseq: 1 }.render(&[]);
        let message = parse(bye.as_bytes()).unwrap();
        assert_eq!(message.method(), Some("BYE"));
        assert!(message.check_request().is_ok());
        assert_eq!(message.cseq(), Some((1, "BYE")));
        assert_eq!(message.headers("route").collect::<Vec<_>>(), route.iter().map(String::as_str).collect::<Vec<_>>(), "{bye}");
        assert!(bye.starts_with("BYE sip:caller@127.0.0.1:5070 SIP/2.0\r\n"), "a loose router leaves the target as the Request-URI: {bye}");
    }

    #[test]
    fn every_option_tag_a_request_requires_is_one_we_do_not_implement() {
        let request = |extra: &str| parse(format!("INVITE sip:1@h SIP/2.0\r\nVia: SIP/2.0/UDP p;branch=z9hG4bK-1\r\n{extra}Content-Length: 0\r\n\r\n").as_bytes()).unwrap();
        assert!(unsupported_requirements(&request("Supported: 100rel, timer\r\n")).is_empty(), "what a peer merely supports asks nothing");
        assert_eq!(unsupported_requirements(&request("Require: 100rel, Timer\r\nRequire: x-foo\r\n")), ["100rel", "x-foo"], "session timers we do");
    }

    #[test]
    fn a_strict_router_first_in_the_route_set_takes_the_request_uri_and_the_target_goes_last() {
        let route = ["<sip:old-proxy.example:5060;transport=udp?X-A=1>".to_string(), "<sip:edge.example;lr>".to_string()];
        let bye = InDialog { method: "BYE", target: "sip:caller@192.0.2.4:5070", route: &route, via: "UDP 127.0.0.1:5060", branch: "z9hG4bK-x", from: "<sip:+1@h>;tag=t1", to: "<sip:+2@h>;tag=abc", call_id: "c1", cseq: 1 }.render(&[]);
        assert!(bye.starts_with("BYE sip:old-proxy.example:5060;transport=udp SIP/2.0\r\n"), "the strict router's URI, without headers, is the Request-URI: {bye}");
        let message = parse(bye.as_bytes()).unwrap();
        assert!(message.check_request().is_ok());
        assert_eq!(message.headers("route").collect::<Vec<_>>(), ["<sip:edge.example;lr>", "<sip:caller@192.0.2.4:5070>"], "the rest of the set, then the target: {bye}");
        // `lr` in any case and with a value is loose; a parameter merely starting with it is not.
        assert!(routes_loosely("sip:p.example;LR") && routes_loosely("sip:p.example;transport=udp;lr=on"));
        assert!(!routes_loosely("sip:p.example;lrx") && !routes_loosely("sip:p.example?lr"));
        let bare = ["sip:edge.example;lr".to_string()];
        let bye = InDialog { route: &bare, ..InDialog { method: "BYE", target: "sip:caller@192.0.2.4:5070", route: &route, via: "UDP 127.0.0.1:5060", branch: "z9hG4bK-x", from: "<sip:+1@h>;tag=t1", to: "<sip:+2@h>;tag=abc", call_id: "c1", cseq: 1 } }.render(&[]);
        assert!(bye.starts_with("BYE sip:caller@192.0.2.4:5070 SIP/2.0\r\n"), "a bare entry keeps its `lr`: {bye}");
    }

    #[test]
    fn a_record_routed_invite_gives_its_route_set_and_its_responses_name_the_proxies() {
        let invite = "INVITE sip:+1@h SIP/2.0\r\nVia: SIP/2.0/UDP p1;branch=z9hG4bK-1\r\nRecord-Route: <sip:p1.example;lr>, \"a, b\" <sip:p2.example;lr;x=\"y,z\">\r\nFrom: <sip:+2@h>;tag=a\r\nTo: <sip:+1@h>\r\nCall-ID: c\r\nRecord-Route: <sip:p3.example;lr>\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
        let message = parse(invite.as_bytes()).unwrap();
        assert_eq!(message.record_route(), vec!["<sip:p1.example;lr>", "\"a, b\" <sip:p2.example;lr;x=\"y,z\">", "<sip:p3.example;lr>"]);
        let ok = response(&message, 200, "OK", Some("t"), &[], None);
        assert_eq!(parse(ok.as_bytes()).unwrap().record_route(), message.record_route(), "{ok}");
        assert!(parse(b"OPTIONS sip:h SIP/2.0\r\nVia: SIP/2.0/UDP p;branch=z9hG4bK-2\r\nContent-Length: 0\r\n\r\n").unwrap().record_route().is_empty());
    }

    #[test]
    fn a_stream_is_cut_into_messages_by_their_content_length() {
        let invite = "INVITE sip:1@h SIP/2.0\r\nVia: SIP/2.0/TCP p;branch=z9hG4bK-1\r\nl: 5\r\n\r\nv=0\r\n";
        let bye = "BYE sip:1@h SIP/2.0\r\nVia: SIP/2.0/TCP p;branch=z9hG4bK-2\r\n\r\n";
        let stream = format!("{invite}{bye}");
        assert_eq!(framed_length(stream.as_bytes()), Ok(Some(invite.len())), "the compact `l` counts; what follows is the next message");
        assert_eq!(framed_length(&stream.as_bytes()[invite.len()..]), Ok(Some(bye.len())), "no Content-Length: no body");
        for cut in [10, invite.len() - 3, invite.len() - 1] {
            assert_eq!(framed_length(&invite.as_bytes()[..cut]), Ok(None), "not all of it yet at {cut} bytes");
        }
        let huge = "INVITE sip:1@h SIP/2.0\r\nContent-Length: 99999999999999999999\r\n\r\n";
        assert!(framed_length(huge.as_bytes()).unwrap_err().contains("Content-Length"), "a length that is no number of bytes");
        let big = format!("INVITE sip:1@h SIP/2.0\r\nContent-Length: {MAX_MESSAGE_BYTES}\r\n\r\n");
        assert!(framed_length(big.as_bytes()).unwrap_err().contains("the most is"), "a body beyond the bound is refused before it arrives");
        let endless = "X".repeat(MAX_MESSAGE_BYTES);
        assert!(framed_length(endless.as_bytes()).unwrap_err().contains("no end of headers"));
        assert!(framed_length(b"INVITE sip:1@h SIP/2.0\r\nContent-Length: -1\r\n\r\n").is_err());
    }

    #[test]
    fn a_transport_is_named_as_sip_names_it() {
        assert_eq!(("udp".parse(), " TCP ".parse()), (Ok(Transport::Udp), Ok(Transport::Tcp)));
        assert!("tls".parse::<Transport>().unwrap_err().contains("give udp or tcp"));
        let bye = InDialog { method: "BYE", target: "sip:c@192.0.2.4", route: &[], via: "TCP 127.0.0.1:5060", branch: "z9hG4bK-x", from: "<sip:+1@h>;tag=t1", to: "<sip:+2@h>;tag=a", call_id: "c1", cseq: 1 }.render(&[]);
        assert!(bye.contains("\r\nVia: SIP/2.0/TCP 127.0.0.1:5060;branch=z9hG4bK-x"), "{bye}");
        assert_eq!((Transport::Tcp.uri_param(), Transport::Udp.uri_param()), (";transport=tcp", ""));
    }

    #[test]
    fn the_top_vias_sent_by_names_the_port_responses_go_back_to() {
        let port = |via: &str| parse(format!("OPTIONS sip:h SIP/2.0\r\nVia: {via}\r\nContent-Length: 0\r\n\r\n").as_bytes()).unwrap().via_port();
        assert_eq!(port("SIP/2.0/TCP 192.0.2.4:5070;branch=z9hG4bK-1"), Some(5070));
        assert_eq!(port("SIP/2.0/TCP pbx.example.com;branch=z9hG4bK-1"), Some(5060), "none named: SIP's own");
        assert_eq!(port("SIP/2.0/TCP [2001:db8::1]:5072;branch=z9hG4bK-1, SIP/2.0/UDP 192.0.2.9:5080"), Some(5072), "the top one");
        assert_eq!(port("SIP/2.0/TCP [2001:db8::1];received=192.0.2.4"), Some(5060));
        assert_eq!((port("SIP/2.0/TCP 192.0.2.4:http"), port("SIP/2.0/TCP")), (None, None));
    }

    #[test]
    fn a_contact_names_an_address_only_as_a_literal() {
        let at = |uri| socket_addr_of(uri).map(|a| a.to_string());
        assert_eq!(at("sip:caller@127.0.0.1:5070;transport=tcp"), Some("127.0.0.1:5070".into()));
        assert_eq!(at("sip:192.0.2.4"), Some("192.0.2.4:5060".into()), "no port: SIP's own");
        assert_eq!(at("sip:a@[::1]:5062;transport=tcp"), Some("[::1]:5062".into()));
        assert_eq!(at("sip:a@[2001:db8::1]"), Some("[2001:db8::1]:5060".into()));
        assert_eq!(at("sip:a@pbx.example.com:5060"), None, "a name is not resolved");
        assert_eq!((at("tel:+14155552671"), at("sips:a@192.0.2.4")), (None, None));
    }

    #[test]
    fn an_invites_session_timer_is_granted_as_rfc_4028_says() {
        let invite = |extra: &str| parse(format!("INVITE sip:1@h SIP/2.0\r\nVia: SIP/2.0/UDP p;branch=z9hG4bK-1\r\n{extra}Content-Length: 0\r\n\r\n").as_bytes()).unwrap();
        let timer = |interval, refresher| Ok(Some(SessionTimer { interval, refresher }));
        assert_eq!(session_timer(&invite("")), Ok(None), "no Session-Expires, no timer");
        assert_eq!(session_timer(&invite("Session-Expires: 1800;refresher=uas\r\nSupported: timer\r\n")), timer(1800, Refresher::Uas), "the refresher it names");
        assert_eq!(session_timer(&invite("x: 1800\r\nk: timer\r\n")), timer(1800, Refresher::Uac), "unnamed, the caller that supports timers refreshes (compact forms)");
        assert_eq!(session_timer(&invite("Session-Expires: 600\r\n")), timer(600, Refresher::Uas), "a caller without timers leaves the refreshing to us");
        assert_eq!(session_timer(&invite("Session-Expires: 60;refresher=uac\r\n")), Err(TimerRefusal::TooSmall(60)));
        for bad in ["soon", "1800;refresher=me", "-5"] {
            assert!(matches!(session_timer(&invite(&format!("Session-Expires: {bad}\r\n"))), Err(TimerRefusal::Malformed(m)) if m.contains("SECONDS")), "{bad}");
        }
        // Kept by the side that answered the INVITE: the caller refreshes.
        let kept = KeptSession::named(SessionTimer { interval: 1800, refresher: Refresher::Uac }, Refresher::Uas);
        assert_eq!((kept.ours, kept.header(Refresher::Uas), kept.due().as_secs()), (false, "1800;refresher=uac".to_string(), 1768));
        assert_eq!(kept.header(Refresher::Uac), "1800;refresher=uas", "in a request of ours the caller answers it: `uas`");
        let ours = KeptSession::named(SessionTimer { interval: 90, refresher: Refresher::Uas }, Refresher::Uas);
        assert_eq!((ours.due().as_secs(), ours.header(Refresher::Uac)), (45, "90;refresher=uac".to_string()), "our refresh names us `uac`");
        assert_eq!(KeptSession { interval: 90, ours: false }.due().as_secs(), 60, "a third before, under 32 s");
        assert!(has_option(&invite("Require: timer\r\n"), "TIMER") && !has_option(&invite("Supported: 100rel\r\n"), "timer"));
        assert!(allows(&invite("Allow: INVITE, ACK,update\r\n"), "UPDATE") && !allows(&invite("Allow: INVITE, ACK\r\n"), "UPDATE") && !allows(&invite(""), "UPDATE"));
    }

    #[test]
    fn a_key_we_send_as_a_telephone_event_reads_back_as_itself() {
        for key in "0123456789*#ABCD".chars() {
            let payload = telephone_event_payload(key, false, 160).unwrap();
            assert_eq!(telephone_event(&payload), Some((key, false)), "{key}");
            assert_eq!(telephone_event(&telephone_event_payload(key, true, 800).unwrap()), Some((key, true)), "{key}");
        }
        assert_eq!(telephone_event_payload('#', true, 800), Some([11, 0x8a, 3, 32]), "end bit, volume 10, 800 samples");
        assert_eq!((telephone_event_payload('w', false, 0), telephone_event_payload('x', false, 0)), (None, None));
    }

    #[test]
    fn an_answers_session_timer_is_read_as_rfc_4028_says() {
        let ok = |extra: &str| parse(format!("SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP p;branch=z9hG4bK-1\r\nCSeq: 1 INVITE\r\n{extra}Content-Length: 0\r\n\r\n").as_bytes()).unwrap();
        let timer = |interval, refresher| Ok(Some(SessionTimer { interval, refresher }));
        assert_eq!(answered_timer(&ok("")), Ok(None), "no Session-Expires: the timer is off");
        assert_eq!(answered_timer(&ok("Session-Expires: 1800;refresher=uas\r\nRequire: timer\r\n")), timer(1800, Refresher::Uas));
        assert_eq!(answered_timer(&ok("x: 600\r\n")), timer(600, Refresher::Uac), "unnamed: we refresh");
        assert_eq!(answered_timer(&ok("Session-Expires: 0;refresher=uac\r\n")), timer(MIN_SESSION_EXPIRES, Refresher::Uac), "never a refresh in a loop");
        assert!(answered_timer(&ok("Session-Expires: later\r\n")).unwrap_err().contains("SECONDS"));
        let too_small = |extra: &str| min_session_expires(&parse(format!("SIP/2.0 422 Session Interval Too Small\r\nCSeq: 1 INVITE\r\n{extra}Content-Length: 0\r\n\r\n").as_bytes()).unwrap());
        assert_eq!((too_small("Min-SE: 3600\r\n"), too_small("Min-SE: 120;x=y\r\n"), too_small("Min-SE: soon\r\n"), too_small("")), (Some(3600), Some(120), None, None));
    }
}
