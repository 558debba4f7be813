//! Hot reload of the policy file: an edit applies to the next request once "policy reloaded" is
//! logged, the ConfigMap-volume symlink swap is seen, and an invalid edit is refused while the
//! previous policy stays in force (and the metrics say so).

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Http, Options, Pinhook, fixture, response_of};
use serde_json::Value;

/// Long enough for many 100 ms reload polls on a loaded machine.
const RELOAD_WAIT: Duration = Duration::from_secs(10);

/// Replaces `path` with `text` in one step (write a sibling, rename over), as editors and
/// `kubectl cp` do. A plain truncate-and-write could be polled half-written — e.g. empty,
/// which is the built-in policy — and log a reload of content the test never meant.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Posts fixture pod_mutable_latest_tag (`nginx:latest`) and returns its `response`.
async fn latest_tag_pod(server: &Pinhook) -> Value {
    let review = fixture("pod_mutable_latest_tag");
    let (status, _, body) = server.validate(Http::V2, &review).await;
    assert_eq!(status, 200, "{body}");
    response_of(&body, review["request"]["uid"].as_str().unwrap())
}

fn wait_for_reload(server: &Pinhook) -> Value {
    server.wait_for_line(RELOAD_WAIT, |v| v["message"] == "policy reloaded")
}

fn assert_has_line(metrics: &str, line: &str) {
    assert!(
        metrics.lines().any(|l| l == line),
        "missing {line:?} in\n{metrics}"
    );
}

fn start_with_policy(policy: &str) -> Pinhook {
    Pinhook::start_with(Options {
        policy: Some(policy.into()),
        ..Default::default()
    })
}

#[tokio::test]
async fn edited_policy_applies_to_the_next_request() {
    let server = start_with_policy("mode: enforce\n");
    let resp = latest_tag_pod(&server).await;
    assert_eq!(resp["allowed"], false, "{resp}");

    replace(&server.policy_path(), "mode: warn\n");
    let line = wait_for_reload(&server);
    assert_eq!(
        line["policy"],
        server.policy_path().display().to_string(),
        "{line}"
    );

    let resp = latest_tag_pod(&server).await;
    assert_eq!(resp["allowed"], true, "{resp}");
    let warnings = resp["warnings"].as_array().expect("warnings");
    assert_eq!(
        warnings,
        &[Value::from(
            r#"pinhook: container "web": image "nginx:latest" uses mutable tag "latest""#
        )]
    );
}

#[tokio::test]
async fn configmap_style_symlink_swap_is_seen() {
    // The layout kubelet gives a ConfigMap volume:
    //   policy.yaml -> ..data/policy.yaml, ..data -> ..2026_01_01_v1/
    let volume = tempfile::tempdir().unwrap();
    let root = volume.path();
    let v1 = root.join("..2026_01_01_v1");
    std::fs::create_dir(&v1).unwrap();
    std::fs::write(v1.join("policy.yaml"), "mode: enforce\n").unwrap();
    std::os::unix::fs::symlink("..2026_01_01_v1", root.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/policy.yaml", root.join("policy.yaml")).unwrap();

    let server = Pinhook::start_with(Options {
        policy: None,
        args: vec![
            "--policy".into(),
            root.join("policy.yaml").display().to_string(),
        ],
        ..Default::default()
    });
    let resp = latest_tag_pod(&server).await;
    assert_eq!(resp["allowed"], false, "{resp}");

    // kubelet's update: write the new version, point ..data at it atomically, drop the old one.
    let v2 = root.join("..2026_01_01_v2");
    std::fs::create_dir(&v2).unwrap();
    std::fs::write(v2.join("policy.yaml"), "mode: audit\n").unwrap();
    std::os::unix::fs::symlink("..2026_01_01_v2", root.join("..data_tmp")).unwrap();
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    std::fs::remove_dir_all(&v1).unwrap();

    wait_for_reload(&server);
    let resp = latest_tag_pod(&server).await;
    assert_eq!(resp["allowed"], true, "{resp}");
    assert!(resp.get("warnings").is_none(), "{resp}");
    assert_eq!(resp["auditAnnotations"]["mode"], "audit", "{resp}");
}

#[tokio::test]
async fn invalid_edit_is_refused_and_old_policy_stays() {
    let server = start_with_policy("mode: warn\n");
    let path = server.policy_path();

    replace(&path, "mode: [broken\n");
    let refused = server.wait_for_line(RELOAD_WAIT, |v| {
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("policy reload refused"))
    });
    let error = refused["error"].as_str().expect("error field");
    assert!(
        error.contains(&format!("{}, line 1", path.display())),
        "error should name the file and line: {error}"
    );

    let resp = latest_tag_pod(&server).await;
    assert_eq!(resp["allowed"], true, "{resp}");
    assert!(
        resp["warnings"].as_array().is_some_and(|w| !w.is_empty()),
        "warn policy no longer in force: {resp}"
    );
    let metrics = server.metrics().await;
    assert_has_line(
        &metrics,
        r#"pinhook_policy_reloads_total{result="failure"} 1"#,
    );
    assert_has_line(&metrics, "pinhook_policy_valid 0");

    replace(&path, "mode: enforce\n");
    wait_for_reload(&server);
    let resp = latest_tag_pod(&server).await;
    assert_eq!(resp["allowed"], false, "{resp}");
    assert_has_line(&server.metrics().await, "pinhook_policy_valid 1");
}

/// Points `path` at `target` in one step, as a ConfigMap update would.
fn relink(path: &Path, target: &Path) {
    let tmp = path.with_extension("yaml.link");
    std::os::unix::fs::symlink(target, &tmp).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn a_dev_zero_link_or_a_fifo_is_a_logged_reload_failure_not_a_hang() {
    let server = start_with_policy("mode: warn\n");
    let path = server.policy_path();
    let refused = |server: &Pinhook, what: &'static str| {
        server.wait_for_line(RELOAD_WAIT, move |v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.contains("policy reload refused"))
                && v["error"].as_str().is_some_and(|e| e.contains(what))
        })
    };

    relink(&path, Path::new("/dev/zero"));
    refused(&server, "not a regular file (it is a character device)");
    let metrics = server.metrics().await;
    assert_has_line(
        &metrics,
        r#"pinhook_policy_reloads_total{result="failure"} 1"#,
    );
    assert_has_line(&metrics, "pinhook_policy_valid 0");

    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    relink(&path, &fifo);
    refused(&server, "not a regular file (it is a FIFO)");
    assert_has_line(
        &server.metrics().await,
        r#"pinhook_policy_reloads_total{result="failure"} 2"#,
    );

    // The watcher is not stuck: a good file is taken again, and the old policy served meanwhile.
    let resp = latest_tag_pod(&server).await;
    assert_eq!(resp["allowed"], true, "{resp}");
    std::fs::remove_file(&path).unwrap();
    replace(&path, "mode: enforce\n");
    wait_for_reload(&server);
    assert_eq!(latest_tag_pod(&server).await["allowed"], false);
    assert_has_line(&server.metrics().await, "pinhook_policy_valid 1");
}
