#!/usr/bin/env bash
# A tour of pitr's main job, with nothing to configure:
#   1. build pitr;
#   2. start a throwaway PostgreSQL (from the binaries scripts/install-test-deps.sh installs,
#      or PITR_TOUR_PG_BIN=/path/to/bin);
#   3. run `pitr stream` into a throwaway local repo while pgbench writes for a few seconds;
#   4. show what got archived: the objects, the newest archived commit, and the metrics;
#   5. stop everything (SIGTERM to pitr, then the server) and remove the temporary files
#      (PITR_TOUR_KEEP=1 keeps them).
# Set PITR_TOUR_SECONDS to change the load's duration (default 5).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SECS=${PITR_TOUR_SECONDS:-5}

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

# --- PostgreSQL binaries -------------------------------------------------------------------
BIN=${PITR_TOUR_PG_BIN:-}
if [ -z "$BIN" ]; then
    for m in 18 17 16 15; do
        if [ -x "$ROOT/.cache/pg/$m/bin/initdb" ]; then BIN=$ROOT/.cache/pg/$m/bin; break; fi
    done
fi
if [ -z "$BIN" ]; then
    say "installing PostgreSQL (scripts/install-test-deps.sh)"
    ./scripts/install-test-deps.sh
    BIN=$ROOT/.cache/pg/17/bin
fi

say "building pitr"
cargo build -q --locked --bin pitr
PITR=$ROOT/target/debug/pitr

WORK=$(mktemp -d /tmp/pitr-tour.XXXXXX)
chmod 755 "$WORK"
PGDATA=$WORK/data
REPO=$WORK/repo
RUN=()
if [ "$(id -u)" = 0 ]; then
    # initdb refuses to run as root: the server runs as the postgres OS user.
    id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
    RUN=(runuser -u postgres --)
fi
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
METRICS_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
PITR_PID=""

cleanup() {
    if [ -n "$PITR_PID" ] && kill -0 "$PITR_PID" 2>/dev/null; then kill -TERM "$PITR_PID"; wait "$PITR_PID" || true; fi
    "${RUN[@]}" "$BIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null 2>&1 || true
    if [ -z "${PITR_TOUR_KEEP:-}" ]; then rm -rf "$WORK"; else echo "kept $WORK"; fi
}
trap cleanup EXIT

say "starting a throwaway PostgreSQL $("$BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PORT"
chown "${RUN[@]:+postgres}" "$WORK" 2>/dev/null || true
"${RUN[@]}" "$BIN/initdb" -D "$PGDATA" -A trust -U postgres --no-sync >/dev/null  # wal_level = replica is the default (initdb -c is 16+ only)
"${RUN[@]}" "$BIN/pg_ctl" -D "$PGDATA" -w -l "$WORK/server.log" \
    -o "-c listen_addresses=127.0.0.1 -c port=$PORT -c unix_socket_directories=$WORK" start >/dev/null
PSQL=("$BIN/psql" -X -q -At -h 127.0.0.1 -p "$PORT" -U postgres -d postgres)

say "pitr stream --source 'host=127.0.0.1 port=$PORT user=postgres' --repo $REPO"
"$PITR" stream --source "host=127.0.0.1 port=$PORT user=postgres sslmode=disable" \
    --repo "$REPO" --metrics-listen "127.0.0.1:$METRICS_PORT" 2>"$WORK/pitr.log" &
PITR_PID=$!
for _ in $(seq 100); do
    [ "$("${PSQL[@]}" -c "SELECT count(*) FROM pg_replication_slots WHERE slot_name='pitr' AND active")" = 1 ] && break
    kill -0 "$PITR_PID" 2>/dev/null || { cat "$WORK/pitr.log"; exit 1; }
    sleep 0.1
done
sed 's/^/  pitr: /' "$WORK/pitr.log"

say "pgbench: $SECS s of light load"
"$BIN/pgbench" -q -i -s 1 -h 127.0.0.1 -p "$PORT" -U postgres postgres >/dev/null 2>&1
"$BIN/pgbench" -h 127.0.0.1 -p "$PORT" -U postgres -c 2 -R 200 -T "$SECS" postgres 2>/dev/null |
    grep -E '^(number of transactions actually processed|tps)' | sed 's/^/  /'
"${PSQL[@]}" -c "SELECT pg_create_restore_point('tour')" >/dev/null
LAST=$("${PSQL[@]}" -c "SELECT pg_walfile_name(pg_current_wal_lsn())")
"${PSQL[@]}" -c "SELECT pg_switch_wal()" >/dev/null
# The segment, then its summary (written once the segment is durable).
for _ in $(seq 300); do
    [ -e "$REPO/wal/00000001/$LAST.summary.json" ] && break
    sleep 0.1
done
[ -e "$REPO/wal/00000001/$LAST.summary.json" ] || { echo "pitr did not archive $LAST in 30 s:"; cat "$WORK/pitr.log"; exit 1; }

say "what the repo holds ($REPO)"
(cd "$REPO" && find . -type f | sort | sed 's|^\./|  |' | head -20)
echo "  ... $(find "$REPO" -type f | wc -l) objects, $(du -sh "$REPO" | cut -f1) on disk"

say "the archived WAL, decoded (pitr wal inspect)"
"$PITR" wal inspect "$REPO"/wal/00000001/0*[0-9A-F].lz4 | tail -n 12 | sed 's/^/  /'

say "metrics (http://127.0.0.1:$METRICS_PORT/metrics)"
python3 - "$METRICS_PORT" <<'EOF'
import sys, urllib.request
body = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=5).read().decode()
for line in body.splitlines():
    if line.startswith(("pitr_archived_lsn_bytes", "pitr_archive_lag_bytes", "pitr_uploads_total",
                        "pitr_last_archived_commit_age_seconds", "pitr_streaming")):
        print("  " + line)
EOF

say "stopping pitr (SIGTERM: publishes what is buffered, exits 0)"
kill -TERM "$PITR_PID"
wait "$PITR_PID"
PITR_PID=""
echo "  exit 0; archived through $LAST and beyond. Try: pitr stream --help"

say "the whole loop (pitr demo): back up, commit, DROP TABLE, restore to just before it, verify"
"$PITR" demo --pg-bin "$BIN" 2>/dev/null | sed 's/^/  /'
echo
echo "Next: pitr backup --help, pitr restore --help, docs/ci-restore-check.md"
