"""A minimal WebSocket client over a raw Twisted protocol, and GoChat frames.

The benchmark must not be the bottleneck, so the receive path is a few
lines: split the byte stream into WebSocket frames and hand each binary
payload to a callback. No extensions, no fragmentation on the way out, no
UTF-8 checks; server frames are unmasked, client frames are masked (RFC 6455).
Frames are the GoChat-compatible subset only: ``Input{CT_Login, LoginMsg{token}}``
and ``Input{CT_Message, UpMsg{msg, clientId}}``, answered by plain ``Output``
or by ``OutputBatch`` frames (GoChat c58f9fc, or a node with ``--output-batch``).
"""

from __future__ import annotations

import base64
import os
import random
import struct
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

from twisted.internet import defer, endpoints, protocol
from twisted.internet.interfaces import ITCPTransport
from twisted.python.failure import Failure

from gochat.pb import pb

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_FIN_BINARY = 0x80 | OP_BINARY
_FIN_BINARY_BYTE = bytes((_FIN_BINARY,))

_getrandbits = random.getrandbits


def mask_frame(opcode: int, payload: bytes) -> bytes:
    """One final, masked client frame."""
    n = len(payload)
    key = _getrandbits(32)
    if n:
        # XOR the whole payload at once as one big integer: no per-byte loop.
        repeated = key.to_bytes(4, "big") * ((n >> 2) + 1)
        masked = (int.from_bytes(payload, "big") ^ int.from_bytes(repeated[:n], "big")).to_bytes(
            n, "big"
        )
    else:
        masked = b""
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return head + key.to_bytes(4, "big") + masked


def login_input(token: str) -> bytes:
    return pb.Input(
        type=pb.CT_Login, data=pb.LoginMsg(token=token.encode()).SerializeToString()
    ).SerializeToString()


def message_input(
    sender_id: int, receiver_id: int, group: bool, client_id: int, content: bytes, now_ms: int
) -> bytes:
    msg = pb.Message(
        session_type=pb.ST_Group if group else pb.ST_Single,
        receiver_id=receiver_id,
        sender_id=sender_id,
        message_type=pb.MT_Text,
        content=content,
        send_time=now_ms,
    )
    up = pb.UpMsg(msg=msg, clientId=client_id)
    return pb.Input(type=pb.CT_Message, data=up.SerializeToString()).SerializeToString()


class HandshakeError(Exception):
    """The server did not switch protocols."""


