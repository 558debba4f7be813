//! Image references: the grammar of distribution/reference (the parser the kubelet and
//! containerd use), normalized as its `ParseNormalizedNamed` does, and remembered as the user
//! wrote them.
//!
//! The parser is written here rather than taken from oci-spec: oci-spec's regex judged 21 of 225
//! inputs from the peers' test suites differently from distribution (bracketed IPv6 hosts,
//! uppercase hosts, image IDs) and cost ~12 MiB of resident memory once compiled. This one is a
//! single left-to-right scan per part; `tests/reference_grammar.rs` proves it against
//! distribution's own published test vectors and fuzzes it differentially against distribution
//! itself (built from its Go module) and against oci-spec.
//!
//! Where pinhook refuses what distribution accepts, it is a reference no runtime could pull, and
//! the refusal says why: a registry host longer than a DNS name (255 characters), a port above
//! 65535, and a first component distribution reads as a host but that is no valid host name
//! (`a_b.c/app`, which distribution keeps with an empty domain).
//!
//! The same few image strings come back in admission after admission, so valid references are
//! remembered, parsed, in a small memo shared by all requests, bounded in bytes.

use std::sync::{Arc, LazyLock};

/// Bytes of image strings (and their parsed parts) the parse memo keeps, estimated by
/// [`memo_weight`]: 2 MiB, about 4,000 references of ordinary length. Least-used ones leave
/// first.
pub const MEMO_MAX_BYTES: u64 = 2 * 1024 * 1024;

/// Longest image string the memo keeps, in bytes; a longer one (rare, and legitimate only up to
/// ~700 bytes) is parsed every time it comes.
pub const MEMO_MAX_ENTRY_BYTES: usize = 512;

/// Longest registry host accepted, in characters (a DNS name's limit).
pub const MAX_HOST_CHARS: usize = 255;

/// Longest repository path accepted, in characters (distribution's limit).
pub const MAX_PATH_CHARS: usize = 255;

/// Longest tag, in characters (distribution's limit).
pub const MAX_TAG_CHARS: usize = 128;

/// Docker Hub, as distribution names it.
const DOCKER_HUB: &str = "docker.io";

