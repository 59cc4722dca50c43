"""Pushes of a committed batch are paced: ACKs first, then the pushes in
commit order, a budget per reactor turn, and the writer holds its next batch
while too many pushes wait. Time is a Clock: a reactor turn is ``advance(0)``."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from gochat.logic import HubConfig
from gochat.logic.router import Router
from gochat.logic.writer import MessageWriter
from gochat.pb import pb
from gochat.presence import LocalPresence
from gochat.store import UpItem, UpResult
from gochat.store.store import BlockRows, MemberBlock
from tests.logic_util import LogicTestCase, up_frame


class PushedTo:
    """A logged-in session as the router sees it: records (user, seq) pushes."""

    device = None
    push_ack = False
    closed = False

    def __init__(self, user_id: int, log: list[tuple[int, int]]) -> None:
        self.user_id = user_id
        self.log = log

    def push(self, seq: int, frame: bytes) -> None:
        self.log.append((self.user_id, seq))

    def push_run(self, first_seq: int, frames: list[bytes]) -> None:
        self.log += [(self.user_id, first_seq + i) for i in range(len(frames))]

    def push_block(self, run: Any, first_seq: int, skip: Any = ()) -> int:
        frames = run.frames(first_seq)
        self.log += [(self.user_id, first_seq + i) for i in range(len(frames)) if i not in skip]
        return len(frames) - len(skip)


def delivery(sender: int, rows: list[tuple[int, int]]) -> Any:
    return (pb.Message(sender_id=sender, session_type=pb.ST_Group), rows, object())


class RouterPacing(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.router = Router(LocalPresence(), self.clock, budget=4, backlog_limit=8)
        self.pushed: list[tuple[int, int]] = []
        for uid in (1, 2, 3):
            self.router.add(PushedTo(uid, self.pushed))

    def test_a_batch_within_the_budget_is_pushed_at_once(self):
        self.router.deliver_many([delivery(1, [(1, 1), (2, 1)]), delivery(2, [(1, 2), (2, 2)])])
        self.assertEqual(self.pushed, [(1, 1), (2, 1), (1, 2), (2, 2)])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_past_the_budget_the_rest_waits_for_the_next_reactor_turn(self):
        batch = [delivery(1, [(1, n), (2, n), (3, n)]) for n in (1, 2, 3)]
        self.router.deliver_many(batch)
        self.assertEqual(self.pushed, [(1, 1), (2, 1), (3, 1), (1, 2), (2, 2), (3, 2)])
        self.clock.advance(0)
        self.assertEqual(self.pushed[6:], [(1, 3), (2, 3), (3, 3)])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_later_batch_waits_behind_an_earlier_one(self):
        self.router.deliver_many([delivery(1, [(1, n), (2, n)]) for n in (1, 2, 3)])
        self.router.deliver_many([delivery(2, [(1, 4), (2, 4)])])  # committed meanwhile
        self.clock.advance(0)
        self.assertEqual([seq for uid, seq in self.pushed if uid == 1], [1, 2, 3, 4])
        self.assertEqual([seq for uid, seq in self.pushed if uid == 2], [1, 2, 3, 4])

    def test_flush_makes_every_waiting_push_now(self):
        self.router.deliver_many([delivery(1, [(1, n), (2, n), (3, n)]) for n in (1, 2, 3)])
        self.router.flush()
        self.assertEqual(len(self.pushed), 9)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_congested_past_the_limit_and_told_when_it_drains(self):
        drained = []
        self.router.on_drained = lambda: drained.append(self.router.congested)
        self.router.deliver_many([delivery(1, [(1, n), (2, n), (3, n)]) for n in range(1, 6)])
        self.assertTrue(self.router.congested)  # 15 rows, 6 pushed: 9 wait
        self.clock.advance(0)  # 6 more: 3 wait
        self.assertFalse(self.router.congested)
        self.assertEqual(drained, [False])
        self.clock.advance(0)
        self.assertEqual(len(self.pushed), 15)
        self.assertEqual(drained, [False])


class BlockFanOut(unittest.TestCase):
    """A group block's pushes walk only the members online here, found once."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.router = Router(LocalPresence(), self.clock, budget=100, backlog_limit=200)
        self.pushed: list[tuple[int, int]] = []
        self.sessions = {uid: PushedTo(uid, self.pushed) for uid in (1, 3)}
        for session in self.sessions.values():
            self.router.add(session)

    def block(self, count: int) -> list[Any]:
        # members 1..5 with seqs before the block of 10, 20, ..., 50
        block = MemberBlock((1, 2, 3, 4, 5), [10, 20, 30, 40, 50])
        return [delivery(1, BlockRows(block, i)) for i in range(1, count + 1)]

    def test_each_online_member_gets_its_own_seq_of_each_message(self):
        self.router.deliver_many(self.block(2))  # member by member
        self.assertEqual(self.pushed, [(1, 11), (1, 12), (3, 31), (3, 32)])

    def test_a_block_message_costs_a_share_of_its_online_members_not_its_rows(self):
        router = Router(LocalPresence(), self.clock, budget=3, backlog_limit=3)
        for session in self.sessions.values():
            router.add(session)
        router.deliver_many(self.block(4))  # 5 rows each, 2 online: a cost of 1 each
        self.assertEqual(len(self.pushed), 6)  # three messages this turn
        self.assertFalse(router.congested)  # one still waiting
        self.clock.advance(0)
        self.assertEqual(len(self.pushed), 8)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_batch_is_timed_from_its_first_message_to_its_last_push(self):
        from gochat import metrics

        def count(le: str) -> float:
            value = metrics.REGISTRY.get_sample_value("gochat_fanout_seconds_bucket", {"le": le})
            return value or 0.0

        router = Router(LocalPresence(), self.clock, budget=1, backlog_limit=100)
        router.add(self.sessions[1])
        received = self.clock.seconds()
        before = (count("0.1"), count("0.25"))
        router.deliver_many(self.block(3), received)  # one message a turn
        self.clock.advance(0.2)  # the next turns run later than they would
        self.assertEqual(len(self.pushed), 3)
        self.assertEqual((count("0.1"), count("0.25")), (before[0], before[1] + 1))

    def test_members_who_come_and_go_between_messages_are_seen_for_the_later_ones(self):
        router = Router(LocalPresence(), self.clock, budget=1, backlog_limit=100)
        router.add(self.sessions[1])
        router.deliver_many(self.block(3))  # one message this turn
        self.assertEqual(self.pushed, [(1, 11)])
        router.add(PushedTo(4, self.pushed))
        router.remove(self.sessions[1])
        self.clock.advance(0)
        self.assertEqual(self.pushed, [(1, 11), (4, 42), (4, 43)])

    def test_a_big_blocks_pushes_are_sent_as_they_are_made_not_all_at_the_end(self):
        from gochat.logic import router as router_module

        count = router_module.FLUSH_FROM + 10
        router = Router(LocalPresence(), self.clock, budget=10**6, backlog_limit=10**6)
        for uid in range(1, count + 1):
            router.add(PushedTo(uid, self.pushed))
        flushed_at: list[int] = []  # pushes made when each flush came
        router.flushers.append(lambda: flushed_at.append(len(self.pushed)))
        block = MemberBlock(tuple(range(1, count + 1)), [0] * count)
        router.deliver_many([delivery(1, BlockRows(block, i)) for i in (1, 2)])
        every = 2 * router_module.FLUSH_MEMBERS  # two messages a member
        slices = count // router_module.FLUSH_MEMBERS
        self.assertEqual(flushed_at, [every * k for k in range(1, slices + 1)])
        self.assertEqual(len(self.pushed), 2 * count)
        # a block to fewer members waits for the end of the turn, as before
        self.pushed.clear()
        flushed_at.clear()
        fewer = router_module.FLUSH_FROM - 1
        small = MemberBlock(tuple(range(1, fewer + 1)), [0] * fewer)
        router.deliver_many([delivery(1, BlockRows(small, i)) for i in (1, 2)])
        self.assertEqual((flushed_at, len(self.pushed)), ([], 2 * fewer))

    def test_a_senders_device_misses_only_its_own_messages_of_the_block(self):
        own = self.sessions[3]
        own.device = object()
        block = MemberBlock((1, 2, 3), [10, 20, 30])
        messages = [
            (pb.Message(sender_id=1), BlockRows(block, 1), object()),
            (pb.Message(sender_id=3), BlockRows(block, 2), own.device),
            (pb.Message(sender_id=1), BlockRows(block, 3), object()),
        ]
        self.router.deliver_many(messages)
        self.assertEqual(sorted(self.pushed), [(1, 11), (1, 12), (1, 13), (3, 31), (3, 33)])

    def test_a_blocks_messages_go_to_another_node_as_one_run(self):
        from gochat import codec

        class Elsewhere:
            def nodes_for(self, user_ids: list[int]) -> defer.Deferred:
                return defer.succeed({"n2": [u for u in user_ids if u in (2, 4)]})

        class Remote:
            def __init__(self) -> None:
                self.runs: list[tuple[str, int, list[tuple[int, int]]]] = []
                self.pushes: list[tuple[str, list[tuple[int, int]]]] = []

            def deliver_push_run(
                self, node_id: str, bases: list[bytes], pairs: bytes, skip: bytes = b""
            ) -> None:
                self.runs.append((node_id, len(bases), list(codec.iter_pairs(pairs))))

            def deliver_pushes(
                self, node_id: str, base: bytes, pairs: bytes, skip: bytes = b""
            ) -> None:
                self.pushes.append((node_id, list(codec.iter_pairs(pairs))))

        remote = Remote()
        router = Router(Elsewhere(), self.clock, remote=remote, budget=100)  # type: ignore[arg-type]
        router.add(self.sessions[1])
        router.deliver_many(self.block(3))
        self.assertEqual(remote.runs, [("n2", 3, [(2, 21), (4, 41)])])  # seqs of the first
        self.assertEqual(remote.pushes, [])
        block = MemberBlock((1, 2, 3, 4, 5), [10, 20, 30, 40, 50])
        router.deliver_many([delivery(1, BlockRows(block, 1))])  # a block of one message
        self.assertEqual(remote.pushes, [("n2", [(2, 21), (4, 41)])])

    def test_each_node_gets_its_members_of_every_block_and_row_of_the_turn(self):
        from gochat import codec
        from gochat.logic.affinity import RemoteOrigin

        class Elsewhere:
            # 4 is online on both nodes; 7 and 9 are recipients of the one-to-one
            # message only; 8 is a member of the second block only
            def nodes_for(self, user_ids: list[int]) -> defer.Deferred:
                held = {"n2": [2, 4, 7, 8], "n3": [4, 5, 9]}
                return defer.succeed(
                    {n: [u for u in us if u in user_ids] for n, us in held.items()}
                )

        class Remote:
            def __init__(self) -> None:
                self.calls: list[tuple[Any, ...]] = []

            def deliver_push_run(
                self, node_id: str, bases: list[bytes], pairs: bytes, skip: bytes = b""
            ) -> None:
                got = sorted(codec.iter_pairs(pairs))
                self.calls.append(("run", node_id, len(bases), got, list(codec.iter_pairs(skip))))

            def deliver_pushes(
                self, node_id: str, base: bytes, pairs: bytes, skip: bytes = b""
            ) -> None:
                got = sorted(codec.iter_pairs(pairs))
                self.calls.append(("one", node_id, got, list(codec.iter_pairs(skip))))

        remote = Remote()
        router = Router(Elsewhere(), self.clock, remote=remote, budget=100)  # type: ignore[arg-type]
        first = MemberBlock((1, 2, 3, 4, 5), [10, 20, 30, 40, 50])
        second = MemberBlock((4, 8), [400, 800])
        forwarded = RemoteOrigin("n3", 77)  # n3's device sent the first block's second message
        single = (pb.Message(sender_id=1, session_type=pb.ST_Single), [(7, 5), (9, 6)], object())
        router.deliver_many(
            [
                delivery(1, BlockRows(first, 1)),
                (pb.Message(sender_id=5), BlockRows(first, 2), forwarded),
                delivery(8, BlockRows(second, 1)),
                single,
            ]
        )
        self.assertEqual(
            remote.calls,
            [
                ("run", "n2", 2, [(2, 21), (4, 41)], []),
                ("run", "n3", 2, [(4, 41), (5, 51)], [(1, 77)]),
                ("one", "n2", [(4, 401), (8, 801)], []),
                ("one", "n3", [(4, 401)], []),
                ("one", "n2", [(7, 5)], []),
                ("one", "n3", [(9, 6)], []),
            ],
        )

    def test_block_rows_read_as_the_pairs_they_stand_for(self):
        rows = self.block(2)[1][1]
        self.assertEqual(len(rows), 5)
        self.assertEqual(rows, [(1, 12), (2, 22), (3, 32), (4, 42), (5, 52)])
        self.assertEqual(rows[2], (3, 32))
        self.assertEqual(dict(rows)[5], 52)


