//! `ringline serve`, `keys` and `assistants check`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::assistant::Assistant;
use crate::models::ModelStore;
use crate::egress::EgressPolicy;
use crate::pipeline::EngineLimits;
use crate::server::limits::Limits;
use crate::server::{self, auth, ServeConfig};
use crate::store::{self, Store, DEFAULT_DATABASE_URL};

use super::call_cmds::runtime;

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,
    /// sqlite://FILE (default: ringline.db here) or postgres://USER@HOST:PORT/DB.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL)]
    pub database_url: String,
    /// Folder of file-defined assistants (reloaded when they change).
    #[arg(long, default_value = "assistants")]
    pub assistants: PathBuf,
    /// Requests a minute per API key (a key may set its own).
    #[arg(long, env = "RINGLINE_RATE_LIMIT", default_value_t = 60)]
    pub rate_limit: u32,
    /// Seconds without a heartbeat after which a worker's calls are closed as failed.
    #[arg(long, env = "RINGLINE_WORKER_STALE_S", default_value_t = 15)]
    pub worker_stale_s: u64,
    /// Lets calls connect to this address range although it is not public (loopback,
    /// private, link-local): e.g. `--allow-egress 10.0.0.0/8` for a provider on your own
    /// network. Repeat it, or give a comma-separated list.
    #[arg(long, env = "RINGLINE_ALLOW_EGRESS", value_delimiter = ',', value_parser = parse_cidr)]
    pub allow_egress: Vec<crate::egress::Cidr>,
    /// A reverse proxy in front of the server (address or CIDR range; repeat or separate with
    /// commas): behind it, a request's address is X-Forwarded-For's (a key's whitelist).
    #[arg(long, env = "RINGLINE_TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_cidr)]
    pub trusted_proxy: Vec<crate::egress::Cidr>,
    /// Lets calls connect to any address, internal ones included. Only for a server whose
    /// every API key is trusted.
    #[arg(long, env = "RINGLINE_ALLOW_PRIVATE_EGRESS")]
    pub allow_private_egress: bool,
    /// Live calls one workspace may have at once (all workers together).
    #[arg(long, env = "RINGLINE_MAX_CALLS_PER_WORKSPACE", default_value_t = Limits::default().calls_per_workspace)]
    pub max_calls_per_workspace: u32,
    /// Calls one workspace may place in a minute.
    #[arg(long, env = "RINGLINE_MAX_CALLS_PER_MINUTE", default_value_t = Limits::default().calls_per_minute)]
    pub max_calls_per_minute: u32,
    /// Assistants one workspace may keep.
    #[arg(long, env = "RINGLINE_MAX_ASSISTANTS", default_value_t = Limits::default().assistants_per_workspace)]
    pub max_assistants: u32,
    /// Phone numbers one workspace may keep.
    #[arg(long, env = "RINGLINE_MAX_NUMBERS", default_value_t = Limits::default().numbers_per_workspace)]
    pub max_numbers: u32,
    /// Secrets one workspace may keep.
    #[arg(long, env = "RINGLINE_MAX_SECRETS", default_value_t = Limits::default().secrets_per_workspace)]
    pub max_secrets: u32,
    /// Campaigns one workspace may have unfinished (drafts, scheduled, calling).
    #[arg(long, env = "RINGLINE_MAX_CAMPAIGNS", default_value_t = Limits::default().campaigns_per_workspace)]
    pub max_campaigns: u32,
    /// Live calls this worker runs at once, for all workspaces.
    #[arg(long, env = "RINGLINE_MAX_CALLS", default_value_t = Limits::default().calls_per_server)]
    pub max_calls: u32,
    /// Calls on the local models this worker admits at once (0: what `ringline bench latency
    /// --concurrent N` measured on this machine, else one per core). Past it, new calls get
    /// 429 `local_capacity` instead of slowing every live call down.
    #[arg(long, env = "RINGLINE_MAX_LOCAL_CALLS", default_value_t = 0)]
    pub max_local_calls: u32,
    /// Local models of each kind (Whisper models, voices, LLM engines) this worker may load.
    #[arg(long, env = "RINGLINE_MAX_ENGINES", default_value_t = EngineLimits::default().per_kind)]
    pub max_engines: usize,
    /// MiB of synthesized sentences kept for reuse (a flow's questions, greetings): a line said
    /// again in the same workspace with the same voice plays without being synthesized again.
    /// A workspace may hold a quarter of it; 0 turns it off.
    #[arg(long, env = "RINGLINE_SPEECH_CACHE_MIB", default_value_t = crate::pipeline::speech_cache::DEFAULT_CAPACITY_BYTES >> 20)]
    pub speech_cache_mib: usize,
    /// The secrets key file: 32 random bytes in base64, created on first use (mode 0600).
    /// Every worker of a deployment needs the same key; keep it with the database's backups.
    #[arg(long, env = "RINGLINE_SECRETS_KEY_FILE", default_value = "ringline-secrets.key")]
    pub secrets_key_file: PathBuf,
    /// Twilio account SID: with the auth token, real phone calls through Twilio (inbound
    /// numbers, outbound calls to any number).
    #[arg(long, env = "TWILIO_ACCOUNT_SID", requires = "twilio_auth_token")]
    pub twilio_account_sid: Option<String>,
    /// Twilio auth token (signs Twilio's webhooks and authenticates our REST calls). Prefer
    /// the environment variable to the flag.
    #[arg(long, env = "TWILIO_AUTH_TOKEN", hide_env_values = true, requires = "twilio_account_sid")]
    pub twilio_auth_token: Option<String>,
    /// Twilio's REST API base.
    #[arg(long, env = "RINGLINE_TWILIO_API_BASE", default_value = "https://api.twilio.com")]
    pub twilio_api_base: String,
    /// Where Twilio reaches this server, e.g. https://voice.example.com (a tunnel's URL in
    /// development). Default: the address it listens on.
    #[arg(long, env = "RINGLINE_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Where recordings of calls are written (`<call id>.wav`; an assistant's `recording: true`
    /// or a call's `record: true` turns them on).
    #[arg(long, env = "RINGLINE_RECORDINGS_DIR", default_value = "recordings")]
    pub recordings_dir: PathBuf,
    /// Every valid number is answered by the sandbox line (a scripted caller), not only
    /// +1 500 555 XXXX: try a client written for real numbers unchanged, with no call leaving
    /// the machine. Wins over Twilio.
    #[arg(long, env = "RINGLINE_SANDBOX_LINE")]
    pub sandbox_line: bool,
    /// Answers calls from a SIP trunk on this address, e.g. 0.0.0.0:5060, over UDP and TCP
    /// alike: INVITEs to a workspace's number reach its assistant, audio in G.711 over RTP.
    #[arg(long, env = "RINGLINE_SIP_BIND")]
    pub sip_bind: Option<SocketAddr>,
    /// The address SIP peers reach this server at (put in Contact and SDP); needed when
    /// --sip-bind is 0.0.0.0 or behind NAT.
    #[arg(long, env = "RINGLINE_SIP_ADDRESS", requires = "sip_bind")]
    pub sip_address: Option<std::net::IpAddr>,
    /// The trunk's addresses: SIP from any other source is dropped unanswered (a SIP peer
    /// carries no key). Repeat it or give a comma-separated list; loopback only by default.
    #[arg(long, env = "RINGLINE_SIP_TRUSTED", value_delimiter = ',', value_parser = parse_cidr, requires = "sip_bind")]
    pub sip_trusted: Vec<crate::egress::Cidr>,
    /// Places outbound calls through this SIP trunk (its address, e.g. 198.51.100.7:5060) when
    /// Twilio is not configured.
    #[arg(long, env = "RINGLINE_SIP_TRUNK", requires = "sip_bind")]
    pub sip_trunk: Option<SocketAddr>,
    /// How the trunk is reached: udp (the default) or tcp (for a trunk that takes SIP over TCP
    /// only, or messages too large for one datagram).
    #[arg(long, env = "RINGLINE_SIP_TRUNK_TRANSPORT", default_value = "udp", value_name = "udp|tcp")]
    pub sip_trunk_transport: crate::transport::sip::Transport,
    /// The trunk account's user, for a trunk that challenges calls (digest); the password
    /// comes from RINGLINE_SIP_TRUNK_PASSWORD.
    #[arg(long, env = "RINGLINE_SIP_TRUNK_USER", requires = "sip_trunk")]
    pub sip_trunk_user: Option<String>,
    #[arg(long, env = "RINGLINE_SIP_TRUNK_PASSWORD", hide_env_values = true, hide = true)]
    pub sip_trunk_password: Option<String>,
    /// Registers with the trunk as --sip-trunk-user (REGISTER, kept refreshed), for a trunk
    /// that sends an account's calls to where it last registered.
    #[arg(long, env = "RINGLINE_SIP_REGISTER", requires = "sip_trunk_user")]
    pub sip_register: bool,
    /// While registered, a keep-alive (CRLF) goes to the trunk every this many seconds, so a
    /// NAT in front of this server keeps the mapping the trunk's calls come back through; 0
    /// sends none.
    #[arg(long, env = "RINGLINE_SIP_KEEPALIVE", default_value_t = 25, value_name = "SECONDS")]
    pub sip_keepalive: u64,
    /// Load each local model when the first call needs it, instead of loading the file
    /// assistants' models at start (a first caller then waits for them).
    #[arg(long, env = "RINGLINE_NO_PRELOAD")]
    pub no_preload: bool,
}

