"""Reliable pushes (DESIGN.md section 4, ``push_ack``) on a fake clock.

A real hub over a real SQLite store; the clock that times retransmits is a
``task.Clock``, so a timeout is crossed by advancing it, never by sleeping.
"""

import gc

from twisted.internet import defer

from gochat import codec, metrics
from gochat.logic import HubConfig
from gochat.pb import pb
from tests.logic_util import LogicTestCase, push_ack_frame
from tests.util import NodeTestCase

TIMEOUT = 5.0
TICK = TIMEOUT / 5


def sample(name, *labels):
    """The current value of a metric, read the way a scrape reads it."""
    family = getattr(metrics, name)
    metric = family.labels(*labels) if labels else family
    return next(s.value for s in metric.collect()[0].samples if not s.name.endswith("_created"))


class PushAckTestCase(LogicTestCase):
    hub_config = HubConfig(push_retry_timeout=TIMEOUT, push_retries=2, push_window=4)

    @defer.inlineCallbacks
    def pair(self, push_ack=True):
        """Alice (the sender) and Bob's session with ``push_ack``."""
        alice, alice_token = yield self.user("alice")
        bob, bob_token = yield self.user("bob")
        self.alice = yield self.login(alice_token, "a1")
        self.bob_session, self.bob = yield self.login(bob_token, "b1", push_ack=push_ack)
        self.bob_id = bob
        self.next_cid = 1

    @defer.inlineCallbacks
    def message(self, text="hi"):
        """Alice sends Bob a message; fires with Bob's seq of it."""
        session, conn = self.alice
        cid, self.next_cid = self.next_cid, self.next_cid + 1
        yield self.send(session, conn, cid, self.bob_id, text)
        return self.bob.pushes()[-1]

    def advance(self, seconds):
        """Move the fake clock in sweep-sized steps."""
        steps = int(round(seconds / TICK))
        for _ in range(steps):
            self.clock.advance(TICK)


class Retransmit(PushAckTestCase):
    @defer.inlineCallbacks
    def test_unacknowledged_push_is_sent_again_after_the_timeout(self):
        yield self.pair()
        seq = yield self.message("hello")
        before = sample("PUSH_RETRANSMITS")

        self.advance(TIMEOUT - TICK)
        self.assertEqual(self.bob.pushes(), [seq])
        self.advance(TICK)

        self.assertEqual(self.bob.pushes(), [seq, seq])
        self.assertEqual(self.bob.frames[-1], self.bob.frames[-2])
        self.assertEqual(sample("PUSH_RETRANSMITS") - before, 1)

    @defer.inlineCallbacks
    def test_retransmits_stop_after_the_configured_tries(self):
        yield self.pair()
        seq = yield self.message()
        abandoned = sample("PUSHES_ABANDONED", "retries")

        self.advance(TIMEOUT * 10)

        self.assertEqual(self.bob.pushes(), [seq] * 3)  # the push and 2 retries
        self.assertEqual(self.hub.pushes.unacked, 0)
        self.assertEqual(self.hub.pushes.windows, {})
        self.assertEqual(sample("PUSHES_ABANDONED", "retries") - abandoned, 1)
        self.assertFalse(self.hub.pushes._loop.running)

    @defer.inlineCallbacks
    def test_cumulative_ack_clears_everything_up_to_its_seq(self):
        yield self.pair()
        s1 = yield self.message("one")
        s2 = yield self.message("two")
        s3 = yield self.message("three")
        self.assertEqual(self.hub.pushes.unacked, 3)

        self.bob_session.frame_received(push_ack_frame(s2))
        self.assertEqual(self.hub.pushes.unacked, 1)
        self.advance(TIMEOUT)

        self.assertEqual(self.bob.pushes(), [s1, s2, s3, s3])
        self.bob_session.frame_received(push_ack_frame(s3))
        self.assertEqual(self.hub.pushes.unacked, 0)
        self.advance(TICK)  # the next sweep drops the empty window and goes idle
        self.assertEqual(self.hub.pushes.windows, {})
        self.assertFalse(self.hub.pushes._loop.running)
        self.advance(TIMEOUT * 5)
        self.assertEqual(self.bob.pushes(), [s1, s2, s3, s3])

    @defer.inlineCallbacks
    def test_an_ack_below_what_is_held_clears_nothing(self):
        yield self.pair()
        s1 = yield self.message()
        self.bob_session.frame_received(push_ack_frame(s1 - 1))
        self.assertEqual(self.hub.pushes.unacked, 1)
        self.assertEqual([o.code for o in self.bob.outputs()][-1], 200)  # no error reply

    @defer.inlineCallbacks
    def test_without_push_ack_nothing_is_held_or_sent_again(self):
        yield self.pair(push_ack=False)
        seq = yield self.message()

        self.assertEqual(self.hub.pushes.windows, {})
        self.advance(TIMEOUT * 10)
        self.assertEqual(self.bob.pushes(), [seq])
        self.assertFalse(self.hub.pushes._loop.running)

    @defer.inlineCallbacks
    def test_push_ack_without_push_ack_login_is_accepted_and_ignored(self):
        yield self.pair(push_ack=False)
        seq = yield self.message()
        self.bob_session.frame_received(push_ack_frame(seq))
        self.assertEqual(self.bob.outputs()[-1].type, pb.CT_Message)
        self.assertEqual(self.hub.pushes.windows, {})


