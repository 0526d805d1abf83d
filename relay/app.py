"""A running relay: the core and its shells, assembled from settings."""

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator
from pathlib import Path

import jwt
import uvicorn

from relay import metrics, policy
from relay.errors import ConfigError
from relay.fanout import Fanout
from relay.listener import Listener
from relay.ops import ops_app
from relay.server import RelayServer
from relay.settings import Settings
from relay.tokens import TokenVerifier

logger = logging.getLogger("relay")

JWKS_REFETCH_S = 30.0  # the least time between two fetches of the JWKS


class _OpsServer(uvicorn.Server):
    """uvicorn for the ops endpoints, inside the relay's loop: the relay handles signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def read_jwks_file(path: Path) -> jwt.PyJWKSet:
    try:
        return jwt.PyJWKSet.from_json(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"RELAY_JWKS_FILE: cannot read {path}: {exc.strerror}") from exc
    except (jwt.PyJWKSetError, jwt.InvalidKeyError, ValueError) as exc:
        raise ConfigError(f"RELAY_JWKS_FILE: {path} is not a usable JWKS: {exc}") from exc


async def fetch_jwks(client: jwt.PyJWKClient) -> jwt.PyJWKSet:
    # PyJWKClient fetches with urllib, which blocks: off the event loop.
    return await asyncio.to_thread(client.get_jwk_set, True)


class Relay:
    def __init__(self, settings: Settings, jwks: jwt.PyJWKSet | None = None) -> None:
        """Assemble the relay; ``jwks``: the keys fetched from ``settings.jwks_url``, if set."""
        self.settings = settings
        self.policies = policy.load(settings.policy_file)
        self.jwks_client = (
            jwt.PyJWKClient(settings.jwks_url, cache_jwk_set=False) if settings.jwks_url else None
        )
        if settings.jwks_file:
            jwks = read_jwks_file(settings.jwks_file)
        self.verifier = TokenVerifier(
            claims=self.policies.claims,
            bypass_roles=self.policies.bypass_roles,
            policy_roles=self.policies.policy_roles,
            secret=settings.jwt_secret,
            jwks=jwks,
            algorithms=settings.jwt_algorithms,
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            leeway=settings.jwt_leeway,
        )
        self.fanout = Fanout(
            self.policies,
            self.verifier,
            settings.limits,
            settings.history_size,
            settings.history_max_bytes,
        )
        self.server = RelayServer(
            self.fanout,
            path=settings.path,
            allowed_origins=settings.allowed_origins,
            max_send_buffer_bytes=settings.max_send_buffer_bytes,
            ping_interval=settings.ping_interval,
            ping_timeout=settings.ping_timeout,
        )
        self.listener = Listener(
            settings.database_url,
            self.fanout,
            self.server.flush,
            intake_limit=settings.intake_limit,
            large_change_retention=settings.large_change_retention,
        )
        self.registry, latency = metrics.registry(self.fanout, self.listener)
        self.listener.observe_latency = latency.observe
        self.stopping = asyncio.Event()

    async def run(self) -> None:
        """Serve until ``stopping`` is set (SIGINT, SIGTERM), then shut down gracefully."""
        settings = self.settings
        tasks: list[asyncio.Task[None]] = []
        if self.jwks_client is not None:
            tasks.append(asyncio.create_task(self._refresh_jwks()))
        ops = _OpsServer(
            uvicorn.Config(
                ops_app(self.fanout, self.listener, self.registry),
                host=settings.ops_host,
                port=settings.ops_port,
                log_config=None,
                access_log=False,
                lifespan="off",
            )
        )
        tasks += [
            asyncio.create_task(self.listener.listen(), name="listen"),
            asyncio.create_task(self.listener.process(), name="process"),
            asyncio.create_task(self.listener.housekeeping(), name="housekeeping"),
        ]
        ops_task = asyncio.create_task(ops.serve(), name="ops")
        # Accept clients once the published tables are known: before that,
        # every subscription would be refused as unknown.
        first_load = asyncio.create_task(self.listener.first_load.wait())
        await asyncio.wait(
            [first_load, asyncio.create_task(self.stopping.wait())],
            return_when=asyncio.FIRST_COMPLETED,
        )
        if first_load.done():
            await self.server.start(settings.host, settings.port)
        logger.info(
            "relay serving ws://%s:%s%s, ops on http://%s:%s (epoch %s)",
            settings.host,
            settings.port,
            settings.path,
            settings.ops_host,
            settings.ops_port,
            self.fanout.epoch,
        )
        try:
            await self.stopping.wait()
        finally:
            logger.info("shutting down: closing connections with 1001 (going away)")
            await self.server.close()
            ops.should_exit = True
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await ops_task
            await self.listener.close()
            logger.info("stopped")

    async def _refresh_jwks(self) -> None:
        """Fetch the JWKS again every RELAY_JWKS_REFRESH_S, and soon after a token
        names a key it lacks (a rotation), at most every JWKS_REFETCH_S."""
        assert self.jwks_client is not None
        unknown_key = asyncio.Event()
        self.verifier.on_unknown_key = unknown_key.set
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(unknown_key.wait(), self.settings.jwks_refresh)
            unknown_key.clear()
            try:
                self.verifier.jwks = await fetch_jwks(self.jwks_client)
            except Exception as exc:  # a bad answer must not end the refreshing
                logger.warning("could not refresh the JWKS (keeping the old keys): %s", exc)
            await asyncio.sleep(JWKS_REFETCH_S)


async def serve(settings: Settings) -> None:
    jwks = None
    if settings.jwks_url and not settings.jwks_file:
        try:
            jwks = await fetch_jwks(jwt.PyJWKClient(settings.jwks_url, cache_jwk_set=False))
        except jwt.PyJWKClientError as exc:
            raise ConfigError(f"RELAY_JWKS_URL: cannot fetch {settings.jwks_url}: {exc}") from exc
    relay = Relay(settings, jwks)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, relay.stopping.set)
    await relay.run()
