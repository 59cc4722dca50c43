"""One Autobahn ``WebSocketServerProtocol`` per client at ``/ws``."""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Collection
from itertools import chain
from typing import Any, Protocol, cast

from autobahn.twisted.websocket import WebSocketServerFactory
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.interfaces import IAddress
from twisted.logger import Logger

from gochat import codec, codes, metrics
from gochat._twisted import write_now
from gochat.gateway._autobahn import ServerProtocol, use_clock, valid_close_code
from gochat.logic import Hub, Session

__all__ = ["GatewayFactory", "GatewayProtocol", "frame_header", "unmask", "valid_close_code"]

#: Frames up to this many times --max-frame are read so an oversized message
#: can still get its ACK; larger ones fail the connection (1009) at once.
OVERSIZE_FACTOR = 4
CLOSE_GOING_AWAY = 1001
CLOSE_TOO_BIG = 1009
_OPEN = WebSocketProtocol.STATE_OPEN
#: The part of --max-unauthenticated open to any address; in the rest, an
#: address that holds its --max-unauthenticated-per-address share is refused,
#: so a quarter of the pool always stays for the others.
SHARED_PART = 0.75
_log = Logger()


class _Transport(Protocol):
    """The TCP (or TLS) transport under a connection, as used here: besides an
    ``ITransport``, the consumer we produce for and a push producer itself."""

    def getPeer(self) -> IAddress: ...  # noqa: N802 - Twisted's API
    def registerProducer(self, producer: object, streaming: bool) -> None: ...  # noqa: N802
    def unregisterProducer(self) -> None: ...  # noqa: N802
    def pauseProducing(self) -> None: ...  # noqa: N802
    def resumeProducing(self) -> None: ...  # noqa: N802


def client_address(peer: Any) -> str | None:
    """The address a connection counts against: its IP, an IPv6 client's /64.

    This is the TCP peer; behind a reverse proxy it is the proxy's. One IPv6
    host usually holds a whole /64, so that is what counts as one address.
    None for peers without an IP (Unix sockets): they have no share.
    """
    host: str | None = getattr(peer, "host", None)
    if not host:
        return None
    if ":" in host:
        try:
            ip = ipaddress.IPv6Address(host)
        except ValueError:
            return host
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return host


_ELEMENT_HEADS = [codec.batch_element_head(n) for n in range(16384)]  # --output-batch


def frame_header(length: int) -> bytes:
    """Header of an unmasked, final, binary server frame of ``length`` bytes."""
    if length < 126:
        return bytes((0x82, length))
    if length < 65536:
        return struct.pack("!BBH", 0x82, 126, length)
    return struct.pack("!BBQ", 0x82, 127, length)


#: headers of frames under 16 KiB (nearly every frame): a lookup, not a bytes() per push
_HEADS = [frame_header(n) for n in range(16384)]


