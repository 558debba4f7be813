//! The SSRF guard against the `pinhook serve` binary: registry hosts and redirect targets are
//! judged by the address they normalize to (the one dialled), redirects obey
//! `allowedRegistries`, and a failed redirect or token service reads the same whatever is
//! listening there. Addresses pinhook must never reach are TCP listeners on 127.0.0.1 that
//! count the connections they accept; nothing here contacts a non-loopback address.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::http::Uri;
use axum::response::Response;
use base64::Engine as _;
use common::registry::{Background, serve_router};
use common::{Http, Options, Pinhook, fixture};
use serde_json::{Value, json};

const DIGEST: &str = "sha256:5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03";

/// A Pod review in `ns` with one container running `image` (a fresh uid each time).
fn pod(image: &str) -> Value {
    static N: AtomicUsize = AtomicUsize::new(0);
    let mut review = fixture("pod_version_tags");
    let n = N.fetch_add(1, Ordering::Relaxed);
    review["request"]["uid"] = json!(format!("00000000-0000-4000-9000-{n:012}"));
    review["request"]["object"]["spec"]["containers"] = json!([{"name": "web", "image": image}]);
    review
}

/// `/mutate` over HTTP/2; returns the AdmissionReview's `response`.
async fn mutate(server: &Pinhook, review: &Value) -> Value {
    let resp = server
        .client(Http::V2)
        .post(server.url("/mutate?timeout=10s"))
        .json(review)
        .send()
        .await
        .expect("POST /mutate");
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    body["response"].clone()
}

/// The denial message, after checking the request was denied.
fn denial(resp: &Value) -> String {
    assert_eq!(resp["allowed"], false, "{resp}");
    resp["status"]["message"].as_str().unwrap().to_owned()
}

/// A TCP listener on 127.0.0.1 counting the connections it accepts; `hang` keeps each one open
/// without a word, otherwise it is closed at once.
struct Counting {
    port: u16,
    accepted: Arc<AtomicUsize>,
    _server: Background,
}

