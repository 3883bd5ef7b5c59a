#!/usr/bin/env bash
# `pitr backup` and `pitr restore` against pg_basebackup and pgBackRest, in one run (BENCHMARKS.md).
#
# One throwaway PostgreSQL server (wal_level replica, archive_mode on with pgBackRest's
# archive-push), loaded with pgbench -i -s SCALE (scale 50: about 750 MB). `pitr stream` runs in
# the background into a local directory repo (pitr backup waits for its WAL there). Each command
# below runs PITR_BENCH_ROUNDS times (median reported), on an otherwise idle server, timed from start to exit (wall clock), with its
# peak RSS from /usr/bin/time -v ("Maximum resident set size": the largest single process of the
# command, children included, not their sum):
#   backup   pitr backup (client-side lz4, the default)     vs pg_basebackup -Ft -X stream -c fast --compress=client-lz4
#            pitr backup --server-compression              vs pg_basebackup -Ft -X stream -c fast --compress=server-lz4
#            pgbackrest backup --type=full (lz4, --process-max=2, local repo), for context
#            (order: pitr --server-compression, pg_basebackup server-lz4, pg_basebackup client-lz4,
#            pitr client lz4, stop pitr stream, pgbackrest backup)
#   restore  pitr restore --to latest --backup <the client-lz4 backup> -D DIR
#            pitr restore of the --server-compression backup, for context
#            vs pgbackrest restore --process-max=2 --pg1-path=DIR (lz4, local repo)
#            "repo to ready directory": until the command exits. pitr's directory also holds the
#            WAL from the backup's start to the newest archived segment in pg_wal; pgBackRest's
#            gets its WAL later, through restore_command.
#            pitr backup --compress zstd (level 3)         vs pg_basebackup --compress=client-zstd (level 3),
#            where pg_basebackup is built with zstd; and pitr's zstd restore against its lz4 one
# Goals (issue 13): pitr backup wall <= 0.80x pg_basebackup's at client lz4 and <= 1.0x at server
# lz4; pitr restore wall <= 0.35x pgbackrest restore; pitr peak RSS <= 128 MiB for every backup
# and restore.
#
# The page cache is dropped (sync; echo 3 > /proc/sys/vm/drop_caches) before each timed command
# when that file is writable (root on a VM), otherwise every figure is warm-cache and says so.
#
# pgBackRest comes from Debian (apt-get install pgbackrest, done here if missing and root). The
# Debian 12 package (2.45) supports PostgreSQL up to 15: with a newer major the pgBackRest rows are
# skipped with a message (use PITR_BENCH_PG=15 for the full comparison).
#
# Settings (environment):
#   PITR_BENCH_SCALE      pgbench -i -s (default 50; 200 is about 3 GB)
#   PITR_BENCH_ROUNDS     runs of each timed command, median reported (default 3)
#   PITR_BENCH_PG         PostgreSQL major under .cache/pg (default 17)
#   PITR_BENCH_KEEP=1     keep the temporary directory (server, repos, restored dirs, logs)
#   PITR_BENCH_DROP_CACHES=0  never drop the page cache (warm-cache figures)
#   PITR_BENCH_NO_BUILD=1 use the existing ${CARGO_TARGET_DIR:-target}/release/pitr (no cargo build)
#   CARGO_TARGET_DIR      where cargo builds pitr (default target/)
# Prints a results table, ratios and goals, and saves them to benches/results/backup-restore-DATE.txt.
# Exit status 0 whatever the figures; non-zero with a one-line error if something broke.
set -Eeuo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SCALE=${PITR_BENCH_SCALE:-50}
ROUNDS=${PITR_BENCH_ROUNDS:-3}
MAJOR=${PITR_BENCH_PG:-17}
ME=backup-restore-vs-peers

log() { printf '[%s] %s\n' "$ME" "$*" >&2; }
die() {
    trap - ERR
    printf '%s: error: %s\n' "$ME" "$*" >&2
    exit 1
}
trap 'die "line $LINENO: command failed (exit $?): $BASH_COMMAND"' ERR

# --- build and tools ---------------------------------------------------------------------------
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
if [ -z "${PITR_BENCH_NO_BUILD:-}" ]; then
    log "installing test dependencies (scripts/install-test-deps.sh)"
    ./scripts/install-test-deps.sh
    log "building pitr (cargo build --release --locked --bin pitr)"
    cargo build --release --locked --bin pitr >&2
fi
if git rev-parse --git-dir >/dev/null 2>&1; then
    CODE=$(git rev-parse --short HEAD)
    git diff --quiet HEAD -- src walfmt Cargo.toml Cargo.lock || CODE="$CODE + uncommitted changes"
