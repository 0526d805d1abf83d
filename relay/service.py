"""The relay service: the core and its shells, assembled from settings, run supervised.

Its long-lived tasks (the doorbell's LISTEN, the reading of the log,
housekeeping, the ops endpoints, the JWKS refresh, the other relays through
Redis) run in one task group: if
any of them ends with an exception, it is logged with its traceback, the relay
shuts down, and ``run`` raises ``TaskFailed``, so that the process exits
non-zero and its supervisor (systemd, Kubernetes) restarts it. Nothing fails
in silence.
"""

import asyncio
import contextlib
import logging
import signal
from collections.abc import Coroutine, Iterator
from typing import Any

import jwt
import uvicorn

from relay import catalog, jwks, metrics
from relay.broadcast_api import broadcast_endpoint
from relay.core import policy
from relay.core.errors import ConfigError
from relay.core.fanout import Fanout
from relay.core.tokens import TokenVerifier
from relay.ops import ops_app
from relay.peers_redis import RedisPeers
from relay.reader import LogReader
from relay.server import RelayServer
from relay.settings import Settings, TokenSettings

logger = logging.getLogger("relay")


class TaskFailed(Exception):
    """A long-lived task of the relay ended; the relay has shut down."""


class _Stopped(Exception):
    """Ends the task group when the relay is asked to stop."""


