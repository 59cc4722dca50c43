"""A cluster of real ``twistd gochat`` processes on PostgreSQL and Redis.

Every wait is a poll with a deadline on the reactor's clock; nothing sleeps
and hopes. Each test has its own database and Redis key prefix.
"""

from __future__ import annotations

from typing import Any

from twisted.cred import credentials, error
from twisted.internet import defer, endpoints, reactor
from twisted.spread import pb as spread
from twisted.trial import unittest

from gochat import codec
from gochat.pb import pb
from gochat.rpc import PeerPool
from tests import services
from tests.processes import NodeProcess

LEASE = 2.0  # seconds: a killed node's entries must be gone within LEASE * 4/3


def pg_rows(db_url: str, sql: str, args: tuple = ()) -> list[tuple]:
    """A direct look at the shared database (blocking, short)."""
    from urllib.parse import urlparse

    import psycopg

    u = urlparse(db_url)
    conn = psycopg.connect(host=u.hostname, port=u.port, user=u.username, dbname=u.path.lstrip("/"))
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall()
    finally:
        conn.close()


class ProcessCluster(unittest.TestCase):
    timeout = 240
    nodes_count = 3

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.cluster = services.cluster_config(self, lease=LEASE)
        self.nodes = [NodeProcess(f"n{i + 1}", self.cluster) for i in range(self.nodes_count)]
        for node in self.nodes:
            self.addCleanup(node.stop)
        # The first node migrates the schema; the others start together.
        yield self.nodes[0].start()
        yield defer.gatherResults([n.start() for n in self.nodes[1:]], consumeErrors=True)
        self.clients: list[Any] = []

    def tearDown(self) -> Any:
        return defer.gatherResults(
            [c.close() for c in self.clients if c.proto is not None], consumeErrors=True
        )

    @defer.inlineCallbacks
    def user(self, node: NodeProcess, name: str) -> Any:
        data = yield node.api().register(f"{name}-{id(self)}", "password-1", name)
        return int(data["id"]), data["token"]

    @defer.inlineCallbacks
    def client(self, node: NodeProcess, token: str, **kwargs: Any) -> Any:
        c = yield node.connect(token, **kwargs)
        self.clients.append(c)
        return c

    def user_nodes(self, uid: int) -> defer.Deferred:
        """The node ids Redis says hold ``uid``."""
        import socket

        from tests.services import REDIS_HOST, REDIS_PORT, _read_reply

        key = f"{self.cluster['redis_prefix']}user:{uid}"
        with socket.create_connection((REDIS_HOST, REDIS_PORT), timeout=5) as sock:
            sock.sendall(f"*2\r\n$8\r\nSMEMBERS\r\n${len(key)}\r\n{key}\r\n".encode())
            members = _read_reply(sock.makefile("rb"))
        return defer.succeed({m.decode() for m in members})

    def seqs(self, uid: int) -> list[int]:
        rows = pg_rows(
            self.cluster["db"], "SELECT seq FROM messages WHERE user_id = %s ORDER BY seq", (uid,)
        )
        return [r[0] for r in rows]


