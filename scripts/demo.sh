#!/usr/bin/env bash
# A local demo of pinhook on its built-in policy: a throw-away CA and certificate, the webhook on
# 127.0.0.1, a real registry with an image pushed by skopeo, sample AdmissionReviews sent with
# curl over HTTP/2 (denied, allowed, pinned), the audit lines, a live policy edit, and
# `pinhook check` on manifests. Needs only what `make demo` builds and installs.
set -euo pipefail
cd "$(dirname "$0")/.."

PORT="${PINHOOK_DEMO_PORT:-18443}"
OPS_PORT="${PINHOOK_DEMO_OPS_PORT:-18080}"
BIN="${PINHOOK_BIN:-target/debug/pinhook}"
DEMO=.demo
FIXTURES=tests/fixtures
rm -rf "$DEMO" && mkdir -p "$DEMO"

bold() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

bold "1. A throw-away CA and serving certificate for localhost"
"$BIN" cert --out-dir "$DEMO/certs" --name localhost --name 127.0.0.1

REG_PORT="${PINHOOK_DEMO_REGISTRY_PORT:-15005}"
REG="127.0.0.1:$REG_PORT"
bold "2. A real registry (Debian's docker-registry) on $REG, and an image pushed with skopeo"
mkdir -p "$DEMO/registry"
cat > "$DEMO/registry.yml" <<YAML
version: 0.1
storage: {filesystem: {rootdirectory: $PWD/$DEMO/registry}, delete: {enabled: true}}
http: {addr: $REG}
log: {level: error, accesslog: {disabled: true}}
YAML
docker-registry serve "$DEMO/registry.yml" > "$DEMO/registry.log" 2>&1 &
REG_PID=$!
for _ in $(seq 100); do curl -fsS "http://$REG/v2/" >/dev/null 2>&1 && break; sleep 0.05; done
# A one-layer OCI image layout, built by hand (no Docker engine needed).
oci_layout() {
  local dir=$1 text=$2 tmp
  tmp=$(mktemp -d)
  mkdir -p "$dir/blobs/sha256" "$tmp/rootfs"
  echo "$text" > "$tmp/rootfs/hello.txt"
  tar --mtime=@0 --owner=0 --group=0 -C "$tmp/rootfs" -cf "$tmp/layer.tar" hello.txt
  gzip -n "$tmp/layer.tar"
  local layer diff config manifest
  layer=$(sha256sum "$tmp/layer.tar.gz" | cut -d' ' -f1)
  diff=$(gunzip -c "$tmp/layer.tar.gz" | sha256sum | cut -d' ' -f1)
  cp "$tmp/layer.tar.gz" "$dir/blobs/sha256/$layer"
  printf '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"config":{}}' "$diff" > "$tmp/config.json"
  config=$(sha256sum "$tmp/config.json" | cut -d' ' -f1)
  cp "$tmp/config.json" "$dir/blobs/sha256/$config"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%d}]}' \
    "$config" "$(stat -c%s "$tmp/config.json")" "$layer" "$(stat -c%s "$tmp/layer.tar.gz")" > "$tmp/manifest.json"
  manifest=$(sha256sum "$tmp/manifest.json" | cut -d' ' -f1)
  cp "$tmp/manifest.json" "$dir/blobs/sha256/$manifest"
  printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%d,"annotations":{"org.opencontainers.image.ref.name":"demo"}}]}' \
    "$manifest" "$(stat -c%s "$tmp/manifest.json")" > "$dir/index.json"
  echo '{"imageLayoutVersion":"1.0.0"}' > "$dir/oci-layout"
  rm -rf "$tmp"
}
oci_layout "$DEMO/layout" "pinhook demo image"
echo "\$ skopeo copy oci:$DEMO/layout:demo docker://$REG/shop/web:1.4.2"
skopeo copy -q "oci:$DEMO/layout:demo" "docker://$REG/shop/web:1.4.2" --dest-tls-verify=false
SKOPEO_DIGEST=$(skopeo inspect --tls-verify=false --format '{{.Digest}}' "docker://$REG/shop/web:1.4.2")
echo "skopeo inspect says $REG/shop/web:1.4.2 is $SKOPEO_DIGEST"

bold "3. pinhook serve on https://127.0.0.1:$PORT (built-in policy, plus: the demo registry speaks plain HTTP)"
printf '# Everything else is the built-in default.\nregistries:\n  - host: "%s"\n    insecure: true\n' "$REG" > "$DEMO/policy.yaml"
cat "$DEMO/policy.yaml"
"$BIN" serve --listen "127.0.0.1:$PORT" --metrics-listen "127.0.0.1:$OPS_PORT" \
  --tls-cert "$DEMO/certs/tls.crt" --tls-key "$DEMO/certs/tls.key" \
  --policy "$DEMO/policy.yaml" --reload-interval 200ms > "$DEMO/pinhook.log" 2>&1 &
PID=$!
trap 'kill $PID $REG_PID 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$OPS_PORT/readyz" >/dev/null 2>&1 && break
  sleep 0.05
done
curl -fsS "http://127.0.0.1:$OPS_PORT/readyz"

