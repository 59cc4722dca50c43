"""The one raw WebSocket client of the tests: it sends exactly the bytes asked for.

Autobahn's own client would refuse to send a malformed frame and hides the
frames it gets, so the protocol, conformance and hostile-input tests speak
WebSocket here, over a real socket: :func:`build_frame` makes any client frame
(bad ones included), :class:`RawWebSocket` queues every server frame, and its
protobuf helpers (:meth:`~RawWebSocket.login`, :meth:`~RawWebSocket.up`,
:meth:`~RawWebSocket.next_output`) know nothing of the clientId dance, so a
test controls every clientId, as the Go server's own test clients do.
"""

from __future__ import annotations

import base64
import os
import socket
import struct
from typing import Any
from urllib.parse import urlparse

from google.protobuf.message import Message
from twisted.internet import defer, endpoints, protocol, reactor

from gochat.pb import pb

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10


def _mask(payload: bytes, key: bytes) -> bytes:
    """XOR ``payload`` with the repeated 4-byte ``key`` (one big-int operation)."""
    if not payload:
        return b""
    n = len(payload)
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")


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
    return header + key + _mask(payload, key)


def _serialized(body: bytes | Message) -> bytes:
    return body if isinstance(body, bytes) else body.SerializeToString()


def input_frame(cmd: int, body: bytes | Message = b"") -> bytes:
    """A binary frame holding ``Input{cmd, body}``."""
    return build_frame(OP_BINARY, pb.Input(type=cmd, data=_serialized(body)).SerializeToString())


class Frame:
    def __init__(self, fin: bool, rsv: int, opcode: int, payload: bytes) -> None:
        self.fin, self.rsv, self.opcode, self.payload = fin, rsv, opcode, payload

    @property
    def close_code(self) -> int | None:
        if self.opcode != OP_CLOSE or len(self.payload) < 2:
            return None
        return struct.unpack("!H", self.payload[:2])[0]

    @property
    def close_reason(self) -> str | None:
        if self.opcode != OP_CLOSE or len(self.payload) < 2:
            return None
        return self.payload[2:].decode("utf-8", "replace")

    def output(self) -> pb.Output:
        return pb.Output.FromString(self.payload)

    def __iter__(self) -> Any:
        """``payload, is_binary = frame``, for tests that only read data frames."""
        return iter((self.payload, self.opcode == OP_BINARY))

    def __repr__(self) -> str:
        return f"Frame(op={self.opcode}, fin={self.fin}, {self.payload[:40]!r})"


class LoginReply(tuple):  # type: ignore[type-arg]
    """The answer to a login: unpacks as ``(code, ACKMsg)`` and reads as the
    ``Output`` itself (``reply.code``, ``reply.type``, ``reply.data``)."""

    def __new__(cls, out: pb.Output) -> LoginReply:
        reply = super().__new__(cls, (out.code, ack_of(out)))
        reply.output = out
        return reply

    def __getattr__(self, name: str) -> Any:
        return getattr(self.output, name)


