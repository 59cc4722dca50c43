"""A GoChat WebSocket client that never loses, duplicates or reorders.

Upstream: messages are numbered 1, 2, 3, … and retransmitted until ACKed;
a 1004 is retried, a 1011 rewinds to the oldest unACKed message, a permanent
code fails the send. Downstream: the application sees every message of the
user's list exactly once, in seq order — pushes whose seq it already holds
are dropped, and a gap (seq > held + 1) triggers a sync first. Messages this
client sent itself are known from their ACK and not handed back; one that
comes back (in a sync) before its ACK, and looks like a message still waiting
for its ACK, is held until that ACK says whose it is.

Every request has a timer, so a frame lost on the way (or a server that never
answers) costs a retransmit, not a stuck client: messages are sent again, a
sync is asked again, and a login left unanswered closes the connection so the
caller can reconnect.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlparse

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from google.protobuf.message import DecodeError
from twisted.internet import defer, endpoints, ssl
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger

from gochat import codec, codes
from gochat.pb import pb

RETRYABLE = {codes.SERVER_ERROR, codes.NOT_LOGGED_IN, codes.RATE_LIMITED}

#: (session_type, receiver_id, message_type, content) of a message.
_ContentKey = tuple[int, int, int, bytes]
#: What :attr:`GoChatClient.disconnected` fires with: the close code and reason.
CloseInfo = tuple[int | None, str | None]


class SendError(Exception):
    """The server refused a message (or a login) for good; ``code`` says why."""

    def __init__(self, code: int, what: str = "message") -> None:
        super().__init__(f"{what} refused with code {code}")
        self.code = code


@dataclass
class _Pending:
    client_id: int
    message: pb.Message
    deferred: defer.Deferred[int]  # fires with the sender's seq
    timer: Any = None
    transmitted: bool = False  # sent at least once, so the server may hold it


def _content_key(msg: pb.Message) -> _ContentKey:
    """What a message this client sent looks like when it comes back from the server."""
    return (msg.session_type, msg.receiver_id, msg.message_type, msg.content)


class GoChatClient:
    """One user's device. Attach it to a connection with :func:`connect`."""

    log = Logger()

    def __init__(
        self,
        token: str,
        device_id: str = "",
        push_ack: bool = False,
        reactor: Any = None,
        retransmit_timeout: float = 3.0,
        seq: int = 0,
        login_timeout: float = 10.0,
        on_message: Callable[[pb.Message], None] | None = None,
        notices: bool = False,
        on_read: Callable[[pb.ReadMsg], None] | None = None,
        on_typing: Callable[[pb.TypingMsg], None] | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.reactor = reactor
        self.token = token
        self.device_id = device_id
        self.push_ack = push_ack
        self.retransmit_timeout = retransmit_timeout
        self.login_timeout = login_timeout
        self.seq = seq  # every message up to here has been handed over, in order
        self.on_message = on_message
        # notices: ask at login for CT_Read and CT_Typing frames (GoChat's clients never do).
        self.notices = notices
        self.on_read = on_read
        self.on_typing = on_typing
        self._reads: list[tuple[tuple[int, int, int], defer.Deferred[pb.ReadMsg]]] = []
        self.on_output: Callable[[pb.Output], None] | None = None
        self.received: list[pb.Message] = []  # what on_message was given, for tests
        self.last_client_id = 0
        self.server_seq = 0
        self.logged_in = False
        self.proto: Any = None
        self._unacked: dict[int, _Pending] = {}
        self._buffer: dict[int, pb.Message] = {}
        self._own: set[int] = set()
        self._inflight: Counter[_ContentKey] = (
            Counter()
        )  # content keys of transmitted, unACKed sends
        self._syncing: defer.Deferred[None] | None = None  # only says a sync is running
        self._sync_timer: Any = None
        self._login_timer: Any = None
        self._sync_waiters: list[defer.Deferred[int]] = []
        self._login: defer.Deferred[GoChatClient] | None = None
        self.disconnected: defer.Deferred[CloseInfo] = defer.Deferred()

    # -- connection ----------------------------------------------------------

    def attach(self, proto: Any) -> defer.Deferred[GoChatClient]:
        """Log in over a freshly opened connection; fires when caught up."""
        self.proto = proto
        self.logged_in = False
        self.disconnected = defer.Deferred()
        self._login = defer.Deferred()
        login = pb.LoginMsg(
            token=self.token.encode(),
            device_id=self.device_id,
            push_ack=self.push_ack,
            notices=self.notices,
        )
        self._send(pb.CT_Login, login.SerializeToString())
        self._login_timer = self.reactor.callLater(self.login_timeout, self._login_timed_out)
        return self._login

    def _login_timed_out(self) -> None:
        self._login_timer = None
        if not self.logged_in and self.proto is not None:
            self.log.warn("no answer to login: closing the connection")
            self.proto.sendClose(code=1000)

    def connection_lost(self, code: int | None, reason: str | None) -> None:
        self.proto = None
        self.logged_in = False
        self._cancel_timers()
        for pending in self._unacked.values():
            if pending.timer is not None and pending.timer.active():
                pending.timer.cancel()
            pending.timer = None
        if self._login is not None:
            d, self._login = self._login, None
            d.errback(ConnectionError(f"closed before login: {code} {reason}"))
        syncing, self._syncing = self._syncing, None
        if syncing is not None:
            self._finish_sync(ConnectionError("connection lost during sync"))
        reads, self._reads = self._reads, []
        for _, waiter in reads:
            waiter.errback(ConnectionError("connection lost before the read was answered"))
        self.disconnected.callback((code, reason))

    def _cancel_timers(self) -> None:
        for name in ("_sync_timer", "_login_timer"):
            timer = getattr(self, name)
            if timer is not None and timer.active():
                timer.cancel()
            setattr(self, name, None)

    def close(self) -> defer.Deferred[CloseInfo]:
        if self.proto is not None:
            self.proto.sendClose(code=1000)
        return self.disconnected

    def _send(self, cmd: pb.CmdType, data: bytes) -> None:
        if self.proto is not None:
            self.proto.sendMessage(pb.Input(type=cmd, data=data).SerializeToString(), True)

    def heartbeat(self) -> None:
        self._send(pb.CT_Heartbeat, b"")

    # -- upstream ------------------------------------------------------------

    def send(self, message: pb.Message) -> defer.Deferred[int]:
        """Send until ACKed; fires with the sender's seq, or fails with :class:`SendError`."""
        self.last_client_id += 1
        pending = _Pending(self.last_client_id, message, defer.Deferred())
        self._unacked[pending.client_id] = pending
        if self.logged_in:
            self._transmit(pending)
        return pending.deferred

    def send_text(self, receiver_id: int, text: str, group: bool = False) -> defer.Deferred[int]:
        return self.send(
            pb.Message(
                session_type=pb.ST_Group if group else pb.ST_Single,
                receiver_id=receiver_id,
                message_type=pb.MT_Text,
                content=text.encode(),
            )
        )

    def _transmit(self, pending: _Pending) -> None:
        up = pb.UpMsg(msg=pending.message, clientId=pending.client_id)
        self._send(pb.CT_Message, up.SerializeToString())
        if not pending.transmitted:
            pending.transmitted = True
            self._inflight[_content_key(pending.message)] += 1
        if pending.timer is not None and pending.timer.active():
            pending.timer.cancel()
        pending.timer = self.reactor.callLater(
            self.retransmit_timeout, self._timed_out, pending.client_id
        )

    def _timed_out(self, client_id: int) -> None:
        pending = self._unacked.get(client_id)
        if pending is not None:
            pending.timer = None
            if self.logged_in:
                self._transmit(pending)

    def _resend_from(self, client_id: int) -> None:
        for cid in sorted(self._unacked):
            if cid >= client_id:
                self._transmit(self._unacked[cid])

    def _on_up_ack(self, code: int, ack: pb.ACKMsg) -> None:
        pending = self._unacked.get(ack.clientId)
        if pending is None:
            return  # a duplicate ACK
        if code == codes.OK:
            self._settle(pending)
            if ack.seq > self.seq:
                self._own.add(ack.seq)
            self._drain()
            pending.deferred.callback(ack.seq)
        elif code == codes.OUT_OF_ORDER:
            self._resend_from(min(self._unacked))
        elif code in RETRYABLE:
            pass  # the retransmit timer will send it again
        else:
            self._settle(pending)
            self._drain()  # a message held as possibly this one is someone else's
            pending.deferred.errback(SendError(code))

    def _settle(self, pending: _Pending) -> None:
        """``pending`` has its final ACK: stop retransmitting it."""
        del self._unacked[pending.client_id]
        if pending.timer is not None and pending.timer.active():
            pending.timer.cancel()
        if pending.transmitted:
            key = _content_key(pending.message)
            self._inflight[key] -= 1
            if self._inflight[key] <= 0:
                del self._inflight[key]

    # -- downstream ----------------------------------------------------------

    def frame_received(self, payload: bytes) -> None:
        """One server frame: an ``Output``, or an ``OutputBatch`` of them (first byte 0x0A)."""
        try:
            outputs = codec.split_outputs(payload)
        except DecodeError:
            self.log.warn("undecodable frame from the server")
            return
        for output in outputs:
            self._output_received(output)

    def _output_received(self, payload: bytes) -> None:
        try:
            out = pb.Output.FromString(payload)
        except DecodeError:
            self.log.warn("undecodable frame from the server")
            return
        if self.on_output is not None:
            self.on_output(out)
        if out.type == pb.CT_ACK:
            ack = pb.ACKMsg.FromString(out.data)
            if ack.type == pb.AT_Login:
                self._on_login_ack(out.code, ack)
            elif ack.type == pb.AT_Up:
                self._on_up_ack(out.code, ack)
        elif out.type == pb.CT_Message and out.code == codes.OK:
            msg = pb.PushMsg.FromString(out.data).msg
            self._offer(msg)
            if self.push_ack:
                self._ack_pushes()
            if self._gap() and self._syncing is None:
                self._catch_up()
        elif out.type == pb.CT_Sync:
            self._on_sync(out.code, pb.SyncOutputMsg.FromString(out.data))
        elif out.type in (pb.CT_Read, pb.CT_Typing):
            self._on_notice(out)

    def _ack_pushes(self) -> None:
        """Cumulative: every message up to the held seq has arrived."""
        self._send(pb.CT_ACK, pb.ACKMsg(type=pb.AT_Push, seq=self.seq).SerializeToString())

    def _gap(self) -> bool:
        """A later message is waiting for one this client does not have."""
        return bool(self._buffer) and self.seq + 1 not in self._buffer

    def _on_login_ack(self, code: int, ack: pb.ACKMsg) -> None:
        if self.logged_in or self.proto is None:
            return  # a second answer, e.g. to a login frame the network repeated
        if self._login_timer is not None and self._login_timer.active():
            self._login_timer.cancel()
        self._login_timer = None
        d, self._login = self._login, None
        if code != codes.OK:
            # Refused: this connection is of no use, whatever the server does with it.
            if d is not None:
                d.errback(SendError(code, "login"))
            if self.proto is not None:
                self.proto.sendClose(code=1000)
            return
        self.logged_in = True
        self.server_seq = ack.seq
        if self.device_id:
            self._renumber_untransmitted(ack.clientId)
        elif self._unacked:
            # The window belonged to the old connection: number what is left anew.
            renumbered = {}
            for i, cid in enumerate(sorted(self._unacked), start=1):
                pending = self._unacked[cid]
                pending.client_id = i
                renumbered[i] = pending
            self._unacked = renumbered
            self.last_client_id = len(renumbered)
        else:
            self.last_client_id = 0
        for cid in sorted(self._unacked):
            self._transmit(self._unacked[cid])
        if d is None:
            self._catch_up()
            return
        # One chain (addCallback returns the same Deferred), so its type follows the callback.
        self.sync().addCallback(lambda _: self).chainDeferred(d)

    def _renumber_untransmitted(self, server_last: int) -> None:
        """Number never-sent messages after the device's last clientId on the server.

        A message this client never sent cannot be on the server, so it must
        not reuse a clientId the device already spent (in an earlier run, say):
        the server would answer with the old message's ACK and this one would
        be lost. Messages sent before keep their number: they may be stored.
        """
        sent = [cid for cid, p in self._unacked.items() if p.transmitted]
        base = max([server_last, *sent])
        fresh = sorted(cid for cid, p in self._unacked.items() if not p.transmitted)
        if fresh and fresh[0] <= base:
            moved = {cid: self._unacked.pop(cid) for cid in fresh}
            for i, cid in enumerate(fresh, start=base + 1):
                moved[cid].client_id = i
                self._unacked[i] = moved[cid]
        self.last_client_id = max([base, *self._unacked])

    def sync(self) -> defer.Deferred[int]:
        """Pull everything after the held seq; fires with it when ``has_more`` is false."""
        waiter: defer.Deferred[int] = defer.Deferred()
        self._sync_waiters.append(waiter)
        if self._syncing is None:
            self._syncing = defer.Deferred()
            self._request_sync()
        return waiter

    def _catch_up(self) -> None:
        """A sync nobody waits for: a lost connection ends it, the next login syncs again."""
        self.sync().addErrback(lambda f: f.trap(ConnectionError, SendError))

    def _request_sync(self) -> None:
        self._send(pb.CT_Sync, pb.SyncInputMsg(seq=self.seq).SerializeToString())
        if self._sync_timer is not None and self._sync_timer.active():
            self._sync_timer.cancel()
        self._sync_timer = self.reactor.callLater(self.retransmit_timeout, self._sync_timed_out)

    def _sync_timed_out(self) -> None:
        self._sync_timer = None
        if self._syncing is not None and self.logged_in:
            self._request_sync()  # the request or its answer was lost

    def _on_sync(self, code: int, body: pb.SyncOutputMsg) -> None:
        if self._syncing is None:
            return
        if self._sync_timer is not None and self._sync_timer.active():
            self._sync_timer.cancel()
        self._sync_timer = None
        if code != codes.OK:
            self._finish_sync(SendError(code, "sync"))
            return
        for msg in body.messages:
            self._offer(msg)
        if body.has_more:
            self._request_sync()
        else:
            self._finish_sync(None)

    def _finish_sync(self, error: Exception | None) -> None:
        self._syncing = None
        if self._sync_timer is not None and self._sync_timer.active():
            self._sync_timer.cancel()
        self._sync_timer = None
        if error is None and self.push_ack and self.logged_in:
            self._ack_pushes()  # what the sync brought needs no retransmit
        waiters, self._sync_waiters = self._sync_waiters, []
        for waiter in waiters:
            if error is None:
                waiter.callback(self.seq)
            else:
                waiter.errback(error)
        if error is None and self._gap():
            self._catch_up()  # a push raced past the end of the sync

    def _offer(self, msg: pb.Message) -> None:
        if msg.seq <= self.seq or msg.seq in self._buffer:
            return
        self._buffer[msg.seq] = msg
        self._drain()

    def _drain(self) -> None:
        while True:
            nxt = self.seq + 1
            if nxt in self._own:
                self._own.discard(nxt)
                self._buffer.pop(nxt, None)
                self.seq = nxt
                continue
            msg = self._buffer.get(nxt)
            if msg is None:
                break
            if self._inflight and _content_key(msg) in self._inflight:
                break  # maybe one of ours whose ACK is on the way: it will tell
            del self._buffer[nxt]
            self.seq = nxt
            self.received.append(msg)
            if self.on_message is not None:
                self.on_message(msg)
        self._own = {s for s in self._own if s > self.seq}

    # -- read positions and typing -------------------------------------------

    def send_read(self, session_type: int, peer_id: int, seq: int) -> defer.Deferred[pb.ReadMsg]:
        """Say the conversation is read up to ``seq`` (this user's own seq).

        Fires with the node's answer (a ``ReadMsg`` whose ``seq`` is the read
        position now, never lower than before) or fails with
        :class:`SendError` (1001: ``seq`` is not a message of that
        conversation; 1005: no such conversation). The user's other devices
        and, one to one, the peer are told by the node. Not retransmitted: a
        read position lost with the connection is covered by the next read.
        """
        key = (session_type, peer_id, seq)
        waiter: defer.Deferred[pb.ReadMsg] = defer.Deferred()
        if not self.logged_in:
            waiter.errback(SendError(codes.NOT_LOGGED_IN, "read"))
            return waiter
        self._reads.append((key, waiter))
        read = pb.ReadMsg(session_type=_session_type(session_type), peer_id=peer_id, seq=seq)
        self._send(pb.CT_Read, read.SerializeToString())
        return waiter

    def send_typing(self, session_type: int, peer_id: int) -> None:
        """Tell the conversation's online devices that this user is typing.

        Not stored and not answered; the node drops notices past one a second
        (a burst of 5) with a 1013, which this client ignores.
        """
        if self.logged_in:
            typing = pb.TypingMsg(session_type=_session_type(session_type), peer_id=peer_id)
            self._send(pb.CT_Typing, typing.SerializeToString())

    def _on_notice(self, out: pb.Output) -> None:
        """A CT_Read or CT_Typing frame: the answer to a send_read, or a notice."""
        try:
            body: Any = (pb.ReadMsg if out.type == pb.CT_Read else pb.TypingMsg).FromString(
                out.data
            )
        except DecodeError:
            self.log.warn("undecodable notice from the server")
            return
        if out.type == pb.CT_Read:
            # A peer's receipt names the reader as the peer; an answer to this
            # device names this user, who is never their own peer.
            receipt = body.session_type == pb.ST_Single and body.reader_id == body.peer_id
            for i, (wanted, waiter) in enumerate(self._reads):
                answers = (body.session_type, body.peer_id) == wanted[:2] and body.seq >= wanted[2]
                # A refusal may come without the fields: the node answers in order.
                if out.code != codes.OK or (answers and not receipt):
                    del self._reads[i]
                    if out.code == codes.OK:
                        waiter.callback(body)
                    else:
                        waiter.errback(SendError(out.code, "read"))
                    return
            if out.code == codes.OK and self.on_read is not None:
                self.on_read(body)
        elif out.code == codes.OK and self.on_typing is not None:
            self.on_typing(body)


def _session_type(value: int) -> pb.SessionType:
    """``value`` as the stubs' enum type: protobuf takes any int for an (open) enum field."""
    return cast("pb.SessionType", value)


def system_event(msg: pb.Message) -> dict[str, Any] | None:
    """The JSON of an ``MT_System`` message (a group event), or None for any other.

    Keys: ``event`` (``members_added``, ``members_removed``, ``member_left``,
    ``group_renamed``), ``group_id``, ``actor_id``, ``user_ids``, ``name``,
    ``owner_id``; ids as the node writes them (decimal strings or numbers).
    Content that is not a JSON object gives ``{}``, so a caller can still
    show that something happened.
    """
    if msg.message_type != pb.MT_System:
        return None
    try:
        event = json.loads(msg.content)
    except ValueError:
        return {}
    return event if isinstance(event, dict) else {}


class _ClientFactory(WebSocketClientFactory):
    """The factory of one :func:`connect`: the client to attach and what fires when it is."""

    client: GoChatClient
    ready: defer.Deferred[GoChatClient]


class _ClientProtocol(WebSocketClientProtocol):
    factory: _ClientFactory

    def onOpen(self) -> None:  # noqa: N802
        client: GoChatClient = self.factory.client
        d = client.attach(self)
        d.chainDeferred(self.factory.ready)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:  # noqa: N802
        self.factory.client.frame_received(payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:  # noqa: N802
        client: GoChatClient = self.factory.client
        if client.proto is self:
            client.connection_lost(code, reason)
        elif not self.factory.ready.called:
            self.factory.ready.errback(ConnectionError(f"could not open: {reason}"))


def client_endpoint(reactor: Any, url: str, trust_root: Any = None) -> IStreamClientEndpoint:
    """The endpoint for a ``ws://`` or ``wss://`` URL (certificates verified for wss)."""
    parsed = urlparse(url)
    host = parsed.hostname or "127.0.0.1"
    if parsed.scheme == "wss":
        port = parsed.port or 443
        options = ssl.optionsForClientTLS(host, trustRoot=trust_root)
        return endpoints.wrapClientTLS(options, endpoints.HostnameEndpoint(reactor, host, port))
    if parsed.scheme == "ws":
        return endpoints.HostnameEndpoint(reactor, host, parsed.port or 80)
    raise ValueError(f"not a ws:// or wss:// URL: {url!r}")


def connect(
    url: str,
    token: str | None = None,
    *,
    client: GoChatClient | None = None,
    reactor: Any = None,
    trust_root: Any = None,
    **client_kwargs: Any,
) -> defer.Deferred[GoChatClient]:
    """Connect, log in and sync; fires with the :class:`GoChatClient`.

    Pass ``client=`` to reconnect an existing client (its unACKed messages are
    sent again and its seq is kept).
    """
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    if client is None:
        if token is None:
            raise ValueError("a token or a client is needed")
        client = GoChatClient(token, reactor=reactor, **client_kwargs)
    factory = _ClientFactory(url)
    factory.protocol = _ClientProtocol
    factory.client = client
    factory.ready = defer.Deferred()
    factory.setProtocolOptions(maxMessagePayloadSize=0, maxFramePayloadSize=0)
    d = client_endpoint(reactor, url, trust_root).connect(factory)
    return d.addCallback(lambda _: factory.ready)
