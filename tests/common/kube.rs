//! A fake Kubernetes API server that answers exactly the calls pinhook may make, in the real
//! wire format (objects, `Status` errors with the API server's reasons and messages):
//!
//! - pull credentials: GET of one named Secret or ServiceAccount;
//! - certificate bootstrap: POST (create) and PUT (update, `resourceVersion` checked, `409
//!   Conflict` when stale) of a Secret; GET and PATCH (strategic merge patch, webhooks merged by
//!   `name`, `metadata.resourceVersion` as a precondition) of an `admissionregistration.k8s.io/v1`
//!   Mutating- or ValidatingWebhookConfiguration;
//! - `/version`, `/api`.
//!
//! Everything else (LIST, WATCH, other resources and verbs) is answered 403 Forbidden. With
//! [`FakeKube::authorize`], every resource request is first checked against RBAC rules (e.g. the
//! chart's rendered Role and ClusterRole) the way the API server's RBAC authorizer does, and
//! refused with 403 when no rule allows it. Every request is recorded, with its answer.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

use super::registry::{Background, serve_router};

/// The two webhook configuration resources of `admissionregistration.k8s.io/v1`.
pub const WEBHOOK_RESOURCES: [&str; 2] = [
    "mutatingwebhookconfigurations",
    "validatingwebhookconfigurations",
];

