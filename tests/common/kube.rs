//! A fake Kubernetes API server that answers exactly the reads pinhook may make for pull
//! credentials: GET of one named Secret or ServiceAccount (real wire format, real 404
//! `Status`), plus `/version` and `/api`. Everything else (LIST, WATCH, other resources,
//! writes) is answered 403 Forbidden, and every request is recorded, so tests can assert that
//! pinhook never lists or watches.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

use super::registry::{Background, serve_router};

#[derive(Default)]
struct KubeState {
    /// (namespace, name) → Secret object.
    secrets: BTreeMap<(String, String), Value>,
    /// (namespace, name) → ServiceAccount object.
    service_accounts: BTreeMap<(String, String), Value>,
    /// `METHOD PATH[?QUERY]`, every request.
    requests: Vec<String>,
    /// The subset answered 403.
    forbidden: Vec<String>,
    /// resourceVersion counter.
    version: u64,
}

/// A fake API server on 127.0.0.1 (plain HTTP).
pub struct FakeKube {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<Mutex<KubeState>>,
    _server: Background,
}

impl FakeKube {
    /// Starts an empty API server.
    pub fn start() -> Self {
        let state = Arc::new(Mutex::new(KubeState::default()));
        let router = axum::Router::new()
            .fallback(handle)
            .with_state(state.clone());
        let server = serve_router("fake-kube", router);
        Self {
            addr: server.addr,
            state,
            _server: server,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Adds (or replaces) a `kubernetes.io/dockerconfigjson` Secret holding
    /// `{"auths": {HOST: {username, password, auth}}}`.
    pub fn add_dockerconfigjson_secret(
        &self,
        ns: &str,
        name: &str,
        registry_host: &str,
        user: &str,
        password: &str,
    ) {
        let config = json!({"auths": {registry_host: auth_entry(user, password)}});
        self.add_secret_raw(
            ns,
            name,
            "kubernetes.io/dockerconfigjson",
            ".dockerconfigjson",
            serde_json::to_vec(&config).unwrap(),
        );
    }

    /// Adds (or replaces) a legacy `kubernetes.io/dockercfg` Secret holding
    /// `{HOST: {username, password, auth}}` under `.dockercfg`.
    pub fn add_dockercfg_secret(&self, ns: &str, name: &str, host: &str, user: &str, pass: &str) {
        let config = json!({host: auth_entry(user, pass)});
        self.add_secret_raw(
            ns,
            name,
            "kubernetes.io/dockercfg",
            ".dockercfg",
            serde_json::to_vec(&config).unwrap(),
        );
    }

    /// Adds (or replaces) a Secret of `type` with one data `key` (base64-encoded on the wire).
    pub fn add_secret_raw(&self, ns: &str, name: &str, type_: &str, key: &str, value: Vec<u8>) {
        let mut st = self.state.lock().unwrap();
        let metadata = metadata(&mut st, ns, name);
        let secret = json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": metadata,
            "type": type_,
            "data": {key: B64.encode(value)},
        });
        st.secrets.insert((ns.into(), name.into()), secret);
    }

    /// Removes a Secret (later GETs: 404).
    pub fn remove_secret(&self, ns: &str, name: &str) {
        self.state
            .lock()
            .unwrap()
            .secrets
            .remove(&(ns.into(), name.into()));
    }

    /// Adds (or replaces) a ServiceAccount with `imagePullSecrets: [{name}…]`.
    pub fn add_service_account(&self, ns: &str, name: &str, pull_secret_names: &[&str]) {
        let mut st = self.state.lock().unwrap();
        let metadata = metadata(&mut st, ns, name);
        let pull: Vec<Value> = pull_secret_names
            .iter()
            .map(|n| json!({"name": n}))
            .collect();
        let sa = json!({
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": metadata,
            "imagePullSecrets": pull,
        });
        st.service_accounts.insert((ns.into(), name.into()), sa);
    }

