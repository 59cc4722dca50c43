"""DESIGN.md section 4 over real sockets: exact frames in, exact frames and rows out.

Every test talks to a real node through a bare Autobahn client
(:class:`tests.rawws.RawWebSocket`) so it controls each clientId, and checks
the messages table through a separate SQLite connection.
"""

from __future__ import annotations

import os
import sqlite3

from twisted.internet import defer

from gochat.pb import pb
from tests.rawws import ack_of
from tests.util import NodeTestCase, query, raw_connect, text

U64_MAX = 2**64 - 1


def up_ack(out: pb.Output) -> tuple[int, int, int, int, int]:
    """``(Output.type, code, ACK type, clientId, seq)`` of an upstream ACK."""
    ack = ack_of(out)
    return (out.type, out.code, ack.type, ack.clientId, ack.seq)


def ok(client_id: int, seq: int) -> tuple[int, int, int, int, int]:
    return (pb.CT_ACK, 200, pb.AT_Up, client_id, seq)


def refused(code: int, client_id: int) -> tuple[int, int, int, int, int]:
    return (pb.CT_ACK, code, pb.AT_Up, client_id, 0)


def rows(node, user_id: int) -> list[tuple]:
    """``(seq, sender, session type, receiver, content)`` of a user's list, by seq."""
    return query(
        node,
        "SELECT seq, sender_id, session_type, receiver_id, content FROM messages"
        " WHERE user_id = ? ORDER BY seq",
        (user_id,),
    )


class Pair(NodeTestCase):
    """Two registered users, alice and bob."""

    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.alice, self.alice_token = yield self.node.user("alice")
        self.bob, self.bob_token = yield self.node.user("bob")

    @defer.inlineCallbacks
    def send(self, proto, client_id, msg):
        proto.up(client_id, msg)
        out = yield proto.next_output()
        return up_ack(out)


class BeforeLogin(Pair):
    @defer.inlineCallbacks
    def test_message_before_login_gets_1000_with_ack_shape(self):
        proto = yield self.raw()
        proto.up(7, text(self.bob, "hi"))
        out = yield proto.next_output()
        self.assertEqual(up_ack(out), refused(1000, 7))
        self.assertEqual(rows(self.node, self.bob), [])

    @defer.inlineCallbacks
    def test_sync_before_login_gets_1000_with_sync_shape(self):
        proto = yield self.raw()
        proto.send_input(pb.CT_Sync, pb.SyncInputMsg(seq=0))
        out = yield proto.next_output()
        self.assertEqual((out.type, out.code, out.data), (pb.CT_Sync, 1000, b""))

    @defer.inlineCallbacks
    def test_heartbeat_gets_no_reply(self):
        proto = yield self.raw()
        proto.send_input(pb.CT_Heartbeat, pb.HeartbeatMsg())
        proto.send_input(pb.CT_Sync, pb.SyncInputMsg())
        out = yield proto.next_output()
        # The first frame back answers the sync: the heartbeat got nothing.
        self.assertEqual((out.type, out.code), (pb.CT_Sync, 1000))

    @defer.inlineCallbacks
    def test_heartbeat_after_login_gets_no_reply(self):
        proto = yield self.raw(self.alice_token)
        proto.send_input(pb.CT_Heartbeat, pb.HeartbeatMsg())
        proto.send_input(pb.CT_Sync, pb.SyncInputMsg())
        out = yield proto.next_output()
        self.assertEqual((out.type, out.code), (pb.CT_Sync, 200))

    @defer.inlineCallbacks
    def test_bad_token_gets_1003_and_the_connection_is_closed(self):
        proto = yield self.raw()
        code, ack = yield proto.login("not-a-token")
        self.assertEqual((code, ack.type, ack.clientId, ack.seq), (1003, pb.AT_Login, 0, 0))
        yield proto.closed

    @defer.inlineCallbacks
    def test_login_ack_carries_last_clientid_and_latest_seq(self):
        proto = yield self.raw()
        code, ack = yield proto.login(self.alice_token, device_id="phone")
        self.assertEqual((code, ack.type, ack.clientId, ack.seq), (200, pb.AT_Login, 0, 0))
        for cid in (1, 2):
            yield self.send(proto, cid, text(self.bob, "x"))
        again = yield self.raw()
        code, ack = yield again.login(self.alice_token, device_id="phone")
        self.assertEqual((code, ack.type, ack.clientId, ack.seq), (200, pb.AT_Login, 2, 2))

    @defer.inlineCallbacks
    def test_second_login_on_one_connection_gets_1001(self):
        proto = yield self.raw(self.alice_token)
        code, ack = yield proto.login(self.alice_token)
        self.assertEqual((code, ack.type), (1001, pb.AT_Login))


