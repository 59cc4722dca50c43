"""Shared test fixtures: a real node on ephemeral ports, cheap password hashes,
and the switch that turns a missing external service into a failure in CI."""

from __future__ import annotations

import os
import socket
import sqlite3
import sys
import tempfile
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, endpoints, protocol, reactor
from twisted.trial import unittest

from gochat.auth import Passwords
from gochat.client import HttpApi, connect
from gochat.config import Config
from gochat.pb import pb
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

    @defer.inlineCallbacks
    def raw(self, token: str | None = None, device_id: str = "", push_ack: bool = False) -> Any:
        """A :class:`RawProtocol` to the node, logged in (and checked) when given a token."""
        proto = yield raw_connect(self.node.ws_url)
        self.addCleanup(self._drop, proto)
        if token is not None:
            code, ack = yield proto.login(token, device_id, push_ack)
            self.assertEqual((code, ack.type), (200, pb.AT_Login))
        return proto

    @defer.inlineCallbacks
    def _drop(self, proto: Any) -> Any:
        if not proto.closed.called:
            proto.transport.loseConnection()
            yield proto.closed

    @defer.inlineCallbacks
    def restart(self) -> Any:
        """Stop the node and start a new one on the same data dir and options."""
        yield self.node.stop()
        self.node = Node(self.node.data_dir, **self.node.overrides)
        yield self.node.start()
        self.addCleanup(self.node.stop)


# -- exact frames over real sockets ---------------------------------------------


class RawProtocol(WebSocketClientProtocol):
    """A bare Autobahn client: sends whatever it is told, queues every frame it gets.

    It knows nothing of the clientId dance, so tests control every byte, as
    the Go server's own test clients do.
    """

    def onOpen(self) -> None:  # noqa: N802
        self.frames: list[tuple[bytes, bool]] = []
        self._waiters: list[defer.Deferred] = []
        self.closed: defer.Deferred = defer.Deferred()
        self.factory.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:  # noqa: N802
        self.frames.append((payload, isBinary))
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:  # noqa: N802
        if not self.factory.opened.called:
            self.factory.opened.errback(ConnectionError(f"could not open: {reason}"))
            return
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)
        self.closed.callback((code, reason))

    # -- sending ------------------------------------------------------------

    def send_input(self, cmd: int, body: Any = b"") -> None:
        data = body if isinstance(body, bytes) else body.SerializeToString()
        self.sendMessage(pb.Input(type=cmd, data=data).SerializeToString(), isBinary=True)

    def send_inputs(self, frames: list[tuple[int, Any]]) -> None:
        """Several frames in one TCP write: the node reads them back to back."""
        chunks = []
        for cmd, body in frames:
            data = body if isinstance(body, bytes) else body.SerializeToString()
            payload = pb.Input(type=cmd, data=data).SerializeToString()
            chunks.append(self._masked_frame(payload))
        self.transport.write(b"".join(chunks))

    @staticmethod
    def _masked_frame(payload: bytes) -> bytes:
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            header = bytes((0x82, 0x80 | n))
        elif n < 65536:
            header = bytes((0x82, 0x80 | 126)) + n.to_bytes(2, "big")
        else:
            header = bytes((0x82, 0x80 | 127)) + n.to_bytes(8, "big")
        body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        return header + mask + body

    def login(self, token: str, device_id: str = "", push_ack: bool = False) -> defer.Deferred:
        """Send a login; fires with ``(code, ACKMsg)``."""
        self.send_input(
            pb.CT_Login, pb.LoginMsg(token=token.encode(), device_id=device_id, push_ack=push_ack)
        )
        return self.next_output().addCallback(lambda out: (out.code, ack_of(out)))

    def up(self, client_id: int, msg: pb.Message) -> None:
        self.send_input(pb.CT_Message, pb.UpMsg(msg=msg, clientId=client_id))

    # -- receiving ----------------------------------------------------------

    @defer.inlineCallbacks
    def next_frame(self, timeout: float = 10.0) -> Any:
        """The next ``(payload, is_binary)`` the node sent; fails after ``timeout``."""
        while not self.frames:
            if self.closed.called:
                raise ConnectionError("closed while waiting for a frame")
            waiter: defer.Deferred = defer.Deferred()
            self._waiters.append(waiter)
            waiter.addTimeout(timeout, reactor)
            yield waiter
        return self.frames.pop(0)

    @defer.inlineCallbacks
    def next_output(self, timeout: float = 10.0) -> Any:
        payload, is_binary = yield self.next_frame(timeout)
        assert is_binary, "the node sent a text frame"
        return pb.Output.FromString(payload)

    @defer.inlineCallbacks
    def outputs(self, count: int, timeout: float = 30.0) -> Any:
        out = []
        for _ in range(count):
            frame = yield self.next_output(timeout)
            out.append(frame)
        return out