fn parse_cidr(text: &str) -> Result<crate::egress::Cidr, String> {
    text.parse()
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create an API key; the key alone is the last line printed.
    Create {
        #[arg(long, default_value = "default")]
        workspace: String,
        /// Requests a minute for this key (default: the server's --rate-limit).
        #[arg(long)]
        rate_limit: Option<i64>,
    },
    /// List keys (never the keys themselves).
    List,
    /// Revoke a key at once.
    Revoke { id: String },
    /// Replace a key: prints a new one for the same workspace; the old one keeps working
    /// for the grace period, then stops.
    Rotate {
        id: String,
        #[arg(long, default_value_t = crate::server::auth::ROTATION_GRACE_S)]
        grace_s: i64,
    },
}

#[derive(Debug, Args)]
pub struct KeysArgs {
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL, global = true)]
    pub database_url: String,
    #[command(subcommand)]
    pub command: KeysCommand,
}

#[derive(Debug, Subcommand)]
pub enum AssistantsCommand {
    /// Validate every assistant file in DIR (and the prompts they name).
    Check { dir: PathBuf },
}


pub fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let models = ModelStore::from_env()?;
    let (local_calls, capacity_source) = server::limits::Capacity::resolve(args.max_local_calls, &models);
    tracing::info!(local_calls, source = %capacity_source, "local call capacity");
    crate::pipeline::speech_cache::configure(args.speech_cache_mib);
    let config = ServeConfig {
        bind: args.bind,
        database_url: args.database_url,
        assistants_dir: args.assistants,
        rate_limit_per_min: args.rate_limit.max(1),
        worker_stale: Duration::from_secs(args.worker_stale_s.max(2)),
        trusted_proxies: args.trusted_proxy,
        egress: if args.allow_private_egress { EgressPolicy::allow_all() } else { EgressPolicy::with_allowed(args.allow_egress) },
        limits: Limits {
            calls_per_workspace: args.max_calls_per_workspace,
            calls_per_minute: args.max_calls_per_minute,
            assistants_per_workspace: args.max_assistants,
            numbers_per_workspace: args.max_numbers,
            secrets_per_workspace: args.max_secrets,
            campaigns_per_workspace: args.max_campaigns,
            calls_per_server: args.max_calls,
            local_calls,
        },
        engine_limits: EngineLimits { per_kind: args.max_engines.max(1) },
        secrets_key_file: args.secrets_key_file,
        secrets_key: std::env::var("RINGLINE_SECRETS_KEY").ok().filter(|k| !k.trim().is_empty()),
        recordings_dir: args.recordings_dir,
        sandbox_line: args.sandbox_line,
        preload: !args.no_preload,
        twilio: match (args.twilio_account_sid, args.twilio_auth_token) {
            (Some(account_sid), Some(auth_token)) => {
                Some(server::twilio::TwilioConfig { account_sid, auth_token, api_base: args.twilio_api_base, public_url: args.public_url.unwrap_or_default() })
            }
            _ => None,
        },
        sip: args.sip_bind.map(|bind| server::sip::SipConfig {
            bind,
            address: args.sip_address,
            trunk: args.sip_trunk,
            trunk_transport: args.sip_trunk_transport,
            register: args.sip_register,
            keepalive: (args.sip_keepalive > 0).then(|| std::time::Duration::from_secs(args.sip_keepalive)),
            credentials: args.sip_trunk_user.map(|user| server::sip::Credentials { user, password: args.sip_trunk_password.unwrap_or_default() }),
            trusted: if args.sip_trusted.is_empty() { vec!["127.0.0.0/8".parse().expect("a range"), "::1".parse().expect("an address")] } else { args.sip_trusted },
        }),
    };
    runtime()?.block_on(server::serve(config, models))
}

