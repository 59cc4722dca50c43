"""Move a GoChat (c58f9fc) MySQL database into a node's database.

GoChat keeps ``user``, ``friend``, ``group``, ``group_user`` and ``message``
(one full row per recipient: ``user_id`` is the recipient, ``seq`` theirs).
Users, friends, groups and members keep their ids. Each message row becomes
the recipient's list entry with the same seq; the copies of one message
(same sender, receiver, session type, send time and content) share one body
under the sender's own entry, and a copy whose sender row is gone gets a
body of its own. Passwords keep GoChat's ``md5(password + salt)`` as
``gochat-md5$<salt>$<hex>`` until the first login replaces it.

The message table is read once, sorted, through a server-side cursor, so
its size does not matter to memory; every write is an insert that leaves an
existing row alone, so a second run changes nothing. The node must be
stopped while it runs (a SQLite node serves seqs from memory).

This module is plain DB-API on one thread: an operator command, not the
reactor. It writes through the node's engine classes and schema deltas.
"""

from __future__ import annotations

import calendar
import importlib
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TextIO

from gochat.auth import gochat_md5_hash
from gochat.store.database import Cursor, apply_schema
from gochat.store.engines import (
    BaseEngine,
    MySQLEngine,
    PostgresEngine,
    Row,
    SQLiteEngine,
    SQLValue,
    engine_from_url,
)

MAX_ID = 2**63 - 1  # the node's ids are signed 64-bit
BATCH = 2000  # rows per insert transaction
ENTRY_BATCH = 10_000  # list entries (runs of one) per transaction (fewer commits)
#: copies of one (sender, receiver, session type, second) kept in memory while
#: grouping; a larger run (a client that sent no times) falls back to one body per row
RUN_LIMIT = 50_000
NICKNAME_MAX = 64
GROUP_NAME_MAX = 128
PHONE_MAX = 128
ST_SINGLE, ST_GROUP = 1, 2

#: a message_bodies row: owner_id, owner_seq, sender_id, session_type,
#: receiver_id, message_type, content, send_time
Body = tuple[int, int, int, int, int, int, bytes, int]
#: a list entry: user_id, seq, owner_id, owner_seq (written as a run of one)
Entry = tuple[int, int, int, int]


class ImportFailed(Exception):  # noqa: N818 - an operator-facing outcome, not a bug
    """The import cannot run; the message is one line for the operator."""


@dataclass
class Summary:
    users: int = 0
    users_present: int = 0
    friends: int = 0
    groups: int = 0
    members: int = 0
    message_rows: int = 0  # rows read from GoChat's message table
    messages_new: int = 0  # list entries the node did not hold before
    bodies: int = 0  # new bodies (one per message, shared by its copies)
    skipped: Counter[str] = field(default_factory=Counter)
    #: imported as they are, worth a word (e.g. history of a deleted group)
    kept: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        out = [
            f"users: {self.users:,} imported ({self.users_present:,} were already there)",
            f"friends: {self.friends:,}; groups: {self.groups:,}; members: {self.members:,}",
            f"messages: {self.message_rows:,} rows read, {self.messages_new:,} new list entries,"
            f" {self.bodies:,} new bodies",
        ]
        rate = self.message_rows / self.seconds if self.seconds > 0 else 0.0
        out.append(f"took {self.seconds:,.1f} s ({rate:,.0f} message rows/s)")
        if self.kept:
            out.append("kept as they are (seqs stay gap-free):")
            out.extend(f"  {n:,} {why}" for why, n in sorted(self.kept.items()))
        if self.skipped:
            out.append("skipped:")
            out.extend(f"  {n:,} {why}" for why, n in sorted(self.skipped.items()))
        else:
            out.append("skipped: nothing")
        return out


# -- connections ----------------------------------------------------------------


def connect_engine(engine: BaseEngine) -> Any:
    """A DB-API connection made as the node's pool makes them."""
    driver = importlib.import_module(engine.driver)
    conn = driver.connect(**engine.connect_kwargs)
    engine.on_connect(conn)
    return conn


def source_engine(url: str) -> MySQLEngine:
    if not url.startswith(("mysql://", "mariadb://")):
        raise ImportFailed(f"--from {url!r}: give GoChat's database as mysql://user@host/db")
    engine = engine_from_url(url, "")
    assert isinstance(engine, MySQLEngine)
    return engine


