"""Issue 11 over real sockets: profiles, search, friends and groups that change.

Every test runs on SQLite, PostgreSQL and MariaDB (the ``*Postgres`` and
``*MariaDB`` cases), against a real node, with exact JSON bodies and the
group events as each member's sync returns them.
"""

from __future__ import annotations

from twisted.internet import defer

from gochat.pb import pb
from tests.people_util import PeopleCase, events


class People:
    @defer.inlineCallbacks
    def test_user_info_gives_nicknames_and_leaves_unknown_ids_out(self):
        (a, ta), (b, _) = yield self.users("alice", "bob")
        data = yield self.ok(
            "GET", "/user/info", ta, [("ids", str(b)), ("ids", str(a)), ("ids", "999999")]
        )
        self.assertEqual(
            data,
            {"users": [{"id": str(a), "nickname": "alice"}, {"id": str(b), "nickname": "bob"}]},
        )

    @defer.inlineCallbacks
    def test_user_info_refuses_more_than_500_ids(self):
        ((_, ta),) = yield self.users("alice")
        status, reply = yield self.call(
            "GET", "/user/info", ta, ids=[str(i) for i in range(1, 502)]
        )
        self.assertEqual((status, reply["code"]), (400, 400))

    @defer.inlineCallbacks
    def test_search_finds_by_exact_phone_and_never_shows_the_number(self):
        ((a, ta),) = yield self.users("alice")
        b, _, phone = yield self.user("bob")
        status, reply = yield self.call("GET", "/user/search", ta, [("phone_number", phone)])
        self.assertEqual((status, reply["data"]), (200, {"id": str(b), "nickname": "bob"}))
        status, reply = yield self.call("GET", "/user/search", ta, [("phone_number", phone + "9")])
        self.assertEqual((status, reply["code"]), (404, 404))

    @defer.inlineCallbacks
    def test_search_is_rate_limited_per_address(self):
        ((_, ta),) = yield self.users("alice")
        statuses = []
        for _ in range(21):
            status, reply = yield self.call("GET", "/user/search", ta, [("phone_number", "+0")])
            statuses.append(status)
        self.assertEqual(statuses, [404] * 20 + [429])

    @defer.inlineCallbacks
    def test_update_changes_the_nickname(self):
        ((a, ta),) = yield self.users("alice")
        yield self.ok("POST", "/user/update", ta, [("nickname", "Alice Ü")])
        data = yield self.ok("GET", "/user/info", ta, [("ids", str(a))])
        self.assertEqual(data["users"], [{"id": str(a), "nickname": "Alice Ü"}])

    @defer.inlineCallbacks
    def test_nickname_limits_are_400(self):
        ((_, ta),) = yield self.users("alice")
        for bad in ("x" * 33, "a\nb", "tab\there", "   ", ""):
            status, reply = yield self.call("POST", "/user/update", ta, [("nickname", bad)])
            self.assertEqual((status, reply["code"]), (400, 400), bad)
        yield self.ok("POST", "/user/update", ta, [("nickname", "é" * 32)])

    @defer.inlineCallbacks
    def test_friend_list_names_the_friends_both_ways(self):
        (a, ta), (b, tb), (c, _) = yield self.users("alice", "bob", "carol")
        yield self.ok("POST", "/friend/add", ta, [("friend_id", str(b))])
        yield self.ok("POST", "/friend/add", ta, [("friend_id", str(c))])
        data = yield self.ok("GET", "/friend/list", ta)
        self.assertEqual(
            data["friends"],
            [{"id": str(b), "nickname": "bob"}, {"id": str(c), "nickname": "carol"}],
        )
        data = yield self.ok("GET", "/friend/list", tb)
        self.assertEqual(data["friends"], [{"id": str(a), "nickname": "alice"}])


