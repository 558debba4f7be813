//! Image matching as the kubelet does it for `matchImages` and for the keys of a plugin's
//! `auth` map (`URLsMatchStr` in `pkg/credentialprovider/keyring.go`): scheme-less, the host
//! compared label by label with Go's `filepath.Match` glob (`*`, `?`, `[a-z]`, `[^…]`), the port
//! exactly (absent matches absent only), and the path as a plain string prefix.

/// A `matchImages` entry or `auth` key, parsed once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImagePattern {
    labels: Vec<String>,
    port: Option<String>,
    path: String,
    text: String,
}

/// Why a pattern cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// Nothing written.
    #[error("the pattern is empty")]
    Empty,
    /// A character no URL host may hold.
    #[error("invalid character {0:?} in the host")]
    HostCharacter(char),
    /// A port that is not digits.
    #[error("invalid port {0:?}")]
    Port(String),
    /// A glob `Go's filepath.Match` refuses (e.g. an unclosed `[`).
    #[error("host label {0:?} is not a valid glob")]
    Glob(String),
}

/// A URL without its scheme, split as Go's `url.Parse("https://" + s)` and
/// `net.SplitHostPort` split it: host, port, path (with its leading `/`).
fn split(text: &str) -> (&str, Option<&str>, &str) {
    let end = text.find(['/', '?', '#']).unwrap_or(text.len());
    let (authority, rest) = text.split_at(end);
    let path = match rest.find(['?', '#']) {
        Some(i) => &rest[..i],
        None => rest,
    };
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if let Some(inner) = authority.strip_prefix('[')
        && let Some((host, after)) = inner.split_once(']')
    {
        // An IPv6 literal; Go refuses anything but `:port` after its `]` (checked in `parse`).
        return (host, Some(after.strip_prefix(':').unwrap_or(after)), path);
    }
    match authority.split_once(':') {
        // net.SplitHostPort refuses a second colon outside brackets: the whole is the host.
        Some((host, port)) if !port.contains(':') => (host, Some(port), path),
        _ => (authority, None, path),
    }
}

impl ImagePattern {
    /// Parses `text` (e.g. `*.dkr.ecr.*.amazonaws.com`, `registry.io:5000/team`).
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        if text.is_empty() {
            return Err(PatternError::Empty);
        }
        let (host, port, path) = split(text);
        if let Some(c) = host
            .chars()
            .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '%' | '"' | '<' | '>'))
        {
            return Err(PatternError::HostCharacter(c));
        }
        if let Some(p) = port
            && !p.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(PatternError::Port(p.to_owned()));
        }
        let labels: Vec<String> = host.split('.').map(str::to_owned).collect();
        for label in &labels {
            if glob_match(label, "").is_err() {
                return Err(PatternError::Glob(label.clone()));
            }
        }
        Ok(Self {
            labels,
            port: port.filter(|p| !p.is_empty()).map(str::to_owned),
            path: path.to_owned(),
            text: text.to_owned(),
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `image` (scheme-less, e.g. `registry.io/team/app`) matches.
    pub fn matches(&self, image: &str) -> bool {
        let (host, port, path) = split(image);
        let port = port.filter(|p| !p.is_empty());
        if self.port.as_deref() != port || !path.starts_with(&self.path) {
            return false;
        }
        let have: Vec<&str> = host.split('.').collect();
        have.len() == self.labels.len()
            && self
                .labels
                .iter()
                .zip(have)
                .all(|(glob, label)| glob_match(glob, label).unwrap_or(false))
    }
}

/// Go's `filepath.Match` on one host label (no separator can occur in it): `*` any run,
/// `?` one character, `[…]` a class with ranges and `^` negation, `\` escaping. An invalid
/// pattern is an error, whatever the label.
fn glob_match(pattern: &str, name: &str) -> Result<bool, ()> {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    // Validate the whole pattern first, as Go reports ErrBadPattern even after a mismatch.
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            '[' => i = class_end(&p, i)?,
            '\\' => {
                if i + 1 >= p.len() {
                    return Err(());
                }
                i += 2;
            }
            _ => i += 1,
        }
    }
    Ok(match_from(&p, 0, &n, 0))
}

/// Index just past the class starting at `p[start] == '['`.
fn class_end(p: &[char], start: usize) -> Result<usize, ()> {
    let mut i = start + 1;
    if p.get(i) == Some(&'^') {
        i += 1;
    }
    let mut first = true;
    loop {
        match p.get(i) {
            None => return Err(()),
            Some(']') if !first => return Ok(i + 1),
            Some(_) => {
                let (_, next) = class_char(p, i)?;
                i = next;
                if p.get(i) == Some(&'-') {
                    let (_, next) = class_char(p, i + 1)?;
                    i = next;
                }
            }
        }
        first = false;
    }
}

/// One (possibly escaped) character of a class, and the index after it.
fn class_char(p: &[char], i: usize) -> Result<(char, usize), ()> {
    match p.get(i) {
        None | Some('-' | ']') => Err(()),
        Some('\\') => p.get(i + 1).map(|c| (*c, i + 2)).ok_or(()),
        Some(c) => Ok((*c, i + 1)),
    }
}

