"""The shortest path through the product: register, log in, chat, sync."""

from twisted.internet import defer

from gochat.pb import pb
from tests.util import NodeTestCase


class OneToOneChat(NodeTestCase):
    @defer.inlineCallbacks
    def test_message_is_acked_stored_and_pushed(self):
        alice, alice_token = yield self.node.user("alice")
        bob, bob_token = yield self.node.user("bob")
        a = yield self.client(alice_token)
        b = yield self.client(bob_token)
        received = defer.Deferred()
        b.on_message = received.callback

        seq = yield a.send_text(bob, "hello bob")

        self.assertEqual(seq, 1)
        msg = yield received
        self.assertEqual(
            (msg.sender_id, msg.receiver_id, msg.session_type, msg.content, msg.seq),
            (alice, bob, pb.ST_Single, b"hello bob", 1),
        )
