"""gochat-bench --callgrind: a real node under valgrind, its instructions counted over the run.

And ``cluster_rate --callgrind``: every node of a real cluster (PostgreSQL, Redis, PB) so counted.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial import unittest

from gochat.bench import callgrind, cluster_rate, runner, stats
from tests import services
from tests.processes import ANY_PORT, TWISTD, TwistdProcess
from tests.util import missing_service


def need_callgrind() -> None:
    if not (shutil.which("valgrind") and shutil.which("callgrind_control")):
        missing_service("valgrind (callgrind) is not installed")


class TotalInstructions(unittest.TestCase):
    def test_the_totals_line_is_the_count(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("# callgrind format\nevents: Ir\nfn=main\n1 5\nsummary: 0\ntotals: 123456\n")
        self.assertEqual(callgrind.total_instructions(path), 123456)

    def test_a_file_without_one_is_an_error(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("events: Ir\n")
        self.assertRaises(RuntimeError, callgrind.total_instructions, path)


class NodeUnderCallgrind(unittest.TestCase):
    timeout = 300

    @defer.inlineCallbacks
    def test_a_group_run_reports_the_nodes_instructions_per_delivery(self) -> Any:
        need_callgrind()
        work = tempfile.mkdtemp(prefix="gochat-callgrind-")
        self.addCleanup(shutil.rmtree, work, True)
        out = os.path.join(work, "node.cg")
        argv = [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={out}",
            *TWISTD,
            "-n",
            "--pidfile=",
            "gochat",
            "--data-dir",
            os.path.join(work, "data"),
            "--http",
            ANY_PORT,
            "--ws",
            ANY_PORT,
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("GOCHAT_")}
        node = TwistdProcess().spawn(argv, env, work)

        def stop() -> Any:
            if node.running:
                node.transport.signalProcess("TERM")
            return node.ended

        self.addCleanup(stop)
        yield node.when_ready(timeout=240)
        target = runner.Target(
            http=node.http_url,
            ws=node.ws_url,
            pid=node.transport.pid,
            progress=False,
            timeout=120,
            callgrind=out,
        )
        report = yield runner.run_group(
            reactor, target, members=3, online=3, senders=3, rounds=2, interval=0
        )
        self.assertEqual((report["received"], report["lost"]), (12, 0))
        # Counting covered the messages only: real work per delivery (a push
        # and a share of the commit, thousands of instructions), yet far
        # less than the node's start-up (hundreds of millions), left out.
        per_delivery = report["node_instructions_per_delivery"]
        self.assertGreater(per_delivery, 1_000)
        self.assertLess(report["node_instructions"], 200_000_000)
        self.assertIn("node instructions", stats.format_table(report))


class ClusterUnderCallgrind(unittest.TestCase):
    timeout = 600

    @defer.inlineCallbacks
    def test_every_nodes_instructions_are_counted_and_added_up(self) -> Any:
        need_callgrind()
        db = services.postgres_database(self)
        redis_url, prefix = services.redis_prefix(self)
        args = cluster_rate.parse(
            ["--db", db, "--redis", redis_url, "--redis-prefix", prefix, "--callgrind",
             "--members", "4", "--senders", "4", "--messages", "2", "--processes", "1",
             "--timeout", "240"]
        )  # fmt: skip
        result = yield cluster_rate.run_cluster(reactor, args, 2)
        # 4 senders x 2 rounds, each pushed to the 3 other members
        self.assertEqual((result["deliveries"], result["lost"]), (24, 0))
        # The load tool's share of the machine is reported; for 24 deliveries
        # it can take under 5 ms, which the report's two decimals make 0.0.
        self.assertIsInstance(result["client_cpu_s"], float)
        self.assertGreaterEqual(result["client_cpu_s"], 0)
        each = result["node_instructions_each"]
        self.assertEqual(len(each), 2)
        # Both nodes worked for the run (the group's home commits, the other
        # forwards and pushes), yet neither count holds its start-up (hundreds
        # of millions of instructions).
        for count in each:
            self.assertGreater(count, 100_000)
            self.assertLess(count, 200_000_000)
        self.assertEqual(result["node_instructions_per_delivery"], round(sum(each) / 24))

    def test_only_the_group_scenario_is_counted(self):
        with self.assertRaises(SystemExit):
            cluster_rate.parse(["--db", "x", "--scenario", "single", "--callgrind"])
