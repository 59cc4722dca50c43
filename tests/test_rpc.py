"""The PB endpoint of a real cluster node (PostgreSQL + Redis) and the peer pool."""

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
from tests.util import Node


def push(sender: int, receiver: int, text: str, seq: int) -> bytes:
    msg = pb.Message(
        session_type=pb.ST_Single,
        sender_id=sender,
        receiver_id=receiver,
        message_type=pb.MT_Text,
        content=text.encode(),
        seq=seq,
    )
    return codec.push_frame(msg)


class RpcEndpoint(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.node = Node(**services.cluster_config(self))
        yield self.node.start()
        self.addCleanup(self.node.stop)
        self.service = self.node.service
        self.address = f"127.0.0.1:{self.service.ports['rpc'].getHost().port}"
        self.uid, token = yield self.node.user("carol")
        self.client = yield self.node.connect(token)
        self.addCleanup(self.client.close)
        self.received: list[pb.Message] = []
        self.arrived: defer.DeferredQueue = defer.DeferredQueue()
        self.client.on_message = self._got

    def _got(self, msg: pb.Message) -> None:
        self.received.append(msg)
        self.arrived.put(msg)

    def next_message(self) -> defer.Deferred:
        return self.arrived.get().addTimeout(10, reactor)

    def pool(self, secret: bytes = services.CLUSTER_SECRET) -> PeerPool:
        pool = PeerPool("tester", secret, lambda node: defer.succeed(self.address))
        self.addCleanup(pool.close)
        return pool

    @defer.inlineCallbacks
    def login(self, creds: Any) -> Any:
        factory = spread.PBClientFactory()
        port = self.address.split(":")[1]
        endpoint = endpoints.clientFromString(reactor, f"tcp:host=127.0.0.1:port={port}")
        yield endpoint.connect(factory)
        self.addCleanup(factory.disconnect)
        root = yield factory.getRootObject()
        d = factory.login(creds)
        return root, d

    @defer.inlineCallbacks
    def test_peer_with_the_secret_delivers_one_push(self):
        arrived = self.next_message()
        n = yield self.pool().call("node", "DeliverMessage", self.uid, push(1, self.uid, "hi", 1))
        msg = yield arrived
        self.assertEqual((n, msg.content, msg.seq), (1, b"hi", 1))

    @defer.inlineCallbacks
    def test_deliver_message_all_carries_several_users_in_one_call(self):
        other, token = yield self.node.user("dave")
        dave = yield self.node.connect(token)
        self.addCleanup(dave.close)
        dave_got = defer.Deferred()
        dave.on_message = dave_got.callback
        arrived = self.next_message()
        n = yield self.pool().call(
            "node",
            "DeliverMessageAll",
            {self.uid: push(1, self.uid, "to carol", 1), other: [push(1, other, "to dave", 1)]},
        )
        mine, theirs = yield defer.gatherResults([arrived, dave_got.addTimeout(10, reactor)])
        self.assertEqual((n, mine.content, theirs.content), (2, b"to carol", b"to dave"))

    @defer.inlineCallbacks
    def test_pushes_for_one_node_in_one_turn_go_as_one_call_in_order(self):
        pool = self.pool()
        first = pool.deliver("node", {self.uid: [push(1, self.uid, "one", 1)]})
        second = pool.deliver("node", {self.uid: [push(1, self.uid, "two", 2)]})
        results = yield defer.gatherResults([first, second])
        self.assertEqual(results, [2, 2])  # both answered by the one call that pushed 2 frames
        yield services.poll_until(lambda: len(self.received) == 2, 10, what="two pushes")
        self.assertEqual([m.content for m in self.received], [b"one", b"two"])

    @defer.inlineCallbacks
    def test_wrong_secret_is_refused_and_delivers_nothing(self):
        result = yield self.pool(secret=b"not-the-cluster-secret").deliver(
            "node", {self.uid: [push(1, self.uid, "forged", 1)]}
        )
        self.assertIsNone(result)  # logged, never raised
        _root, login = yield self.login(credentials.UsernamePassword(b"evil", b"wrong-secret"))
        yield self.assertFailure(login, error.UnauthorizedLogin)
        self.assertEqual(len(self.flushLoggedErrors(error.UnauthorizedLogin)), 2)
        # The first push that does arrive is the genuine one sent after the attempts.
        arrived = self.next_message()
        yield self.pool().deliver("node", {self.uid: [push(1, self.uid, "genuine", 1)]})
        msg = yield arrived
        self.assertEqual([m.content for m in self.received], [b"genuine"])
        self.assertEqual(msg.content, b"genuine")

    @defer.inlineCallbacks
    def test_without_login_the_root_object_offers_no_delivery(self):
        root, login = yield self.login(credentials.Anonymous())
        yield self.assertFailure(login, error.UnhandledCredentials)
        call = root.callRemote("DeliverMessage", self.uid, push(1, self.uid, "x", 1))
        yield self.assertFailure(call, spread.NoSuchMethod)
        self.flushLoggedErrors(error.UnhandledCredentials, spread.NoSuchMethod)
        self.assertEqual(self.received, [])

    @defer.inlineCallbacks
    def test_bad_arguments_get_an_error_and_the_node_keeps_serving(self):
        pool = self.pool()
        for args in (("x", b"frame"), (self.uid, 5), (-1, b"frame"), (self.uid, [1, 2])):
            yield self.assertFailure(pool.call("node", "DeliverMessage", *args), spread.Error)
        yield self.assertFailure(pool.call("node", "DeliverMessageAll", [1, 2]), spread.Error)
        arrived = self.next_message()
        yield pool.call("node", "DeliverMessage", self.uid, push(1, self.uid, "still here", 1))
        msg = yield arrived
        self.assertEqual(msg.content, b"still here")

    @defer.inlineCallbacks
    def test_pool_reconnects_after_the_connection_drops(self):
        pool = self.pool()
        arrived = self.next_message()
        yield pool.call("node", "DeliverMessage", self.uid, push(1, self.uid, "one", 1))
        yield arrived
        peer = pool.peers["node"]
        lost = defer.Deferred()
        peer.ref.notifyOnDisconnect(lambda _: lost.callback(None))
        peer.ref.broker.transport.loseConnection()
        yield lost.addTimeout(10, reactor)
        arrived = self.next_message()
        yield pool.call("node", "DeliverMessage", self.uid, push(1, self.uid, "two", 2))
        msg = yield arrived
        self.assertEqual(msg.content, b"two")

    @defer.inlineCallbacks
    def test_delivery_to_a_dead_address_fails_quietly_and_in_bounded_time(self):
        pool = PeerPool("tester", services.CLUSTER_SECRET, lambda n: defer.succeed("127.0.0.1:1"))
        self.addCleanup(pool.close)
        started = reactor.seconds()
        result = yield pool.deliver("gone", {self.uid: [push(1, self.uid, "x", 1)]})
        self.assertIsNone(result)
        self.assertLess(reactor.seconds() - started, 10)
