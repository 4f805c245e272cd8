//! Outbound HTTP from calls: one policy, one way to build a client that obeys it.
//!
//! Anything a workspace can set that makes the server open a connection — an LLM, STT or TTS
//! `base_url`, an HTTP tool's `url`, a webhook — goes through a client built by
//! [`EgressPolicy::client`]. The policy refuses loopback, private, link-local (cloud metadata
//! at 169.254.169.254 included), shared, multicast and reserved addresses unless the operator
//! allows them. It is enforced where the address is known:
//!
//! - host names: in the client's DNS resolver, so every address a name resolves to is checked
//!   after resolution (no DNS-rebinding window between a check and the connection);
//! - IP literals (which skip the resolver): by [`EgressPolicy::check_url`] before the first
//!   request, and by the redirect policy on every hop.
//!
//! The policy is the operator's: `ringline serve --allow-egress CIDR` (repeatable) or
//! `--allow-private-egress`. Commands an operator runs on their own machine (`simulate`,
//! `demo`, `chat`) allow everything.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// Redirect hops a client follows before it gives up.
const MAX_REDIRECTS: usize = 5;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EgressError {
    #[error("`{0}` is not an http(s) URL")]
    NotHttp(String),
    #[error("`{url}` reaches {address}, a {class} address, which this server does not connect to (the operator can allow it with `ringline serve --allow-egress CIDR`)")]
    Refused { url: String, address: IpAddr, class: &'static str },
    #[error("`{0}` does not resolve to any address")]
    Unresolvable(String),
}

/// A range of addresses, `10.0.0.0/8` or `::1/128` (a bare address is a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Cidr, String> {
        let (address, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let network: IpAddr = address.trim().parse().map_err(|_| format!("`{text}` is not an address or CIDR range (e.g. 127.0.0.1/32, 10.0.0.0/8, ::1)"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.trim().parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(|| format!("`{text}`: the prefix length must be 0..={max}"))?,
            None => max,
        };
        Ok(Cidr { network, prefix })
    }
}

impl Cidr {
    pub fn contains(&self, address: IpAddr) -> bool {
        match (self.network, canonical(address)) {
            (IpAddr::V4(net), IpAddr::V4(a)) => prefix_match(&net.octets(), &a.octets(), self.prefix),
            (IpAddr::V6(net), IpAddr::V6(a)) => prefix_match(&net.octets(), &a.octets(), self.prefix),
            _ => false,
        }
    }
}

fn prefix_match(network: &[u8], address: &[u8], prefix: u8) -> bool {
    let mut bits = prefix as usize;
    for (n, a) in network.iter().zip(address) {
        if bits == 0 {
            return true;
        }
        let take = bits.min(8);
        let mask = if take == 8 { 0xff } else { !(0xffu8 >> take) };
        if n & mask != a & mask {
            return false;
        }
        bits -= take;
    }
    true
}

/// What the server may connect to on behalf of a call.
#[derive(Debug, Clone, Default)]
pub struct EgressPolicy {
    /// Every address, private ones included (the operator's own commands).
    allow_all: bool,
    /// Ranges allowed although they are not public.
    allowed: Vec<Cidr>,
}

impl EgressPolicy {
    /// Public addresses only: what `serve` uses unless told otherwise.
    pub fn public_only() -> Self {
        EgressPolicy::default()
    }

    /// Every address: for commands the operator runs on their own machine.
    pub fn allow_all() -> Self {
        EgressPolicy { allow_all: true, allowed: Vec::new() }
    }

    /// Public addresses plus these ranges.
    pub fn with_allowed(allowed: Vec<Cidr>) -> Self {
        EgressPolicy { allow_all: false, allowed }
    }

    /// Whether a connection to `address` is allowed; `Err` names the kind of address refused.
    pub fn permits(&self, address: IpAddr) -> Result<(), &'static str> {
        if self.allow_all || self.allowed.iter().any(|c| c.contains(address)) {
            return Ok(());
        }
        match classify(canonical(address)) {
            None => Ok(()),
            Some(class) => Err(class),
        }
    }

    /// Checks a URL before a request: the scheme, and the host when it is an IP literal.
    /// Host names are checked by the client's resolver when it connects.
    pub fn check_url(&self, url: &str) -> Result<reqwest::Url, EgressError> {
        let parsed = reqwest::Url::parse(url).map_err(|_| EgressError::NotHttp(url.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(EgressError::NotHttp(url.to_string()));
        }
        match parsed.host() {
            Some(url::Host::Ipv4(v4)) => self.check_address(url, IpAddr::V4(v4))?,
            Some(url::Host::Ipv6(v6)) => self.check_address(url, IpAddr::V6(v6))?,
            Some(url::Host::Domain(_)) => {}
            None => return Err(EgressError::NotHttp(url.to_string())),
        }
        Ok(parsed)
    }

    /// Resolves a URL's host now and checks every address it has (for a clear 422 when an
    /// assistant is saved; the resolver checks again at every connection).
    pub async fn check_url_resolved(&self, url: &str) -> Result<(), EgressError> {
        let parsed = self.check_url(url)?;
        let Some(url::Host::Domain(host)) = parsed.host() else { return Ok(()) };
        if self.allow_all {
            return Ok(());
        }
        let port = parsed.port_or_known_default().unwrap_or(443);
        let addresses: Vec<SocketAddr> = match tokio::net::lookup_host((host, port)).await {
            Ok(found) => found.collect(),
            // An unknown name fails at call time with a clear reason; it reaches nothing.
            Err(_) => return Ok(()),
        };
        for address in addresses {
            self.check_address(url, address.ip())?;
        }
        Ok(())
    }

    fn check_address(&self, url: &str, address: IpAddr) -> Result<(), EgressError> {
        self.permits(address).map_err(|class| EgressError::Refused { url: url.to_string(), address, class })
    }

    /// A client that obeys this policy on every connection and redirect. `builder` carries
    /// the caller's own settings (timeouts); proxies from the environment are not used, so
    /// the resolver sees the real destination.
    pub fn client(&self, builder: reqwest::ClientBuilder) -> reqwest::Client {
        let policy = Arc::new(self.clone());
        let redirects = policy.clone();
        let redirect = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= MAX_REDIRECTS {
                return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
            }
            match redirects.check_url(attempt.url().as_str()) {
                Ok(_) => attempt.follow(),
                Err(error) => attempt.error(error),
            }
        });
        builder
            .no_proxy()
            .redirect(redirect)
            .dns_resolver(Arc::new(PolicyResolver { policy }))
            .build()
            .unwrap_or_else(|error| {
                // Building fails only when the TLS backend cannot start; a default client would
                // bypass the policy, so this one refuses every connection instead.
                tracing::error!(%error, "cannot build an HTTP client; outbound requests will fail");
                reqwest::Client::builder().dns_resolver(Arc::new(RefuseAll)).no_proxy().build().unwrap_or_default()
            })
    }
}

