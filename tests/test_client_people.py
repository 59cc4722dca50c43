"""The client library's calls for people, groups and conversations, against a real node."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from gochat.client import ApiError, SendError, system_event
from gochat.pb import pb
from tests.util import NodeTestCase


def waiter() -> tuple[list, defer.Deferred, Any]:
    """A callback that collects what it is given and fires a Deferred on the first."""
    got: list = []
    first: defer.Deferred = defer.Deferred()

    def collect(item: Any) -> None:
        got.append(item)
        if not first.called:
            first.callback(item)

    return got, first, collect


class HttpCalls(NodeTestCase):
    @defer.inlineCallbacks
    def register(self, phone: str, nickname: str) -> Any:
        data = yield self.node.api().register(phone, "secret", nickname)
        return int(data["id"]), data["token"]

    @defer.inlineCallbacks
    def test_people_calls(self):
        api = self.node.api()
        alice, token = yield self.register("100", "alice")
        bob, bob_token = yield self.register("200", "bob")
        found = yield api.search_user(token, "200")
        self.assertEqual(found, {"id": str(bob), "nickname": "bob"})
        missing = yield self.assertFailure(api.search_user(token, "999"), ApiError)
        self.assertEqual(missing.status, 404)
        yield api.update_user(token, "alice b.")
        info = yield api.user_info(bob_token, [alice, bob, 987654])
        self.assertEqual(
            sorted(info["users"], key=lambda u: int(u["id"])),
            [{"id": str(alice), "nickname": "alice b."}, {"id": str(bob), "nickname": "bob"}],
        )
        bad = yield self.assertFailure(api.update_user(token, "x" * 33), ApiError)
        self.assertEqual(bad.status, 400)
        yield api.add_friend(token, bob)
        friends = yield api.friends(bob_token)
        self.assertEqual(friends["friends"], [{"id": str(alice), "nickname": "alice b."}])

    @defer.inlineCallbacks
    def test_group_calls_and_who_may_make_them(self):
        api = self.node.api()
        alice, token = yield self.register("100", "alice")
        bob, bob_token = yield self.register("200", "bob")
        carol, carol_token = yield self.register("300", "carol")
        group = int((yield api.create_group(token, "team", [bob]))["id"])
        listed = yield api.groups(bob_token)
        self.assertEqual(
            listed["groups"],
            [{"id": str(group), "name": "team", "owner_id": str(alice), "member_count": 2}],
        )
        yield api.add_members(bob_token, group, [carol])  # any member may add
        info = yield api.group_info(carol_token, group)
        self.assertEqual([m["nickname"] for m in info["members"]], ["alice", "bob", "carol"])
        refused = yield self.assertFailure(api.remove_members(bob_token, group, [carol]), ApiError)
        self.assertEqual(refused.status, 403)
        refused = yield self.assertFailure(api.rename_group(bob_token, group, "mine"), ApiError)
        self.assertEqual(refused.status, 403)
        yield api.remove_members(token, group, [carol])
        outsider = yield self.assertFailure(api.group_info(carol_token, group), ApiError)
        self.assertEqual(outsider.status, 403)
        yield api.rename_group(token, group, "crew")
        yield api.leave_group(token, group)  # the owner leaves: bob owns it now
        info = yield api.group_info(bob_token, group)
        self.assertEqual((info["name"], info["owner_id"]), ("crew", str(bob)))
        self.assertEqual([m["id"] for m in info["members"]], [str(bob)])

    @defer.inlineCallbacks
    def test_conversations_and_mark_read(self):
        api = self.node.api()
        alice, token = yield self.register("100", "alice")
        bob, bob_token = yield self.register("200", "bob")
        client = yield self.client(token)
        yield client.send_text(bob, "one")
        yield client.send_text(bob, "two")
        convs = (yield api.conversations(bob_token))["conversations"]
        self.assertEqual(len(convs), 1)
        conv = convs[0]
        self.assertEqual(
            (conv["session_type"], conv["peer_id"], conv["name"], conv["unread"]),
            (pb.ST_Single, str(alice), "alice", 2),
        )
        self.assertEqual(conv["last_message"]["content"], "two")
        first_seq = 1  # bob's own seq of "one"
        yield api.mark_read(bob_token, pb.ST_Single, alice, first_seq)
        conv = (yield api.conversations(bob_token, limit=10))["conversations"][0]
        self.assertEqual((conv["unread"], conv["read_seq"]), (1, str(first_seq)))
        # Sending marks read: alice's own messages are never unread to her.
        mine = (yield api.conversations(token))["conversations"][0]
        self.assertEqual(mine["unread"], 0)


class Notices(NodeTestCase):
    @defer.inlineCallbacks
    def test_read_receipts_reach_the_peer_and_the_reader_s_other_devices(self):
        alice, alice_token = yield self.node.user("alice")
        bob, bob_token = yield self.node.user("bob")
        receipts, receipt, on_receipt = waiter()
        sender = yield self.client(alice_token, notices=True, on_read=on_receipt)
        seq_at_alice = yield sender.send_text(bob, "did you read this?")
        own, own_notice, on_own = waiter()
        other_device = yield self.client(
            bob_token, device_id="tablet", notices=True, on_read=on_own
        )
        plain_reads, _, on_plain = waiter()
        yield self.client(bob_token, device_id="old", on_read=on_plain)  # no notices
        reader = yield self.client(bob_token, device_id="phone", notices=True)
        msg = reader.received[-1]
        answer = yield reader.send_read(pb.ST_Single, alice, msg.seq)
        self.assertEqual((answer.peer_id, answer.seq, answer.reader_id), (alice, msg.seq, bob))
        got = yield receipt
        self.assertEqual(
            (got.session_type, got.peer_id, got.seq, got.reader_id),
            (pb.ST_Single, bob, seq_at_alice, bob),
        )
        notice = yield own_notice
        self.assertEqual((notice.peer_id, notice.seq, notice.reader_id), (alice, msg.seq, bob))
        self.assertEqual(other_device.received[-1].content, b"did you read this?")
        self.assertEqual(plain_reads, [])

    @defer.inlineCallbacks
    def test_a_refused_read_fails_with_its_code(self):
        alice, alice_token = yield self.node.user("alice")
        bob, _ = yield self.node.user("bob")
        client = yield self.client(alice_token, notices=True)
        failure = yield self.assertFailure(client.send_read(pb.ST_Single, bob, 12345), SendError)
        self.assertIn(failure.code, (1001, 1005))
        client.logged_in = False  # as before login: refused here, nothing sent
        failure = yield self.assertFailure(client.send_read(pb.ST_Single, bob, 1), SendError)
        self.assertEqual(failure.code, 1000)

    @defer.inlineCallbacks
    def test_typing_reaches_the_peer_only_when_it_asked_for_notices(self):
        alice, alice_token = yield self.node.user("alice")
        bob, bob_token = yield self.node.user("bob")
        typings, typing, on_typing = waiter()
        yield self.client(alice_token, device_id="a", notices=True, on_typing=on_typing)
        plain, _, on_plain = waiter()
        yield self.client(alice_token, device_id="b", on_typing=on_plain)
        typer = yield self.client(bob_token, notices=True)
        typer.send_typing(pb.ST_Single, alice)
        got = yield typing
        self.assertEqual((got.session_type, got.peer_id, got.sender_id), (pb.ST_Single, bob, bob))
        self.assertEqual(plain, [])


class SystemEvents(NodeTestCase):
    @defer.inlineCallbacks
    def test_group_events_arrive_as_messages_and_decode(self):
        alice, alice_token = yield self.node.user("alice")
        bob, bob_token = yield self.node.user("bob")
        carol, _ = yield self.node.user("carol")
        api = self.node.api()
        group = int((yield api.create_group(alice_token, "team", [bob]))["id"])
        events, first, on_message = waiter()
        yield self.client(bob_token, on_message=on_message)
        yield api.add_members(alice_token, group, [carol])
        msg = yield first
        self.assertEqual((msg.message_type, msg.receiver_id, msg.sender_id), (10, group, alice))
        self.assertEqual(
            system_event(msg),
            {
                "event": "members_added",
                "group_id": str(group),
                "actor_id": str(alice),
                "user_ids": [str(carol)],
            },
        )
        self.assertIsNone(system_event(pb.Message(message_type=pb.MT_Text, content=b"{}")))
        self.assertEqual(system_event(pb.Message(message_type=pb.MT_System, content=b"[1]")), {})
