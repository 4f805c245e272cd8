//! A SIP trunk's calls: a user agent on UDP and TCP (one port, both) that answers INVITEs to the
//! workspaces' numbers and places calls through the trunk, with the caller's audio and the
//! agent's over RTP in G.711.
//!
//! ```text
//! trunk ─ INVITE (SDP offer) ─► 100 Trying ─► inbound::admit (number → assistant, limits, record)
//!       ◄─ 200 OK (SDP answer) ─ retransmitted until ACK ─ the call starts on a StreamLine
//! RTP in (PCMU/PCMA, telephone-events) ─► the line ─► the call
//! the line's 20 ms frames ─► RTP out
//! BYE from the trunk ends the call; a call that ends here sends BYE; a transfer sends REFER
//! ```
//!
//! A dialog keeps the transport its INVITE came on (or, placed by us, the trunk's): over TCP
//! every message of it goes on the connection the peer opened, or, when there is none (a call
//! we place, a connection the peer closed), on one we open to it; nothing but a 2xx to an
//! INVITE is sent twice. Connections are bounded in number, and so are their messages.
//!
//! A SIP peer is not authenticated by a key: only sources in the trusted ranges (the trunk's
//! addresses; loopback unless configured) are answered, anything else is dropped unanswered.
//! Every message is bounded (`sip::MAX_MESSAGE_BYTES`), dialogs are bounded, and a call
//! admitted here counts against the same limits as any other.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::RngCore;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::inbound::{self, Refusal};
use super::runner::Connect;
use super::AppState;
use crate::call::CallStatus;
use crate::egress::Cidr;
use crate::store::CallRecord;
use crate::transport::CallInput;
use crate::transport::jitter::JitterBuffer;
use crate::transport::sip::{self, InDialog, KeptSession, Message, Offer, Refresher, StartLine, TimerRefusal, Transport};
use crate::transport::stream::{CallControl, Outgoing, StreamLine};

/// Dialogs (calls being set up or under way) one endpoint holds; an INVITE beyond it gets 503.
const MAX_DIALOGS: usize = 1_000;
/// TCP connections open at once, both ways; one more accepted is closed at once.
const MAX_CONNECTIONS: usize = 256;
/// How long a message begun on a connection may take to arrive whole; a peer that stalls
/// mid-message longer loses the connection.
const MESSAGE_WITHIN: Duration = Duration::from_secs(30);
/// How long opening a connection to a peer may take.
const CONNECT_WITHIN: Duration = Duration::from_secs(5);
/// SIP's timer T1: the first retransmission interval on UDP; T2 caps it.
const T1: Duration = Duration::from_millis(500);
const T2: Duration = Duration::from_secs(4);
/// How long a 200 OK is retransmitted waiting for its ACK (64·T1).
const ACK_WITHIN: Duration = Duration::from_secs(32);
/// A call whose peer sends no RTP this long (and has not put it on hold) is gone (its BYE
/// lost, its network down).
const MEDIA_TIMEOUT: Duration = Duration::from_secs(60);
const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, NOTIFY, UPDATE";

/// Where the SIP endpoint listens and whom it answers.
#[derive(Debug, Clone)]
pub struct SipConfig {
    pub bind: SocketAddr,
    /// The address peers reach this server at (in Contact and SDP); the bind address unless
    /// that is unspecified.
    pub address: Option<IpAddr>,
    /// Sources answered; the rest are dropped.
    pub trusted: Vec<Cidr>,
    /// Where outbound calls go (the trunk's SIP address); its address is trusted too.
    pub trunk: Option<SocketAddr>,
    /// How the trunk is reached: our INVITEs and REGISTERs to it.
    pub trunk_transport: Transport,
    /// The user and password a challenging trunk is answered with (digest, MD5).
    pub credentials: Option<Credentials>,
    /// Registers with the trunk as `credentials`' user (REGISTER, refreshed), for a trunk that
    /// routes an account's calls to where it registered.
    pub register: bool,
    /// While registered, a keep-alive (CRLF) goes to the trunk this often, so a NAT in front of
    /// this server keeps the mapping the trunk's calls come back through.
    pub keepalive: Option<Duration>,
}

/// A trunk account; its Debug form leaves the password out.
#[derive(Clone)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("user", &self.user).field("password", &"…").finish()
    }
}

impl SipConfig {
    /// The address to advertise; an error names the fix when there is none.
    fn advertised(&self) -> anyhow::Result<IpAddr> {
        match self.address {
            Some(address) => Ok(address),
            None if self.bind.ip().is_unspecified() => {
                anyhow::bail!("--sip-bind {} listens on every address: give --sip-address, the address SIP peers reach this server at", self.bind)
            }
            None => Ok(self.bind.ip()),
        }
    }
}

/// A SIP peer: its address and the transport it speaks to us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Peer {
    addr: SocketAddr,
    transport: Transport,
    /// Over TCP, where a request goes when the peer's connection has closed: its Contact's
    /// address (a trusted one), which it listens on; its connection's port is gone with it.
    reconnect: Option<SocketAddr>,
}

impl Peer {
    fn new(addr: SocketAddr, transport: Transport) -> Self {
        Peer { addr, transport, reconnect: None }
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.transport, self.addr)
    }
}

struct Endpoint {
    /// The endpoint itself, for the tasks of the connections it opens while sending.
    me: std::sync::Weak<Endpoint>,
    socket: UdpSocket,
    /// Open TCP connections by the peer's address: the sender of each one's writer.
    connections: Mutex<HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>>,
    state: AppState,
    config: SipConfig,
    /// The advertised address, and `host:port` of our Via and Contact.
    address: IpAddr,
    host: String,
    dialogs: Mutex<HashMap<String, Arc<Dialog>>>,
    /// Datagrams dropped for their source, logged once.
    untrusted_logged: std::sync::atomic::AtomicBool,
    /// Our requests outside any dialog (REGISTER) waiting for a final response, by branch.
    pending: Mutex<HashMap<String, oneshot::Sender<Message>>>,
}

/// What we ask a registrar for; it may grant less.
const REGISTER_EXPIRES: u32 = 300;
/// A registration that failed is tried again after this.
const REGISTER_RETRY: Duration = Duration::from_secs(30);

/// Our side of a call's session description: where our RTP is, and what we said last.
struct OurSdp {
    port: u16,
    session: u64,
    version: u64,
    sdp: String,
    /// We hold the call (the API's hold): we offer `sendonly` and take no audio.
    holding: bool,
}

impl OurSdp {
    /// The answer to a call's first offer.
    fn answering(address: IpAddr, port: u16, offer: &Offer) -> Self {
        let session = rand::random::<u32>() as u64;
        OurSdp { port, session, version: session, sdp: sip::answer(address, port, offer, session, session, false), holding: false }
    }

    /// Our offer for a call we place.
    fn offering(address: IpAddr, port: u16) -> Self {
        let session = rand::random::<u32>() as u64;
        OurSdp { port, session, version: session, sdp: sip::offer(address, port, session), holding: false }
    }

    /// The answer to a new offer in the call: as before unless it must say something else (a
    /// hold's direction), and then under the next version.
    fn answer(&mut self, address: IpAddr, offer: &Offer) -> String {
        if sip::answer(address, self.port, offer, self.session, self.version, self.holding) != self.sdp {
            self.version += 1;
            self.sdp = sip::answer(address, self.port, offer, self.session, self.version, self.holding);
        }
        self.sdp.clone()
    }

    /// Our offer to hold the call (or take it off hold), in the codec it speaks: always a new
    /// version.
    fn reoffer(&mut self, address: IpAddr, call: &Offer, holding: bool) -> String {
        self.holding = holding;
        self.version += 1;
        self.sdp = sip::reoffer(address, self.port, call, self.session, self.version, holding);
        self.sdp.clone()
    }
}

/// One call's dialog, from its INVITE.
struct Dialog {
    /// SIP's Call-ID.
    id: String,
    /// Where the INVITE came from (or, for a call we place, the trunk), and how: responses and
    /// our requests go there.
    peer: Peer,
    invite: Message,
    our_tag: String,
    /// We sent the INVITE (the call was placed here): we own the Call-ID in a glare.
    placed: bool,
    state: Mutex<DialogState>,
    /// Told when the session timer changes: the task keeping it looks again.
    retimed: tokio::sync::Notify,
}

#[derive(Default)]
struct DialogState {
    /// Resent when the INVITE is retransmitted.
    last_response: Option<String>,
    /// The final response has been sent.
    answered: bool,
    acked: bool,
    cancelled: bool,
    /// Our session description: the answer to a re-INVITE.
    sdp: Option<OurSdp>,
    line: Option<StreamLine>,
    /// The Ringline call on the line (for a peer's hold, applied as the API's).
    call: Option<String>,
    /// The peer sent BYE: nothing to send back.
    ended_by_peer: bool,
    cseq: u32,
    /// Our requests waiting for a final response, by branch.
    waiting: HashMap<String, oneshot::Sender<Message>>,
    /// Our side (From in our requests, with our tag), the peer's (To, with its tag), and the
    /// peer's Contact, where our requests go.
    local: String,
    remote: String,
    target: String,
    /// The proxies our requests pass through (Route headers), from the Record-Route headers:
    /// the INVITE's as they are, or in reverse from the 200 OK to ours.
    route: Vec<String>,
    /// Where the call's media goes: a re-offer moving the peer's RTP changes it.
    media: Option<watch::Sender<Offer>>,
    /// A call we placed: every response to our INVITE goes here.
    invite_responses: Option<mpsc::UnboundedSender<Message>>,
    /// Our ACK of the 200 OK, resent when the 200 OK comes again.
    ack: Option<String>,
    /// Whether the API last asked to hold the call: what our offers move the session towards,
    /// whatever order the requests' tasks run in.
    hold_wanted: bool,
    /// A task is moving the session to `hold_wanted`: the only one (one offer of ours at a
    /// time), however often the API changes its mind.
    holding_task: bool,
    /// Our re-INVITE is waiting for its answer: a peer's offer meanwhile is a glare (491).
    reoffering: bool,
    /// Our ACK of the 200 OK to our latest re-INVITE, by its CSeq: resent when it comes again.
    reoffer_ack: Option<(u32, String)>,
    /// The session timer (RFC 4028) as the last refresh set it — our answer to the INVITE or the
    /// peer's to ours, or a later re-INVITE or UPDATE either way — and when the session was last
    /// refreshed (answered, or a re-INVITE or UPDATE taken either way).
    timer: Option<KeptSession>,
    refreshed: Option<tokio::time::Instant>,
    /// The peer's INVITE or answer allows UPDATE: our refreshes are UPDATEs without SDP (no
    /// offer to answer, no media to move), else re-INVITEs.
    peer_updates: bool,
}

impl Dialog {
    fn lock(&self) -> std::sync::MutexGuard<'_, DialogState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The final response needs no more resending: ACKed, or the peer already hung up.
    fn settled(&self) -> bool {
        let state = self.lock();
        state.acked || state.ended_by_peer
    }

    /// The session was refreshed now, under `timer` from here on.
    fn retime(&self, timer: Option<KeptSession>) {
        {
            let mut state = self.lock();
            state.timer = timer;
            state.refreshed = Some(tokio::time::Instant::now());
        }
        self.retimed.notify_one();
    }
}

/// Our binding at the trunk's registrar: one Call-ID and From tag for all its REGISTERs.
struct Registration {
    call_id: String,
    tag: String,
    trunk: Peer,
    user: String,
}

/// The number an INVITE dials: the request URI's user part, or, when that is our registered
/// user (the trunk calls the Contact we registered), the To header's.
fn dialled(invite: &Message, uri: &str, registered_user: Option<&str>) -> String {
    let to_header = || sip::user_of(sip::uri_of(invite.header("to").unwrap_or_default()));
    let user = match sip::user_of(uri) {
        Some(user) if Some(user) == registered_user => to_header(),
        Some(user) => Some(user),
        None => to_header(),
    };
    user.map(number).unwrap_or_default()
}

