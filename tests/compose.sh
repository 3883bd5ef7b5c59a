#!/usr/bin/env bash
# docker-compose.test.yml for real (issue 11 §4), under the private Docker engine, through
# tests/compose/override.yml (local images, host networking; the pitr service's environment,
# depends_on and health check unchanged):
#   1. engine, base image, test images (scripts/docker-engine.sh, docker-base-image.sh,
#      docker-test-images.sh); the stripped host-built debug pitr at docker-context/pitr;
#      5432, 9000 and 9188 must be free on 127.0.0.1 (host networking: they are the host's);
#   2. `docker-compose up -d --build`: PostgreSQL 17 (with the mounted allow-replication.sh),
#      moto for MinIO, the bucket, `pitr stream`; the pitr service must become healthy;
#   3. pgbench (-i -s 5, then a short run) in the postgres container, a marker row;
#   4. `docker-compose run --rm pitr backup --wal-timeout 60s` (the service's environment);
#      `pitr list --json` must show WAL and a backup in the S3 repo;
#   5. `pitr restore --to latest --verify` from the pitr image, with the host's PostgreSQL 17
#      tree mounted as --pg-bin: the verify report must say ok, with the marker row counted;
#   6. `down -v --rmi local`. A trap always brings the project down.
# docker-compose 1.29 refuses published ports with host networking: it runs the merged config
# (`docker-compose config`) without `ports:`, after checking that the override leaves the pitr
# service's environment, depends_on and health check as docker-compose.test.yml has them.
# Without Docker, docker-compose or PostgreSQL 17 it prints SKIPPED and exits 0; with CI=true
# it fails.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
T0=$(date +%s.%N)
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
step() { printf '[compose] %6ss %s\n' "$(since "$T0")" "$*" >&2; }
fail() { echo "[compose] FAIL: $*" >&2; exit 1; }
skip() {
    if [ "${CI:-}" = true ]; then fail "$* (CI=true: the compose test must run)"; fi
    echo "[compose] ******** SKIPPED: $* ********" >&2
    exit 0
}

PG17=$ROOT/.cache/pg/17
[ -x "$PG17/bin/postgres" ] || skip "no PostgreSQL 17 in $PG17 (scripts/install-test-deps.sh)"
command -v docker >/dev/null 2>&1 || skip "no docker CLI"
command -v docker-compose >/dev/null 2>&1 || skip "no docker-compose (scripts/install-test-deps.sh installs it)"

