"""Two and three cluster nodes in this process: shared PostgreSQL, Redis presence, PB.

Fast checks of the cluster paths; tests/test_cluster_processes.py repeats the
important ones with real separate processes.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor
from twisted.trial import unittest

from gochat import codes
from gochat.client import SendError
from gochat.pb import pb
from tests import services
from tests.util import Node, open_client


class ClusterTestCase(unittest.TestCase):
    timeout = 90
    nodes_count = 2
    database = "postgresql"

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        config = services.cluster_config(self, database=self.database)
        self.nodes = []
        for _ in range(self.nodes_count):
            node = Node(**config)
            yield node.start()
            self.addCleanup(node.stop)
            self.nodes.append(node)

    def client(self, node: Node, token: str, **kwargs: Any) -> defer.Deferred:
        return open_client(self, node, token, **kwargs)

    def wait_messages(self, client: Any, n: int, timeout: float = 20) -> defer.Deferred:
        return services.poll_until(lambda: len(client.received) >= n, timeout, what=f"{n} messages")


class CrossNodeChat(ClusterTestCase):
    @defer.inlineCallbacks
    def test_single_chat_between_users_on_two_nodes(self):
        n1, n2 = self.nodes
        alice, alice_token = yield n1.user("alice")
        bob, bob_token = yield n2.user("bob")
        a = yield self.client(n1, alice_token)
        b = yield self.client(n2, bob_token)
        seq = yield a.send_text(bob, "hello across")
        yield self.wait_messages(b, 1)
        msg = b.received[0]
        self.assertEqual(
            (seq, msg.sender_id, msg.receiver_id, msg.content, msg.seq),
            (1, alice, bob, b"hello across", 1),
        )

    @defer.inlineCallbacks
    def test_pushes_reach_the_senders_other_device_on_another_node(self):
        n1, n2 = self.nodes
        alice, token = yield n1.user("alice")
        bob, _ = yield n1.user("bob")
        laptop = yield self.client(n1, token, device_id="laptop")
        phone = yield self.client(n2, token, device_id="phone")
        yield laptop.send_text(bob, "from laptop")
        yield services.poll_until(lambda: phone.seq >= 1, 20, what="phone caught up")
        self.assertEqual(phone.seq, 1)

    @defer.inlineCallbacks
    def test_group_spread_over_nodes_gets_every_push_once(self):
        n1, n2 = self.nodes
        users = []
        for i in range(6):
            node = self.nodes[i % 2]
            uid, token = yield node.user(f"m{i}")
            users.append((uid, token, node))
        owner_token = users[0][1]
        group = yield n1.api().create_group(owner_token, "g", [u for u, _, _ in users[1:]])
        gid = int(group["id"])
        clients = []
        for _uid, token, node in users:
            c = yield self.client(node, token)
            clients.append(c)
        for i, c in enumerate(clients[:3]):
            yield c.send_text(gid, f"hi {i}", group=True)
        for c in clients:
            yield services.poll_until(lambda c=c: c.seq >= 3, 20, what="3 group messages")
        for c in clients[3:]:
            self.assertEqual([m.content for m in c.received], [b"hi 0", b"hi 1", b"hi 2"])


class Health(ClusterTestCase):
    nodes_count = 1

    @defer.inlineCallbacks
    def test_healthz_of_a_cluster_node_checks_redis(self):
        from gochat.api.health import HealthResource

        service = self.nodes[0].service
        health = HealthResource(service.database, service.hub.presence, reactor)
        healthy, parts = yield health.check()
        self.assertEqual((healthy, parts), (True, {"database": "ok", "redis": "ok"}))


class OneCallPerNode(ClusterTestCase):
    @defer.inlineCallbacks
    def test_a_group_message_costs_one_pb_call_per_node_not_per_recipient(self):
        from gochat import metrics

        n1, n2 = self.nodes
        sender, token = yield n1.user("sender")
        far = []
        for i in range(5):
            uid, far_token = yield n2.user(f"far{i}")
            far.append((uid, far_token))
        group = yield n1.api().create_group(token, "g", [u for u, _ in far])
        s = yield self.client(n1, token)
        clients = []
        for _uid, far_token in far:
            c = yield self.client(n2, far_token)
            clients.append(c)

        def calls() -> float:
            return sum(
                metrics.RPC_CALLS.labels(m)._value.get()
                for m in ("DeliverMessage", "DeliverMessageAll", "DeliverPushes")
            )

        before = calls()
        yield s.send_text(int(group["id"]), "one call", group=True)
        for c in clients:
            yield self.wait_messages(c, 1)
        self.assertEqual(calls() - before, 1)


class SameDevice(ClusterTestCase):
    @defer.inlineCallbacks
    def test_a_device_logging_in_on_another_node_closes_its_old_connection(self):
        n1, n2 = self.nodes
        _alice, token = yield n1.user("alice")
        old = yield self.client(n1, token, device_id="phone")
        closed = old.disconnected
        new = yield self.client(n2, token, device_id="phone")
        code, _reason = yield closed.addTimeout(10, reactor)
        self.assertIsNone(old.proto)
        self.assertTrue(new.logged_in)

    @defer.inlineCallbacks
    def test_a_late_kick_does_not_close_a_newer_login(self):
        """phone logs in on n1, then n2, then n1 again; n2's kick reaches n1 late."""
        from gochat.rpc import PeerPool

        n1, n2 = self.nodes
        alice, token = yield n1.user("alice")
        first = yield self.client(n1, token, device_id="phone")
        second = yield self.client(n2, token, device_id="phone")
        yield first.disconnected.addTimeout(10, reactor)
        third = yield self.client(n1, token, device_id="phone")
        yield second.disconnected.addTimeout(10, reactor)
        # What n2 sent when `second` logged in, arriving only now:
        pool = PeerPool("n2-late", services.CLUSTER_SECRET, n2.service.presence.address_of)
        self.addCleanup(pool.close)
        closed = yield pool.call(n1.service.presence.node_id, "KickDevice", alice, "phone")
        self.assertFalse(closed)
        self.assertTrue(third.logged_in)
        self.assertIsNotNone(third.proto)


class GroupMembership(ClusterTestCase):
    @defer.inlineCallbacks
    def test_member_removed_on_one_node_is_refused_on_another(self):
        n1, n2 = self.nodes
        alice, alice_token = yield n1.user("alice")
        bob, bob_token = yield n1.user("bob")
        group = yield n1.api().create_group(alice_token, "g", [bob])
        gid = int(group["id"])
        b = yield self.client(n1, bob_token)
        yield b.send_text(gid, "cached now", group=True)  # n1 caches the members

        yield n2.service.store.remove_group_members(gid, [bob])

        def refused() -> Any:
            d = b.send_text(gid, "still a member?", group=True)
            return d.addCallbacks(lambda _: False, lambda f: f.trap(SendError) and f.value.code)

        code = yield services.poll_until(refused, 10, what="invalidation on node 1")
        self.assertEqual(code, codes.UNAUTHORIZED)


class MySQLCluster(ClusterTestCase):
    database = "mysql"

    @defer.inlineCallbacks
    def test_single_chat_between_users_on_two_nodes(self):
        n1, n2 = self.nodes
        alice, alice_token = yield n1.user("alice")
        bob, bob_token = yield n2.user("bob")
        a = yield self.client(n1, alice_token)
        b = yield self.client(n2, bob_token)
        yield a.send_text(bob, "over MariaDB")
        yield self.wait_messages(b, 1)
        self.assertEqual(
            (b.received[0].content, b.received[0].session_type), (b"over MariaDB", pb.ST_Single)
        )
