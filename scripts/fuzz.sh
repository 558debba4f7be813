#!/usr/bin/env bash
# Coverage-guided fuzzing with libFuzzer (cargo-fuzz on the stable toolchain: --sanitizer none).
#   scripts/fuzz.sh [SECONDS] [TARGET...]
# Runs each target (default: all four in fuzz/Cargo.toml) for SECONDS (default 15), starting from
# a seed corpus built from tests/fixtures and kept in fuzz/corpus/ (not committed; it grows from
# run to run). Any crash fails the script; libFuzzer writes the input to fuzz/artifacts/TARGET/.
# `make test` runs 15 s per target; `make fuzz` runs 10 minutes per target.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-15}
shift || true
targets=("$@")
(( ${#targets[@]} > 0 )) || targets=(admission_review reference policy patch)

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz 0.13.2 (about a minute)"
  cargo install --locked cargo-fuzz --version 0.13.2 >/dev/null
fi

# Seeds: every fixture as it is, in each of the targets' shapes. The first byte of a review or
# patch input chooses the endpoint or kind (see fuzz/fuzz_targets/).
python3 - <<'PY'
import glob, hashlib, json, os
def put(target, data):
    d = f"fuzz/corpus/{target}"
    os.makedirs(d, exist_ok=True)
    with open(f"{d}/seed-{hashlib.sha1(data).hexdigest()}", "wb") as f:
        f.write(data)
for path in sorted(glob.glob("tests/fixtures/*.json")):
    raw = open(path, "rb").read()
    for selector in (b"\x00", b"\x01"):
        put("admission_review", selector + raw)
    obj = json.loads(raw).get("request", {}).get("object")
    if obj is not None:
        kind = b"\x00" if obj.get("kind") == "Pod" else b"\x01"
        put("patch", kind + json.dumps(obj).encode())
for line in open("tests/fixtures/reference/peer_inputs.txt", encoding="utf-8"):
    line = line.rstrip("\n")
    if line and not line.startswith("#"):
        put("reference", line.encode())
for path in sorted(glob.glob("tests/fixtures/policies/*.yaml")):
    put("policy", open(path, "rb").read())
PY

start=$(date +%s)
log=$(mktemp)
cargo fuzz build --sanitizer none >"$log" 2>&1 || { cat "$log" >&2; exit 1; }
rm -f "$log"
echo "fuzz: built the targets in $(( $(date +%s) - start )) s"

failed=0
for t in "${targets[@]}"; do
  log=$(mktemp)
  if cargo fuzz run --sanitizer none "$t" "fuzz/corpus/$t" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
      -print_final_stats=1 >"$log" 2>&1; then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1)
    corpus=$(find "fuzz/corpus/$t" -type f | wc -l)
    echo "fuzz: $t: ${runs:-?} executions in ${seconds} s, ${cov:-cov: ?}, corpus $corpus inputs, 0 crashes"
  else
    failed=1
    echo "fuzz: $t FAILED; the last lines of libFuzzer's output:" >&2
    tail -40 "$log" >&2
  fi
  rm -f "$log"
done
exit "$failed"
