//! `pinhook drift` on manifest files, against a real registry: a `docker-registry` on 127.0.0.1
//! started by the harness, images pushed with `skopeo`, and every expected digest the one
//! `skopeo inspect` reads back. A tag is moved by pushing another image to it; the binary must
//! then report the pinned and the current digest, exit 1, and change no file.

mod common;

use std::path::Path;

use common::drift::{Run, drift, policy_file};
use common::registry::{Registry, TestImage};
use serde_json::json;

/// A Deployment `shop/web` with containers `web` and `api` of these images, with comments and
/// quoting that a reader of the file would keep.
fn deployment(web: &str, api: &str) -> String {
    format!(
        "# The shop's web tier.\n\
         apiVersion: apps/v1\n\
         kind: Deployment\n\
         metadata:\n  name: web\n  namespace: shop\n\
         spec:\n  selector: {{matchLabels: {{app: web}}}}\n  template:\n    metadata: {{labels: {{app: web}}}}\n    spec:\n      containers:\n\
         \x20       - name: web\n          image: \"{web}\"   # pinned by pinhook pin\n\
         \x20       - name: api\n          image: '{api}'\n"
    )
}

/// Runs `pinhook drift --policy POLICY ARGS`.
fn run(policy: &Path, args: &[&str]) -> Run {
    let mut all = vec!["--policy", policy.to_str().unwrap()];
    all.extend_from_slice(args);
    drift(&all, None, None)
}

#[test]
fn a_moved_tag_is_reported_with_both_digests_and_no_file_changes() {
    let reg = Registry::plain();
    let dir = tempfile::tempdir().unwrap();
    let policy = policy_file(dir.path(), &reg.host);
    let web_tag = format!("{}/shop/web:1.0.0", reg.host);
    let api_tag = format!("{}/shop/api:2.0.0", reg.host);
    let old = reg.push("shop/web", "1.0.0", &TestImage::single("drift-web-old"));
    let api = reg.push("shop/api", "2.0.0", &TestImage::multi_arch("drift-api"));
    let deploy = dir.path().join("deploy");
    std::fs::create_dir(&deploy).unwrap();
    let file = deploy.join("web.yaml");
    let text = deployment(&format!("{web_tag}@{old}"), &format!("{api_tag}@{api}"));
    std::fs::write(&file, &text).unwrap();
    let file_name = file.display().to_string();

    // Nothing moved yet: exit 0, no report lines.
    let before = run(&policy, &[&file_name]);
    assert_eq!(before.code, 0, "{before:#?}");
    assert_eq!(before.stdout, "", "{before:#?}");
    assert_eq!(
        before.summary(),
        "pinhook drift: 2 pinned reference(s) checked, 0 moved, 0 unchecked, 0 error(s)"
    );

    // The tag moves: another image is pushed to shop/web:1.0.0.
    let new = reg.push("shop/web", "1.0.0", &TestImage::multi_arch("drift-web-new"));
    assert_ne!(old, new);

    let text_run = run(&policy, &[deploy.to_str().unwrap()]);
    assert_eq!(text_run.code, 1, "{text_run:#?}");
    assert_eq!(
        text_run.stdout,
        format!(
            "{file_name}: moved: Deployment shop/web: container \"web\" \
             (spec.template.spec.containers[0]): {web_tag} pinned to {old}, now {new}\n"
        ),
        "{text_run:#?}"
    );
    assert_eq!(
        text_run.summary(),
        "pinhook drift: 2 pinned reference(s) checked, 1 moved, 0 unchecked, 0 error(s)"
    );

    let json_run = run(&policy, &["--output", "json", &file_name]);
    assert_eq!(json_run.code, 1, "{json_run:#?}");
    assert_eq!(
        json_run.json(),
        json!({
            "checked": 2,
            "current": 1,
            "moved": [{
                "file": file_name,
                "object": "Deployment shop/web",
                "site": "container \"web\"",
                "path": "spec.template.spec.containers[0]",
                "image": format!("{web_tag}@{old}"),
                "tag": web_tag,
                "pinned": old,
                "current": new,
            }],
            "unchecked": [],
            "errors": [],
        })
    );

    // A report, never an edit.
    assert_eq!(std::fs::read_to_string(&file).unwrap(), text);
}

