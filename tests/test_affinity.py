"""Group affinity: a group's messages are written by its home node (gochat.logic.affinity)."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer, task
from twisted.trial import unittest

from gochat import codec, metrics
from gochat.logic.affinity import (
    FORWARD_HOLD,
    Forwarder,
    home_of,
    pack_forwards,
    unpack_forwards,
)
from tests import services
from tests.test_cluster_nodes import ClusterTestCase


def served(method: str) -> float:
    return metrics.RPC_SERVED.labels(method)._value.get()


class HomeOf(unittest.TestCase):
    def test_every_node_picks_the_same_home_whatever_the_order(self):
        nodes = ["a1", "b2", "c3"]
        for gid in range(1, 200):
            self.assertEqual(home_of(gid, nodes), home_of(gid, list(reversed(nodes))))

    def test_groups_spread_over_the_nodes(self):
        nodes = ["a1", "b2", "c3"]
        counts = {n: 0 for n in nodes}
        for gid in range(1, 3001):
            counts[home_of(gid, nodes)] += 1
        for count in counts.values():
            self.assertTrue(800 < count < 1200, counts)

    def test_a_node_that_joins_takes_groups_only_for_itself(self):
        before = ["a1", "b2", "c3"]
        after = [*before, "d4"]
        moved = [g for g in range(1, 3001) if home_of(g, before) != home_of(g, after)]
        self.assertTrue(all(home_of(g, after) == "d4" for g in moved))
        self.assertTrue(500 < len(moved) < 1000, len(moved))


ids = st.integers(1, 2**63 - 1)
forwards = st.lists(
    st.tuples(ids, st.one_of(st.none(), st.text(min_size=1, max_size=128)), ids, st.binary(), ids),
    max_size=20,
)


class Packing(unittest.TestCase):
    @given(forwards)
    def test_forwarded_messages_come_back_as_they_were_packed(self, entries):
        self.assertEqual(unpack_forwards(pack_forwards(entries)), entries)

    @given(forwards.filter(bool), st.data())
    def test_a_cut_or_padded_packing_is_refused(self, entries, data):
        packed = pack_forwards(entries)
        cut = data.draw(st.integers(1, len(packed)))
        try:
            got = unpack_forwards(packed[:-cut])
        except ValueError:
            return
        # cut between whole messages: the ones before it, nothing invented
        self.assertEqual(got, entries[: len(got)])
        self.assertLess(len(got), len(entries))


class _Device:
    tag = 7


class _Calls:
    """The PB pool's WriteMessages, as calls the test answers."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[int], defer.Deferred[bytes]]] = []

    def write_messages(self, node_id: str, packed: bytes) -> defer.Deferred[bytes]:
        d: defer.Deferred[bytes] = defer.Deferred()
        self.calls.append((node_id, [e[2] for e in unpack_forwards(packed)], d))
        return d


class Batching(unittest.TestCase):
    """How forwards are grouped into calls, on a clock."""

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.pool = _Calls()
        self.answers: list[tuple[int, int, int]] = []
        presence = type("Presence", (), {"nodes": ("a", "b"), "nodes_version": 1})()
        self.forwarder = Forwarder(
            "a",
            presence,
            self.pool,
            self.clock,
            answer=lambda f, code, seq: self.answers.append((f[0].client_id, code, seq)),
            lost=lambda forwards: None,
        )

    def send(self, client_id: int) -> None:
        item = _group_item(1)
        item.client_id = client_id
        self.forwarder.forward("b", (item, _Device(), 10, 0.0))

    def test_forwards_of_one_turn_go_at_its_end_in_one_call(self):
        self.send(1)
        self.send(2)
        self.assertEqual(self.pool.calls, [])
        self.clock.advance(0)
        self.assertEqual([c[1] for c in self.pool.calls], [[1, 2]])

    def test_while_a_call_is_unanswered_the_next_forwards_wait_for_company(self):
        self.send(1)
        self.clock.advance(0)
        self.send(2)
        self.clock.advance(0)
        self.assertEqual(len(self.pool.calls), 1)  # held: a call to b is unanswered
        self.clock.advance(FORWARD_HOLD / 2)
        self.send(3)
        self.clock.advance(FORWARD_HOLD / 2)
        self.assertEqual([c[1] for c in self.pool.calls], [[1], [2, 3]])
        # once every call is answered, a forward goes at the end of its turn again
        for _, ids, d in self.pool.calls:
            d.callback(codec.pack_pairs([v for cid in ids for v in (200, cid)]))
        self.assertEqual(self.answers, [(1, 200, 1), (2, 200, 2), (3, 200, 3)])
        self.send(4)
        self.clock.advance(0)
        self.assertEqual([c[1] for c in self.pool.calls], [[1], [2, 3], [4]])

    def test_a_failed_call_counts_as_answered(self):
        self.send(1)
        self.clock.advance(0)
        self.pool.calls[0][2].errback(RuntimeError("connection lost"))
        self.send(2)
        self.clock.advance(0)
        self.assertEqual([c[1] for c in self.pool.calls], [[1], [2]])


