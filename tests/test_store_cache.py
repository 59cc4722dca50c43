"""The store's caches are bounded, and seqs stay gapless when entries are evicted.

A real SQLite store (the engine whose seqs are served from the cache) with
caches far smaller than its users and groups, so every batch evicts.
"""

from __future__ import annotations

import tempfile
from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from gochat import codes
from gochat.store import Database, Store, UpItem, engine_from_url
from gochat.store.cache import LRU
from tests.test_store_engines import group, single


class LRUBounds(unittest.TestCase):
    def test_the_least_recently_used_entry_goes_first(self):
        cache: LRU[int, int] = LRU(3)
        cache.update({1: 10, 2: 20, 3: 30})
        cache.touch([1])  # 2 is now the oldest
        cache.put(4, 40)
        self.assertEqual((len(cache), 2 in cache, cache.get(1)), (3, False, 10))
        self.assertEqual(cache.evictions, 1)

    def test_a_weighed_cache_bounds_the_total_weight(self):
        cache: LRU[int, tuple[int, ...]] = LRU(10, len)
        cache.put(1, tuple(range(6)))
        cache.put(2, tuple(range(6)))  # 12 > 10: group 1 goes
        self.assertEqual((1 in cache, 2 in cache, cache.weight), (False, True, 6))
        cache.put(3, tuple(range(11)))  # heavier than the whole cache: not kept
        self.assertEqual((3 in cache, cache.weight), (False, 6))
        cache.pop(2)
        self.assertEqual((len(cache), cache.weight), (0, 0))

    def test_updating_cached_keys_replaces_them_and_marks_them_used_in_order(self):
        cache: LRU[int, int] = LRU(3)
        cache.update({1: 10, 2: 20, 3: 30})
        cache.update({3: 33, 1: 11})  # 2 is now the oldest, then 3
        self.assertEqual((cache.get(1), cache.get(3), len(cache)), (11, 33, 3))
        cache.put(4, 40)
        self.assertNotIn(2, cache)
        cache.put(5, 50)
        self.assertNotIn(3, cache)
        self.assertEqual(sorted(cache._data), [1, 4, 5])

    def test_get_does_not_reorder(self):
        cache: LRU[int, int] = LRU(2)
        cache.update({1: 1, 2: 2})
        cache.get(1)  # a read from the database thread
        cache.put(3, 3)
        self.assertNotIn(1, cache)


class EvictionKeepsSeqsGapless(unittest.TestCase):
    timeout = 120
    USERS = 12

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        url = "sqlite:" + tempfile.mkdtemp(prefix="gochat-cache-") + "/gochat.db"
        database = Database(engine_from_url(url, ""))
        self.addCleanup(database.close)
        self.store = Store(database, cache_users=3, cache_group_members=5)
        yield database.migrate()
        self.ids = []
        for i in range(self.USERS):
            uid = yield self.store.create_user(f"cache{i}", f"c{i}", "x")
            self.ids.append(uid)

    @defer.inlineCallbacks
    def test_seqs_continue_without_gaps_after_their_users_were_evicted(self):
        ids = self.ids
        small = yield self.store.create_group(ids[0], "small", ids[1:4])  # 4 members: cached
        big = yield self.store.create_group(ids[0], "big", ids[1:])  # 12: never cached
        expected = {u: 0 for u in ids}
        for round_ in range(5):
            items = []
            for i, sender in enumerate(ids):
                items.append(
                    UpItem(sender, None, round_ * 10 + i, single(sender, ids[-1 - i], "s"))
                )
                expected[sender] += 1
                expected[ids[-1 - i]] += 1 if ids[-1 - i] != sender else 0
            items.append(UpItem(ids[1], None, 900 + round_, group(ids[1], small, "g")))
            items.append(UpItem(ids[2], None, 950 + round_, group(ids[2], big, "G")))
            for u in ids[:4]:
                expected[u] += 1
            for u in ids:
                expected[u] += 1
            results = yield self.store.commit_messages(items)
            self.assertEqual({r.code for r in results}, {codes.OK})
            # every batch touches 12 users: the cache never holds more than 3
            self.assertLessEqual(len(self.store._users), 3)
            self.assertLessEqual(self.store._group_cache.weight, 5)
        self.assertGreater(self.store._users.evictions, 0)
        self.assertIn(small, self.store._group_cache)
        self.assertNotIn(big, self.store._group_cache)
        for uid in ids:
            rows = yield self.seqs(uid)
            self.assertEqual(rows, list(range(1, expected[uid] + 1)), uid)
            latest = yield self.store.latest_seq(uid)
            self.assertEqual(latest, expected[uid])

    @defer.inlineCallbacks
    def test_a_message_to_an_evicted_user_is_still_delivered(self):
        a, b = self.ids[0], self.ids[1]
        yield self.store.commit_messages([UpItem(a, None, 1, single(a, b, "one"))])
        # push b out of the cache with traffic among the others
        others = self.ids[2:]
        yield self.store.commit_messages(
            [UpItem(u, None, 1, single(u, others[0], "x")) for u in others[1:]]
        )
        self.assertNotIn(b, self.store._users)
        (result,) = yield self.store.commit_messages([UpItem(a, None, 2, single(a, b, "two"))])
        self.assertEqual((result.code, result.rows), (codes.OK, [(a, 2), (b, 2)]))
        missing = 10**12  # a user that does not exist is still refused
        (refused,) = yield self.store.commit_messages([UpItem(a, None, 3, single(a, missing, "?"))])
        self.assertEqual(refused.code, codes.NO_DATA)

    def seqs(self, user_id: int) -> defer.Deferred:
        def txn(cur: Any) -> list[int]:
            cur.execute("SELECT seq FROM user_messages WHERE user_id = ? ORDER BY seq", (user_id,))
            return [int(r[0]) for r in cur.fetchall()]

        return self.store.db.run_interaction("test_seqs", txn, write=False)