/// Resolves with the system resolver, then keeps only the addresses the policy permits.
struct PolicyResolver {
    policy: Arc<EgressPolicy>,
}

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if found.is_empty() {
                return Err(Box::new(EgressError::Unresolvable(host)) as Box<dyn std::error::Error + Send + Sync>);
            }
            let mut refused = None;
            let permitted: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| match policy.permits(a.ip()) {
                    Ok(()) => true,
                    Err(class) => {
                        refused.get_or_insert((a.ip(), class));
                        false
                    }
                })
                .collect();
            match (permitted.is_empty(), refused) {
                (true, Some((address, class))) => Err(Box::new(EgressError::Refused { url: host, address, class }) as Box<dyn std::error::Error + Send + Sync>),
                _ => Ok(Box::new(permitted.into_iter()) as reqwest::dns::Addrs),
            }
        })
    }
}

struct RefuseAll;

impl reqwest::dns::Resolve for RefuseAll {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move { Err(Box::new(EgressError::Unresolvable(host)) as Box<dyn std::error::Error + Send + Sync>) })
    }
}

/// An IPv4 address carried inside IPv6 (mapped `::ffff:a.b.c.d`, NAT64 `64:ff9b::/96`) is
/// judged as the IPv4 address it reaches.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let s = v6.segments();
            if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
                let [a, b] = s[6].to_be_bytes();
                let [c, d] = s[7].to_be_bytes();
                return IpAddr::V4(Ipv4Addr::new(a, b, c, d));
            }
            IpAddr::V6(v6)
        }
        v4 => v4,
    }
}

/// The kind of non-public address this is, or `None` for a public one.
fn classify(address: IpAddr) -> Option<&'static str> {
    match address {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(a: Ipv4Addr) -> Option<&'static str> {
    let [o0, o1, o2, _] = a.octets();
    if a.is_loopback() {
        Some("loopback")
    } else if a.is_unspecified() || o0 == 0 {
        Some("unspecified")
    } else if a.is_private() {
        Some("private")
    } else if a.is_link_local() {
        Some("link-local (cloud metadata)")
    } else if o0 == 100 && (64..128).contains(&o1) {
        Some("shared (carrier-grade NAT)")
    } else if a.is_multicast() || a.is_broadcast() || o0 >= 240 {
        Some("multicast or reserved")
    } else if (o0, o1, o2) == (192, 0, 0) || (o0, o1, o2) == (192, 0, 2) || (o0, o1, o2) == (198, 51, 100) || (o0, o1, o2) == (203, 0, 113) {
        Some("special-purpose")
    } else if o0 == 198 && (o1 == 18 || o1 == 19) {
        Some("benchmarking")
    } else {
        None
    }
}