pub fn keys(args: KeysArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let store = Store::connect(&args.database_url).await.with_context(|| format!("opening {}", args.database_url))?;
        match args.command {
            KeysCommand::Create { workspace, rate_limit } => {
                if workspace.trim().is_empty() {
                    anyhow::bail!("--workspace: give a name, e.g. --workspace acme");
                }
                let (key, secret) = auth::create_key(&store, &workspace, rate_limit).await?;
                println!("created key {} for workspace {} ({}); it is shown once:", key.id, key.workspace_name, key.workspace_id);
                println!("{secret}");
            }
            KeysCommand::List => {
                println!("{:<30} {:<16} {:<12} {:<10} {:<24}", "id", "workspace", "prefix", "state", "created");
                let now = store::now_ms();
                for key in store.keys().await? {
                    let state = if key.revoked_at.is_some() {
                        "revoked".to_string()
                    } else if !key.usable_at(now) {
                        "expired".to_string()
                    } else if key.expires_at.is_some() {
                        "expiring".to_string()
                    } else {
                        "active".to_string()
                    };
                    println!("{:<30} {:<16} {:<12} {:<10} {:<24}", key.id, key.workspace_name, format!("{}…", key.prefix), state, server::assistants::rfc3339(key.created_at));
                }
            }
            KeysCommand::Revoke { id } => {
                if !store.revoke_key(&id, store::now_ms()).await? {
                    anyhow::bail!("no active key `{id}` (`ringline keys list` shows them)");
                }
                println!("revoked {id}");
            }
            KeysCommand::Rotate { id, grace_s } => {
                let old = store.key(&id).await?.with_context(|| format!("no key `{id}` (`ringline keys list` shows them)"))?;
                let (key, secret) = auth::rotate_key(&store, &old, grace_s).await.with_context(|| format!("key `{id}` cannot be rotated"))?;
                println!("created key {} for workspace {}; {id} stops working in {grace_s} s; the new key is shown once:", key.id, key.workspace_name);
                println!("{secret}");
            }
        }
        Ok(())
    })
}

/// Checks every file; prints each problem with file, line, field and fix. Fails if any.
pub fn assistants(command: AssistantsCommand) -> anyhow::Result<()> {
    let AssistantsCommand::Check { dir } = command;
    let files = crate::assistant::files_in(&dir).with_context(|| format!("reading {}", dir.display()))?;
    if files.is_empty() {
        anyhow::bail!("{}: no assistant files (*.yaml) here", dir.display());
    }
    let mut bad = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        match Assistant::parse_all(&text, file) {
            Ok(assistant) => println!("ok      {} ({}, {} variable(s), {} tool(s))", file.display(), assistant.spec.name, assistant.spec.variables.len(), assistant.spec.tools.len()),
            Err(problems) => {
                bad += 1;
                for problem in problems {
                    println!("error   {problem}");
                }
            }
        }
    }
    if bad > 0 {
        anyhow::bail!("{bad} of {} assistant file(s) have problems", files.len());
    }
    println!("{} assistant file(s) are valid", files.len());
    Ok(())
}
