#!/bin/sh
# Mounted into /docker-entrypoint-initdb.d/ of the postgres service (docker-compose.test.yml):
# runs once, when the official image initialises an empty $PGDATA.
#
# The official image appends only `host all all all scram-sha-256` to initdb's pg_hba.conf, and
# `all` in the database column does not match replication connections; initdb's own
# `host replication` lines allow only 127.0.0.1 and ::1. So `pitr stream` and `pitr backup`
# from another container (another address on the compose network) would be refused with
# "no pg_hba.conf entry for replication connection". This allows replication from any address,
# with a password (scram-sha-256), like the image's line for normal connections.
set -e
printf '\n# docker/postgres-initdb/allow-replication.sh: pitr streams from another container\nhost replication all all scram-sha-256\n' >>"$PGDATA/pg_hba.conf"
echo "allow-replication.sh: host replication all all scram-sha-256 appended to $PGDATA/pg_hba.conf"
