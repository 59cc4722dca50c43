"""Storage guarantees: contiguous seqs under concurrent senders, durability across restarts.

The checks read the messages table directly through a separate connection.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from collections import defaultdict

from twisted.internet import defer
from twisted.trial import unittest

from gochat import codes
from gochat.pb import pb
from gochat.store import Database, Store, UpItem, engine_from_url
from gochat.store.database import apply_schema, schema_deltas
from tests.util import NodeTestCase, query


class ConcurrentSenders(NodeTestCase):
    timeout = 240
    USERS = 20
    PER_USER = 50

    @defer.inlineCallbacks
    def test_concurrent_senders_keep_every_user_s_seqs_contiguous(self):
        users = []
        for i in range(self.USERS):
            uid, token = yield self.node.user(f"c{i}")
            users.append((uid, token))
        ids = [u for u, _ in users]
        group = yield self.node.api().create_group(users[0][1], "all", ids[1:])
        gid = int(group["id"])
        clients = []
        for _, token in users:
            c = yield self.client(token, device_id="dev")
            clients.append(c)
        sends = []
        for i, client in enumerate(clients):
            partner = ids[i ^ 1]  # pairs (0, 1), (2, 3), ...
            for n in range(self.PER_USER):
                sends.append(client.send_text(gid, f"g{ids[i]}-{n}", group=True))
                sends.append(client.send_text(partner, f"p{ids[i]}-{n}"))
        yield defer.gatherResults(sends, consumeErrors=True)

        per_user = defaultdict(list)
        for uid, seq, content in query(
            self.node, "SELECT user_id, seq, content FROM messages ORDER BY user_id, seq"
        ):
            per_user[uid].append((seq, bytes(content).decode()))
        expected = self.USERS * self.PER_USER + 2 * self.PER_USER
        for uid in ids:
            seqs = [s for s, _ in per_user[uid]]
            self.assertEqual(seqs, list(range(1, expected + 1)), uid)
            contents = [c for _, c in per_user[uid]]
            self.assertEqual(len(contents), len(set(contents)), f"duplicate for {uid}")
            # Each sender's messages reach every list in clientId order.
            by_sender = defaultdict(list)
            for c in contents:
                kind_sender, n = c.rsplit("-", 1)
                by_sender[kind_sender].append(int(n))
            for key, numbers in by_sender.items():
                self.assertEqual(numbers, list(range(self.PER_USER)), (uid, key))
        latest = dict(query(self.node, "SELECT user_id, seq FROM user_seq"))
        self.assertEqual({u: latest[u] for u in ids}, {u: expected for u in ids})


class Restart(NodeTestCase):
    @defer.inlineCallbacks
    def test_every_acked_message_is_still_there_after_a_restart(self):
        alice, alice_token = yield self.node.user("alice")
        bob, bob_token = yield self.node.user("bob")
        a = yield self.client(alice_token)
        seqs = yield defer.gatherResults([a.send_text(bob, f"m{i}") for i in range(100)])
        self.assertEqual(sorted(seqs), list(range(1, 101)))
        yield a.close()
        yield self.restart()
        b = yield self.client(bob_token)
        self.assertEqual(
            [(m.seq, m.content) for m in b.received],
            [(i + 1, f"m{i}".encode()) for i in range(100)],
        )
        # The seq counter carried over too: the next message continues the list.
        a = yield self.client(alice_token)
        seq = yield a.send_text(bob, "after")
        self.assertEqual(seq, 101)

    @defer.inlineCallbacks
    def test_stopping_mid_pipeline_keeps_every_acked_message_and_the_device_window(self):
        count = 300
        alice, alice_token = yield self.node.user("alice")
        bob, _ = yield self.node.user("bob")
        proto = yield self.raw(alice_token, device_id="phone")
        proto.send_inputs(
            [
                (pb.CT_Message, pb.UpMsg(msg=_text(bob, f"m{c}"), clientId=c))
                for c in range(1, count + 1)
            ]
        )
        yield proto.next_output()  # the first ACK: the node is busy writing
        yield self.node.stop()
        yield proto.closed
        acked = [
            pb.ACKMsg.FromString(pb.Output.FromString(f).data).clientId for f, _ in proto.frames
        ]
        acked.insert(0, 1)
        stored = query(
            self.node, "SELECT seq, content FROM messages WHERE user_id = ? ORDER BY seq", (bob,)
        )
        self.assertEqual(stored, [(c, f"m{c}".encode()) for c in range(1, len(stored) + 1)])
        self.assertEqual(acked, list(range(1, len(acked) + 1)))
        self.assertLessEqual(len(acked), len(stored))
        yield self.restart()
        again = yield self.raw()
        code, ack = yield again.login(alice_token, device_id="phone")
        self.assertEqual((code, ack.clientId, ack.seq), (200, len(stored), len(stored)))

    @defer.inlineCallbacks
    def test_generated_secret_survives_restarts_and_old_tokens_stay_valid(self):
        path = os.path.join(self.node.data_dir, "secret.key")
        with open(path, "rb") as f:
            before = f.read()
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        _, token = yield self.node.user("alice")
        yield self.restart()
        with open(path, "rb") as f:
            self.assertEqual(f.read(), before)
        client = yield self.client(token)
        self.assertTrue(client.logged_in)
        group = yield self.node.api().create_group(token, "after restart", [])
        self.assertEqual(group, {"id": "1"})

    @defer.inlineCallbacks
    def test_a_restart_applies_no_schema_delta_twice(self):
        yield self.restart()
        versions = query(self.node, "SELECT version FROM schema_version ORDER BY version")
        self.assertEqual(versions, [(v,) for v, _, _ in schema_deltas()])


def _text(receiver: int, content: str) -> pb.Message:
    return pb.Message(session_type=pb.ST_Single, receiver_id=receiver, content=content.encode())


class StoreTransactions(unittest.TestCase):
    """The store itself, on a real SQLite file."""

    @defer.inlineCallbacks
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="gochat-store-")
        self.db = Database(engine_from_url("sqlite:gochat.db", self.dir))
        self.addCleanup(self.db.close)
        yield self.db.migrate()
        self.store = Store(self.db)

    def rows(self):
        conn = sqlite3.connect(os.path.join(self.dir, "gochat.db"))
        try:
            return conn.execute(
                "SELECT user_id, seq, content FROM messages ORDER BY 1, 2"
            ).fetchall()
        finally:
            conn.close()

    @defer.inlineCallbacks
    def test_one_batch_sequences_every_recipient_and_reports_rejections(self):
        a = yield self.store.create_user("1", "a", "h")
        b = yield self.store.create_user("2", "b", "h")
        gid = yield self.store.create_group(a, "g", [b])
        first = yield self.store.load_device(a, "d")  # as a login does
        self.assertEqual(first, 0)

        def up(cid, receiver, content, group=False, reject=codes.OK):
            msg = pb.Message(
                session_type=pb.ST_Group if group else pb.ST_Single,
                receiver_id=receiver,
                sender_id=a,
                content=content,
            )
            return UpItem(a, "d", cid, msg if reject == codes.OK else None, reject)

        results = yield self.store.commit_messages(
            [
                up(1, b, b"one"),
                up(2, 999, b"nobody"),
                up(3, gid, b"group", group=True),
                up(4, b, b"", reject=codes.UNAUTHORIZED_USER_ID),
                up(5, gid + 1, b"no group", group=True),
            ]
        )
        self.assertEqual(
            [(r.code, r.sender_seq, r.rows) for r in results],
            [
                (200, 1, [(a, 1), (b, 1)]),
                (1005, 0, []),
                (200, 2, [(a, 2), (b, 2)]),
                (1002, 0, []),
                (1005, 0, []),
            ],
        )
        self.assertEqual(
            self.rows(), [(a, 1, b"one"), (a, 2, b"group"), (b, 1, b"one"), (b, 2, b"group")]
        )
        acks = yield self.store.device_ack(a, "d", 4)
        self.assertEqual(acks, (1002, 0))
        last = yield self.store.load_device(a, "d")
        self.assertEqual(last, 5)

    @defer.inlineCallbacks
    def test_schema_keeps_user_and_seq_unique(self):
        a = yield self.store.create_user("1", "a", "h")
        conn = sqlite3.connect(os.path.join(self.dir, "gochat.db"))
        self.addCleanup(conn.close)
        insert = (
            "INSERT INTO user_runs (user_id, last_seq, seq, stream_owner, stream_seq, first_idx)"
            " VALUES (?, 1, 1, 1, 1, 0)"
        )
        conn.execute(insert, (a,))
        self.assertRaises(sqlite3.IntegrityError, conn.execute, insert, (a,))

    @defer.inlineCallbacks
    def test_applying_the_schema_again_changes_nothing(self):
        version = yield self.db.run_interaction("apply_schema", apply_schema, self.db.engine)
        self.assertEqual(version, schema_deltas()[-1][0])
        conn = sqlite3.connect(os.path.join(self.dir, "gochat.db"))
        self.addCleanup(conn.close)
        count = conn.execute("SELECT COUNT(*) FROM schema_version").fetchone()[0]
        self.assertEqual(count, len(schema_deltas()))
