#!/usr/bin/env bash
# Entrypoint of the pitr-test/postgres:N images (scripts/docker-test-images.sh): the subset of
# the official postgres image's entrypoint that pitr's tests and docker-compose.test.yml use.
#   - `postgres ...` or `-x ...` (a flag first: `postgres` is prepended), unless it asks for
#     --help/--version: as root, creates $PGDATA and /var/run/postgresql, hands them to
#     postgres (uid 999) and re-executes itself as that user (setpriv);
#   - $PGDATA without PG_VERSION: initdb with POSTGRES_USER (default postgres),
#     POSTGRES_PASSWORD (required unless POSTGRES_HOST_AUTH_METHOD=trust) and
#     POSTGRES_INITDB_ARGS; appends `host all all all <method>` to pg_hba.conf (method:
#     POSTGRES_HOST_AUTH_METHOD, default scram-sha-256); on a temporary socket-only server,
#     creates POSTGRES_DB if it is not `postgres`, and runs /docker-entrypoint-initdb.d/*:
#     executable *.sh are run, other *.sh sourced, *.sql fed to psql; stops that server;
#   - then (or straight away, for an existing $PGDATA or any other command) execs the command.
# A uid without an /etc/passwd entry (docker run --user 10001:10001) gets one through
# nss_wrapper for initdb, as in the official image.
set -Eeo pipefail

log() { printf '%s: %s\n' "$(basename "$0")" "$*"; }

wants_help() {
    local a
    for a; do
        case $a in -'?' | --help | --describe-config | -V | --version) return 0 ;; esac
    done
    return 1
}

run_sql() {
    local db=${POSTGRES_DB:-postgres}
    PGHOST=$SOCKDIR PGPORT=${PGPORT:-5432} psql -X -v ON_ERROR_STOP=1 --no-password \
        --username "$POSTGRES_USER" --dbname "$db" "$@"
}

init_files() {
    local f
    for f in /docker-entrypoint-initdb.d/*; do
        [ -e "$f" ] || continue
        case $f in
            *.sh)
                if [ -x "$f" ]; then log "running $f"; "$f"; else log "sourcing $f"; . "$f"; fi ;;
            *.sql) log "running $f"; run_sql -f "$f" ;;
            *) log "ignoring $f" ;;
        esac
    done
}

initialise() {
    if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "${POSTGRES_HOST_AUTH_METHOD:-}" != trust ]; then
        echo "error: \$PGDATA ($PGDATA) is empty and POSTGRES_PASSWORD is not set (or set POSTGRES_HOST_AUTH_METHOD=trust)" >&2
        exit 1
    fi
    # Fail now, not with a half-initialised cluster, when the init scripts cannot be read.
    ls /docker-entrypoint-initdb.d/ >/dev/null
    local nss_files=()
    if ! getent passwd "$(id -u)" >/dev/null 2>&1; then
        local w
        for w in /usr/lib/*/libnss_wrapper.so /usr/lib/libnss_wrapper.so; do
            [ -s "$w" ] || continue
            NSS_WRAPPER_PASSWD=$(mktemp) NSS_WRAPPER_GROUP=$(mktemp)
            printf 'postgres:x:%s:%s:PostgreSQL:%s:/bin/false\n' "$(id -u)" "$(id -g)" "$PGDATA" >"$NSS_WRAPPER_PASSWD"
            printf 'postgres:x:%s:\n' "$(id -g)" >"$NSS_WRAPPER_GROUP"
            export LD_PRELOAD=$w NSS_WRAPPER_PASSWD NSS_WRAPPER_GROUP
            nss_files=("$NSS_WRAPPER_PASSWD" "$NSS_WRAPPER_GROUP")
            break
        done
    fi
    local pwfile
    pwfile=$(mktemp)
    printf '%s\n' "${POSTGRES_PASSWORD:-}" >"$pwfile"
    # POSTGRES_INITDB_ARGS is split like a shell command line, as in the official image.
    eval 'initdb --username="$POSTGRES_USER" --pwfile="$pwfile" '"${POSTGRES_INITDB_ARGS:-}"
    rm -f "$pwfile"
    if ((${#nss_files[@]})); then
        rm -f "${nss_files[@]}"
        unset LD_PRELOAD NSS_WRAPPER_PASSWD NSS_WRAPPER_GROUP
    fi
    printf '\nhost all all all %s\n' "${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}" >>"$PGDATA/pg_hba.conf"

    # A temporary server on a Unix socket only, for POSTGRES_DB and the init scripts.
    SOCKDIR=$(mktemp -d)
    export PGPASSWORD=${PGPASSWORD:-${POSTGRES_PASSWORD:-}}
    local args=("$@")
    [ "${args[0]}" = postgres ] && args=("${args[@]:1}")
    pg_ctl -D "$PGDATA" -w start -o "$(printf '%q ' "${args[@]}" -c listen_addresses= \
        -c unix_socket_directories="$SOCKDIR" -p "${PGPORT:-5432}")"
    if [ -n "${POSTGRES_DB:-}" ] && [ "$POSTGRES_DB" != postgres ]; then
        POSTGRES_DB=postgres run_sql -q --set db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";'
    fi
    init_files
    pg_ctl -D "$PGDATA" -m fast -w stop
    unset PGPASSWORD
    rmdir "$SOCKDIR" 2>/dev/null || true
    log "PostgreSQL init process complete; ready for start up."
}

main() {
    if [ "${1:0:1}" = - ]; then set -- postgres "$@"; fi
    if [ "$1" = postgres ] && ! wants_help "$@"; then
        : "${POSTGRES_USER:=postgres}"
        : "${POSTGRES_DB:=$POSTGRES_USER}"
        export POSTGRES_USER POSTGRES_DB
        if [ "$(id -u)" = 0 ]; then
            mkdir -p "$PGDATA" /var/run/postgresql
            chmod 700 "$PGDATA"
            chmod 3775 /var/run/postgresql
            find "$PGDATA" /var/run/postgresql \! -user postgres -exec chown postgres:postgres {} +
            exec setpriv --reuid=postgres --regid=postgres --init-groups "$BASH_SOURCE" "$@"
        fi
        mkdir -p "$PGDATA"
        chmod 700 "$PGDATA" 2>/dev/null || true
        if [ -s "$PGDATA/PG_VERSION" ]; then
            log "PostgreSQL database directory appears to contain a database; skipping initialisation"
        else
            initialise "$@"
        fi
    fi
    exec "$@"
}

main "$@"
