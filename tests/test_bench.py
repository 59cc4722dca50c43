"""gochat-bench: the capacity arithmetic, the delivery accounting, and small
real runs of each scenario against a real node (in this process; the
multi-process run spawns real worker processes)."""

from __future__ import annotations

import io
import json
import os
import select
import tempfile
import time
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer, error, protocol, reactor
from twisted.internet.testing import StringTransport
from twisted.python import failure
from twisted.trial import unittest

from gochat import codec
from gochat._twisted import LeanEPollReactor
from gochat.bench import cli, runner, stats
from gochat.bench.stats import Histogram, capacity, node_qps_from_result, peak_qps
from gochat.bench.wire import BenchSocket, mask_frame
from gochat.bench.worker import _CONTENT, Conn, Worker, _count_latencies
from gochat.pb import pb
from tests.util import NodeTestCase

REPORT_FIELDS = {
    "scenario",
    "params",
    "expected",
    "received",
    "lost",
    "duplicated",
    "sent",
    "acked",
    "ack_errors",
    "elapsed_ms",
    "deliveries_per_s",
    "messages_per_s",
    "ack_p50_ms",
    "ack_p99_ms",
    "push_p50_ms",
    "push_p99_ms",
    "client_cpu_s",
    "client_cpu_pct",
    "processes",
}


class CapacityFormula(unittest.TestCase):
    def test_seed_example_30_million_pv_is_about_1389_qps(self):
        self.assertAlmostEqual(peak_qps(30_000_000), 1388.89, places=2)

    def test_seed_example_needs_20_nodes_at_70_qps(self):
        result = capacity(30_000_000, 70)
        self.assertEqual(result["nodes"], 20)
        self.assertIn("30,000,000 x 0.8 / 17280 = 1,388.9", result["working"][0])
        self.assertIn("1,388.9 / 70.0 = 19.84 -> 20", result["working"][1])

    def test_exact_multiple_does_not_round_up(self):
        self.assertEqual(capacity(17280 * 100 / 0.8, 50)["nodes"], 2)

    def test_non_positive_inputs_are_refused(self):
        self.assertRaises(ValueError, capacity, 0, 70)
        self.assertRaises(ValueError, capacity, 1000, 0)

    def test_node_qps_comes_from_a_json_result(self):
        self.assertEqual(node_qps_from_result({"deliveries_per_s": 1234.5}), 1234.5)
        self.assertRaises(ValueError, node_qps_from_result, {"scenario": "x"})

    def test_cli_capacity_from_a_result_file(self):
        path = os.path.join(tempfile.mkdtemp(), "group.json")
        with open(path, "w") as f:
            json.dump({"deliveries_per_s": 70.0}, f)
        out = io.StringIO()
        args = cli.build_parser().parse_args(["capacity", "--pv", "30000000", "--from", path])
        result = cli.run_capacity(args, out)
        self.assertEqual(result["nodes"], 20)
        self.assertIn("-> 20", out.getvalue())


class Percentiles(unittest.TestCase):
    def test_percentiles_are_within_the_bucket_resolution(self):
        h = Histogram()
        for ms in range(1, 101):  # 1..100 ms
            h.record(ms / 1000.0)
        p50, p99 = h.percentile(50), h.percentile(99)
        self.assertTrue(48.0 <= p50 <= 52.0, p50)
        self.assertTrue(96.0 <= p99 <= 101.5, p99)

    def test_merged_histograms_count_both(self):
        a, b = Histogram(), Histogram()
        a.record(0.001)
        b.record(0.1)
        a.merge(b.counts)
        self.assertEqual(a.total, 2)

    def test_empty_histogram_has_no_percentile(self):
        self.assertIsNone(Histogram().percentile(50))


def _push(seq: int, content: bytes = b"x" * 12) -> bytes:
    msg = pb.Message(session_type=pb.ST_Group, receiver_id=7, sender_id=3, content=content)
    return codec.push_frame_from_base(codec.message_base(msg), seq)


def _frame(payload: bytes) -> bytes:
    """A small unmasked binary frame, as the node sends a push."""
    return bytes((0x82, len(payload))) + payload


