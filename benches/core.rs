//! Criterion micro-benchmarks of pinhook's pure core, so a regression shows up at the function
//! that caused it: image reference parsing, policy evaluation, deciding a whole review, and
//! building the /mutate answer (plan, JSON Patch, serialized AdmissionReview).
//!
//! `cargo bench --bench core` (or `make bench-core`); under `cargo test` each runs once.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionReview};
use pinhook::admission::{self, Endpoint};
use pinhook::answer::Answer;
use pinhook::pin::PinResult;
use pinhook::policy::Policy;
use pinhook::reference::ImageRef;
use pinhook::server;

const DIGEST: &str = "sha256:7b3ccabffc97de872a30dfd234fd972a66d247c8cfc69b0550f276481852627c";

/// The end-to-end benchmark's Deployment review (6.9 KB, three containers).
fn deployment_review() -> Vec<u8> {
    include_str!("e2e/deployment-review.json")
        .replace("REGISTRY", "registry.example.com:5000")
        .into_bytes()
}

fn request() -> AdmissionRequest<DynamicObject> {
    let review: AdmissionReview<DynamicObject> =
        serde_json::from_slice(&deployment_review()).expect("review");
    review.try_into().expect("request")
}

fn reference_parsing(c: &mut Criterion) {
    let mut g = c.benchmark_group("reference/parse");
    let digest_ref = format!("ghcr.io/acme/shop-web@{DIGEST}");
    for (name, image) in [
        ("short", "nginx"),
        ("tagged", "ghcr.io/acme/shop-web:1.4.2"),
        ("port", "registry.example.com:5000/bench/app:warm-0"),
        ("digest", digest_ref.as_str()),
        ("invalid", "Shop/API:1.0.0"),
    ] {
        g.bench_function(name, |b| b.iter(|| ImageRef::parse(black_box(image))));
        g.bench_function(format!("{name}/uncached"), |b| {
            b.iter(|| ImageRef::parse_uncached(black_box(image)))
        });
        // The baseline, in the same run: oci-spec's regex parser, which pinhook used before.
        g.bench_function(format!("{name}/oci-spec"), |b| {
            b.iter(|| oci_client::Reference::try_from(black_box(image)))
        });
    }
    g.finish();
}

fn policy_evaluation(c: &mut Criterion) {
    let builtin = Policy::default();
    let strict = Policy::from_yaml(
        r#"
mode: enforce
allowedRegistries: ["registry.example.com:5000", "ghcr.io/acme"]
allowedTags: ["v*", "1.*", "warm-*"]
partialVersions: deny
exemptImages: ["registry.example.com:5000/mirror/*"]
rules:
  - namespaces: ["dev-*"]
    mode: warn
"#,
        "bench",
    )
    .expect("policy");
    let mut g = c.benchmark_group("policy");
    let profile = builtin.profile_for("shop").expect("profile");
    g.bench_function("judge/builtin/accepted", |b| {
        b.iter(|| profile.judge(black_box("ghcr.io/acme/shop-web:1.4.2")))
    });
    g.bench_function("judge/builtin/mutable", |b| {
        b.iter(|| profile.judge(black_box("nginx:latest")))
    });
    let strict_profile = strict.profile_for("shop").expect("profile");
    g.bench_function("judge/strict/accepted", |b| {
        b.iter(|| strict_profile.judge(black_box("registry.example.com:5000/bench/app:warm-0")))
    });
    g.bench_function("profile_for/rule", |b| {
        b.iter(|| strict.profile_for(black_box("dev-42")))
    });
    let req = request();
    g.bench_function("review/deployment", |b| {
        b.iter(|| admission::review(&builtin, black_box(&req), Endpoint::Validate))
    });
    g.finish();
}

fn patch_building(c: &mut Criterion) {
    let policy = Policy::default();
    let req = request();
    let mut g = c.benchmark_group("pin");
    g.bench_function("plan/deployment", |b| {
        b.iter(|| admission::review(&policy, black_box(&req), Endpoint::Mutate))
    });
    let decision = admission::review(&policy, &req, Endpoint::Mutate);
    let results: Vec<PinResult> = decision
        .targets()
        .iter()
        .map(|_| PinResult::Pinned {
            digest: DIGEST.into(),
        })
        .collect();
    g.bench_function("patch/3-images", |b| {
        b.iter(|| Answer::new(black_box(&decision), &results).patch)
    });
    g.bench_function("answer/mutate-3-images", |b| {
        b.iter(|| {
            let answer = Answer::new(black_box(&decision), &results);
            server::review_json(&req.uid, &answer)
        })
    });
    let validated = admission::review(&policy, &req, Endpoint::Validate);
    g.bench_function("answer/validate", |b| {
        b.iter(|| server::review_json(&req.uid, &Answer::new(black_box(&validated), &[])))
    });
    g.finish();
}

fn parsing(c: &mut Criterion) {
    let body = deployment_review();
    c.bench_function("review/parse-6.9KB", |b| {
        b.iter(|| serde_json::from_slice::<AdmissionReview<DynamicObject>>(black_box(&body)))
    });
}

criterion_group!(
    benches,
    reference_parsing,
    policy_evaluation,
    patch_building,
    parsing
);
criterion_main!(benches);
