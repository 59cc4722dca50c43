"""The logic without a transport: a fake connection, a real SQLite store, a Clock.

Time-driven rules (login timeout, heartbeat checker) are tested by advancing
``twisted.internet.task.Clock``; nothing sleeps.
"""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer

from gochat.auth import Account, TokenSigner
from gochat.gateway import HeartbeatChecker
from gochat.logic import HubConfig
from gochat.pb import pb
from tests import logic_util
from tests.logic_util import frame

LOGIN_TIMEOUT = 10.0


class LogicTestCase(logic_util.LogicTestCase):
    """The shared logic test case, with this module's timeout and limits."""

    hub_config = HubConfig(login_timeout=LOGIN_TIMEOUT, sync_limit=50, max_frame=1024)
    clock_start = 1_700_000_000


class LoginTimeout(LogicTestCase):
    def test_connection_that_does_not_log_in_is_closed_at_the_login_timeout(self):
        conn = self.connect()
        self.clock.advance(LOGIN_TIMEOUT - 0.01)
        self.assertIsNone(conn.closed)
        self.clock.advance(0.02)
        self.assertEqual(conn.closed, "no login within the login timeout")
        self.assertEqual(self.hub.sessions, set())

    def test_heartbeat_before_login_gets_no_reply_and_does_not_extend_the_timeout(self):
        conn = self.connect()
        for _ in range(9):
            self.clock.advance(1)
            conn.session.frame_received(frame(pb.CT_Heartbeat, pb.HeartbeatMsg()))
        self.assertEqual(conn.unread(), [])
        self.clock.advance(LOGIN_TIMEOUT - 9 + 0.01)
        self.assertEqual(conn.closed, "no login within the login timeout")

    @defer.inlineCallbacks
    def test_logged_in_connection_outlives_the_login_timeout(self):
        uid, _ = yield self.user("100")
        conn = yield self.logged_in(uid)
        self.clock.advance(LOGIN_TIMEOUT * 3)
        self.assertIsNone(conn.closed)


class HeartbeatChecking(LogicTestCase):
    TIMEOUT = 600.0
    INTERVAL = 60.0

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        yield super().setUp()
        self.checker = HeartbeatChecker(self.hub, self.clock, self.TIMEOUT, self.INTERVAL)
        self.checker.startService()
        self.addCleanup(self.checker.stopService)

    @defer.inlineCallbacks
    def test_idle_session_is_closed_and_leaves_presence(self):
        uid, _ = yield self.user("200")
        conn = yield self.logged_in(uid)
        self.assertIn(uid, self.hub.presence.online)
        self.clock.pump([self.INTERVAL] * 10)  # exactly the timeout: not yet past it
        self.assertIsNone(conn.closed)
        self.clock.pump([self.INTERVAL])
        self.assertEqual(conn.closed, "heartbeat timeout")
        self.assertNotIn(uid, self.hub.presence.online)
        self.assertEqual(self.hub.sessions, set())

    @defer.inlineCallbacks
    def test_session_that_sends_heartbeats_is_kept(self):
        uid, _ = yield self.user("201")
        conn = yield self.logged_in(uid)
        for _ in range(30):
            self.clock.advance(self.INTERVAL)
            conn.session.frame_received(frame(pb.CT_Heartbeat, pb.HeartbeatMsg()))
        self.assertIsNone(conn.closed)
        self.assertEqual(conn.unread(), [])  # heartbeats are never answered

    @defer.inlineCallbacks
    def test_session_that_receives_frames_is_kept(self):
        sender, _ = yield self.user("202")
        receiver, _ = yield self.user("203")
        conn = yield self.logged_in(receiver)
        talker = yield self.logged_in(sender)
        for cid in range(1, 16):
            self.clock.advance(self.INTERVAL)
            msg = pb.Message(session_type=pb.ST_Single, receiver_id=receiver, content=b"hi")
            talker.session.frame_received(frame(pb.CT_Message, pb.UpMsg(msg=msg, clientId=cid)))
            push = yield conn.next_output()
            self.assertEqual(push.type, pb.CT_Message)
            yield talker.next_output()
        self.assertIsNone(conn.closed)
        self.assertIsNone(talker.closed)

    def test_session_that_never_logs_in_is_closed_by_the_checker_too(self):
        # With a login timeout past the heartbeat timeout, the checker still bounds it.
        self.hub.config.login_timeout = 10 * self.TIMEOUT
        conn = self.connect()
        self.clock.pump([self.INTERVAL] * 11)
        self.assertEqual(conn.closed, "heartbeat timeout")