    /// Every request so far, as `METHOD PATH` or `METHOD PATH?QUERY`.
    pub fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }

    /// The requests answered 403 (LIST, WATCH, anything not a named GET of a Secret or
    /// ServiceAccount, `/version` or `/api`).
    pub fn forbidden(&self) -> Vec<String> {
        self.state.lock().unwrap().forbidden.clone()
    }

    /// Requests for the Secret `ns/name`.
    pub fn secret_gets(&self, ns: &str, name: &str) -> usize {
        let path = format!("GET /api/v1/namespaces/{ns}/secrets/{name}");
        self.requests().iter().filter(|r| **r == path).count()
    }

    /// Writes `DIR/kubeconfig` (server `http://127.0.0.1:PORT`, a dummy token user, namespace
    /// `default`, current-context set) and returns its path, for `KUBECONFIG`.
    pub fn write_kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: fake\n  cluster:\n    server: {}\n\
             users:\n\
             - name: pinhook\n  user:\n    token: pinhook-test-token\n\
             contexts:\n\
             - name: fake\n  context:\n    cluster: fake\n    user: pinhook\n    namespace: default\n\
             current-context: fake\n\
             preferences: {{}}\n",
            self.url()
        );
        std::fs::write(&path, text).unwrap();
        path
    }
}

fn auth_entry(user: &str, password: &str) -> Value {
    json!({
        "username": user,
        "password": password,
        "auth": B64.encode(format!("{user}:{password}")),
    })
}

fn metadata(st: &mut KubeState, ns: &str, name: &str) -> Value {
    st.version += 1;
    json!({
        "name": name,
        "namespace": ns,
        "uid": format!("00000000-0000-4000-8000-{:012x}", st.version),
        "resourceVersion": st.version.to_string(),
        "creationTimestamp": "2024-01-01T00:00:00Z",
    })
}

fn status(code: StatusCode, reason: &str, message: String, details: Value) -> Response {
    let body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": details,
        "code": code.as_u16(),
    });
    (code, axum::Json(body)).into_response()
}

async fn handle(State(state): State<Arc<Mutex<KubeState>>>, method: Method, uri: Uri) -> Response {
    let path = uri.path().to_string();
    let query = uri.query().unwrap_or("");
    let line = if query.is_empty() {
        format!("{method} {path}")
    } else {
        format!("{method} {path}?{query}")
    };
    let mut st = state.lock().unwrap();
    st.requests.push(line.clone());
    let watch = query
        .split('&')
        .any(|p| p == "watch" || p.starts_with("watch="));
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    if method == Method::GET && !watch {
        match segments.as_slice() {
            ["version"] => {
                return axum::Json(json!({
                    "major": "1",
                    "minor": "32",
                    "gitVersion": "v1.32.0",
                    "gitCommit": "0000000000000000000000000000000000000000",
                    "gitTreeState": "clean",
                    "buildDate": "2024-12-11T00:00:00Z",
                    "goVersion": "go1.23.4",
                    "compiler": "gc",
                    "platform": "linux/amd64",
                }))
                .into_response();
            }
            ["api"] => {
                return axum::Json(json!({
                    "kind": "APIVersions",
                    "versions": ["v1"],
                    "serverAddressByClientCIDRs": [],
                }))
                .into_response();
            }
            [
                "api",
                "v1",
                "namespaces",
                ns,
                kind @ ("secrets" | "serviceaccounts"),
                name,
            ] => {
                let key = (ns.to_string(), name.to_string());
                let found = if *kind == "secrets" {
                    st.secrets.get(&key)
                } else {
                    st.service_accounts.get(&key)
                };
                return match found {
                    Some(obj) => axum::Json(obj.clone()).into_response(),
                    None => status(
                        StatusCode::NOT_FOUND,
                        "NotFound",
                        format!("{kind} \"{name}\" not found"),
                        json!({"name": name, "kind": kind}),
                    ),
                };
            }
            _ => {}
        }
    }
    st.forbidden.push(line);
    let (verb, resource, ns) = match segments.as_slice() {
        ["api", "v1", "namespaces", ns, resource, ..] => (
            verb(&method, watch, segments.len() == 5),
            *resource,
            Some(*ns),
        ),
        ["api", "v1", resource, ..] => (verb(&method, watch, segments.len() == 3), *resource, None),
        _ => (verb(&method, watch, false), path.as_str(), None),
    };
    let scope = match ns {
        Some(ns) => format!(" in the namespace \"{ns}\""),
        None => " at the cluster scope".into(),
    };
    status(
        StatusCode::FORBIDDEN,
        "Forbidden",
        format!(
            "{resource} is forbidden: User \"system:serviceaccount:pinhook:pinhook\" cannot {verb} resource \"{resource}\" in API group \"\"{scope}"
        ),
        json!({"kind": resource}),
    )
}

fn verb(method: &Method, watch: bool, collection: bool) -> &'static str {
    match *method {
        _ if watch => "watch",
        Method::GET if collection => "list",
        Method::GET => "get",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "access",
    }
}
