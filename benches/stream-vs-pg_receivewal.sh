#!/usr/bin/env bash
# `pitr stream` against PostgreSQL's own pg_receivewal, in one run (BENCHMARKS.md).
#
# One throwaway PostgreSQL 17 server; three WAL consumers attached to it at the same time, each
# with its own physical slot, so all three receive the same WAL during the same load:
#   pitr            pitr stream into a local directory repo (lz4), --partial-every as below
#   rw-sync         pg_receivewal --synchronous (fsync after every write, flush reported at once)
#   rw-async        pg_receivewal without --synchronous (fsync per segment, status every 1 s)
# Load: pgbench -i -s SCALE, then pgbench -c 4 -j 2 -T SECONDS -N.
# Measured per consumer over the same window (after all three are streaming, until each has
# the load's last byte): CPU (user+sys, /proc/PID/stat) per GB (1e9 bytes) of WAL received,
# peak RSS (VmHWM), flush_lag and byte lag from pg_stat_replication sampled once a second
# during the load, catch-up time after the load, archive size on disk (du), and pitr's PUTs
# (pitr_uploads_total) per minute under load and during an idle period after it.
# Ratios and goals compare pitr with pg_receivewal --synchronous (rw-sync): like pitr (--ack
# repo), it reports WAL as flushed as soon as it is durable; plain pg_receivewal reports flush
# only at segment ends, so its flush_lag is not comparable (its CPU ratio is printed too).
#
# Settings (environment):
#   PITR_BENCH_PARTIAL_EVERY  pitr --partial-every (default 200ms, pitr's default)
#   PITR_BENCH_SECONDS        pgbench -T (default 60)
#   PITR_BENCH_SCALE          pgbench -i -s (default 50)
#   PITR_BENCH_IDLE_SECONDS   the idle period after the load (default 30)
#   PITR_BENCH_PG             PostgreSQL major under .cache/pg (default 17)
#   PITR_BENCH_KEEP=1         keep the temporary directory (server, archives, logs, samples)
# Exit status 0 whatever the figures; non-zero with a one-line error if something broke.
set -Eeuo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PARTIAL=${PITR_BENCH_PARTIAL_EVERY:-200ms}
SECS=${PITR_BENCH_SECONDS:-60}
SCALE=${PITR_BENCH_SCALE:-50}
MAJOR=${PITR_BENCH_PG:-17}
ME=stream-vs-pg_receivewal

log() { printf '[%s] %s\n' "$ME" "$*" >&2; }
die() {
    trap - ERR
    printf '%s: error: %s\n' "$ME" "$*" >&2
    exit 1
}
trap 'die "line $LINENO: command failed (exit $?): $BASH_COMMAND"' ERR

# --- build and tools ---------------------------------------------------------------------------
log "installing test dependencies (scripts/install-test-deps.sh)"
./scripts/install-test-deps.sh
log "building pitr (cargo build --release --locked)"
cargo build --release --locked >&2
# What the binary was built from (checked right after the build).
if git rev-parse --git-dir >/dev/null 2>&1; then
    CODE=$(git rev-parse --short HEAD)
    git diff --quiet HEAD -- src walfmt Cargo.toml Cargo.lock || CODE="$CODE + uncommitted changes"
else
    CODE="(source not in a git checkout)"
fi
PITR=$ROOT/target/release/pitr
BIN=$ROOT/.cache/pg/$MAJOR/bin
for t in initdb pg_ctl postgres pgbench pg_receivewal psql; do
    [ -x "$BIN/$t" ] || die "$BIN/$t missing (run scripts/install-test-deps.sh)"
done
command -v python3 >/dev/null || die "python3 is needed"
command -v curl >/dev/null || die "curl is needed"
HZ=$(getconf CLK_TCK)

RUN=()
if [ "$(id -u)" = 0 ]; then
    # initdb refuses root: the server runs as the postgres OS user.
    id postgres >/dev/null 2>&1 || die "running as root needs a 'postgres' OS user (scripts/install-test-deps.sh creates it)"
    RUN=(runuser -u postgres --)
fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
MPORT=$(free_port)
[ "$PORT" != "$MPORT" ] || MPORT=$(free_port)

