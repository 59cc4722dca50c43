"""The one place that decides where a push goes.

After a message commits, every row (user, seq) becomes a push to each online
device of that user: directly to sessions on this node, and through the
remote deliverer (PB, in a cluster) to the nodes that presence names, one
call per node. Offline users get nothing: they sync.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from itertools import chain
from typing import TYPE_CHECKING, Any, Protocol, cast

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from gochat import codec, metrics
from gochat.logic.affinity import RemoteOrigin
from gochat.pb import pb
from gochat.store.store import BlockRows, MemberBlock

if TYPE_CHECKING:
    from gochat.logic.session import Session
    from gochat.presence import Presence


_LOCAL_PUSHES = metrics.PUSHES.labels("local")  # labels() once, not per message
_REMOTE_PUSHES = metrics.PUSHES.labels("remote")

#: Pushes made before the reactor gets to read again. A committed batch of
#: group messages is hundreds of thousands of pushes; made in one go, no
#: upstream message is read meanwhile and the database waits idle for the
#: next batch instead of writing it while these go out.
PUSH_BUDGET = 65536
#: A push of a group block (frames built and queued member by member) costs
#: about a quarter of a push made on its own: measured 0.45 against 1.8 µs.
BLOCK_PUSH_SHARE = 4
#: Past this many waiting pushes the writer holds the next batch: senders get
#: their ACKs ahead of the pushes, and this keeps them from running far ahead.
PUSH_BACKLOG_LIMIT = 4 * PUSH_BUDGET

#: A block to at least FLUSH_FROM members online here is sent every
#: FLUSH_MEMBERS members, not all at the end of the turn: the first members
#: (and the senders' ACKs) leave while the rest are built. Smaller blocks
#: build in a few milliseconds, and sending their ACKs early only made the
#: next batches smaller.
FLUSH_FROM = 1000
FLUSH_MEMBERS = 256
#: (message, its rows, the device it came from: a DeviceState here, a
#: RemoteOrigin for a message another node forwarded) of a committed message
Delivery = tuple[pb.Message, Sequence[tuple[int, int]], Any]
#: a delivery waiting in the backlog, with the pushes it will cost
_Waiting = tuple[pb.Message, Sequence[tuple[int, int]], Any, int]


class RemoteDeliverer(Protocol):
    def deliver(self, node_id: str, frames: dict[int, list[bytes]]) -> Any:
        """Send ``{user_id: [push frame, ...]}`` to one node; failures are logged, not raised."""

    def deliver_pushes(self, node_id: str, base: bytes, pairs: bytes, skip: bytes = b"") -> Any:
        """Push one message to users of one node; failures are logged, not raised.

        ``base`` is the message without its seq (:func:`codec.message_base`),
        ``pairs`` its recipients there (:func:`codec.pack_pairs`): the node
        builds the frames itself, so the call costs bytes per recipient, not
        a frame each. ``skip``: packed (0, tag) of the device there that
        sent the message (forwarded here), which must not get it.
        """

    def deliver_push_run(
        self, node_id: str, bases: list[bytes], pairs: bytes, skip: bytes = b""
    ) -> Any:
        """Push consecutive messages of one group batch to users of one node.

        ``pairs`` are (user, seq of the first message): each recipient's
        seqs for the messages run on; ``skip`` packed (index, tag) of the
        messages sent by a device there. Failures are logged, not raised.
        """

    def write_messages(self, node_id: str, packed: bytes) -> Any:
        """Forward packed messages to their group's home; fires with its answers, or fails."""

    def kick(self, node_id: str, user_id: int, device_id: str) -> Any:
        """Ask one node to close its connection of (user, device); failures are logged."""

    def notify(self, node_id: str, frames: dict[int, list[bytes]]) -> Any:
        """Send read/typing notices ``{user_id: [frame]}`` to one node; never a push."""


