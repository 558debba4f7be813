//! Registry credentials: docker `config.json` / `.dockercfg` parsing and matching credentials to
//! an image the way the kubelet does (host globs, exact ports, path prefixes, Docker Hub aliases).

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine;
use serde::Deserialize;
use sha2::{Digest, Sha256};

pub use super::host::canonical_host;
use super::host::{HostPort, canonical};

/// One username/password (or identity token) pair for a registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    /// The user name (may be empty with an identity token).
    pub username: String,
    /// The password or identity token.
    pub password: String,
    /// Where it came from, for messages: e.g. `pull secret shop/regcred`.
    pub source: String,
    /// `password` is an identity token (a docker config entry's `identitytoken`, an OAuth2
    /// refresh token): exchanged at the token service, never sent as Basic credentials.
    pub identity_token: bool,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("source", &self.source)
            .field("identity_token", &self.identity_token)
            .finish()
    }
}

impl Credential {
    /// A stable, non-reversible identifier of the secret part, for cache keys.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.username.as_bytes());
        h.update([0]);
        h.update(self.password.as_bytes());
        if self.identity_token {
            h.update([0, b'i']);
        }
        h.finalize()[..12]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// A docker config file or pull secret could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{source_name}: {message}")]
pub struct ConfigError {
    /// Which file or secret.
    pub source_name: String,
    /// What is wrong.
    pub message: String,
}

#[derive(Debug, Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

#[derive(Debug, Deserialize)]
struct DockerConfigJson {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
}

/// Credentials keyed by registry location, matched kubelet-style.
#[derive(Debug, Clone, Default)]
pub struct Keyring {
    entries: Vec<(Location, Credential)>,
}

/// A parsed keyring key: host (possibly with `*` globs per label), port, path prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Location {
    host: String,
    port: Option<String>,
    path: String,
}

impl Location {
    fn parse(key: &str) -> Self {
        let rest = key.split_once("://").map_or(key, |(_, r)| r);
        let (hostport, path) = rest.split_once('/').unwrap_or((rest, ""));
        let HostPort { host, port } = HostPort::split(hostport);
        let host = canonical(host);
        // `https://index.docker.io/v1/` is the legacy Docker Hub key; its path is not a repository.
        let path = if host == "docker.io" && path.trim_end_matches('/') == "v1" {
            ""
        } else {
            path.trim_end_matches('/')
        };
        Self {
            host,
            port: port.map(str::to_owned),
            path: path.to_owned(),
        }
    }

    fn matches(&self, registry: &str, repository: &str) -> bool {
        let HostPort { host, port } = HostPort::split(registry);
        let host = canonical(host);
        if self.port.as_deref() != port {
            return false;
        }
        let want: Vec<&str> = self.host.split('.').collect();
        let have: Vec<&str> = host.split('.').collect();
        if want.len() != have.len() || !want.iter().zip(&have).all(|(w, h)| label_matches(w, h)) {
            return false;
        }
        self.path.is_empty()
            || repository == self.path
            || repository.starts_with(&format!("{}/", self.path))
    }

    /// Longer (more specific) keys are tried first, as the kubelet does.
    fn specificity(&self) -> (usize, usize) {
        (
            self.path.len(),
            self.host.len() - self.host.matches('*').count(),
        )
    }
}

/// `*` matches any run of characters within one DNS label.
fn label_matches(pattern: &str, label: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == label,
        Some((prefix, suffix)) => {
            label.len() >= prefix.len() + suffix.len()
                && label.starts_with(prefix)
                && label_matches_rest(suffix, &label[prefix.len()..])
        }
    }
}

fn label_matches_rest(pattern: &str, rest: &str) -> bool {
    if !pattern.contains('*') {
        return rest.ends_with(pattern);
    }
    (0..=rest.len()).any(|i| rest.is_char_boundary(i) && label_matches(pattern, &rest[i..]))
}

