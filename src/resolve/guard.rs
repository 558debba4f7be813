//! The SSRF guard: the addresses and hosts pinhook refuses to contact, and where that is enforced.
//!
//! Every request is checked on the address it will dial, never on the string an image or a
//! header wrote: the `url` crate normalizes a URL's host as WHATWG says (`2852039166`,
//! `0xa9fea9fe`, `0251.0376.0251.0376`, `169.254.43518` and `0xa9.0xfe.0xa9.0xfe` are all
//! 169.254.169.254; `0` is 0.0.0.0), and that normalized host is what reqwest dials.
//!
//! The rule, for every hop of a lookup (the registry or mirror, each redirect, the token realm):
//! - **never**: link-local addresses (169.254.0.0/16, fe80::/10, where cloud metadata services
//!   live), the well-known metadata endpoints (AWS's fd00:ec2::254, Alibaba's 100.100.100.200),
//!   "this host" (0.0.0.0/8, `::`), broadcast and multicast; also written as IPv4-mapped,
//!   IPv4-compatible or NAT64 (64:ff9b::/96) IPv6 addresses;
//! - **loopback and private addresses** (127.0.0.0/8, ::1, 10/8, 172.16/12, 192.168/16,
//!   100.64/10, fc00::/7, fec0::/10) only when the registry the image names answered from such
//!   an address itself: a redirect or a token realm never leads a public registry inward, while
//!   a registry on 127.0.0.1 or a cluster-internal registry keeps its internal token service;
//! - when the profile in force sets `allowedRegistries`, **nothing outside it**, the list
//!   matched against the normalized host (with and without its port).
//!
//! Enforced in two places, so no path around it exists:
//! - on the URL of every hop ([`check_url`]), before anything is sent: IP literals (which skip
//!   DNS) by their normalized address, and every host against `allowedRegistries`;
//! - at DNS resolution ([`GuardedResolver`], installed in every reqwest client pinhook builds):
//!   names, and DNS rebinding, only ever reach an allowed address. The clients follow no
//!   redirect themselves: the registry client follows them one hop at a time through
//!   [`check_url`], and uses a client whose resolver refuses internal addresses for every hop
//!   after the first unless the registry is internal.
//!
//! A hop that fails at the network level (DNS, refused, reset, timeout, TLS, or a name that
//! resolves only to refused addresses) is reported in one generic sentence naming the registry
//! the image names, so the denial never tells which internal ports are open; the details go to
//! the debug log.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::ResolveError;
use super::host;
use crate::patterns::Patterns;

/// AWS's IPv6 instance-metadata address.
const AWS_METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);

/// The IPv4 address an IPv6 address stands for: IPv4-mapped (`::ffff:a.b.c.d`),
/// IPv4-compatible (`::a.b.c.d`, not `::` or `::1`) or NAT64 well-known prefix (`64:ff9b::/96`).
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(mapped) = v6.to_ipv4_mapped() {
        return Some(mapped);
    }
    let seg = v6.segments();
    let low = Ipv4Addr::from(((u32::from(seg[6])) << 16) | u32::from(seg[7]));
    let compatible = seg[..6].iter().all(|&s| s == 0) && u32::from(low) > 1;
    let nat64 = seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
    (compatible || nat64).then_some(low)
}

/// What pinhook may do with an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    /// Anything not below: contacted when the policy allows the host.
    Public,
    /// Loopback or private: contacted only when the registry the image names is itself internal.
    Internal,
    /// Link-local, metadata, this host, broadcast, multicast: never contacted.
    Forbidden,
}

