"""The adbapi connection pools and named interactions.

Every database call is ``run_interaction("name", func, ...)``: the name shows
up in logs when the call is slow and in the store latency metric. Schema
deltas from :mod:`gochat.store.schema` are applied here at start.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Generator, Sequence
from importlib import resources
from typing import Any, TypeVar

from twisted.enterprise import adbapi
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from gochat import metrics
from gochat.store.engines import BaseEngine, MigrationError, Row, SQLiteEngine, SQLValue

T = TypeVar("T")

IN_LIST_CHUNK = 500  # values per IN (...) list: well inside every engine's limits
SLOW_INTERACTION = 1.0  # seconds; slower interactions are logged by name


class Refusal(Exception):
    """An interaction refused what a client asked (a taken phone number, an
    unknown user): the client's mistake, so not counted as a store error."""


class DatabaseUnavailable(Exception):
    """The database cannot be used at all (pool closed, file gone)."""


class Cursor:
    """A DB-API cursor that takes ``?`` placeholders whatever the dialect."""

    def __init__(self, txn: Any, engine: BaseEngine) -> None:
        self.txn = txn
        self.engine = engine

    def execute(self, sql: str, args: Sequence[SQLValue] = ()) -> Any:
        return self.txn.execute(self.engine.convert_sql(sql), tuple(args))

    def select_in(
        self, sql: str, values: Sequence[SQLValue], extra: Sequence[SQLValue] = ()
    ) -> list[Row]:
        """Rows of ``sql`` (its ``{marks}`` the ``?`` of an ``IN`` list) for every value.

        The values go 500 a statement, each statement's parameters followed
        by ``extra``; the rows come back chunk after chunk, so a sorted list
        of values read with an ``ORDER BY`` on them stays sorted.
        """
        rows: list[Row] = []
        for start in range(0, len(values), IN_LIST_CHUNK):
            chunk = values[start : start + IN_LIST_CHUNK]
            self.execute(sql.format(marks=",".join("?" * len(chunk))), [*chunk, *extra])
            rows += self.txn.fetchall()
        return rows

    def executemany(self, sql: str, rows: Sequence[Sequence[SQLValue]]) -> None:
        if rows:
            self.engine.executemany(self.txn, self.engine.convert_sql(sql), rows)

    def insert_id(self, sql: str, args: Sequence[SQLValue] = ()) -> int:
        """Run an ``INSERT`` into a table with an ``id`` key; returns the new id."""
        return self.engine.insert_id(self.txn, self.engine.convert_sql(sql), tuple(args))

    def insert_many(self, sql: str, rows: Sequence[Sequence[SQLValue]], suffix: str = "") -> None:
        """``INSERT INTO t (a, b) VALUES`` + many rows, as few multi-row statements.

        One statement per row (``executemany``) makes the database thread
        give up and take back the GIL once per row; while the reactor is busy
        each take-back waits for a switch interval. A few statements of
        thousands of rows each are faster on every engine.
        """
        if rows:
            self.insert_flat(sql, len(rows[0]), [v for row in rows for v in row], suffix)

    def insert_flat(
        self, sql: str, width: int, values: Sequence[SQLValue], suffix: str = ""
    ) -> None:
        """:meth:`insert_many` with the rows already laid end to end in ``values``
        (``width`` values each): a caller building many rows skips a tuple per row."""
        if values:
            self.engine.insert_rows(self.txn, sql, width, values, suffix)

    def write_rows(
        self,
        table: str,
        columns: tuple[str, ...],
        kinds: tuple[str, ...],
        values: Sequence[SQLValue],
    ) -> None:
        """Append many rows (laid end to end in ``values``) by the engine's bulk path:
        binary COPY on PostgreSQL, packet-sized literal INSERTs on MySQL,
        multi-row INSERTs on SQLite. ``kinds``: ``bigint``, ``int`` or ``blob``."""
        if values:
            self.engine.write_rows(self.txn, table, columns, kinds, values)

    def read_seqs(self, users: list[int]) -> list[tuple[int, int]]:
        """``(user_id, seq)`` of ``users`` (sorted), locked in that order where the
        engine locks rows; the engine picks the cheapest statement."""
        return self.engine.read_seqs(self.txn, users) if users else []

    def write_seqs(self, seqs: dict[int, int]) -> None:
        """Store new seqs of users whose ``user_seq`` row exists."""
        if seqs:
            self.engine.write_seqs(self.txn, seqs)

    def fetchone(self) -> Any:
        return self.txn.fetchone()

    def fetchall(self) -> list[Row]:
        return list(self.txn.fetchall())

    @property
    def rowcount(self) -> int:
        count: int = self.txn.rowcount
        return count

    @property
    def lastrowid(self) -> int:
        row_id: int = self.txn.lastrowid
        return row_id


