"""The client library's downstream promise, one failure at a time: the
application sees every message exactly once, in seq order.

Real hub, real SQLite, real :class:`GoChatClient`; the network between them
is :class:`tests.netsim.ScriptedNetwork`, which drops exactly the frames a
test names.
"""

from __future__ import annotations

from twisted.internet import defer

from gochat import metrics
from gochat.client import GoChatClient
from gochat.logic import HubConfig
from gochat.pb import pb
from tests.netsim import Link, NetworkTestCase, ScriptedNetwork


def is_push(payload: bytes) -> bool:
    return pb.Output.FromString(payload).type == pb.CT_Message


def is_up_ack(payload: bytes) -> bool:
    out = pb.Output.FromString(payload)
    return out.type == pb.CT_ACK and pb.ACKMsg.FromString(out.data).type == pb.AT_Up


def texts(client: GoChatClient) -> list[bytes]:
    return [m.content for m in client.received]


class Downstream(NetworkTestCase):
    hub_config = HubConfig(push_retry_timeout=2.0, push_retries=3)

    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.net = ScriptedNetwork(self.clock)
        self.ann_id, ann_token = yield self.user("ann")
        self.ben_id, ben_token = yield self.user("ben")
        self.ann = GoChatClient(ann_token, "ann-1", reactor=self.clock, retransmit_timeout=1.0)
        self.ben = GoChatClient(
            ben_token, "ben-1", push_ack=True, reactor=self.clock, retransmit_timeout=1.0
        )
        for client in (self.ann, self.ben):
            d = self.connect(self.net, client)
            yield self.run_until(lambda d=d: d.called, limit=10)

    def drop_first(self, client: GoChatClient, kind) -> None:
        """Drop the first frame of ``kind`` that goes to ``client``."""
        state = {"done": False}

        def drop(link: Link, payload: bytes, to_client: bool) -> bool:
            if to_client and link.client is client and not state["done"] and kind(payload):
                state["done"] = True
                return True
            return False

        self.net.drop = drop

    @defer.inlineCallbacks
    def send(self, sender: GoChatClient, to: int, text: str):
        d = sender.send_text(to, text)
        yield self.run_until(lambda: d.called, limit=30)
        return d.result

    @defer.inlineCallbacks
    def test_a_lost_push_arrives_by_retransmit_with_nothing_after_it(self):
        self.drop_first(self.ben, is_push)
        yield self.send(self.ann, self.ben_id, "only")
        self.assertEqual(texts(self.ben), [])

        yield self.run_until(lambda: texts(self.ben) == [b"only"], limit=10)
        yield self.run_until(lambda: self.hub.pushes.unacked == 0, limit=10)
        self.assertEqual(len(self.net.dropped), 1)

    @defer.inlineCallbacks
    def test_a_gap_is_filled_by_sync_before_later_messages_are_handed_over(self):
        self.hub.pushes.retries = 0  # only the client's gap detection can repair this
        self.drop_first(self.ben, is_push)
        yield self.send(self.ann, self.ben_id, "first")
        yield self.send(self.ann, self.ben_id, "second")

        yield self.run_until(lambda: len(texts(self.ben)) == 2, limit=10)
        self.assertEqual(texts(self.ben), [b"first", b"second"])
        self.assertEqual([m.seq for m in self.ben.received], [1, 2])

    @defer.inlineCallbacks
    def test_a_duplicated_push_is_handed_over_once(self):
        yield self.send(self.ann, self.ben_id, "once")
        yield self.run_until(lambda: texts(self.ben) == [b"once"], limit=10)
        seq = self.ben.received[0].seq
        self.ben.frame_received(self._push_frame(seq, b"once"))
        self.ben.frame_received(self._push_frame(seq, b"once"))

        self.assertEqual(texts(self.ben), [b"once"])
        self.assertEqual(self.ben.seq, seq)

    def _push_frame(self, seq: int, content: bytes) -> bytes:
        msg = pb.Message(
            session_type=pb.ST_Single,
            sender_id=self.ann_id,
            receiver_id=self.ben_id,
            message_type=pb.MT_Text,
            content=content,
            seq=seq,
        )
        push = pb.PushMsg(msg=msg).SerializeToString()
        return pb.Output(type=pb.CT_Message, code=200, data=push).SerializeToString()

    @defer.inlineCallbacks
    def test_own_message_that_syncs_back_before_its_ack_is_not_handed_over(self):
        # Ann's ACK is lost; Ben's answer reaches her first, she sees a gap and
        # syncs, and the sync holds her own message: it must not be handed to
        # her application, and her send still completes with its seq.
        self.drop_first(self.ann, is_up_ack)
        mine = self.ann.send_text(self.ben_id, "mine")
        yield self.run_until(lambda: self.net.dropped, limit=10)
        yield self.send(self.ben, self.ann_id, "theirs")

        yield self.run_until(lambda: mine.called, limit=10)
        yield self.run_until(lambda: self.ann.seq == 2, limit=10)
        self.assertEqual(mine.result, 1)
        self.assertEqual(texts(self.ann), [b"theirs"])
        self.assertEqual(self.ann.received[0].seq, 2)

    @defer.inlineCallbacks
    def test_client_acknowledges_what_a_sync_brought(self):
        # Push 1 is lost, push 2 reveals the gap and the sync fetches both: the
        # ACK after the sync clears the node's window before any retransmit.
        retransmits = metrics.PUSH_RETRANSMITS._value.get()
        self.drop_first(self.ben, is_push)
        yield self.send(self.ann, self.ben_id, "first")
        yield self.send(self.ann, self.ben_id, "second")

        yield self.run_until(lambda: self.hub.pushes.unacked == 0, limit=1.5)
        self.assertEqual(texts(self.ben), [b"first", b"second"])
        self.assertEqual(metrics.PUSH_RETRANSMITS._value.get(), retransmits)


