//! `pinhook drift` run as a user runs it: the binary, with a policy that lets it speak plain
//! HTTP to a loopback test registry; its exit status, standard output and standard error.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

/// What one run printed.
#[derive(Debug)]
pub struct Run {
    /// The exit status.
    pub code: i32,
    /// Standard output (the report).
    pub stdout: String,
    /// Standard error (errors, the summary line, logs).
    pub stderr: String,
}

impl Run {
    /// Standard output as JSON (`--output json`).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:#?}"))
    }

    /// The summary line of standard error.
    pub fn summary(&self) -> &str {
        self.stderr
            .lines()
            .rev()
            .find(|l| l.starts_with("pinhook drift: ") && l.contains(" checked, "))
            .unwrap_or_else(|| panic!("no summary line: {self:#?}"))
    }
}

/// Writes `policy.yaml` into `dir`: plain HTTP to the registry `host` (a 127.0.0.1 port).
pub fn policy_file(dir: &Path, host: &str) -> PathBuf {
    assert!(
        host.starts_with("127.0.0.1:"),
        "loopback registries only: {host}"
    );
    let path = dir.join("policy.yaml");
    std::fs::write(
        &path,
        format!("registries:\n  - host: {host}\n    insecure: true\n"),
    )
    .unwrap();
    path
}

/// `pinhook drift ARGS` with `stdin`; `kubeconfig` is its only Kubernetes configuration
/// (`None`: none at all, so no test can reach a cluster by accident).
pub fn drift(args: &[&str], kubeconfig: Option<&Path>, stdin: Option<&str>) -> Run {
    let mut cmd = Command::new(super::binary());
    cmd.arg("drift")
        .args(args)
        .env_remove("KUBECONFIG")
        .env_remove("PINHOOK_POLICY")
        .env("HOME", "/nonexistent")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(k) = kubeconfig {
        cmd.env("KUBECONFIG", k);
    }
    let mut child = cmd.spawn().expect("run pinhook drift");
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code().expect("exited"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