#[test]
fn current_pins_exit_zero_and_files_that_are_not_kubernetes_objects_are_passed_over() {
    let reg = Registry::plain();
    let dir = tempfile::tempdir().unwrap();
    let policy = policy_file(dir.path(), &reg.host);
    let web = reg.push("shop/web", "1.0.0", &TestImage::docker_v2("drift-cur"));
    let pinned = format!("{}/shop/web:1.0.0@{web}", reg.host);
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(repo.join("apps")).unwrap();
    std::fs::create_dir_all(repo.join(".github/workflows")).unwrap();
    // Kubernetes objects: a pinned Pod in a List, and a CronJob pinned by digest only (no tag:
    // it cannot drift, and is not counted).
    std::fs::write(
        repo.join("apps/list.json"),
        json!({"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
             "spec": {"containers": [{"name": "a", "image": pinned}]}},
            {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "c"},
             "spec": {"schedule": "@daily", "jobTemplate": {"spec": {"template": {"spec": {
                 "containers": [{"name": "c", "image": format!("{}/shop/web@{web}", reg.host)}]}}}}}},
        ]})
        .to_string(),
    )
    .unwrap();
    // Not Kubernetes objects, though they hold image strings: Helm values, a workflow, a
    // document with a non-string key, an empty document, a plain scalar, and a README.
    std::fs::write(
        repo.join("values.yaml"),
        format!("image: {pinned}\nreplicas: 2\n"),
    )
    .unwrap();
    std::fs::write(
        repo.join(".github/workflows/ci.yml"),
        "on: push\njobs: {build: {runs-on: ubuntu-latest}}\n",
    )
    .unwrap();
    std::fs::write(
        repo.join("apps/odd.yml"),
        "? [a, b]\n: c\n---\n---\njust a string\n---\nkind: Pod\n",
    )
    .unwrap();
    std::fs::write(repo.join("README.md"), "kind: Pod\nnot: [yaml\n").unwrap();

    let r = run(&policy, &[repo.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{r:#?}");
    assert_eq!(r.stdout, "", "{r:#?}");
    assert_eq!(
        r.summary(),
        "pinhook drift: 1 pinned reference(s) checked, 0 moved, 0 unchecked, 0 error(s)"
    );

    // The same Pod from standard input, JSON out.
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: p, namespace: team}}\nspec:\n  containers: [{{name: a, image: '{pinned}'}}]\n"
    );
    let stdin = drift(
        &["--policy", policy.to_str().unwrap(), "--output=json", "-"],
        None,
        Some(&pod),
    );
    assert_eq!(stdin.code, 0, "{stdin:#?}");
    assert_eq!(
        stdin.json(),
        json!({"checked": 1, "current": 1, "moved": [], "unchecked": [], "errors": []})
    );
}

#[test]
fn unreadable_input_and_unchecked_references_exit_two() {
    let reg = Registry::plain();
    let dir = tempfile::tempdir().unwrap();
    let policy = policy_file(dir.path(), &reg.host);
    let web = reg.push("shop/web", "1.0.0", &TestImage::single("drift-gone"));

    // A tag that no longer exists cannot be checked: listed as unchecked, exit 2.
    let gone = format!(
        "{}/shop/web:0.9.0@sha256:{}",
        reg.host,
        "0123456789abcdef".repeat(4)
    );
    let file = dir.path().join("gone.yaml");
    std::fs::write(
        &file,
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: old}}\nspec:\n  containers:\n    - {{name: a, image: '{gone}'}}\n    - {{name: b, image: '{}/shop/web:1.0.0@{web}'}}\n",
            reg.host
        ),
    )
    .unwrap();
    let file_name = file.display().to_string();
    let r = run(&policy, &["--output", "json", &file_name]);
    assert_eq!(r.code, 2, "{r:#?}");
    let report = r.json();
    assert_eq!(report["checked"], 2, "{report}");
    assert_eq!(report["current"], 1, "{report}");
    let unchecked = &report["unchecked"][0];
    assert_eq!(unchecked["file"], file_name.as_str(), "{report}");
    assert_eq!(unchecked["object"], "Pod default/old", "{report}");
    assert_eq!(unchecked["site"], "container \"a\"", "{report}");
    assert_eq!(unchecked["image"], gone.as_str(), "{report}");
    assert!(!unchecked["error"].as_str().unwrap().is_empty(), "{report}");
    let text = run(&policy, &[&file_name]);
    assert_eq!(text.code, 2, "{text:#?}");
    assert!(
        text.stdout.starts_with(&format!(
            "{file_name}: unchecked: Pod default/old: container \"a\": {gone}: "
        )),
        "{text:#?}"
    );

    // A missing file and a YAML syntax error: reported, the rest still read, exit 2.
    let broken = dir.path().join("broken.yaml");
    std::fs::write(&broken, "apiVersion: v1\nkind: Pod\nspec: [unclosed\n").unwrap();
    let missing = dir.path().join("missing.yaml");
    let r = run(
        &policy,
        &[
            missing.to_str().unwrap(),
            broken.to_str().unwrap(),
            "--namespace",
            "team",
        ],
    );
    assert_eq!(r.code, 2, "{r:#?}");
    assert!(
        r.stderr.contains(&format!(
            "pinhook drift: {}: cannot read: ",
            missing.display()
        )),
        "{r:#?}"
    );
    assert!(
        r.stderr.contains(&format!(
            "pinhook drift: {}: document 1: ",
            broken.display()
        )),
        "{r:#?}"
    );
    assert_eq!(
        r.summary(),
        "pinhook drift: 0 pinned reference(s) checked, 0 moved, 0 unchecked, 2 error(s)"
    );

    // A policy that does not load: exit 2 before anything is read.
    let bad = dir.path().join("bad-policy.yaml");
    std::fs::write(&bad, "mdoe: enforce\n").unwrap();
    let r = run(&bad, &[&file_name]);
    assert_eq!(r.code, 2, "{r:#?}");
    assert!(r.stderr.contains("bad-policy.yaml"), "{r:#?}");

    // Neither paths nor --cluster: a usage error (clap's status 2).
    let r = drift(&[], None, None);
    assert_eq!(r.code, 2, "{r:#?}");
}