class Login(NetworkTestCase):
    @defer.inlineCallbacks
    def test_a_refused_login_fails_and_closes_the_connection(self):
        net = ScriptedNetwork(self.clock)
        client = GoChatClient("not-a-token", reactor=self.clock)
        failed = []
        d = self.connect(net, client)
        d.addErrback(failed.append)
        yield self.run_until(lambda: client.disconnected.called, limit=10)

        self.assertEqual(failed[0].value.code, 1003)
        self.assertIsNone(client.proto)

    @defer.inlineCallbacks
    def test_a_lost_login_answer_ends_in_a_new_connection(self):
        _, token = yield self.user("dee")
        net = ScriptedNetwork(self.clock)
        net.drop = lambda link, payload, to_client: to_client  # the server is never heard
        client = GoChatClient(token, reactor=self.clock, login_timeout=3.0)
        d = self.connect(net, client)
        d.addErrback(lambda _: None)
        start = self.clock.seconds()

        yield self.run_until(lambda: client.disconnected.called, limit=10)
        self.assertGreaterEqual(self.clock.seconds() - start, 3.0)
        self.assertFalse(client.logged_in)
        # The server had logged it in; the close reached it as well.
        self.assertEqual([s for s in self.hub.sessions if not s.closed], [])

    @defer.inlineCallbacks
    def test_a_repeated_answer_to_login_is_ignored(self):
        _, token = yield self.user("eve")
        net = ScriptedNetwork(self.clock)
        client = GoChatClient(token, reactor=self.clock)
        d = self.connect(net, client)
        yield self.run_until(lambda: d.called, limit=10)
        self.assertTrue(client.logged_in)

        # What the server answers to a login frame the network repeated.
        refused = pb.ACKMsg(type=pb.AT_Login).SerializeToString()
        client.frame_received(
            pb.Output(type=pb.CT_ACK, code=1001, data=refused).SerializeToString()
        )
        self.clock.advance(0)

        self.assertTrue(client.logged_in)
        self.assertIsNotNone(client.proto)
