#!/usr/bin/env bash
# A local demo of pinhook on its built-in policy: a throw-away CA and certificate, the webhook on
# 127.0.0.1, sample AdmissionReviews sent with curl over HTTP/2, the audit lines, a live policy
# edit, and `pinhook check` on manifests. Needs only what `make demo` builds and installs.
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

bold "2. pinhook serve on https://127.0.0.1:$PORT (built-in policy: the policy file starts empty)"
echo "# empty: the built-in policy applies" > "$DEMO/policy.yaml"
"$BIN" serve --listen "127.0.0.1:$PORT" --metrics-listen "127.0.0.1:$OPS_PORT" \
  --tls-cert "$DEMO/certs/tls.crt" --tls-key "$DEMO/certs/tls.key" \
  --policy "$DEMO/policy.yaml" --reload-interval 200ms > "$DEMO/pinhook.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
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

bold "3. A pod using nginx:latest -> denied, naming the container, the image and the fix"
review "$FIXTURES/pod_mutable_latest_tag.json"

bold "4. A pod pinned by digest -> allowed"
review "$FIXTURES/pod_pinned_by_digest.json"

bold "5. A Deployment with two mutable tags out of three containers -> both listed"
review "$FIXTURES/deployment_mutable_tags.json"

bold "6. Bad input -> 400 with a one-line JSON error"
curl -sS --http2 --cacert "$DEMO/certs/ca.crt" --data-binary '{"not": "a review"' -w '  (HTTP %{http_code})\n' \
  "https://localhost:$PORT/validate"

bold "7. Edit the policy while it runs: mode: warn"
printf 'mode: warn\n' > "$DEMO/policy.yaml"
for _ in $(seq 50); do grep -q '"policy reloaded"' "$DEMO/pinhook.log" && break; sleep 0.1; done
grep '"policy reloaded"' "$DEMO/pinhook.log"
review "$FIXTURES/deployment_mutable_tags.json"

bold "8. The audit trail: one JSON line per request with findings (stdout)"
grep '"event":"admission\.' "$DEMO/pinhook.log" | python3 -c '
import json, sys
for line in sys.stdin:
    print(json.dumps(json.loads(line), indent=None))'

bold "9. Metrics on http://127.0.0.1:$OPS_PORT/metrics"
curl -sS "http://127.0.0.1:$OPS_PORT/metrics" | grep -E '^pinhook_(admission_requests_total|violations_total|policy_reloads_total)'

bold "10. The same policy offline: pinhook check examples/manifests.yaml"
echo "\$ pinhook check examples/manifests.yaml"
set +e
"$BIN" check examples/manifests.yaml
echo "exit status: $? (1 = something would be denied)"
set -e

bold "11. SIGTERM: drain and exit"
kill -TERM $PID
wait $PID && echo "pinhook exited with status 0"
trap - EXIT
echo
echo "Full server log: $DEMO/pinhook.log"
