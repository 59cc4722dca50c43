"""Hostile input over real sockets: each gets its documented code or a clean close,
and the node and every other client carry on."""

from __future__ import annotations

import socket

from twisted.internet import defer, reactor

from gochat import codes
from gochat.pb import pb
from tests.rawhttp import parse_response, raw_http, request
from tests.rawws import OP_BINARY, build_frame
from tests.util import Node, NodeTestCase

SQL_NASTIES = [
    "'; DROP TABLE users; --",
    '" OR 1=1 --',
    "Robert'); DELETE FROM messages;--",
    "\\'; SELECT pg_sleep(10); --",
    "%_%",
    "\x00nul",
]
U64_MAX = 2**64 - 1


class HostileWebSocket(NodeTestCase):
    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.alice, self.alice_token = yield self.node.user("alice")
        self.bob, self.bob_token = yield self.node.user("bob")

    @defer.inlineCallbacks
    def ask(self, proto, cmd, data=b""):
        proto.send_input(cmd, data)
        out = yield proto.next_data_frame()
        return out

    def up(self, client_id, receiver, content=b"x", session=pb.ST_Single, **fields):
        msg = pb.Message(
            session_type=session,
            receiver_id=receiver,
            message_type=pb.MT_Text,
            content=content,
            **fields,
        )
        return pb.UpMsg(msg=msg, clientId=client_id).SerializeToString()

    def ack_of(self, out):
        self.assertEqual(out.type, pb.CT_ACK)
        return out.code, pb.ACKMsg.FromString(out.data)

    @defer.inlineCallbacks
    def assert_chat_still_works(self):
        a = yield self.client(self.alice_token)
        b = yield self.client(self.bob_token)
        got = defer.Deferred()
        b.on_message = lambda m: got.called or got.callback(m)
        yield a.send_text(self.bob, "still here")
        msg = yield got
        self.assertEqual(msg.content, b"still here")

    @defer.inlineCallbacks
    def test_garbage_frames_get_1001_and_the_connection_stays_usable(self):
        proto = yield self.raw(self.alice_token)
        for garbage in (b"\xff\xff\xff", b"\x0a\xff\xff\xff\xff\x0f", b"\x08"):
            out = yield self.ask_raw(proto, garbage)
            self.assertEqual((out.type, out.code), (pb.CT_UnKnow, codes.PARAM_ILLEGAL))
        out = yield self.ask(proto, pb.CT_Sync, pb.SyncInputMsg(seq=0).SerializeToString())
        self.assertEqual((out.type, out.code), (pb.CT_Sync, codes.OK))
        yield self.assert_chat_still_works()

    def ask_raw(self, proto, payload):
        proto.send(build_frame(OP_BINARY, payload))
        return proto.next_data_frame()

    @defer.inlineCallbacks
    def test_unknown_cmd_type_gets_1010(self):
        proto = yield self.raw(self.alice_token)
        for cmd in (8, 99, 2**31 - 1, -1):  # 6 and 7 are CT_Read and CT_Typing
            out = yield self.ask(proto, cmd, b"whatever")
            self.assertEqual((out.type, out.code), (pb.CT_UnKnow, codes.UNKNOWN_COMMAND))

    @defer.inlineCallbacks
    def test_wrong_message_in_data_gets_the_reply_shape_with_an_error(self):
        proto = yield self.raw(self.alice_token)
        out = yield self.ask(proto, pb.CT_Message, b"\xff\xff\xff")
        code, ack = self.ack_of(out)
        self.assertEqual((code, ack.type), (codes.PARAM_ILLEGAL, pb.AT_Up))
        out = yield self.ask(proto, pb.CT_Sync, b"\x0a\x03abc\xff")
        self.assertEqual((out.type, out.code), (pb.CT_Sync, codes.PARAM_ILLEGAL))
        # A login message where an UpMsg belongs: no msg field, so 1001, clientId used up.
        login = pb.LoginMsg(token=b"x", device_id="d").SerializeToString()
        out = yield self.ask(proto, pb.CT_Message, login)
        code, _ = self.ack_of(out)
        self.assertIn(code, (codes.PARAM_ILLEGAL, codes.OUT_OF_ORDER))
        # An ACK of an unknown type is refused with its own shape.
        out = yield self.ask(proto, pb.CT_ACK, pb.ACKMsg(type=pb.AT_Login).SerializeToString())
        code, ack = self.ack_of(out)
        self.assertEqual((code, ack.type), (codes.PARAM_ILLEGAL, pb.AT_Login))

    @defer.inlineCallbacks
    def test_before_login_everything_but_login_gets_1000(self):
        proto = yield self.raw()
        out = yield self.ask(proto, pb.CT_Message, self.up(1, self.bob))
        self.assertEqual(self.ack_of(out)[0], codes.NOT_LOGGED_IN)
        out = yield self.ask(proto, pb.CT_Sync, b"")
        self.assertEqual((out.type, out.code), (pb.CT_Sync, codes.NOT_LOGGED_IN))

    @defer.inlineCallbacks
    def test_absurd_ids_get_no_data_and_nothing_is_stored(self):
        proto = yield self.raw(self.alice_token)
        cases = [
            (pb.ST_Single, U64_MAX),
            (pb.ST_Single, 2**63),
            (pb.ST_Single, 2**63 - 1),
            (pb.ST_Group, U64_MAX),
            (pb.ST_Group, 987654321),
            (pb.ST_Single, 0),
        ]
        for cid, (session, receiver) in enumerate(cases, start=1):
            out = yield self.ask(proto, pb.CT_Message, self.up(cid, receiver, session=session))
            code, ack = self.ack_of(out)
            self.assertEqual((code, ack.clientId), (codes.NO_DATA, cid), (session, receiver))
        out = yield self.ask(proto, pb.CT_Sync, pb.SyncInputMsg(seq=0).SerializeToString())
        self.assertEqual(pb.SyncOutputMsg.FromString(out.data).messages, [])
        for seq in (U64_MAX, 2**63, 2**63 - 1):
            out = yield self.ask(proto, pb.CT_Sync, pb.SyncInputMsg(seq=seq).SerializeToString())
            self.assertEqual((out.type, out.code), (pb.CT_Sync, codes.OK), seq)
            self.assertFalse(pb.SyncOutputMsg.FromString(out.data).has_more)

    @defer.inlineCallbacks
    def test_absurd_client_id_is_a_gap_and_spoofed_sender_is_refused(self):
        proto = yield self.raw(self.alice_token)
        out = yield self.ask(proto, pb.CT_Message, self.up(U64_MAX, self.bob))
        self.assertEqual(self.ack_of(out)[0], codes.OUT_OF_ORDER)
        out = yield self.ask(proto, pb.CT_Message, self.up(1, self.bob, sender_id=U64_MAX))
        self.assertEqual(self.ack_of(out)[0], codes.UNAUTHORIZED_USER_ID)
        out = yield self.ask(proto, pb.CT_Message, self.up(2, self.bob, send_time=-(2**63)))
        code, ack = self.ack_of(out)
        self.assertEqual((code, ack.seq), (codes.OK, 1))

    @defer.inlineCallbacks
    def test_content_over_max_frame_gets_1012_and_uses_up_the_client_id(self):
        proto = yield self.raw(self.alice_token)
        max_frame = self.node.service.config.max_frame
        out = yield self.ask(proto, pb.CT_Message, self.up(1, self.bob, b"x" * (max_frame + 1)))
        code, ack = self.ack_of(out)
        self.assertEqual((code, ack.clientId), (codes.TOO_LARGE, 1))
        out = yield self.ask(proto, pb.CT_Message, self.up(2, self.bob, b"small"))
        self.assertEqual(self.ack_of(out)[0], codes.OK)

    @defer.inlineCallbacks
    def test_frame_far_over_max_frame_gets_1012_and_close_1009(self):
        proto = yield self.raw(self.alice_token)
        max_frame = self.node.service.config.max_frame
        proto.send(build_frame(OP_BINARY, b"\x00" * (max_frame * 5)))
        out = yield proto.next_data_frame()
        self.assertEqual(out.code, codes.TOO_LARGE)
        code = yield proto.closing_code()
        self.assertEqual(code, 1009)
        yield self.assert_chat_still_works()

    @defer.inlineCallbacks
    def test_sql_metacharacters_are_stored_and_returned_verbatim(self):
        api = self.node.api()
        for i, nasty in enumerate(SQL_NASTIES):
            if "\x00" in nasty:
                continue  # NUL in text is a 400 (tests/test_bad_input.py); in content it is fine
            phone = f"{i}{nasty}"[:32]
            data = yield api.register(phone, nasty, nasty[:32] or "x")
            login = yield api.login(phone, nasty)
            self.assertEqual(login["user_id"], data["id"])
        group = yield api.create_group(self.alice_token, SQL_NASTIES[0], [self.bob])
        members = yield api.group_users(self.alice_token, int(group["id"]))
        self.assertEqual(sorted(members["ids"]), sorted([str(self.alice), str(self.bob)]))
        a = yield self.client(self.alice_token)
        b = yield self.client(self.bob_token)
        for nasty in SQL_NASTIES:
            yield a.send_text(self.bob, nasty)
            yield a.send_text(int(group["id"]), nasty, group=True)
        yield b.sync()
        self.assertEqual(
            [m.content.decode() for m in b.received], [n for n in SQL_NASTIES for _ in (1, 2)]
        )

    @defer.inlineCallbacks
    def test_bad_tokens_at_websocket_login_get_1003_and_a_close(self):
        for token in (b"", b"\xff\xfe", b"a.b.c", b"x" * 5000, self.alice_token.encode() + b"x"):
            proto = yield self.raw()
            proto.send_input(pb.CT_Login, pb.LoginMsg(token=token).SerializeToString())
            out = yield proto.next_data_frame()
            code, ack = self.ack_of(out)
            self.assertEqual((code, ack.type), (codes.UNAUTHORIZED, pb.AT_Login))
            close = yield proto.closing_code()
            self.assertEqual(close, 1000)

    @defer.inlineCallbacks
    def test_oversized_device_id_gets_1001(self):
        proto = yield self.raw()
        login = pb.LoginMsg(token=self.alice_token.encode(), device_id="d" * 1000)
        out = yield self.ask(proto, pb.CT_Login, login.SerializeToString())
        self.assertEqual(self.ack_of(out)[0], codes.PARAM_ILLEGAL)