class DeliveryAccounting(unittest.TestCase):
    """A receiver counts each seq once: a repeat is a duplicate, a gap is a loss."""

    def setUp(self):
        config = {"scenario": "group", "members": [], "rounds": 1, "senders_total": 0}
        self.worker = Worker(reactor, config)
        self.conn = Conn(self.worker, 5, "token")
        self.conn.frame(codec.ack_frame(pb.AT_Login, seq=10))

    def test_login_ack_sets_the_base_seq(self):
        self.assertEqual(self.conn.base, 10)

    def test_a_repeated_seq_is_a_duplicate(self):
        for seq in (11, 12, 12, 13):
            self.conn.frame(_push(seq))
        self.assertEqual((self.worker.received, self.worker.duplicated), (3, 1))

    def test_a_seq_at_or_below_the_base_is_a_duplicate(self):
        self.conn.frame(_push(10))
        self.assertEqual((self.worker.received, self.worker.duplicated), (0, 1))

    def test_far_seqs_grow_the_bitmap(self):
        self.conn.frame(_push(10 + 5000))
        self.conn.frame(_push(10 + 5000))
        self.assertEqual((self.worker.received, self.worker.duplicated), (1, 1))

    def test_a_read_of_consecutive_pushes_is_counted_at_once(self):
        self.conn.frames([_push(seq) for seq in range(11, 21)])
        self.assertEqual((self.worker.received, self.worker.duplicated), (10, 0))
        self.assertEqual(sum(self.worker.push_hist), 10)  # each one timed
        self.conn.frames([_push(15)])  # the run marked every seq seen
        self.assertEqual((self.worker.received, self.worker.duplicated), (10, 1))

    def test_a_read_of_pushes_already_seen_is_all_duplicates(self):
        self.conn.frames([_push(11), _push(12)])
        self.conn.frames([_push(11), _push(12)])
        self.assertEqual((self.worker.received, self.worker.duplicated), (2, 2))

    def test_a_read_with_a_repeat_or_a_gap_is_counted_push_by_push(self):
        self.conn.frames([_push(seq) for seq in (11, 12, 12, 14)])
        self.assertEqual((self.worker.received, self.worker.duplicated), (3, 1))
        self.conn.frames([_push(13), _push(10)])  # a late one, and one at the base
        self.assertEqual((self.worker.received, self.worker.duplicated), (4, 2))

    def test_a_read_with_an_ack_among_pushes_handles_each(self):
        self.conn.inflight[1] = 0.0
        self.conn.frames([_push(11), codec.ack_frame(pb.AT_Up, client_id=1), _push(12)])
        self.assertEqual((self.worker.received, self.worker.acked), (2, 1))

    def _one_by_one(self) -> list[bytes]:
        """The frames the connection goes on to handle one by one, not as a run."""
        handled: list[bytes] = []
        frame = Conn.frame

        def recorded(conn: Conn, payload: bytes) -> None:
            handled.append(payload)
            frame(conn, payload)

        self.patch(Conn, "frame", recorded)
        return handled

    def test_pushes_on_either_side_of_an_ack_are_counted_as_runs(self):
        self.conn.inflight[1] = 0.0
        ack = codec.ack_frame(pb.AT_Up, client_id=1)
        one_by_one = self._one_by_one()
        self.conn.frames([_push(11), _push(12), ack, _push(13), _push(14)])
        self.assertEqual((self.worker.received, self.worker.acked), (4, 1))
        self.assertEqual(sum(self.worker.push_hist), 4)
        self.assertEqual(one_by_one, [ack])

    def test_a_senders_run_without_its_own_messages_is_counted_at_once(self):
        one_by_one = self._one_by_one()
        self.conn.frames([_push(seq) for seq in (11, 12, 14, 15)])  # 13 was its own
        self.assertEqual((self.worker.received, self.worker.duplicated), (4, 0))
        self.assertEqual(one_by_one, [])
        self.conn.frames([_push(13), _push(14)])  # a late 13 is new, 14 is not
        self.assertEqual((self.worker.received, self.worker.duplicated), (5, 1))

    def test_a_read_of_push_frames_is_counted_as_it_came(self):
        frames = [_frame(_push(seq)) for seq in range(11, 15)]
        read = b"".join(frames)
        self.assertTrue(self.conn.run(read, len(frames[0]), 4))
        self.assertEqual((self.worker.received, sum(self.worker.push_hist)), (4, 4))
        self.assertFalse(self.conn.run(read, len(frames[0]), 4))  # all seen: one by one
        self.assertEqual((self.worker.received, self.worker.duplicated), (4, 0))

    def test_a_read_of_equal_frames_with_one_not_a_push_is_refused(self):
        pushes = [_push(seq) for seq in range(11, 14)]
        code = pushes[1].index(b"\xc8\x01")  # code 200 in the Output
        pushes[1] = pushes[1][:code] + b"\xc9" + pushes[1][code + 1 :]  # 201, same size
        read = b"".join(map(_frame, pushes))
        self.assertFalse(self.conn.run(read, len(read) // 3, 3))
        self.assertEqual(self.worker.received, 0)

    def test_a_run_is_timed_from_the_send_time_in_each_content(self):
        now = time.time()
        self.conn.frames(
            [_push(11, _CONTENT.pack(now - 0.05, 0)), _push(12, _CONTENT.pack(now - 0.2, 0))]
        )
        hist = Histogram(self.worker.push_hist)
        first, last = hist.percentile(0), hist.percentile(100)  # ms, to within a bucket
        self.assertTrue(45 < first < 55 and 180 < last < 220, (first, last))

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.floats(min_value=-0.01, max_value=100.0), min_size=1, max_size=80))
    def test_a_reads_latencies_land_in_the_buckets_one_by_one_would(self, latencies):
        latencies.sort()
        counted, expected = [0] * stats.BUCKETS, Histogram()
        _count_latencies(counted, latencies, 0, len(latencies))
        for latency in latencies:
            expected.record(latency)
        self.assertEqual(counted, expected.counts)

    def test_losses_are_expected_minus_received(self):
        self.conn.frame(_push(11))
        merged = runner.merge([dict(self.worker.result(), expected=3)])
        self.assertEqual((merged["received"], merged["lost"]), (1, 2))


