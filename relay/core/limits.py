"""What one relay, one user and one connection may use: the relay's limits."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    # Connections
    max_connections: int = 10_000  # authenticated
    max_unauthenticated: int = 1_000  # connected, not yet authenticated
    max_connections_per_user: int = 20
    max_subscriptions_per_connection: int = 50
    max_channels_per_connection: int = 100  # Supabase's endpoint: topics joined at once
    # Outbound traffic
    max_outbox_bytes: int = 8 * 1024 * 1024  # frames queued for one connection in one batch
    max_change_bytes: int = 256 * 1024  # a change with larger rows is sent as too_large
    max_replay_bytes: int = 4 * 1024 * 1024  # what one resume may replay; beyond: gap
    # Inbound traffic
    max_messages_per_second: float = 20.0
    max_frame_bytes: int = 64 * 1024
    # Timeouts
    auth_timeout: float = 5.0
    token_expiry_warning: float = 60.0
    # Supabase's endpoint: a refused join is answered this late (as Supabase
    # does), below the clients' 10 s join timeout: they rejoin at once otherwise.
    join_error_delay: float = 5.0
