"""The operations endpoints, on their own port: health, readiness, metrics."""

from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

if TYPE_CHECKING:
    from relay.fanout import Fanout
    from relay.listener import Listener


def ops_app(fanout: "Fanout", listener: "Listener", registry: CollectorRegistry) -> Starlette:
    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def readyz(request: Request) -> Response:
        ready = listener.connected and listener.first_load.is_set()
        return JSONResponse(
            {
                "ready": ready,
                "listener_connected": listener.connected,
                "listener_backend_pid": listener.backend_pid if listener.connected else None,
                "tables": sorted(fanout.tables),
                "connections": len(fanout.sessions),
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