impl Keyring {
    /// Parses a `config.json` / `.dockerconfigjson` document.
    pub fn from_docker_config_json(text: &[u8], source: &str) -> Result<Self, ConfigError> {
        let cfg: DockerConfigJson = serde_json::from_slice(text).map_err(|e| ConfigError {
            source_name: source.to_owned(),
            message: format!("not a docker config.json: {e}"),
        })?;
        Self::from_entries(cfg.auths, source)
    }

    /// Parses a legacy `.dockercfg` document (the hosts at top level).
    pub fn from_dockercfg(text: &[u8], source: &str) -> Result<Self, ConfigError> {
        let entries: BTreeMap<String, AuthEntry> =
            serde_json::from_slice(text).map_err(|e| ConfigError {
                source_name: source.to_owned(),
                message: format!("not a .dockercfg document: {e}"),
            })?;
        Self::from_entries(entries, source)
    }

    fn from_entries(
        entries: BTreeMap<String, AuthEntry>,
        source: &str,
    ) -> Result<Self, ConfigError> {
        let mut out = Vec::new();
        for (key, entry) in entries {
            let identity_token = entry.identitytoken.as_ref().is_some_and(|t| !t.is_empty());
            let (username, password) = if let Some(token) =
                entry.identitytoken.filter(|t| !t.is_empty())
            {
                (entry.username.unwrap_or_default(), token)
            } else if let Some(auth) = entry.auth.filter(|a| !a.is_empty()) {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(auth.trim())
                    .ok()
                    .and_then(|d| String::from_utf8(d).ok())
                    .ok_or_else(|| ConfigError {
                        source_name: source.to_owned(),
                        message: format!("the auth of {key:?} is not base64 of user:password"),
                    })?;
                let (u, p) = decoded.split_once(':').ok_or_else(|| ConfigError {
                    source_name: source.to_owned(),
                    message: format!("the auth of {key:?} has no ':' between user and password"),
                })?;
                (u.to_owned(), p.to_owned())
            } else if let (Some(u), Some(p)) = (entry.username, entry.password) {
                (u, p)
            } else {
                continue;
            };
            out.push((
                Location::parse(&key),
                Credential {
                    username,
                    password,
                    source: source.to_owned(),
                    identity_token,
                },
            ));
        }
        out.sort_by_key(|(loc, _)| std::cmp::Reverse(loc.specificity()));
        Ok(Self { entries: out })
    }

    /// A keyring of `credentials`, in order, for every repository of `registry` (credentials
    /// already matched to an image, e.g. from a credential provider).
    pub fn for_registry(registry: &str, credentials: Vec<Credential>) -> Self {
        let location = Location::parse(registry);
        Self {
            entries: credentials
                .into_iter()
                .map(|c| (location.clone(), c))
                .collect(),
        }
    }

    /// Appends `other`'s entries after this keyring's own (lower priority).
    pub fn extend(&mut self, other: Keyring) {
        self.entries.extend(other.entries);
    }

    /// Every credential that applies to `registry`/`repository`, most specific first, without duplicates.
    pub fn lookup(&self, registry: &str, repository: &str) -> Vec<Credential> {
        let mut out: Vec<Credential> = Vec::new();
        for (loc, cred) in &self.entries {
            if loc.matches(registry, repository)
                && !out.iter().any(|c| {
                    c.username == cred.username
                        && c.password == cred.password
                        && c.identity_token == cred.identity_token
                })
            {
                out.push(cred.clone());
            }
        }
        out
    }

