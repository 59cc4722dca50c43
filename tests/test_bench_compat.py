"""``gochat-bench`` against any GoChat: batched frames, and never a hang.

A node with ``--output-batch`` writes what GoChat c58f9fc writes; the fake
servers here accept and say nothing, or say nonsense, at each step of a run
(sign-up, WebSocket handshake, login). Every run ends with one clear line
within its ``--timeout``.
"""

from __future__ import annotations

import json
import sys
import time

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import defer, endpoints, protocol, reactor
from twisted.trial import unittest
from twisted.web import resource, server

from gochat import codec
from gochat.bench import runner
from gochat.bench.worker import Conn, Worker
from gochat.pb import pb
from tests.util import NodeTestCase

TIMEOUT = 1.0  # the runs' --timeout, in seconds
SLACK = 3.0  # what a busy machine may add to it
PROCESS_START = 10.0  # and starting worker processes (Python, protobuf) on a busy machine


class BatchedNode(NodeTestCase):
    node_options = {"output_batch": True}
    timeout = 120

    def target(self, processes: int = 1) -> runner.Target:
        return runner.Target(
            http=self.node.http_url, ws=self.node.ws_url, processes=processes, progress=False
        )

    def assert_clean(self, report: dict) -> None:
        self.assertEqual(report["lost"], 0)
        self.assertEqual(report["duplicated"], 0)
        self.assertEqual(report["ack_errors"], 0)
        self.assertEqual(report["received"], report["expected"])
        self.assertEqual(report["acked"], report["sent"])

    @defer.inlineCallbacks
    def test_group_run_counts_every_batched_delivery(self):
        report = yield runner.run_group(
            reactor, self.target(), members=7, online=6, senders=4, rounds=3, interval=0
        )
        self.assert_clean(report)
        self.assertEqual(report["expected"], 4 * 3 * 5)

    @defer.inlineCallbacks
    def test_single_run_over_two_processes_counts_every_batched_delivery(self):
        report = yield runner.run_single(reactor, self.target(processes=2), pairs=3, messages=20)
        self.assert_clean(report)
        self.assertEqual(report["expected"], 60)


class BatchDecoding(unittest.TestCase):
    def test_a_batch_of_a_login_ack_pushes_and_up_acks_is_counted_like_plain_frames(self):
        worker = Worker(reactor, {"scenario": "connections", "members": [(1, "t")], "count": 1})
        conn = Conn(worker, 1, "t")
        conn.logged_in = defer.Deferred()
        codes_seen = []
        conn.logged_in.addCallback(codes_seen.append)
        conn.inflight[1] = time.time()
        message = pb.Message(session_type=pb.ST_Single, sender_id=2, receiver_id=1, content=b"x")
        base = codec.message_base(message)
        frames = [codec.ack_frame(pb.AT_Login, seq=10)]
        frames += [codec.push_frame_from_base(base, s) for s in (11, 12, 12)]
        frames += [codec.ack_frame(pb.AT_Up, client_id=1, seq=13)]
        (batch,) = codec.batch_payloads(frames, 50, 65536)
        conn.frame(batch)
        self.assertEqual(codes_seen, [200])
        self.assertEqual((conn.base, worker.received, worker.duplicated), (10, 2, 1))
        self.assertEqual(worker.acked, 1)

    def test_a_frame_that_is_no_output_fails_the_login_wait(self):
        worker = Worker(reactor, {"scenario": "connections", "members": [(1, "t")], "count": 1})
        conn = Conn(worker, 1, "t")
        conn.logged_in = defer.Deferred()
        errors = []
        conn.logged_in.addErrback(errors.append)
        conn.frame(b"\xff\xff\xff\xff")
        self.assertEqual(len(errors), 1)
        self.assertIn("not a GoChat frame", errors[0].getErrorMessage())
        self.assertEqual(worker.garbled, 1)


# -- servers a benchmark cannot understand ---------------------------------------