/// Our answer to the digest challenge a 401 or 407 `response` makes of `method` on `uri`: the
/// header to send it in and its value; the error says why it cannot be answered.
fn answer_challenge(response: &Message, code: u16, credentials: &Credentials, method: &str, uri: &str) -> Result<(&'static str, String), String> {
    let (asked, answer_with) = if code == 401 { ("www-authenticate", "Authorization") } else { ("proxy-authenticate", "Proxy-Authorization") };
    let challenge = sip::challenge(response.header(asked).unwrap_or_default())?;
    Ok((answer_with, sip::digest(&challenge, &credentials.user, &credentials.password, method, uri, &random_hex(8))))
}

fn random_hex(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buffer);
    hex::encode(buffer)
}

/// A new transaction's branch, with RFC 3261's magic cookie.
fn branch() -> String {
    format!("z9hG4bK{}", random_hex(8))
}

/// Binds the endpoint and serves it until `shutdown`; returns the address it listens on.
pub async fn start(state: AppState, config: SipConfig, shutdown: CancellationToken) -> anyhow::Result<(SocketAddr, Dialer)> {
    let address = config.advertised()?;
    let socket = UdpSocket::bind(config.bind).await.map_err(|e| anyhow::anyhow!("--sip-bind {}: {e}", config.bind))?;
    let local = socket.local_addr()?;
    // TCP on the same port: a peer may send any message over either (RFC 3261 18.1.1).
    let listener = TcpListener::bind(local).await.map_err(|e| anyhow::anyhow!("--sip-bind {}: TCP on port {} (SIP listens on UDP and TCP alike): {e}", config.bind, local.port()))?;
    let host = SocketAddr::new(address, local.port()).to_string();
    let endpoint = Arc::new_cyclic(|me| Endpoint {
        me: me.clone(),
        socket,
        connections: Default::default(),
        state,
        config,
        address,
        host,
        dialogs: Mutex::new(HashMap::new()),
        untrusted_logged: Default::default(),
        pending: Default::default(),
    });
    if endpoint.config.register {
        tokio::spawn(endpoint.clone().stay_registered(shutdown.clone()));
    }
    tokio::spawn(endpoint.clone().accept_connections(listener, shutdown.clone()));
    tokio::spawn(endpoint.clone().run(shutdown));
    Ok((local, Dialer(endpoint)))
}

impl Endpoint {
    fn dialogs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Dialog>>> {
        self.dialogs.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut buffer = vec![0u8; sip::MAX_MESSAGE_BYTES + 1];
        loop {
            let (length, source) = tokio::select! {
                _ = shutdown.cancelled() => break,
                received = self.socket.recv_from(&mut buffer) => match received {
                    Ok(received) => received,
                    Err(error) => {
                        // An ICMP error for an earlier send surfaces here on some systems.
                        tracing::debug!(%error, "the SIP socket reported an error");
                        continue;
                    }
                },
            };
            if !self.trusts(source) {
                continue;
            }
            let datagram = &buffer[..length];
            if datagram.iter().all(|b| b.is_ascii_whitespace()) {
                continue; // a keep-alive (CRLF)
            }
            self.clone().take(datagram, Peer::new(source, Transport::Udp)).await;
        }
        // The server is stopping: its calls hang up through their lines (the runner's shutdown).
    }