def open_source(engine: MySQLEngine) -> Any:
    """GoChat's database, read in one consistent snapshot, rows streamed."""
    # mysqlclient ships no type information ([tool.mypy] lets it be untyped)
    import MySQLdb
    import MySQLdb.cursors

    kwargs = dict(engine.connect_kwargs)
    kwargs["cursorclass"] = MySQLdb.cursors.SSCursor
    try:
        conn = MySQLdb.connect(**kwargs)
    except MySQLdb.MySQLError as exc:
        raise ImportFailed(f"--from {engine.describe()}: {exc}") from None
    cur = conn.cursor()
    cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
    cur.close()
    return conn


def stream(conn: Any, sql: str, args: tuple[SQLValue, ...] = ()) -> Iterator[Row]:
    """Rows of ``sql`` one at a time from a server-side cursor."""
    cur = conn.cursor()
    try:
        cur.execute(sql, args)
        while True:
            rows = cur.fetchmany(BATCH)
            if not rows:
                return
            yield from rows
    finally:
        cur.close()


def scalar(conn: Any, sql: str) -> Any:
    """The one value ``sql`` selects (the streamed result read to its end)."""
    rows = list(stream(conn, sql))
    return rows[0][0] if rows else None


def column_or_null(conn: Any, table: str, column: str) -> str:
    """``column`` if GoChat's ``table`` has it, else ``NULL`` (older schemas lack times)."""
    names = {str(row[0]).lower() for row in stream(conn, f"SHOW COLUMNS FROM `{table}`")}
    return f"`{column}`" if column.lower() in names else "NULL"


def millis(value: Any) -> int:
    """A DATETIME (read as UTC) in ms since the epoch; 0 for none."""
    if isinstance(value, datetime):
        return calendar.timegm(value.timetuple()) * 1000 + value.microsecond // 1000
    return 0


# -- progress ------------------------------------------------------------------


