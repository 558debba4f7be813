//! The SSRF guard: the addresses and hosts pinhook refuses to contact, and where that is enforced.
//!
//! Refused: link-local addresses (169.254.0.0/16, fe80::/10, where cloud metadata services
//! live), the well-known metadata endpoints (AWS's fd00:ec2::254, Alibaba's 100.100.100.200),
//! unspecified, broadcast and multicast addresses, IPv4-mapped IPv6 forms of any of these; and,
//! when the profile in force sets `allowedRegistries`, every host outside it.
//!
//! Enforced in three places, so no path around it exists:
//! - at DNS resolution ([`GuardedResolver`], installed in every reqwest client pinhook builds):
//!   every connection, to a registry, a mirror, a redirect target or a token realm, and DNS
//!   rebinding, only ever reaches an allowed address;
//! - in the redirect policy ([`redirect_policy`]): an IP-literal redirect target (which skips
//!   DNS) is checked, and at most five redirects are followed;
//! - before any request ([`check_host`]): the registry or mirror host and the token realm's
//!   host are checked against the forbidden IP literals and `allowedRegistries`.

use std::net::{IpAddr, SocketAddr};

use super::ResolveError;
use super::host::HostPort;
use crate::patterns::Patterns;

/// AWS's IPv6 instance-metadata address.
const AWS_METADATA_V6: std::net::Ipv6Addr =
    std::net::Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);

/// True for addresses pinhook never contacts: link-local (cloud metadata lives there), the
/// well-known metadata endpoints, unspecified, broadcast and multicast.
pub fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.octets() == [100, 100, 100, 200]
        }
        IpAddr::V6(v6) => {
            if let Some(mapped) = v6.to_ipv4_mapped() {
                return is_forbidden(IpAddr::V4(mapped));
            }
            let seg = v6.segments();
            (seg[0] & 0xffc0) == 0xfe80
                || v6.is_unspecified()
                || v6.is_multicast()
                || v6 == AWS_METADATA_V6
        }
    }
}

/// The error a filtered DNS answer produces, found again in reqwest's error chain.
#[derive(Debug, thiserror::Error)]
#[error("{host} resolves only to forbidden addresses ({addrs})")]
pub(super) struct ForbiddenAddress {
    /// The host that was looked up.
    pub(super) host: String,
    /// Every address it resolved to, comma-separated.
    pub(super) addrs: String,
}

/// A DNS resolver that drops forbidden addresses.
#[derive(Debug, Clone, Copy)]
pub(super) struct GuardedResolver;

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = all
                .iter()
                .copied()
                .filter(|a| !is_forbidden(a.ip()))
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

/// Checks a host before any request: forbidden IP literals, and `allowedRegistries` when set.
pub(super) fn check_host(host_port: &str, allowed: Option<&Patterns>) -> Result<(), ResolveError> {
    let split = HostPort::split(host_port);
    let host = split.host;
    if let Some(ip) = split.ip()
        && is_forbidden(ip)
    {
        return Err(ResolveError::Forbidden {
            host: host_port.to_owned(),
            reason: format!("{ip} is a link-local or metadata address"),
        });
    }
    if let Some(allowed) = allowed
        && !allowed.is_empty()
        && !allowed.is_match(host_port)
        && !allowed.is_match(host)
    {
        return Err(ResolveError::Forbidden {
            host: host_port.to_owned(),
            reason: "not in allowedRegistries".into(),
        });
    }
    Ok(())
}

/// Follows at most five redirects, never to a forbidden IP literal (names are checked by
/// [`GuardedResolver`] when the redirect target is connected to).
pub(super) fn redirect_policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let host = attempt.url().host_str().unwrap_or("").to_owned();
        if let Some(ip) = HostPort::split(&host).ip()
            && is_forbidden(ip)
        {
            attempt.error(ForbiddenAddress {
                host,
                addrs: ip.to_string(),
            })
        } else if attempt.previous().len() >= 5 {
            attempt.stop()
        } else {
            attempt.follow()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forbids_metadata_and_link_local() {
        for ip in [
            "169.254.169.254",
            "169.254.0.1",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:169.254.169.254",
            "100.100.100.200",
            "0.0.0.0",
        ] {
            assert!(is_forbidden(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["127.0.0.1", "10.0.0.5", "192.168.1.1", "::1", "8.8.8.8"] {
            assert!(!is_forbidden(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn ip_literal_hosts_are_checked_before_any_request() {
        assert!(matches!(
            check_host("169.254.169.254", None),
            Err(ResolveError::Forbidden { .. })
        ));
        assert!(matches!(
            check_host("169.254.169.254:80", None),
            Err(ResolveError::Forbidden { .. })
        ));
        assert!(matches!(
            check_host("[fd00:ec2::254]:443", None),
            Err(ResolveError::Forbidden { .. })
        ));
        assert!(check_host("127.0.0.1:5000", None).is_ok());
    }

    #[test]
    fn allowed_registries_bound_every_host() {
        let allowed = Patterns::new(&["*.example.com"], true).unwrap();
        assert!(check_host("registry.example.com", Some(&allowed)).is_ok());
        let err = check_host("auth.docker.io", Some(&allowed)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "refusing to contact auth.docker.io: not in allowedRegistries"
        );
    }
}
