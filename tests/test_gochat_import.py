"""``gochat-admin import-gochat``: a GoChat MySQL database into a node's database.

The source is made in a real MariaDB from the facts of issue 12
(:mod:`tests.gochat_source`); the targets are real SQLite, PostgreSQL and
MariaDB databases, read back with the node's own engine classes, and at the
end a real node serves the imported history to the bundled client.
"""

from __future__ import annotations

import io
import os
import tempfile
import time
import tracemalloc
import warnings
from datetime import UTC, timedelta

import jwt
from twisted.internet import defer
from twisted.trial import unittest

from gochat.admin import cli
from gochat.admin.gochat_import import GoChatImport, connect_engine, run_import
from gochat.pb import pb
from gochat.store.database import Cursor
from gochat.store.engines import engine_from_url
from tests import services
from tests.gochat_source import HUGE_ID, SALT, T0, gochat_database
from tests.util import Node

EXPECTED_LISTS = {
    1: [
        (1, 1, 1, 2, b"hi bob"),
        (2, 2, 1, 1, b"hi alice"),
        (3, 1, 2, 10, b"hello team"),
        (4, 1, 1, 2, b"twice"),
        (5, 1, 1, 2, b"twice"),
        (6, 3, 2, 10, b"from carol"),
        (7, 2, 2, 11, b"old group"),
        (8, 3, 2, 10, b"carol again"),
    ],
    3: [(1, 1, 2, 10, b"hello team"), (2, 3, 2, 10, b"carol again")],
}


def read(url: str, data_dir: str, sql: str, args: tuple = ()) -> list[tuple]:
    """Rows of the node's database, through the node's engine classes."""
    engine = engine_from_url(url, data_dir)
    conn = connect_engine(engine)
    try:
        cur = Cursor(conn.cursor(), engine)
        cur.execute(sql, args)
        return [
            tuple(bytes(v) if isinstance(v, memoryview) else v for v in r) for r in cur.fetchall()
        ]
    finally:
        conn.close()


