"""Issue 11: a membership change during a burst of group messages, over real
sockets, on SQLite, PostgreSQL and MariaDB.

Nobody removed gets a later message; nobody added misses one sent after the
add was answered. "Later" is the order the writer committed in, which every
member's list shows: the sender's own list is the reference.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from gochat.pb import pb
from tests import services
from tests.people_util import PeopleCase
from tests.test_receipts import settle
from tests.util import ack_of, text

BURST = 200
AFTER = 100


def pushes(proto: Any) -> list[pb.Message]:
    out = []
    for payload, _ in proto.frames:
        o = pb.Output.FromString(payload)
        if o.type == pb.CT_Message:
            out.append(pb.PushMsg.FromString(o.data).msg)
    return out


def label(m: pb.Message) -> str:
    if m.message_type == pb.MT_System:
        return json.loads(m.content)["event"]
    return m.content.decode()


class Burst:
    @defer.inlineCallbacks
    def test_membership_change_during_a_burst_of_group_messages(self):
        (owner, t_owner), (s, ts), (b, tb), (c, tc), (d, td) = yield self.users(
            "owner", "sender", "bob", "carol", "dave"
        )
        gid = yield self.group(t_owner, "g", [s, b, c])
        sender = yield self.ws(ts)
        carol = yield self.ws(tc)
        dave = yield self.ws(td)
        sender.send_inputs(
            [
                (pb.CT_Message, pb.UpMsg(msg=text(gid, f"m{i}", group=True), clientId=i))
                for i in range(1, BURST + 1)
            ]
        )
        acked: set[int] = set()

        @defer.inlineCallbacks
        def acks_until(client_id: int) -> Any:
            while client_id not in acked:
                out = yield sender.next_output(timeout=60)
                if out.type == pb.CT_ACK:
                    ack = ack_of(out)
                    self.assertEqual(out.code, 200)
                    acked.add(ack.clientId)

        yield acks_until(20)  # the burst is under way
        removed = self.ok(
            "POST", "/group/members/remove", t_owner, [("group_id", str(gid)), ("ids", str(c))]
        )
        added = self.ok(
            "POST", "/group/members/add", t_owner, [("group_id", str(gid)), ("ids", str(d))]
        )
        yield added
        acked_before_add = set(acked)
        sender.send_inputs(
            [
                (pb.CT_Message, pb.UpMsg(msg=text(gid, f"m{i}", group=True), clientId=i))
                for i in range(BURST + 1, BURST + AFTER + 1)
            ]
        )
        yield removed
        yield acks_until(BURST + AFTER)
        while len(acked) < BURST + AFTER:
            yield acks_until(max(set(range(1, BURST + AFTER + 1)) - acked))

        reference = [label(m) for m in (yield self.synced(ts)) if m.receiver_id == gid]
        self.assertEqual(len(reference), BURST + AFTER + 2)
        at_removal = reference.index("members_removed")
        at_add = reference.index("members_added")
        carol_list = [label(m) for m in (yield self.synced(tc))]
        dave_list = [label(m) for m in (yield self.synced(td))]
        # carol: exactly what was committed up to her removal, the removal last
        self.assertEqual(carol_list, reference[: at_removal + 1])
        # dave: the add, then exactly everything committed after it
        self.assertEqual(dave_list, reference[at_add:])
        # what was answered before the add went to dave only if committed after it
        for i in range(BURST + 1, BURST + AFTER + 1):
            self.assertIn(f"m{i}", dave_list)
        self.assertTrue(acked_before_add)
        # the live pushes show the same: nothing after the removal, all after the add
        yield settle(carol, dave)
        self.assertEqual([label(m) for m in pushes(carol)], carol_list)
        self.assertEqual([label(m) for m in pushes(dave)], dave_list)
        self.assertEqual([m.seq for m in pushes(dave)], list(range(1, len(dave_list) + 1)))


class BurstSQLite(Burst, PeopleCase):
    pass


class BurstPostgres(Burst, PeopleCase):
    engine = "postgresql"


class BurstMariaDB(Burst, PeopleCase):
    engine = "mysql"


class TwoWriters:
    """Two stores on one database, as two nodes: a change made through one
    holds at once in the other's next batch, whatever that batch held."""

    def url(self) -> str:
        raise NotImplementedError

    def open_store(self, url: str) -> Any:
        from gochat.store import Database, Store, engine_from_url

        database = Database(engine_from_url(url, ""))
        self.addCleanup(database.close)
        return database.migrate().addCallback(lambda _: Store(database))

    @defer.inlineCallbacks
    def test_a_batch_that_skips_a_stale_group_leaves_it_stale(self):
        from gochat.store import UpItem
        from gochat.store.people import GroupOp

        url = self.url()
        a = yield self.open_store(url)
        b = yield self.open_store(url)
        owner = yield a.create_user("+1", "owner", "x")
        s = yield a.create_user("+2", "sender", "x")
        c = yield a.create_user("+3", "carol", "x")
        gid = yield a.create_group(owner, "g", [s, c])
        yield a.load_device(s, "d")
        first = UpItem(s, "d", 1, text(gid, "one", group=True, sender_id=s))
        (r,) = yield a.commit_messages([first])  # a caches the members
        self.assertEqual(r.code, 200)
        change = UpItem(owner, None, 0, None, op=GroupOp("remove", gid, owner, [c]))
        (r,) = yield b.commit_messages([change])
        self.assertEqual(r.code, 200)
        # a retransmit only: the batch names the group but reloads nothing
        again = UpItem(s, "d", 1, text(gid, "one", group=True, sender_id=s))
        yield a.commit_messages([again])
        later = UpItem(s, "d", 2, text(gid, "two", group=True, sender_id=s))
        (r,) = yield a.commit_messages([later])
        self.assertEqual(r.code, 200)
        self.assertNotIn(c, [uid for uid, _ in r.rows])


class TwoWritersPostgres(TwoWriters, unittest.TestCase):
    def url(self) -> str:
        return services.postgres_database(self)


class TwoWritersMariaDB(TwoWriters, unittest.TestCase):
    def url(self) -> str:
        return services.mysql_database(self)