class Bounds(PushAckTestCase):
    @defer.inlineCallbacks
    def test_window_keeps_only_the_newest_pushes(self):
        yield self.pair()
        abandoned = sample("PUSHES_ABANDONED", "window")
        seqs = []
        for i in range(6):
            seq = yield self.message(f"m{i}")
            seqs.append(seq)

        self.assertEqual(self.hub.pushes.unacked, 4)
        self.assertEqual(sample("PUSHES_ABANDONED", "window") - abandoned, 2)
        self.advance(TIMEOUT)
        self.assertEqual(self.bob.pushes()[6:], seqs[2:])

    @defer.inlineCallbacks
    def test_closing_the_connection_frees_its_window(self):
        yield self.pair()
        yield self.message()
        self.assertEqual(self.hub.pushes.unacked, 1)

        self.bob_session.connection_lost()

        self.assertEqual(self.hub.pushes.unacked, 0)
        self.advance(TICK)
        self.assertFalse(self.hub.pushes._loop.running)
        self.advance(TIMEOUT * 2)
        self.assertEqual(len(self.bob.pushes()), 1)

    @defer.inlineCallbacks
    def test_unacked_gauge_counts_what_is_held(self):
        yield self.pair()
        # The gauge sums every tracker in the process: hubs of earlier tests
        # that only a collection frees must not leave it during the test.
        gc.collect()
        before = sample("UNACKED_PUSHES")
        s1 = yield self.message()
        yield self.message()
        self.assertEqual(sample("UNACKED_PUSHES") - before, 2)
        self.bob_session.frame_received(push_ack_frame(s1))
        self.assertEqual(sample("UNACKED_PUSHES") - before, 1)

    @defer.inlineCallbacks
    def test_pushes_from_another_node_are_tracked_too(self):
        yield self.pair()
        msg = pb.Message(
            session_type=pb.ST_Single, receiver_id=self.bob_id, sender_id=99, content=b"x", seq=7
        )
        frame = codec.push_frame(msg)

        self.hub.deliver_from_peer({self.bob_id: [frame]})
        self.assertEqual(self.hub.pushes.unacked, 1)
        self.advance(TIMEOUT)

        self.assertEqual(self.bob.pushes(), [7, 7])

    @defer.inlineCallbacks
    def test_out_of_order_pushes_are_cleared_by_seq(self):
        yield self.pair()
        for seq in (5, 3, 4):
            msg = pb.Message(session_type=pb.ST_Single, receiver_id=self.bob_id, seq=seq)
            self.hub.deliver_from_peer({self.bob_id: [codec.push_frame(msg)]})

        self.bob_session.frame_received(push_ack_frame(4))
        self.advance(TIMEOUT)

        self.assertEqual(self.bob.pushes(), [5, 3, 4, 5])


class OverWebSocket(NodeTestCase):
    """The same promise end to end: real node, real sockets, real client."""

    @defer.inlineCallbacks
    def test_push_ack_client_clears_the_node_window(self):
        alice, alice_token = yield self.node.user("alice")
        bob, bob_token = yield self.node.user("bob")
        a = yield self.client(alice_token, device_id="a")
        b = yield self.client(bob_token, device_id="b", push_ack=True)
        hub = self.node.service.hub

        all_in = defer.Deferred()
        b.on_message = lambda m: len(b.received) == 3 and all_in.callback(None)
        for text in ("one", "two", "three"):
            yield a.send_text(bob, text)
        yield all_in
        yield b.sync()  # answered after every earlier frame of b, its ACKs included

        self.assertEqual([m.content for m in b.received], [b"one", b"two", b"three"])
        self.assertEqual(hub.pushes.unacked, 0)
        self.assertTrue(next(iter(hub.router.online[bob])).push_ack)
