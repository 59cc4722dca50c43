"""Bad input (issue 10): text the database cannot hold and lenient ids are a clear
400 (HTTP) or 1001 (WebSocket login) on every engine, and nothing is stored."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from gochat import codes
from gochat.inputs import parse_id_value, text_problem
from tests import services, test_api
from tests.util import Node


class OnEveryEngine(test_api.Api):
    """Runs against the engine named by ``database`` (a fresh database per test)."""

    database = "sqlite"

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        options: dict[str, Any] = {}
        if self.database == "postgresql":
            options["db"] = services.postgres_database(self)
        elif self.database == "mysql":
            options["db"] = services.mysql_database(self)
        self.node = Node(**options)
        yield self.node.start()
        self.addCleanup(self.node.stop)
        self._clients = []

    def rows(self, table: str) -> defer.Deferred:
        def txn(cur: Any) -> int:
            cur.execute(f"SELECT COUNT(*) FROM {table}")
            return int(cur.fetchone()[0])

        return self.node.service.database.run_interaction("test_count", txn, write=False)

    def post_json(self, path: str, values: dict, token: str | None = None) -> defer.Deferred:
        headers = {"token": token} if token else None
        body = json.dumps(values).encode()  # ensure_ascii: "\ud800" goes as an escape
        return self.http("POST", path, body=body, ctype="application/json", headers=headers)

    @defer.inlineCallbacks
    def test_a_lone_surrogate_in_a_json_string_is_400_and_nothing_is_stored(self):
        good = {"phone_number": "5551000", "password": "pw", "nickname": "ann"}
        for field in good:
            status, reply = yield self.post_json("/register", {**good, field: "a\ud800b"})
            self.assertEqual((status, reply["code"]), (400, 400), field)
            self.assertIn(field, reply["msg"])
        status, _ = yield self.post_json("/login", {"phone_number": "\udfff", "password": "pw"})
        self.assertEqual(status, 400)
        users = yield self.rows("users")
        self.assertEqual(users, 0)

    @defer.inlineCallbacks
    def test_nul_and_control_characters_in_phone_or_nickname_are_400(self):
        good = [("phone_number", "5551001"), ("password", "pw"), ("nickname", "bob")]
        for field, bad in (
            ("phone_number", "555\x001001"),
            ("nickname", "b\x00b"),
            ("nickname", "bell\x07"),
            ("nickname", "line\nbreak"),
            ("nickname", "c1\x85"),
            ("password", "p\x00w"),
        ):
            form = [(k, bad if k == field else v) for k, v in good]
            status, reply = yield self.http("POST", "/register", form)
            self.assertEqual(status, 400, (field, bad))
            self.assertIn(field, reply["msg"])
        users = yield self.rows("users")
        self.assertEqual(users, 0)
        status, _ = yield self.http(
            "POST", "/login", [("phone_number", "5\x00"), ("password", "pw")]
        )
        self.assertEqual(status, 400)
        # A password may hold a tab (only NUL is refused there).
        status, _ = yield self.http("POST", "/register", [*good[:1], ("password", "p\tw"), good[2]])
        self.assertEqual(status, 200)

    @defer.inlineCallbacks
    def test_a_bad_device_id_at_login_is_1001_and_no_device_is_stored(self):
        data = yield self.register("5551002")
        for device_id in ("ph\x00ne", "ph\none", "\x1b[31m", "d" * 129):
            proto = yield self.raw()
            code, _ = yield proto.login(data["token"], device_id=device_id)
            self.assertEqual(code, codes.PARAM_ILLEGAL, repr(device_id))
        devices = yield self.rows("devices")
        self.assertEqual(devices, 0)
        yield self.raw(data["token"], device_id="d" * 128)  # the longest allowed
        devices = yield self.rows("devices")
        self.assertEqual(devices, 1)


class OnPostgreSQL(OnEveryEngine):
    database = "postgresql"


class OnMariaDB(OnEveryEngine):
    database = "mysql"


class StrictIds(test_api.Api):
    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.alice = yield self.register("5551010")
        self.bob = yield self.register("5551011")

    def friend(self, value: Any, as_json: bool) -> defer.Deferred:
        headers = {"token": self.alice["token"]}
        if as_json:
            body = json.dumps({"friend_id": value}).encode()
            return self.http(
                "POST", "/friend/add", body=body, ctype="application/json", headers=headers
            )
        return self.http("POST", "/friend/add", [("friend_id", value)], headers=headers)

    @defer.inlineCallbacks
    def test_only_ascii_decimal_ids_in_range_are_accepted(self):
        bob = self.bob["id"]
        for bad in ("１２", "١٢", " 14", "14\n", "+14", "1_4", "0", "-1", str(2**63), "", "0x1"):
            for as_json in (False, True):
                status, reply = yield self.friend(bad, as_json)
                self.assertEqual(status, 400, (bad, as_json, reply))
        for bad_json in ([bob], [int(bob)], 0, -1, 2**63, True, 1.0, None, {"id": bob}):
            status, reply = yield self.friend(bad_json, True)
            self.assertEqual(status, 400, (bad_json, reply))
        for good, as_json in ((bob, False), (bob, True), (int(bob), True)):
            status, reply = yield self.friend(good, as_json)
            self.assertEqual(status, 200, (good, reply))

    @defer.inlineCallbacks
    def test_every_id_of_a_list_is_as_strict(self):
        headers = {"token": self.alice["token"]}
        for ids in (["１２"], [" 14"], ["14\n"], [True], [[1]], ["1,"], [0]):
            body = json.dumps({"name": "g", "ids": ids}).encode()
            status, reply = yield self.http(
                "POST", "/group/create", body=body, ctype="application/json", headers=headers
            )
            self.assertEqual(status, 400, (ids, reply))
        status, reply = yield self.http(
            "POST",
            "/group/create",
            [("name", "g"), ("ids", f"{self.bob['id']},{self.alice['id']}")],
            headers=headers,
        )
        self.assertEqual(status, 200, reply)


class Rules(unittest.TestCase):
    """The shared checks other endpoints use (nicknames, group names)."""

    def test_text_rules(self):
        self.assertIsNone(text_problem("Zoë 🙂", 32))
        self.assertEqual(text_problem("", 32), "is empty")
        self.assertEqual(text_problem("x" * 33, 32), "is longer than 32 characters")
        self.assertIsNone(text_problem("🙂" * 32, 32))  # characters, not bytes
        self.assertEqual(text_problem("\ud83d", 32), "holds a lone surrogate (not valid Unicode)")
        self.assertEqual(text_problem("a\x00", 32, controls=True), "holds a NUL character")
        self.assertEqual(text_problem("a\x7f", 32), "holds a control character")
        self.assertIsNone(text_problem("a\tb", 32, controls=True))

    def test_id_rules(self):
        self.assertEqual([parse_id_value(v) for v in ("1", 1, str(2**63 - 1))], [1, 1, 2**63 - 1])
        for bad in ("１", "٣", " 1", "1\n", "1 ", "0", 0, -1, 2**63, True, False, 1.0, ["1"]):
            self.assertIsNone(parse_id_value(bad), repr(bad))
