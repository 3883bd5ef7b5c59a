# syntax=docker/dockerfile:1
# pitr: build with the pinned toolchain, run from a small Debian image as a non-root user.
#   docker build -t pitr .
#   docker run --rm pitr stream --help

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin pitr \
    && install -m 0755 target/release/pitr /usr/local/bin/pitr

FROM debian:bookworm-slim
# ca-certificates: TLS to S3 and to PostgreSQL (verify-ca/verify-full); tzdata: time zones.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates tzdata \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/pitr --create-home pitr
COPY --from=build /usr/local/bin/pitr /usr/local/bin/pitr
USER pitr
WORKDIR /var/lib/pitr
# Metrics and probes: /metrics, /healthz, /readyz.
ENV PITR_METRICS_LISTEN=0.0.0.0:9188
EXPOSE 9188
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/pitr"]
CMD ["stream"]