class FakeStore:
    """Commits whatever it is given, when the test says so."""

    def __init__(self) -> None:
        self.batches: list[tuple[list[UpItem], defer.Deferred]] = []

    def commit_messages(self, items: list[UpItem]) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self.batches.append((items, d))
        return d


class WriterHold(unittest.TestCase):
    @staticmethod
    def writer(store: FakeStore, clock: Clock) -> MessageWriter:
        """A writer on ``clock`` that drops its outcomes."""
        return MessageWriter(
            store,  # type: ignore[arg-type]
            lambda item, owner, result: None,
            lambda item, owner: None,
            clock=clock,
        )

    def test_with_a_clock_an_idle_writer_starts_at_the_end_of_the_turn(self):
        store = FakeStore()
        clock = Clock()
        writer = self.writer(store, clock)
        for cid in (1, 2, 3):  # what arrives on several connections in one turn
            writer.submit(UpItem(user_id=cid, device_id=None, client_id=1, message=None), cid)
        self.assertEqual(store.batches, [])
        clock.advance(0)
        self.assertEqual([[i.user_id for i in items] for items, _ in store.batches], [[1, 2, 3]])

    def test_a_batch_to_a_big_group_waits_a_moment_for_the_rest_of_its_round(self):
        from gochat.logic import writer as writer_module

        store = FakeStore()
        store.rows_estimate = lambda item, seen=None, unknown=1: item.user_id  # type: ignore[attr-defined]
        clock = Clock()
        writer = self.writer(store, clock)
        big = writer_module.GATHER_ROWS
        writer.submit(UpItem(user_id=big, device_id=None, client_id=1, message=None), 1)
        clock.advance(0)
        self.assertEqual(store.batches, [])  # still gathering
        clock.advance(writer_module.GATHER_DELAY / 2)
        writer.submit(UpItem(user_id=big, device_id=None, client_id=2, message=None), 2)
        self.assertEqual(store.batches, [])
        clock.advance(writer_module.GATHER_DELAY / 2)
        self.assertEqual([[i.client_id for i in items] for items, _ in store.batches], [[1, 2]])

    def test_a_batch_started_by_a_forwarded_message_waits_for_the_rest_of_its_round(self):
        from gochat.logic import writer as writer_module

        store = FakeStore()
        clock = Clock()
        writer = self.writer(store, clock)
        writer.submit(UpItem(user_id=1, device_id=None, client_id=1, message=None), 1, gather=True)
        clock.advance(0)
        self.assertEqual(store.batches, [])  # another node's message: gathering
        writer.submit(UpItem(user_id=2, device_id=None, client_id=1, message=None), 2)
        clock.advance(writer_module.GATHER_DELAY)
        self.assertEqual([[i.user_id for i in items] for items, _ in store.batches], [[1, 2]])

    def test_a_batch_to_a_group_of_unknown_size_waits_as_for_a_big_one(self):
        from gochat.logic import writer as writer_module

        store = FakeStore()
        store.rows_estimate = lambda item, seen=None, unknown=1: unknown  # type: ignore[attr-defined]
        clock = Clock()
        writer = self.writer(store, clock)
        writer.submit(UpItem(user_id=1, device_id=None, client_id=1, message=None), 1)
        clock.advance(writer_module.GATHER_DELAY / 2)
        self.assertEqual(store.batches, [])  # its members are not known yet: it gathers
        writer.submit(UpItem(user_id=2, device_id=None, client_id=1, message=None), 2)
        clock.advance(writer_module.GATHER_DELAY / 2)
        self.assertEqual([[i.user_id for i in items] for items, _ in store.batches], [[1, 2]])

    def test_the_next_batch_waits_while_may_start_is_false_and_starts_on_resume(self):
        store = FakeStore()
        ready = [True]
        outcomes: list[int] = []
        writer = MessageWriter(
            store,  # type: ignore[arg-type]
            lambda item, owner, result: outcomes.append(item.client_id),
            lambda item, owner: None,
            may_start=lambda: ready[0],
        )
        item = lambda cid: UpItem(user_id=1, device_id=None, client_id=cid, message=None)  # noqa: E731
        writer.submit(item(1), "dev")
        writer.submit(item(2), "dev")
        self.assertEqual(len(store.batches), 1)
        ready[0] = False
        store.batches[0][1].callback([UpResult(code=200)])
        self.assertEqual(outcomes, [1])
        self.assertEqual(len(store.batches), 1)  # held
        self.assertEqual(writer.pending, 1)
        idle = writer.wait_idle()
        self.assertNoResult(idle)
        ready[0] = True
        writer.resume()
        self.assertEqual([i.client_id for i in store.batches[1][0]], [2])
        store.batches[1][1].callback([UpResult(code=200)])
        self.assertEqual(outcomes, [1, 2])
        self.successResultOf(idle)


