//! The kubelet's `CredentialProviderConfig` file (`kubelet.config.k8s.io/v1`, YAML or JSON),
//! read into typed structs and validated as the kubelet validates it
//! (`pkg/credentialprovider/plugin/config.go`); every error names the file and the field.
//! Reference: <https://kubernetes.io/docs/reference/config-api/kubelet-credentialprovider.v1/>.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::matching::ImagePattern;

/// Largest config file read (1 MiB); a real one is a few hundred bytes.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// The `apiVersion`s of the file the kubelet accepts.
const FILE_API_VERSIONS: [&str; 3] = [
    "kubelet.config.k8s.io/v1",
    "kubelet.config.k8s.io/v1beta1",
    "kubelet.config.k8s.io/v1alpha1",
];

/// The plugin protocol's `apiVersion`s the kubelet speaks.
pub const PLUGIN_API_VERSIONS: [&str; 3] = [
    "credentialprovider.kubelet.k8s.io/v1",
    "credentialprovider.kubelet.k8s.io/v1alpha1",
    "credentialprovider.kubelet.k8s.io/v1beta1",
];

/// The protocol version that may carry service-account tokens.
pub const PLUGIN_API_V1: &str = "credentialprovider.kubelet.k8s.io/v1";

/// The config file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not readable (missing, not a regular file, too large).
    #[error("cannot read credential provider config {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not a valid `CredentialProviderConfig`; every problem, `field: message`.
    #[error("credential provider config {}: {}", path.display(), problems.join("; "))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Each problem, naming its field.
        problems: Vec<String>,
    },
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawConfig {
    kind: Option<String>,
    api_version: Option<String>,
    #[serde(default)]
    providers: Vec<RawProvider>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawProvider {
    name: String,
    #[serde(default)]
    match_images: Vec<String>,
    default_cache_duration: Option<String>,
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: Vec<EnvVar>,
    token_attributes: Option<RawTokenAttributes>,
}

/// One `env` entry of a provider.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvVar {
    /// Variable name.
    pub name: String,
    /// Its value.
    pub value: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawTokenAttributes {
    #[serde(default)]
    service_account_token_audience: String,
    require_service_account: Option<bool>,
    #[serde(default)]
    required_service_account_annotation_keys: Vec<String>,
    #[serde(default)]
    optional_service_account_annotation_keys: Vec<String>,
    #[serde(default)]
    cache_type: String,
}

/// One validated `providers[]` entry.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    /// The plugin's name, also its executable's name in the bin dir.
    pub name: String,
    /// Images it is asked about.
    pub match_images: Vec<ImagePattern>,
    /// How long a response without `cacheDuration` is reused (zero: not at all).
    pub default_cache_duration: Duration,
    /// The protocol version requested and expected back.
    pub api_version: String,
    /// Command-line arguments.
    pub args: Vec<String>,
    /// Environment added to pinhook's own.
    pub env: Vec<EnvVar>,
    /// Present when the plugin wants the pod's service-account token.
    pub token_attributes: Option<TokenAttributes>,
}

/// What a plugin asks of the pod's service account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenAttributes {
    /// The token's audience.
    pub audience: String,
    /// Without a service account the plugin is not asked.
    pub require_service_account: bool,
    /// Annotations the service account must carry (passed to the plugin).
    pub required_annotation_keys: Vec<String>,
    /// Annotations passed to the plugin when present.
    pub optional_annotation_keys: Vec<String>,
    /// What its responses are cached by, besides image, registry or global.
    pub cache_type: TokenCacheType,
}

/// `tokenAttributes.cacheType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenCacheType {
    /// By service account (namespace, name, UID, annotations).
    ServiceAccount,
    /// By the token itself as well.
    Token,
}

/// The validated file.
#[derive(Debug, Clone)]
pub struct CredentialProviderConfig {
    /// The providers, in file order.
    pub providers: Vec<ProviderConfig>,
}

