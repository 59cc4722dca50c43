"""One small engine class per SQL dialect.

Everything that differs between SQLite, PostgreSQL and MySQL/MariaDB lives
here (driver, parameter style, column types, connection setup, row locks,
which errors are worth a retry), so the queries in :mod:`gochat.store.store`
are written once, with ``?`` placeholders.
"""

from __future__ import annotations

import importlib
import os
import re
import sqlite3
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlparse

SQLITE_CACHE_KIB = 16 * 1024  # page cache per SQLite connection (see on_connect)
SQLITE_PAGE_SIZE = 16384  # bytes, for new database files
SQLITE_CHECKPOINT_KIB = 64 * 1024  # WAL size that triggers a checkpoint


#: seconds a starting node waits for another node's migration (MySQL's GET_LOCK)
SCHEMA_LOCK_TIMEOUT = 60
#: bytes kept free under MySQL's ``max_allowed_packet`` (packet header, slack)
PACKET_MARGIN = 4096


#: A value bound to a statement parameter: what every supported driver takes
#: (``mysql_literal`` writes each of them out).
SQLValue = int | float | str | bytes | bytearray | memoryview | None
#: A result row as the driver gives it (column types depend on the driver).
Row = tuple[Any, ...]


class DatabaseURLError(ValueError):
    """The ``--db`` value cannot be understood."""


class MigrationError(Exception):
    """The schema cannot be brought up to date (lock not had, delta not applicable)."""


@dataclass
class Step:
    """One statement of a schema delta, as MySQL runs it, and how to take it back."""

    sql: str
    #: statements that undo ``sql`` once it has run (empty: nothing to undo)
    undo: list[str] = field(default_factory=list)
    #: statements to run once the whole delta has committed (drops put off till then)
    after: list[str] = field(default_factory=list)


