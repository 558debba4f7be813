//! `pinhook pin`: manifests in a repository pinned in place against a real registry, with only
//! the image strings changed (the rest of each file byte for byte), idempotent, `--check` as a
//! CI gate, `--refresh` after a tag moved, kustomization `images:` entries, stdin to stdout, and
//! files that are not Kubernetes YAML left alone.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::registry::{Registry, TestImage};

/// A Deployment written the way people write them: comments, both quoting styles, a flow
/// mapping, an init container, an anchor, a second document and a trailing comment.
const DEPLOYMENT: &str = r#"# The shop's web tier.
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web            # keep in sync with the Service
  namespace: shop
spec:
  template:
    spec:
      initContainers:
        - {name: migrate, image: 'REG/shop/api:2.0.0'}
      containers:
        - name: web
          image: REG/shop/web:1.0.0   # the app
          ports: [{containerPort: 8080}]
        - name: side
          image: "REG/shop/side:1.0.0"
---
apiVersion: v1
kind: List
items:
  - apiVersion: batch/v1
    kind: CronJob
    metadata: {name: nightly}
    spec:
      schedule: "0 3 * * *"
      jobTemplate:
        spec:
          template:
            spec:
              containers:
                - name: job
                  image: &job REG/shop/web:1.0.0
# end
"#;

const KUSTOMIZATION: &str = r#"apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - deployment.yaml
images:
  - name: shop/web
    newName: REG/shop/web
    newTag: 1.0.0   # bumped by the release job
  - {name: api, newName: REG/shop/api, newTag: "2.0.0"}
  - name: untagged
    newName: REG/shop/side
"#;

const NOT_KUBERNETES: &str = "# CI settings\nstages: [build, test]\nimage: REG/shop/web:1.0.0\n";

struct Repo {
    reg: Registry,
    dir: tempfile::TempDir,
    policy: std::path::PathBuf,
    web: String,
    api: String,
    side: String,
}

/// A registry with three images and a repository of manifests that name them.
fn repo() -> Repo {
    let reg = Registry::plain();
    let web = reg.push("shop/web", "1.0.0", &TestImage::single("web-1"));
    let api = reg.push("shop/api", "2.0.0", &TestImage::multi_arch("api-2"));
    let side = reg.push("shop/side", "1.0.0", &TestImage::single("side-1"));
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        format!("registries:\n  - host: {}\n    insecure: true\n", reg.host),
    )
    .unwrap();
    let files = dir.path().join("deploy");
    std::fs::create_dir(&files).unwrap();
    for (name, text) in [
        ("deployment.yaml", DEPLOYMENT),
        ("kustomization.yaml", KUSTOMIZATION),
        ("ci.yml", NOT_KUBERNETES),
    ] {
        std::fs::write(files.join(name), text.replace("REG", &reg.host)).unwrap();
    }
    std::fs::write(files.join("README.md"), "not a manifest").unwrap();
    Repo {
        reg,
        dir,
        policy,
        web,
        api,
        side,
    }
}

impl Repo {
    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join("deploy").join(name)
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap()
    }

    fn pin(&self, args: &[&str]) -> Output {
        Command::new(common::binary())
            .arg("pin")
            .arg("--policy")
            .arg(&self.policy)
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .expect("run pinhook pin")
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_exit(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        stderr(out)
    );
}