PROJECT=pitrcompose$$
WORK=$(mktemp -d /tmp/pitr-compose.XXXXXX)
chmod 755 "$WORK"
ENGINE_STARTED=""
UP=""
# The file compose runs: docker-compose.test.yml + tests/compose/override.yml, merged by
# `docker-compose config`, minus every `ports:` (see step 1).
RENDERED=$WORK/compose.yml
DC=(docker-compose -p "$PROJECT" --project-directory "$ROOT" -f "$RENDERED")
cleanup() {
    local rc=$?
    set +e
    if [ -n "$UP" ]; then
        if [ $rc != 0 ]; then "${DC[@]}" logs --no-color --tail 30 >&2 2>&1; fi
        "${DC[@]}" down -v --rmi local --remove-orphans >"$WORK/down.log" 2>&1 ||
            { echo "[compose] down failed:" >&2; cat "$WORK/down.log" >&2; }
    fi
    if [ -n "$ENGINE_STARTED" ]; then scripts/docker-engine.sh stop >/dev/null 2>&1; fi
    if [ $rc != 0 ]; then
        for f in "$WORK"/*.log "$WORK"/*.json; do [ -f "$f" ] && { echo "--- $f" >&2; tail -30 "$f" >&2; }; done
    fi
    rm -rf "$WORK"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- 1. engine, images, binary, ports ---------------------------------------------------------
step "engine and images"
if ! scripts/docker-engine.sh status >/dev/null 2>&1; then ENGINE_STARTED=1; fi
if ! ENV_LINE=$(scripts/docker-engine.sh start); then skip "the Docker engine did not start"; fi
export "$ENV_LINE"
scripts/docker-base-image.sh >/dev/null || skip "the base image could not be built"
scripts/docker-test-images.sh 17 moto || fail "scripts/docker-test-images.sh 17 moto"
step "host binary (debug, stripped) at docker-context/pitr"
cargo build --locked --features kms --bin pitr 2>/dev/null || cargo build --locked --features kms --bin pitr
mkdir -p docker-context
strip -o docker-context/pitr target/debug/pitr
busy=()
for port in 5432 9000 9188; do
    # SO_REUSEADDR, as servers bind: connections in TIME_WAIT (a previous run) do not count.
    python3 -c 'import socket, sys; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1", int(sys.argv[1])))' "$port" \
        2>/dev/null || busy+=("$port")
done
((${#busy[@]} == 0)) || fail "port(s) ${busy[*]} in use on 127.0.0.1: the compose services run with host networking and need 5432 (postgres), 9000 (S3) and 9188 (pitr metrics); stop what listens there (ss -ltnp: $(ss -ltnp 2>/dev/null | grep -E ":($(IFS='|'; echo "${busy[*]}")) " | awk '{print $4, $6}' | tr '\n' ' '))"

# Published ports: docker-compose 1.29 (docker-py) refuses them with host networking
# ('"host" network_mode is incompatible with port_bindings'), and an override cannot remove
# them (compose concatenates `ports:` lists). So the merged config is rendered, `ports:` dropped
# (with host networking the services listen on the host's ports anyway), and the pitr service's
# environment, depends_on and health check are checked to be docker-compose.test.yml's.
docker-compose -f docker-compose.test.yml config >"$WORK/base.yml" 2>"$WORK/config.log" || fail "docker-compose config (base)"
docker-compose -f docker-compose.test.yml -f tests/compose/override.yml config >"$WORK/merged.yml" 2>>"$WORK/config.log" ||
    fail "docker-compose config (base + override)"
python3 - "$WORK/base.yml" "$WORK/merged.yml" "$RENDERED" "$PROJECT" <<'PY' || fail "rendering the compose file"
import sys, yaml
base, merged = (yaml.safe_load(open(f)) for f in sys.argv[1:3])
for key in ("environment", "depends_on", "healthcheck"):
    b, m = base["services"]["pitr"].get(key), merged["services"]["pitr"].get(key)
    if b != m:
        sys.exit(f"the override changes the pitr service's {key}: {b!r} -> {m!r}")
for name, svc in merged["services"].items():
    if svc.get("network_mode") != "host":
        sys.exit(f"service {name} does not run with network_mode: host")
    svc.pop("ports", None)
# pitr-run: the pitr service's container config (its built image, environment, network), for
# one-off commands: `docker-compose run pitr ...` itself fails with host networking while the
# pitr service runs (compose 1.29 links a one-off container to the service's running
# containers: "host type networking can't be used with links"). In profile "run": `up` leaves it.
run = {k: v for k, v in merged["services"]["pitr"].items()
       if k not in ("build", "depends_on", "restart", "command")}
run["image"] = sys.argv[4] + "_pitr"
run["profiles"] = ["run"]
merged["services"]["pitr-run"] = run
yaml.safe_dump(merged, open(sys.argv[3], "w"), sort_keys=False)
PY

# --- 2. up ------------------------------------------------------------------------------------
step "docker-compose up -d --build (project $PROJECT)"
UP=1
"${DC[@]}" up -d --build >"$WORK/up.log" 2>&1 || { cat "$WORK/up.log" >&2; fail "docker-compose up"; }
PITR=$("${DC[@]}" ps -q pitr)
[ -n "$PITR" ] || fail "no pitr container"
step "waiting for the pitr service to be healthy"
health=""
for _ in $(seq 120); do
    health=$(docker inspect --format '{{.State.Health.Status}}' "$PITR" 2>/dev/null || echo gone)
    [ "$health" = healthy ] && break
    sleep 0.5
done
[ "$health" = healthy ] || { "${DC[@]}" logs --no-color pitr >&2; fail "pitr service health: $health"; }
step "healthy"
"${DC[@]}" logs --no-color postgres >"$WORK/postgres.log" 2>&1
grep -q 'allow-replication.sh: host replication all all' "$WORK/postgres.log" ||
    fail "the postgres service did not run docker/postgres-initdb/allow-replication.sh"

# --- 3. load and a marker row -----------------------------------------------------------------
PGX=("${DC[@]}" exec -T postgres)
step "pgbench -i -s 5, then 5 s of load"
"${PGX[@]}" pgbench -q -i -s 5 -U postgres postgres >"$WORK/pgbench-init.log" 2>&1 || fail "pgbench -i"
"${PGX[@]}" pgbench -c 2 -T 5 -U postgres postgres >"$WORK/pgbench.log" 2>&1 || fail "pgbench"
step "$(grep -E '^tps' "$WORK/pgbench.log" | head -1)"
"${PGX[@]}" psql -X -q -v ON_ERROR_STOP=1 -U postgres -c "CREATE TABLE marker (v text); INSERT INTO marker VALUES ('compose')" ||
    fail "marker row"

# One-off commands run in the rendered file's pitr-run service: the pitr service's image,
# environment and network (see the rendering above).
# --- 4. backup, list ----------------------------------------------------------------------------
step "pitr backup (docker-compose run)"
timeout -k 5 150 "${DC[@]}" run --rm --no-deps -T pitr-run backup --wal-timeout 60s >"$WORK/backup.log" 2>&1 ||
    fail "pitr backup"
"${PGX[@]}" psql -X -q -U postgres -c "SELECT pg_switch_wal()" >/dev/null
"${DC[@]}" run --rm --no-deps -T pitr-run list --json >"$WORK/list.json" 2>"$WORK/list.log" || fail "pitr list"
python3 - "$WORK/list.json" <<'PY' || fail "pitr list --json: no WAL or no backup in the S3 repo"
import json, sys
raw = open(sys.argv[1]).read()
doc = json.loads(raw[raw.index("{"):])  # compose run may print a line before the JSON
wal = [t for t in doc["timelines"] if t.get("archived_to")]
print(f"[compose] repo {doc['repo']}: {len(doc['backups'])} backup(s), WAL on {len(wal)} timeline(s) to "
      + ", ".join(t["archived_to"] for t in wal), file=sys.stderr)
sys.exit(0 if wal and doc["backups"] else 1)
PY

# --- 5. restore --verify from the image ------------------------------------------------------
RESTORED=$WORK/restored
mkdir "$RESTORED" && chown 10001:10001 "$RESTORED"
step "pitr restore --to latest --verify (docker-compose run, --pg-bin: the host's PostgreSQL 17)"
timeout -k 5 300 "${DC[@]}" run --rm --no-deps -T -v "$RESTORED:/restored" -v "$(readlink -f "$PG17"):/pg:ro" pitr-run \
    restore --to latest -D /restored --verify --pg-bin /pg/bin \
    --check-sql "SELECT count(*) FROM marker => 1" --json >"$WORK/restore.json" 2>"$WORK/restore.log" ||
    fail "pitr restore --verify"
python3 - "$WORK/restore.json" <<'PY' || fail "the verify report is not ok"
import json, sys
raw = open(sys.argv[1]).read()
doc = json.loads(raw[raw.index("{"):])
v = doc["verify"]
print(f"[compose] verify ok={v.get('ok')}", file=sys.stderr)
sys.exit(0 if v.get("ok") is True else 1)
PY

# --- 6. down ------------------------------------------------------------------------------------
step "docker-compose down -v --rmi local"
"${DC[@]}" down -v --rmi local --remove-orphans >"$WORK/down.log" 2>&1 || { cat "$WORK/down.log" >&2; fail "down"; }
UP=""
step "OK"
