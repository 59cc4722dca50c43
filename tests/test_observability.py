"""``/metrics`` and ``/healthz`` of a real node, over real HTTP."""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, reactor
from twisted.web.client import Agent, readBody

from tests import services
from tests.util import Node, NodeTestCase, missing_service


@defer.inlineCallbacks
def get(url: str) -> Any:
    """Fires with ``(status, headers, body)``."""
    response = yield Agent(reactor).request(b"GET", url.encode())
    body = yield readBody(response)
    return response.code, response.headers, body


@defer.inlineCallbacks
def scrape(node: Node) -> Any:
    """Fires with ``{(name, labels): value}`` of every sample on ``/metrics``."""
    status, headers, body = yield get(node.http_url + "/metrics")
    assert status == 200, status
    assert headers.getRawHeaders(b"content-type")[0].startswith(b"text/plain")
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, metric: str, **labels: str) -> float:
    return samples.get((metric, tuple(sorted(labels.items()))), 0.0)


class Metrics(NodeTestCase):
    @defer.inlineCallbacks
    def test_counters_move_when_users_log_in_and_chat(self):
        alice, alice_token = yield self.node.user("alice")
        bob, bob_token = yield self.node.user("bob")
        before = yield scrape(self.node)

        a = yield self.client(alice_token)
        b = yield self.client(bob_token)
        received = defer.Deferred()
        b.on_message = received.callback
        yield a.send_text(bob, "counted")
        yield received
        after = yield scrape(self.node)

        def delta(metric: str, **labels: str) -> float:
            return value(after, metric, **labels) - value(before, metric, **labels)

        self.assertEqual(delta("gochat_logins_total", result="ok"), 2)
        self.assertEqual(delta("gochat_upstream_messages_total", code="200"), 1)
        self.assertEqual(delta("gochat_ack_latency_seconds_count"), 1)
        self.assertEqual(delta("gochat_pushes_total", where="local"), 1)
        self.assertGreater(
            delta("gochat_store_interaction_seconds_count", name="commit_messages"), 0
        )
        self.assertGreaterEqual(value(after, "gochat_connections"), 2)

    @defer.inlineCallbacks
    def test_every_documented_metric_is_exported(self):
        status, _, body = yield get(self.node.http_url + "/metrics")
        self.assertEqual(status, 200)
        names = {f.name for f in text_string_to_metric_families(body.decode())}
        for name in (
            "gochat_connections",
            "gochat_logins",
            "gochat_upstream_messages",
            "gochat_ack_latency_seconds",
            "gochat_pushes",
            "gochat_push_retransmits",
            "gochat_pushes_abandoned",
            "gochat_unacked_pushes",
            "gochat_store_interaction_seconds",
            "gochat_rpc_calls",
            "gochat_rpc_failures",
            "gochat_heartbeat_closes",
        ):
            self.assertIn(name, names)


class Health(NodeTestCase):
    @defer.inlineCallbacks
    def health(self) -> Any:
        status, headers, body = yield get(self.node.http_url + "/healthz")
        self.assertEqual(headers.getRawHeaders(b"content-type")[0][:16], b"application/json")
        return status, json.loads(body)

    @defer.inlineCallbacks
    def test_healthy_with_a_live_database(self):
        status, body = yield self.health()
        self.assertEqual(status, 200)
        self.assertEqual(body["data"], {"database": "ok"})

    @defer.inlineCallbacks
    def test_unhealthy_when_the_sqlite_file_is_gone(self):
        os.remove(self.node.service.engine.path)
        status, body = yield self.health()
        self.assertEqual(status, 503)
        self.assertEqual(body["msg"], "unhealthy")
        self.assertIn("missing", body["data"]["database"])

    @defer.inlineCallbacks
    def test_unhealthy_when_the_connection_pool_is_closed(self):
        self.node.service.database.close()
        status, body = yield self.health()
        self.assertEqual(status, 503)
        self.assertIn("closed", body["data"]["database"])


class PostgresHealth(NodeTestCase):
    """The database really goes away: it is dropped under the running node."""

    def setUp(self) -> Any:
        self.admin = services.postgres_admin()
        self.dbname = "gochat_health_" + uuid.uuid4().hex[:12]
        with self.admin.cursor() as cur:
            cur.execute(f"CREATE DATABASE {self.dbname}")
        self.addCleanup(self._drop)
        self.node = Node(db=f"postgresql://postgres@127.0.0.1:5432/{self.dbname}")
        d = self.node.start()
        d.addCallback(lambda _: self.addCleanup(self.node.stop))
        return d

    def _drop(self) -> None:
        with self.admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {self.dbname} WITH (FORCE)")
        self.admin.close()

    @defer.inlineCallbacks
    def test_unhealthy_once_the_database_is_dropped(self):
        status, _, body = yield get(self.node.http_url + "/healthz")
        self.assertEqual((status, json.loads(body)["data"]), (200, {"database": "ok"}))

        with self.admin.cursor() as cur:
            cur.execute(f"DROP DATABASE {self.dbname} WITH (FORCE)")
        status, _, body = yield get(self.node.http_url + "/healthz")

        self.assertEqual(status, 503)
        self.assertTrue(json.loads(body)["data"]["database"].startswith("error"))
        # adbapi logs the connections it lost when the database went away.
        import psycopg
        from twisted.enterprise.adbapi import ConnectionLost

        self.flushLoggedErrors(psycopg.Error, ConnectionLost)


class _RedisPresencePing:
    """The optional ``ping()`` a cluster's presence offers, over a real Redis
    connection (the Redis presence itself belongs to the cluster code)."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection

    def ping(self) -> defer.Deferred:
        return self.connection.ping()


class RedisHealth(NodeTestCase):
    @defer.inlineCallbacks
    def probe(self, port: int) -> Any:
        import txredisapi

        from gochat.api.health import HealthResource

        try:
            connection = yield txredisapi.Connection("127.0.0.1", port, reconnect=False)
        except Exception as exc:
            missing_service(f"Redis at 127.0.0.1:{port}: {exc}")
        self.addCleanup(connection.disconnect)
        health = HealthResource(
            self.node.service.database, _RedisPresencePing(connection), reactor, timeout=0.5
        )
        result = yield health.check()
        return result

    @defer.inlineCallbacks
    def test_redis_that_answers_is_healthy(self):
        healthy, parts = yield self.probe(6379)
        self.assertEqual((healthy, parts), (True, {"database": "ok", "redis": "ok"}))

    @defer.inlineCallbacks
    def test_redis_that_does_not_answer_is_unhealthy(self):
        from twisted.internet.protocol import Factory, Protocol

        # A listening socket that never speaks Redis: the ping goes unanswered.
        port = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        healthy, parts = yield self.probe(port.getHost().port)

        self.assertEqual(
            (healthy, parts), (False, {"database": "ok", "redis": "no answer within 0.5s"})
        )
