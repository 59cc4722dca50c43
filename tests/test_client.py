"""The client library's side of exactly-once, against a real node."""

from __future__ import annotations

import os
import sqlite3

from twisted.internet import defer

from gochat.client import GoChatClient
from tests.util import NodeTestCase, open_client, query


class DeviceNumbering(NodeTestCase):
    @defer.inlineCallbacks
    def test_messages_queued_before_login_are_numbered_after_the_device_s_last_clientid(self):
        alice, alice_token = yield self.node.user("alice")
        bob, _ = yield self.node.user("bob")
        first = yield self.client(alice_token, device_id="phone")
        yield first.send_text(bob, "from the first run")
        yield first.close()
        # A new process for the same device queues a message before it has logged in.
        second = GoChatClient(alice_token, device_id="phone")
        queued = second.send_text(bob, "queued before login")
        yield open_client(self, self.node, None, client=second)
        seq = yield queued
        self.assertEqual(seq, 2)
        self.assertEqual(
            query(
                self.node,
                "SELECT seq, content FROM messages WHERE user_id = ? ORDER BY seq",
                (bob,),
            ),
            [(1, b"from the first run"), (2, b"queued before login")],
        )


class Retries(NodeTestCase):
    @defer.inlineCallbacks
    def test_client_retries_a_1004_until_stored_and_keeps_the_order(self):
        alice, alice_token = yield self.node.user("alice")
        bob, _ = yield self.node.user("bob")
        db = sqlite3.connect(os.path.join(self.node.data_dir, "gochat.db"), isolation_level=None)
        self.addCleanup(db.close)
        db.execute(
            "CREATE TRIGGER refuse_boom BEFORE INSERT ON message_bodies"
            " WHEN NEW.content = X'626f6f6d' BEGIN SELECT RAISE(ABORT, 'disk trouble'); END"
        )
        client = yield self.client(alice_token, device_id="d", retransmit_timeout=0.2)
        refused = defer.Deferred()

        def watch(out):
            if out.code == 1004 and not refused.called:
                refused.callback(out)

        client.on_output = watch
        boom = client.send_text(bob, "boom")
        after = client.send_text(bob, "after")
        yield refused
        db.execute("DROP TRIGGER refuse_boom")
        seqs = yield defer.gatherResults([boom, after])
        self.assertEqual(seqs, [1, 2])
        self.assertEqual(
            query(
                self.node,
                "SELECT seq, content FROM messages WHERE user_id = ? ORDER BY seq",
                (bob,),
            ),
            [(1, b"boom"), (2, b"after")],
        )
