"""Every message reaches every device exactly once, in order, over a bad network.

The real hub, the real SQLite store and the real client library
(:class:`gochat.client.GoChatClient`) talk through :class:`LossyNetwork`, a
stand-in for the network only: it drops, duplicates, delays (and so reorders)
frames in both directions and now and then cuts a connection, all decided by a
seeded ``random.Random`` and timed by one ``task.Clock``. Clients reconnect
after a cut, as an application would.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from gochat import metrics
from gochat.client import GoChatClient
from gochat.logic import HubConfig
from tests.netsim import Link, LossyNetwork, NetworkTestCase


class Device:
    """A client that reconnects (after a random pause) whenever its link goes down."""

    def __init__(self, test: NetworkTestCase, name: str, user_id: int, token: str) -> None:
        self.test = test
        self.name = name
        self.user_id = user_id
        self.client = GoChatClient(
            token,
            device_id=name,
            push_ack=True,
            reactor=test.clock,
            retransmit_timeout=1.0,
            login_timeout=3.0,
        )
        self.sent: set[bytes] = set()
        self.results: list[defer.Deferred] = []
        self.connections = 0
        self.connect()

    def connect(self) -> None:
        self.connections += 1
        link = self.link = Link(self.test.net, self.test.hub, self.client)
        self.client.attach(link).addErrback(lambda _: None)  # a cut during login: retried
        self.client.disconnected.addCallback(self._lost)

    def _lost(self, _: Any) -> None:
        self.test.clock.callLater(self.test.rng.uniform(0.2, 2.0), self.connect)

    def send(self, receiver_id: int, text: str, group: bool = False) -> None:
        self.sent.add(text.encode())
        self.results.append(self.client.send_text(receiver_id, text, group=group))


class LossyDelivery(NetworkTestCase):
    hub_config = HubConfig(push_retry_timeout=1.5, push_retries=5, push_window=8, sync_limit=7)

    @defer.inlineCallbacks
    def test_every_message_reaches_every_device_exactly_once_in_order(self):
        self.net = LossyNetwork(self.clock, self.rng)
        retransmits = metrics.PUSH_RETRANSMITS._value.get()
        users = {}
        for name in ("ann", "ben", "cat"):
            users[name] = yield self.user(name)
        ann, ben, cat = (users[n][0] for n in ("ann", "ben", "cat"))
        group = yield self.store.create_group(ann, "trio", [ben, cat])
        devices = [
            Device(self, "ann-phone", *users["ann"]),
            Device(self, "ann-laptop", *users["ann"]),
            Device(self, "ben-phone", *users["ben"]),
            Device(self, "cat-phone", *users["cat"]),
        ]
        peers = {ann: [ben, cat], ben: [ann, cat], cat: [ann, ben]}

        # 30 messages per device at random moments over 20 simulated seconds:
        # one-to-one and to the group, so each device also gets bursts.
        for device in devices:
            for i in range(30):
                text = f"{device.name}-{i}"
                if self.rng.random() < 0.5:
                    args = (group, text, True)
                else:
                    args = (self.rng.choice(peers[device.user_id]), text)
                self.clock.callLater(self.rng.uniform(0, 20), device.send, *args)

        # Besides the network's random cuts, every device loses its connection
        # at least once while messages are flying.
        for device in devices:
            self.clock.callLater(
                self.rng.uniform(3, 18), lambda d=device: d.link.shut("network cut")
            )

        def all_sent() -> bool:
            return all(len(d.results) == 30 and all(r.called for r in d.results) for d in devices)

        yield self.run_until(all_sent, limit=600)
        latest = {}
        for user_id in (ann, ben, cat):
            latest[user_id] = yield self.store.latest_seq(user_id)
        yield self.run_until(
            lambda: all(d.client.seq == latest[d.user_id] for d in devices), limit=600
        )
        # Give the last ACKs time to land, then nothing may be held any more.
        yield self.run_until(lambda: not self.hub.pushes.windows, limit=60)

        for device in devices:
            self.assertEqual(device.client.seq, latest[device.user_id])
            stored, has_more = yield self.store.sync(device.user_id, 0, 1000)
            self.assertFalse(has_more)
            contents = [m.content for m in stored]
            self.assertEqual(len(contents), len(set(contents)), "a message was stored twice")
            expected = [m.content for m in stored if m.content not in device.sent]
            got = [m.content for m in device.client.received]
            self.assertEqual(got, expected, f"{device.name} saw the wrong messages")
            seqs = [m.seq for m in device.client.received]
            self.assertEqual(seqs, sorted(set(seqs)))
            self.assertTrue(device.sent <= set(contents), "a sent message is missing")
        # Memory for unacknowledged pushes stayed within the window and is free now.
        self.assertLessEqual(self.max_window, self.hub_config.push_window)
        self.assertEqual(self.hub.pushes.unacked, 0)
        # The network really was bad, and the node really did retransmit.
        counts = self.net.counts
        self.assertGreater(counts["dropped"], 50)
        self.assertGreater(counts["duplicated"], 20)
        self.assertTrue(all(d.connections > 1 for d in devices))
        self.assertGreater(metrics.PUSH_RETRANSMITS._value.get(), retransmits)
