"""The PB endpoint of a real cluster node (PostgreSQL + Redis) and the peer pool."""

from __future__ import annotations

from typing import Any

from twisted.cred import credentials, error, portal
from twisted.internet import defer, endpoints, protocol, reactor
from twisted.logger import formatEvent, globalLogPublisher
from twisted.spread import pb as spread
from twisted.trial import unittest

from gochat import codec, metrics
from gochat.logic.affinity import pack_forwards
from gochat.pb import pb
from gochat.rpc import PeerPool, server
from tests import services
from tests.util import Node


def message(sender: int, receiver: int, text: str, seq: int = 0) -> pb.Message:
    return pb.Message(
        session_type=pb.ST_Single,
        sender_id=sender,
        receiver_id=receiver,
        message_type=pb.MT_Text,
        content=text.encode(),
        seq=seq,
    )


def push(sender: int, receiver: int, text: str, seq: int) -> bytes:
    return codec.push_frame(message(sender, receiver, text, seq))


class _Junk(protocol.Protocol):
    """Sends ``data`` once connected; ``lost`` fires when the other side hangs up."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.lost: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:  # noqa: N802
        self.transport.write(self.data)

    def connectionLost(self, reason: Any) -> None:  # noqa: N802
        self.lost.callback(None)


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
    def older_peer(self, *missing: str) -> Any:
        """A pool whose one peer is this node without the ``missing`` methods (an older release)."""
        hub = self.service.hub

        class Older(server.PeerPerspective):
            def __getattribute__(self, name: str) -> Any:
                if name in missing:
                    raise AttributeError(name)
                return super().__getattribute__(name)

        class OlderRealm(server.NodeRealm):
            def requestAvatar(self, avatar_id: Any, mind: Any, *interfaces: Any) -> Any:
                return spread.IPerspective, Older(hub, "tester"), lambda: None

        factory = spread.PBServerFactory(
            portal.Portal(OlderRealm(hub), [server.ClusterSecretChecker(services.CLUSTER_SECRET)])
        )
        port = yield endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        address = f"127.0.0.1:{port.getHost().port}"
        pool = PeerPool("tester", services.CLUSTER_SECRET, lambda node: defer.succeed(address))
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
    def test_deliver_pushes_builds_each_recipients_frame_from_one_base(self):
        other, token = yield self.node.user("erin")
        erin = yield self.node.connect(token)
        self.addCleanup(erin.close)
        erin_got = defer.Deferred()
        erin.on_message = erin_got.callback
        both = codec.message_base(message(1, self.uid, "to both"))
        mine = codec.message_base(message(1, self.uid, "to carol"))
        n = yield self.pool().call(
            "node",
            "DeliverPushes",
            [
                [both, codec.pack_pairs([self.uid, 1, other, 1])],
                [mine, codec.pack_pairs([self.uid, 2])],
            ],
        )
        theirs = yield erin_got.addTimeout(10, reactor)
        yield services.poll_until(lambda: len(self.received) == 2, 10, what="two pushes")
        self.assertEqual(
            (n, [(m.content, m.seq) for m in self.received], theirs.content, theirs.seq),
            (3, [(b"to both", 1), (b"to carol", 2)], b"to both", 1),
        )

    @defer.inlineCallbacks
    def test_pushes_for_one_node_in_one_turn_go_as_one_deliver_pushes_call(self):
        pool = self.pool()
        calls = metrics.RPC_CALLS.labels("DeliverPushes")
        before = calls._value.get()
        sent = [
            pool.deliver_pushes(
                "node",
                codec.message_base(message(1, self.uid, text)),
                codec.pack_pairs([self.uid, seq]),
            )
            for seq, text in enumerate(["one", "two", "three"], start=1)
        ]
        results = yield defer.gatherResults(sent)
        self.assertEqual((results, calls._value.get() - before), ([3, 3, 3], 1))
        yield services.poll_until(lambda: len(self.received) == 3, 10, what="three pushes")
        self.assertEqual(
            [(m.content, m.seq) for m in self.received], [(b"one", 1), (b"two", 2), (b"three", 3)]
        )

    @defer.inlineCallbacks
    def test_bad_pushes_get_an_error_and_the_node_keeps_serving(self):
        pool = self.pool()
        base = codec.message_base(message(1, self.uid, "x"))
        pairs = codec.pack_pairs([self.uid, 1])
        for batch in (
            [],
            {"a": 1},
            [[base]],
            [[base, pairs[:-1]]],  # not whole pairs
            [[base, b""]],
            [[b"", pairs]],
            [["text", pairs]],
            [[base, pairs, b"extra"]],
        ):
            yield self.assertFailure(pool.call("node", "DeliverPushes", batch), spread.Error)
        self.assertEqual(self.received, [])
        arrived = self.next_message()
        yield pool.call("node", "DeliverPushes", [[base, pairs]])
        msg = yield arrived
        self.assertEqual((msg.content, msg.seq), (b"x", 1))

    @defer.inlineCallbacks
    def test_a_peer_of_an_older_release_gets_the_pushes_as_frames(self):
        # A node of the release before DeliverPushes (a rolling upgrade):
        # its perspective has no such method, so the pool falls back.
        pool = yield self.older_peer("perspective_DeliverPushes")
        base = codec.message_base(message(1, self.uid, "old"))
        n = yield pool.deliver_pushes("old", base, codec.pack_pairs([self.uid, 1]))
        msg = yield self.next_message()
        self.assertEqual((n, msg.content, msg.seq, pool.legacy), (1, b"old", 1, {"old"}))
        # Later pushes go straight to the frames call.
        n = yield pool.deliver_pushes("old", base, codec.pack_pairs([self.uid, 2]))
        msg = yield self.next_message()
        self.assertEqual((n, msg.seq), (1, 2))
        self.flushLoggedErrors(AttributeError)

    @defer.inlineCallbacks
    def test_a_run_names_each_recipient_once_for_consecutive_messages(self):
        other, token = yield self.node.user("fay")
        fay = yield self.node.connect(token)
        self.addCleanup(fay.close)
        fay_got: list[pb.Message] = []
        fay.on_message = fay_got.append
        bases = [codec.message_base(message(1, self.uid, t)) for t in ("r1", "r2", "r3")]
        pool = self.pool()
        # a push, then a run of three (carol's seqs 2..4, fay's 1..3), then a push
        sent = [
            pool.deliver_pushes(
                "node",
                codec.message_base(message(1, self.uid, "p1")),
                codec.pack_pairs([self.uid, 1]),
            ),
            pool.deliver_push_run("node", bases, codec.pack_pairs([self.uid, 2, other, 1])),
            pool.deliver_pushes(
                "node",
                codec.message_base(message(1, self.uid, "p5")),
                codec.pack_pairs([self.uid, 5]),
            ),
        ]
        yield defer.gatherResults(sent)
        yield services.poll_until(
            lambda: len(self.received) == 5 and len(fay_got) == 3, 10, what="eight pushes"
        )
        self.assertEqual(
            [(m.content, m.seq) for m in self.received],
            [(b"p1", 1), (b"r1", 2), (b"r2", 3), (b"r3", 4), (b"p5", 5)],
        )
        self.assertEqual(
            [(m.content, m.seq) for m in fay_got], [(b"r1", 1), (b"r2", 2), (b"r3", 3)]
        )

    @defer.inlineCallbacks
    def test_bad_runs_get_an_error_and_the_node_keeps_serving(self):
        pool = self.pool()
        base = codec.message_base(message(1, self.uid, "x"))
        pairs = codec.pack_pairs([self.uid, 1])
        for batch in (
            [],
            [[base, pairs]],  # a base, not a list of them
            [[[], pairs]],
            [[[base], pairs[:-1]]],
            [[[base, "text"], pairs]],
            [[[base] * 10_001, pairs]],
        ):
            yield self.assertFailure(pool.call("node", "DeliverPushRuns", batch), spread.Error)
        self.assertEqual(self.received, [])
        arrived = self.next_message()
        yield pool.call("node", "DeliverPushRuns", [[[base], pairs]])
        msg = yield arrived
        self.assertEqual((msg.content, msg.seq), (b"x", 1))

    @defer.inlineCallbacks
    def test_a_run_goes_as_one_call_with_its_messages_packed(self):
        pool = self.pool()
        packed = metrics.RPC_CALLS.labels("DeliverPackedRuns")
        listed = metrics.RPC_CALLS.labels("DeliverPushRuns")
        before = (packed._value.get(), listed._value.get())
        bases = [codec.message_base(message(1, self.uid, t)) for t in ("k1", "k2", "é😀")]
        yield pool.deliver_push_run("node", bases, codec.pack_pairs([self.uid, 1]))
        yield services.poll_until(lambda: len(self.received) == 3, 10, what="three pushes")
        self.assertEqual(
            [(m.content, m.seq) for m in self.received],
            [(b"k1", 1), (b"k2", 2), ("é😀".encode(), 3)],
        )
        self.assertEqual((packed._value.get() - before[0], listed._value.get() - before[1]), (1, 0))
        self.assertEqual(pool.no_packed, set())

    @defer.inlineCallbacks
    def test_bad_packed_runs_get_an_error_and_the_node_keeps_serving(self):
        pool = self.pool()
        base = codec.message_base(message(1, self.uid, "x"))
        pairs = codec.pack_pairs([self.uid, 1])
        packed = codec.pack_bases([base])
        for batch in (
            [],
            [[[base], pairs]],  # a list of bases, not packed ones
            [[packed[:-1], pairs]],
            [[packed + b"x", pairs]],
            [[codec.pack_bases([]), pairs]],
            [[codec.pack_bases([base, b""]), pairs]],
            [[packed, pairs[:-1]]],
            [[packed, b""]],
            [[packed, pairs, b"extra"]],
            [[codec.pack_bases([base] * 10_001), pairs]],
            [[codec.pack_bases([base] * 6_000), pairs]] * 2,  # 12,000 messages in all
        ):
            yield self.assertFailure(pool.call("node", "DeliverPackedRuns", batch), spread.Error)
        self.assertEqual(self.received, [])
        arrived = self.next_message()
        yield pool.call("node", "DeliverPackedRuns", [[packed, pairs]])
        msg = yield arrived
        self.assertEqual((msg.content, msg.seq), (b"x", 1))

    @defer.inlineCallbacks
    def test_a_peer_without_packed_runs_gets_them_as_a_list(self):
        pool = yield self.older_peer("perspective_DeliverPackedRuns")
        listed = metrics.RPC_CALLS.labels("DeliverPushRuns")
        bases = [codec.message_base(message(1, self.uid, t)) for t in ("a", "b")]
        yield pool.deliver_push_run("old", bases, codec.pack_pairs([self.uid, 1]))
        yield services.poll_until(lambda: len(self.received) == 2, 10, what="two pushes")
        self.assertEqual((pool.no_packed, pool.no_runs), ({"old"}, set()))
        # later runs go straight as DeliverPushRuns
        before = listed._value.get()
        yield pool.deliver_push_run("old", bases, codec.pack_pairs([self.uid, 3]))
        yield services.poll_until(lambda: len(self.received) == 4, 10, what="four pushes")
        self.assertEqual(listed._value.get() - before, 1)
        self.assertEqual(
            [(m.content, m.seq) for m in self.received],
            [(b"a", 1), (b"b", 2), (b"a", 3), (b"b", 4)],
        )
        self.flushLoggedErrors(AttributeError)

    @defer.inlineCallbacks
    def test_a_peer_without_runs_gets_them_as_pushes_a_message(self):
        pool = yield self.older_peer("perspective_DeliverPackedRuns", "perspective_DeliverPushRuns")
        bases = [codec.message_base(message(1, self.uid, t)) for t in ("a", "b")]
        yield pool.deliver_push_run("old", bases, codec.pack_pairs([self.uid, 1]))
        yield services.poll_until(lambda: len(self.received) == 2, 10, what="two pushes")
        self.assertEqual((pool.no_packed, pool.no_runs), ({"old"}, {"old"}))
        # later runs go straight as DeliverPushes
        yield pool.deliver_push_run("old", bases, codec.pack_pairs([self.uid, 3]))
        yield services.poll_until(lambda: len(self.received) == 4, 10, what="four pushes")
        self.assertEqual(
            [(m.content, m.seq) for m in self.received],
            [(b"a", 1), (b"b", 2), (b"a", 3), (b"b", 4)],
        )
        self.flushLoggedErrors(AttributeError)

    def node_lines(self) -> Any:
        """A function giving the node's RPC endpoint's log lines logged since this call."""
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        return lambda: [
            formatEvent(e) for e in events if e.get("log_namespace") == "gochat.rpc.server"
        ]

    @defer.inlineCallbacks
    def test_wrong_secret_is_refused_and_delivers_nothing(self):
        lines = self.node_lines()
        result = yield self.pool(secret=b"not-the-cluster-secret").deliver(
            "node", {self.uid: [push(1, self.uid, "forged", 1)]}
        )
        self.assertIsNone(result)  # logged, never raised
        _root, login = yield self.login(credentials.UsernamePassword(b"evil", b"wrong-secret"))
        yield self.assertFailure(login, error.UnauthorizedLogin)
        # one line each on the node, no traceback (PB logs one for an error not a pb.Error)
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(
            lines(),
            [
                "rpc: refused a peer's login as node 'tester': wrong cluster secret",
                "rpc: refused a peer's login as node 'evil': wrong cluster secret",
            ],
        )
        # The first push that does arrive is the genuine one sent after the attempts.
        arrived = self.next_message()
        yield self.pool().deliver("node", {self.uid: [push(1, self.uid, "genuine", 1)]})
        msg = yield arrived
        self.assertEqual([m.content for m in self.received], [b"genuine"])
        self.assertEqual(msg.content, b"genuine")

    @defer.inlineCallbacks
    def test_bytes_that_are_not_pb_drop_the_connection_with_one_line(self):
        lines = self.node_lines()
        for junk in (b"\x01\x8f", b"\x01" * 65 + b"\x82"):  # no such type; too long a prefix
            proto = _Junk(junk)
            port = int(self.address.split(":")[1])
            endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
            yield endpoints.connectProtocol(endpoint, proto)
            yield proto.lost  # the node hung up
        self.assertEqual(self.flushLoggedErrors(), [])  # no traceback
        warnings = lines()
        self.assertEqual(len(warnings), 2, warnings)
        for line in warnings:
            self.assertRegex(line, r"^rpc: dropping .*127\.0\.0\.1.*: not Perspective Broker \(")
        # and the endpoint still serves a real peer
        n = yield self.pool().call("node", "DeliverMessage", self.uid, push(1, self.uid, "hi", 1))
        self.assertEqual(n, 1)

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
    def test_a_forwarded_message_is_written_here_and_answered_with_its_code_and_seq(self):
        other, token = yield self.node.user("gus")
        gus = yield self.node.connect(token, device_id="phone")  # the device is known here
        yield gus.close()
        pool = self.pool()
        data = message(other, self.uid, "forwarded").SerializeToString()
        arrived = self.next_message()
        answer = yield pool.write_messages(
            "node", pack_forwards([(other, "phone", 1, data, 7), (other, None, 1, b"\xff", 8)])
        )
        # stored (gus's seq 1), then an undecodable Message refused with 1001
        self.assertEqual(list(codec.iter_pairs(answer)), [(200, 1), (1001, 0)])
        msg = yield arrived
        self.assertEqual((msg.content, msg.sender_id, msg.seq), (b"forwarded", other, 1))
        # the same device and clientId again: found as already stored, same answer
        again = yield pool.write_messages("node", pack_forwards([(other, "phone", 1, data, 7)]))
        self.assertEqual(list(codec.iter_pairs(again)), [(200, 1)])

    @defer.inlineCallbacks
    def test_bad_forwards_and_skips_get_an_error_and_the_node_keeps_serving(self):
        pool = self.pool()
        data = message(1, self.uid, "x").SerializeToString()
        good = (1, "phone", 1, data, 7)
        packed = pack_forwards([good])
        for call in (
            b"",
            [packed],  # not bytes
            packed[:-1],  # cut short
            packed + packed[:10],
            pack_forwards([good] * 1001),  # more than a call carries
            pack_forwards([(1, "phone", 0, data, 7)]),  # clientIds start at 1
            pack_forwards([(0, "phone", 1, data, 7)]),
            pack_forwards([(1, "phone", 1, data, 0)]),
            pack_forwards([(1, "phone", 1, data, 2**63)]),
            pack_forwards([(1, "d" * 129, 1, data, 7)]),
            pack_forwards([(1, "phone", 2**63, data, 7)]),
            pack_forwards([good, (2**63, "phone", 2, data, 7), good]),  # one bad among good
            pack_forwards([good, (1, "phone", 2, data, 0), (1, None, 3, data, 7)]),
            packed.replace(b"phone", b"ph\xffne"),  # not UTF-8
        ):
            yield self.assertFailure(pool.call("node", "WriteMessages", call), spread.Error)
        base = codec.message_base(message(1, self.uid, "x"))
        pairs = codec.pack_pairs([self.uid, 1])
        for skip in (b"x" * 15, "text", codec.pack_pairs([0, 1] * 10_001)):
            yield self.assertFailure(
                pool.call("node", "DeliverPushes", [[base, pairs, skip]]), spread.Error
            )
        self.assertEqual(self.received, [])
        # a skip naming a device this node does not know skips nothing
        arrived = self.next_message()
        yield pool.call("node", "DeliverPushes", [[base, pairs, codec.pack_pairs([0, 99])]])
        msg = yield arrived
        self.assertEqual((msg.content, msg.seq), (b"x", 1))

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
