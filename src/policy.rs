//! The policy: which image references are acceptable, per namespace, and what to do about the
//! rest. Loaded from YAML (see `docs/policy.md`); every pattern is compiled once, at load time.

use std::fmt;
use std::path::Path;

use globset::GlobBuilder;
use regex::{Regex, RegexSet};
use serde::Deserialize;

use crate::patterns::Patterns;
use crate::reference::{ImageRef, ReferenceError};

/// The tags that move by convention and are denied by the built-in policy.
pub const DEFAULT_MUTABLE_TAGS: &[&str] = &[
    "latest",
    "*-latest",
    "latest-*",
    "main",
    "master",
    "trunk",
    "head",
    "develop",
    "development",
    "dev",
    "edge",
    "nightly",
    "*-nightly",
    "canary",
    "stable",
    "beta",
    "alpha",
    "current",
    "lts",
    "rolling",
    "snapshot",
    "*-snapshot",
    "unstable",
    "testing",
];

/// The namespaces exempt under the built-in policy.
pub const DEFAULT_EXEMPT_NAMESPACES: &[&str] = &["kube-system"];

/// What pinhook does with an object that has findings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Deny the request.
    Enforce,
    /// Allow it, with a warning shown to the client.
    Warn,
    /// Allow it silently; only the audit trail records it.
    Audit,
}

impl Mode {
    /// The lowercase name used in the policy file, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Warn => "warn",
            Mode::Audit => "audit",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether tags such as `1`, `1.25` or `1.25-alpine` (which follow the newest patch) are allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PartialVersions {
    /// Allowed (pinning freezes them at admission).
    #[default]
    Allow,
    /// Denied like any other mutable tag.
    Deny,
}

/// What /mutate does when a tag cannot be resolved (a tag that does not exist is always denied).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnResolveFailure {
    /// Deny, naming the image, the registry and the error.
    #[default]
    Deny,
    /// Allow the tag unpinned, with a warning and an `admission.unpinned` audit line.
    Allow,
}

/// A duration written like `1h`, `30m`, `90s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DurationStr(std::time::Duration);

impl<'de> Deserialize<'de> for DurationStr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        crate::duration::parse_duration(&s)
            .map(DurationStr)
            .map_err(serde::de::Error::custom)
    }
}

/// Docker Hub's names: one registry to the user (images say `docker.io`), whose API host is
/// `registry-1.docker.io`.
pub const DOCKER_HUB_NAMES: [&str; 4] = [
    "docker.io",
    "index.docker.io",
    "registry-1.docker.io",
    "registry.hub.docker.com",
];

/// Whether `allowed` (`allowedRegistries`) allows `host`: a pattern matches it or, when `host`
/// is one of Docker Hub's names, a pattern matches any of them.
pub fn allows_registry(allowed: &Patterns, host: &str) -> bool {
    allowed.is_match(host)
        || (DOCKER_HUB_NAMES
            .iter()
            .any(|n| n.eq_ignore_ascii_case(host))
            && DOCKER_HUB_NAMES.iter().any(|n| allowed.is_match(n)))
}

/// The default `staleIfError` window.
pub const DEFAULT_STALE_IF_ERROR: std::time::Duration = std::time::Duration::from_secs(3600);

/// Per-registry settings from the policy's `registries` list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegistrySettings {
    /// The registry host as written in image references, e.g. `registry.example.com:5000`.
    pub host: String,
    /// Speak plain HTTP instead of HTTPS.
    #[serde(default)]
    pub insecure: bool,
    /// A PEM file of CA certificates to trust for this registry (in addition to the system's).
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// Pull-through mirrors tried in order before the registry itself.
    #[serde(default)]
    pub mirrors: Vec<String>,
}

/// A policy file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("cannot read policy file {file}: {source}")]
    Read {
        /// The path given.
        file: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The YAML is malformed or a key is invalid.
    #[error("invalid policy file {file}{}: key {key:?}: {message}", location.map(|(l, c)| format!(", line {l} column {c}")).unwrap_or_default())]
    Invalid {
        /// The path given.
        file: String,
        /// 1-based line and column, where the parser knows them.
        location: Option<(usize, usize)>,
        /// The key path, e.g. `rules[0].mode` (`.` for the whole document).
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// One glob, checked where it is written so an error names its line.
struct GlobItem<const CI: bool>(String);

impl<'de, const CI: bool> Deserialize<'de> for GlobItem<CI> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        GlobBuilder::new(&s)
            .case_insensitive(CI)
            .build()
            .map_err(|e| serde::de::Error::custom(format!("invalid glob {s:?}: {}", e.kind())))?;
        Ok(Self(s))
    }
}