class _OpsServer(uvicorn.Server):
    """uvicorn for the ops endpoints, inside the relay's loop: the relay handles signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def token_verifier(
    policies: policy.PolicySet, tokens: TokenSettings, jwk_set: jwt.PyJWKSet | None = None
) -> TokenVerifier:
    """The relay's token verifier, from its settings (``jwk_set``: the keys
    fetched from the JWKS URL, if one is set; a JWKS file is read here)."""
    if tokens.jwks_file:
        jwk_set = jwks.read_file(tokens.jwks_file)
    return TokenVerifier(
        claims=policies.claims,
        bypass_roles=policies.bypass_roles,
        policy_roles=policies.policy_roles,
        secret=tokens.jwt_secret,
        jwks=jwk_set,
        algorithms=tokens.algorithms,
        audience=tokens.audience,
        issuer=tokens.issuer,
        leeway=tokens.leeway,
    )


class Relay:
    def __init__(self, settings: Settings, jwk_set: jwt.PyJWKSet | None = None) -> None:
        """Assemble the relay; ``jwk_set``: the keys fetched from the JWKS URL, if one is set."""
        self.settings = settings
        self.policies = policy.load(settings.policy_file)
        self.verifier = token_verifier(self.policies, settings.tokens, jwk_set)
        self.fanout = Fanout(
            self.policies,
            self.verifier,
            settings.limits,
            settings.history_size,
            settings.history_max_bytes,
            settings.resume_secret,
        )
        self.server = RelayServer(
            self.fanout,
            path=settings.path,
            supabase_path=settings.supabase_path,
            database_url=settings.database_url,
            allowed_origins=settings.allowed_origins,
            max_send_buffer_bytes=settings.max_send_buffer_bytes,
            ping_interval=settings.ping_interval,
            ping_timeout=settings.ping_timeout,
        )
        self.reader = LogReader(
            settings.database_url,
            self.fanout,
            self.server.flush,
            poll_interval=settings.poll_interval,
            retention=settings.log_retention,
            max_log_bytes=settings.log_max_bytes,
        )
        # Several relays: their rooms joined through Redis. Without it, the
        # rooms publish nothing (Rooms.publish stays None).
        self.peers: RedisPeers | None = None
        if settings.redis_url is not None:
            self.peers = RedisPeers(
                settings.redis_url,
                self.fanout.rooms,
                self.server.flush,
                heartbeat=settings.redis_heartbeat,
            )
            self.fanout.rooms.presence.node_timeout = 3 * settings.redis_heartbeat
            self.peers.attach()
        self.registry, latency = metrics.registry(self.fanout, self.reader, self.peers)
        self.reader.observe_latency = latency.observe
        self.stopping = asyncio.Event()
        self.draining = False
        self._drain_task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        """Serve until ``stopping`` is set (SIGINT, SIGTERM), then shut down gracefully.

        Raises ``TaskFailed``, after shutting down, when a long-lived task failed.
        """
        ops = _OpsServer(
            uvicorn.Config(
                ops_app(
                    self.fanout,
                    self.reader,
                    self.registry,
                    lambda: self.draining,
                    peers=self.peers,
                    broadcast=broadcast_endpoint(
                        self.fanout,
                        self.server.flush,
                        per_second=self.settings.api_broadcasts_per_second,
                    ),
                ),
                host=self.settings.ops_host,
                port=self.settings.ops_port,
                log_config=None,
                access_log=False,
                lifespan="off",
            )
        )
        try:
            async with asyncio.TaskGroup() as group:
                tasks = {
                    name: group.create_task(self._supervised(name, work), name=name)
                    for name, work in self._tasks(ops).items()
                }
                await self._serve_clients()
                await self.stopping.wait()
                logger.info("shutting down: closing connections with 1001 (going away)")
                await self.server.close()
                if self.peers is not None:
                    await self.peers.close()  # NodeGone: its presence leaves everywhere
                ops.should_exit = True  # uvicorn closes its socket; cancelling would not
                await tasks["ops"]
                raise _Stopped  # ends the group: the other tasks are cancelled
        except* _Stopped:
            pass
        except* Exception as failed:
            raise TaskFailed(
                ", ".join(f"{exc}" for exc in failed.exceptions) or "a task failed"
            ) from failed
        finally:
            await self.server.close()
            await self.reader.close()
            logger.info("stopped")

    def reload(self) -> None:
        """SIGHUP: read the policy file again. A file that does not load changes
        nothing (the policies in force stay, and the log says why); one that
        does applies to every live subscription (``Fanout.set_policies``)."""
        path = self.settings.policy_file
        try:
            policies = policy.load(path)
        except ConfigError as exc:
            logger.error("policy file not reloaded, the policies in force stay: %s", exc)
            return
        self.policies = policies
        catalog.log_problems(logger, self.fanout.set_policies(policies))
        self.server.flush()
        logger.info("reloaded the policy file %s: %d table policies", path, len(policies.tables))

    def drain(self) -> None:
        """SIGTERM: not ready from now on (the load balancer sends no one new),
        accept nobody, close the connections over the drain window, then stop.
        A second SIGTERM stops at once."""
        if self.draining:
            self.stopping.set()
            return
        self.draining = True
        window = self.settings.drain_window
        logger.info(
            "draining: %d connection(s) closed over %g s, then the relay stops",
            len(self.server.connections),
            window,
        )
        self._drain_task = asyncio.get_running_loop().create_task(self._drain(window))

    async def _drain(self, window: float) -> None:
        try:
            # Past the window, a client that does not answer a close gets the
            # close timeout (5 s) before its connection is dropped.
            await asyncio.wait_for(self.server.drain(window), window + 10)
        except TimeoutError:
            logger.warning("connections still open after the drain window: closing them")
        finally:
            self.stopping.set()

    def _tasks(self, ops: uvicorn.Server) -> dict[str, Coroutine[Any, Any, None]]:
        tasks = {
            "listen": self.reader.listen(),
            "process": self.reader.process(),
            "housekeeping": self.reader.housekeeping(),
            "ops": ops.serve(),
        }
        tokens = self.settings.tokens
        if tokens.jwks_url:
            tasks["jwks"] = jwks.keep_fresh(self.verifier, tokens.jwks_url, tokens.jwks_refresh)
        if self.peers is not None:
            tasks["peers"] = self.peers.run()
        return tasks

    async def _supervised(self, name: str, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work``, which should run until cancelled; its end is the relay's."""
        try:
            await work
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # uvicorn exits (SystemExit) when it cannot bind
            logger.critical("the %s task failed; the relay stops", name, exc_info=True)
            raise RuntimeError(f"the {name} task failed: {exc!r}") from exc
        if not self.stopping.is_set():
            logger.critical("the %s task ended; the relay stops", name)
            raise RuntimeError(f"the {name} task ended")

    async def _serve_clients(self) -> None:
        """Accept clients once the published tables are known: before that, every
        subscription would be refused as unknown."""
        first_load = asyncio.ensure_future(self.reader.first_load.wait())
        stopping = asyncio.ensure_future(self.stopping.wait())
        try:
            await asyncio.wait([first_load, stopping], return_when=asyncio.FIRST_COMPLETED)
        finally:
            first_load.cancel()
            stopping.cancel()
        if not self.reader.first_load.is_set():
            return
        settings = self.settings
        await self.server.start(settings.host, settings.port)
        logger.info(
            "relay serving ws://%s:%s%s, ops on http://%s:%s (log %s)",
            settings.host,
            settings.port,
            settings.path,
            settings.ops_host,
            settings.ops_port,
            self.fanout.stream.log_id,
        )


async def serve(settings: Settings) -> None:
    jwk_set = None
    if settings.tokens.jwks_url and not settings.tokens.jwks_file:
        jwk_set = await jwks.fetch_at_start(settings.tokens.jwks_url)
    relay = Relay(settings, jwk_set)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, relay.stopping.set)
    loop.add_signal_handler(signal.SIGTERM, relay.drain)
    loop.add_signal_handler(signal.SIGHUP, relay.reload)
    await relay.run()