class CrossNode(ProcessCluster):
    @defer.inlineCallbacks
    def test_single_and_group_chat_across_three_processes(self):
        n1, n2, n3 = self.nodes
        alice, ta = yield self.user(n1, "alice")
        bob, tb = yield self.user(n2, "bob")
        carol, tc = yield self.user(n3, "carol")
        a = yield self.client(n1, ta)
        b = yield self.client(n2, tb)
        c = yield self.client(n3, tc)

        yield a.send_text(bob, "hi bob")
        yield services.poll_until(lambda: len(b.received) == 1, 20, what="single push")
        self.assertEqual((b.received[0].sender_id, b.received[0].content), (alice, b"hi bob"))

        group = yield n2.api().create_group(tb, "trio", [alice, carol])
        gid = int(group["id"])
        yield c.send_text(gid, "hi all", group=True)
        yield services.poll_until(
            lambda: len(a.received) == 1 and len(b.received) == 2, 20, what="group pushes"
        )
        for got in (a.received[-1], b.received[-1]):
            self.assertEqual((got.session_type, got.receiver_id, got.content), (2, gid, b"hi all"))
        self.assertEqual(c.received, [])  # the sending device gets no push of its own message

    @defer.inlineCallbacks
    def test_seqs_stay_contiguous_under_concurrent_senders_on_different_nodes(self):
        members = []
        for i in range(6):
            node = self.nodes[i % 3]
            uid, token = yield self.user(node, f"s{i}")
            members.append((uid, token, node))
        ids = [u for u, _, _ in members]
        group = yield self.nodes[0].api().create_group(members[0][1], "busy", ids[1:])
        gid = int(group["id"])
        clients = []
        for _uid, token, node in members:
            c = yield self.client(node, token, device_id="dev")
            clients.append(c)
        per_sender = 15
        sends = []
        for i, c in enumerate(clients):
            for k in range(per_sender):
                sends.append(c.send_text(gid, f"{i}.{k}", group=True))
                sends.append(c.send_text(ids[(i + 1) % 6], f"single {i}.{k}"))
        yield defer.gatherResults(sends, consumeErrors=True)

        total_group = per_sender * len(clients)
        for n, uid in enumerate(ids):
            expected = total_group + 2 * per_sender  # group + singles sent + singles received
            self.assertEqual(self.seqs(uid), list(range(1, expected + 1)), f"user #{n}")
        for c in clients:
            yield services.poll_until(
                lambda c=c: c.seq == total_group + 2 * per_sender, 30, what="client caught up"
            )


class NodeFailure(ProcessCluster):
    nodes_count = 2

    @defer.inlineCallbacks
    def test_killed_node_leaves_presence_and_its_clients_lose_nothing(self):
        n1, n2 = self.nodes
        alice, ta = yield self.user(n1, "alice")
        bob, tb = yield self.user(n2, "bob")
        a = yield self.client(n1, ta, device_id="alice-phone", retransmit_timeout=1.0)
        b = yield self.client(n2, tb, device_id="bob-phone", retransmit_timeout=1.0)
        holders = yield self.user_nodes(bob)
        self.assertEqual(holders, {n2.node_id})

        acked_by_alice: list[str] = []
        acked_by_bob: list[str] = []

        def send(client: Any, to: int, text: str, acked: list[str]) -> defer.Deferred:
            return client.send_text(to, text).addCallback(lambda _: acked.append(text))

        # Both chat; n2 is killed while messages are in flight both ways.
        sends = []
        for k in range(40):
            sends.append(send(a, bob, f"a{k}", acked_by_alice))
            sends.append(send(b, alice, f"b{k}", acked_by_bob))
            if k == 20:
                yield services.poll_until(lambda: len(acked_by_bob) >= 5, 20, what="some ACKs")
                killed = reactor.seconds()
                yield n2.kill()

        # Presence: n2's entries vanish within the lease (plus a sweep period).
        def bob_gone() -> Any:
            return self.user_nodes(bob).addCallback(lambda nodes: n2.node_id not in nodes)

        yield services.poll_until(bob_gone, LEASE * 4 / 3 + 3, what="dead node swept")
        self.assertLessEqual(reactor.seconds() - killed, LEASE * 4 / 3 + 3)

        # Bob's client reconnects to the surviving node: retransmits, then syncs.
        yield services.poll_until(lambda: b.proto is None, 20, what="bob noticed the loss")
        yield n1.connect(client=b)
        yield defer.gatherResults(sends, consumeErrors=True)
        yield b.sync()
        yield services.poll_until(lambda: len(a.received) >= 40, 30, what="alice got all")
        yield services.poll_until(lambda: len(b.received) >= 40, 30, what="bob got all")

        got_by_bob = [m.content.decode() for m in b.received]
        got_by_alice = [m.content.decode() for m in a.received]
        self.assertEqual(sorted(got_by_bob), sorted(f"a{k}" for k in range(40)))
        self.assertEqual(sorted(got_by_alice), sorted(f"b{k}" for k in range(40)))
        self.assertEqual(len(acked_by_bob), 40)
        # Pushes to the dead node failed, yet every message of alice's was ACKed.
        self.assertEqual(len(acked_by_alice), 40)
        # Exactly once in storage, in clientId order, seqs contiguous.
        self.assertEqual(self.seqs(bob), list(range(1, 81)))
        rows = pg_rows(
            self.cluster["db"],
            "SELECT content FROM messages WHERE user_id = %s AND sender_id = %s ORDER BY seq",
            (alice, bob),
        )
        self.assertEqual([bytes(r[0]).decode() for r in rows], [f"b{k}" for k in range(40)])

    @defer.inlineCallbacks
    def test_flushed_redis_brings_presence_back_and_loses_no_message(self):
        n1, n2 = self.nodes
        alice, ta = yield self.user(n1, "alice")
        bob, tb = yield self.user(n2, "bob")
        a = yield self.client(n1, ta)
        b = yield self.client(n2, tb)
        for k in range(5):
            yield a.send_text(bob, f"before {k}")
        yield services.poll_until(lambda: len(b.received) == 5, 20, what="pushes before")

        services.delete_redis_keys(self.cluster["redis_prefix"])  # FLUSHDB of this cluster

        def back() -> Any:
            return self.user_nodes(bob).addCallback(lambda nodes: nodes == {n2.node_id})

        yield services.poll_until(back, LEASE + 3, what="presence re-registered")
        yield a.send_text(bob, "after")
        yield services.poll_until(lambda: len(b.received) == 6, 20, what="push after flush")
        # Nothing stored was lost: a fresh device of bob syncs all six.
        fresh = yield self.client(n1, tb)
        self.assertEqual(
            [m.content for m in fresh.received],
            [f"before {k}".encode() for k in range(5)] + [b"after"],
        )


