"""Issue 11 follow-up: ``peer_read_seq`` in ``GET /conversations``, the peer's
read position in the caller's own seq space ("Seen" that survives a reload),
over real sockets on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from gochat.client.http import HttpApi
from gochat.pb import pb
from gochat.store.people import PEER_READ_SQL
from tests.people_util import PeopleCase
from tests.util import query


class Seen:
    @defer.inlineCallbacks
    def entries(self, token: str) -> Any:
        """``{(session_type, peer_id): entry}`` of the caller's conversation list."""
        data = yield self.ok("GET", "/conversations", token, [("limit", "200")])
        return {(c["session_type"], int(c["peer_id"])): c for c in data["conversations"]}

    @defer.inlineCallbacks
    def seen_by(self, token: str, peer: int) -> Any:
        entries = yield self.entries(token)
        return entries[(1, peer)]["peer_read_seq"]

    @defer.inlineCallbacks
    def ws_read(self, proto: Any, peer: int, seq: int) -> Any:
        """``CT_Read`` over the WebSocket; waits for the reader's reply."""
        proto.send_input(pb.CT_Read, pb.ReadMsg(session_type=pb.ST_Single, peer_id=peer, seq=seq))
        while True:
            out = yield proto.next_output()
            if out.type == pb.CT_Read:
                self.assertEqual(out.code, 200)
                return pb.ReadMsg.FromString(out.data).seq

    @defer.inlineCallbacks
    def chat(self) -> Any:
        """alice has two messages to carol first, so her seqs and bob's differ.

        Fires with ``(a, ta, b, tb, alice, bob, [alice's seqs], [bob's seqs])``
        of alice's "one" and "two" to bob.
        """
        (a, ta), (b, tb), (c, _) = yield self.users("alice", "bob", "carol")
        alice = yield self.ws(ta)
        bob = yield self.ws(tb)
        yield self.send(alice, 1, c, "first")
        yield self.send(alice, 2, c, "second")
        s1 = yield self.send(alice, 3, b, "one")
        s2 = yield self.send(alice, 4, b, "two")
        self.assertEqual((s1, s2), (3, 4))
        return a, ta, b, tb, alice, bob, [s1, s2], [1, 2]  # bob's list holds only these

    @defer.inlineCallbacks
    def test_zero_before_any_read_and_absent_on_groups(self):
        a, ta, b, tb, alice, bob, _, _ = yield self.chat()
        (d, td) = (yield self.users("dave"))[0]
        gid = yield self.group(ta, "hiking", [b, d])
        yield self.send(alice, 5, gid, "to the group", group=True)
        mine = yield self.entries(ta)
        singles = {k: v["peer_read_seq"] for k, v in mine.items() if k[0] == 1}
        self.assertEqual(sorted(singles.values()), ["0", "0"])  # neither bob nor carol read
        self.assertNotIn("peer_read_seq", mine[(2, gid)])
        theirs = yield self.entries(td)
        self.assertEqual(list(theirs), [(2, gid)])
        self.assertNotIn("peer_read_seq", theirs[(2, gid)])

    @defer.inlineCallbacks
    def test_a_read_over_the_websocket_is_given_in_the_callers_seqs(self):
        a, ta, b, tb, alice, bob, mine, his = yield self.chat()
        read = yield self.ws_read(bob, a, his[0])
        self.assertEqual(read, his[0])
        seen = yield self.seen_by(ta, b)
        self.assertEqual(seen, str(mine[0]))  # alice's seq 3, not bob's 1
        yield self.ws_read(bob, a, his[1])
        seen = yield self.seen_by(ta, b)
        self.assertEqual(seen, str(mine[1]))
        # An older read changes nothing: the value never moves backwards.
        yield self.ws_read(bob, a, his[0])
        seen = yield self.seen_by(ta, b)
        self.assertEqual(seen, str(mine[1]))

    @defer.inlineCallbacks
    def test_a_read_over_http_is_given_in_the_callers_seqs_and_never_goes_back(self):
        a, ta, b, tb, alice, bob, mine, his = yield self.chat()
        form = [("session_type", "1"), ("peer_id", str(a))]
        yield self.ok("POST", "/conversation/read", tb, form + [("seq", str(his[1]))])
        seen = yield self.seen_by(ta, b)
        self.assertEqual(seen, str(mine[1]))
        yield self.ok("POST", "/conversation/read", tb, form + [("seq", str(his[0]))])
        seen = yield self.seen_by(ta, b)
        self.assertEqual(seen, str(mine[1]))

    @defer.inlineCallbacks
    def test_a_reply_counts_as_read_and_names_the_callers_seq_of_it(self):
        """Sending marks the sender's position read up to the sent message, so
        the value can name the peer's own message, in the caller's seqs."""
        a, ta, b, tb, alice, bob, mine, his = yield self.chat()
        yield self.send(bob, 1, a, "three")  # bob's seq 3, alice's seq 5
        seen = yield self.seen_by(ta, b)
        self.assertEqual(seen, "5")
        # alice's sending marked her read up to her "two": bob's seq 2 of it.
        seen = yield self.seen_by(tb, a)
        self.assertEqual(seen, "2")
        form = [("session_type", "1"), ("peer_id", str(b)), ("seq", "5")]
        yield self.ok("POST", "/conversation/read", ta, form)
        seen = yield self.seen_by(tb, a)
        self.assertEqual(seen, "3")  # bob's own "three"


class SeenSQLite(Seen, PeopleCase):
    @defer.inlineCallbacks
    def test_the_python_client_gives_the_field(self):
        a, ta, b, tb, alice, bob, mine, his = yield self.chat()
        yield self.ws_read(bob, a, his[1])
        data = yield HttpApi(self.node.http_url).conversations(ta)
        bob_entry = next(c for c in data["conversations"] if c["peer_id"] == str(b))
        self.assertEqual(bob_entry["peer_read_seq"], str(mine[1]))

    @defer.inlineCallbacks
    def test_the_look_up_reads_by_primary_keys_and_scans_nothing(self):
        """Cheap: one search per key whatever the length of either history."""
        yield self.chat()
        sql = PEER_READ_SQL.format(marks="?,?")
        plan = [row[-1] for row in query(self.node, "EXPLAIN QUERY PLAN " + sql, (2, 3, 1))]
        plan = [step for step in plan if step != "CORRELATED SCALAR SUBQUERY 1"]
        keys = [
            "user_id=? AND session_type=? AND peer_id=?",  # the conversation
            "user_id=? AND last_seq=?",  # the run holding the read position
            "user_id=? AND last_seq>?",  # its key: the first run ending at or after it
            "stream_owner=? AND stream_seq=? AND idx=?",  # the message in the run's stream
            "owner_id=? AND owner_seq=?",  # its position
        ]
        self.assertEqual(len(plan), len(keys), plan)
        for step, key in zip(plan, keys, strict=True):  # every key column, no scan
            self.assertTrue(step.startswith("SEARCH ") and f"({key})" in step, plan)


class SeenPostgres(Seen, PeopleCase):
    engine = "postgresql"


class SeenMariaDB(Seen, PeopleCase):
    engine = "mysql"
