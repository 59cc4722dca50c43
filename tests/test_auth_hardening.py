"""Tokens pinned to HS256, expiry enforced, brute force throttled, secrets never logged."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import jwt
from twisted.internet import defer, task
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from gochat import codes
from gochat.client.http import ApiError
from gochat.pb import pb
from gochat.ratelimit import RateLimiter
from tests.rawhttp import parse_response, raw_http, request
from tests.rawws import open_raw
from tests.util import Node, NodeTestCase


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made_token(header: dict, claims: dict, key: bytes | None) -> str:
    signing_input = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
    signature = (
        b"" if key is None else hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    )
    return signing_input + "." + b64(signature)


class ForgedTokens(NodeTestCase):
    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.victim, self.victim_token = yield self.node.user("victim")
        self.mallory, self.mallory_token = yield self.node.user("mallory")
        self.secret = self.node.service.signer.secret

    def forgeries(self) -> dict[str, str]:
        now = int(time.time())
        claims = {"user_id": self.victim, "iat": now, "exp": now + 3600}
        header, _payload, signature = self.mallory_token.split(".")
        tampered_payload = b64(json.dumps(claims).encode())
        return {
            "alg none": hand_made_token({"alg": "none", "typ": "JWT"}, claims, None),
            "alg None, no signature": hand_made_token({"alg": "None"}, claims, None)[:-1],
            "RS256 header, HMAC with the secret": hand_made_token(
                {"alg": "RS256", "typ": "JWT"}, claims, self.secret
            ),
            "HS512 with the right secret": jwt.encode(claims, self.secret, algorithm="HS512"),
            "HS256 with another secret": jwt.encode(claims, b"x" * 32, algorithm="HS256"),
            "tampered payload": f"{header}.{tampered_payload}.{signature}",
            "expired": jwt.encode(
                {"user_id": self.victim, "iat": now - 7200, "exp": now - 1}, self.secret, "HS256"
            ),
            "no expiry": jwt.encode({"user_id": self.victim}, self.secret, "HS256"),
            "user id as a string": jwt.encode(
                {"user_id": str(self.victim), "exp": now + 60}, self.secret, "HS256"
            ),
        }

    @defer.inlineCallbacks
    def test_forged_tokens_are_refused_over_http_with_401(self):
        api = self.node.api()
        for name, token in self.forgeries().items():
            with self.assertRaises(ApiError, msg=name) as caught:
                yield api.add_friend(token, self.mallory)
            self.assertEqual(caught.exception.status, 401, name)
        # The genuine token still works.
        yield api.add_friend(self.victim_token, self.mallory)

    @defer.inlineCallbacks
    def test_forged_tokens_are_refused_at_websocket_login_with_1003_and_a_close(self):
        for name, token in self.forgeries().items():
            proto = yield open_raw(self.node.ws_url)
            self.addCleanup(proto.abort)
            proto.send_input(pb.CT_Login, pb.LoginMsg(token=token.encode()))
            out = yield proto.next_output()
            ack = pb.ACKMsg.FromString(out.data)
            self.assertEqual((out.type, out.code, ack.type), (pb.CT_ACK, 1003, pb.AT_Login), name)
            code = yield proto.closing_code()
            self.assertEqual(code, 1000, name)
        self.assertFalse(any(s.logged_in for s in self.node.service.hub.sessions))


class AuthRateLimit(NodeTestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.node = Node(auth_rate=1.0, auth_burst=3, register_rate=1.0, register_burst=2)
        yield self.node.start()
        self.addCleanup(self.node.stop)
        self._clients = []

    @defer.inlineCallbacks
    def test_failed_logins_use_up_the_address_budget_then_even_the_right_password_gets_429(self):
        api = self.node.api()
        yield api.register("5551234", "right-password", "target")
        for _ in range(3):
            with self.assertRaises(ApiError) as caught:
                yield api.login("5551234", "guess")
            self.assertEqual(caught.exception.status, 401)
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        body = b"phone_number=5551234&password=right-password"
        raw = yield raw_http(
            self.node, request("POST", "/login", body, {**form, "Content-Length": str(len(body))})
        )
        status, reply = parse_response(raw)
        self.assertEqual((status, reply["code"]), (429, 429))
        head = raw.partition(b"\r\n\r\n")[0].lower()
        self.assertIn(b"retry-after: ", head)

    @defer.inlineCallbacks
    def test_successful_logins_cost_nothing(self):
        api = self.node.api()
        yield api.register("5551235", "right-password", "member")
        for _ in range(10):  # well past --auth-burst 3
            data = yield api.login("5551235", "right-password")
            self.assertTrue(data["token"])

    @defer.inlineCallbacks
    def test_registrations_have_a_budget_of_their_own(self):
        api = self.node.api()
        for _ in range(3):  # failed logins do not touch the sign-up budget
            with self.assertRaises(ApiError):
                yield api.login("5550000", "guess")
        yield api.register("5552001", "pw", "one")
        yield api.register("5552002", "pw", "two")
        with self.assertRaises(ApiError) as caught:
            yield api.register("5552003", "pw", "three")
        self.assertEqual(caught.exception.status, 429)


class RateLimiterBuckets(unittest.TestCase):
    def test_burst_then_refill_at_the_rate(self):
        clock = task.Clock()
        limiter = RateLimiter(rate=0.5, burst=2, clock=clock)
        self.assertEqual([limiter.allow("a") for _ in range(3)], [True, True, False])
        self.assertEqual(limiter.retry_after("a"), 2.0)
        self.assertTrue(limiter.allow("b"))  # another address has its own bucket
        clock.advance(2)
        self.assertEqual([limiter.allow("a"), limiter.allow("a")], [True, False])
        clock.advance(3600)
        self.assertEqual([limiter.allow("a") for _ in range(3)], [True, True, False])

    def test_memory_is_bounded_by_max_keys(self):
        clock = task.Clock()
        limiter = RateLimiter(rate=1, burst=1, clock=clock, max_keys=100)
        for i in range(10000):
            limiter.allow(f"10.0.{i // 256}.{i % 256}")
        self.assertEqual(len(limiter), 100)
        # The most recently seen addresses are the ones kept.
        self.assertFalse(limiter.allow("10.0.39.15"))  # i = 9999

    def test_nonsense_settings_are_refused(self):
        for rate, burst in ((0, 1), (1, 0), (-1, 5)):
            with self.assertRaises(ValueError):
                RateLimiter(rate, burst, task.Clock())


class SecretsStayOutOfLogs(NodeTestCase):
    @defer.inlineCallbacks
    def test_passwords_tokens_and_the_signing_key_are_never_logged(self):
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        password = "correct-horse-battery-staple-42"
        wrong = "wrong-password-zebra-17"
        api = self.node.api()
        data = yield api.register("5550100", password, "carol")
        token = data["token"]
        with self.assertRaises(ApiError):
            yield api.login("5550100", wrong)
        bad_token = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
        with self.assertRaises(ApiError):
            yield api.add_friend(bad_token, 1)
        proto = yield open_raw(self.node.ws_url)
        self.addCleanup(proto.abort)
        code, _ = yield proto.login(bad_token)
        self.assertEqual(code, codes.UNAUTHORIZED)
        client = yield self.client(token)
        yield client.send_text(int(data["id"]) + 1000, "to nobody").addErrback(lambda _: None)

        secret = self.node.service.signer.secret.decode()
        text = "\n".join(formatEvent(e) + repr(e) for e in events)
        self.assertTrue(events)
        for leaked in (password, wrong, token, bad_token, secret):
            self.assertNotIn(leaked, text)
