//! `pinhook krm`: a KRM function (the kustomize and kpt function protocol,
//! <https://github.com/kubernetes-sigs/kustomize/blob/master/cmd/config/docs/api-conventions/functions-spec.md>):
//! a `ResourceList` on stdin, the same list on stdout with images pinned as `/mutate` would,
//! and a `results` entry per image pinned, denied or left unresolved. The policy is the
//! `functionConfig`'s `data.policy` (a ConfigMap), else the built-in one.

use std::io::{Read, Write};

use serde_json::{Value, json};

use crate::admission::View;
use crate::config::KrmArgs;
use crate::offline::{Offline, Problem};
use crate::policy::Policy;
use crate::workload;

/// Exit status: the list was pinned (or had nothing to pin).
pub const EXIT_CLEAN: i32 = 0;
/// Exit status: some image is denied or cannot be resolved (results say which).
pub const EXIT_PROBLEM: i32 = 1;
/// Exit status: the input is not a usable ResourceList.
pub const EXIT_UNREADABLE: i32 = 2;

/// Why a ResourceList cannot be processed.
#[derive(Debug, thiserror::Error)]
pub enum KrmError {
    /// stdin cannot be read.
    #[error("cannot read the ResourceList from stdin: {0}")]
    Read(std::io::Error),
    /// It is not YAML.
    #[error("the input is not a ResourceList: {0}")]
    Parse(serde_yaml_ng::Error),
    /// It is not a ResourceList.
    #[error("the input is a {0}, not a config.kubernetes.io/v1 ResourceList")]
    NotAResourceList(String),
    /// The functionConfig's policy is invalid.
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    /// The registry settings are unusable.
    #[error(transparent)]
    Offline(#[from] crate::offline::OfflineError),
    /// The result cannot be written.
    #[error("cannot write the ResourceList: {0}")]
    Write(String),
}

/// Runs the function on stdin and stdout; the exit status.
pub fn run(args: &KrmArgs) -> i32 {
    let mut input = String::new();
    let result = std::io::stdin()
        .read_to_string(&mut input)
        .map_err(KrmError::Read)
        .and_then(|_| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(KrmError::Read)?;
            runtime.block_on(process(&input, args))
        })
        .inspect(|(list, _)| {
            // Runners show a failing function's stderr, not the results it wrote.
            for r in list["results"].as_array().into_iter().flatten() {
                if r["severity"] == "error" {
                    eprintln!("pinhook krm: {}", r["message"].as_str().unwrap_or_default());
                }
            }
        })
        .and_then(|(list, failed)| {
            let text =
                serde_yaml_ng::to_string(&list).map_err(|e| KrmError::Write(e.to_string()))?;
            std::io::stdout()
                .write_all(text.as_bytes())
                .map_err(|e| KrmError::Write(e.to_string()))?;
            Ok(failed)
        });
    match result {
        Ok(true) => EXIT_PROBLEM,
        Ok(false) => EXIT_CLEAN,
        Err(e) => {
            eprintln!("pinhook krm: {e}");
            EXIT_UNREADABLE
        }
    }
}

