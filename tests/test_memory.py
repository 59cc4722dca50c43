"""The node's memory: password hashing in a real node process, RSS from /proc."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor
from twisted.trial import unittest

from gochat import malloc
from gochat.bench.runner import node_rss_kb, register_users
from gochat.client import HttpApi
from tests.processes import NodeProcess


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