class BeforeLogin(LogicTestCase):
    def test_message_before_login_gets_1000_ack_with_its_clientid(self):
        conn = self.connect()
        msg = pb.Message(session_type=pb.ST_Single, receiver_id=5)
        conn.session.frame_received(frame(pb.CT_Message, pb.UpMsg(msg=msg, clientId=3)))
        self.assertEqual(
            conn.unread(),
            [
                pb.Output(
                    type=pb.CT_ACK,
                    code=1000,
                    CodeMsg="not logged in",
                    data=pb.ACKMsg(type=pb.AT_Up, clientId=3).SerializeToString(),
                )
            ],
        )

    def test_sync_before_login_gets_1000_empty_sync(self):
        conn = self.connect()
        conn.session.frame_received(frame(pb.CT_Sync, pb.SyncInputMsg(seq=0)))
        self.assertEqual(
            conn.unread(),
            [pb.Output(type=pb.CT_Sync, code=1000, CodeMsg="not logged in", data=b"")],
        )
        self.assertEqual(pb.SyncOutputMsg.FromString(conn.unread()[0].data), pb.SyncOutputMsg())

    def test_push_ack_before_login_gets_1000(self):
        conn = self.connect()
        conn.session.frame_received(frame(pb.CT_ACK, pb.ACKMsg(type=pb.AT_Push, seq=4)))
        out = conn.unread()[0]
        self.assertEqual((out.type, out.code), (pb.CT_ACK, 1000))
        self.assertEqual(pb.ACKMsg.FromString(out.data), pb.ACKMsg(type=pb.AT_Push, seq=4))

    def test_garbage_gets_1001_unknown(self):
        conn = self.connect()
        conn.session.frame_received(b"\xff\xfe\xfd")
        self.assertEqual(
            conn.unread(), [pb.Output(type=pb.CT_UnKnow, code=1001, CodeMsg="parameter illegal")]
        )
        self.assertIsNone(conn.closed)

    def test_unknown_cmdtype_gets_1010(self):
        conn = self.connect()
        conn.session.frame_received(frame(77))
        self.assertEqual(
            conn.unread(), [pb.Output(type=pb.CT_UnKnow, code=1010, CodeMsg="unknown command")]
        )

    def test_text_frame_gets_1001(self):
        conn = self.connect()
        conn.session.frame_received(frame(pb.CT_Heartbeat), is_binary=False)
        self.assertEqual([(o.type, o.code) for o in conn.unread()], [(pb.CT_UnKnow, 1001)])

    def test_oversized_login_gets_1012_login_ack(self):
        conn = self.connect()
        login = pb.LoginMsg(token=b"t" * 2000)
        conn.session.frame_received(frame(pb.CT_Login, login))
        out = conn.unread()[0]
        self.assertEqual((out.type, out.code), (pb.CT_ACK, 1012))
        self.assertEqual(pb.ACKMsg.FromString(out.data), pb.ACKMsg(type=pb.AT_Login))

    def test_bad_token_gets_1003_and_close(self):
        conn = self.connect()
        conn.session.frame_received(frame(pb.CT_Login, pb.LoginMsg(token=b"forged")))
        out = conn.unread()[0]
        self.assertEqual((out.type, out.code), (pb.CT_ACK, 1003))
        self.assertEqual(pb.ACKMsg.FromString(out.data), pb.ACKMsg(type=pb.AT_Login))
        self.assertTrue(conn.closed.startswith("bad token"))

    def test_expired_token_gets_1003(self):
        conn = self.connect()
        expired = TokenSigner(self.signer.secret, ttl=60, clock=_At(0)).issue(Account(7, 0, 0))
        conn.session.frame_received(frame(pb.CT_Login, pb.LoginMsg(token=expired.encode())))
        self.assertEqual((conn.unread()[0].type, conn.unread()[0].code), (pb.CT_ACK, 1003))


class Oversized(LogicTestCase):
    @defer.inlineCallbacks
    def test_oversized_message_consumes_its_clientid_and_is_acked_1012(self):
        alice, _ = yield self.user("300")
        bob, _ = yield self.user("301")
        conn = yield self.logged_in(alice)
        big = pb.Message(session_type=pb.ST_Single, receiver_id=bob, content=b"x" * 2000)
        conn.session.frame_received(frame(pb.CT_Message, pb.UpMsg(msg=big, clientId=1)))
        out = yield conn.next_output()
        self.assertEqual((out.type, out.code), (pb.CT_ACK, 1012))
        self.assertEqual(pb.ACKMsg.FromString(out.data), pb.ACKMsg(type=pb.AT_Up, clientId=1))
        small = pb.Message(session_type=pb.ST_Single, receiver_id=bob, content=b"ok")
        conn.session.frame_received(frame(pb.CT_Message, pb.UpMsg(msg=small, clientId=2)))
        out = yield conn.next_output()
        self.assertEqual(
            (out.code, pb.ACKMsg.FromString(out.data)),
            (200, pb.ACKMsg(type=pb.AT_Up, clientId=2, seq=1)),
        )


