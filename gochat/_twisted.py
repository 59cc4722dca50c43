"""Every reach into Twisted's internals, in one place.

``transport.write`` only queues: the bytes leave when the reactor next polls
and finds the socket writable, after one ``epoll_ctl`` to ask and before
another to stop asking. A group fan-out writes to thousands of connections
in one turn, and for each the two extra system calls and the wait cost more
than the send itself: 10,000-member group rounds went out 20 to 40 ms later.
:func:`write_now` sends at once when nothing is queued before it. It reads
``tcp.Server``'s buffers (``dataBuffer``, ``_tempDataBuffer``) and socket,
which are not public.

Perspective Broker's Banana decoder (``banana.Banana.dataReceived``) cuts
its buffer after every item it reads (``rest = buffer[pos + 1:]``, then
``buffer = rest[num:]``): a 64 KiB read holding a thousand small items
copies the rest of the read twice per item. Node-to-node calls are exactly
that (a group's run of pushes is a list of message bases, forwarded
messages come a few per call, many calls per read), and the copying was a
third of the PB cost of a three-node cluster. :class:`Broker` reads the
same items by offset; it relies on Banana's type bytes and decoder state
(``buffer``, ``listStack``, ``prefixLimit``, ``incomingVocabulary``).

Both are written against Twisted 26.10 (``pyproject.toml`` pins the range),
and a new Twisted release is checked here, and only here.
"""

from __future__ import annotations

import struct
from typing import Any

from twisted.internet.tcp import Server
from twisted.spread import banana, pb

__all__ = ["Broker", "write_now"]


def write_now(transport: Any, data: bytes) -> None:
    """Write ``data`` as ``transport.write`` would, sending what the socket takes at once.

    Only a plain TCP connection with nothing queued sends directly (a TLS
    one encrypts first, and queued bytes must go first); what the socket
    does not take, or any error, is left to ``transport.write`` and the
    reactor, which send the rest or find the connection lost as they always do.
    """
    if (
        type(transport) is Server
        and transport.connected
        and not transport.disconnecting
        and not transport.dataBuffer
        and not transport._tempDataBuffer
    ):
        try:
            sent = transport.socket.send(data)
        except OSError:  # full (EAGAIN) or gone: the reactor's write finds out
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


_LIST, _INT, _STRING, _NEG, _FLOAT, _LONGINT, _LONGNEG, _VOCAB = (
    t[0]
    for t in (
        banana.LIST,
        banana.INT,
        banana.STRING,
        banana.NEG,
        banana.FLOAT,
        banana.LONGINT,
        banana.LONGNEG,
        banana.VOCAB,
    )
)


class Broker(pb.Broker):
    """PB's broker, decoding Banana by offset instead of cutting the buffer per item."""

    def dataReceived(self, chunk: bytes) -> None:  # noqa: N802
        """What ``Banana.dataReceived`` does, item for item and error for error."""
        buffer = self.buffer + chunk if self.buffer else chunk
        list_stack = self.listStack
        got_item = self.gotItem
        limit: int = self.prefixLimit  # type: ignore[assignment]  # set by connectionMade
        size_limit = banana.SIZE_LIMIT
        b1282int = banana.b1282int
        end = len(buffer)
        start = 0
        try:
            while start < end:
                pos = start
                while pos < end and buffer[pos] < 0x80:
                    pos += 1
                if pos - start > limit:
                    raise banana.BananaError(
                        f"Security precaution: more than {limit} bytes of prefix"
                    )
                if pos == end:
                    break  # the type byte has not arrived yet
                num = buffer[start:pos]
                kind = buffer[pos]
                rest = pos + 1
                if kind == _STRING:
                    n = b1282int(num)
                    if n > size_limit:
                        raise banana.BananaError("Security precaution: String too long.")
                    if end - rest < n:
                        break
                    start = rest + n
                    got_item(buffer[rest:start])
                elif kind == _LIST:
                    n = b1282int(num)
                    if n > size_limit:
                        raise banana.BananaError("Security precaution: List too long.")
                    list_stack.append((n, []))
                    start = rest
                elif kind == _INT or kind == _LONGINT:
                    start = rest
                    got_item(b1282int(num))
                elif kind == _NEG or kind == _LONGNEG:
                    start = rest
                    got_item(-b1282int(num))
                elif kind == _VOCAB:
                    start = rest
                    item = self.incomingVocabulary[b1282int(num)]
                    if self.currentDialect != b"pb":
                        raise NotImplementedError(f"Invalid item for pb protocol {item!r}")
                    got_item(item)
                elif kind == _FLOAT:
                    if end - rest < 8:
                        break
                    start = rest + 8
                    got_item(struct.unpack("!d", buffer[rest:start])[0])
                else:
                    raise NotImplementedError(f"Invalid Type Byte {bytes([kind])!r}")
                while list_stack and len(list_stack[-1][1]) == list_stack[-1][0]:
                    got_item(list_stack.pop()[1])
        finally:
            self.buffer = buffer[start:] if start < end else b""
