#!/usr/bin/env bash
# Installs what the tests and the demo need on a fresh Debian machine (idempotent).
set -euo pipefail

need_apt=()
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
# A real registry (distribution 2.8), started by the tests with their own config files.
command -v docker-registry >/dev/null 2>&1 || need_apt+=(docker-registry)
# Pushes hand-built OCI layouts into it and reads digests independently of pinhook.
command -v skopeo >/dev/null 2>&1 || need_apt+=(skopeo)
# `htpasswd -nbB` makes the bcrypt entries of the Basic-auth registry.
command -v htpasswd >/dev/null 2>&1 || need_apt+=(apache2-utils)
command -v tar >/dev/null 2>&1 || need_apt+=(tar)
command -v gzip >/dev/null 2>&1 || need_apt+=(gzip)

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

if ((${#need_apt[@]})); then
  echo "installing: ${need_apt[*]}"
  # Keep package scripts from starting services (the system docker-registry on :5000):
  # a policy-rc.d that refuses every start, only for the duration of this install.
  policy_added=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod 755 /usr/sbin/policy-rc.d
    policy_added=1
  fi
  trap '[ -z "${policy_added}" ] || $SUDO rm -f /usr/sbin/policy-rc.d' EXIT
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# The tests never use the packaged service; make sure it is neither running nor enabled.
if [ -e /lib/systemd/system/docker-registry.service ] || [ -e /etc/init.d/docker-registry ]; then
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now docker-registry >/dev/null 2>&1 || true
  elif command -v service >/dev/null 2>&1; then
    $SUDO service docker-registry stop >/dev/null 2>&1 || true
  fi
fi
if command -v pgrep >/dev/null 2>&1; then
  for pid in $(pgrep -x docker-registry 2>/dev/null || true); do
    # Only the system instance (config under /etc); the tests' own ones use temp dirs.
    if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q '/etc/docker/registry'; then
      $SUDO kill "$pid" 2>/dev/null || true
    fi
  done
fi

# An independent RFC 6902 implementation: tests apply pinhook's JSON Patches with it.
if ! python3 -c 'import jsonpatch' >/dev/null 2>&1; then
  echo "installing: python jsonpatch"
  python3 -m pip install --quiet jsonpatch
fi

# HTTP/2 over TLS is what the API server speaks; the demo and tests use curl's --http2.
curl --version | grep -q HTTP2 || { echo "curl lacks HTTP/2 support" >&2; exit 1; }
docker-registry --version >/dev/null
skopeo --version >/dev/null