class HostileHttp(NodeTestCase):
    @defer.inlineCallbacks
    def call(self, method, path, body=b"", **headers):
        raw = yield raw_http(self.node, request(method, path, body, headers))
        return parse_response(raw)

    @defer.inlineCallbacks
    def test_body_over_the_limit_with_content_length_gets_413(self):
        body = b"phone_number=1&password=" + b"x" * (64 * 1024)
        status, reply = yield self.call(
            "POST",
            "/register",
            body,
            **{"Content-Type": "application/x-www-form-urlencoded"},
            **{"Content-Length": str(len(body))},
        )
        self.assertEqual((status, reply["code"]), (413, 413))

    @defer.inlineCallbacks
    def test_chunked_body_over_the_limit_gets_413(self):
        chunk = b"x" * 8192
        body = b"".join(b"%x\r\n" % len(chunk) + chunk + b"\r\n" for _ in range(9)) + b"0\r\n\r\n"
        status, reply = yield self.call(
            "POST",
            "/login",
            body,
            **{"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        )
        self.assertEqual((status, reply["code"]), (413, 413))

    @defer.inlineCallbacks
    def test_declared_huge_body_gets_413_at_once_and_a_close(self):
        status, reply = yield self.call(
            "POST", "/login", b"", **{"Content-Length": str(10 * 2**30)}
        )
        self.assertEqual((status, reply["code"]), (413, 413))

    @defer.inlineCallbacks
    def test_endless_chunked_body_is_cut_off(self):
        """The node closes a chunked body far over the limit instead of reading it all."""
        port = int(self.node.http_url.rsplit(":", 1)[1])
        sock = socket.create_connection(("127.0.0.1", port))
        self.addCleanup(sock.close)
        sock.setblocking(False)
        head = request("POST", "/login", b"", {"Transfer-Encoding": "chunked"})
        chunk = b"%x\r\n" % 65536 + b"y" * 65536 + b"\r\n"
        # 64 MiB, a thousand times the limit: more than the kernel's buffers
        # can take in (Linux grows a loopback receive buffer up to
        # net.ipv4.tcp_rmem's maximum, 32 MiB here), so only a node that
        # reads it all lets it through
        pending = memoryview(head + chunk * 1024)
        closed = defer.Deferred()

        def pump():
            nonlocal pending
            try:
                while pending:
                    sent = sock.send(pending[:65536])
                    pending = pending[sent:]
            except BlockingIOError:
                reactor.callLater(0.01, pump)
                return
            except OSError:
                closed.callback("reset")
                return
            closed.callback("sent all")

        pump()
        how = yield closed
        self.assertEqual(how, "reset")

    @defer.inlineCallbacks
    def test_malformed_json_and_forms_get_400(self):
        json_headers = {"Content-Type": "application/json"}
        for body in (b"{", b"[1, 2]", b'"str"', b"\xff\xfe", b'{"phone_number": {"a": 1}}'):
            status, reply = yield self.call(
                "POST", "/login", body, **json_headers, **{"Content-Length": str(len(body))}
            )
            self.assertEqual((status, reply["code"]), (400, 400), body)
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        for body in (b"phone_number=%ff%fe&password=x", b"password=only"):
            status, reply = yield self.call(
                "POST", "/register", body, **form, **{"Content-Length": str(len(body))}
            )
            self.assertEqual((status, reply["code"]), (400, 400), body)

    @defer.inlineCallbacks
    def test_absurd_ids_get_400_or_404(self):
        _, token = yield self.node.user("zed")
        for group_id, expected in (
            (str(U64_MAX), 400),
            ("-1", 400),
            ("1e9", 400),
            ("' OR 1=1", 400),
            (str(2**63 - 1), 404),
        ):
            status, reply = yield self.call(
                "GET", f"/group_user/list?group_id={group_id.replace(' ', '%20')}", token=token
            )
            self.assertEqual((status, reply["code"]), (expected, expected), group_id)


class ConnectionCaps(NodeTestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.node = Node(max_connections=3, max_unauthenticated=2)
        yield self.node.start()
        self.addCleanup(self.node.stop)
        self._clients = []

    @defer.inlineCallbacks
    def test_unauthenticated_connections_past_the_cap_are_refused_with_503(self):
        a = yield self.raw()
        b = yield self.raw()
        self.assertEqual((a.status, b.status), (101, 101))
        refused = yield self.raw()
        self.assertEqual(refused.status, 503)
        yield refused.closed
        _, token = yield self.node.user("first")
        code, _ = yield a.login(token)
        self.assertEqual(code, codes.OK)
        # Logging in frees a place for a newcomer.
        c = yield self.raw()
        self.assertEqual(c.status, 101)

    @defer.inlineCallbacks
    def test_connections_past_the_node_cap_are_refused_and_others_carry_on(self):
        users = []
        for name in ("u1", "u2", "u3"):
            uid, token = yield self.node.user(name)
            users.append((uid, token))
        clients = []
        for _, token in users:
            client = yield self.client(token)
            clients.append(client)
        refused = yield self.raw()
        self.assertEqual(refused.status, 503)
        seq = yield clients[0].send_text(users[1][0], "room for us")
        self.assertEqual(seq, 1)