class AffinityTestCase(ClusterTestCase):
    @defer.inlineCallbacks
    def setUp(self) -> Any:
        yield super().setUp()
        ids = sorted(n.service.presence.node_id for n in self.nodes)
        yield services.poll_until(
            lambda: all(list(n.service.presence.nodes) == ids for n in self.nodes),
            20,
            what="every node seeing every node",
        )

    def home(self, gid: int) -> Any:
        home_id = home_of(gid, self.nodes[0].service.presence.nodes)
        return next(n for n in self.nodes if n.service.presence.node_id == home_id)

    @defer.inlineCallbacks
    def sender_and_reader(self) -> Any:
        """Alice sends from n1 (device "laptop") to a group homed on n2; Bob reads on n1.

        Fires with (Bob's id, the group id, Alice's client, Bob's client).
        """
        n1, n2 = self.nodes
        _, alice_token = yield n1.user("alice")
        bob, bob_token = yield n1.user("bob")
        gid = yield self.group_homed_on(n2, alice_token, [bob])
        sender = yield self.client(n1, alice_token, device_id="laptop")
        c_bob = yield self.client(n1, bob_token)
        return bob, gid, sender, c_bob

    @defer.inlineCallbacks
    def group_homed_on(self, home: Any, owner_token: str, members: list[int]) -> Any:
        """A group whose home is ``home`` (groups are created until one is)."""
        for attempt in range(40):
            group = yield self.nodes[0].api().create_group(owner_token, f"g{attempt}", members)
            gid = int(group["id"])
            if self.home(gid) is home:
                return gid
        self.fail("no group homed on the wanted node in 40")


class ForwardedToTheHome(AffinityTestCase):
    @defer.inlineCallbacks
    def test_a_message_sent_on_another_node_is_written_by_the_home_and_pushed_once(self):
        n1, n2 = self.nodes
        alice, alice_token = yield n1.user("alice")
        near, near_token = yield n1.user("near")
        far, far_token = yield n2.user("far")
        gid = yield self.group_homed_on(n2, alice_token, [near, far])
        laptop = yield self.client(n1, alice_token, device_id="laptop")
        phone = yield self.client(n1, alice_token, device_id="phone")
        c_near = yield self.client(n1, near_token)
        c_far = yield self.client(n2, far_token)
        before = served("WriteMessages")
        ok_before = metrics.UPSTREAM.labels("200")._value.get()
        seqs = []
        for i in range(3):
            seq = yield laptop.send_text(gid, f"hi {i}", group=True)
            seqs.append(seq)
        self.assertEqual(seqs, [1, 2, 3])
        self.assertEqual(served("WriteMessages") - before, 3)  # one call per message here
        # counted once, by the node that sent the ACKs
        self.assertEqual(metrics.UPSTREAM.labels("200")._value.get() - ok_before, 3)
        for c in (phone, c_near, c_far):
            yield services.poll_until(lambda c=c: c.seq >= 3, 20, what="3 group messages")
            self.assertEqual([m.content for m in c.received], [b"hi 0", b"hi 1", b"hi 2"])
        self.assertEqual(laptop.received, [])  # its own messages are not pushed back to it

    @defer.inlineCallbacks
    def test_a_device_keeps_its_order_across_writers(self):
        """A one-to-one message (written here) after group messages (written at the home)."""
        bob, gid, sender, c_bob = yield self.sender_and_reader()
        sent = [
            sender.send_text(gid, "g1", group=True),
            sender.send_text(gid, "g2", group=True),
            sender.send_text(bob, "s3"),
            sender.send_text(gid, "g4", group=True),
        ]
        seqs = yield defer.gatherResults(sent)
        self.assertEqual(seqs, [1, 2, 3, 4])
        yield services.poll_until(lambda: c_bob.seq >= 4, 20, what="4 messages")
        self.assertEqual([m.content for m in c_bob.received], [b"g1", b"g2", b"s3", b"g4"])


class HomeUnreachable(AffinityTestCase):
    @defer.inlineCallbacks
    def test_messages_for_a_home_that_cannot_be_reached_are_written_here(self):
        n1, n2 = self.nodes
        bob, gid, sender, c_bob = yield self.sender_and_reader()
        # n2's RPC port stops answering: n1's call to it fails
        yield n2.service.getServiceNamed("rpc").stopService()
        n1.service.peers.close()
        forwarder = n1.service.hub.forwarder
        seqs = yield defer.gatherResults(
            [sender.send_text(gid, f"m{i}", group=True) for i in range(3)]
        )
        self.assertEqual(seqs, [1, 2, 3])
        yield services.poll_until(lambda: c_bob.seq >= 3, 20, what="3 messages")
        self.assertEqual([m.content for m in c_bob.received], [b"m0", b"m1", b"m2"])
        # n2 is avoided for a while: the next message does not try it again
        self.assertIsNone(forwarder.route(_group_item(gid)))


def _group_item(gid: int) -> Any:
    from gochat.pb import pb
    from gochat.store import UpItem

    msg = pb.Message(sender_id=1, session_type=pb.ST_Group, receiver_id=gid, content=b"x")
    return UpItem(user_id=1, device_id="d", client_id=1, message=msg)
