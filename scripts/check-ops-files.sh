#!/usr/bin/env bash
# Checks the operator-facing files that no Rust test reads, in a few seconds and offline:
#   - docs/prometheus-alerts.yml: `promtool check rules`, then the unit tests
#     tests/alerts/pitr-alerts.test.yml (`promtool test rules`: every alert fires and stays
#     silent where it should; each alert needs one case of each);
#   - docs/kubernetes-sidecar.yaml: `kubernetes-validate --strict` against the Kubernetes
#     schemas of the versions below (the package ships them: no network needed).
# The tools come from scripts/install-test-deps.sh (promtool from Debian's prometheus package
# under .cache/prometheus, kubernetes-validate in .cache/venv). A missing tool fails the run
# with CI=true; otherwise the check is SKIPPED, loudly, and the script exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=$PWD/.cache
# The Kubernetes versions the manifest must be valid for: an old one still in use, and the
# newest the pinned kubernetes-validate knows.
K8S_VERSIONS="1.30.0 1.37.0"

log() { printf '[check-ops-files] %s\n' "$*" >&2; }

missing() {
    if [ "${CI:-}" = true ]; then
        log "FAILED: $1 not found (run scripts/install-test-deps.sh)"
        exit 1
    fi
    log "!!!!!!!! SKIPPED: $2: $1 not found (run scripts/install-test-deps.sh) !!!!!!!!"
}

find_tool() {
    if [ -x "$2" ]; then echo "$2"; elif command -v "$1" >/dev/null 2>&1; then command -v "$1"; fi
}

PROMTOOL=$(find_tool promtool "$CACHE/prometheus/usr/bin/promtool")
KV=$(find_tool kubernetes-validate "$CACHE/venv/bin/kubernetes-validate")

if [ -n "$PROMTOOL" ]; then
    "$PROMTOOL" check rules docs/prometheus-alerts.yml
    "$PROMTOOL" test rules tests/alerts/pitr-alerts.test.yml
    # promtool does not require a test per alert: every alert needs a firing and a silent case.
    awk '
        FNR == NR { if ($1 == "-" && $2 == "alert:") alerts[$3] = 1; next }
        $1 == "alertname:" { name = $2 }
        $1 == "exp_alerts:" { if ($2 == "[]") silent[name] = 1; else firing[name] = 1 }
        END {
            for (a in alerts) {
                if (!(a in firing)) { print "[check-ops-files] FAILED: no firing case for " a > "/dev/stderr"; bad = 1 }
                if (!(a in silent)) { print "[check-ops-files] FAILED: no silent case for " a > "/dev/stderr"; bad = 1 }
            }
            exit bad
        }' docs/prometheus-alerts.yml tests/alerts/pitr-alerts.test.yml
    log "ok: docs/prometheus-alerts.yml ($("$PROMTOOL" --version 2>&1 | head -1))"
else
    missing promtool "alert rules not checked"
fi

if [ -n "$KV" ]; then
    for v in $K8S_VERSIONS; do
        "$KV" --strict --quiet -k "$v" docs/kubernetes-sidecar.yaml
    done
    log "ok: docs/kubernetes-sidecar.yaml valid for Kubernetes $K8S_VERSIONS (kubernetes-validate $("$KV" --version 2>&1))"
else
    missing kubernetes-validate "Kubernetes manifest not validated"
fi