def ack_of(out: pb.Output) -> pb.ACKMsg:
    return pb.ACKMsg.FromString(out.data)


def text(receiver_id: int, content: str, group: bool = False, **fields: Any) -> pb.Message:
    """A text message as a client would fill it in."""
    return pb.Message(
        session_type=pb.ST_Group if group else pb.ST_Single,
        receiver_id=receiver_id,
        message_type=pb.MT_Text,
        content=content.encode(),
        **fields,
    )


def raw_connect(ws_url: str, max_frame: int = 0) -> defer.Deferred:
    """Open a :class:`RawProtocol` to ``ws_url``; fires with it once open."""
    factory = WebSocketClientFactory(ws_url)
    factory.protocol = RawProtocol
    factory.opened = defer.Deferred()
    factory.setProtocolOptions(maxMessagePayloadSize=0, maxFramePayloadSize=0)
    host, port = ws_url.split("//")[1].split("/")[0].split(":")
    d = endpoints.TCP4ClientEndpoint(reactor, host, int(port)).connect(factory)
    d.addCallback(lambda _: factory.opened)
    return d


def query(node: Node, sql: str, args: tuple = ()) -> list[tuple]:
    """Rows from the node's SQLite file, read by a separate connection (as an operator would)."""
    conn = sqlite3.connect(os.path.join(node.data_dir, "gochat.db"))
    try:
        return [tuple(r) for r in conn.execute(sql, args).fetchall()]
    finally:
        conn.close()


def free_port() -> int:
    """A TCP port nothing listens on right now (for subprocess nodes)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- real twistd processes ------------------------------------------------------

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


class TwistdProcess(protocol.ProcessProtocol):
    """``twistd -n --pidfile= gochat ARGS`` as a child process.

    :meth:`when_ready` fires when the node logs that it listens; ``ended``
    fires with ``(exit status, stdout, stderr)``.
    """

    READY = b"GoChat node ready"

    def __init__(self) -> None:
        self.stdout = b""
        self.stderr = b""
        self.is_ready = False
        self.signal: int | None = None  # set when the process died of a signal
        self._ready_waiters: list[defer.Deferred] = []
        self.ended: defer.Deferred = defer.Deferred()

    def when_ready(self) -> defer.Deferred:
        """Fires once the node listens; fails if it exits first."""
        if self.is_ready:
            return defer.succeed(self)
        if self.ended.called:
            return defer.fail(self._exit_error())
        d: defer.Deferred = defer.Deferred()
        self._ready_waiters.append(d)
        return d

    def _exit_error(self) -> Exception:
        return RuntimeError(f"node exited: {self.stderr!r} {self.stdout[-2000:]!r}")

    def outReceived(self, data: bytes) -> None:  # noqa: N802
        self.stdout += data
        if not self.is_ready and self.READY in self.stdout:
            self.is_ready = True
            waiters, self._ready_waiters = self._ready_waiters, []
            for d in waiters:
                d.callback(self)

    def errReceived(self, data: bytes) -> None:  # noqa: N802
        self.stderr += data

    def processEnded(self, reason: Any) -> None:  # noqa: N802
        status = reason.value.exitCode
        self.signal = getattr(reason.value, "signal", None)
        self.ended.callback((status, self.stdout, self.stderr))
        waiters, self._ready_waiters = self._ready_waiters, []
        for d in waiters:
            d.errback(self._exit_error())

    def stop(self) -> defer.Deferred:
        if not self.ended.called:
            self.transport.signalProcess("TERM")
        return self.ended


def spawn_twistd(args: list[str], env: dict[str, str] | None = None, cwd: str | None = None):
    """Start ``twistd -n --pidfile= gochat`` + ``args``; returns the :class:`TwistdProcess`."""
    proc = TwistdProcess()
    full_env = dict(os.environ)
    full_env.update(env or {})
    reactor.spawnProcess(
        proc,
        TWISTD[0],
        [*TWISTD, "-n", "--pidfile=", "gochat", *args],
        env=full_env,
        path=cwd or tempfile.mkdtemp(prefix="gochat-proc-"),
    )
    proc.ended.addTimeout(120, reactor)
    return proc