class Pushes(LogicTestCase):
    @defer.inlineCallbacks
    def test_push_frame_is_output_message_200_with_the_recipient_seq(self):
        alice, _ = yield self.user("400")
        bob, _ = yield self.user("401")
        a = yield self.logged_in(alice, "a")
        b = yield self.logged_in(bob, "b")
        msg = pb.Message(
            session_type=pb.ST_Single, receiver_id=bob, message_type=pb.MT_Text, content=b"yo"
        )
        a.session.frame_received(frame(pb.CT_Message, pb.UpMsg(msg=msg, clientId=1)))
        push = yield b.next_output()
        expected = pb.Message(
            session_type=pb.ST_Single,
            receiver_id=bob,
            sender_id=alice,
            message_type=pb.MT_Text,
            content=b"yo",
            seq=1,
            send_time=int(self.clock.seconds() * 1000),
        )
        # Field order on the wire may differ (seq is appended); the parsed frame may not.
        self.assertEqual((push.type, push.code, push.CodeMsg), (pb.CT_Message, 200, ""))
        self.assertEqual(pb.PushMsg.FromString(push.data).msg, expected)


class _At:
    """A time source stuck at one instant (for issuing already expired tokens)."""

    def __init__(self, when: float) -> None:
        self.when = when

    def time(self) -> float:
        return self.when


class Fuzz(LogicTestCase):
    """Whatever bytes arrive, the session answers with a documented code and never raises."""

    CODES = {1000, 1001, 1003, 1010, 1012}

    @settings(max_examples=300, deadline=None)
    @given(payload=st.binary(max_size=2048))
    def test_arbitrary_bytes_before_login(self, payload):
        self._one_reply(payload)

    @settings(max_examples=300, deadline=None)
    @given(cmd=st.integers(min_value=-5, max_value=20), data=st.binary(max_size=2048))
    def test_arbitrary_inputs_before_login(self, cmd, data):
        try:
            payload = pb.Input(type=cmd, data=data).SerializeToString()
        except ValueError:
            return
        self._one_reply(payload, heartbeat=cmd == pb.CT_Heartbeat)

    def _one_reply(self, payload: bytes, heartbeat: bool = False) -> None:
        conn = self.connect()
        conn.session.frame_received(payload)
        if heartbeat and len(payload) <= 1024:
            self.assertEqual(conn.unread(), [])
            return
        self.assertEqual(len(conn.unread()), 1, payload)
        self.assertIn(conn.unread()[0].code, self.CODES)
        if conn.closed is None:
            conn.close("done")


class FuzzLoggedIn(LogicTestCase):
    @defer.inlineCallbacks
    def test_random_frames_after_login_never_break_the_session(self):
        rng = random.Random(20261126)
        alice, _ = yield self.user("900")
        bob, _ = yield self.user("901")
        conn = yield self.logged_in(alice, "fuzz")
        for _ in range(500):
            cmd = rng.choice([pb.CT_Message, pb.CT_Sync, pb.CT_ACK, pb.CT_Login, 0, 9])
            if rng.random() < 0.5:
                data = rng.randbytes(rng.randrange(0, 64))
            elif cmd == pb.CT_Message:
                msg = pb.Message(
                    session_type=rng.choice([0, 1, 2, 7]),
                    receiver_id=rng.choice([0, bob, alice, 2**64 - 1, 12345]),
                    sender_id=rng.choice([0, alice, bob]),
                    message_type=rng.choice([0, 1, 2, 3, 9]),
                    content=rng.randbytes(8),
                    send_time=rng.choice([0, -1, 2**63 - 1]),
                )
                data = pb.UpMsg(
                    msg=msg, clientId=rng.choice([0, 1, 2, 5, 2**64 - 1])
                ).SerializeToString()
            elif cmd == pb.CT_Sync:
                data = pb.SyncInputMsg(seq=rng.choice([0, 1, 2**64 - 1])).SerializeToString()
            else:
                data = pb.ACKMsg(
                    type=rng.randrange(0, 5), seq=rng.randrange(0, 10)
                ).SerializeToString()
            conn.session.frame_received(frame(cmd, data))
        yield self.hub.wait_idle()
        self.assertIsNone(conn.closed)
        # Still a working session: the next clientId is stored and ACKed.
        nxt = conn.session.device.accepted + 1
        msg = pb.Message(session_type=pb.ST_Single, receiver_id=bob, content=b"still fine")
        conn.session.frame_received(frame(pb.CT_Message, pb.UpMsg(msg=msg, clientId=nxt)))
        seen = []
        while True:
            out = yield conn.next_output()
            seen.append(out)
            ack = pb.ACKMsg.FromString(out.data) if out.type == pb.CT_ACK else None
            if ack is not None and ack.type == pb.AT_Up and ack.clientId == nxt:
                break
        self.assertEqual(out.code, 200)
        self.assertLessEqual(
            {o.code for o in seen}, {200, 1001, 1002, 1003, 1005, 1010, 1011, 1012}
        )
