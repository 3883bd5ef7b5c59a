#!/usr/bin/env bash
# docker-test-images.sh [NAME...]: builds, from pitr-base:bookworm, the local images the
# container tests and tests/compose.sh rely on (no registry needed):
#   pitr-test/postgres:15          Debian's postgresql-15 (the host's version when the mirror
#                                  still has it)              tests/docker/postgres-debian.Dockerfile
#   pitr-test/postgres:16, 17, 18  the .cache/pg/N trees (PyPI wheels) copied to
#                                  /usr/lib/postgresql/N      tests/docker/postgres-wheel.Dockerfile
#   pitr-test/moto:latest          moto[server]==5.* and boto3 in /opt/moto (wheels fetched
#                                  by the host's pip)          tests/docker/moto.Dockerfile
# The PostgreSQL images behave like the official image for what users use: user postgres
# (999:999), PATH with /usr/lib/postgresql/N/bin first, PGDATA=/var/lib/postgresql/data,
# STOPSIGNAL SIGINT, tests/docker/docker-entrypoint.sh (initdb, POSTGRES_*, init scripts,
# drop to postgres); with `--entrypoint postgres --user UID:GID` they run any uid's data dir.
#   NAME: 15 16 17 18 moto (default: all). Each build gets a small temporary context (never the
#   repo). Cache: an image is skipped when its label pitr.inputs holds the sha256 of its inputs
#   (Dockerfile, entrypoint, the host's `postgres --version` (and package version for 15), the
#   base image id); any change rebuilds it. PITR_IMAGES_REBUILD=1 ignores the label.
# Needs DOCKER_HOST of our own engine (read from scripts/docker-engine.sh env when unset) and
# pitr-base:bookworm (scripts/docker-base-image.sh). Builds run with --network host (apt, PyPI).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"
: "${DOCKER_HOST:=$(scripts/docker-engine.sh env | sed 's/^DOCKER_HOST=//')}"
export DOCKER_HOST
BASE=pitr-base:bookworm
DIR=tests/docker
T0=$(date +%s.%N)
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
log() { echo "docker-test-images: $*" >&2; }
die() { log "$*"; exit 1; }

docker info >/dev/null 2>&1 || die "no engine answers on $DOCKER_HOST (run scripts/docker-engine.sh start)"
base_id=$(docker image inspect --format '{{.Id}}' "$BASE" 2>/dev/null) ||
    die "$BASE is missing (run scripts/docker-base-image.sh)"

CTX=""
trap '[ -z "$CTX" ] || rm -rf "$CTX"' EXIT

inputs_hash() { { printf '%s\n' "$base_id" "$2"; cat "$DIR/$1"; } | sha256sum | cut -c1-64; }
# is_current TAG HASH: the image exists with that label (and no rebuild is asked for).
is_current() {
    [ "${PITR_IMAGES_REBUILD:-0}" != 1 ] &&
        [ "$(docker image inspect --format '{{ index .Config.Labels "pitr.inputs" }}' "$1" 2>/dev/null)" = "$2" ]
}

# build NAME TAG DOCKERFILE INPUT-STRING [--build-arg ...]; the context is $CTX, filled by the caller.
build() {
    local name=$1 tag=$2 dockerfile=$3 inputs=$4; shift 4
    local hash t
    hash=$(inputs_hash "$dockerfile" "$inputs")
    if is_current "$tag" "$hash"; then
        log "$tag: cached (inputs ${hash:0:12}), $(since "$t_img")s"
        return 0
    fi
    cp "$DIR/$dockerfile" "$CTX/Dockerfile"
    local old
    old=$(docker image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)
    t=$(date +%s.%N)
    if ! docker build --network host --label "pitr.inputs=$hash" --build-arg "BASE=$BASE" "$@" \
        -t "$tag" "$CTX" >"$CTX.build.log" 2>&1; then
        tail -n 30 "$CTX.build.log" >&2
        rm -f "$CTX.build.log"
        die "$tag: docker build failed"
    fi
    rm -f "$CTX.build.log"
    # The image this one replaces, now untagged: removed (fails harmlessly while a container uses it).
    if [ -n "$old" ] && [ "$old" != "$(docker image inspect --format '{{.Id}}' "$tag")" ]; then
        docker rmi "$old" >/dev/null 2>&1 || true
    fi
    log "$tag: built in $(since "$t")s, $(since "$t_img")s with its context (inputs ${hash:0:12}, $(( $(docker image inspect --format '{{.Size}}' "$tag") / 1000000 )) MB)"
}

new_ctx() {
    [ -z "$CTX" ] || rm -rf "$CTX"
    CTX=$(mktemp -d /tmp/pitr-test-images.XXXXXX)
    cp "$DIR/docker-entrypoint.sh" "$CTX/"
}

entry_sum=$(sha256sum "$DIR/docker-entrypoint.sh" | cut -c1-64)
names=("$@")
((${#names[@]})) || names=(15 16 17 18 moto)
for name in "${names[@]}"; do
    t_img=$(date +%s.%N)
    case $name in
        15)
            bin=.cache/pg/15/bin/postgres
            [ -x "$bin" ] || die "no $bin (scripts/install-test-deps.sh)"
            ver=$("$bin" --version)
            deb=$(dpkg-query -W -f '${Version}' postgresql-15 2>/dev/null || true)
            new_ctx
            build 15 pitr-test/postgres:15 postgres-debian.Dockerfile "$entry_sum $ver $deb" \
                --build-arg PG_MAJOR=15 --build-arg "PG_DEB_VERSION=$deb"
            ;;
        16 | 17 | 18)
            bin=.cache/pg/$name/bin/postgres
            [ -x "$bin" ] || die "no $bin (scripts/install-test-deps.sh)"
            ver=$("$bin" --version)
            new_ctx
            # The hash is computed before the copy: a cached image costs no 40 MB copy.
            # .cache/pg/N -> .cache/wheels/N/x/<module>/pginstall; the wheel root is x/.
            tree=$(readlink -f ".cache/pg/$name")
            wheel=$(dirname "$(dirname "$tree")")
            rel=${tree#"$wheel"/}
            if ! is_current "pitr-test/postgres:$name" "$(inputs_hash postgres-wheel.Dockerfile "$entry_sum $ver $rel")"; then
                mkdir -p "$CTX/wheel/$(dirname "$rel")"
                cp -a "$tree" "$CTX/wheel/$rel"
                for libs in "$wheel"/*.libs; do [ -d "$libs" ] && cp -a "$libs" "$CTX/wheel/"; done
            fi
            build "$name" "pitr-test/postgres:$name" postgres-wheel.Dockerfile "$entry_sum $ver $rel" \
                --build-arg "PG_MAJOR=$name" --build-arg "PG_TREE=$rel"
            ;;
        moto)
            new_ctx
            if ! is_current pitr-test/moto:latest "$(inputs_hash moto.Dockerfile moto)"; then
                # On the host: its pip reaches PyPI (the image's pip lacks the host's CA store).
                python3 -m pip download --quiet --only-binary=:all: -d "$CTX/wheels" \
                    'moto[server]==5.*' boto3 >&2 || die "pip download moto[server]==5.* boto3 failed"
            fi
            build moto pitr-test/moto:latest moto.Dockerfile moto
            ;;
        *) die "unknown image $name (15 16 17 18 moto)" ;;
    esac
done
log "done in $(since "$T0")s"
