"""Bench setup straight in the node's database: thousands of users in seconds.

Registering over HTTP costs an argon2 hash per user (tens of milliseconds of
a hashing thread each): 10,000 members take minutes. A benchmark run on the
node's own machine can instead write its users and group in a few bulk
transactions and sign their tokens with the node's secret. The users get a
password hash no password matches, so they can log in with their tokens only.
"""

from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING, Any

from twisted.internet import defer

if TYPE_CHECKING:
    from gochat.auth import Account

#: Users per transaction.
CHUNK = 2000
#: Stored as the password hash: not an argon2 string, so no password verifies.
NO_PASSWORD = "!bench"


@defer.inlineCallbacks
def create_users(db_url: str, secret_path: str, count: int) -> Any:
    """Create ``count`` users; fires with ``[(user_id, token), ...]``."""
    from gochat.auth import TokenSigner, load_or_create_secret
    from gochat.store import Database, Store, engine_from_url

    signer = TokenSigner(load_or_create_secret(secret_path))
    database = Database(engine_from_url(db_url, ""))
    try:
        store = Store(database)
        prefix = f"d{int(time.time()):x}{random.getrandbits(16):04x}"
        accounts: list[Account] = []
        for start in range(0, count, CHUNK):
            chunk = [
                (f"{prefix}{i:06d}", f"bench{i}", NO_PASSWORD)
                for i in range(start, min(count, start + CHUNK))
            ]
            accounts += yield store.create_users(chunk)
    finally:
        database.close()
    return [(account.user_id, signer.issue(account)) for account in accounts]


@defer.inlineCallbacks
def create_group(db_url: str, owner: int, members: list[int]) -> Any:
    """Create a group of ``members`` and ``owner``; fires with its id."""
    from gochat.store import Database, Store, engine_from_url

    database = Database(engine_from_url(db_url, ""))
    try:
        group_id = yield Store(database).create_group(owner, "bench", members)
    finally:
        database.close()
    return group_id
