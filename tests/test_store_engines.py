"""The store against every engine: SQLite, PostgreSQL and MariaDB/MySQL.

The same tests run on each database. The server databases also get what only
they allow: several Store instances (several "nodes", each with its own
connection pool) committing for the same users at once, which must leave every
user's seqs gapless and duplicate-free, never deadlock on group messages, and
retry a transaction the database aborts.
"""

from __future__ import annotations

import os
import struct
import sys
import tempfile
import threading
from typing import Any

from twisted.internet import defer, utils
from twisted.trial import unittest

from gochat import codes
from gochat.pb import pb
from gochat.store import Database, NotFound, Store, UpItem, engine_from_url
from gochat.store import database as database_module
from gochat.store import store as store_module
from gochat.store.database import schema_deltas
from gochat.store.engines import (
    DatabaseURLError,
    MigrationError,
    MySQLEngine,
    pg_binary_int8_rows,
    pg_int8_array,
)
from gochat.store.people import GroupOp
from tests import services
from tests.processes import free_port, twistd


def single(sender: int, receiver: int, text: str) -> pb.Message:
    return pb.Message(
        session_type=pb.ST_Single,
        receiver_id=receiver,
        sender_id=sender,
        message_type=pb.MT_Text,
        content=text.encode(),
        send_time=1,
    )


def group(sender: int, group_id: int, text: str) -> pb.Message:
    msg = single(sender, group_id, text)
    msg.session_type = pb.ST_Group
    return msg


