//! Running one plugin process: the request on stdin, the response read from stdout (bounded),
//! stderr kept (bounded) for messages, and the process killed at its deadline.
//!
//! Blocking `std::process` on a blocking thread, polling for exit: plugin calls are rare (their
//! answers are cached) and this needs no more of tokio than the project already builds.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::config::EnvVar;

/// Most bytes of a response read from stdout (1 MiB); a response is a few hundred bytes.
pub const MAX_STDOUT_BYTES: usize = 1024 * 1024;

/// Most bytes of stderr kept for a message.
pub const MAX_STDERR_BYTES: usize = 4096;

/// How a plugin process failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ExecError {
    /// It could not be started.
    #[error("cannot run {path}: {detail}")]
    Spawn {
        /// The executable.
        path: String,
        /// The operating system's reason.
        detail: String,
    },
    /// It exited unsuccessfully.
    #[error("exited with {status}{}", stderr_note(stderr))]
    Exit {
        /// `status 1`, `signal 9`…
        status: String,
        /// The start of its stderr.
        stderr: String,
    },
    /// It did not finish before its deadline and was killed.
    #[error(
        "did not answer within {seconds:.1}s and was killed{}",
        stderr_note(stderr)
    )]
    Timeout {
        /// The time it was given.
        seconds: f64,
        /// The start of its stderr.
        stderr: String,
    },
    /// It wrote more than [`MAX_STDOUT_BYTES`].
    #[error("wrote more than {limit} bytes to stdout")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// Talking to it failed.
    #[error("I/O error with the plugin process: {0}")]
    Io(String),
}

fn stderr_note(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!("; stderr: {stderr}")
    }
}

/// What a stream reader kept: the first bytes and the total length seen.
struct Kept {
    bytes: Vec<u8>,
    total: usize,
}

/// Reads `stream` to its end, keeping the first `limit` bytes, draining the rest so the
/// writer never blocks on a full pipe.
fn keep<R: Read + Send + 'static>(stream: Option<R>, limit: usize) -> mpsc::Receiver<Kept> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut kept = Kept {
            bytes: Vec::new(),
            total: 0,
        };
        if let Some(mut s) = stream {
            let mut buf = [0u8; 8192];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let room = limit.saturating_sub(kept.bytes.len()).min(n);
                        kept.bytes.extend_from_slice(&buf[..room]);
                        kept.total = kept.total.saturating_add(n);
                    }
                }
            }
        }
        let _ = tx.send(kept);
    });
    rx
}

/// The start of stderr as one safe line.
fn stderr_text(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    crate::text::clip(&crate::text::escape(text), 512).into_owned()
}

