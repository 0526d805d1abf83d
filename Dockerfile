# Nexus Relay and the Nexus portal: one target per image (README, "Deploying").
#
#   docker build --target relay   -t nexus-relay .    the relay alone: `nexus-relay serve`;
#                                                     `nexus-relay install` puts the trigger
#                                                     layer on your database
#   docker build --target portal  -t nexus-portal .   the Nexus portal: `nexus-portal serve`
#   docker build --target migrate -t nexus-migrate .  the Nexus migrations, once per release
#
# No image runs a migration unless asked: the relay's starts the relay, the
# portal's the portal; `migrate` (or `alembic upgrade head` in the portal image)
# is a separate, one-shot command. All run as the user nexus (uid 10001).
#
# Base images are pinned by digest, the multi-platform index of the tag named
# beside it (docker-library/repo-info): python:3.11-slim-bookworm as built on
# 2026-08-25 (Python 3.11.16), node:20-bookworm-slim as built on 2026-04-22
# (Node 20.20.2). To update, change the tag and the digest together:
#   docker buildx imagetools inspect python:3.11-slim-bookworm

# htmx, from the npm registry (package-lock.json): the portal serves it itself.
FROM node:20-bookworm-slim@sha256:25070a03f077f5860e4f2db8d147380678ed40ead415a21eaffd5a6208f61948 AS assets
WORKDIR /assets
COPY package.json package-lock.json ./
# The relay's JavaScript client, which package.json links (file:clients/js).
COPY clients/js/package.json ./clients/js/
RUN npm ci --omit=dev --no-audit --no-fund

FROM python:3.11-slim-bookworm@sha256:0bee7276f83efd4a1ee05bbbf4281d95ed28e079220a9457f25a93e3f1e3c31b AS runtime
ENV PATH=/opt/nexus/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN useradd --create-home --uid 10001 --user-group nexus

# The package and its dependencies in a virtualenv, without dev extras:
# tests/test_install.py installs the same files the same way and starts each target.
FROM runtime AS build
WORKDIR /src
RUN python -m venv /opt/nexus
COPY pyproject.toml README.md LICENSE ./
COPY relay ./relay
COPY portal ./portal
RUN pip install --no-cache-dir .

# The Nexus portal. `docker run IMAGE alembic upgrade head` migrates its database.
FROM runtime AS portal
COPY --from=build /opt/nexus /opt/nexus
WORKDIR /app
COPY alembic.ini ./
COPY alembic ./alembic
COPY --from=assets /assets/node_modules/htmx.org/dist/htmx.min.js ./node_modules/htmx.org/dist/htmx.min.js
COPY clients/js/src/index.js ./node_modules/@nexus-relay/client/src/index.js
ENV NEXUS_HOST=0.0.0.0 \
    NEXUS_PORT=8000 \
    NEXUS_HTMX_PATH=/app/node_modules/htmx.org/dist/htmx.min.js \
    NEXUS_RELAY_CLIENT_PATH=/app/node_modules/@nexus-relay/client/src/index.js
USER 10001:10001
EXPOSE 8000
# No curl in slim images: Python's urllib, which fails on anything but a 2xx.
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('NEXUS_PORT', '8000') + '/healthz', timeout=2)"]
CMD ["nexus-portal", "serve"]

# The Nexus migrations (and the trigger layer they install), then exit.
FROM portal AS migrate
HEALTHCHECK NONE
CMD ["alembic", "upgrade", "head"]

# The relay alone. Give it your policy file at RELAY_POLICY_FILE (mount it at
# /etc/nexus-relay/policy.toml); the Nexus portal's is in the image at
# /etc/nexus-relay/nexus-portal.toml. Settings: RELAY_* (README, "Settings").
FROM runtime AS relay
COPY --from=build /opt/nexus /opt/nexus
COPY portal/relay-policy.toml /etc/nexus-relay/nexus-portal.toml
ENV RELAY_HOST=0.0.0.0 \
    RELAY_PORT=8765 \
    RELAY_OPS_HOST=0.0.0.0 \
    RELAY_OPS_PORT=8766 \
    RELAY_POLICY_FILE=/etc/nexus-relay/policy.toml
USER 10001:10001
EXPOSE 8765 8766
# /healthz: the process answers (liveness). Load balancers check /readyz.
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('RELAY_OPS_PORT', '8766') + '/healthz', timeout=2)"]
CMD ["nexus-relay", "serve"]
