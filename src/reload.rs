//! Watching files for changes by polling their contents: this sees in-place writes, renames
//! and the symlink swap Kubernetes uses for ConfigMap and Secret volumes alike.

use std::path::PathBuf;

/// What a set of files held at one poll: their bytes, or the error reading them.
pub type Snapshot = Result<Vec<Vec<u8>>, ReadError>;

/// A watched file could not be read (kept comparable, so the same failure is reported once).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot read {}: {message}", file.display())]
pub struct ReadError {
    /// The file.
    pub file: PathBuf,
    /// What went wrong, as the operating system says it.
    pub message: String,
}

/// Reports when the contents of a set of files differ from the last poll.
#[derive(Debug)]
pub struct FileWatch {
    paths: Vec<PathBuf>,
    last: Snapshot,
}

impl FileWatch {
    /// Starts watching `paths`, taking their current contents as the baseline.
    pub fn new(paths: Vec<PathBuf>) -> Self {
        let last = read_all(&paths);
        Self { paths, last }
    }

    /// The contents when they changed since the last call (or since `new`), else `None`.
    pub fn poll(&mut self) -> Option<Snapshot> {
        let now = read_all(&self.paths);
        if now == self.last {
            return None;
        }
        self.last = now.clone();
        Some(now)
    }
}

fn read_all(paths: &[PathBuf]) -> Snapshot {
    paths
        .iter()
        .map(|p| {
            std::fs::read(p).map_err(|e| ReadError {
                file: p.clone(),
                message: e.to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_change_once() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a");
        std::fs::write(&f, "1").unwrap();
        let mut w = FileWatch::new(vec![f.clone()]);
        assert_eq!(w.poll(), None);
        std::fs::write(&f, "2").unwrap();
        assert_eq!(w.poll(), Some(Ok(vec![b"2".to_vec()])));
        assert_eq!(w.poll(), None);
    }

    #[test]
    fn sees_symlink_swap() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("v1"), "one").unwrap();
        std::fs::write(dir.path().join("v2"), "two").unwrap();
        let link = dir.path().join("policy.yaml");
        std::os::unix::fs::symlink(dir.path().join("v1"), &link).unwrap();
        let mut w = FileWatch::new(vec![link.clone()]);
        let tmp = dir.path().join("tmp-link");
        std::os::unix::fs::symlink(dir.path().join("v2"), &tmp).unwrap();
        std::fs::rename(&tmp, &link).unwrap();
        assert_eq!(w.poll(), Some(Ok(vec![b"two".to_vec()])));
    }

    #[test]
    fn a_missing_file_is_a_change_reported_once() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a");
        std::fs::write(&f, "1").unwrap();
        let mut w = FileWatch::new(vec![f.clone()]);
        std::fs::remove_file(&f).unwrap();
        let Some(Err(e)) = w.poll() else {
            panic!("the removal is not reported")
        };
        assert!(
            e.to_string()
                .starts_with(&format!("cannot read {}: ", f.display())),
            "{e}"
        );
        assert_eq!(w.poll(), None);
    }
}