class StatementShapes(unittest.TestCase):
    """Multi-row INSERTs come in a few recurring sizes, so prepared statements are reused."""

    def test_any_row_count_is_covered_by_full_halves_and_a_small_rest(self):
        from gochat.store.database import SMALL_STATEMENT_ROWS, statement_sizes

        shapes = set()
        for rows in range(0, 20_001, 7):
            sizes = statement_sizes(rows, 8000)
            self.assertEqual(sum(sizes), rows)
            shapes.update(s for s in sizes if s > 2 * SMALL_STATEMENT_ROWS - 4)
        # before: one shape per remainder, i.e. almost one per batch
        self.assertEqual(shapes, {8000, 4000, 2000, 1000, 500, 250, 125})

    def test_distinct_statements_stay_few_and_small_whatever_the_batch_sizes(self):
        """A prepared statement's memory grows with its rows: count the rows of distinct texts."""
        import sqlite3

        from gochat.store.database import Cursor
        from gochat.store.engines import SQLiteEngine

        path = tempfile.mkdtemp(prefix="gochat-shapes-") + "/t.db"
        engine = SQLiteEngine(path)
        conn = sqlite3.connect(path)
        self.addCleanup(conn.close)
        conn.execute("CREATE TABLE t (a, b, c, d)")
        cur = Cursor(conn.cursor(), engine)
        texts: dict[str, int] = {}
        real_execute = cur.txn.execute

        class Spy:
            def execute(self, sql: str, args: Any = ()) -> Any:
                texts[sql] = len(args) // 4
                return real_execute(sql, args)

        cur.txn = Spy()
        for rows in range(1, 3001, 13):
            cur.insert_flat("INSERT INTO t (a, b, c, d) VALUES", 4, [1] * (4 * rows))
        # 231 batches of 1..3,000 rows: about 346,000 rows of distinct statements
        # when each batch's size made its own; now the halves and small rests
        self.assertLess(sum(texts.values()), 12_000)


class WriterBatchRows(unittest.TestCase):
    """A batch is bounded by the recipient rows it writes, not only by its messages."""

    @defer.inlineCallbacks
    def test_messages_to_big_cached_groups_go_in_several_transactions(self):
        from gochat.logic.writer import MessageWriter

        url = "sqlite:" + tempfile.mkdtemp(prefix="gochat-rows-") + "/gochat.db"
        database = Database(engine_from_url(url, ""))
        self.addCleanup(database.close)
        store = Store(database)
        yield database.migrate()
        accounts = yield store.create_users([(f"r{i}", "r", "!") for i in range(50)])
        ids = [a.user_id for a in accounts]
        gids = []
        for _ in range(3):
            gid = yield store.create_group(ids[0], "g", ids[1:])
            yield store.commit_messages([UpItem(ids[0], None, 0, group(ids[0], gid, "warm"))])
            gids.append(gid)
        item = UpItem(ids[0], None, 2, group(ids[0], gids[0], "x"))
        self.assertEqual(store.rows_estimate(item), 50)
        # a batch's later messages to a group share its members' runs
        seen: set[int] = set()
        self.assertEqual([store.rows_estimate(item, seen) for _ in range(3)], [50, 1, 1])
        # a group not cached yet may be as big as any: the caller says what to assume
        cold = UpItem(ids[0], None, 3, group(ids[0], max(gids) + 1, "x"))
        self.assertEqual(store.rows_estimate(cold), 1)
        self.assertEqual(store.rows_estimate(cold, None, 1000), 1000)

        batches: list[int] = []
        real_commit = store.commit_messages

        def commit(items: list[UpItem]) -> defer.Deferred:
            batches.append(len(items))
            return real_commit(items)

        store.commit_messages = commit  # type: ignore[method-assign]
        done: list[int] = []
        ready = [False]  # queue everything first, as a burst would
        writer = MessageWriter(
            store,
            lambda item, owner, r: done.append(r.code),
            lambda item, owner: None,
            may_start=lambda: ready[0],
            max_rows=120,  # two groups of 50 a transaction, and their messages
        )
        for cid in range(1, 16):  # five to each group in turn
            writer.submit(UpItem(ids[0], None, cid, group(ids[0], gids[(cid - 1) // 5], "m")), None)
        ready[0] = True
        writer.resume()
        yield writer.wait_idle()
        self.assertEqual(batches, [10, 5])
        self.assertEqual(done, [codes.OK] * 15)
        latest = yield store.latest_seq(ids[7])
        self.assertEqual(latest, 18)  # three warm-ups + 15, no gaps
