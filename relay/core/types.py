"""Types the core shares: rows, claims, index bounds, and ids that must not be mixed up.

Imports nothing of the package (as Starlette's ``types.py``).
"""

from collections.abc import Mapping
from typing import Any, NewType

# A row as the trigger layer renders it (row_to_json): column -> JSON value.
Row = Mapping[str, Any]
# The rows that a table's published foreign keys point at, by alias (None: no
# parent, or one the writer could not read).
Parents = Mapping[str, Row | None]
# The policy file's claims, by name, as read from a verified token.
Claims = Mapping[str, str | None]

# Where a value is read in a change: ("row", column) or ("parent", alias, column).
Path = tuple[str, ...]
# A subscription is filed in the index under bounds: every row it may receive
# has ``value`` at ``path``.
Bound = tuple[Path, Any]

UserId = NewType("UserId", str)
SubscriptionId = NewType("SubscriptionId", str)
ConnectionId = NewType("ConnectionId", str)
