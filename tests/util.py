"""Shared test fixtures: a real node on ephemeral ports, cheap password hashes,
and the switch that turns a missing external service into a failure in CI."""

from __future__ import annotations

import os
import sqlite3
import tempfile
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial import unittest

from gochat.auth import Passwords
from gochat.client import HttpApi, connect
from gochat.config import Config
from gochat.pb import pb
from gochat.tap import GoChatService
from tests.rawws import ack_of, open_raw

REQUIRE_SERVICES = os.environ.get("GOCHAT_REQUIRE_SERVICES") == "1"


def missing_service(reason: str) -> None:
    """Skip (or, with GOCHAT_REQUIRE_SERVICES=1 as in CI, fail) for a missing service."""
    if REQUIRE_SERVICES:
        raise AssertionError(f"required service unavailable: {reason}")
    raise unittest.SkipTest(reason)


def cheap_passwords() -> Passwords:
    """argon2id at its minimum cost: the tests register many users."""
    return Passwords(time_cost=1, memory_cost=8, parallelism=1)


class Node:
    """A real GoChat node in this process, listening on 127.0.0.1 ephemeral ports."""

    def __init__(self, data_dir: str | None = None, **overrides: Any) -> None:
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="gochat-test-")
        self.overrides = overrides
        self.service: GoChatService | None = None

    @defer.inlineCallbacks
    def start(self) -> Any:
        settings: dict[str, Any] = {
            "http": "tcp:0:interface=127.0.0.1",
            "ws": "tcp:0:interface=127.0.0.1",
            "data_dir": self.data_dir,
            # Tests register many users from 127.0.0.1; the limit has tests of its own.
            "auth_burst": 1_000_000,
            "register_burst": 1_000_000,
        }
        settings.update(self.overrides)
        config = Config(**settings)
        self.service = GoChatService(config, reactor, cheap_passwords(), exit_on_failure=False)
        self.service.startService()
        yield self.service.ready
        return self

    @property
    def http_url(self) -> str:
        assert self.service is not None
        scheme = "https" if self.service.config.http.startswith("ssl:") else "http"
        return f"{scheme}://127.0.0.1:{self.service.ports['http'].getHost().port}"

    @property
    def ws_url(self) -> str:
        assert self.service is not None
        scheme = "wss" if self.service.config.ws.startswith("ssl:") else "ws"
        return f"{scheme}://127.0.0.1:{self.service.ports['ws'].getHost().port}/ws"

    def api(self, **kwargs: Any) -> HttpApi:
        return HttpApi(self.http_url, **kwargs)

    @defer.inlineCallbacks
    def stop(self) -> Any:
        if self.service is not None and self.service.running:
            yield self.service.stopService()

    @defer.inlineCallbacks
    def user(self, name: str, **api_kwargs: Any) -> Any:
        """Register a user; fires with ``(user_id, token)``."""
        data = yield self.api(**api_kwargs).register(f"{name}-{id(self)}", "secret", name)
        return int(data["id"]), data["token"]

    def connect(self, token: str, **kwargs: Any) -> defer.Deferred:
        return connect(self.ws_url, token, **kwargs)


@defer.inlineCallbacks
def open_client(test: unittest.TestCase, node: Any, token: str | None, **kwargs: Any) -> Any:
    """A :class:`gochat.client.GoChatClient` logged in to ``node`` (``client=`` reconnects
    one), closed after ``test``."""
    client = yield node.connect(token, **kwargs)

    @defer.inlineCallbacks
    def close() -> Any:
        if client.proto is not None:
            yield client.close()

    test.addCleanup(close)
    return client


class NodeTestCase(unittest.TestCase):
    """A test with a fresh node; clients made with :meth:`client` are closed after."""

    timeout = 60
    node_options: dict[str, Any] = {}  # Config overrides for this test case's node

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.node = Node(**self.node_options)
        yield self.node.start()
        self.addCleanup(self.node.stop)
        self._clients: list[Any] = []

    @defer.inlineCallbacks
    def client(self, token: str, **kwargs: Any) -> Any:
        client = yield open_client(self, self.node, token, **kwargs)
        self._clients.append(client)
        return client

    @defer.inlineCallbacks
    def raw(self, token: str | None = None, device_id: str = "", push_ack: bool = False) -> Any:
        """A :class:`tests.rawws.RawWebSocket` to the node (whatever the handshake's
        status), logged in (and checked) when given a token; aborted after the test."""
        proto = yield open_raw(self.node.ws_url)
        self.addCleanup(self._drop, proto)
        if token is not None:
            code, ack = yield proto.login(token, device_id, push_ack)
            self.assertEqual((code, ack.type), (200, pb.AT_Login))
        return proto

    def _drop(self, proto: Any) -> defer.Deferred:
        return proto.abort()

    @defer.inlineCallbacks
    def restart(self) -> Any:
        """Stop the node and start a new one on the same data dir and options."""
        yield self.node.stop()
        self.node = Node(self.node.data_dir, **self.node.overrides)
        yield self.node.start()
        self.addCleanup(self.node.stop)


# -- exact frames over real sockets: see tests.rawws ----------------------------


def text(receiver_id: int, content: str, group: bool = False, **fields: Any) -> pb.Message:
    """A text message as a client would fill it in."""
    return pb.Message(
        session_type=pb.ST_Group if group else pb.ST_Single,
        receiver_id=receiver_id,
        message_type=pb.MT_Text,
        content=content.encode(),
        **fields,
    )


def raw_connect(ws_url: str) -> defer.Deferred:
    """A :class:`tests.rawws.RawWebSocket` to ``ws_url``, upgraded (else ``ConnectionError``)."""
    return open_raw(ws_url, upgraded=True)


def query(node: Node, sql: str, args: tuple = ()) -> list[tuple]:
    """Rows from the node's SQLite file, read by a separate connection (as an operator would)."""
    conn = sqlite3.connect(os.path.join(node.data_dir, "gochat.db"))
    try:
        return [tuple(r) for r in conn.execute(sql, args).fetchall()]
    finally:
        conn.close()


__all__ = [
    "Node",
    "NodeTestCase",
    "ack_of",
    "cheap_passwords",
    "missing_service",
    "open_client",
    "query",
    "raw_connect",
    "text",
]
