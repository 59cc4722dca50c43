"""Storage: the SQL schema, the dialect engines and every query of the node.

It owns rows and transactions and nothing else: it never pushes to a socket
and never sees a request object. Seqs are allocated here and only here.
"""

from gochat.store.database import Database
from gochat.store.engines import DatabaseURLError, engine_from_url
from gochat.store.store import (
    Conflict,
    NotFound,
    Store,
    UpItem,
    UpResult,
)

__all__ = [
    "Conflict",
    "Database",
    "DatabaseURLError",
    "NotFound",
    "Store",
    "UpItem",
    "UpResult",
    "engine_from_url",
]
