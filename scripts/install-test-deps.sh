#!/usr/bin/env bash
# Installs what the tests and the demo need on a fresh Debian machine (idempotent).
set -euo pipefail

need_apt=()
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)

if ((${#need_apt[@]})); then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "installing: ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# HTTP/2 over TLS is what the API server speaks; the demo and tests use curl's --http2.
curl --version | grep -q HTTP2 || { echo "curl lacks HTTP/2 support" >&2; exit 1; }