/// Glob patterns deserialized from a YAML list; `CI` selects case-insensitive matching.
#[derive(Debug, Clone, Default)]
struct GlobList<const CI: bool>(Patterns);

impl<'de, const CI: bool> Deserialize<'de> for GlobList<CI> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw: Vec<String> = Vec::<GlobItem<CI>>::deserialize(d)?
            .into_iter()
            .map(|g| g.0)
            .collect();
        Patterns::new(&raw, CI)
            .map(GlobList)
            .map_err(serde::de::Error::custom)
    }
}

/// One regex, checked where it is written so an error names its line.
struct RegexItem(String);

impl<'de> Deserialize<'de> for RegexItem {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Regex::new(&s).map_err(|e| {
            // regex's messages span several lines (the pattern, a caret); keep one.
            let one_line = e
                .to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            serde::de::Error::custom(format!("invalid regex {s:?}: {one_line}"))
        })?;
        Ok(Self(s))
    }
}

/// Regexes deserialized from a YAML list, compiled into one set.
#[derive(Debug, Clone)]
struct RegexList {
    set: RegexSet,
    sources: Vec<String>,
}

impl<'de> Deserialize<'de> for RegexList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw: Vec<String> = Vec::<RegexItem>::deserialize(d)?
            .into_iter()
            .map(|r| r.0)
            .collect();
        let set = RegexSet::new(&raw).map_err(serde::de::Error::custom)?;
        Ok(Self { set, sources: raw })
    }
}

/// The settings a rule may override.
#[derive(Debug, Default)]
struct Overrides {
    mode: Option<Mode>,
    mutable_tags: Option<GlobList<true>>,
    allowed_tags: Option<RegexList>,
    allowed_registries: Option<GlobList<true>>,
    exempt_images: Option<GlobList<false>>,
    partial_versions: Option<PartialVersions>,
    pin: Option<bool>,
    keep_tag: Option<bool>,
    on_resolve_failure: Option<OnResolveFailure>,
    stale_if_error: Option<DurationStr>,
}

/// The policy file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PolicyFile {
    mode: Option<Mode>,
    mutable_tags: Option<GlobList<true>>,
    allowed_tags: Option<RegexList>,
    allowed_registries: Option<GlobList<true>>,
    exempt_images: Option<GlobList<false>>,
    partial_versions: Option<PartialVersions>,
    pin: Option<bool>,
    keep_tag: Option<bool>,
    on_resolve_failure: Option<OnResolveFailure>,
    stale_if_error: Option<DurationStr>,
    exempt_namespaces: Option<GlobList<false>>,
    #[serde(default)]
    registries: Vec<RegistrySettings>,
    #[serde(default)]
    rules: Vec<RuleFile>,
}

/// One per-namespace override; the first whose `namespaces` match applies.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RuleFile {
    namespaces: GlobList<false>,
    mode: Option<Mode>,
    mutable_tags: Option<GlobList<true>>,
    allowed_tags: Option<RegexList>,
    allowed_registries: Option<GlobList<true>>,
    exempt_images: Option<GlobList<false>>,
    partial_versions: Option<PartialVersions>,
    pin: Option<bool>,
    keep_tag: Option<bool>,
    on_resolve_failure: Option<OnResolveFailure>,
    stale_if_error: Option<DurationStr>,
}

/// Moves the overridable settings of a policy file or rule into [`Overrides`].
macro_rules! overrides {
    ($f:expr) => {
        Overrides {
            mode: $f.mode,
            mutable_tags: $f.mutable_tags,
            allowed_tags: $f.allowed_tags,
            allowed_registries: $f.allowed_registries,
            exempt_images: $f.exempt_images,
            partial_versions: $f.partial_versions,
            pin: $f.pin,
            keep_tag: $f.keep_tag,
            on_resolve_failure: $f.on_resolve_failure,
            stale_if_error: $f.stale_if_error,
        }
    };
}