class BenchSocket(protocol.Protocol):
    """A WebSocket client connection; ``on_frames([payload, ...])`` gets the binary messages.

    Each read's messages come in one list, in order: a client of a big
    group gets dozens of pushes per read, and one call for all of them
    lets it count them in bulk.
    """

    on_frames: Callable[[list[bytes]], None]
    #: ``on_run(buf, step, n)``: ``buf`` is ``n`` whole binary frames of
    #: ``step`` bytes each, headers (2 bytes) included; True once handled,
    #: False to have them split and passed to :attr:`on_frames`
    on_run: Callable[[bytes, int, int], bool] | None = None
    on_lost: Callable[[Any], None] | None = None
    #: set by connectionMade: the benchmark connects over TCP only
    transport: ITCPTransport

    def __init__(
        self, host: str, path: str, reactor: Any = None, handshake_timeout: float = 0.0
    ) -> None:
        self.host = host
        self.path = path
        self.reactor = reactor
        self.handshake_timeout = handshake_timeout  # 0: wait as long as TCP does
        self._handshake_timer: Any = None
        self.opened: defer.Deferred[BenchSocket] = defer.Deferred()
        self._buf = b""
        self._open = False
        self._fragments: list[bytes] = []
        self._key = base64.b64encode(os.urandom(16))

    def connectionMade(self) -> None:  # noqa: N802 - Twisted's API
        self.transport.setTcpNoDelay(True)
        self.transport.write(
            b"GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
            % (self.path.encode(), self.host.encode(), self._key)
        )
        if self.handshake_timeout > 0 and self.reactor is not None:
            self._handshake_timer = self.reactor.callLater(
                self.handshake_timeout, self._no_handshake
            )

    def _no_handshake(self) -> None:
        """A server that accepts TCP but never answers the upgrade: give up."""
        self._handshake_timer = None
        if not self.opened.called:
            self.opened.errback(
                HandshakeError(f"no WebSocket handshake within {self.handshake_timeout:g} s")
            )
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        buf = self._buf + data if self._buf else data
        if not self._open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self._buf = buf
                return
            status = buf[: buf.find(b"\r\n")]
            if self._handshake_timer is not None and self._handshake_timer.active():
                self._handshake_timer.cancel()
            self._handshake_timer = None
            if b" 101 " not in status + b" ":
                self._buf = b""
                self.transport.loseConnection()
                if not self.opened.called:
                    self.opened.errback(HandshakeError(status.decode("latin-1")))
                return
            self._open = True
            buf = buf[end + 4 :]
            self.opened.callback(self)
        size = len(buf)
        # A member of a group reads its pushes of a batch as one run of
        # frames of one size (they differ only in the seq): checked by
        # slices and handed over whole, no loop over the frames.
        on_run = self.on_run
        if on_run is not None and size > 4 and buf[0] == _FIN_BINARY and buf[1] < 126:
            step = buf[1] + 2
            n = size // step
            if (
                n > 1
                and n * step == size
                and buf[1::step] == buf[1:2] * n
                and buf[::step] == _FIN_BINARY_BYTE * n
                and on_run(buf, step, n)
            ):
                self._buf = b""
                return
        # The hot loop: frames from the server are unmasked.
        pos = 0
        payloads: list[bytes] = []
        add = payloads.append
        while size - pos >= 2:
            b0 = buf[pos]
            n = buf[pos + 1]
            if b0 == _FIN_BINARY and n < 126:  # a whole small binary frame: nearly all
                end = pos + 2 + n
                if end > size:
                    break
                add(buf[pos + 2 : end])
                pos = end
                continue
            n &= 0x7F
            start = pos + 2
            if n == 126:
                if size - pos < 4:
                    break
                n = (buf[pos + 2] << 8) | buf[pos + 3]
                start = pos + 4
            elif n == 127:
                if size - pos < 10:
                    break
                n = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                start = pos + 10
            end = start + n
            if end > size:
                break
            pos = end
            opcode = b0 & 0x0F
            if b0 & 0x80 and opcode == OP_BINARY:
                add(buf[start:end])
            else:
                if payloads:  # what came before it goes first
                    self.on_frames(payloads)
                    payloads = []
                    add = payloads.append
                self._control(b0, opcode, buf[start:end])
        self._buf = buf[pos:] if pos < size else b""
        if payloads:
            self.on_frames(payloads)

    def _control(self, b0: int, opcode: int, payload: bytes) -> None:
        if opcode in (OP_BINARY, OP_TEXT, OP_CONT):
            self._fragments.append(payload)
            if b0 & 0x80:
                whole, self._fragments = b"".join(self._fragments), []
                self.on_frames([whole])
        elif opcode == OP_PING:
            self.transport.write(mask_frame(OP_PONG, payload))
        elif opcode == OP_CLOSE:
            self.transport.write(mask_frame(OP_CLOSE, payload[:2]))
            self.transport.loseConnection()

    def send(self, payload: bytes) -> None:
        self.transport.write(mask_frame(OP_BINARY, payload))

    def send_many(self, payloads: list[bytes]) -> None:
        self.transport.write(b"".join(mask_frame(OP_BINARY, p) for p in payloads))

    def close(self) -> None:
        if self._open:
            self.transport.write(mask_frame(OP_CLOSE, struct.pack("!H", 1000)))
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:  # noqa: N802
        self._open = False
        if self._handshake_timer is not None and self._handshake_timer.active():
            self._handshake_timer.cancel()
        self._handshake_timer = None
        if not self.opened.called:
            self.opened.errback(reason)
        if self.on_lost is not None:
            self.on_lost(reason)


def parse_ws_url(url: str) -> tuple[str, int, str]:
    """``ws://host:port/path`` -> ``(host, port, path)``; ``wss`` is not supported."""
    parts = urlparse(url)
    if parts.scheme != "ws":
        raise ValueError(f"{url!r}: the benchmark client speaks plain ws:// only")
    return parts.hostname or "127.0.0.1", parts.port or 80, parts.path or "/"


def open_socket(
    reactor: Any,
    url: str,
    on_frames: Callable[[list[bytes]], None],
    timeout: float = 30.0,
    on_run: Callable[[bytes, int, int], bool] | None = None,
) -> defer.Deferred[BenchSocket]:
    """Connect and finish the handshake within ``timeout`` s; fires with the socket."""
    host, port, path = parse_ws_url(url)
    sock = BenchSocket(f"{host}:{port}", path, reactor, timeout)
    sock.on_frames = on_frames
    sock.on_run = on_run
    endpoint = endpoints.TCP4ClientEndpoint(reactor, host, port, timeout=max(1, int(timeout)))
    # connectProtocol is unannotated; it fires with the protocol, then this with the open socket
    d: defer.Deferred[Any] = endpoints.connectProtocol(endpoint, sock)
    d.addCallback(lambda _: sock.opened)
    return d