class RawWebSocket(protocol.Protocol):
    """Handshake, then every server frame in arrival order.

    ``status`` is the handshake's HTTP status (101 when upgraded); ``closed``
    fires with the server's ``(close code, reason)`` once the socket is gone
    (``(None, None)`` if it sent no close frame).
    """

    def __init__(self, host: str, path: str = "/ws") -> None:
        self.host = host
        self.path = path
        self.buffer = b""
        self.upgraded = False
        self.status = 0
        self.handshake: defer.Deferred = defer.Deferred()
        self.closed: defer.Deferred = defer.Deferred()
        self.received_bytes = 0
        self.close_sent = False
        self._frames: list[Frame] = []
        self._waiters: list[defer.Deferred] = []
        self._close: Frame | None = None
        self._lost = False

    # -- the connection -----------------------------------------------------

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
                break
            if frame.opcode == OP_CLOSE:
                self._close = self._close or frame
                if not self.close_sent:
                    # Answer the close as a well-behaved client does, with the same code.
                    self.close_sent = True
                    self.transport.write(build_frame(OP_CLOSE, frame.payload[:2]))
            self._frames.append(frame)
        self._wake()

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
        self._lost = True
        if not self.handshake.called:
            self.handshake.errback(reason)
        self._wake()
        close = self._close
        self.closed.callback((close.close_code, close.close_reason) if close else (None, None))

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.called:  # a waiter may have timed out
                waiter.callback(None)

    def abort(self) -> defer.Deferred:
        if not self.closed.called:
            self.transport.abortConnection()
        return self.closed

    # -- sending ------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Write raw bytes (one or more frames, well formed or not)."""
        if len(data) > 1 and data[0] & 0x0F == OP_CLOSE:
            self.close_sent = True
        self.transport.write(data)

    def send_message(self, payload: bytes, is_binary: bool = True) -> None:
        """One whole WebSocket message, binary or text."""
        self.send(build_frame(OP_BINARY if is_binary else OP_TEXT, payload))

    def sendMessage(self, payload: bytes, isBinary: bool = True) -> None:  # noqa: N802, N803
        """:meth:`send_message` under Autobahn's name."""
        self.send_message(payload, isBinary)

    def send_input(self, cmd: int, body: bytes | Message = b"") -> None:
        self.send(input_frame(cmd, body))

    def send_inputs(self, frames: list[tuple[int, bytes | Message]]) -> None:
        """Several frames in one TCP write: the node reads them back to back."""
        self.send(b"".join(input_frame(cmd, body) for cmd, body in frames))

    def up(self, client_id: int, msg: pb.Message) -> None:
        self.send_input(pb.CT_Message, pb.UpMsg(msg=msg, clientId=client_id))

    def login(self, token: str, device_id: str = "", push_ack: bool = False) -> defer.Deferred:
        """Send a login; fires with the :class:`LoginReply` (``code, ack = reply``)."""
        self.send_input(
            pb.CT_Login, pb.LoginMsg(token=token.encode(), device_id=device_id, push_ack=push_ack)
        )
        return self.next_output().addCallback(LoginReply)

    # -- receiving ----------------------------------------------------------

    @property
    def frames(self) -> list[tuple[bytes, bool]]:
        """``(payload, is_binary)`` of the data frames received and not read yet."""
        return [(f.payload, f.opcode == OP_BINARY) for f in self._frames if f.opcode < OP_CLOSE]

    @defer.inlineCallbacks
    def next_frame(self, timeout: float = 10.0) -> Any:
        """The next server frame, or None once the connection is gone; fails after ``timeout``."""
        while not self._frames:
            if self._lost:
                return None
            waiter: defer.Deferred = defer.Deferred()
            self._waiters.append(waiter)
            yield waiter.addTimeout(timeout, reactor)
        return self._frames.pop(0)

    @defer.inlineCallbacks
    def next_data_frame(self, timeout: float = 10.0) -> Any:
        """The next binary frame's ``Output`` (pongs skipped); None once closed."""
        while True:
            frame = yield self.next_frame(timeout)
            if frame is None or frame.opcode == OP_CLOSE:
                return None
            if frame.opcode == OP_BINARY:
                return frame.output()
            if frame.opcode == OP_TEXT:
                raise AssertionError("the node sent a text frame")

    @defer.inlineCallbacks
    def next_output(self, timeout: float = 10.0) -> Any:
        """The next ``Output``; fails if the connection closes first."""
        out = yield self.next_data_frame(timeout)
        if out is None:
            raise ConnectionError("closed while waiting for a frame")
        return out

    @defer.inlineCallbacks
    def outputs(self, count: int, timeout: float = 30.0) -> Any:
        out = []
        for _ in range(count):
            frame = yield self.next_output(timeout)
            out.append(frame)
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


def ack_of(out: pb.Output) -> pb.ACKMsg:
    return pb.ACKMsg.FromString(out.data)


@defer.inlineCallbacks
def open_raw(ws_url: str, receive_buffer: int | None = None, upgraded: bool = False) -> Any:
    """Connect and send the handshake; fires with the :class:`RawWebSocket` once
    the node answered it (any status, unless ``upgraded``: then anything but
    101 fails with ``ConnectionError``). ``receive_buffer`` shrinks SO_RCVBUF
    before connecting."""
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
    if upgraded and proto.status != 101:
        proto.transport.loseConnection()
        yield proto.closed
        raise ConnectionError(f"could not open {ws_url}: HTTP {proto.status}")
    return proto


def open_on_string_transport(factory: Any) -> tuple[Any, Any]:
    """A protocol of ``factory`` upgraded to WebSocket on a StringTransport, its output cleared."""
    from twisted.internet.testing import StringTransport

    proto = factory.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    key = base64.b64encode(os.urandom(16)).decode()
    proto.dataReceived(
        (
            "GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    if not transport.value().startswith(b"HTTP/1.1 101"):
        raise AssertionError(f"no upgrade: {transport.value()[:200]!r}")
    transport.clear()
    return proto, transport
