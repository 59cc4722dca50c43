"""Brute force and tokens (issue 10): the login budget holds under concurrency,
tokens are bound to their account (a user that does not exist, a database reset,
``/logout_all``), a session ends when its token does, and the files holding
password hashes and secrets are private."""

from __future__ import annotations

import os
import stat
import tempfile
import time
from typing import Any

import jwt
from twisted.internet import defer, task
from twisted.trial import unittest

from gochat import codes
from gochat.pb import pb
from tests import services, test_api
from tests.logic_util import LogicTestCase, Recorder, login_frame
from tests.util import Node


def count(node: Node, sql: str, args: tuple = ()) -> defer.Deferred:
    """A ``SELECT COUNT(*)`` through the node's own pool (any engine)."""

    def txn(cur: Any) -> int:
        cur.execute(sql, args)
        return int(cur.fetchone()[0])

    return node.service.database.run_interaction("test_count", txn, write=False)


def signed(node: Node, **claims: Any) -> str:
    """A token signed with the node's own secret, with any claims."""
    now = int(time.time())
    return jwt.encode({"iat": now, "exp": now + 3600, **claims}, node.service.signer.secret)


class ConcurrentWrongPasswords(test_api.Api):
    node_options = {"auth_rate": 0.1, "auth_burst": 5}  # 5 at once, one more every 10 min

    @defer.inlineCallbacks
    def test_100_concurrent_wrong_passwords_get_only_the_budget_evaluated(self):
        yield self.register("5550001", "right-password")
        form = [("phone_number", "5550001"), ("password", "wrong")]
        replies = yield defer.gatherResults([self.http("POST", "/login", form) for _ in range(100)])
        statuses = [status for status, _ in replies]
        # Each evaluated guess (a 401) took a token before its hash was checked.
        self.assertEqual((statuses.count(401), statuses.count(429)), (5, 95))

    @defer.inlineCallbacks
    def test_a_successful_login_gives_its_token_back(self):
        yield self.register("5550002", "right-password")
        for _ in range(20):  # four times --auth-burst
            status, reply = yield self.http(
                "POST", "/login", [("phone_number", "5550002"), ("password", "right-password")]
            )
            self.assertEqual(status, 200, reply)


class TokensOfUsersThatDoNotExist(test_api.Api):
    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.alice = yield self.register("5550010")
        self.ghost = signed(self.node, user_id=1000001, gen=0, acct=0)

    @defer.inlineCallbacks
    def test_websocket_login_gets_1003_and_a_close(self):
        proto = yield self.raw()
        code, ack = yield proto.login(self.ghost, device_id="phone")
        self.assertEqual((code, ack.type), (codes.UNAUTHORIZED, pb.AT_Login))
        close_code, reason = yield proto.closed
        self.assertEqual((close_code, reason), (1000, "bad token: no such user"))
        self.assertFalse(any(s.logged_in for s in self.node.service.hub.sessions))
        devices = yield count(self.node, "SELECT COUNT(*) FROM devices")
        self.assertEqual(devices, 0)

    @defer.inlineCallbacks
    def test_http_gets_401_and_writes_no_row(self):
        status, reply = yield self.http(
            "POST", "/friend/add", [("friend_id", self.alice["id"])], headers={"token": self.ghost}
        )
        self.assertEqual((status, reply["msg"]), (401, "bad token: no such user"))
        rows = yield count(self.node, "SELECT COUNT(*) FROM friends")
        self.assertEqual(rows, 0)