/// What one memo entry costs, roughly: the key, the parsed parts and the bookkeeping around them.
fn memo_weight(key: &str, value: &ImageRef) -> u32 {
    let p = &value.0;
    let bytes = key.len()
        + p.original.len()
        + p.registry.len()
        + p.repository.len()
        + p.tag.as_ref().map_or(0, String::len)
        + p.digest.as_ref().map_or(0, String::len)
        + 256;
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

/// Parsed references by the string they were parsed from.
static MEMO: LazyLock<moka::sync::Cache<String, ImageRef>> = LazyLock::new(|| {
    moka::sync::Cache::builder()
        .weigher(|key: &String, value: &ImageRef| memo_weight(key, value))
        .max_capacity(MEMO_MAX_BYTES)
        .build()
});

/// Why an image string is not a usable reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("image {image:?} is not a valid image reference: {reason}")]
pub struct ReferenceError {
    /// The string exactly as found in the object.
    pub image: String,
    /// The parser's explanation.
    pub reason: String,
}

/// A parsed image reference together with the user's original spelling (cheap to clone).
#[derive(Debug, Clone)]
pub struct ImageRef(Arc<Parsed>);

#[derive(Debug)]
struct Parsed {
    original: String,
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<String>,
}

impl ImageRef {
    /// Parses an image string as the kubelet would (`nginx` means `docker.io/library/nginx:latest`).
    pub fn parse(image: &str) -> Result<Self, ReferenceError> {
        if let Some(known) = MEMO.get(image) {
            return Ok(known);
        }
        let parsed = Self::parse_uncached(image)?;
        if image.len() <= MEMO_MAX_ENTRY_BYTES {
            MEMO.insert(image.to_owned(), parsed.clone());
        }
        Ok(parsed)
    }

    /// Parses an image string every time, bypassing the memo.
    pub fn parse_uncached(image: &str) -> Result<Self, ReferenceError> {
        let parts = grammar::parse(image).map_err(|reason| ReferenceError {
            image: image.to_owned(),
            reason,
        })?;
        let repository = if parts.library {
            format!("library/{}", parts.path)
        } else {
            parts.path.to_owned()
        };
        Ok(Self(Arc::new(Parsed {
            original: image.to_owned(),
            registry: parts.domain.to_owned(),
            repository,
            tag: parts.tag.map(str::to_owned),
            digest: parts.digest.map(str::to_owned),
        })))
    }

    /// The string as the user wrote it.
    pub fn original(&self) -> &str {
        &self.0.original
    }

    /// The registry host as written (`[::1]:5000`, `Registry.Example`), `docker.io` for Docker
    /// Hub, also when written `index.docker.io` or not at all.
    pub fn registry(&self) -> &str {
        &self.0.registry
    }

    /// The repository path inside the registry (`library/nginx`).
    pub fn repository(&self) -> &str {
        &self.0.repository
    }

    /// The tag the user wrote, if any.
    pub fn tag(&self) -> Option<&str> {
        self.0.tag.as_deref()
    }

    /// The tag the runtime will pull: the written one, or `latest` when there is neither tag nor digest.
    pub fn effective_tag(&self) -> Option<&str> {
        match (&self.0.tag, &self.0.digest) {
            (Some(tag), _) => Some(tag),
            (None, None) => Some("latest"),
            (None, Some(_)) => None,
        }
    }

    /// The digest (`sha256:…`), if the reference carries one.
    pub fn digest(&self) -> Option<&str> {
        self.0.digest.as_deref()
    }

    /// True when the reference names content by digest and so can never move.
    pub fn is_pinned(&self) -> bool {
        self.0.digest.is_some()
    }

    /// The fully-qualified form, e.g. `docker.io/library/nginx:1.27` (no implicit `latest`).
    pub fn normalized(&self) -> String {
        let mut s = format!("{}/{}", self.registry(), self.repository());
        if let Some(tag) = self.tag() {
            s.push(':');
            s.push_str(tag);
        }
        if let Some(digest) = self.digest() {
            s.push('@');
            s.push_str(digest);
        }
        s
    }
}

/// distribution/reference's grammar, one function per production of its `regexp.go`, with the
/// domain split of its `normalize.go` and the digest rules of go-digest.
mod grammar {
    use super::{DOCKER_HUB, MAX_HOST_CHARS, MAX_PATH_CHARS, MAX_TAG_CHARS};

    /// The parts of a valid reference, borrowed from the input.
    #[derive(Debug, PartialEq, Eq)]
    pub(super) struct Parts<'a> {
        /// The registry host and port (`docker.io` for Docker Hub).
        pub domain: &'a str,
        /// The repository path as written.
        pub path: &'a str,
        /// Whether `library/` goes before the path (a Docker Hub official image).
        pub library: bool,
        pub tag: Option<&'a str>,
        pub digest: Option<&'a str>,
    }

    /// Splits and checks one image string; the error is the reason, for messages.
    pub(super) fn parse(s: &str) -> Result<Parts<'_>, String> {
        if s.is_empty() {
            return Err("the image is empty".into());
        }
        if s.trim() != s {
            return Err("leading or trailing whitespace".into());
        }
        if s.len() == 64 && s.bytes().all(|b| matches!(b, b'a'..=b'f' | b'0'..=b'9')) {
            return Err("a 64-character hexadecimal string is an image ID, not a reference".into());
        }
        let (domain, remainder) = split_domain(s);
        let library = domain == DOCKER_HUB && !remainder.contains('/');
        // distribution checks the name up to the first `:` of what follows the domain.
        let remote = remainder.split(':').next().unwrap_or(remainder);
        if remote.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(format!("repository name {remote:?} must be lowercase"));
        }
        check_domain(domain)?;
        let name_end = remainder.find([':', '@']).unwrap_or(remainder.len());
        let (path, mut rest) = remainder.split_at(name_end);
        check_path(path)?;
        let path_chars = path.len() + if library { "library/".len() } else { 0 };
        if path_chars > MAX_PATH_CHARS {
            return Err(format!(
                "repository name must not be more than {MAX_PATH_CHARS} characters (it has {path_chars})"
            ));
        }
        let mut tag = None;
        if let Some(after) = rest.strip_prefix(':') {
            let end = after.find('@').unwrap_or(after.len());
            check_tag(&after[..end])?;
            tag = Some(&after[..end]);
            rest = &after[end..];
        }
        let mut digest = None;
        if let Some(after) = rest.strip_prefix('@') {
            check_digest(after)?;
            digest = Some(after);
        }
        Ok(Parts {
            domain,
            path,
            library,
            tag,
            digest,
        })
    }

    /// `splitDockerDomain`: the first component is the registry when it is `localhost`, holds a
    /// `.` or `:`, or has an uppercase letter; otherwise the image is on Docker Hub.
    fn split_domain(s: &str) -> (&str, &str) {
        let Some((first, rest)) = s.split_once('/') else {
            return (DOCKER_HUB, s);
        };
        if first == "index.docker.io" {
            (DOCKER_HUB, rest)
        } else if first == "localhost"
            || first.contains(['.', ':'])
            || first.bytes().any(|b| b.is_ascii_uppercase())
        {
            (first, rest)
        } else {
            (DOCKER_HUB, s)
        }
    }

    /// `domainAndPort`: a DNS name or a bracketed IPv6 address, then an optional `:port`.
    fn check_domain(domain: &str) -> Result<(), String> {
        let invalid = |why: &str| Err(format!("registry host {domain:?} {why}"));
        let (host, port) = if let Some(v6) = domain.strip_prefix('[') {
            let Some((addr, after)) = v6.split_once(']') else {
                return invalid("has no closing bracket");
            };
            if addr.is_empty() || !addr.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
                return invalid("is not a valid IPv6 address in brackets");
            }
            (&domain[..addr.len() + 2], after)
        } else {
            let end = domain.find(':').unwrap_or(domain.len());
            let host = &domain[..end];
            if !host.split('.').all(is_domain_component) {
                return invalid(if is_path_component(host) {
                    "is not a valid host name (no runtime could pull from it)"
                } else {
                    "is not a valid host name"
                });
            }
            (host, &domain[end..])
        };
        if !port.is_empty() {
            let digits = port.strip_prefix(':').unwrap_or("");
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return invalid("has an invalid port");
            }
            if digits.parse::<u16>().is_err() {
                return invalid("has a port above 65535");
            }
        }
        let chars = host.chars().count();
        if chars > MAX_HOST_CHARS {
            return Err(format!(
                "registry host must not be more than {MAX_HOST_CHARS} characters (it has {chars})"
            ));
        }
        Ok(())
    }

    /// `domainNameComponent`: letters, digits and inner hyphens.
    fn is_domain_component(c: &str) -> bool {
        let b = c.as_bytes();
        !b.is_empty()
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter().all(|&x| x.is_ascii_alphanumeric() || x == b'-')
    }

    /// `pathComponent`: lowercase letters and digits, joined by one `.`, one or two `_`, or any
    /// number of `-`.
    fn is_path_component(c: &str) -> bool {
        let b = c.as_bytes();
        let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
        if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
            return false;
        }
        let mut i = 0;
        while i < b.len() {
            if alnum(b[i]) {
                i += 1;
                continue;
            }
            let start = i;
            while i < b.len() && !alnum(b[i]) {
                i += 1;
            }
            match &b[start..i] {
                b"." | b"_" | b"__" => {}
                sep if sep.iter().all(|&x| x == b'-') => {}
                _ => return false,
            }
        }
        true
    }

    /// `remoteName`: path components separated by `/`.
    fn check_path(path: &str) -> Result<(), String> {
        if path.split('/').all(is_path_component) {
            return Ok(());
        }
        Err(format!(
            "repository name {path:?} must be lowercase letters and digits in components separated \
             by \"/\", joined inside a component by \".\", \"_\", \"__\" or dashes"
        ))
    }

    /// `tag`: a word character, then up to 127 word characters, `.` or `-`.
    fn check_tag(tag: &str) -> Result<(), String> {
        let word = |x: u8| x.is_ascii_alphanumeric() || x == b'_';
        let b = tag.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= MAX_TAG_CHARS
            && word(b[0])
            && b.iter().all(|&x| word(x) || x == b'.' || x == b'-');
        if ok {
            return Ok(());
        }
        Err(format!(
            "tag {tag:?} must be 1 to {MAX_TAG_CHARS} letters, digits, \"_\", \".\" or \"-\", \
             not starting with \".\" or \"-\""
        ))
    }

    /// `digestPat`, then go-digest's rules: a known algorithm with its exact length of lowercase hex.
    fn check_digest(digest: &str) -> Result<(), String> {
        let invalid = || format!("digest {digest:?} is not ALGORITHM:HEX");
        let (algorithm, hex) = digest.split_once(':').ok_or_else(invalid)?;
        let algorithm_ok = algorithm.split(['-', '_', '+', '.']).all(|c| {
            c.as_bytes().first().is_some_and(u8::is_ascii_alphabetic)
                && c.bytes().all(|x| x.is_ascii_alphanumeric())
        });
        if !algorithm_ok || hex.len() < 32 || !hex.bytes().all(|x| x.is_ascii_hexdigit()) {
            return Err(invalid());
        }
        let length = match algorithm {
            "sha256" => 64,
            "sha384" => 96,
            "sha512" => 128,
            _ => return Err(format!("digest algorithm {algorithm:?} is not supported")),
        };
        if hex.len() != length {
            return Err(format!(
                "a {algorithm} digest has {length} hex digits (this one has {})",
                hex.len()
            ));
        }
        if hex.bytes().any(|x| x.is_ascii_uppercase()) {
            return Err(format!("digest {digest:?} must be lowercase hex"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000001";

    #[test]
    fn normalizes_docker_hub_short_names() {
        let r = ImageRef::parse("nginx").unwrap();
        assert_eq!(r.registry(), "docker.io");
        assert_eq!(r.repository(), "library/nginx");
        assert_eq!(r.normalized(), "docker.io/library/nginx");
        assert_eq!(r.original(), "nginx");
    }

    #[test]
    fn missing_tag_is_not_explicit_but_pulls_latest() {
        let r = ImageRef::parse("nginx").unwrap();
        assert_eq!(r.tag(), None);
        assert_eq!(r.effective_tag(), Some("latest"));
    }

    #[test]
    fn registry_port_is_not_a_tag() {
        let r = ImageRef::parse("localhost:5000/shop/web").unwrap();
        assert_eq!(r.registry(), "localhost:5000");
        assert_eq!(r.repository(), "shop/web");
        assert_eq!(r.tag(), None);
    }

    #[test]
    fn legacy_docker_hub_host_is_normalized() {
        let r = ImageRef::parse("index.docker.io/library/redis:7.2.4").unwrap();
        assert_eq!(r.normalized(), "docker.io/library/redis:7.2.4");
    }

    #[test]
    fn tag_and_digest_is_pinned() {
        let r = ImageRef::parse(&format!("nginx:latest@{DIGEST}")).unwrap();
        assert!(r.is_pinned());
        assert_eq!(r.tag(), Some("latest"));
        assert_eq!(r.digest(), Some(DIGEST));
    }

    #[test]
    fn digest_only_has_no_tag() {
        let r = ImageRef::parse(&format!("ghcr.io/org/app@{DIGEST}")).unwrap();
        assert!(r.is_pinned());
        assert_eq!(r.tag(), None);
        assert_eq!(r.normalized(), format!("ghcr.io/org/app@{DIGEST}"));
    }

    #[test]
    fn rejects_uppercase_repository() {
        let err = ImageRef::parse("Nginx:1.0").unwrap_err();
        assert_eq!(err.image, "Nginx:1.0");
        assert!(
            err.to_string()
                .starts_with("image \"Nginx:1.0\" is not a valid image reference")
        );
    }

    #[test]
    fn rejects_short_digest() {
        let err = ImageRef::parse("nginx@sha256:abc").unwrap_err();
        assert_eq!(err.reason, r#"digest "sha256:abc" is not ALGORITHM:HEX"#);
    }

    #[test]
    fn uppercase_first_component_is_a_registry_host() {
        let r = ImageRef::parse("UPPER/case:1").unwrap();
        assert_eq!(r.registry(), "UPPER");
        assert_eq!(r.repository(), "case");
        let err = ImageRef::parse("Shop/API:1.0.0").unwrap_err();
        assert_eq!(err.reason, r#"repository name "API" must be lowercase"#);
    }

    #[test]
    fn accepts_uppercase_registry_host() {
        let r = ImageRef::parse("Registry.Example.com/app:1.0.0").unwrap();
        assert_eq!(r.registry(), "Registry.Example.com");
    }

    #[test]
    fn bracketed_ipv6_hosts_are_registries() {
        let r = ImageRef::parse("[2001:db8::1]:5000/repo:tag").unwrap();
        assert_eq!(r.registry(), "[2001:db8::1]:5000");
        assert_eq!(r.repository(), "repo");
        assert_eq!(r.tag(), Some("tag"));
        let r = ImageRef::parse("[::1]/repo").unwrap();
        assert_eq!(r.registry(), "[::1]");
        assert!(ImageRef::parse("[::1]:5000").is_err(), "no repository");
        assert!(ImageRef::parse("[2001:db8:3:4::192.0.2.33]:5000/debian").is_err());
        assert!(ImageRef::parse("[fe80::1%eth0]:5000/debian").is_err());
    }

    #[test]
    fn an_image_id_is_not_a_reference() {
        let id = "1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a";
        let err = ImageRef::parse(id).unwrap_err();
        assert!(err.reason.contains("image ID"), "{}", err.reason);
        let r = ImageRef::parse(&format!("docker.io/{id}")).unwrap();
        assert_eq!(r.repository(), format!("library/{id}"));
    }

    #[test]
    fn digest_algorithms_and_lengths_follow_go_digest() {
        let hex = |n: usize| "a".repeat(n);
        assert!(ImageRef::parse(&format!("app@sha512:{}", hex(128))).is_ok());
        assert!(ImageRef::parse(&format!("app@sha384:{}", hex(96))).is_ok());
        let err = ImageRef::parse(&format!("app@sha512:{}", hex(64))).unwrap_err();
        assert_eq!(
            err.reason,
            "a sha512 digest has 128 hex digits (this one has 64)"
        );
        let err = ImageRef::parse(&format!("app@md5:{}", hex(32))).unwrap_err();
        assert_eq!(err.reason, r#"digest algorithm "md5" is not supported"#);
        let err = ImageRef::parse(&format!("app@sha256:{}", "A".repeat(64))).unwrap_err();
        assert!(
            err.reason.ends_with("must be lowercase hex"),
            "{}",
            err.reason
        );
    }

    #[test]
    fn what_no_runtime_could_pull_is_refused_with_its_reason() {
        let err = ImageRef::parse("a_b.c/app:1").unwrap_err();
        assert!(
            err.reason.contains("not a valid host name"),
            "{}",
            err.reason
        );
        let err = ImageRef::parse("registry.example:70000/app:1").unwrap_err();
        assert!(
            err.reason.ends_with("has a port above 65535"),
            "{}",
            err.reason
        );
    }

    #[test]
    fn tags_are_word_characters_up_to_128() {
        assert!(ImageRef::parse(&format!("app:{}", "t".repeat(128))).is_ok());
        assert!(ImageRef::parse(&format!("app:{}", "t".repeat(129))).is_err());
        assert!(ImageRef::parse("app:.hidden").is_err());
        assert!(ImageRef::parse("app:").is_err());
        assert_eq!(ImageRef::parse("app:_x.Y-1").unwrap().tag(), Some("_x.Y-1"));
    }

    #[test]
    fn the_repository_path_is_limited_to_255_characters() {
        let ok = format!("registry.example/{}", "a".repeat(255));
        assert!(ImageRef::parse(&ok).is_ok());
        let err = ImageRef::parse(&format!("{ok}b")).unwrap_err();
        assert!(err.reason.contains("(it has 256)"), "{}", err.reason);
        // Docker Hub's implicit `library/` counts.
        assert!(ImageRef::parse(&"a".repeat(250)).is_err());
    }

    #[test]
    fn rejects_whitespace() {
        assert!(ImageRef::parse(" nginx:1.0").is_err());
        assert!(ImageRef::parse("nginx:1.0\n").is_err());
    }

    #[test]
    fn a_repeated_image_string_is_answered_from_the_memo() {
        let first = ImageRef::parse("registry.example/memo/app:1.2.3").unwrap();
        let again = ImageRef::parse("registry.example/memo/app:1.2.3").unwrap();
        assert!(Arc::ptr_eq(&first.0, &again.0));
        let fresh = ImageRef::parse_uncached("registry.example/memo/app:1.2.3").unwrap();
        assert!(!Arc::ptr_eq(&first.0, &fresh.0));
        assert_eq!(again.normalized(), fresh.normalized());
    }

    #[test]
    fn an_invalid_string_is_refused_every_time() {
        for _ in 0..2 {
            let err = ImageRef::parse("memo/Bad:1").unwrap_err();
            assert_eq!(err.image, "memo/Bad:1");
        }
    }

    #[test]
    fn rejects_a_registry_host_longer_than_255_characters() {
        let label = "a".repeat(63);
        let host = format!("{label}.{label}.{label}.{label}.example"); // 263 characters
        let err = ImageRef::parse(&format!("{host}/app:1.0.0")).unwrap_err();
        assert_eq!(
            err.reason,
            "registry host must not be more than 255 characters (it has 263)"
        );
        let err = ImageRef::parse(&format!("{host}:5000/app:1.0.0")).unwrap_err();
        assert!(err.reason.contains("(it has 263)"), "{}", err.reason);
        // 255 is fine.
        let host = format!("{label}.{label}.{label}.{}", "b".repeat(63));
        assert_eq!(host.len(), 255);
        let ok = ImageRef::parse(&format!("{host}/app:1.0.0")).unwrap();
        assert_eq!(ok.registry(), host);
    }

    #[test]
    fn a_long_reference_is_parsed_but_not_remembered() {
        // Valid: a 243-character host, a 244-character repository, a 32-character tag.
        let host = [
            "a".repeat(60),
            "b".repeat(60),
            "c".repeat(60),
            "d".repeat(60),
        ]
        .join(".");
        let long = format!(
            "{host}/{}/app:1.0.0-build.12345678901234567890",
            "x".repeat(240)
        );
        assert!(long.len() > MEMO_MAX_ENTRY_BYTES);
        let first = ImageRef::parse(&long).unwrap();
        let again = ImageRef::parse(&long).unwrap();
        assert!(!Arc::ptr_eq(&first.0, &again.0));
        assert!(MEMO.get(&long).is_none());
        assert_eq!(first.normalized(), long);
    }

    #[test]
    fn the_memo_is_bounded_in_bytes() {
        // 8,000 distinct references of ~230 bytes: ~7 MiB of weight if all were kept.
        for i in 0..8_000 {
            let image = format!(
                "registry.example/{}x/app{i}:1.0.0",
                "bounded-memo-".repeat(15)
            );
            assert!(image.len() <= MEMO_MAX_ENTRY_BYTES);
            ImageRef::parse(&image).unwrap();
        }
        MEMO.run_pending_tasks();
        assert!(
            MEMO.weighted_size() <= MEMO_MAX_BYTES,
            "{} bytes held",
            MEMO.weighted_size()
        );
        let one = ImageRef::parse_uncached("registry.example/a/b:1").unwrap();
        assert!(memo_weight("registry.example/a/b:1", &one) > 256);
    }

    #[test]
    fn rejects_empty() {
        assert_eq!(
            ImageRef::parse("").unwrap_err().reason,
            "the image is empty"
        );
    }
}
