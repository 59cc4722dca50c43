"""A simulated network between real clients and a real hub, on one fake clock.

:class:`Link` joins a :class:`gochat.client.GoChatClient` (it plays the
client's WebSocket protocol) to a fresh hub session (it plays the session's
connection). The network decides what becomes of each frame:
:class:`LossyNetwork` drops, duplicates, delays and cuts at random (seeded);
:class:`ScriptedNetwork` delivers everything except what a test tells it to
drop. Only the network is simulated: hub, store, SQLite and client are real.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, reactor

from gochat.client import GoChatClient
from tests.logic_util import LogicTestCase

STEP = 0.05  # simulated seconds per turn of the test loop
#: The network's seed; GOCHAT_TEST_SEED=N replays another run of the dice.
SEED = int(os.environ.get("GOCHAT_TEST_SEED", "20261126"))


class LossyNetwork:
    """Carries frames late, twice or not at all."""

    def __init__(
        self,
        clock: Any,
        rng: random.Random,
        drop: float = 0.1,
        duplicate: float = 0.05,
        max_delay: float = 0.4,
        cut: float = 0.002,
    ) -> None:
        self.clock = clock
        self.rng = rng
        self.drop = drop
        self.duplicate = duplicate
        self.max_delay = max_delay
        self.cut = cut
        self.counts = {"carried": 0, "dropped": 0, "duplicated": 0, "cuts": 0}

    def carry(self, link: Link, deliver: Any, payload: bytes) -> None:
        rng = self.rng
        if rng.random() < self.cut:
            self.counts["cuts"] += 1
            link.shut("network cut")
            return
        if rng.random() < self.drop:
            self.counts["dropped"] += 1
            return
        copies = 1
        if rng.random() < self.duplicate:
            copies = 2
            self.counts["duplicated"] += 1
        for _ in range(copies):
            self.counts["carried"] += 1
            self.clock.callLater(rng.uniform(0, self.max_delay), link.arrive, deliver, payload)


class Link:
    """One connection between a client and a fresh hub session through the network.

    The client sees it as its WebSocket protocol (``sendMessage``,
    ``sendClose``); the session sees :class:`_ServerEnd` as its connection.
    """

    def __init__(self, net: LossyNetwork, hub: Any, client: GoChatClient) -> None:
        self.net = net
        self.client = client
        self.open = True
        self.closing = False
        self.session = hub.open_session(_ServerEnd(self))

    # the client's side
    def sendMessage(self, payload: bytes, isBinary: bool) -> None:  # noqa: N802
        if self.open and not self.closing:
            self.net.carry(self, self.session.frame_received, payload)

    def sendClose(self, code: int = 1000, reason: str | None = None) -> None:  # noqa: N802
        self.close("client closed")

    def close(self, reason: str) -> None:
        """A WebSocket close: nothing more is sent, what is on its way still arrives."""
        if self.open and not self.closing:
            self.closing = True
            self.net.clock.callLater(self.net.max_delay, self.shut, reason)

    def arrive(self, deliver: Any, payload: bytes) -> None:
        if self.open:
            deliver(payload)

    def shut(self, reason: str) -> None:
        """The connection is gone (a cut loses whatever was on its way)."""
        if not self.open:
            return
        self.open = False
        self.net.clock.callLater(0, self.session.connection_lost)
        self.net.clock.callLater(0, self.client.connection_lost, 1000, reason)


class _ServerEnd:
    peer = "lossy"

    def __init__(self, link: Link) -> None:
        self.link = link

    def send(self, frame: bytes) -> None:
        if self.link.open and not self.link.closing:
            self.link.net.carry(self.link, self.link.client.frame_received, frame)

    def send_many(self, frames: list[bytes]) -> None:
        for frame in frames:
            self.send(frame)

    def send_run(self, run: Any, first_seq: int, skip: Any = ()) -> bool:
        return False  # frame by frame, through send_many

    def close(self, reason: str, going_away: bool = False) -> None:
        self.link.close(reason)


class ScriptedNetwork:
    """Delivers every frame on the next clock step, except those ``drop`` picks."""

    max_delay = 0.0

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        #: ``drop(link, payload, to_client) -> bool``
        self.drop: Callable[[Link, bytes, bool], bool] = lambda link, payload, to_client: False
        self.dropped: list[bytes] = []

    def carry(self, link: Link, deliver: Any, payload: bytes) -> None:
        to_client = deliver == link.client.frame_received
        if self.drop(link, payload, to_client):
            self.dropped.append(payload)
            return
        self.clock.callLater(0, link.arrive, deliver, payload)


class NetworkTestCase(LogicTestCase):
    """A hub and clients on one fake clock; the clock moves only while the
    real database has nothing in flight, so a run is reproducible."""

    timeout = 300

    def setUp(self) -> Any:
        self.rng = random.Random(SEED)
        self.max_window = 0
        d = super().setUp()
        d.addCallback(lambda _: self._count_interactions())
        return d

    def _count_interactions(self) -> None:
        """Know when the real database has nothing in flight, so the fake clock
        only moves while the node waits for nothing but time."""
        self.inflight = 0
        self._idle: list[defer.Deferred] = []
        run = self.database.run_interaction

        def counted(*args: Any, **kwargs: Any) -> defer.Deferred:
            self.inflight += 1
            d = run(*args, **kwargs)
            d.addBoth(self._finished)
            return d

        self.database.run_interaction = counted

    def _finished(self, result: Any) -> Any:
        self.inflight -= 1
        reactor.callLater(0, self._check_idle)  # after the caller's own callbacks
        return result

    def _check_idle(self) -> None:
        if self.inflight == 0:
            waiters, self._idle = self._idle, []
            for d in waiters:
                d.callback(None)

    def database_idle(self) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self._idle.append(d)
        reactor.callLater(0, self._check_idle)
        return d

    @defer.inlineCallbacks
    def run_until(self, done: Any, limit: float) -> Any:
        """Advance the clock a step at a time until ``done()``; fails past ``limit``."""
        start = self.clock.seconds()
        while not done():
            if self.clock.seconds() - start > limit:
                self.fail(f"not done after {limit} simulated seconds")
            self.clock.advance(STEP)
            self.max_window = max(
                [self.max_window, *(len(w.pending) for w in self.hub.pushes.windows.values())]
            )
            yield self.database_idle()

    def connect(self, net: Any, client: GoChatClient) -> defer.Deferred:
        """Attach ``client`` to a new link; fires when it has logged in and synced."""
        return client.attach(Link(net, self.hub, client))
