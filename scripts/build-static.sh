#!/usr/bin/env bash
# Builds pinhook as one statically linked executable and checks that it is: the command the
# Dockerfile's build stage runs, and what `make static` runs, so CI exercises the same build.
#
# glibc, linked statically (`-C target-feature=+crt-static` on the host's *-linux-gnu target):
# the toolchain here has no musl target and none can be downloaded. glibc >= 2.34 carries the
# `files` and `dns` name-service modules in libc itself, so /etc/hosts and DNS lookups work
# without any shared library in the image (scripts/image_smoke.py checks this in a chroot).
# `--target` is given explicitly so the flag applies to pinhook, not to build scripts and
# proc-macros, which must stay dynamic.
#
# Prints the path of the binary on the last line of standard output.
set -euo pipefail
cd "$(dirname "$0")/.."

target="$(uname -m)-unknown-linux-gnu"
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
  cargo build --locked --release --target "$target" --bin pinhook >&2
bin="target/$target/release/pinhook"

# Static means: no program interpreter (ld-linux) and no shared-library dependencies.
if readelf -lW "$bin" | grep -q 'Requesting program interpreter'; then
  echo "build-static: $bin asks for a program interpreter: not static" >&2
  exit 1
fi
if readelf -dW "$bin" | grep -q '(NEEDED)'; then
  echo "build-static: $bin needs shared libraries:" >&2
  readelf -dW "$bin" | grep '(NEEDED)' >&2
  exit 1
fi
echo "build-static: $bin is static, $(stat -c %s "$bin") bytes" >&2
echo "$bin"
