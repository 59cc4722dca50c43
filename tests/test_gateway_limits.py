"""The gateway's limits against hostile clients, over real sockets.

Each test is one hole a client could open (issue 10): control frames past the
send budget, unfinished fragmented messages, one address taking every
waiting slot, slowloris on the HTTP port, a writer queue without bound, junk
over --max-frame, fields outside the contract, and bad close frames.
"""

from __future__ import annotations

import os
import random
import sqlite3
import struct

from twisted.internet import defer, endpoints, reactor, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial import unittest
from twisted.web import resource, server

from gochat import codec, codes
from gochat.api.resource import READ_TIMEOUT, ReadDeadlineChannel, set_read_timeout
from gochat.config import _PARAMS, ConfigError, Options, build_config
from gochat.gateway._autobahn import MAX_FRAGMENTS
from gochat.gateway.protocol import client_address
from gochat.pb import pb
from tests import services
from tests.rawhttp import RawHttp
from tests.rawws import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    RawWebSocket,
    build_frame,
    open_raw,
)
from tests.util import Node, NodeTestCase, ack_of, query, text

SEND_BUFFER = 64 * 1024  # the smallest --max-send-buffer


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        bits, n = n & 0x7F, n >> 7
        out.append(bits | (0x80 if n else 0))
        if not n:
            return bytes(out)


def ws_from(ws_url: str, source: str) -> defer.Deferred:
    """A raw WebSocket whose TCP connection comes from ``source`` (a loopback address)."""
    host, port = ws_url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
    path = "/" + ws_url.split("//", 1)[1].split("/", 1)[1]
    proto = RawWebSocket(f"{host}:{port}", path)
    endpoint = endpoints.TCP4ClientEndpoint(reactor, host, int(port), bindAddress=(source, 0))
    d = endpoints.connectProtocol(endpoint, proto)
    d.addCallback(lambda _: proto.handshake)
    d.addCallback(lambda _: proto)
    return d


class ControlFramesCount(NodeTestCase):
    """Pongs and every other byte the node queues count against --max-send-buffer."""

    node_options = {"max_send_buffer": SEND_BUFFER}
    timeout = 120

    @defer.inlineCallbacks
    def flood_with_pings(self, url, token=None):
        proto = yield open_raw(url, receive_buffer=4096)
        self.addCleanup(proto.abort)
        if token is not None:
            ack = yield proto.login(token)
            self.assertEqual(ack.code, codes.OK)
        conn = max(self.node.service.hub.sessions, key=lambda s: s.last_active).conn
        proto.transport.pauseProducing()  # never reads again
        pings = build_frame(OP_PING, b"p" * 125) * 4000  # 524 KB of pings a write
        sent = 0
        # Kernel buffers on loopback hold a few MiB; 64 MiB is far past them.
        while not proto.closed.called and sent < 64 * 1024 * 1024:
            proto.transport.write(pings)
            sent += len(pings)
            yield task.deferLater(reactor, 0.01, lambda: None)
        self.assertTrue(proto.closed.called, f"still open after {sent:,} bytes of pings")
        # The pongs queued for it never went past the budget by more than one pong.
        self.assertGreater(conn.backlog_peak, SEND_BUFFER)
        self.assertLessEqual(conn.backlog_peak, SEND_BUFFER + 127)
        self.assertEqual(len(self.node.service.hub.sessions), 0)

    def test_a_ping_flood_from_a_client_that_never_reads_is_dropped(self):
        return self.flood_with_pings(self.node.ws_url)

    @defer.inlineCallbacks
    def test_a_logged_in_ping_flooder_is_dropped_too(self):
        _, token = yield self.node.user("pinger")
        yield self.flood_with_pings(self.node.ws_url, token)

    def test_a_ping_flood_on_the_http_ports_ws_is_dropped(self):
        return self.flood_with_pings(self.node.http_url.replace("http", "ws") + "/ws")


