# Nexus Relay and the Nexus portal, one image. The command runs the
# migrations against DATABASE_URL; the relay and the portal are started with
# their own commands (see the README, "Deploying").

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
    PYTHONUNBUFFERED=1
USER 10001:10001
CMD ["alembic", "upgrade", "head"]