#[test]
fn only_image_strings_change_and_a_second_run_changes_nothing() {
    let r = repo();
    let h = &r.reg.host;
    let out = r.pin(&["deploy"]);
    assert_exit(&out, 0);
    let expected = DEPLOYMENT
        .replace(
            "'REG/shop/api:2.0.0'",
            &format!("'REG/shop/api:2.0.0@{}'", r.api),
        )
        .replace(
            "REG/shop/web:1.0.0   # the app",
            &format!("REG/shop/web:1.0.0@{}   # the app", r.web),
        )
        .replace(
            "\"REG/shop/side:1.0.0\"",
            &format!("\"REG/shop/side:1.0.0@{}\"", r.side),
        )
        .replace(
            "&job REG/shop/web:1.0.0",
            &format!("&job REG/shop/web:1.0.0@{}", r.web),
        )
        .replace("REG", h);
    assert_eq!(r.read("deployment.yaml"), expected);
    // The multi-arch image is pinned to its index, as skopeo reports it.
    assert_eq!(r.api, r.reg.inspect_digest("shop/api", "2.0.0"));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "deploy/deployment.yaml: pinned: Deployment shop/web: container \"web\" {h}/shop/web:1.0.0 → {h}/shop/web:1.0.0@{}",
            r.web
        )),
        "{err}"
    );
    assert!(
        err.contains("pinhook pin: 3 file(s) read, 6 image(s) pinned, 0 denied, 0 unresolved, 0 input error(s)"),
        "{err}"
    );
    assert!(
        err.contains("deploy/ci.yml: skipped: not Kubernetes YAML"),
        "{err}"
    );
    assert_eq!(r.read("ci.yml"), NOT_KUBERNETES.replace("REG", h));

    let before: Vec<String> = ["deployment.yaml", "kustomization.yaml"]
        .iter()
        .map(|f| r.read(f))
        .collect();
    let out = r.pin(&["deploy"]);
    assert_exit(&out, 0);
    assert!(
        stderr(&out).contains("0 image(s) pinned"),
        "{}",
        stderr(&out)
    );
    let after: Vec<String> = ["deployment.yaml", "kustomization.yaml"]
        .iter()
        .map(|f| r.read(f))
        .collect();
    assert_eq!(before, after, "a second run is a no-op");
}

#[test]
fn kustomization_entries_get_a_digest_in_their_own_style() {
    let r = repo();
    let out = r.pin(&["deploy/kustomization.yaml"]);
    assert_exit(&out, 0);
    let expected = KUSTOMIZATION
        .replace(
            "    newTag: 1.0.0   # bumped by the release job\n",
            &format!(
                "    newTag: 1.0.0   # bumped by the release job\n    digest: {}\n",
                r.web
            ),
        )
        .replace(
            "newTag: \"2.0.0\"}",
            &format!("newTag: \"2.0.0\", digest: {}}}", r.api),
        )
        .replace("REG", &r.reg.host);
    assert_eq!(r.read("kustomization.yaml"), expected);
}

#[test]
fn check_changes_nothing_and_fails_until_everything_is_pinned() {
    let r = repo();
    let original = r.read("deployment.yaml");
    let out = r.pin(&["--check", "deploy/deployment.yaml"]);
    assert_exit(&out, 1);
    assert!(
        stderr(&out).contains("4 image(s) would be pinned"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains(": would pin: "), "{}", stderr(&out));
    assert_eq!(
        r.read("deployment.yaml"),
        original,
        "--check writes nothing"
    );
    assert_exit(&r.pin(&["deploy/deployment.yaml"]), 0);
    assert_exit(&r.pin(&["--check", "deploy/deployment.yaml"]), 0);
}

#[test]
fn a_denied_or_missing_image_is_reported_and_the_others_are_still_pinned() {
    let r = repo();
    let h = &r.reg.host;
    let text = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\nspec:\n  containers:\n  - {{name: a, image: {h}/shop/web:latest}}\n  - {{name: b, image: {h}/shop/gone:9.9.9}}\n  - {{name: c, image: {h}/shop/web:1.0.0}}\n"
    );
    std::fs::write(r.path("pod.yaml"), &text).unwrap();
    let out = r.pin(&["deploy/pod.yaml"]);
    assert_exit(&out, 1);
    let err = stderr(&out);
    assert!(
        err.contains(&format!("deploy/pod.yaml: denied: Pod default/p: container \"a\" (spec.containers[0]): image \"{h}/shop/web:latest\" uses mutable tag \"latest\"; use a version tag or a digest")),
        "{err}"
    );
    assert!(
        err.contains(&format!("deploy/pod.yaml: unresolved: Pod default/p: container \"b\" (spec.containers[1]): cannot pin image \"{h}/shop/gone:9.9.9\": ")),
        "{err}"
    );
    assert_eq!(
        r.read("pod.yaml"),
        text.replace(
            &format!("{h}/shop/web:1.0.0}}"),
            &format!("{h}/shop/web:1.0.0@{}}}", r.web)
        )
    );
}

