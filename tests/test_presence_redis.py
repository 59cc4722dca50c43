"""Redis presence against a real Redis, each test under its own key prefix."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor
from twisted.trial import unittest

from gochat.presence.redis import RedisPresence, parse_redis_url
from tests import services


class RedisPresenceTests(unittest.TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.url, self.prefix = services.redis_prefix(self)

    @defer.inlineCallbacks
    def node(self, address: str, lease: float = 15.0) -> Any:
        presence = RedisPresence(self.url, reactor, prefix=self.prefix, lease=lease)
        presence.address = address
        presence.startService()
        self.addCleanup(self.stop, presence)
        yield presence.registered
        return presence

    def stop(self, presence: RedisPresence) -> Any:
        if presence.running:
            return presence.stopService()
        return None

    @defer.inlineCallbacks
    def die(self, presence: RedisPresence) -> Any:
        """What kill -9 leaves behind: no more renewals, nothing cleaned up."""
        presence.running = False
        presence._loop.stop()
        yield presence._subscriber.disconnect()
        yield presence._redis.disconnect()

    @defer.inlineCallbacks
    def test_a_user_online_on_one_node_is_found_by_another(self):
        a = yield self.node("127.0.0.1:1001")
        b = yield self.node("127.0.0.1:1002")
        yield a.user_online(42)
        yield b.user_online(43)
        found = yield b.nodes_for([42, 43, 44])
        self.assertEqual(found, {a.node_id: [42]})
        address = yield b.address_of(a.node_id)
        self.assertEqual(address, "127.0.0.1:1001")

    @defer.inlineCallbacks
    def test_a_lookup_of_thousands_finds_each_users_node(self):
        a = yield self.node("127.0.0.1:1001")
        b = yield self.node("127.0.0.1:1002")
        c = yield self.node("127.0.0.1:1003")
        yield defer.gatherResults(
            [(a if uid % 3 else c).user_online(uid) for uid in range(1, 3001)]
        )
        found = yield b.nodes_for(list(range(1, 3002)))  # 3001 is online nowhere
        self.assertEqual(sorted(found), sorted([a.node_id, c.node_id]))
        self.assertEqual(sorted(found[a.node_id]), [u for u in range(1, 3001) if u % 3])
        self.assertEqual(sorted(found[c.node_id]), list(range(3, 3001, 3)))

    @defer.inlineCallbacks
    def test_lookups_of_one_turn_share_a_call_and_each_gets_its_own_users(self):
        a = yield self.node("127.0.0.1:1001")
        b = yield self.node("127.0.0.1:1002")
        for uid in (1, 2, 3):
            yield a.user_online(uid)
        first, second = b.nodes_for([1, 2]), b.nodes_for([3, 4])
        found = yield defer.gatherResults([first, second])
        self.assertEqual(found, [{a.node_id: [1, 2]}, {a.node_id: [3]}])

    @defer.inlineCallbacks
    def test_a_user_on_two_nodes_is_found_on_both(self):
        a = yield self.node("127.0.0.1:1001")
        b = yield self.node("127.0.0.1:1002")
        c = yield self.node("127.0.0.1:1003")
        yield a.user_online(7)
        yield b.user_online(7)
        found = yield c.nodes_for([7])
        self.assertEqual(found, {a.node_id: [7], b.node_id: [7]})

    @defer.inlineCallbacks
    def test_offline_user_is_no_longer_found(self):
        a = yield self.node("127.0.0.1:1001")
        b = yield self.node("127.0.0.1:1002")
        yield a.user_online(42)
        yield a.user_offline(42)
        found = yield b.nodes_for([42])
        self.assertEqual(found, {})

    @defer.inlineCallbacks
    def test_a_stopped_node_leaves_at_once(self):
        a = yield self.node("127.0.0.1:1001")
        b = yield self.node("127.0.0.1:1002")
        yield a.user_online(42)
        yield a.stopService()
        found = yield b.nodes_for([42])
        self.assertEqual(found, {})
        members = yield b._redis.smembers(self.prefix + "user:42")
        self.assertEqual(set(members), set())

    @defer.inlineCallbacks
    def test_a_node_that_stops_renewing_vanishes_within_its_lease(self):
        lease = 1.0
        a = yield self.node("127.0.0.1:1001", lease=lease)
        b = yield self.node("127.0.0.1:1002", lease=lease)
        yield a.user_online(42)
        found = yield b.nodes_for([42])
        self.assertEqual(list(found), [a.node_id])
        died = reactor.seconds()
        yield self.die(a)

        def gone() -> Any:
            d = b._redis.smembers(self.prefix + "user:42")
            return d.addCallback(lambda members: not members)

        # The lease lapses after `lease`; b sweeps on its next renewal (every lease/3).
        yield services.poll_until(gone, timeout=lease * 4 / 3 + 2, what="sweep of dead node")
        self.assertLessEqual(reactor.seconds() - died, lease * 4 / 3 + 2)
        found = yield b.nodes_for([42])
        self.assertEqual(found, {})
        nodes = yield b._redis.smembers(self.prefix + "nodes")
        self.assertEqual(set(nodes), {b.node_id})

    @defer.inlineCallbacks
    def test_emptied_redis_gets_every_connection_back(self):
        a = yield self.node("127.0.0.1:1001", lease=1.0)
        b = yield self.node("127.0.0.1:1002", lease=1.0)
        for uid in (1, 2, 3):
            yield a.user_online(uid)
        services.delete_redis_keys(self.prefix)  # what FLUSHDB does to this cluster
        found = yield b.nodes_for([1, 2, 3])
        self.assertEqual(found, {})

        def back() -> Any:
            return b.nodes_for([1, 2, 3]).addCallback(lambda found: found == {a.node_id: [1, 2, 3]})

        yield services.poll_until(back, timeout=5, what="re-registration")

    @defer.inlineCallbacks
    def test_group_change_published_by_one_node_reaches_the_others(self):
        a = yield self.node("127.0.0.1:1001")
        b = yield self.node("127.0.0.1:1002")
        seen: list[int] = []
        b.on_group_changed = seen.append
        # The subscription is set up asynchronously; publish until it is heard.
        yield services.poll_until(
            lambda: a.publish_group_changed(77).addCallback(lambda _: 77 in seen),
            timeout=5,
            what="group invalidation",
        )
        self.assertEqual(set(seen), {77})

    @defer.inlineCallbacks
    def test_unreachable_redis_does_not_fail_a_login(self):
        presence = RedisPresence("redis://127.0.0.1:1/0", reactor, prefix=self.prefix, lease=1.0)
        presence.address = "127.0.0.1:1001"
        presence.startService()
        self.addCleanup(self.stop, presence)
        result = yield presence.user_online(5)  # bounded by the operation timeout
        self.assertIsNone(result)
        self.assertEqual(presence.local, {5})
        self.assertTrue(presence._dirty)


class RedisURL(unittest.TestCase):
    def test_parse(self):
        self.assertEqual(parse_redis_url("redis://10.0.0.2:6380/3"), ("10.0.0.2", 6380, 3))
        self.assertEqual(parse_redis_url("redis://localhost"), ("localhost", 6379, 0))
        self.assertRaises(ValueError, parse_redis_url, "http://x")
        self.assertRaises(ValueError, parse_redis_url, "redis://x/abc")
