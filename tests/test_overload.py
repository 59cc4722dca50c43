"""Overload: a client that stops reading, and floods of frames from one connection."""

from __future__ import annotations

from twisted.internet import defer

from gochat import codes
from gochat.pb import pb
from tests.rawws import open_raw
from tests.util import Node, NodeTestCase

SEND_BUFFER = 256 * 1024  # above one batch of pushes, so a reader that reads keeps up
CONTENT = 16 * 1024


class SlowReader(NodeTestCase):
    timeout = 120

    @defer.inlineCallbacks
    def setUp(self):
        self.node = Node(max_send_buffer=SEND_BUFFER)
        yield self.node.start()
        self.addCleanup(self.node.stop)
        self._clients = []

    def session_of(self, user_id):
        for session in self.node.service.hub.sessions:
            if session.user_id == user_id:
                return session
        return None

    def test_reader_that_stops_is_dropped_with_bounded_memory_and_others_unaffected(self):
        return self.flood_a_stalled_reader(self.node.ws_url)

    def test_stalled_reader_on_the_http_ports_ws_is_dropped_too(self):
        # /ws beside the API: the web channel handed the transport over to us.
        return self.flood_a_stalled_reader(self.node.http_url.replace("http", "ws") + "/ws")

    @defer.inlineCallbacks
    def flood_a_stalled_reader(self, slow_url):
        sender_id, sender_token = yield self.node.user("sender")
        slow_id, slow_token = yield self.node.user("slow")
        fast_id, fast_token = yield self.node.user("fast")
        group = yield self.node.api().create_group(sender_token, "flood", [slow_id, fast_id])
        group_id = int(group["id"])

        slow = yield open_raw(slow_url, receive_buffer=4096)
        self.addCleanup(slow.abort)
        code, _ = yield slow.login(slow_token)
        self.assertEqual(code, codes.OK)
        slow.transport.pauseProducing()  # never read again
        slow_conn = self.session_of(slow_id).conn

        fast = yield self.client(fast_token)
        sender = yield self.client(sender_token)
        sent = 0
        # Kernel buffers on loopback hold a few MiB; 64 MiB of pushes is far past them.
        while not slow_conn.is_closed.called and sent < 4096:
            batch = [
                sender.send_text(group_id, f"{sent + i:05d}" + "z" * CONTENT, group=True)
                for i in range(8)
            ]
            sent += len(batch)
            yield defer.gatherResults(batch)

        self.assertTrue(slow_conn.is_closed.called, f"still open after {sent} messages")
        self.assertIsNone(self.session_of(slow_id))
        # What the node queued for it never went much past the limit: one push at most.
        self.assertLessEqual(slow_conn.backlog_peak, SEND_BUFFER + CONTENT + 256)
        self.assertGreater(slow_conn.backlog_peak, SEND_BUFFER)

        # The member who reads got every message, in order, and is still connected.
        yield fast.sync()
        self.assertEqual(
            [m.content[:5].decode() for m in fast.received], [f"{i:05d}" for i in range(sent)]
        )
        self.assertIsNotNone(fast.proto)
        seq = yield sender.send_text(fast_id, "after the flood")
        self.assertEqual(seq, sent + 1)


class MessageRateLimit(NodeTestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.node = Node(msg_rate=0.001, msg_burst=5)
        yield self.node.start()
        self.addCleanup(self.node.stop)
        self._clients = []

    @defer.inlineCallbacks
    def test_frames_past_the_burst_get_1013_then_the_connection_is_closed(self):
        from gochat.logic.session import RATE_STRIKES

        user_id, token = yield self.node.user("chatty")
        other, _ = yield self.node.user("other")
        proto = yield open_raw(self.node.ws_url)
        self.addCleanup(proto.abort)
        code, _ = yield proto.login(token)  # frame 1 of the burst
        self.assertEqual(code, codes.OK)
        for _ in range(4):
            proto.send_input(pb.CT_Sync, pb.SyncInputMsg(seq=0).SerializeToString())
            out = yield proto.next_data_frame()
            self.assertEqual((out.type, out.code), (pb.CT_Sync, codes.OK))
        # Over the rate: each reply keeps its shape, the message's clientId is not used up.
        up = pb.UpMsg(msg=pb.Message(session_type=pb.ST_Single, receiver_id=other), clientId=1)
        proto.send_input(pb.CT_Message, up.SerializeToString())
        out = yield proto.next_data_frame()
        ack = pb.ACKMsg.FromString(out.data)
        self.assertEqual((out.type, out.code, ack.type, ack.clientId), (pb.CT_ACK, 1013, 1, 1))
        proto.send_input(pb.CT_Sync, b"")
        out = yield proto.next_data_frame()
        self.assertEqual((out.type, out.code), (pb.CT_Sync, codes.RATE_LIMITED))
        # Persisting: after RATE_STRIKES refusals in a row the node closes the connection.
        for _ in range(RATE_STRIKES):
            proto.send_input(pb.CT_Heartbeat)
        code = yield proto.closing_code()
        self.assertEqual(code, 1000)
        # Nothing of the refused message was stored.
        seq = yield self.node.service.store.latest_seq(user_id)
        self.assertEqual(seq, 0)

    @defer.inlineCallbacks
    def test_the_client_library_retries_a_rate_limited_message(self):
        node = Node(msg_rate=20, msg_burst=3)
        yield node.start()
        self.addCleanup(node.stop)
        alice, alice_token = yield node.user("alice")
        bob, _ = yield node.user("bob")
        from gochat.client import connect

        client = yield connect(node.ws_url, alice_token, retransmit_timeout=0.2)
        self.addCleanup(client.close)
        seqs = yield defer.gatherResults([client.send_text(bob, f"m{i}") for i in range(10)])
        self.assertEqual(sorted(seqs), list(range(1, 11)))
