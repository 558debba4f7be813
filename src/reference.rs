//! Image references: the distribution grammar (the one the kubelet and container runtimes
//! parse), normalized to the familiar fully-qualified form, and remembered as the user wrote
//! them.
//!
//! oci-spec's `Reference` parser is the reference implementation here, but it extracts the
//! parts with a capturing regex search, which costs microseconds per image on the admission
//! hot path. [`ImageRef::parse`] checks the same expression without captures (a DFA), splits
//! the parts at the only places the grammar allows, and hands every string it is not sure
//! about — and every invalid one, for the error message — to oci-spec. A test compares both
//! on thousands of generated strings.

use std::ops::Range;
use std::sync::LazyLock;

use oci_client::Reference;

/// The full reference grammar of distribution (`reference/regexp.go`), as oci-spec compiles it
/// (`oci_spec::distribution::reference::REFERENCE_REGEXP`) except that `\w` in the tag is
/// ASCII, as in Go's regexp that distribution uses (Rust's is Unicode and makes the automaton
/// too large for a DFA). It accepts a subset of what oci-spec accepts, so whatever it lets
/// through, oci-spec would have parsed the same way; tags with other letters go to oci-spec.
const REFERENCE_GRAMMAR: &str = r"^((?:(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])(?:(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))+)?(?::[0-9]+)?/)?[a-z0-9]+(?:(?:(?:[._]|__|[-]*)[a-z0-9]+)+)?(?:(?:/[a-z0-9]+(?:(?:(?:[._]|__|[-]*)[a-z0-9]+)+)?)+)?)(?::([0-9A-Za-z_][0-9A-Za-z_.-]{0,127}))?(?:@([A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*[:][[:xdigit:]]{32,}))?$";

/// The grammar, compiled once.
static GRAMMAR: LazyLock<regex::Regex> =
    LazyLock::new(|| regex::Regex::new(REFERENCE_GRAMMAR).expect("the reference grammar compiles"));

/// Longest repository path (distribution's `NameTotalLengthMax`).
const NAME_TOTAL_LENGTH_MAX: usize = 255;

/// Why an image string is not a usable reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("image {image:?} is not a valid image reference: {reason}")]
pub struct ReferenceError {
    /// The string exactly as found in the object.
    pub image: String,
    /// The parser's explanation.
    pub reason: String,
}

/// A parsed image reference together with the user's original spelling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    original: String,
    registry: String,
    repository: String,
    /// Where the written tag is in `original`.
    tag: Option<Range<usize>>,
    /// Where the digest is in `original`.
    digest: Option<Range<usize>>,
}

impl ImageRef {
    /// Parses an image string as the kubelet would (`nginx` means `docker.io/library/nginx:latest`).
    pub fn parse(image: &str) -> Result<Self, ReferenceError> {
        if image.trim() != image {
            return Err(ReferenceError {
                image: image.to_owned(),
                reason: "leading or trailing whitespace".into(),
            });
        }
        match Self::parse_fast(image) {
            Some(r) => Ok(r),
            None => Self::parse_with_oci(image),
        }
    }

