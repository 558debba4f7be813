//! Lists of glob patterns as the policy writes them (namespaces, registries, images, tags),
//! compiled into one matcher each.

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

/// A glob that does not compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid glob {pattern:?}: {reason}")]
pub struct PatternError {
    /// The pattern as written.
    pub pattern: String,
    /// What is wrong with it.
    pub reason: String,
}

/// A list of glob patterns compiled into one matcher.
#[derive(Debug, Clone, Default)]
pub struct Patterns {
    set: GlobSet,
    sources: Vec<String>,
}

impl Patterns {
    /// Compiles `patterns`; `case_insensitive` for tags and hosts.
    pub fn new<S: AsRef<str>>(
        patterns: &[S],
        case_insensitive: bool,
    ) -> Result<Self, PatternError> {
        let mut builder = GlobSetBuilder::new();
        let mut sources = Vec::with_capacity(patterns.len());
        for p in patterns {
            let p = p.as_ref();
            let glob = GlobBuilder::new(p)
                .case_insensitive(case_insensitive)
                .literal_separator(false)
                .build()
                .map_err(|e| PatternError {
                    pattern: p.to_owned(),
                    reason: e.kind().to_string(),
                })?;
            builder.add(glob);
            sources.push(p.to_owned());
        }
        let set = builder.build().map_err(|e| PatternError {
            pattern: e.glob().unwrap_or_default().to_owned(),
            reason: e.kind().to_string(),
        })?;
        Ok(Self { set, sources })
    }

    /// True when any pattern matches `text`.
    pub fn is_match(&self, text: &str) -> bool {
        !self.sources.is_empty() && self.set.is_match(text)
    }

    /// True when there are no patterns.
    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// The patterns as written.
    pub fn sources(&self) -> &[String] {
        &self.sources
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_any_pattern_and_an_empty_list_matches_nothing() {
        let p = Patterns::new(&["*.example.com", "quay.io"], true).unwrap();
        assert!(p.is_match("Registry.Example.com"));
        assert!(p.is_match("quay.io"));
        assert!(!p.is_match("docker.io"));
        assert!(!Patterns::default().is_match(""));
    }

    #[test]
    fn a_bad_glob_is_named() {
        let e = Patterns::new(&["ok", "a[b"], false).unwrap_err();
        assert_eq!(e.pattern, "a[b");
        assert!(e.to_string().starts_with(r#"invalid glob "a[b": "#), "{e}");
    }
}
