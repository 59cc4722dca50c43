"""``--output-batch``: GoChat c58f9fc's framing, every server frame an ``OutputBatch``.

The client here is written from that GoChat's facts only: it decodes every
frame as an ``OutputBatch`` and each element as an ``Output`` (so a plain
``Output`` reads as an empty batch, as it does for GoChat's own client),
logs in with ``LoginMsg{token}`` and no device_id, and numbers its messages.
"""

from __future__ import annotations

import os

from twisted.internet import defer
from twisted.trial import unittest

from gochat import codec, codes
from gochat.config import Options
from gochat.gateway import protocol as gateway
from gochat.pb import pb
from tests import test_web as web_tests
from tests.util import NodeTestCase, raw_connect, text


def gochat_outputs(payload: bytes) -> list[pb.Output]:
    """What GoChat c58f9fc's client makes of one frame."""
    batch = pb.OutputBatch.FromString(payload)
    return [pb.Output.FromString(raw) for raw in batch.outputs]


class GoChatBatchClient:
    """A bare WebSocket client speaking GoChat c58f9fc's framing."""

    def __init__(self, proto) -> None:
        self.proto = proto
        self.frames = 0
        self.pending: list[pb.Output] = []
        self.next_client_id = 1

    @defer.inlineCallbacks
    def output(self, timeout: float = 10.0):
        while not self.pending:
            payload, is_binary = yield self.proto.next_frame(timeout)
            assert is_binary
            self.frames += 1
            self.pending.extend(gochat_outputs(payload))
        return self.pending.pop(0)

    @defer.inlineCallbacks
    def outputs(self, count: int):
        out = []
        for _ in range(count):
            out.append((yield self.output()))
        return out

    @defer.inlineCallbacks
    def login(self, token: str):
        self.proto.send_input(pb.CT_Login, pb.LoginMsg(token=token.encode()))
        out = yield self.output()
        return out.code, pb.ACKMsg.FromString(out.data)

    def send(self, msg: pb.Message) -> int:
        client_id = self.next_client_id
        self.next_client_id += 1
        self.proto.up(client_id, msg)
        return client_id


class Codec(unittest.TestCase):
    def test_split_outputs_reads_a_batch_and_a_plain_output(self):
        frames = [codec.ack_frame(pb.AT_Login, seq=3), codec.error_frame(codes.NOT_LOGGED_IN)]
        (batch,) = codec.batch_payloads(frames, 50, 65536)
        self.assertEqual(codec.split_outputs(batch), frames)
        self.assertEqual(pb.OutputBatch.FromString(batch).outputs, frames)
        for frame in frames:
            self.assertEqual(codec.split_outputs(frame), [frame])

    def test_no_output_the_node_writes_begins_with_the_batch_tag(self):
        message = pb.Message(session_type=pb.ST_Group, receiver_id=7, sender_id=2, content=b"x")
        frames = [
            codec.ack_frame(pb.AT_Up, client_id=1, seq=2),
            codec.ack_frame(pb.AT_Up, codes.OUT_OF_ORDER, client_id=9),
            codec.push_frame_from_base(codec.message_base(message), 5),
            codec.sync_frame([message], True),
            codec.sync_frame([], False),
            codec.error_frame(codes.PARAM_ILLEGAL),
            codec.encode_output(pb.CT_Read, data=b"\x08\x01"),
        ]
        for frame in frames:
            self.assertNotEqual(frame[:1], b"\x0a", frame)

    def test_batches_are_capped_by_count_and_bytes_and_keep_order(self):
        frames = [bytes([0x08, 3, 0x10, 1]) + bytes(i) for i in range(20)]
        batches = codec.batch_payloads(frames, 3, 65536)
        self.assertEqual([len(codec.split_outputs(b)) for b in batches], [3] * 6 + [2])
        self.assertEqual([f for b in batches for f in codec.split_outputs(b)], frames)
        big = [b"\x08\x03" + bytes(1000)] * 10
        batches = codec.batch_payloads(big, 100, 2500)
        self.assertTrue(all(len(b) <= 2500 for b in batches))
        self.assertEqual(sum(len(codec.split_outputs(b)) for b in batches), 10)
        # One output bigger than the cap still goes, alone.
        (alone,) = codec.batch_payloads([bytes(5000)], 100, 2500)
        self.assertEqual(codec.split_outputs(alone), [bytes(5000)])

    def test_a_broken_batch_raises_decode_error(self):
        self.assertRaises(codec.DecodeError, codec.split_outputs, b"\x0a\x05ab")


