# syntax=docker/dockerfile:1
# The service image: `python -m app serve` (the API) by default, `python -m app upstream` (the quotes
# dependency) as a command override. Target `loadgen` adds Locust on top, so the load generator has the
# app package (token minting) and the generated gRPC stubs. Built by compose.yaml; the base image is
# pinned here and in .env (PYTHON_IMAGE), and tests/stack/test_compose.py checks that both agree.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---- build: resolve and install everything into a venv; nothing from this stage ships but the venv.
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
# Our own package is pure Python: build its wheel, then install it with binary wheels only, so a
# dependency that would need a compiler fails the build here instead of pulling one in.
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && pip install --only-binary=:all: /wheels/*.whl \
 && rm -rf /wheels

# ---- runtime: the slim base, the venv and a non-root user; no compilers, no build tools.
FROM ${PYTHON_IMAGE} AS runtime
ARG APP_UID=10001
RUN groupadd --system --gid ${APP_UID} app \
 && useradd --system --uid ${APP_UID} --gid app --home-dir /var/lib/platform --shell /usr/sbin/nologin app \
 && install -d -o app -g app -m 0700 /var/lib/platform
COPY --from=build /opt/venv /opt/venv
# Dev-mode keys live in a directory that compose backs with a volume shared by app, upstream and loadgen,
# so that every process agrees on them (APP_ENV=dev only; real deployments set the keys themselves).
# OTEL_PYTHON_DISTRO/CONFIGURATOR pick the platform distro over opentelemetry-distro's, so that
# `opentelemetry-instrument python -m app serve` works in the image as `python -m app serve` does.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    OTEL_PYTHON_DISTRO=platform \
    OTEL_PYTHON_CONFIGURATOR=platform \
    BIND_HOST=0.0.0.0 \
    DEV_SECRETS_FILE=/var/lib/platform/dev-secrets.json \
    HEALTHCHECK_URL=http://127.0.0.1:8080/readyz
WORKDIR /var/lib/platform
USER app
EXPOSE 8080 50051 8081
# Readiness of the API by default; the upstream sets HEALTHCHECK_URL to its own /healthz.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['HEALTHCHECK_URL'], timeout=2)"]
CMD ["python", "-m", "app", "serve"]

# ---- loadgen: the runtime plus Locust (wheels only) and the locustfile.
FROM runtime AS loadgen
USER root
COPY loadgen/requirements.txt /tmp/loadgen-requirements.txt
RUN pip install --only-binary=:all: -r /tmp/loadgen-requirements.txt && rm /tmp/loadgen-requirements.txt
COPY loadgen/ /opt/loadgen/
USER app
# Locust serves no port in headless mode; compose documents why this service has no healthcheck.
HEALTHCHECK NONE
ENV LOCUST_LOCUSTFILE=/opt/loadgen/locustfile.py \
    LOCUST_HEADLESS=true
CMD ["locust"]
