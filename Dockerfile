# syntax=docker/dockerfile:1
# The Flowstate server image: `flowstate serve` from the server and client wheels, as a non-root
# user, with a health check through the gRPC health service. docs/operations.md ("Container
# image") shows how to run it; deploy/compose.yaml runs it with PostgreSQL 15.
#
#   docker build -t flowstate:dev .
#
# Stage 1 builds the two wheels from this checkout and installs them, with the pinned
# dependencies, into a virtual environment; stage 2 is the same Python image with only that
# environment and an unprivileged user. tests/deploy/test_container.py runs stage 1's RUN steps
# as a script (and builds the image where a Docker daemon is available).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_PROGRESS_BAR=off
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY server/ server/
COPY storage/ storage/
COPY clients/python/ clients/python/
# flowstate-client is on no index: the server wheel finds it in /wheels.
RUN python -m pip wheel --no-deps --wheel-dir /wheels ./clients/python .
RUN python -m venv /opt/flowstate \
    && /opt/flowstate/bin/pip install --find-links /wheels /wheels/flowstate-*.whl \
    && /opt/flowstate/bin/flowstate --version

FROM ${PYTHON_IMAGE}
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /var/lib/flowstate \
    --shell /usr/sbin/nologin flowstate
COPY --from=build /opt/flowstate /opt/flowstate
ENV PATH=/opt/flowstate/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    FLOWSTATE_HOST=0.0.0.0 \
    FLOWSTATE_PORT=50051 \
    FLOWSTATE_HTTP_HOST=0.0.0.0 \
    FLOWSTATE_HTTP_PORT=8080 \
    FLOWSTATE_DATA_DIR=/var/lib/flowstate
USER 10001:10001
WORKDIR /var/lib/flowstate
# 50051: gRPC; 8080: Connect and gRPC-Web (docs/console.md). The web console's files are not in
# the image yet (they are built from console/ with Node): its page says so.
EXPOSE 50051 8080
# Shell form, so a changed FLOWSTATE_PORT is followed. Behind TLS, also set
# FLOWSTATE_TLS_CA_FILE (and the certificate must name 127.0.0.1).
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD flowstate health --address "127.0.0.1:${FLOWSTATE_PORT}" --timeout 4
ENTRYPOINT ["flowstate"]
CMD ["serve"]