class BadFrames(Pair):
    @defer.inlineCallbacks
    def test_garbage_bytes_get_1001_and_the_connection_stays_usable(self):
        proto = yield self.raw()
        proto.send_message(b"\xff\xff\xff\xff", is_binary=True)
        out = yield proto.next_output()
        self.assertEqual((out.type, out.code, out.data), (pb.CT_UnKnow, 1001, b""))
        code, _ = yield proto.login(self.alice_token)
        self.assertEqual(code, 200)

    @defer.inlineCallbacks
    def test_unknown_cmdtype_gets_1010(self):
        proto = yield self.raw(self.alice_token)
        proto.send_input(99, b"")
        out = yield proto.next_output()
        self.assertEqual((out.type, out.code, out.data), (pb.CT_UnKnow, 1010, b""))

    @defer.inlineCallbacks
    def test_text_frame_gets_1001(self):
        proto = yield self.raw(self.alice_token)
        proto.send_message(b"hello", is_binary=False)
        out = yield proto.next_output()
        self.assertEqual((out.type, out.code), (pb.CT_UnKnow, 1001))

    @defer.inlineCallbacks
    def test_bad_frames_leave_other_clients_untouched(self):
        bob = yield self.raw(self.bob_token)
        bad = yield self.raw(self.alice_token)
        bad.send_message(b"\x0a\xff", is_binary=True)
        bad.send_message(b"text", is_binary=False)
        bad.send_input(42, b"")
        yield bad.outputs(3)
        alice = yield self.raw(self.alice_token)
        ack = yield self.send(alice, 1, text(self.bob, "still here"))
        self.assertEqual(ack, ok(1, 1))
        push = yield bob.next_output()
        self.assertEqual(pb.PushMsg.FromString(push.data).msg.content, b"still here")


class OversizedFrames(Pair):
    node_options = {"max_frame": 1024}

    @defer.inlineCallbacks
    def test_oversized_message_is_acked_1012_and_consumes_its_clientid(self):
        proto = yield self.raw(self.alice_token)
        ack = yield self.send(proto, 1, text(self.bob, "x" * 2000))
        self.assertEqual(ack, refused(1012, 1))
        ack = yield self.send(proto, 2, text(self.bob, "small"))
        self.assertEqual(ack, ok(2, 1))
        self.assertEqual([r[4] for r in rows(self.node, self.bob)], [b"small"])

    @defer.inlineCallbacks
    def test_oversized_sync_gets_1012_with_sync_shape(self):
        proto = yield self.raw(self.alice_token)
        # seq 1 plus an unknown field of 2000 bytes: valid protobuf, too large.
        proto.send_input(pb.CT_Sync, b"\x08\x01\x7a\xd0\x0f" + bytes(2000))
        out = yield proto.next_output()
        self.assertEqual((out.type, out.code, out.data), (pb.CT_Sync, 1012, b""))

    @defer.inlineCallbacks
    def test_frame_far_over_the_limit_gets_1012_and_is_closed(self):
        proto = yield self.raw(self.alice_token)
        proto.send_message(bytes(1024 * 5), is_binary=True)
        out = yield proto.next_output()
        self.assertEqual((out.type, out.code), (pb.CT_UnKnow, 1012))
        yield proto.closed


