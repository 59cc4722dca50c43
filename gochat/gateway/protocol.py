"""One Autobahn ``WebSocketServerProtocol`` per client at ``/ws``."""

from __future__ import annotations

import struct
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.logger import Logger

from gochat import codec, codes, metrics
from gochat.logic import Hub, Session

#: Frames up to this many times --max-frame are read so an oversized message
#: can still get its ACK; larger ones fail the connection (1009) at once.
OVERSIZE_FACTOR = 4
CLOSE_GOING_AWAY = 1001
CLOSE_TOO_BIG = 1009


def frame_header(length: int) -> bytes:
    """Header of an unmasked, final, binary server frame of ``length`` bytes."""
    if length < 126:
        return bytes((0x82, length))
    if length < 65536:
        return struct.pack("!BBH", 0x82, 126, length)
    return struct.pack("!BBQ", 0x82, 127, length)


def valid_close_code(code: int) -> bool:
    """Close codes a peer may send (RFC 6455 section 7.4)."""
    return code in WebSocketProtocol.CLOSE_STATUS_CODES_ALLOWED or 3000 <= code <= 4999


class GatewayProtocol(WebSocketServerProtocol):
    """A client connection; also the streaming producer of its transport.

    The transport pauses us when its write buffer is full (the client is not
    reading); what is written while paused is counted, and past
    ``--max-send-buffer`` the connection is dropped so a stalled reader cannot
    grow the node's memory. The fast path costs one attribute check.
    """

    log = Logger()
    session: Session | None = None
    _paused = False
    _backlog = 0  # bytes written since the transport paused us
    backlog_peak = 0  # the most ever queued while paused (for tests and logs)

    @property
    def peer_address(self) -> str:
        return str(self.peer)

    def onConnect(self, request):  # noqa: N802 - Autobahn's API
        if request.path not in ("/ws", "/ws/"):
            raise ConnectionDeny(404, "WebSocket endpoint is /ws")
        factory = self.factory
        hub = factory.hub
        if hub.draining:
            raise ConnectionDeny(503, "node shutting down")
        if len(hub.sessions) >= factory.max_connections:
            metrics.REFUSED.labels("max_connections").inc()
            raise ConnectionDeny(503, "node at its connection limit")
        if hub.unauthenticated >= factory.max_unauthenticated:
            metrics.REFUSED.labels("max_unauthenticated").inc()
            raise ConnectionDeny(503, "too many connections waiting to log in")
        return None

    def onOpen(self) -> None:  # noqa: N802
        transport = self.transport
        try:
            transport.registerProducer(self, True)
        except RuntimeError:
            # /ws on the HTTP port: the web channel that handed over the
            # transport is still registered as its producer.
            transport.unregisterProducer()
            transport.registerProducer(self, True)
        self.session = self.factory.hub.open_session(self)

    # -- IPushProducer: the transport tells us when the client stops reading --

    def pauseProducing(self) -> None:  # noqa: N802
        # Called again on every write while the buffer stays full: count from the first.
        if not self._paused:
            self._paused = True
            self._backlog = 0

    def resumeProducing(self) -> None:  # noqa: N802
        self._paused = False

    def stopProducing(self) -> None:  # noqa: N802
        self._paused = False

    def _stalled(self, written: int) -> None:
        self._backlog += written
        if self._backlog > self.backlog_peak:
            self.backlog_peak = self._backlog
        if self._backlog > self.factory.max_send_buffer and self.state != self.STATE_CLOSED:
            metrics.REFUSED.labels("slow_reader").inc()
            self.log.info(
                "dropping {peer}: it stopped reading, {n} bytes queued",
                peer=self.peer,
                n=self._backlog,
            )
            self.wasClean = False
            self.wasNotCleanReason = "client stopped reading"
            self.dropConnection(abort=True)

    def onMessageFrameBegin(self, length: int) -> None:  # noqa: N802
        total = self.message_data_total_length + length
        if total > self.factory.max_frame * OVERSIZE_FACTOR and not self.failedByMe:
            self.send(codec.error_frame(codes.TOO_LARGE))
            self._fail_connection(CLOSE_TOO_BIG, "message too big")
            return
        super().onMessageFrameBegin(length)

    def onCloseFrame(self, code: int | None, reasonRaw: bytes | None) -> bool | None:  # noqa: N802
        # Autobahn answers a bad close frame with 1002/1007 but then takes the
        # same frame for the reply to that close and aborts the socket, which
        # discards the close it just queued. Fail first, then await the reply.
        frame = self.current_frame
        if frame is not None and (not frame.fin or frame.rsv or frame.length > 125):
            # An invalid close frame (Autobahn already failed the connection
            # for it) is never the peer's reply to our close.
            if self.state == WebSocketProtocol.STATE_OPEN:
                self._fail_connection(1002, "invalid close frame")
            return True
        if self.state == WebSocketProtocol.STATE_OPEN:
            if code is not None and not valid_close_code(code):
                self._fail_connection(1002, f"invalid close code {code}")
                return True
            if reasonRaw:
                try:
                    reasonRaw.decode("utf-8")
                except UnicodeDecodeError:
                    self._fail_connection(1007, "close reason is not UTF-8")
                    return True
        return super().onCloseFrame(code, reasonRaw)

    def processControlFrame(self) -> bool:  # noqa: N802
        # A close body is empty or holds at least a 2-byte code. Autobahn fails
        # a 1-byte body with 1002 when it reads the header, then takes the same
        # frame for the reply to that close and aborts, losing the 1002.
        if (
            self.current_frame.opcode == 8
            and sum(len(chunk) for chunk in self.control_frame_data) == 1
        ):
            self.control_frame_data = None
            self._fail_connection(1002, "close frame with a 1-byte body")
            return False
        return super().processControlFrame()

    def onMessage(self, payload: bytes, isBinary: bool) -> None:  # noqa: N802
        if self.session is not None:
            self.session.frame_received(payload, isBinary)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:  # noqa: N802
        # Autobahn can leave its close-handshake timer behind once the socket is gone.
        for name in ("closeHandshakeTimeoutCall", "openHandshakeTimeoutCall"):
            timer = getattr(self, name, None)
            if timer is not None and timer.active():
                timer.cancel()
            setattr(self, name, None)
        session, self.session = self.session, None
        if session is not None:
            session.connection_lost()

    # -- Connection interface used by the session -----------------------------

    @property
    def peer_name(self) -> str:
        return str(self.peer)

    def send(self, frame: bytes) -> None:
        # Straight to the transport: a server frame needs no masking, and
        # Autobahn's sendMessage costs several times the frame itself.
        if self.state == WebSocketProtocol.STATE_OPEN and not self.send_queue:
            paused = self._paused  # the write that fills the buffer is not held against it
            self.transport.write(frame_header(len(frame)) + frame)
            if paused:
                self._stalled(len(frame))

    def send_many(self, frames: list[bytes]) -> None:
        if self.state == WebSocketProtocol.STATE_OPEN and not self.send_queue:
            parts = []
            for frame in frames:
                parts.append(frame_header(len(frame)))
                parts.append(frame)
            data = b"".join(parts)
            paused = self._paused
            self.transport.write(data)
            if paused:
                self._stalled(len(data))

    def close(self, reason: str, going_away: bool = False) -> None:
        if self.state in (WebSocketProtocol.STATE_CLOSING, WebSocketProtocol.STATE_CLOSED):
            return
        if going_away:
            self.sendCloseFrame(code=CLOSE_GOING_AWAY, reasonUtf8=reason[:120].encode())
        else:
            self.sendClose(code=1000, reason=reason[:120])
        # A peer that never answers the close handshake is dropped by Autobahn's
        # closeHandshakeTimeout.