class Router:
    log = Logger()

    def __init__(
        self,
        presence: Presence,
        clock: IReactorTime,
        remote: RemoteDeliverer | None = None,
        budget: int = PUSH_BUDGET,
        backlog_limit: int = PUSH_BACKLOG_LIMIT,
    ) -> None:
        self.presence = presence
        self.clock = clock
        self.remote = remote
        #: pushes made per reactor turn (see :data:`PUSH_BUDGET`)
        self.budget = budget
        #: waiting pushes past which the writer holds (see :data:`PUSH_BACKLOG_LIMIT`)
        self.backlog_limit = backlog_limit
        self.online: dict[int, list[Session]] = {}
        #: changes each time a user comes online here or goes (a block's
        #: online members, found once, stay valid while it does not change)
        self._online_version = 0
        #: committed messages whose pushes wait for the next reactor turn
        self._backlog: deque[_Waiting] = deque()
        self._backlog_rows = 0
        #: deliveries ever queued and taken, and (queued count, received) of
        #: each timed batch's last delivery
        self._queued = self._taken = 0
        self._batch_ends: deque[tuple[int, float]] = deque()
        self._drain_call: Any = None
        #: called when the backlog falls below ``backlog_limit`` again
        self.on_drained: Callable[[], None] | None = None
        #: this turn's messages for recipients that may be on other nodes, with their origin
        self._remote_turn: list[tuple[bytes, Sequence[tuple[int, int]], Any]] = []
        #: tag -> the device here that a home's pushes name as their sender
        self.origin_of: Callable[[int], Any] = lambda tag: None
        #: send what the connections have queued now, not at the end of the turn (the gateways)
        self.flushers: list[Callable[[], None]] = []

    def add(self, session: Session) -> bool:
        """Register a logged-in session; True when it is the user's first here."""
        sessions = self.online.setdefault(session.user_id, [])
        sessions.append(session)
        if len(sessions) == 1:
            self._online_version += 1
            return True
        return False

    def remove(self, session: Session) -> bool:
        """Unregister; True when the user has no session left here."""
        sessions = self.online.get(session.user_id)
        if not sessions or session not in sessions:
            return False
        sessions.remove(session)
        if not sessions:
            del self.online[session.user_id]
            self._online_version += 1
            return True
        return False

    def _online_members(self, block: MemberBlock) -> list[tuple[list[Session], int]]:
        """(sessions, seq base) of the block's members online here, found once per block."""
        if block.online_version != self._online_version:
            get = self.online.get
            block.online = [
                (sessions, base)
                for uid, base in zip(block.members, block.bases, strict=True)
                if (sessions := get(uid))
            ]
            block.online_version = self._online_version
        return block.online

    def _cost(self, rows: Sequence[tuple[int, int]]) -> int:
        """What a message's pushes cost of the budget (see :data:`BLOCK_PUSH_SHARE`)."""
        if type(rows) is BlockRows:
            return len(self._online_members(rows.block)) // BLOCK_PUSH_SHARE + 1
        return len(rows)

    def deliver_many(self, deliveries: list[Delivery], received: float | None = None) -> None:
        """Push committed messages in commit order, ``budget`` pushes per reactor turn.

        ``received`` (when the batch's first message arrived) times the
        batch's fan-out: ``gochat_fanout_seconds`` once its last push is out.
        """
        cost = self._cost
        waiting = [(message, rows, origin, cost(rows)) for message, rows, origin in deliveries]
        self._backlog.extend(waiting)
        self._backlog_rows += sum(w[3] for w in waiting)
        self._queued += len(waiting)
        if received is not None:
            self._batch_ends.append((self._queued, received))
        if self._drain_call is None:
            self._drain()

    def _batches_out(self) -> None:
        """Time the batches whose last push went out this turn."""
        ends = self._batch_ends
        if ends and ends[0][0] <= self._taken:
            now = self.clock.seconds()
            while ends and ends[0][0] <= self._taken:
                metrics.FANOUT_LATENCY.observe(now - ends.popleft()[1])

    def flush(self) -> None:
        """Make every waiting push now (at shutdown, before connections close)."""
        if self._drain_call is not None:
            self._drain_call.cancel()
            self._drain_call = None
        backlog = self._backlog
        pushed = 0
        while backlog:
            pushed += self._take(1 << 62)[0]
        if pushed:
            _LOCAL_PUSHES.inc(pushed)
        self._batches_out()
        self._route_remote()
        self._backlog_rows = 0
        if self.on_drained is not None:
            self.on_drained()

    @property
    def congested(self) -> bool:
        """Too many pushes wait: the writer should not commit more for now."""
        return self._backlog_rows >= self.backlog_limit

    def _drain(self) -> None:
        self._drain_call = None
        backlog = self._backlog
        congested = self.congested
        budget = self.budget
        pushed = 0
        while backlog and budget > 0:
            made, cost = self._take(budget)
            pushed += made
            budget -= cost
        if pushed:  # counted once per turn: a counter's lock costs as much as a push
            _LOCAL_PUSHES.inc(pushed)
        self._batches_out()
        self._route_remote()
        self._backlog_rows -= self.budget - budget
        if backlog:
            self._drain_call = self.clock.callLater(0, self._drain)
        if congested and not self.congested and self.on_drained is not None:
            self.on_drained()

    def _take(self, budget: int) -> tuple[int, int]:
        """Push the next waiting message, or the next of one block that ``budget`` allows.

        Returns (pushes made, their cost).
        """
        backlog = self._backlog
        message, rows, origin, cost = backlog.popleft()
        self._taken += 1
        if type(rows) is not BlockRows:
            return self._deliver_logged(message, rows, origin), cost
        block = rows.block
        segment: list[Delivery] = [(message, rows, origin)]
        spent = cost
        while backlog and spent < budget:
            nxt = backlog[0]
            later = nxt[1]
            if type(later) is not BlockRows or later.block is not block:
                break
            backlog.popleft()
            self._taken += 1
            segment.append(nxt[:3])
            spent += nxt[3]
        try:
            return self._push_segment(block, segment), spent
        except Exception:
            self.log.failure("pushing messages of a group block")
            return 0, spent

    def _push_segment(self, block: MemberBlock, segment: list[Delivery]) -> int:
        """Push consecutive messages of one block, member by member.

        Their offsets run on, so each online member's seqs for them do too:
        a member's frames are built and sent by one :meth:`Session.push_block`.
        Only sessions of a sender's device (which must not get its own
        message) go message by message.
        """
        bases = [codec.message_base(message) for message, _, _ in segment]
        run = codec.PushRun(bases)
        first = cast(BlockRows, segment[0][1]).offset
        # the messages each device sent: its sessions get the others
        origins: dict[int, list[int]] = {}
        for i, (_, _, origin) in enumerate(segment):
            origins.setdefault(id(origin), []).append(i)
        local = 0
        members = self._online_members(block)
        flushers = self.flushers if len(members) >= FLUSH_FROM else ()
        for n, (sessions, base) in enumerate(members, 1):
            seq0 = base + first
            for session in sessions:
                local += session.push_block(run, seq0, origins.get(id(session.device), ()))
            if flushers and not n % FLUSH_MEMBERS:
                for flush in flushers:
                    flush()
        if self.remote is not None:
            for message_base, (_, rows, origin) in zip(bases, segment, strict=True):
                self._remote_turn.append((message_base, rows, origin))
        return local

    def _deliver_logged(
        self, message: pb.Message, rows: Sequence[tuple[int, int]], origin: Any
    ) -> int:
        try:
            return self._push(message, rows, origin)
        except Exception:
            self.log.failure("pushing a message of user {uid}", uid=message.sender_id)
            return 0

    def _push(self, message: pb.Message, rows: Sequence[tuple[int, int]], origin: Any) -> int:
        """Push ``message`` to each recipient row now, skipping devices of ``origin``.

        Returns the local pushes made; the caller counts them once per turn.
        (A group block's messages go by :meth:`_push_segment`.)
        """
        frames = codec.PushFrames(codec.message_base(message))
        frame_for = frames.frame
        get = self.online.get
        local = 0
        for user_id, seq in rows:
            sessions = get(user_id)
            if sessions:
                frame = frame_for(seq)
                for session in sessions:
                    if session.device is not origin:
                        session.push(seq, frame)
                        local += 1
        if self.remote is not None and rows:
            self._remote_turn.append((frames.base, rows, origin))
        return local

    def deliver_local(self, frames: dict[int, list[bytes]]) -> int:
        """Push frames that another node sent here; returns how many went out."""
        sent = 0
        for user_id, user_frames in frames.items():
            for session in self.online.get(user_id, ()):
                if session.push_ack:
                    for frame in user_frames:
                        session.push(codec.push_seq(frame), frame)
                else:
                    session.send_many(user_frames)
                sent += len(user_frames)
        return sent

    def notify(self, frames: dict[int, bytes], exclude: Any = None) -> None:
        """Ephemeral notices to every connection with ``notices`` of each user, on any node.

        Not pushes: no seq, not tracked for ``push_ack``, never retransmitted;
        ``exclude`` (the session the notice came from) does not get it.
        """
        for user_id, frame in frames.items():
            for session in self.online.get(user_id, ()):
                if session.notices and session is not exclude:
                    session.send(frame)
        if self.remote is None or not frames:
            return

        def route(nodes: dict[str, list[int]]) -> None:
            assert self.remote is not None
            for node_id, user_ids in nodes.items():
                self.remote.notify(node_id, {u: [frames[u]] for u in user_ids})

        d = self.presence.nodes_for(list(frames))
        d.addCallback(route)
        d.addErrback(lambda f: self.log.failure("presence lookup for a notice failed", f))

    def notify_local(self, frames: dict[int, list[bytes]]) -> int:
        """Notices another node sent here; returns how many went out."""
        sent = 0
        for user_id, user_frames in frames.items():
            for session in self.online.get(user_id, ()):
                if session.notices:
                    session.send_many(user_frames)
                    sent += len(user_frames)
        return sent

    def kick_elsewhere(self, user_id: int, device_id: str) -> None:
        """A device logged in here: close its older connection on any other node."""
        if self.remote is None:
            return

        def kick(nodes: dict[str, list[int]]) -> None:
            assert self.remote is not None
            for node_id in nodes:
                self.remote.kick(node_id, user_id, device_id)

        # Claim first: a kick that arrives late on a node holding a newer login is ignored.
        d = self.presence.claim_device(user_id, device_id)
        d.addCallback(lambda _: self.presence.nodes_for([user_id]))
        d.addCallback(kick)
        d.addErrback(lambda f: self.log.failure("presence lookup for a device kick failed", f))

    def _skipped(self, skip: bytes) -> dict[int, set[int]]:
        """``{id(device): {message index, ...}}`` of a home's packed (index, tag) pairs."""
        out: dict[int, set[int]] = {}
        for index, tag in codec.iter_pairs(skip):
            device = self.origin_of(tag)
            if device is not None:
                out.setdefault(id(device), set()).add(index)
        return out

    def deliver_pushes_local(self, batch: list[tuple[bytes, bytes, bytes]]) -> int:
        """Pushes another node sent as (message base, packed pairs, skip); returns the count."""
        sent = 0
        get = self.online.get
        for base, pairs, skip in batch:
            frame_for = codec.PushFrames(base).frame
            skipped = self._skipped(skip) if skip else None
            for user_id, seq in codec.iter_pairs(pairs):
                sessions = get(user_id)
                if sessions and seq:
                    frame = frame_for(seq)
                    for session in sessions:
                        if skipped and id(session.device) in skipped:
                            # the device this message came from: its ACK may wait for this
                            session.flush_acks()
                            continue
                        session.push(seq, frame)
                        sent += 1
        return sent

    def deliver_push_runs_local(self, batch: list[tuple[list[bytes], bytes, bytes]]) -> int:
        """Runs of pushes another node sent as ([message base, ...], pairs, skip); the count."""
        sent = 0
        get = self.online.get
        for bases, pairs, skip in batch:
            run = codec.PushRun(bases)
            skipped = self._skipped(skip) if skip else None
            for user_id, first in codec.iter_pairs(pairs):
                sessions = get(user_id)
                if sessions and first:
                    for session in sessions:
                        indexes = skipped.get(id(session.device), ()) if skipped else ()
                        sent += session.push_block(run, first, indexes)
        return sent

    def _route_remote(self) -> None:
        """One presence lookup for all of this turn's messages, then one call per node each.

        The lookup names the nodes of every recipient of the turn at once;
        a cluster of one (or a turn whose recipients are all here) then costs
        nothing per message.
        """
        pending, self._remote_turn = self._remote_turn, []
        if not pending:
            return
        wanted: set[int] = set()
        blocks: dict[int, MemberBlock] = {}
        for _, rows, _ in pending:
            if type(rows) is BlockRows:
                blocks[id(rows.block)] = rows.block
            else:
                wanted.update(uid for uid, _ in rows)
        for block in blocks.values():
            wanted.update(block.members)

        def route(nodes: dict[str, list[int]]) -> None:
            if not nodes:
                return
            assert self.remote is not None
            # each block's members held on each node, found once for all its messages
            held = {key: _held_by_node(block, nodes) for key, block in blocks.items()}
            where: dict[int, list[str]] | None = None  # for rows not of a block
            i = 0
            while i < len(pending):
                base, rows, origin = pending[i]
                if type(rows) is BlockRows:
                    # consecutive messages of one block: one run per node
                    end = i + 1
                    while (
                        end < len(pending)
                        and type(pending[end][1]) is BlockRows
                        and cast(BlockRows, pending[end][1]).block is rows.block
                        and cast(BlockRows, pending[end][1]).offset == rows.offset + end - i
                    ):
                        end += 1
                    if end - i > 1:
                        self._route_run(held[id(rows.block)], rows.offset, pending[i:end])
                        i = end
                        continue
                    targets = {
                        node_id: _pairs_at(uids, seqs, rows.offset)
                        for node_id, (uids, seqs) in held[id(rows.block)].items()
                    }
                else:
                    if where is None:
                        where = {}
                        for node_id, user_ids in nodes.items():
                            for uid in user_ids:
                                where.setdefault(uid, []).append(node_id)
                    targets = _by_node(
                        [(uid, seq, h) for uid, seq in rows if (h := where.get(uid))]
                    )
                i += 1
                forwarded = type(origin) is RemoteOrigin
                for node_id, packed in targets.items():
                    _REMOTE_PUSHES.inc(len(packed) // codec.PAIR_SIZE)
                    skip = (
                        codec.pack_pairs([0, origin.tag])
                        if forwarded and origin.peer == node_id
                        else b""
                    )
                    self.remote.deliver_pushes(node_id, base, packed, skip)

        d = self.presence.nodes_for(list(wanted))
        d.addCallback(route)
        d.addErrback(lambda f: self.log.failure("presence lookup for a push failed", f))

    def _route_run(
        self,
        held: dict[str, tuple[list[int], list[int]]],
        offset: int,
        run: list[tuple[bytes, Sequence[tuple[int, int]], Any]],
    ) -> None:
        """One call per node for consecutive messages of a block (its members held there).

        A node that forwarded some of them here is told which, and from which device.
        """
        assert self.remote is not None
        bases = [base for base, _, _ in run]
        skips: dict[str, list[int]] = {}
        for i, (_, _, origin) in enumerate(run):
            if type(origin) is RemoteOrigin:
                skips.setdefault(origin.peer, []).extend((i, origin.tag))
        for node_id, (uids, seqs) in held.items():
            _REMOTE_PUSHES.inc(len(uids) * len(bases))
            skip = skips.get(node_id)
            self.remote.deliver_push_run(
                node_id,
                bases,
                _pairs_at(uids, seqs, offset),
                codec.pack_pairs(skip) if skip else b"",
            )


def _held_by_node(
    block: MemberBlock, nodes: dict[str, list[int]]
) -> dict[str, tuple[list[int], list[int]]]:
    """``{node: (its members of the block, their seq bases)}``, by C loops.

    Once per block and turn on the writer's node, over every member: a
    lookup table of the members' places and ``map`` and ``filter`` over each
    node's users, rather than Python statements per member and node.
    """
    members = block.members
    place = dict(zip(members, range(len(members)), strict=True))
    bases = block.bases
    out: dict[str, tuple[list[int], list[int]]] = {}
    for node_id, user_ids in nodes.items():
        uids = list(filter(place.__contains__, user_ids))
        if uids:
            out[node_id] = (uids, list(map(bases.__getitem__, map(place.__getitem__, uids))))
    return out


def _pairs_at(uids: list[int], bases: list[int], offset: int) -> bytes:
    """The packed (user, base + offset) pairs of a block's message ``offset``."""
    seqs = map(offset.__add__, bases)
    return codec.pack_pairs(list(chain.from_iterable(zip(uids, seqs, strict=True))))


def _by_node(targets: list[tuple[int, int, list[str]]]) -> dict[str, bytes]:
    """``{node: packed (user, seq) pairs}`` of (user, seq, its nodes) targets."""
    flat: dict[str, list[int]] = {}
    for uid, seq, holders in targets:
        for node_id in holders:
            out = flat.get(node_id)
            if out is None:
                out = flat[node_id] = []
            out += (uid, seq)
    return {node_id: codec.pack_pairs(pairs) for node_id, pairs in flat.items()}