@dataclass
class BaseEngine:
    """Dialect hooks; subclasses fill them in."""

    name: str = "base"
    driver: str = ""
    connect_kwargs: dict[str, Any] = field(default_factory=dict)
    #: True when one writer process owns the database (seqs can be served from memory).
    single_writer: bool = False
    types: dict[str, str] = field(default_factory=dict)
    #: bound parameters one statement may carry (multi-row INSERTs)
    max_params: int = 999
    #: the pip extra that installs :attr:`driver` (named in the start error)
    extra: str = ""
    #: True when DDL runs inside the migration's transaction (rolled back on failure)
    transactional_ddl: bool = True

    def check_driver(self) -> None:
        """Import the driver now, so a missing one is a one-line start error."""
        try:
            importlib.import_module(self.driver)
        except ImportError:
            raise DatabaseURLError(
                f"{self.name} needs the {self.driver} driver, which is not installed:"
                f" pip install 'gochat[{self.extra}]'"
            ) from None

    def insert_rows(
        self, txn: Any, sql: str, width: int, values: Sequence[SQLValue], suffix: str = ""
    ) -> None:
        """``sql`` (``INSERT INTO t (..) VALUES``, converted) + ``values`` laid end to
        end, ``width`` per row, as few multi-row statements as the limits allow."""
        from gochat.store.database import statement_sizes  # (database imports engines)

        per_statement = max(1, self.max_params // width)
        group = "(" + ",".join("?" * width) + ")"
        start = 0
        for rows in statement_sizes(len(values) // width, per_statement):
            chunk = values[start : start + rows * width]
            start += rows * width
            marks = ",".join([group] * rows)
            txn.execute(self.convert_sql(f"{sql} {marks}{suffix}"), chunk)

    def write_rows(
        self,
        txn: Any,
        table: str,
        columns: tuple[str, ...],
        kinds: tuple[str, ...],
        values: Sequence[SQLValue],
    ) -> None:
        """Append rows to ``table`` by this database's bulk path.

        ``values`` are the rows laid end to end, ``kinds`` each column's type
        (``bigint``, ``int`` or ``blob``). The default is multi-row INSERTs.
        """
        sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES"
        self.insert_rows(txn, sql, len(columns), values)

    def read_seqs(self, txn: Any, users: list[int]) -> list[tuple[int, int]]:
        """``(user_id, seq)`` of ``users`` (sorted), their rows locked in that order."""
        found: list[tuple[int, int]] = []
        suffix = self.lock_rows_suffix()
        for start in range(0, len(users), 500):
            chunk = users[start : start + 500]
            marks = ",".join("?" * len(chunk))
            txn.execute(
                self.convert_sql(
                    f"SELECT user_id, seq FROM user_seq WHERE user_id IN ({marks})"
                    f" ORDER BY user_id{suffix}"
                ),
                chunk,
            )
            found += txn.fetchall()
        return found

    def write_seqs(self, txn: Any, seqs: dict[int, int]) -> None:
        """Set ``user_seq`` of users whose row exists (every user a batch sequenced has one)."""
        values = [v for item in seqs.items() for v in item]
        self.insert_rows(
            txn,
            "INSERT INTO user_seq (user_id, seq) VALUES",
            2,
            values,
            self.upsert_suffix("user_id", ["seq"]),
        )

    def convert_sql(self, sql: str) -> str:
        return sql

    def on_connect(self, conn: Any) -> None:  # noqa: B027 - optional hook
        """Per-connection setup (pragmas, session variables)."""

    def lock_rows_suffix(self) -> str:
        """Appended to the ``SELECT`` that reads seqs for update."""
        return " FOR UPDATE"

    def upsert_suffix(self, key: str, columns: list[str]) -> str:
        """Turns a multi-row ``INSERT`` into an update of rows whose ``key`` exists."""
        updates = ", ".join(f"{c} = excluded.{c}" for c in columns)
        return f" ON CONFLICT ({key}) DO UPDATE SET {updates}"

    def is_unique_violation(self, exc: BaseException) -> bool:
        raise NotImplementedError

    def is_retryable(self, exc: BaseException) -> bool:
        """Deadlocks and serialization failures: the database asks for a retry."""
        return False

    def pool_kwargs(self) -> dict[str, Any]:
        return {}

    def executemany(self, cursor: Any, sql: str, rows: Sequence[Sequence[SQLValue]]) -> None:
        """Run ``sql`` once per row (drivers batch differently; see subclasses)."""
        cursor.executemany(sql, rows)

    def insert_id(self, cursor: Any, sql: str, args: tuple[SQLValue, ...]) -> int:
        """Run an ``INSERT`` (already converted) and return the new row's ``id``."""
        cursor.execute(sql, args)
        return int(cursor.lastrowid)

    def lock_schema(self, cursor: Any) -> None:  # noqa: B027 - optional hook
        """Serialize migrations when several nodes start against one database."""

    def unlock_schema(self, cursor: Any) -> None:  # noqa: B027 - optional hook
        """Release what :meth:`lock_schema` took (if it outlives the transaction)."""

    def plan_delta(self, cursor: Any, statements: list[str]) -> list[Step]:
        """The steps of a delta and their undo (used where :attr:`transactional_ddl`
        is False); the transaction itself undoes everything elsewhere."""
        return [Step(sql) for sql in statements]

    def describe(self) -> str:
        return self.name


class SQLiteEngine(BaseEngine):
    def __init__(self, path: str) -> None:
        super().__init__(
            name="sqlite",
            driver="sqlite3",
            connect_kwargs={
                "database": path,
                "check_same_thread": False,
                "timeout": 30,
                "isolation_level": "DEFERRED",
            },
            single_writer=True,
            # SQLite allows 32766 variables since 3.32 (999 before), but a
            # statement of 5,000 rows took 20-40 ms to prepare, paid by the
            # first batch to a big group after a start (a 10,000-member
            # group's first commit: 54-90 ms, 40-45 ms at 1,000 rows a
            # statement), and rows go no faster in bigger statements.
            max_params=6000 if sqlite3.sqlite_version_info >= (3, 32) else 999,
            types={
                "autoinc_pk": "INTEGER PRIMARY KEY AUTOINCREMENT",
                "blob": "BLOB",
                "bigint": "INTEGER",
                "text_key": "VARCHAR(128)",
                "without_rowid": " WITHOUT ROWID",  # one B-tree, not a table and an index
            },
        )
        self.path = path

    def lock_schema(self, cursor: Any) -> None:
        # Python's sqlite3 opens a transaction only before INSERT/UPDATE/DELETE:
        # without this, a delta's CREATE TABLEs would commit one by one, and a
        # delta failing halfway would leave tables that make its retry fail.
        # IMMEDIATE also takes the write lock, so two processes cannot both migrate.
        cursor.execute("BEGIN IMMEDIATE")

    def on_connect(self, conn: Any) -> None:
        # Write diffusion appends to every recipient's part of the user_runs
        # index at once: 16 KiB pages split a quarter as often as 4 KiB ones
        # (about a third more rows per second). It only takes effect while
        # the file is still empty, i.e. for a new database; an older one keeps
        # its page size.
        conn.execute(f"PRAGMA page_size={SQLITE_PAGE_SIZE}")
        # WAL lets readers run beside the writer; FULL makes each commit durable.
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        # Write diffusion appends to every recipient's part of the user_runs
        # index at once; with SQLite's 2 MiB default those pages keep being
        # evicted and re-read within one batch. 16 MiB holds them for groups
        # of a few thousand; 64 MiB ran no faster and kept 48 MB more resident
        # (the writer's cache fills up in one group benchmark).
        conn.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
        # A checkpoint copies every page changed since the last one into the
        # database file; those hot index pages change again in every batch, so
        # checkpointing every 64 MiB instead of every 1,000 pages copies each
        # of them far less often. The WAL file is cut back to that size after.
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        conn.execute(f"PRAGMA wal_autocheckpoint={SQLITE_CHECKPOINT_KIB * 1024 // page_size}")
        conn.execute(f"PRAGMA journal_size_limit={SQLITE_CHECKPOINT_KIB * 1024}")

    def lock_rows_suffix(self) -> str:
        return ""  # the single writer connection already serializes writes

    def is_unique_violation(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.IntegrityError) and "UNIQUE" in str(exc)

    def is_retryable(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)

    def describe(self) -> str:
        return f"sqlite:{self.path}"


_PG_COPY_TYPES = {"bigint": "int8", "int": "int4", "blob": "bytea"}
_PG_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags, header extension


def pg_binary_int8_rows(values: Sequence[int], width: int) -> bytes:
    """PostgreSQL's binary COPY data (header, rows, trailer) for rows of int8 only.

    ``values`` holds the rows end to end. Each row is a field count and, per
    field, a length (8) and the big-endian value: the values are packed in
    one ``struct`` call and moved into place with one strided slice
    assignment per byte position, so the cost does not grow with a Python
    call per row (a 500-member group message is 500 rows).
    """
    rows = len(values) // width
    row_size = 2 + 12 * width
    packed = struct.pack(f">{len(values)}q", *values)
    template = struct.pack(">h", width) + (b"\x00\x00\x00\x08" + bytes(8)) * width
    out = bytearray(template * rows)
    for field_no in range(width):
        dest = 2 + 12 * field_no + 4
        for byte in range(8):
            out[dest + byte :: row_size] = packed[8 * field_no + byte :: 8 * width]
    return _PG_SIGNATURE + bytes(out) + b"\xff\xff"


def pg_int8_array(values: Iterable[int]) -> str:
    """``values`` as PostgreSQL's text form of an ``int8[]`` (for ``%s::int8[]``).

    psycopg dumps a list element by element in Python; a batch's 500
    members' seqs read and written that way cost 1.7 ms of the node's CPU,
    and 0.7 ms as one ``str.join``.
    """
    return "{" + ",".join(map(str, values)) + "}"


class PostgresEngine(BaseEngine):
    def __init__(self, kwargs: dict[str, Any]) -> None:
        super().__init__(
            name="postgresql",
            driver="psycopg",
            extra="postgresql",
            max_params=32000,  # the protocol limit is 65535
            connect_kwargs=kwargs,
            types={
                "autoinc_pk": "BIGSERIAL PRIMARY KEY",
                "blob": "BYTEA",
                "bigint": "BIGINT",
                "text_key": "VARCHAR(128)",
                "without_rowid": "",
            },
        )

    def convert_sql(self, sql: str) -> str:
        return sql.replace("?", "%s")

    def on_connect(self, conn: Any) -> None:
        import psycopg

        conn.isolation_level = psycopg.IsolationLevel.READ_COMMITTED
        conn.autocommit = False

    def write_rows(
        self,
        txn: Any,
        table: str,
        columns: tuple[str, ...],
        kinds: tuple[str, ...],
        values: Sequence[SQLValue],
    ) -> None:
        # Binary COPY: no SQL to parse, no parameter list to bind, and no
        # statement size limit. Measured on the group scenario it takes the
        # node's CPU per delivery below SQLite's (see docs/operations/databases.rst).
        if not values:
            return
        raw = getattr(txn, "_cursor", txn)
        width = len(columns)
        sql = f"COPY {table} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)"
        with raw.copy(sql) as copy:
            if all(kind == "bigint" for kind in kinds):
                # every column is bigint, so every value is an int
                copy.write(pg_binary_int8_rows(cast("Sequence[int]", values), width))
            else:
                copy.set_types([_PG_COPY_TYPES[kind] for kind in kinds])
                for start in range(0, len(values), width):
                    copy.write_row(values[start : start + width])

    def insert_rows(
        self, txn: Any, sql: str, width: int, values: Sequence[SQLValue], suffix: str = ""
    ) -> None:
        # Rows of integers only (a batch's positions, conversation heads and
        # read rows; a group's members) go as one array per column, written
        # by str.join: one statement text whatever the row count, which
        # psycopg converts once and PostgreSQL prepares, instead of a
        # placeholder per value that psycopg parses and binds one by one
        # (50 rows of 4: 0.09 ms of node CPU against 0.7 ms; 500: 0.5 against 7).
        if values and all(type(v) is int for v in values):
            head = sql.rstrip()
            if head.upper().endswith("VALUES"):
                arrays = ", ".join(["%s::int8[]"] * width)
                txn.execute(
                    f"{head[:-6]}SELECT * FROM unnest({arrays}){suffix}",
                    [pg_int8_array(cast("Sequence[int]", values[i::width])) for i in range(width)],
                )
                return
        super().insert_rows(txn, sql, width, values, suffix)

    def read_seqs(self, txn: Any, users: list[int]) -> list[tuple[int, int]]:
        # One array parameter instead of 500 scalars: a third of the node's CPU
        # for this statement (and less for the server to parse).
        txn.execute(
            "SELECT user_id, seq FROM user_seq WHERE user_id = ANY(%s::int8[])"
            " ORDER BY user_id FOR UPDATE",
            (pg_int8_array(users),),
        )
        found: list[tuple[int, int]] = txn.fetchall()  # two int8 columns
        return found

    def write_seqs(self, txn: Any, seqs: dict[int, int]) -> None:
        if seqs:
            txn.execute(
                "UPDATE user_seq SET seq = v.seq FROM unnest(%s::int8[], %s::int8[])"
                " AS v(user_id, seq) WHERE user_seq.user_id = v.user_id",
                (pg_int8_array(seqs), pg_int8_array(seqs.values())),
            )

    def executemany(self, cursor: Any, sql: str, rows: Sequence[Sequence[SQLValue]]) -> None:
        # psycopg 3 pipelines executemany: one round trip for all rows.
        getattr(cursor, "_cursor", cursor).executemany(sql, rows)

    def insert_id(self, cursor: Any, sql: str, args: tuple[SQLValue, ...]) -> int:
        cursor.execute(sql + " RETURNING id", args)  # psycopg has no lastrowid
        return int(cursor.fetchone()[0])

    def lock_schema(self, cursor: Any) -> None:
        # Released at commit; a second node waits here, then sees the new version.
        cursor.execute("SELECT pg_advisory_xact_lock(7411010)")

    def is_unique_violation(self, exc: BaseException) -> bool:
        return getattr(exc, "sqlstate", None) == "23505"

    def is_retryable(self, exc: BaseException) -> bool:
        return getattr(exc, "sqlstate", None) in ("40001", "40P01")

    def pool_kwargs(self) -> dict[str, Any]:
        return {"cp_reconnect": True}

    def describe(self) -> str:
        kw = self.connect_kwargs
        return f"postgresql://{kw.get('host', '')}:{kw.get('port', '')}/{kw.get('dbname', '')}"


def mysql_literal(value: object) -> str:
    """``value`` as a MySQL literal that reads the same whatever the session's
    ``sql_mode`` (hex, so no backslash or quote rules apply)."""
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, bytes | bytearray | memoryview):
        return "X'" + bytes(value).hex() + "'"
    if isinstance(value, str):
        return "_utf8mb4 X'" + value.encode("utf-8").hex() + "'"
    if value is None:
        return "NULL"
    if isinstance(value, float):
        return repr(value)
    raise TypeError(f"no MySQL literal for {type(value).__name__}")


_INT_LITERAL = 21  # characters of the longest 64-bit integer literal, sign included
_IDENT = r"`?(\w+)`?"
_CREATE_TABLE = re.compile(rf"CREATE\s+TABLE\s+(IF\s+NOT\s+EXISTS\s+)?{_IDENT}", re.I)
_CREATE_VIEW = re.compile(rf"CREATE\s+(?:OR\s+REPLACE\s+)?VIEW\s+{_IDENT}", re.I)
_CREATE_INDEX = re.compile(rf"CREATE\s+(?:UNIQUE\s+)?INDEX\s+{_IDENT}\s+ON\s+{_IDENT}", re.I)
_ADD_COLUMN = re.compile(
    rf"ALTER\s+TABLE\s+{_IDENT}\s+ADD\s+(?:COLUMN\s+)?{_IDENT}\s+[^,]*$", re.I | re.S
)
_DROP = re.compile(rf"DROP\s+(TABLE|VIEW)\s+{_IDENT}\s*$", re.I)
_DML = re.compile(rf"(?:INSERT\s+INTO|UPDATE|DELETE\s+FROM)\s+{_IDENT}", re.I)


class MySQLEngine(BaseEngine):
    def __init__(self, kwargs: dict[str, Any]) -> None:
        kwargs = {"charset": "utf8mb4", "autocommit": False, **kwargs}
        super().__init__(
            name="mysql",
            # mysqlclient (C, libmariadb): about a tenth less node CPU per
            # delivery than PyMySQL on the group scenario, with the same
            # literal INSERTs (docs/operations/databases.rst).
            driver="MySQLdb",
            extra="mysql",
            max_params=32000,  # the protocol limit is 65535
            connect_kwargs=kwargs,
            transactional_ddl=False,
            types={
                "autoinc_pk": "BIGINT AUTO_INCREMENT PRIMARY KEY",
                "blob": "LONGBLOB",
                "bigint": "BIGINT",
                "text_key": "VARCHAR(128)",
                "without_rowid": "",
            },
        )
        #: the largest statement the server (and the driver) accept, in bytes: the
        #: smallest ``@@max_allowed_packet`` any of the pool's connections has seen
        #: (a session keeps the value it opened with)
        self.max_packet: int = 0
        self.schema_lock_timeout = SCHEMA_LOCK_TIMEOUT

    def convert_sql(self, sql: str) -> str:
        return sql.replace("?", "%s")

    def upsert_suffix(self, key: str, columns: list[str]) -> str:
        updates = ", ".join(f"{c} = VALUES({c})" for c in columns)
        return f" ON DUPLICATE KEY UPDATE {updates}"

    def on_connect(self, conn: Any) -> None:
        cur = conn.cursor()
        cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
        cur.execute("SELECT @@max_allowed_packet")
        server = int(cur.fetchone()[0])
        cur.close()
        client = getattr(conn, "max_allowed_packet", None) or server
        limit = min(server, int(client))
        self.max_packet = min(self.max_packet, limit) if self.max_packet else limit

    def insert_rows(
        self, txn: Any, sql: str, width: int, values: Sequence[SQLValue], suffix: str = ""
    ) -> None:
        # The values are written into the statement as literals: the driver
        # then has no parameter list to escape one value at a time, and each
        # statement is cut to fit max_allowed_packet (a batch of large
        # messages would otherwise fail whole, with "server has gone away").
        if not values:
            return
        sql = self.convert_sql(sql)
        room = (self.max_packet or 1024 * 1024) - PACKET_MARGIN
        room -= len(sql.encode()) + len(suffix.encode())
        if all(type(v) is int for v in values):
            row_size = width * _INT_LITERAL + 3
            step = max(1, room // row_size) * width
            group = "(" + ",".join(["%d"] * width) + "),"
            for start in range(0, len(values), step):
                chunk = values[start : start + step]
                rows = (group * (len(chunk) // width)) % tuple(chunk)
                txn.execute(f"{sql} {rows[:-1]}{suffix}")
            return
        statement: list[str] = []
        size = 0
        for start in range(0, len(values), width):
            row = "(" + ",".join(map(mysql_literal, values[start : start + width])) + ")"
            if statement and size + len(row) + 1 > room:
                txn.execute(f"{sql} {','.join(statement)}{suffix}")
                statement, size = [], 0
            statement.append(row)
            size += len(row) + 1
        txn.execute(f"{sql} {','.join(statement)}{suffix}")

    def read_seqs(self, txn: Any, users: list[int]) -> list[tuple[int, int]]:
        # The ids as literals: no parameter list for the driver to escape.
        found: list[tuple[int, int]] = []
        for start in range(0, len(users), 5000):
            ids = ",".join(map(str, map(int, users[start : start + 5000])))
            txn.execute(
                f"SELECT user_id, seq FROM user_seq WHERE user_id IN ({ids})"
                " ORDER BY user_id FOR UPDATE"
            )
            found += txn.fetchall()
        return found

    def lock_schema(self, cursor: Any) -> None:
        # DDL commits implicitly in MySQL, so the lock is a session lock, released below.
        cursor.execute("SELECT GET_LOCK('gochat_schema', %s)", (self.schema_lock_timeout,))
        (got,) = cursor.fetchone()
        if got != 1:
            raise MigrationError(
                f"another node held the schema lock for {self.schema_lock_timeout}s"
                " (a migration still running, or a stuck session); start again later"
                if got == 0
                else "GET_LOCK('gochat_schema') failed"
            )

    def unlock_schema(self, cursor: Any) -> None:
        # Commit first: the next node must see our schema_version rows once it has
        # the lock. After a failure the delta was taken back already (see plan_delta).
        cursor.execute("COMMIT")
        cursor.execute("SELECT RELEASE_LOCK('gochat_schema')")
        cursor.fetchall()

    def plan_delta(self, cursor: Any, statements: list[str]) -> list[Step]:
        """How each statement of a delta runs and is undone, decided before any runs.

        MySQL commits at every DDL statement, so a delta that fails halfway
        cannot be rolled back: each step must be reversible instead. A
        created table, view or index is dropped again, an added column
        removed, and a dropped table or view is only renamed aside until the
        delta has committed. Rows may be written only into tables the delta
        creates, or after its last DDL statement (then the transaction still
        holds them). Any other statement makes the delta fail here, before it
        has changed anything.
        """
        cursor.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE()"
        )
        existing = {str(r[0]).lower() for r in cursor.fetchall()}
        created: set[str] = set()
        last_ddl = max((i for i, sql in enumerate(statements) if not _DML.match(sql)), default=-1)
        steps = []
        for i, sql in enumerate(statements):
            if m := _CREATE_TABLE.match(sql):
                name = m.group(2).lower()
                undo = [] if m.group(1) and name in existing else [f"DROP TABLE IF EXISTS {name}"]
                steps.append(Step(sql, undo))
                created.add(name)
            elif m := _CREATE_VIEW.match(sql):
                steps.append(Step(sql, [f"DROP VIEW IF EXISTS {m.group(1)}"]))
                created.add(m.group(1).lower())
            elif m := _CREATE_INDEX.match(sql):
                steps.append(Step(sql, [f"DROP INDEX {m.group(1)} ON {m.group(2)}"]))
            elif m := _ADD_COLUMN.match(sql):
                steps.append(Step(sql, [f"ALTER TABLE {m.group(1)} DROP COLUMN {m.group(2)}"]))
            elif m := _DROP.match(sql):
                kind, name = m.group(1).upper(), m.group(2)
                aside = f"gochat_undo_{name}"[:64]
                steps.append(
                    Step(
                        f"RENAME TABLE {name} TO {aside}",
                        [f"RENAME TABLE {aside} TO {name}"],
                        [f"DROP {kind} IF EXISTS {aside}"],
                    )
                )
            elif (m := _DML.match(sql)) and (m.group(1).lower() in created or i > last_ddl):
                steps.append(Step(sql))
            else:
                raise MigrationError(
                    f"this statement cannot be undone on MySQL if the delta fails: {sql[:80]!r}"
                )
        return steps

    def is_unique_violation(self, exc: BaseException) -> bool:
        return bool(getattr(exc, "args", None)) and exc.args[0] == 1062

    def is_retryable(self, exc: BaseException) -> bool:
        # 1213 deadlock, 1205 lock wait timeout
        return bool(getattr(exc, "args", None)) and exc.args[0] in (1213, 1205)

    def pool_kwargs(self) -> dict[str, Any]:
        return {"cp_reconnect": True}

    def describe(self) -> str:
        kw = self.connect_kwargs
        return f"mysql://{kw.get('host', '')}:{kw.get('port', '')}/{kw.get('database', '')}"


def engine_from_url(url: str, data_dir: str) -> BaseEngine:
    """Build the engine for a ``--db`` value; raises :class:`DatabaseURLError`."""
    if url.startswith("sqlite:"):
        path = url[len("sqlite:") :]
        if path.startswith("//"):
            path = path[2:]
        if not path:
            raise DatabaseURLError("sqlite: needs a file path, e.g. sqlite:gochat.db")
        if not os.path.isabs(path) and data_dir and os.sep not in path:
            path = os.path.join(data_dir, path)
        return SQLiteEngine(path)
    parsed = urlparse(url)
    if parsed.scheme in ("postgresql", "postgres"):
        kwargs: dict[str, Any] = {
            "host": parsed.hostname or "127.0.0.1",
            "port": parsed.port or 5432,
            "dbname": unquote(parsed.path.lstrip("/")) or "gochat",
            "connect_timeout": 10,
        }
        if parsed.username:
            kwargs["user"] = unquote(parsed.username)
        if parsed.password:
            kwargs["password"] = unquote(parsed.password)
        for key, values in parse_qs(parsed.query).items():
            kwargs[key] = values[-1]
        engine: BaseEngine = PostgresEngine(kwargs)
        engine.check_driver()
        return engine
    if parsed.scheme in ("mysql", "mariadb"):
        kwargs = {
            "host": parsed.hostname or "127.0.0.1",
            "port": parsed.port or 3306,
            "database": unquote(parsed.path.lstrip("/")) or "gochat",
            "user": unquote(parsed.username) if parsed.username else "root",
            "password": unquote(parsed.password) if parsed.password else "",
            "connect_timeout": 10,
        }
        engine = MySQLEngine(kwargs)
        engine.check_driver()
        return engine
    raise DatabaseURLError(
        f"unsupported database URL {url!r}: use sqlite:PATH, postgresql://… or mysql://…"
    )