# The session calls ``conn.peer``; Autobahn already keeps ``self.peer`` as a string.


class GatewayFactory(WebSocketServerFactory):
    protocol = GatewayProtocol

    def __init__(
        self,
        hub: Hub,
        url: str = "ws://localhost/ws",
        max_frame: int = 65536,
        max_connections: int = 20000,
        max_unauthenticated: int = 1000,
        max_send_buffer: int = 4 * 1024 * 1024,
    ) -> None:
        super().__init__(url)
        # Autobahn's handshake/close timers on the hub's clock, cancelled for
        # real when they are cancelled (its batched timer leaves them behind).
        self._batched_timer = _ClockTimers(hub.clock)
        self.hub = hub
        self.max_frame = max_frame
        self.max_connections = max_connections
        self.max_unauthenticated = max_unauthenticated
        self.max_send_buffer = max_send_buffer
        self.setProtocolOptions(
            # Our own check in onMessageFrameBegin enforces the limits.
            maxFramePayloadSize=0,
            maxMessagePayloadSize=0,
            # Server frames go out unfragmented; never the permessage-deflate extension.
            perMessageCompressionAccept=lambda offers: None,
            openHandshakeTimeout=10,
            closeHandshakeTimeout=5,
            failByDrop=False,
            # A valid close is answered with the peer's own code, as RFC 6455 expects.
            echoCloseCodeReason=True,
        )


class _ClockTimers:
    """The ``call_later`` Autobahn's factory asks of its timer, on an injected clock."""

    def __init__(self, clock: Any) -> None:
        self.clock = clock

    def call_later(self, delay: float, func: Any, *args: Any, **kwargs: Any) -> Any:
        return self.clock.callLater(delay, func, *args, **kwargs)