    /// True when there are no credentials.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn ring(json: &str) -> Keyring {
        Keyring::from_docker_config_json(json.as_bytes(), "test").unwrap()
    }

    #[test]
    fn decodes_auth_field() {
        let k = ring(&format!(
            r#"{{"auths":{{"registry.example.com":{{"auth":"{}"}}}}}}"#,
            b64("bob:s3cret")
        ));
        let c = k.lookup("registry.example.com", "team/app");
        assert_eq!(c.len(), 1);
        assert_eq!(
            (c[0].username.as_str(), c[0].password.as_str()),
            ("bob", "s3cret")
        );
    }

    #[test]
    fn username_password_fields_work() {
        let k = ring(r#"{"auths":{"ghcr.io":{"username":"u","password":"p"}}}"#);
        assert_eq!(k.lookup("ghcr.io", "org/x")[0].password, "p");
    }

    #[test]
    fn docker_hub_aliases_match_each_other() {
        for key in [
            "https://index.docker.io/v1/",
            "docker.io",
            "registry-1.docker.io",
            "index.docker.io",
        ] {
            let k = ring(&format!(
                r#"{{"auths":{{"{key}":{{"username":"u","password":"p"}}}}}}"#
            ));
            assert_eq!(k.lookup("docker.io", "library/nginx").len(), 1, "{key}");
        }
    }

    #[test]
    fn port_must_match_exactly() {
        let k = ring(r#"{"auths":{"127.0.0.1:5000":{"username":"u","password":"p"}}}"#);
        assert_eq!(k.lookup("127.0.0.1:5000", "a").len(), 1);
        assert!(k.lookup("127.0.0.1:5001", "a").is_empty());
        assert!(k.lookup("127.0.0.1", "a").is_empty());
    }

    #[test]
    fn glob_matches_one_label() {
        let k = ring(r#"{"auths":{"*.example.com":{"username":"u","password":"p"}}}"#);
        assert_eq!(k.lookup("registry.example.com", "a").len(), 1);
        assert!(k.lookup("a.b.example.com", "a").is_empty());
        assert!(k.lookup("example.com", "a").is_empty());
    }

    #[test]
    fn path_prefix_restricts_and_more_specific_comes_first() {
        let k = ring(
            r#"{"auths":{"registry.example.com":{"username":"all","password":"1"},"registry.example.com/team":{"username":"team","password":"2"}}}"#,
        );
        let c = k.lookup("registry.example.com", "team/app");
        assert_eq!(
            c.iter().map(|c| c.username.as_str()).collect::<Vec<_>>(),
            ["team", "all"]
        );
        let c = k.lookup("registry.example.com", "teammate/app");
        assert_eq!(
            c.iter().map(|c| c.username.as_str()).collect::<Vec<_>>(),
            ["all"]
        );
    }

    #[test]
    fn an_identity_token_is_marked_as_one() {
        let k = ring(&format!(
            r#"{{"auths":{{"acme.azurecr.io":{{"auth":"{}","identitytoken":"eyJ.refresh"}}}}}}"#,
            b64("00000000-0000-0000-0000-000000000000:")
        ));
        let c = &k.lookup("acme.azurecr.io", "team/app")[0];
        assert!(c.identity_token);
        assert_eq!(c.password, "eyJ.refresh");
        let k = ring(r#"{"auths":{"r.io":{"username":"u","password":"p","identitytoken":""}}}"#);
        assert!(!k.lookup("r.io", "a")[0].identity_token);
    }

    #[test]
    fn legacy_dockercfg_has_hosts_at_top_level() {
        let k = Keyring::from_dockercfg(
            format!(r#"{{"quay.io":{{"auth":"{}"}}}}"#, b64("q:w")).as_bytes(),
            "x",
        )
        .unwrap();
        assert_eq!(k.lookup("quay.io", "a/b")[0].username, "q");
    }

    #[test]
    fn bad_auth_names_the_source_and_key() {
        let err = Keyring::from_docker_config_json(
            br#"{"auths":{"h.io":{"auth":"!!!"}}}"#,
            "pull secret a/b",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "pull secret a/b: the auth of \"h.io\" is not base64 of user:password"
        );
    }

    #[test]
    fn debug_never_shows_the_password() {
        let c = Credential {
            username: "u".into(),
            password: "hunter2".into(),
            source: "s".into(),
            identity_token: false,
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn fingerprint_differs_by_password() {
        let a = Credential {
            username: "u".into(),
            password: "1".into(),
            source: "s".into(),
            identity_token: false,
        };
        let b = Credential {
            password: "2".into(),
            ..a.clone()
        };
        assert_ne!(a.fingerprint(), b.fingerprint());
        let token = Credential {
            identity_token: true,
            ..a.clone()
        };
        assert_ne!(a.fingerprint(), token.fingerprint());
        assert_eq!(a.fingerprint().len(), 24);
    }
}