#[derive(Default)]
struct KubeState {
    /// (namespace, name) → Secret object.
    secrets: BTreeMap<(String, String), Value>,
    /// (namespace, name) → ServiceAccount object.
    service_accounts: BTreeMap<(String, String), Value>,
    /// (resource, name) → webhook configuration object.
    webhook_configurations: BTreeMap<(String, String), Value>,
    /// `METHOD PATH[?QUERY]`, every request.
    requests: Vec<String>,
    /// Every request with the status code it got.
    answered: Vec<(String, u16)>,
    /// The subset answered 403.
    forbidden: Vec<String>,
    /// Request attributes of every resource request the authorizer allowed.
    authorized: Vec<Attributes>,
    /// resourceVersion counter.
    version: u64,
    /// When set, resource requests must be allowed by these rules.
    rbac: Option<Rbac>,
    /// The next `n` GETs of a Secret wait at this barrier until all `n` have arrived.
    secret_read_barrier: Option<(Arc<tokio::sync::Barrier>, usize)>,
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
        self.add_secret(ns, name, type_, &BTreeMap::from([(key.to_owned(), value)]));
    }

    /// Adds (or replaces) a Secret of `type` with `data`.
    pub fn add_secret(&self, ns: &str, name: &str, type_: &str, data: &BTreeMap<String, Vec<u8>>) {
        let mut st = self.state.lock().unwrap();
        let metadata = metadata(&mut st, ns, name);
        let data: BTreeMap<&String, String> =
            data.iter().map(|(k, v)| (k, B64.encode(v))).collect();
        let secret = json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": metadata,
            "type": type_,
            "data": data,
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

    /// The Secret `ns/name` as stored, if any.
    pub fn secret(&self, ns: &str, name: &str) -> Option<Value> {
        self.state
            .lock()
            .unwrap()
            .secrets
            .get(&(ns.into(), name.into()))
            .cloned()
    }

    /// The decoded `data` of the Secret `ns/name` (empty when absent).
    pub fn secret_data(&self, ns: &str, name: &str) -> BTreeMap<String, Vec<u8>> {
        let Some(secret) = self.secret(ns, name) else {
            return BTreeMap::new();
        };
        secret["data"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), B64.decode(v.as_str().unwrap()).unwrap()))
            .collect()
    }

    /// Adds (or replaces) a Mutating- or ValidatingWebhookConfiguration, e.g. one from the
    /// rendered chart; server-set metadata (uid, resourceVersion) is added.
    pub fn add_webhook_configuration(&self, obj: &Value) {
        let resource = format!("{}s", obj["kind"].as_str().unwrap().to_ascii_lowercase());
        assert!(WEBHOOK_RESOURCES.contains(&resource.as_str()), "{resource}");
        let name = obj["metadata"]["name"].as_str().unwrap().to_owned();
        let mut st = self.state.lock().unwrap();
        let mut obj = obj.clone();
        let meta = metadata(&mut st, "", &name);
        let m = obj["metadata"].as_object_mut().unwrap();
        for key in ["uid", "resourceVersion", "creationTimestamp"] {
            m.insert(key.into(), meta[key].clone());
        }
        st.webhook_configurations.insert((resource, name), obj);
    }

    /// A webhook configuration as stored (`resource` is e.g. `validatingwebhookconfigurations`).
    pub fn webhook_configuration(&self, resource: &str, name: &str) -> Option<Value> {
        self.state
            .lock()
            .unwrap()
            .webhook_configurations
            .get(&(resource.into(), name.into()))
            .cloned()
    }

    /// Edits a stored webhook configuration in place (as `kubectl replace` would) and gives it a
    /// new resourceVersion.
    pub fn edit_webhook_configuration(
        &self,
        resource: &str,
        name: &str,
        edit: impl FnOnce(&mut Value),
    ) {
        let mut st = self.state.lock().unwrap();
        st.version += 1;
        let version = st.version.to_string();
        let obj = st
            .webhook_configurations
            .get_mut(&(resource.into(), name.into()))
            .expect("no such webhook configuration");
        edit(obj);
        obj["metadata"]["resourceVersion"] = json!(version);
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

    /// From now on, resource requests must be allowed by `rbac` (403 Forbidden otherwise).
    pub fn authorize(&self, rbac: Rbac) {
        self.state.lock().unwrap().rbac = Some(rbac);
    }

    /// The next `n` GETs of any Secret are held until all `n` have arrived, so `n` clients
    /// racing to create the same Secret all see it missing.
    pub fn hold_secret_reads(&self, n: usize) {
        self.state.lock().unwrap().secret_read_barrier =
            Some((Arc::new(tokio::sync::Barrier::new(n)), n));
    }

    /// Every request so far, as `METHOD PATH` or `METHOD PATH?QUERY`.
    pub fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Every request so far with the status code it was answered with.
    pub fn answered(&self) -> Vec<(String, u16)> {
        self.state.lock().unwrap().answered.clone()
    }

    /// The requests answered 403 (LIST, WATCH, anything not served, anything RBAC refused).
    pub fn forbidden(&self) -> Vec<String> {
        self.state.lock().unwrap().forbidden.clone()
    }

    /// The attributes of every resource request the authorizer allowed (with [`Self::authorize`]).
    pub fn authorized(&self) -> Vec<Attributes> {
        self.state.lock().unwrap().authorized.clone()
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

/// What the RBAC authorizer looks at in a resource request.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Attributes {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`.
    pub verb: String,
    /// API group, `""` for core.
    pub group: String,
    /// Resource, with `/subresource` when there is one.
    pub resource: String,
    /// Namespace of a namespaced request.
    pub namespace: Option<String>,
    /// Object name (none for create and collection requests).
    pub name: Option<String>,
}

/// One RBAC rule with where it applies.
#[derive(Debug, Clone)]
pub struct Grant {
    /// Namespace of a Role (via RoleBinding); `None` for a ClusterRole via ClusterRoleBinding.
    pub namespace: Option<String>,
    /// The Role or ClusterRole it comes from (`Kind/name`).
    pub role: String,
    /// `apiGroups`.
    pub api_groups: Vec<String>,
    /// `resources`.
    pub resources: Vec<String>,
    /// `verbs`.
    pub verbs: Vec<String>,
    /// `resourceNames` (empty: any).
    pub resource_names: Vec<String>,
}

/// The RBAC permissions of one service account.
#[derive(Debug, Clone, Default)]
pub struct Rbac {
    /// Every rule the account is bound to.
    pub grants: Vec<Grant>,
}

impl Rbac {
    /// The rules that `system:serviceaccount:NS:NAME` gets from the ClusterRoles, Roles and
    /// their bindings in a multi-document YAML stream (e.g. the rendered chart).
    pub fn from_manifests(yaml: &str, sa_namespace: &str, sa_name: &str) -> Self {
        use serde::Deserialize as _;
        let docs: Vec<Value> = serde_yaml_ng::Deserializer::from_str(yaml)
            .map(|d| Value::deserialize(d).unwrap())
            .filter(|d| !d.is_null())
            .collect();
        let find = |kind: &str, name: &str, ns: Option<&str>| {
            docs.iter()
                .find(|d| {
                    d["kind"] == kind
                        && d["metadata"]["name"] == name
                        && ns.is_none_or(|ns| d["metadata"]["namespace"] == ns)
                })
                .cloned()
        };
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .into_iter()
                .flatten()
                .map(|s| s.as_str().unwrap().to_owned())
                .collect()
        };
        let mut grants = Vec::new();
        for binding in docs
            .iter()
            .filter(|d| d["kind"] == "ClusterRoleBinding" || d["kind"] == "RoleBinding")
        {
            let bound = binding["subjects"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|s| {
                    s["kind"] == "ServiceAccount"
                        && s["name"] == sa_name
                        && s["namespace"] == sa_namespace
                });
            if !bound {
                continue;
            }
            let binding_ns = binding["metadata"]["namespace"].as_str();
            let role_kind = binding["roleRef"]["kind"].as_str().unwrap();
            let role_name = binding["roleRef"]["name"].as_str().unwrap();
            let role = match role_kind {
                "ClusterRole" => find("ClusterRole", role_name, None),
                _ => find("Role", role_name, binding_ns),
            }
            .unwrap_or_else(|| panic!("{role_kind} {role_name} bound but not defined"));
            // A ClusterRole bound by a RoleBinding applies in the binding's namespace only.
            let namespace = if binding["kind"] == "RoleBinding" {
                Some(binding_ns.unwrap().to_owned())
            } else {
                None
            };
            for rule in role["rules"].as_array().into_iter().flatten() {
                grants.push(Grant {
                    namespace: namespace.clone(),
                    role: format!("{role_kind}/{role_name}"),
                    api_groups: strings(&rule["apiGroups"]),
                    resources: strings(&rule["resources"]),
                    verbs: strings(&rule["verbs"]),
                    resource_names: strings(&rule["resourceNames"]),
                });
            }
        }
        Self { grants }
    }

    /// The grants that allow `a`.
    pub fn allowing(&self, a: &Attributes) -> Vec<&Grant> {
        let has = |list: &[String], v: &str| list.iter().any(|x| x == "*" || x == v);
        self.grants
            .iter()
            .filter(|g| g.namespace.is_none() || g.namespace.as_deref() == a.namespace.as_deref())
            .filter(|g| has(&g.api_groups, &a.group))
            .filter(|g| has(&g.resources, &a.resource))
            .filter(|g| has(&g.verbs, &a.verb))
            // A rule with resourceNames never matches a request without a name (create, list).
            .filter(|g| {
                g.resource_names.is_empty()
                    || a.name
                        .as_ref()
                        .is_some_and(|n| g.resource_names.contains(n))
            })
            .collect()
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
    let mut m = json!({
        "name": name,
        "uid": format!("00000000-0000-4000-8000-{:012x}", st.version),
        "resourceVersion": st.version.to_string(),
        "creationTimestamp": "2024-01-01T00:00:00Z",
    });
    if !ns.is_empty() {
        m["namespace"] = json!(ns);
    }
    m
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

/// The API server's 409 for a stale resourceVersion.
fn conflict(resource_ref: &str, name: &str, kind: &str, group: &str) -> Response {
    let mut details = json!({"name": name, "kind": kind});
    if !group.is_empty() {
        details["group"] = json!(group);
    }
    status(
        StatusCode::CONFLICT,
        "Conflict",
        format!(
            "Operation cannot be fulfilled on {resource_ref} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
        ),
        details,
    )
}

fn invalid(kind: &str, name: &str, field: &str, detail: &str) -> Response {
    status(
        StatusCode::UNPROCESSABLE_ENTITY,
        "Invalid",
        format!("{kind} \"{name}\" is invalid: {field}: {detail}"),
        json!({"name": name, "kind": kind, "causes": [{"reason": "FieldValueInvalid", "message": detail, "field": field}]}),
    )
}

fn not_found(resource: &str, name: &str) -> Response {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("{resource} \"{name}\" not found"),
        json!({"name": name, "kind": resource}),
    )
}

fn ok(code: StatusCode, obj: &Value) -> Response {
    (code, axum::Json(obj.clone())).into_response()
}

/// Parsed request path: API group, namespace, resource, name.
struct Target<'a> {
    group: &'a str,
    namespace: Option<&'a str>,
    resource: &'a str,
    name: Option<&'a str>,
    subresource: Option<&'a str>,
}

