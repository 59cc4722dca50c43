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

PB's encoding costs a node-to-node call more than its payload: jelly
walks the arguments object by object (a security check and a type name per
object, a reference table per list), Banana encodes item by item with a
call per seven bits of every length, and the decoder reads each length
byte by byte through a generator; about 650 Python calls for a call of a
dozen items and its answer. :class:`Broker`
jellies and unjellies plain data (bytes, int, float, str, None, bool and
lists, tuples and dicts of them, each container once) in one pass, encodes
Banana into a list of parts with lengths from a table, and reads lengths of
one or two bytes from a table; it produces and accepts the same bytes and
objects as Twisted does, and hands anything else (a Referenceable, a shared
or cyclic container, a Deferred, a malformed expression) to Twisted's own
code, which then answers as it always did. It relies on Banana's encoder
state (``currentDialect``, ``outgoingSymbols``, ``_largestInt``) and on
jelly's atoms for those types, with the default security
(``jelly.globalSecurity``, which allows them all).

The load tool's workers (``gochat/bench/worker.py``) read a thousand
connections each, one small read per push batch, and every event Twisted's
epoll reactor hands out goes through ``log.callWithLogger`` (a logging
context pushed and popped), ``_doReadOrWrite`` (a ``fileno()`` check),
``doRead`` and ``_dataReceived`` before the protocol sees the bytes: about
a third of a worker's time in a 10,000-member group round, time taken
from the node it measures on a shared machine. :class:`LeanEPollReactor`
reads a client connection's plain read event itself (``socket.recv`` and
``protocol.dataReceived``, as ``tcp.Connection.doRead`` does) and hands
every other event to Twisted's own path; it relies on ``EPollReactor``'s
``_poller`` and ``_selectables`` and on ``_doReadOrWrite`` and
``_disconnectSelectable``.

All of it is written against Twisted 26.10 (``pyproject.toml`` pins the range),
and a new Twisted release is checked here, and only here.
"""

from __future__ import annotations

import errno
import struct
import sys
from itertools import islice
from select import EPOLLIN
from typing import Any

from twisted.internet import main
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.tcp import Client, Server
from twisted.python import log
from twisted.spread import banana, jelly, pb

__all__ = ["Broker", "LeanEPollReactor", "install_lean_reactor", "write_now"]


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


class LeanEPollReactor(EPollReactor):
    """The epoll reactor with a short path for a client connection's read (see above)."""

    def doPoll(self, timeout: float | None) -> None:  # noqa: N802 - Twisted's API
        try:
            events = self._poller.poll(-1 if timeout is None else timeout, len(self._selectables))
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        get = self._selectables.get
        for fd, event in events:
            selectable = get(fd)
            if selectable is None:
                continue
            if event != EPOLLIN or type(selectable) is not Client or not selectable.connected:
                log.callWithLogger(selectable, self._doReadOrWrite, selectable, fd, event)
                continue
            try:
                data = selectable.socket.recv(selectable.bufferSize)
            except OSError:  # nothing after all, or an error: Twisted's path tells
                self._doReadOrWrite(selectable, fd, event)
                continue
            why: Any = None
            if not data:
                why = main.CONNECTION_DONE
            else:
                try:
                    selectable.protocol.dataReceived(data)
                except BaseException:
                    why = sys.exc_info()[1]
                    log.err()
            if why is not None:
                self._disconnectSelectable(selectable, why, True)

    doIteration = doPoll


def install_lean_reactor() -> LeanEPollReactor:
    """Install :class:`LeanEPollReactor` as the global reactor (before anything imports it)."""
    from twisted.internet.main import installReactor

    reactor = LeanEPollReactor()
    installReactor(reactor)
    return reactor


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


class _Prefixes(dict[int, bytes]):
    """``int2b128`` of 0 to 16,383 (every length and most ints of a node-to-node call);
    a bigger one is built when asked for."""

    def __missing__(self, n: int) -> bytes:
        out: list[bytes] = []
        banana.int2b128(n, out.append)
        return b"".join(out)


class _Ints(dict[bytes, int]):
    """``b1282int`` of those prefixes; another (longer, or as ``b"\x05\x00"``) is read."""

    def __missing__(self, prefix: bytes) -> int:
        return int(banana.b1282int(prefix))


_B128 = _Prefixes(
    (n, bytes((n,)) if n < 128 else bytes((n & 0x7F, n >> 7))) for n in range(1 << 14)
)
_INT_OF = _Ints((prefix, n) for n, prefix in _B128.items())


class _NotPlain(Exception):
    """Not plain data: Twisted's jelly is asked instead."""


_LEAVES = frozenset((bytes, int, float))
#: jelly's default security (read once: the module is behind a deprecation proxy)
_GLOBAL_SECURITY = jelly.globalSecurity


def _jelly_plain(obj: Any, seen: set[int]) -> Any:
    """What ``jelly.jelly`` gives for plain data; _NotPlain for anything else.

    ``seen`` holds the containers met so far: jelly writes a container met
    twice as a reference, so that is left to it.
    """
    kind = type(obj)
    if kind in _LEAVES:
        return obj
    if kind is list or kind is tuple or kind is dict:
        key = id(obj)
        if key in seen:
            raise _NotPlain
        seen.add(key)
        if kind is dict:
            return [
                b"dictionary",
                *[[_jelly_plain(k, seen), _jelly_plain(v, seen)] for k, v in obj.items()],
            ]
        return [
            b"list" if kind is list else b"tuple",
            *[x if type(x) in _LEAVES else _jelly_plain(x, seen) for x in obj],
        ]
    if kind is str:
        return [b"unicode", obj.encode("UTF-8")]
    if obj is None:
        return [b"None"]
    if kind is bool:
        return [b"boolean", b"true" if obj else b"false"]
    raise _NotPlain


