# pitr-test/moto:latest (scripts/docker-test-images.sh): moto's S3-compatible server, the one the
# tests use on the host (moto[server]==5.*, scripts/install-test-deps.sh), in a venv at
# /opt/moto; boto3 (a moto dependency) is in the same venv, for creating buckets. The wheels
# come in the build context (wheels/, fetched by `pip download` on the host, whose trust store
# knows this network's TLS proxy; pip in the image does not): pip installs with --no-index.
#   docker run --rm --network host pitr-test/moto:latest -H 127.0.0.1 -p 9000
#   docker run --rm --network host --entrypoint python pitr-test/moto:latest -c 'import boto3; ...'
ARG BASE=pitr-base:bookworm
FROM ${BASE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*
ARG MOTO_SPEC="moto[server]==5.*"
COPY wheels/ /tmp/wheels/
RUN python3 -m venv /opt/moto \
    && /opt/moto/bin/pip install --no-cache-dir --quiet --no-index --find-links /tmp/wheels "$MOTO_SPEC" boto3 \
    && rm -rf /tmp/wheels \
    && /opt/moto/bin/python -c 'import moto, boto3; print("moto", moto.__version__, "boto3", boto3.__version__)'
ENV PATH=/opt/moto/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
EXPOSE 5000
ENTRYPOINT ["moto_server"]
CMD ["-H", "127.0.0.1", "-p", "5000"]