    /// The grammar checked by a DFA and the parts split by hand; `None` when unsure or invalid.
    fn parse_fast(image: &str) -> Option<Self> {
        if image.is_empty() || !GRAMMAR.is_match(image) {
            return None;
        }
        let (name, tag, digest) = split_parts(image);
        if let Some(d) = &digest {
            let (algorithm, hex) = image[d.clone()].split_once(':')?;
            let expected = match algorithm {
                "sha256" => 64,
                "sha384" => 96,
                "sha512" => 128,
                _ => return None,
            };
            if hex.len() != expected {
                return None;
            }
        }
        let (registry, repository) = split_domain(name);
        if repository.len() > NAME_TOTAL_LENGTH_MAX
            || repository.bytes().any(|b| b.is_ascii_uppercase())
        {
            return None;
        }
        Some(Self {
            original: image.to_owned(),
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// oci-spec's parser: the answer for whatever the fast path leaves, and the error messages.
    fn parse_with_oci(image: &str) -> Result<Self, ReferenceError> {
        let invalid = |reason: String| ReferenceError {
            image: image.to_owned(),
            reason,
        };
        let parsed = Reference::try_from(image).map_err(|e| invalid(e.to_string()))?;
        // oci-spec moves an uppercase first component (read as a host) into the Docker Hub
        // repository; the distribution parser the kubelet uses refuses it.
        if parsed.repository().bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(invalid("repository name must be lowercase".into()));
        }
        let (_, tag, digest) = split_parts(image);
        Ok(Self {
            original: image.to_owned(),
            registry: parsed.registry().to_owned(),
            repository: parsed.repository().to_owned(),
            tag,
            digest,
        })
    }

    /// The string as the user wrote it.
    pub fn original(&self) -> &str {
        &self.original
    }

    /// The registry host, normalized (`docker.io` for Docker Hub, also when written `index.docker.io`).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path inside the registry (`library/nginx`).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag the user wrote, if any.
    pub fn tag(&self) -> Option<&str> {
        self.tag.clone().map(|r| &self.original[r])
    }

    /// The tag the runtime will pull: the written one, or `latest` when there is neither tag nor digest.
    pub fn effective_tag(&self) -> Option<&str> {
        match (self.tag(), &self.digest) {
            (Some(tag), _) => Some(tag),
            (None, None) => Some("latest"),
            (None, Some(_)) => None,
        }
    }

    /// The digest (`sha256:…`), if the reference carries one.
    pub fn digest(&self) -> Option<&str> {
        self.digest.clone().map(|r| &self.original[r])
    }

    /// True when the reference names content by digest and so can never move.
    pub fn is_pinned(&self) -> bool {
        self.digest.is_some()
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

    /// The oci-client reference (with the implicit `latest` tag filled in).
    pub fn oci(&self) -> Reference {
        let (registry, repository) = (self.registry.clone(), self.repository.clone());
        match (self.effective_tag(), self.digest()) {
            (Some(tag), Some(digest)) => {
                Reference::with_tag_and_digest(registry, repository, tag.into(), digest.into())
            }
            (Some(tag), None) => Reference::with_tag(registry, repository, tag.into()),
            (None, Some(digest)) => Reference::with_digest(registry, repository, digest.into()),
            (None, None) => unreachable!("effective_tag is set when there is no digest"),
        }
    }
}

/// Name, tag and digest of a string the grammar accepts: `@` only ever starts the digest, and a
/// `:` after the last `/` of the name part only ever starts the tag (a port is followed by `/`).
fn split_parts(image: &str) -> (&str, Option<Range<usize>>, Option<Range<usize>>) {
    let (name_tag, digest) = match image.find('@') {
        Some(at) => (&image[..at], Some(at + 1..image.len())),
        None => (image, None),
    };
    let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
    match name_tag[last_slash..].rfind(':') {
        Some(colon) => {
            let colon = last_slash + colon;
            (&name_tag[..colon], Some(colon + 1..name_tag.len()), digest)
        }
        None => (name_tag, None, digest),
    }
}

/// Registry and repository of a name, as distribution normalizes them (`normalize.go`
/// `splitDockerDomain`): a first component without `.` or `:` that is not `localhost` is a
/// Docker Hub path; `index.docker.io` is `docker.io`; a one-component Hub path is in `library/`.
fn split_domain(name: &str) -> (String, String) {
    let (mut domain, remainder) = match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first, rest)
        }
        _ => ("docker.io", name),
    };
    if domain == "index.docker.io" {
        domain = "docker.io";
    }
    let repository = if domain == "docker.io" && !remainder.contains('/') {
        format!("library/{remainder}")
    } else {
        remainder.to_owned()
    };
    (domain.to_owned(), repository)
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
    fn rejects_empty() {
        assert!(ImageRef::parse("").is_err());
    }

    #[test]
    fn common_references_take_the_fast_path() {
        for image in [
            "nginx",
            "nginx:1.27.1",
            "ghcr.io/acme/shop-web:1.4.2",
            "localhost:5000/shop/web",
            "127.0.0.1:5000/bench/app:warm-0",
            &format!("nginx:latest@{DIGEST}"),
            &format!("ghcr.io/org/app@{DIGEST}"),
        ] {
            assert!(ImageRef::parse_fast(image).is_some(), "{image}");
        }
    }

    /// A deterministic xorshift generator, so the differential test needs no dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[(self.next() % items.len() as u64) as usize]
        }
    }

    #[test]
    fn fast_path_agrees_with_oci_spec() {
        let hex32 = "0123456789abcdef".repeat(2);
        let hex64 = hex32.repeat(2);
        let sha256 = format!("sha256:{hex64}");
        let sha512 = format!("sha512:{hex64}{hex64}");
        let pieces = [
            "a",
            "b",
            "z9",
            "A",
            "Up",
            "0",
            "1",
            "5000",
            ".",
            "..",
            "-",
            "--",
            "_",
            "__",
            "___",
            "/",
            "//",
            ":",
            "::",
            "@",
            "localhost",
            "docker.io",
            "index.docker.io",
            "ghcr.io",
            "Registry.Example.com",
            "127.0.0.1",
            "[::1]",
            "library",
            "latest",
            "v1.2.3",
            "é",
            "sha256:",
            "md5:",
            &hex32,
            &hex64,
            &sha256,
            &sha512,
            "sha256:abc",
            "x-y.z",
            " ",
            "%",
        ];
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let (mut fast, mut total) = (0, 0);
        for _ in 0..20_000 {
            let n = 1 + rng.next() % 8;
            let image: String = (0..n).map(|_| rng.pick(&pieces)).collect();
            let slow = ImageRef::parse_with_oci(&image);
            if let Some(f) = ImageRef::parse_fast(&image) {
                fast += 1;
                assert_eq!(Ok(f), slow, "{image:?}");
            }
            if image.trim() == image {
                assert_eq!(ImageRef::parse(&image), slow, "{image:?}");
            }
            total += 1;
        }
        // The generator must reach valid references often enough to test something.
        assert!(
            fast > total / 20,
            "only {fast} of {total} took the fast path"
        );
    }
}
