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

from gochat.pb import pb
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