fn target<'a>(segments: &[&'a str]) -> Option<Target<'a>> {
    let (group, rest) = match segments {
        ["api", "v1", rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(*ns), rest),
        _ => (None, rest),
    };
    match rest {
        [resource] => Some(Target {
            group,
            namespace,
            resource,
            name: None,
            subresource: None,
        }),
        [resource, name] => Some(Target {
            group,
            namespace,
            resource,
            name: Some(name),
            subresource: None,
        }),
        [resource, name, sub] => Some(Target {
            group,
            namespace,
            resource,
            name: Some(name),
            subresource: Some(sub),
        }),
        _ => None,
    }
}

async fn handle(
    State(state): State<Arc<Mutex<KubeState>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let query = uri.query().unwrap_or("");
    let line = if query.is_empty() {
        format!("{method} {path}")
    } else {
        format!("{method} {path}?{query}")
    };
    let response = answer(&state, &method, &path, query, &headers, &body).await;
    let mut st = state.lock().unwrap();
    st.requests.push(line.clone());
    st.answered.push((line.clone(), response.status().as_u16()));
    if response.status() == StatusCode::FORBIDDEN {
        st.forbidden.push(line);
    }
    response
}

async fn answer(
    state: &Arc<Mutex<KubeState>>,
    method: &Method,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response {
    let watch = query
        .split('&')
        .any(|p| p == "watch" || p.starts_with("watch="));
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let t = target(&segments);

    // The authorizer, as the API server runs it before anything else. Discovery paths are
    // allowed to every authenticated user (system:discovery).
    if let Some(t) = &t {
        let attrs = Attributes {
            verb: verb(method, watch, t.name.is_none()).into(),
            group: t.group.into(),
            resource: match t.subresource {
                Some(sub) => format!("{}/{sub}", t.resource),
                None => t.resource.into(),
            },
            namespace: t.namespace.map(Into::into),
            name: t.name.map(Into::into),
        };
        let mut st = state.lock().unwrap();
        if let Some(rbac) = &st.rbac {
            if rbac.allowing(&attrs).is_empty() {
                return forbidden(&attrs);
            }
            st.authorized.push(attrs);
        }
    }

    match (method.clone(), &segments[..], &t) {
        (Method::GET, ["version"], _) if !watch => axum::Json(json!({
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
        .into_response(),
        (Method::GET, ["api"], _) if !watch => axum::Json(json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [],
        }))
        .into_response(),
        (
            Method::GET,
            _,
            Some(Target {
                group: "",
                namespace: Some(ns),
                resource: kind @ ("secrets" | "serviceaccounts"),
                name: Some(name),
                subresource: None,
            }),
        ) if !watch => {
            if *kind == "secrets" {
                let barrier = {
                    let mut st = state.lock().unwrap();
                    match st.secret_read_barrier.take() {
                        Some((b, n)) => {
                            if n > 1 {
                                st.secret_read_barrier = Some((b.clone(), n - 1));
                            }
                            Some(b)
                        }
                        None => None,
                    }
                };
                if let Some(b) = barrier {
                    b.wait().await;
                }
            }
            let st = state.lock().unwrap();
            let key = (ns.to_string(), name.to_string());
            let found = if *kind == "secrets" {
                st.secrets.get(&key)
            } else {
                st.service_accounts.get(&key)
            };
            match found {
                Some(obj) => ok(StatusCode::OK, obj),
                None => not_found(kind, name),
            }
        }
        (
            Method::POST,
            _,
            Some(Target {
                group: "",
                namespace: Some(ns),
                resource: "secrets",
                name: None,
                ..
            }),
        ) => create_secret(state, ns, body),
        (
            Method::PUT,
            _,
            Some(Target {
                group: "",
                namespace: Some(ns),
                resource: "secrets",
                name: Some(name),
                subresource: None,
            }),
        ) => update_secret(state, ns, name, body),
        (
            Method::GET,
            _,
            Some(Target {
                group: "admissionregistration.k8s.io",
                namespace: None,
                resource,
                name: Some(name),
                subresource: None,
            }),
        ) if !watch && WEBHOOK_RESOURCES.contains(resource) => {
            let st = state.lock().unwrap();
            match st
                .webhook_configurations
                .get(&(resource.to_string(), name.to_string()))
            {
                Some(obj) => ok(StatusCode::OK, obj),
                None => not_found(&format!("{resource}.admissionregistration.k8s.io"), name),
            }
        }
        (
            Method::PATCH,
            _,
            Some(Target {
                group: "admissionregistration.k8s.io",
                namespace: None,
                resource,
                name: Some(name),
                subresource: None,
            }),
        ) if WEBHOOK_RESOURCES.contains(resource) => {
            patch_webhook(state, resource, name, headers, body)
        }
        _ => {
            let attrs = match &t {
                Some(t) => Attributes {
                    verb: verb(method, watch, t.name.is_none()).into(),
                    group: t.group.into(),
                    resource: t.resource.into(),
                    namespace: t.namespace.map(Into::into),
                    name: t.name.map(Into::into),
                },
                None => Attributes {
                    verb: verb(method, watch, false).into(),
                    group: String::new(),
                    resource: path.into(),
                    namespace: None,
                    name: None,
                },
            };
            forbidden(&attrs)
        }
    }
}

/// The RBAC authorizer's 403, worded as the API server words it.
fn forbidden(a: &Attributes) -> Response {
    let scope = match &a.namespace {
        Some(ns) => format!(" in the namespace \"{ns}\""),
        None => " at the cluster scope".into(),
    };
    let what = match &a.name {
        Some(n) => format!("{} \"{n}\"", a.resource),
        None => a.resource.clone(),
    };
    status(
        StatusCode::FORBIDDEN,
        "Forbidden",
        format!(
            "{what} is forbidden: User \"system:serviceaccount:pinhook:pinhook\" cannot {} resource \"{}\" in API group \"{}\"{scope}",
            a.verb, a.resource, a.group
        ),
        json!({"name": a.name.clone().unwrap_or_default(), "kind": a.resource}),
    )
}

/// Checks a Secret's `type` and `data` the way the API server's validation does.
fn validate_secret(secret: &Value, name: &str) -> Result<(), Box<Response>> {
    let data = secret["data"].as_object();
    for (k, v) in data.into_iter().flatten() {
        if v.as_str().is_none_or(|s| B64.decode(s).is_err()) {
            return Err(Box::new(status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!(
                    "Secret in version \"v1\" cannot be handled as a Secret: illegal base64 data at data[{k}]"
                ),
                json!({}),
            )));
        }
    }
    if secret["type"] == "kubernetes.io/tls" {
        for key in ["tls.crt", "tls.key"] {
            if data.is_none_or(|d| !d.contains_key(key)) {
                return Err(Box::new(invalid(
                    "Secret",
                    name,
                    &format!("data[{key}]"),
                    "Required value",
                )));
            }
        }
    }
    Ok(())
}

fn create_secret(state: &Arc<Mutex<KubeState>>, ns: &str, body: &Bytes) -> Response {
    let Ok(mut secret) = serde_json::from_slice::<Value>(body) else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the body is not a JSON object".into(),
            json!({}),
        );
    };
    let Some(name) = secret["metadata"]["name"].as_str().map(str::to_owned) else {
        return invalid(
            "Secret",
            "",
            "metadata.name",
            "Required value: name or generateName is required",
        );
    };
    if secret["metadata"]["namespace"]
        .as_str()
        .is_some_and(|n| n != ns)
    {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the namespace of the provided object does not match the namespace sent on the request"
                .into(),
            json!({}),
        );
    }
    if let Err(r) = validate_secret(&secret, &name) {
        return *r;
    }
    let mut st = state.lock().unwrap();
    if st.secrets.contains_key(&(ns.into(), name.clone())) {
        return status(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("secrets \"{name}\" already exists"),
            json!({"name": name, "kind": "secrets"}),
        );
    }
    let meta = metadata(&mut st, ns, &name);
    let m = secret["metadata"].as_object_mut().unwrap();
    for (k, v) in meta.as_object().unwrap() {
        m.insert(k.clone(), v.clone());
    }
    if secret["type"].is_null() {
        secret["type"] = json!("Opaque");
    }
    secret["apiVersion"] = json!("v1");
    secret["kind"] = json!("Secret");
    st.secrets.insert((ns.into(), name), secret.clone());
    ok(StatusCode::CREATED, &secret)
}

