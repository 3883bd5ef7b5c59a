#!/usr/bin/env bash
# The image users run (issue 11 §1), built and run under a private Docker engine:
#   1. starts the engine (scripts/docker-engine.sh), builds pitr-base:bookworm
#      (scripts/docker-base-image.sh) and the Dockerfile's `runtime-host` target around the
#      host-built binary (stripped, as the user-facing build stage does);
#   2. starts a throwaway PostgreSQL 17 on 127.0.0.1 (from .cache/pg/17/bin) and runs
#      `pitr stream` in the container (--network host, as the image's uid 10001) into a mounted
#      repo directory owned by 10001:10001; pgbench writes; the repo must receive WAL;
#   3. the image's HEALTHCHECK (/healthz) must report `healthy` while it streams; then the
#      server is stopped: /readyz must answer 503 and `pitr_server_up` be 0 while it is down (the
#      HEALTHCHECK's status meanwhile is printed: /healthz stays 200 while the server is
#      unreachable, so Docker keeps saying `healthy`); started again, pitr must stream again
#      (/readyz 200, `healthy`), and step 4's last row, written after it, must be archived;
#   4. `docker stop` (SIGTERM) must exit 0 within --shutdown-timeout, and the repo's tip
#      (`pitr list --json`, from the image) must reach the slot's restart_lsn (the flush position
#      pitr acknowledged): nothing acknowledged is lost;
#   5. `pitr backup` and `pitr restore --to latest` from the image into a mounted directory; the
#      restored directory started with the host's PostgreSQL 17 must hold the last row;
#   6. prints the image size minus the base's (goal: under 40 MB).
# Everything it starts (containers, the server, the engine) is stopped by a trap.
#   PITR_CONTAINER_PROFILE=debug|release  which host binary goes in the image (default: debug,
#     which `cargo test` has already built in CI; release for the size users get)
# Without Docker (or PostgreSQL 17) it prints SKIPPED and exits 0; with CI=true it fails.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PROFILE=${PITR_CONTAINER_PROFILE:-debug}
PG=$ROOT/.cache/pg/17/bin
IMAGE=pitr:host-test-$$
T0=$(date +%s.%N)
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
step() { printf '[container] %6ss %s\n' "$(since "$T0")" "$*" >&2; }
fail() { echo "[container] FAIL: $*" >&2; exit 1; }
skip() {
    if [ "${CI:-}" = true ]; then fail "$* (CI=true: the container test must run)"; fi
    echo "[container] ******** SKIPPED: $* ********" >&2
    exit 0
}

[ -x "$PG/initdb" ] || skip "no PostgreSQL 17 in $PG (scripts/install-test-deps.sh)"
command -v docker >/dev/null 2>&1 || skip "no docker CLI"

