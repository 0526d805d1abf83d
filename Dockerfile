# Nexus Relay and the Nexus portal, one image.
#
#   docker run -e DATABASE_URL=... IMAGE                        migrations
#   docker run -e DATABASE_URL=... -e RELAY_POLICY_FILE=... \
#              -e RELAY_JWT_SECRET=... -e RELAY_HOST=0.0.0.0 IMAGE nexus-relay serve
#
# See the README's settings table.

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
ENV PATH=/opt/nexus/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    RELAY_POLICY_FILE=/opt/nexus/lib/python3.11/site-packages/portal/relay-policy.toml
USER 10001:10001
EXPOSE 8765 8766
CMD ["alembic", "upgrade", "head"]