class WriterPace(unittest.TestCase):
    """The next batch starts PACE times the last commit's duration after the last one
    started, so what arrives meanwhile goes in one batch, not many small ones."""

    def setUp(self) -> None:
        self.store = FakeStore()
        self.clock = Clock()
        self.writer = WriterHold.writer(self.store, self.clock)

    def submit(self, cid: int) -> None:
        self.writer.submit(UpItem(user_id=cid, device_id=None, client_id=1, message=None), cid)

    def commit(self, index: int, after: float) -> None:
        """Batch ``index`` commits ``after`` seconds from now."""
        self.clock.advance(after)
        items, d = self.store.batches[index]
        d.callback([UpResult(code=200)] * len(items))

    def started(self) -> list[list[int]]:
        return [[i.user_id for i in items] for items, _ in self.store.batches]

    def test_the_next_batch_waits_as_long_again_as_the_last_commit_took(self):
        from gochat.logic import writer as writer_module

        self.submit(1)
        self.clock.advance(0)
        self.submit(2)  # arrives while batch [1] commits
        self.commit(0, 0.01)
        self.assertEqual(self.started(), [[1]])  # [2] does not start at once
        self.submit(3)
        self.clock.advance(0.01 * (writer_module.PACE - 1) - 0.001)
        self.assertEqual(self.started(), [[1]])
        self.clock.advance(0.001)
        self.assertEqual(self.started(), [[1], [2, 3]])

    def test_the_wait_is_at_most_pace_max_after_the_last_start(self):
        from gochat.logic import writer as writer_module

        took = writer_module.PACE_MAX * 0.8  # PACE times it is past PACE_MAX
        self.submit(1)
        self.clock.advance(0)
        self.submit(2)
        self.commit(0, took)
        self.clock.advance(writer_module.PACE_MAX - took - 0.001)
        self.assertEqual(self.started(), [[1]])
        self.clock.advance(0.001)
        self.assertEqual(self.started(), [[1], [2]])

    def test_an_idle_writer_also_waits_out_the_pace(self):
        from gochat.logic import writer as writer_module

        self.submit(1)
        self.clock.advance(0)
        self.commit(0, 0.01)  # nothing queued: idle
        self.submit(2)
        self.clock.advance(0)
        self.assertEqual(self.started(), [[1]])
        self.clock.advance(0.01 * (writer_module.PACE - 1))
        self.assertEqual(self.started(), [[1], [2]])

    def test_after_a_pause_longer_than_the_pace_a_batch_starts_at_the_end_of_the_turn(self):
        self.submit(1)
        self.clock.advance(0)
        self.commit(0, 0.01)
        self.clock.advance(1.0)
        self.submit(2)
        self.clock.advance(0)
        self.assertEqual(self.started(), [[1], [2]])

    def test_a_batch_held_back_by_may_start_still_waits_out_the_pace_on_resume(self):
        from gochat.logic import writer as writer_module

        ready = [True]
        self.writer.may_start = lambda: ready[0]
        self.submit(1)
        self.clock.advance(0)
        self.submit(2)
        ready[0] = False  # pushes of batch [1] still wait
        self.commit(0, 0.01)
        ready[0] = True
        self.writer.resume()  # the pushes drained at once: the pace still holds
        self.assertEqual(self.started(), [[1]])
        self.clock.advance(0.01 * (writer_module.PACE - 1))
        self.assertEqual(self.started(), [[1], [2]])

    def test_fast_commits_are_hardly_paced(self):
        self.submit(1)
        self.clock.advance(0)
        self.submit(2)
        self.commit(0, 0.0)  # no time passed: no wait
        self.assertEqual(self.started(), [[1], [2]])


