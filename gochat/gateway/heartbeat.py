"""The heartbeat checker: closes connections idle past the timeout."""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from gochat import metrics
from gochat.logic import Hub


class HeartbeatChecker(Service):
    """A ``LoopingCall`` every ``interval`` seconds over every open session."""

    log = Logger()
    name = "heartbeat"

    def __init__(self, hub: Hub, clock: IReactorTime, timeout: float, interval: float) -> None:
        self.hub = hub
        self.timeout = timeout
        self.interval = interval
        self._loop = LoopingCall(self.check)
        self._loop.clock = clock

    def startService(self) -> None:  # noqa: N802
        super().startService()
        self._loop.start(self.interval, now=False)

    def stopService(self) -> None:  # noqa: N802
        if self._loop.running:
            self._loop.stop()
        super().stopService()  # Service's returns None

    def check(self) -> int:
        """Close every session idle for longer than the timeout; returns how many."""
        now = self.hub.clock.seconds()
        idle = [s for s in self.hub.sessions if now - s.last_active > self.timeout]
        for session in idle:
            metrics.HEARTBEAT_CLOSES.inc()
            session.close("heartbeat timeout")
        return len(idle)
