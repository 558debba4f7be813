//! Any JSON object as the Pod or Deployment of a `/mutate` review: the patch pinhook answers with
//! applies to that object, and afterwards every image it changed is pinned by digest.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pinhook::reference::ImageRef;
use serde_json::{Value, json};

fn images(kind: &str, object: &Value) -> Vec<Option<String>> {
    let spec = if kind == "Pod" {
        object.pointer("/spec")
    } else {
        object.pointer("/spec/template/spec")
    };
    let mut out = Vec::new();
    for list in ["containers", "initContainers", "ephemeralContainers"] {
        if let Some(items) = spec.and_then(|s| s.get(list)).and_then(Value::as_array) {
            out.extend(
                items
                    .iter()
                    .map(|c| c.get("image").and_then(Value::as_str).map(str::to_owned)),
            );
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let Ok(object) = serde_json::from_slice::<Value>(body) else {
        return;
    };
    let (group, kind, resource) = if selector % 2 == 0 {
        ("", "Pod", "pods")
    } else {
        ("apps", "Deployment", "deployments")
    };
    let version = "v1";
    let review = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "00000000-0000-4000-8000-000000000000",
            "kind": {"group": group, "version": version, "kind": kind},
            "resource": {"group": group, "version": version, "resource": resource},
            "namespace": "shop",
            "operation": "CREATE",
            "userInfo": {"username": "fuzz"},
            "object": object,
        }
    });
    let (status, answer) = pinhook_fuzz::send("/mutate", serde_json::to_vec(&review).unwrap());
    let Some(patched) = pinhook_fuzz::check_answer(status, &answer, Some(&object)) else {
        return;
    };
    let before = images(kind, &object);
    let after = images(kind, &patched);
    assert_eq!(
        before.len(),
        after.len(),
        "the patch adds or removes containers"
    );
    for (was, now) in before.iter().zip(&after) {
        if was != now {
            let now = now.as_deref().expect("a patched image is a string");
            let pinned = ImageRef::parse_uncached(now).expect("a patched image parses");
            assert!(pinned.is_pinned(), "{was:?} became {now:?}, not pinned");
        }
    }
});