class Upstream(Pair):
    @defer.inlineCallbacks
    def test_next_clientid_is_stored_then_acked_with_the_sender_seq(self):
        proto = yield self.raw(self.alice_token)
        ack = yield self.send(proto, 1, text(self.bob, "one"))
        self.assertEqual(ack, ok(1, 1))
        self.assertEqual(rows(self.node, self.alice), [(1, self.alice, 1, self.bob, b"one")])
        self.assertEqual(rows(self.node, self.bob), [(1, self.alice, 1, self.bob, b"one")])

    @defer.inlineCallbacks
    def test_retransmit_is_reacked_with_the_same_seq_and_not_stored_again(self):
        proto = yield self.raw(self.alice_token)
        first = yield self.send(proto, 1, text(self.bob, "one"))
        yield self.send(proto, 2, text(self.bob, "two"))
        again = yield self.send(proto, 1, text(self.bob, "one"))
        self.assertEqual(again, first)
        self.assertEqual(again, ok(1, 1))
        self.assertEqual(len(rows(self.node, self.alice)), 2)
        self.assertEqual(len(rows(self.node, self.bob)), 2)

    @defer.inlineCallbacks
    def test_gap_gets_1011_and_nothing_is_stored(self):
        proto = yield self.raw(self.alice_token)
        ack = yield self.send(proto, 2, text(self.bob, "early"))
        self.assertEqual(ack, refused(1011, 2))
        self.assertEqual(rows(self.node, self.bob), [])
        ack = yield self.send(proto, 1, text(self.bob, "first"))
        self.assertEqual(ack, ok(1, 1))

    @defer.inlineCallbacks
    def test_spoofed_sender_id_gets_1002(self):
        proto = yield self.raw(self.alice_token)
        ack = yield self.send(proto, 1, text(self.bob, "as bob", sender_id=self.bob))
        self.assertEqual(ack, refused(1002, 1))
        self.assertEqual(rows(self.node, self.bob), [])

    @defer.inlineCallbacks
    def test_own_sender_id_is_accepted_and_zero_is_filled_in(self):
        proto = yield self.raw(self.alice_token)
        yield self.send(proto, 1, text(self.bob, "explicit", sender_id=self.alice))
        yield self.send(proto, 2, text(self.bob, "zero", sender_id=0))
        self.assertEqual([r[1] for r in rows(self.node, self.bob)], [self.alice, self.alice])

    @defer.inlineCallbacks
    def test_single_chat_to_oneself_gets_1001(self):
        proto = yield self.raw(self.alice_token)
        ack = yield self.send(proto, 1, text(self.alice, "me"))
        self.assertEqual(ack, refused(1001, 1))
        self.assertEqual(rows(self.node, self.alice), [])

    @defer.inlineCallbacks
    def test_unknown_receiver_gets_1005(self):
        proto = yield self.raw(self.alice_token)
        for cid, receiver in enumerate((self.bob + 1000, 2**63 - 1, 2**63, U64_MAX), start=1):
            ack = yield self.send(proto, cid, text(receiver, "nobody"))
            self.assertEqual(ack, refused(1005, cid), receiver)
        self.assertEqual(rows(self.node, self.alice), [])

    @defer.inlineCallbacks
    def test_unknown_group_gets_1005(self):
        proto = yield self.raw(self.alice_token)
        for cid, group in enumerate((12345, 2**63, U64_MAX), start=1):
            ack = yield self.send(proto, cid, text(group, "nobody", group=True))
            self.assertEqual(ack, refused(1005, cid), group)

    @defer.inlineCallbacks
    def test_group_message_from_a_non_member_gets_1003(self):
        carol, carol_token = yield self.node.user("carol")
        group = yield self.node.api().create_group(self.bob_token, "b+c", [carol])
        proto = yield self.raw(self.alice_token)
        ack = yield self.send(proto, 1, text(int(group["id"]), "let me in", group=True))
        self.assertEqual(ack, refused(1003, 1))
        self.assertEqual(rows(self.node, carol), [])

    @defer.inlineCallbacks
    def test_bad_session_type_gets_1001(self):
        proto = yield self.raw(self.alice_token)
        msg = text(self.bob, "?")
        msg.session_type = pb.ST_UnKnow
        ack = yield self.send(proto, 1, msg)
        self.assertEqual(ack, refused(1001, 1))

    @defer.inlineCallbacks
    def test_permanent_rejections_consume_the_clientid(self):
        proto = yield self.raw(self.alice_token)
        rejects = [
            text(self.bob, "spoof", sender_id=self.bob),
            text(self.alice, "self"),
            text(U64_MAX, "nobody"),
            text(999, "no group", group=True),
        ]
        for cid, msg in enumerate(rejects, start=1):
            ack = yield self.send(proto, cid, msg)
            self.assertNotEqual(ack[1], 200)
            self.assertEqual(ack[3], cid)
        ack = yield self.send(proto, 5, text(self.bob, "fine"))
        self.assertEqual(ack, ok(5, 1))

    @defer.inlineCallbacks
    def test_retransmit_of_a_rejected_clientid_gets_the_same_rejection(self):
        proto = yield self.raw(self.alice_token)
        first = yield self.send(proto, 1, text(self.alice, "self"))
        again = yield self.send(proto, 1, text(self.alice, "self"))
        self.assertEqual(again, first)
        self.assertEqual(again, refused(1001, 1))

    @defer.inlineCallbacks
    def test_unknown_message_type_gets_1001(self):
        proto = yield self.raw(self.alice_token)
        msg = text(self.bob, "?")
        msg.message_type = 9
        ack = yield self.send(proto, 1, msg)
        self.assertEqual(ack, refused(1001, 1))

    @defer.inlineCallbacks
    def test_clientid_zero_gets_1001(self):
        proto = yield self.raw(self.alice_token)
        ack = yield self.send(proto, 0, text(self.bob, "zero"))
        self.assertEqual(ack, refused(1001, 0))
        ack = yield self.send(proto, 1, text(self.bob, "one"))
        self.assertEqual(ack, ok(1, 1))

    @defer.inlineCallbacks
    def test_send_time_zero_is_filled_in_and_other_values_are_kept(self):
        proto = yield self.raw(self.alice_token)
        before = int(self.node.service.reactor.seconds() * 1000)
        yield self.send(proto, 1, text(self.bob, "now"))
        after = int(self.node.service.reactor.seconds() * 1000)
        yield self.send(proto, 2, text(self.bob, "then", send_time=1234567))
        times = query(
            self.node, "SELECT send_time FROM messages WHERE user_id = ? ORDER BY seq", (self.bob,)
        )
        self.assertTrue(before <= times[0][0] <= after, (before, times[0][0], after))
        self.assertEqual(times[1][0], 1234567)

    @defer.inlineCallbacks
    def test_pipelined_messages_are_acked_in_clientid_order_with_contiguous_seqs(self):
        count = 2000  # "a few thousand at once" must fit the default limits
        proto = yield self.raw(self.alice_token)
        proto.send_inputs(
            [
                (pb.CT_Message, pb.UpMsg(msg=text(self.bob, f"m{cid}"), clientId=cid))
                for cid in range(1, count + 1)
            ]
        )
        outs = yield proto.outputs(count)
        self.assertEqual([up_ack(o) for o in outs], [ok(c, c) for c in range(1, count + 1)])
        stored = rows(self.node, self.bob)
        self.assertEqual(
            [(r[0], r[4]) for r in stored], [(c, f"m{c}".encode()) for c in range(1, count + 1)]
        )

    @defer.inlineCallbacks
    def test_rejections_inside_a_pipeline_keep_order_and_seqs(self):
        proto = yield self.raw(self.alice_token)
        msgs = [
            text(self.bob, "a"),
            text(U64_MAX, "nobody"),
            text(self.bob, "b"),
            text(self.bob, "spoof", sender_id=self.bob),
            text(self.bob, "c"),
        ]
        proto.send_inputs(
            [(pb.CT_Message, pb.UpMsg(msg=m, clientId=c)) for c, m in enumerate(msgs, start=1)]
        )
        outs = yield proto.outputs(5)
        self.assertEqual(
            [up_ack(o) for o in outs],
            [ok(1, 1), refused(1005, 2), ok(3, 2), refused(1002, 4), ok(5, 3)],
        )
        self.assertEqual([r[4] for r in rows(self.node, self.bob)], [b"a", b"b", b"c"])

    @defer.inlineCallbacks
    def test_gap_inside_a_pipeline_is_refused_and_the_rest_accepted(self):
        proto = yield self.raw(self.alice_token)
        order = [1, 2, 4, 3, 4]
        proto.send_inputs(
            [(pb.CT_Message, pb.UpMsg(msg=text(self.bob, f"m{c}"), clientId=c)) for c in order]
        )
        outs = [up_ack(o) for o in (yield proto.outputs(5))]
        # A gap is answered at once (nothing to store); outcomes come in clientId order.
        self.assertEqual(outs[0], refused(1011, 4))
        self.assertEqual(outs[1:], [ok(1, 1), ok(2, 2), ok(3, 3), ok(4, 4)])
        self.assertEqual([r[4] for r in rows(self.node, self.bob)], [b"m1", b"m2", b"m3", b"m4"])

    @defer.inlineCallbacks
    def test_retransmit_while_in_flight_is_stored_and_acked_once(self):
        proto = yield self.raw(self.alice_token)
        msg = pb.UpMsg(msg=text(self.bob, "once"), clientId=1)
        proto.send_inputs([(pb.CT_Message, msg), (pb.CT_Message, msg)])
        first = yield proto.next_output()
        self.assertEqual(up_ack(first), ok(1, 1))
        proto.send_input(pb.CT_Sync, pb.SyncInputMsg(seq=0))
        # The copy that came while the first was in flight got no second ACK.
        out = yield proto.next_output()
        self.assertEqual((out.type, out.code), (pb.CT_Sync, 200))
        self.assertEqual([m.seq for m in pb.SyncOutputMsg.FromString(out.data).messages], [1])
        self.assertEqual(len(rows(self.node, self.bob)), 1)