/// The class of `ip` (see the module's rule).
pub fn class_of(ip: IpAddr) -> AddressClass {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if v4.is_link_local()
                || o[0] == 0
                || v4.is_broadcast()
                || v4.is_multicast()
                || o == [100, 100, 100, 200]
            {
                AddressClass::Forbidden
            } else if v4.is_loopback() || v4.is_private() || (o[0] == 100 && (o[1] & 0xc0) == 64) {
                AddressClass::Internal
            } else {
                AddressClass::Public
            }
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_v4(v6) {
                return class_of(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            if (first & 0xffc0) == 0xfe80
                || v6.is_unspecified()
                || v6.is_multicast()
                || v6 == AWS_METADATA_V6
            {
                AddressClass::Forbidden
            } else if v6.is_loopback() || (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfec0 {
                AddressClass::Internal
            } else {
                AddressClass::Public
            }
        }
    }
}

/// True for addresses pinhook never contacts: link-local (cloud metadata lives there), the
/// well-known metadata endpoints, this host (0.0.0.0/8, `::`), broadcast and multicast.
pub fn is_forbidden(ip: IpAddr) -> bool {
    class_of(ip) == AddressClass::Forbidden
}

/// True for loopback and private addresses (reached only from a registry at such an address).
pub fn is_internal(ip: IpAddr) -> bool {
    class_of(ip) == AddressClass::Internal
}

/// Why a forbidden address is refused, in words (`ip` is forbidden).
fn forbidden_reason(ip: IpAddr) -> &'static str {
    let v4 = match ip {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(v6) => embedded_v4(v6),
    };
    match (ip, v4) {
        (_, Some(v4)) if v4.octets()[0] == 0 => "an address of this host (0.0.0.0/8)",
        (_, Some(v4)) if v4.is_broadcast() || v4.is_multicast() => {
            "a broadcast or multicast address"
        }
        (IpAddr::V6(v6), None) if v6.is_unspecified() => "an address of this host (::)",
        (IpAddr::V6(v6), None) if v6.is_multicast() => "a multicast address",
        _ => "a link-local or metadata address",
    }
}

/// The error a filtered DNS answer produces, found again in reqwest's error chain.
#[derive(Debug, thiserror::Error)]
#[error("{host} resolves only to addresses pinhook may not contact ({addrs})")]
pub(super) struct ForbiddenAddress {
    /// The host that was looked up.
    pub(super) host: String,
    /// Every address it resolved to, comma-separated (for the debug log, never a denial).
    pub(super) addrs: String,
}

/// Registry host names answered with a fixed address instead of DNS (`--registry-address`),
/// keyed by lowercase name.
pub type AddressOverrides = std::collections::HashMap<String, SocketAddr>;

/// A DNS resolver that drops forbidden addresses, and internal ones unless `allow_internal`.
/// A name in `overrides` resolves to its address (and port, used when the URL names none),
/// judged by the same rule.
#[derive(Debug, Clone)]
pub(super) struct GuardedResolver {
    /// Whether loopback and private addresses may be returned.
    pub(super) allow_internal: bool,
    /// `--registry-address` overrides.
    pub(super) overrides: std::sync::Arc<AddressOverrides>,
}

