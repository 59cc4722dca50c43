"""``/metrics``: what a client got wrong is not a store error, and the
process itself (CPU, memory, open files) is measured."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from gochat.client import ApiError
from tests.test_observability import scrape, value
from tests.util import NodeTestCase


class Refusals(NodeTestCase):
    @defer.inlineCallbacks
    def test_a_taken_phone_number_is_a_409_and_not_a_store_error(self):
        api = self.node.api()
        yield api.register("5550001", "secret", "first")
        before = yield scrape(self.node)
        with self.assertRaises(ApiError) as caught:
            yield api.register("5550001", "secret", "second")
        self.assertEqual(caught.exception.status, 409)
        after = yield scrape(self.node)
        name = "gochat_store_errors_total"
        self.assertEqual(
            value(after, name, name="create_user"), value(before, name, name="create_user")
        )

    @defer.inlineCallbacks
    def test_an_unknown_friend_is_a_404_and_not_a_store_error(self):
        api = self.node.api()
        me = yield api.register("5550002", "secret", "me")
        before = yield scrape(self.node)
        with self.assertRaises(ApiError) as caught:
            yield api.add_friend(me["token"], 987654321)
        self.assertEqual(caught.exception.status, 404)
        after = yield scrape(self.node)
        totals: Any = [
            sum(v for (n, _), v in s.items() if n == "gochat_store_errors_total")
            for s in (before, after)
        ]
        self.assertEqual(totals[0], totals[1])


class ProcessMetrics(NodeTestCase):
    @defer.inlineCallbacks
    def test_cpu_memory_and_open_files_are_exported(self):
        samples = yield scrape(self.node)
        names = {name for name, _ in samples}
        for name in (
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_max_fds",
        ):
            self.assertIn(name, names)
        self.assertGreater(value(samples, "process_resident_memory_bytes"), 0)