class ImportInto:
    """The checks, against whichever target database :meth:`target_url` makes."""

    timeout = 120

    def target_url(self) -> str:
        raise NotImplementedError

    def setUp(self):
        self.src = gochat_database(self)
        self.data_dir = tempfile.mkdtemp(prefix="gochat-import-")
        self.url = self.target_url()

    def run_import(self):
        return run_import(self.src.url, self.url, self.data_dir, SALT, out=None)

    def rows(self, sql: str, args: tuple = ()) -> list[tuple]:
        return read(self.url, self.data_dir, sql, args)

    def everything(self) -> dict[str, list[tuple]]:
        tables = {
            "users": "id",
            "user_seq": "user_id",
            "friends": "user_id, friend_id",
            "chat_groups": "id",
            "group_members": "group_id, user_id",
            "message_bodies": "owner_id, owner_seq",
            "user_messages": "user_id, seq",
        }
        return {t: self.rows(f"SELECT * FROM {t} ORDER BY {k}") for t, k in tables.items()}

    def test_users_friends_groups_and_members_keep_their_ids(self):
        summary = self.run_import()
        users = self.rows("SELECT id, phone_number, nickname, password_hash FROM users ORDER BY id")
        self.assertEqual(
            [u[:3] for u in users],
            [
                (1, "13800000001", "alice"),
                (2, "13800000002", "bob"),
                (3, "13800000003", "carol"),
                (4, "13800000004", "dave"),
            ],
        )
        self.assertTrue(all(u[3].startswith(f"gochat-md5${SALT}$") for u in users))
        friends = self.rows("SELECT user_id, friend_id FROM friends ORDER BY user_id, friend_id")
        self.assertEqual(friends, [(1, 2), (1, 3), (2, 1), (3, 1)])
        groups = self.rows("SELECT id, name, owner_id FROM chat_groups ORDER BY id")
        self.assertEqual(groups, [(10, "team", 1), (12, "quiet", 4)])
        members = self.rows(
            "SELECT group_id, user_id FROM group_members ORDER BY group_id, user_id"
        )
        self.assertEqual(members, [(10, 1), (10, 2), (10, 3), (12, 4)])
        self.assertEqual((summary.users, summary.groups, summary.members), (4, 2, 4))

    def test_every_message_list_keeps_its_seqs_and_each_user_continues_after_them(self):
        self.run_import()
        for uid, expected in EXPECTED_LISTS.items():
            got = self.rows(
                "SELECT seq, sender_id, session_type, receiver_id, content FROM messages"
                " WHERE user_id = ? ORDER BY seq",
                (uid,),
            )
            self.assertEqual([(s, a, b, c, bytes(d)) for s, a, b, c, d in got], expected)
        bob = self.rows("SELECT seq FROM user_messages WHERE user_id = 2 ORDER BY seq")
        self.assertEqual([s for (s,) in bob], list(range(1, 9)))
        seqs = dict(self.rows("SELECT user_id, seq FROM user_seq"))
        self.assertEqual(seqs, {1: 8, 2: 8, 3: 2, 4: 0})
        times = self.rows("SELECT send_time FROM messages WHERE user_id = 1 ORDER BY seq")
        t0 = int(T0.replace(tzinfo=UTC).timestamp() * 1000)  # DATETIME read as UTC
        self.assertEqual((times[0][0], times[-1][0]), (t0, t0 + 7000))

    def test_copies_of_one_message_share_one_body_under_the_senders_entry(self):
        summary = self.run_import()
        pointers = dict(
            ((u, s), (o, os_))
            for u, s, o, os_ in self.rows(
                "SELECT user_id, seq, owner_id, owner_seq FROM user_messages"
            )
        )
        self.assertEqual(pointers[(2, 1)], (1, 1))  # bob's "hi bob" is alice's body
        self.assertEqual(pointers[(2, 3)], (1, 3))  # the group message: one body
        self.assertEqual(pointers[(3, 1)], (1, 3))
        self.assertEqual((pointers[(2, 4)], pointers[(2, 5)]), ((1, 4), (1, 5)))  # in seq order
        # Carol's own row of "from carol" is missing: each copy has its own body.
        self.assertEqual((pointers[(1, 6)], pointers[(2, 6)]), ((1, 6), (2, 6)))
        self.assertEqual(len(self.rows("SELECT owner_id FROM message_bodies")), 9)
        self.assertEqual((summary.bodies, summary.messages_new), (9, 18))

    def test_the_summary_says_what_was_skipped_and_why(self):
        summary = self.run_import()
        skipped = dict(summary.skipped)
        self.assertEqual(
            skipped,
            {
                f"users with an id above {2**63 - 1} (the node's ids are signed 64-bit)": 1,
                "friendships with a user who no longer exists": 1,
                "members of a group that no longer exists": 1,
                "members who no longer exist as users": 1,
                "message rows in the list of a user who no longer exists": 1,
            },
        )
        self.assertEqual(dict(summary.kept), {"message rows to a group that no longer exists": 2})
        text = "\n".join(summary.lines())
        self.assertIn("users: 4 imported", text)
        self.assertIn("messages: 19 rows read, 18 new list entries, 9 new bodies", text)
        self.assertIn("message rows/s", text)
        self.assertNotIn(str(HUGE_ID), self.rows("SELECT phone_number FROM users"))

    def test_a_second_run_changes_nothing(self):
        self.run_import()
        # A user who logged in since has an argon2id hash: the run must keep it.
        engine = engine_from_url(self.url, self.data_dir)
        conn = connect_engine(engine)
        Cursor(conn.cursor(), engine).execute(
            "UPDATE users SET password_hash = ? WHERE id = 1", ("$argon2id$v=19$upgraded",)
        )
        conn.commit()
        conn.close()
        before = self.everything()
        summary = self.run_import()
        self.assertEqual(self.everything(), before)
        self.assertEqual(
            (summary.users, summary.users_present, summary.messages_new, summary.bodies),
            (0, 4, 0, 0),
        )

    def test_a_target_holding_other_users_is_refused_in_one_line(self):
        engine = engine_from_url(self.url, self.data_dir)
        from gochat.store.database import apply_schema

        conn = connect_engine(engine)
        cur = Cursor(conn.cursor(), engine)
        apply_schema(cur, engine)
        cur.execute(
            "INSERT INTO users (phone_number, nickname, password_hash, created_at)"
            " VALUES ('555', 'stranger', 'x', 0)"
        )
        conn.commit()
        conn.close()
        out, err = io.StringIO(), io.StringIO()
        args = cli.build_parser().parse_args(
            ["import-gochat", "--from", self.src.url, "--salt", SALT, "--db", self.url]
            + ["--data-dir", self.data_dir, "--no-progress"]
        )
        self.assertEqual(cli.import_gochat(args, out, err), 1)
        lines = err.getvalue().splitlines()
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("already holds 1 user(s) that are not in the GoChat database", lines[0])
        self.assertEqual(len(self.rows("SELECT id FROM users")), 1)
        self.assertEqual(self.rows("SELECT COUNT(*) FROM user_messages"), [(0,)])

    def test_ids_the_node_generates_next_come_after_the_imported_ones(self):
        self.run_import()
        engine = engine_from_url(self.url, self.data_dir)
        conn = connect_engine(engine)
        cur = Cursor(conn.cursor(), engine)
        new_user = cur.insert_id(
            "INSERT INTO users (phone_number, nickname, password_hash, created_at)"
            " VALUES ('1390', 'new', 'x', 0)"
        )
        new_group = cur.insert_id(
            "INSERT INTO chat_groups (name, owner_id, created_at) VALUES ('new', 1, 0)"
        )
        conn.commit()
        conn.close()
        self.assertGreater(new_user, 4)
        self.assertGreater(new_group, 12)


class ImportIntoSQLite(ImportInto, unittest.TestCase):
    def target_url(self) -> str:
        return "sqlite:" + os.path.join(self.data_dir, "gochat.db")