class Credentials(ProcessCluster):
    nodes_count = 1

    @defer.inlineCallbacks
    def test_peer_without_the_credential_is_refused_and_delivers_nothing(self):
        (n1,) = self.nodes
        bob, tb = yield self.user(n1, "bob")
        b = yield self.client(n1, tb)
        forged = codec.push_frame(
            pb.Message(
                session_type=pb.ST_Single, sender_id=1, receiver_id=bob, seq=1, content=b"forged"
            )
        )
        # A wrong secret: login refused; the pool logs and delivers nothing.
        intruder = PeerPool(
            "intruder", b"wrong-secret-wrong-secret", lambda _: defer.succeed(n1.rpc_address)
        )
        self.addCleanup(intruder.close)
        result = yield intruder.deliver("n1", {bob: [forged]})
        self.assertIsNone(result)
        factory = spread.PBClientFactory()
        endpoint = endpoints.clientFromString(reactor, f"tcp:host=127.0.0.1:port={n1.rpc_port}")
        yield endpoint.connect(factory)
        self.addCleanup(factory.disconnect)
        yield self.assertFailure(
            factory.login(credentials.UsernamePassword(b"intruder", b"guess")),
            error.UnauthorizedLogin,
        )
        # No credential at all: the root object only knows how to log in.
        root = yield factory.getRootObject()
        yield self.assertFailure(root.callRemote("DeliverMessage", bob, forged), Exception)
        # The genuine secret works, and it is the first push bob ever sees.
        friend = PeerPool(
            "friend", services.CLUSTER_SECRET, lambda _: defer.succeed(n1.rpc_address)
        )
        self.addCleanup(friend.close)
        genuine = codec.push_frame(
            pb.Message(
                session_type=pb.ST_Single, sender_id=1, receiver_id=bob, seq=1, content=b"genuine"
            )
        )
        delivered = yield friend.call("n1", "DeliverMessage", bob, genuine)
        self.assertEqual(delivered, 1)
        yield services.poll_until(lambda: b.received, 10, what="genuine push")
        self.assertEqual([m.content for m in b.received], [b"genuine"])