fn update_secret(state: &Arc<Mutex<KubeState>>, ns: &str, name: &str, body: &Bytes) -> Response {
    let Ok(mut secret) = serde_json::from_slice::<Value>(body) else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the body is not a JSON object".into(),
            json!({}),
        );
    };
    if secret["metadata"]["name"] != name {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the name of the object does not match the name on the URL".into(),
            json!({}),
        );
    }
    if let Err(r) = validate_secret(&secret, name) {
        return *r;
    }
    let mut st = state.lock().unwrap();
    let Some(current) = st.secrets.get(&(ns.into(), name.into())).cloned() else {
        return not_found("secrets", name);
    };
    if let Some(rv) = secret["metadata"]["resourceVersion"].as_str()
        && current["metadata"]["resourceVersion"] != rv
    {
        return conflict("secrets", name, "secrets", "");
    }
    if secret["type"].is_null() {
        secret["type"] = current["type"].clone();
    }
    if secret["type"] != current["type"] {
        return invalid("Secret", name, "type", "Invalid value: field is immutable");
    }
    st.version += 1;
    let m = secret["metadata"].as_object_mut().unwrap();
    m.insert("resourceVersion".into(), json!(st.version.to_string()));
    for key in ["uid", "creationTimestamp", "namespace"] {
        m.insert(key.into(), current["metadata"][key].clone());
    }
    st.secrets.insert((ns.into(), name.into()), secret.clone());
    ok(StatusCode::OK, &secret)
}

