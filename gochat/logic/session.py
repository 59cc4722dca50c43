"""One client connection's conversation: decode, dispatch on CmdType, reply.

A :class:`Session` is fed whole frames by a transport (the WebSocket
gateway, or a fake connection in tests) and answers through its
:class:`Connection`. It keeps the connection's login state and liveness;
node-wide state (devices, who is online, the writer) lives in the hub.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from google.protobuf.message import DecodeError
from twisted.logger import Logger

from gochat import codec, codes, metrics
from gochat.auth import BadToken, Claims
from gochat.inputs import text_problem
from gochat.pb import pb
from gochat.store import UpItem
from gochat.store.store import MAX_ID, NotFound

if TYPE_CHECKING:
    from gochat.logic.hub import DeviceState, Hub

MAX_DEVICE_ID = 128
#: Typing notices a connection may send: TYPING_RATE a second, TYPING_BURST at once.
TYPING_RATE = 1.0
TYPING_BURST = 5
#: Frames refused for the rate limit in a row before the connection is closed.
RATE_STRIKES = 100


class Connection(Protocol):
    """What a session needs of its transport."""

    peer: str

    def send(self, frame: bytes) -> None:
        """Send one ``Output`` frame."""

    def send_many(self, frames: list[bytes]) -> None:
        """Send several ``Output`` frames, in order, in as few writes as possible."""

    def send_run(self, run: codec.PushRun, first_seq: int, skip: Collection[int] = ()) -> bool:
        """Send ``run.frames(first_seq)`` (but those at ``skip``) if it can do so cheaper.

        False: it sent nothing.
        """

    def close(self, reason: str, going_away: bool = False) -> None:
        """Close the connection (politely); ``connection_lost`` follows."""


def _refusal(cmd: int, code: int) -> bytes:
    """A reply with ``code`` in the shape of ``cmd``'s success reply (DESIGN.md section 4)."""
    if cmd == pb.CT_Login:
        return codec.ack_frame(pb.AT_Login, code)
    if cmd == pb.CT_Sync:
        return codec.sync_frame([], False, code)
    if cmd == pb.CT_ACK:
        return codec.ack_frame(pb.AT_Push, code)
    if cmd in (pb.CT_Read, pb.CT_Typing):
        return codec.error_frame(code, cmd)
    return codec.error_frame(code)


