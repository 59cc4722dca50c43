"""One small engine class per SQL dialect.

Everything that differs between SQLite, PostgreSQL and MySQL/MariaDB lives
here (driver, parameter style, column types, connection setup, row locks,
which errors are worth a retry), so the queries in :mod:`gochat.store.store`
are written once, with ``?`` placeholders.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

SQLITE_CACHE_KIB = 16 * 1024  # page cache per SQLite connection (see on_connect)
SQLITE_PAGE_SIZE = 16384  # bytes, for new database files
SQLITE_CHECKPOINT_KIB = 64 * 1024  # WAL size that triggers a checkpoint


class DatabaseURLError(ValueError):
    """The ``--db`` value cannot be understood."""


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

    def executemany(self, cursor: Any, sql: str, rows: list) -> None:
        """Run ``sql`` once per row (drivers batch differently; see subclasses)."""
        cursor.executemany(sql, rows)

    def insert_id(self, cursor: Any, sql: str, args: tuple) -> int:
        """Run an ``INSERT`` (already converted) and return the new row's ``id``."""
        cursor.execute(sql, args)
        return int(cursor.lastrowid)

    def lock_schema(self, cursor: Any) -> None:  # noqa: B027 - optional hook
        """Serialize migrations when several nodes start against one database."""

    def unlock_schema(self, cursor: Any) -> None:  # noqa: B027 - optional hook
        """Release what :meth:`lock_schema` took (if it outlives the transaction)."""

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
            # SQLite allows 32766 variables since 3.32, 999 before
            max_params=32000 if sqlite3.sqlite_version_info >= (3, 32) else 999,
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
        # Write diffusion appends to every recipient's part of the user_messages
        # index at once: 16 KiB pages split a quarter as often as 4 KiB ones
        # (about a third more rows per second). It only takes effect while
        # the file is still empty, i.e. for a new database; an older one keeps
        # its page size.
        conn.execute(f"PRAGMA page_size={SQLITE_PAGE_SIZE}")
        # WAL lets readers run beside the writer; FULL makes each commit durable.
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        # Write diffusion appends to every recipient's part of the user_messages
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


class PostgresEngine(BaseEngine):
    def __init__(self, kwargs: dict[str, Any]) -> None:
        super().__init__(
            name="postgresql",
            driver="psycopg2",
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
        conn.set_session(isolation_level="READ COMMITTED", autocommit=False)

    def executemany(self, cursor: Any, sql: str, rows: list) -> None:
        # psycopg2's executemany is one round trip per row; a 500-member group
        # message would pay 500 of them. execute_batch sends pages of statements.
        from psycopg2.extras import execute_batch

        execute_batch(getattr(cursor, "_cursor", cursor), sql, rows, page_size=500)

    def insert_id(self, cursor: Any, sql: str, args: tuple) -> int:
        cursor.execute(sql + " RETURNING id", args)  # psycopg2 has no lastrowid
        return int(cursor.fetchone()[0])

    def lock_schema(self, cursor: Any) -> None:
        # Released at commit; a second node waits here, then sees the new version.
        cursor.execute("SELECT pg_advisory_xact_lock(7411010)")

    def is_unique_violation(self, exc: BaseException) -> bool:
        return getattr(exc, "pgcode", None) == "23505"

    def is_retryable(self, exc: BaseException) -> bool:
        return getattr(exc, "pgcode", None) in ("40001", "40P01")

    def pool_kwargs(self) -> dict[str, Any]:
        return {"cp_reconnect": True}

    def describe(self) -> str:
        kw = self.connect_kwargs
        return f"postgresql://{kw.get('host', '')}:{kw.get('port', '')}/{kw.get('dbname', '')}"


class MySQLEngine(BaseEngine):
    def __init__(self, kwargs: dict[str, Any]) -> None:
        kwargs = {"charset": "utf8mb4", "autocommit": False, **kwargs}
        super().__init__(
            name="mysql",
            driver="pymysql",
            max_params=32000,  # the protocol limit is 65535
            connect_kwargs=kwargs,
            types={
                "autoinc_pk": "BIGINT AUTO_INCREMENT PRIMARY KEY",
                "blob": "LONGBLOB",
                "bigint": "BIGINT",
                "text_key": "VARCHAR(128)",
                "without_rowid": "",
            },
        )

    def convert_sql(self, sql: str) -> str:
        return sql.replace("?", "%s")

    def upsert_suffix(self, key: str, columns: list[str]) -> str:
        updates = ", ".join(f"{c} = VALUES({c})" for c in columns)
        return f" ON DUPLICATE KEY UPDATE {updates}"

    def on_connect(self, conn: Any) -> None:
        cur = conn.cursor()
        cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
        cur.close()

    def lock_schema(self, cursor: Any) -> None:
        # DDL commits implicitly in MySQL, so the lock is a session lock, released below.
        cursor.execute("SELECT GET_LOCK('gochat_schema', 60)")
        cursor.fetchall()

    def unlock_schema(self, cursor: Any) -> None:
        # Commit first: the next node must see our schema_version rows once it has
        # the lock. (MySQL's DDL is not transactional, so there is nothing to undo.)
        cursor.execute("COMMIT")
        cursor.execute("SELECT RELEASE_LOCK('gochat_schema')")
        cursor.fetchall()

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
        return PostgresEngine(kwargs)
    if parsed.scheme in ("mysql", "mariadb"):
        kwargs = {
            "host": parsed.hostname or "127.0.0.1",
            "port": parsed.port or 3306,
            "database": unquote(parsed.path.lstrip("/")) or "gochat",
            "user": unquote(parsed.username) if parsed.username else "root",
            "password": unquote(parsed.password) if parsed.password else "",
            "connect_timeout": 10,
        }
        return MySQLEngine(kwargs)
    raise DatabaseURLError(
        f"unsupported database URL {url!r}: use sqlite:PATH, postgresql://… or mysql://…"
    )
