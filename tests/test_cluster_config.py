"""Cluster options: what a node refuses to start with, in one line."""

from __future__ import annotations

import os
import tempfile

from twisted.internet import defer
from twisted.trial import unittest

from gochat.config import ConfigError, Options, build_config, rpc_host
from tests import services
from tests.processes import ANY_PORT, spawn_twistd, unused_port


class ClusterOptions(unittest.TestCase):
    def setUp(self) -> None:
        directory = tempfile.mkdtemp(prefix="gochat-config-")
        self.secret = os.path.join(directory, "cluster.secret")
        with open(self.secret, "w") as f:
            f.write("a-long-enough-cluster-secret\n")

    def options(self, **values: str) -> Options:
        opts = Options()
        opts.update(
            {
                "redis": "redis://127.0.0.1:6379/0",
                "db": "postgresql://postgres@127.0.0.1/gochat",
                "cluster-secret-file": self.secret,
            }
        )
        opts.update({k.replace("_", "-"): v for k, v in values.items()})
        return opts

    def assertRefused(self, opts: Options, *words: str) -> None:  # noqa: N802
        with self.assertRaises(ConfigError) as caught:
            build_config(opts)
        message = str(caught.exception)
        self.assertNotIn("\n", message)
        for word in words:
            self.assertIn(word, message)

    def test_a_valid_cluster_config(self):
        config = build_config(self.options(presence_lease="5", redis_prefix="c1:"))
        self.assertTrue(config.cluster)
        self.assertEqual((config.presence_lease, config.redis_prefix), (5.0, "c1:"))

    def test_sqlite_is_refused_in_cluster_mode(self):
        self.assertRefused(self.options(db="sqlite:gochat.db"), "--db", "cluster mode")
        opts = self.options()
        opts["db"] = None  # the default SQLite file
        self.assertRefused(opts, "--db", "SQLite")

    def test_sqlite_is_fine_on_a_single_node(self):
        opts = self.options(db="sqlite:gochat.db")
        opts["redis"] = None
        self.assertFalse(build_config(opts).cluster)

    def test_cluster_secret_is_required_and_must_be_long_enough(self):
        opts = self.options()
        opts["cluster-secret-file"] = None
        self.assertRefused(opts, "--cluster-secret-file", "required")
        self.assertRefused(self.options(cluster_secret_file="/nonexistent/x"), "cannot read")
        with open(self.secret, "w") as f:
            f.write("short")
        self.assertRefused(self.options(), "at least 16 bytes")

    def test_bad_redis_url_and_lease(self):
        self.assertRefused(self.options(redis="http://x"), "--redis")
        self.assertRefused(self.options(presence_lease="60"), "--presence-lease")

    def test_rpc_on_every_interface_needs_advertise(self):
        self.assertRefused(self.options(rpc="tcp:9092"), "--advertise")
        config = build_config(self.options(rpc="tcp:9092", advertise="10.0.0.5:9092"))
        self.assertEqual(config.advertise, "10.0.0.5:9092")

    def test_rpc_host(self):
        self.assertEqual(rpc_host("tcp:9092:interface=127.0.0.1"), "127.0.0.1")
        self.assertEqual(rpc_host("ssl:9092:interface=10.1.2.3:privateKey=k.pem"), "10.1.2.3")
        self.assertIsNone(rpc_host("tcp:9092:interface=0.0.0.0"))
        self.assertIsNone(rpc_host("tcp:9092"))

    @defer.inlineCallbacks
    def test_twistd_says_one_line_and_exits(self):
        proc = spawn_twistd(
            [
                "--redis=redis://127.0.0.1:6379/0",
                f"--cluster-secret-file={self.secret}",
                f"--data-dir={tempfile.mkdtemp()}",
            ]
        )
        code, out, err = yield proc.ended
        lines = err.decode().strip().splitlines()
        self.assertEqual(code, 2)
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("cluster mode", lines[0])

    @defer.inlineCallbacks
    def test_a_node_without_redis_stops_at_start_with_one_line(self):
        db = services.postgres_database(self)
        proc = spawn_twistd(
            [
                f"--db={db}",
                f"--redis=redis://127.0.0.1:{unused_port()}/0",  # nothing listens there
                f"--rpc={ANY_PORT}",
                f"--ws={ANY_PORT}",
                f"--http={ANY_PORT}",
                f"--cluster-secret-file={self.secret}",
                f"--data-dir={tempfile.mkdtemp()}",
            ]
        )
        code, out, err = yield proc.ended
        # With -n, twistd sends stderr into its log on stdout.
        said = [
            line for line in (out + err).decode().splitlines() if "gochat: cannot start" in line
        ]
        self.assertEqual(code, 1)
        self.assertEqual(len(said), 1, said)
        self.assertIn("--redis redis://127.0.0.1:", said[0])
        self.assertIn("no answer within 10s", said[0])
