#!/usr/bin/env bash
# The walfmt decoding benchmark (BENCHMARKS.md): criterion, then walfmt vs pg_waldump on the
# same 16 MiB segment in the same run. PITR_BENCH_PG=N picks the major (default: newest).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-test-deps.sh
cargo bench --bench walfmt_decode
