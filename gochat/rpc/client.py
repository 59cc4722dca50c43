"""A pool of PB connections to peer nodes: the hub's remote deliverer.

One connection per peer, opened on first use and again after it drops.
Calls to one peer go out in the order they were made (PB keeps the order of
calls on a connection). Every connect, login and call is bounded by a
timeout; a failure is logged and counted, never raised to the caller: the
message is already stored, and a recipient that missed the push syncs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.cred.credentials import UsernamePassword
from twisted.internet import defer, endpoints
from twisted.logger import Logger
from twisted.spread import pb

from gochat import codec, metrics
from gochat._twisted import Broker

CALL_TIMEOUT = 5.0  # seconds for a connect + login, and for each call


def tcp_client_endpoint(address: str) -> str:
    """``host:port`` → a client endpoint description (TLS can swap this out)."""
    host, _, port = address.rpartition(":")
    return f"tcp:host={host.strip('[]')}:port={port}:timeout={int(CALL_TIMEOUT)}"


class _Peer:
    """The connection to one node, (re)opened on demand."""

    def __init__(self, pool: PeerPool, node_id: str, address: str) -> None:
        self.pool = pool
        self.node_id = node_id
        self.address = address
        self.ref: Any = None
        self.factory: pb.PBClientFactory | None = None
        self.broker: Any = None  # the connection, known before PB's handshake completes
        self._waiting: list[defer.Deferred[Any]] | None = None

    def reference(self) -> defer.Deferred[Any]:
        if self.ref is not None:
            return defer.succeed(self.ref)
        waiter: defer.Deferred[Any] = defer.Deferred()
        if self._waiting is not None:
            self._waiting.append(waiter)
            return waiter
        self._waiting = [waiter]
        pool = self.pool
        factory = self.factory = pb.PBClientFactory()
        factory.protocol = Broker  # Banana decoded by offset (see gochat._twisted)
        endpoint = endpoints.clientFromString(pool.reactor, pool.client_endpoint(self.address))
        if pool.wrap_endpoint is not None:
            endpoint = pool.wrap_endpoint(endpoint)
        d = endpoint.connect(factory)
        d.addCallback(self._opened)
        d.addCallback(lambda _: factory.login(UsernamePassword(pool.node_id.encode(), pool.secret)))
        d.addTimeout(CALL_TIMEOUT, pool.reactor)
        d.addCallbacks(self._connected, self._failed)
        return waiter

    def _opened(self, broker: Any) -> None:
        self.broker = broker

    def _connected(self, ref: Any) -> None:
        self.ref = ref
        ref.notifyOnDisconnect(self._lost)
        waiting, self._waiting = self._waiting or [], None
        for w in waiting:
            w.callback(ref)

    def _failed(self, failure: Any) -> None:
        self.close()
        waiting, self._waiting = self._waiting or [], None
        for w in waiting:
            w.errback(failure)

    def _lost(self, ref: Any) -> None:
        if self.ref is ref:
            self.close()

    def call(self, method: str, *args: Any) -> defer.Deferred[Any]:
        def send(ref: Any) -> defer.Deferred[Any]:
            called: defer.Deferred[Any] = ref.callRemote(method, *args)
            return called

        d = self.reference().addCallback(send)
        d.addTimeout(CALL_TIMEOUT, self.pool.reactor)
        d.addErrback(self._call_failed)
        return d

    def _call_failed(self, failure: Any) -> Any:
        if failure.check(defer.TimeoutError, defer.CancelledError):
            self.close()  # a stuck connection: the next call opens a fresh one
        return failure

    def close(self) -> None:
        """Drop the connection and forget the peer (its address is looked up again)."""
        self.ref = None
        if self.factory is not None:
            self.factory.disconnect()
            self.factory = None
        broker, self.broker = self.broker, None
        if broker is not None and broker.transport is not None:
            # PBClientFactory.disconnect only knows a connection whose PB
            # handshake completed; one stuck before it (a TLS port reached
            # without TLS, a silent peer) must be closed here.
            broker.transport.loseConnection()
        if self.pool.peers.get(self.node_id) is self:
            del self.pool.peers[self.node_id]


#: Messages per DeliverPushes call: PB refuses a list of more than 640 Ki items.
PUSHES_PER_CALL = 10_000


def _frames_of(batch: list[tuple[bytes, ...]]) -> dict[int, list[bytes]]:
    """``{user_id: [frame, ...]}`` of (base, pairs) pushes, for a peer without DeliverPushes."""
    frames: dict[int, list[bytes]] = {}
    for base, pairs, *_ in batch:
        frame_for = codec.PushFrames(base).frame
        for uid, seq in codec.iter_pairs(pairs):
            frames.setdefault(uid, []).append(frame_for(seq))
    return frames


def _expanded(runs: list[tuple[Any, ...]]) -> list[tuple[bytes, bytes]]:
    """Runs as one (base, pairs) push a message, for a peer without DeliverPushRuns.

    (Such a peer is an older release: it forwards nothing, so no push to it
    names a device to skip.)
    """
    out: list[tuple[bytes, bytes]] = []
    for bases, pairs, *_ in runs:
        firsts = list(codec.iter_pairs(pairs))
        for i, base in enumerate(bases):
            out.append((base, codec.pack_pairs([v for uid, s in firsts for v in (uid, s + i)])))
    return out


def _wire(frames: dict[int, list[bytes]]) -> dict[int, bytes | list[bytes]]:
    """``{user_id: frame or [frames]}``: a lone frame goes bare (DeliverMessageAll's shape)."""
    return {u: f[0] if len(f) == 1 else f for u, f in frames.items()}


def _summed(sent: list[defer.Deferred[Any]]) -> defer.Deferred[Any]:
    """The one call's answer, or the sum of several calls' (pushes made)."""
    if len(sent) == 1:
        return sent[0]
    return defer.gatherResults(sent, consumeErrors=True).addCallback(sum)


def _fire(result: Any, waiters: list[defer.Deferred[Any]]) -> None:
    for waiter in waiters:
        waiter.callback(result)


class PeerPool(service.Service):
    """Delivers pushes to other nodes; implements the router's RemoteDeliverer.

    As a service it closes every peer connection when the node stops.
    """

    log = Logger()

    def __init__(
        self,
        node_id: str,
        secret: bytes,
        address_of: Callable[[str], defer.Deferred[Any]],
        reactor: Any = None,
        client_endpoint: Callable[[str], str] = tcp_client_endpoint,
        wrap_endpoint: Callable[[Any], Any] | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.node_id = node_id
        self.secret = secret
        self.address_of = address_of
        self.reactor = reactor
        self.client_endpoint = client_endpoint
        # With --cluster-ca: layers mutual TLS on each connection (gochat.tls).
        self.wrap_endpoint = wrap_endpoint
        self.peers: dict[str, _Peer] = {}
        # Pushes for each node gathered during one reactor turn, sent as one call.
        self._outbox: dict[str, dict[int, list[bytes]]] = {}
        self._outbox_waiters: dict[str, list[defer.Deferred[Any]]] = {}
        # (message base, packed pairs) and runs ([base, ...], packed pairs)
        # for each node, gathered the same way, in order.
        self._pushes: dict[str, list[tuple[Any, ...]]] = {}
        # Peers that answered DeliverPackedRuns with "no such method": runs
        # go to them as DeliverPushRuns, their bases a list.
        self.no_packed: set[str] = set()
        # Peers that answered DeliverPushRuns with "no such method": runs go
        # to them as DeliverPushes.
        self.no_runs: set[str] = set()
        # Peers that answered DeliverPushes with "no such method": an older
        # release during a rolling upgrade. They get DeliverMessageAll.
        self.legacy: set[str] = set()
        self._flush_call: Any = None

    def _peer(self, node_id: str) -> defer.Deferred[Any]:
        peer = self.peers.get(node_id)
        if peer is not None:
            return defer.succeed(peer)

        def found(address: str | None) -> _Peer:
            if address is None:
                raise LookupError(f"node {node_id} has no address (its lease is gone)")
            peer = self.peers.get(node_id)
            if peer is None:
                peer = self.peers[node_id] = _Peer(self, node_id, address)
            return peer

        return self.address_of(node_id).addCallback(found)

    def call(self, node_id: str, method: str, *args: Any) -> defer.Deferred[Any]:
        """Call ``method`` on a peer; fires with its result, or fails (bounded by timeouts)."""
        metrics.RPC_CALLS.labels(method).inc()
        d = self._peer(node_id).addCallback(lambda peer: peer.call(method, *args))

        def failed(failure: Any) -> Any:
            metrics.RPC_FAILURES.labels(method).inc()
            return failure

        return d.addErrback(failed)

    def deliver(self, node_id: str, frames: dict[int, list[bytes]]) -> defer.Deferred[Any]:
        """Hand pushes to one node. Never fails; fires once the call is done.

        Everything for one node in the same reactor turn (a committed batch
        pushes many messages at once) goes in one call: ``DeliverMessage`` for
        a single frame, else one ``DeliverMessageAll``, so a group message is
        never more than one call per node. Frames keep their order per user.
        """
        outbox = self._outbox.setdefault(node_id, {})
        for uid, user_frames in frames.items():
            outbox.setdefault(uid, []).extend(user_frames)
        return self._queued(node_id)

    def _queued(self, node_id: str) -> defer.Deferred[Any]:
        """A waiter for what was just queued for ``node_id``; the flush is at the turn's end."""
        waiter: defer.Deferred[Any] = defer.Deferred()
        self._outbox_waiters.setdefault(node_id, []).append(waiter)
        if self._flush_call is None:
            self._flush_call = self.reactor.callLater(0, self._flush)
        return waiter

    def deliver_pushes(
        self, node_id: str, base: bytes, pairs: bytes, skip: bytes = b""
    ) -> defer.Deferred[Any]:
        """Hand one message's pushes to one node (see the router's RemoteDeliverer).

        Everything for one node in the same reactor turn goes in one
        ``DeliverPushes`` call, in order. Never fails; fires once it is done.
        """
        if node_id in self.legacy:
            return self.deliver(node_id, _frames_of([(base, pairs)]))
        self._pushes.setdefault(node_id, []).append((base, pairs, skip) if skip else (base, pairs))
        return self._queued(node_id)

    def deliver_push_run(
        self, node_id: str, bases: list[bytes], pairs: bytes, skip: bytes = b""
    ) -> defer.Deferred[Any]:
        """Hand consecutive messages of one group batch to one node (the router's RemoteDeliverer).

        Queued in order with :meth:`deliver_pushes`; one ``DeliverPushRuns``
        call for the runs of a turn. Never fails; fires once it is done.
        """
        if node_id in self.no_runs or node_id in self.legacy:
            for base, each in _expanded([(bases, pairs)]):
                self.deliver_pushes(node_id, base, each)
            return self._queued(node_id)
        self._pushes.setdefault(node_id, []).append(
            (bases, pairs, skip) if skip else (bases, pairs)
        )
        return self._queued(node_id)

    def write_messages(self, node_id: str, packed: bytes) -> defer.Deferred[Any]:
        """Forward packed messages to their group's home (``WriteMessages``).

        Fires with its packed answers, or fails: unlike pushes, a failure is
        the caller's to handle (it writes the messages itself).
        """
        return self.call(node_id, "WriteMessages", packed)

    def _send_queued(self, node_id: str, queued: list[tuple[Any, ...]]) -> defer.Deferred[Any]:
        """Pushes and runs for one node, in their order: one call per stretch of one kind."""
        sent = []
        start = 0
        while start < len(queued):
            runs = isinstance(queued[start][0], list)
            end = start + 1
            while end < len(queued) and isinstance(queued[end][0], list) == runs:
                end += 1
            part = queued[start:end]
            sent.append(
                self._send_runs(node_id, part) if runs else self._send_pushes(node_id, part)
            )
            start = end
        return _summed(sent)

    def _send_runs(self, node_id: str, runs: list[tuple[Any, ...]]) -> defer.Deferred[Any]:
        """Runs for one node: ``DeliverPackedRuns``, or what an older peer has instead."""
        packed = node_id not in self.no_packed

        def older(failure: Any, part: list[tuple[Any, ...]]) -> Any:
            # The peer's perspective has no such method: an older release.
            if not failure.check(AttributeError, "builtins.AttributeError"):
                return failure
            if packed:
                self.log.info(
                    "rpc: node {node} is an older release: runs by DeliverPushRuns", node=node_id
                )
                self.no_packed.add(node_id)
                return self._send_runs(node_id, part)
            self.log.info(
                "rpc: node {node} is an older release: runs by DeliverPushes", node=node_id
            )
            self.no_runs.add(node_id)
            return self._send_pushes(node_id, _expanded(part))

        def send(part: list[tuple[Any, ...]]) -> defer.Deferred[Any]:
            if packed:
                wire = [(codec.pack_bases(run[0]), *run[1:]) for run in part]
                d = self.call(node_id, "DeliverPackedRuns", wire)
            else:
                d = self.call(node_id, "DeliverPushRuns", part)
            return d.addErrback(older, part)

        sent = []
        part: list[tuple[Any, ...]] = []
        messages = 0
        for run in runs:
            if part and messages + len(run[0]) > PUSHES_PER_CALL:
                sent.append(send(part))
                part, messages = [], 0
            part.append(run)
            messages += len(run[0])
        sent.append(send(part))
        return _summed(sent)

    def _send_pushes(self, node_id: str, batch: list[tuple[Any, ...]]) -> defer.Deferred[Any]:
        def older(failure: Any, part: list[tuple[Any, ...]]) -> Any:
            # The peer's perspective has no perspective_DeliverPushes.
            if not failure.check(AttributeError, "builtins.AttributeError"):
                return failure
            self.log.info(
                "rpc: node {node} is an older release: frames by DeliverMessageAll", node=node_id
            )
            self.legacy.add(node_id)
            return self.call(node_id, "DeliverMessageAll", _wire(_frames_of(part)))

        sent = []
        for i in range(0, len(batch), PUSHES_PER_CALL):
            part = batch[i : i + PUSHES_PER_CALL]
            sent.append(self.call(node_id, "DeliverPushes", part).addErrback(older, part))
        return _summed(sent)

    def _flush(self) -> None:
        self._flush_call = None
        outbox, self._outbox = self._outbox, {}
        pushes, self._pushes = self._pushes, {}
        waiters, self._outbox_waiters = self._outbox_waiters, {}
        for node_id, queued in pushes.items():
            d = self._send_queued(node_id, queued)
            d.addErrback(self._failed, node_id, "deliver", len(queued))
            if node_id not in outbox:
                d.addCallback(_fire, waiters.pop(node_id, []))
        for node_id, frames in outbox.items():
            if len(frames) == 1 and len(next(iter(frames.values()))) == 1:
                ((uid, (frame,)),) = frames.items()
                d = self.call(node_id, "DeliverMessage", uid, frame)
            else:
                d = self.call(node_id, "DeliverMessageAll", _wire(frames))
            d.addErrback(self._failed, node_id, "deliver", len(frames))
            d.addCallback(_fire, waiters.pop(node_id, []))

    def kick(self, node_id: str, user_id: int, device_id: str) -> defer.Deferred[Any]:
        """Ask a node to close its connection of this device. Never fails."""
        d = self.call(node_id, "KickDevice", user_id, device_id)
        return d.addErrback(self._failed, node_id, "kick", 1)

    def notify(self, node_id: str, frames: dict[int, list[bytes]]) -> defer.Deferred[Any]:
        """Hand read/typing notices to one node (one call; they are small and rare). Never fails."""
        d = self.call(node_id, "DeliverNotice", _wire(frames))
        return d.addErrback(self._failed, node_id, "notice", len(frames))

    def _failed(self, failure: Any, node_id: str, what: str, n: int) -> None:
        self.log.warn(
            "rpc: {what} to node {node} ({n} users) failed: {error}; recipients will sync",
            what=what,
            node=node_id,
            n=n,
            error=failure.getErrorMessage() or failure.type.__name__,
        )
        return None

    def stopService(self) -> None:  # noqa: N802
        super().stopService()
        self.close()

    def close(self) -> None:
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
            self._flush_call = None
            waiters, self._outbox_waiters = self._outbox_waiters, {}
            self._outbox = {}
            self._pushes = {}
            for node_waiters in waiters.values():
                _fire(None, node_waiters)
        for peer in list(self.peers.values()):
            peer.close()
