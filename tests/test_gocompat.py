"""Talking exactly like the Go server's test clients.

Form-encoded ``/register``; ``/group/create`` with repeated ``ids`` and the
``token`` header; then bare WebSocket clients that send plain ``Input``
frames (``LoginMsg`` with only a token, ``UpMsg`` with their own numbering)
and never use this project's client library or additions.
"""

from __future__ import annotations

import json
import os
from urllib.parse import urlencode

from twisted.internet import defer, reactor
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers

from gochat.client.http import _Body
from gochat.pb import pb
from tests.util import NodeTestCase, raw_connect

#: The Go clients' own check uses 500; the suite keeps 100 for speed.
MEMBERS = int(os.environ.get("GOCHAT_TEST_GOCOMPAT_MEMBERS", "100"))
SENDERS = 5
ROUNDS = 4


class GoClients(NodeTestCase):
    timeout = 600

    @defer.inlineCallbacks
    def post_form(self, path, fields, token=None):
        headers = {b"content-type": [b"application/x-www-form-urlencoded"]}
        if token is not None:
            headers[b"token"] = [token.encode()]
        response = yield Agent(reactor).request(
            b"POST",
            (self.node.http_url + path).encode(),
            Headers(headers),
            _Body(urlencode(fields).encode()),
        )
        body = json.loads((yield readBody(response)))
        self.assertEqual((response.code, body["code"]), (200, 200), body)
        return body["data"]

    @defer.inlineCallbacks
    def test_every_member_of_a_large_group_receives_every_group_message(self):
        users = []
        for i in range(MEMBERS):
            data = yield self.post_form(
                "/register",
                [
                    ("phone_number", f"1380000{i:04d}"),
                    ("password", "123456"),
                    ("nickname", f"u{i}"),
                ],
            )
            users.append((int(data["id"]), data["token"]))
        owner_token = users[0][1]
        group = yield self.post_form(
            "/group/create",
            [("name", "bench")] + [("ids", str(uid)) for uid, _ in users[1:]],
            token=owner_token,
        )
        gid = int(group["id"])

        conns = []
        for _, token in users:
            proto = yield raw_connect(self.node.ws_url)
            self.addCleanup(self._drop, proto)
            proto.send_input(pb.CT_Login, pb.LoginMsg(token=token.encode()))
            conns.append(proto)
        for proto in conns:
            out = yield proto.next_output()
            ack = pb.ACKMsg.FromString(out.data)
            self.assertEqual((out.type, out.code, ack.type), (pb.CT_ACK, 200, pb.AT_Login))

        sent = []
        for rnd in range(1, ROUNDS + 1):
            for s in range(SENDERS):
                uid = users[s][0]
                msg = pb.Message(
                    session_type=pb.ST_Group,
                    receiver_id=gid,
                    sender_id=uid,
                    message_type=pb.MT_Text,
                    content=f"{uid}:{rnd}".encode(),
                    send_time=1700000000000 + rnd,
                )
                conns[s].send_input(pb.CT_Message, pb.UpMsg(msg=msg, clientId=rnd))
                sent.append((uid, f"{uid}:{rnd}".encode()))
        total = len(sent)

        for index, proto in enumerate(conns):
            uid = users[index][0]
            own = ROUNDS if index < SENDERS else 0
            outs = yield proto.outputs(total)  # pushes of the others + its own ACKs
            pushes = [o for o in outs if o.type == pb.CT_Message]
            acks = [pb.ACKMsg.FromString(o.data) for o in outs if o.type == pb.CT_ACK]
            self.assertTrue(all(o.code == 200 for o in outs), uid)
            self.assertEqual([a.clientId for a in acks], list(range(1, own + 1)), uid)
            got = [pb.PushMsg.FromString(o.data).msg for o in pushes]
            self.assertEqual(len(got), total - own, uid)
            self.assertTrue(all(m.receiver_id == gid for m in got))
            self.assertTrue(all(m.session_type == pb.ST_Group for m in got))
            received = {(m.sender_id, m.content) for m in got}
            expected = {(s, c) for s, c in sent if s != uid}
            self.assertEqual(received, expected, uid)
            # This user's seqs across pushes and own ACKs: exactly 1..total.
            self.assertEqual(
                sorted([m.seq for m in got] + [a.seq for a in acks]), list(range(1, total + 1)), uid
            )