impl CredentialProviderConfig {
    /// Reads `path` (a regular file of at most [`MAX_CONFIG_BYTES`]) and validates it.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let bytes = crate::reload::read_bounded(path, MAX_CONFIG_BYTES).map_err(|source| {
            ConfigError::Read {
                path: path.to_owned(),
                source,
            }
        })?;
        Self::parse(&bytes, path)
    }

    /// Parses and validates the text of a config file; `path` names it in errors.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self, ConfigError> {
        let invalid = |problems: Vec<String>| ConfigError::Invalid {
            path: path.to_owned(),
            problems,
        };
        let text = std::str::from_utf8(bytes)
            .map_err(|e| invalid(vec![format!("not UTF-8 text: {e}")]))?;
        if text.trim().is_empty() {
            return Err(invalid(vec!["the file is empty".into()]));
        }
        // YAML is a superset of JSON: one parser reads both.
        let de = serde_yaml_ng::Deserializer::from_str(text);
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            let inner = e.into_inner();
            let at = inner
                .location()
                .map(|l| format!(" (line {}, column {})", l.line(), l.column()))
                .unwrap_or_default();
            let message = inner.to_string();
            let message = message
                .split_once(" at line ")
                .map_or(message.as_str(), |(m, _)| m)
                .to_owned();
            invalid(vec![format!("{field}: {message}{at}")])
        })?;
        validate(raw).map_err(invalid)
    }
}

