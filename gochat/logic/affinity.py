"""Group affinity: in a cluster, one node writes each group's messages.

With write diffusion a group message writes a seq and a run for every
member. When a group's senders are spread over N nodes, N writers commit to
the same members' rows: they wait on each other's row locks, a round of the
group becomes N times as many smaller transactions, and every member gets its
pushes in N writes instead of one. So each group has a home: the live node
that rendezvous hashing of the group id over Redis's list of nodes picks.
A node forwards its clients' messages to a group whose home is elsewhere
(``WriteMessages``, one PB call per home per reactor turn, or per
:data:`FORWARD_HOLD` while an earlier call to it is unanswered); the home commits
them in its own batches, pushes them as its own (the sender's device is
named, so it does not get its own message back), and answers with each
message's code and seq, which the sender's node sends as the ACK.

Affinity is for speed, not for correctness. Every writer sequences under the
database's row locks, and with several writers a device's clientIds are
de-duplicated under its row's lock; so a message written on another node
than its group's home is still written once, in order. A forward whose call
fails (the home died or is unreachable: the connection is lost, and with it
every call on it) is written here instead, in the same order, and the home
is avoided for a while; what the home had already committed of it is then
found as a duplicate and answered as before. Without a ``device_id`` the
clientIds are the connection's only, so such a message in flight to a home
that dies may be stored twice, as one in flight on a connection that drops
may be.

A device's messages must commit in clientId order (the de-duplication above
relies on it), so while one has messages in flight to one writer, a message
of it bound for another waits until they are answered (:class:`Hub`).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from gochat import codec, codes, metrics
from gochat.pb import pb
from gochat.store import UpItem

#: While a call to a home is unanswered, its next forwards wait this long for
#: more to go with them. The home writes one batch at a time, so a message
#: that arrives while its batch is committing waits for that commit anyway;
#: in a busy round this turns about three calls into one, with their answers.
FORWARD_HOLD = 0.003
#: Messages per WriteMessages call.
FORWARDS_PER_CALL = 1000
#: Bytes of packed messages per call (PB refuses a string over 640 KiB); a
#: message bigger than this is written where it arrived.
FORWARD_BYTES_PER_CALL = 512 * 1024
#: wire bytes of the largest message forwarded (room left for its head and device_id)
MAX_FORWARDED = FORWARD_BYTES_PER_CALL - 1024
#: a packed forwarded message's head: user_id, client_id, tag, the lengths of
#: its device_id (0: none) and of its Message, then those bytes
_HEAD = struct.Struct("<QQQHI")
_ANSWERED = metrics.FORWARDED.labels("answered")
_WRITTEN_HERE = metrics.FORWARDED.labels("written_here")
#: Groups whose home is remembered (per set of live nodes); past it, forgotten.
HOME_CACHE = 65536


class RemoteOrigin:
    """The device of another node that sent a message in this node's writer (``tag`` names it
    there)."""

    __slots__ = ("peer", "tag")

    def __init__(self, peer: str, tag: int) -> None:
        self.peer = peer
        self.tag = tag


def home_of(group_id: int, nodes: Sequence[str]) -> str:
    """The node of ``nodes`` that writes ``group_id``'s messages (rendezvous hashing).

    Every node computes the same answer from the same list, and when a node
    joins or leaves only the groups it gains or loses change home.
    """
    key = group_id.to_bytes(8, "big")
    best = ""
    best_weight = b""
    for node in nodes:
        weight = hashlib.blake2b(key, digest_size=8, key=node.encode()[:64]).digest()
        if weight > best_weight or (weight == best_weight and node > best):
            best, best_weight = node, weight
    return best


def pack_forwards(entries: Sequence[tuple[int, str | None, int, bytes, int]]) -> bytes:
    """``(user_id, device_id, client_id, Message bytes, tag)`` entries as one bytes.

    One PB string instead of five items a message: PB decodes and encodes
    items one by one, in Python.
    """
    parts: list[bytes] = []
    head = _HEAD.pack
    for user_id, device_id, client_id, message, tag in entries:
        device = device_id.encode() if device_id else b""
        parts += (head(user_id, client_id, tag, len(device), len(message)), device, message)
    return b"".join(parts)


def unpack_forwards(data: bytes) -> list[tuple[int, str | None, int, bytes, int]]:
    """The entries of :func:`pack_forwards`; ValueError when ``data`` is not such."""
    out: list[tuple[int, str | None, int, bytes, int]] = []
    pos, end, size, head = 0, len(data), _HEAD.size, _HEAD.unpack_from
    while pos < end:
        if end - pos < size:
            raise ValueError("a forwarded message is cut short")
        user_id, client_id, tag, device_len, message_len = head(data, pos)
        pos += size
        stop = pos + device_len + message_len
        if stop > end:
            raise ValueError("a forwarded message is cut short")
        device = data[pos : pos + device_len].decode("utf-8") if device_len else None
        out.append((user_id, device, client_id, data[pos + device_len : stop], tag))
        pos = stop
    return out


#: a forwarded message waiting for its answer: (item, device, size, start time)
Forward = tuple[UpItem, Any, int, float]


class Forwarder:
    """Routes a node's group messages to their home and gets the answers back.

    ``presence.nodes`` is the sorted tuple of live node ids and
    ``presence.nodes_version`` changes when it does (Redis presence renews
    both). ``answer(forward, code, seq)`` is called with each answer;
    ``lost(forwards)`` with the forwards of a call that failed, to be
    written here instead, in order.
    """

    log = Logger()

    def __init__(
        self,
        node_id: str,
        presence: Any,
        pool: Any,
        clock: IReactorTime,
        answer: Callable[[Forward, int, int], None],
        lost: Callable[[list[Forward]], None],
        avoid_for: float = 15.0,
    ) -> None:
        self.node_id = node_id
        self.presence = presence
        self.pool = pool
        self.clock = clock
        self.answer = answer
        self.lost = lost
        #: how long a home whose call failed is not forwarded to
        self.avoid_for = avoid_for
        self._homes: dict[int, str] = {}
        self._homes_version: Any = None
        #: node id -> until when it is not forwarded to
        self._avoid: dict[str, float] = {}
        self._outbox: dict[str, list[Forward]] = {}
        #: node id -> the pending send of its outbox
        self._flush_calls: dict[str, Any] = {}
        #: node id -> its calls not answered yet
        self._calls: dict[str, int] = {}
        #: forwarded messages not answered yet, and their bytes
        self.in_flight = 0
        self.in_flight_bytes = 0
        self._idle_waiters: list[defer.Deferred[None]] = []
        #: called after each answer or failure (the hub's backlog check)
        self.on_settled: Callable[[], None] | None = None

    def route(self, item: UpItem, size: int = 0) -> str | None:
        """The node that should write ``item`` (``size`` bytes on the wire): its group's home,
        or None for this one."""
        msg = item.message
        if (
            msg is None
            or item.reject_code != codes.OK
            or item.op is not None
            or msg.session_type != pb.ST_Group
            or size > MAX_FORWARDED
        ):
            return None
        nodes = self.presence.nodes
        if len(nodes) < 2:
            return None
        version = self.presence.nodes_version
        homes = self._homes
        if version != self._homes_version or len(homes) >= HOME_CACHE:
            homes.clear()
            self._homes_version = version
        gid = msg.receiver_id
        home = homes.get(gid)
        if home is None:
            home = homes[gid] = home_of(gid, nodes)
        if home == self.node_id:
            return None
        avoid = self._avoid
        if avoid:
            until = avoid.get(home)
            if until is not None:
                if self.clock.seconds() < until:
                    return None
                del avoid[home]
        return home

    def forward(self, node_id: str, forward: Forward) -> None:
        """Queue ``forward`` for ``node_id``: the turn's forwards go in one call, and
        while a call to it is unanswered, those of the next :data:`FORWARD_HOLD`."""
        self._outbox.setdefault(node_id, []).append(forward)
        self.in_flight += 1
        self.in_flight_bytes += forward[2]
        if node_id not in self._flush_calls:
            hold = FORWARD_HOLD if self._calls.get(node_id) else 0
            self._flush_calls[node_id] = self.clock.callLater(hold, self._flush, node_id)

    def _flush(self, node_id: str) -> None:
        del self._flush_calls[node_id]
        forwards = self._outbox.pop(node_id, None)
        if forwards:
            part: list[Forward] = []
            entries: list[tuple[int, str | None, int, bytes, int]] = []
            size = 0
            for forward in forwards:
                item, device = forward[0], forward[1]
                assert item.message is not None  # route() forwards messages only
                data = item.message.SerializeToString()
                if part and (
                    len(part) == FORWARDS_PER_CALL
                    or size + _HEAD.size + len(data) > FORWARD_BYTES_PER_CALL
                ):
                    self._call(node_id, part, entries)
                    part, entries, size = [], [], 0
                part.append(forward)
                entries.append((item.user_id, item.device_id, item.client_id, data, device.tag))
                size += _HEAD.size + len(data) + 4 * len(item.device_id or "")
            self._call(node_id, part, entries)

    def _call(
        self,
        node_id: str,
        part: list[Forward],
        entries: list[tuple[int, str | None, int, bytes, int]],
    ) -> None:
        calls = self._calls
        calls[node_id] = calls.get(node_id, 0) + 1
        d = self.pool.write_messages(node_id, pack_forwards(entries))
        d.addCallbacks(
            self._answered,
            self._failed,
            callbackArgs=(part, node_id),
            errbackArgs=(part, node_id),
        )
        d.addErrback(lambda f: self.log.failure("answering forwarded messages", f))

    def _answered(self, answer: Any, part: list[Forward], node_id: str) -> None:
        if not isinstance(answer, bytes) or len(answer) != 16 * len(part):
            self.log.warn(
                "affinity: node {node} answered {n} forwarded messages with {answer!r}",
                node=node_id,
                n=len(part),
                answer=type(answer).__name__,
            )
            self._failed(None, part, node_id)
            return
        self._settle(part, node_id)
        _ANSWERED.inc(len(part))
        for forward, (code, seq) in zip(part, codec.iter_pairs(answer), strict=True):
            try:
                self.answer(forward, code, seq)
            except Exception:
                self.log.failure("delivering a forwarded message's answer")
        self._settled()

    def _failed(self, failure: Any, part: list[Forward], node_id: str) -> None:
        self._avoid[node_id] = self.clock.seconds() + self.avoid_for
        self.log.warn(
            "affinity: forwarding {n} messages to node {node} failed ({error});"
            " writing them here, and not forwarding there for {s:.0f} s",
            n=len(part),
            node=node_id,
            error=failure.getErrorMessage() if failure is not None else "a malformed answer",
            s=self.avoid_for,
        )
        self._settle(part, node_id)
        _WRITTEN_HERE.inc(len(part))
        self.lost(part)
        self._settled()

    def _settle(self, part: list[Forward], node_id: str) -> None:
        """One call to ``node_id`` is over (answered or failed), with its forwards."""
        calls = self._calls
        calls[node_id] -= 1
        if not calls[node_id]:
            del calls[node_id]
        self.in_flight -= len(part)
        self.in_flight_bytes -= sum(f[2] for f in part)

    def _settled(self) -> None:
        if self.on_settled is not None:
            self.on_settled()
        if not self.in_flight:
            waiters, self._idle_waiters = self._idle_waiters, []
            for d in waiters:
                d.callback(None)

    def wait_idle(self) -> defer.Deferred[None]:
        """Fires once every forwarded message was answered (for shutdown)."""
        if not self.in_flight:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._idle_waiters.append(d)
        return d