class Progress:
    """``[####....] 1,200,000/10,000,000 message rows  85,000 rows/s`` on a terminal."""

    def __init__(self, out: TextIO | None, total: int, what: str) -> None:
        self.out = out
        self.total = max(1, total)
        self.what = what
        self.started = time.monotonic()
        self.last = 0.0
        self.live = out is not None and out.isatty()

    def update(self, done: int, final: bool = False) -> None:
        if self.out is None:
            return
        now = time.monotonic()
        if not final and (not self.live or now - self.last < 0.25):
            return
        self.last = now
        rate = done / max(1e-9, now - self.started)
        width = 30
        filled = min(width, width * done // self.total)
        text = (
            f"[{'#' * filled}{'.' * (width - filled)}] {done:,}/{self.total:,} {self.what}"
            f"  {rate:,.0f} rows/s"
        )
        self.out.write(("\r" if self.live else "") + text + ("\n" if final else ""))
        self.out.flush()


# -- the import ----------------------------------------------------------------


class GoChatImport:
    """One run of ``gochat-admin import-gochat``."""

    def __init__(
        self,
        source_url: str,
        target: BaseEngine,
        salt: str,
        out: TextIO | None = sys.stderr,
    ) -> None:
        self.source_engine = source_engine(source_url)
        self.target = target
        self.salt = salt
        self.out = out
        self.summary = Summary()
        self.users: set[int] = set()
        self.groups: set[int] = set()
        self.max_seq: dict[int, int] = {}

    def say(self, text: str) -> None:
        if self.out is not None:
            self.out.write(text + "\n")
            self.out.flush()

    def run(self) -> Summary:
        started = time.monotonic()
        src = open_source(self.source_engine)
        try:
            if isinstance(self.target, SQLiteEngine):
                os.makedirs(os.path.dirname(os.path.abspath(self.target.path)), exist_ok=True)
            dst = connect_engine(self.target)
        except Exception as exc:
            src.close()
            raise ImportFailed(f"--db {self.target.describe()}: {exc}") from None
        try:
            cur = Cursor(dst.cursor(), self.target)
            apply_schema(cur, self.target)
            dst.commit()
            self._refuse_foreign_users(src, cur)
            self._users(src, dst, cur)
            self._friends(src, dst, cur)
            self._groups(src, dst, cur)
            self._members(src, dst, cur)
            before = _list_entries(cur), _count(cur, "message_bodies")
            self._messages(src, dst, cur)
            self.summary.messages_new = _list_entries(cur) - before[0]
            self.summary.bodies = _count(cur, "message_bodies") - before[1]
            self._seqs(src, dst, cur)
        finally:
            src.close()
            dst.close()
        self.summary.seconds = time.monotonic() - started
        return self.summary

    # -- checks ------------------------------------------------------------

    def _refuse_foreign_users(self, src: Any, cur: Cursor) -> None:
        """Only an empty node, or one holding this same import, is written to."""
        cur.execute("SELECT id, phone_number FROM users ORDER BY id")
        mine = cur.fetchall()
        if not mine:
            return
        foreign = 0
        example: tuple[Any, Any] | None = None
        for start in range(0, len(mine), BATCH):
            page = mine[start : start + BATCH]
            marks = ",".join(["%s"] * len(page))
            theirs: dict[int, Any] = dict(  # GoChat id -> phone, as the driver reads it
                stream(
                    src,
                    f"SELECT id, phone_number FROM `user` WHERE id IN ({marks})",
                    tuple(int(i) for i, _ in page),
                )
            )
            for uid, phone in page:
                if theirs.get(int(uid)) != phone:
                    foreign += 1
                    example = example or (uid, phone)
        if example is not None:  # set with the first foreign user
            raise ImportFailed(
                f"--db {self.target.describe()} already holds {foreign:,} user(s) that are not"
                f" in the GoChat database (e.g. id {example[0]}, phone {example[1]}):"
                " import into a new, empty node database"
            )

    # -- users, friends, groups, members ------------------------------------

    def _users(self, src: Any, dst: Any, cur: Cursor) -> None:
        skipped = self.summary.skipped
        batch: list[tuple[int, str, str, str, int]] = []

        def flush() -> None:
            ids = [row[0] for row in batch]
            present = _existing(cur, "users", "id", ids)
            new = [row for row in batch if row[0] not in present]
            self.summary.users_present += len(batch) - len(new)
            if new:
                cur.insert_many(
                    "INSERT INTO users (id, phone_number, nickname, password_hash, created_at)"
                    " VALUES",
                    new,
                )
                cur.insert_many(
                    "INSERT INTO user_seq (user_id, seq) VALUES",
                    [(row[0], 0) for row in new],
                    self.target.upsert_suffix("user_id", ["user_id"]),
                )
            dst.commit()
            self.summary.users += len(new)
            batch.clear()

        time_col = column_or_null(src, "user", "create_time")
        rows = stream(
            src,
            f"SELECT id, phone_number, nickname, password, {time_col} FROM `user` ORDER BY id",
        )
        for uid, phone, nickname, password, created in rows:
            uid = int(uid)
            if not 0 < uid <= MAX_ID:
                skipped[f"users with an id above {MAX_ID} (the node's ids are signed 64-bit)"] += 1
                continue
            phone = _text(phone)
            if not phone or len(phone) > PHONE_MAX:
                skipped["users with an empty or over-long phone number"] += 1
                continue
            nickname = _text(nickname)
            if len(nickname) > NICKNAME_MAX:
                skipped["nicknames shortened to 64 characters (user kept)"] += 1
                nickname = nickname[:NICKNAME_MAX]
            hashed = gochat_md5_hash(self.salt, _text(password))
            batch.append((uid, phone, nickname, hashed, millis(created)))
            self.users.add(uid)
            if len(batch) >= BATCH:
                flush()
        if batch:
            flush()
        self.target_sync_ids(cur, "users")
        dst.commit()

    def _friends(self, src: Any, dst: Any, cur: Cursor) -> None:
        def rows() -> Iterator[tuple[int, int, int]]:
            time_col = column_or_null(src, "friend", "create_time")
            for uid, fid, created in stream(
                src, f"SELECT user_id, friend_id, {time_col} FROM friend ORDER BY id"
            ):
                uid, fid = int(uid), int(fid)
                if uid not in self.users or fid not in self.users:
                    self.summary.skipped["friendships with a user who no longer exists"] += 1
                    continue
                yield (uid, fid, millis(created))

        self.summary.friends += self._insert_ignoring(
            dst, cur, "friends (user_id, friend_id, created_at)", "user_id, friend_id", rows()
        )

    def _groups(self, src: Any, dst: Any, cur: Cursor) -> None:
        skipped = self.summary.skipped

        def rows() -> Iterator[tuple[int, str, int, int]]:
            time_col = column_or_null(src, "group", "create_time")
            for gid, name, owner, created in stream(
                src, f"SELECT id, name, owner_id, {time_col} FROM `group` ORDER BY id"
            ):
                gid, owner = int(gid), int(owner)
                if not 0 < gid <= MAX_ID:
                    skipped[f"groups with an id above {MAX_ID}"] += 1
                    continue
                self.groups.add(gid)
                name = _text(name)
                if len(name) > GROUP_NAME_MAX:
                    skipped["group names shortened to 128 characters (group kept)"] += 1
                    name = name[:GROUP_NAME_MAX]
                yield (gid, name, owner, millis(created))

        self.summary.groups += self._insert_ignoring(
            dst, cur, "chat_groups (id, name, owner_id, created_at)", "id", rows()
        )
        self.target_sync_ids(cur, "chat_groups")
        dst.commit()

    def _members(self, src: Any, dst: Any, cur: Cursor) -> None:
        def rows() -> Iterator[tuple[int, int]]:
            for gid, uid in stream(src, "SELECT group_id, user_id FROM group_user ORDER BY id"):
                gid, uid = int(gid), int(uid)
                if gid not in self.groups:
                    self.summary.skipped["members of a group that no longer exists"] += 1
                elif uid not in self.users:
                    self.summary.skipped["members who no longer exist as users"] += 1
                else:
                    yield (gid, uid)

        self.summary.members += self._insert_ignoring(
            dst, cur, "group_members (group_id, user_id)", "group_id, user_id", rows()
        )

    def _insert_ignoring(
        self, dst: Any, cur: Cursor, table: str, key: str, rows: Iterator[tuple[SQLValue, ...]]
    ) -> int:
        """Insert what is not there yet (keyed by ``key``), in batches; returns rows read."""
        suffix = self.target.upsert_suffix(key, [key.split(",")[0].strip()])
        sql = f"INSERT INTO {table} VALUES"
        total = 0
        batch: list[tuple[SQLValue, ...]] = []
        for row in rows:
            batch.append(row)
            if len(batch) >= BATCH:
                cur.insert_many(sql, batch, suffix)
                dst.commit()
                total += len(batch)
                batch = []
        if batch:
            cur.insert_many(sql, batch, suffix)
            dst.commit()
            total += len(batch)
        return total

    def target_sync_ids(self, cur: Cursor, table: str) -> None:
        """Explicit ids were written: the next generated id must come after them."""
        if isinstance(self.target, PostgresEngine):
            cur.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
                f" GREATEST((SELECT MAX(id) FROM {table}), 1))"
            )

    # -- messages ---------------------------------------------------------

    def _messages(self, src: Any, dst: Any, cur: Cursor) -> None:
        total = scalar(src, "SELECT COUNT(*) FROM message") or 0
        progress = Progress(self.out, int(total), "message rows")
        bodies: list[Body] = []
        entries: list[Entry] = []
        body_suffix = self.target.upsert_suffix("owner_id, owner_seq", ["owner_id"])
        entry_suffix = self.target.upsert_suffix("user_id, last_seq", ["user_id"])

        def flush() -> None:
            # Each body is a stream of its own and each list entry a run of one.
            cur.insert_many(
                "INSERT INTO message_bodies (owner_id, owner_seq, sender_id, session_type,"
                " receiver_id, message_type, content, send_time, stream_owner, stream_seq,"
                " idx) VALUES",
                [(*b, b[0], b[1], 0) for b in bodies],
                body_suffix,
            )
            cur.insert_many(
                "INSERT INTO user_runs (user_id, last_seq, seq, stream_owner, stream_seq,"
                " first_idx) VALUES",
                [(u, seq, seq, o, o_seq, 0) for u, seq, o, o_seq in entries],
                entry_suffix,
            )
            dst.commit()
            bodies.clear()
            entries.clear()
            progress.update(self.summary.message_rows)

        rows = stream(
            src,
            "SELECT user_id, seq, sender_id, session_type, receiver_id, message_type, content,"
            " send_time FROM message"
            " ORDER BY sender_id, session_type, receiver_id, send_time, user_id, seq",
        )
        for run in self._runs(rows):
            self._place(run, bodies, entries)
            # Bodies carry the content (memory); list entries are four integers.
            if len(bodies) >= BATCH or len(entries) >= ENTRY_BATCH:
                flush()
        flush()
        progress.update(self.summary.message_rows, final=True)

    def _runs(self, rows: Iterator[Row]) -> Iterator[list[Row]]:
        """Consecutive rows of one (sender, session type, receiver, send time)."""
        run: list[Row] = []
        key: Row | None = None
        for row in rows:
            self.summary.message_rows += 1
            row_key = (row[2], row[3], row[4], row[7])
            if row_key != key or len(run) >= RUN_LIMIT:
                if run:
                    yield run
                run = []
                key = row_key
            run.append(row)
        if run:
            yield run

    def _place(self, run: list[Row], bodies: list[Body], entries: list[Entry]) -> None:
        """The run's rows as list entries; copies of one message share a body."""
        skipped = self.summary.skipped
        notes = self.summary.kept
        by_content: dict[bytes, list[Row]] = {}
        for row in run:
            user_id, seq, sender, session_type, receiver = (int(v) for v in row[:5])
            if user_id not in self.users:
                skipped["message rows in the list of a user who no longer exists"] += 1
                continue
            if not 0 < seq <= MAX_ID:
                skipped["message rows with a seq outside 1..2^63-1"] += 1
                continue
            # Kept, but said: dropping a row would leave a gap in its user's
            # seqs, and a client waits for the missing seq forever.
            if session_type == ST_GROUP and receiver not in self.groups:
                notes["message rows to a group that no longer exists"] += 1
            elif session_type not in (ST_SINGLE, ST_GROUP):
                notes["message rows of an unknown session type"] += 1
            by_content.setdefault(bytes(row[6] or b""), []).append(row)
        for content, copies in by_content.items():
            first = copies[0]
            sender = int(first[2])
            # The sender's own rows own the bodies, in seq order; the k-th copy
            # in each recipient's list belongs to the k-th of them.
            owners = [(sender, int(r[1])) for r in copies if int(r[0]) == sender]
            nth: Counter[int] = Counter()
            for owner in owners:
                bodies.append(_body(owner, first, content))
            for row in copies:
                user_id, seq = int(row[0]), int(row[1])
                if user_id == sender:
                    entries.append((user_id, seq, user_id, seq))
                    continue
                k = nth[user_id]
                nth[user_id] = k + 1
                if k < len(owners):
                    entries.append((user_id, seq, *owners[k]))
                else:  # no sender row for this copy: a body of its own
                    bodies.append(_body((user_id, seq), row, content))
                    entries.append((user_id, seq, user_id, seq))

    def _seqs(self, src: Any, dst: Any, cur: Cursor) -> None:
        """Each user's next seq continues after their highest imported one."""
        batch: list[tuple[int, int]] = []

        def flush() -> None:
            users = [u for u, _ in batch]
            current = _seq_of(cur, users)
            rows = [(u, s) for u, s in batch if s > current.get(u, 0)]
            if rows:
                cur.insert_many(
                    "INSERT INTO user_seq (user_id, seq) VALUES",
                    rows,
                    self.target.upsert_suffix("user_id", ["seq"]),
                )
            dst.commit()
            batch.clear()

        for uid, seq in stream(
            src, "SELECT user_id, MAX(seq) FROM message GROUP BY user_id ORDER BY user_id"
        ):
            uid, seq = int(uid), int(seq or 0)
            if uid in self.users and 0 < seq <= MAX_ID:
                batch.append((uid, seq))
                if len(batch) >= BATCH:
                    flush()
        if batch:
            flush()


