#!/usr/bin/env bash
# Client-side encryption on versus off, in one run (BENCHMARKS.md, issue 12).
#
# One throwaway PostgreSQL server (wal_level replica, fsync on) and three key modes, all on the
# same data in the same run:
#   plain      no key
#   symmetric  --encryption-key-file (pitr key generate)
#   recipient  --recipient age1... (write-only) for stream and backup, --identity for restore
#              (pitr key generate --recipient)
# Measured, each REPS times per mode (median reported), in a rotated order (plain, symmetric,
# recipient; then symmetric, recipient, plain; ...) so that drift on a shared machine falls on
# every mode alike:
#   stream   `pitr stream` into a new local repo archives a fixed volume of WAL: physical slots
#            are created (reserving WAL) before `pgbench -i -s SCALE`, and each run starts from
#            its own slot and is done when pg_stat_replication's flush_lsn reaches the end of that
#            WAL (a pg_switch_wal() after the load). CPU = user + sys of the pitr process
#            (/proc/PID/stat) at that moment, per GB (1e9 bytes) of WAL from the slot's segment;
#            peak RSS = VmHWM.
#   backup   `pitr backup` (client lz4, the default) while one `pitr stream` per mode runs into
#            that mode's repo: wall, CPU and peak RSS from /usr/bin/time -v.
#   restore  `pitr restore --to latest --backup <that mode's last backup> -D DIR` (repo to ready
#            directory, no --verify), streams stopped: wall, CPU and peak RSS from /usr/bin/time -v.
# Goals (issue 12), encrypted / plain of the medians: CPU per GB archived <= 1.15x; backup and
# restore wall <= 1.10x; peak RSS <= 1.10x (stream, backup, restore).
#
# The page cache is dropped (sync; echo 3 > /proc/sys/vm/drop_caches) before each timed command
# when that file is writable (root on a VM), otherwise every figure is warm-cache and says so.
# The load average is printed at the start and before each phase: wall times on a shared machine
# move with it.
#
# Settings (environment):
#   PITR_BENCH_SCALE      pgbench -i -s (default 50; SCALE is accepted too)
#   PITR_BENCH_REPS       runs of each measure per mode (default 3)
#   PITR_BENCH_PG         PostgreSQL major under .cache/pg (default 17)
#   PITR_BENCH_KEEP=1     keep the temporary directory (server, repos, logs)
#   PITR_BENCH_DROP_CACHES=0  never drop the page cache (warm-cache figures)
#   PITR_BENCH_NO_BUILD=1 use the existing ${CARGO_TARGET_DIR:-target}/release/pitr (no cargo build)
#   CARGO_TARGET_DIR      where cargo builds pitr (default target/)
# Prints a results table, ratios and goals, and appends them with every run's figures to
# benches/results/encryption-on-off-DATE.txt.
# Exit status 0 whatever the figures; non-zero with a one-line error if something broke.
set -Eeuo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SCALE=${PITR_BENCH_SCALE:-${SCALE:-50}}
REPS=${PITR_BENCH_REPS:-3}
MAJOR=${PITR_BENCH_PG:-17}
ME=encryption-on-off
MODES=(plain symmetric recipient)

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
for t in initdb pg_ctl postgres pgbench psql; do
    [ -x "$BIN/$t" ] || die "$BIN/$t missing (run scripts/install-test-deps.sh)"
done
[ -x /usr/bin/time ] || die "/usr/bin/time (GNU time) is needed: apt-get install time"
command -v python3 >/dev/null || die "python3 is needed"
HZ=$(getconf CLK_TCK)

RUN=()
if [ "$(id -u)" = 0 ]; then
    # initdb refuses root: the server runs as the postgres OS user.
    id postgres >/dev/null 2>&1 || die "running as root needs a 'postgres' OS user (scripts/install-test-deps.sh creates it)"
    RUN=(runuser -u postgres --)
fi

DROP=""
if [ "${PITR_BENCH_DROP_CACHES:-1}" = 0 ]; then
    CACHE_STATE="warm (PITR_BENCH_DROP_CACHES=0)"
elif [ -w /proc/sys/vm/drop_caches ] && (sync && echo 3 >/proc/sys/vm/drop_caches) 2>/dev/null; then
    DROP=1
    CACHE_STATE="cold (page cache dropped before each timed command)"
else
    CACHE_STATE="warm (cannot drop the page cache here)"