    /// Whether `source` is answered: the trunk's address or one of the trusted ranges. The first
    /// stranger is logged.
    fn trusts(&self, source: SocketAddr) -> bool {
        if self.trusted(source.ip()) {
            return true;
        }
        if !self.untrusted_logged.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!(%source, "dropped SIP from a source outside --sip-trusted (logged once)");
        }
        false
    }

    fn trusted(&self, ip: IpAddr) -> bool {
        self.config.trunk.is_some_and(|trunk| trunk.ip() == ip) || self.config.trusted.iter().any(|range| range.contains(ip))
    }

    /// One message as it arrived, from either transport.
    async fn take(self: Arc<Self>, bytes: &[u8], source: Peer) {
        match sip::parse(bytes) {
            Ok(message) => {
                // A bug in handling one message must not stop the endpoint for every call.
                use futures::FutureExt as _;
                if std::panic::AssertUnwindSafe(self.handle(message, source)).catch_unwind().await.is_err() {
                    tracing::error!(%source, "handling a SIP message panicked; the endpoint goes on");
                }
            }
            Err(problem) => tracing::debug!(%source, problem, "dropped a malformed SIP message"),
        }
    }

    /// Takes TCP connections from trusted peers until `shutdown`, at most [`MAX_CONNECTIONS`]
    /// open at once.
    async fn accept_connections(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken) {
        loop {
            let (stream, source) = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of descriptors, say: wait rather than spin.
                        tracing::warn!(%error, "accepting a SIP connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            if !self.trusts(source) {
                continue; // dropped: the connection closes unanswered
            }
            if self.connections().len() >= MAX_CONNECTIONS {
                tracing::warn!(%source, "refused a SIP connection: {MAX_CONNECTIONS} are open");
                continue;
            }
            self.open(stream, source);
        }
    }

    fn connections(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>> {
        self.connections.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Serves a connection: what is sent to `peer` over TCP goes out on it (until another to the
    /// same address replaces it), what comes in is handled as messages from `peer`.
    fn open(self: &Arc<Self>, stream: TcpStream, peer: SocketAddr) -> mpsc::Sender<Vec<u8>> {
        let _ = stream.set_nodelay(true);
        let (mut reading, mut writing) = stream.into_split();
        let (outgoing, mut queued) = mpsc::channel::<Vec<u8>>(64);
        self.connections().insert(peer, outgoing.clone());
        tokio::spawn(async move {
            while let Some(bytes) = queued.recv().await {
                if let Err(error) = writing.write_all(&bytes).await {
                    tracing::debug!(%error, %peer, "a SIP connection could not be written");
                    break;
                }
            }
        });
        let (endpoint, ours) = (self.clone(), outgoing.clone());
        tokio::spawn(async move {
            let from = Peer::new(peer, Transport::Tcp);
            let mut buffer: Vec<u8> = Vec::new();
            let mut chunk = vec![0u8; 8 * 1024];
            loop {
                // Keep-alives between messages: a CRLF pair is a ping, answered with one CRLF
                // (RFC 5626, section 4.4.1).
                let blank = buffer.iter().take_while(|&&b| b == b'\r' || b == b'\n').count();
                if blank > 0 {
                    if buffer[..blank].windows(4).any(|w| w == b"\r\n\r\n") {
                        let _ = ours.send(b"\r\n".to_vec()).await;
                    }
                    buffer.drain(..blank);
                }
                match sip::framed_length(&buffer) {
                    Ok(Some(length)) => {
                        let message: Vec<u8> = buffer.drain(..length).collect();
                        endpoint.clone().take(&message, from).await;
                        continue;
                    }
                    Ok(None) => {}
                    Err(problem) => {
                        tracing::debug!(%peer, problem, "closed a SIP connection that sent what cannot be a message");
                        break;
                    }
                }
                // The rest of a message begun must come within its time; between messages a
                // connection may idle as long as its peer likes.
                let read = reading.read(&mut chunk);
                let read = if buffer.is_empty() { Ok(read.await) } else { tokio::time::timeout(MESSAGE_WITHIN, read).await };
                match read {
                    Ok(Ok(0)) => break,
                    Ok(Ok(length)) => buffer.extend_from_slice(&chunk[..length]),
                    Ok(Err(error)) => {
                        tracing::debug!(%error, %peer, "a SIP connection failed");
                        break;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "closed a SIP connection stalled mid-message");
                        break;
                    }
                }
            }
            let mut connections = endpoint.connections();
            if connections.get(&peer).is_some_and(|current| current.same_channel(&ours)) {
                connections.remove(&peer);
            }
        });
        outgoing
    }

    /// Our Contact for a peer on `transport`: where it sends its requests in a dialog.
    fn contact(&self, transport: Transport) -> String {
        format!("<sip:ringline@{}{}>", self.host, transport.uri_param())
    }

    /// Our Via's transport and address for a request to `peer`.
    fn via(&self, peer: Peer) -> String {
        format!("{} {}", peer.transport.via_name(), self.host)
    }

    /// Sends a message to `to`: a datagram, or on the connection to its address, opened first
    /// when there is none.
    async fn send(&self, text: &str, to: Peer) {
        let sent = match to.transport {
            Transport::Udp => self.socket.send_to(text.as_bytes(), to.addr).await.map(|_| ()).map_err(|e| e.to_string()),
            Transport::Tcp => self.send_on_connection(text, to).await,
        };
        if let Err(error) = sent {
            tracing::debug!(%error, %to, "a SIP message could not be sent");
        }
    }

    /// Sends on the peer's open connection (the one it came on, or one opened to its Contact),
    /// or on a new one: to its Contact's address if it gave one, else to where it came from.
    async fn send_on_connection(&self, text: &str, to: Peer) -> Result<(), String> {
        let open = {
            let connections = self.connections();
            [Some(to.addr), to.reconnect].into_iter().flatten().find_map(|addr| connections.get(&addr).filter(|sender| !sender.is_closed()).cloned())
        };
        let connection = match open {
            Some(connection) => connection,
            None => {
                let me = self.me.upgrade().ok_or("the endpoint has stopped")?;
                if self.connections().len() >= MAX_CONNECTIONS {
                    return Err(format!("{MAX_CONNECTIONS} SIP connections are open"));
                }
                let address = to.reconnect.unwrap_or(to.addr);
                let stream = tokio::time::timeout(CONNECT_WITHIN, TcpStream::connect(address)).await.map_err(|_| format!("no connection to {address} within {} s", CONNECT_WITHIN.as_secs()))?.map_err(|e| format!("connecting to {address}: {e}"))?;
                me.open(stream, address)
            }
        };
        connection.send(text.as_bytes().to_vec()).await.map_err(|_| "the connection closed".to_string())
    }

    async fn handle(self: Arc<Self>, message: Message, mut source: Peer) {
        match &message.start {
            StartLine::Response { code, .. } => self.response(&message, *code).await,
            StartLine::Request { method, .. } => {
                if let Err(problem) = message.check_request() {
                    // A response needs these headers to find its way back; without them, none.
                    tracing::debug!(%source, problem, "dropped a SIP request it cannot answer");
                    return;
                }
                // Over TCP, a response whose connection has closed goes on a new one to the
                // address it came from at its Via's port (RFC 3261 18.2.2).
                if source.transport.reliable() {
                    source.reconnect = message.via_port().map(|port| SocketAddr::new(source.addr.ip(), port));
                }
                let method = method.clone();
                // An extension the request requires and we lack: refused, not half-served.
                let unsupported = sip::unsupported_requirements(&message);
                if !unsupported.is_empty() && method != "ACK" && method != "CANCEL" {
                    let tag = (method == "INVITE").then(|| random_hex(8));
                    let text = sip::response(&message, 420, "Bad Extension", tag.as_deref(), &[("Unsupported", &unsupported.join(", "))], None);
                    return self.send(&text, source).await;
                }
                let dialog = message.header("call-id").and_then(|id| self.dialogs().get(id).cloned());
                match (method.as_str(), dialog) {
                    ("INVITE", Some(dialog)) => self.reinvite(&dialog, &message, source).await,
                    ("INVITE", None) => self.invite(message, source).await,
                    ("ACK", Some(dialog)) => self.ack(&dialog, &message),
                    ("ACK", None) => {}
                    ("BYE", Some(dialog)) => self.bye(&dialog, &message, source).await,
                    ("CANCEL", Some(dialog)) => self.cancel(&dialog, &message, source).await,
                    ("INFO", Some(dialog)) => {
                        if let (Some(key), Some(line)) = (sip::dtmf_relay(&message.body), dialog.lock().line.clone()) {
                            line.caller_key(key);
                        }
                        self.reply(&message, source, 200, "OK", &[]).await;
                    }
                    ("NOTIFY", Some(_)) | ("OPTIONS", _) => self.reply(&message, source, 200, "OK", &[("Allow", ALLOW), ("Accept", "application/sdp")]).await,
                    ("UPDATE", Some(dialog)) => self.reoffer(&dialog, &message, source).await,
                    ("BYE" | "CANCEL" | "INFO" | "NOTIFY" | "UPDATE", None) => self.reply(&message, source, 481, "Call/Transaction Does Not Exist", &[]).await,
                    (_, Some(_)) => self.reply(&message, source, 501, "Not Implemented", &[("Allow", ALLOW)]).await,
                    (_, None) => self.reply(&message, source, 405, "Method Not Allowed", &[("Allow", ALLOW)]).await,
                }
            }
        }
    }

    async fn reply(&self, request: &Message, to: Peer, code: u16, reason: &str, extra: &[(&str, &str)]) {
        self.send(&sip::response(request, code, reason, None, extra, None), to).await;
    }

    /// A response to a request we sent: to our INVITE, for the call being placed (a 200 OK
    /// that comes again gets our ACK again); to a BYE or REFER, the final one ends its wait.
    async fn response(&self, message: &Message, code: u16) {
        if code >= 200 {
            let waiter = message.branch().and_then(|branch| self.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(branch));
            if let Some(waiter) = waiter {
                let _ = waiter.send(message.clone());
                return;
            }
        }
        let Some(dialog) = message.header("call-id").and_then(|id| self.dialogs().get(id).cloned()) else { return };
        if let Some(branch) = message.branch() {
            let mut state = dialog.lock();
            if code >= 200 {
                if let Some(waiter) = state.waiting.remove(branch) {
                    let _ = waiter.send(message.clone());
                    return;
                }
            } else if state.waiting.contains_key(branch) {
                // A provisional response to a request of ours in the call (a re-INVITE's 100).
                return;
            }
        }
        let reoffer_ack = dialog.lock().reoffer_ack.clone();
        if let (Some((cseq, ack)), Some((number, "INVITE")), 200..=299) = (reoffer_ack, message.cseq(), code) {
            if cseq == number {
                return self.send(&ack, dialog.peer).await;
            }
        }
        if message.cseq().is_some_and(|(_, method)| method == "INVITE") {
            let (events, ack) = {
                let state = dialog.lock();
                (state.invite_responses.clone(), state.ack.clone())
            };
            match ack {
                Some(ack) if (200..300).contains(&code) => self.send(&ack, dialog.peer).await,
                _ => {
                    if let Some(events) = events {
                        let _ = events.send(message.clone());
                    }
                }
            }
            return;
        }
    }

    /// A new call: 100 Trying at once, then the offer, the number and the limits decide.
    async fn invite(self: Arc<Self>, invite: Message, source: Peer) {
        let id = invite.header("call-id").unwrap_or_default().to_string();
        if self.dialogs().len() >= MAX_DIALOGS {
            self.reply(&invite, source, 503, "Service Unavailable", &[("Retry-After", "30")]).await;
            return;
        }
        let our_tag = random_hex(8);
        let to = invite.header("to").unwrap_or_default();
        let contact = invite.header("contact").map(sip::uri_of).unwrap_or_default();
        let state = DialogState {
            local: if sip::param(to, "tag").is_some() { to.to_string() } else { format!("{to};tag={our_tag}") },
            remote: invite.header("from").unwrap_or_default().to_string(),
            target: if contact.is_empty() { format!("sip:{}{}", source.addr, source.transport.uri_param()) } else { contact.to_string() },
            route: invite.record_route(),
            ..DialogState::default()
        };
        // Over TCP, a peer that closes its connection is reached again at its Contact (or,
        // when that names no trusted address, where its responses go).
        let reconnect = sip::socket_addr_of(contact).filter(|address| source.transport.reliable() && self.trusted(address.ip()));
        let peer = Peer { reconnect: reconnect.or(source.reconnect), ..source };
        let dialog = Arc::new(Dialog { id: id.clone(), peer, invite, our_tag, placed: false, state: Mutex::new(state), retimed: Default::default() });
        let trying = sip::response(&dialog.invite, 100, "Trying", None, &[], None);
        dialog.lock().last_response = Some(trying.clone());
        self.dialogs().insert(id, dialog.clone());
        self.send(&trying, source).await;
        tokio::spawn(self.accept(dialog));
    }

    /// Sends the INVITE's final response (kept for retransmissions of the INVITE).
    async fn final_response(&self, dialog: &Dialog, code: u16, reason: &str, extra: &[(&str, &str)], body: Option<(&str, &str)>) -> String {
        let text = sip::response(&dialog.invite, code, reason, Some(&dialog.our_tag), extra, body);
        {
            let mut state = dialog.lock();
            state.last_response = Some(text.clone());
            state.answered = true;
        }
        self.send(&text, dialog.peer).await;
        text
    }

    /// Refuses the INVITE, resending the refusal until its ACK comes (UDP loses datagrams);
    /// then the dialog is forgotten.
    async fn refuse(self: &Arc<Self>, dialog: &Arc<Dialog>, code: u16, reason: &str) {
        self.refuse_with(dialog, code, reason, &[]).await;
    }

    async fn refuse_with(self: &Arc<Self>, dialog: &Arc<Dialog>, code: u16, reason: &str, extra: &[(&str, &str)]) {
        tracing::info!(sip_call = %dialog.id, code, reason, "refused a SIP call");
        let text = self.final_response(dialog, code, reason, extra, None).await;
        let (endpoint, dialog) = (self.clone(), dialog.clone());
        tokio::spawn(async move {
            endpoint.resend_until_acked(&dialog, &text).await;
            endpoint.dialogs().remove(&dialog.id);
        });
    }

    /// Resends the INVITE's final response on SIP's timers until its ACK comes (or the peer
    /// hung up); false when none came within `ACK_WITHIN`. Over TCP a refusal is not resent (a
    /// 2xx is: its ACK is the peer's, end to end, whatever the transports on the way).
    async fn resend_until_acked(&self, dialog: &Dialog, text: &str) -> bool {
        let resend = !dialog.peer.transport.reliable() || text.starts_with("SIP/2.0 2");
        let started = Instant::now();
        let mut wait = T1;
        loop {
            tokio::time::sleep(wait).await;
            if dialog.settled() {
                return true;
            }
            if started.elapsed() >= ACK_WITHIN {
                return false;
            }
            if resend {
                self.send(text, dialog.peer).await;
            }
            wait = (wait * 2).min(T2);
        }
    }

    async fn accept(self: Arc<Self>, dialog: Arc<Dialog>) {
        let offer = match sip::parse_offer(&dialog.invite.body) {
            Ok(offer) => offer,
            Err(_) if dialog.invite.body.trim().is_empty() => return self.refuse(&dialog, 488, "Not Acceptable Here (an INVITE without an SDP offer)").await,
            Err(problem) => return self.refuse(&dialog, 488, &format!("Not Acceptable Here ({problem})")).await,
        };
        let timer = match sip::session_timer(&dialog.invite) {
            Ok(timer) => timer.map(|timer| KeptSession::named(timer, Refresher::Uas)),
            Err(TimerRefusal::TooSmall(_)) => {
                let floor = sip::MIN_SESSION_EXPIRES.to_string();
                return self.refuse_with(&dialog, 422, "Session Interval Too Small", &[("Min-SE", &floor)]).await;
            }
            Err(TimerRefusal::Malformed(problem)) => return self.refuse(&dialog, 400, &format!("Bad Request ({problem})")).await,
        };
        let StartLine::Request { uri, .. } = &dialog.invite.start else { return };
        let to = dialled(&dialog.invite, uri, self.registered_user());
        let from = sip::user_of(sip::uri_of(dialog.invite.header("from").unwrap_or_default())).map(number).unwrap_or_else(|| "anonymous".into());
        let metadata = serde_json::json!({ "sip_call_id": dialog.id, "sip_peer": dialog.peer.addr.to_string(), "sip_transport": dialog.peer.transport.to_string() });
        let admitted = match inbound::admit(&self.state, &to, &from, metadata).await {
            Ok(admitted) => admitted,
            Err(Refusal::NotInService) => return self.refuse(&dialog, 404, "Not Found").await,
            Err(Refusal::Busy) => return self.refuse(&dialog, 486, "Busy Here").await,
            Err(Refusal::Unavailable) => return self.refuse(&dialog, 503, "Service Unavailable").await,
        };
        let media = match UdpSocket::bind(SocketAddr::new(self.config.bind.ip(), 0)).await {
            Ok(socket) => socket,
            Err(error) => {
                tracing::error!(%error, "cannot open an RTP socket");
                let _ = self.state.store.set_call_status(&admitted.call.id, CallStatus::Failed, Some("no RTP port could be opened")).await;
                return self.refuse(&dialog, 503, "Service Unavailable").await;
            }
        };
        let port = media.local_addr().map(|a| a.port()).unwrap_or_default();
        let ours = OurSdp::answering(self.address, port, &offer);
        let sdp = ours.sdp.clone();
        let control = Arc::new(SipControl { endpoint: self.clone(), dialog: dialog.clone() });
        let (line, input, outgoing) = StreamLine::start(&format!("sip:{}", dialog.id), sip::RATE, Some(control));
        let cancelled = {
            let mut state = dialog.lock();
            state.line = Some(line.clone());
            state.call = Some(admitted.call.id.clone());
            state.sdp = Some(ours);
            // From here a CANCEL is too late: the answer is on its way.
            state.answered = !state.cancelled;
            state.cancelled
        };
        tracing::info!(call = %admitted.call.id, sip_call = %dialog.id, peer = %dialog.peer, codec = offer.codec.name(), "answering a SIP call");
        self.state.runner.start(admitted.call, admitted.assistant, admitted.owner, Connect::Line(line.clone(), input), admitted.record);
        if cancelled {
            // CANCEL came while the call was admitted: it ends before it is answered.
            dialog.lock().ended_by_peer = true;
            line.close();
            return;
        }
        let (offers, offered) = watch::channel(offer);
        dialog.lock().media = Some(offers);
        tokio::spawn(carry_media(line.clone(), media, offered, outgoing));
        let contact = self.contact(dialog.peer.transport);
        let mut headers = vec![("Contact", contact.as_str()), ("Allow", ALLOW), ("Supported", sip::SUPPORTED)];
        let granted = timer.map(|timer| timer.header(Refresher::Uas));
        if let Some(granted) = &granted {
            headers.push(("Session-Expires", granted));
            if sip::has_option(&dialog.invite, "timer") {
                headers.push(("Require", "timer"));
            }
        }
        dialog.lock().peer_updates = sip::allows(&dialog.invite, "UPDATE");
        dialog.retime(timer);
        let ok = self.final_response(&dialog, 200, "OK", &headers, Some(("application/sdp", &sdp))).await;
        tokio::spawn(self.clone().keep_session(dialog.clone(), line.clone()));
        let (endpoint, acked) = (self.clone(), dialog.clone());
        let unacked = line.clone();
        tokio::spawn(async move {
            if !endpoint.resend_until_acked(&acked, &ok).await {
                unacked.fail("the SIP peer never acknowledged the answer (no ACK)");
            }
        });
        self.until_ended(dialog, line).await;
    }

    /// Waits for the call to end; unless the peer ended it, tells the peer with BYE.
    async fn until_ended(self: Arc<Self>, dialog: Arc<Dialog>, line: StreamLine) {
        line.ended().cancelled().await;
        if !dialog.lock().ended_by_peer {
            if let Some(code) = self.request(&dialog, "BYE", &[]).await {
                tracing::debug!(sip_call = %dialog.id, code, "the peer answered our BYE");
            } else {
                tracing::info!(sip_call = %dialog.id, "the peer did not answer our BYE");
            }
        }
        self.dialogs().remove(&dialog.id);
    }

    /// The user our registration put in the Contact the trunk calls: an INVITE to it names the
    /// dialled number in To.
    fn registered_user(&self) -> Option<&str> {
        self.config.credentials.as_ref().filter(|_| self.config.register).map(|c| c.user.as_str())
    }

    /// Keeps this server registered at the trunk (RFC 3261 section 10): REGISTER with our
    /// Contact, a challenge answered with the credentials, refreshed at half the time granted,
    /// tried again after a failure; withdrawn (Expires 0) when the server stops.
    async fn stay_registered(self: Arc<Self>, shutdown: CancellationToken) {
        let (Some(trunk), Some(credentials)) = (self.config.trunk, self.config.credentials.clone()) else { return };
        let trunk = Peer::new(trunk, self.config.trunk_transport);
        let binding = Registration { call_id: format!("{}@{}", random_hex(8), self.host), tag: random_hex(8), trunk, user: credentials.user.clone() };
        let mut cseq = 0;
        loop {
            let (wait, registered) = match self.register(&binding, &mut cseq, REGISTER_EXPIRES).await {
                Ok(granted) => {
                    tracing::info!(trunk = %trunk, user = %binding.user, granted_s = granted, "registered with the SIP trunk");
                    (Duration::from_secs(u64::from(granted / 2).max(1)), true)
                }
                Err(problem) => {
                    tracing::warn!(trunk = %trunk, problem, "registering with the SIP trunk failed; trying again in {} s", REGISTER_RETRY.as_secs());
                    (REGISTER_RETRY, false)
                }
            };
            // A NAT forgets an idle UDP mapping within a minute or two, sooner than a refresh
            // comes: between refreshes a keep-alive holds it open.
            let mut keepalive = self.config.keepalive.filter(|_| registered).map(|every| tokio::time::interval_at(tokio::time::Instant::now() + every, every));
            let refresh = tokio::time::sleep(wait);
            tokio::pin!(refresh);
            loop {
                let due = async {
                    match keepalive.as_mut() {
                        Some(keepalive) => keepalive.tick().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = shutdown.cancelled() => return self.unregister(&binding, &mut cseq).await,
                    _ = &mut refresh => break,
                    _ = due => self.send("\r\n\r\n", trunk).await,
                }
            }
        }
    }

    /// The registration withdrawn at shutdown (`Expires: 0`), not waited for long.
    async fn unregister(&self, binding: &Registration, cseq: &mut u32) {
        let _ = tokio::time::timeout(Duration::from_secs(3), self.register(binding, cseq, 0)).await;
    }

    /// One registration (or, with `expires` 0, its withdrawal): the seconds granted, or why not.
    async fn register(&self, binding: &Registration, cseq: &mut u32, expires: u32) -> Result<u32, String> {
        let target = format!("sip:{}{}", binding.trunk.addr, binding.trunk.transport.uri_param());
        let aor = format!("<sip:{}@{}>", binding.user, binding.trunk.addr);
        let contact = format!("<sip:{}@{}{}>", binding.user, self.host, binding.trunk.transport.uri_param());
        let (from, expires_text) = (format!("{aor};tag={}", binding.tag), expires.to_string());
        let mut authorization: Option<(&str, String)> = None;
        for _ in 0..2 {
            *cseq += 1;
            let branch = branch();
            let mut headers = vec![("Contact", contact.as_str()), ("Expires", expires_text.as_str())];
            headers.extend(authorization.as_ref().map(|(name, value)| (*name, value.as_str())));
            let text = InDialog { method: "REGISTER", target: &target, route: &[], via: &self.via(binding.trunk), branch: &branch, from: &from, to: &aor, call_id: &binding.call_id, cseq: *cseq }.render(&headers);
            let (tx, rx) = oneshot::channel();
            self.pending.lock().unwrap_or_else(|e| e.into_inner()).insert(branch.clone(), tx);
            let response = self.transact(&text, binding.trunk, rx).await;
            self.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&branch);
            let response = response.ok_or("the trunk did not answer the REGISTER")?;
            let StartLine::Response { code, reason } = &response.start else { return Err("not a response".into()) };
            match code {
                200..=299 => {
                    // The time granted: our Contact's `expires`, else the Expires header.
                    let ours = response.headers("contact").find(|c| sip::uri_of(c) == sip::uri_of(&contact));
                    let granted = ours.and_then(|c| sip::param(c, "expires")).or_else(|| response.header("expires")).and_then(|e| e.trim().parse().ok());
                    return Ok(granted.unwrap_or(expires));
                }
                401 | 407 if authorization.is_none() => {
                    let credentials = self.config.credentials.as_ref().ok_or("no credentials to answer its challenge")?;
                    authorization = Some(answer_challenge(&response, *code, credentials, "REGISTER", &target).map_err(|problem| format!("its challenge: {problem}"))?);
                }
                401 | 407 => return Err(format!("the trunk refused --sip-trunk-user's credentials ({code} {reason})")),
                _ => return Err(format!("the trunk answered {code} {reason}")),
            }
        }
        Err("the trunk challenged the REGISTER twice".into())
    }

    /// Sends `text` to `to`, resent on SIP's timers (over UDP) until `answered` brings the final
    /// response.
    async fn transact(&self, text: &str, to: Peer, answered: oneshot::Receiver<Message>) -> Option<Message> {
        tokio::pin!(answered);
        let mut wait = T1;
        for attempt in 0..7 {
            if attempt == 0 || !to.transport.reliable() {
                self.send(text, to).await;
            }
            tokio::select! {
                response = &mut answered => return response.ok(),
                _ = tokio::time::sleep(wait) => wait = (wait * 2).min(T2),
            }
        }
        None
    }

    /// Sends a request within the dialog and waits for its final status, retransmitting on
    /// SIP's timers; `None` when none came. A trunk that challenges it (401/407) gets it once
    /// more with the trunk's credentials, as the INVITE did.
    async fn request(&self, dialog: &Dialog, method: &str, extra: &[(&str, &str)]) -> Option<u16> {
        self.exchange(dialog, method, extra, None).await.and_then(|response| response.code())
    }

    /// [`Endpoint::request`] with a body (a re-INVITE's SDP): the final response itself.
    async fn exchange(&self, dialog: &Dialog, method: &str, extra: &[(&str, &str)], body: Option<(&str, &str)>) -> Option<Message> {
        let response = self.request_once(dialog, method, extra, body, None).await?;
        let code = response.code()?;
        if !matches!(code, 401 | 407) {
            return Some(response);
        }
        // The trunk's credentials go to the trunk only.
        let Some(credentials) = self.config.credentials.as_ref().filter(|_| self.config.trunk == Some(dialog.peer.addr)) else { return Some(response) };
        let target = dialog.lock().target.clone();
        let (answer_with, authorization) = match answer_challenge(&response, code, credentials, method, &target) {
            Ok(answer) => answer,
            Err(problem) => {
                tracing::warn!(sip_call = %dialog.id, method, problem, "the SIP trunk's challenge cannot be answered");
                return Some(response);
            }
        };
        self.request_once(dialog, method, extra, body, Some((answer_with, &authorization))).await
    }

    /// One transaction of [`Endpoint::exchange`]: its final response, `None` when none came.
    /// An INVITE's refusal is acknowledged within the transaction (its 2xx is the caller's to
    /// acknowledge).
    async fn request_once(&self, dialog: &Dialog, method: &str, extra: &[(&str, &str)], body: Option<(&str, &str)>, authorization: Option<(&str, &str)>) -> Option<Message> {
        let branch = branch();
        let (answered, cseq, local, remote, target, route) = {
            let (tx, rx) = oneshot::channel();
            let mut state = dialog.lock();
            state.cseq += 1;
            state.waiting.insert(branch.clone(), tx);
            (rx, state.cseq, state.local.clone(), state.remote.clone(), state.target.clone(), state.route.clone())
        };
        let mut headers = extra.to_vec();
        headers.extend(authorization);
        let via = self.via(dialog.peer);
        let request = InDialog { method, target: &target, route: &route, via: &via, branch: &branch, from: &local, to: &remote, call_id: &dialog.id, cseq };
        let response = self.transact(&request.render_with(&headers, body), dialog.peer, answered).await;
        dialog.lock().waiting.remove(&branch);
        if let (Some(refusal), "INVITE") = (response.as_ref().filter(|r| r.code().is_some_and(|code| code >= 300)), method) {
            let ack = InDialog { method: "ACK", to: refusal.header("to").unwrap_or(&remote), ..request }.render(&[]);
            self.send(&ack, dialog.peer).await;
        }
        response
    }

    /// Our hold, asked through the API: re-INVITEs offering `sendonly` (or `sendrecv`, off
    /// hold) until the session says what the API last asked, so that the peer knows — a phone
    /// shows the call held, a PBX plays its music. A glare (491: the peer re-INVITEd at the same
    /// moment) is tried again after a random wait (RFC 3261, section 14.1); any other refusal
    /// leaves the media as it was.
    ///
    /// The dialog's one such task ([`DialogState::holding_task`]) runs this; it ends (clearing
    /// the flag under the lock that the API's requests take) only when there is nothing left
    /// to offer, so no request is left unserved.
    async fn hold(&self, dialog: &Dialog) {
        let mut glares = 0;
        loop {
            let (sdp, on) = {
                let mut guard = dialog.lock();
                let state = &mut *guard;
                let call = state.media.as_ref().map(|media| media.borrow().clone());
                let (Some(call), Some(ours), false) = (call, state.sdp.as_mut(), state.ended_by_peer) else {
                    state.holding_task = false;
                    return;
                };
                let on = state.hold_wanted;
                if ours.holding == on {
                    state.holding_task = false;
                    return;
                }
                let sdp = ours.reoffer(self.address, &call, on);
                state.reoffering = true;
                (sdp, on)
            };
            let response = self.reinvite_ours(dialog, &sdp).await;
            let code = response.as_ref().and_then(Message::code);
            {
                let mut state = dialog.lock();
                state.reoffering = false;
                if !code.is_some_and(|code| (200..300).contains(&code)) {
                    // Refused or unanswered: the session stays as it was.
                    if let Some(ours) = state.sdp.as_mut() {
                        ours.holding = !on;
                    }
                }
            }
            match (response, code) {
                // Taken; the API may have asked otherwise meanwhile.
                (Some(ok), Some(200..=299)) => self.reoffer_answered(dialog, &ok, if on { "hold" } else { "unhold" }).await,
                (_, Some(491)) if glares < 2 => {
                    glares += 1;
                    // We placed the call (own its Call-ID): 2.1–4 s; we answered it: 0–2 s.
                    let wait = if dialog.placed { 2_100 + rand::random::<u64>() % 1_900 } else { rand::random::<u64>() % 2_000 };
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                }
                (_, code) => {
                    tracing::warn!(sip_call = %dialog.id, ?code, hold = on, "the SIP peer did not take our hold's offer: the call's media stays as it was");
                    let mut state = dialog.lock();
                    // Asked otherwise meanwhile: that is offered next.
                    if state.hold_wanted == on {
                        state.holding_task = false;
                        return;
                    }
                }
            }
        }
    }

    /// The peer's 2xx to our re-INVITE (`what` it was for: a hold, an unhold, a session
    /// refresh): acknowledged (again when it comes again), the session refreshed, and its answer
    /// is where and how our audio goes from now on.
    async fn reoffer_answered(&self, dialog: &Dialog, ok: &Message, what: &str) {
        timer_answered(dialog, ok, what);
        let (ack, media) = {
            let mut state = dialog.lock();
            let cseq = ok.cseq().map(|(number, _)| number).unwrap_or(state.cseq);
            let ack = InDialog { method: "ACK", target: &state.target, route: &state.route, via: &self.via(dialog.peer), branch: &branch(), from: &state.local, to: &state.remote, call_id: &dialog.id, cseq }.render(&[]);
            state.reoffer_ack = Some((cseq, ack.clone()));
            (ack, state.media.clone())
        };
        self.send(&ack, dialog.peer).await;
        let Some(media) = media else { return };
        let codec = media.borrow().codec;
        match sip::parse_offer_preferring(&ok.body, Some(codec)) {
            Ok(answer) if answer.codec == codec => {
                tracing::info!(sip_call = %dialog.id, what, direction = ?answer.direction, "the SIP peer took our offer");
                media.send_if_modified(|current| {
                    let changed = *current != answer;
                    *current = answer;
                    changed
                });
            }
            Ok(_) => tracing::warn!(sip_call = %dialog.id, what, "the SIP peer answered our offer in another codec: the call's media stays as it was"),
            Err(problem) => tracing::warn!(sip_call = %dialog.id, what, problem, "the SIP peer's answer to our offer cannot be read: the call's media stays as it was"),
        }
    }

    /// A retransmitted INVITE gets the last response again; a re-INVITE (a refreshed session,
    /// hold) keeps the media as it is.
    async fn reinvite(&self, dialog: &Dialog, message: &Message, source: Peer) {
        let same = message.branch() == dialog.invite.branch() && message.cseq() == dialog.invite.cseq();
        let last = dialog.lock().last_response.clone();
        match (same, last) {
            (true, Some(last)) => self.send(&last, source).await,
            (true, None) => {}
            (false, _) => self.reoffer(dialog, message, source).await,
        }
    }

    /// A re-INVITE or UPDATE within the call. Without SDP it refreshes the session, answered as
    /// it stands; a new offer may move the peer's media (another address or port, or a hold at
    /// 0.0.0.0), in the codec the call speaks.
    async fn reoffer(&self, dialog: &Dialog, message: &Message, source: Peer) {
        let (media, call, glare) = {
            let state = dialog.lock();
            (state.media.clone(), state.call.clone(), state.reoffering)
        };
        let offered = !message.body.trim().is_empty();
        if glare && (offered || message.method() == Some("INVITE")) {
            // Our own offer waits for its answer: the peer tries again later (RFC 3261 14.2).
            return self.reply(message, source, 491, "Request Pending", &[]).await;
        }
        // A refresh may set the session timer anew (RFC 4028, section 9); one we cannot grant is
        // refused before anything changes, and the session stays as it was.
        let timer = match sip::session_timer(message) {
            Ok(timer) => timer.map(|timer| KeptSession::named(timer, Refresher::Uas)),
            Err(TimerRefusal::TooSmall(_)) => {
                let floor = sip::MIN_SESSION_EXPIRES.to_string();
                return self.reply(message, source, 422, "Session Interval Too Small", &[("Min-SE", &floor)]).await;
            }
            Err(TimerRefusal::Malformed(problem)) => return self.reply(message, source, 400, &format!("Bad Request ({problem})"), &[]).await,
        };
        let mut new_offer = None;
        if let (true, Some(media)) = (offered, &media) {
            let codec = media.borrow().codec;
            match sip::parse_offer_preferring(&message.body, Some(codec)) {
                Ok(offer) if offer.codec == codec => {
                    let listened = media.borrow().receives();
                    if *media.borrow() != offer {
                        tracing::info!(sip_call = %dialog.id, address = %offer.address, port = offer.port, direction = ?offer.direction, "the SIP peer changed the call's media");
                        media.send_replace(offer.clone());
                    }
                    // A peer that stops taking our audio holds the agent (its hold key, its
                    // music): the agent waits as on the API's hold, neither speaking nor hearing
                    // the music, its idle time not counted, until the peer takes audio again.
                    if let (Some(call), true) = (&call, offer.receives() != listened) {
                        self.state.runner.held_by_far_end(call, !offer.receives()).await;
                    }
                    new_offer = Some(offer);
                }
                Ok(_) => return self.reply(message, source, 488, &format!("Not Acceptable Here (the call speaks {}; the new offer does not)", codec.name()), &[]).await,
                Err(problem) => return self.reply(message, source, 488, &format!("Not Acceptable Here ({problem})"), &[]).await,
            }
        }
        // The answer mirrors the new offer's direction (a hold is answered as one).
        let sdp = match (dialog.lock().sdp.as_mut(), &new_offer) {
            (Some(ours), Some(offer)) => Some(ours.answer(self.address, offer)),
            (ours, _) => ours.map(|ours| ours.sdp.clone()),
        };
        // An UPDATE is answered with SDP only when it made an offer; an INVITE always is.
        let body = sdp.as_deref().filter(|_| offered || message.method() == Some("INVITE")).map(|s| ("application/sdp", s));
        let contact = self.contact(dialog.peer.transport);
        // Without a Session-Expires of its own, the session goes on as it was granted.
        let timer = timer.or(dialog.lock().timer);
        dialog.retime(timer);
        let timer = timer.map(|timer| timer.header(Refresher::Uas));
        let mut headers = vec![("Contact", contact.as_str())];
        if let Some(timer) = &timer {
            // The session goes on as granted (RFC 4028, section 9).
            headers.push(("Session-Expires", timer));
            if sip::has_option(message, "timer") {
                headers.push(("Require", "timer"));
            }
        }
        let text = sip::response(message, 200, "OK", Some(&dialog.our_tag), &headers, body);
        self.send(&text, source).await;
    }

    /// Keeps the session's timer (RFC 4028) for as long as the call lasts: when it is ours to
    /// refresh, a refresh (UPDATE or re-INVITE) every half interval; when it is the peer's, the call ends (with BYE)
    /// if no refresh comes before the session would run out. Any re-INVITE or UPDATE either way
    /// counts, and may set the timer anew (or turn it off, or on).
    async fn keep_session(self: Arc<Self>, dialog: Arc<Dialog>, line: StreamLine) {
        let ended = line.ended();
        loop {
            let (since, timer) = {
                let state = dialog.lock();
                (state.refreshed.unwrap_or_else(tokio::time::Instant::now), state.timer)
            };
            let due = async {
                match timer {
                    Some(timer) => tokio::time::sleep_until(since + timer.due()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = ended.cancelled() => return,
                _ = dialog.retimed.notified() => continue,
                _ = due => {}
            }
            let Some(timer) = timer else { continue };
            if dialog.lock().refreshed != Some(since) {
                continue; // refreshed meanwhile
            }
            if !timer.ours {
                tracing::warn!(sip_call = %dialog.id, interval_s = timer.interval, "the SIP peer did not refresh the session: hanging up");
                return line.fail(&format!("the SIP session expired: the peer did not refresh it within its {} s (RFC 4028 session timer)", timer.interval));
            }
            if let Err(problem) = self.refresh(&dialog).await {
                tracing::warn!(sip_call = %dialog.id, problem, "our SIP session refresh failed: hanging up");
                return line.fail(&format!("the SIP session could not be refreshed: {problem}"));
            }
        }
    }

    /// Our refresh of the session: an UPDATE without SDP to a peer that allows it (one that
    /// then refuses it with 405 or 501 gets re-INVITEs), else a re-INVITE offering what we
    /// offered last, unchanged. A hold offer under way refreshes it as well; a glare is tried
    /// again after a random wait. A 408 or 481, or no answer, means the session is gone (RFC
    /// 4028, section 10).
    async fn refresh(&self, dialog: &Dialog) -> Result<(), String> {
        let sdp = {
            let mut state = dialog.lock();
            if state.reoffering || state.holding_task {
                state.refreshed = Some(tokio::time::Instant::now());
                return Ok(());
            }
            if state.peer_updates {
                None
            } else {
                let Some(sdp) = state.sdp.as_ref().map(|ours| ours.sdp.clone()) else { return Ok(()) };
                state.reoffering = true;
                Some(sdp)
            }
        };
        let response = match &sdp {
            Some(sdp) => self.reinvite_ours(dialog, sdp).await,
            None => {
                let expires = dialog.lock().timer.map(|timer| timer.header(Refresher::Uac));
                let mut headers = vec![("Supported", sip::SUPPORTED)];
                headers.extend(expires.as_deref().map(|expires| ("Session-Expires", expires)));
                self.exchange(dialog, "UPDATE", &headers, None).await
            }
        };
        if sdp.is_some() {
            dialog.lock().reoffering = false;
        }
        match response {
            Some(ok) if ok.code().is_some_and(|code| (200..300).contains(&code)) => {
                if sdp.is_some() {
                    self.reoffer_answered(dialog, &ok, "refresh").await;
                } else {
                    timer_answered(dialog, &ok, "refresh");
                }
                Ok(())
            }
            Some(refused) => match refused.code().unwrap_or_default() {
                408 | 481 => Err(format!("the peer answered {}", refused.code().unwrap_or_default())),
                // An UPDATE the peer does not take after all: a re-INVITE at once, and from now on.
                405 | 501 if sdp.is_none() => {
                    dialog.lock().peer_updates = false;
                    Ok(())
                }
                491 => {
                    tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % 2_000)).await;
                    Ok(()) // not refreshed: tried again at once
                }
                code => {
                    // The session stands; the next refresh comes at the next half interval.
                    tracing::info!(sip_call = %dialog.id, code, "the SIP peer refused our session refresh");
                    dialog.lock().refreshed = Some(tokio::time::Instant::now());
                    Ok(())
                }
            },
            None => Err("the peer did not answer".into()),
        }
    }

    /// Our re-INVITE offering `sdp` (a hold, an unhold, a refresh): it refreshes the session
    /// too, naming the timer as it stands with us as the transaction's `uac` (RFC 4028, 7.4).
    async fn reinvite_ours(&self, dialog: &Dialog, sdp: &str) -> Option<Message> {
        let contact = self.contact(dialog.peer.transport);
        let expires = dialog.lock().timer.map(|timer| timer.header(Refresher::Uac));
        let mut headers = vec![("Contact", contact.as_str()), ("Allow", ALLOW), ("Supported", sip::SUPPORTED)];
        if let Some(expires) = &expires {
            headers.push(("Session-Expires", expires));
        }
        self.exchange(dialog, "INVITE", &headers, Some(("application/sdp", sdp))).await
    }

    fn ack(&self, dialog: &Dialog, _message: &Message) {
        let remove = {
            let mut state = dialog.lock();
            state.acked = true;
            // The ACK of a refusal closes a dialog that never had a call.
            state.line.is_none() && state.answered
        };
        if remove {
            self.dialogs().remove(&dialog.id);
        }
    }

    async fn bye(&self, dialog: &Dialog, message: &Message, source: Peer) {
        self.reply(message, source, 200, "OK", &[]).await;
        let line = {
            let mut state = dialog.lock();
            state.ended_by_peer = true;
            state.line.clone()
        };
        if let Some(line) = line {
            line.close();
        }
        self.dialogs().remove(&dialog.id);
    }

    /// CANCEL before the answer ends the INVITE with 487; after it, it changes nothing.
    async fn cancel(self: &Arc<Self>, dialog: &Arc<Dialog>, message: &Message, source: Peer) {
        self.reply(message, source, 200, "OK", &[]).await;
        let pending = {
            let mut state = dialog.lock();
            let pending = !state.answered;
            if pending {
                state.cancelled = true;
            }
            pending
        };
        if pending {
            self.refuse(dialog, 487, "Request Terminated").await;
        }
    }
}

/// Places calls through the configured trunk.
pub struct Dialer(Arc<Endpoint>);

/// How a call we placed ended before it was answered.
pub struct NotAnswered {
    pub status: CallStatus,
    pub reason: String,
}

fn not_answered(status: CallStatus, reason: impl Into<String>) -> NotAnswered {
    NotAnswered { status, reason: reason.into() }
}

impl Dialer {
    /// Calls `call.to_number` through the trunk from `call.from_number`, and waits up to `within`
    /// for the answer: the answered call's line and input, or how it ended.
    pub async fn place(&self, call: &CallRecord, within: Duration) -> Result<(StreamLine, CallInput), NotAnswered> {
        self.0.clone().place(call, within).await
    }
}

impl Endpoint {
    async fn place(self: Arc<Self>, call: &CallRecord, within: Duration) -> Result<(StreamLine, CallInput), NotAnswered> {
        let Some(trunk_addr) = self.config.trunk else { return Err(not_answered(CallStatus::Failed, "no SIP trunk is configured (--sip-trunk)")) };
        let trunk = Peer::new(trunk_addr, self.config.trunk_transport);
        let number_only = |n: &str| !n.is_empty() && n.len() <= 32 && n.bytes().enumerate().all(|(i, b)| b.is_ascii_digit() || (i == 0 && b == b'+'));
        if !number_only(&call.to_number) || !number_only(&call.from_number) {
            return Err(not_answered(CallStatus::Failed, format!("a SIP call needs E.164 numbers; to `{}`, from `{}`", call.to_number.escape_default(), call.from_number.escape_default())));
        }
        let media = UdpSocket::bind(SocketAddr::new(self.config.bind.ip(), 0)).await.map_err(|e| not_answered(CallStatus::Failed, format!("no RTP port could be opened: {e}")))?;
        let port = media.local_addr().map(|a| a.port()).unwrap_or_default();
        let our_tag = random_hex(8);
        let ours = OurSdp::offering(self.address, port);
        let mut invite = Invite {
            target: format!("sip:{}@{trunk_addr}{}", call.to_number, trunk.transport.uri_param()),
            local: format!("<sip:{}@{}>;tag={our_tag}", call.from_number, self.host),
            to: format!("<sip:{}@{trunk_addr}>", call.to_number),
            id: format!("{}@{}", random_hex(12), self.address),
            sdp: ours.sdp.clone(),
            via: self.via(trunk),
            contact: self.contact(trunk.transport),
            session_expires: sip::SESSION_EXPIRES,
            min_se: sip::MIN_SESSION_EXPIRES,
        };
        let first = invite.render(1, &branch(), None);
        let parsed = sip::parse(first.as_bytes()).map_err(|e| not_answered(CallStatus::Failed, format!("our INVITE: {e}")))?;
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let state = DialogState {
            local: invite.local.clone(),
            remote: invite.to.clone(),
            target: invite.target.clone(),
            invite_responses: Some(events_tx),
            answered: true,
            acked: true,
            sdp: Some(ours),
            ..DialogState::default()
        };
        let dialog = Arc::new(Dialog { id: invite.id.clone(), peer: trunk, invite: parsed, our_tag, placed: true, state: Mutex::new(state), retimed: Default::default() });
        if self.dialogs().len() >= MAX_DIALOGS {
            return Err(not_answered(CallStatus::Failed, "this server holds too many SIP dialogs"));
        }
        self.dialogs().insert(invite.id.clone(), dialog.clone());
        tracing::info!(call = %call.id, sip_call = %invite.id, %trunk, "placing a SIP call");
        let outcome = self.ring(&dialog, &mut invite, first, &mut events, within, &call.id).await;
        dialog.lock().invite_responses = None;
        let (answer, ok, cseq) = match outcome {
            Ok(answered) => answered,
            Err(not) => {
                self.dialogs().remove(&invite.id);
                return Err(not);
            }
        };
        // The peer's side of the dialog: its tag and its Contact.
        let remote = ok.header("to").unwrap_or(&invite.to).to_string();
        let contact = ok.header("contact").map(sip::uri_of).filter(|c| !c.is_empty()).unwrap_or(&invite.target).to_string();
        let route: Vec<String> = ok.record_route().into_iter().rev().collect();
        let ack = InDialog { method: "ACK", target: &contact, route: &route, via: &self.via(dialog.peer), branch: &branch(), from: &invite.local, to: &remote, call_id: &invite.id, cseq }.render(&[]);
        {
            let mut state = dialog.lock();
            state.remote = remote;
            state.target = contact;
            state.route = route;
            state.ack = Some(ack.clone());
            // Our next request in the dialog (a BYE) counts on from the INVITE.
            state.cseq = cseq;
        }
        self.send(&ack, trunk).await;
        let answer = match answer {
            Ok(answer) => answer,
            Err(problem) => {
                let endpoint = self.clone();
                tokio::spawn(async move {
                    endpoint.request(&dialog, "BYE", &[]).await;
                    endpoint.dialogs().remove(&dialog.id);
                });
                return Err(not_answered(CallStatus::Failed, format!("the callee's SDP answer cannot be spoken: {problem}")));
            }
        };
        let control = Arc::new(SipControl { endpoint: self.clone(), dialog: dialog.clone() });
        let (line, input, outgoing) = StreamLine::start(&format!("sip:{}", invite.id), sip::RATE, Some(control));
        let (offers, offered) = watch::channel(answer);
        {
            let mut state = dialog.lock();
            state.line = Some(line.clone());
            state.call = Some(call.id.clone());
            state.media = Some(offers);
        }
        // The session timer the callee's answer set, if any (RFC 4028, section 7.2).
        let timer = match sip::answered_timer(&ok) {
            Ok(timer) => timer.map(|timer| KeptSession::named(timer, Refresher::Uac)),
            Err(problem) => {
                tracing::warn!(sip_call = %dialog.id, problem, "the callee's session timer cannot be read: we refresh at the interval we asked");
                Some(KeptSession { interval: invite.session_expires, ours: true })
            }
        };
        dialog.lock().peer_updates = sip::allows(&ok, "UPDATE");
        dialog.retime(timer);
        tokio::spawn(carry_media(line.clone(), media, offered, outgoing));
        tokio::spawn(self.clone().keep_session(dialog.clone(), line.clone()));
        tokio::spawn(self.clone().until_ended(dialog, line.clone()));
        Ok((line, input))
    }

    /// Sends the INVITE (resent until the trunk responds; once more with credentials if the
    /// trunk challenges it, and once more with a longer session interval if the callee asks for
    /// one with 422) and waits for its final response, cancelling it after `within`: the 200 OK
    /// with its SDP read and the INVITE's CSeq, or how the call ended.
    async fn ring(&self, dialog: &Dialog, invite: &mut Invite, first: String, events: &mut mpsc::UnboundedReceiver<Message>, within: Duration, call_id: &str) -> Result<(Result<Offer, String>, Message, u32), NotAnswered> {
        let deadline = tokio::time::Instant::now() + within;
        // A hang-up asked for while the call rings (the API's end, which marks it `ending`).
        let mut hung_up = tokio::time::interval_at(tokio::time::Instant::now() + Duration::from_secs(1), Duration::from_secs(1));
        let (mut text, mut cseq, mut challenged, mut stretched) = (first, 1u32, false, false);
        // The credentials that answered the trunk's challenge, for an INVITE sent again after it.
        let mut authorization: Option<(&'static str, String)> = None;
        let mut current = sip::parse(text.as_bytes()).map_err(|e| not_answered(CallStatus::Failed, format!("our INVITE: {e}")))?;
        let mut heard = false;
        let mut wait = T1;
        let mut next_send = tokio::time::Instant::now();
        // Over TCP each INVITE goes once; over UDP again on SIP's timers until the trunk is heard.
        let mut unsent = true;
        loop {
            if !heard && tokio::time::Instant::now() >= next_send {
                if unsent || !dialog.peer.transport.reliable() {
                    self.send(&text, dialog.peer).await;
                    unsent = false;
                }
                next_send = tokio::time::Instant::now() + wait;
                wait = (wait * 2).min(T2);
            }
            let until = if heard { deadline } else { next_send.min(deadline) };
            let response = tokio::select! {
                response = events.recv() => response,
                _ = hung_up.tick() => {
                    if !self.state.runner.still_open(call_id).await {
                        self.cancel_invite(dialog, &current, events).await;
                        return Err(not_answered(CallStatus::Canceled, "ended before it was answered"));
                    }
                    continue;
                }
                _ = tokio::time::sleep_until(until) => {
                    if tokio::time::Instant::now() >= deadline {
                        self.cancel_invite(dialog, &current, events).await;
                        let why = if heard { "no answer" } else { "the SIP trunk never responded" };
                        return Err(not_answered(if heard { CallStatus::NoAnswer } else { CallStatus::Failed }, why));
                    }
                    continue;
                }
            };
            let Some(response) = response else { return Err(not_answered(CallStatus::Failed, "the SIP endpoint stopped")) };
            let StartLine::Response { code, reason } = &response.start else { continue };
            if response.cseq().map(|(number, _)| number) != Some(cseq) {
                continue; // a late response to the INVITE before the credentials
            }
            heard = true;
            match code {
                100..=199 => continue,
                200..=299 => return Ok((sip::parse_offer(&response.body), response, cseq)),
                401 | 407 if !challenged && self.config.credentials.is_some() => {
                    self.ack_refusal(dialog, &current, &response).await;
                    let credentials = self.config.credentials.as_ref().expect("checked by the match guard");
                    let answered = answer_challenge(&response, *code, credentials, "INVITE", &invite.target).map_err(|problem| not_answered(CallStatus::Failed, format!("the SIP trunk's challenge: {problem}")))?;
                    authorization = Some(answered);
                    (cseq, challenged, heard, wait, unsent) = (cseq + 1, true, false, T1, true);
                    text = invite.render(cseq, &branch(), authorization.as_ref().map(|(name, value)| (*name, value.as_str())));
                    current = sip::parse(text.as_bytes()).map_err(|e| not_answered(CallStatus::Failed, format!("our INVITE: {e}")))?;
                    next_send = tokio::time::Instant::now();
                }
                // The callee takes no session this short: asked again, once, at its Min-SE.
                422 if !stretched && sip::min_session_expires(&response).is_some_and(|least| least > invite.session_expires && least <= sip::MAX_SESSION_EXPIRES) => {
                    self.ack_refusal(dialog, &current, &response).await;
                    let least = sip::min_session_expires(&response).expect("checked by the match guard");
                    (invite.session_expires, invite.min_se) = (least, least);
                    (cseq, stretched, heard, wait, unsent) = (cseq + 1, true, false, T1, true);
                    text = invite.render(cseq, &branch(), authorization.as_ref().map(|(name, value)| (*name, value.as_str())));
                    current = sip::parse(text.as_bytes()).map_err(|e| not_answered(CallStatus::Failed, format!("our INVITE: {e}")))?;
                    next_send = tokio::time::Instant::now();
                }
                _ => {
                    self.ack_refusal(dialog, &current, &response).await;
                    let status = match code {
                        486 | 600 | 603 => CallStatus::Busy,
                        408 | 480 | 487 => CallStatus::NoAnswer,
                        _ => CallStatus::Failed,
                    };
                    let hint = match code {
                        401 | 407 if challenged => " (the trunk refused --sip-trunk-user's credentials)",
                        401 | 407 => " (the trunk asks for credentials: give --sip-trunk-user and RINGLINE_SIP_TRUNK_PASSWORD)",
                        _ => "",
                    };
                    return Err(not_answered(status, format!("the SIP trunk answered {code} {reason}{hint}")));
                }
            }
        }
    }

    /// ACKs a refusal of our INVITE `invite` (within its transaction: its branch and CSeq).
    async fn ack_refusal(&self, dialog: &Dialog, invite: &Message, response: &Message) {
        let StartLine::Request { uri, .. } = &invite.start else { return };
        let ack = InDialog {
            method: "ACK",
            target: uri,
            route: &[],
            via: &self.via(dialog.peer),
            branch: invite.branch().unwrap_or_default(),
            from: invite.header("from").unwrap_or_default(),
            to: response.header("to").unwrap_or_default(),
            call_id: &dialog.id,
            cseq: invite.cseq().map(|(n, _)| n).unwrap_or(1),
        }
        .render(&[]);
        self.send(&ack, dialog.peer).await;
    }

    /// CANCELs our ringing INVITE and waits a moment for how the INVITE ends: the trunk's 487
    /// is ACKed; a 200 OK that crossed the CANCEL is ACKed and hung up with BYE.
    async fn cancel_invite(&self, dialog: &Dialog, invite: &Message, events: &mut mpsc::UnboundedReceiver<Message>) {
        let StartLine::Request { uri, .. } = &invite.start else { return };
        let cseq = invite.cseq().map(|(n, _)| n).unwrap_or(1);
        let from = invite.header("from").unwrap_or_default();
        let cancel = InDialog { method: "CANCEL", target: uri, route: &[], via: &self.via(dialog.peer), branch: invite.branch().unwrap_or_default(), from, to: invite.header("to").unwrap_or_default(), call_id: &dialog.id, cseq }.render(&[]);
        self.send(&cancel, dialog.peer).await;
        let ended = tokio::time::timeout(T2, async {
            while let Some(response) = events.recv().await {
                match response.start {
                    StartLine::Response { code, .. } if code >= 200 && response.cseq().map(|(n, _)| n) == Some(cseq) => return Some((code, response)),
                    _ => {}
                }
            }
            None
        });
        match ended.await {
            Ok(Some((code, response))) if code >= 300 => self.ack_refusal(dialog, invite, &response).await,
            Ok(Some((_, ok))) => {
                let to = ok.header("to").unwrap_or_default();
                let target = ok.header("contact").map(sip::uri_of).filter(|c| !c.is_empty()).unwrap_or(uri);
                let route: Vec<String> = ok.record_route().into_iter().rev().collect();
                for (method, number) in [("ACK", cseq), ("BYE", cseq + 1)] {
                    let text = InDialog { method, target, route: &route, via: &self.via(dialog.peer), branch: &branch(), from, to, call_id: &dialog.id, cseq: number }.render(&[]);
                    self.send(&text, dialog.peer).await;
                }
            }
            _ => {}
        }
    }
}

/// The session refreshed by the peer's 2xx to our re-INVITE or UPDATE (`what` it was for), under
/// the timer the 2xx sets (RFC 4028, section 7.2).
fn timer_answered(dialog: &Dialog, ok: &Message, what: &str) {
    match sip::answered_timer(ok) {
        Ok(timer) => dialog.retime(timer.map(|timer| KeptSession::named(timer, Refresher::Uac))),
        Err(problem) => {
            tracing::warn!(sip_call = %dialog.id, what, problem, "the SIP peer's answer names a session timer that cannot be read: the timer stays as it was");
            let timer = dialog.lock().timer;
            dialog.retime(timer);
        }
    }
}

/// A call we place: what its INVITE says, sent again with credentials when challenged.
struct Invite {
    target: String,
    /// Our From (with our tag), and the callee's To (its tag comes with the answer).
    local: String,
    to: String,
    id: String,
    sdp: String,
    /// Our Via's transport and address, and our Contact.
    via: String,
    contact: String,
    /// The session interval asked for (RFC 4028), and the shortest we take: ours, or, once the
    /// callee refused a shorter one with 422, its `Min-SE`.
    session_expires: u32,
    min_se: u32,
}

impl Invite {
    fn render(&self, cseq: u32, branch: &str, authorization: Option<(&str, &str)>) -> String {
        let mut text = format!(
            "INVITE {} SIP/2.0\r\nVia: SIP/2.0/{};branch={branch};rport\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {cseq} INVITE\r\nContact: {}\r\nAllow: {ALLOW}\r\nSupported: {}\r\nSession-Expires: {}\r\nMin-SE: {}\r\n",
            self.target, self.via, self.local, self.to, self.id, self.contact, sip::SUPPORTED, self.session_expires, self.min_se
        );
        if let Some((name, value)) = authorization {
            text.push_str(&format!("{name}: {value}\r\n"));
        }
        text.push_str(&format!("Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{}", self.sdp.len(), self.sdp));
        text
    }
}

/// The number in a SIP user part: a bare run of digits long enough to be international is
/// taken as E.164 without its `+` (how many trunks send it).
fn number(user: &str) -> String {
    let digits = user.bytes().all(|b| b.is_ascii_digit());
    if digits && user.len() >= 8 {
        format!("+{user}")
    } else {
        user.to_string()
    }
}

/// Ends and transfers a SIP call: ending is the line's (its end sends BYE); a transfer asks the
/// peer with REFER, then the call ends here.
struct SipControl {
    endpoint: Arc<Endpoint>,
    dialog: Arc<Dialog>,
}

impl CallControl for SipControl {
    fn hang_up(&self) {}

    /// A peer whose offer or answer took telephone-events gets the agent's keys as events.
    fn sends_keys(&self) -> bool {
        self.dialog.lock().media.as_ref().is_some_and(|media| media.borrow().telephone_event.is_some())
    }

    fn hold(&self, on: bool) {
        {
            let mut state = self.dialog.lock();
            state.hold_wanted = on;
            // The running task takes the new wish on its next round.
            if std::mem::replace(&mut state.holding_task, true) {
                return;
            }
        }
        let (endpoint, dialog) = (self.endpoint.clone(), self.dialog.clone());
        tokio::spawn(async move { endpoint.hold(&dialog).await });
    }

    fn transfer(&self, destination: &str, done: CancellationToken) {
        let target = if destination.starts_with("sip:") || destination.starts_with("sips:") || destination.starts_with("tel:") {
            destination.to_string()
        } else {
            format!("sip:{destination}@{}", self.dialog.peer.addr.ip())
        };
        let (endpoint, dialog) = (self.endpoint.clone(), self.dialog.clone());
        tokio::spawn(async move {
            let refer_to = format!("<{target}>");
            let contact = endpoint.contact(dialog.peer.transport);
            match endpoint.request(&dialog, "REFER", &[("Refer-To", &refer_to), ("Contact", &contact)]).await {
                Some(code) if (200..300).contains(&code) => tracing::info!(sip_call = %dialog.id, %target, "the SIP peer took the transfer"),
                Some(code) => tracing::warn!(sip_call = %dialog.id, %target, code, "the SIP peer refused the transfer"),
                None => tracing::warn!(sip_call = %dialog.id, %target, "the SIP peer did not answer the transfer"),
            }
            done.cancel();
        });
    }
}

/// The peer's side of a call's RTP: audio in the agreed codec put back on the line's clock,
/// keys as telephone-events.
struct Receiver {
    offer: Offer,
    audio: JitterBuffer,
    last_event: Option<(u32, u32)>,
}

impl Receiver {
    fn new(offer: Offer) -> Self {
        Receiver { offer, audio: JitterBuffer::default(), last_event: None }
    }

    /// Takes one packet: its audio is held for [`Receiver::frame`]; a key pressed is returned.
    /// Other payload types (comfort noise) are silence, which the clock plays anyway.
    fn packet(&mut self, bytes: &[u8]) -> Result<Option<char>, String> {
        let rtp = sip::parse_rtp(bytes)?;
        if rtp.payload_type == self.offer.codec.payload_type() {
            self.audio.put(rtp.ssrc, rtp.timestamp, self.offer.codec.decode(rtp.payload));
        } else if Some(rtp.payload_type) == self.offer.telephone_event {
            // One key press spans several packets with one timestamp (its end sent three times).
            if let Some((key, _)) = sip::telephone_event(rtp.payload) {
                if self.last_event != Some((rtp.ssrc, rtp.timestamp)) {
                    self.last_event = Some((rtp.ssrc, rtp.timestamp));
                    return Ok(Some(key));
                }
            }
        }
        Ok(None)
    }

    /// The caller's next 20 ms: silence until the peer's audio begins. The listener hears
    /// time pass from the answer on, so what the agent played (the echo canceller's
    /// reference) stays in step with it even when the peer's first packet comes seconds late.
    fn frame(&mut self) -> Vec<f32> {
        self.audio.frame().unwrap_or_else(|| vec![0.0; crate::transport::jitter::FRAME as usize])
    }
}

/// Our side of a call's RTP: one packet per 20 ms frame, the timestamp following the clock
/// through the agent's silences, a talkspurt's first packet marked.
struct Sender {
    codec: sip::Codec,
    ssrc: u32,
    sequence: u16,
    first_timestamp: u32,
    last_timestamp: Option<u32>,
}

impl Sender {
    fn new(codec: sip::Codec) -> Self {
        Sender { codec, ssrc: rand::random(), sequence: rand::random(), first_timestamp: rand::random(), last_timestamp: None }
    }

    /// The packet for `frame`, sent `elapsed` after the call's media started.
    fn packet(&mut self, frame: &[f32], elapsed: Duration) -> Vec<u8> {
        let (timestamp, marker) = self.timestamp(elapsed);
        self.last_timestamp = Some(timestamp);
        let packet = sip::rtp_packet(marker, self.codec.payload_type(), self.sequence, timestamp, self.ssrc, &self.codec.encode(frame));
        self.sequence = self.sequence.wrapping_add(1);
        packet
    }

    /// The packet that carries `key` in the 20 ms a frame would have taken (RFC 4733): on the
    /// key's first frame it begins, marked, at the frame's timestamp, which every packet of the
    /// key keeps; its duration grows a frame at a time to 100 ms, then three packets end it.
    /// The audio after the key goes on from its frames' timestamps. `None` once it has ended.
    fn key_packet(&mut self, key: &mut KeyPress, payload_type: u8, elapsed: Duration) -> Option<Vec<u8>> {
        if key.sent >= KeyPress::PACKETS {
            return None;
        }
        let (timestamp, marker) = match key.timestamp {
            Some(timestamp) => (timestamp, false),
            None => {
                let (timestamp, _) = self.timestamp(elapsed);
                key.timestamp = Some(timestamp);
                (timestamp, true)
            }
        };
        let end = key.sent >= KeyPress::TONE_FRAMES;
        let duration = 160 * u16::from(key.sent.min(KeyPress::TONE_FRAMES - 1) + 1);
        let Some(payload) = sip::telephone_event_payload(key.key, end, duration) else {
            key.sent = KeyPress::PACKETS; // no such key: nothing to send
            return None;
        };
        self.last_timestamp = Some(timestamp.wrapping_add(u32::from(key.sent) * 160));
        key.sent += 1;
        let packet = sip::rtp_packet(marker, payload_type, self.sequence, timestamp, self.ssrc, &payload);
        self.sequence = self.sequence.wrapping_add(1);
        Some(packet)
    }

    /// The next packet's timestamp `elapsed` into the call, and whether it begins a talkspurt:
    /// a frame on from the last, unless the clock has run more than a frame past it (the agent
    /// was silent), then where the clock is.
    fn timestamp(&self, elapsed: Duration) -> (u32, bool) {
        let due = self.first_timestamp.wrapping_add((elapsed.as_millis() as u64 / 20 * 160) as u32);
        match self.last_timestamp {
            Some(last) => {
                let next = last.wrapping_add(160);
                if due.wrapping_sub(next) as i32 > 160 {
                    (due, true)
                } else {
                    (next, false)
                }
            }
            None => (due, true),
        }
    }
}

/// A key the agent is pressing, sent as RFC 4733 telephone-events in the place of the silent
/// frames the line plays for it, or, when the peer takes no events, as the key's tone.
struct KeyPress {
    key: char,
    /// Packets sent so far, and the timestamp they all carry.
    sent: u8,
    timestamp: Option<u32>,
    /// The key's tone, for a peer that takes no events: frames of it still to go.
    tone: Vec<f32>,
}

impl KeyPress {
    /// 100 ms of key, then its end said three times: the eight frames the line's silence lasts
    /// (a key's tone and the gap after it).
    const TONE_FRAMES: u8 = 5;
    const PACKETS: u8 = 8;

    fn new(key: char) -> Self {
        KeyPress { key, sent: 0, timestamp: None, tone: crate::audio::dtmf_tone(key, sip::RATE).unwrap_or_default() }
    }

    /// The tone's next frame in place of the line's `silence`, for a peer without events.
    fn in_band(&mut self, silence: &mut [f32]) {
        let take = silence.len().min(self.tone.len());
        silence[..take].copy_from_slice(&self.tone[..take]);
        self.tone.drain(..take);
    }
}

/// Carries one call's RTP both ways until its line ends: the peer's audio and keys to the
/// line, the line's frames to the peer in 20 ms packets. A peer silent for `MEDIA_TIMEOUT`
/// (gone without a BYE) fails the call.
async fn carry_media(line: StreamLine, socket: UdpSocket, mut offers: watch::Receiver<Offer>, mut outgoing: mpsc::Receiver<Outgoing>) {
    let mut offer = offers.borrow_and_update().clone();
    let mut remote = SocketAddr::new(offer.address, offer.port);
    let mut sender = Sender::new(offer.codec);
    let mut pressing: Option<KeyPress> = None;
    let mut incoming = Incoming { receiver: Receiver::new(offer.clone()), last_heard: Instant::now(), malformed: 0 };
    let started = Instant::now();
    let mut buffer = vec![0u8; 2048];
    let mut watchdog = tokio::time::interval(Duration::from_secs(1));
    // The caller's clock: a frame every 20 ms; after a stall, the missed ones at once.
    let mut clock = tokio::time::interval(Duration::from_millis(20));
    clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let ended = line.ended();
    loop {
        tokio::select! {
            _ = ended.cancelled() => break,
            _ = watchdog.tick() => {
                // A held call may be silent as long as it likes; a live one this long is gone.
                if !offer.held() && incoming.last_heard.elapsed() >= MEDIA_TIMEOUT {
                    line.fail(&format!("no RTP from the SIP peer for {} s (gone without a BYE)", MEDIA_TIMEOUT.as_secs()));
                    break;
                }
            }
            // A re-offer moved the peer's media (in the same codec).
            Ok(()) = offers.changed() => {
                offer = offers.borrow_and_update().clone();
                remote = SocketAddr::new(offer.address, offer.port);
                incoming.receiver.offer = offer.clone();
                // The peer's silence is counted from the new offer (a hold just ended).
                incoming.last_heard = Instant::now();
            }
            _ = clock.tick() => {
                // What already arrived goes in first: a clock catching up must not find it late.
                while let Ok((length, source)) = socket.try_recv_from(&mut buffer) {
                    incoming.datagram(&buffer[..length], source, &line);
                }
                line.caller_audio(incoming.receiver.frame());
            }
            message = outgoing.recv() => match message {
                Some(Outgoing::Key(key)) => pressing = Some(KeyPress::new(key)),
                Some(Outgoing::Audio(mut frame)) => {
                    // A key the agent presses goes in the place of the silence the line plays
                    // for it: as telephone-events when the peer takes them, else as its tone.
                    let event = match (pressing.as_mut(), offer.telephone_event) {
                        (Some(key), Some(payload_type)) => sender.key_packet(key, payload_type, started.elapsed()),
                        (Some(key), None) => {
                            key.in_band(&mut frame);
                            None
                        }
                        (None, _) => None,
                    };
                    if pressing.as_ref().is_some_and(|key| key.sent >= KeyPress::PACKETS || (offer.telephone_event.is_none() && key.tone.is_empty())) {
                        pressing = None;
                    }
                    let packet = event.unwrap_or_else(|| sender.packet(&frame, started.elapsed()));
                    // A peer that holds with `sendonly` or `inactive` takes no audio.
                    if offer.receives() {
                        let _ = socket.send_to(&packet, remote).await;
                    }
                }
                // RTP has no marks: what went out on the line's clock has been played.
                Some(Outgoing::Mark(_)) => line.mark_played(),
                // A barge-in cuts a key short: its end is not said (the peer ends it on its own
                // when no more of it comes), and the agent's audio goes on.
                Some(Outgoing::Clear) => pressing = None,
                Some(Outgoing::Event(_)) => {}
                None => break,
            },
            received = socket.recv_from(&mut buffer) => {
                if let Ok((length, source)) = received {
                    incoming.datagram(&buffer[..length], source, &line);
                }
            }
        }
    }
    let (audio, malformed) = (&incoming.receiver.audio, incoming.malformed);
    if malformed > 0 || audio.late > 0 || audio.waited > 0 || audio.resynced > 0 {
        tracing::info!(stream = %line.name(), malformed, late = audio.late, waited = audio.waited, resynced = audio.resynced, "RTP from the peer: packets dropped as malformed or late, late ones waited for, clock jumps followed");
    }
}

/// The peer's datagrams as they come.
struct Incoming {
    receiver: Receiver,
    last_heard: Instant,
    malformed: u64,
}

impl Incoming {
    fn datagram(&mut self, bytes: &[u8], source: SocketAddr, line: &StreamLine) {
        if source.ip() != self.receiver.offer.address {
            return; // only the peer's media is the caller
        }
        self.last_heard = Instant::now();
        match self.receiver.packet(bytes) {
            Ok(Some(key)) => line.caller_key(key),
            Ok(None) => {}
            Err(problem) => {
                self.malformed += 1;
                if self.malformed == 1 {
                    tracing::warn!(stream = %line.name(), problem, "a malformed RTP packet (further ones are counted)");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_number_in_a_user_part_reads_as_e164() {
        assert_eq!(number("14155552671"), "+14155552671");
        assert_eq!(number("+14155552671"), "+14155552671");
        assert_eq!(number("1234"), "1234", "an extension stays as it is");
        assert_eq!(number("alice"), "alice");
    }

    #[test]
    fn the_dialled_number_is_the_request_uris_unless_it_is_our_registered_user() {
        let invite = sip::parse(b"INVITE sip:ringline@192.0.2.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP t;branch=z9hG4bK-1\r\nFrom: <sip:+14155552672@t>;tag=a\r\nTo: <sip:14155552671@trunk.example>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n").unwrap();
        assert_eq!(dialled(&invite, "sip:ringline@192.0.2.1:5060", Some("ringline")), "+14155552671", "the trunk called our registered Contact");
        assert_eq!(dialled(&invite, "sip:ringline@192.0.2.1:5060", None), "ringline", "not registered: the URI's user, as it is");
        assert_eq!(dialled(&invite, "sip:+14155550000@192.0.2.1", Some("ringline")), "+14155550000");
        assert_eq!(dialled(&invite, "sip:192.0.2.1", None), "+14155552671", "no user in the URI: To's");
    }

    #[test]
    fn an_unspecified_bind_address_needs_an_advertised_one() {
        let config = SipConfig { bind: "0.0.0.0:5060".parse().unwrap(), address: None, trusted: Vec::new(), trunk: None, trunk_transport: Transport::Udp, credentials: None, register: false, keepalive: None };
        assert!(config.advertised().unwrap_err().to_string().contains("--sip-address"));
        let config = SipConfig { address: Some("192.0.2.7".parse().unwrap()), ..config };
        assert_eq!(config.advertised().unwrap(), "192.0.2.7".parse::<IpAddr>().unwrap());
        let config = SipConfig { bind: "127.0.0.1:5060".parse().unwrap(), address: None, trusted: Vec::new(), trunk: None, trunk_transport: Transport::Udp, credentials: None, register: false, keepalive: None };
        assert_eq!(config.advertised().unwrap(), "127.0.0.1".parse::<IpAddr>().unwrap());
    }

    fn offer() -> Offer {
        Offer { address: "127.0.0.1".parse().unwrap(), port: 4000, codec: sip::Codec::Pcmu, telephone_event: Some(101), direction: sip::Direction::SendRecv }
    }

    #[test]
    fn the_peers_packets_become_audio_on_the_clock_and_one_key_per_press() {
        let mut receiver = Receiver::new(offer());
        let before = receiver.frame();
        assert!(before.len() == 160 && before.iter().all(|&s| s == 0.0), "20 ms of silence each tick before the peer's first packet");
        let audio = sip::rtp_packet(true, 0, 1, 160, 9, &[0x80; 160]);
        assert_eq!(receiver.packet(&audio).unwrap(), None);
        assert_eq!(receiver.packet(&audio).unwrap(), None, "a duplicate");
        // A press of 5: three packets of one event (one timestamp), its end sent three times.
        let mut keys = Vec::new();
        for (sequence, end) in [(2u16, false), (3, false), (4, true), (5, true), (6, true)] {
            let event = sip::rtp_packet(sequence == 2, 101, sequence, 320, 9, &[5, if end { 0x8a } else { 0x0a }, 0, 160]);
            keys.extend(receiver.packet(&event).unwrap());
        }
        let again = sip::rtp_packet(true, 101, 7, 960, 9, &[5, 0x0a, 0, 160]);
        keys.extend(receiver.packet(&again).unwrap());
        assert_eq!(keys, vec!['5', '5'], "one key per press, a second press keyed again");
        assert_eq!(receiver.packet(&sip::rtp_packet(false, 13, 8, 1000, 9, &[40])).unwrap(), None, "comfort noise is no audio");
        assert!(receiver.packet(&[0x80, 0]).is_err());
        // The audio plays once, after the jitter buffer's delay, then silence: the events and
        // the comfort noise were no audio.
        let frames: Vec<Vec<f32>> = (0..5).map(|_| receiver.frame()).collect();
        let loud: Vec<bool> = frames.iter().map(|frame| frame.iter().any(|&s| s.abs() > 0.5)).collect();
        assert_eq!(loud, vec![false, false, true, false, false]);
        assert!(frames.iter().all(|frame| frame.len() == 160));
    }

    #[test]
    fn our_packets_follow_the_clock_through_silences() {
        let mut sender = Sender::new(sip::Codec::Pcma);
        let frame = vec![0.0f32; 160];
        let read = |packet: &[u8]| {
            let rtp = sip::parse_rtp(packet).unwrap();
            (rtp.marker, rtp.payload_type, rtp.sequence, rtp.timestamp, rtp.payload.len())
        };
        let first = read(&sender.packet(&frame, Duration::ZERO));
        let second = read(&sender.packet(&frame, Duration::from_millis(20)));
        // A frame sent late by the clock keeps the stream contiguous.
        let late = read(&sender.packet(&frame, Duration::from_millis(55)));
        // After two seconds of the agent's silence: the clock's timestamp, marked.
        let resumed = read(&sender.packet(&frame, Duration::from_millis(2_060)));
        assert_eq!((first.0, first.1, first.4), (true, 8, 160));
        assert_eq!((second.0, second.2, second.3), (false, first.2.wrapping_add(1), first.3.wrapping_add(160)));
        assert_eq!((late.0, late.3), (false, first.3.wrapping_add(320)));
        assert_eq!((resumed.0, resumed.2, resumed.3), (true, first.2.wrapping_add(3), first.3.wrapping_add(2_060 / 20 * 160)));
    }

    #[test]
    fn a_key_takes_eight_frames_as_events_and_the_audio_goes_on_after_them() {
        let mut sender = Sender::new(sip::Codec::Pcmu);
        let frame = vec![0.0f32; 160];
        let before = sip::parse_rtp(&sender.packet(&frame, Duration::ZERO)).map(|rtp| (rtp.sequence, rtp.timestamp)).unwrap();
        let mut key = KeyPress::new('5');
        let mut packets = Vec::new();
        for n in 1..=9u64 {
            if let Some(packet) = sender.key_packet(&mut key, 101, Duration::from_millis(20 * n)) {
                let rtp = sip::parse_rtp(&packet).unwrap();
                packets.push((rtp.marker, rtp.payload_type, rtp.timestamp, sip::telephone_event(rtp.payload), u16::from_be_bytes([rtp.payload[2], rtp.payload[3]])));
            }
        }
        assert_eq!(packets.len(), 8, "then the key is over: {packets:?}");
        assert!(packets.iter().all(|p| p.1 == 101 && p.2 == before.1.wrapping_add(160)), "every packet at the key's first frame: {packets:?}");
        assert_eq!(packets.iter().map(|p| (p.0, p.3, p.4)).collect::<Vec<_>>(), (0..8u16).map(|n| (n == 0, Some(('5', n >= 5)), 160 * (n.min(4) + 1))).collect::<Vec<_>>());
        let after = sender.packet(&frame, Duration::from_millis(180));
        let after = sip::parse_rtp(&after).unwrap();
        assert_eq!((after.marker, after.sequence, after.timestamp), (false, before.0.wrapping_add(9), before.1.wrapping_add(9 * 160)), "the audio after the key's frames");

        // A peer that took no events gets the key's tone in the silence played for it.
        let mut key = KeyPress::new('5');
        let mut silence = vec![0.0f32; 160];
        key.in_band(&mut silence);
        assert_eq!(silence, crate::audio::dtmf_tone('5', sip::RATE).unwrap()[..160]);
    }
}