impl Counting {
    fn start(hang: bool) -> Self {
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let server = Background::spawn("counting-listener", move |listener| async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                if hang {
                    held.push(stream);
                }
            }
        });
        Self {
            port: server.addr.port(),
            accepted,
            _server: server,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// A registry front on 127.0.0.1: `respond(path)` answers every request.
fn front(respond: impl Fn(&str) -> Response + Send + Sync + 'static) -> Background {
    let respond = Arc::new(respond);
    serve_router(
        "registry-front",
        axum::Router::new().fallback(move |uri: Uri| {
            let respond = respond.clone();
            async move { respond(uri.path()) }
        }),
    )
}

fn reply(status: u16, headers: &[(&str, &str)]) -> Response {
    let mut b = Response::builder().status(status);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(axum::body::Body::empty()).unwrap()
}

/// `registries:` entries speaking plain HTTP for `hosts`, then `extra`.
fn policy(hosts: &[&str], extra: &str) -> String {
    let mut out = String::from("registries:\n");
    for h in hosts {
        out += &format!("  - host: \"{h}\"\n    insecure: true\n");
    }
    out + extra
}

/// `0:PORT` (as `0:443` in the issue) is 0.0.0.0, which reaches the local host on Linux: a
/// registry written as any spelling of it is refused by that address and never dialled. And a
/// pattern that matches only the spelling of a loopback address does not let it through.
#[tokio::test]
async fn numeric_registry_hosts_are_judged_by_the_address_dialled() {
    let target = Counting::start(false);
    let port = target.port;
    let spelled = ["2130706433", "0x7f000001"]
        .map(|h| format!("{h}:{port}"))
        .join("\", \"");
    let server = Pinhook::start_with(Options {
        policy: Some(format!(
            "rules:\n  - namespaces: [spelled]\n    allowedRegistries: [\"{spelled}\"]\n"
        )),
        ..Default::default()
    });
    for host in ["0", "0.0.0.0", "0x0", "00.0", "0.0.0"] {
        let msg = denial(&mutate(&server, &pod(&format!("{host}:{port}/app:1.0.0"))).await);
        assert!(
            msg.contains(&format!(
                "refusing to contact {host}:{port}: 0.0.0.0 is an address of this host (0.0.0.0/8)"
            )),
            "{host}: {msg}"
        );
    }
    // The profile of namespace `spelled` allows the spellings `2130706433:PORT` and
    // `0x7f000001:PORT`; the address they stand for, 127.0.0.1:PORT, is not in the list.
    for host in ["2130706433", "0x7f000001"] {
        let mut review = pod(&format!("{host}:{port}/app:1.0.0"));
        review["request"]["namespace"] = json!("spelled");
        review["request"]["object"]["metadata"]["namespace"] = json!("spelled");
        let msg = denial(&mutate(&server, &review).await);
        assert!(
            msg.contains(&format!(
                "refusing to contact {host}:{port}: not in allowedRegistries"
            )),
            "{host}: {msg}"
        );
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(target.accepted(), 0, "a refused address was dialled");
}

/// A registry answering `307` to a host outside `allowedRegistries` — in any spelling of its
/// address — is refused before that host is contacted; a redirect to an allowed host is
/// followed.
#[tokio::test]
async fn a_redirect_outside_allowed_registries_is_refused_before_connecting() {
    let outside = Counting::start(false);
    let port = outside.port;
    let inside = front(|_| reply(200, &[("docker-content-digest", DIGEST)]));
    let inside_host = inside.addr.to_string();
    let spellings = [
        "127.0.0.1",
        "2130706433",
        "0x7f000001",
        "0177.0.0.1",
        "127.1",
        "localhost",
    ];
    let target = inside_host.clone();
    let registry = front(move |path| {
        let location = match path.split('/').nth(2) {
            Some("inside") => format!("http://{target}/v2/app/manifests/1.0.0"),
            Some(n) => match n.parse::<usize>().ok().and_then(|i| spellings.get(i)) {
                Some(s) => format!("http://{s}:{port}/v2/app/manifests/1.0.0"),
                None => return reply(404, &[]),
            },
            None => return reply(404, &[]),
        };
        reply(307, &[("location", &location)])
    });
    let host = registry.addr.to_string();
    let server = Pinhook::start_with(Options {
        policy: Some(policy(
            &[&host, &inside_host],
            &format!("allowedRegistries: [\"{host}\", \"{inside_host}\"]\n"),
        )),
        ..Default::default()
    });

    for (i, spelling) in spellings.iter().enumerate() {
        let image = format!("{host}/{i}/app:1.0.0");
        let msg = denial(&mutate(&server, &pod(&image)).await);
        let shown = if *spelling == "localhost" {
            "localhost"
        } else {
            "127.0.0.1"
        };
        assert!(
            msg.contains(&format!(
                "refusing to contact {shown}:{port}: not in allowedRegistries"
            )),
            "{spelling}: {msg}"
        );
        assert!(msg.contains(&format!("\"{image}\"")), "{msg}");
        for leak in ["refused", "os error", "reset", "timed out"] {
            assert!(!msg.to_lowercase().contains(leak), "{spelling}: {msg}");
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        outside.accepted(),
        0,
        "a refused redirect target was dialled"
    );

    // The same registry redirecting to an allowed host: followed, and pinned to its answer.
    let image = format!("{host}/inside/app:1.0.0");
    let resp = mutate(&server, &pod(&image)).await;
    assert_eq!(resp["allowed"], true, "{resp}");
    let patch = base64::engine::general_purpose::STANDARD
        .decode(resp["patch"].as_str().expect("a patch"))
        .unwrap();
    let patch = String::from_utf8(patch).unwrap();
    assert!(patch.contains(&format!("{image}@{DIGEST}")), "{patch}");
}

/// A redirect target or token service that cannot be used gives one sentence naming the
/// registry, whether its port is closed, open and hanging up, or open and silent: the denial
/// does not tell which internal ports are open.
#[tokio::test]
async fn a_failed_redirect_or_realm_reads_the_same_whatever_is_listening() {
    let hangup = Counting::start(false);
    let silent = Counting::start(true);
    let closed = common::registry::free_port();
    let ports = [closed, hangup.port, silent.port];
    let registry = front(move |path| {
        let mut parts = path.split('/').skip(2);
        let (kind, i) = (
            parts.next(),
            parts.next().and_then(|i| i.parse::<usize>().ok()),
        );
        let Some(port) = i.and_then(|i| ports.get(i)) else {
            return reply(404, &[]);
        };
        match kind {
            Some("redirect") => reply(
                307,
                &[(
                    "location",
                    &format!("http://127.0.0.1:{port}/v2/x/manifests/1.0.0"),
                )],
            ),
            Some("realm") => reply(
                401,
                &[(
                    "www-authenticate",
                    &format!(r#"Bearer realm="http://127.0.0.1:{port}/token",service="s""#),
                )],
            ),
            _ => reply(404, &[]),
        }
    });
    let host = registry.addr.to_string();
    let server = Pinhook::start_with(Options {
        policy: Some(policy(&[&host], "")),
        args: vec!["--registry-timeout".into(), "1s".into()],
        ..Default::default()
    });
    for (kind, noun) in [("redirect", "redirect target"), ("realm", "token service")] {
        let mut messages = Vec::new();
        for i in 0..ports.len() {
            let image = format!("{host}/{kind}/{i}:1.0.0");
            let msg = denial(&mutate(&server, &pod(&image)).await);
            messages.push(msg.replace(&format!("/{kind}/{i}:"), "/N:"));
        }
        assert!(
            messages.iter().all(|m| *m == messages[0]),
            "{kind}: {messages:#?}"
        );
        assert!(
            messages[0].contains(&format!(
                "cannot connect to registry {host}: the {noun} it named could not be reached or may not be contacted (details in pinhook's debug log)"
            )),
            "{}",
            messages[0]
        );
        for port in ports {
            assert!(!messages[0].contains(&port.to_string()), "{}", messages[0]);
        }
    }
    // The redirects and realms were allowed (the registry is on 127.0.0.1): they were dialled.
    assert!(hangup.accepted() >= 2 && silent.accepted() >= 2);
}