/// The ResourceList with images pinned and results added; true when an image failed.
pub async fn process(input: &str, args: &KrmArgs) -> Result<(Value, bool), KrmError> {
    let mut list: Value = serde_yaml_ng::from_str(input).map_err(KrmError::Parse)?;
    let kind = list.get("kind").and_then(Value::as_str).unwrap_or("");
    if kind != "ResourceList" {
        return Err(KrmError::NotAResourceList(if kind.is_empty() {
            "document without a kind".into()
        } else {
            kind.to_owned()
        }));
    }
    let policy = match list
        .pointer("/functionConfig/data/policy")
        .and_then(Value::as_str)
    {
        Some(text) => Policy::from_yaml(text, "functionConfig data.policy")?,
        None => Policy::default(),
    };
    let offline = Offline::new(policy, &args.registry)?;
    let mut results = Vec::new();
    let mut failed = false;
    let items = list
        .get_mut("items")
        .and_then(Value::as_array_mut)
        .map(std::mem::take)
        .unwrap_or_default();
    let mut pinned_items = Vec::with_capacity(items.len());
    for mut item in items {
        let mut writes = Vec::new();
        for m in workload::manifests(&item) {
            let (object, view) = View::of_manifest(&m, &args.namespace);
            let pins = offline.pin(object, view, false).await;
            let reference = resource_ref(m.body);
            let mut report = |p: &Problem| {
                failed = true;
                results.push(json!({
                    "message": p.message,
                    "severity": "error",
                    "resourceRef": reference,
                    "field": {"path": format!("{}.image", p.path)},
                }));
            };
            pins.denied.iter().for_each(&mut report);
            pins.unresolved.iter().for_each(&mut report);
            for e in pins.edits {
                let mut pointer = m.pointer.clone();
                pointer.append(&e.pointer);
                results.push(json!({
                    "message": format!("{}: {} pinned to {}", e.site, e.from, e.to),
                    "severity": "info",
                    "resourceRef": reference,
                    "field": {"path": pointer.to_string(), "currentValue": e.from, "proposedValue": e.to},
                }));
                writes.push((pointer, e.to));
            }
        }
        for (pointer, to) in writes {
            if let Some(slot) = item.pointer_mut(pointer.as_str()) {
                *slot = Value::String(to);
            }
        }
        pinned_items.push(item);
    }
    list["items"] = Value::Array(pinned_items);
    if !results.is_empty() {
        match list.get_mut("results").and_then(Value::as_array_mut) {
            Some(existing) => existing.extend(results),
            None => list["results"] = Value::Array(results),
        }
    }
    Ok((list, failed))
}

/// The `resourceRef` of a result: apiVersion, kind, name and namespace of the object.
fn resource_ref(object: &Value) -> Value {
    let at = |p: &str| object.pointer(p).cloned().unwrap_or(Value::Null);
    let mut r = json!({
        "apiVersion": at("/apiVersion"),
        "kind": at("/kind"),
        "name": at("/metadata/name"),
    });
    if let Some(ns) = object.pointer("/metadata/namespace") {
        r["namespace"] = ns.clone();
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> KrmArgs {
        use clap::Parser;
        let _ = rustls::crypto::ring::default_provider().install_default();
        #[derive(Parser)]
        struct Wrap {
            #[command(flatten)]
            krm: KrmArgs,
        }
        Wrap::parse_from(["krm"]).krm
    }

    #[tokio::test]
    async fn a_denied_image_is_an_error_result_and_the_item_stays() {
        let input = r#"
apiVersion: config.kubernetes.io/v1
kind: ResourceList
items:
- apiVersion: v1
  kind: Pod
  metadata: {name: p, namespace: shop}
  spec:
    containers:
    - {name: web, image: "nginx:latest"}
    - {name: ok, image: "nginx@sha256:1111111111111111111111111111111111111111111111111111111111111111"}
"#;
        let (list, failed) = process(input, &args()).await.unwrap();
        assert!(failed);
        let r = &list["results"][0];
        assert_eq!(r["severity"], "error");
        assert_eq!(r["field"]["path"], "spec.containers[0].image");
        assert_eq!(r["resourceRef"]["name"], "p");
        assert!(
            r["message"]
                .as_str()
                .unwrap()
                .contains(r#"uses mutable tag "latest""#),
            "{r}"
        );
        assert_eq!(
            list["items"][0]["spec"]["containers"][0]["image"],
            "nginx:latest"
        );
    }

    #[tokio::test]
    async fn not_a_resource_list_is_refused() {
        let e = process("kind: Pod\n", &args()).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "the input is a Pod, not a config.kubernetes.io/v1 ResourceList"
        );
    }

    #[tokio::test]
    async fn the_function_config_carries_the_policy() {
        let input = r#"
apiVersion: config.kubernetes.io/v1
kind: ResourceList
functionConfig:
  apiVersion: v1
  kind: ConfigMap
  metadata: {name: pin}
  data:
    policy: "mode: warn\npin: false\n"
items:
- apiVersion: v1
  kind: Pod
  metadata: {name: p}
  spec: {containers: [{name: web, image: "nginx:latest"}]}
"#;
        let (list, failed) = process(input, &args()).await.unwrap();
        assert!(!failed, "{list}");
        assert!(list.get("results").is_none(), "{list}");
        let e = process(&input.replace("mode: warn", "mode: sometimes"), &args())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("functionConfig data.policy"), "{e}");
    }
}
