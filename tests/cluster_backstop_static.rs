//! manifests/backstop/backstop.static.yaml, as shipped, loaded by a real kube-apiserver from its
//! staticManifestsDir (manifest-based admission control, beta in Kubernetes 1.37): it refuses
//! unpinned Pods in every namespace but pinhook's and kube-system, with no webhook and nothing
//! in the API that could delete it.

mod common;

use std::sync::LazyLock;

use common::cluster::{Cluster, root, wait_for};
use std::time::Duration;

static DIR: LazyLock<tempfile::TempDir> = LazyLock::new(|| {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        root().join("manifests/backstop/backstop.static.yaml"),
        dir.path().join("backstop.static.yaml"),
    )
    .unwrap();
    dir
});

static CLUSTER: LazyLock<Cluster> = LazyLock::new(|| Cluster::start(Some(DIR.path())));

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

#[test]
fn the_static_backstop_refuses_unpinned_pods_and_cannot_be_deleted() {
    let c = &*CLUSTER;
    c.namespace("apps", None);
    let refused = wait_for(Duration::from_secs(30), "the static backstop", || {
        let out = c.kubectl(&["run", "web", "-n", "apps", "--image=nginx:1.27"]);
        (!out.ok).then_some(out)
    });
    assert!(
        refused
            .stderr
            .contains("pinhook backstop (pinhook-backstop.static.k8s.io): container \"web\" image \"nginx:1.27\""),
        "{}",
        refused.stderr
    );
    c.ok(&[
        "run",
        "pinned",
        "-n",
        "apps",
        &format!("--image=nginx:1.27@{DIGEST}"),
    ]);
    // kube-system is never judged.
    c.ok(&["run", "system", "-n", "kube-system", "--image=nginx:1.27"]);

    // Not an API object: nothing to delete, and its name cannot be taken through the API.
    let delete = c.kubectl(&[
        "delete",
        "validatingadmissionpolicy",
        "pinhook-backstop.static.k8s.io",
    ]);
    assert!(
        !delete.ok && delete.stderr.contains("NotFound"),
        "{delete:?}"
    );
    let copy = std::fs::read_to_string(DIR.path().join("backstop.static.yaml")).unwrap();
    let create = c.kubectl_in(&["create", "-f", "-"], &copy);
    assert!(!create.ok, "{create:?}");
    assert!(create.stderr.contains("static.k8s.io"), "{}", create.stderr);
}
