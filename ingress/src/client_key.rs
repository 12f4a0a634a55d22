//! Who a request comes from, for per-client rate limits: a configured header (e.g. an API key
//! set by a gateway in front), else the client's IP address. `X-Forwarded-For` is believed
//! only when the direct peer is a trusted proxy: from anyone else it is a header the client
//! wrote itself, and honouring it would let every request pick a fresh identity.

use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::http::{HeaderMap, HeaderName};
use ipnet::IpNet;

/// The rate limiter's key for one client. Header values are kept as a keyed 64-bit hash, so a
/// tracked client costs a few dozen bytes whatever the header holds, and no API key sits in
/// memory as text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ClientKey {
    /// The client's IP address (the peer's, or from `X-Forwarded-For` via a trusted proxy).
    Ip(IpAddr),
    /// Hash of the key header's value.
    Header(u64),
    /// The one bucket shared by clients first seen while the limiter tracks its maximum of keys.
    Overflow,
}

/// Proxies whose `X-Forwarded-For` is believed (TRUSTED_PROXIES).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Parses a comma-separated list of CIDRs or single addresses (`10.0.0.0/8, 192.168.1.7`);
    /// an empty string trusts nobody.
    pub fn parse(value: &str) -> Result<Self, String> {
        let mut nets = Vec::new();
        for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let net = item
                .parse::<IpNet>()
                .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    format!(
                        "`{item}` is not an address or CIDR; expected e.g. `10.0.0.0/8,127.0.0.1`"
                    )
                })?;
            nets.push(net);
        }
        Ok(TrustedProxies(nets))
    }

    /// Whether `ip` is one of the trusted proxies.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Derives a [`ClientKey`] from a request.
#[derive(Debug, Clone)]
pub struct ClientKeys {
    header: Option<HeaderName>,
    trusted: TrustedProxies,
    hasher: std::hash::RandomState,
}

impl ClientKeys {
    /// Keys by `header` when a request carries it, else by client IP.
    pub fn new(header: Option<HeaderName>, trusted: TrustedProxies) -> Self {
        ClientKeys {
            header,
            trusted,
            hasher: std::hash::RandomState::new(),
        }
    }

    /// What the key is, for messages (never the key's value).
    pub fn describe(&self) -> String {
        match &self.header {
            Some(header) => format!("the `{header}` header, else the client IP"),
            None => "client IP".into(),
        }
    }

    /// The key of a request from `peer` (`None` when the server did not record the peer: all
    /// such requests share the key 0.0.0.0).
    pub fn key(&self, headers: &HeaderMap, peer: Option<SocketAddr>) -> ClientKey {
        if let Some(value) = self
            .header
            .as_ref()
            .and_then(|name| headers.get(name))
            .filter(|value| !value.is_empty())
        {
            return ClientKey::Header(self.hasher.hash_one(value.as_bytes()));
        }
        let peer = peer.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |addr| {
            addr.ip().to_canonical()
        });
        ClientKey::Ip(self.client_ip(headers, peer))
    }

    /// The client's address: `peer`, or, when `peer` is a trusted proxy, the rightmost
    /// `X-Forwarded-For` entry that is not itself a trusted proxy (entries further left were
    /// written by the client and prove nothing).
    pub fn client_ip(&self, headers: &HeaderMap, peer: IpAddr) -> IpAddr {
        if !self.trusted.contains(peer) {
            return peer;
        }
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .collect();
        let mut client = peer;
        for hop in hops.iter().rev() {
            let Some(ip) = parse_hop(hop) else {
                // Garbage where a trusted proxy should have written an address: stop at the
                // last address we could verify.
                break;
            };
            client = ip;
            if !self.trusted.contains(ip) {
                break;
            }
        }
        client
    }
}

/// An `X-Forwarded-For` entry: `203.0.113.7`, `2001:db8::1`, or with a port
/// (`203.0.113.7:4711`, `[2001:db8::1]:4711`), as some proxies write it.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .or_else(|_| hop.parse::<SocketAddr>().map(|addr| addr.ip()))
        .ok()
        .map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).expect("header value")); // invariant: test code; a failure here is the test failing
        }
        map
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip") // invariant: test code; a failure here is the test failing
    }

    #[test]
    fn trusted_proxies_parse_cidrs_and_single_addresses() {
        let trusted = TrustedProxies::parse(" 10.0.0.0/8, 127.0.0.1 ,fd00::/8").expect("valid"); // invariant: test code; a failure here is the test failing
        assert!(trusted.contains(ip("10.1.2.3")));
        assert!(trusted.contains(ip("127.0.0.1")));
        assert!(trusted.contains(ip("::ffff:127.0.0.1")), "IPv4-mapped");
        assert!(trusted.contains(ip("fd00::1")));
        assert!(!trusted.contains(ip("127.0.0.2")));
        assert!(TrustedProxies::parse("").expect("empty").is_empty()); // invariant: test code; a failure here is the test failing
        assert!(TrustedProxies::parse("10.0.0.0/33").is_err());
        assert!(TrustedProxies::parse("proxy.local").is_err());
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_peers() {
        let keys = ClientKeys::new(None, TrustedProxies::parse("10.0.0.0/8").expect("valid")); // invariant: test code; a failure here is the test failing
        let forwarded = headers(&[("x-forwarded-for", "6.6.6.6, 203.0.113.7, 10.0.0.2")]);
        assert_eq!(
            keys.client_ip(&forwarded, ip("198.51.100.1")),
            ip("198.51.100.1"),
            "untrusted peer: its header is ignored"
        );
        assert_eq!(
            keys.client_ip(&forwarded, ip("10.0.0.1")),
            ip("203.0.113.7"),
            "rightmost untrusted hop, not the client-written leftmost one"
        );
        let split = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "[2001:db8::1]:4711"),
        ]);
        assert_eq!(keys.client_ip(&split, ip("10.0.0.1")), ip("2001:db8::1"));
        let garbage = headers(&[("x-forwarded-for", "203.0.113.7, not-an-ip")]);
        assert_eq!(keys.client_ip(&garbage, ip("10.0.0.1")), ip("10.0.0.1"));
        let all_trusted = headers(&[("x-forwarded-for", "10.9.9.9, 10.0.0.2")]);
        assert_eq!(keys.client_ip(&all_trusted, ip("10.0.0.1")), ip("10.9.9.9"));
        assert_eq!(
            keys.client_ip(&HeaderMap::new(), ip("10.0.0.1")),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn the_key_header_wins_over_the_address_when_present() {
        let keys = ClientKeys::new(
            Some(HeaderName::from_static("x-api-key")),
            TrustedProxies::default(),
        );
        let peer = Some(SocketAddr::from(([192, 0, 2, 1], 4711)));
        let a = keys.key(&headers(&[("x-api-key", "alpha")]), peer);
        let b = keys.key(&headers(&[("x-api-key", "beta")]), peer);
        assert!(matches!(a, ClientKey::Header(_)));
        assert_ne!(a, b);
        assert_eq!(a, keys.key(&headers(&[("x-api-key", "alpha")]), peer));
        assert_eq!(
            keys.key(&headers(&[("x-api-key", "")]), peer),
            ClientKey::Ip(ip("192.0.2.1")),
            "an empty key header falls back to the address"
        );
        assert_eq!(
            keys.key(&HeaderMap::new(), None),
            ClientKey::Ip(ip("0.0.0.0"))
        );
    }
}