fn validate(raw: RawConfig) -> Result<CredentialProviderConfig, Vec<String>> {
    let mut problems = Vec::new();
    match raw.kind.as_deref() {
        Some("CredentialProviderConfig") => {}
        Some(other) => problems.push(format!(
            "kind: must be CredentialProviderConfig, not {other:?}"
        )),
        None => problems.push("kind: required (CredentialProviderConfig)".into()),
    }
    match raw.api_version.as_deref() {
        Some(v) if FILE_API_VERSIONS.contains(&v) => {}
        Some(v) => problems.push(format!(
            "apiVersion: unsupported value {v:?}; supported: {}",
            FILE_API_VERSIONS.join(", ")
        )),
        None => problems.push("apiVersion: required (kubelet.config.k8s.io/v1)".into()),
    }
    if raw.providers.is_empty() {
        problems.push("providers: at least 1 item is required".into());
    }
    let mut providers = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, p) in raw.providers.into_iter().enumerate() {
        let at = |field: &str| format!("providers[{i}].{field}");
        let mut problem = |field: &str, message: String| {
            problems.push(format!("{}: {message}", at(field)));
        };
        for (bad, why) in [
            (p.name.is_empty(), "required"),
            (p.name.contains('/'), "cannot contain '/'"),
            (p.name.contains(' '), "cannot contain spaces"),
            (p.name == ".", "cannot be '.'"),
            (p.name == "..", "cannot be '..'"),
        ] {
            if bad {
                problem("name", format!("{:?} {why}", p.name));
            }
        }
        if !seen.insert(p.name.clone()) {
            problem("name", format!("duplicate provider name {:?}", p.name));
        }
        if p.api_version.is_empty() {
            problem("apiVersion", "required".into());
        } else if !PLUGIN_API_VERSIONS.contains(&p.api_version.as_str()) {
            problem(
                "apiVersion",
                format!(
                    "unsupported value {:?}; supported: {}",
                    p.api_version,
                    PLUGIN_API_VERSIONS.join(", ")
                ),
            );
        }
        if p.match_images.is_empty() {
            problem("matchImages", "at least 1 item is required".into());
        }
        let mut match_images = Vec::new();
        for (j, m) in p.match_images.iter().enumerate() {
            match ImagePattern::parse(m) {
                Ok(pattern) => match_images.push(pattern),
                Err(e) => problem(&format!("matchImages[{j}]"), format!("{m:?}: {e}")),
            }
        }
        let default_cache_duration = match p.default_cache_duration.as_deref() {
            None => {
                problem(
                    "defaultCacheDuration",
                    "required (e.g. 12h; 0s: no caching)".into(),
                );
                Duration::ZERO
            }
            Some(text) => match parse_go_duration(text) {
                Some(d) => d,
                None => {
                    problem(
                        "defaultCacheDuration",
                        format!("{text:?} is not a duration of at least 0 (e.g. 12h, 5m0s, 0s)"),
                    );
                    Duration::ZERO
                }
            },
        };
        let token_attributes = p.token_attributes.map(|t| {
            let mut problem = |field: &str, message: String| {
                problems.push(format!("{}: {message}", at(&format!("tokenAttributes.{field}"))));
            };
            if t.service_account_token_audience.is_empty() {
                problem("serviceAccountTokenAudience", "required".into());
            }
            if t.require_service_account.is_none() {
                problem("requireServiceAccount", "required (true or false)".into());
            }
            if p.api_version != PLUGIN_API_V1 {
                problem(
                    "",
                    format!("tokenAttributes is only supported for {PLUGIN_API_V1}"),
                );
            }
            if t.require_service_account == Some(false)
                && !t.required_service_account_annotation_keys.is_empty()
            {
                problem(
                    "requiredServiceAccountAnnotationKeys",
                    "requireServiceAccount cannot be false when requiredServiceAccountAnnotationKeys is set".into(),
                );
            }
            for (field, keys) in [
                (
                    "requiredServiceAccountAnnotationKeys",
                    &t.required_service_account_annotation_keys,
                ),
                (
                    "optionalServiceAccountAnnotationKeys",
                    &t.optional_service_account_annotation_keys,
                ),
            ] {
                let mut seen = std::collections::HashSet::new();
                for k in keys {
                    if let Err(why) = qualified_name(&k.to_lowercase()) {
                        problem(field, format!("{k:?}: {why}"));
                    }
                    if !seen.insert(k) {
                        problem(field, format!("duplicate key {k:?}"));
                    }
                }
            }
            let both: Vec<&String> = t
                .required_service_account_annotation_keys
                .iter()
                .filter(|k| t.optional_service_account_annotation_keys.contains(k))
                .collect();
            if !both.is_empty() {
                problem(
                    "",
                    format!("annotation keys cannot be both required and optional: {both:?}"),
                );
            }
            let cache_type = match t.cache_type.as_str() {
                "ServiceAccount" => TokenCacheType::ServiceAccount,
                "Token" => TokenCacheType::Token,
                "" => {
                    problem(
                        "cacheType",
                        "required when tokenAttributes is set; supported: ServiceAccount, Token"
                            .into(),
                    );
                    TokenCacheType::Token
                }
                other => {
                    problem(
                        "cacheType",
                        format!("unsupported value {other:?}; supported: ServiceAccount, Token"),
                    );
                    TokenCacheType::Token
                }
            };
            TokenAttributes {
                audience: t.service_account_token_audience,
                require_service_account: t.require_service_account.unwrap_or(true),
                required_annotation_keys: t.required_service_account_annotation_keys,
                optional_annotation_keys: t.optional_service_account_annotation_keys,
                cache_type,
            }
        });
        providers.push(ProviderConfig {
            name: p.name,
            match_images,
            default_cache_duration,
            api_version: p.api_version,
            args: p.args,
            env: p.env,
            token_attributes,
        });
    }
    // `tokenAttributes.: …` reads badly: a problem of the block itself names the block.
    let problems: Vec<String> = problems
        .into_iter()
        .map(|p| p.replace("tokenAttributes.: ", "tokenAttributes: "))
        .collect();
    if problems.is_empty() {
        Ok(CredentialProviderConfig { providers })
    } else {
        Err(problems)
    }
}

/// A `metav1.Duration` as Go writes it (`12h`, `5m0s`, `1h30m`, `0s`, `0`); `None` when not
/// one or negative.
pub fn parse_go_duration(text: &str) -> Option<Duration> {
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let text = text.strip_prefix('+').unwrap_or(text);
    // Go also knows `us`/`µs`/`ns`; sub-millisecond cache durations are treated as zero.
    if let Some(n) = ["ns", "us", "µs"].iter().find_map(|u| text.strip_suffix(u))
        && n.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && !n.is_empty()
    {
        return Some(Duration::ZERO);
    }
    crate::duration::parse_duration(text).ok()
}

