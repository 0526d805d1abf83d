"""The keys of a team's identity provider: a JWKS file, or a URL fetched and kept fresh."""

import asyncio
import contextlib
import logging
from pathlib import Path

import jwt

from relay.core.errors import ConfigError
from relay.core.tokens import TokenVerifier

logger = logging.getLogger("relay.jwks")

REFETCH_S = 30.0  # the least time between two fetches of the JWKS


def read_file(path: Path) -> jwt.PyJWKSet:
    try:
        return jwt.PyJWKSet.from_json(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"RELAY_JWKS_FILE: cannot read {path}: {exc.strerror}") from exc
    except (jwt.PyJWKSetError, jwt.InvalidKeyError, ValueError) as exc:
        raise ConfigError(f"RELAY_JWKS_FILE: {path} is not a usable JWKS: {exc}") from exc


def client(url: str) -> jwt.PyJWKClient:
    return jwt.PyJWKClient(url, cache_jwk_set=False)


async def fetch(jwks_client: jwt.PyJWKClient) -> jwt.PyJWKSet:
    # PyJWKClient fetches with urllib, which blocks: off the event loop.
    return await asyncio.to_thread(jwks_client.get_jwk_set, True)


async def fetch_at_start(url: str) -> jwt.PyJWKSet:
    try:
        return await fetch(client(url))
    except jwt.PyJWKClientError as exc:
        raise ConfigError(f"RELAY_JWKS_URL: cannot fetch {url}: {exc}") from exc


async def keep_fresh(verifier: TokenVerifier, url: str, every: float) -> None:
    """Fetch the JWKS again every ``every`` seconds, and soon after a token names
    a key it lacks (a rotation), at most every ``REFETCH_S``. Forever."""
    jwks_client = client(url)
    unknown_key = asyncio.Event()
    verifier.on_unknown_key = unknown_key.set
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(unknown_key.wait(), every)
        unknown_key.clear()
        try:
            verifier.jwks = await fetch(jwks_client)
        except Exception as exc:  # a bad answer must not end the refreshing
            logger.warning("could not refresh the JWKS (keeping the old keys): %s", exc)
        else:
            logger.info("JWKS refreshed: %d keys", len(verifier.jwks.keys))
        await asyncio.sleep(REFETCH_S)