class ImportIntoPostgreSQL(ImportInto, unittest.TestCase):
    def target_url(self) -> str:
        return services.postgres_database(self)


class ImportIntoMariaDB(ImportInto, unittest.TestCase):
    def target_url(self) -> str:
        return services.mysql_database(self)


class Refusals(unittest.TestCase):
    def test_a_source_that_is_not_mysql_is_one_line(self):
        err = io.StringIO()
        args = cli.build_parser().parse_args(
            ["import-gochat", "--from", "postgresql://x/y", "--salt", "s", "--no-progress"]
            + ["--data-dir", tempfile.mkdtemp()]
        )
        self.assertEqual(cli.import_gochat(args, io.StringIO(), err), 1)
        self.assertEqual(len(err.getvalue().splitlines()), 1)
        self.assertIn("mysql://", err.getvalue())

    def test_an_unreachable_source_is_one_line(self):
        err = io.StringIO()
        args = cli.build_parser().parse_args(
            ["import-gochat", "--from", "mysql://root@127.0.0.1:1/gochat", "--salt", "s"]
            + ["--data-dir", tempfile.mkdtemp(), "--no-progress"]
        )
        self.assertEqual(cli.import_gochat(args, io.StringIO(), err), 1)
        self.assertEqual(len(err.getvalue().splitlines()), 1)
        self.assertTrue(err.getvalue().startswith("gochat-admin: --from "), err.getvalue())


class Streaming(unittest.TestCase):
    timeout = 300

    def test_the_message_table_is_streamed_not_loaded(self):
        src = gochat_database(self)
        # 20,000 rows of 1 KiB (20 MiB of content) in 100 lists.
        content = bytes(1024)
        rows = []
        with src.conn.cursor() as cur:
            for i in range(20_000):
                uid = 1 + i % 2
                seq = 100 + i // 2
                rows.append((uid, 4, 1, uid, 1, content, seq, T0 + timedelta(seconds=i)))
                if len(rows) == 1000:
                    cur.executemany(
                        "INSERT INTO message (user_id, sender_id, session_type, receiver_id,"
                        " message_type, content, seq, send_time)"
                        " VALUES (%s,%s,%s,%s,%s,%s,%s,%s)",
                        rows,
                    )
                    rows = []
        src.conn.commit()
        data_dir = tempfile.mkdtemp(prefix="gochat-import-")
        target = engine_from_url("sqlite:gochat.db", data_dir)
        job = GoChatImport(src.url, target, SALT, out=None)
        tracemalloc.start()
        try:
            summary = job.run()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        self.assertEqual(summary.message_rows, 20_019)
        self.assertLess(peak, 10 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB for 20 MiB of rows")


class ImportedNode(unittest.TestCase):
    """A node started on the imported database serves it to the bundled clients."""

    timeout = 120

    @defer.inlineCallbacks
    def test_old_passwords_and_tokens_log_in_and_the_client_syncs_every_seq(self):
        src = gochat_database(self)
        data_dir = tempfile.mkdtemp(prefix="gochat-import-")
        key_file = os.path.join(data_dir, "from-gochat.key")
        with open(key_file, "w") as f:
            f.write("gochat\n")
        out, err = io.StringIO(), io.StringIO()
        args = cli.build_parser().parse_args(
            ["import-gochat", "--from", src.url, "--salt", SALT, "--data-dir", data_dir]
            + ["--jwt-key-file", key_file]
        )
        self.assertEqual(cli.import_gochat(args, out, err), 0, err.getvalue())
        self.assertIn("users: 4 imported", out.getvalue())
        self.assertIn("message rows  ", err.getvalue())  # the progress line
        self.assertIn("rows/s", err.getvalue())

        node = Node(data_dir, sync_limit=3)  # several sync pages
        yield node.start()
        self.addCleanup(node.stop)
        # Alice with her old GoChat password; the hash becomes argon2id.
        data = yield node.api().login("13800000001", "123456")
        self.assertEqual(int(data["user_id"]), 1)
        alice = yield node.connect(data["token"])
        self.addCleanup(alice.close)
        got = [
            (m.seq, m.sender_id, m.session_type, m.receiver_id, m.content) for m in alice.received
        ]
        self.assertEqual(got, EXPECTED_LISTS[1])
        self.assertEqual(alice.seq, 8)
        # Carol with a token GoChat issued before the move.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            token = jwt.encode({"user_id": 3, "exp": int(time.time()) + 600}, "gochat", "HS256")
        carol = yield node.connect(token)
        self.addCleanup(carol.close)
        self.assertEqual([m.seq for m in carol.received], [1, 2])
        # New messages continue each list after its imported seqs.
        seq = yield alice.send_text(10, "after the move", group=True)
        self.assertEqual(seq, 9)
        while carol.seq < 3:
            yield carol.sync()
        self.assertEqual(carol.received[-1].content, b"after the move")
        self.assertEqual(carol.received[-1].session_type, pb.ST_Group)
