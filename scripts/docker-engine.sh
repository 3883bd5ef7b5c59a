#!/usr/bin/env bash
# docker-engine.sh install|start|stop|env|status: a private Docker engine for pitr's container tests.
#
# start  installs docker.io, debootstrap and docker-compose with apt if missing, then starts its OWN dockerd in
#        the background (own --data-root, --exec-root, unix socket, pid file and log file under
#        .cache/docker/, or $PITR_DOCKER_DIR), waits until `docker info` answers, and prints
#        DOCKER_HOST=unix://... on stdout. A running daemon of ours is reused.
# stop   removes every container of that daemon, stops that daemon (only it: by its pid file)
#        and waits for it to exit. Exits 0 when none is running.
# env    prints DOCKER_HOST=unix://... (use: export "$(scripts/docker-engine.sh env)").
# status exits 0 when our daemon answers.
# install only installs the packages (as start does; scripts/install-test-deps.sh calls it).
#
# Network rule: all container traffic stays on loopback. The daemon has no default bridge and
# never writes iptables rules (--bridge=none --iptables=false --ip6tables=false); every
# container must run with --network host (network_mode: host in compose). A system dockerd,
# its socket and /var/lib/docker are never touched.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$here/.cache"
dir=${PITR_DOCKER_DIR:-$(cd "$here/.cache" && pwd -P)/docker}
sock="$dir/docker.sock"
pidfile="$dir/dockerd.pid"
log="$dir/dockerd.log"
host="unix://$sock"
wait_start=${PITR_DOCKER_START_TIMEOUT:-60}
wait_stop=${PITR_DOCKER_STOP_TIMEOUT:-30}

die() { echo "docker-engine: $*" >&2; exit 1; }

our_pid() {
  # The pid in our pid file, if that process is alive and is a dockerd.
  [[ -s $pidfile ]] || return 1
  local pid; pid=$(<"$pidfile")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  [[ -r /proc/$pid/comm && $(</proc/$pid/comm) == dockerd ]] || return 1
  echo "$pid"
}

answers() { DOCKER_HOST=$host timeout 10 docker info >/dev/null 2>&1; }

install_missing() {
  local pkgs=()
  command -v dockerd >/dev/null 2>&1 || pkgs+=(docker.io)
  command -v docker >/dev/null 2>&1 || pkgs+=(docker.io)
  command -v debootstrap >/dev/null 2>&1 || pkgs+=(debootstrap)
  # Debian's docker-compose 1.29 (python, v1): tests/compose.sh; no `docker compose` plugin here.
  command -v docker-compose >/dev/null 2>&1 || pkgs+=(docker-compose)
  ((${#pkgs[@]})) || return 0
  [[ $(id -u) == 0 ]] || die "need root to install ${pkgs[*]}"
  echo "docker-engine: installing ${pkgs[*]}" >&2
  # Keep the packages' own services (a system dockerd/containerd) from starting on install.
  local policy=/usr/sbin/policy-rc.d made_policy=
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 0755 "$policy" && made_policy=1
  fi
  local rc=0
  { DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}"; } >&2 || rc=$?
  [[ -n $made_policy ]] && rm -f "$policy"
  ((rc == 0)) || die "apt-get install ${pkgs[*]} failed (exit $rc)"
}

start() {
  if our_pid >/dev/null && answers; then echo "DOCKER_HOST=$host"; return 0; fi
  install_missing
  mkdir -p "$dir/data" "$dir/exec" 2>/dev/null || die "cannot create $dir/data and $dir/exec"
  if pid=$(our_pid); then
    # Ours, but not answering yet (still starting, or wedged): wait below on that one.
    :
  else
    rm -f "$pidfile" "$sock"
    # setsid: its own session, so the caller's Ctrl-C does not reach it.
    setsid dockerd \
      -H "$host" \
      --data-root "$dir/data" --exec-root "$dir/exec" --pidfile "$pidfile" \
      --bridge=none --iptables=false --ip6tables=false --ip-masq=false \
      >>"$log" 2>&1 </dev/null &
    pid=$!
  fi
  local deadline=$((SECONDS + wait_start))
  until answers; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "docker-engine: dockerd exited during start; last log lines ($log):" >&2
      tail -n 15 "$log" >&2 || true
      unmount_ours
      exit 1
    fi
    if ((SECONDS >= deadline)); then
      echo "docker-engine: dockerd (pid $pid) did not answer on $host within ${wait_start}s; stopping it; last log lines ($log):" >&2
      tail -n 15 "$log" >&2 || true
      kill_wait "$pid"
      exit 1
    fi
    sleep 0.5
  done
  echo "DOCKER_HOST=$host"
}

unmount_ours() {
  # dockerd leaves mounts under its own dirs (exec-root/netns/default; the data root when
  # killed): unmount those, deepest first, and nothing else.
  local m
  awk '{print $5}' /proc/self/mountinfo | { grep -F "$dir/" || true; } | sort -r | while read -r m; do
    [[ $m == "$dir"/* ]] && umount -l "$m" 2>/dev/null || true
  done
}

kill_wait() {
  local pid=$1 deadline=$((SECONDS + wait_stop))
  kill -TERM "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      echo "docker-engine: dockerd (pid $pid) still running after ${wait_stop}s; sending SIGKILL" >&2
      kill -KILL "$pid" 2>/dev/null || true
      sleep 1
      break
    fi
    sleep 0.2
  done
  rm -f "$pidfile" "$sock"
  unmount_ours
}

stop() {
  local pid
  pid=$(our_pid) || { rm -f "$pidfile"; unmount_ours; return 0; }
  if answers; then
    local ids; ids=$(DOCKER_HOST=$host docker ps -aq)
    # shellcheck disable=SC2086
    [[ -z $ids ]] || DOCKER_HOST=$host docker rm -f $ids >/dev/null || true
  fi
  kill_wait "$pid"
}

case ${1:-} in
  install) install_missing ;;
  start) start ;;
  stop) stop ;;
  env) echo "DOCKER_HOST=$host" ;;
  status) our_pid >/dev/null && answers ;;
  *) echo "usage: $0 install|start|stop|env|status" >&2; exit 2 ;;
esac