impl GuardedResolver {
    /// Whether an address of a DNS answer may be dialled.
    fn admits(&self, ip: IpAddr) -> bool {
        match class_of(ip) {
            AddressClass::Public => true,
            AddressClass::Internal => self.allow_internal,
            AddressClass::Forbidden => false,
        }
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        let this = self.clone();
        Box::pin(async move {
            let all: Vec<SocketAddr> = match this.overrides.get(&host.to_ascii_lowercase()) {
                Some(addr) => vec![*addr],
                None => tokio::net::lookup_host((host.as_str(), 0)).await?.collect(),
            };
            let allowed: Vec<SocketAddr> = all
                .iter()
                .copied()
                .filter(|a| this.admits(a.ip()))
                .collect();
            if allowed.is_empty() {
                let addrs = all
                    .iter()
                    .map(|a| a.ip().to_string())
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(Box::new(ForbiddenAddress { host, addrs })
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Which request of a lookup a URL is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Hop {
    /// The registry (or mirror) the lookup is for.
    Registry,
    /// A `Location` the registry (or an earlier redirect) answered.
    Redirect,
    /// The token service a Bearer challenge named.
    TokenRealm,
}

impl Hop {
    /// The hop in words.
    fn noun(self) -> &'static str {
        match self {
            Hop::Registry => "registry",
            Hop::Redirect => "redirect target",
            Hop::TokenRealm => "token service",
        }
    }
}

/// What every request of one lookup obeys.
#[derive(Debug, Clone, Copy)]
pub(super) struct Route<'a> {
    /// `allowedRegistries` of the profile in force.
    pub(super) allowed: Option<&'a Patterns>,
    /// The registry (or mirror) the lookup is for, as written: named in every message.
    pub(super) registry: &'a str,
    /// Whether that registry answered from a loopback or private address.
    pub(super) internal: bool,
}

/// The IP address a URL dials without DNS, when its host is one. For `http` and `https` the
/// `url` crate has already turned every IPv4 spelling into dotted decimal and compressed IPv6.
pub(super) fn dialled_ip(url: &reqwest::Url) -> Option<IpAddr> {
    let h = url.host_str()?;
    match h.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        Some(v6) => v6.parse::<Ipv6Addr>().ok().map(IpAddr::V6),
        None => h.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
    }
}

/// True when `allowed` matches the URL's normalized host, bare or with its port.
fn allowed_by(url: &reqwest::Url, allowed: &Patterns) -> bool {
    let Some(h) = url.host_str() else {
        return false;
    };
    let bare = h
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(h);
    let with_port = url.port_or_known_default().map(|p| format!("{h}:{p}"));
    [Some(h), Some(bare), with_port.as_deref()]
        .into_iter()
        .flatten()
        .any(|c| crate::policy::allows_registry(allowed, c))
}

/// Checks one hop before it is sent: scheme, the normalized address of an IP literal, and
/// `allowedRegistries` (see the module's rule).
pub(super) fn check_url(
    url: &reqwest::Url,
    hop: Hop,
    route: &Route<'_>,
) -> Result<(), ResolveError> {
    let shown = if hop == Hop::Registry {
        route.registry.to_owned()
    } else {
        host::of_url(url)
    };
    let refuse = |reason: String| ResolveError::Forbidden {
        host: shown.clone(),
        reason,
    };
    if !matches!(url.scheme(), "http" | "https") {
        return Err(refuse(format!(
            "only http and https are followed, not {}",
            url.scheme()
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(refuse("the URL has no host".into()));
    }
    if let Some(ip) = dialled_ip(url) {
        match class_of(ip) {
            AddressClass::Forbidden => {
                return Err(refuse(format!("{ip} is {}", forbidden_reason(ip))));
            }
            AddressClass::Internal if hop != Hop::Registry && !route.internal => {
                return Err(refuse(format!(
                    "{ip} is a loopback or private address, where a {} of a registry outside such addresses may not lead",
                    hop.noun()
                )));
            }
            _ => {}
        }
    }
    if let Some(allowed) = route.allowed
        && !allowed.is_empty()
        && !allowed_by(url, allowed)
    {
        return Err(refuse("not in allowedRegistries".into()));
    }
    Ok(())
}

/// A hop after the first failed at the network level: one sentence naming the registry the
/// image names, whatever happened (refused, reset, timeout, TLS, DNS, a name resolving only to
/// refused addresses), so a denial never tells which internal ports are open; the details go
/// to the debug log.
pub(super) fn hop_failed(
    route: &Route<'_>,
    hop: Hop,
    url: &reqwest::Url,
    error: &(dyn std::error::Error + 'static),
) -> ResolveError {
    let mut detail = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        detail.push_str(": ");
        detail.push_str(&s.to_string());
        source = s.source();
    }
    tracing::debug!(
        registry = route.registry,
        hop = hop.noun(),
        target = %host::of_url(url),
        error = %detail,
        "a request of a registry lookup failed"
    );
    ResolveError::Connect {
        registry: route.registry.to_owned(),
        detail: format!(
            "the {} it named could not be reached or may not be contacted (details in pinhook's debug log)",
            hop.noun()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> reqwest::Url {
        reqwest::Url::parse(s).unwrap()
    }

    fn route<'a>(allowed: Option<&'a Patterns>, registry: &'a str, internal: bool) -> Route<'a> {
        Route {
            allowed,
            registry,
            internal,
        }
    }

    fn refused(u: &str, hop: Hop, r: &Route<'_>) -> String {
        match check_url(&url(u), hop, r) {
            Err(e @ ResolveError::Forbidden { .. }) => e.to_string(),
            other => panic!("{u}: {other:?}"),
        }
    }

    #[test]
    fn forbids_metadata_and_link_local() {
        for ip in [
            "169.254.169.254",
            "169.254.0.1",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:169.254.169.254",
            "::169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "100.100.100.200",
            "0.0.0.0",
            "0.1.2.3",
            "::",
            "::ffff:0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "ff02::1",
        ] {
            assert!(is_forbidden(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["127.0.0.1", "10.0.0.5", "192.168.1.1", "::1", "8.8.8.8"] {
            assert!(!is_forbidden(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn classes_of_addresses() {
        for ip in [
            "127.0.0.1",
            "127.1.2.3",
            "::1",
            "10.0.0.5",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "fd12:3456::1",
            "fec0::1",
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "64:ff9b::7f00:1",
        ] {
            assert_eq!(
                class_of(ip.parse().unwrap()),
                AddressClass::Internal,
                "{ip}"
            );
        }
        for ip in [
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2001:db8::1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert_eq!(class_of(ip.parse().unwrap()), AddressClass::Public, "{ip}");
        }
    }

    /// Every spelling the `url` crate (WHATWG) reads as 169.254.169.254 or this host is refused
    /// by its normalized address, as the registry the image names, a redirect or a token realm.
    #[test]
    fn every_spelling_of_a_forbidden_address_is_refused_before_any_request() {
        let metadata = [
            "2852039166:80",
            "0xa9fea9fe:80",
            "0XA9FEA9FE",
            "0251.0376.0251.0376:80",
            "169.254.43518:80",
            "169.16689662",
            "0xa9.0xfe.0xa9.0xfe:443",
            "0xa9.0376.43518",
            "169.254.169.254.",
            "[::ffff:169.254.169.254]",
            "[::ffff:a9fe:a9fe]:80",
            "[::169.254.169.254]",
            "[64:ff9b::169.254.169.254]",
            "[fd00:ec2::254]",
            "[FD00:0EC2:0:0:0:0:0:0254]:80",
            "[fe80::1]",
            "100.100.100.200",
            "1684301000",
        ];
        let this_host = [
            "0:443",
            "0",
            "0.0.0.0",
            "0x0:80",
            "00.0:5000",
            "[::]",
            "[::]:443",
            "[0:0::0]",
        ];
        let open = route(None, "registry.example.com", true);
        for host in metadata.iter().chain(this_host.iter()) {
            for scheme in ["http", "https"] {
                let u = format!("{scheme}://{host}/v2/a/manifests/1");
                for hop in [Hop::Registry, Hop::Redirect, Hop::TokenRealm] {
                    let r = route(None, host, true);
                    let msg = refused(&u, hop, if hop == Hop::Registry { &r } else { &open });
                    assert!(
                        msg.contains("link-local or metadata address")
                            || msg.contains("an address of this host"),
                        "{u} {hop:?}: {msg}"
                    );
                }
            }
        }
        // The message names what the image wrote and the address it means.
        let r = route(None, "2852039166:80", false);
        assert_eq!(
            refused("http://2852039166:80/v2/x/manifests/1", Hop::Registry, &r),
            "refusing to contact 2852039166:80: 169.254.169.254 is a link-local or metadata address"
        );
        let r = route(None, "0:443", false);
        assert_eq!(
            refused("https://0:443/v2/x/manifests/1", Hop::Registry, &r),
            "refusing to contact 0:443: 0.0.0.0 is an address of this host (0.0.0.0/8)"
        );
        let r = route(None, "[::]:443", false);
        assert_eq!(
            refused("https://[::]:443/v2/x/manifests/1", Hop::Registry, &r),
            "refusing to contact [::]:443: :: is an address of this host (::)"
        );
    }

    #[test]
    fn a_redirect_or_realm_leads_inward_only_from_an_internal_registry() {
        let public = route(None, "registry.example.com", false);
        let internal = route(None, "127.0.0.1:5000", true);
        for target in [
            "http://127.0.0.1:6379/",
            "http://2130706433:6379/",
            "http://0x7f000001:6379/",
            "http://0177.0.0.1:6379/",
            "http://127.1:6379/",
            "http://10.0.0.5/",
            "http://0xa.0.0.5/",
            "http://192.168.1.1:8080/",
            "http://[::1]:8080/",
            "http://[::ffff:127.0.0.1]/",
            "http://[fd00::1]/",
        ] {
            for hop in [Hop::Redirect, Hop::TokenRealm] {
                let msg = refused(target, hop, &public);
                assert!(
                    msg.contains("is a loopback or private address"),
                    "{target}: {msg}"
                );
                assert!(check_url(&url(target), hop, &internal).is_ok(), "{target}");
            }
            // The registry the image names may itself be internal.
            let r = route(None, "x", false);
            assert!(
                check_url(&url(target), Hop::Registry, &r).is_ok(),
                "{target}"
            );
        }
        assert_eq!(
            refused("http://0x7f000001:6379/x", Hop::Redirect, &public),
            "refusing to contact 127.0.0.1:6379: 127.0.0.1 is a loopback or private address, where a redirect target of a registry outside such addresses may not lead"
        );
        assert!(
            check_url(
                &url("https://auth.example.com/token"),
                Hop::TokenRealm,
                &public
            )
            .is_ok()
        );
        let msg = refused("file:///etc/passwd", Hop::Redirect, &internal);
        assert!(
            msg.ends_with("only http and https are followed, not file"),
            "{msg}"
        );
    }

    #[test]
    fn allowed_registries_bound_every_hop_by_its_normalized_host() {
        let allowed = Patterns::new(&["*.example.com", "127.0.0.1:5000"], true).unwrap();
        let r = route(Some(&allowed), "127.0.0.1:5000", true);
        for ok in [
            "https://registry.example.com/v2/",
            "https://Registry.Example.COM:443/v2/",
            "http://127.0.0.1:5000/v2/",
            "http://2130706433:5000/v2/",
            "http://0x7f.0.0.1:5000/v2/",
        ] {
            for hop in [Hop::Registry, Hop::Redirect, Hop::TokenRealm] {
                assert!(check_url(&url(ok), hop, &r).is_ok(), "{ok} {hop:?}");
            }
        }
        for (target, shown) in [
            ("https://auth.docker.io/token", "auth.docker.io"),
            ("http://127.0.0.1:5001/v2/", "127.0.0.1:5001"),
            ("http://0x7f000001:5001/v2/", "127.0.0.1:5001"),
            ("http://2130706433/v2/", "127.0.0.1"),
        ] {
            for hop in [Hop::Redirect, Hop::TokenRealm] {
                assert_eq!(
                    refused(target, hop, &r),
                    format!("refusing to contact {shown}: not in allowedRegistries")
                );
            }
        }
        // A pattern that matches the spelling but not the address dialled does not count.
        let spelled = Patterns::new(&["2130706433:*"], true).unwrap();
        let r = route(Some(&spelled), "2130706433:5000", true);
        assert_eq!(
            refused("http://2130706433:5000/v2/", Hop::Registry, &r),
            "refusing to contact 2130706433:5000: not in allowedRegistries"
        );
        // A host allowed without a port is allowed on any port; with a port, on that one.
        let bare = Patterns::new(&["registry.example.com", "other.example.com:443"], true).unwrap();
        let r = route(Some(&bare), "registry.example.com", false);
        assert!(
            check_url(
                &url("https://registry.example.com:8443/"),
                Hop::Redirect,
                &r
            )
            .is_ok()
        );
        assert!(check_url(&url("https://other.example.com/"), Hop::Redirect, &r).is_ok());
        assert!(check_url(&url("https://other.example.com:8443/"), Hop::Redirect, &r).is_err());
    }

    #[test]
    fn dialled_ip_is_the_normalized_literal() {
        for (u, ip) in [
            ("http://2852039166/", Some("169.254.169.254")),
            ("http://0251.0376.0251.0376/", Some("169.254.169.254")),
            (
                "http://[::ffff:169.254.169.254]/",
                Some("::ffff:169.254.169.254"),
            ),
            ("http://registry.example.com/", None),
            ("http://0x7f000001.example.com/", None),
        ] {
            assert_eq!(dialled_ip(&url(u)), ip.map(|i| i.parse().unwrap()), "{u}");
        }
    }

    /// The DNS hook: `localhost` resolves (from /etc/hosts, no network) only to loopback, which
    /// the registry's own client may dial and the client of later hops from a public registry
    /// may not.
    #[tokio::test]
    async fn the_dns_hook_refuses_internal_answers_for_hops_of_a_public_registry() {
        use reqwest::dns::Resolve;
        use std::str::FromStr;
        let name = |s: &str| reqwest::dns::Name::from_str(s).unwrap();
        let open = GuardedResolver {
            allow_internal: true,
            overrides: Default::default(),
        };
        let addrs: Vec<SocketAddr> = open.resolve(name("localhost")).await.unwrap().collect();
        assert!(
            !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback()),
            "{addrs:?}"
        );
        let strict = GuardedResolver {
            allow_internal: false,
            overrides: Default::default(),
        };
        let err = match strict.resolve(name("localhost")).await {
            Ok(a) => panic!("{:?}", a.collect::<Vec<_>>()),
            Err(e) => e,
        };
        assert!(err.downcast_ref::<ForbiddenAddress>().is_some(), "{err}");
    }

    /// An overridden name resolves to its address and port, and the rule still judges it.
    #[tokio::test]
    async fn an_address_override_is_judged_like_a_dns_answer() {
        use reqwest::dns::Resolve;
        use std::str::FromStr;
        let name = |s: &str| reqwest::dns::Name::from_str(s).unwrap();
        let overrides: AddressOverrides = [
            (
                "registry-1.docker.io".to_owned(),
                "127.0.0.1:5443".parse().unwrap(),
            ),
            (
                "meta.example.com".to_owned(),
                "169.254.169.254:80".parse().unwrap(),
            ),
        ]
        .into();
        let open = GuardedResolver {
            allow_internal: true,
            overrides: std::sync::Arc::new(overrides),
        };
        let addrs: Vec<SocketAddr> = open
            .resolve(name("Registry-1.Docker.IO"))
            .await
            .unwrap()
            .collect();
        assert_eq!(addrs, ["127.0.0.1:5443".parse().unwrap()]);
        let strict = GuardedResolver {
            allow_internal: false,
            ..open.clone()
        };
        assert!(strict.resolve(name("registry-1.docker.io")).await.is_err());
        assert!(open.resolve(name("meta.example.com")).await.is_err());
    }

    #[test]
    fn docker_hubs_names_are_one_registry_for_every_hop() {
        for listed in ["docker.io", "index.docker.io", "registry-1.docker.io"] {
            let allowed = Patterns::new(&[listed, "auth.docker.io"], true).unwrap();
            let r = route(Some(&allowed), "registry-1.docker.io", false);
            for hop in [Hop::Registry, Hop::Redirect] {
                assert!(
                    check_url(&url("https://registry-1.docker.io/v2/"), hop, &r).is_ok(),
                    "{listed} {hop:?}"
                );
            }
            assert!(check_url(&url("https://auth.docker.io/token"), Hop::TokenRealm, &r).is_ok());
            assert_eq!(
                refused(
                    "https://production.cloudflare.docker.com/x",
                    Hop::Redirect,
                    &r
                ),
                "refusing to contact production.cloudflare.docker.com: not in allowedRegistries"
            );
        }
        // The token host is not Docker Hub: listing docker.io does not allow it.
        let allowed = Patterns::new(&["docker.io"], true).unwrap();
        let r = route(Some(&allowed), "registry-1.docker.io", false);
        assert_eq!(
            refused("https://auth.docker.io/token", Hop::TokenRealm, &r),
            "refusing to contact auth.docker.io: not in allowedRegistries"
        );
    }
}