class Session:
    log = Logger()

    def __init__(self, hub: Hub, conn: Connection) -> None:
        self.hub = hub
        self.conn = conn
        self.clock = hub.clock
        self.user_id = 0
        self.device: DeviceState | None = None
        self.push_ack = False
        #: logged in with ``notices``: gets CT_Read and CT_Typing frames
        self.notices = False
        self._typing_allowance = float(TYPING_BURST)
        self._typing_time = 0.0
        #: (accepted, pending] clientIds in flight when this connection took the device over
        self.inherited = (0, 0)
        self.closed = False
        #: ACKs of forwarded messages waiting for this connection's next output
        #: (see :meth:`send_ack_later`), with when each message arrived
        self._acks_waiting: list[tuple[bytes, float]] | None = None
        self.authenticated = False  # has logged in once (the hub counts the others)
        self._logging_in = False
        #: the claims of the token this session logs (or logged) in with
        self.claims: Claims | None = None
        self._revoked = False  # closed by /logout_all: a login in flight must not complete
        self._expiry_timer: Any = None
        self.last_active = self.clock.seconds()
        self._allowance = float(hub.config.msg_burst)
        self._rate_time = self.last_active
        self._refused = 0
        self._login_timer: Any = self.clock.callLater(hub.config.login_timeout, self._login_timeout)

    @property
    def logged_in(self) -> bool:
        return self.device is not None

    @property
    def revoked(self) -> bool:
        """Closing because of ``/logout_all``: a login in flight must not complete."""
        return self._revoked

    # -- transport side ------------------------------------------------------

    def frame_received(self, payload: bytes, is_binary: bool = True) -> None:
        """Handle one whole WebSocket message."""
        if self.closed or self.hub.draining:
            return  # a frame not read at shutdown is not ACKed: the client resends it
        now = self.last_active = self.clock.seconds()
        config = self.hub.config
        allowance = self._allowance + (now - self._rate_time) * config.msg_rate
        if allowance > config.msg_burst:
            allowance = config.msg_burst
        self._rate_time = now
        if allowance < 1:
            self._allowance = allowance
            self._rate_limited(payload, is_binary)
            return
        self._allowance = allowance - 1
        self._refused = 0
        if not is_binary:
            self.send(codec.error_frame(codes.PARAM_ILLEGAL))
            return
        too_large = len(payload) > self.hub.config.max_frame
        try:
            frame = codec.decode_input(payload)
        except DecodeError:
            self.send(codec.error_frame(codes.TOO_LARGE if too_large else codes.PARAM_ILLEGAL))
            return
        handler = self._handlers.get(frame.type)
        if handler is None:
            # Junk over --max-frame can parse as some Input: its size is the error.
            self.send(codec.error_frame(codes.TOO_LARGE if too_large else codes.UNKNOWN_COMMAND))
            return
        if too_large and frame.type != pb.CT_Message:
            # An upstream message still gets its ACK (and consumes its clientId).
            self.send(_refusal(frame.type, codes.TOO_LARGE))
            return
        handler(self, frame.data, too_large)

    def _rate_limited(self, payload: bytes, is_binary: bool) -> None:
        """Answer 1013 in the shape of the frame's reply; close if it goes on."""
        metrics.REFUSED.labels("msg_rate").inc()
        self._refused += 1
        if self._refused > RATE_STRIKES:
            if self._refused == RATE_STRIKES + 1:
                self.close("message rate limit exceeded")
            return
        code = codes.RATE_LIMITED
        try:
            frame = codec.decode_input(payload) if is_binary else None
        except DecodeError:
            frame = None
        if frame is None:
            self.send(codec.error_frame(code))
        elif frame.type == pb.CT_Message:
            try:
                cid = pb.UpMsg.FromString(frame.data).clientId
            except DecodeError:
                cid = 0
            # Not consumed: the client retries it after backing off.
            self.send(codec.ack_frame(pb.AT_Up, code, cid))
        elif frame.type == pb.CT_Login:
            self.send(codec.ack_frame(pb.AT_Login, code))
        elif frame.type == pb.CT_Sync:
            self.send(codec.sync_frame([], False, code))
        elif frame.type != pb.CT_Heartbeat:
            self.send(codec.error_frame(code, frame.type if frame.type in self._handlers else 0))

    def send(self, frame: bytes) -> None:
        if self.closed:
            return
        if self._acks_waiting is not None:
            self.flush_acks()
        self.last_active = self.clock.seconds()
        self.conn.send(frame)

    def send_many(self, frames: list[bytes]) -> None:
        if self.closed or not frames:
            return
        if self._acks_waiting is not None:
            self.flush_acks()
        self.last_active = self.clock.seconds()
        self.conn.send_many(frames)

    def send_ack_later(self, frame: bytes, started: float) -> None:
        """An ACK that goes out with this connection's next output, or at the hub's timer.

        A message forwarded to its group's home is answered a moment before
        the home's pushes of the same batch arrive here: on its own the ACK
        would cost the connection a write and a system call of its own. Every
        output goes after the ACKs waiting, so the device still gets its ACK
        before anything sent later.
        """
        if self.closed:
            return
        waiting = self._acks_waiting
        if waiting is None:
            self._acks_waiting = [(frame, started)]
            self.hub.ack_waiting(self)
        else:
            waiting.append((frame, started))

    def flush_acks(self) -> None:
        """Send the ACKs :meth:`send_ack_later` kept, in order."""
        waiting, self._acks_waiting = self._acks_waiting, None
        if not waiting or self.closed:
            return
        now = self.last_active = self.clock.seconds()
        if len(waiting) == 1:
            self.conn.send(waiting[0][0])
        else:
            self.conn.send_many([frame for frame, _ in waiting])
        observe = metrics.ACK_LATENCY.observe
        for _, started in waiting:
            observe(now - started)

    def push(self, seq: int, frame: bytes) -> None:
        """A push of the message with this user's ``seq``; tracked for ``push_ack`` devices."""
        if self.closed:
            return
        if self._acks_waiting is not None:
            self.flush_acks()
        # The hot path of a group fan-out: Session.send inlined.
        self.last_active = self.clock.seconds()
        self.conn.send(frame)
        if self.push_ack:
            self.hub.pushes.track(self, seq, frame)

    def push_run(self, first_seq: int, frames: list[bytes]) -> None:
        """Pushes of consecutive seqs from ``first_seq``, in one go (a group block's)."""
        if self.closed:
            return
        if self._acks_waiting is not None:
            self.flush_acks()
        self.last_active = self.clock.seconds()
        self.conn.send_many(frames)
        if self.push_ack:
            track = self.hub.pushes.track
            for i, frame in enumerate(frames):
                track(self, first_seq + i, frame)

    def push_block(self, run: codec.PushRun, first_seq: int, skip: Collection[int] = ()) -> int:
        """A group block's pushes (seqs from ``first_seq``), built for this connection's framing.

        The messages at the indexes in ``skip`` came from this connection's
        device: it does not get them. Returns how many went out.
        """
        if self.closed:
            return 0
        if self._acks_waiting is not None:
            self.flush_acks()
        if self.push_ack or not self.conn.send_run(run, first_seq, skip):
            if skip:
                for i, frame in enumerate(run.frames(first_seq)):
                    if i not in skip:
                        self.push(first_seq + i, frame)
            else:
                self.push_run(first_seq, run.frames(first_seq))
        else:
            self.last_active = self.clock.seconds()
        return len(run.bases) - len(skip)

    def connection_lost(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._acks_waiting = None  # the device gets them again when it retransmits
        if self._login_timer is not None and self._login_timer.active():
            self._login_timer.cancel()
        self._login_timer = None
        if self._expiry_timer is not None and self._expiry_timer.active():
            self._expiry_timer.cancel()
        self._expiry_timer = None
        self.hub.session_closed(self)

    def close(self, reason: str, going_away: bool = False) -> None:
        self.log.info("closing {peer}: {reason}", peer=self.conn.peer, reason=reason)
        if self._acks_waiting is not None:
            self.flush_acks()
        self.conn.close(reason, going_away)

    def _login_timeout(self) -> None:
        self._login_timer = None
        if not self.logged_in and not self.closed:
            self.close("no login within the login timeout")

    def _token_expired(self) -> None:
        """The token the session logged in with expired: close (1000), the client logs in anew.

        Closing rather than renewing in place keeps the protocol the Go
        server's: a client gets a fresh token from ``/login`` and reconnects,
        and with a ``device_id`` no message is lost or duplicated across it.
        """
        self._expiry_timer = None
        if not self.closed:
            metrics.LOGINS.labels("expired").inc()
            self.close("token expired")

    def revoke(self, generation: int) -> bool:
        """Close the session if it logs or logged in with a token older than ``generation``."""
        claims = self.claims
        if self.closed or self._revoked or claims is None or claims.generation is None:
            return False
        if claims.generation >= generation:
            return False
        self._revoked = True
        self.close("logged out everywhere")
        return True

    # -- commands ------------------------------------------------------------

    def _on_heartbeat(self, data: bytes, too_large: bool) -> None:
        """Nothing to answer: reading the frame already refreshed liveness."""

    def _on_login(self, data: bytes, too_large: bool) -> None:
        def reply(code: int, client_id: int = 0, seq: int = 0) -> None:
            self.send(codec.ack_frame(pb.AT_Login, code, client_id, seq))

        if self.logged_in or self._logging_in:
            reply(codes.PARAM_ILLEGAL)
            return
        try:
            login = pb.LoginMsg.FromString(data)
        except DecodeError:
            reply(codes.PARAM_ILLEGAL)
            return
        if login.device_id and text_problem(login.device_id, MAX_DEVICE_ID) is not None:
            # NUL, control characters, over-long: a client bug, not worth a retry (1004).
            reply(codes.PARAM_ILLEGAL)
            return
        try:
            claims = self.hub.signer.verify(login.token)
        except BadToken as exc:
            self._bad_token(exc)
            return
        user_id = claims.user_id
        self._logging_in = True
        self.notices = login.notices
        # Set now: a /logout_all while the account is being checked closes this session too.
        self.claims = claims

        def ok(result: tuple[int, int]) -> None:
            self._logging_in = False
            if self.closed or self._revoked:
                return
            if self._login_timer is not None and self._login_timer.active():
                self._login_timer.cancel()
            self._login_timer = None
            # On the hub clock: at expiry the session ends even if it keeps heartbeating.
            delay = max(0.0, claims.expires - self.clock.seconds())
            self._expiry_timer = self.clock.callLater(delay, self._token_expired)
            metrics.LOGINS.labels("ok").inc()
            reply(codes.OK, *result)

        def failed(failure: Any) -> None:
            self._logging_in = False
            if failure.check(BadToken):
                self._bad_token(failure.value)
                return
            metrics.LOGINS.labels("error").inc()
            self.log.failure("login of user {uid} failed", failure, uid=user_id)
            reply(codes.SERVER_ERROR)

        device_id = login.device_id or None
        d = self.hub.check_account(claims)
        d.addCallback(lambda _: self.hub.login(self, user_id, device_id, login.push_ack))
        d.addCallbacks(ok, failed)

    def _bad_token(self, exc: Exception) -> None:
        """1003 and a close: a bad, expired, revoked token or one of no (longer) existing user."""
        metrics.LOGINS.labels("bad_token").inc()
        self.send(codec.ack_frame(pb.AT_Login, codes.UNAUTHORIZED))
        self.close(f"bad token: {exc}")

    def _on_message(self, data: bytes, too_large: bool) -> None:
        try:
            up = codec.decode_up(data)
        except DecodeError:
            code = codes.TOO_LARGE if too_large else codes.PARAM_ILLEGAL
            self.send(codec.ack_frame(pb.AT_Up, code))
            return
        cid = up.clientId
        if not self.logged_in:
            self.send(codec.ack_frame(pb.AT_Up, codes.NOT_LOGGED_IN, cid))
            return
        device = self.device
        assert device is not None
        if cid == 0:
            self.send(
                codec.ack_frame(pb.AT_Up, codes.TOO_LARGE if too_large else codes.PARAM_ILLEGAL)
            )
            return
        if cid <= device.accepted:
            low, high = self.inherited
            if not low < cid <= high:  # else its ACK was already forwarded here
                self.hub.reack(self, device, cid)
            return
        if cid <= device.pending:
            return  # in flight: its ACK is on the way
        if cid != device.pending + 1:
            self.send(codec.ack_frame(pb.AT_Up, codes.OUT_OF_ORDER, cid))
            return
        device.pending = cid
        code = codes.TOO_LARGE if too_large else self._check(up)
        item = UpItem(
            user_id=self.user_id,
            device_id=device.device_id,
            client_id=cid,
            message=up.msg if code == codes.OK else None,
            reject_code=code,
        )
        self.hub.submit(item, device, len(data))

    def _check(self, up: pb.UpMsg) -> int:
        """Permanent rejections that need no database; fills in defaults."""
        if not up.HasField("msg"):
            return codes.PARAM_ILLEGAL
        msg = up.msg
        if msg.sender_id == 0:
            msg.sender_id = self.user_id
        elif msg.sender_id != self.user_id:
            return codes.UNAUTHORIZED_USER_ID
        if msg.session_type not in (pb.ST_Single, pb.ST_Group):
            return codes.PARAM_ILLEGAL
        if msg.message_type not in (pb.MT_UnKnow, pb.MT_Text, pb.MT_Picture, pb.MT_Voice):
            return codes.PARAM_ILLEGAL
        if not 0 < msg.receiver_id <= MAX_ID:
            return codes.NO_DATA
        if msg.session_type == pb.ST_Single and msg.receiver_id == self.user_id:
            return codes.PARAM_ILLEGAL
        if msg.send_time == 0:
            msg.send_time = int(self.clock.seconds() * 1000)
        msg.seq = 0
        return codes.OK

    def _on_ack(self, data: bytes, too_large: bool) -> None:
        try:
            ack = pb.ACKMsg.FromString(data)
        except DecodeError:
            self.send(codec.ack_frame(pb.AT_Push, codes.PARAM_ILLEGAL))
            return
        if not self.logged_in:
            self.send(codec.ack_frame(ack.type, codes.NOT_LOGGED_IN, ack.clientId, ack.seq))
            return
        if ack.type != pb.AT_Push:
            self.send(codec.ack_frame(ack.type, codes.PARAM_ILLEGAL, ack.clientId, ack.seq))
            return
        self.hub.push_acked(self, ack.seq)

    def _on_sync(self, data: bytes, too_large: bool) -> None:
        try:
            request = pb.SyncInputMsg.FromString(data)
        except DecodeError:
            self.send(codec.sync_frame([], False, codes.PARAM_ILLEGAL))
            return
        if not self.logged_in:
            self.send(codec.sync_frame([], False, codes.NOT_LOGGED_IN))
            return

        def ok(result: tuple[list[pb.Message], bool]) -> None:
            self.send(codec.sync_frame(*result))

        def failed(failure: Any) -> None:
            self.log.failure("sync for user {uid} failed", failure, uid=self.user_id)
            self.send(codec.sync_frame([], False, codes.SERVER_ERROR))

        d = self.hub.store.sync(self.user_id, request.seq, self.hub.config.sync_limit)
        d.addCallbacks(ok, failed)

    def _on_read(self, data: bytes, too_large: bool) -> None:
        """A read position, reported by the reader; answered with the position now."""
        try:
            read = pb.ReadMsg.FromString(data)
        except DecodeError:
            self.send(codec.read_frame(0, 0, 0, 0, codes.PARAM_ILLEGAL))
            return
        st, peer, seq = read.session_type, read.peer_id, read.seq

        def reply(code: int, position: int = seq) -> None:
            self.send(codec.read_frame(st, peer, position, self.user_id, code))

        if not self.logged_in:
            reply(codes.NOT_LOGGED_IN)
            return
        if st not in (pb.ST_Single, pb.ST_Group) or not 0 < peer <= MAX_ID or seq == 0:
            reply(codes.PARAM_ILLEGAL)
            return

        def ok(outcome: Any) -> None:
            reply(codes.OK, outcome.read_seq)

        def failed(failure: Any) -> None:
            if failure.check(NotFound):
                reply(codes.NO_DATA)
            elif failure.check(ValueError):
                reply(codes.PARAM_ILLEGAL)
            else:
                self.log.failure("read position of user {uid}", failure, uid=self.user_id)
                reply(codes.SERVER_ERROR)

        self.hub.mark_read(self.user_id, st, peer, seq, origin=self).addCallbacks(ok, failed)

    def _on_typing(self, data: bytes, too_large: bool) -> None:
        """A typing notice: relayed to the peer's devices with ``notices``; no reply if fine."""
        try:
            typing = pb.TypingMsg.FromString(data)
        except DecodeError:
            self.send(codec.error_frame(codes.PARAM_ILLEGAL, pb.CT_Typing))
            return
        if not self.logged_in:
            self.send(codec.error_frame(codes.NOT_LOGGED_IN, pb.CT_Typing))
            return
        now = self.clock.seconds()
        allowance = min(
            float(TYPING_BURST), self._typing_allowance + (now - self._typing_time) * TYPING_RATE
        )
        self._typing_time = now
        if allowance < 1:
            self._typing_allowance = allowance
            self.send(codec.error_frame(codes.RATE_LIMITED, pb.CT_Typing))
            return
        self._typing_allowance = allowance - 1
        st, peer = typing.session_type, typing.peer_id
        if st not in (pb.ST_Single, pb.ST_Group) or not 0 < peer <= MAX_ID:
            self.send(codec.error_frame(codes.PARAM_ILLEGAL, pb.CT_Typing))
            return

        def answer(code: int) -> None:
            if code != codes.OK:
                self.send(codec.error_frame(code, pb.CT_Typing))

        def failed(failure: Any) -> None:
            self.log.failure("typing notice of user {uid}", failure, uid=self.user_id)
            self.send(codec.error_frame(codes.SERVER_ERROR, pb.CT_Typing))

        self.hub.typing(self.user_id, st, peer).addCallbacks(answer, failed)

    #: Each command's handler, as plain functions: a table of the instance's bound
    #: methods would be a reference cycle, and a closed connection's session
    #: would wait for the cyclic collector instead of going at its last reference.
    _handlers: ClassVar[dict[int, Callable[[Session, bytes, bool], None]]] = {
        pb.CT_Login: _on_login,
        pb.CT_Heartbeat: _on_heartbeat,
        pb.CT_Message: _on_message,
        pb.CT_ACK: _on_ack,
        pb.CT_Sync: _on_sync,
        pb.CT_Read: _on_read,
        pb.CT_Typing: _on_typing,
    }