fi
drop_caches() {
    sync
    if [ -n "$DROP" ]; then echo 3 >/proc/sys/vm/drop_caches; fi
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port)

WORK=$(mktemp -d /tmp/pitr-bench-enc.XXXXXX)
chmod 755 "$WORK"
PGDATA=$WORK/data
STREAM_PIDS=()

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
    for p in "${STREAM_PIDS[@]}"; do stop_pid "$p" TERM; done
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
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
put load_start "$(loadavg)"
T_START=$(now_ms)

# The modes' key options: for writing (stream, backup) and for reading (restore).
"$PITR" key generate >"$WORK/symmetric.key"
chmod 600 "$WORK/symmetric.key"
"$PITR" key generate --recipient >"$WORK/identity.key" 2>"$WORK/recipient.err"
chmod 600 "$WORK/identity.key"
RECIPIENT=$(sed -n 's/^# public key: *//p' "$WORK/identity.key")
[ -n "$RECIPIENT" ] || die "pitr key generate --recipient printed no '# public key:' line"
write_opts() { # mode -> options of stream and backup
    case $1 in
    plain) ;;
    symmetric) echo "--encryption-key-file $WORK/symmetric.key" ;;
    recipient) echo "--recipient $RECIPIENT" ;;
    esac
}
read_opts() { # mode -> options of restore
    case $1 in
    plain) ;;
    symmetric) echo "--encryption-key-file $WORK/symmetric.key" ;;
    recipient) echo "--identity $WORK/identity.key" ;;
    esac
}
# Rep k (0-based) runs the modes rotated by k.
order() {
    local k=$1 n=${#MODES[@]} j
    for ((j = 0; j < n; j++)); do echo "${MODES[$(((j + k) % n))]}"; done
}

# --- server ------------------------------------------------------------------------------------
[ "${#RUN[@]}" = 0 ] || chown postgres: "$WORK"
PGVER=$("$BIN/postgres" --version | awk '{print $3}')
log "PostgreSQL $PGVER on 127.0.0.1:$PORT, data in $PGDATA"
"${RUN[@]}" "$BIN/initdb" -D "$PGDATA" -A trust -U postgres -E UTF8 --no-locale -N >"$WORK/initdb.log" 2>&1 ||
    die "initdb failed: $(tail -n 1 "$WORK/initdb.log")"
cat >>"$PGDATA/postgresql.conf" <<EOF
wal_level = replica
max_wal_senders = 20
max_replication_slots = 30
max_wal_size = 4GB
EOF
"${RUN[@]}" "$BIN/pg_ctl" -D "$PGDATA" -w -t 60 -l "$WORK/server.log" \
    -o "-c port=$PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=$WORK" start >/dev/null ||
    die "server did not start: $(tail -n 1 "$WORK/server.log")"

q() { "$BIN/psql" -X -qAt -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -c "$1"; }
CONN="host=127.0.0.1 port=$PORT user=postgres sslmode=disable"

# One slot per stream run, reserving WAL from before the load.
q "SELECT pg_switch_wal()" >/dev/null
for m in "${MODES[@]}"; do
    for ((k = 0; k < REPS; k++)); do
        q "SELECT 1 FROM pg_create_physical_replication_slot('enc_${m}_$k', true)" >/dev/null
    done
done
SLOT_LSN=$(q "SELECT min(pg_wal_lsn_diff(restart_lsn, '0/0'))::bigint FROM pg_replication_slots WHERE slot_name LIKE 'enc\\_%'")
SEG=$(q "SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'")
WAL_FROM=$((SLOT_LSN / SEG * SEG)) # pitr starts streaming at the segment's start

log "loading: pgbench -i -s $SCALE"
T0=$(now_ms)
"$BIN/pgbench" -h 127.0.0.1 -p "$PORT" -U postgres -i -q -s "$SCALE" postgres >"$WORK/pgbench-init.log" 2>&1 ||
    { log_tail "$WORK/pgbench-init.log"; die "pgbench -i failed"; }
put init_ms $(($(now_ms) - T0))
q "CHECKPOINT"
q "SELECT pg_switch_wal()" >/dev/null
WAL_END=$(q "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint")
put wal_bytes $((WAL_END - WAL_FROM))
put db_bytes "$(q "SELECT pg_database_size('postgres')")"

# --- timed commands ------------------------------------------------------------------------------
# timed NAME CMD...: records NAME_ms (wall), NAME_rss (KiB), NAME_cpu (s); stdout to $WORK/NAME.out.
timed() {
    local name=$1 t0 t1 rc=0 p
    shift
    drop_caches
    log "timing $name"
    t0=$(now_ms)
    /usr/bin/time -v -o "$WORK/$name.time" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" || rc=$?
    t1=$(now_ms)
    if [ "$rc" != 0 ]; then
        log_tail "$WORK/$name.out"
        log_tail "$WORK/$name.err"
        die "$name failed (status $rc): $*"
    fi
    put "${name}_ms" $((t1 - t0))
    put "${name}_rss" "$(awk -F': ' '/Maximum resident set size/ {print $2}' "$WORK/$name.time")"
    put "${name}_cpu" "$(awk -F': ' '/User time/ {u = $2} /System time/ {s = $2} END {print u + s}' "$WORK/$name.time")"
    for p in "${STREAM_PIDS[@]}"; do
        kill -0 "$p" 2>/dev/null || die "a background pitr stream died during $name (logs in $WORK/bg-*.log)"
    done
}
cpu_ticks() { # pid -> utime + stime (fields 14 and 15 of /proc/PID/stat, all threads)
    local s
    s=$(cat "/proc/$1/stat")
    s=${s##*") "}
    # shellcheck disable=SC2086
    set -- $s
    echo $((${12} + ${13}))
}
du_bytes() { du -sb "$1" | cut -f1; }
flushed() { # -> flush_lsn (bytes) of the one pitr stream attached, or 0
    q "SELECT COALESCE(max(pg_wal_lsn_diff(flush_lsn, '0/0'))::bigint, 0) FROM pg_stat_replication WHERE application_name = 'pitr'"
}

# --- stream: the same WAL archived by each mode --------------------------------------------------
put load_stream "$(loadavg)"
for ((k = 0; k < REPS; k++)); do
    for m in $(order "$k"); do
        name=stream_${m}_$k
        repo=$WORK/repo-$name
        # shellcheck disable=SC2046
        set -- env NO_COLOR=1 "$PITR" stream --source "$CONN" --repo "$repo" --slot "enc_${m}_$k" \
            --metrics-listen off $(write_opts "$m")
        drop_caches
        log "timing $name"
        t0=$(now_ms)
        "$@" >"$WORK/$name.log" 2>&1 &
        pid=$!
        STREAM_PIDS=("$pid")
        while :; do
            kill -0 "$pid" 2>/dev/null || { log_tail "$WORK/$name.log"; die "$name exited early"; }
            [ "$(flushed)" -ge "$WAL_END" ] && break
            (($(now_ms) - t0 < 600000)) || { log_tail "$WORK/$name.log"; die "$name did not archive the WAL within 10 minutes"; }
            sleep 0.1
        done
        put "${name}_ms" $(($(now_ms) - t0))
        put "${name}_ticks" "$(cpu_ticks "$pid")"
        put "${name}_rss" "$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status")"
        kill -TERM "$pid"
        rc=0
        wait "$pid" || rc=$?
        STREAM_PIDS=()
        [ "$rc" = 0 ] || { log_tail "$WORK/$name.log"; die "$name exited with status $rc on SIGTERM"; }
        put "${name}_du" "$(du_bytes "$repo/wal")"
        [ -n "${PITR_BENCH_KEEP:-}" ] || rm -rf "$repo"
        q "SELECT pg_drop_replication_slot('enc_${m}_$k')" >/dev/null
    done
done

# --- backup: one repo per mode, each with its own pitr stream running ----------------------------
for m in "${MODES[@]}"; do
    # shellcheck disable=SC2046
    NO_COLOR=1 "$PITR" stream --source "$CONN" --repo "$WORK/repo-$m" --slot "bg_$m" \
        --metrics-listen off $(write_opts "$m") >"$WORK/bg-$m.log" 2>&1 &
    STREAM_PIDS+=($!)
done
ok=""
for _ in $(seq 300); do
    for p in "${STREAM_PIDS[@]}"; do
        kill -0 "$p" 2>/dev/null || { for m in "${MODES[@]}"; do log_tail "$WORK/bg-$m.log"; done; die "a background pitr stream exited early"; }
    done
    n=$(q "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'pitr' AND state = 'streaming'")
    [ "$n" = "${#MODES[@]}" ] && { ok=1; break; }
    sleep 0.1
done
[ -n "$ok" ] || die "the background pitr streams were not all streaming after 30 s"
sleep 2 # let them publish their first objects before anything is timed

put load_backup "$(loadavg)"
for ((k = 0; k < REPS; k++)); do
    for m in $(order "$k"); do
        # shellcheck disable=SC2046
        timed "backup_${m}_$k" env NO_COLOR=1 "$PITR" backup --source "$CONN" --repo "$WORK/repo-$m" \
            --json --label "bench-$k" $(write_opts "$m")
        python3 - "$WORK/backup_${m}_$k.out" "backup_${m}_$k" >>"$RES" <<'PY'
import json, sys
text = open(sys.argv[1]).read()
j = json.loads(text[text.index("{"):])
print(f"{sys.argv[2]}_id={j['id']}")
print(f"{sys.argv[2]}_bytes={j['bytes']}")
print(f"{sys.argv[2]}_stored={j['stored_bytes']}")
PY
    done
done
for p in "${STREAM_PIDS[@]}"; do
    kill -TERM "$p"
    rc=0
    wait "$p" || rc=$?
    [ "$rc" = 0 ] || die "a background pitr stream exited with status $rc on SIGTERM"
done
STREAM_PIDS=()

# --- restore: each mode's last backup, to a ready directory -------------------------------------
put load_restore "$(loadavg)"
last=$((REPS - 1))
for ((k = 0; k < REPS; k++)); do
    for m in $(order "$k"); do
        id=$(sed -n "s/^backup_${m}_${last}_id=//p" "$RES")
        dir=$WORK/restored
        rm -rf "$dir"
        # shellcheck disable=SC2046
        timed "restore_${m}_$k" env NO_COLOR=1 "$PITR" restore --repo "$WORK/repo-$m" --to latest \
            --backup "$id" -D "$dir" $(read_opts "$m")
        [ -s "$dir/PG_VERSION" ] && [ -s "$dir/global/pg_control" ] || die "restore_${m}_$k: not a data directory"
        put "restore_${m}_${k}_du" "$(du_bytes "$dir")"
        rm -rf "$dir"
    done
done

# --- report --------------------------------------------------------------------------------------
mkdir -p "$ROOT/benches/results"
OUTFILE=$ROOT/benches/results/$ME-$(date -u +%Y-%m-%d).txt
put load_end "$(loadavg)"
put total_s $((($(now_ms) - T_START) / 1000))
put pg "$PGVER"
put commit "$CODE"
put cache "$CACHE_STATE"
put cpus "$(nproc)"
put scale "$SCALE"
put reps "$REPS"
put hz "$HZ"
python3 - "$RES" >"$WORK/report.txt" <<'PY'
import statistics, sys

res = {}
for line in open(sys.argv[1]):
    k, _, v = line.rstrip("\n").partition("=")
    res[k] = v
reps, hz = int(res["reps"]), int(res["hz"])
modes = ["plain", "symmetric", "recipient"]
labels = {"plain": "plain", "symmetric": "symmetric key", "recipient": "recipient (write-only)"}
wal = int(res["wal_bytes"])
MB, MiB = 1e6, 2**20

def runs(fn, m): return [fn(m, k) for k in range(reps)]
def f(key): return float(res[key])
measures = {
    "stream_cpu_gb": lambda m, k: int(res[f"stream_{m}_{k}_ticks"]) / hz / (wal / 1e9),
    "stream_rss": lambda m, k: f(f"stream_{m}_{k}_rss") / 1024,
    "stream_s": lambda m, k: f(f"stream_{m}_{k}_ms") / 1000,
    "stream_du": lambda m, k: f(f"stream_{m}_{k}_du") / MB,
    "backup_s": lambda m, k: f(f"backup_{m}_{k}_ms") / 1000,
    "backup_cpu_gb": lambda m, k: f(f"backup_{m}_{k}_cpu") / (f(f"backup_{m}_{k}_bytes") / 1e9),
    "backup_rss": lambda m, k: f(f"backup_{m}_{k}_rss") / 1024,
    "backup_stored": lambda m, k: f(f"backup_{m}_{k}_stored") / MB,
    "restore_s": lambda m, k: f(f"restore_{m}_{k}_ms") / 1000,
    "restore_cpu": lambda m, k: f(f"restore_{m}_{k}_cpu"),
    "restore_rss": lambda m, k: f(f"restore_{m}_{k}_rss") / 1024,
}
med = {(name, m): statistics.median(runs(fn, m)) for name, fn in measures.items() for m in modes}
allruns = {(name, m): runs(fn, m) for name, fn in measures.items() for m in modes}

print(f"pitr encryption on vs off: PostgreSQL {res['pg']}, pitr {res['commit']}")
print(f"machine: {res['cpus']} CPUs, {int(open('/proc/meminfo').readline().split()[1]) / 2**20:.0f} GiB; "
      f"page cache: {res['cache']}")
print(f"load average (1/5/15 min): start {res['load_start']}, stream phase {res['load_stream']}, "
      f"backup phase {res['load_backup']}, restore phase {res['load_restore']}, end {res['load_end']}")
print(f"data: pgbench -i -s {res['scale']} ({int(res['init_ms']) / 1000:.1f} s): database "
      f"{int(res['db_bytes']) / MB:,.0f} MB; WAL archived by each stream run {wal / MB:,.0f} MB; "
      f"{reps} runs of each measure per mode, rotated order; medians; whole run {res['total_s']} s")
print()
print("| measure (median of %d) | %s | %s / plain | %s / plain |" % (
    reps, " | ".join(labels[m] for m in modes), labels["symmetric"], labels["recipient"]))
print("|---|---|---|---|---|---|")
rows = [
    ("stream: CPU s per GB of WAL", "stream_cpu_gb", "{:.2f}"),
    ("stream: peak RSS (MiB)", "stream_rss", "{:.1f}"),
    ("stream: wall to archive the WAL (s)", "stream_s", "{:.2f}"),
    ("stream: WAL on disk (MB)", "stream_du", "{:,.1f}"),
    ("backup: wall (s)", "backup_s", "{:.2f}"),
    ("backup: CPU s per GB of database", "backup_cpu_gb", "{:.2f}"),
    ("backup: peak RSS (MiB)", "backup_rss", "{:.1f}"),
    ("backup: stored (MB)", "backup_stored", "{:,.1f}"),
    ("restore: wall (s)", "restore_s", "{:.2f}"),
    ("restore: CPU user+sys (s)", "restore_cpu", "{:.2f}"),
    ("restore: peak RSS (MiB)", "restore_rss", "{:.1f}"),
]
def ratio(name, m): return med[(name, m)] / med[(name, "plain")]
for label, name, fmt in rows:
    vals = " | ".join(fmt.format(med[(name, m)]) for m in modes)
    print(f"| {label} | {vals} | {ratio(name, 'symmetric'):.3f}x | {ratio(name, 'recipient'):.3f}x |")
print()
print("every run (in the order of the runs: rep k ran the modes rotated by k):")
for label, name, fmt in rows:
    print(f"  {label}: " + "; ".join(
        f"{m} " + " ".join(fmt.format(v) for v in allruns[(name, m)]) for m in modes))
print()
print("stream CPU and RSS: /proc/PID/stat (utime + stime) and VmHWM of the pitr process when")
print("pg_stat_replication's flush_lsn reached the end of the WAL (start-up included). backup and")
print("restore: /usr/bin/time -v (wall from start to exit, CPU user + sys, Maximum resident set size).")
print()
print("goals (encrypted / plain, medians):")
def goal(label, name, limit):
    for m in ("symmetric", "recipient"):
        r = ratio(name, m)
        print(f"  {'PASS' if r <= limit else 'MISS'}  {label} <= {limit:.2f}x, {labels[m]}: {r:.3f}x "
              f"({med[(name, m)]:.2f} vs {med[(name, 'plain')]:.2f})")
goal("stream CPU per GB archived", "stream_cpu_gb", 1.15)
goal("backup CPU per GB archived", "backup_cpu_gb", 1.15)
goal("backup wall", "backup_s", 1.10)
goal("restore wall", "restore_s", 1.10)
goal("stream peak RSS", "stream_rss", 1.10)
goal("backup peak RSS", "backup_rss", 1.10)
goal("restore peak RSS", "restore_rss", 1.10)
PY
{
    echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ)  PITR_BENCH_SCALE=$SCALE PITR_BENCH_REPS=$REPS PITR_BENCH_PG=$MAJOR ./benches/$ME.sh"
    cat "$WORK/report.txt"
    echo
} >>"$OUTFILE"
echo
cat "$WORK/report.txt"
echo
log "saved to ${OUTFILE#"$ROOT"/}"