class TransientFailure(Pair):
    """A database that fails is ACKed 1004 and the clientId stays open."""

    def db_path(self):
        return os.path.join(self.node.data_dir, "gochat.db")

    def short_busy_timeout(self):
        # The writer waits this long for a lock before the failure is reported.
        return self.node.service.database.write_pool.runInteraction(
            lambda txn: txn.execute("PRAGMA busy_timeout = 20")
        )

    @defer.inlineCallbacks
    def test_locked_database_gets_1004_and_does_not_consume_the_clientid(self):
        proto = yield self.raw(self.alice_token, device_id="phone")
        ack = yield self.send(proto, 1, text(self.bob, "one"))
        self.assertEqual(ack, ok(1, 1))
        yield self.short_busy_timeout()
        locker = sqlite3.connect(self.db_path(), isolation_level=None)
        self.addCleanup(locker.close)
        locker.execute("BEGIN IMMEDIATE")
        try:
            ack = yield self.send(proto, 2, text(self.bob, "two"))
        finally:
            locker.execute("ROLLBACK")
        self.assertEqual(ack, refused(1004, 2))
        self.assertEqual(len(rows(self.node, self.bob)), 1)
        ack = yield self.send(proto, 2, text(self.bob, "two"))
        self.assertEqual(ack, ok(2, 2))
        ack = yield self.send(proto, 3, text(self.bob, "three"))
        self.assertEqual(ack, ok(3, 3))

    @defer.inlineCallbacks
    def test_nothing_later_from_the_device_is_stored_before_a_failed_message(self):
        proto = yield self.raw(self.alice_token, device_id="phone")
        # A real failure of the real database for one message only: a trigger
        # refuses the content "boom" until it is dropped.
        locker = sqlite3.connect(self.db_path(), isolation_level=None)
        self.addCleanup(locker.close)
        locker.execute(
            "CREATE TRIGGER refuse_boom BEFORE INSERT ON message_bodies"
            " WHEN NEW.content = X'626f6f6d' BEGIN SELECT RAISE(ABORT, 'disk trouble'); END"
        )
        proto.send_inputs(
            [
                (pb.CT_Message, pb.UpMsg(msg=text(self.bob, "boom"), clientId=1)),
                (pb.CT_Message, pb.UpMsg(msg=text(self.bob, "after"), clientId=2)),
            ]
        )
        outs = yield proto.outputs(2)
        self.assertEqual([up_ack(o) for o in outs], [refused(1004, 1), refused(1004, 2)])
        self.assertEqual(rows(self.node, self.bob), [])
        locker.execute("DROP TRIGGER refuse_boom")
        proto.send_inputs(
            [
                (pb.CT_Message, pb.UpMsg(msg=text(self.bob, "boom"), clientId=1)),
                (pb.CT_Message, pb.UpMsg(msg=text(self.bob, "after"), clientId=2)),
            ]
        )
        outs = yield proto.outputs(2)
        self.assertEqual([up_ack(o) for o in outs], [ok(1, 1), ok(2, 2)])
        self.assertEqual([r[4] for r in rows(self.node, self.bob)], [b"boom", b"after"])


