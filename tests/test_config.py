"""DESIGN.md section 2: options, GOCHAT_* variables, one-line errors from a real twistd."""

from __future__ import annotations

import os
import socket
import tempfile

from twisted.internet import defer
from twisted.trial import unittest

from gochat.config import _PARAMS, Config, Options, env_name
from tests.processes import spawn_twistd, unused_port

#: A valid value for every option of DESIGN.md section 2, and where it lands in Config.
SAMPLES = {
    "http": ("tcp:8080", "http", "tcp:8080"),
    "ws": ("tcp:8081", "ws", "tcp:8081"),
    "rpc": ("tcp:8082:interface=127.0.0.1", "rpc", "tcp:8082:interface=127.0.0.1"),
    "advertise": ("node1.example:8082", "advertise", "node1.example:8082"),
    # --redis below turns on cluster mode, which needs a server database
    "db": ("postgresql://gochat@db.example/chat", "db", "postgresql://gochat@db.example/chat"),
    "redis": ("redis://127.0.0.1:6379/2", "redis", "redis://127.0.0.1:6379/2"),
    "data-dir": ("/tmp/gochat-somewhere", "data_dir", "/tmp/gochat-somewhere"),
    "secret-file": ("/tmp/token.key", "secret_file", "/tmp/token.key"),
    "cluster-secret-file": ("/tmp/cluster.key", "cluster_secret_file", "/tmp/cluster.key"),
    "heartbeat-timeout": ("30", "heartbeat_timeout", 30.0),
    "heartbeat-interval": ("2.5", "heartbeat_interval", 2.5),
    "login-timeout": ("3", "login_timeout", 3.0),
    "sync-limit": ("20", "sync_limit", 20),
    "max-frame": ("4096", "max_frame", 4096),
}


class Environment(unittest.TestCase):
    def setUp(self):
        saved = {env_name(p[0]): os.environ.pop(env_name(p[0]), None) for p in _PARAMS}

        def restore():
            for key, value in saved.items():
                os.environ.pop(key, None)
                if value is not None:
                    os.environ[key] = value

        self.addCleanup(restore)

    def parse(self, argv):
        options = Options()
        options.parseOptions(argv)
        return options.config

    def test_defaults_follow_the_go_server(self):
        config = self.parse([])
        self.assertEqual(
            (config.http, config.ws, config.rpc, config.data_dir, config.db_url),
            (
                "tcp:9090",
                "tcp:9091",
                "tcp:9092:interface=127.0.0.1",
                "./gochat-data",
                "sqlite:" + os.path.join("./gochat-data", "gochat.db"),
            ),
        )
        self.assertEqual(
            (
                config.heartbeat_timeout,
                config.heartbeat_interval,
                config.login_timeout,
                config.sync_limit,
                config.max_frame,
                config.redis,
                config.secret_path,
            ),
            (600.0, 60.0, 10.0, 50, 65536, None, os.path.join("./gochat-data", "secret.key")),
        )

    def test_every_option_of_the_design_comes_from_its_environment_variable(self):
        samples = dict(SAMPLES)
        # Cluster mode (--redis) reads the cluster secret at start: it must exist.
        secret = os.path.join(tempfile.mkdtemp(), "cluster.key")
        with open(secret, "w") as f:
            f.write("a-cluster-secret-of-some-length\n")
        samples["cluster-secret-file"] = (secret, "cluster_secret_file", secret)
        for name, (raw, _, _) in samples.items():
            os.environ[env_name(name)] = raw
        config = self.parse([])
        for name, (_, attr, value) in samples.items():
            self.assertEqual(getattr(config, attr), value, name)

    def test_every_declared_option_reads_its_environment_variable(self):
        for name, *_ in _PARAMS:
            os.environ[env_name(name)] = f"from-env-{name}"
            self.assertEqual(Options()[name], f"from-env-{name}", name)
            del os.environ[env_name(name)]

    def test_variable_names_are_gochat_upper_snake(self):
        self.assertEqual(env_name("heartbeat-timeout"), "GOCHAT_HEARTBEAT_TIMEOUT")
        self.assertEqual(env_name("max-frame"), "GOCHAT_MAX_FRAME")

    def test_command_line_wins_over_the_environment(self):
        os.environ["GOCHAT_SYNC_LIMIT"] = "7"
        os.environ["GOCHAT_HTTP"] = "tcp:1111"
        config = self.parse(["--sync-limit", "9", "--http", "tcp:2222"])
        self.assertEqual((config.sync_limit, config.http), (9, "tcp:2222"))

    def test_empty_variable_means_default(self):
        os.environ["GOCHAT_SYNC_LIMIT"] = ""
        self.assertEqual(self.parse([]).sync_limit, Config.sync_limit)

    def test_max_frame_is_a_byte_count(self):
        self.assertEqual(self.parse(["--max-frame", "1048576"]).max_frame, 1048576)