class AcksBeforePushes(LogicTestCase):
    hub_config = HubConfig(push_budget=1)

    @defer.inlineCallbacks
    def test_a_batch_is_acked_before_pushes_past_the_budget_go_out(self):
        alice, alice_token = yield self.user("alice")
        bob, bob_token = yield self.user("bob")
        sender, sender_conn = yield self.login(alice_token)
        _, bob_conn = yield self.login(bob_token)
        for cid in (1, 2, 3):  # one turn: one batch, started at the end of it
            sender.frame_received(up_frame(cid, bob, f"m{cid}"))
        yield self.hub.wait_idle()
        acks = [o for o in sender_conn.outputs() if o.type == pb.CT_ACK]
        self.assertEqual([pb.ACKMsg.FromString(o.data).clientId for o in acks[1:]], [1, 2, 3])
        self.assertEqual(bob_conn.pushes(), [1])  # a budget of one push a turn
        self.clock.advance(0)
        self.assertEqual(bob_conn.pushes(), [1, 2, 3])


class CountedPerBatch(LogicTestCase):
    @defer.inlineCallbacks
    def test_every_message_and_push_of_a_batch_is_counted(self):
        from gochat import metrics

        def sample(name: str, **labels: str) -> float:
            return metrics.REGISTRY.get_sample_value(name, labels) or 0.0

        alice, alice_token = yield self.user("alice")
        bob, bob_token = yield self.user("bob")
        sender, _ = yield self.login(alice_token)
        _, bob_conn = yield self.login(bob_token)
        ok = sample("gochat_upstream_messages_total", code="200")
        pushes = sample("gochat_pushes_total", where="local")
        acks = sample("gochat_ack_latency_seconds_count")
        for cid in (1, 2, 3, 4):  # 1 alone, then 2-4 in one batch
            sender.frame_received(up_frame(cid, bob, f"m{cid}"))
        sender.frame_received(up_frame(6, bob, "gap"))  # 1011, not counted as stored
        yield self.hub.wait_idle()
        self.assertEqual(bob_conn.pushes(), [1, 2, 3, 4])
        self.assertEqual(sample("gochat_upstream_messages_total", code="200") - ok, 4)
        self.assertEqual(sample("gochat_pushes_total", where="local") - pushes, 4)
        self.assertEqual(sample("gochat_ack_latency_seconds_count") - acks, 4)