WORK=$(mktemp -d /tmp/pitr-bench-stream.XXXXXX)
chmod 755 "$WORK"
PGDATA=$WORK/data
PITR_PID="" RWS_PID="" RWA_PID="" SAMPLER_PID="" LOAD_PID=""

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
    stop_pid "$LOAD_PID" TERM
    [ -n "$SAMPLER_PID" ] && { touch "$WORK/stop-sampler"; stop_pid "$SAMPLER_PID" TERM; }
    stop_pid "$PITR_PID" TERM
    stop_pid "$RWS_PID" INT
    stop_pid "$RWA_PID" INT
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

# --- server ------------------------------------------------------------------------------------
[ "${#RUN[@]}" = 0 ] || chown postgres: "$WORK"
log "PostgreSQL $("$BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PORT, data in $PGDATA"
"${RUN[@]}" "$BIN/initdb" -D "$PGDATA" -A trust -U postgres -E UTF8 --no-locale -N >"$WORK/initdb.log" 2>&1 ||
    die "initdb failed: $(tail -n 1 "$WORK/initdb.log")"
cat >>"$PGDATA/postgresql.conf" <<EOF
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
synchronous_commit = off
EOF
"${RUN[@]}" "$BIN/pg_ctl" -D "$PGDATA" -w -t 60 -l "$WORK/server.log" \
    -o "-c port=$PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=$WORK" start >/dev/null ||
    die "server did not start: $(tail -n 1 "$WORK/server.log")"

q() { "$BIN/psql" -X -qAt -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -c "$1"; }
lsn() { q "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint"; }
log_tail() { printf '  --- last lines of %s ---\n' "$1" >&2; tail -n 20 "$1" | sed 's/^/  /' >&2; }
alive() { # name pid logfile
    kill -0 "$2" 2>/dev/null && return 0
    local rc=0
    wait "$2" || rc=$?
    log_tail "$3"
    die "$1 exited early (status $rc), see the log above"
}

# --- consumers ---------------------------------------------------------------------------------
RW_CONN="host=127.0.0.1 port=$PORT user=postgres sslmode=disable"
"$BIN/pg_receivewal" -d "$RW_CONN" --create-slot --slot=rw_bench
"$BIN/pg_receivewal" -d "$RW_CONN" --create-slot --slot=rw_bench_async
mkdir -p "$WORK/rw-sync" "$WORK/rw-async"

log "starting pitr stream (--partial-every $PARTIAL), pg_receivewal --synchronous, pg_receivewal"
NO_COLOR=1 "$PITR" stream --source "$RW_CONN" --repo "$WORK/pitr-repo" --slot pitr_bench \
    --metrics-listen "127.0.0.1:$MPORT" --partial-every "$PARTIAL" >"$WORK/pitr.log" 2>&1 &
PITR_PID=$!
"$BIN/pg_receivewal" -d "$RW_CONN" -D "$WORK/rw-sync" --slot=rw_bench --synchronous --no-loop \
    >"$WORK/rw-sync.log" 2>&1 &
RWS_PID=$!
"$BIN/pg_receivewal" -d "$RW_CONN application_name=pg_receivewal_async" -D "$WORK/rw-async" \
    --slot=rw_bench_async --status-interval=1 --no-loop >"$WORK/rw-async.log" 2>&1 &
RWA_PID=$!

check_alive() {
    alive "pitr stream" "$PITR_PID" "$WORK/pitr.log"
    alive "pg_receivewal --synchronous" "$RWS_PID" "$WORK/rw-sync.log"
    alive "pg_receivewal" "$RWA_PID" "$WORK/rw-async.log"
}

APPS="'pitr','pg_receivewal','pg_receivewal_async'"
ok=""
for _ in $(seq 300); do
    check_alive
    n=$(q "SELECT count(DISTINCT application_name) FROM pg_stat_replication WHERE state = 'streaming' AND application_name IN ($APPS)")
    [ "$n" = 3 ] && { ok=1; break; }
    sleep 0.1
done
[ -n "$ok" ] || die "the three consumers were not all streaming after 30 s: $(q "SELECT string_agg(application_name || '=' || state, ', ') FROM pg_stat_replication")"

