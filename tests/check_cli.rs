//! `pinhook check`: the admission policy applied offline to manifest files, as a CI step would
//! run it — exit 0 clean, 1 denied, 2 unusable input — with findings in the webhook's words.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

const MUTABLE: &str = "tests/fixtures/manifests/mutable.yaml";

/// `pinhook check ARGS...` run from the crate root, so fixture paths are relative to it.
fn check(args: &[&str]) -> Output {
    Command::new(common::binary())
        .arg("check")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .output()
        .expect("run pinhook check")
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).expect("stdout is UTF-8")
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).expect("stderr is UTF-8")
}

/// The exit code, with both streams in the message when it is not `expected`.
fn assert_exit(out: &Output, expected: i32) {
    assert_eq!(
        out.status.code(),
        Some(expected),
        "stdout: {}\nstderr: {}",
        stdout(out),
        stderr(out)
    );
}

fn mutable_lines(file: &str) -> [String; 2] {
    [
        format!(
            r#"{file}: denied: Deployment shop/web: container "web" (spec.template.spec.containers[0]): image "nginx:latest" uses mutable tag "latest"; use a version tag or a digest"#
        ),
        format!(
            r#"{file}: denied: Deployment shop/web: container "init" (spec.template.spec.initContainers[0]): image "busybox" has no tag, so it uses mutable tag "latest"; use a version tag or a digest"#
        ),
    ]
}

#[test]
fn clean_manifests_exit_zero() {
    let out = check(&["tests/fixtures/manifests/clean.yaml"]);
    assert_exit(&out, 0);
    assert_eq!(stdout(&out), "", "a clean run prints no findings");
    // The Deployment and the CronJob were judged; the Service carries no pod spec.
    assert!(
        stderr(&out).contains("2 object(s) checked, 0 would be denied, 0 input error(s)"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn mutable_tags_exit_one_with_the_admission_wording() {
    let out = check(&[MUTABLE]);
    assert_exit(&out, 1);
    let text = stdout(&out);
    assert_eq!(text.lines().collect::<Vec<_>>(), mutable_lines(MUTABLE));
}

#[test]
fn reads_stdin_with_dash() {
    let manifest =
        std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(MUTABLE)).unwrap();
    let mut child = Command::new(common::binary())
        .args(["check", "-"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pinhook check -");
    child.stdin.take().unwrap().write_all(&manifest).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_exit(&out, 1);
    assert_eq!(stdout(&out).lines().collect::<Vec<_>>(), mutable_lines("-"));
}

#[test]
fn list_items_are_checked() {
    let out = check(&["tests/fixtures/manifests/list.json"]);
    assert_exit(&out, 1);
    assert_eq!(
        stdout(&out).trim_end(),
        r#"tests/fixtures/manifests/list.json: denied: Pod shop/cache: container "redis" (spec.containers[0]): image "redis:main" uses mutable tag "main"; use a version tag or a digest"#
    );
}

#[test]
fn unreadable_input_exits_two() {
    let out = check(&["tests/fixtures/manifests/broken.yaml"]);
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("tests/fixtures/manifests/broken.yaml: document 1: "),
        "{}",
        stderr(&out)
    );

    let out = check(&["tests/fixtures/manifests/does-not-exist.yaml"]);
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("tests/fixtures/manifests/does-not-exist.yaml: cannot read"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn warn_policy_reports_but_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, "mode: warn\n").unwrap();
    let out = check(&["--policy", policy.to_str().unwrap(), MUTABLE]);
    assert_exit(&out, 0);
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines.iter().all(|l| l.starts_with(&format!(
            "{MUTABLE}: warning: Deployment shop/web: container "
        ))),
        "{text}"
    );
}

#[test]
fn invalid_policy_exits_two_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, "mode: strict\n").unwrap();
    let out = check(&["--policy", policy.to_str().unwrap(), MUTABLE]);
    assert_exit(&out, 2);
    let err = stderr(&out);
    assert!(
        err.contains(&format!("invalid policy file {}, line 1", policy.display())),
        "{err}"
    );
    assert_eq!(
        stdout(&out),
        "",
        "nothing is judged under an invalid policy"
    );
}

#[test]
fn an_image_volume_with_a_mutable_tag_is_denied_as_a_volume() {
    let file = "tests/fixtures/manifests/image_volume_mutable.yaml";
    let out = check(&[file]);
    assert_exit(&out, 1);
    assert_eq!(
        stdout(&out).trim_end(),
        format!(
            r#"{file}: denied: Deployment ml/inference: volume "model" (spec.template.spec.volumes[1].image.reference): image "quay.io/acme/model:latest" uses mutable tag "latest"; use a version tag or a digest"#
        )
    );
}
