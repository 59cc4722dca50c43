"""Bytes for a plain TCP connection with nothing queued leave at once
(gochat/_twisted.py); queued bytes, a full socket and other
transports go through ``transport.write`` as before. Real sockets."""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import defer, protocol, reactor
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from gochat._twisted import write_now
from gochat.gateway import GatewayFactory
from tests.rawws import open_on_string_transport
from tests.test_logic import LogicTestCase


class _Accepted(protocol.Protocol):
    def connectionMade(self) -> None:  # noqa: N802
        self.factory.accepted.callback(self)  # type: ignore[attr-defined]


class WriteNow(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self) -> Any:
        factory = protocol.Factory.forProtocol(_Accepted)
        factory.accepted = defer.Deferred()  # type: ignore[attr-defined]
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.client = socket.create_connection(("127.0.0.1", port.getHost().port))
        self.addCleanup(self.client.close)
        server = yield factory.accepted
        self.transport = server.transport
        self.addCleanup(self.transport.abortConnection)

    def read(self, size: int, timeout: float = 0.0) -> bytes:
        self.client.settimeout(timeout)
        try:
            return self.client.recv(size)
        except (BlockingIOError, TimeoutError):
            return b""

    def test_bytes_for_an_idle_connection_are_in_the_socket_before_the_reactor_runs(self):
        write_now(self.transport, b"hello")
        self.assertEqual(self.transport._tempDataBuffer, [])
        self.assertEqual(self.read(100, 1.0), b"hello")  # no reactor turn in between

    def test_bytes_queued_before_go_first(self):
        self.transport.write(b"first ")
        write_now(self.transport, b"second")
        self.assertEqual(self.read(100), b"")  # both wait for the reactor, in order
        got = b""

        def more() -> bool:
            nonlocal got
            got += self.read(100)
            return got == b"first second"

        return _until(more)

    def test_what_a_full_socket_does_not_take_is_queued_and_arrives_in_order(self):
        self.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        data = bytes(range(256)) * 20_000  # 5 MB: far more than the socket takes
        write_now(self.transport, data)
        queued = len(self.transport.dataBuffer) + self.transport._tempDataLen
        self.assertTrue(0 < queued < len(data), queued)
        got = bytearray()

        def more() -> bool:
            got.extend(self.read(1 << 20))
            return len(got) >= len(data)

        d = _until(more)
        d.addCallback(lambda _: self.assertEqual(bytes(got), data))
        return d

    def test_any_other_transport_is_written_to_as_always(self):
        transport = StringTransport()
        write_now(transport, b"x")
        self.assertEqual(transport.value(), b"x")


def _until(done: Any, limit: float = 10.0) -> defer.Deferred[None]:
    """Fires once ``done()`` is true, checked every reactor turn (the reactor must write)."""
    result: defer.Deferred[None] = defer.Deferred()
    deadline = reactor.seconds() + limit

    def check() -> None:
        if done():
            result.callback(None)
        elif reactor.seconds() > deadline:
            result.errback(AssertionError("not done in time"))
        else:
            reactor.callLater(0.001, check)

    check()
    return result


class FlushNow(LogicTestCase):
    """The gateway sends what its connections queued when the router asks (a big block)."""

    def test_flush_now_sends_the_queued_frames_before_the_end_of_the_turn(self):
        clock = Clock()
        factory = GatewayFactory(self.hub, reactor=clock)
        self.assertIn(factory.flush_now, self.hub.router.flushers)
        proto, transport = open_on_string_transport(factory)
        proto.send_many([b"one", b"two"])
        self.assertEqual(transport.value(), b"")  # queued for the end of the turn
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        factory.flush_now()
        self.assertEqual(transport.value(), b"\x82\x03one\x82\x03two")
        self.assertEqual(clock.getDelayedCalls(), [])  # nothing left for the end of the turn
