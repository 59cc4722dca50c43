"""``--log-format json``: a real ``twistd gochat`` writes one JSON object per line."""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
from typing import Any

from twisted.internet import defer, protocol, reactor
from twisted.trial import unittest

TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"


class _Twistd(protocol.ProcessProtocol):
    """Collects output; ``ready`` fires when a line containing ``marker`` arrives."""

    def __init__(self, marker: str, watch_stdout: bool = True) -> None:
        self.marker = marker
        self.watch_stdout = watch_stdout
        self.out = b""
        self.err = b""
        self.ready: defer.Deferred = defer.Deferred()
        self.ended: defer.Deferred = defer.Deferred()

    def outReceived(self, data: bytes) -> None:  # noqa: N802
        self.out += data
        if self.watch_stdout:
            self._check(self.out)

    def errReceived(self, data: bytes) -> None:  # noqa: N802
        self.err += data

    def _check(self, text: bytes) -> None:
        if not self.ready.called and self.marker.encode() in text:
            self.ready.callback(None)

    def processEnded(self, reason: Any) -> None:  # noqa: N802
        if self.watch_stdout and not self.ready.called:
            self.ready.errback(RuntimeError(f"twistd exited: {self.err.decode()[-2000:]}"))
        self.ended.callback(reason.value)


class JsonLogs(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def run_node(self, *extra: str, log_file: str | None = None) -> Any:
        """Start ``twistd -n gochat --log-format json`` until it is ready; stop it; fires
        with its log lines."""
        directory = tempfile.mkdtemp(prefix="gochat-logs-")
        args = [
            sys.executable,
            "-c",
            TWISTD,
            "-n",
            "--pidfile=",
            "gochat",
            "--http=tcp:0:interface=127.0.0.1",
            "--ws=tcp:0:interface=127.0.0.1",
            "--data-dir=" + directory,
            "--log-format=json",
            *extra,
        ]
        proc = _Twistd("GoChat node ready", watch_stdout=log_file is None)
        env = {k: v for k, v in os.environ.items() if not k.startswith("GOCHAT_")}
        transport = reactor.spawnProcess(proc, sys.executable, args, env=env, path=directory)
        if log_file is not None:
            yield self._wait_for_file(log_file, proc)
        else:
            yield proc.ready
        transport.signalProcess("TERM")
        ended = yield proc.ended
        # twistd stops cleanly on SIGTERM, then reports the signal as its status.
        self.assertIn((ended.exitCode, ended.signal), [(0, None), (None, signal.SIGTERM)])
        self.assertEqual(proc.err, b"")
        text = proc.out if log_file is None else open(log_file, "rb").read()
        return [line for line in text.decode().splitlines() if line.strip()], proc

    @defer.inlineCallbacks
    def _wait_for_file(self, path: str, proc: _Twistd) -> Any:
        from twisted.internet import task

        while not proc.ended.called:
            if os.path.exists(path) and b"GoChat node ready" in open(path, "rb").read():
                return
            yield task.deferLater(reactor, 0.05, lambda: None)
        raise AssertionError(f"twistd exited early: {proc.err.decode()[-2000:]}")

    def assert_json_log(self, lines: list[str]) -> None:
        records = [json.loads(line) for line in lines]  # every line is one JSON object
        for record in records:
            self.assertEqual(
                set(record) & {"time", "level", "namespace", "message"},
                {"time", "level", "namespace", "message"},
            )
        ready = [r for r in records if r["message"].startswith("GoChat node ready")]
        self.assertEqual(len(ready), 1)
        self.assertEqual(ready[0]["level"], "info")
        self.assertEqual(ready[0]["namespace"], "gochat.tap.GoChatService")
        self.assertEqual(ready[0]["http"], "tcp:0:interface=127.0.0.1")
        self.assertTrue(ready[0]["db"].startswith("sqlite:"))
        self.assertTrue(any(r["message"] == "Server Shut Down." for r in records))

    @defer.inlineCallbacks
    def test_json_lines_on_stdout(self):
        lines, _ = yield self.run_node()
        self.assert_json_log(lines)

    @defer.inlineCallbacks
    def test_json_lines_to_a_file(self):
        path = os.path.join(tempfile.mkdtemp(prefix="gochat-logs-"), "node.jsonl")
        lines, proc = yield self.run_node("--log-file=" + path, log_file=path)
        self.assert_json_log(lines)
        self.assertNotIn(b"GoChat node ready", proc.out)


class EventLines(unittest.TestCase):
    """What one event becomes: the fields a log shipper indexes."""

    def test_failure_fields_and_objects(self):
        import io

        from twisted.logger import Logger
        from twisted.python.failure import Failure

        from gochat.logs import json_file_observer

        out = io.StringIO()
        log = Logger(namespace="gochat.test", observer=json_file_observer(out))
        try:
            raise ZeroDivisionError("division by zero")
        except ZeroDivisionError:
            log.failure("storing {n} messages for {peer} failed", Failure(), n=3, peer=object())

        (line,) = out.getvalue().splitlines()
        record = json.loads(line)
        self.assertEqual(record["level"], "critical")
        self.assertEqual(record["namespace"], "gochat.test")
        self.assertTrue(record["message"].startswith("storing 3 messages for <object object"))
        self.assertEqual(record["n"], 3)
        self.assertTrue(record["peer"].startswith("<object object"))  # not JSON: its repr
        self.assertIn("ZeroDivisionError", record["traceback"])
