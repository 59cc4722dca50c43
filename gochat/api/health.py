"""``/healthz`` for load balancers: does the database (and Redis) answer?

200 with ``{"code": 200, "msg": "ok", "data": {"database": "ok", ...}}`` when
every dependency answered within :data:`TIMEOUT` seconds, else 503 with the
failing part's reason. Presence is checked when it has a ``ping()`` (Redis in
a cluster); in-process presence has nothing to check.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web import resource, server
from twisted.web.server import Request

from gochat.api.resource import write_json

TIMEOUT = 2.0  # seconds a dependency has to answer


class HealthResource(resource.Resource):
    isLeaf = True
    log = Logger()

    def __init__(
        self, database: Any, presence: Any, clock: IReactorTime, timeout: float = TIMEOUT
    ) -> None:
        super().__init__()
        self.database = database
        self.presence = presence
        self.clock = clock
        self.timeout = timeout

    def render_GET(self, request: Request) -> Any:  # noqa: N802
        d = self.check()

        def answer(result: tuple[bool, dict[str, str]]) -> None:
            healthy, parts = result
            if request.finished or request._disconnected:
                return
            write_json(request, 200 if healthy else 503, "ok" if healthy else "unhealthy", parts)

        d.addCallback(answer)
        d.addErrback(lambda f: self.log.failure("/healthz failed", f))
        return server.NOT_DONE_YET

    render_HEAD = render_GET  # noqa: N815

    @defer.inlineCallbacks
    def check(self) -> Any:
        """Fires with ``(healthy, {part: "ok" or the reason})``."""
        probes = {"database": self.database.ping}
        ping = getattr(self.presence, "ping", None)
        if ping is not None:
            probes["redis"] = ping
        names = list(probes)
        results = yield defer.DeferredList(
            [self._probe(probes[name]) for name in names], consumeErrors=True
        )
        parts = {name: reason for name, (_, reason) in zip(names, results, strict=True)}
        return all(r == "ok" for r in parts.values()), parts

    def _probe(self, ping: Any) -> defer.Deferred[Any]:
        d = defer.maybeDeferred(ping)
        d.addTimeout(self.timeout, self.clock)
        d.addCallbacks(lambda _: "ok", self._reason)
        return d

    def _reason(self, failure: Any) -> str:
        if failure.check(defer.TimeoutError, defer.CancelledError):
            return f"no answer within {self.timeout:g}s"
        return f"error: {failure.getErrorMessage() or failure.type.__name__}"
