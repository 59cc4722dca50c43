"""The node's logic hub: logins, devices, upstream outcomes, pushes.

The hub holds node-wide state: every open session (for the heartbeat
checker), each device's upstream window (last accepted and last queued
clientId), the message writer and the router. Sessions call into it; it calls
the store, presence and router it was given.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, cast
from weakref import WeakValueDictionary

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from gochat import codec, codes, metrics
from gochat.auth import Claims, TokenSigner, check_account
from gochat.logic.affinity import Forward, Forwarder, RemoteOrigin
from gochat.logic.pushes import PushTracker
from gochat.logic.router import PUSH_BACKLOG_LIMIT, PUSH_BUDGET, RemoteDeliverer, Router
from gochat.logic.session import Connection, Session
from gochat.logic.writer import MessageWriter
from gochat.pb import pb
from gochat.presence import LocalPresence, Presence
from gochat.store import Store, UpItem, UpResult
from gochat.store.people import GroupOp, ReadOutcome

#: labelled children of UPSTREAM by code: ``labels()`` takes a lock and
#: builds a key on every call, a cost per message on the hot path
_UPSTREAM: dict[int, Any] = {}

ACK_MEMORY = 4096  # recent ACKs a device keeps in memory for retransmits
#: (peer, tag) of forwarded devices whose messages failed here, remembered so
#: that their later messages (already on the way) fail too, not commit first
FAILED_ORIGINS = 10_000
#: How long the ACK of a forwarded message waits for the connection's next
#: output (its home's pushes of the same batch, which follow the answer by
#: a presence lookup), so that both go in one write: one system call a
#: sender fewer each batch.
ACK_WAIT = 0.01


@dataclass
class HubConfig:
    login_timeout: float = 10.0
    sync_limit: int = 50
    max_frame: int = 64 * 1024
    msg_rate: float = 1000.0  # frames per second per connection
    msg_burst: int = 5000  # frames a connection may send at once
    push_retry_timeout: float = 5.0
    push_retries: int = 3
    push_window: int = 512
    push_budget: int = PUSH_BUDGET  # pushes per reactor turn
    push_backlog_limit: int = PUSH_BACKLOG_LIMIT  # waiting pushes that hold the writer


@dataclass(eq=False)
class DeviceState:
    """The upstream window of one device (or of one connection without device_id)."""

    user_id: int
    device_id: str | None
    accepted: int = 0  # last clientId whose outcome is final
    pending: int = 0  # last clientId queued for the store
    session: Session | None = None
    acks: dict[int, tuple[int, int]] = field(default_factory=dict)
    #: in a cluster: the node writing its messages in flight (None: this one),
    #: how many are in flight, and those waiting to go to another writer
    route: str | None = None
    in_flight: int = 0
    held: list[tuple[UpItem, int, float]] = field(default_factory=list)
    #: names the device to the home nodes it forwards to (0: none yet); a
    #: new one after a failure there
    tag: int = 0

    def __post_init__(self) -> None:
        self.pending = self.accepted

    def remember(self, client_id: int, code: int, seq: int) -> None:
        self.acks[client_id] = (code, seq)
        self.acks.pop(client_id - ACK_MEMORY, None)


#: What the writer hands back with an outcome: (device, start time) for a
#: message; (the Deferred of its UpResult, start time) for a group change;
#: (its origin, the call, its index) for a message another node forwarded.
_Owner = tuple[Any, ...]


class _Call:
    """The answer to one WriteMessages call: a code and a seq per message, once all are in."""

    __slots__ = ("answers", "left", "done")

    def __init__(self, n: int) -> None:
        self.answers = [0] * (2 * n)
        self.left = n
        self.done: defer.Deferred[list[int]] = defer.Deferred()

    def set(self, index: int, code: int, seq: int) -> None:
        self.answers[2 * index] = code
        self.answers[2 * index + 1] = seq
        self.left -= 1
        if not self.left:
            self.done.callback(self.answers)


class Hub:
    log = Logger()

    def __init__(
        self,
        store: Store,
        signer: TokenSigner,
        clock: IReactorTime,
        config: HubConfig | None = None,
        presence: Presence | None = None,
        remote: RemoteDeliverer | None = None,
    ) -> None:
        self.store = store
        self.signer = signer
        self.clock = clock
        self.config = config or HubConfig()
        self.presence = presence or LocalPresence()
        self.router = Router(
            self.presence,
            clock,
            remote,
            budget=self.config.push_budget,
            backlog_limit=self.config.push_backlog_limit,
        )
        # Owners are (device, start time); the device orders its messages.
        self.writer = MessageWriter(
            store,
            self._committed,
            self._failed,
            key=lambda owner: id(owner[0]),
            on_batch_end=self._batch_end,
            may_start=lambda: not self.router.congested,
            on_backlog=self._writer_backlog,
            clock=clock,
        )
        self.router.on_drained = self.writer.resume
        #: committed messages of the batch being answered, pushed once its ACKs are out
        self._deliveries: list[Any] = []
        self._codes: dict[int, int] = {}  # ACK codes of that batch, for the metric
        #: when that batch's first pushed message arrived (for gochat_fanout_seconds)
        self._batch_received: float | None = None
        self.pushes = PushTracker(
            clock,
            timeout=self.config.push_retry_timeout,
            retries=self.config.push_retries,
            window=self.config.push_window,
        )
        self.sessions: set[Session] = set()
        self.devices: dict[tuple[int, str], DeviceState] = {}
        self.unauthenticated = 0  # open sessions that have not logged in yet
        #: of those, how many per client address (see GatewayProtocol.address)
        self.unauthenticated_by_address: dict[str, int] = {}
        self._waiting_address: dict[Session, str] = {}
        #: the writer's queue is over its high-water mark: clients are not read
        self.reading_paused = False
        self._forwards_backlogged = False
        self.draining = False  # shutting down: frames are no longer read
        #: group affinity (gochat.logic.affinity): with Redis presence and peers
        self.forwarder: Forwarder | None = None
        #: devices by tag, for the pushes a home sends back naming one
        self._tags: WeakValueDictionary[int, DeviceState] = WeakValueDictionary()
        self._next_tag = 0
        self._failed_origins: OrderedDict[tuple[str, int], None] = OrderedDict()
        #: sessions keeping ACKs for their next output, and the timer that sends them
        self._acks_waiting: list[Session] = []
        self._acks_call: Any = None
        node_id = getattr(self.presence, "node_id", None)
        if remote is not None and hasattr(self.presence, "nodes") and node_id:
            self.forwarder = Forwarder(
                node_id,
                self.presence,
                remote,
                clock,
                self._forward_answered,
                self._forwards_lost,
                avoid_for=getattr(self.presence, "lease", 15.0),
            )
            self.forwarder.on_settled = self._forwards_settled
        self.router.origin_of = self._tags.get

    # -- sessions ------------------------------------------------------------

    def open_session(self, conn: Connection) -> Session:
        session = Session(self, conn)
        self.sessions.add(session)
        self.unauthenticated += 1
        address = getattr(conn, "address", None)
        if address is not None:
            self._waiting_address[session] = address
            by_address = self.unauthenticated_by_address
            by_address[address] = by_address.get(address, 0) + 1
        metrics.CONNECTIONS.set(len(self.sessions))
        return session

    def waiting_from(self, address: str) -> int:
        """Open sessions from ``address`` that have not logged in yet."""
        return self.unauthenticated_by_address.get(address, 0)

    def _stopped_waiting(self, session: Session) -> None:
        """``session`` logged in or closed before it did: it no longer waits."""
        self.unauthenticated -= 1
        address = self._waiting_address.pop(session, None)
        if address is not None:
            by_address = self.unauthenticated_by_address
            left = by_address[address] - 1
            if left:
                by_address[address] = left
            else:
                del by_address[address]

    def _writer_backlog(self, backlogged: bool) -> None:
        """Stop (or resume) reading from every client while the writer is behind.

        What is not read is not queued: TCP pushes back on the clients, and
        the node's memory stays bounded however slow the database is. The
        messages forwarded to other nodes and not answered yet count too.
        """
        backlogged = self.writer.backlogged or self._forwards_backlogged
        if backlogged == self.reading_paused:
            return
        self.reading_paused = backlogged
        for session in self.sessions:
            name = "pause_reading" if backlogged else "resume_reading"
            action = getattr(session.conn, name, None)
            if action is not None:
                action()

    def session_closed(self, session: Session) -> None:
        self.sessions.discard(session)
        if not session.authenticated:
            self._stopped_waiting(session)
        metrics.CONNECTIONS.set(len(self.sessions))
        self.pushes.forget(session)
        device = session.device
        if device is None:
            return
        if device.session is session:
            device.session = None
            self._maybe_forget(device)
        if self.router.remove(session):
            uid = session.user_id
            self.presence.user_offline(uid).addErrback(
                lambda f: self.log.failure("presence: marking {uid} offline", f, uid=uid)
            )

    @defer.inlineCallbacks
    def check_account(self, claims: Claims) -> Any:
        """Fires when the token's account exists and still matches; fails with BadToken."""
        account = yield self.store.account(claims.user_id)
        check_account(claims, account)

    def revoke_tokens(self, user_id: int, generation: int) -> int:
        """Close this node's sessions of ``user_id`` whose token is older than ``generation``.

        Called after ``POST /logout_all`` (here, or on another node through
        the cluster's pub/sub); returns how many were closed. Sessions still
        logging in count too (their account check may have read the row
        before the bump): a walk over every session, for a rare call.
        """
        closed = 0
        for session in list(self.sessions):
            claims = session.claims
            if claims is not None and claims.user_id == user_id:
                closed += session.revoke(generation)
        return closed

    @defer.inlineCallbacks
    def login(self, session: Session, user_id: int, device_id: str | None, push_ack: bool) -> Any:
        """Attach ``session`` to the user; fires with ``(last clientId, latest seq)``."""
        device: DeviceState | None
        if device_id is None:
            device = DeviceState(user_id, None)
        else:
            key = (user_id, device_id)
            device = self.devices.get(key)
            if device is None:
                last = yield self.store.load_device(user_id, device_id)
                device = self.devices.get(key)  # another login may have won meanwhile
                if device is None:
                    device = self.devices[key] = DeviceState(user_id, device_id, accepted=last)
        seq = yield self.store.latest_seq(user_id)
        if session.closed or session.revoked:
            if device_id is not None:
                self._maybe_forget(device)
            return (device.accepted, seq)
        old = device.session
        device.session = session
        # ClientIds a previous connection left in flight: their ACKs now come
        # here, so a retransmit of one must not be ACKed a second time.
        session.inherited = (device.accepted, device.pending)
        if old is not None and old is not session:
            old.device = None  # its window now belongs to the new connection
            self.router.remove(old)
            old.close("the same device logged in again")
        session.user_id = user_id
        session.device = device
        if not session.authenticated:
            session.authenticated = True
            self._stopped_waiting(session)
        session.push_ack = push_ack
        if self.router.add(session):
            yield self.presence.user_online(user_id)
        if device_id is not None:
            self.router.kick_elsewhere(user_id, device_id)
        return (device.accepted, seq)

    def _maybe_forget(self, device: DeviceState) -> None:
        """Drop a device's window once nothing refers to it any more."""
        if device.device_id is None or device.session is not None:
            return
        if device.pending == device.accepted:
            self.devices.pop((device.user_id, device.device_id), None)

    # -- upstream ------------------------------------------------------------

    def submit(self, item: UpItem, device: DeviceState, size: int = 0) -> None:
        """Queue an upstream message (``size`` bytes on the wire) for the writer.

        In a cluster a group message goes to its group's home instead (see
        :mod:`gochat.logic.affinity`); a device's messages wait while it has
        earlier ones in flight to another writer than theirs.
        """
        item_started = self.clock.seconds()
        forwarder = self.forwarder
        if forwarder is None:
            self.writer.submit(item, (device, item_started), size)
            return
        route = forwarder.route(item, size)
        if device.held or (device.in_flight and device.route != route):
            device.held.append((item, size, item_started))
            return
        self._dispatch(item, device, size, item_started, route)

    def _dispatch(
        self, item: UpItem, device: DeviceState, size: int, started: float, route: str | None
    ) -> None:
        assert self.forwarder is not None
        device.route = route
        device.in_flight += 1
        if route is None:
            self.writer.submit(item, (device, started), size)
            return
        if not device.tag:
            self._next_tag += 1
            device.tag = self._next_tag
            self._tags[device.tag] = device
        self.forwarder.forward(route, (item, device, size, started))
        if not self._forwards_backlogged and (
            self.forwarder.in_flight >= self.writer.high_water
            or self.forwarder.in_flight_bytes >= self.writer.high_water_bytes
        ):
            self._forwards_backlogged = True
            self._writer_backlog(True)

    def _forwards_settled(self) -> None:
        """Forwards were answered: reading resumes once they are down to half the mark."""
        self._count_codes()
        forwarder = self.forwarder
        if (
            self._forwards_backlogged
            and forwarder is not None
            and forwarder.in_flight <= self.writer.high_water // 2
            and forwarder.in_flight_bytes <= self.writer.high_water_bytes // 2
        ):
            self._forwards_backlogged = False
            self._writer_backlog(False)

    def _settled(self, device: DeviceState) -> None:
        """One of the device's messages has its outcome: held ones may go now."""
        device.in_flight -= 1
        self._release(device)

    def _release(self, device: DeviceState) -> None:
        """Send the device's held messages, in order, as far as their writer allows."""
        held = device.held
        while held:
            item, size, started = held[0]
            assert self.forwarder is not None
            route = self.forwarder.route(item, size)
            if device.in_flight and device.route != route:
                return
            del held[0]
            self._dispatch(item, device, size, started, route)

    def _forward_answered(self, forward: Forward, code: int, seq: int) -> None:
        """The home of a forwarded message answered: the ACK goes out here."""
        item, device, _, started = forward
        if code == codes.SERVER_ERROR:
            device.tag = 0  # the home fails what is still on the way with the old one
            self._failed(item, (device, started))
            return
        # counted once per answered call, in _forwards_settled
        codes_seen = self._codes
        codes_seen[code] = codes_seen.get(code, 0) + 1
        self._answer(item, device, started, code, seq, later=code == codes.OK)
        self._settled(device)

    def ack_waiting(self, session: Session) -> None:
        """``session`` keeps an ACK for its next output: it goes out within :data:`ACK_WAIT`."""
        self._acks_waiting.append(session)
        if self._acks_call is None:
            self._acks_call = self.clock.callLater(ACK_WAIT, self._flush_acks)

    def flush_acks(self) -> None:
        """Every ACK still waiting for a push goes out now (at shutdown)."""
        if self._acks_call is not None:
            self._acks_call.cancel()
        self._flush_acks()

    def _flush_acks(self) -> None:
        """ACKs whose pushes did not come within :data:`ACK_WAIT` go out on their own."""
        self._acks_call = None
        sessions, self._acks_waiting = self._acks_waiting, []
        for session in sessions:
            session.flush_acks()

    def _forwards_lost(self, forwards: list[Forward]) -> None:
        """A call to a home failed: its messages are written here, in the same order."""
        devices: dict[int, DeviceState] = {}
        for item, device, size, started in forwards:
            device.route = None
            devices[id(device)] = device
            self.writer.submit(item, (device, started), size)
        for device in devices.values():
            self._release(device)  # their earlier messages are all here now

    def _answer(
        self,
        item: UpItem,
        device: DeviceState,
        started: float,
        code: int,
        seq: int,
        later: bool = False,
    ) -> DeviceState:
        """A message's final outcome: the device's window moves and its ACK goes out.

        ``later``: with the connection's next output (a forwarded message's
        ACK, whose pushes are on the way from its home), within :data:`ACK_WAIT`.
        """
        device.accepted = item.client_id
        device.remember(item.client_id, code, seq)
        session = device.session
        if session is not None:
            frame = codec.ack_frame(pb.AT_Up, code, item.client_id, seq)
            if later:
                session.send_ack_later(frame, started)
            else:
                session.send(frame)
                metrics.ACK_LATENCY.observe(self.clock.seconds() - started)
        else:
            self._maybe_forget(device)
        return device

    def _committed(self, item: UpItem, owner: _Owner, result: UpResult) -> None:
        if item.op is not None:
            self._change_committed(item, owner, result)
            return
        if type(owner[0]) is RemoteOrigin:
            self._peer_committed(item, owner, result)
            return
        device, started = cast(tuple[DeviceState, float], owner)
        # Counted once per batch (in _batch_end): a counter's lock per message
        # costs as much as the message's ACK frame.
        codes_seen = self._codes
        codes_seen[result.code] = codes_seen.get(result.code, 0) + 1
        if result.code == codes.OK and result.message is not None:
            self._deliveries.append((result.message, result.rows, device))
            if self._batch_received is None or started < self._batch_received:
                self._batch_received = started
        self._answer(item, device, started, result.code, result.sender_seq)
        if self.forwarder is not None:
            self._settled(device)

    def _count_codes(self) -> None:
        """Add the ACK codes sent since the last count to ``gochat_upstream_messages_total``."""
        for code, count in self._codes.items():
            counter = _UPSTREAM.get(code)
            if counter is None:
                counter = _UPSTREAM[code] = metrics.UPSTREAM.labels(str(code))
            counter.inc(count)
        self._codes.clear()

    def _batch_end(self) -> None:
        """Every ACK of a batch is out: now its pushes (senders can send again meanwhile)."""
        self._count_codes()
        deliveries, self._deliveries = self._deliveries, []
        received, self._batch_received = self._batch_received, None
        if deliveries:
            self.router.deliver_many(deliveries, received)

    def _failed(self, item: UpItem, owner: _Owner) -> None:
        if item.op is not None:
            cast("defer.Deferred[UpResult]", owner[0]).errback(
                RuntimeError("storing the group change failed")
            )
            return
        if type(owner[0]) is RemoteOrigin:
            self._peer_failed(owner)
            return
        device = cast(DeviceState, owner[0])
        device.pending = device.accepted
        failed = [item.client_id]
        if device.held:
            # later messages must not be stored before this one either
            failed += [held.client_id for held, _, _ in device.held]
            device.held = []
        metrics.UPSTREAM.labels(str(codes.SERVER_ERROR)).inc(len(failed))
        if device.session is not None:
            for client_id in failed:
                device.session.send(codec.ack_frame(pb.AT_Up, codes.SERVER_ERROR, client_id))
        else:
            self._maybe_forget(device)
        if self.forwarder is not None:
            self._settled(device)

    def reack(self, session: Session, device: DeviceState, client_id: int) -> None:
        """Answer a retransmit of an already final clientId with the same ACK."""
        known = device.acks.get(client_id)
        if known is not None:
            session.send(codec.ack_frame(pb.AT_Up, known[0], client_id, known[1]))
            return
        if device.device_id is None:
            session.send(codec.ack_frame(pb.AT_Up, codes.PARAM_ILLEGAL, client_id))
            return

        def found(row: tuple[int, int] | None) -> None:
            code, seq = row if row is not None else (codes.PARAM_ILLEGAL, 0)
            session.send(codec.ack_frame(pb.AT_Up, code, client_id, seq))

        def failed(failure: Any) -> None:
            self.log.failure("looking up clientId {cid}", failure, cid=client_id)
            session.send(codec.ack_frame(pb.AT_Up, codes.SERVER_ERROR, client_id))

        self.store.device_ack(device.user_id, device.device_id, client_id).addCallbacks(
            found, failed
        )

    def push_acked(self, session: Session, seq: int) -> None:
        """A device acknowledged pushes up to ``seq`` (cumulative)."""
        if session.push_ack:
            self.pushes.acked(session, seq)

    # -- groups that change, read positions, typing ----------------------------

    def change_group(self, op: GroupOp) -> defer.Deferred[UpResult]:
        """Commit a group change in order with the messages; fires with its UpResult.

        It goes through the message writer like a message, so a message
        committed before it reaches the old members and one after it the new
        ones; its event is pushed in that order too.
        """
        done: defer.Deferred[UpResult] = defer.Deferred()
        item = UpItem(user_id=op.actor_id, device_id=None, client_id=0, message=None, op=op)
        self.writer.submit(item, (done, self.clock.seconds()))
        return done

    def _change_committed(self, item: UpItem, owner: _Owner, result: UpResult) -> None:
        if result.code == codes.OK and result.message is not None:
            self._deliveries.append((result.message, result.rows, None))
        cast("defer.Deferred[UpResult]", owner[0]).callback(result)

    def mark_read(
        self, user_id: int, session_type: int, peer_id: int, seq: int, origin: Any = None
    ) -> defer.Deferred[ReadOutcome]:
        """Move a read position forward; the reader's other devices and the peer are told.

        Fires with the :class:`ReadOutcome`; ``origin`` (the session that
        read) is not told again.
        """
        d = self.store.mark_read(user_id, session_type, peer_id, seq)

        def tell(outcome: ReadOutcome) -> ReadOutcome:
            if outcome.moved:
                own = codec.read_frame(session_type, peer_id, outcome.read_seq, user_id)
                frames = {user_id: own}
                if session_type == pb.ST_Single:
                    frames[peer_id] = codec.read_frame(
                        pb.ST_Single, user_id, outcome.peer_seq, user_id
                    )
                self.router.notify(frames, origin)
            return outcome

        return d.addCallback(tell)

    @defer.inlineCallbacks
    def typing(self, user_id: int, session_type: int, peer_id: int) -> Any:
        """Tell the peer's (or the group's) devices with notices; fires with a code."""
        if session_type == pb.ST_Single:
            if peer_id == user_id:
                return codes.PARAM_ILLEGAL
            found = yield self.store.users_exist([peer_id])
            if peer_id not in found:
                return codes.NO_DATA
            recipients = [peer_id]
            name = user_id
        else:
            members = yield self.store.group_members(peer_id)
            if not members:
                return codes.NO_DATA
            if user_id not in members:
                return codes.UNAUTHORIZED
            recipients = [m for m in members if m != user_id]
            name = peer_id
        frame = codec.typing_frame(session_type, name, user_id)
        self.router.notify({uid: frame for uid in recipients})
        return codes.OK

    def deliver_notice_from_peer(self, frames: dict[int, list[bytes]]) -> int:
        """Read and typing notices another node routed here."""
        return self.router.notify_local(frames)

    # -- node-to-node --------------------------------------------------------

    def deliver_from_peer(self, frames: dict[int, list[bytes]]) -> int:
        """Pushes another node routed here."""
        return self.router.deliver_local(frames)

    def deliver_pushes_from_peer(self, batch: list[tuple[bytes, bytes, bytes]]) -> int:
        """Pushes another node routed here as (message base, packed pairs, skip)."""
        return self.router.deliver_pushes_local(batch)

    def deliver_push_runs_from_peer(self, batch: list[tuple[list[bytes], bytes, bytes]]) -> int:
        """Runs of pushes another node routed here as ([message base, ...], pairs, skip)."""
        return self.router.deliver_push_runs_local(batch)

    def kick_device(self, user_id: int, device_id: str, reason: str) -> bool:
        """Close this node's connection of (user, device): it logged in elsewhere."""
        device = self.devices.get((user_id, device_id))
        if device is None or device.session is None:
            return False
        device.session.close(reason)
        return True

    def write_from_peer(
        self, peer_id: str, entries: list[tuple[Any, ...]]
    ) -> defer.Deferred[list[int]]:
        """Messages another node forwarded here, their group's home (see :mod:`.affinity`).

        ``entries`` are (user_id, device_id, client_id, message, tag), checked
        by the RPC server; fires with [code, seq, code, seq, ...] once all are
        committed. They go in this node's batches; a device whose message
        failed here gets 1004 for the rest of what it sent with that tag.
        """
        call = _Call(len(entries))
        for index, (user_id, device_id, client_id, data, tag) in enumerate(entries):
            if (peer_id, tag) in self._failed_origins:
                call.set(index, codes.SERVER_ERROR, 0)
                continue
            origin = RemoteOrigin(peer_id, tag)
            try:
                message: pb.Message | None = pb.Message.FromString(data)
                code = codes.OK
            except Exception:
                message, code = None, codes.PARAM_ILLEGAL
            item = UpItem(user_id, device_id, client_id, message, reject_code=code)
            self.writer.submit(item, (origin, call, index), len(data), gather=True)
        return call.done

    def _peer_committed(self, item: UpItem, owner: _Owner, result: UpResult) -> None:
        origin, call, index = owner
        call.set(index, result.code, result.sender_seq)
        if result.code == codes.OK and result.message is not None:
            self._deliveries.append((result.message, result.rows, origin))

    def _peer_failed(self, owner: _Owner) -> None:
        origin, call, index = owner
        failed = self._failed_origins
        failed[(origin.peer, origin.tag)] = None
        if len(failed) > FAILED_ORIGINS:
            failed.popitem(last=False)
        call.set(index, codes.SERVER_ERROR, 0)

    def wait_idle(self) -> defer.Deferred[None]:
        if self.forwarder is None:
            return self.writer.wait_idle()
        d = defer.gatherResults([self.writer.wait_idle(), self.forwarder.wait_idle()])
        return d.addCallback(lambda _: None)
