"""The gateway's own frame reader: every frame reaches the session, whole and
in order, however TCP splits the stream, and whatever it cannot read itself
(control frames, fragments, text, oversize) still goes through Autobahn."""

from __future__ import annotations

import base64
import os
import struct

from twisted.internet import defer, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from gochat.bench.wire import login_input, message_input, open_socket
from gochat.gateway.protocol import unmask
from gochat.pb import pb
from tests.util import NodeTestCase


def client_frame(payload: bytes, opcode: int = 0x2, fin: bool = True) -> bytes:
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = bytes((0x80 * fin | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 * fin | opcode, 0x80 | 126)) + struct.pack("!H", n)
    else:
        head = bytes((0x80 * fin | opcode, 0x80 | 127)) + struct.pack("!Q", n)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


class Unmask(NodeTestCase):
    def test_unmask_matches_the_rfc_definition(self):
        mask = b"\x01\x80\xff\x37"
        for n in (0, 1, 3, 4, 5, 126, 1000):
            payload = os.urandom(n)
            expected = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            self.assertEqual(unmask(payload, mask), expected)


class SplitStream(NodeTestCase):
    """A gateway protocol on a string transport, fed bytes in chosen pieces."""

    def open(self):
        proto = self.node.service.ws_factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        transport = StringTransport()
        proto.makeConnection(transport)
        key = base64.b64encode(os.urandom(16))
        proto.dataReceived(
            b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key + b"\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        self.assertIn(b" 101 ", transport.value())
        transport.clear()
        got = []
        proto.session.frame_received = lambda payload, is_binary=True: got.append(
            (payload, is_binary)
        )
        self.addCleanup(proto.connectionLost, Failure(ConnectionDone()))
        return proto, transport, got

    def feed(self, proto, stream: bytes, piece: int) -> None:
        for i in range(0, len(stream), piece):
            proto.dataReceived(stream[i : i + piece])

    def test_frames_arrive_whole_and_in_order_for_any_split(self):
        payloads = [b"", b"a", os.urandom(125), os.urandom(126), os.urandom(3000), b"z" * 7]
        stream = b"".join(client_frame(p) for p in payloads)
        for piece in (1, 2, 3, 5, 7, 64, len(stream)):
            proto, _, got = self.open()
            self.feed(proto, stream, piece)
            self.assertEqual(got, [(p, True) for p in payloads], f"piece {piece}")

    def test_a_frame_cut_by_a_read_is_held_by_the_fast_reader(self):
        # A pipelining client's reads rarely end on a frame boundary; handing
        # the cut-off frame to Autobahn would put its slow reader in charge.
        payloads = [os.urandom(40), os.urandom(300), os.urandom(41)]
        frames = [client_frame(p) for p in payloads]
        stream = b"".join(frames)
        second = len(frames[0])  # where the second frame (a 126-length one) starts
        proto, _, got = self.open()
        consumed = []
        original = proto.consumeData
        proto.consumeData = lambda: (consumed.append(1), original())[1]
        # in the first header, its mask, its body; the second's length, mask, body
        for cut, frame_start in (
            (1, 0),
            (4, 0),
            (30, 0),
            (second + 3, second),
            (second + 6, second),
            (second + 200, second),
        ):
            got.clear()
            proto.dataReceived(stream[:cut])
            self.assertEqual(proto._held, stream[frame_start:cut], f"cut {cut}")
            self.assertEqual(len(got), 1 if frame_start else 0)
            proto.dataReceived(stream[cut:])
            self.assertEqual(got, [(p, True) for p in payloads], f"cut {cut}")
            self.assertEqual(proto._held, b"")
        self.assertEqual(consumed, [])
        self.assertEqual(proto.data, b"")

    def test_control_frames_and_fragments_between_data_frames(self):
        proto, transport, got = self.open()
        stream = (
            client_frame(b"one")
            + client_frame(b"ping!", opcode=0x9)
            + client_frame(b"fra", fin=False)
            + client_frame(b"gment", opcode=0x0)
            + client_frame(b"two")
        )
        for piece in (len(stream), 4):
            got.clear()
            transport.clear()
            self.feed(proto, stream, piece)
            self.assertEqual(got, [(b"one", True), (b"fragment", True), (b"two", True)])
            self.assertIn(b"\x8a\x05ping!", transport.value())  # the pong

    def test_text_frames_still_reach_the_session_as_text(self):
        proto, _, got = self.open()
        self.feed(proto, client_frame(b"bin") + client_frame(b"text", opcode=0x1), 1000)
        self.assertEqual(got, [(b"bin", True), (b"text", False)])


class Pipelined(NodeTestCase):
    @defer.inlineCallbacks
    def test_hundreds_of_messages_in_one_write_are_acked_in_order(self):
        alice, alice_token = yield self.node.user("alice")
        bob, _ = yield self.node.user("bob")
        outputs = []
        logged_in, done = defer.Deferred(), defer.Deferred()
        count = 300

        def on_frames(payloads):
            for payload in payloads:
                outputs.append(pb.Output.FromString(payload))
                if len(outputs) == 1:
                    logged_in.callback(None)
                elif len(outputs) == count + 1:
                    done.callback(None)

        sock = yield open_socket(reactor, self.node.ws_url, on_frames)
        self.addCleanup(sock.close)
        sock.send(login_input(alice_token))
        yield logged_in
        self.assertEqual(outputs[0].code, 200)
        sock.send_many(  # one TCP write
            [message_input(alice, bob, False, cid, b"m%d" % cid, 0) for cid in range(1, count + 1)]
        )
        yield done
        acks = [pb.ACKMsg.FromString(o.data) for o in outputs[1:]]
        self.assertEqual(
            [(o.code, a.type, a.clientId, a.seq) for o, a in zip(outputs[1:], acks, strict=True)],
            [(200, pb.AT_Up, cid, cid) for cid in range(1, count + 1)],
        )