#[test]
fn refresh_follows_a_moved_tag_and_a_plain_run_does_not() {
    let r = repo();
    assert_exit(&r.pin(&["deploy/deployment.yaml"]), 0);
    let pinned = r.read("deployment.yaml");
    let moved = r
        .reg
        .push("shop/web", "1.0.0", &TestImage::single("web-1-rebuilt"));
    assert_ne!(moved, r.web);
    assert_exit(&r.pin(&["deploy/deployment.yaml"]), 0);
    assert_eq!(
        r.read("deployment.yaml"),
        pinned,
        "sticky without --refresh"
    );
    let out = r.pin(&["--refresh", "deploy/deployment.yaml"]);
    assert_exit(&out, 0);
    assert_eq!(r.read("deployment.yaml"), pinned.replace(&r.web, &moved));
    assert!(
        stderr(&out).contains("2 image(s) pinned"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn stdin_is_pinned_to_stdout() {
    let r = repo();
    let text = DEPLOYMENT.replace("REG", &r.reg.host);
    let mut child = Command::new(common::binary())
        .args(["pin", "--policy"])
        .arg(&r.policy)
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_exit(&out, 0);
    let pinned = String::from_utf8(out.stdout).unwrap();
    assert_eq!(pinned.lines().count(), text.lines().count());
    assert!(
        pinned.contains(&format!("shop/side:1.0.0@{}\"", r.side)),
        "{pinned}"
    );
}

#[test]
fn unreadable_input_exits_two_and_leaves_the_file_alone() {
    let r = repo();
    let broken = "apiVersion: v1\nkind: Pod\nspec: [unclosed\n";
    std::fs::write(r.path("broken.yaml"), broken).unwrap();
    let out = r.pin(&["deploy/broken.yaml", "deploy/missing.yaml"]);
    assert_exit(&out, 2);
    let err = stderr(&out);
    assert!(err.contains("deploy/broken.yaml: line "), "{err}");
    assert!(err.contains("deploy/missing.yaml: cannot read: "), "{err}");
    assert_eq!(r.read("broken.yaml"), broken);
    assert!(!Path::new(&r.path(".broken.yaml.pinhook-tmp")).exists());
}

#[test]
fn a_walked_directory_skips_helm_templates_and_files_that_are_not_yaml() {
    let r = repo();
    let chart = r.dir.path().join("deploy/chart");
    std::fs::create_dir_all(chart.join("templates")).unwrap();
    std::fs::write(
        chart.join("Chart.yaml"),
        "apiVersion: v2\nname: shop\nversion: 1.0.0\n",
    )
    .unwrap();
    let template = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {{ .Release.Name }}\nspec:\n  containers:\n  - name: web\n    image: \"{{ .Values.image }}\"\n";
    std::fs::write(chart.join("templates/pod.yaml"), template).unwrap();
    let not_yaml = "{{- define \"x\" -}}\n: : :\n";
    std::fs::write(r.path("notes.yaml"), not_yaml).unwrap();
    let out = r.pin(&["deploy"]);
    assert_exit(&out, 0);
    let err = stderr(&out);
    assert!(
        err.contains("deploy/chart/templates/pod.yaml: skipped: a Helm template"),
        "{err}"
    );
    assert!(
        err.contains("deploy/notes.yaml: skipped: not YAML ("),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(chart.join("templates/pod.yaml")).unwrap(),
        template
    );
    assert_eq!(r.read("notes.yaml"), not_yaml);
    // Named on the command line, the same file is an input error.
    assert_exit(&r.pin(&["deploy/notes.yaml"]), 2);
}