class TokensAfterADatabaseReset(test_api.Api):
    @defer.inlineCallbacks
    def test_an_old_token_does_not_log_in_as_the_new_user_with_the_same_id(self):
        old = yield self.register("5550020", nickname="old three")
        yield self.node.stop()
        os.remove(os.path.join(self.node.data_dir, "gochat.db"))  # secret.key stays
        self.node = Node(self.node.data_dir)
        yield self.node.start()
        self.addCleanup(self.node.stop)
        new = yield self.register("5550021", nickname="new three")
        self.assertEqual(new["id"], old["id"])

        proto = yield self.raw()
        code, _ = yield proto.login(old["token"])
        self.assertEqual(code, codes.UNAUTHORIZED)
        status, reply = yield self.http(
            "GET", "/group_user/list?group_id=1", headers={"token": old["token"]}
        )
        self.assertEqual((status, reply["msg"]), (401, "bad token: token of another account"))
        # The new account's own token is fine.
        yield self.raw(new["token"])


class LogoutEverywhere(test_api.Api):
    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.alice = yield self.register("5550030", "pw")
        self.bob = yield self.register("5550031", "pw")
        status, reply = yield self.http(
            "POST", "/login", [("phone_number", "5550030"), ("password", "pw")]
        )
        self.assertEqual(status, 200)
        self.second = reply["data"]["token"]

    def add_friend(self, token: str) -> defer.Deferred:
        form = [("friend_id", self.bob["id"])]
        return self.http("POST", "/friend/add", form, headers={"token": token})

    @defer.inlineCallbacks
    def test_logout_all_revokes_every_token_and_closes_live_sessions(self):
        phone = yield self.raw(self.alice["token"], device_id="phone")
        laptop = yield self.raw(self.second, device_id="laptop")
        status, reply = yield self.http("POST", "/logout_all", headers={"token": self.second})
        self.assertEqual((status, reply["data"]), (200, {}))
        for proto in (phone, laptop):
            close_code, reason = yield proto.closed
            self.assertEqual((close_code, reason), (1000, "logged out everywhere"))
        for token in (self.alice["token"], self.second):
            status, reply = yield self.add_friend(token)
            self.assertEqual((status, reply["msg"]), (401, "bad token: token revoked"))
            proto = yield self.raw()
            code, _ = yield proto.login(token)
            self.assertEqual(code, codes.UNAUTHORIZED)
        rows = yield count(self.node, "SELECT COUNT(*) FROM friends")
        self.assertEqual(rows, 0)

    @defer.inlineCallbacks
    def test_a_token_issued_after_logout_all_works(self):
        status, _ = yield self.http("POST", "/logout_all", headers={"token": self.second})
        self.assertEqual(status, 200)
        status, reply = yield self.http(
            "POST", "/login", [("phone_number", "5550030"), ("password", "pw")]
        )
        fresh = reply["data"]["token"]
        status, _ = yield self.add_friend(fresh)
        self.assertEqual(status, 200)
        yield self.raw(fresh)

    @defer.inlineCallbacks
    def test_logout_all_needs_a_valid_token(self):
        status, _ = yield self.http("POST", "/logout_all", headers={"token": "garbage"})
        self.assertEqual(status, 401)
        status, _ = yield self.http("GET", "/logout_all", headers={"token": self.second})
        self.assertEqual(status, 405)


class RevocationOnTheHub(LogicTestCase):
    @defer.inlineCallbacks
    def test_a_session_logged_in_after_the_bump_is_not_closed_by_it(self):
        uid, old_token = yield self.user("5550040")
        old, old_conn = yield self.login(old_token, device_id="a")
        account = yield self.store.bump_token_generation(uid)
        new, new_conn = yield self.login(self.signer.issue(account), device_id="b")
        # The bump published by another node reaches this one late: only older tokens go.
        self.assertEqual(self.hub.revoke_tokens(uid, account.token_generation), 1)
        self.assertEqual((old_conn.closed, new_conn.closed), ("logged out everywhere", None))

    @defer.inlineCallbacks
    def test_a_login_in_flight_during_the_bump_does_not_complete(self):
        uid, token = yield self.user("5550041")
        conn = Recorder()
        session = self.hub.open_session(conn)
        session.frame_received(login_frame(token, "phone"))  # its account check is on a thread
        self.assertEqual(self.hub.revoke_tokens(uid, 1), 1)
        yield services.poll_until(lambda: not session._logging_in, 10, what="login finished")
        self.assertEqual((conn.closed, conn.frames), ("logged out everywhere", []))
        self.assertNotIn(uid, self.hub.router.online)