class WebSocketFraming(unittest.TestCase):
    def test_client_frames_are_masked_and_unmask_to_the_payload(self):
        payload = bytes(range(200))
        frame = mask_frame(0x2, payload)
        self.assertEqual(frame[0], 0x82)
        self.assertEqual(frame[1], 0x80 | 126)
        key = frame[4:8]
        body = frame[8:]
        self.assertEqual(bytes(b ^ key[i % 4] for i, b in enumerate(body)), payload)

    def test_server_frames_split_across_reads_are_reassembled(self):
        got = []
        sock = BenchSocket("h", "/ws")
        sock.on_frames = got.extend
        sock._open = True
        big = b"y" * 300
        stream = b"\x82\x03abc" + b"\x82\x7e" + len(big).to_bytes(2, "big") + big + b"\x82\x01z"
        for i in range(0, len(stream), 7):
            sock.dataReceived(stream[i : i + 7])
        self.assertEqual(got, [b"abc", big, b"z"])

    def test_a_reads_frames_come_in_one_call_and_a_ping_between_keeps_its_place(self):
        calls: list[list[bytes]] = []
        sock = BenchSocket("h", "/ws")
        sock.on_frames = lambda payloads: calls.append(list(payloads))
        sock._open = True
        transport = StringTransport()
        sock.transport = transport
        sock.dataReceived(b"\x82\x01a\x82\x01b")
        self.assertEqual(calls, [[b"a", b"b"]])

        def pong_after_c(payloads: list[bytes]) -> None:
            calls.append([*payloads, transport.value()])  # no pong written yet for "c"

        sock.on_frames = pong_after_c
        sock.dataReceived(b"\x82\x01c\x89\x00\x82\x01d")
        self.assertEqual(calls[1], [b"c", b""])
        self.assertEqual(calls[2][0], b"d")
        self.assertEqual(calls[2][1][:1], b"\x8a")  # the pong went out between them

    def _runs(self, result: bool) -> tuple[BenchSocket, list[tuple[bytes, int, int]], list[bytes]]:
        runs: list[tuple[bytes, int, int]] = []
        got: list[bytes] = []
        sock = BenchSocket("h", "/ws")
        sock._open = True
        sock.on_frames = got.extend
        sock.on_run = lambda buf, step, n: runs.append((bytes(buf), step, n)) or result
        return sock, runs, got

    def test_a_read_of_frames_of_one_size_goes_whole_to_on_run(self):
        sock, runs, got = self._runs(True)
        sock.dataReceived(b"\x82\x03abc\x82\x03def\x82\x03ghi")
        self.assertEqual((runs, got), ([(b"\x82\x03abc\x82\x03def\x82\x03ghi", 5, 3)], []))

    def test_frames_on_run_refuses_are_split_for_on_frames(self):
        sock, runs, got = self._runs(False)
        sock.dataReceived(b"\x82\x03abc\x82\x03def")
        self.assertEqual((len(runs), got), (1, [b"abc", b"def"]))

    def test_a_read_of_mixed_sizes_or_a_cut_frame_is_split_as_before(self):
        sock, runs, got = self._runs(True)
        sock.dataReceived(b"\x82\x03abc\x82\x02de")
        sock.dataReceived(b"\x82\x03abc\x82\x03de")  # the second frame is cut
        sock.dataReceived(b"f")
        self.assertEqual((runs, got), ([], [b"abc", b"de", b"abc", b"def"]))


