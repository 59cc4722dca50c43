"""The node's logic on a fake clock: a real Hub over a real SQLite store,
with connections that record the frames the session sends.

Database work runs on real pool threads; everything the hub times (login
timeout, push retransmits) runs on :class:`twisted.internet.task.Clock`.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from gochat import codec
from gochat.auth import TokenSigner
from gochat.logic import Hub, HubConfig, Session
from gochat.pb import pb
from gochat.store import Database, Store, engine_from_url


class Recorder:
    """A connection that keeps every ``Output`` the session sends.

    ``frames`` holds every frame sent, raw; :meth:`next_output` reads them in
    order, and :meth:`unread` is what it has not read yet. Closing records the
    reason and, like a real transport, reports the loss to the session.
    """

    def __init__(self, peer: str = "test") -> None:
        self.peer = peer
        self.frames: list[bytes] = []
        self.closed: str | None = None
        self.session: Session | None = None
        self._read = 0
        self._waiters: list[tuple[Any, defer.Deferred]] = []

    def send(self, frame: bytes) -> None:
        self.frames.append(frame)
        for waiter in list(self._waiters):
            predicate, d = waiter
            if d.called:  # timed out
                self._waiters.remove(waiter)
            elif predicate(self.outputs()):
                self._waiters.remove(waiter)
                d.callback(None)

    def send_many(self, frames: list[bytes]) -> None:
        for frame in frames:
            self.send(frame)

    def send_run(self, run: Any, first_seq: int, skip: Any = ()) -> bool:
        return False  # frame by frame, through send_many

    def close(self, reason: str, going_away: bool = False) -> None:
        self.closed = reason
        if self.session is not None:
            # A real transport reports the loss later; here it is at once.
            self.session.connection_lost()

    def outputs(self) -> list[pb.Output]:
        return [pb.Output.FromString(f) for f in self.frames]

    def unread(self) -> list[pb.Output]:
        """The frames :meth:`next_output` has not returned yet."""
        return [pb.Output.FromString(f) for f in self.frames[self._read :]]

    def mark_read(self) -> None:
        self._read = len(self.frames)

    @defer.inlineCallbacks
    def next_output(self, timeout: float = 10.0) -> Any:
        """The next frame not read yet; waits on the real reactor (the store
        runs in threads) at most ``timeout`` seconds."""
        index = self._read
        yield self.wait_for(lambda outputs: len(outputs) > index).addTimeout(timeout, reactor)
        self._read = index + 1
        return pb.Output.FromString(self.frames[index])

    def pushes(self) -> list[int]:
        """Seqs of every push received, repeats included, in arrival order."""
        return [
            pb.PushMsg.FromString(o.data).msg.seq for o in self.outputs() if o.type == pb.CT_Message
        ]

    def wait_for(self, predicate: Any) -> defer.Deferred:
        """Fires once ``predicate(outputs)`` holds (now or after a later frame)."""
        d: defer.Deferred = defer.Deferred()
        if predicate(self.outputs()):
            d.callback(None)
        else:
            self._waiters.append((predicate, d))
        return d


def frame(cmd: int, body: Any = b"") -> bytes:
    """``Input{cmd, body}`` serialized (``body`` bytes or a protobuf message)."""
    data = body if isinstance(body, bytes) else body.SerializeToString()
    return pb.Input(type=cmd, data=data).SerializeToString()


def login_frame(token: str, device_id: str = "", push_ack: bool = False) -> bytes:
    login = pb.LoginMsg(token=token.encode(), device_id=device_id, push_ack=push_ack)
    return pb.Input(type=pb.CT_Login, data=login.SerializeToString()).SerializeToString()


def up_frame(client_id: int, receiver_id: int, text: str, group: bool = False) -> bytes:
    msg = pb.Message(
        session_type=pb.ST_Group if group else pb.ST_Single,
        receiver_id=receiver_id,
        message_type=pb.MT_Text,
        content=text.encode(),
    )
    up = pb.UpMsg(msg=msg, clientId=client_id)
    return pb.Input(type=pb.CT_Message, data=up.SerializeToString()).SerializeToString()


def push_ack_frame(seq: int) -> bytes:
    ack = pb.ACKMsg(type=pb.AT_Push, seq=seq)
    return pb.Input(type=pb.CT_ACK, data=ack.SerializeToString()).SerializeToString()


def _has_login_ack(outputs: list[pb.Output]) -> bool:
    return any(
        o.type == pb.CT_ACK and pb.ACKMsg.FromString(o.data).type == pb.AT_Login for o in outputs
    )


class LogicTestCase(unittest.TestCase):
    """A hub on a fake clock over a fresh SQLite file."""

    timeout = 60
    hub_config = HubConfig()
    clock_start = 0.0  # what the Clock reads at the start of each test

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        directory = tempfile.mkdtemp(prefix="gochat-logic-")
        engine = engine_from_url("sqlite:" + os.path.join(directory, "gochat.db"), directory)
        self.database = Database(engine)
        self.addCleanup(self.database.close)
        yield self.database.migrate()
        self.store = Store(self.database)
        self.signer = TokenSigner(os.urandom(32))
        self.clock = task.Clock()
        self.clock.advance(self.clock_start)
        # A copy: a test may change its hub's settings.
        self.hub = Hub(self.store, self.signer, self.clock, dataclasses.replace(self.hub_config))
        # The store answers on the real reactor (its threads), and so does the
        # writer's start at the end of a turn; the hub's timers stay on the Clock.
        self.hub.writer.clock = reactor
        # Its pacing would wait in real time, which the fake clock, moved a step
        # a turn, turns into seconds (pacing is tested on a Clock of its own).
        self.hub.writer.pace = 0
        self.addCleanup(self.hub.pushes.stop)

    @defer.inlineCallbacks
    def user(self, name: str) -> Any:
        """Fires with ``(user_id, token)`` of a new user."""
        account = yield self.store.create_account(name, name, "not-a-hash")
        return account.user_id, self.signer.issue(account)

    def connect(self) -> Recorder:
        """A new connection, not logged in; its session is ``conn.session``."""
        conn = Recorder()
        conn.session = self.hub.open_session(conn)
        return conn

    @defer.inlineCallbacks
    def login(self, token: str, device_id: str = "", push_ack: bool = False) -> Any:
        """A logged-in session; fires with ``(session, recorder)``."""
        conn = self.connect()
        assert conn.session is not None
        conn.session.frame_received(login_frame(token, device_id, push_ack))
        yield conn.wait_for(_has_login_ack)
        return conn.session, conn

    @defer.inlineCallbacks
    def logged_in(self, user_id: int, device_id: str = "") -> Any:
        """A connection logged in as ``user_id`` (its login ACK read); fires with it."""
        account = yield self.store.account(user_id)
        _, conn = yield self.login(self.signer.issue(account), device_id)
        conn.mark_read()
        return conn

    @defer.inlineCallbacks
    def send(self, session: Session, conn: Recorder, client_id: int, to: int, text: str) -> Any:
        """Send one message and wait for its ACK; fires with the sender's seq."""

        def acked(outputs: list[pb.Output]) -> bool:
            return any(self._up_ack(o, client_id) for o in outputs)

        session.frame_received(up_frame(client_id, to, text))
        yield conn.wait_for(acked)
        yield self.hub.wait_idle()
        acks = [o for o in conn.outputs() if self._up_ack(o, client_id)]
        return pb.ACKMsg.FromString(acks[0].data).seq

    @staticmethod
    def _up_ack(output: pb.Output, client_id: int) -> bool:
        if output.type != pb.CT_ACK:
            return False
        ack = pb.ACKMsg.FromString(output.data)
        return ack.type == pb.AT_Up and ack.clientId == client_id


__all__ = ["LogicTestCase", "Recorder", "codec", "frame", "push_ack_frame", "up_frame"]
