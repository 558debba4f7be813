//! Image references: parsed with oci-spec's `Reference` (the distribution grammar), normalized
//! to the familiar fully-qualified form, and remembered as the user wrote them.
//!
//! oci-spec extracts the parts with a capturing regex search (microseconds per image), and the
//! same few image strings come back in admission after admission, so valid references are
//! remembered, parsed, in a small memo shared by all requests, bounded in bytes.

use std::sync::{Arc, LazyLock};

use oci_client::Reference;

/// Bytes of image strings (and their parsed parts) the parse memo keeps, estimated by
/// [`memo_weight`]: 2 MiB, about 4,000 references of ordinary length. Least-used ones leave
/// first.
pub const MEMO_MAX_BYTES: u64 = 2 * 1024 * 1024;

/// Longest image string the memo keeps, in bytes; a longer one (rare, and legitimate only up to
/// ~700 bytes) is parsed every time it comes.
pub const MEMO_MAX_ENTRY_BYTES: usize = 512;

/// Longest registry host accepted, in characters (a DNS name's limit, and the kubelet's).
pub const MAX_HOST_CHARS: usize = 255;

/// What one memo entry costs, roughly: the key, the original, the parsed parts and the
/// bookkeeping around them.
fn memo_weight(key: &str, value: &ImageRef) -> u32 {
    let r = &value.0.parsed;
    let bytes = key.len()
        + value.0.original.len()
        + r.registry().len()
        + r.repository().len()
        + r.tag().map_or(0, str::len)
        + r.digest().map_or(0, str::len)
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
    parsed: Reference,
    explicit_tag: bool,
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

    /// Parses an image string with oci-spec every time, bypassing the memo.
    pub fn parse_uncached(image: &str) -> Result<Self, ReferenceError> {
        let invalid = |reason: String| ReferenceError {
            image: image.to_owned(),
            reason,
        };
        if image.trim() != image {
            return Err(invalid("leading or trailing whitespace".into()));
        }
        let parsed = Reference::try_from(image).map_err(|e| invalid(e.to_string()))?;
        // The kubelet refuses a registry host longer than a DNS name may be; oci-spec limits
        // only the repository path.
        let host_chars = parsed.registry().chars().count();
        if host_chars > MAX_HOST_CHARS {
            return Err(invalid(format!(
                "registry host must not be more than {MAX_HOST_CHARS} characters (it has {host_chars})"
            )));
        }
        // oci-spec moves an uppercase first component (read as a host) into the Docker Hub
        // repository; the distribution parser the kubelet uses refuses it.
        if parsed.repository().bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(invalid("repository name must be lowercase".into()));
        }
        Ok(Self(Arc::new(Parsed {
            explicit_tag: has_explicit_tag(image),
            original: image.to_owned(),
            parsed,
        })))
    }

    /// The string as the user wrote it.
    pub fn original(&self) -> &str {
        &self.0.original
    }

    /// The registry host, normalized (`docker.io` for Docker Hub, also when written `index.docker.io`).
    pub fn registry(&self) -> &str {
        self.0.parsed.registry()
    }

    /// The repository path inside the registry (`library/nginx`).
    pub fn repository(&self) -> &str {
        self.0.parsed.repository()
    }

    /// The tag the user wrote, if any.
    pub fn tag(&self) -> Option<&str> {
        if self.0.explicit_tag {
            self.0.parsed.tag()
        } else {
            None
        }
    }

    /// The tag the runtime will pull: the written one, or `latest` when there is neither tag nor digest.
    pub fn effective_tag(&self) -> Option<&str> {
        self.0.parsed.tag()
    }

    /// The digest (`sha256:…`), if the reference carries one.
    pub fn digest(&self) -> Option<&str> {
        self.0.parsed.digest()
    }

    /// True when the reference names content by digest and so can never move.
    pub fn is_pinned(&self) -> bool {
        self.0.parsed.digest().is_some()
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

    /// The underlying oci-client reference (with the implicit `latest` tag filled in).
    pub fn oci(&self) -> &Reference {
        &self.0.parsed
    }
}

/// Whether the last path component of the name part carries `:tag` (a `:port` belongs to the host).
fn has_explicit_tag(image: &str) -> bool {
    let name = image.split_once('@').map_or(image, |(name, _)| name);
    let last = name.rsplit_once('/').map_or(name, |(_, last)| last);
    last.contains(':')
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
        assert_eq!(err.reason, "invalid reference format");
    }

    #[test]
    fn rejects_uppercase_first_component_without_host_marker() {
        let err = ImageRef::parse("UPPER/case:1").unwrap_err();
        assert_eq!(err.reason, "repository name must be lowercase");
    }

    #[test]
    fn accepts_uppercase_registry_host() {
        assert!(ImageRef::parse("Registry.Example.com/app:1.0.0").is_ok());
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
        assert!(err.reason.contains("(it has 268)"), "{}", err.reason);
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
        assert!(ImageRef::parse("").is_err());
    }
}
