"""Issue 11: the conversation list, unread counts and read positions, over real
sockets on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

from twisted.internet import defer

from gochat.pb import pb
from tests.people_util import PeopleCase
from tests.util import query


class Conversations:
    @defer.inlineCallbacks
    def conversations(self, token: str, **params: str):
        data = yield self.ok("GET", "/conversations", token, list(params.items()))
        return data

    @defer.inlineCallbacks
    def test_list_is_most_recent_first_with_names_last_messages_and_unread(self):
        (a, ta), (b, tb), (c, tc) = yield self.users("alice", "bob", "carol")
        gid = yield self.group(ta, "hiking", [b, c])
        alice = yield self.ws(ta)
        bob = yield self.ws(tb)
        yield self.send(alice, 1, b, "hi bob")
        yield self.send(alice, 2, b, "still there?")
        yield self.send(bob, 1, gid, "to the group", group=True)
        data = yield self.conversations(ta)
        group, single = data["conversations"]
        self.assertEqual(data["next_before"], "")
        self.assertEqual(
            (group["session_type"], group["peer_id"], group["name"], group["unread"]),
            (2, str(gid), "hiking", 1),
        )
        self.assertEqual(group["last_message"]["content"], "to the group")
        self.assertEqual(group["last_message"]["sender_id"], str(b))
        self.assertEqual(group["last_message"]["seq"], "3")  # alice's own seq of it
        self.assertEqual(group["read_seq"], "0")
        self.assertEqual(
            (single["session_type"], single["peer_id"], single["name"], single["unread"]),
            (1, str(b), "bob", 0),
        )
        self.assertEqual(
            single["last_message"],
            {
                "session_type": 1,
                "receiver_id": str(b),
                "sender_id": str(a),
                "message_type": 1,
                "content": "still there?",
                "seq": "2",
                "send_time": single["last_message"]["send_time"],
            },
        )
        self.assertEqual(single["read_seq"], "2")  # sending marked it read
        data = yield self.conversations(tb)
        group, single = data["conversations"]
        self.assertEqual((group["unread"], group["read_seq"]), (0, "3"))  # bob's own message
        self.assertEqual(
            (single["peer_id"], single["name"], single["unread"]), (str(a), "alice", 2)
        )
        self.assertEqual(single["last_message"]["seq"], "2")  # bob's seq of "still there?"
        data = yield self.conversations(tc)
        ((group,),) = [data["conversations"]]
        self.assertEqual((group["unread"], group["last_message"]["seq"]), (1, "1"))

    @defer.inlineCallbacks
    def test_a_new_groups_conversation_is_listed_without_a_message(self):
        (a, ta), (b, tb) = yield self.users("alice", "bob")
        gid = yield self.group(ta, "new", [b])
        data = yield self.conversations(tb)
        self.assertEqual(
            data["conversations"],
            [
                {
                    "session_type": 2,
                    "peer_id": str(gid),
                    "name": "new",
                    "last_message": None,
                    "unread": 0,
                    "read_seq": "0",
                }
            ],
        )

    @defer.inlineCallbacks
    def test_reading_moves_the_position_forward_only(self):
        (a, ta), (b, tb) = yield self.users("alice", "bob")
        alice = yield self.ws(ta)
        for cid in (1, 2, 3):
            yield self.send(alice, cid, b, f"m{cid}")
        read = [("session_type", "1"), ("peer_id", str(a))]
        yield self.ok("POST", "/conversation/read", tb, read + [("seq", "2")])
        (single,) = (yield self.conversations(tb))["conversations"]
        self.assertEqual((single["unread"], single["read_seq"]), (1, "2"))
        yield self.ok("POST", "/conversation/read", tb, read + [("seq", "1")])
        (single,) = (yield self.conversations(tb))["conversations"]
        self.assertEqual((single["unread"], single["read_seq"]), (1, "2"))
        yield self.ok("POST", "/conversation/read", tb, read + [("seq", "3")])
        (single,) = (yield self.conversations(tb))["conversations"]
        self.assertEqual((single["unread"], single["read_seq"]), (0, "3"))

    @defer.inlineCallbacks
    def test_reading_a_seq_of_another_conversation_is_400_and_unknown_conversation_404(self):
        (a, ta), (b, tb), (c, tc) = yield self.users("alice", "bob", "carol")
        alice = yield self.ws(ta)
        yield self.send(alice, 1, b, "to bob")
        yield self.send(alice, 2, c, "to carol")
        status, reply = yield self.call(
            "POST",
            "/conversation/read",
            ta,
            [("session_type", "1"), ("peer_id", str(b)), ("seq", "2")],
        )
        self.assertEqual((status, reply["code"]), (400, 400))
        status, _ = yield self.call(
            "POST",
            "/conversation/read",
            tb,
            [("session_type", "2"), ("peer_id", "777"), ("seq", "5")],
        )
        self.assertEqual(status, 404)
        status, _ = yield self.call(
            "POST",
            "/conversation/read",
            tb,
            [("session_type", "3"), ("peer_id", str(a)), ("seq", "1")],
        )
        self.assertEqual(status, 400)

    @defer.inlineCallbacks
    def test_paging_with_before_walks_every_conversation_once(self):
        (a, ta), *others = yield self.users("alice", "b1", "b2", "b3", "b4", "b5")
        alice = yield self.ws(ta)
        for cid, (uid, _) in enumerate(others, start=1):
            yield self.send(alice, cid, uid, f"to {uid}")
        seen = []
        before = ""
        pages = 0
        while True:
            params = {"limit": "2"}
            if before:
                params["before"] = before
            data = yield self.conversations(ta, **params)
            pages += 1
            seen += [c["peer_id"] for c in data["conversations"]]
            before = data["next_before"]
            if not before:
                break
        self.assertEqual(pages, 3)
        self.assertEqual(sorted(seen), sorted(str(u) for u, _ in others))
        self.assertEqual(len(seen), len(set(seen)))
        for bad in ({"limit": "0"}, {"limit": "201"}, {"limit": "x"}, {"before": "nope"}):
            status, _ = yield self.call("GET", "/conversations", ta, list(bad.items()))
            self.assertEqual(status, 400, bad)

    @defer.inlineCallbacks
    def test_a_removed_member_keeps_the_group_with_the_removal_last(self):
        (a, ta), (b, tb) = yield self.users("alice", "bob")
        gid = yield self.group(ta, "g", [b])
        alice = yield self.ws(ta)
        yield self.send(alice, 1, gid, "one", group=True)
        yield self.ok(
            "POST", "/group/members/remove", ta, [("group_id", str(gid)), ("ids", str(b))]
        )
        yield self.send(alice, 2, gid, "after", group=True)
        (group,) = (yield self.conversations(tb))["conversations"]
        self.assertEqual(group["unread"], 2)
        self.assertEqual(group["last_message"]["message_type"], pb.MT_System)
        self.assertEqual(group["last_message"]["seq"], "2")
        (group,) = (yield self.conversations(ta))["conversations"]
        self.assertEqual((group["unread"], group["last_message"]["content"]), (0, "after"))

    @defer.inlineCallbacks
    def test_an_added_member_counts_from_the_add(self):
        (a, ta), (b, tb), (c, tc) = yield self.users("alice", "bob", "carol")
        gid = yield self.group(ta, "g", [b])
        alice = yield self.ws(ta)
        yield self.send(alice, 1, gid, "before carol", group=True)
        yield self.ok("POST", "/group/members/add", ta, [("group_id", str(gid)), ("ids", str(c))])
        yield self.send(alice, 2, gid, "with carol", group=True)
        (group,) = (yield self.conversations(tc))["conversations"]
        self.assertEqual((group["unread"], group["last_message"]["seq"]), (2, "2"))
        data = yield self.ok("GET", "/group/info", ta, [("group_id", str(gid))])
        self.assertEqual(data["read_count"], 1)  # only alice has read "with carol"


class ConversationsSQLite(Conversations, PeopleCase):
    @defer.inlineCallbacks
    def test_the_message_path_writes_no_row_per_recipient(self):
        """A group message adds one position row and upserts one head and one read row."""
        (a, ta), *rest = yield self.users("alice", "b", "c", "d", "e")
        gid = yield self.group(ta, "g", [u for u, _ in rest])
        alice = yield self.ws(ta)

        def counts():
            return [
                query(self.node, f"SELECT COUNT(*) FROM {t}")[0][0]
                for t in ("message_positions", "conversation_heads", "conversations")
            ]

        before = counts()
        yield self.send(alice, 1, gid, "x", group=True)
        yield self.send(alice, 2, gid, "y", group=True)
        self.assertEqual([n - m for n, m in zip(counts(), before, strict=True)], [2, 0, 0])
        self.assertEqual(
            query(self.node, "SELECT last_pos FROM conversation_heads WHERE low_id = ?", (gid,)),
            [(2,)],
        )


class ConversationsPostgres(Conversations, PeopleCase):
    engine = "postgresql"


class ConversationsMariaDB(Conversations, PeopleCase):
    engine = "mysql"
