# zeptod image: build with cargo, run on Debian slim as a non-root user.
#   docker build -t zeptodb/zeptod:0.1.0 .
#   docker run --rm -p 8123:8123 -v zepto-data:/data zeptodb/zeptod:0.1.0
# Builder and runtime use the same Debian release, so the binary's glibc matches.
# Over a binary built outside Docker (glibc of Debian bookworm or older), from a context dir
# holding only target/release/zeptod (the repository's .dockerignore leaves target/ out):
#   mkdir -p /tmp/ctx/target/release
#   strip --strip-debug -o /tmp/ctx/target/release/zeptod target/release/zeptod
# (the release profile keeps debug line tables for profiling: ~320 MB with, ~60 MB without).
#   docker build --target runtime-prebuilt -f Dockerfile -t zeptodb/zeptod:dev /tmp/ctx
# deploy/image-build-check.sh builds that stage offline with buildah.
# The HEALTHCHECK probes port 8123: change it too if you move --http-addr.

# The dependency tree needs rustc >= 1.88 (tonic 0.14); CI uses 1.95.
ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS builder
WORKDIR /src
# Without the release profile's debug line tables (kept for profiling, most of the binary).
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    CARGO_PROFILE_RELEASE_DEBUG=0 cargo build --release -p zeptod --locked \
    && install -D -m 0755 target/release/zeptod /out/zeptod

FROM debian:${DEBIAN_RELEASE}-slim AS runtime-base
LABEL org.opencontainers.image.title="zeptod" \
      org.opencontainers.image.description="zeptodb time-series database server" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed uid/gid, the one the Helm chart's securityContext uses (10001).
RUN groupadd --system --gid 10001 zepto \
    && useradd --system --uid 10001 --gid zepto --home-dir /data --no-create-home \
       --shell /usr/sbin/nologin zepto \
    && mkdir -p /data \
    && chown zepto:zepto /data
ENV ZEPTO_DATA_DIR=/data \
    ZEPTO_HTTP_ADDR=0.0.0.0:8123
VOLUME ["/data"]
EXPOSE 8123 8124
USER 10001:10001
WORKDIR /data
# The slim base has no curl or wget; bash's /dev/tcp speaks enough HTTP/1.0 for a probe, so
# the image needs no extra package. Healthy = GET /health answers 200.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8123 && printf 'GET /health HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && read -r _ code _ <&3 && [ \"$code\" = 200 ]"]
ENTRYPOINT ["/usr/local/bin/zeptod"]
CMD ["--data-dir", "/data"]

# Over a prebuilt binary from the build context.
FROM runtime-base AS runtime-prebuilt
ARG ZEPTOD_BIN=target/release/zeptod
COPY --chown=root:root --chmod=0755 ${ZEPTOD_BIN} /usr/local/bin/zeptod

# The default (last) stage: the binary from the builder stage.
FROM runtime-base AS runtime
COPY --from=builder --chown=root:root /out/zeptod /usr/local/bin/zeptod
