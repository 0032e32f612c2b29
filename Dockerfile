# syntax=docker/dockerfile:1
#
# The mtls-operator image: a release build of the single binary on a distroless runtime.
#
#   docker build -t ghcr.io/mtls-operator/mtls-operator:0.1.0 .
#
# Builder: the official Rust image on Debian 12 (bookworm), so the binary links against the same
# glibc (2.36) as the runtime image. Everything else is linked statically: the TLS stack is
# rustls, and its crypto provider (aws-lc-rs) compiles AWS-LC from source into the binary
# (AWS_LC_SYS_USE_SYSTEM=0 forbids picking up a system library), so the binary needs only
# libc and libgcc_s at run time.
#
# Runtime: gcr.io/distroless/cc-debian12:nonroot: glibc + libgcc + CA certificates, no shell,
# no package manager, user 65532. Nothing is fetched at run time: the operator only talks to the
# Kubernetes API, authenticated by its mounted ServiceAccount token and CA. (A musl build on
# `scratch` would also work, but musl's allocator is markedly slower for this async, allocation-
# heavy workload, and distroless already gives a non-root user and a CA store for free.)

ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src
ENV CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0 \
    AWS_LC_SYS_USE_SYSTEM=0
# Only what the binary is built from (see .dockerignore): tests and benches are not needed.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# The registry and target caches survive between builds (BuildKit cache mounts); the binary is
# copied out of the cache so that it lands in the layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin mtls-operator \
    && install -D -m 0755 target/release/mtls-operator /out/mtls-operator \
    && /out/mtls-operator --version

FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="mtls-operator" \
      org.opencontainers.image.description="Kubernetes operator for the whole mutual-TLS certificate lifecycle" \
      org.opencontainers.image.source="https://github.com/mtls-operator/mtls-operator" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=builder /out/mtls-operator /usr/local/bin/mtls-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/mtls-operator"]
CMD ["run"]
