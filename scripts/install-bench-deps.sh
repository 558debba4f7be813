#!/usr/bin/env bash
# Installs what `make bench` needs besides the test dependencies (idempotent):
# - h2load (Debian's nghttp2-client): a second HTTP/2 load generator, to cross-check the
#   throughput ratios measured with examples/loadgen.rs;
# - valgrind: callgrind counts instructions per request, exactly, however busy the machine is;
# - taskset (util-linux): servers and load generators on separate CPUs.
set -euo pipefail

need_apt=()
command -v h2load >/dev/null 2>&1 || need_apt+=(nghttp2-client)
command -v valgrind >/dev/null 2>&1 || need_apt+=(valgrind)
command -v taskset >/dev/null 2>&1 || need_apt+=(util-linux)

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

if ((${#need_apt[@]})); then
  echo "installing: ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
h2load --version >/dev/null
valgrind --version >/dev/null
