#!/usr/bin/env python3
"""Runs the Dockerfile's final image without a Docker engine: its root filesystem, assembled from
the final stage's own instructions, in a chroot, as the image's numeric user.

    image_smoke.py BINARY

BINARY is what scripts/build-static.sh built (the file the build stage copies to /out/pinhook).
The script reads the Dockerfile's last stage (FROM, COPY --from=build, USER, ENTRYPOINT, CMD),
refuses anything it cannot reproduce, builds target/image-rootfs/ with exactly those files
(owned by root, so the image user cannot write anywhere: a read-only root filesystem in effect),
adds what the kubelet would mount (/etc/hosts, the serving certificate), and checks that:

- the binary runs with no shared library present (`--version`);
- `pinhook serve` starts as the image user, answers /readyz, denies nginx:latest on /validate
  over HTTPS, and exits 0 on SIGTERM;
- host names resolve through /etc/hosts (static glibc's built-in `files` module);
- TLS to a registry is verified against /etc/ssl/certs/ca-certificates.crt, the path the
  Dockerfile copies the CA bundle to (an unknown CA is refused; the same CA added there works).

Needs root (chroot) and curl.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROOTFS = ROOT / "target" / "image-rootfs"
# Where each `COPY --from=build SRC` of the final stage comes from on this machine.
BUILD_STAGE_FILES = {"/etc/ssl/certs/ca-certificates.crt": Path("/etc/ssl/certs/ca-certificates.crt")}
REGISTRY_NAME = "registry.smoke.test"


def fail(message: str) -> None:
    print(f"image-smoke: FAILED: {message}", file=sys.stderr)
    sys.exit(1)


def final_stage(dockerfile: Path) -> list[tuple[str, str]]:
    """The instructions after the last FROM, line continuations joined, comments dropped."""
    lines, current = [], ""
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        current += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            lines.append(current.strip())
            current = ""
    stage: list[tuple[str, str]] = []
    for line in lines:
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            stage = []
        stage.append((word.upper(), rest.strip()))
    return stage


def assemble(binary: Path) -> dict:
    stage = final_stage(ROOT / "Dockerfile")
    image = {"user": None, "entrypoint": None, "cmd": [], "files": []}
    if os.path.exists(ROOTFS):
        shutil.rmtree(ROOTFS)
    ROOTFS.mkdir(parents=True)
    for word, rest in stage:
        if word == "FROM":
            if rest.split()[0] != "scratch":
                fail(f"the final stage is FROM {rest}; this check reproduces only FROM scratch")
        elif word == "COPY":
            args = shlex.split(rest)
            if not args[0].startswith("--from=build") or len(args) != 3:
                fail(f"cannot reproduce COPY {rest}")
            src, dst = args[1], args[2]
            origin = binary if src == "/out/pinhook" else BUILD_STAGE_FILES.get(src)
            if origin is None or not origin.exists():
                fail(f"COPY {src}: no such file from the build stage on this machine")
            target = ROOTFS / dst.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, target)
            image["files"].append(dst)
        elif word == "USER":
            image["user"] = rest
        elif word == "ENTRYPOINT":
            image["entrypoint"] = json.loads(rest)
        elif word == "CMD":
            image["cmd"] = json.loads(rest)
        elif word not in ("EXPOSE", "LABEL", "ARG", "ENV"):
            fail(f"cannot reproduce {word} {rest}")
    user = image["user"] or ""
    uid, _, gid = user.partition(":")
    if not (uid.isdigit() and gid.isdigit() and int(uid) != 0 and int(gid) != 0):
        fail(f"USER must be a numeric non-root uid:gid, got {user!r}")
    if image["entrypoint"] != ["/pinhook"]:
        fail(f"ENTRYPOINT must be [\"/pinhook\"], got {image['entrypoint']}")
    return image


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chroot(image: dict, args: list[str], **kw) -> subprocess.CompletedProcess:
    cmd = ["chroot", f"--userspec={image['user']}", str(ROOTFS), *image["entrypoint"], *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, **kw)


def main() -> None:
    if len(sys.argv) != 2:
        fail("usage: image_smoke.py BINARY")
    if os.geteuid() != 0:
        fail("needs root (chroot); CI runs as root")
    binary = Path(sys.argv[1]).resolve()
    image = assemble(binary)
    size = binary.stat().st_size
    print(f"image-smoke: rootfs {ROOTFS.relative_to(ROOT)} = {', '.join(image['files'])}; USER {image['user']}; binary {size} bytes")

    r = chroot(image, ["--version"])
    if r.returncode != 0 or not r.stdout.startswith("pinhook "):
        fail(f"--version in the image: status {r.returncode}, {r.stdout!r} {r.stderr!r}")
    print(f"image-smoke: {r.stdout.strip()} runs with no shared library present")

    # What the kubelet mounts into a pod: /etc/hosts and, here, the serving certificate.
    (ROOTFS / "etc" / "hosts").write_text(f"127.0.0.1 localhost {REGISTRY_NAME}\n")
    certs = ROOTFS / "run" / "certs"
    certs.mkdir(parents=True)
    subprocess.run([str(binary), "cert", "--out-dir", str(certs), "--name", "localhost", "--name", REGISTRY_NAME],
                   check=True, capture_output=True)
    port, ops = free_port(), free_port()
    serve = subprocess.Popen(
        ["chroot", f"--userspec={image['user']}", str(ROOTFS), *image["entrypoint"], *image["cmd"],
         "--listen", f"127.0.0.1:{port}", "--metrics-listen", f"127.0.0.1:{ops}",
         "--tls-cert", "/run/certs/tls.crt", "--tls-key", "/run/certs/tls.key"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            r = subprocess.run(["curl", "-fsS", f"http://127.0.0.1:{ops}/readyz"], capture_output=True, text=True)
            if r.returncode == 0:
                break
            if serve.poll() is not None or time.monotonic() > deadline:
                fail(f"serve did not become ready: {serve.stderr.read() if serve.poll() is not None else 'timeout'}")
            time.sleep(0.1)
        review = ROOT / "tests" / "fixtures" / "pod_mutable_latest_tag.json"
        r = subprocess.run(["curl", "-sS", "--http2", "--cacert", str(certs / "ca.crt"),
                            "-H", "Content-Type: application/json", "--data-binary", f"@{review}",
                            f"https://localhost:{port}/validate?timeout=10s"], capture_output=True, text=True)
        answer = json.loads(r.stdout or "{}").get("response", {})
        if answer.get("allowed") is not False:
            fail(f"/validate did not deny nginx:latest: {r.stdout!r} {r.stderr!r}")
        print(f"image-smoke: serve as {image['user']}: /readyz ready, nginx:latest denied over HTTPS")

        # Name lookup through /etc/hosts, then TLS verified against the image's CA bundle.
        policy = ROOTFS / "run" / "policy.yaml"
        policy.write_text("mode: enforce\n")
        ref = f"{REGISTRY_NAME}:{port}/smoke/app:1.0.0"
        r = chroot(image, ["resolve", "--policy", "/run/policy.yaml", ref])
        if r.returncode == 0 or "lookup" in r.stderr or "certificate" not in r.stderr.lower():
            fail(f"expected an unknown-issuer TLS error from the image's CA bundle, got: {r.stderr!r}")
        print(f"image-smoke: {REGISTRY_NAME} resolved via /etc/hosts; a CA not in the bundle is refused ({r.stderr.strip().splitlines()[-1][:160]})")
        bundle = ROOTFS / "etc" / "ssl" / "certs" / "ca-certificates.crt"
        original = bundle.read_bytes()
        bundle.write_bytes(original + (certs / "ca.crt").read_bytes())
        try:
            r = chroot(image, ["resolve", "--policy", "/run/policy.yaml", ref])
        finally:
            bundle.write_bytes(original)
        if r.returncode == 0 or "certificate" in r.stderr.lower() or "404" not in r.stderr and "not found" not in r.stderr:
            fail(f"with the CA in /etc/ssl/certs/ca-certificates.crt, expected TLS to pass and a 404: {r.stderr!r}")
        print(f"image-smoke: with that CA added to /etc/ssl/certs/ca-certificates.crt, TLS is verified ({r.stderr.strip().splitlines()[-1][:160]})")

        serve.send_signal(signal.SIGTERM)
        status = serve.wait(timeout=30)
        if status != 0:
            fail(f"serve exited with {status} on SIGTERM")
        print("image-smoke: SIGTERM -> exit 0")
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()
    print("image-smoke: passed")


if __name__ == "__main__":
    main()