def _body(owner: tuple[int, int], row: Row, content: bytes) -> Body:
    return (
        owner[0],
        owner[1],
        int(row[2]),
        int(row[3]),
        int(row[4]),
        int(row[5] or 0),
        content,
        millis(row[7]),
    )


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def _count(cur: Cursor, table: str) -> int:
    cur.execute(f"SELECT COUNT(*) FROM {table}")
    return int(cur.fetchone()[0])


def _list_entries(cur: Cursor) -> int:
    """Messages in all users' lists: each run holds last_seq - seq + 1."""
    cur.execute("SELECT COALESCE(SUM(last_seq - seq + 1), 0) FROM user_runs")
    return int(cur.fetchone()[0])


def _existing(cur: Cursor, table: str, column: str, ids: list[int]) -> set[int]:
    if not ids:
        return set()
    marks = ",".join("?" * len(ids))
    cur.execute(f"SELECT {column} FROM {table} WHERE {column} IN ({marks})", ids)
    return {int(r[0]) for r in cur.fetchall()}


def _seq_of(cur: Cursor, users: list[int]) -> dict[int, int]:
    marks = ",".join("?" * len(users))
    cur.execute(f"SELECT user_id, seq FROM user_seq WHERE user_id IN ({marks})", users)
    return {int(u): int(s) for u, s in cur.fetchall()}


def run_import(
    source_url: str,
    target_url: str,
    data_dir: str,
    salt: str,
    out: TextIO | None = sys.stderr,
) -> Summary:
    """Import ``source_url`` (GoChat's MySQL) into the node database ``target_url``."""
    try:
        target = engine_from_url(target_url, data_dir)
    except ValueError as exc:
        raise ImportFailed(f"--db: {exc}") from None
    return GoChatImport(source_url, target, salt, out).run()