class _Recorder(protocol.Protocol):
    def __init__(self, fail: bool = False) -> None:
        self.data = b""
        self.fail = fail
        self.lost: list[Any] = []

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.data += data
        if self.fail:
            raise ValueError("the protocol failed")

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        self.lost.append(reason)


class LeanReactor(unittest.TestCase):
    """The load tool's reactor delivers a client's reads itself, over real loopback sockets."""

    def setUp(self) -> None:
        self.reactor = LeanEPollReactor()
        self.served: list[protocol.Protocol] = []
        self.routed: list[int] = []  # fds of the read events left to Twisted's own path
        own_path = self.reactor._doReadOrWrite

        def counted(selectable: Any, fd: int, event: int) -> None:
            if event & select.EPOLLIN:
                self.routed.append(fd)
            own_path(selectable, fd, event)

        self.reactor._doReadOrWrite = counted  # type: ignore[method-assign]

        def serve() -> protocol.Protocol:
            server = protocol.Protocol()
            self.served.append(server)
            return server

        self.port = self.reactor.listenTCP(
            0, protocol.Factory.forProtocol(serve), interface="127.0.0.1"
        )

    def tearDown(self) -> None:
        self.port.stopListening()
        for selectable in self.reactor.removeAll():
            selectable.connectionLost(failure.Failure(error.ConnectionDone()))
        self.reactor._poller.close()

    def _spin(self, done: Any) -> None:
        for _ in range(500):
            if done():
                return
            self.reactor.iterate(0.01)
        self.fail("the reactor did not get there")

    def _connect(self, client: _Recorder) -> Any:
        factory = protocol.ClientFactory.forProtocol(lambda: client)
        self.reactor.connectTCP("127.0.0.1", self.port.getHost().port, factory)
        self._spin(lambda: self.served and self.served[0].transport is not None)
        return self.served[0].transport

    def test_a_clients_reads_reach_its_protocol_then_its_close(self):
        client = _Recorder()
        server = self._connect(client)
        server.write(b"hello ")
        server.write(b"world")
        self._spin(lambda: client.data == b"hello world")
        fd = client.transport.fileno()
        server.loseConnection()
        self._spin(lambda: client.lost)
        self.assertTrue(client.lost[0].check(error.ConnectionDone))
        self.assertNotIn(fd, self.routed)  # read and close both took the short path

    def test_a_protocol_error_is_logged_and_drops_the_connection(self):
        client = _Recorder(fail=True)
        self._connect(client).write(b"x")
        self._spin(lambda: client.lost)
        self.assertEqual(client.data, b"x")
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)


class NodeFanOut(unittest.TestCase):
    """The node's fan-out quantiles come from its histogram, between two readings."""

    def test_quantiles_are_the_bucket_bounds_of_the_batches_between_readings(self):
        from prometheus_client import CollectorRegistry, Histogram, generate_latest

        registry = CollectorRegistry()
        h = Histogram("gochat_fanout_seconds", "x", registry=registry, buckets=(0.01, 0.1, 1))
        h.observe(5)  # before the run: not counted
        before = runner.fanout_buckets(generate_latest(registry).decode())
        for value in [0.005] * 60 + [0.05] * 39 + [0.5]:
            h.observe(value)
        after = runner.fanout_buckets(generate_latest(registry).decode())
        self.assertEqual(runner.fanout_quantiles(before, after), (10.0, 100.0))
        self.assertEqual(runner.fanout_quantiles(after, after), (None, None))
        self.assertEqual(runner.fanout_quantiles({}, {}), (None, None))


