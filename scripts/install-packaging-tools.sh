#!/usr/bin/env bash
# Installs the packaging tools (scripts/packaging-requirements.txt) into .tools/venv:
# Helm's renderer (helm-python-sdk), kubernetes-validate and hadolint. Idempotent: reinstalls
# only when the requirements file changes. Needs Python >= 3.10 (helm-python-sdk).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.tools/venv
req=scripts/packaging-requirements.txt
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$req" | cut -d' ' -f1)"
if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  exit 0
fi

python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' || {
  echo "install-packaging-tools: helm-python-sdk needs Python >= 3.10, found $(python3 --version)" >&2
  exit 1
}
if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
fi
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
# Each tool must run offline; fail here rather than in the middle of a check.
"$venv/bin/python" -c 'import helm_python, kubernetes_validate, yaml; print("helm", helm_python.helm_sdk_version())'
"$venv/bin/hadolint" --version
echo "$want" > "$stamp"
