"""Issue 11: read receipts (CT_Read) and typing notices (CT_Typing) over real
WebSockets, exact frames; only connections that logged in with ``notices``
get them, and they never enter the push machinery."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor

from gochat import codes
from gochat.pb import pb
from tests.logic_util import LogicTestCase
from tests.people_util import PeopleCase, outputs_of


def read_up(st: int, peer: int, seq: int) -> pb.ReadMsg:
    return pb.ReadMsg(session_type=st, peer_id=peer, seq=seq)


@defer.inlineCallbacks
def settle(*protos: Any) -> Any:
    """Wait until each connection answered a sync: frames sent before it have arrived.

    The sync reply is taken off the queue; every other frame stays, in order.
    """
    for proto in protos:
        proto.send_input(pb.CT_Sync, pb.SyncInputMsg(seq=2**62))
        while True:
            found = [
                i
                for i, (payload, _) in enumerate(proto.frames)
                if pb.Output.FromString(payload).type == pb.CT_Sync
            ]
            if found:
                del proto.frames[found[0]]
                break
            waiter: defer.Deferred = defer.Deferred()
            proto._waiters.append(waiter)
            waiter.addTimeout(10, reactor)
            yield waiter


class Receipts:
    @defer.inlineCallbacks
    def test_read_is_answered_and_told_to_other_devices_and_the_peer(self):
        (a, ta), (b, tb) = yield self.users("alice", "bob")
        alice = yield self.ws(ta, notices=True)
        alice_plain = yield self.ws(ta)  # no notices: a GoChat client
        bob_phone = yield self.ws(tb, notices=True, device_id="phone")
        bob_laptop = yield self.ws(tb, notices=True, device_id="laptop")
        s1 = yield self.send(alice, 1, b, "one")
        s2 = yield self.send(alice, 2, b, "two")
        self.assertEqual((s1, s2), (1, 2))
        bob_phone.send_input(pb.CT_Read, read_up(pb.ST_Single, a, 2))
        reply = yield self._next_of(bob_phone, pb.CT_Read)
        self.assertEqual(
            (reply.code, pb.ReadMsg.FromString(reply.data)),
            (200, pb.ReadMsg(session_type=pb.ST_Single, peer_id=a, seq=2, reader_id=b)),
        )
        laptop = yield self._next_of(bob_laptop, pb.CT_Read)
        self.assertEqual(
            (laptop.code, pb.ReadMsg.FromString(laptop.data)),
            (200, pb.ReadMsg(session_type=pb.ST_Single, peer_id=a, seq=2, reader_id=b)),
        )
        seen = yield self._next_of(alice, pb.CT_Read)
        # alice's own seq of "two" is 2 as well here; the peer_id names bob
        self.assertEqual(
            (seen.code, pb.ReadMsg.FromString(seen.data)),
            (200, pb.ReadMsg(session_type=pb.ST_Single, peer_id=b, seq=s2, reader_id=b)),
        )
        yield settle(alice_plain, bob_phone)
        self.assertEqual(outputs_of(alice_plain, pb.CT_Read), [])
        self.assertEqual(outputs_of(bob_phone, pb.CT_Read), [])  # not told twice

    @defer.inlineCallbacks
    def test_the_peer_is_told_its_own_seq(self):
        (a, ta), (b, tb), (c, tc) = yield self.users("alice", "bob", "carol")
        alice = yield self.ws(ta, notices=True)
        bob = yield self.ws(tb, notices=True)
        carol = yield self.ws(tc)
        yield self.send(alice, 1, c, "to carol")  # alice 1
        yield self.send(alice, 2, c, "to carol again")  # alice 2
        yield self.send(carol, 1, b, "to bob")  # bob 1
        yield self.send(alice, 3, b, "to bob from alice")  # alice 3, bob 2
        bob.send_input(pb.CT_Read, read_up(pb.ST_Single, a, 2))
        yield self._next_of(bob, pb.CT_Read)
        seen = yield self._next_of(alice, pb.CT_Read)
        self.assertEqual(
            pb.ReadMsg.FromString(seen.data),
            pb.ReadMsg(session_type=pb.ST_Single, peer_id=b, seq=3, reader_id=b),
        )
        yield self.send(bob, 1, a, "reply")  # bob 3, alice 4
        alice.send_input(pb.CT_Read, read_up(pb.ST_Single, b, 4))
        yield self._next_of(alice, pb.CT_Read)
        seen = yield self._next_of(bob, pb.CT_Read)
        self.assertEqual(
            pb.ReadMsg.FromString(seen.data),
            pb.ReadMsg(session_type=pb.ST_Single, peer_id=a, seq=3, reader_id=a),
        )

    @defer.inlineCallbacks
    def test_an_older_read_changes_nothing_and_tells_nobody(self):
        (a, ta), (b, tb) = yield self.users("alice", "bob")
        alice = yield self.ws(ta, notices=True)
        bob = yield self.ws(tb, notices=True)
        yield self.send(alice, 1, b, "one")
        yield self.send(alice, 2, b, "two")
        bob.send_input(pb.CT_Read, read_up(pb.ST_Single, a, 2))
        yield self._next_of(bob, pb.CT_Read)
        yield self._next_of(alice, pb.CT_Read)
        bob.send_input(pb.CT_Read, read_up(pb.ST_Single, a, 1))
        reply = yield self._next_of(bob, pb.CT_Read)
        self.assertEqual((reply.code, pb.ReadMsg.FromString(reply.data).seq), (200, 2))
        yield settle(alice)
        self.assertEqual(outputs_of(alice, pb.CT_Read), [])

    @defer.inlineCallbacks
    def test_bad_reads_get_their_codes(self):
        (a, ta), (b, tb) = yield self.users("alice", "bob")
        alice = yield self.ws(ta)
        yield self.send(alice, 1, b, "one")
        cases = [
            (read_up(pb.ST_UnKnow, b, 1), codes.PARAM_ILLEGAL),
            (read_up(pb.ST_Single, b, 0), codes.PARAM_ILLEGAL),
            (read_up(pb.ST_Single, 123456, 1), codes.NO_DATA),
            (read_up(pb.ST_Group, b, 1), codes.NO_DATA),
        ]
        for body, code in cases:
            alice.send_input(pb.CT_Read, body)
            reply = yield self._next_of(alice, pb.CT_Read)
            self.assertEqual(reply.code, code, body)
        alice.send_input(pb.CT_Read, b"\xff\xff")
        reply = yield self._next_of(alice, pb.CT_Read)
        self.assertEqual(reply.code, codes.PARAM_ILLEGAL)

    @defer.inlineCallbacks
    def test_read_before_login_is_1000(self):
        from tests.util import raw_connect

        proto = yield raw_connect(self.node.ws_url)
        self.addCleanup(self._drop, proto)
        proto.send_input(pb.CT_Read, read_up(pb.ST_Single, 1, 1))
        reply = yield proto.next_output()
        self.assertEqual((reply.type, reply.code), (pb.CT_Read, codes.NOT_LOGGED_IN))

    @defer.inlineCallbacks
    def test_http_read_tells_the_devices_too(self):
        (a, ta), (b, tb) = yield self.users("alice", "bob")
        alice = yield self.ws(ta, notices=True)
        bob = yield self.ws(tb, notices=True)
        yield self.send(alice, 1, b, "one")
        yield self.ok(
            "POST",
            "/conversation/read",
            tb,
            [("session_type", "1"), ("peer_id", str(a)), ("seq", "1")],
        )
        own = yield self._next_of(bob, pb.CT_Read)
        self.assertEqual(pb.ReadMsg.FromString(own.data).reader_id, b)
        seen = yield self._next_of(alice, pb.CT_Read)
        self.assertEqual(pb.ReadMsg.FromString(seen.data).seq, 1)

    @defer.inlineCallbacks
    def _next_of(self, proto: Any, cmd: int) -> Any:
        while True:
            out = yield proto.next_output()
            if out.type == cmd:
                return out


class Typing:
    @defer.inlineCallbacks
    def test_typing_reaches_the_peers_devices_with_notices_only(self):
        (a, ta), (b, tb) = yield self.users("alice", "bob")
        alice = yield self.ws(ta, notices=True)
        alice_other = yield self.ws(ta, notices=True)
        bob = yield self.ws(tb, notices=True)
        bob_plain = yield self.ws(tb)
        alice.send_input(pb.CT_Typing, pb.TypingMsg(session_type=pb.ST_Single, peer_id=b))
        out = yield bob.next_output()
        self.assertEqual(
            (out.type, out.code, pb.TypingMsg.FromString(out.data)),
            (pb.CT_Typing, 200, pb.TypingMsg(session_type=pb.ST_Single, peer_id=a, sender_id=a)),
        )
        yield settle(alice, alice_other, bob_plain)
        for proto in (alice, alice_other, bob_plain):
            self.assertEqual(outputs_of(proto, pb.CT_Typing), [])

    @defer.inlineCallbacks
    def test_typing_in_a_group_reaches_the_other_members(self):
        (a, ta), (b, tb), (c, tc), (d, td) = yield self.users("a", "b", "c", "d")
        gid = yield self.group(ta, "g", [b, c])
        bob = yield self.ws(tb, notices=True)
        carol = yield self.ws(tc, notices=True)
        dave = yield self.ws(td, notices=True)
        alice = yield self.ws(ta, notices=True)
        alice.send_input(pb.CT_Typing, pb.TypingMsg(session_type=pb.ST_Group, peer_id=gid))
        for proto in (bob, carol):
            out = yield proto.next_output()
            self.assertEqual(
                pb.TypingMsg.FromString(out.data),
                pb.TypingMsg(session_type=pb.ST_Group, peer_id=gid, sender_id=a),
            )
        dave.send_input(pb.CT_Typing, pb.TypingMsg(session_type=pb.ST_Group, peer_id=gid))
        out = yield dave.next_output()
        self.assertEqual((out.type, out.code), (pb.CT_Typing, codes.UNAUTHORIZED))
        yield settle(alice, bob)
        self.assertEqual(outputs_of(alice, pb.CT_Typing), [])
        self.assertEqual(outputs_of(bob, pb.CT_Typing), [])

    @defer.inlineCallbacks
    def test_bad_typing_gets_its_code_and_good_typing_no_reply(self):
        (a, ta), (b, _) = yield self.users("alice", "bob")
        alice = yield self.ws(ta)
        for body, code in [
            (pb.TypingMsg(session_type=pb.ST_Single, peer_id=a), codes.PARAM_ILLEGAL),
            (pb.TypingMsg(session_type=pb.ST_UnKnow, peer_id=b), codes.PARAM_ILLEGAL),
            (pb.TypingMsg(session_type=pb.ST_Single, peer_id=99999), codes.NO_DATA),
            (pb.TypingMsg(session_type=pb.ST_Group, peer_id=99999), codes.NO_DATA),
        ]:
            alice.send_input(pb.CT_Typing, body)
            out = yield alice.next_output()
            self.assertEqual((out.type, out.code), (pb.CT_Typing, code), body)
        alice.send_input(pb.CT_Typing, pb.TypingMsg(session_type=pb.ST_Single, peer_id=b))
        yield settle(alice)
        self.assertEqual(outputs_of(alice, pb.CT_Typing), [])

    @defer.inlineCallbacks
    def test_typing_is_not_a_push_and_is_not_retransmitted(self):
        (a, ta), (b, tb) = yield self.users("alice", "bob")
        alice = yield self.ws(ta)
        bob = yield self.ws_push_ack(tb)
        alice.send_input(pb.CT_Typing, pb.TypingMsg(session_type=pb.ST_Single, peer_id=b))
        out = yield bob.next_output()
        self.assertEqual(out.type, pb.CT_Typing)
        self.assertEqual(self.node.service.hub.pushes.unacked, 0)

    @defer.inlineCallbacks
    def ws_push_ack(self, token: str) -> Any:
        from tests.util import ack_of, raw_connect

        proto = yield raw_connect(self.node.ws_url)
        self.addCleanup(self._drop, proto)
        proto.send_input(
            pb.CT_Login, pb.LoginMsg(token=token.encode(), push_ack=True, notices=True)
        )
        out = yield proto.next_output()
        self.assertEqual((out.code, ack_of(out).type), (200, pb.AT_Login))
        return proto


class ReceiptsSQLite(Receipts, Typing, PeopleCase):
    pass


class ReceiptsPostgres(Receipts, PeopleCase):
    engine = "postgresql"


class ReceiptsMariaDB(Receipts, PeopleCase):
    engine = "mysql"


class TypingRate(LogicTestCase):
    """The per-connection typing limit, on a fake clock."""

    @defer.inlineCallbacks
    def test_past_five_at_once_typing_is_1013_and_one_a_second_comes_back(self):
        a, ta = yield self.user("alice")
        b, tb = yield self.user("bob")
        alice, alice_conn = yield self.login(ta)
        frame = pb.Input(
            type=pb.CT_Typing,
            data=pb.TypingMsg(session_type=pb.ST_Single, peer_id=b).SerializeToString(),
        ).SerializeToString()

        def refusals() -> list[int]:
            return [o.code for o in alice_conn.outputs() if o.type == pb.CT_Typing]

        for _ in range(6):
            alice.frame_received(frame)
        yield alice_conn.wait_for(lambda outs: any(o.type == pb.CT_Typing for o in outs))
        self.assertEqual(refusals(), [codes.RATE_LIMITED])
        self.clock.advance(1.0)
        alice.frame_received(frame)
        alice.frame_received(frame)
        self.assertEqual(refusals(), [codes.RATE_LIMITED, codes.RATE_LIMITED])