# Sends an AdmissionReview file over HTTP/2 and prints the verdict.
review() {
  local file=$1
  echo
  echo "\$ curl --http2 --cacert $DEMO/certs/ca.crt --data-binary @$file https://localhost:$PORT/validate?timeout=10s"
  curl -sS --http2 --cacert "$DEMO/certs/ca.crt" -H 'Content-Type: application/json' \
    --data-binary "@$file" -o "$DEMO/response.json" -w 'HTTP/%{http_version} %{http_code}\n' \
    "https://localhost:$PORT/validate?timeout=10s"
  python3 - "$DEMO/response.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["response"]
print("allowed:", str(r["allowed"]).lower())
if not r["allowed"]:
    print("status.code:", r["status"]["code"])
    print("status.message:\n  " + r["status"]["message"].replace("\n", "\n  "))
for w in r.get("warnings", []):
    print("warning:", w)
if r.get("auditAnnotations"):
    print("auditAnnotations:", json.dumps(r["auditAnnotations"], sort_keys=True))
PY
}

bold "4. A pod using nginx:latest -> denied, naming the container, the image and the fix"
review "$FIXTURES/pod_mutable_latest_tag.json"

bold "5. A pod pinned by digest -> allowed"
review "$FIXTURES/pod_pinned_by_digest.json"

bold "6. A Deployment with two mutable tags out of three containers -> both listed"
review "$FIXTURES/deployment_mutable_tags.json"

bold "7. /mutate: a Deployment using $REG/shop/web:1.4.2 is pinned to the registry's digest"
python3 - "$FIXTURES/deployment_version_tags.json" "$REG/shop/web:1.4.2" > "$DEMO/deployment.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
spec = r["request"]["object"]["spec"]["template"]["spec"]
spec["containers"] = [{"name": "web", "image": sys.argv[2]}]
print(json.dumps(r))
PY
mutate() {
  curl -sS --http2 --cacert "$DEMO/certs/ca.crt" -H 'Content-Type: application/json' \
    --data-binary "@$1" "https://localhost:$PORT/mutate?timeout=10s"
}
echo "\$ curl --http2 ... --data-binary @$DEMO/deployment.json https://localhost:$PORT/mutate?timeout=10s"
mutate "$DEMO/deployment.json" > "$DEMO/mutate.json"
python3 - "$DEMO/mutate.json" "$DEMO/deployment.json" "$SKOPEO_DIGEST" <<'PY'
import base64, json, sys
r = json.load(open(sys.argv[1]))["response"]
ops = json.loads(base64.b64decode(r["patch"]))
print("allowed:", str(r["allowed"]).lower(), "| patchType:", r["patchType"])
print("patch (base64-decoded):")
for op in ops:
    print("  ", json.dumps(op))
for w in r.get("warnings", []):
    print("warning:", w)
print("auditAnnotations:", json.dumps(r["auditAnnotations"], ensure_ascii=False))
pinned = [op["value"] for op in ops if op["op"] == "replace"]
ok = all(p.endswith("@" + sys.argv[3]) for p in pinned)
print("digest equals skopeo's:", "yes" if ok else "NO")
# Apply the patch and send the result again: a pinned object gets no patch.
req = json.load(open(sys.argv[2]))
for op in ops:
    if op["op"] == "replace":
        parts = op["path"].strip("/").split("/")
        node = req["request"]["object"]
        for p in parts[:-1]:
            node = node[int(p)] if isinstance(node, list) else node[p]
        node[parts[-1]] = op["value"]
json.dump(req, open(sys.argv[2] + ".pinned", "w"))
PY
echo "The patched Deployment, sent again:"
mutate "$DEMO/deployment.json.pinned"; echo "   (no patch: idempotent)"

bold "8. A tag that does not exist -> a clear denial"
sed "s|shop/web:1.4.2|shop/web:9.9.9|" "$DEMO/deployment.json" > "$DEMO/missing.json"
mutate "$DEMO/missing.json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["response"]["status"]["message"])'

bold "9. Bad input -> 400 with a one-line JSON error"
curl -sS --http2 --cacert "$DEMO/certs/ca.crt" --data-binary '{"not": "a review"' -w '  (HTTP %{http_code})\n' \
  "https://localhost:$PORT/validate"

bold "10. Edit the policy while it runs: mode: warn"
printf 'mode: warn\nregistries:\n  - host: "%s"\n    insecure: true\n' "$REG" > "$DEMO/policy.yaml.new" && mv "$DEMO/policy.yaml.new" "$DEMO/policy.yaml"
for _ in $(seq 50); do grep -q '"policy reloaded"' "$DEMO/pinhook.log" && break; sleep 0.1; done
grep '"policy reloaded"' "$DEMO/pinhook.log"
review "$FIXTURES/deployment_mutable_tags.json"

bold "11. The audit trail: one JSON line per request with findings (stdout)"
grep '"event":"admission\.' "$DEMO/pinhook.log" | python3 -c '
import json, sys
for line in sys.stdin:
    print(json.dumps(json.loads(line), indent=None))'

bold "12. Metrics on http://127.0.0.1:$OPS_PORT/metrics"
curl -sS "http://127.0.0.1:$OPS_PORT/metrics" | grep -E '^pinhook_(admission_requests_total|violations_total|policy_reloads_total|pinned_images_total|cache_lookups_total|registry_requests_total)'

bold "13. The same policy offline: pinhook check examples/manifests.yaml"
echo "\$ pinhook check examples/manifests.yaml"
set +e
"$BIN" check examples/manifests.yaml
echo "exit status: $? (1 = something would be denied)"
set -e

bold "14. SIGTERM: drain and exit"
kill -TERM $PID
wait $PID && echo "pinhook exited with status 0"
kill $REG_PID 2>/dev/null || true
trap - EXIT
echo
echo "Full server log: $DEMO/pinhook.log"
