"""Every reach into Autobahn's internals, in one place.

The gateway builds on Autobahn's ``WebSocketServerProtocol`` but needs a few
things its public API does not offer: a cheap "is the reader idle" check for
the fast frame path, a write hook that sees every byte queued for a client,
bounds on unfinished fragmented messages, and fixes to how bad close frames
are answered. Each reach below says why it is needed. They were written
against Autobahn 26.11 (``pyproject.toml`` pins that range); a new Autobahn
release is checked here, and only here.
"""

from __future__ import annotations

from pprint import pformat
from typing import Any

import autobahn.websocket.protocol as _autobahn_protocol
import txaio
from autobahn.twisted.websocket import WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol

__all__ = ["ServerProtocol", "use_clock", "valid_close_code", "MAX_FRAGMENTS"]

#: Frames a fragmented message may span. Autobahn keeps every fragment as its
#: own bytes object until the message ends (about 57 bytes of overhead each),
#: so 100,000 one-byte fragments held 5.7 MB for 100 KB of payload. 256 keeps
#: that overhead under 15 KB a connection, while a real client's fragments are
#: kilobytes (browsers do not fragment; Go's gorilla/websocket writes 4 KiB
#: frames, 64 of them for the largest message the node reads at the default
#: --max-frame).
MAX_FRAGMENTS = 256

_CLOSE = 8


def _pformat_when_debugging(obj: Any) -> str:
    """Autobahn's ``pformat``, but only at debug level.

    REACH: ``autobahn.websocket.protocol.pformat`` is replaced at import.
    Every new connection pretty-prints its 29 options for a debug log line
    whose argument is built even when debug is off: about 0.5 ms of the
    reactor per connection, a quarter of a node's CPU while 20,000 clients
    connect. Autobahn only uses the text in debug output.
    """
    # txaio binds its API when a framework is chosen; its package leaves it undeclared
    if txaio.get_global_log_level() in ("debug", "trace"):  # type: ignore[attr-defined]
        return pformat(obj)
    return ""


# A deliberate patch of Autobahn's module-level ``from pprint import pformat``
# (not an export of that module, and of a wider signature than ours).
_autobahn_protocol.pformat = _pformat_when_debugging  # type: ignore[attr-defined,assignment]


def valid_close_code(code: int) -> bool:
    """Close codes a peer may send (RFC 6455 section 7.4)."""
    return code in WebSocketProtocol.CLOSE_STATUS_CODES_ALLOWED or 3000 <= code <= 4999


def use_clock(factory: Any, clock: Any) -> None:
    """Run Autobahn's handshake and close timers of ``factory`` on ``clock``.

    REACH: ``factory._batched_timer``. Autobahn schedules its timers on a
    batched timer of its own, which leaves cancelled timers behind and ignores
    the node's (injectable) clock; the ``call_later`` it asks of it is all
    Autobahn uses.
    """
    factory._batched_timer = _ClockTimers(clock)


class _ClockTimers:
    """The ``call_later`` Autobahn's factory asks of its timer, on an injected clock."""

    def __init__(self, clock: Any) -> None:
        self.clock = clock

    def call_later(self, delay: float, func: Any, *args: Any, **kwargs: Any) -> Any:
        return self.clock.callLater(delay, func, *args, **kwargs)


def _no_result(_: object) -> None:
    return None