/// Whether the class at `p[start]` admits `c`; the pattern is known valid.
fn class_admits(p: &[char], start: usize, c: char) -> bool {
    let mut i = start + 1;
    let negated = p.get(i) == Some(&'^');
    if negated {
        i += 1;
    }
    let mut found = false;
    let mut first = true;
    while let Some(&ch) = p.get(i) {
        if ch == ']' && !first {
            break;
        }
        first = false;
        let Ok((lo, next)) = class_char(p, i) else {
            return false;
        };
        i = next;
        let mut hi = lo;
        if p.get(i) == Some(&'-')
            && let Ok((h, next)) = class_char(p, i + 1)
        {
            hi = h;
            i = next;
        }
        if lo <= c && c <= hi {
            found = true;
        }
    }
    found != negated
}

fn match_from(p: &[char], pi: usize, n: &[char], ni: usize) -> bool {
    if pi == p.len() {
        return ni == n.len();
    }
    match p[pi] {
        '*' => (ni..=n.len()).any(|k| match_from(p, pi + 1, n, k)),
        '?' => ni < n.len() && match_from(p, pi + 1, n, ni + 1),
        '[' => {
            let Ok(end) = class_end(p, pi) else {
                return false;
            };
            ni < n.len() && class_admits(p, pi, n[ni]) && match_from(p, end, n, ni + 1)
        }
        '\\' => {
            pi + 1 < p.len()
                && ni < n.len()
                && p[pi + 1] == n[ni]
                && match_from(p, pi + 2, n, ni + 1)
        }
        c => ni < n.len() && c == n[ni] && match_from(p, pi + 1, n, ni + 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, image: &str) -> bool {
        ImagePattern::parse(pattern).unwrap().matches(image)
    }

    /// The table of the kubelet's own `TestURLsMatch` and the credential-provider docs.
    #[test]
    fn matches_like_the_kubelet() {
        let cases = [
            ("*.kubernetes.io", "prefix.kubernetes.io", true),
            ("prefix.*.io", "prefix.kubernetes.io", true),
            ("prefix.kubernetes.*", "prefix.kubernetes.io", true),
            ("*-good.kubernetes.io", "prefix-good.kubernetes.io", true),
            ("*.kubernetes.io", "kubernetes.io", false),
            ("*.*.kubernetes.io", "a.b.kubernetes.io", true),
            ("*.*.kubernetes.io", "a.kubernetes.io", false),
            ("*.kubernetes.io", "a.b.kubernetes.io", false),
            (
                "*.dkr.ecr.*.amazonaws.com",
                "123456789012.dkr.ecr.us-east-1.amazonaws.com/app",
                true,
            ),
            (
                "*.dkr.ecr.*.amazonaws.com",
                "123456789012.dkr.ecr.us-east-1.amazonaws.com.cn/app",
                false,
            ),
            ("*.azurecr.io", "myregistry.azurecr.io/team/app", true),
            ("*-docker.pkg.dev", "europe-docker.pkg.dev/p/r/app", true),
            ("gcr.io", "gcr.io/project/app", true),
            ("registry.io", "registry.io:5000/app", false),
            ("registry.io:5000", "registry.io/app", false),
            ("registry.io:5000", "registry.io:5000/app", true),
            ("registry.io:5000", "registry.io:5001/app", false),
            ("registry.io/team", "registry.io/team/app", true),
            ("registry.io/team", "registry.io/other/app", false),
            // A plain string prefix, as the kubelet's strings.HasPrefix: not segment-aware.
            ("registry.io/team", "registry.io/teammate/app", true),
            ("registry.io/team/app", "registry.io/team", false),
            // `?` starts a URL query, so the kubelet never reads it as a glob in a host.
            ("registry.i?", "registry.io/app", false),
            ("registry.?o", "registry.io/app", false),
            ("b[a-e]g.io", "beg.io/app", true),
            ("b[^a-e]g.io", "beg.io/app", false),
            ("b[^a-e]g.io", "bzg.io/app", true),
            ("[::1]:5000", "[::1]:5000/app", true),
            ("[::1]:5000", "[::1]/app", false),
            ("127.0.0.1:5000", "127.0.0.1:5000/shop/web", true),
            ("*.0.0.1:5000", "127.0.0.1:5000/shop/web", true),
            ("docker.io", "docker.io/library/nginx", true),
        ];
        for (pattern, image, want) in cases {
            assert_eq!(m(pattern, image), want, "{pattern} vs {image}");
        }
    }

    #[test]
    fn invalid_patterns_are_refused_with_a_reason() {
        assert_eq!(ImagePattern::parse(""), Err(PatternError::Empty));
        assert_eq!(
            ImagePattern::parse("registry.io:http"),
            Err(PatternError::Port("http".into()))
        );
        assert_eq!(
            ImagePattern::parse("reg istry.io"),
            Err(PatternError::HostCharacter(' '))
        );
        assert_eq!(
            ImagePattern::parse("a[b-.io"),
            Err(PatternError::Glob("a[b-".into()))
        );
        // A leading `[` opens an IPv6 literal for Go's URL parser, which then wants a port.
        assert_eq!(
            ImagePattern::parse("[a-c]eg.io"),
            Err(PatternError::Port("eg.io".into()))
        );
        assert_eq!(
            ImagePattern::parse("ab\\"),
            Err(PatternError::Glob("ab\\".into()))
        );
    }

    #[test]
    fn an_escaped_star_is_literal() {
        assert!(m("a\\*.io", "a*.io/x"));
        assert!(!m("a\\*.io", "ab.io/x"));
    }
}
