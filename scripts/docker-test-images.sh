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
#   After a build, each image is checked (check_pg, check_moto below: a few seconds each);
#   PITR_IMAGES_CHECK=1 checks cached images too.
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
cleanup() {
    set +e
    [ -z "$CTX" ] || rm -rf "$CTX"
    local c d
    for c in "${CHECK_CONTAINERS[@]}"; do docker rm -f -v "$c" >/dev/null 2>&1; done
    for d in "${CHECK_DIRS[@]}"; do rm -rf "$d"; done
}
trap cleanup EXIT

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
    BUILT=""
    if is_current "$tag" "$hash"; then
        log "$tag: cached (inputs ${hash:0:12}), $(since "$t_img")s"
        return 0
    fi
    BUILT=1
    cp "$DIR/$dockerfile" "$CTX/Dockerfile"
    local old
    old=$(docker image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)
    t=$(date +%s.%N)
    # --force-rm: a failed step leaves no container behind.
    if ! docker build --force-rm --network host --label "pitr.inputs=$hash" --build-arg "BASE=$BASE" "$@" \
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

# check_pg N IMAGE: what the tests rely on, after each build (PITR_IMAGES_CHECK=1: cached ones
# too): (c) `--entrypoint postgres --version` prints the host's version string; (a) as uid
# 10001 (no passwd entry in the image), `--entrypoint postgres -D DIR` runs a bind-mounted data
# directory initialised on the host, socket only; (b) "database system is ready to accept
# connections" on the container's stderr; the host's psql gets an answer; `docker stop` exits 0.
check_pg() {
    local n=$1 img=$2 t d c want got i
    t=$(date +%s.%N)
    want=$(".cache/pg/$n/bin/postgres" --version)
    got=$(docker run --rm --network host --entrypoint postgres "$img" --version)
    [ "$got" = "$want" ] || die "$img: postgres --version printed '$got', the host's is '$want'"
    d=$(mktemp -d /tmp/pitr-test-images-check.XXXXXX)
    CHECK_DIRS+=("$d")
    chmod 755 "$d"
    id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
    chown postgres "$d"
    runuser -u postgres -- ".cache/pg/$n/bin/initdb" -D "$d/data" -A trust -U postgres --no-sync >"$d/initdb.log" 2>&1 ||
        { cat "$d/initdb.log" >&2; die "$img check: initdb on the host failed"; }
    mkdir "$d/sock"
    chown -R 10001:10001 "$d/data" "$d/sock"
    c=pitr-test-images-check-$n-$$
    CHECK_CONTAINERS+=("$c")
    docker run -d --name "$c" --network host --user 10001:10001 --entrypoint postgres -v "$d:$d" "$img" \
        -D "$d/data" -c listen_addresses= -c unix_socket_directories="$d/sock" -c port=5432 >/dev/null
    for i in $(seq 100); do
        docker logs "$c" 2>&1 >/dev/null | grep -q 'database system is ready to accept connections' && break
        [ "$(docker inspect --format '{{.State.Running}}' "$c")" = true ] ||
            { docker logs "$c" >&2; die "$img check: postgres as uid 10001 exited"; }
        sleep 0.1
    done
    docker logs "$c" 2>&1 >/dev/null | grep -q 'database system is ready to accept connections' ||
        { docker logs "$c" >&2; die "$img check: no 'ready to accept connections' on stderr"; }
    got=$(".cache/pg/$n/bin/psql" -X -At -h "$d/sock" -p 5432 -U postgres -d postgres -c 'SELECT current_setting($$server_version_num$$)::int / 10000') ||
        die "$img check: psql through the socket failed"
    [ "$got" = "$n" ] || die "$img check: server major $got"
    docker stop -t 20 "$c" >/dev/null
    [ "$(docker inspect --format '{{.State.ExitCode}}' "$c")" = 0 ] || { docker logs "$c" >&2; die "$img check: docker stop: exit not 0"; }
    docker rm -v "$c" >/dev/null  # -v: the image's VOLUME (an anonymous volume) goes too
    rm -rf "$d"
    log "$img: checked in $(since "$t")s (version, uid 10001 on a mounted data dir, ready line on stderr, stop exit 0)"
}

# check_moto IMAGE: moto serves S3 on a loopback port; boto3 from the image creates a bucket,
# puts and lists an object.
check_moto() {
    local img=$1 t c port
    t=$(date +%s.%N)
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    c=pitr-test-images-check-moto-$$
    CHECK_CONTAINERS+=("$c")
    docker run -d --name "$c" --network host "$img" -H 127.0.0.1 -p "$port" >/dev/null
    docker run --rm --network host --entrypoint python "$img" -c '
import sys, time, boto3
s3 = boto3.client("s3", endpoint_url="http://127.0.0.1:" + sys.argv[1], region_name="us-east-1",
                  aws_access_key_id="k", aws_secret_access_key="s")
for _ in range(100):
    try:
        s3.list_buckets(); break
    except Exception:
        time.sleep(0.1)
s3.create_bucket(Bucket="check")
s3.put_object(Bucket="check", Key="a", Body=b"x")
assert [o["Key"] for o in s3.list_objects_v2(Bucket="check")["Contents"]] == ["a"]' "$port" ||
        { docker logs "$c" >&2; die "$img check: boto3 against moto_server failed"; }
    docker rm -f -v "$c" >/dev/null
    log "$img: checked in $(since "$t")s (moto_server on 127.0.0.1:$port, boto3 bucket/put/list)"
}
CHECK_DIRS=()
CHECK_CONTAINERS=()
BUILT=""

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
            if [ -n "$BUILT" ] || [ "${PITR_IMAGES_CHECK:-0}" = 1 ]; then check_pg 15 pitr-test/postgres:15; fi
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
            if [ -n "$BUILT" ] || [ "${PITR_IMAGES_CHECK:-0}" = 1 ]; then check_pg "$name" "pitr-test/postgres:$name"; fi
            ;;
        moto)
            new_ctx
            if ! is_current pitr-test/moto:latest "$(inputs_hash moto.Dockerfile moto)"; then
                # On the host: its pip reaches PyPI (the image's pip lacks the host's CA store).
                python3 -m pip download --quiet --only-binary=:all: -d "$CTX/wheels" \
                    'moto[server]==5.*' boto3 >&2 || die "pip download moto[server]==5.* boto3 failed"
            fi
            build moto pitr-test/moto:latest moto.Dockerfile moto
            if [ -n "$BUILT" ] || [ "${PITR_IMAGES_CHECK:-0}" = 1 ]; then check_moto pitr-test/moto:latest; fi
            ;;
        *) die "unknown image $name (15 16 17 18 moto)" ;;
    esac
done
log "done in $(since "$T0")s"