class Scenarios(NodeTestCase):
    """Small real runs; the assertions are about counts, never about speed."""

    timeout = 120

    def target(self, processes: int = 1) -> runner.Target:
        return runner.Target(
            http=self.node.http_url, ws=self.node.ws_url, processes=processes, progress=False
        )

    def assert_clean(self, report: dict) -> None:
        self.assertEqual(set(report) & REPORT_FIELDS, REPORT_FIELDS)
        self.assertEqual(report["lost"], 0)
        self.assertEqual(report["duplicated"], 0)
        self.assertEqual(report["ack_errors"], 0)
        self.assertEqual(report["received"], report["expected"])
        self.assertEqual(report["acked"], report["sent"])
        self.assertIsNotNone(report["ack_p99_ms"])
        self.assertIsNotNone(report["push_p99_ms"])
        json.loads(json.dumps(report))  # the --json output is plain JSON

    @defer.inlineCallbacks
    def test_group_every_online_member_gets_every_message(self):
        report = yield runner.run_group(
            reactor, self.target(), members=7, online=5, senders=3, rounds=3, interval=0
        )
        self.assert_clean(report)
        # 3 senders x 3 rounds, each to the 4 other online members
        self.assertEqual(report["expected"], 36)
        self.assertEqual(report["sent"], 9)
        # the node's own part, read from its /metrics before and after the run
        self.assertIsNotNone(report["node_fanout_p99_ms"])
        self.assertLessEqual(report["node_fanout_p50_ms"], report["node_fanout_p99_ms"])

    @defer.inlineCallbacks
    def test_group_paced_rounds(self):
        report = yield runner.run_group(
            reactor, self.target(), members=4, online=4, senders=4, rounds=2, interval=0.05
        )
        self.assert_clean(report)
        self.assertEqual(report["expected"], 4 * 3 * 2)

    @defer.inlineCallbacks
    def test_group_over_two_client_processes(self):
        report = yield runner.run_group(
            reactor, self.target(processes=2), members=6, online=6, senders=6, rounds=2, interval=0
        )
        self.assert_clean(report)
        self.assertEqual(report["expected"], 6 * 5 * 2)
        self.assertEqual(report["processes"], 2)

    @defer.inlineCallbacks
    def test_group_set_up_in_the_database_logs_in_with_signed_tokens(self):
        target = self.target(processes=2)
        target.setup_db = "sqlite:" + os.path.join(self.node.data_dir, "gochat.db")
        target.setup_secret = os.path.join(self.node.data_dir, "secret.key")
        report = yield runner.run_group(
            reactor, target, members=40, online=6, senders=3, rounds=2, interval=0
        )
        self.assert_clean(report)
        self.assertEqual(report["setup"], "database")
        self.assertEqual(report["expected"], 3 * 5 * 2)  # 3 senders to 5 online others
        members = yield self.node.service.store.group_members(1)
        self.assertEqual(len(members), 40)

    @defer.inlineCallbacks
    def test_group_members_placed_over_several_nodes_urls(self):
        target = self.target(processes=2)
        # one node here, reached under two URLs: every member gets its own
        target.ws_nodes = [self.node.ws_url, self.node.ws_url.replace("127.0.0.1", "localhost")]
        target.pids = [os.getpid(), os.getpid()]
        report = yield runner.run_group(
            reactor, target, members=6, online=6, senders=6, rounds=2, interval=0
        )
        self.assert_clean(report)
        self.assertIsNotNone(report["node_cpu_s"])
        self.assertGreater(report["node_rss_end_kb"], 0)  # both "nodes" are this process
        self.assertIn("node RSS at the end", stats.format_table(report))

    @defer.inlineCallbacks
    def test_single_pipelined(self):
        report = yield runner.run_single(reactor, self.target(), pairs=3, messages=20, window=5)
        self.assert_clean(report)
        self.assertEqual((report["expected"], report["sent"]), (60, 60))

    @defer.inlineCallbacks
    def test_single_paced(self):
        report = yield runner.run_single(reactor, self.target(), pairs=2, messages=5, rate=200)
        self.assert_clean(report)
        self.assertEqual(report["expected"], 10)

    @defer.inlineCallbacks
    def test_connections_reads_the_node_rss(self):
        target = self.target()
        target.pid = os.getpid()  # the node runs in this process
        report = yield runner.run_connections(reactor, target, count=12, users=3, hold=0)
        self.assertEqual((report["connections"], report["failed"]), (12, 0))
        self.assertIsNotNone(report["node_rss_after_kb"])
        self.assertIsNotNone(report["node_cpu_s"])

    @defer.inlineCallbacks
    def test_report_is_written_as_a_table_and_json(self):
        report = yield runner.run_single(reactor, self.target(), pairs=1, messages=3)
        path = os.path.join(tempfile.mkdtemp(), "single.json")
        out = io.StringIO()
        runner.write_report(report, path, out)
        self.assertIn("deliveries/s", out.getvalue())
        with open(path) as f:
            self.assertEqual(json.load(f)["received"], 3)


