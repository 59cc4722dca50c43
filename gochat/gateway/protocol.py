"""One Autobahn ``WebSocketServerProtocol`` per client at ``/ws``."""

from __future__ import annotations

import struct

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.logger import Logger

from gochat import codec, codes
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


class GatewayProtocol(WebSocketServerProtocol):
    log = Logger()
    session: Session | None = None

    @property
    def peer_address(self) -> str:
        return str(self.peer)

    def onConnect(self, request):  # noqa: N802 - Autobahn's API
        if request.path not in ("/ws", "/ws/"):
            raise ConnectionDeny(404, "WebSocket endpoint is /ws")
        return None

    def onOpen(self) -> None:  # noqa: N802
        self.session = self.factory.hub.open_session(self)

    def onMessageFrameBegin(self, length: int) -> None:  # noqa: N802
        total = self.message_data_total_length + length
        if total > self.factory.max_frame * OVERSIZE_FACTOR and not self.failedByMe:
            self.send(codec.error_frame(codes.TOO_LARGE))
            self._fail_connection(CLOSE_TOO_BIG, "message too big")
            return
        super().onMessageFrameBegin(length)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:  # noqa: N802
        if self.session is not None:
            self.session.frame_received(payload, isBinary)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:  # noqa: N802
        # Autobahn leaves this timer running when the peer drops the TCP
        # connection instead of answering our close frame.
        timer = getattr(self, "closeHandshakeTimeoutCall", None)
        self.closeHandshakeTimeoutCall = None
        if timer is not None:
            timer.cancel()
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
            self.transport.write(frame_header(len(frame)) + frame)

    def send_many(self, frames: list[bytes]) -> None:
        if self.state == WebSocketProtocol.STATE_OPEN and not self.send_queue:
            parts = []
            for frame in frames:
                parts.append(frame_header(len(frame)))
                parts.append(frame)
            self.transport.write(b"".join(parts))

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

    def __init__(self, hub: Hub, url: str = "ws://localhost/ws", max_frame: int = 65536) -> None:
        super().__init__(url)
        self.hub = hub
        self.max_frame = max_frame
        self.setProtocolOptions(
            # Our own check in onMessageFrameBegin enforces the limits.
            maxFramePayloadSize=0,
            maxMessagePayloadSize=0,
            # Server frames go out unfragmented; never the permessage-deflate extension.
            perMessageCompressionAccept=lambda offers: None,
            openHandshakeTimeout=10,
            closeHandshakeTimeout=5,
            failByDrop=False,
        )
