"""In-process presence for a single node."""

from __future__ import annotations

from typing import Protocol

from twisted.internet import defer


class Presence(Protocol):
    node_id: str

    def user_online(self, user_id: int) -> defer.Deferred:
        """Record that this node holds a connection of ``user_id``."""

    def user_offline(self, user_id: int) -> defer.Deferred:
        """This node holds no more connections of ``user_id``."""

    def nodes_for(self, user_ids: list[int]) -> defer.Deferred:
        """Fires with ``{node_id: [user_id, ...]}`` for nodes other than this one."""

    def claim_device(self, user_id: int, device_id: str) -> defer.Deferred:
        """The newest login of (user, device) is on this node (never fails)."""

    def device_holder(self, user_id: int, device_id: str) -> defer.Deferred:
        """Fires with the node id of the newest login of (user, device), or ``None``."""

    # Optional: ``ping() -> Deferred`` that fails when the shared presence
    # store (Redis) does not answer. ``/healthz`` calls it when it exists;
    # in-process presence has no such method because it cannot be down.


class LocalPresence:
    """Everything is on this node, so no other node ever holds anyone."""

    def __init__(self, node_id: str = "local") -> None:
        self.node_id = node_id
        self.online: set[int] = set()

    def user_online(self, user_id: int) -> defer.Deferred:
        self.online.add(user_id)
        return defer.succeed(None)

    def user_offline(self, user_id: int) -> defer.Deferred:
        self.online.discard(user_id)
        return defer.succeed(None)

    def nodes_for(self, user_ids: list[int]) -> defer.Deferred:
        return defer.succeed({})

    def claim_device(self, user_id: int, device_id: str) -> defer.Deferred:
        return defer.succeed(None)

    def device_holder(self, user_id: int, device_id: str) -> defer.Deferred:
        return defer.succeed(self.node_id)
