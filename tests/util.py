"""Shared test fixtures: a real node on ephemeral ports, cheap password hashes,
and the switch that turns a missing external service into a failure in CI."""

from __future__ import annotations

import os
import tempfile
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial import unittest

from gochat.auth import Passwords
from gochat.client import HttpApi, connect
from gochat.config import Config
from gochat.tap import GoChatService

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
        config = Config(
            http="tcp:0:interface=127.0.0.1",
            ws="tcp:0:interface=127.0.0.1",
            data_dir=self.data_dir,
            **self.overrides,
        )
        self.service = GoChatService(config, reactor, cheap_passwords(), exit_on_failure=False)
        self.service.startService()
        yield self.service.ready
        return self

    @property
    def http_url(self) -> str:
        assert self.service is not None
        return f"http://127.0.0.1:{self.service.ports['http'].getHost().port}"

    @property
    def ws_url(self) -> str:
        assert self.service is not None
        return f"ws://127.0.0.1:{self.service.ports['ws'].getHost().port}/ws"

    def api(self) -> HttpApi:
        return HttpApi(self.http_url)

    @defer.inlineCallbacks
    def stop(self) -> Any:
        if self.service is not None and self.service.running:
            yield self.service.stopService()

    @defer.inlineCallbacks
    def user(self, name: str) -> Any:
        """Register a user; fires with ``(user_id, token)``."""
        data = yield self.api().register(f"{name}-{id(self)}", "secret", name)
        return int(data["id"]), data["token"]

    def connect(self, token: str, **kwargs: Any) -> defer.Deferred:
        return connect(self.ws_url, token, **kwargs)


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
        client = yield self.node.connect(token, **kwargs)
        self._clients.append(client)
        self.addCleanup(self._close, client)
        return client

    @defer.inlineCallbacks
    def _close(self, client: Any) -> Any:
        if client.proto is not None:
            yield client.close()
