"""Users moved over from GoChat keep their password and their unexpired tokens.

GoChat stores ``hex(md5(password + salt))`` and signs HS256 JWTs
``{"user_id", "exp"}`` with its ``jwt.sign_key``. The import keeps the hash
as ``gochat-md5$<salt>$<hex>``; the first good login replaces it by argon2id.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
import warnings

import jwt
from twisted.internet import defer
from twisted.trial import unittest

from gochat.auth import (
    Account,
    BadToken,
    Claims,
    LegacyTokenSigner,
    TokenSigner,
    gochat_md5_hash,
    verify_gochat_md5,
)
from gochat.client.http import ApiError
from gochat.config import ConfigError, Options, build_config
from gochat.pb import pb
from tests.util import NodeTestCase, cheap_passwords

SALT = "gogogoChat"
GOCHAT_KEY = b"gochat"  # short, as GoChat's sample configuration ships it


def gochat_hash(password: str, salt: str = SALT) -> str:
    return hashlib.md5((password + salt).encode()).hexdigest()


def gochat_token(user_id: int, exp: float, key: bytes = GOCHAT_KEY) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return jwt.encode({"user_id": user_id, "exp": int(exp)}, key, algorithm="HS256")


def key_file(key: bytes = GOCHAT_KEY) -> str:
    path = os.path.join(tempfile.mkdtemp(), "gochat-jwt.key")
    with open(path, "wb") as f:
        f.write(key + b"\n")
    return path


class Hashes(unittest.TestCase):
    def test_a_gochat_md5_hash_verifies_the_right_password_only(self):
        stored = gochat_md5_hash(SALT, gochat_hash("123456"))
        self.assertTrue(stored.startswith("gochat-md5$gogogoChat$"))
        self.assertTrue(verify_gochat_md5(stored, "123456"))
        self.assertFalse(verify_gochat_md5(stored, "1234567"))
        self.assertFalse(verify_gochat_md5("gochat-md5$nohash", "123456"))

    @defer.inlineCallbacks
    def test_passwords_verify_takes_the_gochat_branch(self):
        stored = gochat_md5_hash("a$salt", gochat_hash("pw", "a$salt"))
        ok = yield cheap_passwords().verify(stored, "pw")
        bad = yield cheap_passwords().verify(stored, "nope")
        self.assertEqual((ok, bad), (True, False))


class Tokens(unittest.TestCase):
    def signer(self) -> LegacyTokenSigner:
        return LegacyTokenSigner(TokenSigner(b"x" * 32), GOCHAT_KEY)

    def test_a_gochat_token_verifies_until_it_expires(self):
        signer = self.signer()
        claims = signer.verify(gochat_token(42, time.time() + 60))
        self.assertEqual((claims.user_id, claims.generation, claims.created_at), (42, None, None))
        self.assertRaises(BadToken, signer.verify, gochat_token(42, time.time() - 1))

    def test_a_token_signed_with_another_key_is_refused(self):
        self.assertRaises(
            BadToken, self.signer().verify, gochat_token(42, time.time() + 60, b"other")
        )

    def test_the_nodes_own_tokens_still_verify_and_new_ones_are_its_own(self):
        signer = self.signer()
        token = signer.issue(Account(7, 1234, 0))
        self.assertEqual(signer.verify(token), Claims(7, signer.verify(token).expires, 0, 1234))
        self.assertEqual(TokenSigner(b"x" * 32).verify(token).user_id, 7)

    def test_the_option_refuses_a_missing_or_empty_key_file(self):
        options = Options()
        options.parseOptions([])
        empty = key_file(b"")
        for path in ("/nonexistent/gochat.key", empty):
            opts = dict(options)
            opts["legacy-jwt-key-file"] = path
            self.assertRaises(ConfigError, build_config, opts)


class ImportedUsers(NodeTestCase):
    node_options = {"legacy_jwt_key_file": key_file()}

    @defer.inlineCallbacks
    def imported_user(self, phone: str, password: str) -> int:
        store = self.node.service.store
        stored = gochat_md5_hash(SALT, gochat_hash(password))
        user_id = yield store.create_user(phone, "old", stored)
        return user_id

    @defer.inlineCallbacks
    def stored_hash(self, phone: str) -> str:
        row = yield self.node.service.store.get_user_by_phone(phone)
        return row[1]

    @defer.inlineCallbacks
    def test_the_old_password_logs_in_once_then_the_hash_is_argon2id(self):
        user_id = yield self.imported_user("13800000001", "123456")
        api = self.node.api()
        with self.assertRaises(ApiError):
            yield api.login("13800000001", "wrong")
        self.assertTrue((yield self.stored_hash("13800000001")).startswith("gochat-md5$"))
        data = yield api.login("13800000001", "123456")
        self.assertEqual(int(data["user_id"]), user_id)
        self.assertTrue((yield self.stored_hash("13800000001")).startswith("$argon2id$"))
        data = yield api.login("13800000001", "123456")
        self.assertEqual(int(data["user_id"]), user_id)

    @defer.inlineCallbacks
    def test_a_gochat_token_logs_in_over_the_websocket_and_http(self):
        user_id = yield self.imported_user("13800000002", "123456")
        token = gochat_token(user_id, time.time() + 3600)
        proto = yield self.raw()
        code, ack = yield proto.login(token)
        self.assertEqual((code, ack.type), (200, pb.AT_Login))
        data = yield self.node.api().create_group(token, "moved", [])
        self.assertTrue(int(data["id"]) > 0)

    @defer.inlineCallbacks
    def test_logout_all_revokes_gochat_tokens_too(self):
        user_id = yield self.imported_user("13800000004", "123456")
        old_token = gochat_token(user_id, time.time() + 3600)
        data = yield self.node.api().login("13800000004", "123456")
        yield self.node.api().call("POST", "/logout_all", token=data["token"])
        proto = yield self.raw()
        code, _ = yield proto.login(old_token)
        self.assertEqual(code, 1003)

    @defer.inlineCallbacks
    def test_an_expired_gochat_token_is_refused(self):
        user_id = yield self.imported_user("13800000003", "123456")
        proto = yield self.raw()
        code, _ = yield proto.login(gochat_token(user_id, time.time() - 5))
        self.assertEqual(code, 1003)
