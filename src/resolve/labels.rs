//! The `registry` label of `pinhook_registry_requests_total`, from a closed set: anyone who can
//! create a Pod writes image strings, so a label copied from them would let any Pod author grow
//! `/metrics` and pinhook's memory without bound.
//!
//! The set is fixed when the transport is built from the policy (and rebuilt on reload): the
//! hosts of the policy's `registries` list and their mirrors, as written there (lowercased,
//! Docker Hub's names as `docker.io`); a fixed list of well-known public registries, a hosting
//! service's many per-customer hosts folded into one value ([`WELL_KNOWN`]); and [`OTHER`] for
//! everything else.

use std::collections::HashSet;

use super::host::{HostPort, canonical};
use crate::policy::RegistrySettings;

/// The label of every host that is neither configured nor well known.
pub const OTHER: &str = "other";

/// The well-known public registries: the label value, and what it covers (`*.` = any subdomain).
/// Docker Hub's other names (`index.docker.io`, `registry-1.docker.io`,
/// `registry.hub.docker.com`) are `docker.io` already.
pub const WELL_KNOWN: &[(&str, &[&str])] = &[
    ("docker.io", &["docker.io"]),
    ("ghcr.io", &["ghcr.io"]),
    ("quay.io", &["quay.io"]),
    ("gcr.io", &["gcr.io", "*.gcr.io"]),
    ("registry.k8s.io", &["registry.k8s.io"]),
    ("public.ecr.aws", &["public.ecr.aws"]),
    ("mcr.microsoft.com", &["mcr.microsoft.com"]),
    ("registry.gitlab.com", &["registry.gitlab.com"]),
    ("nvcr.io", &["nvcr.io"]),
    ("pkg.dev", &["*.pkg.dev"]),
    ("azurecr.io", &["*.azurecr.io"]),
    (
        "ecr.amazonaws.com",
        &["*.dkr.ecr.*.amazonaws.com", "*.dkr.ecr.*.amazonaws.com.cn"],
    ),
];

/// Maps a registry or mirror host to its label value, from the closed set fixed at construction.
#[derive(Debug, Clone, Default)]
pub struct RegistryLabelSet {
    configured: HashSet<String>,
}

impl RegistryLabelSet {
    /// The label set for a policy's `registries` list (hosts and mirrors).
    pub fn new(registries: &[RegistrySettings]) -> Self {
        let configured = registries
            .iter()
            .flat_map(|r| std::iter::once(&r.host).chain(&r.mirrors))
            .map(|h| canonical(h))
            .collect();
        Self { configured }
    }

    /// The label of `host_port`: itself when configured, a well-known name, or [`OTHER`].
    pub fn label(&self, host_port: &str) -> String {
        let host_port = canonical(host_port);
        if self.configured.contains(&host_port) {
            return host_port;
        }
        well_known(&host_port).unwrap_or(OTHER).to_owned()
    }

    /// Every value [`Self::label`] can return.
    pub fn values(&self) -> impl Iterator<Item = &str> {
        self.configured
            .iter()
            .map(String::as_str)
            .chain(WELL_KNOWN.iter().map(|(label, _)| *label))
            .chain(std::iter::once(OTHER))
    }
}

/// The well-known label of a canonical `host[:port]` (on the default port only).
fn well_known(host_port: &str) -> Option<&'static str> {
    let split = HostPort::split(host_port);
    if split.port.is_some_and(|p| p != "443") {
        return None;
    }
    WELL_KNOWN
        .iter()
        .find(|(_, patterns)| patterns.iter().any(|p| host_matches(p, split.host)))
        .map(|(label, _)| *label)
}

/// `*` stands for one or more whole DNS labels, `*.` at the start for any subdomain.
fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == host,
        Some((prefix, rest)) => {
            let Some(after) = host.strip_prefix(prefix) else {
                return false;
            };
            // The star takes at least one character and ends before a dot that `rest` starts with.
            (1..=after.len()).any(|i| {
                after.is_char_boundary(i)
                    && !after[..i].starts_with('.')
                    && !after[..i].ends_with('.')
                    && host_matches(rest, &after[i..])
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> RegistryLabelSet {
        RegistryLabelSet::new(&[RegistrySettings {
            host: "Registry.Example.com:5000".into(),
            mirrors: vec!["mirror.example.com".into()],
            ..Default::default()
        }])
    }

    #[test]
    fn configured_hosts_keep_their_name() {
        let l = labels();
        assert_eq!(
            l.label("registry.example.com:5000"),
            "registry.example.com:5000"
        );
        assert_eq!(l.label("MIRROR.example.com"), "mirror.example.com");
        assert_eq!(l.label("registry.example.com"), OTHER, "another port");
    }

    #[test]
    fn well_known_registries_fold_their_hosts() {
        let l = labels();
        for (host, label) in [
            ("registry-1.docker.io", "docker.io"),
            ("index.docker.io", "docker.io"),
            ("docker.io", "docker.io"),
            ("ghcr.io", "ghcr.io"),
            ("ghcr.io:443", "ghcr.io"),
            ("eu.gcr.io", "gcr.io"),
            ("us-docker.pkg.dev", "pkg.dev"),
            ("myteam.azurecr.io", "azurecr.io"),
            (
                "123456789012.dkr.ecr.eu-west-1.amazonaws.com",
                "ecr.amazonaws.com",
            ),
            (
                "123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn",
                "ecr.amazonaws.com",
            ),
            ("registry.k8s.io", "registry.k8s.io"),
        ] {
            assert_eq!(l.label(host), label, "{host}");
        }
    }

    #[test]
    fn everything_else_is_other() {
        let l = labels();
        for host in [
            "ghcr.io:5000",
            "evil.ghcr.io.example.com",
            "pkg.dev",
            "azurecr.io",
            "dkr.ecr.eu-west-1.amazonaws.com",
            "x.dkr.ecr.amazonaws.com",
            "127.0.0.1:5000",
            "[::1]:5000",
            "random-1234.example.com",
        ] {
            assert_eq!(l.label(host), OTHER, "{host}");
        }
        let values: Vec<&str> = l.values().collect();
        assert_eq!(values.len(), 2 + WELL_KNOWN.len() + 1);
    }
}
