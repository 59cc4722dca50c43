"""The one harness for real ``twistd gochat`` processes.

Nodes listen on port 0 (``tcp:0:interface=127.0.0.1``) and the harness reads
the ports the system chose from the node's ready line, so two tests can never
race for a port. :class:`TwistdProcess` is any ``twistd … gochat`` command
line, with its output and exit status; :class:`NodeProcess` is a cluster node
on top of it, with a data dir and a log file of its own.
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
END_TIMEOUT = 120.0
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
READY = re.compile(rb"GoChat node ready: .*HTTP \S+ on (\S+), WebSocket \S+ on (\S+), database")
CLUSTER = re.compile(rb"cluster node (\w+) at (\S+)")
#: A node bound to a port the system chooses; the ready line names it.
ANY_PORT = "tcp:0:interface=127.0.0.1"


def unused_port() -> int:
    """A loopback port nothing listens on, for a test of what does *not* answer
    (a node's own ports are ``tcp:0``, read back: see :data:`ANY_PORT`)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


#: the name tests used before; the same helper
free_port = unused_port


def twistd() -> str:
    """The twistd script next to this interpreter, or "" (then use :data:`TWISTD`)."""
    candidate = os.path.join(os.path.dirname(sys.executable), "twistd")
    return candidate if os.path.exists(candidate) else ""


class TwistdProcess(protocol.ProcessProtocol):
    """``twistd ARGS`` as a child process.

    :meth:`when_ready` fires once the node logged its ready line (and then
    ``http_url``, ``ws_url`` and, in a cluster, ``node_id`` and
    ``rpc_address`` are known); ``ended`` fires with ``(exit status, stdout,
    stderr)``; ``signal`` is set when the process died of one.
    """

    def __init__(self, log: Any = None) -> None:
        self.stdout = b""
        self.stderr = b""
        self.log = log  # a binary file that gets a copy of all output
        self.is_ready = False
        self.signal: int | None = None
        self.http_address: str | None = None
        self.ws_address: str | None = None
        self.node_id: str | None = None
        self.rpc_address: str | None = None
        self._ready_waiters: list[defer.Deferred] = []
        self.ended: defer.Deferred = defer.Deferred()

    def spawn(self, argv: list[str], env: dict[str, str], cwd: str) -> TwistdProcess:
        reactor.spawnProcess(self, argv[0], argv, env=env, path=cwd)
        return self

    @property
    def running(self) -> bool:
        return self.transport is not None and not self.ended.called

    @property
    def http_url(self) -> str:
        return f"http://{self.http_address}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.ws_address}/ws"

    def when_ready(self, timeout: float = START_TIMEOUT) -> defer.Deferred:
        """Fires with this process once the node listens; fails if it exits first."""
        if self.is_ready:
            return defer.succeed(self)
        if self.ended.called:
            return defer.fail(self._exit_error())
        d: defer.Deferred = defer.Deferred()
        self._ready_waiters.append(d)
        return d.addTimeout(timeout, reactor)

    def _exit_error(self) -> Exception:
        return RuntimeError(f"node exited: {self.stderr[-2000:]!r} {self.stdout[-3000:]!r}")

    def _output(self, data: bytes) -> None:
        if self.log is not None:
            self.log.write(data)
            self.log.flush()
        if self.is_ready:
            return
        match = READY.search(self.stdout) or READY.search(self.stderr)
        if match is None:
            return
        self.http_address, self.ws_address = (g.decode() for g in match.groups())
        cluster = CLUSTER.search(self.stdout) or CLUSTER.search(self.stderr)
        if cluster is not None:
            self.node_id, self.rpc_address = (g.decode() for g in cluster.groups())
        self.is_ready = True
        waiters, self._ready_waiters = self._ready_waiters, []
        for d in waiters:
            if not d.called:
                d.callback(self)

    def outReceived(self, data: bytes) -> None:  # noqa: N802
        self.stdout += data
        self._output(data)

    def errReceived(self, data: bytes) -> None:  # noqa: N802
        self.stderr += data
        self._output(data)

    def processEnded(self, reason: Any) -> None:  # noqa: N802
        status = reason.value.exitCode
        self.signal = getattr(reason.value, "signal", None)
        if self.log is not None:
            self.log.close()
        self.ended.callback((status, self.stdout, self.stderr))
        waiters, self._ready_waiters = self._ready_waiters, []
        for d in waiters:
            if not d.called:
                d.errback(self._exit_error())

    def _wait_end(self) -> defer.Deferred:
        """Fires (with None) once the process is gone; ``ended`` keeps its result."""
        if self.ended.called:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()

        def done(result: Any) -> Any:
            d.callback(None)
            return result

        self.ended.addCallback(done)
        return d

    @defer.inlineCallbacks
    def stop(self) -> Any:
        """SIGTERM and wait (SIGKILL if it does not exit in time); fires like ``ended``."""
        if self.running:
            self.transport.signalProcess("TERM")
            try:
                yield self._wait_end().addTimeout(STOP_TIMEOUT, reactor)
            except defer.TimeoutError:
                if self.running:
                    self.transport.signalProcess("KILL")
                yield self._wait_end()
        yield self._wait_end()
        result = self.ended.result if self.ended.called else None
        status = result[0] if isinstance(result, tuple) else None
        return (status, self.stdout, self.stderr)

    def kill(self) -> defer.Deferred:
        """``kill -9``: no cleanup at all. Fires once the process is gone."""
        if self.running:
            self.transport.signalProcess("KILL")
        return self._wait_end()

    def api(self) -> HttpApi:
        return HttpApi(self.http_url)

    def connect(self, token: str | None = None, **kwargs: Any) -> defer.Deferred:
        return connect(self.ws_url, token, **kwargs)


def spawn_twistd(
    args: list[str],
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    twistd_args: tuple[str, ...] = ("-n", "--pidfile="),
) -> TwistdProcess:
    """Start ``twistd -n --pidfile= gochat ARGS`` (``twistd_args`` replaces
    ``-n --pidfile=``), with this environment less its ``GOCHAT_*`` variables,
    plus ``env``."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("GOCHAT_")}
    full_env = {**inherited, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = TwistdProcess().spawn(
        [*TWISTD, *twistd_args, "gochat", *args],
        full_env,
        cwd or tempfile.mkdtemp(prefix="gochat-proc-"),
    )
    proc.ended.addTimeout(END_TIMEOUT, reactor)
    return proc


class NodeProcess:
    """One node in its own process: a cluster node (``cluster`` from
    ``tests.services.cluster_config``), or with ``cluster=None`` a single node on
    the embedded defaults (SQLite in its data dir)."""

    def __init__(
        self, name: str, cluster: dict[str, Any] | None, extra: list[str] | None = None
    ) -> None:
        self.name = name
        self.cluster = cluster
        self.extra = extra or []
        self.data_dir = tempfile.mkdtemp(prefix=f"gochat-{name}-")
        self.log_path = os.path.join(self.data_dir, "node.log")
        self.process: TwistdProcess | None = None
        self.exit_reason: Any = None

    @property
    def _started(self) -> TwistdProcess:
        if self.process is None:
            raise RuntimeError(f"node {self.name} was never started")
        return self.process

    @property
    def http_url(self) -> str:
        return self._started.http_url

    @property
    def ws_url(self) -> str:
        return self._started.ws_url

    @property
    def node_id(self) -> str | None:
        return self._started.node_id

    @property
    def rpc_address(self) -> str | None:
        return self._started.rpc_address

    def api(self) -> HttpApi:
        return self._started.api()

    def connect(self, token: str | None = None, **kwargs: Any) -> defer.Deferred:
        return self._started.connect(token, **kwargs)

    @property
    def rpc_port(self) -> int:
        assert self.rpc_address is not None
        return int(self.rpc_address.rpartition(":")[2])

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.running

    @property
    def pid(self) -> int:
        return int(self._started.transport.pid)

    def args(self) -> list[str]:
        c = self.cluster
        if not c:
            return [
                f"--http={ANY_PORT}",
                f"--ws={ANY_PORT}",
                f"--data-dir={self.data_dir}",
                *self.extra,
            ]
        return [
            f"--http={ANY_PORT}",
            f"--ws={ANY_PORT}",
            f"--rpc={ANY_PORT}",
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
        env = {k: v for k, v in os.environ.items() if not k.startswith("GOCHAT_")}
        env["PYTHONUNBUFFERED"] = "1"
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed when the process ends
        self.process = TwistdProcess(log).spawn(
            [*TWISTD, "-n", "--pidfile=", "gochat", *self.args()], env, self.data_dir
        )
        self.process.ended.addCallback(self._ended)
        d = self.process.when_ready()
        return d.addCallbacks(lambda _: self, self._failed_start)

    def _ended(self, result: Any) -> Any:
        self.exit_reason = result
        return result

    def _failed_start(self, failure: Any) -> Any:
        with open(self.log_path, "rb") as f:
            tail = f.read()[-3000:].decode("utf-8", "replace")
        raise RuntimeError(f"node {self.name} did not start: {failure.value!r}\n{tail}")

    def kill(self) -> defer.Deferred:
        return self.process.kill() if self.process is not None else defer.succeed(None)

    def stop(self) -> defer.Deferred:
        return self.process.stop() if self.process is not None else defer.succeed(None)


__all__ = [
    "ANY_PORT",
    "NodeProcess",
    "ProcessDone",
    "ProcessTerminated",
    "TWISTD",
    "TwistdProcess",
    "free_port",
    "spawn_twistd",
    "twistd",
    "unused_port",
]