/// Kubernetes' `IsQualifiedName`: an optional DNS-subdomain prefix and `/`, then a name of at
/// most 63 characters of `[A-Za-z0-9_.-]`, starting and ending with an alphanumeric.
fn qualified_name(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if p.is_empty() || p.len() > 253 || !p.split('.').all(label_ok) {
            return Err(format!("prefix {p:?} must be a DNS subdomain"));
        }
    }
    let alnum = |b: u8| b.is_ascii_alphanumeric();
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| alnum(b) || matches!(b, b'-' | b'_' | b'.'))
        && name.bytes().next().is_some_and(alnum)
        && name.bytes().last().is_some_and(alnum);
    if ok {
        Ok(())
    } else {
        Err("name part must be at most 63 characters of [A-Za-z0-9_.-], starting and ending with an alphanumeric".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<CredentialProviderConfig, ConfigError> {
        CredentialProviderConfig::parse(text.as_bytes(), Path::new("/etc/cp.yaml"))
    }

    fn problems(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    const ECR: &str = r#"
apiVersion: kubelet.config.k8s.io/v1
kind: CredentialProviderConfig
providers:
  - name: ecr-credential-provider
    matchImages: ["*.dkr.ecr.*.amazonaws.com", "*.dkr.ecr.*.amazonaws.com.cn"]
    defaultCacheDuration: "12h"
    apiVersion: credentialprovider.kubelet.k8s.io/v1
    args: [get-credentials]
    env:
      - name: AWS_PROFILE
        value: node
"#;

    #[test]
    fn reads_an_eks_config() {
        let c = parse(ECR).unwrap();
        let p = &c.providers[0];
        assert_eq!(p.name, "ecr-credential-provider");
        assert_eq!(p.default_cache_duration, Duration::from_secs(12 * 3600));
        assert_eq!(p.args, ["get-credentials"]);
        assert_eq!(
            p.env,
            [EnvVar {
                name: "AWS_PROFILE".into(),
                value: "node".into()
            }]
        );
        assert!(p.match_images[0].matches("1.dkr.ecr.eu-west-1.amazonaws.com/app"));
        assert!(p.token_attributes.is_none());
    }

    #[test]
    fn reads_json_too() {
        let c = parse(r#"{"apiVersion":"kubelet.config.k8s.io/v1","kind":"CredentialProviderConfig","providers":[{"name":"p","matchImages":["r.io"],"defaultCacheDuration":"0s","apiVersion":"credentialprovider.kubelet.k8s.io/v1"}]}"#).unwrap();
        assert_eq!(c.providers[0].default_cache_duration, Duration::ZERO);
    }

    #[test]
    fn reads_token_attributes() {
        let c = parse(
            r#"
apiVersion: kubelet.config.k8s.io/v1
kind: CredentialProviderConfig
providers:
  - name: acr
    matchImages: ["*.azurecr.io"]
    defaultCacheDuration: 10m
    apiVersion: credentialprovider.kubelet.k8s.io/v1
    tokenAttributes:
      serviceAccountTokenAudience: api://AzureADTokenExchange
      requireServiceAccount: true
      requiredServiceAccountAnnotationKeys: [azure.workload.identity/client-id]
      optionalServiceAccountAnnotationKeys: [azure.workload.identity/tenant-id]
      cacheType: ServiceAccount
"#,
        )
        .unwrap();
        let t = c.providers[0].token_attributes.clone().unwrap();
        assert_eq!(t.audience, "api://AzureADTokenExchange");
        assert!(t.require_service_account);
        assert_eq!(t.cache_type, TokenCacheType::ServiceAccount);
        assert_eq!(
            t.required_annotation_keys,
            ["azure.workload.identity/client-id"]
        );
    }

    #[test]
    fn every_problem_is_named_by_file_and_field() {
        let text = problems(
            r#"
apiVersion: kubelet.config.k8s.io/v1
kind: CredentialProviderConfig
providers:
  - name: a/b
    matchImages: []
    apiVersion: credentialprovider.kubelet.k8s.io/v2
  - name: ok
    matchImages: ["r.io:http"]
    defaultCacheDuration: -5m
    apiVersion: credentialprovider.kubelet.k8s.io/v1beta1
    tokenAttributes:
      serviceAccountTokenAudience: ""
      requireServiceAccount: false
      requiredServiceAccountAnnotationKeys: ["-bad"]
      cacheType: Pod
"#,
        );
        for want in [
            "credential provider config /etc/cp.yaml: ",
            "providers[0].name: \"a/b\" cannot contain '/'",
            "providers[0].apiVersion: unsupported value \"credentialprovider.kubelet.k8s.io/v2\"",
            "providers[0].matchImages: at least 1 item is required",
            "providers[0].defaultCacheDuration: required",
            "providers[1].matchImages[0]: \"r.io:http\": invalid port \"http\"",
            "providers[1].defaultCacheDuration: \"-5m\" is not a duration of at least 0",
            "providers[1].tokenAttributes.serviceAccountTokenAudience: required",
            "providers[1].tokenAttributes: tokenAttributes is only supported for credentialprovider.kubelet.k8s.io/v1",
            "providers[1].tokenAttributes.requiredServiceAccountAnnotationKeys: requireServiceAccount cannot be false",
            "providers[1].tokenAttributes.requiredServiceAccountAnnotationKeys: \"-bad\": name part",
            "providers[1].tokenAttributes.cacheType: unsupported value \"Pod\"",
        ] {
            assert!(text.contains(want), "missing {want:?} in {text}");
        }
    }

    #[test]
    fn unknown_fields_and_wrong_types_name_the_field_and_line() {
        let text = problems(
            "apiVersion: kubelet.config.k8s.io/v1\nkind: CredentialProviderConfig\nproviders:\n  - name: p\n    matchImage: [r.io]\n",
        );
        assert!(
            text.starts_with("credential provider config /etc/cp.yaml: providers[0]"),
            "{text}"
        );
        assert!(text.contains("unknown field `matchImage`"), "{text}");
        assert!(text.contains("line 5"), "{text}");
        let text = problems(
            "apiVersion: kubelet.config.k8s.io/v1\nkind: CredentialProviderConfig\nproviders:\n  - name: p\n    args: 3\n",
        );
        assert!(text.contains("providers[0].args: invalid type"), "{text}");
    }

    #[test]
    fn kind_api_version_and_providers_are_required() {
        let text = problems("providers: []\n");
        assert!(text.contains("kind: required"), "{text}");
        assert!(text.contains("apiVersion: required"), "{text}");
        assert!(
            text.contains("providers: at least 1 item is required"),
            "{text}"
        );
        let text = problems("apiVersion: v1\nkind: Pod\nproviders: []\n");
        assert!(
            text.contains("kind: must be CredentialProviderConfig, not \"Pod\""),
            "{text}"
        );
        assert!(problems("").contains("the file is empty"));
    }

    #[test]
    fn duplicate_names_and_dual_annotation_keys_are_refused() {
        let provider = |name: &str| {
            format!(
                "  - name: {name}\n    matchImages: [r.io]\n    defaultCacheDuration: 1m\n    apiVersion: credentialprovider.kubelet.k8s.io/v1\n    tokenAttributes:\n      serviceAccountTokenAudience: a\n      requireServiceAccount: true\n      requiredServiceAccountAnnotationKeys: [x.io/k]\n      optionalServiceAccountAnnotationKeys: [x.io/k]\n"
            )
        };
        let text = problems(&format!(
            "apiVersion: kubelet.config.k8s.io/v1\nkind: CredentialProviderConfig\nproviders:\n{}{}",
            provider("p"),
            provider("p")
        ));
        assert!(
            text.contains("providers[1].name: duplicate provider name \"p\""),
            "{text}"
        );
        assert!(
            text.contains("providers[0].tokenAttributes: annotation keys cannot be both required and optional: [\"x.io/k\"]"),
            "{text}"
        );
        assert!(
            text.contains("providers[0].tokenAttributes.cacheType: required"),
            "{text}"
        );
    }

    #[test]
    fn load_refuses_a_fifo_like_file_and_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let err = CredentialProviderConfig::load(dir.path()).unwrap_err();
        assert!(
            err.to_string().starts_with(&format!(
                "cannot read credential provider config {}: not a regular file",
                dir.path().display()
            )),
            "{err}"
        );
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("5m0s"), Some(Duration::from_secs(300)));
        assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_go_duration("-1s"), None);
        assert_eq!(parse_go_duration("1d"), None);
    }
}
