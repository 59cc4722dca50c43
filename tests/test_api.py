"""DESIGN.md section 3: the HTTP API over a real socket, status codes and JSON bodies exact."""

from __future__ import annotations

import json
import os
import sqlite3
from typing import Any
from urllib.parse import urlencode

from twisted.internet import defer, reactor
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers

from gochat.auth import Account, TokenSigner
from gochat.client.http import _Body
from gochat.pb import pb
from tests.util import Node, NodeTestCase, query, raw_connect

FORM = "application/x-www-form-urlencoded"


class Api(NodeTestCase):
    @defer.inlineCallbacks
    def http(
        self,
        method: str,
        path: str,
        form: Any = None,
        body: bytes | None = None,
        ctype: str = FORM,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """Fires with ``(HTTP status, parsed JSON body)``."""
        hdrs = {k.encode(): [v.encode()] for k, v in (headers or {}).items()}
        if form is not None:
            body = urlencode(form, doseq=True).encode()
        if body is not None:
            hdrs[b"content-type"] = [ctype.encode()]
        url = (self.node.http_url + path).encode()
        response = yield Agent(reactor).request(
            method.encode(), url, Headers(hdrs), _Body(body) if body is not None else None
        )
        raw = yield readBody(response)
        self.assertEqual(
            response.headers.getRawHeaders(b"content-type"), [b"application/json; charset=utf-8"]
        )
        return response.code, json.loads(raw)

    @defer.inlineCallbacks
    def register(self, phone: str, password: str = "pw", nickname: str = "nick") -> Any:
        status, reply = yield self.http(
            "POST",
            "/register",
            [("phone_number", phone), ("password", password), ("nickname", nickname)],
        )
        self.assertEqual(status, 200, reply)
        return reply["data"]


class Register(Api):
    @defer.inlineCallbacks
    def test_form_register_returns_token_and_decimal_string_id(self):
        status, reply = yield self.http(
            "POST", "/register", [("phone_number", "555"), ("password", "pw"), ("nickname", "A")]
        )
        self.assertEqual((status, reply["code"], reply["msg"]), (200, 200, "success"))
        self.assertEqual(sorted(reply["data"]), ["id", "token"])
        self.assertIsInstance(reply["data"]["id"], str)
        self.assertTrue(reply["data"]["id"].isdigit())
        uid = self.node.service.signer.verify(reply["data"]["token"]).user_id
        self.assertEqual(str(uid), reply["data"]["id"])

    @defer.inlineCallbacks
    def test_json_register_works_too(self):
        body = json.dumps({"phone_number": "556", "password": "pw", "nickname": "B"}).encode()
        status, reply = yield self.http("POST", "/register", body=body, ctype="application/json")
        self.assertEqual((status, reply["code"]), (200, 200))
        self.assertTrue(reply["data"]["id"].isdigit())

    @defer.inlineCallbacks
    def test_password_is_stored_as_an_argon2_hash(self):
        data = yield self.register("557", password="correct horse")
        ((stored,),) = query(
            self.node, "SELECT password_hash FROM users WHERE id = ?", (int(data["id"]),)
        )
        self.assertTrue(stored.startswith("$argon2id$"), stored)
        self.assertNotIn("correct horse", stored)

    @defer.inlineCallbacks
    def test_duplicate_phone_is_409(self):
        yield self.register("558")
        status, reply = yield self.http(
            "POST", "/register", [("phone_number", "558"), ("password", "x"), ("nickname", "x")]
        )
        self.assertEqual((status, reply["code"]), (409, 409))
        self.assertEqual(reply["msg"], "phone number already registered")

    @defer.inlineCallbacks
    def test_concurrent_registrations_of_one_phone_give_one_account(self):
        fields = [("phone_number", "560"), ("password", "pw"), ("nickname", "x")]
        results = yield defer.gatherResults(
            [self.http("POST", "/register", fields) for _ in range(6)]
        )
        self.assertEqual(sorted(status for status, _ in results), [200] + [409] * 5)
        self.assertEqual(
            query(self.node, "SELECT COUNT(*) FROM users WHERE phone_number = '560'"), [(1,)]
        )

    @defer.inlineCallbacks
    def test_missing_parameter_is_400(self):
        status, reply = yield self.http(
            "POST", "/register", [("phone_number", "559"), ("nickname", "x")]
        )
        self.assertEqual(
            (status, reply), (400, {"code": 400, "msg": "missing parameter password", "data": {}})
        )

    @defer.inlineCallbacks
    def test_malformed_json_is_400(self):
        status, reply = yield self.http("POST", "/register", body=b"{", ctype="application/json")
        self.assertEqual((status, reply["code"]), (400, 400))


class ServerError(Api):
    @defer.inlineCallbacks
    def test_database_failure_is_a_json_500(self):
        db = sqlite3.connect(os.path.join(self.node.data_dir, "gochat.db"), isolation_level=None)
        self.addCleanup(db.close)
        db.execute(
            "CREATE TRIGGER refuse_users BEFORE INSERT ON users"
            " BEGIN SELECT RAISE(ABORT, 'disk trouble'); END"
        )
        status, reply = yield self.http(
            "POST", "/register", [("phone_number", "9"), ("password", "pw"), ("nickname", "n")]
        )
        self.assertEqual((status, reply), (500, {"code": 500, "msg": "server error", "data": {}}))
        self.flushLoggedErrors()
        db.execute("DROP TRIGGER refuse_users")
        yield self.register("9")  # the node is fine afterwards


class Login(Api):
    @defer.inlineCallbacks
    def test_login_returns_token_and_user_id(self):
        data = yield self.register("600", password="pw1")
        status, reply = yield self.http(
            "POST", "/login", [("phone_number", "600"), ("password", "pw1")]
        )
        self.assertEqual(status, 200)
        self.assertEqual(reply["data"]["user_id"], data["id"])
        self.assertEqual(
            self.node.service.signer.verify(reply["data"]["token"]).user_id, int(data["id"])
        )

    @defer.inlineCallbacks
    def test_wrong_password_is_401(self):
        yield self.register("601", password="right")
        status, reply = yield self.http(
            "POST", "/login", [("phone_number", "601"), ("password", "wrong")]
        )
        self.assertEqual((status, reply["code"]), (401, 401))

    @defer.inlineCallbacks
    def test_unknown_phone_is_401(self):
        status, reply = yield self.http(
            "POST", "/login", [("phone_number", "602"), ("password", "x")]
        )
        self.assertEqual((status, reply["code"]), (401, 401))

    @defer.inlineCallbacks
    def test_json_login(self):
        yield self.register("603", password="pw")
        body = json.dumps({"phone_number": "603", "password": "pw"}).encode()
        status, reply = yield self.http("POST", "/login", body=body, ctype="application/json")
        self.assertEqual(status, 200)
        self.assertIn("token", reply["data"])


class Authenticated(Api):
    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.a = yield self.register("700")
        self.b = yield self.register("701")
        self.c = yield self.register("702")

    @defer.inlineCallbacks
    def test_token_header_and_bearer_are_both_accepted(self):
        for headers in ({"token": self.a["token"]}, {"Authorization": "Bearer " + self.a["token"]}):
            status, reply = yield self.http(
                "POST", "/friend/add", [("friend_id", self.b["id"])], headers=headers
            )
            self.assertEqual((status, reply), (200, {"code": 200, "msg": "success", "data": {}}))

    @defer.inlineCallbacks
    def test_missing_token_is_401(self):
        status, reply = yield self.http("POST", "/friend/add", [("friend_id", self.b["id"])])
        self.assertEqual((status, reply["code"], reply["msg"]), (401, 401, "missing token"))

    @defer.inlineCallbacks
    def test_bad_token_is_401(self):
        status, reply = yield self.http(
            "POST", "/friend/add", [("friend_id", self.b["id"])], headers={"token": "garbage"}
        )
        self.assertEqual((status, reply["code"]), (401, 401))

    @defer.inlineCallbacks
    def test_token_signed_with_another_secret_is_401(self):
        forged = TokenSigner(os.urandom(32)).issue(Account(int(self.a["id"]), 0, 0))
        status, _ = yield self.http(
            "POST", "/friend/add", [("friend_id", self.b["id"])], headers={"token": forged}
        )
        self.assertEqual(status, 401)

    @defer.inlineCallbacks
    def test_expired_token_is_401(self):
        class Past:
            def time(self) -> float:
                return 1000.0

        expired = TokenSigner(self.node.service.signer.secret, ttl=60, clock=Past()).issue(
            Account(int(self.a["id"]), 0, 0)
        )
        status, reply = yield self.http(
            "POST", "/friend/add", [("friend_id", self.b["id"])], headers={"token": expired}
        )
        self.assertEqual((status, reply["msg"]), (401, "bad token: token expired"))

    @defer.inlineCallbacks
    def test_friend_add_is_stored_both_ways(self):
        yield self.http(
            "POST", "/friend/add", [("friend_id", self.b["id"])], headers={"token": self.a["token"]}
        )
        rows = query(self.node, "SELECT user_id, friend_id FROM friends ORDER BY user_id")
        a, b = int(self.a["id"]), int(self.b["id"])
        self.assertEqual(rows, [(a, b), (b, a)])

    @defer.inlineCallbacks
    def test_unknown_friend_is_404(self):
        status, reply = yield self.http(
            "POST", "/friend/add", [("friend_id", "999999")], headers={"token": self.a["token"]}
        )
        self.assertEqual((status, reply["code"]), (404, 404))

    @defer.inlineCallbacks
    def test_group_create_with_repeated_ids_adds_the_caller(self):
        status, reply = yield self.http(
            "POST",
            "/group/create",
            [("name", "g"), ("ids", self.b["id"]), ("ids", self.c["id"])],
            headers={"token": self.a["token"]},
        )
        self.assertEqual(status, 200)
        gid = reply["data"]["id"]
        self.assertIsInstance(gid, str)
        status, reply = yield self.http(
            "GET", f"/group_user/list?group_id={gid}", headers={"token": self.c["token"]}
        )
        self.assertEqual(status, 200)
        self.assertEqual(
            reply["data"], {"ids": sorted([self.a["id"], self.b["id"], self.c["id"]], key=int)}
        )

    @defer.inlineCallbacks
    def test_group_create_from_json_list(self):
        body = json.dumps({"name": "j", "ids": [self.b["id"]]}).encode()
        status, reply = yield self.http(
            "POST",
            "/group/create",
            body=body,
            ctype="application/json",
            headers={"Authorization": "Bearer " + self.a["token"]},
        )
        self.assertEqual(status, 200, reply)
        members = query(
            self.node,
            "SELECT user_id FROM group_members WHERE group_id = ? ORDER BY user_id",
            (int(reply["data"]["id"]),),
        )
        self.assertEqual(members, [(int(self.a["id"]),), (int(self.b["id"]),)])

    @defer.inlineCallbacks
    def test_group_with_unknown_member_is_404(self):
        status, _ = yield self.http(
            "POST",
            "/group/create",
            [("name", "g"), ("ids", "424242")],
            headers={"token": self.a["token"]},
        )
        self.assertEqual(status, 404)

    @defer.inlineCallbacks
    def test_group_user_list_for_a_non_member_is_403(self):
        _, reply = yield self.http(
            "POST",
            "/group/create",
            [("name", "g"), ("ids", self.b["id"])],
            headers={"token": self.a["token"]},
        )
        status, reply = yield self.http(
            "GET",
            "/group_user/list?group_id=" + reply["data"]["id"],
            headers={"token": self.c["token"]},
        )
        self.assertEqual((status, reply["code"]), (403, 403))

    @defer.inlineCallbacks
    def test_group_user_list_of_an_unknown_group_is_404(self):
        status, _ = yield self.http(
            "GET", "/group_user/list?group_id=31337", headers={"token": self.a["token"]}
        )
        self.assertEqual(status, 404)

    @defer.inlineCallbacks
    def test_bad_id_is_400(self):
        for value in ("abc", "-1", "0", str(2**64)):
            status, _ = yield self.http(
                "GET", f"/group_user/list?group_id={value}", headers={"token": self.a["token"]}
            )
            self.assertEqual(status, 400, value)


class Routing(Api):
    @defer.inlineCallbacks
    def test_wrong_method_is_405_json(self):
        status, reply = yield self.http("GET", "/register")
        self.assertEqual((status, reply["code"]), (405, 405))
        status, reply = yield self.http("POST", "/group_user/list", form=[])
        self.assertEqual((status, reply["code"]), (405, 405))

    @defer.inlineCallbacks
    def test_unknown_path_is_json_404(self):
        for path in ("/nope", "/friend/remove", "/group/create/extra/x", "/friend"):
            status, reply = yield self.http("GET", path)
            self.assertEqual(
                (status, reply), (404, {"code": 404, "msg": "not found", "data": {}}), path
            )

    @defer.inlineCallbacks
    def test_oversized_body_is_413(self):
        status, reply = yield self.http(
            "POST", "/register", form=[("phone_number", "1"), ("password", "x" * 70000)]
        )
        self.assertEqual((status, reply["code"]), (413, 413))


class SharedSecret(Api):
    @defer.inlineCallbacks
    def test_nodes_sharing_a_secret_file_accept_each_other_s_tokens(self):
        # Nodes sharing a secret share the users too (a token is bound to its account row).
        secret = os.path.join(self.node.data_dir, "secret.key")
        other = Node(
            secret_file=secret, db="sqlite:" + os.path.join(self.node.data_dir, "gochat.db")
        )
        yield other.start()
        self.addCleanup(other.stop)
        data = yield self.register("800")
        proto = yield raw_connect(other.ws_url)
        self.addCleanup(self._drop, proto)
        code, ack = yield proto.login(data["token"])
        self.assertEqual((code, ack.type), (200, pb.AT_Login))

    @defer.inlineCallbacks
    def test_a_node_with_its_own_secret_refuses_the_token(self):
        other = Node()
        yield other.start()
        self.addCleanup(other.stop)
        data = yield self.register("801")
        proto = yield raw_connect(other.ws_url)
        self.addCleanup(self._drop, proto)
        code, _ = yield proto.login(data["token"])
        self.assertEqual(code, 1003)
