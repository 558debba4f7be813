# syntax=docker/dockerfile:1
# pinhook's image: one statically linked binary and the CA certificates, nothing else.
#   docker build -t pinhook:0.1.0 .
# The build stage runs scripts/build-static.sh, the same script `make static` runs in CI.

ARG RUST_VERSION=1.95.0

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY scripts/build-static.sh ./scripts/
# The cache mounts keep the crate registry and compiled dependencies between builds; the
# binary is copied out of the cached target directory before the mount goes away.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    bin="$(scripts/build-static.sh)" && \
    mkdir -p /out && cp "$bin" /out/pinhook

FROM scratch
# Root certificates for registries served over public TLS (read by rustls-platform-verifier).
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/pinhook /pinhook
# A numeric non-root user (no /etc/passwd in the image); nothing is ever written to the root
# filesystem, so it runs with readOnlyRootFilesystem: true.
USER 65532:65532
EXPOSE 8443 8080
ENTRYPOINT ["/pinhook"]
CMD ["serve"]