class Groups:
    @defer.inlineCallbacks
    def test_group_list_and_info(self):
        (a, ta), (b, tb), (c, tc) = yield self.users("alice", "bob", "carol")
        gid = yield self.group(ta, "hiking", [b])
        data = yield self.ok("GET", "/group/list", tb)
        self.assertEqual(
            data,
            {"groups": [{"id": str(gid), "name": "hiking", "owner_id": str(a), "member_count": 2}]},
        )
        data = yield self.ok("GET", "/group/info", tb, [("group_id", str(gid))])
        self.assertEqual(
            data,
            {
                "id": str(gid),
                "name": "hiking",
                "owner_id": str(a),
                "members": [{"id": str(a), "nickname": "alice"}, {"id": str(b), "nickname": "bob"}],
                "read_count": 2,
            },
        )
        status, _ = yield self.call("GET", "/group/info", tc, [("group_id", str(gid))])
        self.assertEqual(status, 403)
        status, _ = yield self.call("GET", "/group/info", tc, [("group_id", "987654")])
        self.assertEqual(status, 404)
        data = yield self.ok("GET", "/group/list", tc)
        self.assertEqual(data, {"groups": []})

    @defer.inlineCallbacks
    def test_creating_a_group_writes_no_event(self):
        (a, ta), (b, tb) = yield self.users("alice", "bob")
        yield self.group(ta, "g", [b])
        messages = yield self.synced(tb)
        self.assertEqual(messages, [])

    @defer.inlineCallbacks
    def test_any_member_adds_and_everyone_after_gets_the_event(self):
        (a, ta), (b, tb), (c, tc), (d, td) = yield self.users("a", "b", "c", "d")
        gid = yield self.group(ta, "g", [b])
        yield self.ok("POST", "/group/members/add", tb, [("group_id", str(gid)), ("ids", str(c))])
        expected = {
            "event": "members_added",
            "group_id": str(gid),
            "actor_id": str(b),
            "user_ids": [str(c)],
        }
        for token in (ta, tb, tc):
            messages = yield self.synced(token)
            self.assertEqual(events(messages), [expected])
            m = messages[-1]
            self.assertEqual(
                (m.session_type, m.receiver_id, m.sender_id, m.message_type),
                (pb.ST_Group, gid, b, pb.MT_System),
            )
        self.assertEqual((yield self.synced(td)), [])
        status, _ = yield self.call(
            "POST", "/group/members/add", td, [("group_id", str(gid)), ("ids", str(d))]
        )
        self.assertEqual(status, 403)
        status, _ = yield self.call(
            "POST", "/group/members/add", ta, [("group_id", str(gid)), ("ids", "99999999")]
        )
        self.assertEqual(status, 404)
        # Adding members already there changes nothing and writes no event.
        yield self.ok("POST", "/group/members/add", ta, [("group_id", str(gid)), ("ids", str(c))])
        self.assertEqual(len((yield self.synced(ta))), 1)

    @defer.inlineCallbacks
    def test_the_owner_removes_and_the_removed_get_the_removal_then_nothing(self):
        (a, ta), (b, tb), (c, tc) = yield self.users("a", "b", "c")
        gid = yield self.group(ta, "g", [b, c])
        status, reply = yield self.call(
            "POST", "/group/members/remove", tb, [("group_id", str(gid)), ("ids", str(c))]
        )
        self.assertEqual((status, reply["code"]), (403, 403))
        status, _ = yield self.call(
            "POST", "/group/members/remove", ta, [("group_id", str(gid)), ("ids", str(a))]
        )
        self.assertEqual(status, 400)
        alice = yield self.ws(ta)
        yield self.send(alice, 1, gid, "before", group=True)
        yield self.ok(
            "POST", "/group/members/remove", ta, [("group_id", str(gid)), ("ids", str(c))]
        )
        yield self.send(alice, 2, gid, "after", group=True)
        removal = {
            "event": "members_removed",
            "group_id": str(gid),
            "actor_id": str(a),
            "user_ids": [str(c)],
        }
        carol = yield self.synced(tc)
        self.assertEqual([m.content for m in carol[:1]], [b"before"])
        self.assertEqual(events(carol), [removal])
        self.assertEqual(len(carol), 2)
        bob = yield self.synced(tb)
        self.assertEqual(
            [m.content for m in bob if m.message_type == pb.MT_Text], [b"before", b"after"]
        )
        self.assertEqual(events(bob), [removal])
        status, _ = yield self.call("GET", "/group/info", tc, [("group_id", str(gid))])
        self.assertEqual(status, 403)

    @defer.inlineCallbacks
    def test_an_owner_who_leaves_hands_the_group_to_the_longest_standing_member(self):
        (a, ta), (b, tb), (c, tc) = yield self.users("a", "b", "c")
        gid = yield self.group(ta, "g", [c])
        yield self.ok("POST", "/group/members/add", ta, [("group_id", str(gid)), ("ids", str(b))])
        yield self.ok("POST", "/group/leave", ta, [("group_id", str(gid))])
        left = {
            "event": "member_left",
            "group_id": str(gid),
            "actor_id": str(a),
            "user_ids": [str(a)],
            "owner_id": str(c),
        }
        self.assertEqual(events((yield self.synced(ta)))[-1], left)
        self.assertEqual(events((yield self.synced(tb)))[-1], left)
        data = yield self.ok("GET", "/group/info", tb, [("group_id", str(gid))])
        self.assertEqual(
            (data["owner_id"], [m["id"] for m in data["members"]]), (str(c), [str(c), str(b)])
        )
        # The last members leave: the group is gone.
        yield self.ok("POST", "/group/leave", tb, [("group_id", str(gid))])
        yield self.ok("POST", "/group/leave", tc, [("group_id", str(gid))])
        status, _ = yield self.call("GET", "/group/info", tc, [("group_id", str(gid))])
        self.assertEqual(status, 404)
        status, _ = yield self.call("POST", "/group/leave", tc, [("group_id", str(gid))])
        self.assertEqual(status, 404)

    @defer.inlineCallbacks
    def test_the_owner_renames_and_names_are_limited(self):
        (a, ta), (b, tb) = yield self.users("a", "b")
        gid = yield self.group(ta, "g", [b])
        status, _ = yield self.call(
            "POST", "/group/update", tb, [("group_id", str(gid)), ("name", "x")]
        )
        self.assertEqual(status, 403)
        for bad in ("y" * 65, "bell\x07", ""):
            status, _ = yield self.call(
                "POST", "/group/update", ta, [("group_id", str(gid)), ("name", bad)]
            )
            self.assertEqual(status, 400, bad)
        yield self.ok("POST", "/group/update", ta, group_id=str(gid), name="n" * 64)
        self.assertEqual(
            events((yield self.synced(tb))),
            [
                {
                    "event": "group_renamed",
                    "group_id": str(gid),
                    "actor_id": str(a),
                    "name": "n" * 64,
                }
            ],
        )
        data = yield self.ok("GET", "/group/list", tb)
        self.assertEqual(data["groups"][0]["name"], "n" * 64)

    @defer.inlineCallbacks
    def test_a_client_may_not_send_a_system_message(self):
        (a, ta), (b, _) = yield self.users("a", "b")
        gid = yield self.group(ta, "g", [b])
        alice = yield self.ws(ta)
        msg = pb.Message(
            session_type=pb.ST_Group, receiver_id=gid, message_type=pb.MT_System, content=b"{}"
        )
        alice.up(1, msg)
        out = yield alice.next_output()
        self.assertEqual((out.type, out.code), (pb.CT_ACK, 1001))


class PeopleSQLite(People, Groups, PeopleCase):
    pass


class PeoplePostgres(People, Groups, PeopleCase):
    engine = "postgresql"


class PeopleMariaDB(People, Groups, PeopleCase):
    engine = "mysql"