fn classify_v6(a: Ipv6Addr) -> Option<&'static str> {
    let s = a.segments();
    if a.is_loopback() {
        Some("loopback")
    } else if a.is_unspecified() {
        Some("unspecified")
    } else if s[0] & 0xfe00 == 0xfc00 {
        Some("private (unique local)")
    } else if s[0] & 0xffc0 == 0xfe80 {
        Some("link-local")
    } else if a.is_multicast() {
        Some("multicast or reserved")
    } else if s[0] == 0x2001 && s[1] == 0x0db8 {
        Some("special-purpose")
    } else if s[0] == 0x2002 {
        // 6to4 carries an IPv4 address in bits 16..48.
        let [a0, a1] = s[1].to_be_bytes();
        let [a2, a3] = s[2].to_be_bytes();
        classify_v4(Ipv4Addr::new(a0, a1, a2, a3))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(policy: &EgressPolicy, address: &str) -> bool {
        policy.permits(address.parse().unwrap()).is_err()
    }

    #[test]
    fn internal_addresses_are_refused_and_public_ones_allowed() {
        let policy = EgressPolicy::public_only();
        for internal in [
            "127.0.0.1", "127.255.0.9", "0.0.0.0", "10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1", "169.254.169.254",
            "100.64.0.1", "224.0.0.1", "255.255.255.255", "::1", "::", "fd00:ec2::254", "fe80::1", "::ffff:127.0.0.1",
            "::ffff:169.254.169.254", "64:ff9b::a9fe:a9fe", "2002:7f00:0001::1", "192.0.2.10",
        ] {
            assert!(refused(&policy, internal), "{internal} must be refused");
        }
        for public in ["8.8.8.8", "1.1.1.1", "172.32.0.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"] {
            assert!(!refused(&policy, public), "{public} must be allowed");
        }
    }

    #[test]
    fn the_operator_can_allow_ranges_or_everything() {
        let policy = EgressPolicy::with_allowed(vec!["127.0.0.0/8".parse().unwrap(), "::1".parse().unwrap()]);
        assert!(!refused(&policy, "127.0.0.1"));
        assert!(!refused(&policy, "::1"));
        assert!(!refused(&policy, "::ffff:127.0.0.2"), "a mapped address is judged as its IPv4 form");
        assert!(refused(&policy, "10.0.0.1"));
        assert!(!refused(&EgressPolicy::allow_all(), "169.254.169.254"));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("not-an-ip".parse::<Cidr>().is_err());
        assert!("10.0.0.0/8".parse::<Cidr>().unwrap().contains("10.200.1.1".parse().unwrap()));
        assert!(!"10.0.0.0/8".parse::<Cidr>().unwrap().contains("11.0.0.1".parse().unwrap()));
    }

    #[test]
    fn urls_are_checked_for_scheme_and_literal_hosts() {
        let policy = EgressPolicy::public_only();
        assert!(matches!(policy.check_url("http://127.0.0.1:9000/x"), Err(EgressError::Refused { .. })));
        assert!(matches!(policy.check_url("http://[::1]/"), Err(EgressError::Refused { .. })));
        assert!(matches!(policy.check_url("http://2130706433/"), Err(EgressError::Refused { .. })), "a decimal IPv4 literal is still loopback");
        assert!(matches!(policy.check_url("http://0x7f.1/"), Err(EgressError::Refused { .. })));
        assert!(matches!(policy.check_url("file:///etc/passwd"), Err(EgressError::NotHttp(_))));
        assert!(matches!(policy.check_url("gopher://example.com/"), Err(EgressError::NotHttp(_))));
        assert!(policy.check_url("https://api.example.com/v1").is_ok(), "names are checked when resolved");
    }

    #[tokio::test]
    async fn a_client_refuses_a_name_that_resolves_to_loopback() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let client = EgressPolicy::public_only().client(reqwest::Client::builder());
        let error = client.get(format!("http://localhost:{port}/")).send().await.unwrap_err();
        let chain = format!("{:?}", error);
        assert!(chain.contains("loopback"), "{chain}");
        let allowed = EgressPolicy::allow_all().client(reqwest::Client::builder().timeout(std::time::Duration::from_millis(300)));
        let attempt = allowed.get(format!("http://localhost:{port}/")).send().await;
        assert!(!format!("{attempt:?}").contains("loopback"), "allowed: the connection is attempted");
    }
}