/// Runs `path args…` with `env` added to pinhook's environment, `input` on stdin, until it
/// exits or `timeout` passes (then it is killed); its stdout on success.
pub fn run(
    path: &Path,
    args: &[String],
    env: &[EnvVar],
    input: Vec<u8>,
    timeout: Duration,
) -> Result<Vec<u8>, ExecError> {
    let started = Instant::now();
    let mut command = Command::new(path);
    command
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for v in env {
        command.env(&v.name, &v.value);
    }
    let mut child = command.spawn().map_err(|e| ExecError::Spawn {
        path: path.display().to_string(),
        detail: e.to_string(),
    })?;
    let stdin = child.stdin.take();
    std::thread::spawn(move || {
        if let Some(mut s) = stdin {
            // A plugin that exits without reading its request is not an error here.
            let _ = s.write_all(&input);
        }
    });
    let stdout = keep(child.stdout.take(), MAX_STDOUT_BYTES);
    let stderr = keep(child.stderr.take(), MAX_STDERR_BYTES);
    let mut pause = Duration::from_micros(500);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ExecError::Io(e.to_string()));
            }
        }
        if started.elapsed() >= timeout {
            let _ = child.kill();
            let _ = child.wait();
            // A grandchild may still hold the pipes open: wait only briefly for stderr.
            let kept = stderr.recv_timeout(Duration::from_millis(100)).ok();
            return Err(ExecError::Timeout {
                seconds: timeout.as_secs_f64(),
                stderr: kept.map(|k| stderr_text(&k.bytes)).unwrap_or_default(),
            });
        }
        std::thread::sleep(pause.min(timeout.saturating_sub(started.elapsed())));
        pause = (pause * 2).min(Duration::from_millis(10));
    };
    // The process has exited; its pipes close unless a child of its own still holds them.
    let grace = timeout
        .saturating_sub(started.elapsed())
        .max(Duration::from_millis(100));
    let err = stderr.recv_timeout(grace).ok();
    let err_text = err
        .as_ref()
        .map(|k| stderr_text(&k.bytes))
        .unwrap_or_default();
    if !status.success() {
        use std::os::unix::process::ExitStatusExt;
        let status = match (status.code(), status.signal()) {
            (Some(code), _) => format!("status {code}"),
            (None, Some(signal)) => format!("signal {signal}"),
            _ => status.to_string(),
        };
        return Err(ExecError::Exit {
            status,
            stderr: err_text,
        });
    }
    let out = stdout.recv_timeout(grace).map_err(|_| ExecError::Timeout {
        seconds: timeout.as_secs_f64(),
        stderr: err_text,
    })?;
    if out.total > MAX_STDOUT_BYTES {
        return Err(ExecError::TooLarge {
            limit: MAX_STDOUT_BYTES,
        });
    }
    Ok(out.bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, input: &str, timeout: Duration) -> Result<Vec<u8>, ExecError> {
        run(
            Path::new("/bin/sh"),
            &["-c".into(), script.into()],
            &[EnvVar {
                name: "GREETING".into(),
                value: "hello".into(),
            }],
            input.as_bytes().to_vec(),
            timeout,
        )
    }

    #[test]
    fn passes_stdin_args_and_env_and_returns_stdout() {
        let out = sh(
            "read line; echo \"$GREETING $line\"",
            "world\n",
            Duration::from_secs(5),
        );
        assert_eq!(out.unwrap(), b"hello world\n");
    }

    #[test]
    fn a_failing_plugin_reports_status_and_stderr() {
        let err = sh("echo 'no IMDS' >&2; exit 3", "", Duration::from_secs(5)).unwrap_err();
        assert_eq!(err.to_string(), "exited with status 3; stderr: no IMDS");
    }

    #[test]
    fn a_hanging_plugin_is_killed_at_its_deadline() {
        let started = Instant::now();
        let err = run(
            Path::new("/bin/sleep"),
            &["30".into()],
            &[],
            Vec::new(),
            Duration::from_millis(300),
        )
        .unwrap_err();
        assert!(matches!(err, ExecError::Timeout { .. }), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(err.to_string(), "did not answer within 0.3s and was killed");
    }

    #[test]
    fn endless_output_is_cut_off() {
        let err = sh("head -c 2000000 /dev/zero", "", Duration::from_secs(10)).unwrap_err();
        assert_eq!(
            err,
            ExecError::TooLarge {
                limit: MAX_STDOUT_BYTES
            }
        );
    }

    #[test]
    fn a_missing_executable_is_named() {
        let err = run(
            Path::new("/nonexistent/plugin"),
            &[],
            &[],
            Vec::new(),
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot run /nonexistent/plugin: "),
            "{err}"
        );
    }

    #[test]
    fn stderr_is_bounded_and_escaped() {
        let err = sh(
            "printf 'line1\\nline2\\033[31m' >&2; head -c 100000 /dev/zero | tr '\\0' x >&2; exit 1",
            "",
            Duration::from_secs(5),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("line1\\nline2\\u{1b}[31m"), "{text}");
        assert!(text.chars().count() < 600, "{}", text.len());
    }
}