else
    CODE="(source not in a git checkout)"
fi
PITR=$TARGET/release/pitr
[ -x "$PITR" ] || die "$PITR missing (build it, or unset PITR_BENCH_NO_BUILD)"
BIN=$ROOT/.cache/pg/$MAJOR/bin
for t in initdb pg_ctl postgres pgbench pg_basebackup psql; do
    [ -x "$BIN/$t" ] || die "$BIN/$t missing (run scripts/install-test-deps.sh)"
done
[ -x /usr/bin/time ] || die "/usr/bin/time (GNU time) is needed: apt-get install time"
command -v python3 >/dev/null || die "python3 is needed"

RUN=()
if [ "$(id -u)" = 0 ]; then
    # initdb refuses root: the server (and pgBackRest, which must own its files) run as postgres.
    id postgres >/dev/null 2>&1 || die "running as root needs a 'postgres' OS user (scripts/install-test-deps.sh creates it)"
    RUN=(runuser -u postgres --)
fi

# pgBackRest: installed from Debian when missing (root only); skipped, with the reason, otherwise.
PGBR_SKIP=""
if ! command -v pgbackrest >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        log "installing pgBackRest (apt-get install pgbackrest)"
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbackrest; } >&2 ||
            PGBR_SKIP="pgBackRest is not installed and apt-get install pgbackrest failed"
    else
        PGBR_SKIP="pgBackRest is not installed (apt-get install pgbackrest needs root)"
    fi
fi
PGBR_VERSION=$(pgbackrest version 2>/dev/null | awk '{print $2}' || true)

DROP=""
if [ "${PITR_BENCH_DROP_CACHES:-1}" = 0 ]; then
    CACHE_STATE="warm (PITR_BENCH_DROP_CACHES=0)"
elif [ -w /proc/sys/vm/drop_caches ] && (sync && echo 3 >/proc/sys/vm/drop_caches) 2>/dev/null; then
    DROP=1
    CACHE_STATE="cold (page cache dropped before each timed command)"
else
    CACHE_STATE="warm (cannot drop the page cache here)"
fi
# Before each timed command: flush the previous command's dirty pages (always), then drop the
# page cache (when possible and not disabled).
drop_caches() {
    sync
    if [ -n "$DROP" ]; then echo 3 >/proc/sys/vm/drop_caches; fi
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port)

WORK=$(mktemp -d /tmp/pitr-bench-backup.XXXXXX)
chmod 755 "$WORK"
PGDATA=$WORK/data
STREAM_PID=""

