"""Real GoChat nodes as separate processes: ``twistd -n --pidfile= gochat …``.

Each node gets free loopback ports, its own data dir and a log file there;
:meth:`NodeProcess.start` fires once the node logged that it is ready (bounded),
:meth:`kill` is ``kill -9``, :meth:`stop` is SIGTERM (then SIGKILL if it hangs).
"""

from __future__ import annotations

import os
import re
import socket
import sys
import tempfile
from typing import Any

from twisted.internet import defer, protocol, reactor
from twisted.internet.error import ProcessDone, ProcessTerminated

from gochat.client import HttpApi, connect

START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
READY = re.compile(r"GoChat node ready: .* cluster node (\w+) at (\S+)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def twistd() -> str:
    """The twistd next to this interpreter (the test venv's), else the module."""
    candidate = os.path.join(os.path.dirname(sys.executable), "twistd")
    return candidate if os.path.exists(candidate) else ""


class _NodeProtocol(protocol.ProcessProtocol):
    def __init__(self, node: NodeProcess) -> None:
        self.node = node
        self.buffer = b""

    def outReceived(self, data: bytes) -> None:  # noqa: N802
        self._consume(data)

    def errReceived(self, data: bytes) -> None:  # noqa: N802
        self._consume(data)

    def _consume(self, data: bytes) -> None:
        self.node.log.write(data)
        self.node.log.flush()
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            self.node.line(line.decode("utf-8", "replace"))

    def processEnded(self, reason: Any) -> None:  # noqa: N802
        self.node.ended(reason)


class NodeProcess:
    """One cluster node in its own process."""

    def __init__(self, name: str, cluster: dict, extra: list[str] | None = None) -> None:
        self.name = name
        self.cluster = cluster
        self.extra = extra or []
        self.data_dir = tempfile.mkdtemp(prefix=f"gochat-{name}-")
        self.http_port = free_port()
        self.ws_port = free_port()
        self.rpc_port = free_port()
        self.node_id: str | None = None
        self.transport: Any = None
        self.log = open(os.path.join(self.data_dir, "node.log"), "ab")  # noqa: SIM115
        self._ready: defer.Deferred | None = None
        self._ended: defer.Deferred = defer.Deferred()
        self.exit_reason: Any = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}/ws"

    @property
    def rpc_address(self) -> str:
        return f"127.0.0.1:{self.rpc_port}"

    @property
    def running(self) -> bool:
        return self.transport is not None and not self._ended.called

    def argv(self) -> list[str]:
        c = self.cluster
        program = twistd()
        head = [program] if program else [sys.executable, "-m", "twisted.scripts.twistd"]
        return head + [
            "-n",
            "--pidfile=",
            "gochat",
            f"--http=tcp:{self.http_port}:interface=127.0.0.1",
            f"--ws=tcp:{self.ws_port}:interface=127.0.0.1",
            f"--rpc=tcp:{self.rpc_port}:interface=127.0.0.1",
            f"--db={c['db']}",
            f"--redis={c['redis']}",
            f"--redis-prefix={c['redis_prefix']}",
            f"--presence-lease={c['presence_lease']}",
            f"--cluster-secret-file={c['cluster_secret_file']}",
            f"--secret-file={c['secret_file']}",
            f"--data-dir={self.data_dir}",
            *self.extra,
        ]

    def start(self) -> defer.Deferred:
        """Spawn the node; fires with it once it is ready (fails after START_TIMEOUT)."""
        self._ready = defer.Deferred()
        self._ended = defer.Deferred()
        argv = self.argv()
        env = {k: v for k, v in os.environ.items() if not k.startswith("GOCHAT_")}
        env["PYTHONUNBUFFERED"] = "1"
        self.transport = reactor.spawnProcess(
            _NodeProtocol(self), argv[0], argv, env=env, path=self.data_dir
        )
        return self._ready.addTimeout(START_TIMEOUT, reactor).addErrback(self._failed_start)

    def _failed_start(self, failure: Any) -> Any:
        self.log.flush()
        with open(self.log.name, "rb") as f:
            tail = f.read()[-3000:].decode("utf-8", "replace")
        raise RuntimeError(f"node {self.name} did not start: {failure.value!r}\n{tail}")

    def line(self, text: str) -> None:
        match = READY.search(text)
        if match and self._ready is not None and not self._ready.called:
            self.node_id = match.group(1)
            self._ready.callback(self)

    def ended(self, reason: Any) -> None:
        self.exit_reason = reason
        if self._ready is not None and not self._ready.called:
            self._ready.errback(reason)
        self._ended.callback(None)

    def kill(self) -> defer.Deferred:
        """``kill -9``: no cleanup at all. Fires once the process is gone."""
        if self.running:
            self.transport.signalProcess("KILL")
        return self._wait_end()

    @defer.inlineCallbacks
    def stop(self) -> Any:
        """SIGTERM and wait; SIGKILL if it does not exit in time."""
        if self.running:
            self.transport.signalProcess("TERM")
            try:
                yield self._wait_end().addTimeout(STOP_TIMEOUT, reactor)
            except defer.TimeoutError:
                if self.running:
                    self.transport.signalProcess("KILL")
                yield self._wait_end()
        self.log.close()

    def _wait_end(self) -> defer.Deferred:
        if self._ended.called:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()

        def done(result: Any) -> Any:
            d.callback(None)
            return result

        self._ended.addCallback(done)
        return d

    def api(self) -> HttpApi:
        return HttpApi(self.http_url)

    def connect(self, token: str | None = None, **kwargs: Any) -> defer.Deferred:
        return connect(self.ws_url, token, **kwargs)


__all__ = ["NodeProcess", "ProcessDone", "ProcessTerminated", "free_port"]
