# Nexus Relay and the Nexus portal, one image (see the README, "Deploying").
#
#   docker run -e DATABASE_URL=... IMAGE                  migrations (the default command)
#   docker run ... IMAGE nexus-relay serve                the relay
#   docker run ... IMAGE nexus-portal serve --host 0.0.0.0  the portal

FROM node:20-bookworm-slim AS assets
WORKDIR /assets
COPY package.json package-lock.json ./
# The relay's JavaScript client, which package.json links (file:clients/js).
COPY clients/js/package.json ./clients/js/
RUN npm ci --omit=dev --no-audit --no-fund

FROM python:3.11-slim-bookworm AS build
WORKDIR /src
RUN python -m venv /opt/nexus
ENV PATH=/opt/nexus/bin:$PATH
COPY pyproject.toml README.md ./
COPY relay ./relay
COPY portal ./portal
RUN pip install --no-cache-dir .

FROM python:3.11-slim-bookworm
RUN useradd --create-home --uid 10001 --user-group nexus
COPY --from=build /opt/nexus /opt/nexus
WORKDIR /app
COPY alembic.ini ./
COPY alembic ./alembic
COPY --from=assets /assets/node_modules/htmx.org/dist/htmx.min.js ./node_modules/htmx.org/dist/htmx.min.js
COPY clients/js/src/index.js ./node_modules/@nexus-relay/client/src/index.js
ENV PATH=/opt/nexus/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    RELAY_POLICY_FILE=/opt/nexus/lib/python3.11/site-packages/portal/relay-policy.toml \
    NEXUS_HTMX_PATH=/app/node_modules/htmx.org/dist/htmx.min.js \
    NEXUS_RELAY_CLIENT_PATH=/app/node_modules/@nexus-relay/client/src/index.js
USER 10001:10001
EXPOSE 8000 8765 8766
CMD ["alembic", "upgrade", "head"]
