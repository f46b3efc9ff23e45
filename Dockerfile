# scout in a container. The build stage turns this project into a wheel and installs it,
# with the versions pinned in constraints.txt, into a virtual environment without pip; the
# runtime stage copies only that environment onto a slim Python of the same image, and
# runs it as an unprivileged user.
#
#   docker build -t scout:0.1.0 .
#   docker run -v /srv/scout:/etc/scout:ro -p 50051:50051 scout:0.1.0
#
# The config and the files it names are mounted at /etc/scout (deploy/README.md has the
# layout). Off loopback scout insists on TLS, so the HEALTHCHECK speaks TLS too: the
# server certificate must name 127.0.0.1, and /etc/scout/tls/ca.crt is the CA that signed it.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
# What the wheel is built from; .dockerignore keeps everything else out of the context.
COPY pyproject.toml README.md constraints.txt ./
COPY scout/ scout/
COPY server/ server/
COPY client/ client/
RUN pip wheel --no-deps --wheel-dir /dist . \
    && python -m venv --without-pip /opt/scout \
    && pip --python /opt/scout/bin/python install --constraint constraints.txt \
       "$(echo /dist/scout-*.whl)[redis]"

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="scout" \
      org.opencontainers.image.description="A gRPC service that runs shell commands on SSH hosts" \
      org.opencontainers.image.licenses="MIT"
ENV PATH=/opt/scout/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    STATE_DIRECTORY=/var/lib/scout
# A numeric user, so that Kubernetes' runAsNonRoot can check it; /var/log/scout is where
# the example config writes its audit log, /var/lib/scout (STATE_DIRECTORY) where keyed
# commands' default SQLite store lives (mount volumes there to keep them). The redis
# extra is in: replicas share a Redis store (`[durable] store = "redis://..."`).
RUN groupadd --system --gid 10001 scout \
    && useradd --system --uid 10001 --gid scout --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin scout \
    && install -d -o 10001 -g 10001 -m 0750 /var/log/scout \
    && install -d -o 10001 -g 10001 -m 0700 /var/lib/scout
COPY --from=build /opt/scout /opt/scout
USER 10001:10001
EXPOSE 50051
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["scout", "health", "--target", "127.0.0.1:50051", "--ca", "/etc/scout/tls/ca.crt"]
ENTRYPOINT ["scout-server"]
CMD ["--config", "/etc/scout/scout.toml"]