/// The effective settings for one namespace: the top level with one rule's overrides applied.
#[derive(Debug, Clone)]
pub struct Profile {
    /// What to do with findings.
    pub mode: Mode,
    /// Globs over tags that move.
    pub mutable_tags: Patterns,
    /// When non-empty, a tag must match one of these.
    allowed_tags: Option<RegexList>,
    /// When non-empty, the registry host must match one of these.
    pub allowed_registries: Patterns,
    /// Images never judged.
    pub exempt_images: Patterns,
    /// Whether partial versions are allowed.
    pub partial_versions: PartialVersions,
    /// Whether /mutate rewrites tags to digests.
    pub pin: bool,
    /// Whether a pinned reference keeps its tag (`name:tag@digest`) or drops it (`name@digest`).
    pub keep_tag: bool,
    /// What to do when resolution fails.
    pub on_resolve_failure: OnResolveFailure,
    /// How old a digest may be when served during a registry outage.
    pub stale_if_error: std::time::Duration,
}

/// Why one image is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// The string does not parse as an image reference.
    InvalidReference(String),
    /// No tag and no digest: the runtime pulls `latest`.
    MissingTag,
    /// The tag matches `mutableTags`.
    MutableTag(String),
    /// The tag is a partial version and `partialVersions: deny`.
    PartialVersion(String),
    /// The tag matches none of `allowedTags`.
    TagNotAllowed {
        /// The tag written.
        tag: String,
        /// The allowed patterns.
        allowed: Vec<String>,
    },
    /// The registry matches none of `allowedRegistries`.
    RegistryNotAllowed {
        /// The registry host.
        registry: String,
        /// The allowed patterns.
        allowed: Vec<String>,
    },
}

impl Reason {
    /// A short machine-readable code for logs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Reason::InvalidReference(_) => "invalid-reference",
            Reason::MissingTag => "missing-tag",
            Reason::MutableTag(_) => "mutable-tag",
            Reason::PartialVersion(_) => "partial-version",
            Reason::TagNotAllowed { .. } => "tag-not-allowed",
            Reason::RegistryNotAllowed { .. } => "registry-not-allowed",
        }
    }

    /// The full sentence about `image`, with how to fix it.
    pub fn describe(&self, image: &str) -> String {
        match self {
            Reason::InvalidReference(why) => {
                format!(
                    "image {image:?} is not a valid image reference ({why}); correct the image name"
                )
            }
            Reason::MissingTag => format!(
                "image {image:?} has no tag, so it uses mutable tag \"latest\"; use a version tag or a digest"
            ),
            Reason::MutableTag(tag) => {
                format!("image {image:?} uses mutable tag {tag:?}; use a version tag or a digest")
            }
            Reason::PartialVersion(tag) => format!(
                "image {image:?} uses partial version tag {tag:?}, which moves with each new release; use a full major.minor.patch version or a digest"
            ),
            Reason::TagNotAllowed { tag, allowed } => format!(
                "image {image:?} uses tag {tag:?}, which matches none of allowedTags ({}); use a tag that does, or a digest",
                allowed.join(", ")
            ),
            Reason::RegistryNotAllowed { registry, allowed } => format!(
                "image {image:?} comes from registry {registry:?}, which is not in allowedRegistries ({}); use an image from an allowed registry",
                allowed.join(", ")
            ),
        }
    }

    /// A terse phrase for warnings (which must stay under 120 characters).
    pub fn brief(&self) -> String {
        match self {
            Reason::InvalidReference(_) => "is not a valid reference".into(),
            Reason::MissingTag => "has no tag (pulls latest)".into(),
            Reason::MutableTag(tag) => format!("uses mutable tag {tag:?}"),
            Reason::PartialVersion(tag) => format!("uses partial version {tag:?}"),
            Reason::TagNotAllowed { tag, .. } => format!("tag {tag:?} not in allowedTags"),
            Reason::RegistryNotAllowed { registry, .. } => {
                format!("registry {registry:?} not allowed")
            }
        }
    }
}

/// The judgement on one image string.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// Matches `exemptImages`: not judged.
    Exempt,
    /// Acceptable as it is.
    Accepted(ImageRef),
    /// Not acceptable, for this reason.
    Rejected(Reason),
}

