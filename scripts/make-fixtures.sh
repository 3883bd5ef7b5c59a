#!/usr/bin/env bash
# Regenerates testdata/wal/ from real PostgreSQL 15-18 (see testdata/wal/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-test-deps.sh
CI=true cargo run -q -p testkit --bin make-fixtures -- testdata/wal