def _unjelly_plain(sexp: Any) -> Any:
    """What ``jelly.unjelly`` gives for :func:`_jelly_plain`'s output; raises for anything else."""
    if type(sexp) is not list:
        return sexp
    atom = sexp[0]
    if atom == b"list":
        return [x if type(x) is not list else _unjelly_plain(x) for x in islice(sexp, 1, None)]
    if atom == b"tuple":
        return tuple([_unjelly_plain(x) for x in islice(sexp, 1, None)])
    if atom == b"dictionary":
        return {_unjelly_plain(k): _unjelly_plain(v) for k, v in islice(sexp, 1, None)}
    if atom == b"unicode":
        return str(sexp[1], "UTF-8")
    if atom == b"None":
        return None
    if atom == b"boolean" and sexp[1] in (b"true", b"false"):
        return sexp[1] == b"true"
    raise _NotPlain


class Broker(pb.Broker):
    """PB's broker, decoding Banana by offset and (un)jellying plain data in one pass."""

    def serialize(  # noqa: D102 - pb.Broker's
        self,
        object: Any,  # noqa: A002 - pb.Broker's name
        perspective: Any = None,
        method: Any = None,
        args: Any = None,
        kw: Any = None,
    ) -> Any:
        if self.security is _GLOBAL_SECURITY:
            try:
                return _jelly_plain(object, set())
            except Exception:
                pass  # Twisted's jelly says what it is, or what is wrong with it
        return super().serialize(object, perspective, method, args, kw)

    def unserialize(self, sexp: Any, perspective: Any = None) -> Any:  # noqa: D102
        if self.security is _GLOBAL_SECURITY:
            try:
                return _unjelly_plain(sexp)
            except Exception:
                pass
        return super().unserialize(sexp, perspective)

    def sendEncoded(self, obj: Any) -> None:  # noqa: N802
        """What ``Banana.sendEncoded`` writes, built as a list of parts."""
        parts: list[bytes] = []
        append = parts.append
        symbols = self.outgoingSymbols if self.currentDialect == b"pb" else None
        largest: int = self._largestInt  # set by setPrefixLimit
        fallback = self._encode
        size_limit = banana.SIZE_LIMIT
        prefix = _B128
        string, list_, int_, vocab = banana.STRING, banana.LIST, banana.INT, banana.VOCAB

        def encode(item: Any) -> None:
            kind = type(item)
            if kind is bytes:
                if symbols is not None and item in symbols:
                    append(prefix[symbols[item]] + vocab)
                    return
                n = len(item)
                if n > size_limit:
                    raise banana.BananaError(f"byte string is too long to send ({n})")
                append(prefix[n] + string)
                append(item)
            elif kind is list or kind is tuple:
                n = len(item)
                if n > size_limit:
                    raise banana.BananaError(f"list/tuple is too long to send ({n})")
                append(prefix[n] + list_)
                for element in item:
                    if type(element) is bytes and (symbols is None or element not in symbols):
                        n = len(element)  # a string, as below, without a call
                        if n > size_limit:
                            raise banana.BananaError(f"byte string is too long to send ({n})")
                        append(prefix[n] + string)
                        append(element)
                    else:
                        encode(element)
            elif kind is int and 0 <= item <= largest:
                append(prefix[item] + int_)
            else:
                fallback(item, append)  # negatives, longs, floats: Banana's own

        encode(obj)
        transport: Any = self.transport
        transport.write(b"".join(parts))

    def dataReceived(self, chunk: bytes) -> None:  # noqa: N802
        """What ``Banana.dataReceived`` does, item for item and error for error."""
        buffer = self.buffer + chunk if self.buffer else chunk
        list_stack = self.listStack
        got_item = self.gotItem
        ints = _INT_OF
        limit: int = self.prefixLimit  # type: ignore[assignment]  # set by connectionMade
        size_limit = banana.SIZE_LIMIT
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
                if kind == _LIST:
                    n = ints[num]
                    if n > size_limit:
                        raise banana.BananaError("Security precaution: List too long.")
                    list_stack.append((n, []))
                    start = rest
                else:
                    if kind == _STRING:
                        n = ints[num]
                        if n > size_limit:
                            raise banana.BananaError("Security precaution: String too long.")
                        if end - rest < n:
                            break
                        start = rest + n
                        item: Any = buffer[rest:start]
                    elif kind == _INT or kind == _LONGINT:
                        start = rest
                        item = ints[num]
                    elif kind == _NEG or kind == _LONGNEG:
                        start = rest
                        item = -ints[num]
                    elif kind == _VOCAB:
                        start = rest
                        item = self.incomingVocabulary[ints[num]]
                        if self.currentDialect != b"pb":
                            raise NotImplementedError(f"Invalid item for pb protocol {item!r}")
                    elif kind == _FLOAT:
                        if end - rest < 8:
                            break
                        start = rest + 8
                        item = struct.unpack("!d", buffer[rest:start])[0]
                    else:
                        raise NotImplementedError(f"Invalid Type Byte {bytes([kind])!r}")
                    # gotItem's work, without its call for an item inside a list
                    if list_stack:
                        list_stack[-1][1].append(item)
                    else:
                        got_item(item)
                while list_stack and len(list_stack[-1][1]) == list_stack[-1][0]:
                    done = list_stack.pop()[1]
                    if list_stack:
                        list_stack[-1][1].append(done)
                    else:
                        got_item(done)
        finally:
            self.buffer = buffer[start:] if start < end else b""