impl Profile {
    /// Judges one image string against this profile.
    pub fn judge(&self, image: &str) -> Verdict {
        let reference = match ImageRef::parse(image) {
            Ok(r) => r,
            Err(ReferenceError { reason, .. }) => {
                return Verdict::Rejected(Reason::InvalidReference(reason));
            }
        };
        if !self.exempt_images.is_empty()
            && (self.exempt_images.is_match(&reference.normalized())
                || self.exempt_images.is_match(image))
        {
            return Verdict::Exempt;
        }
        if !self.allowed_registries.is_empty()
            && !allows_registry(&self.allowed_registries, reference.registry())
        {
            return Verdict::Rejected(Reason::RegistryNotAllowed {
                registry: reference.registry().to_owned(),
                allowed: self.allowed_registries.sources().to_vec(),
            });
        }
        if reference.is_pinned() {
            return Verdict::Accepted(reference);
        }
        // A missing tag counts as "latest" for every tag rule.
        let tag = match reference.tag() {
            Some(tag) => tag,
            None if self.mutable_tags.is_match("latest") => {
                return Verdict::Rejected(Reason::MissingTag);
            }
            None => "latest",
        };
        if self.mutable_tags.is_match(tag) {
            return Verdict::Rejected(Reason::MutableTag(tag.to_owned()));
        }
        if self.partial_versions == PartialVersions::Deny && is_partial_version(tag) {
            return Verdict::Rejected(Reason::PartialVersion(tag.to_owned()));
        }
        if let Some(allowed) = &self.allowed_tags
            && !allowed.sources.is_empty()
            && !allowed.set.is_match(tag)
        {
            return Verdict::Rejected(Reason::TagNotAllowed {
                tag: tag.to_owned(),
                allowed: allowed.sources.clone(),
            });
        }
        Verdict::Accepted(reference)
    }
}

/// True for `1`, `v1.25`, `1.25-alpine`: a version with fewer than three numeric parts.
pub fn is_partial_version(tag: &str) -> bool {
    let t = tag.strip_prefix('v').unwrap_or(tag);
    let (version, suffix) = match t.find(['-', '_']) {
        Some(i) => (&t[..i], Some(&t[i + 1..])),
        None => (t, None),
    };
    if let Some(s) = suffix
        && !s.starts_with(|c: char| c.is_ascii_alphabetic())
    {
        return false;
    }
    let parts: Vec<&str> = version.split('.').collect();
    // A major of four or more digits is a date or build number (2024, 20240101), not a version.
    let numeric = parts
        .iter()
        .all(|p| !p.is_empty() && p.len() <= 4 && p.bytes().all(|b| b.is_ascii_digit()));
    numeric && parts.len() <= 2 && parts[0].len() <= 3
}

/// A loaded, compiled policy.
#[derive(Debug, Clone)]
pub struct Policy {
    base: Profile,
    exempt_namespaces: Patterns,
    rules: Vec<(Patterns, Profile)>,
    registries: Vec<RegistrySettings>,
    source: String,
}

impl Default for Policy {
    fn default() -> Self {
        Self::from_yaml("# built-in default", "<built-in default>")
            .expect("the built-in policy is valid")
    }
}

