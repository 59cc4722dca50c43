"""The PB endpoint other nodes call: a twisted.cred portal in front of the hub.

A peer logs in with username = its node id and password = the cluster secret
(PB's challenge-response, so the secret itself never crosses the wire). Only
then does it get a :class:`PeerPerspective`, whose remote methods are the
whole surface: ``DeliverMessage``, ``DeliverMessageAll``, ``DeliverPushes``,
``DeliverPushRuns``, ``DeliverPackedRuns``, ``KickDevice``, ``DeliverNotice``
(read and typing notices, which are never pushes) and ``WriteMessages`` (messages to a group
whose home is this node, packed, see :mod:`gochat.logic.affinity`).
A peer that has not logged in can call nothing but ``login``.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.cred import credentials, error, portal
from twisted.cred.checkers import ICredentialsChecker
from twisted.internet import defer
from twisted.logger import Logger
from twisted.spread import banana, pb
from zope.interface import implementer

from gochat import codec, metrics
from gochat._twisted import Broker
from gochat.logic.affinity import FORWARDS_PER_CALL, unpack_forwards

MAX_USERS_PER_CALL = 100_000
MAX_FRAMES_PER_USER = 10_000
MAX_MESSAGES_PER_CALL = 10_000
#: a message without its seq: at most a --max-frame's content and its fields
MAX_BASE = 1 << 20
MAX_NODE_ID = 128
MAX_DEVICE_ID = 128


class SecretError(ValueError):
    """The cluster secret file is missing, unreadable or empty."""


def load_cluster_secret(path: str) -> bytes:
    """Read ``--cluster-secret-file`` (surrounding whitespace ignored)."""
    try:
        with open(path, "rb") as f:
            secret = f.read().strip()
    except OSError as exc:
        raise SecretError(f"cannot read {path}: {exc.strerror}") from None
    if len(secret) < 16:
        raise SecretError(f"{path}: the cluster secret must be at least 16 bytes")
    return secret


class PeerHub(Protocol):
    """What the endpoint needs of the hub."""

    def deliver_from_peer(self, frames: dict[int, list[bytes]]) -> int: ...

    def kick_device(self, user_id: int, device_id: str, reason: str) -> bool: ...

    def deliver_notice_from_peer(self, frames: dict[int, list[bytes]]) -> int: ...

    def deliver_pushes_from_peer(self, batch: list[tuple[bytes, bytes, bytes]]) -> int: ...

    def deliver_push_runs_from_peer(self, batch: list[tuple[list[bytes], bytes, bytes]]) -> int: ...

    def write_from_peer(self, peer_id: str, entries: list[tuple[Any, ...]]) -> Any: ...


_log = Logger(namespace="gochat.rpc.server")


class RefusedLogin(error.UnauthorizedLogin, pb.Error):
    """A peer's login refused: a ``pb.Error``, so PB answers it without logging a traceback
    (the checker logs one line); the peer sees an ``UnauthorizedLogin``."""


def _refuse(node: Any, why: str) -> defer.Deferred[Any]:
    metrics.RPC_REFUSED.inc()
    _log.warn("rpc: refused a peer's login as node {node!r}: {why}", node=node, why=why)
    return defer.fail(RefusedLogin(why))


@implementer(ICredentialsChecker)
class ClusterSecretChecker:
    """Any node id, with the one cluster secret."""

    credentialInterfaces = (credentials.IUsernamePassword, credentials.IUsernameHashedPassword)

    def __init__(self, secret: bytes) -> None:
        self.secret = secret

    def requestAvatarId(self, creds: Any) -> defer.Deferred[Any]:  # noqa: N802 - cred's name
        username = creds.username
        if isinstance(username, bytes):
            try:
                username = username.decode("utf-8")
            except UnicodeDecodeError:
                return _refuse(username[:MAX_NODE_ID], "bad node id")
        if not username or len(username) > MAX_NODE_ID:
            return _refuse(username[:MAX_NODE_ID], "bad node id")
        d = defer.maybeDeferred(creds.checkPassword, self.secret)

        def checked(ok: bool) -> Any:
            if not ok:
                return _refuse(username, "wrong cluster secret")
            return str(username)

        return d.addCallback(checked)


class PeerPerspective(pb.Avatar):
    """What one logged-in peer node may do here."""

    log = Logger()

    def __init__(self, hub: PeerHub, peer_id: str, presence: Any = None) -> None:
        self.hub = hub
        self.peer_id = peer_id
        self.presence = presence

    def perspective_DeliverMessage(self, receiver_id: Any, data: Any) -> int:  # noqa: N802
        """Push one ``Output`` frame to every device of ``receiver_id`` here."""
        uid = _user_id(receiver_id)
        frames = _frames(data)
        metrics.RPC_SERVED.labels("DeliverMessage").inc()
        return self.hub.deliver_from_peer({uid: frames})

    def perspective_DeliverMessageAll(self, messages: Any) -> int:  # noqa: N802
        """``{receiver_id: frame or [frames]}``: one call per node per group message."""
        if not isinstance(messages, dict) or len(messages) > MAX_USERS_PER_CALL:
            raise pb.Error("DeliverMessageAll takes a dict of receiver_id to frames")
        batch = {_user_id(uid): _frames(data) for uid, data in messages.items()}
        metrics.RPC_SERVED.labels("DeliverMessageAll").inc()
        return self.hub.deliver_from_peer(batch)

    def perspective_DeliverPushes(self, batch: Any) -> int:  # noqa: N802
        """``[[message base, packed (user_id, seq) pairs], ...]``: pushes, in order.

        The message is sent once per node without its seq
        (:func:`gochat.codec.message_base`) and this node builds each
        recipient's frame, so a group message costs 16 bytes per recipient
        on the wire and no frame of its own in PB's encoding.
        """
        if not isinstance(batch, list) or not 0 < len(batch) <= MAX_MESSAGES_PER_CALL:
            raise pb.Error("DeliverPushes takes a list of [base, pairs]")
        pushes = [_push_entry(entry) for entry in batch]
        metrics.RPC_SERVED.labels("DeliverPushes").inc()
        return self.hub.deliver_pushes_from_peer(pushes)

    def perspective_DeliverPushRuns(self, batch: Any) -> int:  # noqa: N802
        """``[[[base, ...], packed (user_id, first seq) pairs], ...]``: runs of pushes, in order.

        A run is consecutive messages of one group batch: each recipient's
        seqs for them are consecutive, so one pair names all of its pushes
        (the first message with ``first seq``, the next with the next seq).
        """
        if not isinstance(batch, list) or not 0 < len(batch) <= MAX_MESSAGES_PER_CALL:
            raise pb.Error("DeliverPushRuns takes a list of [[base, ...], pairs]")
        runs = [_run_entry(entry) for entry in batch]
        if sum(len(run[0]) for run in runs) > MAX_MESSAGES_PER_CALL:
            raise pb.Error(f"DeliverPushRuns carries at most {MAX_MESSAGES_PER_CALL} messages")
        metrics.RPC_SERVED.labels("DeliverPushRuns").inc()
        return self.hub.deliver_push_runs_from_peer(runs)

    def perspective_DeliverPackedRuns(self, batch: Any) -> int:  # noqa: N802
        """``DeliverPushRuns`` with each run's bases packed as one bytes (:func:`codec.pack_bases`).

        ``[[packed bases, packed (user_id, first seq) pairs], ...]``, the
        pairs and the optional skip as in ``DeliverPushRuns``.
        """
        if not isinstance(batch, list) or not 0 < len(batch) <= MAX_MESSAGES_PER_CALL:
            raise pb.Error("DeliverPackedRuns takes a list of [packed bases, pairs]")
        runs = [_run_entry(_unpacked_run(entry)) for entry in batch]
        if sum(len(run[0]) for run in runs) > MAX_MESSAGES_PER_CALL:
            raise pb.Error(f"DeliverPackedRuns carries at most {MAX_MESSAGES_PER_CALL} messages")
        metrics.RPC_SERVED.labels("DeliverPackedRuns").inc()
        return self.hub.deliver_push_runs_from_peer(runs)

    def perspective_WriteMessages(self, data: Any) -> Any:  # noqa: N802
        """Messages to a group homed here, packed (:func:`~gochat.logic.affinity.pack_forwards`).

        The calling node's clients sent them; this node commits them in its
        own batches (see :mod:`gochat.logic.affinity`) and answers, once all
        are committed, with their (code, seq) pairs packed as 16 bytes each.
        """
        if not isinstance(data, bytes):
            raise pb.Error("WriteMessages takes packed messages (bytes)")
        try:
            entries = unpack_forwards(data)
        except ValueError as exc:
            raise pb.Error(f"WriteMessages: {exc}") from None
        if not 0 < len(entries) <= FORWARDS_PER_CALL:
            raise pb.Error(f"WriteMessages takes 1 to {FORWARDS_PER_CALL} messages")
        checked = _forward_entries(entries)
        metrics.RPC_SERVED.labels("WriteMessages").inc()
        return self.hub.write_from_peer(self.peer_id, checked).addCallback(codec.pack_pairs)

    def perspective_DeliverNotice(self, notices: Any) -> int:  # noqa: N802
        """``{receiver_id: frame or [frames]}`` of read/typing notices, never pushes."""
        if not isinstance(notices, dict) or len(notices) > MAX_USERS_PER_CALL:
            raise pb.Error("DeliverNotice takes a dict of receiver_id to frames")
        batch = {_user_id(uid): _frames(data) for uid, data in notices.items()}
        metrics.RPC_SERVED.labels("DeliverNotice").inc()
        return self.hub.deliver_notice_from_peer(batch)

    def perspective_KickDevice(  # noqa: N802
        self, user_id: Any, device_id: Any
    ) -> bool | defer.Deferred[bool]:
        """The device logged in on the calling node: close its connection here."""
        uid = _user_id(user_id)
        if isinstance(device_id, bytes):
            device_id = device_id.decode("utf-8", "replace")
        if not isinstance(device_id, str) or not 0 < len(device_id) <= MAX_DEVICE_ID:
            raise pb.Error("device_id must be a non-empty string")
        metrics.RPC_SERVED.labels("KickDevice").inc()
        reason = f"the same device logged in on node {self.peer_id}"
        if self.presence is None:
            return self.hub.kick_device(uid, device_id, reason)

        def decide(holder: str | None) -> bool:
            if holder == self.presence.node_id:
                return False  # a newer login of the device is here: the kick is stale
            return bool(self.hub.kick_device(uid, device_id, reason))

        holder: defer.Deferred[str | None] = self.presence.device_holder(uid, device_id)
        return holder.addCallback(decide)


def _user_id(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**63:
        raise pb.Error(f"bad receiver_id {value!r}")
    return value


def _pairs(data: Any, most: int) -> bool:
    return (
        isinstance(data, bytes)
        and len(data) <= most * codec.PAIR_SIZE
        and len(data) % codec.PAIR_SIZE == 0
    )


def _push_entry(entry: Any) -> tuple[bytes, bytes, bytes]:
    if isinstance(entry, list | tuple) and len(entry) in (2, 3):
        base, pairs, *rest = entry
        skip = rest[0] if rest else b""
        if (
            isinstance(base, bytes)
            and 0 < len(base) <= MAX_BASE
            and _pairs(pairs, MAX_USERS_PER_CALL)
            and pairs
            and _pairs(skip, MAX_MESSAGES_PER_CALL)
        ):
            return base, pairs, skip
    raise pb.Error(
        "a push is [message base (bytes), (user_id, seq) pairs (16 bytes each),"
        " optionally (index, device tag) pairs to skip]"
    )


def _run_entry(entry: Any) -> tuple[list[bytes], bytes, bytes]:
    if isinstance(entry, list | tuple) and len(entry) in (2, 3):
        bases, pairs, *rest = entry
        if isinstance(bases, list) and 0 < len(bases) <= MAX_MESSAGES_PER_CALL:
            _, _, skip = _push_entry([bases[0], pairs, *rest])  # the pairs, once
            # by C loops: a run's bases are checked on every node it reaches
            sizes = list(map(len, bases)) if set(map(type, bases)) == {bytes} else [0]
            if min(sizes) > 0 and max(sizes) <= MAX_BASE:
                return bases, pairs, skip
    raise pb.Error(
        "a run is [[message base, ...], (user_id, first seq) pairs (16 bytes each),"
        " optionally (index, device tag) pairs to skip]"
    )


def _unpacked_run(entry: Any) -> list[Any]:
    """A packed run as ``DeliverPushRuns`` has it: its bases a list again."""
    if isinstance(entry, list | tuple) and len(entry) in (2, 3) and isinstance(entry[0], bytes):
        try:
            return [codec.unpack_bases(entry[0], MAX_MESSAGES_PER_CALL), *entry[1:]]
        except ValueError as exc:
            raise pb.Error(f"a packed run's bases: {exc}") from None
    raise pb.Error(
        "a packed run is [packed message bases, (user_id, first seq) pairs (16 bytes each),"
        " optionally (index, device tag) pairs to skip]"
    )


def _forward_entries(
    entries: list[tuple[int, str | None, int, bytes, int]],
) -> list[tuple[int, str | None, int, bytes, int]]:
    """``entries`` of :func:`~gochat.logic.affinity.unpack_forwards`, checked; pb.Error if not.

    Their ids are unsigned 64-bit integers as unpacked, so only their range
    is checked, column by column by C loops (every forwarded message of a
    cluster passes here).
    """
    user_ids, devices, client_ids, messages, tags = zip(*entries, strict=True)
    if (
        min(user_ids) > 0
        and min(client_ids) > 0
        and min(tags) > 0
        and max(max(user_ids), max(client_ids), max(tags)) < 2**63
        and max(map(len, messages)) <= MAX_BASE
        and max(map(len, filter(None, devices)), default=0) <= MAX_DEVICE_ID
    ):
        return entries
    raise pb.Error(
        "a forwarded message has a user_id, client_id and tag from 1 to 2**63 - 1"
        f" and a device_id of at most {MAX_DEVICE_ID} characters"
    )


def _frames(data: Any) -> list[bytes]:
    if isinstance(data, bytes):
        return [data]
    if (
        isinstance(data, list)
        and 0 < len(data) <= MAX_FRAMES_PER_USER
        and all(isinstance(f, bytes) for f in data)
    ):
        return data
    raise pb.Error("data must be an Output frame (bytes) or a list of them")


@implementer(portal.IRealm)
class NodeRealm:
    """Hands a logged-in peer its perspective on this node's hub."""

    def __init__(self, hub: PeerHub, presence: Any = None) -> None:
        self.hub = hub
        self.presence = presence

    def requestAvatar(self, avatar_id: Any, mind: Any, *interfaces: Any) -> Any:  # noqa: N802
        if pb.IPerspective not in interfaces:
            raise NotImplementedError("only PB perspectives")
        peer_id = avatar_id.decode() if isinstance(avatar_id, bytes) else str(avatar_id)
        return pb.IPerspective, PeerPerspective(self.hub, peer_id, self.presence), lambda: None


class PeerBroker(Broker):
    """The broker of a connection to ``--rpc``: bytes that are not PB drop the connection
    with one line logged (else the reactor logs a traceback for each such connection)."""

    def dataReceived(self, chunk: bytes) -> None:  # noqa: N802 - Twisted's name
        try:
            super().dataReceived(chunk)
        except (banana.BananaError, NotImplementedError, KeyError) as exc:
            # what Banana raises for bytes it cannot decode (KeyError: an unknown vocabulary entry)
            transport: Any = self.transport  # TCP or TLS over TCP: both can abort
            _log.warn(
                "rpc: dropping {peer}: not Perspective Broker ({error})",
                peer=transport.getPeer(),
                error=f"{type(exc).__name__}: {exc}",
            )
            transport.abortConnection()


def build_rpc_factory(hub: PeerHub, secret: bytes, presence: Any = None) -> pb.PBServerFactory:
    """The factory to listen with on ``--rpc``; ``presence`` tells stale kicks apart."""
    p = portal.Portal(NodeRealm(hub, presence), [ClusterSecretChecker(secret)])
    factory = pb.PBServerFactory(p, unsafeTracebacks=False)
    factory.protocol = PeerBroker  # Banana decoded by offset (see gochat._twisted)
    return factory