class Devices(Pair):
    @defer.inlineCallbacks
    def test_device_keeps_its_last_clientid_across_reconnects(self):
        proto = yield self.raw(self.alice_token, device_id="laptop")
        first = yield self.send(proto, 1, text(self.bob, "one"))
        yield self._drop(proto)
        again = yield self.raw()
        code, ack = yield again.login(self.alice_token, device_id="laptop")
        self.assertEqual((code, ack.clientId, ack.seq), (200, 1, 1))
        retransmit = yield self.send(again, 1, text(self.bob, "one"))
        self.assertEqual(retransmit, first)
        gap = yield self.send(again, 3, text(self.bob, "three"))
        self.assertEqual(gap, refused(1011, 3))
        nxt = yield self.send(again, 2, text(self.bob, "two"))
        self.assertEqual(nxt, ok(2, 2))
        self.assertEqual(len(rows(self.node, self.bob)), 2)

    @defer.inlineCallbacks
    def test_device_keeps_its_last_clientid_across_a_node_restart(self):
        proto = yield self.raw(self.alice_token, device_id="laptop")
        yield self.send(proto, 1, text(self.bob, "one"))
        first = yield self.send(proto, 2, text(self.bob, "two"))
        yield self._drop(proto)
        yield self.restart()
        again = yield self.raw()
        code, ack = yield again.login(self.alice_token, device_id="laptop")
        self.assertEqual((code, ack.clientId, ack.seq), (200, 2, 2))
        retransmit = yield self.send(again, 2, text(self.bob, "two"))
        self.assertEqual(retransmit, first)
        self.assertEqual(retransmit, ok(2, 2))
        self.assertEqual(len(rows(self.node, self.bob)), 2)

    @defer.inlineCallbacks
    def test_connection_without_device_id_starts_at_clientid_one(self):
        proto = yield self.raw(self.alice_token)
        yield self.send(proto, 1, text(self.bob, "one"))
        yield self._drop(proto)
        again = yield self.raw()
        code, ack = yield again.login(self.alice_token)
        self.assertEqual((code, ack.clientId, ack.seq), (200, 0, 1))
        fresh = yield self.send(again, 1, text(self.bob, "new one"))
        self.assertEqual(fresh, ok(1, 2))

    @defer.inlineCallbacks
    def test_same_device_logging_in_again_closes_the_old_connection(self):
        old = yield self.raw(self.alice_token, device_id="phone")
        yield self.send(old, 1, text(self.bob, "one"))
        new = yield self.raw()
        code, ack = yield new.login(self.alice_token, device_id="phone")
        self.assertEqual((code, ack.clientId), (200, 1))
        yield old.closed
        ack = yield self.send(new, 2, text(self.bob, "two"))
        self.assertEqual(ack, ok(2, 2))

    @defer.inlineCallbacks
    def test_kicked_device_still_receives_pushes_on_its_new_connection(self):
        yield self.raw(self.bob_token, device_id="phone")
        new = yield self.raw(self.bob_token, device_id="phone")
        alice = yield self.raw(self.alice_token)
        yield self.send(alice, 1, text(self.bob, "hi"))
        push = yield new.next_output()
        self.assertEqual((push.type, pb.PushMsg.FromString(push.data).msg.seq), (pb.CT_Message, 1))


