"""The store against every engine: SQLite, PostgreSQL and MariaDB/MySQL.

The same tests run on each database. The server databases also get what only
they allow: several Store instances (several "nodes", each with its own
connection pool) committing for the same users at once, which must leave every
user's seqs gapless and duplicate-free, never deadlock on group messages, and
retry a transaction the database aborts.
"""

from __future__ import annotations

import tempfile
import threading
from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from gochat import codes
from gochat.pb import pb
from gochat.store import Database, NotFound, Store, UpItem, engine_from_url
from gochat.store import database as database_module
from gochat.store import store as store_module
from gochat.store.database import schema_deltas
from tests import services


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
        self.assertEqual(self.store.db.retries + other.db.retries, 1)
        self.assertEqual(sorted(attempts.values()), [1, 2])
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


class SQLiteStore(StoreTests, AtomicMigrationTests, unittest.TestCase):
    def url(self) -> str:
        return "sqlite:" + tempfile.mkdtemp(prefix="gochat-store-") + "/gochat.db"


class PostgresStore(ConcurrentWriterTests, AtomicMigrationTests, unittest.TestCase):
    def url(self) -> str:
        return services.postgres_database(self)


class MySQLStore(ConcurrentWriterTests, unittest.TestCase):
    def url(self) -> str:
        return services.mysql_database(self)


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
