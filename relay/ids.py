"""Ids that must not be mixed up."""

from typing import NewType

UserId = NewType("UserId", str)
SubscriptionId = NewType("SubscriptionId", str)
ConnectionId = NewType("ConnectionId", str)
