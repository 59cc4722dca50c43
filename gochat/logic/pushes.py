"""Reliable pushes: what each ``push_ack`` device has not acknowledged yet.

A device that logs in with ``push_ack`` acknowledges pushes cumulatively
(``ACKMsg{AT_Push, seq}``: everything up to ``seq`` has arrived). The tracker
keeps, per such connection, the frames it has not acknowledged and sends each
again after ``timeout`` seconds, at most ``retries`` times; after the last try
the push is forgotten and the device is left to sync (its client notices the
gap at the next push, or syncs at its next login).

Time is one periodic sweep for the whole node (a ``LoopingCall`` on the hub's
injected clock), not a timer per message: it runs only while some connection
has unacknowledged pushes, and looks only at connections whose oldest
deadline has passed. Memory is bounded per connection by ``window``: past it
the oldest push is forgotten, which costs the device nothing if it already got
the push and otherwise leaves it to sync on the gap the next push reveals.
Devices without ``push_ack`` never reach the tracker.
"""

from __future__ import annotations

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
        self.pending: dict[int, _Pending] = {}  # ascending seq (see PushTracker.track)
        self.next_due = float("inf")
        self.top = 0  # highest seq tracked so far


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

    @property
    def unacked(self) -> int:
        """Pushes held node-wide, for tests and the gauge."""
        return sum(len(w.pending) for w in self.windows.values())

    def track(self, session: Session, seq: int, frame: bytes) -> None:
        """Remember a push that was just sent to ``session``."""
        window = self.windows.get(session)
        if window is None:
            window = self.windows[session] = _Window()
            metrics.PUSH_WINDOWS.inc()
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
            window.pending = dict(sorted(pending.items()))
        if due < window.next_due:
            window.next_due = due
        metrics.UNACKED_PUSHES.inc()
        if len(window.pending) > self.window:
            oldest = next(iter(window.pending))
            del window.pending[oldest]
            metrics.UNACKED_PUSHES.dec()
            metrics.PUSHES_ABANDONED.labels("window").inc()

    def acked(self, session: Session, seq: int) -> None:
        """Everything up to ``seq`` reached ``session``."""
        window = self.windows.get(session)
        if window is None:
            return
        pending = window.pending
        cleared = 0
        for s in list(pending):
            if s > seq:
                break
            del pending[s]
            cleared += 1
        if cleared:
            metrics.UNACKED_PUSHES.dec(cleared)
        if not pending:
            self.forget(session)

    def forget(self, session: Session) -> None:
        """Drop a connection's window (it closed, or holds nothing more)."""
        window = self.windows.pop(session, None)
        if window is None:
            return
        if window.pending:
            metrics.UNACKED_PUSHES.dec(len(window.pending))
        metrics.PUSH_WINDOWS.dec()
        if not self.windows:
            self.stop()

    def sweep(self) -> int:
        """Send again every push past its deadline; returns how many went out."""
        now = self.clock.seconds()
        resent = 0
        for session, window in list(self.windows.items()):
            if window.next_due > now:
                continue
            if session.closed:
                self.forget(session)
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
                metrics.UNACKED_PUSHES.dec(len(given_up))
                metrics.PUSHES_ABANDONED.labels("retries").inc(len(given_up))
            if frames:
                resent += len(frames)
                session.send_many(frames)
            if not window.pending:
                self.forget(session)
        if resent:
            metrics.PUSH_RETRANSMITS.inc(resent)
        return resent

    def _start(self) -> None:
        if not self._loop.running:
            self._loop.start(self.tick, now=False)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()
