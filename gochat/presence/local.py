"""In-process presence for a single node."""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet import defer


class Presence(Protocol):
    node_id: str

    def user_online(self, user_id: int) -> defer.Deferred[Any]:
        """Record that this node holds a connection of ``user_id``."""

    def user_offline(self, user_id: int) -> defer.Deferred[Any]:
        """This node holds no more connections of ``user_id``."""

    def nodes_for(self, user_ids: list[int]) -> defer.Deferred[Any]:
        """Fires with ``{node_id: [user_id, ...]}`` for nodes other than this one."""

    def claim_device(self, user_id: int, device_id: str) -> defer.Deferred[Any]:
        """The newest login of (user, device) is on this node (never fails)."""

    def device_holder(self, user_id: int, device_id: str) -> defer.Deferred[Any]:
        """Fires with the node id of the newest login of (user, device), or ``None``."""

    # Optional: ``ping() -> Deferred[Any]`` that fails when the shared presence
    # store (Redis) does not answer. ``/healthz`` calls it when it exists;
    # in-process presence has no such method because it cannot be down.


class LocalPresence:
    """Everything is on this node, so no other node ever holds anyone."""

    def __init__(self, node_id: str = "local") -> None:
        self.node_id = node_id
        self.online: set[int] = set()

    def user_online(self, user_id: int) -> defer.Deferred[Any]:
        self.online.add(user_id)
        return defer.succeed(None)

    def user_offline(self, user_id: int) -> defer.Deferred[Any]:
        self.online.discard(user_id)
        return defer.succeed(None)

    def nodes_for(self, user_ids: list[int]) -> defer.Deferred[Any]:
        return defer.succeed({})

    def claim_device(self, user_id: int, device_id: str) -> defer.Deferred[Any]:
        return defer.succeed(None)

    def device_holder(self, user_id: int, device_id: str) -> defer.Deferred[Any]:
        return defer.succeed(self.node_id)
