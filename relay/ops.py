"""The operations endpoints, on their own port: health, readiness, metrics, and
the services' broadcast API (``relay/broadcast_api.py``)."""

from collections.abc import Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from relay import broadcast_api
from relay.core.fanout import Fanout
from relay.peers_redis import RedisPeers
from relay.reader import LogReader


def ops_app(
    fanout: Fanout,
    reader: LogReader,
    registry: CollectorRegistry,
    draining: Callable[[], bool] = lambda: False,
    *,
    peers: RedisPeers | None = None,
    broadcast: Callable[[Request], Any] | None = None,
) -> Starlette:
    """``peers``: the other relays, through Redis, if any (reported, never a
    reason not to be ready: the relay serves its own clients without them).
    ``broadcast``: the endpoint of ``broadcast_api.PATH``, if served."""

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def readyz(request: Request) -> Response:
        # Ready: reading the log, knowing what is published (a relay whose
        # processing stopped must get no client), and not draining (SIGTERM).
        ready = (
            reader.connected and reader.first_load.is_set() and reader.processing and not draining()
        )
        return JSONResponse(
            {
                "ready": ready,
                "reader_connected": reader.connected,
                "reader_backend_pid": reader.backend_pid,
                "doorbell_listening": reader.listening,
                "processing": reader.processing,
                "draining": draining(),
                "log": fanout.stream.log_id,
                "tables": sorted(fanout.tables),
                "connections": len(fanout.connections),
                "position": fanout.position(),
                "redis_connected": peers.connected if peers is not None else None,
            },
            status_code=200 if ready else 503,
        )

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    routes = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
    ]
    if broadcast is not None:
        routes.append(Route(broadcast_api.PATH, broadcast, methods=["POST"]))
    return Starlette(routes=routes)
