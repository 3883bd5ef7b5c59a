# pitr-test/postgres:15 (scripts/docker-test-images.sh): Debian bookworm's postgresql-15, the
# package the tests use on the host (.cache/pg/15 -> /usr/lib/postgresql/15), pinned to the
# host's version when the mirror still has it; no cluster is created on install. Behind an
# entrypoint that behaves like the official postgres image's (tests/docker/docker-entrypoint.sh).
ARG BASE=pitr-base:bookworm
FROM ${BASE}
# Same first layer as postgres-wheel.Dockerfile (shared in the layer cache).
RUN groupadd --system --gid 999 postgres \
    && useradd --system --uid 999 --gid 999 --home-dir /var/lib/postgresql --shell /bin/bash postgres \
    && apt-get update \
    && apt-get install -y --no-install-recommends libnss-wrapper tzdata \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/lib/postgresql /var/run/postgresql /docker-entrypoint-initdb.d \
    && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql \
    && chmod 3777 /var/run/postgresql
ARG PG_MAJOR=15
# PG_DEB_VERSION: the host's package version (dpkg-query), empty for the mirror's.
ARG PG_DEB_VERSION=
RUN mkdir -p /etc/postgresql-common \
    && echo 'create_main_cluster = false' >/etc/postgresql-common/createcluster.conf \
    && apt-get update \
    && { { [ -n "$PG_DEB_VERSION" ] \
           && apt-get install -y --no-install-recommends "postgresql-$PG_MAJOR=$PG_DEB_VERSION"; } \
         || { echo "postgresql-$PG_MAJOR=$PG_DEB_VERSION not on the mirror: installing its current version"; \
              apt-get install -y --no-install-recommends "postgresql-$PG_MAJOR"; }; } \
    && rm -rf /var/lib/apt/lists/*
COPY docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
ENV PG_MAJOR=${PG_MAJOR} \
    PATH=/usr/lib/postgresql/${PG_MAJOR}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PGDATA=/var/lib/postgresql/data \
    LANG=C.UTF-8
# As in the official image: new clusters listen on every address (listen_addresses = '*').
# Under host networking that is every host address: pass -c listen_addresses=127.0.0.1 there.
RUN postgres --version && psql --version && pg_isready --version && pgbench --version \
    && sample=$(find /usr/lib/postgresql/ /usr/share/postgresql/ -name postgresql.conf.sample -print -quit) \
    && sed -ri "s!^#?(listen_addresses)\s*=\s*\S+.*!\1 = '*'!" "$sample" \
    && grep -F "listen_addresses = '*'" "$sample" \
    && mkdir -p "$PGDATA" && chown postgres:postgres "$PGDATA" && chmod 1777 "$PGDATA"
VOLUME /var/lib/postgresql/data
ENTRYPOINT ["docker-entrypoint.sh"]
STOPSIGNAL SIGINT
EXPOSE 5432
CMD ["postgres"]
