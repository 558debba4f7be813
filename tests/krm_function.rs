//! `pinhook krm` run by a real KRM runner: kustomize v5.8.1 (the release the test control
//! plane's kubectl embeds, built standalone by `make cluster` because kubectl's `kustomize`
//! has no `--enable-exec`) with `build --enable-alpha-plugins --enable-exec`, as
//! docs/gitops.md shows it, against a real registry.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::registry::{Registry, TestImage};

/// The kustomize of the test control plane's release (`make cluster`).
fn kustomize_bin() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cluster/bin/kustomize");
    assert!(
        path.exists(),
        "{} is missing: run `make cluster` (make test does)",
        path.display()
    );
    path
}

/// A kustomization whose transformer is pinhook (through a two-line wrapper, as documented),
/// with `policy` as the function config; the output of `kustomize build`.
fn kustomize(reg: &Registry, image: &str, policy: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("kustomization.yaml"),
        "resources:\n- deployment.yaml\ntransformers:\n- pin.yaml\n",
    )
    .unwrap();
    std::fs::write(
        d.join("deployment.yaml"),
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  selector: {{matchLabels: {{app: web}}}}\n  template:\n    metadata: {{labels: {{app: web}}}}\n    spec:\n      containers:\n      - name: web\n        image: {image}\n"
        ),
    )
    .unwrap();
    let indented: String = format!(
        "registries:\n- host: {}\n  insecure: true\n{policy}",
        reg.host
    )
    .lines()
    .map(|l| format!("    {l}\n"))
    .collect();
    std::fs::write(
        d.join("pin.yaml"),
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: pin-images\n  annotations:\n    config.kubernetes.io/function: |\n      exec:\n        path: ./pinhook-krm\ndata:\n  policy: |\n{indented}"
        ),
    )
    .unwrap();
    let wrapper = d.join("pinhook-krm");
    std::fs::write(
        &wrapper,
        format!("#!/bin/sh\nexec {} krm\n", common::binary().display()),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    Command::new(kustomize_bin())
        .args(["build", "--enable-alpha-plugins", "--enable-exec"])
        .arg(d)
        .output()
        .expect("run kustomize build")
}

#[test]
fn kustomize_build_pins_through_the_function() {
    let reg = Registry::plain();
    let digest = reg.push("shop/web", "1.4.2", &TestImage::multi_arch("krm-web"));
    let image = format!("{}/shop/web:1.4.2", reg.host);
    let out = kustomize(&reg, &image, "");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("image: {image}@{digest}\n")),
        "{stdout}"
    );
    assert!(!stdout.contains("results:"), "{stdout}");
}

#[test]
fn a_denied_image_fails_the_build_with_the_webhooks_words() {
    let reg = Registry::plain();
    let image = format!("{}/shop/web:latest", reg.host);
    let out = kustomize(&reg, &image, "");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(r#"uses mutable tag "latest"; use a version tag or a digest"#),
        "{stderr}"
    );
    // A policy in the function config that allows it (warn mode, nothing pinned) passes.
    let out = kustomize(&reg, &image, "mode: warn\npin: false\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("image: {image}\n")));
}
