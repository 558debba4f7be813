//! `host[:port]` as image references, keyrings, the policy and token realms write it: split
//! into host and port (IPv6 in brackets), and the canonical form registries are compared in.

use std::net::IpAddr;

/// A registry location split into its host and its port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostPort<'a> {
    /// The host name or IP address, without the brackets of an IPv6 literal.
    pub host: &'a str,
    /// The port's digits, when a port is written.
    pub port: Option<&'a str>,
}

impl<'a> HostPort<'a> {
    /// Splits `host`, `host:port`, `[v6]`, `[v6]:port` or a bare IP address; a suffix after the
    /// last `:` counts as a port only when it is digits.
    pub fn split(host_port: &'a str) -> Self {
        if let Some(rest) = host_port.strip_prefix('[')
            && let Some((host, after)) = rest.split_once(']')
        {
            let port = after.strip_prefix(':').filter(|p| is_port(p));
            return Self { host, port };
        }
        if host_port.parse::<IpAddr>().is_ok() {
            return Self {
                host: host_port,
                port: None,
            };
        }
        match host_port.rsplit_once(':') {
            Some((host, port)) if is_port(port) => Self {
                host,
                port: Some(port),
            },
            _ => Self {
                host: host_port,
                port: None,
            },
        }
    }

    /// The host as an IP address, when it is one.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

fn is_port(p: &str) -> bool {
    !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())
}

/// Docker Hub's several names are one registry, `docker.io`; other hosts are returned as given.
pub fn canonical_host(host: &str) -> String {
    match host {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".to_owned()
        }
        h => h.to_owned(),
    }
}

/// `host[:port]` lowercased, with Docker Hub's names as `docker.io`: the form the policy's
/// `registries` and the transport's tables are keyed by.
pub fn canonical(host_port: &str) -> String {
    canonical_host(&host_port.to_ascii_lowercase())
}

/// The `host[:port]` a URL connects to, as reqwest writes it (`[v6]` in brackets, no default port).
pub fn of_url(url: &reqwest::Url) -> String {
    match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_owned(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(s: &str) -> (&str, Option<&str>) {
        let h = HostPort::split(s);
        (h.host, h.port)
    }

    #[test]
    fn splits_names_ports_and_ipv6() {
        assert_eq!(
            split("registry.example.com"),
            ("registry.example.com", None)
        );
        assert_eq!(split("127.0.0.1:5000"), ("127.0.0.1", Some("5000")));
        assert_eq!(split("[::1]:5000"), ("::1", Some("5000")));
        assert_eq!(split("[fd00:ec2::254]"), ("fd00:ec2::254", None));
        assert_eq!(split("fe80::1"), ("fe80::1", None));
        assert_eq!(split("host:"), ("host:", None));
        assert_eq!(split("host:http"), ("host:http", None));
        assert_eq!(
            HostPort::split("[::1]:5000").ip(),
            Some("::1".parse().unwrap())
        );
        assert_eq!(HostPort::split("a.io:443").ip(), None);
    }

    #[test]
    fn docker_hub_names_are_one() {
        for h in [
            "docker.io",
            "index.docker.io",
            "Registry-1.Docker.IO",
            "registry.hub.docker.com",
        ] {
            assert_eq!(canonical(h), "docker.io", "{h}");
        }
        assert_eq!(canonical("Quay.io:443"), "quay.io:443");
    }

    #[test]
    fn urls_give_their_host_and_explicit_port() {
        let u = |s: &str| reqwest::Url::parse(s).unwrap();
        assert_eq!(
            of_url(&u("https://auth.example.com/token")),
            "auth.example.com"
        );
        assert_eq!(of_url(&u("http://[::1]:5001/token")), "[::1]:5001");
        assert_eq!(of_url(&u("https://a.io:443/t")), "a.io");
    }
}
