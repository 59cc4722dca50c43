"""Graceful shutdown of a real ``twistd gochat`` process on SIGTERM.

Messages in flight when the signal lands are either ACKed and stored, or not
ACKed and then retransmitted by the client to the restarted node: never ACKed
and lost, never stored twice.
"""

from __future__ import annotations

import tempfile

from twisted.internet import defer
from twisted.trial import unittest

from gochat.client import GoChatClient, connect
from tests.processes import ANY_PORT, spawn_twistd

PIPELINE = 50  # messages kept in flight
SIGNAL_AFTER = 100  # ACKs before SIGTERM
MAX_MESSAGES = 3000


class SigtermDrain(unittest.TestCase):
    timeout = 180

    def start(self, data_dir: str):
        proc = spawn_twistd(["--http", ANY_PORT, "--ws", ANY_PORT, "--data-dir", data_dir])
        self.addCleanup(proc.stop)
        return proc

    @defer.inlineCallbacks
    def test_messages_in_flight_are_acked_and_stored_or_resent_never_lost(self):
        data_dir = tempfile.mkdtemp(prefix="gochat-sigterm-")
        proc = self.start(data_dir)
        yield proc.when_ready()
        api = proc.api()
        alice = yield api.register("3000", "alice-pw", "alice")
        bob = yield api.register("3001", "bob-pw", "bob")
        bob_id = int(bob["id"])

        client = GoChatClient(alice["token"], device_id="laptop", retransmit_timeout=1.0)
        yield connect(proc.ws_url, client=client)
        acked_before: dict[str, int] = {}
        texts: list[str] = []
        sends: list[defer.Deferred] = []
        signalled: defer.Deferred = defer.Deferred()
        phase = {"before_close": True}

        def send_one() -> None:
            text = f"msg-{len(texts):05d}"
            texts.append(text)
            sends.append(client.send_text(bob_id, text).addCallback(acked, text))

        def acked(seq: int, text: str) -> int:
            if phase["before_close"]:
                # ACKs up to the going-away close, those of the drain included.
                acked_before.setdefault(text, seq)
            if not signalled.called:
                # Keep the pipeline full, so frames are on the wire when the signal lands.
                if len(texts) < MAX_MESSAGES:
                    send_one()
                if len(acked_before) == SIGNAL_AFTER:
                    signalled.callback(None)
            return seq

        for _ in range(PIPELINE):
            send_one()
        yield signalled
        proc.transport.signalProcess("TERM")
        code, _reason = yield client.disconnected
        phase["before_close"] = False
        yield proc.ended
        acked_at_shutdown = dict(acked_before)

        self.assertEqual(code, 1001)  # going away
        self.assertGreaterEqual(len(acked_at_shutdown), SIGNAL_AFTER)
        self.assertIn(b"Server Shut Down.", proc.stdout)

        # A restarted node on the same data: the client reconnects and resends
        # what was not ACKed; its device window makes that exactly-once.
        proc2 = self.start(data_dir)
        yield proc2.when_ready()
        ws_url = proc2.ws_url  # the restarted node's port
        yield connect(ws_url, client=client)
        self.addCleanup(client.close)
        seqs = yield defer.gatherResults(sends)
        self.assertEqual(sorted(seqs), list(range(1, len(texts) + 1)))

        # The sender's own list: every message once, in order, and each ACK
        # given before the shutdown names the row that holds that message.
        check = yield connect(ws_url, alice["token"], device_id="checker")
        self.addCleanup(check.close)
        stored = {m.seq: m.content.decode() for m in check.received}
        self.assertEqual([stored[s] for s in sorted(stored)], texts)
        for text, seq in acked_at_shutdown.items():
            self.assertEqual(stored[seq], text)

        # And the receiver got each exactly once, in order.
        reader = yield connect(ws_url, bob["token"])
        self.addCleanup(reader.close)
        self.assertEqual([m.content.decode() for m in reader.received], texts)