def unmask(payload: bytes, mask: bytes) -> bytes:
    """XOR a client frame's payload with its 4-byte mask, as one big integer."""
    n = len(payload)
    if not n:
        return b""
    key = (mask * ((n >> 2) + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


class GatewayProtocol(ServerProtocol):
    """A client connection; also the streaming producer of its transport.

    The transport pauses us when its write buffer is full (the client is not
    reading); what is written while paused is counted, and past
    ``--max-send-buffer`` the connection is dropped so a stalled reader cannot
    grow the node's memory. The fast path costs one attribute check.
    """

    # Autobahn's own ``log`` (txaio, level "info") stays: a twisted Logger in
    # its place would format and write a debug line for every frame read.
    session: Session | None = None
    #: what the connection counts against in --max-unauthenticated-per-address
    address: str | None = None
    _paused = False
    #: the hub paused reading (the writer's queue is over its high-water mark)
    _reads_held = False
    _backlog = 0  # bytes written since the transport paused us
    backlog_peak = 0  # the most ever queued while paused (for tests and logs)
    #: frames written this reactor iteration, flushed by the factory in one write
    _out: list[bytes] | None = None
    #: the start of a frame the last read cut off (see dataReceived)
    _held = b""

    def onConnect(self, request: ConnectionRequest) -> None:  # noqa: N802 - Autobahn's API
        if request.path not in ("/ws", "/ws/"):
            raise ConnectionDeny(404, "WebSocket endpoint is /ws")
        factory = self.factory
        hub = factory.hub
        if hub.draining:
            raise ConnectionDeny(503, "node shutting down")
        if len(hub.sessions) >= factory.max_connections:
            metrics.REFUSED.labels("max_connections").inc()
            raise ConnectionDeny(503, "node at its connection limit")
        waiting = hub.unauthenticated
        if waiting >= factory.max_unauthenticated:
            metrics.REFUSED.labels("max_unauthenticated").inc()
            raise ConnectionDeny(503, "too many connections waiting to log in")
        address = self.address = client_address(cast(_Transport, self.transport).getPeer())
        if (
            address is not None
            and hub.waiting_from(address) >= factory.address_share
            and waiting >= factory.max_unauthenticated * SHARED_PART
        ):
            metrics.REFUSED.labels("max_unauthenticated_per_address").inc()
            raise ConnectionDeny(503, "too many connections from this address waiting to log in")
        return None

    def connectionMade(self) -> None:  # noqa: N802
        super().connectionMade()
        # We are the transport's producer from the start, so the handshake
        # reply is counted against the send budget too.
        transport = cast(_Transport, self.transport)
        try:
            transport.registerProducer(self, True)
        except RuntimeError:
            # /ws on the HTTP port: the web channel that handed over the
            # transport is still registered as its producer.
            transport.unregisterProducer()
            transport.registerProducer(self, True)

    def onOpen(self) -> None:  # noqa: N802
        self.session = self.factory.hub.open_session(self)
        if self.factory.hub.reading_paused:
            self.pause_reading()

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

    # -- backpressure: the hub stops reading while its writer is behind -------

    def pause_reading(self) -> None:
        """Read nothing more from this client until :meth:`resume_reading`.

        The socket stops being read, and frames of a read already made wait in
        ``_held`` (at most one read), so TCP pushes back on the client.
        """
        if not self._reads_held:
            self._reads_held = True
            if self.transport is not None:
                cast(_Transport, self.transport).pauseProducing()

    def resume_reading(self) -> None:
        if self._reads_held:
            self._reads_held = False
            if self.transport is not None and self.state != self.STATE_CLOSED:
                cast(_Transport, self.transport).resumeProducing()
                if self._held:
                    self.factory.reactor.callLater(0, self._read_held)

    def _read_held(self) -> None:
        if self._held and not self._reads_held and self.state == _OPEN:
            self.dataReceived(b"")

    def counted(self, written: int) -> bool:
        """Autobahn writes (pongs, close frames, handshake replies) count too."""
        if self._paused:
            self._stalled(written)
            return self.state != self.STATE_CLOSED
        return True

    def _stalled(self, written: int) -> None:
        self._backlog += written
        if self._backlog > self.backlog_peak:
            self.backlog_peak = self._backlog
        if self._backlog > self.factory.max_send_buffer and self.state != self.STATE_CLOSED:
            metrics.REFUSED.labels("slow_reader").inc()
            _log.info(
                "dropping {peer}: it stopped reading, {n} bytes queued",
                peer=self.peer,
                n=self._backlog,
            )
            self.drop("client stopped reading")

    @property
    def max_message_bytes(self) -> int:  # type: ignore[override]
        limit: int = self.factory.max_frame * OVERSIZE_FACTOR
        return limit

    def message_refused(self, reason: str) -> None:
        """Over the byte or fragment bound of one message: 1012, then close 1009."""
        self.send(codec.error_frame(codes.TOO_LARGE))
        self.flush()
        self.fail(CLOSE_TOO_BIG, reason)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        # Once open, whole masked binary frames within --max-frame are read
        # here: Autobahn's reader costs several times the frame itself (a
        # masker object, a buffer copy and callbacks per frame). The start of
        # such a frame cut off by the end of a read waits in ``_held`` for the
        # rest (a pipelining client's reads rarely end on a frame boundary).
        # Anything else (control frames, fragments, text, oversized frames)
        # goes to Autobahn, which takes over until its buffer is empty again.
        held = self._held
        if held:
            data = held + data
            self._held = b""
        if self._reads_held and self.state == _OPEN:
            self._held = data  # a read already under way when the hub paused us
            return
        if self.state != _OPEN or not self.reader_idle():
            super().dataReceived(data)
            return
        limit = self.factory.max_frame
        pos = 0
        size = len(data)
        while pos < size:
            if data[pos] != 0x82:  # FIN + binary, no RSV bits
                break
            if size - pos < 2:
                self._held = data[pos:]
                return
            n = data[pos + 1]
            if n < 0x80:  # a client frame must be masked
                break
            n &= 0x7F
            start = pos + 2
            if n == 126:
                if size - pos < 4:
                    self._held = data[pos:]
                    return
                n = (data[pos + 2] << 8) | data[pos + 3]
                if n < 126:
                    break  # not the minimal length encoding: Autobahn fails it
                start += 2
            elif n == 127:
                break
            if n > limit:
                break
            end = start + 4 + n
            if end > size:
                self._held = data[pos:]  # at most --max-frame + 8 bytes
                return
            pos = end
            session = self.session
            if session is not None:
                session.frame_received(unmask(data[start + 4 : end], data[start : start + 4]))
            if self.state != _OPEN:
                return  # the session closed the connection
            if self._reads_held:
                if pos < size:
                    self._held = data[pos:]  # read again once the hub resumes
                return
        if pos < size:
            super().dataReceived(data[pos:] if pos else data)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:  # noqa: N802
        if self.session is not None:
            self.session.frame_received(payload, isBinary)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:  # noqa: N802
        self._out = None
        self.cancel_timers()
        session, self.session = self.session, None
        if session is not None:
            session.connection_lost()

    # -- Connection interface used by the session -----------------------------

    def send(self, frame: bytes) -> None:
        # Straight to the transport: a server frame needs no masking, and
        # Autobahn's sendMessage costs several times the frame itself. Frames
        # of one reactor iteration (a group fan-out puts hundreds on one
        # connection) go out in one transport write.
        if self.state == _OPEN and not self.queued_writes:
            n = len(frame)
            if self.factory.output_batch:
                # --output-batch: an OutputBatch element's head; flush adds the frames'.
                head = _ELEMENT_HEADS[n] if n < 16384 else codec.batch_element_head(n)
            else:
                head = _HEADS[n] if n < 16384 else frame_header(n)
            if self._paused:
                # The client is not reading: what waits here counts against it.
                self._stalled(n + len(head))
                if self.state != _OPEN:
                    return
            out = self._out
            if out is None:
                self._out = [head, frame]
                self.factory.schedule_flush(self)
            else:
                out.append(head)
                out.append(frame)

    def _plain(self) -> bool:
        """Whole frames with plain headers may be queued at once (what send would do for each)."""
        return (
            self.state == _OPEN
            and not self.queued_writes
            and not self._paused
            and not self.factory.output_batch
        )

    def _queue(self, parts: list[bytes]) -> None:
        out = self._out
        if out is None:
            self._out = parts
            self.factory.schedule_flush(self)
        else:
            out += parts

    def send_many(self, frames: list[bytes]) -> None:
        if not self._plain() or not frames or max(map(len, frames)) >= len(_HEADS):
            for frame in frames:
                self.send(frame)
            return
        # A group block's pushes to this connection: every header a lookup,
        # interleaved with the frames by C loops rather than one call a frame.
        heads = map(_HEADS.__getitem__, map(len, frames))
        self._queue(list(chain.from_iterable(zip(heads, frames, strict=True))))

    def send_run(self, run: codec.PushRun, first_seq: int, skip: Collection[int] = ()) -> bool:
        """A group block's pushes (but those at ``skip``) as one bytes; False: use send_many.

        Once per recipient and run on every node, so :meth:`_plain`,
        :meth:`_queue` and the factory's ``schedule_flush`` are written out here.
        """
        factory = self.factory
        if self.state != _OPEN or self.queued_writes or self._paused or factory.output_batch:
            return False
        data = run.wire(first_seq, _HEADS, skip)
        if data is None:
            return False
        out = self._out
        if out is None:
            self._out = [data]
            factory._dirty.append(self)
            if factory._flush_call is None:
                factory._flush_call = factory.reactor.callLater(0, factory._flush_all)
        else:
            out.append(data)
        return True

    def flush(self) -> None:
        """Write what :meth:`send` collected (the factory's ``_flush_all`` does the same)."""
        out, self._out = self._out, None
        if out and self.state == _OPEN and self.transport is not None:
            if self.factory.output_batch:
                out = _batched(out)
            # Bytes queued while paused were counted by send(); the write that
            # fills the transport's buffer is not held against the client.
            write_now(self.transport, b"".join(out))

    def close(self, reason: str, going_away: bool = False) -> None:
        if self.state in (WebSocketProtocol.STATE_CLOSING, WebSocketProtocol.STATE_CLOSED):
            return
        self.flush()  # frames already sent go before the close frame
        if going_away:
            self.sendCloseFrame(code=CLOSE_GOING_AWAY, reasonUtf8=reason[:120].encode())
        else:
            self.sendClose(code=1000, reason=reason[:120])
        # A peer that never answers the close handshake is dropped by Autobahn's
        # closeHandshakeTimeout.


#: --output-batch: at most this many outputs and bytes per OutputBatch frame
#: (GoChat's server writes 50 at most; its clients read any number).
BATCH_MAX_OUTPUTS = 256
BATCH_MAX_BYTES = 64 * 1024


def _batched(parts: list[bytes]) -> list[bytes]:
    """One turn's batch elements (head, output, head, output, ...) as WebSocket frames.

    Cut by count with slices and checked by size with one ``join``: only a
    batch over the byte cap (big messages) is cut again element by element.
    """
    frames: list[bytes] = []
    step = 2 * BATCH_MAX_OUTPUTS
    for start in range(0, len(parts), step):
        chunk = parts[start : start + step]
        payload = b"".join(chunk)
        if len(payload) > BATCH_MAX_BYTES and len(chunk) > 2:
            payloads = codec.batch_payloads(chunk[1::2], BATCH_MAX_OUTPUTS, BATCH_MAX_BYTES)
        else:
            payloads = [payload]
        for payload in payloads:
            n = len(payload)
            frames.append(_HEADS[n] if n < 16384 else frame_header(n))
            frames.append(payload)
    return frames


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
        reactor: Any = None,
        max_unauthenticated_per_address: int = 100,
        output_batch: bool = False,
    ) -> None:
        super().__init__(url)
        #: every frame written is an OutputBatch (GoChat c58f9fc's framing)
        self.output_batch = output_batch
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.reactor = reactor
        # Autobahn's handshake/close timers on the hub's clock, cancelled for
        # real when they are cancelled (its batched timer leaves them behind).
        use_clock(self, hub.clock)
        self.hub = hub
        self.max_frame = max_frame
        self.max_connections = max_connections
        self.max_unauthenticated = max_unauthenticated
        self.max_send_buffer = max_send_buffer
        self.max_unauthenticated_per_address = max_unauthenticated_per_address
        #: An address's share, never more than the part kept for the others,
        #: so that even with a small --max-unauthenticated one host cannot
        #: hold the whole pool.
        self.address_share = max(
            1,
            min(
                max_unauthenticated_per_address,
                int(max_unauthenticated * (1 - SHARED_PART)),
            ),
        )
        self._dirty: list[GatewayProtocol] = []
        self._flush_call: Any = None
        hub.router.flushers.append(self.flush_now)
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

    def schedule_flush(self, proto: GatewayProtocol) -> None:
        """Flush ``proto`` at the end of this reactor iteration."""
        self._dirty.append(proto)
        if self._flush_call is None:
            self._flush_call = self.reactor.callLater(0, self._flush_all)

    def flush_now(self) -> None:
        """Flush every connection with something queued now, before the end of the turn."""
        if self._flush_call is not None:
            self._flush_call.cancel()
        self._flush_all()

    def _flush_all(self) -> None:
        """Each queued connection's :meth:`GatewayProtocol.flush`, written out (one a turn each)."""
        self._flush_call = None
        protos, self._dirty = self._dirty, []
        batch = self.output_batch
        for proto in protos:
            out, proto._out = proto._out, None
            if out and proto.state == _OPEN and proto.transport is not None:
                write_now(proto.transport, b"".join(_batched(out) if batch else out))
