"""The operations endpoints, on their own port: health, readiness, metrics."""

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from relay.core.fanout import Fanout
from relay.listener import Listener


def ops_app(fanout: Fanout, listener: Listener, registry: CollectorRegistry) -> Starlette:
    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def readyz(request: Request) -> Response:
        # Ready: connected to PostgreSQL, knowing what is published, and
        # processing changes (a relay whose processing stopped must get no client).
        ready = listener.connected and listener.first_load.is_set() and listener.processing
        return JSONResponse(
            {
                "ready": ready,
                "listener_connected": listener.connected,
                "processing": listener.processing,
                "listener_backend_pid": listener.backend_pid if listener.connected else None,
                "tables": sorted(fanout.tables),
                "connections": len(fanout.connections),
                "position": fanout.position(),
            },
            status_code=200 if ready else 503,
        )

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics),
        ]
    )
