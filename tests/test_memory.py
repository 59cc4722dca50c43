"""The node's memory: password hashing in a real node process, RSS from /proc."""

from __future__ import annotations

import gc
import struct
import weakref
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from gochat import malloc
from gochat.bench.runner import node_rss_kb, register_users
from gochat.client import HttpApi
from gochat.pb import pb
from tests.processes import NodeProcess
from tests.rawws import OP_CLOSE, build_frame
from tests.util import NodeTestCase, text


class PasswordHashingMemory(unittest.TestCase):
    timeout = 240

    @defer.inlineCallbacks
    def test_sign_ups_leave_the_idle_node_near_its_start(self) -> Any:
        """Real argon2 parameters (19 MiB a hash) over two hashing threads.

        Before, every thread that ever hashed kept its 19 MiB (glibc's heap
        kept the block) in a pool of ten: +200 MB after 500 sign-ups. Now at
        most two hashes run at once and each unmaps its block when done, so
        the idle node stays within a few MB of where it started.
        """
        if not malloc.tune():
            raise unittest.SkipTest("not glibc: the allocator's thresholds cannot be set")
        node = NodeProcess("memory", None, ["--hash-threads", "2"])
        yield node.start()
        self.addCleanup(node.stop)
        pid = node.pid
        api = HttpApi(node.http_url, reactor)
        before = node_rss_kb(pid)
        yield register_users(api, 40, "a-real-password")
        after = node_rss_kb(pid)
        assert before is not None and after is not None
        grown_mb = (after - before) / 1024
        # one thread holding its 19 MiB block would already be past this
        self.assertLess(grown_mb, 15, f"RSS grew {grown_mb:.1f} MB over 40 sign-ups")


class PasswordThreads(unittest.TestCase):
    @defer.inlineCallbacks
    def test_the_hashing_threads_stop_with_the_node_and_start_again_on_demand(self) -> Any:
        import threading

        from gochat.auth import Passwords

        def hashing_threads() -> int:
            return sum(1 for t in threading.enumerate() if "gochat-argon2" in t.name)

        before = hashing_threads()
        passwords = Passwords(time_cost=1, memory_cost=8, threads=1)
        svc = passwords.service()
        svc.startService()
        hashed = yield passwords.hash("pw")
        self.assertEqual(hashing_threads(), before + 1)
        yield svc.stopService()
        self.assertEqual(hashing_threads(), before)
        self.assertTrue((yield passwords.verify(hashed, "pw")))  # a new pool, on demand
        passwords.stop()


class ClosedConnections(NodeTestCase):
    """A closed connection's objects go at their last reference, not at a cyclic collection.

    The node runs the cyclic collector's oldest generation rarely
    (``tap.GC_THRESHOLDS``), and a connection open for a while has been
    moved there: a connection caught in a reference cycle stayed in memory
    long after it closed (about 4.6 KB each, 2.3 MB a run of the seed's
    scenario, growing with every run).
    """

    def setUp(self) -> Any:
        d = super().setUp()
        gc.disable()  # only reference counting frees anything during the test
        self.addCleanup(gc.enable)
        return d

    @defer.inlineCallbacks
    def open(self, token: str | None) -> Any:
        """A raw client, logged in when given a token, and weakrefs to the node's
        session and protocol of it."""
        hub = self.node.service.hub
        before = set(hub.sessions)
        proto = yield self.raw(token, device_id="d1" if token else "", push_ack=True)
        (session,) = hub.sessions - before
        closed = session.conn.is_closed
        return proto, closed, [weakref.ref(session), weakref.ref(session.conn)]

    @defer.inlineCallbacks
    def assert_freed(self, proto: Any, closed: defer.Deferred, refs: list[weakref.ref]) -> Any:
        yield closed  # the node's side is closed
        yield proto.closed  # and the TCP connection gone (the node's timers with it)
        yield task.deferLater(reactor, 0, lambda: None)
        self.assertEqual([type(r()).__name__ for r in refs if r() is not None], [])

    @defer.inlineCallbacks
    def test_a_client_that_chatted_and_closed_cleanly(self) -> Any:
        uid, token = yield self.node.user("a")
        peer, _ = yield self.node.user("b")
        proto, closed, refs = yield self.open(token)
        proto.up(1, text(peer, "hi"))
        ack = yield proto.next_output()
        self.assertEqual((ack.type, ack.code), (pb.CT_ACK, 200))
        proto.send_input(pb.CT_Sync, pb.SyncInputMsg(seq=0))
        synced = yield proto.next_output()
        self.assertEqual((synced.type, synced.code), (pb.CT_Sync, 200))
        proto.send(build_frame(OP_CLOSE, struct.pack("!H", 1000)))
        yield self.assert_freed(proto, closed, refs)

    @defer.inlineCallbacks
    def test_a_client_that_dropped_tcp(self) -> Any:
        _, token = yield self.node.user("a")
        proto, closed, refs = yield self.open(token)
        yield proto.abort()
        yield self.assert_freed(proto, closed, refs)

    @defer.inlineCallbacks
    def test_a_connection_the_node_closed_for_a_bad_token(self) -> Any:
        proto, closed, refs = yield self.open(None)
        proto.send_input(pb.CT_Login, pb.LoginMsg(token=b"not-a-token"))
        reply = yield proto.next_output()
        self.assertEqual(reply.code, 1003)
        yield self.assert_freed(proto, closed, refs)
