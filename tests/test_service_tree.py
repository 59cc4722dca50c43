"""The node is a tree of services: its parts start in the order the node
needs and stop in an order that loses nothing; process-wide settings are made
by ``makeService`` only; a failed start leaves nothing behind."""

from __future__ import annotations

import os
import socket
import sys
import tempfile
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial import unittest

from gochat.config import Config, Options
from gochat.tap import SWITCH_INTERVAL, GoChatService, ListeningService, makeService
from tests.processes import ANY_PORT, spawn_twistd
from tests.util import Node, NodeTestCase, cheap_passwords


class Children(NodeTestCase):
    def test_each_part_of_a_node_is_a_named_child_service_in_start_order(self):
        names = [child.name for child in self.node.service]
        self.assertEqual(names, ["store", "passwords", "heartbeat", "malloc-trim", "ws", "http"])
        self.assertTrue(all(child.running for child in self.node.service))

    def test_ports_are_the_listening_children_ports(self):
        service = self.node.service
        self.assertEqual(set(service.ports), {"ws", "http"})
        self.assertIs(service.ports["http"], service.getServiceNamed("http").port)

    def test_the_ready_line_names_the_web_page(self):
        port = self.node.service.ports["http"].getHost().port
        self.assertEqual(self.node.service.web_url(), f"http://127.0.0.1:{port}/")

    @defer.inlineCallbacks
    def test_stop_closes_the_ports_before_the_database(self):
        service = self.node.service
        order: list[str] = []
        store = service.getServiceNamed("store")
        close = service.database.close
        self.patch(service.database, "close", lambda: (order.append("database"), close())[1])
        for child in service:
            if isinstance(child, ListeningService):
                stop = child.port.stopListening

                def stopped(stop: Any = stop, name: str = child.name) -> Any:
                    order.append(name)
                    return stop()

                self.patch(child.port, "stopListening", stopped)
        yield self.node.stop()
        self.assertEqual(order, ["http", "ws", "database"])
        self.assertFalse(store.running)
        self.assertEqual(service.ports, {})


class StartOrder(unittest.TestCase):
    @defer.inlineCallbacks
    def test_nothing_listens_when_the_schema_cannot_be_made(self):
        work = tempfile.mkdtemp(prefix="gochat-tree-")
        with open(os.path.join(work, "gochat.db"), "wb") as f:
            f.write(b"not a database" * 1000)  # SQLite refuses it at the first query
        node = Node(work)
        with self.assertRaises(Exception) as caught:
            yield node.start()
        self.assertIn("database", str(caught.exception))
        self.assertEqual(node.service.ports, {})
        self.assertEqual([c.name for c in node.service if c.running], [])


class ProcessWideSettings(unittest.TestCase):
    def setUp(self) -> None:
        before = sys.getswitchinterval()
        self.addCleanup(sys.setswitchinterval, before)
        sys.setswitchinterval(0.005)

    def test_the_constructor_leaves_the_switch_interval_alone(self):
        GoChatService(
            Config(data_dir=tempfile.mkdtemp()), reactor, cheap_passwords(), exit_on_failure=False
        )
        self.assertEqual(sys.getswitchinterval(), 0.005)

    def test_make_service_sets_it(self):
        import gc

        self.addCleanup(gc.set_threshold, *gc.get_threshold())
        self.addCleanup(gc.unfreeze)
        options = Options()
        options.parseOptions(["--data-dir", tempfile.mkdtemp()])
        makeService(options)
        self.assertAlmostEqual(sys.getswitchinterval(), SWITCH_INTERVAL)


class FailedStart(unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def start_on_a_taken_port(self, work: str, data_dir: str, pidfile: str = "") -> Any:
        """Run ``twistd gochat`` in ``work`` with ``--http`` on a port already taken;
        fires with its stderr once it has exited with status 1."""
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        http = f"tcp:{taken.getsockname()[1]}:interface=127.0.0.1"
        proc = spawn_twistd(
            ["--data-dir", data_dir, "--http", http, "--ws", ANY_PORT],
            cwd=work,
            twistd_args=("-n", f"--pidfile={pidfile}"),
        )
        status, _, stderr = yield proc.ended
        self.assertEqual(status, 1, stderr)
        self.assertIn(b"cannot start: --http", stderr)
        return stderr

    @defer.inlineCallbacks
    def test_a_failed_start_removes_the_pid_file_and_the_data_dir_it_made(self):
        work = tempfile.mkdtemp(prefix="gochat-failed-")
        pidfile = os.path.join(work, "twistd.pid")
        yield self.start_on_a_taken_port(work, os.path.join(work, "gochat-data"), pidfile)
        self.assertEqual(sorted(os.listdir(work)), [])

    @defer.inlineCallbacks
    def test_a_failed_start_keeps_a_data_dir_that_was_there(self):
        work = tempfile.mkdtemp(prefix="gochat-failed-")
        data_dir = os.path.join(work, "gochat-data")
        os.mkdir(data_dir)
        yield self.start_on_a_taken_port(work, data_dir)
        self.assertTrue(os.path.isdir(data_dir))


class StopWhileStarting(unittest.TestCase):
    @defer.inlineCallbacks
    def test_a_node_stopped_during_its_migration_never_listens(self):
        node = GoChatService(
            Config(
                data_dir=tempfile.mkdtemp(),
                http="tcp:0:interface=127.0.0.1",
                ws="tcp:0:interface=127.0.0.1",
            ),
            reactor,
            cheap_passwords(),
            exit_on_failure=False,
        )
        migrate = node.database.migrate
        held: defer.Deferred[Any] = defer.Deferred()
        self.patch(node.database, "migrate", lambda: held.addCallback(lambda _: migrate()))
        node.startService()
        yield node.stopService()
        held.callback(None)
        with self.assertRaises(Exception) as caught:
            yield node.ready
        self.assertIn("stopped while starting", str(caught.exception))
        self.assertEqual(node.ports, {})
        self.assertEqual([c.name for c in node if c.running], [])