class LogoutAcrossTheCluster(unittest.TestCase):
    timeout = 90

    @defer.inlineCallbacks
    def test_logout_all_on_one_node_closes_the_session_on_another(self):
        config = services.cluster_config(self)
        nodes = []
        for _ in range(2):
            node = Node(**config)
            yield node.start()
            self.addCleanup(node.stop)
            nodes.append(node)
        _, token = yield nodes[0].user("alice")
        client = yield nodes[1].connect(token, device_id="phone")
        self.addCleanup(lambda: client.proto is not None and client.close())
        yield nodes[0].api().call("POST", "/logout_all", token=token)
        hub = nodes[1].service.hub
        yield services.poll_until(lambda: not hub.router.online, 20, what="session closed")


class ClockTime:
    """``time()`` of a :class:`task.Clock`, for :class:`TokenSigner`."""

    def __init__(self, clock: task.Clock) -> None:
        self.clock = clock

    def time(self) -> float:
        return self.clock.seconds()


class SessionsEndWithTheirToken(LogicTestCase):
    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.clock.advance(1_000_000)
        self.signer.ttl = 3  # --token-ttl 3
        self.signer.clock = ClockTime(self.clock)

    @defer.inlineCallbacks
    def test_a_heartbeating_session_is_closed_at_expiry_with_1000_token_expired(self):
        uid, token = yield self.user("5550050")
        bob, _ = yield self.user("5550051")
        session, conn = yield self.login(token, device_id="phone")
        heartbeat = pb.Input(type=pb.CT_Heartbeat).SerializeToString()
        for _ in range(2):
            self.clock.advance(1)
            session.frame_received(heartbeat)
        seq = yield self.send(session, conn, 1, bob, "still valid")
        self.assertEqual(seq, 1)
        self.clock.advance(0.999)
        session.frame_received(heartbeat)
        self.assertIsNone(conn.closed)
        self.clock.advance(0.001)  # the token's exp: 3 s after it was issued
        self.assertEqual(conn.closed, "token expired")

    @defer.inlineCallbacks
    def test_a_closed_session_leaves_no_expiry_timer_behind(self):
        _, token = yield self.user("5550052")
        session, _ = yield self.login(token)
        session.connection_lost()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class FileModes(unittest.TestCase):
    timeout = 30

    def setUp(self):
        self.old_umask = os.umask(0o022)  # a usual umask: what it would let through
        self.addCleanup(os.umask, self.old_umask)

    @staticmethod
    def mode(path: str) -> int:
        return stat.S_IMODE(os.stat(path).st_mode)

    @defer.inlineCallbacks
    def test_data_dir_0700_database_and_secret_0600(self):
        data_dir = os.path.join(tempfile.mkdtemp(prefix="gochat-modes-"), "new", "data")
        node = Node(data_dir)
        yield node.start()
        self.addCleanup(node.stop)
        yield node.user("alice")  # something written: the WAL exists
        self.assertEqual(self.mode(data_dir), 0o700)
        files = {
            name: self.mode(os.path.join(data_dir, name))
            for name in os.listdir(data_dir)
            if name.startswith(("gochat.db", "secret.key"))
        }
        self.assertIn("gochat.db-wal", files)
        self.assertEqual(files, {name: 0o600 for name in files})

    @defer.inlineCallbacks
    def test_a_database_left_world_readable_is_made_private(self):
        data_dir = tempfile.mkdtemp(prefix="gochat-modes-")
        db = os.path.join(data_dir, "gochat.db")
        open(db, "wb").close()
        os.chmod(db, 0o644)
        node = Node(data_dir)
        yield node.start()
        self.addCleanup(node.stop)
        self.assertEqual(self.mode(db), 0o600)