class Pushes(Pair):
    @defer.inlineCallbacks
    def test_push_reaches_every_device_of_both_users_but_the_sending_one(self):
        a1 = yield self.raw(self.alice_token, device_id="a1")
        a2 = yield self.raw(self.alice_token, device_id="a2")
        b1 = yield self.raw(self.bob_token, device_id="b1")
        b2 = yield self.raw(self.bob_token)
        yield self.send(a1, 1, text(self.bob, "hello", send_time=99))
        expected_bob = pb.Message(
            session_type=pb.ST_Single,
            receiver_id=self.bob,
            sender_id=self.alice,
            message_type=pb.MT_Text,
            content=b"hello",
            seq=1,
            send_time=99,
        )
        for proto in (b1, b2, a2):
            out = yield proto.next_output()
            self.assertEqual((out.type, out.code), (pb.CT_Message, 200))
            self.assertEqual(pb.PushMsg.FromString(out.data).msg, expected_bob)
        # The sending device: its next frame answers a sync, no push came first.
        a1.send_input(pb.CT_Sync, pb.SyncInputMsg(seq=1))
        out = yield a1.next_output()
        self.assertEqual((out.type, out.code), (pb.CT_Sync, 200))

    @defer.inlineCallbacks
    def test_group_push_reaches_the_sender_s_other_devices_with_the_sender_s_seq(self):
        carol, carol_token = yield self.node.user("carol")
        group = yield self.node.api().create_group(self.alice_token, "g", [self.bob, carol])
        gid = int(group["id"])
        bob_first = yield self.raw(self.bob_token)
        first = yield self.send(bob_first, 1, text(self.alice, "bob first"))  # bob: seq 1
        self.assertEqual(first, ok(1, 1))
        a1 = yield self.raw(self.alice_token, device_id="a1")
        devices = []
        for name in ("a2", "a3", "a4"):
            d = yield self.raw(self.alice_token, device_id=name)
            devices.append(d)
        carols = []
        for _ in range(2):
            c = yield self.raw(carol_token)
            carols.append(c)
        ack = yield self.send(a1, 1, text(gid, "hello all", group=True))
        self.assertEqual(ack, ok(1, 2))
        for proto, seq in [(d, 2) for d in devices] + [(c, 1) for c in carols] + [(bob_first, 2)]:
            out = yield proto.next_output()
            msg = pb.PushMsg.FromString(out.data).msg
            self.assertEqual(
                (out.type, msg.seq, msg.sender_id, msg.receiver_id, msg.content),
                (pb.CT_Message, seq, self.alice, gid, b"hello all"),
            )
        a1.send_input(pb.CT_Sync, pb.SyncInputMsg(seq=2))
        out = yield a1.next_output()
        self.assertEqual((out.type, out.code), (pb.CT_Sync, 200))  # no push to the sender

    @defer.inlineCallbacks
    def test_push_carries_each_recipient_s_own_seq(self):
        carol, carol_token = yield self.node.user("carol")
        alice = yield self.raw(self.alice_token)
        yield self.send(alice, 1, text(carol, "to carol first"))
        bob = yield self.raw(self.bob_token)
        yield self.send(alice, 2, text(self.bob, "then bob"))
        out = yield bob.next_output()
        msg = pb.PushMsg.FromString(out.data).msg
        self.assertEqual((msg.seq, msg.content), (1, b"then bob"))
        self.assertEqual(rows(self.node, self.alice)[1][0], 2)

    @defer.inlineCallbacks
    def test_group_members_offline_at_send_time_sync_everything_later(self):
        users = []
        for name in ("carol", "dave", "erin"):
            uid, token = yield self.node.user(name)
            users.append((uid, token))
        ids = [self.bob] + [u for u, _ in users]
        group = yield self.node.api().create_group(self.alice_token, "team", ids)
        gid = int(group["id"])
        alice = yield self.raw(self.alice_token)
        bob = yield self.raw(self.bob_token)
        for cid in (1, 2, 3):
            ack = yield self.send(alice, cid, text(gid, f"g{cid}", group=True))
            self.assertEqual(ack, ok(cid, cid))
        pushes = yield bob.outputs(3)
        self.assertEqual(
            [pb.PushMsg.FromString(o.data).msg.content for o in pushes], [b"g1", b"g2", b"g3"]
        )
        for uid, token in users:
            late = yield self.raw(token)
            late.send_input(pb.CT_Sync, pb.SyncInputMsg(seq=0))
            out = yield late.next_output()
            body = pb.SyncOutputMsg.FromString(out.data)
            self.assertEqual(
                [
                    (m.seq, m.content, m.session_type, m.receiver_id, m.sender_id)
                    for m in body.messages
                ],
                [(i, f"g{i}".encode(), pb.ST_Group, gid, self.alice) for i in (1, 2, 3)],
            )
            self.assertFalse(body.has_more)
            self.assertEqual([r[0] for r in rows(self.node, uid)], [1, 2, 3])

    @defer.inlineCallbacks
    def test_group_message_is_stored_once_per_member_sender_included(self):
        carol, _ = yield self.node.user("carol")
        group = yield self.node.api().create_group(self.alice_token, "trio", [self.bob, carol])
        alice = yield self.raw(self.alice_token)
        yield self.send(alice, 1, text(int(group["id"]), "all", group=True))
        count = query(self.node, "SELECT user_id, COUNT(*) FROM messages GROUP BY user_id")
        self.assertEqual(sorted(count), sorted([(self.alice, 1), (self.bob, 1), (carol, 1)]))