class LocalNodeForStandardRun(unittest.TestCase):
    """``gochat-bench standard`` (``tox -e bench``) runs against a node it starts itself."""

    timeout = 120

    @defer.inlineCallbacks
    def test_the_started_node_lets_a_benchmark_register_past_the_auth_burst(self):
        from gochat.bench.node import start_local_node
        from gochat.client import HttpApi

        node = start_local_node()  # a real twistd process on free ports
        self.addCleanup(node.stop)
        # More than the 10 at once that a shared login/sign-up limit once allowed.
        users = yield runner.register_users(HttpApi(node.http, reactor), 15, "bench-pass")
        self.assertEqual(len({user_id for user_id, _ in users}), 15)


class BulkSetup(unittest.TestCase):
    """``Store.create_users``: thousands of accounts in one transaction."""

    timeout = 60

    @defer.inlineCallbacks
    def test_users_come_back_in_order_with_a_seq_row_each(self):
        from gochat.store import Database, Store, engine_from_url

        url = "sqlite:" + tempfile.mkdtemp(prefix="gochat-bulk-") + "/gochat.db"
        database = Database(engine_from_url(url, ""))
        self.addCleanup(database.close)
        yield database.migrate()
        store = Store(database)
        accounts = yield store.create_users([(f"p{i}", f"n{i}", "!") for i in range(1200)])
        ids = [a.user_id for a in accounts]
        self.assertEqual(len(set(ids)), 1200)
        self.assertEqual({a.token_generation for a in accounts}, {0})
        found = yield store.get_user_by_phone("p1199")
        self.assertEqual(found, (ids[-1], "!"))
        seqs = yield defer.gatherResults([store.latest_seq(u) for u in ids[:3]])
        self.assertEqual(seqs, [0, 0, 0])

    @defer.inlineCallbacks
    def test_a_taken_phone_number_inserts_nothing(self):
        from gochat.store import Conflict, Database, Store, engine_from_url

        url = "sqlite:" + tempfile.mkdtemp(prefix="gochat-bulk-") + "/gochat.db"
        database = Database(engine_from_url(url, ""))
        self.addCleanup(database.close)
        yield database.migrate()
        store = Store(database)
        yield store.create_user("taken", "t", "!")
        yield self.assertFailure(
            store.create_users([("new", "n", "!"), ("taken", "t", "!")]), Conflict
        )
        self.assertIsNone((yield store.get_user_by_phone("new")))


