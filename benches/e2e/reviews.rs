//! The AdmissionReviews the benchmark sends: a realistic Deployment as the API server sends it
//! for `kubectl apply` (managed fields, probes, resources, env, volumes: 6.9 KB compact), with
//! its images replaced, and Pods with many containers for filling the cache.

use serde_json::{Value, json};

const DEPLOYMENT: &str = include_str!("deployment-review.json");

/// The Deployment review with `images` as its containers' images (one container per image;
/// beyond the template's three, containers are copies of them with new names).
pub fn deployment(images: &[String]) -> Value {
    let mut review: Value = serde_json::from_str(DEPLOYMENT).expect("deployment-review.json");
    let spec = &mut review["request"]["object"]["spec"]["template"]["spec"];
    let template = spec["containers"].as_array().unwrap().clone();
    let containers: Vec<Value> = images
        .iter()
        .enumerate()
        .map(|(i, image)| {
            let mut c = template[i % template.len()].clone();
            if i >= template.len() {
                c["name"] = json!(format!("c{i}"));
            }
            c["image"] = json!(image);
            c
        })
        .collect();
    spec["containers"] = Value::Array(containers);
    review
}

/// A Pod review (CREATE in namespace `shop`) with one container per image.
pub fn pod(images: &[String], uid: &str) -> Value {
    let containers: Vec<Value> = images
        .iter()
        .enumerate()
        .map(|(i, image)| json!({"name": format!("c{i}"), "image": image, "imagePullPolicy": "IfNotPresent"}))
        .collect();
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop",
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"generateName": "fill-", "namespace": "shop"},
                "spec": {"containers": containers}
            },
            "oldObject": null,
            "dryRun": false
        }
    })
}

/// The number of images a /mutate answer pins (its JSON Patch has a `test` and a `replace`
/// per image), or an error naming what is wrong with the answer.
pub fn pinned_count(answer: &Value) -> Result<usize, String> {
    use base64::Engine as _;
    let resp = &answer["response"];
    if resp["allowed"] != true {
        return Err(format!("not allowed: {}", resp["status"]));
    }
    let Some(patch) = resp["patch"].as_str() else {
        return Ok(0);
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(patch)
        .map_err(|e| format!("patch is not base64: {e}"))?;
    let ops: Vec<Value> =
        serde_json::from_slice(&bytes).map_err(|e| format!("patch is not JSON: {e}"))?;
    Ok(ops.iter().filter(|o| o["op"] == "replace").count())
}

/// The digests a /mutate answer writes (`…@sha256:…` values of its `replace` operations).
pub fn pinned_digests(answer: &Value) -> Vec<String> {
    use base64::Engine as _;
    let Some(patch) = answer["response"]["patch"].as_str() else {
        return Vec::new();
    };
    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(patch) else {
        return Vec::new();
    };
    let ops: Vec<Value> = serde_json::from_slice(&bytes).unwrap_or_default();
    ops.iter()
        .filter(|o| o["op"] == "replace")
        .filter_map(|o| {
            o["value"]
                .as_str()?
                .split_once('@')
                .map(|(_, d)| d.to_owned())
        })
        .collect()
}