class Configuration(unittest.TestCase):
    def setUp(self):
        saved = os.environ.pop("GOCHAT_OUTPUT_BATCH", None)
        self.addCleanup(os.environ.pop, "GOCHAT_OUTPUT_BATCH", None)
        if saved is not None:
            self.addCleanup(os.environ.__setitem__, "GOCHAT_OUTPUT_BATCH", saved)

    def parse(self, argv):
        options = Options()
        options.parseOptions(argv)
        return options.config

    def test_off_by_default_on_with_the_flag_or_its_variable(self):
        self.assertFalse(self.parse([]).output_batch)
        self.assertTrue(self.parse(["--output-batch"]).output_batch)
        os.environ["GOCHAT_OUTPUT_BATCH"] = "1"
        self.assertTrue(self.parse([]).output_batch)
        os.environ["GOCHAT_OUTPUT_BATCH"] = "off"
        self.assertFalse(self.parse([]).output_batch)

    def test_a_bad_variable_value_is_one_clear_error(self):
        os.environ["GOCHAT_OUTPUT_BATCH"] = "sometimes"
        self.assertRaises(SystemExit, self.parse, [])


class BatchedNode(NodeTestCase):
    node_options = {"output_batch": True}

    @defer.inlineCallbacks
    def gochat_client(self, token: str, url: str | None = None):
        proto = yield raw_connect(url or self.node.ws_url)
        self.addCleanup(self._drop, proto)
        client = GoChatBatchClient(proto)
        code, ack = yield client.login(token)
        self.assertEqual((code, ack.type), (200, pb.AT_Login))
        return client

    @defer.inlineCallbacks
    def test_a_gochat_c58f9fc_client_chats_one_to_one_in_a_group_and_syncs(self):
        alice, alice_token = yield self.node.user("alice")
        bob, bob_token = yield self.node.user("bob")
        carol, carol_token = yield self.node.user("carol")
        group = yield self.node.api().create_group(alice_token, "g", [bob, carol])
        gid = int(group["id"])
        a = yield self.gochat_client(alice_token)
        # Bob on the HTTP port's /ws, the browsers' way in.
        b = yield self.gochat_client(bob_token, self.node.http_url.replace("http", "ws") + "/ws")

        cid = a.send(text(bob, "hi bob"))
        ack = yield a.output()
        self.assertEqual((ack.type, ack.code), (pb.CT_ACK, 200))
        self.assertEqual(pb.ACKMsg.FromString(ack.data).clientId, cid)
        push = yield b.output()
        msg = pb.PushMsg.FromString(push.data).msg
        self.assertEqual((push.type, msg.sender_id, msg.content, msg.seq), (3, alice, b"hi bob", 1))

        b.send(text(gid, "hi all", group=True))
        ack = yield b.output()
        self.assertEqual((ack.type, ack.code, pb.ACKMsg.FromString(ack.data).seq), (4, 200, 2))
        push = yield a.output()
        msg = pb.PushMsg.FromString(push.data).msg
        self.assertEqual((msg.session_type, msg.receiver_id, msg.content), (2, gid, b"hi all"))

        # Carol was offline: she syncs the group message, her seq 1.
        c = yield self.gochat_client(carol_token)
        c.proto.send_input(pb.CT_Sync, pb.SyncInputMsg(seq=0))
        out = yield c.output()
        body = pb.SyncOutputMsg.FromString(out.data)
        self.assertEqual((out.type, out.code, body.has_more), (pb.CT_Sync, 200, False))
        self.assertEqual([(m.seq, m.content) for m in body.messages], [(1, b"hi all")])
        # And alice's own list holds both, seqs 1 and 2.
        a.proto.send_input(pb.CT_Sync, pb.SyncInputMsg(seq=0))
        out = yield a.output()
        body = pb.SyncOutputMsg.FromString(out.data)
        self.assertEqual([m.seq for m in body.messages], [1, 2])

    @defer.inlineCallbacks
    def test_the_outputs_of_one_turn_travel_as_one_batch(self):
        alice, alice_token = yield self.node.user("alice")
        bob, bob_token = yield self.node.user("bob")
        a = yield self.gochat_client(alice_token)
        b = yield self.gochat_client(bob_token)
        frames_before = a.frames
        # Ten messages in one TCP write: one commit, ten ACKs in one reactor turn.
        a.proto.send_inputs(
            [(pb.CT_Message, pb.UpMsg(msg=text(bob, f"m{i}"), clientId=i)) for i in range(1, 11)]
        )
        acks = yield a.outputs(10)
        self.assertEqual([pb.ACKMsg.FromString(o.data).clientId for o in acks], list(range(1, 11)))
        self.assertLess(a.frames - frames_before, 10)
        pushes = yield b.outputs(10)
        seqs = [pb.PushMsg.FromString(o.data).msg.seq for o in pushes]
        self.assertEqual(seqs, list(range(1, 11)))

    @defer.inlineCallbacks
    def test_a_fan_out_larger_than_the_cap_is_split_in_capped_batches(self):
        self.patch(gateway, "BATCH_MAX_OUTPUTS", 4)
        alice, alice_token = yield self.node.user("alice")
        bob, bob_token = yield self.node.user("bob")
        a = yield self.gochat_client(alice_token)
        a.proto.send_inputs(
            [(pb.CT_Message, pb.UpMsg(msg=text(bob, f"m{i}"), clientId=i)) for i in range(1, 11)]
        )
        sizes = []
        while sum(sizes) < 10:
            payload, _ = yield a.proto.next_frame()
            sizes.append(len(pb.OutputBatch.FromString(payload).outputs))
        self.assertTrue(all(0 < n <= 4 for n in sizes), sizes)

    @defer.inlineCallbacks
    def test_a_fan_out_larger_than_the_byte_cap_is_split_too(self):
        self.patch(gateway, "BATCH_MAX_BYTES", 120)
        alice, alice_token = yield self.node.user("alice")
        bob, bob_token = yield self.node.user("bob")
        a = yield self.gochat_client(alice_token)
        a.proto.send_inputs(
            [(pb.CT_Message, pb.UpMsg(msg=text(bob, f"m{i}"), clientId=i)) for i in range(1, 31)]
        )
        sizes, count = [], 0
        while count < 30:
            payload, _ = yield a.proto.next_frame()
            sizes.append(len(payload))
            count += len(pb.OutputBatch.FromString(payload).outputs)
        self.assertGreater(len(sizes), 1)
        self.assertTrue(all(n <= 120 for n in sizes), sizes)

    @defer.inlineCallbacks
    def test_the_bundled_client_reads_batched_frames(self):
        alice, alice_token = yield self.node.user("alice")
        bob, bob_token = yield self.node.user("bob")
        a = yield self.client(alice_token)
        b = yield self.client(bob_token)
        seqs = yield defer.gatherResults([a.send_text(bob, f"m{i}") for i in range(5)])
        self.assertEqual(sorted(seqs), [1, 2, 3, 4, 5])
        while len(b.received) < 5:
            yield b.sync()
        self.assertEqual([m.content for m in b.received], [f"m{i}".encode() for i in range(5)])

    @defer.inlineCallbacks
    def test_errors_before_login_come_batched_too(self):
        proto = yield raw_connect(self.node.ws_url)
        self.addCleanup(self._drop, proto)
        proto.send_input(pb.CT_Sync, pb.SyncInputMsg(seq=0))
        payload, _ = yield proto.next_frame()
        (out,) = gochat_outputs(payload)
        self.assertEqual((out.type, out.code), (pb.CT_Sync, codes.NOT_LOGGED_IN))


class PlainNode(NodeTestCase):
    @defer.inlineCallbacks
    def test_without_the_option_frames_stay_plain_outputs(self):
        _, token = yield self.node.user("alice")
        proto = yield self.raw()
        proto.send_input(pb.CT_Login, pb.LoginMsg(token=token.encode()))
        payload, _ = yield proto.next_frame()
        self.assertNotEqual(payload[:1], b"\x0a")
        self.assertEqual(pb.Output.FromString(payload).type, pb.CT_ACK)
        # GoChat c58f9fc's client reads a plain Output as an empty batch.
        self.assertEqual(gochat_outputs(payload), [])


class BatchedBrowserChat(web_tests.BrowserChat):
    """The web page's whole chat scenario against a node writing OutputBatch frames."""

    node_options = {**web_tests.BrowserChat.node_options, "output_batch": True}