WORK=$(mktemp -d /tmp/pitr-container.XXXXXX)
chmod 755 "$WORK"
PGDATA=$WORK/pgdata
ENGINE_STARTED=""
CONTAINERS=()
cleanup() {
    local rc=$?
    set +e
    for c in "${CONTAINERS[@]}"; do docker rm -f "$c" >/dev/null 2>&1; done
    docker rmi "$IMAGE" >/dev/null 2>&1
    if [ -f "$PGDATA/postmaster.pid" ]; then
        runuser -u postgres -- "$PG/pg_ctl" -D "$PGDATA" -m immediate -w stop >/dev/null 2>&1
    fi
    if [ -f "$WORK/restored/postmaster.pid" ]; then
        runuser -u postgres -- "$PG/pg_ctl" -D "$WORK/restored" -m immediate -w stop >/dev/null 2>&1
    fi
    if [ -n "$ENGINE_STARTED" ]; then scripts/docker-engine.sh stop >/dev/null 2>&1; fi
    if [ $rc != 0 ]; then
        for f in "$WORK"/*.log; do [ -f "$f" ] && { echo "--- $f" >&2; tail -20 "$f" >&2; }; done
    fi
    rm -rf "$WORK"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- 1. engine, base image, runtime-host image ------------------------------------------------
step "starting the engine"
# Stopped by the trap only when this run started it (a daemon someone else runs is left alone).
if ! scripts/docker-engine.sh status >/dev/null 2>&1; then ENGINE_STARTED=1; fi
if ! ENV_LINE=$(scripts/docker-engine.sh start); then skip "the Docker engine did not start"; fi
export "$ENV_LINE"
step "base image"
scripts/docker-base-image.sh >/dev/null || skip "the base image could not be built"
step "host binary ($PROFILE)"
if [ "$PROFILE" = release ]; then
    [ -x target/release/pitr ] || cargo build --release --locked --features kms --bin pitr
else
    cargo build --locked --features kms --bin pitr 2>/dev/null || cargo build --locked --features kms --bin pitr
fi
mkdir -p docker-context
strip -o docker-context/pitr "target/$PROFILE/pitr"
step "docker build --target runtime-host"
docker build -q --target runtime-host --network host --build-arg BASE=pitr-base:bookworm \
    -t "$IMAGE" . >"$WORK/build.log" 2>&1 || { cat "$WORK/build.log" >&2; fail "docker build"; }

# --- 2. PostgreSQL 17 on loopback, pitr stream in the container ---------------------------------
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
METRICS_PORT=$(free_port)
id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
chown postgres "$WORK"
step "PostgreSQL 17 on 127.0.0.1:$PORT"
runuser -u postgres -- "$PG/initdb" -D "$PGDATA" -A trust -U postgres --no-sync >/dev/null
runuser -u postgres -- "$PG/pg_ctl" -D "$PGDATA" -w -l "$WORK/server.log" \
    -o "-c listen_addresses=127.0.0.1 -c port=$PORT -c unix_socket_directories=$WORK -c wal_level=replica" \
    start >/dev/null
PSQL=("$PG/psql" -X -q -At -h 127.0.0.1 -p "$PORT" -U postgres -d postgres)
"$PG/pgbench" -q -i -s 1 -h 127.0.0.1 -p "$PORT" -U postgres postgres >/dev/null 2>&1

REPO=$WORK/repo
mkdir "$REPO" && chown 10001:10001 "$REPO"
SOURCE="host=127.0.0.1 port=$PORT user=postgres sslmode=disable"
DRUN=(docker run --network host -v "$REPO:/repo" -e "PITR_METRICS_LISTEN=127.0.0.1:$METRICS_PORT")
step "pitr stream in the container"
STREAM=pitr-stream-$$
CONTAINERS+=("$STREAM")
"${DRUN[@]}" -d --name "$STREAM" --health-interval 1s --health-start-period 2s \
    "$IMAGE" stream --source "$SOURCE" --repo /repo --partial-every 1s --shutdown-timeout 20s >/dev/null
[ "$(docker exec "$STREAM" id -u)" = 10001 ] || fail "the container does not run as uid 10001"

"$PG/pgbench" -h 127.0.0.1 -p "$PORT" -U postgres -c 2 -R 200 -T 3 postgres >"$WORK/pgbench.log" 2>&1
"${PSQL[@]}" -c "CREATE TABLE marker (v text); INSERT INTO marker VALUES ('before-stop')"
"${PSQL[@]}" -c "SELECT pg_switch_wal()" >/dev/null

# --- 3. HEALTHCHECK ------------------------------------------------------------------------------
step "waiting for healthy, and for WAL in the repo"
health=""
for _ in $(seq 60); do
    health=$(docker inspect --format '{{.State.Health.Status}}' "$STREAM")
    nwal=$(find "$REPO" -type f | grep -c -i wal || true)
    [ "$health" = healthy ] && [ "$nwal" -gt 0 ] && break
    [ "$(docker inspect --format '{{.State.Running}}' "$STREAM")" = true ] ||
        { docker logs "$STREAM" >&2; fail "pitr stream exited"; }
    sleep 0.5
done
[ "$health" = healthy ] || { docker logs "$STREAM" >&2; fail "health: $health"; }
[ "$nwal" -gt 0 ] || { docker logs "$STREAM" >&2; find "$REPO" >&2; fail "no WAL in the repo"; }
step "healthy; $nwal WAL files in the repo"

# --- 3b. the server goes away and comes back ------------------------------------------------------
# GET http://127.0.0.1:$METRICS_PORT$1 (pitr's listener, --network host): the status (000 when
# nothing answers); with $2 = "-" the body, with $2 = NAME the value of metric NAME.
http_get() {
    python3 - "$METRICS_PORT" "$1" "${2:-}" <<'PY'
import sys, urllib.request, urllib.error
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
try:
    r = opener.open(f"http://127.0.0.1:{sys.argv[1]}{sys.argv[2]}", timeout=3)
    code, body = r.status, r.read().decode()
except urllib.error.HTTPError as e:
    code, body = e.code, e.read().decode()
except Exception:
    code, body = 0, ""
if sys.argv[3] == "-":  # the body
    print(body.strip())
elif sys.argv[3]:  # a metric's value from the body
    print(next((l.split()[-1] for l in body.splitlines() if l.split()[:1] == [sys.argv[3]]), ""))
else:
    print(f"{code:03d}")
PY
}
# wait_until SECONDS CONDITION WHAT: evaluates the shell CONDITION every 0.2 s until it holds;
# fails after SECONDS with WHAT (evaluated then too, so it can show the state).
wait_until() {
    local end=$(( $(date +%s) + $1 ))
    until eval "$2"; do
        (( $(date +%s) < end )) || { docker logs "$STREAM" >&2; fail "$(eval "echo \"$3\"") (after $1s)"; }
        sleep 0.2
    done
}
health() { docker inspect --format '{{.State.Health.Status}}' "$STREAM"; }
pg_start() {
    runuser -u postgres -- "$PG/pg_ctl" -D "$PGDATA" -w -l "$WORK/server.log" \
        -o "-c listen_addresses=127.0.0.1 -c port=$PORT -c unix_socket_directories=$WORK -c wal_level=replica" \
        start >/dev/null
}
wait_until 30 '[ "$(http_get /readyz)" = 200 ]' '/readyz not 200 while streaming: $(http_get /readyz -)'
step "stopping PostgreSQL (the stream's source)"
runuser -u postgres -- "$PG/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null
wait_until 20 '[ "$(http_get /readyz)" = 503 ]' '/readyz not 503 with the server down: $(http_get /readyz -)'
wait_until 5 '[ "$(http_get /metrics pitr_server_up)" = 0 ]' 'pitr_server_up not 0 with the server down'
# Long enough for the HEALTHCHECK to turn unhealthy if /healthz failed: three failed probes
# (--retries 3) at --health-interval 1s, plus a probe's --timeout (3s).
sleep 4
step "server down: /readyz 503, pitr_server_up 0; /healthz $(http_get /healthz), HEALTHCHECK $(health)"
pg_start
step "PostgreSQL started again"
wait_until 60 '[ "$(http_get /readyz)" = 200 ]' \
    'pitr did not stream again after the server came back: /readyz: $(http_get /readyz -)'
wait_until 10 '[ "$(health)" = healthy ]' 'not healthy after the server came back: $(health)'
[ "$(http_get /metrics pitr_streaming)" = 1 ] || fail "pitr_streaming is not 1 after the server came back"
step "streaming again: /readyz 200, healthy"

# --- 4. docker stop: exit 0 in time, nothing acknowledged lost -----------------------------------
"${PSQL[@]}" -c "INSERT INTO marker VALUES ('last')"
sleep 2  # let pitr take and acknowledge it (--partial-every 1s)
step "docker stop"
t=$(date +%s.%N)
docker stop -t 30 "$STREAM" >/dev/null
stop_s=$(since "$t")
code=$(docker inspect --format '{{.State.ExitCode}}' "$STREAM")
docker logs "$STREAM" >"$WORK/stream.log" 2>&1
[ "$code" = 0 ] || { cat "$WORK/stream.log" >&2; fail "pitr stream exited $code on SIGTERM"; }
awk -v s="$stop_s" 'BEGIN { exit !(s < 20) }' || fail "docker stop took ${stop_s}s (shutdown timeout 20s)"
step "stopped: exit 0 in ${stop_s}s"
ACKED=$("${PSQL[@]}" -c "SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'pitr'")
[ -n "$ACKED" ] || fail "no slot named pitr"
docker run --rm --network host --no-healthcheck -v "$REPO:/repo" "$IMAGE" list --repo /repo --json \
    >"$WORK/list.json" 2>"$WORK/list.log" || fail "pitr list"
# The archive's tip: timelines[].archived_to ("end of the archived WAL"), the highest one.
TIP=$(python3 -c '
import json, sys
val = lambda l: (int(l.split("/")[0], 16) << 32) | int(l.split("/")[1], 16)
tips = [t["archived_to"] for t in json.load(open(sys.argv[1]))["timelines"] if t.get("archived_to")]
print(max(tips, key=val) if tips else "")' "$WORK/list.json")
[ -n "$TIP" ] || { cat "$WORK/list.json" >&2; fail "no WAL end LSN in pitr list --json"; }
lsn() { local a=${1%/*} b=${1#*/}; echo $(( (16#$a << 32) | 16#$b )); }
(( $(lsn "$TIP") >= $(lsn "$ACKED") )) || fail "repo tip $TIP is behind the acknowledged $ACKED"
step "repo tip $TIP >= slot restart_lsn $ACKED"

# --- 5. backup and restore from the image --------------------------------------------------------
# The backup waits for its end WAL in the repo: a stream runs again meanwhile (same slot).
CONTAINERS+=("$STREAM-2")
"${DRUN[@]}" -d --name "$STREAM-2" --no-healthcheck "$IMAGE" \
    stream --source "$SOURCE" --repo /repo --partial-every 1s >/dev/null
step "pitr backup in the container"
CONTAINERS+=("pitr-backup-$$")  # named, so that the trap removes it if the timeout fires
timeout -k 5 120 docker run --rm --name "pitr-backup-$$" --network host --no-healthcheck -v "$REPO:/repo" "$IMAGE" \
    backup --source "$SOURCE" --repo /repo --wal-timeout 60s >"$WORK/backup.log" 2>&1 || fail "pitr backup"
"${PSQL[@]}" -c "INSERT INTO marker VALUES ('after-backup')"
"${PSQL[@]}" -c "SELECT pg_switch_wal()" >/dev/null
sleep 3
docker stop -t 30 "$STREAM-2" >/dev/null
[ "$(docker inspect --format '{{.State.ExitCode}}' "$STREAM-2")" = 0 ] || fail "second stream exit"
RESTORED=$WORK/restored
mkdir "$RESTORED" && chown 10001:10001 "$RESTORED"
step "pitr restore --to latest in the container"
docker run --rm --network host --no-healthcheck -v "$REPO:/repo" -v "$RESTORED:/restored" "$IMAGE" \
    restore --repo /repo --to latest -D /restored >"$WORK/restore.log" 2>&1 || fail "pitr restore"
[ "$(stat -c %u "$RESTORED/PG_VERSION")" = 10001 ] || fail "restored files not owned by 10001"
# The host's server runs as postgres: hand the directory over, as a user would.
chown -R postgres "$RESTORED" && chmod 700 "$RESTORED"
RPORT=$(free_port)
step "starting the restored directory on 127.0.0.1:$RPORT"
runuser -u postgres -- "$PG/pg_ctl" -D "$RESTORED" -w -t 60 -l "$WORK/restored-server.log" \
    -o "-c listen_addresses=127.0.0.1 -c port=$RPORT -c unix_socket_directories=$WORK" start >/dev/null
for _ in $(seq 60); do
    [ "$("$PG/psql" -X -At -h 127.0.0.1 -p "$RPORT" -U postgres -d postgres -c 'SELECT pg_is_in_recovery()' 2>/dev/null)" = f ] && break
    sleep 0.5
done
ROWS=$("$PG/psql" -X -At -h 127.0.0.1 -p "$RPORT" -U postgres -d postgres \
    -c "SELECT string_agg(v, ',' ORDER BY v) FROM marker")
[ "$ROWS" = "after-backup,before-stop,last" ] || fail "restored rows: '$ROWS'"
step "restored server holds: $ROWS"

# --- 6. size ------------------------------------------------------------------------------------
img=$(docker image inspect --format '{{.Size}}' "$IMAGE")
base=$(docker image inspect --format '{{.Size}}' pitr-base:bookworm)
step "image $(( img / 1000000 )) MB, base $(( base / 1000000 )) MB: +$(( (img - base) / 1000000 )) MB ($PROFILE binary $(( $(stat -c %s docker-context/pitr) / 1000000 )) MB stripped; goal +40 MB)"
echo "[container] OK" >&2
