"""The ACK of a message forwarded to its group's home waits for the pushes.

The home answers a forwarded message a moment before its pushes of the same
batch reach the sending node (they follow a presence lookup): on its own
the ACK cost the sender's connection a write and a system call of its own.
It now goes out just before the connection's next output, or after
``ACK_WAIT``, whichever comes first.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from gochat import codec, codes, metrics
from gochat.logic import hub as hub_module
from gochat.logic.affinity import home_of, unpack_forwards
from gochat.pb import pb
from gochat.presence.local import LocalPresence

from .logic_util import LogicTestCase, up_frame

NODES = ("here", "home")


class _Presence(LocalPresence):
    """Two live nodes; everyone this test knows of is on this one."""

    nodes = NODES
    nodes_version = 1

    def __init__(self) -> None:
        super().__init__("here")


class _Home:
    """The other node: keeps each WriteMessages call for the test to answer."""

    def __init__(self) -> None:
        self.calls: list[tuple[bytes, defer.Deferred]] = []

    def write_messages(self, node_id: str, packed: bytes) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self.calls.append((packed, d))
        return d

    def __getattr__(self, name: str) -> Any:
        return lambda *args: defer.succeed(0)


def _group_homed_there() -> int:
    return next(gid for gid in range(1, 100) if home_of(gid, NODES) == "home")


def _kinds(conn: Any) -> list[str]:
    kinds = []
    for out in conn.unread():
        if out.type == pb.CT_ACK and pb.ACKMsg.FromString(out.data).type == pb.AT_Up:
            kinds.append(f"ack {pb.ACKMsg.FromString(out.data).clientId}/{out.code}")
        elif out.type == pb.CT_Message:
            kinds.append(f"push {pb.PushMsg.FromString(out.data).msg.seq}")
    return kinds


class ForwardedAck(LogicTestCase):
    @defer.inlineCallbacks
    def setUp(self) -> Any:
        yield super().setUp()
        self.home = _Home()
        self.hub = hub_module.Hub(
            self.store, self.signer, self.clock, presence=_Presence(), remote=self.home
        )
        self.hub.writer.clock = None
        self.addCleanup(self.hub.pushes.stop)
        self.alice, _ = yield self.user("alice")
        self.bob, _ = yield self.user("bob")
        self.conn = yield self.logged_in(self.alice, "laptop")
        self.gid = _group_homed_there()

    def forward(self, client_id: int) -> defer.Deferred:
        """Alice sends to the group; fires with the home's call, once forwarded."""
        assert self.conn.session is not None
        self.conn.session.frame_received(up_frame(client_id, self.gid, "hi", group=True))
        self.clock.advance(0)  # the turn's forwards go at its end
        packed, d = self.home.calls[-1]
        self.assertEqual([e[2] for e in unpack_forwards(packed)], [client_id])
        return d

    def run_from_home(self, seqs: list[int], skip: list[int]) -> None:
        """The home's pushes of one batch: Bob's messages and Alice's own (at ``skip``)."""
        assert self.conn.session is not None and self.conn.session.device is not None
        tag = self.conn.session.device.tag
        bases = [
            codec.message_base(
                pb.Message(session_type=pb.ST_Group, receiver_id=self.gid, sender_id=sender)
            )
            for sender in [self.alice if i in skip else self.bob for i in range(len(seqs))]
        ]
        skipped = codec.pack_pairs([x for i in skip for x in (i, tag)])
        self.hub.deliver_push_runs_from_peer(
            [(bases, codec.pack_pairs([self.alice, seqs[0]]), skipped)]
        )

    def test_the_ack_waits_for_the_pushes_and_goes_just_before_them(self):
        self.forward(1).callback(codec.pack_pairs([codes.OK, 2]))
        self.assertEqual(_kinds(self.conn), [])
        self.run_from_home([1, 2, 3], skip=[1])
        self.assertEqual(_kinds(self.conn), ["ack 1/200", "push 1", "push 3"])
        self.assertEqual(pb.ACKMsg.FromString(self.conn.unread()[0].data).seq, 2)

    def test_without_pushes_the_ack_goes_after_ack_wait(self):
        self.forward(1).callback(codec.pack_pairs([codes.OK, 1]))
        self.clock.advance(hub_module.ACK_WAIT * 0.9)
        self.assertEqual(_kinds(self.conn), [])
        self.clock.advance(hub_module.ACK_WAIT * 0.1)
        self.assertEqual(_kinds(self.conn), ["ack 1/200"])
        self.clock.advance(hub_module.ACK_WAIT)
        self.assertEqual(_kinds(self.conn), ["ack 1/200"])  # once

    def test_a_single_pushed_message_also_lets_it_go(self):
        """A batch of one message comes as DeliverPushes, which skips the sender's device."""
        self.forward(1).callback(codec.pack_pairs([codes.OK, 1]))
        assert self.conn.session is not None and self.conn.session.device is not None
        base = codec.message_base(pb.Message(session_type=pb.ST_Group, receiver_id=self.gid))
        skip = codec.pack_pairs([0, self.conn.session.device.tag])
        self.hub.deliver_pushes_from_peer([(base, codec.pack_pairs([self.alice, 1]), skip)])
        self.assertEqual(_kinds(self.conn), ["ack 1/200"])

    def test_any_other_output_goes_after_the_waiting_acks(self):
        self.forward(1).callback(codec.pack_pairs([codes.OK, 1]))
        self.forward(2).callback(codec.pack_pairs([codes.OK, 2]))
        assert self.conn.session is not None
        self.conn.session.send(codec.error_frame(codes.PARAM_ILLEGAL))
        self.assertEqual(_kinds(self.conn)[:2], ["ack 1/200", "ack 2/200"])
        self.assertEqual(self.conn.unread()[2].code, codes.PARAM_ILLEGAL)

    def test_a_refusal_is_not_held(self):
        self.forward(1).callback(codec.pack_pairs([codes.UNAUTHORIZED, 0]))
        self.assertEqual(_kinds(self.conn), [f"ack 1/{codes.UNAUTHORIZED}"])

    def test_closing_sends_the_waiting_acks_first(self):
        self.forward(1).callback(codec.pack_pairs([codes.OK, 1]))
        assert self.conn.session is not None
        self.conn.session.close("bye")
        self.assertEqual(_kinds(self.conn), ["ack 1/200"])
        self.assertEqual(self.conn.closed, "bye")

    def test_its_latency_is_counted_when_it_goes(self):
        before = _ack_latency_sum()
        self.forward(1).callback(codec.pack_pairs([codes.OK, 1]))
        self.assertEqual(_ack_latency_sum(), before)
        self.clock.advance(hub_module.ACK_WAIT)
        self.assertAlmostEqual(_ack_latency_sum() - before, hub_module.ACK_WAIT)


def _ack_latency_sum() -> float:
    for family in metrics.ACK_LATENCY.collect():
        for sample in family.samples:
            if sample.name.endswith("_sum"):
                return sample.value
    raise AssertionError("no ACK latency sum")