class InvalidConfiguration(unittest.TestCase):
    """A real ``twistd -n gochat`` with a bad value: one line on stderr, non-zero exit."""

    timeout = 120

    BAD = [
        (["--max-frame", "nope"], {}, "--max-frame"),
        (["--sync-limit", "0"], {}, "--sync-limit"),
        (["--heartbeat-timeout", "-5"], {}, "--heartbeat-timeout"),
        (["--login-timeout", "soon"], {}, "--login-timeout"),
        (["--heartbeat-interval", "nan"], {}, "--heartbeat-interval"),
        (["--http", "carrier-pigeon:9"], {}, "--http"),
        (["--db", "ftp://db.example/x"], {}, "--db"),
        (["--redis", "http://127.0.0.1:6379"], {}, "--redis"),
        (["--advertise", "no-port"], {}, "--advertise"),
        ([], {"GOCHAT_MAX_FRAME": "lots"}, "--max-frame"),
    ]

    @defer.inlineCallbacks
    def test_invalid_values_stop_the_start_with_one_line(self):
        procs = [(spawn_twistd(args, env), args, env, name) for args, env, name in self.BAD]
        for proc, args, env, name in procs:
            status, _, stderr = yield proc.ended
            lines = stderr.decode().splitlines()
            self.assertNotEqual(status, 0, (args, env))
            self.assertEqual(len(lines), 1, (args, env, stderr))
            self.assertTrue(lines[0].startswith(f"gochat: error: {name}"), lines[0])

    @defer.inlineCallbacks
    def test_port_taken_prints_one_line_and_exits_1(self):
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = spawn_twistd(["--http", f"tcp:{port}:interface=127.0.0.1", "--ws", "tcp:0"])
        status, _, stderr = yield proc.ended
        self.assertEqual(status, 1)
        lines = stderr.decode().splitlines()
        self.assertEqual(len(lines), 1, stderr)
        self.assertTrue(lines[0].startswith(f"gochat: cannot start: --http tcp:{port}"), lines[0])

    @defer.inlineCallbacks
    def test_unusable_secret_file_or_data_dir_prints_one_line_and_exits_1(self):
        work = tempfile.mkdtemp(prefix="gochat-bad-")
        short = os.path.join(work, "short.key")
        with open(short, "w") as f:
            f.write("abc\n")
        not_a_dir = os.path.join(work, "file")
        open(not_a_dir, "w").close()
        cases = [
            (["--secret-file", short], "secret file"),
            (["--data-dir", os.path.join(not_a_dir, "sub")], "Not a directory"),
        ]
        procs = [
            (spawn_twistd(["--http", "tcp:0", "--ws", "tcp:0", *args], cwd=work), args, what)
            for args, what in cases
        ]
        for proc, args, what in procs:
            status, _, stderr = yield proc.ended
            lines = stderr.decode().splitlines()
            self.assertEqual(status, 1, args)
            self.assertEqual(len(lines), 1, (args, stderr))
            self.assertTrue(lines[0].startswith("gochat: cannot start: "), lines[0])
            self.assertIn(what, lines[0])

    @defer.inlineCallbacks
    def test_unreachable_database_prints_one_line_and_exits_1(self):
        closed = unused_port()
        proc = spawn_twistd(
            [
                "--http",
                "tcp:0",
                "--ws",
                "tcp:0",
                "--db",
                f"postgresql://postgres@127.0.0.1:{closed}/x",
            ]
        )
        status, _, stderr = yield proc.ended
        lines = stderr.decode().splitlines()
        self.assertEqual(status, 1)
        self.assertEqual(len(lines), 1, stderr)
        self.assertTrue(
            lines[0].startswith(
                f"gochat: cannot start: database postgresql://127.0.0.1:{closed}/x"
            ),
            lines[0],
        )