class Database:
    """Owns the pools. SQLite gets one writer connection and a few readers."""

    log = Logger()

    def __init__(self, engine: BaseEngine, max_connections: int = 8) -> None:
        self.engine = engine
        #: transactions the database aborted and :meth:`run_with_retry` ran again
        self.retries = 0
        common = {
            "cp_openfun": engine.on_connect,
            "cp_noisy": False,
            **engine.pool_kwargs(),
            **engine.connect_kwargs,
        }
        if isinstance(engine, SQLiteEngine):
            directory = os.path.dirname(os.path.abspath(engine.path))
            os.makedirs(directory, mode=0o700, exist_ok=True)
            self.write_pool = adbapi.ConnectionPool(engine.driver, cp_min=1, cp_max=1, **common)
            self.read_pool = adbapi.ConnectionPool(engine.driver, cp_min=1, cp_max=3, **common)
        else:
            self.write_pool = adbapi.ConnectionPool(
                engine.driver, cp_min=1, cp_max=max_connections, **common
            )
            self.read_pool = self.write_pool

    def _timed(self, name: str, d: defer.Deferred[T]) -> defer.Deferred[T]:
        started = time.monotonic()

        def done(result: T | Failure) -> T | Failure:
            elapsed = time.monotonic() - started
            metrics.STORE_LATENCY.labels(name).observe(elapsed)
            if elapsed > SLOW_INTERACTION:
                self.log.warn("slow interaction {name}: {elapsed:.3f}s", name=name, elapsed=elapsed)
            return result

        def failed(failure: Failure) -> T | Failure:
            if not failure.check(Refusal):  # the client's doing, not the database's
                metrics.STORE_ERRORS.labels(name).inc()
            return done(failure)

        return d.addCallbacks(done, failed)

    def run_interaction(
        self, name: str, func: Callable[..., T], *args: Any, write: bool = True, **kwargs: Any
    ) -> defer.Deferred[T]:
        """Run ``func(cursor, *args)`` in one transaction on a pool thread."""
        engine = self.engine
        pool = self.write_pool if write else self.read_pool

        def interaction(txn: Any) -> T:
            return func(Cursor(txn, engine), *args, **kwargs)

        return self._timed(name, pool.runInteraction(interaction))

    @defer.inlineCallbacks
    def run_with_retry(
        self, name: str, func: Callable[..., T], *args: Any, attempts: int = 5
    ) -> Generator[defer.Deferred[T], T, T]:
        """Like :meth:`run_interaction`, retrying when the database aborts the transaction."""
        for attempt in range(attempts):
            try:
                result = yield self.run_interaction(name, func, *args)
                return result
            except Exception as exc:
                if attempt + 1 < attempts and self.engine.is_retryable(exc):
                    self.retries += 1
                    self.log.info("retrying {name} after {exc}", name=name, exc=exc)
                    continue
                raise
        # Reached only when ``attempts`` < 1 (the function never ran).
        raise ValueError(f"run_with_retry needs attempts >= 1, not {attempts}")

    def ping(self) -> defer.Deferred[None]:
        """Fires when the database answers a query; fails with the reason it does not."""
        if not self.read_pool.running:
            return defer.fail(DatabaseUnavailable("connection pool is closed"))
        engine = self.engine
        if isinstance(engine, SQLiteEngine) and engine.path != ":memory:":
            # An open connection keeps reading a deleted file: check the path too.
            if not os.path.exists(engine.path):
                return defer.fail(DatabaseUnavailable(f"{engine.path} is missing"))

        def probe(cur: Cursor) -> None:
            cur.execute("SELECT 1")
            cur.fetchall()

        return self.run_interaction("ping", probe, write=False)

    def migrate(self) -> defer.Deferred[int]:
        if isinstance(self.engine, SQLiteEngine):
            # Before the first connection opens the file; a failure here (a
            # directory in the file's place) is a start error like any other.
            try:
                private_sqlite_files(self.engine.path)
            except OSError as exc:
                return defer.fail(exc)
        return self.run_interaction("apply_schema", apply_schema, self.engine)

    def close(self) -> None:
        """Close the pools (once: a second call, e.g. at shutdown, does nothing)."""
        for pool in {id(p): p for p in (self.write_pool, self.read_pool)}.values():
            if pool.running:
                pool.close()


