//! `/validate` against the real server: every kind, operation and container list, over
//! HTTP/1.1 and HTTP/2, with AdmissionReviews shaped like the API server's.

mod common;

use common::{BOTH, Http, Pinhook, fixture, response_of};
use serde_json::Value;

fn uid(review: &Value) -> String {
    review["request"]["uid"].as_str().unwrap().to_owned()
}

async fn decide(server: &Pinhook, http: Http, name: &str) -> Value {
    let review = fixture(name);
    let (status, version, body) = server.validate(http, &review).await;
    assert_eq!(status, 200, "{name}: {body}");
    let expected = if http == Http::V2 {
        reqwest::Version::HTTP_2
    } else {
        reqwest::Version::HTTP_11
    };
    assert_eq!(version, expected, "{name}");
    response_of(&body, &uid(&review))
}

#[tokio::test]
async fn pod_with_latest_is_denied_with_actionable_message() {
    let server = Pinhook::start();
    for http in BOTH {
        let resp = decide(&server, http, "pod_mutable_latest_tag").await;
        assert_eq!(resp["allowed"], false);
        assert_eq!(resp["status"]["code"], 403);
        let msg = resp["status"]["message"].as_str().unwrap();
        assert!(
            msg.starts_with("pinhook denied Pod shop/web-7d9c6b5f4-*"),
            "{msg}"
        );
        assert!(
            msg.contains(r#"container "web" (spec.containers[0]): image "nginx:latest" uses mutable tag "latest"; use a version tag or a digest"#),
            "{msg}"
        );
        assert_eq!(
            resp["auditAnnotations"]["rejected-images"],
            "web=nginx:latest (mutable-tag)"
        );
    }
}

#[tokio::test]
async fn pinned_and_versioned_pods_are_allowed() {
    let server = Pinhook::start();
    for http in BOTH {
        for name in ["pod_pinned_by_digest", "pod_version_tags"] {
            let resp = decide(&server, http, name).await;
            assert_eq!(resp["allowed"], true, "{name}: {resp}");
            assert!(resp.get("warnings").is_none(), "{name}: {resp}");
            assert!(resp.get("auditAnnotations").is_none(), "{name}: {resp}");
        }
    }
}

#[tokio::test]
async fn missing_tag_counts_as_latest() {
    let server = Pinhook::start();
    let resp = decide(&server, Http::V2, "pod_no_tag").await;
    assert_eq!(resp["allowed"], false);
    assert!(
        resp["status"]["message"]
            .as_str()
            .unwrap()
            .contains(r#"image "nginx" has no tag"#),
        "{resp}"
    );
}

#[tokio::test]
async fn every_container_list_is_judged_and_listed() {
    let server = Pinhook::start();
    let resp = decide(&server, Http::V2, "pod_every_container_list").await;
    let msg = resp["status"]["message"].as_str().unwrap();
    assert!(msg.contains("3 images violate"), "{msg}");
    for needle in [
        r#"container "sidecar" (spec.containers[1]): image "envoyproxy/envoy:main" uses mutable tag "main""#,
        r#"container "migrate" (spec.initContainers[0]): image "shop/migrate:dev-latest" uses mutable tag "dev-latest""#,
        r#"container "debug" (spec.ephemeralContainers[0]): image "busybox" has no tag"#,
    ] {
        assert!(msg.contains(needle), "missing {needle:?} in {msg}");
    }
    assert!(!msg.contains(r#"container "web""#), "{msg}");
}

#[tokio::test]
async fn every_workload_kind_is_denied_at_its_template_path() {
    let server = Pinhook::start();
    let kinds = [
        ("deployment", "Deployment", "spec.template.spec"),
        ("replicaset", "ReplicaSet", "spec.template.spec"),
        ("statefulset", "StatefulSet", "spec.template.spec"),
        ("daemonset", "DaemonSet", "spec.template.spec"),
        (
            "replicationcontroller",
            "ReplicationController",
            "spec.template.spec",
        ),
        ("job", "Job", "spec.template.spec"),
        ("cronjob", "CronJob", "spec.jobTemplate.spec.template.spec"),
        ("podtemplate", "PodTemplate", "template.spec"),
    ];
    for http in BOTH {
        for (file, kind, path) in kinds {
            let resp = decide(&server, http, &format!("{file}_mutable_tags")).await;
            assert_eq!(resp["allowed"], false, "{file}: {resp}");
            let msg = resp["status"]["message"].as_str().unwrap();
            assert!(
                msg.starts_with(&format!("pinhook denied {kind} shop/web: 2 images violate")),
                "{file}: {msg}"
            );
            assert!(
                msg.contains(&format!(
                    r#"container "web" ({path}.containers[0]): image "shop/web:latest""#
                )),
                "{file}: {msg}"
            );
            assert!(msg.contains(&format!(r#"container "proxy" ({path}.containers[2]): image "envoyproxy/envoy:dev-latest""#)), "{file}: {msg}");
            assert!(!msg.contains(r#""metrics""#), "{file}: {msg}");

            let resp = decide(&server, http, &format!("{file}_version_tags")).await;
            assert_eq!(resp["allowed"], true, "{file}: {resp}");
        }
    }
}

#[tokio::test]
async fn ephemeral_container_subresource_judges_only_the_new_container() {
    let server = Pinhook::start();
    let resp = decide(&server, Http::V2, "pod_ephemeral_container_added").await;
    assert_eq!(resp["allowed"], false);
    let msg = resp["status"]["message"].as_str().unwrap();
    assert!(msg.contains("1 image violates"), "{msg}");
    assert!(
        msg.contains(
            r#"container "debugger-x7k2" (spec.ephemeralContainers[0]): image "busybox:latest""#
        ),
        "{msg}"
    );
}

#[tokio::test]
async fn update_without_image_change_is_allowed() {
    let server = Pinhook::start();
    for name in [
        "pod_update_label_only",
        "deployment_scale_keeps_old_mutable_tags",
    ] {
        let resp = decide(&server, Http::V1, name).await;
        assert_eq!(resp["allowed"], true, "{name}: {resp}");
    }
}

#[tokio::test]
async fn update_that_changes_an_image_is_judged() {
    let server = Pinhook::start();
    let resp = decide(&server, Http::V2, "pod_update_image_changed").await;
    assert_eq!(resp["allowed"], false);
    assert!(
        resp["status"]["message"]
            .as_str()
            .unwrap()
            .contains(r#"uses mutable tag "main""#),
        "{resp}"
    );
}

#[tokio::test]
async fn delete_connect_unknown_kinds_and_exempt_namespaces_pass_untouched() {
    let server = Pinhook::start();
    for http in BOTH {
        for name in [
            "pod_delete",
            "pod_connect_exec",
            "configmap_unknown_kind",
            "pod_in_kube_system",
            "deployment_image_unset",
        ] {
            let resp = decide(&server, http, name).await;
            assert_eq!(resp["allowed"], true, "{name}: {resp}");
            assert!(
                resp.get("warnings").is_none() && resp.get("auditAnnotations").is_none(),
                "{name}: {resp}"
            );
        }
    }
    assert!(
        server.audit_records().is_empty(),
        "{:?}",
        server.audit_records()
    );
}

#[tokio::test]
async fn invalid_reference_is_denied_quoting_it() {
    let server = Pinhook::start();
    let resp = decide(&server, Http::V2, "pod_invalid_reference").await;
    assert_eq!(resp["allowed"], false);
    let msg = resp["status"]["message"].as_str().unwrap();
    assert!(
        msg.contains(
            r#"image "nginx:1.0 " is not a valid image reference (leading or trailing whitespace)"#
        ),
        "{msg}"
    );
    assert!(
        msg.contains(
            r#"image "Shop/API:1.0.0" is not a valid image reference (repository name "API" must be lowercase)"#
        ),
        "{msg}"
    );
}

#[tokio::test]
async fn warn_mode_allows_with_warnings_under_120_chars() {
    let server = Pinhook::start_with(common::Options {
        policy: Some("mode: warn\n".into()),
        ..Default::default()
    });
    let resp = decide(&server, Http::V2, "deployment_mutable_tags").await;
    assert_eq!(resp["allowed"], true);
    let warnings: Vec<&str> = resp["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    assert_eq!(
        warnings,
        [
            r#"pinhook: container "web": image "shop/web:latest" uses mutable tag "latest""#,
            r#"pinhook: container "proxy": image "envoyproxy/envoy:dev-latest" uses mutable tag "dev-latest""#
        ]
    );
    assert!(warnings.iter().all(|w| w.chars().count() < 120));
    assert!(
        resp["auditAnnotations"]["warned-images"]
            .as_str()
            .unwrap()
            .contains("web=shop/web:latest")
    );
}

#[tokio::test]
async fn namespace_rule_overrides_mode() {
    let policy = "rules:\n  - namespaces: [\"sho*\"]\n    mode: audit\n";
    let server = Pinhook::start_with(common::Options {
        policy: Some(policy.into()),
        ..Default::default()
    });
    let resp = decide(&server, Http::V2, "pod_mutable_latest_tag").await;
    assert_eq!(resp["allowed"], true);
    assert!(resp.get("warnings").is_none());
    assert_eq!(resp["auditAnnotations"]["mode"], "audit");
}

#[tokio::test]
async fn many_concurrent_streams_on_one_http2_connection() {
    let server = Pinhook::start();
    let client = server.client(Http::V2);
    let body = serde_json::to_vec(&fixture("deployment_mutable_tags")).unwrap();
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (client, url, body) = (client.clone(), server.url("/validate"), body.clone());
        tasks.push(tokio::spawn(async move {
            let r = client.post(url).body(body).send().await.unwrap();
            (r.version(), r.json::<Value>().await.unwrap())
        }));
    }
    for t in tasks {
        let (version, v) = t.await.unwrap();
        assert_eq!(version, reqwest::Version::HTTP_2);
        assert_eq!(v["response"]["allowed"], false);
    }
}

#[tokio::test]
async fn image_volumes_are_judged_in_every_kind() {
    let server = Pinhook::start();
    let kinds = [
        ("pod_version_tags", "/request/object/spec"),
        ("podtemplate_version_tags", "/request/object/template/spec"),
        (
            "replicationcontroller_version_tags",
            "/request/object/spec/template/spec",
        ),
        (
            "deployment_version_tags",
            "/request/object/spec/template/spec",
        ),
        (
            "replicaset_version_tags",
            "/request/object/spec/template/spec",
        ),
        (
            "statefulset_version_tags",
            "/request/object/spec/template/spec",
        ),
        (
            "daemonset_version_tags",
            "/request/object/spec/template/spec",
        ),
        ("job_version_tags", "/request/object/spec/template/spec"),
        (
            "cronjob_version_tags",
            "/request/object/spec/jobTemplate/spec/template/spec",
        ),
    ];
    for (name, spec) in kinds {
        let mut review = fixture(name);
        review.pointer_mut(spec).unwrap()["volumes"] = serde_json::json!([
            {"name": "data", "emptyDir": {}},
            {"name": "model", "image": {"reference": "quay.io/acme/model:latest"}}
        ]);
        let (status, _, body) = server.validate(Http::V2, &review).await;
        assert_eq!(status, 200, "{name}: {body}");
        let resp = response_of(&body, &uid(&review));
        assert_eq!(resp["allowed"], false, "{name}: {resp}");
        let path = spec
            .trim_start_matches("/request/object/")
            .replace('/', ".");
        let expected = format!(
            r#"volume "model" ({path}.volumes[1].image.reference): image "quay.io/acme/model:latest" uses mutable tag "latest"; use a version tag or a digest"#
        );
        let msg = resp["status"]["message"].as_str().unwrap();
        assert!(msg.contains(&expected), "{name}: {msg}");
        assert_eq!(
            resp["auditAnnotations"]["rejected-images"],
            "volume/model=quay.io/acme/model:latest (mutable-tag)",
            "{name}"
        );
    }
}

#[tokio::test]
async fn warn_mode_names_the_image_volume_in_its_warning() {
    let server = Pinhook::start_with(common::Options {
        policy: Some("mode: warn\n".into()),
        ..Default::default()
    });
    for name in [
        "pod_image_volume_mutable_tag",
        "deployment_image_volume_mutable_tag",
    ] {
        let resp = decide(&server, Http::V1, name).await;
        assert_eq!(resp["allowed"], true, "{name}: {resp}");
        assert_eq!(
            resp["warnings"],
            serde_json::json!([
                r#"pinhook: volume "model": image "quay.io/acme/model:latest" uses mutable tag "latest""#
            ]),
            "{name}"
        );
        assert_eq!(
            resp["auditAnnotations"]["warned-images"],
            "volume/model=quay.io/acme/model:latest (mutable-tag)"
        );
    }
}
