#!/usr/bin/env bash
# The whole test suite on a fresh machine, in this order:
#   1. installs what the tests need (scripts/install-test-deps.sh: PostgreSQL 15-18, moto,
#      promtool, kubernetes-validate, docker.io, debootstrap, docker-compose);
#   2. checks the operator files (scripts/check-ops-files.sh);
#   3. starts the private Docker engine (scripts/docker-engine.sh start; stopped on exit only
#      if this run started it), exports its DOCKER_HOST, builds pitr-base:bookworm
#      (scripts/docker-base-image.sh) and the test images pitr-test/postgres:15-18 and
#      pitr-test/moto:latest (scripts/docker-test-images.sh; cached by an inputs label): the
#      integration tests that run containers (--verify-image, testcontainers) need them
#      before `cargo test`; TESTCONTAINERS_RYUK_DISABLED=true (no reaper image to pull);
#   4. every test of every crate against real servers of all four majors (cargo test), with
#      the `kms` feature (the KMS tests run against moto);
#   5. the image users run (tests/container.sh), then docker-compose.test.yml for real
#      (tests/compose.sh).
# Without Docker, step 3 prints a loud SKIPPED and the container tests skip loudly too; with
# CI=true any of that fails the run.
#   PITR_TEST_PG=15,17  narrows the majors (locally; CI=true with no narrowing requires all four)
#   PITR_KEEP_TEST_CLUSTERS=1  keeps test clusters' directories for debugging
set -euo pipefail
cd "$(dirname "$0")/.."
T0=$SECONDS
phase() { printf '[test.sh] %4ss %s\n' "$((SECONDS - T0))" "$*" >&2; }
no_docker() {
    if [ "${CI:-}" = true ]; then echo "[test.sh] FAIL: $* (CI=true: the container tests must run)" >&2; exit 1; fi
    echo "[test.sh] ******** SKIPPED: $* (the container tests will skip) ********" >&2
}

phase "install-test-deps.sh"
./scripts/install-test-deps.sh
# The alert rules (promtool) and the Kubernetes manifest (kubernetes-validate): seconds.
phase "check-ops-files.sh"
./scripts/check-ops-files.sh

# The engine and the images, before cargo test: the Rust container tests (tests/docker.rs) use
# DOCKER_HOST and pitr-test/postgres:N. About 100 s for all images on a fresh data root with the
# base tarball cached (pitr-test/moto: ~2 min alone from scratch), under a second when cached.
phase "Docker engine and images"
ENGINE_STARTED=""
stop_engine() { if [ -n "$ENGINE_STARTED" ]; then ./scripts/docker-engine.sh stop >/dev/null 2>&1 || true; fi; }
trap stop_engine EXIT
if ! ./scripts/docker-engine.sh status >/dev/null 2>&1; then ENGINE_STARTED=1; fi
if ENV_LINE=$(./scripts/docker-engine.sh start); then
    export "$ENV_LINE"
    if ! ./scripts/docker-base-image.sh >/dev/null; then
        no_docker "pitr-base:bookworm could not be built"
    elif ! ./scripts/docker-test-images.sh; then
        no_docker "scripts/docker-test-images.sh failed"
    fi
else
    ENGINE_STARTED=""
    no_docker "the Docker engine did not start"
fi
# testcontainers' reaper (Ryuk) is an image from a registry: none is reachable. Every test
# removes its own containers.
export TESTCONTAINERS_RYUK_DISABLED=true

# Without narrowing, every major must be present (testkit fails the run if one is missing).
if [ -z "${PITR_TEST_PG:-}" ]; then export PITR_TEST_PG=15,16,17,18; fi
phase "cargo test"
cargo test --workspace --locked --features pitr/kms
# The image users run (tests/container.sh) and the compose file (tests/compose.sh): after cargo
# test, which has built the debug pitr they put in the `runtime-host` image (no extra compile),
# and so that a container failure never hides the unit and integration results. About 25 s and
# 50 s. Without Docker they print SKIPPED; with CI=true they fail.
phase "tests/container.sh"
./tests/container.sh
phase "tests/compose.sh"
./tests/compose.sh
phase "done"
