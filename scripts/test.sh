#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what the tests need (PostgreSQL 15-18,
# moto, promtool, kubernetes-validate), checks the operator files (scripts/check-ops-files.sh),
# then runs every test of every crate against real servers of all four majors, then the image
# users run in a private Docker engine (tests/container.sh).
#   PITR_TEST_PG=15,17  narrows the majors (locally; CI=true with no narrowing requires all four)
#   PITR_KEEP_TEST_CLUSTERS=1  keeps test clusters' directories for debugging
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-test-deps.sh
# The alert rules (promtool) and the Kubernetes manifest (kubernetes-validate): seconds.
./scripts/check-ops-files.sh
# Without narrowing, every major must be present (testkit fails the run if one is missing).
if [ -z "${PITR_TEST_PG:-}" ]; then export PITR_TEST_PG=15,16,17,18; fi
cargo test --workspace --locked
# The image users run (tests/container.sh): after cargo test, which has built the debug pitr it
# puts in the `runtime-host` image (no extra compile), and so that a container failure never
# hides the unit and integration results. About 25 s; a fresh machine adds ~90 s once to build
# the base image (debootstrap, cached under .cache/docker-base/). Without Docker it prints
# SKIPPED; with CI=true it fails.
./tests/container.sh