/// Strategic merge patch of a webhook configuration: maps merge, `null` deletes, `webhooks`
/// merge by `name` (its patchMergeKey), other lists are replaced.
fn patch_webhook(
    state: &Arc<Mutex<KubeState>>,
    resource: &str,
    name: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if content_type != "application/strategic-merge-patch+json" {
        return status(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (this fake: strategic merge only; got {content_type:?})"
            ),
            json!({}),
        );
    }
    let Ok(patch) = serde_json::from_slice::<Value>(body) else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the patch is not JSON".into(),
            json!({}),
        );
    };
    let kind = if resource.starts_with("mutating") {
        "MutatingWebhookConfiguration"
    } else {
        "ValidatingWebhookConfiguration"
    };
    let mut st = state.lock().unwrap();
    let key = (resource.to_owned(), name.to_owned());
    let Some(current) = st.webhook_configurations.get(&key).cloned() else {
        return not_found(&format!("{resource}.admissionregistration.k8s.io"), name);
    };
    if let Some(rv) = patch["metadata"]["resourceVersion"].as_str()
        && current["metadata"]["resourceVersion"] != rv
    {
        return conflict(
            &format!("{resource}.admissionregistration.k8s.io"),
            name,
            resource,
            "admissionregistration.k8s.io",
        );
    }
    let mut merged = current.clone();
    strategic_merge(&mut merged, &patch, true);
    for (i, w) in merged["webhooks"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        for field in [
            "name",
            "clientConfig",
            "sideEffects",
            "admissionReviewVersions",
        ] {
            if w.get(field).is_none() {
                return invalid(
                    kind,
                    name,
                    &format!("webhooks[{i}].{field}"),
                    "Required value",
                );
            }
        }
        if let Some(b) = w["clientConfig"]["caBundle"].as_str()
            && B64.decode(b).is_err()
        {
            return status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("webhooks[{i}].clientConfig.caBundle: illegal base64 data"),
                json!({}),
            );
        }
    }
    st.version += 1;
    merged["metadata"]["resourceVersion"] = json!(st.version.to_string());
    st.webhook_configurations.insert(key, merged.clone());
    ok(StatusCode::OK, &merged)
}

fn strategic_merge(target: &mut Value, patch: &Value, top: bool) {
    let (Some(t), Some(p)) = (target.as_object_mut(), patch.as_object()) else {
        *target = patch.clone();
        return;
    };
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else if top && k == "webhooks" && v.is_array() {
            let list = t.entry(k.clone()).or_insert_with(|| json!([]));
            for item in v.as_array().unwrap() {
                let existing = list
                    .as_array_mut()
                    .unwrap()
                    .iter_mut()
                    .find(|w| w["name"] == item["name"]);
                match existing {
                    Some(w) => strategic_merge(w, item, false),
                    None => list.as_array_mut().unwrap().push(item.clone()),
                }
            }
        } else if v.is_object() && t.get(k).is_some_and(Value::is_object) {
            strategic_merge(t.get_mut(k).unwrap(), v, false);
        } else {
            t.insert(k.clone(), v.clone());
        }
    }
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
