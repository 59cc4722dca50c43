"""Presence: which nodes hold each user's connections.

A single node keeps it in process (:class:`LocalPresence`); a cluster keeps it
in Redis behind the same interface. Presence never sends anything itself.
"""

from gochat.presence.local import LocalPresence, Presence

__all__ = ["LocalPresence", "Presence"]