class Fragments(NodeTestCase):
    """An unfinished message may hold MAX_FRAGMENTS frames; more is refused."""

    @defer.inlineCallbacks
    def test_a_message_of_max_fragments_is_read(self):
        proto = yield open_raw(self.node.ws_url)
        self.addCleanup(proto.abort)
        sync = pb.Input(type=pb.CT_Sync).SerializeToString()
        frames = [build_frame(OP_BINARY, sync[:1], fin=False)]
        frames += [build_frame(OP_CONT, b"", fin=False)] * (MAX_FRAGMENTS - 2)
        frames.append(build_frame(OP_CONT, sync[1:], fin=True))
        self.assertEqual(len(frames), MAX_FRAGMENTS)
        proto.send(b"".join(frames))
        out = yield proto.next_data_frame()
        self.assertEqual((out.type, out.code), (pb.CT_Sync, codes.NOT_LOGGED_IN))

    @defer.inlineCallbacks
    def test_one_fragment_more_gets_1012_and_close_1009(self):
        hub = self.node.service.hub
        protos = []
        for _ in range(3):
            proto = yield open_raw(self.node.ws_url)
            self.addCleanup(proto.abort)
            protos.append(proto)
            # 100,000 one-byte fragments that never finish, as in the issue.
            proto.send(build_frame(OP_BINARY, b"\x08", fin=False))
            proto.send(build_frame(OP_CONT, b"\x00", fin=False) * 100_000)
        for proto in protos:
            out = yield proto.next_data_frame()
            self.assertEqual(out.code, codes.TOO_LARGE)
            code = yield proto.closing_code()
            self.assertEqual(code, 1009)
            yield proto.closed
        self.assertEqual(len(hub.sessions), 0)


class UnauthenticatedShareOfASmallPool(NodeTestCase):
    """With only --max-unauthenticated lowered, one host still cannot fill it."""

    node_options = {"max_unauthenticated": 50}  # the per-address option left at 100

    @defer.inlineCallbacks
    def test_another_address_gets_in_after_one_filled_what_it_could(self):
        first = []
        for _ in range(50):
            proto = yield ws_from(self.node.ws_url, "127.0.0.1")
            self.addCleanup(proto.abort)
            first.append(proto.status)
        self.assertEqual(first, [101] * 38 + [503] * 12)
        other = yield ws_from(self.node.ws_url, "127.0.0.2")
        self.addCleanup(other.abort)
        self.assertEqual(other.status, 101)


class UnauthenticatedPerAddress(NodeTestCase):
    """One address cannot take every slot of --max-unauthenticated."""

    node_options = {"max_unauthenticated": 8, "max_unauthenticated_per_address": 2}

    @defer.inlineCallbacks
    def statuses(self, url, source, count):
        got = []
        for _ in range(count):
            proto = yield ws_from(url, source)
            self.addCleanup(proto.abort)
            got.append(proto.status)
        return got

    @defer.inlineCallbacks
    def check(self, url):
        # Three quarters of the pool (6) are open to anyone; then 127.0.0.1,
        # holding more than its share of 2, is refused.
        first = yield self.statuses(url, "127.0.0.1", 8)
        self.assertEqual(first, [101] * 6 + [503] * 2)
        # Another address still gets in, up to its own share.
        second = yield self.statuses(url, "127.0.0.2", 3)
        self.assertEqual(second, [101, 101, 503])
        # The global cap stays the last guard.
        third = yield self.statuses(url, "127.0.0.3", 1)
        self.assertEqual(third, [503])
        self.assertEqual(self.node.service.hub.unauthenticated_by_address["127.0.0.1"], 6)

    def test_on_the_ws_port(self):
        return self.check(self.node.ws_url)

    def test_on_the_http_ports_ws(self):
        return self.check(self.node.http_url.replace("http", "ws") + "/ws")

    @defer.inlineCallbacks
    def test_logging_in_or_leaving_frees_the_address_s_slot(self):
        hub = self.node.service.hub
        _, token = yield self.node.user("slot")
        protos = []
        for _ in range(6):
            proto = yield ws_from(self.node.ws_url, "127.0.0.1")
            self.addCleanup(proto.abort)
            protos.append(proto)
        self.assertEqual(hub.waiting_from("127.0.0.1"), 6)
        ack = yield protos[0].login(token)
        self.assertEqual(ack.code, codes.OK)
        yield protos[1].abort()
        while hub.unauthenticated > 4:  # the node sees the socket close a moment later
            yield task.deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(hub.waiting_from("127.0.0.1"), 4)
        self.assertEqual(hub.unauthenticated, 4)
        proto = yield ws_from(self.node.ws_url, "127.0.0.1")
        self.addCleanup(proto.abort)
        self.assertEqual(proto.status, 101)

    def test_the_address_is_the_ip_or_an_ipv6_clients_64(self):
        self.assertEqual(client_address(IPv4Address("TCP", "10.1.2.3", 5)), "10.1.2.3")
        peer = type("Peer", (), {"host": "2001:db8:1:2:aaaa::1"})()
        self.assertEqual(client_address(peer), "2001:db8:1:2::/64")
        peer.host = "::ffff:10.1.2.3"
        self.assertEqual(client_address(peer), "10.1.2.3")
        self.assertIsNone(client_address(object()))


