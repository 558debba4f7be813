//! Watching files for changes by polling their contents: this sees in-place writes, renames
//! and the symlink swap Kubernetes uses for ConfigMap and Secret volumes alike. Every file is
//! read with [`read_bounded`]: only a regular file (symbolic links followed), and no more than
//! a limit, so a link to `/dev/zero` or a FIFO is refused instead of filling memory or blocking.

use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// Largest policy file read (1 MiB); a policy is a few kilobytes.
pub const MAX_POLICY_BYTES: u64 = 1024 * 1024;

/// Largest certificate or key file read (1 MiB); a chain of a few certificates is a few
/// kilobytes.
pub const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// The contents of `path` if it is a regular file (after following symbolic links) of at most
/// `limit` bytes; anything else (a device, a FIFO, a socket, a directory, a larger file) is an
/// error saying so. The type is checked before the file is opened, so a FIFO never blocks.
pub fn read_bounded(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let refuse = |what: String| io::Error::new(io::ErrorKind::InvalidInput, what);
    let check = |meta: &std::fs::Metadata| {
        if !meta.is_file() {
            return Err(refuse(format!(
                "not a regular file (it is {})",
                file_kind(meta)
            )));
        }
        if meta.len() > limit {
            return Err(refuse(format!(
                "the file is {} bytes, more than the limit of {limit} bytes",
                meta.len()
            )));
        }
        Ok(())
    };
    check(&std::fs::metadata(path)?)?;
    let file = std::fs::File::open(path)?;
    // Checked again on the open file: the path may have been swapped in between.
    check(&file.metadata()?)?;
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(refuse(format!(
            "the file grew past the limit of {limit} bytes while being read"
        )));
    }
    Ok(bytes)
}

/// What a file that is not a regular one is, for the error.
fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

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
    limit: u64,
    last: Snapshot,
}

impl FileWatch {
    /// Starts watching `paths` (each read only if a regular file of at most `limit` bytes),
    /// taking their current contents as the baseline.
    pub fn new(paths: Vec<PathBuf>, limit: u64) -> Self {
        let last = read_all(&paths, limit);
        Self { paths, limit, last }
    }

    /// The contents when they changed since the last call (or since `new`), else `None`.
    pub fn poll(&mut self) -> Option<Snapshot> {
        let now = read_all(&self.paths, self.limit);
        if now == self.last {
            return None;
        }
        self.last = now.clone();
        Some(now)
    }
}

fn read_all(paths: &[PathBuf], limit: u64) -> Snapshot {
    paths
        .iter()
        .map(|p| {
            read_bounded(p, limit).map_err(|e| ReadError {
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
        let mut w = FileWatch::new(vec![f.clone()], MAX_POLICY_BYTES);
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
        let mut w = FileWatch::new(vec![link.clone()], MAX_POLICY_BYTES);
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
        let mut w = FileWatch::new(vec![f.clone()], MAX_POLICY_BYTES);
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

    fn mkfifo(path: &Path) {
        let status = std::process::Command::new("mkfifo")
            .arg(path)
            .status()
            .expect("mkfifo runs");
        assert!(status.success());
    }

    /// A watch of `path` whose baseline is a valid file, then `path` replaced by `make`.
    fn swapped_to(make: impl FnOnce(&Path)) -> Option<Snapshot> {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("policy.yaml");
        std::fs::write(&f, "mode: warn\n").unwrap();
        let mut w = FileWatch::new(vec![f.clone()], MAX_POLICY_BYTES);
        std::fs::remove_file(&f).unwrap();
        make(&f);
        w.poll()
    }

    #[test]
    fn a_symlink_to_dev_zero_is_refused_without_reading() {
        let got = swapped_to(|f| std::os::unix::fs::symlink("/dev/zero", f).unwrap());
        let Some(Err(e)) = got else {
            panic!("not refused: {got:?}")
        };
        assert!(
            e.message
                .contains("not a regular file (it is a character device)"),
            "{e}"
        );
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let got = swapped_to(mkfifo);
            let _ = tx.send(got);
        });
        let got = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the watch blocked on a FIFO");
        let Some(Err(e)) = got else {
            panic!("not refused: {got:?}")
        };
        assert!(e.message.contains("a FIFO"), "{e}");
    }

    #[test]
    fn an_oversized_file_is_refused() {
        let got = swapped_to(|f| {
            let file = std::fs::File::create(f).unwrap();
            file.set_len(MAX_POLICY_BYTES + 1).unwrap();
        });
        let Some(Err(e)) = got else {
            panic!("not refused: {got:?}")
        };
        assert!(
            e.message.contains(&format!(
                "the file is {} bytes, more than the limit of {MAX_POLICY_BYTES} bytes",
                MAX_POLICY_BYTES + 1
            )),
            "{e}"
        );
        // Exactly at the limit is fine.
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p");
        std::fs::File::create(&f)
            .unwrap()
            .set_len(MAX_POLICY_BYTES)
            .unwrap();
        assert_eq!(
            read_bounded(&f, MAX_POLICY_BYTES).unwrap().len() as u64,
            MAX_POLICY_BYTES
        );
    }

    #[test]
    fn a_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let e = read_bounded(dir.path(), MAX_POLICY_BYTES).unwrap_err();
        assert!(e.to_string().contains("a directory"), "{e}");
    }

    /// The layout of a ConfigMap volume: `policy.yaml -> ..data/policy.yaml`, `..data ->
    /// ..2024_01_01_v1`, updated by swapping `..data` to a new directory.
    #[test]
    fn a_configmap_symlink_swap_is_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("..v1")).unwrap();
        std::fs::write(d.join("..v1/policy.yaml"), "mode: warn\n").unwrap();
        std::os::unix::fs::symlink("..v1", d.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/policy.yaml", d.join("policy.yaml")).unwrap();
        let link = d.join("policy.yaml");
        let mut w = FileWatch::new(vec![link.clone()], MAX_POLICY_BYTES);
        assert_eq!(w.last, Ok(vec![b"mode: warn\n".to_vec()]));
        std::fs::create_dir(d.join("..v2")).unwrap();
        std::fs::write(d.join("..v2/policy.yaml"), "mode: audit\n").unwrap();
        std::os::unix::fs::symlink("..v2", d.join("..data_tmp")).unwrap();
        std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
        assert_eq!(w.poll(), Some(Ok(vec![b"mode: audit\n".to_vec()])));
        // A hostile swap to a FIFO is a failure, and a good file after it is taken again.
        mkfifo(&d.join("..v2/fifo"));
        std::fs::remove_file(d.join("..v2/policy.yaml")).unwrap();
        std::os::unix::fs::symlink("fifo", d.join("..v2/policy.yaml")).unwrap();
        assert!(matches!(w.poll(), Some(Err(_))));
        std::fs::remove_file(d.join("..v2/policy.yaml")).unwrap();
        std::fs::write(d.join("..v2/policy.yaml"), "mode: enforce\n").unwrap();
        assert_eq!(w.poll(), Some(Ok(vec![b"mode: enforce\n".to_vec()])));
    }
}
