//! Image references: parsed with oci-spec's `Reference` (the distribution grammar), normalized
//! to the familiar fully-qualified form, and remembered as the user wrote them.
//!
//! oci-spec extracts the parts with a capturing regex search (microseconds per image), and the
//! same few image strings come back in admission after admission, so valid references are
//! remembered, parsed, in a small bounded memo shared by all requests.

use std::sync::{Arc, LazyLock};

use oci_client::Reference;

/// How many distinct valid image strings the parse memo keeps (least-used ones leave first).
const MEMO_CAPACITY: u64 = 4096;

/// Parsed references by the string they were parsed from.
static MEMO: LazyLock<moka::sync::Cache<String, ImageRef>> =
    LazyLock::new(|| moka::sync::Cache::new(MEMO_CAPACITY));

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
        MEMO.insert(image.to_owned(), parsed.clone());
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
    fn rejects_empty() {
        assert!(ImageRef::parse("").is_err());
    }
}
