"""Business logic: login, upstream sequencing, routing of pushes, sync.

It knows nothing of WebSockets, HTTP or PB: a connection is anything with
``send``/``close`` (:class:`gochat.logic.session.Connection`), collaborators
are passed in, and time comes from an injected ``IReactorTime`` so tests can
drive it with ``twisted.internet.task.Clock``.
"""

from gochat.logic.hub import Hub, HubConfig
from gochat.logic.session import Connection, Session

__all__ = ["Connection", "Hub", "HubConfig", "Session"]