class ClusterRateOptions(unittest.TestCase):
    def test_gochat_bench_help_lists_the_cluster_subcommand(self):
        self.assertIn("cluster", cli.build_parser().format_help())

    def test_node_counts_take_a_list(self):
        from gochat.bench import cluster_rate

        args = cluster_rate.parse(["--db", "postgresql://x/y", "--nodes", "1,2,3"])
        self.assertEqual((args.nodes, args.messages, args.senders), ([1, 2, 3], 10, 500))
        self.assertEqual(cluster_rate.parse(["--db", "x", "--scenario", "single"]).messages, 40)

    def test_cpu_growth_is_the_largest_cluster_over_the_smallest(self):
        from gochat.bench import cluster_rate

        results = [
            {"nodes": 1, "node_cpu_ms_per_1000": 4.0},
            {"nodes": 3, "node_cpu_ms_per_1000": 5.0},
        ]
        self.assertAlmostEqual(cluster_rate.cpu_growth(results), 1.25)
        self.assertIsNone(cluster_rate.cpu_growth(results[:1]))

    def test_repeated_runs_are_compared_by_their_medians(self):
        from gochat.bench import cluster_rate

        results = [
            {"nodes": n, "node_cpu_ms_per_1000": c, "deliveries_per_second": r}
            for n, c, r in [(1, 1.0, 10), (3, 1.2, 30), (1, 9.0, 20), (3, 1.4, 40), (1, 1.1, 30)]
        ]
        self.assertAlmostEqual(cluster_rate.cpu_growth(results), 1.3 / 1.1)  # not the means
        self.assertEqual(
            cluster_rate.medians(results),
            [
                "median of 3: nodes=1 deliveries_per_second=20.0 node_cpu_ms_per_1000=1.100"
                " (runs 1.000, 1.100, 9.000)",
                "median of 2: nodes=3 deliveries_per_second=35.0 node_cpu_ms_per_1000=1.300"
                " (runs 1.200, 1.400)",
            ],
        )
        self.assertEqual(cluster_rate.parse(["--db", "x", "--repeat", "3"]).repeat, 3)

    def test_counted_instructions_are_compared_by_their_medians_too(self):
        from gochat.bench import cluster_rate

        results = [
            {"nodes": n, "node_cpu_ms_per_1000": 1.0, "deliveries_per_second": 10,
             "node_instructions_per_delivery": i}
            for n, i in [(1, 900), (3, 1200), (1, 1000), (3, 1300), (1, 5000)]
        ]  # fmt: skip
        growth = cluster_rate.cpu_growth(results, "node_instructions_per_delivery")
        self.assertAlmostEqual(growth, 1250 / 1000)
        self.assertTrue(
            cluster_rate.medians(results)[1].endswith(" node_instructions_per_delivery=1250")
        )

    def test_the_standard_run_includes_the_10000_member_group(self):
        big = [full for name, full, _ in cli.STANDARD if "--setup-db" in full]
        self.assertEqual(len(big), 1)
        args = big[0]
        self.assertEqual(args[args.index("--members") + 1], "10000")
        self.assertEqual(args[args.index("--online") + 1], "2000")


class ReactorThreadCPU(unittest.TestCase):
    def test_a_database_threads_cpu_counts_in_the_node_but_not_in_its_reactor(self):
        import threading

        pid = os.getpid()
        total0, reactor0 = runner.node_cpu_seconds(pid), runner.node_reactor_cpu_seconds(pid)

        def burn() -> None:
            end = time.thread_time() + 0.3
            while time.thread_time() < end:
                pass

        worker = threading.Thread(target=burn)
        worker.start()
        worker.join()
        total1, reactor1 = runner.node_cpu_seconds(pid), runner.node_reactor_cpu_seconds(pid)
        self.assertGreaterEqual(total1 - total0, 0.25)
        self.assertLess(reactor1 - reactor0, 0.1)
        self.assertIsNone(runner.node_reactor_cpu_seconds(None))


class NodeGone(NodeTestCase):
    """A node whose /proc entry is gone by the end of a run: no CPU figure, no crash."""

    target = Scenarios.target

    def _vanishing(self):
        readings = iter([1.0])
        self.patch(runner, "node_cpu_seconds", lambda pid: next(readings, None))

    @defer.inlineCallbacks
    def test_a_node_gone_by_the_end_has_no_cpu_figure(self):
        self._vanishing()
        target = self.target()
        target.pid = 1
        report = yield runner.run_connections(reactor, target, count=2, users=1, hold=0)
        self.assertIsNone(report["node_cpu_s"])
        self.assertIsNone(report["node_cpu_pct"])

    @defer.inlineCallbacks
    def test_a_driven_run_with_a_node_gone_by_the_end_has_no_cpu_figure(self):
        self._vanishing()
        target = self.target()
        target.pid = 1
        report = yield runner.run_single(reactor, target, pairs=1, messages=2)
        self.assertIsNone(report["node_cpu_s"])
        self.assertIsNone(report["node_cpu_pct"])
