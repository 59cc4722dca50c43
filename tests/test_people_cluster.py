"""Issue 11 in a cluster: two nodes in this process sharing a database and
Redis. Notices cross nodes over ``DeliverNotice``; a membership change made
on one node is seen by the other's writer at once, even before its cache
invalidation arrives."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from gochat.pb import pb
from tests import services
from tests.people_util import PeopleCase
from tests.test_receipts import settle
from tests.util import Node


class TwoNodes(PeopleCase):
    timeout = 90
    database = "postgresql"

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        config = services.cluster_config(self, database=self.database)
        self._clients = []
        self.nodes = []
        for _ in range(2):
            node = Node(**config)
            yield node.start()
            self.addCleanup(node.stop)
            self.nodes.append(node)
        self.node = self.nodes[0]

    @defer.inlineCallbacks
    def ws_on(self, node: Node, token: str, **kwargs: Any) -> Any:
        self.node = node
        try:
            proto = yield self.ws(token, **kwargs)
        finally:
            self.node = self.nodes[0]
        return proto

    @defer.inlineCallbacks
    def next_of(self, proto: Any, cmd: int) -> Any:
        while True:
            out = yield proto.next_output(timeout=20)
            if out.type == cmd:
                return out

    @defer.inlineCallbacks
    def test_typing_and_read_notices_cross_nodes(self):
        n1, n2 = self.nodes
        (a, ta), (b, tb) = yield self.users("alice", "bob")
        alice = yield self.ws_on(n1, ta, notices=True)
        bob = yield self.ws_on(n2, tb, notices=True, device_id="phone")
        bob_laptop = yield self.ws_on(n1, tb, notices=True, device_id="laptop")
        alice.send_input(pb.CT_Typing, pb.TypingMsg(session_type=pb.ST_Single, peer_id=b))
        out = yield self.next_of(bob, pb.CT_Typing)
        self.assertEqual(
            pb.TypingMsg.FromString(out.data),
            pb.TypingMsg(session_type=pb.ST_Single, peer_id=a, sender_id=a),
        )
        yield self.send(alice, 1, b, "hello")
        bob.send_input(pb.CT_Read, pb.ReadMsg(session_type=pb.ST_Single, peer_id=a, seq=1))
        seen = yield self.next_of(alice, pb.CT_Read)
        self.assertEqual(
            pb.ReadMsg.FromString(seen.data),
            pb.ReadMsg(session_type=pb.ST_Single, peer_id=b, seq=1, reader_id=b),
        )
        own = yield self.next_of(bob_laptop, pb.CT_Read)
        self.assertEqual(
            pb.ReadMsg.FromString(own.data),
            pb.ReadMsg(session_type=pb.ST_Single, peer_id=a, seq=1, reader_id=b),
        )

    @defer.inlineCallbacks
    def test_a_removal_on_one_node_holds_at_once_on_the_other(self):
        n1, n2 = self.nodes
        (a, ta), (s, ts), (c, tc) = yield self.users("owner", "sender", "carol")
        gid = yield self.group(ta, "g", [s, c])
        sender = yield self.ws_on(n2, ts)
        yield self.send(sender, 1, gid, "cached now", group=True)  # n2 caches the members
        # No invalidation reaches n2: only the version read in its transaction can help.
        n2.service.presence.on_group_changed = None
        yield self.ok(
            "POST", "/group/members/remove", ta, [("group_id", str(gid)), ("ids", str(c))]
        )
        yield self.send(sender, 2, gid, "after the removal", group=True)
        carol = [m.content for m in (yield self.synced(tc)) if m.message_type == pb.MT_Text]
        self.assertEqual(carol, [b"cached now"])
        yield settle(sender)


class TwoNodesMariaDB(TwoNodes):
    database = "mysql"