class StoreTests:
    """Mixed into one TestCase per engine; ``url()`` names the database."""

    timeout = 120

    def url(self) -> str:
        raise NotImplementedError

    def setUp(self) -> Any:
        self.db_url = self.url()
        self.databases: list[Database] = []
        self.store = self.open_store()
        return self.store.db.migrate()

    def open_store(self) -> Store:
        database = Database(engine_from_url(self.db_url, ""))
        self.databases.append(database)
        self.addCleanup(database.close)
        return Store(database)

    @defer.inlineCallbacks
    def users(self, n: int, tag: str = "u") -> Any:
        ids = []
        for i in range(n):
            uid = yield self.store.create_user(f"{tag}{i}-{id(self)}", f"{tag}{i}", "x")
            ids.append(uid)
        return ids

    def rows(self, store: Store, user_id: int) -> defer.Deferred:
        def txn(cur: Any) -> list[tuple[int, bytes]]:
            cur.execute(
                "SELECT seq, content FROM messages WHERE user_id = ? ORDER BY seq", (user_id,)
            )
            return [(int(r[0]), bytes(r[1])) for r in cur.fetchall()]

        return store.db.run_interaction("test_rows", txn, write=False)

    # -- lists as runs ---------------------------------------------------------

    @defer.inlineCallbacks
    def test_a_batch_is_one_run_per_member_per_stream_and_sync_pages_through_it(self):
        a, b, c = yield self.users(3, "run")
        gid = yield self.store.create_group(a, "g", [b, c])

        def up(cid: int, receiver: int, text: str, group: bool) -> UpItem:
            msg = pb.Message(
                session_type=pb.ST_Group if group else pb.ST_Single,
                receiver_id=receiver,
                sender_id=a,
                content=text.encode(),
            )
            return UpItem(a, "d", cid, msg)

        # one batch: five to the group, one to b alone, three to the group
        texts = [f"g{i}" for i in range(5)] + ["to b"] + [f"g{i}" for i in range(5, 8)]
        items = [up(i + 1, b if t == "to b" else gid, t, t != "to b") for i, t in enumerate(texts)]
        results = yield self.store.commit_messages(items)
        self.assertEqual([r.code for r in results], [200] * 9)

        def runs(cur: Any) -> dict[int, int]:
            cur.execute(
                "SELECT user_id, COUNT(*) FROM user_runs WHERE user_id IN (?, ?, ?)"
                " GROUP BY user_id",
                (a, b, c),
            )
            return {int(u): int(n) for u, n in cur.fetchall()}

        counted = yield self.store.db.run_interaction("runs", runs, write=False)
        # a and b: the group's stream, b's chat, the group's stream again; c: one run
        self.assertEqual(counted, {a: 3, b: 3, c: 1})
        expected = {
            a: [t.encode() for t in texts],
            b: [t.encode() for t in texts],
            c: [t.encode() for t in texts if t != "to b"],
        }
        for uid, contents in expected.items():
            rows = yield self.rows(self.store, uid)  # the user_messages view
            self.assertEqual(rows, list(enumerate(contents, start=1)), uid)
            for after in range(len(contents) + 1):
                for limit in (1, 2, 3, 50):
                    got, more = yield self.store.sync(uid, after, limit)
                    page = contents[after : after + limit]
                    self.assertEqual(
                        [(m.seq, m.content) for m in got],
                        list(enumerate(page, start=after + 1)),
                        (uid, after, limit),
                    )
                    self.assertEqual(more, after + limit < len(contents), (uid, after, limit))

    @defer.inlineCallbacks
    def test_a_batch_to_a_group_from_several_senders_and_a_change_sequences_as_one_by_one(self):
        a, b, c, d = yield self.users(4, "blk")
        gid = yield self.store.create_group(a, "g", [b, c])
        for uid in (a, b, c):
            yield self.store.load_device(uid, "d")

        def to_group(sender: int, cid: int, text: str) -> UpItem:
            msg = pb.Message(
                session_type=pb.ST_Group, receiver_id=gid, sender_id=sender, content=text.encode()
            )
            return UpItem(sender, "d", cid, msg)

        to_d = UpItem(
            c,
            "d",
            2,
            pb.Message(session_type=pb.ST_Single, receiver_id=d, sender_id=c, content=b"c to d"),
        )
        items = [
            to_group(a, 1, "a1"),
            to_group(b, 1, "b1"),
            to_group(a, 2, "a2"),
            to_group(c, 1, "c1"),
            to_d,  # ends the block: c's and d's next seqs go to the chat
            to_group(b, 2, "b2"),
            UpItem(a, None, 0, None, op=GroupOp("add", gid, a, [d])),  # d joins here
            to_group(c, 3, "c3"),
            to_group(a, 3, "a3"),
        ]
        results = yield self.store.commit_messages(items)
        self.assertEqual([r.code for r in results], [200] * 9)
        # the reference: every message in turn, each recipient's next seq
        members = [a, b, c]
        seqs = dict.fromkeys((a, b, c, d), 0)
        lists: dict[int, list[bytes]] = {u: [] for u in seqs}
        for item, result in zip(items, results, strict=True):
            if item.op is not None:
                members.append(d)
                recipients = members
            elif item.message.session_type == pb.ST_Single:
                recipients = [c, d]
            else:
                recipients = members
            expected = []
            for uid in recipients:
                seqs[uid] += 1
                expected.append((uid, seqs[uid]))
                lists[uid].append(result.message.content)
            self.assertEqual(sorted(result.rows), sorted(expected), item)
            if item.op is None:
                self.assertEqual(result.sender_seq, seqs[item.user_id], item)
        for uid, contents in lists.items():
            got, more = yield self.store.sync(uid, 0, 100)
            self.assertEqual(
                [(m.seq, m.content) for m in got], list(enumerate(contents, start=1)), uid
            )
            self.assertFalse(more)
        # and the next batch goes on from there
        (r,) = yield self.store.commit_messages([to_group(b, 3, "b3")])
        self.assertEqual(sorted(r.rows), sorted((u, seqs[u] + 1) for u in (a, b, c, d)))

    # -- schema --------------------------------------------------------------

    @defer.inlineCallbacks
    def test_migrations_reach_the_latest_version_and_are_idempotent(self):
        latest = schema_deltas()[-1][0]
        again = yield self.store.db.migrate()
        self.assertEqual(again, latest)
        other = self.open_store()
        version = yield other.db.migrate()
        self.assertEqual(version, latest)

    @defer.inlineCallbacks
    def test_messages_of_the_first_schema_survive_the_narrow_rows_upgrade(self):
        self.db_url = self.url()  # a database of its own, still empty
        old = self.open_store()
        first = schema_deltas()[:1]
        self.patch(database_module, "schema_deltas", lambda: first)
        version = yield old.db.migrate()
        self.assertEqual(version, 1)
        rows = [
            (7, 1, 7, pb.ST_Single, 8, pb.MT_Text, b"hello", 1000),
            (8, 1, 7, pb.ST_Single, 8, pb.MT_Text, b"hello", 1000),
            (7, 2, 9, pb.ST_Group, 3, pb.MT_Picture, b"\x00\xff", 2000),
        ]

        def insert(cur):
            cur.executemany(
                "INSERT INTO messages (user_id, seq, sender_id, session_type, receiver_id,"
                " message_type, content, send_time) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

        yield old.db.run_interaction("old_rows", insert)
        self.patch(database_module, "schema_deltas", schema_deltas)
        version = yield old.db.migrate()
        self.assertEqual(version, schema_deltas()[-1][0])
        messages, more = yield old.sync(7, 0, 10)
        self.assertEqual(
            [
                (m.seq, m.sender_id, m.session_type, m.receiver_id, m.message_type, m.content)
                for m in messages
            ],
            [
                (1, 7, pb.ST_Single, 8, pb.MT_Text, b"hello"),
                (2, 9, pb.ST_Group, 3, pb.MT_Picture, b"\x00\xff"),
            ],
        )
        self.assertEqual([m.send_time for m in messages], [1000, 2000])
        self.assertFalse(more)
        view = yield self.rows(old, 8)
        self.assertEqual(view, [(1, b"hello")])

    # -- the bulk write path ------------------------------------------------

    def stored(self, store: Store, user_ids: list[int]) -> defer.Deferred:
        """Every list row of ``user_ids`` and the body it points at, as the tables hold them."""

        def txn(cur: Any) -> list[tuple]:
            marks = ",".join("?" * len(user_ids))
            cur.execute(
                "SELECT um.user_id, um.seq, um.owner_id, um.owner_seq, b.sender_id,"
                " b.session_type, b.receiver_id, b.message_type, b.content, b.send_time"
                " FROM user_messages um JOIN message_bodies b ON b.owner_id = um.owner_id"
                f" AND b.owner_seq = um.owner_seq WHERE um.user_id IN ({marks})"
                " ORDER BY um.user_id, um.seq",
                user_ids,
            )
            return [tuple(int(v) for v in r[:8]) + (bytes(r[8]), int(r[9])) for r in cur.fetchall()]

        return store.db.run_interaction("test_stored", txn, write=False)

    @defer.inlineCallbacks
    def test_bulk_rows_keep_seqs_and_odd_bodies_exactly(self):
        """NUL bytes, 64 KiB, every byte value, unicode and empty bodies, single and group."""
        a, b, c = yield self.users(3)
        gid = yield self.store.create_group(a, "g", [b, c])
        bodies = [
            b"\x00",
            b"a\x00b\x00\x00",
            bytes(range(256)) * 256,  # 64 KiB of every byte value
            "h\u00e9llo \u4e16\u754c \U0001f600 \\ ' \" % ?".encode(),
            b"",
            b"\\x27\\ \t\n\r\x1a",
        ]
        items = []
        for n, content in enumerate(bodies):
            msg = single(a, b, "") if n % 2 else group(a, gid, "")
            msg.content = content
            msg.send_time = 2**62 + n
            msg.message_type = pb.MT_Picture
            items.append(UpItem(a, None, n + 1, msg))
        results = yield self.store.commit_messages(items)
        self.assertEqual([r.code for r in results], [codes.OK] * len(bodies))
        self.assertEqual([r.sender_seq for r in results], list(range(1, len(bodies) + 1)))
        expected = []
        seqs = {a: 0, b: 0, c: 0}
        for n, content in enumerate(bodies):
            rcpts = (a, b) if n % 2 else (a, b, c)
            session = pb.ST_Single if n % 2 else pb.ST_Group
            receiver = b if n % 2 else gid
            for u in rcpts:
                seqs[u] += 1
                expected.append(
                    (u, seqs[u], a, n + 1, a, session, receiver, pb.MT_Picture, content, 2**62 + n)
                )
        rows = yield self.stored(self.store, [a, b, c])
        self.assertEqual(rows, sorted(expected))
        pushed = sorted((row[0], row[1]) for row in expected if row[3] == 3)
        self.assertEqual(sorted(results[2].rows), pushed)
        page, _ = yield self.store.sync(c, 0, 10)
        self.assertEqual([m.content for m in page], bodies[0::2])

    @defer.inlineCallbacks
    def test_a_batch_of_300_messages_of_60kb_is_stored_whole(self):
        """More than MySQL's 16 MiB packet in one batch: cut by bytes, none gets 1004."""
        a, b = yield self.users(2)
        items = []
        for n in range(300):
            msg = single(a, b, "")
            msg.content = bytes([n % 256]) * 60_000
            items.append(UpItem(a, None, n + 1, msg))
        results = yield self.store.commit_messages(items)
        self.assertEqual([r.code for r in results], [codes.OK] * 300)
        rows = yield self.rows(self.store, b)
        self.assertEqual([s for s, _ in rows], list(range(1, 301)))
        self.assertEqual([c for _, c in rows], [it.message.content for it in items])

    @defer.inlineCallbacks
    def test_a_big_group_batch_is_written_in_recipient_order(self):
        """Thousands of list rows in one batch (COPY in one piece, INSERTs cut in several)."""
        users = yield self.users(40)
        gid = yield self.store.create_group(users[0], "g", users[1:])
        items = [
            UpItem(users[n % 40], None, n // 40 + 1, group(users[n % 40], gid, f"m{n}"))
            for n in range(400)
        ]
        results = yield self.store.commit_messages(items)
        self.assertEqual({r.code for r in results}, {codes.OK})
        for u in users:
            rows = yield self.rows(self.store, u)
            self.assertEqual([s for s, _ in rows], list(range(1, 401)))
            self.assertEqual([c for _, c in rows], [f"m{n}".encode() for n in range(400)])

    # -- users and groups ----------------------------------------------------

    @defer.inlineCallbacks
    def test_group_ids_are_distinct_and_members_include_the_owner(self):
        a, b, c = yield self.users(3)
        g1 = yield self.store.create_group(a, "one", [b])
        g2 = yield self.store.create_group(a, "two", [b, c])
        self.assertNotEqual(g1, g2)
        members = yield self.store.group_members(g2)
        self.assertEqual(members, sorted([a, b, c]))

    @defer.inlineCallbacks
    def test_group_with_unknown_member_is_refused(self):
        (a,) = yield self.users(1)
        yield self.assertFailure(self.store.create_group(a, "g", [a + 10_000]), NotFound)

    # -- sequencing ----------------------------------------------------------

    @defer.inlineCallbacks
    def test_single_message_gets_a_row_per_party_with_next_seqs(self):
        a, b = yield self.users(2)
        (r1,) = yield self.store.commit_messages([UpItem(a, None, 1, single(a, b, "hi"))])
        (r2,) = yield self.store.commit_messages([UpItem(b, None, 1, single(b, a, "yo"))])
        self.assertEqual((r1.code, r1.sender_seq, sorted(r1.rows)), (codes.OK, 1, [(a, 1), (b, 1)]))
        self.assertEqual((r2.code, r2.sender_seq, sorted(r2.rows)), (codes.OK, 2, [(a, 2), (b, 2)]))
        rows_a = yield self.rows(self.store, a)
        self.assertEqual(rows_a, [(1, b"hi"), (2, b"yo")])
        latest = yield self.store.latest_seq(b)
        self.assertEqual(latest, 2)

    @defer.inlineCallbacks
    def test_sync_pages_with_has_more(self):
        a, b = yield self.users(2)
        items = [UpItem(a, None, i, single(a, b, f"m{i}")) for i in range(1, 6)]
        yield self.store.commit_messages(items)
        page, more = yield self.store.sync(b, 0, 3)
        self.assertEqual(([m.seq for m in page], more), ([1, 2, 3], True))
        page, more = yield self.store.sync(b, 3, 3)
        self.assertEqual(([m.content for m in page], more), ([b"m4", b"m5"], False))

    @defer.inlineCallbacks
    def test_group_message_from_non_member_is_unauthorized(self):
        a, b, c = yield self.users(3)
        gid = yield self.store.create_group(a, "g", [b])
        (res,) = yield self.store.commit_messages([UpItem(c, None, 1, group(c, gid, "x"))])
        self.assertEqual(res.code, codes.UNAUTHORIZED)

    @defer.inlineCallbacks
    def test_device_window_and_acks_are_stored(self):
        a, b = yield self.users(2)
        last = yield self.store.load_device(a, "phone")
        self.assertEqual(last, 0)
        yield self.store.commit_messages([UpItem(a, "phone", 1, single(a, b, "x"))])
        last = yield self.store.load_device(a, "phone")
        ack = yield self.store.device_ack(a, "phone", 1)
        self.assertEqual((last, ack), (1, (codes.OK, 1)))

    @defer.inlineCallbacks
    def test_old_acks_of_a_device_are_deleted_past_the_history(self):
        self.patch(store_module, "DEVICE_ACK_HISTORY", 6)
        self.patch(store_module, "DEVICE_ACK_PRUNE_EVERY", 4)
        a, b = yield self.users(2)
        yield self.store.load_device(a, "phone")
        for first, last in ((1, 3), (4, 9), (10, 11), (12, 14)):  # batches
            yield self.store.commit_messages(
                [UpItem(a, "phone", c, single(a, b, f"m{c}")) for c in range(first, last + 1)]
            )

        def kept(cur):
            cur.execute("SELECT client_id FROM device_acks WHERE user_id = ? ORDER BY 1", (a,))
            return [int(r[0]) for r in cur.fetchall()]

        # 4-9 crossed 8: up to 3 went; 10-11 crossed nothing; 12-14 crossed 12: up to 8 went
        ids = yield self.store.db.run_interaction("kept", kept, write=False)
        self.assertEqual(ids, list(range(9, 15)))
        ack = yield self.store.device_ack(a, "phone", 14)
        self.assertEqual(ack, (codes.OK, 14))
        gone = yield self.store.device_ack(a, "phone", 8)
        self.assertIsNone(gone)

    # -- membership changes --------------------------------------------------

    @defer.inlineCallbacks
    def test_membership_change_on_another_store_reaches_a_cached_store(self):
        """Node A caches members; node B removes one; A, told of it, refuses that sender."""
        a, b, c = yield self.users(3)
        node_b = self.open_store()
        changed = []
        node_b.on_group_changed = changed.append
        gid = yield self.store.create_group(a, "g", [b, c])
        (r,) = yield self.store.commit_messages([UpItem(c, None, 1, group(c, gid, "1"))])
        self.assertEqual(r.code, codes.OK)  # now cached on A

        yield node_b.remove_group_members(gid, [c])
        self.assertEqual(changed, [gid])
        self.store.forget_group(gid)  # what the cluster's invalidation does on A
        (r,) = yield self.store.commit_messages([UpItem(c, None, 2, group(c, gid, "2"))])
        self.assertEqual(r.code, codes.UNAUTHORIZED)

        yield node_b.add_group_members(gid, [c])
        self.store.forget_group(gid)
        (r,) = yield self.store.commit_messages([UpItem(c, None, 3, group(c, gid, "3"))])
        self.assertEqual((r.code, sorted(u for u, _ in r.rows)), (codes.OK, sorted([a, b, c])))

    @defer.inlineCallbacks
    def test_invalidation_during_a_commit_keeps_stale_members_out_of_the_cache(self):
        a, b = yield self.users(2)
        gid = yield self.store.create_group(a, "g", [b])
        d = self.store.commit_messages([UpItem(a, None, 1, group(a, gid, "x"))])
        self.store.forget_group(gid)  # arrives while the transaction runs
        yield d
        self.assertNotIn(gid, self.store._group_cache)


class ConcurrentWriterTests(StoreTests):
    """Several stores (nodes) writing the same users at once: server databases only."""

    @defer.inlineCallbacks
    def test_seqs_stay_contiguous_under_concurrent_commits_from_several_nodes(self):
        users = yield self.users(8)
        gid = yield self.store.create_group(users[0], "all", users[1:])
        nodes = [self.store] + [self.open_store() for _ in range(3)]
        expected = {u: 0 for u in users}
        batches = []
        for n, node in enumerate(nodes):
            for round_ in range(12):
                sender = users[(n + round_) % len(users)]
                other = users[(n + 3 * round_ + 1) % len(users)]
                items = [UpItem(sender, None, 1, group(sender, gid, f"g{n}.{round_}"))]
                for u in users:
                    expected[u] += 1
                if other != sender:
                    items.append(UpItem(sender, None, 2, single(sender, other, f"s{n}.{round_}")))
                    expected[sender] += 1
                    expected[other] += 1
                batches.append(node.commit_messages(items))
        results = yield defer.gatherResults(batches, consumeErrors=True)
        self.assertTrue(all(r.code == codes.OK for batch in results for r in batch))
        for u in users:
            rows = yield self.rows(self.store, u)
            self.assertEqual([s for s, _ in rows], list(range(1, expected[u] + 1)))
            latest = yield self.store.latest_seq(u)
            self.assertEqual(latest, expected[u])

    @defer.inlineCallbacks
    def test_group_messages_with_overlapping_members_do_not_deadlock(self):
        users = yield self.users(12)
        # Groups created in different member orders all overlap.
        g1 = yield self.store.create_group(users[0], "g1", users[1:8])
        g2 = yield self.store.create_group(users[11], "g2", list(reversed(users[4:11])))
        g3 = yield self.store.create_group(users[6], "g3", users[::2])
        nodes = [self.store] + [self.open_store() for _ in range(3)]
        sends = []
        for i in range(30):
            node = nodes[i % len(nodes)]
            for gid, sender in ((g1, users[0]), (g2, users[11]), (g3, users[6])):
                sends.append(
                    node.commit_messages([UpItem(sender, None, 1, group(sender, gid, "x"))])
                )
        results = yield defer.gatherResults(sends, consumeErrors=True)
        self.assertTrue(all(r.code == codes.OK for batch in results for r in batch))
        self.assertEqual(sum(db.retries for db in self.databases), 0)
        for u in users:
            rows = yield self.rows(self.store, u)
            self.assertEqual([s for s, _ in rows], list(range(1, len(rows) + 1)))

    @defer.inlineCallbacks
    def test_nodes_starting_together_migrate_a_fresh_database_once(self):
        self.db_url = self.url()  # another, empty database
        stores = [self.open_store() for _ in range(3)]
        versions = yield defer.gatherResults([s.db.migrate() for s in stores], consumeErrors=True)
        self.assertEqual(versions, [schema_deltas()[-1][0]] * 3)

        def applied(cur: Any) -> list:
            cur.execute("SELECT version FROM schema_version ORDER BY version")
            return [int(r[0]) for r in cur.fetchall()]

        rows = yield stores[0].db.run_interaction("test_versions", applied)
        self.assertEqual(rows, [v for v, _, _ in schema_deltas()])

    @defer.inlineCallbacks
    def test_a_device_served_by_two_nodes_at_once_stores_each_client_id_once(self):
        """The device reconnected elsewhere while its old node still had its messages queued."""
        a, b = yield self.users(2)
        other = self.open_store()
        yield self.store.load_device(a, "phone")
        items = [UpItem(a, "phone", cid, single(a, b, f"m{cid}")) for cid in (1, 2, 3)]
        twins = [UpItem(a, "phone", cid, single(a, b, f"m{cid}")) for cid in (1, 2, 3)]
        first, second = yield defer.gatherResults(
            [self.store.commit_messages(items), other.commit_messages(twins)],
            consumeErrors=True,
        )
        self.assertEqual([r.code for r in first + second], [codes.OK] * 6)
        self.assertEqual([r.sender_seq for r in first], [r.sender_seq for r in second])
        rows = yield self.rows(self.store, b)
        self.assertEqual(rows, [(1, b"m1"), (2, b"m2"), (3, b"m3")])
        # Only the copy that was stored carries rows to push.
        self.assertEqual(sum(bool(r.rows) for r in first + second), 3)

    @defer.inlineCallbacks
    def test_a_transaction_the_database_aborts_is_retried(self):
        """Two transactions lock two rows in opposite orders: a real deadlock."""
        a, b = yield self.users(2)
        other = self.open_store()
        barrier = threading.Barrier(2, timeout=20)
        attempts = {"first": 0, "second": 0}

        def locker(name: str, order: tuple[int, int]) -> Any:
            def txn(cur: Any) -> str:
                attempts[name] += 1
                cur.execute("SELECT seq FROM user_seq WHERE user_id = ? FOR UPDATE", (order[0],))
                cur.fetchall()
                if attempts[name] == 1:
                    barrier.wait()
                cur.execute("SELECT seq FROM user_seq WHERE user_id = ? FOR UPDATE", (order[1],))
                cur.fetchall()
                cur.execute("UPDATE user_seq SET seq = seq + 1 WHERE user_id = ?", (order[0],))
                return name

            return txn

        d1 = self.store.db.run_with_retry("deadlock_one", locker("first", (a, b)))
        d2 = other.db.run_with_retry("deadlock_two", locker("second", (b, a)))
        done = yield defer.gatherResults([d1, d2], consumeErrors=True)
        self.assertEqual(done, ["first", "second"])
        # One of the two is aborted and runs again; its retry can race the
        # survivor for the row it just released and deadlock once more, so
        # "at least one" (each retry is one more attempt) is the property.
        retries = self.store.db.retries + other.db.retries
        self.assertGreaterEqual(retries, 1)
        self.assertEqual(sum(attempts.values()), 2 + retries)
        seq_a = yield self.store.latest_seq(a)
        seq_b = yield self.store.latest_seq(b)
        self.assertEqual((seq_a, seq_b), (1, 1))


class AtomicMigrationTests:
    """Engines whose DDL is transactional (not MySQL, which commits each statement)."""

    @defer.inlineCallbacks
    def test_a_delta_that_fails_halfway_leaves_nothing_behind(self):
        self.db_url = self.url()  # a database of its own, still empty
        store = self.open_store()
        deltas = schema_deltas()
        self.patch(database_module, "schema_deltas", lambda: deltas[:1])
        yield store.db.migrate()  # as an older release left it
        # 002 failing after its CREATE TABLEs and copies, at the DROP
        broken = deltas[1][2].replace("DROP TABLE messages;", "DROP TABLE no_such_table;")
        self.assertNotEqual(broken, deltas[1][2])
        self.patch(database_module, "schema_deltas", lambda: [deltas[0], (2, "002", broken)])
        yield self.assertFailure(store.db.migrate(), Exception)

        def state(cur):
            cur.execute("SELECT MAX(version) FROM schema_version")
            version = cur.fetchone()[0]
            cur.execute("SELECT COUNT(*) FROM messages")  # still the first schema's table
            return int(version), int(cur.fetchone()[0])

        self.assertEqual((yield store.db.run_interaction("state", state)), (1, 0))
        self.patch(database_module, "schema_deltas", schema_deltas)
        version = yield store.db.migrate()  # no table of the failed attempt is in the way
        self.assertEqual(version, deltas[-1][0])

    @defer.inlineCallbacks
    def test_a_delta_that_fails_after_dropping_a_table_gives_it_back_with_its_rows(self):
        self.db_url = self.url()
        store = self.open_store()
        deltas = schema_deltas()
        self.patch(database_module, "schema_deltas", lambda: deltas[:1])
        yield store.db.migrate()

        def old_row(cur):
            cur.execute(
                "INSERT INTO messages (user_id, seq, sender_id, session_type, receiver_id,"
                " message_type, content, send_time) VALUES (7, 1, 7, 1, 8, 1, ?, 5)",
                (b"kept\x00",),
            )

        yield store.db.run_interaction("old_row", old_row)
        # 002 failing at its very last statement, after DROP TABLE messages
        broken = deltas[1][2].replace("CREATE VIEW messages AS", "CREATE VIEW messages AS SELEC")
        self.assertNotEqual(broken, deltas[1][2])
        self.patch(database_module, "schema_deltas", lambda: [deltas[0], (2, "002", broken)])
        yield self.assertFailure(store.db.migrate(), Exception)

        def state(cur):
            cur.execute("SELECT MAX(version) FROM schema_version")
            version = cur.fetchone()[0]
            cur.execute("SELECT user_id, seq, content FROM messages")
            return int(version), [(int(r[0]), int(r[1]), bytes(r[2])) for r in cur.fetchall()]

        after = yield store.db.run_interaction("state", state)
        self.assertEqual(after, (1, [(7, 1, b"kept\x00")]))
        self.patch(database_module, "schema_deltas", schema_deltas)
        version = yield store.db.migrate()
        self.assertEqual(version, deltas[-1][0])
        page, _ = yield store.sync(7, 0, 10)
        self.assertEqual([(m.seq, m.content) for m in page], [(1, b"kept\x00")])


class SQLiteStore(StoreTests, AtomicMigrationTests, unittest.TestCase):
    def url(self) -> str:
        return "sqlite:" + tempfile.mkdtemp(prefix="gochat-store-") + "/gochat.db"


class PostgresStore(ConcurrentWriterTests, AtomicMigrationTests, unittest.TestCase):
    def url(self) -> str:
        return services.postgres_database(self)

    @defer.inlineCallbacks
    def test_integer_rows_are_one_statement_of_one_text_whatever_their_count(self):
        """Multi-row upserts of integers go as arrays: 3 rows and 700 rows run the
        same statement once each (and update rows that exist); other rows keep
        their placeholders."""
        seen: list[str] = []

        def txn(cur: Any) -> list[tuple[Any, ...]]:
            real = cur.txn

            class Recording:
                def execute(self, sql: str, params: Any = None) -> Any:
                    seen.append(sql)
                    return real.execute(sql, params)

            real.execute("CREATE TEMP TABLE ints (a BIGINT, b INT, c BIGINT, PRIMARY KEY (a, b))")
            sql = "INSERT INTO ints (a, b, c) VALUES"
            suffix = cur.engine.upsert_suffix("a, b", ["c"])
            engine, recording = cur.engine, Recording()
            engine.insert_rows(recording, sql, 3, [1, 1, 10, 2, 1, 20, -3, 2, 2**62], suffix)
            flat = [v for k in range(700) for v in (k, 1, k + 1000)]  # rows 1, 2 exist
            engine.insert_rows(recording, sql, 3, flat, suffix)
            engine.insert_rows(recording, "INSERT INTO ints (a, b, c) VALUES", 3, [9, 9, None])
            real.execute("SELECT a, b, c FROM ints ORDER BY a, b")
            return list(real.fetchall())

        rows = yield self.store.db.run_interaction("int_rows", txn)
        self.assertEqual(len(seen), 3)
        self.assertEqual(seen[0], seen[1])
        self.assertIn("unnest(", seen[0])
        self.assertNotIn("unnest(", seen[2])
        expected = {(k, 1): k + 1000 for k in range(700)}
        expected[(-3, 2)] = 2**62
        expected[(9, 9)] = None
        self.assertEqual({(a, b): c for a, b, c in rows}, expected)

    @defer.inlineCallbacks
    def test_an_int8_array_literal_reads_back_as_the_same_integers(self):
        values = [0, -1, 2**63 - 1, -(2**63), 7, 7]

        def txn(cur: Any) -> Any:
            cur.txn.execute("SELECT %s::int8[], %s::int8[]", (pg_int8_array(values), "{}"))
            return cur.txn.fetchone()

        got = yield self.store.db.run_interaction("int8_array", txn)
        self.assertEqual(list(got), [values, []])
        self.assertEqual(pg_int8_array([]), "{}")


class MySQLStore(ConcurrentWriterTests, AtomicMigrationTests, unittest.TestCase):
    """MySQL commits at each DDL statement: its deltas are undone step by step."""

    def url(self) -> str:
        return services.mysql_database(self)

    def admin(self) -> Any:
        conn = services.mysql_admin()
        self.addCleanup(conn.close)
        return conn

    @defer.inlineCallbacks
    def test_a_node_that_cannot_get_the_schema_lock_stops_with_a_clear_error(self):
        holder = self.admin()  # another node, still migrating
        with holder.cursor() as cur:
            cur.execute("SELECT GET_LOCK('gochat_schema', 5)")
            self.assertEqual(cur.fetchone()[0], 1)
        self.db_url = self.url()
        store = self.open_store()
        store.engine.schema_lock_timeout = 1
        failure = yield self.assertFailure(store.db.migrate(), MigrationError)
        self.assertIn("schema lock for 1s", str(failure))

        def tables(cur):
            cur.execute("SHOW TABLES")
            return cur.fetchall()

        self.assertEqual((yield store.db.run_interaction("tables", tables)), [])  # nothing ran
        with holder.cursor() as cur:
            cur.execute("SELECT RELEASE_LOCK('gochat_schema')")
        version = yield store.db.migrate()
        self.assertEqual(version, schema_deltas()[-1][0])

    @defer.inlineCallbacks
    def test_a_delta_with_a_step_that_cannot_be_undone_is_refused_before_it_runs(self):
        self.db_url = self.url()
        store = self.open_store()
        deltas = schema_deltas()
        self.patch(database_module, "schema_deltas", lambda: deltas[:1])
        yield store.db.migrate()
        bad = (
            "CREATE TABLE extra (a INTEGER);\n"
            "UPDATE users SET nickname = 'x';\n"  # then DDL again: its commit cannot be undone
            "CREATE TABLE b2 (a INTEGER);"
        )
        self.patch(database_module, "schema_deltas", lambda: [deltas[0], (2, "002_bad.sql", bad)])
        failure = yield self.assertFailure(store.db.migrate(), MigrationError)
        self.assertIn("002_bad.sql", str(failure))
        self.assertIn("cannot be undone", str(failure))

        def tables(cur):
            cur.execute("SHOW TABLES")
            return sorted(r[0] for r in cur.fetchall())

        names = yield store.db.run_interaction("tables", tables)
        self.assertNotIn("extra", names)

    @defer.inlineCallbacks
    def test_statements_are_cut_to_the_servers_packet_limit(self):
        """With max_allowed_packet at 1 MiB, a 6 MB batch still goes in (several statements)."""
        conn = self.admin()
        with conn.cursor() as cur:
            cur.execute("SELECT @@GLOBAL.max_allowed_packet")
            (before,) = cur.fetchone()
            cur.execute("SET GLOBAL max_allowed_packet = 1048576")

        def restore() -> None:
            with conn.cursor() as cur:
                cur.execute(f"SET GLOBAL max_allowed_packet = {int(before)}")

        self.addCleanup(restore)
        self.db_url = self.url()
        store = self.open_store()  # new connections read the new limit
        yield store.db.migrate()
        restore()  # the limit was read at connect; other tests' sessions are not held to it
        self.assertEqual(store.engine.max_packet, 1048576)
        a = yield store.create_user(f"big-a-{id(self)}", "a", "x")
        b = yield store.create_user(f"big-b-{id(self)}", "b", "x")
        items = []
        for n in range(100):
            msg = single(a, b, "")
            msg.content = os.urandom(30_000)
            items.append(UpItem(a, None, n + 1, msg))
        results = yield store.commit_messages(items)
        self.assertEqual([r.code for r in results], [codes.OK] * 100)
        rows = yield self.rows(store, b)
        self.assertEqual([c for _, c in rows], [it.message.content for it in items])


class MySQLLiterals(unittest.TestCase):
    def test_literals_read_the_same_in_any_sql_mode(self):
        from gochat.store.engines import mysql_literal

        self.assertEqual(mysql_literal(-(2**63)), str(-(2**63)))
        self.assertEqual(mysql_literal(b"\x00'\\"), "X'00275c'")
        self.assertEqual(mysql_literal(b""), "X''")
        self.assertEqual(mysql_literal("\u00e9"), "_utf8mb4 X'c3a9'")
        self.assertEqual(mysql_literal(None), "NULL")
        self.assertRaises(TypeError, mysql_literal, object())

    def test_every_step_of_the_shipped_deltas_is_reversible(self):
        """The shipped deltas pass MySQL's plan (else they could not be undone there)."""

        class Tables:
            def execute(self, sql: str, args: Any = None) -> None:
                pass

            def fetchall(self) -> list:
                return []

        engine = MySQLEngine({})
        for _, _name, sql in schema_deltas():
            statements = database_module._split_statements(sql.format(**engine.types))
            steps = engine.plan_delta(Tables(), statements)
            self.assertEqual(len(steps), len(statements))


class PostgresBinaryCopy(unittest.TestCase):
    def test_int8_rows_match_the_format_row_by_row(self):
        values = [1, 2, 3, 4, -1, 2**63 - 1, -(2**63), 0]
        data = pg_binary_int8_rows(values, 4)
        row = struct.Struct(">h" + "iq" * 4)
        expected = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
        for start in (0, 4):
            fields = []
            for v in values[start : start + 4]:
                fields += [8, v]
            expected += row.pack(4, *fields)
        self.assertEqual(data, expected + b"\xff\xff")


class MissingDriver(unittest.TestCase):
    """``--db`` naming an engine whose driver is not installed: one line naming the extra."""

    def hide(self, module: str) -> None:
        self.patch(sys, "modules", {**sys.modules, module: None})

    def test_postgresql_names_its_extra(self):
        self.hide("psycopg")
        with self.assertRaises(DatabaseURLError) as caught:
            engine_from_url("postgresql://u@127.0.0.1/db", "")
        self.assertIn("pip install 'gochat[postgresql]'", str(caught.exception))

    def test_mysql_names_its_extra(self):
        self.hide("MySQLdb")
        with self.assertRaises(DatabaseURLError) as caught:
            engine_from_url("mysql://root@127.0.0.1/db", "")
        self.assertIn("pip install 'gochat[mysql]'", str(caught.exception))

    @defer.inlineCallbacks
    def test_twistd_says_one_line_and_exits(self):
        hidden = tempfile.mkdtemp(prefix="gochat-nodriver-")
        with open(os.path.join(hidden, "psycopg.py"), "w") as f:
            f.write("raise ImportError('hidden by the test')\n")
        program = twistd() or sys.executable
        args = ([] if twistd() else ["-m", "twisted.scripts.twistd"]) + [
            "-n",
            "--pidfile=",
            "gochat",
            f"--db=postgresql://postgres@127.0.0.1:{free_port()}/gochat",
            f"--data-dir={tempfile.mkdtemp()}",
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("GOCHAT_")}
        env["PYTHONPATH"] = os.pathsep.join([hidden, *sys.path])
        out, err, code = yield utils.getProcessOutputAndValue(program, args, env=env)
        lines = err.decode().strip().splitlines()
        self.assertEqual(code, 2)
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("pip install 'gochat[postgresql]'", lines[0])


class SQLiteFileSettings(unittest.TestCase):
    """Page size and checkpoint interval of the connections the engine opens."""

    def connect(self, path: str) -> Any:
        import sqlite3

        from gochat.store.engines import SQLiteEngine

        conn = sqlite3.connect(path)
        self.addCleanup(conn.close)
        SQLiteEngine(path).on_connect(conn)
        return conn

    def pragma(self, conn: Any, name: str) -> int:
        return conn.execute(f"PRAGMA {name}").fetchone()[0]

    def test_a_new_file_gets_16k_pages_and_a_64mib_checkpoint(self):
        conn = self.connect(tempfile.mkdtemp(prefix="gochat-pages-") + "/new.db")
        conn.execute("CREATE TABLE t (a INTEGER)")
        conn.commit()
        self.assertEqual(self.pragma(conn, "page_size"), 16384)
        self.assertEqual(self.pragma(conn, "wal_autocheckpoint") * 16384, 64 * 1024 * 1024)
        self.assertEqual(self.pragma(conn, "journal_size_limit"), 64 * 1024 * 1024)

    def test_an_existing_file_keeps_its_page_size_and_its_rows(self):
        import sqlite3

        path = tempfile.mkdtemp(prefix="gochat-pages-") + "/old.db"
        old = sqlite3.connect(path)
        old.execute("PRAGMA page_size=4096")  # as an older release created it
        old.execute("PRAGMA journal_mode=WAL")
        old.execute("CREATE TABLE t (a INTEGER)")
        old.execute("INSERT INTO t VALUES (1)")
        old.commit()
        old.close()
        conn = self.connect(path)
        conn.execute("INSERT INTO t VALUES (2)")
        conn.commit()
        self.assertEqual(self.pragma(conn, "page_size"), 4096)
        # the checkpoint still comes every 64 MiB, in that file's pages
        self.assertEqual(self.pragma(conn, "wal_autocheckpoint") * 4096, 64 * 1024 * 1024)
        self.assertEqual(conn.execute("SELECT COUNT(*) FROM t").fetchone()[0], 2)