impl Policy {
    /// Reads and compiles the policy file at `path`: a regular file (symbolic links followed)
    /// of at most [`MAX_POLICY_BYTES`](crate::reload::MAX_POLICY_BYTES).
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = crate::reload::read_bounded(path, crate::reload::MAX_POLICY_BYTES)
            .and_then(|bytes| {
                String::from_utf8(bytes).map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "stream did not contain valid UTF-8",
                    )
                })
            })
            .map_err(|source| PolicyError::Read {
                file: path.display().to_string(),
                source,
            })?;
        Self::from_yaml(&text, &path.display().to_string())
    }

    /// Compiles a policy from YAML text; `file` names it in errors. A document of only comments is
    /// the built-in default; an empty file is refused.
    pub fn from_yaml(text: &str, file: &str) -> Result<Self, PolicyError> {
        if text.trim().is_empty() {
            // A zero-byte file is what a half-finished, non-atomic write looks like.
            return Err(PolicyError::Invalid {
                file: file.to_owned(),
                location: None,
                key: ".".into(),
                message:
                    "the file is empty; write `{}` (or only comments) for the built-in defaults"
                        .into(),
            });
        }
        let parsed: PolicyFile = if text.lines().all(|l| {
            let l = l.trim();
            l.is_empty() || l.starts_with('#') || l == "---"
        }) {
            PolicyFile::default()
        } else {
            let de = serde_yaml_ng::Deserializer::from_str(text);
            serde_path_to_error::deserialize(de).map_err(|e| {
                let key = e.path().to_string();
                let inner = e.into_inner();
                let message = strip_location(&inner.to_string());
                // serde_yaml_ng prefixes the key path, which the error names on its own.
                let message = match message.split_once(": ") {
                    Some((prefix, rest)) if key.starts_with(prefix) => rest.to_owned(),
                    _ => message,
                };
                PolicyError::Invalid {
                    file: file.to_owned(),
                    location: inner.location().map(|l| (l.line(), l.column())),
                    key,
                    message,
                }
            })?
        };
        let invalid = |key: &str, message: String| PolicyError::Invalid {
            file: file.to_owned(),
            location: None,
            key: key.to_owned(),
            message,
        };
        let defaults = Profile {
            mode: Mode::Enforce,
            mutable_tags: Patterns::new(DEFAULT_MUTABLE_TAGS, true)
                .map_err(|e| invalid("mutableTags", e.to_string()))?,
            allowed_tags: None,
            allowed_registries: Patterns::default(),
            exempt_images: Patterns::default(),
            partial_versions: PartialVersions::default(),
            pin: true,
            keep_tag: true,
            on_resolve_failure: OnResolveFailure::default(),
            stale_if_error: DEFAULT_STALE_IF_ERROR,
        };
        let exempt_namespaces = parsed.exempt_namespaces;
        let registries = parsed.registries;
        for (i, r) in registries.iter().enumerate() {
            if r.host.trim().is_empty() {
                return Err(invalid(
                    &format!("registries[{i}].host"),
                    "must name a registry host".into(),
                ));
            }
        }
        let parsed_rules = parsed.rules;
        let base = apply(&defaults, overrides!(parsed));
        let exempt_namespaces = match exempt_namespaces {
            Some(GlobList(p)) => p,
            None => Patterns::new(DEFAULT_EXEMPT_NAMESPACES, false)
                .map_err(|e| invalid("exemptNamespaces", e.to_string()))?,
        };
        let mut rules = Vec::with_capacity(parsed_rules.len());
        for (i, rule) in parsed_rules.into_iter().enumerate() {
            if rule.namespaces.0.is_empty() {
                return Err(invalid(
                    &format!("rules[{i}].namespaces"),
                    "must list at least one namespace glob".into(),
                ));
            }
            let namespaces = rule.namespaces.0.clone();
            rules.push((namespaces, apply(&base, overrides!(rule))));
        }
        Ok(Self {
            base,
            exempt_namespaces,
            rules,
            registries,
            source: file.to_owned(),
        })
    }

    /// The profile that applies in `namespace`, or `None` when the namespace is exempt.
    pub fn profile_for(&self, namespace: &str) -> Option<&Profile> {
        if self.exempt_namespaces.is_match(namespace) {
            return None;
        }
        Some(
            self.rules
                .iter()
                .find(|(namespaces, _)| namespaces.is_match(namespace))
                .map_or(&self.base, |(_, profile)| profile),
        )
    }

    /// Per-registry settings (`registries`).
    pub fn registries(&self) -> &[RegistrySettings] {
        &self.registries
    }

    /// Where this policy came from (a path, or `<built-in default>`).
    pub fn source(&self) -> &str {
        &self.source
    }
}

/// The base profile with `o`'s settings laid over it.
fn apply(base: &Profile, o: Overrides) -> Profile {
    Profile {
        mode: o.mode.unwrap_or(base.mode),
        mutable_tags: o
            .mutable_tags
            .map_or_else(|| base.mutable_tags.clone(), |g| g.0),
        allowed_tags: o.allowed_tags.or_else(|| base.allowed_tags.clone()),
        allowed_registries: o
            .allowed_registries
            .map_or_else(|| base.allowed_registries.clone(), |g| g.0),
        exempt_images: o
            .exempt_images
            .map_or_else(|| base.exempt_images.clone(), |g| g.0),
        partial_versions: o.partial_versions.unwrap_or(base.partial_versions),
        pin: o.pin.unwrap_or(base.pin),
        keep_tag: o.keep_tag.unwrap_or(base.keep_tag),
        on_resolve_failure: o.on_resolve_failure.unwrap_or(base.on_resolve_failure),
        stale_if_error: o.stale_if_error.map_or(base.stale_if_error, |d| d.0),
    }
}