class GarbageCollector(unittest.TestCase):
    def test_the_node_collects_less_often_and_freezes_what_it_starts_with(self):
        import gc

        from gochat.tap import GC_THRESHOLDS, tune_gc

        before = gc.get_threshold()
        self.addCleanup(gc.set_threshold, *before)
        self.addCleanup(gc.unfreeze)
        tune_gc()
        self.assertEqual(gc.get_threshold(), GC_THRESHOLDS)
        self.assertGreater(gc.get_freeze_count(), 0)


class PacingProperties(unittest.TestCase):
    @settings(max_examples=60, deadline=None)
    @given(
        budget=st.integers(min_value=1, max_value=12),
        batches=st.lists(
            st.tuples(
                st.lists(st.lists(st.integers(1, 4), min_size=1, max_size=4), max_size=5),
                st.booleans(),  # a reactor turn passes after this batch
            ),
            max_size=8,
        ),
    )
    def test_every_push_goes_out_once_in_commit_order(self, budget, batches):
        clock = Clock()
        router = Router(LocalPresence(), clock, budget=budget, backlog_limit=2 * budget)
        pushed: list[tuple[int, int]] = []
        for uid in (1, 2, 3, 4):
            router.add(PushedTo(uid, pushed))
        seqs = dict.fromkeys((1, 2, 3, 4), 0)
        expected: list[tuple[int, int]] = []
        for messages, turn in batches:
            batch = []
            for recipients in messages:
                rows = []
                for uid in dict.fromkeys(recipients):  # each member once
                    seqs[uid] += 1
                    rows.append((uid, seqs[uid]))
                expected += rows
                batch.append(delivery(1, rows))
            router.deliver_many(batch)
            if turn:
                clock.advance(0)
        while clock.getDelayedCalls():
            clock.advance(0)
        self.assertEqual(pushed, expected)
        self.assertFalse(router.congested)
