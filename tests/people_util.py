"""Shared helpers of the people, conversation and receipt tests: a real node
(on SQLite, PostgreSQL or MariaDB), HTTP calls with a token, WebSocket
clients that log in with or without ``notices``."""

from __future__ import annotations

import itertools
import json
from typing import Any
from urllib.parse import urlencode

from twisted.internet import defer, reactor
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers

from gochat.client.http import _Body
from gochat.pb import pb
from tests import services
from tests.util import NodeTestCase, ack_of, raw_connect, text

FORM = "application/x-www-form-urlencoded"
_phones = itertools.count(1)


class PeopleCase(NodeTestCase):
    """A node on ``engine``; users, HTTP calls and WebSocket clients."""

    engine = "sqlite"

    def setUp(self) -> Any:
        if self.engine == "postgresql":
            self.node_options = {"db": services.postgres_database(self)}
        elif self.engine == "mysql":
            self.node_options = {"db": services.mysql_database(self)}
        return super().setUp()

    @defer.inlineCallbacks
    def call(
        self, method: str, path: str, token: str | None = None, form: Any = None, **json_body: Any
    ) -> Any:
        """Fires with ``(HTTP status, parsed body)``; ``form`` goes in the query for GET."""
        headers = {b"authorization": [f"Bearer {token}".encode()]} if token else {}
        url = self.node.http_url + path
        body = None
        if json_body:
            body = json.dumps(json_body).encode()
            headers[b"content-type"] = [b"application/json"]
        elif form is not None and method == "GET":
            url += "?" + urlencode(form, doseq=True)
        elif form is not None:
            body = urlencode(form, doseq=True).encode()
            headers[b"content-type"] = [FORM.encode()]
        response = yield Agent(reactor).request(
            method.encode(), url.encode(), Headers(headers), _Body(body) if body else None
        )
        raw = yield readBody(response)
        return response.code, json.loads(raw)

    @defer.inlineCallbacks
    def ok(self, method: str, path: str, token: str, form: Any = None, **json_body: Any) -> Any:
        """A call that must succeed; fires with its ``data``."""
        status, reply = yield self.call(method, path, token, form, **json_body)
        self.assertEqual((status, reply["code"]), (200, 200), reply)
        return reply["data"]

    @defer.inlineCallbacks
    def user(self, nickname: str) -> Any:
        """Register a user; fires with ``(id, token, phone)``."""
        phone = f"+1555{next(_phones):07d}{id(self) % 1000:03d}"
        status, reply = yield self.call(
            "POST",
            "/register",
            form=[("phone_number", phone), ("password", "pw"), ("nickname", nickname)],
        )
        self.assertEqual(status, 200, reply)
        return int(reply["data"]["id"]), reply["data"]["token"], phone

    @defer.inlineCallbacks
    def users(self, *names: str) -> Any:
        out = []
        for name in names:
            uid, token, _ = yield self.user(name)
            out.append((uid, token))
        return out

    @defer.inlineCallbacks
    def group(self, token: str, name: str, ids: list[int]) -> Any:
        data = yield self.ok(
            "POST", "/group/create", token, [("name", name)] + [("ids", str(i)) for i in ids]
        )
        return int(data["id"])

    @defer.inlineCallbacks
    def ws(self, token: str, notices: bool = False, device_id: str = "") -> Any:
        """A raw WebSocket client, logged in (``notices`` as asked)."""
        proto = yield raw_connect(self.node.ws_url)
        self.addCleanup(self._drop, proto)
        login = pb.LoginMsg(token=token.encode(), device_id=device_id, notices=notices)
        proto.send_input(pb.CT_Login, login)
        out = yield proto.next_output()
        self.assertEqual((out.type, out.code, ack_of(out).type), (pb.CT_ACK, 200, pb.AT_Login))
        return proto

    @defer.inlineCallbacks
    def send(self, proto: Any, client_id: int, receiver: int, content: str, group: bool = False):
        """Send one message and wait for its ACK; fires with the sender's seq."""
        proto.up(client_id, text(receiver, content, group=group))
        while True:
            out = yield proto.next_output()
            if out.type == pb.CT_ACK:
                ack = ack_of(out)
                self.assertEqual((out.code, ack.clientId), (200, client_id))
                return ack.seq

    @defer.inlineCallbacks
    def synced(self, token: str, after: int = 0) -> Any:
        """Every message in a user's list after ``after``, via CT_Sync over a new connection."""
        proto = yield self.ws(token)
        messages: list[pb.Message] = []
        while True:
            proto.send_input(pb.CT_Sync, pb.SyncInputMsg(seq=after))
            out = yield proto.next_output()
            while out.type != pb.CT_Sync:
                out = yield proto.next_output()
            page = pb.SyncOutputMsg.FromString(out.data)
            messages += page.messages
            if not page.has_more:
                break
            after = page.messages[-1].seq
        proto.transport.loseConnection()
        return messages


def events(messages: list[pb.Message]) -> list[dict]:
    """The JSON of the group events among ``messages``."""
    return [json.loads(m.content) for m in messages if m.message_type == pb.MT_System]


def outputs_of(proto: Any, cmd: int) -> list[pb.Output]:
    """Frames of one CmdType already received (taken off the queue)."""
    kept, taken = [], []
    for payload, is_binary in proto.frames:
        out = pb.Output.FromString(payload)
        (taken if out.type == cmd else kept).append((payload, is_binary))
    proto.frames[:] = kept
    return [pb.Output.FromString(p) for p, _ in taken]
