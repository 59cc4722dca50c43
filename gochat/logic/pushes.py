"""Reliable pushes: what each ``push_ack`` device has not acknowledged yet.

A device that logs in with ``push_ack`` acknowledges pushes cumulatively
(``ACKMsg{AT_Push, seq}``: everything up to ``seq`` has arrived). The tracker
keeps, per such connection, the frames it has not acknowledged and sends each
again after ``timeout`` seconds, at most ``retries`` times; after the last try
the push is forgotten and the device is left to sync (its client notices the
gap at the next push, or syncs at its next login).

Time is one periodic sweep for the whole node (a ``LoopingCall`` on the hub's
injected clock), not a timer per message: it starts with the first tracked
push, stops at the first sweep that finds nothing held, and looks only at
connections whose earliest deadline has passed. Memory is bounded per
connection by ``window``: past it the oldest push is forgotten, which costs
the device nothing if it already got the push and otherwise leaves it to sync
on the gap the next push reveals.
Devices without ``push_ack`` never reach the tracker.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from typing import TYPE_CHECKING

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from gochat import metrics

if TYPE_CHECKING:
    from gochat.logic.session import Session


class _Pending:
    """One unacknowledged push: its frame, when it is due again and how often it went out."""

    __slots__ = ("frame", "due", "sent")

    def __init__(self, frame: bytes, due: float) -> None:
        self.frame = frame
        self.due = due
        self.sent = 1


class _Window:
    """The unacknowledged pushes of one connection, by seq."""

    __slots__ = ("pending", "next_due", "top")

    def __init__(self) -> None:
        self.pending: OrderedDict[int, _Pending] = OrderedDict()  # ascending seq
        self.next_due = float("inf")
        self.top = 0  # highest seq tracked so far


#: Every tracker in the process, summed when Prometheus scrapes (several
#: nodes share a process in tests); nothing is counted on the push path.
_TRACKERS: weakref.WeakSet[PushTracker] = weakref.WeakSet()
metrics.UNACKED_PUSHES.set_function(lambda: sum(t.unacked for t in list(_TRACKERS)))
metrics.PUSH_WINDOWS.set_function(lambda: sum(t.holding for t in list(_TRACKERS)))


class PushTracker:
    log = Logger()

    def __init__(
        self, clock: IReactorTime, timeout: float = 5.0, retries: int = 3, window: int = 512
    ) -> None:
        self.clock = clock
        self.timeout = timeout
        self.retries = retries
        self.window = window
        #: How often the sweep runs: a retransmit goes out at most this late.
        self.tick = max(timeout / 5, 0.01)
        self.windows: dict[Session, _Window] = {}
        self._loop = LoopingCall(self.sweep)
        self._loop.clock = clock
        _TRACKERS.add(self)

    @property
    def unacked(self) -> int:
        """Pushes held node-wide, for tests and the gauge."""
        return sum(len(w.pending) for w in self.windows.values())

    @property
    def holding(self) -> int:
        """Connections with at least one unacknowledged push."""
        return sum(1 for w in self.windows.values() if w.pending)

    def track(self, session: Session, seq: int, frame: bytes) -> None:
        """Remember a push that was just sent to ``session``."""
        window = self.windows.get(session)
        if window is None:
            window = self.windows[session] = _Window()
            self._start()
        pending = window.pending
        if seq in pending:
            return
        due = self.clock.seconds() + self.timeout
        entry = _Pending(frame, due)
        if seq > window.top:
            pending[seq] = entry
            window.top = seq
        else:
            # A push that arrived out of seq order (from another node): keep
            # the dict ascending so a cumulative ACK pops from the front.
            pending[seq] = entry
            window.pending = OrderedDict(sorted(pending.items()))
        if due < window.next_due:
            window.next_due = due
        if len(window.pending) > self.window:
            window.pending.popitem(last=False)
            metrics.PUSHES_ABANDONED.labels("window").inc()

    def acked(self, session: Session, seq: int) -> None:
        """Everything up to ``seq`` reached ``session``."""
        window = self.windows.get(session)
        if window is None:
            return
        pending = window.pending
        while pending and next(iter(pending)) <= seq:
            pending.popitem(last=False)
        # An emptied window stays until the next sweep: a connection that is
        # pushed to and ACKs all the time does not rebuild it for every push.

    def forget(self, session: Session) -> None:
        """Drop a connection's window (it closed, or holds nothing more)."""
        self.windows.pop(session, None)

    def sweep(self) -> int:
        """Send again every push past its deadline; returns how many went out."""
        now = self.clock.seconds()
        resent = 0
        for session, window in list(self.windows.items()):
            if not window.pending or session.closed:
                self.forget(session)
                continue
            if window.next_due > now:
                continue
            frames = []
            given_up = []
            next_due = float("inf")
            for seq, entry in window.pending.items():
                if entry.due <= now:
                    if entry.sent > self.retries:
                        given_up.append(seq)
                        continue
                    entry.sent += 1
                    entry.due = now + self.timeout
                    frames.append(entry.frame)
                if entry.due < next_due:
                    next_due = entry.due
            window.next_due = next_due
            for seq in given_up:
                del window.pending[seq]
            if given_up:
                metrics.PUSHES_ABANDONED.labels("retries").inc(len(given_up))
            if frames:
                resent += len(frames)
                session.send_many(frames)
        if resent:
            metrics.PUSH_RETRANSMITS.inc(resent)
        if not self.windows:
            self.stop()  # idle until the next tracked push
        return resent

    def _start(self) -> None:
        if not self._loop.running:
            self._loop.start(self.tick, now=False)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()