# Wait until each consumer holds `target` (bytes from 0/0): pitr and rw-sync by flush (reported
# once durable), rw-async by write (it reports flush only at segment ends). Records, per
# consumer, the seconds it took in CATCHUP_<name>.
now_ms() { echo $(($(date +%s%N) / 1000000)); }
secs_since() { local d=$(($2 - $1)); printf '%d.%d' $((d / 1000)) $((d % 1000 / 100)); }
wait_caught_up() { # target timeout_s
    local target=$1 timeout=$2 t0 rows app fl wr start=$SECONDS
    local -A done_at=()
    t0=$(now_ms)
    while :; do
        check_alive
        rows=$(q "SELECT application_name, COALESCE(pg_wal_lsn_diff(flush_lsn, '0/0')::bigint, 0),
                         COALESCE(pg_wal_lsn_diff(write_lsn, '0/0')::bigint, 0)
                  FROM pg_stat_replication WHERE application_name IN ($APPS)")
        while IFS='|' read -r app fl wr; do
            if [ -z "$app" ] || [ -n "${done_at[$app]:-}" ]; then continue; fi
            if [ "$app" = pg_receivewal_async ]; then fl=$wr; fi
            if [ "$fl" -ge "$target" ]; then done_at[$app]=$(now_ms); fi
        done <<<"$rows"
        if [ "${#done_at[@]}" = 3 ]; then break; fi
        if ((SECONDS - start > timeout)); then
            for app in pitr pg_receivewal pg_receivewal_async; do
                if [ -z "${done_at[$app]:-}" ]; then
                    if [ "$app" = pitr ]; then log_tail "$WORK/pitr.log"; fi
                    die "$app did not reach $(printf '%X/%X' $((target >> 32)) $((target & 0xFFFFFFFF))) within ${timeout} s (pg_stat_replication: $(echo "$rows" | tr '\n' ' '))"
                fi
            done
        fi
        sleep 0.1
    done
    CATCHUP_pitr=$(secs_since "$t0" "${done_at[pitr]}")
    CATCHUP_rws=$(secs_since "$t0" "${done_at[pg_receivewal]}")
    CATCHUP_rwa=$(secs_since "$t0" "${done_at[pg_receivewal_async]}")
}

cpu_ticks() { # pid -> "utime stime" (fields 14 and 15 of /proc/PID/stat, all threads)
    local s
    s=$(cat "/proc/$1/stat")
    s=${s##*") "}
    # shellcheck disable=SC2086
    set -- $s
    echo "${12} ${13}"
}
hwm_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }
sent_lsn() { q "SELECT pg_wal_lsn_diff(sent_lsn, '0/0')::bigint FROM pg_stat_replication WHERE application_name = '$1'"; }

uploads() { curl -fsS "http://127.0.0.1:$MPORT/metrics" | awk '/^pitr_uploads_total/ {printf "%d", $2}'; }
START_LSN=$(lsn)
wait_caught_up "$START_LSN" 60
PUTS0=$(uploads)
T_PUTS0=$(now_ms)
read -r PITR_U0 PITR_S0 <<<"$(cpu_ticks "$PITR_PID")"
read -r RWS_U0 RWS_S0 <<<"$(cpu_ticks "$RWS_PID")"
read -r RWA_U0 RWA_S0 <<<"$(cpu_ticks "$RWA_PID")"
PITR_SENT0=$(sent_lsn pitr)
RWS_SENT0=$(sent_lsn pg_receivewal)
RWA_SENT0=$(sent_lsn pg_receivewal_async)

# --- load, with lag sampled once a second --------------------------------------------------------
echo init >"$WORK/phase"
(
    trap - ERR
    set +e
    while [ ! -e "$WORK/stop-sampler" ]; do
        ph=$(cat "$WORK/phase")
        q "WITH c AS MATERIALIZED (SELECT pg_current_wal_lsn() AS l, extract(epoch FROM clock_timestamp()) AS t)
           SELECT '$ph', c.t, r.application_name,
                  COALESCE(pg_wal_lsn_diff(c.l, r.flush_lsn)::bigint, -1),
                  COALESCE(extract(epoch FROM r.flush_lag)::float8::text, 'null')
           FROM c JOIN pg_stat_replication r ON r.application_name IN ($APPS)" >>"$WORK/samples" 2>>"$WORK/sampler.err"
        sleep 1
    done
) &
SAMPLER_PID=$!

PGB=("$BIN/pgbench" -h 127.0.0.1 -p "$PORT" -U postgres)
run_load() { # logfile pgbench-args...: runs pgbench, checking every second that the consumers live
    local out=$1 rc=0
    shift
    "${PGB[@]}" "$@" postgres >"$out" 2>&1 &
    LOAD_PID=$!
    while kill -0 "$LOAD_PID" 2>/dev/null; do check_alive; sleep 1; done
    wait "$LOAD_PID" || rc=$?
    LOAD_PID=""
    [ "$rc" = 0 ] || { log_tail "$out"; die "pgbench $* failed (status $rc)"; }
    check_alive
}
log "load 1/2: pgbench -i -s $SCALE"
T_INIT0=$(now_ms)
run_load "$WORK/pgbench-init.log" -i -q -s "$SCALE"
T_INIT1=$(now_ms)
echo run >"$WORK/phase"
log "load 2/2: pgbench -c 4 -j 2 -T $SECS -N"
run_load "$WORK/pgbench.log" -c 4 -j 2 -T "$SECS" -N
TPS=$(awk -F'= ' '/^tps/ {split($2, a, " "); printf "%.0f", a[1]; exit}' "$WORK/pgbench.log")
END_LSN=$(lsn)
touch "$WORK/stop-sampler"
wait "$SAMPLER_PID" || true
SAMPLER_PID=""
[ -s "$WORK/samples" ] || die "no lag samples taken: $(head -n 1 "$WORK/sampler.err" 2>/dev/null)"

log "load done; waiting for every consumer to hold the load's last byte"
wait_caught_up "$END_LSN" 120
read -r PITR_U1 PITR_S1 <<<"$(cpu_ticks "$PITR_PID")"
read -r RWS_U1 RWS_S1 <<<"$(cpu_ticks "$RWS_PID")"
read -r RWA_U1 RWA_S1 <<<"$(cpu_ticks "$RWA_PID")"
PITR_HWM=$(hwm_kib "$PITR_PID")
RWS_HWM=$(hwm_kib "$RWS_PID")
RWA_HWM=$(hwm_kib "$RWA_PID")
PITR_SENT1=$(sent_lsn pitr)
RWS_SENT1=$(sent_lsn pg_receivewal)
RWA_SENT1=$(sent_lsn pg_receivewal_async)
curl -fsS "http://127.0.0.1:$MPORT/metrics" >"$WORK/metrics.txt" || die "pitr /metrics did not answer"
PUTS1=$(uploads)
T_PUTS1=$(now_ms)
# Idle: the server writes nothing but its own background WAL; pitr's PUTs per minute then.
IDLE_S=${PITR_BENCH_IDLE_SECONDS:-30}
log "idle for ${IDLE_S} s (pitr's uploads at idle)"
sleep "$IDLE_S"
check_alive
PUTS2=$(uploads)
T_PUTS2=$(now_ms)

# --- stop: pitr on SIGTERM (must exit 0), pg_receivewal on SIGINT ---------------------------------
kill -TERM "$PITR_PID"
rc=0
wait "$PITR_PID" || rc=$?
PITR_PID=""
[ "$rc" = 0 ] || { log_tail "$WORK/pitr.log"; die "pitr stream exited with status $rc on SIGTERM"; }
stop_pid "$RWS_PID" INT
RWS_PID=""
stop_pid "$RWA_PID" INT
RWA_PID=""

du_kib() { du -sk "$1" | cut -f1; }
nfiles() { find "$1" -type f | wc -l; }

cat >"$WORK/results" <<EOF
hz=$HZ
partial=$PARTIAL
secs=$SECS
scale=$SCALE
tps=$TPS
pg=$("$BIN/postgres" --version | awk '{print $3}')
commit=$CODE
start_lsn=$START_LSN
end_lsn=$END_LSN
init_s=$(secs_since "$T_INIT0" "$T_INIT1")
pitr_cpu=$((PITR_U1 - PITR_U0)) $((PITR_S1 - PITR_S0))
rws_cpu=$((RWS_U1 - RWS_U0)) $((RWS_S1 - RWS_S0))
rwa_cpu=$((RWA_U1 - RWA_U0)) $((RWA_S1 - RWA_S0))
pitr_recv=$((PITR_SENT1 - PITR_SENT0))
rws_recv=$((RWS_SENT1 - RWS_SENT0))
rwa_recv=$((RWA_SENT1 - RWA_SENT0))
pitr_hwm=$PITR_HWM
rws_hwm=$RWS_HWM
rwa_hwm=$RWA_HWM
pitr_catchup=$CATCHUP_pitr
rws_catchup=$CATCHUP_rws
rwa_catchup=$CATCHUP_rwa
pitr_du=$(du_kib "$WORK/pitr-repo")
rws_du=$(du_kib "$WORK/rw-sync")
rwa_du=$(du_kib "$WORK/rw-async")
pitr_files=$(nfiles "$WORK/pitr-repo")
puts_load=$((PUTS1 - PUTS0)) $(secs_since "$T_PUTS0" "$T_PUTS1")
puts_idle=$((PUTS2 - PUTS1)) $(secs_since "$T_PUTS1" "$T_PUTS2")
rws_files=$(nfiles "$WORK/rw-sync")
rwa_files=$(nfiles "$WORK/rw-async")
EOF

# --- report --------------------------------------------------------------------------------------
python3 - "$WORK/results" "$WORK/samples" "$WORK/metrics.txt" <<'PY'
import sys

res = {}
for line in open(sys.argv[1]):
    k, _, v = line.rstrip("\n").partition("=")
    res[k] = v
hz = int(res["hz"])
names = [("pitr", "pitr stream"), ("rws", "pg_receivewal --synchronous"), ("rwa", "pg_receivewal")]
apps = {"pitr": "pitr", "pg_receivewal": "rws", "pg_receivewal_async": "rwa"}

samples = {k: {"all": [], "run": []} for k, _ in names}
for line in open(sys.argv[2]):
    f = line.rstrip("\n").split("|")
    if len(f) != 5 or f[2] not in apps:
        continue
    phase, _t, app, lag_b, lag_s = f
    k = apps[app]
    s = None if lag_s == "null" else float(lag_s)
    b = int(lag_b)
    samples[k]["all"].append((s, b))
    if phase == "run":
        samples[k]["run"].append((s, b))

def pct(v, p):
    # nearest rank
    if not v:
        return float("nan")
    v = sorted(v)
    i = max(0, min(len(v) - 1, int(-(-p * len(v) // 100)) - 1))
    return v[i]

m = {}
for k, _ in names:
    u, s = (int(x) for x in res[f"{k}_cpu"].split())
    recv = int(res[f"{k}_recv"])
    d = {"user": u / hz, "sys": s / hz, "cpu": (u + s) / hz, "recv": recv}
    d["cpu_gb"] = d["cpu"] / (recv / 1e9) if recv else float("nan")
    d["rss"] = int(res[f"{k}_hwm"]) / 1024
    for ph in ("all", "run"):
        sm = samples[k][ph]
        secs = [x if x is not None else 0.0 for x, _ in sm]  # NULL flush_lag = caught up
        byts = [b / 1048576 for _, b in sm if b >= 0]
        d[ph] = {"n": len(sm), "nulls": sum(1 for x, _ in sm if x is None),
                 "p50": pct(secs, 50), "p99": pct(secs, 99), "max": max(secs) if secs else float("nan"),
                 "b50": pct(byts, 50), "b99": pct(byts, 99), "bmax": max(byts) if byts else float("nan")}
    d["catchup"] = float(res[f"{k}_catchup"])
    d["du"] = int(res[f"{k}_du"]) / 1024
    d["files"] = int(res[f"{k}_files"])
    m[k] = d

wal = int(res["end_lsn"]) - int(res["start_lsn"])
print()
print(f"pitr stream vs pg_receivewal: PostgreSQL {res['pg']}, pitr {res['commit']}, "
      f"--partial-every {res['partial']}")
print(f"load: pgbench -i -s {res['scale']} ({res['init_s']} s), then pgbench -c 4 -j 2 -T {res['secs']} -N "
      f"({res['tps']} tps); WAL generated: {wal / 1e6:,.0f} MB ({wal / 2**20:,.0f} MiB)")
print()
print("| measure | " + " | ".join(n for _, n in names) + " |")
print("|---|" + "---|" * len(names))
def row(label, fn):
    print(f"| {label} | " + " | ".join(fn(m[k]) for k, _ in names) + " |")
row("WAL received in the window (MB)", lambda d: f"{d['recv'] / 1e6:,.0f}")
row("CPU user + sys (s)", lambda d: f"{d['user']:.2f} + {d['sys']:.2f} = {d['cpu']:.2f}")
row("**CPU s per GB of WAL**", lambda d: f"**{d['cpu_gb']:.2f}**")
row("**peak RSS (VmHWM, MiB)**", lambda d: f"**{d['rss']:.1f}**")
row("flush_lag p50 / **p99** / max (s), whole load",
    lambda d: f"{d['all']['p50']:.2f} / **{d['all']['p99']:.2f}** / {d['all']['max']:.2f}")
row("flush_lag p50 / p99 / max (s), pgbench -N only",
    lambda d: f"{d['run']['p50']:.2f} / {d['run']['p99']:.2f} / {d['run']['max']:.2f}")
row("lag behind pg_current_wal_lsn p50 / p99 / max (MiB), whole load",
    lambda d: f"{d['all']['b50']:.1f} / {d['all']['b99']:.1f} / {d['all']['bmax']:.1f}")
row("samples (of which flush_lag NULL)", lambda d: f"{d['all']['n']} ({d['all']['nulls']})")
row("caught up after the load (s)", lambda d: f"{d['catchup']:.1f}")
row("archive on disk, du (MiB) / files", lambda d: f"{d['du']:,.1f} / {d['files']}")
row("archive / WAL received", lambda d: f"{d['du'] * 2**20 / d['recv']:.2f}" if d["recv"] else "-")
print()
print("flush_lag: pg_stat_replication, sampled once a second from the start of pgbench -i to the")
print("end of pgbench -N (NULL, i.e. caught up and idle, counted as 0). pg_receivewal without")
print("--synchronous reports flush only at segment ends: its lag is not comparable and is shown")
print("for information. Catch-up: pitr and pg_receivewal --synchronous by flush_lsn, plain")
print("pg_receivewal by write_lsn.")

p, r, a = m["pitr"], m["rws"], m["rwa"]
def ratio(x, y):
    return x / y if y else float("inf")
cpu_r = ratio(p["cpu_gb"], r["cpu_gb"])
cpu_ra = ratio(p["cpu_gb"], a["cpu_gb"])
rss_r = ratio(p["rss"], r["rss"])
lag_r = ratio(p["all"]["p99"], r["all"]["p99"])
print()
print("ratios pitr / pg_receivewal --synchronous (same run):")
print(f"  CPU per GB   {cpu_r:.2f}x   (pitr / pg_receivewal without --synchronous: {cpu_ra:.2f}x)")
print(f"  peak RSS     {rss_r:.2f}x")
print(f"  lag p99      {lag_r:.2f}x   ({p['all']['p99']:.2f} s vs {r['all']['p99']:.2f} s)")
def per_min(k):
    n, secs = res[k].split()
    return int(n) * 60 / float(secs) if float(secs) else float("nan"), int(n), float(secs)
pl, pln, pls = per_min("puts_load")
pi, pin_, pis = per_min("puts_idle")
print()
print(f"pitr PUTs (pitr_uploads_total; each superseded partial also costs one DELETE):")
print(f"  under load   {pl:.0f} per minute ({pln} in {pls:.1f} s, from the start of pgbench -i to catch-up)")
print(f"  at idle      {pi:.0f} per minute ({pin_} in {pis:.1f} s)")
print()
print("goals:")
def goal(ok, text):
    print(f"  {'PASS' if ok else 'FAIL'}  {text}")
goal(cpu_r <= 1.2, f"CPU per GB within 1.2x of pg_receivewal --synchronous: {cpu_r:.2f}x")
goal(p["rss"] <= 64, f"peak RSS <= 64 MiB: {p['rss']:.1f} MiB")
goal(p["all"]["p99"] <= 0.25, f"flush_lag p99 <= 250 ms (local repo): {p['all']['p99']:.2f} s (--partial-every {res['partial']})")
print(f"  (info) CPU per GB within 1.5x of pg_receivewal without --synchronous: {cpu_ra:.2f}x "
      f"-> {'PASS' if cpu_ra <= 1.5 else 'FAIL'}")

print()
print("pitr metrics at the end:")
for line in open(sys.argv[3]):
    if line.startswith(("pitr_received_lsn_bytes", "pitr_archived_lsn_bytes", "pitr_server_lsn_bytes",
                        "pitr_archive_lag_bytes")):
        print("  " + line.rstrip())
PY
