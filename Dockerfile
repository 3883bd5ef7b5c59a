# syntax=docker/dockerfile:1
# pitr: build with the pinned toolchain, run from a small Debian image as a non-root user.
#   docker build -t pitr .                      (users: BuildKit; the final stage is the default)
#   docker run --rm pitr stream --help
# Targets:
#   runtime       (default, last stage) the image users get: `runtime-base` + the binary built
#                 in the `build` stage.
#   runtime-host  the same runtime around a binary built on the host (CI: no Rust image can be
#                 pulled there). The binary must be at docker-context/pitr in the build context
#                 (see .dockerignore) and run on bookworm's glibc (2.36). tests/container.sh:
#                   docker build --target runtime-host --network host \
#                     --build-arg BASE=pitr-base:bookworm -t pitr:host .
# The runtime stages come first: the legacy builder (no BuildKit) builds every stage up to
# --target, so --target runtime-host never touches the Rust image or `RUN --mount`.
# Volumes: the image runs as uid 10001, gid 10001 (user and group `pitr`); a mounted local repo,
# spool or restore directory must be writable by that uid (chown 10001:10001 DIR).
ARG BASE=debian:bookworm-slim

FROM ${BASE} AS runtime-base
# ca-certificates: TLS to S3 and to PostgreSQL (verify-ca/verify-full); tzdata: time zones.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates tzdata \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 pitr \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/pitr --create-home pitr
USER 10001:10001
WORKDIR /var/lib/pitr
# Metrics and probes: /metrics, /livez, /healthz, /readyz.
ENV PITR_METRICS_LISTEN=0.0.0.0:9188
EXPOSE 9188
STOPSIGNAL SIGTERM
# No curl or wget in bookworm-slim; bash is Essential in Debian (so in every bookworm image) and
# its /dev/tcp opens the connection: one HTTP/1.0 GET of /healthz on the port of
# PITR_METRICS_LISTEN (on 127.0.0.1), healthy only on a 200 status line. A `pitr stream` started
# with --metrics-listen on another port, or "off", is reported unhealthy: set the variable instead.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${PITR_METRICS_LISTEN##*:} && printf 'GET /healthz HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && read -r _ code _ <&3 && [ \"$code\" = 200 ]"]
ENTRYPOINT ["/usr/local/bin/pitr"]
CMD ["stream"]

FROM runtime-base AS runtime-host
COPY docker-context/pitr /usr/local/bin/pitr

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --features kms --bin pitr \
    && install -s -m 0755 target/release/pitr /usr/local/bin/pitr

FROM runtime-base AS runtime
COPY --from=build /usr/local/bin/pitr /usr/local/bin/pitr