class Sync(Pair):
    node_options = {"sync_limit": 5}

    @defer.inlineCallbacks
    def fill(self, count):
        alice = yield self.raw(self.alice_token)
        for cid in range(1, count + 1):
            yield self.send(alice, cid, text(self.bob, f"m{cid}"))

    @defer.inlineCallbacks
    def sync(self, proto, seq):
        proto.send_input(pb.CT_Sync, pb.SyncInputMsg(seq=seq))
        out = yield proto.next_output()
        self.assertEqual((out.type, out.code), (pb.CT_Sync, 200))
        body = pb.SyncOutputMsg.FromString(out.data)
        return [m.seq for m in body.messages], body.has_more

    @defer.inlineCallbacks
    def test_sync_pages_by_sync_limit_with_has_more(self):
        yield self.fill(12)
        bob = yield self.raw(self.bob_token)
        page = yield self.sync(bob, 0)
        self.assertEqual(page, ([1, 2, 3, 4, 5], True))
        page = yield self.sync(bob, 5)
        self.assertEqual(page, ([6, 7, 8, 9, 10], True))
        page = yield self.sync(bob, 10)
        self.assertEqual(page, ([11, 12], False))

    @defer.inlineCallbacks
    def test_exactly_sync_limit_messages_leave_has_more_false(self):
        yield self.fill(5)
        bob = yield self.raw(self.bob_token)
        page = yield self.sync(bob, 0)
        self.assertEqual(page, ([1, 2, 3, 4, 5], False))
        page = yield self.sync(bob, 4)
        self.assertEqual(page, ([5], False))
        page = yield self.sync(bob, 5)
        self.assertEqual(page, ([], False))

    @defer.inlineCallbacks
    def test_one_more_than_sync_limit_sets_has_more(self):
        yield self.fill(6)
        bob = yield self.raw(self.bob_token)
        page = yield self.sync(bob, 0)
        self.assertEqual(page, ([1, 2, 3, 4, 5], True))

    @defer.inlineCallbacks
    def test_sync_past_the_end_and_at_u64_max_is_empty(self):
        yield self.fill(2)
        bob = yield self.raw(self.bob_token)
        page = yield self.sync(bob, 100)
        self.assertEqual(page, ([], False))
        page = yield self.sync(bob, U64_MAX)
        self.assertEqual(page, ([], False))

    @defer.inlineCallbacks
    def test_sync_returns_full_messages(self):
        alice = yield self.raw(self.alice_token)
        yield self.send(alice, 1, text(self.bob, "hello", send_time=42))
        bob = yield self.raw(self.bob_token)
        bob.send_input(pb.CT_Sync, pb.SyncInputMsg(seq=0))
        out = yield bob.next_output()
        self.assertEqual(
            list(pb.SyncOutputMsg.FromString(out.data).messages),
            [
                pb.Message(
                    session_type=pb.ST_Single,
                    receiver_id=self.bob,
                    sender_id=self.alice,
                    message_type=pb.MT_Text,
                    content=b"hello",
                    seq=1,
                    send_time=42,
                )
            ],
        )