class FakeApi(resource.Resource):
    """GoChat's /register and /group/create, answered as GoChat would."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.next_id = 0

    def render_POST(self, request):  # noqa: N802
        request.setHeader(b"content-type", b"application/json")
        self.next_id += 1
        if request.path == b"/register":
            data = {"id": str(self.next_id), "token": f"token-{self.next_id}"}
        else:
            data = {"id": "1"}
        return json.dumps({"code": 200, "msg": "ok", "data": data}).encode()


class NonsenseApi(resource.Resource):
    isLeaf = True

    def render_POST(self, request):  # noqa: N802
        return b"<html>this is not GoChat</html>"


class Silent(protocol.Protocol):
    """Accepts the connection, reads everything, answers nothing."""


class SilentWebSocket(WebSocketServerProtocol):
    """Completes the WebSocket handshake, then never answers."""


class NonsenseWebSocket(WebSocketServerProtocol):
    """Answers every frame with bytes that are no protobuf at all."""

    def onMessage(self, payload, isBinary):  # noqa: N802
        self.sendMessage(b"\xff\xff\xff\xff", isBinary=True)


class UnderstoodNothing(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def listen(self, factory) -> str:
        port = yield endpoints.serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(
            factory
        )
        self.addCleanup(port.stopListening)
        return f"127.0.0.1:{port.getHost().port}"

    @defer.inlineCallbacks
    def servers(self, api=None, ws=None):
        http = yield self.listen(server.Site(api or FakeApi()))
        if isinstance(ws, type) and issubclass(ws, WebSocketServerProtocol):
            factory = WebSocketServerFactory()
            factory.protocol = ws
            factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=1)
        else:
            factory = protocol.Factory.forProtocol(ws or Silent)
        address = yield self.listen(factory)
        return runner.Target(
            http=f"http://{http}",
            ws=f"ws://{address}/ws",
            progress=False,
            timeout=TIMEOUT,
        )

    @defer.inlineCallbacks
    def assert_run_fails(self, target: runner.Target, words: str, processes: int = 1):
        target.processes = processes
        started = time.monotonic()
        try:
            yield runner.run_group(
                reactor, target, members=4, online=4, senders=2, rounds=1, interval=0
            )
        except Exception as exc:
            message = str(exc)
        else:
            self.fail("the run against a server it cannot understand succeeded")
        elapsed = time.monotonic() - started
        self.assertIn(words, message)
        self.assertNotIn("\n", message)
        limit = TIMEOUT + SLACK + (PROCESS_START if processes > 1 else 0)
        self.assertLess(elapsed, limit, message)
        return message

    @defer.inlineCallbacks
    def test_a_silent_http_api_ends_the_sign_up_within_the_timeout(self):
        http = yield self.listen(protocol.Factory.forProtocol(Silent))
        target = runner.Target(http=f"http://{http}", progress=False, timeout=TIMEOUT)
        message = yield self.assert_run_fails(target, "no answer within 1 s")
        self.assertIn("/register", message)

    @defer.inlineCallbacks
    def test_an_http_api_answering_nonsense_ends_the_run_with_what_it_said(self):
        target = yield self.servers(api=NonsenseApi())
        yield self.assert_run_fails(target, "this is not GoChat")

    @defer.inlineCallbacks
    def test_a_websocket_port_that_never_shakes_hands_ends_the_run(self):
        target = yield self.servers(ws=Silent)
        yield self.assert_run_fails(target, "no WebSocket handshake within 1 s")

    @defer.inlineCallbacks
    def test_a_server_that_never_acks_the_login_ends_the_run(self):
        target = yield self.servers(ws=SilentWebSocket)
        yield self.assert_run_fails(target, "no login ACK within 1 s")

    @defer.inlineCallbacks
    def test_a_server_answering_nonsense_frames_ends_the_run(self):
        target = yield self.servers(ws=NonsenseWebSocket)
        yield self.assert_run_fails(target, "not a GoChat frame")

    @defer.inlineCallbacks
    def test_the_same_over_worker_processes(self):
        target = yield self.servers(ws=SilentWebSocket)
        yield self.assert_run_fails(target, "no login ACK within 1 s", processes=2)

    @defer.inlineCallbacks
    def test_the_command_line_says_so_in_one_line_and_exits_1(self):
        target = yield self.servers(ws=SilentWebSocket)
        argv = [sys.executable, "-m", "gochat.bench.cli", "group", "--members", "3"]
        argv += ["--online", "3", "--senders", "1", "--rounds", "1", "--interval", "0"]
        argv += ["--http", target.http, "--ws", target.ws, "--timeout", "1", "--no-progress"]
        started = time.monotonic()
        out, err, status = yield _run(argv)
        self.assertEqual(status, 1, err)
        lines = err.decode().strip().splitlines()
        self.assertEqual(len(lines), 1, err)
        self.assertTrue(lines[0].startswith("gochat-bench: "), lines)
        self.assertIn("no login ACK within 1 s", lines[0])
        self.assertLess(time.monotonic() - started, 30)


def _run(argv: list[str]) -> defer.Deferred:
    """Run a child process to its end; fires with ``(stdout, stderr, exit status)``."""
    import os

    from twisted.internet.utils import getProcessOutputAndValue

    return getProcessOutputAndValue(argv[0], argv[1:], env=dict(os.environ))