/// serde_yaml_ng appends " at line L column C"; the error reports the location on its own.
fn strip_location(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> Policy {
        Policy::from_yaml(yaml, "test.yaml").unwrap()
    }

    fn reason(p: &Policy, ns: &str, image: &str) -> Option<Reason> {
        match p.profile_for(ns).unwrap().judge(image) {
            Verdict::Rejected(r) => Some(r),
            _ => None,
        }
    }

    #[test]
    fn default_denies_latest() {
        let p = Policy::default();
        assert_eq!(
            reason(&p, "shop", "nginx:latest"),
            Some(Reason::MutableTag("latest".into()))
        );
    }

    #[test]
    fn default_denies_missing_tag() {
        assert_eq!(
            reason(&Policy::default(), "shop", "nginx"),
            Some(Reason::MissingTag)
        );
    }

    #[test]
    fn default_denies_suffix_latest_glob() {
        assert_eq!(
            reason(&Policy::default(), "shop", "ghcr.io/a/b:dev-latest"),
            Some(Reason::MutableTag("dev-latest".into()))
        );
    }

    #[test]
    fn mutable_tags_match_case_insensitively() {
        assert_eq!(
            reason(&Policy::default(), "shop", "repo/app:Latest"),
            Some(Reason::MutableTag("Latest".into()))
        );
    }

    #[test]
    fn default_allows_version_tag() {
        assert_eq!(reason(&Policy::default(), "shop", "nginx:1.27.3"), None);
    }

    #[test]
    fn default_allows_partial_version() {
        assert_eq!(reason(&Policy::default(), "shop", "nginx:1.27"), None);
    }

    #[test]
    fn digest_passes_even_with_latest_tag() {
        let img = format!("nginx:latest@sha256:{}", "a".repeat(64));
        assert_eq!(reason(&Policy::default(), "shop", &img), None);
    }

    #[test]
    fn partial_versions_denied_when_switched_on() {
        let p = policy("partialVersions: deny");
        assert_eq!(
            reason(&p, "a", "postgres:16"),
            Some(Reason::PartialVersion("16".into()))
        );
        assert_eq!(
            reason(&p, "a", "nginx:1.25-alpine"),
            Some(Reason::PartialVersion("1.25-alpine".into()))
        );
        assert_eq!(reason(&p, "a", "nginx:1.25.3"), None);
    }

    #[test]
    fn partial_version_shapes() {
        for t in ["1", "v1", "1.25", "v1.25", "1.25-alpine", "3-slim"] {
            assert!(is_partial_version(t), "{t}");
        }
        for t in [
            "1.25.3",
            "1.25.3-alpine",
            "20240101",
            "2024",
            "2024.10",
            "abc",
            "1.x",
            "1-2",
            "sha-3f2a9c1",
        ] {
            assert!(!is_partial_version(t), "{t}");
        }
    }

    #[test]
    fn allowed_tags_deny_non_matching() {
        let p = policy(r"allowedTags: ['^v?\d+\.\d+\.\d+$']");
        assert!(matches!(
            reason(&p, "a", "app:feature-x"),
            Some(Reason::TagNotAllowed { .. })
        ));
        assert_eq!(reason(&p, "a", "app:v1.2.3"), None);
    }

    #[test]
    fn allowed_registries_deny_other_hosts_even_for_digests() {
        let p = policy("allowedRegistries: ['*.example.com']");
        let img = format!("docker.io/library/nginx@sha256:{}", "a".repeat(64));
        assert!(matches!(
            reason(&p, "a", &img),
            Some(Reason::RegistryNotAllowed { .. })
        ));
        assert_eq!(reason(&p, "a", "registry.example.com/app:1.0.0"), None);
    }

    #[test]
    fn any_of_docker_hubs_names_allows_docker_hub() {
        for listed in [
            "docker.io",
            "index.docker.io",
            "registry-1.docker.io",
            "Docker.IO",
        ] {
            let p = policy(&format!("allowedRegistries: ['{listed}', ghcr.io]"));
            for image in ["nginx:1.27.3", "index.docker.io/library/nginx:1.27.3"] {
                assert_eq!(reason(&p, "a", image), None, "{listed} {image}");
            }
            assert!(matches!(
                reason(&p, "a", "quay.io/x/y:1.0.0"),
                Some(Reason::RegistryNotAllowed { .. })
            ));
        }
        let p = policy("allowedRegistries: [auth.docker.io]");
        assert!(matches!(
            reason(&p, "a", "nginx:1.27.3"),
            Some(Reason::RegistryNotAllowed { .. })
        ));
    }

    #[test]
    fn exempt_namespace_has_no_profile() {
        assert!(Policy::default().profile_for("kube-system").is_none());
        assert!(Policy::default().profile_for("shop").is_some());
    }

    #[test]
    fn exempt_images_match_normalized_form() {
        let p = policy("exemptImages: ['registry.k8s.io/pause:*', 'docker.io/library/busybox*']");
        assert!(matches!(
            p.profile_for("a")
                .unwrap()
                .judge("registry.k8s.io/pause:latest"),
            Verdict::Exempt
        ));
        assert!(matches!(
            p.profile_for("a").unwrap().judge("busybox"),
            Verdict::Exempt
        ));
    }

    #[test]
    fn invalid_reference_is_rejected() {
        assert!(matches!(
            reason(&Policy::default(), "a", "upper/Case:1"),
            Some(Reason::InvalidReference(_))
        ));
    }

    #[test]
    fn first_matching_rule_wins() {
        let p = policy(
            "rules:\n- namespaces: ['sandbox-*']\n  mode: warn\n- namespaces: ['sandbox-x']\n  mode: audit\n",
        );
        assert_eq!(p.profile_for("sandbox-x").unwrap().mode, Mode::Warn);
        assert_eq!(p.profile_for("prod").unwrap().mode, Mode::Enforce);
    }

    #[test]
    fn rule_inherits_top_level_settings() {
        let p = policy(
            "mode: audit\nmutableTags: [foo]\nrules:\n- namespaces: [x]\n  partialVersions: deny\n",
        );
        let prof = p.profile_for("x").unwrap();
        assert_eq!(prof.mode, Mode::Audit);
        assert!(prof.mutable_tags.is_match("foo"));
        assert!(!prof.mutable_tags.is_match("latest"));
    }

    #[test]
    fn comment_only_document_is_default() {
        let p = policy("# nothing here\n");
        assert_eq!(p.profile_for("a").unwrap().mode, Mode::Enforce);
    }

    #[test]
    fn empty_file_is_refused() {
        let msg = Policy::from_yaml("  \n", "p.yaml").unwrap_err().to_string();
        assert_eq!(
            msg,
            "invalid policy file p.yaml: key \".\": the file is empty; write `{}` (or only comments) for the built-in defaults"
        );
    }

    #[test]
    fn key_is_not_repeated_in_the_message() {
        let msg = Policy::from_yaml("mode: [broken]\n", "p.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with(
                "invalid policy file p.yaml, line 1 column 7: key \"mode\": invalid type"
            ),
            "{msg}"
        );
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let err = Policy::from_yaml(
            "mode: warn\nrules:\n  - namespaces: [a]\n    mdoe: audit\n",
            "p.yaml",
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("p.yaml"), "{msg}");
        assert!(msg.contains("line 4"), "{msg}");
        assert!(msg.contains("mdoe"), "{msg}");
        assert!(msg.contains("rules[0]"), "{msg}");
    }

    #[test]
    fn bad_mode_names_key_and_line() {
        let msg = Policy::from_yaml("\nmode: block\n", "p.yaml")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("line 2"), "{msg}");
        assert!(msg.contains("key \"mode\""), "{msg}");
        assert!(msg.contains("block"), "{msg}");
    }

    #[test]
    fn bad_regex_names_key_and_pattern() {
        let msg = Policy::from_yaml("allowedTags:\n  - '(unclosed'\n", "p.yaml")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("allowedTags"), "{msg}");
        assert!(msg.contains("(unclosed"), "{msg}");
        assert!(msg.contains("line "), "{msg}");
    }

    #[test]
    fn bad_pattern_error_names_its_own_line() {
        let msg = Policy::from_yaml(
            "mode: warn\nallowedTags:\n  - '^v1'\n  - '(unclosed'\n",
            "p.yaml",
        )
        .unwrap_err()
        .to_string();
        // The key names the item exactly; serde_yaml_ng's line may be the previous item's.
        assert!(
            msg.contains("key \"allowedTags[1]\": invalid regex \"(unclosed\""),
            "{msg}"
        );
        assert!(!msg.contains('\n'), "{msg}");
    }

    #[test]
    fn nested_unknown_key_is_not_repeated() {
        let msg = Policy::from_yaml("rules:\n  - namespaces: [a]\n    mdoe: warn\n", "p.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("key \"rules[0].mdoe\": unknown field `mdoe`"),
            "{msg}"
        );
    }

    #[test]
    fn missing_tag_is_checked_as_latest_by_allowed_tags() {
        let p = policy("mutableTags: []\nallowedTags: ['^v?\\d+\\.\\d+\\.\\d+$']\n");
        assert!(matches!(
            reason(&p, "a", "nginx"),
            Some(Reason::TagNotAllowed { .. })
        ));
    }

    #[test]
    fn partial_version_hint_does_not_suggest_another_partial_version() {
        let msg = Reason::PartialVersion("16".into()).describe("postgres:16");
        assert!(msg.contains("full major.minor.patch version"), "{msg}");
        assert!(!msg.contains("16.0"), "{msg}");
    }

    #[test]
    fn bad_glob_names_key() {
        let msg = Policy::from_yaml("exemptNamespaces: ['a[']\n", "p.yaml")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("exemptNamespaces"), "{msg}");
        assert!(msg.contains("a["), "{msg}");
    }

    #[test]
    fn pinning_keys_default_and_override_per_rule() {
        let p = policy(
            "keepTag: false\nstaleIfError: 10m\nrules:\n- namespaces: [ci]\n  pin: false\n  onResolveFailure: allow\n",
        );
        let base = p.profile_for("shop").unwrap();
        assert!(base.pin && !base.keep_tag);
        assert_eq!(base.on_resolve_failure, OnResolveFailure::Deny);
        assert_eq!(base.stale_if_error, std::time::Duration::from_secs(600));
        let ci = p.profile_for("ci").unwrap();
        assert!(!ci.pin && !ci.keep_tag);
        assert_eq!(ci.on_resolve_failure, OnResolveFailure::Allow);
    }

    #[test]
    fn registries_are_parsed() {
        let p = policy(
            "registries:\n- host: 127.0.0.1:5000\n  insecure: true\n  mirrors: [127.0.0.1:6000]\n",
        );
        assert_eq!(p.registries()[0].host, "127.0.0.1:5000");
        assert!(p.registries()[0].insecure);
    }

    #[test]
    fn bad_stale_window_names_key() {
        let msg = Policy::from_yaml("staleIfError: soon\n", "p.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("staleIfError") && msg.contains("soon"),
            "{msg}"
        );
    }

    #[test]
    fn rule_without_namespaces_is_refused() {
        let msg = Policy::from_yaml("rules:\n- mode: warn\n", "p.yaml")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("namespaces"), "{msg}");
    }

    #[test]
    fn load_refuses_devices_fifos_and_oversized_files_but_follows_links() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let load_err = |p: &Path| Policy::load(p).unwrap_err().to_string();

        std::os::unix::fs::symlink("/dev/zero", d.join("zero.yaml")).unwrap();
        let e = load_err(&d.join("zero.yaml"));
        assert!(
            e.starts_with("cannot read policy file ")
                && e.ends_with("not a regular file (it is a character device)"),
            "{e}"
        );

        let fifo = d.join("fifo.yaml");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        assert!(load_err(&fifo).ends_with("(it is a FIFO)"));

        let big = d.join("big.yaml");
        let mut text = String::from("mode: warn\n");
        while text.len() as u64 <= crate::reload::MAX_POLICY_BYTES {
            text.push_str("# padding padding padding padding padding padding padding\n");
        }
        std::fs::write(&big, &text).unwrap();
        assert!(
            load_err(&big).contains("more than the limit of 1048576 bytes"),
            "{}",
            load_err(&big)
        );

        // A ConfigMap mount: policy.yaml -> ..data/policy.yaml, ..data -> a directory.
        std::fs::create_dir(d.join("..v1")).unwrap();
        std::fs::write(d.join("..v1/policy.yaml"), "mode: audit\n").unwrap();
        std::os::unix::fs::symlink("..v1", d.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/policy.yaml", d.join("policy.yaml")).unwrap();
        let p = Policy::load(&d.join("policy.yaml")).unwrap();
        assert_eq!(p.profile_for("shop").unwrap().mode, Mode::Audit);

        std::fs::write(d.join("latin1.yaml"), b"mode: warn # \xe9\n").unwrap();
        assert!(load_err(&d.join("latin1.yaml")).ends_with("stream did not contain valid UTF-8"));
    }
}