stop_pid() { # pid signal: signal, wait up to 30 s, then SIGKILL
    local pid=$1 sig=$2 i
    [ -n "$pid" ] || return 0
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    kill "-$sig" "$pid" 2>/dev/null || true
    for i in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    local rc=$?
    trap - ERR
    set +e
    stop_pid "$STREAM_PID" TERM
    if [ -f "$PGDATA/postmaster.pid" ]; then
        "${RUN[@]}" "$BIN/pg_ctl" -D "$PGDATA" -m immediate -w stop >/dev/null 2>&1
    fi
    if [ -n "${PITR_BENCH_KEEP:-}" ]; then
        log "kept $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log_tail() { printf '  --- last lines of %s ---\n' "$1" >&2; tail -n 20 "$1" | sed 's/^/  /' >&2; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }
RES=$WORK/results
: >"$RES"
put() { printf '%s=%s\n' "$1" "$2" >>"$RES"; }
# Other work on the machine skews wall times: the load average is printed with the results.
put load_start "$(cut -d' ' -f1-3 /proc/loadavg)"

# --- server ------------------------------------------------------------------------------------
[ "${#RUN[@]}" = 0 ] || chown postgres: "$WORK"
PGVER=$("$BIN/postgres" --version | awk '{print $3}')
log "PostgreSQL $PGVER on 127.0.0.1:$PORT, data in $PGDATA"
"${RUN[@]}" "$BIN/initdb" -D "$PGDATA" -A trust -U postgres -E UTF8 --no-locale -N >"$WORK/initdb.log" 2>&1 ||
    die "initdb failed: $(tail -n 1 "$WORK/initdb.log")"

PGBR_CONF=$WORK/pgbackrest.conf
if [ -z "$PGBR_SKIP" ]; then
    "${RUN[@]}" mkdir -p "$WORK/pgbr-repo" "$WORK/pgbr-log" "$WORK/pgbr-lock" "$WORK/pgbr-spool"
    cat >"$PGBR_CONF" <<EOF
[global]
repo1-path=$WORK/pgbr-repo
repo1-retention-full=2
log-path=$WORK/pgbr-log
lock-path=$WORK/pgbr-lock
spool-path=$WORK/pgbr-spool
log-level-console=warn
start-fast=y
compress-type=lz4
process-max=2

[bench]
pg1-path=$PGDATA
pg1-port=$PORT
pg1-socket-path=$WORK
EOF
    [ "${#RUN[@]}" = 0 ] || chown postgres: "$PGBR_CONF"
    ARCHIVE_COMMAND="pgbackrest --config=$PGBR_CONF --stanza=bench archive-push %p"
else
    ARCHIVE_COMMAND="true"
fi
cat >>"$PGDATA/postgresql.conf" <<EOF
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
archive_mode = on
archive_command = '$ARCHIVE_COMMAND'
EOF
"${RUN[@]}" "$BIN/pg_ctl" -D "$PGDATA" -w -t 60 -l "$WORK/server.log" \
    -o "-c port=$PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=$WORK" start >/dev/null ||
    die "server did not start: $(tail -n 1 "$WORK/server.log")"

q() { "$BIN/psql" -X -qAt -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -c "$1"; }
pgbr() { "${RUN[@]}" pgbackrest --config="$PGBR_CONF" --stanza=bench "$@"; }

if [ -z "$PGBR_SKIP" ]; then
    if ! pgbr stanza-create >"$WORK/pgbr-stanza.log" 2>&1; then
        if grep -q "version of PostgreSQL supported" "$WORK/pgbr-stanza.log"; then
            PGBR_SKIP="pgBackRest $PGBR_VERSION does not support PostgreSQL $MAJOR (rerun with PITR_BENCH_PG=15)"
        else
            PGBR_SKIP="pgbackrest stanza-create failed: $(grep -m1 ERROR "$WORK/pgbr-stanza.log" || tail -n 1 "$WORK/pgbr-stanza.log")"
        fi
        q "ALTER SYSTEM SET archive_command = 'true'" && q "SELECT pg_reload_conf()" >/dev/null
    fi
fi
[ -z "$PGBR_SKIP" ] || log "pgBackRest skipped: $PGBR_SKIP"

log "loading: pgbench -i -s $SCALE"
T0=$(now_ms)
"$BIN/pgbench" -h 127.0.0.1 -p "$PORT" -U postgres -i -q -s "$SCALE" postgres >"$WORK/pgbench-init.log" 2>&1 ||
    { log_tail "$WORK/pgbench-init.log"; die "pgbench -i failed"; }
T1=$(now_ms)
put init_ms $((T1 - T0))
q "CHECKPOINT"
q "SELECT pg_switch_wal()" >/dev/null
put db_bytes "$(q "SELECT pg_database_size('postgres')")"
put cluster_bytes "$(q "SELECT sum(pg_database_size(oid)) FROM pg_database")"
# The archiver must be idle before anything is timed (pgBackRest compresses about 600 MB of
# pgbench -i WAL, one segment per archive-push).
log "waiting for the archiver to catch up"
ok=""
for _ in $(seq 1200); do
    n=$(q "SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'")
    [ "$n" = 0 ] && { ok=1; break; }
    sleep 0.5
done
[ -n "$ok" ] || die "the archiver still had $n segments to archive after 10 minutes: $(q "SELECT last_failed_wal FROM pg_stat_archiver")"

# --- pitr stream (background) --------------------------------------------------------------------
CONN="host=127.0.0.1 port=$PORT user=postgres sslmode=disable"
log "starting pitr stream"
NO_COLOR=1 "$PITR" stream --source "$CONN" --repo "$WORK/pitr-repo" --slot pitr_bench \
    --metrics-listen off >"$WORK/pitr-stream.log" 2>&1 &
STREAM_PID=$!
ok=""
for _ in $(seq 300); do
    [ -z "$STREAM_PID" ] || kill -0 "$STREAM_PID" 2>/dev/null || { log_tail "$WORK/pitr-stream.log"; die "pitr stream exited early"; }
    n=$(q "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'pitr' AND state = 'streaming'")
    [ "$n" = 1 ] && { ok=1; break; }
    sleep 0.1
done
[ -n "$ok" ] || { log_tail "$WORK/pitr-stream.log"; die "pitr stream was not streaming after 30 s"; }
sleep 2 # let it publish its first objects before anything is timed

# --- timed commands ------------------------------------------------------------------------------
# timed NAME AS CMD...: AS is root (this script's user) or pg (the postgres OS user). Records
# NAME_ms (wall) and NAME_rss (KiB); the command's stdout goes to $WORK/NAME.out, stderr to .err.
timed() {
    local name=$1 as=$2 t0 t1 rc=0
    shift 2
    drop_caches
    log "timing $name: $*"
    t0=$(now_ms)
    if [ "$as" = pg ]; then
        "${RUN[@]}" /usr/bin/time -v -o "$WORK/$name.time" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" || rc=$?
    else
        /usr/bin/time -v -o "$WORK/$name.time" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" || rc=$?
    fi
    t1=$(now_ms)
    if [ "$rc" != 0 ]; then
        log_tail "$WORK/$name.out"
        log_tail "$WORK/$name.err"
        die "$name failed (status $rc)"
    fi
    put "${name}_ms" $((t1 - t0))
    put "${name}_rss" "$(awk -F': ' '/Maximum resident set size/ {print $2}' "$WORK/$name.time")"
    put "${name}_cpu" "$(awk -F': ' '/User time/ {u = $2} /System time/ {s = $2} END {print u + s}' "$WORK/$name.time")"
    [ -z "$STREAM_PID" ] || kill -0 "$STREAM_PID" 2>/dev/null || { log_tail "$WORK/pitr-stream.log"; die "pitr stream died during $name"; }
}
du_bytes() { du -sb "$1" | cut -f1; }
# settle NAME: NAME's figures (_ms, _cpu, _rss) are those of its median run among NAME_r1..;
# NAME_walls lists every run's wall in seconds, in round order.
settle() {
    python3 - "$RES" "$1" "$ROUNDS" >>"$RES" <<'PY'
import sys
res = dict(l.rstrip("\n").partition("=")[::2] for l in open(sys.argv[1]))
n, rounds = sys.argv[2], int(sys.argv[3])
runs = [r for r in range(1, rounds + 1) if f"{n}_r{r}_ms" in res]
walls = [int(res[f"{n}_r{r}_ms"]) for r in runs]
med = sorted(runs, key=lambda r: int(res[f"{n}_r{r}_ms"]))[len(runs) // 2]
for f in ("ms", "cpu", "rss"):
    print(f"{n}_{f}={res[f'{n}_r{med}_{f}']}")
print(f"{n}_walls={' '.join(f'{w / 1000:.2f}' for w in walls)}")
PY
}

# pg_basebackup at equal compression: client-side lz4 when this pg_basebackup has it.
if "$BIN/pg_basebackup" --help | grep -q 'client'; then
    PGBB_CLIENT=client-lz4
else
    PGBB_CLIENT=lz4
fi
put pgbb_client_mode "$PGBB_CLIENT"

PITR_BACKUP=(env NO_COLOR=1 "$PITR" backup --source "$CONN" --repo "$WORK/pitr-repo" --json)
PGBB=("$BIN/pg_basebackup" -d "$CONN" -Ft -X stream -c fast)

# Two untimed warm-up backups first, one of each tool: on this VM the first base backup after
# the load often took 2-3x as long as the next ones, whatever the tool, with the guest's page
# cache dropped each time (2026-12-03: pitr --server-compression 3.40 s first, 1.08 s right
# after; pg_basebackup server-lz4 1.17 s then 1.14 s). The warm-ups keep that from landing on
# whichever command is timed first; they do not remove the run-to-run spread (see
# BENCHMARKS.md).
log "warm-up: one untimed pg_basebackup and one untimed pitr backup (server-lz4)"
"${PGBB[@]}" -D "$WORK/pgbb-warmup" --compress=server-lz4 >"$WORK/warmup.log" 2>&1 ||
    { log_tail "$WORK/warmup.log"; die "the warm-up pg_basebackup failed"; }
rm -rf "$WORK/pgbb-warmup"
"${PITR_BACKUP[@]}" --label warm-up --server-compression >>"$WORK/warmup.log" 2>&1 ||
    { log_tail "$WORK/warmup.log"; die "the warm-up pitr backup failed"; }

# Each backup command runs ROUNDS times (PITR_BENCH_ROUNDS, default 3), the rounds in rotated
# orders; its figures are those of its median run (by wall time), and every run's wall is
# reported. The last round keeps the canonical order, with the client-lz4 pitr backup (the one
# the goals use) last before pitr stream stops, so that restoring it to `latest` places only its
# own WAL in pg_wal; the restores use the last round's backups.
HAVE_PGBB_ZSTD=""
if ldd "$BIN/pg_basebackup" 2>/dev/null | grep -q libzstd; then
    HAVE_PGBB_ZSTD=1
else
    log "pg_basebackup of PostgreSQL $MAJOR is built without zstd: no client-zstd row"
fi
backup_step() {
    local r=$1
    case $2 in
    pitr_backup_srv) timed "pitr_backup_srv_r$r" root "${PITR_BACKUP[@]}" --label "bench-server-$r" --server-compression ;;
    pgbb_server)
        rm -rf "$WORK/pgbb-server"
        timed "pgbb_server_r$r" root "${PGBB[@]}" -D "$WORK/pgbb-server" --compress=server-lz4
        ;;
    pgbb_client)
        rm -rf "$WORK/pgbb-client"
        timed "pgbb_client_r$r" root "${PGBB[@]}" -D "$WORK/pgbb-client" --compress="$PGBB_CLIENT"
        ;;
    # zstd (issue 13 §5): pitr --compress zstd (level 3) against pg_basebackup client-zstd
    # (level 3 too), where this pg_basebackup is built with zstd.
    pitr_backup_zstd) timed "pitr_backup_zstd_r$r" root "${PITR_BACKUP[@]}" --label "bench-zstd-$r" --compress zstd ;;
    pgbb_zstd)
        [ -n "$HAVE_PGBB_ZSTD" ] || return 0
        rm -rf "$WORK/pgbb-zstd"
        timed "pgbb_zstd_r$r" root "${PGBB[@]}" -D "$WORK/pgbb-zstd" --compress=client-zstd
        ;;
    pitr_backup) timed "pitr_backup_r$r" root "${PITR_BACKUP[@]}" --label "bench-client-$r" ;;
    esac
}
STEPS=(pitr_backup_srv pgbb_server pgbb_client pitr_backup_zstd pgbb_zstd pitr_backup)
for r in $(seq "$ROUNDS"); do
    order=("${STEPS[@]}")
    if [ "$r" -lt "$ROUNDS" ]; then
        k=$((r % ${#STEPS[@]}))
        order=("${STEPS[@]:$k}" "${STEPS[@]:0:$k}")
    fi
    log "backup round $r of $ROUNDS: ${order[*]}"
    for step in "${order[@]}"; do backup_step "$r" "$step"; done
done
BACKUPS=(pitr_backup_srv pgbb_server pgbb_client pitr_backup_zstd pitr_backup)
[ -z "$HAVE_PGBB_ZSTD" ] || BACKUPS+=(pgbb_zstd)
for n in "${BACKUPS[@]}"; do settle "$n"; done
[ -z "$HAVE_PGBB_ZSTD" ] || put pgbb_zstd_bytes "$(du_bytes "$WORK/pgbb-zstd")"
for n in client server; do
    put "pgbb_${n}_bytes" "$(du_bytes "$WORK/pgbb-$n")"
    put "pgbb_${n}_base" "$(stat -c %s "$WORK/pgbb-$n"/base.tar*)"
    put "pgbb_${n}_wal" "$(stat -c %s "$WORK/pgbb-$n"/pg_wal.tar*)"
done
for n in pitr_backup pitr_backup_srv pitr_backup_zstd; do
    python3 - "$WORK/${n}_r$ROUNDS.out" "$n" >>"$RES" <<'PY'
import json, sys
text = open(sys.argv[1]).read()
j = json.loads(text[text.index("{"):])
n = sys.argv[2]
print(f"{n}_id={j['id']}")
print(f"{n}_bytes={j['bytes']}")
print(f"{n}_stored={j['stored_bytes']}")
PY
done
# Repo size of each backup on disk (chunks + manifest + catalog entry).
# shellcheck disable=SC1090
. <(grep -E '^pitr_backup(_srv|_zstd)?_id=' "$RES")
put pitr_backup_du "$(du_bytes "$WORK/pitr-repo/backups/$pitr_backup_id")"
put pitr_backup_srv_du "$(du_bytes "$WORK/pitr-repo/backups/$pitr_backup_srv_id")"
put pitr_backup_zstd_du "$(du_bytes "$WORK/pitr-repo/backups/$pitr_backup_zstd_id")"

# pitr stream is no longer needed: stop it (must exit 0 on SIGTERM) so that the WAL of later
# commands stays out of the repo and the rest runs without it.
put stream_hwm "$(awk '/^VmHWM:/ {print $2}' "/proc/$STREAM_PID/status")"
kill -TERM "$STREAM_PID"
rc=0
wait "$STREAM_PID" || rc=$?
STREAM_PID=""
[ "$rc" = 0 ] || { log_tail "$WORK/pitr-stream.log"; die "pitr stream exited with status $rc on SIGTERM"; }
put wal_du "$(du_bytes "$WORK/pitr-repo/wal")"

if [ -z "$PGBR_SKIP" ]; then
    timed pgbr_backup pg pgbackrest --config="$PGBR_CONF" --stanza=bench --type=full backup
    put pgbr_backup_bytes "$(du_bytes "$WORK/pgbr-repo/backup/bench")"
fi

PITR_RESTORE=(env NO_COLOR=1 "$PITR" restore --repo "$WORK/pitr-repo" --to latest)
# ROUNDS rounds of the restores too (the directories of the last one are kept and checked).
RESTORES=(pitr_restore pitr_restore_srv pitr_restore_zstd)
[ -n "$PGBR_SKIP" ] || RESTORES+=(pgbr_restore)
for r in $(seq "$ROUNDS"); do
    rm -rf "$WORK/restored-pitr" "$WORK/restored-pitr-srv" "$WORK/restored-pitr-zstd" "$WORK/restored-pgbr"
    log "restore round $r of $ROUNDS"
    timed "pitr_restore_r$r" root "${PITR_RESTORE[@]}" --backup "$pitr_backup_id" -D "$WORK/restored-pitr"
    timed "pitr_restore_srv_r$r" root "${PITR_RESTORE[@]}" --backup "$pitr_backup_srv_id" -D "$WORK/restored-pitr-srv"
    timed "pitr_restore_zstd_r$r" root "${PITR_RESTORE[@]}" --backup "$pitr_backup_zstd_id" -D "$WORK/restored-pitr-zstd"
    if [ -z "$PGBR_SKIP" ]; then
        "${RUN[@]}" mkdir -m 700 "$WORK/restored-pgbr"
        timed "pgbr_restore_r$r" pg pgbackrest --config="$PGBR_CONF" --stanza=bench --process-max=2 restore \
            --pg1-path="$WORK/restored-pgbr"
    fi
done
for n in "${RESTORES[@]}"; do settle "$n"; done
put pitr_restore_du "$(du_bytes "$WORK/restored-pitr")"
put pitr_restore_wal "$(find "$WORK/restored-pitr/pg_wal" -maxdepth 1 -type f -name '0*' | wc -l)"
put pitr_restore_srv_du "$(du_bytes "$WORK/restored-pitr-srv")"
put pitr_restore_srv_wal "$(find "$WORK/restored-pitr-srv/pg_wal" -maxdepth 1 -type f -name '0*' | wc -l)"
put pitr_restore_zstd_du "$(du_bytes "$WORK/restored-pitr-zstd")"
put pitr_restore_zstd_wal "$(find "$WORK/restored-pitr-zstd/pg_wal" -maxdepth 1 -type f -name '0*' | wc -l)"
[ -n "$PGBR_SKIP" ] || put pgbr_restore_du "$(du_bytes "$WORK/restored-pgbr")"
DIRS=(restored-pitr restored-pitr-srv restored-pitr-zstd)
[ -n "$PGBR_SKIP" ] || DIRS+=(restored-pgbr)
for d in "${DIRS[@]}"; do
    [ -s "$WORK/$d/PG_VERSION" ] && [ -s "$WORK/$d/global/pg_control" ] || die "$d is not a data directory"
done

# --- report --------------------------------------------------------------------------------------
mkdir -p "$ROOT/benches/results"
OUTFILE=$ROOT/benches/results/backup-restore-$(date -u +%Y-%m-%d).txt
put load_end "$(cut -d' ' -f1-3 /proc/loadavg)"
put pg "$PGVER"
put commit "$CODE"
put pgbr_version "${PGBR_VERSION:--}"
put pgbr_skip "$PGBR_SKIP"
put cache "$CACHE_STATE"
put cpus "$(nproc)"
put scale "$SCALE"
put rounds "$ROUNDS"
python3 - "$RES" >"$WORK/report.txt" <<'PY'
import sys

res = {}
for line in open(sys.argv[1]):
    k, _, v = line.rstrip("\n").partition("=")
    res[k] = v
def i(k): return int(res[k])
def has(k): return k in res

skip = res["pgbr_skip"]
MB = 1e6
print(f"pitr backup/restore vs pg_basebackup and pgBackRest: PostgreSQL {res['pg']}, pitr {res['commit']}, "
      f"pgBackRest {res['pgbr_version']}")
print(f"machine: {res['cpus']} CPUs, {int(open('/proc/meminfo').readline().split()[1]) / 2**20:.0f} GiB; "
      f"page cache: {res['cache']}; load average at start {res['load_start']}, at end {res['load_end']}")
print(f"data: pgbench -i -s {res['scale']} ({i('init_ms') / 1000:.1f} s): database {i('db_bytes') / MB:,.0f} MB, "
      f"cluster {i('cluster_bytes') / MB:,.0f} MB")
if skip:
    print(f"pgBackRest: SKIPPED: {skip}")
print()

def pgbb(n):
    return (f"{i(f'pgbb_{n}_bytes') / MB:,.1f} MB: base.tar.lz4 {i(f'pgbb_{n}_base') / MB:,.1f} + "
            f"pg_wal.tar {i(f'pgbb_{n}_wal') / MB:,.1f} (not compressed) + manifest")
rows = [
    ("backup", "pitr backup (client lz4)", "pitr_backup",
     f"{i('pitr_backup_du') / MB:,.1f} MB in repo (+ its WAL, archived by pitr stream)"),
    ("backup", "pg_basebackup -Ft -X stream -c fast --compress=" + res["pgbb_client_mode"], "pgbb_client", pgbb("client")),
    ("backup", "pitr backup --server-compression", "pitr_backup_srv", f"{i('pitr_backup_srv_du') / MB:,.1f} MB in repo"),
    ("backup", "pg_basebackup -Ft -X stream -c fast --compress=server-lz4", "pgbb_server", pgbb("server")),
    ("backup", "pitr backup --compress zstd (level 3)", "pitr_backup_zstd",
     f"{i('pitr_backup_zstd_du') / MB:,.1f} MB in repo"),
]
if has("pgbb_zstd_ms"):
    rows.append(("backup", "pg_basebackup -Ft -X stream -c fast --compress=client-zstd (level 3)", "pgbb_zstd",
                 f"{i('pgbb_zstd_bytes') / MB:,.1f} MB (pg_wal.tar not compressed)"))
if has("pgbr_backup_ms"):
    rows.append(("backup", "pgbackrest backup --type=full (lz4, process-max 2)", "pgbr_backup",
                 f"{i('pgbr_backup_bytes') / MB:,.1f} MB in repo"))
rows += [
    ("restore", "pitr restore --to latest (client-lz4 backup)", "pitr_restore",
     f"{i('pitr_restore_du') / MB:,.1f} MB written, {i('pitr_restore_wal')} WAL segments in pg_wal"),
    ("restore", "pitr restore --to latest (server-lz4 backup)", "pitr_restore_srv",
     f"{i('pitr_restore_srv_du') / MB:,.1f} MB written, {i('pitr_restore_srv_wal')} WAL segments in pg_wal"),
    ("restore", "pitr restore --to latest (zstd backup)", "pitr_restore_zstd",
     f"{i('pitr_restore_zstd_du') / MB:,.1f} MB written, {i('pitr_restore_zstd_wal')} WAL segments in pg_wal"),
]
if has("pgbr_restore_ms"):
    rows.append(("restore", "pgbackrest --process-max=2 restore (lz4)", "pgbr_restore",
                 f"{i('pgbr_restore_du') / MB:,.1f} MB written, WAL left to restore_command"))

print(f"wall, CPU and RSS: the median of {res['rounds']} runs by wall time (every run's wall in the last column;")
print("backups in rotated orders); pgBackRest's backup runs once, for context.")
print()
print("| step | command | wall (s) | CPU user+sys (s) | peak RSS (MiB) | size | runs (s) |")
print("|---|---|---|---|---|---|---|")
for step, label, k, size in rows:
    print(f"| {step} | {label} | {i(k + '_ms') / 1000:.2f} | {float(res[k + '_cpu']):.2f} | "
          f"{i(k + '_rss') / 1024:.1f} | {size} | {res.get(k + '_walls', '-')} |")
print()
print(f"pitr backup: {i('pitr_backup_bytes') / MB:,.0f} MB of tar stored as {i('pitr_backup_stored') / MB:,.1f} MB "
      f"(client lz4), {i('pitr_backup_srv_stored') / MB:,.1f} MB (server lz4); its WAL is in the repo's wal/ "
      f"({i('wal_du') / MB:,.1f} MB on disk for the whole run)")
print(f"pitr stream (background during the pitr and pg_basebackup backups) peak RSS: {i('stream_hwm') / 1024:.1f} MiB")
print("CPU and peak RSS: /usr/bin/time -v, for the command and its children only (not the server's")
print("walsender). Peak RSS is the largest single process: pgBackRest's local worker processes are")
print("separate processes, their memory is not summed; their CPU is.")

def r(a, b): return i(a + "_ms") / i(b + "_ms")
print()
print("ratios (pitr / peer, wall):")
print(f"  backup, client lz4: pitr / pg_basebackup          {r('pitr_backup', 'pgbb_client'):.2f}x")
print(f"  backup, server lz4: pitr / pg_basebackup          {r('pitr_backup_srv', 'pgbb_server'):.2f}x")
if has("pgbr_backup_ms"):
    print(f"  backup: pitr (client lz4) / pgbackrest backup     {r('pitr_backup', 'pgbr_backup'):.2f}x")
if has("pgbr_restore_ms"):
    print(f"  restore: pitr / pgbackrest restore                {r('pitr_restore', 'pgbr_restore'):.2f}x")
    print(f"  restore (server-lz4 backup): pitr / pgbackrest    {r('pitr_restore_srv', 'pgbr_restore'):.2f}x")
if has("pgbb_zstd_ms"):
    print(f"  backup, zstd: pitr / pg_basebackup client-zstd    {r('pitr_backup_zstd', 'pgbb_zstd'):.2f}x")
print()
print("zstd (level 3) against lz4, pitr, same data (zstd / lz4):")
print(f"  stored bytes   {i('pitr_backup_zstd_stored') / i('pitr_backup_stored'):.2f}x "
      f"(compression ratio: lz4 {i('pitr_backup_bytes') / i('pitr_backup_stored'):.2f}, "
      f"zstd {i('pitr_backup_zstd_bytes') / i('pitr_backup_zstd_stored'):.2f})")
print(f"  backup wall    {r('pitr_backup_zstd', 'pitr_backup'):.2f}x; backup CPU "
      f"{float(res['pitr_backup_zstd_cpu']) / max(float(res['pitr_backup_cpu']), 0.01):.2f}x")
print(f"  restore wall   {r('pitr_restore_zstd', 'pitr_restore'):.2f}x; restore CPU "
      f"{float(res['pitr_restore_zstd_cpu']) / max(float(res['pitr_restore_cpu']), 0.01):.2f}x")

print()
print("goals:")
def goal(ok, text): print(f"  {'PASS' if ok else 'FAIL'}  {text}")
b = r("pitr_backup", "pgbb_client")
goal(b <= 0.8, f"backup wall <= 0.80x pg_basebackup at equal compression (--compress={res['pgbb_client_mode']}): "
     f"{i('pitr_backup_ms') / 1000:.2f} s vs {i('pgbb_client_ms') / 1000:.2f} s = {b:.2f}x")
bs = r("pitr_backup_srv", "pgbb_server")
goal(bs <= 1.0, f"backup wall <= 1.0x pg_basebackup, server lz4: "
     f"{i('pitr_backup_srv_ms') / 1000:.2f} s vs {i('pgbb_server_ms') / 1000:.2f} s = {bs:.2f}x")
if has("pgbr_restore_ms"):
    rr = r("pitr_restore", "pgbr_restore")
    goal(rr <= 0.35, f"restore wall <= 0.35x pgbackrest restore: {i('pitr_restore_ms') / 1000:.2f} s vs "
         f"{i('pgbr_restore_ms') / 1000:.2f} s = {rr:.2f}x")
else:
    print(f"  n/a   restore wall <= 0.35x pgbackrest restore: not measured ({skip})")
peak = max(i(k + "_rss") for k in ("pitr_backup", "pitr_restore", "pitr_backup_srv", "pitr_restore_srv",
                                   "pitr_backup_zstd", "pitr_restore_zstd")) / 1024
goal(peak <= 128, f"peak RSS <= 128 MiB for backup and restore: backup {i('pitr_backup_rss') / 1024:.1f} MiB, "
     f"restore {i('pitr_restore_rss') / 1024:.1f} MiB (server-lz4: {i('pitr_backup_srv_rss') / 1024:.1f} / "
     f"{i('pitr_restore_srv_rss') / 1024:.1f} MiB; zstd: {i('pitr_backup_zstd_rss') / 1024:.1f} / "
     f"{i('pitr_restore_zstd_rss') / 1024:.1f} MiB)")
PY
{
    echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ)  PITR_BENCH_SCALE=$SCALE PITR_BENCH_PG=$MAJOR ./benches/$ME.sh"
    cat "$WORK/report.txt"
} >>"$OUTFILE"
echo
cat "$WORK/report.txt"
echo
log "saved to ${OUTFILE#"$ROOT"/}"
