"""Throw-away databases and Redis key prefixes on the machine's real services.

Each helper creates something uniquely named for one test, registers its
removal with the test case, and calls :func:`tests.util.missing_service` when
the service is not there (a skip locally, a failure under CI).
"""

from __future__ import annotations

import os
import uuid
from typing import Any

from tests.util import missing_service

PG_HOST = os.environ.get("GOCHAT_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("GOCHAT_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("GOCHAT_TEST_PG_USER", "postgres")
MY_HOST = os.environ.get("GOCHAT_TEST_MYSQL_HOST", "127.0.0.1")
MY_PORT = int(os.environ.get("GOCHAT_TEST_MYSQL_PORT", "3306"))
MY_USER = os.environ.get("GOCHAT_TEST_MYSQL_USER", "root")
REDIS_HOST = os.environ.get("GOCHAT_TEST_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("GOCHAT_TEST_REDIS_PORT", "6379"))


def unique_name(prefix: str = "gochat_test") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def _fresh_database(
    test: Any, what: str, connect: Any, errors: Any, create: str, drop: str, url: str
) -> str:
    """Create a database named ``unique_name()`` with ``create`` (a format string
    for the name), drop it with ``drop`` after ``test``; returns ``url`` with the name."""
    name = unique_name()
    try:
        conn = connect(connect_timeout=3)
    except errors as exc:
        missing_service(f"{what}: {exc}".strip())

    def run(conn: Any, sql: str) -> None:
        with conn.cursor() as cur:
            cur.execute(sql.format(name))
        conn.close()

    run(conn, create)
    test.addCleanup(lambda: run(connect(), drop))
    return url.format(name)


def postgres_database(test: Any) -> str:
    """Create a fresh PostgreSQL database; returns its ``postgresql://`` URL."""
    try:
        import psycopg2
    except ImportError:
        missing_service("psycopg2 is not installed (pip install '.[postgresql]')")

    def connect(**kwargs: Any) -> Any:
        conn = psycopg2.connect(
            host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", **kwargs
        )
        conn.autocommit = True
        return conn

    return _fresh_database(
        test,
        f"PostgreSQL at {PG_HOST}:{PG_PORT}",
        connect,
        psycopg2.OperationalError,
        'CREATE DATABASE "{}"',
        'DROP DATABASE IF EXISTS "{}" WITH (FORCE)',
        f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{{}}",
    )


def mysql_database(test: Any) -> str:
    """Create a fresh MariaDB/MySQL database; returns its ``mysql://`` URL."""
    try:
        import pymysql
    except ImportError:
        missing_service("PyMySQL is not installed (pip install '.[mysql]')")

    def connect(**kwargs: Any) -> Any:
        return pymysql.connect(host=MY_HOST, port=MY_PORT, user=MY_USER, **kwargs)

    return _fresh_database(
        test,
        f"MariaDB/MySQL at {MY_HOST}:{MY_PORT}",
        connect,
        pymysql.err.OperationalError,
        "CREATE DATABASE `{}` CHARACTER SET utf8mb4",
        "DROP DATABASE IF EXISTS `{}`",
        f"mysql://{MY_USER}@{MY_HOST}:{MY_PORT}/{{}}",
    )


def redis_prefix(test: Any) -> tuple[str, str]:
    """A reachable Redis and a key prefix of its own; returns ``(url, prefix)``.

    Every key under the prefix is deleted after the test.
    """
    import socket

    try:
        with socket.create_connection((REDIS_HOST, REDIS_PORT), timeout=3) as sock:
            sock.sendall(b"PING\r\n")
            if not sock.recv(64).startswith(b"+PONG"):
                missing_service(f"Redis at {REDIS_HOST}:{REDIS_PORT} did not answer PING")
    except OSError as exc:
        missing_service(f"Redis at {REDIS_HOST}:{REDIS_PORT}: {exc}")
    prefix = unique_name("gochat-test") + ":"
    test.addCleanup(delete_redis_keys, prefix)
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/0", prefix


def delete_redis_keys(prefix: str) -> int:
    """Delete every key under ``prefix`` (blocking; tests only)."""
    import socket

    def command(sock: socket.socket, *args: str) -> bytes:
        out = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
        sock.sendall(out.encode())
        return _read_reply(sock.makefile("rb"))

    with socket.create_connection((REDIS_HOST, REDIS_PORT), timeout=5) as sock:
        keys = command(sock, "KEYS", prefix.replace("*", "\\*") + "*")
        for key in keys:
            command(sock, "DEL", key.decode())
        return len(keys)


def _read_reply(f: Any) -> Any:
    line = f.readline().rstrip(b"\r\n")
    kind, rest = line[:1], line[1:]
    if kind in (b"+", b"-"):
        return rest
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)
        return data[:-2]
    if kind == b"*":
        return [_read_reply(f) for _ in range(int(rest))]
    raise ValueError(f"unexpected Redis reply {line!r}")


def poll_until(check: Any, timeout: float, interval: float = 0.05, what: str = "condition") -> Any:
    """Call ``check()`` (a value or a Deferred) until it is truthy; fires with it.

    Time is the reactor's: fails with AssertionError once ``timeout`` seconds
    have passed without success. No blind sleeps: each round waits ``interval``.
    """
    from twisted.internet import defer, reactor, task

    @defer.inlineCallbacks
    def run() -> Any:
        deadline = reactor.seconds() + timeout
        while True:
            result = yield defer.maybeDeferred(check)
            if result:
                return result
            if reactor.seconds() >= deadline:
                raise AssertionError(f"{what} not reached within {timeout}s (last: {result!r})")
            yield task.deferLater(reactor, interval, lambda: None)

    return run()


CLUSTER_SECRET = b"test-cluster-secret-0123456789"


def cluster_config(test: Any, lease: float = 15.0, database: str = "postgresql") -> dict:
    """Config overrides for in-process cluster nodes sharing one database and Redis prefix."""
    import tempfile

    db = postgres_database(test) if database == "postgresql" else mysql_database(test)
    redis_url, prefix = redis_prefix(test)
    directory = tempfile.mkdtemp(prefix="gochat-cluster-")
    secret = os.path.join(directory, "cluster.secret")
    with open(secret, "wb") as f:
        f.write(CLUSTER_SECRET)
    token_key = os.path.join(directory, "token.key")
    with open(token_key, "wb") as f:
        f.write(os.urandom(32).hex().encode())
    return {
        "secret_file": token_key,
        "db": db,
        "redis": redis_url,
        "redis_prefix": prefix,
        "presence_lease": lease,
        "cluster_secret_file": secret,
        "rpc": "tcp:0:interface=127.0.0.1",
    }