class ServerProtocol(WebSocketServerProtocol):
    """Autobahn's server protocol with the hooks and fixes the gateway needs.

    Subclasses implement :meth:`counted` (every byte Autobahn writes) and
    :meth:`message_refused` (a message over the byte or fragment bound).
    """

    #: payload bytes an unfinished message may hold (0: no bound)
    max_message_bytes = 0
    _fragments = 0

    # -- hooks for the subclass -------------------------------------------------

    def counted(self, written: int) -> bool:
        """``written`` bytes are about to be queued; False if the connection was dropped."""
        return True

    def message_refused(self, reason: str) -> None:
        """A message went over a bound; the default fails the connection (1009)."""
        self.fail(1009, reason)

    # -- narrow views of Autobahn's state -------------------------------------

    def reader_idle(self) -> bool:
        """True when Autobahn holds no partial frame or message.

        REACH: ``data`` (Autobahn's read buffer), ``current_frame`` and
        ``inside_message``. The gateway's fast path reads whole frames itself
        and may only do so when Autobahn's reader is between messages.
        """
        # Autobahn's inferred type of ``current_frame`` leaves out the None it
        # sets between frames (so mypy thinks the test can never hold).
        return not self.data and self.current_frame is None and not self.inside_message  # type: ignore[unreachable]

    #: Autobahn's queue of writes it holds back (chopped or synced ones; empty
    #: unless those are used): frames written past it would overtake them.
    #: A deque, tested for emptiness on every push, so no method call.
    queued_writes: Any = ()

    def connectionMade(self) -> None:  # noqa: N802
        super().connectionMade()
        # REACH: ``send_queue``, created once in Autobahn's ``_connectionMade``.
        self.queued_writes = self.send_queue
        # Autobahn fires ``is_closed`` with the protocol itself: the protocol
        # holds the Deferred and the Deferred would hold the protocol, a cycle
        # that only the cyclic collector frees, which a long-running node runs
        # rarely (``tap.GC_THRESHOLDS``). Its waiters here take no result.
        self.is_closed.addCallback(_no_result)

    def fail(self, code: int, reason: str) -> None:
        """Fail the connection: a close frame with ``code``, then the close handshake.

        REACH: ``_fail_connection``, which (unlike ``sendClose``) accepts any
        close code, 1002/1007/1009 included, and records that we failed it.
        """
        self._fail_connection(code, reason)

    def fail_and_drop(self, code: int, reason: str) -> None:
        """Answer the peer's (invalid) close frame with ``code`` and drop TCP.

        The peer has already closed, so the close handshake is complete once
        our close frame is out; RFC 6455 section 7.1.1 wants the server to
        drop TCP first then, and not wait for a reply that will not come.
        ``dropConnection(abort=False)`` lets the close frame go out first.
        """
        if self.state == WebSocketProtocol.STATE_OPEN:
            self._fail_connection(code, reason)
        if self.state != WebSocketProtocol.STATE_CLOSED:
            self.dropConnection(abort=False)

    def drop(self, reason: str) -> None:
        """Drop TCP at once (the close is unclean): a client we will not wait for.

        REACH: ``wasClean`` and ``wasNotCleanReason``, which Autobahn logs and
        hands to ``onClose``.
        """
        self.wasClean = False
        self.wasNotCleanReason = reason
        self.dropConnection(abort=True)

    def cancel_timers(self) -> None:
        """Cancel Autobahn's handshake timers once the socket is gone.

        REACH: ``closeHandshakeTimeoutCall`` and ``openHandshakeTimeoutCall``;
        Autobahn can leave them behind after a drop (a test's Clock shows them).
        """
        for name in ("closeHandshakeTimeoutCall", "openHandshakeTimeoutCall"):
            timer = getattr(self, name, None)
            if timer is not None and timer.active():
                timer.cancel()
            setattr(self, name, None)

    # -- the one write path ---------------------------------------------------

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:  # noqa: N802
        """Every frame Autobahn writes (pongs, closes, handshake replies) passes here.

        REACH: ``sendData`` is Autobahn's single write path (documented as a
        wrapper of ``transport.write``); the bytes count against the client's
        send budget before they are queued.
        """
        if self.counted(len(data)):
            super().sendData(data, sync, chopsize)

    # -- bounds on unfinished messages ----------------------------------------

    def onMessageBegin(self, isBinary: bool) -> None:  # noqa: N802
        self._fragments = 0
        super().onMessageBegin(isBinary)

    def onMessageFrameBegin(self, length: int) -> None:  # noqa: N802
        # REACH: ``message_data_total_length`` (bytes of the message so far)
        # and ``failedByMe`` (the connection is already being failed).
        if self.failedByMe:
            super().onMessageFrameBegin(length)
            return
        self._fragments += 1
        total = self.message_data_total_length + length
        if self.max_message_bytes and total > self.max_message_bytes:
            self.message_refused(f"message over {self.max_message_bytes} bytes")
        elif self._fragments > MAX_FRAGMENTS:
            self.message_refused(f"message of more than {MAX_FRAGMENTS} fragments")
        super().onMessageFrameBegin(length)

    # -- answering bad close frames -------------------------------------------

    def onCloseFrame(self, code: int | None, reasonRaw: bytes | None) -> bool | None:  # noqa: N802
        # Autobahn answers a bad close frame with 1002/1007 but then takes the
        # same frame for the reply to that close and aborts the socket, which
        # discards the close it just queued; and where it does send it, it
        # then waits for a reply the peer (which has closed) never sends.
        # Answer, then drop TCP (RFC 6455 section 7.1.1).
        # REACH: ``current_frame`` (the header of the close frame being read).
        frame = self.current_frame
        if frame is not None and (not frame.fin or frame.rsv or frame.length > 125):
            # An invalid close frame (Autobahn already failed the connection
            # for it) is never the peer's reply to our close.
            self.fail_and_drop(1002, "invalid close frame")
            return True
        if self.state == WebSocketProtocol.STATE_OPEN:
            if code is not None and not valid_close_code(code):
                self.fail_and_drop(1002, f"invalid close code {code}")
                return True
            if reasonRaw:
                try:
                    reasonRaw.decode("utf-8")
                except UnicodeDecodeError:
                    self.fail_and_drop(1007, "close reason is not UTF-8")
                    return True
        # Autobahn annotates (int, bytes) but calls it with None for a missing
        # code or reason (processControlFrame): the same values go back.
        return super().onCloseFrame(code, reasonRaw)  # type: ignore[arg-type]

    def processControlFrame(self) -> bool:  # noqa: N802
        # A close body is empty or holds at least a 2-byte code. Autobahn fails
        # a 1-byte body with 1002 when it reads the header, then takes the same
        # frame for the reply to that close and aborts, losing the 1002.
        # REACH: ``current_frame`` and ``control_frame_data`` (the body read so far).
        if (
            self.current_frame.opcode == _CLOSE
            and sum(len(chunk) for chunk in self.control_frame_data) == 1
        ):
            # as Autobahn does after a control frame; it infers a list-only type
            self.control_frame_data = None  # type: ignore[assignment]
            self.fail_and_drop(1002, "close frame with a 1-byte body")
            return False
        return super().processControlFrame()