#: Multi-row statements shorter than this are not split further.
SMALL_STATEMENT_ROWS = 64


def statement_sizes(rows: int, most: int) -> list[int]:
    """Rows per statement for ``rows`` rows: full ones, then halves, then the rest.

    A driver keeps each distinct statement text prepared (SQLite's module
    holds 128 of them, and a statement of 8,000 rows is 3 MB prepared and
    40 ms to prepare); cut at the arbitrary remainder of each batch, almost
    every batch made new ones, which cost the preparation every time and
    filled the cache with multi-megabyte statements (+100 MB in the group
    benchmark). These sizes come from a dozen shapes that recur.
    """
    sizes = [most] * (rows // most)
    rest = rows - most * len(sizes)
    size = most // 2
    while rest and size >= SMALL_STATEMENT_ROWS:
        if rest >= size:
            sizes.append(size)
            rest -= size
        size //= 2
    if rest:
        sizes.append(rest)
    return sizes


def private_sqlite_files(path: str) -> None:
    """Make the SQLite database (it holds password hashes) readable by this user only.

    The file is created 0600 before SQLite opens it; SQLite gives its
    ``-wal`` and ``-shm`` files the database file's mode. Files an older
    version left 0644 are tightened too.
    """
    if path == ":memory:" or path.startswith("file:"):
        return
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT, 0o600))
    for name in (path, path + "-wal", path + "-shm"):
        try:
            mode = os.stat(name).st_mode
        except FileNotFoundError:
            continue
        if mode & 0o077:
            os.chmod(name, mode & 0o700)


def schema_deltas() -> list[tuple[int, str, str]]:
    """``(version, name, sql)`` of every delta shipped in the package, in order."""
    found: list[tuple[int, str, str]] = []
    for entry in resources.files("gochat.store.schema").iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:3].isdigit():
            found.append((int(name[:3]), name, entry.read_text(encoding="utf-8")))
    return sorted(found)


def apply_schema(cur: Cursor, engine: BaseEngine) -> int:
    """Bring the schema up to date; returns the version reached."""
    engine.lock_schema(cur.txn)
    try:
        cur.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        cur.execute("SELECT MAX(version) FROM schema_version")
        row = cur.fetchone()
        current = row[0] if row and row[0] is not None else 0
        for version, name, sql in schema_deltas():
            if version <= current:
                continue
            statements = _split_statements(sql.format(**engine.types))
            if engine.transactional_ddl:
                for statement in statements:
                    cur.execute(statement)
                cur.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
            else:
                _apply_reversibly(cur, engine, name, version, statements)
            current = version
        return current
    finally:
        engine.unlock_schema(cur.txn)


def _apply_reversibly(
    cur: Cursor, engine: BaseEngine, name: str, version: int, statements: list[str]
) -> None:
    """Apply one delta on a database whose DDL commits as it goes (MySQL).

    Each statement's undo is known before the first one runs; when one
    fails, what already ran is undone in reverse order, so the database is
    left as the previous version had it and the next start tries again.
    """
    try:
        steps = engine.plan_delta(cur.txn, statements)
    except MigrationError as exc:
        raise MigrationError(f"{name}: {exc}") from None
    done = []
    try:
        for step in steps:
            cur.txn.execute(step.sql)
            done.append(step)
        cur.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
        cur.txn.execute("COMMIT")
    except Exception as exc:
        try:
            cur.txn.execute("ROLLBACK")  # rows written since the last DDL statement
        except Exception:
            pass  # the connection is gone: the server rolled back already
        for step in reversed(done):
            for undo in step.undo:
                try:
                    cur.txn.execute(undo)
                except Exception as undo_exc:  # keep undoing the rest; say what is left
                    Database.log.error(
                        "schema {name}: could not undo {sql!r}: {exc}",
                        name=name,
                        sql=step.sql,
                        exc=undo_exc,
                    )
        raise MigrationError(f"{name} failed and was undone: {exc}") from exc
    for step in steps:
        for after in step.after:
            cur.txn.execute(after)


def _split_statements(sql: str) -> list[str]:
    lines = [line for line in sql.splitlines() if not line.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
