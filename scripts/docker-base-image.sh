#!/usr/bin/env bash
# docker-base-image.sh: build the local Debian 12 base image pitr-base:bookworm (no registry needed).
#
# debootstrap --variant=minbase bookworm from the Debian mirror apt already uses on this machine
# (read from /etc/apt/sources.list and /etc/apt/sources.list.d/), packed as a tarball cached at
# .cache/docker-base/bookworm-minbase.tar, then `docker import`ed. Cached at two levels:
#   - the image exists in the engine            -> nothing to do;
#   - the tarball exists (e.g. a fresh data root) -> docker import only (seconds);
#   - neither                                   -> debootstrap (about a minute) + import.
# Also tags the image debian:bookworm-slim when that tag is absent (the Dockerfile's default
# base), unless PITR_TAG_SLIM=0. PITR_DEBIAN_MIRROR overrides the mirror; PITR_BASE_REBUILD=1
# ignores both caches.
#
# Needs DOCKER_HOST of our own engine (scripts/docker-engine.sh start; it is read from there
# when unset). Network rule: this only talks to the Debian mirror (debootstrap, on the host)
# and to the local engine; containers from this image run with --network host only.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
image=pitr-base:bookworm
cache=$(mkdir -p "$here/.cache" && cd "$here/.cache" && pwd -P)/docker-base
# Bump the suffix when the recipe below changes: an old tarball is then not reused.
tarball=$cache/bookworm-minbase-v2.tar
: "${DOCKER_HOST:=$("$here/scripts/docker-engine.sh" env | sed 's/^DOCKER_HOST=//')}"
export DOCKER_HOST

die() { echo "docker-base-image: $*" >&2; exit 1; }
log() { echo "docker-base-image: $*" >&2; }

docker info >/dev/null 2>&1 || die "no engine answers on $DOCKER_HOST (run scripts/docker-engine.sh start)"

mirror() {
  # The first non-security Debian URI for bookworm, deb822 (.sources) or one-line (.list) format.
  if [[ -n ${PITR_DEBIAN_MIRROR:-} ]]; then echo "$PITR_DEBIAN_MIRROR"; return; fi
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f $f ]] || continue
    awk 'BEGIN{RS=""; FS="\n"}
      { uri=""; suites=""; types="";
        for (i=1;i<=NF;i++) { if ($i ~ /^URIs:/) {sub(/^URIs:[ \t]*/,"",$i); split($i,u," "); uri=u[1]}
                             if ($i ~ /^Suites:/) suites=$i; if ($i ~ /^Types:/) types=$i }
        if (types ~ /deb( |$)/ && suites ~ /[ \t]bookworm([ \t]|$)/ && uri != "") { print uri; exit } }' "$f"
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -f $f ]] || continue
    awk '$1=="deb" { u=$2; s=$3; if ($2 ~ /^\[/) { for (i=2;i<=NF;i++) if ($i ~ /\]$/) {u=$(i+1); s=$(i+2); break} }
                     if (s=="bookworm") { print u; exit } }' "$f"
  done
}

if [[ ${PITR_BASE_REBUILD:-0} != 1 ]] && docker image inspect "$image" >/dev/null 2>&1; then
  log "$image exists; nothing to do"
else
  if [[ ${PITR_BASE_REBUILD:-0} == 1 || ! -s $tarball ]]; then
    command -v debootstrap >/dev/null 2>&1 || die "debootstrap is missing (scripts/docker-engine.sh start installs it)"
    url=$(mirror | head -n1)
    [[ -n $url ]] || die "no bookworm Debian mirror found in /etc/apt/sources.list{,.d}; set PITR_DEBIAN_MIRROR"
    mkdir -p "$cache"
    root=$(mktemp -d /tmp/pitr-base-root.XXXXXX)
    trap 'rm -rf "$root" "$tarball.part"' EXIT
    log "debootstrap --variant=minbase bookworm from $url"
    if ! debootstrap --variant=minbase bookworm "$root" "$url" >"$cache/debootstrap.log" 2>&1; then
      tail -n 15 "$cache/debootstrap.log" >&2
      die "debootstrap failed (log: $cache/debootstrap.log)"
    fi
    # Like Debian's -slim images: apt keeps no .debs, no package caches (pkgcache.bin and
    # srcpkgcache.bin are ~90 MB after an apt-get update) and no translations; dpkg installs
    # no docs, man pages or locales. Without this, the Dockerfile's apt-get layer is ~92 MB.
    cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'APT'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT
    echo 'Acquire::Languages "none";' >"$root/etc/apt/apt.conf.d/docker-no-languages"
    cat >"$root/etc/dpkg/dpkg.cfg.d/docker-slim" <<'DPKG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
DPKG
    find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
    rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/*
    find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} + 2>/dev/null || true
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin "$root"/var/lib/apt/lists/* "$root"/var/log/*.log
    tar --numeric-owner -C "$root" -cf "$tarball.part" .
    mv "$tarball.part" "$tarball"
    rm -rf "$root"; trap - EXIT
  else
    log "importing the cached $tarball"
  fi
  docker import --change 'CMD ["bash"]' "$tarball" "$image" >/dev/null
  log "imported $image"
fi

if [[ ${PITR_TAG_SLIM:-1} == 1 ]] && ! docker image inspect debian:bookworm-slim >/dev/null 2>&1; then
  docker tag "$image" debian:bookworm-slim
  log "tagged $image as debian:bookworm-slim (the Dockerfile's default base; a local image, not Debian's)"
fi
docker image inspect --format '{{.Id}} {{.Size}}' "$image"
