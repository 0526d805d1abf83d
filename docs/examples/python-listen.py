"""A service that listens to the relay and stays connected: relay.client.RelayClient.

    RELAY_URL=ws://127.0.0.1:8765/ RELAY_TOKEN_FILE=/run/secrets/relay-token \\
      .venv/bin/python docs/examples/python-listen.py

The token comes from RELAY_TOKEN_FILE, read again each time the client needs
a new one (before the token expires, after a revocation), as a sidecar that
renews the file would have it; or from RELAY_TOKEN, which never changes. A
user's token comes from the portal's /nexus/api/realtime-config once signed
in (`token`); a service's, from your identity provider. It prints each event
of TABLE (default nexus_notifications; FILTER narrows it), one JSON line each;
with EXIT_AFTER=n it exits after n changes.
"""

import asyncio
import json
import os
from pathlib import Path

from relay.client import RelayClient


def token() -> str:
    """The token provider: called to connect, and whenever a new token is needed."""
    path = os.environ.get("RELAY_TOKEN_FILE")
    return Path(path).read_text().strip() if path else os.environ["RELAY_TOKEN"]


def show(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


async def main() -> None:
    url = os.environ.get("RELAY_URL", "ws://127.0.0.1:8765/")
    table = os.environ.get("TABLE", "nexus_notifications")
    exit_after = int(os.environ.get("EXIT_AFTER", "0"))
    async with await RelayClient.connect(url, token, reconnect=True) as client:
        ack = await client.subscribe(table, filter=os.environ.get("FILTER"))
        show(type="subscribed", id=ack["id"], table=ack["table"])
        changes = 0
        async for event in client.events():
            if event["type"] == "change":
                show(type="change", op=event["op"], new=event.get("new"), old=event.get("old"))
                changes += 1
                if changes == exit_after:
                    return
            elif event["type"] == "gap":
                # Changes may have been lost (a resume the log no longer holds, a
                # truncate...): re-fetch what the subscription shows, here.
                show(type="gap", reason=event["reason"])
            elif event["type"] in ("reconnecting", "reconnected"):
                show(**event)


if __name__ == "__main__":
    asyncio.run(main())
