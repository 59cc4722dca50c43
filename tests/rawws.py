"""A minimal raw WebSocket client for tests: it sends exactly the bytes asked for.

Autobahn's own client would refuse to send a malformed frame, so protocol
conformance and hostile-input tests build frames here, over a real socket.
"""

from __future__ import annotations

import base64
import os
import socket
import struct
from typing import Any
from urllib.parse import urlparse

from twisted.internet import defer, endpoints, protocol, reactor

from gochat.pb import pb

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10


def build_frame(
    opcode: int, payload: bytes = b"", fin: bool = True, rsv: int = 0, mask: bool = True
) -> bytes:
    """One client frame; ``rsv`` is the 3 reserved bits (0-7)."""
    first = (0x80 if fin else 0) | (rsv & 7) << 4 | (opcode & 0x0F)
    length = len(payload)
    mask_bit = 0x80 if mask else 0
    if length < 126:
        header = bytes((first, mask_bit | length))
    elif length < 65536:
        header = struct.pack("!BBH", first, mask_bit | 126, length)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, length)
    if not mask:
        return header + payload
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return header + key + masked


def input_frame(cmd: int, data: bytes = b"") -> bytes:
    return build_frame(OP_BINARY, pb.Input(type=cmd, data=data).SerializeToString())


class Frame:
    def __init__(self, fin: bool, rsv: int, opcode: int, payload: bytes) -> None:
        self.fin, self.rsv, self.opcode, self.payload = fin, rsv, opcode, payload

    @property
    def close_code(self) -> int | None:
        if self.opcode != OP_CLOSE or len(self.payload) < 2:
            return None
        return struct.unpack("!H", self.payload[:2])[0]

    def output(self) -> pb.Output:
        return pb.Output.FromString(self.payload)

    def __repr__(self) -> str:
        return f"Frame(op={self.opcode}, fin={self.fin}, {self.payload[:40]!r})"


class RawWebSocket(protocol.Protocol):
    """Handshake, then a queue of parsed server frames (None once the socket closes)."""

    def __init__(self, host: str, path: str = "/ws") -> None:
        self.host = host
        self.path = path
        self.buffer = b""
        self.upgraded = False
        self.status = 0
        self.handshake: defer.Deferred = defer.Deferred()
        self.frames: defer.DeferredQueue = defer.DeferredQueue()
        self.closed: defer.Deferred = defer.Deferred()
        self.received_bytes = 0
        self.close_sent = False

    def connectionMade(self) -> None:  # noqa: N802
        key = base64.b64encode(os.urandom(16)).decode()
        self.transport.write(
            (
                f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.received_bytes += len(data)
        self.buffer += data
        if not self.upgraded:
            head, sep, rest = self.buffer.partition(b"\r\n\r\n")
            if not sep:
                return
            self.status = int(head.split(b" ", 2)[1])
            self.upgraded = True
            self.buffer = rest
            self.handshake.callback(self.status)
        while True:
            frame = self._parse()
            if frame is None:
                return
            if frame.opcode == OP_CLOSE and not self.close_sent:
                # Answer the close as a well-behaved client does, with the same code.
                self.close_sent = True
                self.transport.write(build_frame(OP_CLOSE, frame.payload[:2]))
            self.frames.put(frame)

    def _parse(self) -> Frame | None:
        buf = self.buffer
        if len(buf) < 2:
            return None
        length = buf[1] & 0x7F
        offset = 2
        if length == 126:
            if len(buf) < 4:
                return None
            length = struct.unpack("!H", buf[2:4])[0]
            offset = 4
        elif length == 127:
            if len(buf) < 10:
                return None
            length = struct.unpack("!Q", buf[2:10])[0]
            offset = 10
        if len(buf) < offset + length:
            return None
        frame = Frame(bool(buf[0] & 0x80), (buf[0] >> 4) & 7, buf[0] & 0x0F, buf[offset:][:length])
        self.buffer = buf[offset + length :]
        return frame

    def connectionLost(self, reason: Any) -> None:  # noqa: N802
        if not self.handshake.called:
            self.handshake.errback(reason)
        self.frames.put(None)
        self.closed.callback(None)

    def send(self, data: bytes) -> None:
        if len(data) > 1 and data[0] & 0x0F == OP_CLOSE:
            self.close_sent = True
        self.transport.write(data)

    def send_input(self, cmd: int, data: bytes = b"") -> None:
        self.send(input_frame(cmd, data))

    def next_frame(self) -> defer.Deferred:
        """The next server frame, or None when the connection is gone."""
        return self.frames.get()

    @defer.inlineCallbacks
    def next_data_frame(self) -> Any:
        """The next binary frame's ``Output`` (pongs skipped); None on close."""
        while True:
            frame = yield self.next_frame()
            if frame is None or frame.opcode == OP_CLOSE:
                return None
            if frame.opcode == OP_BINARY:
                return frame.output()

    @defer.inlineCallbacks
    def login(self, token: str) -> Any:
        self.send_input(pb.CT_Login, pb.LoginMsg(token=token.encode()).SerializeToString())
        out = yield self.next_data_frame()
        return out

    @defer.inlineCallbacks
    def closing_code(self) -> Any:
        """Read until the server's close frame; its code (None if the socket just closed)."""
        while True:
            frame = yield self.next_frame()
            if frame is None:
                return None
            if frame.opcode == OP_CLOSE:
                return frame.close_code

    def abort(self) -> defer.Deferred:
        if not self.closed.called:
            self.transport.abortConnection()
        return self.closed


@defer.inlineCallbacks
def open_raw(ws_url: str, receive_buffer: int | None = None) -> Any:
    """Connect and upgrade; ``receive_buffer`` shrinks SO_RCVBUF before connecting."""
    parsed = urlparse(ws_url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 80
    proto = RawWebSocket(f"{host}:{port}", parsed.path or "/ws")
    if receive_buffer is None:
        endpoint = endpoints.TCP4ClientEndpoint(reactor, host, port)
        yield endpoints.connectProtocol(endpoint, proto)
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.connect((host, port))  # loopback: completes at once, the listener is up
        sock.setblocking(False)
        factory = protocol.Factory.forProtocol(lambda: proto)
        reactor.adoptStreamConnection(sock.fileno(), socket.AF_INET, factory)
        sock.close()  # the reactor holds its own duplicate of the descriptor
    yield proto.handshake
    return proto
