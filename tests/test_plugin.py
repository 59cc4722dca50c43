"""``twistd gochat``: the plugin is found, and a real twistd process serves HTTP and WebSocket."""

from __future__ import annotations

import os
import signal
import tempfile

from twisted.application.service import IServiceMaker
from twisted.internet import defer
from twisted.plugin import getPlugins
from twisted.trial import unittest

import twisted.plugins
from gochat.client import connect
from tests.processes import ANY_PORT, spawn_twistd


class PluginDiscovery(unittest.TestCase):
    def test_twistd_finds_the_gochat_plugin(self):
        makers = {m.tapname: m for m in getPlugins(IServiceMaker, twisted.plugins)}
        self.assertIn("gochat", makers)
        self.assertEqual(makers["gochat"].module, "gochat.tap")

    def test_top_level_twisted_plugins_has_no_init(self):
        # An __init__.py in the checkout's twisted/ would shadow Twisted itself.
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        self.assertTrue(
            os.path.exists(os.path.join(root, "twisted", "plugins", "gochat_plugin.py"))
        )
        self.assertFalse(os.path.exists(os.path.join(root, "twisted", "plugins", "__init__.py")))
        self.assertFalse(os.path.exists(os.path.join(root, "twisted", "__init__.py")))


class RealProcess(unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_twistd_gochat_answers_register_and_a_websocket_login(self):
        data_dir = tempfile.mkdtemp(prefix="gochat-plugin-")
        proc = spawn_twistd(["--http", ANY_PORT, "--ws", ANY_PORT, "--data-dir", data_dir])
        self.addCleanup(proc.stop)
        yield proc.when_ready()
        api = proc.api()
        alice = yield api.register("1000", "pw", "alice")
        bob = yield api.register("1001", "pw", "bob")
        a = yield proc.connect(alice["token"])
        self.addCleanup(a.close)
        # The same gateway is mounted at /ws on the HTTP port, for browsers.
        b = yield connect(proc.http_url.replace("http:", "ws:") + "/ws", bob["token"])
        self.addCleanup(b.close)
        got = defer.Deferred()
        b.on_message = got.callback
        seq = yield a.send_text(int(bob["id"]), "over a real process")
        msg = yield got
        self.assertEqual((seq, msg.seq, msg.content), (1, 1, b"over a real process"))
        self.assertTrue(os.path.exists(os.path.join(data_dir, "gochat.db")))
        self.assertTrue(os.path.exists(os.path.join(data_dir, "secret.key")))
        yield a.close()
        yield b.close()
        _, stdout, _ = yield proc.stop()
        # twistd shuts down cleanly on SIGTERM, then exits with that signal's status.
        self.assertIn(b"Server Shut Down.", stdout)
        self.assertEqual(proc.signal, signal.SIGTERM)

    @defer.inlineCallbacks
    def test_environment_configures_a_real_process(self):
        data_dir = tempfile.mkdtemp(prefix="gochat-plugin-env-")
        proc = spawn_twistd(
            [],
            env={"GOCHAT_HTTP": ANY_PORT, "GOCHAT_WS": ANY_PORT, "GOCHAT_DATA_DIR": data_dir},
        )
        self.addCleanup(proc.stop)
        yield proc.when_ready()
        data = yield proc.api().register("2000", "pw", "env")
        self.assertTrue(data["id"].isdigit())
        self.assertTrue(os.path.exists(os.path.join(data_dir, "gochat.db")))
