"""Ids that must not be mixed up."""

from typing import NewType

UserId = NewType("UserId", str)
TenantId = NewType("TenantId", str)
SubscriptionId = NewType("SubscriptionId", str)
ConnectionId = NewType("ConnectionId", str)