class Timeouts(Pair):
    """The timers on the real reactor: waits on the close itself, never a sleep."""

    node_options = {"login_timeout": 0.3, "heartbeat_timeout": 1.0, "heartbeat_interval": 0.1}

    @defer.inlineCallbacks
    def test_connection_without_login_is_closed_after_the_login_timeout(self):
        proto = yield self.raw()
        code, reason = yield proto.closed
        self.assertEqual((code, reason), (1000, "no login within the login timeout"))

    @defer.inlineCallbacks
    def test_idle_logged_in_connection_is_closed_by_the_heartbeat_checker(self):
        proto = yield self.raw(self.alice_token)
        code, reason = yield proto.closed
        self.assertEqual((code, reason), (1000, "heartbeat timeout"))
        yield self.node.service.hub.presence.nodes_for([self.alice])
        self.assertNotIn(self.alice, self.node.service.hub.presence.online)


class Reconnect(Pair):
    @defer.inlineCallbacks
    def test_pipelined_messages_are_exactly_once_when_the_device_reconnects_midway(self):
        count = 200
        old = yield self.raw(self.alice_token, device_id="phone")
        ups = [
            (pb.CT_Message, pb.UpMsg(msg=text(self.bob, f"m{c}"), clientId=c))
            for c in range(1, count + 1)
        ]
        old.send_inputs(ups)
        new = yield self.raw()
        code, ack = yield new.login(self.alice_token, device_id="phone")
        self.assertEqual(code, 200)
        acked_before = ack.clientId
        # Retransmit everything after what the login ACK says was accepted.
        new.send_inputs(ups[acked_before:])
        outs = yield new.outputs(count - acked_before)
        self.assertEqual(
            [up_ack(o) for o in outs], [ok(c, c) for c in range(acked_before + 1, count + 1)]
        )
        self.assertEqual(
            [r[4] for r in rows(self.node, self.bob)],
            [f"m{c}".encode() for c in range(1, count + 1)],
        )


class Endpoints(Pair):
    @defer.inlineCallbacks
    def test_websocket_is_also_served_at_ws_on_the_http_port(self):
        url = self.node.http_url.replace("http://", "ws://") + "/ws"
        proto = yield raw_connect(url)
        self.addCleanup(self._drop, proto)
        code, ack = yield proto.login(self.alice_token)
        self.assertEqual((code, ack.type), (200, pb.AT_Login))

    @defer.inlineCallbacks
    def test_other_paths_on_the_gateway_are_refused(self):
        url = self.node.ws_url.replace("/ws", "/elsewhere")
        yield self.assertFailure(raw_connect(url), ConnectionError)