class _Slow(resource.Resource):
    """Answers only when told (as a /ws upgrade never does)."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.pending = []

    def render(self, request):
        self.pending.append(request)
        return server.NOT_DONE_YET


class HttpReadDeadline(NodeTestCase):
    """--http-read-timeout: a request must arrive whole within the deadline."""

    def channel(self):
        clock = task.Clock()
        root = resource.Resource()
        slow = _Slow()
        root.putChild(b"slow", slow)
        root.putChild(b"fast", resource.NoResource())
        site = server.Site(root, reactor=clock)
        set_read_timeout(site, READ_TIMEOUT)
        channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        self.assertIsInstance(channel, ReadDeadlineChannel)
        transport = StringTransport()
        channel.makeConnection(transport)
        return clock, channel, transport, slow

    def test_headers_a_byte_at_a_time_are_cut_at_the_deadline_with_408(self):
        clock, channel, transport, _ = self.channel()
        for byte in b"GET /fast HTTP/1.1\r\nHost: x\r\nX-Slow: ":
            channel.dataReceived(bytes([byte]))
            clock.advance(0.25)  # well inside an idle timeout, every time
        clock.advance(READ_TIMEOUT - clock.seconds() - 0.01)
        self.assertFalse(transport.disconnecting)
        clock.advance(0.02)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 408 "), transport.value())
        self.assertTrue(transport.disconnecting)
        self.assertIsNone(transport.producer)  # else a real transport waits for it

    def test_a_body_that_trickles_is_cut_too(self):
        clock, channel, transport, _ = self.channel()
        channel.dataReceived(b"POST /fast HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab")
        clock.advance(READ_TIMEOUT + 0.01)
        self.assertIn(b" 408 ", transport.value())
        self.assertTrue(transport.disconnecting)

    def test_a_request_read_in_time_may_take_long_to_answer(self):
        # As an upgraded /ws does: the request was read; what follows is not HTTP's.
        clock, channel, transport, slow = self.channel()
        channel.dataReceived(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        clock.advance(READ_TIMEOUT * 100)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(len(slow.pending), 1)
        # Answered: a keep-alive connection has a new deadline for its next request.
        slow.pending[0].write(b"ok")
        slow.pending[0].finish()
        clock.advance(READ_TIMEOUT - 0.01)
        self.assertFalse(transport.disconnecting)
        channel.dataReceived(b"GET /fast HTTP/1.1\r\nHost: x\r\n\r\n")
        clock.advance(READ_TIMEOUT * 2)
        self.assertNotIn(b" 408 ", transport.value())
        # ... and an idle one is closed without a 408 once its deadline passes.
        self.assertTrue(transport.disconnecting)

    def test_the_option_reaches_the_site(self):
        self.assertEqual(self.node.service.site.read_timeout, 10.0)
        self.assertIs(self.node.service.site.protocol, ReadDeadlineChannel)


class HttpReadDeadlineOverSockets(NodeTestCase):
    node_options = {"http_read_timeout": 0.5}

    @defer.inlineCallbacks
    def test_a_slowloris_connection_gets_408_and_is_closed(self):
        port = int(self.node.http_url.rsplit(":", 1)[1])
        proto = RawHttp(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        yield endpoints.connectProtocol(endpoint, proto)
        started = reactor.seconds()
        answer = yield proto.done
        self.assertTrue(answer.startswith(b"HTTP/1.1 408 "), answer)
        # Closed right after the 408, not at the abort 5 s later.
        self.assertLess(reactor.seconds() - started, 3)

    @defer.inlineCallbacks
    def test_an_upgraded_ws_on_the_http_port_outlives_the_deadline(self):
        _, token = yield self.node.user("upgraded")
        proto = yield open_raw(self.node.http_url.replace("http", "ws") + "/ws")
        self.addCleanup(proto.abort)
        ack = yield proto.login(token)
        self.assertEqual(ack.code, codes.OK)
        yield task.deferLater(reactor, 1.0, lambda: None)  # twice the deadline
        proto.send_input(pb.CT_Sync, pb.SyncInputMsg(seq=0).SerializeToString())
        out = yield proto.next_data_frame()
        self.assertEqual((out.type, out.code), (pb.CT_Sync, codes.OK))


class WriterBackpressure(NodeTestCase):
    """While the database is stalled, clients stop being read past a high-water mark."""

    timeout = 180
    CLIENTS = 100
    EACH = 40
    HIGH = 400

    def stall(self):
        """Hold the write lock from another connection; returns the release."""
        lock = sqlite3.connect(os.path.join(self.node.data_dir, "gochat.db"), timeout=30)
        self.addCleanup(lock.close)
        lock.execute("BEGIN IMMEDIATE")
        return lock.rollback

    def stored(self, receiver):
        return query(self.node, "SELECT COUNT(*) FROM messages WHERE user_id = ?", (receiver,))[0][
            0
        ]

    @defer.inlineCallbacks
    def test_a_stalled_database_pauses_reading_and_everything_is_stored_after(self):
        hub = self.node.service.hub
        writer = hub.writer
        writer.high_water = self.HIGH
        users = []
        for i in range(self.CLIENTS + 1):
            user = yield self.node.user(f"p{i}")
            users.append(user)
        receiver = users[0][0]
        clients = []
        for _, token in users[1:]:
            proto = yield self.raw(token)
            clients.append(proto)
        changes = []
        paused = defer.Deferred()
        resumed = defer.Deferred()

        def on_backlog(backlogged, original=writer.on_backlog):
            changes.append(backlogged)
            original(backlogged)
            waiter = paused if backlogged else resumed
            if not waiter.called:
                waiter.callback(None)

        writer.on_backlog = on_backlog
        release = self.stall()  # every commit now waits for the lock
        try:
            content = "x" * 512
            for proto in clients:
                # Pipelining: every message of the client in one write.
                proto.send_inputs(
                    [
                        (pb.CT_Message, pb.UpMsg(msg=text(receiver, content), clientId=cid))
                        for cid in range(1, self.EACH + 1)
                    ]
                )
            yield paused
            self.assertTrue(hub.reading_paused)
            queued_at_pause = len(writer._queue)
            # The clients have sent everything; the node reads none of it.
            yield task.deferLater(reactor, 1.0, lambda: None)
            self.assertEqual(len(writer._queue), queued_at_pause)
            self.assertLessEqual(writer.queue_peak, self.HIGH)
            self.assertLess(writer.queued_bytes, self.HIGH * 600)
            self.assertLess(writer.queue_peak, self.CLIENTS * self.EACH // 2)
        finally:
            release()
        # Released: reading resumes, and every message is stored and ACKed 200, in order.
        for proto in clients:
            outs = yield proto.outputs(self.EACH, timeout=60)
            self.assertEqual(
                [(o.code, ack_of(o).clientId) for o in outs],
                [(200, cid) for cid in range(1, self.EACH + 1)],
            )
        yield resumed
        self.assertFalse(hub.reading_paused)
        self.assertEqual(changes[:2], [True, False])
        self.assertEqual(self.stored(receiver), self.CLIENTS * self.EACH)


class WriterBackpressurePostgreSQL(WriterBackpressure):
    """The same on PostgreSQL, the messages table locked by another connection."""

    @defer.inlineCallbacks
    def setUp(self):
        self.url = services.postgres_database(self)
        self.node = Node(db=self.url)
        yield self.node.start()
        self.addCleanup(self.node.stop)
        self._clients = []

    def _connect(self):
        import psycopg2

        conn = psycopg2.connect(self.url)
        self.addCleanup(conn.close)
        return conn

    def stall(self):
        conn = self._connect()
        with conn.cursor() as cur:
            cur.execute("LOCK TABLE messages IN ACCESS EXCLUSIVE MODE")
        return conn.rollback

    def stored(self, receiver):
        conn = self._connect()
        with conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM messages WHERE user_id = %s", (receiver,))
            return cur.fetchone()[0]


class JunkOverMaxFrame(NodeTestCase):
    """A frame over --max-frame is answered 1012, whatever its bytes parse as."""

    @defer.inlineCallbacks
    def test_100_kb_of_junk_gets_1012(self):
        _, token = yield self.node.user("junk")
        proto = yield self.raw(token)
        rng = random.Random(10)
        samples = [b"\xff" * 100_000]
        # Junk that parses as an Input of an unknown type (what got 1010) ...
        samples.append(b"\x08\x63\x12" + _varint(99_990) + bytes(99_990))
        # ... as a CT_Message whose UpMsg is junk or empty, and random bytes.
        samples.append(b"\x08\x03\x12" + _varint(99_990) + b"\xff" * 99_990)
        samples.append(b"\x08\x03\x22" + _varint(99_990) + b"\xff" * 99_990)
        samples += [rng.randbytes(100_000) for _ in range(20)]
        for junk in samples:
            proto.sendMessage(junk, isBinary=True)
            out = yield proto.next_output()
            self.assertEqual(out.code, codes.TOO_LARGE, junk[:8])


class UnknownFields(NodeTestCase):
    """Fields outside the contract are dropped before storing and pushing: push == sync."""

    @defer.inlineCallbacks
    def test_a_push_carries_only_contract_fields_and_equals_the_synced_message(self):
        alice, alice_token = yield self.node.user("alice")
        bob, bob_token = yield self.node.user("bob")
        sender = yield self.raw(alice_token)
        receiver = yield self.raw(bob_token)
        extra = b"\x9a\x06\x0bhidden-data"  # field 99, length-delimited
        message = text(bob, "hi").SerializeToString() + extra
        up = b"\x0a" + _varint(len(message)) + message + b"\x10\x01" + b"\xa0\x06\x07"
        sender.send_input(pb.CT_Message, up)
        ack = yield sender.next_output()
        self.assertEqual(ack.code, codes.OK)
        push = yield receiver.next_output()
        self.assertEqual(push.type, pb.CT_Message)
        self.assertNotIn(b"hidden-data", push.data)
        pushed = pb.PushMsg.FromString(push.data).msg
        receiver.send_input(pb.CT_Sync, pb.SyncInputMsg(seq=0))
        out = yield receiver.next_output()
        synced = pb.SyncOutputMsg.FromString(out.data).messages
        self.assertEqual(len(synced), 1)
        self.assertEqual(pushed.SerializeToString(), synced[0].SerializeToString())

    def test_the_codec_discards_unknown_fields_at_every_depth(self):
        message = text(5, "x").SerializeToString() + b"\x9a\x06\x01z"
        up = codec.decode_up(b"\x0a" + _varint(len(message)) + message + b"\x10\x01\xa0\x06\x07")
        self.assertEqual(
            up.SerializeToString(), pb.UpMsg(msg=text(5, "x"), clientId=1).SerializeToString()
        )


class BadCloseDropsTcp(NodeTestCase):
    """After answering a bad close frame the node drops TCP itself (RFC 6455 section 7.1.1)."""

    @defer.inlineCallbacks
    def check(self, payload, code, frame=None):
        proto = yield open_raw(self.node.ws_url)
        self.addCleanup(proto.abort)
        proto.close_sent = True  # this client never answers the node's close
        started = reactor.seconds()
        proto.transport.write(frame or build_frame(OP_CLOSE, payload))
        got = yield proto.closing_code()
        self.assertEqual(got, code)
        yield proto.closed
        # Well before the 5 s close-handshake timeout it would otherwise wait out.
        self.assertLess(reactor.seconds() - started, 2.5)

    @defer.inlineCallbacks
    def test_invalid_close_codes(self):
        for bad in (0, 999, 1004, 1005, 1006, 1016, 1100, 2000, 2999):
            yield self.check(struct.pack("!H", bad), 1002)

    def test_a_close_reason_that_is_not_utf8(self):
        return self.check(
            struct.pack("!H", 1000) + b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80",
            1007,
        )

    def test_a_close_payload_over_125_bytes(self):
        return self.check(struct.pack("!H", 1000) + b"*" * 124, 1002)


class LimitOptions(unittest.TestCase):
    """The two new options: defaults, values, environment variables, bad values."""

    def options(self, **overrides):
        opts = {name: default for name, _short, default, _doc in _PARAMS}
        opts.update({k.replace("_", "-"): v for k, v in overrides.items()})
        return opts

    def test_defaults(self):
        config = build_config(self.options())
        self.assertEqual(
            (config.max_unauthenticated_per_address, config.http_read_timeout), (100, 10.0)
        )

    def test_values_and_environment(self):
        config = build_config(
            self.options(max_unauthenticated_per_address="7", http_read_timeout="2.5")
        )
        self.assertEqual(
            (config.max_unauthenticated_per_address, config.http_read_timeout), (7, 2.5)
        )
        for name, value in (
            ("GOCHAT_MAX_UNAUTHENTICATED_PER_ADDRESS", "9"),
            ("GOCHAT_HTTP_READ_TIMEOUT", "3"),
        ):
            self.addCleanup(os.environ.pop, name, None)
            os.environ[name] = value
        opts = Options()
        opts.parseOptions(["--data-dir", self.mktemp()])
        self.assertEqual(
            (opts.config.max_unauthenticated_per_address, opts.config.http_read_timeout), (9, 3.0)
        )

    def test_bad_values_are_one_line_errors(self):
        for name, value in (
            ("max_unauthenticated_per_address", "0"),
            ("max_unauthenticated_per_address", "many"),
            ("http_read_timeout", "0"),
            ("http_read_timeout", "nan"),
        ):
            with self.assertRaises(ConfigError) as caught:
                build_config(self.options(**{name: value}))
            self.assertIn("--" + name.replace("_", "-"), str(caught.exception))
